//! Topic administration and the broker health probe.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use shared_events::Topics;

use super::client_config;
use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// How long a metadata request may take before the broker counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The in-sync replicas a write with acks=all needs on a topic of
/// `replication_factor` replicas: two where there are two or more, so that
/// "in sync" never shrinks to the leader alone.
pub fn min_insync_replicas(replication_factor: i32) -> i32 {
    replication_factor.clamp(1, 2)
}

/// Topic administration and the broker health probe.
#[derive(Clone)]
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    replication_factor: i32,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

impl Admin {
    /// An admin client for the broker, after waiting up to `wait` for it to
    /// answer ([`crate::startup::wait_for_broker`]) and making sure the
    /// topics exist: what every service does first.
    pub async fn with_topics(config: &KafkaConfig, client_id: &str, wait: Duration) -> Result<Self> {
        let admin = Self::new(config, client_id)?;
        crate::startup::wait_for_broker(&admin, config, wait).await?;
        admin.ensure_topics(&config.topics).await?;
        Ok(admin)
    }

    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self> {
        Ok(Self {
            client: Arc::new(client_config(config, client_id).create()?),
            replication_factor: config.replication_factor,
        })
    }

    /// Creates the topics that do not exist yet, with their settings
    /// (partitions, retention or compaction). Existing topics are left alone.
    pub async fn ensure_topics(&self, topics: &Topics) -> Result<()> {
        let specs = topics.specs();
        // With acks=all, an acknowledged write is on every *in-sync* replica;
        // this keeps "in sync" from shrinking to the leader alone.
        let min_insync = min_insync_replicas(self.replication_factor).to_string();
        let new_topics: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|spec| {
                spec.config.iter().fold(
                    NewTopic::new(
                        &spec.name,
                        spec.partitions,
                        TopicReplication::Fixed(self.replication_factor),
                    )
                    .set("min.insync.replicas", &min_insync),
                    |topic, (key, value)| topic.set(key, value),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in self.client.create_topics(&new_topics, &options).await? {
            match result {
                Ok(topic) => tracing::info!(topic, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                // A service logged in as its own user may create only the
                // topics it writes (`kafka_ops::access`); the others are
                // made by their owners or the operator's provisioning, and
                // a consumer waits for them.
                Err((topic, RDKafkaErrorCode::TopicAuthorizationFailed)) => {
                    tracing::debug!(topic, "not this service's topic to create");
                }
                Err((topic, code)) => return Err(Error::CreateTopic { topic, code }),
            }
        }
        Ok(())
    }

    /// Whether a broker answers a metadata request within a few seconds.
    pub async fn broker_reachable(&self) -> bool {
        let client = Arc::clone(&self.client);
        // librdkafka's metadata call blocks its thread.
        tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, PROBE_TIMEOUT))
            .await
            .is_ok_and(|metadata| metadata.is_ok_and(|m| !m.brokers().is_empty()))
    }
}
