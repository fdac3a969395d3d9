//! The consumers write a group of records per statement: what they cost in
//! commits draining a backlog, the order of each key's writes, and a crash
//! between a write and the storing of its offset.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use integration_tests::*;
use rdkafka::message::OwnedMessage;
use service_a::{Audit, PaymentEvents, State};
use service_kit::consumer::{self, HandleError, Handler};
use service_kit::metrics::Metrics;
use service_kit::startup::Database;
use shared_events::envelope::event_id_of;
use shared_events::{Envelope, PaymentId};
use sqlx::PgPool;
use tokio::sync::Notify;

/// Publishes `per_key` notifications for each of `keys` new payments,
/// interleaved (every payment's n-th before any payment's (n+1)-th), through
/// one producer; their event ids per payment, in the order published.
async fn publish_backlog(
    kafka: &service_kit::config::KafkaConfig,
    keys: usize,
    per_key: usize,
) -> HashMap<PaymentId, Vec<String>> {
    use rdkafka::producer::FutureRecord;

    let producer = test_producer(kafka);
    let payments: Vec<_> = (0..keys).map(|_| shared_events::testing::payment()).collect();
    let mut published: HashMap<PaymentId, Vec<String>> = HashMap::new();
    for _ in 0..per_key {
        for payment in &payments {
            let envelope = Envelope::new("/test", payment.notification(), uuid::Uuid::now_v7(), None);
            let record = shared_events::encode(&envelope).expect("encodes");
            producer
                .send(
                    FutureRecord::to(kafka.topics.name(record.topic))
                        .key(&record.key)
                        .payload(&record.payload)
                        .headers(record.headers),
                    std::time::Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("event delivered");
            published
                .entry(payment.payment_id)
                .or_default()
                .push(envelope.metadata.id.to_string());
        }
    }
    published
}

/// Transactions committed in `pool`'s database so far, once only `pool`'s
/// own sessions are left in it: PostgreSQL counts a session's commits when
/// it flushes its statistics, which an ending session does.
async fn commits(pool: &PgPool) -> i64 {
    eventually("only the test's sessions are left in the database", || async {
        let others: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
                .fetch_one(pool)
                .await
                .ok()?;
        (others <= i64::from(pool.size())).then_some(())
    })
    .await;
    sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pool)
        .await
        .expect("statistics")
}

/// ServiceA drains a backlog: each payment's notifications are audited in
/// the order published, each once, and with far fewer commits than records.
#[tokio::test]
async fn service_a_audits_a_backlog_in_groups_each_key_in_order() {
    const KEYS: usize = 100;
    const PER_KEY: usize = 10;
    let total = KEYS * PER_KEY;
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let published = publish_backlog(&kafka, KEYS, PER_KEY).await;
    let database = TestDatabase::empty().await;
    let pool = database.store.pool().clone();
    let before = commits(&pool).await;

    let started = tokio::time::Instant::now();
    let service_a = spawn_service_a_in(&kafka, &unique("service-a"), test_consumer(), &database.url).await;
    eventually("every notification audited", || async {
        let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries")
            .fetch_one(&pool)
            .await
            .ok()?;
        (usize::try_from(audited).ok()? == total).then_some(())
    })
    .await;
    let drained = started.elapsed();
    service_a.stop().await;
    let commits = commits(&pool).await - before;
    let transactions: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT transaction_id::text) FROM audit_entries")
            .fetch_one(&pool)
            .await
            .expect("count");

    // In commit order, as a reader pages: each payment's in the order published.
    let audit = Audit::on(pool.clone());
    let entries = audit.page(None, total + 1).await.expect("read");
    assert_eq!(entries.len(), total, "each notification once");
    let mut audited: HashMap<PaymentId, Vec<String>> = HashMap::new();
    for entry in &entries {
        audited
            .entry(entry.payment_id)
            .or_default()
            .push(entry.event_id.to_string());
    }
    assert_eq!(audited, published, "each payment's notifications in order");

    let (per_record, writes_per_record) = (commits as f64 / total as f64, transactions as f64 / total as f64);
    println!(
        "service-a drained {total} notifications in {drained:?}: {commits} commits in its database \
         ({per_record:.3} per record, start-up included), {transactions} audit-writing transactions \
         ({writes_per_record:.3} per record)"
    );
    assert!(
        writes_per_record < 0.5,
        "{transactions} transactions for {total} records"
    );
}

