//! ServiceA's settings, read once from the environment.

use std::net::SocketAddr;

use service_kit::auth::{Callers, HTTP_CALLERS};
use service_kit::config::{
    ConfigError, ConsumerConfig, DatabaseUrl, KafkaConfig, RetentionConfig, credential, database_url, var,
};

/// ServiceA's own database on the local PostgreSQL of `cargo xtask pg up`,
/// as its own role (which `pg up` makes; that server trusts loopback, so no
/// password).
pub const LOCAL_DATABASE_URL: &str = "postgres://service_a@127.0.0.1:5432/service_a";

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR`: where to listen. Default `127.0.0.1:8081`.
    pub http_addr: SocketAddr,
    /// Broker and topics (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_*`).
    pub kafka: KafkaConfig,
    /// Start position, retries, group timeouts (`START_FROM`, `RETRY_*`, ...).
    /// The state topic is always read from the beginning.
    pub consumer: ConsumerConfig,
    /// `GROUP_ID`: the consumer group. Default `service-a`.
    pub group_id: String,
    /// `DATABASE_URL`: ServiceA's own PostgreSQL database, for its audit
    /// log. Default: `service_a` on the local one.
    pub database: DatabaseUrl,
    /// `DATABASE_CONNECTIONS`: connection pool size. Default 10, as for the
    /// other services: up to `CONSUMER_MAX_IN_FLIGHT` handlers share it.
    pub database_connections: u32,
    /// How long audit entries are kept, and how they are pruned
    /// (`RETENTION_DAYS`, default 15; `PRUNE_INTERVAL_MS`, `PRUNE_BATCH`):
    /// see [`service_kit::retention`].
    pub retention: RetentionConfig,
    /// `STARTUP_TIMEOUT_MS`: see [`service_kit::config::startup_timeout`].
    pub startup_timeout: std::time::Duration,
    /// `HTTP_CALLERS`: who may read the copy and the audit log (operators):
    /// `name:sha256-of-token` entries. Required.
    pub callers: Callers,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: var("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8081)))?,
            kafka: KafkaConfig::from_env()?,
            consumer: ConsumerConfig::from_env()?,
            group_id: var("GROUP_ID", crate::SERVICE.to_owned())?,
            database: database_url(LOCAL_DATABASE_URL)?,
            database_connections: var("DATABASE_CONNECTIONS", 10)?,
            retention: RetentionConfig::from_env()?,
            startup_timeout: service_kit::config::startup_timeout()?,
            callers: credential(HTTP_CALLERS)?,
        })
    }
}
