//! One Kafka user per service, and what each may do: least privilege on the
//! broker.
//!
//! Each service logs in to the broker's SASL listener as its own
//! SCRAM-SHA-512 user (`KAFKA_SASL_USERNAME` / `KAFKA_SASL_PASSWORD`, see
//! `service_kit::config::KafkaUser`), and the broker's `StandardAuthorizer`
//! lets it do only what the ACLs below allow: with no ACL on a resource, the
//! broker refuses.
//!
//! | user | may |
//! |---|---|
//! | `payments` | write the notification and the state topic; use the outbox relay's transactional ids (`payments-service.outbox-relay.*`) |
//! | `service-a` | read both topics, the notifications in its group, the state topic outside any group (its copy); write the notifications' dead-letter topic |
//! | `service-b` | read the notification topic in its group; write its dead-letter topic |
//! | a queue's worker | read the queue's topic in its share group (`queue`; a share group is a resource of type group, as a consumer group is) |
//! | `operator` | everything: a super user in the broker's config, for xtask and the Kafka UI |
//!
//! Reading and writing imply describing. No service may create a topic: the
//! operator makes them all, with their settings, before the services start;
//! a service that asks is refused, which it takes as "not mine to make".
//! The brokers' own plaintext listener (replication, the controllers,
//! loopback tools) is not this listener; its principal is a super user too
//! (see the broker configs).
//!
//! The users and ACLs are made by Kafka's own tools, of the broker's
//! release: [`invocations`] renders the runs of `kafka-configs` (a user's
//! SCRAM credential) and `kafka-acls` that make them, from the one
//! definition of the ACLs here ([`acls`]); where they run is the caller's:
//! [`LocalTools`] on this machine (`cargo xtask kafka up`, the tests on the
//! local broker), a container of the broker's image (the tests'
//! testcontainers broker), or the [`script`] compose's `kafka-access` step
//! runs, which makes the topics too ([`topic_invocations`]). Both the users
//! (upserted) and the ACLs (a set) may be made again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use service_kit::config::{KafkaUser, Secret};
use service_kit::kafka::{min_insync_replicas, replica_group};
use shared_events::services::{OPERATOR, PAYMENTS, RELAY_TRANSACTIONAL_PREFIX, SERVICE_A, SERVICE_B};
use shared_events::{Topics, dead_letter_topic};

use crate::{Error, Result};

/// SCRAM's hashing rounds for a new password: Kafka's default for its tools.
const SCRAM_ITERATIONS: u32 = 8192;

/// The JVM options of a tool's run: a short-lived client, started quickly
/// (the first JIT tier only, a small heap), as several run at once.
pub const TOOL_JVM: [(&str, &str); 2] = [
    ("KAFKA_HEAP_OPTS", "-Xmx128m"),
    (
        "KAFKA_JVM_PERFORMANCE_OPTS",
        "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true",
    ),
];

/// What a user is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Payments: the producer of both topics.
    Payments,
    /// ServiceA, consuming in `group`.
    ServiceA { group: String },
    /// ServiceB, consuming in `group`.
    ServiceB { group: String },
    /// A worker of a queue ([`crate::queue`]): a member of share group
    /// `group` on `topic`.
    QueueWorker { topic: String, group: String },
    /// The operator: a super user in the broker's config, so no ACL.
    Operator,
}

/// The demo's users (compose, `cargo xtask kafka up`), each with the
/// variable that holds its password (in `.env`, made by `cargo xtask
/// credentials`, or compose's credential files).
pub const USERS: [(&str, &str); 4] = [
    (PAYMENTS.kafka_user, "PAYMENTS_KAFKA_PASSWORD"),
    (SERVICE_A.kafka_user, "SERVICE_A_KAFKA_PASSWORD"),
    (SERVICE_B.kafka_user, "SERVICE_B_KAFKA_PASSWORD"),
    (OPERATOR, "OPERATOR_KAFKA_PASSWORD"),
];

/// [`USERS`], each in its role (the services in their default groups, named
/// after them), with the password `password` gives for its variable.
pub fn demo_users(password: impl Fn(&'static str) -> Secret) -> Vec<User> {
    let roles = [
        Role::Payments,
        Role::ServiceA {
            group: SERVICE_A.name.to_owned(),
        },
        Role::ServiceB {
            group: SERVICE_B.name.to_owned(),
        },
        Role::Operator,
    ];
    USERS
        .iter()
        .zip(roles)
        .map(|(&(name, var), role)| User {
            login: KafkaUser {
                name: name.to_owned(),
                password: password(var),
            },
            role,
        })
        .collect()
}

/// A resource an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Topic,
    Group,
    TransactionalId,
}

