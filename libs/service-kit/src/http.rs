//! HTTP pieces every service shares: serving with graceful shutdown,
//! `GET /health` (the broker, as last probed), `GET /ready` (whether the
//! service serves what it should yet), the JSON error body, lookups and
//! pages.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, MatchedPath, Path, Query, State};
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
    let reachable = health.reachable();
    let (status, broker) = if reachable {
        ("ok", "reachable")
    } else {
        ("degraded", "unreachable")
    };
    (ok_or_unavailable(reachable), Json(Health { status, broker }))
}

/// 200 when a check holds, 503 when it does not.
fn ok_or_unavailable(holds: bool) -> StatusCode {
    if holds {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
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
    let ready = readiness.ready();
    let status = if ready { "ready" } else { "starting" };
    (ok_or_unavailable(ready), Json(Ready { status, detail }))
}

/// What one client may hold of a service's HTTP server, so that slow or
/// many clients cannot take it from the others (`/health` included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// `HTTP_HEADER_TIMEOUT_MS` (10 s): how long a connection may take to
    /// send a request's headers, and may sit idle between requests, before
    /// it is closed. A client trickling header bytes is cut off.
    pub header_timeout: Duration,
    /// `HTTP_REQUEST_TIMEOUT_MS` (30 s): how long a request may take, its
    /// body and the handler's work included, before it is answered `503`
    /// (`timeout`) and its handler dropped. Longer than any handler's own
    /// bound (the database's statement timeout, the pool's acquire).
    pub request_timeout: Duration,
    /// `HTTP_MAX_CONNECTIONS` (512): connections served at once; further
    /// ones wait in the listen backlog until one closes.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

impl HttpLimits {
    /// The limits from the environment, the defaults where unset.
    ///
    /// # Errors
    ///
    /// A value that is not a number, or a zero.
    pub fn from_env() -> std::result::Result<Self, crate::config::ConfigError> {
        let default = Self::default();
        let limits = Self {
            header_timeout: crate::config::millis("HTTP_HEADER_TIMEOUT_MS", default.header_timeout)?,
            request_timeout: crate::config::millis("HTTP_REQUEST_TIMEOUT_MS", default.request_timeout)?,
            max_connections: crate::config::var("HTTP_MAX_CONNECTIONS", default.max_connections)?,
        };
        if limits.max_connections == 0 {
            return Err(crate::config::ConfigError {
                var: "HTTP_MAX_CONNECTIONS",
                value: "0".to_owned(),
                reason: "at least one connection is served".to_owned(),
            });
        }
        Ok(limits)
    }
}

/// Serves `router` on `listener` within [`HttpLimits::from_env`] until
/// `stop` is cancelled, then stops taking requests and waits for the ones
/// in flight.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) -> Result<()> {
    serve_within(listener, router, stop, HttpLimits::from_env()?).await
}

