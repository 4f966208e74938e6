//! rename and renameat2 (RENAME_NOREPLACE, RENAME_EXCHANGE), atomic.

use aspen_proto::fs::{Attr, Caller, FileType, MAX_NLINK, access, rename_flags, validate_name};
use aspen_proto::{Errno, InodeId};
use rusqlite::Connection;

use super::remove::{check_delete, drop_link};
use super::store;
use super::{OpContext, OpResult, perm, touch_dir};

const KNOWN_FLAGS: u32 = rename_flags::RENAME_NOREPLACE | rename_flags::RENAME_EXCHANGE;

/// Whether `ancestor` is `dir` or one of the directories above it.
fn is_ancestor(conn: &Connection, ancestor: InodeId, mut dir: InodeId) -> OpResult<bool> {
    loop {
        if dir == ancestor {
            return Ok(true);
        }
        if dir == InodeId::ROOT {
            return Ok(false);
        }
        dir = store::dir_parent(conn, dir)?;
    }
}

fn validate_rename_name(name: &[u8]) -> OpResult<()> {
    if name == b"." || name == b".." {
        return Err(Errno::EBUSY.into());
    }
    Ok(validate_name(name)?)
}

/// A directory moving to another parent rewrites its `..`: that needs
/// write permission on the directory itself.
fn check_reparent(moved: &Attr, old_dir: &Attr, new_dir: &Attr, caller: &Caller) -> OpResult<()> {
    if moved.kind == FileType::Directory && old_dir.ino != new_dir.ino {
        perm::check(moved, caller, access::W_OK)?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub(super) fn rename(
    conn: &Connection,
    ctx: &OpContext,
    parent: InodeId,
    name: &[u8],
    new_parent: InodeId,
    new_name: &[u8],
    flags: u32,
) -> OpResult<()> {
    let exchange = flags & rename_flags::RENAME_EXCHANGE != 0;
    let no_replace = flags & rename_flags::RENAME_NOREPLACE != 0;
    if flags & !KNOWN_FLAGS != 0 || (exchange && no_replace) {
        return Err(Errno::EINVAL.into());
    }
    validate_rename_name(name)?;
    validate_rename_name(new_name)?;
    let caller = &ctx.caller;
    let mut old_dir = store::load(conn, parent)?;
    perm::check_search(&old_dir, caller)?;
    let mut new_dir = store::load(conn, new_parent)?;
    perm::check_search(&new_dir, caller)?;
    let source_ino = store::lookup(conn, old_dir.ino, name)?.ok_or(Errno::ENOENT)?;
    let mut source = store::load(conn, source_ino)?;
    let target = match store::lookup(conn, new_dir.ino, new_name)? {
        Some(ino) => Some(store::load(conn, ino)?),
        None => None,
    };
    if exchange && target.is_none() {
        return Err(Errno::ENOENT.into());
    }
    if no_replace && target.is_some() {
        return Err(Errno::EEXIST.into());
    }
    let source_is_dir = source.kind == FileType::Directory;
    // Moving a directory under itself.
    if source_is_dir && is_ancestor(conn, source.ino, new_dir.ino)? {
        return Err(Errno::EINVAL.into());
    }
    // Replacing (or swapping with) a directory above the source.
    let target_is_dir = target
        .as_ref()
        .is_some_and(|t| t.kind == FileType::Directory);
    if let Some(target) = target.as_ref().filter(|_| target_is_dir)
        && is_ancestor(conn, target.ino, old_dir.ino)?
    {
        return Err(if exchange {
            Errno::EINVAL
        } else {
            Errno::ENOTEMPTY
        }
        .into());
    }
    check_delete(&old_dir, &source, caller, source_is_dir)?;
    match &target {
        Some(target) if exchange => {
            check_delete(&new_dir, target, caller, target_is_dir)?;
            check_reparent(target, &new_dir, &old_dir, caller)?;
        }
        Some(target) => check_delete(&new_dir, target, caller, source_is_dir)?,
        None => perm::check_modify_dir(&new_dir, caller)?,
    }
    check_reparent(&source, &old_dir, &new_dir, caller)?;
    if target.as_ref().is_some_and(|t| t.ino == source.ino) {
        // Two links to one file: POSIX says do nothing.
        return Ok(());
    }
    match target {
        Some(target) if exchange => exchange_entries(
            conn,
            ctx,
            (&mut old_dir, name, &mut source),
            (&mut new_dir, new_name, target),
        ),
        target => {
            if let Some(target) = target.as_ref().filter(|_| target_is_dir)
                && !store::is_empty_dir(conn, target.ino)?
            {
                return Err(Errno::ENOTEMPTY.into());
            }
            let gains_subdir = source_is_dir && old_dir.ino != new_dir.ino && !target_is_dir;
            if gains_subdir && new_dir.nlink >= MAX_NLINK {
                return Err(Errno::EMLINK.into());
            }
            move_entry(
                conn,
                ctx,
                (&mut old_dir, name, &mut source),
                (&mut new_dir, new_name, target),
            )
        }
    }
}

type Side<'a> = (&'a mut Attr, &'a [u8], &'a mut Attr);

/// Moves `source` to `new_name` in `new_dir`, replacing `target`.
fn move_entry(
    conn: &Connection,
    ctx: &OpContext,
    (old_dir, name, source): Side<'_>,
    (new_dir, new_name, target): (&mut Attr, &[u8], Option<Attr>),
) -> OpResult<()> {
    let same_dir = old_dir.ino == new_dir.ino;
    if let Some(mut target) = target {
        store::remove_entry(conn, new_dir.ino, new_name)?;
        if target.kind == FileType::Directory {
            new_dir.nlink -= 1;
        }
        drop_link(conn, ctx, &mut target)?;
    }
    store::remove_entry(conn, old_dir.ino, name)?;
    store::add_entry(conn, new_dir.ino, new_name, source.ino)?;
    if source.kind == FileType::Directory && !same_dir {
        store::set_dir_parent(conn, source.ino, new_dir.ino)?;
        old_dir.nlink -= 1;
        new_dir.nlink += 1;
    }
    source.ctime = ctx.now;
    store::save(conn, source)?;
    finish_dirs(conn, ctx, old_dir, new_dir)
}

/// Swaps two entries (RENAME_EXCHANGE).
fn exchange_entries(
    conn: &Connection,
    ctx: &OpContext,
    (old_dir, name, source): Side<'_>,
    (new_dir, new_name, mut target): (&mut Attr, &[u8], Attr),
) -> OpResult<()> {
    store::repoint_entry(conn, old_dir.ino, name, target.ino)?;
    store::repoint_entry(conn, new_dir.ino, new_name, source.ino)?;
    if old_dir.ino != new_dir.ino {
        let (source_is_dir, target_is_dir) = (
            source.kind == FileType::Directory,
            target.kind == FileType::Directory,
        );
        if source_is_dir {
            store::set_dir_parent(conn, source.ino, new_dir.ino)?;
        }
        if target_is_dir {
            store::set_dir_parent(conn, target.ino, old_dir.ino)?;
        }
        // Each parent loses the `..` of the directory leaving it and gains
        // that of the one arriving.
        old_dir.nlink = old_dir.nlink + u32::from(target_is_dir) - u32::from(source_is_dir);
        new_dir.nlink = new_dir.nlink + u32::from(source_is_dir) - u32::from(target_is_dir);
    }
    source.ctime = ctx.now;
    target.ctime = ctx.now;
    store::save(conn, source)?;
    store::save(conn, &target)?;
    finish_dirs(conn, ctx, old_dir, new_dir)
}

/// Stamps both parents (once when they are the same directory).
fn finish_dirs(
    conn: &Connection,
    ctx: &OpContext,
    old_dir: &mut Attr,
    new_dir: &mut Attr,
) -> OpResult<()> {
    if old_dir.ino == new_dir.ino {
        // One directory loaded twice: `new_dir` carries the link changes.
        return touch_dir(conn, new_dir, ctx.now);
    }
    touch_dir(conn, old_dir, ctx.now)?;
    touch_dir(conn, new_dir, ctx.now)
}
