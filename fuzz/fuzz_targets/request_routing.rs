//! Request routing: a method byte, then a path.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixery::fuzz::request_routing(data));
