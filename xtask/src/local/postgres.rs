//! A local throwaway PostgreSQL, for machines without Docker: Debian's
//! server (the highest version installed), a private cluster under
//! `target/xtask/postgres/` with trust authentication on 127.0.0.1 only, run
//! as the `postgres` user when xtask runs as root (PostgreSQL refuses root).
//! Each service logs in as its own role (`service_kit::postgres_access`);
//! trust authentication checks no password. See docs/operations.md.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use service_kit::auth::Token;
use service_kit::config::{DatabaseUrl, Secret};
use service_kit::postgres_access;

use crate::local::process::{is_alive, runs_program};

/// The port the local server listens on, on 127.0.0.1.
pub const PG_PORT: u16 = 5432;
/// The local server as its superuser (trust authentication: no password),
/// for xtask and the tests' setup; the services log in as their own roles
/// ([`service_url`]).
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Where Debian installs each major version's server programs.
const INSTALL_ROOT: &str = "/usr/lib/postgresql";
/// The OS user the server runs as when xtask runs as root.
const OS_USER: &str = "postgres";
/// The settings xtask owns, in the data directory, included from `postgresql.conf`.
const CONFIG: &str = "xtask.conf";
/// How long the server may take to start (crash recovery after a kill included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown (which ends with a checkpoint) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct LocalPostgres {
    /// The workspace: `.env` holds the services' roles' passwords.
    root: PathBuf,
    /// `target/xtask/postgres`: the data directory and the log.
    dir: PathBuf,
    /// Whether xtask runs as root, so the server must run as [`OS_USER`].
    as_root: bool,
}

impl LocalPostgres {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
            dir: root.join("target/xtask/postgres"),
            as_root: effective_uid() == Some(0),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The postmaster's pid, if it is running.
    pub fn running_pid(&self) -> Option<u32> {
        // The first line of postmaster.pid is the postmaster's pid; the file
        // outlives a killed server, hence the liveness check.
        let pid_file = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        let pid = pid_file.lines().next()?.trim().parse().ok()?;
        // A stale pid file (after a reboot) may name an unrelated process.
        (is_alive(pid) && runs_program(pid, "postgres")).then_some(pid)
    }

