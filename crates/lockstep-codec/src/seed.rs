//! The seed design's predictor, kept bit-for-bit for the seed wire form.
//!
//! Exponential smoothing `s = α·x + (1−α)·s` in plain `f64` (α = 0.3), the
//! first value taken as is, updated with transmitted values only, heading
//! included without wrap-around: exactly what existing edge loggers compute,
//! or they fall out of step. Unlike the seed server, callers keep one
//! [`SeedPredictor`] per vehicle.

use lockstep_proto::telemetry::TelemetryReading;

/// The four fields of the seed form, in wire order.
pub const SEED_FIELDS: [&str; 4] = ["speed", "battery", "power", "heading"];

/// The seed's smoothing factor.
pub const SEED_ALPHA: f64 = 0.3;

/// Edge-side tolerances of the seed load generator (speed, battery, power, heading).
pub const SEED_TOLERANCES: [f64; 4] = [1.0, 0.3, 2.0, 2.0];

/// Per-vehicle state of the seed predictor: one smoothed value per field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedPredictor {
    alpha: f64,
    state: [Option<f64>; 4],
}

impl Default for SeedPredictor {
    fn default() -> Self {
        Self::new(SEED_ALPHA)
    }
}

/// One seed reading after reconstruction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeedReconstruction {
    /// speed, battery, power, heading; `None` while a field was never sent.
    pub values: [Option<f64>; 4],
    /// Bit i set = field i was transmitted.
    pub transmitted: u8,
}

impl SeedReconstruction {
    /// Number of fields transmitted in this reading.
    pub fn transmitted_count(&self) -> u32 {
        self.transmitted.count_ones()
    }
}

impl SeedPredictor {
    pub fn new(alpha: f64) -> Self {
        Self {
            alpha,
            state: [None; 4],
        }
    }

    /// The current prediction of field `i` (index into [`SEED_FIELDS`]).
    pub fn predict(&self, i: usize) -> Option<f64> {
        self.state[i]
    }

    /// Learns a transmitted value, with the seed's exact operation order.
    pub fn update(&mut self, i: usize, value: f64) {
        self.state[i] = Some(match self.state[i] {
            None => value,
            Some(prev) => self.alpha * value + (1.0 - self.alpha) * prev,
        });
    }

    /// Cloud side: fills the absent fields of `reading`, then learns the
    /// transmitted ones (predictions first, as the seed server did).
    pub fn reconstruct(&mut self, reading: &TelemetryReading) -> SeedReconstruction {
        let sent = seed_values(reading);
        let mut values = [None; 4];
        let mut transmitted = 0u8;
        for (i, v) in sent.iter().enumerate() {
            match v {
                Some(x) => {
                    values[i] = Some(*x);
                    transmitted |= 1 << i;
                }
                None => values[i] = self.predict(i),
            }
        }
        for (i, v) in sent.iter().enumerate() {
            if let Some(x) = v {
                self.update(i, *x);
            }
        }
        SeedReconstruction {
            values,
            transmitted,
        }
    }

    /// Edge side: builds the reading an existing edge logger would send for
    /// `actual`, omitting each field whose prediction is within `tolerance`.
    pub fn encode(
        &mut self,
        vin: &str,
        timestamp_ms: i64,
        actual: [f64; 4],
        tolerance: [f64; 4],
    ) -> TelemetryReading {
        self.encode_partial(vin, timestamp_ms, actual.map(Some), tolerance)
    }

    /// Like [`Self::encode`] for a vehicle that lacks some measurements
    /// (`None`, or not finite). A missing value is left out: while the field
    /// has never been sent the cloud stores null, afterwards it stores the
    /// prediction — the seed form cannot say "no value" once a field has
    /// state, a limit of that wire format.
    pub fn encode_partial(
        &mut self,
        vin: &str,
        timestamp_ms: i64,
        actual: [Option<f64>; 4],
        tolerance: [f64; 4],
    ) -> TelemetryReading {
        let mut sent = [None; 4];
        for (i, x) in actual.into_iter().enumerate() {
            let Some(x) = x.filter(|x| x.is_finite()) else {
                continue;
            };
            let keep = matches!(self.predict(i), Some(p) if (x - p).abs() <= tolerance[i]);
            if !keep {
                sent[i] = Some(x);
                self.update(i, x);
            }
        }
        let [speed, battery, power, heading] = sent;
        TelemetryReading {
            vehicle_vin: vin.to_owned(),
            timestamp: timestamp_ms,
            speed,
            battery,
            power,
            heading,
        }
    }
}

/// The seed predictor of one vehicle and the last accepted seed timestamp,
/// as the cloud persists it (beside the batch form's [`crate::SessionState`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeedState {
    pub predictor: SeedPredictor,
    pub last_ts: Option<i64>,
}

