//! The one way events are put on and taken off Kafka: the CloudEvents 1.0
//! Kafka protocol binding in *binary content mode*.
//!
//! The event's data is the record value (plain JSON, readable by any tool),
//! and its attributes travel as headers:
//!
//! | header              | value                                              |
//! |---------------------|----------------------------------------------------|
//! | `ce_specversion`    | `1.0`                                              |
//! | `ce_id`             | unique per event (a UUID); consumers dedupe on it  |
//! | `ce_source`         | the producing service, e.g. `/payments-service`    |
//! | `ce_type`           | event name and schema version, `<name>.v<n>`       |
//! | `ce_time`           | when the event happened, RFC 3339                  |
//! | `content-type`      | `application/json`                                 |
//! | `ce_correlationid`  | extension: the request or flow this belongs to     |
//! | `ce_causationid`    | extension, optional: the event that caused this one|
//! | `ce_traceparent`    | extension, optional: W3C trace context where the event was made |
//! | `ce_tracestate`     | extension, optional: its W3C `tracestate`          |
//!
//! `ce_traceparent` and `ce_tracestate` are the CloudEvents
//! distributed-tracing extension: the context in which the event was
//! *created* (for Payments' events, the request that stored it), set once
//! and never changed on the way. Each hop's own context travels beside them
//! in the plain W3C `traceparent`/`tracestate` headers, which the producer's
//! tracing adds (`service_kit::telemetry`), not this encoder. A malformed
//! `ce_traceparent` is ignored, as W3C Trace Context says, and never fails
//! a decode.
//!
//! The record key is the event's [`Event::key`] (the payment id).

use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{DecodeError, EncodeError};
use crate::events::Event;
use crate::topics::TopicKind;

/// Header names, as the Kafka binding spells them.
pub mod header {
    pub const SPECVERSION: &str = "ce_specversion";
    pub const ID: &str = "ce_id";
    pub const SOURCE: &str = "ce_source";
    pub const TYPE: &str = "ce_type";
    pub const TIME: &str = "ce_time";
    pub const CONTENT_TYPE: &str = "content-type";
    pub const CORRELATION_ID: &str = "ce_correlationid";
    pub const CAUSATION_ID: &str = "ce_causationid";
    pub const TRACEPARENT: &str = "ce_traceparent";
    pub const TRACESTATE: &str = "ce_tracestate";
}

const SPECVERSION: &str = "1.0";
const JSON: &str = "application/json";

/// Unique id of one event (`ce_id`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct EventId(Uuid);

crate::payment::uuid_id!(EventId);

/// The CloudEvents attributes of an event, apart from its type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub id: EventId,
    pub source: String,
    pub time: DateTime<Utc>,
    /// Shared by every event and call of one flow, for tracing it end to end.
    /// An event published without one starts its own flow (its own id).
    pub correlation_id: Uuid,
    /// The event that caused this one, if any.
    pub causation_id: Option<Uuid>,
    /// W3C `traceparent` of where the event was made, when that was traced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate` beside it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// An event with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<E> {
    pub metadata: Metadata,
    pub data: E,
}

impl<E: Event> Envelope<E> {
    /// Wraps `data` as a new event from `source`, happening now.
    pub fn new(source: &str, data: E, correlation_id: Uuid, causation_id: Option<Uuid>) -> Self {
        Self {
            metadata: Metadata {
                id: EventId::new(),
                source: source.to_owned(),
                time: Utc::now(),
                correlation_id,
                causation_id,
                traceparent: None,
                tracestate: None,
            },
            data,
        }
    }

    /// Sets the trace context where the event was made (`ce_traceparent`,
    /// `ce_tracestate`).
    #[must_use]
    pub fn traced(mut self, traceparent: Option<String>, tracestate: Option<String>) -> Self {
        self.metadata.traceparent = traceparent;
        self.metadata.tracestate = tracestate;
        self
    }

