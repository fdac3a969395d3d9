//! `cargo xtask fuzz`: the cargo-fuzz targets under `fuzz/` (libFuzzer,
//! coverage-guided), each run for a bounded time: the record decoder and the
//! three HTTP APIs. Fails on any crash (a panic, a failed check, a sanitizer
//! report, a hang), printing the input that caused it and the command that
//! replays it.
//!
//! Each HTTP target runs twice: with its service's database down (every
//! input that gets that far is a 503 at once: thousands of inputs a second
//! through validation, routing and authentication), then as `<target>+db`
//! with a database of the local PostgreSQL of its own (`FUZZ_DATABASE_URL`),
//! where payments are stored, refunds decided with `If-Match` and
//! `Idempotency-Key`, and the callback's read, the audit and the records
//! read for real.
//!
//! cargo-fuzz is installed at a pinned version under
//! `target/xtask/cargo-fuzz` on first use; the targets build with the
//! nightly toolchain (libFuzzer's instrumentation needs it) into
//! `target/fuzz`, where each run also keeps the corpus it grew, starting
//! from the committed seeds in `fuzz/seeds/<target>`. Git sees none of it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// The cargo-fuzz this project was fuzzed with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Every target, in the order they run.
pub const TARGETS: [&str; 4] = [
    "record_decoder",
    "payments_http",
    "service_a_http",
    "service_b_http",
];

/// The variable that gives an HTTP target's service a database
/// (`fuzz::DATABASE_VAR`; the fuzz crate is a workspace of its own).
const DATABASE_VAR: &str = "FUZZ_DATABASE_URL";

/// Where the build, the corpora, the crash inputs and the logs go, from the
/// workspace root.
const TARGET_DIR: &str = "target/fuzz";

/// Where `cargo fuzz build` leaves the targets, in [`TARGET_DIR`].
const BINARIES: &str = "x86_64-unknown-linux-gnu/release";

/// libFuzzer's options, the same for every target.
const LIBFUZZER_OPTIONS: &[&str] = &[
    // One input taking this long is a hang: inputs take microseconds with
    // the services' database down and milliseconds with it up, so 10 s
    // leaves room for a slow machine and none for a loop.
    "-timeout=10",
    // The statistics parsed below (executions, executions per second).
    "-print_final_stats=1",
    // The targets never print; this keeps a `println!` added while
    // debugging from flooding the log at thousands of inputs a second.
    "-close_fd_mask=1",
];

#[derive(Debug, clap::Args)]
pub struct Options {
    /// How long each target runs, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The targets to run (default: all).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    targets: Vec<String>,
}

/// What one bounded run did.
#[derive(Debug, PartialEq)]
struct Run {
    executions: u64,
    per_second: u64,
    /// Inputs in the corpus at the end (the seeds not counted).
    corpus: usize,
    /// Coverage points reached, as libFuzzer counts them.
    coverage: Option<u64>,
    /// The input that crashed it, if one did.
    crash: Option<PathBuf>,
}

pub async fn run(root: &Path, options: &Options) -> Result<()> {
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    let cargo_fuzz_bin = install(root).await?;
    let started = Instant::now();
    build(root, &cargo_fuzz_bin).await?;
    eprintln!("xtask: fuzz targets built in {} s", started.elapsed().as_secs());

    let mut runs = Vec::new();
    for &target in &targets {
        eprintln!("xtask: fuzzing {target} for {} s", options.seconds);
        let run = crate::unless_interrupted(fuzz(root, target, options.seconds, None)).await?;
        runs.push((target.to_owned(), run));
    }
    let with_database: Vec<&str> = targets.into_iter().filter(|t| t.ends_with("_http")).collect();
    if !with_database.is_empty() {
        let postgres = crate::local::postgres::LocalPostgres::new(root);
        let started = postgres.start().await?;
        let result = async {
            for &target in &with_database {
                // A role and a database of the target's own, as a service has.
                let url = crate::local::postgres::own_database(&format!("fuzz_{target}")).await?;
                eprintln!(
                    "xtask: fuzzing {target} with its database up for {} s",
                    options.seconds
                );
                let run = crate::unless_interrupted(fuzz(root, target, options.seconds, Some(&url))).await?;
                runs.push((format!("{target}+db"), run));
            }
            anyhow::Ok(())
        }
        .await;
        let stopped = if started { postgres.stop() } else { Ok(()) };
        result.and(stopped)?;
    }

    eprintln!(
        "\n{:<19} {:>8} {:>12} {:>8} {:>8} {:>9}  crashes",
        "target", "seconds", "executions", "exec/s", "corpus", "coverage"
    );
    for (target, run) in &runs {
        eprintln!(
            "{target:<19} {:>8} {:>12} {:>8} {:>8} {:>9}  {}",
            options.seconds,
            run.executions,
            run.per_second,
            run.corpus,
            run.coverage.map_or_else(|| "-".to_owned(), |c| c.to_string()),
            u8::from(run.crash.is_some()),
        );
    }
    let crashed: Vec<_> = runs
        .iter()
        .filter_map(|(target, run)| run.crash.as_ref().map(|crash| (target, crash)))
        .collect();
    if crashed.is_empty() {
        return Ok(());
    }
    for (target, crash) in &crashed {
        let crash = crash.display();
        // `payments_http+db` is the binary `payments_http` with the database.
        let (binary, database) = match target.split_once('+') {
            Some((binary, _)) => (binary, format!("{}=<a database> ", DATABASE_VAR)),
            None => (target.as_str(), String::new()),
        };
        eprintln!(
            "\nxtask: {target} crashed on {crash}\n  its log: {}\n  replay it: {database}{}/{BINARIES}/{binary} {crash}\n  \
             or, rebuilding first: PATH=target/xtask/cargo-fuzz/bin:$PATH {database}cargo +nightly fuzz run --target-dir {TARGET_DIR} {binary} {crash}",
            log_of(root, target).display(),
            TARGET_DIR,
        );
    }
    bail!("{} of the fuzz targets crashed", crashed.len())
}

