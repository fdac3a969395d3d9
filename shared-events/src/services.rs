//! The names the services are known by, in one place: their Kafka client
//! ids and default consumer groups, the Kafka users and PostgreSQL roles
//! they log in as, and the transactional ids of Payments' outbox relay.
//!
//! The services, the operator's provisioning (their users and ACLs,
//! `kafka_ops::access`; their roles, `service_kit::postgres_access`), xtask
//! and the tests all take the names from here, so a rename is a compile
//! error, or the same name everywhere, never a login refused at run time.
//! Where `docker-compose.yml` must repeat one, xtask's tests compare it with
//! this module.

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// Its name: its Kafka client id, its default consumer group, the
    /// `ce_source` of what it publishes, and its name in the logs.
    pub name: &'static str,
    /// The Kafka user it logs in as (SASL/SCRAM-SHA-512).
    pub kafka_user: &'static str,
    /// Its PostgreSQL role, and the database that role owns.
    pub database_role: &'static str,
}

/// Payments: the producer of both topics.
pub const PAYMENTS: Service = Service {
    name: "payments-service",
    kafka_user: "payments",
    database_role: "payments",
};

/// ServiceA: a copy of every payment, from the state topic.
pub const SERVICE_A: Service = Service {
    name: "service-a",
    kafka_user: "service-a",
    database_role: "service_a",
};

/// ServiceB: the notifications' consumer, which calls back Payments.
pub const SERVICE_B: Service = Service {
    name: "service-b",
    kafka_user: "service-b",
    database_role: "service_b",
};

/// The three services.
pub const SERVICES: [Service; 3] = [PAYMENTS, SERVICE_A, SERVICE_B];

/// The operator's Kafka user: a super user in the brokers' config (xtask,
/// the Kafka UI, the provisioning of the others).
pub const OPERATOR: &str = "operator";

/// The prefix of every transactional id Payments' outbox relay uses
/// (followed by the two topics' names); its Kafka user may use those only.
pub const RELAY_TRANSACTIONAL_PREFIX: &str = "payments-service.outbox-relay.";

/// The service called `name`, if one is.
pub fn service(name: &str) -> Option<Service> {
    SERVICES.into_iter().find(|service| service.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relays_transactional_ids_are_payments_own() {
        assert!(RELAY_TRANSACTIONAL_PREFIX.starts_with(&format!("{}.", PAYMENTS.name)));
        assert_eq!(service("service-b"), Some(SERVICE_B));
        assert_eq!(service(OPERATOR), None);
    }
}
