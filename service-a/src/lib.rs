//! ServiceA: reacts to payments without ever calling Payments.
//!
//! - From the **notifications** topic it keeps an audit log of every
//!   notification, in its own PostgreSQL database, so it survives restarts
//!   (`GET /audit`, a page at a time, in commit order), kept for
//!   `RETENTION_DAYS`.
//! - From the compacted **state** topic it keeps its own copy of every payment
//!   (event-carried state transfer), served at `GET /payments/{id}` even while
//!   Payments is down.
//!
//! Notifications are read as consumer group `service-a`: instances share the
//! partitions, and a restart resumes where the group left off. The state
//! topic is read differently: the copy lives in memory, so every instance
//! reads *all* partitions from the beginning on every start, outside any
//! group, and so rebuilds its copy (the topic is compacted for exactly this).
//!
//! # Layout
//!
//! - [`config`]: settings from the environment.
//! - [`handler`]: what happens to each record, and the state it builds.
//! - [`audit`]: the audit log, in PostgreSQL (schema in `migrations/`).
//! - [`api`]: the HTTP routes and the one HTTP error type, [`api::ApiError`].

pub mod api;
pub mod audit;
pub mod config;
pub mod handler;

use std::future::Future;
use std::sync::Arc;

use rdkafka::consumer::Consumer;

use service_kit::consumer;
use service_kit::http::Readiness;
use service_kit::kafka;
use service_kit::lifecycle::task;
use service_kit::metrics::Metrics;
use service_kit::startup::Database;
use tokio::net::TcpListener;

pub use api::{AppState, app};
pub use audit::{Audit, AuditEntry};
pub use config::Config;
pub use handler::{PaymentEvents, State};
pub use service_kit::{Error, Result};

/// The service's name: its Kafka client id.
pub const SERVICE: &str = shared_events::services::SERVICE_A.name;

/// Runs ServiceA on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = config.service;
    let shutdown_timeout = config.consumer.shutdown_timeout;
    let service = config.start(SERVICE, shutdown).await?;
    let metrics = Metrics::default();
    let audit_log = Audit::connect(config.database.options().clone(), config.database_connections).await?;
    let topics = config.kafka.topics.clone();
    let state_topic =
        kafka::replica(&config.kafka, &config.consumer, SERVICE, &topics.state, &metrics).await?;
    // Ready once the copy has caught up with the state topic: before, a
    // payment that exists could be answered with a 404.
    let copy_progress = Arc::clone(state_topic.context());
    let readiness = Readiness::new(move || copy_progress.caught_up());
    let state = State::default();
    let routes = app(
        AppState {
            state: state.clone(),
            audit: audit_log.clone(),
        },
        config.callers.clone(),
    );
    let audit = PaymentEvents::new(topics.clone(), state.clone(), audit_log.clone());
    let copy = PaymentEvents::new(topics, state, audit_log.clone());
    let tasks = [
        task(
            "pruning",
            audit_log.prune_until_stopped(config.retention, service.stop()),
        ),
        task(
            "notifications",
            config.notifications(SERVICE, audit, &metrics, service.stop())?,
        ),
        task(
            "state",
            // The copy is rebuilt from the beginning on every start:
            // see `consumer::run` on replica readers and dead letters.
            consumer::run(state_topic, copy, config.consumer, None, service.stop()),
        ),
    ];
    let served = service.run(listener, routes, readiness, metrics, tasks, shutdown_timeout);
    served.await?;
    Ok(())
}
