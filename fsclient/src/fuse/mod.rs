//! The FUSE frontend: translates each kernel request one to one into a
//! [`Vfs`] call. A request the client answers without waiting (a lookup,
//! getattr or open the cache covers, a create or unlink it makes itself,
//! a buffered write, a close) is answered on the thread that read it;
//! every other request runs as its own task on the tokio runtime, so one
//! slow request never stalls the others; the reply travels with the task.
//!
//! Caching: directory entries are cached by the client under its caps,
//! not by the kernel ([`ATTR_TTL`] is zero: a revocation then never has
//! to wait on the kernel's directory locks). The kernel keeps an inode's
//! attributes for [`HELD_ATTR_TTL`] when a lookup or getattr is answered
//! under a cap on it, and file pages across opens (`keep_cache`); when a
//! cap goes, the client has the kernel drop both (`inval_inode`, which
//! takes no directory lock) before it acknowledges. An answer the kernel
//! was still waiting for then is not kept either: the kernel discards
//! attributes from a request older than the invalidation. `O_DIRECT`
//! opens bypass the page cache.

mod convert;
mod signals;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aspen_proto::Errno;
use aspen_proto::fs::{Caller, SetAttr};
use aspen_proto::lock::LockKind;
use fuser::{
    AccessFlags, BackgroundSession, Config, CopyFileRangeFlags, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, SessionACL,
    TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;

use crate::vfs::{HeldPages, Vfs};
use convert::{caller_of, errno, file_attr, file_type, ino, set_time};

/// How long the kernel may trust an attribute or a directory entry (the
/// client answers from its own cache instead).
pub const ATTR_TTL: Duration = Duration::ZERO;
/// How long the kernel may keep attributes answered under a cap (the
/// cap's loss drops them sooner): a `stat` is then one lookup, not a
/// lookup and a getattr.
pub const HELD_ATTR_TTL: Duration = Duration::from_secs(1);
/// The largest write the kernel sends in one request.
pub const MAX_WRITE: u32 = 1 << 20;
/// The kernel's readahead window on the mount: one default object, sent
/// as several concurrent reads of at most [`MAX_WRITE`] bytes.
pub const READAHEAD_BYTES: u64 = 4 << 20;
/// Kernel threads reading requests (the work itself runs on tokio).
pub const READER_THREADS: usize = 2;
/// Requests the kernel keeps in flight in the background (reads ahead),
/// above its default of 16: reads that wait for a cap during a revocation
/// hold theirs, and one the kernel queues beyond the limit holds its
/// pages locked where the client cannot see them (`vfs::waiting`).
pub const MAX_BACKGROUND: u16 = 64;

/// How to mount.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    /// Let users other than the mounter in (`allow_other`).
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits too.
    pub default_permissions: bool,
    pub read_only: bool,
    /// Shown as the source in /proc/mounts.
    pub source: String,
}

/// Mounts `vfs` at `mountpoint`; requests are served until the returned
/// session is unmounted or dropped.
pub fn mount(
    vfs: Arc<Vfs>,
    runtime: Handle,
    mountpoint: &Path,
    options: &MountOptions,
) -> std::io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(options.source.clone()),
        MountOption::Subtype("aspen".into()),
        MountOption::Dev,
        MountOption::Suid,
    ];
    if options.default_permissions {
        config.mount_options.push(MountOption::DefaultPermissions);
    }
    config.mount_options.push(if options.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(READER_THREADS);
    config.clone_fd = true;
    let session = fuser::spawn_mount(
        AspenFuse {
            vfs: vfs.clone(),
            runtime,
        },
        mountpoint,
        &config,
    )?;
    let notifier = session.notifier();
    vfs.set_invalidator(Box::new(move |ino, bytes| {
        if bytes.is_empty() {
            return;
        }
        // The kernel reads a length of 0 as "to the end of the file".
        let len = match bytes.end {
            u64::MAX => 0,
            end => i64::try_from(end - bytes.start).unwrap_or(0),
        };
        let offset = i64::try_from(bytes.start).unwrap_or(i64::MAX);
        if let Err(error) = notifier.inval_inode(INodeNo(ino.0), offset, len) {
            tracing::debug!(%error, ino = ino.0, "the kernel kept no pages to drop");
        }
    }));
    widen_readahead(mountpoint);
    Ok(session)
}

