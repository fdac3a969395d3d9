//! The contract as documents: a JSON Schema for the data of every event
//! Payments publishes, and an AsyncAPI 3.0 document for the topics (who
//! sends and receives what, keys, CloudEvents headers, messages), generated
//! from the types above so they cannot drift apart.
//!
//! They are committed under `contracts/` at the workspace root; the test
//! `shared-events/tests/contracts.rs` fails when the committed files differ
//! from what this module generates (`UPDATE_CONTRACTS=1` rewrites them), and
//! CI validates the AsyncAPI document with the AsyncAPI project's parser.

use chrono::{DateTime, Utc};
use rdkafka::message::Headers;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::envelope::{Envelope, encode, header};
use crate::events::{
    Event, PaymentReceivedNotification, PaymentReceivedNotificationV1, PaymentRefundedNotification,
    PaymentState,
};
use crate::payment::{Amount, Currency, CustomerId, OrderId, PaymentId, PaymentMethod};
use crate::topics::{
    DEAD_LETTER_RETENTION_MS, NOTIFICATION_RETENTION_MS, PARTITIONS, Topics, dead_letter_topic,
};

/// `contracts/` at the workspace root, where the documents are committed.
pub fn committed_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../contracts")
}

/// Checks that the committed `contracts/<file>` is `generated`, for the
/// tests that keep the documents and the code together; with
/// `UPDATE_CONTRACTS` set, writes it instead (after a deliberate change, so
/// that the diff shows it).
///
/// # Errors
///
/// What differs, and how to regenerate.
pub fn check_committed(file: &str, generated: &Value) -> Result<(), String> {
    let path = committed_dir().join(file);
    let text = serde_json::to_string_pretty(generated).map_err(|e| e.to_string())? + "\n";
    if std::env::var_os("UPDATE_CONTRACTS").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        }
        return std::fs::write(&path, &text).map_err(|e| format!("{}: {e}", path.display()));
    }
    if std::fs::read_to_string(&path).is_ok_and(|committed| committed == text) {
        Ok(())
    } else {
        Err(format!(
            "{} differs from what the code generates; review the change, then regenerate with \
             UPDATE_CONTRACTS=1 cargo test --workspace contracts",
            path.display()
        ))
    }
}

/// Headers a consumer adds to a record it dead-letters, besides the
/// record's own (the names `service_kit::dead_letter::header` writes; a test
/// there checks they agree).
pub const DEAD_LETTER_HEADERS: [(&str, &str); 8] = [
    ("dlt.error", "what failed, truncated to 2,000 characters"),
    (
        "dlt.reason",
        "`permanent` (never retried) or `exhausted` (out of attempts)",
    ),
    ("dlt.source.topic", "the topic the record was read from"),
    ("dlt.source.partition", "its partition"),
    ("dlt.source.offset", "its offset"),
    ("dlt.attempts", "how many times it was tried"),
    ("dlt.first.failure", "when it first failed, RFC 3339"),
    ("dlt.group", "the consumer group that gave up on it"),
];

/// One published event: its message name in the AsyncAPI document, its
/// `ce_type`, a title, its data's schema, and an example record.
struct Published {
    name: &'static str,
    ce_type: String,
    title: &'static str,
    schema: Schema,
    example: Value,
}

fn published<E: Event>(name: &'static str, title: &'static str, data: E) -> Published {
    Published {
        name,
        ce_type: E::TYPE.ce_type(),
        title,
        schema: schema_for::<E>(),
        example: example(data),
    }
}

/// `data` as the encoder puts it on Kafka (headers, key and value), with
/// fixed ids and times so the documents only change when the contract does.
/// The AsyncAPI parser checks each example against its message's schemas.
fn example<E: Event>(data: E) -> Value {
    let mut envelope = Envelope::new("/payments-service", data, uuid(0xc0), Some(uuid(0xca)))
        .occurred_at(at("2026-11-27T10:00:00Z"));
    envelope.metadata.id = uuid(0x1d).into();
    let record = encode(&envelope).expect("the example encodes");
    let headers: serde_json::Map<String, Value> = record
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
            (h.key.to_owned(), Value::String(value))
        })
        .collect();
    json!({
        "name": "example",
        "summary": format!("key {}", record.key),
        "headers": headers,
        "payload": serde_json::from_slice::<Value>(&record.payload).expect("JSON value"),
    })
}

