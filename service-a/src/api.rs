//! ServiceA's HTTP API.
//!
//! - `GET /audit?limit=n&after=cursor`: the notifications handled, in the
//!   order they were committed, a page at a time; `Link: <...>; rel="next"`
//!   names the next page while there is one, and each entry's `cursor` is
//!   where to read on from it later.
//! - `GET /payments/{id}`: the local copy of a payment (404 until its state
//!   event arrived), with `Copied-At`: when the copy last changed here.
//!
//! Both answer only the callers in `HTTP_CALLERS`: see [`service_kit::auth`].

use axum::extract::State as Extract;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use service_kit::auth::{CallerTokenScheme, Callers, Right};
use service_kit::http::{ApiPath, ApiQuery, ErrorBody, LookupError, QueryError, lookup, page, page_size};
use shared_events::PaymentState;
use utoipa::OpenApi;

use crate::audit::{Audit, AuditEntry};
use crate::handler::State;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub state: State,
    pub audit: Audit,
}

service_kit::contract_schema!(
    /// `shared_events::PaymentState`: ServiceA's copy of a payment.
    PaymentStateSchema,
    PaymentState
);
service_kit::contract_schema!(
    /// One entry of the audit log.
    AuditEntrySchema,
    AuditEntry
);

/// The OpenAPI 3.1 document of these routes, generated from the handlers
/// below; served at `GET /openapi.json` and committed as
/// `contracts/openapi/service-a.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "ServiceA",
        description = "Keeps a copy of every payment from the state topic (event-carried state transfer) \
                       and an audit log of the notifications it handled.",
        version = "1.0.0",
    ),
    paths(audit, payment),
    modifiers(&CallerTokenScheme),
    components(schemas(ErrorBody, PaymentStateSchema, AuditEntrySchema))
)]
pub struct ApiDoc;

/// [`ApiDoc`] with the routes every service serves, as JSON: what
/// `GET /openapi.json` answers.
pub fn openapi() -> serde_json::Value {
    service_kit::openapi::to_json(ApiDoc::openapi())
}

/// The routes; all but the OpenAPI document answer only `callers`.
pub fn app(state: AppState, callers: Callers) -> Router {
    let data = Router::new()
        .route("/audit", get(audit))
        .route("/payments/{id}", get(payment));
    service_kit::auth::protect(data, callers, Right::Read)
        .merge(service_kit::openapi::openapi_router(openapi()))
        .with_state(state)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditQuery {
    /// Entries per page: default 100, at most 1000.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// The `cursor` of the last entry read (of the previous page): the page
    /// starts after it. From the start when absent.
    after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/audit",
    security(("caller_token" = [])),
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of the notifications handled, in the order committed; `Link: <...>; rel=\"next\"` while there are more. An entry that commits later never lands before a cursor already handed out, so reading on from the last entry's `cursor` misses none", body = [AuditEntrySchema]),
        service_kit::auth::ReadRefused,
        (status = 400, description = "A bad limit or after", body = ErrorBody),
        (status = 503, description = "The audit log's database is unreachable", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all)]
async fn audit(
    Extract(app): Extract<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let limit = page_size(query.limit)?;
    let after = query
        .after
        .map(|cursor| cursor.parse())
        .transpose()
        .map_err(QueryError::Invalid)?;
    // One more than asked: whether there is a next page.
    let entries = app.audit.page(after, limit + 1).await.map_err(|e| {
        tracing::error!(error = %e, "cannot read the audit log");
        ApiError::Unavailable
    })?;
    Ok(page(entries, limit, |last| {
        format!("/audit?after={}&limit={limit}", last.cursor)
    }))
}

#[utoipa::path(
    get,
    path = "/payments/{id}",
    security(("caller_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "The payment id")),
    responses(
        (status = 200, description = "The copy of the payment", body = PaymentStateSchema,
         headers(("Copied-At" = String, description = "When the copy last changed here, RFC 3339"))),
        service_kit::auth::ReadRefused,
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No state of that payment arrived (yet)", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip(app))]
async fn payment(
    Extract(app): Extract<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let Json((payment, copied_at)) = lookup(&id, |id| {
        let payment = app.state.payments.get(id)?;
        Some((payment, app.state.copied_at.get(id)))
    })?;
    let mut response = Json::<PaymentState>(payment).into_response();
    if let Some(copied_at) = copied_at
        && let Ok(value) = copied_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .parse()
    {
        response.headers_mut().insert(COPIED_AT, value);
    }
    Ok(response)
}

/// When the copy of a payment last changed in this instance (RFC 3339):
/// with the payment's `recorded_at`, how long the copy took to follow.
pub const COPIED_AT: &str = "copied-at";

/// Every way a request can fail, and the status each gets.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the query string does not parse, or a value is out of range.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// 400 or 404: the payment in the path.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// 503: the audit log's database is unreachable.
    #[error("audit log unavailable")]
    Unavailable,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Query(query) => query.into_response(),
            Self::Lookup(lookup) => lookup.into_response(),
            Self::Unavailable => ErrorBody::new("unavailable", "the audit log is unreachable; try again")
                .into_response(StatusCode::SERVICE_UNAVAILABLE),
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use chrono::{DateTime, Utc};
    use service_kit::auth::Rights;
    use service_kit::startup::Database;
    use shared_events::testing::state;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn a_copy_is_served_with_when_it_last_changed() {
        let app_state = AppState {
            state: State::default(),
            // Never connected to: this test reads no audit.
            audit: Audit::lazy("postgres://nobody@127.0.0.1:1/none".parse().expect("url")),
        };
        let payment = state();
        let copied_at = Utc::now();
        app_state
            .state
            .payments
            .upsert(payment.payment_id, payment.clone());
        app_state.state.copied_at.upsert(payment.payment_id, copied_at);

        let token = service_kit::auth::Token::generate();
        let response = app(app_state, Callers::of([("operator", Rights::READ, &token)]))
            .oneshot(
                Request::get(format!("/payments/{}", payment.payment_id))
                    .header(axum::http::header::AUTHORIZATION, token.authorization())
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        let header = response.headers()[COPIED_AT].to_str().expect("ascii");
        let served: DateTime<Utc> = DateTime::parse_from_rfc3339(header).expect("RFC 3339").into();
        // Microseconds: what the header carries.
        assert_eq!(served.timestamp_micros(), copied_at.timestamp_micros());
    }
}
