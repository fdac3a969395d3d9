//! Payments' HTTP API.
//!
//! - `POST /payments`: accept a payment (honours `Idempotency-Key`).
//! - `GET /payments/{id}`: GetPaymentInfo, the call ServiceB makes back;
//!   the current state, with `ETag: "<version>"`. A call naming the event
//!   it is made for (`X-Causation-Id`) is answered from memory when this
//!   instance saw that event committed (see [`crate::latest`]).
//! - `GET /payments/{id}/events?from_version=n&limit=m`: the payment's event
//!   stream, a page at a time (`Link: <...>; rel="next"` while there is more).
//! - `POST /payments/{id}/refunds`: refund part of it (honours `If-Match`
//!   and `Idempotency-Key`).
//!
//! The routes that read or change an existing payment answer only the
//! callers in `HTTP_CALLERS` (ServiceB, an operator): see
//! [`service_kit::auth`]. Accepting a payment is open.
//!
//! Writes answer once the events are committed to the event store; the
//! outbox relay publishes them to Kafka right after.

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use service_kit::auth::{CallerTokenScheme, Callers, Right, protect};
use service_kit::http::{
    ApiPath, ApiQuery, ErrorBody, FieldProblem, LookupError, QueryError, page, page_size,
};
use shared_events::{
    Amount, Currency, CustomerId, InvalidValue, OrderId, PaymentId, PaymentMethod, PaymentReceived,
    PaymentState,
};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::domain::{Payment, RefundReason, RefundRefused};
use crate::repository::{Cause, IdempotencyKey, Payments, Refund, RepositoryError, Written};

/// Largest accepted request body. A payment is a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Header carrying the id of the flow a request belongs to; stored with the
/// events and copied into `ce_correlationid`. When absent or not a UUID, the
/// request starts a flow: its own id is the correlation id.
pub const CORRELATION_ID: &str = "x-correlation-id";
/// Response header with the id given to the request: the cause
/// (`ce_causationid`) of the events it leads to.
pub const REQUEST_ID: &str = "x-request-id";
/// Header a caller sets to name the event that led to its request (ServiceB
/// names the notification it calls back for, whose id is the stored
/// event's); logged. On `GET /payments/{id}` it also says what the answer
/// must hold at least: that event.
pub const CAUSATION_ID: &str = "x-causation-id";
/// Header making a write safe to retry: the same request with the same key,
/// from the same customer, within the keys' lifetime, is done once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub payments: Payments,
}

service_kit::contract_schema!(
    /// `shared_events::PaymentState`, what the payment routes answer.
    PaymentStateSchema,
    PaymentState
);

service_kit::contract_schema!(
    /// `shared_events::PaymentMethod`, how a payment was made.
    PaymentMethodSchema,
    PaymentMethod
);

/// The OpenAPI 3.1 document of these routes, generated from the handlers
/// below; served at `GET /openapi.json` and committed as
/// `contracts/openapi/payments-service.json`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Payments",
        description = "Accepts payments and refunds into its event store; its outbox relay publishes them to Kafka. \
                       GET /payments/{id} is the GetPaymentInfo call ServiceB makes back.",
        version = "1.0.0",
    ),
    paths(create_payment, get_payment, payment_events, refund),
    modifiers(&CallerTokenScheme),
    components(schemas(
        NewPayment,
        NewRefund,
        StoredEvent,
        ErrorBody,
        FieldProblem,
        PaymentStateSchema,
        PaymentMethodSchema
    ))
)]
#[derive(Debug)]
pub struct ApiDoc;

/// [`ApiDoc`] as JSON, with the links from a write's answer to the
/// payment's other routes (its `payment_id` is their `{id}`): how a client,
/// or a fuzzer following them, gets from a new payment to reading and
/// refunding it. Written as JSON: utoipa 5.5 spells a link's `operationId`
/// `operation_id`.
pub fn openapi() -> serde_json::Value {
    let mut document = service_kit::openapi::to_json(ApiDoc::openapi());
    let links: serde_json::Map<String, serde_json::Value> = [
        ("GetPayment", "get_payment"),
        ("PaymentEvents", "payment_events"),
        ("Refund", "refund"),
    ]
    .into_iter()
    .map(|(name, operation)| {
        let link = serde_json::json!({
            "operationId": operation,
            "parameters": { "id": "$response.body#/payment_id" },
        });
        (name.to_owned(), link)
    })
    .collect();
    for path in ["/payments", "/payments/{id}/refunds"] {
        if let Some(created) = document
            .pointer_mut(&format!("/paths/{}/post/responses/201", path.replace('/', "~1")))
            .and_then(serde_json::Value::as_object_mut)
        {
            created.insert("links".to_owned(), links.clone().into());
        }
    }
    document
}

