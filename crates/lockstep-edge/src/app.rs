//! Runs a fleet — simulated vehicles or replayed drives — through the sender,
//! after first delivering what an earlier run left in the spool.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use lockstep_codec::{Reading, Vin};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::sender::{
    Live, Pace, ReadingSource, Session, Shared, Stats, drain_spool, join_sessions, run_session,
};
use crate::sim::{Vehicle, replay_vin};
use crate::sources::{RepairReport, Trip};

/// What to send.
pub enum Fleet {
    /// `vehicles` simulated vehicles at `rate_hz`, for `duration_s` (None =
    /// until stopped); the same `rng_seed` gives the same fleet.
    Simulate {
        vehicles: usize,
        rate_hz: f64,
        duration_s: Option<f64>,
        rng_seed: u64,
    },
    /// One vehicle per recorded drive. `retime` shifts each drive so its first
    /// reading is stamped now (the recorded spacing is kept).
    Replay { trips: Vec<Trip>, retime: bool },
}

impl Fleet {
    /// Readings the run will produce, if finite (for the progress bar).
    pub fn total_readings(&self) -> Option<u64> {
        match self {
            Fleet::Simulate {
                vehicles,
                rate_hz,
                duration_s,
                ..
            } => duration_s.map(|d| (*vehicles as f64 * (d * rate_hz).ceil()) as u64),
            Fleet::Replay { trips, .. } => {
                Some(trips.iter().map(|t| t.readings.len() as u64).sum())
            }
        }
    }
}

