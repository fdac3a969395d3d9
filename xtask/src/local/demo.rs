//! `cargo xtask up`: the whole demo without Docker: the local broker and
//! PostgreSQL (unless `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` point
//! elsewhere), the three services logging in as their own users and roles,
//! their lines prefixed with their names. Ctrl-c or SIGTERM stops the
//! services cleanly, then what this command started.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::local::broker::{self, LocalBroker};
use crate::local::postgres::{self, LocalPostgres};

/// The service packages, each with a binary of the same name.
pub const SERVICES: [&str; 3] = ["payments-service", "service-a", "service-b"];
/// The port each of [`SERVICES`] listens on by default (its `HTTP_ADDR`).
pub const PORTS: [u16; 3] = [8080, 8081, 8082];
/// Where a client reaches each of them there (compose publishes the same).
pub const PAYMENTS: &str = "http://127.0.0.1:8080";
pub const SERVICE_A: &str = "http://127.0.0.1:8081";
pub const SERVICE_B: &str = "http://127.0.0.1:8082";

pub async fn run(root: &Path) -> Result<()> {
    with_stack(root, &[], None::<std::future::Ready<Result<()>>>).await
}

/// The demo's stack, as `cargo xtask up` runs it, with `env` added to each
/// service's environment; when `work` is given, it runs once every service
/// is ready, and its end (or its error) stops the stack instead of ctrl-c.
pub async fn with_stack(
    root: &Path,
    env: &[(&str, String)],
    work: Option<impl Future<Output = Result<()>>>,
) -> Result<()> {
    let broker = LocalBroker::new(root);
    let postgres = LocalPostgres::new(root);
    let mut started_broker = false;
    let mut started_postgres = false;
    // On the local broker, each service logs in as its own user.
    let mut kafka_users = None;

    let result = async {
        // Ctrl-c while starting up stops what was started; once the services
        // run, `run_services` handles it by stopping them cleanly.
        crate::unless_interrupted(async {
            match crate::env_set("KAFKA_BOOTSTRAP_SERVERS") {
                Some(servers) => eprintln!("xtask: using the broker at {servers}"),
                None => {
                    started_broker = broker.start().await?;
                    kafka_users = Some(crate::local::credentials::provision_kafka(root, &broker).await?);
                }
            }
            match crate::env_set("DATABASE_URL") {
                // Not echoed: the URL may hold a password.
                Some(_) => eprintln!("xtask: using the PostgreSQL in DATABASE_URL"),
                None => started_postgres = postgres.start().await?,
            }
            build_services(root, "--quiet").await
        })
        .await?;
        run_services(root, env, kafka_users.as_deref(), work).await
    }
    .await;

    // Both are stopped whatever happened, then the first failure is reported.
    let stopped_postgres = if started_postgres { postgres.stop() } else { Ok(()) };
    let stopped_broker = if started_broker { broker.stop() } else { Ok(()) };
    result.and(stopped_postgres).and(stopped_broker)
}

/// `cargo build <flag>` of the services' binaries.
pub async fn build_services(root: &Path, flag: &str) -> Result<()> {
    let mut build = vec!["build", flag];
    for service in SERVICES {
        build.extend(["--package", service]);
    }
    crate::cargo(root, &build, &[]).await
}

