//! The event store against a real PostgreSQL, a fresh database per test.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use event_store::group::Append;
use event_store::testing::{TestDatabase, until_count};
use event_store::{Error, EventMetadata, ExpectedVersion, GroupCommit, NewEvent};
use serde_json::json;
use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use uuid::Uuid;

fn event(n: u32) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".to_owned(),
        schema_version: 1,
        data: json!({ "n": n }),
        metadata: EventMetadata {
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            ..EventMetadata::default()
        },
    }
}

fn events(range: std::ops::RangeInclusive<u32>) -> Vec<NewEvent> {
    range.map(event).collect()
}

#[tokio::test]
async fn a_new_stream_starts_at_version_one_and_counts_without_gaps() {
    let db = TestDatabase::create().await;
    let store = &db.store;

    let first = store
        .append("s", ExpectedVersion::NoStream, &events(1..=3))
        .await
        .expect("append");
    assert_eq!(first.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3]);
    let next = store
        .append("s", ExpectedVersion::Exact(3), &events(4..=4))
        .await
        .expect("append");
    assert_eq!(next[0].version, 4);
    let any = store
        .append("s", ExpectedVersion::Any, &events(5..=6))
        .await
        .expect("append");
    assert_eq!(any.iter().map(|e| e.version).collect::<Vec<_>>(), [5, 6]);
    assert_eq!(store.version("s").await.expect("version"), Some(6));

    let read = store.read_stream("s", 1).await.expect("read");
    assert_eq!(
        read.iter().map(|e| e.version).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(
        read.iter().map(|e| e.data["n"].clone()).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(read.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(read[0], first[0]);

    let tail = store.read_stream("s", 5).await.expect("read");
    assert_eq!(tail.iter().map(|e| e.version).collect::<Vec<_>>(), [5, 6]);
}

#[tokio::test]
async fn metadata_is_stored_as_given_with_or_without_a_trace_context() {
    let db = TestDatabase::create().await;
    let traced = NewEvent {
        metadata: EventMetadata {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
            tracestate: Some("vendor=x".to_owned()),
            ..event(1).metadata
        },
        ..event(1)
    };
    let stored = db
        .store
        .append("t", ExpectedVersion::NoStream, &[traced.clone(), event(2)])
        .await
        .expect("append");
    let read = db.store.read_stream("t", 1).await.expect("read");
    assert_eq!(read, stored);
    assert_eq!(read[0].metadata, traced.metadata);
    assert_eq!(
        (
            read[1].metadata.traceparent.as_ref(),
            read[1].metadata.tracestate.as_ref()
        ),
        (None, None)
    );
}

#[tokio::test]
async fn a_wrong_expectation_is_a_conflict_and_writes_nothing() {
    let db = TestDatabase::create().await;
    let store = &db.store;
    store
        .append("s", ExpectedVersion::NoStream, &events(1..=2))
        .await
        .expect("append");

    for (expected, actual) in [
        (ExpectedVersion::NoStream, Some(2)),
        (ExpectedVersion::Exact(1), Some(2)),
        (ExpectedVersion::Exact(3), Some(2)),
    ] {
        match store.append("s", expected, &events(9..=9)).await {
            Err(Error::Conflict {
                stream,
                expected: e,
                actual: a,
            }) => {
                assert_eq!((stream.as_str(), e, a), ("s", expected, actual));
            }
            other => panic!("{expected}: expected a conflict, got {other:?}"),
        }
    }
    match store
        .append("missing", ExpectedVersion::Exact(1), &events(1..=1))
        .await
    {
        Err(Error::Conflict { actual: None, .. }) => {}
        other => panic!("expected a conflict on a missing stream, got {other:?}"),
    }
    assert_eq!(store.read_stream("s", 1).await.expect("read").len(), 2);
    assert_eq!(store.version("missing").await.expect("version"), None);
    assert!(
        store
            .read_all(0, 100)
            .await
            .expect("read")
            .iter()
            .all(|e| e.stream_id == "s")
    );
}

#[tokio::test]
async fn concurrent_writers_with_the_same_expectation_exactly_one_wins() {
    let db = TestDatabase::create().await;
    let store = db.store.clone();
    store
        .append("s", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");

    let writers: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append("s", ExpectedVersion::Exact(1), &events(i..=i)).await })
        })
        .collect();
    let (mut won, mut conflicts) = (0, 0);
    for writer in writers {
        match writer.await.expect("writer") {
            Ok(_) => won += 1,
            Err(Error::Conflict { .. }) => conflicts += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!((won, conflicts), (1, 19));
    let versions: Vec<_> = store
        .read_stream("s", 1)
        .await
        .expect("read")
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, [1, 2]);
}

