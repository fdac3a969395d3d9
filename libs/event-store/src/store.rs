//! [`EventStore`]: the PostgreSQL implementation.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool, Row};
use uuid::Uuid;

use tracing::Instrument;

use crate::commit_order::CommitOrder;
use crate::error::{Error, Result};
use crate::group::Append;
use crate::model::{
    Backlog, Checkpoint, EventMetadata, ExpectedVersion, Hold, Holder, NewEvent, RecordedEvent, Snapshot,
};

/// The schema, embedded at compile time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Runs `migrator` on `pool`. Several migrators may share a database (the
/// event store's and the application's), so each ignores the others'
/// migrations; their version numbers must not collide.
pub async fn migrate(migrator: &sqlx::migrate::Migrator, pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate::Migrator {
        migrations: migrator.migrations.clone(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    migrator.set_ignore_missing(true);
    migrator.run(pool).await?;
    Ok(())
}

/// Inserts the events as versions `$2 + 1`, `$2 + 2`, ... of stream `$1`,
/// if `{guard}` holds, in one statement: one round trip, atomic without an
/// explicit transaction. The unique index on (stream, version) is the
/// concurrency check: of two writers that decided on the same version, the
/// second waits for the first to commit, then fails with a unique violation
/// and writes nothing.
const APPEND: &str = r#"
INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data, metadata)
SELECT $1, {base} + e.ord, e.event_id, e.event_type, e.schema_version, e.data, e.metadata
FROM UNNEST($3::uuid[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])
         WITH ORDINALITY AS e(event_id, event_type, schema_version, data, metadata, ord)
WHERE {guard}
ORDER BY e.ord
RETURNING position, version, event_id, recorded_at
"#;

/// [`APPEND`] for the common case of one event: plain parameters instead of
/// arrays to unnest, which saves the server a good part of the statement.
/// A version another writer took inserts nothing instead of failing: a
/// conflict then leaves a transaction usable without a savepoint (a group
/// commit runs such appends without one, [`crate::group`]). Of several
/// events some could be inserted and others not, so [`APPEND`] fails.
const APPEND_ONE: &str = r#"
INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data, metadata)
SELECT $1, {base} + 1, $3, $4, $5, $6, $7
WHERE {guard}
ON CONFLICT (stream_id, version) DO NOTHING
RETURNING position, version, event_id, recorded_at
"#;

/// [`APPEND_ONE`] for many streams at once: one event each, appended after
/// version `base` of its stream (0 for a new stream), with [`AT_VERSION`]'s
/// guard row by row. A row whose version is taken, or whose guard fails,
/// inserts nothing and fails nothing, so each append keeps its own outcome.
/// The rows see the table as it was when the statement began, so no two may
/// append to the same stream: the second would not see the first's event.
const APPEND_EACH: &str = r#"
INSERT INTO events (stream_id, version, event_id, event_type, schema_version, data, metadata)
SELECT e.stream_id, e.base + 1, e.event_id, e.event_type, e.schema_version, e.data, e.metadata
FROM UNNEST($1::text[], $2::int8[], $3::uuid[], $4::text[], $5::int4[], $6::jsonb[], $7::jsonb[])
         WITH ORDINALITY AS e(stream_id, base, event_id, event_type, schema_version, data, metadata, ord)
WHERE e.base = 0
   OR EXISTS (SELECT 1 FROM events v WHERE v.stream_id = e.stream_id AND v.version = e.base
              AND v.transaction_id <= pg_current_xact_id())
ORDER BY e.ord
ON CONFLICT (stream_id, version) DO NOTHING
RETURNING position, version, event_id, recorded_at
"#;

/// The stream is at version `$2`: it has that version (and the unique index
/// refuses the next one if it has more), written by an older transaction or
/// by this one. The last condition keeps the commit order (by transaction,
/// then position) the order of versions: a transaction that took its id
/// before the one that wrote version `$2` cannot append after it. The same
/// transaction can: its later insert takes a later position, so its
/// versions still come in order (as those of one append of several events
/// do), which lets a group commit ([`crate::group`]) hold two appends to
/// one stream.
const AT_VERSION: &str = "EXISTS (SELECT 1 FROM events WHERE stream_id = $1 AND version = $2 \
     AND transaction_id <= pg_current_xact_id())";
