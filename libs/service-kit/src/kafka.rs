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

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use shared_events::Topics;

use crate::config::{ConsumerConfig, KafkaConfig};
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// How long a metadata request may take before the broker counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a lookup of start offsets (by time or end of partition) may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn base(config: &KafkaConfig, client_id: &str) -> ClientConfig {
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
    Ok(base(config, client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transactional.id", transactional_id)
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

/// Where a group member starts reading a partition its group has no
/// committed offset for (`START_FROM`): a new group, or one whose offsets
/// were reset away. Partitions the group has read always resume where it
/// left off; to move those, stop the group and reset its offsets
/// ([`crate::groups::reset`], `cargo xtask reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// `committed`: the beginning (`auto.offset.reset=earliest`).
    #[default]
    Committed,
    /// `earliest`: the oldest record the topic retains.
    Earliest,
    /// `latest`: only records published after the consumer got the partition.
    Latest,
    /// An RFC 3339 time or milliseconds since the epoch: the first record
    /// with a timestamp at or after it.
    At(DateTime<Utc>),
}

impl FromStr for StartFrom {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "committed" => Ok(Self::Committed),
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => {
                if let Ok(ms) = s.parse::<i64>() {
                    return DateTime::from_timestamp_millis(ms)
                        .map(Self::At)
                        .ok_or_else(|| format!("{ms} ms is out of range"));
                }
                DateTime::parse_from_rfc3339(s)
                    .map(|t| Self::At(t.to_utc()))
                    .map_err(|_| {
                        "expected committed, earliest, latest, an RFC 3339 time or milliseconds since the epoch"
                            .to_owned()
                    })
            }
        }
    }
}

impl StartFrom {
    /// The offset of each partition of `partitions` (topic, partition) to
    /// start at, looked up on the broker; `None` for [`StartFrom::Committed`].
    /// Blocks.
    ///
    /// Every offset is a number, to be committed. In particular the end of a
    /// partition is looked up here rather than left to librdkafka's
    /// `Offset::End`, which it resolves only once fetching starts: a record
    /// published in between would be skipped.
    pub fn offsets<C: ConsumerContext>(
        self,
        consumer: &BaseConsumer<C>,
        partitions: &[(String, i32)],
    ) -> Result<Option<TopicPartitionList>> {
        let mut tpl = TopicPartitionList::new();
        let end = |topic: &str, partition: i32| -> Result<Offset> {
            let (_, high) = consumer.fetch_watermarks(topic, partition, LOOKUP_TIMEOUT)?;
            Ok(Offset::Offset(high))
        };
        match self {
            Self::Committed => return Ok(None),
            Self::Earliest => {
                for (topic, partition) in partitions {
                    let (low, _) = consumer.fetch_watermarks(topic, *partition, LOOKUP_TIMEOUT)?;
                    tpl.add_partition_offset(topic, *partition, Offset::Offset(low))?;
                }
            }
            Self::Latest => {
                for (topic, partition) in partitions {
                    tpl.add_partition_offset(topic, *partition, end(topic, *partition)?)?;
                }
            }
            Self::At(time) => {
                let mut query = TopicPartitionList::new();
                for (topic, partition) in partitions {
                    query.add_partition_offset(topic, *partition, Offset::Offset(time.timestamp_millis()))?;
                }
                // For each partition: the first offset whose timestamp is at
                // or after `time`, or the end if there is none.
                for e in consumer.offsets_for_times(query, LOOKUP_TIMEOUT)?.elements() {
                    e.error()?;
                    let offset = match e.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        _ => end(e.topic(), e.partition())?,
                    };
                    tpl.add_partition_offset(e.topic(), e.partition(), offset)?;
                }
            }
        }
        Ok(Some(tpl))
    }
}

/// A consumer of the services: a group member ([`consumer`]) or a replica
/// reader ([`replica`]).
pub type GroupConsumer = StreamConsumer<GroupContext>;

