//! Reading a table in the order its rows were committed, so that a reader
//! that goes on from where it stopped never passes over a row.
//!
//! A number taken at insert (a `GENERATED ... AS IDENTITY` column) is not a
//! commit order: with concurrent writers, row 100 can commit a moment after
//! row 101, and a reader that has read 101 and goes on "after 101" never
//! sees 100. A table read in commit order has a column
//! `transaction_id XID8 NOT NULL DEFAULT pg_current_xact_id()`, the writing
//! transaction, and an index on `(transaction_id, <position>)`. It is read
//! ordered by writing transaction, then position, up to a [`HORIZON`]: the
//! oldest transaction that could still commit a row into this database.
//! A row that commits later belongs to such a transaction, or to one that
//! starts later, so it sorts after everything already returned. A
//! [`Checkpoint`] taken from a returned row is final.
//!
//! The price: while a transaction of this database stays open, the rows of
//! newer ones wait for it, even rows already committed. Transactions of
//! other databases on the same server do not hold the reader back.
//!
//! The event store's global order ([`crate::EventStore::read_committed`],
//! which the outbox relay follows) is read this way, and so is any other
//! table with the two columns (ServiceA's audit log), without sharing the
//! event store's tables.

use std::fmt;
use std::str::FromStr;

use sqlx::Row;
use sqlx::postgres::{PgExecutor, PgRow};

use crate::model::Checkpoint;

/// The first transaction id whose rows a reader of the committed order must
/// not pass yet, in a query with `snapshot AS (SELECT pg_current_snapshot()
/// AS s)` (the statement's own snapshot, so what it says is running is
/// exactly what the statement cannot see).
///
/// Every id below the snapshot's `xmax` that is not in its running list
/// (`xip`) has ended: its rows, if it committed, are visible to the
/// statement. Of the running ones, only those of *this* database can still
/// commit rows here: a transaction is bound to one database for its whole
/// life. A running id is passed over only when `pg_stat_activity` (or
/// `pg_prepared_xacts`) shows it in another database; one it does not show
/// (a session that ended meanwhile, one whose `backend_xid` this role may
/// not see) is waited for. Ids from `xmax` on have not ended as far as the
/// snapshot knows, whatever their database.
pub const HORIZON: &str = "LEAST(pg_snapshot_xmax(s), (SELECT min(x) FROM pg_snapshot_xip(s) AS x \
     WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.backend_xid = x::xid \
         AND a.datid <> (SELECT oid FROM pg_database WHERE datname = current_database())) \
       AND NOT EXISTS (SELECT 1 FROM pg_prepared_xacts p WHERE p.transaction = x::xid \
         AND p.database <> current_database())))";

/// A table read in commit order: its name and its position column (a
/// number taken at insert, unique). It must have the `transaction_id`
/// column described in [the module](self).
#[derive(Debug, Clone, Copy)]
pub struct CommitOrder {
    table: &'static str,
    position: &'static str,
}

impl CommitOrder {
    pub const fn new(table: &'static str, position: &'static str) -> Self {
        Self { table, position }
    }

    /// Up to `limit` rows committed after `after` (the default checkpoint
    /// for the beginning), in commit order, each with its checkpoint.
    /// `columns` are what to select of each row.
    pub async fn read<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        columns: &str,
        after: Checkpoint,
        limit: i64,
    ) -> sqlx::Result<Vec<(Checkpoint, PgRow)>> {
        let Self { table, position } = self;
        let rows = sqlx::query(&format!(
            "WITH snapshot AS (SELECT pg_current_snapshot() AS s) \
             SELECT transaction_id::text::bigint AS commit_order_tx, {position} AS commit_order_position, \
             {columns} FROM {table} \
             WHERE (transaction_id, {position}) > ($1::text::xid8, $2) \
               AND transaction_id < (SELECT {HORIZON} FROM snapshot) \
             ORDER BY transaction_id, {position} LIMIT $3"
        ))
        .bind(after.transaction_id.to_string())
        .bind(after.position)
        .bind(limit)
        .fetch_all(executor)
        .await?;
        rows.into_iter()
            .map(|row| {
                let checkpoint = Checkpoint {
                    transaction_id: u64::try_from(row.try_get::<i64, _>("commit_order_tx")?)
                        .unwrap_or_default(),
                    position: row.try_get("commit_order_position")?,
                };
                Ok((checkpoint, row))
            })
            .collect()
    }
}

/// A checkpoint as text, `<transaction id>-<position>`: a cursor a client
/// hands back to read on from there (ServiceA's `GET /audit?after=`).
impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.transaction_id, self.position)
    }
}

impl FromStr for Checkpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parsed = s.split_once('-').and_then(|(transaction_id, position)| {
            Some(Self {
                transaction_id: transaction_id.parse().ok()?,
                position: position.parse().ok().filter(|p: &i64| *p >= 0)?,
            })
        });
        parsed.ok_or_else(|| format!("`{s}` is not a cursor (`<number>-<number>`, as an entry's `cursor`)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_reads_back_from_its_text() {
        let checkpoint = Checkpoint {
            transaction_id: 812,
            position: 100,
        };
        assert_eq!(checkpoint.to_string(), "812-100");
        assert_eq!("812-100".parse(), Ok(checkpoint));
        for bad in ["", "100", "812-", "-100", "812--1", "a-1", "1-2-3", "812 -100"] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad}");
        }
    }
}
