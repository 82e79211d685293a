//! The codec report: replays recorded drives through the codec without a
//! server — encode with [`Encoder`], parse and decode every batch with
//! [`CheckedBatch`] (a true round trip over the wire bytes) — and compares
//! with baselines on the same readings.
//!
//! Definitions (what the numbers mean):
//! - a **field** is one channel of one reading that has a value (nulls are not
//!   counted); latitude and longitude count as two fields;
//! - **skipped** = a field not transmitted (the cloud predicts it);
//! - **max error** = the largest |decoded − actual| where *actual* is the
//!   recorded value quantised as the codec does (signal quantum; 1e-7° for
//!   positions), computed from the *decoded* values. Scalars are compared in
//!   whole quanta (exact), headings with wrap-around, positions as the 2-D
//!   distance in metres on the WGS84 ellipsoid (local meridian/parallel
//!   lengths at the mean latitude), independent of the codec's own metric;
//! - **seed** = the original predictor, `SeedPredictor`'s f64 EWMA (α = 0.3,
//!   updated with transmitted values only, no heading wrap), per channel, with
//!   the catalog's tolerances. The seed has no position or altitude model: its
//!   EWMA runs on latitude, longitude and altitude too, and a position is sent
//!   (both coordinates) when the predicted fix is more than the position
//!   tolerance away (codec metric);
//! - **hold** = send-on-delta: hold the last sent (quantised) value; send when
//!   the actual value is more than the tolerance away (positions: 2-D, codec
//!   metric). No keyframes, no forced sends (the codec has both);
//! - **lockstep bytes** = the encoded `lockstep.v1.Batch` bodies, batches of
//!   `batch` readings per file;
//! - **raw protobuf bytes** = a full reading as one protobuf message: the seed
//!   `TelemetryReading` with VIN, timestamp and every present seed field
//!   (prost `encoded_len`), plus 9 bytes (1-byte tag + 8-byte double) per
//!   present latitude, longitude and altitude, as fields 7–9 would take;
//! - **seed wire bytes** = the `TelemetryReading` the seed encoder really sends
//!   (only the four seed fields, absent when predicted);
//! - **gzip JSON bytes** = the same batches as JSON arrays of objects
//!   (`vehicle_vin`, `timestamp` and every present signal by name, recorded
//!   values), each batch gzipped (flate2, default level).

//!
//! Layout: this module replays the drives through the codec (round trip and
//! comparison), [`baselines`] runs the seed EWMA, send-on-delta and the byte
//! counts of the other wire forms on the same readings, and [`render`] turns
//! the counters into a [`Report`] and a text table.

mod baselines;
mod render;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use lockstep_codec::catalog::Model;
use lockstep_codec::{
    BatchOutcome, Catalog, CheckedBatch, DecodedReading, Encoder, EncoderConfig, Reading,
    SessionState,
};
use prost::Message;
use serde::Serialize;

use crate::sim::replay_vin;
use crate::sources::{RepairReport, Trip};
use baselines::Baselines;
pub use render::render_text;

/// Per-signal results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SignalReport {
    pub unit: String,
    pub model: String,
    /// Non-null fields.
    pub fields: u64,
    pub transmitted: u64,
    pub skipped_fraction: f64,
    /// Largest |decoded − actual (quantised)|, in the unit (metres for positions).
    pub max_error: f64,
    pub tolerance: f64,
    pub within_tolerance: bool,
    /// Largest |decoded − raw recorded value| (before quantisation; at most
    /// tolerance + half a quantum by construction), for information.
    pub max_error_vs_raw: f64,
    /// Fields whose null-ness differs between decoded and actual (must be 0).
    pub null_mismatches: u64,
    pub seed_skipped_fraction: f64,
    pub hold_skipped_fraction: f64,
    /// Hold-last with the codec's keyframes and max-silence forced sends:
    /// what the predictor alone must beat.
    pub hold_forced_skipped_fraction: f64,
}

