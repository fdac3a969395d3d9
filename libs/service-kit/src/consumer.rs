//! The consumer loop every service runs.
//!
//! For each record: hand it to the [`Handler`], and only once the handler is
//! done store its offset for the next commit. That gives *at-least-once*
//! delivery: a crash before the store re-delivers the record, so handlers must
//! be idempotent (dedupe by event id, or upsert).
//!
//! - A [`HandleError::Transient`] failure (a dependency is down) is retried
//!   with exponential backoff and jitter; the offset does not move past the
//!   record in the meantime. While it waits, the loop pauses its partitions
//!   and keeps polling, so the broker does not drop it from the group for
//!   exceeding `max.poll.interval.ms` and a rebalance is served at once.
//! - A [`HandleError::Permanent`] failure (the record can never be handled,
//!   such as an undecodable value), or a transient one that lasted
//!   `max_attempts` attempts, sends the record to its dead-letter topic
//!   ([`crate::dead_letter`]); once the broker has it, the loop moves on.
//!   (A replica reader, which re-reads everything on each start, logs and
//!   skips it instead of dead-lettering it again on every start.)
//! - A record whose partition was revoked while it waited is dropped
//!   unhandled: its new owner reads it again from the committed offset.
//!
//! Records of one partition are handled one at a time, in order, so the
//! events of one payment (one key, one partition) are too.
//!
//! When the loop has handled everything up to the end of a partition, it
//! stores the end offset rather than the last record's offset + 1: a
//! producer writing in transactions (the outbox relay) leaves a commit
//! marker after its records, which no consumer is handed, and without this
//! the group would stay one offset behind, its lag never zero.
//!
//! On shutdown the loop finishes the record in hand (or leaves it to the next
//! owner if it is still retrying), commits the stored offsets and leaves the
//! group.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use shared_events::DecodeError;
use shared_events::envelope::event_id_of;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ConsumerConfig;
use crate::dead_letter::{DeadLetters, Failure, Reason};
use crate::error::Result;
use crate::kafka::{GroupConsumer, GroupContext, Offsets};

type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a record was not handled.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Handling can never succeed; the record goes to the dead-letter topic.
    #[error("permanent: {0}")]
    Permanent(BoxError),
    /// Handling may succeed later; the record is retried (up to
    /// `max_attempts`, then dead-lettered).
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

/// Runs `handler` over every record of `consumer` until `stop` is cancelled.
pub async fn run<H: Handler>(
    consumer: GroupConsumer,
    handler: H,
    settings: ConsumerConfig,
    dead_letters: Option<DeadLetters>,
    stop: CancellationToken,
) -> Result<()> {
    let context = Arc::clone(consumer.context());
    let mut run = Loop {
        consumer,
        context,
        handler,
        settings,
        dead_letters,
        stop,
        waiting: VecDeque::new(),
    };
    while let Some((delivery, epoch)) = run.next().await {
        let record = match delivery {
            Delivery::Record(record) => record,
            Delivery::End(end) => {
                run.move_to_end(&end, epoch);
                continue;
            }
        };
        let span = tracing::info_span!(
            "record",
            topic = record.topic(),
            partition = record.partition(),
            offset = record.offset(),
            event_id = event_id_of(&record).unwrap_or_default(),
        );
        // Once the service stops, the record in hand gets half the shutdown
        // time; then it is dropped unhandled (its offset not stored, so it is
        // handled again after the restart) and what was handled is committed.
        let stop = run.stop.clone();
        let grace = run.settings.shutdown_timeout / 2;
        let processed = tokio::select! {
            outcome = run.process(&record, epoch).instrument(span) => outcome,
            () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!(
                    topic = record.topic(),
                    partition = record.partition(),
                    offset = record.offset(),
                    "stopping: the record in hand was not handled in time; it is left for the next start"
                );
                Outcome::Stopped
            }
        };
        match processed {
            Outcome::Handled => {
                run.context.metrics().handled(&run.context.group, record.topic());
                run.move_past(&record);
            }
            Outcome::DeadLettered => run.move_past(&record),
            Outcome::Revoked => {
                tracing::info!(
                    topic = record.topic(),
                    partition = record.partition(),
                    offset = record.offset(),
                    "partition revoked; record left to its new owner"
                );
            }
            // Stopped while retrying: the offset stays put, so the record is
            // handled again after the restart.
            Outcome::Stopped => break,
        }
    }
    run.close().await
}

