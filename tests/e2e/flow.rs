//! The happy path through all three services, and what goes over the wire.

use integration_tests::*;
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn a_payment_reaches_service_a_and_service_b() {
    let broker = Broker::get().await;
    let http = integration_tests::http_client();
    let System {
        payments,
        service_a,
        service_b,
        ..
    } = System::start(&broker).await;

    let response = http
        .post(payments.url("/payments"))
        .json(&payment_request("c-1", 1999))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().expect("ascii").to_owned();
    let payment: Value = response.json().await.expect("json");
    let id = payment["payment_id"].as_str().expect("payment_id").to_owned();
    assert_eq!(location, format!("/payments/{id}"));
    assert_eq!(payment["amount"], 1999);
    assert_eq!(payment["currency"], "EUR");
    assert_eq!(
        get_json(&http, payments.url(&location)).await.as_ref(),
        Some(&payment)
    );

    // ServiceA audits the notification...
    let audit = eventually("service-a audits the notification", || async {
        let audit = get_json(&http, service_a.url("/audit")).await?;
        audit
            .as_array()?
            .iter()
            .any(|e| e["payment_id"] == id.as_str())
            .then_some(audit)
    })
    .await;
    assert_eq!(audit.as_array().map(Vec::len), Some(1), "{audit}");
    // ...and keeps its own copy from the state event; ServiceB called
    // Payments back and recorded what it got.
    let record = copied_and_recorded(&http, &service_a, &service_b, &payment).await;
    assert_eq!(record["attempts"], 1, "Payments took ServiceB's token at once");

    // Payment data is for known callers only: anonymous reads are refused
    // by all three, and ServiceB's token opens Payments' reads, not ServiceA.
    let anonymous = reqwest::Client::new();
    for url in [
        payments.url(&location),
        payments.url(&format!("{location}/events")),
        service_a.url("/audit"),
        service_a.url(&format!("/payments/{id}")),
        service_b.url(&format!("/payments/{id}")),
    ] {
        let status = anonymous.get(&url).send().await.expect("GET").status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{url}");
    }
    let as_service_b = |url: String| {
        anonymous
            .get(url)
            .bearer_auth(credentials().service_b.expose())
            .send()
    };
    let status = |response: reqwest::Result<reqwest::Response>| response.expect("GET").status();
    assert_eq!(
        status(as_service_b(payments.url(&location)).await),
        StatusCode::OK
    );
    assert_eq!(
        status(as_service_b(service_a.url("/audit")).await),
        StatusCode::UNAUTHORIZED
    );
    // ServiceB reads payments and nothing more: a refund with its token is
    // refused as forbidden (its token is known), and changes nothing.
    let refund = anonymous
        .post(payments.url(&format!("{location}/refunds")))
        .bearer_auth(credentials().service_b.expose())
        .json(&serde_json::json!({"amount": 1, "reason": "not ServiceB's call"}))
        .send()
        .await;
    assert_eq!(status(refund), StatusCode::FORBIDDEN);
    assert_eq!(
        get_json(&http, payments.url(&location)).await.as_ref(),
        Some(&payment),
        "the refused refund changed nothing"
    );
    assert_eq!(
        status(anonymous.get(service_a.url("/health")).send().await),
        StatusCode::OK,
        "health stays open"
    );

    // With Payments gone, ServiceA still answers from its copy.
    let payments_url = payments.url(&location);
    payments.stop().await;
    assert!(http.get(&payments_url).send().await.is_err(), "payments is down");
    assert_eq!(
        get_json(&http, service_a.url(&format!("/payments/{id}"))).await,
        Some(payment)
    );

    service_a.stop().await;
    service_b.stop().await;
}

