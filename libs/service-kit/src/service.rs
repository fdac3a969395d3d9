//! The frame every service runs in, so that a service's `run` holds only
//! what is its own: [`Service`] starts it and serves the routes every
//! service has beside its own; [`ConsumerServiceConfig`] is what ServiceA
//! and ServiceB, which react to the notifications, share.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{Callers, HTTP_CALLERS};
use crate::config::{
    ConfigError, ConsumerConfig, DatabaseUrl, KafkaConfig, RetentionConfig, credential, database_url,
    startup_timeout, var,
};
use crate::consumer::{self, Handler};
use crate::dead_letter::DeadLetters;
use crate::error::Result;
use crate::http::{BrokerHealth, Readiness, health_router, ready_router, serve};
use crate::kafka::{self, Admin};
use crate::lifecycle::{Task, stop_token, supervise, task};
use crate::metrics::{Metrics, metrics_router};
use crate::startup::wait_for_database;

/// A service started: the admin client that probes the broker for
/// `GET /health`, and the token its tasks stop on.
#[derive(Debug)]
pub struct Service {
    stop: CancellationToken,
    admin: Admin,
}

impl Service {
    /// Waits up to `startup_timeout` for the PostgreSQL server of `database`,
    /// then as long for a broker of `kafka`, and creates the topics if
    /// missing, as client `name`; the service stops when `shutdown` resolves.
    ///
    /// # Errors
    ///
    /// What could not be reached, and how to start it ([`crate::startup`]).
    pub async fn start(
        name: &str,
        database: &DatabaseUrl,
        kafka: &KafkaConfig,
        startup_timeout: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Self> {
        wait_for_database(database.options(), startup_timeout).await?;
        let admin = Admin::with_topics(kafka, name, startup_timeout).await?;
        let stop = stop_token(shutdown);
        Ok(Self { stop, admin })
    }

    /// The token the service's tasks stop on.
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Serves `routes` on `listener` with `GET /health`, `GET /ready` (as
    /// `readiness` says) and `GET /metrics`, and runs `tasks` beside the
    /// server and the broker probe until one ends or the shutdown signal
    /// comes; then they have `shutdown_timeout` to stop.
    ///
    /// # Errors
    ///
    /// The first task's error, or [`crate::Error::ShutdownTimeout`].
    pub async fn run(
        self,
        listener: TcpListener,
        routes: Router,
        readiness: Readiness,
        metrics: Metrics,
        tasks: impl IntoIterator<Item = Task>,
        shutdown_timeout: Duration,
    ) -> Result<()> {
        let (broker, probe) = BrokerHealth::watch(self.admin, self.stop.clone());
        let router = routes
            .merge(health_router(broker))
            .merge(ready_router(readiness))
            .merge(metrics_router(metrics));
        let http = task("http", serve(listener, router, self.stop.clone()));
        let tasks = [task("broker probe", probe), http].into_iter().chain(tasks);
        supervise(self.stop, tasks, shutdown_timeout).await
    }
}

/// The settings every consumer service has, read once from the environment.
#[derive(Debug, Clone)]
pub struct ConsumerServiceConfig {
    /// `HTTP_ADDR`: where to listen. Default 127.0.0.1 on the service's port.
    pub http_addr: SocketAddr,
    /// Broker and topics (`KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_*`).
    pub kafka: KafkaConfig,
    /// Start position, retries, group timeouts (`START_FROM`, `RETRY_*`, ...).
    pub consumer: ConsumerConfig,
    /// `GROUP_ID`: the notifications' consumer group. Default: the service's name.
    pub group_id: String,
    /// `DATABASE_URL`: the service's own PostgreSQL database.
    pub database: DatabaseUrl,
    /// `DATABASE_CONNECTIONS`: connection pool size. Default 10: each of up
    /// to `CONSUMER_MAX_IN_FLIGHT` handlers runs a statement or two, and
    /// with 5 they queued for a connection (`cargo xtask bench`: ServiceB
    /// drained a backlog at 1,352/s with 5 connections, 2,032/s with 10).
    pub database_connections: u32,
    /// How long the rows kept only for a while are kept, and how they are
    /// pruned (`RETENTION_DAYS`, default 15; `PRUNE_INTERVAL_MS`,
    /// `PRUNE_BATCH`): see [`crate::retention`].
    pub retention: RetentionConfig,
    /// `STARTUP_TIMEOUT_MS`: see [`crate::config::startup_timeout`].
    pub startup_timeout: Duration,
    /// `HTTP_CALLERS`: who may read what the service serves (operators):
    /// `name:sha256-of-token` entries. Required.
    pub callers: Callers,
}

impl ConsumerServiceConfig {
    /// Reads the settings above for service `name`, by default listening on
    /// 127.0.0.1:`http_port`, its database at `database_url`.
    ///
    /// # Errors
    ///
    /// A variable set to something unusable, or `HTTP_CALLERS` not set.
    pub fn from_env(name: &str, http_port: u16, database_url_default: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: var("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], http_port)))?,
            kafka: KafkaConfig::from_env()?,
            consumer: ConsumerConfig::from_env()?,
            group_id: var("GROUP_ID", name.to_owned())?,
            database: database_url(database_url_default)?,
            database_connections: var("DATABASE_CONNECTIONS", 10)?,
            retention: RetentionConfig::from_env()?,
            startup_timeout: startup_timeout()?,
            callers: credential(HTTP_CALLERS)?,
        })
    }

    /// [`Service::start`] of service `name` with these settings.
    pub async fn start(
        &self,
        name: &str,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<Service> {
        Service::start(name, &self.database, &self.kafka, self.startup_timeout, shutdown).await
    }

    /// The task that reads the notifications as the service's consumer
    /// group, client `name`, and hands each to `handler` until `stop`
    /// ([`consumer::run`]); a record it gives up on goes to the
    /// dead-letter topic.
    ///
    /// # Errors
    ///
    /// When a Kafka client cannot be made.
    pub fn notifications<H: Handler>(
        &self,
        name: &str,
        handler: H,
        metrics: &Metrics,
        stop: CancellationToken,
    ) -> Result<impl Future<Output = Result<()>> + Send + use<H>> {
        let topics = [self.kafka.topics.notifications.as_str()];
        let consumer = kafka::consumer(
            &self.kafka,
            &self.consumer,
            name,
            &self.group_id,
            &topics,
            metrics,
        )?;
        let dead_letters = Some(DeadLetters::new(&self.kafka, name)?);
        Ok(consumer::run(
            consumer,
            handler,
            self.consumer.clone(),
            dead_letters,
            stop,
        ))
    }
}