/// What the consumer hands the loop.
enum Delivery {
    Record(OwnedMessage),
    /// The end of a partition: every record before `offset` was handed to
    /// the loop (commit markers, which are not, included). No offset when
    /// the loop was handed no record of it (it was empty from where it
    /// started).
    End(End),
}

struct End {
    topic: String,
    partition: i32,
    offset: Option<i64>,
}

/// How the loop finished with one record.
enum Outcome {
    /// Handled: the offset may move on.
    Handled,
    /// Moved to the dead-letter topic (or, for a replica reader, skipped):
    /// the offset may move on.
    DeadLettered,
    /// Its partition went to another consumer meanwhile.
    Revoked,
    /// The service is stopping.
    Stopped,
}

struct Loop<H> {
    consumer: GroupConsumer,
    context: Arc<GroupContext>,
    handler: H,
    settings: ConsumerConfig,
    /// `None` for a replica reader: it reads everything again on each start,
    /// so it would dead-letter the same record again each time; it logs and
    /// skips it instead.
    dead_letters: Option<DeadLetters>,
    stop: CancellationToken,
    /// Records (and ends of partitions) that arrived while the loop held its
    /// partitions paused (fetched just before the pause), with their epoch:
    /// handled next, in arrival order, which is offset order within each
    /// partition.
    waiting: VecDeque<(Delivery, u64)>,
}

impl<H: Handler> Loop<H> {
    /// The next record or end of partition, with the revocation epoch it
    /// arrived in; `None` once the service stops.
    async fn next(&mut self) -> Option<(Delivery, u64)> {
        if let Some(waiting) = self.waiting.pop_front() {
            return Some(waiting);
        }
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return None,
                received = self.consumer.recv() => match received {
                    Ok(record) => return Some((Delivery::Record(record.detach()), self.context.epoch())),
                    Err(KafkaError::PartitionEOF(partition)) => {
                        if let Some(end) = self.end_of(partition) {
                            return Some((Delivery::End(end), self.context.epoch()));
                        }
                    }
                    // librdkafka reports broker and partition trouble here and
                    // recovers by itself; the pause keeps a persistent error
                    // from spinning the loop.
                    Err(e) => {
                        tracing::warn!(error = %e, "consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
    }

    /// The end of `partition`, which the consumer just reported reaching:
    /// its position there, which is past every record it handed out and any
    /// commit marker after them. Read at once, before anything else is
    /// received, so it is not past a record the loop has not seen.
    fn end_of(&self, partition: i32) -> Option<End> {
        let position = match self.consumer.position() {
            Ok(position) => position,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the consumer's position");
                return None;
            }
        };
        // The end is reported by partition number only: with several topics
        // it is not known which one's (the offset then stays on the last
        // record handled, one short of a commit marker).
        let mut ends = position
            .elements()
            .into_iter()
            .filter(|e| e.partition() == partition);
        let (Some(end), None) = (ends.next(), ends.next()) else {
            return None;
        };
        Some(End {
            topic: end.topic().to_owned(),
            partition,
            offset: match end.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            },
        })
    }

    /// Sleeps for `delay` with every partition paused, while polling the
    /// consumer, which serves rebalances and keeps the member in its group.
    /// The partitions stay paused until [`Loop::process`] is done with the
    /// record. Returns `false` if the service stopped meanwhile.
    async fn wait(&mut self, delay: Duration) -> bool {
        if !self.context.held() {
            self.context.hold(&self.consumer, true);
        }
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return false,
                () = &mut sleep => return true,
                received = self.consumer.recv() => match received {
                    Ok(record) => self.waiting.push_back((Delivery::Record(record.detach()), self.context.epoch())),
                    Err(KafkaError::PartitionEOF(partition)) => {
                        if let Some(end) = self.end_of(partition) {
                            self.waiting.push_back((Delivery::End(end), self.context.epoch()));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "consumer error"),
                },
            }
        }
    }

