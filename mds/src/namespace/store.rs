//! The namespace's SQLite tables and row access: inodes, directory
//! entries, symlink targets, xattrs, open handles, strays and the purge
//! queue. Everything here runs inside the caller's transaction.

use aspen_proto::acl::PosixAcl;
use aspen_proto::fs::{Attr, FileType, Timestamp};
use aspen_proto::{Errno, FileLayout, InodeId};
use rusqlite::{Connection, OptionalExtension, params};

use super::OpResult;
use crate::sql::CachedStatements;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    perm INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    atime_sec INTEGER NOT NULL, atime_nsec INTEGER NOT NULL,
    mtime_sec INTEGER NOT NULL, mtime_nsec INTEGER NOT NULL,
    ctime_sec INTEGER NOT NULL, ctime_nsec INTEGER NOT NULL,
    rdev INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    object_size INTEGER NOT NULL,
    pool INTEGER NOT NULL,
    -- the access ACL (xattr format) when it says more than perm
    acl BLOB,
    -- directories: the parent directory (the root: itself)
    parent INTEGER,
    -- directories: the readdir offset the next entry gets
    next_offset INTEGER NOT NULL DEFAULT 3,
    -- regular files: the largest size the file ever had (what a purge must cover)
    high_water INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    ino INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (parent, name)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS dentries_by_offset ON dentries (parent, offset);
