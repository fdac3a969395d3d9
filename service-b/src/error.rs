//! Errors that stop ServiceB from starting or running, or fail a request.

use service_kit::consumer::{DATABASE, HandleError};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] service_kit::Error),
    /// Its database is unreachable or refused a statement.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A failure of the store while handling a record: the database unavailable
/// (the consumer pauses and waits for it) or, for a statement it rejects,
/// the record's own (see [`HandleError::database`]).
impl From<Error> for HandleError {
    fn from(e: Error) -> Self {
        match e {
            Error::Database(e) => Self::database(e),
            other => Self::unavailable(DATABASE, other),
        }
    }
}
