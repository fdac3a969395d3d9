//! Errors that stop Payments from starting or running. Request-level errors
//! are [`crate::api::ApiError`].

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] service_kit::Error),
    #[error("event store: {0}")]
    Store(#[from] event_store::Error),
    #[error("repository: {0}")]
    Repository(#[from] crate::repository::RepositoryError),
}
