//! Creates this client answers itself. In a directory it holds Exclusive
//! (one it made, with no default ACL), a new regular file takes an inode
//! number the session reserved, its attributes are worked out here by the
//! MDS's own rules (`aspen_proto::perm`), and the create goes to the MDS
//! in the background ([`NsOp::CreateAs`]). Every other request this client
//! makes to the MDS waits until the creates before it are applied
//! ([`Vfs::settled`]); so does the answer to a revocation, so no other
//! client sees the directory without them.
//!
//! A create made here is as durable as buffered data: acknowledged to the
//! caller at once, on the MDS a moment later, lost if the client dies
//! first (fsync on the directory or file waits for it).

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use aspen_proto::caps::{CapMode, CapOp};
use aspen_proto::fs::{Attr, Caller, FileType, Timestamp, mode, open_flags, validate_name};
use aspen_proto::mds::{NsOp, NsReply};
use aspen_proto::{Errno, InodeId};
use tokio::sync::Notify;

use super::{Vfs, lock};
use crate::caps::Found;

/// Inode numbers asked for at once.
pub const RESERVE_BATCH: u32 = aspen_proto::caps::MAX_RESERVE;
/// Below this many unused reserved numbers, more are asked for.
pub const RESERVE_LOW: usize = 512;
/// Creates sent and not yet answered, at most; past it creates go to the
/// MDS in the caller's time.
pub const MAX_CREATES_IN_FLIGHT: usize = 256;

/// The state of local creates.
#[derive(Default)]
pub(super) struct LocalCreates {
    /// Reserved (inode, generation) pairs not used yet, and the session
    /// generation they belong to.
    reserved: Mutex<(u64, VecDeque<(InodeId, u64)>)>,
    refilling: AtomicBool,
    /// Directories this client made and may create in on its own.
    dirs: Mutex<HashSet<InodeId>>,
    in_flight: Mutex<InFlight>,
    settled: Notify,
}

/// Creates sent and not yet answered, by ticket (in the order they began).
#[derive(Default)]
struct InFlight {
    next: u64,
    open: BTreeSet<u64>,
}

impl LocalCreates {
    /// A directory this client made (and holds Exclusive on).
    pub(super) fn allow(&self, dir: InodeId) {
        lock(&self.dirs).insert(dir);
    }

    /// Creates in `dir` go to the MDS again (its ACLs may change what a
    /// new file inherits).
    pub(super) fn disallow(&self, dir: InodeId) {
        lock(&self.dirs).remove(&dir);
    }

    fn allowed(&self, dir: InodeId) -> bool {
        lock(&self.dirs).contains(&dir)
    }

    /// The unused numbers of session `generation` (an older session's
    /// are void).
    fn reserved(&self, generation: u64) -> MutexGuard<'_, (u64, VecDeque<(InodeId, u64)>)> {
        let mut reserved = lock(&self.reserved);
        if reserved.0 != generation {
            *reserved = (generation, VecDeque::new());
        }
        reserved
    }

    fn reserved_low(&self) -> bool {
        lock(&self.reserved).1.len() < RESERVE_LOW
    }

    /// Forgets everything (the session that reserved and allowed is gone).
    pub(super) fn clear(&self) {
        *lock(&self.reserved) = (0, VecDeque::new());
        lock(&self.dirs).clear();
    }

    /// A ticket for a create about to be sent, unless too many are.
    fn begin(&self) -> Option<u64> {
        let mut in_flight = lock(&self.in_flight);
        if in_flight.open.len() >= MAX_CREATES_IN_FLIGHT {
            return None;
        }
        let ticket = in_flight.next;
        in_flight.next += 1;
        in_flight.open.insert(ticket);
        Some(ticket)
    }

    fn end(&self, ticket: u64) {
        lock(&self.in_flight).open.remove(&ticket);
        self.settled.notify_waiters();
    }

    /// Whether every create begun before ticket `before` is answered.
    fn answered_before(&self, before: u64) -> bool {
        lock(&self.in_flight)
            .open
            .first()
            .is_none_or(|oldest| *oldest >= before)
    }
}

impl Vfs {
    /// Returns once every create answered here before the call is applied
    /// at the MDS (later ones do not hold it up).
    pub(super) async fn settled(&self) {
        let before = lock(&self.creates.in_flight).next;
        loop {
            let settled = self.creates.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if self.creates.answered_before(before) {
                return;
            }
            settled.await;
        }
    }

