//! The conformance vectors: deterministic inputs, and the files today's
//! codec makes of them. Shared by the conformance test (which compares) and
//! `examples/regenerate_vectors.rs` (which writes a new, unreleased version).
// Each of the two targets uses a different part of this module.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use lockstep_codec::seed::SEED_TOLERANCES;
use lockstep_codec::{
    BatchOutcome, Catalog, CheckedBatch, Encoder, EncoderConfig, Reading, SeedPredictor,
    SessionState, Vin,
};
use lockstep_proto::Message;
use lockstep_proto::telemetry::TelemetryReading;
use serde::{Deserialize, Serialize};

const VIN: &str = "5YJ3E1EA000000042";

#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub struct Vector {
    pub description: String,
    pub catalog_text: String,
    pub catalog_hash: String,
    pub vin: String,
    pub session_id: String,
    keyframe_interval_ms: i64,
    /// Readings per batch; `lookahead` = pass the following readings to the encoder.
    batch_size: usize,
    lookahead: bool,
    /// Sequence numbers at which the edge rewinds (a resync) before pushing that reading again.
    pub input: Vec<InputReading>,
    pub batches: Vec<String>,
    pub decoded: Vec<OutputReading>,
    pub final_state_checksum: String,
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
pub struct InputReading {
    pub timestamp_ms: i64,
    pub values: Vec<Option<f64>>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub struct OutputReading {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub keyframe: bool,
    pub transmitted: u64,
    pub values: Vec<Option<f64>>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
pub struct SeedVector {
    pub description: String,
    /// Each body is one seed `TelemetryReading`, hex.
    pub bodies: Vec<String>,
    /// speed, battery, power, heading after reconstruction.
    pub reconstructed: Vec<[Option<f64>; 4]>,
}

/// The version whose vectors today's encoder must reproduce byte for byte.
pub const CURRENT: &str = "v1";

/// `conformance/<version>`.
pub fn dir(version: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("conformance")
        .join(version)
}

/// The versions listed in `conformance/RELEASED`: edges use them, so their
/// files never change again.
pub fn released() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/RELEASED");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The folder to write `version`'s vectors into, or why not: a released
/// version is frozen, and a behaviour change is a new version.
pub fn writable_dir(version: &str) -> Result<PathBuf, String> {
    let ok = version.strip_prefix('v').is_some_and(|n| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && !n.starts_with('0')
    });
    if !ok {
        return Err(format!("{version:?} is not a version folder name like v2"));
    }
    if released().iter().any(|r| r == version) {
        return Err(format!(
            "{version} is released (conformance/RELEASED): its vectors are frozen; \
             write a changed behaviour into a new version, e.g. v{}",
            released()
                .iter()
                .filter_map(|r| r.strip_prefix('v')?.parse::<u32>().ok())
                .max()
                .unwrap_or(0)
                + 1
        ));
    }
    Ok(dir(version))
}

/// Writes every vector of today's codec into `writable_dir(version)`.
pub fn write_all(version: &str) -> Result<Vec<PathBuf>, String> {
    let dir = writable_dir(version)?;
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut files: Vec<(String, String)> = inputs()
        .into_iter()
        .enumerate()
        .map(|(i, (d, b, l, k, input))| {
            (
                format!("lockstep-{:02}.json", i + 1),
                serde_json::to_string_pretty(&build_vector(d, b, l, k, input)).unwrap(),
            )
        })
        .collect();
    files.push((
        "seed-01.json".into(),
        serde_json::to_string_pretty(&seed_vector()).unwrap(),
    ));
    let mut written = Vec::new();
    for (name, json) in files {
        let path = dir.join(name);
        std::fs::write(&path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Deterministic inputs, chosen to exercise every model and edge case.
pub fn inputs() -> Vec<(&'static str, usize, bool, i64, Vec<InputReading>)> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 10_000) as f64 / 10_000.0
    };
    let mut city = Vec::new();
    let (mut v, mut soc, mut h, mut lat, mut lon, mut alt) =
        (0.0f64, 80.0f64, 350.0f64, 34.0078f64, -6.8549f64, 23.0f64);
    for i in 0..400i64 {
        let target = if (i / 60) % 3 == 2 { 0.0 } else { 45.0 };
        v = (v + (target - v) * 0.1 + rnd() - 0.5).max(0.0);
        soc -= 0.002 + rnd() * 0.001;
        h = (h + rnd() * 6.0 - 2.5).rem_euclid(360.0); // crosses 0/360
        lat += v / 3.6 * h.to_radians().cos() / 111_320.0;
        lon += v / 3.6 * h.to_radians().sin() / 92_000.0;
        alt += rnd() - 0.5;
        let power = v * 0.15 + (rnd() - 0.5) * 2.0 - if target == 0.0 { 3.0 } else { 0.0 };
        // Irregular steps, a gap of 7 s, nulls in some channels.
        let dt = if i == 200 {
            7_000
        } else {
            1_000 + (i % 3) * 10
        };
        let null = |k: i64| i % 97 == k;
        city.push((
            dt,
            vec![
                Some(v),
                (!null(5)).then_some(soc),
                Some(power),
                Some(h),
                (!null(11)).then_some(lat),
                (!null(11)).then_some(lon),
                (!null(13)).then_some(alt),
            ],
        ));
    }
    let mut t = 1_617_000_000_000i64;
    let city: Vec<InputReading> = city
        .into_iter()
        .map(|(dt, values)| {
            t += dt;
            InputReading {
                timestamp_ms: t,
                values,
            }
        })
        .collect();
    let sparse: Vec<InputReading> = city
        .iter()
        .take(50)
        .map(|r| InputReading {
            timestamp_ms: r.timestamp_ms,
            values: vec![r.values[0], None, None, None, None, None, None],
        })
        .collect();
    vec![
        (
            "city drive, batches of 25, no lookahead, keyframe every 120 s",
            25,
            false,
            120_000,
            city.clone(),
        ),
        (
            "city drive, batches of 60, lookahead, keyframe every 300 s",
            60,
            true,
            300_000,
            city,
        ),
        (
            "speed only, every other channel null, one batch per reading",
            1,
            false,
            300_000,
            sparse,
        ),
    ]
}

pub fn build_vector(
    description: &str,
    batch_size: usize,
    lookahead: bool,
    keyframe_interval_ms: i64,
    input: Vec<InputReading>,
) -> Vector {
    let catalog = Arc::new(Catalog::default_v1());
    let config = EncoderConfig {
        keyframe_interval_ms,
        checksum: true,
    };
    let mut enc = Encoder::new(
        catalog.clone(),
        Vin::parse(VIN).unwrap(),
        0x0123_4567_89ab_cdef,
        config,
    );
    let readings: Vec<Reading> = input
        .iter()
        .map(|r| Reading {
            timestamp_ms: r.timestamp_ms,
            values: r.values.clone(),
        })
        .collect();
    let mut batches = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        let future = if lookahead {
            &readings[i + 1..]
        } else {
            &[][..]
        };
        enc.push_with_lookahead(r, future);
        if enc.pending() == batch_size {
            batches.push(enc.take_batch().unwrap().encode_to_vec());
        }
    }
    batches.extend(enc.take_batch().map(|b| b.encode_to_vec()));
    let decoded = decode(&catalog, &batches);
    Vector {
        description: description.into(),
        catalog_text: catalog.canonical_text(),
        catalog_hash: format!("{:016x}", catalog.hash()),
        vin: VIN.into(),
        session_id: format!("{:016x}", enc.session_id()),
        keyframe_interval_ms,
        batch_size,
        lookahead,
        input,
        batches: batches.iter().map(|b| hex(b)).collect(),
        decoded: decoded.0,
        final_state_checksum: format!("{:08x}", decoded.1.checksum()),
    }
}

pub fn decode(catalog: &Catalog, batches: &[Vec<u8>]) -> (Vec<OutputReading>, SessionState) {
    let mut state: Option<SessionState> = None;
    let mut out = Vec::new();
    for b in batches {
        let cb = CheckedBatch::parse(catalog, b).expect("golden batches parse");
        match cb
            .decode(catalog, state.as_ref())
            .expect("golden batches decode")
        {
            BatchOutcome::Fresh { readings, state: s } => {
                out.extend(readings.into_iter().map(|r| OutputReading {
                    seq: r.seq,
                    timestamp_ms: r.timestamp_ms,
                    keyframe: r.keyframe,
                    transmitted: r.transmitted,
                    values: r.values,
                }));
                state = Some(s);
            }
            BatchOutcome::Duplicate => panic!("golden batches are in order"),
        }
    }
    (out, state.expect("a batch"))
}

pub fn seed_vector() -> SeedVector {
    let mut edge = SeedPredictor::default();
    let mut cloud = SeedPredictor::default();
    let (mut bodies, mut reconstructed) = (Vec::new(), Vec::new());
    for i in 0..120 {
        let t = f64::from(i);
        let actual = [
            60.0 + 20.0 * (t / 15.0).sin(),
            90.0 - t * 0.05,
            12.0 * (t / 7.0).cos(),
            (350.0 + t * 3.0) % 360.0,
        ];
        let msg: TelemetryReading = edge.encode(
            "5YJ3E1EA000000001",
            1_700_000_000_000 + i64::from(i) * 1000,
            actual,
            SEED_TOLERANCES,
        );
        bodies.push(hex(&msg.encode_to_vec()));
        reconstructed.push(cloud.reconstruct(&msg).values);
    }
    SeedVector { description: "seed wire form: exponential smoothing alpha 0.3 in f64, per vehicle; heading without wrap-around".into(), bodies, reconstructed }
}
