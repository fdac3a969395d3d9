//! `cargo xtask tour`: the patterns and their parts, one step each, on the
//! demo's stack: the claim, made to happen, what happened and the code that
//! did it (docs/tour.md). Every step checks what it shows, so a tour that
//! ends is a test that passed: CI runs it with `--no-pause`.

use std::collections::BTreeSet;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kafka_ops::access::{self, LocalTools};
use kafka_ops::queue::{Queue, REQUESTS};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, OwnedMessage};
use serde_json::{Value, json};
use service_kit::config::{ConsumerConfig, KafkaConfig, StartFrom};
use service_kit::kafka::GroupConsumer;
use shared_events::Topics;

use crate::local::broker;
use crate::local::demo::{PAYMENTS, SERVICE_A, SERVICE_B, get_ok, payment, post};

/// How long anything the tour waits for may take.
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a consumer is given to read what it will read.
const DRAIN: Duration = Duration::from_secs(5);

/// `pause`: wait for Enter between steps (only when stdin is a terminal).
pub async fn run(root: &Path, pause: bool) -> Result<()> {
    let credentials = crate::local::credentials::ensure(root)?;
    let broker = broker::LocalBroker::new(root);
    let tour = Tour {
        tools: LocalTools::new(root, broker.classpath()?),
        broker,
        http: crate::local::credentials::operator_client_with(&credentials)?,
        kafka: KafkaConfig {
            bootstrap_servers: crate::env_set("KAFKA_BOOTSTRAP_SERVERS")
                .unwrap_or_else(|| broker::BOOTSTRAP.to_owned()),
            ..KafkaConfig::local()
        },
        topics: Topics::default(),
        pause: pause && std::io::stdin().is_terminal(),
        run: chrono::Utc::now().timestamp_millis(),
    };
    // The services' own logs would bury the tour's: warnings only.
    let quiet = [("RUST_LOG", "warn,librdkafka=error".to_owned())];
    crate::local::demo::with_stack(root, &quiet, Some(tour.walk())).await?;
    println!("\nThe tour is over: every step did what it claims.");
    Ok(())
}

/// The tour's state: how it reaches the services and the broker.
struct Tour {
    /// The local broker, whose classpath runs Kafka's tools.
    broker: broker::LocalBroker,
    /// The operator's HTTP client: it reads every service's payment data.
    http: reqwest::Client,
    /// The broker as the operator (the brokers' own listener).
    kafka: KafkaConfig,
    topics: Topics,
    pause: bool,
    /// Names this run's consumer groups.
    run: i64,
    /// Kafka's tools as runs of many at once, for the queue's share consumers.
    tools: LocalTools,
}

/// The patterns and their parts, in the order the tour takes them.
const STEPS: [&str; 8] = [
    "Event notification",
    "Event-carried state transfer",
    "Event sourcing",
    "The event",
    "Message queue or event stream: retention and replay",
    "Event store: streams and optimistic concurrency",
    "Producers: metadata, fire and forget",
    "Consumers: groups, individuals, where they start",
];

impl Tour {
    async fn walk(self) -> Result<()> {
        let payment = self.event_notification().await?;
        let id = payment["payment_id"].as_str().context("payment_id")?.to_owned();
        self.state_transfer(&id).await?;
        self.event_sourcing(&id).await?;
        self.the_event(&id).await?;
        self.queue_or_stream(&id).await?;
        self.event_store(&id).await?;
        self.producers().await?;
        self.consumers().await
    }

    /// Prints step `n`'s title and what it claims, after waiting
    /// for Enter when pausing.
    async fn step(&self, n: usize, claim: &str) -> Result<()> {
        if self.pause && n > 1 {
            print!("\n[Enter for step {n}] ");
            std::io::stdout().flush()?;
            tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await??;
        }
        println!("\n== {n}/{}: {} ==\n", STEPS.len(), STEPS[n - 1]);
        println!("The claim: {claim}\n");
        Ok(())
    }

