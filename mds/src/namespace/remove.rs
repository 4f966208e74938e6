//! Removing names: unlink and rmdir.

use aspen_proto::fs::{Attr, Caller, FileType, validate_name};
use aspen_proto::{Errno, InodeId};
use rusqlite::Connection;

use super::store;
use super::{OpContext, OpResult, perm, touch_dir};

/// Linux's `may_delete`: write and search on the directory, the sticky
/// rule, then the victim's type against what the caller expects.
pub(super) fn check_delete(
    dir: &Attr,
    victim: &Attr,
    caller: &Caller,
    want_dir: bool,
) -> OpResult<()> {
    perm::check_modify_dir(dir, caller)?;
    perm::check_sticky(dir, victim, caller)?;
    match (want_dir, victim.kind == FileType::Directory) {
        (true, false) => Err(Errno::ENOTDIR.into()),
        (true, true) if victim.ino == InodeId::ROOT => Err(Errno::EBUSY.into()),
        (false, true) => Err(Errno::EISDIR.into()),
        _ => Ok(()),
    }
}

/// Resolves `name` in directory `parent` for removal.
fn find(
    conn: &Connection,
    caller: &Caller,
    parent: InodeId,
    name: &[u8],
) -> OpResult<(Attr, Attr)> {
    validate_name(name)?;
    let dir = store::load(conn, parent)?;
    perm::check_search(&dir, caller)?;
    let ino = store::lookup(conn, dir.ino, name)?.ok_or(Errno::ENOENT)?;
    let victim = store::load(conn, ino)?;
    Ok((dir, victim))
}

/// Drops one link of `victim` (all of them for a directory) and forgets it
/// if it was the last.
pub(super) fn drop_link(conn: &Connection, ctx: &OpContext, victim: &mut Attr) -> OpResult<()> {
    victim.nlink = if victim.kind == FileType::Directory {
        0
    } else {
        victim.nlink - 1
    };
    victim.ctime = ctx.now;
    store::save(conn, victim)?;
    store::release_if_unlinked(conn, victim)
}

pub(super) fn unlink(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
) -> OpResult<()> {
    let (mut dir, mut victim) = find(conn, &ctx.caller, parent, name)?;
    check_delete(&dir, &victim, &ctx.caller, false)?;
    store::remove_entry(conn, dir.ino, name)?;
    drop_link(conn, ctx, &mut victim)?;
    touch_dir(conn, &mut dir, ctx.now)
}

pub(super) fn rmdir(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
) -> OpResult<()> {
    match name {
        b"." => return Err(Errno::EINVAL.into()),
        b".." => return Err(Errno::ENOTEMPTY.into()),
        _ => {}
    }
    let (mut dir, mut victim) = find(conn, &ctx.caller, parent, name)?;
    check_delete(&dir, &victim, &ctx.caller, true)?;
    if !store::is_empty_dir(conn, victim.ino)? {
        return Err(Errno::ENOTEMPTY.into());
    }
    store::remove_entry(conn, dir.ino, name)?;
    drop_link(conn, ctx, &mut victim)?;
    dir.nlink -= 1;
    touch_dir(conn, &mut dir, ctx.now)
}
