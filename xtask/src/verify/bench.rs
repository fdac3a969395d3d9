//! `cargo xtask bench`: the pipeline benchmark (`tests/src/bin/bench/`), in
//! release builds on the local broker and PostgreSQL, after the raw ceilings
//! measured with each project's own tools in the same run (pgbench, Kafka's
//! `ProducerPerformance` and `EndToEndLatency`, the event store's
//! `append_bench`); see docs/measured.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tokio::process::Command;

use crate::local::broker::{BOOTSTRAP, LocalBroker};
use crate::local::jaeger::{self, LocalJaeger};
use crate::local::postgres::{self, LocalPostgres};
use crate::local::process::output;

/// The concurrency of the load and of pgbench.
const CONNECTIONS: usize = 32;
/// Kafka's tools: record size, and how many records each sends.
const RECORD_SIZE: usize = 200;
const PRODUCER_RECORDS: usize = 500_000;
const E2E_RECORDS: usize = 5_000;
/// How long each of `ProducerPerformance`'s transactions lasts, when it
/// runs in transactions.
const TRANSACTION_MS: u64 = 100;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds each measured load step lasts (the ceilings take about as long).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payments piled up while the consumers are stopped, then drained.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// Where results.md goes.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
}

pub async fn run(root: &Path, options: &Options) -> Result<()> {
    if crate::env_set("KAFKA_BOOTSTRAP_SERVERS").is_some() || crate::env_set("DATABASE_URL").is_some() {
        bail!(
            "the benchmark runs on the local broker and PostgreSQL only (unset KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL)"
        );
    }
    let broker = LocalBroker::new(root);
    let postgres = LocalPostgres::new(root);
    let mut started_broker = false;
    let mut started_postgres = false;
    let result = crate::unless_interrupted(async {
        started_broker = broker.start().await?;
        started_postgres = postgres.start().await?;
        crate::cargo(
            root,
            &[
                "build",
                "--release",
                "--bins",
                "--package",
                "payments-service",
                "--package",
                "service-a",
                "--package",
                "service-b",
                "--package",
                "integration-tests",
                "--package",
                "event-store",
                "--features",
                "event-store/test-util",
            ],
            &[],
        )
        .await?;
        let dir = root.join("target/xtask/bench");
        std::fs::create_dir_all(&dir)?;
        let ceilings = ceilings(root, &broker, options).await?;
        let path = dir.join("ceilings.json");
        std::fs::write(&path, serde_json::to_string_pretty(&ceilings)?)?;
        eprintln!("xtask: ceilings: {ceilings}");

        // Tracing's cost is measured with the spans going to a local Jaeger;
        // without one, the rest of the benchmark still runs.
        let jaeger = match LocalJaeger::start(root).await {
            Ok(jaeger) => Some(jaeger),
            Err(e) => {
                eprintln!("xtask: no local Jaeger, so no run with span export: {e:#}");
                None
            }
        };
        let status = Command::new(root.join("target/release/bench"))
            .args(
                jaeger
                    .as_ref()
                    .map(|_| ["--otlp", jaeger::OTLP])
                    .into_iter()
                    .flatten(),
            )
            .arg("--ceilings")
            .arg(&path)
            .arg("--out")
            .arg(&options.out)
            .args(["--bin-dir", "target/release"])
            .args(["--seconds", &options.seconds.to_string()])
            .args(["--backlog", &options.backlog.to_string()])
            .args(["--connections", &CONNECTIONS.to_string()])
            .current_dir(root)
            .kill_on_drop(true)
            .status()
            .await
            .context("cannot run the pipeline benchmark");
        if let Some(jaeger) = jaeger {
            jaeger.stop().await;
        }
        let status = status?;
        if !status.success() {
            bail!("the pipeline benchmark failed ({status})");
        }
        Ok(())
    })
    .await;
    let stopped_postgres = if started_postgres { postgres.stop() } else { Ok(()) };
    let stopped_broker = if started_broker { broker.stop() } else { Ok(()) };
    result.and(stopped_postgres).and(stopped_broker)
}

async fn ceilings(root: &Path, broker: &LocalBroker, options: &Options) -> Result<serde_json::Value> {
    let classpath = broker.classpath()?;
    let pgbench = pgbench(options.seconds).await?;
    let producer = producer_performance(&classpath, None).await?;
    let transactions = producer_performance(&classpath, Some(TRANSACTION_MS)).await?;
    let e2e = end_to_end_latency(&classpath).await?;
    let append = append_bench(root, options.seconds).await?;
    Ok(serde_json::json!({
        "machine": machine(&classpath).await,
        "pgbench": pgbench,
        "kafka_producer": producer,
        "kafka_transactions": transactions,
        "kafka_e2e": e2e,
        "append": append,
    }))
}

