//! Predictor state of one vehicle session and the per-reading engine that
//! edge and cloud both run. The encoder and the decoder differ only in where
//! a channel's value comes from ([`FrameSource`]); everything else — the
//! predictions, the state updates, the checksum — is this one code path.

use crate::catalog::{Catalog, Model, PositionChannels, Signal, fnv1a32};
use crate::fixed::{
    ONE_Q30, cos_cdeg, cos_lat_q30, dist2_mm, div_round, mm_to_lat_q, mm_to_lon_q, sin_cdeg,
};

/// Largest magnitude of a value in quanta (2^52). The edge treats a larger
/// measurement as missing, the cloud rejects a batch that reconstructs one, so
/// no arithmetic below can overflow, whatever the input.
pub const VALUE_LIMIT: i64 = 1 << 52;
/// Latitude and longitude limits in 1e-7 degrees.
pub const LAT_LIMIT: i64 = 900_000_000;
pub const LON_LIMIT: i64 = 1_800_000_000;
/// Timestamps are within ±2^50 ms of the epoch (35,000 years).
pub const TS_LIMIT: i64 = 1 << 50;
/// Dead reckoning clamps the speed (quanta) and the time step (ms).
const DR_SPEED_LIMIT: i64 = 1 << 24;
const DR_DT_LIMIT: i64 = 1 << 32;

/// Score added to an adaptive candidate whose prediction was within tolerance.
const HIT: i64 = 256;

/// Predictor state of one scalar channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Channel {
    /// Last reconstructed value; `None` = no value yet, or null.
    last: Option<i64>,
    /// The last two transmitted points `(timestamp_ms, value)`, older first.
    a1: Option<(i64, i64)>,
    a2: Option<(i64, i64)>,
    /// Smoothed value of the `ewma` model.
    ewma: Option<i64>,
    /// Time of the last transmission (max-silence rule).
    last_tx_ts: i64,
    /// Adaptive model: scores of [hold, slope] and the current choice.
    score: [i64; 2],
    choice: u8,
}

/// Dead-reckoning state of the position pair.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Position {
    /// The last transmitted fix `(lat, lon)` in 1e-7 degrees.
    fix: Option<(i64, i64)>,
    /// Distance travelled since the fix, millimetres east and north.
    east_mm: i64,
    north_mm: i64,
    /// Scores of [hold, dead reckoning] and the current choice.
    score: [i64; 2],
    choice: u8,
}

/// The two position predictions of one reading, `(lat, lon)` in 1e-7
/// degrees, and the dead-reckoning offsets `(east, north)` mm after its step.
struct Candidates {
    hold: Option<(i64, i64)>,
    dr: Option<(i64, i64)>,
    offsets: (i64, i64),
}

/// Everything edge and cloud must agree on for one session. Serialised by
/// [`SessionState::to_bytes`] (persisted by the server, hashed for the
/// checksum).
///
/// Equality compares what edge and cloud must agree on; the cloud's
/// [`Accepted`] record is bookkeeping of its own and left out.
#[derive(Debug, Clone)]
pub struct SessionState {
    next_seq: u64,
    last_ts: Option<i64>,
    channels: Vec<Channel>,
    position: Position,
    accepted: Option<Accepted>,
}

impl PartialEq for SessionState {
    fn eq(&self, other: &Self) -> bool {
        self.next_seq == other.next_seq
            && self.last_ts == other.last_ts
            && self.channels == other.channels
            && self.position == other.position
    }
}

impl Eq for SessionState {}

/// What the cloud last accepted in a session, so that it can tell a retry of
/// an accepted batch from a different batch over the same sequence numbers
/// (docs/protocol.md, section 7). Kept only by the decoder; persisted with
/// the state but not part of the checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// First sequence number of the current run: the session's first
    /// keyframe, or the keyframe that jumped over a gap. Nothing before it is
    /// known to belong to the run the state continues.
    pub(crate) run_start: u64,
    /// First sequence number of the last accepted batch.
    pub(crate) last_first: u64,
    /// Digest of the last accepted batch (see `decoder::digest`).
    pub(crate) last_digest: u64,
}

