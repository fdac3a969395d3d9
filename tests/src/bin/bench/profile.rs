//! Where the time goes while the pipeline runs flat out (the closed loop):
//! a machine-wide CPU profile from `perf record` (when perf is installed),
//! and what each service asks PostgreSQL per payment, from the server's
//! `pg_stat_statements` (loaded by `cargo xtask pg up`). Either one that is
//! missing is reported as such, not guessed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

/// Samples per second and core: enough for a 10 s profile, too few to load
/// the machine being measured.
const FREQUENCY: &str = "499";
/// The least share of all samples a symbol needs to be listed, in percent.
const SYMBOL_PERCENT: &str = "0.5";
/// Statements listed per service.
const TOP_STATEMENTS: usize = 6;

/// A `perf record` of every core, running.
pub struct Perf {
    child: Child,
    data: PathBuf,
}

impl Perf {
    /// Starts recording, or says why it cannot.
    pub fn start(data: &Path) -> Result<Self> {
        let child = Command::new("perf")
            .args([
                "record",
                "--all-cpus",
                "--event",
                "cpu-clock",
                "--freq",
                FREQUENCY,
            ])
            .arg("--output")
            .arg(data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("perf is not installed (apt-get install linux-perf)")?;
        Ok(Self {
            child,
            data: data.to_owned(),
        })
    }

    /// Stops recording and reports, with `perf report` itself, the share of
    /// each thread name and, for each of `processes` (a name and its pids,
    /// comma-separated), its hottest symbols.
    pub async fn stop(self, processes: &[(String, String)]) -> Result<CpuProfile> {
        let pid = self.child.id().context("perf exited early")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGINT,
        )?;
        let output = self.child.wait_with_output().await?;
        if !self.data.exists() {
            bail!(
                "perf record failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let report = async |args: &[&str]| -> Result<String> {
            let out = Command::new("perf")
                .args([
                    "report",
                    "--stdio",
                    "--no-children",
                    "--percentage",
                    "absolute",
                    "--input",
                ])
                .arg(&self.data)
                .args(args)
                .stderr(Stdio::null())
                .output()
                .await?;
            if !out.status.success() {
                bail!("perf report failed ({})", out.status);
            }
            // perf's own text, without its comment header.
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
                .collect::<Vec<_>>()
                .join("\n"))
        };
        let mut hottest = Vec::new();
        for (name, pids) in processes {
            let symbols = report(&[
                "--pid",
                pids,
                "--sort",
                "dso,sym",
                "--percent-limit",
                SYMBOL_PERCENT,
            ])
            .await?;
            hottest.push((name.clone(), symbols));
        }
        Ok(CpuProfile {
            commands: report(&["--sort", "comm", "--percent-limit", "1"]).await?,
            processes: hottest,
        })
    }
}

/// `perf report`'s text: every thread name's share of the samples, and
/// each pipeline process's hottest symbols.
#[derive(Debug, Default)]
pub struct CpuProfile {
    pub commands: String,
    pub processes: Vec<(String, String)>,
}

/// What one service asked PostgreSQL.
#[derive(Debug, Default)]
pub struct ServiceStatements {
    pub service: String,
    /// Statements run (each one a round trip), `BEGIN` and `COMMIT` included.
    pub calls: i64,
    pub exec_ms: f64,
    pub wal_bytes: f64,
    /// The statements run most often: (calls, text).
    pub top: Vec<(i64, String)>,
}

/// PostgreSQL's statement statistics, reset for a measurement.
pub struct Statements {
    server_url: String,
}

impl Statements {
    /// Clears the server's statement statistics, or says why it cannot.
    pub async fn reset(server_url: &str) -> Result<Self> {
        let mut conn = PgConnection::connect(server_url).await?;
        sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .execute(&mut conn)
            .await?;
        sqlx::query("SELECT pg_stat_statements_reset()")
            .execute(&mut conn)
            .await
            .context("pg_stat_statements is not loaded (shared_preload_libraries)")?;
        Ok(Self {
            server_url: server_url.to_owned(),
        })
    }

