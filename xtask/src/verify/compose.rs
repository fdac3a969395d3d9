//! `cargo xtask compose-check`: `docker compose up` as a new user runs it,
//! checked end to end.
//!
//! Builds the images compose needs where they are missing
//! ([`crate::local::images`]), builds the project's `Dockerfile` and runs
//! `docker-compose.yml` as they are (under a project name of its own, with
//! the observability and kafka-ui profiles, and no `.env`: as from a fresh
//! clone), waits until every container is healthy, reads the operator's
//! token from the stack as the README does, runs the README's curl session
//! against the published ports, checks what the docs say to look at in
//! Jaeger, Prometheus and the Kafka UI, and takes everything down again
//! with its volumes, failing if a container, volume or network is left.
//!
//! The Kafka UI is kafbat's image, which no registry reachable here serves
//! and `cargo xtask images` does not build: where the engine has it not and
//! cannot pull it, compose-check says so and runs without the kafka-ui
//! profile, checking the rest.
//! Any failure ends it with a non-zero exit naming the step, after the
//! containers' last log lines.
//!
//! With `--cluster`, the same over `docker-compose.cluster.yml` (three
//! brokers, without the observability profile), checking also that the
//! services' topics have three in-sync replicas.

use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use service_kit::auth::Credentials;
use tokio::process::Command;

use crate::local::demo::{PAYMENTS, SERVICE_A, expect, get_ok, payment, post};
use crate::local::engine;
use crate::local::process::printed;

/// Compose's project name: containers, network and volumes of their own.
const PROJECT: &str = "eda-compose-check";
/// How long the stack may take to become healthy (the Kafka JVM on 2 cores).
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an event may take to reach ServiceA and ServiceB.
const EVENTUAL: Duration = Duration::from_secs(60);

const JAEGER: &str = "http://127.0.0.1:16686";
const PROMETHEUS: &str = "http://127.0.0.1:9090";
const KAFKA_UI: &str = "http://127.0.0.1:8090";
/// The image of compose's `kafka-ui` service.
const KAFKA_UI_IMAGE: &str = "ghcr.io/kafbat/kafka-ui:v1.5.0";
/// ServiceB's members with one broker (`up --scale service-b=3`): one per
/// partition of the notification topic.
const SERVICE_B_MEMBERS: usize = 3;

