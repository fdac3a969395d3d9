//! Payments' HTTP API on a real PostgreSQL event store (a database per test),
//! through `oneshot`, without a broker: writes end at the commit, and the
//! outbox relay, tested end to end elsewhere, publishes from there.

use std::str::FromStr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use event_store::EventStore;
use event_store::testing::{TestDatabase, until_count};
use payments_service::domain::Payment;
use payments_service::{AppState, Payments, app};
use serde_json::{Value, json};
use service_kit::auth::{Callers, Credentials, Rights, Token};
use shared_events::PaymentId;
use tower::ServiceExt;

/// Snapshots every 10 events, as configured by default.
const SNAPSHOT_EVERY: u64 = 10;

struct Harness {
    payments: Payments,
    router: Router,
    /// The callers Payments is configured with, as `cargo xtask
    /// credentials` makes them: ServiceB reads, the operator reads and
    /// refunds. Every request of [`Harness::send`] carries the operator's
    /// token unless it names another `Authorization`.
    credentials: Credentials,
    db: TestDatabase,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Harness {
    async fn new() -> Self {
        let db = TestDatabase::create().await;
        let payments = Payments::new(db.store.clone(), SNAPSHOT_EVERY);
        payments.migrate().await.expect("migrate");
        let credentials = Credentials::generate();
        Self {
            router: app(
                AppState {
                    payments: payments.clone(),
                },
                credentials.callers_of(payments_service::SERVICE),
            ),
            payments,
            credentials,
            db,
        }
    }

    async fn send(&self, mut request: Request<Body>) -> Reply {
        request
            .headers_mut()
            .entry(header::AUTHORIZATION)
            .or_insert_with(|| self.credentials.operator.authorization());
        self.send_as_is(request).await
    }

    async fn send_as(&self, token: &Token, mut request: Request<Body>) -> Reply {
        request
            .headers_mut()
            .insert(header::AUTHORIZATION, token.authorization());
        self.send_as_is(request).await
    }

    async fn send_as_is(&self, request: Request<Body>) -> Reply {
        send_to(&self.router, request).await
    }

    /// Another Payments instance on the same event store, with its own
    /// memory, as a second process would be.
    fn other_instance(&self) -> Router {
        app(
            AppState {
                payments: Payments::new(self.payments.store().clone(), SNAPSHOT_EVERY),
            },
            self.credentials.callers_of(payments_service::SERVICE),
        )
    }

    /// ServiceB's callback to `router`: `GET /payments/{id}` naming the
    /// notification it is made for, whose id is the stored event's.
    async fn callback(&self, router: &Router, id: &str, event: &str) -> Reply {
        let request = Request::get(format!("/payments/{id}"))
            .header(header::AUTHORIZATION, self.credentials.service_b.authorization())
            .header("x-causation-id", event)
            .body(Body::empty())
            .expect("request");
        send_to(router, request).await
    }

    /// A plain `GET /payments/{id}` to `router`.
    async fn read(&self, router: &Router, id: &str) -> Reply {
        let request = Request::get(format!("/payments/{id}"))
            .header(header::AUTHORIZATION, self.credentials.service_b.authorization())
            .body(Body::empty())
            .expect("request");
        send_to(router, request).await
    }

    /// The ids of payment `id`'s stored events, in version order: the ids
    /// of its notifications.
    async fn event_ids(&self, id: &str) -> Vec<String> {
        let events = self.get(&format!("/payments/{id}/events")).await;
        events
            .body
            .as_array()
            .expect("array")
            .iter()
            .map(|e| e["event_id"].as_str().expect("event_id").to_owned())
            .collect()
    }
}

/// `request` to `router`, its answer read whole.
async fn send_to(router: &Router, request: Request<Body>) -> Reply {
    let response = router.clone().oneshot(request).await.expect("infallible");
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("JSON body, got {bytes:?}"))
    };
    Reply {
        status,
        headers,
        body,
    }
}

