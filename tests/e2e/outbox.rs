//! Event sourcing through the outbox: refunds reach the consumers, nothing
//! committed is lost when Payments dies before publishing, two Payments
//! instances never publish the same events twice or out of order, and a
//! leader cut off from the database gives the lead up.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use integration_tests::*;
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn refund(http: &reqwest::Client, payments: &TestApp, id: &str, amount: i64) -> Value {
    let response = http
        .post(payments.url(&format!("/payments/{id}/refunds")))
        .json(&json!({"amount": amount, "reason": "damaged"}))
        .send()
        .await
        .expect("POST refund");
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.expect("json")
}

#[tokio::test]
async fn a_refund_reaches_service_a_and_service_b() {
    let broker = Broker::get().await;
    let http = integration_tests::http_client();
    let system = System::start(&broker).await;

    let payment = create_payment(&http, &system.payments, &payment_request("c-9", 1000)).await;
    let id = payment["payment_id"].as_str().expect("id").to_owned();
    let response = http
        .post(system.payments.url(&format!("/payments/{id}/refunds")))
        .header("if-match", "\"1\"")
        .json(&json!({"amount": 300, "reason": "damaged"}))
        .send()
        .await
        .expect("POST refund");
    assert_eq!(response.status(), StatusCode::CREATED);
    let refunded: Value = response.json().await.expect("json");
    assert_eq!(
        (refunded["refunded"].clone(), refunded["version"].clone()),
        (json!(300), json!(2))
    );

    let copy = eventually("service-a's copy shows the refund", || async {
        let copy = get_json(&http, system.service_a.url(&format!("/payments/{id}"))).await?;
        (copy["version"] == 2).then_some(copy)
    })
    .await;
    assert_eq!(copy, refunded);
    let kinds = eventually("service-a audited both notifications", || async {
        let audit = get_json(&http, system.service_a.url("/audit")).await?;
        let kinds: Vec<Value> = audit.as_array()?.iter().map(|e| e["kind"].clone()).collect();
        (kinds.len() == 2).then_some(kinds)
    })
    .await;
    assert_eq!(kinds, [json!("received"), json!("refunded")]);
    eventually("service-b called back after the refund", || async {
        let record = get_json(&http, system.service_b.url(&format!("/payments/{id}"))).await?;
        (record["payment"] == refunded).then_some(())
    })
    .await;
    system.stop().await;
}

#[tokio::test]
async fn two_payments_instances_publish_every_event_once_and_in_order() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = integration_tests::http_client();
    let first = spawn_payments(&kafka, &database.url).await;
    let second = spawn_payments(&kafka, &database.url).await;

    // Interleaved writes through both instances.
    let mut ids = Vec::new();
    for i in 0..10 {
        let via = if i % 2 == 0 { &first } else { &second };
        let payment = create_payment(&http, via, &payment_request("c-10", 1000)).await;
        ids.push(payment["payment_id"].as_str().expect("id").to_owned());
    }
    for (i, id) in ids.iter().enumerate() {
        for n in 0..3 {
            let via = if (i + n) % 2 == 0 { &second } else { &first };
            refund(&http, via, id, 10).await;
        }
    }
    let stored = database.store.read_all(0, 1000).await.expect("read").len();
    assert_eq!(stored, 40);

    read_records(&kafka, &kafka.topics.notifications, stored).await;
    // All there; and nothing beyond (no event published twice).
    let notifications = all_records(&kafka, &kafka.topics.notifications, Duration::from_secs(2)).await;
    let states = all_records(&kafka, &kafka.topics.state, Duration::from_secs(2)).await;
    assert_eq!((notifications.len(), states.len()), (stored, stored));
    let ids: BTreeSet<_> = notifications.iter().filter_map(|r| header(r, "ce_id")).collect();
    assert_eq!(ids.len(), stored, "every stored event published exactly once");

    // Per payment (one partition), the state versions are 1, 2, 3, 4 in order.
    let mut versions: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    for record in &states {
        let state: Value = serde_json::from_slice(record.payload().expect("value")).expect("json");
        versions
            .entry(record.key().expect("key").to_vec())
            .or_default()
            .push(state["version"].as_u64().expect("version"));
    }
    assert_eq!(versions.len(), 10);
    assert!(versions.values().all(|v| v == &[1, 2, 3, 4]), "{versions:?}");

    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_restarted_relay_publishes_the_state_after_events_it_never_saw() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;

    let payments = spawn_payments(&kafka, &database.url).await;
    let mut ids = Vec::new();
    for amount in [100, 200, 300] {
        let payment = create_payment(&http, &payments, &payment_request("c-relay", amount)).await;
        ids.push(payment["payment_id"].as_str().expect("id").to_owned());
    }
    read_records(&kafka, &kafka.topics.state, ids.len()).await;
    payments.stop().await;

    // Refunded while no relay runs; the relay that publishes them has never
    // seen these payments, so it loads each as it was before the refund.
    let writer = spawn_payments_with(&kafka, &database.url, false).await;
    for id in &ids {
        refund(&http, &writer, id, 50).await;
    }
    writer.stop().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let states = read_records(&kafka, &kafka.topics.state, 2 * ids.len()).await;
    for id in &ids {
        let current = get_json(&http, payments.url(&format!("/payments/{id}")))
            .await
            .expect("payment");
        let published = states
            .iter()
            .map(|r| {
                shared_events::decode::<shared_events::PaymentState>(r)
                    .expect("a state")
                    .data
            })
            .filter(|s| s.payment_id.to_string() == *id)
            .max_by_key(|s| s.version)
            .expect("published");
        assert_eq!((published.version, published.refunded), (2, 50));
        assert_eq!(serde_json::to_value(&published).expect("json"), current);
    }
    payments.stop().await;
}

/// The relay that leads is cut off from the database (a partition: its
/// connections stay open and silent). The other instance's relay takes over
/// and publishes what is written after, instead of waiting for TCP to notice.
#[tokio::test]
async fn a_relay_cut_off_from_the_database_gives_up_the_lead_within_seconds() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = integration_tests::http_client();
    let proxy = proxy::GatedProxy::start(server_of(&database.url).await).await;
    proxy.open();

    let cut_off = spawn_payments(&kafka, &via(&database.url, proxy.addr)).await;
    let first = create_payment(&http, &cut_off, &payment_request("c-lease", 100)).await;
    let first = first["payment_id"].as_str().expect("id").to_owned();
    eventually("the first instance's relay publishes", || async {
        has_key(&kafka, &kafka.topics.notifications, &first)
            .await
            .then_some(())
    })
    .await;
    let other = spawn_payments(&kafka, &database.url).await;

    proxy.freeze();
    let frozen_at = tokio::time::Instant::now();
    let second = create_payment(&http, &other, &payment_request("c-lease", 200)).await;
    let second = second["payment_id"].as_str().expect("id").to_owned();
    eventually("the other instance's relay takes over and publishes", || async {
        has_key(&kafka, &kafka.topics.notifications, &second)
            .await
            .then_some(())
    })
    .await;
    eprintln!(
        "relay takeover after the leader was cut off from the database: {:.1} s (lease {:?})",
        frozen_at.elapsed().as_secs_f64(),
        payments_service::relay::LEASE
    );

    proxy.close();
    other.stop().await;
    cut_off.stop().await;
}
