//! ServiceB's settings, read once from the environment: those every
//! consumer service has ([`ConsumerServiceConfig`]; its database holds its
//! records and the ids of the notifications it handled, its callers read
//! the records), and how it calls Payments back.

use std::time::Duration;

use service_kit::auth::Token;
use service_kit::config::{ConfigError, credential, millis, var};
use service_kit::service::ConsumerServiceConfig;

use crate::payments::CallbackLimits;

/// ServiceB's own database on the local PostgreSQL of `cargo xtask pg up`,
/// as its own role (which `pg up` makes; that server trusts loopback, so no
/// password).
pub const LOCAL_DATABASE_URL: &str = "postgres://service_b@127.0.0.1:5432/service_b";

#[derive(Debug, Clone)]
pub struct Config {
    /// Listening on 127.0.0.1:8082, as consumer group `service-b`, with
    /// [`LOCAL_DATABASE_URL`], unless the environment says otherwise.
    pub service: ConsumerServiceConfig,
    /// `PAYMENTS_URL`: base URL of Payments. Default `http://127.0.0.1:8080`.
    pub payments_url: String,
    /// `PAYMENTS_TOKEN`: how ServiceB proves itself to Payments on the
    /// callback (Payments holds its SHA-256). Required.
    pub payments_token: Token,
    /// `CALLBACK_TIMEOUT_MS`: how long one GetPaymentInfo call may take
    /// (default 5 s); `CALLBACK_CONNECTIONS`: how many calls may be in flight
    /// at once, each on a connection kept open and reused (default 64: with
    /// 16, a backlog drained 20% slower, callbacks waiting for a connection;
    /// with 128, beside 256 records in flight, no faster than with 64; a few
    /// instances stay under Payments' `HTTP_MAX_CONNECTIONS`).
    pub callback: CallbackLimits,
    /// `CALLBACK_NOT_FOUND_GRACE_MS`: how long after a payment was received a
    /// 404 from Payments is retried; after that the notification goes to the
    /// dead-letter topic as one that cannot be handled. Default 30 s.
    pub not_found_grace: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            service: ConsumerServiceConfig::from_env(crate::SERVICE, 8082, LOCAL_DATABASE_URL)?,
            payments_url: var("PAYMENTS_URL", "http://127.0.0.1:8080".to_owned())?,
            payments_token: credential("PAYMENTS_TOKEN")?,
            callback: CallbackLimits {
                timeout: millis("CALLBACK_TIMEOUT_MS", CallbackLimits::default().timeout)?,
                connections: var("CALLBACK_CONNECTIONS", CallbackLimits::default().connections)?,
            },
            not_found_grace: millis("CALLBACK_NOT_FOUND_GRACE_MS", Duration::from_secs(30))?,
        })
    }
}
