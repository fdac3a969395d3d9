//! `cargo xtask credentials`: this checkout's bearer tokens, Kafka and
//! PostgreSQL passwords, in `.env`.
//!
//! The services refuse to start without them (`HTTP_CALLERS`, and ServiceB's
//! `PAYMENTS_TOKEN`; see `service_kit::auth`), and none is in the
//! repository: the first command that needs them (`up`, `flow`, `fuzz-http`,
//! `images`, `compose-check`, or this one) makes a set into `.env` at the
//! workspace root, which git ignores. `docker compose` reads the same file
//! for `docker-compose.yml`'s `${...}`, so both ways of running the demo
//! use one set, and the README's curl session reads `$OPERATOR_TOKEN`
//! from it.
//!
//! The Kafka passwords are those of the services' own Kafka users
//! (`kafka_ops::access`): `*_KAFKA_PASSWORD`, made the same way, and
//! appended to a `.env` made before they existed. So are the PostgreSQL
//! passwords: each service's role's (`service_kit::postgres_access`),
//! `*_DATABASE_PASSWORD`, and the superuser's, `POSTGRES_PASSWORD`, which
//! compose gives the server on a new volume (the local server trusts
//! loopback, and checks none of them).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kafka_ops::access;
use service_kit::auth::{Credentials, Token};
use service_kit::config::{KafkaConfig, Secret};
use service_kit::postgres_access;

use crate::broker::LocalBroker;

/// The tokens' variables; the `*_HTTP_CALLERS` lines follow from them.
const OPERATOR_TOKEN: &str = "OPERATOR_TOKEN";
const SERVICE_B_TOKEN: &str = "SERVICE_B_TOKEN";
/// The PostgreSQL superuser's password, for compose.
const POSTGRES_PASSWORD: &str = "POSTGRES_PASSWORD";

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

/// This checkout's credentials: read from `.env`, or made and written there
/// first (the file is created readable by its owner only).
pub fn ensure(root: &Path) -> Result<Credentials> {
    kafka_users(root)?;
    database_logins(root)?;
    let existing = read(root)?;
    if let Some(credentials) = parse(&existing).with_context(|| format!("in {}", path(root).display()))? {
        return Ok(credentials);
    }
    let credentials = Credentials::generate();
    append(root, &render(&credentials))?;
    eprintln!("xtask: made new credentials into {}", path(root).display());
    Ok(credentials)
}

/// This checkout's Kafka users ([`access::USERS`]) in their roles, with
/// their passwords from `.env`; those missing are made and appended first.
pub fn kafka_users(root: &Path) -> Result<Vec<access::User>> {
    let text = passwords(
        root,
        access::USERS.map(|(_, var)| var),
        "Each service's own Kafka user's password (SCRAM-SHA-512)",
    )?;
    access::demo_users(|var| password(root, &text, var))
}

/// This checkout's PostgreSQL roles ([`postgres_access::ROLES`]), each with
/// its password from `.env`; those missing (and the superuser's, for
/// compose) are made and appended first.
pub fn database_logins(root: &Path) -> Result<Vec<(&'static str, Secret)>> {
    let vars = postgres_access::ROLES.map(|(_, var, _)| var);
    let text = passwords(
        root,
        vars.into_iter().chain([POSTGRES_PASSWORD]),
        "Each service's own PostgreSQL role's password, and the superuser's (POSTGRES_PASSWORD)",
    )?;
    postgres_access::ROLES
        .iter()
        .map(|&(role, var, _)| Ok((role, password(root, &text, var)?)))
        .collect()
}

/// `.env`'s text, once it has a value for each of `vars`: those missing
/// are made and appended, under a comment that says what they are.
fn passwords(root: &Path, vars: impl IntoIterator<Item = &'static str>, what: &str) -> Result<String> {
    let existing = read(root)?;
    let missing: String = vars
        .into_iter()
        .filter(|var| value(&existing, var).is_none())
        .map(|var| format!("{var}={}\n", Token::generate().expose()))
        .collect();
    if !missing.is_empty() {
        append(
            root,
            &format!("\n# {what}, made by\n# `cargo xtask credentials`. Not in git.\n{missing}"),
        )?;
    }
    read(root)
}

/// The password `text` (`.env`'s) gives `var`.
fn password(root: &Path, text: &str, var: &str) -> Result<Secret> {
    value(text, var)
        .map(Secret::new)
        .with_context(|| format!("{var} missing from {}", path(root).display()))
}

