//! Jaeger, the trace viewer, run locally for `cargo xtask flow`: `cmd/jaeger`
//! of `github.com/jaegertracing/jaeger` v1.75.0 (the v1 tag of release
//! 2.12.0, which the Go module proxy serves), built once by `go build` into
//! `target/xtask/jaeger/`. The module carries no UI assets: the page at
//! :16686 is a placeholder; the query API under `/api/` is the real one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::process::{Child, Command};

/// The Go module and the version `go build` builds.
const MODULE: &str = "github.com/jaegertracing/jaeger";
pub const MODULE_VERSION: &str = "v1.75.0";
/// The Jaeger v2 release that module version is; the binary reports it.
const RELEASE: &str = "v2.12.0";

/// Where the local Jaeger takes spans over OTLP/HTTP, and answers queries.
pub const OTLP: &str = "http://127.0.0.1:4318";
pub const QUERY: &str = "http://127.0.0.1:16686";

/// The local Jaeger's configuration: Jaeger's all-in-one (OTLP in, memory
/// storage, the query API) on the loopback interface only, without the
/// receivers, sampling and telemetry endpoints nothing here uses, nor
/// tracing of its own. No batch processor: a span is stored before the
/// OTLP request that brought it is answered, so once the services stopped
/// (flushing), Jaeger has every span they exported.
const LOCAL_CONFIG: &str = r#"yaml:
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines: {traces: {receivers: [otlp], exporters: [jaeger_storage_exporter]}}
  telemetry: {metrics: {level: none}}
extensions:
  jaeger_storage: {backends: {memory: {memory: {max_traces: 10000}}}}
  jaeger_query:
    storage: {traces: memory}
    enable_tracing: false
    http: {endpoint: "127.0.0.1:16686"}
    grpc: {endpoint: "127.0.0.1:16685"}
receivers: {otlp: {protocols: {http: {endpoint: "127.0.0.1:4318"}}}}
exporters: {jaeger_storage_exporter: {trace_storage: memory}}
"#;

/// The Jaeger binary, built unless `target/xtask/jaeger/` has it already.
pub fn binary(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target/xtask/jaeger");
    let binary = dir.join(format!("jaeger-{MODULE_VERSION}"));
    if binary.exists() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The module's own directory, with its go.mod and go.sum: built there,
    // with the dependency versions Jaeger's release was built with.
    let download = crate::local::images::run_output(
        std::process::Command::new("go")
            .args(["mod", "download", "-json"])
            .arg(format!("{MODULE}@{MODULE_VERSION}")),
    )
    .context("Jaeger is built from its Go module: Go 1.24 or newer is needed")?;
    let module: Value = serde_json::from_str(&download).context("go mod download -json")?;
    let source = module["Dir"]
        .as_str()
        .context("go mod download named no directory")?;
    eprintln!(
        "xtask: building Jaeger {RELEASE} ({MODULE}@{MODULE_VERSION}, cmd/jaeger): a few minutes, once"
    );
    let partial = dir.join("jaeger.partial");
    let status = std::process::Command::new("go")
        .args(["build", "-trimpath", "-ldflags"])
        .arg(format!(
            "-s -w -X {MODULE}/internal/version.latestVersion={RELEASE}"
        ))
        .arg("-o")
        .arg(&partial)
        .arg("./cmd/jaeger")
        .current_dir(source)
        // As Jaeger's release builds it: static, the versions of its go.sum.
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-mod=readonly")
        .stdin(Stdio::null())
        .status()
        .context("cannot run go build")?;
    if !status.success() {
        bail!("go build of {MODULE}/cmd/jaeger failed ({status})");
    }
    std::fs::rename(&partial, &binary)?;
    Ok(binary)
}

/// A Jaeger all-in-one on this machine, in memory, on 127.0.0.1 only; it
/// ends with this value.
#[derive(Debug)]
pub struct LocalJaeger {
    child: Child,
}

