//! ServiceA's audit log, in its own PostgreSQL database.
//!
//! Read a page at a time in commit order ([`event_store::commit_order`]):
//! entries are numbered at insert and handlers insert concurrently, so the
//! order of `seq` is not the order in which entries become visible. A page
//! ends at a [`Checkpoint`] nothing can commit before later, so a reader
//! that goes on from the last entry's `cursor` sees every entry once.
//! Entries older than `RETENTION_DAYS` are pruned
//! ([`service_kit::retention`]).

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Utc};
use event_store::{Checkpoint, CommitOrder};
use serde::Serialize;
use service_kit::CancellationToken;
use service_kit::Result;
use service_kit::batch::{Batched, Sql};
use service_kit::config::RetentionConfig;
use service_kit::retention::Expiring;
use service_kit::startup::Database;
use shared_events::{EventId, PaymentId};
use sqlx::migrate::Migrator;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The log in commit order: by writing transaction, then `seq`.
const COMMIT_ORDER: CommitOrder = CommitOrder::new("audit_entries", "seq");
/// The log by age, for pruning.
const EXPIRING: Expiring = Expiring {
    table: "audit_entries",
    key: "seq",
    time: "recorded_at",
};
const COLUMNS: &str = "seq, event_id, payment_id, kind, occurred_at, recorded_at, source, correlation_id, \
     topic_partition, topic_offset";

/// One notification, as recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    /// Its place in the log: `GET /audit?after=` this cursor reads on from
    /// the entry. Opaque; it orders entries as they were committed.
    pub cursor: String,
    /// The entry's number, taken when it was inserted: unique, but entries
    /// can commit (and so appear) out of `seq` order.
    pub seq: i64,
    pub event_id: EventId,
    pub payment_id: PaymentId,
    /// `received` or `refunded`.
    pub kind: String,
    /// When it happened (from the event).
    pub occurred_at: DateTime<Utc>,
    /// When ServiceA recorded the notification.
    pub recorded_at: DateTime<Utc>,
    pub source: String,
    pub correlation_id: Uuid,
    pub partition: i32,
    pub offset: i64,
}

/// A notification to record (the log gives it its `seq`).
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub event_id: EventId,
    pub payment_id: PaymentId,
    pub kind: &'static str,
    pub occurred_at: DateTime<Utc>,
    pub source: String,
    pub correlation_id: Uuid,
    pub partition: i32,
    pub offset: i64,
}

/// The audit log. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Audit {
    pool: PgPool,
    inserts: Batched<Sql<NewEntry, bool>>,
}

impl Audit {
    /// Records `entry` unless its notification was recorded before. Returns
    /// whether it was new, once the entry is committed: with the entries
    /// other records submitted meanwhile, in one statement
    /// ([`service_kit::batch`]).
    pub async fn record(&self, entry: &NewEntry) -> Result<bool> {
        self.inserts.submit(entry.clone()).await
    }

    /// Up to `limit` entries committed after the entry whose cursor is
    /// `after` (from the start when `None`), in commit order. Entries of
    /// transactions still running are held back, and with them every newer
    /// one (see [`event_store::commit_order`]).
    pub async fn page(&self, after: Option<Checkpoint>, limit: usize) -> Result<Vec<AuditEntry>> {
        let rows = COMMIT_ORDER
            .read(
                &self.pool,
                COLUMNS,
                after.unwrap_or_default(),
                i64::try_from(limit).unwrap_or(i64::MAX),
            )
            .await?;
        rows.iter().map(|(cursor, row)| entry(*cursor, row)).collect()
    }

    /// Deletes up to `batch` of the entries recorded before `cutoff`, oldest
    /// first; returns how many.
    pub async fn prune(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<u64> {
        Ok(EXPIRING.prune(&self.pool, cutoff, batch).await?)
    }

    /// Prunes the log in rounds, as `config` says, until `stop`.
    pub fn prune_until_stopped(
        &self,
        config: RetentionConfig,
        stop: CancellationToken,
    ) -> impl Future<Output = service_kit::Result<()>> + Send + 'static {
        EXPIRING.prune_until_stopped("audit log", self.pool.clone(), config, stop)
    }
}

impl Database for Audit {
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations");

    fn on(pool: PgPool) -> Self {
        Self {
            inserts: Batched::new(Sql::new(pool.clone(), |pool, entries| {
                Box::pin(insert(pool, entries))
            })),
            pool,
        }
    }
}

/// Inserts a group of entries, each unless its notification was recorded
/// before; answers, for each, whether it was new.
async fn insert(pool: &PgPool, entries: &[NewEntry]) -> Result<Vec<bool>> {
    let column = |f: fn(&NewEntry) -> Uuid| entries.iter().map(f).collect::<Vec<_>>();
    // In the order submitted, so `seq` follows it.
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO audit_entries \
             (event_id, payment_id, kind, occurred_at, recorded_at, source, correlation_id, \
              topic_partition, topic_offset) \
         SELECT event_id, payment_id, kind, occurred_at, now(), source, correlation_id, \
                topic_partition, topic_offset \
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::text[], \
                     $6::uuid[], $7::int4[], $8::int8[]) \
              WITH ORDINALITY AS e(event_id, payment_id, kind, occurred_at, source, \
                                   correlation_id, topic_partition, topic_offset, ord) \
         ORDER BY ord \
         ON CONFLICT (event_id) DO NOTHING \
         RETURNING event_id",
    )
    .bind(column(|e| e.event_id.into()))
    .bind(column(|e| e.payment_id.into()))
    .bind(entries.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.occurred_at).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.source.as_str()).collect::<Vec<_>>())
    .bind(column(|e| e.correlation_id))
    .bind(entries.iter().map(|e| e.partition).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.offset).collect::<Vec<_>>())
    .fetch_all(pool)
    .await?;
    // A notification submitted twice in one group was inserted once:
    // only its first submission is told it was new.
    let mut inserted: HashSet<Uuid> = inserted.into_iter().collect();
    Ok(entries
        .iter()
        .map(|e| inserted.remove(&Uuid::from(e.event_id)))
        .collect())
}

fn entry(cursor: Checkpoint, row: &PgRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        cursor: cursor.to_string(),
        seq: row.try_get("seq")?,
        event_id: EventId::from(row.try_get::<Uuid, _>("event_id")?),
        payment_id: PaymentId::from(row.try_get::<Uuid, _>("payment_id")?),
        kind: row.try_get("kind")?,
        occurred_at: row.try_get("occurred_at")?,
        recorded_at: row.try_get("recorded_at")?,
        source: row.try_get("source")?,
        correlation_id: row.try_get("correlation_id")?,
        partition: row.try_get("topic_partition")?,
        offset: row.try_get("topic_offset")?,
    })
}
