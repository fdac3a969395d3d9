//! `cargo xtask`: developer tasks, in Rust so they run wherever cargo does.
//! `cargo xtask --help` lists them; each has its own `--help`.

mod bench;
mod broker;
mod compose;
mod contracts;
mod credentials;
mod demo;
mod engine;
mod faults;
mod flow;
mod fuzz;
mod fuzz_http;
mod images;
mod jaeger;
mod ops;
mod postgres;
mod process;
mod test;
mod tour;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Developer tasks for this workspace: local servers, the demo, the tests,
/// the container path, and operating consumer groups.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// The local Apache Kafka broker (KRaft, 127.0.0.1:9092), fetched from
    /// Maven Central on first use; or a cluster of three (`up --brokers 3`).
    Kafka {
        #[command(subcommand)]
        action: KafkaAction,
    },
    /// This checkout's bearer tokens (the operator's, ServiceB's) and what
    /// each service accepts, and the services' Kafka and PostgreSQL
    /// passwords, in .env (not in git), made unless there are some; docker
    /// compose and `cargo xtask up` read them from there.
    Credentials,
    /// The local throwaway PostgreSQL (Debian's packages, 127.0.0.1:5432,
    /// trust authentication), under target/xtask/postgres, with each
    /// service's role and database.
    Pg {
        #[command(subcommand)]
        action: Local,
    },
    /// Run the demo without Docker: the local broker and PostgreSQL, then
    /// payments-service, service-a and service-b; ctrl-c or SIGTERM stops
    /// everything.
    Up,
    /// Run the workspace tests against a real broker and PostgreSQL:
    /// KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else containers
    /// (testcontainers) if an engine answers, else the local ones.
    Test {
        /// The local broker and PostgreSQL even when a container engine answers.
        #[arg(long)]
        local: bool,
        /// Passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A container engine serving the Docker API on /var/run/docker.sock
    /// (podman, set up where none answers).
    Engine {
        #[command(subcommand)]
        action: EngineAction,
    },
    /// Build the images docker-compose.yml, the Dockerfile and the tests name
    /// (debian, rust, apache/kafka, postgres, jaegertracing/jaeger,
    /// prom/prometheus), for machines that reach no image registry; cached.
    Images,
    /// Build the Dockerfile, run docker-compose.yml, wait until every
    /// container is healthy, run the README's curl session against it, then
    /// take it down with its volumes.
    ComposeCheck {
        /// Over docker-compose.cluster.yml: three brokers, and the topics
        /// checked for three in-sync replicas.
        #[arg(long)]
        cluster: bool,
    },
    /// A consumer group's committed offsets, partition ends, lag and active
    /// members (on the broker in KAFKA_BOOTSTRAP_SERVERS).
    Offsets {
        group: String,
        /// Default: the notifications topic.
        topic: Option<String>,
    },
    /// Move a stopped group's offsets (refused while it has members).
    Reset {
        group: String,
        topic: String,
        /// earliest, latest, an RFC 3339 time or milliseconds since the epoch.
        to: String,
    },
    /// The pipeline benchmark in release builds, beside the raw ceilings of
    /// Kafka and PostgreSQL measured in the same run (pgbench, Kafka's
    /// ProducerPerformance and EndToEndLatency); writes docs/bench.
    Bench(bench::Options),
    /// Faults under a steady load of payments and refunds (broker leader
    /// killed in a three-broker cluster, the single broker stopped and
    /// killed, PostgreSQL restarted, Payments killed, one of two ServiceB
    /// instances killed or stopped, a consumer added and removed, the
    /// callback cut for 30 s, ServiceA replayed from offset 0), and a table
    /// of what survived: answered, stored, published, handled, lost,
    /// applied twice, time to recover. Fails on any loss or double.
    Faults(faults::Options),
    /// Fuzz each service's HTTP API against its OpenAPI document with
    /// schemathesis, on the demo's stack: no 5xx, every response as
    /// documented.
    FuzzHttp {
        /// Generated requests per operation.
        #[arg(long, default_value_t = 100)]
        max_examples: u32,
    },
    /// Fails when an event's committed schema changed in a way a reader of an
    /// earlier revision of it (in git) could not read, without a new version.
    ContractsCompat,
    /// Run each cargo-fuzz target (the record decoder, each HTTP API) for a
    /// bounded time with libFuzzer: fails on any crash, naming the input and
    /// how to replay it. Needs the nightly toolchain; installs cargo-fuzz.
    Fuzz(fuzz::Options),
    /// One payment and one refund through the demo's stack, traced into a
    /// local Jaeger (built from its Go module): prints the sequence diagram
    /// (mermaid) of what each hop did and how long it took, read back
    /// through Jaeger's query API.
    Flow,
    /// The design document, section by section, on the running demo: what
    /// each section claims, made to happen and checked, and the code that
    /// did it. Waits for Enter between steps in a terminal.
    Tour {
        /// Run straight through, without waiting between steps.
        #[arg(long)]
        no_pause: bool,
    },
    /// Dead letters: list them, or publish them back.
    Dlt {
        #[command(subcommand)]
        action: DltAction,
    },
}

