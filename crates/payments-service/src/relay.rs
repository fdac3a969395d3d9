//! The outbox relay: publishes what Payments stored, in order, to Kafka.
//!
//! Appending events *is* queueing them for publication: the relay reads the
//! event store in commit order from its checkpoint
//! ([`EventStore::read_committed`]), publishes each event through the
//! idempotent producer, and records its checkpoint only after the broker
//! acknowledged. A crash anywhere in between means publishing again from the
//! last checkpoint, never skipping: at-least-once, with message ids derived
//! from the stored event ids so consumers recognise repeats.
//!
//! For each stored event it publishes:
//! - the payment's whole state after the event, on the state topic, and
//! - a notification (`PaymentReceived` or `PaymentRefunded`).
//!
//! Only one relay publishes at a time, whatever the number of Payments
//! instances: each holds a PostgreSQL advisory lock while it publishes, on a
//! connection of its own, so the lock goes when the process does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::{Checkpoint, EventStore, RecordedEvent};
use rdkafka::producer::{FutureProducer, FutureRecord};
use shared_events::{Envelope, Event, PaymentRefundedNotification, Topics, encode};
use sqlx::Connection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::SERVICE;
use crate::domain::{Payment, PaymentEvent};
use crate::repository::{RepositoryError, decode, load_at};

/// The relay's name for its checkpoint.
const CHECKPOINT: &str = "payments-outbox-relay";
/// Key of the advisory lock that makes one relay the publisher.
const LEADER_LOCK: i64 = 0x7061_796d_656e_7473; // "payments"
/// Events read and published per round.
const BATCH: i64 = 200;
/// Longest pause after an empty read before looking again. Writes of this
/// instance wake the relay at once; this bounds how long other instances'
/// writes wait.
const IDLE: Duration = Duration::from_millis(20);
/// Most payment states kept between batches.
const MAX_CACHED_STATES: usize = 10_000;
/// Pause after a failure (broker or database unreachable) before retrying.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Store(#[from] event_store::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("stored event {0} is invalid: {1}")]
    Corrupt(Uuid, String),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Encode(#[from] shared_events::EncodeError),
}

pub struct Relay {
    store: EventStore,
    /// Wakes the relay when this instance commits (see [`IDLE`]).
    appended: Arc<Notify>,
    producer: FutureProducer,
    topics: Topics,
    /// The latest state the relay saw of each payment, so publishing the
    /// state after an event rarely needs a replay.
    states: HashMap<String, Payment>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// `appended` is signalled by this instance's writes
    /// ([`crate::Payments::appended`]).
    pub fn new(store: EventStore, appended: Arc<Notify>, producer: FutureProducer, topics: Topics) -> Self {
        Self {
            store,
            appended,
            producer,
            topics,
            states: HashMap::new(),
        }
    }

