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

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use lockstep_codec::catalog::Model;
use lockstep_codec::fixed::dist2_mm;
use lockstep_codec::seed::SeedPredictor;
use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, Encoder, EncoderConfig, Reading};
use lockstep_proto::telemetry::TelemetryReading;
use prost::Message;
use serde::Serialize;

use crate::sim::replay_vin;
use crate::sources::{RepairReport, Trip};

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
struct Acc {
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

/// Replays `trips` through the codec and the baselines.
pub fn analyse(catalog: Arc<Catalog>, trips: &[Trip], batch: usize) -> Result<Report> {
    ensure!(batch > 0, "the batch size must be at least 1");
    let sigs = catalog.signals();
    let n = sigs.len();
    let pos = catalog.position();
    let pos_tol_m = pos.map(|p| sigs[p.lat].tolerance()).unwrap_or(0.0);
    let pos_tol_mm = pos.map(|p| sigs[p.lat].tolerance_q).unwrap_or(0);
    let is_pos = |c: usize| pos.is_some_and(|p| c == p.lat || c == p.lon);
    let mut acc = vec![Acc::default(); n];
    let mut ov = OverallReport {
        files: trips.len(),
        batch_readings: batch,
        ..Default::default()
    };
    let (mut lock_bytes, mut raw_bytes, mut seed_bytes, mut json_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut repairs = RepairReport::default();
    let seed_fields = lockstep_codec::seed::SEED_FIELDS.len();

    let mut files = Vec::with_capacity(trips.len());
    let mut problems = Vec::new();
    for trip in trips {
        repairs.merge(&trip.repairs);
        let totals = |acc: &[Acc]| {
            acc.iter().fold((0, 0, 0), |t, a| {
                (t.0 + a.fields, t.1 + a.sent, t.2 + a.hold_sent)
            })
        };
        let before = (totals(&acc), lock_bytes, ov.readings);
        let vin = replay_vin(&trip.name);
        let session_id = lockstep_codec::catalog::fnv1a64(trip.name.as_bytes()) | 1;
        let mut enc = Encoder::new(
            catalog.clone(),
            vin.clone(),
            session_id,
            EncoderConfig::default(),
        );
        let mut state = None;
        // Baselines' state.
        let mut seed_a = SeedPredictor::default(); // speed, battery, power, heading
        let mut seed_b = SeedPredictor::default(); // the other channels, in order
        let mut hold = Hold::new(n, false);
        let mut hold_forced = Hold::new(n, true);

        for chunk in trip.readings.chunks(batch) {
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
            lock_bytes += body.len() as u64;
            ov.batches += 1;
            let cb = CheckedBatch::parse(&catalog, &body)
                .context("the codec could not parse its own batch")?;
            let decoded = match cb
                .decode(&catalog, state.as_ref())
                .context("the codec could not decode its own batch")?
            {
                BatchOutcome::Fresh { readings, state: s } => {
                    state = Some(s);
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
                ov.keyframes += u64::from(d.keyframe);
                for p in compare(&catalog, r, d, &mut acc) {
                    if problems.len() < 20 {
                        problems.push(format!(
                            "{} seq {} (t={}): {p}",
                            trip.name, d.seq, d.timestamp_ms
                        ));
                    }
                }
            }
            // Baselines and byte counts per reading.
            let keyframes: Vec<bool> = decoded.iter().map(|d| d.keyframe).collect();
            let mut json = Vec::with_capacity(chunk.len());
            for (i, r) in chunk.iter().enumerate() {
                let v = |c: usize| r.values[c].filter(|x| x.is_finite());
                // Seed EWMA.
                let mut seed_msg = TelemetryReading {
                    vehicle_vin: vin.to_string(),
                    timestamp: r.timestamp_ms,
                    ..Default::default()
                };
                for c in 0..n {
                    if is_pos(c) {
                        continue;
                    }
                    let Some(x) = v(c) else { continue };
                    let (p, slot) = if c < seed_fields {
                        (&mut seed_a, c)
                    } else {
                        (&mut seed_b, c - seed_fields)
                    };
                    if slot >= 4 {
                        continue;
                    }
                    let keep = matches!(p.predict(slot), Some(pr) if (x - pr).abs() <= sigs[c].tolerance());
                    if !keep {
                        p.update(slot, x);
                        acc[c].seed_sent += 1;
                        if c < seed_fields {
                            *[
                                &mut seed_msg.speed,
                                &mut seed_msg.battery,
                                &mut seed_msg.power,
                                &mut seed_msg.heading,
                            ][c] = Some(x);
                        }
                    }
                }
                if let Some(pc) = pos
                    && let (Some(la), Some(lo)) = (v(pc.lat), v(pc.lon))
                {
                    let (sl, so) = (pc.lat - seed_fields, pc.lon - seed_fields);
                    let keep = match (seed_b.predict(sl), seed_b.predict(so)) {
                        (Some(pla), Some(plo)) => {
                            dist2_mm((q7(pla), q7(plo)), (q7(la), q7(lo)))
                                <= i128::from(pos_tol_mm).pow(2)
                        }
                        _ => false,
                    };
                    if !keep {
                        seed_b.update(sl, la);
                        seed_b.update(so, lo);
                        acc[pc.lat].seed_sent += 1;
                        acc[pc.lon].seed_sent += 1;
                    }
                }
                seed_bytes += seed_msg.encoded_len() as u64;
                // Send-on-delta baselines.
                let mut sent = vec![0u64; n];
                hold.step(&catalog, r, keyframes[i], &mut sent);
                for (a, k) in acc.iter_mut().zip(&sent) {
                    a.hold_sent += k;
                }
                sent.fill(0);
                hold_forced.step(&catalog, r, keyframes[i], &mut sent);
                for (a, k) in acc.iter_mut().zip(&sent) {
                    a.hold_forced_sent += k;
                }
                // Raw full protobuf: seed message with every present seed field, 9 bytes per extra double.
                let full = TelemetryReading {
                    vehicle_vin: vin.to_string(),
                    timestamp: r.timestamp_ms,
                    speed: v(0),
                    battery: v(1),
                    power: v(2),
                    heading: v(3),
                };
                let extra = (seed_fields..n).filter(|&c| v(c).is_some()).count() as u64;
                raw_bytes += full.encoded_len() as u64 + 9 * extra;
                // JSON object.
                let mut o = serde_json::Map::new();
                o.insert("vehicle_vin".into(), vin.as_str().into());
                o.insert("timestamp".into(), r.timestamp_ms.into());
                for (c, sig) in sigs.iter().enumerate() {
                    if let Some(x) = v(c) {
                        o.insert(sig.name.clone(), x.into());
                    }
                }
                json.push(serde_json::Value::Object(o));
            }
            let text = serde_json::to_vec(&json)?;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&text)?;
            json_bytes += gz.finish()?.len() as u64;
            ov.readings += chunk.len() as u64;
        }
        let ((f0, s0, h0), b0, r0) = before;
        let (f1, s1, h1) = totals(&acc);
        let (fields, readings) = (f1 - f0, ov.readings - r0);
        let share = |sent: u64| {
            if fields == 0 {
                0.0
            } else {
                1.0 - sent as f64 / fields as f64
            }
        };
        files.push(FileReport {
            name: trip.name.clone(),
            readings,
            skipped_fraction: share(s1 - s0),
            hold_skipped_fraction: share(h1 - h0),
            bytes_per_reading: if readings == 0 {
                0.0
            } else {
                (lock_bytes - b0) as f64 / readings as f64
            },
        });
    }

    let frac = |skipped: u64, total: u64| {
        if total == 0 {
            0.0
        } else {
            skipped as f64 / total as f64
        }
    };
    let mut signals = BTreeMap::new();
    let mut all_ok = true;
    let (mut seed_sent, mut hold_sent, mut hold_forced_sent) = (0u64, 0u64, 0u64);
    for (c, sig) in sigs.iter().enumerate() {
        let a = &acc[c];
        let (max_error, tolerance, ok) = if is_pos(c) {
            (a.max_err_m, pos_tol_m, a.max_err_m <= pos_tol_m)
        } else {
            (
                a.max_err_q as f64 * sig.quantum(),
                sig.tolerance(),
                a.max_err_q <= sig.tolerance_q,
            )
        };
        let ok = ok && a.null_mismatches == 0;
        all_ok &= ok;
        ov.fields += a.fields;
        ov.transmitted += a.sent;
        seed_sent += a.seed_sent;
        hold_sent += a.hold_sent;
        hold_forced_sent += a.hold_forced_sent;
        signals.insert(
            sig.name.clone(),
            SignalReport {
                unit: if is_pos(c) {
                    format!("{} (error: m)", sig.unit)
                } else {
                    sig.unit.clone()
                },
                model: sig.model.name().into(),
                fields: a.fields,
                transmitted: a.sent,
                skipped_fraction: frac(a.fields - a.sent.min(a.fields), a.fields),
                max_error,
                tolerance,
                within_tolerance: ok,
                max_error_vs_raw: a.max_err_raw,
                null_mismatches: a.null_mismatches,
                seed_skipped_fraction: frac(a.fields - a.seed_sent.min(a.fields), a.fields),
                hold_skipped_fraction: frac(a.fields - a.hold_sent.min(a.fields), a.fields),
                hold_forced_skipped_fraction: frac(
                    a.fields - a.hold_forced_sent.min(a.fields),
                    a.fields,
                ),
            },
        );
    }
    let per = |b: u64| {
        if ov.readings == 0 {
            0.0
        } else {
            b as f64 / ov.readings as f64
        }
    };
    ov.skipped_fraction = frac(ov.fields - ov.transmitted, ov.fields);
    ov.seed_skipped_fraction = frac(ov.fields - seed_sent, ov.fields);
    ov.hold_skipped_fraction = frac(ov.fields - hold_sent, ov.fields);
    ov.hold_forced_skipped_fraction = frac(ov.fields - hold_forced_sent, ov.fields);
    ov.bytes_per_reading = per(lock_bytes);
    ov.raw_protobuf_bytes_per_reading = per(raw_bytes);
    ov.bytes_fraction_of_raw_protobuf = if raw_bytes == 0 {
        0.0
    } else {
        lock_bytes as f64 / raw_bytes as f64
    };
    ov.seed_wire_bytes_per_reading = per(seed_bytes);
    ov.gzip_json_bytes_per_reading = per(json_bytes);
    ov.all_within_tolerance = all_ok;
    Ok(Report {
        signals,
        signal_order: sigs.iter().map(|s| s.name.clone()).collect(),
        overall: ov,
        repairs,
        files,
        problems,
    })
}

/// Send-on-delta: hold the last sent quantised value per channel (positions:
/// the last sent fix, 2-D bound, codec metric). With `forced`, also send on
/// the codec's keyframes and after its max silence, as the codec must.
struct Hold {
    forced: bool,
    /// Per channel: (last sent value in quanta, when).
    last: Vec<Option<(i64, i64)>>,
    pos: Option<((i64, i64), i64)>,
}

impl Hold {
    fn new(n: usize, forced: bool) -> Self {
        Self {
            forced,
            last: vec![None; n],
            pos: None,
        }
    }

    /// Counts into `sent[c]` the channels this baseline transmits for `r`.
    fn step(&mut self, catalog: &Catalog, r: &Reading, keyframe: bool, sent: &mut [u64]) {
        let sigs = catalog.signals();
        let pc = catalog.position();
        let ts = r.timestamp_ms;
        let force = |sig: &lockstep_codec::Signal, last_ts: i64| {
            self.forced
                && (keyframe || (sig.max_silence_ms > 0 && ts - last_ts >= sig.max_silence_ms))
        };
        for (c, sig) in sigs.iter().enumerate() {
            let Some(x) = r.values[c].filter(|x| x.is_finite()) else {
                continue;
            };
            if let Some(p) = pc.filter(|p| c == p.lat || c == p.lon) {
                if c == p.lon {
                    continue;
                }
                let Some(lo) = r.values[p.lon].filter(|x| x.is_finite()) else {
                    continue;
                };
                let q = (q7(x), q7(lo));
                let tol = i128::from(sig.tolerance_q);
                let send = match self.pos {
                    None => true,
                    Some((h, t)) => force(sig, t) || dist2_mm(h, q) > tol * tol,
                };
                if send {
                    self.pos = Some((q, ts));
                    sent[p.lat] += 1;
                    sent[p.lon] += 1;
                }
                continue;
            }
            let t = turn(sig);
            let q = match t {
                Some(t) => sig.quantise(x).rem_euclid(t),
                None => sig.quantise(x),
            };
            let send = match self.last[c] {
                None => true,
                Some((h, lt)) => force(sig, lt) || diff_q(q, h, t) > sig.tolerance_q,
            };
            if send {
                self.last[c] = Some((q, ts));
                sent[c] += 1;
            }
        }
    }
}

/// Compares one decoded reading with the actual one, channel by channel.
/// Returns a description of each field that broke the guarantee.
fn compare(
    catalog: &Catalog,
    r: &Reading,
    d: &lockstep_codec::DecodedReading,
    acc: &mut [Acc],
) -> Vec<String> {
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

fn pct(f: f64) -> String {
    format!("{:.1} %", f * 100.0)
}

/// The human-readable report.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let o = &r.overall;
    s += &format!(
        "Lockstep codec report: {} file(s), {} readings, batches of {} readings ({} batches, {} keyframes)\n",
        o.files, o.readings, o.batch_readings, o.batches, o.keyframes
    );
    s += &format!("Input repairs: {}\n\n", r.repairs);
    s += "                         ---------- fields skipped ----------\n";
    s += &format!(
        "{:<10} {:>7} {:>9} {:>8} {:>8} {:>8}  {:>12} {:>12}  {:<4} {}\n",
        "signal",
        "fields",
        "lockstep",
        "hold",
        "hold+kf",
        "seed",
        "max error",
        "tolerance",
        "ok",
        "model"
    );
    for name in &r.signal_order {
        let x = &r.signals[name];
        let unit = if x.unit.contains("(error: m)") {
            "m".to_string()
        } else {
            x.unit.clone()
        };
        if x.fields == 0 {
            s += &format!("{name:<10} {:>7}  (no data)\n", 0);
            continue;
        }
        let flag = if x.skipped_fraction + 1e-12 < x.hold_skipped_fraction {
            "  < hold"
        } else {
            ""
        };
        s += &format!(
            "{name:<10} {:>7} {:>9} {:>8} {:>8} {:>8}  {:>12} {:>12}  {:<4} {}{flag}\n",
            x.fields,
            pct(x.skipped_fraction),
            pct(x.hold_skipped_fraction),
            pct(x.hold_forced_skipped_fraction),
            pct(x.seed_skipped_fraction),
            format!("{:.4} {unit}", x.max_error),
            format!("{:.4} {unit}", x.tolerance),
            if x.within_tolerance { "yes" } else { "NO" },
            x.model,
        );
    }
    s += &format!(
        "{:<10} {:>7} {:>9} {:>8} {:>8} {:>8}\n\n",
        "overall",
        o.fields,
        pct(o.skipped_fraction),
        pct(o.hold_skipped_fraction),
        pct(o.hold_forced_skipped_fraction),
        pct(o.seed_skipped_fraction)
    );
    if r.files.len() > 1 {
        s += "Per file (all signals): lockstep skipped / hold skipped / lockstep bytes per reading\n";
        for f in &r.files {
            s += &format!(
                "  {:<28} {:>6} readings  {:>7} {:>7}  {:>6.2}\n",
                f.name,
                f.readings,
                pct(f.skipped_fraction),
                pct(f.hold_skipped_fraction),
                f.bytes_per_reading
            );
        }
        s += "\n";
    }
    s += "Bytes per reading:\n";
    s += &format!(
        "  lockstep batches      {:>7.2}  ({} of raw protobuf)\n",
        o.bytes_per_reading,
        pct(o.bytes_fraction_of_raw_protobuf)
    );
    s += &format!(
        "  raw full protobuf     {:>7.2}\n",
        o.raw_protobuf_bytes_per_reading
    );
    s += &format!(
        "  seed wire (4 fields)  {:>7.2}\n",
        o.seed_wire_bytes_per_reading
    );
    s += &format!(
        "  gzip'd JSON batches   {:>7.2}\n",
        o.gzip_json_bytes_per_reading
    );
    s += &format!(
        "\nEvery field within tolerance: {}.\n",
        if o.all_within_tolerance { "yes" } else { "NO" }
    );
    for p in &r.problems {
        s += &format!("  problem: {p}\n");
    }
    s += "Skipped = non-null fields not transmitted. hold = send-on-delta (hold the last sent value);\n\
          hold+kf = the same plus the codec's keyframes and max-silence sends; seed = the original\n\
          EWMA (alpha 0.3, per channel). Max error = |decoded - recorded value quantised|, positions in 2-D metres.\n";
    s
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