    async fn event_notification(&self) -> Result<Value> {
        self.step(
            1,
            "Payments' notification carries the least it can: which payment, when, \
             and how it was paid; no amount, no customer. Each service notified does \
             what it needs: ServiceA records it for audit, ServiceB calls Payments back \
             (GetPaymentInfo) for the rest.",
        )
        .await?;
        let (status, _, payment) = post(&self.http, "/payments", &pay("tour-customer", 2500), None).await?;
        ensure!(status == 201, "POST /payments answered {status}: {payment}");
        let id = payment["payment_id"].as_str().context("payment_id")?.to_owned();
        println!("POST /payments → {status}, payment {id}");
        let notification = self.record(&self.topics.notifications, &id).await?;
        let value: Value = serde_json::from_slice(notification.payload().unwrap_or_default())?;
        println!(
            "{} holds it, {} bytes: {value}",
            self.topics.notifications,
            notification.payload().map_or(0, <[u8]>::len)
        );
        ensure!(
            value.get("amount").is_none() && value.get("customer_id").is_none(),
            "a notification carries no payment details: {value}"
        );
        let audit = crate::eventually(PATIENCE, "ServiceA's audit of the notification", || async {
            let audit = get_ok(&self.http, &format!("{SERVICE_A}/audit")).await.ok()?;
            audit
                .as_array()?
                .iter()
                .find(|entry| entry["payment_id"] == id.as_str())
                .cloned()
        })
        .await?;
        println!("ServiceA audited it: {audit}");
        let record = self.recorded(&id, 1).await?;
        println!(
            "ServiceB called GET /payments/{id} back and recorded: amount {}, {} call(s)",
            record["payment"]["amount"], record["attempts"]
        );
        ensure!(record["payment"]["amount"] == 2500, "ServiceB's record: {record}");
        code(&[
            "`payments-service/src/relay.rs` → `Relay::send_batch` (the notification beside the state)",
            "`service-a/src/handler.rs` → `PaymentEvents::handle`, `service-a/src/audit.rs` → `Audit::record`",
            "`service-b/src/handler.rs` → `Notifications::handle`, `service-b/src/payments.rs` → `PaymentsClient::payment`",
        ]);
        Ok(payment)
    }

    async fn state_transfer(&self, id: &str) -> Result<()> {
        self.step(
            2,
            "Payments pushes the whole payment, after every change, onto a compacted \
             topic; ServiceA keeps its own copy from it and never asks Payments, which \
             may be down meanwhile.",
        )
        .await?;
        let state = self.record(&self.topics.state, id).await?;
        let value: Value = serde_json::from_slice(state.payload().unwrap_or_default())?;
        println!(
            "{} holds the whole payment, keyed by its id (a compacted topic: the newest per key stays): {value}",
            self.topics.state
        );
        let response = self.http.get(format!("{SERVICE_A}/payments/{id}")).send().await?;
        let copied_at = header(&response, "copied-at");
        let copy: Value = response.json().await?;
        let original = get_ok(&self.http, &format!("{PAYMENTS}/payments/{id}")).await?;
        ensure!(
            copy == original,
            "ServiceA's copy {copy} is not Payments' {original}"
        );
        println!(
            "ServiceA answers GET /payments/{id} from its copy (Copied-At: {copied_at}), equal to Payments'."
        );
        code(&[
            "`payments-service/src/relay.rs` → `Relay::state_after`",
            "`service-a/src/handler.rs` → `PaymentEvents::handle` (the newest version wins)",
            "`libs/service-kit/src/kafka/mod.rs` → `replica` (every partition, from the beginning, on each start)",
        ]);
        Ok(())
    }

