//! Record inputs: a Kafka record as a consumer receives it, its headers and
//! value made from `arbitrary` choices. Most choices start from what a
//! producer really writes (the headers `shared_events::encode` writes for
//! an event of a real type and version, the JSON of a real event) and change
//! a few things, so the fuzzer spends its time in the JSON decoders of every
//! event type and version, not only in the header checks in front of them.
//!
//! What must hold of every record, whatever it holds:
//!
//! - no decoder panics (`decode` for each event type, `Notification::decode`,
//!   `event_id_of`, the trace context the consumer loop reads);
//! - what decodes encodes, and decodes again to the same event;
//! - a v2 reader reads a v1 notification as the v1 reader does, upcast;
//! - `Notification::decode` reads what one of the two notification
//!   decoders reads, and only that;
//! - the services' handlers call a record that does not decode a permanent
//!   failure (it goes to the dead-letter topic), and one that does a
//!   transient one when their database is down (it is retried); ServiceA's
//!   copy takes every state event that decodes, and a tombstone keyed by a
//!   payment id.
//!
//! # Seeds
//!
//! `fuzz/seeds/record_decoder/` holds a record of each event type and
//! version as Payments writes it, and a tombstone: the bytes `arbitrary`
//! (1.x) reads as `RecordInput { topic, key: Payment, headers: Encoded {
//! event, traced, edits: [] }, value: Bytes(json) }`, the event's JSON
//! last. Each enum choice is a little-endian `u32` (variant `i` of `n` is a
//! `v` with `v * n >> 32 == i`), a `bool` one byte, an empty `Vec` a 0 byte.
//! Should a later `arbitrary` read them otherwise, they stay valid inputs,
//! only less telling ones. Beside them, `regression-*` are inputs that once
//! crashed the target, replayed on every run.

use std::fmt::Debug;
use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use rdkafka::Message;
use rdkafka::Timestamp;
use rdkafka::message::{Header, Headers as _, OwnedHeaders, OwnedMessage};
use serde_json::Value as Json;
use service_kit::consumer::{HandleError, Handler};
use service_kit::startup::Database;
use shared_events::envelope::{event_id_of, header};
use shared_events::{
    Envelope, Event, EventId, Metadata, Notification, PaymentId, PaymentMethod, PaymentReceivedNotification,
    PaymentReceivedNotificationV1, PaymentRefundedNotification, PaymentState, Topics, decode, encode,
};
use uuid::Uuid;

use crate::http::{KNOWN_PAYMENT, known_payment};
use crate::{CALLER_TOKEN, runtime, unreachable_database};

/// One record, as the fuzzer chose it.
#[derive(Debug, Arbitrary)]
pub struct RecordInput {
    pub topic: Topic,
    pub key: Key,
    pub headers: Headers,
    /// Last, so it takes the rest of the input: the committed seeds end
    /// with the JSON of a real event.
    pub value: Value,
}

/// The topic the record is read from, which decides the handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Arbitrary)]
pub enum Topic {
    Notifications,
    State,
}

#[derive(Debug, Arbitrary)]
pub enum Key {
    /// The payment id of the events below, as producers key them.
    Payment,
    Missing,
    Bytes(Vec<u8>),
}

