//! `GET /health`, `GET /ready` and `GET /openapi.json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use service_kit::CancellationToken;
use service_kit::config::KafkaConfig;
use service_kit::http::{BrokerHealth, Readiness, health_router, ready_router};
use service_kit::kafka::Admin;
use tower::ServiceExt;

async fn get(router: &Router, uri: &str) -> (StatusCode, serde_json::Value) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, serde_json::from_slice(&body).expect("json"))
}

#[tokio::test]
async fn health_is_503_once_the_broker_did_not_answer_a_probe() {
    // Nothing listens on port 1.
    let kafka = KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".to_owned(),
        ..KafkaConfig::local()
    };
    let stop = CancellationToken::new();
    let (health, probe) =
        BrokerHealth::watch(Admin::new(&kafka, "health-test").expect("admin"), stop.clone());
    let probing = tokio::spawn(probe);
    let router = health_router(health.clone());
    while health.reachable() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = get(&router, "/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["broker"], "unreachable");
    stop.cancel();
    probing.await.expect("probe task").expect("stops cleanly");
}

#[tokio::test]
async fn health_answers_from_the_last_probe_without_a_broker_call_per_request() {
    let probes = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&probes);
    let stop = CancellationToken::new();
    let (health, probe) = BrokerHealth::probing(
        move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { false }
        },
        Duration::from_secs(3600),
        stop.clone(),
    );
    let probing = tokio::spawn(probe);
    while health.reachable() {
        tokio::task::yield_now().await;
    }
    let router = health_router(health);
    for _ in 0..50 {
        assert_eq!(get(&router, "/health").await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(probes.load(Ordering::SeqCst), 1, "one probe, fifty answers");
    stop.cancel();
    probing.await.expect("probe task").expect("stops cleanly");
}

#[tokio::test]
async fn ready_is_503_until_the_service_says_it_is_ready() {
    let ready = Arc::new(AtomicBool::new(false));
    let check = Arc::clone(&ready);
    let router = ready_router(Readiness::new(move || check.load(Ordering::SeqCst)));
    assert_eq!(
        get(&router, "/ready").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "starting"})
        )
    );
    ready.store(true, Ordering::SeqCst);
    assert_eq!(
        get(&router, "/ready").await,
        (StatusCode::OK, serde_json::json!({"status": "ready"}))
    );
}

#[tokio::test]
async fn the_openapi_document_is_served_as_json() {
    let document = utoipa::openapi::OpenApiBuilder::new()
        .info(utoipa::openapi::Info::new("a service", "1.0.0"))
        .build();
    let router: Router = service_kit::openapi::openapi_router(service_kit::openapi::to_json(document));
    let (status, body) = get(&router, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["openapi"], "3.1.0");
    assert_eq!(body["info"]["title"], "a service");
}

/// A service still starting answers `/ready` with 503, which is expected
/// (compose and orchestrators poll it): no ERROR line for it.
#[test]
fn a_ready_503_while_starting_logs_no_error() {
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);
    let router = service_kit::http::as_served(ready_router(Readiness::new(|| false)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (status, _) = runtime.block_on(get(&router, "/ready"));
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let logs = String::from_utf8(logs.0.lock().expect("lock").clone()).expect("utf-8");
    assert!(!logs.contains("ERROR"), "logged: {logs}");
}
