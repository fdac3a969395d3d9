//! ServiceB's settings, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::Result;
use service_kit::config::{KafkaConfig, millis, var};
use service_kit::consumer::Backoff;

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR`: where to listen. Default `127.0.0.1:8082`.
    pub http_addr: SocketAddr,
    /// Broker and topics (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_*`).
    pub kafka: KafkaConfig,
    /// `GROUP_ID`: the consumer group. Default `service-b`.
    pub group_id: String,
    /// `PAYMENTS_URL`: base URL of Payments. Default `http://127.0.0.1:8080`.
    pub payments_url: String,
    /// `CALLBACK_TIMEOUT_MS`: how long one GetPaymentInfo call may take. Default 5 s.
    pub callback_timeout: Duration,
    /// `CALLBACK_NOT_FOUND_GRACE_MS`: how long after a payment was received a
    /// 404 from Payments is retried; after that the notification is skipped
    /// as one that cannot be handled. Default 30 s.
    pub not_found_grace: Duration,
    /// `RETRY_INITIAL_MS` / `RETRY_MAX_MS`: backoff between callback attempts
    /// (default 100 ms doubling up to 10 s, with jitter).
    pub retry: Backoff,
}

impl Config {
    pub fn from_env() -> Result<Self> {
        let retry = Backoff::default();
        Ok(Self {
            http_addr: var("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8082)))?,
            kafka: KafkaConfig::from_env()?,
            group_id: var("GROUP_ID", crate::SERVICE.to_owned())?,
            payments_url: var("PAYMENTS_URL", "http://127.0.0.1:8080".to_owned())?,
            callback_timeout: millis("CALLBACK_TIMEOUT_MS", Duration::from_secs(5))?,
            not_found_grace: millis("CALLBACK_NOT_FOUND_GRACE_MS", Duration::from_secs(30))?,
            retry: Backoff {
                initial: millis("RETRY_INITIAL_MS", retry.initial)?,
                max: millis("RETRY_MAX_MS", retry.max)?,
            },
        })
    }
}
