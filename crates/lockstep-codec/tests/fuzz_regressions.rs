//! Replays the fuzz targets' committed seed corpus (`fuzz/seeds/<target>/`)
//! and every input a fuzzer crashed on (`fuzz/regressions/<target>/`, one
//! file per crash, named after it) through the same code as the targets, so
//! a fixed crash stays fixed without cargo-fuzz. `scripts/fuzz.sh` runs the
//! targets themselves.

mod fuzz_cases;
mod fuzz_replay;

use fuzz_replay::replay;

#[test]
fn decode_batch_seeds_and_past_crashes() {
    replay("decode_batch", 6, fuzz_cases::decode_batch);
}

#[test]
fn decode_seed_seeds_and_past_crashes() {
    replay("decode_seed", 3, fuzz_cases::decode_seed);
}
