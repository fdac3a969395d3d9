//! Payments kept as event streams in the event store.
//!
//! Each payment is the stream `payment-<id>`. Loading takes the latest
//! snapshot and replays the events after it; every `snapshot_every` events a
//! new snapshot is saved. Writes append with optimistic concurrency, and the
//! outbox relay publishes what was appended, so nothing here talks to Kafka.
//!
//! Writes take an [`IdempotencyKey`]: a retried request with the same key
//! gets the first one's outcome and appends nothing. A key belongs to one
//! customer and one operation, and is forgotten after a while (default
//! [`DEFAULT_KEY_TTL`]).
//!
//! Writes are committed in groups ([`event_store::group`]): each write is
//! one unit (the key's claim, then the append, or the refusal that undoes
//! the claim), and the writes that arrive while a group commits share the
//! next one's transaction. Each gets its own outcome: a conflict, a reused
//! key, a refusal fail only their own write. Two writes with one key in a
//! group: the first claims it and appends, the second finds its claim and
//! gets its outcome.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use event_store::group::Append;
use event_store::{EventMetadata, EventStore, ExpectedVersion, GroupCommit, NewEvent, RecordedEvent, Unit};
use serde_json::Value;
use shared_events::{Amount, PaymentId, PaymentReceived, PaymentReceivedV1};
use sqlx::PgConnection;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::domain::{InvalidHistory, Payment, PaymentEvent, RefundReason, RefundRefused};
use crate::latest::{self, LatestStates};

/// Payments' own schema (idempotency keys), beside the event store's.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long an idempotency key is remembered, unless configured otherwise:
/// long enough for any client's retries, short enough for the table to stay
/// small.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// What caused a write: the request, and the flow it belongs to. Stored with
/// every event the write appends (`causation_id` is the request's id), and
/// carried on into the published events' `ce_correlationid` and
/// `ce_causationid`.
#[derive(Debug, Clone, Copy)]
pub struct Cause {
    /// The flow: the client's `X-Correlation-Id`, or the first request's id.
    pub correlation_id: Uuid,
    /// The request that made the write (`X-Request-Id` of its response).
    pub request_id: Uuid,
}

/// A request made safe to retry: the client's key and the request itself,
/// to tell a retry (the same request) from a reuse of the key (another one).
#[derive(Debug, Clone, Copy)]
pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub request: &'a Value,
}

/// A refund a caller asks for.
#[derive(Debug, Clone)]
pub struct Refund<'a> {
    pub amount: Amount,
    pub reason: RefundReason,
    /// The version the caller decided on (`If-Match`), if it named one.
    pub expected: Option<u64>,
    pub key: Option<IdempotencyKey<'a>>,
    pub cause: Cause,
}

/// What a key is claimed for.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Payment,
    Refund,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Refund => "refund",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// No payment with that id.
    #[error("payment not found")]
    NotFound,
    /// The payment is not at the version the caller expected.
    #[error("payment is at version {actual}, not {expected}")]
    VersionMismatch { expected: u64, actual: u64 },
    /// The rules refuse the command.
    #[error(transparent)]
    Refused(#[from] RefundRefused),
    /// The idempotency key was used before with another request.
    #[error("idempotency key reused with a different request")]
    KeyReused,
    /// The stored events do not make a valid payment: a bug or tampering.
    #[error("stored history of payment {0} is invalid: {1}")]
    Corrupt(PaymentId, String),
    #[error(transparent)]
    Store(#[from] event_store::Error),
}

impl From<sqlx::Error> for RepositoryError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}

type Result<T, E = RepositoryError> = std::result::Result<T, E>;

/// The outcome of a write: the payment after it, and whether this request
/// made it (`false`: an earlier request with the same idempotency key did,
/// and the payment is as it is now).
#[derive(Debug)]
pub struct Written {
    pub payment: Payment,
    pub new: bool,
}

/// Payments on the event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Payments {
    store: EventStore,
    /// Every write goes through it: the writes of all clones share groups.
    writes: GroupCommit<Write>,
    snapshot_every: u64,
    /// How long idempotency keys are remembered.
    key_ttl: Duration,
    /// Signalled after every commit, so this instance's outbox relay
    /// publishes at once instead of at its next poll.
    appended: Arc<Notify>,
    /// The latest state of the payments this instance wrote, published or
    /// read: what answers ServiceB's callbacks ([`Payments::current`]).
    latest: LatestStates,
}

/// The stream of payment `id`.
pub fn stream_id(id: PaymentId) -> String {
    format!("payment-{id}")
}

