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
//! instances:
//!
//! - The leader holds a PostgreSQL advisory lock on a connection of its own,
//!   and writes its checkpoint through it. The lock goes with the session:
//!   when the process dies, and also when it stops talking to the database
//!   for [`LEASE`] (frozen, or cut off by the network), because the session
//!   is set to end when idle that long. The leader keeps it busy while it
//!   publishes, and its queries time out after [`QUERY_TIMEOUT`]. So a
//!   leader that stopped answering loses the lead within [`LEASE`], and the
//!   next one takes over within [`RETRY`] after that.
//! - It publishes each batch in one Kafka transaction, with a transactional
//!   id that every relay of these topics shares. A new leader's first act is
//!   to start its producer with that id, which fences off the previous
//!   leader's: the broker aborts its open transaction and refuses whatever it
//!   sends later. Consumers read committed records only, so a deposed leader
//!   that wakes up cannot publish an older state after a newer one (on the
//!   compacted state topic, the last record of a key wins, whatever its
//!   version).
//! - The leader keeps its session busy through the whole of a batch: the
//!   read, the build (which may replay many histories) and the publishing.
//!
//! What the relay waits for, and for how long:
//!
//! - A transaction open in *another* database of the PostgreSQL server does
//!   not hold it back (see [`event_store::commit_order::HORIZON`]).
//! - One open in the event store's own database does, since it may still
//!   commit events that come first. Once it has been open for
//!   `OUTBOX_HOLD_LIMIT_MS` while events committed after it wait, the relay
//!   ends it (`pg_terminate_backend`): it rolls back, so nothing it wrote is
//!   ever committed, and nothing is skipped. An event waits for such a
//!   transaction at most that long (plus [`HOLDERS_EVERY`]), since the
//!   transaction began before it.
//! - A stored event it cannot decode (a newer release's, after a rollback)
//!   holds its stream only: it is logged, shown in the metrics
//!   ([`crate::outbox`]), and recorded beside the checkpoint with the
//!   stream's later events waiting behind it, in order. The other streams go
//!   on. The held events are tried again when a relay starts leading and
//!   every [`HELD_RETRY`], and published in stream order once one can
//!   decode them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use event_store::{Checkpoint, EventStore, RecordedEvent};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use service_kit::config::KafkaConfig;
use service_kit::telemetry;
use shared_events::{Envelope, Event, PaymentRefundedNotification, Topics, encode};
use sqlx::{Connection, PgConnection};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing::instrument::Instrumented;
use uuid::Uuid;

use crate::SERVICE;
use crate::domain::{Payment, PaymentEvent};
use crate::latest::LatestStates;
use crate::outbox::OutboxMetrics;
use crate::repository::{RepositoryError, decode, load_at};

/// The relay's name for its checkpoint.
pub const CHECKPOINT: &str = "payments-outbox-relay";
/// Key of the advisory lock that makes one relay the publisher.
const LEADER_LOCK: i64 = 0x7061_796d_656e_7473; // "payments"
/// Events published in one Kafka transaction at most, unless configured
/// otherwise (`OUTBOX_BATCH_LIMIT`). A bound on a transaction's size, met
/// only under a backlog: the relay alone published a backlog at 10,700
/// events/s with 200, at 15,300/s with 1,000 (`cargo xtask bench`).
pub const DEFAULT_BATCH_LIMIT: u32 = 1000;
/// Longest pause after an empty read before looking again. Writes of this
/// instance wake the relay at once; this bounds how long other instances'
/// writes wait.
const IDLE: Duration = Duration::from_millis(20);
/// Most payment states kept between batches.
const MAX_CACHED_STATES: usize = 10_000;
/// Pause after a failure (broker or database unreachable) before retrying,
/// and between attempts at the lead.
pub const RETRY: Duration = Duration::from_secs(1);
/// How long the leader's database session may stay idle before the server
/// ends it, releasing the lock.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often the leader shows it is alive while it waits on Kafka.
const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// The longest a query on the leader's session may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the leader looks for transactions of its database that hold
/// publication back for longer than the hold limit.
pub const HOLDERS_EVERY: Duration = Duration::from_secs(1);
/// How often the leader tries again the streams it holds.
pub const HELD_RETRY: Duration = Duration::from_secs(5);

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
    #[error("the leader's database session did not answer within {QUERY_TIMEOUT:?}")]
    LeaderTimeout,
    #[error(transparent)]
    Runtime(#[from] service_kit::Error),
    #[error("a blocking Kafka call panicked: {0}")]
    Blocking(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Encode(#[from] shared_events::EncodeError),
}

impl RelayError {
    /// Why the stored event cannot be published by this release, if that
    /// is what went wrong (rather than the broker or the database).
    fn undecodable(&self) -> Option<String> {
        match self {
            Self::Corrupt(_, reason) => Some(reason.clone()),
            Self::Repository(e @ RepositoryError::Corrupt(..)) => Some(e.to_string()),
            _ => None,
        }
    }
}

/// How long the relay lets things take; see [`crate::Config`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long a send may wait for the broker's acknowledgement.
    pub publish_timeout: Duration,
    /// How long a transaction of the event store's database may hold
    /// publication back before the relay ends it.
    pub hold_limit: Duration,
    /// The most events one Kafka transaction carries. Each round takes
    /// every event committed and waiting, up to this: one when quiet (it
    /// goes at once, nothing waits for company), many under a backlog.
    pub batch_limit: u32,
    /// For tests: a pause while each batch is built.
    pub test_batch_pause: Duration,
}

/// A stored event ready to publish: what it is, and the payment's state
/// right after it.
struct Ready<'a> {
    stored: &'a RecordedEvent,
    event: PaymentEvent,
    state: Payment,
}

