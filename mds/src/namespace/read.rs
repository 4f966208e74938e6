//! Reads of the namespace: lookup, readdir, readlink, access and statfs.

use aspen_proto::fs::{
    Attr, Caller, DirEntry, FileType, MAX_NAME_LEN, StatFs, access, validate_name,
};
use aspen_proto::{Errno, InodeId};
use rusqlite::Connection;

use super::store;
use super::{OpResult, perm};
use crate::sql::CachedStatements;

/// The most entries one readdir returns.
pub const MAX_READDIR_ENTRIES: usize = 1024;
/// Offsets of the `.` and `..` entries; real entries start above.
const DOT_OFFSET: u64 = 1;
const DOTDOT_OFFSET: u64 = 2;

pub(super) fn lookup(
    conn: &Connection,
    parent: InodeId,
    name: &[u8],
    caller: &Caller,
) -> OpResult<Attr> {
    let dir = store::load(conn, parent)?;
    perm::check_search(&dir, caller)?;
    match name {
        b"." => return Ok(dir),
        b".." => return store::load(conn, store::dir_parent(conn, dir.ino)?),
        _ => validate_name(name)?,
    }
    let ino = store::lookup(conn, dir.ino, name)?.ok_or(Errno::ENOENT)?;
    store::load(conn, ino)
}

pub(super) fn readdir(
    conn: &Connection,
    ino: InodeId,
    offset: u64,
    limit: usize,
    caller: &Caller,
) -> OpResult<Vec<DirEntry>> {
    let dir = store::load(conn, ino)?;
    if dir.kind != FileType::Directory {
        return Err(Errno::ENOTDIR.into());
    }
    perm::check(&dir, caller, access::R_OK)?;
    let limit = limit.min(MAX_READDIR_ENTRIES);
    let mut entries = Vec::new();
    if offset < DOT_OFFSET {
        entries.push(DirEntry {
            name: b".".to_vec(),
            ino,
            kind: FileType::Directory,
            offset: DOT_OFFSET,
        });
    }
    if offset < DOTDOT_OFFSET {
        let parent = store::dir_parent(conn, ino)?;
        entries.push(DirEntry {
            name: b"..".to_vec(),
            ino: parent,
            kind: FileType::Directory,
            offset: DOTDOT_OFFSET,
        });
    }
    let wanted = limit.saturating_sub(entries.len());
    for (name, child, offset) in store::entries_after(conn, ino, offset.max(DOTDOT_OFFSET), wanted)?
    {
        let kind = store::load(conn, child)?.kind;
        entries.push(DirEntry {
            name,
            ino: child,
            kind,
            offset,
        });
    }
    entries.truncate(limit);
    Ok(entries)
}

pub(super) fn readlink(conn: &Connection, ino: InodeId) -> OpResult<Vec<u8>> {
    let attr = store::load(conn, ino)?;
    if attr.kind != FileType::Symlink {
        return Err(Errno::EINVAL.into());
    }
    store::symlink_target(conn, ino)
}

pub(super) fn access(conn: &Connection, ino: InodeId, mask: u32, caller: &Caller) -> OpResult<()> {
    if mask & !(access::R_OK | access::W_OK | access::X_OK) != 0 {
        return Err(Errno::EINVAL.into());
    }
    let attr = store::load(conn, ino)?;
    Ok(perm::check(&attr, caller, mask)?)
}

/// Inode counts; space figures come from the cluster map (0 until OSDs report).
pub(super) fn statfs(conn: &Connection) -> OpResult<StatFs> {
    let files: i64 = conn.query_row_cached("SELECT COUNT(*) FROM inodes", [], |r| r.get(0))?;
    Ok(StatFs {
        block_size: 4096,
        files: files as u64,
        files_free: u64::from(u32::MAX),
        name_max: MAX_NAME_LEN as u32,
        ..StatFs::default()
    })
}
