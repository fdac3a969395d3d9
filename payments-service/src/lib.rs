//! Payments: accepts payments and refunds over HTTP, keeps each payment as a
//! stream of events in a PostgreSQL event store, and tells the rest of the
//! system through a transactional outbox.
//!
//! A write answers once its events are committed. The outbox relay then
//! publishes each stored event twice, one per pattern: a minimal
//! *notification* (ServiceB reacts by calling `GET /payments/{id}` back) and
//! the payment's whole *state* (ServiceA keeps its own copy). The states
//! Payments folds as it writes and publishes are kept in memory, and answer
//! ServiceB's callbacks without a database round trip.
//!
//! # Layout
//!
//! - [`config`]: settings from the environment.
//! - [`domain`]: a payment as a stream of events, and its rules (pure).
//! - [`repository`]: payments on the event store: load (snapshot + tail),
//!   create (with idempotency keys), refund (optimistic concurrency).
//! - [`latest`]: the latest state of each payment in memory, bounded, for
//!   the callbacks.
//! - [`relay`]: the outbox relay, from the event store to Kafka.
//! - [`outbox`]: what the relay has not published yet, as metrics, in
//!   `GET /ready` and in the log.
//! - [`api`]: the HTTP routes and the one HTTP error type, [`api::ApiError`].
//! - [`error`]: this crate's error type.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod latest;
pub mod outbox;
pub mod relay;
pub mod repository;

use std::future::Future;
use std::time::Duration;

use event_store::EventStore;
use service_kit::CancellationToken;
use service_kit::http::Readiness;
use service_kit::lifecycle::{Task, task};
use service_kit::metrics::Metrics;
use service_kit::service::Service;
use tokio::net::TcpListener;

pub use api::{AppState, app};
pub use config::Config;
pub use error::{Error, Result};
pub use relay::Relay;

use crate::outbox::{OutboxMetrics, OutboxStatus};
pub use repository::Payments;

/// The service's name: its Kafka client id and the `ce_source` of its events.
pub const SERVICE: &str = shared_events::services::PAYMENTS.name;

/// Runs Payments on `listener` until `shutdown` resolves.
///
/// Migrates the database, creates the topics if missing, serves HTTP and runs
/// the outbox relay (unless disabled); on shutdown lets in-flight requests
/// finish and the relay finish its batch.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service = Service::start(
        SERVICE,
        &config.database,
        &config.kafka,
        config.startup_timeout,
        shutdown,
    )
    .await?;
    let store = EventStore::connect(config.database.options().clone(), config.database_connections).await?;
    let payments = Payments::new(store.clone(), config.snapshot_every)
        .with_key_ttl(config.idempotency_key_ttl)
        .with_cache_entries(config.state_cache_entries);
    payments.migrate().await?;
    let appended = payments.appended();
    let stop = service.stop();
    let outbox_metrics = OutboxMetrics::default();
    let outbox_status = OutboxStatus::default();
    let detail = outbox_status.clone();
    // Nothing to rebuild: ready once it serves. The outbox's backlog is
    // shown, not waited on: writes are taken whatever it is.
    let readiness = Readiness::at_once().with_detail(move || detail.detail());
    let latest = payments.latest().clone();
    let metrics = Metrics::with(|registry| {
        outbox_metrics.register(registry);
        latest.register(registry);
    });
    let routes = app(
        AppState {
            payments: payments.clone(),
        },
        config.callers.clone(),
    );

    let mut tasks: Vec<Task> = vec![
        task(
            "idempotency key purge",
            purge_expired_keys(payments, stop.clone()),
        ),
        task(
            "outbox watch",
            outbox::watch(
                store.clone(),
                outbox_metrics.clone(),
                outbox_status,
                config.outbox_lag_warn,
                stop.clone(),
            ),
        ),
    ];
    if config.relay {
        let limits = relay::Limits {
            publish_timeout: config.publish_timeout,
            hold_limit: config.outbox_hold_limit,
            batch_limit: config.outbox_batch_limit,
            test_batch_pause: config.outbox_test_batch_pause,
        };
        let relay = Relay::new(
            store,
            appended,
            latest,
            config.kafka.clone(),
            limits,
            outbox_metrics,
        );
        tasks.push(task("outbox relay", relay.run(stop)));
    }
    let shutdown_timeout = config.shutdown_timeout;
    let served = service.run(listener, routes, readiness, metrics, tasks, shutdown_timeout);
    Ok(served.await?)
}

/// How often expired idempotency keys are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Deletes expired idempotency keys every [`PURGE_EVERY`] until `stop`. A
/// failure is logged and tried again next time: an expired key is never
/// honoured anyway, it only takes room.
async fn purge_expired_keys(payments: Payments, stop: CancellationToken) -> service_kit::Result<()> {
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(PURGE_EVERY) => {}
        }
        match payments.purge_expired_keys().await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "expired idempotency keys deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot delete expired idempotency keys"),
        }
    }
}
