//! The three real binaries as separate processes, as docker compose runs them.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use integration_tests::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rdkafka::Message;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The service binary `name`, as cargo builds it for this test's profile in
/// `target/<profile>/` (the parent of this test's `deps/` directory).
///
/// The first call builds the three services, so a plain `cargo test` runs
/// the binaries of the code under test, never stale ones: cargo builds a
/// test's own package's binaries for it, but not other packages'. When they
/// are up to date (`cargo xtask test` builds them first, with the same
/// command) that takes a second.
fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target dir");
    BUILT.get_or_init(|| {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile directory above {}", exe.display()),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        // This package is at the top of the workspace.
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = std::process::Command::new(&cargo)
            .current_dir(&workspace)
            .args(["build", "--profile", profile])
            .args(SERVICES.iter().flat_map(|service| ["--package", service]))
            .status()
            .unwrap_or_else(|e| panic!("cannot run {cargo}: {e}"));
        assert!(status.success(), "building the services failed ({status})");
    });
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing after building it", path.display());
    path
}

/// The service packages, each with a binary of the same name.
const SERVICES: [&str; 3] = ["payments-service", "service-a", "service-b"];

/// A service process with its stderr and stdout lines forwarded to a channel.
pub(crate) struct Process {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    pub(crate) fn start(name: &str, envs: &[(&str, &str)]) -> Self {
        Self::start_binary(&binary(name), name, envs)
    }

    /// The program at `path`, called `name` in the test's output.
    pub(crate) fn start_binary(path: &Path, name: &str, envs: &[(&str, &str)]) -> Self {
        // Each service's credentials first, so a test can replace them.
        let credentials = integration_tests::credentials().env_of(name);
        let mut child = Command::new(path)
            .envs(credentials.iter().map(|(k, v)| (k, v.as_str())))
            .envs(envs.iter().copied())
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, lines) = mpsc::unbounded_channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let (tx, name) = (tx.clone(), name.to_owned());
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    eprintln!("[{name}] {line}");
                    let _ = tx.send(line);
                }
            });
        }
        Self { child, lines }
    }

    /// The address the service logged it listens on (it was given port 0).
    pub(crate) async fn address(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .expect("service logs its address in time")
                .expect("service is running");
            if let Some((_, rest)) = line.split_once("addr=") {
                return rest.split_whitespace().next().expect("address").to_owned();
            }
        }
    }

    /// Waits until the service logs a line containing `needle`.
    async fn wait_for_line(&mut self, needle: &str) {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no log line with {needle:?} within {PATIENCE:?}"))
                .expect("service is running");
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Every line logged since the last read, without waiting.
    pub(crate) fn lines_so_far(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.lines.try_recv().ok()).collect()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) and returns at once.
    fn send(&self, signal: Signal) {
        let pid = self.child.id().expect("running");
        let pid = Pid::from_raw(i32::try_from(pid).expect("a pid"));
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to {pid}: {e}"));
    }

    /// Waits for the process to exit by itself; its status and every line it
    /// logged.
    async fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("exits in time")
            .expect("exit status");
        let mut lines = Vec::new();
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), self.lines.recv()).await {
            lines.push(line);
        }
        (status, lines)
    }

    /// SIGTERM, then the exit status.
    pub(crate) async fn terminate(self) -> std::process::ExitStatus {
        self.signal(Signal::SIGTERM).await
    }

    /// SIGTERM, then the exit status and every line logged since
    /// [`Process::address`].
    async fn terminate_collecting_lines(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            lines.push(line);
        }
        let mut rest = std::mem::replace(&mut self.lines, mpsc::unbounded_channel().1);
        let status = self.terminate().await;
        // The forwarding tasks end when the process's pipes close.
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), rest.recv()).await {
            lines.push(line);
        }
        (status, lines)
    }

    /// SIGKILL: no shutdown code runs at all.
    async fn kill(self) -> std::process::ExitStatus {
        self.signal(Signal::SIGKILL).await
    }

    async fn signal(mut self, signal: Signal) -> std::process::ExitStatus {
        self.send(signal);
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s of the signal")
            .expect("exit status")
    }
}

