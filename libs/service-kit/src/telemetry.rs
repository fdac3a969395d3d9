//! Logs and traces.
//!
//! **Logs** go to stdout; levels come from `RUST_LOG` (default: `info`, with
//! librdkafka's own chatter at `warn`).
//!
//! **Traces** are off by default (no layer, no cost). When
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (e.g. `http://127.0.0.1:4318`, a
//! Jaeger's OTLP/HTTP port), every `tracing` span at `info` or above becomes
//! an OpenTelemetry span, exported over OTLP/HTTP; the exporter reads the
//! other standard `OTEL_EXPORTER_OTLP_*` variables itself.
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
use std::io::IsTerminal;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use rdkafka::message::{Header, Headers, OwnedHeaders};
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

/// The variable naming the OTLP collector; the exporter reads it itself.
pub const OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

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
/// `OTEL_EXPORTER_OTLP_ENDPOINT` asks for them. Call once, from `main`,
/// outside the async runtime (the exporter's HTTP client runs threads of its
/// own).
pub fn init(service: &'static str) -> Result<Telemetry> {
    let provider = if std::env::var_os(OTLP_ENDPOINT).is_some_and(|v| !v.is_empty()) {
        let otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::Telemetry(format!("OTLP exporter ({OTLP_ENDPOINT}): {e}")))?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(otlp)
                .with_resource(resource(service))
                .build(),
        )
    } else {
        None
    };
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

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