/// What to do with a local server.
#[derive(Debug, Subcommand)]
enum Local {
    /// Start it (unless it runs) and wait until it answers.
    Up,
    /// Stop it.
    Down,
    /// Tell whether it runs.
    Status,
}

/// What to do with the local broker or cluster.
#[derive(Debug, Subcommand)]
enum KafkaAction {
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
}

#[derive(Debug, Subcommand)]
enum EngineAction {
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

#[derive(Debug, Subcommand)]
enum DltAction {
    /// The dead letters of TOPIC (in TOPIC.dlt), with why they failed.
    List { topic: String },
    /// Publish the dead letters of TOPIC not redriven before back to TOPIC.
    Redrive { topic: String },
}

#[tokio::main]
async fn main() -> Result<()> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Kafka { action } => {
            let (single, cluster) = (
                broker::LocalBroker::new(&root),
                broker::LocalBroker::cluster(&root),
            );
            // Up: then the topics, the services' users and their ACLs.
            let up = async |broker: &broker::LocalBroker| {
                local(broker, Local::Up).await?;
                credentials::provision_kafka(&root, broker).await?;
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
                        local(&cluster, Local::Down).await
                    } else {
                        local(&single, Local::Down).await
                    }
                }
                KafkaAction::Status if cluster.running_pid().is_some() => {
                    local(&cluster, Local::Status).await
                }
                KafkaAction::Status => local(&single, Local::Status).await,
            }
        }
        Task::Pg { action } => local(&postgres::LocalPostgres::new(&root), action).await,
        Task::Credentials => credentials::run(&root),
        Task::Up => demo::run(&root).await,
        Task::Test { local, args } => {
            let args = cargo_test_args(std::env::args(), args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            test::run(&root, local, &args).await
        }
        Task::Engine { action } => match action {
            EngineAction::Up => engine::Engine::ensure(&root).await.map(drop),
            EngineAction::Down => engine::Service::new(&root).stop(),
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
        },
        Task::Images => images::build(&root).await.map(drop),
        Task::ComposeCheck { cluster } => compose::check(&root, cluster).await,
        Task::Offsets { group, topic } => ops::offsets(&group, topic.as_deref()).await,
        Task::Reset { group, topic, to } => ops::reset(&group, &topic, &to).await,
        Task::Bench(options) => bench::run(&root, &options).await,
        Task::Faults(options) => faults::run(&root, &options).await,
        Task::FuzzHttp { max_examples } => fuzz_http::run(&root, max_examples).await,
        Task::Flow => flow::run(&root).await,
        Task::Tour { no_pause } => tour::run(&root, !no_pause).await,
        Task::ContractsCompat => contracts::compat(&root).await,
        Task::Fuzz(options) => fuzz::run(&root, &options).await,
        Task::Dlt { action } => match action {
            DltAction::List { topic } => ops::dlt_list(&topic).await,
            DltAction::Redrive { topic } => ops::dlt_redrive(&topic).await,
        },
    }
}

