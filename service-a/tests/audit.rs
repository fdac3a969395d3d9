//! ServiceA's audit log against a real PostgreSQL (a database of its own
//! per test): notifications recorded once, kept apart from the payment
//! copy, read a page at a time in commit order, pruned past the retention.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use event_store::testing::TestDatabase;
use service_a::audit::NewEntry;
use service_a::{AppState, Audit, PaymentEvents, State, app};
use service_kit::auth::{Callers, Rights, Token};
use service_kit::consumer::{HandleError, Handler};
use service_kit::startup::Database;
use shared_events::testing::{delivered, payment};
use shared_events::{Envelope, Topics};
use tower::ServiceExt;
use uuid::Uuid;

/// The audit log in a database of its own, with that database, which the
/// test keeps for as long as it uses the log.
async fn audit() -> (TestDatabase, Audit) {
    let database = TestDatabase::empty().await;
    let audit = Audit::connect(database.url.parse().expect("url"), 2)
        .await
        .expect("connect and migrate");
    (database, audit)
}

/// Handles `count` notifications of new payments on the notifications topic.
async fn notify(
    handler: &PaymentEvents,
    topics: &Topics,
    count: i64,
) -> Vec<Envelope<shared_events::PaymentReceivedNotification>> {
    let mut sent = Vec::new();
    for offset in 0..count {
        let notification = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
        handler
            .handle(&delivered(&topics.notifications, offset, &notification), 1)
            .await
            .expect("handled");
        sent.push(notification);
    }
    sent
}

#[tokio::test]
async fn a_redelivered_notification_is_recorded_once_and_the_copy_is_untouched() {
    let (_database, audit) = audit().await;
    let topics = Topics::default();
    let state = State::default();
    let handler = PaymentEvents::new(topics.clone(), state.clone(), audit.clone());
    let sent = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
    let record = delivered(&topics.notifications, 7, &sent);

    for _ in 0..3 {
        handler.handle(&record, 1).await.expect("handled");
    }
    // Another instance on the same database: the notification is known.
    let restarted = PaymentEvents::new(topics, State::default(), audit.clone());
    restarted.handle(&record, 1).await.expect("handled");

    let entries = page_of_at_least(&audit, 1).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].event_id, sent.metadata.id);
    assert_eq!((entries[0].offset, entries[0].kind.as_str()), (7, "received"));
    assert_eq!(
        state.payments.get(sent.data.payment_id),
        None,
        "a notification carries no state"
    );
}

/// ServiceA's router on `audit`, answering an operator whose token is
/// returned beside it.
fn served(audit: Audit) -> (axum::Router, Token) {
    let token = Token::generate();
    let router = app(
        AppState {
            state: State::default(),
            audit,
        },
        Callers::of([("operator", Rights::READ, &token)]),
    );
    (router, token)
}

/// `GET uri`, with `token` as the bearer token if there is one.
async fn get(
    router: &axum::Router,
    uri: &str,
    token: Option<&Token>,
) -> (StatusCode, Option<String>, serde_json::Value) {
    let mut request = Request::get(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, token.authorization());
    }
    let response = router
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let link = response
        .headers()
        .get(header::LINK)
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, link, serde_json::from_slice(&bytes).expect("JSON"))
}

