//! The latest state of each payment this instance knows, in memory, so that
//! GetPaymentInfo, which ServiceB calls back on every notification, is
//! answered without a database round trip.
//!
//! # Filled from the states Payments folds anyway
//!
//! - **Appends**: a payment created or refunded here, right after its
//!   commit and before the `201`.
//! - **The outbox relay**, while it builds a batch: the state after each
//!   event it is about to publish, before the event's notification leaves.
//! - **Reads through**: a read the cache cannot answer loads the payment
//!   from the event store and leaves it here.
//!
//! # Never older than what it knew
//!
//! An entry is only ever replaced by a higher version. It is bounded
//! (least recently used out first), and forgetting must not let an older
//! state back in: a fill for a payment that is not here is taken only if
//! its newest event is newer (in the store's global position) than every
//! state evicted so far. Within a stream positions grow with versions, so
//! a state older than one the cache held and evicted is refused; the next
//! read of that payment reads through.
//!
//! # What a read sees
//!
//! The cache answers only a read that names the event it needs (ServiceB
//! names the notification it calls back for, `X-Causation-Id`) and only if
//! this instance saw that event committed: appended it, or its relay
//! published it. The answer then holds that event and every later one this
//! instance appended or published; only those were counted into it. Every
//! other read (no event named, an event this instance has not seen, an
//! entry evicted) reads the event store, as before, and sees every write
//! committed before it began, on any instance.
//!
//! So, with one instance, a read that begins after a `201` sees that write.
//! With several, a read naming an event answered from one instance's memory
//! may lack a later write that *another* instance acknowledged and this
//! instance's relay has not published yet. Its own notification then
//! follows, and the callback for it names that newer event, which this
//! instance either saw or reads through for. Plain reads stay
//! read-your-writes on every instance.

use std::sync::{Arc, Mutex, PoisonError};

use hashlink::LruCache;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shared_events::PaymentId;
use uuid::Uuid;

use crate::domain::Payment;

/// Payments kept unless configured otherwise (`STATE_CACHE_ENTRIES`): tens
/// of megabytes, so that a ServiceB that was stopped while 100,000 payments
/// were notified (about half a minute of Payments' full rate) drains them
/// with its callbacks answered from memory. With 10,000 most of them read
/// through to the store, and ServiceB drained that backlog at 91 to 99% of
/// the rate Payments accepts alone; held, at 145% (`cargo xtask bench`).
pub const DEFAULT_ENTRIES: usize = 100_000;
/// Event ids remembered per payment, newest first: enough for the
/// notifications of a payment still in flight to ServiceB.
const EVENTS_PER_ENTRY: usize = 8;

/// A committed event of a payment: what a read may name, and where it
/// stands in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub event_id: Uuid,
    /// Its version in the payment's stream.
    pub version: u64,
    /// Its position in the store's global order.
    pub position: i64,
}

impl From<&event_store::RecordedEvent> for Committed {
    fn from(event: &event_store::RecordedEvent) -> Self {
        Self {
            event_id: event.event_id,
            version: event.version,
            position: event.position,
        }
    }
}

/// The latest states, shared by the handlers and the relay. Cheap to
/// clone; clones share the entries.
#[derive(Debug, Clone)]
pub struct LatestStates {
    inner: Arc<Mutex<Inner>>,
    metrics: CacheMetrics,
}

struct Inner {
    entries: LruCache<PaymentId, Entry>,
    /// The newest position among the states evicted: a fill for a payment
    /// not held must be newer than it.
    evicted_up_to: i64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("entries", &self.entries.len())
            .field("evicted_up_to", &self.evicted_up_to)
            .finish()
    }
}

#[derive(Debug)]
struct Entry {
    state: Payment,
    /// The position of the state's newest event.
    position: i64,
    /// Events of this payment this instance saw committed (appended or
    /// published), each with its version; at most [`EVENTS_PER_ENTRY`],
    /// the newest kept. All at or below `state.version`.
    seen: Vec<(Uuid, u64)>,
}