    async fn event_sourcing(&self, id: &str) -> Result<()> {
        self.step(
            3,
            "Payments stores every change to a payment as an event appended to the \
             payment's stream, never as an update of a row; the payment's state is \
             what folding its events gives.",
        )
        .await?;
        let refund = json!({"amount": 500, "reason": "tour: one item returned"});
        let (status, _, body) = post(
            &self.http,
            &format!("/payments/{id}/refunds"),
            &refund,
            Some("\"1\""),
        )
        .await?;
        ensure!(status == 201, "the refund answered {status}: {body}");
        println!("POST /payments/{id}/refunds (If-Match: \"1\") → {status}");
        let events = self.events(id).await?;
        for event in &events {
            println!(
                "  version {}: {} {}",
                event["version"], event["type"], event["data"]
            );
        }
        let payment = get_ok(&self.http, &format!("{PAYMENTS}/payments/{id}")).await?;
        println!(
            "GET /payments/{id}: amount {}, refunded {}, version {} — the events, applied in order",
            payment["amount"], payment["refunded"], payment["version"]
        );
        ensure!(
            events.len() == 2 && payment["refunded"] == 500 && payment["version"] == 2,
            "two events, refunded 500: {payment}"
        );
        code(&[
            "`libs/event-store/src/store.rs` → `EventStore::append`, `libs/event-store/src/store.rs` → `EventStore::read_stream`",
            "`payments-service/src/repository.rs` → `Payments::load` (the latest snapshot, then the events after it)",
        ]);
        Ok(())
    }

    async fn the_event(&self, id: &str) -> Result<()> {
        self.step(
            4,
            "an event says what happened, in the past tense, and is never changed \
             once published. It carries its own id, its type and version, its time, \
             and the data its readers need.",
        )
        .await?;
        // The payment's and the refund's, once the relay published both.
        let records = crate::eventually(PATIENCE, "both notifications of the payment", || async {
            let records = self.records(&self.topics.notifications, id).await.ok()?;
            (records.len() >= 2).then_some(records)
        })
        .await?;
        for record in &records {
            println!("a record of {id} on {}:", self.topics.notifications);
            for (key, value) in headers(record) {
                println!("  {key}: {value}");
            }
        }
        println!(
            "\nEach has its own ce_id, a name in the past tense and its version (ce_type), its time; \
             none is ever changed. A redelivery carries the same ce_id, which is how the consumers \
             tell it from a new event."
        );
        code(&[
            "`shared-events/src/envelope.rs` → `encode`, `shared-events/src/envelope.rs` → `decode`",
            "`shared-events/src/events.rs` → `PaymentReceived::notification`",
        ]);
        Ok(())
    }

    async fn queue_or_stream(&self, id: &str) -> Result<()> {
        self.step(
            5,
            "a queue hands each message to one consumer, and once acknowledged it is gone; \
             a stream keeps every record, for the topic's retention (or, compacted, the \
             newest per payment), for every group to read, and read again. Kafka does both: \
             a share group takes a topic's records one at a time across its members, while \
             a consumer group reads the same topic whole.",
        )
        .await?;
        let cursor = self.caught_up("service-b", &self.topics.notifications).await?;
        let again = self.records(&self.topics.notifications, id).await?;
        println!(
            "The stream: ServiceB's group has consumed {} ({cursor}), and the topic still holds \
             payment {id}'s {} notifications, read again from offset 0.",
            self.topics.notifications,
            again.len()
        );
        for topic in [&self.topics.notifications, &self.topics.state] {
            println!("{topic}: {}", self.retention(topic).await?);
        }
        println!(
            "ServiceA replays the whole state topic on each start to rebuild its copy; \
             Kafka's `kafka-consumer-groups.sh --reset-offsets` moves a stopped group back to replay it."
        );

        // The queue: refund requests, work to be done once by whichever
        // worker is free, on a topic of one partition.
        let queue = Queue {
            topic: format!("tour.refund-requests.{}", self.run),
            group: format!("tour-{}-refund-workers", self.run),
        };
        let worker = queue.worker(format!("tour-{}-worker", self.run));
        let operator = access::Target {
            bootstrap: self.kafka.bootstrap_servers.clone(),
            command_config: None,
        };
        self.tools.run(&queue.setup(&operator, &worker)?).await?;
        let tools = &self.tools;
        let shown = queue
            .show(
                &self.kafka,
                broker::SASL_BOOTSTRAP,
                &worker.login,
                |runs| async move { tools.run(&runs).await },
            )
            .await?;
        println!(
            "\nThe queue: {REQUESTS} records on {} (one partition), worked by share group {} \
             as {} (who may read that topic in that group only):",
            queue.topic, queue.group, worker.login.name
        );
        let [first, second] = &shown.members;
        for (what, deliveries) in [
            ("rejected, never delivered again", &shown.rejected),
            ("released, delivered again", &shown.released),
            ("taken by member 1 while member 2 took its own", first),
            ("taken by member 2", second),
        ] {
            let each = deliveries
                .iter()
                .map(|d| format!("{} (delivery {})", d.value, d.count));
            println!("  {what}: {}", each.collect::<Vec<_>>().join(", "));
        }
        println!(
            "The stream beside it: group {}.stream read {:?}",
            queue.group, shown.stream
        );
        shown.check().map_err(anyhow::Error::msg)?;
        code(&[
            "`shared-events/src/topics.rs` → `Topics::specs` (retention and compaction)",
            "`libs/kafka-ops/src/queue.rs` → `Queue::show` (Kafka's console share consumer: rust-rdkafka has none yet)",
            "`libs/kafka-ops/src/access.rs` → `acls` (`Role::QueueWorker`)",
        ]);
        Ok(())
    }

