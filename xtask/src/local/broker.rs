//! A local Apache Kafka broker, for machines without Docker: the release
//! compose runs, resolved from Maven Central (`xtask/kafka/pom.xml`) and run
//! by the JDK as a KRaft node on 127.0.0.1, under `target/xtask/kafka/`; or
//! three such nodes (`--brokers 3`), each a broker and a controller, under
//! `target/xtask/kafka-cluster/`. See docs/operations.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer};

use crate::local::process::{is_alive, runs, spawn_detached, terminate};

/// Where clients reach the local broker (and node 1 of the cluster).
pub const BOOTSTRAP: &str = "127.0.0.1:9092";
/// Where clients reach the cluster of [`CLUSTER_NODES`].
pub const CLUSTER_BOOTSTRAP: &str = "127.0.0.1:9092,127.0.0.1:9192,127.0.0.1:9292";
/// Where clients that log in (SASL/SCRAM) reach the local broker (node 1's
/// port in a cluster); see [`LocalBroker::write_config`].
pub const SASL_BOOTSTRAP: &str = "127.0.0.1:9098";
/// The nodes of `kafka up --brokers 3`.
pub const CLUSTER_NODES: u16 = 3;
/// How long a broker may take to start (a cold JVM on 2 cores takes ~10 s).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a broker may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct LocalBroker {
    /// `docker/images/kafka`: Kafka's tools' scripts, as the image has them.
    image: PathBuf,
    /// `xtask/kafka`: the pom and the logging config.
    source: PathBuf,
    /// `target/xtask/kafka` (or `kafka-cluster`): everything the brokers write.
    dir: PathBuf,
    /// 1, or [`CLUSTER_NODES`].
    nodes: u16,
}

impl LocalBroker {
    /// The single broker.
    pub fn new(root: &Path) -> Self {
        Self {
            image: root.join("docker/images/kafka"),
            source: root.join("xtask/kafka"),
            dir: root.join("target/xtask/kafka"),
            nodes: 1,
        }
    }

    /// The cluster of [`CLUSTER_NODES`] brokers.
    pub fn cluster(root: &Path) -> Self {
        Self::in_dir(root, root.join("target/xtask/kafka-cluster"), CLUSTER_NODES)
    }

    /// `nodes` brokers keeping everything in `dir`, on the same ports.
    pub fn in_dir(root: &Path, dir: PathBuf, nodes: u16) -> Self {
        Self {
            dir,
            nodes,
            ..Self::new(root)
        }
    }