    /// Sets when the event happened (`ce_time`), when that was not now.
    #[must_use]
    pub fn occurred_at(mut self, time: DateTime<Utc>) -> Self {
        self.metadata.time = time;
        self
    }
}

/// An encoded event, ready for a producer: the topic is resolved through
/// [`crate::Topics::name`].
#[derive(Debug)]
pub struct KafkaRecord {
    pub topic: TopicKind,
    pub key: String,
    pub headers: OwnedHeaders,
    pub payload: Vec<u8>,
}

/// Encodes an event as a Kafka record.
pub fn encode<E: Event>(event: &Envelope<E>) -> Result<KafkaRecord, EncodeError> {
    let meta = &event.metadata;
    let id = meta.id.to_string();
    let ce_type = E::TYPE.ce_type();
    let time = meta.time.to_rfc3339_opts(SecondsFormat::Micros, true);
    let correlation_id = meta.correlation_id.to_string();
    let causation_id = meta.causation_id.map(|id| id.to_string());

    let mut headers = OwnedHeaders::new_with_capacity(10);
    for (key, value) in [
        (header::SPECVERSION, Some(SPECVERSION)),
        (header::ID, Some(id.as_str())),
        (header::SOURCE, Some(meta.source.as_str())),
        (header::TYPE, Some(ce_type.as_str())),
        (header::TIME, Some(time.as_str())),
        (header::CONTENT_TYPE, Some(JSON)),
        (header::CORRELATION_ID, Some(correlation_id.as_str())),
        (header::CAUSATION_ID, causation_id.as_deref()),
        (header::TRACEPARENT, meta.traceparent.as_deref()),
        (header::TRACESTATE, meta.tracestate.as_deref()),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }

    Ok(KafkaRecord {
        topic: E::TOPIC,
        key: event.data.key(),
        headers,
        payload: serde_json::to_vec(&event.data)?,
    })
}

