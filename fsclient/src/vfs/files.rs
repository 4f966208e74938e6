//! Open files and their bytes: the handle table, reads and writes, and
//! write-back.
//!
//! Reading needs a cap on the file (Shared at least: nobody else buffers
//! writes to it); writing needs Exclusive. Under Exclusive, writes are
//! buffered ([`DirtyExtents`]) and the size and mtime they produce kept in
//! the cache; the buffers go to the OSDs when a file has
//! [`WRITEBACK_CHUNK`] of them, when all files together pass
//! [`MAX_DIRTY_BYTES`] (the writer waits), on close, on a timer, and when
//! the cap is revoked; fsync waits until the bytes are durable on the OSDs
//! and the size and mtime at the MDS. Reads see buffered bytes over what
//! the OSDs hold. `O_DIRECT` writes go straight to the OSDs.
//!
//! A file this client holds a cap on (Exclusive, to write) is opened here,
//! with no MDS handle; such opens are pinned (given an MDS handle, so an
//! unlink does not delete the file under them) when the cap is revoked,
//! and before this client unlinks a name of the file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aspen_proto::caps::{CapMode, CapOp};
use aspen_proto::fs::{Attr, Caller, Timestamp, open_flags};
use aspen_proto::mds::{HandleId, NsOp, NsReply};
use aspen_proto::{Errno, InodeId};
use tokio::sync::{Notify, OwnedRwLockWriteGuard, RwLock, Semaphore};

use super::waiting::HeldPages;
use super::{Vfs, attr_reply, lock};
use crate::data::{self, FileObjects};
use crate::writeback::{DirtyExtents, SendingExtents};

/// The buffered bytes of one file that start its write-back.
pub const WRITEBACK_CHUNK: u64 = 16 << 20;
/// The buffered bytes of all files beyond which writers wait for theirs
/// to go out.
pub const MAX_DIRTY_BYTES: u64 = 256 << 20;
/// How long written bytes and sizes may stay unsent when nothing else
/// sends them.
pub const WRITEBACK_INTERVAL: Duration = Duration::from_secs(2);
/// Files written back at once (many small files closed in a row go out
/// together: the OSDs and the MDS commit them in shared batches).
pub const MAX_FLUSHES: usize = 64;
/// The most bytes copy_file_range moves per read and write.
pub const COPY_CHUNK: u64 = 4 << 20;
/// Handle releases wait this long and go to the MDS together: one commit
/// for many closes, instead of a commit per close that the next create
/// would wait behind.
pub const RELEASE_DELAY: Duration = Duration::from_millis(100);

/// Whether a background write-back also tells the MDS the size and mtime
/// the writes produced. A close does (in the background: nobody waits for
/// it, and a later fsync then finds nothing left to do); writes going out
/// in the middle (a full buffer, memory pressure) leave that to the next
/// round of reports, since more writes will move the size again: nobody
/// else can see the file without revoking the cap, which reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Report {
    Now,
    Later,
}