/// What `cargo xtask test` passes to `cargo test`: what clap parsed, with
/// the `--` that clap takes for the end of xtask's own options when it comes
/// first (`cargo xtask test -- --nocapture`), which `cargo test` needs to
/// hand what follows to the test binaries.
fn cargo_test_args(raw: impl IntoIterator<Item = String>, parsed: Vec<String>) -> Vec<String> {
    let raw: Vec<String> = raw.into_iter().collect();
    let after_test = raw
        .iter()
        .position(|arg| arg == "test")
        .map_or(&[][..], |i| &raw[i + 1..]);
    let first = after_test.iter().find(|arg| *arg != "--local");
    if first.is_some_and(|arg| arg == "--") && parsed.first().is_none_or(|arg| arg != "--") {
        std::iter::once("--".to_owned()).chain(parsed).collect()
    } else {
        parsed
    }
}

/// A server xtask runs on this machine for the demo and the tests.
trait LocalServer {
    /// What it is, for people.
    const NAME: &'static str;
    /// Starts it unless it runs; returns whether this call started it.
    async fn start(&self) -> Result<bool>;
    fn stop(&self) -> Result<()>;
    fn running_pid(&self) -> Option<u32>;
    /// Where clients reach it, and where it logs.
    fn describe(&self) -> String;
}

async fn local<S: LocalServer>(server: &S, action: Local) -> Result<()> {
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

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Polls `check` until it returns `Some`, failing after `patience` with
/// what it waited for.
async fn eventually<T, F, Fut>(patience: std::time::Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + patience;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if std::time::Instant::now() > deadline {
            bail!("timed out after {patience:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The value of the environment variable `name`, unless unset or blank.
fn env_set(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Runs `cargo` with `args` and extra environment `envs` in the workspace,
/// failing if it fails.
async fn cargo(root: &Path, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = tokio::process::Command::new(&cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root)
        .status()
        .await
        .with_context(|| format!("cannot run {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Runs `work`, giving up on ctrl-c or SIGTERM so that the caller's
/// clean-up (stopping what it started) still runs.
async fn unless_interrupted<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let interrupted = interrupted()?;
    tokio::select! {
        result = work => result,
        () = interrupted => bail!("interrupted"),
    }
}

/// Resolves on ctrl-c or SIGTERM: either is a request to stop cleanly.
/// Listening starts at once, before the future is first polled: a SIGTERM
/// that arrives in between is not lost (and does not kill xtask, leaving
/// what it started running).
fn interrupted() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for ctrl-c")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_follows_test_goes_to_cargo_test_as_typed() {
        let pass = |line: &str| {
            let raw: Vec<String> = line.split(' ').map(str::to_owned).collect();
            let cli = Cli::try_parse_from(&raw).expect("parses");
            let Task::Test { args, .. } = cli.task else {
                panic!("a test task");
            };
            cargo_test_args(raw, args).join(" ")
        };
        assert_eq!(pass("xtask test -- --nocapture"), "-- --nocapture");
        assert_eq!(pass("xtask test --local -- --nocapture"), "-- --nocapture");
        assert_eq!(
            pass("xtask test -p service-a -- --nocapture"),
            "-p service-a -- --nocapture"
        );
        assert_eq!(pass("xtask test e2e"), "e2e");
        assert_eq!(pass("xtask test --local"), "");
    }

    #[tokio::test]
    async fn sigterm_is_a_request_to_stop_like_ctrl_c() {
        let stop = interrupted().expect("listening");
        process::signal(std::process::id(), nix::sys::signal::Signal::SIGTERM).expect("kill");
        tokio::time::timeout(std::time::Duration::from_secs(10), stop)
            .await
            .expect("SIGTERM heard");
    }
}