impl Payments {
    pub fn new(store: EventStore, snapshot_every: u64) -> Self {
        Self {
            writes: GroupCommit::new(&store),
            store,
            snapshot_every: snapshot_every.max(1),
            key_ttl: DEFAULT_KEY_TTL,
            appended: Arc::default(),
            latest: LatestStates::new(latest::DEFAULT_ENTRIES),
        }
    }

    /// Keeps the latest state of at most `entries` payments in memory
    /// instead of [`latest::DEFAULT_ENTRIES`].
    pub fn with_cache_entries(mut self, entries: usize) -> Self {
        self.latest = LatestStates::new(entries);
        self
    }

    /// The latest states this instance holds, for its outbox relay to add
    /// the states it publishes, and for the metrics.
    pub fn latest(&self) -> &LatestStates {
        &self.latest
    }

    /// Remembers idempotency keys for `ttl` instead of [`DEFAULT_KEY_TTL`].
    pub fn with_key_ttl(mut self, ttl: Duration) -> Self {
        self.key_ttl = ttl;
        self
    }

    /// Signalled after every append this instance commits.
    pub fn appended(&self) -> Arc<Notify> {
        Arc::clone(&self.appended)
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// How many writes wait for the next group commit (the running one's
    /// excluded).
    pub fn waiting_writes(&self) -> usize {
        self.writes.waiting()
    }

    /// Creates the event store's and Payments' tables, or brings them up to date.
    pub async fn migrate(&self) -> Result<()> {
        self.store.migrate().await?;
        event_store::store::migrate(&MIGRATOR, self.store.pool()).await?;
        Ok(())
    }

    /// Records a received payment. With an idempotency `key`, a second
    /// request with the same key and the same request from the same customer
    /// returns the first one's payment and appends nothing.
    pub async fn create(
        &self,
        received: PaymentReceived,
        key: Option<IdempotencyKey<'_>>,
        cause: Cause,
    ) -> Result<Written> {
        let id = received.payment_id;
        let claim = key.map(|key| self.claim(received.customer_id.as_str(), Operation::Payment, key, id));
        let event = PaymentEvent::Received(received);
        let write = Write {
            claim,
            then: Then::Append(Append {
                stream: stream_id(id),
                expected: ExpectedVersion::NoStream,
                events: vec![new_event(&event, cause)],
            }),
        };
        let stored = match self.writes.commit(write).await? {
            Committed::Replay(first) => return self.now(first).await,
            Committed::Appended(stored) => stored,
        };
        self.appended.notify_one();
        let payment = Payment::replay(None, [&event])
            .map_err(|e| RepositoryError::Corrupt(id, e.to_string()))?
            .ok_or(RepositoryError::NotFound)?;
        debug_assert_eq!(stored.len(), 1);
        self.latest.committed(&payment, (&stored[0]).into());
        Ok(Written { payment, new: true })
    }

    /// The claim of `key` by a request of customer `scope` for `operation`
    /// on `payment`, to commit with the write.
    fn claim(&self, scope: &str, operation: Operation, key: IdempotencyKey<'_>, payment: PaymentId) -> Claim {
        Claim {
            scope: scope.to_owned(),
            operation,
            key: key.key.to_owned(),
            request: key.request.clone(),
            payment,
            ttl: self.key_ttl,
        }
    }

    /// Payment `id` as it is now, for a request that an earlier one with
    /// the same idempotency key made.
    async fn now(&self, id: PaymentId) -> Result<Written> {
        Ok(Written {
            payment: self.load(id).await?,
            new: false,
        })
    }

    /// Forgets the idempotency keys that expired; returns how many.
    pub async fn purge_expired_keys(&self) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= now()")
                .execute(self.store.pool())
                .await?
                .rows_affected(),
        )
    }

    /// The payment's current state: the latest snapshot plus the events after it.
    pub async fn load(&self, id: PaymentId) -> Result<Payment> {
        self.load_from(id, true).await
    }

    /// The payment's current state from all of its events, ignoring snapshots.
    pub async fn load_without_snapshot(&self, id: PaymentId) -> Result<Payment> {
        self.load_from(id, false).await
    }

    async fn load_from(&self, id: PaymentId, use_snapshot: bool) -> Result<Payment> {
        let (payment, _) = state_at(&self.store, id, use_snapshot, None)
            .await?
            .ok_or(RepositoryError::NotFound)?;
        Ok(payment)
    }

    /// GetPaymentInfo: the payment's latest state. When the reader names
    /// the event it needs (`X-Causation-Id`) and this instance saw that
    /// event committed, from memory, at or past that event and every write
    /// this instance acknowledged or published after it; otherwise from
    /// the event store, like [`Self::load`], leaving the state in memory.
    /// See [`crate::latest`] for what each can see.
    pub async fn current(&self, id: PaymentId, named: Option<Uuid>) -> Result<Payment> {
        if let Some(payment) = named.and_then(|event| self.latest.including(id, event)) {
            return Ok(payment);
        }
        let (payment, position) = state_at(&self.store, id, true, None)
            .await?
            .ok_or(RepositoryError::NotFound)?;
        self.latest.loaded(&payment, position);
        Ok(payment)
    }

    /// Makes `refund` of payment `id` if the payment is at its `expected`
    /// version (when given) and the rules allow it. Returns the payment
    /// after the refund. With an idempotency `key`, a second request with
    /// the same key and the same request returns the payment as it is now
    /// and refunds nothing more, whatever version it is at by then.
    ///
    /// Without `expected` the caller did not ask to be told of a concurrent
    /// change, so losing the race to another append is not its conflict:
    /// the refund is decided again on the payment as it is now (which may
    /// then have too little left: that is the caller's 422). Each retry
    /// follows an append that committed, so the loop ends when the others
    /// stop writing this payment, and a payment takes a bounded number of
    /// refunds (each takes at least one minor unit of what is left).
    pub async fn refund(&self, id: PaymentId, refund: Refund<'_>) -> Result<Written> {
        loop {
            match self.refund_once(id, &refund).await {
                Err(RepositoryError::VersionMismatch { actual, .. }) if refund.expected.is_none() => {
                    tracing::debug!(%id, actual, "another append won the race; deciding the refund again");
                }
                written => return written,
            }
        }
    }

    /// One try of [`Self::refund`]: the decision, on the payment as loaded,
    /// and its append, expecting exactly the version it was decided on.
    async fn refund_once(&self, id: PaymentId, refund: &Refund<'_>) -> Result<Written> {
        let Refund {
            amount,
            ref reason,
            expected,
            key,
            cause,
        } = *refund;
        let payment = self.load(id).await?;
        let version = payment.version;
        let decided = match expected {
            Some(expected) if expected != version => Err(Refusal::VersionMismatch {
                expected,
                actual: version,
            }),
            _ => payment
                .refund(amount, reason.clone(), Utc::now())
                .map_err(Refusal::Refused),
        };
        // The key first, even for a refund decided against: a retry of a
        // refund that was made finds the payment moved on, and must get that
        // refund's outcome, not a conflict. The key's claim commits with the
        // refund, or not at all; without a key, a refusal writes nothing.
        let claim =
            key.map(|key| self.claim(payment.received.customer_id.as_str(), Operation::Refund, key, id));
        let (then, event) = match decided {
            Err(refusal) if claim.is_none() => return Err(refusal.into()),
            Err(refusal) => (Then::Refuse(refusal), None),
            // The decision was made on `version`: appending expects exactly
            // it, so a concurrent refund decided on the same state loses (in
            // the same group too).
            Ok(event) => {
                let append = Append {
                    stream: stream_id(id),
                    expected: ExpectedVersion::Exact(version),
                    events: vec![new_event(&event, cause)],
                };
                (Then::Append(append), Some(event))
            }
        };
        let (event, stored) = match (self.writes.commit(Write { claim, then }).await, event) {
            (Ok(Committed::Appended(stored)), Some(event)) => (event, stored),
            (Ok(_), _) => return self.now(id).await,
            (Err(RepositoryError::Store(event_store::Error::Conflict { actual, .. })), _) => {
                return Err(RepositoryError::VersionMismatch {
                    expected: expected.unwrap_or(version),
                    actual: actual.unwrap_or_default(),
                });
            }
            (Err(e), _) => return Err(e),
        };
        self.appended.notify_one();
        let after =
            Payment::apply(Some(payment), &event).map_err(|e| RepositoryError::Corrupt(id, e.to_string()))?;
        self.latest.committed(&after, (&stored[0]).into());
        if after.version % self.snapshot_every == 0 {
            self.snapshot(&after).await;
        }
        Ok(Written {
            payment: after,
            new: true,
        })
    }

    /// Saves `payment` as its stream's snapshot. A failure only costs speed
    /// on the next load, so it is logged, not returned.
    async fn snapshot(&self, payment: &Payment) {
        let stream = stream_id(payment.received.payment_id);
        let saved = match serde_json::to_value(payment) {
            Ok(state) => self.store.save_snapshot(&stream, payment.version, &state).await,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise snapshot");
                return;
            }
        };
        if let Err(e) = saved {
            tracing::warn!(error = %e, stream, "snapshot not saved");
        }
    }

    /// Up to `limit` of the payment's stored events, from version `from` on.
    pub async fn events(&self, id: PaymentId, from: u64, limit: usize) -> Result<Vec<RecordedEvent>> {
        let stream = stream_id(id);
        if self.store.version(&stream).await?.is_none() {
            return Err(RepositoryError::NotFound);
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        Ok(self.store.read_stream_page(&stream, from.max(1), limit).await?)
    }
}

