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
//! | `operator` | everything: a super user in the broker's config, for xtask and the Kafka UI |
//!
//! Reading and writing imply describing. No service may create a topic: the
//! operator makes them all, with their settings, before the services start
//! ([`provision`]); a service that asks is refused, which it takes as "not
//! mine to make". The brokers' own
//! plaintext listener (replication, the controllers, loopback tools) is not
//! this listener; its principal is a super user too (see the broker
//! configs).
//!
//! [`provision`] makes the topics, the users and the ACLs, as the operator;
//! `cargo xtask kafka up`, compose's `kafka-access` and the tests call it.
//! Both the users (upserted) and the ACLs (a set) may be made again.

use std::time::Duration;

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use service_kit::config::{KafkaConfig, KafkaUser, Secret};
use service_kit::kafka::{Admin, replica_group};
use shared_events::{Topics, dead_letter_topic};

use crate::{Error, Result};

/// How long the broker may take to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// SCRAM's hashing rounds for a new password: Kafka's default for its tools.
const SCRAM_ITERATIONS: i32 = 8192;
/// ServiceA's Kafka client id (`service_a::SERVICE`), which names its copy's group.
const SERVICE_A: &str = "service-a";
/// The prefix of every transactional id Payments' relay uses
/// (`payments_service::relay::Relay::transactional_id`).
pub const PAYMENTS_TRANSACTIONAL_PREFIX: &str = "payments-service.outbox-relay.";

/// What a user is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Payments: the producer of both topics.
    Payments,
    /// ServiceA, consuming in `group`.
    ServiceA { group: String },
    /// ServiceB, consuming in `group`.
    ServiceB { group: String },
    /// The operator: a super user in the broker's config, so no ACL.
    Operator,
}

/// The demo's users (compose, `cargo xtask kafka up`), each with the
/// variable that holds its password (in `.env`, made by `cargo xtask
/// credentials`).
pub const USERS: [(&str, &str); 4] = [
    ("payments", "PAYMENTS_KAFKA_PASSWORD"),
    ("service-a", "SERVICE_A_KAFKA_PASSWORD"),
    ("service-b", "SERVICE_B_KAFKA_PASSWORD"),
    ("operator", "OPERATOR_KAFKA_PASSWORD"),
];

/// [`USERS`], each in its role (the services in their default groups, named
/// after them), with the password `password` gives for its variable.
pub fn demo_users<E>(mut password: impl FnMut(&'static str) -> Result<Secret, E>) -> Result<Vec<User>, E> {
    USERS
        .iter()
        .map(|&(name, var)| {
            let role = match name {
                "payments" => Role::Payments,
                "service-a" => Role::ServiceA {
                    group: name.to_owned(),
                },
                "service-b" => Role::ServiceB {
                    group: name.to_owned(),
                },
                _ => Role::Operator,
            };
            Ok(User {
                login: KafkaUser {
                    name: name.to_owned(),
                    password: password(var)?,
                },
                role,
            })
        })
        .collect()
}

/// A resource an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Topic,
    Group,
    TransactionalId,
}

/// What an ACL allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
                    PAYMENTS_TRANSACTIONAL_PREFIX,
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
            acl(Resource::Group, &replica_group(SERVICE_A), Operation::Describe),
            dead_letters(&topics.notifications),
        ],
        Role::ServiceB { group } => vec![
            acl(Resource::Topic, &topics.notifications, Operation::Read),
            acl(Resource::Group, group, Operation::Read),
            dead_letters(&topics.notifications),
        ],
        Role::Operator => Vec::new(),
    }
}

/// Makes `topics` (with their settings), `users` and their ACLs, logged in
/// as `operator` (a super user, or the brokers' own listener).
pub async fn provision(operator: &KafkaConfig, topics: &Topics, users: &[User]) -> Result<()> {
    Admin::new(operator, "kafka-access")?
        .ensure_topics(topics)
        .await?;
    // The operator's own login, if it has one, as every client's.
    let client: AdminClient<DefaultClientContext> =
        service_kit::kafka::client_config(operator, "kafka-access").create()?;
    let acls: Vec<Acl> = users
        .iter()
        .flat_map(|user| acls(&user.login.name, &user.role, topics))
        .collect();
    let logins: Vec<KafkaUser> = users.iter().map(|user| user.login.clone()).collect();
    tokio::task::spawn_blocking(move || {
        ffi::upsert_scram_users(&client, &logins, REQUEST_TIMEOUT)?;
        ffi::create_acls(&client, &acls, REQUEST_TIMEOUT)
    })
    .await
    .map_err(|e| Error::Task("kafka-access", e))?
}

/// librdkafka's ACL and SCRAM calls, which `rdkafka` does not wrap: the only
/// unsafe code of the workspace, kept to these two functions.
#[allow(unsafe_code)]
mod ffi {
    use std::ffi::{CStr, CString, c_char};
    use std::time::Duration;