fn uuid(byte: u8) -> Uuid {
    Uuid::from_bytes([byte; 16])
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    rfc3339.parse().expect("a fixed time")
}

fn payment_state() -> PaymentState {
    PaymentState {
        payment_id: PaymentId::from(uuid(0x01)),
        customer_id: CustomerId::parse("customer-42").expect("valid"),
        order_id: OrderId::parse("order-7").expect("valid"),
        amount: Amount::parse(1999).expect("valid"),
        currency: Currency::parse("EUR").expect("valid"),
        received_at: at("2026-11-27T10:00:00Z"),
        refunded: 500,
        version: 2,
        payment_method: PaymentMethod::Card,
    }
}

/// Draft-07 (what AsyncAPI's schema format extends), every type inlined so
/// each schema stands alone.
fn schema_for<T: JsonSchema>() -> Schema {
    SchemaSettings::draft07()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>()
}

fn events() -> [Published; 4] {
    [
        published(
            "PaymentReceivedNotification",
            "A payment was received: which one, when, and how it was paid (event notification)",
            PaymentReceivedNotification {
                payment_id: PaymentId::from(uuid(0x01)),
                received_at: at("2026-11-27T10:00:00Z"),
                payment_method: PaymentMethod::Card,
            },
        ),
        published(
            "PaymentReceivedNotificationV1",
            "A payment was received, as version 1 said it: which one, and when. No longer sent; \
             still read, as a version 2 whose payment_method is unknown",
            PaymentReceivedNotificationV1 {
                payment_id: PaymentId::from(uuid(0x01)),
                received_at: at("2026-11-27T10:00:00Z"),
            },
        ),
        published(
            "PaymentRefundedNotification",
            "Part of a payment was given back: which payment, which refund, when",
            PaymentRefundedNotification {
                payment_id: PaymentId::from(uuid(0x01)),
                refund_id: uuid(0x02),
                refunded_at: at("2026-11-27T10:05:00Z"),
            },
        ),
        published(
            "PaymentState",
            "A payment's whole state after a change (event-carried state transfer)",
            payment_state(),
        ),
    ]
}

/// `(file name, JSON Schema)` of every published event's data, named after
/// its `ce_type` (`payments.payment.state.v1.schema.json`).
pub fn event_schemas() -> Vec<(String, Value)> {
    events()
        .into_iter()
        .map(|e| (format!("{}.schema.json", e.ce_type), e.schema.to_value()))
        .collect()
}

