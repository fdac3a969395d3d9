//! The checks: the tests (against local servers or through
//! testcontainers), the compose path with the README's curl session, the
//! faults under load, fuzzing (the decoders, the HTTP APIs), the benchmark
//! against its ceilings, and the contracts' compatibility.

pub mod bench;
pub mod compose;
pub mod contracts;
pub mod faults;
pub mod fuzz;
pub mod fuzz_http;
pub mod test;