/// What a run did, printed at exit.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub vehicles: usize,
    /// This run's readings.
    pub stats: Stats,
    /// Batches of earlier runs delivered from the spool first.
    pub recovered: Stats,
    pub repairs: Option<RepairReport>,
    /// Replays that resumed after a cursor: (file, readings skipped).
    pub resumed: Vec<(String, usize)>,
    pub spool_left: usize,
    pub spool_dir: String,
    pub elapsed: Duration,
    pub seed_wire: bool,
    pub cancelled: bool,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let form = if self.seed_wire {
            "seed wire form"
        } else {
            "lockstep batches"
        };
        writeln!(
            f,
            "lockstep-edge summary ({form}, {:.1} s{}):",
            self.elapsed.as_secs_f64(),
            if self.cancelled {
                ", stopped before the end (signal or --duration)"
            } else {
                ""
            }
        )?;
        writeln!(f, "  vehicles: {}", self.vehicles)?;
        writeln!(
            f,
            "  readings: {} produced, {} acknowledged",
            s.readings, s.readings_acked
        )?;
        writeln!(
            f,
            "  fields: {} non-null, {} transmitted, {:.1} % skipped",
            s.fields,
            s.fields_transmitted,
            s.skipped_fraction() * 100.0
        )?;
        let per = if s.readings_acked > 0 {
            s.bytes_acked as f64 / s.readings_acked as f64
        } else {
            0.0
        };
        writeln!(
            f,
            "  sent: {} requests acknowledged, {} body bytes ({per:.2} bytes/reading); {} bytes posted incl. retries",
            s.acked, s.bytes_acked, s.bytes_posted
        )?;
        writeln!(
            f,
            "  retries: {}, resyncs: {}, duplicates acknowledged: {}, rejected: {}",
            s.retries, s.resyncs, s.duplicates, s.rejected
        )?;
        if s.splits > 0 {
            writeln!(f, "  batches split after 413 (too large): {}", s.splits)?;
        }
        if self.recovered.acked > 0
            || self.recovered.left_spooled > 0
            || self.recovered.rejected > 0
        {
            let r = &self.recovered;
            writeln!(
                f,
                "  from an earlier run's spool: {} batches ({} readings) delivered, {} retries, {} resyncs, {} rejected",
                r.acked, r.readings_acked, r.retries, r.resyncs, r.rejected
            )?;
        }
        for (file, n) in &self.resumed {
            writeln!(
                f,
                "  resumed {file} after {n} readings already spooled by an earlier run"
            )?;
        }
        if let Some(rep) = &self.repairs {
            writeln!(f, "  input repairs: {rep}")?;
        }
        write!(
            f,
            "  spool: {} batch(es) left in {}",
            self.spool_left, self.spool_dir
        )?;
        if self.spool_left > 0 {
            write!(f, " (sent first on the next start)")?;
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One vehicle to run: its VIN, its readings and their pace.
type Plan = (Vin, ReadingSource, Pace);

/// Runs `fleet`; `asap` ignores recorded pace, else readings are due at
/// recorded pace divided by `speed`. Batches an earlier run left in the spool
/// are delivered first.
pub async fn run(shared: Shared, fleet: Fleet, asap: bool, speed: f64) -> Result<Summary> {
    let started = Instant::now();
    let mut summary = Summary {
        spool_dir: shared.spool.dir().display().to_string(),
        seed_wire: shared.config.seed_wire,
        ..Default::default()
    };
    summary.recovered = drain_spool(&shared).await?;

    let start = Instant::now();
    let pace_from = |first_ts: i64| {
        if asap {
            Pace::Asap
        } else {
            Pace::Scaled {
                start,
                first_ts,
                speed,
            }
        }
    };
    let plans = match fleet {
        Fleet::Simulate {
            vehicles,
            rate_hz,
            duration_s,
            rng_seed,
        } => plan_simulation(vehicles, rate_hz, duration_s, rng_seed, pace_from),
        Fleet::Replay { trips, retime } => {
            plan_replay(&shared, trips, retime, pace_from, &mut summary)
        }
    };
    summary.vehicles = plans.len();

    let mut set = JoinSet::new();
    for (vin, src, pace) in plans {
        let session = if shared.config.seed_wire {
            Session::seed(shared.catalog.clone(), vin)
        } else {
            Session::new(shared.catalog.clone(), vin)
        };
        set.spawn(run_session(shared.clone(), session, Some(src), pace));
    }
    // Without a progress bar (not a terminal, e.g. under the server's logger
    // supervisor), a progress line every 10 s.
    let ticker = shared
        .progress
        .is_none()
        .then(|| tokio::spawn(progress_lines(shared.clone())));
    let joined = join_sessions(&shared, &mut set, &mut summary.stats).await;
    if let Some(t) = ticker {
        t.abort();
    }
    joined?;
    summary.cancelled = shared.cancel.is_cancelled();
    summary.spool_left = shared.spool.count();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// `vehicles` simulated vehicles stamped from now on, `duration_s` long (or endless).
fn plan_simulation(
    vehicles: usize,
    rate_hz: f64,
    duration_s: Option<f64>,
    rng_seed: u64,
    pace_from: impl Fn(i64) -> Pace,
) -> Vec<Plan> {
    let dt_ms = (1000.0 / rate_hz).round().max(1.0) as i64;
    let t0 = now_ms();
    let count = duration_s.map(|d| (d * rate_hz).ceil() as usize);
    (0..vehicles)
        .map(|i| {
            let mut v = Vehicle::new(rng_seed, i, t0, dt_ms);
            let vin = v.vin.clone();
            let it = std::iter::from_fn(move || Some(v.next_reading()));
            let src: ReadingSource = match count {
                Some(c) => Box::new(it.take(c)),
                None => Box::new(it),
            };
            (vin, src, pace_from(t0))
        })
        .collect()
}

/// One vehicle per drive, resumed after the spool's cursor (noted in
/// `summary`), optionally shifted to start now.
fn plan_replay(
    shared: &Shared,
    trips: Vec<Trip>,
    retime: bool,
    pace_from: impl Fn(i64) -> Pace,
    summary: &mut Summary,
) -> Vec<Plan> {
    let mut plans = Vec::with_capacity(trips.len());
    let mut repairs = RepairReport::default();
    for trip in trips {
        repairs.merge(&trip.repairs);
        let vin = replay_vin(&trip.name);
        let mut readings: Vec<Reading> = trip.readings;
        if shared.config.resume_cursor
            && let Some(c) = shared.spool.cursor(vin.as_str())
        {
            let skip = readings.iter().take_while(|r| r.timestamp_ms <= c).count();
            if skip > 0 {
                tracing::info!(file = %trip.name, skipped = skip, "Resuming a replay after the readings an earlier run already spooled.");
                summary.resumed.push((trip.name.clone(), skip));
                readings.drain(..skip);
            }
        }
        let Some(first_ts) = readings.first().map(|r| r.timestamp_ms) else {
            shared.spool.clear_cursor(vin.as_str());
            continue;
        };
        if retime {
            let shift = now_ms() - first_ts;
            readings.iter_mut().for_each(|r| r.timestamp_ms += shift);
        }
        let first_ts = readings[0].timestamp_ms;
        plans.push((
            vin,
            Box::new(readings.into_iter()) as ReadingSource,
            pace_from(first_ts),
        ));
    }
    summary.repairs = Some(repairs);
    plans
}

/// Logs the run's progress every 10 s, until aborted.
async fn progress_lines(sh: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    tick.tick().await;
    loop {
        tick.tick().await;
        let l = &sh.live;
        tracing::info!(
            readings = Live::get(&l.readings),
            acknowledged = Live::get(&l.readings_acked),
            retries = Live::get(&l.retries),
            resyncs = Live::get(&l.resyncs),
            spooled_batches = sh.spool.count(),
            "Progress."
        );
    }
}
