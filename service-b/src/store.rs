//! ServiceB's records, in its own PostgreSQL database.
//!
//! The ids of the notifications it handled are kept for `RETENTION_DAYS`
//! and then pruned ([`service_kit::retention`], which says why that keeps a
//! notification from being handled twice). The records, one per payment,
//! are kept.

use std::collections::HashSet;
use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use service_kit::CancellationToken;
use service_kit::Result;
use service_kit::batch::{Batched, Sql};
use service_kit::config::RetentionConfig;
use service_kit::retention::Expiring;
use service_kit::startup::Database;
use shared_events::{EventId, PaymentId, PaymentState};
use sqlx::migrate::Migrator;
use sqlx::types::Json;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// The handled notifications by age, for pruning.
const HANDLED: Expiring = Expiring {
    table: "processed_notifications",
    key: "event_id",
    time: "processed_at",
};

/// What ServiceB learnt about a payment by calling Payments back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct CallbackRecord {
    /// The payment as GetPaymentInfo last returned it.
    pub payment: PaymentState,
    /// The notification that triggered that callback.
    pub notification_id: EventId,
    /// When the callback succeeded.
    pub fetched_at: DateTime<Utc>,
    /// The consumer's attempt at the notification that succeeded: 1 if the
    /// first callback and write went through (counted afresh if the
    /// notification is delivered again after a rebalance or restart).
    pub attempts: u32,
    /// How many notifications of the payment were handled (one per event).
    pub notifications: u32,
}

/// ServiceB's records by payment id, and the notifications it handled.
/// Cheap to clone.
///
/// Lookups and writes of records handled concurrently each go in one
/// statement ([`service_kit::batch`]): one round trip, and one commit, for
/// many records.
#[derive(Debug, Clone)]
pub struct Records {
    pool: PgPool,
    lookups: Batched<Sql<EventId, bool>>,
    writes: Batched<Sql<CallbackRecord, bool>>,
}

impl Records {
    /// Whether the notification `event_id` was handled already.
    pub async fn handled(&self, event_id: EventId) -> Result<bool> {
        self.lookups.submit(event_id).await
    }

    /// Records what the callback for notification `record.notification_id`
    /// returned, and marks the notification handled, atomically, once
    /// committed. Returns `false`, changing nothing, if it was handled
    /// before.
    ///
    /// The record keeps the newest state: callbacks for two notifications of
    /// one payment can finish out of order across a rebalance.
    pub async fn record(&self, record: &CallbackRecord) -> Result<bool> {
        self.writes.submit(record.clone()).await
    }

    /// Forgets up to `batch` of the notifications handled before `cutoff`,
    /// oldest first; returns how many.
    pub async fn prune_handled(&self, cutoff: DateTime<Utc>, batch: u32) -> Result<u64> {
        Ok(HANDLED.prune(&self.pool, cutoff, batch).await?)
    }

    /// Forgets handled notifications in rounds, as `config` says, until
    /// `stop`.
    pub fn prune_handled_until_stopped(
        &self,
        config: RetentionConfig,
        stop: CancellationToken,
    ) -> impl Future<Output = service_kit::Result<()>> + Send + 'static {
        HANDLED.prune_until_stopped("handled notification ids", self.pool.clone(), config, stop)
    }

    /// The record of payment `id`, if a callback for it succeeded.
    pub async fn get(&self, id: PaymentId) -> Result<Option<CallbackRecord>> {
        let row = sqlx::query(
            "SELECT payment, notification_id, fetched_at, attempts, notifications FROM payment_records WHERE payment_id = $1",
        )
        .bind(uuid::Uuid::from(id))
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let Json(payment): Json<PaymentState> = row.try_get("payment")?;
        let notification_id: uuid::Uuid = row.try_get("notification_id")?;
        let attempts: i32 = row.try_get("attempts")?;
        let notifications: i32 = row.try_get("notifications")?;
        Ok(Some(CallbackRecord {
            payment,
            notification_id: notification_id.into(),
            fetched_at: row.try_get("fetched_at")?,
            attempts: u32::try_from(attempts).unwrap_or_default(),
            notifications: u32::try_from(notifications).unwrap_or_default(),
        }))
    }
}

