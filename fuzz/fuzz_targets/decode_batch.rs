//! Arbitrary bytes into the lockstep decoder, with no state and with a
//! started session's state: it must answer (Ok or a typed error), never panic.
//! Bytes that parse as a `Batch` are also retried with a valid VIN and
//! catalog hash, so the fuzzer reaches the reconstruction code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_codec::{Catalog, CheckedBatch, SessionState};
use lockstep_proto::Message;
use lockstep_proto::v1::Batch;

fn exercise(catalog: &Catalog, batch: CheckedBatch) {
    let _ = batch.decode(catalog, None);
    let _ = batch.decode(catalog, Some(&SessionState::new(catalog, batch.first_seq())));
}

fuzz_target!(|data: &[u8]| {
    let catalog = Catalog::default_v1();
    if let Ok(batch) = CheckedBatch::parse(&catalog, data) {
        exercise(&catalog, batch);
    }
    if let Ok(mut raw) = Batch::decode(data) {
        raw.catalog_hash = catalog.hash();
        raw.vehicle_vin = "5YJ3E1EA000000001".into();
        if let Ok(batch) = CheckedBatch::check(&catalog, raw) {
            exercise(&catalog, batch);
        }
    }
    let _ = SessionState::from_bytes(&catalog, data);
});
