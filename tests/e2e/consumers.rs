//! Consumer groups: where a consumer starts, replay, order per key across a rebalance, and a dependency outage longer
//! than `max.poll.interval.ms`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use integration_tests::proxy::GatedProxy;
use integration_tests::*;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use serde_json::Value;
use service_kit::config::ConsumerConfig;
use service_kit::config::StartFrom;
use service_kit::consumer::{self, HandleError, Handler};
use service_kit::metrics::Metrics;

/// The payment ids in `app`'s (a ServiceA) audit log.
async fn audited(http: &reqwest::Client, app: &TestApp) -> Option<BTreeSet<String>> {
    let audit = get_json(http, app.url("/audit")).await?;
    Some(
        audit
            .as_array()?
            .iter()
            .filter_map(|e| Some(e["payment_id"].as_str()?.to_owned()))
            .collect(),
    )
}

/// Starts ServiceA in `group` from `start_from`, waits until its audit log
/// holds exactly `expected`, and stops it.
async fn audit_of(
    kafka: &service_kit::config::KafkaConfig,
    group: &str,
    start_from: StartFrom,
    expected: &[&[String]],
) {
    let http = integration_tests::http_client();
    let expected: BTreeSet<String> = expected.iter().flat_map(|ids| ids.iter().cloned()).collect();
    let consumer = ConsumerConfig {
        start_from,
        ..test_consumer()
    };
    let app = spawn_service_a_with(kafka, group, consumer).await;
    eventually(
        &format!("{group} from {start_from:?} audits exactly what it should"),
        || async { (audited(&http, &app).await? == expected).then_some(()) },
    )
    .await;
    app.stop().await;
}

/// Blocking Kafka calls, off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("tool task")
}

#[tokio::test]
async fn each_start_position_decides_what_a_consumer_reads() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let group = unique("service-a");

    let first = publish_notifications(&kafka, 3).await;
    // A group that never committed reads from the beginning.
    audit_of(&kafka, &group, StartFrom::Committed, &[&first]).await;

    // Everything after `since`, and nothing before, has a later timestamp.
    let since = Utc::now() + chrono::Duration::milliseconds(2);
    eventually("the clock passed `since`", || async {
        (Utc::now() > since).then_some(())
    })
    .await;
    let second = publish_notifications(&kafka, 3).await;

    // The group resumes where it left off, whatever START_FROM says: it
    // applies only where the group never committed.
    audit_of(&kafka, &group, StartFrom::Latest, &[&second]).await;
    audit_of(
        &kafka,
        &unique("service-a"),
        StartFrom::Earliest,
        &[&first, &second],
    )
    .await;

    // From now: nothing already there.
    let latest_group = unique("service-a");
    let latest = spawn_service_a_with(
        &kafka,
        &latest_group,
        ConsumerConfig {
            start_from: StartFrom::Latest,
            ..test_consumer()
        },
    )
    .await;
    let assigned = format!("group=\"{latest_group}\"");
    eventually("the latest-reader holds every partition", || async {
        (metric(&http, &latest, "kafka_consumer_assigned_partitions", &assigned).await? == 3).then_some(())
    })
    .await;
    let third = publish_notifications(&kafka, 2).await;
    let third_set: BTreeSet<String> = third.iter().cloned().collect();
    eventually("the latest-reader audits only what came after it", || async {
        (audited(&http, &latest).await? == third_set).then_some(())
    })
    .await;
    latest.stop().await;

    audit_of(
        &kafka,
        &unique("service-a"),
        StartFrom::At(since),
        &[&second, &third],
    )
    .await;
}

/// Waits until ServiceA `app` serves each payment of `expected` as given.
async fn serves(http: &reqwest::Client, app: &TestApp, expected: &HashMap<String, Value>) {
    for (id, payment) in expected {
        eventually("ServiceA serves the payment's final state", || async {
            (get_json(http, app.url(&format!("/payments/{id}"))).await.as_ref() == Some(payment))
                .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_fresh_service_a_serves_the_same_as_one_that_saw_everything_live() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let live = spawn_service_a(&kafka, &unique("service-a")).await;

    let mut ids = Vec::new();
    for amount in 1..=12 {
        let payment = create_payment(&http, &payments, &payment_request("c-replay", amount * 100)).await;
        ids.push(payment["payment_id"].as_str().expect("id").to_owned());
    }
    for id in ids.iter().step_by(3) {
        let response = http
            .post(payments.url(&format!("/payments/{id}/refunds")))
            .json(&serde_json::json!({"amount": 50, "reason": "damaged"}))
            .send()
            .await
            .expect("refund");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED, "refund {id}");
    }
    // Every payment at its final version in the live copy.
    let finals: HashMap<String, Value> = {
        let mut finals = HashMap::new();
        for id in &ids {
            let current = get_json(&http, payments.url(&format!("/payments/{id}")))
                .await
                .expect("payment");
            finals.insert(id.clone(), current);
        }
        finals
    };
    serves(&http, &live, &finals).await;
    let audit_len = ids.len() + ids.iter().step_by(3).count();
    let live_audit = eventually("the live ServiceA audited everything", || async {
        let audit = get_json(&http, live.url("/audit")).await?;
        (audit.as_array()?.len() == audit_len).then_some(audit)
    })
    .await;
    payments.stop().await;

    // A fresh instance with a fresh group, started after the fact with
    // Payments gone: it rebuilds from the topics alone.
    let replayed = spawn_service_a(&kafka, &unique("service-a")).await;
    serves(&http, &replayed, &finals).await;
    let replayed_audit = eventually("the fresh ServiceA audited everything", || async {
        let audit = get_json(&http, replayed.url("/audit")).await?;
        (audit.as_array()?.len() == audit_len).then_some(audit)
    })
    .await;
    // The same entries, apart from when and in which order each instance
    // recorded them (partitions interleave as they come).
    let comparable = |audit: &Value| -> Vec<Value> {
        let mut entries: Vec<Value> = audit
            .as_array()
            .expect("array")
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let fields = e.as_object_mut().expect("object");
                fields.remove("recorded_at");
                fields.remove("seq");
                fields.remove("cursor");
                e
            })
            .collect();
        entries.sort_by_key(|e| e["event_id"].as_str().map(str::to_owned));
        entries
    };
    assert_eq!(comparable(&live_audit), comparable(&replayed_audit));
    live.stop().await;
    replayed.stop().await;
}