/// Results over every signal.
#[derive(Debug, Clone, Default, Serialize)]
pub struct OverallReport {
    pub files: usize,
    pub readings: u64,
    pub fields: u64,
    pub transmitted: u64,
    pub skipped_fraction: f64,
    pub seed_skipped_fraction: f64,
    pub hold_skipped_fraction: f64,
    pub hold_forced_skipped_fraction: f64,
    /// Lockstep wire bytes per reading.
    pub bytes_per_reading: f64,
    pub raw_protobuf_bytes_per_reading: f64,
    /// Lockstep bytes as a fraction of the raw protobuf bytes.
    pub bytes_fraction_of_raw_protobuf: f64,
    pub seed_wire_bytes_per_reading: f64,
    pub gzip_json_bytes_per_reading: f64,
    pub batch_readings: usize,
    pub batches: u64,
    pub keyframes: u64,
    pub all_within_tolerance: bool,
}

/// The whole report (the `--json` object).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub signals: BTreeMap<String, SignalReport>,
    /// Signal names in catalog order (JSON objects are unordered).
    pub signal_order: Vec<String>,
    pub overall: OverallReport,
    pub repairs: RepairReport,
    /// Per input file, in order.
    pub files: Vec<FileReport>,
    /// The first (at most 20) fields that broke the guarantee: a null
    /// mismatch or an error beyond tolerance, with where they happened.
    pub problems: Vec<String>,
}

/// Per-file figures (every signal together).
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub name: String,
    pub readings: u64,
    pub skipped_fraction: f64,
    pub hold_skipped_fraction: f64,
    pub bytes_per_reading: f64,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Acc {
    fields: u64,
    sent: u64,
    seed_sent: u64,
    hold_sent: u64,
    hold_forced_sent: u64,
    /// Quanta for scalars, millimetres for positions (rounded up).
    max_err_q: i64,
    max_err_m: f64,
    /// Largest |decoded − raw recorded value| (before quantisation).
    max_err_raw: f64,
    null_mismatches: u64,
}

/// Metres per degree of latitude and longitude at `lat_deg` (WGS84).
fn metres_per_degree(lat_deg: f64) -> (f64, f64) {
    let p = lat_deg.to_radians();
    let m_lat =
        111_132.92 - 559.82 * (2.0 * p).cos() + 1.175 * (4.0 * p).cos() - 0.0023 * (6.0 * p).cos();
    let m_lon = 111_412.84 * p.cos() - 93.5 * (3.0 * p).cos() + 0.118 * (5.0 * p).cos();
    (m_lat, m_lon)
}

/// 2-D distance in metres between two fixes (degrees).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (m_lat, m_lon) = metres_per_degree((a.0 + b.0) / 2.0);
    ((b.0 - a.0) * m_lat).hypot((b.1 - a.1) * m_lon)
}

fn q7(v: f64) -> i64 {
    (v * 1e7).round() as i64
}

/// Quanta in a full turn for an angle signal.
fn turn(sig: &lockstep_codec::Signal) -> Option<i64> {
    (sig.model == Model::Angle).then(|| 360 * 10i64.pow((-sig.quantum_exp) as u32))
}

fn diff_q(a: i64, b: i64, turn: Option<i64>) -> i64 {
    match turn {
        Some(t) => ((a - b + t / 2).rem_euclid(t) - t / 2).abs(),
        None => (a - b).abs(),
    }
}

/// Body bytes of each wire form over the whole run.
#[derive(Debug, Clone, Copy, Default)]
struct ByteCounts {
    lockstep: u64,
    raw_protobuf: u64,
    seed_wire: u64,
    gzip_json: u64,
}

/// The counters of a run, filled trip by trip.
struct Analysis {
    catalog: Arc<Catalog>,
    acc: Vec<Acc>,
    ov: OverallReport,
    bytes: ByteCounts,
    repairs: RepairReport,
    files: Vec<FileReport>,
    problems: Vec<String>,
}

/// Replays `trips` through the codec and the baselines.
pub fn analyse(catalog: Arc<Catalog>, trips: &[Trip], batch: usize) -> Result<Report> {
    ensure!(batch > 0, "the batch size must be at least 1");
    let mut run = Analysis {
        acc: vec![Acc::default(); catalog.signals().len()],
        ov: OverallReport {
            files: trips.len(),
            batch_readings: batch,
            ..Default::default()
        },
        bytes: ByteCounts::default(),
        repairs: RepairReport::default(),
        files: Vec::with_capacity(trips.len()),
        problems: Vec::new(),
        catalog,
    };
    for trip in trips {
        run.trip(trip)?;
    }
    Ok(render::summarise(run))
}