impl Harness {
    async fn post(&self, path: &str, body: impl Into<Body>, headers: &[(&str, &str)]) -> Reply {
        self.send(post(path, body, headers)).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).expect("request"))
            .await
    }

    async fn create(&self) -> Value {
        let reply = self.post("/payments", valid().to_string(), &[]).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body
    }

    async fn refund(&self, id: &str, amount: i64, if_match: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = if_match.map(|v| ("if-match", v)).into_iter().collect();
        self.send(refund(id, amount, &headers)).await
    }

    /// Sends `requests` so that their writes make one group commit: while
    /// a first payment's commit is held back, each request in turn, once
    /// the one before waits for the next group. Their replies, in order.
    async fn send_in_one_group(self: &Arc<Self>, requests: Vec<Request<Body>>) -> Vec<Reply> {
        let held = self.db.hold_appends().await;
        let spawn = |request| {
            let harness = Arc::clone(self);
            tokio::spawn(async move { harness.send(request).await })
        };
        let first = spawn(post("/payments", valid().to_string(), &[]));
        held.until_waited_on_by(1).await;
        let mut sent = Vec::new();
        for request in requests {
            sent.push(spawn(request));
            until_count("writes wait for the next group", sent.len(), || {
                self.payments.waiting_writes()
            })
            .await;
        }
        held.release().await;
        assert_eq!(first.await.expect("request").status, StatusCode::CREATED);
        let mut replies = Vec::new();
        for reply in sent {
            replies.push(reply.await.expect("request"));
        }
        replies
    }

    /// The transaction that wrote each event of payment `id`, by version.
    async fn writers(&self, id: &str) -> Vec<i64> {
        sqlx::query_scalar(
            "SELECT transaction_id::text::bigint FROM events WHERE stream_id = $1 ORDER BY version",
        )
        .bind(format!("payment-{id}"))
        .fetch_all(self.payments.store().pool())
        .await
        .expect("read the writing transactions")
    }
}

/// A JSON POST of `body` to `path`, with `headers`.
fn post(path: &str, body: impl Into<Body>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(body.into()).expect("request")
}

/// A refund of `amount` of payment `id`, with `headers`.
fn refund(id: &str, amount: i64, headers: &[(&str, &str)]) -> Request<Body> {
    let body = json!({"amount": amount, "reason": "damaged"}).to_string();
    post(&format!("/payments/{id}/refunds"), body, headers)
}

fn valid() -> Value {
    json!({"customer_id": "c-1", "order_id": "o-1", "amount": 1999, "currency": "EUR"})
}

fn with(field: &str, value: Value) -> String {
    let mut body = valid();
    body[field] = value;
    body.to_string()
}

fn id_of(payment: &Value) -> String {
    payment["payment_id"].as_str().expect("payment_id").to_owned()
}

fn etag(reply: &Reply) -> Option<&str> {
    reply.headers.get(header::ETAG).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_valid_payment_is_stored_as_a_stream() {
    let harness = Harness::new().await;
    let reply = harness.post("/payments", valid().to_string(), &[]).await;

    assert_eq!(reply.status, StatusCode::CREATED);
    let id = id_of(&reply.body);
    assert!(PaymentId::parse(&id).is_ok());
    assert_eq!(
        reply.headers[header::LOCATION],
        format!("/payments/{id}").as_str()
    );
    assert_eq!(etag(&reply), Some("\"1\""));
    assert_eq!(reply.body["amount"], 1999);
    assert_eq!(reply.body["refunded"], 0);
    assert_eq!(reply.body["version"], 1);

    let fetched = harness.get(&format!("/payments/{id}")).await;
    assert_eq!((fetched.status, &fetched.body), (StatusCode::OK, &reply.body));
    assert_eq!(etag(&fetched), Some("\"1\""));

    let events = harness.get(&format!("/payments/{id}/events")).await;
    assert_eq!(events.status, StatusCode::OK);
    let events = events.body.as_array().expect("array").clone();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "payments.payment-received");
    assert_eq!(events[0]["version"], 1);
    assert_eq!(events[0]["data"]["payment_id"], id.as_str());
}

#[tokio::test]
async fn bad_input_gets_a_4xx_naming_the_problem_and_stores_nothing() {
    let harness = Harness::new().await;
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
        let reply = harness.post("/payments", body, &[]).await;
        assert_eq!(reply.status, expected_status, "{case}: {}", reply.body);
        assert!(reply.headers.get(header::LOCATION).is_none(), "{case}");
        let text = reply.body.to_string();
        assert!(
            reply.body["error"].is_string() && reply.body["message"].is_string(),
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
    let reply = harness.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no content type: {}",
        reply.body
    );

    let stored = harness.payments.store().read_all(0, 10).await.expect("read");
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
}

#[tokio::test]
async fn get_payment_distinguishes_malformed_and_unknown_ids() {
    let harness = Harness::new().await;
    for path in ["/payments/not-a-uuid", "/payments/not-a-uuid/events"] {
        let reply = harness.get(path).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.body["error"], "invalid_payment_id");
    }
    let unknown = PaymentId::new();
    for path in [
        format!("/payments/{unknown}"),
        format!("/payments/{unknown}/events"),
    ] {
        let reply = harness.get(&path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(reply.body["error"], "not_found");
    }
}

