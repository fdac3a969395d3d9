//! Errors of the shared runtime. Services wrap [`Error`] in their own error
//! enum; binaries report it through `anyhow`.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable is set to something unusable.
    #[error("invalid configuration: {var}={value:?}: {reason}")]
    Config {
        var: &'static str,
        value: String,
        reason: String,
    },
    /// A Kafka client call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker refused to create a topic.
    #[error("cannot create topic `{topic}`: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    /// A topic a service reads does not exist.
    #[error("topic `{0}` does not exist")]
    MissingTopic(String),
    /// A topic could not be read to its end in time.
    #[error("could not read topic `{0}` to its end in time")]
    ReadTimeout(String),
    /// A group's offsets cannot be moved while it has members.
    #[error("group `{group}` has {members} active member(s); stop them first")]
    GroupActive { group: String, members: usize },
    /// The HTTP address cannot be listened on (in use, or not this host's).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// Serving a socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Tasks still running when the shutdown deadline passed; they were
    /// aborted.
    #[error("did not stop within {timeout:?} (SHUTDOWN_TIMEOUT_MS): aborted {tasks}")]
    ShutdownTimeout {
        timeout: std::time::Duration,
        tasks: String,
    },
    /// A task of the service panicked or was aborted.
    #[error("task `{task}` failed: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },
}
