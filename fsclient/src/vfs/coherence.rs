//! Keeping the cache coherent: the long poll that receives the MDS's
//! revocations and carries each out (buffered writes sent, the kernel's
//! cached data dropped, then the acknowledgement with the size written),
//! the housekeeping that writes back on a timer and gives back caps the
//! cache has no room for, and the recovery when the MDS ends the session
//! (evicted: everything cached or buffered is void, a new session starts).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use aspen_proto::caps::{CapMode, CapOp, Flushed, MAX_RELEASE, Revoke};
use aspen_proto::fs::{Caller, Timestamp};
use aspen_proto::{Errno, InodeId};

use super::files::{Report, WRITEBACK_INTERVAL};
use super::waiting;
use super::{Vfs, lock};

/// How often unused caps are given back when the cache is over its size.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(5);
/// Pause after a failed poll for revocations.
pub const POLL_RETRY: Duration = Duration::from_millis(500);

/// Starts the background work of a new VFS.
pub(super) fn start(vfs: &Arc<Vfs>) {
    tokio::spawn(follow_revocations(Arc::downgrade(vfs)));
    tokio::spawn(recover_lost_sessions(Arc::downgrade(vfs)));
    tokio::spawn(housekeeping(Arc::downgrade(vfs)));
}

fn closing(vfs: &Vfs) -> bool {
    vfs.closing.load(Ordering::Acquire)
}

async fn follow_revocations(vfs: Weak<Vfs>) {
    let (mut generation, mut instance, mut after) = (0, 0, 0);
    loop {
        let Some(vfs) = vfs.upgrade() else { return };
        if closing(&vfs) {
            return;
        }
        if vfs.session.generation() != generation {
            (generation, instance, after) = (vfs.session.generation(), 0, 0);
        }
        let events = match vfs.session.events(instance, after).await {
            Ok(events) => events,
            Err(_) => {
                drop(vfs);
                tokio::time::sleep(POLL_RETRY).await;
                continue;
            }
        };
        if events.ended {
            drop(vfs);
            tokio::time::sleep(POLL_RETRY).await;
            continue;
        }
        if events.instance != instance {
            (instance, after) = (events.instance, 0);
        }
        for (id, revoke) in events.revokes {
            after = after.max(id);
            vfs.start_revoke(revoke);
        }
    }
}

async fn recover_lost_sessions(vfs: Weak<Vfs>) {
    let Some(mut lost) = vfs.upgrade().map(|v| v.session.watch_lost()) else {
        return;
    };
    while lost.changed().await.is_ok() {
        let generation = *lost.borrow_and_update();
        let Some(vfs) = vfs.upgrade() else { return };
        vfs.recover(generation).await;
    }
}

async fn housekeeping(vfs: Weak<Vfs>) {
    let mut ticks: u64 = 0;
    loop {
        tokio::time::sleep(WRITEBACK_INTERVAL).await;
        let Some(vfs) = vfs.upgrade() else { return };
        if closing(&vfs) {
            return;
        }
        // What was written within the interval may be written again
        // soon: it waits for the next round.
        for ino in vfs.written_inodes(WRITEBACK_INTERVAL) {
            vfs.schedule_flush(ino, Report::Later);
        }
        let cutoff = Timestamp::now().sec - WRITEBACK_INTERVAL.as_secs() as i64;
        let stale = vfs.cache().unreported_inodes(Timestamp::new(cutoff, 0));
        for ino in stale {
            vfs.schedule_flush(ino, Report::Now);
        }
        ticks += 1;
        if ticks.is_multiple_of(TRIM_INTERVAL.as_secs() / WRITEBACK_INTERVAL.as_secs().max(1)) {
            vfs.trim().await;
        }
    }
}