/// The AsyncAPI 3.0 document of the default topics.
pub fn asyncapi() -> Value {
    let topics = Topics::default();
    let events = events();
    let mut messages = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for event in &events {
        let mut payload = event.schema.clone().to_value();
        if let Some(object) = payload.as_object_mut() {
            // The document's own schema format applies inside it.
            object.remove("$schema");
        }
        schemas.insert(event.name.to_owned(), payload);
        messages.insert(
            event.name.to_owned(),
            json!({
                "name": event.ce_type,
                "title": event.title,
                "contentType": "application/json",
                "headers": cloud_events_headers(&event.ce_type),
                "payload": { "$ref": format!("#/components/schemas/{}", event.name) },
                "examples": [event.example],
                "bindings": { "kafka": {
                    "key": { "type": "string", "format": "uuid", "description": "The payment id: a payment's events share a partition, in order." },
                    "bindingVersion": "0.5.0",
                } },
            }),
        );
    }
    messages.insert(
        "DeadLetter".to_owned(),
        json!({
            "name": "dead-letter",
            "title": "A record a consumer gave up on",
            "summary": "The record as it was read (key, value and headers), plus the dlt.* headers.",
            "headers": dead_letter_headers(),
            "bindings": { "kafka": { "bindingVersion": "0.5.0" } },
        }),
    );

    let message_refs = |names: &[&str]| -> Value {
        names
            .iter()
            .map(|name| {
                (
                    name.to_string(),
                    json!({ "$ref": format!("#/components/messages/{name}") }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    // What is sent, and what is read: readers still take version 1.
    let notifications = ["PaymentReceivedNotification", "PaymentRefundedNotification"];
    let notifications_read = [
        "PaymentReceivedNotification",
        "PaymentReceivedNotificationV1",
        "PaymentRefundedNotification",
    ];
    let channel = |address: &str, description: &str, messages: Value, config: Value| {
        json!({
            "address": address,
            "description": description,
            "messages": messages,
            "bindings": { "kafka": {
                "topic": address,
                "partitions": PARTITIONS,
                "topicConfiguration": config,
                "bindingVersion": "0.5.0",
            } },
        })
    };
    let dead_letters = json!({
        "cleanup.policy": ["delete"],
        "retention.ms": DEAD_LETTER_RETENTION_MS,
    });
    let operation = |action: &str, channel: &str, summary: &str, messages: &[&str]| {
        json!({
            "action": action,
            "channel": { "$ref": format!("#/channels/{channel}") },
            "summary": summary,
            "messages": messages
                .iter()
                .map(|name| json!({ "$ref": format!("#/channels/{channel}/messages/{name}") }))
                .collect::<Vec<_>>(),
        })
    };

    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Payments events",
            "version": "1.0.0",
            "description": "What Payments publishes over Kafka, and who reads it. Generated from the \
                Rust types of the shared-events crate. Records follow the CloudEvents 1.0 Kafka binding \
                in binary content mode: the data is the value, its attributes are headers. Payments' \
                outbox relay publishes every stored event in one Kafka transaction (consumers read \
                committed records only): its state on the state topic and a notification.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "notifications": channel(
                &topics.notifications,
                "Event notifications: which payment changed, and when. Kept 7 days.",
                message_refs(&notifications_read),
                json!({ "cleanup.policy": ["delete"], "retention.ms": NOTIFICATION_RETENTION_MS }),
            ),
            "state": channel(
                &topics.state,
                "Every payment's whole state after each change, keyed by payment id and compacted: \
                 the newest state of every payment is kept forever.",
                message_refs(&["PaymentState"]),
                json!({ "cleanup.policy": ["compact"] }),
            ),
            "notificationsDeadLetters": channel(
                &dead_letter_topic(&topics.notifications),
                "Notifications a consumer group could not handle. Kept 30 days.",
                message_refs(&["DeadLetter"]),
                dead_letters.clone(),
            ),
            "stateDeadLetters": channel(
                &dead_letter_topic(&topics.state),
                "States a consumer could not handle. Kept 30 days.",
                message_refs(&["DeadLetter"]),
                dead_letters,
            ),
        },
        "operations": {
            "publishNotifications": operation("send", "notifications",
                "Payments' outbox relay announces each stored event.", &notifications),
            "publishState": operation("send", "state",
                "Payments' outbox relay publishes the payment's state after each stored event.",
                &["PaymentState"]),
            "serviceBCallsBack": operation("receive", "notifications",
                "ServiceB (group service-b) calls Payments' GET /payments/{id} for each notification \
                 and records the answer.", &notifications_read),
            "serviceAAudits": operation("receive", "notifications",
                "ServiceA (group service-a) keeps an audit log of every notification.", &notifications_read),
            "serviceACopiesState": operation("receive", "state",
                "ServiceA reads the whole state topic, every partition, from the beginning (no group) \
                 and keeps a copy of every payment.", &["PaymentState"]),
            "deadLetterNotifications": operation("send", "notificationsDeadLetters",
                "ServiceA or ServiceB gives up on a notification.", &["DeadLetter"]),
            "deadLetterState": operation("send", "stateDeadLetters",
                "ServiceA gives up on a state record.", &["DeadLetter"]),
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
        },
    })
}

/// A W3C `traceparent`: version, trace id, parent span id, flags.
const TRACEPARENT_PATTERN: &str = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-.*)?$";

