//! The three real binaries as separate processes, as docker compose runs them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use integration_tests::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// `target/<profile>/`, where `cargo build --bins` (and so `cargo xtask test`)
/// puts the service binaries: the parent of this test's `deps/` directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the services first (`cargo build --bins`; `cargo xtask test` does)",
        path.display()
    );
    path
}

/// A service process with its stderr and stdout lines forwarded to a channel.
struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    fn start(name: &str, envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary(name))
            .envs(envs.iter().copied())
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (tx, name) = (tx.clone(), name.to_owned());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    eprintln!("[{name}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        Self { child, lines }
    }

    /// The address the service logged it listens on (it was given port 0).
    async fn address(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .expect("service logs its address in time")
                .expect("service is running");
            if let Some((_, rest)) = line.split_once("addr=") {
                return rest.split_whitespace().next().expect("address").to_owned();
            }
        }
    }

    /// SIGTERM, then the exit status.
    async fn terminate(self) -> std::process::ExitStatus {
        self.signal("TERM").await
    }

    /// SIGKILL: no shutdown code runs at all.
    async fn kill(self) -> std::process::ExitStatus {
        self.signal("KILL").await
    }

    async fn signal(mut self, name: &str) -> std::process::ExitStatus {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of the signal")
            .expect("exit status")
    }
}

/// The environment that points a service at this test's broker and topics.
fn kafka_env(kafka: &service_kit::config::KafkaConfig) -> [(&'static str, &str); 3] {
    [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers.as_str()),
        ("TOPIC_NOTIFICATIONS", kafka.topics.notifications.as_str()),
        ("TOPIC_STATE", kafka.topics.state.as_str()),
    ]
}

#[tokio::test]
async fn the_three_binaries_work_together_and_stop_cleanly_on_sigterm() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = reqwest::Client::new();
    let (group_a, group_b) = (unique("service-a"), unique("service-b"));
    let common = kafka_env(&kafka);

    let payments_env = [&common[..], &[("DATABASE_URL", database.url.as_str())]].concat();
    let mut payments = Process::start("payments-service", &payments_env);
    let payments_url = format!("http://{}", payments.address().await);
    let mut service_a = Process::start(
        "service-a",
        &[&common[..], &[("GROUP_ID", group_a.as_str())]].concat(),
    );
    let records = TestDatabase::empty().await;
    let service_b_env = [
        &common[..],
        &[
            ("GROUP_ID", group_b.as_str()),
            ("PAYMENTS_URL", payments_url.as_str()),
            ("DATABASE_URL", records.url.as_str()),
        ],
    ]
    .concat();
    let mut service_b = Process::start("service-b", &service_b_env);
    let a_url = format!("http://{}", service_a.address().await);
    let b_url = format!("http://{}", service_b.address().await);

    let response = http
        .post(format!("{payments_url}/payments"))
        .json(&payment_request("c-7", 4200))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let payment: serde_json::Value = response.json().await.expect("json");
    let id = payment["payment_id"].as_str().expect("id");

    eventually("service-a has the payment", || async {
        (get_json(&http, &format!("{a_url}/payments/{id}")).await? == payment).then_some(())
    })
    .await;
    eventually("service-b recorded the callback", || async {
        (get_json(&http, &format!("{b_url}/payments/{id}")).await?["payment"] == payment).then_some(())
    })
    .await;
    for url in [&payments_url, &a_url, &b_url] {
        let health = get_json(&http, &format!("{url}/health")).await.expect("healthy");
        assert_eq!(health["status"], "ok");
    }

    for (name, process) in [
        ("service-b", service_b),
        ("service-a", service_a),
        ("payments", payments),
    ] {
        let status = process.terminate().await;
        assert!(status.success(), "{name} exited with {status} after SIGTERM");
    }
}

