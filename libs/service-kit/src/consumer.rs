//! The consumer loop every service runs.
//!
//! Records of different keys are handled concurrently; records of one key
//! (one payment) are handled one at a time, in offset order (key-ordered
//! concurrency, as Confluent's Parallel Consumer does). A record waits only
//! for the earlier records of its own key.
//!
//! Only once a record is handled does its offset count as done, and the
//! offset stored for the next commit is that of the *lowest record not yet
//! done* in its partition ([`crate::kafka::group`]): a crash re-delivers
//! every record not handled, and some that were (those after it), never
//! loses one. That is *at-least-once* delivery: handlers must be idempotent
//! (dedupe by event id, or upsert).
//!
//! - A [`HandleError::Unavailable`] failure (a dependency is down: Payments,
//!   the service's database) is nothing wrong with the record. The consumer
//!   pauses every partition it holds (it keeps polling, so it stays in its
//!   group) and retries the record with exponential backoff and jitter,
//!   without limit, until the dependency answers; then it resumes. The
//!   `consumer_paused` gauge names the dependency meanwhile. Records already
//!   in hand retry the same way; the partition's committed offset stays at
//!   the lowest of them.
//! - A [`HandleError::Transient`] failure (this record may succeed later,
//!   such as a read racing the write it follows) is retried with backoff.
//!   Only the record's own key waits meanwhile; the other keys go on.
//! - A [`HandleError::Permanent`] failure (the record can never be handled,
//!   such as an undecodable value), or a transient one that lasted
//!   `max_attempts` attempts, sends the record to its dead-letter topic
//!   ([`crate::dead_letter`]); once the broker has it, its key moves on.
//!   (A replica reader, which re-reads everything on each start, logs and
//!   skips it instead of dead-lettering it again on every start.)
//! - At most `max_in_flight` records are received and not yet done. At the
//!   bound the loop stops taking records until one is done (librdkafka keeps
//!   prefetching, up to `queued.max.messages.kbytes`). Should it stay at the
//!   bound for [`HOLD_AFTER`] (records stuck behind keys being retried), it
//!   pauses its partitions and polls again, which keeps it in the group and
//!   serves rebalances, until half of them are done. (Pausing is not the
//!   first resort: librdkafka drops what it prefetched for a paused
//!   partition and fetches again on resume, which costs hundreds of
//!   milliseconds each time.)
//! - When partitions are revoked, the rebalance waits (up to half the
//!   shutdown time) for the records of theirs being handled, and commits
//!   them; records of theirs still waiting behind their key are dropped
//!   unhandled: the new owner reads them from the committed offset.
//!
//! When the loop has handled everything up to the end of a partition, it
//! stores the end offset rather than the last record's offset + 1: a
//! producer writing in transactions (the outbox relay) leaves a commit
//! marker after its records, which no consumer is handed, and without this
//! the group would stay one offset behind, its lag never zero.
//!
//! On shutdown the loop stops fetching, gives the records being handled
//! half of what is left of the shutdown time (records being retried are
//! left at once), commits the stored offsets and leaves the group within
//! the rest ([`ShutdownBudget`]). The time is counted from when the stop
//! was asked for, not from when the loop noticed it (a rebalance that was
//! waiting for handlers may have held it meanwhile), and ends a little
//! before `SHUTDOWN_TIMEOUT_MS`, when the service aborts what still runs.

use std::collections::{HashMap, VecDeque};
use std::error::Error as StdError;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rdkafka::Message;
use rdkafka::Offset;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::types::RDKafkaErrorCode;
use shared_events::DecodeError;
use shared_events::envelope::event_id_of;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::ConsumerConfig;
use crate::dead_letter::{DeadLetters, Failure, Reason};
use crate::error::Result;
use crate::kafka::{GroupConsumer, GroupContext, Offsets};

type BoxError = Box<dyn StdError + Send + Sync>;