#[tokio::test]
async fn an_idempotency_key_makes_a_retry_return_the_same_payment() {
    let harness = Harness::new().await;
    let key = [("idempotency-key", "order-o-1-attempt")];
    let first = harness.post("/payments", valid().to_string(), &key).await;
    let retry = harness.post("/payments", valid().to_string(), &key).await;
    assert_eq!(
        (first.status, retry.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(first.body, retry.body, "the same payment");
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(
        harness
            .payments
            .store()
            .read_all(0, 10)
            .await
            .expect("read")
            .len(),
        1
    );

    let other = harness.post("/payments", with("amount", json!(5)), &key).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.body["error"], "idempotency_key_reused");

    let without_key = harness.post("/payments", valid().to_string(), &[]).await;
    assert_ne!(
        id_of(&without_key.body),
        id_of(&first.body),
        "no key: a new payment"
    );
    assert_eq!(
        harness
            .payments
            .store()
            .read_all(0, 10)
            .await
            .expect("read")
            .len(),
        2
    );

    let empty_key = harness
        .post("/payments", valid().to_string(), &[("idempotency-key", " ")])
        .await;
    assert_eq!(empty_key.status, StatusCode::BAD_REQUEST);
}

/// The number of events stored in `harness`'s database.
async fn stored_events(harness: &Harness) -> usize {
    harness
        .payments
        .store()
        .read_all(0, 1000)
        .await
        .expect("read")
        .len()
}

#[tokio::test]
async fn a_refund_retried_with_its_idempotency_key_is_applied_once() {
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);
    let path = format!("/payments/{id}/refunds");
    let body = json!({"amount": 300, "reason": "damaged"}).to_string();
    let key = [("idempotency-key", "refund-1")];

    // The response was lost; the client sends the same request again.
    let first = harness.post(&path, body.clone(), &key).await;
    let retry = harness.post(&path, body.clone(), &key).await;
    assert_eq!(
        (first.status, retry.status),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{} {}",
        first.body,
        retry.body
    );
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(retry.body["refunded"], 300, "refunded once: {}", retry.body);
    assert_eq!(retry.body["version"], 2);
    assert_eq!(stored_events(&harness).await, 2, "received, refunded once");

    // Decided on version 1 and retried after it succeeded: still the same
    // refund, not a conflict.
    let decided = [("idempotency-key", "refund-2"), ("if-match", "\"2\"")];
    let second = harness.post(&path, body.clone(), &decided).await;
    let second_retry = harness.post(&path, body.clone(), &decided).await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);
    assert_eq!(second_retry.status, StatusCode::CREATED, "{}", second_retry.body);
    assert_eq!(second_retry.body["refunded"], 600);
    assert_eq!(stored_events(&harness).await, 3);

    // The same key with another request is refused, and refunds nothing.
    let other = json!({"amount": 1, "reason": "damaged"}).to_string();
    let reused = harness.post(&path, other, &key).await;
    assert_eq!(reused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reused.body["error"], "idempotency_key_reused");
    assert_eq!(stored_events(&harness).await, 3);

    // A refund that is refused leaves its key free for a corrected retry.
    let too_much = json!({"amount": 5000, "reason": "damaged"}).to_string();
    let fix = [("idempotency-key", "refund-3")];
    assert_eq!(
        harness.post(&path, too_much, &fix).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(harness.post(&path, body, &fix).await.status, StatusCode::CREATED);
    assert_eq!(stored_events(&harness).await, 4);
}

#[tokio::test]
async fn idempotency_keys_belong_to_one_customer_and_one_operation() {
    let harness = Harness::new().await;
    let key = [("idempotency-key", "attempt-1")];
    let first = harness.post("/payments", valid().to_string(), &key).await;
    let other_customer = harness
        .post("/payments", with("customer_id", json!("c-2")), &key)
        .await;
    assert_eq!(
        (first.status, other_customer.status),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{}",
        other_customer.body
    );
    assert!(other_customer.headers.get("idempotent-replayed").is_none());
    assert_ne!(id_of(&first.body), id_of(&other_customer.body));

    // The same key on a refund of the first customer's payment: another operation.
    let id = id_of(&first.body);
    let refund = json!({"amount": 100, "reason": "damaged"}).to_string();
    let refunded = harness
        .post(&format!("/payments/{id}/refunds"), refund, &key)
        .await;
    assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.body);
    assert!(refunded.headers.get("idempotent-replayed").is_none());
    assert_eq!(stored_events(&harness).await, 3);
}

#[tokio::test]
async fn an_expired_idempotency_key_is_a_new_request() {
    let harness = Harness::new().await;
    let key = [("idempotency-key", "order-o-1")];
    let first = harness.post("/payments", valid().to_string(), &key).await;
    assert_eq!(first.status, StatusCode::CREATED);
    // A day later (the default lifetime).
    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(harness.payments.store().pool())
        .await
        .expect("age the key");

    let later = harness.post("/payments", with("amount", json!(5)), &key).await;
    assert_eq!(later.status, StatusCode::CREATED, "{}", later.body);
    assert_ne!(id_of(&later.body), id_of(&first.body));
    let retry = harness.post("/payments", with("amount", json!(5)), &key).await;
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(id_of(&retry.body), id_of(&later.body));

    sqlx::query("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'")
        .execute(harness.payments.store().pool())
        .await
        .expect("age the key");
    assert_eq!(harness.payments.purge_expired_keys().await.expect("purge"), 1);
}

