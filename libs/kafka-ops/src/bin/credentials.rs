//! Compose's `credentials` step: makes the stack's credentials that are
//! missing, and hands each reader its own files, then exits (see
//! [`kafka_ops::credentials`]).
//!
//! Its argument is the directory the volumes are mounted under (default
//! `/credentials`). A secret's variable set in the environment (from `.env`)
//! replaces the one kept. `KAFKA_BOOTSTRAP_SERVERS`, `TOPIC_*` and
//! `KAFKA_REPLICATION_FACTOR` say where `kafka-access` makes the topics and
//! with how many replicas. No secret is logged.

use std::path::PathBuf;

use service_kit::config::KafkaConfig;

fn main() -> anyhow::Result<()> {
    let _telemetry = service_kit::telemetry::init("credentials")?;
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| PathBuf::from("/credentials"), PathBuf::from);
    let kafka = KafkaConfig::from_env()?;
    let made = kafka_ops::credentials::write_compose(&dir, &kafka, |var| std::env::var(var).ok())?;
    if made.is_empty() {
        tracing::info!("credentials in place, none made");
    } else {
        tracing::info!("credentials in place; made {}", made.join(", "));
    }
    Ok(())
}
