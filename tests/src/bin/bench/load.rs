//! Payments sent to `POST /payments`: as fast as a fixed number of
//! connections get answers (closed loop), or at a fixed rate whatever the
//! answers do (open loop).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// A payment Payments accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub payment_id: uuid::Uuid,
    /// When it was due to be sent (open loop) or sent (closed loop).
    pub sent_at: DateTime<Utc>,
    /// From then until the `201`.
    pub latency: Duration,
}

/// What one load run got.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: Vec<Accepted>,
    /// Requests answered with anything but 201, or not at all.
    pub failed: u64,
    /// Open loop: requests not sent because too many were outstanding.
    pub skipped: u64,
    pub elapsed: Duration,
}

/// How many requests an open loop lets be outstanding before it skips: far
/// more than the connections Payments' database pool serves.
const MAX_OUTSTANDING: usize = 1024;

/// One `POST /payments`, timed from `due`.
async fn post(
    http: &reqwest::Client,
    url: &str,
    n: u64,
    due: Instant,
    sent_at: DateTime<Utc>,
) -> Option<Accepted> {
    let body = serde_json::json!({
        "customer_id": format!("bench-{}", n % 1000),
        "order_id": format!("order-{}", uuid::Uuid::new_v4().simple()),
        "amount": 100 + i64::try_from(n % 10_000).unwrap_or(0),
        "currency": "EUR",
    });
    let response = http.post(url).json(&body).send().await.ok()?;
    if response.status() != reqwest::StatusCode::CREATED {
        return None;
    }
    let latency = due.elapsed();
    let created: serde_json::Value = response.json().await.ok()?;
    let payment_id = created["payment_id"].as_str()?.parse().ok()?;
    Some(Accepted {
        payment_id,
        sent_at,
        latency,
    })
}

/// Payments sent to Payments' `url`, each load step for `seconds`.
#[derive(Debug, Clone)]
pub struct Load {
    pub http: reqwest::Client,
    pub url: String,
    /// The closed loop's clients.
    pub connections: usize,
    pub seconds: Duration,
}

impl Outcome {
    fn add(&mut self, answer: Option<Accepted>) {
        match answer {
            Some(accepted) => self.accepted.push(accepted),
            None => self.failed += 1,
        }
    }
}

impl Load {
    /// `connections` clients each sending the next payment once the last is
    /// answered, for `seconds` or, given a `count`, until that many were
    /// sent.
    pub fn closed(&self, count: Option<usize>) -> impl Future<Output = Outcome> + Send + 'static {
        let duration = count.map_or(self.seconds, |_| Duration::from_secs(3600));
        let load = self.clone();
        async move {
            let started = Instant::now();
            let sent = Arc::new(AtomicU64::new(0));
            let mut clients = JoinSet::new();
            for _ in 0..load.connections {
                let (http, url, sent) = (load.http.clone(), load.url.clone(), Arc::clone(&sent));
                clients.spawn(async move {
                    let mut outcome = Outcome::default();
                    while started.elapsed() < duration {
                        let n = sent.fetch_add(1, Ordering::Relaxed);
                        if count.is_some_and(|count| n >= count as u64) {
                            break;
                        }
                        outcome.add(post(&http, &url, n, Instant::now(), Utc::now()).await);
                    }
                    outcome
                });
            }
            let mut outcome = Outcome::default();
            while let Some(client) = clients.join_next().await {
                let client = client.expect("load client");
                outcome.accepted.extend(client.accepted);
                outcome.failed += client.failed;
            }
            outcome.elapsed = started.elapsed();
            outcome
        }
    }

    /// A payment every `1 / rate` seconds for `seconds`, each timed from
    /// when it was due: a slow answer does not delay the next request (no
    /// coordinated omission).
    pub fn open(&self, rate: f64) -> impl Future<Output = Outcome> + Send + 'static {
        let load = self.clone();
        async move {
            let started = Instant::now();
            let outstanding = Arc::new(Semaphore::new(MAX_OUTSTANDING));
            let mut requests = JoinSet::new();
            let mut outcome = Outcome::default();
            let total = (rate * load.seconds.as_secs_f64()).round() as u64;
            for n in 0..total {
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let sent_at = Utc::now() - (Instant::now() - due);
                let Ok(permit) = Arc::clone(&outstanding).try_acquire_owned() else {
                    outcome.skipped += 1;
                    continue;
                };
                let (http, url) = (load.http.clone(), load.url.clone());
                requests.spawn(async move {
                    let accepted = post(&http, &url, n, due, sent_at).await;
                    drop(permit);
                    accepted
                });
                // Collect what is done as it goes, to keep the set small.
                while let Some(done) = requests.try_join_next() {
                    outcome.add(done.expect("request task"));
                }
            }
            while let Some(done) = requests.join_next().await {
                outcome.add(done.expect("request task"));
            }
            outcome.elapsed = load.seconds;
            outcome
        }
    }
}