/// The environment that points a service at this test's broker and topics.
pub(crate) fn kafka_env(kafka: &service_kit::config::KafkaConfig) -> [(&'static str, &str); 3] {
    [
        ("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap_servers.as_str()),
        ("TOPIC_NOTIFICATIONS", kafka.topics.notifications.as_str()),
        ("TOPIC_STATE", kafka.topics.state.as_str()),
    ]
}

#[tokio::test]
async fn the_three_binaries_work_together_and_stop_cleanly_on_sigterm() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = integration_tests::http_client();
    let (group_a, group_b) = (unique("service-a"), unique("service-b"));
    let common = kafka_env(&kafka);

    let payments_env = [&common[..], &[("DATABASE_URL", database.url.as_str())]].concat();
    let mut payments = Process::start("payments-service", &payments_env);
    let payments_url = format!("http://{}", payments.address().await);
    let audit = TestDatabase::empty().await;
    let mut service_a = Process::start(
        "service-a",
        &[
            &common[..],
            &[
                ("GROUP_ID", group_a.as_str()),
                ("DATABASE_URL", audit.url.as_str()),
            ],
        ]
        .concat(),
    );
    let records = TestDatabase::empty().await;
    let service_b_env = [
        &common[..],
        &[
            ("GROUP_ID", group_b.as_str()),
            ("PAYMENTS_URL", payments_url.as_str()),
            ("DATABASE_URL", records.url.as_str()),
        ],
    ]
    .concat();
    let mut service_b = Process::start("service-b", &service_b_env);
    let a_url = format!("http://{}", service_a.address().await);
    let b_url = format!("http://{}", service_b.address().await);

    let response = http
        .post(format!("{payments_url}/payments"))
        .json(&payment_request("c-7", 4200))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let payment: serde_json::Value = response.json().await.expect("json");
    let id = payment["payment_id"].as_str().expect("id");

    eventually("service-a has the payment", || async {
        (get_json(&http, &format!("{a_url}/payments/{id}")).await? == payment).then_some(())
    })
    .await;
    eventually("service-b recorded the callback", || async {
        (get_json(&http, &format!("{b_url}/payments/{id}")).await?["payment"] == payment).then_some(())
    })
    .await;
    for url in [&payments_url, &a_url, &b_url] {
        let health = get_json(&http, &format!("{url}/health")).await.expect("healthy");
        assert_eq!(health["status"], "ok");
    }

    for (name, process) in [
        ("service-b", service_b),
        ("service-a", service_a),
        ("payments", payments),
    ] {
        let (status, lines) = process.terminate_collecting_lines().await;
        assert!(status.success(), "{name} exited with {status} after SIGTERM");
        // A normal run is quiet at the default level: no ERROR (ServiceA's
        // `/ready` answers 503 until its copy caught up, as expected), and
        // no line per payment or record (those are at `debug`).
        let loud: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains("ERROR") || line.contains(id))
            .collect();
        assert!(loud.is_empty(), "{name} logged at info: {loud:#?}");
    }
}

