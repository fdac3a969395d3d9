//! `GET /health` when no broker answers.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use service_kit::config::KafkaConfig;
use service_kit::http::health_router;
use service_kit::kafka::Admin;
use tower::ServiceExt;

#[tokio::test]
async fn health_is_503_when_the_broker_does_not_answer() {
    // Nothing listens on port 1.
    let kafka = KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".to_owned(),
        ..KafkaConfig::local()
    };
    let router = health_router(Admin::new(&kafka, "health-test").expect("admin"));
    let response = router
        .oneshot(Request::get("/health").body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["broker"], "unreachable");
}