/// A `ce_type`: the four a producer writes, a known name at a version of
/// any spelling, or anything.
#[derive(Debug, Clone, Arbitrary)]
pub enum EventType {
    ReceivedNotificationV1,
    ReceivedNotificationV2,
    RefundedNotificationV1,
    StateV1,
    OtherVersion(EventName, String),
    Other(String),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum EventName {
    ReceivedNotification,
    RefundedNotification,
    State,
}

impl EventType {
    fn ce_type(&self) -> String {
        match self {
            Self::ReceivedNotificationV1 => PaymentReceivedNotificationV1::TYPE.ce_type(),
            Self::ReceivedNotificationV2 => PaymentReceivedNotification::TYPE.ce_type(),
            Self::RefundedNotificationV1 => PaymentRefundedNotification::TYPE.ce_type(),
            Self::StateV1 => PaymentState::TYPE.ce_type(),
            Self::OtherVersion(name, version) => {
                let name = match name {
                    EventName::ReceivedNotification => PaymentReceivedNotification::TYPE.name,
                    EventName::RefundedNotification => PaymentRefundedNotification::TYPE.name,
                    EventName::State => PaymentState::TYPE.name,
                };
                format!("{name}.v{version}")
            }
            Self::Other(ce_type) => ce_type.clone(),
        }
    }
}

#[derive(Debug, Arbitrary)]
pub enum Headers {
    /// The headers `encode` writes for an event of this type (traced or
    /// not), then edited.
    Encoded {
        event: EventType,
        traced: bool,
        edits: Vec<Edit>,
    },
    /// Any headers, in any order, any number of times.
    Raw(Vec<(HeaderName, Option<HeaderValue>)>),
}

#[derive(Debug, Arbitrary)]
pub enum Edit {
    /// Replaces every header called so with one of this value.
    Set(HeaderName, Option<HeaderValue>),
    Remove(HeaderName),
    /// Adds one more of the name: the decoder reads the last one.
    Append(HeaderName, Option<HeaderValue>),
}

#[derive(Debug, Clone, Arbitrary)]
pub enum HeaderName {
    SpecVersion,
    Id,
    Source,
    Type,
    Time,
    ContentType,
    CorrelationId,
    CausationId,
    CeTraceparent,
    CeTracestate,
    /// The W3C headers of the hop that delivered the record.
    Traceparent,
    Tracestate,
    Other(String),
}

impl HeaderName {
    fn as_str(&self) -> &str {
        match self {
            Self::SpecVersion => header::SPECVERSION,
            Self::Id => header::ID,
            Self::Source => header::SOURCE,
            Self::Type => header::TYPE,
            Self::Time => header::TIME,
            Self::ContentType => header::CONTENT_TYPE,
            Self::CorrelationId => header::CORRELATION_ID,
            Self::CausationId => header::CAUSATION_ID,
            Self::CeTraceparent => header::TRACEPARENT,
            Self::CeTracestate => header::TRACESTATE,
            Self::Traceparent => "traceparent",
            Self::Tracestate => "tracestate",
            Self::Other(name) => name,
        }
    }
}

#[derive(Debug, Arbitrary)]
pub enum HeaderValue {
    Bytes(Vec<u8>),
    Text(String),
    Uuid([u8; 16]),
    Type(EventType),
    Time(Time),
    /// `version-traceid-parentid-flags`, in hex, then anything.
    Traceparent {
        version: u8,
        trace_id: u128,
        parent_id: u64,
        flags: u8,
        rest: String,
    },
}

impl HeaderValue {
    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Self::Bytes(bytes) => bytes.clone(),
            Self::Text(text) => text.clone().into_bytes(),
            Self::Uuid(bytes) => Uuid::from_bytes(*bytes).to_string().into_bytes(),
            Self::Type(event) => event.ce_type().into_bytes(),
            Self::Time(time) => time.to_string().into_bytes(),
            Self::Traceparent {
                version,
                trace_id,
                parent_id,
                flags,
                rest,
            } => format!("{version:02x}-{trace_id:032x}-{parent_id:016x}-{flags:02x}{rest}").into_bytes(),
        }
    }
}

/// An RFC 3339 time: a valid one, or one at an edge of the range RFC 3339
/// writes (the first and last second of years 0000 to 9999, at an offset),
/// which coverage alone would not lead the fuzzer to; or any numbers in a
/// time's shape.
#[derive(Debug, Arbitrary)]
pub enum Time {
    Edge {
        last: bool,
        offset: Offset,
    },
    Valid {
        year: Year,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        /// Up to 60: a leap second.
        second: u8,
        nanos: Option<u32>,
        offset: Offset,
    },
    Parts(Parts),
}

