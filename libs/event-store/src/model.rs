//! What goes into the store and what comes out.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What an append expects of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// The stream must not exist yet (the first events of a new thing).
    NoStream,
    /// The stream must be exactly at this version (the writer decided on the
    /// state at this version).
    Exact(u64),
    /// No expectation: append after whatever is there.
    Any,
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoStream => f.write_str("no stream"),
            Self::Exact(v) => write!(f, "version {v}"),
            Self::Any => f.write_str("any version"),
        }
    }
}

/// Who asked for an event, and why: stored beside it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The request or flow the event belongs to.
    pub correlation_id: Uuid,
    /// The event or command that caused it, if any.
    pub causation_id: Option<Uuid>,
    /// The W3C trace context (`traceparent`) of the span that wrote the
    /// event, when traced: whoever publishes the event later continues that
    /// trace. Absent in events written untraced (and before traces existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// Its `tracestate`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    /// The event's name, e.g. `payments.payment-refunded`.
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    pub metadata: EventMetadata,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Position in the global order of all events.
    pub position: i64,
    pub stream_id: String,
    /// Version within the stream: 1 for its first event.
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i32,
    pub data: serde_json::Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

/// A stream's state as of `version`, so loading needs only the events after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub version: u64,
    pub state: serde_json::Value,
}

/// How far a reader of the committed order has got: the last event it
/// handled. Ordered by writing transaction, then position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Checkpoint {
    pub transaction_id: u64,
    pub position: i64,
}

/// A transaction that holds back a reader of the committed order: it is
/// running in the store's database, and events committed after it wait for
/// it to end.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// Its session's process id.
    pub pid: i32,
    pub transaction_id: u64,
    /// Its session's `application_name`.
    pub application: String,
    /// Its session's state (`idle in transaction`, `active`, ...), when the
    /// reader may see it.
    pub state: Option<String>,
    /// Since its transaction began.
    pub open_for: Duration,
    /// Whether it was just terminated for being open too long.
    pub ended: bool,
}

/// What a reader of the committed order has not handled yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Events committed and not handled (held ones included).
    pub events: u64,
    /// Since the oldest of them was recorded.
    pub oldest: Option<Duration>,
}

/// A stream a reader passed over from `version` on, to come back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub stream_id: String,
    /// Its first event not handled.
    pub version: u64,
    /// That event's type.
    pub event_type: String,
}
