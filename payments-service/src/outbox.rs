//! What the outbox has not published yet, shown three ways: series at
//! `GET /metrics`, the `outbox` detail of `GET /ready`, and a warning in the
//! log once the oldest event not yet published is older than
//! `OUTBOX_LAG_WARN_MS`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `outbox_unpublished_events` | gauge | |
//! | `outbox_oldest_unpublished_seconds` | gauge | |
//! | `outbox_held_streams` | gauge (1 per held stream) | stream, event_type |
//! | `outbox_holding_transactions` | gauge | |
//! | `outbox_relay_leads_total` | counter | |
//! | `outbox_relay_failed_batches_total` | counter | |
//! | `outbox_relay_transaction_events` | histogram (1, 2, 4 … 1024) | |
//! | `outbox_relay_commit_seconds` | histogram (1 ms, 2 ms … 2.048 s) | |
//!
//! Every instance watches, leading relay or not: the figures come from the
//! event store (the relay's checkpoint and holds), the same for all. The
//! counters and the histogram are this instance's relay's own: how often
//! it became the publisher, how many batches it read and did not publish
//! (aborted, refused by the broker, or given up when its lease was gone),
//! and how many events each Kafka transaction it committed carried (each
//! event is two records: its state and its notification). Its `_count` is
//! the transactions, its `_sum` the events published. And how long the
//! broker took to commit each of them, once every record of it was
//! acknowledged: a millisecond or so, unless the broker is slow; every
//! event stored meanwhile waits for it.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use event_store::{Backlog, EventStore, Hold, Holder};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::relay::CHECKPOINT;

/// How often the backlog is measured.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How often the warning is repeated while the backlog stays old.
const WARN_AGAIN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HeldLabels {
    stream: String,
    event_type: String,
}

/// The outbox's series. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct OutboxMetrics {
    unpublished: Gauge,
    oldest: Gauge<f64, AtomicU64>,
    held: Family<HeldLabels, Gauge>,
    holding: Gauge,
    leads: Counter,
    failed_batches: Counter,
    transaction_events: Histogram,
    commit_seconds: Histogram,
    /// The held series shown now, to drop those of holds that ended.
    held_series: Arc<Mutex<Vec<HeldLabels>>>,
}

impl Default for OutboxMetrics {
    fn default() -> Self {
        Self {
            unpublished: Gauge::default(),
            oldest: Gauge::default(),
            held: Family::default(),
            holding: Gauge::default(),
            leads: Counter::default(),
            failed_batches: Counter::default(),
            // 1 to 1024: a lone event up to past any batch limit in use.
            transaction_events: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            // 1 ms to 2 s: a commit as the broker answers it, up to a stall.
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 12)),
            held_series: Arc::default(),
        }
    }
}

impl OutboxMetrics {
    /// Registers the series in `registry` (see [`service_kit::metrics::Metrics::with`]).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "outbox_unpublished_events",
            "Events stored and not yet published (held ones included)",
            self.unpublished.clone(),
        );
        registry.register(
            "outbox_oldest_unpublished_seconds",
            "Age of the oldest event stored and not yet published",
            self.oldest.clone(),
        );
        registry.register(
            "outbox_held_streams",
            "Streams the relay holds: it cannot decode their event at the hold (a newer release wrote it)",
            self.held.clone(),
        );
        registry.register(
            "outbox_holding_transactions",
            "Transactions open in the event store's database that hold publication back",
            self.holding.clone(),
        );
        registry.register(
            "outbox_relay_leads",
            "Times this instance's relay became the publishing one",
            self.leads.clone(),
        );
        registry.register(
            "outbox_relay_failed_batches",
            "Batches this instance's relay read and did not publish (aborted, refused, or its lease gone)",
            self.failed_batches.clone(),
        );
        registry.register(
            "outbox_relay_transaction_events",
            "Events (a state and a notification each) per Kafka transaction this instance's relay committed",
            self.transaction_events.clone(),
        );
        registry.register(
            "outbox_relay_commit_seconds",
            "How long each Kafka transaction this instance's relay committed took to commit, its records all acknowledged",
            self.commit_seconds.clone(),
        );
    }

    pub(crate) fn lead_taken(&self) {
        self.leads.inc();
    }

    pub(crate) fn batch_failed(&self) {
        self.failed_batches.inc();
    }

    pub(crate) fn transaction_published(&self, events: usize, commit: Duration) {
        self.transaction_events.observe(events as f64);
        self.commit_seconds.observe(commit.as_secs_f64());
    }

    fn show(&self, seen: &Seen) {
        self.unpublished
            .set(i64::try_from(seen.backlog.events).unwrap_or(i64::MAX));
        self.oldest
            .set(seen.backlog.oldest.map_or(0.0, |age| age.as_secs_f64()));
        self.holding
            .set(i64::try_from(seen.holders.len()).unwrap_or(i64::MAX));
        let now: Vec<HeldLabels> = seen
            .holds
            .iter()
            .map(|hold| HeldLabels {
                stream: hold.stream_id.clone(),
                event_type: hold.event_type.clone(),
            })
            .collect();
        let mut shown = self.held_series.lock().unwrap_or_else(PoisonError::into_inner);
        for gone in shown.iter().filter(|labels| !now.contains(labels)) {
            self.held.remove(gone);
        }
        for labels in &now {
            self.held.get_or_create(labels).set(1);
        }
        *shown = now;
    }
}