/// ServiceA started on a state topic that holds thousands of payments says
/// it is ready only once its copy has all of them: before, it would answer
/// 404 for payments that exist.
#[tokio::test]
async fn service_a_is_ready_only_once_its_copy_has_caught_up() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let ready = |app: &TestApp| {
        let url = app.url("/ready");
        let http = http.clone();
        async move { http.get(url).send().await.ok().map(|r| r.status()) }
    };

    // An empty topic: nothing to catch up with.
    let first = spawn_service_a(&kafka, &unique("service-a")).await;
    eventually("ServiceA on an empty topic is ready", || async {
        (ready(&first).await? == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    first.stop().await;

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("linger.ms", "20")
        .create()
        .expect("producer");
    let mut ids = Vec::new();
    let mut deliveries = Vec::new();
    for _ in 0..5000 {
        let state = shared_events::testing::state();
        ids.push(state.payment_id.to_string());
        let envelope = shared_events::Envelope::new("/test", state, uuid::Uuid::now_v7(), None);
        let record = shared_events::encode(&envelope).expect("encodes");
        let future = producer
            .send_result(
                FutureRecord::to(&kafka.topics.state)
                    .key(&record.key)
                    .payload(&record.payload)
                    .headers(record.headers),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
        deliveries.push(future);
    }
    for delivery in deliveries {
        delivery
            .await
            .expect("delivered")
            .map_err(|(e, _)| e)
            .expect("acknowledged");
    }

    // And more keep coming while it starts: the end of a partition that
    // keeps being written to is never reported, and must not be waited for.
    let busy = service_kit::CancellationToken::new();
    let more = tokio::spawn({
        let (busy, kafka) = (busy.clone(), kafka.clone());
        async move {
            while !busy.is_cancelled() {
                let envelope = shared_events::Envelope::new(
                    "/test",
                    shared_events::testing::state(),
                    uuid::Uuid::now_v7(),
                    None,
                );
                produce_event(&kafka, &envelope).await;
            }
        }
    });
    let service_a = spawn_service_a(&kafka, &unique("service-a")).await;
    let starting = std::sync::atomic::AtomicUsize::new(0);
    eventually("ServiceA says it is ready", || async {
        let status = ready(&service_a).await?;
        if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            starting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        (status == reqwest::StatusCode::OK).then_some(())
    })
    .await;
    let starting = starting.into_inner();
    busy.cancel();
    more.await.expect("producer");
    let mut missing = 0;
    for id in &ids {
        let response = http
            .get(service_a.url(&format!("/payments/{id}")))
            .send()
            .await
            .expect("GET");
        if response.status() != reqwest::StatusCode::OK {
            missing += 1;
        }
    }
    eprintln!(
        "readiness: /ready answered 503 {starting} times, then 200 with {missing} of 5000 payments missing"
    );
    assert_eq!(missing, 0, "ready, yet missing payments");
    service_a.stop().await;
}

/// (key, sequence number, consumer) in the order handled.
type Handled = Arc<Mutex<Vec<(String, u32, &'static str)>>>;

/// Notes which consumer handled which (key, sequence number), slowly enough
/// for a rebalance to land in the middle.
#[derive(Debug, Clone)]
struct Recorder {
    name: &'static str,
    handled: Handled,
}

impl Handler for Recorder {
    async fn handle(&self, record: &OwnedMessage, _attempt: u32) -> Result<(), HandleError> {
        let key = String::from_utf8_lossy(record.key().unwrap_or_default()).into_owned();
        let seq: u32 = std::str::from_utf8(record.payload().unwrap_or_default())
            .map_err(HandleError::permanent)?
            .parse()
            .map_err(HandleError::permanent)?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        self.handled.lock().expect("lock").push((key, seq, self.name));
        Ok(())
    }
}

// Several threads: a rebalance waits for the records of the revoked
// partitions being handled, which run on the other threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_key_are_handled_in_order_and_once_across_a_rebalance() {
    use rdkafka::producer::FutureRecord;

    const KEYS: u32 = 30;
    const PER_KEY: u32 = 20;
    let broker = Broker::get().await;
    let mut kafka = kafka_config(&broker).await;
    // No background commit: only the commit at the revocation (ours, and
    // librdkafka's own with auto-commit on) saves the new owner from
    // handling again what the old one handled.
    kafka.commit_interval = Duration::from_secs(600);
    let topic = kafka.topics.notifications.clone();
    let group = unique("ordered");
    let handled = Arc::new(Mutex::new(Vec::new()));
    let stop = service_kit::CancellationToken::new();
    let start = |name: &'static str| {
        let consumer = service_kit::kafka::consumer(
            &kafka,
            &test_consumer(),
            name,
            &group,
            &[&topic],
            &Metrics::default(),
        )
        .expect("consumer");
        let recorder = Recorder {
            name,
            handled: Arc::clone(&handled),
        };
        tokio::spawn(consumer::run(
            consumer,
            recorder,
            test_consumer(),
            None,
            stop.clone(),
        ))
    };
    let producer = test_producer(&kafka);
    let publish = |range: std::ops::Range<u32>| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            // Interleaved: every key's n-th event before any key's (n+1)-th.
            for seq in range {
                for key in 0..KEYS {
                    let (key, value) = (format!("key-{key}"), seq.to_string());
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&value),
                            Duration::from_secs(10),
                        )
                        .await
                        .map_err(|(e, _)| e)
                        .expect("sent");
                }
            }
        }
    };

    let first = start("first");
    publish(0..PER_KEY / 2).await;
    eventually("the first consumer is handling", || async {
        (handled.lock().expect("lock").len() > 20).then_some(())
    })
    .await;
    // A second member joins: the group rebalances mid-stream.
    let second = start("second");
    publish(PER_KEY / 2..PER_KEY).await;
    let total = usize::try_from(KEYS * PER_KEY).expect("small");
    eventually("every event handled", || async {
        (handled.lock().expect("lock").len() >= total).then_some(())
    })
    .await;
    stop.cancel();
    first.await.expect("join").expect("first consumer");
    second.await.expect("join").expect("second consumer");

    let handled = handled.lock().expect("lock").clone();
    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (key, seq, _) in &handled {
        per_key.entry(key.clone()).or_default().push(*seq);
    }
    for (key, seqs) in &per_key {
        assert_eq!(
            seqs,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "{key}: in order, each once"
        );
    }
    assert_eq!(per_key.len(), usize::try_from(KEYS).expect("small"));
    let by_second = handled.iter().filter(|(_, _, name)| *name == "second").count();
    assert!(by_second > 0, "the second member took partitions over");
    println!(
        "order test: {} events of {KEYS} keys, {} handled by the member that joined, {} handled twice",
        handled.len(),
        by_second,
        handled.len() - total
    );
}

