//! A local Apache Kafka broker, for machines without Docker.
//!
//! The broker is the real one, the same version as the `apache/kafka` image
//! in `docker-compose.yml`: Maven resolves `org.apache.kafka:kafka_2.13` and
//! its dependencies from Maven Central (`xtask/kafka/pom.xml`), and the JDK
//! runs it as a single KRaft node (broker and controller in one process)
//! listening on 127.0.0.1 only.
//!
//! Everything lives under `target/xtask/kafka/`: the resolved classpath (kept
//! until the pom changes; the jars stay in Maven's local repository), the
//! config, the data directory, the log and the pid file.

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

use crate::process::{is_alive, runs, terminate};

/// Where clients reach the local broker.
pub const BOOTSTRAP: &str = "127.0.0.1:9092";
/// The controller's listener (KRaft), also on loopback only.
const CONTROLLER: &str = "127.0.0.1:9093";
/// How long a broker may take to start (a cold JVM on 2 cores takes ~10 s).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a broker may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct LocalBroker {
    /// `xtask/kafka`: the pom and the logging config.
    source: PathBuf,
    /// `target/xtask/kafka`: everything the broker writes.
    dir: PathBuf,
}

impl LocalBroker {
    pub fn new(root: &Path) -> Self {
        Self {
            source: root.join("xtask/kafka"),
            dir: root.join("target/xtask/kafka"),
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("broker.log")
    }

    fn pid_path(&self) -> PathBuf {
        self.dir.join("broker.pid")
    }

    /// The broker's pid, if it is running.
    pub fn running_pid(&self) -> Option<u32> {
        let pid = fs::read_to_string(self.pid_path()).ok()?.trim().parse().ok()?;
        // A stale pid file (after a reboot) may name an unrelated process.
        (is_alive(pid) && runs(pid, "kafka.Kafka")).then_some(pid)
    }

    /// Starts the broker unless it is running, and waits until it answers.
    /// Returns whether this call started it.
    pub async fn start(&self) -> Result<bool> {
        if let Some(pid) = self.running_pid() {
            wait_until_ready(pid, &self.log_path()).await?;
            return Ok(false);
        }
        fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
        let classpath = self.classpath()?;
        let config = self.write_config()?;
        self.format_storage(&classpath, &config)?;

        let log = fs::File::create(self.log_path())?;
        let mut command = std::process::Command::new(java());
        command
            .args(["-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-Djava.awt.headless=true"])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.source.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(&classpath)
            .arg("kafka.Kafka")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own process group: ctrl-c in the terminal reaches the services,
        // which need the broker to commit their offsets on the way out; the
        // broker is stopped after them.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .spawn()
            .context("cannot start java (is a JDK 17+ installed?)")?;
        let pid = child.id();
        fs::write(self.pid_path(), pid.to_string())?;
        eprintln!(
            "xtask: starting Apache Kafka (pid {pid}), log: {}",
            self.log_path().display()
        );
        // Not waited on here: the broker outlives `cargo xtask kafka up`.
        drop(child);
        wait_until_ready(pid, &self.log_path()).await?;
        Ok(true)
    }

    /// Stops the broker: SIGTERM, then SIGKILL if it has not exited in time.
    pub fn stop(&self) -> Result<()> {
        let Some(pid) = self.running_pid() else {
            eprintln!("xtask: broker not running");
            return Ok(());
        };
        eprintln!("xtask: stopping broker (pid {pid})");
        terminate(pid, STOP_TIMEOUT)?;
        let _ = fs::remove_file(self.pid_path());
        Ok(())
    }

    /// Deletes the topics earlier test runs left on the local broker (every
    /// test creates its own `test.*` topics and leaves them for a look after
    /// a failure); thousands of them slow the broker's start and fill the disk.
    pub async fn delete_test_topics(&self) -> Result<usize> {
        let admin: AdminClient<DefaultClientContext> =
            ClientConfig::new().set("bootstrap.servers", BOOTSTRAP).create()?;
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
        }
        Ok(fs::read_to_string(&cached)?.trim().to_owned())
    }

