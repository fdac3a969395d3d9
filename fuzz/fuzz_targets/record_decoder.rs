//! A Kafka record, headers and value, through every decoder and handler a
//! consumer has: see `fuzz::record` for what must hold.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: fuzz::record::RecordInput| fuzz::record::check(&input));