/// The OTLP export path, against a collector that only records what it is
/// sent: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, Payments posts its spans
/// as OTLP/HTTP protobuf to `<endpoint>/v1/traces`, the last of them when it
/// stops. (Without it, the tracing test shows that the spans link up.)
#[tokio::test]
async fn with_an_otlp_endpoint_payments_exports_its_spans() {
    use axum::http::{HeaderMap, header};

    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let (sent, mut received) = mpsc::unbounded_channel::<(Option<String>, Vec<u8>)>();
    let collector = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = sent.send((content_type, body.to_vec()));
            // An empty ExportTraceServiceResponse: everything accepted.
            async {
                (
                    [(header::CONTENT_TYPE, "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let env = [
        &kafka_env(&kafka)[..],
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ],
    ]
    .concat();
    let mut payments = Process::start("payments-service", &env);
    let url = format!("http://{}", payments.address().await);
    let response = integration_tests::http_client()
        .post(format!("{url}/payments"))
        .json(&payment_request("c-otlp", 700))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let status = payments.terminate().await;
    assert!(status.success(), "stopped cleanly: {status}");

    // Every batch it posted, until the one with the request's spans.
    let mut batches = 0;
    loop {
        let (content_type, body) = tokio::time::timeout(PATIENCE, received.recv())
            .await
            .expect("spans exported in time")
            .expect("the collector runs");
        batches += 1;
        assert_eq!(content_type.as_deref(), Some("application/x-protobuf"));
        // Protobuf keeps strings as they are: the resource's service name
        // and the spans' names can be found in the bytes.
        let has = |text: &str| body.windows(text.len()).any(|w| w == text.as_bytes());
        assert!(has("payments-service"), "the resource names the service");
        if has("POST /payments") && has("INSERT events") {
            break;
        }
        assert!(batches < 100, "no batch with the request's spans");
    }
}

/// Ids of the events stored in `database`, and of the notifications on the
/// topic (each notification's `ce_id` is its stored event's id).
async fn stored_and_published(
    database: &TestDatabase,
    kafka: &service_kit::config::KafkaConfig,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let stored: BTreeSet<String> = database
        .store
        .read_all(0, 100_000)
        .await
        .expect("read")
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    // Repeats (a relay killed between the broker's ack and its checkpoint
    // publishes again) count once; wait until every stored event is there.
    let published = eventually("every stored event is published", || async {
        let published: BTreeSet<String> =
            all_records(kafka, &kafka.topics.notifications, Duration::from_millis(500))
                .await
                .iter()
                .filter_map(|r| header(r, "ce_id"))
                .collect();
        stored.is_subset(&published).then_some(published)
    })
    .await;
    (stored, published)
}

#[tokio::test]
async fn events_committed_before_a_sigkill_are_published_after_the_restart() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = integration_tests::http_client();
    let env = [&kafka_env(&kafka)[..], &[("DATABASE_URL", database.url.as_str())]].concat();

    // An instance that commits but never gets to publish.
    let mut payments = Process::start(
        "payments-service",
        &[&env[..], &[("OUTBOX_RELAY", "false")]].concat(),
    );
    let url = format!("http://{}", payments.address().await);
    for i in 0..30 {
        let response = http
            .post(format!("{url}/payments"))
            .json(&payment_request("c-11", 100 + i))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        if i % 3 == 0 {
            let payment: serde_json::Value = response.json().await.expect("json");
            let id = payment["payment_id"].as_str().expect("id");
            let refund = http
                .post(format!("{url}/payments/{id}/refunds"))
                .json(&serde_json::json!({"amount": 50, "reason": "damaged"}))
                .send()
                .await
                .expect("POST refund");
            assert_eq!(refund.status(), reqwest::StatusCode::CREATED);
        }
    }
    let status = payments.kill().await;
    assert!(!status.success(), "killed: {status}");
    let nothing = all_records(&kafka, &kafka.topics.notifications, Duration::from_secs(1)).await;
    assert!(nothing.is_empty(), "nothing was published before the kill");

    let restarted = Process::start("payments-service", &env);
    let (stored, published) = stored_and_published(&database, &kafka).await;
    let missing = stored.difference(&published).count();
    eprintln!(
        "outbox after SIGKILL: {} events committed, {} published, {missing} missing",
        stored.len(),
        published.len()
    );
    assert_eq!(stored.len(), 40);
    assert_eq!(missing, 0);
    assert!(restarted.terminate().await.success());
}

#[tokio::test]
async fn a_sigkill_while_publishing_under_load_loses_nothing() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let env = [&kafka_env(&kafka)[..], &[("DATABASE_URL", database.url.as_str())]].concat();
    let mut payments = Process::start("payments-service", &env);
    let url = format!("http://{}", payments.address().await);

    // Eight clients post until the process dies under them.
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let http = integration_tests::http_client();
                let mut accepted = 0;
                for i in 0..200 {
                    let sent = http
                        .post(format!("{url}/payments"))
                        .json(&payment_request("c-12", 1 + i))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == reqwest::StatusCode::CREATED => accepted += 1,
                        _ => break,
                    }
                }
                (c, accepted)
            })
        })
        .collect();
    eventually("some payments are stored", || async {
        (database.store.read_all(0, 100).await.ok()?.len() >= 100).then_some(())
    })
    .await;
    assert!(!payments.kill().await.success());
    let mut accepted = 0;
    for client in clients {
        accepted += client.await.expect("client").1;
    }

    let restarted = Process::start("payments-service", &env);
    let (stored, published) = stored_and_published(&database, &kafka).await;
    let missing = stored.difference(&published).count();
    eprintln!(
        "outbox after SIGKILL under load: {accepted} answered 201, {} events committed, {} published, {missing} missing",
        stored.len(),
        published.len()
    );
    assert!(stored.len() >= accepted, "every 201 was committed");
    assert_eq!(missing, 0);
    assert!(restarted.terminate().await.success());
}

/// What a stop-one-of-two-instances run counted.
#[derive(Debug)]
struct Tally {
    sent: usize,
    recorded: usize,
    lost: usize,
    twice: usize,
    /// Notifications the surviving instance received again and recognised.
    redelivered: usize,
}