    /// Starts the server unless it is running (initialising the cluster on
    /// first use), and waits until it accepts connections. Returns whether
    /// this call started it.
    pub async fn start(&self) -> Result<bool> {
        let bin = bin_dir()?;
        if let Some(pid) = self.running_pid() {
            wait_until_ready(&bin, pid, &self.log_path()).await?;
            self.provision_services().await?;
            return Ok(false);
        }
        if matches!(pg_isready(&bin)?, READY | REJECTING) {
            bail!(
                "another PostgreSQL already answers on 127.0.0.1:{PG_PORT} (the system's cluster? \
                 `pg_lsclusters` lists them); stop it, or set DATABASE_URL to use it"
            );
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        // Whom the files xtask writes must belong to, when not to the caller.
        let owner = self.as_root.then(|| os_user_ids(OS_USER)).transpose()?;
        if let Some(owner) = owner {
            self.hand_over(owner)?;
        }
        self.init(&bin)?;
        self.write_config(owner)?;

        eprintln!(
            "xtask: starting PostgreSQL ({}), log: {}",
            bin.display(),
            self.log_path().display()
        );
        // pg_ctl detaches the server into its own session, so ctrl-c in the
        // terminal reaches the services but not the database they shut down against.
        let mut pg_ctl = self.pg_ctl(&bin, "start");
        pg_ctl
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", &START_TIMEOUT.as_secs().to_string()]);
        run(&mut pg_ctl, "pg_ctl start")
            .with_context(|| format!("PostgreSQL did not start\n{}", log_tail(&self.log_path())))?;
        let pid = self.running_pid().with_context(|| {
            format!(
                "PostgreSQL exited right after starting\n{}",
                log_tail(&self.log_path())
            )
        })?;
        wait_until_ready(&bin, pid, &self.log_path()).await?;
        self.provision_services().await?;
        Ok(true)
    }

    /// Each service's role and database ([`postgres_access::ROLES`]), with
    /// its password from `.env`.
    async fn provision_services(&self) -> Result<()> {
        for (role, password) in crate::local::credentials::database_logins(&self.root)? {
            postgres_access::provision(&superuser(), role, &password)
                .await
                .with_context(|| format!("cannot make role and database {role}"))?;
        }
        Ok(())
    }

    /// Stops the server: a fast shutdown (clients are disconnected, open
    /// transactions rolled back), waited for.
    pub fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            eprintln!("xtask: PostgreSQL not running");
            return Ok(());
        };
        eprintln!("xtask: stopping PostgreSQL (pid {pid})");
        let bin = bin_dir()?;
        let mut pg_ctl = self.pg_ctl(&bin, "stop");
        pg_ctl.args(["-m", "fast", "-w", "-t", &STOP_TIMEOUT.as_secs().to_string()]);
        run(&mut pg_ctl, "pg_ctl stop")
    }

    /// Gives `target/xtask/postgres` to the server's user, and lets that user
    /// reach it: every directory above must be searchable by others (a
    /// workspace made by `mktemp -d` is not).
    fn hand_over(&self, (uid, gid): (u32, u32)) -> Result<()> {
        std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid))
            .with_context(|| format!("cannot give {} to {OS_USER}", self.dir.display()))?;
        for dir in self.dir.ancestors().skip(1) {
            let mode = fs::metadata(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .permissions()
                .mode()
                & 0o7777;
            if mode & 0o001 == 0 {
                eprintln!("xtask: letting {OS_USER} search {} (chmod o+x)", dir.display());
                fs::set_permissions(dir, fs::Permissions::from_mode(mode | 0o001))
                    .with_context(|| format!("cannot chmod {}", dir.display()))?;
            }
        }
        Ok(())
    }

    /// Initialises the cluster, once.
    fn init(&self, bin: &Path) -> Result<()> {
        let data = self.data_dir();
        let major = bin
            .parent()
            .and_then(Path::file_name)
            .map_or_else(String::new, |v| v.to_string_lossy().into_owned());
        if let Ok(version) = fs::read_to_string(data.join("PG_VERSION")) {
            if version.trim() != major {
                bail!(
                    "{} holds a PostgreSQL {} cluster but the server is {major}; \
                     delete it (the cluster is throwaway) to start afresh",
                    data.display(),
                    version.trim()
                );
            }
            return Ok(());
        }
        eprintln!(
            "xtask: initialising a PostgreSQL {major} cluster in {}",
            data.display()
        );
        run(&mut self.initdb(bin), "initdb")
    }

    /// Writes [`CONFIG`] (on every start, so a reused cluster follows
    /// changes here) and makes sure `postgresql.conf` includes it.
    fn write_config(&self, owner: Option<(u32, u32)>) -> Result<()> {
        let data = self.data_dir();
        let path = data.join(CONFIG);
        fs::write(&path, config(&data)).with_context(|| format!("cannot write {}", path.display()))?;
        if let Some((uid, gid)) = owner {
            // Whoever runs the server next can rewrite it.
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .with_context(|| format!("cannot give {} to {OS_USER}", path.display()))?;
        }
        let main = data.join("postgresql.conf");
        let text = fs::read_to_string(&main).with_context(|| format!("cannot read {}", main.display()))?;
        let include = format!("include '{CONFIG}'");
        if !text.lines().any(|line| line.trim() == include) {
            // Last, so its settings win over initdb's.
            fs::write(&main, format!("{text}\n{include}\n"))
                .with_context(|| format!("cannot write {}", main.display()))?;
        }
        Ok(())
    }

    fn initdb(&self, bin: &Path) -> Command {
        let mut initdb = self.server_command(bin, "initdb");
        initdb.arg("-D").arg(self.data_dir()).args([
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--no-locale",
        ]);
        initdb
    }

    fn pg_ctl(&self, bin: &Path, action: &str) -> Command {
        let mut pg_ctl = self.server_command(bin, "pg_ctl");
        // -s: errors only.
        pg_ctl.arg(action).arg("-s").arg("-D").arg(self.data_dir());
        pg_ctl
    }

    /// `program` from `bin`, run as [`OS_USER`] when xtask runs as root.
    fn server_command(&self, bin: &Path, program: &str) -> Command {
        let mut command = if self.as_root {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", OS_USER, "--"]).arg(bin.join(program));
            runuser
        } else {
            Command::new(bin.join(program))
        };
        // A directory the server's user can enter (it may not enter the caller's).
        command.current_dir(&self.dir);
        command
    }
}

/// The settings xtask owns. fsync and synchronous_commit stay on (the
/// defaults): the benchmarks measure commit rates, which would mean nothing
/// without them.
fn config(data: &Path) -> String {
    format!(
        "\
# Written by `cargo xtask pg up` before every start; included from postgresql.conf.
# Loopback only: trust authentication lets in whoever can connect.
listen_addresses = '127.0.0.1'
port = {PG_PORT}
# Not /var/run/postgresql, which belongs to the system's clusters.
unix_socket_directories = '{socket_dir}'
# 32 concurrent writers in the benchmarks, plus tests running in parallel.
max_connections = 200
# Statement counts and times, for the profile of `cargo xtask bench`
# (queries and resets need `CREATE EXTENSION pg_stat_statements`).
shared_preload_libraries = 'pg_stat_statements'
",
        socket_dir = data.display().to_string().replace('\'', "''")
    )
}

