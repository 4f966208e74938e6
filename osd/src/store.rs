//! The local object store of one OSD: objects in pools, each with a size,
//! a version, a modification time, small attributes and an extent map over
//! the [`ContentStore`]. All metadata is in one SQLite database.
//!
//! Durable when an operation returns: a mutation joins the open batch
//! transaction (see [`crate::batch`]), then waits for the sync that covers
//! it: the batch is committed without waiting for the disk, the segment
//! files it wrote are synced first, then the database's write-ahead log.
//! Concurrent callers share one commit and one sync: whoever finds no sync
//! running commits and syncs the open batch, the others wait for it. An
//! async caller ([`ObjectStore::durable_async`]) waits without holding a
//! thread, and syncs on a blocking thread when its turn comes. Checkpoints are
//! durable too (the log is synced before the copy, the database after).
//!
//! Reads check every chunk against its hash: a damaged byte is an error,
//! never returned.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{SystemTime, UNIX_EPOCH};

use aspen_placement::PgId;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use aspen_proto::osd::{LogEntry, LogVersion, ObjectCopy, ObjectOp};

use crate::batch::{Batches, Committed, Failure, Outcome};
use crate::content::{
    self, COMPACT_STEP_BYTES, ContentStore, MAX_CHUNK, RELEASE_STEP, ReadPattern, Wait,
};
use crate::extents::{Extent, ExtentMap, ReadPiece, RefChange};
use crate::trails::ReadTrails;
use crate::tree;
use crate::{gathered_log, pglog};

// The store enforces the protocol's limits itself: the longest object
// name, the largest object, the longest read, and attribute sizes.
pub use aspen_proto::osd::{
    MAX_ATTR_NAME_LEN, MAX_ATTR_VALUE_LEN, MAX_IO_LEN as MAX_READ_LEN,
    MAX_OBJECT_LEN as MAX_OBJECT_SIZE, MAX_OBJECT_NAME_LEN as MAX_NAME_LEN,
};
/// Batch commits between two durable checkpoints of the database.
pub const CHECKPOINT_EVERY_COMMITS: u64 = 2048;
/// Write-ahead log bytes between two checkpoints: a long log makes every
/// page lookup slower (SQLite searches its index of the log a block of
/// frames at a time), and a vectored write logs many pages per commit.
pub const CHECKPOINT_EVERY_LOG_BYTES: u64 = 64 << 20;

/// The database's page cache, in KiB. SQLite's default of 2 MiB makes
/// extent and chunk lookups read pages from the kernel again and again; a
/// larger cache costs every commit that rebalanced a b-tree: the balance
/// puts its pages in order by swapping their numbers through the locking
/// page's (page 262,145 at 4 KiB pages), and the commit then drops the
/// cache's pages past the end of the database by walking its whole hash
/// table, one slot per cached page. At 32 MiB that walk was 5% of the CPU
/// of 4 KiB O_DIRECT writes through the mount; at 8 MiB they ran 3-7%
/// faster, other workloads level (bench/RESULTS.md, 2026-12-04).
pub const CACHE_KIB: i64 = 8 << 10;

/// What one step of garbage collection did.
#[derive(Clone, Copy, Debug)]
pub struct GcStep {
    /// Chunk bytes compaction copied.
    pub moved: u64,
    /// Nothing was left to do.
    pub done: bool,
}

const DATABASE: &str = "objects.db";
const SEGMENTS: &str = "segments";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    pool INTEGER NOT NULL,
    pg INTEGER NOT NULL,
    name BLOB NOT NULL,
    size INTEGER NOT NULL,
    version INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    -- the PG log position of the last logged change (recovery compares these)
    at_epoch INTEGER NOT NULL DEFAULT 0,
    at_version INTEGER NOT NULL DEFAULT 0,
    UNIQUE (pool, name)
);
CREATE INDEX IF NOT EXISTS objects_by_pg ON objects (pool, pg, name);
CREATE TABLE IF NOT EXISTS extents (
    object INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    chunk_offset INTEGER NOT NULL,
    PRIMARY KEY (object, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attrs (
    object INTEGER NOT NULL,
    name BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (object, name)
) WITHOUT ROWID;
";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(String),
    /// Stored bytes or metadata are damaged (a read never returns them).
    #[error("corrupt: {0}")]
    Corrupt(String),
    #[error("no such object")]
    NotFound,
    #[error("no such attribute")]
    NoAttr,
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The disk under the store is full.
    #[error("no space left on the disk")]
    NoSpace,
    /// A log entry does not follow the PG's last one: an earlier entry
    /// never arrived here, or was undone with its batch.
    #[error("log gap: {0}")]
    Gap(String),
    /// A resent log entry differs from the one logged at its version.
    #[error("log diverged: {0}")]
    Diverged(String),
}

/// A change in the store's open batch, not yet durable: pass it to
/// [`ObjectStore::durable`] (or, in async code, [`ObjectStore::durable_async`]).
#[must_use = "a staged change counts only once durable"]
pub struct Staged<T> {
    value: T,
    outcome: Outcome,
}

/// An object: its pool and PG (from placement) and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub pg: PgId,
    pub name: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectStat {
    pub size: u64,
    /// Bumped by every change to the object.
    pub version: u64,
    /// Nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

struct Inner {
    conn: Connection,
    content: ContentStore,
    batches: Batches,
    since_checkpoint: u64,
    /// The write-ahead log's length, in bytes, after the last commit.
    log_bytes: Arc<AtomicU64>,
    trails: ReadTrails,
}

/// The object store. Share it behind an `Arc`. Every method blocks (call
/// it from a blocking thread in async code) but these: the `try_stage_*`
/// methods stage a change only if the store is free at once (a short
/// transaction step on the caller's thread, never a wait for the disk),
/// [`ObjectStore::try_plan_read`] locates a read only if the store is free
/// at once (its SQLite lookups, which may wait for the disk), and
/// [`ObjectStore::durable_async`] awaits the sync.
pub struct ObjectStore {
    inner: Mutex<Inner>,
    wal: File,
    /// Whether a caller is committing and syncing a batch.
    syncing: Mutex<bool>,
    synced: Condvar,
    /// Whether an async waiter has a sync on its way to a blocking thread
    /// (so the others need not send one).
    sync_claimed: AtomicBool,
    /// Counts releases of the syncer's turn: an async waiter looks at its
    /// batch again after each ([`ObjectStore::durable_async`]).
    settled: tokio::sync::watch::Sender<u64>,
}

/// The syncer's turn: one caller at a time commits and syncs the open
/// batch. Released however the sync ends, a panic included, so no later
/// caller waits for a sync nobody runs; async waiters then look again.
struct SyncTurn<'a>(&'a ObjectStore);

impl SyncTurn<'_> {
    /// Waits while another caller holds the turn, then takes it.
    fn take(store: &ObjectStore) -> SyncTurn<'_> {
        let mut syncing = lock(&store.syncing);
        while *syncing {
            syncing = store
                .synced
                .wait(syncing)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *syncing = true;
        SyncTurn(store)
    }
}