    /// Writes `server.properties` for a single-node KRaft cluster on loopback.
    fn write_config(&self) -> Result<PathBuf> {
        let data = self.dir.join("data");
        let config = format!(
            "\
# Written by `cargo xtask kafka up`: one process is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{CONTROLLER}
listeners=PLAINTEXT://{BOOTSTRAP},CONTROLLER://{CONTROLLER}
advertised.listeners=PLAINTEXT://{BOOTSTRAP},CONTROLLER://{CONTROLLER}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions=3
# One broker: internal topics cannot have more than one replica.
default.replication.factor=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# A single member of a new group need not wait for others to join.
group.initial.rebalance.delay.ms=0
# Topics are created by the services, with their settings, never by accident.
auto.create.topics.enable=false
",
            data = data.display()
        );
        let path = self.dir.join("server.properties");
        fs::write(&path, config)?;
        Ok(path)
    }

    /// Formats the data directory for KRaft, once.
    fn format_storage(&self, classpath: &str, config: &Path) -> Result<()> {
        if self.dir.join("data/meta.properties").exists() {
            return Ok(());
        }
        let status = std::process::Command::new(java())
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                self.source.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(classpath)
            .args([
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                &cluster_id()?,
                "-c",
            ])
            .arg(config)
            .stdout(Stdio::null())
            .status()
            .context("cannot run java")?;
        if !status.success() {
            bail!("formatting the Kafka data directory failed ({status})");
        }
        Ok(())
    }
}

/// Waits until the broker answers a metadata request, failing early if the
/// process dies.
async fn wait_until_ready(pid: u32, log: &Path) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    let probe: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BOOTSTRAP)
        // Quiet: connection refusals are expected while the JVM starts.
        .set("log_level", "0")
        .create()?;
    loop {
        if !is_alive(pid) {
            bail!("the broker exited during startup; see {}", log.display());
        }
        if probe
            .client()
            .fetch_metadata(None, Duration::from_secs(1))
            .is_ok_and(|m| !m.brokers().is_empty())
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the broker did not answer within {START_TIMEOUT:?}; see {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A KRaft cluster id: 16 random bytes, base64url without padding, never
/// starting with `-`: `kafka-storage` would read such an id as an option
/// (Kafka's own `Uuid.randomUuid` draws again in that case, and so does this).
fn cluster_id() -> Result<String> {
    loop {
        let id = random_base64url_id()?;
        if !id.starts_with('-') {
            return Ok(id);
        }
    }
}

fn random_base64url_id() -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut fs::File::open("/dev/urandom")?, &mut bytes)?;
    let mut id = String::with_capacity(22);
    let mut bits = 0u32;
    let mut n = 0;
    for byte in bytes {
        bits = (bits << 8) | u32::from(byte);
        n += 8;
        while n >= 6 {
            n -= 6;
            id.push(char::from(ALPHABET[((bits >> n) & 63) as usize]));
        }
    }
    if n > 0 {
        id.push(char::from(ALPHABET[((bits << (6 - n)) & 63) as usize]));
    }
    Ok(id)
}

fn java() -> PathBuf {
    std::env::var_os("JAVA_HOME")
        .map_or_else(|| PathBuf::from("java"), |home| Path::new(&home).join("bin/java"))
}

impl crate::LocalServer for LocalBroker {
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
        format!("{BOOTSTRAP} (logs: {})", self.log_path().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_are_22_base64url_characters() {
        let id = cluster_id().expect("random bytes");
        assert_ne!(id, cluster_id().expect("random bytes"));
        assert_eq!(id.len(), 22, "{id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn cluster_ids_never_look_like_an_option() {
        // One raw id in 64 starts with `-`: 2,000 draws all but surely
        // include some.
        for _ in 0..2000 {
            let id = cluster_id().expect("random bytes");
            assert!(!id.starts_with('-'), "{id}");
        }
    }

    #[test]
    fn the_local_broker_is_the_version_compose_runs() {
        let root = crate::workspace_root();
        let pom = fs::read_to_string(root.join("xtask/kafka/pom.xml")).expect("pom");
        let compose = fs::read_to_string(root.join("docker-compose.yml")).expect("compose");
        let version = pom
            .split_once("<kafka.version>")
            .and_then(|(_, rest)| rest.split_once("</kafka.version>"))
            .map(|(v, _)| v.trim())
            .expect("kafka.version in pom");
        assert!(
            compose.contains(&format!("image: apache/kafka:{version}")),
            "docker-compose.yml must run apache/kafka:{version}"
        );
        let tests = fs::read_to_string(root.join("libs/testkit/src/lib.rs")).expect("testkit");
        assert!(
            tests.contains(&format!("KAFKA_TAG: &str = \"{version}\"")),
            "the testcontainers broker must be apache/kafka:{version}"
        );
    }
}
