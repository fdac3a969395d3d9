//! The message queue beside the stream (`kafka_ops::queue`): two members of
//! one share group on one partition, each record to one of them; a record
//! released is delivered again, one rejected never; a consumer group reads
//! every record all the same. The worker may do nothing else.

use integration_tests::*;
use kafka_ops::queue::{Ack, Queue, REQUESTS, deliveries};
use service_kit::config::KafkaConfig;

#[tokio::test]
async fn a_share_group_hands_each_record_to_one_member_and_a_consumer_group_still_reads_them_all() {
    let broker = Broker::get().await;
    let tools = KafkaTools::get(&broker).await;
    let queue = Queue {
        topic: unique("test.refund-requests"),
        group: unique("refund-workers"),
    };
    let worker = queue.worker(unique("worker"));
    let runs = queue.setup(&tools.operator(), &worker).expect("runs");
    tools.run(&runs).await.expect("the queue and its worker");
    let operator = KafkaConfig {
        bootstrap_servers: broker.bootstrap_servers.clone(),
        ..KafkaConfig::local()
    };
    let shown = queue
        .show(&operator, &tools.sasl, &worker.login, |runs| {
            let tools = tools.clone();
            async move { tools.run(&runs).await }
        })
        .await
        .expect("the queue, worked");
    eprintln!("{shown:#?}");

    let request = |n: usize| format!("refund request {n}");
    let seen = |deliveries: &[kafka_ops::queue::Delivery]| -> Vec<(String, u32)> {
        deliveries.iter().map(|d| (d.value.clone(), d.count)).collect()
    };
    assert_eq!(seen(&shown.rejected), [(request(1), 1)]);
    assert_eq!(seen(&shown.released), [(request(2), 1)]);
    // Each record left to one member only; the released one a second time,
    // the rejected one never again.
    let [first, second] = &shown.members;
    assert_eq!((first.len(), second.len()), (2, REQUESTS - 3));
    let mut taken = seen(first);
    taken.extend(seen(second));
    taken.sort();
    let mut expected = vec![(request(2), 2)];
    expected.extend((3..=REQUESTS).map(|n| (request(n), 1)));
    assert_eq!(taken, expected);
    // The stream: every record, in order, the rejected one too.
    assert_eq!(shown.stream, (1..=REQUESTS).map(request).collect::<Vec<_>>());

    // Least privilege: the worker may not join another share group.
    let other = Queue {
        group: unique("other-workers"),
        ..queue.clone()
    };
    let output = tools
        .run(&[other.member(&tools.sasl, &worker.login, Ack::Accept, 1)])
        .await
        .expect("the tool ran");
    let refused = deliveries(&output).expect_err("another group refused");
    assert!(
        refused.to_string().contains("GroupAuthorizationException"),
        "{refused}"
    );
}