/// The I/O state of a file that is open here or has buffered writes.
pub(super) struct FileIo {
    pub(super) file: FileObjects,
    /// Reads and writes share it; truncation, hole punching and the
    /// revocation of the Exclusive cap take it alone.
    io: Arc<RwLock<()>>,
    state: Mutex<IoState>,
    /// One write-back at a time.
    flushing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct IoState {
    dirty: DirtyExtents,
    /// Opens made here without an MDS handle, and the handle that pins
    /// them once one was needed.
    local_opens: usize,
    pin: Option<HandleId>,
    /// Bytes a write-back is sending: reads still see them.
    in_flight: Option<Arc<SendingExtents>>,
    /// A background write-back failed: the next flush or fsync says so.
    error: Option<Errno>,
    opens: usize,
    /// A background write-back is queued or running.
    scheduled: bool,
    /// When the oldest buffered byte was written.
    dirty_since: Option<Instant>,
}

impl IoState {
    /// Opened here, and no MDS handle keeps the file for those opens.
    fn unpinned(&self) -> bool {
        self.local_opens > 0 && self.pin.is_none()
    }
}

#[derive(Clone)]
pub(super) struct OpenFile {
    pub(super) ino: InodeId,
    /// The MDS handle (none for an open made under a cap here).
    handle: Option<HandleId>,
    flags: u32,
    /// The session it was opened in.
    generation: u64,
}

impl OpenFile {
    pub(super) fn writable(&self) -> bool {
        self.flags & open_flags::O_ACCMODE != open_flags::O_RDONLY
    }
}

#[derive(Default)]
pub(super) struct Files {
    handles: HashMap<u64, OpenFile>,
    pub(super) inodes: HashMap<InodeId, Arc<FileIo>>,
    /// The last number given to an open made here (counting down from
    /// the top, clear of the MDS's handle numbers).
    last_local: u64,
    /// MDS handles closed here and not yet released, with the session
    /// generation they belong to; `release_due` once a send is scheduled.
    releasing: Vec<(u64, HandleId)>,
    release_due: bool,
}

impl Files {
    /// Whether `ino` is open or has buffered writes here.
    pub(super) fn holds(&self, ino: InodeId) -> bool {
        self.inodes.contains_key(&ino)
    }
}

/// Buffered bytes across all files.
pub(super) struct WriteBack {
    dirty: AtomicU64,
    /// Wakes writers waiting for buffered bytes to go out.
    sent: Notify,
    flushes: Semaphore,
}

impl Default for WriteBack {
    fn default() -> WriteBack {
        WriteBack {
            dirty: AtomicU64::new(0),
            sent: Notify::new(),
            flushes: Semaphore::new(MAX_FLUSHES),
        }
    }
}

impl WriteBack {
    fn add(&self, grown: i64) {
        if grown >= 0 {
            self.dirty.fetch_add(grown as u64, Ordering::AcqRel);
        } else {
            self.dirty.fetch_sub(grown.unsigned_abs(), Ordering::AcqRel);
            self.sent.notify_waiters();
        }
    }
}

impl Vfs {
    pub(super) fn file_io(&self, ino: InodeId) -> Option<Arc<FileIo>> {
        lock(&self.files).inodes.get(&ino).cloned()
    }

    /// Holds `ino`'s I/O alone (no read or write of it runs) until the
    /// guard drops; `None` when nothing of it is open or buffered here.
    pub(super) async fn io_alone(&self, ino: InodeId) -> Option<OwnedRwLockWriteGuard<()>> {
        let io = self.file_io(ino)?;
        Some(io.io.clone().write_owned().await)
    }

    /// [`Vfs::io_alone`] under an Exclusive cap on `ino`. The cap is
    /// checked again once the I/O is held: a revocation may have taken it
    /// while this waited.
    async fn alone_under_exclusive(
        &self,
        ino: InodeId,
    ) -> Result<Option<OwnedRwLockWriteGuard<()>>, Errno> {
        loop {
            self.want(ino, CapMode::Exclusive).await?;
            let alone = self.io_alone(ino).await;
            if self.exclusive_size(ino).is_some() {
                return Ok(alone);
            }
        }
    }