#[tokio::test]
async fn the_event_stream_is_read_a_page_at_a_time() {
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);
    for _ in 0..4 {
        assert_eq!(harness.refund(&id, 10, None).await.status, StatusCode::CREATED);
    }

    let mut versions = Vec::new();
    let mut next = Some(format!("/payments/{id}/events?limit=2"));
    while let Some(uri) = next {
        let reply = harness.get(&uri).await;
        assert_eq!(reply.status, StatusCode::OK, "{uri}: {}", reply.body);
        versions.extend(
            reply
                .body
                .as_array()
                .expect("a list")
                .iter()
                .map(|e| e["version"].clone()),
        );
        next = reply.headers.get(header::LINK).map(|link| {
            let link = link.to_str().expect("ascii");
            let (target, _) = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .expect("a next link");
            target.to_owned()
        });
    }
    assert_eq!(versions, [json!(1), json!(2), json!(3), json!(4), json!(5)]);

    let all = harness
        .get(&format!("/payments/{id}/events?from_version=4"))
        .await;
    assert_eq!(all.body.as_array().map(Vec::len), Some(2));
    assert!(all.headers.get(header::LINK).is_none());
    for bad in ["limit=0", "limit=1001", "from_version=x"] {
        let reply = harness.get(&format!("/payments/{id}/events?{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}: {}", reply.body);
    }
}

#[tokio::test]
async fn refunds_move_the_version_and_check_if_match() {
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);

    let first = harness.refund(&id, 500, Some("\"1\"")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert_eq!(
        (first.body["refunded"].clone(), first.body["version"].clone()),
        (json!(500), json!(2))
    );
    assert_eq!(etag(&first), Some("\"2\""));

    let stale = harness.refund(&id, 100, Some("\"1\"")).await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.body["error"], "version_conflict");

    let unconditional = harness.refund(&id, 100, None).await;
    assert_eq!(unconditional.status, StatusCode::CREATED);
    assert_eq!(unconditional.body["refunded"], 600);

    let events = harness
        .get(&format!("/payments/{id}/events?from_version=2"))
        .await;
    let types: Vec<_> = events
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        types,
        [
            json!("payments.payment-refunded"),
            json!("payments.payment-refunded")
        ]
    );
}

#[tokio::test]
async fn refunds_that_break_the_rules_are_refused() {
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);
    let cases = [
        (2000, None, StatusCode::UNPROCESSABLE_ENTITY, "refund_refused"),
        (0, None, StatusCode::UNPROCESSABLE_ENTITY, "amount"),
        (-5, None, StatusCode::UNPROCESSABLE_ENTITY, "amount"),
        (100, Some("3"), StatusCode::BAD_REQUEST, "if-match"),
        (100, Some("\"abc\""), StatusCode::BAD_REQUEST, "if-match"),
    ];
    for (amount, if_match, status, named) in cases {
        let reply = harness.refund(&id, amount, if_match).await;
        assert_eq!(reply.status, status, "{amount} {if_match:?}: {}", reply.body);
        assert!(reply.body.to_string().contains(named), "{}", reply.body);
    }
    let unknown = harness.refund(&PaymentId::new().to_string(), 100, None).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    let no_reason = harness
        .post(
            &format!("/payments/{id}/refunds"),
            json!({"amount": 1}).to_string(),
            &[],
        )
        .await;
    assert_eq!(no_reason.status, StatusCode::UNPROCESSABLE_ENTITY);

    let fetched = harness.get(&format!("/payments/{id}")).await;
    assert_eq!(
        (fetched.body["refunded"].clone(), fetched.body["version"].clone()),
        (json!(0), json!(1))
    );
}

#[tokio::test]
async fn a_conflicting_refund_fails_alone_in_its_group_and_the_other_writes_commit() {
    let harness = Arc::new(Harness::new().await);
    let id = id_of(&harness.create().await);
    let lost = [("if-match", "\"1\""), ("idempotency-key", "lost")];
    let replies = harness
        .send_in_one_group(vec![
            refund(&id, 100, &[("if-match", "\"1\"")]),
            // Decided on version 1 too: the refund before in its group won.
            refund(&id, 200, &lost),
            post("/payments", valid().to_string(), &[]),
            // Decided on version 1, without If-Match: decided again after
            // the group, on version 2.
            refund(&id, 300, &[]),
        ])
        .await;
    let statuses: Vec<_> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::CREATED,
            StatusCode::CONFLICT,
            StatusCode::CREATED,
            StatusCode::CREATED
        ],
        "{:?}",
        replies.iter().map(|r| &r.body).collect::<Vec<_>>()
    );
    assert_eq!(replies[1].body["error"], "version_conflict");
    assert_eq!(replies[3].body["version"], 3);
    // The conflict undid its key's claim with its append: the same request
    // again is its own conflict, not the replay of a refund never made.
    let again = harness.send(refund(&id, 200, &lost)).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);

    let payment = harness.get(&format!("/payments/{id}")).await;
    assert_eq!(
        (payment.body["refunded"].clone(), payment.body["version"].clone()),
        (json!(400), json!(3))
    );
    // The refund and the new payment committed together.
    let refunded = harness.writers(&id).await;
    let created = harness.writers(&id_of(&replies[2].body)).await;
    assert_eq!(refunded[1], created[0], "one transaction");
    assert_ne!(refunded[2], created[0], "the refund decided again came after");
}

