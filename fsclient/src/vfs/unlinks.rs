//! Unlinks this client answers itself (see [`local`](super::local) for
//! when and how they are ordered): the last link of a regular file this
//! client holds Exclusive on, with nothing of it open, buffered or
//! unreported here, is removed from the cache at once and
//! [`NsOp::Unlink`] goes to the MDS behind it.

use aspen_proto::caps::CapMode;
use aspen_proto::fs::{Caller, FileType, Timestamp, validate_name};
use aspen_proto::mds::NsOp;
use aspen_proto::{Errno, InodeId};

use super::Vfs;
use crate::caps::Found;

impl Vfs {
    /// Unlinks `name` in `parent` here when the cache holds all the MDS
    /// would decide by (see the module doc); `false` for the MDS to
    /// decide. A refusal by the permission rules is the answer.
    pub(super) fn unlink_here(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
    ) -> Result<bool, Errno> {
        if validate_name(name).is_err() {
            return Ok(false);
        }
        let mut cache = self.cache();
        if !self.may_change_here(&cache, parent) {
            return Ok(false);
        }
        let Some(Found::Entry(victim)) = cache.lookup(parent, name) else {
            return Ok(false);
        };
        let sole_holder = cache
            .cap(victim.ino)
            .is_some_and(|held| held.mode == CapMode::Exclusive)
            && !cache.revoking(victim.ino);
        let plain_file = victim.kind == FileType::Regular && victim.nlink == 1;
        // Written bytes the MDS has no size for would escape its purge:
        // those unlinks report first, through the MDS path.
        let settled = self.file_io(victim.ino).is_none() && cache.unreported(victim.ino).is_none();
        if !sole_holder || !plain_file || !settled {
            return Ok(false);
        }
        let Some(dir) = cache.attr(parent) else {
            return Ok(false);
        };
        aspen_proto::perm::check_search(&dir, caller)?;
        aspen_proto::perm::check_modify_dir(&dir, caller)?;
        aspen_proto::perm::check_sticky(&dir, &victim, caller)?;
        let Some(ticket) = self.local.begin(parent, name) else {
            return Ok(false);
        };
        let now = Timestamp::now();
        cache.note_unlinked(parent, name, victim.ino, now);
        drop(cache);
        let op = NsOp::Unlink {
            parent,
            name: name.to_vec(),
        };
        // If the MDS refuses it (it should not), the cache forgets the
        // name so the MDS answers for it again.
        let name = name.to_vec();
        self.send_behind(
            caller,
            ticket,
            (op, parent, now),
            move |vfs, outcome| match outcome {
                Ok(reply) => {
                    vfs.cache().note_entry(parent, &name, None, reply.version);
                    vfs.forget_unlinked(reply);
                }
                Err(errno) => {
                    tracing::warn!(
                        "the MDS refused the unlink of {name:?} in {parent}, made here: {errno}"
                    );
                    vfs.cache().forget_entry(parent, &name);
                }
            },
        );
        Ok(true)
    }
}
