//! A rolling upgrade, with the real binaries of both releases: from the
//! release before `PaymentReceived` v2 (it stored and published v1 only) to
//! this one, consumers first, then Payments, without stopping the flow of
//! payments and refunds, and without losing any.
//!
//! 1. Old Payments, old ServiceB. A new ServiceB joins the old one's group
//!    (old and new share the partitions and the database), then the old one
//!    leaves: the consumers are upgraded while v1 is all there is.
//! 2. A new Payments joins the old one on the same event store: both take
//!    payments, each refunds the other's (the new one upcasts stored v1
//!    events, the old one reads stored v2 events, ignoring what it does not
//!    know), and whichever relay leads publishes both.
//! 3. The old Payments leaves; the new relay takes over, publishing v2.
//!
//! Every payment answered 201 ends up recorded by ServiceB at its last
//! version, nothing is dead-lettered, and both versions were on the topic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use integration_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use crate::processes::{Process, kafka_env};

/// The release upgraded from: the last commit before `PaymentReceived` v2.
/// Its source comes from this repository's history (`git archive`).
const PREVIOUS_RELEASE: &str = "28e088a65f6accc1fb1cc1e7b6732689d1a387ea";

/// The previous release's binary `name`, built on first use under
/// `target/previous-release/<commit>/` (a build of its own: about 5 minutes
/// the first time on 2 cores, then nothing).
fn previous_release(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let root = workspace.join("target/previous-release").join(PREVIOUS_RELEASE);
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
                    "git -C '{}' archive --format=tar {PREVIOUS_RELEASE} | tar -x -C '{}'",
                    workspace.display(),
                    partial.display()
                ))
                .status()
                .expect("run git archive");
            assert!(
                status.success(),
                "cannot unpack the previous release {PREVIOUS_RELEASE} from git (a clone with its history is needed)"
            );
            std::fs::rename(&partial, &src).expect("move the unpacked source in place");
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        eprintln!("building the previous release's binaries ({PREVIOUS_RELEASE}), once");
        let status = std::process::Command::new(&cargo)
            .current_dir(&src)
            .env("CARGO_TARGET_DIR", root.join("target"))
            .args(["build", "--locked", "--bins", "-p", "payments-service", "-p", "service-b"])
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
                (record["payment"]["version"].as_u64()? >= *version).then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_rolling_upgrade_from_payment_received_v1_to_v2_loses_nothing() {
    let (old_payments_bin, old_service_b_bin) = tokio::task::spawn_blocking(|| {
        (
            previous_release("payments-service"),
            previous_release("service-b"),
        )
    })
    .await
    .expect("build the previous release");
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let store = TestDatabase::empty().await;
    let records = TestDatabase::empty().await;
    let http = integration_tests::http_client();
    let group = unique("service-b");
    let common = kafka_env(&kafka);
    let payments_env = [&common[..], &[("DATABASE_URL", store.url.as_str())]].concat();
    // version[id]: the version each payment is at, as Payments answered.
    let mut versions: Vec<(String, u64)> = Vec::new();

    // 1. The previous release, then ServiceB upgraded under load.
    let mut old_payments = Process::start_binary(&old_payments_bin, "old payments", &payments_env);
    let old_url = format!("http://{}", old_payments.address().await);
    let balancer = Switch::to(old_url.trim_start_matches("http://").parse().expect("address")).await;
    let service_b_env = [
        &common[..],
        &[
            ("GROUP_ID", group.as_str()),
            ("PAYMENTS_URL", balancer.url.as_str()),
            ("DATABASE_URL", records.url.as_str()),
        ],
    ]
    .concat();
    let mut old_service_b = Process::start_binary(&old_service_b_bin, "old service-b", &service_b_env);
    let old_service_b_url = format!("http://{}", old_service_b.address().await);
    for i in 0..10 {
        versions.push((pay(&http, &old_url, &payment_request("c-old", 1000 + i)).await, 1));
    }
    // Published by the old relay, handled by the old ServiceB.
    all_recorded(&http, &old_service_b_url, &versions).await;
    let mut new_service_b = Process::start("service-b", &service_b_env);
    let service_b_url = format!("http://{}", new_service_b.address().await);
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
    // The old member leaves; its partitions go to the new one.
    let status = old_service_b.terminate().await;
    assert!(status.success(), "old service-b stopped cleanly: {status}");

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
    // The new Payments upcasts the old one's v1 payments on load.
    let (v1_id, _) = &versions[0];
    let upcast = get_json(&http, format!("{new_url}/payments/{v1_id}"))
        .await
        .expect("found");
    assert_eq!(upcast["payment_method"], "unknown", "{upcast}");

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

    // Nothing lost: ServiceB recorded every payment at its last version.
    all_recorded(&http, &service_b_url, &versions).await;
    // Both versions were published, and none was dead-lettered.
    let notifications = all_records(
        &kafka,
        &kafka.topics.notifications,
        std::time::Duration::from_secs(1),
    )
    .await;
    let types: std::collections::BTreeSet<String> = notifications
        .iter()
        .filter_map(|r| header(r, "ce_type"))
        .collect();
    for ce_type in [
        "payments.payment-received.notification.v1",
        "payments.payment-received.notification.v2",
    ] {
        assert!(types.contains(ce_type), "{ce_type} was published: {types:?}");
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
    // Both versions are in the store, each read back as v2.
    let stored = store.store.read_all(0, 10_000).await.expect("read");
    let received: std::collections::BTreeSet<i32> = stored
        .iter()
        .filter(|e| e.event_type == "payments.payment-received")
        .map(|e| e.schema_version)
        .collect();
    assert_eq!(received, [1, 2].into(), "payments stored by both releases");

    for (name, process) in [("service-b", new_service_b), ("payments", new_payments)] {
        let status = process.terminate().await;
        assert!(status.success(), "{name} stopped cleanly: {status}");
    }
}
