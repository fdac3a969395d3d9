//! `bench`: the pipeline benchmark, which `cargo xtask bench` builds in
//! release mode and runs with the raw ceilings it measured first
//! (docs/measured.md says what it measures and how; `bench --help`, its
//! options).

mod load;
mod profile;
mod report;
mod stack;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use clap::Parser as _;
use event_store::EventStore;
use payments_service::repository::stream_id;
use rdkafka::Message;
use service_kit::config::KafkaConfig;
use service_kit::telemetry::OTLP_ENDPOINT;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinSet;
use uuid::Uuid;

use load::{Accepted, Load, Outcome};
use profile::{Perf, Profile, Statements};
use report::{Backlog, Ceilings, Relay, Report, Step, Summary, Usage};
use stack::{PAYMENTS, SERVICE_A, SERVICE_B, Service, Stack};

/// How long the pipeline runs flat out before anything is measured.
const WARM_UP: Duration = Duration::from_secs(30);
/// How long the consumers get to catch up after a load step.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The pipeline benchmark: writes `<out>/results.md`.
#[derive(Debug, clap::Parser)]
struct Options {
    /// The raw ceilings `cargo xtask bench` measured.
    #[arg(long, default_value = "target/xtask/bench/ceilings.json")]
    ceilings: PathBuf,
    /// Where results.md goes.
    #[arg(long, default_value = "docs/bench")]
    out: PathBuf,
    /// Where the services' release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// How long each load step lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payments piled up while the consumers are stopped, then drained.
    #[arg(long, default_value_t = 100_000)]
    backlog: usize,
    /// The closed loop's clients.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Where the services export their spans for the run with tracing on.
    #[arg(long)]
    otlp: Option<String>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let options = Options::parse();
    let ceilings: Ceilings = serde_json::from_str(
        &std::fs::read_to_string(&options.ceilings)
            .with_context(|| format!("cannot read {}", options.ceilings.display()))?,
    )?;
    let env = |name: &str, default: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| default.to_owned())
    };
    let stack = Stack::new(
        env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        env("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres"),
        options.bin_dir.clone(),
        PathBuf::from("target/xtask/bench/logs"),
    )?;
    stack.create_databases().await?;
    let outcome = tokio::select! {
        outcome = run(&stack, &options, ceilings) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // The services are gone by now (killed on drop if not stopped).
    let dropped = stack.drop_databases().await;
    let report = outcome?;
    dropped?;
    std::fs::create_dir_all(&options.out)?;
    std::fs::write(options.out.join("results.md"), report.markdown())?;
    println!("{}", report.markdown());
    eprintln!("bench: wrote {}/results.md", options.out.display());
    Ok(())
}

