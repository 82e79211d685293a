//! A deterministic fleet simulator: plausible vehicle physics, per rng seed.
//!
//! Each vehicle drives a cycle of stops, accelerations, cruising (with small
//! speed noise and gentle curves) and braking. Power follows from a
//! longitudinal force model (inertia, aerodynamic drag, rolling resistance,
//! grade) and is negative when regenerating; the state of charge falls with
//! the integral of power; heading and position move with speed; altitude
//! follows a slowly varying grade. The same rng seed gives the same fleet,
//! reading for reading (the RNG is seeded per vehicle from rng seed and index).

use lockstep_codec::{Reading, Vin};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::sources::{ALTITUDE, BATTERY, CHANNELS, HEADING, LATITUDE, LONGITUDE, POWER, SPEED};

/// ISO 3779 characters allowed in a VIN (no I, O, Q).
const VIN_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";

/// SplitMix64: a tiny, well-mixed hash for deriving ids from rng seeds.
pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A valid VIN made of `prefix` (3 characters) and 14 characters from `key`.
pub fn vin_from_key(prefix: &str, key: u64) -> Vin {
    let mut s = String::from(prefix);
    let mut h = key;
    while s.len() < 17 {
        h = splitmix64(h);
        s.push(VIN_ALPHABET[(h % VIN_ALPHABET.len() as u64) as usize] as char);
    }
    Vin::parse(&s).expect("VIN alphabet only")
}

/// The VIN of simulated vehicle `index` under `rng_seed` (prefix `LKS`).
pub fn sim_vin(rng_seed: u64, index: usize) -> Vin {
    vin_from_key(
        "LKS",
        splitmix64(rng_seed) ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407),
    )
}

