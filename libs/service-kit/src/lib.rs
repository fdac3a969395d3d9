//! Runtime plumbing the three services share, so each service's own code is
//! only its behaviour.
//!
//! # Layout
//!
//! - [`config`]: typed configuration from the environment, with local
//!   defaults; plain values (start positions, backoff), depending on
//!   nothing else here.
//! - [`kafka`]: the one place Kafka clients are built; every non-obvious
//!   librdkafka setting is explained there. [`kafka::group`]: rebalances,
//!   start positions, lag; [`kafka::admin`]: topic creation and the broker
//!   health probe.
//! - [`consumer`]: the consumer loop: handle a record, *then* store its offset
//!   (at-least-once); retry transient failures with backoff while staying in
//!   the group; dead-letter records that can never be handled.
//! - [`batch`]: one statement, and one commit, for the rows that records
//!   handled concurrently write.
//! - [`dead_letter`]: publishing records that cannot be handled to
//!   `<topic>.dlt`. (Listing and redriving them, and a group's offsets, are
//!   for operators: the `kafka-ops` crate, which no service links.)
//! - [`metrics`]: consumer lag, retries and dead letters at `GET /metrics`.
//! - [`auth`]: the bearer tokens that let a calling service read payment
//!   data (`HTTP_CALLERS`), and the middleware that asks for them.
//! - [`http`]: serving axum with graceful shutdown, `GET /health`, and the JSON
//!   error body all services answer with.
//! - [`memory`]: an in-memory map by payment id (ServiceA's copy of payments).
//! - [`retention`]: pruning rows kept only for a while (handled ids, the
//!   audit log) in the background, a bounded batch per round.
//! - [`lifecycle`]: the shutdown signal and the supervisor that runs a
//!   service's tasks and reports how each ended.
//! - [`postgres_access`]: each service's own PostgreSQL role, owning its
//!   own database and nothing else (made by xtask, compose and the tests).
//! - [`service`]: the frame every service runs in: start-up, the routes
//!   every service serves, supervision; and the settings and consumer group
//!   of a service that reacts to the notifications.
//! - [`startup`]: waiting for the broker and the database at start, and
//!   saying what to do when they do not answer.
//! - [`telemetry`]: `tracing` setup.
//! - [`error`]: this crate's error type.

pub mod auth;
pub mod batch;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod error;
pub mod http;
pub mod kafka;
pub mod lifecycle;
pub mod memory;
pub mod metrics;
pub mod openapi;
pub mod postgres_access;
pub mod retention;
pub mod service;
pub mod startup;
pub mod telemetry;

pub use error::{Error, Result};
pub use tokio_util::sync::CancellationToken;