/// What an ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Read,
    Write,
    Describe,
}

/// One ACL: `user` may do `operation` on the `resource` named `name`, or on
/// every one whose name starts with `name` when `prefixed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub user: String,
    pub resource: Resource,
    pub name: String,
    pub prefixed: bool,
    pub operation: Operation,
}

/// A user to make: its login (name and password) and its role.
#[derive(Debug, Clone)]
pub struct User {
    pub login: KafkaUser,
    pub role: Role,
}

/// Every ACL `user` gets in `role`, for `topics`.
pub fn acls(user: &str, role: &Role, topics: &Topics) -> Vec<Acl> {
    let acl = |resource, name: &str, operation| Acl {
        user: user.to_owned(),
        resource,
        name: name.to_owned(),
        prefixed: false,
        operation,
    };
    // Where a consumer puts what it gives up on.
    let dead_letters = |topic: &str| acl(Resource::Topic, &dead_letter_topic(topic), Operation::Write);
    match role {
        Role::Payments => vec![
            acl(Resource::Topic, &topics.notifications, Operation::Write),
            acl(Resource::Topic, &topics.state, Operation::Write),
            Acl {
                prefixed: true,
                ..acl(
                    Resource::TransactionalId,
                    RELAY_TRANSACTIONAL_PREFIX,
                    Operation::Write,
                )
            },
        ],
        Role::ServiceA { group } => vec![
            acl(Resource::Topic, &topics.notifications, Operation::Read),
            acl(Resource::Topic, &topics.state, Operation::Read),
            acl(Resource::Group, group, Operation::Read),
            // The copy reads every partition itself, joining no group (and
            // dead-letters nothing: it is rebuilt on every start);
            // librdkafka still names a group and looks up its coordinator
            // (`service_kit::kafka::replica`).
            acl(
                Resource::Group,
                &replica_group(SERVICE_A.name),
                Operation::Describe,
            ),
            dead_letters(&topics.notifications),
        ],
        Role::ServiceB { group } => vec![
            acl(Resource::Topic, &topics.notifications, Operation::Read),
            acl(Resource::Group, group, Operation::Read),
            dead_letters(&topics.notifications),
        ],
        Role::QueueWorker { topic, group } => vec![
            acl(Resource::Topic, topic, Operation::Read),
            acl(Resource::Group, group, Operation::Read),
        ],
        Role::Operator => Vec::new(),
    }
}

/// How Kafka's tools reach the broker: a listener where they may do
/// anything (the brokers' own, or the SASL one with the operator's
/// `--command-config`).
#[derive(Debug, Clone)]
pub struct Target {
    pub bootstrap: String,
    /// A client properties file that logs in as the operator.
    pub command_config: Option<String>,
}

/// One run of one of Kafka's tools: its script, as in the distribution's
/// `bin/`, and its arguments (passwords among them: never logged).
#[derive(Clone, PartialEq, Eq)]
pub struct Invocation {
    pub script: &'static str,
    pub args: Vec<String>,
}

impl std::fmt::Debug for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({} arguments, not shown)", self.script, self.args.len())
    }
}

impl Target {
    pub(crate) fn invocation(
        &self,
        script: &'static str,
        args: impl IntoIterator<Item = String>,
    ) -> Invocation {
        let mut all = vec!["--bootstrap-server".to_owned(), self.bootstrap.clone()];
        if let Some(config) = &self.command_config {
            all.extend(["--command-config".to_owned(), config.clone()]);
        }
        all.extend(args);
        Invocation { script, args: all }
    }
}

/// Named resources of one kind or another.
type Resources = Vec<(Resource, String)>;