/// Makes the topics, this checkout's Kafka users and their ACLs on the
/// local `broker` (through its brokers' own listener), and returns the users.
pub async fn provision_kafka(root: &Path, broker: &LocalBroker) -> Result<Vec<access::User>> {
    let users = kafka_users(root)?;
    let operator = KafkaConfig {
        bootstrap_servers: broker.bootstrap().to_owned(),
        replication_factor: broker.replication_factor(),
        ..KafkaConfig::local()
    };
    access::provision(&operator, &operator.topics, &users).await?;
    Ok(users)
}

/// The environment that logs `service` in as its Kafka user.
pub fn kafka_login(users: &[access::User], service: &str) -> Vec<(&'static str, String)> {
    let name = if service == "payments-service" {
        "payments"
    } else {
        service
    };
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

/// The lines written into `.env`: both tokens, and what each service holds
/// of them, under the variable names `docker-compose.yml` uses.
fn render(credentials: &Credentials) -> String {
    let callers = |service| credentials.callers_of(service).to_env();
    format!(
        "\n# The services' credentials for this checkout, made by `cargo xtask credentials`.\n\
         # Not in git. A token is what a caller sends as `Authorization: Bearer`; a\n\
         # service's HTTP_CALLERS holds the SHA-256 of each token it accepts.\n\
         {OPERATOR_TOKEN}={operator}\n\
         {SERVICE_B_TOKEN}={service_b}\n\
         PAYMENTS_HTTP_CALLERS={payments}\n\
         SERVICE_A_HTTP_CALLERS={service_a}\n\
         SERVICE_B_HTTP_CALLERS={service_b_callers}\n",
        operator = credentials.operator.expose(),
        service_b = credentials.service_b.expose(),
        payments = callers("payments-service"),
        service_a = callers("service-a"),
        service_b_callers = callers("service-b"),
    )
}

/// The tokens in `text`, if it has both; `None` if it has neither.
fn parse(text: &str) -> Result<Option<Credentials>> {
    match (value(text, OPERATOR_TOKEN), value(text, SERVICE_B_TOKEN)) {
        (None, None) => Ok(None),
        (Some(operator), Some(service_b)) => Ok(Some(Credentials {
            operator: token(OPERATOR_TOKEN, &operator)?,
            service_b: token(SERVICE_B_TOKEN, &service_b)?,
        })),
        _ => {
            bail!("{OPERATOR_TOKEN} and {SERVICE_B_TOKEN} go together; remove the one left to make a new set")
        }
    }
}

/// The last value `text` gives variable `name`, as compose reads it.
fn value(text: &str, name: &str) -> Option<String> {
    text.lines()
        .filter_map(|line| line.trim().split_once('='))
        .filter(|(key, _)| key.trim() == name)
        .map(|(_, value)| value.trim().trim_matches('"').to_owned())
        .next_back()
}

fn token(name: &str, value: &str) -> Result<Token> {
    value.parse().map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_other_settings_are_kept() {
        let dir = std::env::temp_dir().join(format!("xtask-credentials-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(path(&dir), "RUST_LOG=debug\n").expect("an existing .env");
        let made = ensure(&dir).expect("made");
        let again = ensure(&dir).expect("read back");
        assert_eq!(again.operator, made.operator);
        assert_eq!(again.service_b, made.service_b);
        let text = std::fs::read_to_string(path(&dir)).expect("read");
        assert!(text.starts_with("RUST_LOG=debug\n"), "{text}");
        // What docker-compose.yml hands the services parses as they parse it.
        let callers = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .expect(name)
                .parse::<service_kit::auth::Callers>()
                .expect("HTTP_CALLERS")
        };
        assert_eq!(
            callers("PAYMENTS_HTTP_CALLERS").names(),
            ["service-b", "operator"]
        );
        assert_eq!(callers("SERVICE_A_HTTP_CALLERS").names(), ["operator"]);
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
        // read, and compose has the superuser's.
        let logins = database_logins(&dir).expect("database logins");
        assert_eq!(
            logins.iter().map(|(role, _)| *role).collect::<Vec<_>>(),
            ["payments", "service_a", "service_b"]
        );
        assert_ne!(logins[0].1, logins[1].1);
        let again = database_logins(&dir).expect("read back");
        assert_eq!(logins, again);
        let text = std::fs::read_to_string(path(&dir)).expect("read");
        assert!(value(&text, POSTGRES_PASSWORD).is_some(), "{POSTGRES_PASSWORD}");

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
    fn one_token_without_the_other_is_an_error_not_a_new_set() {
        let error = parse(&format!("{OPERATOR_TOKEN}={}\n", "a".repeat(64))).expect_err("half a set");
        assert!(error.to_string().contains("go together"), "{error}");
        assert!(parse("OTHER=1\n").expect("parses").is_none());
    }
}
