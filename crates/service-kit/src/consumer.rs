//! The consumer loop every service runs.
//!
//! For each record: hand it to the [`Handler`], and only once the handler is
//! done store its offset for the next commit. That gives *at-least-once*
//! delivery: a crash before the store re-delivers the record, so handlers must
//! be idempotent (dedupe by event id, or upsert).
//!
//! - A [`HandleError::Transient`] failure (a dependency is down) is retried
//!   with exponential backoff and jitter until it succeeds or the service
//!   stops; the offset does not move past the record in the meantime.
//! - A [`HandleError::Permanent`] failure (the record can never be handled,
//!   such as an undecodable value) is logged and skipped, so one bad record
//!   cannot stall its partition.
//!
//! On shutdown the loop finishes the record in hand, commits the stored
//! offsets and leaves the group.

use std::error::Error as StdError;
use std::future::Future;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use shared_events::DecodeError;
use shared_events::envelope::event_id_of;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Result;

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a record was not handled.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Handling can never succeed; the record is skipped.
    #[error("permanent: {0}")]
    Permanent(BoxError),
    /// Handling may succeed later; the record is retried.
    #[error("transient: {0}")]
    Transient(BoxError),
}

impl HandleError {
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }

    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }
}

/// A record that does not decode will not decode next time either.
impl From<DecodeError> for HandleError {
    fn from(e: DecodeError) -> Self {
        Self::permanent(e)
    }
}

/// What a service does with each record.
pub trait Handler: Send + Sync + 'static {
    /// Handles `record`; `attempt` is 1 the first time, 2 on the first retry, ...
    fn handle(
        &self,
        record: &OwnedMessage,
        attempt: u32,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// Exponential backoff with full jitter: attempt `n` waits a random time
/// between zero and `min(max, initial * 2^(n-1))`, so retrying instances do
/// not hammer a recovering dependency in lockstep.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// What the loop does with the offsets of handled records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offsets {
    /// A group member ([`crate::kafka::consumer`]): store each offset after
    /// handling, commit in the background and once more on shutdown.
    Commit,
    /// A replica reader ([`crate::kafka::replica`]): nothing to remember, it
    /// reads from the beginning on every start.
    Forget,
}

/// Runs `handler` over every record of `consumer` until `stop` is cancelled.
pub async fn run<H: Handler>(
    consumer: StreamConsumer,
    offsets: Offsets,
    handler: H,
    backoff: Backoff,
    stop: CancellationToken,
) -> Result<()> {
    loop {
        let record = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            received = consumer.recv() => match received {
                Ok(record) => record.detach(),
                // librdkafka reports broker and partition trouble here and
                // recovers by itself; the pause keeps a persistent error
                // from spinning the loop.
                Err(e) => {
                    tracing::warn!(error = %e, "consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };

        let span = tracing::info_span!(
            "record",
            topic = record.topic(),
            partition = record.partition(),
            offset = record.offset(),
            event_id = event_id_of(&record).unwrap_or_default(),
        );
        if !handle(&handler, &record, backoff, &stop).instrument(span).await {
            // Stopped while retrying: the offset stays put, so the record is
            // handled again after the restart.
            break;
        }
        if offsets == Offsets::Forget {
            continue;
        }
        if let Err(e) = consumer.store_offset(record.topic(), record.partition(), record.offset()) {
            // The partition was revoked in a rebalance meanwhile; its new
            // owner resumes from the last committed offset.
            tracing::warn!(error = %e, topic = record.topic(), partition = record.partition(), "cannot store offset");
        }
    }

    // Both calls block on the broker, so they run off the async threads.
    let closed = tokio::task::spawn_blocking(move || {
        // Closing commits stored offsets too (auto-commit is on); committing
        // synchronously first makes the outcome visible in the log.
        if offsets == Offsets::Commit {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => tracing::warn!(error = %e, "final offset commit failed"),
            }
        }
        // Dropping closes the consumer: it leaves the group, so its
        // partitions move on now rather than after the session timeout.
        drop(consumer);
    });
    closed.await.map_err(|source| crate::Error::Task {
        task: "consumer close",
        source,
    })
}

/// Handles one record, retrying transient failures. Returns `false` if the
/// service stopped before the record was handled.
async fn handle<H: Handler>(
    handler: &H,
    record: &OwnedMessage,
    backoff: Backoff,
    stop: &CancellationToken,
) -> bool {
    let mut attempt = 1;
    loop {
        match handler.handle(record, attempt).await {
            Ok(()) => return true,
            Err(HandleError::Permanent(e)) => {
                tracing::error!(error = %e, "skipping record that cannot be handled");
                return true;
            }
            Err(HandleError::Transient(e)) => {
                let delay = backoff.delay(attempt);
                attempt += 1;
                tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis(), "handling failed, will retry");
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for (attempt, ceiling_ms) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (60, 1000)] {
            for _ in 0..50 {
                assert!(
                    backoff.delay(attempt) <= Duration::from_millis(ceiling_ms),
                    "attempt {attempt}"
                );
            }
        }
        // Jitter: the delays of one attempt are not all the same.
        let delays: std::collections::HashSet<_> = (0..20).map(|_| backoff.delay(5)).collect();
        assert!(delays.len() > 1);
    }

    #[test]
    fn decode_errors_are_permanent() {
        let e: HandleError = DecodeError::MissingData.into();
        assert!(matches!(e, HandleError::Permanent(_)));
    }
}
