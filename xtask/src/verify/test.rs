//! `cargo xtask test`: the one test command, on a real broker and
//! PostgreSQL: those of `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL`; else
//! testcontainers' where an engine answers (unless `--local`); else the local
//! ones, started for the run, with the `test.*` topics and `test_*` databases
//! of earlier runs removed first (this run's stay, for a look).

use std::path::Path;

use anyhow::Result;

use crate::local::broker::{self, LocalBroker};
use crate::local::engine::Engine;
use crate::local::postgres::{self, LocalPostgres};

/// `local`: the local servers even when a container engine answers.
pub async fn run(root: &Path, local: bool, args: &[&str]) -> Result<()> {
    let broker = LocalBroker::new(root);
    let postgres = LocalPostgres::new(root);
    let mut started_broker = false;
    let mut started_postgres = false;

    let result = crate::unless_interrupted(async {
        let mut envs = Vec::new();
        let servers = crate::env_set("KAFKA_BOOTSTRAP_SERVERS");
        let database = crate::env_set("DATABASE_URL");
        let docker = !local && (servers.is_none() || database.is_none()) && Engine::running().await.is_some();

        if let Some(servers) = servers {
            eprintln!("xtask: testing against the broker at {servers}");
        } else if docker {
            eprintln!("xtask: testing against apache/kafka in a container (testcontainers)");
        } else {
            eprintln!("xtask: testing against the local broker");
            started_broker = broker.start().await?;
            let deleted = broker.delete_test_topics().await?;
            eprintln!("xtask: deleted {deleted} topics left by earlier runs");
            envs.push(("KAFKA_BOOTSTRAP_SERVERS", broker::BOOTSTRAP));
            envs.push(("KAFKA_SASL_BOOTSTRAP_SERVERS", broker::SASL_BOOTSTRAP));
        }
        // Not echoed: the URL may hold a password.
        if database.is_some() {
            eprintln!("xtask: testing against the PostgreSQL in DATABASE_URL");
        } else if docker {
            eprintln!("xtask: testing against postgres in a container (testcontainers)");
        } else {
            eprintln!("xtask: testing against the local PostgreSQL");
            started_postgres = postgres.start().await?;
            let dropped = postgres::drop_test_databases()?;
            eprintln!("xtask: dropped {dropped} databases left by earlier runs");
            envs.push(("DATABASE_URL", postgres::DATABASE_URL));
        }

        crate::local::demo::build_services(root, "--locked").await?;
        let mut test = vec!["test", "--locked", "--workspace"];
        test.extend(args);
        crate::cargo(root, &test, &envs).await
    })
    .await;

    // Both are stopped whatever happened, then the first failure is reported.
    let stopped_postgres = if started_postgres { postgres.stop() } else { Ok(()) };
    let stopped_broker = if started_broker { broker.stop() } else { Ok(()) };
    result.and(stopped_postgres).and(stopped_broker)
}