/// Sends 2,000 payments while two ServiceB processes share the group, and
/// stops one of them with `signal` halfway.
async fn stop_one_of_two_service_b(signal: Signal) -> Tally {
    const PAYMENTS: usize = 2000;
    const CONCURRENCY: usize = 16;
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let records = TestDatabase::empty().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let payments_url = payments.url("");
    let group = unique("service-b");
    let env = [
        &kafka_env(&kafka)[..],
        &[
            ("GROUP_ID", group.as_str()),
            ("PAYMENTS_URL", payments_url.as_str()),
            ("DATABASE_URL", records.url.as_str()),
            // A killed member is noticed after 6 s, the broker's minimum.
            ("KAFKA_SESSION_TIMEOUT_MS", "6000"),
            ("RETRY_INITIAL_MS", "50"),
            ("RETRY_MAX_MS", "500"),
        ],
    ]
    .concat();
    let mut first = Process::start("service-b", &env);
    let mut second = Process::start("service-b", &env);
    first.address().await;
    second.address().await;
    let mut first = Some(first);
    let (k, g) = (kafka.clone(), group.clone());
    eventually("both instances joined the group", || {
        let (k, g) = (k.clone(), g.clone());
        async move {
            let members = tokio::task::spawn_blocking(move || {
                use rdkafka::consumer::Consumer;
                let outsider = service_kit::kafka::outsider(&k, "test", &g).ok()?;
                let list = outsider
                    .fetch_group_list(Some(&g), Duration::from_secs(10))
                    .ok()?;
                Some(list.groups().iter().map(|g| g.members().len()).sum::<usize>())
            })
            .await
            .ok()??;
            (members == 2).then_some(())
        }
    })
    .await;

    let http = integration_tests::http_client();
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut sends = tokio::task::JoinSet::new();
    let mut stopped = None;
    for n in 0..PAYMENTS {
        if n == PAYMENTS / 2
            && let Some(first) = first.take()
        {
            // Stopped while the rest is sent.
            stopped = Some(tokio::spawn(async move { first.signal(signal).await }));
        }
        let permit = std::sync::Arc::clone(&semaphore)
            .acquire_owned()
            .await
            .expect("permit");
        let (http, url) = (http.clone(), payments.url("/payments"));
        sends.spawn(async move {
            let response = http
                .post(url)
                .json(&payment_request("c-load", 100 + i64::try_from(n).expect("small")))
                .send()
                .await
                .expect("POST");
            assert_eq!(response.status(), reqwest::StatusCode::CREATED);
            drop(permit);
            let payment: serde_json::Value = response.json().await.expect("json");
            payment["payment_id"].as_str().expect("id").to_owned()
        });
    }
    let mut sent = BTreeSet::new();
    while let Some(id) = sends.join_next().await {
        sent.insert(id.expect("send task"));
    }
    let status = stopped.expect("stopped halfway").await.expect("signal task");
    if signal == Signal::SIGTERM {
        assert!(status.success(), "SIGTERM: clean exit, got {status}");
    }

    let pool = records.store.pool().clone();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&pool).await.expect("count");
            usize::try_from(n).expect("count")
        }
    };
    let deadline = tokio::time::Instant::now() + 3 * PATIENCE;
    while count("SELECT count(*) FROM payment_records").await < sent.len()
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recorded_ids: BTreeSet<String> =
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT payment_id FROM payment_records")
            .fetch_all(&pool)
            .await
            .expect("ids")
            .into_iter()
            .map(|id| id.to_string())
            .collect();
    let twice = count("SELECT count(*) FROM payment_records WHERE notifications <> 1").await;
    let (status, lines) = second.terminate_collecting_lines().await;
    assert!(status.success(), "{status}");
    let tally = Tally {
        sent: sent.len(),
        recorded: recorded_ids.len(),
        lost: sent.difference(&recorded_ids).count(),
        twice,
        redelivered: lines.iter().filter(|l| l.contains("handled before")).count(),
    };
    payments.stop().await;
    println!(
        "SIG{signal} one of two ServiceB instances midway: sent {}, recorded {}, lost {}, recorded twice {}, \
         delivered again and recognised {}",
        tally.sent, tally.recorded, tally.lost, tally.twice, tally.redelivered
    );
    tally
}

#[tokio::test]
async fn stopping_one_of_two_service_b_with_sigterm_records_every_payment_once() {
    let tally = stop_one_of_two_service_b(Signal::SIGTERM).await;
    assert_eq!((tally.sent, tally.lost, tally.twice), (2000, 0, 0), "{tally:?}");
    assert_eq!(tally.recorded, tally.sent);
}

#[tokio::test]
async fn killing_one_of_two_service_b_with_sigkill_records_every_payment_once() {
    let tally = stop_one_of_two_service_b(Signal::SIGKILL).await;
    assert_eq!((tally.sent, tally.lost, tally.twice), (2000, 0, 0), "{tally:?}");
    assert_eq!(tally.recorded, tally.sent);
}

