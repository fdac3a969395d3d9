//! Errors of the event store. [`Error::Conflict`] is the expected outcome of
//! losing a race and is meant to be handled (reload, decide again, or answer
//! 409); the others are failures.

use crate::model::ExpectedVersion;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The stream is not at the expected version; nothing was written.
    #[error("stream `{stream}` is at version {actual:?}, expected {expected}")]
    Conflict {
        stream: String,
        expected: ExpectedVersion,
        /// `None`: the stream does not exist.
        actual: Option<u64>,
    },
    /// An event with this id is already stored; nothing was written.
    #[error("an event with id {0} is already stored")]
    DuplicateEvent(uuid::Uuid),
    /// An append of no events.
    #[error("nothing to append")]
    Empty,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrating the event store schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}
