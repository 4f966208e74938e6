//! The Raft log in SQLite: entries, the vote and the purge point.
//!
//! An append commits its transaction without SQLite's own sync
//! (`synchronous = OFF`) and then has the write-ahead log fsynced before it
//! reports the entries durable. openraft 0.9 waits for that report before it
//! runs its next command, so appends never overlap, and the fsync runs on the
//! appending thread itself (no thread wakeups on the write's path) except
//! for one case: a leader appending a batch of its clients' commands
//! ([`Command::Batch`], formed only while other writes wait) hands the fsync
//! to the flusher thread, so that the worker goes on serving those clients
//! and forming the next batch meanwhile.
//!
//! The vote, truncation and purge are synced before they return too.
//!
//! Because SQLite does not sync at `synchronous = OFF`, checkpoints are ours
//! too: automatic checkpoints are off, and the flusher thread runs a
//! durable checkpoint ([`crate::sql::durable_checkpoint`]) under the
//! connection lock every [`CHECKPOINT_EVERY_ENTRIES`].
//!
//! The write-ahead log is filled with zeros up to [`WAL_PREALLOCATED_BYTES`]
//! when the store opens. SQLite reuses the log from its start after each
//! checkpoint, so appends then overwrite blocks the file already has: the
//! `fdatasync` writes data only, where a growing file would also write the
//! blocks' allocation (about twice the time on this machine's ext4).

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::ops::{Bound, RangeBounds};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Command, Entry, LogId, StorageError, TypeConfig, Vote, decode, encode};
use crate::sql::{CachedStatements, durable_checkpoint};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
";
const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";

/// Log entries appended between two checkpoints of the write-ahead log.
const CHECKPOINT_EVERY_ENTRIES: usize = 2048;

/// The write-ahead log's size when the store opens: room for
/// [`CHECKPOINT_EVERY_ENTRIES`] appends of about two 4 KiB pages each.
const WAL_PREALLOCATED_BYTES: u64 = 16 << 20;

/// The log store. Clones share one database connection and one flusher.
#[derive(Clone)]
pub struct LogStore {
    /// The member this log belongs to: its own entries are the leader's.
    own_id: u64,
    conn: Arc<Mutex<Connection>>,
    wal: Arc<File>,
    /// Entries appended since the last checkpoint.
    since_checkpoint: Arc<AtomicUsize>,
    flusher: Sender<FlusherWork>,
}

/// What the flusher thread is asked to do.
enum FlusherWork {
    /// Sync the write-ahead log, then report an append durable (the
    /// leader's batches).
    Flush(LogFlushed<TypeConfig>),
    /// [`CHECKPOINT_EVERY_ENTRIES`] went by.
    Checkpoint,
}

fn io_error(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    error: impl std::error::Error + 'static,
) -> StorageError {
    StorageIOError::new(subject, verb, AnyError::new(&error)).into()
}

fn read_error(error: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, error)
}

fn write_error(error: impl std::error::Error + 'static) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, error)
}