pub struct Relay {
    store: EventStore,
    /// Wakes the relay when this instance commits (see [`IDLE`]).
    appended: Arc<Notify>,
    kafka: KafkaConfig,
    limits: Limits,
    topics: Topics,
    /// The latest state the relay saw of each payment, so publishing the
    /// state after an event rarely needs a replay.
    states: HashMap<String, Payment>,
    /// The instance's latest states, which answer ServiceB's callbacks:
    /// each state is added before its notification is published.
    latest: LatestStates,
    /// The streams held, each from the version of its first event not
    /// published (as recorded beside the checkpoint).
    held: HashMap<String, u64>,
    metrics: OutboxMetrics,
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
    /// ([`crate::Payments::appended`]); `latest` gets the state after each
    /// event published ([`crate::Payments::latest`]).
    pub fn new(
        store: EventStore,
        appended: Arc<Notify>,
        latest: LatestStates,
        kafka: KafkaConfig,
        limits: Limits,
        metrics: OutboxMetrics,
    ) -> Self {
        Self {
            store,
            appended,
            latest,
            topics: kafka.topics.clone(),
            kafka,
            limits,
            states: HashMap::new(),
            held: HashMap::new(),
            metrics,
        }
    }

    /// The transactional id every relay publishing to these topics shares,
    /// so that each new leader fences off the one before.
    pub fn transactional_id(topics: &Topics) -> String {
        format!(
            "{}{}.{}",
            shared_events::services::RELAY_TRANSACTIONAL_PREFIX,
            topics.notifications,
            topics.state
        )
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
        // The session ends (and the lock with it) once idle for LEASE: a
        // leader that froze or was cut off loses the lead, without waiting
        // for TCP to notice. Statements on it end after QUERY_TIMEOUT.
        for setting in [
            format!("SET idle_session_timeout = {}", LEASE.as_millis()),
            format!("SET statement_timeout = {}", QUERY_TIMEOUT.as_millis()),
        ] {
            on_leader(sqlx::query(&setting).execute(&mut leader)).await?;
        }
        loop {
            let won: bool = on_leader(
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut leader),
            )
            .await?;
            if won {
                break;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(RETRY) => on_leader(leader.ping()).await?,
            }
        }

        // Before anything is published: fence off the previous leader's
        // producer (its open transaction is aborted, its writes refused).
        let producer = service_kit::kafka::transactional_producer(
            &self.kafka,
            SERVICE,
            &Self::transactional_id(&self.topics),
            self.limits.publish_timeout,
        )?;
        let timeout = self.limits.publish_timeout;
        blocking_keeping_lease(&mut leader, &producer, move |p| p.init_transactions(timeout)).await??;
        tracing::info!("outbox relay publishing");
        self.metrics.lead_taken();

