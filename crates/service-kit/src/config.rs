//! Typed configuration from the environment.
//!
//! Every service reads its settings once, at start, through [`var`], so a
//! typo in a value stops the service with a message naming the variable
//! instead of surfacing later. Every default runs the demo locally.

use std::env::VarError;
use std::str::FromStr;
use std::time::Duration;

use shared_events::Topics;

use crate::error::{Error, Result};

/// Reads `name` and parses it, or returns `default` when it is unset or empty.
pub fn var<T>(name: &'static str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    parse(name, std::env::var(name), default)
}

fn parse<T>(name: &'static str, raw: Result<String, VarError>, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match raw {
        Ok(value) if !value.trim().is_empty() => value.trim().parse().map_err(|e: T::Err| Error::Config {
            var: name,
            value,
            reason: e.to_string(),
        }),
        Ok(_) | Err(VarError::NotPresent) => Ok(default),
        Err(VarError::NotUnicode(value)) => Err(Error::Config {
            var: name,
            value: value.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".to_owned(),
        }),
    }
}

/// Reads a duration given in milliseconds.
pub fn millis(name: &'static str, default: Duration) -> Result<Duration> {
    let default_ms = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    var(name, default_ms).map(Duration::from_millis)
}

/// How to reach Kafka and which topics to use. The same for every service.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `KAFKA_BOOTSTRAP_SERVERS`: comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `TOPIC_NOTIFICATIONS` and `TOPIC_STATE`.
    pub topics: Topics,
    /// `KAFKA_REPLICATION_FACTOR`: replicas of each topic created at startup
    /// (1 for a single local broker; 3 in a real cluster).
    pub replication_factor: i32,
    /// `KAFKA_COMMIT_INTERVAL_MS`: how often consumers commit the offsets of
    /// handled records in the background (on shutdown they commit at once).
    /// Default 5 s. A crash re-delivers at most this much.
    pub commit_interval: Duration,
}

impl KafkaConfig {
    /// Defaults: a broker on `127.0.0.1:9092` and the standard topic names.
    pub fn local() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            topics: Topics::default(),
            replication_factor: 1,
            commit_interval: Duration::from_secs(5),
        }
    }

    /// Reads the settings above, defaulting to [`KafkaConfig::local`].
    pub fn from_env() -> Result<Self> {
        let local = Self::local();
        Ok(Self {
            bootstrap_servers: var("KAFKA_BOOTSTRAP_SERVERS", local.bootstrap_servers)?,
            topics: Topics {
                notifications: var("TOPIC_NOTIFICATIONS", local.topics.notifications)?,
                state: var("TOPIC_STATE", local.topics.state)?,
            },
            replication_factor: var("KAFKA_REPLICATION_FACTOR", local.replication_factor)?,
            commit_interval: millis("KAFKA_COMMIT_INTERVAL_MS", local.commit_interval)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_or_empty_uses_the_default() {
        assert_eq!(parse("PORT", Err(VarError::NotPresent), 7u16).ok(), Some(7));
        assert_eq!(parse("PORT", Ok(" ".to_owned()), 7u16).ok(), Some(7));
        assert_eq!(parse("PORT", Ok(" 80 ".to_owned()), 7u16).ok(), Some(80));
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let err = parse("PORT", Ok("eighty".to_owned()), 80u16).expect_err("not a number");
        let text = err.to_string();
        assert!(text.contains("PORT") && text.contains("eighty"), "{text}");
    }

    #[test]
    fn unset_variables_give_the_local_defaults() {
        assert_eq!(
            millis("SERVICE_KIT_TEST_SURELY_UNSET_MS", Duration::from_millis(1500)).ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(KafkaConfig::local().bootstrap_servers, "127.0.0.1:9092");
    }
}
