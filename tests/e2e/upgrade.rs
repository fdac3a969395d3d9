//! A rolling upgrade, with the real binaries of both releases: from the
//! previous release (with its credentials and Kafka logins, as deployed) to
//! this one, consumers first, then Payments, without stopping the flow of
//! payments and refunds, and without losing or repeating any.
//!
//! 1. Old Payments, old ServiceA, old ServiceB. A new ServiceA and a new
//!    ServiceB join the old ones' groups (old and new share the partitions
//!    and each service's database), and are seen owning partitions; then the
//!    old ones leave.
//! 2. A new Payments joins the old one on the same event store: both take
//!    payments, each refunds the other's, and whichever relay leads
//!    publishes both.
//! 3. The old Payments leaves; the new relay takes over.
//!
//! Every payment answered 201 ends up recorded by ServiceB exactly once per
//! event at its last version, audited by ServiceA once per notification and
//! copied at its last version, and nothing is dead-lettered.
//!
//! The previous release is [`PREVIOUS_RELEASE`]: the commit its tag names,
//! built from this repository's history. When a release lands (CI passed on
//! main), it is tagged `release-N` and this constant moves to it, so that
//! the upgrade tested is always the one users make next.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use integration_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::processes::{Process, kafka_env};

/// The release upgraded from: its tag, and the commit the tag names (the
/// commit is what is built, so that a clone without tags builds it too).
/// `release-18`: one Kafka user per service (SASL/SCRAM), HTTP callers by
/// token, `PaymentReceived` v2.
const PREVIOUS_RELEASE: (&str, &str) = ("release-18", "913723aadad8512eafc3eadc7971ab5ebe400773");

/// The previous release's binary `name`, built on first use under
/// `target/previous-release/<commit>/` (a build of its own: about 5 minutes
/// the first time on 2 cores, then nothing).
fn previous_release(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (tag, commit) = PREVIOUS_RELEASE;
        let root = workspace.join("target/previous-release").join(commit);
        let src = root.join("src");
        if !src.join("Cargo.toml").exists() {
            // Unpacked beside, then renamed: an interrupted unpack is never
            // taken for a whole one.
            let partial = root.join("src.partial");
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir_all(&partial).expect("create the source directory");
            let status = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "git -C '{}' archive --format=tar {commit} | tar -x -C '{}'",
                    workspace.display(),
                    partial.display()
                ))
                .status()
                .expect("run git archive");
            assert!(
                status.success(),
                "cannot unpack the previous release {tag} ({commit}) from git (a clone with its history is needed)"
            );
            std::fs::rename(&partial, &src).expect("move the unpacked source in place");
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        eprintln!("building the previous release's binaries ({tag}, {commit}), once");
        let status = std::process::Command::new(&cargo)
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", root.join("target"))
            .args([
                "build",
                "--locked",
                "--bins",
                "-p",
                "payments-service",
                "-p",
                "service-a",
                "-p",
                "service-b",
            ])
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
        assert!(status.success(), "building the previous release failed ({status})");
        root.join("target/debug")
    });
    dir.join(name)
}

/// A TCP forwarder whose target can be switched: the load balancer in front
/// of Payments that an upgrade moves from the old instance to the new.
struct Switch {
    url: String,
    target: Arc<Mutex<SocketAddr>>,
}

impl Switch {
    async fn to(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let target = Arc::new(Mutex::new(target));
        let current = Arc::clone(&target);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *current.lock().expect("lock");
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { url, target }
    }

    fn switch(&self, target: SocketAddr) {
        *self.target.lock().expect("lock") = target;
    }
}

/// Pays through `url`; the payment's id.
async fn pay(http: &reqwest::Client, url: &str, body: &Value) -> String {
    let response = http
        .post(format!("{url}/payments"))
        .json(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{url}: {:?}",
        response.text().await
    );
    let payment: Value = response.json().await.expect("json");
    payment["payment_id"].as_str().expect("payment_id").to_owned()
}

/// Refunds 100 of payment `id` through `url`.
async fn refund(http: &reqwest::Client, url: &str, id: &str) {
    let response = http
        .post(format!("{url}/payments/{id}/refunds"))
        .json(&json!({"amount": 100, "reason": "upgrade"}))
        .send()
        .await
        .expect("POST refund");
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "{url}: {:?}",
        response.text().await
    );
}

