//! Open handles: open, create, release, and the end of a session. An
//! inode unlinked while open stays (as a stray) until its last handle goes.

use aspen_proto::fs::{Attr, FileType, mode, open_flags};
use aspen_proto::{Errno, InodeId};
use rusqlite::{Connection, OptionalExtension, params};

use super::store::{self, NEXT_HANDLE};
use super::{HandleId, NsReply, OpContext, OpResult, SessionId, create, perm};
use crate::sql::CachedStatements;

/// Records a handle and applies `O_TRUNC`.
fn register(conn: &Connection, ctx: &OpContext, mut attr: Attr, flags: u32) -> OpResult<NsReply> {
    // As for setattr, the client cuts the data; the high water mark stays.
    if flags & open_flags::O_TRUNC != 0 && attr.kind == FileType::Regular {
        attr.size = 0;
        attr.mtime = ctx.now;
        attr.ctime = ctx.now;
        if !ctx.caller.is_root() {
            attr.perm = perm::drop_privileges(attr.kind, attr.perm);
        }
        store::save(conn, &attr)?;
    }
    let handle = new_handle(conn, ctx, attr.ino, flags)?;
    Ok(NsReply::Opened { attr, handle })
}

/// A new handle of the requesting session on `ino`.
fn new_handle(conn: &Connection, ctx: &OpContext, ino: InodeId, flags: u32) -> OpResult<HandleId> {
    let handle = HandleId(store::next_counter(conn, NEXT_HANDLE)?);
    conn.execute_cached(
        "INSERT INTO handles (handle, session, ino, flags) VALUES (?1, ?2, ?3, ?4)",
        params![handle.0 as i64, ctx.session.0 as i64, ino.0 as i64, flags],
    )?;
    Ok(handle)
}

pub(super) fn open(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    flags: u32,
) -> OpResult<NsReply> {
    let attr = store::load(conn, ino)?;
    perm::check_open(&attr, &ctx.caller, flags)?;
    register(conn, ctx, attr, flags)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn create(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
    mode_bits: u32,
    umask: u32,
    flags: u32,
) -> OpResult<NsReply> {
    aspen_proto::fs::validate_name(name)?;
    let dir = store::load(conn, parent)?;
    perm::check_search(&dir, &ctx.caller)?;
    if let Some(existing) = store::lookup(conn, parent, name)? {
        if flags & open_flags::O_EXCL != 0 {
            return Err(Errno::EEXIST.into());
        }
        return open(conn, ctx, existing, flags);
    }
    let regular = (mode_bits & !mode::S_IFMT) | mode::S_IFREG;
    let attr = create::mknod(conn, ctx, parent, name, regular, umask, 0)?;
    // The creator may use the new file whatever mode it was given.
    register(conn, ctx, attr, flags & !open_flags::O_TRUNC)
}

/// A handle on `ino` for a session that has it open without one (it
/// opened it under its cap, and now the inode must outlive an unlink until
/// it closes it): no permission check, the session must hold a cap on it.
pub(super) fn pin(conn: &Connection, ctx: &OpContext, ino: InodeId) -> OpResult<HandleId> {
    new_handle(conn, ctx, ino, 0)
}

/// The inode and open flags of `handle`, which this session must own
/// (`EBADF` otherwise).
fn own_handle(conn: &Connection, ctx: &OpContext, handle: HandleId) -> OpResult<(InodeId, u32)> {
    let row: Option<(i64, i64, u32)> = conn
        .query_row_cached(
            "SELECT session, ino, flags FROM handles WHERE handle = ?1",
            [handle.0 as i64],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        Some((session, ino, flags)) if session as u64 == ctx.session.0 => {
            Ok((InodeId(ino as u64), flags))
        }
        _ => Err(Errno::EBADF.into()),
    }
}

/// Drops a handle; the session that opened it must release it.
pub(super) fn release(conn: &Connection, ctx: &OpContext, handle: HandleId) -> OpResult<()> {
    let (ino, _) = own_handle(conn, ctx, handle)?;
    conn.execute_cached("DELETE FROM handles WHERE handle = ?1", [handle.0 as i64])?;
    forget_if_stray(conn, ino)
}

/// The inode behind `handle`, which this session opened for writing.
pub(super) fn writable_handle(
    conn: &Connection,
    ctx: &OpContext,
    handle: HandleId,
) -> OpResult<InodeId> {
    match own_handle(conn, ctx, handle)? {
        (ino, flags) if flags & open_flags::O_ACCMODE != open_flags::O_RDONLY => Ok(ino),
        _ => Err(Errno::EBADF.into()),
    }
}

/// Drops every handle and cap of `session`.
pub(super) fn end_session(conn: &Connection, session: SessionId) -> OpResult<()> {
    let mut statement = conn.prepare("SELECT DISTINCT ino FROM handles WHERE session = ?1")?;
    let inodes: Vec<i64> = statement
        .query_map([session.0 as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    conn.execute_cached("DELETE FROM handles WHERE session = ?1", [session.0 as i64])?;
    conn.execute_cached(
        "DELETE FROM reserved_inodes WHERE session = ?1",
        [session.0 as i64],
    )?;
    let inodes: Vec<InodeId> = inodes.into_iter().map(|ino| InodeId(ino as u64)).collect();
    for ino in &inodes {
        forget_if_stray(conn, *ino)?;
    }
    super::caps::end_session(conn, session, &inodes)
}

fn forget_if_stray(conn: &Connection, ino: InodeId) -> OpResult<()> {
    match store::load(conn, ino) {
        Ok(attr) => store::release_if_unlinked(conn, &attr),
        Err(super::OpError::Errno(Errno::ENOENT)) => Ok(()),
        Err(error) => Err(error),
    }
}
