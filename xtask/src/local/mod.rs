//! What runs on this machine: the local Apache Kafka broker (or a cluster of
//! three) and PostgreSQL, without Docker; the credentials the demo and the
//! tests log in with; the demo itself (`cargo xtask up`); Jaeger, built from
//! its Go module; and, for the container path, the engine and the images no
//! registry serves here.

pub mod broker;
pub mod credentials;
pub mod demo;
pub mod engine;
pub mod images;
pub mod jaeger;
pub mod postgres;
pub mod process;

use std::path::Path;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

/// What to do with a local server.
#[derive(Debug, Subcommand)]
pub enum Local {
    /// Start it (unless it runs) and wait until it answers.
    Up,
    /// Stop it.
    Down,
    /// Tell whether it runs.
    Status,
}

/// What to do with the local broker or cluster.
#[derive(Debug, Subcommand)]
pub enum KafkaAction {
    /// Start it (unless it runs) and wait until it answers.
    Up {
        /// 1: one broker (127.0.0.1:9092). 3: a KRaft cluster of three
        /// brokers and controllers (127.0.0.1:9092, :9192, :9292), topics
        /// with three replicas and min.insync.replicas=2; run the services
        /// with KAFKA_BOOTSTRAP_SERVERS set to the three and
        /// KAFKA_REPLICATION_FACTOR=3.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=3))]
        brokers: u16,
    },
    /// Stop it (the single broker or the cluster, whichever runs).
    Down,
    /// Tell whether it runs.
    Status,
    /// Run one of Kafka's own tools on the broker's classpath, e.g.
    /// `kafka-consumer-groups.sh --bootstrap-server 127.0.0.1:9092 --describe --group service-b`.
    Tool {
        /// kafka-consumer-groups.sh, kafka-topics.sh, kafka-configs.sh, kafka-acls.sh, …
        script: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum EngineAction {
    /// Make sure an engine answers: where none does, install podman (apt),
    /// configure it, and serve its Docker API and run its containers'
    /// health checks in the background.
    Up,
    /// Stop that background service.
    Down,
    /// Tell which engine answers.
    Status,
    /// The background service itself, which `engine up` starts.
    #[command(hide = true)]
    Serve,
}

/// `cargo xtask kafka`.
pub async fn kafka(root: &Path, action: KafkaAction) -> Result<()> {
    let (single, cluster) = (broker::LocalBroker::new(root), broker::LocalBroker::cluster(root));
    // Up: then the topics, the services' users and their ACLs.
    let up = async |broker: &broker::LocalBroker| {
        server(broker, Local::Up).await?;
        credentials::provision_kafka(root, broker).await?;
        eprintln!(
            "xtask: the services' Kafka users (passwords in .env) log in at {}",
            broker::SASL_BOOTSTRAP
        );
        Ok(())
    };
    match action {
        KafkaAction::Up { brokers: 1 } => up(&single).await,
        KafkaAction::Up {
            brokers: broker::CLUSTER_NODES,
        } => up(&cluster).await,
        KafkaAction::Up { brokers } => {
            bail!("--brokers is 1 or {}, not {brokers}", broker::CLUSTER_NODES)
        }
        KafkaAction::Down => {
            if cluster.running_pid().is_some() {
                server(&cluster, Local::Down).await
            } else {
                server(&single, Local::Down).await
            }
        }
        KafkaAction::Tool { script, args } => {
            let status = single
                .tool(&script)?
                .args(args)
                .stdin(std::process::Stdio::inherit())
                .status()
                .with_context(|| {
                    format!("cannot run {script}; Kafka's tools here are in docker/images/kafka/bin/")
                })?;
            if !status.success() {
                bail!("{script} failed ({status})");
            }
            Ok(())
        }
        KafkaAction::Status if cluster.running_pid().is_some() => server(&cluster, Local::Status).await,
        KafkaAction::Status => server(&single, Local::Status).await,
    }
}

/// `cargo xtask engine`.
pub async fn engine(root: &Path, action: EngineAction) -> Result<()> {
    match action {
        EngineAction::Up => engine::Engine::ensure(root).await.map(drop),
        EngineAction::Down => engine::Service::new(root).stop(),
        EngineAction::Status => {
            match engine::Engine::running().await {
                Some(engine) => eprintln!(
                    "xtask: an engine answers on {} ({})",
                    engine::DOCKER_SOCKET,
                    engine.cli
                ),
                None => eprintln!("xtask: no engine answers on {}", engine::DOCKER_SOCKET),
            }
            Ok(())
        }
        EngineAction::Serve => engine::serve().await,
    }
}

/// A server xtask runs on this machine for the demo and the tests.
pub trait LocalServer {
    /// What it is, for people.
    const NAME: &'static str;
    /// Starts it unless it runs; returns whether this call started it.
    async fn start(&self) -> Result<bool>;
    fn stop(&self) -> Result<()>;
    fn running_pid(&self) -> Option<u32>;
    /// Where clients reach it, and where it logs.
    fn describe(&self) -> String;
}

/// `up`, `down` or `status` of a local server.
pub async fn server<S: LocalServer>(server: &S, action: Local) -> Result<()> {
    let name = S::NAME;
    match action {
        Local::Up => {
            server.start().await?;
            eprintln!("xtask: {name} ready: {}", server.describe());
        }
        Local::Down => server.stop()?,
        Local::Status => match server.running_pid() {
            Some(pid) => eprintln!("xtask: {name} running (pid {pid}): {}", server.describe()),
            None => eprintln!("xtask: {name} not running"),
        },
    }
    Ok(())
}