#[tokio::test]
async fn the_audit_is_read_a_page_at_a_time_in_the_order_it_was_recorded() {
    let (_database, audit) = audit().await;
    let topics = Topics::default();
    let handler = PaymentEvents::new(topics.clone(), State::default(), audit.clone());
    let sent = notify(&handler, &topics, 5).await;
    let (router, token) = served(audit);
    let (status, _, body) = get(&router, "/audit", None).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the audit log needs a caller's token: {body}"
    );
    let (status, _, _) = get(&router, &format!("/payments/{}", uuid::Uuid::new_v4()), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "so does the copy");

    let mut seen = Vec::new();
    let mut next = Some("/audit?limit=2".to_owned());
    let mut pages = 0;
    while let Some(uri) = next {
        let (status, link, body) = get(&router, &uri, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let page = body.as_array().expect("a list");
        assert!(page.len() <= 2);
        seen.extend(
            page.iter()
                .map(|e| e["event_id"].as_str().expect("id").to_owned()),
        );
        next = link.map(|l| {
            let target = l
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .expect("a next link");
            target.0.to_owned()
        });
        pages += 1;
    }
    let expected: Vec<String> = sent.iter().map(|n| n.metadata.id.to_string()).collect();
    assert_eq!(seen, expected, "every entry once, in the order recorded");
    assert_eq!(pages, 3, "2 + 2 + 1, and no link after the last");

    let (status, link, all) = get(&router, "/audit", Some(&token)).await;
    assert_eq!((status, link), (StatusCode::OK, None));
    assert_eq!(all.as_array().map(Vec::len), Some(5));

    for bad in [
        "/audit?limit=0",
        "/audit?limit=1001",
        "/audit?after=x",
        "/audit?after=12",
        "/audit?limit=-1",
    ] {
        let (status, _, body) = get(&router, bad, Some(&token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "invalid_query", "{bad}");
    }
}

/// How many requests the reader of the test below has made.
type Reads = std::sync::Arc<std::sync::atomic::AtomicUsize>;

/// Pages through `GET /audit` from the start, going on from the last
/// entry's cursor, until `count` entries came back (or 60 s passed);
/// counts its requests in `reads`.
async fn read_throughout(router: axum::Router, token: Token, count: usize, reads: Reads) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    while seen.len() < count && tokio::time::Instant::now() < deadline {
        let uri = match &cursor {
            Some(cursor) => format!("/audit?limit=3&after={cursor}"),
            None => "/audit?limit=3".to_owned(),
        };
        let (status, _, body) = get(&router, &uri, Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        let page = body.as_array().expect("a list");
        seen.extend(
            page.iter()
                .map(|e| e["event_id"].as_str().expect("id").to_owned()),
        );
        if let Some(last) = page.last() {
            cursor = Some(last["cursor"].as_str().expect("a cursor").to_owned());
        }
        reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        tokio::task::yield_now().await;
    }
    seen
}

/// Waits (up to 10 s) until `condition` holds.
async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The first page of the audit log (100 entries at most), once it holds
/// `n`. Entries committed are read once no transaction that could still
/// commit before them is open; a transaction of another test's database
/// that this role cannot see in `pg_stat_activity` counts as one, so the
/// reader may lag a moment behind the commit.
async fn page_of_at_least(audit: &Audit, n: usize) -> Vec<service_a::audit::AuditEntry> {
    let mut page = Vec::new();
    until(&format!("{n} entries to be read"), async || {
        page = audit.page(None, 100).await.expect("read");
        page.len() >= n
    })
    .await;
    page
}

#[tokio::test]
async fn a_reader_paging_throughout_sees_every_entry_once_though_commits_land_out_of_seq_order() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use sqlx::Connection;

    const ROUNDS: i64 = 3;
    const WRITERS: i64 = 3;
    const PER_WRITER: i64 = 5;
    const LATER: i64 = 2;

    let database = TestDatabase::empty().await;
    let audit = Audit::connect(database.url.parse().expect("url"), 8)
        .await
        .expect("connect and migrate");
    let topics = Topics::default();
    let handler = Arc::new(PaymentEvents::new(
        topics.clone(),
        State::default(),
        audit.clone(),
    ));
    // Another instance of ServiceA on the same database writes the slow
    // entry: an instance writes one group of entries at a time, so its own
    // entries commit in `seq` order, but two instances' need not.
    let other_instance = Arc::new(PaymentEvents::new(
        topics.clone(),
        State::default(),
        Audit::connect(database.url.parse().expect("url"), 2)
            .await
            .expect("connect"),
    ));
    let (router, token) = served(audit);
    let total = usize::try_from(ROUNDS * (1 + LATER + WRITERS * PER_WRITER)).expect("small");
    let reads = Reads::default();
    let reader = tokio::spawn(read_throughout(router, token, total, Arc::clone(&reads)));
    let mut blocker = sqlx::PgConnection::connect(&database.url).await.expect("connect");
    let mut probe = sqlx::PgConnection::connect(&database.url).await.expect("connect");

    let mut sent = Vec::new();
    for _ in 0..ROUNDS {
        // Writers all through the round.
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let (handler, topics) = (Arc::clone(&handler), topics.clone());
                tokio::spawn(async move { notify(&handler, &topics, PER_WRITER).await })
            })
            .collect();

        // A slow one: its insert takes its `seq` (and transaction), then
        // waits on a row with the same event id that another transaction
        // holds uncommitted.
        let slow = Envelope::new("/test", payment().notification(), Uuid::now_v7(), None);
        let mut held = blocker.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO audit_entries (event_id, payment_id, kind, occurred_at, recorded_at, source, \
             correlation_id, topic_partition, topic_offset) \
             VALUES ($1, $2, 'received', now(), now(), '/held', $3, 0, 0)",
        )
        .bind(Uuid::from(slow.metadata.id))
        .bind(Uuid::new_v4())
        .bind(Uuid::new_v4())
        .execute(&mut *held)
        .await
        .expect("insert");
        let slow_write = {
            let (handler, topics, slow) = (Arc::clone(&other_instance), topics.clone(), slow.clone());
            tokio::spawn(async move {
                handler
                    .handle(&delivered(&topics.notifications, 1000, &slow), 1)
                    .await
                    .expect("handled");
            })
        };
        // Asked outside that transaction: one sees the same activity
        // throughout.
        until("the slow insert to wait", async || {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut probe)
            .await
            .expect("query")
                > 0
        })
        .await;

        // Later entries commit (higher `seq`) while it waits, and the reader
        // reads past them.
        sent.extend(notify(&handler, &topics, LATER).await);
        let before = reads.load(Ordering::SeqCst);
        until("the reader to read on", async || {
            reads.load(Ordering::SeqCst) >= before + 2
        })
        .await;

        // The other transaction gives up: the slow entry commits now, with
        // a `seq` below entries already read.
        held.rollback().await.expect("rollback");
        slow_write.await.expect("slow writer");
        sent.push(slow);
        for writer in writers {
            sent.extend(writer.await.expect("writer"));
        }
    }

    let seen = reader.await.expect("reader");
    let mut expected: Vec<String> = sent.iter().map(|n| n.metadata.id.to_string()).collect();
    expected.sort();
    let mut distinct = seen.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), seen.len(), "no entry twice");
    let missed: Vec<_> = expected
        .iter()
        .filter(|id| distinct.binary_search(id).is_err())
        .collect();
    assert!(
        missed.is_empty(),
        "{} of {total} entries never seen: {missed:?}",
        missed.len()
    );
    assert_eq!(distinct, expected, "nothing else");
}

