//! `cargo xtask flow`: the sequence diagram of what one payment and one
//! refund actually did: the demo's stack exports its spans over OTLP to a
//! local Jaeger, and the traces read back through Jaeger's query API become
//! mermaid (also `target/xtask/flow.mmd`), each hop with when it started
//! and how long it took.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::local::demo;
use crate::local::jaeger::{self, LocalJaeger, Span};

/// How long the payment may take to reach ServiceA and ServiceB, and its
/// spans to reach Jaeger.
const PATIENCE: Duration = Duration::from_secs(30);

pub async fn run(root: &Path) -> Result<()> {
    let jaeger = LocalJaeger::start(root).await?;
    let result = async {
        let env = [(service_kit::telemetry::OTLP_ENDPOINT, jaeger::OTLP.to_owned())];
        let http = crate::local::credentials::operator_client(root)?;
        crate::local::demo::with_stack(root, &env, Some(pay_and_refund(&http))).await?;
        read_back().await
    }
    .await;
    jaeger.stop().await;
    let (spans, diagram) = result?;
    let mermaid = diagram.mermaid();
    println!("{mermaid}");
    let path = root.join("target/xtask/flow.mmd");
    std::fs::write(&path, &mermaid).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "xtask: {spans} spans read from Jaeger's query API; the diagram also in {}",
        path.display()
    );
    Ok(())
}

/// This run's traces from Jaeger, once the two requests' traces hold spans
/// of all three services: the number of spans, and the diagram.
async fn read_back() -> Result<(usize, Diagram)> {
    let http = reqwest::Client::new();
    crate::eventually(
        PATIENCE,
        "the payment's and the refund's traces in Jaeger",
        || async {
            let traces = jaeger::traces(&http, jaeger::QUERY, "payments-service", 1000)
                .await
                .ok()?;
            let spans: Vec<Span> = traces.into_iter().flatten().collect();
            let diagram = Diagram::from_spans(&spans).ok()?;
            let notes = diagram.rows.iter().filter(|r| matches!(r, Row::Note(_))).count();
            let services = [PAYMENTS, SERVICE_A, SERVICE_B];
            let all_there = services.iter().all(|service| {
                diagram
                    .rows
                    .iter()
                    .any(|r| matches!(r, Row::Message { from, to, .. } if from == service || to == service))
            });
            (notes >= 2 && all_there).then_some((spans.len(), diagram))
        },
    )
    .await
}

/// One payment and a partial refund, through the running demo, waiting until
/// ServiceA's copy and ServiceB's record show the refund.
/// `http` reads and refunds as the operator.
async fn pay_and_refund(http: &reqwest::Client) -> Result<()> {
    let order = demo::payment("c-flow", "o-flow", 1999, "EUR");
    let (status, _, payment) = demo::post(http, "/payments", &order, None).await?;
    ensure!(status == 201, "POST /payments answered {status}");
    let id = payment["payment_id"]
        .as_str()
        .context("no payment_id")?
        .to_owned();
    eprintln!("xtask: paid: {id}");
    // The refund after both saw the payment, so the two traces do not overlap.
    wait_for_version(http, &id, 1).await?;
    let refund = json!({"amount": 500, "reason": "damaged"});
    let (status, _, _) = demo::post(http, &format!("/payments/{id}/refunds"), &refund, Some("\"1\"")).await?;
    ensure!(status == 201, "POST /payments/{id}/refunds answered {status}");
    eprintln!("xtask: refunded 500 of it");
    wait_for_version(http, &id, 2).await
}

/// Waits until ServiceA's copy and ServiceB's record of payment `id` are at
/// `version` at least.
async fn wait_for_version(http: &reqwest::Client, id: &str, version: u64) -> Result<()> {
    let copy = (format!("{}/payments/{id}", demo::SERVICE_A), "/version");
    let record = (format!("{}/payments/{id}", demo::SERVICE_B), "/payment/version");
    for (url, pointer) in [copy, record] {
        crate::eventually(PATIENCE, &format!("{url} at version {version}"), || async {
            let body: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            (body.pointer(pointer).and_then(Value::as_u64) >= Some(version)).then_some(())
        })
        .await?;
    }
    Ok(())
}