/// The CloudEvents attributes as Kafka headers, for events of `ce_type`,
/// and the W3C trace context of the send beside them.
fn cloud_events_headers(ce_type: &str) -> Value {
    json!({
        "type": "object",
        "required": [header::SPECVERSION, header::ID, header::SOURCE, header::TYPE, header::TIME,
                     header::CONTENT_TYPE, header::CORRELATION_ID],
        "properties": {
            header::SPECVERSION: { "const": "1.0" },
            header::ID: { "type": "string", "format": "uuid",
                          "description": "Unique per event; consumers skip one they handled before." },
            header::SOURCE: { "type": "string", "description": "The producing service, e.g. /payments-service." },
            header::TYPE: { "const": ce_type, "description": "Event name and schema version, <name>.v<n>." },
            header::TIME: { "type": "string", "format": "date-time", "description": "When it happened, RFC 3339." },
            header::CONTENT_TYPE: { "const": "application/json" },
            header::CORRELATION_ID: { "type": "string", "format": "uuid",
                                      "description": "Extension: the request or flow this belongs to." },
            header::CAUSATION_ID: { "type": "string", "format": "uuid",
                                    "description": "Extension, optional: what caused this event." },
            header::TRACEPARENT: { "type": "string", "pattern": TRACEPARENT_PATTERN,
                                   "description": "Distributed-tracing extension, optional: the W3C \
                                   traceparent where the event was made (the request that stored it). \
                                   Set once, never changed on the way; ignored when malformed." },
            header::TRACESTATE: { "type": "string",
                                  "description": "Distributed-tracing extension, optional: its W3C tracestate." },
            "traceparent": { "type": "string", "pattern": TRACEPARENT_PATTERN,
                             "description": "Optional, W3C Trace Context: the span that sent this record \
                             (the outbox relay's send). Each consumer's span is its child." },
            "tracestate": { "type": "string", "description": "Optional, W3C Trace Context: the tracestate beside it." },
        },
    })
}

fn dead_letter_headers() -> Value {
    let properties: serde_json::Map<String, Value> = DEAD_LETTER_HEADERS
        .iter()
        .map(|(name, description)| {
            (
                (*name).to_owned(),
                json!({ "type": "string", "description": description }),
            )
        })
        .collect();
    json!({
        "type": "object",
        "description": "The original record's headers (CloudEvents attributes among them) are kept as they were.",
        "properties": properties,
    })
}

/// What a reader built for the `old` schema of an event's data could not
/// read in data valid under the `new` one: each entry names where
/// (`/properties/amount`) and why. Empty when every `new` instance is also a
/// valid `old` one, as far as this check can tell, with one allowance:
/// readers ignore properties they do not know (no `deny_unknown_fields`),
/// so properties may be added, required or not.
///
/// It compares the keywords these schemas use (types, required properties,
/// properties, enumerated values, formats, patterns, bounds, items), with
/// every subschema inlined; a keyword it does not understand that differs
/// is reported too, rather than passed.
pub fn breaking_changes(old: &Value, new: &Value) -> Vec<String> {
    let mut found = Vec::new();
    narrower_or_equal("", old, new, &mut found);
    found
}

/// Keywords that describe and never constrain.
const ANNOTATIONS: [&str; 7] = [
    "$schema",
    "title",
    "description",
    "default",
    "examples",
    "deprecated",
    "$comment",
];

