//! Each service logged in as its own Kafka user, on the broker's SASL
//! listener, allowed what `kafka_ops::access` grants it and nothing more.

use std::time::Duration;

use integration_tests::*;
use kafka_ops::access::{self, Role, User};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use service_kit::auth::Token;
use service_kit::config::{KafkaConfig, KafkaUser, Secret};

/// A user of this test's own (users are the broker's, not a topic's: a
/// shared name would change another run's password).
fn user(service: &str, role: Role) -> User {
    User {
        login: KafkaUser {
            name: unique(service),
            password: Secret::new(Token::generate().expose()),
        },
        role,
    }
}

/// `kafka`, logged in as `user` on the broker's SASL listener.
fn logged_in(kafka: &KafkaConfig, sasl: &str, user: &User) -> KafkaConfig {
    KafkaConfig {
        bootstrap_servers: sasl.to_owned(),
        user: Some(user.login.clone()),
        ..kafka.clone()
    }
}

#[tokio::test]
async fn each_service_works_as_its_own_user_and_is_refused_what_it_was_not_granted() {
    let broker = Broker::get().await;
    let sasl = testkit::kafka_sasl_bootstrap_servers().await;
    let http = integration_tests::http_client();
    // The operator: the brokers' own listener, where anything is allowed.
    let operator = kafka_config(&broker).await;
    let (group_a, group_b) = (unique("service-a"), unique("service-b"));
    let payments_user = user("payments", Role::Payments);
    let a_user = user(
        "service-a",
        Role::ServiceA {
            group: group_a.clone(),
        },
    );
    let b_user = user(
        "service-b",
        Role::ServiceB {
            group: group_b.clone(),
        },
    );
    access::provision(
        &operator,
        &operator.topics,
        &[payments_user.clone(), a_user.clone(), b_user.clone()],
    )
    .await
    .expect("users and ACLs");
    let [as_payments, as_a, as_b] =
        [&payments_user, &a_user, &b_user].map(|user| logged_in(&operator, &sasl, user));

    // The whole flow, each service as its own user.
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&as_payments, &database.url).await;
    let service_a = spawn_service_a(&as_a, &group_a).await;
    let service_b_database = TestDatabase::empty().await;
    let service_b = spawn_service_b(&as_b, &group_b, &payments.url(""), &service_b_database.url).await;
    let payment = create_payment(&http, &payments, &payment_request("c-access", 4200)).await;
    copied_and_recorded(&http, &service_a, &service_b, &payment).await;
    service_b.stop().await;
    service_a.stop().await;
    payments.stop().await;

    // ServiceA's user may read the state topic, not write it: the broker
    // refuses a forged state of the payment.
    let producer =
        service_kit::kafka::producer(&as_a, service_a::SERVICE, Duration::from_secs(20)).expect("a producer");
    let refused = producer
        .send(
            FutureRecord::to(&operator.topics.state)
                .key(payment["payment_id"].as_str().expect("payment_id"))
                .payload("forged"),
            Duration::from_secs(20),
        )
        .await
        .map_err(|(error, _)| error.rdkafka_error_code());
    assert_eq!(refused, Err(Some(RDKafkaErrorCode::TopicAuthorizationFailed)));

    // ServiceB's user may not join ServiceA's group (it would take its
    // partitions and commit its offsets).
    let intruder: BaseConsumer = service_kit::kafka::client_config(&as_b, service_b::SERVICE)
        .set("group.id", &group_a)
        .create()
        .expect("a consumer");
    intruder
        .subscribe(&[&operator.topics.notifications])
        .expect("subscribe");
    let refused = eventually("the broker refuses service-b in service-a's group", || async {
        match intruder.poll(Duration::from_millis(500)) {
            Some(Err(error)) => Some(error),
            Some(Ok(_)) => panic!("service-b's user read a record in service-a's group"),
            None => None,
        }
    })
    .await;
    assert!(
        matches!(
            refused.rdkafka_error_code(),
            Some(RDKafkaErrorCode::GroupAuthorizationFailed)
        ),
        "{refused:?}"
    );

    // A wrong password does not log in at all.
    let mut impostor = b_user.clone();
    impostor.login.password = Secret::new(Token::generate().expose());
    let probe = service_kit::kafka::Admin::new(&logged_in(&operator, &sasl, &impostor), "impostor")
        .expect("an admin client");
    assert!(
        !probe.broker_reachable().await,
        "a wrong password must not get metadata"
    );
}