impl LocalJaeger {
    /// Starts it, and waits until its query API answers.
    pub async fn start(root: &Path) -> Result<Self> {
        let binary = binary(root)?;
        let log = root.join("target/xtask/jaeger/jaeger.log");
        let out = std::fs::File::create(&log).with_context(|| format!("cannot write {}", log.display()))?;
        let child = Command::new(&binary)
            .arg("--config")
            .arg(LOCAL_CONFIG)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let mut jaeger = Self { child };
        let http = reqwest::Client::new();
        let ready = crate::eventually(Duration::from_secs(30), "Jaeger's query API", || async {
            let answer = http.get(format!("{QUERY}/api/services")).send().await.ok()?;
            answer.status().is_success().then_some(())
        })
        .await;
        if let Err(e) = ready {
            let _ = jaeger.child.kill().await;
            bail!("{e}; its log: {}", log.display());
        }
        eprintln!("xtask: Jaeger: OTLP in at {OTLP}, queries at {QUERY}");
        Ok(jaeger)
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One span, as Jaeger's query API (`GET /api/traces`) answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    /// The span it is a child of; `None` for the first of a trace.
    pub parent: Option<String>,
    /// The service that exported it.
    pub service: String,
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: String,
    pub start_micros: u64,
    pub duration_micros: u64,
    /// The span's attributes.
    pub tags: HashMap<String, Value>,
}

/// The traces of `service` Jaeger at `query` holds (up to `limit`), each
/// with every span of every service in it.
pub async fn traces(
    http: &reqwest::Client,
    query: &str,
    service: &str,
    limit: u32,
) -> Result<Vec<Vec<Span>>> {
    let answer: Value = http
        // Service names need no escaping.
        .get(format!("{query}/api/traces?service={service}&limit={limit}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let traces = answer["data"].as_array().context("no data in Jaeger's answer")?;
    Ok(traces.iter().map(spans).collect())
}

/// The spans of one trace in Jaeger's JSON.
fn spans(trace: &Value) -> Vec<Span> {
    let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
    let empty = Vec::new();
    trace["spans"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|span| {
            let tags: HashMap<String, Value> = span["tags"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|tag| (text(&tag["key"]), tag["value"].clone()))
                .collect();
            let process = text(&span["processID"]);
            Span {
                trace_id: text(&span["traceID"]),
                span_id: text(&span["spanID"]),
                parent: span["references"]
                    .as_array()
                    .unwrap_or(&empty)
                    .iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .map(|r| text(&r["spanID"])),
                service: text(&trace["processes"][&process]["serviceName"]),
                name: text(&span["operationName"]),
                kind: tags
                    .get("span.kind")
                    .and_then(Value::as_str)
                    .unwrap_or("internal")
                    .to_owned(),
                start_micros: span["startTime"].as_u64().unwrap_or_default(),
                duration_micros: span["duration"].as_u64().unwrap_or_default(),
                tags,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_trace_in_jaegers_json_gives_its_spans_services_and_parents() {
        let trace = json!({
            "traceID": "4bf92f3577b34da6a3ce929d0e0e4736",
            "spans": [
                {
                    "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "a",
                    "operationName": "POST /payments", "references": [],
                    "startTime": 1_700_000_000_000_000_u64, "duration": 2_000, "processID": "p1",
                    "tags": [
                        {"key": "span.kind", "type": "string", "value": "server"},
                        {"key": "http.response.status_code", "type": "int64", "value": 201}
                    ]
                },
                {
                    "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "b",
                    "operationName": "process notifications",
                    "references": [{"refType": "CHILD_OF", "traceID": "4bf92f3577b34da6a3ce929d0e0e4736", "spanID": "a"}],
                    "startTime": 1_700_000_000_004_000_u64, "duration": 1_000, "processID": "p2",
                    "tags": [{"key": "span.kind", "type": "string", "value": "consumer"}]
                }
            ],
            "processes": {
                "p1": {"serviceName": "payments-service", "tags": []},
                "p2": {"serviceName": "service-b", "tags": []}
            }
        });
        let spans = spans(&trace);
        assert_eq!(spans.len(), 2);
        assert_eq!(
            (
                spans[0].service.as_str(),
                spans[0].kind.as_str(),
                spans[0].parent.as_deref()
            ),
            ("payments-service", "server", None)
        );
        assert_eq!(spans[0].tags["http.response.status_code"], 201);
        assert_eq!(
            (
                spans[1].service.as_str(),
                spans[1].kind.as_str(),
                spans[1].parent.as_deref()
            ),
            ("service-b", "consumer", Some("a"))
        );
        assert_eq!(spans[1].start_micros - spans[0].start_micros, 4_000);
    }
}