/// What the consumer loop does with the offsets of handled records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offsets {
    /// A group member ([`consumer`]): store each offset after handling,
    /// commit in the background, before a rebalance and on shutdown.
    Commit,
    /// A replica reader ([`replica`]): nothing to remember, it reads from the
    /// beginning on every start.
    Forget,
}

type Partition = (String, i32);

/// The consumer's side of rebalances and statistics, shared with the
/// consumer loop (through [`Consumer::context`]).
#[derive(Debug)]
pub struct GroupContext {
    /// The group, as named in metrics and logs.
    pub group: String,
    pub offsets: Offsets,
    start_from: StartFrom,
    metrics: Metrics,
    partitions: Mutex<Partitions>,
}

#[derive(Debug, Default)]
struct Partitions {
    assigned: HashSet<Partition>,
    /// Counts revocations; [`GroupContext::epoch`].
    epoch: u64,
    /// The epoch at which each partition was last revoked.
    revoked_at: HashMap<Partition, u64>,
    /// Assigned partitions the loop has handled to the end of at least once.
    reached_end: HashSet<Partition>,
    /// For a replica reader, each partition's end offset when it started:
    /// handling the record before it is reaching the end too (the end of a
    /// partition that keeps being written to is never reported).
    ends_at_start: HashMap<Partition, i64>,
    /// Whether the loop holds everything paused (while retrying a record).
    held: bool,
}

impl GroupContext {
    fn new(group: String, offsets: Offsets, start_from: StartFrom, metrics: Metrics) -> Self {
        Self {
            group,
            offsets,
            start_from,
            metrics,
            partitions: Mutex::default(),
        }
    }

    fn partitions(&self) -> MutexGuard<'_, Partitions> {
        self.partitions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A number that changes whenever partitions are revoked: the consumer
    /// loop notes it when a record arrives, to ask [`Self::revoked_since`]
    /// before handling it.
    pub fn epoch(&self) -> u64 {
        self.partitions().epoch
    }

    /// Whether the partition of a record that arrived at `epoch` was revoked
    /// since. Its new owner (maybe this very consumer, after an eager
    /// rebalance) reads it again from the committed offset, so handling it
    /// here would handle it twice.
    pub fn revoked_since(&self, topic: &str, partition: i32, epoch: u64) -> bool {
        self.partitions()
            .revoked_at
            .get(&(topic.to_owned(), partition))
            .is_some_and(|revoked| *revoked > epoch)
    }

    /// Notes that the loop is done with the record at `offset` of
    /// `partition` of `topic`: if it is the last one before the partition's
    /// end when the reader started, the loop has reached that end.
    pub fn done_with(&self, topic: &str, partition: i32, offset: i64) {
        let mut partitions = self.partitions();
        let partition = (topic.to_owned(), partition);
        if partitions
            .ends_at_start
            .get(&partition)
            .is_some_and(|end| offset + 1 >= *end)
            && partitions.assigned.contains(&partition)
        {
            partitions.reached_end.insert(partition);
        }
    }

    /// Notes that the loop handled every record of `partition` of `topic`
    /// up to the end the broker reported.
    pub fn reached_end(&self, topic: &str, partition: i32) {
        let mut partitions = self.partitions();
        let partition = (topic.to_owned(), partition);
        if partitions.assigned.contains(&partition) {
            partitions.reached_end.insert(partition);
        }
    }

    /// Whether the loop has handled every record of every partition it holds
    /// up to the end the broker reported (or, for a replica reader, up to
    /// the end each had when it started) at least once since it got them:
    /// what a reader that rebuilds a copy from the beginning waits for
    /// before it serves.
    pub fn caught_up(&self) -> bool {
        let partitions = self.partitions();
        !partitions.assigned.is_empty() && partitions.assigned.is_subset(&partitions.reached_end)
    }

    /// Whether [`Self::hold`] holds the partitions paused.
    pub fn held(&self) -> bool {
        self.partitions().held
    }

