//! ServiceB's API, one HTTP/1.1 request per input: the callbacks' records.
//! See `fuzz::http` for what must hold of the answer.

#![no_main]

use std::sync::LazyLock;

use fuzz::http::Service;
use libfuzzer_sys::fuzz_target;

static SERVICE: LazyLock<Service> = LazyLock::new(fuzz::http::service_b);

fuzz_target!(|data: &[u8]| SERVICE.fuzz(data));
