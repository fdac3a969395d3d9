//! What ServiceB does with each notification.

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::message::OwnedMessage;
use serde::Serialize;
use service_kit::consumer::{HandleError, Handler};
use service_kit::memory::ById;
use shared_events::{EventId, Notification, PaymentState};

use crate::payments::{CallbackError, PaymentsClient};

/// What ServiceB learnt about a payment by calling Payments back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallbackRecord {
    /// The payment as GetPaymentInfo last returned it.
    pub payment: PaymentState,
    /// The notification that triggered that callback.
    pub notification_id: EventId,
    /// When the callback succeeded.
    pub fetched_at: DateTime<Utc>,
    /// How many GetPaymentInfo calls it took.
    pub attempts: u32,
}

/// ServiceB's records by payment id.
pub type Records = ById<CallbackRecord>;

/// Handles `PaymentReceived` and `PaymentRefunded` notifications.
#[derive(Debug)]
pub struct Notifications {
    payments: PaymentsClient,
    records: Records,
    /// Notifications already handled: a redelivered one is not called back
    /// for again.
    handled: Mutex<HashSet<EventId>>,
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
            handled: Mutex::default(),
            not_found_grace,
        }
    }

    fn handled(&self) -> std::sync::MutexGuard<'_, HashSet<EventId>> {
        self.handled.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Handler for Notifications {
    async fn handle(&self, record: &OwnedMessage, attempt: u32) -> Result<(), HandleError> {
        let notification = Notification::decode(record)?;
        let id = notification.payment_id();
        let event_id = notification.metadata().id;
        // Redelivered (at-least-once): handled already.
        if self.handled().contains(&event_id) {
            tracing::info!(payment_id = %id, "notification handled before, skipping callback");
            return Ok(());
        }
        let payment = match self
            .payments
            .payment(id, notification.metadata().correlation_id)
            .await
        {
            Ok(payment) => payment,
            // A 404 shortly after the change may be a read racing the write;
            // long after, Payments does not know the payment (it was never
            // accepted, or its store was lost). Retrying that forever would
            // stall every partition this instance reads, so it is skipped.
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
            // Unreachable, timing out or failing: Payments will be back.
            Err(e) => return Err(HandleError::transient(e)),
        };
        tracing::info!(payment_id = %id, version = payment.version, attempts = attempt, "payment info fetched");
        // Callbacks for two notifications of one payment can answer out of
        // order only across restarts; the newer state wins either way.
        if self
            .records
            .get(id)
            .is_none_or(|r| r.payment.version <= payment.version)
        {
            self.records.upsert(
                id,
                CallbackRecord {
                    payment,
                    notification_id: event_id,
                    fetched_at: Utc::now(),
                    attempts: attempt,
                },
            );
        }
        self.handled().insert(event_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use shared_events::Envelope;
    use shared_events::testing::{delivered, payment, state};
    use uuid::Uuid;

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

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

    /// A Payments that knows one payment, `known` (or none), and counts calls.
    async fn payments_knowing(known: Option<PaymentState>) -> (PaymentsClient, Arc<AtomicUsize>) {
        use axum::routing::get;
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let router = axum::Router::new().route(
            "/payments/{id}",
            get(move || {
                let known = known.clone();
                counter.fetch_add(1, Ordering::SeqCst);
                async move { known.map(axum::Json).ok_or(axum::http::StatusCode::NOT_FOUND) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, router).await });
        (PaymentsClient::new(&url, Duration::from_secs(1)), calls)
    }

    #[tokio::test]
    async fn a_redelivered_notification_does_not_call_back_again() {
        let known = state();
        let (client, calls) = payments_knowing(Some(known.clone())).await;
        let records = Records::default();
        let handler = Notifications::new(client, records.clone(), GRACE);
        let received = shared_events::PaymentReceivedNotification {
            payment_id: known.payment_id,
            received_at: known.received_at,
        };
        let record = delivered("n", 0, &Envelope::new("/test", received, Uuid::now_v7(), None));
        for _ in 0..3 {
            handler.handle(&record, 1).await.expect("handled");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(records.get(known.payment_id).map(|r| r.payment), Some(known));
    }

    #[tokio::test]
    async fn an_undecodable_notification_is_permanent() {
        let handler = Notifications::new(payments_down(), Records::default(), GRACE);
        let wrong = Envelope::new("/test", state(), Uuid::now_v7(), None);
        let outcome = handler.handle(&delivered("n", 0, &wrong), 1).await;
        assert!(matches!(outcome, Err(HandleError::Permanent(_))), "{outcome:?}");
    }

    #[tokio::test]
    async fn not_found_is_retried_at_first_then_skipped() {
        let (client, _) = payments_knowing(None).await;
        let handler = Notifications::new(client, Records::default(), GRACE);
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
