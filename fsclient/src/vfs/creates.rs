//! Creates this client answers itself (see [`local`](super::local) for
//! when and how they are ordered): a new regular file takes an inode
//! number the session reserved, its attributes are worked out here by the
//! MDS's own rules, and [`NsOp::CreateAs`] goes to the MDS behind it.

use std::sync::atomic::Ordering;

use aspen_proto::caps::CapOp;
use aspen_proto::fs::{Attr, Caller, FileType, Timestamp, mode, open_flags, validate_name};
use aspen_proto::mds::{NsOp, NsReply};
use aspen_proto::{Errno, InodeId};

use super::Vfs;
use super::local::RESERVE_BATCH;
use crate::caps::Found;

impl Vfs {
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
        if !self.local.allowed(parent) || validate_name(name).is_err() {
            return Ok(None);
        }
        self.refill_reserved();
        let mut cache = self.cache();
        if !self.may_change_here(&cache, parent)
            || !matches!(cache.lookup(parent, name), Some(Found::Absent))
        {
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
        let Some(ticket) = self.local.begin(parent, name) else {
            return Ok(None);
        };
        let reserved = self.local.reserved(self.session.generation()).1.pop_front();
        let Some((ino, generation)) = reserved else {
            self.local.end(ticket);
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
                vfs.local.end(ticket);
            });
        } else {
            self.local.end(ticket);
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
        if !self.local.reserved_low() || self.local.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(vfs) = self.me.upgrade() else {
            self.local.refilling.store(false, Ordering::Release);
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
                        vfs.local.reserved(generation).1.extend(inodes)
                    }
                    other => tracing::warn!("reserving inode numbers: {other:?}"),
                },
                Err(errno) => tracing::warn!("reserving inode numbers: {errno}"),
            }
            vfs.local.refilling.store(false, Ordering::Release);
        });
    }
}
