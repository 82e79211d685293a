//! One vehicle session: its encoder (lockstep batches or the seed form), its
//! unacknowledged batches and the readings of the batch being filled. Every
//! change to what is unacknowledged goes through the spool first.

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use lockstep_codec::seed::SeedPredictor;
use lockstep_codec::{Catalog, Encoder, EncoderConfig, Reading, Vin};
use lockstep_proto::{CONTENT_TYPE_BATCH, CONTENT_TYPE_SEED};
use prost::Message;
use tokio::time::Instant;

use super::Stats;
use crate::spool::{Spool, SpooledBatch};

/// How a session's readings go on the wire.
#[derive(Debug, Clone)]
enum Form {
    /// `lockstep.v1.Batch` bodies from the [`Encoder`].
    Lockstep,
    /// One seed `TelemetryReading` per reading, from the seed predictor;
    /// spooled under session id 0 with the timestamp as sequence number.
    Seed {
        pred: SeedPredictor,
        tolerances: [f64; 4],
    },
}

/// One vehicle session.
pub struct Session {
    enc: Encoder,
    form: Form,
    pub(super) unacked: VecDeque<SpooledBatch>,
    pub(super) open: Vec<Reading>,
    pub(super) open_since: Option<Instant>,
    pub stats: Stats,
}

impl Session {
    /// A new lockstep session with a random non-zero id.
    pub fn new(catalog: Arc<Catalog>, vin: Vin) -> Self {
        let session_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Self::with_id(catalog, vin, session_id)
    }

    pub fn with_id(catalog: Arc<Catalog>, vin: Vin, session_id: u64) -> Self {
        Self {
            enc: Encoder::new(catalog, vin, session_id, EncoderConfig::default()),
            form: Form::Lockstep,
            unacked: VecDeque::new(),
            open: Vec::new(),
            open_since: None,
            stats: Stats::default(),
        }
    }

    /// A seed-form session (the four seed fields, with the catalog's tolerances).
    pub fn seed(catalog: Arc<Catalog>, vin: Vin) -> Self {
        let tolerances: [f64; 4] =
            std::array::from_fn(|i| catalog.signals().get(i).map_or(1.0, |s| s.tolerance()));
        let mut s = Self::with_id(catalog, vin, 0);
        s.form = Form::Seed {
            pred: SeedPredictor::default(),
            tolerances,
        };
        s
    }

    /// A session that only has to deliver batches found in the spool.
    pub fn recovered(catalog: Arc<Catalog>, batches: Vec<SpooledBatch>) -> Result<Self> {
        let first = batches.first().context("no batches")?;
        let vin = Vin::parse(&first.vin).with_context(|| format!("spooled VIN {:?}", first.vin))?;
        let mut s = if first.session_id == 0 {
            Self::seed(catalog, vin)
        } else {
            Self::with_id(catalog, vin, first.session_id)
        };
        if let (Form::Lockstep, Some(last)) = (&s.form, batches.last()) {
            s.enc.rewind(last.end_seq());
        }
        s.unacked = batches.into();
        Ok(s)
    }

    pub fn vin(&self) -> &Vin {
        self.enc.vin()
    }

    pub fn session_id(&self) -> u64 {
        self.enc.session_id()
    }

    /// The session sends the seed wire form.
    pub fn is_seed(&self) -> bool {
        matches!(self.form, Form::Seed { .. })
    }