#[tokio::test]
async fn two_requests_with_one_idempotency_key_in_one_group_write_once_and_both_get_the_first_outcome() {
    let harness = Arc::new(Harness::new().await);
    let id = id_of(&harness.create().await);
    let pay = [("idempotency-key", "pay-once")];
    let repay = [("idempotency-key", "refund-once")];
    let replies = harness
        .send_in_one_group(vec![
            post("/payments", valid().to_string(), &pay),
            post("/payments", valid().to_string(), &pay),
            refund(&id, 100, &repay),
            refund(&id, 100, &repay),
        ])
        .await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let replayed: Vec<_> = replies
        .iter()
        .map(|r| r.headers.get("idempotent-replayed").is_some())
        .collect();
    assert_eq!(replayed, [false, true, false, true]);
    assert_eq!(replies[0].body, replies[1].body, "the same payment");
    assert_eq!(replies[2].body, replies[3].body, "the same refund");
    assert_eq!(
        (
            replies[3].body["refunded"].clone(),
            replies[3].body["version"].clone()
        ),
        (json!(100), json!(2))
    );
    // The first payment, the one held back, the keyed payment, one refund.
    assert_eq!(stored_events(&harness).await, 4);
}

/// Twenty refunds of 10 of payment `id` at once, each with `if_match`; the
/// harness back, and their statuses.
async fn twenty_concurrent_refunds(
    harness: Harness,
    id: &str,
    if_match: Option<&'static str>,
) -> (std::sync::Arc<Harness>, Vec<StatusCode>) {
    let harness = std::sync::Arc::new(harness);
    let refunds: Vec<_> = (0..20)
        .map(|_| {
            let (harness, id) = (std::sync::Arc::clone(&harness), id.to_owned());
            tokio::spawn(async move { harness.refund(&id, 10, if_match).await.status })
        })
        .collect();
    let mut statuses = Vec::new();
    for refund in refunds {
        statuses.push(refund.await.expect("request"));
    }
    (harness, statuses)
}

#[tokio::test]
async fn of_twenty_concurrent_refunds_on_one_version_exactly_one_succeeds() {
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);
    let (harness, statuses) = twenty_concurrent_refunds(harness, &id, Some("\"1\"")).await;
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let conflicts = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((created, conflicts), (1, 19), "{statuses:?}");

    let events = harness.get(&format!("/payments/{id}/events")).await;
    let versions: Vec<_> = events
        .body
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["version"].clone())
        .collect();
    assert_eq!(versions, [json!(1), json!(2)]);
}

#[tokio::test]
async fn concurrent_refunds_without_if_match_are_all_applied_and_none_is_a_conflict() {
    // Without If-Match the caller asked for no version check: a refund that
    // loses the append race to another is decided again, not answered 409.
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);
    let (harness, statuses) = twenty_concurrent_refunds(harness, &id, None).await;
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED), "{statuses:?}");
    let payment = harness.get(&format!("/payments/{id}")).await;
    assert_eq!(
        (payment.body["version"].clone(), payment.body["refunded"].clone()),
        (json!(21), json!(200))
    );
}

#[tokio::test]
async fn a_callback_naming_an_event_this_instance_wrote_is_answered_without_the_database() {
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);
    assert_eq!(
        harness.refund(&id, 500, Some("\"1\"")).await.status,
        StatusCode::CREATED
    );
    let events = harness.event_ids(&id).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    harness.payments.store().pool().close().await;
    // Both events were appended here: the answer is the state after the
    // newest, from memory, whichever the callback names.
    for event in &events {
        let reply = harness.callback(&harness.router, &id, event).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(
            (reply.body["version"].clone(), reply.body["refunded"].clone()),
            (json!(2), json!(500))
        );
        assert_eq!(etag(&reply), Some("\"2\""));
    }
    // Naming no event, or one this instance has not seen, reads the store.
    let plain = harness.read(&harness.router, &id).await;
    assert_eq!(plain.status, StatusCode::SERVICE_UNAVAILABLE, "{}", plain.body);
    let other = harness.callback(&harness.router, &id, &unknown).await;
    assert_eq!(other.status, StatusCode::SERVICE_UNAVAILABLE, "{}", other.body);
}