/// The `cargo-fuzz` program of the pinned version, installed when missing.
async fn install(root: &Path) -> Result<PathBuf> {
    let install_root = root.join("target/xtask/cargo-fuzz");
    let bin = install_root.join("bin");
    let installed = Command::new(bin.join("cargo-fuzz"))
        .arg("--version")
        .output()
        .await
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout).trim() == format!("cargo-fuzz {CARGO_FUZZ_VERSION}")
        });
    if !installed {
        eprintln!(
            "xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
            install_root.display()
        );
        crate::cargo(
            root,
            &[
                "install",
                "--locked",
                "--quiet",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--root",
                &install_root.to_string_lossy(),
            ],
            &[],
        )
        .await?;
    }
    Ok(bin)
}

/// `cargo +nightly fuzz build`, every target at once, with cargo-fuzz's
/// defaults: optimised, with debug assertions and overflow checks, and
/// AddressSanitizer. Our code forbids `unsafe`, but the record decoder
/// drives librdkafka's header API through rdkafka's unsafe bindings, where
/// the sanitizer's checks are worth what they cost in speed.
async fn build(root: &Path, cargo_fuzz_bin: &Path) -> Result<()> {
    let status = nightly_cargo_fuzz(cargo_fuzz_bin)?
        .args(["fuzz", "build", "--target-dir", TARGET_DIR])
        .current_dir(root)
        .status()
        .await
        .context("cannot run cargo +nightly fuzz")?;
    if !status.success() {
        bail!(
            "`cargo +nightly fuzz build` failed ({status}); the nightly toolchain is `rustup toolchain install nightly`"
        );
    }
    Ok(())
}

/// `cargo +nightly` through rustup's proxy (not `$CARGO`, the stable cargo
/// running xtask), finding `cargo fuzz` in `cargo_fuzz_bin`.
fn nightly_cargo_fuzz(cargo_fuzz_bin: &Path) -> Result<Command> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let path = std::env::join_paths(
        std::iter::once(cargo_fuzz_bin.to_path_buf()).chain(std::env::split_paths(&path)),
    )?;
    let mut command = Command::new("cargo");
    command
        .arg("+nightly")
        .env("PATH", path)
        // Set for xtask by the stable cargo that runs it; the nightly one
        // must not inherit them.
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN");
    Ok(command)
}

/// Runs `target` for `seconds` from its corpus and seeds, its service on
/// `database` if given (else on one that is down); its log goes to
/// `target/fuzz/logs/<target>.log` (`<target>+db.log`).
async fn fuzz(root: &Path, target: &str, seconds: u64, database: Option<&str>) -> Result<Run> {
    let dir = root.join(TARGET_DIR);
    let name = match database {
        Some(_) => format!("{target}+db"),
        None => target.to_owned(),
    };
    // One corpus for both runs of a target: what one found, the other tries.
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(&name);
    let log = log_of(root, &name);
    for created in [&corpus, &artifacts, &dir.join("logs")] {
        std::fs::create_dir_all(created).with_context(|| format!("cannot create {}", created.display()))?;
    }
    let binary = dir.join(BINARIES).join(target);
    let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut command = Command::new(&binary);
    match database {
        Some(url) => command.env(DATABASE_VAR, url),
        None => command.env_remove(DATABASE_VAR),
    };
    let status = command
        // The first directory is where new inputs go; the seeds are only read.
        .arg(&corpus)
        .arg(root.join("fuzz/seeds").join(target))
        .arg(format!(
            "-dict={}",
            root.join("fuzz/dict")
                .join(format!("{}.dict", dictionary(target)))
                .display()
        ))
        .arg(format!("-max_total_time={seconds}"))
        // A trailing slash: libFuzzer prepends this to the file name.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(LIBFUZZER_OPTIONS)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .status()
        .await
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let output = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let mut run = parse(&output);
    run.corpus = std::fs::read_dir(&corpus)?.count();
    if !status.success() && run.crash.is_none() {
        bail!(
            "{name} failed ({status}) without naming a crash input: see {}",
            log.display()
        );
    }
    if run.crash.is_some() {
        for line in what_crashed(&output) {
            eprintln!("  {line}");
        }
    }
    Ok(run)
}

