//! The cloud side: validates a [`Batch`] against the session's state and
//! reconstructs every reading, or says exactly why it cannot.

use lockstep_proto::v1::Batch;
use prost::Message;

use crate::catalog::{Catalog, PositionChannels, Signal};
use crate::encoder::angle_turn;
use crate::state::{
    Accepted, Ask, Frame, FrameSource, LAT_LIMIT, LON_LIMIT, Outcome, SessionState, TS_LIMIT,
    VALUE_LIMIT,
};
use crate::vin::{Vin, VinError};

/// The furthest a keyframe may jump ahead of the next expected sequence
/// number (2^32 readings: 13 years at 10 Hz). A genuine edge jumps only over
/// readings the cloud lost; a larger jump is answered as a gap, so no batch
/// can move a session towards the end of the sequence space.
pub const MAX_SEQ_JUMP: u64 = 1 << 32;

/// Why a batch was not accepted. Each variant is a distinct outcome the
/// server maps to its own answer; see [`DecodeError::resync_required`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a valid `lockstep.v1.Batch` (400).
    #[error("malformed batch: {0}")]
    Malformed(String),
    /// The VIN is not 17 valid characters (422).
    #[error("invalid vehicle_vin: {0}")]
    Vin(#[from] VinError),
    /// Edge and cloud use different signal catalogs (409).
    #[error(
        "catalog mismatch: the server uses catalog {expected:016x}, the batch was encoded with {got:016x}"
    )]
    CatalogMismatch { expected: u64, got: u64 },
    /// The cloud holds no state this batch continues (409, and no `next_seq`:
    /// the sender resends from its first unacknowledged reading). See
    /// [`UnknownReason`].
    #[error("unknown session {session_id:016x}: {reason}")]
    UnknownSession {
        session_id: u64,
        reason: UnknownReason,
    },
    /// Readings are missing between the last accepted one and this batch, or
    /// a keyframe jumps further than [`MAX_SEQ_JUMP`] (409).
    #[error("gap: expected sequence number {expected}, the batch starts at {got}")]
    Gap { expected: u64, got: u64 },
    /// The batch starts before the next expected reading but ends after it (409).
    #[error(
        "overlap: expected sequence number {expected}, the batch starts at {got} and goes past it"
    )]
    Overlap { expected: u64, got: u64 },
    /// The predictor states of edge and cloud differ (409).
    #[error(
        "state checksum mismatch after sequence number {seq}: edge {edge:08x}, cloud {cloud:08x}"
    )]
    ChecksumMismatch { seq: u64, edge: u32, cloud: u32 },
}

/// Why [`DecodeError::UnknownSession`]: the batch cannot be matched to the
/// state the cloud holds for its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnknownReason {
    /// No state for the session, and the batch does not start with a keyframe.
    #[error("the batch does not start with a keyframe")]
    NoKeyframe,
    /// The batch repeats sequence numbers of the last accepted batch but is
    /// not that batch (another sender with this session id, or a re-cut
    /// batch): it is not acknowledged as a duplicate.
    #[error("the batch repeats accepted sequence numbers with different contents")]
    NotARepeat,
    /// The batch lies before the run the state continues (a keyframe jumped
    /// past it), so whether it was accepted is unknown.
    #[error("the batch lies before the keyframe the session continues from")]
    BeforeRun,
}

impl DecodeError {
    /// The edge must send a keyframe (HTTP 409 with `"resync_required": true`).
    pub fn resync_required(&self) -> bool {
        matches!(
            self,
            Self::CatalogMismatch { .. }
                | Self::UnknownSession { .. }
                | Self::Gap { .. }
                | Self::Overlap { .. }
                | Self::ChecksumMismatch { .. }
        )
    }
}

/// A parsed batch whose header has been checked; look up its session's
/// state with [`Self::vin`] and [`Self::session_id`], then [`Self::decode`].
#[derive(Debug, Clone)]
pub struct CheckedBatch {
    vin: Vin,
    batch: Batch,
    digest: u64,
}

/// The result of decoding a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    /// New readings, and the state after them (commit it with the readings).
    Fresh {
        readings: Vec<DecodedReading>,
        state: SessionState,
    },
    /// Every reading was already accepted: acknowledge again, store nothing.
    Duplicate,
}

