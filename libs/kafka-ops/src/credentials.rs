//! The demo's credentials, made by one piece of code for both ways of
//! running it: `cargo xtask credentials` keeps them in `.env`, compose's
//! `credentials` step (the `credentials` binary) in files on volumes.
//!
//! Every secret is a new random token (`service_kit::auth::Token`: 32
//! random bytes, hex): the operator's bearer token and ServiceB's (for
//! Payments), each Kafka user's password ([`access::USERS`]), each
//! PostgreSQL role's (`service_kit::postgres_access::ROLES`) and the
//! superuser's. Only those missing are made. What a service holds of the
//! tokens, its `HTTP_CALLERS` (the SHA-256 of each token it accepts),
//! follows from them wherever it is needed.
//!
//! In compose, each reader has a volume of its own, mounted at
//! `/run/credentials` in its containers, holding only what it reads, each
//! file named after the variable it reads by `<VAR>_FILE`
//! (`service_kit::config::var_or_file`): a service its Kafka and database
//! passwords and its `HTTP_CALLERS` (ServiceB its `PAYMENTS_TOKEN` too);
//! PostgreSQL and `postgres-access` the roles' passwords; the broker the
//! script that formats its storage with the operator's SCRAM credential,
//! and `kafka-access` the script that makes the topics, users and ACLs.
//! The set itself stays on the step's own volume.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use service_kit::auth::{Callers, Credentials, HTTP_CALLERS, Token};
use service_kit::config::{KafkaConfig, KafkaUser, Secret};
use service_kit::postgres_access::ROLES;
use shared_events::services::{OPERATOR, PAYMENTS, SERVICE_A, SERVICE_B, SERVICES};

use crate::access::{self, Target};
use crate::{Error, Result};

/// The operator's bearer token: it reads every service and refunds.
pub const OPERATOR_TOKEN: &str = "OPERATOR_TOKEN";
/// ServiceB's bearer token for Payments' callback.
pub const SERVICE_B_TOKEN: &str = "SERVICE_B_TOKEN";
/// The PostgreSQL superuser's password.
pub const POSTGRES_PASSWORD: &str = "POSTGRES_PASSWORD";

/// The variables that replace a service's callers in compose, when given.
pub const CALLERS: [(&str, &str); 3] = [
    (PAYMENTS.name, "PAYMENTS_HTTP_CALLERS"),
    (SERVICE_A.name, "SERVICE_A_HTTP_CALLERS"),
    (SERVICE_B.name, "SERVICE_B_HTTP_CALLERS"),
];

/// Where compose's readers find their files.
pub const MOUNTED_AT: &str = "/run/credentials";
/// The broker's start, in its reader directory `kafka`.
pub const KAFKA_START: &str = "kafka-start.sh";
/// The topics, users and ACLs, in the reader directory `kafka`.
pub const KAFKA_ACCESS: &str = "kafka-access.sh";

/// Every secret's variable.
pub fn secrets() -> Vec<&'static str> {
    [OPERATOR_TOKEN, SERVICE_B_TOKEN]
        .into_iter()
        .chain(access::USERS.map(|(_, var)| var))
        .chain(ROLES.map(|(_, var, _)| var))
        .chain([POSTGRES_PASSWORD])
        .collect()
}

