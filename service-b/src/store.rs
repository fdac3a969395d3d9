//! ServiceB's records, in its own PostgreSQL database.
//!
//! The ids of the notifications it handled are kept for `RETENTION_DAYS`
//! and then pruned ([`service_kit::retention`], which says why that keeps a
//! notification from being handled twice). The records, one per payment,
//! are kept.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use service_kit::CancellationToken;
use service_kit::Result;
use service_kit::config::RetentionConfig;
use service_kit::retention::Expiring;
use service_kit::startup::Database;
use shared_events::{EventId, PaymentId, PaymentState};
use sqlx::migrate::Migrator;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

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
#[derive(Debug, Clone)]
pub struct Records {
    pool: PgPool,
}

impl Records {
    /// Whether the notification `event_id` was handled already.
    pub async fn handled(&self, event_id: EventId) -> Result<bool> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM processed_notifications WHERE event_id = $1")
                .bind(uuid::Uuid::from(event_id))
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Records what the callback for notification `record.notification_id`
    /// returned, and marks the notification handled, atomically.
    /// Returns `false`, changing nothing, if it was handled before.
    ///
    /// The record keeps the newest state: callbacks for two notifications of
    /// one payment can finish out of order across a rebalance.
    pub async fn record(&self, record: &CallbackRecord) -> Result<bool> {
        // One statement, so one round trip and one commit: the record is
        // written only when the notification's mark was (data-modifying CTEs
        // all run, and see each other's rows through RETURNING).
        let first: bool = sqlx::query_scalar(
            r"
WITH first AS (
    INSERT INTO processed_notifications (event_id, payment_id) VALUES ($4, $1)
    ON CONFLICT DO NOTHING
    RETURNING event_id
), recorded AS (
    INSERT INTO payment_records AS r
        (payment_id, payment, version, notification_id, fetched_at, attempts, notifications)
    SELECT $1, $2, $3, $4, $5, $6, 1 FROM first
    ON CONFLICT (payment_id) DO UPDATE SET
        notifications   = r.notifications + 1,
        payment         = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.payment ELSE r.payment END,
        notification_id = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.notification_id ELSE r.notification_id END,
        fetched_at      = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.fetched_at ELSE r.fetched_at END,
        attempts        = CASE WHEN EXCLUDED.version >= r.version THEN EXCLUDED.attempts ELSE r.attempts END,
        version         = GREATEST(EXCLUDED.version, r.version)
)
SELECT EXISTS (SELECT 1 FROM first)
",
        )
        .bind(uuid::Uuid::from(record.payment.payment_id))
        .bind(Json(&record.payment))
        .bind(i64::try_from(record.payment.version).unwrap_or(i64::MAX))
        .bind(uuid::Uuid::from(record.notification_id))
        .bind(record.fetched_at)
        .bind(i32::try_from(record.attempts).unwrap_or(i32::MAX))
        .fetch_one(&self.pool)
        .await?;
        Ok(first)
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
        Self { pool }
    }
}
