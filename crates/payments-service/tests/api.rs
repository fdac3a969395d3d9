//! Payments' HTTP API without a broker: handlers run through `oneshot`, with a
//! fake publisher that records or refuses events, and with the real Kafka
//! publisher pointed at a port where no broker listens.

use std::sync::Mutex;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use payments_service::publisher::PublishError;
use payments_service::{AppState, EventPublisher, KafkaPublisher, app};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde_json::{Value, json};
use service_kit::config::KafkaConfig;
use shared_events::{PaymentId, PaymentReceived};
use tower::ServiceExt;
use uuid::Uuid;

/// Records what it is asked to publish; refuses everything when `broker_down`.
#[derive(Debug, Default)]
struct FakePublisher {
    broker_down: bool,
    published: Mutex<Vec<PaymentReceived>>,
}

impl EventPublisher for FakePublisher {
    async fn payment_received(&self, payment: &PaymentReceived, _: Uuid) -> Result<(), PublishError> {
        if self.broker_down {
            return Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut).into());
        }
        self.published.lock().expect("lock").push(payment.clone());
        Ok(())
    }
}

struct Harness<P> {
    state: AppState<P>,
    router: Router,
}

impl<P: EventPublisher> Harness<P> {
    fn new(publisher: P) -> Self {
        let state = AppState::new(publisher);
        Self {
            router: app(state.clone()),
            state,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Option<String>, Value) {
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let location = response
            .headers()
            .get(header::LOCATION)
            .map(|v| v.to_str().expect("ascii").to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("JSON body, got {bytes:?}"))
        };
        (status, location, body)
    }

    async fn post(&self, body: impl Into<Body>) -> (StatusCode, Option<String>, Value) {
        let request = Request::post("/payments")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.into())
            .expect("request");
        self.send(request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(Request::get(path).body(Body::empty()).expect("request"))
            .await;
        (status, body)
    }
}

fn valid() -> Value {
    json!({"customer_id": "c-1", "order_id": "o-1", "amount": 1999, "currency": "EUR"})
}

fn with(field: &str, value: Value) -> String {
    let mut body = valid();
    body[field] = value;
    body.to_string()
}

#[tokio::test]
async fn a_valid_payment_is_published_then_created() {
    let harness = Harness::new(FakePublisher::default());
    let (status, location, body) = harness.post(valid().to_string()).await;

    assert_eq!(status, StatusCode::CREATED);
    let id = body["payment_id"].as_str().expect("payment_id");
    assert!(PaymentId::parse(id).is_ok());
    assert_eq!(location, Some(format!("/payments/{id}")));
    assert_eq!(body["amount"], 1999);
    assert_eq!(body["currency"], "EUR");
    assert_eq!(body["customer_id"], "c-1");
    assert_eq!(body["order_id"], "o-1");
    assert!(body["received_at"].is_string());

    let published = harness.state.publisher.published.lock().expect("lock").clone();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].payment_id.to_string(), id);

    let (status, fetched) = harness.get(&format!("/payments/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, body);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_problem_and_publishes_nothing() {
    let harness = Harness::new(FakePublisher::default());
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            "{\"amount\": ".to_owned(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "not an object",
            "[1, 2]".to_owned(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "amount as string",
            with("amount", json!("19.99")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount",
        ),
        (
            "amount as float",
            with("amount", json!(19.99)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount",
        ),
        (
            "missing field",
            json!({"customer_id": "c-1", "order_id": "o-1", "amount": 1}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency",
        ),
        (
            "unknown field",
            with("ammount", json!(5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "ammount",
        ),
        (
            "zero amount",
            with("amount", json!(0)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount",
        ),
        (
            "negative amount",
            with("amount", json!(-5)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "amount",
        ),
        (
            "bad currency",
            with("currency", json!("EURO")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency",
        ),
        (
            "lower-case currency",
            with("currency", json!("eur")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency",
        ),
        (
            "empty customer",
            with("customer_id", json!("")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "customer_id",
        ),
        (
            "oversized body",
            with("order_id", json!("x".repeat(64 * 1024))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (case, body, expected_status, named) in cases {
        let (status, location, error) = harness.post(body).await;
        assert_eq!(status, expected_status, "{case}: {error}");
        assert_eq!(location, None, "{case}");
        let text = error.to_string();
        assert!(
            error["error"].is_string() && error["message"].is_string(),
            "{case}: {text}"
        );
        assert!(
            text.contains(named),
            "{case}: the error should name `{named}`: {text}"
        );
    }

    let request = Request::post("/payments")
        .body(Body::from(valid().to_string()))
        .expect("request");
    let (status, _, error) = harness.send(request).await;
    assert_eq!(
        status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no content type: {error}"
    );

    assert!(harness.state.publisher.published.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn validation_reports_every_invalid_field() {
    let harness = Harness::new(FakePublisher::default());
    let body = json!({"customer_id": "", "order_id": "o-1", "amount": -1, "currency": "XXX"});
    let (status, _, error) = harness.post(body.to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error["error"], "validation_failed");
    let fields: Vec<&str> = error["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["field"].as_str())
        .collect();
    assert_eq!(fields, ["customer_id", "amount", "currency"]);
}

#[tokio::test]
async fn get_payment_distinguishes_malformed_and_unknown_ids() {
    let harness = Harness::new(FakePublisher::default());
    let (status, error) = harness.get("/payments/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["error"], "invalid_payment_id");

    let (status, error) = harness.get(&format!("/payments/{}", PaymentId::new())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error["error"], "not_found");
}

#[tokio::test]
async fn a_refused_publish_is_a_503_and_leaves_no_payment() {
    let harness = Harness::new(FakePublisher {
        broker_down: true,
        ..FakePublisher::default()
    });
    let (status, location, error) = harness.post(valid().to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(location, None);
    assert_eq!(error["error"], "broker_unavailable");
    assert!(
        !error.to_string().contains("MessageTimedOut"),
        "no internals: {error}"
    );
    assert!(
        harness.state.store.is_empty(),
        "a payment the client was told failed must not exist"
    );
}

#[tokio::test]
async fn an_unreachable_broker_is_a_503_not_a_201() {
    // A real idempotent producer, but nothing listens on port 1.
    let kafka = KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".to_owned(),
        ..KafkaConfig::local()
    };
    let producer =
        service_kit::kafka::producer(&kafka, "payments-test", Duration::from_millis(1500)).expect("producer");
    let harness = Harness::new(KafkaPublisher::new(producer, kafka.topics.clone()));

    let (status, location, error) = harness.post(valid().to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert_eq!(location, None);
    assert_eq!(error["error"], "broker_unavailable");
    assert!(harness.state.store.is_empty());
}
