//! Synthetic vehicles: smooth signals (one reading per simulated second),
//! encoded the way a real edge would — the seed predictor for the seed form,
//! the lockstep [`Encoder`] for batches — so the share of skipped fields is
//! realistic. Wire timestamps are the wall clock (Unix ms) when the reading is
//! made, just before it is sent: WebSocket subscribers time delivery from it.

use std::f64::consts::TAU;
use std::sync::Arc;

use bytes::Bytes;
use lockstep_codec::seed::SEED_TOLERANCES;
use lockstep_codec::{Catalog, Encoder, EncoderConfig, Reading, SeedPredictor, Vin};
use prost::Message as _;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

use crate::cli::Form;

/// What every generated VIN starts with (the scope of the bench's fleet token).
pub const VIN_PREFIX: &str = "5YJ3E1EA";

/// The VIN of vehicle number `n` (17 valid characters).
pub fn vin_of(n: u64) -> String {
    format!("{VIN_PREFIX}{n:09}")
}

/// A VIN no generated vehicle uses: idle WebSocket clients subscribe to it.
pub const IDLE_VIN: &str = "5YJ3E1EA999999999";

/// One request body and what it carries.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Bytes,
    pub readings: u32,
    /// Non-null field values in the body's readings, and how many were transmitted.
    pub fields_total: u64,
    pub fields_transmitted: u64,
}

enum Codec {
    Seed(SeedPredictor),
    Lockstep(Box<Encoder>),
}

/// One simulated vehicle with its edge-side codec state.
pub struct Vehicle {
    pub index: usize,
    pub vin: String,
    rng: SmallRng,
    codec: Codec,
    catalog: Arc<Catalog>,
    /// Simulated seconds.
    t: f64,
    phase: [f64; 4],
    cruise: f64,
    soc0: f64,
    heading0: f64,
    /// Position, metres east/north of the start.
    east: f64,
    north: f64,
    lat0: f64,
    lon0: f64,
    last_ts: i64,
    /// Readings whose wire timestamp had to be moved past the wall clock
    /// (seed form: per-VIN timestamps must increase).
    pub clamped: u64,
    /// Readings acknowledged with 2xx.
    pub acked: u64,
}

impl Vehicle {
    pub fn new(
        index: usize,
        vin_number: u64,
        form: Form,
        catalog: Arc<Catalog>,
        seed: u64,
    ) -> Self {
        let mut rng =
            SmallRng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ vin_number);
        let vin = vin_of(vin_number);
        let codec = match form {
            Form::Seed => Codec::Seed(SeedPredictor::default()),
            Form::Lockstep => Codec::Lockstep(Box::new(new_encoder(&catalog, &vin, &mut rng))),
        };
        Self {
            index,
            vin,
            t: rng.random_range(0.0..3600.0),
            phase: std::array::from_fn(|_| rng.random_range(0.0..TAU)),
            cruise: rng.random_range(40.0..90.0),
            soc0: rng.random_range(60.0..100.0),
            heading0: rng.random_range(0.0..360.0),
            east: 0.0,
            north: 0.0,
            lat0: rng.random_range(45.0..52.0),
            lon0: rng.random_range(-1.0..8.0),
            rng,
            codec,
            catalog,
            last_ts: 0,
            clamped: 0,
            acked: 0,
        }
    }

    /// Approximately normal noise (Irwin–Hall), standard deviation `sd`.
    fn noise(&mut self, sd: f64) -> f64 {
        let s: f64 = (0..4).map(|_| self.rng.random::<f64>()).sum();
        (s - 2.0) * sd * 3f64.sqrt()
    }

    /// The next measured values, catalog order: speed, battery, power,
    /// heading, latitude, longitude, altitude. Advances one simulated second.
    fn actual(&mut self) -> [f64; 7] {
        let (t, ph) = (self.t, self.phase);
        let speed = (self.cruise
            + 20.0 * (TAU * t / 600.0 + ph[0]).sin()
            + 4.0 * (TAU * t / 90.0 + ph[1]).sin()
            + self.noise(0.2))
        .max(0.0);
        let battery = (self.soc0 - 0.004 * (t % 10_000.0) + self.noise(0.05)).max(5.0);
        let power = 0.3 * speed + 6.0 * (TAU * t / 120.0 + ph[2]).sin() + self.noise(0.4);
        let heading =
            (self.heading0 + 25.0 * (TAU * t / 400.0 + ph[3]).sin() + 0.02 * t).rem_euclid(360.0);
        let step = speed / 3.6;
        self.east += step * heading.to_radians().sin();
        self.north += step * heading.to_radians().cos();
        let lat = self.lat0 + self.north / 111_320.0;
        let lon = self.lon0 + self.east / (111_320.0 * self.lat0.to_radians().cos());
        let altitude = 120.0 + 30.0 * (TAU * t / 900.0 + ph[1]).sin();
        self.t += 1.0;
        [speed, battery, power, heading, lat, lon, altitude]
    }

    /// Wire timestamp for a reading made now: the wall clock, moved just past
    /// the previous one when the seed form needs it to increase.
    fn stamp(&mut self, now_ms: i64, strictly_increasing: bool) -> i64 {
        let floor = if strictly_increasing {
            self.last_ts + 1
        } else {
            self.last_ts
        };
        let ts = now_ms.max(floor);
        if ts > now_ms {
            self.clamped += 1;
        }
        self.last_ts = ts;
        ts
    }

    /// The body of the next request: one seed reading, or a batch of `n` readings.
    pub fn next_body(&mut self, n: u32, now_ms: i64) -> Body {
        match self.codec {
            Codec::Seed(_) => {
                let a = self.actual();
                let ts = self.stamp(now_ms, true);
                let Codec::Seed(pred) = &mut self.codec else {
                    unreachable!()
                };
                let msg = pred.encode(&self.vin, ts, [a[0], a[1], a[2], a[3]], SEED_TOLERANCES);
                let sent = [msg.speed, msg.battery, msg.power, msg.heading]
                    .iter()
                    .filter(|v| v.is_some())
                    .count();
                Body {
                    bytes: Bytes::from(msg.encode_to_vec()),
                    readings: 1,
                    fields_total: 4,
                    fields_transmitted: sent as u64,
                }
            }
            Codec::Lockstep(_) => {
                let (mut total, mut sent) = (0u64, 0u64);
                for _ in 0..n {
                    let a = self.actual();
                    let ts = self.stamp(now_ms, false);
                    let Codec::Lockstep(enc) = &mut self.codec else {
                        unreachable!()
                    };
                    let frame = enc.push(&Reading {
                        timestamp_ms: ts,
                        values: a.iter().map(|v| Some(*v)).collect(),
                    });
                    total += u64::from(a.len() as u32 - frame.nulls.count_ones());
                    sent += u64::from(frame.transmitted.count_ones());
                }
                let Codec::Lockstep(enc) = &mut self.codec else {
                    unreachable!()
                };
                let batch = enc.take_batch().expect("n >= 1 readings were pushed");
                Body {
                    bytes: Bytes::from(batch.encode_to_vec()),
                    readings: n,
                    fields_total: total,
                    fields_transmitted: sent,
                }
            }
        }
    }

    /// After a 409: start a new session (new random id, keyframe first).
    pub fn new_session(&mut self) {
        if matches!(self.codec, Codec::Lockstep(_)) {
            let enc = new_encoder(&self.catalog, &self.vin, &mut self.rng);
            self.codec = Codec::Lockstep(Box::new(enc));
        }
    }
}