/// Numbers in a time's shape, as written.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Parts {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
    fraction: Option<u32>,
    /// Minutes east of UTC; `None` for `Z`.
    offset: Option<i16>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Year {
    First,
    Last,
    Any(u16),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Offset {
    Utc,
    /// `-23:59`, `+23:59`: the furthest from UTC RFC 3339 writes.
    Westmost,
    Eastmost,
    Minutes(i16),
}

impl Offset {
    /// Minutes east of UTC; `None` for `Z`.
    fn minutes(self) -> Option<i16> {
        match self {
            Self::Utc => None,
            Self::Westmost => Some(-(23 * 60 + 59)),
            Self::Eastmost => Some(23 * 60 + 59),
            Self::Minutes(minutes) => Some(minutes % (24 * 60)),
        }
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Edge { last, offset } => {
                f.write_str(if last {
                    "9999-12-31T23:59:59"
                } else {
                    "0000-01-01T00:00:00"
                })?;
                write_offset(f, offset.minutes())
            }
            Self::Valid {
                year,
                month,
                day,
                hour,
                minute,
                second,
                nanos,
                offset,
            } => std::fmt::Display::fmt(
                &Parts {
                    year: match year {
                        Year::First => 0,
                        Year::Last => 9999,
                        Year::Any(year) => year % 10_000,
                    },
                    month: 1 + month % 12,
                    day: 1 + day % 28,
                    hour: hour % 24,
                    minute: minute % 60,
                    second: second % 61,
                    fraction: nanos.map(|nanos| nanos % 1_000_000_000),
                    offset: offset.minutes(),
                },
                f,
            ),
            Self::Parts(parts) => write!(f, "{parts}"),
        }
    }
}

impl std::fmt::Display for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )?;
        if let Some(fraction) = self.fraction {
            write!(f, ".{fraction}")?;
        }
        write_offset(f, self.offset)
    }
}

/// `Z`, or the offset of `minutes` east of UTC.
fn write_offset(f: &mut std::fmt::Formatter<'_>, minutes: Option<i16>) -> std::fmt::Result {
    match minutes {
        None => f.write_str("Z"),
        Some(minutes) => {
            let sign = if minutes < 0 { '-' } else { '+' };
            let minutes = minutes.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", minutes / 60, minutes % 60)
        }
    }
}

/// The record value.
#[derive(Debug, Arbitrary)]
pub enum Value {
    /// None: a tombstone, how a compacted topic deletes a key.
    Tombstone,
    /// The JSON of a real event of this kind, its fields edited.
    Event { payload: Payload, edits: Vec<FieldEdit> },
    /// Any bytes.
    Bytes(Vec<u8>),
}

/// The events producers write, as the value carries them.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Payload {
    ReceivedNotificationV1,
    ReceivedNotificationV2,
    RefundedNotificationV1,
    StateV1,
}

/// Sets a field of the event's JSON to a value, or removes it (`None`).
#[derive(Debug, Arbitrary)]
pub struct FieldEdit {
    field: Field,
    value: Option<JsonValue>,
}

#[derive(Debug, Arbitrary)]
pub enum Field {
    PaymentId,
    CustomerId,
    OrderId,
    Amount,
    Currency,
    ReceivedAt,
    PaymentMethod,
    RefundId,
    RefundedAt,
    Refunded,
    Version,
    Other(String),
}

impl Field {
    fn as_str(&self) -> &str {
        match self {
            Self::PaymentId => "payment_id",
            Self::CustomerId => "customer_id",
            Self::OrderId => "order_id",
            Self::Amount => "amount",
            Self::Currency => "currency",
            Self::ReceivedAt => "received_at",
            Self::PaymentMethod => "payment_method",
            Self::RefundId => "refund_id",
            Self::RefundedAt => "refunded_at",
            Self::Refunded => "refunded",
            Self::Version => "version",
            Self::Other(name) => name,
        }
    }
}

/// A JSON value, with the shapes the events' fields take among the choices.
#[derive(Debug, Arbitrary)]
pub enum JsonValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Text(String),
    Uuid([u8; 16]),
    Time(Time),
    /// Three capital letters: a currency code, known or not.
    Currency([u8; 3]),
    Array(Vec<JsonValue>),
    Object(Vec<(String, JsonValue)>),
}

