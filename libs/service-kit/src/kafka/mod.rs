//! Every Kafka client the services use is built here, so the delivery
//! guarantees are decided in one place.
//!
//! - Producers are idempotent and wait for all in-sync replicas: an event is
//!   acknowledged once, in order, and only after it is durable. The outbox
//!   relay's producer also writes in transactions, so that a relay that lost
//!   the lead is fenced off ([`transactional_producer`]); consumers read
//!   committed records only.
//! - Consumers store an offset only after the record was handled, and the
//!   background auto-commit commits only stored offsets: at-least-once.
//! - Every consumer carries a [`GroupContext`]: it commits before giving
//!   partitions away in a rebalance, tells the consumer loop which partitions
//!   were revoked, applies the configured start position to partitions the
//!   group never read ([`StartFrom`]), and
//!   feeds the lag metrics.
//!
//! # Layout
//!
//! - this module: the clients, each with its settings explained;
//! - [`group`]: what a consumer does on a rebalance, its start position and
//!   its lag figures;
//! - `progress`: how far a partition may be committed while its records are
//!   handled out of order;
//! - [`admin`]: topic creation and the broker health probe.

pub mod admin;
pub mod group;
mod progress;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

pub use admin::{Admin, min_insync_replicas};
pub use group::{GroupConsumer, GroupContext, Offsets, start_offsets};

use crate::config::{ConsumerConfig, KafkaConfig, StartFrom};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// The most a consumer prefetches, in KiB (see [`consumer`]).
const QUEUED_MAX_KBYTES: &str = "8192";

/// How long a lookup of offsets (start positions, ends of partitions) may take.
pub(crate) const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The settings every client shares: where the brokers are, who it is,
/// and how it logs in. The operating tools (`kafka-ops`) start from these too.
pub fn client_config(config: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.bootstrap_servers)
        // Shows up in broker logs and metrics, to tell the services apart.
        .set("client.id", client_id);
    if !config.debug.is_empty() {
        c.set("debug", &config.debug);
    }
    if let Some(user) = &config.user {
        // The service logs in as its own user, and the broker lets it do
        // only what that user's ACLs allow (`kafka_ops::access`). SCRAM:
        // the password never crosses the wire, and the broker holds only a
        // salted hash of it. Plaintext transport: on loopback and compose's
        // network; across real networks, SASL_SSL with `ssl.ca.location`
        // keeps the same login.
        c.set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanisms", "SCRAM-SHA-512")
            .set("sasl.username", &user.name)
            .set("sasl.password", user.password.expose());
    }
    c
}

/// A producer for events that must not be lost, duplicated or reordered.
///
/// `message_timeout` bounds how long a send may wait for the broker's
/// acknowledgement (including retries) before it fails; it is the longest a
/// sender waits when the broker is down before it sees an error.
pub fn producer(config: &KafkaConfig, client_id: &str, message_timeout: Duration) -> Result<FutureProducer> {
    Ok(client_config(config, client_id)
        // Retries cannot duplicate or reorder a message: the broker drops
        // duplicates by producer id and sequence number.
        .set("enable.idempotence", "true")
        // Acknowledged means written to every in-sync replica (implied by
        // idempotence; stated because it is the point).
        .set("acks", "all")
        .set("message.timeout.ms", message_timeout.as_millis().to_string())
        .create()?)
}

