//! The edge side: decides per reading and channel what to transmit and packs
//! readings into [`Batch`]es.

use std::sync::Arc;

use lockstep_proto::v1::Batch;

use crate::catalog::{Catalog, Model, PositionChannels, Signal};
use crate::fixed::{cos_lat_q30, dist2_mm, lat_q_to_mm, lon_q_to_mm, mm_to_lat_q, mm_to_lon_q};
use crate::state::{
    Ask, Frame, FrameSource, LAT_LIMIT, LON_LIMIT, Outcome, SessionState, VALUE_LIMIT,
};
use crate::vin::Vin;

/// One reading as measured: a value (or none) per catalog channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub timestamp_ms: i64,
    /// Indexed by channel; `None` (or NaN) = not measured.
    pub values: Vec<Option<f64>>,
}

/// How many future readings [`Encoder::push_with_lookahead`] looks at.
pub const LOOKAHEAD: usize = 120;

/// Encoder settings that need not match between edge and cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// A keyframe at least this often (reading time, ms); 0 = only the first.
    pub keyframe_interval_ms: i64,
    /// Put the state checksum in every batch.
    pub checksum: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            keyframe_interval_ms: 1_800_000,
            checksum: true,
        }
    }
}

/// Encodes one vehicle session.
#[derive(Debug, Clone)]
pub struct Encoder {
    catalog: Arc<Catalog>,
    vin: Vin,
    session_id: u64,
    config: EncoderConfig,
    state: SessionState,
    keyframe_due: bool,
    last_keyframe_ts: i64,
    pending: Pending,
}

/// The readings encoded since the last [`Encoder::take_batch`].
#[derive(Debug, Clone, Default)]
struct Pending {
    first_seq: u64,
    first_ts: i64,
    prev_ts: i64,
    prev_dt: i64,
    count: u32,
    timestamp_dod: Vec<i64>,
    transmitted: Vec<u64>,
    nulls: Vec<u64>,
    any_null: bool,
    values: Vec<i64>,
    keyframes: Vec<u32>,
}

impl Encoder {
    /// A new session: `session_id` must be random and non-zero; its first
    /// reading is a keyframe with sequence number 0.
    pub fn new(catalog: Arc<Catalog>, vin: Vin, session_id: u64, config: EncoderConfig) -> Self {
        let state = SessionState::new(&catalog, 0);
        Self::resume(catalog, vin, session_id, config, state, (true, 0))
    }

    /// An encoder that continues a saved session: `state` and `schedule`
    /// as [`Self::state`] and [`Self::keyframe_schedule`] returned them when
    /// no reading was pending. It encodes the next readings exactly as the
    /// saved encoder would have (an edge's spool across restarts).
    pub fn resume(
        catalog: Arc<Catalog>,
        vin: Vin,
        session_id: u64,
        config: EncoderConfig,
        state: SessionState,
        schedule: (bool, i64),
    ) -> Self {
        Self {
            catalog,
            vin,
            session_id,
            config,
            state,
            keyframe_due: schedule.0,
            last_keyframe_ts: schedule.1,
            pending: Pending::default(),
        }
    }

    /// Whether the next reading is a keyframe, and the time of the last one.
    pub fn keyframe_schedule(&self) -> (bool, i64) {
        (self.keyframe_due, self.last_keyframe_ts)
    }