/// The payment routes (without `/health`, which needs a broker); those of
/// an existing payment answer only `callers`: reading needs
/// [`Right::Read`], refunding [`Right::Refund`].
pub fn app(state: AppState, callers: Callers) -> Router {
    let read = Router::new()
        .route("/payments/{id}", get(get_payment))
        .route("/payments/{id}/events", get(payment_events));
    let refunds = Router::new().route("/payments/{id}/refunds", post(refund));
    protect(read, callers.clone(), Right::Read)
        .merge(protect(refunds, callers, Right::Refund))
        .merge(service_kit::openapi::openapi_router(openapi()))
        .route("/payments", post(create_payment))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The body of `POST /payments`, before validation.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"customer_id": "customer-42", "order_id": "order-7", "amount": 1999, "currency": "EUR", "payment_method": "card"}))]
pub struct NewPayment {
    /// 1 to 64 characters, no control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub customer_id: String,
    /// 1 to 64 characters, no control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub order_id: String,
    /// Minor units (cents for EUR), greater than zero.
    #[schema(minimum = 1)]
    pub amount: i64,
    /// ISO 4217 code, e.g. EUR.
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// How the customer paid; `unknown` when not given (the API took no
    /// method before `PaymentReceived` v2, and still need not).
    #[serde(default)]
    #[schema(value_type = Option<PaymentMethodSchema>)]
    pub payment_method: Option<PaymentMethod>,
}

impl NewPayment {
    /// Checks every field, reporting all problems at once.
    pub fn validate(&self) -> Result<PaymentReceived, Vec<InvalidValue>> {
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
                payment_method: self.payment_method.unwrap_or_default(),
            }),
            (c, o, a, cur) => Err([c.err(), o.err(), a.err(), cur.err()]
                .into_iter()
                .flatten()
                .collect()),
        }
    }
}

/// The body of `POST /payments/{id}/refunds`, before validation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount": 500, "reason": "damaged"}))]
pub struct NewRefund {
    /// Minor units, in the payment's currency, greater than zero.
    #[schema(minimum = 1)]
    pub amount: i64,
    /// Why, for people: 1 to 200 characters, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    pub reason: String,
}

#[utoipa::path(
    post,
    path = "/payments",
    request_body = NewPayment,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same request with the same key from the same customer stores one payment (1 to 255 visible ASCII characters)"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "The flow this request belongs to; without it the request starts one"),
    ),
    responses(
        (status = 201, description = "Accepted and stored; `Idempotent-Replayed: true` when an earlier request with the same key stored it", body = PaymentStateSchema,
         headers(("ETag" = String, description = "The payment's version, quoted"), ("Location" = String), ("X-Request-Id" = Uuid))),
        (status = 400, description = "Malformed JSON or a malformed header", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Wrong types or invalid values (each listed in `details`), or the key reused with another body", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retrying with the same Idempotency-Key is safe", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip_all, fields(payment_id))]
async fn create_payment(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<NewPayment>,
) -> Result<Response, ApiError> {
    let received = request.validate().map_err(ApiError::Validation)?;
    let canonical = serde_json::to_value(&request).unwrap_or_default();
    let key = idempotency_key(&headers)?.map(|key| IdempotencyKey {
        key,
        request: &canonical,
    });
    let cause = cause(&headers);
    let created = state.payments.create(received, key, cause).await?;
    let id = created.payment.received.payment_id;
    tracing::Span::current().record("payment_id", tracing::field::display(id));
    tracing::debug!(new = created.new, request_id = %cause.request_id, "payment accepted");
    Ok(written(&created, id, cause))
}

