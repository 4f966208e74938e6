//! The OSD's space budget: the bytes its store holds against the capacity
//! it registered with, the refusal of writes that would pass the full
//! ratio (`NoSpace`, ENOSPC at a mount), and the garbage collector that
//! gives space back after deletes, on a timer and at once when a write was
//! refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aspen_proto::osd::OsdError;

use crate::store::{ObjectStore, StoreError};

/// The share of its capacity an OSD fills before it refuses writes (as
/// Ceph's `mon_osd_full_ratio`), so deletes and recovery still have room.
pub const FULL_RATIO: f64 = 0.95;
/// How often the garbage collector runs when nothing asks for it sooner.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);
/// The least time between two collections, however often writes are
/// refused.
pub const GC_MIN_GAP: Duration = Duration::from_secs(1);
/// The share of time the collector works when no write is waiting for
/// space: after a step that took `t` it rests `t * (1 / GC_DUTY - 1)`, so
/// the purge of a large delete leaves most of the machine to reads and
/// writes (as Ceph's `osd_delete_sleep`). A refused write lifts the rest.
pub const GC_DUTY: f64 = 0.25;

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
        let urgent = tokio::select! {
            _ = tokio::time::sleep(GC_INTERVAL) => false,
            _ = space.wanted.notified() => true,
        };
        if let Err(error) = collect(&store, &space, urgent).await {
            tracing::warn!(%error, "collecting garbage");
        }
        let measuring = store.clone();
        match tokio::task::spawn_blocking(move || measuring.used_bytes()).await {
            Ok(Ok(used)) => space.measured(used),
            Ok(Err(error)) => tracing::warn!(%error, "measuring the store"),
            Err(error) => tracing::warn!(%error, "measuring the store"),
        }
        tokio::time::sleep(GC_MIN_GAP).await;
    }
}

/// Runs collection steps until none is left, resting between them (see
/// [`GC_DUTY`]) unless the collection is `urgent` or becomes so.
async fn collect(
    store: &Arc<ObjectStore>,
    space: &Space,
    mut urgent: bool,
) -> Result<(), StoreError> {
    loop {
        let started = tokio::time::Instant::now();
        let stepping = store.clone();
        let step = tokio::task::spawn_blocking(move || stepping.collect_garbage_step())
            .await
            .map_err(|e| StoreError::Io(e.to_string()))??;
        if step.done {
            return Ok(());
        }
        if !urgent {
            let rest = started.elapsed().mul_f64(1.0 / GC_DUTY - 1.0);
            urgent = tokio::select! {
                _ = tokio::time::sleep(rest) => false,
                _ = space.wanted.notified() => true,
            };
        }
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