fn narrower_or_equal(at: &str, old: &Value, new: &Value, found: &mut Vec<String>) {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        // `true`/`false` schemas: only `false -> anything` or `x -> true` could
        // matter, and these documents have none; differ means report.
        if old != new && old != &Value::Bool(true) {
            found.push(format!("{at}: the schema changed from {old} to {new}"));
        }
        return;
    };
    let at_root = if at.is_empty() { "/" } else { at };

    // Enumerations: a value the old reader does not know fails it.
    if let Some(old_values) = allowed_values(old) {
        match allowed_values(new) {
            Some(new_values) => {
                let unknown: Vec<_> = new_values.difference(&old_values).collect();
                if !unknown.is_empty() {
                    found.push(format!(
                        "{at_root}: new values an old reader does not know: {unknown:?}"
                    ));
                }
            }
            None => found.push(format!("{at_root}: was a fixed set of values, now open")),
        }
        return;
    }

    if let Some(old_types) = types(old) {
        match types(new) {
            Some(new_types) if new_types.is_subset(&old_types) => {}
            Some(new_types) => found.push(format!(
                "{at_root}: type {new_types:?} where an old reader takes {old_types:?}"
            )),
            None => found.push(format!(
                "{at_root}: any type where an old reader takes {old_types:?}"
            )),
        }
    }

    let strings =
        |schema: &serde_json::Map<String, Value>, key: &str| -> std::collections::BTreeSet<String> {
            schema
                .get(key)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default()
        };
    let no_longer_required: Vec<_> = strings(old, "required")
        .difference(&strings(new, "required"))
        .cloned()
        .collect();
    if !no_longer_required.is_empty() {
        found.push(format!(
            "{at_root}: no longer always present: {no_longer_required:?}"
        ));
    }

    for (key, old_value) in old {
        let new_value = new.get(key);
        match key.as_str() {
            "type" | "required" | "enum" | "const" => {}
            k if ANNOTATIONS.contains(&k) => {}
            "properties" => {
                let empty = serde_json::Map::new();
                let new_properties = new_value.and_then(Value::as_object).unwrap_or(&empty);
                for (name, old_property) in old_value.as_object().unwrap_or(&empty) {
                    // A property no longer described may still come, of any
                    // type: fine only if old readers took it as optional,
                    // which `required` above checks.
                    if let Some(new_property) = new_properties.get(name) {
                        narrower_or_equal(
                            &format!("{at}/properties/{name}"),
                            old_property,
                            new_property,
                            found,
                        );
                    }
                }
            }
            "items" => match new_value {
                Some(new_items) => narrower_or_equal(&format!("{at}/items"), old_value, new_items, found),
                None => found.push(format!("{at_root}: items no longer constrained")),
            },
            "additionalProperties" if old_value == &Value::Bool(false) => {
                let old_names = old.get("properties").and_then(Value::as_object);
                let added = new
                    .get("properties")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flat_map(|p| p.keys())
                    .filter(|name| !old_names.is_some_and(|o| o.contains_key(*name)))
                    .count();
                if new_value != Some(old_value) || added > 0 {
                    found.push(format!(
                        "{at_root}: properties added where an old reader takes none"
                    ));
                }
            }
            "minimum" | "exclusiveMinimum" | "minLength" | "minItems" => {
                if !bound_holds(old_value, new_value, |o, n| n >= o) {
                    found.push(format!(
                        "{at_root}: {key} lowered or removed ({old_value} before)"
                    ));
                }
            }
            "maximum" | "exclusiveMaximum" | "maxLength" | "maxItems" => {
                if !bound_holds(old_value, new_value, |o, n| n <= o) {
                    found.push(format!("{at_root}: {key} raised or removed ({old_value} before)"));
                }
            }
            // Formats and patterns cannot be compared for inclusion: they
            // must stay as they were.
            _ => {
                if new_value != Some(old_value) {
                    found.push(format!(
                        "{at_root}: {key} changed from {old_value} to {}",
                        new_value.map_or_else(|| "nothing".to_owned(), Value::to_string)
                    ));
                }
            }
        }
    }
}

/// The values a schema allows, when it lists them (`enum`, `const`, or a
/// `oneOf`/`anyOf` of such, as schemars writes an enum with documented
/// variants).
fn allowed_values(schema: &serde_json::Map<String, Value>) -> Option<std::collections::BTreeSet<String>> {
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return Some(values.iter().map(Value::to_string).collect());
    }
    if let Some(value) = schema.get("const") {
        return Some(std::iter::once(value.to_string()).collect());
    }
    let branches = schema.get("oneOf").or_else(|| schema.get("anyOf"))?.as_array()?;
    let mut all = std::collections::BTreeSet::new();
    for branch in branches {
        all.extend(allowed_values(branch.as_object()?)?);
    }
    Some(all)
}

fn types(schema: &serde_json::Map<String, Value>) -> Option<std::collections::BTreeSet<String>> {
    match schema.get("type")? {
        Value::String(t) => Some(std::iter::once(t.clone()).collect()),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).map(str::to_owned).collect()),
        _ => None,
    }
}

