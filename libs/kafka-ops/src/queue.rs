//! A message queue on Kafka: a share group (KIP-932, production-ready since
//! Kafka 4.2) beside a consumer group on the same topic. The members of a
//! share group take the records of one partition one at a time: each goes
//! to one member, which accepts it, releases it (delivered again, its
//! delivery count one higher) or rejects it (never delivered again); the
//! topic keeps every record all the same, for any consumer group to read.
//!
//! rust-rdkafka 0.39 (librdkafka 2.12) has no share consumer, so the members
//! are Kafka's own console share consumer of the broker's release
//! ([`crate::KAFKA_VERSION`]), logged in as a worker
//! ([`crate::access::Role::QueueWorker`]). Once the Rust client has one, a
//! member becomes a Rust consumer like the services' and these runs go.

use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use service_kit::auth::Token;
use service_kit::config::{KafkaConfig, KafkaUser, Secret};
use service_kit::kafka::{client_config, producer};

use shared_events::Topics;

use crate::access::{Invocation, Role, Target, User, command_config, invocations};
use crate::{Error, Result};

/// The requests put on the queue: after one rejected and one released, two
/// members share the other four and the released one.
pub const REQUESTS: usize = 6;

/// A topic of one partition and the share group that works it.
#[derive(Debug, Clone)]
pub struct Queue {
    pub topic: String,
    pub group: String,
}

/// What a member does with each record it takes.
#[derive(Debug, Clone, Copy)]
pub enum Ack {
    Accept,
    Release,
    Reject,
}

/// One record as a member got it; `count` is 1 on its first delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub offset: i64,
    pub count: u32,
    pub value: String,
}

/// What [`Queue::show`] saw: what a member rejected, what one released,
/// what two members then took at once, what a consumer group read.
#[derive(Debug)]
pub struct Shown {
    pub rejected: Vec<Delivery>,
    pub released: Vec<Delivery>,
    pub members: [Vec<Delivery>; 2],
    pub stream: Vec<String>,
}

impl Shown {
    /// The rejected record never again, the released one once more (count
    /// 2), each other one to one member once, and the group read them all.
    pub fn check(&self) -> std::result::Result<(), String> {
        let mut taken: Vec<&Delivery> = self.members.iter().flatten().collect();
        taken.sort_by_key(|d| d.offset);
        let offsets = |list: &[&Delivery]| list.iter().map(|d| (d.offset, d.count)).collect::<Vec<_>>();
        let [rejected, released] = [&self.rejected, &self.released].map(|d| d.iter().collect::<Vec<_>>());
        let mut expected = vec![(1, 2)];
        expected.extend((2..REQUESTS as i64).map(|offset| (offset, 1)));
        let ok =
            offsets(&rejected) == [(0, 1)] && offsets(&released) == [(1, 1)] && offsets(&taken) == expected;
        match ok && self.stream.len() == REQUESTS {
            true => Ok(()),
            false => Err(format!("not what a queue does: {self:?}")),
        }
    }
}

impl Queue {
    /// Its worker, `name`, with a new password: the members log in as it.
    pub fn worker(&self, name: String) -> User {
        let password = Secret::new(Token::generate().expose());
        let role = Role::QueueWorker {
            topic: self.topic.clone(),
            group: self.group.clone(),
        };
        User {
            login: KafkaUser { name, password },
            role,
        }
    }

    /// The operator's runs that make the queue: its topic, its share group
    /// reading from the first record (by default, only what comes after the
    /// group starts), and `worker` with its ACLs.
    pub fn setup(&self, tools: &Target, worker: &User) -> Result<Vec<Invocation>> {
        let (topic, group) = (&self.topic, &self.group);
        let mut runs = vec![
            tools.invocation(
                "kafka-topics.sh",
                words(&format!("--create --topic {topic} --partitions 1")),
            ),
            tools.invocation(
                "kafka-configs.sh",
                words(&format!(
                    "--alter --entity-type groups --entity-name {group} \
                     --add-config share.auto.offset.reset=earliest"
                )),
            ),
        ];
        runs.extend(invocations(
            std::slice::from_ref(worker),
            &Topics::default(),
            tools,
        )?);
        Ok(runs)
    }