/// `201` with the payment after a write, its `ETag`, `Location` and
/// `X-Request-Id`, and `Idempotent-Replayed: true` when an earlier request
/// with the same key made the write.
fn written(written: &Written, id: PaymentId, cause: Cause) -> Response {
    let mut response = with_etag(StatusCode::CREATED, &written.payment);
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, header_value(&format!("/payments/{id}")));
    headers.insert(REQUEST_ID, header_value(&cause.request_id.to_string()));
    if !written.new {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

#[utoipa::path(
    get,
    path = "/payments/{id}",
    security(("caller_token" = [])),
    params(
        ("id" = Uuid, Path, description = "The payment id"),
        ("X-Causation-Id" = Option<Uuid>, Header, description = "The event this call is made for (ServiceB names the notification it handles): the answer holds at least that event, from memory when this instance saw it committed"),
    ),
    responses(
        (status = 200, description = "The payment's current state: every write committed before the call when it names no event, or one this instance has not seen; otherwise at least the named event and every write this instance acknowledged or published", body = PaymentStateSchema,
         headers(("ETag" = String, description = "The payment's version, quoted"))),
        service_kit::auth::ReadRefused,
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No such payment", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip(state, headers), fields(
    correlation_id = uuid_header(&headers, CORRELATION_ID).map(tracing::field::display),
    causation_id = uuid_header(&headers, CAUSATION_ID).map(tracing::field::display),
))]
async fn get_payment(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = PaymentId::parse(&id).map_err(LookupError::from)?;
    let payment = state
        .payments
        .current(id, uuid_header(&headers, CAUSATION_ID))
        .await?;
    Ok(with_etag(StatusCode::OK, &payment))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsQuery {
    /// The first version to return (default 1).
    #[param(minimum = 1)]
    from_version: Option<u64>,
    /// Events per page: default 100, at most 1000.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A stored event as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct StoredEvent {
    version: u64,
    position: i64,
    event_id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    schema_version: i32,
    data: serde_json::Value,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
    recorded_at: DateTime<Utc>,
}

#[utoipa::path(
    get,
    path = "/payments/{id}/events",
    security(("caller_token" = [])),
    params(("id" = Uuid, Path, description = "The payment id"), EventsQuery),
    responses(
        (status = 200, description = "A page of the payment's stored events, in version order; `Link: <...>; rel=\"next\"` while there are more", body = [StoredEvent]),
        service_kit::auth::ReadRefused,
        (status = 400, description = "A bad id, from_version or limit", body = ErrorBody),
        (status = 404, description = "No such payment", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip(state))]
async fn payment_events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let id = PaymentId::parse(&id).map_err(LookupError::from)?;
    let limit = page_size(query.limit)?;
    // One more than asked: whether there is a next page.
    let events = state
        .payments
        .events(id, query.from_version.unwrap_or(1), limit + 1)
        .await?;
    let events = events.into_iter().map(|e| StoredEvent {
        version: e.version,
        position: e.position,
        event_id: e.event_id,
        event_type: e.event_type,
        schema_version: e.schema_version,
        data: e.data,
        correlation_id: e.metadata.correlation_id,
        causation_id: e.metadata.causation_id,
        recorded_at: e.recorded_at,
    });
    // A stream's versions follow each other: the next page starts one after
    // this page's last.
    Ok(page(events.collect(), limit, |last| {
        format!(
            "/payments/{id}/events?from_version={}&limit={limit}",
            last.version + 1
        )
    }))
}