    pub fn config(&self) -> EncoderConfig {
        self.config
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn vin(&self) -> &Vin {
        &self.vin
    }

    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Sequence number of the next reading.
    pub fn next_seq(&self) -> u64 {
        self.state.next_seq()
    }

    /// The predictor state after the last encoded reading.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The next reading is a keyframe (the server asked for a resync).
    pub fn request_keyframe(&mut self) {
        self.keyframe_due = true;
    }

    /// Rewinds to `seq`, dropping pending readings: the next reading gets
    /// `seq` and is a keyframe. Used to re-send unacknowledged readings
    /// after the server asked for a resync.
    pub fn rewind(&mut self, seq: u64) {
        self.pending = Pending::default();
        self.state.set_next_seq(seq);
        self.keyframe_due = true;
    }

    /// Readings waiting for [`Self::take_batch`].
    pub fn pending(&self) -> usize {
        self.pending.count as usize
    }

    /// Encodes one reading; returns what the cloud will reconstruct.
    pub fn push(&mut self, reading: &Reading) -> Frame {
        self.push_with_lookahead(reading, &[])
    }

    /// Like [`Self::push`], with the readings that will follow this one
    /// (as many as the caller has; up to [`LOOKAHEAD`] are used). Where a
    /// transmitted value will be held, the encoder sends the middle of the
    /// range the next readings span instead of the reading itself — still
    /// within tolerance of it, and held for longer. The cloud decodes it like
    /// any other value; the error bound is unchanged.
    pub fn push_with_lookahead(&mut self, reading: &Reading, future: &[Reading]) -> Frame {
        let ts = reading.timestamp_ms;
        let keyframe = self.keyframe_due
            || (self.config.keyframe_interval_ms > 0
                && ts - self.last_keyframe_ts >= self.config.keyframe_interval_ms);
        if keyframe {
            self.keyframe_due = false;
            self.last_keyframe_ts = ts;
        }
        let p = &mut self.pending;
        if p.count == 0 {
            p.first_seq = self.state.next_seq();
            p.first_ts = ts;
            p.prev_dt = 0;
        } else {
            let dt = ts - p.prev_ts;
            p.timestamp_dod.push(dt - p.prev_dt);
            p.prev_dt = dt;
        }
        p.prev_ts = ts;
        if keyframe {
            p.keyframes.push(p.count);
        }
        let mut src = Actual {
            reading,
            future: &future[..future.len().min(LOOKAHEAD)],
            values: &mut p.values,
        };
        let Ok(frame) = self.state.step(&self.catalog, ts, keyframe, &mut src);
        p.transmitted.push(frame.transmitted);
        p.nulls.push(frame.nulls);
        p.any_null |= frame.nulls != 0;
        p.count += 1;
        frame
    }

    /// Packs the pending readings into a batch (`None` if there are none).
    pub fn take_batch(&mut self) -> Option<Batch> {
        if self.pending.count == 0 {
            return None;
        }
        let p = std::mem::take(&mut self.pending);
        Some(Batch {
            vehicle_vin: self.vin.to_string(),
            session_id: self.session_id,
            catalog_hash: self.catalog.hash(),
            first_seq: p.first_seq,
            count: p.count,
            first_timestamp_ms: p.first_ts,
            timestamp_dod: p.timestamp_dod,
            transmitted: p.transmitted,
            nulls: if p.any_null { p.nulls } else { Vec::new() },
            values: p.values,
            keyframes: p.keyframes,
            state_checksum: self.config.checksum.then(|| self.state.checksum()),
        })
    }
}

/// The encoder's [`FrameSource`]: compares actual values with predictions
/// and writes what it transmits.
struct Actual<'a> {
    reading: &'a Reading,
    future: &'a [Reading],
    values: &'a mut Vec<i64>,
}

fn value_of(r: &Reading, ch: usize) -> Option<f64> {
    r.values
        .get(ch)
        .copied()
        .flatten()
        .filter(|v| v.is_finite())
}

impl Actual<'_> {
    /// The quantised future values of `ch`, up to the first missing (or
    /// unencodable) one.
    fn future(&self, ch: usize, sig: &Signal) -> impl Iterator<Item = i64> + '_ {
        let sig = sig.clone();
        self.future.iter().map_while(move |r| {
            value_of(r, ch)
                .map(|v| sig.quantise(v))
                .filter(|q| (-VALUE_LIMIT..=VALUE_LIMIT).contains(q))
        })
    }

    /// The value to send for `q` when it will be held: the middle of the
    /// longest run of coming values that fit in one tolerance band around it.
    fn held_value(&self, ch: usize, sig: &Signal, q: i64, v: f64, turn: Option<i64>) -> i64 {
        let tol = sig.tolerance_q;
        let (mut lo, mut hi) = (q, q);
        for x in self.future(ch, sig) {
            // Angles are unwrapped next to `q`.
            let x = q + residual(x, q, turn);
            let (l, h) = (lo.min(x), hi.max(x));
            if h - l > 2 * tol {
                break;
            }
            (lo, hi) = (l, h);
        }
        let mid = lo + (hi - lo) / 2;
        let mid = turn.map_or(mid, |t| mid.rem_euclid(t));
        if within(sig, mid, q, v, turn) { mid } else { q }
    }

    /// The 2-D version of [`Self::held_value`]: the centre of the longest run
    /// of coming positions whose bounding box has a diagonal within 2·tol.
    fn held_position(&self, pc: PositionChannels, tol_mm: i64, q: (i64, i64)) -> (i64, i64) {
        let cos = cos_lat_q30(q.0);
        let (mut x0, mut x1, mut y0, mut y1) = (0i128, 0i128, 0i128, 0i128);
        let lim = 4 * i128::from(tol_mm) * i128::from(tol_mm);
        for r in self.future {
            let (Some(la), Some(lo)) = (value_of(r, pc.lat), value_of(r, pc.lon)) else {
                break;
            };
            let Some((la, lo)) = position_q(la, lo) else {
                break;
            };
            let x = lon_q_to_mm(lo - q.1, cos);
            let y = lat_q_to_mm(la - q.0);
            let (a, b, c, d) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            if (b - a) * (b - a) + (d - c) * (d - c) > lim {
                break;
            }
            (x0, x1, y0, y1) = (a, b, c, d);
        }
        let centre = (
            q.0 + mm_to_lat_q(((y0 + y1) / 2) as i64),
            q.1 + mm_to_lon_q(((x0 + x1) / 2) as i64, cos),
        );
        let tol = i128::from(tol_mm);
        if dist2_mm(q, centre) <= tol * tol {
            centre
        } else {
            q
        }
    }
}

