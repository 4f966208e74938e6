//! Advisory locks: fcntl byte-range locks and flock locks, held at the MDS
//! (so they hold across clients and survive a leader change), and released
//! when their owner closes the file: a process at its close of any
//! descriptor of the file (fcntl), an open file description at its last
//! close (flock). The FUSE kernel module sends a flock as a whole-file
//! lock owned by the open file description, without a flag this side can
//! read, so both go to the MDS as POSIX locks: as on NFS, a flock and an
//! fcntl lock on one file conflict.

use aspen_proto::lock::{Lock, LockFlavor, LockKind, LockOwner, LockRequest};
use aspen_proto::mds::{MdsRequest, MdsResponse};
use aspen_proto::{Errno, InodeId};

use super::{Vfs, lock};
use crate::session::unexpected;

impl Vfs {
    fn lock_request(
        &self,
        owner: u64,
        pid: u32,
        kind: Option<LockKind>,
        (start, end): (u64, u64),
    ) -> LockRequest {
        LockRequest {
            owner: LockOwner {
                session: self.session.id().0,
                owner,
            },
            pid,
            flavor: LockFlavor::Posix,
            kind,
            start,
            end,
        }
    }

    /// F_GETLK: a lock of another owner that keeps `kind` on bytes
    /// `start..=end` from `owner`, if any.
    pub async fn getlk(
        &self,
        ino: InodeId,
        (owner, pid): (u64, u32),
        kind: LockKind,
        range: (u64, u64),
    ) -> Result<Option<Lock>, Errno> {
        let request = self.lock_request(owner, pid, Some(kind), range);
        let session = self.session.id();
        match self
            .ask(MdsRequest::GetLock {
                session,
                ino,
                request,
            })
            .await?
        {
            MdsResponse::Lock(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    /// F_SETLK (`wait: false`) and F_SETLKW: takes, converts (`Some`) or
    /// drops (`None`) `owner`'s POSIX lock on bytes `start..=end`. A
    /// waiting request is woken by the MDS when a lock it waits for goes;
    /// it fails with EINTR once `interrupted` says the caller has a signal
    /// to take (checked each time the MDS's wait runs out, when nothing is
    /// pending there that could still grant it).
    pub async fn setlk(
        &self,
        ino: InodeId,
        (owner, pid): (u64, u32),
        kind: Option<LockKind>,
        range: (u64, u64),
        wait: bool,
        interrupted: impl Fn() -> bool,
    ) -> Result<(), Errno> {
        let request = self.lock_request(owner, pid, kind, range);
        let session = self.session.id();
        let ask = MdsRequest::SetLock {
            session,
            ino,
            request,
            wait,
        };
        loop {
            match self.ask(ask.clone()).await? {
                // The MDS's wait ran out: ask again, unless the caller
                // has stopped waiting.
                MdsResponse::Unit(Err(Errno::EAGAIN)) if wait => {
                    if interrupted() {
                        return Err(Errno::EINTR);
                    }
                }
                MdsResponse::Unit(result) => {
                    if result.is_ok() && kind.is_some() {
                        lock(&self.lockers).insert((ino, owner));
                    }
                    return result;
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Whether `owner` holds (or may hold) POSIX locks on `ino`.
    pub(super) fn holds_locks(&self, ino: InodeId, owner: u64) -> bool {
        lock(&self.lockers).contains(&(ino, owner))
    }

    pub(super) async fn release_locks(&self, ino: InodeId, owner: u64) -> Result<(), Errno> {
        if !lock(&self.lockers).remove(&(ino, owner)) {
            return Ok(());
        }
        let session = self.session.id();
        let request = MdsRequest::ReleaseLocks {
            session,
            ino,
            owner,
            flavor: LockFlavor::Posix,
        };
        match self.ask(request).await? {
            MdsResponse::Unit(result) => result,
            other => Err(unexpected(&other)),
        }
    }
}
