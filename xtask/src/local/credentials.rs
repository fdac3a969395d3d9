//! `cargo xtask credentials`: this checkout's bearer tokens and the
//! services' Kafka and PostgreSQL passwords, in `.env` (git ignores it): the
//! way without Docker. The first command that needs them makes the missing
//! ones, with the code compose's `credentials` step runs
//! ([`kafka_ops::credentials`]); a value in `.env` wins.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kafka_ops::access;
use kafka_ops::credentials::Set;
use service_kit::auth::Credentials;
use service_kit::config::{KafkaConfig, Secret};

use crate::local::broker::LocalBroker;

/// The file, at the workspace root.
pub fn path(root: &Path) -> PathBuf {
    root.join(".env")
}

/// `cargo xtask credentials`: makes the set unless there is one, and says
/// where it is and how to use it.
pub fn run(root: &Path) -> Result<()> {
    ensure(root)?;
    eprintln!(
        "xtask: credentials in {} (not in git). For curl: set -a; . ./.env; set +a; then\n  \
         curl -H \"Authorization: Bearer $OPERATOR_TOKEN\" http://127.0.0.1:8081/audit",
        path(root).display()
    );
    Ok(())
}

/// This checkout's set: read from `.env`, those missing made and appended
/// first (a new file is readable by its owner only).
pub fn set(root: &Path) -> Result<Set> {
    let existing = read(root)?;
    let (set, made) =
        Set::complete(|var| value(&existing, var)).with_context(|| format!("in {}", path(root).display()))?;
    if !made.is_empty() {
        let lines: String = made
            .iter()
            .map(|var| format!("{var}={}\n", set.get(var).expose()))
            .collect();
        append(
            root,
            &format!(
                "\n# The demo's credentials for this checkout, made by `cargo xtask credentials`.\n\
                 # Not in git. A token is what a caller sends as `Authorization: Bearer`.\n{lines}"
            ),
        )?;
        eprintln!("xtask: made {} into {}", made.join(", "), path(root).display());
    }
    Ok(set)
}

/// This checkout's bearer tokens.
pub fn ensure(root: &Path) -> Result<Credentials> {
    Ok(set(root)?.credentials()?)
}

/// This checkout's Kafka users ([`access::USERS`]) in their roles, with
/// their passwords.
pub fn kafka_users(root: &Path) -> Result<Vec<access::User>> {
    Ok(set(root)?.kafka_users())
}

/// This checkout's PostgreSQL roles, each with its password.
pub fn database_logins(root: &Path) -> Result<Vec<(&'static str, Secret)>> {
    Ok(set(root)?.database_logins())
}

/// Makes the topics, this checkout's Kafka users and their ACLs on the
/// local `broker` (through its brokers' own listener), the users and ACLs
/// with Kafka's own tools, and returns the users.
pub async fn provision_kafka(root: &Path, broker: &LocalBroker) -> Result<Vec<access::User>> {
    let users = kafka_users(root)?;
    let operator = KafkaConfig {
        bootstrap_servers: broker.bootstrap().to_owned(),
        replication_factor: broker.replication_factor(),
        ..KafkaConfig::local()
    };
    service_kit::kafka::Admin::new(&operator, "kafka-access")?
        .ensure_topics(&operator.topics)
        .await?;
    let target = access::Target {
        bootstrap: operator.bootstrap_servers.clone(),
        command_config: None,
    };
    let runs = access::invocations(&users, &operator.topics, &target)?;
    let started = std::time::Instant::now();
    access::LocalTools::new(root, broker.classpath()?)
        .run(&runs)
        .await?;
    eprintln!(
        "xtask: the services' Kafka users and ACLs made by {} runs of Kafka's tools in {:.1} s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(users)
}

/// The environment that logs `service` in as its Kafka user.
pub fn kafka_login(users: &[access::User], service: &str) -> Vec<(&'static str, String)> {
    let name = shared_events::services::service(service).map_or(service, |service| service.kafka_user);
    users
        .iter()
        .filter(|user| user.login.name == name)
        .flat_map(|user| user.login.to_env())
        .collect()
}

/// `.env`'s text; empty if there is none.
fn read(root: &Path) -> Result<String> {
    let path = path(root);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Appends `lines` to `.env`: a `.env` the user keeps for other settings
/// stays as it was. A new file is its owner's only.
fn append(root: &Path, lines: &str) -> Result<()> {
    let path = path(root);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(lines.as_bytes())?;
    Ok(())
}

/// An HTTP client that proves itself as the operator, as the README's curl
/// session does: it reads every service's payment data.
pub fn operator_client(root: &Path) -> Result<reqwest::Client> {
    operator_client_with(&ensure(root)?)
}

/// An HTTP client that proves itself as `credentials`' operator.
pub fn operator_client_with(credentials: &Credentials) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        credentials.operator.authorization(),
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .timeout(std::time::Duration::from_secs(10))
        .build()?)
}

/// The last value `text` gives variable `name`, as compose reads it.
fn value(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().split_once('='))
        .filter(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_other_settings_are_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            path(&dir),
            "RUST_LOG=debug\nSERVICE_B_TOKEN=".to_owned() + &"b".repeat(64) + "\n",
        )
        .expect("an existing .env");
        let made = ensure(&dir).expect("made");
        let again = ensure(&dir).expect("read back");
        assert_eq!(again.operator, made.operator);
        // What was there stays, as it was.
        assert_eq!(made.service_b.expose(), "b".repeat(64));
        let text = std::fs::read_to_string(path(&dir)).expect("read");
        assert!(text.starts_with("RUST_LOG=debug\n"), "{text}");
        assert_eq!(text.matches("SERVICE_B_TOKEN=").count(), 1, "{text}");
        // Every Kafka user has a password, the same on every read.
        let users = kafka_users(&dir).expect("kafka users");
        assert_eq!(users.len(), access::USERS.len());
        let again = kafka_users(&dir).expect("read back");
        for (user, read) in users.iter().zip(&again) {
            assert_eq!(user.login.password, read.login.password, "{}", user.login.name);
        }
        assert_eq!(
            kafka_login(&users, "payments-service")[0],
            ("KAFKA_SASL_USERNAME", "payments".to_owned())
        );
        // Every PostgreSQL role has its own password, the same on every
        // read, and there is the superuser's.
        let logins = database_logins(&dir).expect("database logins");
        assert_eq!(
            logins.iter().map(|(role, _)| *role).collect::<Vec<_>>(),
            ["payments", "service_a", "service_b"]
        );
        assert_ne!(logins[0].1, logins[1].1);
        assert_eq!(logins, database_logins(&dir).expect("read back"));
        let text = std::fs::read_to_string(path(&dir)).expect("read");
        assert!(value(&text, "POSTGRES_PASSWORD").is_some());

        // A new file is its owner's only.
        std::fs::remove_file(path(&dir)).expect("remove");
        ensure(&dir).expect("made");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(path(&dir)).expect("metadata").permissions(),
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_token_that_is_no_token_is_an_error_not_a_new_set() {
        let error = Set::complete(|var| (var == "OPERATOR_TOKEN").then(|| "short".to_owned()))
            .expect_err("a short token");
        assert!(error.to_string().contains("OPERATOR_TOKEN"), "{error}");
    }
}