/// One reconstructed reading.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedReading {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub keyframe: bool,
    /// Bit i set = channel i was transmitted (else reconstructed or null).
    pub transmitted: u64,
    /// Per channel, in the signal's unit; `None` = null.
    pub values: Vec<Option<f64>>,
}

impl CheckedBatch {
    /// Parses and checks a batch: structure, VIN, catalog.
    pub fn parse(catalog: &Catalog, bytes: &[u8]) -> Result<Self, DecodeError> {
        let batch = Batch::decode(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
        Self::check(catalog, batch)
    }

    /// Checks an already parsed batch.
    pub fn check(catalog: &Catalog, batch: Batch) -> Result<Self, DecodeError> {
        let vin = Vin::parse(&batch.vehicle_vin)?;
        if batch.catalog_hash != catalog.hash() {
            return Err(DecodeError::CatalogMismatch {
                expected: catalog.hash(),
                got: batch.catalog_hash,
            });
        }
        let n = batch.count as usize;
        let bad = |m: String| Err(DecodeError::Malformed(m));
        if n == 0 {
            return bad("count is 0".into());
        }
        if batch.session_id == 0 {
            return bad("session_id is 0".into());
        }
        if batch.first_seq.checked_add(n as u64).is_none() {
            return bad("sequence numbers overflow".into());
        }
        if batch.timestamp_dod.len() != n - 1 {
            return bad(format!(
                "{} timestamp deltas for {n} readings (want {})",
                batch.timestamp_dod.len(),
                n - 1
            ));
        }
        if batch.transmitted.len() != n {
            return bad(format!(
                "{} transmitted masks for {n} readings",
                batch.transmitted.len()
            ));
        }
        if !batch.nulls.is_empty() && batch.nulls.len() != n {
            return bad(format!("{} null masks for {n} readings", batch.nulls.len()));
        }
        let channels = catalog.len();
        let all = if channels == 64 {
            u64::MAX
        } else {
            (1u64 << channels) - 1
        };
        if batch
            .transmitted
            .iter()
            .chain(&batch.nulls)
            .any(|m| m & !all != 0)
        {
            return bad(format!(
                "a mask names a channel beyond the catalog's {channels}"
            ));
        }
        if batch.keyframes.windows(2).any(|w| w[0] >= w[1])
            || batch.keyframes.last().is_some_and(|&k| k as usize >= n)
        {
            return bad("keyframe indices are not ascending within the batch".into());
        }
        let digest = digest(&batch);
        Ok(Self { vin, batch, digest })
    }

    pub fn vin(&self) -> &Vin {
        &self.vin
    }

    pub fn session_id(&self) -> u64 {
        self.batch.session_id
    }

    pub fn first_seq(&self) -> u64 {
        self.batch.first_seq
    }

    /// Sequence number of the last reading.
    pub fn last_seq(&self) -> u64 {
        self.batch.first_seq + u64::from(self.batch.count) - 1
    }

    pub fn len(&self) -> usize {
        self.batch.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.batch.count == 0
    }

    pub fn starts_with_keyframe(&self) -> bool {
        self.batch.keyframes.first() == Some(&0)
    }

    /// Reconstructs the batch against `state` (the session's state, `None`
    /// if the server has none). Pure: the caller commits the returned state
    /// together with the readings.
    pub fn decode(
        &self,
        catalog: &Catalog,
        state: Option<&SessionState>,
    ) -> Result<BatchOutcome, DecodeError> {
        let b = &self.batch;
        let (mut state, run_start) = match state {
            Some(s) if self.last_seq() < s.next_seq() => return self.repeat(s),
            Some(s) if b.first_seq == s.next_seq() => {
                // A state persisted before the acceptance record: its run is
                // taken to start here.
                let run = s.accepted().map_or(b.first_seq, |a| a.run_start);
                (s.clone(), run)
            }
            // A keyframe after a gap: the missing readings are lost for good.
            Some(s)
                if b.first_seq > s.next_seq()
                    && self.starts_with_keyframe()
                    && b.first_seq - s.next_seq() <= MAX_SEQ_JUMP =>
            {
                (SessionState::new(catalog, b.first_seq), b.first_seq)
            }
            Some(s) if b.first_seq > s.next_seq() => {
                return Err(DecodeError::Gap {
                    expected: s.next_seq(),
                    got: b.first_seq,
                });
            }
            Some(s) => {
                return Err(DecodeError::Overlap {
                    expected: s.next_seq(),
                    got: b.first_seq,
                });
            }
            None if self.starts_with_keyframe() => {
                (SessionState::new(catalog, b.first_seq), b.first_seq)
            }
            None => {
                return Err(DecodeError::UnknownSession {
                    session_id: b.session_id,
                    reason: UnknownReason::NoKeyframe,
                });
            }
        };
        let mut wire = Wire {
            values: &b.values,
            pos: 0,
            transmitted: 0,
            nulls: 0,
        };
        let mut keyframes = b.keyframes.iter().peekable();
        let mut ts = b.first_timestamp_ms;
        let mut dt = 0i64;
        let mut readings = Vec::with_capacity(b.count as usize);
        for i in 0..b.count as usize {
            if i > 0 {
                dt = dt.wrapping_add(b.timestamp_dod[i - 1]);
                ts = ts.wrapping_add(dt);
            }
            // Range checks, not `abs()`: wrapping arithmetic can reach i64::MIN.
            if !(-TS_LIMIT..=TS_LIMIT).contains(&ts) {
                return Err(DecodeError::Malformed(format!(
                    "reading {}: timestamp {ts} is out of range",
                    b.first_seq + i as u64
                )));
            }
            let keyframe = keyframes.next_if(|&&k| k as usize == i).is_some();
            wire.transmitted = b.transmitted[i];
            wire.nulls = b.nulls.get(i).copied().unwrap_or(0);
            let frame = state
                .step(catalog, ts, keyframe, &mut wire)
                .map_err(|e| e.at(b.first_seq + i as u64))?;
            readings.push(dequantise(catalog, frame));
        }
        if wire.pos != b.values.len() {
            return Err(DecodeError::Malformed(format!(
                "{} values left over after the last reading",
                b.values.len() - wire.pos
            )));
        }
        if let Some(edge) = b.state_checksum {
            let cloud = state.checksum();
            if edge != cloud {
                return Err(DecodeError::ChecksumMismatch {
                    seq: self.last_seq(),
                    edge,
                    cloud,
                });
            }
        }
        state.set_accepted(Accepted {
            run_start,
            last_first: b.first_seq,
            last_digest: self.digest,
        });
        Ok(BatchOutcome::Fresh { readings, state })
    }

    /// A batch wholly before `state.next_seq()`: a duplicate only when it is
    /// a retry of the last accepted batch, or lies wholly before that batch
    /// within the run the state continues. Anything else is refused, so a
    /// different batch over accepted sequence numbers (another sender using
    /// this session id) never has its readings acknowledged and dropped.
    fn repeat(&self, state: &SessionState) -> Result<BatchOutcome, DecodeError> {
        let Some(a) = state.accepted() else {
            // A state persisted before the record: as before, a duplicate.
            return Ok(BatchOutcome::Duplicate);
        };
        let reason = if self.batch.first_seq < a.run_start {
            UnknownReason::BeforeRun
        } else if self.last_seq() < a.last_first
            || (self.batch.first_seq == a.last_first && self.digest == a.last_digest)
        {
            return Ok(BatchOutcome::Duplicate);
        } else {
            UnknownReason::NotARepeat
        };
        Err(DecodeError::UnknownSession {
            session_id: self.batch.session_id,
            reason,
        })
    }
}

/// A 64-bit digest of everything a batch says (not cryptographic: it tells
/// a retry, which is the same message, from a different batch).
fn digest(b: &Batch) -> u64 {
    fn mix(h: u64, w: u64) -> u64 {
        // splitmix64's finaliser over the running value: a bijection per word.
        let mut z = (h ^ w).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let mut h = 0;
    for w in [
        b.session_id,
        b.catalog_hash,
        b.first_seq,
        u64::from(b.count),
        b.first_timestamp_ms as u64,
        b.state_checksum.map_or(1 << 32, u64::from),
    ] {
        h = mix(h, w);
    }
    let lists: [&mut dyn Iterator<Item = u64>; 5] = [
        &mut b.timestamp_dod.iter().map(|&v| v as u64),
        &mut b.transmitted.iter().copied(),
        &mut b.nulls.iter().copied(),
        &mut b.values.iter().map(|&v| v as u64),
        &mut b.keyframes.iter().map(|&k| u64::from(k)),
    ];
    for list in lists {
        let mut n = 0u64;
        for w in list {
            h = mix(h, w);
            n += 1;
        }
        h = mix(h, n);
    }
    h
}

fn dequantise(catalog: &Catalog, f: Frame) -> DecodedReading {
    let values = f
        .values
        .iter()
        .zip(catalog.signals())
        .map(|(v, s)| v.map(|q| s.dequantise(q)))
        .collect();
    DecodedReading {
        seq: f.seq,
        timestamp_ms: f.timestamp_ms,
        keyframe: f.keyframe,
        transmitted: f.transmitted,
        values,
    }
}

/// The decoder's [`FrameSource`]: reads masks and values off the wire.
struct Wire<'a> {
    values: &'a [i64],
    pos: usize,
    transmitted: u64,
    nulls: u64,
}

/// A reading the wire cannot describe; located by [`WireError::at`].
enum WireError {
    Short,
    NoPrediction(usize),
    Conflict(usize),
    OutOfRange(usize),
}

impl WireError {
    fn at(self, seq: u64) -> DecodeError {
        match self {
            Self::Short => DecodeError::Malformed(format!("values end inside reading {seq}")),
            Self::OutOfRange(ch) => DecodeError::Malformed(format!(
                "reading {seq}: channel {ch} reconstructs to a value out of range"
            )),
            Self::Conflict(ch) => DecodeError::Malformed(format!(
                "reading {seq}: channel {ch} is both null and transmitted"
            )),
            // The edge predicted a value the cloud cannot: the states differ.
            Self::NoPrediction(ch) => DecodeError::ChecksumMismatch {
                seq,
                edge: 0,
                cloud: ch as u32,
            },
        }
    }
}

impl Wire<'_> {
    fn next(&mut self) -> Result<i64, WireError> {
        let v = *self.values.get(self.pos).ok_or(WireError::Short)?;
        self.pos += 1;
        Ok(v)
    }

