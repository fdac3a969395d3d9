//! Operating consumers: the dead-letter topics (a group's offsets are
//! Kafka's own `kafka-consumer-groups.sh`'s). The broker is
//! `KAFKA_BOOTSTRAP_SERVERS` (default the local one); the logic lives in
//! the `kafka-ops` crate, which the integration tests exercise.

use anyhow::{Context, Result};
use kafka_ops::dead_letters;
use service_kit::config::KafkaConfig;
use service_kit::dead_letter::header;

fn kafka() -> Result<KafkaConfig> {
    KafkaConfig::from_env().context("reading the Kafka settings")
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
