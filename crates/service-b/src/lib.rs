//! ServiceB: reacts to the minimal `PaymentReceived` notification by calling
//! Payments back (`GET /payments/{id}`, GetPaymentInfo) and recording what it
//! got: the event-notification pattern, with its callback.
//!
//! A failed callback (Payments down, slow, or not knowing the payment yet) is
//! retried with exponential backoff; the record's offset does not move until
//! the callback succeeded, so no notification is dropped.
//!
//! # Layout
//!
//! - [`config`]: settings from the environment.
//! - [`payments`]: the HTTP client for Payments' GetPaymentInfo.
//! - [`handler`]: what happens to each notification, and the records it keeps.
//! - [`api`]: the HTTP routes.
//!
//! Its failures are all runtime ones ([`service_kit::Error`]): it has no
//! error type of its own.

pub mod api;
pub mod config;
pub mod handler;
pub mod payments;

use std::future::Future;

use service_kit::consumer::{self, Offsets};
use service_kit::http::{health_router, serve};
use service_kit::kafka::{self, Admin};
use service_kit::lifecycle::{stop_token, supervise, task};
use tokio::net::TcpListener;

pub use api::app;
pub use config::Config;
pub use handler::{CallbackRecord, Notifications, Records};
pub use payments::PaymentsClient;

/// The service's name: its Kafka client id and HTTP user agent.
pub const SERVICE: &str = "service-b";

/// Runs ServiceB on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> service_kit::Result<()> {
    let topics = config.kafka.topics.clone();
    let admin = Admin::with_topics(&config.kafka, SERVICE).await?;
    let consumer = kafka::consumer(&config.kafka, SERVICE, &config.group_id, &[&topics.notifications])?;

    let records = Records::default();
    let payments = PaymentsClient::new(&config.payments_url, config.callback_timeout);
    let handler = Notifications::new(payments, records.clone(), config.not_found_grace);
    let router = app(records).merge(health_router(admin));

    let stop = stop_token(shutdown);
    supervise(
        stop.clone(),
        [
            task(
                "consumer",
                consumer::run(consumer, Offsets::Commit, handler, config.retry, stop.clone()),
            ),
            task("http", serve(listener, router, stop)),
        ],
    )
    .await
}
