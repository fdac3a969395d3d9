//! The overview and the Kafka UI against a real broker (`testkit`'s: the
//! one in `KAFKA_BOOTSTRAP_SERVERS`, or a container). Each test makes
//! topics and a group of its own, and deletes them when it passes.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use kafka_ops::overview::{Overview, overview};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use service_kit::config::KafkaConfig;
use service_kit::kafka::{outsider, producer};
use shared_events::dead_letter_topic;
use tower::ServiceExt;

/// How long a condition may take to become true (a loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(60);

/// The broker the tests of this binary share (`testkit`: the one in
/// `KAFKA_BOOTSTRAP_SERVERS`, else a container).
async fn kafka() -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: testkit::kafka_bootstrap_servers().await,
        ..KafkaConfig::local()
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn admin(kafka: &KafkaConfig) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .create()
        .expect("admin client")
}

/// Waits until `check` gives a value, or panics naming `what`.
async fn eventually<T, Fut>(what: &str, mut check: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn get(kafka: &KafkaConfig, path: &str) -> (StatusCode, String) {
    let app = kafka_ops::ui::app(kafka.clone()).expect("app");
    let response = app
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("response");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}

#[tokio::test]
async fn the_overview_shows_records_dead_letters_and_lag() {
    let kafka = kafka().await;
    let topic = unique("kafka-ui-test");
    let dlt = dead_letter_topic(&topic);
    let group = unique("kafka-ui-test-group");
    let admin = admin(&kafka);
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // One partition each, so the committed offset is the group's position in the whole topic.
    let new_topics = [&topic, &dlt].map(|name| NewTopic::new(name, 1, TopicReplication::Fixed(1)));
    for created in admin
        .create_topics(&new_topics, &options)
        .await
        .expect("create topics")
    {
        created.expect("topic created");
    }

    let producer = producer(&kafka, "kafka-ui-test", Duration::from_secs(30)).expect("producer");
    for (to, count) in [(&topic, 3), (&dlt, 1)] {
        for i in 0..count {
            let payload = format!("record {i}");
            producer
                .send(
                    FutureRecord::to(to).key("k").payload(&payload),
                    Duration::from_secs(30),
                )
                .await
                .expect("produced");
        }
    }
    let committer = outsider(&kafka, "kafka-ui-test", &group).expect("consumer");
    let mut position = TopicPartitionList::new();
    position
        .add_partition_offset(&topic, 0, Offset::Offset(1))
        .expect("offset");
    // On a new broker the group coordinator (and its offsets topic) comes
    // up with the first group: until then a commit is refused with
    // NotCoordinator or CoordinatorLoadInProgress, so it is tried again.
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match committer.commit(&position, CommitMode::Sync) {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("commit refused, trying again: {e}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("committed within {PATIENCE:?}: {e}"),
            }
        }
    })
    .await
    .expect("commit task");

    // The broker lists a new topic and group a little after creating them.
    let seen: Overview = eventually("the overview shows the topics and the group", || async {
        let seen = overview(&kafka).await.expect("overview");
        let complete = [&topic, &dlt]
            .iter()
            .all(|t| seen.topics.iter().any(|s| &s.name == *t))
            && seen.groups.iter().any(|g| g.name == group);
        complete.then_some(seen)
    })
    .await;
    let summary = |name: &str| {
        seen.topics
            .iter()
            .find(|t| t.name == name)
            .expect("listed")
            .clone()
    };
    let (main, letters) = (summary(&topic), summary(&dlt));
    assert_eq!((main.partitions, main.records, main.dead_letter), (1, 3, false));
    assert_eq!(
        (letters.partitions, letters.records, letters.dead_letter),
        (1, 1, true)
    );
    assert!(
        seen.topics.iter().all(|t| !t.name.starts_with("__")),
        "no internal topics"
    );
    let ours = seen
        .groups
        .iter()
        .find(|g| g.name == group)
        .expect("group listed");
    assert_eq!(ours.members, 0);
    assert_eq!(ours.topics.len(), 1, "committed in one topic: {ours:?}");
    let position = &ours.topics[0];
    assert_eq!(
        (
            position.topic.as_str(),
            position.committed,
            position.end,
            position.lag
        ),
        (topic.as_str(), 1, 3, 2)
    );

    let (status, page) = get(&kafka, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains(&format!("<tr class=\"dead-letter\"><td>{dlt}</td>")),
        "{page}"
    );
    let (status, json) = get(&kafka, "/api/overview").await;
    assert_eq!(status, StatusCode::OK);
    assert!(json.contains(&format!("\"name\":\"{group}\"")), "{json}");
    assert_eq!(
        get(&kafka, "/health").await,
        (StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
    );

    for deleted in admin
        .delete_groups(&[&group], &options)
        .await
        .expect("delete group")
    {
        deleted.expect("group deleted");
    }
    for deleted in admin
        .delete_topics(&[&topic, &dlt], &options)
        .await
        .expect("delete topics")
    {
        deleted.expect("topic deleted");
    }
}

#[tokio::test]
async fn an_unreachable_broker_gives_503_not_a_panic() {
    // Nothing listens on port 1.
    let kafka = KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".to_owned(),
        ..KafkaConfig::local()
    };
    let (status, page) = get(&kafka, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        page.contains("The Kafka broker at 127.0.0.1:1 is unreachable"),
        "{page}"
    );
    let (status, json) = get(&kafka, "/api/overview").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json.contains("broker_unreachable"), "{json}");
    assert_eq!(get(&kafka, "/health").await.0, StatusCode::SERVICE_UNAVAILABLE);
}