CREATE TABLE IF NOT EXISTS symlinks (ino INTEGER PRIMARY KEY, target BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (ino, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS handles (
    handle INTEGER PRIMARY KEY,
    session INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    flags INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS handles_by_ino ON handles (ino);
CREATE INDEX IF NOT EXISTS handles_by_session ON handles (session);
CREATE TABLE IF NOT EXISTS strays (ino INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS caps (
    ino INTEGER NOT NULL,
    session INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (ino, session)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS caps_by_session ON caps (session);
-- inode numbers (with generations) a session reserved for its own creates
CREATE TABLE IF NOT EXISTS reserved_inodes (
    ino INTEGER PRIMARY KEY,
    session INTEGER NOT NULL,
    generation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS reserved_by_session ON reserved_inodes (session);
CREATE TABLE IF NOT EXISTS purge_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ino INTEGER NOT NULL,
    pool INTEGER NOT NULL,
    object_size INTEGER NOT NULL,
    keep_size INTEGER NOT NULL,
    old_size INTEGER NOT NULL
);
";

/// Counters kept in `meta`.
pub(crate) const NEXT_INO: &str = "next_ino";
pub(crate) const NEXT_GENERATION: &str = "next_generation";
pub(crate) const NEXT_HANDLE: &str = "next_handle";
pub(crate) const NEXT_CAP: &str = "next_cap";

fn kind_code(kind: FileType) -> i64 {
    match kind {
        FileType::Regular => 1,
        FileType::Directory => 2,
        FileType::Symlink => 3,
        FileType::Fifo => 4,
        FileType::Socket => 5,
        FileType::CharDevice => 6,
        FileType::BlockDevice => 7,
    }
}

fn kind_from_code(code: i64) -> Option<FileType> {
    Some(match code {
        1 => FileType::Regular,
        2 => FileType::Directory,
        3 => FileType::Symlink,
        4 => FileType::Fifo,
        5 => FileType::Socket,
        6 => FileType::CharDevice,
        7 => FileType::BlockDevice,
        _ => return None,
    })
}

/// The columns [`attr_from_row`] reads, in its order (a macro, so that the
/// statements naming them are constants rather than built per call).
macro_rules! attr_columns {
    () => {
        "ino, kind, perm, nlink, uid, gid, size, atime_sec, atime_nsec, \
         mtime_sec, mtime_nsec, ctime_sec, ctime_nsec, rdev, generation, object_size, acl, pool"
    };
}

fn attr_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Attr, String>> {
    let ino: i64 = row.get(0)?;
    let time = |s: usize| -> rusqlite::Result<Timestamp> {
        Ok(Timestamp::new(row.get(s)?, row.get(s + 1)?))
    };
    let Some(kind) = kind_from_code(row.get(1)?) else {
        return Ok(Err(format!("inode {ino} has an unknown kind")));
    };
    let Ok(layout) = FileLayout::new(row.get::<_, i64>(15)? as u64) else {
        return Ok(Err(format!("inode {ino} has a bad layout")));
    };
    let layout = layout.in_pool(aspen_placement::PoolId(row.get(17)?));
    let acl = match row.get::<_, Option<Vec<u8>>>(16)? {
        None => None,
        Some(bytes) => match PosixAcl::from_xattr(&bytes) {
            Ok(acl) => acl,
            Err(_) => return Ok(Err(format!("inode {ino} has a bad ACL"))),
        },
    };
    Ok(Ok(Attr {
        ino: InodeId(ino as u64),
        kind,
        perm: row.get(2)?,
        nlink: row.get(3)?,
        uid: row.get(4)?,
        gid: row.get(5)?,
        size: row.get::<_, i64>(6)? as u64,
        atime: time(7)?,
        mtime: time(9)?,
        ctime: time(11)?,
        rdev: row.get::<_, i64>(13)? as u64,
        generation: row.get::<_, i64>(14)? as u64,
        layout,
        acl,
    }))
}

/// The attributes of `ino`, or `ENOENT`.
pub(crate) fn load(conn: &Connection, ino: InodeId) -> OpResult<Attr> {
    const SQL: &str = concat!("SELECT ", attr_columns!(), " FROM inodes WHERE ino = ?1");
    let row = conn
        .query_row_cached(SQL, [ino.0 as i64], attr_from_row)
        .optional()?;
    match row {
        None => Err(Errno::ENOENT.into()),
        Some(Ok(attr)) => Ok(attr),
        Some(Err(corrupt)) => Err(super::StoreError::Corrupt(corrupt).into()),
    }
}

/// Inserts a new inode; `parent` is set for directories.
pub(crate) fn insert(conn: &Connection, attr: &Attr, parent: Option<InodeId>) -> OpResult<()> {
    conn.execute_cached(
        concat!(
            "INSERT INTO inodes (",
            attr_columns!(),
            ", parent) VALUES ",
            "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
        ),
        params![
            attr.ino.0 as i64,
            kind_code(attr.kind),
            attr.perm,
            attr.nlink,
            attr.uid,
            attr.gid,
            attr.size as i64,
            attr.atime.sec,
            attr.atime.nsec,
            attr.mtime.sec,
            attr.mtime.nsec,
            attr.ctime.sec,
            attr.ctime.nsec,
            attr.rdev as i64,
            attr.generation as i64,
            attr.layout.object_size() as i64,
            acl_column(attr),
            attr.layout.pool().0,
            parent.map(|p| p.0 as i64),
        ],
    )?;
    Ok(())
}

/// Writes back every attribute of an existing inode.
pub(crate) fn save(conn: &Connection, attr: &Attr) -> OpResult<()> {
    conn.execute_cached(
        "UPDATE inodes SET perm = ?2, nlink = ?3, uid = ?4, gid = ?5, size = ?6, \
         atime_sec = ?7, atime_nsec = ?8, mtime_sec = ?9, mtime_nsec = ?10, \
         ctime_sec = ?11, ctime_nsec = ?12, acl = ?13, high_water = MAX(high_water, ?6), \
         object_size = ?14, pool = ?15 WHERE ino = ?1",
        params![
            attr.ino.0 as i64,
            attr.perm,
            attr.nlink,
            attr.uid,
            attr.gid,
            attr.size as i64,
            attr.atime.sec,
            attr.atime.nsec,
            attr.mtime.sec,
            attr.mtime.nsec,
            attr.ctime.sec,
            attr.ctime.nsec,
            acl_column(attr),
            attr.layout.object_size() as i64,
            attr.layout.pool().0,
        ],
    )?;
    Ok(())
}

fn acl_column(attr: &Attr) -> Option<Vec<u8>> {
    attr.acl.as_ref().map(PosixAcl::to_xattr)
}

/// Takes the next value of a `meta` counter.
pub(crate) fn next_counter(conn: &Connection, key: &str) -> OpResult<u64> {
    take_counters(conn, key, 1)
}

/// Takes the next `count` values of a `meta` counter (a counter never
/// set starts at 1); the first of them.
pub(crate) fn take_counters(conn: &Connection, key: &str, count: u64) -> OpResult<u64> {
    let first: i64 = conn.query_row_cached(
        "INSERT INTO meta (key, value) VALUES (?1, 1 + ?2) \
         ON CONFLICT (key) DO UPDATE SET value = value + ?2 RETURNING value - ?2",
        params![key, count as i64],
        |r| r.get(0),
    )?;
    Ok(first as u64)
}

/// Sets a `meta` counter's next value.
pub(crate) fn set_counter(conn: &Connection, key: &str, value: u64) -> OpResult<()> {
    conn.execute_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
        params![key, value as i64],
    )?;
    Ok(())
}

/// The inode a name in `dir` points to.
pub(crate) fn lookup(conn: &Connection, dir: InodeId, name: &[u8]) -> OpResult<Option<InodeId>> {
    let ino: Option<i64> = conn
        .query_row_cached(
            "SELECT ino FROM dentries WHERE parent = ?1 AND name = ?2",
            params![dir.0 as i64, name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(ino.map(|i| InodeId(i as u64)))
}

/// Adds `name → ino` to `dir`, with the directory's next readdir offset.
pub(crate) fn add_entry(
    conn: &Connection,
    dir: InodeId,
    name: &[u8],
    ino: InodeId,
) -> OpResult<()> {
    let offset: i64 = conn.query_row_cached(
        "UPDATE inodes SET next_offset = next_offset + 1 WHERE ino = ?1 RETURNING next_offset - 1",
        [dir.0 as i64],
        |r| r.get(0),
    )?;
    conn.execute_cached(
        "INSERT INTO dentries (parent, name, ino, offset) VALUES (?1, ?2, ?3, ?4)",
        params![dir.0 as i64, name, ino.0 as i64, offset],
    )?;
    Ok(())
}

pub(crate) fn remove_entry(conn: &Connection, dir: InodeId, name: &[u8]) -> OpResult<()> {
    conn.execute_cached(
        "DELETE FROM dentries WHERE parent = ?1 AND name = ?2",
        params![dir.0 as i64, name],
    )?;
    Ok(())
}

/// Points an existing entry at another inode, keeping its offset.
pub(crate) fn repoint_entry(
    conn: &Connection,
    dir: InodeId,
    name: &[u8],
    ino: InodeId,
) -> OpResult<()> {
    conn.execute_cached(
        "UPDATE dentries SET ino = ?3 WHERE parent = ?1 AND name = ?2",
        params![dir.0 as i64, name, ino.0 as i64],
    )?;
    Ok(())
}

pub(crate) fn is_empty_dir(conn: &Connection, dir: InodeId) -> OpResult<bool> {
    let any: Option<i64> = conn
        .query_row_cached(
            "SELECT 1 FROM dentries WHERE parent = ?1 LIMIT 1",
            [dir.0 as i64],
            |r| r.get(0),
        )
        .optional()?;
    Ok(any.is_none())
}

/// The parent of a directory.
pub(crate) fn dir_parent(conn: &Connection, dir: InodeId) -> OpResult<InodeId> {
    let parent: Option<i64> = conn.query_row_cached(
        "SELECT parent FROM inodes WHERE ino = ?1",
        [dir.0 as i64],
        |r| r.get(0),
    )?;
    parent
        .map(|p| InodeId(p as u64))
        .ok_or_else(|| super::StoreError::Corrupt(format!("directory {dir} has no parent")).into())
}

pub(crate) fn set_dir_parent(conn: &Connection, dir: InodeId, parent: InodeId) -> OpResult<()> {
    conn.execute_cached(
        "UPDATE inodes SET parent = ?2 WHERE ino = ?1",
        params![dir.0 as i64, parent.0 as i64],
    )?;
    Ok(())
}

/// Entries of `dir` with offsets above `after`, in offset order.
pub(crate) fn entries_after(
    conn: &Connection,
    dir: InodeId,
    after: u64,
    limit: usize,
) -> OpResult<Vec<(Vec<u8>, InodeId, u64)>> {
    let mut statement = conn.prepare_cached(
        "SELECT name, ino, offset FROM dentries WHERE parent = ?1 AND offset > ?2 ORDER BY offset LIMIT ?3",
    )?;
    let rows = statement.query_map(params![dir.0 as i64, after as i64, limit as i64], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            InodeId(r.get::<_, i64>(1)? as u64),
            r.get::<_, i64>(2)? as u64,
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn symlink_target(conn: &Connection, ino: InodeId) -> OpResult<Vec<u8>> {
    let target: Option<Vec<u8>> = conn
        .query_row_cached(
            "SELECT target FROM symlinks WHERE ino = ?1",
            [ino.0 as i64],
            |r| r.get(0),
        )
        .optional()?;
    target.ok_or_else(|| super::StoreError::Corrupt(format!("symlink {ino} has no target")).into())
}

pub(crate) fn set_symlink_target(conn: &Connection, ino: InodeId, target: &[u8]) -> OpResult<()> {
    conn.execute_cached(
        "INSERT INTO symlinks (ino, target) VALUES (?1, ?2)",
        params![ino.0 as i64, target],
    )?;
    Ok(())
}

pub(crate) fn open_handles(conn: &Connection, ino: InodeId) -> OpResult<u64> {
    let count: i64 = conn.query_row_cached(
        "SELECT COUNT(*) FROM handles WHERE ino = ?1",
        [ino.0 as i64],
        |r| r.get(0),
    )?;
    Ok(count as u64)
}

/// Queues the removal of a deleted file's data: everything up to the
/// most it ever held.
fn queue_purge(conn: &Connection, attr: &Attr) -> OpResult<()> {
    let high_water: i64 = conn.query_row_cached(
        "SELECT high_water FROM inodes WHERE ino = ?1",
        [attr.ino.0 as i64],
        |r| r.get(0),
    )?;
    let old_size = (high_water as u64).max(attr.size);
    if old_size > 0 {
        conn.execute_cached(
            "INSERT INTO purge_queue (ino, pool, object_size, keep_size, old_size) VALUES (?1, ?2, ?3, 0, ?4)",
            params![attr.ino.0 as i64, attr.layout.pool().0, attr.layout.object_size() as i64, old_size as i64],
        )?;
    }
    Ok(())
}

/// Forgets an inode whose last link is gone: kept as a stray while it is
/// open, otherwise deleted and its data queued for purge. Caps on it stay
/// until the caller has checked them for conflicts (see
/// `caps::forget_gone`).
pub(crate) fn release_if_unlinked(conn: &Connection, attr: &Attr) -> OpResult<()> {
    if attr.nlink > 0 {
        return Ok(());
    }
    if open_handles(conn, attr.ino)? > 0 {
        conn.execute_cached(
            "INSERT OR IGNORE INTO strays (ino) VALUES (?1)",
            [attr.ino.0 as i64],
        )?;
        return Ok(());
    }
    if attr.kind == FileType::Regular {
        queue_purge(conn, attr)?;
    }
    let ino = attr.ino.0 as i64;
    conn.execute_cached("DELETE FROM strays WHERE ino = ?1", [ino])?;
    conn.execute_cached("DELETE FROM xattrs WHERE ino = ?1", [ino])?;
    conn.execute_cached("DELETE FROM symlinks WHERE ino = ?1", [ino])?;
    conn.execute_cached("DELETE FROM inodes WHERE ino = ?1", [ino])?;
    Ok(())
}