    /// Pauses (`true`) or resumes every partition the consumer holds,
    /// including those a rebalance assigns while held. The loop holds them
    /// while it retries a record: it keeps polling, which keeps it in the
    /// group, without fetching records it could not handle yet.
    pub fn hold(&self, consumer: &GroupConsumer, held: bool) {
        let mut partitions = self.partitions();
        partitions.held = held;
        let tpl = match consumer.assignment() {
            Ok(tpl) => tpl,
            Err(e) => return tracing::warn!(error = %e, "cannot read the assignment"),
        };
        let result = if held {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, held, "cannot pause or resume partitions");
        }
    }

    fn assign(&self, consumer: &BaseConsumer<Self>, tpl: &mut TopicPartitionList) {
        let incoming: Vec<Partition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let started = self.start_new_partitions(consumer, tpl);
        let assigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = assigned {
            return tracing::error!(error = %e, "cannot take the assigned partitions");
        }
        if let Some(started) = started {
            // Committed at once: should the partition move on before its
            // first record is handled, its next owner starts there too.
            if let Err(e) = consumer.commit(&started, CommitMode::Sync) {
                tracing::error!(error = %e, "cannot commit the start positions");
            }
        }
        // A partition keeps librdkafka's pause flag across a revocation, so
        // each assigned partition is explicitly paused or resumed.
        let paused = if self.held() {
            consumer.pause(tpl)
        } else {
            consumer.resume(tpl)
        };
        if let Err(e) = paused {
            tracing::warn!(error = %e, "cannot pause or resume newly assigned partitions");
        }
        self.assigned(incoming);
    }

    /// Notes that the consumer now also holds `partitions`.
    fn assigned(&self, partitions: impl IntoIterator<Item = Partition>) {
        let mut held = self.partitions();
        held.assigned.extend(partitions);
        self.metrics.rebalanced(&self.group, held.assigned.len());
        tracing::info!(group = %self.group, partitions = held.assigned.len(), "partitions assigned");
    }

    /// Applies the start position to the partitions of `tpl` the group has
    /// no committed offset for (it never read them, or a reset cleared
    /// them), and returns those partitions with their start offsets, to be
    /// committed at once.
    ///
    /// Partitions the group has read resume where it left off, whatever
    /// `START_FROM` says: an instance restarted or added with `latest` set
    /// must not skip what the group has not handled yet. Committing the start
    /// offset of a partition right away, even an empty one, is what makes
    /// "has read" hold from the first assignment on.
    fn start_new_partitions(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &mut TopicPartitionList,
    ) -> Option<TopicPartitionList> {
        if tpl.count() == 0 {
            return None;
        }
        let new: Vec<Partition> = match consumer.committed_offsets(tpl.clone(), LOOKUP_TIMEOUT) {
            Ok(committed) => committed
                .elements()
                .iter()
                .filter(|e| !matches!(e.offset(), Offset::Offset(_)))
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect(),
            Err(e) => {
                // Without a committed offset the consumer starts at the
                // beginning (`auto.offset.reset`): a replay, never a gap.
                tracing::error!(error = %e, "cannot read the committed offsets; not applying START_FROM");
                return None;
            }
        };
        if new.is_empty() {
            return None;
        }
        // A new group's `committed` position is the beginning.
        let start_from = match self.start_from {
            StartFrom::Committed => StartFrom::Earliest,
            other => other,
        };
        match start_from.offsets(consumer, &new) {
            Ok(Some(offsets)) => {
                for e in offsets.elements() {
                    if let Err(e) = tpl.set_partition_offset(e.topic(), e.partition(), e.offset()) {
                        tracing::error!(error = %e, "cannot set a start offset");
                    }
                }
                tracing::info!(group = %self.group, start_from = ?self.start_from, partitions = ?new, "start position applied");
                Some(offsets)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot look up the start offsets; starting from the beginning");
                None
            }
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        // Commit what was handled before the partitions go, so their new
        // owner starts right after it rather than at the last auto-commit.
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "commit before revocation failed"),
        }
        {
            let mut partitions = self.partitions();
            partitions.epoch += 1;
            let epoch = partitions.epoch;
            for e in tpl.elements() {
                let partition = (e.topic().to_owned(), e.partition());
                partitions.assigned.remove(&partition);
                partitions.reached_end.remove(&partition);
                partitions.revoked_at.insert(partition, epoch);
            }
        }
        // A paused partition stays paused in librdkafka after it is revoked;
        // whoever gets it next decides afresh.
        if let Err(e) = consumer.resume(tpl) {
            tracing::warn!(error = %e, "cannot resume revoked partitions");
        }
        let unassigned = match consumer.rebalance_protocol() {
            RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = unassigned {
            tracing::error!(error = %e, "cannot give up the revoked partitions");
        }
        tracing::info!(group = %self.group, revoked = tpl.count(), "partitions revoked");
    }
}