/// How long the loop may stop polling at its bound of records in flight
/// before it pauses its partitions and polls again.
pub const HOLD_AFTER: Duration = Duration::from_secs(1);

/// Why a record was not handled.
///
/// What decides the variant is whether the failure is the record's own
/// doing. Only then may the record end up in the dead-letter topic: an
/// outage of a dependency fails every record alike, and dead-lettering them
/// all would turn a two-minute outage into a redrive of everything it saw.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Handling can never succeed; the record goes to the dead-letter topic.
    #[error("permanent: {0}")]
    Permanent(BoxError),
    /// This record may succeed later (a read racing the write it follows);
    /// it is retried up to `max_attempts`, then dead-lettered.
    #[error("transient: {0}")]
    Transient(BoxError),
    /// A dependency (named for the `consumer_paused` gauge and the log) is
    /// down or refuses the service: nothing is wrong with the record. The
    /// consumer pauses its partitions and retries the record with backoff,
    /// for as long as it takes; it is never dead-lettered for this.
    #[error("{dependency} unavailable: {source}")]
    Unavailable {
        dependency: &'static str,
        source: BoxError,
    },
}

impl HandleError {
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }

    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }

    pub fn unavailable(dependency: &'static str, e: impl Into<BoxError>) -> Self {
        Self::Unavailable {
            dependency,
            source: e.into(),
        }
    }

    /// A failure of the service's own database. Losing the connection, a
    /// server that is starting or shutting down, out of resources, or
    /// refusing the login is the database being unavailable; a statement it
    /// rejects for what the record holds (a constraint, a value out of
    /// range) is this record's, with a retry budget.
    pub fn database(e: sqlx::Error) -> Self {
        if Self::is_unavailable(&e) {
            Self::unavailable(DATABASE, e)
        } else {
            Self::transient(e)
        }
    }

    /// Whether `e` is the database being unavailable rather than a
    /// statement it rejects (see [`HandleError::database`]).
    pub fn is_unavailable(e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Database(db) => db.code().is_none_or(|code| {
                // SQLSTATE classes: 08 connection exception, 53 insufficient
                // resources, 57 operator intervention (shutdown, cannot
                // connect now), 28 invalid authorization, 3D no such
                // database, 42501 permission denied.
                ["08", "53", "57", "28", "3D"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || code == "42501"
            }),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Configuration(_) => true,
            _ => false,
        }
    }
}

/// How [`HandleError::database`] names the service's own database.
pub const DATABASE: &str = "database";

/// A failure of the service's store while handling a record: the database
/// unavailable (the consumer pauses and waits for it) or, for a statement
/// it rejects, the record's own (see [`HandleError::database`]). A
/// failure shared by a group of rows ([`crate::Error::Shared`]) is the
/// database being unavailable: [`crate::batch`] shares no other.
impl From<crate::Error> for HandleError {
    fn from(e: crate::Error) -> Self {
        match e {
            crate::Error::Database(e) => Self::database(e),
            other => Self::unavailable(DATABASE, other),
        }
    }
}

/// A record that does not decode will not decode next time either.
impl From<DecodeError> for HandleError {
    fn from(e: DecodeError) -> Self {
        Self::permanent(e)
    }
}

/// What a service does with each record. Called concurrently for records of
/// different keys, one at a time for the records of one key.
pub trait Handler: Send + Sync + 'static {
    /// Handles `record`; `attempt` is 1 the first time, 2 on the first retry, ...
    fn handle(
        &self,
        record: &OwnedMessage,
        attempt: u32,
    ) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// The span of handling one record, after OpenTelemetry's messaging