#[tokio::test]
async fn the_notification_carries_only_the_id_time_and_method_and_the_state_event_the_whole_payment() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &database.url).await;

    let flow = uuid::Uuid::now_v7().to_string();
    let response = http
        .post(payments.url("/payments"))
        .header("x-correlation-id", &flow)
        .json(&payment_request("c-2", 500))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let request = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let payment: Value = response.json().await.expect("json");
    let id = payment["payment_id"].as_str().expect("id");

    let [notification] = read_records(&kafka, &kafka.topics.notifications, 1)
        .await
        .try_into()
        .expect("one");
    let [state] = read_records(&kafka, &kafka.topics.state, 1)
        .await
        .try_into()
        .expect("one");

    for (record, ce_type) in [
        (&notification, "payments.payment-received.notification.v2"),
        (&state, "payments.payment.state.v1"),
    ] {
        assert_eq!(record.key(), Some(id.as_bytes()), "keyed by payment id");
        assert_eq!(header(record, "ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(header(record, "ce_type").as_deref(), Some(ce_type));
        assert_eq!(header(record, "ce_source").as_deref(), Some("/payments-service"));
        assert_eq!(
            header(record, "content-type").as_deref(),
            Some("application/json")
        );
        assert!(header(record, "ce_time").is_some());
        assert!(header(record, "ce_correlationid").is_some());
    }
    assert_ne!(
        header(&notification, "ce_id"),
        header(&state, "ce_id"),
        "one id per event"
    );
    assert_eq!(
        header(&notification, "ce_correlationid").as_deref(),
        Some(flow.as_str()),
        "the flow the client named"
    );
    assert_eq!(header(&state, "ce_correlationid").as_deref(), Some(flow.as_str()));
    // The notification is the stored event: the request caused it. The
    // state was caused by that event. Nothing is its own cause.
    let event_id = header(&notification, "ce_id").expect("ce_id");
    assert_eq!(
        header(&notification, "ce_causationid").as_deref(),
        Some(request.as_str())
    );
    assert_eq!(
        header(&state, "ce_causationid").as_deref(),
        Some(event_id.as_str())
    );
    let stored = get_json(&http, payments.url(&format!("/payments/{id}/events")))
        .await
        .expect("events");
    assert_eq!(stored[0]["event_id"], event_id.as_str());
    assert_eq!(stored[0]["causation_id"], request.as_str());
    assert_eq!(stored[0]["correlation_id"], flow.as_str());

    let notification: Value = serde_json::from_slice(notification.payload().expect("value")).expect("json");
    assert_eq!(
        notification,
        serde_json::json!({"payment_id": id, "received_at": payment["received_at"], "payment_method": "unknown"}),
        "which payment, when, and how paid (the request did not say)"
    );
    let state: Value = serde_json::from_slice(state.payload().expect("value")).expect("json");
    assert_eq!(state, payment);

    payments.stop().await;
}

#[tokio::test]
async fn topics_are_created_with_their_settings() {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;

    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    // Any service creates the topics it needs when they are missing.
    let service_a = spawn_service_a(&kafka, &unique("service-a")).await;
    let http = integration_tests::http_client();
    eventually("service-a is healthy", || {
        get_json(&http, service_a.url("/health"))
    })
    .await;

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .create()
        .expect("admin");
    let specs = [
        ResourceSpecifier::Topic(&kafka.topics.notifications),
        ResourceSpecifier::Topic(&kafka.topics.state),
    ];
    let configs = admin
        .describe_configs(&specs, &AdminOptions::new())
        .await
        .expect("describe");
    let setting = |i: usize, name: &str| {
        configs[i]
            .as_ref()
            .expect("config")
            .get(name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(setting(0, "cleanup.policy").as_deref(), Some("delete"));
    assert_eq!(setting(0, "retention.ms").as_deref(), Some("604800000"));
    assert_eq!(setting(1, "cleanup.policy").as_deref(), Some("compact"));

    let metadata = admin
        .inner()
        .fetch_metadata(Some(&kafka.topics.state), std::time::Duration::from_secs(5))
        .expect("metadata");
    assert!(metadata.topics()[0].partitions().len() >= 3);
    service_a.stop().await;
}

#[tokio::test]
async fn a_fresh_service_a_rebuilds_its_copy_from_the_state_topic() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &database.url).await;

    let mut created = Vec::new();
    for amount in [100, 200, 300] {
        created.push(create_payment(&http, &payments, &payment_request("c-3", amount)).await);
    }
    // Published (the relay runs right after the commit), then Payments goes.
    read_records(&kafka, &kafka.topics.state, created.len()).await;
    payments.stop().await;

    // Started after the fact, with Payments gone: everything comes from Kafka.
    let service_a = spawn_service_a(&kafka, &unique("service-a")).await;
    for payment in &created {
        let id = payment["payment_id"].as_str().expect("id");
        let copy = eventually("service-a rebuilt the payment", || {
            get_json(&http, service_a.url(&format!("/payments/{id}")))
        })
        .await;
        assert_eq!(&copy, payment);
    }
    service_a.stop().await;
}