impl SeedState {
    /// `[1][last_ts: i64 LE or i64::MIN][4 × (flag u8, f64 LE)]`: 45 bytes,
    /// frozen (stored states must keep loading).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1 + 8 + 4 * 9);
        b.push(1);
        b.extend_from_slice(&self.last_ts.unwrap_or(i64::MIN).to_le_bytes());
        for i in 0..4 {
            let p = self.predictor.predict(i);
            b.push(u8::from(p.is_some()));
            b.extend_from_slice(&p.unwrap_or(0.0).to_le_bytes());
        }
        b
    }

    /// Reads [`Self::to_bytes`] back; `None` for another version or length.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() != 1 + 8 + 36 || b[0] != 1 {
            return None;
        }
        let ts = i64::from_le_bytes(b[1..9].try_into().ok()?);
        let mut predictor = SeedPredictor::default();
        for i in 0..4 {
            let at = 9 + i * 9;
            if b[at] == 1 {
                // A fresh field takes its first value as is: this restores the state exactly.
                predictor.update(i, f64::from_le_bytes(b[at + 1..at + 9].try_into().ok()?));
            }
        }
        Some(Self {
            predictor,
            last_ts: (ts != i64::MIN).then_some(ts),
        })
    }
}

/// The optional fields of a seed reading in [`SEED_FIELDS`] order.
pub fn seed_values(r: &TelemetryReading) -> [Option<f64>; 4] {
    [r.speed, r.battery, r.power, r.heading]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_state_round_trips() {
        let mut s = SeedState::default();
        assert_eq!(SeedState::from_bytes(&s.to_bytes()), Some(s.clone()));
        s.predictor.update(0, 12.5);
        s.predictor.update(0, 14.0);
        s.predictor.update(3, 359.0);
        s.last_ts = Some(1_700_000_000_000);
        assert_eq!(SeedState::from_bytes(&s.to_bytes()), Some(s));
        assert_eq!(SeedState::from_bytes(&[2]), None);
    }

    /// Bytes as stored by servers before the state moved into the codec
    /// (speed after 12.5 then 14.0, heading 359, no battery or power).
    #[test]
    fn stored_seed_state_still_loads() {
        let stored = hex(
            "010068e5cf8b010000016666666666e62940000000000000000000000000000000000000010000000000707640",
        );
        let s = SeedState::from_bytes(&stored).expect("stored state loads");
        assert_eq!(s.last_ts, Some(1_700_000_000_000));
        assert_eq!(
            s.predictor.predict(0),
            Some(0.3 * 14.0 + (1.0 - 0.3) * 12.5)
        );
        assert_eq!(
            (s.predictor.predict(1), s.predictor.predict(2)),
            (None, None)
        );
        assert_eq!(s.predictor.predict(3), Some(359.0));
        assert_eq!(s.to_bytes(), stored, "the format is unchanged");
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn smoothing_matches_the_seed_formula() {
        let mut p = SeedPredictor::default();
        p.update(0, 10.0);
        p.update(0, 20.0);
        assert_eq!(p.predict(0), Some(0.3 * 20.0 + (1.0 - 0.3) * 10.0));
        assert_eq!(p.predict(1), None);
    }

    #[test]
    fn missing_values_are_never_invented() {
        let mut edge = SeedPredictor::default();
        let mut cloud = SeedPredictor::default();
        let wire = edge.encode_partial(
            "5YJ3E1EA000000001",
            1,
            [Some(50.0), Some(80.0), None, Some(f64::NAN)],
            SEED_TOLERANCES,
        );
        assert_eq!((wire.power, wire.heading), (None, None));
        let rec = cloud.reconstruct(&wire);
        assert_eq!(rec.values, [Some(50.0), Some(80.0), None, None]);
        assert_eq!(rec.transmitted_count(), 2);
    }

    #[test]
    fn edge_and_cloud_stay_in_step() {
        let mut edge = SeedPredictor::default();
        let mut cloud = SeedPredictor::default();
        for k in 0..200 {
            let x = k as f64;
            let actual = [
                x * 0.7 % 50.0,
                90.0 - x * 0.01,
                (x * 0.3).sin() * 10.0,
                (x * 3.0) % 360.0,
            ];
            let wire = edge.encode("5YJ3E1EA000000001", k, actual, SEED_TOLERANCES);
            let rec = cloud.reconstruct(&wire);
            assert_eq!(edge, cloud);
            for i in 0..4 {
                let err = (rec.values[i].unwrap() - actual[i]).abs();
                assert!(err <= SEED_TOLERANCES[i], "field {i} error {err}");
            }
        }
    }
}
