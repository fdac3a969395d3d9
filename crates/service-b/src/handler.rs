//! What ServiceB does with each notification.

use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use service_kit::consumer::{HandleError, Handler};
use service_kit::memory::ById;
use shared_events::{EventId, PaymentReceived, PaymentReceivedNotification, decode};

use crate::payments::{CallbackError, PaymentsClient};

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
    not_found_grace: Duration,
}

impl Notifications {
    /// `not_found_grace`: how long after a payment was received Payments may
    /// still answer 404 for it before the notification counts as one that
    /// can never be handled (see [`Handler::handle`]).
    pub fn new(payments: PaymentsClient, records: Records, not_found_grace: Duration) -> Self {
        Self {
            payments,
            records,
            not_found_grace,
        }
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
        let payment = match self.payments.payment(id, event.metadata.correlation_id).await {
            Ok(payment) => payment,
            // A 404 shortly after the payment may be a read racing the write;
            // long after, Payments does not know the payment (it was never
            // accepted, or its store was lost). Retrying that forever would
            // stall every partition this instance reads, so it is skipped.
            Err(CallbackError::NotFound) => {
                let age = (Utc::now() - event.data.received_at).to_std().unwrap_or_default();
                let error = format!(
                    "payments does not know payment {id}, {} ms after it was received",
                    age.as_millis()
                );
                return Err(if age > self.not_found_grace {
                    HandleError::permanent(error)
                } else {
                    HandleError::transient(error)
                });
            }
            // Unreachable, timing out or failing: Payments will be back.
            Err(e) => return Err(HandleError::transient(e)),
        };
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
    use shared_events::testing::{delivered, payment};
    use shared_events::{Envelope, EventId};
    use uuid::Uuid;

    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    /// A client for a Payments that is down: nothing listens on port 1.
    fn payments_down() -> PaymentsClient {
        PaymentsClient::new("http://127.0.0.1:1", Duration::from_secs(1))
    }

    #[tokio::test]
    async fn a_failed_callback_is_transient_so_it_is_retried() {
        let handler = Notifications::new(payments_down(), Records::default(), GRACE);
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
        let handler = Notifications::new(payments_down(), records.clone(), GRACE);
        let notification = Envelope::new("/test", payment.notification(), Uuid::now_v7(), None);
        handler
            .handle(&delivered("n", 0, &notification), 1)
            .await
            .expect("skipped");
        assert_eq!(records.get(payment.payment_id), Some(recorded));
    }

    #[tokio::test]
    async fn an_undecodable_notification_is_permanent() {
        let handler = Notifications::new(payments_down(), Records::default(), GRACE);
        let state = Envelope::new("/test", payment(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &state), 1).await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))), "{outcome:?}");
    }

    /// A Payments that knows no payment at all.
    async fn payments_without_payments() -> PaymentsClient {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, axum::Router::new()).await });
        PaymentsClient::new(&url, Duration::from_secs(1))
    }

    #[tokio::test]
    async fn not_found_is_retried_at_first_then_skipped() {
        let handler = Notifications::new(payments_without_payments().await, Records::default(), GRACE);
        let mut notification = payment().notification();
        let fresh = Envelope::new("/test", notification.clone(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &fresh), 1).await;
        assert!(matches!(outcome, Err(HandleError::Transient(_))), "{outcome:?}");

        notification.received_at = Utc::now() - chrono::Duration::hours(1);
        let old = Envelope::new("/test", notification, Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 1, &old), 1).await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))), "{outcome:?}");
    }
}
