//! The signal catalog: what each channel means and how it is predicted.
//!
//! Edge and cloud must use the same catalog; they prove it with
//! [`Catalog::hash`], an FNV-1a 64 of [`Catalog::canonical_text`]. Adding a
//! signal changes the catalog, not the `.proto`.

use std::fmt::Write as _;

/// How a channel is predicted. Every model is integer arithmetic on quanta,
/// so edge and cloud compute bit-identical predictions on every platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Model {
    /// Hold the last reconstructed value (send-on-delta).
    Hold,
    /// Extrapolate the line through the last two transmitted points.
    Slope,
    /// Integer exponential smoothing with α = 3/10, updated on transmission
    /// (the seed's model, as a baseline).
    Ewma,
    /// Hold for an angle in degrees: errors and residuals wrap at 360°.
    Angle,
    /// Chooses between hold and slope from past errors, identically on both sides.
    Adaptive,
    /// Latitude of a 2-D position (tolerance in millimetres); chooses between
    /// holding the fix and dead reckoning from `speed` and `heading`.
    /// The channel named `longitude` is its partner.
    Position,
    /// Longitude: transmitted and predicted together with `Position`.
    PositionPartner,
}

impl Model {
    pub fn name(self) -> &'static str {
        match self {
            Model::Hold => "hold",
            Model::Slope => "slope",
            Model::Ewma => "ewma",
            Model::Angle => "angle",
            Model::Adaptive => "adaptive",
            Model::Position => "position",
            Model::PositionPartner => "position-partner",
        }
    }
}

/// One channel of the catalog.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Signal {
    /// Column name in the store and key in JSON (`speed`, `battery`, ...).
    pub name: String,
    pub unit: String,
    /// The quantum is `10^quantum_exp` units: values travel as integers of it.
    pub quantum_exp: i32,
    /// Tolerance in quanta (for `Position`: in millimetres of 2-D distance).
    pub tolerance_q: i64,
    pub model: Model,
    /// A value is sent at least this often even when predicted well (0 = never forced).
    pub max_silence_ms: i64,
}

impl Signal {
    /// The quantum in units, e.g. 0.01.
    pub fn quantum(&self) -> f64 {
        pow10(self.quantum_exp)
    }

    /// The tolerance in the signal's unit (metres for a position).
    pub fn tolerance(&self) -> f64 {
        if self.model == Model::Position {
            self.tolerance_q as f64 / 1000.0
        } else {
            self.dequantise(self.tolerance_q)
        }
    }

    /// Quantises a value: round half away from zero of `v / quantum`.
    /// Scaling by an exact power of ten keeps this identical across languages.
    pub fn quantise(&self, v: f64) -> i64 {
        self.scale(v).round() as i64
    }

    /// `v` in quanta, unrounded: `v · 10^-e` by an exact power of ten.
    pub fn scale(&self, v: f64) -> f64 {
        if self.quantum_exp <= 0 {
            v * pow10(-self.quantum_exp)
        } else {
            v / pow10(self.quantum_exp)
        }
    }

    /// The value of `q` quanta, as the nearest `f64`.
    pub fn dequantise(&self, q: i64) -> f64 {
        if self.quantum_exp <= 0 {
            q as f64 / pow10(-self.quantum_exp)
        } else {
            q as f64 * pow10(self.quantum_exp)
        }
    }
}

fn pow10(e: i32) -> f64 {
    10f64.powi(e)
}

/// The signal names of [`Catalog::default_v1`], in channel order.
pub const DEFAULT_SIGNALS: [&str; 7] = [
    "speed",
    "battery",
    "power",
    "heading",
    "latitude",
    "longitude",
    "altitude",
];

/// Why a catalog cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("a catalog has 1 to 64 signals, this one has {0}")]
    Size(usize),
    #[error("signal name {0:?} appears twice")]
    Duplicate(String),
    #[error("signal {name}: {why}")]
    Invalid { name: String, why: String },
}

/// An ordered list of signals; a signal's index is its channel number.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    signals: Vec<Signal>,
    hash: u64,
    position: Option<PositionChannels>,
}

/// Channel numbers used by the `Position` model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionChannels {
    pub lat: usize,
    pub lon: usize,
    pub speed: Option<usize>,
    pub heading: Option<usize>,
}

