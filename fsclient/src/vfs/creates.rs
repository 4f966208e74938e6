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
        // If the MDS refuses it (it should not), the name and inode are
        // forgotten here too.
        let name = name.to_vec();
        self.send_behind(caller, ticket, (op, parent, now), move |vfs, outcome| {
            if let Err(errno) = outcome {
                tracing::warn!("the MDS refused inode {ino}, created here in {parent}: {errno}");
                let mut cache = vfs.cache();
                cache.forget_entry(parent, &name);
                cache.release(ino);
                drop(cache);
                vfs.invalidate_later(ino);
            }
        });
        Ok(Some((fh, attr)))
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
