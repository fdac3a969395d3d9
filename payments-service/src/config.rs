//! Payments' settings, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::auth::{Callers, HTTP_CALLERS};
use service_kit::config::{
    ConfigError, DatabaseUrl, KafkaConfig, credential, database_url, millis, shutdown_timeout,
    startup_timeout, var,
};

/// Payments' own database on the local PostgreSQL of `cargo xtask pg up`,
/// as its own role (which `pg up` makes; that server trusts loopback, so no
/// password).
pub const LOCAL_DATABASE_URL: &str = "postgres://payments@127.0.0.1:5432/payments";

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR`: where to listen. Default `127.0.0.1:8080`.
    pub http_addr: SocketAddr,
    /// Broker and topics (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_*`).
    pub kafka: KafkaConfig,
    /// `DATABASE_URL`: the event store's PostgreSQL database, as a role
    /// that owns it (it runs its migrations). Default: [`LOCAL_DATABASE_URL`].
    pub database: DatabaseUrl,
    /// `HTTP_CALLERS`: who may read a payment, its events, and refund it
    /// (ServiceB, operators): `name:sha256-of-token` entries. Required.
    pub callers: Callers,
    /// `DATABASE_CONNECTIONS`: connection pool size. Default 10.
    pub database_connections: u32,
    /// `SNAPSHOT_EVERY`: save a payment's snapshot every this many events.
    /// Default 10.
    pub snapshot_every: u64,
    /// `OUTBOX_RELAY`: whether this instance runs the outbox relay (only one
    /// instance publishes at a time anyway). Default `true`.
    pub relay: bool,
    /// `PUBLISH_TIMEOUT_MS`: how long the relay waits for the broker to
    /// acknowledge before retrying. Default 10 s.
    pub publish_timeout: Duration,
    /// `OUTBOX_HOLD_LIMIT_MS`: how long a transaction open in the event
    /// store's database may hold publication back before the relay ends it
    /// (it rolls back; see [`crate::relay`]). Default 60 s.
    pub outbox_hold_limit: Duration,
    /// `OUTBOX_BATCH_LIMIT`: the most events the relay publishes in one
    /// Kafka transaction. It takes whatever is committed and waiting, up to
    /// this, so one event when quiet and this many under a backlog.
    /// Default 200.
    pub outbox_batch_limit: u32,
    /// `OUTBOX_LAG_WARN_MS`: once the oldest event not yet published is
    /// older than this, a warning is logged (see [`crate::outbox`]). Default
    /// 30 s.
    pub outbox_lag_warn: Duration,
    /// `OUTBOX_TEST_BATCH_PAUSE_MS`: for tests only, a pause while the relay
    /// builds each batch, standing for a batch that replays long histories.
    /// Default 0 (none).
    pub outbox_test_batch_pause: Duration,
    /// `STATE_CACHE_ENTRIES`: how many payments' latest states are kept in
    /// memory to answer ServiceB's callbacks (see [`crate::latest`]); the
    /// least recently used go first. Default 100,000.
    pub state_cache_entries: usize,
    /// `IDEMPOTENCY_KEY_TTL_HOURS`: how long an `Idempotency-Key` is
    /// remembered; a retry after that is a new request. Default 24.
    pub idempotency_key_ttl: Duration,
    /// `SHUTDOWN_TIMEOUT_MS`: see [`service_kit::config::shutdown_timeout`].
    pub shutdown_timeout: Duration,
    /// `STARTUP_TIMEOUT_MS`: see [`service_kit::config::startup_timeout`].
    pub startup_timeout: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: var("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            kafka: KafkaConfig::from_env()?,
            database: database_url(LOCAL_DATABASE_URL)?,
            callers: credential(HTTP_CALLERS)?,
            database_connections: var("DATABASE_CONNECTIONS", 10)?,
            snapshot_every: var("SNAPSHOT_EVERY", 10)?,
            relay: var("OUTBOX_RELAY", true)?,
            publish_timeout: millis("PUBLISH_TIMEOUT_MS", Duration::from_secs(10))?,
            outbox_hold_limit: millis("OUTBOX_HOLD_LIMIT_MS", Duration::from_secs(60))?,
            outbox_batch_limit: var("OUTBOX_BATCH_LIMIT", crate::relay::DEFAULT_BATCH_LIMIT)?,
            outbox_lag_warn: millis("OUTBOX_LAG_WARN_MS", Duration::from_secs(30))?,
            outbox_test_batch_pause: millis("OUTBOX_TEST_BATCH_PAUSE_MS", Duration::ZERO)?,
            state_cache_entries: var("STATE_CACHE_ENTRIES", crate::latest::DEFAULT_ENTRIES)?,
            idempotency_key_ttl: Duration::from_secs(3600 * var::<u64>("IDEMPOTENCY_KEY_TTL_HOURS", 24)?),
            shutdown_timeout: shutdown_timeout()?,
            startup_timeout: startup_timeout()?,
        })
    }
}