#[tokio::test]
async fn service_b_waits_out_a_payments_outage_in_its_group_and_catches_up() {
    let broker = Broker::get().await;
    let mut kafka = kafka_config(&broker).await;
    kafka.commit_interval = Duration::from_millis(500);
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;
    let records = TestDatabase::empty().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let gate = GatedProxy::start(payments.addr).await;
    let group = unique("service-b");
    // Dropped from the group after 6 s without a poll, unless the loop
    // keeps polling while it retries; never dead-letter for this test.
    let max_poll_interval = Duration::from_secs(6);
    let consumer = ConsumerConfig {
        max_poll_interval,
        max_attempts: 0,
        ..test_consumer()
    };
    let service_b = spawn_service_b_with(&kafka, &group, &gate.url(), &records.url, consumer).await;
    let in_group = format!("group=\"{group}\"");
    eventually("service-b holds every partition", || async {
        (metric(&http, &service_b, "kafka_consumer_assigned_partitions", &in_group).await? == 3).then_some(())
    })
    .await;

    let outage = tokio::time::Instant::now();
    let mut ids = Vec::new();
    for amount in 1..=20 {
        let payment = create_payment(&http, &payments, &payment_request("c-outage", amount)).await;
        ids.push(payment["payment_id"].as_str().expect("id").to_owned());
    }
    eventually("service-b is retrying", || async {
        (gate.refused() >= 3).then_some(())
    })
    .await;
    eventually("the lag shows what waits", || async {
        (metric_sum(&http, &service_b, "kafka_consumer_lag", &in_group).await? > 0).then_some(())
    })
    .await;
    // The point of the test is time: the outage outlasts the poll interval
    // twice over.
    tokio::time::sleep_until(outage + 2 * max_poll_interval).await;
    gate.open();

    let pool = records.store.pool().clone();
    eventually("every payment recorded", || async {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_records")
            .fetch_one(&pool)
            .await
            .ok()?;
        (recorded == 20).then_some(())
    })
    .await;
    let twice: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_records WHERE notifications <> 1")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(twice, 0);
    for id in &ids {
        let record = get_json(&http, service_b.url(&format!("/payments/{id}")))
            .await
            .expect("recorded");
        assert_eq!(record["payment"]["payment_id"], id.as_str());
    }
    assert_eq!(
        metric(&http, &service_b, "kafka_consumer_rebalances_total", &in_group).await,
        Some(1),
        "never dropped from the group, never rejoined"
    );
    assert!(
        metric_sum(&http, &service_b, "consumer_retries_total", &in_group)
            .await
            .unwrap_or(0)
            > 0
    );
    assert_eq!(
        metric_sum(&http, &service_b, "dead_letters_total", &in_group).await,
        None
    );
    eventually("the lag is back to zero", || async {
        (metric_sum(&http, &service_b, "kafka_consumer_lag", &in_group).await? == 0).then_some(())
    })
    .await;
    service_b.stop().await;
    payments.stop().await;
}

