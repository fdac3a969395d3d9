//! HTTP pieces every service shares.

use axum::extract::State;
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
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    /// One entry per invalid field, for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldProblem>,
}

/// What is wrong with one field of a request.
#[derive(Debug, Serialize)]
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

#[derive(Debug, Serialize)]
struct Health {
    status: &'static str,
    broker: &'static str,
}

/// `GET /health`: 200 when the Kafka broker answers, 503 when it does not.
pub fn health_router(admin: Admin) -> Router {
    Router::new().route("/health", get(health)).with_state(admin)
}

async fn health(State(admin): State<Admin>) -> (StatusCode, Json<Health>) {
    if admin.broker_reachable().await {
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

/// Serves `router` on `listener` until `stop` is cancelled, then stops taking
/// requests and waits for the ones in flight.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) -> Result<()> {
    let router = router
        .fallback(|| async {
            ErrorBody::new("not_found", "no such route").into_response(StatusCode::NOT_FOUND)
        })
        .method_not_allowed_fallback(|| async {
            ErrorBody::new("method_not_allowed", "this route does not take that method")
                .into_response(StatusCode::METHOD_NOT_ALLOWED)
        })
        .layer(TraceLayer::new_for_http());
    axum::serve(listener, router)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    Ok(())
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
