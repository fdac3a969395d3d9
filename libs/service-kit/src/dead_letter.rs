//! Dead-letter topics: where a consumer puts a record it can never handle.
//!
//! A dead letter is the original record (key, value and headers, unchanged)
//! published to `<topic>.dlt` with these headers added:
//!
//! | header | value |
//! |---|---|
//! | `dlt.error` | why the record could not be handled |
//! | `dlt.reason` | `permanent` (can never succeed) or `exhausted` (retried `RETRY_MAX_ATTEMPTS` times) |
//! | `dlt.source.topic`, `dlt.source.partition`, `dlt.source.offset` | where the record was read |
//! | `dlt.attempts` | how many times it was tried |
//! | `dlt.first.failure` | when the first attempt failed (RFC 3339) |
//! | `dlt.group` | the consumer group that gave up on it |
//!
//! Listing and redriving them is for people, not services: see the
//! `kafka-ops` crate (`cargo xtask dlt list|redrive`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared_events::dead_letter_topic;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::producer;

/// The names of the headers a dead letter carries besides its own.
pub mod header {
    pub const ERROR: &str = "dlt.error";
    pub const REASON: &str = "dlt.reason";
    pub const SOURCE_TOPIC: &str = "dlt.source.topic";
    pub const SOURCE_PARTITION: &str = "dlt.source.partition";
    pub const SOURCE_OFFSET: &str = "dlt.source.offset";
    pub const ATTEMPTS: &str = "dlt.attempts";
    pub const FIRST_FAILURE: &str = "dlt.first.failure";
    pub const GROUP: &str = "dlt.group";
    /// Every dead-letter header starts with this; a redriven record has none.
    pub const PREFIX: &str = "dlt.";
}

/// Why a record was given up on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Handling can never succeed (undecodable, unknown type, ...).
    Permanent,
    /// Handling kept failing for a reason that might have passed.
    Exhausted,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
        }
    }
}

/// What is known about a failed record when it is given up on.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: String,
    pub reason: Reason,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
}

/// Publishes dead letters. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    producer: FutureProducer,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}

/// The longest `dlt.error` text kept.
const MAX_ERROR_CHARS: usize = 2000;

/// How long one dead letter may wait for the broker's acknowledgement
/// before the send fails and is tried again.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

impl DeadLetters {
    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self> {
        Ok(Self {
            producer: producer(config, &format!("{client_id}.dlt"), SEND_TIMEOUT)?,
        })
    }

    /// Publishes `record` to its dead-letter topic and waits until the broker
    /// has it: only then may the consumer move past the record.
    pub async fn send(&self, record: &OwnedMessage, group: &str, failure: &Failure) -> Result<()> {
        // Bounded, so that a long error text cannot make the dead letter
        // too large for the broker (which would stall the consumer).
        let error: String = failure.error.chars().take(MAX_ERROR_CHARS).collect();
        let partition = record.partition().to_string();
        let offset = record.offset().to_string();
        let attempts = failure.attempts.to_string();
        let first_failure = failure.first_failure.to_rfc3339();
        let added = [
            (header::ERROR, error.as_str()),
            (header::REASON, failure.reason.as_str()),
            (header::SOURCE_TOPIC, record.topic()),
            (header::SOURCE_PARTITION, partition.as_str()),
            (header::SOURCE_OFFSET, offset.as_str()),
            (header::ATTEMPTS, attempts.as_str()),
            (header::FIRST_FAILURE, first_failure.as_str()),
            (header::GROUP, group),
        ];
        let headers = added
            .iter()
            .fold(original_headers(record, |_| true), |h, (key, value)| {
                h.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                })
            });
        let topic = dead_letter_topic(record.topic());
        self.producer
            .send(copy_to(&topic, record, headers), SEND_TIMEOUT)
            .await
            .map_err(|(e, _)| Error::Kafka(e))?;
        Ok(())
    }
}

/// `record`'s key and value, with `headers`, for `topic`: how a record is
/// dead-lettered, and redriven.
pub fn copy_to<'a>(
    topic: &'a str,
    record: &'a OwnedMessage,
    headers: OwnedHeaders,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut out = FutureRecord::to(topic).headers(headers);
    if let Some(key) = record.key() {
        out = out.key(key);
    }
    if let Some(value) = record.payload() {
        out = out.payload(value);
    }
    out
}

/// The headers of `record` that `keep` accepts, in order.
pub fn original_headers(record: &OwnedMessage, keep: impl Fn(&str) -> bool) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = record.headers() {
        for h in original.iter().filter(|h| keep(h.key)) {
            headers = headers.insert(h);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::Reason;
    use super::header::*;

    #[test]
    fn the_published_contract_names_every_dead_letter_header() {
        let written = [
            ERROR,
            REASON,
            SOURCE_TOPIC,
            SOURCE_PARTITION,
            SOURCE_OFFSET,
            ATTEMPTS,
            FIRST_FAILURE,
            GROUP,
        ];
        let documented: Vec<&str> = shared_events::contracts::DEAD_LETTER_HEADERS
            .iter()
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(written.as_slice(), documented.as_slice());
        assert!(written.iter().all(|h| h.starts_with(PREFIX)));
        assert_eq!(
            [Reason::Permanent.as_str(), Reason::Exhausted.as_str()],
            ["permanent", "exhausted"],
            "as contracts/asyncapi.json describes dlt.reason"
        );
    }
}