    fn flags(&self, ch: usize) -> Result<(bool, bool), WireError> {
        let tx = self.transmitted & (1 << ch) != 0;
        let null = self.nulls & (1 << ch) != 0;
        if tx && null {
            return Err(WireError::Conflict(ch));
        }
        Ok((tx, null))
    }
}

impl FrameSource for Wire<'_> {
    type Error = WireError;

    fn scalar(&mut self, ch: usize, sig: &Signal, ask: Ask<i64>) -> Result<Outcome, WireError> {
        let (tx, null) = self.flags(ch)?;
        if null {
            return Ok(Outcome::Null);
        }
        if !tx {
            return ask
                .pred
                .map(|_| Outcome::Predicted)
                .ok_or(WireError::NoPrediction(ch));
        }
        let v = self.next()?;
        let v = ask.pred.map_or(v, |p| p.wrapping_add(v));
        let v = angle_turn(sig).map_or(v, |t| v.rem_euclid(t));
        if !(-VALUE_LIMIT..=VALUE_LIMIT).contains(&v) {
            return Err(WireError::OutOfRange(ch));
        }
        Ok(Outcome::Sent(v))
    }

    fn position(
        &mut self,
        pc: PositionChannels,
        _tol_mm: i64,
        ask: Ask<(i64, i64)>,
    ) -> Result<(Outcome, i64), WireError> {
        let pred = ask.pred;
        let (tx, null) = self.flags(pc.lat)?;
        if self.flags(pc.lon)? != (tx, null) {
            return Err(WireError::Conflict(pc.lon));
        }
        match (tx, null, pred) {
            (_, true, _) => Ok((Outcome::Null, 0)),
            (false, _, None) => Err(WireError::NoPrediction(pc.lat)),
            (false, _, Some(_)) => Ok((Outcome::Predicted, 0)),
            (true, _, p) => {
                let (a, b) = (self.next()?, self.next()?);
                let (la, lo) =
                    p.map_or((a, b), |(pa, pb)| (pa.wrapping_add(a), pb.wrapping_add(b)));
                if !(-LAT_LIMIT..=LAT_LIMIT).contains(&la)
                    || !(-LON_LIMIT..=LON_LIMIT).contains(&lo)
                {
                    return Err(WireError::OutOfRange(pc.lat));
                }
                Ok((Outcome::Sent(la), lo))
            }
        }
    }
}
