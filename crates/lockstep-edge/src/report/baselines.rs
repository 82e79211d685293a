//! The baselines the codec is measured against, run on the same readings:
//! the seed EWMA, send-on-delta ("hold", with and without the codec's forced
//! sends), and the byte counts of the seed wire form, a raw full protobuf
//! reading and gzip'd JSON (see the definitions in [`super`]).

use lockstep_codec::fixed::dist2_mm;
use lockstep_codec::seed::SeedPredictor;
use lockstep_codec::{Catalog, Reading};
use lockstep_proto::telemetry::TelemetryReading;
use prost::Message;

use super::{Acc, diff_q, q7, turn};

/// What one reading costs in the other wire forms.
pub(super) struct ReadingBytes {
    pub seed_wire: u64,
    pub raw_protobuf: u64,
    /// The reading as a JSON object (gzipped per batch by the caller).
    pub json: serde_json::Value,
}

/// The baselines' state for one drive.
pub(super) struct Baselines {
    /// Seed EWMA of speed, battery, power, heading.
    seed_a: SeedPredictor,
    /// Seed EWMA of the other channels, in order.
    seed_b: SeedPredictor,
    hold: Hold,
    hold_forced: Hold,
}

impl Baselines {
    pub fn new(channels: usize) -> Self {
        Self {
            seed_a: SeedPredictor::default(),
            seed_b: SeedPredictor::default(),
            hold: Hold::new(channels, false),
            hold_forced: Hold::new(channels, true),
        }
    }

    /// Runs every baseline on `r` (`keyframe`: the codec made it one),
    /// counting sends into `acc`; returns its byte costs.
    pub fn step(
        &mut self,
        catalog: &Catalog,
        vin: &str,
        r: &Reading,
        keyframe: bool,
        acc: &mut [Acc],
    ) -> ReadingBytes {
        let n = catalog.signals().len();
        let seed_wire = self.seed(catalog, vin, r, acc);
        // Send-on-delta baselines.
        let mut sent = vec![0u64; n];
        self.hold.step(catalog, r, keyframe, &mut sent);
        for (a, k) in acc.iter_mut().zip(&sent) {
            a.hold_sent += k;
        }
        sent.fill(0);
        self.hold_forced.step(catalog, r, keyframe, &mut sent);
        for (a, k) in acc.iter_mut().zip(&sent) {
            a.hold_forced_sent += k;
        }
        ReadingBytes {
            seed_wire,
            raw_protobuf: raw_protobuf_bytes(vin, r, n),
            json: json_object(catalog, vin, r),
        }
    }

    /// The seed EWMA on every channel; returns the seed wire bytes of `r`.
    fn seed(&mut self, catalog: &Catalog, vin: &str, r: &Reading, acc: &mut [Acc]) -> u64 {
        let sigs = catalog.signals();
        let n = sigs.len();
        let pos = catalog.position();
        let pos_tol_mm = pos.map(|p| sigs[p.lat].tolerance_q).unwrap_or(0);
        let is_pos = |c: usize| pos.is_some_and(|p| c == p.lat || c == p.lon);
        let seed_fields = lockstep_codec::seed::SEED_FIELDS.len();
        let v = |c: usize| r.values[c].filter(|x| x.is_finite());
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
                (&mut self.seed_a, c)
            } else {
                (&mut self.seed_b, c - seed_fields)
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
            let keep = match (self.seed_b.predict(sl), self.seed_b.predict(so)) {
                (Some(pla), Some(plo)) => {
                    dist2_mm((q7(pla), q7(plo)), (q7(la), q7(lo))) <= i128::from(pos_tol_mm).pow(2)
                }
                _ => false,
            };
            if !keep {
                self.seed_b.update(sl, la);
                self.seed_b.update(so, lo);
                acc[pc.lat].seed_sent += 1;
                acc[pc.lon].seed_sent += 1;
            }
        }
        seed_msg.encoded_len() as u64
    }
}

/// Raw full protobuf: the seed message with every present seed field, plus
/// 9 bytes per extra double.
fn raw_protobuf_bytes(vin: &str, r: &Reading, n: usize) -> u64 {
    let v = |c: usize| r.values[c].filter(|x| x.is_finite());
    let seed_fields = lockstep_codec::seed::SEED_FIELDS.len();
    let full = TelemetryReading {
        vehicle_vin: vin.to_string(),
        timestamp: r.timestamp_ms,
        speed: v(0),
        battery: v(1),
        power: v(2),
        heading: v(3),
    };
    let extra = (seed_fields..n).filter(|&c| v(c).is_some()).count() as u64;
    full.encoded_len() as u64 + 9 * extra
}

/// The reading as a JSON object: VIN, timestamp, every present signal by name.
fn json_object(catalog: &Catalog, vin: &str, r: &Reading) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert("vehicle_vin".into(), vin.into());
    o.insert("timestamp".into(), r.timestamp_ms.into());
    for (c, sig) in catalog.signals().iter().enumerate() {
        if let Some(x) = r.values[c].filter(|x| x.is_finite()) {
            o.insert(sig.name.clone(), x.into());
        }
    }
    serde_json::Value::Object(o)
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
