//! `cargo xtask contracts-compat`: no event's schema changed in a way its
//! readers could not take without a new version.
//!
//! Each event's data schema is committed as
//! `contracts/<name>.v<version>.schema.json`, named after its `ce_type`. A
//! breaking change must bump the version, which makes a new file; so every
//! file must stay readable by readers of every earlier revision of itself
//! in the git history (`shared_events::contracts::breaking_changes`). The
//! files in the working tree are compared, so a change is checked before it
//! is committed too; that they are what the code generates is a test of the
//! suite (`shared-events/tests/contracts.rs`).

use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

pub async fn compat(root: &Path) -> Result<()> {
    let dir = root.join("contracts");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".schema.json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no event schemas in {}", dir.display());
    }
    let mut broken = Vec::new();
    for file in &files {
        let path = format!("contracts/{file}");
        let current: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join(&path))?)
            .with_context(|| format!("{path} is not JSON"))?;
        let revisions = git(root, &["log", "--format=%H", "--", &path]).await?;
        let revisions: Vec<&str> = revisions.lines().collect();
        let before = broken.len();
        for revision in &revisions {
            let text = git(root, &["show", &format!("{revision}:{path}")]).await?;
            let old: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{path} at {revision} is not JSON"))?;
            for problem in shared_events::contracts::breaking_changes(&old, &current) {
                broken.push(format!("{path} (against {}): {problem}", &revision[..10]));
            }
        }
        if broken.len() == before {
            println!(
                "{path}: compatible with its {} earlier revision(s)",
                revisions.len()
            );
        }
    }
    if broken.is_empty() {
        return Ok(());
    }
    bail!(
        "a change an existing reader could not read; make it compatible, or bump the event's \
         version in ce_type (a new schema file) and keep reading the old one:\n  {}",
        broken.join("\n  ")
    )
}

async fn git(root: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .await
        .context("cannot run git (the check reads the schemas' history)")?;
    if !output.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}