/// Sets the mount's readahead to [`READAHEAD_BYTES`] (the kernel starts
/// FUSE mounts at 128 KiB, which leaves sequential reads waiting on one
/// round trip at a time). Only root may; others keep the default.
fn widen_readahead(mountpoint: &Path) {
    let Some((major, minor)) = mounted_device(mountpoint) else {
        return;
    };
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(error) = std::fs::write(&knob, (READAHEAD_BYTES / 1024).to_string()) {
        tracing::debug!(%error, knob, "the readahead stays at the kernel's default");
    }
}

struct AspenFuse {
    vfs: Arc<Vfs>,
    runtime: Handle,
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl AspenFuse {
    /// Runs `work` as its own task.
    /// Runs a VFS call that answers without waiting, here, on the thread
    /// that read the request (within the runtime: tasks it starts go
    /// there).
    fn answer_here<T>(&self, call: impl FnOnce(&Vfs) -> T) -> T {
        let _runtime = self.runtime.enter();
        call(&self.vfs)
    }

    fn spawn<F>(&self, work: impl FnOnce(Arc<Vfs>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(work(self.vfs.clone()));
    }
}

fn reply_entry(reply: ReplyEntry, result: Result<aspen_proto::fs::Attr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&ATTR_TTL, &file_attr(&attr), Generation(attr.generation)),
        Err(e) => reply.error(errno(e)),
    }
}

/// How long the kernel may keep `attr`, decided after it was read (see
/// [`Vfs::attrs_held`]).
fn attr_ttl(vfs: &Vfs, attr: &aspen_proto::fs::Attr) -> Duration {
    if vfs.attrs_held(attr.ino) {
        HELD_ATTR_TTL
    } else {
        ATTR_TTL
    }
}