    async fn event_store(&self, id: &str) -> Result<()> {
        self.step(
            6,
            "the event store only appends, one stream per payment, with optimistic \
             concurrency: a writer states the version it decided on, and loses with \
             409 if another wrote first, so each stream stays consistent.",
        )
        .await?;
        println!("Two clients both read version 2 and both refund, at once:");
        let refund = |n| json!({"amount": 100, "reason": format!("tour: writer {n}")});
        let path = format!("/payments/{id}/refunds");
        let (one, two) = (refund(1), refund(2));
        let (first, second) = tokio::join!(
            post(&self.http, &path, &one, Some("\"2\"")),
            post(&self.http, &path, &two, Some("\"2\""))
        );
        let answers = [first?, second?];
        for (n, (status, _, body)) in answers.iter().enumerate() {
            println!(
                "  writer {}: {status} {}",
                n + 1,
                body["message"].as_str().unwrap_or("")
            );
        }
        let mut statuses: Vec<u16> = answers.iter().map(|(status, _, _)| *status).collect();
        statuses.sort_unstable();
        ensure!(statuses == [201, 409], "one 201 and one 409, not {statuses:?}");
        let events = self.events(id).await?;
        println!(
            "The stream has {} events: the loser appended nothing, and may read version 3 and decide again.",
            events.len()
        );
        ensure!(events.len() == 3, "three events in the stream");
        code(&[
            "`libs/event-store/src/store.rs` → `EventStore::append` (a unique (stream, version) index decides)",
            "`payments-service/src/api.rs` → `refund` (If-Match is the version decided on; 409 otherwise)",
        ]);
        Ok(())
    }

    async fn producers(&self) -> Result<()> {
        self.step(
            7,
            "Payments publishes each change with metadata for tracing it (its source, \
             the flow's correlation id, its cause), and knows nothing of who reads it: \
             the request is answered once the event is stored, the relay publishes it.",
        )
        .await?;
        let started = chrono::Utc::now().timestamp_millis();
        let (status, _, payment) = post(&self.http, "/payments", &pay("tour-producer", 900), None).await?;
        let answered = chrono::Utc::now().timestamp_millis();
        ensure!(status == 201, "POST /payments answered {status}");
        let id = payment["payment_id"].as_str().context("payment_id")?;
        let record = self.record(&self.topics.notifications, id).await?;
        let written = record.timestamp().to_millis().unwrap_or_default();
        println!(
            "Payments answered 201 after {} ms; the notification was written {} ms after the request: \
             the request committed the event to the store (the outbox), the relay published it.",
            answered - started,
            written - started
        );
        let metadata: Vec<(String, String)> = headers(&record)
            .into_iter()
            .filter(|(key, _)| ["ce_source", "ce_correlationid", "ce_causationid"].contains(&key.as_str()))
            .collect();
        println!("Its metadata: {metadata:?}");
        let readers = self.readers(&self.topics.notifications).await?;
        println!(
            "Groups reading {} (the broker knows; Payments' configuration names none): {readers:?}",
            self.topics.notifications
        );
        code(&[
            "`payments-service/src/repository.rs` → `new_event` (the metadata, stored with the event)",
            "`payments-service/src/relay.rs` → `Relay::publish` (a Kafka transaction per batch)",
        ]);
        Ok(())
    }