/// `pg_isready` exit codes.
const READY: i32 = 0;
const REJECTING: i32 = 1;

/// Client program `program` of `bin`, pointed at the local server as the
/// `postgres` role (a role that does not exist would be logged as an error).
fn client(bin: &Path, program: &str) -> Command {
    let mut command = Command::new(bin.join(program));
    command.args(["-h", "127.0.0.1", "-p", &PG_PORT.to_string(), "-U", "postgres"]);
    command
}

/// What `pg_isready` says of 127.0.0.1:[`PG_PORT`].
fn pg_isready(bin: &Path) -> Result<i32> {
    let status = client(bin, "pg_isready")
        .args(["-q", "-d", "postgres", "-t", "1"])
        .stdin(Stdio::null())
        .status()
        .context("cannot run pg_isready")?;
    status
        .code()
        .with_context(|| format!("pg_isready was killed ({status})"))
}

/// The local server as its superuser.
fn superuser() -> DatabaseUrl {
    DATABASE_URL.parse().expect("DATABASE_URL is a URL")
}

/// How the demo's role `role` (with `password`, from `.env`) reaches its
/// own database on the local server.
pub fn service_url(role: &str, password: &Secret) -> String {
    postgres_access::login(&superuser(), role, password).expose()
}

/// A role and a database, both named `name`, on the local server, for a
/// caller outside this module (`cargo xtask faults`' services); how the
/// role reaches it.
pub async fn own_database(name: &str) -> Result<String> {
    let password = Secret::new(Token::generate().expose());
    let url = postgres_access::provision(&superuser(), name, &password)
        .await
        .with_context(|| format!("cannot make role and database {name}"))?;
    Ok(url.expose())
}

/// Drops every `test_*` database on the local server, and every `test_*`
/// role: each test creates one of each (`event_store::testing::TestDatabase`)
/// and leaves them for a look after a failure, so without this every run
/// adds about 8 MB per test.
pub fn drop_test_databases() -> Result<usize> {
    let bin = bin_dir()?;
    let databases = query(
        "postgres",
        r"SELECT datname FROM pg_database WHERE datname LIKE 'test\_%'",
    )?;
    for name in &databases {
        // --force: a service a killed test left running may still hold it.
        run(
            client(&bin, "dropdb").args(["--force", "--if-exists", name]),
            "dropdb",
        )?;
    }
    // Once their databases are gone, they own nothing.
    for name in query(
        "postgres",
        r"SELECT rolname FROM pg_roles WHERE rolname LIKE 'test\_%'",
    )? {
        run(client(&bin, "dropuser").args(["--if-exists", &name]), "dropuser")?;
    }
    Ok(databases.len())
}