impl Vfs {
    /// Carries out `revoke` in the background, once at a time (a new MDS
    /// leader delivers again those still waiting).
    fn start_revoke(&self, revoke: Revoke) {
        let key = (revoke.ino, revoke.seq, revoke.to);
        if !lock(&self.revoking).insert(key) {
            return;
        }
        let Some(vfs) = self.me.upgrade() else { return };
        tokio::spawn(async move {
            vfs.carry_out(revoke).await;
            lock(&vfs.revoking).remove(&key);
        });
    }

    /// Gives up what `revoke` asks: buffered writes go to the OSDs, the
    /// kernel forgets the file's data if the cap goes, and the MDS gets the
    /// acknowledgement with the size and mtime written here. Until then,
    /// reads and writes in flight finish under the old cap (whoever waits
    /// for it is held back by the MDS). The cap goes before the ack is
    /// sent. Until the ack is answered the inode's ack turn is held (a
    /// `Want` or `GetAttr` of this client's waits for it), from the start
    /// when the kernel's pages go (a read arriving meanwhile waits for it
    /// too: its page could outlive the page drop). And when the ack
    /// carries this client's writes, the cache shows no cap or attributes
    /// of it: the MDS may answer a request that overtook the ack with the
    /// size from before it.
    async fn carry_out(&self, revoke: Revoke) {
        let revoking = self.cache().begin_revoke(&revoke);
        let drops_pages = revoking.drops_pages();
        let mut acking = match drops_pages {
            true => Some(self.ack_turns.take(revoke.ino).await),
            false => None,
        };
        let held = revoking.held;
        let was_exclusive = held.is_some_and(|held| held.mode == CapMode::Exclusive)
            && revoke.to != Some(CapMode::Exclusive);
        if was_exclusive {
            self.drain_writes(revoke.ino).await;
        }
        if drops_pages {
            self.drop_pages_for_revoke(revoke.ino).await;
        }
        // From the last write-back to the cap's change no write may start:
        // one that did would be missing from the size the ack carries.
        let quiet = if was_exclusive {
            self.io_alone(revoke.ino).await
        } else {
            None
        };
        if was_exclusive {
            // Writes that arrived meanwhile went straight to the OSDs.
            self.write_back_for_revoke(revoke.ino).await;
        }
        let unreported = if was_exclusive {
            self.cache().unreported(revoke.ino)
        } else {
            None
        };
        // Opens made under the cap keep the file once it goes.
        let pin = drops_pages && self.needs_pin(revoke.ino);
        if acking.is_none() {
            acking = Some(self.ack_turns.take(revoke.ino).await);
        }
        let acking_writes = self.cache().finish_revoke(revoking);
        let flushed = unreported.as_ref().map(|written| Flushed {
            size: written.size,
            mtime: written.mtime,
        });
        let caller = unreported
            .as_ref()
            .map_or_else(Caller::root, |written| written.writer.clone());
        let ack = CapOp::Ack {
            ino: revoke.ino,
            seq: revoke.seq,
            to: revoke.to,
            flushed,
            pin,
        };
        tracing::debug!(?ack, "acking");
        match self.cap_call(&caller, ack).await {
            Ok(reply) if reply.result.is_ok() => {
                tracing::debug!(?revoke, "ack answered");
                if let Some(written) = &unreported {
                    self.cache().reported(revoke.ino, written);
                }
                if let Ok(aspen_proto::mds::NsReply::Opened { handle, .. }) = reply.result {
                    self.keep_pin(revoke.ino, handle);
                }
            }
            Ok(reply) => tracing::warn!(?revoke, "the MDS refused an ack: {:?}", reply.result),
            Err(errno) => tracing::warn!(?revoke, "acknowledging a revocation: {errno}"),
        }
        if acking_writes {
            self.cache().acked(revoke.ino);
        }
        drop(acking);
        drop(quiet);
    }

    /// Waits for writes in flight on `ino`, then sends its buffered bytes.
    async fn drain_writes(&self, ino: InodeId) {
        drop(self.io_alone(ino).await);
        self.write_back_for_revoke(ino).await;
    }

