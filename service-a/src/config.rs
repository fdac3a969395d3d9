//! ServiceA's settings, read once from the environment: those every
//! consumer service has ([`ConsumerServiceConfig`]), nothing of its own.
//! Its database holds the audit log; its callers read the copy and the
//! audit log; the state topic is always read from the beginning, whatever
//! `START_FROM` says.

use service_kit::config::ConfigError;
use service_kit::service::ConsumerServiceConfig;

/// ServiceA's own database on the local PostgreSQL of `cargo xtask pg up`,
/// as its own role (which `pg up` makes; that server trusts loopback, so no
/// password).
pub const LOCAL_DATABASE_URL: &str = "postgres://service_a@127.0.0.1:5432/service_a";

#[derive(Debug, Clone)]
pub struct Config {
    /// Listening on 127.0.0.1:8081, as consumer group `service-a`, with
    /// [`LOCAL_DATABASE_URL`], unless the environment says otherwise.
    pub service: ConsumerServiceConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            service: ConsumerServiceConfig::from_env(crate::SERVICE, 8081, LOCAL_DATABASE_URL)?,
        })
    }
}