/// The rows `query` gives in `database` on the local server, one a line
/// (columns separated by `|`).
pub fn query(database: &str, query: &str) -> Result<Vec<String>> {
    let output = client(&bin_dir()?, "psql")
        .args(["-d", database, "-Atc", query])
        .stdin(Stdio::null())
        .output()
        .context("cannot run psql")?;
    if !output.status.success() {
        bail!("{query} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Waits until the server accepts connections, failing early if it dies.
async fn wait_until_ready(bin: &Path, pid: u32, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if !is_alive(pid) {
            bail!("PostgreSQL exited during startup\n{}", log_tail(log));
        }
        if pg_isready(bin)? == READY {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "PostgreSQL did not accept connections within {START_TIMEOUT:?}\n{}",
                log_tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server programs of the highest PostgreSQL version installed.
fn bin_dir() -> Result<PathBuf> {
    let installed: Vec<String> = fs::read_dir(INSTALL_ROOT)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .filter(|entry| entry.path().join("bin/initdb").exists())
                .filter_map(|entry| entry.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let version = highest(installed.iter().map(String::as_str)).with_context(|| {
        format!("no PostgreSQL server in {INSTALL_ROOT}/*/bin (apt-get install postgresql)")
    })?;
    Ok(Path::new(INSTALL_ROOT).join(version).join("bin"))
}

/// The highest version, compared numerically: "9.6" < "15".
fn highest<'a>(versions: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    versions
        .into_iter()
        .max_by_key(|v| v.split('.').map(|n| n.parse().unwrap_or(0)).collect::<Vec<u32>>())
}

/// Runs `command` to completion, failing with its output if it fails.
fn run(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The end of the server log, for error messages (CI shows no files).
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "last lines of {}:\n{}",
        log.display(),
        lines[lines.len().saturating_sub(15)..].join("\n")
    )
}

/// The effective uid.
pub fn effective_uid() -> Option<u32> {
    Some(nix::unistd::geteuid().as_raw())
}

/// The uid and gid of the OS user `name`.
fn os_user_ids(name: &str) -> Result<(u32, u32)> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        Ok(None) => bail!("no `{name}` user (it comes with Debian's postgresql package)"),
        Err(e) => Err(e).with_context(|| format!("cannot look up the `{name}` user")),
    }
}

impl crate::local::LocalServer for LocalPostgres {
    const NAME: &'static str = "PostgreSQL";

    async fn start(&self) -> Result<bool> {
        LocalPostgres::start(self).await
    }

    fn stop(&self) -> Result<()> {
        LocalPostgres::stop(self)
    }

    fn running_pid(&self) -> Option<u32> {
        LocalPostgres::running_pid(self)
    }

    fn describe(&self) -> String {
        format!(
            "DATABASE_URL={DATABASE_URL} (the superuser; the services' roles: {}, passwords in .env; logs: {})",
            postgres_access::ROLES.map(|(role, _, _)| role).join(", "),
            self.log_path().display()
        )
    }
}

/// Client program `program` (psql, pgbench, ...) of the installed
/// PostgreSQL, pointed at the local server as the `postgres` role.
pub fn client_program(program: &str) -> Result<Command> {
    Ok(client(&bin_dir()?, program))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(as_root: bool) -> LocalPostgres {
        LocalPostgres {
            root: PathBuf::from("/w"),
            dir: PathBuf::from("/w/target/xtask/postgres"),
            as_root,
        }
    }

    fn command_line(command: &Command) -> Vec<String> {
        std::iter::once(command.get_program())
            .chain(command.get_args())
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn as_root_the_server_programs_run_as_postgres() {
        let bin = Path::new("/usr/lib/postgresql/15/bin");
        let initdb = local(true).initdb(bin);
        assert_eq!(
            command_line(&initdb),
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                "/usr/lib/postgresql/15/bin/initdb",
                "-D",
                "/w/target/xtask/postgres/data",
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-locale",
            ]
        );
        assert_eq!(
            initdb.get_current_dir(),
            Some(Path::new("/w/target/xtask/postgres"))
        );

        let stop = local(false).pg_ctl(bin, "stop");
        assert_eq!(
            command_line(&stop),
            [
                "/usr/lib/postgresql/15/bin/pg_ctl",
                "stop",
                "-s",
                "-D",
                "/w/target/xtask/postgres/data"
            ]
        );
    }

    #[test]
    fn the_config_listens_on_loopback_with_its_socket_in_the_data_dir_and_keeps_fsync() {
        let config = config(Path::new("/w/it's/data"));
        let settings: Vec<&str> = config
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .collect();
        assert_eq!(
            settings,
            [
                "listen_addresses = '127.0.0.1'",
                "port = 5432",
                "unix_socket_directories = '/w/it''s/data'",
                "max_connections = 200",
                "shared_preload_libraries = 'pg_stat_statements'",
            ]
        );
        assert!(
            !settings
                .iter()
                .any(|s| s.contains("fsync") || s.contains("synchronous_commit")),
            "durability settings must stay at their defaults"
        );
    }

    #[test]
    fn the_url_names_the_local_server() {
        assert_eq!(
            DATABASE_URL,
            format!("postgres://postgres@127.0.0.1:{PG_PORT}/postgres")
        );
    }

    #[test]
    fn a_service_logs_in_as_its_own_role_to_its_own_database() {
        let url: DatabaseUrl = service_url("service_a", &Secret::new("pw0123"))
            .parse()
            .expect("a URL");
        let options = url.options();
        assert_eq!(options.get_username(), "service_a");
        assert_eq!(options.get_database(), Some("service_a"));
        assert_eq!((options.get_host(), options.get_port()), ("127.0.0.1", PG_PORT));
        assert!(url.expose().contains(":pw0123@"));
    }

    #[test]
    fn the_highest_version_is_chosen_numerically() {
        assert_eq!(highest(["9.6", "15", "16", "10"]), Some("16"));
        assert_eq!(highest(["15"]), Some("15"));
        assert_eq!(highest([]), None);
    }

    #[test]
    fn the_effective_uid_is_the_one_id_reports() {
        let output = Command::new("id").arg("-u").output().expect("id -u");
        let id: u32 = String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("a uid");
        assert_eq!(effective_uid(), Some(id));
    }
}
