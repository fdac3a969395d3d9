//! The events Payments publishes.
//!
//! `PaymentReceived` exists in two shapes, one per pattern:
//!
//! - [`PaymentReceivedNotification`] (event notification): the absolute
//!   minimum, *which* payment and *when*. A consumer that needs more asks
//!   Payments (ServiceB's `GetPaymentInfo` callback).
//! - [`PaymentState`] (event-carried state transfer): the whole payment as it
//!   is now, after every change, so a consumer can keep its own copy and never
//!   call back (ServiceA's cache).
//!
//! Refunds are announced the same two ways: a [`PaymentRefundedNotification`]
//! and the payment's new [`PaymentState`].
//!
//! # How an event evolves
//!
//! Readers are tolerant: a field they do not know is ignored. So adding a
//! field is not a breaking change, and keeps the version, as
//! `payment_method` was added to [`PaymentState`] (optional there: a state
//! without it reads as [`PaymentMethod::Unknown`]). A change an old reader
//! could not read (a field removed, renamed or retyped, or a value it does
//! not know) bumps the version in `ce_type`, and CI (`cargo xtask
//! contracts-compat`) fails on such a change made without the bump.
//!
//! A bump is also how a writer promises more: `PaymentReceived` v2 always
//! says how the customer paid. Readers of v2 read v1 too, upcasting it
//! ([`Event::upcast`]): [`PaymentReceivedNotification`] reads
//! [`PaymentReceivedNotificationV1`] as a v2 with [`PaymentMethod::Unknown`].
//! The order of an upgrade follows: first every consumer (new consumers
//! read both versions, old ones keep reading v1), then Payments. An old
//! consumer handed a v2 would send it to its dead-letter topic, from where
//! it is redriven once that consumer is upgraded.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use rdkafka::Message;
use uuid::Uuid;

use crate::envelope::{Envelope, Metadata, decode};
use crate::error::DecodeError;
use crate::payment::{Amount, Currency, CustomerId, OrderId, PaymentId, PaymentMethod};
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
    pub const fn new(name: &'static str, version: u32) -> Self {
        Self { name, version }
    }

    /// The `ce_type` header value, e.g. `payments.payment-received.notification.v1`.
    pub fn ce_type(self) -> String {
        format!("{}.v{}", self.name, self.version)
    }
}

/// Something Payments publishes: its data is the JSON record value.
pub trait Event: Serialize + DeserializeOwned + JsonSchema {
    /// Name and schema version.
    const TYPE: EventType;
    /// Which topic it goes to.
    const TOPIC: TopicKind;

    /// The payment it is about.
    fn payment_id(&self) -> PaymentId;

    /// The record key: the payment id. All events of one payment share it,
    /// so they land in one partition and keep their order.
    fn key(&self) -> String {
        self.payment_id().to_string()
    }

    /// The data of an earlier `version` of this event, read as this one;
    /// `None` for a version this reader does not read. Only the current
    /// version is read unless an event says otherwise.
    fn upcast(version: u32, data: &[u8]) -> Option<Result<Self, serde_json::Error>> {
        let _ = (version, data);
        None
    }
}

/// Implements [`Event`] for `$event`, a struct with a `payment_id` field:
/// type `$name` version `$version`, on the `$topic` topic, reading only
/// its current version. (An event that reads older ones too implements
/// [`Event`] itself, with [`Event::upcast`].)
macro_rules! event {
    ($event:ty, $name:literal, $version:literal, $topic:ident) => {
        impl Event for $event {
            const TYPE: EventType = EventType::new($name, $version);
            const TOPIC: TopicKind = TopicKind::$topic;

            fn payment_id(&self) -> PaymentId {
                self.payment_id
            }
        }
    };
}

/// A payment was received: which payment, when, and how it was paid (so a
/// consumer can tell whether it cares before it calls back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentReceivedNotification {
    pub payment_id: PaymentId,
    pub received_at: DateTime<Utc>,
    pub payment_method: PaymentMethod,
}

impl Event for PaymentReceivedNotification {
    const TYPE: EventType = EventType::new("payments.payment-received.notification", 2);
    const TOPIC: TopicKind = TopicKind::Notifications;

    fn payment_id(&self) -> PaymentId {
        self.payment_id
    }

    fn upcast(version: u32, data: &[u8]) -> Option<Result<Self, serde_json::Error>> {
        (version == PaymentReceivedNotificationV1::TYPE.version)
            .then(|| serde_json::from_slice::<PaymentReceivedNotificationV1>(data).map(Self::from))
    }
}