impl Analysis {
    /// (fields, lockstep sent, hold sent) so far over every signal.
    fn totals(&self) -> (u64, u64, u64) {
        self.acc.iter().fold((0, 0, 0), |t, a| {
            (t.0 + a.fields, t.1 + a.sent, t.2 + a.hold_sent)
        })
    }

    /// One drive, as its own session, batch by batch.
    fn trip(&mut self, trip: &Trip) -> Result<()> {
        self.repairs.merge(&trip.repairs);
        let before = (self.totals(), self.bytes.lockstep, self.ov.readings);
        let vin = replay_vin(&trip.name);
        let session_id = lockstep_codec::catalog::fnv1a64(trip.name.as_bytes()) | 1;
        let mut enc = Encoder::new(
            self.catalog.clone(),
            vin.clone(),
            session_id,
            EncoderConfig::default(),
        );
        let mut state = None;
        let mut baselines = Baselines::new(self.catalog.signals().len());
        for chunk in trip.readings.chunks(self.ov.batch_readings) {
            let decoded = self.round_trip(&mut enc, &mut state, chunk, &trip.name)?;
            let mut json = Vec::with_capacity(chunk.len());
            for (r, d) in chunk.iter().zip(&decoded) {
                let b = baselines.step(&self.catalog, vin.as_str(), r, d.keyframe, &mut self.acc);
                self.bytes.seed_wire += b.seed_wire;
                self.bytes.raw_protobuf += b.raw_protobuf;
                json.push(b.json);
            }
            let text = serde_json::to_vec(&json)?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&text)?;
            self.bytes.gzip_json += gz.finish()?.len() as u64;
            self.ov.readings += chunk.len() as u64;
        }
        let ((f0, s0, h0), b0, r0) = before;
        let (f1, s1, h1) = self.totals();
        let (fields, readings) = (f1 - f0, self.ov.readings - r0);
        let share = |sent: u64| {
            if fields == 0 {
                0.0
            } else {
                1.0 - sent as f64 / fields as f64
            }
        };
        self.files.push(FileReport {
            name: trip.name.clone(),
            readings,
            skipped_fraction: share(s1 - s0),
            hold_skipped_fraction: share(h1 - h0),
            bytes_per_reading: if readings == 0 {
                0.0
            } else {
                (self.bytes.lockstep - b0) as f64 / readings as f64
            },
        });
        Ok(())
    }

    /// Encodes `chunk` as one batch, decodes it from its bytes, and compares
    /// every decoded reading with the recorded one. Returns the decoded readings.
    fn round_trip(
        &mut self,
        enc: &mut Encoder,
        state: &mut Option<SessionState>,
        chunk: &[Reading],
        file: &str,
    ) -> Result<Vec<DecodedReading>> {
        let catalog = &self.catalog;
        let n = catalog.signals().len();
        for (j, r) in chunk.iter().enumerate() {
            ensure!(
                r.values.len() == n,
                "a reading has {} values, the catalog {n} channels",
                r.values.len()
            );
            // Like an edge that encodes a batch when it cuts it: each
            // reading is encoded knowing the rest of its batch.
            enc.push_with_lookahead(r, &chunk[j + 1..]);
        }
        let body = enc
            .take_batch()
            .context("a batch after pushing readings")?
            .encode_to_vec();
        self.bytes.lockstep += body.len() as u64;
        self.ov.batches += 1;
        let cb = CheckedBatch::parse(catalog, &body)
            .context("the codec could not parse its own batch")?;
        let decoded = match cb
            .decode(catalog, state.as_ref())
            .context("the codec could not decode its own batch")?
        {
            BatchOutcome::Fresh { readings, state: s } => {
                *state = Some(s);
                readings
            }
            BatchOutcome::Duplicate => bail!("the decoder called a fresh batch a duplicate"),
        };
        ensure!(
            decoded.len() == chunk.len(),
            "decoded {} readings of {}",
            decoded.len(),
            chunk.len()
        );
        for (r, d) in chunk.iter().zip(&decoded) {
            ensure!(
                d.timestamp_ms == r.timestamp_ms,
                "timestamp {} decoded as {}",
                r.timestamp_ms,
                d.timestamp_ms
            );
            self.ov.keyframes += u64::from(d.keyframe);
            for p in compare(catalog, r, d, &mut self.acc) {
                if self.problems.len() < 20 {
                    self.problems
                        .push(format!("{file} seq {} (t={}): {p}", d.seq, d.timestamp_ms));
                }
            }
        }
        Ok(decoded)
    }
}