#[utoipa::path(
    post,
    path = "/payments/{id}/refunds",
    security(("caller_token" = [])),
    request_body = NewRefund,
    params(
        ("id" = Uuid, Path, description = "The payment id"),
        ("If-Match" = Option<String>, Header, description = "The version the refund was decided on, quoted, as the ETag gave it"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same refund with the same key is done once"),
        ("X-Correlation-Id" = Option<Uuid>, Header, description = "The flow this request belongs to"),
    ),
    responses(
        (status = 201, description = "Refunded; the payment's new state", body = PaymentStateSchema,
         headers(("ETag" = String), ("Location" = String), ("X-Request-Id" = Uuid))),
        service_kit::auth::RefundRefused,
        (status = 400, description = "Malformed JSON, id, If-Match or key", body = ErrorBody),
        (status = 404, description = "No such payment", body = ErrorBody),
        (status = 409, description = "The payment moved on from the If-Match version", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "More than what is left, a bad amount or reason, or the key reused with another refund", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retrying with the same Idempotency-Key or If-Match is safe", body = ErrorBody),
    ),
)]
#[tracing::instrument(skip(state, headers, request))]
async fn refund(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<NewRefund>,
) -> Result<Response, ApiError> {
    let id = PaymentId::parse(&id).map_err(LookupError::from)?;
    let expected = if_match(&headers)?;
    let (amount, reason) = match (
        Amount::parse(request.amount),
        RefundReason::parse(&request.reason),
    ) {
        (Ok(amount), Ok(reason)) => (amount, reason),
        (a, r) => {
            return Err(ApiError::Validation(
                [a.err(), r.err()].into_iter().flatten().collect(),
            ));
        }
    };
    // What makes a retry the same request: the payment, the body and the
    // version it was decided on.
    let canonical = serde_json::json!({
        "payment_id": id,
        "amount": request.amount,
        "reason": request.reason,
        "if_match": expected,
    });
    let key = idempotency_key(&headers)?.map(|key| IdempotencyKey {
        key,
        request: &canonical,
    });
    let cause = cause(&headers);
    let refunded = state
        .payments
        .refund(
            id,
            Refund {
                amount,
                reason,
                expected,
                key,
                cause,
            },
        )
        .await?;
    tracing::debug!(
        version = refunded.payment.version,
        refunded = refunded.payment.refunded,
        new = refunded.new,
        request_id = %cause.request_id,
        "refund accepted"
    );
    Ok(written(&refunded, id, cause))
}

/// The payment's state as JSON, with its version as the ETag.
fn with_etag(status: StatusCode, payment: &Payment) -> Response {
    let etag = header_value(&format!("\"{}\"", payment.version));
    (status, [(header::ETAG, etag)], Json(payment.to_state())).into_response()
}

fn header_value(s: &str) -> HeaderValue {
    // Only ids, digits and quotes are put in headers here.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The request's own id, and its flow's: the caller's `X-Correlation-Id`,
/// or the request's id when it starts a flow.
fn cause(headers: &HeaderMap) -> Cause {
    let request_id = Uuid::now_v7();
    Cause {
        correlation_id: uuid_header(headers, CORRELATION_ID).unwrap_or(request_id),
        request_id,
    }
}

fn uuid_header(headers: &HeaderMap, name: &str) -> Option<Uuid> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::try_parse(v.trim()).ok())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN => Ok(Some(key)),
        _ => Err(ApiError::InvalidHeader {
            name: IDEMPOTENCY_KEY,
            expected: "1 to 255 visible ASCII characters",
        }),
    }
}

