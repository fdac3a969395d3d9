//! The real servers the tests run against: one Apache Kafka broker and one
//! PostgreSQL per test binary.
//!
//! Tests make topics, consumer groups and databases of their own on them, so
//! they can share the servers; one Kafka JVM and one PostgreSQL per test, in
//! parallel on a small machine, would cost more memory and start-up time than
//! the tests themselves. Each server is, in order of preference:
//!
//! 1. the one `KAFKA_BOOTSTRAP_SERVERS` / `DATABASE_URL` names (`cargo xtask
//!    test` sets them to local servers on machines without a container
//!    engine);
//! 2. a container of `apache/kafka` / `postgres`, started through
//!    testcontainers on the first request of the test binary and removed when
//!    the binary exits, however it exits ([`reaper`]);
//! 3. neither: the test fails, saying how to get one.
//!
//! When the engine runs on this machine (a Unix socket), containers publish
//! their ports on the loopback interface only, and tests reach them there.
//! With an engine elsewhere (`DOCKER_HOST=tcp://…`, or
//! `TESTCONTAINERS_HOST_OVERRIDE`), ports are published as the engine
//! decides, and reached at the host testcontainers reports.
//!
//! Starting a container is done on a runtime of this crate's own, not the
//! test's: each `#[tokio::test]` has a runtime that ends with the test, and
//! testcontainers' client must outlive the first test that needs a server.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers_modules::testcontainers::core::{ContainerPort, ExecCommand, WaitFor};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ContainerRequest, Image, ImageExt};
use tokio::sync::OnceCell;

/// The broker image, of the release everything runs
/// ([`kafka_ops::KAFKA_VERSION`]).
pub const KAFKA_IMAGE: &str = "apache/kafka";
/// The PostgreSQL image: the major version Debian 12's packages run locally
/// and `docker-compose.yml` runs.
pub const POSTGRES_IMAGE: &str = "postgres";
pub const POSTGRES_TAG: &str = "15-bookworm";

/// The label on every container of this process; the [`reaper`] removes
/// what carries it.
const RUN_LABEL: &str = "eda-rust.test-run";
/// How long a container may take to be ready (a cold JVM on a loaded 2-core
/// machine).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(180);

/// `host:port` of the broker the tests of this binary share.
///
/// # Panics
///
/// When there is no broker to use, with instructions.
pub async fn kafka_bootstrap_servers() -> String {
    if let Some(servers) = env_set("KAFKA_BOOTSTRAP_SERVERS") {
        return servers;
    }
    kafka_container().await.plaintext
}

/// `host:port` of the same broker's SASL listener, where clients log in as
/// a SCRAM-SHA-512 user and get what its ACLs allow (`kafka_ops::access`):
/// `KAFKA_SASL_BOOTSTRAP_SERVERS` along with `KAFKA_BOOTSTRAP_SERVERS`, or
/// the container's.
///
/// # Panics
///
/// When there is no broker, or `KAFKA_BOOTSTRAP_SERVERS` names one without
/// saying where its SASL listener is.
pub async fn kafka_sasl_bootstrap_servers() -> String {
    if env_set("KAFKA_BOOTSTRAP_SERVERS").is_some() {
        return env_set("KAFKA_SASL_BOOTSTRAP_SERVERS").unwrap_or_else(|| {
            panic!(
                "KAFKA_BOOTSTRAP_SERVERS is set and KAFKA_SASL_BOOTSTRAP_SERVERS is not: name the broker's \
                 SASL/SCRAM listener too (the local broker's is 127.0.0.1:9098; `cargo xtask test` sets both)"
            )
        });
    }
    kafka_container().await.sasl
}

/// Where Kafka's tools reach the broker from inside its container: its
/// own plaintext listener, where anything is allowed.
pub const KAFKA_CONTAINER_TOOLS_BOOTSTRAP: &str = "localhost:9093";
/// Where Kafka's tools log in (SASL/SCRAM) from inside its container: the
/// host's SASL listener is advertised at the host's address, which the
/// container does not reach.
pub const KAFKA_CONTAINER_TOOLS_SASL_BOOTSTRAP: &str = "localhost:9096";

/// Whether `KAFKA_BOOTSTRAP_SERVERS` names the broker (no container then).
pub fn kafka_named() -> bool {
    env_set("KAFKA_BOOTSTRAP_SERVERS").is_some()
}

