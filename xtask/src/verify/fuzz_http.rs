//! `cargo xtask fuzz-http`: each service's HTTP API fuzzed against its own
//! OpenAPI document (`GET /openapi.json`, committed under
//! `contracts/openapi/`) with schemathesis, on the demo's stack (`cargo
//! xtask up`). Requests are generated from the document, valid and
//! invalid; the run fails on any 5xx, and on any response whose status,
//! content type or body the document does not describe.
//!
//! Schemathesis (PyPI) is installed at a pinned version into a virtual
//! environment under `target/xtask/schemathesis` on first use.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use service_kit::auth::Token;
use tokio::process::Command;

/// The schemathesis this project was fuzzed with.
const VERSION: &str = "4.32.5";
/// What must hold for every response. Not `positive_data_acceptance`: a
/// string the document allows may still break a rule only the service
/// knows (an unknown currency code), which is a 422 by design.
/// `ignored_auth`: every operation the document marks with the bearer
/// scheme is also sent without the token and with a wrong one, and must
/// answer 401.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,ignored_auth";

/// The variable that hands schemathesis the operator's token: it reads it
/// into the `Authorization` header from [`CONFIG`], so that the token is in
/// no process's command line (`ps` shows those to every user).
const TOKEN_VAR: &str = "OPERATOR_TOKEN";
/// schemathesis.toml, which it reads from its working directory.
const CONFIG: &str = "# Written by `cargo xtask fuzz-http`. The operator may call every route;\n\
                      # schemathesis sends the token to those the document marks as needing a caller.\n\
                      headers = { Authorization = \"Bearer ${OPERATOR_TOKEN}\" }\n";

pub async fn run(root: &Path, max_examples: u32) -> Result<()> {
    let st = install(root).await?;
    let work_dir = root.join("target/xtask/schemathesis");
    let reports = work_dir.join("reports");
    std::fs::write(work_dir.join("schemathesis.toml"), CONFIG)?;
    let credentials = crate::local::credentials::ensure(root)?;
    crate::local::demo::with_stack(
        root,
        &[],
        Some(async {
            let mut failed = Vec::new();
            for (service, port) in crate::local::demo::SERVICES
                .into_iter()
                .zip(crate::local::demo::PORTS)
            {
                eprintln!(
                    "xtask: schemathesis against {service} (:{port}), {max_examples} examples per operation"
                );
                let status = schemathesis(&st, &work_dir, port, max_examples, &credentials.operator)
                    .arg("--report-dir")
                    .arg(reports.join(service))
                    .status()
                    .await
                    .context("cannot run schemathesis")?;
                if !status.success() {
                    failed.push(service);
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                bail!(
                    "schemathesis found failures in {} (reports under {})",
                    failed.join(", "),
                    reports.display()
                )
            }
        }),
    )
    .await
}

/// `st run` against the service on `port`, in `work_dir` (where it finds
/// [`CONFIG`] and keeps a `.schemathesis/` of its own), with `operator`'s
/// token in its environment only.
fn schemathesis(st: &Path, work_dir: &Path, port: u16, max_examples: u32, operator: &Token) -> Command {
    let mut command = Command::new(st);
    command
        .arg("run")
        .arg(format!("http://127.0.0.1:{port}/openapi.json"))
        .args(["--url", &format!("http://127.0.0.1:{port}")])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &max_examples.to_string()])
        // Reproducible runs: the same requests every time.
        .arg("--generation-deterministic")
        .args(["--report", "junit"])
        .env(TOKEN_VAR, operator.expose())
        .current_dir(work_dir);
    command
}

/// The `st` program of the pinned schemathesis, installed when missing.
async fn install(root: &Path) -> Result<PathBuf> {
    let venv = root.join("target/xtask/schemathesis/venv");
    let st = venv.join("bin/st");
    let marker = venv.join(format!("schemathesis-{VERSION}"));
    if marker.exists() {
        return Ok(st);
    }
    eprintln!("xtask: installing schemathesis {VERSION} into {}", venv.display());
    let created = Command::new("python3")
        .arg("-m")
        .arg("venv")
        .arg(&venv)
        .status()
        .await?;
    if !created.success() {
        bail!("python3 -m venv failed ({created}); on Debian: apt-get install python3-venv");
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", &format!("schemathesis=={VERSION}")])
        .status()
        .await?;
    if !installed.success() {
        bail!("pip install schemathesis=={VERSION} failed ({installed})");
    }
    std::fs::write(&marker, "")?;
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_handed_over_in_the_environment_not_on_the_command_line() {
        let token = Token::generate();
        let command = schemathesis(Path::new("st"), Path::new("."), 8080, 1, &token);
        let command = command.as_std();
        let args: Vec<_> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(
            !args.iter().any(|arg| arg.contains(token.expose())),
            "the token is in the arguments: {args:?}"
        );
        let env: Vec<_> = command.get_envs().collect();
        assert_eq!(
            env,
            [(
                std::ffi::OsStr::new(TOKEN_VAR),
                Some(std::ffi::OsStr::new(token.expose()))
            )]
        );
        assert!(CONFIG.contains(&format!("${{{TOKEN_VAR}}}")), "{CONFIG}");
    }
}
