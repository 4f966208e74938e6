//! Whether a short read should first try the page cache on the async
//! thread (see [`super::service::CACHED_READ_MAX`]): a hit saves two
//! thread hand-offs, a miss costs a wasted attempt before the blocking
//! read. A running estimate of the hit rate decides; while it is low, a
//! few reads still try, so the estimate sees the cache warm up.

use std::sync::atomic::{AtomicU32, Ordering};

/// The estimate's fixed-point scale: a rate of 1.0.
pub const HIT_RATE_SCALE: u32 = 1024;
/// Reads try the cache first while the estimated hit rate is at least
/// this. A miss costs more than the hand-offs a hit saves (measured: a
/// cold random read loses about 5% when every read tries, a warm one gains
/// about 18%), as it may also wait on the disk queue on the async thread.
pub const TRY_FROM_RATE: u32 = HIT_RATE_SCALE * 7 / 8;
/// While the estimate is below [`TRY_FROM_RATE`], one read in this many
/// tries anyway.
pub const PROBE_EVERY: u32 = 16;
/// Each outcome moves the estimate by 1/2^this of the way to itself.
const WEIGHT_SHIFT: u32 = 5;

/// The running hit-rate estimate. Updates race benignly: a lost one only
/// delays the estimate by a read.
pub struct CacheHits {
    rate: AtomicU32,
    reads: AtomicU32,
}

impl Default for CacheHits {
    /// Starts by trying: a fresh store is as likely warm as cold.
    fn default() -> CacheHits {
        CacheHits {
            rate: AtomicU32::new(HIT_RATE_SCALE),
            reads: AtomicU32::new(0),
        }
    }
}

impl CacheHits {
    /// Whether the next read should try the page cache first.
    pub fn worth_trying(&self) -> bool {
        self.rate.load(Ordering::Relaxed) >= TRY_FROM_RATE
            || self
                .reads
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(PROBE_EVERY)
    }

    /// Records whether a read that tried the page cache found its bytes.
    pub fn record(&self, hit: bool) {
        let target = if hit { HIT_RATE_SCALE } else { 0 };
        let _ = self
            .rate
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |rate| {
                Some(rate - (rate >> WEIGHT_SHIFT) + (target >> WEIGHT_SHIFT))
            });
    }

    #[cfg(test)]
    fn rate(&self) -> u32 {
        self.rate.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tries_of(hits: &CacheHits, reads: u32) -> u32 {
        (0..reads).filter(|_| hits.worth_trying()).count() as u32
    }

    #[test]
    fn a_warm_cache_is_always_tried() {
        let hits = CacheHits::default();
        for _ in 0..100 {
            hits.record(true);
        }
        assert_eq!(hits.rate(), HIT_RATE_SCALE);
        assert_eq!(tries_of(&hits, 64), 64);
    }

    #[test]
    fn a_cold_cache_is_only_probed() {
        let hits = CacheHits::default();
        for _ in 0..100 {
            hits.record(false);
        }
        assert!(hits.rate() < TRY_FROM_RATE);
        assert_eq!(tries_of(&hits, 64), 64 / PROBE_EVERY);
    }

    #[test]
    fn the_estimate_follows_the_hit_rate() {
        let hits = CacheHits::default();
        for round in 0..800 {
            hits.record(round % 2 == 0);
        }
        let half = HIT_RATE_SCALE / 2;
        assert!(
            hits.rate().abs_diff(half) < HIT_RATE_SCALE / 16,
            "{}",
            hits.rate()
        );
        assert_eq!(tries_of(&hits, 64), 64 / PROBE_EVERY);
        for round in 0..800 {
            hits.record(round % 20 != 0);
        }
        assert!(hits.rate() >= TRY_FROM_RATE, "{}", hits.rate());
        assert_eq!(tries_of(&hits, 64), 64);
    }

    #[test]
    fn probes_notice_the_cache_warming() {
        let hits = CacheHits::default();
        for _ in 0..100 {
            hits.record(false);
        }
        let mut reads = 0;
        while hits.rate() < TRY_FROM_RATE {
            if hits.worth_trying() {
                hits.record(true);
            }
            reads += 1;
            assert!(reads <= 128 * PROBE_EVERY, "the estimate never recovered");
        }
    }
}
