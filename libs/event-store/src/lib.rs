//! An append-only event store on PostgreSQL.
//!
//! A *stream* is the history of one thing (a payment): events numbered 1, 2,
//! 3, ... without gaps. Every event also has a *position* in the global order
//! of all events, which is what a reader of "everything since" follows.
//!
//! Writers use optimistic concurrency: an append says which version it expects
//! the stream to be at ([`ExpectedVersion`]); if another writer got there
//! first, the append fails with [`Error::Conflict`] and writes nothing, and the
//! writer reloads and decides again.
//! The check is the unique index on (stream, version): an append is a single
//! INSERT, with no per-stream row to lock and update.
//!
//! # Layout
//!
//! - [`store`]: [`EventStore`]: append, read a stream, read everything, snapshots.
//! - [`model`]: what goes in and what comes out.
//! - [`group`]: group commit: the writes that arrive together share one
//!   transaction, each in a savepoint of its own, so one that fails fails
//!   alone.
//! - [`commit_order`]: reading a table in the order its rows committed, so a
//!   reader that goes on from a checkpoint never passes over a row (the
//!   events here; any table with a writing-transaction column).
//! - [`error`]: what can go wrong.
//! - `testing` (feature `test-util`): a database of its own for each test.
//!
//! The schema is in `migrations/`, embedded and applied by [`EventStore::migrate`].

pub mod commit_order;
pub mod error;
pub mod group;
pub mod model;
pub mod store;

#[cfg(feature = "test-util")]
pub mod testing;

pub use commit_order::CommitOrder;
pub use error::{Error, Result};
pub use group::{GroupCommit, Unit};
pub use model::{
    Backlog, Checkpoint, EventMetadata, ExpectedVersion, Hold, Holder, NewEvent, RecordedEvent, Snapshot,
};
pub use store::EventStore;
