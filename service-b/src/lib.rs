//! ServiceB: reacts to the minimal `PaymentReceived` notification by calling
//! Payments back (`GET /payments/{id}`, GetPaymentInfo) and recording what it
//! got: the event-notification pattern, with its callback.
//!
//! A failed callback (Payments down, slow, or not knowing the payment yet) is
//! retried with exponential backoff; the record's offset does not move until
//! the callback succeeded or the notification went to the dead-letter topic,
//! so no notification is dropped. What it learnt is kept in its own
//! PostgreSQL database together with the ids of the notifications it
//! handled, so a notification delivered twice is recorded once. Those ids
//! are kept for `RETENTION_DAYS`, longer than a notification can come back
//! (see [`service_kit::retention`]).
//!
//! # Layout
//!
//! - [`config`]: settings from the environment.
//! - [`payments`]: the HTTP client for Payments' GetPaymentInfo.
//! - [`handler`]: what happens to each notification.
//! - [`store`]: the records and handled notifications, in PostgreSQL.
//! - [`api`]: the HTTP routes.

pub mod api;
pub mod config;
pub mod handler;
pub mod payments;
pub mod store;

use std::future::Future;

use service_kit::http::Readiness;
use service_kit::lifecycle::task;
use service_kit::metrics::Metrics;
use service_kit::startup::Database;
use tokio::net::TcpListener;

pub use api::app;
pub use config::Config;
pub use handler::Notifications;
pub use payments::{CallbackLimits, PaymentsClient};
pub use service_kit::{Error, Result};
pub use store::{CallbackRecord, Records};

/// The service's name: its Kafka client id and HTTP user agent.
pub const SERVICE: &str = shared_events::services::SERVICE_B.name;

/// Runs ServiceB on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let shared = &config.service;
    let service = shared.start(SERVICE, shutdown).await?;
    let records = Records::connect(shared.database.options().clone(), shared.database_connections).await?;
    let payments = PaymentsClient::new(
        &config.payments_url,
        config.payments_token.clone(),
        config.callback,
    );
    let handler = Notifications::new(payments, records.clone(), config.not_found_grace);
    let metrics = Metrics::default();
    let tasks = [
        task(
            "pruning",
            records.prune_handled_until_stopped(shared.retention, service.stop()),
        ),
        task(
            "consumer",
            shared.notifications(SERVICE, handler, &metrics, service.stop())?,
        ),
    ];
    // Nothing to rebuild: ready once it serves.
    let (routes, readiness) = (app(records, shared.callers.clone()), Readiness::at_once());
    let shutdown_timeout = shared.consumer.shutdown_timeout;
    let served = service.run(listener, routes, readiness, metrics, tasks, shutdown_timeout);
    served.await?;
    Ok(())
}