#[tokio::test]
async fn a_notification_retried_too_often_is_dead_lettered_and_redriven_once_payments_is_back() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let http = integration_tests::http_client();
    let database = TestDatabase::create().await;
    let records = TestDatabase::empty().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    // ServiceB first calls a Payments that answers but knows none of the
    // payments (a store restored from an old backup, say): a 404 for a
    // fresh notification is the record's own trouble, retried up to the
    // budget. (Payments unreachable would pause ServiceB instead.)
    let forgetful_database = TestDatabase::create().await;
    let forgetful = spawn_payments_with(&kafka, &forgetful_database.url, false).await;
    let gate = GatedProxy::start(forgetful.addr).await;
    gate.open();
    let group = unique("service-b");
    let consumer = ConsumerConfig {
        max_attempts: 3,
        ..test_consumer()
    };
    let service_b = spawn_service_b_with(&kafka, &group, &gate.url(), &records.url, consumer).await;

    let mut ids = BTreeSet::new();
    for amount in [100, 200] {
        let payment = create_payment(&http, &payments, &payment_request("c-dlt", amount)).await;
        ids.insert(payment["payment_id"].as_str().expect("id").to_owned());
    }
    let topic = kafka.topics.notifications.clone();
    let letters = eventually("both notifications dead-lettered after 3 attempts", || async {
        let letters = kafka_ops::dead_letters::list(&kafka, &topic).await.ok()?;
        (letters.len() >= 2).then_some(letters)
    })
    .await;
    assert_eq!(letters.len(), 2);
    use service_kit::dead_letter::header;
    for letter in &letters {
        assert_eq!(letter.header(header::REASON), Some("exhausted"), "{letter:?}");
        assert_eq!(letter.header(header::ATTEMPTS), Some("3"));
        assert_eq!(letter.header(header::GROUP), Some(group.as_str()));
        assert!(
            ids.contains(letter.key.as_deref().expect("key")),
            "keyed by payment id"
        );
    }
    let in_group = format!("group=\"{group}\"");
    assert_eq!(
        metric_sum(&http, &service_b, "dead_letters_total", &in_group).await,
        Some(2)
    );

    // Fixed: redrive. Each dead letter goes back once, however often
    // redrive runs.
    gate.retarget(payments.addr);
    let redriven = kafka_ops::dead_letters::redrive(&kafka, &topic)
        .await
        .expect("redrive");
    assert_eq!(redriven, 2);
    assert_eq!(
        kafka_ops::dead_letters::redrive(&kafka, &topic)
            .await
            .expect("redrive"),
        0
    );
    for id in &ids {
        let record = eventually("service-b records the redriven notification", || {
            get_json(&http, service_b.url(&format!("/payments/{id}")))
        })
        .await;
        assert_eq!(record["notifications"], 1);
    }
    // On the source topic: the originals, then the redriven copies, which
    // carry the same event id and no dead-letter headers.
    let on_topic = read_records(&kafka, &topic, 4).await;
    let redriven: Vec<_> = on_topic
        .iter()
        .filter(|r| header(r, "ce_id").is_some())
        .filter(|r| {
            r.headers().is_some_and(|h| {
                use rdkafka::message::Headers;
                h.iter().all(|h| !h.key.starts_with(header::PREFIX))
            })
        })
        .collect();
    assert_eq!(redriven.len(), 4);
    let event_ids: BTreeSet<_> = on_topic.iter().filter_map(|r| header(r, "ce_id")).collect();
    assert_eq!(event_ids.len(), 2, "a redriven record is the same event");
    assert_eq!(
        kafka_ops::dead_letters::list(&kafka, &topic)
            .await
            .expect("list")
            .len(),
        2
    );
    service_b.stop().await;
    forgetful.stop().await;
    payments.stop().await;
}

