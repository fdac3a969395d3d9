//! Operating the services' consumers, from outside them: what an operator
//! does (through `cargo xtask`) and the tests check; no service links it.
//!
//! # Layout
//!
//! - [`access`]: one Kafka user per service and its ACLs (least privilege),
//!   made by the operator with Kafka's own tools.
//! - [`credentials`]: the demo's tokens and passwords, made for `.env`
//!   (`cargo xtask credentials`) or compose's volumes (`credentials`).
//! - [`dead_letters`]: listing the dead letters of a topic, and redriving
//!   them to it.
//! - [`queue`]: a message queue on Kafka, a share group beside a consumer
//!   group, worked by Kafka's own share consumer.
//! - [`error`]: this crate's error type.

pub mod access;
pub mod credentials;
pub mod dead_letters;
pub mod error;
pub mod queue;

pub use error::{Error, Result};

/// The Apache Kafka release the project runs everywhere: the local broker
/// and its tools (`xtask/kafka/pom.xml`), the `apache/kafka` image of
/// compose and the testcontainers suite, and the Kafka tools this crate
/// renders runs of. The pom and the compose files cannot name this
/// constant; xtask's tests fail when they name another release.
pub const KAFKA_VERSION: &str = "4.4.0";
