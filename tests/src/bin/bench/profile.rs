//! Where the time goes while the pipeline runs flat out (the closed loop):
//! a machine-wide CPU profile from `perf record` (when perf is installed),
//! and what each service asks PostgreSQL per payment, from the server's
//! `pg_stat_statements` (loaded by `cargo xtask pg up`). Either one that is
//! missing is reported as such, not guessed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use sqlx::{Connection, PgConnection};
use tokio::process::{Child, Command};

/// Samples per second and core: enough for a 10 s profile, too few to load
/// the machine being measured.
const FREQUENCY: &str = "499";
/// Symbols listed per process.
const TOP_SYMBOLS: usize = 8;
/// Statements listed per service.
const TOP_STATEMENTS: usize = 6;

/// A `perf record` of every core, running.
pub struct Perf {
    child: Child,
    data: PathBuf,
}

/// A process of the pipeline, or the idle loop, as the profile names them.
pub const IDLE: &str = "idle";
const OTHER: &str = "other";

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

    /// Stops recording and attributes every sample to a process: `names`
    /// maps pids to the names the report uses; pid 0 is the idle loop.
    pub async fn stop(self, names: &HashMap<u32, String>) -> Result<CpuProfile> {
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
        let script = Command::new("perf")
            .args(["script", "--fields", "pid,ip,sym,dso", "--input"])
            .arg(&self.data)
            .stderr(Stdio::null())
            .output()
            .await?;
        if !script.status.success() {
            bail!("perf script failed ({})", script.status);
        }
        Ok(CpuProfile::from_script(
            &String::from_utf8_lossy(&script.stdout),
            names,
        ))
    }
}

/// Samples per process and, within each, per symbol.
#[derive(Debug, Default)]
pub struct CpuProfile {
    pub samples: u64,
    /// The busiest first.
    pub processes: Vec<ProcessSamples>,
}

/// The samples of one process.
#[derive(Debug)]
pub struct ProcessSamples {
    pub name: String,
    pub samples: u64,
    /// Of `samples`, those in the kernel (system calls, interrupts).
    pub kernel: u64,
    /// Its hottest symbols with their samples, the hottest first.
    pub symbols: Vec<(String, u64)>,
}

impl CpuProfile {
    /// Parses `perf script --fields pid,ip,sym,dso` lines:
    /// `  4321  ffffffff816b8a85 vfs_write ([kernel.kallsyms])`.
    fn from_script(script: &str, names: &HashMap<u32, String>) -> Self {
        let mut by_process: HashMap<&str, (u64, u64, HashMap<String, u64>)> = HashMap::new();
        let mut samples = 0;
        for line in script.lines() {
            let Some(sample) = Sample::parse(line) else {
                continue;
            };
            samples += 1;
            let process = match sample.pid {
                0 => IDLE,
                pid => names.get(&pid).map_or(OTHER, String::as_str),
            };
            let entry = by_process.entry(process).or_default();
            entry.0 += 1;
            if sample.dso == "[kernel.kallsyms]" {
                entry.1 += 1;
            }
            *entry.2.entry(sample.symbol()).or_default() += 1;
        }
        let mut processes: Vec<_> = by_process
            .into_iter()
            .map(|(process, (total, kernel, symbols))| {
                let mut symbols: Vec<(String, u64)> = symbols.into_iter().collect();
                symbols.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
                symbols.truncate(TOP_SYMBOLS);
                ProcessSamples {
                    name: process.to_owned(),
                    samples: total,
                    kernel,
                    symbols,
                }
            })
            .collect();
        processes.sort_by(|a, b| b.samples.cmp(&a.samples).then_with(|| a.name.cmp(&b.name)));
        Self { samples, processes }
    }
}

/// One line of `perf script`.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    pid: u32,
    sym: &'a str,
    dso: &'a str,
}

