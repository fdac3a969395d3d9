//! Operating consumers: a group's offsets and lag, moving them, and the
//! dead-letter topics. The broker is `KAFKA_BOOTSTRAP_SERVERS` (default the
//! local one); the logic lives in the `kafka-ops` crate, which
//! the integration tests exercise.

use anyhow::{Context, Result};
use kafka_ops::dead_letters;
use kafka_ops::groups::{self, PartitionOffsets};
use service_kit::config::KafkaConfig;
use service_kit::config::StartFrom;
use service_kit::dead_letter::header;

fn kafka() -> Result<KafkaConfig> {
    KafkaConfig::from_env().context("reading the Kafka settings")
}

/// `topic`, or the notifications topic.
fn topic_or_default(kafka: &KafkaConfig, topic: Option<&str>) -> String {
    topic.map_or_else(|| kafka.topics.notifications.clone(), str::to_owned)
}

fn print_offsets(group: &str, topic: &str, offsets: &[PartitionOffsets]) {
    println!("group {group}, topic {topic}");
    println!(
        "{:>9} {:>10} {:>10} {:>10} {:>8}",
        "partition", "committed", "start", "end", "lag"
    );
    for p in offsets {
        let committed = p.committed.map_or_else(|| "-".to_owned(), |c| c.to_string());
        println!(
            "{:>9} {:>10} {:>10} {:>10} {:>8}",
            p.partition,
            committed,
            p.low,
            p.high,
            p.lag()
        );
    }
    println!(
        "total lag {}",
        offsets.iter().map(PartitionOffsets::lag).sum::<i64>()
    );
}

/// `cargo xtask offsets GROUP [TOPIC]`.
pub async fn offsets(group: &str, topic: Option<&str>) -> Result<()> {
    let kafka = kafka()?;
    let topic = topic_or_default(&kafka, topic);
    let (group_owned, topic_owned) = (group.to_owned(), topic.clone());
    let (offsets, members) = tokio::task::spawn_blocking(move || {
        Ok::<_, kafka_ops::Error>((
            groups::offsets(&kafka, &group_owned, &topic_owned)?,
            groups::members(&kafka, &group_owned)?,
        ))
    })
    .await??;
    print_offsets(group, &topic, &offsets);
    println!("active members {members}");
    Ok(())
}

/// `cargo xtask reset GROUP TOPIC TO`.
pub async fn reset(group: &str, topic: &str, to: &str) -> Result<()> {
    let to: StartFrom = to
        .parse()
        .map_err(|e| anyhow::anyhow!("cannot reset to `{to}`: {e}"))?;
    let kafka = kafka()?;
    let (group_owned, topic_owned) = (group.to_owned(), topic.to_owned());
    let offsets =
        tokio::task::spawn_blocking(move || groups::reset(&kafka, &group_owned, &topic_owned, to)).await??;
    println!("reset to {to:?}");
    print_offsets(group, topic, &offsets);
    Ok(())
}

/// `cargo xtask dlt list TOPIC`.
pub async fn dlt_list(topic: &str) -> Result<()> {
    let letters = dead_letters::list(&kafka()?, topic).await?;
    for letter in &letters {
        let h = |name| letter.header(name).unwrap_or("-");
        println!(
            "{}@{}  from {}[{}]@{}  group {}  {} after {} attempt(s), first failed {}\n    key {}  {} bytes  error: {}",
            letter.partition,
            letter.offset,
            h(header::SOURCE_TOPIC),
            h(header::SOURCE_PARTITION),
            h(header::SOURCE_OFFSET),
            h(header::GROUP),
            h(header::REASON),
            h(header::ATTEMPTS),
            h(header::FIRST_FAILURE),
            letter.key.as_deref().unwrap_or("-"),
            letter.value_bytes,
            h(header::ERROR),
        );
    }
    println!(
        "{} dead letter(s) in {}",
        letters.len(),
        shared_events::dead_letter_topic(topic)
    );
    Ok(())
}

/// `cargo xtask dlt redrive TOPIC`.
pub async fn dlt_redrive(topic: &str) -> Result<()> {
    let redriven = dead_letters::redrive(&kafka()?, topic).await?;
    println!("redrove {redriven} dead letter(s) to their source topic");
    Ok(())
}