/// What happened to one channel in one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The channel has no value in this reading.
    Null,
    /// Not transmitted: the prediction is the value.
    Predicted,
    /// Transmitted; the reconstructed value in quanta.
    Sent(i64),
}

/// What the engine knows about a channel before its value is decided.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<P> {
    /// `None` when there is nothing to predict from.
    pub pred: Option<P>,
    /// It must be transmitted (max silence).
    pub force: bool,
    /// After a transmission the next prediction holds the sent value, so the
    /// edge may choose the value to send (see `Encoder::push_with_lookahead`).
    pub holds: bool,
}

/// Where channel values come from: the actual reading (encoder) or the wire (decoder).
pub(crate) trait FrameSource {
    type Error;
    /// A scalar channel.
    fn scalar(&mut self, ch: usize, sig: &Signal, ask: Ask<i64>) -> Result<Outcome, Self::Error>;
    /// The position pair; an `Outcome::Sent` carries the latitude, the
    /// longitude is returned in the second element.
    fn position(
        &mut self,
        pc: PositionChannels,
        tol_mm: i64,
        ask: Ask<(i64, i64)>,
    ) -> Result<(Outcome, i64), Self::Error>;
}

/// The result of one reading, in quanta per channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub keyframe: bool,
    /// Bit i set = channel i transmitted.
    pub transmitted: u64,
    /// Bit i set = channel i null.
    pub nulls: u64,
    /// Reconstructed values in quanta.
    pub values: Vec<Option<i64>>,
}

impl SessionState {
    /// The empty state of a session that has not started; its first reading
    /// must be a keyframe.
    pub fn new(catalog: &Catalog, first_seq: u64) -> Self {
        Self {
            next_seq: first_seq,
            last_ts: None,
            channels: vec![Channel::default(); catalog.len()],
            position: Position::default(),
            accepted: None,
        }
    }

    /// The cloud's record of the last accepted batch (`None` on the edge, and
    /// for states persisted before the record existed).
    pub(crate) fn accepted(&self) -> Option<Accepted> {
        self.accepted
    }

    pub(crate) fn set_accepted(&mut self, a: Accepted) {
        self.accepted = Some(a);
    }

    /// Sequence number the next reading must carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Timestamp of the last reading processed.
    pub fn last_timestamp_ms(&self) -> Option<i64> {
        self.last_ts
    }

    /// Sets the sequence number of the next reading (resync after a rewind).
    pub(crate) fn set_next_seq(&mut self, seq: u64) {
        self.next_seq = seq;
    }

    /// Forgets every prediction (a keyframe).
    fn reset(&mut self) {
        for c in &mut self.channels {
            *c = Channel::default();
        }
        self.position = Position::default();
    }

