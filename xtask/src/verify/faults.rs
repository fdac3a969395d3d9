//! `cargo xtask faults`: faults under a steady load, and what survived them:
//! each scenario runs the whole stack as processes on topics, groups and
//! databases of its own, injects one fault and undoes it, then looks for
//! every event owed at every stage downstream. What is counted, and why, is
//! in docs/guarantees.md ("Faults under load"); the command fails on any
//! loss, double, or stage that did not catch up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::ValueEnum;
use nix::sys::signal::Signal;
use rdkafka::Message;
use serde_json::{Value, json};
use service_kit::auth::Credentials;
use service_kit::config::KafkaConfig;
use shared_events::{Notification, PaymentState, Topics};
use tokio::process::{Child, Command};

use crate::local::broker::LocalBroker;
use crate::local::demo::get_ok;
use crate::local::postgres::LocalPostgres;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// The scenarios to run, in this order (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Fault>,
    /// Seconds of load in each scenario; the fault comes a quarter of the
    /// way in.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Payments per second (one in four is then refunded).
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// How long `payments-outage` keeps Payments unreachable from ServiceB,
    /// in seconds (CI keeps it short: ServiceB's retry budget is made far
    /// shorter still for that scenario).
    #[arg(long, default_value_t = 180)]
    outage_seconds: u64,
}

/// One fault, injected once and undone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fault {
    /// Three brokers: SIGKILL of the leader of the notifications topic's
    /// partition 0, restarted 10 s later.
    LeaderKill,
    /// One broker: SIGTERM (a controlled shutdown), restarted 5 s later.
    BrokerTerm,
    /// One broker: SIGKILL, restarted 5 s later.
    BrokerKill,
    /// PostgreSQL (every service's database) stopped, started 3 s later.
    PostgresRestart,
    /// SIGKILL of Payments (with the outbox relay) mid-load, restarted at once.
    PaymentsKill,
    /// SIGKILL of one of the two ServiceB instances; the other takes over.
    ServiceBKill,
    /// SIGTERM of one of the two ServiceB instances; the other takes over.
    ServiceBTerm,
    /// A third ServiceB joins the group mid-load (a rebalance), and leaves
    /// with SIGTERM 5 s later (another).
    ConsumerAddedRemoved,
    /// Payments unreachable from ServiceB for 30 s: its callbacks go
    /// through a proxy, which closes every connection meanwhile.
    CallbackCut,
    /// ServiceA stopped, its group moved back to the notifications topic's
    /// first offsets, and started: it reads every notification again.
    ServiceAReplay,
    /// Payments unreachable from ServiceB for `--outage-seconds` (3
    /// minutes unless told), as `callback-cut`, with ServiceB's retry
    /// budget cut to 3 attempts (under 2 s): the outage outlasts it many
    /// times over, and ServiceB must wait it out, paused, not dead-letter.
    PaymentsOutage,
}

impl Fault {
    fn on_cluster(self) -> bool {
        self == Self::LeaderKill
    }

    /// The statuses other than 201 the client may be answered meanwhile
    /// (and retries): only PostgreSQL's restart makes Payments answer 503
    /// ("the database is unavailable, retry").
    fn expected_statuses(self) -> &'static [u16] {
        match self {
            Self::PostgresRestart => &[503],
            _ => &[],
        }
    }

    /// Settings of ServiceB's for this scenario.
    fn service_b_env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // A per-record budget of 3 attempts (100 + 200 ms of backoff):
            // what the consumer did before it paused for a dependency
            // dead-letters every notification of the outage with this.
            Self::PaymentsOutage => &[("RETRY_MAX_ATTEMPTS", "3"), ("RETRY_MAX_MS", "1000")],
            _ => &[],
        }
    }

    fn name(self) -> String {
        self.to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned())
    }
}

/// The stack's processes, by index.
const PAYMENTS: usize = 0;
const SERVICE_A: usize = 1;
const SERVICE_B: usize = 2;
const SERVICE_B_OTHER: usize = 3;
/// A third ServiceB, started only by [`Fault::ConsumerAddedRemoved`].
const SERVICE_B_EXTRA: usize = 4;
const PROCESSES: [&str; 5] = [
    "payments-service",
    "service-a",
    "service-b",
    "service-b",
    "service-b",
];

/// How long, after the load, the consumers may take to catch up.
const CATCH_UP: Duration = Duration::from_secs(120);
/// How long a request is retried (with its key) after the load ended.
const RETRY_AFTER_LOAD: Duration = Duration::from_secs(60);