    /// Creates regular file `name` in `parent` here, if this client holds
    /// Exclusive on `parent` (and made it), knows `name` is free, and has
    /// an inode number reserved; the handle and attributes, or `None` for
    /// the MDS to decide. A refusal by the permission rules is the answer.
    pub(super) fn create_here(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
        (mode_bits, umask, flags): (u32, u32, u32),
    ) -> Result<Option<(u64, Attr)>, Errno> {
        if !self.creates.allowed(parent) || validate_name(name).is_err() {
            return Ok(None);
        }
        self.refill_reserved();
        let mut cache = self.cache();
        let exclusive = cache
            .cap(parent)
            .is_some_and(|held| held.mode == CapMode::Exclusive);
        let absent = matches!(cache.lookup(parent, name), Some(Found::Absent));
        if !exclusive || cache.revoking(parent) || !absent {
            return Ok(None);
        }
        let Some(dir) = cache.attr(parent) else {
            return Ok(None);
        };
        aspen_proto::perm::check_search(&dir, caller)?;
        aspen_proto::perm::check_modify_dir(&dir, caller)?;
        if dir.nlink == 0 {
            return Ok(None);
        }
        let Some(ticket) = self.creates.begin() else {
            return Ok(None);
        };
        let reserved = self
            .creates
            .reserved(self.session.generation())
            .1
            .pop_front();
        let Some((ino, generation)) = reserved else {
            self.creates.end(ticket);
            return Ok(None);
        };
        let now = Timestamp::now();
        let requested = mode_bits & mode::PERMISSIONS & !umask;
        let (uid, gid, perm) =
            aspen_proto::perm::new_inode_owner(&dir, caller, FileType::Regular, requested);
        let attr = Attr {
            ino,
            kind: FileType::Regular,
            perm,
            nlink: 1,
            uid,
            gid,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            generation,
            layout: dir.layout,
            acl: None,
        };
        cache.note_created(parent, name, &attr);
        let fh = self.register(&attr, None, flags & !open_flags::O_TRUNC);
        drop(cache);
        let op = NsOp::CreateAs {
            parent,
            name: name.to_vec(),
            mode: mode_bits,
            umask,
            ino,
            now,
        };
        if let Some(vfs) = self.me.upgrade() {
            let (caller, name) = (caller.clone(), name.to_vec());
            tokio::spawn(async move {
                vfs.send_create(&caller, op, (parent, &name, ino, now))
                    .await;
                vfs.creates.end(ticket);
            });
        } else {
            self.creates.end(ticket);
        }
        Ok(Some((fh, attr)))
    }

    /// Sends `op`, the create of `name` in `parent` as `ino` made here at
    /// `now`; if the MDS refuses it (it should not), the name and inode are
    /// forgotten here too.
    async fn send_create(
        &self,
        caller: &Caller,
        op: NsOp,
        (parent, name, ino, now): (InodeId, &[u8], InodeId, Timestamp),
    ) {
        let refused = match self.session.cap(caller, CapOp::Mutate(op)).await {
            Ok(reply) => {
                self.objects.require_epoch(reply.barrier);
                let mut cache = self.cache();
                cache.absorb(&reply);
                cache.touch_at_least(parent, now);
                reply.result.err()
            }
            Err(errno) => Some(errno),
        };
        if let Some(errno) = refused {
            tracing::warn!("the MDS refused inode {ino}, created here in {parent}: {errno}");
            let mut cache = self.cache();
            cache.forget_entry(parent, name);
            cache.release(ino);
        }
    }

    /// Asks for more inode numbers in the background when few are left.
    fn refill_reserved(&self) {
        if !self.creates.reserved_low() || self.creates.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(vfs) = self.me.upgrade() else {
            self.creates.refilling.store(false, Ordering::Release);
            return;
        };
        tokio::spawn(async move {
            let generation = vfs.session.generation();
            let op = CapOp::Reserve {
                count: RESERVE_BATCH,
            };
            // Nothing waits on the order of a reservation: it goes past
            // the creates still on their way.
            match vfs.session.cap(&Caller::root(), op).await {
                Ok(reply) => match reply.result {
                    Ok(NsReply::Reserved(inodes)) => {
                        vfs.creates.reserved(generation).1.extend(inodes)
                    }
                    other => tracing::warn!("reserving inode numbers: {other:?}"),
                },
                Err(errno) => tracing::warn!("reserving inode numbers: {errno}"),
            }
            vfs.creates.refilling.store(false, Ordering::Release);
        });
    }
}
