//! Payments' settings, read once from the environment.

use std::net::SocketAddr;
use std::time::Duration;

use service_kit::config::{KafkaConfig, millis, var};

use crate::error::Result;

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR`: where to listen. Default `127.0.0.1:8080`.
    pub http_addr: SocketAddr,
    /// Broker and topics (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_*`).
    pub kafka: KafkaConfig,
    /// `PUBLISH_TIMEOUT_MS`: how long `POST /payments` waits for the broker to
    /// acknowledge the events before answering 503. Default 10 s.
    pub publish_timeout: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            http_addr: var("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            kafka: KafkaConfig::from_env()?,
            publish_timeout: millis("PUBLISH_TIMEOUT_MS", Duration::from_secs(10))?,
        })
    }
}