    /// Runs one reading through the predictors: predicts each channel, asks
    /// `src` what happened, then learns the reconstructed values.
    pub(crate) fn step<S: FrameSource>(
        &mut self,
        catalog: &Catalog,
        ts: i64,
        keyframe: bool,
        src: &mut S,
    ) -> Result<Frame, S::Error> {
        if keyframe {
            self.reset();
        }
        let n = catalog.len();
        let mut values: Vec<Option<i64>> = vec![None; n];
        let mut transmitted = 0u64;
        let mut nulls = 0u64;
        // Computed once, when the position's turn comes, and learnt from after.
        let mut candidates = None;
        for (i, sig) in catalog.signals().iter().enumerate() {
            match sig.model {
                Model::PositionPartner => continue,
                Model::Position => {
                    let pc = catalog.position().expect("validated catalog");
                    let c = self.position_candidates(&values, pc, ts);
                    let pred = if self.position.choice == 0 {
                        c.hold
                    } else {
                        c.dr
                    };
                    candidates = Some(c);
                    let ask = Ask {
                        pred,
                        force: self.silent_too_long(i, sig, ts),
                        holds: self.position.choice == 0,
                    };
                    match src.position(pc, sig.tolerance_q, ask)? {
                        (Outcome::Null, _) => nulls |= (1 << pc.lat) | (1 << pc.lon),
                        (Outcome::Predicted, _) => {
                            let (la, lo) =
                                pred.expect("a source predicts only what has a prediction");
                            values[pc.lat] = Some(la);
                            values[pc.lon] = Some(lo);
                        }
                        (Outcome::Sent(la), lo) => {
                            transmitted |= (1 << pc.lat) | (1 << pc.lon);
                            values[pc.lat] = Some(la);
                            values[pc.lon] = Some(lo);
                        }
                    }
                }
                _ => {
                    let pred = self.predict(i, sig, ts);
                    let holds = match sig.model {
                        Model::Hold | Model::Angle => true,
                        Model::Adaptive => self.channels[i].choice == 0,
                        _ => false,
                    };
                    let ask = Ask {
                        pred,
                        force: self.silent_too_long(i, sig, ts),
                        holds,
                    };
                    match src.scalar(i, sig, ask)? {
                        Outcome::Null => nulls |= 1 << i,
                        Outcome::Predicted => {
                            values[i] =
                                Some(pred.expect("a source predicts only what has a prediction"))
                        }
                        Outcome::Sent(v) => {
                            transmitted |= 1 << i;
                            values[i] = Some(v);
                        }
                    }
                }
            }
        }
        self.learn(catalog, ts, &values, transmitted, candidates);
        let frame = Frame {
            seq: self.next_seq,
            timestamp_ms: ts,
            keyframe,
            transmitted,
            nulls,
            values,
        };
        self.next_seq += 1;
        self.last_ts = Some(ts);
        Ok(frame)
    }

    fn silent_too_long(&self, i: usize, sig: &Signal, ts: i64) -> bool {
        let c = &self.channels[i];
        sig.max_silence_ms > 0 && c.last.is_some() && ts - c.last_tx_ts >= sig.max_silence_ms
    }

    /// The prediction of scalar channel `i` at `ts`.
    fn predict(&self, i: usize, sig: &Signal, ts: i64) -> Option<i64> {
        let c = &self.channels[i];
        match sig.model {
            Model::Hold | Model::Angle => c.last,
            Model::Slope => slope(c, ts),
            Model::Ewma => c.ewma,
            Model::Adaptive => {
                if c.choice == 0 {
                    c.last
                } else {
                    slope(c, ts)
                }
            }
            Model::Position | Model::PositionPartner => unreachable!("handled as a pair"),
        }
    }

    /// Hold and dead-reckoning predictions of the position, and the DR
    /// offsets after this reading's step.
    fn position_candidates(
        &self,
        values: &[Option<i64>],
        pc: PositionChannels,
        ts: i64,
    ) -> Candidates {
        let hold = match (self.channels[pc.lat].last, self.channels[pc.lon].last) {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        };
        let p = &self.position;
        let (mut east, mut north) = (p.east_mm, p.north_mm);
        let speed = pc.speed.and_then(|i| values[i]);
        let heading = pc.heading.and_then(|i| values[i]);
        if let (Some(v), Some(h), Some(last)) = (speed, heading, self.last_ts) {
            // Clamped so hostile input cannot overflow: ±167,772 km/h, 49 days.
            let v = v.clamp(-DR_SPEED_LIMIT, DR_SPEED_LIMIT);
            let dt = (ts - last).clamp(0, DR_DT_LIMIT);
            // 0.01 km/h for dt ms = v·dt/360 mm.
            let dist = div_round(i128::from(v) * i128::from(dt), 360);
            east = east
                .saturating_add(
                    div_round(dist * i128::from(sin_cdeg(h)), i128::from(ONE_Q30)) as i64,
                );
            north = north
                .saturating_add(
                    div_round(dist * i128::from(cos_cdeg(h)), i128::from(ONE_Q30)) as i64,
                );
        }
        let dr = match p.fix {
            Some((la, lo)) => Some((
                (la + mm_to_lat_q(north)).clamp(-LAT_LIMIT, LAT_LIMIT),
                (lo + mm_to_lon_q(east, cos_lat_q30(la))).clamp(-LON_LIMIT, LON_LIMIT),
            )),
            None => hold,
        };
        Candidates {
            hold,
            dr,
            offsets: (east, north),
        }
    }

