//! What a service's consumers are doing, in the Prometheus text format at
//! `GET /metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kafka_consumer_lag` | gauge | group, topic, partition |
//! | `kafka_consumer_assigned_partitions` | gauge | group |
//! | `kafka_consumer_rebalances_total` | counter | group |
//! | `consumer_records_handled_total` | counter | group, topic |
//! | `consumer_retries_total` | counter | group, topic |
//! | `dead_letters_total` | counter | group, topic |
//!
//! Lag comes from librdkafka's statistics (every
//! `KAFKA_STATISTICS_INTERVAL_MS`): records in the partition after the
//! group's committed offset, for the partitions this instance holds. It is
//! what `cargo xtask offsets` shows for the whole group.
//!
//! Written by hand rather than with a metrics crate: six series do not need
//! a registry, and the format is a few lines of text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// A service's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Values>>,
}

type GroupTopic = (String, String);

#[derive(Debug, Default)]
struct Values {
    /// (group, topic, partition) → lag.
    lag: BTreeMap<(String, String, i32), i64>,
    assigned: BTreeMap<String, usize>,
    rebalances: BTreeMap<String, u64>,
    handled: BTreeMap<GroupTopic, u64>,
    retries: BTreeMap<GroupTopic, u64>,
    dead_letters: BTreeMap<GroupTopic, u64>,
}

impl Metrics {
    fn values(&self) -> MutexGuard<'_, Values> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Replaces `group`'s lag figures with `lags` (topic, partition, lag):
    /// partitions it no longer holds disappear.
    pub fn set_lag(&self, group: &str, lags: impl IntoIterator<Item = (String, i32, i64)>) {
        let mut values = self.values();
        values.lag.retain(|(g, _, _), _| g != group);
        for (topic, partition, lag) in lags {
            values.lag.insert((group.to_owned(), topic, partition), lag);
        }
    }

    /// After a rebalance: `group` now holds `partitions` partitions.
    pub fn rebalanced(&self, group: &str, partitions: usize) {
        let mut values = self.values();
        values.assigned.insert(group.to_owned(), partitions);
        *values.rebalances.entry(group.to_owned()).or_default() += 1;
    }

    pub fn handled(&self, group: &str, topic: &str) {
        *self
            .values()
            .handled
            .entry((group.to_owned(), topic.to_owned()))
            .or_default() += 1;
    }

    pub fn retried(&self, group: &str, topic: &str) {
        *self
            .values()
            .retries
            .entry((group.to_owned(), topic.to_owned()))
            .or_default() += 1;
    }

    pub fn dead_lettered(&self, group: &str, topic: &str) {
        *self
            .values()
            .dead_letters
            .entry((group.to_owned(), topic.to_owned()))
            .or_default() += 1;
    }

    /// The Prometheus text exposition of every value.
    pub fn render(&self) -> String {
        let values = self.values();
        let mut out = String::new();
        family(
            &mut out,
            "kafka_consumer_lag",
            "gauge",
            "Records after the group's committed offset, per partition this instance holds.",
            values.lag.iter().map(|((group, topic, partition), lag)| {
                (
                    labels(&[
                        ("group", group),
                        ("topic", topic),
                        ("partition", &partition.to_string()),
                    ]),
                    *lag,
                )
            }),
        );
        family(
            &mut out,
            "kafka_consumer_assigned_partitions",
            "gauge",
            "Partitions this instance holds.",
            values
                .assigned
                .iter()
                .map(|(group, n)| (labels(&[("group", group)]), i64::try_from(*n).unwrap_or(i64::MAX))),
        );
        for (name, kind, help, map) in [
            (
                "consumer_records_handled_total",
                "counter",
                "Records handled (dead letters not included).",
                &values.handled,
            ),
            (
                "consumer_retries_total",
                "counter",
                "Handling attempts that failed and were retried.",
                &values.retries,
            ),
            (
                "dead_letters_total",
                "counter",
                "Records moved to the topic's dead-letter topic.",
                &values.dead_letters,
            ),
        ] {
            family(
                &mut out,
                name,
                kind,
                help,
                map.iter().map(|((group, topic), n)| {
                    (
                        labels(&[("group", group), ("topic", topic)]),
                        i64::try_from(*n).unwrap_or(i64::MAX),
                    )
                }),
            );
        }
        family(
            &mut out,
            "kafka_consumer_rebalances_total",
            "counter",
            "Partition assignments this instance received.",
            values
                .rebalances
                .iter()
                .map(|(group, n)| (labels(&[("group", group)]), i64::try_from(*n).unwrap_or(i64::MAX))),
        );
        out
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str, series: impl Iterator<Item = (String, i64)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in series {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// `a="x",b="y"`, with values escaped as the format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            let escaped = value
                .replace('\\', r"\\")
                .replace('"', "\\\"")
                .replace('\n', r"\n");
            format!("{name}=\"{escaped}\"")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// `GET /metrics`.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(render)).with_state(metrics)
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        metrics.render(),
    )
}

/// The value of the series `name{labels}` in a text exposition, for tests and
/// tools that read `/metrics`. `labels` as rendered, such as `group="g",topic="t"`.
pub fn sample(exposition: &str, name: &str, labels: &str) -> Option<i64> {
    let prefix = format!("{name}{{{labels}}} ");
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_series_with_escaped_labels() {
        let metrics = Metrics::default();
        metrics.set_lag("g", [("t".to_owned(), 0, 5), ("t".to_owned(), 1, 0)]);
        metrics.rebalanced("g", 2);
        metrics.dead_lettered("g", "t");
        metrics.dead_lettered("g", "t");
        metrics.handled("we\"ird", "t");
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                "kafka_consumer_lag",
                r#"group="g",topic="t",partition="0""#
            ),
            Some(5)
        );
        assert_eq!(
            sample(
                &text,
                "kafka_consumer_lag",
                r#"group="g",topic="t",partition="1""#
            ),
            Some(0)
        );
        assert_eq!(
            sample(&text, "kafka_consumer_assigned_partitions", r#"group="g""#),
            Some(2)
        );
        assert_eq!(
            sample(&text, "dead_letters_total", r#"group="g",topic="t""#),
            Some(2)
        );
        assert_eq!(
            sample(
                &text,
                "consumer_records_handled_total",
                r#"group="we\"ird",topic="t""#
            ),
            Some(1)
        );
        assert!(text.contains("# TYPE dead_letters_total counter"));
    }

    #[test]
    fn new_lag_figures_replace_the_old_ones() {
        let metrics = Metrics::default();
        metrics.set_lag("g", [("t".to_owned(), 0, 5)]);
        metrics.set_lag("g", [("t".to_owned(), 1, 3)]);
        let text = metrics.render();
        assert_eq!(
            sample(
                &text,
                "kafka_consumer_lag",
                r#"group="g",topic="t",partition="0""#
            ),
            None
        );
        assert_eq!(
            sample(
                &text,
                "kafka_consumer_lag",
                r#"group="g",topic="t",partition="1""#
            ),
            Some(3)
        );
    }
}