/// conventions (`process {topic}`, kind consumer): a child of the send that
/// delivered it, so each consumer's handling joins the payment's trace.
/// The log lines inside it show the record's place and event id.
fn process_span(record: &OwnedMessage, group: &str) -> tracing::Span {
    let key = record.key().and_then(|k| std::str::from_utf8(k).ok());
    let span = tracing::info_span!(
        "record",
        otel.name = format!("process {}", record.topic()),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.consumer.group.name = group,
        messaging.destination.name = record.topic(),
        messaging.destination.partition.id = record.partition(),
        messaging.kafka.offset = record.offset(),
        messaging.kafka.message.key = key,
        messaging.message.id = event_id_of(record).unwrap_or_default(),
    );
    crate::telemetry::set_parent(&span, crate::telemetry::parent_from_record(record.headers()));
    span
}

/// How the consumer's share of `SHUTDOWN_TIMEOUT_MS` is spent once the stop
/// is asked for: the records in hand get half of what is left when the loop
/// gets to them, the final commit and leaving the group the rest, all before
/// [`ShutdownBudget::deadline`].
#[derive(Debug, Clone, Copy)]
pub struct ShutdownBudget {
    /// When the consumer must be closed: the shutdown timeout after the
    /// stop was asked for, less a tenth of it, kept for the service to wind
    /// up before it aborts what still runs.
    pub deadline: Instant,
}

impl ShutdownBudget {
    pub fn new(asked_at: Instant, shutdown_timeout: Duration) -> Self {
        Self {
            deadline: asked_at + shutdown_timeout - shutdown_timeout / 10,
        }
    }

    /// Until when the records in hand may be waited for, from `now`: half
    /// of what is left.
    pub fn drain_until(&self, now: Instant) -> Instant {
        now + self.deadline.saturating_duration_since(now) / 2
    }

    /// What is left, from `now`, for the final commit and leaving the group.
    pub fn left(&self, now: Instant) -> Duration {
        self.deadline.saturating_duration_since(now)
    }
}