/// Runs `command` in this binary's broker container (the image has
/// Kafka's tools under `/opt/kafka/bin`), with the docker client, and
/// returns its output, or its output as the error when it fails. `None`
/// when `KAFKA_BOOTSTRAP_SERVERS` names the broker, which is then no
/// container.
pub async fn exec_in_kafka_container(command: Vec<String>) -> Option<Result<String, String>> {
    if env_set("KAFKA_BOOTSTRAP_SERVERS").is_some() {
        return None;
    }
    kafka_container().await;
    let id = KAFKA_CONTAINER.get()?.id().to_owned();
    let run = tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new("docker")
            .args(["exec", &id])
            .args(&command)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run docker exec: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            Ok(text)
        } else {
            Err(format!("`docker exec` failed ({}):\n{text}", output.status))
        }
    });
    Some(run.await.unwrap_or_else(|e| Err(e.to_string())))
}

/// This binary's broker container, once started: kept until the process
/// exits (the [`reaper`] removes it then), and reached for
/// [`exec_in_kafka_container`].
static KAFKA_CONTAINER: OnceLock<ContainerAsync<Kafka>> = OnceLock::new();

/// The two listeners of this binary's broker container.
#[derive(Debug, Clone)]
struct KafkaListeners {
    plaintext: String,
    sasl: String,
}

async fn kafka_container() -> KafkaListeners {
    static KAFKA: OnceCell<Result<KafkaListeners, String>> = OnceCell::const_new();
    KAFKA
        .get_or_init(|| on_own_runtime(start_kafka()))
        .await
        .clone()
        .unwrap_or_else(|e| {
            panic!(
                "these tests need a real Apache Kafka broker, and none was found:\n\
                 KAFKA_BOOTSTRAP_SERVERS is not set and no {KAFKA_IMAGE}:{} container could be started:\n{e}\n\
                 Run the tests with `cargo xtask test` (it starts a local broker when there is no container engine),\n\
                 or start one with `cargo xtask kafka up` and set KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092.\n\
                 Where no image registry is reachable, `cargo xtask images` builds the image.",
                kafka_ops::KAFKA_VERSION
            )
        })
}

/// The URL of the PostgreSQL server the tests of this binary share, as its
/// superuser, database `postgres`.
///
/// # Panics
///
/// When there is no server to use, with instructions.
pub async fn postgres_url() -> String {
    if let Some(url) = env_set("DATABASE_URL") {
        return url;
    }
    static POSTGRES: OnceCell<Result<String, String>> = OnceCell::const_new();
    POSTGRES
        .get_or_init(|| on_own_runtime(start_postgres()))
        .await
        .clone()
        .unwrap_or_else(|e| {
            panic!(
                "these tests need PostgreSQL, and none was found:\n\
                 DATABASE_URL is not set and no {POSTGRES_IMAGE}:{POSTGRES_TAG} container could be started:\n{e}\n\
                 Run the tests with `cargo xtask test` (it starts a local PostgreSQL when there is no container engine),\n\
                 or start one with `cargo xtask pg up` and set DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres.\n\
                 Where no image registry is reachable, `cargo xtask images` builds the image."
            )
        })
}

/// The value of environment variable `name`, unless unset or blank.
fn env_set(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// Runs `work` on this crate's runtime, which lives as long as the process.
async fn on_own_runtime<T: Send + 'static>(
    work: impl Future<Output = Result<T, String>> + Send + 'static,
) -> Result<T, String> {
    static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("testkit")
            .enable_all()
            .build()
            .expect("a runtime for the test containers")
    });
    RUNTIME
        .spawn(work)
        .await
        .unwrap_or_else(|e| Err(format!("starting the container failed: {e}")))
}

/// The single-node KRaft broker the tests use: the official image's
/// environment, as in `docker-compose.yml` and the local broker.
///
/// Clients must be told the broker's address as they reach it, which is
/// known only once the container runs and its port is published. So the
/// container first waits for that address in a file, which [`start_kafka`]
/// writes, then runs the image's own start script.
#[derive(Debug, Clone)]
struct Kafka;

/// The listener clients on the host connect to.
const KAFKA_PORT: u16 = 9092;
/// The listener where clients log in (SASL/SCRAM).
const KAFKA_SASL_PORT: u16 = 9095;
/// Where [`start_kafka`] writes the advertised listeners.
const ADVERTISED_FILE: &str = "/tmp/advertised-listeners";

impl Image for Kafka {
    fn name(&self) -> &str {
        KAFKA_IMAGE
    }

    fn tag(&self) -> &str {
        kafka_ops::KAFKA_VERSION
    }

    fn ready_conditions(&self) -> Vec<WaitFor> {
        // The broker starts once told its address; start_kafka waits for it.
        Vec::new()
    }

    fn entrypoint(&self) -> Option<&str> {
        Some("bash")
    }

