//! Operating the services' consumers, from outside them: what an operator
//! (through `cargo xtask`) and the tests do, and no service links.
//!
//! # Layout
//!
//! - [`groups`]: a consumer group's committed offsets, the partitions' ends
//!   and lag; moving a stopped group's offsets.
//! - [`dead_letters`]: listing the dead letters of a topic, and redriving
//!   them to it.
//! - [`error`]: this crate's error type.

pub mod dead_letters;
pub mod error;
pub mod groups;

pub use error::{Error, Result};
