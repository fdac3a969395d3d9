//! Logs and traces.
//!
//! **Logs** go to stdout; levels come from `RUST_LOG` (default: `info`, with
//! librdkafka's own chatter at `warn`).
//!
//! **Traces** are off by default (no layer, no cost). When asked, every
//! `tracing` span at `info` or above becomes an OpenTelemetry span, exported
//!
//! - over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g.
//!   `http://localhost:4318` for Jaeger; the exporter reads the other
//!   standard `OTEL_EXPORTER_OTLP_*` variables itself), and/or
//! - in Zipkin's format when `OTEL_EXPORTER_ZIPKIN_ENDPOINT` is set (e.g.
//!   `http://localhost:9411/api/v2/spans`: what compose's observability
//!   profile runs, since no registry here serves Jaeger's UI), and/or
//! - as JSON lines, one [`SpanRecord`] per span, appended to
//!   `$TRACES_DIR/<service>.jsonl` when `TRACES_DIR` is set: what
//!   `cargo xtask flow` reads.
//!
//! One payment is one trace. Its context crosses each process boundary as
//! W3C Trace Context (`traceparent`, `tracestate`):
//!
//! | hop                                   | carried by                                          |
//! |---------------------------------------|-----------------------------------------------------|
//! | client → Payments                     | the request's headers ([`parent_from_http`])        |
//! | Payments' request → the outbox relay  | the stored event's metadata ([`current_context`])   |
//! | relay → each consumer                 | the record's headers ([`inject_into_record`], [`parent_from_record`]) |
//! | ServiceB → Payments (GetPaymentInfo)  | the callback's headers ([`inject_into_http`])       |
//!
//! Spans follow OpenTelemetry's semantic conventions for HTTP and messaging:
//! their OpenTelemetry name and kind come from the `otel.name` and
//! `otel.kind` fields, their attributes from the other dotted fields
//! (`http.request.method`, `messaging.destination.name`, ...). The log lines
//! leave the `otel.*` fields out.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Status, TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter, TracerProviderBuilder};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::error::{Error, Result};

/// The variable naming the directory for JSON-lines traces.
pub const TRACES_DIR: &str = "TRACES_DIR";
/// The variable naming the OTLP collector; the exporter reads it itself.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The variable naming Zipkin's span endpoint (`.../api/v2/spans`).
pub const ZIPKIN_ENDPOINT: &str = "OTEL_EXPORTER_ZIPKIN_ENDPOINT";

/// Keeps the exporters running; dropping it sends what is left. Hold it in
/// `main` until the service stopped.
#[must_use = "dropping it stops exporting traces"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("tracing", &self.provider.is_some())
            .finish()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            // The subscriber may be the thing that failed: stderr it is.
            eprintln!("traces not all exported: {e}");
        }
    }
}

