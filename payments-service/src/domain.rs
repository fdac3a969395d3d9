//! A payment as a stream of events, and the rules that produce them.
//!
//! The stream of a payment is `PaymentReceived`, then zero or more
//! `PaymentRefunded` (partial refunds whose sum never exceeds what was
//! received). The current state is a fold over the events ([`Payment::replay`]);
//! commands ([`Payment::refund`]) look at the state and decide which events
//! happen, or refuse. No I/O here: the rules are tested as given events, when
//! command, then events (or error).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shared_events::{Amount, InvalidValue, PaymentId, PaymentReceived, PaymentState};
use uuid::Uuid;

/// Longest accepted refund reason, in characters.
pub const MAX_REASON_LEN: usize = 200;

/// Why money was given back: 1 to [`MAX_REASON_LEN`] printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefundReason(String);

impl RefundReason {
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        let problem = if s.trim().is_empty() {
            Some("must not be empty".to_owned())
        } else if s.chars().count() > MAX_REASON_LEN {
            Some(format!("must be at most {MAX_REASON_LEN} characters"))
        } else if s.chars().any(char::is_control) {
            Some("must not contain control characters".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(InvalidValue {
                field: "reason",
                problem,
            }),
            None => Ok(Self(s.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RefundReason {
    type Error = InvalidValue;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<RefundReason> for String {
    fn from(r: RefundReason) -> String {
        r.0
    }
}

/// Part of a payment was given back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub payment_id: PaymentId,
    pub refund_id: Uuid,
    /// In the payment's currency, minor units.
    pub amount: Amount,
    pub reason: RefundReason,
    pub refunded_at: DateTime<Utc>,
}

/// What can happen to a payment: the events of its stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum PaymentEvent {
    Received(PaymentReceived),
    Refunded(PaymentRefunded),
}

impl PaymentEvent {
    /// The name the event store keeps it under.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Received(_) => "payments.payment-received",
            Self::Refunded(_) => "payments.payment-refunded",
        }
    }

    /// The version of its data's schema, stored beside it. `PaymentReceived`
    /// is at 2 (with `payment_method`); stored events of version 1 are
    /// upcast when read ([`crate::repository::decode`]).
    pub fn schema_version(&self) -> i32 {
        match self {
            Self::Received(_) => 2,
            Self::Refunded(_) => 1,
        }
    }

    /// The payment it happened to.
    pub fn payment_id(&self) -> PaymentId {
        match self {
            Self::Received(e) => e.payment_id,
            Self::Refunded(e) => e.payment_id,
        }
    }
}

/// A payment's current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub received: PaymentReceived,
    /// Sum of all refunds, minor units.
    pub refunded: i64,
    /// How many events the state is built from: the stream's version.
    pub version: u64,
}

/// A history that the rules could not have produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHistory {
    #[error("the first event of a payment must be PaymentReceived")]
    NotStartedByReceived,
    #[error("a payment is received only once")]
    ReceivedTwice,
    #[error("refunds exceed the amount received")]
    OverRefunded,
    #[error("an event of another payment is in the stream")]
    ForeignEvent,
}

/// Why a refund is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundRefused {
    #[error("refund of {requested} exceeds the {remaining} left to refund")]
    ExceedsRemaining { requested: i64, remaining: i64 },
}

impl Payment {
    /// The payment as the API and the state topic show it.
    pub fn to_state(&self) -> PaymentState {
        let r = &self.received;
        PaymentState {
            payment_id: r.payment_id,
            customer_id: r.customer_id.clone(),
            order_id: r.order_id.clone(),
            amount: r.amount,
            currency: r.currency,
            received_at: r.received_at,
            refunded: self.refunded,
            version: self.version,
            payment_method: r.payment_method,
        }
    }

    /// What is left to refund, minor units.
    pub fn remaining(&self) -> i64 {
        self.received.amount.minor_units() - self.refunded
    }

    /// The state after `event`, from the state before it (`None`: no stream).
    pub fn apply(state: Option<Self>, event: &PaymentEvent) -> Result<Self, InvalidHistory> {
        match (state, event) {
            (None, PaymentEvent::Received(received)) => Ok(Self {
                received: received.clone(),
                refunded: 0,
                version: 1,
            }),
            (None, PaymentEvent::Refunded(_)) => Err(InvalidHistory::NotStartedByReceived),
            (Some(_), PaymentEvent::Received(_)) => Err(InvalidHistory::ReceivedTwice),
            (Some(mut payment), PaymentEvent::Refunded(refund)) => {
                if refund.payment_id != payment.received.payment_id {
                    return Err(InvalidHistory::ForeignEvent);
                }
                if refund.amount.minor_units() > payment.remaining() {
                    return Err(InvalidHistory::OverRefunded);
                }
                payment.refunded += refund.amount.minor_units();
                payment.version += 1;
                Ok(payment)
            }
        }
    }

