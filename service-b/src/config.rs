//! ServiceB's settings, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::auth::{Callers, HTTP_CALLERS, Token};
use service_kit::config::{
    ConfigError, ConsumerConfig, DatabaseUrl, KafkaConfig, RetentionConfig, credential, database_url, millis,
    var,
};

/// ServiceB's own database on the local PostgreSQL of `cargo xtask pg up`,
/// as its own role (which `pg up` makes; that server trusts loopback, so no
/// password).
pub const LOCAL_DATABASE_URL: &str = "postgres://service_b@127.0.0.1:5432/service_b";

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR`: where to listen. Default `127.0.0.1:8082`.
    pub http_addr: SocketAddr,
    /// Broker and topics (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_*`).
    pub kafka: KafkaConfig,
    /// Start position, retries, group timeouts (`START_FROM`, `RETRY_*`, ...).
    pub consumer: ConsumerConfig,
    /// `GROUP_ID`: the consumer group. Default `service-b`.
    pub group_id: String,
    /// `DATABASE_URL`: ServiceB's own PostgreSQL database (not Payments').
    /// Default: `service_b` on the local one.
    pub database: DatabaseUrl,
    /// `DATABASE_CONNECTIONS`: connection pool size. Default 10: each of up
    /// to `CONSUMER_MAX_IN_FLIGHT` handlers runs two statements, and with 5
    /// they queued for a connection (`cargo xtask bench`: a backlog drained
    /// at 1,352/s with 5 connections, 2,032/s with 10).
    pub database_connections: u32,
    /// How long the ids of handled notifications are kept, and how they
    /// are pruned (`RETENTION_DAYS`, default 15; `PRUNE_INTERVAL_MS`,
    /// `PRUNE_BATCH`): see [`service_kit::retention`], which says why the
    /// retention must outlast the notifications topic's.
    pub retention: RetentionConfig,
    /// `STARTUP_TIMEOUT_MS`: see [`service_kit::config::startup_timeout`].
    pub startup_timeout: std::time::Duration,
    /// `PAYMENTS_URL`: base URL of Payments. Default `http://127.0.0.1:8080`.
    pub payments_url: String,
    /// `PAYMENTS_TOKEN`: how ServiceB proves itself to Payments on the
    /// callback (Payments holds its SHA-256). Required.
    pub payments_token: Token,
    /// `HTTP_CALLERS`: who may read ServiceB's records (operators):
    /// `name:sha256-of-token` entries. Required.
    pub callers: Callers,
    /// `CALLBACK_TIMEOUT_MS`: how long one GetPaymentInfo call may take. Default 5 s.
    pub callback_timeout: Duration,
    /// `CALLBACK_NOT_FOUND_GRACE_MS`: how long after a payment was received a
    /// 404 from Payments is retried; after that the notification goes to the
    /// dead-letter topic as one that cannot be handled. Default 30 s.
    pub not_found_grace: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: var("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8082)))?,
            kafka: KafkaConfig::from_env()?,
            consumer: ConsumerConfig::from_env()?,
            group_id: var("GROUP_ID", crate::SERVICE.to_owned())?,
            database: database_url(LOCAL_DATABASE_URL)?,
            database_connections: var("DATABASE_CONNECTIONS", 10)?,
            retention: RetentionConfig::from_env()?,
            startup_timeout: service_kit::config::startup_timeout()?,
            payments_url: var("PAYMENTS_URL", "http://127.0.0.1:8080".to_owned())?,
            payments_token: credential("PAYMENTS_TOKEN")?,
            callers: credential(HTTP_CALLERS)?,
            callback_timeout: millis("CALLBACK_TIMEOUT_MS", Duration::from_secs(5))?,
            not_found_grace: millis("CALLBACK_NOT_FOUND_GRACE_MS", Duration::from_secs(30))?,
        })
    }
}
