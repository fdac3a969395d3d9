//! Reaching what a service needs before it starts: the broker and its
//! database. Each is waited for a while (it may be starting too, as in
//! `docker compose up`), with a line logged now and then; if it does not
//! answer, the error names what could not be reached, where, and how to
//! start it.

use std::future::Future;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, Executor as _, PgPool};

use crate::config::KafkaConfig;
use crate::error::{Error, Result};
use crate::kafka::Admin;

/// How often a failed attempt is logged while waiting.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Pause between attempts.
const RETRY: Duration = Duration::from_millis(500);

/// How a service's connection pool is set up: at most `max_connections`,
/// and no ping before each use. sqlx pings every connection it hands out by
/// default, a round trip that `pg_stat_statements` does not show: one more
/// per statement on the consumers' paths. A broken connection fails its
/// query instead, which the handlers retry.
pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .test_before_acquire(false)
}

/// A store in a service's own database, on one pool: ServiceA's audit log,
/// ServiceB's records.
pub trait Database: Sized + Send {
    /// The schema, embedded at compile time.
    const MIGRATOR: Migrator;

    /// The store on `pool`.
    fn on(pool: PgPool) -> Self;

    /// Connects with up to `max_connections` connections ([`pool_options`]),
    /// each planning every statement for its parameters, and brings the
    /// schema up to date.
    ///
    /// `plan_cache_mode = force_custom_plan`: PostgreSQL plans a prepared
    /// statement's first five runs for their parameters, then may keep one
    /// generic plan for the connection's life, costed from the table's
    /// statistics of that moment. A new service's tables are first analyzed
    /// nearly empty (autovacuum, after their first 50 rows), and a generic
    /// plan made then scans the whole table, which stays cheap only while
    /// the table is small. The consumers' statements take arrays of 1 to
    /// 512 ids, whose best plan also depends on how many: ServiceB's lookup
    /// of 64 handled notifications took 25 ms on 100,000 rows instead of
    /// 0.3 ms, until the table's next `ANALYZE` (in some runs of the bench,
    /// for the whole closed loop and backlog). Their statements run once
    /// per group of records, so planning each costs little; the event
    /// store's appends, one statement each when alone, keep the cache.
    fn connect(options: PgConnectOptions, max_connections: u32) -> impl Future<Output = Result<Self>> + Send {
        async move {
            let pool = pool_options(max_connections)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("SET plan_cache_mode = force_custom_plan").await?;
                        Ok(())
                    })
                })
                .connect_with(options)
                .await?;
            Self::MIGRATOR.run(&pool).await?;
            Ok(Self::on(pool))
        }
    }

    /// The store on a pool that connects on first use, gives up waiting for
    /// a connection after a second, and migrates nothing: for tests (and the
    /// fuzz targets) of what does not get to the database.
    fn lazy(options: PgConnectOptions) -> Self {
        Self::on(
            PgPoolOptions::new()
                .acquire_timeout(Duration::from_secs(1))
                .connect_lazy_with(options),
        )
    }
}

/// Waits up to `wait` for a broker of `config` to answer.
///
/// # Errors
///
/// [`Error::BrokerUnreachable`] when none did.
pub async fn wait_for_broker(admin: &Admin, config: &KafkaConfig, wait: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut logged = tokio::time::Instant::now();
    loop {
        if admin.broker_reachable().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::BrokerUnreachable {
                servers: config.bootstrap_servers.clone(),
                waited: wait,
            });
        }
        if logged.elapsed() >= LOG_EVERY {
            tracing::warn!(servers = %config.bootstrap_servers, "waiting for the Kafka broker");
            logged = tokio::time::Instant::now();
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Waits up to `wait` for the PostgreSQL server of `options` to accept a
/// connection to its database.
///
/// # Errors
///
/// [`Error::DatabaseMissing`] at once if the server answers without that
/// database, [`Error::DatabaseRefused`] if it refuses the connection for
/// another reason (a password, say), [`Error::DatabaseUnreachable`] when it
/// did not answer in time.
pub async fn wait_for_database(options: &PgConnectOptions, wait: Duration) -> Result<()> {
    let server = format!("{}:{}", options.get_host(), options.get_port());
    let database = options.get_database().unwrap_or("postgres").to_owned();
    let deadline = tokio::time::Instant::now() + wait;
    let mut logged = tokio::time::Instant::now();
    loop {
        let attempt = tokio::time::timeout(wait, PgConnection::connect_with(options)).await;
        let reason = match attempt {
            Ok(Ok(connection)) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("3D000") => {
                return Err(Error::DatabaseMissing { server, database });
            }
            Ok(Err(sqlx::Error::Database(e))) => {
                return Err(Error::DatabaseRefused {
                    server,
                    database,
                    reason: e.message().to_owned(),
                });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::DatabaseUnreachable {
                server,
                database,
                waited: wait,
                reason,
            });
        }
        if logged.elapsed() >= LOG_EVERY {
            tracing::warn!(%server, %database, %reason, "waiting for PostgreSQL");
            logged = tokio::time::Instant::now();
        }
        tokio::time::sleep(RETRY).await;
    }
}
