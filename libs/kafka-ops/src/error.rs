//! What the operating tools fail with.

use rdkafka::error::KafkaError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] service_kit::Error),
    /// A Kafka client call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// A topic could not be read to its end in time.
    #[error("could not read topic `{0}` to its end in time")]
    ReadTimeout(String),
    /// Making users or ACLs failed (`access`).
    #[error("kafka access: {0}")]
    Access(String),
    /// A blocking tool call panicked.
    #[error("the {0} tool failed: {1}")]
    Task(&'static str, tokio::task::JoinError),
}