    use rdkafka::admin::AdminClient;
    use rdkafka::bindings as rd;
    use rdkafka::client::DefaultClientContext;
    use service_kit::config::KafkaUser;

    use super::{Acl, Operation, Resource, SCRAM_ITERATIONS};
    use crate::{Error, Result};

    const NO_ERROR: rd::rd_kafka_resp_err_t = rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR;

    /// The event queue, options and result event of one admin request,
    /// destroyed however the request ends.
    struct Request {
        queue: *mut rd::rd_kafka_queue_t,
        options: *mut rd::rd_kafka_AdminOptions_t,
        event: *mut rd::rd_kafka_event_t,
    }

    impl Drop for Request {
        fn drop(&mut self) {
            // SAFETY: each pointer is null or was made by librdkafka for
            // this request and is destroyed only here.
            unsafe {
                if !self.event.is_null() {
                    rd::rd_kafka_event_destroy(self.event);
                }
                if !self.options.is_null() {
                    rd::rd_kafka_AdminOptions_destroy(self.options);
                }
                if !self.queue.is_null() {
                    rd::rd_kafka_queue_destroy(self.queue);
                }
            }
        }
    }

    impl Request {
        fn new(
            client: &AdminClient<DefaultClientContext>,
            op: rd::rd_kafka_admin_op_t,
            timeout: Duration,
        ) -> Result<Self> {
            let rk = client.inner().native_ptr();
            let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
            let mut errstr = [0 as c_char; 256];
            // SAFETY: `rk` is the live client's handle; the queue and the
            // options belong to the value returned, which destroys them.
            unsafe {
                let request = Self {
                    queue: rd::rd_kafka_queue_new(rk),
                    options: rd::rd_kafka_AdminOptions_new(rk, op),
                    event: std::ptr::null_mut(),
                };
                if request.queue.is_null() || request.options.is_null() {
                    return Err(Error::Access("librdkafka made no admin request".to_owned()));
                }
                let set = rd::rd_kafka_AdminOptions_set_request_timeout(
                    request.options,
                    millis,
                    errstr.as_mut_ptr(),
                    errstr.len(),
                );
                if set != NO_ERROR {
                    return Err(Error::Access(format!(
                        "request timeout: {}",
                        text(errstr.as_ptr())
                    )));
                }
                Ok(request)
            }
        }

        /// Waits for the result event, and fails on a request-level error.
        fn wait(&mut self, what: &'static str, timeout: Duration) -> Result<()> {
            let millis = i32::try_from((timeout + Duration::from_secs(5)).as_millis()).unwrap_or(i32::MAX);
            // SAFETY: the queue is live; the event belongs to `self`.
            unsafe {
                self.event = rd::rd_kafka_queue_poll(self.queue, millis);
                if self.event.is_null() {
                    return Err(Error::Access(format!("{what}: no answer within {timeout:?}")));
                }
                if rd::rd_kafka_event_error(self.event) != NO_ERROR {
                    let text = text(rd::rd_kafka_event_error_string(self.event));
                    return Err(Error::Access(format!("{what}: {text}")));
                }
            }
            Ok(())
        }
    }

    /// A C string librdkafka owns, copied.
    ///
    /// SAFETY: `s` is null or a NUL-terminated string live for the call.
    unsafe fn text(s: *const c_char) -> String {
        if s.is_null() {
            String::new()
        } else {
            // SAFETY: as the caller promises.
            unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
        }
    }

    /// The error of one element of a result, if it failed.
    ///
    /// SAFETY: `error` is null or a live `rd_kafka_error_t` of a result.
    unsafe fn failure(error: *const rd::rd_kafka_error_t) -> Option<String> {
        // SAFETY: as the caller promises.
        unsafe {
            (!error.is_null() && rd::rd_kafka_error_code(error) != NO_ERROR)
                .then(|| text(rd::rd_kafka_error_string(error)))
        }
    }

    fn c_string(s: &str) -> Result<CString> {
        CString::new(s).map_err(|_| Error::Access(format!("{s:?} holds a NUL byte")))
    }

