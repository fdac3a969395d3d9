//! What ServiceB does with each notification.

use std::time::Duration;

use chrono::Utc;
use rdkafka::message::OwnedMessage;
use service_kit::consumer::{HandleError, Handler};
use shared_events::Notification;

use crate::payments::{CallbackError, PaymentsClient};
use crate::store::{CallbackRecord, Records};

/// Handles `PaymentReceived` and `PaymentRefunded` notifications.
#[derive(Debug)]
pub struct Notifications {
    payments: PaymentsClient,
    records: Records,
    not_found_grace: Duration,
}

impl Notifications {
    /// `not_found_grace`: how long after the notified change Payments may
    /// still answer 404 for the payment before the notification counts as one
    /// that can never be handled (see [`Handler::handle`]).
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
        let notification = Notification::decode(record)?;
        let id = notification.payment_id();
        let event_id = notification.metadata().id;
        // Delivered again (at-least-once, replay, redrive): no second
        // callback. The transaction in `Records::record` is what guarantees
        // it is not recorded twice; this only saves the call.
        if self
            .records
            .handled(event_id)
            .await
            .map_err(HandleError::transient)?
        {
            tracing::info!(payment_id = %id, "notification handled before, skipping callback");
            return Ok(());
        }
        let payment = match self
            .payments
            .payment(
                id,
                notification.metadata().correlation_id,
                notification.metadata().id.into(),
            )
            .await
        {
            Ok(payment) => payment,
            // A 404 shortly after the change may be a read racing the write;
            // long after, Payments does not know the payment (it was never
            // accepted, or its store was lost). Retrying that for ever would
            // stall the partition, so it becomes a dead letter.
            Err(CallbackError::NotFound) => {
                let age = (Utc::now() - notification.occurred_at())
                    .to_std()
                    .unwrap_or_default();
                let error = format!(
                    "payments does not know payment {id}, {} ms after the notified change",
                    age.as_millis()
                );
                return Err(if age > self.not_found_grace {
                    HandleError::permanent(error)
                } else {
                    HandleError::transient(error)
                });
            }
            // A refused credential is logged as the configuration error it
            // is; retried like the rest, since fixing it (or a redrive of
            // what was dead-lettered meanwhile) lets the callback through.
            Err(e @ CallbackError::Refused(_)) => {
                tracing::error!(error = %e, "callback refused");
                return Err(HandleError::transient(e));
            }
            // Unreachable, timing out or failing: Payments will be back.
            Err(e) => return Err(HandleError::transient(e)),
        };
        let version = payment.version;
        let new = self
            .records
            .record(&CallbackRecord {
                payment,
                notification_id: event_id,
                fetched_at: Utc::now(),
                attempts: attempt,
                notifications: 1,
            })
            .await
            .map_err(HandleError::transient)?;
        tracing::info!(payment_id = %id, version, attempts = attempt, new, "payment info recorded");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use service_kit::auth::Token;
    use shared_events::Envelope;
    use shared_events::testing::{delivered, payment, state};
    use uuid::Uuid;

    use super::*;

    /// Records in a database nothing listens for: only for handler paths
    /// that fail before they get to the store.
    async fn unreachable_records() -> Records {
        // Connecting is lazy; the options are valid but nobody answers.
        Records::lazy("postgres://nobody@127.0.0.1:1/none".parse().expect("url"))
    }

    #[tokio::test]
    async fn an_undecodable_notification_is_permanent() {
        let handler = Notifications::new(
            PaymentsClient::new("http://127.0.0.1:1", Token::generate(), Duration::from_secs(1)),
            unreachable_records().await,
            Duration::from_secs(30),
        );
        let wrong = Envelope::new("/test", state(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &wrong), 1).await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_database_that_is_down_is_transient() {
        let handler = Notifications::new(
            PaymentsClient::new("http://127.0.0.1:1", Token::generate(), Duration::from_secs(1)),
            unreachable_records().await,
            Duration::from_secs(30),
        );
        let notification = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &notification), 1).await;
        assert!(matches!(outcome, Err(HandleError::Transient(_))), "{outcome:?}");
    }
}
