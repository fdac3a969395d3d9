//! Makes the topics, the services' Kafka users and their ACLs, then exits:
//! compose's `kafka-access` step (see [`kafka_ops::access`]).
//!
//! `KAFKA_BOOTSTRAP_SERVERS` names a listener where this client may do
//! anything: the brokers' own, or the SASL one as the operator
//! (`KAFKA_SASL_USERNAME`/`KAFKA_SASL_PASSWORD`). The passwords come from
//! the variables [`kafka_ops::access::USERS`] names.

use kafka_ops::access::{USERS, demo_users, provision};
use service_kit::config::{KafkaConfig, credential};
use service_kit::lifecycle::block_on;

/// Its Kafka client id, and its name in the logs.
const SERVICE: &str = "kafka-access";

fn main() -> anyhow::Result<()> {
    let _telemetry = service_kit::telemetry::init(SERVICE)?;
    let operator = KafkaConfig::from_env()?;
    let users = demo_users(credential)?;
    block_on(async {
        provision(&operator, &operator.topics, &users).await?;
        let names: Vec<&str> = USERS.iter().map(|(name, _)| *name).collect();
        tracing::info!(
            "topics {} and {}, users {} and their ACLs are in place",
            operator.topics.notifications,
            operator.topics.state,
            names.join(", ")
        );
        anyhow::Ok(())
    })?
}
