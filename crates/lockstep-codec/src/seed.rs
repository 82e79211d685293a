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

/// The optional fields of a seed reading in [`SEED_FIELDS`] order.
pub fn seed_values(r: &TelemetryReading) -> [Option<f64>; 4] {
    [r.speed, r.battery, r.power, r.heading]
}

#[cfg(test)]
mod tests {
    use super::*;

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
