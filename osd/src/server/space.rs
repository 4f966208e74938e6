//! The OSD's space budget: the bytes its store holds against the capacity
//! it registered with, the refusal of writes that would pass the full
//! ratio (`NoSpace`, ENOSPC at a mount), and the garbage collector that
//! gives space back after deletes, on a timer and at once when a write was
//! refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aspen_proto::osd::OsdError;

use crate::store::ObjectStore;

/// The share of its capacity an OSD fills before it refuses writes (as
/// Ceph's `mon_osd_full_ratio`), so deletes and recovery still have room.
pub const FULL_RATIO: f64 = 0.95;
/// How often the garbage collector runs when nothing asks for it sooner.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);
/// The least time between two collections, however often writes are
/// refused.
pub const GC_MIN_GAP: Duration = Duration::from_secs(1);

pub struct Space {
    /// Bytes the store may hold before writes are refused.
    limit: u64,
    /// Bytes the store holds: measured by each collection and heartbeat,
    /// plus what was admitted since.
    used: AtomicU64,
    /// Wakes the collector when a write was refused.
    wanted: tokio::sync::Notify,
}

impl Space {
    pub fn new(capacity: u64, used: u64) -> Space {
        Space {
            limit: (capacity as f64 * FULL_RATIO) as u64,
            used: AtomicU64::new(used),
            wanted: tokio::sync::Notify::new(),
        }
    }

    /// Takes `bytes` of the budget for a write, or refuses it when the
    /// store would pass its full ratio (and asks for a collection).
    pub fn admit(&self, bytes: u64) -> Result<(), OsdError> {
        let before = self.used.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
            self.wanted.notify_one();
            return Err(OsdError::NoSpace);
        }
        Ok(())
    }

    /// Records what the store measured it holds.
    pub fn measured(&self, used: u64) {
        self.used.store(used, Ordering::Relaxed);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

/// Collects garbage every [`GC_INTERVAL`], or sooner when a write was
/// refused for space, and measures the store afterwards.
pub async fn collect_garbage_loop(store: Arc<ObjectStore>, space: Arc<Space>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(GC_INTERVAL) => {}
            _ = space.wanted.notified() => {}
        }
        let store = store.clone();
        let collected = tokio::task::spawn_blocking(move || {
            store.collect_garbage()?;
            store.used_bytes()
        })
        .await;
        match collected {
            Ok(Ok(used)) => space.measured(used),
            Ok(Err(error)) => tracing::warn!(%error, "collecting garbage"),
            Err(error) => tracing::warn!(%error, "collecting garbage"),
        }
        tokio::time::sleep(GC_MIN_GAP).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_past_the_full_ratio_are_refused_and_space_comes_back() {
        let space = Space::new(1000, 0);
        space.admit(900).unwrap();
        assert_eq!(space.admit(100), Err(OsdError::NoSpace));
        assert_eq!(space.used(), 900, "a refused write takes nothing");
        space.admit(50).unwrap();
        space.measured(100);
        space.admit(800).unwrap();
    }
}
