//! Payments' HTTP API.
//!
//! - `POST /payments`: accept a payment; `201` with the payment and a
//!   `Location` once both events are acknowledged by the broker.
//! - `GET /payments/{id}`: GetPaymentInfo, the call ServiceB makes back.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use service_kit::http::{ErrorBody, FieldProblem, LookupError, lookup};
use service_kit::memory::ById;
use shared_events::{Amount, Currency, CustomerId, InvalidValue, OrderId, PaymentId, PaymentReceived};
use uuid::Uuid;

use crate::publisher::{EventPublisher, PublishError};

/// Largest accepted request body. A payment is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Header carrying the id of the flow a request belongs to; copied into the
/// events' `ce_correlationid`. A new id is made when absent or not a UUID.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// What the handlers share.
#[derive(Debug)]
pub struct AppState<P> {
    /// Payments by id, in memory until the event store replaces it.
    pub store: ById<PaymentReceived>,
    pub publisher: Arc<P>,
}

impl<P> Clone for AppState<P> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            publisher: Arc::clone(&self.publisher),
        }
    }
}

impl<P: EventPublisher> AppState<P> {
    pub fn new(publisher: P) -> Self {
        Self {
            store: ById::default(),
            publisher: Arc::new(publisher),
        }
    }
}

/// The payment routes (without `/health`, which needs a broker).
pub fn app<P: EventPublisher>(state: AppState<P>) -> Router {
    Router::new()
        .route("/payments", post(create_payment::<P>))
        .route("/payments/{id}", get(get_payment::<P>))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The body of `POST /payments`, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPayment {
    pub customer_id: String,
    pub order_id: String,
    /// Minor units (cents for EUR).
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
}

impl NewPayment {
    /// Checks every field, reporting all problems at once.
    pub fn validate(self) -> Result<PaymentReceived, Vec<InvalidValue>> {
        let customer_id = CustomerId::parse(&self.customer_id);
        let order_id = OrderId::parse(&self.order_id);
        let amount = Amount::parse(self.amount);
        let currency = Currency::parse(&self.currency);
        match (customer_id, order_id, amount, currency) {
            (Ok(customer_id), Ok(order_id), Ok(amount), Ok(currency)) => Ok(PaymentReceived {
                payment_id: PaymentId::new(),
                customer_id,
                order_id,
                amount,
                currency,
                received_at: Utc::now(),
            }),
            (c, o, a, cur) => Err([c.err(), o.err(), a.err(), cur.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

#[tracing::instrument(skip_all, fields(payment_id))]
async fn create_payment<P: EventPublisher>(
    State(state): State<AppState<P>>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<NewPayment>,
) -> Result<Response, ApiError> {
    let payment = request.validate().map_err(ApiError::Validation)?;
    tracing::Span::current().record("payment_id", tracing::field::display(payment.payment_id));
    let correlation_id = headers
        .get(CORRELATION_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::try_parse(v).ok())
        .unwrap_or_else(Uuid::now_v7);

    // Stored before publishing, so a consumer that reacts to the notification
    // at once finds the payment when it calls back.
    state.store.upsert(payment.payment_id, payment.clone());
    if let Err(e) = state.publisher.payment_received(&payment, correlation_id).await {
        // The client is told the payment failed, so it must not exist. If one
        // of the two events did get out, consumers see a payment Payments no
        // longer knows: the dual write the transactional outbox removes.
        state.store.remove(payment.payment_id);
        return Err(e.into());
    }
    tracing::info!(%correlation_id, "payment accepted");
    let location = format!("/payments/{}", payment.payment_id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(payment)).into_response())
}

#[tracing::instrument(skip(state))]
async fn get_payment<P: EventPublisher>(
    State(state): State<AppState<P>>,
    Path(id): Path<String>,
) -> Result<Json<PaymentReceived>, LookupError> {
    lookup(&id, |id| state.store.get(id))
}

/// `axum::Json`, but rejections become [`ApiError`]s with a JSON body.
#[derive(Debug, FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// Every way a request can fail, and the status each gets.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 (syntax), 413 (too large), 415 (not JSON) or 422 (wrong shape or
    /// types), as axum classifies the rejection.
    #[error("invalid request body: {0}")]
    Body(#[from] JsonRejection),
    /// 422: well-formed, but the values break the rules.
    #[error("invalid payment")]
    Validation(Vec<InvalidValue>),
    /// 503: the broker did not acknowledge the events, so the payment was
    /// not accepted. Retrying later is safe.
    #[error("events not published: {0}")]
    Unavailable(#[from] PublishError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            Self::Body(rejection) => {
                let status = rejection.status();
                let code = match status {
                    StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    _ => "invalid_body",
                };
                (status, ErrorBody::new(code, rejection.body_text()))
            }
            Self::Validation(problems) => {
                let message = problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ");
                let mut body = ErrorBody::new("validation_failed", message);
                body.details = problems
                    .iter()
                    .map(|p| FieldProblem {
                        field: p.field,
                        problem: p.problem.clone(),
                    })
                    .collect();
                (StatusCode::UNPROCESSABLE_ENTITY, body)
            }
            Self::Unavailable(e) => {
                tracing::error!(error = %e, "payment rejected: events not published");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorBody::new(
                        "broker_unavailable",
                        "the payment could not be recorded; nothing was charged, try again later",
                    ),
                )
            }
        };
        body.into_response(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(amount: i64, currency: &str) -> NewPayment {
        NewPayment {
            customer_id: "c-1".to_owned(),
            order_id: "o-1".to_owned(),
            amount,
            currency: currency.to_owned(),
        }
    }

    #[test]
    fn a_valid_request_becomes_a_payment() {
        let payment = request(1999, "EUR").validate().expect("valid");
        assert_eq!(payment.amount.minor_units(), 1999);
        assert_eq!(payment.currency.code(), "EUR");
        assert_eq!(payment.customer_id.as_str(), "c-1");
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let mut bad = request(0, "euro");
        bad.customer_id = String::new();
        let problems = bad.validate().expect_err("invalid");
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, ["customer_id", "amount", "currency"]);
    }
}
