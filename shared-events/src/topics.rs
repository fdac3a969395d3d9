//! Topic names and settings, in one place.
//!
//! The two topics differ in what they keep:
//!
//! - **notifications** are messages: they matter for a while, then expire
//!   (time-based retention).
//! - **state** is a record of every payment: log-compacted, keyed by payment
//!   id, so Kafka keeps at least the latest event of each payment forever and a
//!   new consumer rebuilds every payment's state by reading from the beginning.
//!
//! Each has a **dead-letter topic**, `<topic>.dlt` ([`dead_letter_topic`]):
//! where a consumer puts a record it can never handle, so the record is kept
//! for a person to look at and redrive while the consumer moves on.

/// Which of the two topics an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Notifications,
    State,
}

/// Default name of the notifications topic.
pub const NOTIFICATIONS: &str = "payments.notifications";
/// Default name of the state topic.
pub const STATE: &str = "payments.state";
/// Partitions per topic: the most consumers of one group that can share the load.
pub const PARTITIONS: i32 = 3;
/// How long notifications are kept: 7 days.
pub const NOTIFICATION_RETENTION_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// How long dead letters are kept: 30 days, time for someone to look at them.
pub const DEAD_LETTER_RETENTION_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// The dead-letter topic of `topic`.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dlt")
}

/// The topic names in use. Tests give every run its own names; services read
/// them from the environment (`TOPIC_NOTIFICATIONS`, `TOPIC_STATE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub notifications: String,
    pub state: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            notifications: NOTIFICATIONS.to_owned(),
            state: STATE.to_owned(),
        }
    }
}

impl Topics {
    /// The topic for events of `kind`.
    pub fn name(&self, kind: TopicKind) -> &str {
        match kind {
            TopicKind::Notifications => &self.notifications,
            TopicKind::State => &self.state,
        }
    }

    /// What to create when the topics are missing: both topics and their
    /// dead-letter topics.
    pub fn specs(&self) -> Vec<TopicSpec> {
        let main = [
            TopicSpec {
                name: self.notifications.clone(),
                partitions: PARTITIONS,
                config: vec![
                    ("cleanup.policy", "delete".to_owned()),
                    ("retention.ms", NOTIFICATION_RETENTION_MS.to_string()),
                ],
            },
            TopicSpec {
                name: self.state.clone(),
                partitions: PARTITIONS,
                config: vec![
                    ("cleanup.policy", "compact".to_owned()),
                    // Compaction never removes the newest record of a key; it
                    // waits at least this long before removing older ones, so
                    // a consumer that is a little behind still sees every change.
                    ("min.compaction.lag.ms", "60000".to_owned()),
                ],
            },
        ];
        // Dead letters are never compacted, even those of the state topic:
        // each one is a separate failure to look at.
        let dead_letters = main.clone().map(|spec| TopicSpec {
            name: dead_letter_topic(&spec.name),
            partitions: spec.partitions,
            config: vec![
                ("cleanup.policy", "delete".to_owned()),
                ("retention.ms", DEAD_LETTER_RETENTION_MS.to_string()),
            ],
        });
        main.into_iter().chain(dead_letters).collect()
    }
}

/// A topic as it should be created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Topic-level configuration overrides.
    pub config: Vec<(&'static str, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_expire_and_state_is_compacted() {
        let specs = Topics::default().specs();
        let [notifications, state, notifications_dlt, state_dlt] = specs.as_slice() else {
            panic!("four topics: {specs:?}");
        };
        let policy = |spec: &TopicSpec| {
            spec.config
                .iter()
                .find(|(k, _)| *k == "cleanup.policy")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(notifications.name, NOTIFICATIONS);
        assert_eq!(policy(notifications).as_deref(), Some("delete"));
        assert_eq!(state.name, STATE);
        assert_eq!(policy(state).as_deref(), Some("compact"));
        assert_eq!(notifications_dlt.name, "payments.notifications.dlt");
        assert_eq!(state_dlt.name, "payments.state.dlt");
        assert_eq!(policy(state_dlt).as_deref(), Some("delete"));
        assert!(notifications.partitions >= 3 && state.partitions >= 3);
    }
}
