//! ServiceA's audit log, in its own PostgreSQL database.
//!
//! Read a page at a time in commit order ([`event_store::commit_order`]):
//! entries are numbered at insert and handlers insert concurrently, so the
//! order of `seq` is not the order in which entries become visible. A page
//! ends at a [`Checkpoint`] nothing can commit before later, so a reader
//! that goes on from the last entry's `cursor` sees every entry once.
//! Entries older than `RETENTION_DAYS` are pruned
//! ([`service_kit::retention`]).

use std::future::Future;

use chrono::{DateTime, Utc};
use event_store::{Checkpoint, CommitOrder};
use serde::Serialize;
use service_kit::CancellationToken;
use service_kit::Result;
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
}

impl Audit {
    /// Records `entry` unless its notification was recorded before. Returns
    /// whether it was new.
    pub async fn record(&self, entry: &NewEntry) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO audit_entries \
                 (event_id, payment_id, kind, occurred_at, recorded_at, source, correlation_id, \
                  topic_partition, topic_offset) \
             VALUES ($1, $2, $3, $4, now(), $5, $6, $7, $8) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(Uuid::from(entry.event_id))
        .bind(Uuid::from(entry.payment_id))
        .bind(entry.kind)
        .bind(entry.occurred_at)
        .bind(&entry.source)
        .bind(entry.correlation_id)
        .bind(entry.partition)
        .bind(entry.offset)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
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
        Self { pool }
    }
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
