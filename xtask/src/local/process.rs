//! The processes xtask starts and stops (the broker, PostgreSQL, the engine
//! service, the demo's services): signals and liveness through `nix`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().map(Pid::from_raw)
}

/// Whether `pid` is a live process. One of ours that exited is reaped here
/// first: a zombie counts as gone.
pub fn is_alive(pid: u32) -> bool {
    let Some(pid) = pid_of(pid) else {
        return false;
    };
    // Not our child (ECHILD) or still running: nothing to reap.
    let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    !matches!(kill(pid, None), Err(Errno::ESRCH))
}

/// Sends `signal` to `pid`; one that is gone already is not an error.
pub fn signal(pid: u32, signal: Signal) -> Result<()> {
    let Some(target) = pid_of(pid) else {
        return Ok(());
    };
    match kill(target, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot send {signal} to {pid}")),
    }
}

/// SIGTERM, then SIGKILL if `pid` has not exited within `timeout`.
pub fn terminate(pid: u32, timeout: Duration) -> Result<()> {
    signal(pid, Signal::SIGTERM)?;
    let deadline = Instant::now() + timeout;
    while is_alive(pid) {
        if Instant::now() > deadline {
            eprintln!("xtask: pid {pid} did not stop in {timeout:?}, killing it");
            return signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The command line of `pid`, argument by argument (what a pid file's
/// process must be checked against: after a reboot the pid may be another
/// program's). `nix` has no call for it; Linux has the file.
fn command_line(pid: u32) -> Vec<Vec<u8>> {
    std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline"))
        .map(|cmdline| {
            cmdline
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether one of `pid`'s arguments is `needle`.
pub fn runs(pid: u32, needle: &str) -> bool {
    command_line(pid).iter().any(|arg| arg == needle.as_bytes())
}

/// Whether `pid` runs a program called `name` (the file name of its `argv[0]`).
pub fn runs_program(pid: u32, name: &str) -> bool {
    command_line(pid)
        .first()
        .is_some_and(|program| program.rsplit(|&b| b == b'/').next() == Some(name.as_bytes()))
}

/// Starts `command` in a process group of its own, its output into `log`,
/// and writes its pid to `pid_file`; it is not waited on: it outlives xtask.
pub fn spawn_detached(mut command: std::process::Command, log: &Path, pid_file: &Path) -> Result<u32> {
    let log = std::fs::File::create(log)?;
    command
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let pid = command
        .spawn()
        .with_context(|| format!("cannot start {}", command.get_program().display()))?
        .id();
    std::fs::write(pid_file, pid.to_string())?;
    Ok(pid)
}

/// What `program ARGS` prints, if it succeeds; it reads nothing, and what
/// it says on stderr is not shown.
pub async fn printed(program: &str, args: &[&str]) -> Option<String> {
    let output = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// What `command` printed, or its output in the error if it fails.
pub async fn output(mut command: tokio::process::Command, what: &str) -> Result<String> {
    let output = command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        anyhow::bail!(
            "{what} failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // `is_alive` reaps it: that is part of what is tested.
    #[allow(clippy::zombie_processes)]
    fn a_process_lives_until_it_is_terminated_and_reaped() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep");
        let pid = child.id();
        assert!(is_alive(pid));
        // Between fork and exec the child's command line is still ours.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !runs_program(pid, "sleep") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(runs_program(pid, "sleep") && runs(pid, "30"));
        assert!(!runs_program(pid, "kafka.Kafka"));
        terminate(pid, Duration::from_secs(5)).expect("terminated");
        assert!(!is_alive(pid), "gone, and reaped rather than a zombie");
        assert!(!is_alive(u32::MAX));
        signal(pid, Signal::SIGTERM).expect("a process that is gone is not an error");
    }
}
