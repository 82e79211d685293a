//! Replays the fuzz targets' committed seed corpus (`fuzz/seeds/<target>/`)
//! and every input a fuzzer crashed on (`fuzz/regressions/<target>/`, one
//! file per crash, named after it) through the same code as the targets, so
//! a fixed crash stays fixed without cargo-fuzz. `scripts/fuzz.sh` runs the
//! targets themselves.

mod fuzz_cases;

use std::path::PathBuf;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut out = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz.join(kind).join(target);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    out
}

/// Runs `case` on every seed and past crash of `target` (at least `seeds` files).
fn replay(target: &str, seeds: usize, case: fn(&[u8])) {
    let inputs = inputs(target);
    assert!(
        inputs.len() >= seeds,
        "the committed seed corpus of {target} is there"
    );
    for (path, data) in inputs {
        println!("{}", path.display());
        case(&data);
    }
}

#[test]
fn decode_batch_seeds_and_past_crashes() {
    replay("decode_batch", 6, fuzz_cases::decode_batch);
}

#[test]
fn decode_seed_seeds_and_past_crashes() {
    replay("decode_seed", 3, fuzz_cases::decode_seed);
}
