//! The three services as release processes on their own topics and
//! databases, and what the benchmark reads of them: readiness, consumer
//! lag, memory and CPU time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use service_kit::auth::Token;
use service_kit::config::{DatabaseUrl, Secret};
use service_kit::postgres_access;
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

/// What every service of one run shares: the broker, the topics, the
/// databases (one each, created for the run, each owned by a role of the
/// same name that the service logs in as) and the log directory.
pub struct Stack {
    pub bootstrap: String,
    /// The server, as a superuser.
    pub server_url: String,
    /// The run's roles' password.
    password: Secret,
    pub run_id: String,
    pub bin_dir: PathBuf,
    pub log_dir: PathBuf,
    pub payments_port: u16,
}

/// A service process.
pub struct Service {
    pub name: &'static str,
    pub port: u16,
    child: Child,
}

pub const PAYMENTS: &str = "payments-service";
pub const SERVICE_A: &str = "service-a";
pub const SERVICE_B: &str = "service-b";

impl Stack {
    pub fn new(bootstrap: String, server_url: String, bin_dir: PathBuf, log_dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&log_dir)?;
        Ok(Self {
            bootstrap,
            server_url,
            password: Secret::new(Token::generate().expose()),
            run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            bin_dir,
            log_dir,
            payments_port: free_port()?,
        })
    }

    /// The run's topic of `kind` (`notifications`, `state`).
    pub fn topic(&self, kind: &str) -> String {
        format!("bench-{}.{kind}", self.run_id)
    }

    /// The database of `service` for this run.
    pub fn database(&self, service: &str) -> String {
        format!("bench_{}_{}", self.run_id, service.replace('-', "_"))
    }

    /// How `service` reaches its database, as its role.
    pub fn database_url(&self, service: &str) -> String {
        let server: DatabaseUrl = self.server_url.parse().expect("the server's URL");
        postgres_access::login(&server, &self.database(service), &self.password).expose()
    }

    /// Creates the run's roles and databases.
    pub async fn create_databases(&self) -> Result<()> {
        let server: DatabaseUrl = self.server_url.parse()?;
        for service in [PAYMENTS, SERVICE_A, SERVICE_B] {
            postgres_access::provision(&server, &self.database(service), &self.password).await?;
        }
        Ok(())
    }

    /// Drops the run's databases and roles.
    pub async fn drop_databases(&self) -> Result<()> {
        let mut admin = PgConnection::connect(&self.server_url).await?;
        for service in [PAYMENTS, SERVICE_A, SERVICE_B] {
            let name = self.database(service);
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
            sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
                .execute(&mut admin)
                .await?;
        }
        Ok(())
    }

    /// Starts `name` (a binary of `bin_dir`) with `env` added to its
    /// settings, and waits until it answers `/ready`.
    pub async fn start(
        &self,
        name: &'static str,
        http: &reqwest::Client,
        env: &[(&str, &str)],
    ) -> Result<Service> {
        let port = if name == PAYMENTS {
            self.payments_port
        } else {
            free_port()?
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{name}.log")))?;
        let mut command = Command::new(self.bin_dir.join(name));
        command
            .envs(integration_tests::credentials().env_of(name))
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("DATABASE_URL", self.database_url(name))
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("TOPIC_NOTIFICATIONS", self.topic("notifications"))
            .env("TOPIC_STATE", self.topic("state"))
            .env("GROUP_ID", format!("bench-{}-{name}", self.run_id))
            .env("PAYMENTS_URL", format!("http://127.0.0.1:{}", self.payments_port))
            // The lag figures the benchmark samples.
            .env("KAFKA_STATISTICS_INTERVAL_MS", "500")
            // Warnings only: logging every record would be what is measured.
            // `BENCH_RUST_LOG` replaces it, with `KAFKA_DEBUG` (passed on like
            // the rest of the environment) to see inside librdkafka.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("cannot start {name}"))?;
        let service = Service { name, port, child };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = http
                .get(service.url("/ready"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(service);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready after 120 s; see {}",
                    self.log_dir.join(format!("{name}.log")).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Service {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, and waits for it to exit.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }

    /// Resident memory, in bytes.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// CPU time used so far (user and system).
    pub fn cpu(&self) -> Option<Duration> {
        cpu_time(Path::new(&format!("/proc/{}/stat", self.pid()?)))
    }

    /// The sum of the `kafka_consumer_lag` series it serves (waiting at most
    /// a second: a sample, not worth holding the sampler up for).
    pub async fn lag(&self, http: &reqwest::Client) -> Option<i64> {
        let url = self.url("/metrics");
        let sum = integration_tests::metric_sum_at(http, &url, "kafka_consumer_lag", "");
        tokio::time::timeout(Duration::from_secs(1), sum).await.ok()?
    }
}

/// utime + stime of `/proc/<pid>/stat`.
fn cpu_time(stat: &Path) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat).ok()?;
    // The command name (field 2) may hold spaces; the rest follows its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The CPU time every core of the machine spent busy so far (all but idle
/// and I/O wait, from `/proc/stat`).
pub fn machine_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(Duration::from_secs_f64((total - idle) as f64 / per_second as f64))
}

/// The processes a payment goes through besides the services, by name: the
/// broker (the JVM running `kafka.Kafka`), PostgreSQL (every `postgres`
/// process) and this benchmark (the load generator).
pub const OTHERS: [&str; 3] = ["kafka broker", "postgresql", "load generator"];

/// The CPU time used so far by each process of [`OTHERS`], by pid.
pub fn others_cpu() -> HashMap<u32, (&'static str, Duration)> {
    let me = std::process::id();
    let mut found = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let name = match comm.trim() {
            _ if pid == me => OTHERS[2],
            "postgres" => OTHERS[1],
            "java" => {
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if !String::from_utf8_lossy(&cmdline).contains("kafka.Kafka") {
                    continue;
                }
                OTHERS[0]
            }
            _ => continue,
        };
        if let Some(cpu) = cpu_time(&entry.path().join("stat")) {
            found.insert(pid, (name, cpu));
        }
    }
    found
}

/// A port nothing listens on right now, on loopback.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
