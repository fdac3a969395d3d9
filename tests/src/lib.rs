//! Helpers for the end-to-end tests (`tests/e2e`): a real broker, the three
//! services spawned in-process on port 0 with their own topics and groups, and
//! waiting on conditions instead of sleeping.

pub mod broker;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::Duration;

use service_kit::auth::Credentials;
use service_kit::config::{ConsumerConfig, KafkaConfig, RetentionConfig};
use service_kit::service::ConsumerServiceConfig;
use shared_events::Topics;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use broker::Broker;
pub use event_store::testing::TestDatabase;

/// How long a condition may take to become true. Generous: group joins and
/// JVM warm-up on a loaded 2-core machine take seconds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The credentials every service this process starts accepts (a fresh set
/// per test binary, as `cargo xtask credentials` makes one per checkout).
pub fn credentials() -> &'static Credentials {
    static CREDENTIALS: LazyLock<Credentials> = LazyLock::new(Credentials::generate);
    &CREDENTIALS
}

/// An HTTP client that proves itself as the operator: it may read every
/// service's payment data, as the README's curl session does.
pub fn http_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        credentials().operator.authorization(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("HTTP client without TLS always builds")
}

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Kafka settings with topics of this test's own, created (with their real
/// settings) before anything produces to them.
pub async fn kafka_config(broker: &Broker) -> KafkaConfig {
    let kafka = KafkaConfig {
        bootstrap_servers: broker.bootstrap_servers.clone(),
        topics: Topics {
            notifications: unique("test.notifications"),
            state: unique("test.state"),
        },
        ..KafkaConfig::local()
    };
    service_kit::kafka::Admin::with_topics(&kafka, "test-setup", PATIENCE)
        .await
        .expect("create the test's topics");
    kafka
}

/// A service running in this process, stopped by [`TestApp::stop`].
#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    /// A database made for this app alone, kept as long as the app.
    _database: Option<TestDatabase>,
}

impl TestApp {
    /// Binds 127.0.0.1:0 and runs `run(listener, shutdown)` in a task.
    pub async fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(TcpListener, oneshot::Receiver<()>) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        service_kit::telemetry::init_for_tests();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind test app");
        let addr = listener.local_addr().expect("test app address");
        let (shutdown, stopped) = oneshot::channel();
        let task = tokio::spawn(run(listener, stopped));
        Self {
            addr,
            shutdown: Some(shutdown),
            task,
            _database: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks the service to shut down and waits until it has.
    ///
    /// # Panics
    ///
    /// If the service failed.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let result = tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("service stops in time");
        result.expect("service task").expect("service ran without error");
    }
}

async fn signal(stopped: oneshot::Receiver<()>) {
    let _ = stopped.await;
}

/// Payments with `kafka`, storing in the database at `database_url`.
pub async fn spawn_payments(kafka: &KafkaConfig, database_url: &str) -> TestApp {
    spawn_payments_with(kafka, database_url, true).await
}

/// [`spawn_payments`], running the outbox relay or not.
pub async fn spawn_payments_with(kafka: &KafkaConfig, database_url: &str, relay: bool) -> TestApp {
    spawn_payments_configured(kafka, database_url, |config| config.relay = relay).await
}

/// [`spawn_payments`], with its settings changed by `change`.
pub async fn spawn_payments_configured(
    kafka: &KafkaConfig,
    database_url: &str,
    change: impl FnOnce(&mut payments_service::Config),
) -> TestApp {
    let mut config = payments_service::Config {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        kafka: kafka.clone(),
        database: database_url.parse().expect("database URL"),
        callers: credentials().callers_of(payments_service::SERVICE),
        database_connections: 10,
        snapshot_every: 10,
        relay: true,
        publish_timeout: Duration::from_secs(10),
        outbox_hold_limit: Duration::from_secs(60),
        outbox_lag_warn: Duration::from_secs(30),
        outbox_batch_limit: payments_service::relay::DEFAULT_BATCH_LIMIT,
        outbox_test_batch_pause: Duration::ZERO,
        state_cache_entries: payments_service::latest::DEFAULT_ENTRIES,
        idempotency_key_ttl: payments_service::repository::DEFAULT_KEY_TTL,
        shutdown_timeout: service_kit::config::DEFAULT_SHUTDOWN_TIMEOUT,
        startup_timeout: service_kit::config::DEFAULT_STARTUP_TIMEOUT,
    };
    change(&mut config);
    TestApp::spawn(|listener, stopped| async move {
        Ok(payments_service::run(config, listener, signal(stopped)).await?)
    })
    .await
}

/// Consumer settings for tests: quick retries, lag figures every 200 ms, and
/// a crashed member noticed after 6 s (the broker's minimum).
pub fn test_consumer() -> ConsumerConfig {
    ConsumerConfig {
        retry: service_kit::config::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
        session_timeout: Duration::from_secs(6),
        statistics_interval: Duration::from_millis(200),
        ..ConsumerConfig::default()
    }
}

