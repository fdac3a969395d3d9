//! The whole cluster at a glance, for the Kafka UI (`kafka-ui`): every
//! topic with the records it holds, which of them are dead-letter topics,
//! and every consumer group's committed offsets and lag, as plain values.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use service_kit::config::KafkaConfig;
use service_kit::kafka::outsider;
use shared_events::dead_letter_topic;

use crate::error::{Error, Result};
use crate::groups::{PartitionOffsets, committed_offset};

/// How long the metadata, group list and committed-offset requests may
/// take: less than the page's refresh interval, so that an unreachable
/// broker shows as such before the next refresh.
const TIMEOUT: Duration = Duration::from_secs(5);

/// How many groups' committed offsets are asked for at once. librdkafka
/// asks for a group's offsets only through a client of that group, so each
/// group costs a client and a round trip to its coordinator: one after the
/// other, the hundreds of groups a broker the tests share collects take
/// longer than the page's refresh interval.
const GROUPS_AT_ONCE: usize = 16;

/// The client id, and the group of the client that reads the metadata; it
/// never joins that group nor commits, so the group never shows.
const CLIENT: &str = "kafka-ui";

/// Every topic (internal ones aside) and every consumer group that
/// committed offsets, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overview {
    pub topics: Vec<TopicSummary>,
    pub groups: Vec<GroupSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: usize,
    /// The records it holds now: over its partitions, the high watermark
    /// less the low one. Offsets, so in a compacted topic, or one written
    /// in transactions (each commit marker takes an offset), an upper bound.
    pub records: i64,
    /// Whether it is a dead-letter topic ([`is_dead_letter_topic`]): its
    /// records are records a consumer gave up on.
    pub dead_letter: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSummary {
    pub name: String,
    /// As the broker says: `Stable`, `Empty` (no members), `PreparingRebalance`…
    pub state: String,
    pub members: usize,
    /// The topics it committed offsets in, by name.
    pub topics: Vec<GroupTopic>,
}

/// Where a group stands in one topic, summed over the topic's partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupTopic {
    pub topic: String,
    /// The committed offsets of the partitions it committed in.
    pub committed: i64,
    /// The high watermarks of all partitions.
    pub end: i64,
    /// The records it has yet to read ([`PartitionOffsets::lag`]): a
    /// partition it never committed in counts whole.
    pub lag: i64,
}

/// Whether `topic` is named as a dead-letter topic (`<topic>.dlt`).
pub fn is_dead_letter_topic(topic: &str) -> bool {
    // The suffix the naming rule appends.
    let suffix = dead_letter_topic("");
    topic.len() > suffix.len() && topic.ends_with(&suffix)
}

/// The [`Overview`] of the cluster `config` names.
pub async fn overview(config: &KafkaConfig) -> Result<Overview> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || collect(&config))
        .await
        .map_err(|source| Error::Task("overview", source))?
}

/// [`overview`], blocking.
pub fn collect(config: &KafkaConfig) -> Result<Overview> {
    let client = outsider(config, CLIENT, CLIENT)?;
    let partitions = partitions(&client)?;
    let topics = partitions
        .iter()
        .map(|(name, partitions)| TopicSummary {
            name: name.clone(),
            partitions: partitions.len(),
            records: partitions.iter().map(|p| p.high - p.low).sum(),
            dead_letter: is_dead_letter_topic(name),
        })
        .collect();
    let list = client.fetch_group_list(None, TIMEOUT)?;
    let mut groups: Vec<GroupSummary> = list
        .groups()
        .iter()
        .map(|g| GroupSummary {
            name: g.name().to_owned(),
            state: g.state().to_owned(),
            members: g.members().len(),
            topics: Vec::new(),
        })
        .collect();
    fill_positions(config, &mut groups, &partitions)?;
    groups.retain(|g| !g.topics.is_empty());
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Overview { topics, groups })
}