impl<'a> Sample<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let line = line.trim();
        let (pid, rest) = line.split_once(char::is_whitespace)?;
        let pid = pid.parse().ok()?;
        // The instruction pointer, then the symbol (which may hold spaces),
        // then the shared object in parentheses.
        let (_ip, rest) = rest.trim_start().split_once(char::is_whitespace)?;
        let (sym, dso) = rest.rsplit_once(" (")?;
        Some(Self {
            pid,
            sym: sym.trim(),
            dso: dso.strip_suffix(')')?,
        })
    }

    /// `symbol (object)`, the object by its file name, a Rust symbol
    /// without its hash.
    fn symbol(&self) -> String {
        let object = self.dso.rsplit('/').next().unwrap_or(self.dso);
        let sym = match self.sym.rsplit_once("::h") {
            Some((path, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => path,
            _ => self.sym,
        };
        format!("{sym} ({object})")
    }
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
}

impl Profile {
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let n = self.payments.max(1) as f64;
        let _ = writeln!(md, "## Profile of the closed loop\n");
        let _ = writeln!(
            md,
            "While the closed loop ran ({} payments accepted): every core sampled by `perf record` \
             ({FREQUENCY} Hz, samples attributed to processes by pid), and PostgreSQL's \
             `pg_stat_statements`, divided by the payments.\n",
            self.payments
        );
        match &self.cpu {
            Ok(cpu) => {
                let total = cpu.samples.max(1) as f64;
                let _ = writeln!(md, "| process | share of all samples | of it in the kernel |");
                let _ = writeln!(md, "|---|---:|---:|");
                for p in &cpu.processes {
                    let _ = writeln!(
                        md,
                        "| {} | {:.1}% | {:.0}% |",
                        p.name,
                        100.0 * p.samples as f64 / total,
                        100.0 * p.kernel as f64 / p.samples.max(1) as f64
                    );
                }
                let _ = writeln!(md);
                for ProcessSamples {
                    name: process,
                    samples,
                    symbols,
                    ..
                } in &cpu.processes
                {
                    if process == IDLE || process == OTHER {
                        continue;
                    }
                    let _ = writeln!(md, "<details><summary>{process}: hottest symbols</summary>\n");
                    let _ = writeln!(md, "| symbol | share of {process} |");
                    let _ = writeln!(md, "|---|---:|");
                    for (symbol, count) in symbols {
                        let _ = writeln!(
                            md,
                            "| `{}` | {:.1}% |",
                            symbol.replace('|', "\\|").replace('`', "'"),
                            100.0 * *count as f64 / (*samples).max(1) as f64
                        );
                    }
                    let _ = writeln!(md, "\n</details>\n");
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
                    "| service | statements (round trips) per payment | execution ms per payment | WAL bytes per payment |"
                );
                let _ = writeln!(md, "|---|---:|---:|---:|");
                for s in services {
                    let _ = writeln!(
                        md,
                        "| {} | {:.2} | {:.3} | {:.0} |",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_perf_script_line_is_split_into_pid_symbol_and_object() {
        assert_eq!(
            Sample::parse("   14121  ffffffff816b8a85 vfs_write ([kernel.kallsyms])"),
            Some(Sample {
                pid: 14121,
                sym: "vfs_write",
                dso: "[kernel.kallsyms]"
            })
        );
        let rust = Sample::parse(
            "77 55d0c0 <tokio::runtime::task::Task<S> as core::ops::Drop>::drop::h0123456789abcdef (/w/target/release/service-b)",
        )
        .expect("parsed");
        assert_eq!(
            rust.symbol(),
            "<tokio::runtime::task::Task<S> as core::ops::Drop>::drop (service-b)"
        );
        assert_eq!(Sample::parse("perf: no samples"), None);
    }

    #[test]
    fn samples_are_counted_per_process_with_their_kernel_share() {
        let names = HashMap::from([(7, "postgresql".to_owned())]);
        let script = "\
 7 1 ExecInsert (/usr/lib/postgresql/15/bin/postgres)
 7 2 ExecInsert (/usr/lib/postgresql/15/bin/postgres)
 7 3 tcp_sendmsg ([kernel.kallsyms])
 0 4 pv_native_safe_halt ([kernel.kallsyms])
 9 5 [unknown] ([unknown])
";
        let profile = CpuProfile::from_script(script, &names);
        assert_eq!(profile.samples, 5);
        let busiest = &profile.processes[0];
        assert_eq!(
            (busiest.name.as_str(), busiest.samples, busiest.kernel),
            ("postgresql", 3, 1)
        );
        assert_eq!(busiest.symbols[0], ("ExecInsert (postgres)".to_owned(), 2));
        let names: Vec<&str> = profile.processes.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["postgresql", IDLE, OTHER]);
    }
}
