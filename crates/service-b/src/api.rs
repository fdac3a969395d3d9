//! ServiceB's HTTP API.
//!
//! - `GET /payments/{id}`: what the callback returned for the payment (404
//!   until the callback succeeded).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use service_kit::http::{LookupError, lookup};

use crate::handler::{CallbackRecord, Records};

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
    lookup(&id, |id| records.get(id))
}