/// The latest figures, for `GET /ready`. Cheap to clone; clones share them.
#[derive(Debug, Clone, Default)]
pub struct OutboxStatus(Arc<Mutex<Value>>);

impl OutboxStatus {
    /// `{"outbox": ...}`: the `detail` of `GET /ready`.
    pub fn detail(&self) -> Value {
        json!({ "outbox": *self.0.lock().unwrap_or_else(PoisonError::into_inner) })
    }

    fn show(&self, seen: &Seen) {
        let holds: Vec<Value> = seen
            .holds
            .iter()
            .map(|h| json!({"stream": h.stream_id, "version": h.version, "event_type": h.event_type}))
            .collect();
        let holders: Vec<Value> = seen
            .holders
            .iter()
            .map(|h| {
                json!({
                    "pid": h.pid,
                    "transaction_id": h.transaction_id,
                    "application": h.application,
                    "state": h.state,
                    "open_for_seconds": h.open_for.as_secs_f64(),
                })
            })
            .collect();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = json!({
            "unpublished_events": seen.backlog.events,
            "oldest_unpublished_seconds": seen.backlog.oldest.map(|age| age.as_secs_f64()),
            "held_streams": holds,
            "held_back_by": holders,
        });
    }
}

/// One look at the outbox.
#[derive(Debug)]
struct Seen {
    backlog: Backlog,
    holds: Vec<Hold>,
    holders: Vec<Holder>,
}

async fn look(store: &EventStore) -> event_store::Result<Seen> {
    let checkpoint = store.checkpoint(CHECKPOINT).await?;
    Ok(Seen {
        backlog: store.backlog(CHECKPOINT).await?,
        holds: store.holds(CHECKPOINT).await?,
        holders: store.holders(checkpoint, None).await?,
    })
}

/// Measures the backlog every [`WATCH_EVERY`] until `stop`, into `metrics`
/// and `status`; warns once its oldest event is older than `warn_after`
/// (and again every minute while it stays so), and says when it is back.
pub async fn watch(
    store: EventStore,
    metrics: OutboxMetrics,
    status: OutboxStatus,
    warn_after: Duration,
    stop: CancellationToken,
) -> service_kit::Result<()> {
    let mut warned: Option<Instant> = None;
    loop {
        match look(&store).await {
            Ok(seen) => {
                metrics.show(&seen);
                status.show(&seen);
                let late = seen.backlog.oldest.is_some_and(|age| age > warn_after);
                if late && warned.is_none_or(|at| at.elapsed() >= WARN_AGAIN) {
                    tracing::warn!(
                        unpublished = seen.backlog.events,
                        oldest_seconds = seen.backlog.oldest.map_or(0.0, |age| age.as_secs_f64()),
                        held_streams = ?seen.holds.iter().map(|h| &h.stream_id).collect::<Vec<_>>(),
                        held_back_by = ?seen.holders.iter().map(|h| (h.pid, &h.application, &h.state)).collect::<Vec<_>>(),
                        "outbox lagging: stored events wait to be published for longer than OUTBOX_LAG_WARN_MS"
                    );
                    warned = Some(Instant::now());
                } else if !late && warned.take().is_some() {
                    tracing::info!(unpublished = seen.backlog.events, "outbox caught up");
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot measure the outbox backlog"),
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use service_kit::metrics::{Metrics, sample};

    fn seen(events: u64, holds: &[(&str, &str)]) -> Seen {
        Seen {
            backlog: Backlog {
                events,
                oldest: Some(Duration::from_millis(1500)),
            },
            holds: holds
                .iter()
                .map(|(stream, event_type)| Hold {
                    stream_id: (*stream).to_owned(),
                    version: 2,
                    event_type: (*event_type).to_owned(),
                })
                .collect(),
            holders: Vec::new(),
        }
    }

    #[test]
    fn held_streams_are_shown_while_held_and_dropped_after() {
        let outbox = OutboxMetrics::default();
        let metrics = Metrics::with(|registry| outbox.register(registry));
        let status = OutboxStatus::default();
        let held = seen(3, &[("payment-1", "payments.payment-refunded")]);
        outbox.show(&held);
        status.show(&held);
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                "outbox_held_streams",
                r#"stream="payment-1",event_type="payments.payment-refunded""#
            ),
            Some(1)
        );
        assert!(text.contains("outbox_unpublished_events 3"), "{text}");
        assert!(text.contains("outbox_oldest_unpublished_seconds 1.5"), "{text}");
        assert_eq!(
            status.detail()["outbox"]["held_streams"][0]["stream"],
            "payment-1"
        );

        outbox.show(&seen(0, &[]));
        let text = metrics.render();
        assert!(!text.contains("outbox_held_streams{"), "{text}");
        assert!(text.contains("outbox_unpublished_events 0"), "{text}");
    }
}