/// A lookup's answer: the entry is not kept, its attributes may be.
fn reply_looked_up(vfs: &Vfs, reply: ReplyEntry, result: Result<aspen_proto::fs::Attr, Errno>) {
    match result {
        Ok(attr) => reply.entry_with_ttls(
            &attr_ttl(vfs, &attr),
            &ATTR_TTL,
            &file_attr(&attr),
            Generation(attr.generation),
        ),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_written(reply: ReplyWrite, result: Result<u32, Errno>) {
    match result {
        Ok(written) => reply.written(written),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_opened(reply: ReplyOpen, result: Result<(u64, aspen_proto::fs::Attr), Errno>, flags: u32) {
    match result {
        Ok((fh, _)) => reply.opened(FileHandle(fh), fopen_flags(flags)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_created(
    reply: ReplyCreate,
    result: Result<(u64, aspen_proto::fs::Attr), Errno>,
    flags: u32,
) {
    match result {
        Ok((fh, attr)) => reply.created(
            &ATTR_TTL,
            &file_attr(&attr),
            Generation(attr.generation),
            FileHandle(fh),
            fopen_flags(flags),
        ),
        Err(e) => reply.error(errno(e)),
    }
}

/// A kernel lock type: shared, exclusive, or `None` to unlock.
fn lock_kind(typ: i32) -> Result<Option<LockKind>, ()> {
    match typ {
        nix::libc::F_RDLCK => Ok(Some(LockKind::Shared)),
        nix::libc::F_WRLCK => Ok(Some(LockKind::Exclusive)),
        nix::libc::F_UNLCK => Ok(None),
        _ => Err(()),
    }
}

fn lock_type(kind: LockKind) -> i32 {
    match kind {
        LockKind::Shared => nix::libc::F_RDLCK,
        LockKind::Exclusive => nix::libc::F_WRLCK,
    }
}

fn reply_empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, bytes: Result<Vec<u8>, Errno>) {
    match bytes {
        Ok(bytes) if size == 0 => reply.size(bytes.len() as u32),
        Ok(bytes) if bytes.len() > size as usize => reply.error(fuser::Errno::ERANGE),
        Ok(bytes) => reply.data(&bytes),
        Err(e) => reply.error(errno(e)),
    }
}

/// Open flags the kernel passes, as the MDS wants them.
fn open_flags(flags: OpenFlags) -> u32 {
    flags.0 as u32
}

/// Pages cached under earlier opens stay valid: a lost cap drops them.
fn fopen_flags(flags: u32) -> FopenFlags {
    if flags & aspen_proto::fs::open_flags::O_DIRECT != 0 {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::FOPEN_KEEP_CACHE
    }
}

impl Filesystem for AspenFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_background(MAX_BACKGROUND);
        let _ = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS);
        // fcntl and flock locks go to the MDS, so they hold across clients.
        // The kernel sends a flock as a lock on the whole file whose owner
        // is the open file description, and fuser does not pass on the flag
        // that tells it from an fcntl lock: as on NFS, the two kinds are
        // one family here, so a flock and an fcntl lock on one file conflict.
        let _ = config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS);
        let _ = config.add_capabilities(InitFlags::FUSE_FLOCK_LOCKS);
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (caller, name) = (caller_of(req), name_bytes(name));
        if let Some(found) = self.vfs.lookup_now(&caller, ino(parent), &name) {
            return reply_looked_up(&self.vfs, reply, found);
        }
        self.spawn(|vfs| async move {
            let found = vfs.lookup(&caller, ino(parent), &name).await;
            reply_looked_up(&vfs, reply, found)
        });
    }

    fn forget(&self, _req: &Request, node: INodeNo, lookups: u64) {
        self.vfs.forget(ino(node), lookups);
    }

    fn getattr(&self, _req: &Request, node: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(attr) = self.vfs.getattr_now(ino(node)) {
            return reply.attr(&attr_ttl(&self.vfs, &attr), &file_attr(&attr));
        }
        self.spawn(|vfs| async move {
            match vfs.getattr(ino(node)).await {
                Ok(attr) => reply.attr(&attr_ttl(&vfs, &attr), &file_attr(&attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        node: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let caller = caller_of(req);
        let changes = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ..SetAttr::default()
        };
        self.spawn(|vfs| async move {
            match vfs
                .setattr(&caller, ino(node), changes, fh.map(|f| f.0))
                .await
            {
                Ok(attr) => reply.attr(&ATTR_TTL, &file_attr(&attr)),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, node: INodeNo, reply: ReplyData) {
        self.spawn(|vfs| async move {
            match vfs.readlink(ino(node)).await {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let (caller, name) = (caller_of(req), name_bytes(name));
        self.spawn(|vfs| async move {
            let result = vfs
                .mknod(&caller, ino(parent), &name, mode, umask, u64::from(rdev))
                .await;
            reply_entry(reply, result)
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (caller, name) = (caller_of(req), name_bytes(name));
        self.spawn(|vfs| async move {
            reply_entry(
                reply,
                vfs.mkdir(&caller, ino(parent), &name, mode, umask).await,
            )
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (caller, name) = (caller_of(req), name_bytes(name));
        if let Some(result) = self.answer_here(|vfs| vfs.unlink_now(&caller, ino(parent), &name)) {
            return reply_empty(reply, result);
        }
        self.spawn(|vfs| async move {
            reply_empty(reply, vfs.unlink(&caller, ino(parent), &name).await)
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (caller, name) = (caller_of(req), name_bytes(name));
        self.spawn(|vfs| async move {
            reply_empty(reply, vfs.rmdir(&caller, ino(parent), &name).await)
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (caller, name) = (caller_of(req), name_bytes(link_name));
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(|vfs| async move {
            reply_entry(
                reply,
                vfs.symlink(&caller, ino(parent), &name, &target).await,
            )
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let caller = caller_of(req);
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        self.spawn(|vfs| async move {
            let from = (ino(parent), name.as_slice());
            let to = (ino(newparent), newname.as_slice());
            reply_empty(reply, vfs.rename(&caller, from, to, flags.bits()).await)
        });
    }

    fn link(
        &self,
        req: &Request,
        node: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (caller, name) = (caller_of(req), name_bytes(newname));
        self.spawn(|vfs| async move {
            reply_entry(
                reply,
                vfs.link(&caller, ino(node), ino(newparent), &name).await,
            )
        });
    }

    fn open(&self, req: &Request, node: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let caller = caller_of(req);
        let flags = open_flags(flags);
        if let Some(opened) = self.vfs.open_now(&caller, ino(node), flags) {
            return reply_opened(reply, opened, flags);
        }
        self.spawn(|vfs| async move {
            reply_opened(reply, vfs.open(&caller, ino(node), flags).await, flags)
        });
    }

    fn read(
        &self,
        _req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(|vfs| async move {
            match vfs.read(fh.0, offset, size).await {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let caller = Caller::new(req.uid(), req.gid(), Vec::new());
        if let Some(result) = self.answer_here(|vfs| vfs.write_now(&caller, fh.0, offset, data)) {
            return reply_written(reply, result);
        }
        // A write-back of a shared mapping's dirty pages keeps them all
        // under write-back until answered; a write(2) only its last page.
        let held = if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) {
            HeldPages::All
        } else {
            HeldPages::Last
        };
        let data = data.to_vec();
        self.spawn(|vfs| async move {
            reply_written(reply, vfs.write(&caller, fh.0, offset, &data, held).await)
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if let Some(result) = self.answer_here(|vfs| vfs.flush_on_close_now(fh.0, lock_owner.0)) {
            return reply_empty(reply, result);
        }
        self.spawn(|vfs| async move {
            reply_empty(reply, vfs.flush_on_close(fh.0, lock_owner.0).await)
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        node: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let Ok(Some(kind)) = lock_kind(typ) else {
            return reply.error(fuser::Errno::EINVAL);
        };
        self.spawn(move |vfs| async move {
            match vfs
                .getlk(ino(node), (lock_owner.0, pid), kind, (start, end))
                .await
            {
                Ok(Some(held)) => {
                    reply.locked(held.start, held.end, lock_type(held.kind), held.pid)
                }
                Ok(None) => reply.locked(start, end, nix::libc::F_UNLCK, 0),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        node: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let Ok(kind) = lock_kind(typ) else {
            return reply.error(fuser::Errno::EINVAL);
        };
        // fuser answers FUSE_INTERRUPT with ENOSYS, so the kernel waits for
        // this answer even when the caller gets a signal: the wait looks
        // at the calling thread's pending signals itself.
        let thread = req.pid();
        self.spawn(move |vfs| async move {
            let owner = (lock_owner.0, pid);
            let interrupted = || signals::pending(thread);
            let result = vfs
                .setlk(ino(node), owner, kind, (start, end), sleep, interrupted)
                .await;
            reply_empty(reply, result)
        });
    }

    fn release(
        &self,
        _req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        flock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let flock_owner = flock_owner.map(|owner| owner.0);
        reply_empty(
            reply,
            self.answer_here(|vfs| vfs.release(fh.0, flock_owner)),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|vfs| async move { reply_empty(reply, vfs.fsync(fh.0).await) });
    }

    fn opendir(&self, req: &Request, node: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let caller = caller_of(req);
        self.spawn(|vfs| async move {
            match vfs.opendir(&caller, ino(node)).await {
                Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdir(
        &self,
        req: &Request,
        node: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let caller = caller_of(req);
        self.spawn(|vfs| async move {
            match vfs.readdir(&caller, ino(node), offset).await {
                Ok(entries) => {
                    for entry in entries {
                        let full = reply.add(
                            INodeNo(entry.ino.0),
                            entry.offset,
                            file_type(entry.kind),
                            OsStr::from_bytes(&entry.name),
                        );
                        if full {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn readdirplus(
        &self,
        req: &Request,
        node: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let caller = caller_of(req);
        self.spawn(|vfs| async move {
            match vfs.readdirplus(&caller, ino(node), offset).await {
                Ok(entries) => {
                    for (entry, attr) in entries {
                        let full = reply.add(
                            INodeNo(entry.ino.0),
                            entry.offset,
                            OsStr::from_bytes(&entry.name),
                            &ATTR_TTL,
                            &file_attr(&attr),
                            Generation(attr.generation),
                        );
                        if full {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _node: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(|vfs| async move {
            vfs.fsyncdir().await;
            reply.ok();
        });
    }

    /// No file here is a terminal or takes device controls: ENOTTY, the
    /// answer `isatty` and friends expect (quietly: programs ask often).
    fn ioctl(
        &self,
        _req: &Request,
        _node: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOTTY);
    }

    fn releasedir(
        &self,
        _req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.vfs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _node: INodeNo, reply: ReplyStatfs) {
        self.spawn(|vfs| async move {
            match vfs.statfs().await {
                Ok(s) => reply.statfs(
                    s.blocks,
                    s.blocks_free,
                    s.blocks_available,
                    s.files,
                    s.files_free,
                    s.block_size,
                    s.name_max,
                    s.block_size,
                ),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn setxattr(
        &self,
        req: &Request,
        node: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let (caller, name, value) = (caller_of(req), name_bytes(name), value.to_vec());
        self.spawn(|vfs| async move {
            let result = vfs
                .setxattr(&caller, ino(node), &name, &value, flags as u32)
                .await;
            reply_empty(reply, result)
        });
    }

    fn getxattr(&self, req: &Request, node: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if let Some(answer) = self.vfs.getxattr_now(ino(node), name.as_bytes()) {
            return reply_xattr(reply, size, answer);
        }
        let (caller, name) = (caller_of(req), name_bytes(name));
        self.spawn(|vfs| async move {
            reply_xattr(reply, size, vfs.getxattr(&caller, ino(node), &name).await)
        });
    }

    fn listxattr(&self, req: &Request, node: INodeNo, size: u32, reply: ReplyXattr) {
        let caller = caller_of(req);
        self.spawn(|vfs| async move {
            let listed = vfs.listxattr(&caller, ino(node)).await.map(|names| {
                names
                    .into_iter()
                    .flat_map(|mut name| {
                        name.push(0);
                        name
                    })
                    .collect()
            });
            reply_xattr(reply, size, listed)
        });
    }

    fn removexattr(&self, req: &Request, node: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (caller, name) = (caller_of(req), name_bytes(name));
        self.spawn(|vfs| async move {
            reply_empty(reply, vfs.removexattr(&caller, ino(node), &name).await)
        });
    }

    fn access(&self, req: &Request, node: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let caller = caller_of(req);
        self.spawn(|vfs| async move {
            reply_empty(
                reply,
                vfs.access(&caller, ino(node), mask.bits() as u32).await,
            )
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (caller, name) = (caller_of(req), name_bytes(name));
        let flags = flags as u32;
        let answered = self
            .answer_here(|vfs| vfs.create_now(&caller, ino(parent), &name, (mode, umask, flags)));
        if let Some(result) = answered {
            return reply_created(reply, result, flags);
        }
        self.spawn(|vfs| async move {
            let result = vfs
                .create(&caller, ino(parent), &name, mode, umask, flags)
                .await;
            reply_created(reply, result, flags)
        });
    }

    fn fallocate(
        &self,
        req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let caller = caller_of(req);
        self.spawn(|vfs| async move {
            reply_empty(
                reply,
                vfs.fallocate(&caller, fh.0, offset, length, mode).await,
            )
        });
    }

    fn lseek(
        &self,
        _req: &Request,
        _node: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.spawn(|vfs| async move {
            let Ok(offset) = u64::try_from(offset) else {
                return reply.error(fuser::Errno::EINVAL);
            };
            match vfs.lseek(fh.0, offset, whence).await {
                Ok(position) => reply.offset(position as i64),
                Err(e) => reply.error(errno(e)),
            }
        });
    }

    fn copy_file_range(
        &self,
        req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let caller = Caller::new(req.uid(), req.gid(), Vec::new());
        // The kernel reports at most u32::MAX bytes per call.
        let len = len.min(u64::from(u32::MAX));
        self.spawn(|vfs| async move {
            let result = vfs
                .copy_file_range(&caller, (fh_in.0, offset_in), (fh_out.0, offset_out), len)
                .await;
            match result {
                Ok(copied) => reply.written(copied as u32),
                Err(e) => reply.error(errno(e)),
            }
        });
    }
}

/// Whether a FUSE filesystem is mounted at `mountpoint`.
pub fn is_mounted(mountpoint: &Path) -> bool {
    mounted_device(mountpoint).is_some()
}

/// Where the kernel's FUSE control filesystem (fusectl) lists the
/// connections, one directory per mount.
const FUSE_CONNECTIONS: &str = "/sys/fs/fuse/connections";

/// A FUSE mount's connection to the kernel, found while the mount is still
/// at its path: it outlives a lazy unmount for as long as the mount has
/// users.
#[derive(Clone, Copy, Debug)]
pub struct KernelConnection {
    device: (u32, u32),
}

/// The kernel connection of the FUSE mount at `mountpoint`.
pub fn kernel_connection(mountpoint: &Path) -> Option<KernelConnection> {
    mounted_device(mountpoint).map(|device| KernelConnection { device })
}

impl KernelConnection {
    /// Ends the connection: the server's reads of the device end and every
    /// user of the mount sees ENOTCONN. Mounts fusectl when it is not.
    pub fn abort(self) -> std::io::Result<()> {
        let (major, minor) = self.device;
        // fusectl names a connection by the kernel's own dev_t encoding.
        let name = (u64::from(major) << 20) | u64::from(minor);
        let connections = Path::new(FUSE_CONNECTIONS);
        let abort = connections.join(name.to_string()).join("abort");
        let unmounted = std::fs::read_dir(connections).is_ok_and(|mut dir| dir.next().is_none());
        if unmounted {
            use nix::mount::{MsFlags, mount};
            mount(
                Some("fusectl"),
                connections,
                Some("fusectl"),
                MsFlags::empty(),
                None::<&str>,
            )
            .map_err(std::io::Error::from)?;
        }
        std::fs::write(abort, "1")
    }
}

/// The device numbers of the FUSE mount at `mountpoint` (the topmost, if
/// several are stacked there), from the kernel's mount table. Nothing here
/// looks inside the mount: a `stat` of it is a request to its server, which
/// may be this very process, and a dead server's mount cannot be resolved
/// at all (so its parent is).
fn mounted_device(mountpoint: &Path) -> Option<(u32, u32)> {
    let (parent, name) = (mountpoint.parent()?, mountpoint.file_name()?);
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let target = parent.canonicalize().ok()?.join(name);
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    fuse_device_in_mountinfo(&table, &target)
}

/// The device numbers of the last FUSE mount at `target` in a
/// `/proc/PID/mountinfo` table.
fn fuse_device_in_mountinfo(table: &str, target: &Path) -> Option<(u32, u32)> {
    table.lines().rev().find_map(|line| {
        let (mount, source) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let (device, point) = (fields.get(2)?, fields.get(4)?);
        let kind = source.split(' ').next()?;
        if !kind.starts_with("fuse") || unescape_mount_path(point) != target {
            return None;
        }
        let (major, minor) = device.split_once(':')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    })
}

/// A path as the kernel's mount tables write it: space, tab, newline and
/// backslash as three-digit octal escapes (`\040`).
fn unescape_mount_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut path = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = bytes
            .get(at + 1..at + 4)
            .filter(|digits| bytes[at] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match escaped {
            Some(byte) => {
                path.push(byte);
                at += 4;
            }
            None => {
                path.push(bytes[at]);
                at += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(path))
}

/// Unmounts `mountpoint`: cleanly if it is idle, lazily (detached, gone
/// once its last user leaves) if it is busy; through `fusermount3` when
/// this process may not unmount itself.
pub fn unmount(mountpoint: &Path) -> std::io::Result<()> {
    use nix::errno::Errno as Sys;
    use nix::mount::{MntFlags, umount2};
    match umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Sys::EBUSY) => umount2(mountpoint, MntFlags::MNT_DETACH).map_err(std::io::Error::from),
        Err(Sys::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(mountpoint)
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("fusermount3 -u: {status}")))
            }
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
41 22 0:44 / /tmp/a\\040b rw,nosuid,nodev,relatime shared:20 - fuse.aspen aspen:f1 rw,user_id=0,group_id=0
42 22 0:45 / /tmp/plain rw,relatime shared:21 - tmpfs tmpfs rw
43 41 0:46 / /tmp/a\\040b rw,relatime shared:22 - fuse aspen:f2 rw,user_id=0,group_id=0
";

    #[test]
    fn the_topmost_fuse_mount_at_a_path_gives_its_device() {
        let device = fuse_device_in_mountinfo(MOUNTINFO, Path::new("/tmp/a b"));
        assert_eq!(device, Some((0, 46)));
    }

    #[test]
    fn other_filesystems_and_paths_are_not_fuse_mounts() {
        assert_eq!(
            fuse_device_in_mountinfo(MOUNTINFO, Path::new("/tmp/plain")),
            None
        );
        assert_eq!(fuse_device_in_mountinfo(MOUNTINFO, Path::new("/")), None);
        assert_eq!(
            fuse_device_in_mountinfo(MOUNTINFO, Path::new("/tmp/a\\040b")),
            None
        );
        assert_eq!(
            fuse_device_in_mountinfo("garbage\n - \n", Path::new("/")),
            None
        );
    }

    #[test]
    fn mount_table_escapes_are_undone() {
        assert_eq!(
            unescape_mount_path("/a\\040b\\011c\\134d"),
            Path::new("/a b\tc\\d")
        );
        assert_eq!(unescape_mount_path("/a\\9zz\\"), Path::new("/a\\9zz\\"));
        assert_eq!(unescape_mount_path("/a\\+12"), Path::new("/a\\+12"));
    }
}
