//! What ServiceB does with each notification.

use chrono::{DateTime, Utc};
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use service_kit::consumer::{HandleError, Handler};
use service_kit::memory::ById;
use shared_events::{EventId, PaymentReceived, PaymentReceivedNotification, decode};

use crate::payments::PaymentsClient;

/// What ServiceB learnt about a payment by calling Payments back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackRecord {
    /// The payment as GetPaymentInfo returned it.
    pub payment: PaymentReceived,
    /// The notification that triggered the callback.
    pub notification_id: EventId,
    /// When the callback succeeded.
    pub fetched_at: DateTime<Utc>,
    /// How many GetPaymentInfo calls it took.
    pub attempts: u32,
}

/// ServiceB's records by payment id.
pub type Records = ById<CallbackRecord>;

/// Handles `PaymentReceived` notifications.
#[derive(Debug)]
pub struct Notifications {
    payments: PaymentsClient,
    records: Records,
}

impl Notifications {
    pub fn new(payments: PaymentsClient, records: Records) -> Self {
        Self { payments, records }
    }
}

impl Handler for Notifications {
    async fn handle(&self, record: &OwnedMessage, attempt: u32) -> Result<(), HandleError> {
        let event = decode::<PaymentReceivedNotification>(record)?;
        let id = event.data.payment_id;
        // Redelivered (at-least-once): the payment is known already.
        if self.records.contains(id) {
            tracing::info!(payment_id = %id, "already recorded, skipping callback");
            return Ok(());
        }
        let payment = self
            .payments
            .payment(id, event.metadata.correlation_id)
            .await
            .map_err(HandleError::transient)?;
        tracing::info!(payment_id = %id, attempts = attempt, "payment info fetched");
        self.records.upsert(
            id,
            CallbackRecord {
                payment,
                notification_id: event.metadata.id,
                fetched_at: Utc::now(),
                attempts: attempt,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shared_events::testing::{delivered, payment};
    use shared_events::{Envelope, EventId};
    use uuid::Uuid;

    use super::*;

    /// A client for a Payments that is down: nothing listens on port 1.
    fn payments_down() -> PaymentsClient {
        PaymentsClient::new("http://127.0.0.1:1", Duration::from_secs(1))
    }

    #[tokio::test]
    async fn a_failed_callback_is_transient_so_it_is_retried() {
        let handler = Notifications::new(payments_down(), Records::default());
        let notification = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &notification), 1).await;
        assert!(matches!(outcome, Err(HandleError::Transient(_))), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_redelivered_notification_does_not_call_back_again() {
        let records = Records::default();
        let payment = payment();
        let recorded = CallbackRecord {
            payment: payment.clone(),
            notification_id: EventId::new(),
            fetched_at: Utc::now(),
            attempts: 1,
        };
        records.upsert(payment.payment_id, recorded.clone());
        // Payments is down: only skipping the callback can succeed.
        let handler = Notifications::new(payments_down(), records.clone());
        let notification = Envelope::new("/test", payment.notification(), Uuid::now_v7(), None);
        handler
            .handle(&delivered("n", 0, &notification), 1)
            .await
            .expect("skipped");
        assert_eq!(records.get(payment.payment_id), Some(recorded));
    }

    #[tokio::test]
    async fn an_undecodable_notification_is_permanent() {
        let handler = Notifications::new(payments_down(), Records::default());
        let state = Envelope::new("/test", payment(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &state), 1).await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))), "{outcome:?}");
    }
}