/// A sequence diagram: who talks, and the messages in order.
#[derive(Debug, Default, PartialEq)]
struct Diagram {
    participants: Vec<&'static str>,
    rows: Vec<Row>,
}

#[derive(Debug, PartialEq)]
enum Row {
    /// A heading over the whole width: which request this trace began with.
    Note(String),
    Message {
        from: &'static str,
        to: &'static str,
        text: String,
        /// A reply (drawn dashed).
        reply: bool,
    },
}

/// The participants, as the design names them, in the order they appear.
const CLIENT: &str = "Client";
const PAYMENTS: &str = "Payments";
const DATABASE: &str = "PostgreSQL";
const KAFKA: &str = "Kafka";
const SERVICE_A: &str = "ServiceA";
const SERVICE_B: &str = "ServiceB";

fn participant(service: &str) -> Option<&'static str> {
    match service {
        "payments-service" => Some(PAYMENTS),
        "service-a" => Some(SERVICE_A),
        "service-b" => Some(SERVICE_B),
        _ => None,
    }
}

impl Diagram {
    /// One section per trace that began with a request from outside (the
    /// payment, the refund), in the order they began.
    fn from_spans(spans: &[Span]) -> Result<Self> {
        let by_id: HashMap<&str, &Span> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
        let mut roots: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent.is_none() && s.kind == "server" && s.name.starts_with("POST "))
            .collect();
        roots.sort_by_key(|s| s.start_micros);
        if roots.is_empty() {
            bail!("no trace began with a POST: were traces written?");
        }
        let mut diagram = Self {
            participants: vec![CLIENT, PAYMENTS, DATABASE, KAFKA, SERVICE_A, SERVICE_B],
            rows: Vec::new(),
        };
        for root in roots {
            let mut trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
            trace.sort_by_key(|s| s.start_micros);
            diagram.rows.push(Row::Note(format!(
                "{} (trace {}, {} spans)",
                root.name,
                &root.trace_id[..8],
                trace.len()
            )));
            for span in trace {
                let Some(service) = participant(&span.service) else {
                    continue;
                };
                let timing = format!(
                    "+{} · {}",
                    millis(Duration::from_micros(
                        span.start_micros.saturating_sub(root.start_micros)
                    )),
                    millis(Duration::from_micros(span.duration_micros))
                );
                let status = span.tags.get("http.response.status_code").map(|s| match s {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                let (from, to, what) = match span.kind.as_str() {
                    "server" => {
                        // Called by another service (its client span is the
                        // parent), or by the client outside.
                        let caller = span
                            .parent
                            .as_deref()
                            .and_then(|p| by_id.get(p))
                            .and_then(|p| participant(&p.service))
                            .unwrap_or(CLIENT);
                        (caller, service, span.name.clone())
                    }
                    "client" if span.tags.contains_key("db.system.name") => {
                        (service, DATABASE, span.name.clone())
                    }
                    "producer" => (service, KAFKA, span.name.clone()),
                    "consumer" => (KAFKA, service, span.name.clone()),
                    // The HTTP client's span is drawn as the server's; the
                    // rest is inside a service.
                    _ => continue,
                };
                diagram.rows.push(Row::Message {
                    from,
                    to,
                    text: format!("{what} ({timing})"),
                    reply: false,
                });
                if let Some(status) = status.filter(|_| span.kind == "server") {
                    diagram.rows.push(Row::Message {
                        from: to,
                        to: from,
                        text: status,
                        reply: true,
                    });
                }
            }
        }
        Ok(diagram)
    }

    /// Mermaid's `sequenceDiagram`.
    fn mermaid(&self) -> String {
        let mut out = String::from("sequenceDiagram\n");
        for p in &self.participants {
            let _ = writeln!(out, "    participant {p}");
        }
        for row in &self.rows {
            let _ = match row {
                Row::Note(text) => writeln!(
                    out,
                    "    Note over {},{}: {}",
                    self.participants[0],
                    self.participants[self.participants.len() - 1],
                    mermaid_text(text)
                ),
                Row::Message {
                    from,
                    to,
                    text,
                    reply,
                } => {
                    let arrow = if *reply { "-->>" } else { "->>" };
                    writeln!(out, "    {from}{arrow}{to}: {}", mermaid_text(text))
                }
            };
        }
        out
    }
}

/// `12.3 ms`, or `1.2 s`.
fn millis(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    }
}