/// Compares one decoded reading with the actual one, channel by channel.
/// Returns a description of each field that broke the guarantee.
fn compare(catalog: &Catalog, r: &Reading, d: &DecodedReading, acc: &mut [Acc]) -> Vec<String> {
    let mut problems = Vec::new();
    let sigs = catalog.signals();
    let pos = catalog.position();
    for (c, sig) in sigs.iter().enumerate() {
        let actual = r.values[c].filter(|x| x.is_finite());
        let got = d.values.get(c).copied().flatten();
        let a = &mut acc[c];
        if actual.is_some() {
            a.fields += 1;
            a.sent += (d.transmitted >> c) & 1;
        }
        match (actual, got) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                a.null_mismatches += 1;
                problems.push(format!(
                    "{}: recorded {actual:?}, decoded {got:?}",
                    sig.name
                ));
            }
            (Some(x), Some(y)) => {
                if let Some(p) = pos.filter(|p| c == p.lat || c == p.lon) {
                    // Both coordinates get the 2-D error of the pair.
                    let (Some(la), Some(lo), Some(dla), Some(dlo)) = (
                        r.values[p.lat],
                        r.values[p.lon],
                        d.values[p.lat],
                        d.values[p.lon],
                    ) else {
                        continue;
                    };
                    let actual_q = (q7(la) as f64 / 1e7, q7(lo) as f64 / 1e7);
                    let e = distance_m(actual_q, (dla, dlo));
                    if c == p.lat && e > sig.tolerance() {
                        problems.push(format!("position: recorded ({la}, {lo}), decoded ({dla}, {dlo}), {e:.3} m apart"));
                    }
                    a.max_err_m = a.max_err_m.max(e);
                    a.max_err_raw = a.max_err_raw.max(distance_m((la, lo), (dla, dlo)));
                } else {
                    let t = turn(sig);
                    let (qa, qd) = match t {
                        Some(t) => (sig.quantise(x).rem_euclid(t), sig.quantise(y).rem_euclid(t)),
                        None => (sig.quantise(x), sig.quantise(y)),
                    };
                    let e = diff_q(qa, qd, t);
                    if e > sig.tolerance_q {
                        problems.push(format!("{}: recorded {x}, decoded {y}", sig.name));
                    }
                    a.max_err_q = a.max_err_q.max(e);
                    let raw = if t.is_some() {
                        ((y - x).rem_euclid(360.0)).min((x - y).rem_euclid(360.0))
                    } else {
                        (y - x).abs()
                    };
                    a.max_err_raw = a.max_err_raw.max(raw);
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::{Format, load};
    use std::path::Path;

    #[test]
    fn distances_are_metres() {
        // One arc-second of latitude ≈ 30.8 m.
        let d = distance_m((34.0, -6.8), (34.0 + 1.0 / 3600.0, -6.8));
        assert!((d - 30.8).abs() < 0.2, "{d}");
        assert_eq!(distance_m((1.0, 2.0), (1.0, 2.0)), 0.0);
    }

    #[test]
    fn cycling_round_trip_within_tolerance() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/cycling/cycling.csv.gz");
        let trip = load(Format::Cycling, &path).unwrap();
        let r = analyse(Arc::new(Catalog::default_v1()), &[trip], 60).unwrap();
        for (name, s) in &r.signals {
            assert!(
                s.within_tolerance,
                "{name}: {} > {}",
                s.max_error, s.tolerance
            );
        }
        assert_eq!(r.overall.readings, 4391);
        assert!(r.overall.raw_protobuf_bytes_per_reading > 40.0);
    }
}
