//! The namespace: directories, inodes, links, xattrs and open handles,
//! stored in SQLite and changed only by [`NsOp`]s.
//!
//! This is the deterministic part of the MDS state machine. Every mutation
//! carries its caller and its time ([`OpContext`]), so replaying the same
//! operations on any replica gives the same tables. Each operation runs in
//! one transaction: it either applies whole or fails with the errno Linux
//! gives on ext4 and changes nothing.
//!
//! Operations are grouped by family: [`create`] (mknod, mkdir, symlink,
//! link), [`remove`] (unlink, rmdir), [`rename`], [`setattr`], [`xattr`],
//! [`open`] (open, create, release, sessions) and [`read`] (lookup,
//! getattr, readdir, readlink, access, statfs). The permission rules are
//! `aspen_proto::perm` (the client checks with the same ones); [`store`]
//! holds the tables.

pub(crate) mod caps;
mod create;
mod open;
mod read;
mod remove;
mod rename;
mod setattr;
mod store;
mod xattr;

use std::path::Path;

use crate::sql::CachedStatements;
use aspen_proto::fs::{Attr, Caller, DirEntry, StatFs, Timestamp};
pub use aspen_proto::mds::{HandleId, NsOp, NsReply, SessionId};
use aspen_proto::perm;
use aspen_proto::{Errno, InodeId};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};

/// A storage failure. Unlike an [`Errno`], it is not part of the
/// replicated outcome: a replica that hits one must stop applying.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt namespace: {0}")]
    Corrupt(String),
}

/// Why an operation stopped: its POSIX error, or a storage failure.
#[derive(Debug)]
pub(crate) enum OpError {
    Errno(Errno),
    Store(StoreError),
}

impl From<Errno> for OpError {
    fn from(errno: Errno) -> OpError {
        OpError::Errno(errno)
    }
}

impl From<rusqlite::Error> for OpError {
    fn from(error: rusqlite::Error) -> OpError {
        OpError::Store(error.into())
    }
}

impl From<StoreError> for OpError {
    fn from(error: StoreError) -> OpError {
        OpError::Store(error)
    }
}

pub(crate) type OpResult<T> = Result<T, OpError>;

/// Splits an [`OpResult`] into the storage outcome and the POSIX outcome.
fn split<T>(result: OpResult<T>) -> Result<Result<T, Errno>, StoreError> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(OpError::Errno(errno)) => Ok(Err(errno)),
        Err(OpError::Store(error)) => Err(error),
    }
}

/// Who performs an operation, when, and for which session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpContext {
    pub caller: Caller,
    /// The time the operation takes effect (stamped by the leader).
    pub now: Timestamp,
    pub session: SessionId,
}

/// The namespace tables in one SQLite database.
pub struct Namespace {
    conn: Connection,
}

impl Namespace {
    /// Opens (creating if needed) the namespace in the database at `path`.
    pub fn open(path: &Path) -> Result<Namespace, StoreError> {
        Namespace::with_connection(Connection::open(path)?)
    }

