//! Namespace changes this client answers itself, and what they share.
//! In a directory it made and holds Exclusive on (with no default ACL),
//! creates ([`creates`](super::creates)) and unlinks
//! ([`unlinks`](super::unlinks)) of regular files are checked here by the
//! MDS's own rules (`aspen_proto::perm`), answered at once, and sent to
//! the MDS in the background.
//!
//! Ordering: each such change holds a ticket until the MDS answers it.
//! Every other request this client makes to the MDS, and every answer to
//! a revocation, waits for the changes begun before it ([`Vfs::settled`]),
//! so no other client sees the directory without them. Two changes of one
//! name are never in flight at once: the second goes to the MDS in the
//! caller's time, after the first is applied.
//!
//! A change made here is as durable as buffered data: acknowledged to the
//! caller at once, on the MDS a moment later, lost if the client dies
//! first (fsync on the directory or file waits for it).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, MutexGuard};

use aspen_proto::caps::{CapMode, CapReply};
use aspen_proto::fs::{Caller, Timestamp};
use aspen_proto::mds::NsOp;
use aspen_proto::{Errno, InodeId};
use tokio::sync::Notify;

use super::behind::Behind;
use super::{Vfs, lock};

/// Inode numbers asked for at once.
pub const RESERVE_BATCH: u32 = aspen_proto::caps::MAX_RESERVE;
/// Below this many unused reserved numbers, more are asked for.
pub const RESERVE_LOW: usize = 512;
/// Local changes sent and not yet answered, at most; past it changes go
/// to the MDS in the caller's time.
pub const MAX_LOCAL_IN_FLIGHT: usize = 256;

/// The state of local namespace changes.
#[derive(Default)]
pub(super) struct LocalOps {
    /// Reserved (inode, generation) pairs not used yet, and the session
    /// generation they belong to.
    reserved: Mutex<(u64, VecDeque<(InodeId, u64)>)>,
    pub(super) refilling: AtomicBool,
    /// Directories this client made and may change on its own.
    dirs: Mutex<HashSet<InodeId>>,
    in_flight: Mutex<InFlight>,
    settled: Notify,
}

/// Changes sent and not yet answered, by ticket (in the order they began),
/// with the entry each changes.
#[derive(Default)]
struct InFlight {
    next: u64,
    open: BTreeMap<u64, (InodeId, Vec<u8>)>,
}

impl LocalOps {
    /// A directory this client made (and holds Exclusive on).
    pub(super) fn allow(&self, dir: InodeId) {
        lock(&self.dirs).insert(dir);
    }

    /// Changes in `dir` go to the MDS again (its ACLs may change what a
    /// new file inherits).
    pub(super) fn disallow(&self, dir: InodeId) {
        lock(&self.dirs).remove(&dir);
    }

    pub(super) fn allowed(&self, dir: InodeId) -> bool {
        lock(&self.dirs).contains(&dir)
    }

    /// The unused numbers of session `generation` (an older session's
    /// are void).
    pub(super) fn reserved(
        &self,
        generation: u64,
    ) -> MutexGuard<'_, (u64, VecDeque<(InodeId, u64)>)> {
        let mut reserved = lock(&self.reserved);
        if reserved.0 != generation {
            *reserved = (generation, VecDeque::new());
        }
        reserved
    }

    pub(super) fn reserved_low(&self) -> bool {
        lock(&self.reserved).1.len() < RESERVE_LOW
    }

    /// Forgets everything (the session that reserved and allowed is gone).
    pub(super) fn clear(&self) {
        *lock(&self.reserved) = (0, VecDeque::new());
        lock(&self.dirs).clear();
    }

    /// A ticket for a change of `name` in `parent` about to be sent,
    /// unless too many are, or one of the same name is.
    pub(super) fn begin(&self, parent: InodeId, name: &[u8]) -> Option<u64> {
        let mut in_flight = lock(&self.in_flight);
        let busy = in_flight
            .open
            .values()
            .any(|(dir, entry)| *dir == parent && entry == name);
        if busy || in_flight.open.len() >= MAX_LOCAL_IN_FLIGHT {
            return None;
        }
        let ticket = in_flight.next;
        in_flight.next += 1;
        in_flight.open.insert(ticket, (parent, name.to_vec()));
        Some(ticket)
    }

    pub(super) fn end(&self, ticket: u64) {
        lock(&self.in_flight).open.remove(&ticket);
        self.settled.notify_waiters();
    }

    /// Whether every change begun before ticket `before` is answered.
    fn answered_before(&self, before: u64) -> bool {
        lock(&self.in_flight)
            .open
            .first_key_value()
            .is_none_or(|(oldest, _)| *oldest >= before)
    }
}

impl Vfs {
    /// Returns once every change answered here before the call is applied
    /// at the MDS (later ones do not hold it up).
    pub(super) async fn settled(&self) {
        let before = lock(&self.local.in_flight).next;
        loop {
            let settled = self.local.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.local.answered_before(before) {
                return;
            }
            settled.await;
        }
    }

    /// Sends `op`, a change of `parent` this client answered itself at
    /// `now`, to the MDS in the background (with others:
    /// [`behind`](super::behind)), and ends `ticket` once it is answered.
    /// The cache takes in the reply first; then `settle` gets the reply if
    /// the MDS applied the change, or why it did not.
    pub(super) fn send_behind(
        &self,
        caller: &Caller,
        ticket: u64,
        (op, parent, now): (NsOp, InodeId, Timestamp),
        settle: impl FnOnce(&Vfs, Result<&CapReply, Errno>) + Send + 'static,
    ) {
        self.queue_behind(Behind {
            caller: caller.clone(),
            ticket,
            op,
            parent,
            now,
            settle: Box::new(settle),
        });
    }

    /// Whether this client may change `parent` on its own now: it made
    /// it, holds Exclusive on it, and no revocation of it is under way.
    /// The caller holds the cache lock across the check and the change.
    pub(super) fn may_change_here(&self, cache: &crate::caps::CapCache, parent: InodeId) -> bool {
        self.local.allowed(parent)
            && cache
                .cap(parent)
                .is_some_and(|held| held.mode == CapMode::Exclusive)
            && !cache.revoking(parent)
    }
}