    fn cmd(&self) -> impl IntoIterator<Item = impl Into<std::borrow::Cow<'_, str>>> {
        [
            "-c".to_owned(),
            format!(
                "until [ -s {ADVERTISED_FILE} ]; do sleep 0.1; done; \
                 KAFKA_ADVERTISED_LISTENERS=$(cat {ADVERTISED_FILE}) exec /etc/kafka/docker/run"
            ),
        ]
    }

    fn env_vars(
        &self,
    ) -> impl IntoIterator<
        Item = (
            impl Into<std::borrow::Cow<'_, str>>,
            impl Into<std::borrow::Cow<'_, str>>,
        ),
    > {
        [
            ("KAFKA_NODE_ID", "1"),
            ("KAFKA_PROCESS_ROLES", "broker,controller"),
            ("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9094"),
            // Clients on the host use PLAINTEXT, or log in on CLIENTS; the
            // node talks to itself on BROKER.
            (
                "KAFKA_LISTENERS",
                "PLAINTEXT://0.0.0.0:9092,BROKER://0.0.0.0:9093,CONTROLLER://0.0.0.0:9094,CLIENTS://0.0.0.0:9095,\
                 TOOLS://localhost:9096",
            ),
            (
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                "PLAINTEXT:PLAINTEXT,BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT,CLIENTS:SASL_PLAINTEXT,TOOLS:SASL_PLAINTEXT",
            ),
            // As the local broker (xtask's broker.rs): SCRAM users on
            // CLIENTS, nothing allowed without an ACL but to the super
            // users, the plaintext listeners' principal among them.
            ("KAFKA_SASL_ENABLED_MECHANISMS", "SCRAM-SHA-512"),
            (
                // listener.name.clients.scram-sha-512.sasl.jaas.config: the
                // image reads `___` as `-`.
                "KAFKA_LISTENER_NAME_CLIENTS_SCRAM___SHA___512_SASL_JAAS_CONFIG",
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            ),
            (
                "KAFKA_LISTENER_NAME_TOOLS_SCRAM___SHA___512_SASL_JAAS_CONFIG",
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            ),
            (
                "KAFKA_AUTHORIZER_CLASS_NAME",
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            ),
            ("KAFKA_SUPER_USERS", "User:ANONYMOUS;User:operator"),
            ("KAFKA_INTER_BROKER_LISTENER_NAME", "BROKER"),
            ("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER"),
            ("KAFKA_NUM_PARTITIONS", "3"),
            // One broker: internal topics cannot have more than one replica.
            ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1"),
            ("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1"),
            ("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
            ("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR", "1"),
            ("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1"),
            // A single member of a new group need not wait for others to join.
            ("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0"),
            // Topics are created by the tests, with their settings, never by accident.
            ("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false"),
            ("KAFKA_HEAP_OPTS", "-Xms256m -Xmx1g"),
        ]
    }

    fn expose_ports(&self) -> &[ContainerPort] {
        &[
            ContainerPort::Tcp(KAFKA_PORT),
            ContainerPort::Tcp(KAFKA_SASL_PORT),
        ]
    }
}

async fn start_kafka() -> Result<KafkaListeners, String> {
    let container = in_this_run(Kafka, &[KAFKA_PORT, KAFKA_SASL_PORT])
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let plaintext = address(&container, KAFKA_PORT).await?;
    let sasl = address(&container, KAFKA_SASL_PORT).await?;
    let advertised = format!(
        "PLAINTEXT://{plaintext},BROKER://localhost:9093,CLIENTS://{sasl},TOOLS://{KAFKA_CONTAINER_TOOLS_SASL_BOOTSTRAP}"
    );
    let told = container.exec(
        ExecCommand::new(["sh", "-c", &format!("echo '{advertised}' > {ADVERTISED_FILE}")])
            .with_container_ready_conditions(vec![WaitFor::message_on_stdout("Kafka Server started")]),
    );
    tokio::time::timeout(STARTUP_TIMEOUT, told)
        .await
        .map_err(|_| format!("the broker did not start within {STARTUP_TIMEOUT:?}"))?
        .map_err(|e| format!("the broker did not start: {e}"))?;
    KAFKA_CONTAINER
        .set(container)
        .map_err(|_| "a second broker container".to_owned())?;
    Ok(KafkaListeners { plaintext, sasl })
}

async fn start_postgres() -> Result<String, String> {
    let postgres = Postgres::default()
        .with_tag(POSTGRES_TAG)
        // Throwaway data: no fsync. Tests in parallel, each with pools of
        // its own: more connections than the default 100.
        .with_cmd(["-c", "fsync=off", "-c", "max_connections=300"]);
    let container = in_this_run(postgres, &[5432])
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let address = address(&container, 5432).await?;
    keep(container);
    // The module's superuser and password.
    Ok(format!("postgres://postgres:postgres@{address}/postgres"))
}