/// Runs the services; with `kafka_users`, each logs in as its own on the
/// local broker's SASL listener.
async fn run_services(
    root: &Path,
    env: &[(&str, String)],
    kafka_users: Option<&[kafka_ops::access::User]>,
    work: Option<impl Future<Output = Result<()>>>,
) -> Result<()> {
    let credentials = crate::local::credentials::ensure(root)?;
    let mut children = Vec::new();
    for service in SERVICES {
        let kafka = match kafka_users {
            Some(users) => [
                vec![("KAFKA_BOOTSTRAP_SERVERS", broker::SASL_BOOTSTRAP.to_owned())],
                crate::local::credentials::kafka_login(users, service),
            ]
            .concat(),
            None => Vec::new(),
        };
        let env = [&credentials.env_of(service)[..], &kafka, env].concat();
        children.push((service, spawn(root, service, &env)?));
    }
    // Until ctrl-c, or until any service exits on its own; meanwhile, say
    // when every service is ready (ServiceA first rebuilds its copy).
    let exited = async {
        let http = reqwest::Client::new();
        let mut ready = false;
        loop {
            for (name, child) in &mut children {
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("xtask: {name} exited ({status})");
                    return;
                }
            }
            if !ready && all_ready(&http).await {
                ready = true;
                eprintln!(
                    "xtask: demo ready: payments http://127.0.0.1:8080, service-a :8081, service-b :8082 (ctrl-c stops); \
                     reads take the operator's token: set -a; . ./.env; set +a"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // SIGTERM like ctrl-c: stop the services before exiting, never leave
    // them running.
    let interrupted = crate::interrupted()?;
    let has_work = work.is_some();
    let worked = async {
        match work {
            Some(work) => {
                let http = reqwest::Client::new();
                crate::eventually(READY_TIMEOUT, "every service to be ready", || async {
                    all_ready(&http).await.then_some(())
                })
                .await?;
                work.await
            }
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = interrupted => {
            eprintln!("xtask: stopping the demo");
            ended(has_work, "interrupted before the task ended")
        }
        // The demo ends with its services; a task cannot go on without them.
        () = exited => ended(has_work, "a service exited before the task ended"),
        outcome = worked => outcome,
    };

    for (name, child) in &mut children {
        if let Some(pid) = child.id() {
            // They may have had SIGINT from the terminal already; SIGTERM is
            // the same request to shut down cleanly.
            let _ = crate::local::process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) => eprintln!("xtask: {name} stopped ({status})"),
            _ => {
                eprintln!("xtask: {name} did not stop in time, killing it");
                let _ = child.kill().await;
            }
        }
    }
    outcome
}

/// How the demo ended early (`why`): a failure when a task was running,
/// which then did not finish; nothing wrong for the demo alone.
fn ended(has_work: bool, why: &str) -> Result<()> {
    if has_work {
        bail!("{why}");
    }
    Ok(())
}

/// How long `with_stack` waits for every service to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether every service answers `GET /ready` with 200, at its default address.
async fn all_ready(http: &reqwest::Client) -> bool {
    for port in PORTS {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/ready"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ready {
            return false;
        }
    }
    true
}

fn spawn(root: &Path, service: &'static str, env: &[(&str, String)]) -> Result<Child> {
    let mut child = Command::new(root.join("target/debug").join(service))
        .env(
            "KAFKA_BOOTSTRAP_SERVERS",
            crate::env_set("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|| broker::BOOTSTRAP.to_owned()),
        )
        .env("DATABASE_URL", database_url(root, service)?)
        // Last: what the caller gives wins over the defaults above.
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {service}"))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefix_lines(service, out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefix_lines(service, err));
    }
    Ok(child)
}

/// Each service's own database: Payments' event store in `DATABASE_URL`,
/// ServiceA's audit log and ServiceB's records in `SERVICE_A_DATABASE_URL`
/// and `SERVICE_B_DATABASE_URL`; by default, on the local server, each
/// service's own database as its own role (`payments`, `service_a`,
/// `service_b`, which `pg up` makes), with its password from `.env`.
fn database_url(root: &Path, service: &str) -> Result<String> {
    let var = match service {
        "service-a" => "SERVICE_A_DATABASE_URL",
        "service-b" => "SERVICE_B_DATABASE_URL",
        _ => "DATABASE_URL",
    };
    if let Some(url) = crate::env_set(var) {
        return Ok(url);
    }
    let role =
        service_kit::postgres_access::role_of(service).with_context(|| format!("{service} has no role"))?;
    let logins = crate::local::credentials::database_logins(root)?;
    let (_, password) = logins
        .iter()
        .find(|(name, _)| *name == role)
        .with_context(|| format!("no password for role {role}"))?;
    Ok(postgres::service_url(role, password))
}

/// Copies `stream` to stderr line by line, each line prefixed by `name`.
async fn prefix_lines(name: &'static str, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{name:>16} | {line}");
    }
}

/// A payment request's body.
pub(crate) fn payment(customer: &str, order: &str, amount: i64, currency: &str) -> Value {
    json!({"customer_id": customer, "order_id": order, "amount": amount, "currency": currency})
}

/// POSTs `body` to Payments' `path`, with `If-Match: if_match` when given.
pub(crate) async fn post(
    http: &reqwest::Client,
    path: &str,
    body: &Value,
    if_match: Option<&str>,
) -> Result<(u16, reqwest::header::HeaderMap, Value)> {
    let mut request = http.post(format!("{PAYMENTS}{path}")).json(body);
    if let Some(version) = if_match {
        request = request.header("if-match", version);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Ok((status, headers, response.json().await.unwrap_or(Value::Null)))
}

/// GETs `url`, failing unless the answer is 200 with JSON.
pub(crate) async fn get_ok(http: &reqwest::Client, url: &str) -> Result<Value> {
    let response = http.get(url).send().await?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    expect(status == 200, "200 OK", status, &body)?;
    Ok(body)
}

/// Fails, naming what was `wanted` and what came, unless `ok`.
pub(crate) fn expect(ok: bool, wanted: &str, status: u16, body: &Value) -> Result<()> {
    if !ok {
        bail!("expected {wanted}, got {status}: {body}");
    }
    Ok(())
}
