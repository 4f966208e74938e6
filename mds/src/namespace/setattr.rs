//! setattr: chmod, chown, truncate and utimes, with their permission rules.

use aspen_proto::caps::Flushed;
use aspen_proto::fs::{Attr, Caller, FileType, SetAttr, TimeSet, access};
use aspen_proto::layout::MAX_FILE_SIZE;
use aspen_proto::{Errno, InodeId};
use rusqlite::Connection;

use super::{HandleId, OpContext, OpResult, open, perm, store};

/// Checks every requested change before any is made.
fn check(attr: &Attr, caller: &Caller, changes: &SetAttr) -> OpResult<()> {
    if changes.mode.is_some() {
        perm::check_owner(attr, caller)?;
    }
    if changes.uid.is_some() || changes.gid.is_some() {
        perm::check_chown(attr, caller, changes.uid, changes.gid)?;
    }
    if let Some(size) = changes.size {
        match attr.kind {
            FileType::Directory => return Err(Errno::EISDIR.into()),
            FileType::Regular => {}
            _ => return Err(Errno::EINVAL.into()),
        }
        if !changes.through_writable_handle {
            perm::check(attr, caller, access::W_OK)?;
        }
        if size > MAX_FILE_SIZE {
            return Err(Errno::EFBIG.into());
        }
    }
    let times = [changes.atime, changes.mtime];
    if times.iter().any(|t| matches!(t, Some(TimeSet::At(_)))) {
        perm::check_owner(attr, caller)?;
    } else if times.iter().any(Option::is_some) {
        // Setting both to "now" is allowed to anyone who may write.
        let is_owner = caller.is_root() || caller.uid == attr.uid;
        if !is_owner {
            perm::check(attr, caller, access::W_OK)?;
        }
    }
    Ok(())
}

fn resolve(time: TimeSet, ctx: &OpContext) -> aspen_proto::fs::Timestamp {
    match time {
        TimeSet::Now => ctx.now,
        TimeSet::At(at) => at,
    }
}

pub(super) fn setattr(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    changes: &SetAttr,
) -> OpResult<Attr> {
    let mut attr = store::load(conn, ino)?;
    let caller = &ctx.caller;
    check(&attr, caller, changes)?;
    if changes.is_empty() {
        return Ok(attr);
    }
    if let Some(mode) = changes.mode {
        attr.perm = perm::chmod_bits(&attr, caller, mode);
        let perm = attr.perm;
        if let Some(acl) = &mut attr.acl {
            acl.chmod(perm);
        }
    }
    if changes.uid.is_some() || changes.gid.is_some() {
        attr.uid = changes.uid.unwrap_or(attr.uid);
        attr.gid = changes.gid.unwrap_or(attr.gid);
        attr.perm = perm::drop_privileges(attr.kind, attr.perm);
    }
    // The data past a smaller size is the client's to cut (it holds the
    // file and orders that against its own writes); the inode's high water
    // mark keeps the final purge covering it.
    if let Some(size) = changes.size {
        attr.size = size;
        attr.mtime = ctx.now;
    }
    if (changes.size.is_some() || changes.wrote) && !caller.is_root() {
        attr.perm = perm::drop_privileges(attr.kind, attr.perm);
    }
    if let Some(atime) = changes.atime {
        attr.atime = resolve(atime, ctx);
    }
    if let Some(mtime) = changes.mtime {
        attr.mtime = resolve(mtime, ctx);
    }
    attr.ctime = ctx.now;
    store::save(conn, &attr)?;
    Ok(attr)
}

/// Data reached byte `end` through a handle opened for writing.
pub(super) fn written(
    conn: &Connection,
    ctx: &OpContext,
    handle: HandleId,
    end: u64,
) -> OpResult<Attr> {
    let ino = open::writable_handle(conn, ctx, handle)?;
    if end > MAX_FILE_SIZE {
        return Err(Errno::EFBIG.into());
    }
    let mut attr = store::load(conn, ino)?;
    attr.size = attr.size.max(end);
    attr.mtime = ctx.now;
    attr.ctime = ctx.now;
    if !ctx.caller.is_root() {
        attr.perm = perm::drop_privileges(attr.kind, attr.perm);
    }
    store::save(conn, &attr)?;
    Ok(attr)
}

/// The size and mtime the Exclusive cap holder's buffered writes produced
/// (the holder's size is the file's: nobody else could change it).
pub(super) fn flushed(
    conn: &Connection,
    ctx: &OpContext,
    ino: InodeId,
    flushed: Flushed,
) -> OpResult<Attr> {
    if flushed.size > MAX_FILE_SIZE {
        return Err(Errno::EFBIG.into());
    }
    let mut attr = store::load(conn, ino)?;
    if attr.kind != FileType::Regular {
        return Err(Errno::EINVAL.into());
    }
    // Writes only grow a file (a truncation is its own operation, after
    // the holder's report): a report that would shrink it was overtaken
    // by a later one, sent before the cap moved and applied after.
    attr.size = attr.size.max(flushed.size);
    attr.mtime = flushed.mtime;
    attr.ctime = flushed.mtime.max(attr.ctime);
    if !ctx.caller.is_root() {
        attr.perm = perm::drop_privileges(attr.kind, attr.perm);
    }
    store::save(conn, &attr)?;
    Ok(attr)
}
