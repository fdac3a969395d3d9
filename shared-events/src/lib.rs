//! The contract every service shares: what a payment event is and how it
//! travels over Kafka.
//!
//! Producers and consumers depend on this crate and nothing else to agree on
//! the wire format, so a change here is a change of the public contract.
//!
//! # Layout
//!
//! - [`payment`]: validated value types (`PaymentId`, `Amount`, `Currency`, ...).
//!   Money is integer minor units plus an ISO 4217 currency, never a float.
//! - [`events`]: the events themselves. `PaymentReceived` exists twice: as a
//!   minimal *notification* (which payment, when) and as *state* (the whole
//!   payment, for event-carried state transfer); refunds likewise.
//! - [`envelope`]: the one encode/decode path, following the CloudEvents 1.0
//!   Kafka protocol binding in binary content mode.
//! - [`topics`]: topic names and their settings (retention vs. compaction).
//! - [`services`]: the services' names, Kafka users, PostgreSQL roles and
//!   the relay's transactional-id prefix.
//! - [`error`]: what can go wrong when parsing, encoding or decoding.
//! - [`contracts`]: the JSON Schemas and the AsyncAPI document generated
//!   from all of the above, committed under `contracts/`.
//! - `testing` (feature `test-util`): fixtures for consumers' tests.

pub mod contracts;
pub mod envelope;
pub mod error;
pub mod events;
pub mod payment;
pub mod services;
pub mod topics;

#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use envelope::{Envelope, EventId, KafkaRecord, Metadata, decode, encode};
pub use error::{DecodeError, EncodeError, InvalidValue};
pub use events::{
    Event, EventType, Notification, PaymentReceived, PaymentReceivedNotification,
    PaymentReceivedNotificationV1, PaymentReceivedV1, PaymentRefundedNotification, PaymentState,
};
pub use payment::{Amount, Currency, CustomerId, OrderId, PaymentId, PaymentMethod};
pub use topics::{TopicKind, TopicSpec, Topics, dead_letter_topic};
