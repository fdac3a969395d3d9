//! The client for Payments' GetPaymentInfo (`GET /payments/{id}`).

use std::time::Duration;

use reqwest::StatusCode;
use shared_events::{PaymentId, PaymentState};
use uuid::Uuid;

/// Why GetPaymentInfo did not return the payment.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// Payments does not know the payment (yet, or any more).
    #[error("payments does not know the payment")]
    NotFound,
    #[error("payments unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("payments answered {0}")]
    Status(StatusCode),
    #[error("payments sent an unreadable payment: {0}")]
    Body(#[source] reqwest::Error),
}

/// Calls Payments. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PaymentsClient {
    http: reqwest::Client,
    base_url: String,
}

impl PaymentsClient {
    /// A client for Payments at `base_url`; each call gives up after `timeout`.
    pub fn new(base_url: &str, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(crate::SERVICE)
            .build()
            // Fails only if the TLS backend or resolver cannot initialise;
            // this client is built without either.
            .expect("HTTP client without TLS always builds");
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
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
        let response = self
            .http
            .get(format!("{}/payments/{id}", self.base_url))
            .header("x-correlation-id", correlation_id.to_string())
            .header("x-causation-id", cause.to_string())
            .send()
            .await
            .map_err(CallbackError::Unreachable)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Err(CallbackError::NotFound);
        }
        if response.status() != StatusCode::OK {
            return Err(CallbackError::Status(response.status()));
        }
        response.json().await.map_err(CallbackError::Body)
    }
}