    /// Where clients reach it.
    pub fn bootstrap(&self) -> &'static str {
        if self.nodes == 1 {
            BOOTSTRAP
        } else {
            CLUSTER_BOOTSTRAP
        }
    }

    /// The replicas a topic gets: one per broker, up to three.
    pub fn replication_factor(&self) -> i32 {
        i32::from(self.nodes.min(3))
    }

    /// The node ids, from 1.
    pub fn node_ids(&self) -> std::ops::RangeInclusive<u16> {
        1..=self.nodes
    }

    /// Node `node`'s own directory: the single broker keeps the layout it
    /// always had.
    fn node_dir(&self, node: u16) -> PathBuf {
        if self.nodes == 1 {
            self.dir.clone()
        } else {
            self.dir.join(format!("node-{node}"))
        }
    }

    /// Node `node`'s plaintext, controller and SASL listeners.
    fn ports(node: u16) -> (u16, u16, u16) {
        let base = 9092 + 100 * (node - 1);
        (base, base + 1, base + 6)
    }

    pub fn node_log_path(&self, node: u16) -> PathBuf {
        self.node_dir(node).join("broker.log")
    }

    fn pid_path(&self, node: u16) -> PathBuf {
        self.node_dir(node).join("broker.pid")
    }

    /// The broker's pid (node 1's in a cluster), if it is running.
    pub fn running_pid(&self) -> Option<u32> {
        self.node_pid(1)
    }

    /// Node `node`'s pid, if it is running.
    pub fn node_pid(&self, node: u16) -> Option<u32> {
        let pid = fs::read_to_string(self.pid_path(node))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A stale pid file (after a reboot) may name an unrelated process.
        (is_alive(pid) && runs(pid, "kafka.Kafka")).then_some(pid)
    }

    /// Starts every node not running, and waits until all answer. Returns
    /// whether this call started any.
    pub async fn start(&self) -> Result<bool> {
        let release = self.dir.join("release");
        let made_by_another = self
            .node_ids()
            .any(|node| self.node_dir(node).join("data").exists())
            && fs::read_to_string(&release).ok().as_deref() != Some(kafka_ops::KAFKA_VERSION);
        let mut started = Vec::new();
        for node in self.node_ids() {
            if self.node_pid(node).is_none() {
                match self.start_node(node).await {
                    Ok(pid) => started.push((node, pid)),
                    Err(e) => return Err(self.undo_start(&started, e)),
                }
            }
        }
        if let Err(e) = self.wait_until_ready().await {
            return Err(self.undo_start(&started, e));
        }
        if made_by_another && let Err(e) = self.finalize_upgrade().await {
            return Err(self.undo_start(&started, e));
        }
        fs::write(&release, kafka_ops::KAFKA_VERSION)?;
        Ok(!started.is_empty())
    }

    /// Data an earlier release made keeps that release's feature levels
    /// (share groups off below 4.2, say) until the upgrade is finalized, as
    /// Kafka's upgrade notes say: the levels of this release, each named,
    /// as `kafka-features.sh upgrade --release-version` would also raise
    /// `kraft.version` and so turn the static quorum dynamic (KAFKA-21426).
    async fn finalize_upgrade(&self) -> Result<()> {
        let release = kafka_ops::KAFKA_VERSION
            .rsplit_once('.')
            .map_or(kafka_ops::KAFKA_VERSION, |(major_minor, _)| major_minor);
        let mapping = self
            .run_tool(
                "kafka-features.sh",
                &["version-mapping", "--release-version", release],
            )
            .await?;
        let mut args = vec!["--bootstrap-server", self.bootstrap(), "upgrade"];
        for feature in features_to_finalize(&mapping) {
            args.extend(["--feature", feature]);
        }
        self.run_tool("kafka-features.sh", &args).await?;
        eprintln!(
            "xtask: the broker's data was made by another Kafka release; its features are now {release}'s"
        );
        Ok(())
    }

    /// Stops what a failed [`LocalBroker::start`] started, so that nothing
    /// is left running that no one will stop, and returns its error.
    fn undo_start(&self, started: &[(u16, u32)], error: anyhow::Error) -> anyhow::Error {
        for &(node, pid) in started {
            if terminate(pid, STOP_TIMEOUT).is_ok() {
                let _ = fs::remove_file(self.pid_path(node));
            }
        }
        error
    }

    /// Starts node `node` (without waiting for it).
    pub async fn start_node(&self, node: u16) -> Result<u32> {
        // Another broker (the single one, the cluster, a test's) may hold
        // the ports: said plainly, not as a broker that died at start.
        let (port, controller, sasl) = Self::ports(node);
        for port in [port, controller, sasl] {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "127.0.0.1:{port} is taken: another broker runs? (cargo xtask kafka down stops xtask's)"
                );
            }
        }
        let dir = self.node_dir(node);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let classpath = self.classpath()?;
        let config = self.write_config(node)?;
        self.format_storage(node, &config).await?;

        let mut command = std::process::Command::new(java());
        // A cluster's three JVMs share the machine: less heap each.
        let heap = if self.nodes == 1 { "-Xmx1g" } else { "-Xmx512m" };
        command
            .args(["-Xms256m", heap, "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.source.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(&classpath)
            .arg("kafka.Kafka")
            .arg(&config);
        // Its own process group: ctrl-c in the terminal reaches the services,
        // which need the broker to commit their offsets on the way out; the
        // broker is stopped after them. Not waited on: it outlives `cargo
        // xtask kafka up`.
        let pid = spawn_detached(command, &self.node_log_path(node), &self.pid_path(node))
            .context("is a JDK 17+ installed?")?;
        eprintln!(
            "xtask: starting Apache Kafka node {node} of {} (pid {pid}), log: {}",
            self.nodes,
            self.node_log_path(node).display()
        );
        Ok(pid)
    }

    /// Stops every node: SIGTERM, then SIGKILL if one has not exited in time.
    pub fn stop(&self) -> Result<()> {
        let running: Vec<(u16, u32)> = self
            .node_ids()
            .filter_map(|node| Some((node, self.node_pid(node)?)))
            .collect();
        if running.is_empty() {
            eprintln!("xtask: broker not running");
        }
        // All at once: one by one, the last ones would wait out each
        // other's leadership moves.
        for &(_, pid) in &running {
            let _ = crate::local::process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        }
        for (node, pid) in running {
            eprintln!("xtask: stopping broker node {node} (pid {pid})");
            terminate(pid, STOP_TIMEOUT)?;
            let _ = fs::remove_file(self.pid_path(node));
        }
        Ok(())
    }

    /// Stops node `node` with `signal` (SIGKILL: a crash; SIGTERM: a
    /// controlled shutdown) and waits until its process is gone.
    pub async fn signal_node(&self, node: u16, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self
            .node_pid(node)
            .with_context(|| format!("broker node {node} is not running"))?;
        crate::local::process::signal(pid, signal)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while is_alive(pid) {
            if Instant::now() > deadline {
                bail!("broker node {node} (pid {pid}) still runs {STOP_TIMEOUT:?} after {signal}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits until every node answers and the cluster's metadata lists all
    /// of them, failing early if one dies.
    pub async fn wait_until_ready(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let probe: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            // Quiet: connection refusals are expected while the JVMs start.
            .set("log_level", "0")
            .create()?;
        loop {
            for node in self.node_ids() {
                // Alive, not yet `kafka.Kafka`: just after the fork, before
                // the exec, its command line is still xtask's.
                let alive = fs::read_to_string(self.pid_path(node))
                    .ok()
                    .and_then(|pid| pid.trim().parse().ok())
                    .is_some_and(is_alive);
                if !alive {
                    bail!(
                        "broker node {node} exited during startup; see {}",
                        self.node_log_path(node).display()
                    );
                }
            }
            let brokers = probe
                .client()
                .fetch_metadata(None, Duration::from_secs(1))
                .map_or(0, |m| m.brokers().len());
            if brokers == usize::from(self.nodes) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{brokers} of {} brokers answered within {START_TIMEOUT:?}; see {}",
                    self.nodes,
                    self.node_log_path(1).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Deletes the topics earlier test runs left on the local broker (every
    /// test creates its own `test.*` topics and leaves them for a look after
    /// a failure); thousands of them slow the broker's start and fill the disk.
    pub async fn delete_test_topics(&self) -> Result<usize> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()?;
        let metadata = admin
            .inner()
            .fetch_metadata(None, Duration::from_secs(10))
            .context("listing the broker's topics")?;
        let names: Vec<&str> = metadata
            .topics()
            .iter()
            .map(|topic| topic.name())
            .filter(|name| name.starts_with("test."))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        // In slices: one request naming thousands of topics can outlast the timeout.
        for slice in names.chunks(500) {
            for result in admin.delete_topics(slice, &options).await? {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                    Err((topic, code)) => bail!("deleting topic {topic}: {code}"),
                }
            }
        }
        Ok(names.len())
    }

    /// The broker's classpath, resolved by Maven when missing or older than the pom.
    pub fn classpath(&self) -> Result<String> {
        let pom = self.source.join("pom.xml");
        let cached = self.dir.join("classpath.txt");
        let fresh = match (fs::metadata(&cached), fs::metadata(&pom)) {
            (Ok(c), Ok(p)) => c.modified()? >= p.modified()?,
            _ => false,
        };
        if !fresh {
            eprintln!(
                "xtask: resolving the Kafka broker from Maven Central ({})",
                pom.display()
            );
            let output = std::process::Command::new("mvn")
                .args(["-B", "-q", "-f"])
                .arg(&pom)
                .arg("dependency:build-classpath")
                .arg(format!("-Dmdep.outputFile={}", cached.display()))
                .output()
                .context("cannot run mvn (is Maven installed?)")?;
            if !output.status.success() {
                bail!(
                    "mvn could not resolve the Kafka broker ({}):\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            // The plugin leaves an unchanged file as it was, older than the
            // pom: marked fresh here, or every start would resolve again.
            fs::File::options()
                .append(true)
                .open(&cached)?
                .set_modified(std::time::SystemTime::now())?;
        }
        Ok(fs::read_to_string(&cached)?.trim().to_owned())
    }

    /// Runs one of Kafka's own tools (`kafka-consumer-groups.sh`, as in the
    /// distribution's `bin/`) on the broker's classpath; what it printed, or
    /// its output in the error if it failed.
    pub async fn run_tool(&self, script: &str, args: &[&str]) -> Result<String> {
        let mut command = tokio::process::Command::from(self.tool(script)?);
        command.args(args);
        crate::local::process::output(command, &format!("{script} {}", args.join(" "))).await
    }

    /// [`LocalBroker::run_tool`]'s command, without arguments.
    pub fn tool(&self, script: &str) -> Result<std::process::Command> {
        let bin = self.image.join("bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(std::iter::once(bin.clone()).chain(std::env::split_paths(&path)))?;
        let log4j = self.image.join("docker/tools-log4j2.yaml");
        let mut command = std::process::Command::new(bin.join(script));
        command
            .env("PATH", path)
            .env("CLASSPATH", self.classpath()?)
            .env(
                "KAFKA_LOG4J_OPTS",
                format!("-Dlog4j2.configurationFile={}", log4j.display()),
            )
            .envs(kafka_ops::access::TOOL_JVM)
            .stdin(Stdio::null());
        Ok(command)
    }

    /// Writes node `node`'s `server.properties`: KRaft on loopback, each
    /// process both a broker and a controller.
    fn write_config(&self, node: u16) -> Result<PathBuf> {
        let data = self.node_dir(node).join("data");
        let (port, controller, sasl) = Self::ports(node);
        let voters = self
            .node_ids()
            .map(|n| format!("{n}@127.0.0.1:{}", Self::ports(n).1))
            .collect::<Vec<_>>()
            .join(",");
        // Every topic, the internal ones (offsets, transactions) included,
        // on every broker up to three; an acknowledged write on two of them.
        let replicas = self.replication_factor();
        let min_insync = replicas.min(2);
        let config = format!(
            "\
# Written by `cargo xtask kafka up`: node {node} of {nodes}, a broker and a controller.
process.roles=broker,controller
node.id={node}
controller.quorum.voters={voters}
# PLAINTEXT: the brokers' own (replication) and the loopback tools' and
# tests', unauthenticated. CLIENTS: where the services log in as their own
# users (SCRAM-SHA-512, made by `cargo xtask kafka up`), each allowed only
# what its ACLs say (kafka_ops::access).
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},CLIENTS://127.0.0.1:{sasl}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},CLIENTS://127.0.0.1:{sasl}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,CLIENTS:SASL_PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.clients.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
# Nothing is allowed without an ACL, except to the super users: the
# unauthenticated principal of the loopback listeners above, and the operator.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS;User:{operator}
log.dirs={data}
num.partitions=3
default.replication.factor={replicas}
min.insync.replicas={min_insync}
offsets.topic.replication.factor={replicas}
transaction.state.log.replication.factor={replicas}
transaction.state.log.min.isr={min_insync}
share.coordinator.state.topic.replication.factor={replicas}
share.coordinator.state.topic.min.isr={min_insync}
# A single member of a new group need not wait for others to join.
group.initial.rebalance.delay.ms=0
# Topics are created by the services, with their settings, never by accident.
auto.create.topics.enable=false
",
            nodes = self.nodes,
            operator = shared_events::services::OPERATOR,
            data = data.display()
        );
        let path = self.node_dir(node).join("server.properties");
        fs::write(&path, config)?;
        Ok(path)
    }

    /// Formats node `node`'s data directory for KRaft, once; the nodes of a
    /// cluster share one cluster id, made by the first.
    async fn format_storage(&self, node: u16, config: &Path) -> Result<()> {
        if self.node_dir(node).join("data/meta.properties").exists() {
            return Ok(());
        }
        let id_path = self.dir.join("cluster-id");
        let id = match fs::read_to_string(&id_path) {
            Ok(id) if self.nodes > 1 => id.trim().to_owned(),
            _ => {
                let id = self.run_tool("kafka-storage.sh", &["random-uuid"]).await?;
                fs::write(&id_path, id.trim())?;
                id.trim().to_owned()
            }
        };
        let config = config.to_string_lossy();
        let format = ["format", "--ignore-formatted", "-t", &id, "-c", &config];
        self.run_tool("kafka-storage.sh", &format).await.map(drop)
    }
}

/// The `--feature` arguments of a finalized upgrade, from what
/// `kafka-features.sh version-mapping` prints (`metadata.version=33 (4.4)`,
/// `share.version=2`, one a line): every feature but `kraft.version`.
fn features_to_finalize(mapping: &str) -> Vec<&str> {
    mapping
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|feature| feature.contains('=') && !feature.starts_with("kraft.version="))
        .collect()
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map_or_else(|| PathBuf::from("java"), |home| Path::new(&home).join("bin/java"))
}

impl crate::local::LocalServer for LocalBroker {
    const NAME: &'static str = "broker";

    async fn start(&self) -> Result<bool> {
        LocalBroker::start(self).await
    }

    fn stop(&self) -> Result<()> {
        LocalBroker::stop(self)
    }

    fn running_pid(&self) -> Option<u32> {
        LocalBroker::running_pid(self)
    }

    fn describe(&self) -> String {
        format!("{} (logs: {})", self.bootstrap(), self.dir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finalized_upgrade_names_every_feature_of_the_release_but_the_quorum_s() {
        let mapping = "metadata.version=33 (4.4)\nkraft.version=1\ntransaction.version=2\nshare.version=2\n";
        assert_eq!(
            features_to_finalize(mapping),
            ["metadata.version=33", "transaction.version=2", "share.version=2"]
        );
    }

    /// One Kafka release everywhere: what the pom resolves, and every
    /// `apache/kafka` image the compose files and the docs name.
    #[test]
    fn every_file_names_the_one_kafka_release() {
        let root = crate::workspace_root();
        let version = kafka_ops::KAFKA_VERSION;
        let pom = fs::read_to_string(root.join("xtask/kafka/pom.xml")).expect("pom");
        assert!(
            pom.contains(&format!("<kafka.version>{version}</kafka.version>")),
            "xtask/kafka/pom.xml resolves Kafka {version}"
        );
        for file in [
            "docker-compose.yml",
            "docker-compose.cluster.yml",
            "docs/testing.md",
            "docs/operations.md",
        ] {
            let text = fs::read_to_string(root.join(file)).expect(file);
            let tags: Vec<&str> = text
                .split("apache/kafka:")
                .skip(1)
                .map(|rest| {
                    rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
                        .next()
                        .unwrap_or("")
                })
                .collect();
            assert!(!tags.is_empty(), "{file} names the apache/kafka image");
            assert!(
                tags.iter().all(|tag| tag.trim_end_matches('.') == version),
                "{file} names apache/kafka:{tags:?}, not {version}"
            );
        }
    }
}