    /// A member's run, logged in as `worker` at `bootstrap`: it takes `max`
    /// records one at a time (more would be held until it closes, and handed
    /// back with their counts raised), acknowledges each with `ack`, prints
    /// each with its offset and delivery count, and ends after 30 s without.
    pub fn member(&self, bootstrap: &str, worker: &KafkaUser, ack: Ack, max: usize) -> Invocation {
        let ack = match ack {
            Ack::Accept => "",
            Ack::Release => "--release",
            Ack::Reject => "--reject",
        };
        let mut args = words(&format!(
            "--topic {} --group {} --max-messages {max} --timeout-ms 30000 {ack} \
             --command-property share.acquire.mode=record_limit --command-property max.poll.records=1 \
             --formatter-property print.offset=true --formatter-property print.delivery=true",
            self.topic, self.group
        ));
        for login in command_config(worker).lines() {
            args.extend(["--command-property".to_owned(), login.to_owned()]);
        }
        let target = Target {
            bootstrap: bootstrap.to_owned(),
            command_config: None,
        };
        target.invocation("kafka-console-share-consumer.sh", args)
    }

    /// Puts [`REQUESTS`] records on the queue made by [`Queue::setup`]
    /// (through `operator`); a member rejects one, another releases one,
    /// two members take the rest at once; then a consumer group reads the
    /// topic. `run` runs Kafka's tools and returns what they printed.
    pub async fn show<F, R>(
        &self,
        operator: &KafkaConfig,
        bootstrap: &str,
        worker: &KafkaUser,
        run: F,
    ) -> Result<Shown>
    where
        F: Fn(Vec<Invocation>) -> R,
        R: Future<Output = Result<String>>,
    {
        let sender = producer(operator, "queue", Duration::from_secs(30))?;
        for n in 1..=REQUESTS {
            let value = format!("refund request {n}");
            let record = FutureRecord::<(), _>::to(&self.topic).payload(&value);
            sender
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| e)?;
        }
        let run = &run;
        let member =
            |ack, max| async move { deliveries(&run(vec![self.member(bootstrap, worker, ack, max)]).await?) };
        let rejected = member(Ack::Reject, 1).await?;
        let released = member(Ack::Release, 1).await?;
        let (first, second) = tokio::join!(member(Ack::Accept, 2), member(Ack::Accept, REQUESTS - 3));
        let consumer: BaseConsumer = client_config(operator, "queue")
            .set("group.id", format!("{}.stream", self.group))
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[&self.topic])?;
        let read = tokio::task::spawn_blocking(move || {
            let (deadline, mut read) = (Instant::now() + Duration::from_secs(60), Vec::new());
            while read.len() < REQUESTS && Instant::now() < deadline {
                if let Some(record) = consumer.poll(Duration::from_millis(200)) {
                    read.push(String::from_utf8_lossy(record?.payload().unwrap_or_default()).into_owned());
                }
            }
            Ok::<_, Error>(read)
        });
        let stream = read.await.map_err(|e| Error::Task("queue", e))??;
        Ok(Shown {
            rejected,
            released,
            members: [first?, second?],
            stream,
        })
    }
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_owned).collect()
}

/// The records a member printed (`Offset:N<tab>Delivery:N<tab>value`); an
/// error when the tool says it was refused or failed (it exits with 0
/// then too). Running out of records is no error.
pub fn deliveries(output: &str) -> Result<Vec<Delivery>> {
    let failed = |line: &&str| line.contains("Exception") && !line.contains("TimeoutException");
    if let Some(line) = output.lines().find(failed) {
        return Err(Error::Access(format!("the share consumer failed: {line}")));
    }
    let delivery = |line: &str| {
        let mut fields = line.splitn(3, '\t');
        let offset = fields.next()?.strip_prefix("Offset:")?.parse().ok()?;
        let count = fields.next()?.strip_prefix("Delivery:")?.parse().ok()?;
        Some(Delivery {
            offset,
            count,
            value: fields.next()?.to_owned(),
        })
    };
    Ok(output.lines().filter_map(delivery).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_members_output_is_read_and_a_refusal_is_an_error() {
        let output = "Offset:1\tDelivery:2\trefund request 2\nProcessed a total of 1 messages\n";
        assert_eq!(
            deliveries(output).expect("deliveries"),
            [Delivery {
                offset: 1,
                count: 2,
                value: "refund request 2".to_owned()
            }]
        );
        let refused = "ERROR Error processing message\n\
                       org.apache.kafka.common.errors.GroupAuthorizationException: Not authorized to access group: g\n";
        assert!(deliveries(refused).is_err());
        assert!(
            deliveries("org.apache.kafka.common.errors.TimeoutException\n")
                .expect("none")
                .is_empty()
        );
    }
}