/// Installs the global subscriber for `service`: logs, and traces when
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_ZIPKIN_ENDPOINT` or
/// `TRACES_DIR` asks for them. Call once, from `main`, outside the async
/// runtime (the exporters' HTTP clients run threads of their own).
pub fn init(service: &'static str) -> Result<Telemetry> {
    let mut builder = None::<TracerProviderBuilder>;
    if std::env::var_os(OTLP_ENDPOINT).is_some_and(|v| !v.is_empty()) {
        let otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::Telemetry(format!("OTLP exporter ({OTLP_ENDPOINT}): {e}")))?;
        builder = Some(builder.unwrap_or_default().with_batch_exporter(otlp));
    }
    if let Some(endpoint) = std::env::var(ZIPKIN_ENDPOINT).ok().filter(|v| !v.is_empty()) {
        let zipkin = ZipkinExporter::new(service, endpoint)?;
        builder = Some(builder.unwrap_or_default().with_batch_exporter(zipkin));
    }
    if let Some(dir) = std::env::var_os(TRACES_DIR).filter(|v| !v.is_empty()) {
        let file = JsonLinesExporter::create(Path::new(&dir), service)?;
        builder = Some(builder.unwrap_or_default().with_batch_exporter(file));
    }
    let provider = builder.map(|b| b.with_resource(resource(service)).build());
    install(
        fmt_layer().with_writer(std::io::stdout),
        provider.as_ref().map(|p| p.tracer(service)),
    )
    .map_err(|e| Error::Telemetry(e.to_string()))?;
    Ok(Telemetry { provider })
}

/// A subscriber for tests: the logs of the services a test runs in-process
/// go to the test's captured output, shown when it fails. Safe to call from
/// every test; the first call installs it.
pub fn init_for_tests() {
    let _ = install(fmt_layer().with_test_writer(), None);
}

/// [`init_for_tests`], also handing every span to `exporter` as soon as it
/// ends, for a test that checks the traces. Must come before anything calls
/// [`init_for_tests`]. Every service a test runs in-process exports through
/// it, under the service name `service`.
pub fn init_for_tests_with_exporter(
    service: &'static str,
    exporter: impl SpanExporter + 'static,
) -> SdkTracerProvider {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .with_resource(resource(service))
        .build();
    install(fmt_layer().with_test_writer(), Some(provider.tracer(service)))
        .expect("the first subscriber of the test binary");
    provider
}

fn resource(service: &'static str) -> Resource {
    Resource::builder().with_service_name(service).build()
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,librdkafka=warn,rdkafka=warn"))
}

fn fmt_layer<S>() -> tracing_subscriber::fmt::Layer<S, WithoutOtelFields>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(WithoutOtelFields)
        .with_target(false)
        // Colours for a terminal only: `docker logs` and files get plain text.
        .with_ansi(std::io::stdout().is_terminal())
}

/// Logs through `fmt` (filtered by `RUST_LOG`) and, with a `tracer`, spans to
/// OpenTelemetry. Each has its own filter, so `RUST_LOG=warn` quiets the logs
/// without losing the spans.
fn install<W>(
    fmt: tracing_subscriber::fmt::Layer<
        tracing_subscriber::Registry,
        WithoutOtelFields,
        tracing_subscriber::fmt::format::Format,
        W,
    >,
    tracer: Option<opentelemetry_sdk::trace::Tracer>,
) -> std::result::Result<(), tracing_subscriber::util::TryInitError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let otel = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            // No `busy_ns`/`idle_ns` attributes: the span's own duration
            // is what a reader of the trace looks at.
            .with_tracked_inactivity(false)
            .with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter()))
        .with(otel)
        .try_init()
}

/// The W3C Trace Context propagator: `traceparent` and `tracestate`.
fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The current span's W3C trace context as the propagator writes it:
/// `traceparent` (and `tracestate`), nothing when no span is exported.
fn current_fields() -> HashMap<String, String> {
    let mut fields = HashMap::new();
    propagator().inject_context(&tracing::Span::current().context(), &mut fields);
    fields
}

/// The current span's W3C trace context, as `(traceparent, tracestate)`
/// strings; `None` when traces are off (or the span is not exported).
/// Stored with an event, so that its publication joins the request's trace.
pub fn current_context() -> Option<(String, Option<String>)> {
    let mut fields = current_fields();
    let traceparent = fields.remove("traceparent")?;
    let tracestate = fields.remove("tracestate").filter(|s| !s.is_empty());
    Some((traceparent, tracestate))
}

/// The context `traceparent` (and `tracestate`) describe, to be the parent
/// of a span; an empty context (a new trace) if they are missing or invalid.
pub fn parent_from_strings(traceparent: Option<&str>, tracestate: Option<&str>) -> Context {
    let mut fields = HashMap::new();
    if let Some(traceparent) = traceparent {
        fields.insert("traceparent".to_owned(), traceparent.to_owned());
    }
    if let Some(tracestate) = tracestate {
        fields.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    propagator().extract(&fields)
}

/// Makes `span` a child of `parent`, when `parent` is a valid remote span.
pub fn set_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled: nothing to join then.
        let _ = span.set_parent(parent);
    }
}

/// Adds the current span's context to a record's headers (`traceparent`,
/// `tracestate`), so its consumer's span continues the trace.
pub fn inject_into_record(headers: OwnedHeaders) -> OwnedHeaders {
    current_fields()
        .into_iter()
        .fold(headers, |headers, (key, value)| {
            headers.insert(Header {
                key: &key,
                value: Some(&value),
            })
        })
}

/// The context a consumed record carries: its `traceparent` header (the
/// send that delivered it) or, from a producer that set only the CloudEvents
/// distributed-tracing extension, `ce_traceparent` (where the event was made).
pub fn parent_from_record(headers: Option<&impl Headers>) -> Context {
    let Some(headers) = headers else {
        return Context::new();
    };
    let value = |name: &str| {
        headers
            .iter()
            .filter(|h| h.key == name)
            .last()
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    match value("traceparent") {
        Some(traceparent) => parent_from_strings(Some(traceparent), value("tracestate")),
        None => parent_from_strings(value("ce_traceparent"), value("ce_tracestate")),
    }
}

/// The context of an HTTP request's `traceparent`/`tracestate` headers.
pub fn parent_from_http(headers: &axum::http::HeaderMap) -> Context {
    let value = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    parent_from_strings(value("traceparent"), value("tracestate"))
}

/// Adds the current span's context to an outgoing request's headers.
pub fn inject_into_http(headers: &mut axum::http::HeaderMap) {
    for (key, value) in current_fields() {
        if let (Ok(key), Ok(value)) = (
            axum::http::HeaderName::try_from(key),
            axum::http::HeaderValue::try_from(value),
        ) {
            headers.insert(key, value);
        }
    }
}

/// Log lines without the `otel.*` fields, which only steer the exported
/// spans (their name, kind and status); otherwise as `tracing-subscriber`'s
/// default: `message` bare, the rest as `name=value`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WithoutOtelFields;

impl<'w> FormatFields<'w> for WithoutOtelFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut visitor = FieldWriter {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct FieldWriter<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl Visit for FieldWriter<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || field.name().starts_with("otel.") {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{value:?}")
        } else {
            write!(self.writer, "{separator}{}={value:?}", field.name())
        };
    }
}

/// One exported span, as `TRACES_DIR` files hold it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Absent for the first span of a trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: String,
    /// Nanoseconds since the Unix epoch.
    pub start_unix_nanos: u128,
    pub end_unix_nanos: u128,
    /// `ok`, `error` or `unset`.
    pub status: String,
    pub attributes: HashMap<String, serde_json::Value>,
}

impl SpanRecord {
    fn from_span(service: &str, span: &SpanData) -> Self {
        let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let parent = span.parent_span_id;
        Self {
            service: service.to_owned(),
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: (parent != opentelemetry::trace::SpanId::INVALID).then(|| parent.to_string()),
            name: span.name.to_string(),
            kind: format!("{:?}", span.span_kind).to_lowercase(),
            start_unix_nanos: nanos(span.start_time),
            end_unix_nanos: nanos(span.end_time),
            status: match span.status {
                Status::Unset => "unset",
                Status::Ok => "ok",
                Status::Error { .. } => "error",
            }
            .to_owned(),
            attributes: span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), json_value(&kv.value)))
                .collect(),
        }
    }
}

fn json_value(value: &Value) -> serde_json::Value {
    match value {
        Value::Bool(b) => (*b).into(),
        Value::I64(i) => (*i).into(),
        Value::F64(f) => (*f).into(),
        other => other.as_str().into_owned().into(),
    }
}

/// Posts spans to a Zipkin server in its v2 JSON format. Our own rather
/// than `opentelemetry-zipkin`: that crate is deprecated in favour of OTLP
/// into Zipkin, which the Zipkin Maven Central serves (3.5.1) does not take
/// yet, and its 0.33 leaves out the service name, without which Zipkin's UI
/// cannot tell the services apart.
#[derive(Debug)]
struct ZipkinExporter {
    service: &'static str,
    endpoint: String,
    http: reqwest::blocking::Client,
}

impl ZipkinExporter {
    fn new(service: &'static str, endpoint: String) -> Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Telemetry(format!("Zipkin exporter ({ZIPKIN_ENDPOINT}): {e}")))?;
        Ok(Self {
            service,
            endpoint,
            http,
        })
    }
}

impl SpanExporter for ZipkinExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans: Vec<serde_json::Value> = batch
            .iter()
            .map(|span| zipkin_span(&SpanRecord::from_span(self.service, span)))
            .collect();
        // The SDK calls this on its exporter thread, outside any runtime:
        // the blocking client is the one that works there.
        let response = self
            .http
            .post(&self.endpoint)
            .json(&spans)
            .send()
            .map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.endpoint)))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(OTelSdkError::InternalFailure(format!(
                "{} answered {}",
                self.endpoint,
                response.status()
            )))
        }
    }
}

/// A span in Zipkin's v2 JSON: ids in hex, times in microseconds, the
/// service as the local endpoint, attributes as string tags, and `error`
/// for a failed one.
fn zipkin_span(span: &SpanRecord) -> serde_json::Value {
    let micros = |nanos: u128| u64::try_from(nanos / 1_000).unwrap_or(u64::MAX);
    let mut tags: serde_json::Map<String, serde_json::Value> = span
        .attributes
        .iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (key.clone(), text.into())
        })
        .collect();
    if span.status == "error" {
        tags.insert("error".to_owned(), "true".into());
    }
    let mut zipkin = serde_json::json!({
        "traceId": span.trace_id,
        "id": span.span_id,
        "name": span.name,
        "timestamp": micros(span.start_unix_nanos),
        // Zipkin drops a zero duration; a span took at least a microsecond.
        "duration": micros(span.end_unix_nanos.saturating_sub(span.start_unix_nanos)).max(1),
        "localEndpoint": { "serviceName": span.service },
        "tags": tags,
    });
    if let Some(parent) = &span.parent_span_id {
        zipkin["parentId"] = parent.clone().into();
    }
    // Zipkin has no kind for internal spans.
    if span.kind != "internal" {
        zipkin["kind"] = span.kind.to_uppercase().into();
    }
    zipkin
}

/// Appends each span as a [`SpanRecord`] line to `<dir>/<service>.jsonl`.
#[derive(Debug)]
struct JsonLinesExporter {
    service: &'static str,
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonLinesExporter {
    fn create(dir: &Path, service: &'static str) -> Result<Self> {
        let path = dir.join(format!("{service}.jsonl"));
        let opened = std::fs::create_dir_all(dir)
            .and_then(|()| OpenOptions::new().create(true).append(true).open(&path));
        let file = opened
            .map_err(|e| Error::Telemetry(format!("{TRACES_DIR}: cannot write {}: {e}", path.display())))?;
        Ok(Self {
            service,
            path,
            file: Mutex::new(file),
        })
    }
}

impl SpanExporter for JsonLinesExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut lines = Vec::new();
        for span in &batch {
            serde_json::to_writer(&mut lines, &SpanRecord::from_span(self.service, span))
                .map_err(|e| OTelSdkError::InternalFailure(e.to_string()))?;
            lines.push(b'\n');
        }
        // One write per batch, so that lines of concurrent writers (two
        // instances of a service) do not interleave.
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        file.write_all(&lines)
            .map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::OwnedHeaders;

    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_record_carries_its_context_and_a_consumer_finds_it() {
        let parent = parent_from_strings(Some(PARENT), Some("vendor=x"));
        assert!(parent.span().span_context().is_valid());
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(PARENT),
        });
        let found = parent_from_record(Some(&headers));
        assert_eq!(
            found.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            found.span().span_context().span_id().to_string(),
            "00f067aa0ba902b7"
        );
    }

    #[test]
    fn the_cloudevents_extension_serves_when_the_transport_header_is_missing() {
        let headers = OwnedHeaders::new().insert(Header {
            key: "ce_traceparent",
            value: Some(PARENT),
        });
        assert!(
            parent_from_record(Some(&headers))
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn invalid_or_missing_contexts_start_a_new_trace() {
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            assert!(
                !parent_from_strings(Some(bad), None)
                    .span()
                    .span_context()
                    .is_valid(),
                "{bad}"
            );
        }
        assert!(
            !parent_from_record(None::<&OwnedHeaders>)
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn a_span_in_zipkins_format_names_its_service_and_kind() {
        let record = SpanRecord {
            service: "service-b".to_owned(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            span_id: "00f067aa0ba902b7".to_owned(),
            parent_span_id: Some("00f067aa0ba902b6".to_owned()),
            name: "GET".to_owned(),
            kind: "client".to_owned(),
            start_unix_nanos: 1_700_000_000_123_456_789,
            end_unix_nanos: 1_700_000_000_125_456_789,
            status: "error".to_owned(),
            attributes: HashMap::from([
                ("http.response.status_code".to_owned(), serde_json::json!(503)),
                ("http.request.method".to_owned(), serde_json::json!("GET")),
            ]),
        };
        assert_eq!(
            zipkin_span(&record),
            serde_json::json!({
                "traceId": "4bf92f3577b34da6a3ce929d0e0e4736",
                "id": "00f067aa0ba902b7",
                "parentId": "00f067aa0ba902b6",
                "name": "GET",
                "kind": "CLIENT",
                "timestamp": 1_700_000_000_123_456_u64,
                "duration": 2_000,
                "localEndpoint": { "serviceName": "service-b" },
                "tags": { "http.response.status_code": "503", "http.request.method": "GET", "error": "true" },
            })
        );
        let root = SpanRecord {
            parent_span_id: None,
            kind: "internal".to_owned(),
            end_unix_nanos: record.start_unix_nanos,
            status: "unset".to_owned(),
            ..record
        };
        let zipkin = zipkin_span(&root);
        assert!(
            zipkin.get("parentId").is_none() && zipkin.get("kind").is_none(),
            "{zipkin}"
        );
        assert_eq!(zipkin["duration"], 1);
    }

    #[test]
    fn log_lines_leave_out_the_otel_fields() {
        let buffer = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = std::sync::Arc::clone(&buffer);
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(WithoutOtelFields)
            .with_ansi(false)
            .with_writer(move || Sink(std::sync::Arc::clone(&sink)))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "process",
                otel.name = "process t",
                otel.kind = "consumer",
                offset = 7
            );
            let _entered = span.enter();
            tracing::info!(otel.status_code = "ERROR", key = "k", "handled");
        });
        let out = String::from_utf8(buffer.lock().expect("lock").clone()).expect("utf-8");
        assert!(out.contains("process{offset=7}"), "{out}");
        assert!(out.contains("handled key=\"k\""), "{out}");
        assert!(!out.contains("otel"), "{out}");
    }

    struct Sink(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