/// Notes when `stop` is cancelled, from a task of its own: the loop may be
/// held in a rebalance when it is, and notice it only later.
fn asked_at(stop: &CancellationToken) -> Arc<std::sync::OnceLock<Instant>> {
    let asked = Arc::new(std::sync::OnceLock::new());
    tokio::spawn({
        let (stop, asked) = (stop.clone(), Arc::clone(&asked));
        async move {
            stop.cancelled().await;
            let _ = asked.set(Instant::now());
        }
    });
    asked
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
    let max_in_flight = settings.max_in_flight.max(1);
    let asked_at = asked_at(&stop);
    let mut run = Loop {
        worker: Arc::new(Worker {
            consumer,
            context,
            handler,
            settings,
            dead_letters,
            stop,
        }),
        lanes: HashMap::new(),
        handlers: JoinSet::new(),
        in_flight: 0,
        max_in_flight,
        full_since: None,
    };
    loop {
        let held = run.worker.context.held();
        let full_since = run.full_since;
        tokio::select! {
            biased;
            () = run.worker.stop.cancelled() => break,
            Some(finished) = run.handlers.join_next() => match finished {
                Ok(lane) => run.finished(lane),
                Err(e) => return Err(crate::Error::Task { task: "record handler", source: e }),
            },
            // At the bound for too long: pause, to poll without taking more.
            () = async { tokio::time::sleep_until((full_since.unwrap_or_else(Instant::now) + HOLD_AFTER).into()).await },
                if full_since.is_some() && !held =>
            {
                run.worker.context.hold(&run.worker.consumer, true);
            }
            received = run.worker.consumer.recv(), if full_since.is_none() || held => match received {
                Ok(record) => {
                    let epoch = run.worker.context.epoch();
                    run.accept(record.detach(), epoch);
                }
                Err(KafkaError::PartitionEOF(partition)) => run.worker.end_of(partition),
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
    let asked_at = asked_at.get().copied().unwrap_or_else(Instant::now);
    let budget = ShutdownBudget::new(asked_at, run.worker.settings.shutdown_timeout);
    run.close(budget).await
}

/// Records of one key of one partition: handled one at a time, in order.
type Lane = (String, i32, Option<Vec<u8>>);

/// A record received, with the revocation epoch it arrived in.
struct Received {
    record: OwnedMessage,
    epoch: u64,
}

/// The loop's own state: which keys have a record being handled, and what
/// waits behind it.
struct Loop<H> {
    worker: Arc<Worker<H>>,
    /// A lane is here while one of its records is being handled; the queue
    /// holds the records that wait for it, in offset order.
    lanes: HashMap<Lane, VecDeque<Received>>,
    /// One task per record being handled; each returns its lane.
    handlers: JoinSet<Lane>,
    /// Received and not yet done (being handled or waiting in a lane).
    in_flight: usize,
    max_in_flight: usize,
    /// Since when `in_flight` is at the bound.
    full_since: Option<Instant>,
}

/// What each record's task needs, shared.
struct Worker<H> {
    consumer: GroupConsumer,
    context: Arc<GroupContext>,
    handler: H,
    settings: ConsumerConfig,
    /// `None` for a replica reader: it reads everything again on each start,
    /// so it would dead-letter the same record again each time; it logs and
    /// skips it instead.
    dead_letters: Option<DeadLetters>,
    stop: CancellationToken,
}

/// How a record's task finished with it.
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

impl<H: Handler> Loop<H> {
    /// Takes a record the consumer handed out: handled now if its key is
    /// free, else queued behind the key's earlier records.
    fn accept(&mut self, record: OwnedMessage, epoch: u64) {
        let context = &self.worker.context;
        context.received(record.topic(), record.partition(), record.offset(), epoch);
        self.in_flight += 1;
        if self.in_flight >= self.max_in_flight && self.full_since.is_none() {
            self.full_since = Some(Instant::now());
        }
        let lane = (
            record.topic().to_owned(),
            record.partition(),
            record.key().map(<[u8]>::to_vec),
        );
        let received = Received { record, epoch };
        match self.lanes.get_mut(&lane) {
            Some(waiting) => waiting.push_back(received),
            None => {
                self.lanes.insert(lane.clone(), VecDeque::new());
                self.start(lane, received);
            }
        }
    }

    /// A record of `lane` is done: the next one waiting in it starts.
    fn finished(&mut self, lane: Lane) {
        self.in_flight -= 1;
        let context = Arc::clone(&self.worker.context);
        let next = loop {
            let Some(waiting) = self.lanes.get_mut(&lane).and_then(VecDeque::pop_front) else {
                break None;
            };
            let record = &waiting.record;
            if !context.revoked_since(record.topic(), record.partition(), waiting.epoch) {
                break Some(waiting);
            }
            // Its partition is gone: the new owner reads it again.
            self.in_flight -= 1;
        };
        match next {
            Some(next) => self.start(lane, next),
            None => {
                self.lanes.remove(&lane);
            }
        }
        if self.in_flight < self.max_in_flight {
            self.full_since = None;
        }
        if context.held() && self.in_flight <= self.max_in_flight / 2 {
            context.hold(&self.worker.consumer, false);
        }
    }

    fn start(&mut self, lane: Lane, received: Received) {
        let worker = Arc::clone(&self.worker);
        let Received { record, epoch } = received;
        worker.context.started(record.topic(), record.partition(), epoch);
        let span = process_span(&record, &worker.context.group);
        self.handlers.spawn(
            async move {
                // Whatever ends this task (its outcome, or an abort at
                // shutdown) tells the group context it finished.
                let mut finish = Finish {
                    worker: &worker,
                    record: &record,
                    epoch,
                    done: false,
                };
                finish.done = match worker.process(&record, epoch).await {
                    Outcome::Handled => {
                        worker
                            .context
                            .metrics()
                            .handled(&worker.context.group, record.topic());
                        true
                    }
                    Outcome::DeadLettered => {
                        tracing::Span::current().record("otel.status_code", "ERROR");
                        true
                    }
                    Outcome::Revoked => {
                        tracing::debug!("partition revoked; record left to its new owner");
                        false
                    }
                    // The offset stays put: handled again after the restart.
                    Outcome::Stopped => false,
                };
                drop(finish);
                lane
            }
            .instrument(span),
        );
    }

    /// Stops: the records being handled get half of what is left of
    /// `budget`; then those not done are dropped unhandled (their offsets
    /// not stored, so they are handled again after the restart), and the
    /// consumer commits and leaves the group, within the rest.
    async fn close(mut self, budget: ShutdownBudget) -> Result<()> {
        let drain_until = budget.drain_until(Instant::now());
        let drained = tokio::time::timeout_at(drain_until.into(), async {
            while self.handlers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = self.handlers.len(),
                "stopping: records in hand were not handled in time; they are left for the next start"
            );
            self.handlers.shutdown().await;
        }
        let Ok(worker) = Arc::try_unwrap(self.worker) else {
            unreachable!("every record's task has ended");
        };
        worker.close(budget.left(Instant::now())).await
    }
}

/// Tells the group context that a record's task finished, when dropped.
struct Finish<'a, H> {
    worker: &'a Worker<H>,
    record: &'a OwnedMessage,
    epoch: u64,
    /// Whether the offset may move past the record.
    done: bool,
}

impl<H> Drop for Finish<'_, H> {
    fn drop(&mut self) {
        let record = self.record;
        self.worker.context.finished(
            &self.worker.consumer,
            (record.topic(), record.partition(), record.offset()),
            self.epoch,
            self.done,
        );
    }
}

/// A record waiting for `dependency`: the consumer stays paused while any
/// record does (see [`GroupContext::depends`]).
struct Outage<'a> {
    consumer: &'a GroupConsumer,
    context: &'a GroupContext,
    dependency: &'static str,
}