impl Entry {
    fn saw(&mut self, event_id: Uuid, version: u64) {
        if self.seen.iter().any(|(id, _)| *id == event_id) {
            return;
        }
        self.seen.push((event_id, version));
        if self.seen.len() > EVENTS_PER_ENTRY {
            // Drop the oldest version: a read naming it reads through.
            if let Some(oldest) = (0..self.seen.len()).min_by_key(|&i| self.seen[i].1) {
                self.seen.swap_remove(oldest);
            }
        }
    }
}

impl LatestStates {
    /// A cache of at most `entries` payments (at least one).
    pub fn new(entries: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: LruCache::new(entries.max(1)),
                evicted_up_to: i64::MIN,
            })),
            metrics: CacheMetrics::default(),
        }
    }

    /// The latest state held of payment `id`, if it holds `event_id`: the
    /// event was seen committed here, and the state is at or past it.
    pub fn including(&self, id: PaymentId, event_id: Uuid) -> Option<Payment> {
        let mut inner = self.lock();
        let found = inner
            .entries
            .get(&id)
            .filter(|entry| entry.seen.iter().any(|(seen, _)| *seen == event_id))
            .map(|entry| entry.state.clone());
        match found {
            Some(_) => self.metrics.hits.inc(),
            None => self.metrics.misses.inc(),
        };
        found
    }

    /// `state` is the payment right after `event`, which is committed
    /// (appended here, or about to be published by the relay).
    pub fn committed(&self, state: &Payment, event: Committed) {
        debug_assert_eq!(state.version, event.version);
        self.fill(state, event.position, Some((event.event_id, event.version)));
    }

    /// `state` was read from the event store; `position` is that of its
    /// newest event.
    pub fn loaded(&self, state: &Payment, position: i64) {
        self.fill(state, position, None);
    }

    fn fill(&self, state: &Payment, position: i64, event: Option<(Uuid, u64)>) {
        let id = state.received.payment_id;
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.get_mut(&id) {
            // Only ever forward: a fill that lost a race with a newer one
            // leaves the newer state, and adds only the event it saw.
            if state.version > entry.state.version {
                entry.state = state.clone();
                entry.position = position;
            }
            if let Some((event_id, version)) = event {
                entry.saw(event_id, version);
            }
            return;
        }
        if position <= inner.evicted_up_to {
            // It may be older than a state evicted from here.
            return;
        }
        if inner.entries.len() >= inner.entries.capacity()
            && let Some((_, evicted)) = inner.entries.remove_lru()
        {
            inner.evicted_up_to = inner.evicted_up_to.max(evicted.position);
        }
        inner.entries.insert(
            id,
            Entry {
                state: state.clone(),
                position,
                seen: event.into_iter().collect(),
            },
        );
        self.metrics
            .entries
            .set(i64::try_from(inner.entries.len()).unwrap_or(i64::MAX));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The entries stay consistent whatever panicked: each change is
        // made whole under the lock.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the cache's series in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        self.metrics.register(registry);
    }
}

/// | metric | type |
/// |---|---|
/// | `payment_cache_hits_total` | counter: reads naming an event answered from memory |
/// | `payment_cache_misses_total` | counter: reads naming an event that went to the store |
/// | `payment_cache_entries` | gauge |
#[derive(Debug, Clone, Default)]
struct CacheMetrics {
    hits: Counter,
    misses: Counter,
    entries: Gauge,
}