pub async fn check(root: &Path, cluster: bool) -> Result<()> {
    crate::local::images::build(root).await?;
    engine::ensure_packages(&[("docker-compose", "docker-compose")])?;
    // As from a fresh clone: compose reads no .env (see Compose::command),
    // the stack makes its own credentials.
    let kafka_ui = !cluster && kafka_ui_image().await;
    let compose = Compose {
        root,
        cluster,
        kafka_ui,
    };

    let started = Instant::now();
    let result = async {
        step("remove what an interrupted run left", compose.down()).await?;
        step("build the Dockerfile", compose.run(&["build"])).await?;
        let scale = format!("service-b={}", if cluster { 1 } else { SERVICE_B_MEMBERS });
        step(
            "start the stack",
            compose.run(&["up", "--detach", "--scale", &scale]),
        )
        .await?;
        step("every container healthy", compose.all_healthy()).await?;
        // Published on a port the engine picks, so that ServiceB scales;
        // `docker compose port` names it, as the README's session reads it.
        let service_b = compose.service_b(1).await?;
        let credentials = step(
            "the operator's token, as the README reads it",
            compose.credentials(),
        )
        .await?;
        session(&credentials, &service_b).await?;
        if !cluster {
            step(
                "ServiceB's members share the notification partitions, each payment handled once",
                shared(&compose, &credentials),
            )
            .await?;
        }
        if cluster {
            step("every partition on three in-sync replicas", replicated(&compose)).await
        } else {
            observability(kafka_ui).await
        }
    }
    .await;
    if result.is_err() {
        let _ = compose.run(&["ps"]).await;
        let _ = compose.run(&["logs", "--no-color", "--tail=60"]).await;
    }
    let down = step("take the stack down", compose.down()).await;
    result.and(down)?;
    eprintln!(
        "xtask: compose-check passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `work`, naming it before, and in the error if it fails.
async fn step<T>(name: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    eprintln!("\nxtask: compose-check: {name}");
    let started = Instant::now();
    let value = work
        .await
        .with_context(|| format!("compose-check failed at: {name}"))?;
    eprintln!(
        "xtask: compose-check: {name}: ok ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(value)
}

struct Compose<'a> {
    root: &'a Path,
    /// Over docker-compose.cluster.yml.
    cluster: bool,
    /// With the kafka-ui profile.
    kafka_ui: bool,
}

impl Compose<'_> {
    fn command(&self) -> Command {
        let mut command = Command::new("docker-compose");
        command
            .current_dir(self.root)
            .args(["--project-name", PROJECT, "--file", "docker-compose.yml"])
            // Whatever .env this checkout has (`cargo xtask credentials`'),
            // compose reads none: the run a fresh clone gets.
            .arg("--env-file")
            .arg(self.no_env_file())
            .stdin(Stdio::null());
        if self.cluster {
            command.args(["--file", "docker-compose.cluster.yml"]);
        } else {
            command.args(["--profile", "observability"]);
        }
        if self.kafka_ui {
            command.args(["--profile", "kafka-ui"]);
        }
        command
    }

    /// An empty file, for `--env-file` (docker-compose 1.29 takes no
    /// `/dev/null`).
    fn no_env_file(&self) -> std::path::PathBuf {
        let path = self.root.join("target/xtask/compose-check.env");
        let _ = std::fs::create_dir_all(self.root.join("target/xtask"));
        let _ = std::fs::write(&path, "");
        path
    }

    async fn run(&self, args: &[&str]) -> Result<()> {
        let status = self
            .command()
            .args(args)
            .status()
            .await
            .context("cannot run docker-compose")?;
        if !status.success() {
            bail!("`docker-compose {}` failed ({status})", args.join(" "));
        }
        Ok(())
    }

    /// What `docker-compose <args>` prints.
    async fn output(&self, args: &[&str]) -> Result<String> {
        let mut command = self.command();
        command.args(args);
        crate::local::process::output(command, &format!("docker-compose {}", args.join(" "))).await
    }

    /// `http://host:port` where member `index` (from 1) of ServiceB
    /// publishes its HTTP port on the host.
    async fn service_b(&self, index: usize) -> Result<String> {
        let index = index.to_string();
        // The port ServiceB listens on in its container: the demo's third.
        let port = crate::local::demo::PORTS[2].to_string();
        let out = self
            .output(&["port", "--index", &index, "service-b", &port])
            .await?;
        Ok(format!("http://{}", out.trim()))
    }

    /// A secret of the stack's `credentials` step, read from its volume as
    /// the README reads the operator's token:
    /// `docker compose run --rm -T credentials cat /credentials/set/<VAR>`.
    async fn secret(&self, var: &str) -> Result<String> {
        let path = format!("/credentials/set/{var}");
        let value = self
            .output(&["run", "--rm", "-T", "credentials", "cat", &path])
            .await?
            .trim()
            .to_owned();
        if value.is_empty() {
            bail!("`docker-compose run credentials cat` gave no {var}");
        }
        Ok(value)
    }

    /// The stack's bearer tokens.
    async fn credentials(&self) -> Result<Credentials> {
        let token = async |var| {
            self.secret(var)
                .await?
                .parse()
                .map_err(|e| anyhow::anyhow!("{var}: {e}"))
        };
        Ok(Credentials {
            operator: token(kafka_ops::credentials::OPERATOR_TOKEN).await?,
            service_b: token(kafka_ops::credentials::SERVICE_B_TOKEN).await?,
        })
    }

    /// `down --volumes`, made sure of: a container that its restart policy
    /// was restarting at that moment survives `down`, and keeps the network
    /// and volumes in use; it is removed, then `down` runs again.
    async fn down(&self) -> Result<()> {
        let first = self.run(&["down", "--volumes", "--remove-orphans"]).await;
        let ps = ["ps", "--all", "--quiet", "--filter", &project_label()];
        let ps = printed("docker", &ps).await.context("`docker ps` failed")?;
        let left: Vec<&str> = ps.split_whitespace().collect();
        if left.is_empty() {
            first?;
            return self.nothing_left().await;
        }
        eprintln!(
            "xtask: {} container(s) outlived `down`; removing them",
            left.len()
        );
        let status = docker(&["rm", "--force", "--volumes"])
            .args(&left)
            .stdout(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("cannot remove containers {}", left.join(" "));
        }
        self.run(&["down", "--volumes", "--remove-orphans"]).await?;
        self.nothing_left().await
    }

    /// Fails if a volume or network of the project outlived `down`.
    async fn nothing_left(&self) -> Result<()> {
        for kind in ["volume", "network"] {
            let ls = [kind, "ls", "--quiet", "--filter", &project_label()];
            let left = printed("docker", &ls)
                .await
                .with_context(|| format!("`docker {kind} ls` failed"))?;
            if !left.trim().is_empty() {
                bail!(
                    "`down --volumes` left {kind}s: {}",
                    left.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
        Ok(())
    }

    /// Waits until every container of the project reports itself healthy,
    /// failing if one was restarted: the restart policy would hide a service
    /// that started before what it needs was ready, and crashed. A step that
    /// runs once (`kafka-access`, `postgres-access`: no health check) must
    /// have exited with 0.
    async fn all_healthy(&self) -> Result<()> {
        let ids: Vec<String> = self
            .output(&["ps", "--quiet"])
            .await?
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if ids.is_empty() {
            bail!("no containers are running");
        }
        let deadline = Instant::now() + HEALTHY_TIMEOUT;
        loop {
            let output = docker(&[
                "inspect",
                "--format",
                "{{.Name}} restarted {{.RestartCount}} times, {{.State.Status}} {{.State.ExitCode}} \
                 {{if .State.Health}}{{.State.Health.Status}}{{else}}no-health-check{{end}}",
            ])
            .args(&ids)
            .output()
            .await
            .context("cannot run docker inspect")?;
            let states = String::from_utf8_lossy(&output.stdout).into_owned();
            // Podman reports an empty health status where Docker has none.
            let done = |line: &&str| {
                line.ends_with(" exited 0 no-health-check") || line.trim_end().ends_with(" exited 0")
            };
            let failed = |line: &&str| {
                !line.contains(" restarted 0 times,")
                    || line.ends_with(" unhealthy")
                    || (line.contains(" exited ") && !done(line))
            };
            if let Some(failed) = states.lines().find(failed) {
                bail!("{failed}");
            }
            let not_healthy: Vec<&str> = states
                .lines()
                .filter(|line| !line.ends_with(" running 0 healthy") && !done(line))
                .collect();
            if output.status.success() && not_healthy.is_empty() {
                eprintln!("{}", states.trim_end());
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "not healthy after {HEALTHY_TIMEOUT:?}:\n{}",
                    not_healthy.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }
}

/// The README's curl session, each answer checked; its reads send the
/// operator's token, as the README's do.
async fn session(credentials: &Credentials, service_b: &str) -> Result<()> {
    let anonymous = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let http = crate::local::credentials::operator_client_with(credentials)?;

    step("pay: POST /payments", async {
        let (status, _, body) = post(&http, "/payments", &payment("c-1", "o-1", 1999, "EUR"), None).await?;
        expect(status == 201, "201 Created", status, &body)
    })
    .await?;

    let id = step("pay again, keeping the id", async {
        let (status, headers, body) =
            post(&http, "/payments", &payment("c-2", "o-2", 500, "JPY"), None).await?;
        expect(status == 201, "201 Created", status, &body)?;
        let id = body["payment_id"].as_str().context("no payment_id")?.to_owned();
        let location = headers
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default();
        expect(
            location == format!("/payments/{id}"),
            "Location: /payments/{id}",
            status,
            &json!(location),
        )?;
        Ok(id)
    })
    .await?;

    step("without a token, GET /payments/{id} is 401", async {
        let response = anonymous.get(format!("{PAYMENTS}/payments/{id}")).send().await?;
        let status = response.status().as_u16();
        expect(status == 401, "401 Unauthorized", status, &json!(null))
    })
    .await?;

    step("Payments: GET /payments/{id} (GetPaymentInfo)", async {
        let body = get_ok(&http, &format!("{PAYMENTS}/payments/{id}")).await?;
        expect(
            body["amount"] == 500 && body["currency"] == "JPY",
            "the payment",
            200,
            &body,
        )
    })
    .await?;

    step(
        "ServiceA: the notification in GET /audit",
        until(&http, format!("{SERVICE_A}/audit"), |body| {
            body.to_string().contains(&id)
        }),
    )
    .await?;
    step(
        "ServiceA: its copy, from the state topic",
        until(&http, format!("{SERVICE_A}/payments/{id}"), |body| {
            body["amount"] == 500
        }),
    )
    .await?;
    step(
        "ServiceB: what its callback to Payments returned",
        until(&http, format!("{service_b}/payments/{id}"), |body| {
            body["payment"]["amount"] == 500
        }),
    )
    .await?;

    step("GET /health and /metrics of every service", async {
        for service in [PAYMENTS, SERVICE_A, service_b] {
            let health = get_ok(&http, &format!("{service}/health")).await?;
            expect(health["status"] == "ok", "status ok", 200, &health)?;
            let response = http.get(format!("{service}/metrics")).send().await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            expect(
                status == 200 && text.contains("# TYPE"),
                "Prometheus text",
                status,
                &json!(text),
            )?;
        }
        Ok(())
    })
    .await?;

    step("refund 200 of it, deciding on version 1", async {
        let refund = json!({"amount": 200, "reason": "damaged"});
        let (status, headers, body) =
            post(&http, &format!("/payments/{id}/refunds"), &refund, Some("\"1\"")).await?;
        expect(status == 201, "201 Created", status, &body)?;
        let etag = headers
            .get("etag")
            .and_then(|e| e.to_str().ok())
            .unwrap_or_default();
        expect(
            etag == "\"2\"" && body["refunded"] == 200,
            "ETag \"2\", refunded 200",
            status,
            &body,
        )
    })
    .await?;

    step("Payments: the payment's event stream", async {
        let body = get_ok(&http, &format!("{PAYMENTS}/payments/{id}/events")).await?;
        let count = body
            .as_array()
            .or_else(|| body["events"].as_array())
            .map_or(0, Vec::len);
        expect(count == 2, "two events: received, refunded", 200, &body)
    })
    .await?;

    step(
        "ServiceA: its copy refunded 200, version 2",
        until(&http, format!("{SERVICE_A}/payments/{id}"), |body| {
            body["refunded"] == 200 && body["version"] == 2
        }),
    )
    .await?;
    step(
        "ServiceB: the refund recorded",
        until(&http, format!("{service_b}/payments/{id}"), |body| {
            body["payment"]["refunded"] == 200 && body["notifications"] == 2
        }),
    )
    .await?;

    step("bad input is refused with a reason", async {
        let (status, _, body) = post(&http, "/payments", &payment("c-1", "o-1", 0, "EURO"), None).await?;
        let details = body["details"].to_string();
        expect(
            status == 422 && details.contains("amount") && details.contains("currency"),
            "422 naming amount and currency",
            status,
            &body,
        )
    })
    .await
}

/// Polls `url` until its JSON answer satisfies `ok`: what an event changes
/// downstream shows there within [`EVENTUAL`].
async fn until(http: &reqwest::Client, url: String, ok: impl Fn(&Value) -> bool) -> Result<()> {
    crate::eventually(EVENTUAL, &format!("GET {url} to show it"), || async {
        ok(&get_ok(http, &url).await.ok()?).then_some(())
    })
    .await
}

/// ServiceB's members, as the broker assigns them (Kafka's
/// `kafka-consumer-groups --describe --members --verbose`, in the broker's
/// container): the notification partitions shared, none twice; and the
/// notifications of the session handled once in all (their metrics).
async fn shared(compose: &Compose<'_>, credentials: &Credentials) -> Result<()> {
    let topic = shared_events::Topics::default().notifications;
    let describe = "exec -T kafka /opt/kafka/bin/kafka-consumer-groups.sh --bootstrap-server 127.0.0.1:19092 \
                    --describe --group service-b --members --verbose";
    let describe: Vec<&str> = describe.split_whitespace().collect();
    let members = crate::eventually(EVENTUAL, "three members with a partition each", || async {
        let table = compose.output(&describe).await.ok()?;
        let members: Vec<(String, Vec<i32>)> = table
            .lines()
            .filter_map(|line| {
                // `<topic>:0,1`, first in CURRENT-ASSIGNMENT.
                let prefix = format!("{topic}:");
                let list = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix(&prefix))?;
                let partitions = list.split(',').filter_map(|p| p.parse().ok());
                Some((line.split_whitespace().nth(2)?.to_owned(), partitions.collect()))
            })
            .collect();
        let mut all: Vec<i32> = members.iter().flat_map(|(_, p)| p.clone()).collect();
        all.sort();
        (members.len() == SERVICE_B_MEMBERS && all == [0, 1, 2]).then_some(members)
    })
    .await?;
    for (host, partitions) in &members {
        eprintln!("xtask: service-b member at {host}: {topic} partitions {partitions:?}");
    }
    let http = crate::local::credentials::operator_client_with(credentials)?;
    let mut handled = 0.0;
    for index in 1..=SERVICE_B_MEMBERS {
        let metrics = http
            .get(format!("{}/metrics", compose.service_b(index).await?))
            .send()
            .await?
            .text()
            .await?;
        let member: f64 = metrics
            .lines()
            .filter(|line| line.starts_with("consumer_records_handled_total{") && line.contains(&topic))
            .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
            // Not `sum()`: an empty sum of floats is -0, which would print so.
            .fold(0.0, |all, n| all + n);
        eprintln!("xtask: service-b member {index}: {member} notifications handled");
        handled += member;
    }
    // The session's: two payments and a refund.
    if handled != 3.0 {
        bail!("ServiceB's members handled {handled} notifications in all, not 3");
    }
    Ok(())
}

/// The cluster's topics: every partition of the services' topics on three
/// replicas, all in sync (asked through the host's listener, 127.0.0.1:9094,
/// as the operator).
async fn replicated(compose: &Compose<'_>) -> Result<()> {
    use rdkafka::producer::Producer;
    let operator = service_kit::config::KafkaUser {
        name: shared_events::services::OPERATOR.to_owned(),
        password: service_kit::config::Secret::new(compose.secret("OPERATOR_KAFKA_PASSWORD").await?),
    };
    let config = service_kit::config::KafkaConfig {
        bootstrap_servers: "127.0.0.1:9094".to_owned(),
        user: Some(operator),
        ..service_kit::config::KafkaConfig::local()
    };
    let probe: rdkafka::producer::BaseProducer =
        service_kit::kafka::client_config(&config, "compose-check").create()?;
    let metadata = probe.client().fetch_metadata(None, Duration::from_secs(10))?;
    if metadata.brokers().len() != 3 {
        bail!(
            "{} brokers in the cluster's metadata, not 3",
            metadata.brokers().len()
        );
    }
    let topics = shared_events::Topics::default();
    for name in [&topics.notifications, &topics.state] {
        let topic = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name.as_str())
            .with_context(|| format!("no topic {name}"))?;
        for partition in topic.partitions() {
            let (replicas, isr) = (partition.replicas().len(), partition.isr().len());
            if replicas != 3 || isr != 3 {
                bail!("{name}/{}: {replicas} replicas, {isr} in sync", partition.id());
            }
        }
        eprintln!(
            "xtask: {name}: {} partitions, each on 3 replicas, 3 in sync",
            topic.partitions().len()
        );
    }
    Ok(())
}

/// `docker <args>`, reading nothing from the terminal.
fn docker(args: &[&str]) -> Command {
    let mut command = Command::new("docker");
    command.args(args).stdin(Stdio::null());
    command
}

/// The filter of what compose made for [`PROJECT`].
fn project_label() -> String {
    format!("label=com.docker.compose.project={PROJECT}")
}

/// Whether the engine has the Kafka UI's image, or can pull it; if not, says
/// that its service is left out.
async fn kafka_ui_image() -> bool {
    if printed("docker", &["image", "inspect", KAFKA_UI_IMAGE])
        .await
        .is_some()
        || printed("docker", &["pull", "--quiet", KAFKA_UI_IMAGE])
            .await
            .is_some()
    {
        return true;
    }
    eprintln!(
        "xtask: compose-check: the Kafka UI's image {KAFKA_UI_IMAGE} is not available here (no registry \
         this machine reaches serves it, and `cargo xtask images` does not build it): the kafka-ui \
         service is left out; the rest of the stack is checked"
    );
    false
}

/// What the README says to look at with the observability profile, and the
/// Kafka UI when it runs.
async fn observability(kafka_ui: bool) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    step("Jaeger: a payment's trace spans the three services", async {
        // The services export every 5 s (the batch processor's delay).
        let found = crate::eventually(EVENTUAL, "a trace with spans of all three services", || async {
            let traces = crate::local::jaeger::traces(&http, JAEGER, "service-b", 50)
                .await
                .ok()?;
            traces.into_iter().find_map(|trace| {
                let services: std::collections::BTreeSet<String> =
                    trace.iter().map(|span| span.service.clone()).collect();
                (services.len() == 3).then(|| {
                    format!(
                        "trace {}: {} spans across {services:?}",
                        trace[0].trace_id,
                        trace.len()
                    )
                })
            })
        })
        .await?;
        eprintln!("xtask: {found}, through {JAEGER}/api/traces");
        Ok(())
    })
    .await?;

    step("Prometheus: every service scraped", async {
        crate::eventually(EVENTUAL, "the three services up", || async {
            let up = get_ok(&http, &format!("{PROMETHEUS}/api/v1/query?query=up"))
                .await
                .ok()?;
            let up_jobs: Vec<&str> = up["data"]["result"]
                .as_array()?
                .iter()
                .filter(|series| series["value"][1] == "1")
                .filter_map(|series| series["metric"]["job"].as_str())
                .collect();
            ["payments-service", "service-a", "service-b"]
                .iter()
                .all(|job| up_jobs.contains(job))
                .then_some(())
        })
        .await
    })
    .await?;

    if !kafka_ui {
        return Ok(());
    }
    step(
        "Kafka UI: the cluster online, its topics and the services' groups",
        async {
            let clusters = get_ok(&http, &format!("{KAFKA_UI}/api/clusters")).await?;
            expect(
                clusters[0]["status"] == "online",
                "the cluster online",
                200,
                &clusters,
            )?;
            let cluster = clusters[0]["name"].as_str().context("a cluster without a name")?;
            let topics = get_ok(
                &http,
                &format!("{KAFKA_UI}/api/clusters/{cluster}/topics?perPage=100"),
            )
            .await?;
            let groups = get_ok(
                &http,
                &format!("{KAFKA_UI}/api/clusters/{cluster}/consumer-groups/paged?perPage=100"),
            )
            .await?;
            let shown = format!("{topics}{groups}");
            for name in [
                "payments.notifications",
                "payments.state",
                "payments.notifications.dlt",
                "service-a",
                "service-b",
            ] {
                if !shown.contains(name) {
                    bail!("the Kafka UI does not show {name}");
                }
            }
            Ok(())
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use kafka_ops::credentials::Set;
    use service_kit::config::KafkaConfig;
    use shared_events::services::{OPERATOR, SERVICES};

    #[test]
    fn compose_runs_the_kafka_ui_compose_check_looks_for() {
        let compose =
            std::fs::read_to_string(crate::workspace_root().join("docker-compose.yml")).expect("compose");
        assert!(compose.contains(&format!("image: {}", super::KAFKA_UI_IMAGE)));
    }

    /// Service `name`'s block of docker-compose.yml: its lines up to the
    /// next service's, or the file's next top-level key.
    fn block(compose: &str, name: &str) -> String {
        let mut lines = compose.lines().skip_while(|line| *line != format!("  {name}:"));
        let header = lines.next().unwrap_or_else(|| panic!("no service {name}"));
        let body = lines.take_while(|line| {
            let indent = line.len() - line.trim_start().len();
            line.trim().is_empty() || line.trim_start().starts_with('#') || indent > 2
        });
        std::iter::once(header)
            .chain(body)
            .map(|line| format!("{line}\n"))
            .collect()
    }

    #[test]
    fn compose_names_the_users_roles_and_files_the_rust_code_does() {
        let compose =
            std::fs::read_to_string(crate::workspace_root().join("docker-compose.yml")).expect("compose");
        for service in SERVICES {
            let block = block(&compose, service.name);
            let block = block.as_str();
            assert!(
                block.contains(&format!("KAFKA_SASL_USERNAME: {}\n", service.kafka_user)),
                "{}'s Kafka user must be {}:\n{block}",
                service.name,
                service.kafka_user
            );
            let role = service.database_role;
            assert!(
                block.contains(&format!("DATABASE_URL: postgres://{role}@postgres:5432/{role}\n")),
                "{}'s role and database must be {role}:\n{block}",
                service.name
            );
        }
        // The operator is a super user wherever a broker is configured.
        for file in [
            "docker-compose.yml",
            "docker-compose.cluster.yml",
            "libs/testkit/src/lib.rs",
        ] {
            let text = std::fs::read_to_string(crate::workspace_root().join(file)).expect(file);
            assert!(
                text.contains(&format!("User:ANONYMOUS;User:{OPERATOR}")),
                "{file}"
            );
        }
        // Each reader's files on a volume the `credentials` step writes.
        let (set, _) = Set::complete(|_| None).expect("a set");
        let steps = block(&compose, "credentials");
        for (reader, file, _) in set.files(&KafkaConfig::local()).expect("files") {
            assert!(
                steps.contains(&format!(":/credentials/{reader}\n")),
                "the credentials step must write {reader}'s {file}:\n{steps}"
            );
        }
    }
}
