//! ServiceA's HTTP API.
//!
//! - `GET /audit`: the notifications received, oldest first.
//! - `GET /payments/{id}`: the local copy of a payment (404 until its state
//!   event arrived).

use axum::extract::{Path, State as Extract};
use axum::routing::get;
use axum::{Json, Router};
use service_kit::http::{LookupError, lookup};
use shared_events::PaymentState;

use crate::handler::{AuditEntry, State};

pub fn app(state: State) -> Router {
    Router::new()
        .route("/audit", get(audit))
        .route("/payments/{id}", get(payment))
        .with_state(state)
}

#[tracing::instrument(skip_all)]
async fn audit(Extract(state): Extract<State>) -> Json<Vec<AuditEntry>> {
    Json(state.audit_log())
}

#[tracing::instrument(skip(state))]
async fn payment(
    Extract(state): Extract<State>,
    Path(id): Path<String>,
) -> Result<Json<PaymentState>, LookupError> {
    lookup(&id, |id| state.payments.get(id))
}
