//! What the server's fuzz targets do with their input, shared by the
//! cargo-fuzz targets (`fuzz/fuzz_targets/`) and `tests/fuzz_regressions.rs`,
//! which replays the committed seed corpus and every input a fuzzer ever
//! crashed on (`fuzz/regressions/<target>/`) in the normal test suite.
//! No I/O per input: the steps a request goes through before the store.
// Each fuzz target uses one of the functions.
#![allow(dead_code)]

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use axum::response::IntoResponse;
use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, SeedPredictor, Vin};
use lockstep_proto::Message;
use lockstep_proto::telemetry::TelemetryReading;
use lockstep_server::http::error::ApiError;
use lockstep_server::model::{SEED_SESSION, Signals, TelemetryRow};
use lockstep_server::protocol::{ClientMsg, ReadingJson, StartRequest};
use lockstep_server::services::ingest::{IngestError, check_seed_timestamp};

/// A fixed "now" (2026-01-01), so a crash reproduces whenever it is replayed.
const NOW_MS: i64 = 1_767_225_600_000;

/// The server's ingest limit (`--max-batch-readings` default).
const MAX_BATCH_READINGS: usize = 1000;

fn catalog() -> &'static (Catalog, Signals) {
    static C: OnceLock<(Catalog, Signals)> = OnceLock::new();
    C.get_or_init(|| {
        let c = Catalog::default_v1();
        let s = Signals::from_catalog(&c);
        (c, s)
    })
}

/// A refusal as the client would get it: the HTTP error mapping, rendered.
fn refuse(e: IngestError) {
    let response = ApiError::from(e).into_response();
    assert!(
        response.status().is_client_error() || response.status().is_server_error(),
        "a refusal is an error status, not {}",
        response.status()
    );
}

/// A stored reading as WebSocket clients receive it.
fn publish(row: TelemetryRow) {
    let signals = catalog().1.clone();
    let json = serde_json::to_string(&ReadingJson { row, signals })
        .expect("every stored reading serialises for WebSocket clients");
    serde_json::from_str::<serde_json::Value>(&json).expect("and is valid JSON");
}

/// `ingest_body`: the first byte picks the form (even: seed, odd: batch), the
/// rest is the `POST /api/telemetry` body. Runs the request's checks and
/// decoding up to the store, maps every refusal to its HTTP answer, and
/// renders what would be stored as the WebSocket clients' JSON.
pub fn ingest_body(data: &[u8]) {
    let Some((&form, body)) = data.split_first() else {
        return;
    };
    if form % 2 == 0 {
        ingest_seed(body)
    } else {
        ingest_batch(body)
    }
}

fn ingest_seed(body: &[u8]) {
    let (catalog, _) = catalog();
    let reading = match TelemetryReading::decode(body) {
        Ok(r) => r,
        Err(e) => return refuse(IngestError::Invalid(e.to_string())),
    };
    let vin = match Vin::parse(&reading.vehicle_vin) {
        Ok(v) => v,
        Err(e) => return refuse(IngestError::InvalidVin(e.to_string())),
    };
    if let Err(e) = check_seed_timestamp(reading.timestamp, NOW_MS) {
        return refuse(IngestError::Implausible(e));
    }
    if lockstep_codec::seed::seed_values(&reading)
        .iter()
        .any(|v| v.is_some_and(|x| !x.is_finite()))
    {
        return refuse(IngestError::Invalid("not finite".into()));
    }
    // Twice: on a fresh vehicle, and on one whose predictor saw it already.
    let mut predictor = SeedPredictor::default();
    for _ in 0..2 {
        let rec = predictor.reconstruct(&reading);
        let mut values = vec![None; catalog.len()];
        let mut transmitted = 0u64;
        for (i, field) in lockstep_codec::seed::SEED_FIELDS.iter().enumerate() {
            let ch = catalog.index_of(field).expect("a seed channel");
            values[ch] = rec.values[i];
            if rec.transmitted & (1 << i) != 0 {
                transmitted |= 1 << ch;
            }
        }
        publish(TelemetryRow {
            vin: Arc::from(vin.as_str()),
            session_id: SEED_SESSION,
            seq: reading.timestamp as u64,
            ts_ms: reading.timestamp,
            values,
            transmitted,
            keyframe: false,
        });
    }
}

fn ingest_batch(body: &[u8]) {
    let (catalog, _) = catalog();
    let cb = match CheckedBatch::parse(catalog, body) {
        Ok(cb) => cb,
        Err(e) => return refuse(IngestError::from_decode(e, None)),
    };
    if cb.len() > MAX_BATCH_READINGS {
        return refuse(IngestError::TooManyReadings {
            count: cb.len(),
            max: MAX_BATCH_READINGS,
        });
    }
    match cb.decode(catalog, None) {
        Ok(BatchOutcome::Fresh { readings, .. }) => {
            for r in readings {
                publish(TelemetryRow {
                    vin: Arc::from(cb.vin().as_str()),
                    session_id: cb.session_id(),
                    seq: r.seq,
                    ts_ms: r.timestamp_ms,
                    values: r.values,
                    transmitted: r.transmitted,
                    keyframe: r.keyframe,
                });
            }
        }
        Ok(BatchOutcome::Duplicate) => {}
        Err(e) => refuse(IngestError::from_decode(e, Some(cb.first_seq()))),
    }
}

/// `ws_client_msg`: arbitrary bytes as a WebSocket text message (and as a
/// `POST /logger/start` body), parsed as the server parses them.
pub fn ws_client_msg(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match serde_json::from_str::<ClientMsg>(text) {
        Ok(ClientMsg::Subscribe { vins }) => {
            let set: HashSet<String> = vins.unwrap_or_default().into_iter().collect();
            std::hint::black_box(set);
        }
        Ok(ClientMsg::StartLogger(req)) => {
            std::hint::black_box(req);
        }
        Ok(ClientMsg::StopLogger) | Err(_) => {}
    }
    let _ = serde_json::from_str::<StartRequest>(text);
}
