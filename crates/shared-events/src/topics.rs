//! Topic names and settings, in one place.
//!
//! The two topics differ in what they keep:
//!
//! - **notifications** are messages: they matter for a while, then expire
//!   (time-based retention).
//! - **state** is a record of every payment: log-compacted, keyed by payment
//!   id, so Kafka keeps at least the latest event of each payment forever and a
//!   new consumer rebuilds every payment's state by reading from the beginning.

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

    /// What to create when the topics are missing.
    pub fn specs(&self) -> [TopicSpec; 2] {
        [
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
        ]
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
        let [notifications, state] = Topics::default().specs();
        let policy = |spec: &TopicSpec| {
            spec.config
                .iter()
                .find(|(k, _)| *k == "cleanup.policy")
                .map(|(_, v)| v.clone())
        };
        assert_eq!(notifications.name, NOTIFICATIONS);
        assert_eq!(policy(&notifications).as_deref(), Some("delete"));
        assert_eq!(state.name, STATE);
        assert_eq!(policy(&state).as_deref(), Some("compact"));
        assert!(notifications.partitions >= 3 && state.partitions >= 3);
    }
}