#[tokio::test]
async fn entries_older_than_the_retention_are_pruned_a_batch_at_a_time() {
    let (database, audit) = audit().await;
    let topics = Topics::default();
    let handler = PaymentEvents::new(topics.clone(), State::default(), audit.clone());
    let sent = notify(&handler, &topics, 5).await;
    let old: Vec<Uuid> = sent[..3].iter().map(|n| Uuid::from(n.metadata.id)).collect();
    let pool = sqlx::PgPool::connect(&database.url).await.expect("connect");
    sqlx::query("UPDATE audit_entries SET recorded_at = now() - interval '16 days' WHERE event_id = ANY($1)")
        .bind(&old)
        .execute(&pool)
        .await
        .expect("backdate");

    let cutoff = chrono::Utc::now() - chrono::Duration::days(15);
    assert_eq!(audit.prune(cutoff, 2).await.expect("prune"), 2, "a batch at most");
    assert_eq!(audit.prune(cutoff, 2).await.expect("prune"), 1);
    assert_eq!(audit.prune(cutoff, 2).await.expect("prune"), 0);
    let left: Vec<_> = audit
        .page(None, 10)
        .await
        .expect("read")
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(
        left,
        [sent[3].metadata.id, sent[4].metadata.id],
        "the newer ones stay"
    );

    // A notification within the retention, delivered again, is known.
    handler
        .handle(&delivered(&topics.notifications, 4, &sent[4]), 1)
        .await
        .expect("handled");
    assert_eq!(page_of_at_least(&audit, 2).await.len(), 2);
}