impl JsonValue {
    fn to_json(&self) -> Json {
        match self {
            Self::Null => Json::Null,
            Self::Bool(b) => Json::Bool(*b),
            Self::Int(n) => Json::from(*n),
            Self::UInt(n) => Json::from(*n),
            // NaN and the infinities have no JSON.
            Self::Float(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
            Self::Text(text) => Json::from(text.as_str()),
            Self::Uuid(bytes) => Json::from(Uuid::from_bytes(*bytes).to_string()),
            Self::Time(time) => Json::from(time.to_string()),
            Self::Currency(letters) => Json::from(
                letters
                    .iter()
                    .map(|b| char::from(b'A' + b % 26))
                    .collect::<String>(),
            ),
            Self::Array(items) => Json::Array(items.iter().map(Self::to_json).collect()),
            Self::Object(fields) => Json::Object(
                fields
                    .iter()
                    .map(|(name, value)| (name.clone(), value.to_json()))
                    .collect(),
            ),
        }
    }
}

// Every real event here is about the payment the HTTP targets know.
fn payment_id() -> PaymentId {
    known_payment().payment_id
}

fn at() -> chrono::DateTime<chrono::Utc> {
    known_payment().received_at
}

fn state() -> PaymentState {
    PaymentState {
        refunded: 500,
        version: 2,
        ..known_payment()
    }
}

fn received_v1() -> PaymentReceivedNotificationV1 {
    PaymentReceivedNotificationV1 {
        payment_id: payment_id(),
        received_at: at(),
    }
}

fn received_v2() -> PaymentReceivedNotification {
    PaymentReceivedNotification {
        payment_id: payment_id(),
        received_at: at(),
        payment_method: PaymentMethod::BankTransfer,
    }
}

fn refunded() -> PaymentRefundedNotification {
    PaymentRefundedNotification {
        payment_id: payment_id(),
        refund_id: Uuid::from_u128(0x0190_f3a2_7b4c_7d8e_9f00_aabb_ccdd_eeff),
        refunded_at: at(),
    }
}

impl Payload {
    /// The event's JSON, as `encode` writes it.
    pub fn json(self) -> Json {
        let json = match self {
            Self::ReceivedNotificationV1 => serde_json::to_value(received_v1()),
            Self::ReceivedNotificationV2 => serde_json::to_value(received_v2()),
            Self::RefundedNotificationV1 => serde_json::to_value(refunded()),
            Self::StateV1 => serde_json::to_value(state()),
        };
        json.expect("events serialise")
    }
}

/// What a producer writes besides the data: fixed, so that an input always
/// runs the same way.
fn metadata(traced: bool) -> Metadata {
    Metadata {
        id: EventId::from(Uuid::from_u128(0x0190_f3a2_7b4c_7d8e_9f00_0000_0000_0001)),
        source: "/payments-service".to_owned(),
        time: at(),
        correlation_id: Uuid::from_u128(0x0190_f3a2_7b4c_7d8e_9f00_0000_0000_0002),
        causation_id: Some(Uuid::from_u128(0x0190_f3a2_7b4c_7d8e_9f00_0000_0000_0003)),
        traceparent: traced.then(|| "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        tracestate: traced.then(|| "vendor=x".to_owned()),
    }
}

/// The headers `encode` writes for `event` (an event of another type,
/// relabelled, for a type no producer writes).
fn encoded_headers(event: &EventType, traced: bool) -> Vec<(String, Option<Vec<u8>>)> {
    fn headers_of<E: Event>(data: E, traced: bool) -> OwnedHeaders {
        let envelope = Envelope {
            metadata: metadata(traced),
            data,
        };
        encode(&envelope).expect("events encode").headers
    }
    let headers = match event {
        EventType::ReceivedNotificationV1 => headers_of(received_v1(), traced),
        EventType::ReceivedNotificationV2 => headers_of(received_v2(), traced),
        EventType::RefundedNotificationV1 => headers_of(refunded(), traced),
        EventType::StateV1 | EventType::OtherVersion(..) | EventType::Other(_) => headers_of(state(), traced),
    };
    let ce_type = event.ce_type().into_bytes();
    headers
        .iter()
        .map(|h| {
            let value = if h.key == header::TYPE {
                Some(ce_type.clone())
            } else {
                h.value.map(<[u8]>::to_vec)
            };
            (h.key.to_owned(), value)
        })
        .collect()
}

fn header_of(name: &HeaderName, value: &Option<HeaderValue>) -> (String, Option<Vec<u8>>) {
    (
        name.as_str().to_owned(),
        value.as_ref().map(HeaderValue::to_bytes),
    )
}

impl RecordInput {
    /// The record a consumer of `topics` would receive.
    pub fn to_record(&self, topics: &Topics) -> OwnedMessage {
        let mut headers = match &self.headers {
            Headers::Encoded { event, traced, edits } => {
                let mut headers = encoded_headers(event, *traced);
                for edit in edits {
                    match edit {
                        Edit::Set(name, value) => {
                            headers.retain(|(key, _)| key != name.as_str());
                            headers.push(header_of(name, value));
                        }
                        Edit::Remove(name) => headers.retain(|(key, _)| key != name.as_str()),
                        Edit::Append(name, value) => headers.push(header_of(name, value)),
                    }
                }
                headers
            }
            Headers::Raw(raw) => raw.iter().map(|(name, value)| header_of(name, value)).collect(),
        };
        let owned = headers
            .drain(..)
            .fold(OwnedHeaders::new(), |owned, (key, value)| {
                owned.insert(Header {
                    key: &key,
                    value: value.as_deref(),
                })
            });
        let payload = match &self.value {
            Value::Tombstone => None,
            Value::Event { payload, edits } => {
                let mut json = payload.json();
                if let Json::Object(fields) = &mut json {
                    for FieldEdit { field, value } in edits {
                        match value {
                            Some(value) => fields.insert(field.as_str().to_owned(), value.to_json()),
                            None => fields.remove(field.as_str()),
                        };
                    }
                }
                Some(serde_json::to_vec(&json).expect("JSON serialises"))
            }
            Value::Bytes(bytes) => Some(bytes.clone()),
        };
        let key = match &self.key {
            Key::Payment => Some(KNOWN_PAYMENT.as_bytes().to_vec()),
            Key::Missing => None,
            Key::Bytes(bytes) => Some(bytes.clone()),
        };
        let topic = match self.topic {
            Topic::Notifications => &topics.notifications,
            Topic::State => &topics.state,
        };
        OwnedMessage::new(
            payload,
            key,
            topic.clone(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(owned),
        )
    }
}

/// Decodes `record` every way a consumer does, and checks what the module
/// documentation says must hold.
pub fn check(input: &RecordInput) {
    let topics = Topics::default();
    let record = input.to_record(&topics);

    // Read from every record before it is decoded, for its log line and
    // its span.
    let _ = event_id_of(&record);
    let _ = service_kit::telemetry::parent_from_record(record.headers());

    let state = round_trip::<PaymentState>(&record);
    let received = round_trip::<PaymentReceivedNotification>(&record);
    let refunded = round_trip::<PaymentRefundedNotification>(&record);
    if let Some(v1) = round_trip::<PaymentReceivedNotificationV1>(&record) {
        let upcast = Envelope {
            metadata: v1.metadata,
            data: PaymentReceivedNotification::from(v1.data),
        };
        assert_eq!(
            received.as_ref(),
            Some(&upcast),
            "a v2 reader reads v1 as v1 upcast"
        );
    }
    let notification = Notification::decode(&record);
    match &notification {
        Ok(Notification::Received(n)) => assert_eq!(Some(n), received.as_ref()),
        Ok(Notification::Refunded(n)) => assert_eq!(Some(n), refunded.as_ref()),
        Err(e) => assert!(
            received.is_none() && refunded.is_none(),
            "Notification::decode refused a notification that decodes: {e}"
        ),
    }

    let handlers = handlers();
    let service_a = service_a::PaymentEvents::new(
        topics.clone(),
        service_a::State::default(),
        handlers.audit.clone(),
    );
    let (by_a, by_b) = runtime().block_on(async {
        let by_a = service_a.handle(&record, 1).await;
        let by_b = match input.topic {
            Topic::Notifications => Some(handlers.service_b.handle(&record, 1).await),
            Topic::State => None,
        };
        (by_a, by_b)
    });
    match input.topic {
        Topic::Notifications => {
            expect_outcome("ServiceA's audit", &by_a, notification.is_ok());
            if let Some(by_b) = &by_b {
                expect_outcome("ServiceB", by_b, notification.is_ok());
            }
        }
        Topic::State => {
            let applies = match record.payload() {
                None => record
                    .key()
                    .and_then(|key| std::str::from_utf8(key).ok())
                    .is_some_and(|key| PaymentId::parse(key).is_ok()),
                Some(_) => state.is_some(),
            };
            match (&by_a, applies) {
                (Ok(()), true) | (Err(HandleError::Permanent(_)), false) => {}
                (outcome, _) => panic!(
                    "ServiceA's copy: {outcome:?} for a record it should {}apply",
                    if applies { "" } else { "not " }
                ),
            }
        }
    }
}

/// A record that decodes goes as far as the database, which is down: a
/// dependency unavailable. One that does not is permanent.
fn expect_outcome(handler: &str, outcome: &Result<(), HandleError>, decodes: bool) {
    match (outcome, decodes) {
        (Err(HandleError::Unavailable { .. }), true) | (Err(HandleError::Permanent(_)), false) => {}
        (outcome, _) => panic!(
            "{handler}: {outcome:?} for a record that {}decodes",
            if decodes { "" } else { "not " }
        ),
    }
}

/// `decode::<E>`, and, when it succeeds, the proof that the event survives
/// being encoded and decoded again.
fn round_trip<E: Event + PartialEq + Debug>(record: &OwnedMessage) -> Option<Envelope<E>> {
    let decoded = decode::<E>(record).ok()?;
    let encoded = encode(&decoded).expect("a decoded event encodes");
    let time_of = |headers: &OwnedHeaders| {
        headers
            .iter()
            .find(|h| h.key == header::TIME)
            .and_then(|h| h.value)
            .map(<[u8]>::to_vec)
    };
    let written_time = time_of(&encoded.headers);
    let again = OwnedMessage::new(
        Some(encoded.payload),
        Some(encoded.key.into_bytes()),
        "again".to_owned(),
        Timestamp::NotAvailable,
        0,
        0,
        Some(encoded.headers),
    );
    let read_again: Envelope<E> = decode(&again).unwrap_or_else(|e| {
        panic!(
            "{} does not decode once encoded: {e}\n{decoded:?}",
            E::TYPE.ce_type()
        )
    });
    assert_eq!(read_again.data, decoded.data, "the data changed on the way");
    // All but the time, compared as written below.
    let kept = |m: &Metadata| {
        (
            m.id,
            m.source.clone(),
            m.correlation_id,
            m.causation_id,
            m.traceparent.clone(),
            m.tracestate.clone(),
        )
    };
    assert_eq!(
        kept(&decoded.metadata),
        kept(&read_again.metadata),
        "the metadata changed on the way"
    );
    let rewritten = encode(&read_again).expect("encodes");
    assert_eq!(
        written_time,
        time_of(&rewritten.headers),
        "the time changed on the way"
    );
    Some(decoded)
}

/// The handlers, made once: their database is down, and ServiceB's
/// Payments is never reached (it checks its database first).
struct Handlers {
    audit: service_a::Audit,
    service_b: service_b::Notifications,
}

fn handlers() -> &'static Handlers {
    static HANDLERS: OnceLock<Handlers> = OnceLock::new();
    HANDLERS.get_or_init(|| {
        let _runtime = runtime().enter();
        let token = CALLER_TOKEN.parse().expect("a valid token");
        Handlers {
            audit: service_a::Audit::lazy(unreachable_database()),
            service_b: service_b::Notifications::new(
                service_b::PaymentsClient::new(
                    "http://127.0.0.1:9",
                    token,
                    service_b::CallbackLimits {
                        timeout: Duration::from_secs(1),
                        ..Default::default()
                    },
                ),
                service_b::Records::lazy(unreachable_database()),
                Duration::from_secs(30),
            ),
        }
    })
}
