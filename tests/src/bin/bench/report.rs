//! What the benchmark found, as Markdown: every figure beside its raw
//! ceiling.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

/// The raw ceilings, measured by Kafka's and PostgreSQL's own tools in the
/// same run (`cargo xtask bench` writes them).
#[derive(Debug, Deserialize)]
pub struct Ceilings {
    pub machine: String,
    pub pgbench: Pgbench,
    pub kafka_producer: KafkaProducer,
    /// The same with transactions, committed every `transaction_ms`.
    pub kafka_transactions: KafkaTransactions,
    pub kafka_e2e: KafkaEndToEnd,
    pub append: Append,
}

/// `pgbench`: one-row INSERT+COMMIT transactions.
#[derive(Debug, Deserialize)]
pub struct Pgbench {
    pub clients: usize,
    pub tps: f64,
    pub latency_ms: f64,
}

/// Kafka's `ProducerPerformance` (idempotent, acks=all).
#[derive(Debug, Deserialize)]
pub struct KafkaProducer {
    pub record_size: usize,
    pub records_per_sec: f64,
}

/// Kafka's `ProducerPerformance` with transactions.
#[derive(Debug, Deserialize)]
pub struct KafkaTransactions {
    pub transaction_ms: u64,
    pub records_per_sec: f64,
}

/// Kafka's `EndToEndLatency` (acks=all): produce, then consume, one
/// record at a time.
#[derive(Debug, Deserialize)]
pub struct KafkaEndToEnd {
    pub record_size: usize,
    pub avg_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

/// The event store's append benchmark, release build.
#[derive(Debug, Deserialize)]
pub struct Append {
    pub writers: usize,
    pub raw_per_sec: f64,
    pub store_per_sec: f64,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Nearest-rank percentiles of `samples`.
    pub fn of(mut samples: Vec<f64>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_by(f64::total_cmp);
        let at = |p: usize| samples[(p * samples.len()).div_ceil(100).max(1) - 1];
        Self {
            p50: at(50),
            p90: at(90),
            p99: at(99),
            max: samples[samples.len() - 1],
        }
    }
}

/// The name of the [`Usage`] of the whole machine.
pub const MACHINE: &str = "machine";

/// One process's (or the whole machine's) use of the machine during a step.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub service: String,
    /// CPU time over wall time: 100% is one core.
    pub cpu_percent: f64,
    pub max_rss: u64,
    /// The most records its consumers had yet to handle, summed over
    /// partitions (sampled every 500 ms).
    pub max_lag: i64,
}

/// One load step.
#[derive(Debug)]
pub struct Step {
    /// For an open loop: the percentage of the sustained rate, and the rate.
    pub offered: Option<(u32, f64)>,
    pub accepted: usize,
    pub failed: u64,
    pub skipped: u64,
    pub accepted_rate: f64,
    /// How fast ServiceA's copy and ServiceB's records followed.
    pub copy_rate: f64,
    pub record_rate: f64,
    pub to_201: Summary,
    pub to_copy: Summary,
    pub to_record: Summary,
    /// Inside the hop, each part of the way: from when the POST was due to
    /// when the payment's transaction began in Payments; from then to when
    /// the relay produced its notification; from that to ServiceA's copy;
    /// and to ServiceB's record.
    pub hops: [Summary; 4],
    pub usage: Vec<Usage>,
}

/// The consumers draining a backlog.
#[derive(Debug)]
pub struct Backlog {
    pub payments: usize,
    /// How fast Payments accepted the backlog (closed loop).
    pub accepted_rate: f64,
    /// From the consumers' start until each had handled every payment;
    /// `None`: not within the drain timeout.
    pub service_a: Option<Duration>,
    pub service_b: Option<Duration>,
    /// From their start until each had handled its first.
    pub first_handled: [Option<Duration>; 2],
    pub usage: Vec<Usage>,
}

/// The outbox relay alone publishing a backlog, Payments' HTTP idle.
#[derive(Debug)]
pub struct Relay {
    pub events: u64,
    pub payments: usize,
    pub took: Duration,
}