#[tokio::test]
async fn concurrent_writers_to_many_streams_leave_no_gaps() {
    let db = TestDatabase::create().await;
    let store = db.store.clone();
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..10 {
                    store
                        .append(&format!("s-{}", i % 4), ExpectedVersion::Any, &events(n..=n))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    for i in 0..4 {
        let versions: Vec<u64> = store
            .read_stream(&format!("s-{i}"), 1)
            .await
            .expect("read")
            .iter()
            .map(|e| e.version)
            .collect();
        assert_eq!(versions, (1..=40).collect::<Vec<_>>(), "stream s-{i}");
    }
    let all = store.read_all(0, 1000).await.expect("read");
    assert_eq!(all.len(), 160);
    let ids: HashSet<_> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), 160);
}

#[tokio::test]
async fn read_all_follows_the_global_order_from_a_position() {
    let db = TestDatabase::create().await;
    let store = &db.store;
    store
        .append("a", ExpectedVersion::NoStream, &events(1..=2))
        .await
        .expect("append");
    store
        .append("b", ExpectedVersion::NoStream, &events(3..=3))
        .await
        .expect("append");
    store
        .append("a", ExpectedVersion::Exact(2), &events(4..=4))
        .await
        .expect("append");

    let all = store.read_all(0, 100).await.expect("read");
    assert_eq!(
        all.iter().map(|e| e.data["n"].clone()).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let after_second = store.read_all(all[1].position, 100).await.expect("read");
    assert_eq!(
        after_second
            .iter()
            .map(|e| e.data["n"].clone())
            .collect::<Vec<_>>(),
        [3, 4]
    );
    assert_eq!(store.read_all(0, 1).await.expect("read").len(), 1);
}

#[tokio::test]
async fn snapshots_keep_the_newest() {
    let db = TestDatabase::create().await;
    let store = &db.store;
    store
        .append("s", ExpectedVersion::NoStream, &events(1..=5))
        .await
        .expect("append");
    assert_eq!(store.load_snapshot("s").await.expect("load"), None);

    store
        .save_snapshot("s", 4, &json!({"total": 10}))
        .await
        .expect("save");
    store
        .save_snapshot("s", 2, &json!({"total": 3}))
        .await
        .expect("save an older one");
    let snapshot = store.load_snapshot("s").await.expect("load").expect("snapshot");
    assert_eq!((snapshot.version, snapshot.state), (4, json!({"total": 10})));
}

#[tokio::test]
async fn events_are_append_only() {
    let db = TestDatabase::create().await;
    let store = &db.store;
    let stored = store
        .append("s", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");

    let again = store
        .append("s", ExpectedVersion::Any, &[event_with_id(stored[0].event_id)])
        .await;
    assert!(
        matches!(again, Err(Error::DuplicateEvent(id)) if id == stored[0].event_id),
        "{again:?}"
    );
    assert!(matches!(
        store.append("s", ExpectedVersion::Any, &[]).await,
        Err(Error::Empty)
    ));

    for statement in ["UPDATE events SET data = '{}'", "DELETE FROM events"] {
        let refused = sqlx::query(statement).execute(store.pool()).await;
        assert!(refused.is_err(), "{statement} must be refused");
    }
    assert_eq!(store.read_stream("s", 1).await.expect("read"), stored);
}

fn event_with_id(id: Uuid) -> NewEvent {
    NewEvent {
        event_id: id,
        ..event(0)
    }
}

#[tokio::test]
async fn read_committed_holds_back_what_a_running_transaction_could_precede() {
    use event_store::{Checkpoint, EventStore};

    let db = TestDatabase::create().await;
    let store = &db.store;

    // A writer's transaction starts (and takes its id)...
    let mut slow = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *slow)
        .await
        .expect("xid");
    // ...a later one commits an event at once...
    store
        .append("fast", ExpectedVersion::NoStream, &events(2..=2))
        .await
        .expect("append");
    // ...and the first appends only now, at a *higher* position.
    EventStore::append_in(&mut slow, "slow", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");
    assert_eq!(
        store.read_all(0, 10).await.expect("read").len(),
        1,
        "only the fast one is visible"
    );
    assert!(
        store
            .read_committed(Checkpoint::default(), 10)
            .await
            .expect("read")
            .is_empty(),
        "the fast event waits: the slow one, not yet visible, comes first"
    );

    slow.commit().await.expect("commit");
    let read = store
        .read_committed(Checkpoint::default(), 10)
        .await
        .expect("read");
    let streams: Vec<_> = read.iter().map(|(_, e)| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["slow", "fast"]);

    store.save_checkpoint("relay", read[0].0).await.expect("save");
    let checkpoint = store.checkpoint("relay").await.expect("load");
    assert_eq!(checkpoint, read[0].0);
    let rest = store.read_committed(checkpoint, 10).await.expect("read");
    assert_eq!(
        rest.iter().map(|(_, e)| e.stream_id.as_str()).collect::<Vec<_>>(),
        ["fast"]
    );
    assert_eq!(
        store.checkpoint("unknown").await.expect("load"),
        Checkpoint::default()
    );
}

/// A transaction with an id, open until dropped.
async fn open_transaction(store: &event_store::EventStore) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut open = store.pool().begin().await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .expect("xid");
    open
}

#[tokio::test]
async fn a_transaction_open_in_another_database_does_not_hold_back_read_committed() {
    use event_store::Checkpoint;

    let db = TestDatabase::create().await;
    let elsewhere = TestDatabase::empty().await;
    // Another database of the same server: an older transaction id, open
    // for the whole test.
    let open = open_transaction(&elsewhere.store).await;
    db.store
        .append("s", ExpectedVersion::NoStream, &events(1..=2))
        .await
        .expect("append");

    let read = db
        .store
        .read_committed(Checkpoint::default(), 10)
        .await
        .expect("read");
    assert_eq!(
        read.len(),
        2,
        "read at once, though a transaction elsewhere began first"
    );
    assert!(
        db.store
            .holders(Checkpoint::default(), None)
            .await
            .expect("holders")
            .is_empty()
    );
    drop(open);
}

#[tokio::test]
async fn a_transaction_open_in_the_store_database_holds_back_until_it_is_ended() {
    use event_store::Checkpoint;
    use std::time::Duration;

    let db = TestDatabase::create().await;
    let store = &db.store;
    let mut open = open_transaction(store).await;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *open)
        .await
        .expect("pid");
    store
        .append("s", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");

    assert!(
        store
            .read_committed(Checkpoint::default(), 10)
            .await
            .expect("read")
            .is_empty(),
        "held back: the open transaction may still commit an event that comes first"
    );
    let holders = store.holders(Checkpoint::default(), None).await.expect("holders");
    assert_eq!(
        holders.iter().map(|h| (h.pid, h.ended)).collect::<Vec<_>>(),
        [(pid, false)]
    );
    // Not ended while younger than the limit...
    let limit = Duration::from_secs(1);
    let holders = store
        .holders(Checkpoint::default(), Some(Duration::from_secs(3600)))
        .await
        .expect("holders");
    assert!(!holders[0].ended);
    // ...and ended past it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !store
        .holders(Checkpoint::default(), Some(limit))
        .await
        .expect("holders")
        .first()
        .is_some_and(|h| h.ended)
    {
        assert!(tokio::time::Instant::now() < deadline, "not ended within 10 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        sqlx::query("SELECT 1").execute(&mut *open).await.is_err(),
        "its session was ended"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let read = loop {
        let read = store
            .read_committed(Checkpoint::default(), 10)
            .await
            .expect("read");
        if !read.is_empty() || tokio::time::Instant::now() > deadline {
            break read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(read.len(), 1, "read once the transaction is gone");
}

#[tokio::test]
async fn a_holder_the_reader_may_not_end_is_named_not_ended() {
    use event_store::{Checkpoint, EventStore};
    use sqlx::postgres::PgConnectOptions;
    use std::str::FromStr;
    use std::time::Duration;

    let db = TestDatabase::create().await;
    // A reader that sees every session's figures but may not end those of
    // another role (the database's own, which holds the transaction below).
    // With a password: the test server may trust local logins, the one in a
    // container asks for one.
    let role = format!("reader_{}", Uuid::new_v4().simple());
    let password = Uuid::new_v4().simple().to_string();
    let mut admin = db.as_superuser().await;
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE pg_read_all_stats"),
        format!("GRANT CONNECT ON DATABASE {} TO {role}", db.name),
        format!("GRANT SELECT ON events TO {role}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .expect(&statement);
    }
    let options = PgConnectOptions::from_str(&db.url)
        .expect("url")
        .username(&role)
        .password(&password);
    let reader = EventStore::connect(options, 2)
        .await
        .expect("connect as the reader");

    let open = open_transaction(&db.store).await;
    db.store
        .append("s", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");
    let holders = reader
        .holders(Checkpoint::default(), Some(Duration::ZERO))
        .await
        .expect("holders, without failing on a session it may not end");
    assert_eq!(holders.iter().map(|h| h.ended).collect::<Vec<_>>(), [false]);

    drop(open);
    reader.pool().close().await;
    for statement in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .expect(&statement);
    }
}

#[tokio::test]
async fn a_conflict_inside_a_transaction_leaves_the_transaction_usable() {
    use event_store::EventStore;

    let db = TestDatabase::create().await;
    let store = &db.store;
    store
        .append("s", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");

    let mut tx = store.pool().begin().await.expect("begin");
    let conflict = EventStore::append_in(&mut tx, "s", ExpectedVersion::NoStream, &events(2..=2)).await;
    assert!(
        matches!(conflict, Err(Error::Conflict { actual: Some(1), .. })),
        "{conflict:?}"
    );
    // The transaction goes on: the next append in it commits.
    EventStore::append_in(&mut tx, "t", ExpectedVersion::NoStream, &events(3..=3))
        .await
        .expect("append after a conflict");
    tx.commit().await.expect("commit");
    assert_eq!(store.version("t").await.expect("version"), Some(1));
    assert_eq!(store.version("s").await.expect("version"), Some(1));
}

#[tokio::test]
async fn truncating_the_events_is_refused() {
    let db = TestDatabase::create().await;
    let store = &db.store;
    store
        .append("s", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");
    assert!(
        sqlx::query("TRUNCATE events")
            .execute(store.pool())
            .await
            .is_err()
    );
    assert_eq!(store.read_all(0, 10).await.expect("read").len(), 1);
}

/// An append of `event(n)` to `stream`, as a unit of a group commit.
fn unit(stream: &str, expected: ExpectedVersion, n: u32) -> Append {
    Append {
        stream: stream.to_owned(),
        expected,
        events: vec![event(n)],
    }
}

type Committing = tokio::task::JoinHandle<Result<Vec<event_store::RecordedEvent>, Error>>;

/// Commits `unit` through `group` from a task of its own, in a span of its
/// own, as a request would.
fn commit(group: &GroupCommit<Append>, unit: Append) -> Committing {
    let group = group.clone();
    tokio::spawn(async move { group.commit(unit).await }.instrument(tracing::info_span!("request")))
}

/// Commits `units` as one group, in their order: a lone append to stream
/// `first` starts a group at once and is held back by a lock on the events
/// table meanwhile; each unit is submitted once the one before waits for
/// the next group; then the hold is released and `first` commits alone.
async fn one_group(
    db: &TestDatabase,
    group: &GroupCommit<Append>,
    units: impl IntoIterator<Item = Append>,
) -> Vec<Committing> {
    let held = db.hold_appends().await;
    let first = commit(group, unit("first", ExpectedVersion::NoStream, 0));
    held.until_waited_on_by(1).await;
    let mut submitted = Vec::new();
    for unit in units {
        submitted.push(commit(group, unit));
        until_count("appends wait for the next group", submitted.len(), || {
            group.waiting()
        })
        .await;
    }
    held.release().await;
    first.await.expect("task").expect("appended");
    submitted
}

/// The transaction that wrote each event of the `streams`, by stream and version.
async fn writers(store: &event_store::EventStore, streams: &[&str]) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT stream_id, version, transaction_id::text::bigint FROM events \
         WHERE stream_id = ANY($1) ORDER BY stream_id, version",
    )
    .bind(streams)
    .fetch_all(store.pool())
    .await
    .expect("read the writing transactions")
}

/// The `append` spans (`INSERT events`) opened in this test binary.
#[derive(Clone, Default)]
struct AppendSpans(Arc<Mutex<Vec<AppendSpan>>>);

/// An `append` span: how many appends shared its statement, and its parent.
#[derive(Debug)]
struct AppendSpan {
    stream: String,
    statement_appends: u64,
    parent: Option<Id>,
}

impl AppendSpans {
    /// The spans, recorded from now on by the binary's global subscriber.
    fn recorded() -> Self {
        static SPANS: OnceLock<AppendSpans> = OnceLock::new();
        SPANS
            .get_or_init(|| {
                let spans = Self::default();
                tracing_subscriber::registry()
                    .with(spans.clone())
                    .try_init()
                    .expect("the first global subscriber");
                spans
            })
            .clone()
    }

    fn of_stream(&self, stream: &str) -> Vec<(u64, Option<Id>)> {
        let spans = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        spans
            .iter()
            .filter(|s| s.stream == stream)
            .map(|s| (s.statement_appends, s.parent.clone()))
            .collect()
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for AppendSpans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "append" {
            return;
        }
        let mut span = AppendSpan {
            stream: String::new(),
            statement_appends: 0,
            parent: ctx
                .span(id)
                .and_then(|span| span.parent())
                .map(|parent| parent.id()),
        };
        attrs.record(&mut span);
        self.0.lock().unwrap_or_else(PoisonError::into_inner).push(span);
    }
}

impl Visit for AppendSpan {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "event_store.stream" {
            value.clone_into(&mut self.stream);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "event_store.statement_appends" {
            self.statement_appends = value;
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

#[tokio::test]
async fn appends_submitted_together_commit_in_one_transaction_each_with_its_own_answer() {
    let spans = AppendSpans::recorded();
    let db = TestDatabase::create().await;
    let group = GroupCommit::new(&db.store);
    // The ten that arrive while a lone append runs make the next group.
    let streams: Vec<String> = (1..=10).map(|n| format!("together-{n}")).collect();
    let next = one_group(
        &db,
        &group,
        (1..=10).map(|n| unit(&streams[n as usize - 1], ExpectedVersion::NoStream, n)),
    )
    .await;
    for (n, answer) in (1..=10).zip(next) {
        let stored = answer.await.expect("task").expect("appended");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].version, 1);
        assert_eq!(stored[0].data["n"], n, "each its own answer");
    }
    let names: Vec<&str> = streams.iter().map(String::as_str).collect();
    let together: HashSet<i64> = writers(&db.store, &names).await.iter().map(|w| w.2).collect();
    assert_eq!(together.len(), 1, "one transaction for the ten: {together:?}");
    let alone = writers(&db.store, &["first"]).await;
    assert!(!together.contains(&alone[0].2), "the first committed on its own");

    // One statement for the ten, and each request's trace has its append.
    let mut parents = HashSet::new();
    for stream in &streams {
        let [(shared, parent)] = &spans.of_stream(stream)[..] else {
            panic!("one append span for {stream}: {:?}", spans.of_stream(stream));
        };
        assert_eq!(*shared, 10, "the ten appends share one statement");
        parents.insert(
            parent
                .clone()
                .expect("the append's span has its request's as parent"),
        );
    }
    assert_eq!(parents.len(), 10, "each append in its own request's trace");
}

#[tokio::test]
async fn a_conflict_in_a_group_fails_alone_and_the_others_commit() {
    let db = TestDatabase::create().await;
    let store = &db.store;
    store
        .append("taken", ExpectedVersion::NoStream, &events(1..=1))
        .await
        .expect("append");
    let group = GroupCommit::new(store);
    let answers = one_group(
        &db,
        &group,
        [
            // Fails first in its group: nothing else written yet.
            unit("taken", ExpectedVersion::NoStream, 2),
            unit("a", ExpectedVersion::NoStream, 3),
            unit("taken", ExpectedVersion::Exact(1), 4),
            // Decided on version 1 too: the append before in its group won.
            unit("taken", ExpectedVersion::Exact(1), 5),
            // After this transaction's own version 2.
            unit("taken", ExpectedVersion::Any, 6),
            unit("b", ExpectedVersion::NoStream, 7),
        ],
    )
    .await;

    let mut outcomes = Vec::new();
    for answer in answers {
        outcomes.push(match answer.await.expect("task") {
            Ok(stored) => Ok(stored[0].version),
            Err(Error::Conflict { actual, .. }) => Err(actual),
            Err(e) => panic!("only conflicts fail: {e}"),
        });
    }
    assert_eq!(outcomes, [Err(Some(1)), Ok(1), Ok(2), Err(Some(2)), Ok(3), Ok(1)]);

    let stored = store.read_stream("taken", 1).await.expect("read");
    assert_eq!(
        stored.iter().map(|e| e.data["n"].clone()).collect::<Vec<_>>(),
        [1, 4, 6],
        "only the appends that succeeded are stored"
    );
    let written = writers(store, &["a", "b", "taken"]).await;
    let group_writes: HashSet<i64> = written
        .iter()
        .filter(|w| w.1 > 1 || w.0 != "taken")
        .map(|w| w.2)
        .collect();
    assert_eq!(group_writes.len(), 1, "one transaction: {written:?}");
}

#[tokio::test]
async fn a_write_that_aborts_its_group_fails_alone_and_the_others_are_written_one_by_one() {
    let db = TestDatabase::create().await;
    let taken = Uuid::now_v7();
    db.store
        .append("s", ExpectedVersion::NoStream, &[event_with_id(taken)])
        .await
        .expect("append");
    let group = GroupCommit::new(&db.store);
    let duplicate = Append {
        stream: "t".to_owned(),
        expected: ExpectedVersion::NoStream,
        events: vec![event_with_id(taken)],
    };
    let answers = one_group(
        &db,
        &group,
        [
            unit("a", ExpectedVersion::NoStream, 1),
            // An event id stored before: a failure that aborts the
            // transaction, not a conflict.
            duplicate,
            unit("b", ExpectedVersion::NoStream, 3),
        ],
    )
    .await;
    let mut outcomes = Vec::new();
    for answer in answers {
        outcomes.push(answer.await.expect("task").map(|stored| stored[0].version));
    }
    assert!(matches!(outcomes[0], Ok(1)), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(Error::DuplicateEvent(id)) if id == taken),
        "{outcomes:?}"
    );
    assert!(matches!(outcomes[2], Ok(1)), "{outcomes:?}");
    assert_eq!(db.store.version("t").await.expect("version"), None);
}
