//! The Kafka UI (the `kafka-ui` binary; `docker compose --profile
//! observability` runs it): the [`overview`] of the cluster as a page that
//! refreshes itself, since no off-the-shelf Kafka UI image is to be had here.
//!
//! - `GET /`: the page: the topics, the dead-letter topics' records, the
//!   consumer groups' lag; 503 with a page saying so when the broker does
//!   not answer;
//! - `GET /api/overview`: the same as JSON ([`Overview`]);
//! - `GET /health`: 200 `{"status":"ok"}` when the broker answers a metadata
//!   request within a few seconds, 503 otherwise.

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use service_kit::config::{ConfigError, KafkaConfig, var};
use service_kit::http::{ErrorBody, serve};
use service_kit::kafka::Admin;
use service_kit::lifecycle::stop_token;
use tokio::net::TcpListener;

use crate::error::Result;
use crate::overview::{Overview, overview};

/// The binary's name: its Kafka client id and its name in traces.
pub const SERVICE: &str = "kafka-ui";

/// How often the page reloads itself, in seconds.
const REFRESH_SECONDS: u32 = 5;

#[derive(Debug, Clone)]
pub struct Config {
    /// `HTTP_ADDR`: where to listen. Default `127.0.0.1:8090`.
    pub http_addr: SocketAddr,
    /// The cluster to show: `KAFKA_BOOTSTRAP_SERVERS` (default
    /// `127.0.0.1:9092`) and the other `KAFKA_*` settings.
    pub kafka: KafkaConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Ok(Self {
            http_addr: var("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8090)))?,
            kafka: KafkaConfig::from_env()?,
        })
    }
}

/// Serves the UI on `listener` until `shutdown` resolves, then lets the
/// requests in flight finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    Ok(serve(listener, app(config.kafka)?, stop_token(shutdown)).await?)
}

#[derive(Debug, Clone)]
struct AppState {
    kafka: KafkaConfig,
    admin: Admin,
}

/// The routes, for [`run`] and for tests without a socket.
pub fn app(kafka: KafkaConfig) -> Result<Router> {
    let admin = Admin::new(&kafka, SERVICE)?;
    Ok(Router::new()
        .route("/", get(page))
        .route("/api/overview", get(api_overview))
        .route("/health", get(health))
        .with_state(AppState { kafka, admin }))
}

/// The overview, or `None` (logged) when the broker did not give it.
async fn current(state: &AppState) -> Option<Overview> {
    overview(&state.kafka)
        .await
        .inspect_err(|e| tracing::warn!(error = %e, kafka = %state.kafka.bootstrap_servers, "no overview"))
        .ok()
}

#[tracing::instrument(skip(state))]
async fn page(State(state): State<AppState>) -> (StatusCode, Html<String>) {
    match current(&state).await {
        Some(overview) => (StatusCode::OK, Html(render(&overview))),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Html(render_unreachable(&state.kafka.bootstrap_servers)),
        ),
    }
}

#[tracing::instrument(skip(state))]
async fn api_overview(State(state): State<AppState>) -> Response {
    match current(&state).await {
        Some(overview) => Json(overview).into_response(),
        None => ErrorBody::new("broker_unreachable", "the Kafka broker did not answer; try again")
            .into_response(StatusCode::SERVICE_UNAVAILABLE),
    }
}