/// Decodes a record as an event of type `E`, checking every attribute.
///
/// Every failure is a [`DecodeError`], never a panic: records on a topic can
/// come from any producer.
pub fn decode<E: Event>(record: &impl Message) -> Result<Envelope<E>, DecodeError> {
    let specversion = required(record, header::SPECVERSION)?;
    if specversion != SPECVERSION {
        return Err(invalid(
            header::SPECVERSION,
            format!("expected `{SPECVERSION}`, got `{specversion}`"),
        ));
    }

    let version = check_type::<E>(required(record, header::TYPE)?)?;

    let content_type = required(record, header::CONTENT_TYPE)?;
    // `application/json; charset=utf-8` is the same thing.
    if content_type.split(';').next().map(str::trim) != Some(JSON) {
        return Err(invalid(
            header::CONTENT_TYPE,
            format!("expected `{JSON}`, got `{content_type}`"),
        ));
    }

    let id = uuid(header::ID, required(record, header::ID)?)?;
    let source = required(record, header::SOURCE)?;
    if source.is_empty() {
        return Err(invalid(header::SOURCE, "must not be empty".to_owned()));
    }
    let time = required(record, header::TIME)?;
    let time = DateTime::parse_from_rfc3339(time)
        .map_err(|e| invalid(header::TIME, format!("not an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    // RFC 3339 years have four digits: `0000-01-01T00:00:00+01:00` is a
    // time of year -1 in UTC, which `encode` could not write back.
    if !(0..=9999).contains(&time.year()) {
        return Err(invalid(
            header::TIME,
            format!("`{time}` is outside the years 0000 to 9999 in UTC"),
        ));
    }
    let correlation_id = match optional(record, header::CORRELATION_ID)? {
        Some(s) => uuid(header::CORRELATION_ID, s)?,
        None => id,
    };
    let causation_id = optional(record, header::CAUSATION_ID)?
        .map(|s| uuid(header::CAUSATION_ID, s))
        .transpose()?;

    // Tracing must never cost an event: a malformed context is dropped.
    let traceparent = optional(record, header::TRACEPARENT)
        .ok()
        .flatten()
        .filter(|s| is_traceparent(s));
    let tracestate = traceparent
        .and_then(|_| optional(record, header::TRACESTATE).ok().flatten())
        .filter(|s| !s.is_empty());

    let payload = record.payload().ok_or(DecodeError::MissingData)?;
    let data = if version == E::TYPE.version {
        serde_json::from_slice(payload)?
    } else {
        E::upcast(version, payload).ok_or(DecodeError::UnsupportedVersion {
            event: E::TYPE.name,
            found: version.to_string(),
            supported: E::TYPE.version,
        })??
    };

    Ok(Envelope {
        metadata: Metadata {
            id: EventId(id),
            source: source.to_owned(),
            time,
            correlation_id,
            causation_id,
            traceparent: traceparent.map(str::to_owned),
            tracestate: tracestate.map(str::to_owned),
        },
        data,
    })
}

/// Whether `s` has the form of a W3C `traceparent`:
/// `{version:2}-{trace-id:32}-{parent-id:16}-{flags:2}` in lowercase hex,
/// with ids not all zeros. (Version `ff` is invalid; later versions may
/// append fields, which this keeps.)
fn is_traceparent(s: &str) -> bool {
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let mut parts = s.split('-');
    let (Some(version), Some(trace_id), Some(parent_id), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2)
}

/// The raw `ce_id` header, for logging a record before (or without) decoding it.
pub fn event_id_of(record: &impl Message) -> Option<String> {
    optional(record, header::ID).ok().flatten().map(str::to_owned)
}

/// The version of `ce_type`, if it names `E`. Whether `E` reads that
/// version (its own, or one it upcasts) is for the caller to find out.
fn check_type<E: Event>(ce_type: &str) -> Result<u32, DecodeError> {
    let expected = E::TYPE;
    let Some((name, version)) = ce_type.rsplit_once(".v") else {
        return Err(DecodeError::UnknownType(ce_type.to_owned()));
    };
    if name != expected.name {
        return Err(DecodeError::UnknownType(ce_type.to_owned()));
    }
    let unsupported = || DecodeError::UnsupportedVersion {
        event: expected.name,
        found: version.to_owned(),
        supported: expected.version,
    };
    // Digits only: `u32::from_str` would take `+2`.
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(unsupported());
    }
    version.parse().map_err(|_| unsupported())
}

/// The value of the last header called `name`, as UTF-8.
fn optional<'a>(record: &'a impl Message, name: &'static str) -> Result<Option<&'a str>, DecodeError> {
    let Some(headers) = record.headers() else {
        return Ok(None);
    };
    let Some(value) = headers
        .iter()
        .filter(|h| h.key == name)
        .last()
        .and_then(|h| h.value)
    else {
        return Ok(None);
    };
    std::str::from_utf8(value)
        .map(Some)
        .map_err(|_| invalid(name, "not valid UTF-8".to_owned()))
}

fn required<'a>(record: &'a impl Message, name: &'static str) -> Result<&'a str, DecodeError> {
    optional(record, name)?.ok_or(DecodeError::MissingHeader(name))
}

fn uuid(name: &'static str, s: &str) -> Result<Uuid, DecodeError> {
    Uuid::try_parse(s).map_err(|_| invalid(name, format!("`{s}` is not a UUID")))
}

fn invalid(name: &'static str, reason: String) -> DecodeError {
    DecodeError::InvalidHeader { name, reason }
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;
    use crate::events::PaymentState;
    use crate::testing::{payment, state};

    /// What a consumer would receive for `record`.
    fn delivered(record: KafkaRecord) -> OwnedMessage {
        message(Some(record.payload), Some(record.headers))
    }

    fn message(payload: Option<Vec<u8>>, headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            payload,
            Some(b"key".to_vec()),
            "topic".to_owned(),
            Timestamp::NotAvailable,
            0,
            0,
            headers,
        )
    }

    /// The headers of a valid state event, with `name` replaced by `value`
    /// (or removed when `value` is `None`).
    fn headers_with(name: &str, value: Option<&str>) -> OwnedHeaders {
        let valid = encode(&Envelope::new("/test", state(), Uuid::now_v7(), None)).expect("encodes");
        let mut headers = OwnedHeaders::new();
        for h in valid.headers.iter() {
            let v = if h.key == name {
                value.map(str::as_bytes)
            } else {
                h.value
            };
            if v.is_some() {
                headers = headers.insert(Header { key: h.key, value: v });
            }
        }
        headers
    }

    /// The value of header `name` of an encoded record, as text.
    fn header_of(record: &KafkaRecord, name: &str) -> Option<String> {
        record
            .headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn decode_with(name: &str, value: Option<&str>) -> Result<Envelope<PaymentState>, DecodeError> {
        let json = serde_json::to_vec(&state()).expect("serialises");
        decode(&message(Some(json), Some(headers_with(name, value))))
    }

    #[test]
    fn round_trip_keeps_data_and_metadata() {
        let cause = Uuid::now_v7();
        let sent = Envelope::new("/payments-service", state(), Uuid::now_v7(), Some(cause));
        let record = encode(&sent).expect("encodes");
        assert_eq!(record.key, sent.data.payment_id.to_string());
        assert_eq!(record.topic, TopicKind::State);

        let received: Envelope<PaymentState> = decode(&delivered(record)).expect("decodes");
        assert_eq!(received.data, sent.data);
        assert_eq!(received.metadata.id, sent.metadata.id);
        assert_eq!(received.metadata.source, "/payments-service");
        assert_eq!(received.metadata.correlation_id, sent.metadata.correlation_id);
        assert_eq!(received.metadata.causation_id, Some(cause));
        // RFC 3339 with microseconds: sub-microsecond digits are dropped.
        let drift = (received.metadata.time - sent.metadata.time).num_microseconds();
        assert_eq!(drift, Some(0));
    }

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_trace_context_where_the_event_was_made_travels_as_the_tracing_extension() {
        let sent = Envelope::new("/payments-service", state(), Uuid::now_v7(), None)
            .traced(Some(TRACEPARENT.to_owned()), Some("vendor=x".to_owned()));
        let record = encode(&sent).expect("encodes");
        let value = |name: &str| header_of(&record, name);
        assert_eq!(value("ce_traceparent").as_deref(), Some(TRACEPARENT));
        assert_eq!(value("ce_tracestate").as_deref(), Some("vendor=x"));
        let received: Envelope<PaymentState> = decode(&delivered(record)).expect("decodes");
        assert_eq!(received.metadata.traceparent, sent.metadata.traceparent);
        assert_eq!(received.metadata.tracestate, sent.metadata.tracestate);

        let untraced = encode(&Envelope::new("/t", state(), Uuid::now_v7(), None)).expect("encodes");
        assert!(untraced.headers.iter().all(|h| !h.key.contains("trace")));
    }

    #[test]
    fn a_malformed_trace_context_is_dropped_and_the_event_still_decodes() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            let event = decode_with(header::TRACEPARENT, Some(bad)).expect(bad);
            assert_eq!(event.metadata.traceparent, None, "{bad}");
        }
        assert!(is_traceparent(TRACEPARENT));
        // A later version may carry more fields.
        assert!(is_traceparent(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        ));
    }

    #[test]
    fn headers_follow_the_cloudevents_kafka_binding() {
        let sent = Envelope::new(
            "/payments-service",
            payment().notification(),
            Uuid::now_v7(),
            None,
        );
        let record = encode(&sent).expect("encodes");
        let value = |name: &str| header_of(&record, name);
        assert_eq!(value("ce_specversion").as_deref(), Some("1.0"));
        assert_eq!(value("ce_id"), Some(sent.metadata.id.to_string()));
        assert_eq!(value("ce_source").as_deref(), Some("/payments-service"));
        assert_eq!(
            value("ce_type").as_deref(),
            Some("payments.payment-received.notification.v2")
        );
        assert_eq!(value("content-type").as_deref(), Some("application/json"));
        assert_eq!(
            value("ce_correlationid"),
            Some(sent.metadata.correlation_id.to_string())
        );
        assert_eq!(value("ce_causationid"), None);
        assert!(value("ce_time").is_some_and(|t| DateTime::parse_from_rfc3339(&t).is_ok()));
    }

    #[test]
    fn notification_carries_only_id_time_and_method() {
        let notification = payment().notification();
        let json: serde_json::Value = serde_json::from_slice(
            &encode(&Envelope::new("/t", notification, Uuid::now_v7(), None))
                .expect("encodes")
                .payload,
        )
        .expect("json");
        let mut keys: Vec<_> = json.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["payment_id", "payment_method", "received_at"]);
    }

    #[test]
    fn a_v2_reader_reads_v1_upcast_and_refuses_what_it_does_not_know() {
        use crate::events::{PaymentReceivedNotification, PaymentReceivedNotificationV1};
        use crate::payment::PaymentMethod;

        let v1 = PaymentReceivedNotificationV1 {
            payment_id: payment().payment_id,
            received_at: Utc::now(),
        };
        let sent = Envelope::new("/payments-service", v1.clone(), Uuid::now_v7(), None);
        let record = encode(&sent).expect("encodes");
        let value = |name: &str| header_of(&record, name);
        assert_eq!(
            value(header::TYPE).as_deref(),
            Some("payments.payment-received.notification.v1")
        );
        let read: Envelope<PaymentReceivedNotification> = decode(&delivered(record)).expect("v1 is read");
        assert_eq!(read.data.payment_id, v1.payment_id);
        assert_eq!(read.data.received_at, v1.received_at);
        assert_eq!(read.data.payment_method, PaymentMethod::Unknown);
        assert_eq!(read.metadata.id, sent.metadata.id);

        // A v1 payload is not a valid v2: v2 requires the method.
        let v1_json = serde_json::to_vec(&v1).expect("serialises");
        assert!(serde_json::from_slice::<PaymentReceivedNotification>(&v1_json).is_err());

        // A later version (or a malformed one) is not guessed at.
        let v2 = encode(&Envelope::new(
            "/t",
            payment().notification(),
            Uuid::now_v7(),
            None,
        ))
        .expect("encodes");
        for ce_type in [
            "payments.payment-received.notification.v3",
            "payments.payment-received.notification.v+2",
            "payments.payment-received.notification.v",
        ] {
            let mut headers = OwnedHeaders::new();
            for h in v2.headers.iter() {
                let value = if h.key == header::TYPE {
                    Some(ce_type.as_bytes())
                } else {
                    h.value
                };
                headers = headers.insert(Header { key: h.key, value });
            }
            let result: Result<Envelope<PaymentReceivedNotification>, _> =
                decode(&message(Some(v2.payload.clone()), Some(headers)));
            assert!(
                matches!(&result, Err(DecodeError::UnsupportedVersion { supported: 2, .. })),
                "{ce_type}: {result:?}"
            );
        }
        // An old reader refuses v2 by name and version: it dead-letters it.
        let old: Result<Envelope<PaymentReceivedNotificationV1>, _> = decode(&delivered(v2));
        assert!(
            matches!(old, Err(DecodeError::UnsupportedVersion { supported: 1, .. })),
            "{old:?}"
        );
    }

    #[test]
    fn every_event_gets_its_own_id() {
        let a = Envelope::new("/t", state(), Uuid::now_v7(), None);
        let b = Envelope::new("/t", a.data.clone(), a.metadata.correlation_id, None);
        assert_ne!(a.metadata.id, b.metadata.id);
    }

    #[test]
    fn missing_headers_are_reported_by_name() {
        for name in [
            header::SPECVERSION,
            header::TYPE,
            header::CONTENT_TYPE,
            header::ID,
            header::SOURCE,
            header::TIME,
        ] {
            match decode_with(name, None) {
                Err(DecodeError::MissingHeader(missing)) => assert_eq!(missing, name),
                other => panic!("{name}: expected MissingHeader, got {other:?}"),
            }
        }
        assert!(
            decode(&message(Some(b"{}".to_vec()), None))
                .map(|_: Envelope<PaymentState>| ())
                .is_err()
        );
    }

    #[test]
    fn missing_correlation_id_starts_a_new_flow() {
        let event = decode_with(header::CORRELATION_ID, None).expect("decodes");
        assert_eq!(EventId(event.metadata.correlation_id), event.metadata.id);
    }

    #[test]
    fn invalid_headers_are_rejected() {
        for (name, value) in [
            (header::SPECVERSION, "0.3"),
            (header::CONTENT_TYPE, "application/avro"),
            (header::ID, "not-a-uuid"),
            (header::SOURCE, ""),
            (header::TIME, "yesterday"),
            (header::CORRELATION_ID, "nope"),
        ] {
            match decode_with(name, Some(value)) {
                Err(DecodeError::InvalidHeader { name: got, .. }) => assert_eq!(got, name),
                other => panic!("{name}={value}: expected InvalidHeader, got {other:?}"),
            }
        }
        assert!(decode_with(header::CONTENT_TYPE, Some("application/json; charset=utf-8")).is_ok());
    }

    /// Found by the `record_decoder` fuzz target: `9999-12-31T23:59:59-23:59`
    /// decoded, and `encode` wrote it back as `+10000-01-01T23:58:59.000000Z`
    /// (a time before year 0000 as `-0001-…`), which no decoder reads.
    #[test]
    fn a_time_outside_four_digit_years_in_utc_is_refused() {
        for outside in ["9999-12-31T23:59:59-23:59", "0000-01-01T00:00:00+01:00"] {
            match decode_with(header::TIME, Some(outside)) {
                Err(DecodeError::InvalidHeader { name, .. }) => assert_eq!(name, header::TIME),
                other => panic!("{outside}: expected InvalidHeader, got {other:?}"),
            }
        }
        for edge in [
            "0000-01-01T00:00:00Z",
            "0000-01-01T01:00:00+01:00",
            "9999-12-31T23:59:59Z",
        ] {
            let event = decode_with(header::TIME, Some(edge)).expect(edge);
            let record = encode(&event).expect("encodes");
            let again: Envelope<PaymentState> = decode(&delivered(record)).expect(edge);
            assert_eq!(again.metadata.time, event.metadata.time, "{edge}");
        }
    }

    #[test]
    fn unknown_types_and_versions_are_told_apart() {
        for other in [
            "payments.refund.v1",
            "payments.payment-received.notification.v1",
            "garbage",
        ] {
            assert!(
                matches!(decode_with(header::TYPE, Some(other)), Err(DecodeError::UnknownType(t)) if t == other),
                "{other}"
            );
        }
        match decode_with(header::TYPE, Some("payments.payment.state.v2")) {
            Err(DecodeError::UnsupportedVersion { found, supported, .. }) => {
                assert_eq!((found.as_str(), supported), ("2", 1));
            }
            other => panic!("expected UnsupportedVersion, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_are_typed_errors() {
        let headers = || Some(headers_with("", None));
        let decode_value = |payload: Option<&[u8]>| -> Result<Envelope<PaymentState>, DecodeError> {
            decode(&message(payload.map(<[u8]>::to_vec), headers()))
        };
        assert!(matches!(decode_value(None), Err(DecodeError::MissingData)));
        for bad in [&b"not json"[..], b"{}", br#"{"payment_id": 1}"#, b"\xff\xfe"] {
            assert!(matches!(
                decode_value(Some(bad)),
                Err(DecodeError::MalformedData(_))
            ));
        }
        // Valid JSON, invalid contract: a zero amount does not decode either.
        let mut json = serde_json::to_value(state()).expect("serialises");
        json["amount"] = 0.into();
        let zero = serde_json::to_vec(&json).expect("serialises");
        assert!(matches!(
            decode_value(Some(&zero)),
            Err(DecodeError::MalformedData(_))
        ));
    }
}