    async fn write_back_for_revoke(&self, ino: InodeId) {
        if let Err(errno) = self.flush_data(ino).await {
            tracing::warn!("writing back inode {ino} for a revocation: {errno}");
        }
    }

    /// Makes the kernel drop its cached pages and attributes of `ino`.
    pub(super) async fn invalidate_data(&self, ino: InodeId) {
        let _ = self.drop_everything(ino).await;
    }

    /// [`Vfs::invalidate_data`] in the background, for a cap dropped
    /// where no one waits.
    pub(super) fn invalidate_later(&self, ino: InodeId) {
        drop(self.drop_everything(ino));
    }

    /// Has the kernel drop all it caches of `ino`, on a thread of its own.
    fn drop_everything(&self, ino: InodeId) -> tokio::task::JoinHandle<()> {
        let drop_range = self.drop_range(ino);
        tokio::task::spawn_blocking(move || drop_range(0..u64::MAX))
    }

    /// Has the kernel drop `ino`'s pages for a revocation, but for those
    /// this client's writes waiting for a cap hold ([`waiting::drop_pages`]).
    async fn drop_pages_for_revoke(&self, ino: InodeId) {
        waiting::drop_pages(&self.waiting_requests, ino, &self.drop_range(ino)).await;
    }

    /// Has the kernel drop its attributes of `ino` and its pages over a
    /// range of bytes (blocking while it waits for locked pages).
    fn drop_range(&self, ino: InodeId) -> waiting::DropRange {
        let vfs = self.me.clone();
        Arc::new(move |range| {
            if let Some(invalidate) = vfs.upgrade().as_ref().and_then(|vfs| vfs.invalidator.get()) {
                invalidate(ino, range);
            }
        })
    }

    /// Gives back the caps of the least recently used inodes beyond the
    /// cache's size.
    async fn trim(&self) {
        // The cache lock before the files lock, as everywhere: and one
        // critical section, so no open made here meanwhile loses its cap.
        let idle = {
            let mut cache = self.cache();
            let files = lock(&self.files);
            let idle = cache.trim_candidates(|ino| files.holds(ino));
            for (ino, _) in &idle {
                cache.release(*ino);
            }
            idle
        };
        if idle.is_empty() {
            return;
        }
        for (ino, _) in &idle {
            self.invalidate_data(*ino).await;
        }
        self.cache().forget_uncapped();
        for caps in idle.chunks(MAX_RELEASE) {
            let release = CapOp::Release {
                caps: caps.to_vec(),
            };
            if let Err(errno) = self.cap_call(&Caller::root(), release).await {
                tracing::warn!("giving back caps: {errno}");
            }
        }
    }

    /// The MDS ended session `generation` (evicted or expired): every cap,
    /// buffered write, handle and lock of it is void. Starts a new one.
    pub(super) async fn recover(&self, generation: u64) {
        let _one = self.recovery.lock().await;
        if closing(self) || self.session.generation() != generation {
            return;
        }
        tracing::error!(
            session = self.session.id().0,
            "the MDS ended this client's session: its cached state and unwritten data are lost"
        );
        self.local.clear();
        let cached = self.cache().clear();
        for ino in cached {
            self.invalidate_data(ino).await;
        }
        let buffered: Vec<InodeId> = lock(&self.files).inodes.keys().copied().collect();
        for ino in buffered {
            // Under the file's I/O lock, so no write in progress buffers
            // its bytes after they were dropped.
            let _quiet = self.io_alone(ino).await;
            self.drop_buffers(ino, Some(Errno::EIO));
        }
        lock(&self.lockers).clear();
        while !closing(self) {
            match self.session.reopen().await {
                Ok(session) => {
                    self.objects.set_session(session.0);
                    tracing::info!(session = session.0, "opened a new session");
                    return;
                }
                Err(error) => tracing::error!("opening a new session: {error}"),
            }
            tokio::time::sleep(POLL_RETRY).await;
        }
    }
}
