//! `cargo xtask flow`: the design's sequence diagram, drawn from what one
//! payment and one refund actually did.
//!
//! It runs the demo's stack (`cargo xtask up`) with `TRACES_DIR` set, so that
//! each service writes its spans as JSON lines under `target/xtask/traces/`
//! (`service_kit::telemetry`); pays, refunds part of it, waits until ServiceA
//! and ServiceB saw both, and stops the stack (the services export their
//! last spans as they stop). Then it turns each trace into the messages of a
//! sequence diagram, in the order they started, each with when it started
//! (from the request) and how long it took, and prints it as mermaid.
//! `--svg FILE` also draws it, without any tool but this one.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use service_kit::telemetry::{SpanRecord, TRACES_DIR};

/// How long the payment may take to reach ServiceA and ServiceB.
const PATIENCE: Duration = Duration::from_secs(30);

pub async fn run(root: &Path, svg: Option<PathBuf>) -> Result<()> {
    let dir = root.join("target/xtask/traces");
    // This run's spans only.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let env = [(TRACES_DIR, dir.display().to_string())];
    let http = crate::credentials::operator_client(root)?;
    crate::demo::with_stack(root, &env, Some(pay_and_refund(&http))).await?;

    let spans = read_spans(&dir)?;
    let diagram = Diagram::from_spans(&spans)?;
    let mermaid = diagram.mermaid();
    println!("{mermaid}");
    std::fs::write(dir.join("flow.mmd"), &mermaid)?;
    eprintln!(
        "xtask: {} spans from {}; diagram also in flow.mmd there",
        spans.len(),
        dir.display()
    );
    if let Some(path) = svg {
        std::fs::write(&path, diagram.svg()).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("xtask: drawn to {}", path.display());
    }
    Ok(())
}

/// One payment and a partial refund, through the running demo, waiting until
/// ServiceA's copy and ServiceB's record show the refund.
/// `http` reads and refunds as the operator.
async fn pay_and_refund(http: &reqwest::Client) -> Result<()> {
    let [payments, service_a, service_b] = crate::demo::PORTS.map(|port| format!("http://127.0.0.1:{port}"));
    let created = http
        .post(format!("{payments}/payments"))
        .json(&json!({"customer_id": "c-flow", "order_id": "o-flow", "amount": 1999, "currency": "EUR"}))
        .send()
        .await?;
    if created.status() != reqwest::StatusCode::CREATED {
        bail!("POST /payments answered {}", created.status());
    }
    let payment: Value = created.json().await?;
    let id = payment["payment_id"]
        .as_str()
        .context("no payment_id")?
        .to_owned();
    eprintln!("xtask: paid: {id}");
    // The refund after both saw the payment, so the two traces do not overlap.
    wait_for_version(http, &format!("{service_a}/payments/{id}"), "/version", 1).await?;
    wait_for_version(http, &format!("{service_b}/payments/{id}"), "/payment/version", 1).await?;
    let refunded = http
        .post(format!("{payments}/payments/{id}/refunds"))
        .header("if-match", "\"1\"")
        .json(&json!({"amount": 500, "reason": "damaged"}))
        .send()
        .await?;
    if refunded.status() != reqwest::StatusCode::CREATED {
        bail!("POST /payments/{id}/refunds answered {}", refunded.status());
    }
    eprintln!("xtask: refunded 500 of it");
    wait_for_version(http, &format!("{service_a}/payments/{id}"), "/version", 2).await?;
    wait_for_version(http, &format!("{service_b}/payments/{id}"), "/payment/version", 2).await
}

