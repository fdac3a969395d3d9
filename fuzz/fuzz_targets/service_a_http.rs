//! ServiceA's API, one HTTP/1.1 request per input: the audit log's query
//! string, the copy of a payment. See `fuzz::http` for what must hold of the
//! answer.

#![no_main]

use std::sync::LazyLock;

use fuzz::http::Service;
use libfuzzer_sys::fuzz_target;

static SERVICE: LazyLock<Service> = LazyLock::new(fuzz::http::service_a);

fuzz_target!(|data: &[u8]| SERVICE.fuzz(data));