/// The runs of Kafka's tools that make `users` (their SCRAM-SHA-512
/// credentials, set anew) and their ACLs on `target`. `kafka-configs`
/// alters one user per run; `kafka-acls` adds every principal × operation ×
/// resource it is given, so one run takes the ACLs that share an operation
/// and a pattern type, for the users that share their resources.
///
/// # Errors
///
/// When a password holds a character `kafka-configs`' `[...]` syntax cannot
/// carry (`,`, `[`, `]`) or a space.
pub fn invocations(users: &[User], topics: &Topics, target: &Target) -> Result<Vec<Invocation>> {
    let mut runs = Vec::new();
    for user in users {
        runs.push(target.invocation(
            "kafka-configs.sh",
            [
                "--alter".to_owned(),
                "--entity-type".to_owned(),
                "users".to_owned(),
                "--entity-name".to_owned(),
                user.login.name.clone(),
                "--add-config".to_owned(),
                scram_credential(None, &user.login)?,
            ],
        ));
    }
    // Each user's resources by (operation, pattern type); then the users
    // by (operation, pattern type, resources).
    let mut by_user: BTreeMap<(Operation, bool, &str), Resources> = BTreeMap::new();
    let all: Vec<Acl> = users
        .iter()
        .flat_map(|user| acls(&user.login.name, &user.role, topics))
        .collect();
    for acl in &all {
        by_user
            .entry((acl.operation, acl.prefixed, acl.user.as_str()))
            .or_default()
            .push((acl.resource, acl.name.clone()));
    }
    let mut grouped: BTreeMap<(Operation, bool, Resources), Vec<&str>> = BTreeMap::new();
    for ((operation, prefixed, user), resources) in by_user {
        grouped
            .entry((operation, prefixed, resources))
            .or_default()
            .push(user);
    }
    for ((operation, prefixed, resources), principals) in grouped {
        let mut args = vec!["--add".to_owned()];
        for principal in principals {
            args.extend(["--allow-principal".to_owned(), format!("User:{principal}")]);
        }
        args.extend(["--operation".to_owned(), format!("{operation:?}")]);
        for (resource, name) in resources {
            let option = match resource {
                Resource::Topic => "--topic",
                Resource::Group => "--group",
                Resource::TransactionalId => "--transactional-id",
            };
            args.extend([option.to_owned(), name]);
        }
        if prefixed {
            args.extend(["--resource-pattern-type".to_owned(), "prefixed".to_owned()]);
        }
        runs.push(target.invocation("kafka-acls.sh", args));
    }
    Ok(runs)
}

/// The runs of `kafka-topics` that make `topics` (and their dead-letter
/// topics) with their settings, `replication_factor` replicas each, unless
/// they exist: what `service_kit::kafka::Admin::ensure_topics` does, for
/// compose, whose `kafka-access` step has the tools and not this crate.
pub fn topic_invocations(topics: &Topics, replication_factor: i32, target: &Target) -> Vec<Invocation> {
    topics
        .specs()
        .into_iter()
        .map(|spec| {
            let mut args = vec![
                "--create".to_owned(),
                "--if-not-exists".to_owned(),
                "--topic".to_owned(),
                spec.name,
                "--partitions".to_owned(),
                spec.partitions.to_string(),
                "--replication-factor".to_owned(),
                replication_factor.to_string(),
                "--config".to_owned(),
                format!("min.insync.replicas={}", min_insync_replicas(replication_factor)),
            ];
            for (key, value) in spec.config {
                args.extend(["--config".to_owned(), format!("{key}={value}")]);
            }
            target.invocation("kafka-topics.sh", args)
        })
        .collect()
}

/// The SCRAM-SHA-512 credential of `login`, as `kafka-configs
/// --add-config` takes it, or `kafka-storage format --add-scram` with the
/// user's `name` in it.
pub fn scram_credential(name: Option<&str>, login: &KafkaUser) -> Result<String> {
    let password = login.password.expose();
    if password.is_empty() || password.contains([',', '[', ']']) || password.contains(char::is_whitespace) {
        return Err(Error::Access(format!(
            "the password of Kafka user {} must be non-empty, without spaces, `,`, `[` or `]`",
            login.name
        )));
    }
    let name = name.map(|name| format!("name={name},")).unwrap_or_default();
    Ok(format!(
        "SCRAM-SHA-512=[{name}iterations={SCRAM_ITERATIONS},password={password}]"
    ))
}

/// A client properties file's text that logs in as `login` on a
/// SASL/SCRAM-SHA-512 listener: a tool's `--command-config`.
pub fn command_config(login: &KafkaUser) -> String {
    format!(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
         sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \
         username=\"{}\" password=\"{}\";\n",
        login.name,
        login.password.expose()
    )
}