/// Two relays. The leader is frozen (SIGSTOP) in the middle of a batch while
/// it publishes under load; the other takes over and publishes newer states;
/// the writers stop, so nothing newer can cover a stale state; then the
/// frozen one wakes up (SIGCONT) with its batch in hand. It tries to go on
/// and is refused (it was fenced off, and its lease is gone), so the last
/// state of every payment on the compacted topic is its newest.
#[tokio::test]
async fn a_frozen_relay_woken_after_another_took_over_cannot_publish_an_older_state() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = integration_tests::http_client();
    let env = [&kafka_env(&kafka)[..], &[("DATABASE_URL", database.url.as_str())]].concat();
    // The frozen relay's batches take a second to build, so that it can be
    // frozen in the middle of one: right after it says it is building one.
    let slowed = [&env[..], &[("OUTBOX_TEST_BATCH_PAUSE_MS", "1000")]].concat();

    let mut frozen = Process::start("payments-service", &slowed);
    let frozen_url = format!("http://{}", frozen.address().await);
    frozen.wait_for_line("outbox relay publishing").await;
    let mut other = Process::start("payments-service", &env);
    let url = format!("http://{}", other.address().await);

    let mut ids = Vec::new();
    for _ in 0..20 {
        let response = http
            .post(format!("{url}/payments"))
            .json(&payment_request("c-fence", 100_000))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), reqwest::StatusCode::CREATED);
        let payment: serde_json::Value = response.json().await.expect("json");
        ids.push(payment["payment_id"].as_str().expect("id").to_owned());
    }
    // Four clients refund 1 at a time, round the payments, until stopped:
    // every refund is a newer state of its payment.
    let refunds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = service_kit::CancellationToken::new();
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (url, ids, refunds, stop) = (url.clone(), ids.clone(), refunds.clone(), stop.clone());
            tokio::spawn(async move {
                let http = integration_tests::http_client();
                for id in ids.iter().cycle().skip(c * 5) {
                    if stop.is_cancelled() {
                        break;
                    }
                    let response = http
                        .post(format!("{url}/payments/{id}/refunds"))
                        .json(&serde_json::json!({"amount": 1, "reason": "damaged"}))
                        .send()
                        .await
                        .expect("POST refund");
                    // 409: another client refunded the same payment first.
                    if response.status() == reqwest::StatusCode::CREATED {
                        refunds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    let refunded = |n: usize| {
        let refunds = refunds.clone();
        async move {
            eventually(&format!("{n} refunds"), || async {
                (refunds.load(std::sync::atomic::Ordering::SeqCst) >= n).then_some(())
            })
            .await;
        }
    };

    refunded(150).await;
    frozen.lines_so_far();
    frozen.wait_for_line("building a batch").await;
    frozen.send(Signal::SIGSTOP);
    other.wait_for_line("outbox relay publishing").await;
    let taken_over = refunds.load(std::sync::atomic::Ordering::SeqCst);
    refunded(taken_over + 150).await;
    stop.cancel();
    for client in clients {
        client.await.expect("client");
    }
    // Everything published by the new leader first: nothing newer comes
    // after what the frozen one may try.
    eventually("the new leader publishes every event", || async {
        metric_sum_at(&http, &format!("{url}/metrics"), "outbox_unpublished_events", "")
            .await
            .filter(|&unpublished| unpublished == 0)
    })
    .await;
    frozen.send(Signal::SIGCONT);
    let refused = eventually("the woken relay tries its batch and is refused", || async {
        metric_sum_at(
            &http,
            &format!("{frozen_url}/metrics"),
            "outbox_relay_failed_batches_total",
            "",
        )
        .await
        .filter(|&failed| failed >= 1)
    })
    .await;

    let mut newest = HashMap::new();
    for id in &ids {
        let payment = get_json(&http, format!("{url}/payments/{id}"))
            .await
            .expect("payment");
        newest.insert(id.clone(), payment["version"].as_u64().expect("version"));
    }
    // Until every payment's last published state is its newest, or PATIENCE
    // is up: a stale state published last stays last.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stale = loop {
        let mut last = HashMap::new();
        for record in all_records(&kafka, &kafka.topics.state, Duration::from_millis(500)).await {
            let (Some(key), Some(payload)) = (record.key(), record.payload()) else {
                continue;
            };
            let state: serde_json::Value = serde_json::from_slice(payload).expect("state JSON");
            last.insert(
                String::from_utf8_lossy(key).into_owned(),
                state["version"].as_u64(),
            );
        }
        let stale: Vec<String> = newest
            .iter()
            .filter(|(id, version)| last.get(*id).copied().flatten() != Some(**version))
            .map(|(id, version)| format!("{id}: last published {:?}, newest {version}", last.get(id)))
            .collect();
        if stale.is_empty() || tokio::time::Instant::now() > deadline {
            break stale;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "fencing: {} refunds; the frozen relay had {refused} refused or aborted batches after waking; {} stale",
        refunds.load(std::sync::atomic::Ordering::SeqCst),
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "older states published last:\n{}",
        stale.join("\n")
    );

    assert!(other.terminate().await.success());
    assert!(frozen.terminate().await.success());
}

/// A transaction left open in the event store's database holds publication
/// back: once the oldest unpublished event is older than
/// `OUTBOX_LAG_WARN_MS`, Payments says so in its log, naming the holding
/// transaction; once it ends, that the outbox caught up.
#[tokio::test]
async fn payments_warns_when_its_outbox_lags_past_the_threshold() {
    use sqlx::Connection;

    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let http = integration_tests::http_client();
    let env = [
        &kafka_env(&kafka)[..],
        &[
            ("DATABASE_URL", database.url.as_str()),
            ("OUTBOX_LAG_WARN_MS", "1000"),
        ],
    ]
    .concat();
    let mut payments = Process::start("payments-service", &env);
    let url = format!("http://{}", payments.address().await);
    payments.wait_for_line("outbox relay publishing").await;

    let mut open = sqlx::PgConnection::connect(&database.url).await.expect("connect");
    sqlx::query("BEGIN").execute(&mut open).await.expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut open)
        .await
        .expect("xid");
    let response = http
        .post(format!("{url}/payments"))
        .json(&payment_request("c-lag", 100))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    payments.wait_for_line("outbox lagging").await;
    sqlx::query("ROLLBACK")
        .execute(&mut open)
        .await
        .expect("rollback");
    payments.wait_for_line("outbox caught up").await;
    assert!(payments.terminate().await.success());
}

/// ServiceA is killed after it audited some notifications; its group resumes
/// after them, so they are never handed to it again. Restarted on the same
/// database, it still lists every notification it ever handled.
#[tokio::test]
async fn service_a_lists_every_notification_it_handled_after_a_sigkill() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::empty().await;
    let http = integration_tests::http_client();
    let group = unique("service-a");
    let env = [
        &kafka_env(&kafka)[..],
        &[
            ("GROUP_ID", group.as_str()),
            ("DATABASE_URL", database.url.as_str()),
        ],
    ]
    .concat();

    let mut service_a = Process::start("service-a", &env);
    let url = format!("http://{}", service_a.address().await);
    let mut ids = publish_notifications(&kafka, 30).await;
    let audited = |url: String, count: usize| {
        let http = http.clone();
        async move {
            eventually(&format!("{count} notifications in the audit"), || async {
                let mut ids = Vec::new();
                let mut next = Some(format!("{url}/audit?limit=7"));
                while let Some(page) = next {
                    let response = http.get(&page).send().await.ok()?;
                    next = response
                        .headers()
                        .get("link")
                        .and_then(|l| l.to_str().ok())
                        .and_then(|l| l.strip_prefix('<')?.split_once('>'))
                        .map(|(target, _)| format!("{url}{target}"));
                    let entries: serde_json::Value = response.json().await.ok()?;
                    ids.extend(
                        entries
                            .as_array()?
                            .iter()
                            .filter_map(|e| Some(e["payment_id"].as_str()?.to_owned())),
                    );
                }
                (ids.len() >= count).then_some(ids)
            })
            .await
        }
    };
    audited(url.clone(), 30).await;
    // The group has committed past them (the background commit runs every
    // 5 s by default; the kill comes after it).
    eventually("the group committed what it audited", || async {
        use rdkafka::consumer::Consumer;
        use service_kit::kafka::{outsider, partition_count, watermarks};
        let topic = &kafka.topics.notifications;
        let outsider = outsider(&kafka, "test", &group).ok()?;
        let mut partitions = rdkafka::TopicPartitionList::new();
        for partition in 0..partition_count(&outsider, topic).ok()? {
            partitions.add_partition(topic, partition);
        }
        let committed = outsider
            .committed_offsets(partitions, Duration::from_secs(10))
            .ok()?;
        let at_end = |p: &rdkafka::topic_partition_list::TopicPartitionListElem| {
            let (low, end) = watermarks(&outsider, topic, p.partition()).unwrap_or((0, i64::MAX));
            match p.offset() {
                rdkafka::Offset::Offset(at) => at >= end,
                _ => low == end,
            }
        };
        committed.elements().iter().all(at_end).then_some(())
    })
    .await;
    assert!(!service_a.kill().await.success());

    let mut restarted = Process::start("service-a", &env);
    let url = format!("http://{}", restarted.address().await);
    ids.extend(publish_notifications(&kafka, 10).await);
    let listed = audited(url, 40).await;
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    listed_sorted.dedup();
    ids.sort();
    assert_eq!(listed.len(), 40, "each notification once");
    assert_eq!(
        listed_sorted, ids,
        "every notification handled, before and after the kill"
    );
    assert!(restarted.terminate().await.success());
}

/// ServiceB's database stops answering (a partition) while it handles a
/// notification. SIGTERM: it stops within its shutdown timeout anyway, and
/// has committed the offsets of what it did handle, so only the stuck
/// notification is handled again after a restart.
#[tokio::test]
async fn service_b_stops_within_its_shutdown_timeout_while_its_database_hangs() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&kafka, &database.url).await;
    let http = integration_tests::http_client();
    let records = TestDatabase::empty().await;
    let proxy = integration_tests::proxy::GatedProxy::start(server_of(&records.url).await).await;
    proxy.open();
    let group = unique("service-b");
    let (payments_url, records_url) = (payments.url(""), via(&records.url, proxy.addr));
    let env = [
        &kafka_env(&kafka)[..],
        &[
            ("GROUP_ID", group.as_str()),
            ("PAYMENTS_URL", payments_url.as_str()),
            ("DATABASE_URL", records_url.as_str()),
            ("SHUTDOWN_TIMEOUT_MS", "3000"),
            // Only the shutdown commits: nothing in the background meanwhile.
            ("KAFKA_COMMIT_INTERVAL_MS", "600000"),
        ],
    ]
    .concat();
    let mut service_b = Process::start("service-b", &env);
    service_b.address().await;

    for amount in 1..=10 {
        create_payment(&http, &payments, &payment_request("c-stop", amount)).await;
    }
    let pool = records.store.pool().clone();
    eventually("ServiceB recorded the first ten", || async {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_records")
            .fetch_one(&pool)
            .await
            .ok()?;
        (recorded == 10).then_some(())
    })
    .await;
    proxy.freeze();
    let stuck = create_payment(&http, &payments, &payment_request("c-stop", 11)).await;
    let stuck = stuck["payment_id"].as_str().expect("id").to_owned();
    eventually("the eleventh is published", || async {
        has_key(&kafka, &kafka.topics.notifications, &stuck)
            .await
            .then_some(())
    })
    .await;
    // ServiceB fetched it and hangs on the database in its handler.
    eventually("ServiceB is stuck on its database", || async {
        (proxy.sent_while_frozen() > 0).then_some(())
    })
    .await;

    let signalled = tokio::time::Instant::now();
    let status = service_b.terminate().await;
    eprintln!(
        "shutdown with its database partitioned: {:.1} s after SIGTERM (SHUTDOWN_TIMEOUT_MS=3000), {status}",
        signalled.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{status}");

    // Restarted, with its database back: handed only what it had not handled.
    proxy.open();
    let mut restarted = Process::start("service-b", &env);
    let url = format!("http://{}", restarted.address().await);
    eventually("ServiceB recorded the eleventh", || async {
        let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM payment_records")
            .fetch_one(&pool)
            .await
            .ok()?;
        (recorded == 11).then_some(())
    })
    .await;
    let in_group = format!("group=\"{group}\"");
    let metrics_url = format!("{url}/metrics");
    let handled_again = eventually("the restarted instance's metrics", || {
        metric_sum_at(&http, &metrics_url, "consumer_records_handled_total", &in_group)
    })
    .await;
    assert_eq!(
        handled_again, 1,
        "only the notification it was stuck on is handled again"
    );
    assert!(restarted.terminate().await.success());
    payments.stop().await;
}

