//! HTTP inputs: a request as a client sends it on the wire (HTTP/1.1: the
//! request line, headers, a blank line, the body), parsed with the parser
//! hyper uses, then handed to a service's router as `service_kit::http::serve`
//! serves it. Seeds and crash files are plain requests a person can read and
//! replay with `curl`; the seeds called `regression-*` once crashed a
//! target, and are replayed on every run.
//!
//! What must hold of every answer, whatever the request:
//!
//! - no panic (one fails the target), and never a 500: nothing a client
//!   sends is an internal error;
//! - the status is one the service's OpenAPI document gives for the
//!   operation the request reached; 405 for a route without that method,
//!   404 for no route;
//! - a 503 is only "the database is unavailable" (with the database down,
//!   every input that gets as far as it gets one: see
//!   [`crate::unreachable_database`]; with `FUZZ_DATABASE_URL` it is up,
//!   and they are stored and read for real: see [`crate::database`]);
//! - every error answer is the JSON `ErrorBody` (`error` and `message`),
//!   every success a JSON body.

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use event_store::EventStore;
use serde_json::Value;
use service_kit::startup::Database;
use shared_events::{Amount, Currency, CustomerId, OrderId, PaymentId, PaymentMethod, PaymentState};
use sqlx::postgres::PgPoolOptions;
use tower::ServiceExt;

use crate::{callers, runtime, unreachable_database};

/// The most headers hyper takes in a request (its default); it refuses more
/// before any router sees them.
const MAX_HEADERS: usize = 100;

/// The payment ServiceA's copy holds, so that its `GET /payments/{id}` can
/// answer 200; the seeds ask for it.
pub const KNOWN_PAYMENT: &str = "0190f3a2-7b4c-7d8e-9f00-112233445566";

/// `data` as the request hyper would hand the router, or `None` for what
/// hyper answers itself (400) without calling the router: no complete
/// request head, a malformed method, target or header.
///
/// The body is the rest of the input, framed as hyper would have framed it:
/// the input's own `Content-Length` and `Transfer-Encoding` are replaced by
/// the body's length, so a mutated length does not hide the body.
pub fn parse_request(data: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = head.parse(data).ok()? else {
        return None;
    };
    let method = Method::from_bytes(head.method?.as_bytes()).ok()?;
    let uri: Uri = head.path?.parse().ok()?;
    let body = &data[head_len..];
    let mut request = Request::builder().method(method).uri(uri);
    for h in head.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        request = request.header(name, HeaderValue::from_bytes(h.value).ok()?);
    }
    request
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body.to_vec()))
        .ok()
}

/// A service's router as served, and the document its answers are checked
/// against.
#[derive(Debug)]
pub struct Service {
    router: Router,
    openapi: Value,
}

/// What the router answered, read to the end.
#[derive(Debug)]
struct Answer {
    /// The route template the request reached (`/payments/{id}`), if any.
    route: Option<String>,
    status: StatusCode,
    content_type: Option<String>,
    body: Vec<u8>,
}

impl Service {
    /// `router` with what `serve` adds (fallbacks, the request span), and a
    /// layer that tells which route a request reached.
    fn new(router: Router, openapi: Value) -> Self {
        Self {
            router: service_kit::http::as_served(router).layer(middleware::from_fn(note_route)),
            openapi,
        }
    }