impl LogStore {
    /// Opens (or creates) the log of member `own_id` at `path`.
    pub fn open(path: &Path, own_id: u64) -> Result<LogStore, rusqlite::Error> {
        let conn = Connection::open(path)?;
        // One connection: it keeps its locks instead of taking them for
        // every transaction (before the log is in WAL mode, so its index
        // lives in this process's memory).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.execute_batch(SCHEMA)?;
        conn.set_prepared_statement_cache_capacity(crate::sql::STATEMENT_CACHE_CAPACITY);
        let open_error = |e: std::io::Error| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(e.to_string()),
            )
        };
        let mut wal_path = path.as_os_str().to_owned();
        wal_path.push("-wal");
        let wal = OpenOptions::new()
            .write(true)
            .open(&wal_path)
            .map_err(open_error)?;
        // Whatever an earlier run left unsynced is synced before it counts.
        wal.sync_data().map_err(open_error)?;
        preallocate(&wal).map_err(open_error)?;
        let wal = Arc::new(wal);
        let conn = Arc::new(Mutex::new(conn));
        let (flusher, work) = channel();
        let since_checkpoint = Arc::new(AtomicUsize::new(0));
        let (flusher_conn, flusher_wal, flusher_count) =
            (conn.clone(), wal.clone(), since_checkpoint.clone());
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(&flusher_conn, &flusher_wal, &flusher_count, &work))
            .map_err(open_error)?;
        Ok(LogStore {
            own_id,
            conn,
            wal,
            since_checkpoint,
            flusher,
        })
    }

    /// Makes every committed write durable, for operations that must be
    /// durable when they return.
    fn sync_now(&self) -> Result<(), StorageError> {
        self.wal.sync_data().map_err(write_error)
    }

    /// Syncs the write-ahead log on this thread and reports an append's
    /// outcome.
    fn sync_and_report(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError> {
        let synced = self.wal.sync_data();
        let failed = synced.as_ref().err().map(|e| write_error(copy_of(e)));
        callback.log_io_completed(synced);
        failed.map_or(Ok(()), Err)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        lock(&self.conn)
    }

    fn meta<T: for<'de> serde::Deserialize<'de>>(
        conn: &Connection,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let bytes: Option<Vec<u8>> = conn
            .query_row_cached("SELECT value FROM log_meta WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(read_error)?;
        bytes.map(|b| decode(&b).map_err(read_error)).transpose()
    }

    fn set_meta<T: serde::Serialize>(
        conn: &Connection,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes = encode(value).map_err(write_error)?;
        conn.execute_cached(
            "INSERT INTO log_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
            params![key, bytes],
        )
        .map_err(write_error)?;
        Ok(())
    }

    fn last_entry_id(conn: &Connection) -> Result<Option<LogId>, StorageError> {
        let bytes: Option<Vec<u8>> = conn
            .query_row_cached("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(read_error)?;
        let entry: Option<Entry> = bytes.map(|b| decode(&b).map_err(read_error)).transpose()?;
        Ok(entry.map(|e| e.log_id))
    }
}

/// Writes zeros from the end of the write-ahead log up to
/// [`WAL_PREALLOCATED_BYTES`], durably. Only bytes past the log's end are
/// written, and SQLite reads no frame past the last valid one, so this is
/// safe with a log that still holds frames.
fn preallocate(wal: &File) -> std::io::Result<()> {
    const ZEROS_PER_WRITE: usize = 1 << 20;
    let zeros = vec![0u8; ZEROS_PER_WRITE];
    let mut offset = wal.metadata()?.len();
    if offset >= WAL_PREALLOCATED_BYTES {
        return Ok(());
    }
    while offset < WAL_PREALLOCATED_BYTES {
        let len = (WAL_PREALLOCATED_BYTES - offset).min(ZEROS_PER_WRITE as u64) as usize;
        wal.write_all_at(&zeros[..len], offset)?;
        offset += len as u64;
    }
    wal.sync_data()
}

fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The flusher thread: one fsync for every flush queued meanwhile, and a
/// durable checkpoint each time appends report [`CHECKPOINT_EVERY_ENTRIES`]
/// gone by (a failed one is tried again that many entries later). Ends when
/// every store is dropped, after a last checkpoint.
fn run_flusher(
    conn: &Mutex<Connection>,
    wal: &File,
    since_checkpoint: &AtomicUsize,
    work: &Receiver<FlusherWork>,
) {
    while let Ok(first) = work.recv() {
        let (mut flushes, mut checkpoint_due) = (Vec::new(), false);
        for item in std::iter::once(first).chain(work.try_iter()) {
            match item {
                FlusherWork::Flush(callback) => flushes.push(callback),
                FlusherWork::Checkpoint => checkpoint_due = true,
            }
        }
        if !flushes.is_empty() {
            let synced = wal.sync_data();
            for callback in flushes {
                callback.log_io_completed(synced.as_ref().map_err(copy_of).copied());
            }
        }
        if checkpoint_due {
            checkpoint(conn, since_checkpoint);
        }
    }
    // SQLite checkpoints on close without syncing at `synchronous = OFF`:
    // leave nothing for it to copy.
    if let Err(error) = durable_checkpoint(&lock(conn)) {
        tracing::warn!(%error, "raft log final checkpoint failed");
    }
}

/// An I/O error to hand on where the original stays with its owner.
fn copy_of(error: &std::io::Error) -> std::io::Error {
    std::io::Error::new(error.kind(), error.to_string())
}

/// Durable checkpoints until fewer than [`CHECKPOINT_EVERY_ENTRIES`] were
/// appended since (appends go on during one).
fn checkpoint(conn: &Mutex<Connection>, since_checkpoint: &AtomicUsize) {
    loop {
        let counted = since_checkpoint.load(Ordering::Relaxed);
        if let Err(error) = durable_checkpoint(&lock(conn)) {
            tracing::warn!(%error, "raft log checkpoint failed");
        }
        if !another_checkpoint_due(since_checkpoint, counted) {
            return;
        }
    }
}

/// Counts an append of `entries` toward the next checkpoint; whether it is
/// the append that makes one due (so exactly one append asks for it).
fn counts_a_checkpoint_in(since_checkpoint: &AtomicUsize, entries: usize) -> bool {
    let before = since_checkpoint.fetch_add(entries, Ordering::Relaxed);
    before < CHECKPOINT_EVERY_ENTRIES && before + entries >= CHECKPOINT_EVERY_ENTRIES
}

/// Takes the `counted` entries a checkpoint covered off the count; whether
/// enough were appended meanwhile that another checkpoint is due at once
/// (no append would ask for it: the count never fell below the mark).
fn another_checkpoint_due(since_checkpoint: &AtomicUsize, counted: usize) -> bool {
    since_checkpoint.fetch_sub(counted, Ordering::Relaxed) - counted >= CHECKPOINT_EVERY_ENTRIES
}

/// The inclusive index range a `RangeBounds` names (`None` when empty).
fn inclusive_range(range: &impl RangeBounds<u64>) -> Option<(i64, i64)> {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.checked_sub(1)?,
        Bound::Unbounded => i64::MAX as u64,
    };
    let clamp = |i: u64| i.min(i64::MAX as u64) as i64;
    (start <= end).then(|| (clamp(start), clamp(end)))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = inclusive_range(&range) else {
            return Ok(Vec::new());
        };
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached("SELECT entry FROM log WHERE idx >= ?1 AND idx <= ?2 ORDER BY idx")
            .map_err(read_error)?;
        let rows = statement
            .query_map(params![start, end], |r| r.get::<_, Vec<u8>>(0))
            .map_err(read_error)?;
        let mut entries = Vec::new();
        for row in rows {
            entries.push(decode(&row.map_err(read_error)?).map_err(read_error)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let conn = self.lock();
        let last_purged_log_id: Option<LogId> = LogStore::meta(&conn, LAST_PURGED)?;
        let last_log_id = LogStore::last_entry_id(&conn)?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        {
            let conn = self.lock();
            LogStore::set_meta(&conn, VOTE, vote)
                .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, AnyError::new(&e)))?;
        }
        self.sync_now()
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let conn = self.lock();
        LogStore::meta(&conn, VOTE)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut count = 0;
        let mut offload = false;
        let result = {
            let mut conn = self.lock();
            let tx = conn.transaction().map_err(write_error)?;
            for entry in entries {
                offload |= entry.log_id.leader_id.node_id == self.own_id
                    && matches!(entry.payload, EntryPayload::Normal(Command::Batch(_)));
                let bytes = encode(&entry).map_err(write_error)?;
                tx.execute_cached(
                    "INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)",
                    params![entry.log_id.index as i64, bytes],
                )
                .map_err(write_error)?;
                count += 1;
            }
            tx.commit()
        };
        if let Err(error) = result {
            callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
            return Err(write_error(error));
        }
        if counts_a_checkpoint_in(&self.since_checkpoint, count) {
            // The flusher is gone only if it panicked; the log then grows
            // until the next start checkpoints it.
            let _ = self.flusher.send(FlusherWork::Checkpoint);
        }
        if !offload {
            return self.sync_and_report(callback);
        }
        match self.flusher.send(FlusherWork::Flush(callback)) {
            // The flusher is gone only if it panicked: sync here.
            Err(std::sync::mpsc::SendError(FlusherWork::Flush(callback))) => {
                self.sync_and_report(callback)
            }
            _ => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let conn = self.lock();
        conn.execute_cached("DELETE FROM log WHERE idx >= ?1", [log_id.index as i64])
            .map_err(write_error)?;
        drop(conn);
        self.sync_now()
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(write_error)?;
        LogStore::set_meta(&tx, LAST_PURGED, &log_id)?;
        tx.execute_cached("DELETE FROM log WHERE idx <= ?1", [log_id.index as i64])
            .map_err(write_error)?;
        tx.commit().map_err(write_error)?;
        drop(conn);
        self.sync_now()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// What the appenders and the flusher thread do to the count, one step
    /// at a time in any order.
    #[derive(Debug, Clone)]
    enum Step {
        Append(usize),
        /// The flusher takes a queued request and starts a checkpoint.
        Start,
        /// The running checkpoint finishes.
        Finish,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1..=2 * CHECKPOINT_EVERY_ENTRIES).prop_map(Step::Append),
            1 => Just(Step::Start),
            1 => Just(Step::Finish),
        ]
    }

    proptest! {
        /// Whenever a checkpoint's worth of entries went by, one is asked
        /// for or running: the log is never left to grow unchecked.
        #[test]
        fn a_due_checkpoint_is_always_asked_for_or_running(steps in prop::collection::vec(step(), 1..200)) {
            let since = AtomicUsize::new(0);
            let (mut requests, mut running) = (0usize, None);
            for step in steps {
                match step {
                    Step::Append(entries) => requests += usize::from(counts_a_checkpoint_in(&since, entries)),
                    Step::Start if requests > 0 && running.is_none() => {
                        requests -= 1;
                        running = Some(since.load(Ordering::Relaxed));
                    }
                    Step::Finish => {
                        if let Some(counted) = running.take()
                            && another_checkpoint_due(&since, counted)
                        {
                            running = Some(since.load(Ordering::Relaxed));
                        }
                    }
                    Step::Start => {}
                }
                let due = since.load(Ordering::Relaxed) >= CHECKPOINT_EVERY_ENTRIES;
                prop_assert!(!due || requests > 0 || running.is_some());
                prop_assert!(requests <= 1 + usize::from(running.is_some()));
            }
        }
    }
}
