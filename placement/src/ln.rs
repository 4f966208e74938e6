//! The straw2 draw cost: `-log2(u / 2^32)` in fixed point, from integers only.
//!
//! Straw2 gives every item the draw `ln(u) / weight` for a uniform `u` and
//! picks the largest. We use the equivalent *cost* `-log2(u) / weight` and
//! pick the smallest: `-log2` is `-ln` times a constant, so the ranking is
//! the same. Costs are exponentially distributed, which is what makes the
//! winner proportional to weight.
//!
//! Floating-point `ln` may differ between platforms, so the cost comes from
//! a table of 4097 points computed with integer arithmetic (repeated
//! squaring), linearly interpolated on the low 20 bits of the normalized
//! input. Costs are exactly reproducible, strictly decreasing in `u`, and
//! distinct inputs never tie.

use std::sync::OnceLock;

/// Fraction bits of a cost.
pub(crate) const COST_FRACTION_BITS: u32 = 40;
/// log2 of the number of table intervals.
const TABLE_BITS: u32 = 12;
const TABLE_POINTS: usize = (1 << TABLE_BITS) + 1;
/// Bits of the input interpolated between two table points.
const INTERPOLATED_BITS: u32 = 32 - TABLE_BITS;

/// `-log2(k / 4096)` for `k` in `1..=4096`, in fixed point (`table[0]` unused).
fn table() -> &'static [u64; TABLE_POINTS] {
    static TABLE: OnceLock<Box<[u64; TABLE_POINTS]>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Box::new([0u64; TABLE_POINTS]);
        let whole = u64::from(TABLE_BITS) << COST_FRACTION_BITS;
        for (k, entry) in table.iter_mut().enumerate().skip(1) {
            *entry = whole - log2_fixed(k as u64);
        }
        table
    })
}

/// `log2(n)` for `n >= 1`, with [`COST_FRACTION_BITS`] fraction bits,
/// truncated. Integer part from the bit length; each fraction bit from one
/// squaring of the mantissa (kept with 62 fraction bits in a u128).
fn log2_fixed(n: u64) -> u64 {
    const ONE: u128 = 1 << 62;
    let integer = 63 - n.leading_zeros();
    let mut mantissa = (u128::from(n) << 62) >> integer; // in [1, 2)
    let mut fraction = 0u64;
    for bit in (0..COST_FRACTION_BITS).rev() {
        mantissa = (mantissa * mantissa) >> 62;
        if mantissa >= 2 * ONE {
            mantissa >>= 1;
            fraction |= 1 << bit;
        }
    }
    (u64::from(integer) << COST_FRACTION_BITS) | fraction
}

/// The cost of uniform bits `u`: `-log2(max(u, 1) / 2^32)` in fixed point.
///
/// `u` is first shifted so its top bit is set (each shift adds exactly 1 to
/// the cost); interpolation then only runs on `[1/2, 1)`, where `-log2` is
/// nearly straight and the error stays below 5e-8.
#[inline]
pub(crate) fn cost(u: u32) -> u64 {
    let table = table();
    let u = u.max(1);
    let shift = u.leading_zeros();
    let normalized = u << shift;
    let index = (normalized >> INTERPOLATED_BITS) as usize;
    let offset = u64::from(normalized & ((1 << INTERPOLATED_BITS) - 1));
    let (high, low) = (table[index], table[index + 1]);
    (u64::from(shift) << COST_FRACTION_BITS) + high - (((high - low) * offset) >> INTERPOLATED_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_f64(cost: u64) -> f64 {
        cost as f64 / (1u64 << COST_FRACTION_BITS) as f64
    }

    #[test]
    fn log2_of_powers_and_known_values() {
        assert_eq!(log2_fixed(1), 0);
        assert_eq!(log2_fixed(4096), 12 << COST_FRACTION_BITS);
        let three = as_f64(log2_fixed(3));
        assert!((three - 3f64.log2()).abs() < 1e-11, "{three}");
    }

    #[test]
    fn cost_matches_log2_and_is_strictly_decreasing() {
        let mut previous = u64::MAX;
        for i in 0..200_000u64 {
            let u = ((i * 21_474) + 1) as u32;
            let c = cost(u);
            let exact = -(f64::from(u) / 4_294_967_296.0).log2();
            assert!((as_f64(c) - exact).abs() < 5e-8 + 1e-9 * exact, "u={u}");
            assert!(c < previous, "not decreasing at u={u}");
            previous = c;
        }
        assert!(cost(u32::MAX) > 0);
        assert_eq!(cost(0), cost(1));
    }

    #[test]
    fn costs_are_exponential() {
        // Mean of -log2(U) is 1/ln 2.
        let n = 1_000_000u64;
        let sum: f64 = (0..n)
            .map(|i| as_f64(cost(crate::hash::mix64(i) as u32)))
            .sum();
        let mean = sum / n as f64;
        assert!((mean - std::f64::consts::LOG2_E).abs() < 0.005, "{mean}");
    }
}
