//! Vehicle identification numbers: parsed once at the boundary.

use std::fmt;

/// A valid 17-character VIN (ISO 3779 alphabet: digits and capital letters
/// except I, O and Q). A `Vin` that exists is valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vin(String);

/// Why a string is not a VIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VinError {
    #[error("a VIN has 17 characters, this one has {0}")]
    Length(usize),
    #[error(
        "VIN character {ch:?} at position {pos} is not allowed (digits and capital letters except I, O, Q)"
    )]
    Character { pos: usize, ch: char },
}

impl Vin {
    pub fn parse(s: &str) -> Result<Self, VinError> {
        let n = s.chars().count();
        if n != 17 {
            return Err(VinError::Length(n));
        }
        for (pos, ch) in s.chars().enumerate() {
            let ok =
                ch.is_ascii_digit() || (ch.is_ascii_uppercase() && !matches!(ch, 'I' | 'O' | 'Q'));
            if !ok {
                return Err(VinError::Character { pos, ch });
            }
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Vin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for Vin {
    type Err = VinError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for Vin {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_seed_vins_and_rejects_bad_ones() {
        assert!(Vin::parse("5YJ3E1EA000000001").is_ok());
        assert_eq!(Vin::parse("SHORT"), Err(VinError::Length(5)));
        assert!(matches!(
            Vin::parse("5YJ3E1EA00000000I"),
            Err(VinError::Character { pos: 16, .. })
        ));
        assert!(Vin::parse("5yj3e1ea000000001").is_err());
    }
}
