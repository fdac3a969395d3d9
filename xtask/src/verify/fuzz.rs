//! `cargo xtask fuzz`: the cargo-fuzz targets under `fuzz/` (libFuzzer,
//! coverage-guided, with AddressSanitizer: our code forbids `unsafe`, but
//! the record decoder drives librdkafka's header API through rdkafka's
//! unsafe bindings), each run by `cargo fuzz run` for a bounded time; fails
//! on any crash, which cargo-fuzz reports with the input and how to replay
//! it. Each HTTP target runs again as `<target>+db`, with a database of the
//! local PostgreSQL of its own (`FUZZ_DATABASE_URL`); see docs/contract.md.
//!
//! cargo-fuzz is installed at a pinned version under
//! `target/xtask/cargo-fuzz` on first use; the targets build with the
//! nightly toolchain into `target/fuzz`, where each target's corpus grows
//! from the committed seeds in `fuzz/seeds/<target>`, and its crash inputs
//! and logs go.

use std::path::{Path, PathBuf};

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

/// Where the build, the corpora, the crash inputs and the logs go.
const TARGET_DIR: &str = "target/fuzz";

/// libFuzzer's options, the same for every target.
const LIBFUZZER_OPTIONS: &[&str] = &[
    // One input taking this long is a hang: inputs take microseconds with
    // the services' database down and milliseconds with it up.
    "-timeout=10",
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

pub async fn run(root: &Path, options: &Options) -> Result<()> {
    let targets: Vec<&str> = if options.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        options.targets.iter().map(String::as_str).collect()
    };
    let cargo_fuzz_bin = install(root).await?;
    let mut crashed = Vec::new();
    for &target in &targets {
        if !crate::unless_interrupted(fuzz(root, &cargo_fuzz_bin, target, options.seconds, None)).await? {
            crashed.push(target.to_owned());
        }
    }
    let with_database: Vec<&str> = targets.into_iter().filter(|t| t.ends_with("_http")).collect();
    if !with_database.is_empty() {
        let postgres = crate::local::postgres::LocalPostgres::new(root);
        let started = postgres.start().await?;
        let result = async {
            for &target in &with_database {
                // A role and a database of the target's own, as a service has.
                let url = crate::local::postgres::own_database(&format!("fuzz_{target}")).await?;
                let run = fuzz(root, &cargo_fuzz_bin, target, options.seconds, Some(&url));
                if !crate::unless_interrupted(run).await? {
                    crashed.push(format!("{target}+db ({DATABASE_VAR}=<a database> to replay)"));
                }
            }
            anyhow::Ok(())
        }
        .await;
        let stopped = if started { postgres.stop() } else { Ok(()) };
        result.and(stopped)?;
    }
    if !crashed.is_empty() {
        bail!("crashed, as cargo fuzz said above: {}", crashed.join(", "));
    }
    Ok(())
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

/// `cargo fuzz run` of `target` for `seconds`, from its corpus and seeds,
/// its service on `database` if given (else on one that is down); whether
/// it ran without a crash. libFuzzer's log goes to
/// `target/fuzz/logs/<target>.log` (`<target>+db.log`); its last lines are
/// printed (the crash report and the replay command, or the totals).
async fn fuzz(
    root: &Path,
    cargo_fuzz_bin: &Path,
    target: &str,
    seconds: u64,
    database: Option<&str>,
) -> Result<bool> {
    let dir = root.join(TARGET_DIR);
    let name = match database {
        Some(_) => format!("{target}+db"),
        None => target.to_owned(),
    };
    eprintln!("xtask: fuzzing {name} for {seconds} s");
    // One corpus for both runs of a target: what one found, the other tries.
    let corpus = dir.join("corpus").join(target);
    let artifacts = dir.join("artifacts").join(&name);
    let log: PathBuf = dir.join("logs").join(format!("{name}.log"));
    for created in [&corpus, &artifacts, &dir.join("logs")] {
        std::fs::create_dir_all(created).with_context(|| format!("cannot create {}", created.display()))?;
    }
    // The HTTP targets share one dictionary.
    let dictionary = if target.ends_with("_http") { "http" } else { target };
    let mut command = nightly_cargo_fuzz(cargo_fuzz_bin)?;
    match database {
        Some(url) => command.env(DATABASE_VAR, url),
        None => command.env_remove(DATABASE_VAR),
    };
    let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let status = command
        .args(["fuzz", "run", "--target-dir", TARGET_DIR, target])
        // The first directory is where new inputs go; the seeds are only read.
        .arg(&corpus)
        .arg(root.join("fuzz/seeds").join(target))
        .arg("--")
        .arg(format!("-dict=fuzz/dict/{dictionary}.dict"))
        .arg(format!("-max_total_time={seconds}"))
        // A trailing slash: libFuzzer prepends this to the file name.
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .args(LIBFUZZER_OPTIONS)
        .current_dir(root)
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .kill_on_drop(true)
        .status()
        .await
        .context("cannot run cargo +nightly fuzz (the toolchain: rustup toolchain install nightly)")?;
    let output = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let lines: Vec<&str> = output.lines().collect();
    let shown = if status.success() { 1 } else { 60 };
    for line in &lines[lines.len().saturating_sub(shown)..] {
        eprintln!("  {line}");
    }
    Ok(status.success())
}
