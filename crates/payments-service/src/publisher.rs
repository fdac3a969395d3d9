//! Publishing events. Handlers see only the [`EventPublisher`] trait, so they
//! can be tested without a broker; [`KafkaPublisher`] is the real thing.

use std::future::Future;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use shared_events::{EncodeError, Envelope, Event, PaymentReceived, Topics, encode};
use uuid::Uuid;

use crate::SERVICE;

/// Why events were not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker did not acknowledge in time, or refused.
    #[error("broker did not acknowledge: {0}")]
    Broker(#[from] KafkaError),
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// Publishes what happened to payments.
pub trait EventPublisher: Send + Sync + 'static {
    /// Publishes `payment` as a notification and as state; resolves once the
    /// broker has acknowledged both.
    fn payment_received(
        &self,
        payment: &PaymentReceived,
        correlation_id: Uuid,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// Publishes to Kafka through an idempotent producer. Cheap to clone.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    topics: Topics,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    pub fn new(producer: FutureProducer, topics: Topics) -> Self {
        Self { producer, topics }
    }

    /// Sends one event and waits for the broker's acknowledgement, which
    /// comes within the producer's `message.timeout.ms` either way.
    async fn send<E: Event>(&self, event: &Envelope<E>) -> Result<(), PublishError> {
        let record = encode(event)?;
        let topic = self.topics.name(record.topic);
        let future_record = FutureRecord::to(topic)
            .key(&record.key)
            .payload(&record.payload)
            .headers(record.headers);
        let delivery = self
            .producer
            .send(future_record, Timeout::Never)
            .await
            .map_err(|(e, _)| e)?;
        tracing::debug!(
            topic,
            partition = delivery.partition,
            offset = delivery.offset,
            event_id = %event.metadata.id,
            "event published"
        );
        Ok(())
    }

    /// Waits for queued messages to be delivered. Dropping a producer discards
    /// what is still queued, so this runs before shutdown.
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}

impl EventPublisher for KafkaPublisher {
    async fn payment_received(
        &self,
        payment: &PaymentReceived,
        correlation_id: Uuid,
    ) -> Result<(), PublishError> {
        let source = format!("/{SERVICE}");
        let at = payment.received_at;
        let state = Envelope::new(&source, payment.clone(), correlation_id, None).occurred_at(at);
        let notification =
            Envelope::new(&source, payment.notification(), correlation_id, None).occurred_at(at);
        // Both sends run to the end: dropping one when the other fails would
        // not recall its message, which may still be delivered.
        let (state_sent, notification_sent) = tokio::join!(self.send(&state), self.send(&notification));
        state_sent?;
        notification_sent?;
        tracing::info!(
            state_event_id = %state.metadata.id,
            notification_event_id = %notification.metadata.id,
            "payment events acknowledged"
        );
        Ok(())
    }
}
