//! The real Apache Kafka broker the tests run against.
//!
//! `KAFKA_BOOTSTRAP_SERVERS`, when set, names it (`cargo xtask test` sets it
//! to the local broker on machines without Docker). Otherwise each test starts
//! `apache/kafka` in Docker through testcontainers. With neither, tests fail
//! and say how to get a broker: they never skip silently.

use testcontainers_modules::kafka::apache::{KAFKA_PORT, Kafka};
use testcontainers_modules::testcontainers::runners::AsyncRunner;
use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

/// The `apache/kafka` tag: the version `docker-compose.yml` and the local
/// broker (`xtask/kafka/pom.xml`) run. xtask's tests check they agree.
pub const KAFKA_VERSION: &str = "4.1.1";

/// A broker for one test; a container is removed when this is dropped.
#[derive(Debug)]
pub struct Broker {
    pub bootstrap_servers: String,
    _container: Option<ContainerAsync<Kafka>>,
}

impl Broker {
    /// The broker named by `KAFKA_BOOTSTRAP_SERVERS`, or a new container.
    ///
    /// # Panics
    ///
    /// When there is neither, with instructions.
    pub async fn get() -> Self {
        if let Ok(servers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
            && !servers.trim().is_empty()
        {
            return Self {
                bootstrap_servers: servers.trim().to_owned(),
                _container: None,
            };
        }
        let container = Kafka::default()
            .with_jvm_image()
            .with_tag(KAFKA_VERSION)
            .start()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "these tests need a real Apache Kafka broker, and none was found:\n\
                     KAFKA_BOOTSTRAP_SERVERS is not set and Docker could not start apache/kafka:{KAFKA_VERSION} ({e}).\n\
                     Run the tests with `cargo xtask test` (starts a local broker when there is no Docker),\n\
                     or start one with `cargo xtask kafka up` and set KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092."
                )
            });
        let port = container
            .get_host_port_ipv4(KAFKA_PORT)
            .await
            .expect("the Kafka container exposes its port");
        Self {
            bootstrap_servers: format!("127.0.0.1:{port}"),
            _container: Some(container),
        }
    }
}