    /// The state after `events`, starting from `state` (a snapshot, or `None`).
    pub fn replay<'a>(
        state: Option<Self>,
        events: impl IntoIterator<Item = &'a PaymentEvent>,
    ) -> Result<Option<Self>, InvalidHistory> {
        events
            .into_iter()
            .try_fold(state, |state, event| Self::apply(state, event).map(Some))
    }

    /// Decides a refund of `amount`: the event, or why not.
    pub fn refund(
        &self,
        amount: Amount,
        reason: RefundReason,
        now: DateTime<Utc>,
    ) -> Result<PaymentEvent, RefundRefused> {
        if amount.minor_units() > self.remaining() {
            return Err(RefundRefused::ExceedsRemaining {
                requested: amount.minor_units(),
                remaining: self.remaining(),
            });
        }
        Ok(PaymentEvent::Refunded(PaymentRefunded {
            payment_id: self.received.payment_id,
            refund_id: Uuid::now_v7(),
            amount,
            reason,
            refunded_at: now,
        }))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use shared_events::testing::payment;

    use super::*;

    fn received(amount: i64) -> PaymentEvent {
        let mut p = payment();
        p.amount = Amount::parse(amount).expect("positive");
        PaymentEvent::Received(p)
    }

    fn reason() -> RefundReason {
        RefundReason::parse("damaged").expect("valid")
    }

    /// Given `history`, the state.
    fn given(history: &[PaymentEvent]) -> Payment {
        Payment::replay(None, history)
            .expect("valid history")
            .expect("a payment")
    }

    fn amount(n: i64) -> Amount {
        Amount::parse(n).expect("positive")
    }

    #[test]
    fn given_a_payment_when_refunding_part_then_refunded() {
        let state = given(&[received(1000)]);
        let event = state.refund(amount(300), reason(), Utc::now()).expect("allowed");
        let PaymentEvent::Refunded(refund) = &event else {
            panic!("expected a refund, got {event:?}")
        };
        assert_eq!(refund.amount, amount(300));
        assert_eq!(refund.payment_id, state.received.payment_id);
        let after = Payment::apply(Some(state), &event).expect("applies");
        assert_eq!((after.refunded, after.remaining(), after.version), (300, 700, 2));
    }

    #[test]
    fn given_partial_refunds_when_refunding_the_rest_then_refunded_and_nothing_is_left() {
        let mut history = vec![received(1000)];
        let state = given(&history);
        history.push(state.refund(amount(400), reason(), Utc::now()).expect("allowed"));
        let state = given(&history);
        history.push(state.refund(amount(600), reason(), Utc::now()).expect("allowed"));
        assert_eq!(given(&history).remaining(), 0);
    }

    #[test]
    fn given_partial_refunds_when_refunding_more_than_is_left_then_refused() {
        let mut history = vec![received(1000)];
        history.push(
            given(&history)
                .refund(amount(700), reason(), Utc::now())
                .expect("allowed"),
        );
        let refused = given(&history).refund(amount(301), reason(), Utc::now());
        assert_eq!(
            refused,
            Err(RefundRefused::ExceedsRemaining {
                requested: 301,
                remaining: 300
            })
        );
    }

    #[test]
    fn histories_the_rules_cannot_produce_are_rejected() {
        let p = received(100);
        let PaymentEvent::Received(r) = &p else {
            unreachable!()
        };
        let refund = |payment_id, n| {
            PaymentEvent::Refunded(PaymentRefunded {
                payment_id,
                refund_id: Uuid::now_v7(),
                amount: amount(n),
                reason: reason(),
                refunded_at: Utc::now(),
            })
        };
        let id = r.payment_id;
        assert_eq!(
            Payment::replay(None, &[refund(id, 1)]),
            Err(InvalidHistory::NotStartedByReceived)
        );
        assert_eq!(
            Payment::replay(None, &[p.clone(), p.clone()]),
            Err(InvalidHistory::ReceivedTwice)
        );
        assert_eq!(
            Payment::replay(None, &[p.clone(), refund(id, 101)]),
            Err(InvalidHistory::OverRefunded)
        );
        assert_eq!(
            Payment::replay(None, &[p, refund(PaymentId::new(), 1)]),
            Err(InvalidHistory::ForeignEvent)
        );
    }

    #[test]
    fn reasons_are_short_printable_and_non_empty() {
        assert!(RefundReason::parse("damaged").is_ok());
        for bad in ["", "  ", "a\u{7}b", &"x".repeat(MAX_REASON_LEN + 1)] {
            assert_eq!(RefundReason::parse(bad).expect_err(bad).field, "reason");
        }
    }

    #[test]
    fn stored_events_round_trip_through_json() {
        let state = given(&[received(1000)]);
        let event = state.refund(amount(1), reason(), Utc::now()).expect("allowed");
        let json = serde_json::to_value(&event).expect("serialises");
        assert_eq!(json["type"], "refunded");
        assert_eq!(
            serde_json::from_value::<PaymentEvent>(json).expect("deserialises"),
            event
        );
    }

    proptest! {
        /// Whatever refunds are asked for, in any order: accepted ones never
        /// sum past the amount, refused ones change nothing, and replaying
        /// the events, whole or from any snapshot, gives the same state as
        /// applying them one by one.
        #[test]
        fn any_refund_sequence_keeps_the_rules(
            total in 1i64..100_000,
            requests in prop::collection::vec(1i64..50_000, 0..30),
            snapshot_at in 0usize..31,
        ) {
            let mut history = vec![received(total)];
            let mut state = given(&history);
            for requested in requests {
                match state.refund(amount(requested), reason(), Utc::now()) {
                    Ok(event) => {
                        prop_assert!(requested <= state.remaining());
                        state = Payment::apply(Some(state), &event).expect("accepted events apply");
                        history.push(event);
                    }
                    Err(RefundRefused::ExceedsRemaining { remaining, .. }) => {
                        prop_assert!(requested > remaining);
                        prop_assert_eq!(remaining, state.remaining());
                    }
                }
                prop_assert!(state.refunded <= total && state.remaining() >= 0);
            }
            prop_assert_eq!(&given(&history), &state);
            prop_assert_eq!(state.version as usize, history.len());

            let cut = snapshot_at.min(history.len());
            let snapshot = Payment::replay(None, &history[..cut]).expect("valid");
            let resumed = Payment::replay(snapshot, &history[cut..]).expect("valid");
            prop_assert_eq!(resumed.as_ref(), Some(&state));
        }
    }
}
