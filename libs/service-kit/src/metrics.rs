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
//! | `consumer_paused` | gauge | group, reason |
//!
//! `consumer_paused` is 1 while the group's consumer holds its partitions
//! paused for `reason`: a dependency its records wait for (`payments`,
//! `payments_credential`, `database`), or `in_flight_bound` (records in
//! flight at `CONSUMER_MAX_IN_FLIGHT`); 0 once that passed.
//!
//! Lag comes from librdkafka's statistics (every
//! `KAFKA_STATISTICS_INTERVAL_MS`): records in the partition after the
//! group's committed offset, for the partitions this instance holds. It is
//! what Kafka's `kafka-consumer-groups.sh --describe` shows for the group.
//!
//! Kept in a `prometheus-client` registry, and served in the OpenMetrics
//! text format (which Prometheus scrapes; counters appear with `_total`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    group: String,
    topic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    group: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    group: String,
    topic: String,
    partition: String,
}

/// A service's metrics. Cheap to clone; clones share the values.
#[derive(Debug, Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    lag: Family<PartitionLabels, Gauge>,
    assigned: Family<GroupLabels, Gauge>,
    rebalances: Family<GroupLabels, Counter>,
    handled: Family<TopicLabels, Counter>,
    retries: Family<TopicLabels, Counter>,
    dead_letters: Family<TopicLabels, Counter>,
    paused: Family<ReasonLabels, Gauge>,
    /// The lag series each group has now, to drop those of partitions it
    /// no longer holds.
    lag_series: Mutex<HashMap<String, Vec<PartitionLabels>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with(|_| {})
    }
}

impl Metrics {
    /// The shared series, and those a service registers with `extra` (its
    /// own, such as Payments' outbox figures).
    pub fn with(extra: impl FnOnce(&mut Registry)) -> Self {
        let mut registry = Registry::default();
        extra(&mut registry);
        let inner = Inner {
            lag: registered(
                &mut registry,
                "kafka_consumer_lag",
                "Records after the group's committed offset, per partition this instance holds",
            ),
            assigned: registered(
                &mut registry,
                "kafka_consumer_assigned_partitions",
                "Partitions this instance holds",
            ),
            rebalances: registered(
                &mut registry,
                "kafka_consumer_rebalances",
                "Partition assignments this instance received",
            ),
            handled: registered(
                &mut registry,
                "consumer_records_handled",
                "Records handled (dead letters not included)",
            ),
            retries: registered(
                &mut registry,
                "consumer_retries",
                "Handling attempts that failed and were retried",
            ),
            dead_letters: registered(
                &mut registry,
                "dead_letters",
                "Records moved to the topic's dead-letter topic",
            ),
            paused: registered(
                &mut registry,
                "consumer_paused",
                "1 while the consumer holds its partitions paused for the reason (a dependency that is down, or in_flight_bound)",
            ),
            lag_series: Mutex::default(),
            registry,
        };
        Self {
            inner: Arc::new(inner),
        }
    }
}

/// A new metric, registered in `registry` as `name` with `help`.
fn registered<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

fn topic_labels(group: &str, topic: &str) -> TopicLabels {
    TopicLabels {
        group: escaped(group),
        topic: escaped(topic),
    }
}

fn group_labels(group: &str) -> GroupLabels {
    GroupLabels {
        group: escaped(group),
    }
}

/// `value` escaped as a label value must be: `prometheus-client` writes
/// label values as they are, so a `"` in a group name would break the line.
fn escaped(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

impl Metrics {
    /// Replaces `group`'s lag figures with `lags` (topic, partition, lag):
    /// partitions it no longer holds disappear.
    pub fn set_lag(&self, group: &str, lags: impl IntoIterator<Item = (String, i32, i64)>) {
        let mut series = self
            .inner
            .lag_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now: Vec<PartitionLabels> = lags
            .into_iter()
            .map(|(topic, partition, lag)| {
                let labels = PartitionLabels {
                    group: escaped(group),
                    topic: escaped(&topic),
                    partition: partition.to_string(),
                };
                self.inner.lag.get_or_create(&labels).set(lag);
                labels
            })
            .collect();
        for gone in series
            .get(group)
            .into_iter()
            .flatten()
            .filter(|labels| !now.contains(labels))
        {
            self.inner.lag.remove(gone);
        }
        series.insert(group.to_owned(), now);
    }

    /// After a rebalance: `group` now holds `partitions` partitions.
    pub fn rebalanced(&self, group: &str, partitions: usize) {
        let labels = group_labels(group);
        self.inner
            .assigned
            .get_or_create(&labels)
            .set(i64::try_from(partitions).unwrap_or(i64::MAX));
        self.inner.rebalances.get_or_create(&labels).inc();
    }

    pub fn handled(&self, group: &str, topic: &str) {
        self.inner
            .handled
            .get_or_create(&topic_labels(group, topic))
            .inc();
    }

    pub fn retried(&self, group: &str, topic: &str) {
        self.inner
            .retries
            .get_or_create(&topic_labels(group, topic))
            .inc();
    }

    pub fn dead_lettered(&self, group: &str, topic: &str) {
        self.inner
            .dead_letters
            .get_or_create(&topic_labels(group, topic))
            .inc();
    }

    /// Whether `group`'s consumer is paused for `reason`.
    pub fn paused(&self, group: &str, reason: &str, paused: bool) {
        self.inner
            .paused
            .get_or_create(&ReasonLabels {
                group: escaped(group),
                reason: escaped(reason),
            })
            .set(i64::from(paused));
    }

    /// The OpenMetrics text exposition of every value.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

/// `GET /metrics`.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route("/metrics", get(render)).with_state(metrics)
}

#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "OpenMetrics text: consumer lag per partition, assigned partitions, rebalances, records handled, retries, dead letters, paused consumers",
         body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    ),
)]
async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
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

    /// Group `g`'s lag on partition `partition` of topic `t`.
    fn lag(exposition: &str, partition: i32) -> Option<i64> {
        let labels = format!(r#"group="g",topic="t",partition="{partition}""#);
        sample(exposition, "kafka_consumer_lag", &labels)
    }

    #[test]
    fn renders_every_series_with_escaped_labels() {
        let metrics = Metrics::default();
        metrics.set_lag("g", [("t".to_owned(), 0, 5), ("t".to_owned(), 1, 0)]);
        metrics.rebalanced("g", 2);
        metrics.dead_lettered("g", "t");
        metrics.dead_lettered("g", "t");
        metrics.handled("we\"ird", "t");
        metrics.paused("g", "payments", true);
        let text = metrics.render();
        assert_eq!(lag(&text, 0), Some(5));
        assert_eq!(lag(&text, 1), Some(0));
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
        assert_eq!(
            sample(&text, "consumer_paused", r#"group="g",reason="payments""#),
            Some(1)
        );
        assert!(text.contains("# TYPE dead_letters counter"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn new_lag_figures_replace_the_old_ones() {
        let metrics = Metrics::default();
        metrics.set_lag("g", [("t".to_owned(), 0, 5)]);
        metrics.set_lag("g", [("t".to_owned(), 1, 3)]);
        let text = metrics.render();
        assert_eq!(lag(&text, 0), None);
        assert_eq!(lag(&text, 1), Some(3));
    }
}