    /// The groups with members now (not the tour's own) that committed
    /// offsets in `topic`, as the broker knows them.
    async fn readers(&self, topic: &str) -> Result<Vec<String>> {
        let rows = self.describe_groups(&["--all-groups"], topic).await?;
        let mut groups: Vec<String> = rows
            .into_iter()
            .filter(|[group, _, committed, _, member]| {
                member != "-" && committed != "-" && !group.starts_with("tour-")
            })
            .map(|[group, ..]| group)
            .collect();
        groups.dedup();
        Ok(groups)
    }

    /// Kafka's `kafka-consumer-groups.sh --describe` of `which` (`--group G`
    /// or `--all-groups`): per partition of `topic` a group has, the group,
    /// the partition, its committed offset and end, and its member (`-`: none).
    async fn describe_groups(&self, which: &[&str], topic: &str) -> Result<Vec<[String; 5]>> {
        let args = [
            &["--bootstrap-server", &self.kafka.bootstrap_servers, "--describe"],
            which,
        ]
        .concat();
        let printed = self.broker.run_tool("kafka-consumer-groups.sh", &args).await?;
        // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
        Ok(printed
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .filter(|columns| columns.len() >= 7 && columns[1] == topic)
            .map(|columns| [0, 2, 3, 4, 6].map(|i| columns[i].to_owned()))
            .collect())
    }

    async fn consumers(&self) -> Result<()> {
        self.step(
            8,
            "consumers in one group share a topic's partitions; a consumer on its own \
             reads them all. A new one starts from the beginning, from now or from a \
             time; one that has read resumes at the cursor its group committed.",
        )
        .await?;
        let topic = self.topics.notifications.clone();
        let group = |name: &str| format!("tour-{}-{name}", self.run);

        // Two members of one group, one consumer alone.
        let mut members = [
            self.consumer(&group("shared"), StartFrom::Latest)?,
            self.consumer(&group("shared"), StartFrom::Latest)?,
            self.consumer(&group("alone"), StartFrom::Latest)?,
        ];
        let partitions = assigned(&mut members, true).await?;
        let [one, two, all] = [&partitions[0], &partitions[1], &partitions[2]];
        println!(
            "group {}: member 1 reads partitions {one:?}, member 2 {two:?}",
            group("shared")
        );
        println!("group {}: its one member reads {all:?}", group("alone"));
        ensure!(
            one.is_disjoint(two) && one.union(two).count() == all.len(),
            "the members share the partitions"
        );
        drop(members);

        // From the beginning, from now, from a time.
        let before = self.pay_and_wait("tour-before").await?;
        let at = chrono::Utc::now().timestamp_millis();
        let after = self.pay_and_wait("tour-after").await?;
        let from = [
            ("earliest", StartFrom::Earliest),
            ("latest", StartFrom::Latest),
            ("a time", format!("{at}").parse().map_err(anyhow::Error::msg)?),
        ];
        let mut readers = from
            .iter()
            .map(|(name, start)| self.consumer(&group(&name.replace(' ', "-")), *start))
            .collect::<Result<Vec<_>>>()?;
        assigned(&mut readers, false).await?;
        let new = self.pay_and_wait("tour-new").await?;
        for ((name, _), reader) in from.iter().zip(&mut readers) {
            reader.drain().await;
            let holds: Vec<&str> = [("before", &before), ("after", &after), ("new", &new)]
                .into_iter()
                .filter(|(_, id)| reader.read.contains(id))
                .map(|(label, _)| label)
                .collect();
            println!(
                "from {name:>8}: read {:>4} records, of this step's payments: {holds:?}",
                reader.read.len()
            );
            let expected: &[&str] = match *name {
                "earliest" => &["before", "after", "new"],
                "latest" => &["new"],
                _ => &["after", "new"],
            };
            ensure!(holds == expected, "from {name}: {holds:?}, not {expected:?}");
        }
        let cursor = self.caught_up("service-b", &topic).await?;
        println!(
            "The cursor: ServiceB's group committed {cursor}; restarted, it resumes there, neither \
             repeating nor skipping."
        );
        code(&[
            "`libs/service-kit/src/kafka/mod.rs` → `consumer` (the group member every service runs)",
            "`libs/service-kit/src/kafka/group.rs` → `start_offsets` (START_FROM: earliest, latest, a time)",
            "`libs/service-kit/src/kafka/group.rs` → `GroupContext::finished` (the cursor, committed)",
        ]);
        Ok(())
    }

