//! HTTP pieces every service shares: serving with graceful shutdown,
//! `GET /health` (the broker, as last probed), `GET /ready` (whether the
//! service serves what it should yet), the JSON error body, lookups and
//! pages.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, MatchedPath, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use shared_events::{InvalidValue, PaymentId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::trace::TraceLayer;

use crate::error::Result;
use crate::kafka::Admin;

/// The JSON body of every error response: a stable machine-readable `error`
/// code and a `message` for humans. Never carries internal error text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    /// One entry per invalid field, for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldProblem>,
}

/// What is wrong with one field of a request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    pub field: &'static str,
    pub problem: String,
}

impl ErrorBody {
    pub fn new(error: &'static str, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The response with this body and `status`.
    pub fn into_response(self, status: StatusCode) -> Response {
        (status, Json(self)).into_response()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok` or `degraded`.
    status: &'static str,
    /// `reachable` or `unreachable`, as last probed.
    broker: &'static str,
}

/// Whether the broker answered the last probe. A background task probes it
/// every [`PROBE_EVERY`] ([`BrokerHealth::watch`]), so `GET /health` answers
/// at once, without a broker call (and its timeout) per request. Cheap to
/// clone; clones share the state.
#[derive(Debug, Clone)]
pub struct BrokerHealth {
    reachable: Arc<AtomicBool>,
}

/// How often the broker is probed for `GET /health`.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);

impl BrokerHealth {
    /// The state, reachable to begin with (a service reached the broker to
    /// create its topics before it serves), and the task that keeps it: it
    /// probes with `admin` every [`PROBE_EVERY`] until `stop`.
    pub fn watch(admin: Admin, stop: CancellationToken) -> (Self, impl Future<Output = Result<()>> + Send) {
        Self::probing(
            move || {
                let admin = admin.clone();
                async move { admin.broker_reachable().await }
            },
            PROBE_EVERY,
            stop,
        )
    }

    /// [`BrokerHealth::watch`] with any `probe`, run every `every`.
    pub fn probing<F, Fut>(
        probe: F,
        every: Duration,
        stop: CancellationToken,
    ) -> (Self, impl Future<Output = Result<()>> + Send)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let health = Self {
            reachable: Arc::new(AtomicBool::new(true)),
        };
        let reachable = Arc::clone(&health.reachable);
        let task = async move {
            loop {
                reachable.store(probe().await, Ordering::Relaxed);
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    () = tokio::time::sleep(every) => {}
                }
            }
        };
        (health, task)
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }
}

/// `GET /health`: 200 when the broker answered the last probe, 503 when it
/// did not.
pub fn health_router(health: BrokerHealth) -> Router {
    Router::new()
        .route("/health", get(health_check))
        .with_state(health)
}

#[utoipa::path(
    get,
    path = "/health",
    responses(
        (status = 200, description = "The broker answered the last probe", body = Health),
        (status = 503, description = "The broker did not answer the last probe", body = Health),
    ),
)]
async fn health_check(State(health): State<BrokerHealth>) -> (StatusCode, Json<Health>) {
    if health.reachable() {
        (
            StatusCode::OK,
            Json(Health {
                status: "ok",
                broker: "reachable",
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "degraded",
                broker: "unreachable",
            }),
        )
    }
}

/// Whether a service serves what it should yet: a check the service
/// provides (ServiceA: its copy has caught up with the state topic), and
/// what else it tells about itself in `GET /ready` (Payments: its outbox).
#[derive(Clone)]
pub struct Readiness {
    check: Arc<dyn Fn() -> bool + Send + Sync>,
    detail: Option<Arc<dyn Fn() -> serde_json::Value + Send + Sync>>,
}

impl Readiness {
    pub fn new(check: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self {
            check: Arc::new(check),
            detail: None,
        }
    }

    /// Ready as soon as it serves: nothing to rebuild first.
    pub fn at_once() -> Self {
        Self::new(|| true)
    }

    /// With `detail` in every answer of `GET /ready`.
    #[must_use]
    pub fn with_detail(self, detail: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> Self {
        Self {
            detail: Some(Arc::new(detail)),
            ..self
        }
    }

    pub fn ready(&self) -> bool {
        (self.check)()
    }

    fn detail(&self) -> Option<serde_json::Value> {
        self.detail.as_ref().map(|detail| detail())
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Readiness").field(&self.ready()).finish()
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Ready {
    /// `ready` or `starting`.
    status: &'static str,
    /// What the service tells about itself beyond that (Payments: `outbox`,
    /// what its relay has not published yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    detail: Option<serde_json::Value>,
}

/// `GET /ready`: 503 `{"status":"starting"}` until `readiness` holds, then
/// 200 `{"status":"ready"}`, each with the service's `detail` if it has one.
/// What compose and `cargo xtask up` wait on.
pub fn ready_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/ready", get(ready_check))
        .with_state(readiness)
}

#[utoipa::path(
    get,
    path = "/ready",
    responses(
        (status = 200, description = "The service serves what it should", body = Ready),
        (status = 503, description = "Still starting (ServiceA: its copy has not caught up yet)", body = Ready),
    ),
)]
async fn ready_check(State(readiness): State<Readiness>) -> (StatusCode, Json<Ready>) {
    let detail = readiness.detail();
    if readiness.ready() {
        (
            StatusCode::OK,
            Json(Ready {
                status: "ready",
                detail,
            }),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Ready {
                status: "starting",
                detail,
            }),
        )
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then stops taking
/// requests and waits for the ones in flight.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) -> Result<()> {
    axum::serve(listener, as_served(router))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
}

/// `router` as [`serve`] serves it: a JSON [`ErrorBody`] for an unknown
/// route (404) or method (405), and a span per request. Public for what
/// drives a service's router without a socket (the fuzz targets).
pub fn as_served(router: Router) -> Router {
    router
        .fallback(|| async {
            ErrorBody::new("not_found", "no such route").into_response(StatusCode::NOT_FOUND)
        })
        .method_not_allowed_fallback(|| async {
            ErrorBody::new("method_not_allowed", "this route does not take that method")
                .into_response(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response),
        )
}

/// The span of one request, after OpenTelemetry's HTTP server conventions:
/// named `{method} {route}`, a child of the caller's span when the request
/// carries a `traceparent` (ServiceB's callback does).
fn request_span(request: &axum::extract::Request) -> tracing::Span {
    let method = request.method().as_str();
    // The route template (`/payments/{id}`), not the path: one name for
    // every payment. Unknown routes have none.
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str);
    let span = tracing::info_span!(
        "request",
        otel.name = route.map_or_else(|| method.to_owned(), |route| format!("{method} {route}")),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        url.path = request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        // The caller a protected route let in (`crate::auth`).
        enduser.id = tracing::field::Empty,
    );
    crate::telemetry::set_parent(&span, crate::telemetry::parent_from_http(request.headers()));
    span
}

fn record_response(response: &Response, _latency: Duration, span: &tracing::Span) {
    span.record("http.response.status_code", response.status().as_u16());
    // A server span is an error for 5xx only: a 4xx is the client's.
    if response.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// The errors of looking a payment up by the id in the path, shared by every
/// service's `GET /payments/{id}`.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// 400: the id is not a payment id.
    #[error("invalid payment id: {0}")]
    InvalidId(#[from] InvalidValue),
    /// 404: no payment with that id (here, or not yet).
    #[error("payment not found")]
    NotFound,
    /// 503: the store to look in is unreachable.
    #[error("store unavailable")]
    Unavailable,
}

impl IntoResponse for LookupError {
    fn into_response(self) -> Response {
        match self {
            Self::InvalidId(invalid) => ErrorBody::new("invalid_payment_id", invalid.to_string())
                .into_response(StatusCode::BAD_REQUEST),
            Self::NotFound => {
                ErrorBody::new("not_found", "no payment with that id").into_response(StatusCode::NOT_FOUND)
            }
            Self::Unavailable => ErrorBody::new("unavailable", "the store is unreachable; try again")
                .into_response(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

/// `axum::extract::Path`, but a rejection is a JSON [`ErrorBody`] like
/// every other error. A path segment whose percent-decoding is not UTF-8
/// (`/payments/%FF`) cannot be a `String`; axum answers that in plain text.
#[derive(Debug, FromRequestParts)]
#[from_request(via(Path), rejection(PathError))]
pub struct ApiPath<T>(pub T);

/// Why [`ApiPath`] did not extract: 400 `invalid_path` for what the client
/// sent; 500 for a handler asking for parameters its route does not have.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PathError(#[from] PathRejection);

impl IntoResponse for PathError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "path parameters do not fit the route");
            return ErrorBody::new("internal", "something went wrong on our side").into_response(status);
        }
        ErrorBody::new("invalid_path", self.0.body_text()).into_response(status)
    }
}

/// Entries per page of a list when the request does not say.
pub const DEFAULT_PAGE: usize = 100;
/// The most entries a request may ask for at once.
pub const MAX_PAGE: usize = 1000;

/// `?limit=n`: how many entries a page holds, checked.
///
/// # Errors
///
/// A message for the client when `limit` is 0 or over [`MAX_PAGE`].
pub fn page_size(limit: Option<usize>) -> Result<usize, String> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(format!("limit must be 1 to {MAX_PAGE}, not {n}")),
    }
}

/// The `Link` header pointing at the next page (RFC 8288): `<target>;
/// rel="next"`, `target` being a path with its query.
pub fn next_page(target: &str) -> (axum::http::HeaderName, axum::http::HeaderValue) {
    let value = axum::http::HeaderValue::from_str(&format!("<{target}>; rel=\"next\""))
        .unwrap_or_else(|_| axum::http::HeaderValue::from_static(""));
    (axum::http::header::LINK, value)
}

/// Looks up the payment whose id is the path segment `id`.
pub fn lookup<T: Serialize>(
    id: &str,
    find: impl FnOnce(PaymentId) -> Option<T>,
) -> Result<Json<T>, LookupError> {
    let id = PaymentId::parse(id)?;
    find(id).map(Json).ok_or(LookupError::NotFound)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Request;
    use tower::ServiceExt;

    use super::*;

    /// Found by the `payments_http` fuzz target: `GET /payments/01%9f…`
    /// answered 400 in plain text, not the documented `ErrorBody`.
    #[tokio::test]
    async fn a_path_segment_that_is_not_utf8_is_a_json_400() {
        let router: Router = Router::new().route(
            "/payments/{id}",
            get(|ApiPath(id): ApiPath<String>| async move { id }),
        );
        let response = router
            .oneshot(
                Request::get("/payments/01%9f")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(response.headers()["content-type"], "application/json");
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(body["error"], "invalid_path");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("UTF-8")),
            "{body}"
        );
    }
}
