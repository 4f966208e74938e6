//! 16.16 fixed-point weights, as CRUSH uses for device capacity and reweight.
//!
//! The human-editable forms (JSON) show a weight as a decimal number; every
//! 16.16 value converts to an `f64` exactly, so a map round-trips bit for bit.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative 16.16 fixed-point weight: `raw / 65536`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u32);

/// The largest weight a map may carry (just under 65536.0).
pub const MAX_WEIGHT: Weight = Weight(u32::MAX);

/// Why a number is not a valid weight.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("weight {0} is not a number in 0..=65535.99998")]
pub struct InvalidWeight(pub f64);

impl Weight {
    pub const ZERO: Weight = Weight(0);
    pub const ONE: Weight = Weight(0x1_0000);

    pub const fn from_raw(raw: u32) -> Weight {
        Weight(raw)
    }

    pub const fn raw(self) -> u32 {
        self.0
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// Converts a decimal weight, rounding to the nearest 1/65536.
    pub fn from_f64(value: f64) -> Result<Weight, InvalidWeight> {
        let scaled = (value * 65536.0).round();
        if !value.is_finite() || scaled < 0.0 || scaled > f64::from(u32::MAX) {
            return Err(InvalidWeight(value));
        }
        Ok(Weight(scaled as u32))
    }

    pub fn to_f64(self) -> f64 {
        f64::from(self.0) / 65536.0
    }

    /// Sum of weights, saturating at [`MAX_WEIGHT`] (maps are validated so
    /// that bucket totals never reach it).
    pub fn saturating_add(self, other: Weight) -> Weight {
        Weight(self.0.saturating_add(other.0))
    }
}

impl std::fmt::Display for Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.5}", self.to_f64())
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.to_f64())
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Weight, D::Error> {
        let value = f64::deserialize(deserializer)?;
        Weight::from_f64(value).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_round_trip_is_exact() {
        for raw in [0, 1, 0x8000, 0x1_0000, 0x1_8001, u32::MAX] {
            let w = Weight::from_raw(raw);
            assert_eq!(Weight::from_f64(w.to_f64()).unwrap(), w);
        }
    }

    #[test]
    fn rejects_negative_nan_and_huge() {
        for bad in [-1.0, f64::NAN, f64::INFINITY, 70000.0] {
            assert!(Weight::from_f64(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn json_form_is_a_number() {
        let w = Weight::from_f64(1.5).unwrap();
        assert_eq!(serde_json::to_string(&w).unwrap(), "1.5");
        assert_eq!(serde_json::from_str::<Weight>("1.5").unwrap(), w);
        assert!(serde_json::from_str::<Weight>("-2").is_err());
    }
}
