//! A consumer group's offsets, seen and moved from outside the group: what
//! `cargo xtask offsets` and `cargo xtask reset` do.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use service_kit::config::{KafkaConfig, StartFrom};
use service_kit::kafka::{outsider, partition_count, start_offsets, watermarks};

use crate::error::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where a group stands in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: i32,
    /// The next offset the group will read; `None` if it never committed.
    pub committed: Option<i64>,
    /// The oldest offset the partition retains.
    pub low: i64,
    /// The offset the next record published to the partition will get.
    pub high: i64,
}

impl PartitionOffsets {
    /// Where the group reads next: its committed offset, or the oldest
    /// retained one if it never committed or retention passed it.
    pub fn next(&self) -> i64 {
        self.committed.unwrap_or(self.low).max(self.low)
    }

    /// Records the group has yet to read (all retained ones if it never committed).
    pub fn lag(&self) -> i64 {
        self.high - self.next()
    }
}

/// The group's committed offsets and the partitions' ends. Blocks.
pub fn offsets(config: &KafkaConfig, group: &str, topic: &str) -> Result<Vec<PartitionOffsets>> {
    partition_offsets(&outsider(config, "offsets-tool", group)?, topic)
}

/// [`offsets`] for the group of `consumer`. Blocks.
pub(crate) fn partition_offsets(consumer: &BaseConsumer, topic: &str) -> Result<Vec<PartitionOffsets>> {
    let partitions = partition_count(consumer, topic)?;
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(query, TIMEOUT)?;
    (0..partitions)
        .map(|partition| {
            let (low, high) = watermarks(consumer, topic, partition)?;
            Ok(PartitionOffsets {
                partition,
                committed: committed_offset(&committed, topic, partition),
                low,
                high,
            })
        })
        .collect()
}

/// The committed offset of `partition` of `topic` in an answer to
/// [`Consumer::committed_offsets`]; `None` where the group never committed.
pub(crate) fn committed_offset(committed: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    committed
        .find_partition(topic, partition)
        .and_then(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
}

/// How many members the group has now. Blocks.
pub fn members(config: &KafkaConfig, group: &str) -> Result<usize> {
    let consumer = outsider(config, "offsets-tool", group)?;
    let list = consumer.fetch_group_list(Some(group), TIMEOUT)?;
    Ok(list.groups().iter().map(|g| g.members().len()).sum())
}

/// Moves the group's committed offsets for `topic` to `to`, and returns
/// where it now stands. Refused while the group has members: they would
/// overwrite the new offsets with their next commit. Blocks.
pub fn reset(config: &KafkaConfig, group: &str, topic: &str, to: StartFrom) -> Result<Vec<PartitionOffsets>> {
    let active = members(config, group)?;
    if active > 0 {
        return Err(Error::GroupActive {
            group: group.to_owned(),
            members: active,
        });
    }
    let consumer = outsider(config, "offsets-tool", group)?;
    let partitions: Vec<(String, i32)> = (0..partition_count(&consumer, topic)?)
        .map(|p| (topic.to_owned(), p))
        .collect();
    let Some(targets) = start_offsets(to, &consumer, &partitions)? else {
        // "Committed" is where it is already.
        return offsets(config, group, topic);
    };
    consumer.commit(&targets, CommitMode::Sync)?;
    offsets(config, group, topic)
}
