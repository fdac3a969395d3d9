//! What ServiceB does with each notification.

use std::time::Duration;

use chrono::Utc;
use rdkafka::message::OwnedMessage;
use reqwest::StatusCode;
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
        if self.records.handled(event_id).await? {
            tracing::debug!(payment_id = %id, "notification handled before, skipping callback");
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
            Err(e) => return Err(classify(e)),
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
            .await?;
        tracing::debug!(payment_id = %id, version, attempts = attempt, new, "payment info recorded");
        Ok(())
    }
}

/// How the consumer names Payments while it does not answer.
pub const PAYMENTS: &str = "payments";
/// How the consumer names Payments while it refuses ServiceB's credential.
pub const PAYMENTS_CREDENTIAL: &str = "payments_credential";

/// What a failed callback (other than a 404) means for the notification.
///
/// - Unreachable, timing out, or answering 5xx (503 while its database is
///   down), 408 or 429: Payments is unavailable, and the consumer waits for
///   it rather than dead-letter every notification of the outage.
/// - 401 or 403: ServiceB's credential is refused. That is a configuration
///   (`PAYMENTS_TOKEN`, Payments' `HTTP_CALLERS`) wrong for every record
///   alike, not this record's fault: the consumer waits too, under its own
///   name on the gauge, and the log says what to fix. Dead-lettering would
///   turn a fix of one setting into a redrive of everything meanwhile.
/// - Another status, or a body ServiceB cannot read: about this payment,
///   maybe passing (a Payments release reading it differently): retried up
///   to the budget, then a dead letter.
fn classify(e: CallbackError) -> HandleError {
    match &e {
        CallbackError::Unreachable(_) => HandleError::unavailable(PAYMENTS, e),
        CallbackError::Status(status)
            if status.is_server_error()
                || *status == StatusCode::REQUEST_TIMEOUT
                || *status == StatusCode::TOO_MANY_REQUESTS =>
        {
            HandleError::unavailable(PAYMENTS, e)
        }
        CallbackError::Refused(_) => {
            tracing::error!(error = %e, "callback refused");
            HandleError::unavailable(PAYMENTS_CREDENTIAL, e)
        }
        CallbackError::NotFound | CallbackError::Status(_) | CallbackError::Body(_) => {
            HandleError::transient(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use service_kit::auth::Token;
    use service_kit::startup::Database;
    use shared_events::Envelope;
    use shared_events::testing::{delivered, payment, state};
    use uuid::Uuid;

    use super::*;

    /// Calls that give up after a second.
    fn within_a_second() -> crate::CallbackLimits {
        crate::CallbackLimits {
            timeout: Duration::from_secs(1),
            ..Default::default()
        }
    }

    /// Records in a database nothing listens for: only for handler paths
    /// that fail before they get to the store.
    async fn unreachable_records() -> Records {
        // Connecting is lazy; the options are valid but nobody answers.
        Records::lazy("postgres://nobody@127.0.0.1:1/none".parse().expect("url"))
    }

    #[tokio::test]
    async fn an_undecodable_notification_is_permanent() {
        let handler = Notifications::new(
            PaymentsClient::new("http://127.0.0.1:1", Token::generate(), within_a_second()),
            unreachable_records().await,
            Duration::from_secs(30),
        );
        let wrong = Envelope::new("/test", state(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &wrong), 1).await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_database_that_is_down_is_a_dependency_unavailable() {
        let handler = Notifications::new(
            PaymentsClient::new("http://127.0.0.1:1", Token::generate(), within_a_second()),
            unreachable_records().await,
            Duration::from_secs(30),
        );
        let notification = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &notification), 1).await;
        assert!(
            matches!(
                outcome,
                Err(HandleError::Unavailable {
                    dependency: "database",
                    ..
                })
            ),
            "{outcome:?}"
        );
    }

    #[test]
    fn an_outage_of_payments_is_a_dependency_unavailable_and_odd_answers_are_the_records() {
        let unavailable = |status| {
            matches!(
                classify(CallbackError::Status(status)),
                HandleError::Unavailable {
                    dependency: PAYMENTS,
                    ..
                }
            )
        };
        for status in [
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            assert!(unavailable(status), "{status}");
        }
        assert!(!unavailable(StatusCode::BAD_REQUEST));
        assert!(matches!(
            classify(CallbackError::Refused(StatusCode::UNAUTHORIZED)),
            HandleError::Unavailable {
                dependency: PAYMENTS_CREDENTIAL,
                ..
            }
        ));
        assert!(matches!(
            classify(CallbackError::NotFound),
            HandleError::Transient(_)
        ));
    }
}