fn bound_holds(old: &Value, new: Option<&Value>, holds: impl Fn(f64, f64) -> bool) -> bool {
    match (old.as_f64(), new.and_then(Value::as_f64)) {
        (Some(old), Some(new)) => holds(old, new),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(old: Value, new: Value) -> Vec<String> {
        breaking_changes(&old, &new)
    }

    fn object(properties: Value, required: &[&str]) -> Value {
        json!({ "type": "object", "properties": properties, "required": required })
    }

    #[test]
    fn adding_a_property_breaks_no_old_reader() {
        let old = object(json!({ "id": { "type": "string" } }), &["id"]);
        let optional = object(
            json!({ "id": { "type": "string" }, "m": { "type": "string" } }),
            &["id"],
        );
        let required = object(
            json!({ "id": { "type": "string" }, "m": { "type": "string" } }),
            &["id", "m"],
        );
        assert_eq!(check(old.clone(), optional), Vec::<String>::new());
        assert_eq!(check(old.clone(), required), Vec::<String>::new());
        let described = json!({ "description": "new words", "title": "T", "type": "object",
            "properties": { "id": { "type": "string", "description": "x" } }, "required": ["id"] });
        assert_eq!(check(old, described), Vec::<String>::new());
    }

    #[test]
    fn what_an_old_reader_cannot_read_is_named() {
        let old = object(
            json!({
                "id": { "type": "string", "format": "uuid" },
                "amount": { "type": "integer", "minimum": 1 },
                "method": { "enum": ["card", "wallet"] },
                "note": { "type": ["string", "null"] },
            }),
            &["id", "amount"],
        );
        let cases = [
            // Removed, or made optional.
            (
                object(
                    json!({ "amount": { "type": "integer", "minimum": 1 } }),
                    &["amount"],
                ),
                "no longer always present",
            ),
            // Retyped, or widened.
            (
                object(
                    json!({ "id": { "type": "integer" }, "amount": { "type": "integer", "minimum": 1 } }),
                    &["id", "amount"],
                ),
                "type",
            ),
            (
                object(
                    json!({ "id": { "type": "string", "format": "uuid" }, "amount": { "type": "integer", "minimum": 0 } }),
                    &["id", "amount"],
                ),
                "minimum lowered",
            ),
            (
                object(
                    json!({ "id": { "type": "string" }, "amount": { "type": "integer", "minimum": 1 } }),
                    &["id", "amount"],
                ),
                "format changed",
            ),
            // A value the old reader's enum lacks.
            (
                object(
                    json!({ "id": { "type": "string", "format": "uuid" }, "amount": { "type": "integer", "minimum": 1 },
                "method": { "oneOf": [{ "enum": ["card"] }, { "const": "crypto" }] } }),
                    &["id", "amount"],
                ),
                "crypto",
            ),
            // Null no longer... allowed where it was not.
            (
                object(
                    json!({ "id": { "type": ["string", "null"], "format": "uuid" }, "amount": { "type": "integer", "minimum": 1 } }),
                    &["id", "amount"],
                ),
                "null",
            ),
        ];
        for (new, expected) in cases {
            let found = check(old.clone(), new.clone());
            assert!(
                found.iter().any(|f| f.contains(expected)),
                "expected {expected:?} for {new}: {found:?}"
            );
        }
        // Fewer values, a tighter bound, a non-null where null was allowed: fine.
        let narrower = object(
            json!({
                "id": { "type": "string", "format": "uuid" },
                "amount": { "type": "integer", "minimum": 5 },
                "method": { "enum": ["card"] },
                "note": { "type": "string" },
            }),
            &["id", "amount"],
        );
        assert_eq!(check(old, narrower), Vec::<String>::new());
    }

    #[test]
    fn the_published_events_changed_compatibly_within_their_versions() {
        // State v1 gained `payment_method` as optional data: no new version.
        let before = json!({
            "type": "object",
            "properties": { "payment_id": { "type": "string", "format": "uuid" }, "version": { "type": "integer", "format": "uint64", "minimum": 0 } },
            "required": ["payment_id", "version"],
        });
        let now = schema_for::<PaymentState>().to_value();
        assert_eq!(breaking_changes(&before, &now), Vec::<String>::new());
        // Notification v1 read as v2 would not be compatible the other way:
        // v2 adds a required field, which a v1 reader ignores (compatible),
        // but v1 data lacks it, which is why v2 readers upcast.
        let v1 = schema_for::<PaymentReceivedNotificationV1>().to_value();
        let v2 = schema_for::<PaymentReceivedNotification>().to_value();
        assert_eq!(breaking_changes(&v1, &v2), Vec::<String>::new());
        assert!(!breaking_changes(&v2, &v1).is_empty());
    }
}
