//! The inode-level VFS API that the FUSE frontend (and later virtiofs)
//! translate one to one, and the client's table of open files.
//!
//! Namespace operations go to the MDS with the caller's credentials (the
//! MDS checks permissions). File data goes straight to the OSDs; an OSD
//! acknowledges a write only once it is durable on every replica. What the
//! MDS learns later is the size and mtime a write produced: the client
//! keeps them per open inode ("dirty") and reports them with one `Written`
//! mutation on flush, fsync, close, setattr and every
//! [`DIRTY_REPORT_INTERVAL`]; meanwhile this client's own getattr and
//! lookup answers show them. Truncation cuts the objects right after the
//! MDS commits the new size; deleted files are purged by the MDS.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use aspen_osd::client::ObjectClient;
use aspen_proto::fs::{Attr, Caller, DirEntry, FileType, SetAttr, StatFs, Timestamp, open_flags};
use aspen_proto::lock::{Lock, LockFlavor, LockKind, LockOwner, LockRequest};
use aspen_proto::mds::{HandleId, MdsRequest, MdsResponse, NsOp, NsReply};
use aspen_proto::{Errno, InodeId};
use tokio::sync::RwLock;

use crate::data::{self, FileData, FileObjects};
use crate::session::{Session, unexpected};

/// How often sizes and mtimes written here are reported to the MDS even
/// without a flush.
pub const DIRTY_REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How many entries one readdir asks the MDS for.
pub const READDIR_BATCH: u32 = 256;
/// The most bytes copy_file_range moves per read and write.
pub const COPY_CHUNK: u64 = 4 << 20;

/// Data written here that the MDS has not heard of yet.
#[derive(Clone)]
struct Dirty {
    /// A handle open for writing, to report through.
    handle: HandleId,
    caller: Caller,
    mtime: Timestamp,
    /// Bumped by every write, so a report only clears what it covered.
    generation: u64,
}

/// What the client knows about an inode it has open.
struct InodeState {
    size: u64,
    dirty: Option<Dirty>,
    opens: usize,
}

struct OpenInode {
    file: FileObjects,
    /// Reads and writes share it; truncation and hole punching take it
    /// alone, so no write lands in a range while it is being cut.
    io: RwLock<()>,
    state: Mutex<InodeState>,
}

#[derive(Clone)]
struct OpenFile {
    ino: InodeId,
    handle: HandleId,
    flags: u32,
}

impl OpenFile {
    fn writable(&self) -> bool {
        self.flags & open_flags::O_ACCMODE != open_flags::O_RDONLY
    }
}

#[derive(Default)]
struct Files {
    handles: HashMap<u64, OpenFile>,
    inodes: HashMap<InodeId, Arc<OpenInode>>,
}

/// The filesystem as one client sees it.
pub struct Vfs {
    session: Session,
    data: FileData,
    files: Mutex<Files>,
    write_generation: AtomicU64,
    /// (inode, lock owner) pairs that took a POSIX lock here: their close
    /// releases what they hold.
    lockers: Mutex<HashSet<(InodeId, u64)>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn attr_reply(reply: NsReply) -> Result<Attr, Errno> {
    match reply {
        NsReply::Attr(attr) | NsReply::Opened { attr, .. } => Ok(attr),
        NsReply::Done => Err(Errno::EIO),
    }
}

impl Vfs {
    /// A VFS over an open session; starts its dirty-report timer.
    pub fn new(session: Session, objects: Arc<ObjectClient>) -> Arc<Vfs> {
        let vfs = Arc::new(Vfs {
            session,
            data: FileData::new(objects),
            files: Mutex::new(Files::default()),
            write_generation: AtomicU64::new(1),
            lockers: Mutex::new(HashSet::new()),
        });
        tokio::spawn(report_dirty_periodically(Arc::downgrade(&vfs)));
        vfs
    }

    async fn ask(&self, request: MdsRequest) -> Result<MdsResponse, Errno> {
        self.session.ask(&request).await
    }

    async fn mutate(&self, caller: &Caller, op: NsOp) -> Result<NsReply, Errno> {
        self.session.mutate(caller, op).await
    }