/// A stable VIN for a replayed file (prefix `LKR`), from its name (FNV-1a).
pub fn replay_vin(name: &str) -> Vin {
    vin_from_key("LKR", lockstep_codec::catalog::fnv1a64(name.as_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Stopped { left_s: f64 },
    Accelerate { target: f64, accel: f64 },
    Cruise { target: f64, left_s: f64 },
    Brake { target: f64, decel: f64 },
}

/// One simulated vehicle.
#[derive(Debug, Clone)]
pub struct Vehicle {
    pub vin: Vin,
    rng: StdRng,
    phase: Phase,
    /// m/s
    v: f64,
    /// m/s², last step's acceleration
    a: f64,
    soc: f64,
    heading: f64,
    yaw_rate: f64,
    lat: f64,
    lon: f64,
    alt: f64,
    grade: f64,
    t_ms: i64,
    dt_ms: i64,
}

const MASS_KG: f64 = 1500.0;
const CDA_M2: f64 = 0.65;
const CRR: f64 = 0.011;
const G: f64 = 9.81;
const RHO: f64 = 1.2;
const CAPACITY_KWH: f64 = 50.0;
const AUX_KW: f64 = 0.4;

impl Vehicle {
    /// Vehicle `index` of the fleet of `rng_seed`, sampled every `dt_ms`, first reading at `start_ms`.
    pub fn new(rng_seed: u64, index: usize, start_ms: i64, dt_ms: i64) -> Self {
        let mut rng = StdRng::seed_from_u64(splitmix64(
            rng_seed.wrapping_add(index as u64 * 0x1000_0001),
        ));
        // Spread the fleet around Rabat (the Twizy dataset's city).
        let lat = 33.97 + rng.random_range(-0.05..0.05);
        let lon = -6.85 + rng.random_range(-0.05..0.05);
        Self {
            vin: sim_vin(rng_seed, index),
            phase: Phase::Stopped {
                left_s: rng.random_range(0.0..10.0),
            },
            v: 0.0,
            a: 0.0,
            soc: rng.random_range(55.0..98.0),
            heading: rng.random_range(0.0..360.0),
            yaw_rate: 0.0,
            lat,
            lon,
            alt: rng.random_range(20.0..150.0),
            grade: 0.0,
            t_ms: start_ms,
            dt_ms: dt_ms.max(1),
            rng,
        }
    }

    /// The reading at the current time, then advances one step.
    pub fn next_reading(&mut self) -> Reading {
        let mut values = vec![None; CHANNELS];
        values[SPEED] = Some(self.v * 3.6);
        values[BATTERY] = Some(self.soc);
        values[POWER] = Some(self.power_kw());
        values[HEADING] = Some(self.heading);
        values[LATITUDE] = Some(self.lat);
        values[LONGITUDE] = Some(self.lon);
        values[ALTITUDE] = Some(self.alt);
        let r = Reading {
            timestamp_ms: self.t_ms,
            values,
        };
        self.step();
        r
    }

    /// Battery power in kW at the current speed and acceleration:
    /// traction/efficiency when driving, regeneration × efficiency when braking.
    fn power_kw(&self) -> f64 {
        let v = self.v;
        let force = MASS_KG * self.a
            + 0.5 * RHO * CDA_M2 * v * v
            + if v > 0.05 { CRR * MASS_KG * G } else { 0.0 }
            + MASS_KG * G * self.grade;
        let wheel_kw = force * v / 1000.0;
        let battery_kw = if wheel_kw >= 0.0 {
            wheel_kw / 0.9
        } else {
            (wheel_kw * 0.7).max(-45.0)
        };
        battery_kw + AUX_KW
    }

    fn step(&mut self) {
        let dt = self.dt_ms as f64 / 1000.0;
        let rng = &mut self.rng;
        let v0 = self.v;
        self.phase = match self.phase {
            Phase::Stopped { left_s } if left_s > dt => Phase::Stopped {
                left_s: left_s - dt,
            },
            Phase::Stopped { .. } => {
                // Sometimes turn a corner while stopped at a junction.
                if rng.random_bool(0.4) {
                    self.heading = (self.heading + if rng.random_bool(0.5) { 90.0 } else { -90.0 })
                        .rem_euclid(360.0);
                }
                Phase::Accelerate {
                    target: rng.random_range(30.0..100.0) / 3.6,
                    accel: rng.random_range(1.0..2.5),
                }
            }
            Phase::Accelerate { target, accel } => {
                // Acceleration tapers off near the target speed.
                let a = accel * ((target - v0) / 5.0).clamp(0.15, 1.0);
                self.v = (v0 + a * dt).min(target);
                if self.v >= target - 0.01 {
                    Phase::Cruise {
                        target,
                        left_s: rng.random_range(15.0..120.0),
                    }
                } else {
                    Phase::Accelerate { target, accel }
                }
            }
            Phase::Cruise { target, left_s } => {
                let noise: f64 = rng.random_range(-0.15..0.15);
                self.v = (v0 + (target - v0) * 0.2 * dt.min(1.0) + noise * dt.sqrt()).max(0.0);
                if left_s > dt {
                    Phase::Cruise {
                        target,
                        left_s: left_s - dt,
                    }
                } else if rng.random_bool(0.5) {
                    Phase::Brake {
                        target: 0.0,
                        decel: rng.random_range(1.5..3.0),
                    }
                } else {
                    let next = rng.random_range(20.0..110.0) / 3.6;
                    if next > v0 {
                        Phase::Accelerate {
                            target: next,
                            accel: rng.random_range(1.0..2.0),
                        }
                    } else {
                        Phase::Brake {
                            target: next,
                            decel: rng.random_range(1.0..2.0),
                        }
                    }
                }
            }
            Phase::Brake { target, decel } => {
                self.v = (v0 - decel * dt).max(target);
                if self.v <= target + 1e-9 {
                    if target <= 0.0 {
                        self.v = 0.0;
                        Phase::Stopped {
                            left_s: rng.random_range(5.0..45.0),
                        }
                    } else {
                        Phase::Cruise {
                            target,
                            left_s: rng.random_range(10.0..60.0),
                        }
                    }
                } else {
                    Phase::Brake { target, decel }
                }
            }
        };
        self.a = (self.v - v0) / dt;
        // Gentle curves: the yaw rate wanders and decays; none while stopped.
        self.yaw_rate = (self.yaw_rate * 0.95 + rng.random_range(-0.4..0.4)).clamp(-6.0, 6.0);
        let dist = (v0 + self.v) / 2.0 * dt;
        if dist > 0.0 {
            self.heading = (self.heading + self.yaw_rate * dt).rem_euclid(360.0);
            let h = self.heading.to_radians();
            self.lat += dist * h.cos() / 111_320.0;
            self.lon += dist * h.sin() / (111_320.0 * self.lat.to_radians().cos());
            self.grade =
                (self.grade + rng.random_range(-0.002..0.002) * dist.sqrt()).clamp(-0.06, 0.06);
            self.alt += dist * self.grade;
        }
        // Energy: integral of battery power over the step.
        self.soc =
            (self.soc - self.power_kw() * dt / 3600.0 / CAPACITY_KWH * 100.0).clamp(0.0, 100.0);
        self.t_ms += self.dt_ms;
    }
}

/// The fleet of `n` vehicles under `rng_seed`.
pub fn fleet(rng_seed: u64, n: usize, start_ms: i64, dt_ms: i64) -> Vec<Vehicle> {
    (0..n)
        .map(|i| Vehicle::new(rng_seed, i, start_ms, dt_ms))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rng_seed: u64, i: usize, n: usize) -> Vec<Reading> {
        let mut v = Vehicle::new(rng_seed, i, 1_700_000_000_000, 1000);
        (0..n).map(|_| v.next_reading()).collect()
    }

    #[test]
    fn same_rng_seed_same_fleet() {
        assert_eq!(run(7, 3, 2000), run(7, 3, 2000));
        assert_ne!(run(7, 3, 200), run(8, 3, 200));
        assert_ne!(run(7, 3, 200), run(7, 4, 200));
        assert_eq!(sim_vin(7, 3), sim_vin(7, 3));
        assert_ne!(sim_vin(7, 3), sim_vin(7, 4));
    }

    #[test]
    fn vins_are_valid() {
        for i in 0..200 {
            let v = sim_vin(42, i);
            assert_eq!(v.as_str().len(), 17);
            assert!(!v.as_str().contains(['I', 'O', 'Q']));
        }
        assert_eq!(replay_vin("T1.csv").as_str().len(), 17);
    }

    #[test]
    fn physics_is_plausible() {
        let rs = run(1, 0, 3 * 3600);
        let speed: Vec<f64> = rs.iter().map(|r| r.values[SPEED].unwrap()).collect();
        assert!(speed.iter().all(|&s| (0.0..=120.0).contains(&s)));
        assert!(speed.iter().filter(|&&s| s == 0.0).count() > 60, "it stops");
        assert!(speed.iter().any(|&s| s > 40.0), "it drives");
        // Accelerations stay within what a car does (≤ 3 m/s² ≈ 10.8 km/h per s).
        assert!(speed.windows(2).all(|w| (w[1] - w[0]).abs() <= 11.0));
        let power: Vec<f64> = rs.iter().map(|r| r.values[POWER].unwrap()).collect();
        assert!(power.iter().any(|&p| p < -1.0), "regenerates");
        assert!(power.iter().any(|&p| p > 10.0), "pulls");
        let soc0 = rs[0].values[BATTERY].unwrap();
        let soc1 = rs.last().unwrap().values[BATTERY].unwrap();
        assert!(soc1 < soc0 - 1.0, "battery drains: {soc0} -> {soc1}");
        // Position moves with speed: ~distance travelled ≈ ∫v.
        let p0 = (
            rs[0].values[LATITUDE].unwrap(),
            rs[0].values[LONGITUDE].unwrap(),
        );
        let moved = rs.iter().any(|r| {
            (r.values[LATITUDE].unwrap() - p0.0).abs() > 0.01
                || (r.values[LONGITUDE].unwrap() - p0.1).abs() > 0.01
        });
        assert!(moved);
        assert!(
            rs.windows(2)
                .all(|w| w[1].timestamp_ms - w[0].timestamp_ms == 1000)
        );
    }
}
