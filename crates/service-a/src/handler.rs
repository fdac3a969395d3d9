//! What ServiceA does with each record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use service_kit::consumer::{HandleError, Handler};
use service_kit::memory::ById;
use shared_events::{EventId, Notification, PaymentId, PaymentState, Topics, decode};
use uuid::Uuid;

/// One notification, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    pub event_id: EventId,
    pub payment_id: PaymentId,
    /// `received` or `refunded`.
    pub kind: &'static str,
    /// When it happened (from the event).
    pub occurred_at: DateTime<Utc>,
    /// When ServiceA recorded the notification.
    pub recorded_at: DateTime<Utc>,
    pub source: String,
    pub correlation_id: Uuid,
    pub partition: i32,
    pub offset: i64,
}

/// Everything ServiceA knows, shared by the consumer and the HTTP handlers.
#[derive(Debug, Clone, Default)]
pub struct State {
    audit: Arc<Mutex<Audit>>,
    /// The local copy of every payment, from the state topic.
    pub payments: ById<PaymentState>,
}

#[derive(Debug, Default)]
struct Audit {
    entries: Vec<AuditEntry>,
    /// Event ids already recorded: a redelivered notification is not
    /// recorded twice.
    seen: HashSet<EventId>,
}

impl State {
    /// The audit log, oldest first. Notifications arrive in order within a
    /// partition only, so the log is sorted when read.
    pub fn audit_log(&self) -> Vec<AuditEntry> {
        let mut entries = self
            .audit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .clone();
        entries.sort_by_key(|e| (e.occurred_at, e.event_id));
        entries
    }

    /// Records `entry` unless its event was recorded before. Returns whether it was new.
    fn record(&self, entry: AuditEntry) -> bool {
        let mut audit = self.audit.lock().unwrap_or_else(PoisonError::into_inner);
        if !audit.seen.insert(entry.event_id) {
            return false;
        }
        audit.entries.push(entry);
        true
    }
}

/// Handles both payment topics.
#[derive(Debug)]
pub struct PaymentEvents {
    topics: Topics,
    state: State,
}

impl PaymentEvents {
    pub fn new(topics: Topics, state: State) -> Self {
        Self { topics, state }
    }
}