/// Waits until ServiceB (at `url`) recorded each payment at its version.
async fn all_recorded(http: &reqwest::Client, url: &str, versions: &[(String, u64)]) {
    for (id, version) in versions {
        eventually(
            &format!("service-b recorded {id} at version {version}"),
            || async {
                let record = get_json(http, format!("{url}/payments/{id}")).await?;
                (record["payment"]["version"].as_u64()? == *version).then_some(())
            },
        )
        .await;
    }
}

/// `service`'s `HTTP_CALLERS` as the previous release reads it: `name:digest`
/// entries (rights per caller came later; without them a caller reads).
fn previous_callers(service: &str) -> String {
    integration_tests::credentials()
        .callers_of(service)
        .to_env()
        .split(',')
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            format!("{}:{}", parts[0], parts[parts.len() - 1])
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `env` with `HTTP_CALLERS` set to `callers` (the variables given last win).
fn with_callers<'a>(env: &[(&'a str, &'a str)], callers: &'a str) -> Vec<(&'a str, &'a str)> {
    [env, &[("HTTP_CALLERS", callers)]].concat()
}

/// Waits until the service at `url` owns partitions of its group.
async fn owns_partitions(http: &reqwest::Client, name: &str, url: &str) {
    eventually(&format!("{name} owns partitions"), || async {
        let owned = metric_sum_at(
            http,
            &format!("{url}/metrics"),
            "kafka_consumer_assigned_partitions",
            "",
        )
        .await?;
        (owned > 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_rolling_upgrade_from_the_previous_release_loses_and_repeats_nothing() {
    let (old_payments_bin, old_service_a_bin, old_service_b_bin) = tokio::task::spawn_blocking(|| {
        (
            previous_release("payments-service"),
            previous_release("service-a"),
            previous_release("service-b"),
        )
    })
    .await
    .expect("build the previous release");
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let store = TestDatabase::empty().await;
    let records = TestDatabase::empty().await;
    let audit = TestDatabase::empty().await;
    let http = integration_tests::http_client();
    let (group_a, group_b) = (unique("service-a"), unique("service-b"));
    let common = kafka_env(&kafka);
    let payments_env = [&common[..], &[("DATABASE_URL", store.url.as_str())]].concat();
    let previous_payments_callers = previous_callers("payments-service");
    let previous_operator_callers = previous_callers("service-a");
    // version[id]: the version each payment is at, as Payments answered.
    let mut versions: Vec<(String, u64)> = Vec::new();

    // 1. The previous release, then ServiceA and ServiceB upgraded under load.
    let mut old_payments = Process::start_binary(
        &old_payments_bin,
        "old payments",
        &with_callers(&payments_env, &previous_payments_callers),
    );
    let old_url = format!("http://{}", old_payments.address().await);
    let balancer = Switch::to(old_url.trim_start_matches("http://").parse().expect("address")).await;
    let service_b_env = [
        &common[..],
        &[
            ("GROUP_ID", group_b.as_str()),
            ("PAYMENTS_URL", balancer.url.as_str()),
            ("DATABASE_URL", records.url.as_str()),
        ],
    ]
    .concat();
    let service_a_env = [
        &common[..],
        &[
            ("GROUP_ID", group_a.as_str()),
            ("DATABASE_URL", audit.url.as_str()),
        ],
    ]
    .concat();
    // Started under another name than the service's: its credentials are
    // given here, not looked up by that name.
    let old_service_b_env = [
        &with_callers(&service_b_env, &previous_operator_callers)[..],
        &[(
            "PAYMENTS_TOKEN",
            integration_tests::credentials().service_b.expose(),
        )],
    ]
    .concat();
    let mut old_service_b = Process::start_binary(&old_service_b_bin, "old service-b", &old_service_b_env);
    let mut old_service_a = Process::start_binary(
        &old_service_a_bin,
        "old service-a",
        &with_callers(&service_a_env, &previous_operator_callers),
    );
    let old_service_b_url = format!("http://{}", old_service_b.address().await);
    let _ = old_service_a.address().await;
    for i in 0..10 {
        versions.push((pay(&http, &old_url, &payment_request("c-old", 1000 + i)).await, 1));
    }
    // Published by the old relay, handled by the old ServiceB.
    all_recorded(&http, &old_service_b_url, &versions).await;
    let mut new_service_b = Process::start("service-b", &service_b_env);
    let mut new_service_a = Process::start("service-a", &service_a_env);
    let service_b_url = format!("http://{}", new_service_b.address().await);
    let service_a_url = format!("http://{}", new_service_a.address().await);
    // Each new member owns partitions while the old one is still there.
    owns_partitions(&http, "the new service-b", &service_b_url).await;
    owns_partitions(&http, "the new service-a", &service_a_url).await;
    for i in 0..10 {
        let id = pay(&http, &old_url, &payment_request("c-old", 2000 + i)).await;
        if i % 2 == 0 {
            refund(&http, &old_url, &id).await;
            versions.push((id, 2));
        } else {
            versions.push((id, 1));
        }
    }
    // Both members handled them, sharing the partitions and the database.
    all_recorded(&http, &service_b_url, &versions).await;
    let handled_by_old = old_service_b
        .lines_so_far()
        .iter()
        .filter(|line| line.contains("payment info recorded"))
        .count();
    assert!(
        handled_by_old >= 10,
        "the old ServiceB handled {handled_by_old} notifications"
    );
    // The old members leave; their partitions go to the new ones.
    for (name, process) in [("old service-b", old_service_b), ("old service-a", old_service_a)] {
        let status = process.terminate().await;
        assert!(status.success(), "{name} stopped cleanly: {status}");
    }

    // 2. Payments upgraded: old and new on one store.
    let mut new_payments = Process::start("payments-service", &payments_env);
    let new_url = format!("http://{}", new_payments.address().await);
    for i in 0..10 {
        // Clients keep to the old API until every instance is upgraded.
        let old_made = pay(&http, &old_url, &payment_request("c-mixed", 3000 + i)).await;
        let new_made = pay(&http, &new_url, &payment_request("c-mixed", 4000 + i)).await;
        // Each refunds what the other stored.
        refund(&http, &new_url, &old_made).await;
        refund(&http, &old_url, &new_made).await;
        versions.push((old_made, 2));
        versions.push((new_made, 2));
    }
    // Published by whichever relay leads (the old one, there first), handled
    // by the new ServiceB.
    all_recorded(&http, &service_b_url, &versions).await;

    // 3. The old Payments leaves; the new relay leads, and takes the new API.
    balancer.switch(new_url.trim_start_matches("http://").parse().expect("address"));
    let status = old_payments.terminate().await;
    assert!(status.success(), "old payments stopped cleanly: {status}");
    let mut by_card = payment_request("c-new", 5000);
    by_card["payment_method"] = json!("card");
    for i in 0..10 {
        by_card["amount"] = json!(5000 + i);
        versions.push((pay(&http, &new_url, &by_card).await, 1));
    }
    let (card_id, _) = versions.last().expect("a payment");
    let card = get_json(&http, format!("{new_url}/payments/{card_id}"))
        .await
        .expect("found");
    assert_eq!(card["payment_method"], "card", "{card}");

    // Nothing lost: ServiceB recorded every payment at its last version...
    all_recorded(&http, &service_b_url, &versions).await;
    // ...once per event of it, and handled nothing else.
    let recorded: Vec<(uuid::Uuid, i64, i32)> =
        sqlx::query_as("SELECT payment_id, version, notifications FROM payment_records")
            .fetch_all(records.store.pool())
            .await
            .expect("ServiceB's records");
    assert_eq!(recorded.len(), versions.len(), "one record per payment");
    for (id, version, notifications) in &recorded {
        let expected = versions
            .iter()
            .find(|(paid, _)| *paid == id.to_string())
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("ServiceB recorded {id}, which nobody paid"));
        assert_eq!(
            (*version, i64::from(*notifications)),
            (expected as i64, expected as i64),
            "{id}: recorded at its last version, one notification per event"
        );
    }
    // ServiceA audited each notification once and copied each payment at
    // its last version.
    let events: u64 = versions.iter().map(|(_, v)| v).sum();
    let (audited, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM audit_entries")
            .fetch_one(audit.store.pool())
            .await
            .expect("ServiceA's audit");
    assert_eq!(
        (audited, distinct),
        (events as i64, events as i64),
        "one audit entry per notification"
    );
    for (id, version) in &versions {
        eventually(&format!("service-a copied {id} at version {version}"), || async {
            let copy = get_json(&http, format!("{service_a_url}/payments/{id}")).await?;
            (copy["version"].as_u64()? == *version).then_some(())
        })
        .await;
    }
    let dead_letters = all_records(
        &kafka,
        &shared_events::dead_letter_topic(&kafka.topics.notifications),
        std::time::Duration::from_secs(1),
    )
    .await;
    assert!(
        dead_letters.is_empty(),
        "{} notifications were dead-lettered",
        dead_letters.len()
    );

    for (name, process) in [
        ("service-a", new_service_a),
        ("service-b", new_service_b),
        ("payments", new_payments),
    ] {
        let status = process.terminate().await;
        assert!(status.success(), "{name} stopped cleanly: {status}");
    }
}