#[tokio::test]
async fn partitions_paused_at_the_in_flight_bound_are_fetched_again_after_a_rebalance() {
    use rdkafka::producer::FutureRecord;

    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let topic = kafka.topics.notifications.clone();
    let group = unique("paused");
    let producer = test_producer(&kafka);
    let mut sent = BTreeSet::new();
    for partition in 0..3 {
        for seq in 0..10 {
            // A number, as the recorder of the second consumer reads it.
            let value = (partition * 100 + seq).to_string();
            producer
                .send(
                    FutureRecord::<str, str>::to(&topic)
                        .partition(partition)
                        .key("k")
                        .payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("sent");
            sent.insert(value);
        }
    }
    let metrics = Metrics::default();
    let first = service_kit::kafka::consumer(&kafka, &test_consumer(), "first", &group, &[&topic], &metrics)
        .expect("consumer");
    let context = Arc::clone(rdkafka::consumer::Consumer::context(&first));
    let mut seen = BTreeSet::new();
    let value = |r: &rdkafka::message::BorrowedMessage<'_>| {
        String::from_utf8_lossy(r.payload().unwrap_or_default()).into_owned()
    };
    // The first record (the consumer also tells when it reaches the end of
    // a partition).
    loop {
        match tokio::time::timeout(PATIENCE, first.recv())
            .await
            .expect("a record")
        {
            Ok(record) => {
                seen.insert(value(&record));
                break;
            }
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
            Err(e) => panic!("record: {e}"),
        }
    }

    // As the consumer loop does at its bound of records in flight:
    // everything paused, polling on.
    context.hold(&first, true);
    let epoch = context.epoch();
    let stop = service_kit::CancellationToken::new();
    let handled: Handled = Arc::default();
    let second = service_kit::kafka::consumer(
        &kafka,
        &test_consumer(),
        "second",
        &group,
        &[&topic],
        &Metrics::default(),
    )
    .expect("consumer");
    let recorder = Recorder {
        name: "second",
        handled: Arc::clone(&handled),
    };
    let second = tokio::spawn(consumer::run(
        second,
        recorder,
        test_consumer(),
        None,
        stop.clone(),
    ));
    // Poll until the rebalance took the partitions away...
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while context.epoch() == epoch {
        assert!(tokio::time::Instant::now() < deadline, "no rebalance");
        if let Ok(Ok(record)) = tokio::time::timeout(Duration::from_millis(50), first.recv()).await {
            seen.insert(value(&record));
        }
    }
    // ...and records in flight are done: the loop lets go of what it holds. (librdkafka
    // may have served the new assignment in the same poll, or not yet; the
    // partitions must be fetched again either way.)
    context.hold(&first, false);
    let all_seen = |seen: &BTreeSet<String>| {
        let by_second: BTreeSet<String> = handled
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, seq, _)| seq.to_string())
            .collect();
        sent.iter().all(|v| seen.contains(v) || by_second.contains(v))
    };
    while !all_seen(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "records left unread: first saw {seen:?}"
        );
        if let Ok(Ok(record)) = tokio::time::timeout(Duration::from_millis(50), first.recv()).await {
            seen.insert(value(&record));
        }
    }
    stop.cancel();
    second.await.expect("join").expect("second consumer");
}

/// Publishes `(key, value)` pairs, in order, to `partition` of `topic`;
/// returns their offsets.
async fn publish_to(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    partition: i32,
    records: &[(String, String)],
) -> Vec<i64> {
    use rdkafka::producer::FutureRecord;

    let mut offsets = Vec::new();
    for (key, value) in records {
        let delivery = producer
            .send(
                FutureRecord::to(topic)
                    .partition(partition)
                    .key(key)
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("sent");
        offsets.push(delivery.offset);
    }
    offsets
}

/// Fails every record of key `stuck` (transiently) until `released`;
/// records everything else as [`Recorder`] does.
#[derive(Debug, Clone)]
struct StuckKey {
    released: Arc<std::sync::atomic::AtomicBool>,
    recorder: Recorder,
}

impl Handler for StuckKey {
    async fn handle(&self, record: &OwnedMessage, attempt: u32) -> Result<(), HandleError> {
        if record.key() == Some(b"stuck".as_slice())
            && !self.released.load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(HandleError::transient(format!("stuck, attempt {attempt}")));
        }
        self.recorder.handle(record, attempt).await
    }
}

/// Members of one group on one topic, each with a [`StuckKey`] handler:
/// they share `released` and what they handled.
struct StuckKeyGroup<'a> {
    kafka: &'a service_kit::config::KafkaConfig,
    settings: ConsumerConfig,
    group: &'a str,
    topic: &'a str,
    released: Arc<std::sync::atomic::AtomicBool>,
    handled: Handled,
}

