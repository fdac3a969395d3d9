//! The container engine that `docker compose` and the testcontainers suite
//! talk to: whatever answers on the Docker socket, else Debian's podman, set
//! up here (docs/operations.md says how and why): its Docker API served on
//! [`PODMAN_SOCKET`], linked from [`DOCKER_SOCKET`], and the containers'
//! health checks run by the same background process, as podman leaves them
//! to systemd timers and without them nothing would become healthy.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::Command;

use crate::local::process::{is_alive, printed, runs, runs_program, spawn_detached, terminate};

/// Where podman serves the Docker API.
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";
/// Where Docker clients look by default.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// xtask's podman settings, beside whatever else configures podman.
const CONFIG_DROP_IN: &str = "/etc/containers/containers.conf.d/eda-rust.conf";
const CONFIG: &str = "\
# Written by `cargo xtask engine up`.
[containers]
# podman's defaults ask for more open files and processes than this kernel grants.
default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]

[engine]
# crun fails on kernels that mix cgroup v1 and v2 hierarchies; runc does not.
runtime = \"runc\"
";
/// How long podman's API may take to answer after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// A container's health check interval when it sets none (Docker's default).
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(30);

/// An engine that answers on the Docker socket.
#[derive(Debug, Clone, Copy)]
pub struct Engine {
    /// The command line client that builds and inspects its images: `podman`
    /// for podman (it works on podman's storage directly), else `docker`.
    pub cli: &'static str,
}

impl Engine {
    /// The engine that answers on the Docker socket, if one does.
    pub async fn running() -> Option<Self> {
        let format = "{{range .Server.Components}}{{.Name}};{{end}}";
        let podman = printed("docker", &["version", "--format", format])
            .await?
            .contains("Podman");
        Some(Self {
            cli: if podman { "podman" } else { "docker" },
        })
    }

    /// The engine, set up and started first if none answers.
    pub async fn ensure(root: &Path) -> Result<Self> {
        if let Some(engine) = Self::running().await {
            return Ok(engine);
        }
        eprintln!("xtask: no container engine answers on {DOCKER_SOCKET}; setting up podman");
        ensure_packages(&[
            ("podman", "podman"),
            ("runc", "runc"),
            // Containers on a compose network find each other by service
            // name through this CNI plugin (it runs dnsmasq).
            (
                "/usr/lib/cni/dnsname",
                "golang-github-containernetworking-plugin-dnsname",
            ),
        ])?;
        configure()?;
        Service::new(root).start().await?;
        Self::running().await.with_context(|| {
            format!(
                "podman serves {PODMAN_SOCKET}, but `docker version` does not answer through {DOCKER_SOCKET}"
            )
        })
    }

    /// A command of this engine's client.
    pub fn command(&self) -> Command {
        Command::new(self.cli)
    }

    /// The value of label `label` of `image` (empty when the image has no
    /// such label), or `None` when there is no such image.
    pub async fn image_label(&self, image: &str, label: &str) -> Option<String> {
        let format = format!("{{{{index .Config.Labels \"{label}\"}}}}");
        let value = printed(self.cli, &["image", "inspect", "--format", &format, image]).await?;
        // An image without labels prints "<no value>" (docker) or nothing (podman).
        let value = value.trim();
        Some(if value == "<no value>" { "" } else { value }.to_owned())
    }
}

/// Installs with apt each package whose command (or file, given as an
/// absolute path) is missing: `(command or file, package)` pairs. Needs root.
pub fn ensure_packages(needed: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(probe, _)| {
            if probe.starts_with('/') {
                !Path::new(probe).exists()
            } else {
                !on_path(probe)
            }
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if crate::local::postgres::effective_uid() != Some(0) {
        bail!(
            "{} must be installed first (as root: apt-get install {0})",
            missing.join(" ")
        );
    }
    eprintln!("xtask: apt-get install {}", missing.join(" "));
    let update = std::process::Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("cannot run apt-get")?;
    if !update.success() {
        bail!("apt-get update failed ({update})");
    }
    let install = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !install.success() {
        bail!("apt-get install {} failed ({install})", missing.join(" "));
    }
    Ok(())
}

/// Whether `command` is an executable on `PATH`.
fn on_path(command: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            fs::metadata(dir.join(command)).is_ok_and(|m| {
                m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
        })
    })
}

/// Writes [`CONFIG_DROP_IN`] unless it already says the same.
fn configure() -> Result<()> {
    let path = Path::new(CONFIG_DROP_IN);
    if fs::read_to_string(path).is_ok_and(|text| text == CONFIG) {
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    fs::write(path, CONFIG).with_context(|| format!("cannot write {}", path.display()))
}

/// The background process serving podman's API and running health checks.
#[derive(Debug)]
pub struct Service {
    /// `target/xtask/engine`: the pid file and the log.
    dir: PathBuf,
}

impl Service {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join("target/xtask/engine"),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("engine.log")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join("engine.pid")
    }

    /// The service's pid, if it is running.
    pub fn running_pid(&self) -> Option<u32> {
        let pid = fs::read_to_string(self.pid_path()).ok()?.trim().parse().ok()?;
        (is_alive(pid) && runs_program(pid, "xtask") && runs(pid, "serve")).then_some(pid)
    }

    /// Starts the service unless it runs, and waits until the Docker socket
    /// answers. Returns whether this call started it.
    pub async fn start(&self) -> Result<bool> {
        if let Some(pid) = self.running_pid() {
            wait_until_serving(pid, &self.log_path()).await?;
            return Ok(false);
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command.args(["engine", "serve"]);
        // Its own process group: it outlives this command, and ctrl-c in the
        // terminal that started it does not reach it.
        let pid = spawn_detached(command, &self.log_path(), &self.pid_path())?;
        eprintln!(
            "xtask: starting podman's Docker API on {DOCKER_SOCKET} (pid {pid}), log: {}",
            self.log_path().display()
        );
        wait_until_serving(pid, &self.log_path()).await?;
        Ok(true)
    }

    /// Stops the service (and with it podman's API; containers keep running).
    pub fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            eprintln!("xtask: engine service not running");
            return Ok(());
        };
        eprintln!("xtask: stopping the engine service (pid {pid})");
        terminate(pid, START_TIMEOUT)?;
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }
}

