//! Replays the server fuzz targets' committed seed corpus
//! (`fuzz/seeds/<target>/`) and every input a fuzzer crashed on
//! (`fuzz/regressions/<target>/`) through the same code as the targets, so a
//! fixed crash stays fixed without cargo-fuzz. `scripts/fuzz.sh` runs the
//! targets themselves.

mod fuzz_cases;

#[path = "../../lockstep-codec/tests/fuzz_replay/mod.rs"]
mod fuzz_replay;

use fuzz_replay::replay;

#[test]
fn ingest_body_seeds_and_regressions() {
    replay("ingest_body", 4, fuzz_cases::ingest_body);
}

#[test]
fn ws_client_msg_seeds_and_regressions() {
    replay("ws_client_msg", 4, fuzz_cases::ws_client_msg);
}