/// Fills in [`group_topics`] for each of `groups`, [`GROUPS_AT_ONCE`] at a time.
fn fill_positions(
    config: &KafkaConfig,
    groups: &mut [GroupSummary],
    partitions: &BTreeMap<String, Vec<PartitionOffsets>>,
) -> Result<()> {
    let per_worker = groups.len().div_ceil(GROUPS_AT_ONCE).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = groups
            .chunks_mut(per_worker)
            .map(|chunk| {
                scope.spawn(|| {
                    chunk.iter_mut().try_for_each(|group| {
                        group.topics = group_topics(config, &group.name, partitions)?;
                        Ok::<_, Error>(())
                    })
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// Every partition of every topic but the internal ones (`__consumer_offsets`
/// and the like), with its watermarks and no committed offset, by topic.
fn partitions(client: &BaseConsumer) -> Result<BTreeMap<String, Vec<PartitionOffsets>>> {
    let metadata = client.fetch_metadata(None, TIMEOUT)?;
    // A topic with an error is being created or deleted: it shows once it is there.
    let topics: Vec<(&str, Vec<i32>)> = metadata
        .topics()
        .iter()
        .filter(|t| !t.name().starts_with("__") && t.error().is_none())
        .map(|t| (t.name(), t.partitions().iter().map(|p| p.id()).collect()))
        .collect();
    // The watermarks of all partitions in one request per broker and end,
    // not two per partition: a cluster the tests share has thousands. Asked
    // as offsets for times, where the oldest and the latest "time" are the
    // low and high watermarks.
    let ends = |at: Offset| -> Result<TopicPartitionList> {
        let mut query = TopicPartitionList::new();
        for (topic, partitions) in &topics {
            for partition in partitions {
                query.add_partition_offset(topic, *partition, at)?;
            }
        }
        Ok(client.offsets_for_times(query, TIMEOUT)?)
    };
    let (lows, highs) = (ends(Offset::Beginning)?, ends(Offset::End)?);
    let found = |list: &TopicPartitionList, topic: &str, partition: i32| {
        list.find_partition(topic, partition)
            .filter(|e| e.error().is_ok())
            .and_then(|e| e.offset().to_raw())
            .filter(|offset| *offset >= 0)
    };
    let mut watermarks = BTreeMap::new();
    for (topic, partitions) in &topics {
        let offsets: Option<Vec<PartitionOffsets>> = partitions
            .iter()
            .map(|&partition| {
                Some(PartitionOffsets {
                    partition,
                    committed: None,
                    low: found(&lows, topic, partition)?,
                    high: found(&highs, topic, partition)?,
                })
            })
            .collect();
        // A partition without a leader yet (a topic created a moment ago): the topic shows once it has one.
        if let Some(offsets) = offsets {
            watermarks.insert((*topic).to_owned(), offsets);
        }
    }
    Ok(watermarks)
}

/// Where `group` stands in each topic of `partitions` it committed in.
fn group_topics(
    config: &KafkaConfig,
    group: &str,
    partitions: &BTreeMap<String, Vec<PartitionOffsets>>,
) -> Result<Vec<GroupTopic>> {
    let mut query = TopicPartitionList::new();
    for (topic, partitions) in partitions {
        for p in partitions {
            query.add_partition(topic, p.partition);
        }
    }
    if query.count() == 0 {
        return Ok(Vec::new());
    }
    // One request for all partitions, as a client of the group.
    let committed = outsider(config, CLIENT, group)?.committed_offsets(query, TIMEOUT)?;
    let mut topics = Vec::new();
    for (topic, partitions) in partitions {
        let offsets: Vec<PartitionOffsets> = partitions
            .iter()
            .map(|p| PartitionOffsets {
                committed: committed_offset(&committed, topic, p.partition),
                ..p.clone()
            })
            .collect();
        if offsets.iter().any(|p| p.committed.is_some()) {
            topics.push(GroupTopic {
                topic: topic.clone(),
                committed: offsets.iter().filter_map(|p| p.committed).sum(),
                end: offsets.iter().map(|p| p.high).sum(),
                lag: offsets.iter().map(PartitionOffsets::lag).sum(),
            });
        }
    }
    Ok(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_topics_are_told_by_their_suffix() {
        assert!(is_dead_letter_topic(&dead_letter_topic("payments.notifications")));
        assert!(is_dead_letter_topic("orders.dlt"));
        assert!(!is_dead_letter_topic("payments.notifications"));
        assert!(!is_dead_letter_topic("orders.dlt.redrive"));
        assert!(!is_dead_letter_topic(".dlt"));
    }
}
