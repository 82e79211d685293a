//! Replays the server fuzz targets' committed seed corpus
//! (`fuzz/seeds/<target>/`) and every input a fuzzer crashed on
//! (`fuzz/regressions/<target>/`) through the same code as the targets, so a
//! fixed crash stays fixed without cargo-fuzz. `scripts/fuzz.sh` runs the
//! targets themselves.

mod fuzz_cases;

use std::path::PathBuf;

/// Runs `case` on every seed and past crash of `target` (at least `seeds` files).
fn replay(target: &str, seeds: usize, case: fn(&[u8])) {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
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
            println!("{}", path.display());
            case(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= seeds, "the committed seed corpus of {target} is there");
}

#[test]
fn ingest_body_seeds_and_regressions() {
    replay("ingest_body", 4, fuzz_cases::ingest_body);
}

#[test]
fn ws_client_msg_seeds_and_regressions() {
    replay("ws_client_msg", 4, fuzz_cases::ws_client_msg);
}
