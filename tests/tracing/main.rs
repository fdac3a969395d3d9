//! One payment is one trace, across the three services, the broker and the
//! callback: the spans every service exports (here to the SDK's in-memory
//! exporter, through the subscriber `service_kit::telemetry` installs) share
//! one trace id and link up as the payment travelled.
//!
//! ```text
//! POST /payments                          Payments, server
//! └── create_payment                      Payments' handler
//!     ├── INSERT events                   Payments, client (the append)
//!     ├── send <notifications>            Payments' relay, producer
//!     │   ├── process <notifications>     ServiceA's group, consumer
//!     │   └── process <notifications>     ServiceB's group, consumer
//!     │       └── GET                     ServiceB, client (GetPaymentInfo)
//!     │           └── GET /payments/{id}  Payments, server
//!     └── send <state>                    Payments' relay, producer
//!         └── process <state>             ServiceA's copy, consumer
//! ```

use integration_tests::*;
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use reqwest::StatusCode;

#[tokio::test]
async fn one_payment_is_one_trace_across_the_three_services() {
    let exporter = InMemorySpanExporter::default();
    let _provider =
        service_kit::telemetry::init_for_tests_with_exporter("integration-tests", exporter.clone());
    let broker = Broker::get().await;
    let http = integration_tests::http_client();
    let system = System::start(&broker).await;
    let topics = system.kafka.topics.clone();

    let response = http
        .post(system.payments.url("/payments"))
        .json(&payment_request("c-trace", 4200))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), StatusCode::CREATED);
    let payment: serde_json::Value = response.json().await.expect("json");
    let id = payment["payment_id"].as_str().expect("payment_id").to_owned();

    // Every hop has ended (a span is exported when it ends): the last one is
    // Payments answering ServiceB's callback, and ServiceA's two consumers.
    let spans = eventually("every hop of the payment is exported", || async {
        let spans = exporter.get_finished_spans().expect("spans");
        let hops = spans.iter().filter(|s| is_about(s, &id)).count();
        let answered = spans.iter().any(|s| s.name == "GET /payments/{id}");
        // Three consumers handled it, and the relay sent it twice.
        (answered && hops >= 5).then_some(spans)
    })
    .await;

    let find = |what: &str, matches: &dyn Fn(&SpanData) -> bool| -> SpanData {
        let found: Vec<_> = spans.iter().filter(|s| matches(s)).collect();
        assert_eq!(found.len(), 1, "exactly one span for {what}: {found:#?}");
        found[0].clone()
    };
    let request = find("the request", &|s| s.name == "POST /payments");
    let append = find("the append", &|s| s.name == "INSERT events");
    let send_notification = find("the notification's send", &|s| {
        s.name == format!("send {}", topics.notifications) && is_about(s, &id)
    });
    let send_state = find("the state's send", &|s| {
        s.name == format!("send {}", topics.state) && is_about(s, &id)
    });
    let process = |topic: &str, group: &'static str| {
        let name = format!("process {topic}");
        find(&format!("{name} by {group}"), &|s: &SpanData| {
            s.name == name
                && is_about(s, &id)
                && attribute(s, "messaging.consumer.group.name").is_some_and(|g| g.starts_with(group))
        })
    };
    let audit = process(&topics.notifications, "service-a-");
    let copy = process(&topics.state, "service-a.");
    let notified = process(&topics.notifications, "service-b-");
    let callback = find("the callback", &|s| {
        s.name == "GET" && s.span_kind == SpanKind::Client
    });
    let answer = find("the callback's answer", &|s| s.name == "GET /payments/{id}");

    // One trace...
    let trace = request.span_context.trace_id();
    for span in [
        &append,
        &send_notification,
        &send_state,
        &audit,
        &copy,
        &notified,
        &callback,
        &answer,
    ] {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{} is in the payment's trace",
            span.name
        );
    }
    // ...started by the request, whose handling (its handler's span, within
    // it) stored the event with its context...
    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "the request starts the trace"
    );
    for span in [&append, &send_notification, &send_state] {
        assert!(
            descends(span, &request, &spans),
            "{} is within the request's handling",
            span.name
        );
    }
    // ...and across each process boundary, a child of the hop before.
    for (child, parent) in [
        (&audit, &send_notification),
        (&notified, &send_notification),
        (&copy, &send_state),
        (&callback, &notified),
        (&answer, &callback),
    ] {
        assert_eq!(
            child.parent_span_id,
            parent.span_context.span_id(),
            "{} is a child of {}",
            child.name,
            parent.name
        );
    }

    // Kinds and attributes after OpenTelemetry's conventions.
    for (span, kind) in [
        (&request, SpanKind::Server),
        (&append, SpanKind::Client),
        (&send_notification, SpanKind::Producer),
        (&send_state, SpanKind::Producer),
        (&audit, SpanKind::Consumer),
        (&copy, SpanKind::Consumer),
        (&notified, SpanKind::Consumer),
        (&callback, SpanKind::Client),
        (&answer, SpanKind::Server),
    ] {
        assert_eq!(span.span_kind, kind, "{}", span.name);
    }
    assert_eq!(attribute(&request, "http.route").as_deref(), Some("/payments"));
    assert_eq!(
        attribute(&request, "http.response.status_code").as_deref(),
        Some("201")
    );
    assert_eq!(
        attribute(&answer, "http.route").as_deref(),
        Some("/payments/{id}")
    );
    assert_eq!(
        attribute(&answer, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&callback, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&append, "db.system.name").as_deref(),
        Some("postgresql")
    );
    for span in [&send_notification, &send_state, &audit, &copy, &notified] {
        assert_eq!(
            attribute(span, "messaging.system").as_deref(),
            Some("kafka"),
            "{}",
            span.name
        );
    }
    assert_eq!(
        attribute(&send_notification, "messaging.message.id"),
        attribute(&notified, "messaging.message.id"),
        "the record sent is the record processed"
    );

    system.stop().await;
}

/// Whether `ancestor` is `span`'s parent, or its parent's, and so on.
fn descends(span: &SpanData, ancestor: &SpanData, spans: &[SpanData]) -> bool {
    let mut parent = span.parent_span_id;
    while parent != SpanId::INVALID {
        if parent == ancestor.span_context.span_id() {
            return true;
        }
        let Some(next) = spans.iter().find(|s| s.span_context.span_id() == parent) else {
            return false;
        };
        parent = next.parent_span_id;
    }
    false
}

/// Whether `span` is about payment `id` (its record's key).
fn is_about(span: &SpanData, id: &str) -> bool {
    attribute(span, "messaging.kafka.message.key").as_deref() == Some(id)
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}