    /// Inodes with bytes buffered for at least `age`.
    pub(super) fn written_inodes(&self, age: Duration) -> Vec<InodeId> {
        lock(&self.files)
            .inodes
            .iter()
            .filter(|(_, io)| {
                lock(&io.state)
                    .dirty_since
                    .is_some_and(|since| since.elapsed() >= age)
            })
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Whether this client has `ino` open.
    pub(super) fn is_open(&self, ino: InodeId) -> bool {
        self.file_io(ino)
            .is_some_and(|io| lock(&io.state).opens > 0)
    }

    pub(super) fn open_file(&self, fh: u64) -> Result<(OpenFile, Arc<FileIo>), Errno> {
        let files = lock(&self.files);
        let file = files.handles.get(&fh).ok_or(Errno::EBADF)?.clone();
        if file.generation != self.session.generation() {
            // Opened in a session the MDS ended: the handle is gone.
            return Err(Errno::EIO);
        }
        let io = files.inodes.get(&file.ino).ok_or(Errno::EBADF)?.clone();
        Ok((file, io))
    }

    /// Records an open (with its MDS handle, if it has one); returns the
    /// handle number for the kernel.
    pub(super) fn register(&self, attr: &Attr, handle: Option<HandleId>, flags: u32) -> u64 {
        let mut files = lock(&self.files);
        let fh = match handle {
            Some(handle) => handle.0,
            None => {
                files.last_local = files.last_local.checked_sub(1).unwrap_or(u64::MAX);
                files.last_local
            }
        };
        files.handles.insert(
            fh,
            OpenFile {
                ino: attr.ino,
                handle,
                flags,
                generation: self.session.generation(),
            },
        );
        let io = files.inodes.entry(attr.ino).or_insert_with(|| {
            Arc::new(FileIo {
                file: FileObjects {
                    ino: attr.ino,
                    layout: attr.layout,
                },
                io: Arc::new(RwLock::new(())),
                state: Mutex::new(IoState::default()),
                flushing: tokio::sync::Mutex::new(()),
            })
        });
        let mut state = lock(&io.state);
        state.opens += 1;
        state.local_opens += usize::from(handle.is_none());
        fh
    }

    /// Opens `ino` here, without the MDS, if this client holds the cap
    /// the open needs (Exclusive to write), no revocation of it is under
    /// way, and the permission rules allow `caller` (a refusal by those
    /// rules is the open's answer). The open is recorded under the cache
    /// lock, so a revocation that starts next sees it and pins it.
    fn open_here(
        &self,
        caller: &Caller,
        ino: InodeId,
        flags: u32,
    ) -> Result<Option<(u64, Attr)>, Errno> {
        let writes = aspen_proto::perm::open_access(flags) & aspen_proto::fs::access::W_OK != 0;
        let needed = if writes {
            CapMode::Exclusive
        } else {
            CapMode::Shared
        };
        let mut cache = self.cache();
        let held = cache.cap(ino).is_some_and(|cap| cap.mode >= needed);
        if !held || cache.revoking(ino) || flags & open_flags::O_TRUNC != 0 {
            return Ok(None);
        }
        let Some(attr) = cache.attr(ino) else {
            return Ok(None);
        };
        aspen_proto::perm::check_open(&attr, caller, flags)?;
        let fh = self.register(&attr, None, flags);
        drop(cache);
        Ok(Some((fh, attr)))
    }

    /// Whether some file is open here without an MDS handle to keep it.
    pub(super) fn any_unpinned(&self) -> bool {
        lock(&self.files)
            .inodes
            .values()
            .any(|io| lock(&io.state).unpinned())
    }

    /// Whether `ino` is open here without an MDS handle to keep it.
    pub(super) fn needs_pin(&self, ino: InodeId) -> bool {
        self.file_io(ino)
            .is_some_and(|io| lock(&io.state).unpinned())
    }

    /// Keeps `pin`, the MDS handle taken for `ino`'s opens made here.
    pub(super) fn keep_pin(&self, ino: InodeId, pin: HandleId) {
        let spare = match self.file_io(ino) {
            Some(io) => {
                let mut state = lock(&io.state);
                if state.unpinned() {
                    state.pin = Some(pin);
                    None
                } else {
                    Some(pin)
                }
            }
            None => Some(pin),
        };
        if let Some(spare) = spare {
            self.release_handle(spare);
        }
    }

    /// Pins `ino`'s opens made here before this client unlinks a name of
    /// it (the MDS would delete it under them otherwise).
    pub(super) async fn pin(&self, ino: InodeId) -> Result<(), Errno> {
        if !self.needs_pin(ino) {
            return Ok(());
        }
        let reply = self.cap_call(&Caller::root(), CapOp::Pin { ino }).await?;
        match reply.result {
            Ok(NsReply::Opened { handle, .. }) => {
                self.keep_pin(ino, handle);
                Ok(())
            }
            Ok(_) => Err(Errno::EIO),
            Err(errno) => Err(errno),
        }
    }

    /// Drops an MDS handle in the background (nobody waits for it), with
    /// the others closed within [`RELEASE_DELAY`].
    fn release_handle(&self, handle: HandleId) {
        let generation = self.session.generation();
        let schedule = {
            let mut files = lock(&self.files);
            files.releasing.push((generation, handle));
            !std::mem::replace(&mut files.release_due, true)
        };
        let Some(vfs) = self.me.upgrade().filter(|_| schedule) else {
            return;
        };
        tokio::spawn(async move {
            tokio::time::sleep(RELEASE_DELAY).await;
            vfs.send_releases().await;
        });
    }

    /// Releases every waiting handle of the current session at once (the
    /// MDS ended older sessions with their handles).
    async fn send_releases(&self) {
        let generation = self.session.generation();
        let waiting = {
            let mut files = lock(&self.files);
            files.release_due = false;
            std::mem::take(&mut files.releasing)
        };
        let mut sends = tokio::task::JoinSet::new();
        for (_, handle) in waiting.into_iter().filter(|(g, _)| *g == generation) {
            let session = self.session.clone();
            sends.spawn(async move {
                let release = NsOp::Release { handle };
                if let Err(errno) = session.mutate(&Caller::root(), release).await {
                    tracing::warn!(handle = handle.0, "releasing a handle: {errno}");
                }
            });
        }
        sends.join_all().await;
    }

    /// Forgets `ino`'s I/O state once nothing holds it.
    fn forget_io_if_idle(&self, ino: InodeId) {
        let mut files = lock(&self.files);
        let idle = files.inodes.get(&ino).is_some_and(|io| {
            let state = lock(&io.state);
            state.opens == 0
                && state.dirty.is_empty()
                && state.in_flight.is_none()
                && !state.scheduled
        });
        if idle {
            files.inodes.remove(&ino);
        }
    }

    pub async fn open(
        &self,
        caller: &Caller,
        ino: InodeId,
        flags: u32,
    ) -> Result<(u64, Attr), Errno> {
        if let Some(opened) = self.open_here(caller, ino, flags)? {
            return Ok(opened);
        }
        let op = NsOp::Open { ino, flags };
        let reply = if flags & open_flags::O_TRUNC != 0 {
            self.resize(caller, ino, 0, op).await?
        } else {
            self.mutate(caller, op).await?
        };
        let Ok(NsReply::Opened { attr, handle }) = reply.result else {
            return Err(reply.result.err().unwrap_or(Errno::EIO));
        };
        let fh = self.register(&attr, Some(handle), flags);
        Ok((fh, self.shown(attr)))
    }

    /// [`Vfs::open`] when the cache answers it (a cap covers the open),
    /// without waiting.
    pub fn open_now(
        &self,
        caller: &Caller,
        ino: InodeId,
        flags: u32,
    ) -> Option<Result<(u64, Attr), Errno>> {
        self.open_here(caller, ino, flags).transpose()
    }

    /// [`Vfs::create`] when this client answers it itself, without
    /// waiting (runs within the tokio runtime: it sends in the background).
    pub fn create_now(
        &self,
        caller: &Caller,
        parent: InodeId,
        name: &[u8],
        (mode, umask, flags): (u32, u32, u32),
    ) -> Option<Result<(u64, Attr), Errno>> {
        self.create_here(caller, parent, name, (mode, umask, flags))
            .transpose()
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
        if let Some(created) = self.create_here(caller, parent, name, (mode, umask, flags))? {
            return Ok(created);
        }
        let op = NsOp::Create {
            parent,
            name: name.to_vec(),
            mode,
            umask,
            flags,
        };
        let reply = self.mutate(caller, op).await?;
        let Ok(NsReply::Opened { attr, handle }) = reply.result else {
            return Err(reply.result.err().unwrap_or(Errno::EIO));
        };
        let fh = self.register(&attr, Some(handle), flags);
        Ok((fh, self.shown(attr)))
    }

    /// Applies `op`, which sets the size of regular file `ino` to
    /// `new_size` (a truncating setattr or open), then cuts the objects
    /// past it. It takes Exclusive first (other clients send what they
    /// buffered, so the old size is known here) and holds the file's I/O
    /// throughout, so no write lands in the range while it is cut.
    pub(super) async fn resize(
        &self,
        caller: &Caller,
        ino: InodeId,
        new_size: u64,
        op: NsOp,
    ) -> Result<aspen_proto::caps::CapReply, Errno> {
        // The old size known here must be the file's.
        let cutting = self.alone_under_exclusive(ino).await?;
        let _turn = self.flush_and_report_in_turn(ino).await?;
        let cached = self.cache().attr(ino);
        let old_size = match (cached, &cutting) {
            (Some(attr), _) => attr.size,
            // With the file's I/O held under Exclusive, the attributes go
            // only with the session; and asking (after the inode's ack
            // turn) could wait for a revocation that waits for this I/O.
            (None, Some(_)) => return Err(Errno::EIO),
            (None, None) => self.getattr(ino).await?.size,
        };
        let reply = self.mutate(caller, op).await?;
        let attr = attr_reply(&reply)?;
        let file = FileObjects {
            ino,
            layout: attr.layout,
        };
        if let Err(errno) = self.data.truncate(file, new_size, old_size).await {
            if let Ok(NsReply::Opened { handle, .. }) = reply.result {
                let _ = self
                    .session
                    .mutate(&Caller::root(), NsOp::Release { handle })
                    .await;
            }
            return Err(errno);
        }
        Ok(reply)
    }

    /// Makes sure reads of `ino` may go on under a cap, for a request for
    /// which the kernel holds `held` pages from `offset` for `len` bytes.
    /// While a revocation that takes the cap away is carried out, the read
    /// waits for it and for a new cap: a page it filled meanwhile could be
    /// kept by the kernel past the revocation's page drop, with the bytes
    /// from before the write the revocation makes way for.
    async fn readable(
        &self,
        ino: InodeId,
        held: HeldPages,
        offset: u64,
        len: u64,
    ) -> Result<(), Errno> {
        loop {
            let (capped, dropping) = {
                let cache = self.cache();
                (cache.cap(ino).is_some(), cache.dropping_pages(ino))
            };
            if capped && !dropping {
                return Ok(());
            }
            let _waiting = self.waiting_requests.begin(ino, offset, len, held);
            self.ack_turns.wait_free(ino).await;
            // A revocation that had not yet taken the turn leaves the old
            // cap showing: the loop waits for it then.
            self.want(ino, CapMode::Shared).await?;
        }
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Vec<u8>, Errno> {
        self.read_holding(fh, offset, len, HeldPages::All).await
    }

    /// [`Vfs::read`] for a request for which the kernel holds `held` pages.
    async fn read_holding(
        &self,
        fh: u64,
        offset: u64,
        len: u32,
        held: HeldPages,
    ) -> Result<Vec<u8>, Errno> {
        let (file, io) = self.open_file(fh)?;
        loop {
            self.readable(file.ino, held, offset, u64::from(len))
                .await?;
            let _reading = io.io.read().await;
            let Some(attr) = self.cache().attr(file.ino) else {
                continue;
            };
            return self
                .read_bytes(&io, offset, u64::from(len), attr.size)
                .await;
        }
    }

    /// Bytes from the OSDs with the buffered ones laid over them.
    async fn read_bytes(
        &self,
        io: &FileIo,
        offset: u64,
        len: u64,
        size: u64,
    ) -> Result<Vec<u8>, Errno> {
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let (in_flight, dirty) = {
            let state = lock(&io.state);
            (
                state.in_flight.clone(),
                state.dirty.slice(offset, end - offset),
            )
        };
        let mut bytes = if dirty.covers(offset, end - offset) {
            vec![0; (end - offset) as usize]
        } else {
            self.data.read(io.file, offset, len, size).await?
        };
        if let Some(in_flight) = in_flight {
            in_flight.overlay(offset, &mut bytes);
        }
        dirty.overlay(offset, &mut bytes);
        Ok(bytes)
    }

    pub async fn write(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        bytes: &[u8],
        held: HeldPages,
    ) -> Result<u32, Errno> {
        let (file, io) = self.open_file(fh)?;
        if !file.writable() {
            return Err(Errno::EBADF);
        }
        // A failed write-back (ENOSPC, EIO) stops the writer at once.
        Vfs::take_error(&io)?;
        let direct = file.flags & open_flags::O_DIRECT != 0;
        // The kernel may hold pages of this write while it waits for a cap
        // (O_DIRECT has none).
        let held = if direct { HeldPages::None } else { held };
        let _waiting = self
            .waiting_requests
            .begin(file.ino, offset, bytes.len() as u64, held);
        loop {
            self.want(file.ino, CapMode::Exclusive).await?;
            let _writing = io.io.read().await;
            let Some((revoking, size)) = self.exclusive_size(file.ino) else {
                continue;
            };
            let offset = write_offset(&file, offset, size);
            tracing::debug!(ino = file.ino.0, offset, size, revoking, "write");
            let end = data::write_end(offset, bytes.len() as u64)?;
            // During a revocation nothing more is buffered: it must be on
            // the OSDs before the cap goes.
            if direct || revoking {
                self.data.write(io.file, offset, bytes).await?;
            } else {
                self.buffer(&io, offset, bytes);
            }
            self.cache().note_write(file.ino, end, caller);
            break;
        }
        self.after_write(file.ino, &io).await?;
        Ok(bytes.len() as u32)
    }

    /// [`Vfs::write`] without waiting, when it only buffers: the cap is
    /// Exclusive and not being revoked, nobody holds the file's I/O alone,
    /// and the client's buffers have room (runs within the tokio runtime:
    /// a write-back it starts goes on there).
    pub fn write_now(
        &self,
        caller: &Caller,
        fh: u64,
        offset: u64,
        bytes: &[u8],
    ) -> Option<Result<u32, Errno>> {
        let (file, io) = self.open_file(fh).ok()?;
        let buffered = file.writable() && file.flags & open_flags::O_DIRECT == 0;
        if !buffered || self.writeback.dirty.load(Ordering::Acquire) > MAX_DIRTY_BYTES {
            return None;
        }
        let writing = io.io.try_read().ok()?;
        let (revoking, size) = self.exclusive_size(file.ino)?;
        if revoking {
            return None;
        }
        let written = Vfs::take_error(&io).and_then(|()| {
            let offset = write_offset(&file, offset, size);
            tracing::debug!(ino = file.ino.0, offset, size, "write now");
            let end = data::write_end(offset, bytes.len() as u64)?;
            self.buffer(&io, offset, bytes);
            self.cache().note_write(file.ino, end, caller);
            Ok(bytes.len() as u32)
        });
        drop(writing);
        if lock(&io.state).dirty.bytes() >= WRITEBACK_CHUNK {
            self.schedule_flush(file.ino, Report::Later);
        }
        Some(written)
    }

    /// Whether this client holds Exclusive on `ino` (and if so, whether a
    /// revocation is under way, and the size as shown here).
    fn exclusive_size(&self, ino: InodeId) -> Option<(bool, u64)> {
        let mut cache = self.cache();
        let exclusive = cache
            .cap(ino)
            .is_some_and(|held| held.mode == CapMode::Exclusive);
        let size = cache.attr(ino).map_or(0, |attr| attr.size);
        exclusive.then(|| (cache.revoking(ino), size))
    }

    /// Adds a write to `io`'s buffer.
    fn buffer(&self, io: &FileIo, offset: u64, bytes: &[u8]) {
        let mut state = lock(&io.state);
        let before = state.dirty.bytes();
        state.dirty_since.get_or_insert_with(Instant::now);
        state.dirty.insert(offset, bytes);
        self.writeback
            .add(state.dirty.bytes() as i64 - before as i64);
    }

    /// Starts write-back of a file with enough buffered, and makes the
    /// writer wait while too much is buffered overall.
    async fn after_write(&self, ino: InodeId, io: &FileIo) -> Result<(), Errno> {
        if lock(&io.state).dirty.bytes() >= WRITEBACK_CHUNK {
            self.schedule_flush(ino, Report::Later);
        }
        while self.writeback.dirty.load(Ordering::Acquire) > MAX_DIRTY_BYTES {
            let sent = self.writeback.sent.notified();
            if lock(&io.state).dirty.is_empty() {
                // Others' bytes are over the limit: wait for some to go.
                for other in self.written_inodes(Duration::ZERO) {
                    self.schedule_flush(other, Report::Later);
                }
                let _ = tokio::time::timeout(WRITEBACK_INTERVAL, sent).await;
                continue;
            }
            self.flush_data(ino).await?;
        }
        Ok(())
    }

    /// Sends `ino`'s buffered bytes to the OSDs (those buffered when it
    /// starts); returns once they are durable.
    pub(super) async fn flush_data(&self, ino: InodeId) -> Result<(), Errno> {
        let Some(io) = self.file_io(ino) else {
            return Ok(());
        };
        let _one = io.flushing.lock().await;
        let sending = {
            let mut state = lock(&io.state);
            if state.dirty.is_empty() {
                return Ok(());
            }
            let sending = Arc::new(state.dirty.take_for_sending());
            state.dirty_since = None;
            state.in_flight = Some(sending.clone());
            sending
        };
        let sent = self.data.write_extents(io.file, sending.clone()).await;
        lock(&io.state).in_flight = None;
        self.writeback.add(-(sending.bytes() as i64));
        if let Err(errno) = sent {
            tracing::warn!("writing back inode {ino}: {errno}");
            lock(&io.state).error = Some(errno);
            return Err(errno);
        }
        Ok(())
    }

    /// Tells the MDS the size and mtime this client's writes produced.
    pub(super) async fn report(&self, ino: InodeId) -> Result<(), Errno> {
        let _turn = self.report_turns.take(ino).await;
        self.report_in_turn(ino).await
    }

    /// [`Vfs::flush_and_report`], keeping `ino`'s report turn: a size or
    /// time change made before the turn is dropped reaches the MDS before
    /// any later report of it.
    pub(super) async fn flush_and_report_in_turn(
        &self,
        ino: InodeId,
    ) -> Result<super::turns::Turn<'_>, Errno> {
        self.flush_data(ino).await?;
        let turn = self.report_turns.take(ino).await;
        self.report_in_turn(ino).await?;
        Ok(turn)
    }

    /// Buffered bytes out, then the size reported: what fsync promises.
    pub(super) async fn flush_and_report(&self, ino: InodeId) -> Result<(), Errno> {
        self.flush_data(ino).await?;
        self.report(ino).await
    }

    /// Writes `ino` back in the background (once at a time), and with
    /// [`Report::Now`] reports its size; a file with nothing buffered only
    /// has its size reported.
    pub(super) fn schedule_flush(&self, ino: InodeId, report: Report) {
        let Some(vfs) = self.me.upgrade() else {
            return;
        };
        let Some(io) = self.file_io(ino) else {
            if report == Report::Later {
                return;
            }
            tokio::spawn(async move {
                if let Err(errno) = vfs.report(ino).await {
                    tracing::warn!("reporting the size of inode {ino}: {errno}");
                }
            });
            return;
        };
        {
            let mut state = lock(&io.state);
            if state.scheduled {
                return;
            }
            state.scheduled = true;
        }
        tokio::spawn(async move {
            let permit = vfs.writeback.flushes.acquire().await;
            let flushed = match report {
                Report::Now => vfs.flush_and_report(ino).await,
                Report::Later => vfs.flush_data(ino).await,
            };
            if let Err(errno) = flushed {
                lock(&io.state).error.get_or_insert(errno);
            }
            drop(permit);
            lock(&io.state).scheduled = false;
            vfs.forget_io_if_idle(ino);
        });
    }

    /// Writes back every file and reports every size not yet reported,
    /// including those of files already written back and closed
    /// (unmount).
    pub(super) async fn flush_everything(&self) {
        let inodes: Vec<InodeId> = lock(&self.files).inodes.keys().copied().collect();
        for ino in inodes {
            if let Err(errno) = self.flush_and_report(ino).await {
                tracing::warn!("writing back inode {ino}: {errno}");
            }
        }
        let unreported = self.cache().unreported_inodes(Timestamp::new(i64::MAX, 0));
        for ino in unreported {
            if let Err(errno) = self.report(ino).await {
                tracing::warn!("reporting the size of inode {ino}: {errno}");
            }
        }
    }

    /// Throws away `ino`'s buffered bytes (the file is gone, or the
    /// session that held the cap is); with `error`, its next flush or
    /// fsync fails with it, set in the same step so an fsync never finds
    /// the bytes gone without the error.
    pub(super) fn drop_buffers(&self, ino: InodeId, error: Option<Errno>) {
        if let Some(io) = self.file_io(ino) {
            let dropped = {
                let mut state = lock(&io.state);
                state.dirty_since = None;
                if error.is_some() {
                    state.error = error;
                }
                state.dirty.take_all()
            };
            self.writeback.add(-(dropped.bytes() as i64));
        }
        self.forget_io_if_idle(ino);
    }

    /// The error a background write-back of the file met, once.
    fn take_error(io: &FileIo) -> Result<(), Errno> {
        lock(&io.state).error.take().map_or(Ok(()), Err)
    }

    /// close(2) of one descriptor: what was written goes out (in the
    /// background), and an earlier write-back failure is reported.
    /// Runs within the tokio runtime (the write-back starts there).
    pub fn flush(&self, fh: u64) -> Result<(), Errno> {
        let (file, io) = self.open_file(fh)?;
        self.schedule_flush(file.ino, Report::Now);
        Vfs::take_error(&io)
    }

    /// A close: [`Vfs::flush`], and `lock_owner`'s POSIX locks on the file
    /// go (POSIX drops a process's locks at its close of any descriptor).
    pub async fn flush_on_close(&self, fh: u64, lock_owner: u64) -> Result<(), Errno> {
        let (file, _) = self.open_file(fh)?;
        let flushed = self.flush(fh);
        let released = self.release_locks(file.ino, lock_owner).await;
        flushed.and(released)
    }

    /// [`Vfs::flush_on_close`] without waiting, when `lock_owner` holds no
    /// lock on the file (runs within the tokio runtime).
    pub fn flush_on_close_now(&self, fh: u64, lock_owner: u64) -> Option<Result<(), Errno>> {
        let file = match self.open_file(fh) {
            Ok((file, _)) => file,
            Err(errno) => return Some(Err(errno)),
        };
        if self.holds_locks(file.ino, lock_owner) {
            return None;
        }
        Some(self.flush(fh))
    }

    /// The written bytes durable on the OSDs and the size at the MDS, and
    /// the creates this client answered itself applied there (the file's
    /// own among them).
    pub async fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let (file, io) = self.open_file(fh)?;
        Vfs::take_error(&io)?;
        let flushed = self.flush_and_report(file.ino).await;
        self.settled().await;
        // The session may have ended meanwhile, losing the buffered bytes.
        Vfs::take_error(&io)?;
        flushed
    }