    /// What each of `databases` (service, database name) ran since the reset.
    pub async fn read(&self, databases: &[(&str, String)]) -> Result<Vec<ServiceStatements>> {
        let mut conn = PgConnection::connect(&self.server_url).await?;
        let mut found = Vec::new();
        for (service, database) in databases {
            let rows: Vec<(i64, f64, f64, String)> = sqlx::query_as(
                "SELECT s.calls, s.total_exec_time, s.wal_bytes::float8, \
                        regexp_replace(s.query, '\\s+', ' ', 'g') \
                 FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid \
                 WHERE d.datname = $1 ORDER BY s.calls DESC",
            )
            .bind(database)
            .fetch_all(&mut conn)
            .await?;
            found.push(ServiceStatements {
                service: (*service).to_owned(),
                calls: rows.iter().map(|r| r.0).sum(),
                exec_ms: rows.iter().map(|r| r.1).sum(),
                wal_bytes: rows.iter().map(|r| r.2).sum(),
                top: rows
                    .into_iter()
                    .take(TOP_STATEMENTS)
                    .map(|(calls, _, _, text)| (calls, text))
                    .collect(),
            });
        }
        Ok(found)
    }
}

/// The profile of the closed loop, or why a part of it is missing.
#[derive(Debug)]
pub struct Profile {
    pub payments: usize,
    pub cpu: Result<CpuProfile, String>,
    pub statements: Result<Vec<ServiceStatements>, String>,
    /// Transactions committed in Payments', ServiceA's and ServiceB's
    /// databases until the consumers caught up (`pg_stat_database`).
    pub commits: Result<[i64; 3], String>,
}

impl Profile {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let n = self.payments.max(1) as f64;
        let _ = writeln!(md, "## Profile of the closed loop\n");
        let _ = writeln!(
            md,
            "While the closed loop ran ({} payments accepted): every core sampled by `perf record` \
             ({FREQUENCY} Hz; shares of all samples), and PostgreSQL's \
             `pg_stat_statements`, divided by the payments.\n",
            self.payments
        );
        match &self.cpu {
            Ok(cpu) => {
                let _ = writeln!(
                    md,
                    "`perf report --sort comm` (thread names; `swapper` is the idle loop):\n"
                );
                let _ = writeln!(md, "```text\n{}\n```\n", cpu.commands);
                for (process, symbols) in &cpu.processes {
                    let _ = writeln!(
                        md,
                        "<details><summary>{process}: hottest symbols (`perf report --pid … --sort dso,sym`)</summary>\n"
                    );
                    let _ = writeln!(md, "```text\n{symbols}\n```\n\n</details>\n");
                }
            }
            Err(why) => {
                let _ = writeln!(md, "No CPU profile: {why}.\n");
            }
        }
        match &self.statements {
            Ok(services) => {
                let _ = writeln!(
                    md,
                    "| service | statements (round trips) per payment | commits per payment | execution ms per payment | WAL bytes per payment |"
                );
                let _ = writeln!(md, "|---|---:|---:|---:|---:|");
                for (i, s) in services.iter().enumerate() {
                    let commits = self
                        .commits
                        .as_ref()
                        .map_or_else(|why| why.clone(), |c| format!("{:.2}", c[i] as f64 / n));
                    let _ = writeln!(
                        md,
                        "| {} | {:.2} | {commits} | {:.3} | {:.0} |",
                        s.service,
                        s.calls as f64 / n,
                        s.exec_ms / n,
                        s.wal_bytes / n
                    );
                }
                let _ = writeln!(md);
                for s in services {
                    let _ = writeln!(
                        md,
                        "<details><summary>{}: statements run most</summary>\n",
                        s.service
                    );
                    let _ = writeln!(md, "| per payment | statement |");
                    let _ = writeln!(md, "|---:|---|");
                    for (calls, text) in &s.top {
                        let text: String = text.chars().take(110).collect();
                        let _ = writeln!(
                            md,
                            "| {:.2} | `{}` |",
                            *calls as f64 / n,
                            text.replace('|', "\\|").replace('`', "'")
                        );
                    }
                    let _ = writeln!(md, "\n</details>\n");
                }
            }
            Err(why) => {
                let _ = writeln!(md, "No statement statistics: {why}.\n");
            }
        }
        md
    }
}
