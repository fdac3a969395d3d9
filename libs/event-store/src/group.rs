//! Group commit: the writes that arrive together share one transaction, and
//! so one commit and one WAL flush, while each keeps its own answer.
//!
//! A write is a [`Unit`]: an append ([`Append`]), or an application's whole
//! unit of work around one (Payments claims an idempotency key, then
//! appends). Callers hand their units to a [`GroupCommit`] and each awaits
//! its own outcome. No timer is involved ([`service_kit::batch`] runs the
//! groups): while no group runs, the first unit starts one at once, so a
//! lone write waits for nothing; the units submitted while a group runs
//! make the next one, up to [`MAX_UNITS`]. Groups so grow with the load by
//! themselves, and a caller is answered only once its group committed.
//!
//! # One transaction, one answer each
//!
//! The group's units run one after another on one connection, in one
//! transaction. Each unit after the first that wrote runs in a savepoint of
//! its own: should it fail (a conflict, a key used with another request,
//! any statement the database refuses), its savepoint is rolled back, which
//! undoes its writes and nothing else, and the group goes on. So a
//! conflicting append fails alone, with the same [`Error::Conflict`] it
//! would get on its own, and the others commit. The first unit needs no
//! savepoint: should it fail, the transaction holds nothing else, and is
//! rolled back whole. Nor does a unit that is one statement whose conflict
//! writes nothing and aborts nothing ([`Unit::only_append`]: an append of
//! one event): alone it runs without a transaction, as
//! [`EventStore::append`] does, and in a group the appends of one event
//! with an exact expectation run first, together, in one statement (the
//! first to each stream; a second to a stream runs after, when the first's
//! event is there to see). So a group of such appends is three round trips
//! (`BEGIN`, the statement, `COMMIT`), whatever its size. If the commit
//! itself fails, no unit of the group is written: a database that is
//! unavailable gives each caller the same failure ([`Error::Shared`]); any
//! other failure is tried again one unit at a time, so each caller still
//! gets its own outcome.
//!
//! Two units of one group may append to the same stream: the second sees
//! the first's events (it is the same transaction), and the version guard
//! lets a transaction append after its own events (see `AT_VERSION` in
//! [`crate::store`]). One that decided on the version before the first's
//! append loses, as it would against a concurrent writer: the unique index
//! refuses its version at once (the row is its own transaction's), and it
//! gets its conflict. (In a group, an `Any` append that loses a race is a
//! conflict, as in any transaction.)
//!
//! A group is one transaction for the readers of the committed order
//! ([`crate::commit_order`]): its events share one transaction id and are
//! ordered by position, the order the units ran in, as the events of one
//! append of several are.
//!
//! # Why here
//!
//! Committing concurrent appends together is what an event store under
//! load does; an application's extra writes ride along in the same unit,
//! as they would in the append's transaction. The queueing is
//! [`service_kit::batch::Batched`], the one the consumers' grouped writes
//! use; this module adds the transaction with a savepoint per unit.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;

use service_kit::batch::{Batched, GroupError, Statement};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Transaction};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::model::{ExpectedVersion, NewEvent, RecordedEvent};
use crate::store::{EventStore, Lone};

/// The most units one group takes. PostgreSQL keeps up to 64
/// subtransaction ids per session where every other session's snapshot
/// finds them; past that, snapshots look them up in `pg_subtrans`, which
/// slows the whole server. A unit takes up to two (its savepoint, and an
/// append's of several events, [`EventStore::append_in`]).
pub const MAX_UNITS: usize = 32;

/// One write of a group: what it does, on the group's transaction.
pub trait Unit: Send + Sync + 'static {
    /// The unit's outcome; a unit that is an append alone
    /// ([`Unit::only_append`]) may be answered with its stored events.
    type Output: From<Vec<RecordedEvent>> + Send + 'static;
    /// The unit's failure; a failure of the group (the database
    /// unavailable) reaches the caller through `From<Error>`.
    type Error: From<Error> + Send + 'static;

    /// Runs the unit on `conn`, inside the group's transaction (in a
    /// savepoint of its own unless it runs first or is one statement, see
    /// [`Unit::only_append`]). Run again, in a group of its own, should the
    /// group's commit fail for another reason than an unavailable database.
    fn run(&self, conn: &mut PgConnection) -> impl Future<Output = Result<Self::Output, Self::Error>> + Send;

    /// The append that is all this unit writes, if it is. An append of one
    /// event is one statement whose conflict writes nothing and leaves the
    /// transaction usable: it then runs without a savepoint, alone without
    /// a transaction, and with the group's other such appends in one
    /// statement, which saves their round trips. Should it fail otherwise
    /// (the transaction aborted), the group is run again one unit at a time.
    fn only_append(&self) -> Option<&Append> {
        None
    }
}

/// Whether `unit` is one statement: an append of one event alone.
fn one_statement<U: Unit>(unit: &U) -> bool {
    unit.only_append().is_some_and(|append| append.events.len() == 1)
}

/// One append, as [`EventStore::append`] makes it.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
}

impl Unit for Append {
    type Output = Vec<RecordedEvent>;
    type Error = Error;