        let mut checkpoint = self.store.checkpoint(CHECKPOINT).await?;
        self.held = self
            .store
            .holds(CHECKPOINT)
            .await?
            .into_iter()
            .map(|hold| (hold.stream_id, hold.version))
            .collect();
        // The held streams at once: this relay may be a release that reads them.
        let mut retry_held_at = Instant::now();
        let mut look_for_holders_at = Instant::now();
        while !stop.is_cancelled() {
            // The lock lives as long as this connection: if it is gone,
            // another relay may lead now, so this one stops here.
            on_leader(leader.ping()).await?;
            if Instant::now() >= look_for_holders_at {
                self.end_long_holders(&mut leader, checkpoint).await?;
                look_for_holders_at = Instant::now() + HOLDERS_EVERY;
            }
            if !self.held.is_empty() && Instant::now() >= retry_held_at {
                self.publish_held(&producer, &mut leader, checkpoint).await?;
                retry_held_at = Instant::now() + HELD_RETRY;
            }
            // Whatever is committed and waiting, up to the limit: no timer,
            // so a lone event is published at once, and a backlog in
            // transactions as large as the limit.
            let limit = i64::from(self.limits.batch_limit.max(1));
            let batch = keeping_lease(&mut leader, self.store.read_committed(checkpoint, limit)).await??;
            let Some(&(last, _)) = batch.last() else {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = self.appended.notified() => {}
                    () = tokio::time::sleep(IDLE) => {}
                }
                continue;
            };
            let published = self.publish_batch(&producer, &mut leader, &batch, last).await;
            if published.is_err() {
                self.metrics.batch_failed();
            }
            published?;
            checkpoint = last;
        }
        on_leader(leader.close()).await?;
        Ok(())
    }

    /// Publishes `batch`, except the events of held streams (and those it
    /// finds it cannot decode: their streams are held from them on), then
    /// moves the checkpoint to `last` and records the new holds, together.
    async fn publish_batch(
        &mut self,
        producer: &FutureProducer,
        leader: &mut PgConnection,
        batch: &[(Checkpoint, RecordedEvent)],
        last: Checkpoint,
    ) -> Result<(), RelayError> {
        let (ready, newly_held) = keeping_lease(leader, self.prepare(batch)).await??;
        if !ready.is_empty() {
            self.publish(producer, leader, &ready).await?;
        }
        // On the leader connection: written only while holding the lock.
        if newly_held.is_empty() {
            on_leader(EventStore::save_checkpoint_in(leader, CHECKPOINT, last)).await?;
        } else {
            // Together: a checkpoint past a held event without its hold
            // would lose the event.
            let mut both = on_leader(leader.begin()).await?;
            on_leader(EventStore::save_checkpoint_in(&mut both, CHECKPOINT, last)).await?;
            for (stream, version) in &newly_held {
                on_leader(EventStore::hold_in(&mut both, CHECKPOINT, stream, *version)).await?;
            }
            on_leader(both.commit()).await?;
        }
        Ok(())
    }

    /// The events of `batch` ready to publish, and the streams held from
    /// now on (with the version they are held from). An event of a held
    /// stream waits behind the one that holds it.
    async fn prepare<'a>(
        &mut self,
        batch: &'a [(Checkpoint, RecordedEvent)],
    ) -> Result<(Vec<Ready<'a>>, Vec<(String, u64)>), RelayError> {
        if !self.limits.test_batch_pause.is_zero() {
            tracing::info!(pause = ?self.limits.test_batch_pause, "building a batch, slowed for a test");
            tokio::time::sleep(self.limits.test_batch_pause).await;
        }
        let mut ready = Vec::with_capacity(batch.len());
        let mut newly_held = Vec::new();
        for (_, stored) in batch {
            if self.held.contains_key(&stored.stream_id) {
                continue;
            }
            match self.ready(stored).await? {
                Ok(event) => ready.push(event),
                Err(reason) => {
                    tracing::warn!(
                        stream = stored.stream_id,
                        version = stored.version,
                        event_id = %stored.event_id,
                        event_type = stored.event_type,
                        reason,
                        "stored event held: this release cannot publish it; its stream waits, the others go on"
                    );
                    self.held.insert(stored.stream_id.clone(), stored.version);
                    newly_held.push((stored.stream_id.clone(), stored.version));
                }
            }
        }
        Ok((ready, newly_held))
    }

    /// `stored`, decoded with the payment's state after it; or why this
    /// release cannot publish it.
    async fn ready<'a>(
        &mut self,
        stored: &'a RecordedEvent,
    ) -> Result<Result<Ready<'a>, String>, RelayError> {
        let event = match decode(stored) {
            Ok(event) => event,
            Err(reason) => return Ok(Err(reason)),
        };
        match self.state_after(stored, &event).await {
            Ok(state) => Ok(Ok(Ready { stored, event, state })),
            Err(e) => match e.undecodable() {
                Some(reason) => {
                    self.states.remove(&stored.stream_id);
                    Ok(Err(reason))
                }
                None => Err(e),
            },
        }
    }

    /// Tries again the held streams: publishes each one's held events up to
    /// the first it still cannot decode, in stream order, then moves its
    /// hold there (or ends it). Events after `checkpoint` are not read
    /// here: the main read brings them, once the stream is no longer held.
    async fn publish_held(
        &mut self,
        producer: &FutureProducer,
        leader: &mut PgConnection,
        checkpoint: Checkpoint,
    ) -> Result<(), RelayError> {
        let held: Vec<(String, u64)> = self.held.iter().map(|(s, v)| (s.clone(), *v)).collect();
        for (stream, from) in held {
            let events = keeping_lease(leader, self.store.read_held(&stream, from, checkpoint)).await??;
            let mut ready = Vec::with_capacity(events.len());
            let mut still_held = None;
            for (_, stored) in &events {
                match keeping_lease(leader, self.ready(stored)).await?? {
                    Ok(event) => ready.push(event),
                    Err(reason) => {
                        tracing::debug!(
                            stream,
                            version = stored.version,
                            reason,
                            "held event still cannot be published"
                        );
                        still_held = Some(stored.version);
                        break;
                    }
                }
            }
            if ready.is_empty() && still_held.is_some() {
                continue;
            }
            if !ready.is_empty() {
                let published = self.publish(producer, leader, &ready).await;
                if published.is_err() {
                    self.metrics.batch_failed();
                }
                published?;
            }
            on_leader(EventStore::move_hold_in(leader, CHECKPOINT, &stream, still_held)).await?;
            tracing::info!(
                stream,
                published = ready.len(),
                still_held,
                "held events published"
            );
            match still_held {
                Some(version) => self.held.insert(stream, version),
                None => self.held.remove(&stream),
            };
        }
        Ok(())
    }

    /// Ends the transactions of the event store's database that have held
    /// publication back for longer than the hold limit.
    async fn end_long_holders(
        &self,
        leader: &mut PgConnection,
        checkpoint: Checkpoint,
    ) -> Result<(), RelayError> {
        let holders = keeping_lease(
            leader,
            self.store.holders(checkpoint, Some(self.limits.hold_limit)),
        )
        .await??;
        for holder in holders {
            if holder.ended {
                tracing::warn!(
                    pid = holder.pid,
                    transaction_id = holder.transaction_id,
                    application = holder.application,
                    state = holder.state,
                    open_for = ?holder.open_for,
                    "ended a transaction of the event store's database that held publication back for longer than OUTBOX_HOLD_LIMIT_MS"
                );
            } else if holder.open_for > self.limits.hold_limit {
                tracing::warn!(
                    pid = holder.pid,
                    transaction_id = holder.transaction_id,
                    application = holder.application,
                    "a transaction of the event store's database holds publication back, and cannot be ended (no right to signal it)"
                );
            }
        }
        Ok(())
    }

    /// Publishes every event of `ready` in one transaction, and commits it.
    /// On any failure the transaction is aborted, so none of it is seen.
    async fn publish(
        &mut self,
        producer: &FutureProducer,
        leader: &mut PgConnection,
        ready: &[Ready<'_>],
    ) -> Result<(), RelayError> {
        producer.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(ready.len() * 2);
        // Each record's `send` span, to mark them failed if the transaction is.
        let mut sends = Vec::with_capacity(ready.len() * 2);
        let sent = self.send_batch(producer, ready, &mut deliveries, &mut sends);
        let timeout = self.limits.publish_timeout;
        // Every record acknowledged before the commit, so it has nothing
        // left to flush (see [`commit`]).
        let acknowledged = match sent {
            Ok(()) => keeping_lease(leader, delivered(deliveries))
                .await
                .and_then(|acked| acked),
            Err(e) => Err(e),
        };
        let committing = Instant::now();
        let committed = match acknowledged {
            Ok(()) => blocking_keeping_lease(leader, producer, move |p| commit(p, timeout)).await,
            Err(e) => Err(e),
        };
        let failure = match committed {
            Ok(Ok(())) => {
                tracing::debug!(events = ready.len(), "published");
                self.metrics
                    .transaction_published(ready.len(), committing.elapsed());
                return Ok(());
            }
            Ok(Err(e)) => e.into(),
            Err(e) => e,
        };
        for send in &sends {
            send.record("otel.status_code", "ERROR");
        }
        Err(abort(leader, producer, timeout, failure).await)
    }

    /// Queues the records of every event of `ready` in the open transaction.
    fn send_batch(
        &self,
        producer: &FutureProducer,
        ready: &[Ready<'_>],
        deliveries: &mut Vec<Instrumented<DeliveryFuture>>,
        sends: &mut Vec<tracing::Span>,
    ) -> Result<(), RelayError> {
        for Ready { stored, event, state } in ready {
            let source = format!("/{SERVICE}");
            let correlation_id = stored.metadata.correlation_id;
            // The notification *is* the stored event (its id is the event's):
            // its cause is what caused the event, the request. The state is
            // caused by the event.
            let request = stored.metadata.causation_id;
            let event_cause = Some(stored.event_id);
            // Both records were made where the event was stored: that
            // context is their `ce_traceparent`, and the parent of their sends.
            let (traceparent, tracestate) = (&stored.metadata.traceparent, &stored.metadata.tracestate);

            // Ids derived from the stored event: publishing it again after a
            // crash produces the same ids, which consumers dedupe.
            let mut state_message = Envelope::new(&source, state.to_state(), correlation_id, event_cause)
                .traced(traceparent.clone(), tracestate.clone())
                .occurred_at(stored.recorded_at);
            state_message.metadata.id = Uuid::new_v5(&stored.event_id, b"state").into();
            deliveries.push(self.send(producer, &state_message, sends)?);

            match event {
                PaymentEvent::Received(received) => {
                    let mut n = Envelope::new(&source, received.notification(), correlation_id, request)
                        .traced(traceparent.clone(), tracestate.clone())
                        .occurred_at(received.received_at);
                    n.metadata.id = stored.event_id.into();
                    deliveries.push(self.send(producer, &n, sends)?);
                }
                PaymentEvent::Refunded(refund) => {
                    let data = PaymentRefundedNotification {
                        payment_id: refund.payment_id,
                        refund_id: refund.refund_id,
                        refunded_at: refund.refunded_at,
                    };
                    let mut n = Envelope::new(&source, data, correlation_id, request)
                        .traced(traceparent.clone(), tracestate.clone())
                        .occurred_at(refund.refunded_at);
                    n.metadata.id = stored.event_id.into();
                    deliveries.push(self.send(producer, &n, sends)?);
                }
            }
        }
        Ok(())
    }

    /// Queues `event` in the producer's open transaction; the future settles
    /// once the broker acknowledged it (or refused it). Its `send` span
    /// (OpenTelemetry's messaging conventions, kind producer) goes into
    /// `sends`, and its context into the record's `traceparent` header; the
    /// span lasts until the future settles (a span ends when last left).
    fn send<E: Event>(
        &self,
        producer: &FutureProducer,
        event: &Envelope<E>,
        sends: &mut Vec<tracing::Span>,
    ) -> Result<Instrumented<DeliveryFuture>, RelayError> {
        let record = encode(event)?;
        let topic = self.topics.name(record.topic);
        let span = tracing::info_span!(
            "send",
            otel.name = format!("send {topic}"),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = topic,
            messaging.kafka.message.key = record.key,
            messaging.message.id = %event.metadata.id,
        );
        let made_in = telemetry::parent_from_strings(
            event.metadata.traceparent.as_deref(),
            event.metadata.tracestate.as_deref(),
        );
        telemetry::set_parent(&span, made_in);
        let headers = span.in_scope(|| telemetry::inject_into_record(record.headers));
        sends.push(span.clone());
        let future_record = FutureRecord::to(topic)
            .key(&record.key)
            .payload(&record.payload)
            .headers(headers);
        producer
            .send_result(future_record)
            .map(|delivery| delivery.instrument(span))
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
        self.latest.committed(&state, stored.into());
        Ok(state)
    }
}

/// `query` on the leader's session, bounded by [`QUERY_TIMEOUT`] (the
/// server's `statement_timeout` does not cover a connection that stopped
/// answering).
async fn on_leader<T, E: Into<RelayError>>(
    query: impl Future<Output = Result<T, E>>,
) -> Result<T, RelayError> {
    tokio::time::timeout(QUERY_TIMEOUT, query)
        .await
        .map_err(|_| RelayError::LeaderTimeout)?
        .map_err(Into::into)
}

/// Waits for `work` while keeping the leader's session busy, so that
/// waiting on Kafka does not end the lease. Fails if the session does not
/// answer: the lock may be gone.
async fn keeping_lease<T>(leader: &mut PgConnection, work: impl Future<Output = T>) -> Result<T, RelayError> {
    tokio::pin!(work);
    let mut alive = tokio::time::interval(KEEP_ALIVE);
    // The first tick is at once: a batch that is done sooner costs no ping.
    alive.reset();
    loop {
        tokio::select! {
            done = &mut work => return Ok(done),
            _ = alive.tick() => on_leader(leader.ping()).await?,
        }
    }
}

/// Runs the blocking producer call `call` on a thread of its own, keeping
/// the lease (see [`keeping_lease`]).
async fn blocking_keeping_lease<T: Send + 'static>(
    leader: &mut PgConnection,
    producer: &FutureProducer,
    call: impl FnOnce(&FutureProducer) -> T + Send + 'static,
) -> Result<T, RelayError> {
    let producer = producer.clone();
    Ok(keeping_lease(leader, tokio::task::spawn_blocking(move || call(&producer))).await??)
}

