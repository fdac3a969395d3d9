//! Pruning what a service keeps only for a while, so its database does not
//! grow for ever: ServiceB's handled notification ids, ServiceA's audit log.
//!
//! A background task ([`prune_until_stopped`]) deletes the rows older than
//! `RETENTION_DAYS` ([`RetentionConfig`]), oldest first, at most
//! `PRUNE_BATCH` rows per round: each round is one short statement, so it
//! never holds many locks or a long transaction. A full round is followed by
//! the next at once (a backlog drains); otherwise the next waits
//! `PRUNE_INTERVAL_MS`.
//!
//! # What pruning a handled id gives up
//!
//! A handled id is what makes a notification delivered again a no-op. Once
//! it is pruned, the same notification would be handled a second time, so
//! the retention must outlast every way a handled notification can come
//! back:
//!
//! - From the notifications topic (a redelivery, a group's offsets reset to
//!   the earliest): a record stays there at most `retention.ms` (7 days)
//!   after the newest record of its segment, and a segment takes records
//!   for at most `segment.ms` (the broker's default, 7 days): 14 days after
//!   it was published, and it was handled after that. The default, 15
//!   days, outlasts it.
//! - From the dead-letter topic (kept 30 days), by a redrive: only a
//!   notification that was never handled goes there (its handling failed),
//!   so its id is not in the table to prune. The exception is a handling
//!   whose write committed but whose answer was lost, then retried until
//!   dead-lettered: redriven after the retention, it is handled again.
//!
//! A longer `RETENTION_DAYS` (or a shorter `segment.ms` on the topic)
//! widens the margin; a shorter one than the topic keeps records narrows it
//! below what the topic can deliver.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::config::RetentionConfig;
use crate::error::Result;

/// A table whose rows are kept for a while: `key` identifies a row, `time`
/// (`timestamptz`, indexed) says when it was written.
#[derive(Debug, Clone, Copy)]
pub struct Expiring {
    pub table: &'static str,
    pub key: &'static str,
    pub time: &'static str,
}

impl Expiring {
    /// Deletes up to `batch` of the rows written before `cutoff`, oldest
    /// first, in one statement. Returns how many it deleted.
    pub async fn prune(&self, pool: &PgPool, cutoff: DateTime<Utc>, batch: u32) -> sqlx::Result<u64> {
        let Self { table, key, time } = self;
        let deleted = sqlx::query(&format!(
            "DELETE FROM {table} WHERE {key} IN \
                 (SELECT {key} FROM {table} WHERE {time} < $1 ORDER BY {time} LIMIT $2)"
        ))
        .bind(cutoff)
        .bind(i64::from(batch))
        .execute(pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// [`prune_until_stopped`] of these rows in `pool`: what a service runs
    /// for each table it keeps for a while.
    pub async fn prune_until_stopped(
        self,
        what: &'static str,
        pool: PgPool,
        config: RetentionConfig,
        stop: CancellationToken,
    ) -> Result<()> {
        prune_until_stopped(what, config, stop, |cutoff, batch| {
            let pool = pool.clone();
            async move { self.prune(&pool, cutoff, batch).await }
        })
        .await
    }
}

/// Runs rounds of `prune` until `stop` is cancelled. A round is
/// `prune(cutoff, batch)`: delete up to `batch` rows older than `cutoff`
/// (now less the retention) and say how many. A failed round (the database
/// is down) is logged and tried again after the interval.
pub async fn prune_until_stopped<F, Fut, E>(
    what: &'static str,
    config: RetentionConfig,
    stop: CancellationToken,
    mut prune: F,
) -> Result<()>
where
    F: FnMut(DateTime<Utc>, u32) -> Fut + Send,
    Fut: Future<Output = Result<u64, E>> + Send,
    E: std::fmt::Display,
{
    loop {
        let cutoff = Utc::now() - config.keep;
        let pause = match prune(cutoff, config.batch).await {
            Ok(deleted) if deleted >= u64::from(config.batch) => {
                tracing::info!(what, deleted, %cutoff, "pruned a full batch; more to go");
                Duration::ZERO
            }
            Ok(deleted) => {
                if deleted > 0 {
                    tracing::info!(what, deleted, %cutoff, "pruned");
                }
                config.interval
            }
            Err(e) => {
                tracing::warn!(what, error = %e, "cannot prune; trying again next round");
                config.interval
            }
        };
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
    }
}
