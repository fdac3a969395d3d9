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
//! - [`error`]: the crate's error type.

pub mod api;
pub mod config;
pub mod error;
pub mod handler;
pub mod payments;
pub mod store;

use std::future::Future;

use service_kit::consumer;
use service_kit::dead_letter::DeadLetters;
use service_kit::http::{BrokerHealth, Readiness, health_router, ready_router, serve};
use service_kit::kafka::{self, Admin};
use service_kit::lifecycle::{stop_token, supervise, task};
use service_kit::metrics::{Metrics, metrics_router};
use service_kit::startup::wait_for_database;
use tokio::net::TcpListener;

pub use api::app;
pub use config::Config;
pub use error::{Error, Result};
pub use handler::Notifications;
pub use payments::PaymentsClient;
pub use store::{CallbackRecord, Records};

/// The service's name: its Kafka client id and HTTP user agent.
pub const SERVICE: &str = shared_events::services::SERVICE_B.name;

/// Runs ServiceB on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let topics = config.kafka.topics.clone();
    wait_for_database(config.database.options(), config.startup_timeout).await?;
    let records = Records::connect(config.database.options().clone(), config.database_connections).await?;
    let admin = Admin::with_topics(&config.kafka, SERVICE, config.startup_timeout).await?;
    let metrics = Metrics::default();
    let consumer = kafka::consumer(
        &config.kafka,
        &config.consumer,
        SERVICE,
        &config.group_id,
        &[&topics.notifications],
        &metrics,
    )?;
    let dead_letters = DeadLetters::new(&config.kafka, SERVICE)?;

    let payments = PaymentsClient::new(
        &config.payments_url,
        config.payments_token.clone(),
        config.callback_timeout,
    );
    let handler = Notifications::new(payments, records.clone(), config.not_found_grace);
    let stop = stop_token(shutdown);
    let pruning = records.prune_handled_until_stopped(config.retention, stop.clone());
    let shutdown_timeout = config.consumer.shutdown_timeout;
    let (broker, probe) = BrokerHealth::watch(admin, stop.clone());
    // Nothing to rebuild: ready once it serves.
    let router = app(records, config.callers.clone())
        .merge(health_router(broker))
        .merge(ready_router(Readiness::at_once()))
        .merge(metrics_router(metrics));

    supervise(
        stop.clone(),
        [
            task("broker probe", probe),
            task("pruning", pruning),
            task(
                "consumer",
                consumer::run(
                    consumer,
                    handler,
                    config.consumer,
                    Some(dead_letters),
                    stop.clone(),
                ),
            ),
            task("http", serve(listener, router, stop)),
        ],
        shutdown_timeout,
    )
    .await?;
    Ok(())
}