/// Waits until `docker version` answers through [`DOCKER_SOCKET`], failing
/// early if the service dies.
async fn wait_until_serving(pid: u32, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if Engine::running().await.is_some() {
            return Ok(());
        }
        if !is_alive(pid) {
            bail!("the engine service exited; see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!(
                "the engine did not answer within {START_TIMEOUT:?}; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The service's body (`cargo xtask engine serve`): podman's API, the socket
/// link, and the health checks, until SIGTERM or ctrl-c.
pub async fn serve() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let socket_dir = Path::new(PODMAN_SOCKET)
        .parent()
        .expect("socket path has a directory");
    fs::create_dir_all(socket_dir).with_context(|| format!("cannot create {}", socket_dir.display()))?;
    let mut api = Command::new("podman")
        .args([
            "system",
            "service",
            "--time=0",
            &format!("unix://{PODMAN_SOCKET}"),
        ])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("cannot run podman system service")?;
    link_docker_socket()?;
    eprintln!("engine: podman serves the Docker API on {PODMAN_SOCKET}, linked from {DOCKER_SOCKET}");

    let mut terminate = signal(SignalKind::terminate())?;
    let mut checks = HealthChecks::default();
    let result = loop {
        tokio::select! {
            status = api.wait() => break Err(anyhow::anyhow!("podman system service exited ({status:?})")),
            _ = terminate.recv() => break Ok(()),
            _ = tokio::signal::ctrl_c() => break Ok(()),
            () = tokio::time::sleep(Duration::from_secs(1)) => checks.run_due().await,
        }
    };
    if let Some(pid) = api.id() {
        let _ = crate::local::process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = tokio::time::timeout(Duration::from_secs(10), api.wait()).await;
    }
    eprintln!("engine: stopped");
    result
}

/// Links [`DOCKER_SOCKET`] to [`PODMAN_SOCKET`], unless something else is there.
fn link_docker_socket() -> Result<()> {
    let docker = Path::new(DOCKER_SOCKET);
    match fs::read_link(docker) {
        Ok(target) if target == Path::new(PODMAN_SOCKET) => return Ok(()),
        Ok(_) => fs::remove_file(docker)?, // a stale link
        Err(_) if docker.exists() => bail!("{DOCKER_SOCKET} exists and is not podman's; leaving it alone"),
        Err(_) => {}
    }
    std::os::unix::fs::symlink(PODMAN_SOCKET, docker)
        .with_context(|| format!("cannot link {DOCKER_SOCKET} to {PODMAN_SOCKET}"))
}

/// Each running container's health check, run at its interval.
#[derive(Debug, Default)]
struct HealthChecks {
    /// The interval of each container seen, `None` when it has no check.
    intervals: HashMap<String, Option<Duration>>,
    /// When each container's last check started, and the check.
    last: HashMap<String, (Instant, tokio::task::JoinHandle<()>)>,
}

impl HealthChecks {
    async fn run_due(&mut self) {
        let Some(running) =
            podman_lines(&["ps", "--quiet", "--no-trunc", "--filter", "status=running"]).await
        else {
            return;
        };
        self.intervals.retain(|id, _| running.contains(id));
        self.last.retain(|id, _| running.contains(id));
        for id in running {
            if !self.intervals.contains_key(&id) {
                let interval = health_interval(&id).await;
                self.intervals.insert(id.clone(), interval);
            }
            let Some(Some(interval)) = self.intervals.get(&id).copied() else {
                continue;
            };
            let due = self
                .last
                .get(&id)
                .is_none_or(|(at, check)| at.elapsed() >= interval && check.is_finished());
            if due {
                let check = tokio::spawn(run_check(id.clone()));
                self.last.insert(id, (Instant::now(), check));
            }
        }
    }
}

/// The health check interval of container `id`, `None` if it has no check.
async fn health_interval(id: &str) -> Option<Duration> {
    let lines = podman_lines(&["inspect", "--format", "{{json .Config.Healthcheck}}", id]).await?;
    let config: serde_json::Value = serde_json::from_str(lines.first()?).ok()?;
    config.get("Test")?;
    let nanos = config
        .get("Interval")
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0);
    Some(if nanos == 0 {
        DEFAULT_HEALTH_INTERVAL
    } else {
        Duration::from_nanos(nanos)
    })
}

/// Runs container `id`'s health check once; podman records the outcome.
async fn run_check(id: String) {
    printed("podman", &["healthcheck", "run", &id]).await;
}

/// The lines `podman ARGS` prints, if it succeeds.
async fn podman_lines(args: &[&str]) -> Option<Vec<String>> {
    let printed = printed("podman", args).await?;
    let lines = printed.lines().map(str::trim).filter(|line| !line.is_empty());
    Some(lines.map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_on_the_path() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-command-anywhere"));
    }
}
