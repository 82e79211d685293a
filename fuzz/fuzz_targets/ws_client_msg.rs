//! Arbitrary bytes as a WebSocket client message (and a `POST /logger/start`
//! body), parsed as the server parses them. The body is shared with the
//! server's regression replay.
#![no_main]

#[path = "../../crates/lockstep-server/tests/fuzz_cases/mod.rs"]
mod cases;

libfuzzer_sys::fuzz_target!(|data: &[u8]| cases::ws_client_msg(data));