/// Ids of the events stored in `database`, and of the notifications on the
/// topic (each notification's `ce_id` is its stored event's id).
async fn stored_and_published(
    database: &TestDatabase,
    kafka: &service_kit::config::KafkaConfig,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let stored: BTreeSet<String> = database
        .store
        .read_all(0, 100_000)
        .await
        .expect("read")
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    // Repeats (a relay killed between the broker's ack and its checkpoint
    // publishes again) count once; wait until every stored event is there.
    let published = eventually("every stored event is published", || async {
        let published: BTreeSet<String> =
            all_records(kafka, &kafka.topics.notifications, Duration::from_millis(500))
                .await
                .iter()
                .filter_map(|r| header(r, "ce_id"))
                .collect();
        stored.is_subset(&published).then_some(published)
    })
    .await;
    (stored, published)
}

#[tokio::test]
async fn events_committed_before_a_sigkill_are_published_after_the_restart() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = reqwest::Client::new();
    let env = [&kafka_env(&kafka)[..], &[("DATABASE_URL", database.url.as_str())]].concat();

    // An instance that commits but never gets to publish.
    let mut payments = Process::start(
        "payments-service",
        &[&env[..], &[("OUTBOX_RELAY", "false")]].concat(),
    );
    let url = format!("http://{}", payments.address().await);
    for i in 0..30 {
        let response = http
            .post(format!("{url}/payments"))
            .json(&payment_request("c-11", 100 + i))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        if i % 3 == 0 {
            let payment: serde_json::Value = response.json().await.expect("json");
            let id = payment["payment_id"].as_str().expect("id");
            let refund = http
                .post(format!("{url}/payments/{id}/refunds"))
                .json(&serde_json::json!({"amount": 50, "reason": "damaged"}))
                .send()
                .await
                .expect("POST refund");
            assert_eq!(refund.status(), reqwest::StatusCode::CREATED);
        }
    }
    let status = payments.kill().await;
    assert!(!status.success(), "killed: {status}");
    let nothing = all_records(&kafka, &kafka.topics.notifications, Duration::from_secs(1)).await;
    assert!(nothing.is_empty(), "nothing was published before the kill");

    let restarted = Process::start("payments-service", &env);
    let (stored, published) = stored_and_published(&database, &kafka).await;
    let missing = stored.difference(&published).count();
    eprintln!(
        "outbox after SIGKILL: {} events committed, {} published, {missing} missing",
        stored.len(),
        published.len()
    );
    assert_eq!(stored.len(), 40);
    assert_eq!(missing, 0);
    assert!(restarted.terminate().await.success());
}

#[tokio::test]
async fn a_sigkill_while_publishing_under_load_loses_nothing() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let env = [&kafka_env(&kafka)[..], &[("DATABASE_URL", database.url.as_str())]].concat();
    let mut payments = Process::start("payments-service", &env);
    let url = format!("http://{}", payments.address().await);

    // Eight clients post until the process dies under them.
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut accepted = 0;
                for i in 0..200 {
                    let sent = http
                        .post(format!("{url}/payments"))
                        .json(&payment_request("c-12", 1 + i))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => accepted += 1,
                        _ => break,
                    }
                }
                (c, accepted)
            })
        })
        .collect();
    eventually("some payments are stored", || async {
        (database.store.read_all(0, 100).await.ok()?.len() >= 100).then_some(())
    })
    .await;
    assert!(!payments.kill().await.success());
    let mut accepted = 0;
    for client in clients {
        accepted += client.await.expect("client").1;
    }

    let restarted = Process::start("payments-service", &env);
    let (stored, published) = stored_and_published(&database, &kafka).await;
    let missing = stored.difference(&published).count();
    eprintln!(
        "outbox after SIGKILL under load: {accepted} answered 201, {} events committed, {} published, {missing} missing",
        stored.len(),
        published.len()
    );
    assert!(stored.len() >= accepted, "every 201 was committed");
    assert_eq!(missing, 0);
    assert!(restarted.terminate().await.success());
}