    /// Publishes until `stop` is cancelled. Failures are logged and retried:
    /// the relay never gives up on an event.
    pub async fn run(mut self, stop: CancellationToken) -> service_kit::Result<()> {
        while !stop.is_cancelled() {
            if let Err(e) = self.lead(&stop).await {
                tracing::warn!(error = %e, "outbox relay interrupted, retrying");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(RETRY) => {}
                }
            }
        }
        Ok(())
    }

    /// Waits to become the publishing relay, then publishes until stopped.
    async fn lead(&mut self, stop: &CancellationToken) -> Result<(), RelayError> {
        // Detached from the pool: closing it (or the process dying) releases
        // the lock, and a pooled connection would keep it for whoever is next.
        let mut leader = self.store.pool().acquire().await?.detach();
        loop {
            let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut leader)
                .await?;
            if won {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(RETRY) => {}
            }
        }
        tracing::info!("outbox relay publishing");

        let mut checkpoint = self.store.checkpoint(CHECKPOINT).await?;
        while !stop.is_cancelled() {
            // The lock lives as long as this connection: if it is gone,
            // another relay may lead now, so this one stops here.
            leader.ping().await?;
            let batch = self.store.read_committed(checkpoint, BATCH).await?;
            let Some(&(last, _)) = batch.last() else {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = self.appended.notified() => {}
                    () = tokio::time::sleep(IDLE) => {}
                }
                continue;
            };
            self.publish(&batch).await?;
            // On the leader connection: written only while holding the lock.
            EventStore::save_checkpoint_in(&mut leader, CHECKPOINT, last).await?;
            checkpoint = last;
        }
        leader.close().await?;
        Ok(())
    }

    /// Publishes every event of `batch` and waits for all acknowledgements.
    async fn publish(&mut self, batch: &[(Checkpoint, RecordedEvent)]) -> Result<(), RelayError> {
        let mut deliveries = Vec::with_capacity(batch.len() * 2);
        for (_, stored) in batch {
            let event = decode(stored).map_err(|e| RelayError::Corrupt(stored.event_id, e))?;
            let state = self.state_after(stored, &event).await?;
            let source = format!("/{SERVICE}");
            let correlation_id = stored.metadata.correlation_id;
            let cause = Some(stored.event_id);

            // Ids derived from the stored event: publishing it again after a
            // crash produces the same ids, which consumers dedupe.
            let mut state_message = Envelope::new(&source, state.to_state(), correlation_id, cause)
                .occurred_at(stored.recorded_at);
            state_message.metadata.id = Uuid::new_v5(&stored.event_id, b"state").into();
            deliveries.push(self.send(&state_message)?);

            match &event {
                PaymentEvent::Received(received) => {
                    let mut n = Envelope::new(&source, received.notification(), correlation_id, cause)
                        .occurred_at(received.received_at);
                    n.metadata.id = stored.event_id.into();
                    deliveries.push(self.send(&n)?);
                }
                PaymentEvent::Refunded(refund) => {
                    let data = PaymentRefundedNotification {
                        payment_id: refund.payment_id,
                        refund_id: refund.refund_id,
                        refunded_at: refund.refunded_at,
                    };
                    let mut n =
                        Envelope::new(&source, data, correlation_id, cause).occurred_at(refund.refunded_at);
                    n.metadata.id = stored.event_id.into();
                    deliveries.push(self.send(&n)?);
                }
            }
        }
        for delivery in deliveries {
            // `Canceled`: the producer went away before answering.
            let delivered = delivery.await.map_err(|_| rdkafka::error::KafkaError::Canceled)?;
            delivered.map_err(|(e, _)| e)?;
        }
        tracing::debug!(events = batch.len(), "published");
        Ok(())
    }

    /// Queues `event` in the producer; the returned future resolves on the
    /// broker's acknowledgement. The producer keeps the order per partition.
    fn send<E: Event>(&self, event: &Envelope<E>) -> Result<rdkafka::producer::DeliveryFuture, RelayError> {
        let record = encode(event)?;
        let topic = self.topics.name(record.topic);
        let future_record = FutureRecord::to(topic)
            .key(&record.key)
            .payload(&record.payload)
            .headers(record.headers);
        self.producer
            .send_result(future_record)
            .map_err(|(e, _)| RelayError::Kafka(e))
    }

    /// The payment's state right after `stored`.
    async fn state_after(
        &mut self,
        stored: &RecordedEvent,
        event: &PaymentEvent,
    ) -> Result<Payment, RelayError> {
        let previous = match self.states.remove(&stored.stream_id) {
            Some(state) if state.version + 1 == stored.version => Some(state),
            // Not seen before (or the relay restarted): load it as it was
            // before this event, from its snapshot when there is one.
            _ if stored.version > 1 => load_at(&self.store, event.payment_id(), stored.version - 1).await?,
            _ => None,
        };
        let state = Payment::apply(previous, event)
            .map_err(|e| RelayError::Corrupt(stored.event_id, e.to_string()))?;
        // A cache, not a replica: bounded, refilled by replaying when needed.
        if self.states.len() >= MAX_CACHED_STATES {
            self.states.clear();
        }
        self.states.insert(stored.stream_id.clone(), state.clone());
        Ok(state)
    }
}
