//! The inode-level VFS API that the FUSE frontend (and later virtiofs)
//! translate one to one.
//!
//! Namespace operations go to the MDS under capabilities with the
//! caller's credentials (the MDS checks permissions); what the answers
//! grant is cached ([`crate::caps`]) and answers later lookups, getattrs
//! and permission checks here, with the same permission rules. File data
//! goes straight to the OSDs, buffered under an Exclusive cap
//! ([`files`]). The MDS revokes caps when another client needs them;
//! [`coherence`] carries revocations out, gives back caps the cache no
//! longer wants and starts over when the MDS ends the session.

mod behind;
mod coherence;
mod creates;
mod files;
mod local;
mod locks;
mod reports;
mod send_queue;
mod turns;
mod unlinks;
mod waiting;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use aspen_osd::client::ObjectClient;
use aspen_proto::caps::{CapMode, CapOp, CapReply};
use aspen_proto::fs::{Attr, Caller, DirEntry, FileType, SetAttr, StatFs, access};
use aspen_proto::mds::{MdsRequest, MdsResponse, NsOp, NsReply};
use aspen_proto::{Errno, InodeId, perm};

use crate::caps::{CapCache, Found};
use crate::data::FileData;
use crate::session::{Session, unexpected};
use files::{Files, WriteBack};

pub use files::{COPY_CHUNK, MAX_DIRTY_BYTES, WRITEBACK_CHUNK, WRITEBACK_INTERVAL};
pub use waiting::{HeldPages, PAGE_DROP_PATIENCE, STUCK_PAGE_DROP};

/// How many entries one readdir asks the MDS for.
pub const READDIR_BATCH: u32 = 256;

/// The xattr the kernel reads before every write (to drop file
/// capabilities), answered from the cache when a cap covers its absence.
const FILE_CAPS_XATTR: &[u8] = b"security.capability";

/// Drops the kernel's cached attributes of an inode and its cached pages
/// over a range of bytes (to the end of the file when the range ends at
/// `u64::MAX`; nothing for an empty range): the frontend's part of giving
/// up a cap.
pub type Invalidator = Box<dyn Fn(InodeId, Range<u64>) + Send + Sync>;

/// The filesystem as one client sees it.
pub struct Vfs {
    /// This VFS, for the background tasks it starts.
    me: Weak<Vfs>,
    session: Arc<Session>,
    objects: Arc<ObjectClient>,
    data: FileData,
    cache: Mutex<CapCache>,
    files: Mutex<Files>,
    writeback: WriteBack,
    /// (inode, lock owner) pairs that took a POSIX lock here: their close
    /// releases what they hold.
    lockers: Mutex<HashSet<(InodeId, u64)>>,
    invalidator: OnceLock<Invalidator>,
    /// Revocations being carried out, by (inode, grant, mode left).
    revoking: Mutex<HashSet<(InodeId, u64, Option<CapMode>)>>,
    /// One session recovery at a time.
    recovery: tokio::sync::Mutex<()>,
    closing: AtomicBool,
    local: local::LocalOps,
    /// Reports of sizes and mtimes, one per inode at a time.
    report_turns: turns::InodeTurns,
    /// Held by a revocation from the cap's change to its ack's answer.
    ack_turns: turns::InodeTurns,
    /// Writes waiting for an Exclusive cap (pages a revocation leaves).
    waiting_requests: waiting::WaitingRequests,
    /// Reports waiting to go to the MDS together.
    reports: reports::ReportQueue,
    behind: behind::BehindQueue,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The attributes an answer carries.
fn attr_reply(reply: &CapReply) -> Result<Attr, Errno> {
    match &reply.result {
        Ok(NsReply::Attr(attr) | NsReply::Opened { attr, .. }) => Ok(attr.clone()),
        Ok(NsReply::Done | NsReply::Reserved(_) | NsReply::Reported(_) | NsReply::Mutated(_)) => {
            Err(Errno::EIO)
        }
        Err(errno) => Err(*errno),
    }
}

impl Vfs {
    /// A VFS over an open session; starts following revocations.
    pub fn new(session: Arc<Session>, objects: Arc<ObjectClient>) -> Arc<Vfs> {
        objects.set_session(session.id().0);
        let vfs = Arc::new_cyclic(|me| Vfs {
            me: me.clone(),
            session,
            data: FileData::new(objects.clone()),
            objects,
            cache: Mutex::new(CapCache::default()),
            files: Mutex::new(Files::default()),
            writeback: WriteBack::default(),
            lockers: Mutex::new(HashSet::new()),
            invalidator: OnceLock::new(),
            revoking: Mutex::new(HashSet::new()),
            recovery: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
            local: local::LocalOps::default(),
            report_turns: turns::InodeTurns::default(),
            ack_turns: turns::InodeTurns::default(),
            waiting_requests: waiting::WaitingRequests::new(waiting::page_size()),
            reports: reports::ReportQueue::default(),
            behind: behind::BehindQueue::default(),
        });
        coherence::start(&vfs);
        vfs
    }