/// A service started without its broker or its database gives up after
/// STARTUP_TIMEOUT_MS, saying which it could not reach, where, and how to
/// start it.
#[tokio::test]
async fn a_service_without_its_broker_or_database_says_what_to_start() {
    let broker = Broker::get().await;
    let kafka = kafka_config(&broker).await;
    let database = TestDatabase::create().await;
    let (server, _) = database.url.rsplit_once('/').expect("a database in the URL");
    let missing = format!("{server}/no_such_database");
    let nowhere = "postgres://postgres@127.0.0.1:1/postgres";
    let quick = ("STARTUP_TIMEOUT_MS", "1500");
    // ServiceA's own: Payments' database holds Payments' schema.
    let service_a_database = TestDatabase::empty().await;
    // ServiceB's role, pointed at Payments' database: not its own.
    let service_b_database = TestDatabase::empty().await;
    let into_the_store = service_b_database.url.replace(
        &format!("/{}?", service_b_database.name),
        &format!("/{}?", database.name),
    );
    assert_ne!(into_the_store, service_b_database.url);

    let good_kafka = kafka_env(&kafka);
    let no_broker = [
        ("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1"),
        ("TOPIC_NOTIFICATIONS", kafka.topics.notifications.as_str()),
        ("TOPIC_STATE", kafka.topics.state.as_str()),
    ];
    // (service, its broker settings, its DATABASE_URL, what it must say)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a [&'a str]);
    let cases: [Case<'_>; 5] = [
        (
            "payments-service",
            &good_kafka,
            nowhere,
            &["cannot reach PostgreSQL at 127.0.0.1:1", "cargo xtask pg up"],
        ),
        (
            "service-b",
            &good_kafka,
            &missing,
            &["has no database `no_such_database`", "cargo xtask pg up"],
        ),
        (
            "service-b",
            &good_kafka,
            &into_the_store,
            &["refused a connection", "permission denied for database"],
        ),
        (
            "payments-service",
            &no_broker,
            &database.url,
            &[
                "cannot reach the Kafka broker at 127.0.0.1:1",
                "cargo xtask kafka up",
            ],
        ),
        (
            "service-a",
            &no_broker,
            &service_a_database.url,
            &[
                "cannot reach the Kafka broker at 127.0.0.1:1",
                "docker compose up",
            ],
        ),
    ];
    for (service, kafka_env, database_url, says) in cases {
        let env = [kafka_env, &[("DATABASE_URL", database_url), quick]].concat();
        let (status, lines) = Process::start(service, &env).finish().await;
        assert!(!status.success(), "{service} without what it needs: {status}");
        let output = lines.join("\n");
        for said in says {
            assert!(output.contains(said), "{service} should say {said:?}:\n{output}");
        }
    }
}