impl StuckKeyGroup<'_> {
    /// Starts member `name`, which runs until `stop` is cancelled.
    fn start(
        &self,
        name: &'static str,
        stop: service_kit::CancellationToken,
        metrics: &Metrics,
    ) -> tokio::task::JoinHandle<service_kit::Result<()>> {
        let consumer = service_kit::kafka::consumer(
            self.kafka,
            &self.settings,
            name,
            self.group,
            &[self.topic],
            metrics,
        )
        .expect("consumer");
        let handler = StuckKey {
            released: Arc::clone(&self.released),
            recorder: Recorder {
                name,
                handled: Arc::clone(&self.handled),
            },
        };
        tokio::spawn(consumer::run(
            consumer,
            handler,
            self.settings.clone(),
            None,
            stop,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_being_retried_holds_back_only_its_own_key_and_the_commit() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let topic = kafka.topics.notifications.clone();
    let group = unique("stuck");
    let producer = test_producer(&kafka);
    // One partition: a record handled before the stuck key, two of the
    // stuck key, then ten other keys behind them.
    let mut records = vec![("first".to_owned(), "0".to_owned())];
    records.extend((0..2).map(|seq| ("stuck".to_owned(), seq.to_string())));
    records.extend((0..10).map(|key| (format!("key-{key}"), "0".to_owned())));
    let offsets = publish_to(&producer, &topic, 0, &records).await;
    let stuck_at = offsets[1];

    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled: Handled = Arc::default();
    let members = StuckKeyGroup {
        kafka: &kafka,
        settings: ConsumerConfig {
            max_attempts: 0,
            ..test_consumer()
        },
        group: &group,
        topic: &topic,
        released: Arc::clone(&released),
        handled: Arc::clone(&handled),
    };
    let start = |name: &'static str| {
        let stop = service_kit::CancellationToken::new();
        (stop.clone(), members.start(name, stop, &Metrics::default()))
    };
    let keys_handled = |handled: &Handled| -> BTreeSet<String> {
        handled
            .lock()
            .expect("lock")
            .iter()
            .map(|(key, _, _)| key.clone())
            .collect()
    };

    let (stop, first) = start("first");
    eventually("every other key handled while `stuck` retries", || async {
        (keys_handled(&handled).len() == 11).then_some(())
    })
    .await;
    assert!(!keys_handled(&handled).contains("stuck"));
    // Stopped while `stuck` still fails: the group commits up to it, and
    // not past it, although all behind it were handled.
    stop.cancel();
    first.await.expect("join").expect("first consumer");
    use rdkafka::consumer::Consumer;
    let outsider = service_kit::kafka::outsider(&kafka, "test", &group).expect("client");
    let mut partition0 = rdkafka::TopicPartitionList::new();
    partition0.add_partition(&topic, 0);
    let committed = blocking(move || outsider.committed_offsets(partition0, Duration::from_secs(10)))
        .await
        .expect("committed offsets");
    assert_eq!(
        committed.find_partition(&topic, 0).map(|p| p.offset()),
        Some(rdkafka::Offset::Offset(stuck_at)),
        "committed up to the lowest record not handled"
    );

    // Restarted with the dependency back: the stuck key is handled, in
    // order, and nothing is missing (what came after it may come twice).
    released.store(true, std::sync::atomic::Ordering::SeqCst);
    let (stop, second) = start("second");
    eventually("the stuck key handled after the restart", || async {
        keys_handled(&handled).contains("stuck").then_some(())
    })
    .await;
    eventually("both records of the stuck key handled", || async {
        let stuck: Vec<u32> = handled
            .lock()
            .expect("lock")
            .iter()
            .filter(|(key, _, _)| key == "stuck")
            .map(|(_, seq, _)| *seq)
            .collect();
        (stuck.len() == 2).then_some(())
    })
    .await;
    stop.cancel();
    second.await.expect("join").expect("second consumer");
    let handled = handled.lock().expect("lock").clone();
    let stuck: Vec<u32> = handled
        .iter()
        .filter(|(key, _, _)| key == "stuck")
        .map(|(_, seq, _)| *seq)
        .collect();
    assert_eq!(stuck, vec![0, 1], "in order, each once");
    let first_handled = handled.iter().filter(|(key, _, _)| key == "first").count();
    assert_eq!(first_handled, 1, "before the committed offset: not handled again");
    println!(
        "stuck key: {} records handled in all, {} of them again after the restart",
        handled.len(),
        handled.len() - records.len()
    );
}

/// Notes how many records are being handled at once, at most.
#[derive(Debug, Clone, Default)]
struct Concurrency {
    now: Arc<std::sync::atomic::AtomicUsize>,
    most: Arc<std::sync::atomic::AtomicUsize>,
    handled: Handled,
}

impl Handler for Concurrency {
    async fn handle(&self, record: &OwnedMessage, attempt: u32) -> Result<(), HandleError> {
        use std::sync::atomic::Ordering::SeqCst;

        let now = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.now.fetch_sub(1, SeqCst);
        Recorder {
            name: "only",
            handled: Arc::clone(&self.handled),
        }
        .handle(record, attempt)
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_different_keys_are_handled_concurrently_within_the_bound() {
    const KEYS: u32 = 20;
    const PER_KEY: u32 = 5;
    const BOUND: usize = 8;
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let topic = kafka.topics.notifications.clone();
    let producer = test_producer(&kafka);
    // Every key's n-th record before any key's (n+1)-th, all in one
    // partition, so only keys tell them apart.
    let records: Vec<(String, String)> = (0..PER_KEY)
        .flat_map(|seq| (0..KEYS).map(move |key| (format!("key-{key}"), seq.to_string())))
        .collect();
    publish_to(&producer, &topic, 0, &records).await;

    let settings = ConsumerConfig {
        max_in_flight: BOUND,
        ..test_consumer()
    };
    let consumer = service_kit::kafka::consumer(
        &kafka,
        &settings,
        "concurrent",
        &unique("concurrent"),
        &[&topic],
        &Metrics::default(),
    )
    .expect("consumer");
    let handler = Concurrency::default();
    let stop = service_kit::CancellationToken::new();
    let task = tokio::spawn(consumer::run(
        consumer,
        handler.clone(),
        settings,
        None,
        stop.clone(),
    ));
    eventually("every record handled", || async {
        (handler.handled.lock().expect("lock").len() >= records.len()).then_some(())
    })
    .await;
    stop.cancel();
    task.await.expect("join").expect("consumer");

    let mut per_key: HashMap<String, Vec<u32>> = HashMap::new();
    for (key, seq, _) in handler.handled.lock().expect("lock").iter() {
        per_key.entry(key.clone()).or_default().push(*seq);
    }
    assert_eq!(per_key.len(), usize::try_from(KEYS).expect("small"));
    for (key, seqs) in &per_key {
        assert_eq!(
            seqs,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "{key}: in order, each once"
        );
    }
    let most = handler.most.load(std::sync::atomic::Ordering::SeqCst);
    println!("concurrency: at most {most} records handled at once, bound {BOUND}");
    assert!(most > 1, "records of different keys were handled one at a time");
    assert!(
        most <= BOUND,
        "{most} records handled at once, over the bound of {BOUND}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_stuck_at_its_bound_still_serves_a_rebalance() {
    const BOUND: usize = 4;
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let topic = kafka.topics.notifications.clone();
    let group = unique("bound");
    let producer = test_producer(&kafka);
    for partition in 1..3 {
        let others: Vec<(String, String)> = (0..5)
            .map(|key| (format!("key-{partition}-{key}"), "0".to_owned()))
            .collect();
        publish_to(&producer, &topic, partition, &others).await;
    }

    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handled: Handled = Arc::default();
    let members = StuckKeyGroup {
        kafka: &kafka,
        settings: ConsumerConfig {
            max_attempts: 0,
            max_in_flight: BOUND,
            ..test_consumer()
        },
        group: &group,
        topic: &topic,
        released: Arc::clone(&released),
        handled: Arc::clone(&handled),
    };
    let stop = service_kit::CancellationToken::new();
    let first_metrics = Metrics::default();
    let first = members.start("first", stop.clone(), &first_metrics);
    eventually("the first consumer handled the other keys", || async {
        (handled.lock().expect("lock").len() == 10).then_some(())
    })
    .await;
    // More records of the stuck key than the bound: the first consumer ends
    // up holding only records it cannot handle.
    let stuck: Vec<(String, String)> = (0..6).map(|seq| ("stuck".to_owned(), seq.to_string())).collect();
    publish_to(&producer, &topic, 0, &stuck).await;
    // The first ends up at its bound with the stuck key's records and, past
    // `HOLD_AFTER`, holds its partitions paused to go on polling. A second
    // member joins then: the group can only rebalance if the first polls.
    let held = format!(
        r#"group="{group}",reason="{}""#,
        service_kit::kafka::group::PAUSED_FULL
    );
    eventually("the first consumer holds its partitions at its bound", || async {
        (service_kit::metrics::sample(&first_metrics.render(), "consumer_paused", &held) == Some(1))
            .then_some(())
    })
    .await;
    let second = members.start("second", stop.clone(), &Metrics::default());
    // New records on every partition: the second member handles some of
    // them only once the group rebalanced, which needs the first to poll.
    for partition in 0..3 {
        let after: Vec<(String, String)> = (0..2)
            .map(|key| (format!("after-{partition}-{key}"), "0".to_owned()))
            .collect();
        publish_to(&producer, &topic, partition, &after).await;
    }
    eventually(
        "the second member handles records while the first is stuck",
        || async {
            handled
                .lock()
                .expect("lock")
                .iter()
                .any(|(_, _, name)| *name == "second")
                .then_some(())
        },
    )
    .await;
    released.store(true, std::sync::atomic::Ordering::SeqCst);
    let all_stuck = |handled: &Handled| -> BTreeSet<u32> {
        handled
            .lock()
            .expect("lock")
            .iter()
            .filter(|(key, _, _)| key == "stuck")
            .map(|(_, seq, _)| *seq)
            .collect()
    };
    eventually("every record of the stuck key handled", || async {
        (all_stuck(&handled).len() == 6).then_some(())
    })
    .await;
    stop.cancel();
    first.await.expect("join").expect("first consumer");
    second.await.expect("join").expect("second consumer");
    // In order by whichever member handled them (one handed over in the
    // rebalance may be handled again by its new owner: at-least-once).
    let handled = handled.lock().expect("lock").clone();
    for member in ["first", "second"] {
        let seqs: Vec<u32> = handled
            .iter()
            .filter(|(key, _, name)| key == "stuck" && *name == member)
            .map(|(_, seq, _)| *seq)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{member} handled the stuck key out of order: {seqs:?}"
        );
    }
}

/// Handles every record at once.
struct Nothing;

impl Handler for Nothing {
    async fn handle(&self, _record: &OwnedMessage, _attempt: u32) -> Result<(), HandleError> {
        Ok(())
    }
}

/// While a rebalance waits on a slow broker, an HTTP route served by the
/// same runtime still answers within 100 ms.
///
/// The slow broker is librdkafka's own mock cluster answering every request
/// a second late (the shared broker cannot be slowed: a proxy in front of
/// it would only carry the bootstrap connection, as it advertises its own
/// address). With `START_FROM=latest`, taking the partitions looks up the
/// group's committed offsets, then each partition's end, then commits the
/// start positions: several seconds of waiting inside librdkafka's
/// rebalance callback, which runs in the consumer loop's poll. The runtime
/// has one worker thread, so that a callback blocking it would stall the
/// route: what the test shows is that the rebalance does not hold an async
/// worker. It does not show how a real broker's slowness would play out.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn an_http_route_answers_while_a_rebalance_waits_on_a_slow_broker() {
    const RTT: Duration = Duration::from_secs(1);
    service_kit::telemetry::init_for_tests();
    let mock = rdkafka::mocking::MockCluster::new(1).expect("librdkafka's mock cluster");
    let topic = "slow";
    mock.create_topic(topic, 3, 1).expect("topic");
    let kafka = service_kit::config::KafkaConfig {
        bootstrap_servers: mock.bootstrap_servers(),
        ..service_kit::config::KafkaConfig::local()
    };
    let settings = ConsumerConfig {
        start_from: StartFrom::Latest,
        ..test_consumer()
    };
    let metrics = Metrics::default();
    let group = "slow-group";
    let consumer =
        service_kit::kafka::consumer(&kafka, &settings, "slow", group, &[topic], &metrics).expect("consumer");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/health", listener.local_addr().expect("address"));
    let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener, app).await });

    mock.broker_round_trip_time(-1, RTT).expect("slow broker");
    let stop = service_kit::CancellationToken::new();
    let run = tokio::spawn(consumer::run(consumer, Nothing, settings, None, stop.clone()));
    // The client asks from a thread and runtime of its own: its requests
    // and its pauses between them must not wait for the runtime under test.
    let in_group = format!(r#"group="{group}""#);
    let probe = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("the client's runtime");
        runtime.block_on(async move {
            let http = reqwest::Client::new();
            let started = tokio::time::Instant::now();
            let mut slowest = Duration::ZERO;
            let mut answers = 0;
            loop {
                let asked = tokio::time::Instant::now();
                http.get(&url).send().await.expect("the route answers");
                slowest = slowest.max(asked.elapsed());
                answers += 1;
                let assigned = service_kit::metrics::sample(
                    &metrics.render(),
                    "kafka_consumer_assigned_partitions",
                    &in_group,
                );
                if assigned == Some(3) {
                    return (started.elapsed(), answers, slowest);
                }
                assert!(started.elapsed() < PATIENCE, "the partitions were never assigned");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    });
    let (took, answers, slowest) = tokio::task::spawn_blocking(move || probe.join().expect("the client"))
        .await
        .expect("joined");
    println!(
        "slow rebalance: partitions assigned {:.1} s after the start, {answers} answers meanwhile, the slowest in {} ms",
        took.as_secs_f64(),
        slowest.as_millis()
    );
    assert!(
        took > 4 * RTT,
        "the rebalance waited on the slow broker: {took:?}"
    );
    assert!(
        slowest < Duration::from_millis(100),
        "the route answered in {slowest:?} while the rebalance waited"
    );

    mock.broker_round_trip_time(-1, Duration::ZERO)
        .expect("fast again");
    stop.cancel();
    run.await.expect("consumer task").expect("consumer ran");
}

/// Handles every record at once, but those keyed `stuck`, which it never
/// finishes; counts what it handled.
struct AllButStuck(Arc<std::sync::atomic::AtomicUsize>);

impl Handler for AllButStuck {
    async fn handle(&self, record: &OwnedMessage, _attempt: u32) -> Result<(), HandleError> {
        if record.key() == Some(b"stuck".as_slice()) {
            std::future::pending::<()>().await;
        }
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// The consumer's final commit fits inside the shutdown time, counted from
/// the stop, however long the records in hand hold it up.
///
/// A record never finishes, so the wait for the records in hand lasts as
/// long as the consumer allows, and the broker answers each request a second
/// late from the stop on (librdkafka's mock cluster). Splitting the shutdown
/// time in two fixed halves, as the consumer did, ended at the full time
/// (4 s here) or later, when the service aborts what still runs; taking the
/// commit's time out of what is left ends before it, with the commit done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_commit_fits_inside_the_shutdown_time() {
    use rdkafka::consumer::Consumer;
    const SHUTDOWN: Duration = Duration::from_secs(4);
    service_kit::telemetry::init_for_tests();
    let mock = rdkafka::mocking::MockCluster::new(1).expect("librdkafka's mock cluster");
    let topic = "stopping";
    mock.create_topic(topic, 1, 1).expect("topic");
    let kafka = service_kit::config::KafkaConfig {
        bootstrap_servers: mock.bootstrap_servers(),
        // Nothing committed in the background: what is committed at the end
        // is the final commit's.
        commit_interval: Duration::from_secs(600),
        ..service_kit::config::KafkaConfig::local()
    };
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .create()
        .expect("producer");
    for key in ["a", "stuck", "b"] {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(topic).key(key).payload("x"),
                PATIENCE,
            )
            .await
            .expect("produced");
    }
    let settings = ConsumerConfig {
        shutdown_timeout: SHUTDOWN,
        ..test_consumer()
    };
    let group = "stopping-group";
    let consumer = service_kit::kafka::consumer(
        &kafka,
        &settings,
        "stopping",
        group,
        &[topic],
        &Metrics::default(),
    )
    .expect("consumer");
    let handled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = service_kit::CancellationToken::new();
    let run = tokio::spawn(consumer::run(
        consumer,
        AllButStuck(Arc::clone(&handled)),
        settings,
        None,
        stop.clone(),
    ));
    eventually("the records around the stuck one are handled", || async {
        (handled.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
    })
    .await;

    mock.broker_round_trip_time(-1, Duration::from_secs(1))
        .expect("slow broker");
    let asked = tokio::time::Instant::now();
    stop.cancel();
    run.await.expect("consumer task").expect("consumer ran");
    let took = asked.elapsed();
    mock.broker_round_trip_time(-1, Duration::ZERO)
        .expect("fast again");
    println!(
        "final commit: the consumer closed {} ms after the stop ({} ms allowed)",
        took.as_millis(),
        SHUTDOWN.as_millis()
    );
    assert!(
        took < SHUTDOWN,
        "closed {took:?} after the stop, past {SHUTDOWN:?}"
    );

    // Committed: up to the stuck record (offset 1), the lowest not done.
    let committed = tokio::task::spawn_blocking(move || {
        let outsider = service_kit::kafka::outsider(&kafka, "check", group).expect("client");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        outsider
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed")
    })
    .await
    .expect("looked up");
    let offset = committed.elements()[0].offset();
    assert_eq!(offset, rdkafka::Offset::Offset(1), "the final commit was made");
}
