//! Errors of the event store. [`Error::Conflict`] is the expected outcome of
//! losing a race and is meant to be handled (reload, decide again, or answer
//! 409); the others are failures.

use std::sync::Arc;

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
    /// The database was unavailable for a group of writes committed
    /// together ([`crate::group`]): the same failure for each of them.
    #[error(transparent)]
    Shared(Arc<Error>),
    /// The group committing this write ended without answering it (its task
    /// failed): whether it was committed is unknown.
    #[error("the group commit ended without answering this write")]
    Unanswered,
}

impl Error {
    /// Whether the database could not be reached, or went away under the
    /// statement: the pool gave up waiting, the connection broke, or the
    /// server is shutting down, starting up or out of connections (SQLSTATE
    /// classes 08 and 57P, and 53300). A retry may well succeed; what to
    /// answer is "unavailable", not "internal error".
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)) => true,
            Self::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("08") || code.starts_with("57P") || code == "53300"),
            Self::Shared(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    /// A server's error with SQLSTATE `code`, as sqlx hands it over.
    #[derive(Debug)]
    struct ServerError(&'static str);

    impl std::fmt::Display for ServerError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "server error {}", self.0)
        }
    }

    impl std::error::Error for ServerError {}

    impl sqlx::error::DatabaseError for ServerError {
        fn message(&self) -> &str {
            "from the server"
        }

        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }

        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }

        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }

        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn server(code: &'static str) -> Error {
        Error::Database(sqlx::Error::Database(Box::new(ServerError(code))))
    }

    #[test]
    fn a_server_going_away_is_unavailable_and_a_refused_statement_is_not() {
        // What a PostgreSQL restart does to open connections (seen under
        // `cargo xtask faults`): 57P01, "terminating connection due to
        // administrator command".
        for code in ["57P01", "57P02", "57P03", "08006", "08001", "53300"] {
            assert!(server(code).is_unavailable(), "{code}");
        }
        assert!(Error::Database(sqlx::Error::PoolTimedOut).is_unavailable());
        let broken = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(Error::Database(sqlx::Error::Io(broken)).is_unavailable());
        // A unique violation, a syntax error: a bug, not an outage.
        for code in ["23505", "42601"] {
            assert!(!server(code).is_unavailable(), "{code}");
        }
        assert!(!Error::Empty.is_unavailable());
        // A group's failure is each of its writes' alike.
        assert!(Error::Shared(Arc::new(server("57P01"))).is_unavailable());
        assert!(!Error::Shared(Arc::new(server("23505"))).is_unavailable());
    }
}
