//! `cargo xtask test`: the one test command.
//!
//! The tests need a real Apache Kafka broker. In order of preference:
//!
//! 1. `KAFKA_BOOTSTRAP_SERVERS`, when set: that broker.
//! 2. A Docker engine: the tests start `apache/kafka` through testcontainers.
//! 3. Otherwise the local broker (`cargo xtask kafka up`), started for the run
//!    and stopped after it unless it was already running.
//!
//! It builds the service binaries first (one test runs them as separate
//! processes), then runs `cargo test --workspace`.

use std::path::Path;

use anyhow::Result;

use crate::broker::{self, LocalBroker};

pub async fn run(root: &Path, args: &[&str]) -> Result<()> {
    let local = LocalBroker::new(root);
    let mut started_broker = false;
    let mut envs = Vec::new();
    if let Ok(servers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS").map(|s| s.trim().to_owned())
        && !servers.is_empty()
    {
        eprintln!("xtask: testing against the broker at {servers}");
    } else if docker_available().await {
        eprintln!("xtask: testing against apache/kafka in Docker (testcontainers)");
    } else {
        eprintln!("xtask: no Docker engine; testing against the local broker");
        started_broker = local.start().await?;
        envs.push(("KAFKA_BOOTSTRAP_SERVERS", broker::BOOTSTRAP));
    }

    let result = async {
        crate::cargo(root, &["build", "--locked", "--workspace", "--bins"], &[]).await?;
        let mut test = vec!["test", "--locked", "--workspace"];
        test.extend(args);
        crate::cargo(root, &test, &envs).await
    }
    .await;

    if started_broker {
        local.stop()?;
    }
    result
}

/// Whether a Docker engine answers (the client alone is not enough).
async fn docker_available() -> bool {
    tokio::process::Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}
