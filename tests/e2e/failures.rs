//! What happens when things go wrong: a dependency down, a restart in the
//! middle of a retry, records that are not events.

use std::time::Duration;

use integration_tests::proxy::GatedProxy;
use integration_tests::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn service_b_retries_the_callback_until_payments_answers() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let gate = GatedProxy::start(payments.addr).await;
    let records = TestDatabase::empty().await;
    let service_b = spawn_service_b(&kafka, &unique("service-b"), &gate.url(), &records.url).await;

    let payment = create_payment(&http, &payments, &payment_request("c-4", 700)).await;
    let record_url = service_b.url(&format!(
        "/payments/{}",
        payment["payment_id"].as_str().expect("id")
    ));

    eventually("service-b retries the callback", || async {
        (gate.refused() >= 3).then_some(())
    })
    .await;
    let response = http.get(&record_url).send().await.expect("GET");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "nothing recorded while Payments is unreachable"
    );

    gate.open();
    let record = eventually("service-b records once Payments answers", || {
        get_json(&http, &record_url)
    })
    .await;
    assert_eq!(record["payment"], payment);
    let attempts = record["attempts"].as_u64().expect("attempts");
    assert!(attempts > 3, "took {attempts} attempts");

    service_b.stop().await;
    payments.stop().await;
}