pub async fn run(root: &Path, options: &Options) -> Result<()> {
    if crate::env_set("KAFKA_BOOTSTRAP_SERVERS").is_some() || crate::env_set("DATABASE_URL").is_some() {
        bail!(
            "faults are injected into the local broker and PostgreSQL only (unset KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL)"
        );
    }
    let scenarios = if options.scenarios.is_empty() {
        Fault::value_variants().to_vec()
    } else {
        options.scenarios.clone()
    };
    crate::local::demo::build_services(root, "--quiet").await?;

    let postgres = LocalPostgres::new(root);
    let started_postgres = postgres.start().await?;
    let brokers = Brokers::new(root)?;
    let mut rows = Vec::new();
    let result = async {
        for fault in scenarios {
            let broker = brokers.switch_to(fault.on_cluster()).await?;
            eprintln!(
                "\nxtask: faults: {} ({} s of {} payments/s)",
                fault.name(),
                options.seconds,
                options.rate
            );
            let mut stack = Stack::start(root, fault, broker).await?;
            let row = measure(&mut stack, broker, &postgres, options).await;
            stack.stop().await;
            let row = row?;
            eprintln!("{}", row.markdown());
            rows.push(row);
        }
        anyhow::Ok(())
    }
    .await;
    let stopped = brokers.stop();
    let stopped_postgres = if started_postgres { postgres.stop() } else { Ok(()) };

    println!("{}", table(&rows, options));
    result.and(stopped).and(stopped_postgres)?;
    let failed: Vec<&str> = rows
        .iter()
        .filter(|row| !row.passed)
        .map(|row| row.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "events were lost, applied twice, or never arrived in: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

/// A single broker and a cluster of three of this run's own, new (under
/// `target/xtask/faults/`), so that a restart's figures do not depend on
/// what else a development broker holds; one runs at a time, both
/// listening on 127.0.0.1:9092.
struct Brokers {
    single: LocalBroker,
    cluster: LocalBroker,
}

impl Brokers {
    fn new(root: &Path) -> Result<Self> {
        let dir = root.join("target/xtask/faults");
        let (single, cluster) = (dir.join("kafka"), dir.join("kafka-cluster"));
        for dir in [&single, &cluster] {
            crate::local::images::remove_tree(dir)?;
        }
        Ok(Self {
            single: LocalBroker::in_dir(root, single, 1),
            cluster: LocalBroker::in_dir(root, cluster, crate::local::broker::CLUSTER_NODES),
        })
    }

    async fn switch_to(&self, cluster: bool) -> Result<&LocalBroker> {
        let (wanted, other) = if cluster {
            (&self.cluster, &self.single)
        } else {
            (&self.single, &self.cluster)
        };
        if other.running_pid().is_some() {
            other.stop()?;
        }
        wanted.start().await?;
        Ok(wanted)
    }

    fn stop(&self) -> Result<()> {
        let single = self.single.stop();
        self.cluster.stop().and(single)
    }
}

/// The stack of one scenario.
struct Stack {
    root: PathBuf,
    dir: PathBuf,
    bootstrap: String,
    replication: u16,
    run: String,
    ports: [u16; 5],
    children: [Option<Child>; 5],
    credentials: Credentials,
    /// Payments', ServiceA's and ServiceB's own database, as its own role.
    databases: [String; 3],
    /// In front of Payments, for ServiceB's callbacks.
    callbacks: Gate,
    fault: Fault,
    /// What went wrong while the fault was injected, besides the counts.
    problems: Vec<String>,
}

impl Stack {
    async fn start(root: &Path, fault: Fault, broker: &LocalBroker) -> Result<Self> {
        let run = format!("{}-{}", fault.name(), Utc::now().format("%Y%m%d%H%M%S"));
        let dir = root.join("target/xtask/faults").join(&run);
        std::fs::create_dir_all(&dir)?;
        // `test_` databases and roles, and `test.` topics: what `cargo xtask
        // test` clears on the local servers.
        let mut databases = Vec::new();
        for database in ["payments", "service_a", "service_b"] {
            databases.push(crate::local::postgres::own_database(&Self::database(&run, database)).await?);
        }
        let databases = databases.try_into().expect("three databases");
        let mut ports = [0; 5];
        for port in &mut ports {
            *port = free_port()?;
        }
        let mut stack = Self {
            root: root.to_owned(),
            dir,
            bootstrap: broker.bootstrap().to_owned(),
            replication: if fault.on_cluster() { 3 } else { 1 },
            run,
            ports,
            children: [None, None, None, None, None],
            credentials: Credentials::generate(),
            databases,
            callbacks: Gate::default(),
            fault,
            problems: Vec::new(),
        };
        stack.callbacks = Gate::start(stack.ports[PAYMENTS]).await?;
        for process in [PAYMENTS, SERVICE_A, SERVICE_B, SERVICE_B_OTHER] {
            stack.spawn(process).await?;
        }
        Ok(stack)
    }

    fn database(run: &str, which: &str) -> String {
        format!("test_faults_{}_{which}", run.replace('-', "_"))
    }

    fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: self.bootstrap.clone(),
            topics: Topics {
                notifications: format!("test.faults-{}.notifications", self.run),
                state: format!("test.faults-{}.state", self.run),
            },
            ..KafkaConfig::local()
        }
    }

    /// The consumer group of `process`'s service.
    fn group(&self, process: usize) -> String {
        format!("test.faults-{}-{}", self.run, PROCESSES[process])
    }

    fn url(&self, process: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[process])
    }

    /// Starts process `process` and waits until it is ready.
    async fn spawn(&mut self, process: usize) -> Result<()> {
        let service = PROCESSES[process];
        let kafka = self.kafka();
        // Every process from SERVICE_B on is one of ServiceB's.
        let database = &self.databases[process.min(SERVICE_B)];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{service}-{process}.log")))?;
        let scenario_env = if service == "service-b" {
            self.fault.service_b_env()
        } else {
            &[]
        };
        let child = Command::new(self.root.join("target/debug").join(service))
            .envs(self.credentials.env_of(service))
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("KAFKA_REPLICATION_FACTOR", self.replication.to_string())
            .env("TOPIC_NOTIFICATIONS", &kafka.topics.notifications)
            .env("TOPIC_STATE", &kafka.topics.state)
            .env("GROUP_ID", self.group(process))
            .env("DATABASE_URL", database)
            .env("HTTP_ADDR", format!("127.0.0.1:{}", self.ports[process]))
            .env(
                "PAYMENTS_URL",
                format!("http://127.0.0.1:{}", self.callbacks.port),
            )
            // A member that died is replaced after 6 s (the broker's least),
            // not the default 10 s.
            .env("KAFKA_SESSION_TIMEOUT_MS", "6000")
            // Waiting out a PostgreSQL restart at start-up, not giving up.
            .env("STARTUP_TIMEOUT_MS", "60000")
            .env("RUST_LOG", "info,librdkafka=warn,rdkafka=warn")
            .env("NO_COLOR", "1")
            .envs(scenario_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {service}"))?;
        self.children[process] = Some(child);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = http
                .get(self.url(process, "/ready"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.children[process].as_mut().map(Child::try_wait) {
                bail!("{service} exited ({status}); see {}", self.dir.display());
            }
            if Instant::now() > deadline {
                bail!("{service} not ready after 120 s; see {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `signal` to process `process` and waits until it exited.
    async fn signal(&mut self, process: usize, signal: Signal) -> Result<()> {
        let child = self.children[process].as_mut().context("not running")?;
        let pid = child.id().context("exited already")?;
        crate::local::process::signal(pid, signal)?;
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .context("did not exit within 30 s")??;
        self.children[process] = None;
        Ok(())
    }

    /// Stops every process with SIGTERM.
    async fn stop(&mut self) {
        for process in 0..PROCESSES.len() {
            if self.children[process].is_some() {
                let _ = self.signal(process, Signal::SIGTERM).await;
            }
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// What the client was answered.
#[derive(Debug, Default)]
struct Ledger {
    /// Payments answered 201: id, and when.
    payments: Vec<(String, DateTime<Utc>)>,
    /// Refunds answered 201, by payment id.
    refunds: HashMap<String, u32>,
    /// Requests never answered 2xx (given up, or refused for good).
    unanswered: u32,
    /// Every answer other than 201, by status (each retry's too).
    statuses: Arc<Mutex<BTreeMap<u16, u32>>>,
    /// When each 2xx came.
    answered_at: Vec<Instant>,
    /// Each payment's last 2xx (its payment's or its refund's).
    last_answer: HashMap<String, DateTime<Utc>>,
}

/// The steady load: `rate` payments per second for `seconds`, each request
/// retried with its key until answered; returns when every request is done.
/// `http` refunds as the operator (a refund needs a caller's token).
async fn load(
    http: reqwest::Client,
    stack_payments: String,
    run: String,
    rate: u32,
    seconds: u64,
    ledger: Arc<Mutex<Ledger>>,
) {
    let give_up = Instant::now() + Duration::from_secs(seconds) + RETRY_AFTER_LOAD;
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    let mut requests = tokio::task::JoinSet::new();
    let statuses = Arc::clone(&ledger.lock().expect("ledger").statuses);
    for n in 0..u64::from(rate) * seconds {
        ticks.tick().await;
        let (http, base, run, ledger, statuses) = (
            http.clone(),
            stack_payments.clone(),
            run.clone(),
            Arc::clone(&ledger),
            Arc::clone(&statuses),
        );
        requests.spawn(async move {
            let payment = json!({
                "customer_id": format!("c-{}", n % 50),
                "order_id": format!("o-{n}"),
                "amount": 1999,
                "currency": "EUR",
            });
            let created = until_answered(give_up, &statuses, || {
                http.post(format!("{base}/payments"))
                    .header("idempotency-key", format!("{run}-{n}"))
                    .json(&payment)
            })
            .await;
            let Some(created) = created else {
                ledger.lock().expect("ledger").unanswered += 1;
                return;
            };
            let id = created["payment_id"].as_str().unwrap_or_default().to_owned();
            {
                let mut ledger = ledger.lock().expect("ledger");
                ledger.payments.push((id.clone(), Utc::now()));
                ledger.last_answer.insert(id.clone(), Utc::now());
                ledger.answered_at.push(Instant::now());
            }
            if n % 4 != 0 {
                return;
            }
            let refunded = until_answered(give_up, &statuses, || {
                http.post(format!("{base}/payments/{id}/refunds"))
                    .header("idempotency-key", format!("{run}-{n}-refund"))
                    .header("if-match", "\"1\"")
                    .json(&json!({"amount": 100, "reason": "damaged"}))
            })
            .await;
            let mut ledger = ledger.lock().expect("ledger");
            if refunded.is_some() {
                ledger.last_answer.insert(id.clone(), Utc::now());
                *ledger.refunds.entry(id).or_default() += 1;
                ledger.answered_at.push(Instant::now());
            } else {
                ledger.unanswered += 1;
            }
        });
    }
    while requests.join_next().await.is_some() {}
}

/// Sends the request `make` builds until it is answered 201, retrying
/// (with the same key) on no answer and on 5xx; `None` for another answer,
/// or when `give_up` comes. Every answer other than 201 is counted in
/// `statuses`, for the scenario to judge.
async fn until_answered(
    give_up: Instant,
    statuses: &Mutex<BTreeMap<u16, u32>>,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Option<Value> {
    while Instant::now() < give_up {
        match make().send().await {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                return response.json().await.ok();
            }
            Ok(response) => {
                let status = response.status();
                *statuses
                    .lock()
                    .expect("statuses")
                    .entry(status.as_u16())
                    .or_default() += 1;
                if !status.is_server_error() {
                    eprintln!("xtask: faults: a request was refused: {status}");
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    None
}

/// The table's columns after the fault: counts of events (a payment or a
/// refund answered 201), then times.
const COLUMNS: [&str; 15] = [
    "2xx",
    "never 2xx",
    "unexpected status",
    "stored",
    "published",
    "ServiceA",
    "ServiceB",
    "lost",
    "stored, not downstream",
    "applied twice",
    "published without 2xx",
    "dead letters",
    "recovered after",
    "slowest 2xx → ServiceB",
    "longest without 2xx",
];

/// One scenario's figures, as [`COLUMNS`] names them.
#[derive(Debug)]
struct Row {
    name: String,
    cells: Vec<String>,
    passed: bool,
    /// What else went wrong (see [`Stack::problems`]).
    problems: Vec<String>,
}

impl Row {
    fn markdown(&self) -> String {
        format!("| {} | {} |", self.name, self.cells.join(" | "))
    }
}

fn seconds(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
}

fn table(rows: &[Row], options: &Options) -> String {
    let mut table = format!(
        "{} s of {} payments/s per scenario (one in four refunded); counts are events (a payment or a refund answered 201)\n\n\
         | fault | {} |\n{}|\n",
        options.seconds,
        options.rate,
        COLUMNS.join(" | "),
        "|---".repeat(COLUMNS.len() + 1)
    );
    for row in rows {
        table.push_str(&row.markdown());
        table.push('\n');
    }
    for row in rows {
        for problem in &row.problems {
            table.push_str(&format!("\n- {}: {problem}", row.name));
        }
    }
    table
}

async fn measure(
    stack: &mut Stack,
    broker: &LocalBroker,
    postgres: &LocalPostgres,
    options: &Options,
) -> Result<Row> {
    let fault = stack.fault;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let http = crate::local::credentials::operator_client_with(&stack.credentials)?;
    let started = Instant::now();
    let load = tokio::spawn(load(
        http.clone(),
        stack.url(PAYMENTS, ""),
        stack.run.clone(),
        options.rate,
        options.seconds,
        Arc::clone(&ledger),
    ));
    tokio::time::sleep(Duration::from_secs(options.seconds) / 4).await;
    let fault_at = Utc::now();
    eprintln!("xtask: faults: injecting {}", fault.name());
    inject(stack, broker, postgres, options).await?;
    let undone_at = Utc::now();
    eprintln!(
        "xtask: faults: undone after {:.1} s",
        (undone_at - fault_at).num_milliseconds() as f64 / 1000.0
    );
    load.await?;
    let load_time = started.elapsed();

    let ledger = std::mem::take(&mut *ledger.lock().expect("ledger"));
    let owed: HashMap<String, u64> = ledger
        .payments
        .iter()
        .map(|(id, _)| {
            (
                id.clone(),
                1 + u64::from(ledger.refunds.get(id).copied().unwrap_or(0)),
            )
        })
        .collect();
    // Owed downstream: every event in the run's store, answered 2xx or not.
    let mut due = stored_events(&stack.run)?;
    for (id, n) in &owed {
        let due = due.entry(id.clone()).or_default();
        *due = (*due).max(*n);
    }
    let deadline = Instant::now() + CATCH_UP;
    let caught_up = catch_up(stack, &http, &due, deadline).await;
    // ServiceB and the audit having everything does not mean every stage
    // has: the state topic and ServiceA's copy may trail (a relay recovering
    // from a fatal transaction error after a broker restart republishes its
    // batch late). Every stage gets the same bound.
    let mut found = Found::gather(stack, &http, &due).await?;
    while (not_downstream(&found) > 0 || tally(&owed, &found).0 > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        found = Found::gather(stack, &http, &due).await?;
    }

    let (lost, twice) = tally(&owed, &found);
    let not_downstream = not_downstream(&found);
    let unanswered_published = unanswered_published(&owed, &found);
    // The longest any payment waited, from its last 2xx to ServiceB's
    // record of what it led to.
    let slowest = ledger
        .last_answer
        .iter()
        .filter_map(|(id, answered)| {
            Some(
                (*found.fetched_at.get(id)? - *answered)
                    .to_std()
                    .unwrap_or_default(),
            )
        })
        .max();
    let recovered = ledger
        .payments
        .iter()
        .filter(|(_, accepted)| *accepted <= undone_at)
        .filter_map(|(id, _)| found.fetched_at.get(id))
        .max()
        .map(|last| (*last - fault_at).to_std().unwrap_or_default());
    let mut answered_at = ledger.answered_at.clone();
    answered_at.sort();
    let longest_gap = answered_at
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap_or(load_time);
    let sum = |stage: &HashMap<String, u64>| owed.keys().map(|id| stage.get(id).copied().unwrap_or(0)).sum();
    let unanswered = u64::from(ledger.unanswered);
    let unexpected = u64::from(unexpected(&ledger.statuses.lock().expect("statuses"), fault));
    let dead_letters = found.dead_letters as u64;
    // A fault must not turn a good record into a dead letter: an outage is
    // waited out, never given up on (see `HandleError::Unavailable`).
    let failures = [
        unanswered,
        unexpected,
        lost,
        not_downstream,
        twice,
        unanswered_published,
        dead_letters,
    ];
    let counts = [
        owed.values().sum(),
        unanswered,
        unexpected,
        sum(&found[Stage::Stored]),
        sum(&found[Stage::Published]),
        sum(&found[Stage::Audit]),
        sum(&found[Stage::Recorded]),
        lost,
        not_downstream,
        twice,
        unanswered_published,
        dead_letters,
    ];
    let times = [recovered, slowest, Some(longest_gap)];
    Ok(Row {
        name: fault.name(),
        cells: counts
            .iter()
            .map(u64::to_string)
            .chain(times.map(seconds))
            .collect(),
        passed: caught_up && stack.problems.is_empty() && failures.iter().all(|&n| n == 0),
        problems: std::mem::take(&mut stack.problems),
    })
}

async fn inject(
    stack: &mut Stack,
    broker: &LocalBroker,
    postgres: &LocalPostgres,
    options: &Options,
) -> Result<()> {
    let fault = stack.fault;
    match fault {
        Fault::LeaderKill => {
            let leader = partition_leader(&stack.bootstrap, &stack.kafka().topics.notifications)?;
            eprintln!("xtask: faults: broker {leader} leads partition 0; killing it");
            broker.signal_node(leader, Signal::SIGKILL).await?;
            tokio::time::sleep(Duration::from_secs(10)).await;
            broker.start_node(leader).await?;
            broker.wait_until_ready().await
        }
        Fault::BrokerTerm | Fault::BrokerKill => {
            let signal = if fault == Fault::BrokerKill {
                Signal::SIGKILL
            } else {
                Signal::SIGTERM
            };
            broker.signal_node(1, signal).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            broker.start_node(1).await?;
            broker.wait_until_ready().await
        }
        Fault::PostgresRestart => {
            postgres.stop()?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            postgres.start().await.map(drop)
        }
        Fault::PaymentsKill => {
            stack.signal(PAYMENTS, Signal::SIGKILL).await?;
            stack.spawn(PAYMENTS).await
        }
        Fault::ServiceBKill => stack.signal(SERVICE_B_OTHER, Signal::SIGKILL).await,
        Fault::ServiceBTerm => stack.signal(SERVICE_B_OTHER, Signal::SIGTERM).await,
        Fault::ConsumerAddedRemoved => {
            stack.spawn(SERVICE_B_EXTRA).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            stack.signal(SERVICE_B_EXTRA, Signal::SIGTERM).await
        }
        Fault::CallbackCut => {
            stack.callbacks.set_open(false);
            tokio::time::sleep(Duration::from_secs(30)).await;
            stack.callbacks.set_open(true);
            Ok(())
        }
        Fault::ServiceAReplay => {
            stack.signal(SERVICE_A, Signal::SIGTERM).await?;
            let (group, topic) = (stack.group(SERVICE_A), stack.kafka().topics.notifications);
            let reset = [
                "--bootstrap-server",
                &stack.bootstrap,
                "--group",
                &group,
                "--topic",
                &topic,
                "--reset-offsets",
                "--to-earliest",
                "--execute",
            ];
            // Kafka's tool lists no partition it moved while the group has
            // members: the broker may take a moment to count the stopped one out.
            crate::eventually(Duration::from_secs(30), "ServiceA's group reset", || async {
                let printed = broker.run_tool("kafka-consumer-groups.sh", &reset).await.ok()?;
                let moved = |line: &str| line.split_whitespace().nth(1) == Some(topic.as_str());
                printed.lines().any(moved).then_some(())
            })
            .await?;
            stack.spawn(SERVICE_A).await
        }
        Fault::PaymentsOutage => {
            stack.callbacks.set_open(false);
            let outage = Duration::from_secs(options.outage_seconds);
            let paused = paused_through(stack, outage).await;
            stack.callbacks.set_open(true);
            if !paused {
                stack.problems.push(format!(
                    "ServiceB's consumer_paused{{reason=\"payments\"}} never showed 1 during the {} s outage",
                    outage.as_secs()
                ));
            }
            Ok(())
        }
    }
}

/// Waits `outage` out, watching ServiceB's `consumer_paused` gauge; whether
/// it showed the consumer paused for Payments at some point.
async fn paused_through(stack: &Stack, outage: Duration) -> bool {
    let http = reqwest::Client::new();
    let until = Instant::now() + outage;
    let mut paused = false;
    while Instant::now() < until {
        for process in [SERVICE_B, SERVICE_B_OTHER] {
            let metrics = match http.get(stack.url(process, "/metrics")).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            };
            let labels = format!(r#"group="{}",reason="payments""#, stack.group(process));
            paused |= service_kit::metrics::sample(&metrics, "consumer_paused", &labels) == Some(1);
        }
        tokio::time::sleep(Duration::from_millis(500).min(until.saturating_duration_since(Instant::now())))
            .await;
    }
    paused
}

/// Every payment in the run's event store with its number of events (its
/// version: a stream's versions have no gaps), read from Payments' database.
fn stored_events(run: &str) -> Result<HashMap<String, u64>> {
    let database = Stack::database(run, "payments");
    let rows = crate::local::postgres::query(
        &database,
        "SELECT stream_id, max(version) FROM events GROUP BY stream_id",
    )
    .context("reading the event store")?;
    rows.iter()
        .map(|line| {
            let (stream, version) = line.split_once('|').context("stream|version")?;
            let id = stream
                .strip_prefix("payment-")
                .with_context(|| format!("a stream that is not a payment's: {stream}"))?;
            Ok((id.to_owned(), version.parse()?))
        })
        .collect()
}

/// Answers whose status `fault` does not expect (a 201 always is).
fn unexpected(statuses: &BTreeMap<u16, u32>, fault: Fault) -> u32 {
    statuses
        .iter()
        .filter(|(status, _)| !fault.expected_statuses().contains(status))
        .map(|(_, n)| n)
        .sum()
}

/// A TCP forwarder to Payments that a scenario can shut: while shut, it
/// closes every connection, those open and those that come.
#[derive(Debug, Default)]
struct Gate {
    port: u16,
    open: Option<tokio::sync::watch::Sender<bool>>,
}

impl Gate {
    async fn start(target: u16) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (open, watching) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut watching = watching.clone();
                if !*watching.borrow() {
                    continue; // dropped: closed at once
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watching.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Ok(Self {
            port,
            open: Some(open),
        })
    }

    fn set_open(&self, open: bool) {
        if let Some(sender) = &self.open {
            sender.send_replace(open);
        }
    }
}

/// The broker leading partition 0 of `topic`.
fn partition_leader(bootstrap: &str, topic: &str) -> Result<u16> {
    use rdkafka::producer::Producer;
    let probe: rdkafka::producer::BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = probe
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let leader = metadata
        .topics()
        .first()
        .and_then(|t| t.partitions().iter().find(|p| p.id() == 0))
        .map(|p| p.leader())
        .context("no leader for partition 0")?;
    Ok(u16::try_from(leader)?)
}

/// Events lost (owed, but missing at one stage or more) and events applied
/// twice (more than owed where each must be applied once: the store,
/// ServiceA's audit, ServiceB's count), over every payment owed.
fn tally(owed: &HashMap<String, u64>, found: &Found) -> (u64, u64) {
    let mut lost = 0;
    let mut twice = 0;
    for (id, &owed) in owed {
        let reached = found
            .downstream(id)
            .into_iter()
            .chain([found.at(Stage::Stored, id)]);
        lost += owed - reached.map(|n| n.min(owed)).min().unwrap_or(0);
        twice += [Stage::Stored, Stage::Audit, Stage::Recorded]
            .iter()
            .map(|&stage| found.at(stage, id).saturating_sub(owed))
            .sum::<u64>();
    }
    (lost, twice)
}

/// Events in the store missing at a stage downstream, over every payment of
/// the store (a request never answered 2xx may still have been stored; its
/// event is owed downstream all the same).
fn not_downstream(found: &Found) -> u64 {
    found[Stage::Stored]
        .iter()
        .map(|(id, &stored)| {
            let reached = found.downstream(id).into_iter().map(|n| n.min(stored));
            stored - reached.min().unwrap_or(0)
        })
        .sum()
}

/// Events on the notifications topic that no 2xx answered: a payment or a
/// refund published although its request failed (or was never made).
fn unanswered_published(owed: &HashMap<String, u64>, found: &Found) -> u64 {
    found[Stage::Published]
        .iter()
        .map(|(id, &n)| n.saturating_sub(owed.get(id).copied().unwrap_or(0)))
        .sum()
}

/// Waits until ServiceB recorded every owed event and ServiceA audited as
/// many notifications; whether they did within [`CATCH_UP`].
async fn catch_up(
    stack: &Stack,
    http: &reqwest::Client,
    owed: &HashMap<String, u64>,
    deadline: Instant,
) -> bool {
    let total: u64 = owed.values().sum();
    let mut waiting: Vec<(&String, u64)> = owed.iter().map(|(id, n)| (id, *n)).collect();
    while Instant::now() < deadline {
        let mut still = Vec::new();
        for (id, n) in waiting {
            let recorded = get_ok(http, &stack.url(SERVICE_B, &format!("/payments/{id}")))
                .await
                .ok()
                .and_then(|r| r["notifications"].as_u64())
                .unwrap_or(0);
            if recorded < n {
                still.push((id, n));
            }
        }
        waiting = still;
        let audited = audit(stack, http).await.map_or(0, |a| a.values().sum::<u64>());
        if waiting.is_empty() && audited >= total {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// ServiceA's audit log, counted by payment.
async fn audit(stack: &Stack, http: &reqwest::Client) -> Option<HashMap<String, u64>> {
    let mut counts = HashMap::new();
    let mut after = None;
    loop {
        let url = match &after {
            Some(cursor) => stack.url(SERVICE_A, &format!("/audit?limit=1000&after={cursor}")),
            None => stack.url(SERVICE_A, "/audit?limit=1000"),
        };
        let page = get_ok(http, &url).await.ok()?;
        let entries = page.as_array()?;
        for entry in entries {
            *counts
                .entry(entry["payment_id"].as_str()?.to_owned())
                .or_default() += 1;
        }
        match entries.last() {
            Some(last) if entries.len() == 1000 => after = Some(last["cursor"].as_str()?.to_owned()),
            _ => return Some(counts),
        }
    }
}

/// A stage a payment's events reach: counts per payment at each.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Events in the store (the payment's version).
    Stored,
    /// Distinct notifications on the topic.
    Published,
    /// The newest version on the state topic.
    State,
    /// ServiceA's audit entries.
    Audit,
    /// ServiceA's copy's version.
    Copy,
    /// ServiceB's count of notifications handled.
    Recorded,
    /// The version ServiceB's callback last got.
    RecordVersion,
}

impl Stage {
    /// Every stage after the store.
    const DOWNSTREAM: [Self; 6] = [
        Self::Published,
        Self::State,
        Self::Audit,
        Self::Copy,
        Self::Recorded,
        Self::RecordVersion,
    ];
}

/// What each stage holds, per payment.
#[derive(Debug, Default)]
struct Found {
    /// Indexed by [`Stage`].
    stages: [HashMap<String, u64>; 7],
    /// When ServiceB's callback last fetched the payment.
    fetched_at: HashMap<String, DateTime<Utc>>,
    dead_letters: usize,
}

impl std::ops::Index<Stage> for Found {
    type Output = HashMap<String, u64>;
    fn index(&self, stage: Stage) -> &Self::Output {
        &self.stages[stage as usize]
    }
}

impl std::ops::IndexMut<Stage> for Found {
    fn index_mut(&mut self, stage: Stage) -> &mut Self::Output {
        &mut self.stages[stage as usize]
    }
}

impl Found {
    /// How many events of payment `id` `stage` holds.
    fn at(&self, stage: Stage, id: &str) -> u64 {
        self[stage].get(id).copied().unwrap_or(0)
    }

    /// How many events of payment `id` each stage after the store holds:
    /// published, on the state topic, audited, copied, recorded by ServiceB,
    /// and the version its callback got.
    fn downstream(&self, id: &str) -> [u64; 6] {
        Stage::DOWNSTREAM.map(|stage| self.at(stage, id))
    }

    /// What each stage holds of the payments of `due` (every payment in the
    /// store, and every one answered 2xx).
    async fn gather(stack: &Stack, http: &reqwest::Client, due: &HashMap<String, u64>) -> Result<Self> {
        let mut found = Self::default();
        found[Stage::Stored] = stored_events(&stack.run)?;
        for id in due.keys() {
            let version = |v: &Value| v["version"].as_u64();
            if let Some(v) = get_ok(http, &stack.url(SERVICE_A, &format!("/payments/{id}")))
                .await
                .ok()
                .as_ref()
                .and_then(version)
            {
                found[Stage::Copy].insert(id.clone(), v);
            }
            if let Ok(record) = get_ok(http, &stack.url(SERVICE_B, &format!("/payments/{id}"))).await {
                found[Stage::Recorded].insert(id.clone(), record["notifications"].as_u64().unwrap_or(0));
                found[Stage::RecordVersion]
                    .insert(id.clone(), record["payment"]["version"].as_u64().unwrap_or(0));
                if let Some(at) = record["fetched_at"].as_str().and_then(|t| t.parse().ok()) {
                    found.fetched_at.insert(id.clone(), at);
                }
            }
        }
        found[Stage::Audit] = audit(stack, http).await.context("reading ServiceA's audit log")?;

        let kafka = stack.kafka();
        let mut notifications: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
        for record in kafka_ops::dead_letters::read_topic(&kafka, &kafka.topics.notifications).await? {
            let notification = Notification::decode(&record).context("an undecodable notification")?;
            notifications
                .entry(notification.payment_id().to_string())
                .or_default()
                .insert(notification.metadata().id.to_string());
        }
        found[Stage::Published] = notifications
            .into_iter()
            .map(|(id, events)| (id, events.len() as u64))
            .collect();
        for record in kafka_ops::dead_letters::read_topic(&kafka, &kafka.topics.state).await? {
            let Some(value) = record.payload() else { continue };
            let state: PaymentState = serde_json::from_slice(value).context("an unreadable state event")?;
            let newest = found[Stage::State]
                .entry(state.payment_id.to_string())
                .or_default();
            *newest = (*newest).max(state.version);
        }
        for topic in [&kafka.topics.notifications, &kafka.topics.state] {
            let dlt = format!("{topic}.dlt");
            found.dead_letters += kafka_ops::dead_letters::read_topic(&kafka, &dlt)
                .await
                .map_or(0, |r| r.len());
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(n: u64) -> Found {
        Found {
            stages: std::array::from_fn(|_| HashMap::from([("p".to_owned(), n)])),
            ..Found::default()
        }
    }

    #[test]
    fn an_event_missing_at_any_stage_is_lost_and_one_counted_twice_is_a_double() {
        let owed = HashMap::from([("p".to_owned(), 2)]);
        assert_eq!(tally(&owed, &stages(2)), (0, 0));

        let mut unpublished = stages(2);
        unpublished[Stage::Published].insert("p".to_owned(), 1);
        assert_eq!(tally(&owed, &unpublished), (1, 0));

        let mut never_recorded = stages(2);
        never_recorded[Stage::Recorded].clear();
        never_recorded[Stage::RecordVersion].clear();
        assert_eq!(tally(&owed, &never_recorded), (2, 0));

        let mut recorded_twice = stages(2);
        recorded_twice[Stage::Recorded].insert("p".to_owned(), 3);
        recorded_twice[Stage::Audit].insert("p".to_owned(), 3);
        assert_eq!(tally(&owed, &recorded_twice), (0, 2));

        // Published twice (at-least-once) is not applied twice.
        let mut published_twice = stages(2);
        published_twice[Stage::Published].insert("p".to_owned(), 3);
        assert_eq!(tally(&owed, &published_twice), (0, 0));
    }

    #[test]
    fn an_event_of_the_store_missing_downstream_is_counted_whether_answered_or_not() {
        assert_eq!(not_downstream(&stages(2)), 0);
        // Stored (its request never answered 2xx) and never published.
        let mut unanswered = stages(2);
        unanswered[Stage::Stored].insert("q".to_owned(), 1);
        assert_eq!(not_downstream(&unanswered), 1);
        let mut not_audited = stages(2);
        not_audited[Stage::Audit].insert("p".to_owned(), 1);
        assert_eq!(not_downstream(&not_audited), 1);
    }

    #[test]
    fn a_status_the_scenario_does_not_expect_is_counted() {
        let statuses = BTreeMap::from([(503, 4), (500, 1), (409, 2)]);
        assert_eq!(unexpected(&statuses, Fault::PostgresRestart), 3);
        assert_eq!(unexpected(&statuses, Fault::BrokerKill), 7);
        assert_eq!(unexpected(&BTreeMap::new(), Fault::BrokerKill), 0);
    }

    #[test]
    fn a_published_event_nobody_was_answered_2xx_for_is_counted() {
        let owed = HashMap::from([("p".to_owned(), 1)]);
        assert_eq!(unanswered_published(&owed, &stages(1)), 0);
        let mut refund_without_2xx = stages(1);
        refund_without_2xx[Stage::Published].insert("p".to_owned(), 2);
        assert_eq!(unanswered_published(&owed, &refund_without_2xx), 1);
        let mut payment_without_2xx = stages(1);
        payment_without_2xx[Stage::Published].insert("q".to_owned(), 1);
        assert_eq!(unanswered_published(&owed, &payment_without_2xx), 1);
    }
}