/// ServiceB drains a backlog of payments: each recorded once, with far fewer
/// commits than records.
#[tokio::test]
async fn service_b_records_a_backlog_in_groups() {
    const PAYMENTS: usize = 300;
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let events = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &events.url).await;
    for amount in 1..=PAYMENTS {
        let amount = i64::try_from(amount).expect("small");
        create_payment(&http, &payments, &payment_request("c-backlog", amount)).await;
    }
    let database = TestDatabase::empty().await;
    let pool = database.store.pool().clone();
    let before = commits(&pool).await;

    let started = tokio::time::Instant::now();
    let service_b = spawn_service_b(&kafka, &unique("service-b"), &payments.url(""), &database.url).await;
    eventually("every payment recorded", || async {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_records")
            .fetch_one(&pool)
            .await
            .ok()?;
        (usize::try_from(recorded).ok()? == PAYMENTS).then_some(())
    })
    .await;
    let drained = started.elapsed();
    service_b.stop().await;
    payments.stop().await;
    let commits = commits(&pool).await - before;
    let (transactions, twice): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT xmin::text) FROM processed_notifications), \
                (SELECT count(*) FROM payment_records WHERE notifications <> 1)",
    )
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(twice, 0, "each notification once");

    let (per_record, writes_per_record) = (
        commits as f64 / PAYMENTS as f64,
        transactions as f64 / PAYMENTS as f64,
    );
    println!(
        "service-b drained {PAYMENTS} notifications in {drained:?}: {commits} commits in its database \
         ({per_record:.3} per record, start-up included), {transactions} recording transactions \
         ({writes_per_record:.3} per record)"
    );
    assert!(
        writes_per_record < 0.5,
        "{transactions} transactions for {PAYMENTS} records"
    );
}

/// ServiceA's handler, which after writing the record `fails_after` never
/// returns, as a process that died between the write and storing the offset;
/// counts the records `watched` it handled.
struct DiesAfterWriting {
    inner: PaymentEvents,
    fails_after: Option<String>,
    written: Arc<Notify>,
    watched: String,
    handled_watched: Arc<AtomicUsize>,
}

impl Handler for DiesAfterWriting {
    async fn handle(&self, record: &OwnedMessage, attempt: u32) -> Result<(), HandleError> {
        self.inner.handle(record, attempt).await?;
        let id = event_id_of(record);
        if id.as_deref() == Some(self.watched.as_str()) {
            self.handled_watched.fetch_add(1, Ordering::SeqCst);
        }
        if id.is_some() && id == self.fails_after {
            self.written.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

/// A record written, its offset not stored when the consumer dies: the
/// consumer that takes over is handed it again, handles it, and the audit
/// holds it once.
// Several threads: the consumer that dies leaves its group, and the
// rebalance that follows runs its callback in `block_in_place`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_written_before_a_crash_that_kept_its_offset_is_redelivered_and_audited_once() {
    const KEYS: usize = 20;
    const PER_KEY: usize = 3;
    let total = KEYS * PER_KEY;
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let published = publish_backlog(&kafka, KEYS, PER_KEY).await;
    // The second notification of some payment: records before and after it.
    let watched = published.values().next().expect("a payment")[1].clone();
    let database = TestDatabase::empty().await;
    let audit = Audit::connect(database.url.parse().expect("url"), 4)
        .await
        .expect("connect and migrate");
    let group = unique("service-a");
    let handled_watched = Arc::new(AtomicUsize::new(0));
    let start = |fails_after: Option<String>, written: Arc<Notify>| {
        let consumer = service_kit::kafka::consumer(
            &kafka,
            &test_consumer(),
            service_a::SERVICE,
            &group,
            &[&kafka.topics.notifications],
            &Metrics::default(),
        )
        .expect("consumer");
        let handler = DiesAfterWriting {
            inner: PaymentEvents::new(kafka.topics.clone(), State::default(), audit.clone()),
            fails_after,
            written,
            watched: watched.clone(),
            handled_watched: Arc::clone(&handled_watched),
        };
        let stop = service_kit::CancellationToken::new();
        (
            tokio::spawn(consumer::run(
                consumer,
                handler,
                test_consumer(),
                None,
                stop.clone(),
            )),
            stop,
        )
    };

    let written = Arc::new(Notify::new());
    let (first, _) = start(Some(watched.clone()), Arc::clone(&written));
    written.notified().await;
    let audited = |audit: Audit| async move {
        let entries = audit.page(None, total + 1).await.ok()?;
        Some(entries.iter().map(|e| e.event_id.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(
        audited(audit.clone())
            .await
            .expect("read")
            .iter()
            .filter(|id| **id == watched)
            .count(),
        1,
        "written before the crash"
    );
    // The crash: the consumer goes without stopping its handlers; the
    // offset of the record written, not handled, is not stored.
    first.abort();
    let _ = first.await;

    let (second, stop) = start(None, Arc::new(Notify::new()));
    eventually("the written record handed out again and handled", || async {
        (handled_watched.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let ids = eventually("every notification audited", || async {
        let ids = audited(audit.clone()).await?;
        (ids.len() >= total).then_some(ids)
    })
    .await;
    stop.cancel();
    second.await.expect("join").expect("consumer");
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!((ids.len(), distinct.len()), (total, total), "each once");
    assert_eq!(ids.iter().filter(|id| **id == watched).count(), 1);
}
