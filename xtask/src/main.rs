//! `cargo xtask`: developer tasks, in Rust so they run wherever cargo does.
//!
//! ```text
//! cargo xtask kafka up       start a local Apache Kafka broker on 127.0.0.1:9092
//! cargo xtask kafka down     stop it
//! cargo xtask kafka status   is it running?
//! cargo xtask pg up          start a local PostgreSQL on 127.0.0.1:5432
//! cargo xtask pg down        stop it
//! cargo xtask pg status      is it running?
//! cargo xtask up             the whole demo without Docker: broker + PostgreSQL + three services
//! cargo xtask test [ARGS]    the test suite against a real broker and PostgreSQL (ARGS go to cargo test)
//! cargo xtask engine up       a container engine serving the Docker API (podman, where none runs)
//! cargo xtask images          build the images compose and the tests use, where no registry is reachable
//! cargo xtask compose-check   `docker compose up`, the README's curl session against it, `down -v`
//! cargo xtask offsets GROUP [TOPIC]       a consumer group's offsets and lag
//! cargo xtask reset GROUP TOPIC TO        move them (earliest, latest or a time)
//! cargo xtask dlt list TOPIC              the dead letters of TOPIC
//! cargo xtask dlt redrive TOPIC           publish them back to TOPIC
//! ```

mod broker;
mod compose;
mod demo;
mod engine;
mod images;
mod ops;
mod postgres;
mod test;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

const USAGE: &str = "\
usage: cargo xtask <task>

  kafka up       start a local Apache Kafka broker (KRaft, 127.0.0.1:9092),
                 fetched from Maven Central on first use
  kafka down     stop the local broker
  kafka status   tell whether the local broker is running
  pg up          start a local throwaway PostgreSQL (Debian's packages, 127.0.0.1:5432,
                 trust authentication), initialised under target/xtask/postgres on first use
  pg down        stop the local PostgreSQL
  pg status      tell whether the local PostgreSQL is running
  up             run the demo without Docker: local broker, local PostgreSQL,
                 payments-service, service-a and service-b; ctrl-c stops everything
  test [--local] [ARGS]
                 run the workspace tests against a real broker and PostgreSQL:
                 KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else containers
                 (testcontainers) if an engine answers and --local is not given,
                 else the local ones; ARGS are passed to `cargo test`

  engine up      make sure a container engine answers on /var/run/docker.sock: where
                 none does, install podman (apt), configure it, and serve its Docker
                 API and run its containers' health checks in the background
  engine down    stop that background service
  engine status  tell which engine answers
  images         build the images docker-compose.yml, the Dockerfile and the tests
                 name (debian, rust, apache/kafka, postgres) from Debian's packages,
                 Maven Central and this machine's Rust toolchain, for machines that
                 reach no image registry; cached
  compose-check  build the Dockerfile, run docker-compose.yml, wait until every
                 container is healthy, run the README's curl session against it,
                 then take it down with its volumes

  offsets GROUP [TOPIC]
                 a consumer group's committed offsets, partition ends, lag and
                 active members (TOPIC defaults to the notifications topic)
  reset GROUP TOPIC TO
                 move the group's offsets to TO: earliest, latest, an RFC 3339
                 time or milliseconds since the epoch; refused while the group
                 has members
  dlt list TOPIC
                 the dead letters of TOPIC (in TOPIC.dlt), with why they failed
  dlt redrive TOPIC
                 publish the dead letters not redriven before back to TOPIC

  The Kafka tasks use KAFKA_BOOTSTRAP_SERVERS (default 127.0.0.1:9092).";

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let root = workspace_root();
    match args.as_slice() {
        ["kafka", "up"] => {
            let broker = broker::LocalBroker::new(&root);
            broker.start().await?;
            eprintln!(
                "xtask: broker ready on {} (logs: {})",
                broker::BOOTSTRAP,
                broker.log_path().display()
            );
            Ok(())
        }
        ["kafka", "down"] => broker::LocalBroker::new(&root).stop(),
        ["kafka", "status"] => {
            let broker = broker::LocalBroker::new(&root);
            match broker.running_pid() {
                Some(pid) => eprintln!("xtask: broker running (pid {pid}) on {}", broker::BOOTSTRAP),
                None => eprintln!("xtask: broker not running"),
            }
            Ok(())
        }
        ["pg", "up"] => {
            let postgres = postgres::LocalPostgres::new(&root);
            postgres.start().await?;
            eprintln!(
                "xtask: PostgreSQL ready: DATABASE_URL={} (logs: {})",
                postgres::DATABASE_URL,
                postgres.log_path().display()
            );
            Ok(())
        }
        ["pg", "down"] => postgres::LocalPostgres::new(&root).stop(),
        ["pg", "status"] => {
            match postgres::LocalPostgres::new(&root).running_pid() {
                Some(pid) => eprintln!(
                    "xtask: PostgreSQL running (pid {pid}): DATABASE_URL={}",
                    postgres::DATABASE_URL
                ),
                None => eprintln!("xtask: PostgreSQL not running"),
            }
            Ok(())
        }
        ["engine", "up"] => engine::Engine::ensure(&root).await.map(|_| ()),
        ["engine", "down"] => engine::Service::new(&root).stop(),
        ["engine", "status"] => {
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
        // The background process `engine up` starts; not for people.
        ["engine", "serve"] => engine::serve().await,
        ["images"] => images::build(&root).await.map(|_| ()),
        ["compose-check"] => compose::check(&root).await,
        ["up"] => demo::run(&root).await,
        ["test", "--local", rest @ ..] => test::run(&root, true, rest).await,
        ["test", rest @ ..] => test::run(&root, false, rest).await,
        ["offsets", group] => ops::offsets(group, None).await,
        ["offsets", group, topic] => ops::offsets(group, Some(topic)).await,
        ["reset", group, topic, to] => ops::reset(group, topic, to).await,
        ["dlt", "list", topic] => ops::dlt_list(topic).await,
        ["dlt", "redrive", topic] => ops::dlt_redrive(topic).await,
        [] | ["help" | "-h" | "--help"] => {
            eprintln!("{USAGE}");
            Ok(())
        }
        _ => bail!("unknown task `{}`\n\n{USAGE}", args.join(" ")),
    }
}

/// The workspace root: xtask lives one level below it.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
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

    #[tokio::test]
    async fn sigterm_is_a_request_to_stop_like_ctrl_c() {
        let stop = interrupted().expect("listening");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), stop)
            .await
            .expect("SIGTERM heard");
    }
}