/// Mermaid ends a message at `;` and reads `#` as an entity.
fn mermaid_text(text: &str) -> String {
    text.replace(';', ",").replace('#', "no. ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(service: &str, id: &str, parent: Option<&str>, name: &str, kind: &str, start_ms: u64) -> Span {
        Span {
            service: service.to_owned(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            span_id: id.to_owned(),
            parent: parent.map(str::to_owned),
            name: name.to_owned(),
            kind: kind.to_owned(),
            start_micros: start_ms * 1_000,
            duration_micros: 2_000,
            tags: HashMap::new(),
        }
    }

    #[test]
    fn a_trace_becomes_the_designs_sequence_in_the_order_it_happened() {
        let mut post = span("payments-service", "a", None, "POST /payments", "server", 0);
        post.tags
            .insert("http.response.status_code".to_owned(), json!(201));
        let mut insert = span("payments-service", "b", Some("a"), "INSERT events", "client", 1);
        insert
            .tags
            .insert("db.system.name".to_owned(), json!("postgresql"));
        let mut answer = span(
            "payments-service",
            "h",
            Some("g"),
            "GET /payments/{id}",
            "server",
            9,
        );
        answer
            .tags
            .insert("http.response.status_code".to_owned(), json!(200));
        // Out of order on purpose: Jaeger does not answer them in order.
        let spans = vec![
            answer,
            span("service-b", "g", Some("f"), "GET", "client", 8),
            span(
                "service-b",
                "f",
                Some("c"),
                "process notifications",
                "consumer",
                7,
            ),
            span("service-a", "e", Some("d"), "process state", "consumer", 6),
            span("payments-service", "d", Some("a"), "send state", "producer", 5),
            span(
                "payments-service",
                "c",
                Some("a"),
                "send notifications",
                "producer",
                4,
            ),
            insert,
            post,
            span(
                "payments-service",
                "x",
                Some("a"),
                "create_payment",
                "internal",
                0,
            ),
        ];
        let diagram = Diagram::from_spans(&spans).expect("a diagram");
        let mermaid = diagram.mermaid();
        let messages: Vec<&str> = mermaid
            .lines()
            .filter(|l| l.contains(">>"))
            .map(|l| l.trim().split(" (").next().unwrap_or_default())
            .collect();
        assert_eq!(
            messages,
            [
                "Client->>Payments: POST /payments",
                "Payments-->>Client: 201",
                "Payments->>PostgreSQL: INSERT events",
                "Payments->>Kafka: send notifications",
                "Payments->>Kafka: send state",
                "Kafka->>ServiceA: process state",
                "Kafka->>ServiceB: process notifications",
                "ServiceB->>Payments: GET /payments/{id}",
                "Payments-->>ServiceB: 200",
            ]
        );
        assert!(
            mermaid.contains("Kafka->>ServiceB: process notifications (+7.0 ms · 2.0 ms)"),
            "{mermaid}"
        );
        assert!(mermaid.contains("Note over Client,ServiceB: POST /payments (trace 4bf92f35, 9 spans)"));
        assert!(mermaid.contains("GET /payments/{id} (+9.0 ms · 2.0 ms)"));
    }

    #[test]
    fn no_request_no_diagram() {
        let orphan = span("service-a", "e", Some("d"), "process state", "consumer", 6);
        assert!(Diagram::from_spans(&[orphan]).is_err());
    }
}