impl<'a> Outage<'a> {
    fn begin<H>(worker: &'a Worker<H>, dependency: &'static str) -> Self {
        worker.context.depends(&worker.consumer, dependency, true);
        Self {
            consumer: &worker.consumer,
            context: &worker.context,
            dependency,
        }
    }
}

impl Drop for Outage<'_> {
    fn drop(&mut self) {
        self.context.depends(self.consumer, self.dependency, false);
    }
}

impl<H: Handler> Worker<H> {
    /// Notes the end of `partition`, which the consumer just reported
    /// reaching, at its position there: past every record it handed out and
    /// any commit marker after them. Read at once, before anything else is
    /// received, so it is not past a record the loop has not seen.
    fn end_of(&self, partition: i32) {
        let position = match self.consumer.position() {
            Ok(position) => position,
            Err(e) => return tracing::warn!(error = %e, "cannot read the consumer's position"),
        };
        // The end is reported by partition number only: with several topics
        // it is not known which one's (the offset then stays on the last
        // record handled, one short of a commit marker).
        let mut ends = position
            .elements()
            .into_iter()
            .filter(|e| e.partition() == partition);
        let (Some(end), None) = (ends.next(), ends.next()) else {
            return;
        };
        let offset = match end.offset() {
            Offset::Offset(offset) => Some(offset),
            _ => None,
        };
        let epoch = self.context.epoch();
        self.context
            .reached_end(&self.consumer, end.topic(), partition, offset, epoch);
    }

    /// Sleeps for `delay`; `false` if the service stopped meanwhile.
    async fn wait(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }

