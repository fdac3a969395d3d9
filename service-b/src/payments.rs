//! The client for Payments' GetPaymentInfo (`GET /payments/{id}`).
//!
//! Connections are kept and reused (HTTP/1.1 keep-alive: Payments serves
//! HTTP/1.1, one request at a time per connection), and at most
//! [`CallbackLimits::connections`] calls are in flight at once, so that
//! many are kept open: a callback does not pay a TCP handshake, and a
//! burst of notifications cannot open one connection per record in hand
//! (up to `CONSUMER_MAX_IN_FLIGHT`) against Payments' `HTTP_MAX_CONNECTIONS`.
//! Each call names the notification it is made for (`X-Causation-Id`), which
//! lets Payments answer from memory (see `payments_service::latest`).

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use service_kit::auth::Token;
use shared_events::{PaymentId, PaymentState};
use tokio::sync::Semaphore;
use tracing::Instrument;
use uuid::Uuid;

/// Why GetPaymentInfo did not return the payment.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// Payments does not know the payment (yet, or any more).
    #[error("payments does not know the payment")]
    NotFound,
    #[error("payments unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// Payments does not accept ServiceB's `PAYMENTS_TOKEN` (401), or not
    /// for this route (403): a configuration to fix, after which a retry
    /// (or a redrive of the dead letters) succeeds.
    #[error("payments refused ServiceB's credential ({0}): check PAYMENTS_TOKEN and Payments' HTTP_CALLERS")]
    Refused(StatusCode),
    #[error("payments answered {0}")]
    Status(StatusCode),
    #[error("payments sent an unreadable payment: {0}")]
    Body(#[source] reqwest::Error),
}

/// How ServiceB calls Payments back; see [`crate::Config`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallbackLimits {
    /// How long one call may take, once under way.
    pub timeout: Duration,
    /// Calls in flight at once, and so connections kept open for them.
    pub connections: usize,
}

impl Default for CallbackLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            connections: 64,
        }
    }
}

/// How long an unused connection is kept: under Payments' idle limit
/// (`HTTP_HEADER_TIMEOUT_MS`, 10 s by default), so ServiceB lets it go
/// first, and never sends on a connection the server is closing.
const IDLE_CONNECTION: Duration = Duration::from_secs(5);

/// Calls Payments. Cheap to clone; clones share the connections and the
/// bound on calls in flight.
#[derive(Debug, Clone)]
pub struct PaymentsClient {
    http: reqwest::Client,
    /// One permit per call in flight.
    in_flight: Arc<Semaphore>,
    base_url: String,
    /// `Authorization: Bearer <PAYMENTS_TOKEN>`, marked sensitive.
    authorization: reqwest::header::HeaderValue,
}

impl PaymentsClient {
    /// A client for Payments at `base_url`, proving itself with `token`,
    /// within `limits`.
    pub fn new(base_url: &str, token: Token, limits: CallbackLimits) -> Self {
        let connections = limits.connections.max(1);
        let http = reqwest::Client::builder()
            .timeout(limits.timeout)
            // Payments speaks HTTP/1.1 only: no upgrade attempt.
            .http1_only()
            // As many kept as calls may be in flight: each finds one open.
            .pool_max_idle_per_host(connections)
            .pool_idle_timeout(IDLE_CONNECTION)
            .user_agent(crate::SERVICE)
            .build()
            // Fails only if the TLS backend or resolver cannot initialise;
            // this client is built without either.
            .expect("HTTP client without TLS always builds");
        Self {
            http,
            in_flight: Arc::new(Semaphore::new(connections)),
            base_url: base_url.trim_end_matches('/').to_owned(),
            authorization: token.authorization(),
        }
    }

    /// GetPaymentInfo, for the notification `cause`, in the flow
    /// `correlation_id`: both go with the request, for Payments' logs.
    pub async fn payment(
        &self,
        id: PaymentId,
        correlation_id: Uuid,
        cause: Uuid,
    ) -> Result<PaymentState, CallbackError> {
        let url = format!("{}/payments/{id}", self.base_url);
        // OpenTelemetry's HTTP client conventions: named by the method, a
        // child of the record's span, and its context in the request's
        // `traceparent`, which Payments' span continues.
        let span = tracing::info_span!(
            "callback",
            otel.name = "GET",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "GET",
            url.full = url,
            http.response.status_code = tracing::field::Empty,
        );
        let mut request = self
            .http
            .get(url)
            .header(reqwest::header::AUTHORIZATION, self.authorization.clone())
            .header("x-correlation-id", correlation_id.to_string())
            .header("x-causation-id", cause.to_string())
            .build()
            .map_err(CallbackError::Unreachable)?;
        span.in_scope(|| service_kit::telemetry::inject_into_http(request.headers_mut()));
        async {
            // Held until the body is read: the connection is busy until then.
            let _permit = self
                .in_flight
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let response = self.http.execute(request).await.map_err(|e| {
                tracing::Span::current().record("otel.status_code", "ERROR");
                CallbackError::Unreachable(e)
            })?;
            let status = response.status();
            tracing::Span::current().record("http.response.status_code", status.as_u16());
            if status == StatusCode::NOT_FOUND {
                return Err(CallbackError::NotFound);
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                tracing::Span::current().record("otel.status_code", "ERROR");
                return Err(CallbackError::Refused(status));
            }
            if status != StatusCode::OK {
                tracing::Span::current().record("otel.status_code", "ERROR");
                return Err(CallbackError::Status(status));
            }
            response.json().await.map_err(CallbackError::Body)
        }
        .instrument(span)
        .await
    }
}