/// A write of Payments': one unit of a group commit ([`event_store::group`]).
#[derive(Debug)]
struct Write {
    /// The idempotency key to claim first, if the request has one.
    claim: Option<Claim>,
    then: Then,
}

/// What a write does once its key, if any, is claimed for it.
#[derive(Debug)]
enum Then {
    Append(Append),
    /// The request was decided against: it fails with this, which rolls
    /// its claim back (unless the key was claimed before by the same
    /// request: a retry gets the first one's outcome).
    Refuse(Refusal),
}

/// A refund decided against, kept in its write to fail it with (a write
/// may be run twice, should its group's commit fail).
#[derive(Debug, Clone)]
enum Refusal {
    VersionMismatch { expected: u64, actual: u64 },
    Refused(RefundRefused),
}

impl From<Refusal> for RepositoryError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::VersionMismatch { expected, actual } => Self::VersionMismatch { expected, actual },
            Refusal::Refused(refused) => Self::Refused(refused),
        }
    }
}

/// A committed write's outcome.
#[derive(Debug)]
enum Committed {
    Appended(Vec<RecordedEvent>),
    /// An earlier request with the same key, on this payment, made the write.
    Replay(PaymentId),
}

impl Unit for Write {
    type Output = Committed;
    type Error = RepositoryError;

