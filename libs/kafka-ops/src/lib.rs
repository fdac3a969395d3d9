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
//! - [`error`]: this crate's error type.

pub mod access;
pub mod credentials;
pub mod dead_letters;
pub mod error;

pub use error::{Error, Result};