/// [`serve`] within `limits`. HTTP/1.1, as `axum::serve` would, but with
/// hyper's header read timeout and a bound on connections, which
/// `axum::serve` does not offer.
pub async fn serve_within(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
    limits: HttpLimits,
) -> Result<()> {
    let app = as_served(router).layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        answer_within,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        // A free slot first: at the limit, new connections wait in the
        // kernel's backlog rather than being accepted and left unserved.
        let slot = tokio::select! {
            slot = Arc::clone(&connections).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors, say: the connection is not
                    // ours to answer; pause instead of spinning (as
                    // axum::serve does).
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // A client that went away or was cut off: its business.
                tracing::debug!(error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Middleware: answers `503` (`timeout`) to a request not answered within
/// `limit`, dropping its handler.
async fn answer_within(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(limit_ms = limit.as_millis(), "request not answered in time");
            ErrorBody::new(
                "timeout",
                format!("the request was not answered within {} ms", limit.as_millis()),
            )
            .into_response(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
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
            // No line per request or per failure: the span carries the
            // status, and each 5xx is logged where it is decided, with its
            // reason. (The layer's default would log every 5xx as an ERROR,
            // ServiceA's expected `/ready` 503s while it catches up too.)
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response)
                .on_failure(()),
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

/// `axum::extract::Query`, but a rejection is a JSON [`ErrorBody`] like
/// every other error ([`QueryError`]).
#[derive(Debug, FromRequestParts)]
#[from_request(via(Query), rejection(QueryError))]
pub struct ApiQuery<T>(pub T);

/// 400 `invalid_query`: what is wrong with a request's query string.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// It does not parse.
    #[error("invalid query: {0}")]
    Rejected(#[from] QueryRejection),
    /// It parses, but a value is out of range.
    #[error("invalid query: {0}")]
    Invalid(String),
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let message = match self {
            Self::Rejected(rejection) => rejection.body_text(),
            Self::Invalid(message) => message,
        };
        ErrorBody::new("invalid_query", message).into_response(StatusCode::BAD_REQUEST)
    }
}

/// `?limit=n`: how many entries a page holds, checked.
///
/// # Errors
///
/// [`QueryError::Invalid`] when `limit` is 0 or over [`MAX_PAGE`].
pub fn page_size(limit: Option<usize>) -> Result<usize, QueryError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(QueryError::Invalid(format!(
            "limit must be 1 to {MAX_PAGE}, not {n}"
        ))),
    }
}

/// The answer of a list read a page at a time, from `entries` read one
/// beyond `limit` (so whether more follow is known): the first `limit` as
/// JSON and, while more follow, a `Link: <target>; rel="next"` header (RFC
/// 8288), `next` naming the target (a path with its query) from the last
/// entry of the page.
pub fn page<T: Serialize>(mut entries: Vec<T>, limit: usize, next: impl FnOnce(&T) -> String) -> Response {
    let more = entries.len() > limit;
    entries.truncate(limit);
    let mut response = Json(&entries).into_response();
    if more && let Some(last) = entries.last() {
        let link = format!("<{}>; rel=\"next\"", next(last));
        if let Ok(value) = axum::http::HeaderValue::from_str(&link) {
            response.headers_mut().insert(axum::http::header::LINK, value);
        }
    }
    response
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

    /// Limits short enough for a test; `max_connections` as given.
    fn limits(max_connections: usize) -> HttpLimits {
        HttpLimits {
            header_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_millis(300),
            max_connections,
        }
    }

    /// A server within `limits` on a port of its own, with `/health` and a
    /// `/slow` route that never answers by itself.
    async fn server(limits: HttpLimits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let router = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/slow", get(std::future::pending::<&'static str>));
        let stop = CancellationToken::new();
        tokio::spawn(serve_within(listener, router, stop.clone(), limits));
        (address, stop)
    }

    /// `GET path` over a connection of its own; the status and body. Waits
    /// 10 s at most.
    async fn get_raw(address: std::net::SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
            let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.expect("read");
            answer
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer in 10 s"));
        let status = answer
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        (status, answer)
    }

    /// A client on `stream` that sends a request line, then one header byte
    /// every 50 ms for at most 5 s; returns once the server has closed the
    /// connection.
    async fn trickle(mut stream: tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: ")
            .await
            .expect("write");
        let mut buffer = [0_u8; 256];
        for _ in 0..100 {
            if stream.write_all(b"x").await.is_err() {
                return;
            }
            // The end, or an error: closed. hyper may answer 408 before it
            // closes, so bytes read mean reading on.
            let read = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buffer)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return;
            }
        }
        panic!("a client trickling its headers was served for 5 s");
    }

    #[tokio::test]
    async fn a_client_trickling_its_headers_is_cut_off_and_health_still_answers() {
        let (address, stop) = server(limits(16)).await;
        let stream = tokio::net::TcpStream::connect(address).await.expect("connect");
        let trickler = tokio::spawn(trickle(stream));
        let (status, body) = get_raw(address, "/health").await;
        assert_eq!(status, 200, "{body}");
        assert!(!trickler.is_finished(), "still trickling while /health answered");
        trickler.await.expect("cut off");
        stop.cancel();
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_for_a_free_one() {
        let (address, stop) = server(limits(1)).await;
        // Connected first, so accepted first: this client holds the only
        // connection with half a request, and /health waits in the backlog
        // until the header timeout closes it.
        let mut holder = std::net::TcpStream::connect(address).expect("connect");
        std::io::Write::write_all(&mut holder, b"GET /health HTTP/1.1\r\nHost: test\r\n").expect("write");
        let (status, body) = get_raw(address, "/health").await;
        assert_eq!(status, 200, "{body}");
        // By then the holder's connection was closed (the server closes it
        // before it frees its slot): reading it now finds the end at once.
        holder.set_nonblocking(true).expect("nonblocking");
        let mut buffer = [0_u8; 256];
        loop {
            match std::io::Read::read(&mut holder, &mut buffer) {
                Ok(0) => break,
                Ok(_) => {} // hyper's 408, before the end
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    panic!("/health was served while another connection held the only slot")
                }
                Err(_) => break, // reset: closed too
            }
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn a_request_not_answered_in_time_is_a_503() {
        let (address, stop) = server(limits(16)).await;
        let (status, body) = get_raw(address, "/slow").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains(r#""error":"timeout""#), "{body}");
        stop.cancel();
    }

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