    /// Updates every channel with the reconstructed values of one reading.
    fn learn(
        &mut self,
        catalog: &Catalog,
        ts: i64,
        values: &[Option<i64>],
        transmitted: u64,
        candidates: Option<Candidates>,
    ) {
        for (i, sig) in catalog.signals().iter().enumerate() {
            if matches!(sig.model, Model::Position | Model::PositionPartner) {
                continue;
            }
            let Some(r) = values[i] else {
                self.channels[i] = Channel::default();
                continue;
            };
            let tx = transmitted & (1 << i) != 0;
            let c = &mut self.channels[i];
            if sig.model == Model::Adaptive {
                let candidates = [c.last, slope(c, ts)];
                score(
                    &mut c.score,
                    &mut c.choice,
                    candidates.map(|p| p.map(|p| (p - r).abs() <= sig.tolerance_q)),
                );
            }
            c.last = Some(r);
            if tx {
                c.a1 = c.a2;
                c.a2 = Some((ts, r));
                c.ewma = Some(match c.ewma {
                    None => r,
                    Some(s) => div_round(3 * i128::from(r) + 7 * i128::from(s), 10) as i64,
                });
                c.last_tx_ts = ts;
            }
        }
        let Some(pc) = catalog.position() else { return };
        let tol = i128::from(catalog.signals()[pc.lat].tolerance_q);
        match (values[pc.lat], values[pc.lon], candidates) {
            (Some(la), Some(lo), Some(Candidates { hold, dr, offsets })) => {
                let hits = [hold, dr].map(|p| p.map(|p| dist2_mm(p, (la, lo)) <= tol * tol));
                let p = &mut self.position;
                score(&mut p.score, &mut p.choice, hits);
                if transmitted & (1 << pc.lat) != 0 {
                    p.fix = Some((la, lo));
                    p.east_mm = 0;
                    p.north_mm = 0;
                    self.channels[pc.lat].last_tx_ts = ts;
                    self.channels[pc.lon].last_tx_ts = ts;
                } else {
                    (p.east_mm, p.north_mm) = offsets;
                }
                self.channels[pc.lat].last = Some(la);
                self.channels[pc.lon].last = Some(lo);
            }
            _ => {
                self.channels[pc.lat] = Channel::default();
                self.channels[pc.lon] = Channel::default();
                self.position = Position::default();
            }
        }
    }