impl Database for Records {
    const MIGRATOR: Migrator = sqlx::migrate!("./migrations");

    fn on(pool: PgPool) -> Self {
        Self {
            lookups: Batched::new(Sql::new(pool.clone(), |pool, ids| Box::pin(handled(pool, ids)))),
            writes: Batched::new(Sql::new(pool.clone(), |pool, records| {
                Box::pin(record(pool, records))
            })),
            pool,
        }
    }
}

/// Which of a group of notifications were handled already.
async fn handled(pool: &PgPool, event_ids: &[EventId]) -> Result<Vec<bool>> {
    let ids: Vec<Uuid> = event_ids.iter().map(|&id| id.into()).collect();
    let handled: HashSet<Uuid> =
        sqlx::query_scalar("SELECT event_id FROM processed_notifications WHERE event_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
    Ok(ids.iter().map(|id| handled.contains(id)).collect())
}

/// Records a group of callbacks, each with its notification's mark, and
/// answers, for each, whether its notification was new.
async fn record(pool: &PgPool, records: &[CallbackRecord]) -> Result<Vec<bool>> {
    // One statement: a record is written only when its notification's
    // mark was (data-modifying CTEs all run, and see each other's rows
    // through RETURNING). A payment is upserted once per statement at
    // most: one payment twice in a group (which the consumer's key
    // order makes rare) fails the statement, and `Batched` writes its
    // rows one by one.
    let new: Vec<bool> = sqlx::query_scalar(
        r"
WITH input AS (
    SELECT * FROM UNNEST($1::uuid[], $2::jsonb[], $3::int8[], $4::uuid[], $5::timestamptz[], $6::int4[])
    WITH ORDINALITY AS i(payment_id, payment, version, notification_id, fetched_at, attempts, ord)
), first AS (
    INSERT INTO processed_notifications (event_id, payment_id)
    SELECT notification_id, payment_id FROM input ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING event_id
), recorded AS (
    INSERT INTO payment_records AS r
    (payment_id, payment, version, notification_id, fetched_at, attempts, notifications)
    SELECT payment_id, payment, version, notification_id, fetched_at, attempts, 1
    FROM input JOIN first ON first.event_id = input.notification_id
    ORDER BY ord
    ON CONFLICT (payment_id) DO UPDATE SET
    notifications   = r.notifications + 1,
    payment         = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.payment ELSE r.payment END,
    notification_id = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.notification_id ELSE r.notification_id END,
    fetched_at      = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.fetched_at ELSE r.fetched_at END,
    attempts        = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.attempts ELSE r.attempts END,
    version         = GREATEST(EXCLUDED.version, r.version)
)
SELECT notification_id IN (SELECT event_id FROM first) FROM input ORDER BY ord
",
    )
    .bind(records.iter().map(|r| Uuid::from(r.payment.payment_id)).collect::<Vec<_>>())
    .bind(records.iter().map(|r| Json(&r.payment)).collect::<Vec<_>>())
    .bind(
        records
            .iter()
            .map(|r| i64::try_from(r.payment.version).unwrap_or(i64::MAX))
            .collect::<Vec<_>>(),
    )
    .bind(records.iter().map(|r| Uuid::from(r.notification_id)).collect::<Vec<_>>())
    .bind(records.iter().map(|r| r.fetched_at).collect::<Vec<_>>())
    .bind(
        records
            .iter()
            .map(|r| i32::try_from(r.attempts).unwrap_or(i32::MAX))
            .collect::<Vec<_>>(),
    )
    .fetch_all(pool)
    .await?;
    Ok(new)
}