    /// A directory's changes durable: the creates this client answered
    /// itself are applied at the MDS (every other change already is).
    pub async fn fsyncdir(&self) {
        self.settled().await;
    }

    /// The last close of a handle; runs within the tokio runtime (what
    /// is left to write back or discard goes on there). `flock_owner`'s
    /// locks on the file go too: the handle was its owner (flock locks
    /// belong to an open file description and last until its last close).
    pub fn release(&self, fh: u64, flock_owner: Option<u64>) -> Result<(), Errno> {
        // The handle leaves the table first, so of two racing releases of
        // it (the kernel's and unmount's) only one goes on.
        let (file, io) = {
            let mut files = lock(&self.files);
            let file = files.handles.remove(&fh).ok_or(Errno::EBADF)?;
            let io = files.inodes.get(&file.ino).cloned().ok_or(Errno::EBADF)?;
            (file, io)
        };
        let (last, unpinned) = {
            let mut state = lock(&io.state);
            state.opens -= 1;
            state.local_opens -= usize::from(file.handle.is_none());
            let unpinned = match state.local_opens {
                0 => state.pin.take(),
                _ => None,
            };
            (state.opens == 0, unpinned)
        };
        let unlinked = self.cache().attr(file.ino).is_some_and(|a| a.nlink == 0);
        if last && unlinked {
            // Nobody can reach its bytes any more: none go out after it.
            if let Some(vfs) = self.me.upgrade() {
                tokio::spawn(async move {
                    let _one = io.flushing.lock().await;
                    vfs.discard(file.ino);
                });
            }
        } else if last {
            self.schedule_flush(file.ino, Report::Now);
        }
        self.forget_io_if_idle(file.ino);
        if file.generation != self.session.generation() {
            return Ok(());
        }
        if let Some(owner) = flock_owner.filter(|owner| self.holds_locks(file.ino, *owner))
            && let Some(vfs) = self.me.upgrade()
        {
            let ino = file.ino;
            tokio::spawn(async move {
                if let Err(error) = vfs.release_locks(ino, owner).await {
                    tracing::warn!(?ino, %error, "releasing a closed file's flock failed");
                }
            });
        }
        // Nobody waits for the MDS to drop the handles: the close is done.
        for handle in file.handle.into_iter().chain(unpinned) {
            self.release_handle(handle);
        }
        Ok(())
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
        let (file, io) = self.open_file(fh)?;
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
        let _cutting = self.alone_under_exclusive(file.ino).await?;
        // Buffered bytes in the range must not land over the zeros.
        self.flush_data(file.ino).await?;
        let size = self.cache().attr(file.ino).map_or(0, |attr| attr.size);
        if zeroes && offset < size {
            self.data
                .zero(io.file, offset, end.min(size) - offset)
                .await?;
        }
        let grows = mode & KEEP_SIZE == 0 && end > size;
        if grows || zeroes {
            let end = if grows { end } else { size };
            self.cache().note_write(file.ino, end, caller);
        }
        Ok(())
    }

    /// SEEK_DATA and SEEK_HOLE.
    pub async fn lseek(&self, fh: u64, offset: u64, whence: i32) -> Result<u64, Errno> {
        let (file, io) = self.open_file(fh)?;
        self.readable(file.ino, HeldPages::None, offset, 0).await?;
        self.flush_data(file.ino).await?;
        let size = self.cache().attr(file.ino).map_or(0, |attr| attr.size);
        self.data.seek(io.file, offset, size, whence).await
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
            let bytes = self
                .read_holding(fh_in, offset_in + copied, chunk, HeldPages::None)
                .await?;
            if bytes.is_empty() {
                break;
            }
            self.write(caller, fh_out, offset_out + copied, &bytes, HeldPages::None)
                .await?;
            copied += bytes.len() as u64;
        }
        Ok(copied)
    }
}

/// Where a write to `file` at `offset` lands: with O_APPEND, at the end.
fn write_offset(file: &OpenFile, offset: u64, size: u64) -> u64 {
    if file.flags & open_flags::O_APPEND != 0 {
        size
    } else {
        offset
    }
}