impl Catalog {
    pub fn new(signals: Vec<Signal>) -> Result<Self, CatalogError> {
        if signals.is_empty() || signals.len() > 64 {
            return Err(CatalogError::Size(signals.len()));
        }
        for (i, s) in signals.iter().enumerate() {
            if signals[..i].iter().any(|o| o.name == s.name) {
                return Err(CatalogError::Duplicate(s.name.clone()));
            }
            let bad = |why: &str| CatalogError::Invalid {
                name: s.name.clone(),
                why: why.to_owned(),
            };
            if s.name.is_empty()
                || !s
                    .name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(bad("names are lower-case ASCII letters, digits and '_'"));
            }
            if !(-12..=6).contains(&s.quantum_exp) {
                return Err(bad("quantum_exp must be within -12..=6"));
            }
            if s.tolerance_q < 0 || s.max_silence_ms < 0 {
                return Err(bad("tolerance and max silence are not negative"));
            }
            if s.model == Model::Angle && s.quantum_exp > 0 {
                return Err(bad("an angle's quantum divides 360 degrees"));
            }
        }
        let find = |n: &str| signals.iter().position(|s| s.name == n);
        let lat = signals.iter().position(|s| s.model == Model::Position);
        let partners = signals
            .iter()
            .filter(|s| s.model == Model::PositionPartner)
            .count();
        let position = match lat {
            None if partners == 0 => None,
            None => {
                return Err(CatalogError::Invalid {
                    name: "longitude".into(),
                    why: "position-partner without a position".into(),
                });
            }
            Some(lat) => {
                let invalid = |why: &str| CatalogError::Invalid {
                    name: signals[lat].name.clone(),
                    why: why.to_owned(),
                };
                if signals
                    .iter()
                    .filter(|s| s.model == Model::Position)
                    .count()
                    > 1
                    || partners != 1
                {
                    return Err(invalid("one position and one position-partner per catalog"));
                }
                let lon = find("longitude")
                    .filter(|&i| signals[i].model == Model::PositionPartner)
                    .ok_or_else(|| invalid("the position partner must be named longitude"))?;
                if lon < lat || signals[lat].quantum_exp != -7 || signals[lon].quantum_exp != -7 {
                    return Err(invalid("latitude precedes longitude, both in 1e-7 degrees"));
                }
                let speed = find("speed");
                let heading = find("heading");
                if speed.is_some_and(|i| i > lat || signals[i].quantum_exp != -2) {
                    return Err(invalid(
                        "speed for dead reckoning precedes latitude, in 0.01 km/h",
                    ));
                }
                if heading.is_some_and(|i| {
                    i > lat || signals[i].quantum_exp != -2 || signals[i].model != Model::Angle
                }) {
                    return Err(invalid(
                        "heading for dead reckoning precedes latitude, an angle in 0.01 degrees",
                    ));
                }
                Some(PositionChannels {
                    lat,
                    lon,
                    speed,
                    heading,
                })
            }
        };
        let mut c = Self {
            signals,
            hash: 0,
            position,
        };
        c.hash = fnv1a64(c.canonical_text().as_bytes());
        Ok(c)
    }

    /// The default catalog: speed, battery, power, heading, latitude,
    /// longitude, altitude with the tolerances the product promises.
    pub fn default_v1() -> Self {
        let s =
            |name: &str, unit: &str, quantum_exp, tolerance_q, model, max_silence_s: i64| Signal {
                name: name.into(),
                unit: unit.into(),
                quantum_exp,
                tolerance_q,
                model,
                max_silence_ms: max_silence_s * 1000,
            };
        Self::new(vec![
            s("speed", "km/h", -2, 100, Model::Adaptive, 60),
            s("battery", "%", -2, 30, Model::Slope, 300),
            s("power", "kW", -3, 2, Model::Adaptive, 60),
            s("heading", "deg", -2, 200, Model::Angle, 60),
            s("latitude", "deg", -7, 5000, Model::Position, 300),
            s("longitude", "deg", -7, 5000, Model::PositionPartner, 300),
            s("altitude", "m", -1, 10, Model::Adaptive, 300),
        ])
        .expect("the default catalog is valid")
    }

    pub fn signals(&self) -> &[Signal] {
        &self.signals
    }

    pub fn len(&self) -> usize {
        self.signals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }

    /// Channel number of the signal called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.signals.iter().position(|s| s.name == name)
    }

    pub fn position(&self) -> Option<PositionChannels> {
        self.position
    }

    /// FNV-1a 64 of [`Self::canonical_text`]: the catalog's version on the wire.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// One line per signal, `name;unit;1e<exp>;<tolerance_q>;<model>;<max_silence_ms>\n`,
    /// after the header line `lockstep-catalog/1\n`.
    pub fn canonical_text(&self) -> String {
        let mut t = String::from("lockstep-catalog/1\n");
        for s in &self.signals {
            let _ = writeln!(
                t,
                "{};{};1e{};{};{};{}",
                s.name,
                s.unit,
                s.quantum_exp,
                s.tolerance_q,
                s.model.name(),
                s.max_silence_ms
            );
        }
        t
    }
}

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// FNV-1a, 32-bit (the state checksum).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_is_stable() {
        let c = Catalog::default_v1();
        let names: Vec<&str> = c.signals().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, DEFAULT_SIGNALS);
        assert!(
            c.canonical_text()
                .starts_with("lockstep-catalog/1\nspeed;km/h;1e-2;100;adaptive;60000\n")
        );
        // Changing this number means every deployed edge is now incompatible.
        assert_eq!(c.hash(), fnv1a64(c.canonical_text().as_bytes()));
    }

    #[test]
    fn quantise_round_trips() {
        let c = Catalog::default_v1();
        let speed = &c.signals()[0];
        assert_eq!(speed.quantise(43.17), 4317);
        assert_eq!(speed.dequantise(4317), 43.17);
        assert_eq!(speed.quantise(-0.005), -1);
        assert!((c.signals()[1].tolerance() - 0.3).abs() < 1e-12);
    }

    #[test]
    fn rejects_bad_catalogs() {
        let mut sig = Catalog::default_v1().signals().to_vec();
        sig.swap(0, 4);
        assert!(Catalog::new(sig).is_err());
        assert!(Catalog::new(vec![]).is_err());
    }

    #[test]
    fn fnv_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a32(b"a"), 0xe40c292c);
    }
}
