//! Arbitrary bytes into the lockstep decoder: it must answer (Ok or a typed
//! error), never panic, and a batch it accepts is a duplicate when sent again.
//! The body is shared with the test suite's regression replay.
#![no_main]

#[path = "../../crates/lockstep-codec/tests/fuzz_cases/mod.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::decode_batch(data));