    /// Handles `record`, retrying transient failures and dead-lettering what
    /// cannot be handled.
    async fn process(&mut self, record: &OwnedMessage, epoch: u64) -> Outcome {
        let mut attempt = 1;
        let mut first_failure = None;
        let outcome = loop {
            if self
                .context
                .revoked_since(record.topic(), record.partition(), epoch)
            {
                break Outcome::Revoked;
            }
            let (error, reason) = match self.handler.handle(record, attempt).await {
                Ok(()) => break Outcome::Handled,
                Err(HandleError::Permanent(e)) => (e, Reason::Permanent),
                Err(HandleError::Transient(e)) => {
                    let max = self.settings.max_attempts;
                    if max != 0 && attempt >= max {
                        (e, Reason::Exhausted)
                    } else {
                        first_failure.get_or_insert_with(Utc::now);
                        let delay = self.settings.retry.delay(attempt);
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis(), "handling failed, will retry");
                        self.context
                            .metrics()
                            .retried(&self.context.group, record.topic());
                        if !self.wait(delay).await {
                            break Outcome::Stopped;
                        }
                        continue;
                    }
                }
            };
            let failure = Failure {
                error: error.to_string(),
                reason,
                attempts: attempt,
                first_failure: first_failure.unwrap_or_else(Utc::now),
            };
            tracing::error!(error = %failure.error, reason = ?reason, attempts = attempt, "giving up on the record: to the dead-letter topic");
            break self.dead_letter(record, epoch, &failure).await;
        };
        if self.context.held() {
            self.context.hold(&self.consumer, false);
        }
        outcome
    }

    /// Publishes `record` to its dead-letter topic, retrying until the broker
    /// has it: moving past a record that is in neither topic would lose it.
    async fn dead_letter(&mut self, record: &OwnedMessage, epoch: u64, failure: &Failure) -> Outcome {
        let Some(dead_letters) = self.dead_letters.clone() else {
            tracing::error!(error = %failure.error, "skipping a record that cannot be handled");
            return Outcome::DeadLettered;
        };
        let mut attempt = 1;
        loop {
            match dead_letters.send(record, &self.context.group, failure).await {
                Ok(()) => {
                    self.context
                        .metrics()
                        .dead_lettered(&self.context.group, record.topic());
                    return Outcome::DeadLettered;
                }
                Err(e) => {
                    let delay = self.settings.retry.delay(attempt);
                    attempt += 1;
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis(), "cannot publish the dead letter, will retry");
                    if !self.wait(delay).await {
                        return Outcome::Stopped;
                    }
                    if self
                        .context
                        .revoked_since(record.topic(), record.partition(), epoch)
                    {
                        return Outcome::Revoked;
                    }
                }
            }
        }
    }

    /// Lets the offset move past `record`.
    fn move_past(&self, record: &OwnedMessage) {
        self.context
            .done_with(record.topic(), record.partition(), record.offset());
        if self.context.offsets == Offsets::Forget {
            return;
        }
        if let Err(e) = self
            .consumer
            .store_offset(record.topic(), record.partition(), record.offset())
        {
            // The partition was revoked in a rebalance meanwhile; its new
            // owner resumes from the last committed offset.
            tracing::warn!(error = %e, topic = record.topic(), partition = record.partition(), "cannot store offset");
        }
    }

    /// Lets the offset move to the end of a partition, every record before it
    /// having been handled (they came first, and records are handled in
    /// order), unless the partition was revoked since.
    fn move_to_end(&self, end: &End, epoch: u64) {
        if self.context.revoked_since(&end.topic, end.partition, epoch) {
            return;
        }
        self.context.reached_end(&end.topic, end.partition);
        let Some(offset) = end.offset.filter(|_| self.context.offsets == Offsets::Commit) else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        let stored = tpl
            .add_partition_offset(&end.topic, end.partition, Offset::Offset(offset))
            .and_then(|()| self.consumer.store_offsets(&tpl));
        if let Err(e) = stored {
            tracing::warn!(error = %e, topic = end.topic, partition = end.partition, "cannot store the end offset");
        }
    }

    /// Commits the stored offsets and leaves the group, within half the
    /// shutdown time: a broker that does not answer does not hold the
    /// service up (what was not committed is handled again after the
    /// restart).
    async fn close(self) -> Result<()> {
        let consumer = self.consumer;
        let offsets = self.context.offsets;
        let deadline = self.settings.shutdown_timeout / 2;
        // Both calls block on the broker, so they run off the async threads.
        let closed = tokio::task::spawn_blocking(move || {
            // Closing commits stored offsets too (auto-commit is on);
            // committing synchronously first makes the outcome visible in the log.
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
        match tokio::time::timeout(deadline, closed).await {
            Ok(closed) => closed.map_err(|source| crate::Error::Task {
                task: "consumer close",
                source,
            }),
            Err(_) => {
                tracing::warn!(?deadline, "the consumer did not close in time; leaving it");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        use crate::config::Backoff;

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