    /// The content type of this session's request bodies.
    pub fn content_type(&self) -> &'static str {
        match self.form {
            Form::Lockstep => CONTENT_TYPE_BATCH,
            Form::Seed { .. } => CONTENT_TYPE_SEED,
        }
    }

    /// Nothing left to send.
    pub fn is_idle(&self) -> bool {
        self.unacked.is_empty() && self.open.is_empty()
    }

    /// Batches spooled and not acknowledged yet.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The batch to send next.
    pub fn front(&self) -> Option<&SpooledBatch> {
        self.unacked.front()
    }

    /// Readings waiting to be cut into a batch.
    pub fn open_len(&self) -> usize {
        self.open.len()
    }

    /// Adds one reading to the open batch; it is encoded when the batch is cut.
    pub fn push(&mut self, r: Reading) {
        let present = match self.form {
            Form::Lockstep => r
                .values
                .iter()
                .filter(|v| v.is_some_and(f64::is_finite))
                .count(),
            Form::Seed { .. } => r.values.iter().take(4).filter(|v| v.is_some()).count(),
        };
        self.stats.readings += 1;
        self.stats.fields += present as u64;
        if self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        self.open.push(r);
    }

    /// Encodes the open readings and spools them (one batch, or one seed
    /// reading each). Encoding at the cut lets each reading see the rest of
    /// its batch (lookahead: held values are sent as the middle of what
    /// follows), at no extra latency. Returns the batches added.
    pub fn cut(&mut self, spool: &Spool) -> Result<usize> {
        let batches = self.encode_open(true);
        for b in &batches {
            spool.write(b)?;
        }
        let n = batches.len();
        self.unacked.extend(batches);
        Ok(n)
    }

    /// Encodes (and empties) the open readings, without spooling them.
    fn encode_open(&mut self, count: bool) -> Vec<SpooledBatch> {
        self.open_since = None;
        let open = std::mem::take(&mut self.open);
        match &mut self.form {
            Form::Lockstep => {
                for (j, r) in open.iter().enumerate() {
                    let frame = self.enc.push_with_lookahead(r, &open[j + 1..]);
                    if count {
                        self.stats.fields_transmitted += u64::from(frame.transmitted.count_ones());
                    }
                }
                let Some(batch) = self.enc.take_batch() else {
                    return Vec::new();
                };
                vec![SpooledBatch {
                    vin: batch.vehicle_vin.clone(),
                    session_id: batch.session_id,
                    first_seq: batch.first_seq,
                    catalog_hash: batch.catalog_hash,
                    readings: open,
                    body: batch.encode_to_vec(),
                }]
            }
            Form::Seed { pred, tolerances } => {
                let vin = self.enc.vin().as_str();
                let catalog_hash = self.enc.catalog().hash();
                open.into_iter()
                    .map(|r| {
                        let actual: [Option<f64>; 4] =
                            std::array::from_fn(|i| r.values.get(i).copied().flatten());
                        let msg = pred.encode_partial(vin, r.timestamp_ms, actual, *tolerances);
                        if count {
                            self.stats.fields_transmitted +=
                                [msg.speed, msg.battery, msg.power, msg.heading]
                                    .iter()
                                    .filter(|v| v.is_some())
                                    .count() as u64;
                        }
                        SpooledBatch {
                            vin: vin.to_owned(),
                            session_id: 0,
                            // Sources make timestamps strictly increasing: a valid send order.
                            first_seq: r.timestamp_ms.max(0) as u64,
                            catalog_hash,
                            readings: vec![r],
                            body: msg.encode_to_vec(),
                        }
                    })
                    .collect()
            }
        }
    }

    /// The front batch was acknowledged: removed from the spool.
    pub fn acked(&mut self, spool: &Spool) -> Result<()> {
        if let Some(b) = self.unacked.front() {
            spool.remove(b)?;
            self.stats.acked += 1;
            self.stats.readings_acked += b.readings.len() as u64;
            self.stats.bytes_acked += b.body.len() as u64;
            self.unacked.pop_front();
        }
        Ok(())
    }

    /// The front batch can never be accepted: moved to the spool's `rejected/`.
    pub fn reject_front(&mut self, spool: &Spool, why: &str) -> Result<Option<SpooledBatch>> {
        let Some(b) = self.unacked.front() else {
            return Ok(None);
        };
        spool.reject(b, why)?;
        self.stats.rejected += 1;
        Ok(self.unacked.pop_front())
    }

    /// Re-encodes everything unacknowledged from a keyframe (see the module
    /// doc of [`super`]). Returns the sequence number it restarted from.
    pub fn resync(&mut self, spool: &Spool, server_next: Option<u64>) -> Result<u64> {
        if self.is_seed() {
            bail!("the seed form has no sequence numbers to resync from");
        }
        // Open readings are not encoded yet: the encoder ends where they begin.
        let end = self.enc.next_seq();
        let first_unacked = self.unacked.front().map_or(end, |b| b.first_seq);
        let start = match server_next {
            Some(n) if n > first_unacked && n <= end => n,
            _ => first_unacked,
        };
        self.reencode(spool, start, false)?;
        self.stats.resyncs += 1;
        Ok(start)
    }

    /// The server found the front batch too large (413): splits it in two
    /// halves, re-encoded (with what follows) from a keyframe. `false` when
    /// it cannot be split (one reading, or the seed form).
    pub fn split_front(&mut self, spool: &Spool) -> Result<bool> {
        let Some(front) = self.unacked.front() else {
            return Ok(false);
        };
        if self.is_seed() || front.readings.len() < 2 {
            return Ok(false);
        }
        let start = front.first_seq;
        self.reencode(spool, start, true)?;
        self.stats.splits += 1;
        Ok(true)
    }

    /// Encodes the unacknowledged readings from `start` again (the front
    /// batch in two halves when `split_front`), keeping the batch boundaries
    /// otherwise. New files are written last first and old ones removed
    /// after: whenever the process dies, every reading is in some spool file
    /// (maybe twice: the server answers the older copy as a duplicate or 409).
    fn reencode(&mut self, spool: &Spool, start: u64, split_front: bool) -> Result<()> {
        let old: Vec<SpooledBatch> = self.unacked.drain(..).collect();
        let open = std::mem::take(&mut self.open);
        self.enc.rewind(start);
        let mut new = Vec::with_capacity(old.len() + 1);
        for (i, b) in old.iter().enumerate() {
            let skip = start.saturating_sub(b.first_seq) as usize;
            let readings: Vec<Reading> = b.readings.iter().skip(skip).cloned().collect();
            let parts = if i == 0 && split_front && readings.len() > 1 {
                let mid = readings.len() / 2;
                vec![readings[..mid].to_vec(), readings[mid..].to_vec()]
            } else {
                vec![readings]
            };
            for p in parts {
                self.open = p;
                new.extend(self.encode_open(false));
            }
        }
        for b in new.iter().rev() {
            spool.write(b)?;
        }
        for b in &old {
            if !new.iter().any(|n| n.file_name() == b.file_name()) {
                spool.remove(b)?;
            }
        }
        self.unacked = new.into();
        self.open = open;
        if !self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Vehicle;
    use lockstep_codec::{BatchOutcome, CheckedBatch};

    fn session_with_batches(spool: &Spool) -> (Session, Vec<Reading>) {
        let catalog = Arc::new(Catalog::default_v1());
        let mut v = Vehicle::new(3, 0, 1_000_000, 1000);
        let mut s = Session::with_id(catalog, v.vin.clone(), 77);
        let readings: Vec<Reading> = (0..55).map(|_| v.next_reading()).collect();
        for (i, r) in readings.iter().enumerate() {
            s.push(r.clone());
            if i % 10 == 9 {
                s.cut(spool).unwrap();
            }
        }
        (s, readings)
    }

    /// Decodes the session's unacknowledged batches from scratch (a server without state).
    fn decode_all(s: &Session) -> Vec<(u64, i64)> {
        let catalog = Catalog::default_v1();
        let mut state = None;
        let mut out = Vec::new();
        for b in &s.unacked {
            let cb = CheckedBatch::parse(&catalog, &b.body).unwrap();
            match cb.decode(&catalog, state.as_ref()).unwrap() {
                BatchOutcome::Fresh {
                    readings,
                    state: st,
                } => {
                    out.extend(readings.iter().map(|r| (r.seq, r.timestamp_ms)));
                    state = Some(st);
                }
                BatchOutcome::Duplicate => panic!("duplicate"),
            }
        }
        out
    }

    #[test]
    fn resync_restarts_from_the_first_unacknowledged_reading_with_a_keyframe() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (mut s, readings) = session_with_batches(&spool);
        assert_eq!((s.unacked(), s.open.len(), spool.count()), (5, 5, 5));
        s.acked(&spool).unwrap();
        s.acked(&spool).unwrap();
        assert_eq!(spool.count(), 3);

        assert_eq!(s.resync(&spool, None).unwrap(), 20);
        assert_eq!(
            s.unacked
                .iter()
                .map(|b| (b.first_seq, b.readings.len()))
                .collect::<Vec<_>>(),
            vec![(20, 10), (30, 10), (40, 10)]
        );
        assert_eq!(s.open.len(), 5, "the open readings are kept");
        assert_eq!(spool.count(), 3, "spool files replaced, not added");
        let front = CheckedBatch::parse(&Catalog::default_v1(), &s.unacked[0].body).unwrap();
        assert!(front.starts_with_keyframe());
        // A server without state accepts them, and every reading keeps its seq and timestamp.
        let got = decode_all(&s);
        assert_eq!(
            got,
            (20..50)
                .map(|q| (q, readings[q as usize].timestamp_ms))
                .collect::<Vec<_>>()
        );
        // The open batch continues the sequence.
        s.cut(&spool).unwrap();
        assert_eq!(s.unacked.back().unwrap().first_seq, 50);
        assert_eq!(decode_all(&s).len(), 35);
    }

    #[test]
    fn resync_after_an_overlap_skips_what_the_server_already_has() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (mut s, _) = session_with_batches(&spool);
        s.acked(&spool).unwrap();
        // The server stored up to seq 24 (an acknowledgement got lost) and expects 25.
        assert_eq!(s.resync(&spool, Some(25)).unwrap(), 25);
        assert_eq!(
            s.unacked
                .iter()
                .map(|b| (b.first_seq, b.readings.len()))
                .collect::<Vec<_>>(),
            vec![(25, 5), (30, 10), (40, 10)]
        );
        assert_eq!(spool.load_all().unwrap().0.len(), 3);
        assert_eq!(decode_all(&s).first().unwrap().0, 25);
        // A server `next_seq` behind ours (a gap: it lost readings we consider acknowledged)
        // cannot be honoured: restart from our first unacknowledged reading.
        assert_eq!(s.resync(&spool, Some(3)).unwrap(), 25);
    }

    #[test]
    fn a_split_halves_the_front_batch_and_keeps_every_reading_in_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (mut s, readings) = session_with_batches(&spool);
        s.acked(&spool).unwrap();
        assert!(s.split_front(&spool).unwrap());
        assert_eq!(
            s.unacked
                .iter()
                .map(|b| (b.first_seq, b.readings.len()))
                .collect::<Vec<_>>(),
            vec![(10, 5), (15, 5), (20, 10), (30, 10), (40, 10)]
        );
        assert_eq!(spool.count(), 5);
        assert!(
            CheckedBatch::parse(&Catalog::default_v1(), &s.unacked[0].body)
                .unwrap()
                .starts_with_keyframe()
        );
        let got = decode_all(&s);
        assert_eq!(
            got,
            (10..50)
                .map(|q| (q, readings[q as usize].timestamp_ms))
                .collect::<Vec<_>>()
        );
        // Down to single readings, then no further.
        while s.unacked[0].readings.len() > 1 {
            assert!(s.split_front(&spool).unwrap());
        }
        assert!(!s.split_front(&spool).unwrap());
        assert_eq!(s.unacked[0].first_seq, 10);
        assert_eq!(decode_all(&s).len(), 40);
    }

    #[test]
    fn the_seed_form_spools_one_file_per_reading() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut v = Vehicle::new(3, 0, 1_000_000, 1000);
        let mut s = Session::seed(Arc::new(Catalog::default_v1()), v.vin.clone());
        for _ in 0..3 {
            s.push(v.next_reading());
        }
        assert_eq!(s.cut(&spool).unwrap(), 3);
        assert_eq!(spool.count(), 3);
        let (all, _) = spool.load_all().unwrap();
        assert!(
            all.iter()
                .all(|b| b.session_id == 0 && b.readings.len() == 1)
        );
        assert_eq!(all[0].first_seq, 1_000_000);
        let again = Session::recovered(Arc::new(Catalog::default_v1()), all).unwrap();
        assert!(again.is_seed());
        assert_eq!(again.content_type(), CONTENT_TYPE_SEED);
        assert!(!s.split_front(&spool).unwrap());
        assert!(s.resync(&spool, None).is_err());
    }
}