/// Latitude or longitude in 1e-7 degrees.
fn quantise_deg(v: f64) -> i64 {
    (v * 1e7).round() as i64
}

/// A position in 1e-7 degrees, `None` beyond ±90° / ±180°.
fn position_q(lat: f64, lon: f64) -> Option<(i64, i64)> {
    let q = (quantise_deg(lat), quantise_deg(lon));
    ((-LAT_LIMIT..=LAT_LIMIT).contains(&q.0) && (-LON_LIMIT..=LON_LIMIT).contains(&q.1))
        .then_some(q)
}

impl FrameSource for Actual<'_> {
    type Error = std::convert::Infallible;

    fn scalar(&mut self, ch: usize, sig: &Signal, ask: Ask<i64>) -> Result<Outcome, Self::Error> {
        let Some(v) = value_of(self.reading, ch) else {
            return Ok(Outcome::Null);
        };
        let turn = angle_turn(sig);
        let mut q = sig.quantise(v);
        // A range check, not `abs()`: -1e300 quantises to i64::MIN.
        if !(-VALUE_LIMIT..=VALUE_LIMIT).contains(&q) {
            return Ok(Outcome::Null);
        }
        if let Some(t) = turn {
            q = q.rem_euclid(t);
        }
        if !ask.force && ask.pred.is_some_and(|p| within(sig, p, q, v, turn)) {
            return Ok(Outcome::Predicted);
        }
        if ask.holds && !self.future.is_empty() {
            q = self.held_value(ch, sig, q, v, turn);
        }
        self.values.push(match ask.pred {
            None => q,
            Some(p) => residual(q, p, turn),
        });
        Ok(Outcome::Sent(q))
    }

    fn position(
        &mut self,
        pc: PositionChannels,
        tol_mm: i64,
        ask: Ask<(i64, i64)>,
    ) -> Result<(Outcome, i64), Self::Error> {
        let (Some(la), Some(lo)) = (
            value_of(self.reading, pc.lat),
            value_of(self.reading, pc.lon),
        ) else {
            return Ok((Outcome::Null, 0));
        };
        let Some(mut q) = position_q(la, lo) else {
            return Ok((Outcome::Null, 0));
        };
        let tol = i128::from(tol_mm);
        if !ask.force && ask.pred.is_some_and(|p| dist2_mm(q, p) <= tol * tol) {
            return Ok((Outcome::Predicted, 0));
        }
        if ask.holds && !self.future.is_empty() {
            q = self.held_position(pc, tol_mm, q);
        }
        match ask.pred {
            None => self.values.extend([q.0, q.1]),
            Some(p) => self.values.extend([q.0 - p.0, q.1 - p.1]),
        }
        Ok((Outcome::Sent(q.0), q.1))
    }
}

/// Whether reconstructing `p` (quanta) for the actual value `v`, quantised
/// to `q`, keeps the error within tolerance, both in quanta and against the
/// unquantised value, so the bound holds for the raw reading too
/// (docs/protocol.md, section 5).
fn within(sig: &Signal, p: i64, q: i64, v: f64, turn: Option<i64>) -> bool {
    if residual(q, p, turn).abs() > sig.tolerance_q {
        return false;
    }
    // In quanta, unrounded: exact for readings that are whole quanta (the
    // usual case), where a comparison in units would trip on 0.145 − 0.143.
    let mut err = (p as f64 - sig.scale(v)).abs();
    if let Some(t) = turn {
        let t = t as f64;
        err %= t;
        err = err.min(t - err);
    }
    err <= sig.tolerance_q as f64
}

/// Quanta in a full turn for an angle channel.
pub(crate) fn angle_turn(sig: &Signal) -> Option<i64> {
    (sig.model == Model::Angle).then(|| 360 * 10i64.pow((-sig.quantum_exp) as u32))
}

/// `actual - pred`, wrapped into `[-turn/2, turn/2)` for angles.
pub(crate) fn residual(actual: i64, pred: i64, turn: Option<i64>) -> i64 {
    let r = actual - pred;
    match turn {
        Some(t) => (r + t / 2).rem_euclid(t) - t / 2,
        None => r,
    }
}