    /// Sets how the kernel's cached data is dropped (once, at mount).
    pub fn set_invalidator(&self, invalidator: Invalidator) {
        let _ = self.invalidator.set(invalidator);
    }

    fn cache(&self) -> MutexGuard<'_, CapCache> {
        lock(&self.cache)
    }

    async fn ask(&self, request: MdsRequest) -> Result<MdsResponse, Errno> {
        self.settled().await;
        self.session.ask(&request).await
    }

    /// A request under capabilities; what it grants goes into the cache.
    async fn cap_call(&self, caller: &Caller, op: CapOp) -> Result<CapReply, Errno> {
        self.settled().await;
        let reply = self.session.cap(caller, op).await.map_err(|errno| {
            if errno == Errno::ESTALE {
                Errno::EIO
            } else {
                errno
            }
        })?;
        self.objects.require_epoch(reply.barrier);
        self.cache().absorb(&reply);
        Ok(reply)
    }

    /// The attributes as this client shows them (its unreported writes
    /// included) when it holds a cap, else as `attr` says.
    fn shown(&self, attr: Attr) -> Attr {
        self.cache().attr(attr.ino).unwrap_or(attr)
    }

    /// Whether this session holds at least `mode` on `ino`.
    fn holds(&self, ino: InodeId, mode: CapMode) -> bool {
        self.cache().cap(ino).is_some_and(|held| held.mode >= mode)
    }

    /// Makes sure this session holds at least `mode` on `ino`. Asked only
    /// once this client's ack of `ino` on its way (if any) is answered: a
    /// request that overtook it would be granted with the size from
    /// before the writes it carries.
    async fn want(&self, ino: InodeId, mode: CapMode) -> Result<(), Errno> {
        if self.holds(ino, mode) {
            return Ok(());
        }
        self.ack_turns.wait_free(ino).await;
        if self.holds(ino, mode) {
            return Ok(());
        }
        let op = match mode {
            CapMode::Shared => CapOp::GetAttr { ino },
            CapMode::Exclusive => CapOp::Want { ino, mode },
        };
        tracing::debug!(?op, "wanting");
        attr_reply(&self.cap_call(&Caller::root(), op).await?).map(drop)
    }

    /// Writes everything buffered and reports it, then ends the session
    /// (its handles and caps go with it).
    pub async fn shutdown(&self) {
        self.flush_everything().await;
        self.closing
            .store(true, std::sync::atomic::Ordering::Release);
        self.session.close().await;
    }

    // ---- namespace ----

    pub async fn lookup(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
    ) -> Result<Attr, Errno> {
        if let Some(found) = self.cached_lookup(caller, parent, name)? {
            return found;
        }
        let op = CapOp::Lookup {
            parent,
            name: name.to_vec(),
        };
        let reply = self.cap_call(caller, op).await?;
        let found = attr_reply(&reply);
        if name != b"." && name != b".." {
            let ino = match &found {
                Ok(attr) => Some(attr.ino),
                Err(Errno::ENOENT) => None,
                Err(_) => return found,
            };
            self.cache().note_entry(parent, name, ino, reply.version);
        }
        found.map(|attr| self.shown(attr))
    }

    /// [`Vfs::lookup`] when the cache answers it, without waiting.
    pub fn lookup_now(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
    ) -> Option<Result<Attr, Errno>> {
        self.cached_lookup(caller, parent, name)
            .unwrap_or_else(|errno| Some(Err(errno)))
    }

    /// [`Vfs::getattr`] when the cache answers it, without waiting.
    pub fn getattr_now(&self, ino: InodeId) -> Option<Attr> {
        self.cache().attr(ino)
    }

    /// Whether `ino`'s attributes are under a cap that no revocation is
    /// taking: a frontend may let its kernel keep them, as long as it
    /// drops them when the invalidator is called for `ino` (every way a
    /// cap goes calls it). Asked after the answer is made, so a cap that
    /// goes later is followed by that call.
    pub fn attrs_held(&self, ino: InodeId) -> bool {
        self.cache().attrs_held(ino)
    }