impl Handler for PaymentEvents {
    async fn handle(&self, record: &OwnedMessage, _attempt: u32) -> Result<(), HandleError> {
        if record.topic() == self.topics.notifications {
            let notification = Notification::decode(record)?;
            let metadata = notification.metadata();
            let payment_id = notification.payment_id();
            let new = self.state.record(AuditEntry {
                event_id: metadata.id,
                payment_id,
                kind: notification.kind(),
                occurred_at: notification.occurred_at(),
                recorded_at: Utc::now(),
                source: metadata.source.clone(),
                correlation_id: metadata.correlation_id,
                partition: record.partition(),
                offset: record.offset(),
            });
            tracing::info!(%payment_id, kind = notification.kind(), new, "notification audited");
        } else if record.topic() == self.topics.state {
            // A tombstone (no value) is how a compacted topic deletes a key.
            if record.payload().is_none() {
                let key = record
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .unwrap_or_default();
                let id = PaymentId::parse(key).map_err(HandleError::permanent)?;
                self.state.payments.remove(id);
                tracing::info!(payment_id = %id, "payment copy deleted (tombstone)");
                return Ok(());
            }
            let event = decode::<PaymentState>(record)?;
            let id = event.data.payment_id;
            let version = event.data.version;
            // A redelivered or replayed older state never replaces a newer one.
            if self
                .state
                .payments
                .get(id)
                .is_some_and(|copy| copy.version >= version)
            {
                tracing::debug!(payment_id = %id, version, "stale state ignored");
                return Ok(());
            }
            self.state.payments.upsert(id, event.data);
            tracing::info!(payment_id = %id, version, "payment copy updated");
        } else {
            return Err(HandleError::permanent(format!(
                "not subscribed to topic `{}`",
                record.topic()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use shared_events::testing::{delivered, payment, state};
    use shared_events::{Envelope, PaymentReceivedNotification};

    use super::*;

    fn notification(p: &PaymentState) -> PaymentReceivedNotification {
        PaymentReceivedNotification {
            payment_id: p.payment_id,
            received_at: p.received_at,
        }
    }

    #[tokio::test]
    async fn a_redelivered_notification_is_audited_once() {
        let topics = Topics::default();
        let app = State::default();
        let handler = PaymentEvents::new(topics.clone(), app.clone());
        let sent = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
        let record = delivered(&topics.notifications, 7, &sent);

        for _ in 0..2 {
            handler.handle(&record, 1).await.expect("handled");
        }
        let audit = app.audit_log();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].event_id, sent.metadata.id);
        assert_eq!((audit[0].offset, audit[0].kind), (7, "received"));
    }

    #[tokio::test]
    async fn the_audit_is_oldest_first_whatever_the_arrival_order() {
        let topics = Topics::default();
        let app = State::default();
        let handler = PaymentEvents::new(topics.clone(), app.clone());
        let (older, newer) = (payment(), payment());
        assert!(older.received_at < newer.received_at);
        for (offset, p) in [(0, &newer), (1, &older)] {
            let sent = Envelope::new("/test", p.notification(), Uuid::now_v7(), None);
            handler
                .handle(&delivered(&topics.notifications, offset, &sent), 1)
                .await
                .expect("handled");
        }
        let order: Vec<_> = app.audit_log().iter().map(|e| e.payment_id).collect();
        assert_eq!(order, [older.payment_id, newer.payment_id]);
    }

    #[tokio::test]
    async fn state_events_keep_the_newest_copy_and_notifications_do_not_touch_it() {
        let topics = Topics::default();
        let app = State::default();
        let handler = PaymentEvents::new(topics.clone(), app.clone());
        let payment = state();

        let sent = Envelope::new("/test", notification(&payment), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.notifications, 0, &sent), 1)
            .await
            .expect("handled");
        assert_eq!(app.payments.get(payment.payment_id), None);

        let first = Envelope::new("/test", payment.clone(), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.state, 0, &first), 1)
            .await
            .expect("handled");
        assert_eq!(app.payments.get(payment.payment_id), Some(payment.clone()));

        // A newer state replaces it; the older one, redelivered, does not.
        let mut refunded = payment.clone();
        refunded.refunded = 100;
        refunded.version = 2;
        let newer = Envelope::new("/test", refunded.clone(), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.state, 1, &newer), 1)
            .await
            .expect("handled");
        handler
            .handle(&delivered(&topics.state, 0, &first), 1)
            .await
            .expect("handled");
        assert_eq!(app.payments.get(payment.payment_id), Some(refunded));
    }

    #[tokio::test]
    async fn a_tombstone_deletes_the_copy() {
        let topics = Topics::default();
        let app = State::default();
        let handler = PaymentEvents::new(topics.clone(), app.clone());
        let payment = state();
        let event = Envelope::new("/test", payment.clone(), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.state, 0, &event), 1)
            .await
            .expect("handled");

        let tombstone = OwnedMessage::new(
            None,
            Some(payment.payment_id.to_string().into_bytes()),
            topics.state.clone(),
            rdkafka::Timestamp::NotAvailable,
            0,
            1,
            None,
        );
        handler.handle(&tombstone, 1).await.expect("handled");
        assert_eq!(app.payments.get(payment.payment_id), None);
    }

    #[tokio::test]
    async fn a_state_event_on_the_notifications_topic_is_a_permanent_error() {
        let topics = Topics::default();
        let handler = PaymentEvents::new(topics.clone(), State::default());
        let event = Envelope::new("/test", state(), Uuid::now_v7(), None);
        let outcome = handler
            .handle(&delivered(&topics.notifications, 0, &event), 1)
            .await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))));
    }
}