    fn open_inode(&self, ino: InodeId) -> Option<Arc<OpenInode>> {
        lock(&self.files).inodes.get(&ino).cloned()
    }

    fn open_file(&self, fh: u64) -> Result<(OpenFile, Arc<OpenInode>), Errno> {
        let files = lock(&self.files);
        let file = files.handles.get(&fh).ok_or(Errno::EBADF)?.clone();
        let inode = files.inodes.get(&file.ino).ok_or(Errno::EBADF)?.clone();
        Ok((file, inode))
    }

    /// Shows this client's unreported writes in `attr`.
    fn overlay(&self, mut attr: Attr) -> Attr {
        if let Some(inode) = self.open_inode(attr.ino) {
            let state = lock(&inode.state);
            if let Some(dirty) = &state.dirty {
                attr.size = attr.size.max(state.size);
                attr.mtime = dirty.mtime;
                attr.ctime = dirty.mtime;
            }
        }
        attr
    }

    async fn mds_attr(&self, ino: InodeId) -> Result<Attr, Errno> {
        match self.ask(MdsRequest::GetAttr { ino }).await? {
            MdsResponse::Attr(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    /// Reports an inode's dirty size and mtime to the MDS.
    async fn report(&self, ino: InodeId) -> Result<(), Errno> {
        let Some(inode) = self.open_inode(ino) else {
            return Ok(());
        };
        let (dirty, size) = {
            let state = lock(&inode.state);
            match &state.dirty {
                Some(dirty) => (dirty.clone(), state.size),
                None => return Ok(()),
            }
        };
        let op = NsOp::Written {
            handle: dirty.handle,
            end: size,
        };
        self.mutate(&dirty.caller, op).await?;
        let mut state = lock(&inode.state);
        if state
            .dirty
            .as_ref()
            .is_some_and(|d| d.generation == dirty.generation)
        {
            state.dirty = None;
        }
        Ok(())
    }

    fn mark_dirty(&self, inode: &OpenInode, file: &OpenFile, caller: &Caller, end: Option<u64>) {
        let mut state = lock(&inode.state);
        if let Some(end) = end {
            state.size = state.size.max(end);
        }
        state.dirty = Some(Dirty {
            handle: file.handle,
            caller: caller.clone(),
            mtime: Timestamp::now(),
            generation: self.write_generation.fetch_add(1, Ordering::Relaxed),
        });
    }

    /// Reports every dirty inode (the timer, and unmount).
    pub async fn report_all(&self) {
        let inodes: Vec<InodeId> = lock(&self.files).inodes.keys().copied().collect();
        for ino in inodes {
            if let Err(errno) = self.report(ino).await {
                tracing::warn!("reporting the size of inode {ino}: {errno}");
            }
        }
    }

    /// Releases every handle (reporting what is dirty) and ends the session.
    pub async fn shutdown(&self) {
        let handles: Vec<u64> = lock(&self.files).handles.keys().copied().collect();
        for fh in handles {
            let _ = self.release(fh).await;
        }
        self.session.close().await;
    }

    // ---- namespace ----

    pub async fn lookup(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
    ) -> Result<Attr, Errno> {
        let request = MdsRequest::Lookup {
            caller: caller.clone(),
            parent,
            name: name.to_vec(),
        };
        match self.ask(request).await? {
            MdsResponse::Attr(result) => result.map(|attr| self.overlay(attr)),
            other => Err(unexpected(&other)),
        }
    }

    /// The kernel dropped its references to `ino`; nothing is held per
    /// lookup here.
    pub fn forget(&self, _ino: InodeId, _lookups: u64) {}

    pub async fn getattr(&self, ino: InodeId) -> Result<Attr, Errno> {
        Ok(self.overlay(self.mds_attr(ino).await?))
    }

    /// chmod, chown, truncate, utimes; `fh` when it comes through a handle.
    pub async fn setattr(
        &self,
        caller: &Caller,
        ino: InodeId,
        mut changes: SetAttr,
        fh: Option<u64>,
    ) -> Result<Attr, Errno> {
        self.report(ino).await?;
        let through = fh.and_then(|fh| self.open_file(fh).ok());
        changes.through_writable_handle = through.as_ref().is_some_and(|(f, _)| f.writable());
        let Some(new_size) = changes.size else {
            let op = NsOp::SetAttr { ino, changes };
            return attr_reply(self.mutate(caller, op).await?).map(|a| self.overlay(a));
        };
        let op = NsOp::SetAttr { ino, changes };
        attr_reply(self.resize(caller, ino, new_size, op).await?)
    }

    /// Applies `op`, which sets the size of regular file `ino` to
    /// `new_size` (a truncating setattr or open), then cuts the objects
    /// past it. The inode's I/O is held throughout, so no write of this
    /// client lands in the range while it is cut.
    async fn resize(
        &self,
        caller: &Caller,
        ino: InodeId,
        new_size: u64,
        op: NsOp,
    ) -> Result<NsReply, Errno> {
        self.report(ino).await?;
        let inode = self.open_inode(ino);
        let _cutting = match &inode {
            Some(inode) => Some(inode.io.write().await),
            None => None,
        };
        let local = inode.as_ref().map_or(0, |i| lock(&i.state).size);
        let old_size = self.mds_attr(ino).await?.size.max(local);
        let reply = self.mutate(caller, op).await?;
        let layout = match &reply {
            NsReply::Attr(attr) | NsReply::Opened { attr, .. } => attr.layout,
            NsReply::Done => return Err(Errno::EIO),
        };
        if let Some(inode) = &inode {
            lock(&inode.state).size = new_size;
        }
        let file = FileObjects { ino, layout };
        match self.data.truncate(file, new_size, old_size).await {
            Ok(()) => Ok(reply),
            Err(errno) => {
                if let NsReply::Opened { handle, .. } = reply {
                    let _ = self.mutate(caller, NsOp::Release { handle }).await;
                }
                Err(errno)
            }
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
        attr_reply(self.mutate(caller, op).await?)
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
        attr_reply(self.mutate(caller, op).await?)
    }

    pub async fn unlink(&self, caller: &Caller, parent: InodeId, name: &[u8]) -> Result<(), Errno> {
        let op = NsOp::Unlink {
            parent,
            name: name.to_vec(),
        };
        self.mutate(caller, op).await.map(drop)
    }

    pub async fn rmdir(&self, caller: &Caller, parent: InodeId, name: &[u8]) -> Result<(), Errno> {
        let op = NsOp::Rmdir {
            parent,
            name: name.to_vec(),
        };
        self.mutate(caller, op).await.map(drop)
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
        attr_reply(self.mutate(caller, op).await?)
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
        let op = NsOp::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
        };
        self.mutate(caller, op).await.map(drop)
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
        attr_reply(self.mutate(caller, op).await?).map(|a| self.overlay(a))
    }

    // ---- open files ----

    /// Records an opened handle; returns the handle number for the kernel.
    fn register(&self, attr: &Attr, handle: HandleId, flags: u32) -> u64 {
        let mut files = lock(&self.files);
        files.handles.insert(
            handle.0,
            OpenFile {
                ino: attr.ino,
                handle,
                flags,
            },
        );
        let inode = files.inodes.entry(attr.ino).or_insert_with(|| {
            Arc::new(OpenInode {
                file: FileObjects {
                    ino: attr.ino,
                    layout: attr.layout,
                },
                io: RwLock::new(()),
                state: Mutex::new(InodeState {
                    size: attr.size,
                    dirty: None,
                    opens: 0,
                }),
            })
        });
        let mut state = lock(&inode.state);
        if state.dirty.is_none() {
            state.size = attr.size;
        }
        state.opens += 1;
        handle.0
    }

    pub async fn open(
        &self,
        caller: &Caller,
        ino: InodeId,
        flags: u32,
    ) -> Result<(u64, Attr), Errno> {
        let op = NsOp::Open { ino, flags };
        let reply = if flags & open_flags::O_TRUNC != 0 {
            self.resize(caller, ino, 0, op).await?
        } else {
            self.mutate(caller, op).await?
        };
        let NsReply::Opened { attr, handle } = reply else {
            return Err(Errno::EIO);
        };
        let fh = self.register(&attr, handle, flags);
        Ok((fh, self.overlay(attr)))
    }

    pub async fn create(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: u32,
    ) -> Result<(u64, Attr), Errno> {
        let op = NsOp::Create {
            parent,
            name: name.to_vec(),
            mode,
            umask,
            flags,
        };
        let NsReply::Opened { attr, handle } = self.mutate(caller, op).await? else {
            return Err(Errno::EIO);
        };
        let fh = self.register(&attr, handle, flags);
        Ok((fh, attr))
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        let (_, inode) = self.open_file(fh)?;
        let _reading = inode.io.read().await;
        let size = lock(&inode.state).size;
        self.data
            .read(inode.file, offset, u64::from(len), size)
            .await
    }

    pub async fn write(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Result<u32, Errno> {
        let (file, inode) = self.open_file(fh)?;
        if !file.writable() {
            return Err(Errno::EBADF);
        }
        let end = data::write_end(offset, bytes.len() as u64)?;
        let _writing = inode.io.read().await;
        self.data.write(inode.file, offset, bytes).await?;
        self.mark_dirty(&inode, &file, caller, Some(end));
        Ok(bytes.len() as u32)
    }

    /// close(2) of one descriptor: what was written becomes visible to
    /// other clients.
    pub async fn flush(&self, fh: u64) -> Result<(), Errno> {
        let (file, _) = self.open_file(fh)?;
        self.report(file.ino).await
    }

    /// A close: [`Vfs::flush`], and `lock_owner`'s POSIX locks on the file
    /// go (POSIX drops a process's locks at its close of any descriptor).
    pub async fn flush_on_close(&self, fh: u64, lock_owner: u64) -> Result<(), Errno> {
        let (file, _) = self.open_file(fh)?;
        let flushed = self.report(file.ino).await;
        let released = self.release_locks(file.ino, lock_owner).await;
        flushed.and(released)
    }

    /// Data is durable once written; fsync makes the size and mtime so.
    pub async fn fsync(&self, fh: u64) -> Result<(), Errno> {
        self.flush(fh).await
    }

    pub async fn release(&self, fh: u64) -> Result<(), Errno> {
        // The handle leaves the table first, so of two racing releases of
        // it (the kernel's and unmount's) only one goes on.
        let (file, inode) = {
            let mut files = lock(&self.files);
            let file = files.handles.remove(&fh).ok_or(Errno::EBADF)?;
            let inode = files.inodes.get(&file.ino).cloned();
            (file, inode.ok_or(Errno::EBADF)?)
        };
        let reported = self.report(file.ino).await;
        let released = self
            .mutate(
                &Caller::root(),
                NsOp::Release {
                    handle: file.handle,
                },
            )
            .await;
        let mut files = lock(&self.files);
        let other_writer = files
            .handles
            .values()
            .find(|other| other.ino == file.ino && other.writable())
            .map(|other| other.handle);
        let last = {
            let mut state = lock(&inode.state);
            state.opens -= 1;
            // An unreported write goes out through another open handle,
            // or not at all once none is left.
            if state
                .dirty
                .as_ref()
                .is_some_and(|d| d.handle == file.handle)
            {
                match other_writer {
                    Some(handle) => state.dirty.as_mut().expect("checked").handle = handle,
                    None => state.dirty = None,
                }
            }
            state.opens == 0
        };
        if last {
            files.inodes.remove(&file.ino);
        }
        reported.and(released.map(drop))
    }

    // ---- advisory locks ----

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
    /// waiting request is woken by the MDS when a lock it waits for goes.
    pub async fn setlk(
        &self,
        ino: InodeId,
        (owner, pid): (u64, u32),
        kind: Option<LockKind>,
        range: (u64, u64),
        wait: bool,
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
                // The MDS's wait ran out: ask again.
                MdsResponse::Unit(Err(Errno::EAGAIN)) if wait => continue,
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

    async fn release_locks(&self, ino: InodeId, owner: u64) -> Result<(), Errno> {
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

    // ---- directories ----

    /// Checks that `ino` is a directory the caller may read (directories
    /// need no handle: readdir goes by inode).
    pub async fn opendir(&self, caller: &Caller, ino: InodeId) -> Result<(), Errno> {
        let attr = self.mds_attr(ino).await?;
        if attr.kind != FileType::Directory {
            return Err(Errno::ENOTDIR);
        }
        self.access(caller, ino, aspen_proto::fs::access::R_OK)
            .await
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

    pub async fn getxattr(
        &self,
        caller: &Caller,
        ino: InodeId,
        name: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let request = MdsRequest::GetXattr {
            caller: caller.clone(),
            ino,
            name: name.to_vec(),
        };
        match self.ask(request).await? {
            MdsResponse::Bytes(result) => result,
            other => Err(unexpected(&other)),
        }
    }

    pub async fn setxattr(
        &self,
        caller: &Caller,
        ino: InodeId,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        let op = NsOp::SetXattr {
            ino,
            name: name.to_vec(),
            value: value.to_vec(),
            flags,
        };
        self.mutate(caller, op).await.map(drop)
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
        let op = NsOp::RemoveXattr {
            ino,
            name: name.to_vec(),
        };
        self.mutate(caller, op).await.map(drop)
    }

    pub async fn access(&self, caller: &Caller, ino: InodeId, mask: u32) -> Result<(), Errno> {
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

    // ---- data operations beyond read and write ----

    /// fallocate: allocation (the size grows unless KEEP_SIZE), punching a
    /// hole (with KEEP_SIZE) and zeroing a range. Space is not reserved.
    pub async fn fallocate(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        use nix::libc::{
            FALLOC_FL_KEEP_SIZE as KEEP_SIZE, FALLOC_FL_PUNCH_HOLE as PUNCH_HOLE,
            FALLOC_FL_ZERO_RANGE as ZERO_RANGE,
        };
        let (file, inode) = self.open_file(fh)?;
        if !file.writable() {
            return Err(Errno::EBADF);
        }
        if len == 0 {
            return Err(Errno::EINVAL);
        }
        let end = data::write_end(offset, len)?;
        let zeroes = match mode & !KEEP_SIZE {
            0 => false,
            PUNCH_HOLE if mode & KEEP_SIZE != 0 => true,
            ZERO_RANGE => true,
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let _cutting = inode.io.write().await;
        let size = lock(&inode.state).size;
        if zeroes && offset < size {
            self.data
                .zero(inode.file, offset, end.min(size) - offset)
                .await?;
        }
        let grows = mode & KEEP_SIZE == 0 && end > size;
        if grows || zeroes {
            self.mark_dirty(&inode, &file, caller, grows.then_some(end));
        }
        Ok(())
    }

    /// SEEK_DATA and SEEK_HOLE.
    pub async fn lseek(&self, fh: u64, offset: u64, whence: i32) -> Result<u64, Errno> {
        let (_, inode) = self.open_file(fh)?;
        let size = lock(&inode.state).size;
        self.data.seek(inode.file, offset, size, whence).await
    }

    /// Copies up to `len` bytes between open files; returns how many.
    pub async fn copy_file_range(
        &self,
        caller: &Caller,
        (fh_in, offset_in): (u64, u64),
        (fh_out, offset_out): (u64, u64),
        len: u64,
    ) -> Result<u64, Errno> {
        let mut copied = 0;
        while copied < len {
            let chunk = (len - copied).min(COPY_CHUNK) as u32;
            let bytes = self.read(fh_in, offset_in + copied, chunk).await?;
            if bytes.is_empty() {
                break;
            }
            self.write(caller, fh_out, offset_out + copied, &bytes)
                .await?;
            copied += bytes.len() as u64;
        }
        Ok(copied)
    }
}

async fn report_dirty_periodically(vfs: Weak<Vfs>) {
    loop {
        tokio::time::sleep(DIRTY_REPORT_INTERVAL).await;
        let Some(vfs) = vfs.upgrade() else { return };
        vfs.report_all().await;
    }
}