    /// Sends the request `data` is, if hyper would take it, and checks the
    /// answer.
    pub fn fuzz(&self, data: &[u8]) {
        let Some(request) = parse_request(data) else {
            return;
        };
        let method = request.method().clone();
        let answer = runtime().block_on(async {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .unwrap_or_else(|never| match never {});
            let route = response
                .extensions()
                .get::<MatchedPath>()
                .map(|path| path.as_str().to_owned());
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX)
                .await
                .expect("a response body reads to the end");
            Answer {
                route,
                status: parts.status,
                content_type: parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                body: body.to_vec(),
            }
        });
        self.check(&method, &answer);
    }

    fn check(&self, method: &Method, answer: &Answer) {
        let status = answer.status;
        let body = String::from_utf8_lossy(&answer.body);
        let route = answer.route.as_deref();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {route:?}: a request is never an internal error: {body}"
        );
        let expected = self.statuses(method, route);
        assert!(
            expected.contains(&status.as_u16()),
            "{method} {route:?}: {status}, but the document gives {expected:?}: {body}"
        );
        // HEAD answers carry the headers of a GET, without its body.
        if method == Method::HEAD {
            return;
        }
        let is_json = answer
            .content_type
            .as_deref()
            .is_some_and(|t| t.starts_with("application/json"));
        assert!(
            is_json,
            "{method} {route:?}: {status} with content type {:?}: {body}",
            answer.content_type
        );
        let json: Value = serde_json::from_slice(&answer.body).unwrap_or_else(|e| {
            panic!("{method} {route:?}: {status} with a body that is not JSON ({e}): {body}")
        });
        if status.is_client_error() || status.is_server_error() {
            assert!(
                json["error"].is_string() && json["message"].is_string(),
                "{method} {route:?}: {status} without an ErrorBody: {body}"
            );
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(
                json["error"], "unavailable",
                "{method} {route:?}: a 503 other than the database's: {body}"
            );
        }
    }

    /// The statuses `method` on `route` may answer: those the document
    /// gives the operation; 405 where the route has no such method; 404
    /// where no route matched. A served route the document leaves out (its
    /// own `/openapi.json`) answers 200.
    fn statuses(&self, method: &Method, route: Option<&str>) -> Vec<u16> {
        let Some(route) = route else {
            return vec![404];
        };
        // axum answers HEAD with the GET route.
        let method = if method == Method::HEAD {
            Method::GET
        } else {
            method.clone()
        };
        let Some(operations) = self.openapi["paths"].get(route) else {
            return vec![if method == Method::GET { 200 } else { 405 }];
        };
        // Methods are case-sensitive: `GeT` is a method of its own, which no
        // route has. The document spells the standard ones in lower case.
        let name = method.as_str();
        let documented = name
            .bytes()
            .all(|b| b.is_ascii_uppercase())
            .then(|| operations.get(name.to_ascii_lowercase()))
            .flatten();
        match documented {
            Some(operation) => operation["responses"]
                .as_object()
                .into_iter()
                .flat_map(|responses| responses.keys())
                .filter_map(|status| status.parse().ok())
                .collect(),
            None => vec![405],
        }
    }
}

/// Middleware: copies the route a request reached into its response.
async fn note_route(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(route);
    }
    response
}

/// Payments, on the database [`crate::database`] names (holding a payment
/// [`KNOWN_PAYMENT`], which the seeds read and refund), or on one that is
/// down.
pub fn payments() -> Service {
    let _runtime = runtime().enter();
    let payments = match crate::database() {
        Some(options) => runtime().block_on(async {
            let store = EventStore::connect(options, 4).await.expect("the fuzz database");
            let payments = payments_service::Payments::new(store, 10);
            payments.migrate().await.expect("migrate");
            let known = known_payment();
            let received = shared_events::PaymentReceived {
                payment_id: known.payment_id,
                customer_id: known.customer_id,
                order_id: known.order_id,
                amount: known.amount,
                currency: known.currency,
                received_at: known.received_at,
                payment_method: known.payment_method,
            };
            let cause = payments_service::repository::Cause {
                correlation_id: uuid::Uuid::nil(),
                request_id: uuid::Uuid::nil(),
            };
            // Already there from an earlier run of the same database: fine.
            let _ = payments.create(received, None, cause).await;
            payments
        }),
        None => {
            let pool = PgPoolOptions::new().connect_lazy_with(unreachable_database());
            payments_service::Payments::new(EventStore::new(pool), 10)
        }
    };
    Service::new(
        payments_service::app(payments_service::AppState { payments }, callers()),
        payments_service::api::openapi(),
    )
}

/// ServiceA, its audit log on the database [`crate::database`] names or on
/// one that is down, its copy holding [`KNOWN_PAYMENT`].
pub fn service_a() -> Service {
    let _runtime = runtime().enter();
    let state = service_a::State::default();
    let known = known_payment();
    state.payments.upsert(known.payment_id, known);
    let audit = match crate::database() {
        Some(options) => runtime()
            .block_on(service_a::Audit::connect(options, 4))
            .expect("the fuzz database"),
        None => service_a::Audit::lazy(unreachable_database()),
    };
    let app = service_a::AppState { state, audit };
    Service::new(service_a::app(app, callers()), service_a::api::openapi())
}

/// ServiceB, its records on the database [`crate::database`] names or on
/// one that is down.
pub fn service_b() -> Service {
    let _runtime = runtime().enter();
    let records = match crate::database() {
        Some(options) => runtime()
            .block_on(service_b::Records::connect(options, 4))
            .expect("the fuzz database"),
        None => service_b::Records::lazy(unreachable_database()),
    };
    Service::new(service_b::app(records, callers()), service_b::api::openapi())
}

/// [`KNOWN_PAYMENT`], as received.
pub(crate) fn known_payment() -> PaymentState {
    PaymentState {
        payment_id: PaymentId::parse(KNOWN_PAYMENT).expect("a UUID"),
        customer_id: CustomerId::parse("customer-42").expect("valid"),
        order_id: OrderId::parse("order-7").expect("valid"),
        amount: Amount::parse(1999).expect("valid"),
        currency: Currency::parse("EUR").expect("valid"),
        received_at: "2026-01-02T03:04:05.678901Z".parse().expect("RFC 3339"),
        refunded: 0,
        version: 1,
        payment_method: PaymentMethod::Card,
    }
}
