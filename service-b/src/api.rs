//! ServiceB's HTTP API.
//!
//! - `GET /payments/{id}`: what the callback returned for the payment (404
//!   until the callback succeeded).
//! - `GET /metrics`, `GET /health`: see [`service_kit`].

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use service_kit::http::LookupError;
use shared_events::PaymentId;

use crate::store::{CallbackRecord, Records};

pub fn app(records: Records) -> Router {
    Router::new()
        .route("/payments/{id}", get(payment))
        .with_state(records)
}

#[tracing::instrument(skip(records))]
async fn payment(
    State(records): State<Records>,
    Path(id): Path<String>,
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
