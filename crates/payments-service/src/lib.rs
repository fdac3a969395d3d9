//! Payments: accepts payments over HTTP and tells the rest of the system.
//!
//! Each accepted payment is published twice, one event per pattern:
//! a minimal `PaymentReceived` *notification* (ServiceB reacts by calling
//! `GET /payments/{id}` back) and a state-carrying `PaymentReceived` (ServiceA
//! keeps its own copy). `POST /payments` answers `201` only after the broker
//! has acknowledged both.
//!
//! # Layout
//!
//! - [`config`]: settings from the environment.
//! - [`domain`]: a payment as a stream of events, and its rules (pure).
//! - [`api`]: the HTTP routes and the one HTTP error type, [`api::ApiError`].
//! - [`publisher`]: the seam between handlers and Kafka ([`EventPublisher`]),
//!   and its Kafka implementation.
//! - [`error`]: this crate's error type.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod publisher;

use std::future::Future;

use service_kit::http::{health_router, serve};
use service_kit::kafka::{self, Admin};
use service_kit::lifecycle::{stop_token, supervise, task};
use tokio::net::TcpListener;

pub use api::{AppState, app};
pub use config::Config;
pub use error::{Error, Result};
pub use publisher::{EventPublisher, KafkaPublisher};

/// The service's name: its Kafka client id and the `ce_source` of its events.
pub const SERVICE: &str = "payments-service";

/// Runs Payments on `listener` until `shutdown` resolves.
///
/// Creates the topics if missing, serves HTTP, and on shutdown lets in-flight
/// requests finish and flushes the producer.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let admin = Admin::with_topics(&config.kafka, SERVICE).await?;

    let producer = kafka::producer(&config.kafka, SERVICE, config.publish_timeout)?;
    let publisher = KafkaPublisher::new(producer, config.kafka.topics.clone());
    let router = app(AppState::new(publisher.clone())).merge(health_router(admin));

    let stop = stop_token(shutdown);
    let served = supervise(stop.clone(), [task("http", serve(listener, router, stop))]).await;
    publisher.flush(config.publish_timeout);
    Ok(served?)
}
