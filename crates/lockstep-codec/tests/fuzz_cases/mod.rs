//! What each fuzz target does with its input, shared by the cargo-fuzz
//! targets (`fuzz/fuzz_targets/`) and `tests/fuzz_regressions.rs`, which
//! replays the committed seed corpus and every input a fuzzer ever crashed
//! on (`fuzz/regressions/<target>/`) in the normal test suite.
// Each fuzz target uses one of the functions.
#![allow(dead_code)]

use std::sync::OnceLock;

use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, SeedPredictor, SessionState};
use lockstep_proto::Message;
use lockstep_proto::telemetry::TelemetryReading;
use lockstep_proto::v1::Batch;

/// Decodes `batch` without state and on a started session's state; what it
/// accepts must come back as a duplicate, also from the persisted state.
fn exercise(catalog: &Catalog, batch: CheckedBatch) {
    if let Ok(BatchOutcome::Fresh { state, .. }) = batch.decode(catalog, None) {
        assert_eq!(
            batch.decode(catalog, Some(&state)),
            Ok(BatchOutcome::Duplicate),
            "a batch just accepted is a duplicate when sent again"
        );
        let back = SessionState::from_bytes(catalog, &state.to_bytes())
            .expect("a decoded state round-trips through its bytes");
        assert_eq!(back.to_bytes(), state.to_bytes());
        assert_eq!(
            batch.decode(catalog, Some(&back)),
            Ok(BatchOutcome::Duplicate)
        );
    }
    let _ = batch.decode(
        catalog,
        Some(&SessionState::new(catalog, batch.first_seq())),
    );
}

/// `decode_batch`: arbitrary bytes into the lockstep decoder. Bytes that
/// parse as a `Batch` are also retried with a valid VIN and catalog hash, so
/// the reconstruction code is reached.
pub fn decode_batch(data: &[u8]) {
    // Built once: the fuzzer's time goes to the decoder, not the catalog.
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    let catalog = CATALOG.get_or_init(Catalog::default_v1);
    if let Ok(batch) = CheckedBatch::parse(catalog, data) {
        exercise(catalog, batch);
    }
    if let Ok(mut raw) = Batch::decode(data) {
        raw.catalog_hash = catalog.hash();
        raw.vehicle_vin = "5YJ3E1EA000000001".into();
        if let Ok(batch) = CheckedBatch::check(catalog, raw) {
            exercise(catalog, batch);
        }
    }
    let _ = SessionState::from_bytes(catalog, data);
}

/// `decode_seed`: arbitrary bytes as a seed-form body, parsed and reconstructed.
pub fn decode_seed(data: &[u8]) {
    if let Ok(r) = TelemetryReading::decode(data) {
        let _ = SeedPredictor::default().reconstruct(&r);
    }
}