    /// A group member of `group` reading the notifications, built as the
    /// services build theirs, starting where `start` says.
    fn consumer(&self, group: &str, start: StartFrom) -> Result<Reader> {
        let settings = ConsumerConfig {
            start_from: start,
            session_timeout: Duration::from_secs(6),
            ..ConsumerConfig::default()
        };
        Ok(Reader {
            consumer: service_kit::kafka::consumer(
                &self.kafka,
                &settings,
                "tour",
                group,
                &[&self.topics.notifications],
                &service_kit::metrics::Metrics::default(),
            )?,
            read: Vec::new(),
        })
    }

    /// Pays, and waits until ServiceB has recorded the payment.
    async fn pay_and_wait(&self, customer: &str) -> Result<String> {
        let (status, _, payment) = post(&self.http, "/payments", &pay(customer, 100), None).await?;
        ensure!(status == 201, "POST /payments answered {status}");
        let id = payment["payment_id"].as_str().context("payment_id")?.to_owned();
        self.recorded(&id, 1).await?;
        Ok(id)
    }

    /// ServiceB's record of payment `id`, once it has handled `at_least`
    /// notifications of it.
    async fn recorded(&self, id: &str, at_least: u64) -> Result<Value> {
        crate::eventually(PATIENCE, "ServiceB's record of the payment", || async {
            let record = get_ok(&self.http, &format!("{SERVICE_B}/payments/{id}"))
                .await
                .ok()?;
            (record["notifications"].as_u64()? >= at_least).then_some(record)
        })
        .await
    }

    /// Waits until `group` has committed up to the end of `topic`, and says
    /// where that is.
    async fn caught_up(&self, group: &str, topic: &str) -> Result<String> {
        let what = format!("{group} to commit to the end of {topic}");
        crate::eventually(PATIENCE, &what, || async {
            let rows = self.describe_groups(&["--group", group], topic).await.ok()?;
            let at_end =
                |[_, _, at, end, _]: &[String; 5]| at.parse().unwrap_or(0) >= end.parse().unwrap_or(i64::MAX);
            let cursor = rows
                .iter()
                .map(|[_, partition, at, end, _]| format!("partition {partition} at {at} of {end}"));
            (!rows.is_empty() && rows.iter().all(at_end)).then(|| cursor.collect::<Vec<_>>().join(", "))
        })
        .await
    }

    /// The first record of `topic` with key `id`, waiting for it.
    async fn record(&self, topic: &str, id: &str) -> Result<OwnedMessage> {
        let mut records = crate::eventually(PATIENCE, &format!("payment {id} on {topic}"), || async {
            let records = self.records(topic, id).await.ok()?;
            (!records.is_empty()).then_some(records)
        })
        .await?;
        Ok(records.remove(0))
    }