/// A payment was received, as version 1 said it: only which payment, and
/// when. What Payments published before v2; still read (as a v2 with
/// [`PaymentMethod::Unknown`]), no longer written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentReceivedNotificationV1 {
    pub payment_id: PaymentId,
    pub received_at: DateTime<Utc>,
}

event!(
    PaymentReceivedNotificationV1,
    "payments.payment-received.notification",
    1,
    Notifications
);

impl From<PaymentReceivedNotificationV1> for PaymentReceivedNotification {
    fn from(v1: PaymentReceivedNotificationV1) -> Self {
        Self {
            payment_id: v1.payment_id,
            received_at: v1.received_at,
            payment_method: PaymentMethod::Unknown,
        }
    }
}

/// A payment was received: the whole payment as it arrived. The event
/// Payments stores (version 2; version 1, without `payment_method`, is
/// [`PaymentReceivedV1`]); on Kafka it travels as a
/// [`PaymentReceivedNotification`] and a [`PaymentState`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentReceived {
    pub payment_id: PaymentId,
    pub customer_id: CustomerId,
    pub order_id: OrderId,
    /// In the currency's minor unit (cents for EUR).
    pub amount: Amount,
    /// ISO 4217 code.
    pub currency: Currency,
    pub received_at: DateTime<Utc>,
    pub payment_method: PaymentMethod,
}

impl PaymentReceived {
    /// The notification announcing this payment.
    pub fn notification(&self) -> PaymentReceivedNotification {
        PaymentReceivedNotification {
            payment_id: self.payment_id,
            received_at: self.received_at,
            payment_method: self.payment_method,
        }
    }
}

/// A payment was received, as Payments stored it before v2: without how it
/// was paid. Events stored so are upcast to [`PaymentReceived`] when a
/// stream is loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentReceivedV1 {
    pub payment_id: PaymentId,
    pub customer_id: CustomerId,
    pub order_id: OrderId,
    pub amount: Amount,
    pub currency: Currency,
    pub received_at: DateTime<Utc>,
}

impl From<PaymentReceivedV1> for PaymentReceived {
    fn from(v1: PaymentReceivedV1) -> Self {
        Self {
            payment_id: v1.payment_id,
            customer_id: v1.customer_id,
            order_id: v1.order_id,
            amount: v1.amount,
            currency: v1.currency,
            received_at: v1.received_at,
            payment_method: PaymentMethod::Unknown,
        }
    }
}

/// Part of a payment was given back: which payment, which refund, when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefundedNotification {
    pub payment_id: PaymentId,
    pub refund_id: Uuid,
    pub refunded_at: DateTime<Utc>,
}

event!(
    PaymentRefundedNotification,
    "payments.payment-refunded.notification",
    1,
    Notifications
);

/// A notification of either kind, as read from the notifications topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    Received(Envelope<PaymentReceivedNotification>),
    Refunded(Envelope<PaymentRefundedNotification>),
}

impl Notification {
    /// Decodes a record of the notifications topic, whichever kind it is.
    pub fn decode(record: &impl Message) -> Result<Self, DecodeError> {
        match decode(record) {
            Err(DecodeError::UnknownType(_)) => decode(record).map(Self::Refunded),
            received => received.map(Self::Received),
        }
    }

    pub fn payment_id(&self) -> PaymentId {
        match self {
            Self::Received(n) => n.data.payment_id,
            Self::Refunded(n) => n.data.payment_id,
        }
    }

    pub fn metadata(&self) -> &Metadata {
        match self {
            Self::Received(n) => &n.metadata,
            Self::Refunded(n) => &n.metadata,
        }
    }

    /// When what it announces happened.
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::Received(n) => n.data.received_at,
            Self::Refunded(n) => n.data.refunded_at,
        }
    }

    /// `received` or `refunded`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Received(_) => "received",
            Self::Refunded(_) => "refunded",
        }
    }
}

/// A payment's whole current state: what the compacted state topic carries
/// after every change, so a consumer keeps a complete copy of every payment
/// (event-carried state transfer). A new payment's state is the payment as
/// received, with nothing refunded, at version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentState {
    pub payment_id: PaymentId,
    pub customer_id: CustomerId,
    pub order_id: OrderId,
    /// In the currency's minor unit (cents for EUR).
    pub amount: Amount,
    /// ISO 4217 code.
    pub currency: Currency,
    pub received_at: DateTime<Utc>,
    /// Sum of refunds so far, minor units.
    pub refunded: i64,
    /// The payment's version: how many events it has been through.
    pub version: u64,
    /// Added without a new version (readers ignore what they do not know):
    /// a state published before it reads as `unknown`.
    #[serde(default)]
    pub payment_method: PaymentMethod,
}

event!(PaymentState, "payments.payment.state", 1, State);