/// For `Any`: the stream's last event, if any, was written by an older
/// transaction or by this one (see [`AT_VERSION`]).
const LAST_NOT_NEWER: &str = "COALESCE((SELECT transaction_id <= pg_current_xact_id() FROM events \
     WHERE stream_id = $1 ORDER BY version DESC LIMIT 1), TRUE)";
/// After the stream's last version, whatever it is.
const AFTER_LAST: &str = "(SELECT COALESCE(max(version), 0) FROM events WHERE stream_id = $1)";
/// How often an `Any` append retries when another writer took its version.
/// Each lost race means another writer's append went in, so this bounds the
/// wait by the number of competing appends, not by time.
const ANY_ATTEMPTS: u32 = 1000;
/// The unique index that detects concurrent appends.
const VERSION_CONSTRAINT: &str = "events_stream_id_version_key";

const EVENT_COLUMNS: &str =
    "position, stream_id, version, event_id, event_type, schema_version, data, metadata, recorded_at";
/// All events, read in commit order (see [`crate::commit_order`]).
const EVENTS_IN_COMMIT_ORDER: CommitOrder = CommitOrder::new("events", "position");

/// Whether this session may end session `a` of `pg_stat_activity`, as
/// `pg_terminate_backend` decides (which fails the whole statement when it
/// may not): a superuser's only if it is one; otherwise one of a role it
/// has the privileges of, or any with `pg_signal_backend`.
const MAY_END: &str = "(NOT COALESCE((SELECT rolsuper FROM pg_roles WHERE oid = a.usesysid), TRUE) \
         OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)) \
     AND (pg_has_role(a.usesysid, 'USAGE') OR pg_has_role('pg_signal_backend', 'USAGE'))";

/// An append that can share [`APPEND_EACH`] with others: one event, after
/// a known version of its stream, and the span of the request that made it.
pub(crate) struct Lone<'a> {
    pub append: &'a Append,
    pub after: u64,
    pub event: &'a NewEvent,
    pub span: &'a tracing::Span,
}

impl<'a> Lone<'a> {
    /// `append`, if it is one event expected at an exact version (`Any`
    /// retries until it wins, which a shared statement cannot do).
    pub fn of(append: &'a Append, span: &'a tracing::Span) -> Option<Self> {
        let after = match append.expected {
            ExpectedVersion::NoStream => 0,
            ExpectedVersion::Exact(n) => n,
            ExpectedVersion::Any => return None,
        };
        match append.events.as_slice() {
            [event] => Some(Self {
                append,
                after,
                event,
                span,
            }),
            _ => None,
        }
    }
}

/// `event`, appended to `stream`, as an append's `RETURNING` row says it
/// was stored.
fn stored_event(row: &PgRow, stream: &str, event: &NewEvent) -> Result<RecordedEvent> {
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        stream_id: stream.to_owned(),
        version: to_version(row.try_get("version")?),
        event_id: event.event_id,
        event_type: event.event_type.clone(),
        schema_version: event.schema_version,
        data: event.data.clone(),
        metadata: event.metadata.clone(),
        recorded_at: row.try_get("recorded_at")?,
    })
}

/// The span of an append, after OpenTelemetry's database conventions: one
/// `INSERT events` per append, in the trace of the request that made it;
/// `statement_appends` of them shared its statement.
fn append_span(stream: &str, events: usize, statement_appends: usize) -> tracing::Span {
    tracing::info_span!(
        "append",
        otel.name = "INSERT events",
        otel.kind = "client",
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "events",
        event_store.stream = stream,
        event_store.events = events,
        event_store.statement_appends = statement_appends,
    )
}

