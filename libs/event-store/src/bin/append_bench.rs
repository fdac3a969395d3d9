//! `append_bench`: how many single-event appends per second the event store
//! takes, beside the rate at which the same database commits plain
//! single-row inserts, at 1, 8 and 32 concurrent writers.
//!
//! ```sh
//! cargo xtask pg up
//! cargo run --release -p event-store --features test-util --bin append_bench
//! # options, with their defaults:
//! cargo run --release -p event-store --features test-util --bin append_bench -- \
//!     --seconds 5 --rounds 3 --writers 1,8,32
//! ```
//!
//! It connects to `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`, the PostgreSQL of `cargo
//! xtask pg up`), creates a database of its own, `bench_<random>`, migrates
//! it, and drops it at the end, on failure and on ctrl-c too. Server settings
//! are left alone: fsync and synchronous commit stay as configured (on).
//!
//! Two kinds of write are measured at each number of writers, every writer a
//! task with a pooled connection of its own:
//!
//! - **raw**: one autocommit `INSERT` of one row (a transaction of its own)
//!   into a plain table shaped like an event (bigint identity key, text, uuid,
//!   jsonb, timestamptz): what the database can commit, the ceiling.
//! - **store**: [`EventStore::append`] of one event. Each writer appends to a
//!   stream of its own expecting the version it last wrote
//!   (`ExpectedVersion::Exact`, `NoStream` for the first): one writer per
//!   aggregate, the realistic case, so there are no conflicts.
//!
//! Each measurement counts the writes completed during `--seconds`, after a
//! one-second warm-up. Rounds repeat every measurement, raw and store
//! alternating (and which goes first alternating from round to round) so
//! machine noise hits both; the table gives the median of the rounds and the
//! ratio store / raw. The project's goal: at least 70% of raw at 32 writers.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use event_store::{EventMetadata, EventStore, ExpectedVersion, NewEvent};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::task::JoinSet;
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const WARM_UP: Duration = Duration::from_secs(1);
/// The project's goal for the ratio store / raw at the most writers.
const GOAL: f64 = 0.70;

const USAGE: &str = "usage: append_bench [--seconds N] [--rounds N] [--writers 1,8,32]";

/// The raw baseline's table: the shape of an event row without the event
/// store's stream, version and constraints.
const CREATE_RAW_TABLE: &str = "CREATE TABLE raw_inserts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT        NOT NULL,
    ref_id      UUID        NOT NULL,
    data        JSONB       NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)";
