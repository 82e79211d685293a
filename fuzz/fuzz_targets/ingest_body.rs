//! Arbitrary bytes as a `POST /api/telemetry` body (first byte: the form),
//! through the server's checks and decoding up to the store, its refusals
//! rendered as HTTP answers and what it would store as WebSocket JSON.
//! The body is shared with the server's regression replay.
#![no_main]

#[path = "../../crates/lockstep-server/tests/fuzz_cases/mod.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::ingest_body(data));