/// A shell script that runs `invocations` at once with the tools under
/// `bin` (the image's `/opt/kafka/bin`), and fails if any fails.
pub fn script(invocations: &[Invocation], bin: &str) -> String {
    let mut text = String::from(
        "#!/usr/bin/env bash\n\
         # Made from kafka_ops::access: Kafka's own tools, run at once.\n\
         set -u\n",
    );
    for (var, value) in TOOL_JVM {
        text.push_str(&format!("export {var}={}\n", shell_quote(value)));
    }
    text.push_str("pids=()\n");
    for invocation in invocations {
        let args: Vec<String> = invocation.args.iter().map(|arg| shell_quote(arg)).collect();
        text.push_str(&format!(
            "{bin}/{} {} &\npids+=($!)\n",
            invocation.script,
            args.join(" ")
        ));
    }
    text.push_str(&format!(
        "failed=0\nfor pid in \"${{pids[@]}}\"; do wait \"$pid\" || failed=1; done\n\
         [ \"$failed\" = 0 ] && echo \"{} runs of Kafka's tools done\"\n\
         exit \"$failed\"\n",
        invocations.len()
    ));
    text
}

fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// Kafka's tools on this machine: the scripts of the stand-in image
/// (`docker/images/kafka/bin`, as the distribution's) on the broker's
/// classpath that `cargo xtask kafka up` resolved from Maven.
#[derive(Debug, Clone)]
pub struct LocalTools {
    bin: PathBuf,
    classpath: String,
    log4j: PathBuf,
}

impl LocalTools {
    /// The tools of the checkout at `root`, on `classpath`.
    pub fn new(root: &Path, classpath: String) -> Self {
        let image = root.join("docker/images/kafka");
        Self {
            bin: image.join("bin"),
            classpath,
            log4j: image.join("docker/tools-log4j2.yaml"),
        }
    }