#[derive(Debug)]
pub struct Report {
    pub ceilings: Ceilings,
    pub connections: usize,
    pub seconds: u64,
    pub idle_rss: Vec<(String, u64)>,
    pub probe: Step,
    pub sustained: f64,
    pub steps: Vec<Step>,
    pub backlog: Backlog,
    pub relay: Relay,
    /// The closed loop with span export on, when it ran.
    pub traced: Option<Step>,
    pub profile: crate::profile::Profile,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn percent(part: f64, whole: f64) -> String {
    if whole > 0.0 {
        format!("{:.0}%", 100.0 * part / whole)
    } else {
        "n/a".to_owned()
    }
}

fn latency(s: &Summary) -> String {
    format!("{:.1} / {:.1} / {:.1} / {:.1}", s.p50, s.p90, s.p99, s.max)
}

/// The usage of `service`; nothing when it was not sampled.
fn usage_of(usage: &[Usage], service: &str) -> Usage {
    usage
        .iter()
        .find(|u| u.service == service)
        .cloned()
        .unwrap_or_default()
}

/// A step by the load it was offered.
fn label(step: &Step) -> String {
    step.offered.map_or("closed loop".to_owned(), |(pct, rate)| {
        format!("{pct}%: {rate:.0}/s")
    })
}

/// CPU time of `process` per payment the step accepted, in ms.
fn cpu_ms(step: &Step, process: &str) -> f64 {
    10.0 * usage_of(&step.usage, process).cpu_percent / step.accepted_rate.max(1.0)
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

impl Step {
    /// The lowest of the rates Payments accepted and the consumers followed.
    pub fn sustained(&self) -> f64 {
        self.accepted_rate.min(self.copy_rate).min(self.record_rate)
    }
}

impl Report {
    /// The step at `percent` of the sustained rate.
    fn step(&self, percent: u32) -> Option<&Step> {
        self.steps
            .iter()
            .find(|s| s.offered.is_some_and(|(p, _)| p == percent))
    }

    fn drain_rate(&self, took: Option<Duration>) -> Option<f64> {
        Some(self.backlog.payments as f64 / took?.as_secs_f64())
    }

    pub fn markdown(&self) -> String {
        let c = &self.ceilings;
        let mut md = String::new();
        let _ = writeln!(md, "# Pipeline benchmark\n");
        let _ = writeln!(
            md,
            "Written by `cargo xtask bench` ({}). Release builds; the local Apache Kafka broker and PostgreSQL; \
             every figure measured in the same run as the ceilings beside it.\n",
            c.machine
        );
        let _ = writeln!(md, "## Raw ceilings\n");
        let _ = writeln!(md, "| tool | what | figure |");
        let _ = writeln!(md, "|---|---|---:|");
        let _ = writeln!(
            md,
            "| pgbench | one-row INSERT+COMMIT, {} clients | {:.0}/s (mean latency {:.2} ms) |",
            c.pgbench.clients, c.pgbench.tps, c.pgbench.latency_ms
        );
        let _ = writeln!(
            md,
            "| Kafka ProducerPerformance | idempotent, acks=all, {} B | {:.0} records/s |",
            c.kafka_producer.record_size, c.kafka_producer.records_per_sec
        );
        let _ = writeln!(
            md,
            "| Kafka ProducerPerformance | the same in transactions, a commit every {} ms | {:.0} records/s |",
            c.kafka_transactions.transaction_ms, c.kafka_transactions.records_per_sec
        );
        let _ = writeln!(
            md,
            "| Kafka EndToEndLatency | acks=all, {} B, one at a time | p50 {:.0} ms, p99 {:.0} ms, p99.9 {:.0} ms (mean {:.2} ms) |",
            c.kafka_e2e.record_size,
            c.kafka_e2e.p50_ms,
            c.kafka_e2e.p99_ms,
            c.kafka_e2e.p999_ms,
            c.kafka_e2e.avg_ms
        );
        let _ = writeln!(
            md,
            "| event store `append_bench` | {} writers, one event per append | {:.0}/s = {} of pgbench (its own raw INSERT: {:.0}/s = {}) |",
            c.append.writers,
            c.append.store_per_sec,
            percent(c.append.store_per_sec, c.pgbench.tps),
            c.append.raw_per_sec,
            percent(c.append.raw_per_sec, c.pgbench.tps),
        );

        let p = &self.probe;
        let _ = writeln!(md, "\n## The highest sustained rate\n");
        let _ = writeln!(
            md,
            "{} clients sending payments as fast as Payments answers, for {} s: Payments accepted **{:.0}/s** \
             ({} of pgbench), ServiceA's copy followed at {:.0}/s and ServiceB's records at {:.0}/s. \
             The pipeline sustains the lowest of the three: **{:.0} payments/s**, {} of pgbench's INSERT+COMMIT rate \
             201 latency at that load: p50 / p90 / p99 / max {} ms.\n",
            self.connections,
            self.seconds,
            p.accepted_rate,
            percent(p.accepted_rate, c.pgbench.tps),
            p.copy_rate,
            p.record_rate,
            self.sustained,
            percent(self.sustained, c.pgbench.tps),
            latency(&p.to_201),
        );

        let _ = writeln!(md, "## Open loop at fixed rates\n");
        let _ = writeln!(
            md,
            "A payment every 1/rate seconds for {} s, each timed from when it was due. Latencies in ms, \
             p50 / p90 / p99 / max, from that moment to: the `201`; ServiceA's copy (its `Copied-At`); \
             ServiceB's record (its `processed_at`). Kafka's own end-to-end p50 / p99 in this run: {:.0} / {:.0} ms.\n",
            self.seconds, c.kafka_e2e.p50_ms, c.kafka_e2e.p99_ms
        );
        let _ = writeln!(
            md,
            "| offered | accepted | to 201 | to ServiceA copy | to ServiceB record | B p50 − Kafka p50 | B p99 − Kafka p99 | max lag A / B | machine CPU % (of 100 × cores) | max RSS MB P / A / B |"
        );
        let _ = writeln!(md, "|---|---:|---|---|---|---:|---:|---|---:|---|");
        for step in &self.steps {
            let (pct, rate) = step.offered.unwrap_or((0, 0.0));
            let u = |name: &str| usage_of(&step.usage, name);
            let (up, ua, ub, um) = (u("payments-service"), u("service-a"), u("service-b"), u(MACHINE));
            let _ = writeln!(
                md,
                "| {pct}%: {rate:.0}/s | {:.0}/s ({} payments{}) | {} | {} | {} | {:+.1} | {:+.1} | {} / {} | {:.0} | {:.1} / {:.1} / {:.1} |",
                step.accepted_rate,
                step.accepted,
                if step.failed + step.skipped > 0 {
                    format!(", {} failed, {} skipped", step.failed, step.skipped)
                } else {
                    String::new()
                },
                latency(&step.to_201),
                latency(&step.to_copy),
                latency(&step.to_record),
                step.to_record.p50 - c.kafka_e2e.p50_ms,
                step.to_record.p99 - c.kafka_e2e.p99_ms,
                ua.max_lag,
                ub.max_lag,
                um.cpu_percent,
                mb(up.max_rss),
                mb(ua.max_rss),
                mb(ub.max_rss),
            );
        }

        let _ = writeln!(
            md,
            "\nInside the hop, p50 / p90 in ms of each part of a payment's way: from when its POST was due to when \
             Payments' transaction storing it began (the event's `recorded_at`); from then until the relay sent its \
             notification (the record's timestamp, set when the producer is handed it); from that to ServiceA's copy; \
             and to ServiceB's record (which includes the callback).\n"
        );
        let _ = writeln!(
            md,
            "| offered | POST → stored | stored → sent | sent → ServiceA copy | sent → ServiceB record |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|");
        for step in self.steps.iter().chain([&self.probe]) {
            let cells: Vec<String> = step
                .hops
                .iter()
                .map(|s| format!("{:.1} / {:.1}", s.p50, s.p90))
                .collect();
            let _ = writeln!(md, "| {} | {} |", label(step), cells.join(" | "));
        }

        // Where the CPU goes: each process's CPU time per payment accepted.
        let processes = [
            "payments-service",
            "service-a",
            "service-b",
            "kafka broker",
            "postgresql",
            "load generator",
            MACHINE,
        ];
        let _ = writeln!(
            md,
            "\nWhere the CPU goes: CPU time per payment accepted, in ms, by process (`machine`: every process, from `/proc/stat`).\n"
        );
        let _ = writeln!(md, "| offered | {} |", processes.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(processes.len()));
        for step in self.steps.iter().chain([&self.probe]) {
            let cells: Vec<String> = processes
                .iter()
                .map(|name| format!("{:.2}", cpu_ms(step, name)))
                .collect();
            let _ = writeln!(md, "| {} | {} |", label(step), cells.join(" | "));
        }

        let b = &self.backlog;
        let secs = |d: Option<Duration>| {
            d.map_or("not within the timeout".to_owned(), |d| {
                format!("{:.1} s", d.as_secs_f64())
            })
        };
        let rate = |d: Option<Duration>| {
            self.drain_rate(d).map_or("n/a".to_owned(), |r| {
                format!(
                    "{r:.0}/s = {} of Payments' rate alone, {} of its rate beside the consumers",
                    percent(r, self.backlog.accepted_rate),
                    percent(r, self.probe.accepted_rate)
                )
            })
        };
        let _ = writeln!(md, "\n## Draining a backlog\n");
        let _ = writeln!(
            md,
            "ServiceA and ServiceB stopped while Payments accepted {} payments ({:.0}/s), then started: \
             the time from their start until each had handled every notification.\n",
            b.payments, b.accepted_rate
        );
        let _ = writeln!(
            md,
            "| service | drained in | its first handled after | rate | max RSS while draining | CPU % |"
        );
        let _ = writeln!(md, "|---|---:|---:|---|---:|---:|");
        for ((name, took), first) in [("service-a", b.service_a), ("service-b", b.service_b)]
            .into_iter()
            .zip(b.first_handled)
        {
            let usage = usage_of(&b.usage, name);
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {:.1} MB | {:.0} |",
                secs(took),
                secs(first),
                rate(took),
                mb(usage.max_rss),
                usage.cpu_percent
            );
        }
        let payments = usage_of(&b.usage, "payments-service");
        let _ = writeln!(
            md,
            "\nPayments meanwhile, answering ServiceB's callbacks: max RSS {:.1} MB, CPU {:.0}%.",
            mb(payments.max_rss),
            payments.cpu_percent
        );

        let r = &self.relay;
        let relay_rate = r.events as f64 / r.took.as_secs_f64();
        let _ = writeln!(md, "\n## The relay alone\n");
        let _ = writeln!(
            md,
            "Payments without its relay accepted {} payments (no consumer running), leaving {} events in the outbox; \
             a Payments with its relay then published them, its HTTP idle, in {:.1} s: **{relay_rate:.0} events/s**, \
             {} of pgbench's INSERT+COMMIT rate and {} of Kafka's transactional `ProducerPerformance` \
             ({:.0} records/s, a commit every {} ms).\n",
            r.payments,
            r.events,
            r.took.as_secs_f64(),
            percent(relay_rate, c.pgbench.tps),
            percent(relay_rate, c.kafka_transactions.records_per_sec),
            c.kafka_transactions.records_per_sec,
            c.kafka_transactions.transaction_ms,
        );

        let _ = writeln!(md, "## Tracing's cost\n");
        match &self.traced {
            Some(traced) => {
                let _ = writeln!(
                    md,
                    "The closed loop twice, on processes started for each: with span export off, and with every \
                     service exporting its spans over OTLP to a local Jaeger (whose CPU counts in `machine`).\n"
                );
                let _ = writeln!(
                    md,
                    "| span export | accepted | sustained | CPU ms per payment: machine / Payments |"
                );
                let _ = writeln!(md, "|---|---:|---:|---|");
                for (label, step) in [("off", &self.probe), ("OTLP", traced)] {
                    let _ = writeln!(
                        md,
                        "| {label} | {:.0}/s | {:.0}/s | {:.2} / {:.2} |",
                        step.accepted_rate,
                        step.sustained(),
                        cpu_ms(step, MACHINE),
                        cpu_ms(step, "payments-service"),
                    );
                }
            }
            None => {
                let _ = writeln!(
                    md,
                    "Not measured in this run: no OTLP collector was given (`--otlp`)."
                );
            }
        }

        let _ = writeln!(md, "\n## Targets\n");
        let _ = writeln!(md, "| target | measured | |");
        let _ = writeln!(md, "|---|---|---|");
        let mut target = |name: String, measured: String, ok: bool| {
            let _ = writeln!(md, "| {name} | {measured} | {} |", met(ok));
        };
        target(
            "sustained rate ≥ 20% of pgbench's INSERT+COMMIT (heading for 33%)".to_owned(),
            format!(
                "{:.0}/s = {} of {:.0}/s",
                self.sustained,
                percent(self.sustained, c.pgbench.tps),
                c.pgbench.tps
            ),
            self.sustained >= 0.2 * c.pgbench.tps,
        );
        for (name, took) in [("ServiceA", b.service_a), ("ServiceB", b.service_b)] {
            let drain = self.drain_rate(took).unwrap_or(0.0);
            target(
                format!("{name} drains a backlog at least as fast as Payments accepts alone"),
                format!(
                    "{drain:.0}/s vs {:.0}/s ({})",
                    b.accepted_rate,
                    percent(drain, b.accepted_rate)
                ),
                drain >= b.accepted_rate,
            );
        }
        let cpu = cpu_ms(&self.probe, MACHINE);
        target(
            "CPU per payment, every process, closed loop ≤ 0.6 ms".to_owned(),
            format!("{cpu:.2} ms"),
            cpu <= 0.6,
        );
        if let Ok(commits) = &self.profile.commits {
            let per_payment = commits.iter().sum::<i64>() as f64 / self.profile.payments.max(1) as f64;
            target(
                "PostgreSQL commits per payment ≤ 1.5".to_owned(),
                format!("{per_payment:.2} (Payments / ServiceA / ServiceB: {commits:?})"),
                per_payment <= 1.5,
            );
        }
        for percent in [25, 50] {
            if let Some(step) = self.step(percent) {
                let s = &step.to_record;
                target(
                    format!("at {percent}%: POST-to-ServiceB p90 ≤ 2 × p50"),
                    format!("p90 {:.1} ms, p50 {:.1} ms", s.p90, s.p50),
                    s.p90 <= 2.0 * s.p50,
                );
            }
        }
        for (name, rss) in &self.idle_rss {
            target(
                format!("idle RSS of {name} < 30 MB"),
                format!("{:.1} MB", mb(*rss)),
                mb(*rss) < 30.0,
            );
        }
        target(
            "the relay alone publishes at least pgbench's INSERT+COMMIT rate".to_owned(),
            format!("{relay_rate:.0}/s = {}", percent(relay_rate, c.pgbench.tps)),
            relay_rate >= c.pgbench.tps,
        );
        let _ = writeln!(md);
        md.push_str(&self.profile.markdown());
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let s = Summary::of((1..=100).map(f64::from).rev().collect());
        assert_eq!((s.p50, s.p90, s.p99, s.max), (50.0, 90.0, 99.0, 100.0));
        let one = Summary::of(vec![7.0]);
        assert_eq!((one.p50, one.p99, one.max), (7.0, 7.0, 7.0));
        assert_eq!(Summary::of(Vec::new()).max, 0.0);
    }
}
