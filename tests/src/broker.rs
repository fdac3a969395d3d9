//! The real Apache Kafka broker the tests run against: the one
//! `KAFKA_BOOTSTRAP_SERVERS` names (`cargo xtask test` sets it to the local
//! broker on machines without a container engine), or else one `apache/kafka`
//! container shared by the tests of this binary (see `testkit`). With
//! neither, tests fail and say how to get a broker: they never skip silently.

/// The broker of this test binary.
#[derive(Debug, Clone)]
pub struct Broker {
    pub bootstrap_servers: String,
}

impl Broker {
    /// The broker named by `KAFKA_BOOTSTRAP_SERVERS`, or this binary's
    /// container.
    ///
    /// # Panics
    ///
    /// When there is neither, with instructions.
    pub async fn get() -> Self {
        Self {
            bootstrap_servers: testkit::kafka_bootstrap_servers().await,
        }
    }
}
