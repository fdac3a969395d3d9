//! Payments' API, one HTTP/1.1 request per input: payments, refunds (with
//! `If-Match` and `Idempotency-Key`), the event pages' query string. See
//! `fuzz::http` for what must hold of the answer.

#![no_main]

use std::sync::LazyLock;

use fuzz::http::Service;
use libfuzzer_sys::fuzz_target;

static SERVICE: LazyLock<Service> = LazyLock::new(fuzz::http::payments);

fuzz_target!(|data: &[u8]| SERVICE.fuzz(data));