#[tokio::test]
async fn a_read_after_a_refunds_201_never_shows_the_state_before_it() {
    let harness = std::sync::Arc::new(Harness::new().await);
    let id = id_of(&harness.create().await);
    let received = harness.event_ids(&id).await.remove(0);
    let other = harness.other_instance();

    // Concurrent refunds: each, once answered, reads at once on the
    // instance that answered, naming the payment's first event as a
    // callback still in flight would, and plainly. Appends finish in any
    // order, so an older state may come to memory after a newer one.
    let refunds: Vec<_> = (0..20)
        .map(|_| {
            let (harness, id, received) = (std::sync::Arc::clone(&harness), id.clone(), received.clone());
            tokio::spawn(async move {
                let refunded = harness.refund(&id, 10, None).await;
                assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.body);
                let acknowledged = refunded.body["version"].as_u64().expect("version");
                let callback = harness.callback(&harness.router, &id, &received).await;
                let plain = harness.read(&harness.router, &id).await;
                for read in [callback, plain] {
                    let seen = read.body["version"].as_u64().expect("version");
                    assert!(
                        seen >= acknowledged,
                        "read version {seen} after a 201 of version {acknowledged}"
                    );
                }
            })
        })
        .collect();
    for refund in refunds {
        refund.await.expect("refund and reads");
    }

    // Across two instances, refunds alternating between them: after each
    // 201, a plain read on either, and the callback for the refund's own
    // notification on either, hold the refund.
    let instances = [&harness.router, &other];
    for round in 0..6 {
        let (writer, reader) = (instances[round % 2], instances[(round + 1) % 2]);
        let request = Request::post(format!("/payments/{id}/refunds"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::AUTHORIZATION,
                harness.credentials.operator.authorization(),
            )
            .body(Body::from(json!({"amount": 10, "reason": "damaged"}).to_string()))
            .expect("request");
        let refunded = send_to(writer, request).await;
        assert_eq!(refunded.status, StatusCode::CREATED, "{}", refunded.body);
        let acknowledged = refunded.body["version"].as_u64().expect("version");
        let notification = harness.event_ids(&id).await.pop().expect("the refund's event");
        for instance in [writer, reader] {
            let reads = [
                harness.read(instance, &id).await,
                harness.callback(instance, &id, &notification).await,
            ];
            for read in reads {
                assert_eq!(read.status, StatusCode::OK, "{}", read.body);
                assert_eq!(read.body["version"].as_u64(), Some(acknowledged), "round {round}");
            }
        }
        // The writer answered the callback from memory: its state is the
        // one it acknowledged.
        let from_memory = harness.callback(writer, &id, &notification).await;
        assert_eq!(from_memory.body, refunded.body);
    }
}

#[tokio::test]
async fn a_snapshot_plus_tail_gives_the_same_state_as_every_event() {
    let harness = Harness::new().await;
    let id = id_of(&harness.create().await);
    for _ in 0..24 {
        assert_eq!(harness.refund(&id, 7, None).await.status, StatusCode::CREATED);
    }
    let payment_id = PaymentId::parse(&id).expect("id");
    let stream = payments_service::repository::stream_id(payment_id);
    let snapshot = harness
        .payments
        .store()
        .load_snapshot(&stream)
        .await
        .expect("load")
        .expect("snapshot");
    assert_eq!(snapshot.version, 20, "a snapshot every {SNAPSHOT_EVERY} events");

    let with_snapshot = harness.payments.load(payment_id).await.expect("load");
    let from_events = harness
        .payments
        .load_without_snapshot(payment_id)
        .await
        .expect("load");
    assert_eq!(with_snapshot, from_events);
    assert_eq!((with_snapshot.version, with_snapshot.refunded), (25, 24 * 7));

    // Loading really starts from the snapshot: tamper with it, and the
    // loaded state (not the one replayed from every event) shows it.
    let mut tampered = snapshot.state.clone();
    tampered["refunded"] = json!(1);
    sqlx::query("UPDATE snapshots SET state = $1 WHERE stream_id = $2")
        .bind(sqlx::types::Json(&tampered))
        .bind(&stream)
        .execute(harness.payments.store().pool())
        .await
        .expect("tamper");
    let loaded = harness.payments.load(payment_id).await.expect("load");
    assert_eq!(
        loaded.refunded,
        1 + 5 * 7,
        "snapshot (1) plus the 5 refunds after it"
    );
    let replayed = harness
        .payments
        .load_without_snapshot(payment_id)
        .await
        .expect("load");
    assert_eq!(replayed, from_events);

    // As of an earlier version (what the outbox relay publishes after a
    // restart): the fold of the events up to it, from the snapshot only
    // when the snapshot is not newer.
    let store = harness.payments.store();
    let stored = store.read_stream(&stream, 1).await.expect("events");
    let events: Vec<_> = stored
        .iter()
        .map(|e| payments_service::repository::decode(e).expect("decodes"))
        .collect();
    for version in [0_u64, 1, 19, 20, 21, 25] {
        let at = payments_service::repository::load_at(store, payment_id, version)
            .await
            .expect("load_at");
        let upto = usize::try_from(version).expect("small");
        let folded = Payment::replay(None, &events[..upto]).expect("valid history");
        if version < 20 {
            assert_eq!(at, folded, "version {version}: from the events alone");
        } else {
            let at = at.expect("a state");
            let expected = 1 + i64::try_from(version - 20).expect("small") * 7;
            assert_eq!(
                (at.version, at.refunded),
                (version, expected),
                "from the (tampered) snapshot"
            );
        }
    }
}