impl Drop for SyncTurn<'_> {
    fn drop(&mut self) {
        *lock(&self.0.syncing) = false;
        self.0.synced.notify_all();
        // After the release: a waiter that looks again may take the turn.
        self.0.settled.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// An async waiter's claim of the next sync, on its way to a blocking
/// thread. Dropped unrun (the runtime shutting down), it lets the claim go
/// and wakes the other waiters, so none waits for a sync nobody will run.
struct SyncClaim(Option<Arc<ObjectStore>>);

impl SyncClaim {
    /// Takes the syncer's turn (on the blocking thread: never held while
    /// the sync waits for a thread), lets the claim go, and syncs the open
    /// batch, whoever's changes it holds.
    fn sync(mut self) {
        let store = self.0.take().expect("a claim syncs once");
        let _turn = SyncTurn::take(&store);
        store.sync_claimed.store(false, Ordering::Release);
        store.sync_open_batch();
    }
}

impl Drop for SyncClaim {
    fn drop(&mut self) {
        if let Some(store) = self.0.take() {
            store.sync_claimed.store(false, Ordering::Release);
            store.settled.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`] if `mutex` is free at once; `None` if another caller holds it.
fn try_lock<T>(mutex: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

pub(crate) fn io(error: std::io::Error) -> StoreError {
    if error.kind() == std::io::ErrorKind::StorageFull {
        return StoreError::NoSpace;
    }
    StoreError::Io(error.to_string())
}

/// Runs a sync step, turning a panic into an error so that the caller can
/// still put back what it took.
fn caught(step: impl FnOnce() -> Result<(), StoreError>) -> Result<(), StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(step))
        .unwrap_or_else(|_| Err(StoreError::Io("a sync step panicked".into())))
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A read's key and length are within bounds.
fn check_read(key: &ObjectKey, len: u64) -> Result<(), StoreError> {
    check_key(key)?;
    if len > MAX_READ_LEN {
        return Err(StoreError::Invalid(format!(
            "reads are at most {MAX_READ_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_key(key: &ObjectKey) -> Result<(), StoreError> {
    if key.name.is_empty() || key.name.len() > MAX_NAME_LEN {
        return Err(StoreError::Invalid(format!(
            "object names are 1..={MAX_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_range(offset: u64, len: u64) -> Result<u64, StoreError> {
    offset
        .checked_add(len)
        .filter(|end| *end <= MAX_OBJECT_SIZE)
        .ok_or_else(|| StoreError::Invalid(format!("objects end at {MAX_OBJECT_SIZE} bytes")))
}

/// The write-ahead log's length after each commit, as SQLite reports it
/// (frames of one page each). Set after `wal_autocheckpoint`, which
/// replaces the hook.
fn watch_log_length(conn: &mut Connection) -> Result<Arc<AtomicU64>, StoreError> {
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let log_bytes = Arc::new(AtomicU64::new(0));
    let watched = log_bytes.clone();
    conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, frames: i32| {
        watched.store(frames.max(0) as u64 * page_size as u64, Ordering::Relaxed);
        Ok(())
    }))?;
    Ok(log_bytes)
}

/// Copies the write-ahead log into the database durably (see the module
/// doc): SQLite syncs at `NORMAL` for the checkpoint only. A checkpoint
/// that could not copy the whole log did not sync the database, and fails.
fn durable_checkpoint(conn: &Connection) -> Result<(), StoreError> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let copied = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    conn.pragma_update(None, "synchronous", "OFF")?;
    match copied? {
        (0, log, copied) if log == copied => Ok(()),
        (busy, log, copied) => Err(StoreError::Io(format!(
            "checkpoint copied {copied} of {log} log frames (busy {busy})"
        ))),
    }
}

impl Drop for ObjectStore {
    /// SQLite checkpoints on close without syncing at `synchronous = OFF`
    /// and then deletes the log: leave nothing for it to copy.
    fn drop(&mut self) {
        let mut inner = lock(&self.inner);
        // Every member of an open batch waits for it: none is left but an
        // empty one.
        let Inner { batches, conn, .. } = &mut *inner;
        if let Committed::Batch(outcome) = batches.commit(conn) {
            let _ = outcome.set(Ok(()));
        }
        if let Err(error) = self.checkpoint(&mut inner) {
            tracing::warn!(%error, "object store final checkpoint failed");
        }
    }
}

impl ObjectStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<ObjectStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join(DATABASE);
        let mut conn = Connection::open_with_flags_and_vfs(
            &path,
            OpenFlags::default(),
            gathered_log::vfs_name()?,
        )?;
        // This connection is the database's only user: holding its locks
        // for good keeps the log index in memory, and spares every
        // transaction the file locking (and keeps a second OSD process
        // off the same store).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        // Each change runs in a savepoint (see crate::batch), whose undo
        // journal would otherwise be a temporary file: three `pwrite`s for
        // every page a change touches. It holds the original of each page
        // one change touches (many only for garbage collection's); SQLite's
        // own temporary tables, for sorting, live in memory too.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(content::SCHEMA)?;
        content::migrate(&conn)?;
        conn.execute_batch(pglog::SCHEMA)?;
        conn.set_prepared_statement_cache_capacity(64);
        // The query planner stability guarantee keeps cached statements
        // prepared: without it SQLite expires one whose plan might depend
        // on a bound value (a range over an indexed column) whenever the
        // cache clears its bindings, and a read parsed its SQL again.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        let log_bytes = watch_log_length(&mut conn)?;
        let mut wal_path = path.into_os_string();
        wal_path.push("-wal");
        let wal = File::open(&wal_path).map_err(io)?;
        // Whatever an earlier run left unsynced is synced before it counts.
        wal.sync_data().map_err(io)?;
        let content = ContentStore::open(&dir.join(SEGMENTS))?;
        Ok(ObjectStore {
            inner: Mutex::new(Inner {
                conn,
                content,
                batches: Batches::default(),
                since_checkpoint: 0,
                log_bytes,
                trails: ReadTrails::default(),
            }),
            wal,
            syncing: Mutex::new(false),
            synced: Condvar::new(),
            sync_claimed: AtomicBool::new(false),
            settled: tokio::sync::watch::Sender::new(0),
        })
    }

    /// [`ObjectStore::durable`] without holding a thread while others sync:
    /// the first waiter to find no sync claimed commits and syncs the open
    /// batch on a blocking thread (one for the whole batch), the others
    /// wait for the next release of the syncer's turn and look again (all
    /// of them: one batch usually settles them all).
    pub async fn durable_async<T>(self: &Arc<Self>, staged: Staged<T>) -> Result<T, StoreError> {
        let mut settled = self.settled.subscribe();
        loop {
            if let Some(result) = staged.outcome.get() {
                return result
                    .clone()
                    .map(|()| staged.value)
                    .map_err(|failure| failure.to_error());
            }
            if !self.sync_claimed.swap(true, Ordering::AcqRel) {
                let claim = SyncClaim(Some(self.clone()));
                let synced = tokio::task::spawn_blocking(move || claim.sync()).await;
                if synced.is_err() && staged.outcome.get().is_none() {
                    return Err(StoreError::Io("the store's sync did not run".into()));
                }
                continue;
            }
            // The claimed sync bumps `settled` when it releases the turn.
            let _ = settled.changed().await;
        }
    }

    /// Runs `change` atomically (all of it or none) and returns once it is
    /// durable.
    fn mutate<T>(
        &self,
        change: impl FnOnce(&Connection, &mut ContentStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut results = self.mutate_each([change]);
        results.pop().expect("one result per change")
    }

    /// Runs each change atomically on its own, all in the open batch, and
    /// returns once they are durable: a result per change, in order.
    fn mutate_each<T, C>(&self, changes: impl IntoIterator<Item = C>) -> Vec<Result<T, StoreError>>
    where
        C: FnOnce(&Connection, &mut ContentStore) -> Result<T, StoreError>,
    {
        self.stage_each(changes)
            .into_iter()
            // Settled after the first wait when (as usual) all share one.
            .map(|staged| self.durable(staged?))
            .collect()
    }

    /// Runs each change atomically on its own in the open batch and returns
    /// without waiting for the batch to be durable.
    fn stage_each<T, C>(
        &self,
        changes: impl IntoIterator<Item = C>,
    ) -> Vec<Result<Staged<T>, StoreError>>
    where
        C: FnOnce(&Connection, &mut ContentStore) -> Result<T, StoreError>,
    {
        let mut inner = lock(&self.inner);
        Self::stage_each_in(&mut inner, changes)
    }

    /// [`ObjectStore::stage_each`] if the store is free at once; `None`
    /// (nothing staged) if another caller holds it.
    fn try_stage_each<T, C>(
        &self,
        changes: impl IntoIterator<Item = C>,
    ) -> Option<Vec<Result<Staged<T>, StoreError>>>
    where
        C: FnOnce(&Connection, &mut ContentStore) -> Result<T, StoreError>,
    {
        let mut inner = try_lock(&self.inner)?;
        Some(Self::stage_each_in(&mut inner, changes))
    }

    fn stage_each_in<T, C>(
        inner: &mut Inner,
        changes: impl IntoIterator<Item = C>,
    ) -> Vec<Result<Staged<T>, StoreError>>
    where
        C: FnOnce(&Connection, &mut ContentStore) -> Result<T, StoreError>,
    {
        let Inner {
            conn,
            content,
            batches,
            ..
        } = inner;
        changes
            .into_iter()
            .map(|change| {
                // Joined anew for each: a change that fails its whole
                // batch leaves the next to begin another.
                let outcome = batches.join(conn)?;
                let value = batches.apply(conn, content, change);
                if value.is_err() {
                    // Its segment row or chunks may have been undone.
                    content.abandon_active();
                }
                Ok(Staged {
                    value: value?,
                    outcome,
                })
            })
            .collect()
    }

    /// Waits until a staged change is durable (committing and syncing its
    /// batch if nobody else is) and returns its value; the error if its
    /// batch failed (then the change is not stored).
    pub fn durable<T>(&self, staged: Staged<T>) -> Result<T, StoreError> {
        self.make_durable(&staged.outcome)?;
        Ok(staged.value)
    }

    fn checkpoint(&self, inner: &mut Inner) -> Result<(), StoreError> {
        // The chunks the log names must be durable before the log is copied.
        let dirty = inner.content.take_dirty();
        if let Err(error) = caught(|| content::sync_spans(&dirty)) {
            inner.content.restore_dirty(&dirty);
            return Err(error);
        }
        durable_checkpoint(&inner.conn)?;
        inner.since_checkpoint = 0;
        Ok(())
    }

    /// Waits until the batch of `outcome` is durable (or failed),
    /// committing and syncing the open batch if nobody else is.
    fn make_durable(&self, outcome: &Outcome) -> Result<(), StoreError> {
        loop {
            if let Some(settled) = outcome.get() {
                return settled.clone().map_err(|failure| failure.to_error());
            }
            // Waits while another caller syncs, which may settle this one.
            let _turn = SyncTurn::take(self);
            if outcome.get().is_none() {
                self.sync_open_batch();
            }
        }
    }

    /// Commits the open batch and makes it durable: the segments it wrote,
    /// then the log. Settles its outcome either way, a panic included.
    fn sync_open_batch(&self) {
        let mut committed = None;
        let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.commit_and_sync(&mut committed)
        }))
        .unwrap_or_else(|_| Err(StoreError::Io("the store's sync panicked".into())));
        if let Some(outcome) = committed {
            let _ = outcome.set(synced.map_err(|error| Failure::of(&error)));
        }
    }

    /// Commits the open batch (its outcome into `committed`) and syncs it.
    fn commit_and_sync(&self, committed: &mut Option<Outcome>) -> Result<(), StoreError> {
        let dirty = {
            let mut inner = lock(&self.inner);
            let Inner {
                conn,
                content,
                batches,
                ..
            } = &mut *inner;
            match batches.commit(conn) {
                Committed::Batch(outcome) => *committed = Some(outcome),
                Committed::Failed => {
                    content.abandon_active();
                    return Ok(());
                }
                Committed::Nothing => return Ok(()),
            }
            inner.since_checkpoint += 1;
            // The batch is durable through the log either way; a failed
            // checkpoint is retried after the next batch.
            let due = inner.since_checkpoint >= CHECKPOINT_EVERY_COMMITS
                || inner.log_bytes.load(Ordering::Relaxed) >= CHECKPOINT_EVERY_LOG_BYTES;
            if due && let Err(error) = self.checkpoint(&mut inner) {
                tracing::warn!(%error, "object store checkpoint failed");
            }
            inner.content.take_dirty()
        };
        let synced =
            caught(|| content::sync_spans(&dirty).and_then(|()| self.wal.sync_data().map_err(io)));
        if synced.is_err() {
            // Put them back so a later sync retries them (their batch is
            // committed: a later batch's log sync would otherwise make it
            // durable without its bytes).
            lock(&self.inner).content.restore_dirty(&dirty);
        }
        synced
    }

    fn object_id(conn: &Connection, key: &ObjectKey) -> Result<Option<(i64, u64)>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT id, size FROM objects WHERE pool = ?1 AND name = ?2")?
            .query_row(params![key.pg.pool.0, key.name], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()?)
    }

    fn object_or_create(conn: &Connection, key: &ObjectKey) -> Result<(i64, u64), StoreError> {
        if let Some(found) = ObjectStore::object_id(conn, key)? {
            return Ok(found);
        }
        conn.prepare_cached(
            "INSERT INTO objects (pool, pg, name, size, version, mtime_ns) VALUES (?1, ?2, ?3, 0, 0, ?4)",
        )?
        .execute(params![key.pg.pool.0, key.pg.seed, key.name, now_ns()])?;
        Ok((conn.last_insert_rowid(), 0))
    }

    /// The extents of `object` overlapping `[start, end)`.
    fn load_extents(
        conn: &Connection,
        object: i64,
        start: u64,
        end: u64,
    ) -> Result<Vec<Extent>, StoreError> {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        let row = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, i64>(3)? as u64,
            ))
        };
        // The extent that may cover `start`, then those starting inside.
        let covering_start = conn
            .prepare_cached(
                "SELECT offset, len, chunk, chunk_offset FROM extents \
                 WHERE object = ?1 AND offset <= ?2 ORDER BY offset DESC LIMIT 1",
            )?
            .query_row(params![object, clamp(start)], row)
            .optional()?;
        let mut statement = conn.prepare_cached(
            "SELECT offset, len, chunk, chunk_offset FROM extents \
             WHERE object = ?1 AND offset > ?2 AND offset < ?3 ORDER BY offset",
        )?;
        let after = statement.query_map(params![object, clamp(start), clamp(end)], row)?;
        let mut extents = Vec::new();
        for found in covering_start.into_iter().map(Ok).chain(after) {
            let (offset, len, chunk, chunk_offset) = found?;
            if offset + len > start && offset < end {
                extents.push(Extent {
                    offset,
                    len,
                    chunk: content::chunk_id(&chunk)?,
                    chunk_offset,
                });
            }
        }
        Ok(extents)
    }

    /// Applies `edit` to the extents of `object` in `[start, end)` and
    /// stores the result, keeping chunk references right.
    fn edit_extents(
        conn: &Connection,
        content: &ContentStore,
        object: i64,
        (start, end): (u64, u64),
        edit: impl FnOnce(&mut ExtentMap) -> RefChange,
    ) -> Result<(), StoreError> {
        let loaded = ObjectStore::load_extents(conn, object, start, end)?;
        let mut map = ExtentMap::from_extents(loaded.iter().copied());
        let change = edit(&mut map).netted();
        // The loaded extents are every extent of the object from the first
        // to the last of them (each starts inside the range but the first).
        if let (Some(first), Some(last)) = (loaded.first(), loaded.last()) {
            conn.prepare_cached(
                "DELETE FROM extents WHERE object = ?1 AND offset BETWEEN ?2 AND ?3",
            )?
            .execute(params![object, first.offset as i64, last.offset as i64])?;
        }
        let mut insert = conn.prepare_cached(
            "INSERT INTO extents (object, offset, len, chunk, chunk_offset) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for extent in map.extents() {
            insert.execute(params![
                object,
                extent.offset as i64,
                extent.len as i64,
                &extent.chunk[..],
                extent.chunk_offset as i64
            ])?;
        }
        content.add_refs(conn, &change.added, 1)?;
        content.release(conn, &change.removed)?;
        Ok(())
    }

    fn touch(conn: &Connection, object: i64, size: u64) -> Result<ObjectStat, StoreError> {
        let mtime_ns = now_ns();
        let version: i64 = conn
            .prepare_cached(
                "UPDATE objects SET size = ?2, version = version + 1, mtime_ns = ?3 WHERE id = ?1 RETURNING version",
            )?
            .query_row(params![object, size as i64, mtime_ns], |r| r.get(0))?;
        Ok(ObjectStat {
            size,
            version: version as u64,
            mtime_ns,
        })
    }

    /// Writes `data` at `offset`, creating the object if needed.
    pub fn write(
        &self,
        key: &ObjectKey,
        offset: u64,
        data: &[u8],
    ) -> Result<ObjectStat, StoreError> {
        self.mutate(|conn, content| write_in(conn, content, key, offset, data, false))
    }

    /// Sets the size, dropping data beyond it (creating the object if needed).
    pub fn truncate(&self, key: &ObjectKey, size: u64) -> Result<ObjectStat, StoreError> {
        self.mutate(|conn, content| truncate_in(conn, content, key, size))
    }

    /// Makes `[offset, offset + len)` a hole; the size does not change.
    pub fn zero(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<ObjectStat, StoreError> {
        self.mutate(|conn, content| zero_in(conn, content, key, offset, len))
    }

    /// Deletes the object with its data and attributes.
    pub fn delete(&self, key: &ObjectKey) -> Result<(), StoreError> {
        self.mutate(|conn, content| delete_in(conn, content, key))
    }

    pub fn set_attr(&self, key: &ObjectKey, name: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.mutate(|conn, _| set_attr_in(conn, key, name, value).map(drop))
    }

    /// Applies a logged mutation of `key` and appends it to its PG's log, in
    /// one transaction: both or neither. `data` is a write's bytes. Returns
    /// the object's state after (`None` after a delete).
    pub fn apply_logged(
        &self,
        key: &ObjectKey,
        entry: &LogEntry,
        data: &[u8],
    ) -> Result<Option<ObjectStat>, StoreError> {
        self.durable(self.stage_logged(key, entry, data)?)
    }

    /// [`ObjectStore::apply_logged`] without the wait: the mutation and its
    /// log entry are in the open batch (later changes and reads see them)
    /// but not yet durable; [`ObjectStore::durable`] waits for that. Lets
    /// a PG's primary order its next op while this one syncs.
    pub fn stage_logged<'a>(
        &self,
        key: &ObjectKey,
        entry: &LogEntry,
        body: impl Into<Body<'a>>,
    ) -> Result<Staged<Option<ObjectStat>>, StoreError> {
        self.stage_each([logged_change(key, entry, body.into())])
            .pop()
            .expect("one result per change")
    }

    /// [`ObjectStore::stage_logged`] if the store is free at once; `None`
    /// if another caller holds it.
    pub fn try_stage_logged<'a>(
        &self,
        key: &ObjectKey,
        entry: &LogEntry,
        body: impl Into<Body<'a>>,
    ) -> Option<Result<Staged<Option<ObjectStat>>, StoreError>> {
        self.try_stage_each([logged_change(key, entry, body.into())])
            .map(|mut staged| staged.pop().expect("one result per change"))
    }

    /// A replica's apply of logged mutations (of different objects): each
    /// like [`ObjectStore::apply_logged`], unless its PG log already
    /// reaches the entry (a resend: nothing changes), each on its own but
    /// sharing one commit and one sync. Whether each applied.
    pub fn apply_replicated_each(&self, entries: &[ReplicaItem]) -> Vec<Result<bool, StoreError>> {
        self.mutate_each(entries.iter().map(replicated_change))
    }

    /// [`ObjectStore::apply_replicated_each`] without the wait: the staged
    /// changes, for [`ObjectStore::durable_async`].
    pub fn stage_replicated_each(
        &self,
        entries: &[ReplicaItem],
    ) -> Vec<Result<Staged<bool>, StoreError>> {
        self.stage_each(entries.iter().map(replicated_change))
    }

    /// [`ObjectStore::stage_replicated_each`] if the store is free at once;
    /// `None` (nothing staged) if another caller holds it.
    pub fn try_stage_replicated_each(
        &self,
        entries: &[ReplicaItem],
    ) -> Option<Vec<Result<Staged<bool>, StoreError>>> {
        self.try_stage_each(entries.iter().map(replicated_change))
    }

    /// Bytes of content stored (segments as written, inline chunks).
    pub fn used_bytes(&self) -> Result<u64, StoreError> {
        let inner = lock(&self.inner);
        let in_segments: i64 =
            inner
                .conn
                .query_row("SELECT COALESCE(SUM(written), 0) FROM segments", [], |r| {
                    r.get(0)
                })?;
        Ok(in_segments as u64 + content::inline_bytes(&inner.conn)?)
    }

    /// Every object of `pg` with the log position of its last change.
    pub fn pg_objects(&self, pg: PgId) -> Result<Vec<(Vec<u8>, LogVersion)>, StoreError> {
        let inner = lock(&self.inner);
        let mut statement = inner.conn.prepare_cached(
            "SELECT name, at_epoch, at_version FROM objects WHERE pool = ?1 AND pg = ?2 ORDER BY name",
        )?;
        let rows = statement.query_map(params![pg.pool.0, pg.seed], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                LogVersion {
                    epoch: r.get::<_, i64>(1)? as u64,
                    version: r.get::<_, i64>(2)? as u64,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// How many objects each PG holds here.
    pub fn pg_object_counts(&self) -> Result<std::collections::HashMap<PgId, u64>, StoreError> {
        let inner = lock(&self.inner);
        let mut statement = inner
            .conn
            .prepare_cached("SELECT pool, pg, COUNT(*) FROM objects GROUP BY pool, pg")?;
        let counts = statement.query_map([], |r| {
            let pg = PgId {
                pool: aspen_placement::PoolId(r.get(0)?),
                seed: r.get(1)?,
            };
            Ok((pg, r.get::<_, i64>(2)? as u64))
        })?;
        Ok(counts.collect::<Result<_, _>>()?)
    }

    /// A whole object as recovery copies it: its bytes, size, attributes
    /// and last logged position (`None` if it does not exist).
    pub fn object_state(
        &self,
        key: &ObjectKey,
    ) -> Result<Option<(ObjectCopy, Vec<u8>)>, StoreError> {
        let inner = lock(&self.inner);
        let found = inner
            .conn
            .prepare_cached(
                "SELECT id, size, at_epoch, at_version FROM objects WHERE pool = ?1 AND name = ?2",
            )?
            .query_row(params![key.pg.pool.0, key.name], |r| {
                let at = LogVersion {
                    epoch: r.get::<_, i64>(2)? as u64,
                    version: r.get::<_, i64>(3)? as u64,
                };
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64, at))
            })
            .optional()?;
        let Some((object, size, at)) = found else {
            return Ok(None);
        };
        let plan = plan_read(&inner, object, 0, size, ReadPattern::Streaming)?;
        let mut statement = inner
            .conn
            .prepare_cached("SELECT name, value FROM attrs WHERE object = ?1 ORDER BY name")?;
        let attrs = statement
            .query_map([object], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        drop(statement);
        drop(inner);
        Ok(Some((ObjectCopy { size, attrs, at }, plan.assemble()?)))
    }

    /// Replaces `key` with a copy (or deletes it, for `None`), in one
    /// transaction. `data` is the whole object's bytes.
    pub fn install_object(
        &self,
        key: &ObjectKey,
        state: Option<&ObjectCopy>,
        data: &[u8],
    ) -> Result<(), StoreError> {
        self.mutate(|conn, content| {
            if ObjectStore::object_id(conn, key)?.is_some() {
                delete_in(conn, content, key)?;
            }
            let Some(state) = state else {
                return Ok(());
            };
            if data.len() as u64 > state.size {
                return Err(StoreError::Invalid(
                    "more data than the object's size".into(),
                ));
            }
            // A known-good copy: it also replaces damaged stored chunks.
            write_in(conn, content, key, 0, data, true)?;
            truncate_in(conn, content, key, state.size)?;
            for (name, value) in &state.attrs {
                set_attr_in(conn, key, name, value)?;
            }
            set_logged_at(conn, key, state.at)
        })
    }

    /// Sets `pg`'s newest log position (once recovery made this member
    /// equal to the authoritative one).
    pub fn set_pg_last(&self, pg: PgId, at: LogVersion) -> Result<(), StoreError> {
        self.mutate(|conn, _| pglog::set_last(conn, pg, at))
    }

    /// The newest position in `pg`'s log.
    pub fn pg_last(&self, pg: PgId) -> Result<LogVersion, StoreError> {
        pglog::last(&lock(&self.inner).conn, pg)
    }

    /// `pg`'s log entries after `after`.
    pub fn pg_entries_after(
        &self,
        pg: PgId,
        after: LogVersion,
    ) -> Result<Vec<LogEntry>, StoreError> {
        pglog::entries_after(&lock(&self.inner).conn, pg, after)
    }

    /// Reads up to `len` bytes at `offset` (fewer at the end of the object;
    /// holes read as zeros).
    pub fn read(&self, key: &ObjectKey, offset: u64, len: u64) -> Result<Vec<u8>, StoreError> {
        check_read(key, len)?;
        Self::plan_object_read(&mut lock(&self.inner), key, offset, len)?.assemble()
    }

    /// The pieces of [`ObjectStore::read`]'s read, located if the store is
    /// free at once; `None` (nothing located) if another caller holds it.
    pub fn try_plan_read(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Option<Result<ReadPlan, StoreError>> {
        if let Err(error) = check_read(key, len) {
            return Some(Err(error));
        }
        let mut inner = try_lock(&self.inner)?;
        Some(Self::plan_object_read(&mut inner, key, offset, len))
    }

    fn plan_object_read(
        inner: &mut Inner,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<ReadPlan, StoreError> {
        let start = ReadStart::find(&inner.conn, key, offset)?.ok_or(StoreError::NotFound)?;
        let end = offset.saturating_add(len).min(start.size);
        let pattern = inner.trails.classify(start.object, offset, len);
        if let Some(plan) = start.plan_if_one_extent(inner, offset, end, pattern)? {
            return Ok(plan);
        }
        plan_read(inner, start.object, offset, end, pattern)
    }

    pub fn stat(&self, key: &ObjectKey) -> Result<Option<ObjectStat>, StoreError> {
        let inner = lock(&self.inner);
        Ok(inner
            .conn
            .prepare_cached(
                "SELECT size, version, mtime_ns FROM objects WHERE pool = ?1 AND name = ?2",
            )?
            .query_row(params![key.pg.pool.0, key.name], |r| {
                Ok(ObjectStat {
                    size: r.get::<_, i64>(0)? as u64,
                    version: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                })
            })
            .optional()?)
    }

    /// The names of the objects in `pg`, in order.
    pub fn list(&self, pg: PgId) -> Result<Vec<Vec<u8>>, StoreError> {
        let inner = lock(&self.inner);
        let mut statement = inner
            .conn
            .prepare_cached("SELECT name FROM objects WHERE pool = ?1 AND pg = ?2 ORDER BY name")?;
        let names = statement
            .query_map(params![pg.pool.0, pg.seed], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(names)
    }

    pub fn get_attr(&self, key: &ObjectKey, name: &[u8]) -> Result<Vec<u8>, StoreError> {
        let inner = lock(&self.inner);
        let (object, _) = ObjectStore::object_id(&inner.conn, key)?.ok_or(StoreError::NotFound)?;
        inner
            .conn
            .prepare_cached("SELECT value FROM attrs WHERE object = ?1 AND name = ?2")?
            .query_row(params![object, name], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::NoAttr)
    }

    /// Reclaims space: applies the released chunk references, forgets
    /// unreferenced chunks and rewrites segments that are mostly dead, a
    /// step at a time (the store is free between steps), deleting their
    /// files once the rewrite is durable. Returns the bytes moved.
    pub fn collect_garbage(&self) -> Result<u64, StoreError> {
        let mut moved = 0;
        loop {
            let step = self.collect_garbage_step()?;
            moved += step.moved;
            if step.done {
                return Ok(moved);
            }
        }
    }

    /// One bounded step of [`ObjectStore::collect_garbage`]: up to
    /// [`RELEASE_STEP`] released references and, when that took the last of
    /// them, up to [`COMPACT_STEP_BYTES`] of compaction. Compaction is not
    /// starved by references released while it runs (those wait for the
    /// next collection), and the two commit apart, so a segment compaction
    /// cannot read (a damaged chunk) never holds back the released ones.
    pub fn collect_garbage_step(&self) -> Result<GcStep, StoreError> {
        let applied = self.mutate(|tx, content| content.apply_released(tx, RELEASE_STEP))?;
        if applied == RELEASE_STEP {
            return Ok(GcStep {
                moved: 0,
                done: false,
            });
        }
        let (moved, emptied) =
            self.mutate(|tx, content| content.compact_step(tx, COMPACT_STEP_BYTES))?;
        let inner = lock(&self.inner);
        for segment in &emptied {
            inner.content.remove_segment(*segment)?;
        }
        Ok(GcStep {
            moved,
            done: moved == 0 && emptied.is_empty(),
        })
    }

    /// The segment file holding the first data byte of `key` (for tests
    /// that damage stored content).
    pub fn segment_of(&self, key: &ObjectKey) -> Result<std::path::PathBuf, StoreError> {
        let inner = lock(&self.inner);
        let (object, _) = ObjectStore::object_id(&inner.conn, key)?.ok_or(StoreError::NotFound)?;
        let segment: i64 = inner.conn.query_row(
            "SELECT c.segment FROM extents e JOIN chunks c ON c.id = e.chunk \
             WHERE e.object = ?1 ORDER BY e.offset LIMIT 1",
            [object],
            |r| r.get(0),
        )?;
        Ok(inner.content.segment_file(segment))
    }
}

/// A replicated entry to apply: its object, the entry, and its bytes.
pub type ReplicaItem<'a> = (ObjectKey, &'a LogEntry, Body<'a>);

/// A logged write's bytes, with the hash trees of the chunks the store
/// cuts them into when the PG's primary computed those already
/// ([`write_trees`]), so its replicas store the bytes without hashing
/// them again. Without trees the store hashes the bytes itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Body<'a> {
    pub bytes: &'a [u8],
    pub trees: &'a [u8],
}

impl<'a> From<&'a [u8]> for Body<'a> {
    fn from(bytes: &'a [u8]) -> Body<'a> {
        Body { bytes, trees: &[] }
    }
}

impl<'a> From<&'a Vec<u8>> for Body<'a> {
    fn from(bytes: &'a Vec<u8>) -> Body<'a> {
        Body::from(&bytes[..])
    }
}

impl<'a, const N: usize> From<&'a [u8; N]> for Body<'a> {
    fn from(bytes: &'a [u8; N]) -> Body<'a> {
        Body::from(&bytes[..])
    }
}

/// The hash trees of the chunks the store cuts the bytes of a logged
/// `op` into and keeps in segment files ([`in_segment`]), one after
/// another in the order it stores them: what a primary hashes once for
/// itself and its replicas. Empty when every chunk stays inline (a small
/// write of small chunks), for an op that carries no bytes, and for a
/// malformed one (the store refuses that anyway).
pub fn write_trees(op: &ObjectOp, body: &[u8]) -> Vec<u8> {
    // No chunk is longer than the body: a short one stays inline whole,
    // and its op need not be parsed (the primary asks for every write).
    if !in_segment(body.len(), body.len().min(MAX_CHUNK)) {
        return Vec::new();
    }
    match writes_of(op, body) {
        Some(Ok(writes)) => segment_chunks(&writes, body.len())
            .flat_map(tree::build)
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a chunk of `chunk_len` bytes, cut from a write of `write_len`
/// bytes in all, is stored in a segment file with its hash tree (or
/// inline, without one).
pub fn in_segment(write_len: usize, chunk_len: usize) -> bool {
    write_len > content::SMALL_WRITE_MAX || chunk_len > content::INLINE_CHUNK_MAX
}

/// A primary's change: `entry` appended to its PG's log and applied.
fn logged_change<'a>(
    key: &'a ObjectKey,
    entry: &'a LogEntry,
    body: Body<'a>,
) -> impl FnOnce(&Connection, &mut ContentStore) -> Result<Option<ObjectStat>, StoreError> + 'a {
    move |conn, content| {
        let last = pglog::last(conn, key.pg)?;
        apply_entry_in(conn, content, key, last, entry, body)
    }
}

fn replicated_change<'a>(
    (key, entry, body): &'a ReplicaItem<'a>,
) -> impl FnOnce(&Connection, &mut ContentStore) -> Result<bool, StoreError> + 'a {
    move |conn, content| replicated_in(conn, content, key, entry, *body)
}

/// A replica's apply of `entry`, unless its PG log already reaches it (a
/// resend, which must match the entry logged at its version if the log
/// still holds it); refused unless it is the next version (the primary
/// pipelines a PG's entries, so a lost one must not be skipped over).
fn replicated_in(
    conn: &Connection,
    content: &mut ContentStore,
    key: &ObjectKey,
    entry: &LogEntry,
    body: Body,
) -> Result<bool, StoreError> {
    let last = pglog::last(conn, key.pg)?;
    if entry.at.version > last.version {
        apply_entry_in(conn, content, key, last, entry, body)?;
        return Ok(true);
    }
    match pglog::entry_at(conn, key.pg, entry.at.version)? {
        Some(logged) if logged != *entry => Err(StoreError::Diverged(format!(
            "{:?} logged {:?} at version {}, not {:?}",
            key.pg, logged.at, entry.at.version, entry.at
        ))),
        _ => Ok(false),
    }
}

fn write_in(
    conn: &Connection,
    content: &mut ContentStore,
    key: &ObjectKey,
    offset: u64,
    data: &[u8],
    verify_existing: bool,
) -> Result<ObjectStat, StoreError> {
    write_all_in(conn, content, key, &[(offset, data)], &[], verify_existing)
}

/// Writes in order, each the `(offset, bytes)` of one.
type Writes<'a> = Vec<(u64, &'a [u8])>;

/// The writes a logged write `op` applies, each `(offset, bytes)` of
/// `body`, in order; `None` for an op that writes no bytes.
fn writes_of<'a>(op: &ObjectOp, body: &'a [u8]) -> Option<Result<Writes<'a>, StoreError>> {
    match op {
        ObjectOp::Write { offset } => Some(Ok(vec![(*offset, body)])),
        ObjectOp::WriteExtents { extents } => Some(split_pieces(extents, body)),
        _ => None,
    }
}

/// The chunks the store cuts `writes` (`total` bytes) into and keeps in
/// segment files, with their trees, in the order it stores them.
fn segment_chunks<'a>(
    writes: &'a [(u64, &'a [u8])],
    total: usize,
) -> impl Iterator<Item = &'a [u8]> {
    writes
        .iter()
        .flat_map(|(_, data)| data.chunks(MAX_CHUNK))
        .filter(move |chunk| in_segment(total, chunk.len()))
}

/// `data` cut into consecutive pieces, at the `(offset, len)` of each.
fn split_pieces<'a>(extents: &[(u64, u64)], data: &'a [u8]) -> Result<Writes<'a>, StoreError> {
    let mut pieces = Vec::with_capacity(extents.len());
    let mut rest = data;
    for &(offset, len) in extents {
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= rest.len())
            .ok_or_else(|| StoreError::Invalid("the pieces run past the body".into()))?;
        let (piece, after) = rest.split_at(len);
        pieces.push((offset, piece));
        rest = after;
    }
    if pieces.is_empty() || !rest.is_empty() {
        return Err(StoreError::Invalid(
            "the pieces do not add up to the body".into(),
        ));
    }
    Ok(pieces)
}

/// Writes each `(offset, bytes)` in order (a later one over an earlier
/// one wins), with one edit of the object's extent map.
fn write_all_in(
    conn: &Connection,
    content: &mut ContentStore,
    key: &ObjectKey,
    writes: &[(u64, &[u8])],
    trees: &[u8],
    verify_existing: bool,
) -> Result<ObjectStat, StoreError> {
    check_key(key)?;
    let (mut start, mut end) = (u64::MAX, 0);
    for (offset, data) in writes {
        start = start.min(*offset);
        end = end.max(check_range(*offset, data.len() as u64)?);
    }
    let (object, size) = ObjectStore::object_or_create(conn, key)?;
    let total: usize = writes.iter().map(|(_, data)| data.len()).sum();
    let mut known_trees = KnownTrees::new(trees, writes, total)?;
    let mut pieces = Vec::new();
    // The references new chunks were stored holding (see
    // content::Put::held), given up again below against those the extent
    // map's edit adds.
    let mut held = Vec::new();
    for (offset, data) in writes {
        for (index, piece) in data.chunks(MAX_CHUNK).enumerate() {
            let inline = !in_segment(total, piece.len());
            let tree = if inline {
                None
            } else {
                known_trees.next(piece.len())
            };
            let how = content::Put {
                verify_existing,
                inline,
                known_tree: tree,
                held: true,
            };
            let stored = content.put(conn, piece, how)?;
            if stored.new {
                held.push(stored.id);
            }
            pieces.push(Extent {
                offset: offset + (index * MAX_CHUNK) as u64,
                len: piece.len() as u64,
                chunk: stored.id,
                chunk_offset: 0,
            });
        }
    }
    ObjectStore::edit_extents(conn, content, object, (start.min(end), end), |map| {
        let mut change = RefChange {
            removed: held,
            ..RefChange::default()
        };
        for piece in pieces {
            let step = map.write(piece);
            change.added.extend(step.added);
            change.removed.extend(step.removed);
        }
        change
    })?;
    ObjectStore::touch(conn, object, size.max(end))
}

/// The trees a primary sent with a write, handed out chunk by chunk.
struct KnownTrees<'a>(Option<&'a [u8]>);

impl<'a> KnownTrees<'a> {
    /// Checks that `trees` (if any) are as long as the trees of the
    /// chunks of `writes` (`total` bytes) that go to segments, together.
    fn new(
        trees: &'a [u8],
        writes: &[(u64, &[u8])],
        total: usize,
    ) -> Result<KnownTrees<'a>, StoreError> {
        if trees.is_empty() {
            return Ok(KnownTrees(None));
        }
        let expected: usize = segment_chunks(writes, total)
            .map(|chunk| tree::tree_len(chunk.len()))
            .sum();
        if trees.len() != expected {
            return Err(StoreError::Invalid(format!(
                "{} bytes of hash trees for a write whose chunks have {expected}",
                trees.len()
            )));
        }
        Ok(KnownTrees(Some(trees)))
    }

    /// The tree of the next chunk that goes to a segment, `len` bytes long.
    fn next(&mut self, len: usize) -> Option<&'a [u8]> {
        let trees = self.0?;
        let (tree, rest) = trees.split_at(tree::tree_len(len));
        self.0 = Some(rest);
        Some(tree)
    }
}

fn truncate_in(
    conn: &Connection,
    content: &mut ContentStore,
    key: &ObjectKey,
    size: u64,
) -> Result<ObjectStat, StoreError> {
    check_key(key)?;
    check_range(size, 0)?;
    let (object, _) = ObjectStore::object_or_create(conn, key)?;
    ObjectStore::edit_extents(conn, content, object, (size, u64::MAX), |map| {
        map.truncate(size)
    })?;
    ObjectStore::touch(conn, object, size)
}

fn zero_in(
    conn: &Connection,
    content: &mut ContentStore,
    key: &ObjectKey,
    offset: u64,
    len: u64,
) -> Result<ObjectStat, StoreError> {
    check_key(key)?;
    let end = check_range(offset, len)?;
    let (object, size) = ObjectStore::object_id(conn, key)?.ok_or(StoreError::NotFound)?;
    ObjectStore::edit_extents(conn, content, object, (offset, end), |map| {
        map.clear(offset, end)
    })?;
    ObjectStore::touch(conn, object, size)
}

fn delete_in(
    conn: &Connection,
    content: &mut ContentStore,
    key: &ObjectKey,
) -> Result<(), StoreError> {
    check_key(key)?;
    let (object, _) = ObjectStore::object_id(conn, key)?.ok_or(StoreError::NotFound)?;
    ObjectStore::edit_extents(conn, content, object, (0, u64::MAX), |map| {
        map.clear(0, u64::MAX)
    })?;
    conn.execute("DELETE FROM attrs WHERE object = ?1", [object])?;
    conn.execute("DELETE FROM objects WHERE id = ?1", [object])?;
    Ok(())
}

fn set_attr_in(
    conn: &Connection,
    key: &ObjectKey,
    name: &[u8],
    value: &[u8],
) -> Result<ObjectStat, StoreError> {
    check_key(key)?;
    if name.is_empty() || name.len() > MAX_ATTR_NAME_LEN || value.len() > MAX_ATTR_VALUE_LEN {
        return Err(StoreError::Invalid(format!(
            "attribute names are 1..={MAX_ATTR_NAME_LEN} bytes, values at most {MAX_ATTR_VALUE_LEN}"
        )));
    }
    let (object, size) = ObjectStore::object_id(conn, key)?.ok_or(StoreError::NotFound)?;
    conn.prepare_cached(
        "INSERT INTO attrs (object, name, value) VALUES (?1, ?2, ?3) \
         ON CONFLICT (object, name) DO UPDATE SET value = ?3",
    )?
    .execute(params![object, name, value])?;
    ObjectStore::touch(conn, object, size)
}

fn set_logged_at(conn: &Connection, key: &ObjectKey, at: LogVersion) -> Result<(), StoreError> {
    conn.prepare_cached(
        "UPDATE objects SET at_epoch = ?3, at_version = ?4 WHERE pool = ?1 AND name = ?2",
    )?
    .execute(params![
        key.pg.pool.0,
        key.name,
        at.epoch as i64,
        at.version as i64
    ])?;
    Ok(())
}

/// Applies a logged mutation and appends it to its PG's log, whose last
/// position is `last`. The position is checked first, so a gap is
/// reported as one whatever the mutation would have answered.
fn apply_entry_in(
    conn: &Connection,
    content: &mut ContentStore,
    key: &ObjectKey,
    last: LogVersion,
    entry: &LogEntry,
    body: Body,
) -> Result<Option<ObjectStat>, StoreError> {
    pglog::check_next(key.pg, last, entry.at)?;
    let stat = match (&entry.op, writes_of(&entry.op, body.bytes)) {
        (_, Some(writes)) => Some(write_all_in(
            conn, content, key, &writes?, body.trees, false,
        )?),
        (ObjectOp::Truncate { size }, _) => Some(truncate_in(conn, content, key, *size)?),
        (ObjectOp::Zero { offset, len }, _) => Some(zero_in(conn, content, key, *offset, *len)?),
        (ObjectOp::Delete, _) => {
            delete_in(conn, content, key)?;
            None
        }
        (ObjectOp::SetAttr { name, value }, _) => Some(set_attr_in(conn, key, name, value)?),
        (other, _) => return Err(StoreError::Invalid(format!("{other:?} is not a mutation"))),
    };
    pglog::append(conn, key.pg, entry)?;
    if stat.is_some() {
        set_logged_at(conn, key, entry.at)?;
    }
    Ok(stat)
}

/// The most pieces (extents and holes) a read assembles where it must not
/// wait ([`ReadPlan::assemble_cached`]): each chunk's piece reads and
/// checks the chunk's stored tree and hashes at least one tree piece, so a
/// read across many small extents is work for a thread that may wait.
pub const CACHED_READ_MAX_PIECES: usize = 16;

/// A read located under the store's lock, its bytes still to read
/// ([`ReadPlan::assemble`]) once the lock is released.
pub struct ReadPlan {
    pieces: Vec<PlannedPiece>,
}

impl ReadPlan {
    /// Whether assembling reads segment files (a wait for the disk when
    /// their pages are not cached), not only bytes already in memory.
    pub fn reads_segments(&self) -> bool {
        self.pieces.iter().any(|piece| match piece {
            PlannedPiece::Hole(_) => false,
            PlannedPiece::Data { chunk, .. } => chunk.in_segment(),
        })
    }

    /// The read's bytes, each chunk verified against its id.
    pub fn assemble(self) -> Result<Vec<u8>, StoreError> {
        content::waited(self.assemble_if(Wait::ForDisk)?)
    }

    /// [`ReadPlan::assemble`] if none of its bytes waits for the disk (the
    /// segment pages it reads are all cached) and it is little work (at
    /// most [`CACHED_READ_MAX_PIECES`] pieces, no chunk of a segment
    /// written before hash trees over one tree piece: those are hashed
    /// whole); `None` otherwise.
    pub fn assemble_cached(&self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.pieces.len() > CACHED_READ_MAX_PIECES {
            return Ok(None);
        }
        self.assemble_if(Wait::ForNothing)
    }

    fn assemble_if(&self, wait: Wait) -> Result<Option<Vec<u8>>, StoreError> {
        let total: u64 = self
            .pieces
            .iter()
            .map(|piece| match piece {
                PlannedPiece::Hole(len) => *len,
                PlannedPiece::Data { range, .. } => range.len() as u64,
            })
            .sum();
        let mut bytes = Vec::with_capacity(total as usize);
        for piece in &self.pieces {
            match piece {
                PlannedPiece::Hole(len) => bytes.resize(bytes.len() + *len as usize, 0),
                PlannedPiece::Data { chunk, range } => match chunk.read_if(range.clone(), wait)? {
                    Some(read) => bytes.extend_from_slice(&read),
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(bytes))
    }
}

/// One piece of a read, located under the store's lock.
enum PlannedPiece {
    Hole(u64),
    Data {
        chunk: content::ChunkRead,
        range: std::ops::Range<usize>,
    },
}

/// What one statement finds for a read at `offset` of an object: the
/// object, its size, and the extent that may cover `offset` with its
/// chunk's location. Most small reads lie in one extent, and this is all
/// their plan needs (four statements otherwise: the object, the extents
/// covering and following `offset`, the chunk).
struct ReadStart {
    object: i64,
    size: u64,
    extent: Option<(Extent, Option<content::Location>)>,
}

impl ReadStart {
    fn find(
        conn: &Connection,
        key: &ObjectKey,
        offset: u64,
    ) -> Result<Option<ReadStart>, StoreError> {
        // The chunk's columns are those of `ContentStore::locate`.
        let mut statement = conn.prepare_cached(
            "SELECT o.id, o.size, e.offset, e.len, e.chunk, e.chunk_offset, \
                    c.segment, c.offset, c.len, COALESCE(s.tree, 0) \
             FROM objects o \
             LEFT JOIN extents e ON e.object = o.id AND e.offset = ( \
                 SELECT x.offset FROM extents x WHERE x.object = o.id AND x.offset <= ?3 \
                 ORDER BY x.offset DESC LIMIT 1) \
             LEFT JOIN chunks c ON c.id = e.chunk \
             LEFT JOIN segments s ON s.id = c.segment \
             WHERE o.pool = ?1 AND o.name = ?2",
        )?;
        let clamped = offset.min(i64::MAX as u64) as i64;
        let found = statement
            .query_row(params![key.pg.pool.0, key.name, clamped], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)? as u64,
                    found_extent(r)?,
                ))
            })
            .optional()?;
        let Some((object, size, extent)) = found else {
            return Ok(None);
        };
        let extent = match extent {
            None => None,
            Some(found) => Some((
                Extent {
                    chunk: content::chunk_id(&found.stored_chunk)?,
                    ..found.extent
                },
                found.location,
            )),
        };
        Ok(Some(ReadStart {
            object,
            size,
            extent,
        }))
    }

    /// The plan of `offset..end` when the extent found covers all of it
    /// and its chunk was located; `None` sends the read to [`plan_read`].
    fn plan_if_one_extent(
        &self,
        inner: &Inner,
        offset: u64,
        end: u64,
        pattern: ReadPattern,
    ) -> Result<Option<ReadPlan>, StoreError> {
        let Some((extent, Some(location))) = self.extent else {
            return Ok(None);
        };
        if offset >= end || extent.offset > offset || extent.offset.saturating_add(extent.len) < end
        {
            return Ok(None);
        }
        let chunk =
            inner
                .content
                .start_located_read(&inner.conn, &extent.chunk, location, pattern)?;
        let start = extent.chunk_offset.saturating_add(offset - extent.offset);
        let range = start as usize..start.saturating_add(end - offset) as usize;
        Ok(Some(ReadPlan {
            pieces: vec![PlannedPiece::Data { chunk, range }],
        }))
    }
}

/// The extent of [`ReadStart::find`]'s row (columns 2-5) as stored: its
/// chunk's id still unchecked (`extent.chunk` is left zero), and the
/// chunk's location (columns 6-9, absent if the chunk has no row).
struct FoundExtent {
    extent: Extent,
    stored_chunk: Vec<u8>,
    location: Option<content::Location>,
}

fn found_extent(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<FoundExtent>> {
    let Some(offset) = r.get::<_, Option<i64>>(2)? else {
        return Ok(None);
    };
    let location = match r.get::<_, Option<i64>>(6)? {
        None => None,
        Some(segment) => Some(content::Location::from_columns(
            segment,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
        )),
    };
    Ok(Some(FoundExtent {
        extent: Extent {
            offset: offset as u64,
            len: r.get::<_, i64>(3)? as u64,
            chunk: [0; 32],
            chunk_offset: r.get::<_, i64>(5)? as u64,
        },
        stored_chunk: r.get(4)?,
        location,
    }))
}

/// Locates the pieces of `offset..end` of `object`; [`ReadPlan::assemble`]
/// reads them once the lock is released, so a slow disk read does not hold
/// up every other operation on the store.
fn plan_read(
    inner: &Inner,
    object: i64,
    offset: u64,
    end: u64,
    pattern: ReadPattern,
) -> Result<ReadPlan, StoreError> {
    if offset >= end {
        return Ok(ReadPlan { pieces: Vec::new() });
    }
    let map = ExtentMap::from_extents(ObjectStore::load_extents(&inner.conn, object, offset, end)?);
    let pieces = map
        .read(offset, end - offset)
        .into_iter()
        .map(|piece| match piece {
            ReadPiece::Hole { len } => Ok(PlannedPiece::Hole(len)),
            ReadPiece::Data {
                chunk,
                chunk_offset,
                len,
            } => Ok(PlannedPiece::Data {
                chunk: inner.content.start_read(&inner.conn, &chunk, pattern)?,
                // Past the chunk's end (a damaged extent) fails its read.
                range: chunk_offset as usize..chunk_offset.saturating_add(len) as usize,
            }),
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(ReadPlan { pieces })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_placement::PoolId;

    fn key(name: &str) -> ObjectKey {
        ObjectKey {
            pg: PgId {
                pool: PoolId(1),
                seed: 3,
            },
            name: name.as_bytes().to_vec(),
        }
    }

    #[test]
    fn a_read_planned_without_waiting_reads_what_read_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let plan = |k: &ObjectKey, offset, len| store.try_plan_read(k, offset, len).unwrap();
        let large = key("in.segment");
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 | 1).collect();
        store.write(&large, 4096, &data).unwrap();
        let small = key("inline");
        store.write(&small, 0, &data[..4096]).unwrap();
        for (k, offset, len, reads_segments) in [
            (&large, 0, 4096, false),
            (&large, 0, 8192, true),
            (&large, 4096, 4096, true),
            (&large, 50_000, 70_000, true),
            (&large, 104_000, 4096, true),
            (&small, 0, 4096, false),
            (&small, 100, 10, false),
        ] {
            let planned = plan(k, offset, len).unwrap();
            assert_eq!(planned.reads_segments(), reads_segments, "{offset}+{len}");
            let read = store.read(k, offset, len).unwrap();
            assert_eq!(planned.assemble().unwrap(), read, "{offset}+{len}");
        }
        assert!(matches!(
            plan(&key("absent"), 0, 10),
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            plan(&large, 0, MAX_READ_LEN + 1),
            Err(StoreError::Invalid(_))
        ));
        let held = lock(&store.inner);
        assert!(
            store.try_plan_read(&large, 0, 10).is_none(),
            "the store is held"
        );
        drop(held);
        assert!(store.try_plan_read(&large, 0, 10).is_some());
    }

    #[test]
    fn a_read_in_one_extent_is_planned_by_one_statement_as_the_general_plan_does() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::open(dir.path()).unwrap();
        let object = key("pieces");
        let data = |seed: u32, len: usize| -> Vec<u8> {
            (0..len as u32)
                .map(|i| (i.wrapping_mul(7) ^ seed) as u8 | 1)
                .collect()
        };
        // Segment chunks, an inline chunk, an overwrite splitting an
        // extent, and a hole between them.
        store.write(&object, 0, &data(1, 150_000)).unwrap();
        store.write(&object, 70_000, &data(2, 4_000)).unwrap();
        store.write(&object, 200_000, &data(3, 30_000)).unwrap();
        let size = 230_000u64;
        let mut one_extent = 0;
        for offset in (0..size + 10_000).step_by(6_997) {
            for len in [1u64, 4_096, 9_000, 70_000] {
                let inner = lock(&store.inner);
                let start = ReadStart::find(&inner.conn, &object, offset)
                    .unwrap()
                    .unwrap();
                assert_eq!(start.size, size);
                let end = offset.saturating_add(len).min(size);
                let pattern = ReadPattern::Scattered;
                let general = plan_read(&inner, start.object, offset, end, pattern)
                    .unwrap()
                    .assemble()
                    .unwrap();
                if let Some(plan) = start
                    .plan_if_one_extent(&inner, offset, end, pattern)
                    .unwrap()
                {
                    one_extent += 1;
                    assert_eq!(plan.assemble().unwrap(), general, "{offset}+{len}");
                }
            }
        }
        assert!(
            one_extent > 50,
            "most reads lie in one extent: {one_extent}"
        );
        let inner = lock(&store.inner);
        assert!(
            ReadStart::find(&inner.conn, &key("absent"), 0)
                .unwrap()
                .is_none()
        );
    }
}
