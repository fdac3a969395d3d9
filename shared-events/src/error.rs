//! Errors of the contract crate.
//!
//! [`InvalidValue`] is returned by the `parse` constructors of the value
//! types; services turn it into a 4xx. [`DecodeError`] is what a consumer gets
//! for a record it cannot understand: it is *permanent* (retrying the same
//! bytes gives the same answer), so consumers log and skip such records.

/// A value that does not satisfy its type's rules, e.g. a zero amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidValue {
    /// The field, named as in the JSON contract (`amount`, `currency`, ...).
    pub field: &'static str,
    /// What is wrong with it, for humans.
    pub problem: String,
}

impl InvalidValue {
    pub(crate) fn new(field: &'static str, problem: impl Into<String>) -> Self {
        Self {
            field,
            problem: problem.into(),
        }
    }
}

/// An event could not be turned into a Kafka record.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise event data: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

/// A Kafka record is not a valid event of the expected kind.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A required CloudEvents header is absent.
    #[error("missing header `{0}`")]
    MissingHeader(&'static str),
    /// A header is present but its value is unusable.
    #[error("invalid header `{name}`: {reason}")]
    InvalidHeader { name: &'static str, reason: String },
    /// `ce_type` names an event this consumer does not know.
    #[error("unknown event type `{0}`")]
    UnknownType(String),
    /// `ce_type` names a known event in a schema version this consumer cannot read.
    #[error("unsupported version `{found}` of `{event}` (this consumer reads v{supported})")]
    UnsupportedVersion {
        event: &'static str,
        found: String,
        supported: u32,
    },
    /// The record has no value (e.g. a tombstone).
    #[error("record has no value")]
    MissingData,
    /// The value is not valid JSON for the event's schema.
    #[error("malformed event data: {0}")]
    MalformedData(#[from] serde_json::Error),
}