impl CacheMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "payment_cache_hits",
            "Reads naming an event (ServiceB's callbacks) answered from memory",
            self.hits.clone(),
        );
        registry.register(
            "payment_cache_misses",
            "Reads naming an event (ServiceB's callbacks) this instance had not seen, read from the event store",
            self.misses.clone(),
        );
        registry.register(
            "payment_cache_entries",
            "Payments whose latest state this instance holds in memory",
            self.entries.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(version: u64) -> Payment {
        Payment {
            received: shared_events::testing::payment(),
            refunded: 0,
            version,
        }
    }

    fn at(state: &Payment, version: u64) -> Payment {
        Payment {
            version,
            refunded: i64::try_from(version).expect("small") - 1,
            ..state.clone()
        }
    }

    fn event(version: u64, position: i64) -> Committed {
        Committed {
            event_id: Uuid::now_v7(),
            version,
            position,
        }
    }

    fn id(state: &Payment) -> PaymentId {
        state.received.payment_id
    }

    #[test]
    fn an_entry_is_only_replaced_by_a_higher_version() {
        let cache = LatestStates::new(10);
        let v1 = payment(1);
        let (first, second) = (event(1, 10), event(2, 20));
        cache.committed(&v1, first);
        cache.committed(&at(&v1, 2), second);
        // The relay publishing the first event after the refund was
        // appended: the newer state stays, and answers for both events.
        cache.committed(&v1, first);
        cache.loaded(&v1, 10);
        for named in [first, second] {
            let held = cache.including(id(&v1), named.event_id).expect("held");
            assert_eq!(held.version, 2);
        }
        // A load that is newer moves it on, and the events seen still count.
        cache.loaded(&at(&v1, 3), 30);
        assert_eq!(
            cache.including(id(&v1), first.event_id).map(|p| p.version),
            Some(3)
        );
    }

    #[test]
    fn only_an_event_seen_committed_here_is_answered_from_memory() {
        let cache = LatestStates::new(10);
        let v1 = payment(1);
        cache.loaded(&v1, 10);
        assert_eq!(
            cache.including(id(&v1), Uuid::now_v7()),
            None,
            "loaded, no event seen"
        );
        let refund = event(2, 20);
        assert_eq!(cache.including(id(&v1), refund.event_id), None, "not seen yet");
        cache.committed(&at(&v1, 2), refund);
        assert_eq!(
            cache.including(id(&v1), refund.event_id).map(|p| p.version),
            Some(2)
        );
        // An event of another payment names nothing here.
        assert_eq!(cache.including(PaymentId::new(), refund.event_id), None);
    }

    #[test]
    fn it_holds_at_most_its_bound_least_recently_used_out_first() {
        let cache = LatestStates::new(3);
        let states: Vec<Payment> = (0..4).map(|_| payment(1)).collect();
        let events: Vec<Committed> = (0..4).map(|i| event(1, 10 + i)).collect();
        for (state, event) in states.iter().zip(&events).take(3) {
            cache.committed(state, *event);
        }
        // Reading the first makes the second the least recently used.
        assert!(cache.including(id(&states[0]), events[0].event_id).is_some());
        cache.committed(&states[3], events[3]);
        assert_eq!(cache.lock().entries.len(), 3);
        assert!(cache.including(id(&states[1]), events[1].event_id).is_none());
        for i in [0, 2, 3] {
            assert!(
                cache.including(id(&states[i]), events[i].event_id).is_some(),
                "{i}"
            );
        }
    }

    #[test]
    fn a_state_older_than_one_evicted_does_not_come_back() {
        let cache = LatestStates::new(1);
        let v1 = payment(1);
        let (received, refunded) = (event(1, 10), event(2, 20));
        cache.committed(&at(&v1, 2), refunded);
        // Another payment evicts it.
        let other = payment(1);
        cache.committed(&other, event(1, 30));
        // The relay, behind, now publishes the first event: refused, for the
        // cache held version 2 before.
        cache.committed(&v1, received);
        assert_eq!(cache.including(id(&v1), received.event_id), None);
        // A newer state than anything evicted is taken.
        let refunded_again = event(3, 40);
        cache.committed(&at(&v1, 3), refunded_again);
        assert_eq!(
            cache
                .including(id(&v1), refunded_again.event_id)
                .map(|p| p.version),
            Some(3)
        );
    }

    #[test]
    fn a_payment_remembers_its_newest_events() {
        let cache = LatestStates::new(10);
        let v1 = payment(1);
        let events: Vec<Committed> = (1..=10)
            .map(|v| event(v, i64::try_from(v).expect("small")))
            .collect();
        for e in &events {
            cache.committed(&at(&v1, e.version), *e);
        }
        let answered: Vec<bool> = events
            .iter()
            .map(|e| cache.including(id(&v1), e.event_id).is_some())
            .collect();
        assert_eq!(
            answered,
            [false, false, true, true, true, true, true, true, true, true]
        );
    }
}
