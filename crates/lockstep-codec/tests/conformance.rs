//! Golden conformance vectors (`conformance/v1/*.json`): input readings →
//! encoded batch bytes → reconstructed values, frozen for protocol v1.
//!
//! Any edge implementation (C++ included) can replay the same files. This
//! test checks that today's encoder produces exactly the stored bytes and the
//! decoder exactly the stored values; every released version must still
//! decode. Writing vectors is a separate command that refuses a released
//! version (see `conformance/README.md`):
//! `cargo run -p lockstep-codec --example regenerate_vectors -- v2`.

mod vectors;

use lockstep_codec::Catalog;
use serde::{Deserialize, Serialize};
use vectors::{CURRENT, Vector, build_vector, decode, dir, inputs, seed_vector, unhex};

/// Compares today's output with the golden file of the current version.
fn check<T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug>(
    name: &str,
    fresh: &T,
) {
    assert!(
        std::env::var_os("LOCKSTEP_REGENERATE_VECTORS").is_none(),
        "LOCKSTEP_REGENERATE_VECTORS no longer rewrites the golden files: a changed behaviour is \
         a new version, written by `cargo run -p lockstep-codec --example regenerate_vectors -- vN`"
    );
    let path = dir(CURRENT).join(name);
    let golden: T = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap();
    assert_eq!(
        &golden, fresh,
        "{name} differs from the golden file: the protocol changed (that is a new version)"
    );
}

#[test]
fn lockstep_vectors_match() {
    for (i, (d, b, l, k, input)) in inputs().into_iter().enumerate() {
        check(
            &format!("lockstep-{:02}.json", i + 1),
            &build_vector(d, b, l, k, input),
        );
    }
}

#[test]
fn every_released_version_still_decodes_to_its_golden_values() {
    // Independent of the encoder: decode the stored bytes alone.
    let catalog = Catalog::default_v1();
    let released = vectors::released();
    assert!(
        released.iter().any(|v| v == CURRENT),
        "{CURRENT} is released"
    );
    for version in released {
        let mut files = 0;
        for i in 1.. {
            let path = dir(&version).join(format!("lockstep-{i:02}.json"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                break;
            };
            files += 1;
            let v: Vector = serde_json::from_str(&text).unwrap();
            assert_eq!(v.catalog_text, catalog.canonical_text());
            assert_eq!(v.catalog_hash, format!("{:016x}", catalog.hash()));
            let batches: Vec<Vec<u8>> = v.batches.iter().map(|h| unhex(h)).collect();
            let (decoded, state) = decode(&catalog, &batches);
            assert_eq!(decoded, v.decoded, "{}", path.display());
            assert_eq!(format!("{:08x}", state.checksum()), v.final_state_checksum);
        }
        assert!(files > 0, "{version} has no lockstep-NN.json vectors");
    }
}

#[test]
fn regeneration_refuses_a_released_version() {
    for version in vectors::released() {
        let e = vectors::writable_dir(&version).unwrap_err();
        assert!(e.contains("released"), "{e}");
    }
    assert!(vectors::writable_dir("v1x").is_err());
    assert!(vectors::writable_dir("../v9").is_err());
    let next = vectors::writable_dir("v99").expect("an unreleased version is writable");
    assert!(next.ends_with("conformance/v99"));
}

#[test]
fn seed_vectors_match() {
    check("seed-01.json", &seed_vector());
}