    /// Handles `record`, retrying what may pass and dead-lettering what
    /// cannot be handled. While a dependency is unavailable the consumer is
    /// paused ([`GroupContext::depends`]) and the record is retried without
    /// counting against `max_attempts`.
    async fn process(&self, record: &OwnedMessage, epoch: u64) -> Outcome {
        let mut attempt = 1;
        // Failures of the record's own (transient ones), against the budget.
        let mut failures = 0;
        let mut first_failure = None;
        // Holds the consumer paused while this record waits for a dependency;
        // dropping it (handled, given up on, revoked, stopped, aborted)
        // lets the consumer go on.
        let mut waiting_for: Option<Outage<'_>> = None;
        loop {
            if self
                .context
                .revoked_since(record.topic(), record.partition(), epoch)
            {
                return Outcome::Revoked;
            }
            let (error, reason) = match self.handler.handle(record, attempt).await {
                Ok(()) => return Outcome::Handled,
                Err(HandleError::Permanent(e)) => (e, Reason::Permanent),
                Err(HandleError::Unavailable { dependency, source }) => {
                    if waiting_for.as_ref().is_none_or(|o| o.dependency != dependency) {
                        waiting_for = Some(Outage::begin(self, dependency));
                    }
                    first_failure.get_or_insert_with(Utc::now);
                    let delay = self.settings.retry.delay(attempt);
                    attempt += 1;
                    tracing::warn!(error = %source, dependency, attempt, retry_in_ms = delay.as_millis(), "dependency unavailable, consumer paused, will retry");
                    if !self.retry_after(record, delay).await {
                        return Outcome::Stopped;
                    }
                    continue;
                }
                Err(HandleError::Transient(e)) => {
                    failures += 1;
                    let max = self.settings.max_attempts;
                    if max != 0 && failures >= max {
                        (e, Reason::Exhausted)
                    } else {
                        waiting_for = None;
                        first_failure.get_or_insert_with(Utc::now);
                        let delay = self.settings.retry.delay(failures);
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, retry_in_ms = delay.as_millis(), "handling failed, will retry");
                        if !self.retry_after(record, delay).await {
                            return Outcome::Stopped;
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
            return self.dead_letter(record, epoch, &failure).await;
        }
    }

    /// Counts a retry of `record` and waits `delay`; `false` if the service
    /// stopped meanwhile.
    async fn retry_after(&self, record: &OwnedMessage, delay: Duration) -> bool {
        self.context
            .metrics()
            .retried(&self.context.group, record.topic());
        self.wait(delay).await
    }

    /// Publishes `record` to its dead-letter topic, retrying until the broker
    /// has it: moving past a record that is in neither topic would lose it.
    async fn dead_letter(&self, record: &OwnedMessage, epoch: u64, failure: &Failure) -> Outcome {
        let Some(dead_letters) = &self.dead_letters else {
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

    /// Commits the stored offsets and leaves the group, within `deadline`
    /// (what is left of the shutdown budget): a broker that does not answer
    /// does not hold the service up (what was not committed is handled
    /// again after the restart).
    async fn close(self, deadline: Duration) -> Result<()> {
        let consumer = self.consumer;
        let offsets = self.context.offsets;
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
    fn the_final_commit_gets_what_is_left_of_the_shutdown_time_counted_from_the_stop() {
        let asked = Instant::now();
        let timeout = Duration::from_secs(10);
        let budget = ShutdownBudget::new(asked, timeout);
        assert_eq!(budget.deadline, asked + Duration::from_secs(9));
        // Noticed at once: 4.5 s for the records in hand, 4.5 s to commit.
        assert_eq!(budget.drain_until(asked), asked + Duration::from_millis(4500));
        assert_eq!(
            budget.left(asked + Duration::from_millis(4500)),
            Duration::from_millis(4500)
        );
        // Noticed 5 s late (a rebalance held the loop): the records get 2 s,
        // the commit 2 s, and it all ends 1 s before the service aborts.
        let late = asked + Duration::from_secs(5);
        assert_eq!(budget.drain_until(late), asked + Duration::from_secs(7));
        assert_eq!(
            budget.left(asked + Duration::from_secs(7)),
            Duration::from_secs(2)
        );
        // Nothing left: nothing to wait for.
        assert_eq!(budget.left(asked + timeout), Duration::ZERO);
        assert_eq!(budget.drain_until(asked + timeout), asked + timeout);
    }

    #[test]
    fn decode_errors_are_permanent() {
        let e: HandleError = DecodeError::MissingData.into();
        assert!(matches!(e, HandleError::Permanent(_)));
    }
}
