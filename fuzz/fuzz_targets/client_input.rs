//! Image names, references, digests and `Range` headers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nixery::fuzz::client_input(data));
