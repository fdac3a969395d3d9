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