fn new_encoder(catalog: &Arc<Catalog>, vin: &str, rng: &mut SmallRng) -> Encoder {
    let vin = Vin::parse(vin).expect("generated VINs are valid");
    let session = rng.random::<u64>() | 1;
    Encoder::new(catalog.clone(), vin, session, EncoderConfig::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_codec::{BatchOutcome, CheckedBatch};
    use lockstep_proto::telemetry::TelemetryReading;

    #[test]
    fn vins_are_valid() {
        assert!(Vin::parse(&vin_of(1)).is_ok());
        assert!(Vin::parse(&vin_of(999_999_998)).is_ok());
        assert!(Vin::parse(IDLE_VIN).is_ok());
    }

    #[test]
    fn seed_bodies_skip_fields_and_decode() {
        let cat = Arc::new(Catalog::default_v1());
        let mut v = Vehicle::new(0, 1, Form::Seed, cat, 1);
        let (mut total, mut sent) = (0, 0);
        let mut last = 0;
        for _ in 0..500 {
            let b = v.next_body(1, 1_700_000_000_000);
            let r = TelemetryReading::decode(b.bytes).unwrap();
            assert!(r.timestamp > last);
            last = r.timestamp;
            total += b.fields_total;
            sent += b.fields_transmitted;
        }
        assert!(
            sent * 2 < total,
            "most seed fields should be skipped: {sent}/{total}"
        );
    }

    #[test]
    fn lockstep_batches_decode_in_sequence() {
        let cat = Arc::new(Catalog::default_v1());
        let mut v = Vehicle::new(0, 1, Form::Lockstep, cat.clone(), 7);
        let mut state = None;
        let (mut total, mut sent) = (0, 0);
        for k in 0..20 {
            let b = v.next_body(50, 1_700_000_000_000 + k);
            let cb = CheckedBatch::parse(&cat, &b.bytes).unwrap();
            assert_eq!(cb.len(), 50);
            match cb.decode(&cat, state.as_ref()).unwrap() {
                BatchOutcome::Fresh { readings, state: s } => {
                    assert_eq!(readings.len(), 50);
                    state = Some(s);
                }
                BatchOutcome::Duplicate => panic!("fresh batch seen as duplicate"),
            }
            total += b.fields_total;
            sent += b.fields_transmitted;
        }
        assert!(sent < total, "{sent}/{total}");
    }
}