/// The settings of consumer service `name` with `kafka`, in consumer group
/// `group_id`, on a port of its own, its data in the database at
/// `database_url`, read by the test's operator.
pub fn consumer_service(
    name: &str,
    kafka: &KafkaConfig,
    group_id: &str,
    consumer: ConsumerConfig,
    database_url: &str,
) -> ConsumerServiceConfig {
    ConsumerServiceConfig {
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        kafka: kafka.clone(),
        consumer,
        group_id: group_id.to_owned(),
        database: database_url.parse().expect("database URL"),
        database_connections: 5,
        retention: RetentionConfig::default(),
        startup_timeout: service_kit::config::DEFAULT_STARTUP_TIMEOUT,
        callers: credentials().callers_of(name),
    }
}

/// ServiceA with `kafka`, in consumer group `group_id`, its audit log in a
/// database of its own.
pub async fn spawn_service_a(kafka: &KafkaConfig, group_id: &str) -> TestApp {
    spawn_service_a_with(kafka, group_id, test_consumer()).await
}

/// [`spawn_service_a`] with consumer settings `consumer`.
pub async fn spawn_service_a_with(kafka: &KafkaConfig, group_id: &str, consumer: ConsumerConfig) -> TestApp {
    let database = TestDatabase::empty().await;
    let mut app = spawn_service_a_in(kafka, group_id, consumer, &database.url).await;
    app._database = Some(database);
    app
}

/// [`spawn_service_a_with`], its audit log in the database at `database_url`.
pub async fn spawn_service_a_in(
    kafka: &KafkaConfig,
    group_id: &str,
    consumer: ConsumerConfig,
    database_url: &str,
) -> TestApp {
    let config = service_a::Config {
        service: consumer_service(service_a::SERVICE, kafka, group_id, consumer, database_url),
    };
    TestApp::spawn(
        |listener, stopped| async move { Ok(service_a::run(config, listener, signal(stopped)).await?) },
    )
    .await
}

/// ServiceB with `kafka`, in consumer group `group_id`, keeping its records
/// in the database at `database_url`, calling Payments at `payments_url`
/// with quick retries.
pub async fn spawn_service_b(
    kafka: &KafkaConfig,
    group_id: &str,
    payments_url: &str,
    database_url: &str,
) -> TestApp {
    spawn_service_b_with(kafka, group_id, payments_url, database_url, test_consumer()).await
}

/// [`spawn_service_b`] with consumer settings `consumer`.
pub async fn spawn_service_b_with(
    kafka: &KafkaConfig,
    group_id: &str,
    payments_url: &str,
    database_url: &str,
    consumer: ConsumerConfig,
) -> TestApp {
    let config = service_b::Config {
        service: consumer_service(service_b::SERVICE, kafka, group_id, consumer, database_url),
        payments_url: payments_url.to_owned(),
        payments_token: credentials().service_b.clone(),
        callback: service_b::CallbackLimits {
            timeout: Duration::from_secs(2),
            ..Default::default()
        },
        not_found_grace: Duration::from_secs(30),
    };
    TestApp::spawn(
        |listener, stopped| async move { Ok(service_b::run(config, listener, signal(stopped)).await?) },
    )
    .await
}

/// The three services wired together on one broker, with this test's own
/// topics, consumer groups and database; ServiceB calls this Payments back.
#[derive(Debug)]
pub struct System {
    pub kafka: KafkaConfig,
    pub database: TestDatabase,
    /// ServiceB's own database.
    pub service_b_database: TestDatabase,
    pub payments: TestApp,
    pub service_a: TestApp,
    pub service_b: TestApp,
}

impl System {
    pub async fn start(broker: &Broker) -> Self {
        let kafka = kafka_config(broker).await;
        let database = TestDatabase::create().await;
        let payments = spawn_payments(&kafka, &database.url).await;
        let service_a = spawn_service_a(&kafka, &unique("service-a")).await;
        let service_b_database = TestDatabase::empty().await;
        let service_b = spawn_service_b(
            &kafka,
            &unique("service-b"),
            &payments.url(""),
            &service_b_database.url,
        )
        .await;
        Self {
            kafka,
            database,
            service_b_database,
            payments,
            service_a,
            service_b,
        }
    }

    /// Stops the consumers first, then Payments.
    pub async fn stop(self) {
        self.service_b.stop().await;
        self.service_a.stop().await;
        self.payments.stop().await;
    }
}

/// The PostgreSQL `url`, pointing at `addr` instead of its server (to go
/// through a [`proxy::GatedProxy`]).
pub fn via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}/{path}")
}