async fn run(stack: &Stack, options: &Options, ceilings: Ceilings) -> Result<Report> {
    // The operator's token: the copies' `Copied-At` is read from ServiceA.
    let mut operator = reqwest::header::HeaderMap::new();
    operator.insert(
        reqwest::header::AUTHORIZATION,
        integration_tests::credentials().operator.authorization(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(MAX_CONNECTIONS)
        .default_headers(operator)
        .build()?;
    let load = load_on(stack, &http, options);
    let databases = Databases::connect(stack).await?;

    // Tracing's cost first: the closed loop with every service exporting
    // its spans over OTLP, on processes, topics and databases of its own,
    // so that the stack measured next starts as a new deployment would
    // (ServiceA's copy, read from the state topic, empty).
    let traced = match &options.otlp {
        Some(endpoint) => {
            eprintln!("bench: closed loop with span export to {endpoint}");
            let own = Stack::new(
                stack.bootstrap.clone(),
                stack.server_url.clone(),
                stack.bin_dir.clone(),
                stack.log_dir.clone(),
            )?;
            own.create_databases().await?;
            let step = async {
                let (load, databases) = (load_on(&own, &http, options), Databases::connect(&own).await?);
                let services = start_all(&own, &http, &[(OTLP_ENDPOINT, endpoint)]).await?;
                warm_up(&load, &databases, &services[1]).await?;
                let (outcome, usage) = sampled(&services, &http, spawned(load.closed(None))).await;
                let step = measure(&own, &databases, &http, &services[1], &outcome, None, usage).await?;
                stop_all(services).await?;
                databases.close().await;
                anyhow::Ok(step)
            }
            .await;
            own.drop_databases().await?;
            Some(step?)
        }
        None => None,
    };

    let services = start_all(stack, &http, &[]).await?;
    // Idle: after start, nothing sent yet.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss: Vec<(String, u64)> = services
        .iter()
        .map(|s| (s.name.to_owned(), s.rss().unwrap_or(0)))
        .collect();
    eprintln!("bench: idle RSS {idle_rss:?}");
    warm_up(&load, &databases, &services[1]).await?;

    // The highest rate: Payments as fast as it answers, then how fast the
    // consumers followed. Profiled: the CPU while the load runs, the
    // statements and commits until drained.
    eprintln!(
        "bench: closed loop, {} connections, {:?}",
        load.connections, load.seconds
    );
    let statements = Statements::reset(&stack.server_url).await;
    tokio::time::sleep(STATS_REPORTED).await;
    let commits_before = commits(stack).await;
    let queries_before = databases.queries();
    let perf = Perf::start(&stack.log_dir.join("perf.data"));
    let (probe, probe_usage) = sampled(&services, &http, spawned(load.closed(None))).await;
    let cpu = async { perf?.stop(&process_names(&services)).await }.await;
    let probe_step = measure(stack, &databases, &http, &services[1], &probe, None, probe_usage).await?;
    let statements = async {
        let databases = [PAYMENTS, SERVICE_A, SERVICE_B].map(|s| (s, stack.database(s)));
        statements?.read(&databases).await
    }
    .await;
    tokio::time::sleep(STATS_REPORTED).await;
    let commits = async {
        let (before, after, queries) = (commits_before?, commits(stack).await?, databases.queries());
        // Less the benchmark's own lookups in ServiceA's and ServiceB's
        // databases, one transaction each.
        Ok(std::array::from_fn(|i| {
            after[i] - before[i] - (queries[i] - queries_before[i])
        }))
    }
    .await;
    let profile = Profile {
        payments: probe.accepted.len(),
        cpu: cpu.map_err(|e| format!("{e:#}")),
        statements: statements.map_err(|e| format!("{e:#}")),
        commits: commits.map_err(|e: anyhow::Error| format!("{e:#}")),
    };
    let sustained = probe_step.sustained();
    eprintln!(
        "bench: accepted {:.0}/s, copied {:.0}/s, recorded {:.0}/s: sustained {sustained:.0}/s",
        probe_step.accepted_rate, probe_step.copy_rate, probe_step.record_rate
    );

    let mut steps = Vec::new();
    for percent in [25, 50, 75, 100] {
        let rate = sustained * f64::from(percent) / 100.0;
        eprintln!(
            "bench: open loop at {rate:.0}/s ({percent}%) for {:?}",
            load.seconds
        );
        let (outcome, usage) = sampled(&services, &http, spawned(load.open(rate))).await;
        let step = measure(
            stack,
            &databases,
            &http,
            &services[1],
            &outcome,
            Some((percent, rate)),
            usage,
        )
        .await?;
        steps.push(step);
    }

    // The backlog: the consumers stopped while it piles up.
    eprintln!(
        "bench: backlog of {} payments, consumers stopped",
        options.backlog
    );
    let [payments, service_a, service_b] = services;
    service_a.stop().await?;
    service_b.stop().await?;
    let backlog = load.closed(Some(options.backlog)).await;
    let payments_cpu = payments.cpu().unwrap_or_default();
    let (started, from) = (Utc::now(), Instant::now());
    // Together: each one's drain is timed from this start.
    let (service_a, service_b) = tokio::try_join!(
        stack.start(SERVICE_A, &http, &[]),
        stack.start(SERVICE_B, &http, &[])
    )?;
    let services = [payments, service_a, service_b];
    let (drain, mut usage) = sampled(&services, &http, async {
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        let mut handled = [None, None];
        loop {
            databases.handled(&backlog.accepted, &mut handled).await?;
            if handled.iter().all(Option::is_some) || Instant::now() > deadline {
                break anyhow::Ok(handled);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    let handled = drain?;
    // Their CPU from their start, not from when both were ready: by then
    // much of a backlog may be drained.
    let elapsed = from.elapsed().as_secs_f64();
    let before = [payments_cpu, Duration::ZERO, Duration::ZERO];
    for ((service, usage), before) in services.iter().zip(&mut usage).zip(before) {
        let used = service.cpu().unwrap_or_default().saturating_sub(before);
        usage.cpu_percent = 100.0 * used.as_secs_f64() / elapsed;
    }
    // From their start until each handled its first one, and its last.
    let since_start = |pick: fn(&Times) -> Option<DateTime<Utc>>| {
        handled
            .each_ref()
            .map(|times| (pick(times.as_ref()?)? - started).to_std().ok())
    };
    let [a_done, b_done] = since_start(|times| times.values().max().copied());
    let backlog = Backlog {
        payments: backlog.accepted.len(),
        accepted_rate: backlog.accepted.len() as f64 / backlog.elapsed.as_secs_f64(),
        service_a: a_done,
        service_b: b_done,
        first_handled: since_start(|times| times.values().min().copied()),
        usage,
    };
    stop_all(services).await?;

    // The relay alone: the backlog piles up in the outbox of a Payments
    // without its relay (no consumer runs), then a Payments with its relay,
    // its HTTP idle, publishes it.
    eprintln!(
        "bench: the relay alone, {} payments in the outbox",
        options.backlog
    );
    let quiet = stack.start(PAYMENTS, &http, &[("OUTBOX_RELAY", "false")]).await?;
    let piled = load.closed(Some(options.backlog)).await;
    quiet.stop().await?;
    let store = EventStore::new(PgPool::connect(&stack.database_url(PAYMENTS)).await?);
    let waiting = store.backlog(payments_service::relay::CHECKPOINT).await?.events;
    let started = Instant::now();
    let payments = stack.start(PAYMENTS, &http, &[]).await?;
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while store.backlog(payments_service::relay::CHECKPOINT).await?.events > 0 {
        if Instant::now() > deadline {
            bail!("the relay did not publish its backlog within {DRAIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let relay = Relay {
        events: waiting,
        payments: piled.accepted.len(),
        took: started.elapsed(),
    };
    payments.stop().await?;

    Ok(Report {
        ceilings,
        connections: options.connections,
        seconds: options.seconds,
        idle_rss,
        probe: probe_step,
        sustained,
        steps,
        backlog,
        relay,
        traced,
        profile,
    })
}

/// The load on the Payments of `stack`.
fn load_on(stack: &Stack, http: &reqwest::Client, options: &Options) -> Load {
    Load {
        http: http.clone(),
        url: format!("http://127.0.0.1:{}/payments", stack.payments_port),
        connections: options.connections,
        seconds: Duration::from_secs(options.seconds),
    }
}

/// Connections, group joins, the first batches, and the broker's JIT
/// compilers: the closed loop for [`WARM_UP`], until every consumer has
/// its payments. (A broker started for the run compiles for its first
/// minute and a half under this load: without the warm-up its C1 and C2
/// compiler threads took 15% of the CPU samples of the closed loop
/// measured next, half the broker's CPU. With `--otlp` the traced run
/// and its warm-up come first, so the broker has had more than a minute
/// of load before the closed loop; longer would grow the tables the
/// backlog is then drained into.)
async fn warm_up(load: &Load, databases: &Databases, service_a: &Service) -> Result<()> {
    let warm = Load {
        seconds: WARM_UP,
        ..load.clone()
    }
    .closed(None)
    .await;
    drained(databases, &load.http, service_a, &warm.accepted)
        .await
        .map(drop)
}

/// Payments, ServiceA and ServiceB, each with `env` added, once ready.
async fn start_all(stack: &Stack, http: &reqwest::Client, env: &[(&str, &str)]) -> Result<[Service; 3]> {
    Ok([
        stack.start(PAYMENTS, http, env).await?,
        stack.start(SERVICE_A, http, env).await?,
        stack.start(SERVICE_B, http, env).await?,
    ])
}

async fn stop_all(services: [Service; 3]) -> Result<()> {
    for service in services {
        service.stop().await?;
    }
    Ok(())
}

/// The transactions committed so far in Payments', ServiceA's and
/// ServiceB's databases (`pg_stat_database.xact_commit`, read-only ones
/// included).
async fn commits(stack: &Stack) -> Result<[i64; 3]> {
    let mut admin = PgConnection::connect(&stack.server_url).await?;
    let mut found = [0; 3];
    for (n, service) in found.iter_mut().zip([PAYMENTS, SERVICE_A, SERVICE_B]) {
        *n = sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(stack.database(service))
            .fetch_one(&mut admin)
            .await?;
    }
    Ok(found)
}

/// How long PostgreSQL may take to count a backend's transactions in
/// `pg_stat_database`: an idle backend reports them within its 10 s idle
/// interval (`PGSTAT_IDLE_INTERVAL`).
const STATS_REPORTED: Duration = Duration::from_secs(11);

/// Every process of the pipeline, by name, with its pids (comma-separated,
/// as `perf report --pid` takes them), for the CPU profile.
fn process_names(services: &[Service; 3]) -> Vec<(String, String)> {
    let mut pids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (pid, (name, _)) in stack::others_cpu() {
        pids.entry(name.to_owned()).or_default().push(pid.to_string());
    }
    for service in services {
        if let Some(pid) = service.pid() {
            pids.insert(service.name.to_owned(), vec![pid.to_string()]);
        }
    }
    pids.into_iter()
        .map(|(name, pids)| (name, pids.join(",")))
        .collect()
}

/// How many connections the HTTP client keeps: the load's and the lookups'.
const MAX_CONNECTIONS: usize = 1100;

/// The consumers' databases, read for their timestamps.
struct Databases {
    /// Payments', ServiceA's and ServiceB's.
    pools: [PgPool; 3],
    /// The statements sent to each, each a transaction.
    queries: [AtomicI64; 3],
}

impl Databases {
    async fn connect(stack: &Stack) -> Result<Self> {
        let pool = async |service| PgPool::connect(&stack.database_url(service)).await;
        Ok(Self {
            pools: [
                pool(PAYMENTS).await?,
                pool(SERVICE_A).await?,
                pool(SERVICE_B).await?,
            ],
            queries: Default::default(),
        })
    }

    async fn close(&self) {
        for pool in &self.pools {
            pool.close().await;
        }
    }

    fn queries(&self) -> [i64; 3] {
        self.queries.each_ref().map(|n| n.load(Ordering::Relaxed))
    }

    /// Whether ServiceA audited and ServiceB recorded every one of
    /// `accepted`: for each of `handled` (`[ServiceA, ServiceB]`) still
    /// `None`, once it has, when it handled each (its database's clock,
    /// that of its transaction).
    ///
    /// Polled until both have, so it first counts over each one's time
    /// index what it handled since the first was sent, and reads the ids
    /// only once that count is enough: reading a 100,000-payment backlog
    /// each time kept ServiceB's PostgreSQL busy for most of the drain it
    /// measured. The ids are matched here, not with `payment_id = ANY($1)`:
    /// there is no index by payment, and PostgreSQL compares each row with
    /// every id of the array in turn, seconds of a core for a backlog.
    async fn handled(&self, accepted: &[Accepted], handled: &mut [Option<Times>; 2]) -> Result<()> {
        let since = accepted.iter().map(|a| a.sent_at).min().unwrap_or_default();
        for (times, (database, table, time)) in handled.iter_mut().zip([
            (1, "audit_entries", "recorded_at"),
            (2, "processed_notifications", "processed_at"),
        ]) {
            if times.is_some() {
                continue;
            }
            let pool = &self.pools[database];
            self.queries[database].fetch_add(1, Ordering::Relaxed);
            let since_first: i64 =
                sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {time} >= $1"))
                    .bind(since)
                    .fetch_one(pool)
                    .await?;
            if usize::try_from(since_first)? < accepted.len() {
                continue;
            }
            self.queries[database].fetch_add(1, Ordering::Relaxed);
            let all = Self::handled_since(pool, table, time, since).await?;
            let these: Times = accepted
                .iter()
                .filter_map(|a| Some((a.payment_id, *all.get(&a.payment_id)?)))
                .collect();
            *times = (these.len() == accepted.len()).then_some(these);
        }
        Ok(())
    }

    /// When each payment handled since `since` was first handled, read over
    /// `table`'s index on `time`.
    async fn handled_since(pool: &PgPool, table: &str, time: &str, since: DateTime<Utc>) -> Result<Times> {
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(&format!(
            "SELECT payment_id, min({time}) FROM {table} WHERE {time} >= $1 GROUP BY payment_id"
        ))
        .bind(since)
        .fetch_all(pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// When the transaction that stored each of `ids` began (its first
    /// event's `recorded_at`).
    async fn stored_at(&self, ids: &[Uuid]) -> Result<Times> {
        self.queries[0].fetch_add(1, Ordering::Relaxed);
        let streams: HashMap<String, Uuid> = ids.iter().map(|&id| (stream_id(id.into()), id)).collect();
        let names: Vec<&str> = streams.keys().map(String::as_str).collect();
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT stream_id, recorded_at FROM events WHERE version = 1 AND stream_id = ANY($1)",
        )
        .bind(&names)
        .fetch_all(&self.pools[0])
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(stream, at)| Some((*streams.get(&stream)?, at)))
            .collect())
    }
}

/// A time of each payment (when it was sent, stored, handled…), by its id.
type Times = HashMap<Uuid, DateTime<Utc>>;

/// Waits until ServiceB recorded and ServiceA audited and copied every
/// payment of `accepted`; returns when ServiceA copied each, and when
/// ServiceB recorded each.
async fn drained(
    databases: &Databases,
    http: &reqwest::Client,
    service_a: &Service,
    accepted: &[Accepted],
) -> Result<(Times, Times)> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    let mut handled = [None, None];
    let recorded = loop {
        databases.handled(accepted, &mut handled).await?;
        if let [Some(_), Some(recorded)] = &mut handled {
            break std::mem::take(recorded);
        }
        if Instant::now() > deadline {
            bail!("the consumers did not catch up within {DRAIN_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<Uuid> = accepted.iter().map(|a| a.payment_id).collect();
    Ok((copied_at(http, service_a, &ids).await?, recorded))
}

/// When ServiceA's copy of each of `ids` last changed (`Copied-At`), asking
/// again for those it does not have yet.
async fn copied_at(http: &reqwest::Client, service_a: &Service, ids: &[Uuid]) -> Result<Times> {
    let mut found = HashMap::new();
    let mut missing: Vec<Uuid> = ids.to_vec();
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while !missing.is_empty() {
        if Instant::now() > deadline {
            bail!("ServiceA has no copy of {} payments", missing.len());
        }
        let mut lookups = JoinSet::new();
        for chunk in missing.chunks(missing.len().div_ceil(32)) {
            let (http, chunk) = (http.clone(), chunk.to_vec());
            let base = service_a.url("/payments/");
            lookups.spawn(async move {
                let mut found = Vec::new();
                for id in chunk {
                    let copied = async {
                        let response = http.get(format!("{base}{id}")).send().await.ok()?;
                        let value = response.headers().get("copied-at")?.to_str().ok()?;
                        DateTime::parse_from_rfc3339(value).ok()
                    };
                    if let Some(at) = copied.await {
                        found.push((id, at.with_timezone(&Utc)));
                    }
                }
                found
            });
        }
        while let Some(chunk) = lookups.join_next().await {
            found.extend(chunk?);
        }
        missing.retain(|id| !found.contains_key(id));
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(found)
}

/// `load` on a task of its own: sampling never holds it up.
async fn spawned(load: impl Future<Output = Outcome> + Send + 'static) -> Outcome {
    tokio::spawn(load).await.expect("load task")
}

/// Runs `load` while sampling the services' memory, lag and CPU time.
async fn sampled<T>(
    services: &[Service; 3],
    http: &reqwest::Client,
    load: impl Future<Output = T>,
) -> (T, Vec<Usage>) {
    let started = Instant::now();
    let machine_before = stack::machine_cpu();
    let others_before = stack::others_cpu();
    let cpu_before: Vec<_> = services.iter().map(|s| s.cpu().unwrap_or_default()).collect();
    let mut usage: Vec<Usage> = services
        .iter()
        .map(|s| Usage {
            service: s.name.to_owned(),
            ..Usage::default()
        })
        .collect();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(load);
    let output = loop {
        tokio::select! {
            output = &mut load => break output,
            _ = tick.tick() => {
                for (service, usage) in services.iter().zip(&mut usage) {
                    usage.max_rss = usage.max_rss.max(service.rss().unwrap_or(0));
                    if service.name != PAYMENTS && let Some(lag) = service.lag(http).await {
                        usage.max_lag = usage.max_lag.max(lag);
                    }
                }
            }
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    for ((service, usage), before) in services.iter().zip(&mut usage).zip(cpu_before) {
        let used = service.cpu().unwrap_or_default().saturating_sub(before);
        usage.cpu_percent = 100.0 * used.as_secs_f64() / elapsed;
    }
    // The broker, PostgreSQL and the load generator: a process that
    // started meanwhile counts whole, one that ended is missed.
    let others_after = stack::others_cpu();
    for name in stack::OTHERS {
        let used: f64 = others_after
            .iter()
            .filter(|(_, (n, _))| *n == name)
            .map(|(pid, (_, after))| {
                let before = others_before.get(pid).map(|(_, b)| *b).unwrap_or_default();
                after.saturating_sub(before).as_secs_f64()
            })
            .sum();
        usage.push(Usage {
            service: name.to_owned(),
            cpu_percent: 100.0 * used / elapsed,
            ..Usage::default()
        });
    }
    // Every process on the machine.
    if let (Some(before), Some(after)) = (machine_before, stack::machine_cpu()) {
        usage.push(Usage {
            service: report::MACHINE.to_owned(),
            cpu_percent: 100.0 * (after - before).as_secs_f64() / elapsed,
            ..Usage::default()
        });
    }
    (output, usage)
}

/// Waits for the consumers to catch up with `outcome`, then reads when each
/// payment reached ServiceA's copy and ServiceB's records.
async fn measure(
    stack: &Stack,
    databases: &Databases,
    http: &reqwest::Client,
    service_a: &Service,
    outcome: &Outcome,
    offered: Option<(u32, f64)>,
    usage: Vec<Usage>,
) -> Result<Step> {
    let (copied, recorded) = drained(databases, http, service_a, &outcome.accepted).await?;
    let ids: Vec<Uuid> = outcome.accepted.iter().map(|a| a.payment_id).collect();
    let sent: Times = outcome
        .accepted
        .iter()
        .map(|a| (a.payment_id, a.sent_at))
        .collect();
    let first_sent = *sent.values().min().context("nothing accepted")?;
    let stored = databases.stored_at(&ids).await?;
    let produced = produced_at(stack).await?;
    let between = |from: &Times, to: &Times| -> Summary {
        let ms = |id| Some((*to.get(id)? - *from.get(id)?).num_microseconds()? as f64 / 1000.0);
        Summary::of(ids.iter().filter_map(ms).collect())
    };
    // How fast each followed: payments over the time from the first sent
    // to the last it had.
    let rate = |at: &Times| -> f64 {
        let last = at.values().max().copied().unwrap_or(first_sent);
        let seconds = (last - first_sent).num_milliseconds() as f64 / 1000.0;
        at.len() as f64 / seconds.max(outcome.elapsed.as_secs_f64())
    };
    Ok(Step {
        offered,
        accepted: outcome.accepted.len(),
        failed: outcome.failed,
        skipped: outcome.skipped,
        accepted_rate: outcome.accepted.len() as f64 / outcome.elapsed.as_secs_f64(),
        copy_rate: rate(&copied),
        record_rate: rate(&recorded),
        to_201: Summary::of(
            outcome
                .accepted
                .iter()
                .map(|a| a.latency.as_secs_f64() * 1000.0)
                .collect(),
        ),
        to_copy: between(&sent, &copied),
        to_record: between(&sent, &recorded),
        hops: [
            between(&sent, &stored),
            between(&stored, &produced),
            between(&produced, &copied),
            between(&produced, &recorded),
        ],
        usage,
    })
}

/// When the relay produced each payment's notification (the record's
/// timestamp, which the producer sets when it is sent), by payment.
async fn produced_at(stack: &Stack) -> Result<Times> {
    let kafka = KafkaConfig {
        bootstrap_servers: stack.bootstrap.clone(),
        ..KafkaConfig::local()
    };
    let records = integration_tests::all_records(&kafka, &stack.topic("notifications"), Duration::ZERO).await;
    Ok(records
        .iter()
        .filter_map(|record| {
            let id = std::str::from_utf8(record.key()?).ok()?.parse().ok()?;
            let at = DateTime::from_timestamp_millis(record.timestamp().to_millis()?)?;
            Some((id, at))
        })
        .collect())
}