    /// Serialisation persisted by the server: the canonical predictor bytes
    /// (docs/protocol.md, "Serialisation and checksum"), then the cloud's
    /// acceptance record if there is one (`u8 1`, `u64 run_start`,
    /// `u64 last_first`, `u64 last_digest`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.predictor_bytes();
        if let Some(a) = self.accepted {
            b.push(1);
            for w in [a.run_start, a.last_first, a.last_digest] {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
        b
    }

    /// The canonical bytes edge and cloud agree on, hashed for the checksum.
    fn predictor_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + self.channels.len() * 80);
        b.push(1u8);
        b.extend_from_slice(&self.next_seq.to_le_bytes());
        put_opt(&mut b, self.last_ts);
        for c in &self.channels {
            put_opt(&mut b, c.last);
            put_pair(&mut b, c.a1);
            put_pair(&mut b, c.a2);
            put_opt(&mut b, c.ewma);
            b.extend_from_slice(&c.last_tx_ts.to_le_bytes());
            b.extend_from_slice(&c.score[0].to_le_bytes());
            b.extend_from_slice(&c.score[1].to_le_bytes());
            b.push(c.choice);
        }
        let p = &self.position;
        put_pair(&mut b, p.fix);
        b.extend_from_slice(&p.east_mm.to_le_bytes());
        b.extend_from_slice(&p.north_mm.to_le_bytes());
        b.extend_from_slice(&p.score[0].to_le_bytes());
        b.extend_from_slice(&p.score[1].to_le_bytes());
        b.push(p.choice);
        b
    }

    /// Reads [`Self::to_bytes`] back; `None` if the bytes do not fit `catalog`.
    pub fn from_bytes(catalog: &Catalog, bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.u8()? != 1 {
            return None;
        }
        let next_seq = r.i64()? as u64;
        let last_ts = r.opt()?;
        let mut channels = Vec::with_capacity(catalog.len());
        for _ in 0..catalog.len() {
            channels.push(Channel {
                last: r.opt()?,
                a1: r.pair()?,
                a2: r.pair()?,
                ewma: r.opt()?,
                last_tx_ts: r.i64()?,
                score: [r.i64()?, r.i64()?],
                choice: r.u8()?,
            });
        }
        let position = Position {
            fix: r.pair()?,
            east_mm: r.i64()?,
            north_mm: r.i64()?,
            score: [r.i64()?, r.i64()?],
            choice: r.u8()?,
        };
        let accepted = match r.u8() {
            None => None,
            Some(1) => Some(Accepted {
                run_start: r.i64()? as u64,
                last_first: r.i64()? as u64,
                last_digest: r.i64()? as u64,
            }),
            Some(_) => return None,
        };
        r.0.is_empty().then_some(Self {
            next_seq,
            last_ts,
            channels,
            position,
            accepted,
        })
    }

    /// FNV-1a 32 of the predictor bytes ([`Self::to_bytes`] without the
    /// cloud's acceptance record).
    pub fn checksum(&self) -> u32 {
        fnv1a32(&self.predictor_bytes())
    }
}

/// Slope prediction: the line through the last two transmitted points, else
/// hold; clamped to ±[`VALUE_LIMIT`].
fn slope(c: &Channel, ts: i64) -> Option<i64> {
    match (c.a1, c.a2) {
        (Some((t1, v1)), Some((t2, v2))) if t2 > t1 => {
            let n = i128::from(v2 - v1) * i128::from(ts - t2);
            let p = i128::from(v2) + div_round(n, i128::from(t2 - t1));
            Some(p.clamp(-i128::from(VALUE_LIMIT), i128::from(VALUE_LIMIT)) as i64)
        }
        _ => c.last,
    }
}

/// Exponentially decaying hit count per candidate; switch only when another
/// candidate scores strictly higher than the current choice.
fn score(scores: &mut [i64; 2], choice: &mut u8, hits: [Option<bool>; 2]) {
    for (s, h) in scores.iter_mut().zip(hits) {
        *s = *s - (*s >> 3) + if h == Some(true) { HIT } else { 0 };
    }
    let other = 1 - *choice as usize;
    if scores[other] > scores[*choice as usize] {
        *choice = other as u8;
    }
}

fn put_opt(b: &mut Vec<u8>, v: Option<i64>) {
    match v {
        None => b.push(0),
        Some(v) => {
            b.push(1);
            b.extend_from_slice(&v.to_le_bytes());
        }
    }
}

fn put_pair(b: &mut Vec<u8>, v: Option<(i64, i64)>) {
    match v {
        None => b.push(0),
        Some((x, y)) => {
            b.push(1);
            b.extend_from_slice(&x.to_le_bytes());
            b.extend_from_slice(&y.to_le_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&v, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(v)
    }
    fn i64(&mut self) -> Option<i64> {
        let (head, rest) = self.0.split_at_checked(8)?;
        self.0 = rest;
        Some(i64::from_le_bytes(head.try_into().ok()?))
    }
    fn opt(&mut self) -> Option<Option<i64>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.i64()?)),
            _ => None,
        }
    }
    fn pair(&mut self) -> Option<Option<(i64, i64)>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some((self.i64()?, self.i64()?))),
            _ => None,
        }
    }
}
