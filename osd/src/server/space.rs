//! The OSD's space budget: the bytes its store holds against the capacity
//! it registered with, the refusal of writes that would pass the full
//! ratio (`NoSpace`, ENOSPC at a mount), and the garbage collector that
//! gives space back after deletes and overwrites, on a timer and at once
//! when a write was refused.
//!
//! Collection copies live chunks out of mostly dead segments, which costs
//! the disk and holds the store while each step commits. Like a
//! log-structured filesystem's cleaner (F2FS's background GC), it works
//! only while the OSD serves no requests, unless space is short: past
//! [`GC_BUSY_ABOVE`] of the budget, or when a write was refused. It starts
//! as soon as the OSD goes idle after serving requests, so the garbage
//! they left is gone before the next burst.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
/// The collector waits until the OSD has served no object request (a
/// client's or a primary's) for this long...
pub const GC_IDLE_AFTER: Duration = Duration::from_secs(1);
/// ...unless the store holds more than this share of its budget: then it
/// works (at [`GC_DUTY`]) while requests come, so a busy OSD's garbage
/// never reaches the full ratio.
pub const GC_BUSY_ABOVE: f64 = 0.75;

pub struct Space {
    /// Bytes the store may hold before writes are refused.
    limit: u64,
    /// Bytes the store holds: measured by each collection and heartbeat,
    /// plus what was admitted since.
    used: AtomicU64,
    /// Wakes the collector when a write was refused.
    wanted: tokio::sync::Notify,
    /// When the OSD last served an object request, in milliseconds since
    /// `started`.
    served_ms: AtomicU64,
    started: Instant,
}

impl Space {
    pub fn new(capacity: u64, used: u64) -> Space {
        Space {
            limit: (capacity as f64 * FULL_RATIO) as u64,
            used: AtomicU64::new(used),
            wanted: tokio::sync::Notify::new(),
            served_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Records that an object request is being served (the collector
    /// waits for a pause in them, see [`GC_IDLE_AFTER`]).
    pub fn serving(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.served_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// When the OSD last served an object request (milliseconds on this
    /// space's own clock).
    fn served_ms(&self) -> u64 {
        self.served_ms.load(Ordering::Relaxed)
    }

    /// How long until the OSD counts as idle: zero when it is.
    fn until_idle(&self) -> Duration {
        let served = Duration::from_millis(self.served_ms());
        (served + GC_IDLE_AFTER).saturating_sub(self.started.elapsed())
    }

    /// Space is short enough that the collector does not wait for idleness.
    fn pressed(&self) -> bool {
        self.used() as f64 > self.limit as f64 * GC_BUSY_ABOVE
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

/// Collects garbage (see [`next_collection`] for when) and measures the
/// store afterwards.
pub async fn collect_garbage_loop(store: Arc<ObjectStore>, space: Arc<Space>) {
    let mut served_before = space.served_ms();
    loop {
        let urgent = next_collection(&space, served_before).await;
        served_before = space.served_ms();
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

/// Waits until the next collection is due: once the OSD is idle after
/// serving requests since `served_before` (their deletes and overwrites
/// left garbage), or [`GC_INTERVAL`] after the last one, or at once when a
/// write was refused for space (then true: urgent).
async fn next_collection(space: &Space, served_before: u64) -> bool {
    let due = tokio::time::Instant::now() + GC_INTERVAL;
    loop {
        if rest_or_wanted(space, GC_IDLE_AFTER).await {
            return true;
        }
        let served_since = space.served_ms() > served_before;
        if tokio::time::Instant::now() >= due || served_since && space.until_idle().is_zero() {
            return false;
        }
    }
}

/// Runs collection steps until none is left, each once the OSD is idle
/// (see [`GC_IDLE_AFTER`]) and resting after it (see [`GC_DUTY`]), unless
/// the collection is `urgent` or becomes so.
async fn collect(
    store: &Arc<ObjectStore>,
    space: &Space,
    mut urgent: bool,
) -> Result<(), StoreError> {
    loop {
        if !urgent {
            urgent = wait_until_idle(space).await;
        }
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
            urgent = rest_or_wanted(space, rest).await;
        }
    }
}

/// Waits until the OSD is idle or space is short; true when a refused
/// write made the collection urgent meanwhile.
async fn wait_until_idle(space: &Space) -> bool {
    loop {
        let wait = space.until_idle();
        if wait.is_zero() || space.pressed() {
            return false;
        }
        if rest_or_wanted(space, wait).await {
            return true;
        }
    }
}

/// Sleeps for `time`; true, sooner, when a refused write wants space.
async fn rest_or_wanted(space: &Space, time: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(time) => false,
        _ = space.wanted.notified() => true,
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

    #[tokio::test]
    async fn the_collector_waits_for_a_pause_in_requests_unless_space_is_short() {
        let roomy = Space::new(1000, 0);
        roomy.serving();
        assert!(
            roomy.until_idle() > GC_IDLE_AFTER / 2,
            "busy right after a request"
        );
        let started = Instant::now();
        assert!(!wait_until_idle(&roomy).await);
        assert!(
            started.elapsed() >= GC_IDLE_AFTER / 2,
            "it waited for the pause"
        );
        assert!(roomy.until_idle().is_zero());

        let short = Space::new(1000, 800);
        short.serving();
        let started = Instant::now();
        assert!(!wait_until_idle(&short).await);
        assert!(
            started.elapsed() < GC_IDLE_AFTER / 2,
            "short of space, it did not wait"
        );
    }

    #[tokio::test]
    async fn a_collection_follows_a_burst_of_requests_once_they_pause() {
        let space = Space::new(1000, 0);
        let served_before = space.served_ms();
        tokio::time::sleep(Duration::from_millis(5)).await;
        space.serving();
        let started = Instant::now();
        assert!(!next_collection(&space, served_before).await);
        let waited = started.elapsed();
        assert!(
            waited >= GC_IDLE_AFTER && waited < GC_INTERVAL / 2,
            "due {waited:?} after the last request"
        );
        let quiet = tokio::time::timeout(
            GC_IDLE_AFTER * 3,
            next_collection(&space, space.served_ms()),
        );
        assert!(
            quiet.await.is_err(),
            "nothing served since: not due before the interval"
        );
    }

    #[tokio::test]
    async fn a_refused_write_ends_the_wait_for_a_pause() {
        let space = Arc::new(Space::new(1000, 0));
        space.serving();
        let waiting = tokio::spawn({
            let space = space.clone();
            async move { wait_until_idle(&space).await }
        });
        tokio::task::yield_now().await;
        space.admit(2000).unwrap_err();
        assert!(waiting.await.unwrap(), "the wait ended as urgent");
        assert!(!space.until_idle().is_zero(), "before the pause");
    }
}