/// The address of the server of the PostgreSQL `url`.
pub async fn server_of(url: &str) -> SocketAddr {
    let authority = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("a URL");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, server)| server);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    tokio::net::lookup_host(&host_port)
        .await
        .expect("resolve the database server")
        .find(SocketAddr::is_ipv4)
        .expect("an IPv4 address")
}

/// Whether `topic` holds a record with key `key` (read from the beginning).
pub async fn has_key(kafka: &KafkaConfig, topic: &str, key: &str) -> bool {
    use rdkafka::Message;
    all_records(kafka, topic, Duration::from_millis(300))
        .await
        .iter()
        .any(|r| r.key() == Some(key.as_bytes()))
}

/// `app`'s `GET /metrics`, if it answers.
pub async fn metrics_text(client: &reqwest::Client, app: &TestApp) -> Option<String> {
    metrics_text_at(client, &app.url("/metrics")).await
}

/// The metrics served at `url`, if it answers.
async fn metrics_text_at(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).send().await.ok()?.text().await.ok()
}

/// The value of the series `name{labels}` at `app`'s `GET /metrics`.
pub async fn metric(client: &reqwest::Client, app: &TestApp, name: &str, labels: &str) -> Option<i64> {
    service_kit::metrics::sample(&metrics_text(client, app).await?, name, labels)
}

/// The sum of every series of `name` at `app`'s `GET /metrics` whose labels
/// contain `labels` (such as `group="g"`).
pub async fn metric_sum(client: &reqwest::Client, app: &TestApp, name: &str, labels: &str) -> Option<i64> {
    metric_sum_at(client, &app.url("/metrics"), name, labels).await
}

/// [`metric_sum`] of the metrics served at `url` (a service running as a
/// process of its own).
pub async fn metric_sum_at(client: &reqwest::Client, url: &str, name: &str, labels: &str) -> Option<i64> {
    let text = metrics_text_at(client, url).await?;
    // `name{...} value`, or `name value` for a series without labels.
    let values: Vec<i64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Publishes `count` `PaymentReceived` notifications of new payments, as
/// Payments would, and returns the payment ids.
pub async fn publish_notifications(kafka: &KafkaConfig, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let payment = shared_events::testing::payment();
        ids.push(payment.payment_id.to_string());
        let envelope =
            shared_events::Envelope::new("/test", payment.notification(), uuid::Uuid::now_v7(), None);
        produce_event(kafka, &envelope).await;
    }
    ids
}

/// Polls `check` until it returns `Some`, or panics after [`PATIENCE`]
/// naming `what` was awaited.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `url` and returns the JSON body if the status is 200.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> Option<serde_json::Value> {
    let response = client.get(url).send().await.ok()?;
    if response.status() != reqwest::StatusCode::OK {
        return None;
    }
    response.json().await.ok()
}

/// A valid payment request body.
pub fn payment_request(customer: &str, amount: i64) -> serde_json::Value {
    serde_json::json!({
        "customer_id": customer,
        "order_id": unique("o"),
        "amount": amount,
        "currency": "EUR",
    })
}

/// POSTs a payment, asserts 201, returns the created payment.
pub async fn create_payment(
    client: &reqwest::Client,
    payments: &TestApp,
    body: &serde_json::Value,
) -> serde_json::Value {
    let response = client
        .post(payments.url("/payments"))
        .json(body)
        .send()
        .await
        .expect("POST /payments");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED, "POST /payments");
    response.json().await.expect("payment JSON")
}

/// Waits until ServiceA's copy of `payment` equals it and ServiceB has
/// recorded it from its callback; returns ServiceB's record.
pub async fn copied_and_recorded(
    client: &reqwest::Client,
    service_a: &TestApp,
    service_b: &TestApp,
    payment: &serde_json::Value,
) -> serde_json::Value {
    let path = format!(
        "/payments/{}",
        payment["payment_id"].as_str().expect("payment_id")
    );
    let copy = eventually("service-a copies the payment", || {
        get_json(client, service_a.url(&path))
    })
    .await;
    assert_eq!(&copy, payment);
    let record = eventually("service-b records the callback", || {
        get_json(client, service_b.url(&path))
    })
    .await;
    assert_eq!(&record["payment"], payment);
    record
}

/// A raw reader of every partition of `topic` from the beginning.
pub async fn reader(kafka: &KafkaConfig, topic: &str) -> service_kit::kafka::GroupConsumer {
    service_kit::kafka::replica(
        kafka,
        &ConsumerConfig::default(),
        "test-reader",
        topic,
        &service_kit::metrics::Metrics::default(),
    )
    .await
    .expect("reader")
}