/// `If-Match: "<version>"` (or `*`, or none: any version).
fn if_match(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let invalid = || ApiError::InvalidHeader {
        name: "if-match",
        expected: "a quoted version, e.g. \"3\", as sent in the ETag",
    };
    let value = value.to_str().map_err(|_| invalid())?.trim();
    if value == "*" {
        return Ok(None);
    }
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(invalid)
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
    /// 400: the query string does not parse, or a value is out of range.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// 422: well-formed, but the values break the rules.
    #[error("invalid request")]
    Validation(Vec<InvalidValue>),
    /// 400 or 404: the payment in the path.
    #[error(transparent)]
    Lookup(#[from] LookupError),
    /// 400: a header is malformed.
    #[error("invalid header {name}")]
    InvalidHeader {
        name: &'static str,
        expected: &'static str,
    },
    /// 409: the payment changed since the version the client saw.
    #[error("version conflict: at {actual}, expected {expected}")]
    Conflict { expected: u64, actual: u64 },
    /// 422: the refund breaks a rule (more than what is left).
    #[error(transparent)]
    Refused(RefundRefused),
    /// 422: the idempotency key came before with a different request.
    #[error("idempotency key reused")]
    KeyReused,
    /// 503: the database could not be reached. Whether the write happened is
    /// unknown only if the connection broke mid-commit; retrying with the
    /// same `Idempotency-Key` (or, for a refund, the same `If-Match`) is safe
    /// either way, and retrying without either may do it twice.
    #[error("storage unavailable: {0}")]
    Unavailable(event_store::Error),
    /// 500: stored data that makes no sense.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<RepositoryError> for ApiError {
    fn from(e: RepositoryError) -> Self {
        match e {
            RepositoryError::NotFound => Self::Lookup(LookupError::NotFound),
            RepositoryError::VersionMismatch { expected, actual } => Self::Conflict { expected, actual },
            RepositoryError::Refused(refused) => Self::Refused(refused),
            RepositoryError::KeyReused => Self::KeyReused,
            RepositoryError::Store(event_store::Error::Conflict { expected, actual, .. }) => Self::Conflict {
                expected: match expected {
                    event_store::ExpectedVersion::Exact(v) => v,
                    _ => 0,
                },
                actual: actual.unwrap_or_default(),
            },
            RepositoryError::Store(e) if e.is_unavailable() => Self::Unavailable(e),
            RepositoryError::Store(e) => Self::Internal(e.to_string()),
            corrupt @ RepositoryError::Corrupt(..) => Self::Internal(corrupt.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
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
            Self::Query(query) => return query.into_response(),
            Self::Lookup(lookup) => return lookup.into_response(),
            Self::InvalidHeader { name, expected } => (
                StatusCode::BAD_REQUEST,
                ErrorBody::new("invalid_header", format!("{name}: expected {expected}")),
            ),
            Self::Conflict { actual, .. } => (
                StatusCode::CONFLICT,
                ErrorBody::new(
                    "version_conflict",
                    format!("the payment is at version {actual}; reload it and decide again"),
                ),
            ),
            Self::Refused(refused) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::new("refund_refused", refused.to_string()),
            ),
            Self::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorBody::new(
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request",
                ),
            ),
            Self::Unavailable(e) => {
                tracing::error!(error = %e, "storage unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorBody::new(
                        "unavailable",
                        "the database could not be reached, and the request may or may not have been \
                         applied; retrying it with the same Idempotency-Key (or, for a refund, the same \
                         If-Match) applies it once; retrying without either may apply it twice",
                    ),
                )
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorBody::new("internal", "something went wrong on our side"),
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
            payment_method: None,
        }
    }

    #[test]
    fn a_valid_request_becomes_a_payment() {
        let payment = request(1999, "EUR").validate().expect("valid");
        assert_eq!(payment.amount.minor_units(), 1999);
        assert_eq!(payment.currency.code(), "EUR");
        assert_eq!(payment.customer_id.as_str(), "c-1");
        assert_eq!(payment.payment_method, PaymentMethod::Unknown, "not given");
        let by_card = NewPayment {
            payment_method: Some(PaymentMethod::Card),
            ..request(1999, "EUR")
        };
        assert_eq!(
            by_card.validate().expect("valid").payment_method,
            PaymentMethod::Card
        );
        let json: NewPayment = serde_json::from_value(serde_json::json!({
            "customer_id": "c", "order_id": "o", "amount": 1, "currency": "EUR", "payment_method": "bank_transfer"
        }))
        .expect("a method by name");
        assert_eq!(json.payment_method, Some(PaymentMethod::BankTransfer));
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let mut bad = request(0, "euro");
        bad.customer_id = String::new();
        let problems = bad.validate().expect_err("invalid");
        let fields: Vec<_> = problems.iter().map(|p| p.field).collect();
        assert_eq!(fields, ["customer_id", "amount", "currency"]);
    }

    #[test]
    fn if_match_takes_a_quoted_version_or_a_star() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_MATCH, HeaderValue::from_str(v).expect("header"));
            if_match(&h)
        };
        assert_eq!(with("\"3\"").ok(), Some(Some(3)));
        assert_eq!(with("*").ok(), Some(None));
        assert_eq!(if_match(&HeaderMap::new()).ok(), Some(None));
        for bad in ["3", "\"x\"", "\"-1\"", "\"+3\"", "\"\"", "W/\"3\"", "\""] {
            assert!(matches!(with(bad), Err(ApiError::InvalidHeader { .. })), "{bad}");
        }
    }
}