/// The number after `label` in `text` (e.g. `tps = ` → 14762.1).
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    let number: String = rest
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok()
}

/// One-row INSERT+COMMIT transactions, as many as `CONNECTIONS` clients
/// commit in `seconds`, into a table shaped like the raw baseline of
/// `append_bench`.
async fn pgbench(seconds: u64) -> Result<serde_json::Value> {
    const DATABASE: &str = "bench_pgbench";
    eprintln!("xtask: pgbench, {CONNECTIONS} clients, {seconds} s");
    let mut drop = Command::from(postgres::client_program("dropdb")?);
    drop.args(["--if-exists", "--force", DATABASE]);
    output(drop, "dropdb").await?;
    let mut create = Command::from(postgres::client_program("createdb")?);
    create.arg(DATABASE);
    output(create, "createdb").await?;
    let mut table = Command::from(postgres::client_program("psql")?);
    table.args([
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        DATABASE,
        "-c",
        "CREATE TABLE raw_inserts (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind TEXT NOT NULL, \
         ref_id UUID NOT NULL, data JSONB NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    ]);
    output(table, "psql").await?;
    let script = std::env::temp_dir().join(format!("xtask-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "INSERT INTO raw_inserts (kind, ref_id, data) VALUES ('bench.payment-received', gen_random_uuid(), \
         '{\"amount\": 100, \"currency\": \"EUR\", \"customer_id\": \"bench\"}');\n",
    )?;
    let mut bench = Command::from(postgres::client_program("pgbench")?);
    bench
        .args([
            "-n",
            "-c",
            &CONNECTIONS.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            "-f",
        ])
        .arg(&script)
        .arg(DATABASE);
    let report = output(bench, "pgbench").await;
    let _ = std::fs::remove_file(&script);
    let mut drop = Command::from(postgres::client_program("dropdb")?);
    drop.args(["--if-exists", "--force", DATABASE]);
    output(drop, "dropdb").await?;
    let report = report?;
    Ok(serde_json::json!({
        "clients": CONNECTIONS,
        "tps": number_after(&report, "tps = ").context("no tps in pgbench's report")?,
        "latency_ms": number_after(&report, "latency average = ").context("no latency in pgbench's report")?,
    }))
}

/// Kafka's tool `class`, on the broker's classpath.
fn kafka_tool(classpath: &str, class: &str) -> Command {
    let mut command = Command::new("java");
    command.args(["-Xmx512m", "-cp", classpath, class]);
    command
}

/// An admin client of the local broker, for the tools' topics.
fn admin() -> Result<AdminClient<DefaultClientContext>> {
    Ok(rdkafka::ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        .create()?)
}

/// Kafka's `ProducerPerformance`: as many records as one idempotent
/// producer with acks=all gets acknowledged, on a topic of 3 partitions;
/// with `transaction_ms`, in transactions committed that often.
async fn producer_performance(classpath: &str, transaction_ms: Option<u64>) -> Result<serde_json::Value> {
    let topic = format!("bench.perf.{}", std::process::id());
    eprintln!(
        "xtask: Kafka ProducerPerformance, {PRODUCER_RECORDS} records of {RECORD_SIZE} B, transactions: {transaction_ms:?} ms"
    );
    let admin = admin()?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin
        .create_topics(&[NewTopic::new(&topic, 3, TopicReplication::Fixed(1))], &options)
        .await?;
    let mut perf = kafka_tool(classpath, "org.apache.kafka.tools.ProducerPerformance");
    perf.args([
        "--topic",
        &topic,
        "--num-records",
        &PRODUCER_RECORDS.to_string(),
        "--record-size",
        &RECORD_SIZE.to_string(),
        "--throughput",
        "-1",
    ]);
    if let Some(ms) = transaction_ms {
        perf.args(["--transaction-duration-ms", &ms.to_string()]);
    }
    perf.args([
        "--command-property",
        &format!("bootstrap.servers={BOOTSTRAP}"),
        "acks=all",
        "enable.idempotence=true",
    ]);
    let report = output(perf, "ProducerPerformance").await;
    admin.delete_topics(&[&topic], &options).await?;
    let report = report?;
    // The last line sums up: "500000 records sent, 106000.1 records/sec (...)".
    let summary = report
        .lines()
        .rev()
        .find(|line| line.contains("records sent"))
        .context("no summary in ProducerPerformance's report")?;
    let rate: f64 = summary
        .split(", ")
        .nth(1)
        .and_then(|part| part.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no rate in ProducerPerformance's summary")?;
    Ok(
        serde_json::json!({ "record_size": RECORD_SIZE, "transaction_ms": transaction_ms, "records_per_sec": rate }),
    )
}

/// Kafka's `EndToEndLatency`: one record at a time, produced with
/// acks=all and consumed, timed from send to receipt.
async fn end_to_end_latency(classpath: &str) -> Result<serde_json::Value> {
    let topic = format!("bench.e2e.{}", std::process::id());
    eprintln!("xtask: Kafka EndToEndLatency, {E2E_RECORDS} records of {RECORD_SIZE} B");
    let mut e2e = kafka_tool(classpath, "org.apache.kafka.tools.EndToEndLatency");
    e2e.args([
        "--bootstrap-server",
        BOOTSTRAP,
        "--topic",
        &topic,
        "--num-records",
        &E2E_RECORDS.to_string(),
        "--producer-acks",
        "all",
        "--record-size",
        &RECORD_SIZE.to_string(),
    ]);
    let report = output(e2e, "EndToEndLatency").await?;
    admin()?.delete_topics(&[&topic], &AdminOptions::new()).await?;
    // "Avg latency: 2.4503 ms" and "Percentiles: 50th = 1, 99th = 13, 99.9th = 22".
    let field = |label: &str| {
        number_after(&report, label).with_context(|| format!("no `{label}` in EndToEndLatency's report"))
    };
    Ok(serde_json::json!({
        "record_size": RECORD_SIZE,
        "avg_ms": field("Avg latency: ")?,
        "p50_ms": field("50th = ")?,
        "p99_ms": field(" 99th = ")?,
        "p999_ms": field("99.9th = ")?,
    }))
}

/// The event store's `append_bench` (release build), at `CONNECTIONS`
/// writers: its appends per second, and the raw INSERT rate the same client
/// gets.
async fn append_bench(root: &Path, seconds: u64) -> Result<serde_json::Value> {
    eprintln!("xtask: event store append_bench, {CONNECTIONS} writers");
    let mut bench = Command::new(root.join("target/release/append_bench"));
    bench.args([
        "--seconds",
        &seconds.min(5).to_string(),
        "--rounds",
        "1",
        "--writers",
        &CONNECTIONS.to_string(),
    ]);
    let report = output(bench, "append_bench").await?;
    // "| 32 | 14000 | 11000 | 79% |"
    let row = format!("| {CONNECTIONS} | ");
    let line = report
        .lines()
        .find(|line| line.starts_with(&row))
        .context("no row in append_bench's table")?;
    let cells: Vec<f64> = line
        .split('|')
        .filter_map(|cell| cell.trim().parse().ok())
        .collect();
    let [_, raw, store, ..] = cells[..] else {
        bail!("unexpected row in append_bench's table: {line}");
    };
    Ok(serde_json::json!({ "writers": CONNECTIONS, "raw_per_sec": raw, "store_per_sec": store }))
}

/// The version of the Kafka jars on `classpath` (`kafka-clients-<version>.jar`).
fn kafka_version(classpath: &str) -> Option<&str> {
    classpath.split(':').find_map(|jar| {
        jar.rsplit('/')
            .next()?
            .strip_prefix("kafka-clients-")?
            .strip_suffix(".jar")
    })
}

/// Cores, CPU model and memory of this machine, and the servers' versions.
async fn machine(classpath: &str) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_default();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| number_after(&m, "MemTotal:"))
        .map_or(0.0, |kib| kib / 1_048_576.0);
    let mut version = match postgres::client_program("psql") {
        Ok(command) => Command::from(command),
        Err(_) => return format!("{cores} cores ({model}), {memory_gib:.0} GiB"),
    };
    version.args(["-At", "-d", "postgres", "-c", "SHOW server_version"]);
    let pg = output(version, "psql").await.unwrap_or_default();
    format!(
        "{cores} cores ({model}), {memory_gib:.0} GiB; Apache Kafka {}, PostgreSQL {}",
        kafka_version(classpath).unwrap_or("?"),
        pg.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_the_tools_reports() {
        let pgbench = "number of failed transactions: 0 (0.000%)\nlatency average = 2.168 ms\ntps = 14762.123456 (without initial connection time)\n";
        assert_eq!(number_after(pgbench, "tps = "), Some(14762.123456));
        assert_eq!(number_after(pgbench, "latency average = "), Some(2.168));
        let e2e = "Avg latency: 2.4503 ms\nPercentiles: 50th = 1, 99th = 13, 99.9th = 22\n";
        assert_eq!(number_after(e2e, "50th = "), Some(1.0));
        assert_eq!(number_after(e2e, " 99th = "), Some(13.0));
        assert_eq!(number_after(e2e, "99.9th = "), Some(22.0));
        assert_eq!(number_after(e2e, "nowhere"), None);
    }
}