/// `image` labelled as this run's, its `ports` published on loopback when
/// the engine is on this machine.
fn in_this_run<I: Image>(
    image: impl Into<ContainerRequest<I>>,
    ports: &'static [u16],
) -> ContainerRequest<I> {
    let request = image
        .into()
        .with_label(RUN_LABEL, reaper::run_id())
        .with_startup_timeout(STARTUP_TIMEOUT);
    if engine_is_local() {
        request.with_host_config_modifier(move |config: &mut HostConfig| {
            // Each port on 127.0.0.1, at a port the engine picks. Without an
            // address the engine would listen on every interface (and podman
            // would report the binding without one, which testcontainers
            // ignores).
            config.publish_all_ports = Some(false);
            config.port_bindings = Some(
                ports
                    .iter()
                    .map(|port| {
                        let binding = PortBinding {
                            host_ip: Some(Ipv4Addr::LOCALHOST.to_string()),
                            host_port: Some(String::new()),
                        };
                        (format!("{port}/tcp"), Some(vec![binding]))
                    })
                    .collect(),
            );
        })
    } else {
        request
    }
}

/// Whether the engine runs on this machine: reached through a Unix socket
/// (the default), with no other host for containers named.
fn engine_is_local() -> bool {
    env_set("TESTCONTAINERS_HOST_OVERRIDE").is_none()
        && env_set("DOCKER_HOST").is_none_or(|host| host.starts_with("unix://"))
}

/// `ip:port` where this process reaches `container`'s `port`.
///
/// With the engine on this machine, the port is published on 127.0.0.1 (see
/// [`in_this_run`]), so that is where it is reached. testcontainers would
/// report another host wherever `/.dockerenv` exists (it takes that to mean
/// the tests run in a container, and reports the bridge network's gateway),
/// and a port published on loopback cannot be reached there. With an engine
/// elsewhere, it is the host testcontainers reports, resolved.
async fn address<I: Image>(container: &ContainerAsync<I>, port: u16) -> Result<String, String> {
    let published = container
        .get_host_port_ipv4(port)
        .await
        .map_err(|e| format!("port {port} is not published: {e}"))?;
    let ip = if engine_is_local() {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        let host = container.get_host().await.map_err(|e| e.to_string())?.to_string();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => tokio::net::lookup_host((host, published))
                .await
                .map_err(|e| format!("cannot resolve {host}: {e}"))?
                .map(|address| address.ip())
                .min_by_key(IpAddr::is_ipv6)
                .ok_or_else(|| format!("{host} has no address"))?,
        }
    };
    Ok(std::net::SocketAddr::new(ip, published).to_string())
}

/// Keeps `container` until the process exits: dropping it would remove it
/// while other tests use it. The [`reaper`] removes it then.
fn keep<I: Image + Send + Sync + 'static>(container: ContainerAsync<I>) {
    static KEPT: OnceLock<std::sync::Mutex<Vec<Box<dyn std::any::Any + Send>>>> = OnceLock::new();
    KEPT.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Box::new(container));
}

/// Removes this process's containers when it exits, whether it returns,
/// panics, is interrupted or is killed.
///
/// A child process, in a process group of its own (so ctrl-c in a terminal
/// does not reach it first), waits for end-of-file on a pipe that only this
/// process holds open; the kernel closes it when this process ends, however
/// it ends. Then the child removes every container labelled with this run's
/// id, with the docker client.
mod reaper {
    use std::process::{Child, Command, Stdio};
    use std::sync::{LazyLock, OnceLock};

    use super::RUN_LABEL;

    /// This process's run id: unique across processes and runs.
    pub fn run_id() -> &'static str {
        static ID: LazyLock<String> = LazyLock::new(|| {
            let id = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
            start(&id);
            id
        });
        &ID
    }

    fn start(id: &str) {
        static REAPER: OnceLock<Option<Child>> = OnceLock::new();
        REAPER.get_or_init(|| {
            let docker = Command::new("docker")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !docker.is_ok_and(|s| s.success()) {
                eprintln!(
                    "testkit: no docker client to remove this run's containers when it ends; remove them with \
                     `docker rm -f $(docker ps -aq --filter label={RUN_LABEL}={id})`"
                );
                return None;
            }
            let script = format!(
                "cat > /dev/null; \
                 ids=$(docker ps --all --quiet --filter label={RUN_LABEL}=\"$1\"); \
                 [ -z \"$ids\" ] || docker rm --force --volumes $ids > /dev/null"
            );
            let mut command = Command::new("sh");
            command
                .args(["-c", &script, "reaper", id])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
            match command.spawn() {
                // Its stdin stays open, in this static, until the process ends.
                Ok(child) => Some(child),
                Err(e) => {
                    eprintln!(
                        "testkit: cannot start the container reaper ({e}); remove this run's containers with \
                         `docker rm -f $(docker ps -aq --filter label={RUN_LABEL}={id})`"
                    );
                    None
                }
            }
        });
    }
}