/// Waits until the broker acknowledged every record of `deliveries`; the
/// first refusal fails it (the transaction is then aborted).
async fn delivered(deliveries: Vec<Instrumented<DeliveryFuture>>) -> Result<(), RelayError> {
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(RelayError::Kafka(e)),
            // The producer is gone (it was dropped): the commit cannot happen.
            Err(_) => return Err(RelayError::Kafka(rdkafka::error::KafkaError::Canceled)),
        }
    }
    Ok(())
}

/// The longest [`commit`] waits for the producer to let go of the records
/// it reported delivered: a matter of microseconds.
const RELEASE_WAIT: Duration = Duration::from_millis(10);

/// Commits the open transaction of `producer`, every record of which was
/// acknowledged (blocking).
///
/// rdkafka flushes before it commits, and while the producer still counts
/// a record its flush polls for up to 100 ms before looking again. A
/// record's delivery future settles while the producer's polling thread
/// hands out the report, a moment before the producer stops counting the
/// record: committing at once, a few transactions in a hundred waited those
/// 100 ms, and every event stored meanwhile with it. So this first waits
/// for that moment, in steps far finer than rdkafka's.
fn commit(producer: &FutureProducer, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
    let released_by = std::time::Instant::now() + RELEASE_WAIT;
    while producer.in_flight_count() > 0 && std::time::Instant::now() < released_by {
        std::thread::sleep(Duration::from_micros(50));
    }
    producer.commit_transaction(timeout)
}

/// Aborts the open transaction after `cause`, and returns `cause`. A
/// producer that was fenced off cannot abort; its transaction is the
/// broker's to abort then.
async fn abort(
    leader: &mut PgConnection,
    producer: &FutureProducer,
    timeout: Duration,
    cause: RelayError,
) -> RelayError {
    match blocking_keeping_lease(leader, producer, move |p| p.abort_transaction(timeout)).await {
        Ok(Ok(())) => tracing::warn!(error = %cause, "batch not published; its transaction was aborted"),
        Ok(Err(e)) => tracing::warn!(error = %cause, abort = %e, "batch not published; aborting failed"),
        Err(e) => tracing::warn!(error = %cause, abort = %e, "batch not published; aborting failed"),
    }
    cause
}