/// An event store on a PostgreSQL connection pool. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    /// Connects with up to `max_connections` connections, set up as every
    /// service's are ([`service_kit::startup::pool_options`]).
    pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<Self> {
        let pool = service_kit::startup::pool_options(max_connections)
            .connect_with(options)
            .await?;
        Ok(Self::new(pool))
    }

    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates or updates the schema. Safe to run from several processes at
    /// once: sqlx serialises migrations with an advisory lock.
    pub async fn migrate(&self) -> Result<()> {
        migrate(&MIGRATOR, &self.pool).await
    }

    /// Appends `events` to `stream` if it is at the `expected` version.
    /// Returns the stored events, with their versions and positions.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>> {
        let mut conn = self.pool.acquire().await?;
        // One autocommit statement: atomic, and a failure aborts nothing else.
        Self::append_on(&mut conn, stream, expected, events).await
    }

    /// [`EventStore::append`] on `conn`, without a savepoint: for one event,
    /// or where nothing else is in the transaction, since a conflict of
    /// several events aborts it.
    pub(crate) async fn append_on(
        conn: &mut PgConnection,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>> {
        let appended = Self::insert(conn, stream, expected, events).await;
        Self::with_actual_version(conn, appended).await
    }

    /// One event appended to each of `appends`' streams, on `conn`, in one
    /// statement ([`APPEND_EACH`]), each with its own outcome: its stored
    /// event, or its conflict. No two may append to the same stream.
    pub(crate) async fn append_each_on(
        conn: &mut PgConnection,
        appends: &[Lone<'_>],
    ) -> Result<Vec<Result<Vec<RecordedEvent>>>> {
        // Each request's trace has its append; the statement is shared.
        let _spans: Vec<tracing::Span> = appends
            .iter()
            .map(|lone| {
                lone.span
                    .in_scope(|| append_span(&lone.append.stream, 1, appends.len()))
            })
            .collect();
        let rows = sqlx::query(APPEND_EACH)
            .bind(
                appends
                    .iter()
                    .map(|l| l.append.stream.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                appends
                    .iter()
                    .map(|l| i64::try_from(l.after).unwrap_or(i64::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(appends.iter().map(|l| l.event.event_id).collect::<Vec<_>>())
            .bind(
                appends
                    .iter()
                    .map(|l| l.event.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(appends.iter().map(|l| l.event.schema_version).collect::<Vec<_>>())
            .bind(appends.iter().map(|l| Json(&l.event.data)).collect::<Vec<_>>())
            .bind(
                appends
                    .iter()
                    .map(|l| Json(&l.event.metadata))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await?;
        let mut inserted = HashMap::with_capacity(rows.len());
        for row in &rows {
            inserted.insert(row.try_get::<Uuid, _>("event_id")?, row);
        }
        let mut outcomes = Vec::with_capacity(appends.len());
        for Lone { append, event, .. } in appends {
            let outcome = match inserted.get(&event.event_id) {
                Some(row) => Ok(vec![stored_event(row, &append.stream, event)?]),
                None => {
                    let conflict = Err(Error::Conflict {
                        stream: append.stream.clone(),
                        expected: append.expected,
                        actual: None,
                    });
                    Self::with_actual_version(conn, conflict).await
                }
            };
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// [`EventStore::append`] on a connection of the caller's, so the append
    /// can share a transaction with other writes. It runs in a savepoint: a
    /// conflict leaves the caller's transaction usable.
    pub async fn append_in(
        conn: &mut PgConnection,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>> {
        let mut savepoint = conn.begin().await?;
        let appended = Self::insert(&mut savepoint, stream, expected, events).await;
        match appended {
            Ok(stored) => {
                savepoint.commit().await?;
                Ok(stored)
            }
            Err(e) => {
                savepoint.rollback().await?;
                Self::with_actual_version(conn, Err(e)).await
            }
        }
    }

    /// Completes a conflict with the stream's version now, read on a
    /// connection no longer in a failed statement.
    async fn with_actual_version(
        conn: &mut PgConnection,
        appended: Result<Vec<RecordedEvent>>,
    ) -> Result<Vec<RecordedEvent>> {
        match appended {
            Err(Error::Conflict { stream, expected, .. }) => {
                let actual = Self::version_in(conn, &stream).await?;
                Err(Error::Conflict {
                    stream,
                    expected,
                    actual,
                })
            }
            other => other,
        }
    }

    async fn insert(
        conn: &mut PgConnection,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>> {
        Self::insert_unspanned(conn, stream, expected, events)
            .instrument(append_span(stream, events.len(), 1))
            .await
    }

    async fn insert_unspanned(
        conn: &mut PgConnection,
        stream: &str,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<Vec<RecordedEvent>> {
        if events.is_empty() {
            return Err(Error::Empty);
        }
        let (base, guard, base_version) = match expected {
            ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => ("$2", "TRUE", 0),
            ExpectedVersion::Exact(n) => ("$2", AT_VERSION, n),
            ExpectedVersion::Any => (AFTER_LAST, LAST_NOT_NEWER, 0),
        };
        let single = events.len() == 1;
        let template = if single { APPEND_ONE } else { APPEND };
        let sql = template.replace("{base}", base).replace("{guard}", guard);
        let mut attempt = 0;
        let rows = loop {
            attempt += 1;
            let query = sqlx::query(&sql)
                .bind(stream)
                .bind(i64::try_from(base_version).unwrap_or(i64::MAX));
            let query = match events {
                [event] => query
                    .bind(event.event_id)
                    .bind(&event.event_type)
                    .bind(event.schema_version)
                    .bind(Json(&event.data))
                    .bind(Json(&event.metadata)),
                _ => query
                    .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| e.schema_version).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| Json(&e.data)).collect::<Vec<_>>())
                    .bind(events.iter().map(|e| Json(&e.metadata)).collect::<Vec<_>>()),
            };
            match query.fetch_all(&mut *conn).await {
                // One event's lost race inserts nothing (see [`APPEND_ONE`]).
                Ok(rows)
                    if rows.is_empty()
                        && single
                        && expected == ExpectedVersion::Any
                        && attempt < ANY_ATTEMPTS
                        && !conn.is_in_transaction() =>
                {
                    continue;
                }
                Ok(rows) => break rows,
                Err(sqlx::Error::Database(e)) if e.constraint() == Some(VERSION_CONSTRAINT) => {
                    // `Any` has no expectation to fail: it lost a race for
                    // the next version, so it takes the one after. (In an
                    // explicit transaction the failed statement aborted it,
                    // so there is no retrying there: a conflict.)
                    if expected == ExpectedVersion::Any && attempt < ANY_ATTEMPTS && !conn.is_in_transaction()
                    {
                        continue;
                    }
                    return Err(Error::Conflict {
                        stream: stream.to_owned(),
                        expected,
                        actual: None,
                    });
                }
                Err(sqlx::Error::Database(e)) if e.constraint() == Some("events_event_id_key") => {
                    let duplicate = events.first().map_or(Uuid::nil(), |e| e.event_id);
                    return Err(Error::DuplicateEvent(duplicate));
                }
                Err(e) => return Err(e.into()),
            }
        };
        if rows.is_empty() {
            return Err(Error::Conflict {
                stream: stream.to_owned(),
                expected,
                actual: None,
            });
        }

        let mut stored = Vec::with_capacity(rows.len());
        for row in &rows {
            let event_id: Uuid = row.try_get("event_id")?;
            let Some(event) = events.iter().find(|e| e.event_id == event_id) else {
                continue;
            };
            stored.push(stored_event(row, stream, event)?);
        }
        stored.sort_by_key(|e| e.version);
        Ok(stored)
    }

    /// The stream's current version, `None` if it does not exist.
    pub async fn version(&self, stream: &str) -> Result<Option<u64>> {
        let mut conn = self.pool.acquire().await?;
        Self::version_in(&mut conn, stream).await
    }

    async fn version_in(conn: &mut PgConnection, stream: &str) -> Result<Option<u64>> {
        let version: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM events WHERE stream_id = $1")
            .bind(stream)
            .fetch_one(conn)
            .await?;
        Ok(version.map(to_version))
    }

    /// The stream's events from version `from` on (1 for all), in order.
    pub async fn read_stream(&self, stream: &str, from: u64) -> Result<Vec<RecordedEvent>> {
        self.read_stream_page(stream, from, u64::MAX).await
    }

    /// Up to `limit` events of `stream` from version `from` on, in order.
    pub async fn read_stream_page(&self, stream: &str, from: u64, limit: u64) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
        ))
        .bind(stream)
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(recorded).collect()
    }

    /// Up to `limit` events of all streams after global position `after`
    /// (0 for the beginning), in global order.
    ///
    /// Positions are handed out before commit, so an event of a transaction
    /// still in flight can appear later *below* positions already returned.
    /// This is fine for browsing; a reader that must see every event follows
    /// the outbox instead.
    pub async fn read_all(&self, after: i64, limit: i64) -> Result<Vec<RecordedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(recorded).collect()
    }

    /// Up to `limit` events committed after `after`, in commit order: by
    /// writing transaction, then position. Events of transactions that may
    /// still be running are held back (see [`crate::commit_order`]): a
    /// transaction that commits late cannot slip in *behind* what was
    /// already read, so a reader that follows its checkpoint sees every
    /// event exactly once.
    pub async fn read_committed(
        &self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<(Checkpoint, RecordedEvent)>> {
        let rows = EVENTS_IN_COMMIT_ORDER
            .read(&self.pool, EVENT_COLUMNS, after, limit)
            .await?;
        rows.iter()
            .map(|(checkpoint, row)| Ok((*checkpoint, recorded(row)?)))
            .collect()
    }

    /// The transactions of this database that hold back events committed
    /// after `after` (see [`EventStore::read_committed`]), oldest first.
    /// Those that have been open for longer than `end_older_than` are
    /// terminated (`pg_terminate_backend`): they roll back, so nothing they
    /// wrote is ever committed, hence never skipped. Termination needs the
    /// right to signal them (the same role, or `pg_signal_backend`); without
    /// it, [`Holder::ended`] stays false and the reader keeps waiting.
    pub async fn holders(&self, after: Checkpoint, end_older_than: Option<Duration>) -> Result<Vec<Holder>> {
        let rows = sqlx::query(&format!(
            "WITH snapshot AS (SELECT pg_current_snapshot() AS s) \
             SELECT a.pid, x::text::bigint AS xid, a.application_name, a.state, \
                    EXTRACT(EPOCH FROM now() - a.xact_start)::float8 AS open_for, \
                    CASE WHEN now() - a.xact_start > make_interval(secs => $3) AND {MAY_END} \
                         THEN pg_terminate_backend(a.pid) ELSE FALSE END AS ended \
             FROM snapshot, pg_snapshot_xip(snapshot.s) AS x \
             JOIN pg_stat_activity a ON a.backend_xid = x::xid \
             WHERE a.datid = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND a.pid <> pg_backend_pid() \
               AND EXISTS (SELECT 1 FROM events WHERE transaction_id > x \
                           AND (transaction_id, position) > ($1::text::xid8, $2)) \
             ORDER BY x"
        ))
        .bind(after.transaction_id.to_string())
        .bind(after.position)
        // NULL: never older, so nothing is terminated.
        .bind(end_older_than.map(|d| d.as_secs_f64()))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Holder {
                    pid: row.try_get("pid")?,
                    transaction_id: u64::try_from(row.try_get::<i64, _>("xid")?).unwrap_or_default(),
                    application: row
                        .try_get::<Option<String>, _>("application_name")?
                        .unwrap_or_default(),
                    state: row.try_get("state")?,
                    open_for: Duration::from_secs_f64(
                        row.try_get::<Option<f64>, _>("open_for")?.unwrap_or(0.0).max(0.0),
                    ),
                    ended: row.try_get("ended")?,
                })
            })
            .collect()
    }

    /// What the reader called `name` has not handled yet: the events
    /// committed after its checkpoint, and those of the streams it holds
    /// ([`EventStore::holds`]).
    pub async fn backlog(&self, name: &str) -> Result<Backlog> {
        let row = sqlx::query(
            "WITH c AS (SELECT COALESCE((SELECT transaction_id FROM checkpoints WHERE name = $1), '0'::xid8) AS tx, \
                               COALESCE((SELECT position FROM checkpoints WHERE name = $1), 0) AS position), \
             unhandled AS ( \
                 SELECT e.recorded_at FROM events e, c WHERE (e.transaction_id, e.position) > (c.tx, c.position) \
                 UNION ALL \
                 SELECT e.recorded_at FROM checkpoint_holds h, c, events e \
                 WHERE h.name = $1 AND e.stream_id = h.stream_id AND e.version >= h.version \
                   AND (e.transaction_id, e.position) <= (c.tx, c.position)) \
             SELECT count(*) AS events, EXTRACT(EPOCH FROM now() - min(recorded_at))::float8 AS oldest \
             FROM unhandled",
        )
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        Ok(Backlog {
            events: u64::try_from(row.try_get::<i64, _>("events")?).unwrap_or_default(),
            oldest: row
                .try_get::<Option<f64>, _>("oldest")?
                .map(|secs| Duration::from_secs_f64(secs.max(0.0))),
        })
    }

    /// The streams the reader called `name` holds, with the type of the
    /// first event it has not handled of each.
    pub async fn holds(&self, name: &str) -> Result<Vec<Hold>> {
        let rows = sqlx::query(
            "SELECT h.stream_id, h.version, e.event_type FROM checkpoint_holds h \
             JOIN events e ON e.stream_id = h.stream_id AND e.version = h.version \
             WHERE h.name = $1 ORDER BY h.stream_id",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Hold {
                    stream_id: row.try_get("stream_id")?,
                    version: to_version(row.try_get("version")?),
                    event_type: row.try_get("event_type")?,
                })
            })
            .collect()
    }

    /// The events of `stream` from `version` on that lie at or before
    /// `up_to` in the committed order, in version order: what a hold of
    /// `stream` at `version` keeps from a reader at checkpoint `up_to`.
    pub async fn read_held(
        &self,
        stream: &str,
        version: u64,
        up_to: Checkpoint,
    ) -> Result<Vec<(Checkpoint, RecordedEvent)>> {
        let rows = sqlx::query(
            "SELECT transaction_id::text::bigint AS tx, position, stream_id, version, event_id, event_type, \
             schema_version, data, metadata, recorded_at FROM events \
             WHERE stream_id = $1 AND version >= $2 AND (transaction_id, position) <= ($3::text::xid8, $4) \
             ORDER BY version",
        )
        .bind(stream)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(up_to.transaction_id.to_string())
        .bind(up_to.position)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(with_checkpoint).collect()
    }

    /// Records, on a connection of the caller's (in the transaction that
    /// moves its checkpoint past them), that the reader called `name` holds
    /// `stream` from `version` on. An existing hold of the stream stays
    /// where it is: it is older.
    pub async fn hold_in(conn: &mut PgConnection, name: &str, stream: &str, version: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO checkpoint_holds (name, stream_id, version) VALUES ($1, $2, $3) \
             ON CONFLICT (name, stream_id) DO NOTHING",
        )
        .bind(name)
        .bind(stream)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Moves the hold of `stream` by the reader called `name` on to
    /// `version` (what it handled before it is done), or ends it (`None`).
    pub async fn move_hold_in(
        conn: &mut PgConnection,
        name: &str,
        stream: &str,
        version: Option<u64>,
    ) -> Result<()> {
        let query = match version {
            Some(version) => {
                sqlx::query("UPDATE checkpoint_holds SET version = $3 WHERE name = $1 AND stream_id = $2")
                    .bind(name)
                    .bind(stream)
                    .bind(i64::try_from(version).unwrap_or(i64::MAX))
            }
            None => sqlx::query("DELETE FROM checkpoint_holds WHERE name = $1 AND stream_id = $2")
                .bind(name)
                .bind(stream),
        };
        query.execute(conn).await?;
        Ok(())
    }

    /// The checkpoint of the reader called `name` (the start if it has none).
    pub async fn checkpoint(&self, name: &str) -> Result<Checkpoint> {
        let row = sqlx::query(
            "SELECT transaction_id::text::bigint AS tx, position FROM checkpoints WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map_or(Ok(Checkpoint::default()), |row| {
            Ok(Checkpoint {
                transaction_id: u64::try_from(row.try_get::<i64, _>("tx")?).unwrap_or_default(),
                position: row.try_get("position")?,
            })
        })
    }

    /// Records that the reader called `name` has handled everything up to
    /// `checkpoint`.
    pub async fn save_checkpoint(&self, name: &str, checkpoint: Checkpoint) -> Result<()> {
        let mut conn = self.pool.acquire().await?;
        Self::save_checkpoint_in(&mut conn, name, checkpoint).await
    }

    /// [`EventStore::save_checkpoint`] on a connection of the caller's (the
    /// relay writes it on the connection that holds its leader lock, so a
    /// relay that lost the lock cannot write). A checkpoint only moves
    /// forward: a late writer cannot take it back.
    pub async fn save_checkpoint_in(
        conn: &mut PgConnection,
        name: &str,
        checkpoint: Checkpoint,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO checkpoints (name, transaction_id, position) VALUES ($1, $2::text::xid8, $3) \
             ON CONFLICT (name) DO UPDATE SET transaction_id = EXCLUDED.transaction_id, \
             position = EXCLUDED.position \
             WHERE (checkpoints.transaction_id, checkpoints.position) \
                 < (EXCLUDED.transaction_id, EXCLUDED.position)",
        )
        .bind(name)
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.position)
        .execute(conn)
        .await?;
        Ok(())
    }

    /// Keeps `state` as the stream's snapshot at `version`, unless a newer
    /// snapshot is already stored.
    pub async fn save_snapshot(&self, stream: &str, version: u64, state: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO snapshots (stream_id, version, state) VALUES ($1, $2, $3) \
             ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, state = EXCLUDED.state, \
             taken_at = now() WHERE snapshots.version < EXCLUDED.version",
        )
        .bind(stream)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(Json(state))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The stream's latest snapshot, if any.
    pub async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>> {
        let row = sqlx::query("SELECT version, state FROM snapshots WHERE stream_id = $1")
            .bind(stream)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| -> Result<Snapshot> {
            let Json(state) = row.try_get("state")?;
            Ok(Snapshot {
                version: to_version(row.try_get("version")?),
                state,
            })
        })
        .transpose()
    }
}

/// A row of [`EventStore::read_held`]: the
/// event and its place in the committed order.
fn with_checkpoint(row: &PgRow) -> Result<(Checkpoint, RecordedEvent)> {
    let tx: i64 = row.try_get("tx")?;
    let event = recorded(row)?;
    let checkpoint = Checkpoint {
        transaction_id: u64::try_from(tx).unwrap_or_default(),
        position: event.position,
    };
    Ok((checkpoint, event))
}

fn recorded(row: &PgRow) -> Result<RecordedEvent> {
    let Json(data) = row.try_get("data")?;
    let Json(metadata): Json<EventMetadata> = row.try_get("metadata")?;
    Ok(RecordedEvent {
        position: row.try_get("position")?,
        stream_id: row.try_get("stream_id")?,
        version: to_version(row.try_get("version")?),
        event_id: row.try_get("event_id")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        data,
        metadata,
        recorded_at: row.try_get("recorded_at")?,
    })
}

/// Versions are positive in the schema (a CHECK constraint).
fn to_version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or_default()
}