    /// Every record of `topic` with key `id`, read from the beginning.
    async fn records(&self, topic: &str, id: &str) -> Result<Vec<OwnedMessage>> {
        Ok(kafka_ops::dead_letters::read_topic(&self.kafka, topic)
            .await?
            .into_iter()
            .filter(|record| record.key() == Some(id.as_bytes()))
            .collect())
    }

    /// `topic`'s retention settings, as the broker has them.
    async fn retention(&self, topic: &str) -> Result<String> {
        let admin: AdminClient<DefaultClientContext> =
            service_kit::kafka::client_config(&self.kafka, "tour").create()?;
        let described = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await?;
        let resource = described
            .into_iter()
            .next()
            .context("no answer")?
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(["cleanup.policy", "retention.ms", "min.compaction.lag.ms"]
            .iter()
            .filter_map(|name| Some(format!("{name}={}", resource.get(name)?.value.as_deref()?)))
            .collect::<Vec<_>>()
            .join(", "))
    }

    /// A payment's stored events.
    async fn events(&self, id: &str) -> Result<Vec<Value>> {
        let body = get_ok(&self.http, &format!("{PAYMENTS}/payments/{id}/events")).await?;
        body.as_array()
            .or_else(|| body["events"].as_array())
            .cloned()
            .context("no events")
    }
}

/// Prints the code a step names.
fn code(pointers: &[&str]) {
    println!("\nThe code:");
    for pointer in pointers {
        println!("  {pointer}");
    }
}

/// A payment in euros, under an order id of its own.
fn pay(customer: &str, amount: i64) -> Value {
    let order = format!("tour-{}", chrono::Utc::now().timestamp_micros());
    payment(customer, &order, amount, "EUR")
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// A record's headers, as text.
fn headers(record: &OwnedMessage) -> Vec<(String, String)> {
    record.headers().map_or_else(Vec::new, |headers| {
        headers
            .iter()
            .map(|header| {
                let value = header.value.map(String::from_utf8_lossy).unwrap_or_default();
                (header.key.to_owned(), value.into_owned())
            })
            .collect()
    })
}

/// One of the tour's consumers, and the payment ids (record keys) it read.
struct Reader {
    consumer: GroupConsumer,
    read: Vec<String>,
}

impl Reader {
    /// Waits up to `wait` for a record; whether one came. Polling is also
    /// what joins the group and takes the assignment.
    async fn poll(&mut self, wait: Duration) -> bool {
        match tokio::time::timeout(wait, self.consumer.recv()).await {
            Ok(Ok(record)) => {
                let key = record.key().map(|key| String::from_utf8_lossy(key).into_owned());
                self.read.extend(key);
                true
            }
            // Nothing yet, or the end of a partition (which the services'
            // consumers are told of).
            _ => false,
        }
    }

    fn partitions(&self) -> BTreeSet<i32> {
        self.consumer
            .assignment()
            .map(|list| list.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default()
    }

    /// Reads until nothing came for [`DRAIN`].
    async fn drain(&mut self) {
        let mut quiet_since = Instant::now();
        while quiet_since.elapsed() < DRAIN {
            if self.poll(Duration::from_millis(200)).await {
                quiet_since = Instant::now();
            }
        }
    }
}

/// Polls `readers` until each has partitions (and, with `shared`, the first
/// two together as many as the third), and returns each one's.
async fn assigned(readers: &mut [Reader], shared: bool) -> Result<Vec<BTreeSet<i32>>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        for reader in readers.iter_mut() {
            reader.poll(Duration::from_millis(100)).await;
        }
        let partitions: Vec<BTreeSet<i32>> = readers.iter().map(Reader::partitions).collect();
        let everyone_has_some = partitions.iter().all(|p| !p.is_empty());
        let split = !shared || partitions[0].len() + partitions[1].len() == partitions[2].len();
        if everyone_has_some && split {
            return Ok(partitions);
        }
        if Instant::now() > deadline {
            bail!("the consumers had no partitions after {PATIENCE:?}: {partitions:?}");
        }
    }
}
