//! Arbitrary bytes as a seed-form body: parse and reconstruct without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_codec::SeedPredictor;
use lockstep_proto::Message;
use lockstep_proto::telemetry::TelemetryReading;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = TelemetryReading::decode(data) {
        let _ = SeedPredictor::default().reconstruct(&r);
    }
});
