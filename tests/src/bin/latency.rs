//! Measures how long a payment takes to travel through the system.
//!
//! ```sh
//! cargo xtask kafka up
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo run -p integration-tests --bin latency -- [PAYMENTS]
//! ```
//!
//! Runs the three services in this process on their own topics, POSTs
//! `PAYMENTS` payments (default 20) one after another, and for each measures
//! from sending the POST until:
//!
//! - `201`: Payments answered (the event committed to the event store): the
//!   baseline, measured in the same run;
//! - `service-a copy`: ServiceA serves the payment from its copy;
//! - `service-b record`: ServiceB has called Payments back and recorded it.
//!
//! Visibility is polled every millisecond, so figures are at most ~1 ms late.

use std::time::{Duration, Instant};

use integration_tests::*;

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .map_or(20, |n| n.parse().expect("PAYMENTS is a number"));
    let broker = Broker::get().await;
    let http = integration_tests::http_client();
    let system = System::start(&broker).await;
    let System {
        payments,
        service_a,
        service_b,
        ..
    } = &system;

    // Warm-up: group joins and first connections are not what is measured.
    let warm_up = create_payment(&http, payments, &payment_request("warm-up", 1)).await;
    let id = warm_up["payment_id"].as_str().expect("id").to_owned();
    eventually("warm-up reaches service-b", || {
        get_json(&http, service_b.url(&format!("/payments/{id}")))
    })
    .await;

    let (mut created, mut copied, mut recorded) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let start = Instant::now();
        let payment = create_payment(&http, payments, &payment_request("bench", 100 + i as i64)).await;
        created.push(start.elapsed());
        let id = payment["payment_id"].as_str().expect("id");
        let (a_url, b_url) = (
            service_a.url(&format!("/payments/{id}")),
            service_b.url(&format!("/payments/{id}")),
        );
        let (mut a_done, mut b_done) = (None, None);
        while a_done.is_none() || b_done.is_none() {
            if a_done.is_none() && get_json(&http, a_url.as_str()).await.is_some() {
                a_done = Some(start.elapsed());
            }
            if b_done.is_none() && get_json(&http, b_url.as_str()).await.is_some() {
                b_done = Some(start.elapsed());
            }
            assert!(start.elapsed() < PATIENCE, "payment {i} did not arrive");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        copied.extend(a_done);
        recorded.extend(b_done);
    }

    println!("{count} payments, one at a time (ms from sending POST /payments):");
    println!(
        "{:<18} {:>8} {:>8} {:>8} {:>8}",
        "", "median", "p90", "min", "max"
    );
    for (name, samples) in [
        ("201 (baseline)", &mut created),
        ("service-a copy", &mut copied),
        ("service-b record", &mut recorded),
    ] {
        samples.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "{name:<18} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            ms(percentile(samples, 50)),
            ms(percentile(samples, 90)),
            ms(samples[0]),
            ms(samples[samples.len() - 1]),
        );
    }
    let ratio = percentile(&recorded, 50).as_secs_f64() / percentile(&created, 50).as_secs_f64();
    println!("median service-b record / median 201: {ratio:.2}x");

    system.stop().await;
}

/// The `p`th percentile of sorted `samples` (nearest rank).
fn percentile(samples: &[Duration], p: usize) -> Duration {
    let rank = (p * samples.len()).div_ceil(100).max(1);
    samples[rank - 1]
}
