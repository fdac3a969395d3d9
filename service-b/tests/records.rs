//! ServiceB's handler against a real PostgreSQL (its own database) and a
//! stand-in for Payments' GetPaymentInfo.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use event_store::testing::TestDatabase;
use service_b::{CallbackRecord, Notifications, PaymentsClient, Records};
use service_kit::auth::{Callers, Right, Rights, Token};
use service_kit::consumer::{HandleError, Handler};
use shared_events::testing::{delivered, payment, state};
use shared_events::{Envelope, PaymentReceivedNotification, PaymentState};
use uuid::Uuid;

const GRACE: Duration = Duration::from_secs(30);

/// ServiceB's records in a database of their own, with that database, which
/// the test must keep for as long as it uses the records.
async fn records() -> (TestDatabase, Records) {
    let database = TestDatabase::empty().await;
    let records = Records::connect(database.url.parse().expect("url"), 2)
        .await
        .expect("connect and migrate");
    (database, records)
}

/// The correlation and causation ids of the last call a stand-in Payments got.
type Seen = Arc<std::sync::Mutex<Option<(String, String)>>>;

/// A Payments that knows one payment, `known` (or none), and counts calls.
async fn payments_knowing(known: Option<PaymentState>) -> (PaymentsClient, Arc<AtomicUsize>) {
    let (client, calls, _) = payments_seeing(known).await;
    (client, calls)
}

/// [`payments_knowing`], noting the ids each call carries.
async fn payments_seeing(known: Option<PaymentState>) -> (PaymentsClient, Arc<AtomicUsize>, Seen) {
    let token = Token::generate();
    let (url, calls, seen) = payments_accepting(&token, known).await;
    (
        PaymentsClient::new(&url, token, Duration::from_secs(1)),
        calls,
        seen,
    )
}

/// A stand-in Payments that knows `known` and, as the real one, answers
/// only the caller with `token`; its URL.
async fn payments_accepting(token: &Token, known: Option<PaymentState>) -> (String, Arc<AtomicUsize>, Seen) {
    use axum::routing::get;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = Seen::default();
    let (counter, noted) = (Arc::clone(&calls), Arc::clone(&seen));
    let router = axum::Router::new().route(
        "/payments/{id}",
        get(move |headers: axum::http::HeaderMap| {
            let known = known.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            let id = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            };
            *noted.lock().expect("lock") = Some((id("x-correlation-id"), id("x-causation-id")));
            async move { known.map(axum::Json).ok_or(axum::http::StatusCode::NOT_FOUND) }
        }),
    );
    let router = service_kit::auth::protect(
        router,
        Callers::of([("service-b", Rights::READ, token)]),
        Right::Read,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls, seen)
}

fn received(p: &PaymentState) -> Envelope<PaymentReceivedNotification> {
    let notification = PaymentReceivedNotification {
        payment_id: p.payment_id,
        received_at: p.received_at,
        payment_method: p.payment_method,
    };
    Envelope::new("/test", notification, Uuid::now_v7(), None)
}

#[tokio::test]
async fn a_redelivered_notification_is_recorded_once_even_by_a_restarted_service() {
    let known = state();
    let (client, calls) = payments_knowing(Some(known.clone())).await;
    let database = TestDatabase::empty().await;
    let connect = || async {
        Records::connect(database.url.parse().expect("url"), 2)
            .await
            .expect("connect")
    };
    let record = delivered("n", 0, &received(&known));

    let records = connect().await;
    let handler = Notifications::new(client.clone(), records.clone(), GRACE);
    for _ in 0..3 {
        handler.handle(&record, 1).await.expect("handled");
    }
    // A new instance on the same database: the notification is known.
    let restarted = Notifications::new(client, connect().await, GRACE);
    restarted.handle(&record, 1).await.expect("handled");

    assert_eq!(calls.load(Ordering::SeqCst), 1, "one callback");
    let stored = records
        .get(known.payment_id)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(stored.payment, known);
    assert_eq!(stored.notifications, 1);
}

#[tokio::test]
async fn the_callback_names_the_flow_and_the_notification_that_caused_it() {
    let known = state();
    let (client, _, seen) = payments_seeing(Some(known.clone())).await;
    let (_database, records) = records().await;
    let notification = received(&known);
    Notifications::new(client, records, GRACE)
        .handle(&delivered("n", 0, &notification), 1)
        .await
        .expect("handled");
    let (correlation, causation) = seen.lock().expect("lock").clone().expect("called back");
    assert_eq!(correlation, notification.metadata.correlation_id.to_string());
    assert_eq!(causation, notification.metadata.id.to_string());
}

#[tokio::test]
async fn the_newest_state_wins_and_every_notification_counts_once() {
    let (_database, records) = records().await;
    let older = state();
    let mut newer = older.clone();
    newer.version = 2;
    newer.refunded = 10;
    let record = |payment: &PaymentState| CallbackRecord {
        payment: payment.clone(),
        notification_id: shared_events::EventId::new(),
        fetched_at: Utc::now(),
        attempts: 1,
        notifications: 1,
    };
    let (first, second) = (record(&newer), record(&older));
    assert!(records.record(&first).await.expect("recorded"));
    assert!(records.record(&second).await.expect("recorded"));
    assert!(!records.record(&second).await.expect("recorded"), "twice is once");
    let stored = records
        .get(older.payment_id)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(stored.payment, newer, "an older state arriving late does not win");
    assert_eq!(stored.notification_id, first.notification_id);
    assert_eq!(stored.notifications, 2);
}

#[tokio::test]
async fn not_found_is_retried_at_first_then_given_up_on() {
    let (client, _) = payments_knowing(None).await;
    let (_database, records) = records().await;
    let handler = Notifications::new(client, records, GRACE);
    let mut notification = payment().notification();
    let fresh = Envelope::new("/test", notification.clone(), Uuid::now_v7(), None);
    let outcome = handler.handle(&delivered("n", 0, &fresh), 1).await;
    assert!(matches!(outcome, Err(HandleError::Transient(_))), "{outcome:?}");

    notification.received_at = Utc::now() - chrono::Duration::hours(1);
    let old = Envelope::new("/test", notification, Uuid::now_v7(), None);
    let outcome = handler.handle(&delivered("n", 1, &old), 1).await;
    assert!(matches!(outcome, Err(HandleError::Permanent(_))), "{outcome:?}");
}

#[tokio::test]
async fn a_refused_credential_pauses_the_consumer_and_nothing_is_recorded() {
    let known = state();
    let (url, calls, _) = payments_accepting(&Token::generate(), Some(known.clone())).await;
    let (_database, records) = records().await;
    let handler = Notifications::new(
        PaymentsClient::new(&url, Token::generate(), Duration::from_secs(1)),
        records.clone(),
        GRACE,
    );
    let outcome = handler.handle(&delivered("n", 0, &received(&known)), 1).await;
    match outcome {
        Err(HandleError::Unavailable {
            dependency: service_b::handler::PAYMENTS_CREDENTIAL,
            source,
        }) => assert!(source.to_string().contains("PAYMENTS_TOKEN"), "{source}"),
        other => panic!("a refused credential is waited out, not dead-lettered: {other:?}"),
    }
    // The route answered 401 before the handler of the stand-in ran.
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(records.get(known.payment_id).await.expect("read").is_none());
}