/// A set of credentials: each secret's variable and value. Its `Debug`
/// shows the variables only.
#[derive(Clone)]
pub struct Set(BTreeMap<&'static str, Secret>);

impl std::fmt::Debug for Set {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Set {
    /// The set `existing` gives (a variable's value, if it has one), each
    /// secret missing made; with the variables of those made.
    ///
    /// # Errors
    ///
    /// When a token given is no token (too short, or not visible ASCII).
    pub fn complete(existing: impl Fn(&str) -> Option<String>) -> Result<(Self, Vec<&'static str>)> {
        let mut made = Vec::new();
        let mut set = BTreeMap::new();
        for var in secrets() {
            let value = existing(var).filter(|value| !value.trim().is_empty());
            let value = value.map_or_else(
                || {
                    made.push(var);
                    Token::generate().expose().to_owned()
                },
                |value| value.trim().to_owned(),
            );
            set.insert(var, Secret::new(value));
        }
        let set = Self(set);
        set.credentials()?;
        Ok((set, made))
    }

    /// The value of secret `var`.
    pub fn get(&self, var: &str) -> &Secret {
        &self.0[var]
    }

    /// The two bearer tokens.
    pub fn credentials(&self) -> Result<Credentials> {
        let token = |var: &str| {
            self.get(var)
                .expose()
                .parse::<Token>()
                .map_err(|e| Error::Access(format!("{var}: {e}")))
        };
        Ok(Credentials {
            operator: token(OPERATOR_TOKEN)?,
            service_b: token(SERVICE_B_TOKEN)?,
        })
    }

    /// The Kafka users, each in its role, with its password.
    pub fn kafka_users(&self) -> Vec<access::User> {
        access::demo_users(|var| self.get(var).clone())
    }

    /// Each PostgreSQL role with its password.
    pub fn database_logins(&self) -> Vec<(&'static str, Secret)> {
        ROLES
            .iter()
            .map(|&(role, var, _)| (role, self.get(var).clone()))
            .collect()
    }

    /// The files of compose's readers, by reader: `(reader, file, text)`.
    /// `kafka` says where the broker is and the topics to make.
    pub fn files(&self, kafka: &KafkaConfig) -> Result<Vec<(&'static str, String, String)>> {
        let credentials = self.credentials()?;
        let users = self.kafka_users();
        let mut files = Vec::new();
        let mut file =
            |reader, name: &str, text: &str| files.push((reader, name.to_owned(), text.to_owned()));
        for service in SERVICES {
            let kafka_var = user_var(service.kafka_user)?;
            let database_var = ROLES
                .iter()
                .find(|(_, _, of)| *of == service.name)
                .map(|(_, var, _)| *var)
                .ok_or_else(|| Error::Access(format!("{} has no PostgreSQL role", service.name)))?;
            file(service.name, "KAFKA_SASL_PASSWORD", self.get(kafka_var).expose());
            file(service.name, "DATABASE_PASSWORD", self.get(database_var).expose());
            for (var, value) in credentials.env_of(service.name) {
                file(service.name, var, &value);
            }
        }
        for var in ROLES
            .map(|(_, var, _)| var)
            .into_iter()
            .chain([POSTGRES_PASSWORD])
        {
            file("postgres", var, self.get(var).expose());
        }
        let operator = users
            .iter()
            .find(|user| user.login.name == OPERATOR)
            .ok_or_else(|| Error::Access("no operator among the Kafka users".to_owned()))?;
        let command_config = format!("{MOUNTED_AT}/operator.properties");
        let target = Target {
            bootstrap: kafka.bootstrap_servers.clone(),
            command_config: Some(command_config),
        };
        let mut runs = access::topic_invocations(&kafka.topics, kafka.replication_factor, &target);
        runs.extend(access::invocations(&users, &kafka.topics, &target)?);
        file(
            "kafka",
            "operator.properties",
            &access::command_config(&operator.login),
        );
        // The operator's, for the Kafka UI.
        file(
            "kafka",
            "OPERATOR_KAFKA_PASSWORD",
            operator.login.password.expose(),
        );
        file("kafka", KAFKA_ACCESS, &access::script(&runs, "/opt/kafka/bin"));
        file("kafka", KAFKA_START, &kafka_start(&operator.login)?);
        Ok(files)
    }
}

/// The variable that holds Kafka user `user`'s password.
fn user_var(user: &str) -> Result<&'static str> {
    access::USERS
        .iter()
        .find(|(name, _)| *name == user)
        .map(|(_, var)| *var)
        .ok_or_else(|| Error::Access(format!("no Kafka user {user}")))
}

/// The broker's start in compose: its storage formatted once (a new volume)
/// with the operator's SCRAM credential, the super user `kafka-access` logs
/// in as to make the others; then the image's own start, which takes the
/// storage as formatted. `kafka-storage` needs a node's config to format
/// it: its id, role and quorum from the image's variables; the listeners
/// only as the config's rules want them (nothing listens while formatting).
fn kafka_start(operator: &KafkaUser) -> Result<String> {
    let scram = access::scram_credential(Some(&operator.name), operator)?;
    Ok(format!(
        "#!/usr/bin/env bash\n\
         # Made by compose's `credentials` step (kafka_ops::credentials).\n\
         set -euo pipefail\n\
         config=$(mktemp)\n\
         cat > \"$config\" <<EOF\n\
         process.roles=$KAFKA_PROCESS_ROLES\n\
         node.id=$KAFKA_NODE_ID\n\
         controller.quorum.voters=$KAFKA_CONTROLLER_QUORUM_VOTERS\n\
         controller.listener.names=CONTROLLER\n\
         listeners=BROKER://127.0.0.1:19092,CONTROLLER://127.0.0.1:9093\n\
         listener.security.protocol.map=BROKER:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
         inter.broker.listener.name=BROKER\n\
         log.dirs=$KAFKA_LOG_DIRS\n\
         EOF\n\
         # The image's own default cluster id, unless one is set.\n\
         /opt/kafka/bin/kafka-storage.sh format --ignore-formatted --cluster-id \"${{CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}}\" \\\n  \
         --config \"$config\" --add-scram '{scram}'\n\
         rm -f \"$config\"\n\
         exec /etc/kafka/docker/run\n"
    ))
}

/// Compose's `credentials` step: the set in `dir/set/` completed (a value
/// `given` by the environment, from `.env`, replaces the file's; the missing
/// are made), then each reader's files written anew under `dir/<reader>/`
/// (a service's callers given, [`CALLERS`], replace those of the tokens).
/// Returns the variables made.
pub fn write_compose(
    dir: &Path,
    kafka: &KafkaConfig,
    given: impl Fn(&str) -> Option<String>,
) -> Result<Vec<&'static str>> {
    let set_dir = dir.join("set");
    let (set, made) = Set::complete(|var| {
        given(var)
            .filter(|value| !value.trim().is_empty())
            .or_else(|| std::fs::read_to_string(set_dir.join(var)).ok())
    })?;
    for var in secrets() {
        write(&set_dir, var, set.get(var).expose(), 0o600)?;
    }
    for (reader, file, mut text) in set.files(kafka)? {
        // A service's callers given (to add one, as a refunds desk) replace
        // those that follow from the tokens.
        let given_callers = CALLERS
            .iter()
            .find(|(service, _)| *service == reader && file == HTTP_CALLERS)
            .and_then(|(_, var)| Some((*var, given(var).filter(|value| !value.trim().is_empty())?)));
        if let Some((var, callers)) = given_callers {
            callers
                .parse::<Callers>()
                .map_err(|e| Error::Access(format!("{var}: {e}")))?;
            text = callers;
        }
        // Readable by the reader's user (another than this step's): the
        // volume is the reader's alone.
        let mode = if file.ends_with(".sh") { 0o755 } else { 0o644 };
        write(&dir.join(reader), &file, &text, mode)?;
    }
    Ok(made)
}

