//! `cargo xtask`: developer tasks, in Rust so they run wherever cargo does.
//! `cargo xtask --help` lists them by purpose; each has its own `--help`.
//!
//! - [`local`]: what runs on this machine: the local broker and PostgreSQL,
//!   the credentials, the demo without Docker, the container engine and the
//!   images.
//! - [`study`]: the system explained on itself: the tour, one payment's flow.
//! - [`verify`]: the checks: the tests, compose-check, the faults, fuzzing,
//!   the benchmark, the contracts.
//! - [`ops`]: operating consumers: dead letters.
//!
//! This file is the command table: each command, and the one call it makes.

mod local;
mod ops;
mod study;
mod verify;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use local::{EngineAction, KafkaAction, Local, credentials, demo, images, postgres};
use study::{flow, tour};
use verify::{bench, compose, contracts, faults, fuzz, fuzz_http, test};

/// The commands by purpose, under the list clap prints (which has no
/// headings for commands).
const BY_PURPOSE: &str = "By purpose:
  local servers and the demo:  kafka, pg, credentials, up, engine, images
  study:                       tour, flow
  verification:                test, compose-check, faults, fuzz, fuzz-http, bench, contracts-compat
  operating consumers:         dlt (offsets: kafka tool kafka-consumer-groups.sh)";

/// Developer tasks for this workspace.
#[derive(Debug, Parser)]
#[command(name = "xtask", bin_name = "cargo xtask", version, about, long_about = None, after_help = BY_PURPOSE)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    // Local servers, the demo without Docker, the container engine and images.
    /// The local Apache Kafka broker (127.0.0.1:9092), or three; Kafka's tools.
    Kafka {
        #[command(subcommand)]
        action: KafkaAction,
    },
    /// The local throwaway PostgreSQL (127.0.0.1:5432), with each service's role.
    Pg {
        #[command(subcommand)]
        action: Local,
    },
    /// This checkout's tokens and passwords in .env (not in git), made where missing.
    Credentials,
    /// The demo without Docker: the local servers and the three services, until ctrl-c.
    Up,
    /// A container engine on /var/run/docker.sock (podman, where none answers).
    Engine {
        #[command(subcommand)]
        action: EngineAction,
    },
    /// Build stand-ins for the images compose and the tests name, where no registry serves them.
    Images,

    // Study: the system explained on itself.
    /// The patterns, one step each, on the running demo: claimed, made to happen, checked.
    Tour {
        /// Run straight through, without waiting between steps.
        #[arg(long)]
        no_pause: bool,
    },
    /// One payment and one refund, traced into a local Jaeger, as a mermaid sequence diagram.
    Flow,

    // Verification.
    /// The workspace tests, on KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, else containers, else the local servers.
    Test {
        /// The local broker and PostgreSQL even when a container engine answers.
        #[arg(long)]
        local: bool,
        /// Passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// docker-compose.yml up, healthy, the README's curl session, down with its volumes.
    ComposeCheck {
        /// Over docker-compose.cluster.yml: three brokers, and the topics
        /// checked for three in-sync replicas.
        #[arg(long)]
        cluster: bool,
    },
    /// Faults under a steady load, and a table of what survived; fails on any loss or double.
    Faults(faults::Options),
    /// Each cargo-fuzz target for a bounded time (nightly); fails on any crash.
    Fuzz(fuzz::Options),
    /// schemathesis against each service's OpenAPI document, on the demo's stack.
    FuzzHttp {
        /// Generated requests per operation.
        #[arg(long, default_value_t = 100)]
        max_examples: u32,
    },
    /// The pipeline benchmark beside Kafka's and PostgreSQL's raw ceilings; writes docs/bench.
    Bench(bench::Options),
    /// Fails on an event schema change an earlier reader could not read, without a new version.
    ContractsCompat,

    // Operating consumers (their offsets: Kafka's `kafka-consumer-groups.sh`).
    /// Dead letters: list them, or publish them back.
    Dlt {
        #[command(subcommand)]
        action: DltAction,
    },
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
        Task::Kafka { action } => local::kafka(&root, action).await,
        Task::Pg { action } => local::server(&postgres::LocalPostgres::new(&root), action).await,
        Task::Credentials => credentials::run(&root),
        Task::Up => demo::run(&root).await,
        Task::Engine { action } => local::engine(&root, action).await,
        Task::Images => images::build(&root).await.map(drop),

        Task::Tour { no_pause } => tour::run(&root, !no_pause).await,
        Task::Flow => flow::run(&root).await,

        Task::Test { local, args } => {
            let args = cargo_test_args(std::env::args(), args);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            test::run(&root, local, &args).await
        }
        Task::ComposeCheck { cluster } => compose::check(&root, cluster).await,
        Task::Faults(options) => faults::run(&root, &options).await,
        Task::Fuzz(options) => fuzz::run(&root, &options).await,
        Task::FuzzHttp { max_examples } => fuzz_http::run(&root, max_examples).await,
        Task::Bench(options) => bench::run(&root, &options).await,
        Task::ContractsCompat => contracts::compat(&root).await,

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
        local::process::signal(std::process::id(), nix::sys::signal::Signal::SIGTERM).expect("kill");
        tokio::time::timeout(std::time::Duration::from_secs(10), stop)
            .await
            .expect("SIGTERM heard");
    }
}