/// The first `count` records of `topic`, read from the beginning of every
/// partition by a raw client (no group, no decoding).
pub async fn read_records(
    kafka: &KafkaConfig,
    topic: &str,
    count: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    let consumer = reader(kafka, topic).await;
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        match tokio::time::timeout(PATIENCE, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("{topic} has fewer than {count} records"))
        {
            Ok(record) => records.push(record.detach()),
            // The reader tells when it reaches the end of a partition.
            Err(rdkafka::error::KafkaError::PartitionEOF(_)) => {}
            Err(e) => panic!("reading {topic}: {e}"),
        }
    }
    records
}

/// The value of header `name` of `record`, as text.
pub fn header(record: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    record
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Every record of `topic`: read from the beginning to the end of every
/// partition (however long a loaded broker takes), then for `quiet` longer,
/// for records still on their way.
pub async fn all_records(
    kafka: &KafkaConfig,
    topic: &str,
    quiet: Duration,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::Consumer;
    use rdkafka::error::KafkaError;

    let consumer = reader(kafka, topic).await;
    let partitions = consumer.assignment().expect("the reader's partitions").count();
    let mut ended = std::collections::HashSet::new();
    let mut records = Vec::new();
    while ended.len() < partitions {
        match tokio::time::timeout(PATIENCE, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("reading {topic}: not every partition's end within {PATIENCE:?}"))
        {
            Ok(record) => records.push(record.detach()),
            Err(KafkaError::PartitionEOF(partition)) => {
                ended.insert(partition);
            }
            Err(e) => panic!("reading {topic}: {e}"),
        }
    }
    while let Ok(received) = tokio::time::timeout(quiet, consumer.recv()).await {
        match received {
            Ok(record) => records.push(record.detach()),
            Err(KafkaError::PartitionEOF(_)) => {}
            Err(e) => panic!("reading {topic}: {e}"),
        }
    }
    records
}

/// A plain producer, as any client could make.
pub fn test_producer(kafka: &KafkaConfig) -> rdkafka::producer::FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .create()
        .expect("producer")
}

/// Publishes `event` through the contract's encoder, as Payments would.
pub async fn produce_event<E: shared_events::Event>(kafka: &KafkaConfig, event: &shared_events::Envelope<E>) {
    use rdkafka::producer::FutureRecord;

    let record = shared_events::encode(event).expect("encodes");
    let producer = test_producer(kafka);
    let topic = kafka.topics.name(record.topic);
    producer
        .send(
            FutureRecord::to(topic)
                .key(&record.key)
                .payload(&record.payload)
                .headers(record.headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("event delivered");
}

/// Produces a record as any client could, bypassing the contract's encoder.
pub async fn produce_raw(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    headers: &[(&str, &str)],
    payload: Option<&[u8]>,
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;

    let producer = test_producer(kafka);
    let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(*value),
        })
    });
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key("poison")
        .headers(headers);
    if let Some(payload) = payload {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("raw record delivered");
}

/// Kafka's own tools, of the broker's release, where they reach the test
/// broker: in its container (a testcontainers broker), or on this machine
/// for a broker `KAFKA_BOOTSTRAP_SERVERS` names (on the classpath `cargo
/// xtask kafka up` resolved in this checkout).
#[derive(Debug, Clone)]
pub struct KafkaTools {
    /// Where the tools may do anything (the operator's plaintext listener).
    pub plaintext: String,
    /// Where they log in as a user (SASL/SCRAM).
    pub sasl: String,
}

impl KafkaTools {
    pub async fn get(broker: &Broker) -> Self {
        if testkit::kafka_named() {
            Self {
                plaintext: broker.bootstrap_servers.clone(),
                sasl: testkit::kafka_sasl_bootstrap_servers().await,
            }
        } else {
            Self {
                plaintext: testkit::KAFKA_CONTAINER_TOOLS_BOOTSTRAP.to_owned(),
                sasl: testkit::KAFKA_CONTAINER_TOOLS_SASL_BOOTSTRAP.to_owned(),
            }
        }
    }

    /// The operator's target.
    pub fn operator(&self) -> kafka_ops::access::Target {
        kafka_ops::access::Target {
            bootstrap: self.plaintext.clone(),
            command_config: None,
        }
    }

    /// Runs `runs` at once, and returns what they printed.
    pub async fn run(&self, runs: &[kafka_ops::access::Invocation]) -> kafka_ops::Result<String> {
        let script = kafka_ops::access::script(runs, "/opt/kafka/bin");
        if let Some(result) =
            testkit::exec_in_kafka_container(vec!["bash".to_owned(), "-c".to_owned(), script]).await
        {
            return result.map_err(kafka_ops::Error::Access);
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace");
        let classpath = std::fs::read_to_string(root.join("target/xtask/kafka/classpath.txt"))
            .expect("the local broker's classpath: run `cargo xtask kafka up` in this checkout");
        kafka_ops::access::LocalTools::new(root, classpath.trim().to_owned())
            .run(runs)
            .await
    }
}