async fn health(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.admin.broker_reachable().await {
        (StatusCode::OK, Json(json!({ "status": "ok" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unreachable" })),
        )
    }
}

/// `text` safe to put in HTML, in an element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The page, around `body` (HTML already).
fn document(body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n<title>Kafka UI</title>\n\
         <style>\nbody {{ font-family: sans-serif; margin: 2em; }}\n\
         table {{ border-collapse: collapse; margin-bottom: 2em; }}\n\
         th, td {{ border: 1px solid #ccc; padding: 0.3em 0.8em; text-align: left; }}\n\
         td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         tr.dead-letter {{ background: #fdecea; }}\n</style>\n</head>\n<body>\n<h1>Kafka</h1>\n\
         {body}<p>Refreshes every {REFRESH_SECONDS} s.</p>\n</body>\n</html>\n"
    )
}

/// The page of `overview`.
pub fn render(overview: &Overview) -> String {
    let dead_letters: i64 = overview
        .topics
        .iter()
        .filter(|t| t.dead_letter)
        .map(|t| t.records)
        .sum();
    let topics: String = overview
        .topics
        .iter()
        .map(|t| {
            let (class, kind) = if t.dead_letter {
                (
                    " class=\"dead-letter\"",
                    format!("dead letters: {} record(s) a consumer gave up on", t.records),
                )
            } else {
                ("", String::new())
            };
            format!(
                "<tr{class}><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{kind}</td></tr>\n",
                escape(&t.name),
                t.partitions,
                t.records,
            )
        })
        .collect();
    let groups: String = overview
        .groups
        .iter()
        .flat_map(|g| {
            g.topics.iter().map(move |t| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td>\
                     <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                    escape(&g.name),
                    escape(&g.state),
                    g.members,
                    escape(&t.topic),
                    t.committed,
                    t.end,
                    t.lag,
                )
            })
        })
        .collect();
    document(&format!(
        "<p>{} topic(s); {dead_letters} dead letter(s) waiting in the dead-letter topics.</p>\n\
         <h2>Topics</h2>\n<table>\n\
         <tr><th>Topic</th><th>Partitions</th><th>Records</th><th>Dead letters</th></tr>\n\
         {topics}</table>\n\
         <h2>Consumer groups</h2>\n<table>\n\
         <tr><th>Group</th><th>State</th><th>Members</th><th>Topic</th>\
         <th>Committed</th><th>End</th><th>Lag</th></tr>\n\
         {groups}</table>\n",
        overview.topics.len(),
    ))
}

/// The page when the broker at `servers` does not answer.
fn render_unreachable(servers: &str) -> String {
    document(&format!(
        "<p><strong>The Kafka broker at {} is unreachable.</strong></p>\n",
        escape(servers)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::overview::{GroupSummary, GroupTopic, TopicSummary};

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&amp;</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
        );
        assert_eq!(escape("payments.notifications"), "payments.notifications");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn the_page_escapes_names_and_marks_dead_letter_topics() {
        let topic = |name: &str, records, dead_letter| TopicSummary {
            name: name.to_owned(),
            partitions: 3,
            records,
            dead_letter,
        };
        let overview = Overview {
            topics: vec![
                topic("orders<script>", 12, false),
                topic("orders<script>.dlt", 4, true),
            ],
            groups: vec![GroupSummary {
                name: "billing&co".to_owned(),
                state: "Stable".to_owned(),
                members: 2,
                topics: vec![GroupTopic {
                    topic: "orders<script>".to_owned(),
                    committed: 9,
                    end: 12,
                    lag: 3,
                }],
            }],
        };
        let html = render(&overview);
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains(
                "<tr><td>orders&lt;script&gt;</td><td class=\"n\">3</td><td class=\"n\">12</td><td></td></tr>"
            ),
            "{html}"
        );
        assert!(
            html.contains(
                "<tr class=\"dead-letter\"><td>orders&lt;script&gt;.dlt</td><td class=\"n\">3</td>\
                 <td class=\"n\">4</td><td>dead letters: 4 record(s) a consumer gave up on</td></tr>"
            ),
            "{html}"
        );
        assert!(html.contains("4 dead letter(s) waiting"), "{html}");
        assert!(
            html.contains(
                "<tr><td>billing&amp;co</td><td>Stable</td><td class=\"n\">2</td><td>orders&lt;script&gt;</td>\
                 <td class=\"n\">9</td><td class=\"n\">12</td><td class=\"n\">3</td></tr>"
            ),
            "{html}"
        );
        assert!(
            html.contains("<meta http-equiv=\"refresh\" content=\"5\">"),
            "{html}"
        );
    }

    #[test]
    fn the_unreachable_page_names_the_broker_escaped() {
        let html = render_unreachable("<kafka>:9092");
        assert!(
            html.contains("The Kafka broker at &lt;kafka&gt;:9092 is unreachable"),
            "{html}"
        );
    }
}