impl ClientContext for GroupContext {
    /// Logs librdkafka's errors, but the end of a partition, which is news
    /// for the consumer loop (it arrives there too), not an error.
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!(%reason, "end of partition");
            }
            other => tracing::error!("librdkafka: {other}: {reason}"),
        }
    }

    /// Feeds the lag metrics, for the partitions this consumer holds.
    fn stats(&self, statistics: Statistics) {
        let assigned = self.partitions().assigned.clone();
        let lags = statistics.topics.into_iter().flat_map(|(topic, t)| {
            let assigned = &assigned;
            t.partitions.into_values().filter_map(move |p| {
                if !assigned.contains(&(topic.clone(), p.partition)) {
                    return None;
                }
                // Behind the committed offset if the group committed for the
                // partition, else behind what this consumer read (a replica
                // reader never commits). The end is the last stable offset:
                // records of open transactions cannot be read yet.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let lag = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if end >= 0 && p.app_offset >= 0 {
                    end - p.app_offset
                } else {
                    return None;
                };
                Some((topic.clone(), p.partition, lag.max(0)))
            })
        });
        self.metrics.set_lag(&self.group, lags.collect::<Vec<_>>());
    }
}

impl ConsumerContext for GroupContext {
    /// The default rebalance, plus: commit before giving partitions away,
    /// note what was revoked, and apply the start position to partitions
    /// this process gets for the first time.
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                // What librdkafka asks for on a rebalance error: drop the
                // assignment; the group assigns again.
                tracing::error!(error = ?other, "rebalance failed");
                self.revoke(consumer, tpl);
            }
        }
    }
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
    );
    let consumer: GroupConsumer = base(config, client_id)
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
    let group = format!("{client_id}.replica");
    let context = GroupContext::new(
        group.clone(),
        Offsets::Forget,
        StartFrom::Earliest,
        metrics.clone(),
    );
    let consumer: GroupConsumer = base(config, client_id)
        .set("group.id", &group)
        // Committed records only, as every consumer (see `consumer`).
        .set("isolation.level", "read_committed")
        // The loop hears when it reaches the end of each partition: the
        // service is ready once it has, for all of them.
        .set("enable.partition.eof", "true")
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
            let (low, high) = consumer.fetch_watermarks(&topic, partition, LOOKUP_TIMEOUT)?;
            // An empty partition is at its end from the start.
            if high > low {
                ends.insert((topic.clone(), partition), high);
            }
        }
        consumer.assign(&assignment)?;
        let context = consumer.context();
        context.assigned((0..partitions).map(|partition| (topic.clone(), partition)));
        {
            let mut held = context.partitions();
            for partition in 0..partitions {
                let partition = (topic.clone(), partition);
                if !ends.contains_key(&partition) {
                    held.reached_end.insert(partition);
                }
            }
            held.ends_at_start = ends;
        }
        Ok(consumer)
    })
    .await
    .map_err(|source| Error::Task {
        task: "replica assignment",
        source,
    })?
}

/// The number of partitions of `topic`, waiting a little for a topic created
/// a moment ago to show up in the metadata. Blocks.
pub fn partition_count<C: ConsumerContext>(consumer: &impl Consumer<C>, topic: &str) -> Result<i32> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let found = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if found > 0 {
            return Ok(i32::try_from(found).unwrap_or(i32::MAX));
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::MissingTopic(topic.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