    /// [`Vfs::unlink`] when this client answers it itself, without
    /// waiting (runs within the tokio runtime: it sends in the background).
    pub fn unlink_now(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
    ) -> Option<Result<(), Errno>> {
        match self.unlink_here(caller, parent, name) {
            Ok(true) => Some(Ok(())),
            Ok(false) => None,
            Err(errno) => Some(Err(errno)),
        }
    }

    /// A lookup answered from the cache, when the parent's cap covers it.
    fn cached_lookup(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
    ) -> Result<Option<Result<Attr, Errno>>, Errno> {
        let mut cache = self.cache();
        let Some(dir) = cache.attr(parent) else {
            return Ok(None);
        };
        perm::check_search(&dir, caller)?;
        if name != b"." && name != b".." {
            aspen_proto::fs::validate_name(name)?;
        }
        Ok(match cache.lookup(parent, name) {
            Some(Found::Entry(attr)) => Some(Ok(attr)),
            Some(Found::Absent) => Some(Err(Errno::ENOENT)),
            None => None,
        })
    }

    /// The kernel dropped its references to `ino`; the cache keeps its
    /// caps until it needs the room.
    pub fn forget(&self, _ino: InodeId, _lookups: u64) {}

    pub async fn getattr(&self, ino: InodeId) -> Result<Attr, Errno> {
        if let Some(attr) = self.getattr_now(ino) {
            return Ok(attr);
        }
        // After this client's ack of `ino`, not before it (see `want`).
        self.ack_turns.wait_free(ino).await;
        let reply = self
            .cap_call(&Caller::root(), CapOp::GetAttr { ino })
            .await?;
        attr_reply(&reply).map(|attr| self.shown(attr))
    }

    /// chmod, chown, truncate, utimes; `fh` when it comes through a handle.
    pub async fn setattr(
        &self,
        caller: &Caller,
        ino: InodeId,
        mut changes: SetAttr,
        fh: Option<u64>,
    ) -> Result<Attr, Errno> {
        let through = fh.and_then(|fh| self.open_file(fh).ok());
        changes.through_writable_handle = through.as_ref().is_some_and(|(f, _)| f.writable());
        let size = changes.size;
        let op = NsOp::SetAttr { ino, changes };
        let reply = match size {
            Some(size) => self.resize(caller, ino, size, op).await?,
            None => {
                // The MDS must know the size and mtime written here first,
                // or a later answer would lose a time set now.
                let _turn = self.flush_and_report_in_turn(ino).await?;
                self.mutate(caller, op).await?
            }
        };
        attr_reply(&reply).map(|attr| self.shown(attr))
    }

    /// A namespace mutation under capabilities; the cache learns the
    /// entries it made or removed.
    async fn mutate(&self, caller: &Caller, op: NsOp) -> Result<CapReply, Errno> {
        let reply = self.cap_call(caller, CapOp::Mutate(op.clone())).await?;
        if reply.result.is_ok() {
            self.note_entries(&op, &reply);
        }
        Ok(reply)
    }