    async fn run(&self, conn: &mut PgConnection) -> Result<Vec<RecordedEvent>> {
        if one_statement(self) {
            EventStore::append_on(conn, &self.stream, self.expected, &self.events).await
        } else {
            EventStore::append_in(conn, &self.stream, self.expected, &self.events).await
        }
    }

    fn only_append(&self) -> Option<&Append> {
        Some(self)
    }
}

/// Commits the `U`s submitted together in one transaction. Cheap to clone;
/// the clones share their groups.
pub struct GroupCommit<U: Unit> {
    groups: Batched<Group<U>>,
}

impl<U: Unit> GroupCommit<U> {
    /// Group commits on `store`'s connections.
    pub fn new(store: &EventStore) -> Self {
        Self {
            groups: Batched::new(Group {
                pool: store.pool().clone(),
                units: PhantomData,
            }),
        }
    }

    /// Runs `unit` in the next group, and returns its outcome once the
    /// group has committed (a failed unit's, once its savepoint is rolled
    /// back). Its statements' spans are the caller's span's children.
    /// Should the caller stop waiting, the unit may still be committed.
    pub async fn commit(&self, unit: U) -> Result<U::Output, U::Error> {
        let span = tracing::Span::current();
        self.groups.submit(Submitted { unit, span }).await?
    }

    /// How many units wait for the next group (the running one's excluded).
    pub fn waiting(&self) -> usize {
        self.groups.waiting()
    }
}

impl<U: Unit> Clone for GroupCommit<U> {
    fn clone(&self) -> Self {
        Self {
            groups: self.groups.clone(),
        }
    }
}

impl<U: Unit> fmt::Debug for GroupCommit<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommit")
            .field("groups", &self.groups)
            .finish()
    }
}

/// A unit, and the span of the request that submitted it.
struct Submitted<U> {
    unit: U,
    span: tracing::Span,
}

/// The statement [`Batched`] runs for a group of units.
struct Group<U> {
    pool: PgPool,
    units: PhantomData<fn() -> U>,
}

impl<U: Unit> Statement for Group<U> {
    type Row = Submitted<U>;
    type Answer = Result<U::Output, U::Error>;
    type Error = Error;

    const MAX_ROWS: usize = MAX_UNITS;

    async fn run(&self, units: &[Submitted<U>]) -> Result<Vec<Self::Answer>> {
        if let [Submitted { unit, span }] = units
            && one_statement(unit)
        {
            let mut conn = self.pool.acquire().await?;
            return Ok(vec![unit.run(&mut conn).instrument(span.clone()).await]);
        }
        let mut open: Option<Transaction<'static, Postgres>> = None;
        // Whether the transaction holds a unit's writes, which a later
        // unit's failure must leave in place.
        let mut holds_writes = false;
        let mut answers: Vec<Option<Self::Answer>> = units.iter().map(|_| None).collect();

        // The appends of one event, the first to each stream, go first and
        // together: one statement for all of them.
        let mut streams = HashSet::new();
        let (shared, lone): (Vec<usize>, Vec<Lone<'_>>) = units
            .iter()
            .enumerate()
            .filter_map(|(i, Submitted { unit, span })| {
                let lone = Lone::of(unit.only_append()?, span)?;
                streams.insert(lone.append.stream.as_str()).then_some((i, lone))
            })
            .unzip();
        if lone.len() > 1 {
            let tx = open.insert(self.pool.begin().await?);
            let outcomes = EventStore::append_each_on(tx, &lone).await?;
            for (i, outcome) in shared.into_iter().zip(outcomes) {
                holds_writes |= outcome.is_ok();
                answers[i] = Some(outcome.map(U::Output::from).map_err(U::Error::from));
            }
        }

        for (Submitted { unit, span }, answer) in units.iter().zip(&mut answers) {
            if answer.is_some() {
                continue;
            }
            let tx = match open.as_mut() {
                Some(tx) => tx,
                None => open.insert(self.pool.begin().await?),
            };
            let outcome = if holds_writes && one_statement(unit) {
                let outcome = unit.run(tx).instrument(span.clone()).await;
                if outcome.is_err() {
                    // Usable still, or the group is tried unit by unit.
                    sqlx::query("SELECT 1").execute(&mut **tx).await?;
                }
                outcome
            } else if holds_writes {
                let mut savepoint = tx.begin().await?;
                let outcome = unit.run(&mut savepoint).instrument(span.clone()).await;
                if outcome.is_ok() {
                    savepoint.commit().await?;
                } else {
                    savepoint.rollback().await?;
                }
                outcome
            } else {
                let outcome = unit.run(tx).instrument(span.clone()).await;
                if outcome.is_err()
                    && let Some(tx) = open.take()
                {
                    tx.rollback().await?;
                }
                outcome
            };
            holds_writes |= outcome.is_ok();
            *answer = Some(outcome);
        }
        if let Some(tx) = open {
            tx.commit().await?;
        }
        Ok(answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(Error::Unanswered.into())))
            .collect())
    }
}

impl GroupError for Error {
    fn fails_every_row(&self) -> bool {
        self.is_unavailable()
    }

    fn shared(failure: std::sync::Arc<Self>) -> Self {
        Self::Shared(failure)
    }

    fn unanswered() -> Self {
        Self::Unanswered
    }
}