/// Waits until `url` answers JSON whose `pointer` is at least `version`.
async fn wait_for_version(http: &reqwest::Client, url: &str, pointer: &str, version: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(response) = http.get(url).send().await
            && let Ok(body) = response.json::<Value>().await
            && body.pointer(pointer).and_then(Value::as_u64) >= Some(version)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{url} did not reach version {version} within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every span the services wrote under `dir`.
fn read_spans(dir: &Path) -> Result<Vec<SpanRecord>> {
    let mut spans = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("no traces in {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            let text = std::fs::read_to_string(&path)?;
            for (n, line) in text.lines().enumerate() {
                spans.push(
                    serde_json::from_str(line)
                        .with_context(|| format!("{}:{}: not a span", path.display(), n + 1))?,
                );
            }
        }
    }
    Ok(spans)
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
    fn from_spans(spans: &[SpanRecord]) -> Result<Self> {
        let by_id: HashMap<&str, &SpanRecord> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
        let mut roots: Vec<&SpanRecord> = spans
            .iter()
            .filter(|s| s.parent_span_id.is_none() && s.kind == "server" && s.name.starts_with("POST "))
            .collect();
        roots.sort_by_key(|s| s.start_unix_nanos);
        if roots.is_empty() {
            bail!("no trace began with a POST: were traces written?");
        }
        let mut diagram = Self {
            participants: vec![CLIENT, PAYMENTS, DATABASE, KAFKA, SERVICE_A, SERVICE_B],
            rows: Vec::new(),
        };
        for root in roots {
            let mut trace: Vec<&SpanRecord> = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
            trace.sort_by_key(|s| s.start_unix_nanos);
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
                    millis(between(root.start_unix_nanos, span.start_unix_nanos)),
                    millis(between(span.start_unix_nanos, span.end_unix_nanos))
                );
                let status = span.attributes.get("http.response.status_code").map(|s| match s {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
                let (from, to, what) = match span.kind.as_str() {
                    "server" => {
                        // Called by another service (its client span is the
                        // parent), or by the client outside.
                        let caller = span
                            .parent_span_id
                            .as_deref()
                            .and_then(|p| by_id.get(p))
                            .and_then(|p| participant(&p.service))
                            .unwrap_or(CLIENT);
                        (caller, service, span.name.clone())
                    }
                    "client" if span.attributes.contains_key("db.system.name") => {
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

    /// The same diagram as a standalone SVG: a lifeline per participant, an
    /// arrow per message, top to bottom.
    fn svg(&self) -> String {
        const COLUMN: usize = 190;
        const ROW: usize = 34;
        const TOP: usize = 50;
        let width = COLUMN * self.participants.len();
        let height = TOP + ROW * (self.rows.len() + 1);
        let x = |p: &str| {
            let i = self.participants.iter().position(|q| *q == p).unwrap_or(0);
            COLUMN / 2 + i * COLUMN
        };
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"11\">\n\
             <defs><marker id=\"head\" markerWidth=\"8\" markerHeight=\"8\" refX=\"8\" refY=\"4\" orient=\"auto\">\
             <path d=\"M0,0 L8,4 L0,8 z\"/></marker></defs>\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        for p in &self.participants {
            let cx = x(p);
            let _ = writeln!(
                out,
                "<rect x=\"{}\" y=\"8\" width=\"120\" height=\"26\" rx=\"4\" fill=\"#eef\" stroke=\"#446\"/>\
                 <text x=\"{cx}\" y=\"25\" text-anchor=\"middle\" font-weight=\"bold\">{p}</text>\
                 <line x1=\"{cx}\" y1=\"34\" x2=\"{cx}\" y2=\"{height}\" stroke=\"#aaa\" stroke-dasharray=\"4 3\"/>",
                cx - 60
            );
        }
        for (i, row) in self.rows.iter().enumerate() {
            let y = TOP + ROW * (i + 1);
            let _ = match row {
                Row::Note(text) => writeln!(
                    out,
                    "<rect x=\"10\" y=\"{}\" width=\"{}\" height=\"20\" fill=\"#ffd\" stroke=\"#cc8\"/>\
                     <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    y - 14,
                    width - 20,
                    width / 2,
                    y,
                    xml_text(text)
                ),
                Row::Message {
                    from,
                    to,
                    text,
                    reply,
                } => {
                    let (x1, x2) = (x(from), x(to));
                    let dash = if *reply { " stroke-dasharray=\"5 3\"" } else { "" };
                    writeln!(
                        out,
                        "<line x1=\"{x1}\" y1=\"{y}\" x2=\"{x2}\" y2=\"{y}\" stroke=\"black\"{dash} marker-end=\"url(#head)\"/>\
                         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                        x1.min(x2) + x1.abs_diff(x2) / 2,
                        y - 4,
                        xml_text(text)
                    )
                }
            };
        }
        out.push_str("</svg>\n");
        out
    }
}

/// The time from `start` to `end`, both in nanoseconds since the epoch.
fn between(start: u128, end: u128) -> Duration {
    Duration::from_nanos(u64::try_from(end.saturating_sub(start)).unwrap_or(u64::MAX))
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

fn xml_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(
        service: &str,
        id: &str,
        parent: Option<&str>,
        name: &str,
        kind: &str,
        start_ms: u128,
    ) -> SpanRecord {
        SpanRecord {
            service: service.to_owned(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
            span_id: id.to_owned(),
            parent_span_id: parent.map(str::to_owned),
            name: name.to_owned(),
            kind: kind.to_owned(),
            start_unix_nanos: start_ms * 1_000_000,
            end_unix_nanos: (start_ms + 2) * 1_000_000,
            status: "unset".to_owned(),
            attributes: HashMap::new(),
        }
    }

    #[test]
    fn a_trace_becomes_the_designs_sequence_in_the_order_it_happened() {
        let mut post = span("payments-service", "a", None, "POST /payments", "server", 0);
        post.attributes
            .insert("http.response.status_code".to_owned(), json!(201));
        let mut insert = span("payments-service", "b", Some("a"), "INSERT events", "client", 1);
        insert
            .attributes
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
            .attributes
            .insert("http.response.status_code".to_owned(), json!(200));
        // Out of order on purpose: files are read service by service.
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
        let svg = diagram.svg();
        assert_eq!(
            svg.matches("<line").count(),
            6 + 9,
            "a lifeline per participant, an arrow per message"
        );
        assert!(svg.contains("GET /payments/{id} (+9.0 ms · 2.0 ms)"));
    }

    #[test]
    fn no_request_no_diagram() {
        let orphan = span("service-a", "e", Some("d"), "process state", "consumer", 6);
        assert!(Diagram::from_spans(&[orphan]).is_err());
    }
}