    pub fn open_in_memory() -> Result<Namespace, StoreError> {
        Namespace::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(conn: Connection) -> Result<Namespace, StoreError> {
        // The namespace's only connection keeps its locks (see the Raft
        // log's store).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // Every operation runs in a savepoint (`savepoint` below), whose undo
        // journal would otherwise be a temporary file in /var/tmp: several
        // `pwrite`s per operation for pages that never need to reach a disk.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.execute_batch(store::SCHEMA)?;
        conn.execute_batch(caps::TRACKING)?;
        conn.set_prepared_statement_cache_capacity(crate::sql::STATEMENT_CACHE_CAPACITY);
        Ok(Namespace { conn })
    }

    /// Applies one mutation in its own transaction. The outer error is a
    /// storage failure; the inner one the operation's POSIX error (after
    /// which nothing has changed).
    pub fn apply(
        &mut self,
        op: &NsOp,
        ctx: &OpContext,
    ) -> Result<Result<NsReply, Errno>, StoreError> {
        let tx = self.conn.transaction()?;
        let outcome = apply_within(&tx, op, ctx)?;
        tx.commit()?;
        Ok(outcome)
    }

    /// The database connection, for the state machine that embeds the
    /// namespace tables in its own transactions.
    pub(crate) fn connection(&self) -> &Connection {
        &self.conn
    }

    pub(crate) fn connection_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    pub fn getattr(&self, ino: InodeId) -> Result<Result<Attr, Errno>, StoreError> {
        split(store::load(&self.conn, ino))
    }

    pub fn lookup(
        &self,
        parent: InodeId,
        name: &[u8],
        caller: &Caller,
    ) -> Result<Result<Attr, Errno>, StoreError> {
        split(read::lookup(&self.conn, parent, name, caller))
    }

    /// Up to `limit` entries of directory `ino` after `offset` (0 starts at
    /// the beginning, with `.` and `..`).
    pub fn readdir(
        &self,
        ino: InodeId,
        offset: u64,
        limit: usize,
        caller: &Caller,
    ) -> Result<Result<Vec<DirEntry>, Errno>, StoreError> {
        split(read::readdir(&self.conn, ino, offset, limit, caller))
    }

    pub fn readlink(&self, ino: InodeId) -> Result<Result<Vec<u8>, Errno>, StoreError> {
        split(read::readlink(&self.conn, ino))
    }

    pub fn access(
        &self,
        ino: InodeId,
        mask: u32,
        caller: &Caller,
    ) -> Result<Result<(), Errno>, StoreError> {
        split(read::access(&self.conn, ino, mask, caller))
    }

    pub fn getxattr(
        &self,
        ino: InodeId,
        name: &[u8],
        caller: &Caller,
    ) -> Result<Result<Vec<u8>, Errno>, StoreError> {
        split(xattr::get(&self.conn, ino, name, caller))
    }

    pub fn listxattr(
        &self,
        ino: InodeId,
        caller: &Caller,
    ) -> Result<Result<Vec<Vec<u8>>, Errno>, StoreError> {
        split(xattr::list(&self.conn, ino, caller))
    }

    pub fn statfs(&self) -> Result<StatFs, StoreError> {
        match read::statfs(&self.conn) {
            Ok(stat) => Ok(stat),
            Err(OpError::Store(error)) => Err(error),
            Err(OpError::Errno(errno)) => {
                Err(StoreError::Corrupt(format!("statfs failed: {errno}")))
            }
        }
    }

    /// Inodes unlinked while open, still waiting for their last release.
    pub fn strays(&self) -> Result<Vec<InodeId>, StoreError> {
        let mut statement = self.conn.prepare("SELECT ino FROM strays ORDER BY ino")?;
        let rows = statement.query_map([], |r| Ok(InodeId(r.get::<_, i64>(0)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The queued purges: remove data of `ino` at or beyond `keep_size`.
    pub fn purge_queue(&self) -> Result<Vec<PurgeItem>, StoreError> {
        self.purge_queue_head(u32::MAX)
    }

    /// The first `limit` queued purges.
    pub fn purge_queue_head(&self, limit: u32) -> Result<Vec<PurgeItem>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT seq, ino, pool, object_size, keep_size, old_size FROM purge_queue \
             ORDER BY seq LIMIT ?1",
        )?;
        let rows = statement.query_map([limit], |r| {
            Ok(PurgeItem {
                seq: r.get::<_, i64>(0)? as u64,
                ino: InodeId(r.get::<_, i64>(1)? as u64),
                pool: aspen_placement::PoolId(r.get(2)?),
                object_size: r.get::<_, i64>(3)? as u64,
                keep_size: r.get::<_, i64>(4)? as u64,
                old_size: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A queued removal of file data: every byte of `ino` at or beyond
/// `keep_size`, up to `old_size` (the most the file ever held).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeItem {
    pub seq: u64,
    pub ino: InodeId,
    pub pool: aspen_placement::PoolId,
    pub object_size: u64,
    pub keep_size: u64,
    pub old_size: u64,
}

/// Applies one mutation inside the caller's transaction, under a savepoint:
/// a failed operation leaves no trace, the rest of the transaction stays.
pub(crate) fn apply_within(
    conn: &Connection,
    op: &NsOp,
    ctx: &OpContext,
) -> Result<Result<NsReply, Errno>, StoreError> {
    split(savepoint(conn, |conn| dispatch(conn, op, ctx)))
}

/// Runs `work` under a savepoint: kept whole if it succeeds, undone whole
/// if it fails.
fn savepoint<T>(conn: &Connection, work: impl FnOnce(&Connection) -> OpResult<T>) -> OpResult<T> {
    conn.execute_cached("SAVEPOINT ns_op", [])?;
    let outcome = work(conn);
    if outcome.is_err() {
        conn.execute_cached("ROLLBACK TO ns_op", [])?;
    }
    conn.execute_cached("RELEASE ns_op", [])?;
    outcome
}

fn dispatch(conn: &Connection, op: &NsOp, ctx: &OpContext) -> OpResult<NsReply> {
    ctx.caller.validate()?;
    match op {
        NsOp::Format {
            mode,
            uid,
            gid,
            layout,
        } => create::format(conn, ctx, *mode, *uid, *gid, *layout),
        NsOp::SetAttr { ino, changes } => {
            setattr::setattr(conn, ctx, *ino, changes).map(NsReply::Attr)
        }
        NsOp::Mknod {
            parent,
            name,
            mode,
            umask,
            rdev,
        } => create::mknod(conn, ctx, *parent, name, *mode, *umask, *rdev).map(NsReply::Attr),
        NsOp::Mkdir {
            parent,
            name,
            mode,
            umask,
        } => create::mkdir(conn, ctx, *parent, name, *mode, *umask).map(NsReply::Attr),
        NsOp::Symlink {
            parent,
            name,
            target,
        } => create::symlink(conn, ctx, *parent, name, target).map(NsReply::Attr),
        NsOp::Link {
            ino,
            new_parent,
            new_name,
        } => create::link(conn, ctx, *ino, *new_parent, new_name).map(NsReply::Attr),
        NsOp::Unlink { parent, name } => {
            remove::unlink(conn, ctx, *parent, name).map(|_| NsReply::Done)
        }
        NsOp::Rmdir { parent, name } => {
            remove::rmdir(conn, ctx, *parent, name).map(|_| NsReply::Done)
        }
        NsOp::Rename {
            parent,
            name,
            new_parent,
            new_name,
            flags,
        } => rename::rename(conn, ctx, *parent, name, *new_parent, new_name, *flags)
            .map(|_| NsReply::Done),
        NsOp::SetXattr {
            ino,
            name,
            value,
            flags,
        } => xattr::set(conn, ctx, *ino, name, value, *flags).map(|_| NsReply::Done),
        NsOp::RemoveXattr { ino, name } => {
            xattr::remove(conn, ctx, *ino, name).map(|_| NsReply::Done)
        }
        NsOp::Open { ino, flags } => open::open(conn, ctx, *ino, *flags),
        NsOp::Create {
            parent,
            name,
            mode,
            umask,
            flags,
        } => open::create(conn, ctx, *parent, name, *mode, *umask, *flags),
        NsOp::Release { handle } => open::release(conn, ctx, *handle).map(|_| NsReply::Done),
        NsOp::Written { handle, end } => {
            setattr::written(conn, ctx, *handle, *end).map(NsReply::Attr)
        }
        NsOp::EndSession { session } => open::end_session(conn, *session).map(|_| NsReply::Done),
        NsOp::CreateAs {
            parent,
            name,
            mode,
            umask,
            ino,
            now,
        } => {
            let ctx = OpContext {
                now: *now,
                ..ctx.clone()
            };
            create::create_reserved(conn, &ctx, *parent, name, (*mode, *umask), *ino)
                .map(NsReply::Attr)
        }
    }
}

/// Marks a directory's contents as changed at `now`.
fn touch_dir(conn: &Connection, dir: &mut Attr, now: Timestamp) -> OpResult<()> {
    dir.mtime = now;
    dir.ctime = now;
    store::save(conn, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_journals_stay_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::open(&dir.path().join("namespace.db")).unwrap();
        let temp_store: i64 = ns
            .connection()
            .query_row("PRAGMA temp_store", [], |r| r.get(0))
            .unwrap();
        assert_eq!(temp_store, 2, "temp_store is MEMORY");
    }
}
