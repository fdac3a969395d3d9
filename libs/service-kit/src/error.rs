//! Errors of the shared runtime and of a service's own database. ServiceA
//! and ServiceB use [`Error`] as theirs; Payments wraps it with its event
//! store's and repository's. Binaries report it through `anyhow`.

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable is set to something unusable.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// No broker answered at start.
    #[error(
        "cannot reach the Kafka broker at {servers} (waited {waited:?}): start one with \
         `cargo xtask kafka up` (or the whole stack with `docker compose up`), or point \
         KAFKA_BOOTSTRAP_SERVERS at one"
    )]
    BrokerUnreachable {
        servers: String,
        waited: std::time::Duration,
    },
    /// The database server did not answer at start.
    #[error(
        "cannot reach PostgreSQL at {server} for database `{database}` (waited {waited:?}: {reason}): \
         start one with `cargo xtask pg up` (or the whole stack with `docker compose up`), or point \
         DATABASE_URL at one"
    )]
    DatabaseUnreachable {
        server: String,
        database: String,
        waited: std::time::Duration,
        reason: String,
    },
    /// The database server answered, without the service's database.
    #[error(
        "PostgreSQL at {server} has no database `{database}`: `cargo xtask pg up` creates it \
         (compose's postgres-access step does), or create it, or point DATABASE_URL at another"
    )]
    DatabaseMissing { server: String, database: String },
    /// The database server refused the connection (a wrong password, say).
    #[error("PostgreSQL at {server} refused a connection to `{database}`: {reason}; check DATABASE_URL")]
    DatabaseRefused {
        server: String,
        database: String,
        reason: String,
    },
    /// Traces were asked for (`OTEL_EXPORTER_OTLP_ENDPOINT`) and cannot be
    /// exported.
    #[error("traces: {0}")]
    Telemetry(String),
    /// The service's database is unreachable or refused a statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The database was unavailable for a statement that wrote this row
    /// together with others ([`crate::batch`]): the same failure for all.
    #[error(transparent)]
    Shared(std::sync::Arc<Error>),
    /// A statement for a group of rows ended without answering this one
    /// (its task failed); whether the row was written is unknown.
    #[error("the statement for a group of rows ended without answering this row")]
    Unanswered,
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A Kafka client call failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The broker refused to create a topic.
    #[error("cannot create topic `{topic}`: {code}")]
    CreateTopic { topic: String, code: RDKafkaErrorCode },
    /// A topic a service reads does not exist.
    #[error("topic `{0}` does not exist")]
    MissingTopic(String),
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