/// Writes `text` into `dir/file`, with `mode`.
fn write(dir: &Path, file: &str, text: &str, mode: u32) -> Result<()> {
    let failed = |e: std::io::Error| Error::Access(format!("cannot write {}: {e}", dir.join(file).display()));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let path = dir.join(file);
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&path)
        .map_err(failed)?;
    out.write_all(text.as_bytes()).map_err(failed)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_readers_get_their_own_files_made_once_and_env_wins() {
        let dir = std::env::temp_dir().join(format!("kafka-ops-credentials-{}", std::process::id()));
        let kafka = KafkaConfig::local();
        let read =
            |reader: &str, file: &str| std::fs::read_to_string(dir.join(reader).join(file)).expect(file);
        let made = write_compose(&dir, &kafka, |_| None).expect("written");
        assert_eq!(made, secrets());
        let operator = read("set", OPERATOR_TOKEN);
        // Made once: a second start keeps them.
        assert!(write_compose(&dir, &kafka, |_| None).expect("again").is_empty());
        assert_eq!(read("set", OPERATOR_TOKEN), operator);
        // ServiceB holds its token for Payments, and Payments its digest.
        assert_eq!(read("service-b", "PAYMENTS_TOKEN"), read("set", SERVICE_B_TOKEN));
        let callers: service_kit::auth::Callers =
            read("payments-service", "HTTP_CALLERS").parse().expect("callers");
        assert_eq!(callers.names(), ["service-b", "operator"]);
        assert_eq!(
            read("service-a", "KAFKA_SASL_PASSWORD"),
            read("set", "SERVICE_A_KAFKA_PASSWORD")
        );
        assert!(
            !dir.join("service-a/PAYMENTS_TOKEN").exists(),
            "only ServiceB holds its token"
        );
        // A value given (from .env) replaces the one kept, and what follows
        // from it.
        let service_a_callers = read("service-a", "HTTP_CALLERS");
        let chosen = "c".repeat(64);
        write_compose(&dir, &kafka, |var| {
            (var == OPERATOR_TOKEN).then(|| chosen.clone())
        })
        .expect("given");
        assert_eq!(read("set", OPERATOR_TOKEN), chosen);
        assert_ne!(read("service-a", "HTTP_CALLERS"), service_a_callers);
        // So do a service's callers given (a refunds desk added).
        let desk = format!("{},refunds-desk:refund:{}", callers.to_env(), "d".repeat(64));
        write_compose(&dir, &kafka, |var| {
            (var == "PAYMENTS_HTTP_CALLERS").then(|| desk.clone())
        })
        .expect("given");
        assert_eq!(read("payments-service", "HTTP_CALLERS"), desk);
        assert!(
            write_compose(&dir, &kafka, |var| (var == "PAYMENTS_HTTP_CALLERS")
                .then(|| "x".to_owned()))
            .is_err()
        );
        let script = read("kafka", KAFKA_ACCESS);
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert!(
            script.contains("kafka-acls.sh") && script.contains("kafka-configs.sh"),
            "{script}"
        );
    }
}
