//! The consumer's side of rebalances and statistics ([`GroupContext`],
//! shared with the consumer loop), and where a group starts the partitions
//! it never read ([`start_offsets`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

use super::progress::Progress;
use super::{LOOKUP_TIMEOUT, watermarks};
use crate::config::StartFrom;
use crate::error::Result;
use crate::metrics::Metrics;

/// The offset of each partition of `partitions` (topic, partition) to
/// start at from `start_from`, looked up on the broker; `None` for
/// [`StartFrom::Committed`].
/// Blocks.
///
/// Every offset is a number, to be committed. In particular the end of a
/// partition is looked up here rather than left to librdkafka's
/// `Offset::End`, which it resolves only once fetching starts: a record
/// published in between would be skipped.
pub fn start_offsets<C: ConsumerContext>(
    start_from: StartFrom,
    consumer: &BaseConsumer<C>,
    partitions: &[(String, i32)],
) -> Result<Option<TopicPartitionList>> {
    let mut tpl = TopicPartitionList::new();
    let end = |topic: &str, partition: i32| -> Result<Offset> {
        let (_, high) = watermarks(consumer, topic, partition)?;
        Ok(Offset::Offset(high))
    };
    match start_from {
        StartFrom::Committed => return Ok(None),
        StartFrom::Earliest => {
            for (topic, partition) in partitions {
                let (low, _) = watermarks(consumer, topic, *partition)?;
                tpl.add_partition_offset(topic, *partition, Offset::Offset(low))?;
            }
        }
        StartFrom::Latest => {
            for (topic, partition) in partitions {
                tpl.add_partition_offset(topic, *partition, end(topic, *partition)?)?;
            }
        }
        StartFrom::At(time) => {
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

pub(super) type Partition = (String, i32);

/// The `consumer_paused` reason of a loop at its bound of records in flight
/// ([`GroupContext::hold`]); the other reasons are dependencies.
pub const PAUSED_FULL: &str = "in_flight_bound";

/// The consumer's side of rebalances and statistics, shared with the
/// consumer loop (through [`Consumer::context`]).
#[derive(Debug)]
pub struct GroupContext {
    /// The group, as named in metrics and logs.
    pub group: String,
    pub offsets: Offsets,
    start_from: StartFrom,
    metrics: Metrics,
    /// How long a revocation waits for the handlers still working on
    /// records of the revoked partitions.
    drain_timeout: Duration,
    partitions: Mutex<Partitions>,
    /// Signalled whenever a handler finishes a record.
    finished: Condvar,
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
    /// Whether the loop holds everything paused for having records in
    /// flight at their bound.
    full: bool,
    /// Dependencies records are waiting for, with how many records wait for
    /// each: while any does, everything is held paused.
    outages: BTreeMap<&'static str, usize>,
    /// For each assigned partition the loop received records of: what it
    /// is not done with, and how far it may be committed.
    progress: HashMap<Partition, Progress>,
}

impl Partitions {
    fn held(&self) -> bool {
        self.full || !self.outages.is_empty()
    }

    fn revoked_since(&self, topic: &str, partition: i32, epoch: u64) -> bool {
        self.revoked_at
            .get(&(topic.to_owned(), partition))
            .is_some_and(|revoked| *revoked > epoch)
    }

    /// How many records of `revoked` handlers are working on.
    fn running(&self, revoked: &[Partition]) -> usize {
        revoked
            .iter()
            .filter_map(|partition| self.progress.get(partition))
            .map(|progress| progress.running)
            .sum()
    }
}

impl GroupContext {
    pub(super) fn new(
        group: String,
        offsets: Offsets,
        start_from: StartFrom,
        metrics: Metrics,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            group,
            offsets,
            start_from,
            metrics,
            drain_timeout,
            partitions: Mutex::default(),
            finished: Condvar::new(),
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
        self.partitions().revoked_since(topic, partition, epoch)
    }

    /// For a replica reader: the end offset each partition had when it
    /// started (`ends`, by partition); a partition without one was empty,
    /// and so is at its end already.
    pub(super) fn ends_at_start(
        &self,
        partitions: impl IntoIterator<Item = Partition>,
        ends: HashMap<Partition, i64>,
    ) {
        let mut held = self.partitions();
        for partition in partitions {
            if !ends.contains_key(&partition) {
                held.reached_end.insert(partition);
            }
        }
        held.ends_at_start = ends;
    }

    /// Notes that the loop received the record at `offset` of `partition`
    /// of `topic` at `epoch`.
    pub fn received(&self, topic: &str, partition: i32, offset: i64, epoch: u64) {
        let mut partitions = self.partitions();
        if partitions.revoked_since(topic, partition, epoch) {
            return;
        }
        partitions
            .progress
            .entry((topic.to_owned(), partition))
            .or_default()
            .received(offset);
    }

    /// Notes that a handler started on a record of `partition` of `topic`
    /// received at `epoch`.
    pub fn started(&self, topic: &str, partition: i32, epoch: u64) {
        let mut partitions = self.partitions();
        if partitions.revoked_since(topic, partition, epoch) {
            return;
        }
        if let Some(progress) = partitions.progress.get_mut(&(topic.to_owned(), partition)) {
            progress.running += 1;
        }
    }

    /// Notes that the handler of the record at `offset` of `partition` of
    /// `topic`, received at `epoch`, finished: `done` if the offset may move
    /// past it (handled or dead-lettered), not if it was left for later (the
    /// service stopped). Stores the offset the group may now commit: the
    /// lowest record not yet done.
    pub fn finished<C: Consumer<Self>>(
        &self,
        consumer: &C,
        (topic, partition, offset): (&str, i32, i64),
        epoch: u64,
        done: bool,
    ) {
        let mut partitions = self.partitions();
        if !partitions.revoked_since(topic, partition, epoch) {
            let key = (topic.to_owned(), partition);
            if let Some(progress) = partitions.progress.get_mut(&key) {
                progress.running = progress.running.saturating_sub(1);
                if done {
                    progress.done(offset);
                }
                self.advance(&mut partitions, consumer, &key);
            }
        }
        drop(partitions);
        self.finished.notify_all();
    }

    /// Notes that the consumer reported the end of `partition` of `topic`
    /// at `end` (see [`Progress::reached`]), at `epoch`.
    pub fn reached_end<C: Consumer<Self>>(
        &self,
        consumer: &C,
        topic: &str,
        partition: i32,
        end: Option<i64>,
        epoch: u64,
    ) {
        let mut partitions = self.partitions();
        if partitions.revoked_since(topic, partition, epoch) {
            return;
        }
        let key = (topic.to_owned(), partition);
        partitions.progress.entry(key.clone()).or_default().reached(end);
        self.advance(&mut partitions, consumer, &key);
    }

    /// Stores the offset `partition` may be committed at if it moved, and
    /// notes whether the loop reached its end.
    fn advance<C: Consumer<Self>>(&self, partitions: &mut Partitions, consumer: &C, partition: &Partition) {
        let Some(progress) = partitions.progress.get_mut(partition) else {
            return;
        };
        let at_end = progress.at_end();
        let watermark = progress.advance();
        if let Some(watermark) = watermark
            && self.offsets == Offsets::Commit
        {
            let mut tpl = TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&partition.0, partition.1, Offset::Offset(watermark))
                .and_then(|()| consumer.store_offsets(&tpl));
            if let Err(e) = stored {
                // Revoked meanwhile: its new owner resumes from the last
                // committed offset.
                tracing::warn!(error = %e, topic = partition.0, partition = partition.1, "cannot store offset");
            }
        }
        let passed_start_end = watermark.is_some_and(|watermark| {
            partitions
                .ends_at_start
                .get(partition)
                .is_some_and(|end| watermark >= *end)
        });
        if (at_end || passed_start_end) && partitions.assigned.contains(partition) {
            partitions.reached_end.insert(partition.clone());
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

    /// Whether every partition is held paused, for either reason
    /// ([`Self::hold`], [`Self::depends`]).
    pub fn held(&self) -> bool {
        self.partitions().held()
    }

    /// Pauses (`true`) or resumes every partition the consumer holds,
    /// including those a rebalance assigns while held, for having records
    /// in flight at their bound: the loop keeps polling, which keeps it in
    /// the group, without fetching records it could not take yet. A
    /// dependency that is down keeps them paused regardless.
    pub fn hold(&self, consumer: &GroupConsumer, full: bool) {
        self.set_hold(consumer, |partitions| {
            partitions.full = full;
            Some(PAUSED_FULL)
        });
    }

    /// Notes that a record started (`true`) or stopped (`false`) waiting
    /// for `dependency`, which is unavailable. While any record waits for a
    /// dependency every partition is paused: the records behind it would
    /// only fail the same way. The `consumer_paused` gauge, labelled with
    /// the dependency, shows it.
    pub fn depends(&self, consumer: &GroupConsumer, dependency: &'static str, waiting: bool) {
        self.set_hold(consumer, |partitions| {
            let count = partitions.outages.entry(dependency).or_default();
            if waiting {
                *count += 1;
                if *count > 1 {
                    return None;
                }
                tracing::warn!(group = %self.group, dependency, "dependency unavailable: consumer paused");
            } else {
                *count = count.saturating_sub(1);
                if *count > 0 {
                    return None;
                }
                partitions.outages.remove(dependency);
                tracing::info!(group = %self.group, dependency, "dependency back: consumer resumed");
            }
            Some(dependency)
        });
    }

    /// Applies `change` to the hold; pauses or resumes the assignment when
    /// that flips whether it is held, and sets the gauge of the reason
    /// `change` returns.
    fn set_hold(
        &self,
        consumer: &GroupConsumer,
        change: impl FnOnce(&mut Partitions) -> Option<&'static str>,
    ) {
        let mut partitions = self.partitions();
        let was = partitions.held();
        let Some(reason) = change(&mut partitions) else {
            return;
        };
        let paused_for = match reason {
            PAUSED_FULL => partitions.full,
            dependency => partitions.outages.contains_key(dependency),
        };
        self.metrics.paused(&self.group, reason, paused_for);
        let held = partitions.held();
        if held == was {
            return;
        }
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
    pub(super) fn assigned(&self, partitions: impl IntoIterator<Item = Partition>) {
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
        match start_offsets(start_from, consumer, &new) {
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

    /// Waits, up to the drain timeout, until no handler works on a record of
    /// `revoked`: what they finish is stored, and so committed before the
    /// partitions go, rather than handled again by their next owner.
    fn drain(&self, revoked: &[Partition]) {
        let wait = || {
            let deadline = Instant::now() + self.drain_timeout;
            let mut partitions = self.partitions();
            loop {
                let running = partitions.running(revoked);
                if running == 0 {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    tracing::warn!(
                        running,
                        "revoked partitions still being handled; their next owner handles those records again"
                    );
                    return;
                }
                partitions = self
                    .finished
                    .wait_timeout(partitions, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        };
        // On a single-threaded runtime the handlers could not run while the
        // rebalance waits for them: it would wait out the whole timeout.
        if matches!(
            tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread)
        ) {
            if self.partitions().running(revoked) > 0 {
                tracing::debug!(
                    "single-threaded runtime: not waiting for the handlers of revoked partitions"
                );
            }
            return;
        }
        wait();
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let revoked: Vec<Partition> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        self.drain(&revoked);
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
                partitions.progress.remove(&partition);
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

/// Runs `blocking` (a rebalance: committed offsets and watermarks looked
/// up, offsets committed synchronously, handlers waited for, each a wait on
/// the broker or on other tasks) so that it holds no async worker.
///
/// librdkafka serves a rebalance inside the consumer loop's poll, which runs
/// on one of the runtime's worker threads; blocking that thread for the
/// lookups' seconds would stall every task queued on it (the HTTP server's
/// included). On a multi-threaded runtime, `block_in_place` hands the
/// worker's tasks to a fresh worker first, so they go on while this thread
/// waits. A single-threaded runtime (some tests) has no other thread to
/// hand them to; a blocking thread (the consumer closing in
/// `spawn_blocking`) holds none.
fn off_the_async_workers<T>(blocking: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(blocking),
        _ => blocking(),
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
                // Behind the offset stored for the next commit (the lowest
                // record not yet handled) if there is one, else behind the
                // committed offset, else behind what this consumer read (a
                // replica reader never commits). The end is the last stable
                // offset: records of open transactions cannot be read yet.
                let end = if p.ls_offset >= 0 {
                    p.ls_offset
                } else {
                    p.hi_offset
                };
                let lag = if p.consumer_lag_stored >= 0 {
                    p.consumer_lag_stored
                } else if p.consumer_lag >= 0 {
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
        off_the_async_workers(|| match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => self.assign(consumer, tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => self.revoke(consumer, tpl),
            other => {
                // What librdkafka asks for on a rebalance error: drop the
                // assignment; the group assigns again.
                tracing::error!(error = ?other, "rebalance failed");
                self.revoke(consumer, tpl);
            }
        });
    }
}
