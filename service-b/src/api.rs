//! ServiceB's HTTP API.
//!
//! - `GET /payments/{id}`: what the callback returned for the payment (404
//!   until the callback succeeded); only for the callers in `HTTP_CALLERS`
//!   (see [`service_kit::auth`]).
//! - `GET /metrics`, `GET /health`: see [`service_kit`].

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use service_kit::auth::{CallerTokenScheme, Callers, Right};
use service_kit::http::{ApiPath, ErrorBody, LookupError};
use shared_events::PaymentId;
use utoipa::OpenApi;

use crate::store::{CallbackRecord, Records};

service_kit::contract_schema!(
    /// What the callback returned for a payment.
    CallbackRecordSchema,
    CallbackRecord
);

/// The OpenAPI 3.1 document of these routes, generated from the handlers
/// below; served at `GET /openapi.json` and committed as
/// `contracts/openapi/service-b.json`.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "ServiceB",
        description = "Calls Payments back (GetPaymentInfo) for each notification and records the answer.",
        version = "1.0.0",
    ),
    paths(payment),
    modifiers(&CallerTokenScheme),
    components(schemas(ErrorBody, CallbackRecordSchema))
)]
pub struct ApiDoc;

/// [`ApiDoc`] with the routes every service serves, as JSON: what
/// `GET /openapi.json` answers.
pub fn openapi() -> serde_json::Value {
    service_kit::openapi::to_json(ApiDoc::openapi())
}

/// The routes; all but the OpenAPI document answer only `callers`.
pub fn app(records: Records, callers: Callers) -> Router {
    let data = Router::new().route("/payments/{id}", get(payment));
    service_kit::auth::protect(data, callers, Right::Read)
        .merge(service_kit::openapi::openapi_router(openapi()))
        .with_state(records)
}

#[utoipa::path(
    get,
    path = "/payments/{id}",
    security(("caller_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "The payment id")),
    responses(
        (status = 200, description = "What the callback for the payment returned", body = CallbackRecordSchema),
        service_kit::auth::ReadRefused,
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No callback for that payment succeeded (yet)", body = ErrorBody),
        (status = 503, description = "ServiceB's database is unreachable", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip(records))]
async fn payment(
    State(records): State<Records>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CallbackRecord>, LookupError> {
    let id = PaymentId::parse(&id)?;
    match records.get(id).await {
        Ok(Some(record)) => Ok(Json(record)),
        Ok(None) => Err(LookupError::NotFound),
        Err(e) => {
            tracing::error!(error = %e, "cannot read the records");
            Err(LookupError::Unavailable)
        }
    }
}