#[tokio::test]
async fn an_open_transaction_in_another_database_does_not_hold_the_audit_back() {
    use sqlx::Connection;

    let (_database, audit) = audit().await;
    // Another service's database on the same server, with a transaction
    // that has written and stays open.
    let elsewhere = TestDatabase::empty().await;
    let mut other = sqlx::PgConnection::connect(&elsewhere.url)
        .await
        .expect("connect");
    let mut open = other.begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .expect("take an id");

    let topics = Topics::default();
    let handler = PaymentEvents::new(topics.clone(), State::default(), audit.clone());
    let sent = notify(&handler, &topics, 1).await;
    let mut page = Vec::new();
    until("the entry to be read", async || {
        page = audit.page(None, 10).await.expect("read");
        !page.is_empty()
    })
    .await;
    assert_eq!(page[0].event_id, sent[0].metadata.id);
    open.rollback().await.expect("rollback");
}

/// A notification to audit, delivered at `offset`.
fn entry(offset: i64) -> NewEntry {
    NewEntry {
        event_id: shared_events::EventId::new(),
        payment_id: payment().payment_id,
        kind: "received",
        occurred_at: chrono::Utc::now(),
        source: "/test".to_owned(),
        correlation_id: Uuid::now_v7(),
        partition: 0,
        offset,
    }
}

/// Records each of `entries` from a task of its own, all submitted before
/// any is written (one thread: the tasks run in turn and submit before the
/// task that writes their group gets to run); the outcomes in order.
async fn record_together(audit: &Audit, entries: &[NewEntry]) -> Vec<service_kit::Result<bool>> {
    let tasks: Vec<_> = entries
        .iter()
        .map(|entry| {
            let (audit, entry) = (audit.clone(), entry.clone());
            tokio::spawn(async move { audit.record(&entry).await })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.expect("task"));
    }
    outcomes
}

/// How many transactions wrote the audit log's entries.
async fn transactions(database: &TestDatabase) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT transaction_id::text) FROM audit_entries")
        .fetch_one(&mut database.as_superuser().await)
        .await
        .expect("count")
}

#[tokio::test]
async fn notifications_audited_together_take_one_transaction_and_one_twice_in_it_is_new_once() {
    let (database, audit) = audit().await;
    let mut entries: Vec<_> = (0..40).map(entry).collect();
    // Delivered again before the first delivery was written.
    entries.push(entries[3].clone());
    let new: Vec<bool> = record_together(&audit, &entries)
        .await
        .into_iter()
        .map(|outcome| outcome.expect("recorded"))
        .collect();
    assert_eq!(new.iter().filter(|new| **new).count(), 40, "{new:?}");
    assert!(new[3] && !new[40], "the first submission is the new one");
    let page = page_of_at_least(&audit, 40).await;
    assert_eq!(page.len(), 40);
    let offsets: Vec<i64> = page.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, (0..40).collect::<Vec<_>>(), "in the order submitted");
    // The first may start a statement of its own before the rest are submitted.
    let transactions = transactions(&database).await;
    assert!(transactions <= 2, "40 entries in {transactions} transactions");
}

#[tokio::test]
async fn a_notification_the_database_rejects_fails_alone_and_the_rest_of_its_group_is_audited() {
    let (_database, audit) = audit().await;
    let mut entries: Vec<_> = (0..5).map(entry).collect();
    // PostgreSQL's text holds no NUL character.
    entries[2].source = "/te\0st".to_owned();
    let outcomes = record_together(&audit, &entries).await;
    for (offset, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(new) => assert!(new && offset != 2, "{offset}"),
            Err(e) => {
                assert_eq!(offset, 2, "only the rejected entry fails: {e}");
                assert!(
                    matches!(HandleError::from(e), HandleError::Transient(_)),
                    "the record's own failure, not the database's"
                );
            }
        }
    }
    let offsets: Vec<i64> = audit
        .page(None, 10)
        .await
        .expect("read")
        .iter()
        .map(|e| e.offset)
        .collect();
    assert_eq!(offsets, [0, 1, 3, 4]);
}