const INSERT_RAW: &str = "INSERT INTO raw_inserts (kind, ref_id, data) VALUES ($1, $2, $3)";
const EVENT_TYPE: &str = "bench.payment-received";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("{e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
    let server = PgConnectOptions::from_str(url.trim())?;

    let started = Instant::now();
    let mut admin = server.connect().await?;
    let name = format!("bench_{}", Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await?;
    eprintln!("created database {name}");

    let outcome = tokio::select! {
        outcome = run(server.clone().database(&name), &options, &mut admin) => outcome,
        _ = tokio::signal::ctrl_c() => Err("interrupted by ctrl-c".into()),
    };

    // FORCE: ends the pool's connections, should any still be open.
    let dropped = sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await;
    admin.close().await.ok();
    outcome?;
    dropped?;
    eprintln!(
        "dropped database {name}; took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Measures every (writers, kind) `options.rounds` times and prints the table.
async fn run(
    database: PgConnectOptions,
    options: &Options,
    admin: &mut PgConnection,
) -> Result<(), BoxError> {
    let most_writers = options.writers.iter().copied().max().unwrap_or(1);
    // As `EventStore::connect` sets it up, every connection open at once.
    let pool = service_kit::startup::pool_options(most_writers)
        .min_connections(most_writers)
        .connect_with(database)
        .await?;
    let store = EventStore::new(pool);
    store.migrate().await?;
    sqlx::query(CREATE_RAW_TABLE).execute(store.pool()).await?;

    print_setup(options, admin).await?;

    let mut rates: BTreeMap<(u32, Kind), Vec<f64>> = BTreeMap::new();
    for round in 1..=options.rounds {
        for &writers in &options.writers {
            let order = if round % 2 == 1 {
                [Kind::Raw, Kind::Store]
            } else {
                [Kind::Store, Kind::Raw]
            };
            for kind in order {
                let streams = format!("r{round}-w{writers}");
                let rate = measure(&store, kind, writers, &streams, options.window).await?;
                eprintln!(
                    "round {round}/{}: {writers:>3} writers, {kind:<5} {rate:>8.0}/s",
                    options.rounds
                );
                rates.entry((writers, kind)).or_default().push(rate);
            }
        }
    }
    store.pool().close().await;

    println!();
    println!("| writers | raw INSERT+COMMIT/s | event store appends/s | ratio |");
    println!("|--------:|--------------------:|----------------------:|------:|");
    let mut ratio_at_most = None;
    for &writers in &options.writers {
        let raw = median(&rates[&(writers, Kind::Raw)]);
        let appends = median(&rates[&(writers, Kind::Store)]);
        let ratio = appends / raw;
        println!("| {writers} | {raw:.0} | {appends:.0} | {:.0}% |", ratio * 100.0);
        if writers == most_writers {
            ratio_at_most = Some(ratio);
        }
    }
    if let Some(ratio) = ratio_at_most {
        println!();
        println!(
            "Goal, event store >= {:.0}% of raw at {most_writers} writers: {} ({:.0}%).",
            GOAL * 100.0,
            if ratio >= GOAL { "met" } else { "NOT met" },
            ratio * 100.0
        );
    }
    Ok(())
}

/// What was measured, and on what: printed above the table.
async fn print_setup(options: &Options, admin: &mut PgConnection) -> Result<(), BoxError> {
    let mut settings = Vec::new();
    for setting in ["fsync", "synchronous_commit", "wal_sync_method", "commit_delay"] {
        let value: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut *admin)
            .await?;
        settings.push(format!("{setting}={value}"));
    }
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut *admin)
        .await?;
    println!("# Event store appends beside raw INSERT+COMMIT");
    println!();
    println!("- PostgreSQL {version}: {}", settings.join(", "));
    println!(
        "- client: {} build, {} CPUs",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    println!("- raw: one autocommit single-row INSERT (bigint identity, text, uuid, jsonb, timestamptz)");
    println!(
        "- event store: `append` of one event; a stream per writer, \
         ExpectedVersion::Exact(next) (NoStream for its first)"
    );
    println!(
        "- {} round(s) of {} s per (writers, kind) after {} s warm-up, raw and store alternating; \
         median of the rounds; pool of {} connections",
        options.rounds,
        options.window.as_secs(),
        WARM_UP.as_secs(),
        options.writers.iter().copied().max().unwrap_or(1),
    );
    Ok(())
}

/// Writes/s of `writers` concurrent writers of `kind`: the writes completed
/// between the end of the warm-up and the end of the window.
async fn measure(
    store: &EventStore,
    kind: Kind,
    writers: u32,
    streams: &str,
    window: Duration,
) -> Result<f64, BoxError> {
    let counting_from = Instant::now() + WARM_UP;
    let until = counting_from + window;
    // Dropping the set (ctrl-c) aborts the writers.
    let mut tasks = JoinSet::new();
    for w in 0..writers {
        let mut writer = Writer {
            store: store.clone(),
            kind,
            stream: format!("{streams}-{w}"),
            version: 0,
        };
        tasks.spawn(async move {
            let mut counted: u64 = 0;
            loop {
                writer.write().await?;
                let now = Instant::now();
                if now >= until {
                    break;
                }
                if now >= counting_from {
                    counted += 1;
                }
            }
            Ok::<_, BoxError>(counted)
        });
    }
    let mut total: u64 = 0;
    while let Some(counted) = tasks.join_next().await {
        total += counted??;
    }
    Ok(total as f64 / window.as_secs_f64())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Raw,
    Store,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Padded by the caller's width.
        f.pad(match self {
            Self::Raw => "raw",
            Self::Store => "store",
        })
    }
}

/// One writer: raw inserts, or appends to its own stream.
#[derive(Debug)]
struct Writer {
    store: EventStore,
    kind: Kind,
    stream: String,
    /// The stream's version after this writer's last append; 0: no stream yet.
    version: u64,
}

impl Writer {
    async fn write(&mut self) -> Result<(), BoxError> {
        let data = payment();
        match self.kind {
            Kind::Raw => {
                sqlx::query(INSERT_RAW)
                    .bind(EVENT_TYPE)
                    .bind(Uuid::now_v7())
                    .bind(sqlx::types::Json(data))
                    .execute(self.store.pool())
                    .await?;
            }
            Kind::Store => {
                let expected = match self.version {
                    0 => ExpectedVersion::NoStream,
                    version => ExpectedVersion::Exact(version),
                };
                let event = NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: EVENT_TYPE.to_owned(),
                    schema_version: 1,
                    data,
                    metadata: EventMetadata {
                        correlation_id: Uuid::now_v7(),
                        causation_id: None,
                        ..EventMetadata::default()
                    },
                };
                let stored = self.store.append(&self.stream, expected, &[event]).await?;
                self.version = stored.last().map_or(self.version, |e| e.version);
            }
        }
        Ok(())
    }
}

/// A payload the size and shape of a payment event.
fn payment() -> serde_json::Value {
    json!({
        "payment_id": Uuid::now_v7(),
        "customer_id": "c-1",
        "order_id": "o-1",
        "amount": 1999,
        "currency": "EUR",
        "received_at": chrono::Utc::now(),
    })
}

/// The median; the mean of the middle two for an even count.
fn median(rates: &[f64]) -> f64 {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The command line.
#[derive(Debug)]
struct Options {
    /// How long each measurement counts, after the warm-up.
    window: Duration,
    rounds: u32,
    /// The numbers of concurrent writers, in the order measured.
    writers: Vec<u32>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Self {
            window: Duration::from_secs(5),
            rounds: 3,
            writers: vec![1, 8, 32],
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--seconds" => options.window = Duration::from_secs(positive(&value()?)?.into()),
                "--rounds" => options.rounds = positive(&value()?)?,
                "--writers" => {
                    options.writers = value()?.split(',').map(positive).collect::<Result<_, _>>()?;
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(options)
    }
}

fn positive(s: &str) -> Result<u32, String> {
    match s.trim().parse() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        Options::parse(args.iter().map(|a| (*a).to_owned()))
    }

    #[test]
    fn defaults_and_overrides() {
        let defaults = parse(&[]).expect("defaults");
        assert_eq!(
            (defaults.window, defaults.rounds, defaults.writers),
            (Duration::from_secs(5), 3, vec![1, 8, 32])
        );
        let set = parse(&["--seconds", "2", "--rounds", "4", "--writers", "2,16"]).expect("options");
        assert_eq!(
            (set.window, set.rounds, set.writers),
            (Duration::from_secs(2), 4, vec![2, 16])
        );
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(parse(&["--seconds"]).is_err());
        assert!(parse(&["--seconds", "0"]).is_err());
        assert!(parse(&["--writers", "1,x"]).is_err());
        assert!(parse(&["--fast"]).is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