#[tokio::test]
async fn offsets_are_committed_on_shutdown_and_only_for_handled_records() {
    let broker = Broker::get().await;
    let mut kafka = kafka_config(&broker).await;
    // No background commit during the test: what the restarted group sees
    // is what was committed when the first instance stopped.
    kafka.commit_interval = Duration::from_secs(600);
    let http = integration_tests::http_client();
    let group = unique("service-b");
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let gate = GatedProxy::start(payments.addr).await;
    gate.open();

    let first_records = TestDatabase::empty().await;
    let first_b = spawn_service_b(&kafka, &group, &gate.url(), &first_records.url).await;
    let handled = create_payment(&http, &payments, &payment_request("c-5", 100)).await;
    let handled_id = handled["payment_id"].as_str().expect("id");
    eventually("the first payment is recorded", || {
        get_json(&http, first_b.url(&format!("/payments/{handled_id}")))
    })
    .await;

    gate.close();
    let pending = create_payment(&http, &payments, &payment_request("c-5", 200)).await;
    let pending_id = pending["payment_id"].as_str().expect("id");
    let refused = gate.refused();
    eventually("the second callback is failing", || async {
        (gate.refused() > refused).then_some(())
    })
    .await;
    first_b.stop().await;

    // The same group, restarted: it resumes after the handled notification
    // and gets the pending one again. It keeps its records in a new
    // database, so what it records is exactly what was delivered to it.
    let second_records = TestDatabase::empty().await;
    let second_b = spawn_service_b(&kafka, &group, &gate.url(), &second_records.url).await;
    gate.open();
    let record = eventually("the pending payment is recorded after the restart", || {
        get_json(&http, second_b.url(&format!("/payments/{pending_id}")))
    })
    .await;
    assert_eq!(record["payment"], pending);
    let response = http
        .get(second_b.url(&format!("/payments/{handled_id}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        response.status(),
        StatusCode::NOT_FOUND,
        "the handled notification's offset was committed on shutdown, so it is not re-delivered"
    );

    second_b.stop().await;
    payments.stop().await;
}

#[tokio::test]
async fn poison_records_go_to_the_dead_letter_topic_once_and_the_services_keep_going() {
    let broker = Broker::get().await;
    let http = integration_tests::http_client();
    let system = System::start(&broker).await;
    let System {
        kafka,
        payments,
        database: _,
        service_b_database: _,
        service_a,
        service_b,
    } = &system;

    let id = uuid::Uuid::now_v7().to_string();
    let time = chrono::Utc::now().to_rfc3339();
    let good_headers = |ce_type: &'static str| {
        vec![
            ("ce_specversion", "1.0"),
            ("ce_id", "0196a3f1-0000-7000-8000-000000000001"),
            ("ce_source", "/somebody-else"),
            ("ce_type", ce_type),
            ("ce_time", time.as_str()),
            ("content-type", "application/json"),
        ]
    };
    let notification = serde_json::json!({"payment_id": id, "received_at": time}).to_string();
    let notification_v1 = "payments.payment-received.notification.v1";
    type Headers<'a> = Vec<(&'a str, &'a str)>;
    let poison: Vec<(Headers, Option<&[u8]>)> = vec![
        (vec![], Some(b"no headers at all")),
        (good_headers(notification_v1), Some(b"{not json")),
        (good_headers(notification_v1), Some(br#"{"payment_id": 42}"#)),
        (good_headers(notification_v1), None),
        (good_headers("payments.refund.v1"), Some(notification.as_bytes())),
        (
            good_headers("payments.payment-received.notification.v2"),
            Some(notification.as_bytes()),
        ),
        (
            good_headers(notification_v1)
                .into_iter()
                .filter(|(k, _)| *k != "ce_id")
                .collect(),
            Some(notification.as_bytes()),
        ),
    ];
    // On every partition of both topics, so every good record below queues
    // behind poison.
    for topic in [&kafka.topics.notifications, &kafka.topics.state] {
        for partition in 0..3 {
            for (headers, payload) in &poison {
                produce_raw(kafka, topic, partition, headers, *payload).await;
            }
        }
    }

    let mut ids = Vec::new();
    for amount in 1..=6 {
        let payment = create_payment(&http, payments, &payment_request("c-6", amount)).await;
        ids.push(payment["payment_id"].as_str().expect("id").to_owned());
    }
    for id in &ids {
        eventually("service-a caches the good payment", || {
            get_json(&http, service_a.url(&format!("/payments/{id}")))
        })
        .await;
        eventually("service-b records the good payment", || {
            get_json(&http, service_b.url(&format!("/payments/{id}")))
        })
        .await;
    }
    let audit = eventually("service-a audits the good notifications", || async {
        let audit = get_json(&http, service_a.url("/audit")).await?;
        (audit.as_array()?.len() >= ids.len()).then_some(audit)
    })
    .await;
    let audited: Vec<&str> = audit
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["payment_id"].as_str())
        .collect();
    assert_eq!(
        audited.len(),
        ids.len(),
        "only good notifications are audited: {audit}"
    );
    assert!(ids.iter().all(|id| audited.contains(&id.as_str())));
    assert!(
        get_json(&http, service_a.url(&format!("/payments/{id}")))
            .await
            .is_none(),
        "the poison id is unknown"
    );

    for app in [service_a, service_b] {
        let health: Value = get_json(&http, app.url("/health")).await.expect("healthy");
        assert_eq!(health["broker"], "reachable");
    }

    // Both groups read the notifications, so each poison record is there
    // once per group, with the reasons; the good records are not there.
    let per_group = poison.len() * 3;
    let letters = eventually("both groups dead-lettered every poison record", || async {
        let letters = kafka_ops::dead_letters::list(kafka, &kafka.topics.notifications)
            .await
            .expect("list");
        (letters.len() >= 2 * per_group).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 2 * per_group, "exactly once per group");
    let mut seen = std::collections::HashSet::new();
    for letter in &letters {
        let h = |name| {
            letter
                .header(name)
                .unwrap_or_else(|| panic!("{name} on {letter:?}"))
        };
        use service_kit::dead_letter::header;
        assert!(seen.insert((
            h(header::GROUP).to_owned(),
            h(header::SOURCE_PARTITION).to_owned(),
            h(header::SOURCE_OFFSET).to_owned()
        )));
        assert_eq!(h(header::SOURCE_TOPIC), kafka.topics.notifications);
        assert_eq!(h(header::REASON), "permanent");
        assert_eq!(h(header::ATTEMPTS), "1");
        assert!(!h(header::ERROR).is_empty());
        chrono::DateTime::parse_from_rfc3339(h(header::FIRST_FAILURE)).expect("a time");
        assert_eq!(letter.key.as_deref(), Some("poison"), "the original key");
        let original: Vec<(&str, &str)> = letter
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(header::PREFIX))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert!(
            poison.iter().any(|(headers, payload)| {
                payload.map_or(0, <[u8]>::len) == letter.value_bytes
                    && headers.len() == original.len()
                    && headers.iter().all(|h| original.contains(h))
            }),
            "the original value and headers: {letter:?}"
        );
    }
    // The state topic is read by ServiceA's replica only, which skips
    // poison rather than dead-letter it again on every start.
    let state_letters = kafka_ops::dead_letters::list(kafka, &kafka.topics.state)
        .await
        .expect("list");
    assert!(state_letters.is_empty(), "{state_letters:?}");

    for app in [service_a, service_b] {
        assert_eq!(
            metric_sum(&http, app, "dead_letters_total", "").await,
            Some(i64::try_from(per_group).expect("small")),
            "every poison record counted once by each service"
        );
    }
    println!(
        "poison test: {} poison records per group, {} dead letters in {}.dlt ({} groups)",
        per_group,
        letters.len(),
        kafka.topics.notifications,
        2
    );
    system.stop().await;
}

#[tokio::test]
async fn a_notification_for_a_payment_payments_does_not_know_does_not_stall_service_b() {
    let broker = Broker::get().await;
    let http = integration_tests::http_client();
    let system = System::start(&broker).await;

    // Received an hour ago, and unknown to this Payments: never answerable.
    let unknown = shared_events::PaymentReceivedNotification {
        payment_id: shared_events::PaymentId::new(),
        received_at: chrono::Utc::now() - chrono::Duration::hours(1),
        payment_method: shared_events::PaymentMethod::Card,
    };
    let unknown_id = unknown.payment_id;
    produce_event(
        &system.kafka,
        &shared_events::Envelope::new("/test", unknown, uuid::Uuid::now_v7(), None),
    )
    .await;

    let payment = create_payment(&http, &system.payments, &payment_request("c-8", 800)).await;
    let id = payment["payment_id"].as_str().expect("id");
    let record = eventually("service-b records the known payment", || {
        get_json(&http, system.service_b.url(&format!("/payments/{id}")))
    })
    .await;
    assert_eq!(record["payment"], payment);
    let response = http
        .get(system.service_b.url(&format!("/payments/{unknown_id}")))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    system.stop().await;
}

/// An outage of Payments longer than a record's retry budget: ServiceB
/// pauses and waits it out, so nothing of the outage is dead-lettered and
/// every payment is recorded once Payments answers again.
///
/// The budget is made small (3 attempts of at most 500 ms backoff: under
/// 1.5 s) so that an outage of [`OUTAGE`] outlasts it tenfold; the code
/// before consumers paused for a dependency dead-lettered every
/// notification of the outage here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_payments_pauses_service_b_and_dead_letters_nothing() {
    const OUTAGE: Duration = Duration::from_secs(15);
    const EVERY: Duration = Duration::from_millis(250);
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let gate = GatedProxy::start(payments.addr).await;
    gate.open();
    let records = TestDatabase::empty().await;
    let group = unique("service-b");
    let consumer = service_kit::config::ConsumerConfig {
        max_attempts: 3,
        ..test_consumer()
    };
    let service_b = spawn_service_b_with(&kafka, &group, &gate.url(), &records.url, consumer).await;
    let paused = format!(r#"group="{group}",reason="payments""#);

    let mut ids = Vec::new();
    let created = |ids: &mut Vec<String>, payment: Value| {
        ids.push(payment["payment_id"].as_str().expect("id").to_owned());
    };
    created(
        &mut ids,
        create_payment(&http, &payments, &payment_request("c-outage", 1)).await,
    );
    eventually("service-b records a payment before the outage", || {
        get_json(&http, service_b.url(&format!("/payments/{}", ids[0])))
    })
    .await;

    // A steady load through the outage: Payments takes payments, ServiceB
    // cannot call it back.
    gate.close();
    let outage = tokio::time::Instant::now();
    let mut paused_seen = false;
    while outage.elapsed() < OUTAGE {
        let amount = i64::try_from(ids.len()).expect("small") + 1;
        created(
            &mut ids,
            create_payment(&http, &payments, &payment_request("c-outage", amount)).await,
        );
        paused_seen |= metric(&http, &service_b, "consumer_paused", &paused).await == Some(1);
        tokio::time::sleep(EVERY).await;
    }
    let dead_during = metric_sum(&http, &service_b, "dead_letters_total", "")
        .await
        .unwrap_or(0);
    gate.open();
    for amount in 0..4 {
        created(
            &mut ids,
            create_payment(&http, &payments, &payment_request("c-after", amount + 1)).await,
        );
    }

    // Each payment ends up recorded or dead-lettered; then count which.
    let dead = eventually("every payment is recorded or dead-lettered", || async {
        let dead = metric_sum(&http, &service_b, "dead_letters_total", "")
            .await
            .unwrap_or(0);
        let mut recorded = 0;
        for id in &ids {
            if get_json(&http, service_b.url(&format!("/payments/{id}")))
                .await
                .is_some()
            {
                recorded += 1;
            }
        }
        (recorded + usize::try_from(dead).expect("positive") >= ids.len()).then_some(dead)
    })
    .await;
    println!(
        "outage test: {} payments, {} during a {} s outage; dead letters: {dead} ({dead_during} during the outage); paused gauge seen: {paused_seen}",
        ids.len(),
        ids.len() - 5,
        OUTAGE.as_secs()
    );
    assert_eq!(dead, 0, "an outage is not a poison record");
    let letters = kafka_ops::dead_letters::list(&kafka, &kafka.topics.notifications)
        .await
        .expect("list");
    assert!(letters.is_empty(), "{letters:?}");
    assert!(paused_seen, "consumer_paused{{{paused}}} was 1 during the outage");
    eventually("the consumer resumes", || async {
        (metric(&http, &service_b, "consumer_paused", &paused).await == Some(0)).then_some(())
    })
    .await;
    for id in &ids {
        let record = get_json(&http, service_b.url(&format!("/payments/{id}")))
            .await
            .expect("recorded");
        assert_eq!(record["notifications"], 1, "{record}");
    }

    service_b.stop().await;
    payments.stop().await;
}
