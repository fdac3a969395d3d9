//! The events Payments publishes.
//!
//! `PaymentReceived` exists in two shapes, one per pattern:
//!
//! - [`PaymentReceivedNotification`] (event notification): the absolute
//!   minimum, *which* payment and *when*. A consumer that needs more asks
//!   Payments (ServiceB's `GetPaymentInfo` callback).
//! - [`PaymentReceived`] (event-carried state transfer): the whole payment, so
//!   a consumer can keep its own copy and never call back (ServiceA's cache).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::payment::{Amount, Currency, CustomerId, OrderId, PaymentId};
use crate::topics::TopicKind;

/// The name and schema version of an event, carried in `ce_type` as
/// `<name>.v<version>`. A breaking change to an event's data bumps the version;
/// adding an optional field does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventType {
    pub name: &'static str,
    pub version: u32,
}

impl EventType {
    /// The `ce_type` header value, e.g. `payments.payment-received.notification.v1`.
    pub fn ce_type(self) -> String {
        format!("{}.v{}", self.name, self.version)
    }
}

/// Something Payments publishes: its data is the JSON record value.
pub trait Event: Serialize + DeserializeOwned {
    /// Name and schema version.
    const TYPE: EventType;
    /// Which topic it goes to.
    const TOPIC: TopicKind;

    /// The record key. All events of one payment share it, so they land in
    /// one partition and keep their order.
    fn key(&self) -> String;
}

/// A payment was received: only which payment, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentReceivedNotification {
    pub payment_id: PaymentId,
    pub received_at: DateTime<Utc>,
}

impl Event for PaymentReceivedNotification {
    const TYPE: EventType = EventType {
        name: "payments.payment-received.notification",
        version: 1,
    };
    const TOPIC: TopicKind = TopicKind::Notifications;

    fn key(&self) -> String {
        self.payment_id.to_string()
    }
}

/// A payment was received: the whole payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentReceived {
    pub payment_id: PaymentId,
    pub customer_id: CustomerId,
    pub order_id: OrderId,
    /// In the currency's minor unit (cents for EUR).
    pub amount: Amount,
    /// ISO 4217 code.
    pub currency: Currency,
    pub received_at: DateTime<Utc>,
}

impl PaymentReceived {
    /// The notification announcing this payment.
    pub fn notification(&self) -> PaymentReceivedNotification {
        PaymentReceivedNotification {
            payment_id: self.payment_id,
            received_at: self.received_at,
        }
    }
}

impl Event for PaymentReceived {
    const TYPE: EventType = EventType {
        name: "payments.payment-received.state",
        version: 1,
    };
    const TOPIC: TopicKind = TopicKind::State;

    fn key(&self) -> String {
        self.payment_id.to_string()
    }
}