/// A producer that writes in transactions as `transactional_id`: what it
/// sends is seen by consumers (which read committed records only, see
/// [`consumer`]) once its transaction commits, or never.
///
/// Starting a producer with the same `transactional_id`
/// ([`rdkafka::producer::Producer::init_transactions`]) fences off every
/// earlier one: the broker aborts its open transaction and refuses its
/// writes from then on. So a writer that lost its turn (frozen, cut off,
/// or just slow to notice) cannot write after the next one started.
pub fn transactional_producer(
    config: &KafkaConfig,
    client_id: &str,
    transactional_id: &str,
    message_timeout: Duration,
) -> Result<FutureProducer> {
    Ok(client_config(config, client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transactional.id", transactional_id)
        // The relay sends a whole batch, then waits for every record of it
        // before committing: lingering for more records (librdkafka's
        // default is 5 ms) would only delay the commit.
        .set("linger.ms", "0")
        .set("message.timeout.ms", message_timeout.as_millis().to_string())
        // A transaction left open by a producer that died is aborted by the
        // broker after this long (a successor aborts it at once). Until then,
        // consumers wait at its first record: they read committed records
        // only. It must be at least the message timeout.
        .set(
            "transaction.timeout.ms",
            (message_timeout * 3).as_millis().to_string(),
        )
        .create()?)
}

/// A consumer in `group_id` subscribed to `topics`: the group's members
/// share the partitions, and each resumes where the group left off (in a
/// partition the group never read, where `settings.start_from` says).
pub fn consumer(
    config: &KafkaConfig,
    settings: &ConsumerConfig,
    client_id: &str,
    group_id: &str,
    topics: &[&str],
    metrics: &Metrics,
) -> Result<GroupConsumer> {
    let context = GroupContext::new(
        group_id.to_owned(),
        Offsets::Commit,
        settings.start_from,
        metrics.clone(),
        settings.shutdown_timeout / 2,
    );
    let consumer: GroupConsumer = client_config(config, client_id)
        .set("group.id", group_id)
        // Records of transactions that were aborted (a relay fenced off
        // mid-batch) or are still open are never handed out (librdkafka's
        // default, stated because the relay's guarantees rest on it).
        .set("isolation.level", "read_committed")
        // A group without a committed offset starts at the beginning of what
        // the topic retains: a new group sees the notifications of the last
        // 7 days rather than only those published after it started.
        .set("auto.offset.reset", "earliest")
        // The loop hears when it reaches the end of a partition, to store the
        // end offset, past any transaction marker (see `consumer`).
        .set("enable.partition.eof", "true")
        // What librdkafka prefetches while the loop is busy: bounded at
        // 8 MiB (default 64 MiB), so that a backlog does not become memory.
        .set("queued.max.messages.kbytes", QUEUED_MAX_KBYTES)
        // The consumer loop stores a record's offset only after handling it...
        .set("enable.auto.offset.store", "false")
        // ...and the periodic auto-commit commits only stored offsets, so a
        // crash re-delivers unhandled records instead of losing them.
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().to_string(),
        )
        // How long the broker waits for a silent member (a crashed process)
        // before giving its partitions to the others.
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        // How long the loop may go without polling before the member is
        // dropped from the group. The loop keeps polling while it retries
        // a record, so slow dependencies do not hit this.
        .set(
            "max.poll.interval.ms",
            settings.max_poll_interval.as_millis().to_string(),
        )
        .set(
            "statistics.interval.ms",
            settings.statistics_interval.as_millis().to_string(),
        )
        .create_with_context(context)?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// A reader of *every* partition of `topic` from the beginning, outside any
/// group: for a service that keeps a full local copy of a compacted topic in
/// memory and so must rebuild it on each start. Nothing is committed.
///
/// Partitions added to the topic later are not picked up until a restart.
pub async fn replica(
    config: &KafkaConfig,
    settings: &ConsumerConfig,
    client_id: &str,
    topic: &str,
    metrics: &Metrics,
) -> Result<GroupConsumer> {
    // librdkafka needs a group id to `assign()`. With `assign()` (not
    // `subscribe()`) the consumer never joins the group.
    let group = replica_group(client_id);
    let context = GroupContext::new(
        group.clone(),
        Offsets::Forget,
        StartFrom::Earliest,
        metrics.clone(),
        settings.shutdown_timeout / 2,
    );
    let consumer: GroupConsumer = client_config(config, client_id)
        .set("group.id", &group)
        // Committed records only, as every consumer (see `consumer`).
        .set("isolation.level", "read_committed")
        // The loop hears when it reaches the end of each partition: the
        // service is ready once it has, for all of them.
        .set("enable.partition.eof", "true")
        .set("queued.max.messages.kbytes", QUEUED_MAX_KBYTES)
        // Offsets are neither stored nor committed: every start reads it all.
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set(
            "statistics.interval.ms",
            settings.statistics_interval.as_millis().to_string(),
        )
        .create_with_context(context)?;
    let topic = topic.to_owned();
    // librdkafka's metadata call blocks its thread.
    tokio::task::spawn_blocking(move || {
        let partitions = partition_count(&consumer, &topic)?;
        let mut assignment = TopicPartitionList::new();
        let mut ends = HashMap::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
            let (low, high) = watermarks(&consumer, &topic, partition)?;
            // An empty partition is at its end from the start.
            if high > low {
                ends.insert((topic.clone(), partition), high);
            }
        }
        consumer.assign(&assignment)?;
        let context = consumer.context();
        let all = || (0..partitions).map(|partition| (topic.clone(), partition));
        context.assigned(all());
        context.ends_at_start(all(), ends);
        Ok(consumer)
    })
    .await
    .map_err(|source| Error::Task {
        task: "replica assignment",
        source,
    })?
}

/// The group id [`replica`] names for `client_id`: never joined, but its
/// user needs an ACL for it (`kafka_ops::access`).
pub fn replica_group(client_id: &str) -> String {
    format!("{client_id}.replica")
}

/// The number of partitions of `topic`, waiting a little for a topic created
/// a moment ago to show up in the metadata. Blocks.
pub fn partition_count<C: ConsumerContext>(consumer: &impl Consumer<C>, topic: &str) -> Result<i32> {
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let listed = metadata.topics().iter().find(|t| t.name() == topic);
        let found = listed
            .filter(|t| t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if found > 0 {
            return Ok(i32::try_from(found).unwrap_or(i32::MAX));
        }
        if std::time::Instant::now() > deadline {
            // What the broker said, for the log: unknown, or listed with an
            // error (and which).
            let said = listed.map_or_else(|| "not listed".to_owned(), |t| format!("{:?}", t.error()));
            tracing::warn!(
                topic,
                broker_said = said,
                waited_ms = started.elapsed().as_millis(),
                "topic not found"
            );
            return Err(Error::MissingTopic(topic.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The low and high watermarks of `partition` of `topic`, asking again for
/// up to [`LOOKUP_TIMEOUT`] while the broker cannot say yet: a topic created a
/// moment ago has no leaders for a little while. Blocks.
pub fn watermarks<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64)> {
    let deadline = std::time::Instant::now() + LOOKUP_TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT) {
            Ok(marks) => return Ok(marks),
            Err(e) if std::time::Instant::now() > deadline => return Err(e.into()),
            Err(e) => {
                tracing::debug!(error = %e, topic, partition, "watermarks not known yet");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A client acting for `group` without joining it: it only assigns
/// partitions to itself, and commits only when told to. What the operating
/// tools (`kafka-ops`) use to read and move a stopped group's offsets.
pub fn outsider(config: &KafkaConfig, client_id: &str, group: &str) -> Result<BaseConsumer> {
    Ok(client_config(config, client_id)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        // An assigned offset that retention removed meanwhile: read from
        // the oldest one left rather than skip to the end.
        .set("auto.offset.reset", "earliest")
        .create()?)
}
