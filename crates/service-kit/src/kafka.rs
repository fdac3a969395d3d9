//! Every Kafka client the services use is built here, so the delivery
//! guarantees are decided in one place.
//!
//! - Producers are idempotent and wait for all in-sync replicas: an event is
//!   acknowledged once, in order, and only after it is durable.
//! - Consumers store an offset only after the record was handled, and the
//!   background auto-commit commits only stored offsets: at-least-once.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use shared_events::Topics;

use crate::config::KafkaConfig;
use crate::error::{Error, Result};

/// How long a metadata request may take before the broker counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn base(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        // Shows up in broker logs and metrics, to tell the services apart.
        .set("client.id", client_id);
    c
}

/// A producer for events that must not be lost, duplicated or reordered.
///
/// `message_timeout` bounds how long a send may wait for the broker's
/// acknowledgement (including retries) before it fails; it is the longest a
/// sender waits when the broker is down before it sees an error.
pub fn producer(config: &KafkaConfig, client_id: &str, message_timeout: Duration) -> Result<FutureProducer> {
    Ok(base(config, client_id)
        // Retries cannot duplicate or reorder a message: the broker drops
        // duplicates by producer id and sequence number.
        .set("enable.idempotence", "true")
        // Acknowledged means written to every in-sync replica (implied by
        // idempotence; stated because it is the point).
        .set("acks", "all")
        .set("message.timeout.ms", message_timeout.as_millis().to_string())
        .create()?)
}

/// A consumer in `group_id` subscribed to `topics`: the group's members
/// share the partitions, and each resumes where the group left off.
pub fn consumer(
    config: &KafkaConfig,
    client_id: &str,
    group_id: &str,
    topics: &[&str],
) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = base(config, client_id)
        .set("group.id", group_id)
        // A group without a committed offset starts at the beginning of what
        // the topic retains: a new group sees the notifications of the last
        // 7 days rather than only those published after it started.
        .set("auto.offset.reset", "earliest")
        // The consumer loop stores a record's offset only after handling it...
        .set("enable.auto.offset.store", "false")
        // ...and the periodic auto-commit commits only stored offsets, so a
        // crash re-delivers unhandled records instead of losing them.
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().to_string(),
        )
        .create()?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// A reader of *every* partition of `topic` from the beginning, outside any
/// group: for a service that keeps a full local copy of a compacted topic in
/// memory and so must rebuild it on each start. Nothing is committed.
///
/// Partitions added to the topic later are not picked up until a restart.
pub async fn replica(config: &KafkaConfig, client_id: &str, topic: &str) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = base(config, client_id)
        // librdkafka needs a group id to `assign()`. With `assign()` (not
        // `subscribe()`) the consumer never joins the group.
        .set("group.id", format!("{client_id}.replica"))
        // Offsets are neither stored nor committed: every start reads it all.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let topic = topic.to_owned();
    // librdkafka's metadata call blocks its thread.
    tokio::task::spawn_blocking(move || {
        // A topic created a moment ago may not be in the metadata yet.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let partitions = loop {
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none())
                .map_or(0, |t| t.partitions().len());
            if found > 0 {
                break found;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::MissingTopic(topic));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut assignment = TopicPartitionList::new();
        for partition in 0..i32::try_from(partitions).unwrap_or(i32::MAX) {
            assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        Ok(consumer)
    })
    .await
    .map_err(|source| Error::Task {
        task: "replica assignment",
        source,
    })?
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
    /// An admin client for the broker, after making sure the topics exist:
    /// what every service does first.
    pub async fn with_topics(config: &KafkaConfig, client_id: &str) -> Result<Self> {
        let admin = Self::new(config, client_id)?;
        admin.ensure_topics(&config.topics).await?;
        Ok(admin)
    }

    pub fn new(config: &KafkaConfig, client_id: &str) -> Result<Self> {
        Ok(Self {
            client: Arc::new(base(config, client_id).create()?),
            replication_factor: config.replication_factor,
        })
    }

    /// Creates the topics that do not exist yet, with their settings
    /// (partitions, retention or compaction). Existing topics are left alone.
    pub async fn ensure_topics(&self, topics: &Topics) -> Result<()> {
        let specs = topics.specs();
        // With acks=all, an acknowledged write is on every *in-sync* replica;
        // this keeps "in sync" from shrinking to the leader alone.
        let min_insync = self.replication_factor.clamp(1, 2).to_string();
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