#[tokio::test]
async fn a_service_without_its_credentials_says_how_to_make_them_and_never_echoes_one() {
    for (service, var) in [
        ("payments-service", "HTTP_CALLERS"),
        ("service-a", "HTTP_CALLERS"),
        ("service-b", "PAYMENTS_TOKEN"),
        ("service-b", "HTTP_CALLERS"),
    ] {
        let (status, lines) = Process::start(service, &[(var, "")]).finish().await;
        assert!(!status.success(), "{service} without {var}: {status}");
        let output = lines.join("\n");
        for said in [var, "not set", "cargo xtask credentials"] {
            assert!(output.contains(said), "{service} should say {said:?}:\n{output}");
        }
    }
    let secret = "a-token-too-short";
    let (status, lines) = Process::start("service-b", &[("PAYMENTS_TOKEN", secret)])
        .finish()
        .await;
    assert!(!status.success(), "a malformed token: {status}");
    let output = lines.join("\n");
    assert!(
        output.contains("PAYMENTS_TOKEN") && output.contains("at least 32"),
        "{output}"
    );
    assert!(!output.contains(secret), "the value is not shown:\n{output}");

    // A Kafka user without its password, or the other way round.
    for (set, missing) in [
        ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"),
        ("KAFKA_SASL_PASSWORD", "KAFKA_SASL_USERNAME"),
    ] {
        let (status, lines) = Process::start("service-a", &[(set, "service-a")]).finish().await;
        assert!(!status.success(), "{set} alone: {status}");
        let output = lines.join("\n");
        assert!(
            output.contains(missing) && output.contains("not set"),
            "{set} alone should name {missing}:\n{output}"
        );
    }
    // A login that fails (the broker's plaintext listener takes none) ends
    // the start, and no line shows the password.
    let broker = Broker::get().await;
    let database = TestDatabase::empty().await;
    let password = "kafka-password-never-logged-0123456789";
    let (status, lines) = Process::start(
        "service-a",
        &[
            ("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap_servers),
            ("DATABASE_URL", &database.url),
            ("KAFKA_SASL_USERNAME", "service-a"),
            ("KAFKA_SASL_PASSWORD", password),
            ("STARTUP_TIMEOUT_MS", "3000"),
        ],
    )
    .finish()
    .await;
    assert!(!status.success(), "a login refused: {status}");
    let output = lines.join("\n");
    assert!(
        output.contains("kafka_user=service-a") && output.contains("cannot reach the Kafka broker"),
        "{output}"
    );
    assert!(!output.contains(password), "the password is not shown:\n{output}");
}