/// The lines of a crashed run's log that say what went wrong: the panic
/// message (without the stack, which the log keeps), or else libFuzzer's or
/// the sanitizer's report of a hang, an out-of-memory or a memory error.
fn what_crashed(log: &str) -> Vec<&str> {
    let lines: Vec<&str> = log.lines().collect();
    if let Some(start) = lines.iter().position(|line| line.contains(" panicked at ")) {
        return lines[start..]
            .iter()
            .take_while(|line| !line.starts_with("stack backtrace:") && !line.starts_with("note: "))
            .take(20)
            .copied()
            .collect();
    }
    lines
        .into_iter()
        .filter(|line| line.contains("ERROR:") || line.starts_with("SUMMARY:"))
        .collect()
}

fn log_of(root: &Path, target: &str) -> PathBuf {
    root.join(TARGET_DIR).join("logs").join(format!("{target}.log"))
}

/// The HTTP targets share one dictionary.
fn dictionary(target: &str) -> &str {
    if target.ends_with("_http") { "http" } else { target }
}

/// What libFuzzer's log says of a run: its final statistics
/// (`stat::number_of_executed_units: 1234`), the last status line
/// (`#1234 DONE cov: 567 ft: 890 corp: 12/3456b ...`) and the crash input
/// (`Test unit written to <path>`).
fn parse(log: &str) -> Run {
    let stat = |name: &str| {
        log.lines()
            .find_map(|line| line.strip_prefix(&format!("stat::{name}:")))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_default()
    };
    let coverage = log
        .lines()
        .rev()
        .find_map(|line| line.split_once(" cov: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|cov| cov.parse().ok());
    let crash = log
        .lines()
        .find_map(|line| line.split_once("Test unit written to "))
        .map(|(_, path)| PathBuf::from(path.trim()));
    Run {
        executions: stat("number_of_executed_units"),
        per_second: stat("average_exec_per_sec"),
        corpus: 0,
        coverage,
        crash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_run_reports_its_statistics() {
        let log = "\
INFO: Seed: 1234
#2\tINITED cov: 1020 ft: 1100 corp: 5/900b exec/s: 0 rss: 60Mb
#65536\tpulse  cov: 2210 ft: 4000 corp: 300/20Kb lim: 400 exec/s: 3276 rss: 90Mb
#98304\tDONE   cov: 2310 ft: 4100 corp: 312/21Kb lim: 400 exec/s: 3276 rss: 90Mb
Done 98304 runs in 31 second(s)
stat::number_of_executed_units: 98304
stat::average_exec_per_sec:     3171
stat::new_units_added:          307
";
        assert_eq!(
            parse(log),
            Run {
                executions: 98304,
                per_second: 3171,
                corpus: 0,
                coverage: Some(2310),
                crash: None,
            }
        );
    }

    #[test]
    fn a_crash_names_its_input() {
        let log = "\
thread '<unnamed>' panicked at src/record.rs:10:5:
the data changed on the way
==1234== ERROR: libFuzzer: deadly signal
artifact_prefix='/w/target/fuzz/artifacts/record_decoder/'; Test unit written to /w/target/fuzz/artifacts/record_decoder/crash-0a1b
stat::number_of_executed_units: 77
stat::average_exec_per_sec:     38
";
        let run = parse(log);
        assert_eq!(
            run.crash.as_deref(),
            Some(Path::new("/w/target/fuzz/artifacts/record_decoder/crash-0a1b"))
        );
        assert_eq!((run.executions, run.per_second), (77, 38));
    }

    #[test]
    fn what_crashed_is_the_panic_message_without_the_stack() {
        let log = "\
#11361\tREDUCE cov: 5779 ft: 7847 corp: 348/64Kb
thread '<unnamed>' (18338) panicked at src/http.rs:147:9:
GET Some(\"/payments/{id}\"): 400 Bad Request with content type text/plain
stack backtrace:
   0: __rustc::rust_begin_unwind
==18338== ERROR: libFuzzer: deadly signal
SUMMARY: libFuzzer: deadly signal
";
        assert_eq!(
            what_crashed(log),
            [
                "thread '<unnamed>' (18338) panicked at src/http.rs:147:9:",
                "GET Some(\"/payments/{id}\"): 400 Bad Request with content type text/plain",
            ]
        );
        let hang =
            "#1\tINITED\n==7== ERROR: libFuzzer: timeout after 10 seconds\nSUMMARY: libFuzzer: timeout\n";
        assert_eq!(
            what_crashed(hang),
            [
                "==7== ERROR: libFuzzer: timeout after 10 seconds",
                "SUMMARY: libFuzzer: timeout"
            ]
        );
    }
}
