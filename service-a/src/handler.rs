//! What ServiceA does with each record.

use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use service_kit::consumer::{HandleError, Handler};
use service_kit::memory::ById;
use shared_events::{Notification, PaymentId, PaymentState, Topics, decode};

use crate::audit::{Audit, NewEntry};

/// What ServiceA keeps in memory, shared by the consumer and the HTTP
/// handlers.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The local copy of every payment, from the state topic.
    pub payments: ById<PaymentState>,
    /// When each payment's copy last changed here: how far the copy lags
    /// behind Payments, per payment (served as `Copied-At`).
    pub copied_at: ById<DateTime<Utc>>,
}

/// Handles both payment topics.
#[derive(Debug)]
pub struct PaymentEvents {
    topics: Topics,
    state: State,
    audit: Audit,
}

impl PaymentEvents {
    pub fn new(topics: Topics, state: State, audit: Audit) -> Self {
        Self { topics, state, audit }
    }
}

impl Handler for PaymentEvents {
    async fn handle(&self, record: &OwnedMessage, _attempt: u32) -> Result<(), HandleError> {
        if record.topic() == self.topics.notifications {
            let notification = Notification::decode(record)?;
            let metadata = notification.metadata();
            let payment_id = notification.payment_id();
            let entry = NewEntry {
                event_id: metadata.id,
                payment_id,
                kind: notification.kind(),
                occurred_at: notification.occurred_at(),
                source: metadata.source.clone(),
                correlation_id: metadata.correlation_id,
                partition: record.partition(),
                offset: record.offset(),
            };
            // A database that is down pauses the consumer until it is back.
            let new = self.audit.record(&entry).await?;
            tracing::debug!(%payment_id, kind = notification.kind(), new, "notification audited");
        } else if record.topic() == self.topics.state {
            // A tombstone (no value) is how a compacted topic deletes a key.
            if record.payload().is_none() {
                let key = record
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .unwrap_or_default();
                let id = PaymentId::parse(key).map_err(HandleError::permanent)?;
                self.state.payments.remove(id);
                self.state.copied_at.remove(id);
                tracing::debug!(payment_id = %id, "payment copy deleted (tombstone)");
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
            self.state.copied_at.upsert(id, Utc::now());
            tracing::debug!(payment_id = %id, version, "payment copy updated");
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
    use service_kit::startup::Database;
    use shared_events::Envelope;
    use shared_events::testing::{delivered, state};
    use uuid::Uuid;

    use super::*;

    /// A log that is never connected to: these tests do not audit.
    fn no_audit() -> Audit {
        Audit::lazy("postgres://nobody@127.0.0.1:1/none".parse().expect("url"))
    }

    #[tokio::test]
    async fn state_events_keep_the_newest_copy() {
        let topics = Topics::default();
        let app = State::default();
        let handler = PaymentEvents::new(topics.clone(), app.clone(), no_audit());
        let payment = state();
        assert_eq!(app.payments.get(payment.payment_id), None);

        let first = Envelope::new("/test", payment.clone(), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.state, 0, &first), 1)
            .await
            .expect("handled");
        assert_eq!(app.payments.get(payment.payment_id), Some(payment.clone()));
        let first_copy = app.copied_at.get(payment.payment_id).expect("copied at");

        // A newer state replaces it; the older one, redelivered, does not.
        let mut refunded = payment.clone();
        refunded.refunded = 100;
        refunded.version = 2;
        let newer = Envelope::new("/test", refunded.clone(), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.state, 1, &newer), 1)
            .await
            .expect("handled");
        let second_copy = app.copied_at.get(payment.payment_id).expect("copied at");
        assert!(second_copy >= first_copy);
        handler
            .handle(&delivered(&topics.state, 0, &first), 1)
            .await
            .expect("handled");
        assert_eq!(app.payments.get(payment.payment_id), Some(refunded));
        assert_eq!(
            app.copied_at.get(payment.payment_id),
            Some(second_copy),
            "a stale state changes nothing"
        );
    }

    #[tokio::test]
    async fn a_tombstone_deletes_the_copy() {
        let topics = Topics::default();
        let app = State::default();
        let handler = PaymentEvents::new(topics.clone(), app.clone(), no_audit());
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
        assert_eq!(app.copied_at.get(payment.payment_id), None);
    }

    #[tokio::test]
    async fn a_state_event_on_the_notifications_topic_is_a_permanent_error() {
        let topics = Topics::default();
        let handler = PaymentEvents::new(topics.clone(), State::default(), no_audit());
        let event = Envelope::new("/test", state(), Uuid::now_v7(), None);
        let outcome = handler
            .handle(&delivered(&topics.notifications, 0, &event), 1)
            .await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))));
    }
}
