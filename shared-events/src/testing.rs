//! Fixtures for tests of code that handles events (feature `test-util`).

use chrono::Utc;
use rdkafka::Timestamp;
use rdkafka::message::OwnedMessage;

use crate::envelope::{Envelope, encode};
use crate::events::{Event, PaymentReceived, PaymentState};
use crate::payment::{Amount, Currency, CustomerId, OrderId, PaymentId, PaymentMethod};

/// A valid payment of 19.99 EUR, with a fresh id.
pub fn payment() -> PaymentReceived {
    PaymentReceived {
        payment_id: PaymentId::new(),
        customer_id: CustomerId::parse("c-1").expect("valid customer id"),
        order_id: OrderId::parse("o-1").expect("valid order id"),
        amount: Amount::parse(1999).expect("valid amount"),
        currency: Currency::parse("EUR").expect("valid currency"),
        received_at: Utc::now(),
        payment_method: PaymentMethod::Card,
    }
}

/// The state of a payment just received.
pub fn state() -> PaymentState {
    let p = payment();
    PaymentState {
        payment_id: p.payment_id,
        customer_id: p.customer_id,
        order_id: p.order_id,
        amount: p.amount,
        currency: p.currency,
        received_at: p.received_at,
        refunded: 0,
        version: 1,
        payment_method: p.payment_method,
    }
}

/// `event` as a consumer would receive it from `topic` at `offset`.
pub fn delivered<E: Event>(topic: &str, offset: i64, event: &Envelope<E>) -> OwnedMessage {
    let record = encode(event).expect("test events encode");
    OwnedMessage::new(
        Some(record.payload),
        Some(record.key.into_bytes()),
        topic.to_owned(),
        Timestamp::NotAvailable,
        0,
        offset,
        Some(record.headers),
    )
}