    async fn run(&self, conn: &mut PgConnection) -> Result<Committed> {
        if let Some(claim) = &self.claim
            && let Some(first) = claim.run(conn).await?
        {
            return Ok(Committed::Replay(first));
        }
        match &self.then {
            Then::Append(append) => Ok(Committed::Appended(append.run(conn).await?)),
            Then::Refuse(refusal) => Err(refusal.clone().into()),
        }
    }

    /// Without a key, a write is its append alone.
    fn only_append(&self) -> Option<&Append> {
        match (&self.claim, &self.then) {
            (None, Then::Append(append)) => Some(append),
            _ => None,
        }
    }
}

impl From<Vec<RecordedEvent>> for Committed {
    fn from(stored: Vec<RecordedEvent>) -> Self {
        Self::Appended(stored)
    }
}

/// An idempotency key to claim for a request: the key, the request itself
/// (to tell a retry from a reuse of the key), and whose and what for.
#[derive(Debug)]
struct Claim {
    scope: String,
    operation: Operation,
    key: String,
    request: Value,
    payment: PaymentId,
    /// How long the key is remembered.
    ttl: Duration,
}

impl Claim {
    /// Claims the key for this request, on `conn`: `None` if it is new (or
    /// its earlier claim expired), so the request goes ahead; the payment
    /// of the earlier request if that was the same request.
    ///
    /// A concurrent claim of the same key waits on the first one's
    /// transaction: it sees the key once that commits, and claims it if that
    /// rolls back. In the same group, it sees the key at once.
    async fn run(&self, conn: &mut PgConnection) -> Result<Option<PaymentId>> {
        let claimed: Option<String> = sqlx::query_scalar(
            "INSERT INTO idempotency_keys (scope, operation, key, request, payment_id, expires_at) \
             VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6)) \
             ON CONFLICT (scope, operation, key) DO UPDATE \
                 SET request = EXCLUDED.request, payment_id = EXCLUDED.payment_id, \
                     created_at = now(), expires_at = EXCLUDED.expires_at \
                 WHERE idempotency_keys.expires_at <= now() \
             RETURNING key",
        )
        .bind(&self.scope)
        .bind(self.operation.as_str())
        .bind(&self.key)
        .bind(sqlx::types::Json(&self.request))
        .bind(Uuid::from(self.payment))
        .bind(self.ttl.as_secs_f64())
        .fetch_optional(&mut *conn)
        .await?;
        if claimed.is_some() {
            return Ok(None);
        }
        let (first_request, first_payment): (sqlx::types::Json<Value>, Uuid) = sqlx::query_as(
            "SELECT request, payment_id FROM idempotency_keys WHERE scope = $1 AND operation = $2 AND key = $3",
        )
        .bind(&self.scope)
        .bind(self.operation.as_str())
        .bind(&self.key)
        .fetch_one(&mut *conn)
        .await?;
        if first_request.0 != self.request {
            return Err(RepositoryError::KeyReused);
        }
        Ok(Some(PaymentId::from(first_payment)))
    }
}