    /// What a successful mutation did to directory entries.
    fn note_entries(&self, op: &NsOp, reply: &CapReply) {
        let version = reply.version;
        let made = attr_reply(reply).ok().map(|attr| attr.ino);
        let mut cache = self.cache();
        match op {
            NsOp::Mknod { parent, name, .. }
            | NsOp::Symlink { parent, name, .. }
            | NsOp::Create { parent, name, .. } => {
                cache.note_entry(*parent, name, made, version);
            }
            NsOp::Mkdir { parent, name, .. } => {
                cache.note_entry(*parent, name, made, version);
                if let Some(dir) = made {
                    cache.note_complete(dir);
                }
            }
            NsOp::Link {
                ino,
                new_parent,
                new_name,
            } => cache.note_entry(*new_parent, new_name, Some(*ino), version),
            NsOp::Unlink { parent, name } | NsOp::Rmdir { parent, name } => {
                cache.note_entry(*parent, name, None, version);
            }
            NsOp::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                let moved = cache.entry(*parent, name);
                let replaced = cache.entry(*new_parent, new_name);
                let exchange = *flags & nix::libc::RENAME_EXCHANGE != 0;
                let entry = |cache: &mut CapCache, dir: InodeId, name: &[u8], ino| match ino {
                    Some(ino) => cache.note_entry(dir, name, Some(ino), version),
                    None => cache.forget_entry(dir, name),
                };
                entry(&mut cache, *new_parent, new_name, moved);
                if exchange {
                    entry(&mut cache, *parent, name, replaced);
                } else {
                    cache.note_entry(*parent, name, None, version);
                }
            }
            _ => {}
        }
    }

    pub async fn mknod(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u64,
    ) -> Result<Attr, Errno> {
        let op = NsOp::Mknod {
            parent,
            name: name.to_vec(),
            mode,
            umask,
            rdev,
        };
        attr_reply(&self.mutate(caller, op).await?)
    }

    pub async fn mkdir(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        umask: u32,
    ) -> Result<Attr, Errno> {
        let op = NsOp::Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            umask,
        };
        let attr = attr_reply(&self.mutate(caller, op).await?)?;
        let exclusive = self
            .cache()
            .cap(attr.ino)
            .is_some_and(|held| held.mode == CapMode::Exclusive);
        if exclusive {
            self.local.allow(attr.ino);
        }
        Ok(attr)
    }

    /// Removes `name` in `parent`; the buffered writes of the file it
    /// names go out first (none may land after it is gone).
    pub async fn unlink(&self, caller: &Caller, parent: InodeId, name: &[u8]) -> Result<(), Errno> {
        if self.unlink_here(caller, parent, name)? {
            return Ok(());
        }
        self.settle_entry(caller, parent, name).await?;
        let op = NsOp::Unlink {
            parent,
            name: name.to_vec(),
        };
        let reply = self.mutate(caller, op).await?;
        self.forget_unlinked(&reply);
        reply.result.map(drop)
    }

    pub async fn rmdir(&self, caller: &Caller, parent: InodeId, name: &[u8]) -> Result<(), Errno> {
        let op = NsOp::Rmdir {
            parent,
            name: name.to_vec(),
        };
        self.mutate(caller, op).await?.result.map(drop)
    }

    pub async fn symlink(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
        target: &[u8],
    ) -> Result<Attr, Errno> {
        let op = NsOp::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
        };
        attr_reply(&self.mutate(caller, op).await?)
    }

    pub async fn readlink(&self, ino: InodeId) -> Result<Vec<u8>, Errno> {
        match self.ask(MdsRequest::ReadLink { ino }).await? {
            MdsResponse::Bytes(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    pub async fn rename(
        &self,
        caller: &Caller,
        (parent, name): (InodeId, &[u8]),
        (new_parent, new_name): (InodeId, &[u8]),
        flags: u32,
    ) -> Result<(), Errno> {
        self.settle_entry(caller, new_parent, new_name).await?;
        let op = NsOp::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
        };
        let reply = self.mutate(caller, op).await?;
        self.forget_unlinked(&reply);
        reply.result.map(drop)
    }

    pub async fn link(
        &self,
        caller: &Caller,
        ino: InodeId,
        new_parent: InodeId,
        new_name: &[u8],
    ) -> Result<Attr, Errno> {
        let op = NsOp::Link {
            ino,
            new_parent,
            new_name: new_name.to_vec(),
        };
        attr_reply(&self.mutate(caller, op).await?).map(|attr| self.shown(attr))
    }

    // ---- directories ----

    /// Checks that `ino` is a directory the caller may read (directories
    /// need no handle: readdir goes by inode).
    pub async fn opendir(&self, caller: &Caller, ino: InodeId) -> Result<(), Errno> {
        let attr = self.getattr(ino).await?;
        if attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        self.access(caller, ino, access::R_OK).await
    }

    /// Entries after `offset` (`.` and `..` first), each with the offset
    /// to resume after it.
    pub async fn readdir(
        &self,
        caller: &Caller,
        ino: InodeId,
        offset: u64,
    ) -> Result<Vec<DirEntry>, Errno> {
        let request = MdsRequest::ReadDir {
            caller: caller.clone(),
            ino,
            offset,
            limit: READDIR_BATCH,
        };
        match self.ask(request).await? {
            MdsResponse::Entries(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    /// readdir with each entry's attributes.
    pub async fn readdirplus(
        &self,
        caller: &Caller,
        ino: InodeId,
        offset: u64,
    ) -> Result<Vec<(DirEntry, Attr)>, Errno> {
        let mut entries = Vec::new();
        for entry in self.readdir(caller, ino, offset).await? {
            match self.getattr(entry.ino).await {
                Ok(attr) => entries.push((entry, attr)),
                // Removed since the listing: skip it.
                Err(Errno::ENOENT) => {}
                Err(errno) => return Err(errno),
            }
        }
        Ok(entries)
    }

    pub fn releasedir(&self, _fh: u64) {}

    pub async fn statfs(&self) -> Result<StatFs, Errno> {
        match self.ask(MdsRequest::StatFs).await? {
            MdsResponse::StatFs(statfs) => Ok(statfs),
            other => Err(unexpected(&other)),
        }
    }

    // ---- xattrs and access ----

    /// [`Vfs::getxattr`] when the cache answers it (the kernel's read of
    /// `security.capability` before each write), without waiting.
    pub fn getxattr_now(&self, ino: InodeId, name: &[u8]) -> Option<Result<Vec<u8>, Errno>> {
        let absent = name == FILE_CAPS_XATTR && self.cache().lacks_file_caps(ino);
        absent.then_some(Err(Errno::ENODATA))
    }

    pub async fn getxattr(
        &self,
        caller: &Caller,
        ino: InodeId,
        name: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        if let Some(answer) = self.getxattr_now(ino, name) {
            return answer;
        }
        let file_caps = name == FILE_CAPS_XATTR;
        let held = self.cache().cap(ino);
        let request = MdsRequest::GetXattr {
            caller: caller.clone(),
            ino,
            name: name.to_vec(),
        };
        let result = match self.ask(request).await? {
            MdsResponse::Bytes(result) => result,
            other => Err(unexpected(&other)),
        };
        if let (true, Err(Errno::ENODATA), Some(held)) = (file_caps, &result, held) {
            self.cache().note_no_file_caps(ino, held.seq);
        }
        result
    }

    pub async fn setxattr(
        &self,
        caller: &Caller,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        // An ACL may change what a new file inherits, which the MDS alone
        // works out.
        self.local.disallow(ino);
        self.cache().forget_xattrs(ino);
        let op = NsOp::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        let changed = self.mutate(caller, op).await?.result.map(drop);
        self.cache().forget_xattrs(ino);
        changed
    }

    pub async fn listxattr(&self, caller: &Caller, ino: InodeId) -> Result<Vec<Vec<u8>>, Errno> {
        let request = MdsRequest::ListXattr {
            caller: caller.clone(),
            ino,
        };
        match self.ask(request).await? {
            MdsResponse::Names(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    pub async fn removexattr(
        &self,
        caller: &Caller,
        ino: InodeId,
        name: &[u8],
    ) -> Result<(), Errno> {
        self.local.disallow(ino);
        self.cache().forget_xattrs(ino);
        let op = NsOp::RemoveXattr {
            ino,
            name: name.to_vec(),
        };
        let changed = self.mutate(caller, op).await?.result.map(drop);
        self.cache().forget_xattrs(ino);
        changed
    }

    pub async fn access(&self, caller: &Caller, ino: InodeId, mask: u32) -> Result<(), Errno> {
        if let Some(attr) = self.cache().attr(ino) {
            return perm::check(&attr, caller, mask);
        }
        let request = MdsRequest::Access {
            caller: caller.clone(),
            ino,
            mask,
        };
        match self.ask(request).await? {
            MdsResponse::Unit(result) => result,
            other => Err(unexpected(&other)),
        }
    }
}

/// Inodes an answer shows with no link left.
fn unlinked(reply: &CapReply) -> impl Iterator<Item = InodeId> + '_ {
    reply
        .attrs
        .iter()
        .filter(|attr| attr.nlink == 0 && attr.kind == FileType::Regular)
        .map(|attr| attr.ino)
}

impl Vfs {
    /// Before a name of a file goes (and perhaps the file): its buffered
    /// writes go out, and opens of it made here are pinned. The file is
    /// the one the cache knows by that name, or the MDS's answer when some
    /// open here would need a pin.
    async fn settle_entry(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
    ) -> Result<(), Errno> {
        let mut known = self.cache().entry(parent, name);
        if known.is_none() && self.any_unpinned() {
            known = self
                .lookup(caller, parent, name)
                .await
                .ok()
                .map(|attr| attr.ino);
        }
        let Some(ino) = known else { return Ok(()) };
        // The MDS purges the file's objects up to the size it knows.
        if let Err(errno) = self.flush_and_report(ino).await {
            tracing::warn!("writing back inode {ino} before its unlink: {errno}");
        }
        self.pin(ino).await
    }

    /// A file left with no link and no handle here is gone: nothing of
    /// it is kept or written back.
    fn forget_unlinked(&self, reply: &CapReply) {
        let gone: Vec<InodeId> = unlinked(reply).collect();
        for ino in gone {
            if !self.is_open(ino) {
                self.discard(ino);
            }
        }
    }

    /// Drops what is cached or buffered about `ino`.
    fn discard(&self, ino: InodeId) {
        self.drop_buffers(ino, None);
        let mut cache = self.cache();
        cache.drop_unreported(ino);
        cache.release(ino);
        drop(cache);
        self.invalidate_later(ino);
    }
}
