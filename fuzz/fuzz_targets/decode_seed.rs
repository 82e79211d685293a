//! Arbitrary bytes as a seed-form body: parse and reconstruct without panicking.
//! The body is shared with the test suite's regression replay.
#![no_main]

#[path = "../../crates/lockstep-codec/tests/fuzz_cases/mod.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::decode_seed(data));
