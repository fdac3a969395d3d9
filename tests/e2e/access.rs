//! Each service logged in as its own Kafka user, on the broker's SASL
//! listener, allowed what `kafka_ops::access` grants it and nothing more;
//! and in PostgreSQL as its own role, owning its own database and allowed
//! into no other (`service_kit::postgres_access`).

use std::time::Duration;

use integration_tests::*;
use kafka_ops::access::{self, Role, User};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaErrorCode;
use service_kit::auth::Token;
use service_kit::config::{DatabaseUrl, KafkaConfig, KafkaUser, Secret};
use service_kit::postgres_access::provision;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

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

/// Makes `users` and their ACLs on `kafka`'s topics with Kafka's own tools,
/// as the operator's provisioning does.
async fn make_users(broker: &Broker, kafka: &KafkaConfig, users: &[User]) {
    let started = std::time::Instant::now();
    let tools = KafkaTools::get(broker).await;
    let runs = access::invocations(users, &kafka.topics, &tools.operator()).expect("the tools' runs");
    tools
        .run(&runs)
        .await
        .expect("users and ACLs, made with Kafka's tools");
    eprintln!(
        "access: {} runs of Kafka's tools in {:.1} s",
        runs.len(),
        started.elapsed().as_secs_f64()
    );
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
    make_users(
        &broker,
        &operator,
        &[payments_user.clone(), a_user.clone(), b_user.clone()],
    )
    .await;
    let [as_payments, as_a, as_b] =
        [&payments_user, &a_user, &b_user].map(|user| logged_in(&operator, &sasl, user));

    // The whole flow, each service as its own Kafka user and its own
    // PostgreSQL role (a test database's URL logs in as its owner).
    let database = TestDatabase::create().await;
    let payments = spawn_payments(&as_payments, &database.url).await;
    let service_a_database = TestDatabase::empty().await;
    let service_a = spawn_service_a_in(&as_a, &group_a, test_consumer(), &service_a_database.url).await;
    let service_b_database = TestDatabase::empty().await;
    let service_b = spawn_service_b(&as_b, &group_b, &payments.url(""), &service_b_database.url).await;
    let payment = create_payment(&http, &payments, &payment_request("c-access", 4200)).await;
    copied_and_recorded(&http, &service_a, &service_b, &payment).await;
    service_b.stop().await;
    service_a.stop().await;
    payments.stop().await;

    // Each ran its migrations as its own role, no superuser: every table in
    // its database is its role's.
    for (service, database) in [
        ("payments", &database),
        ("service-a", &service_a_database),
        ("service-b", &service_b_database),
    ] {
        let (superuser, tables, others): (bool, i64, i64) = sqlx::query_as(
            "SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), \
                    (SELECT count(*) FROM pg_tables WHERE schemaname = 'public'), \
                    (SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> current_user)",
        )
        .fetch_one(database.store.pool())
        .await
        .expect("the owners");
        assert!(!superuser, "{service}'s role is no superuser");
        assert!(tables > 1, "{service} made its tables ({tables})");
        assert_eq!(others, 0, "{service}'s tables are all its role's");
    }

    // ServiceB's role may not even connect to the event store: the check
    // every service makes at start refuses it.
    let service_b_login: DatabaseUrl = service_b_database.url.parse().expect("a URL");
    let into_the_store = service_b_login.options().clone().database(&database.name);
    let refused = service_kit::startup::wait_for_database(&into_the_store, Duration::from_secs(10))
        .await
        .expect_err("service-b's role connects to the event store");
    assert!(
        matches!(&refused, service_kit::Error::DatabaseRefused { reason, .. }
            if reason.contains("permission denied for database")),
        "{refused}"
    );

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

/// A database an earlier release made (its services logged in as the
/// superuser, so everything in it is the superuser's) becomes its role's:
/// the service, now logging in as that role, writes and migrates as before.
#[tokio::test]
async fn a_database_made_before_its_role_is_handed_to_the_role_with_everything_in_it() {
    let server: DatabaseUrl = testkit::postgres_url().await.parse().expect("a URL");
    let name = unique("test").replace('-', "_");
    let mut admin = PgConnection::connect_with(server.options())
        .await
        .expect("connect as the superuser");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("an old database");
    admin.close().await.ok();
    let mut old = PgConnection::connect_with(&server.options().clone().database(&name))
        .await
        .expect("connect into it");
    for statement in [
        "CREATE TABLE entries (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note TEXT NOT NULL)",
        "CREATE SEQUENCE numbers",
        "CREATE FUNCTION noted() RETURNS text LANGUAGE sql AS $$ SELECT 'old' $$",
        "INSERT INTO entries (note) VALUES ('before')",
    ] {
        sqlx::query(statement).execute(&mut old).await.expect(statement);
    }
    old.close().await.ok();

    let password = Secret::new(Token::generate().expose());
    let own = provision(&server, &name, &password)
        .await
        .expect("the role, given the database");
    let mut service = PgConnection::connect_with(own.options())
        .await
        .expect("the role connects");
    for statement in [
        "INSERT INTO entries (note) VALUES ('after')",
        "SELECT nextval('numbers')",
        "ALTER TABLE entries ADD COLUMN at TIMESTAMPTZ",
        "CREATE OR REPLACE FUNCTION noted() RETURNS text LANGUAGE sql AS $$ SELECT 'new' $$",
        "CREATE TABLE later (id BIGINT PRIMARY KEY)",
    ] {
        sqlx::query(statement)
            .execute(&mut service)
            .await
            .expect(statement);
    }
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM entries")
        .fetch_one(&mut service)
        .await
        .expect("read");
    assert_eq!(notes, 2);
    service.close().await.ok();

    // Made again (compose runs its step on every start), with a new
    // password, which logs in.
    let renewed = Secret::new(Token::generate().expose());
    let again = provision(&server, &name, &renewed).await.expect("made again");
    PgConnection::connect_with(again.options())
        .await
        .expect("the new password logs in")
        .close()
        .await
        .ok();
}