    /// Runs `invocations` at once ([`script`]), waits for them all, and
    /// returns what they printed.
    pub async fn run(&self, invocations: &[Invocation]) -> Result<String> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path =
            std::env::join_paths(std::iter::once(self.bin.clone()).chain(std::env::split_paths(&path)))
                .map_err(|e| Error::Access(e.to_string()))?;
        let output = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(script(invocations, &self.bin.display().to_string()))
            .env("CLASSPATH", &self.classpath)
            .env("PATH", path)
            .env(
                "KAFKA_LOG4J_OPTS",
                format!("-Dlog4j2.configurationFile={}", self.log4j.display()),
            )
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| Error::Access(format!("cannot run bash: {e}")))?;
        let printed = [output.stdout, output.stderr].map(|out| String::from_utf8_lossy(&out).into_owned());
        if output.status.success() {
            return Ok(printed.concat());
        }
        // The tools print no password.
        Err(Error::Access(format!(
            "Kafka's tools failed:\n{}",
            printed.concat()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(acls: &[Acl], resource: Resource, name: &str, operation: Operation) -> bool {
        acls.iter().any(|acl| {
            acl.resource == resource
                && acl.operation == operation
                && if acl.prefixed {
                    name.starts_with(&acl.name)
                } else {
                    acl.name == name
                }
        })
    }

    #[test]
    fn each_service_may_write_only_what_it_produces() {
        let topics = Topics::default();
        let a = acls(
            "service-a",
            &Role::ServiceA {
                group: "service-a".into(),
            },
            &topics,
        );
        let b = acls(
            "service-b",
            &Role::ServiceB {
                group: "service-b".into(),
            },
            &topics,
        );
        let payments = acls("payments", &Role::Payments, &topics);
        for (acls, may_write) in [
            (
                &payments,
                vec![topics.notifications.clone(), topics.state.clone()],
            ),
            (&a, vec![dead_letter_topic(&topics.notifications)]),
            (&b, vec![dead_letter_topic(&topics.notifications)]),
        ] {
            let written: Vec<&str> = acls
                .iter()
                .filter(|acl| acl.resource == Resource::Topic && acl.operation == Operation::Write)
                .map(|acl| acl.name.as_str())
                .collect();
            assert_eq!(written, may_write, "{acls:?}");
        }
        assert!(!allowed(&b, Resource::Group, "service-a", Operation::Read));
        assert!(!allowed(&a, Resource::Topic, &topics.state, Operation::Write));
        assert!(allowed(
            &payments,
            Resource::TransactionalId,
            "payments-service.outbox-relay.x.y",
            Operation::Write
        ));
        assert!(!allowed(
            &a,
            Resource::TransactionalId,
            "payments-service.outbox-relay.x.y",
            Operation::Write
        ));
    }

    #[test]
    fn a_queue_worker_reads_its_topic_in_its_share_group_and_nothing_else() {
        let role = Role::QueueWorker {
            topic: "work".into(),
            group: "workers".into(),
        };
        let worker = acls("worker", &role, &Topics::default());
        assert!(allowed(&worker, Resource::Topic, "work", Operation::Read));
        assert!(allowed(&worker, Resource::Group, "workers", Operation::Read));
        assert!(!allowed(&worker, Resource::Group, "service-b", Operation::Read));
        assert!(!allowed(
            &worker,
            Resource::Topic,
            &Topics::default().notifications,
            Operation::Read
        ));
        assert_eq!(worker.len(), 2, "{worker:?}");
    }

    fn user(name: &str, role: Role) -> User {
        User {
            login: KafkaUser {
                name: name.to_owned(),
                password: Secret::new("p".repeat(64)),
            },
            role,
        }
    }

    #[test]
    fn the_tools_runs_grant_the_acls_and_no_more() {
        let topics = Topics::default();
        let users = demo_users(|_| Secret::new("p".repeat(64)));
        let target = Target {
            bootstrap: "kafka:9092".to_owned(),
            command_config: Some("/run/credentials/operator.properties".to_owned()),
        };
        let runs = invocations(&users, &topics, &target).expect("runs");
        // One kafka-configs per user; kafka-acls runs the ACLs grouped.
        let configs = runs.iter().filter(|run| run.script == "kafka-configs.sh").count();
        assert_eq!(configs, users.len());
        assert!(runs.len() <= users.len() + 6, "{} runs", runs.len());
        // What the kafka-acls runs grant (each principal × operation ×
        // resource of a run) is exactly what `acls` says.
        let mut granted = Vec::new();
        for run in runs.iter().filter(|run| run.script == "kafka-acls.sh") {
            assert_eq!(
                run.args[..4],
                [
                    "--bootstrap-server",
                    "kafka:9092",
                    "--command-config",
                    "/run/credentials/operator.properties"
                ]
            );
            let values = |option: &str| -> Vec<String> {
                run.args
                    .windows(2)
                    .filter(|pair| pair[0] == option)
                    .map(|pair| pair[1].clone())
                    .collect()
            };
            let prefixed = values("--resource-pattern-type") == ["prefixed"];
            for principal in values("--allow-principal") {
                for operation in values("--operation") {
                    for (option, resource) in [
                        ("--topic", Resource::Topic),
                        ("--group", Resource::Group),
                        ("--transactional-id", Resource::TransactionalId),
                    ] {
                        for name in values(option) {
                            granted.push(format!("{principal} {operation} {resource:?} {name} {prefixed}"));
                        }
                    }
                }
            }
        }
        let mut wanted: Vec<String> = users
            .iter()
            .flat_map(|user| acls(&user.login.name, &user.role, &topics))
            .map(|acl| {
                format!(
                    "User:{} {:?} {:?} {} {}",
                    acl.user, acl.operation, acl.resource, acl.name, acl.prefixed
                )
            })
            .collect();
        granted.sort();
        wanted.sort();
        assert_eq!(granted, wanted);
    }

    #[test]
    fn a_password_the_tools_cannot_carry_is_refused() {
        let mut payments = user("payments", Role::Payments);
        assert_eq!(
            scram_credential(Some("payments"), &payments.login).expect("a credential"),
            format!(
                "SCRAM-SHA-512=[name=payments,iterations=8192,password={}]",
                "p".repeat(64)
            )
        );
        for bad in ["a,b", "a]b", "a b", ""] {
            payments.login.password = Secret::new(bad);
            assert!(scram_credential(None, &payments.login).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_script_runs_every_tool_and_fails_if_one_does() {
        let target = Target {
            bootstrap: "kafka:9092".to_owned(),
            command_config: None,
        };
        let runs = topic_invocations(&Topics::default(), 3, &target);
        assert_eq!(runs.len(), 4, "two topics and their dead-letter topics");
        assert!(runs[0].args.contains(&"min.insync.replicas=2".to_owned()));
        let script = script(&runs, "/opt/kafka/bin");
        assert_eq!(
            script
                .matches("/opt/kafka/bin/kafka-topics.sh '--bootstrap-server' 'kafka:9092'")
                .count(),
            4
        );
        assert!(script.contains("wait \"$pid\" || failed=1"), "{script}");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }
}