fn new_event(event: &PaymentEvent, cause: Cause) -> NewEvent {
    let data = match event {
        PaymentEvent::Received(e) => serde_json::to_value(e),
        PaymentEvent::Refunded(e) => serde_json::to_value(e),
    };
    let (traceparent, tracestate) = service_kit::telemetry::current_context().unzip();
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: event.name().to_owned(),
        schema_version: event.schema_version(),
        // Plain data structs of strings and numbers always serialise.
        data: data.unwrap_or(Value::Null),
        metadata: EventMetadata {
            correlation_id: cause.correlation_id,
            causation_id: Some(cause.request_id),
            // The request's trace: the relay's publication continues it.
            traceparent,
            tracestate: tracestate.flatten(),
        },
    }
}

/// Turns a stored event back into a domain event, upcasting the versions
/// this Payments no longer writes: a `PaymentReceived` of version 1 (before
/// `payment_method`) reads as version 2 with the method `unknown`. The
/// stored event itself never changes; every reader upcasts it the same way.
pub fn decode(event: &RecordedEvent) -> Result<PaymentEvent, String> {
    let data = event.data.clone();
    match (event.event_type.as_str(), event.schema_version) {
        ("payments.payment-received", 1) => serde_json::from_value::<PaymentReceivedV1>(data)
            .map(|v1| PaymentEvent::Received(v1.into())),
        ("payments.payment-received", 2) => serde_json::from_value(data).map(PaymentEvent::Received),
        ("payments.payment-refunded", 1) => serde_json::from_value(data).map(PaymentEvent::Refunded),
        (name @ ("payments.payment-received" | "payments.payment-refunded"), version) => {
            return Err(format!(
                "stored event `{name}` of version {version}, which this Payments does not read (a newer one wrote it)"
            ));
        }
        (other, _) => return Err(format!("unknown stored event type `{other}`")),
    }
    .map_err(|e| e.to_string())
}

/// Payment `id` as it was right after its event `version` (`None` for
/// version 0): from its snapshot when that is not newer, then the events
/// after it. What the outbox relay publishes as the state after an event it
/// has no state cached for.
pub async fn load_at(store: &EventStore, id: PaymentId, version: u64) -> Result<Option<Payment>> {
    Ok(state_at(store, id, true, Some(version))
        .await?
        .map(|(payment, _)| payment))
}

/// The fold of payment `id`'s events up to `up_to` (all when `None`),
/// starting from its snapshot if `use_snapshot` and the snapshot is not
/// past `up_to`; with the store position of its newest event.
async fn state_at(
    store: &EventStore,
    id: PaymentId,
    use_snapshot: bool,
    up_to: Option<u64>,
) -> Result<Option<(Payment, i64)>> {
    let stream = stream_id(id);
    let snapshot = if use_snapshot {
        store.load_snapshot(&stream).await?
    } else {
        None
    };
    // A snapshot is a cache of the events: one this Payments cannot read
    // (an earlier one wrote it, before a field it now requires) is passed
    // over, and the stream replayed from its events, upcast as they are read.
    let snapshot = snapshot
        .filter(|s| up_to.is_none_or(|v| s.version <= v))
        .and_then(|s| match serde_json::from_value::<Payment>(s.state) {
            Ok(state) => Some((state, s.version)),
            Err(e) => {
                tracing::info!(stream, error = %e, "snapshot not readable, replaying the events instead");
                None
            }
        });
    let (state, from) = match snapshot {
        Some((state, version)) => (Some(state), version + 1),
        None => (None, 1),
    };
    // From the snapshot's own event on, for its position when nothing
    // follows it; only the events after it are folded.
    let mut events = store.read_stream(&stream, from.saturating_sub(1).max(1)).await?;
    events.retain(|e| up_to.is_none_or(|v| e.version <= v));
    let Some(position) = events.last().map(|e| e.position) else {
        return Ok(None);
    };
    events.retain(|e| e.version >= from);
    let payment = Payment::replay(state, &decode_all(id, &events)?)
        .map_err(|e: InvalidHistory| RepositoryError::Corrupt(id, e.to_string()))?;
    Ok(payment.map(|payment| (payment, position)))
}

fn decode_all(id: PaymentId, events: &[RecordedEvent]) -> Result<Vec<PaymentEvent>> {
    events
        .iter()
        .map(|e| decode(e).map_err(|reason| RepositoryError::Corrupt(id, reason)))
        .collect()
}
