//! ServiceB's handler against a real PostgreSQL (its own database) and a
//! stand-in for Payments' GetPaymentInfo.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::Utc;
use event_store::testing::TestDatabase;
use service_b::{CallbackLimits, CallbackRecord, Notifications, PaymentsClient, Records};
use service_kit::auth::{Callers, Right, Rights, Token};
use service_kit::consumer::{HandleError, Handler};
use service_kit::startup::Database;
use shared_events::testing::{delivered, payment, state};
use shared_events::{Envelope, PaymentReceivedNotification, PaymentState};
use uuid::Uuid;

/// Calls that give up after a second.
fn within_a_second() -> CallbackLimits {
    CallbackLimits {
        timeout: Duration::from_secs(1),
        ..Default::default()
    }
}

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
    (PaymentsClient::new(&url, token, within_a_second()), calls, seen)
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
        PaymentsClient::new(&url, Token::generate(), within_a_second()),
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

#[tokio::test]
async fn handled_ids_past_the_retention_are_pruned_in_bounded_rounds_and_recent_ones_still_count() {
    use service_kit::CancellationToken;
    use service_kit::config::RetentionConfig;

    let known = state();
    let (client, calls) = payments_knowing(Some(known.clone())).await;
    let (database, records) = records().await;
    let handler = Notifications::new(client, records.clone(), GRACE);
    let sent: Vec<_> = (0..7).map(|_| received(&known)).collect();
    for (offset, notification) in (0..).zip(&sent) {
        handler
            .handle(&delivered("n", offset, notification), 1)
            .await
            .expect("handled");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    let (old, recent) = sent.split_at(5);
    let pool = sqlx::PgPool::connect(&database.url).await.expect("connect");
    let old_ids: Vec<Uuid> = old.iter().map(|n| Uuid::from(n.metadata.id)).collect();
    sqlx::query(
        "UPDATE processed_notifications SET processed_at = now() - interval '16 days' \
         WHERE event_id = ANY($1)",
    )
    .bind(&old_ids)
    .execute(&pool)
    .await
    .expect("backdate");

    let retention = RetentionConfig {
        keep: Duration::from_secs(15 * 24 * 60 * 60),
        interval: Duration::from_secs(60 * 60),
        batch: 2,
    };
    let cutoff = Utc::now() - retention.keep;
    assert_eq!(
        records
            .prune_handled(cutoff, retention.batch)
            .await
            .expect("prune"),
        2,
        "a round deletes a batch at most"
    );
    // The background task: its first round is full (2), so the next (1)
    // follows at once; only then does it wait its hour.
    let stop = CancellationToken::new();
    let pruning = tokio::spawn({
        let records = records.clone();
        let stop = stop.clone();
        async move { records.prune_handled_until_stopped(retention, stop).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_notifications")
            .fetch_one(&pool)
            .await
            .expect("count");
        if left == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} handled ids left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for notification in old {
        assert!(!records.handled(notification.metadata.id).await.expect("read"));
    }
    for notification in recent {
        assert!(records.handled(notification.metadata.id).await.expect("read"));
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), pruning)
        .await
        .expect("stops when told")
        .expect("no panic")
        .expect("no error");

    // Within the retention, a notification delivered again is recognised:
    // no second callback, not counted twice.
    handler
        .handle(&delivered("n", 6, &recent[1]), 1)
        .await
        .expect("handled");
    assert_eq!(calls.load(Ordering::SeqCst), 7);
    // Past it, the id is forgotten and the notification would count again:
    // why the retention outlasts what the topic can deliver again.
    handler
        .handle(&delivered("n", 0, &old[0]), 1)
        .await
        .expect("handled");
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    let stored = records
        .get(known.payment_id)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(stored.notifications, 8);
}

/// A callback record of `payment` for a notification of its own.
fn callback(payment: &PaymentState) -> CallbackRecord {
    CallbackRecord {
        payment: payment.clone(),
        notification_id: shared_events::EventId::new(),
        fetched_at: Utc::now(),
        attempts: 1,
        notifications: 1,
    }
}

/// Records each of `callbacks` from a task of its own, all submitted before
/// any is written (one thread: the tasks run in turn and submit before the
/// task that writes their group gets to run); the answers in order.
async fn record_together(records: &Records, callbacks: &[CallbackRecord]) -> Vec<bool> {
    let tasks: Vec<_> = callbacks
        .iter()
        .map(|callback| {
            let (records, callback) = (records.clone(), callback.clone());
            tokio::spawn(async move { records.record(&callback).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("task").expect("recorded"));
    }
    answers
}

#[tokio::test]
async fn a_notification_twice_in_one_group_counts_once() {
    let (_database, records) = records().await;
    let mut callbacks: Vec<_> = (0..40).map(|_| callback(&state())).collect();
    // Delivered again before the first delivery was written.
    callbacks.push(callbacks[3].clone());
    let answers = record_together(&records, &callbacks).await;
    assert_eq!(answers.iter().filter(|new| **new).count(), 40, "{answers:?}");
    assert!(!answers[40], "the second of the same notification is not new");
    for callback in &callbacks[..40] {
        let stored = records
            .get(callback.payment.payment_id)
            .await
            .expect("read")
            .expect("recorded");
        assert_eq!(
            (stored.notification_id, stored.notifications),
            (callback.notification_id, 1)
        );
    }
}

#[tokio::test]
async fn records_written_together_take_one_transaction() {
    let (database, records) = records().await;
    let callbacks: Vec<_> = (0..40).map(|_| callback(&state())).collect();
    let answers = record_together(&records, &callbacks).await;
    assert!(answers.iter().all(|new| *new));
    let mut connection = database.as_superuser().await;
    let transactions: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM payment_records")
        .fetch_one(&mut connection)
        .await
        .expect("count");
    // The first callback may start a statement of its own before the rest
    // are submitted.
    assert!(transactions <= 2, "40 records in {transactions} transactions");
}

#[tokio::test]
async fn two_notifications_of_one_payment_in_one_group_both_count_and_the_newest_state_wins() {
    let (_database, records) = records().await;
    let older = state();
    let mut newer = older.clone();
    newer.version = 2;
    newer.refunded = 10;
    let (first, second) = (callback(&newer), callback(&older));
    let answers = record_together(&records, &[first.clone(), second, callback(&state())]).await;
    assert_eq!(answers, [true, true, true]);
    let stored = records
        .get(older.payment_id)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(stored.payment, newer, "the version guard holds inside a group");
    assert_eq!(stored.notification_id, first.notification_id);
    assert_eq!(stored.notifications, 2);
}

#[tokio::test]
async fn callbacks_reuse_their_connections_and_no_more_are_in_flight_than_the_bound() {
    use std::collections::HashSet;
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use axum::routing::get;

    /// Calls in flight now and at most, and the connections they came on.
    #[derive(Default)]
    struct Seen {
        in_flight: AtomicUsize,
        most_in_flight: AtomicUsize,
        connections: std::sync::Mutex<HashSet<SocketAddr>>,
    }
    let seen = Arc::new(Seen::default());
    let known = state();
    let answered = Arc::clone(&seen);
    let router = axum::Router::new().route(
        "/payments/{id}",
        get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let (seen, known) = (Arc::clone(&answered), known.clone());
            async move {
                seen.connections.lock().expect("lock").insert(peer);
                let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                axum::Json(known)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    let bound = 4;
    let client = PaymentsClient::new(
        &url,
        Token::generate(),
        CallbackLimits {
            connections: bound,
            ..within_a_second()
        },
    );
    let id = state().payment_id;
    // Two bursts of 40 calls at once, as a consumer with 40 records in hand.
    for _ in 0..2 {
        let calls: Vec<_> = (0..40)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.payment(id, Uuid::now_v7(), Uuid::now_v7()).await })
            })
            .collect();
        for call in calls {
            call.await.expect("call").expect("answered");
        }
    }
    let connections = seen.connections.lock().expect("lock").len();
    let most = seen.most_in_flight.load(Ordering::SeqCst);
    assert_eq!(most, bound, "calls in flight at most");
    assert!(connections <= bound, "80 calls on {connections} connections");
}

/// ServiceB's schema on a pool the test can reach, connected as its records
/// are (`Database::connect`).
struct Connected(sqlx::PgPool);

impl Database for Connected {
    const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

    fn on(pool: sqlx::PgPool) -> Self {
        Self(pool)
    }
}

#[tokio::test]
async fn lookups_are_planned_for_their_ids_not_kept_from_when_the_table_was_small() {
    let database = TestDatabase::empty().await;
    // One connection: the lookups, and the view of its prepared statements,
    // on one session.
    let Connected(pool) = Connected::connect(database.url.parse().expect("url"), 1)
        .await
        .expect("connect and migrate");
    sqlx::query(
        "INSERT INTO processed_notifications (event_id, payment_id) \
         SELECT gen_random_uuid(), gen_random_uuid() FROM generate_series(1, 60)",
    )
    .execute(&pool)
    .await
    .expect("the first handled notifications");
    // What autovacuum does once a new table has its first rows.
    sqlx::query("ANALYZE processed_notifications")
        .execute(&pool)
        .await
        .expect("analyze");
    // ServiceB's lookup of handled notifications (`Records::handled`).
    let lookup = "SELECT event_id FROM processed_notifications WHERE event_id = ANY($1)";
    for _ in 0..10 {
        sqlx::query(lookup)
            .bind(vec![Uuid::now_v7()])
            .fetch_all(&pool)
            .await
            .expect("lookup");
    }
    let (generic, custom): (i64, i64) =
        sqlx::query_as("SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1")
            .bind(lookup)
            .fetch_one(&pool)
            .await
            .expect("the session's prepared statements");
    assert_eq!(
        (generic, custom),
        (0, 10),
        "a generic plan made from a table's first statistics would outlive its growth"
    );
}