#[tokio::test]
async fn reading_needs_a_callers_token_refunding_the_refund_right_and_paying_neither() {
    let harness = Harness::new().await;
    let payment = harness.create().await;
    let id = id_of(&payment);
    let refund = json!({"amount": 1, "reason": "damaged"}).to_string();
    let requests = || {
        [
            Request::get(format!("/payments/{id}")).body(Body::empty()),
            Request::get(format!("/payments/{id}/events")).body(Body::empty()),
            Request::post(format!("/payments/{id}/refunds"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(refund.clone())),
        ]
        .map(|request| request.expect("request"))
    };
    for authorization in [None, Some(Token::generate().authorization())] {
        for mut request in requests() {
            let what = format!("{} {} with {authorization:?}", request.method(), request.uri());
            if let Some(value) = &authorization {
                request.headers_mut().insert(header::AUTHORIZATION, value.clone());
            }
            let reply = harness.send_as_is(request).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{what}: {}", reply.body);
            assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer", "{what}");
            assert_eq!(reply.body["error"], "unauthorized", "{what}");
        }
    }
    // ServiceB's token reads, and is refused the refund: 403, it is known.
    let [read, events, refund_request] = requests();
    for request in [read, events] {
        let what = format!("{} {}", request.method(), request.uri());
        let reply = harness.send_as(&harness.credentials.service_b, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{what} with ServiceB's token");
    }
    let forbidden = harness
        .send_as(&harness.credentials.service_b, refund_request)
        .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN, "{}", forbidden.body);
    assert_eq!(forbidden.body["error"], "forbidden");
    let unchanged = harness.get(&format!("/payments/{id}")).await;
    assert_eq!(unchanged.body["version"], 1, "the refused refunds did nothing");
    // The operator was given both rights.
    for request in requests() {
        let what = format!("{} {}", request.method(), request.uri());
        let reply = harness.send(request).await;
        assert!(
            reply.status.is_success(),
            "{what} with the operator's token: {}",
            reply.status
        );
    }
    let open = harness
        .send_as_is(
            Request::get("/openapi.json")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(open.status, StatusCode::OK, "the contract is public");
    let scheme = &open.body["components"]["securitySchemes"]["caller_token"];
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    assert_eq!(
        open.body["paths"]["/payments/{id}"]["get"]["security"][0]["caller_token"],
        json!([])
    );
    assert!(open.body["paths"]["/payments"]["post"].get("security").is_none());
}

#[tokio::test]
async fn an_unreachable_database_is_a_503() {
    // Nothing listens on port 1; the pool connects lazily.
    let options =
        sqlx::postgres::PgConnectOptions::from_str("postgres://postgres@127.0.0.1:1/none").expect("url");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(2))
        .connect_lazy_with(options);
    let router = app(
        AppState {
            payments: Payments::new(EventStore::new(pool), SNAPSHOT_EVERY),
        },
        Callers::of([("service-b", Rights::READ, &Token::generate())]),
    );
    let request = Request::post("/payments")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(valid().to_string()))
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// The stored events the API lists, turned back into domain events.
fn domain_events(listed: &Value) -> Vec<payments_service::domain::PaymentEvent> {
    use payments_service::domain::PaymentEvent;
    listed
        .as_array()
        .expect("array")
        .iter()
        .map(|e| match e["type"].as_str() {
            Some("payments.payment-received") => {
                PaymentEvent::Received(serde_json::from_value(e["data"].clone()).expect("received"))
            }
            Some("payments.payment-refunded") => {
                PaymentEvent::Refunded(serde_json::from_value(e["data"].clone()).expect("refunded"))
            }
            other => panic!("unexpected event type {other:?}"),
        })
        .collect()
}

/// For generated refund sequences, folding the events the service lists
/// gives exactly the state it reports.
#[test]
fn rebuilding_from_the_events_gives_the_state_the_service_reports() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let harness = runtime.block_on(Harness::new());
    let mut runner = TestRunner::new(Config::with_cases(24));
    let inputs = (1i64..5_000, prop::collection::vec(1i64..3_000, 0..12));
    runner
        .run(&inputs, |(total, refunds)| {
            runtime.block_on(async {
                let body = with("amount", json!(total));
                let created = harness.post("/payments", body, &[]).await;
                prop_assert_eq!(created.status, StatusCode::CREATED);
                let id = id_of(&created.body);
                let mut accepted = 0;
                for amount in refunds {
                    let reply = harness.refund(&id, amount, None).await;
                    match reply.status {
                        StatusCode::CREATED => accepted += amount,
                        StatusCode::UNPROCESSABLE_ENTITY => prop_assert!(accepted + amount > total),
                        other => prop_assert!(false, "unexpected {other}: {}", reply.body),
                    }
                }
                let reported = harness.get(&format!("/payments/{id}")).await.body;
                let listed = harness.get(&format!("/payments/{id}/events")).await.body;
                let rebuilt = payments_service::domain::Payment::replay(None, &domain_events(&listed))
                    .expect("valid history")
                    .expect("a payment");
                prop_assert_eq!(
                    serde_json::to_value(rebuilt.to_state()).expect("json"),
                    reported.clone()
                );
                prop_assert_eq!(reported["refunded"].as_i64(), Some(accepted));
                Ok(())
            })
        })
        .expect("the reported state is the fold of the events");
}