    /// Sets each user's SCRAM-SHA-512 password (making the user if new).
    pub(super) fn upsert_scram_users(
        client: &AdminClient<DefaultClientContext>,
        users: &[KafkaUser],
        timeout: Duration,
    ) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let names = users
            .iter()
            .map(|user| c_string(&user.name))
            .collect::<Result<Vec<_>>>()?;
        let mut request = Request::new(
            client,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS,
            timeout,
        )?;
        // SAFETY: every pointer handed over is live for the call; librdkafka
        // copies the alterations (names and passwords included), which are
        // destroyed right after; a null salt asks librdkafka for a random
        // one (OpenSSL's).
        unsafe {
            let mut alterations: Vec<_> = names
                .iter()
                .zip(users)
                .map(|(name, user)| {
                    let password = user.password.expose().as_bytes();
                    rd::rd_kafka_UserScramCredentialUpsertion_new(
                        name.as_ptr(),
                        rd::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512,
                        SCRAM_ITERATIONS,
                        password.as_ptr(),
                        password.len(),
                        std::ptr::null(),
                        0,
                    )
                })
                .collect();
            rd::rd_kafka_AlterUserScramCredentials(
                client.inner().native_ptr(),
                alterations.as_mut_ptr(),
                alterations.len(),
                request.options,
                request.queue,
            );
            rd::rd_kafka_UserScramCredentialAlteration_destroy_array(
                alterations.as_mut_ptr(),
                alterations.len(),
            );
            request.wait("setting the users' passwords", timeout)?;
            let result = rd::rd_kafka_event_AlterUserScramCredentials_result(request.event);
            if result.is_null() {
                return Err(Error::Access(
                    "setting the users' passwords: not its result".to_owned(),
                ));
            }
            let mut count = 0;
            let responses = rd::rd_kafka_AlterUserScramCredentials_result_responses(result, &raw mut count);
            if count != users.len() {
                return Err(Error::Access(format!(
                    "setting the users' passwords: {count} answers for {} users",
                    users.len()
                )));
            }
            for i in 0..count {
                let response = *responses.add(i);
                if let Some(error) = failure(rd::rd_kafka_AlterUserScramCredentials_result_response_error(
                    response,
                )) {
                    let user = text(rd::rd_kafka_AlterUserScramCredentials_result_response_user(
                        response,
                    ));
                    return Err(Error::Access(format!(
                        "setting the password of user {user}: {error}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// A binding's strings, made before any binding so that a bad one
    /// fails before librdkafka holds anything.
    struct AclStrings {
        name: CString,
        principal: CString,
    }

    /// Adds `acls` (allow, from any host); those there already stay.
    pub(super) fn create_acls(
        client: &AdminClient<DefaultClientContext>,
        acls: &[Acl],
        timeout: Duration,
    ) -> Result<()> {
        if acls.is_empty() {
            return Ok(());
        }
        let any_host = c_string("*")?;
        let strings = acls
            .iter()
            .map(|acl| {
                Ok(AclStrings {
                    name: c_string(&acl.name)?,
                    principal: c_string(&format!("User:{}", acl.user))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut request = Request::new(
            client,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
            timeout,
        )?;
        // SAFETY: as in `upsert_scram_users`: librdkafka copies the bindings
        // (and their strings), which are destroyed after the call, or on the
        // way out if one cannot be made.
        unsafe {
            let mut bindings = Vec::with_capacity(acls.len());
            for (acl, strings) in acls.iter().zip(&strings) {
                let mut errstr = [0 as c_char; 256];
                let binding = rd::rd_kafka_AclBinding_new(
                    resource(acl.resource),
                    strings.name.as_ptr(),
                    if acl.prefixed {
                        rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED
                    } else {
                        rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL
                    },
                    strings.principal.as_ptr(),
                    any_host.as_ptr(),
                    operation(acl.operation),
                    rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
                    errstr.as_mut_ptr(),
                    errstr.len(),
                );
                if binding.is_null() {
                    rd::rd_kafka_AclBinding_destroy_array(bindings.as_mut_ptr(), bindings.len());
                    return Err(Error::Access(format!("{acl:?}: {}", text(errstr.as_ptr()))));
                }
                bindings.push(binding);
            }
            rd::rd_kafka_CreateAcls(
                client.inner().native_ptr(),
                bindings.as_mut_ptr(),
                bindings.len(),
                request.options,
                request.queue,
            );
            rd::rd_kafka_AclBinding_destroy_array(bindings.as_mut_ptr(), bindings.len());
            request.wait("creating the ACLs", timeout)?;
            let result = rd::rd_kafka_event_CreateAcls_result(request.event);
            if result.is_null() {
                return Err(Error::Access("creating the ACLs: not its result".to_owned()));
            }
            let mut count = 0;
            let results = rd::rd_kafka_CreateAcls_result_acls(result, &raw mut count);
            if count != acls.len() {
                return Err(Error::Access(format!(
                    "creating the ACLs: {count} answers for {} ACLs",
                    acls.len()
                )));
            }
            for (i, acl) in acls.iter().enumerate() {
                if let Some(error) = failure(rd::rd_kafka_acl_result_error(*results.add(i))) {
                    return Err(Error::Access(format!("{acl:?}: {error}")));
                }
            }
        }
        Ok(())
    }

    fn resource(resource: Resource) -> rd::rd_kafka_ResourceType_t {
        match resource {
            Resource::Topic => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            Resource::Group => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP,
            Resource::TransactionalId => rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
        }
    }

    fn operation(operation: Operation) -> rd::rd_kafka_AclOperation_t {
        match operation {
            Operation::Read => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_READ,
            Operation::Write => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_WRITE,
            Operation::Describe => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_DESCRIBE,
        }
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
}
