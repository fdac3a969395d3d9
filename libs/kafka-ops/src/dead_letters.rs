//! Dead letters, for people: [`list`] reads them back; [`redrive`]
//! publishes them to their source topic again, for instance after a fix, and
//! remembers (as consumer group `<topic>.dlt.redrive`, committed after each
//! record) how far it got, so a dead letter is redriven once. (Run one
//! redrive of a topic at a time: two at once would both start from the same
//! offset.)

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Offset, TopicPartitionList};
use service_kit::config::KafkaConfig;
use service_kit::dead_letter::{SEND_TIMEOUT, copy_to, header, original_headers};
use service_kit::kafka::{outsider, partition_count, producer, watermarks};
use shared_events::dead_letter_topic;

use crate::error::{Error, Result};

/// A dead letter as read back.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    /// Every header, the dead-letter ones included (`dlt.*`).
    pub headers: HashMap<String, String>,
    pub value_bytes: usize,
    pub record: OwnedMessage,
}

impl DeadLetter {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Reads every record of `topic` from the beginning, or (`from_committed`)
/// from where the consumer's group left off, up to the end each partition
/// had when the read began. Blocks.
fn read_to_end(consumer: &BaseConsumer, topic: &str, from_committed: bool) -> Result<Vec<OwnedMessage>> {
    // Per partition: the next offset to read, and the end to read up to.
    let mut next_and_end = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    let partitions = partition_count(consumer, topic)?;
    for partition in 0..partitions {
        assignment.add_partition(topic, partition);
    }
    let committed = if from_committed {
        consumer.committed_offsets(assignment.clone(), Duration::from_secs(10))?
    } else {
        TopicPartitionList::new()
    };
    for partition in 0..partitions {
        let (low, high) = watermarks(consumer, topic, partition)?;
        // Where the group left off, unless retention passed it.
        let start = match committed.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(at)) => at.max(low),
            _ => low,
        };
        next_and_end.insert(partition, (start, high));
        assignment.set_partition_offset(topic, partition, Offset::Offset(start))?;
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut records = Vec::new();
    while next_and_end.values().any(|(next, end)| next < end) {
        if std::time::Instant::now() > deadline {
            return Err(Error::ReadTimeout(topic.to_owned()));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(record)) => {
                if let Some((next, end)) = next_and_end.get_mut(&record.partition()) {
                    *next = record.offset() + 1;
                    if record.offset() < *end {
                        records.push(record.detach());
                    }
                }
            }
            Some(Err(e)) => return Err(e.into()),
            // Nothing more to hand over: a transactional topic ends with a
            // commit marker, an offset no record is delivered at, so how far
            // the consumer got is its position, which moves past markers.
            None => {
                for position in consumer.position()?.elements_for_topic(topic) {
                    if let (Some((next, _)), Offset::Offset(at)) =
                        (next_and_end.get_mut(&position.partition()), position.offset())
                    {
                        *next = (*next).max(at);
                    }
                }
            }
        }
    }
    Ok(records)
}

fn text(bytes: Option<&[u8]>) -> String {
    String::from_utf8_lossy(bytes.unwrap_or_default()).into_owned()
}

fn dead_letter(record: OwnedMessage) -> DeadLetter {
    let headers = record
        .headers()
        .map(|h| h.iter().map(|h| (h.key.to_owned(), text(h.value))).collect())
        .unwrap_or_default();
    DeadLetter {
        partition: record.partition(),
        offset: record.offset(),
        key: record.key().map(|k| text(Some(k))),
        headers,
        value_bytes: record.payload().map_or(0, <[u8]>::len),
        record,
    }
}

/// Runs a blocking Kafka call off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| Error::Task("dead-letter", source))?
}

/// Every record `topic` holds now, from its first, in offset order per
/// partition: read as an outsider (assigned, never a group member), the
/// way an auditor counts what was published.
pub async fn read_topic(config: &KafkaConfig, topic: &str) -> Result<Vec<OwnedMessage>> {
    let consumer = outsider(config, "topic-reader", &format!("{topic}.reader"))?;
    let topic = topic.to_owned();
    blocking(move || read_to_end(&consumer, &topic, false)).await
}

/// Every dead letter of `topic` (the source topic, not `<topic>.dlt`).
pub async fn list(config: &KafkaConfig, topic: &str) -> Result<Vec<DeadLetter>> {
    let consumer = outsider(config, "dlt-tool", &format!("{}.list", dead_letter_topic(topic)))?;
    let dlt = dead_letter_topic(topic);
    let records = blocking(move || read_to_end(&consumer, &dlt, false)).await?;
    Ok(records.into_iter().map(dead_letter).collect())
}

/// Publishes the dead letters of `topic` not redriven before back to their
/// source topic, without the `dlt.*` headers, and returns how many.
///
/// A redriven record that fails again becomes a new dead letter.
pub async fn redrive(config: &KafkaConfig, topic: &str) -> Result<usize> {
    let dlt = dead_letter_topic(topic);
    let consumer = outsider(config, "dlt-tool", &format!("{dlt}.redrive"))?;
    // From where the last redrive stopped; the beginning the first time.
    let (consumer, records) = blocking({
        let dlt = dlt.clone();
        move || {
            let records = read_to_end(&consumer, &dlt, true)?;
            Ok((consumer, records))
        }
    })
    .await?;
    let producer = producer(config, "dlt-tool", SEND_TIMEOUT)?;
    let mut next: HashMap<i32, i64> = HashMap::new();
    for record in &records {
        let mut done = TopicPartitionList::new();
        done.add_partition_offset(&dlt, record.partition(), Offset::Offset(record.offset() + 1))?;
        let source = record
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == header::SOURCE_TOPIC)
                    .map(|h| text(h.value))
            })
            .unwrap_or_else(|| topic.to_owned());
        let headers = original_headers(record, |key| !key.starts_with(header::PREFIX));
        producer
            .send(copy_to(&source, record, headers), SEND_TIMEOUT)
            .await
            .map_err(|(e, _)| Error::Kafka(e))?;
        // Remembered as soon as the broker has the copy (without waiting:
        // the synchronous commit below confirms the last ones), so a redrive
        // that fails half-way resumes after what it already published.
        consumer.commit(&done, CommitMode::Async)?;
        next.insert(record.partition(), record.offset() + 1);
    }
    let mut done = TopicPartitionList::new();
    for (partition, offset) in next {
        done.add_partition_offset(&dlt, partition, Offset::Offset(offset))?;
    }
    if done.count() > 0 {
        // The consumer only ever assigned partitions, so this commits as a
        // group with no members: allowed, and where the next redrive starts.
        blocking(move || Ok(consumer.commit(&done, CommitMode::Sync)?)).await?;
    }
    Ok(records.len())
}