/// A payment as the release before `PaymentReceived` v2 stored it: a v1
/// event (no `payment_method`), refunded, with a snapshot of that shape.
#[tokio::test]
async fn payments_stored_before_v2_are_upcast_when_loaded_and_old_snapshots_passed_over() {
    use event_store::{EventMetadata, ExpectedVersion, NewEvent};

    let harness = Harness::new().await;
    let store = harness.payments.store();
    let payment_id = PaymentId::new();
    let stream = payments_service::repository::stream_id(payment_id);
    let v1 = json!({
        "payment_id": payment_id.to_string(), "customer_id": "c-1", "order_id": "o-1",
        "amount": 1999, "currency": "EUR", "received_at": "2026-11-27T10:00:00Z",
    });
    let refund = json!({
        "payment_id": payment_id.to_string(), "refund_id": uuid::Uuid::now_v7(), "amount": 100,
        "reason": "damaged", "refunded_at": "2026-11-27T10:01:00Z",
    });
    let event = |event_type: &str, data: Value| NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        data,
        metadata: EventMetadata::default(),
    };
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            &[
                event("payments.payment-received", v1.clone()),
                event("payments.payment-refunded", refund),
            ],
        )
        .await
        .expect("append v1 events");

    // Upcast: the method is unknown, everything else as stored.
    let loaded = harness
        .payments
        .load(payment_id)
        .await
        .expect("a v1 stream loads");
    assert_eq!(
        loaded.received.payment_method,
        shared_events::PaymentMethod::Unknown
    );
    assert_eq!((loaded.version, loaded.refunded), (2, 100));
    let reply = harness.get(&format!("/payments/{payment_id}")).await;
    assert_eq!(reply.body["payment_method"], "unknown");

    // The old release's snapshot has no method either: it cannot be read
    // as the current state, and the events are replayed instead.
    let old_snapshot = json!({ "received": v1, "refunded": 100, "version": 2 });
    assert!(serde_json::from_value::<Payment>(old_snapshot.clone()).is_err());
    store
        .save_snapshot(&stream, 2, &old_snapshot)
        .await
        .expect("snapshot");
    assert_eq!(harness.payments.load(payment_id).await.expect("loads"), loaded);

    // Written now, a refund of it is stored at the current versions, and a
    // new payment as v2 with its method.
    assert_eq!(
        harness.refund(&payment_id.to_string(), 100, None).await.status,
        StatusCode::CREATED
    );
    let reply = harness
        .post("/payments", with("payment_method", json!("wallet")), &[])
        .await;
    assert_eq!(reply.body["payment_method"], "wallet");
    let new_id = PaymentId::parse(&id_of(&reply.body)).expect("id");
    let stored = store
        .read_stream(&payments_service::repository::stream_id(new_id), 1)
        .await
        .expect("read");
    assert_eq!(
        (stored[0].schema_version, &stored[0].data["payment_method"]),
        (2, &json!("wallet"))
    );

    // A version this Payments does not know is an error that says so, not
    // a guess.
    let future = PaymentId::new();
    let mut v3 = event("payments.payment-received", v1);
    v3.schema_version = 3;
    store
        .append(
            &payments_service::repository::stream_id(future),
            ExpectedVersion::NoStream,
            &[v3],
        )
        .await
        .expect("append");
    let error = harness.payments.load(future).await.expect_err("not read");
    assert!(error.to_string().contains("version 3"), "{error}");
}
