//! Reads a fuzz target's committed seed corpus (`fuzz/seeds/<target>/`) and
//! past crashes (`fuzz/regressions/<target>/`) and runs a case on each; shared
//! by the codec's and the server's `fuzz_regressions.rs`.
// Not every user calls both functions.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
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
pub fn replay(target: &str, seeds: usize, case: fn(&[u8])) {
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
