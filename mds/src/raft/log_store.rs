//! The Raft log in SQLite: entries, the vote and the purge point.
//!
//! An append commits its transaction without SQLite's own sync
//! (`synchronous = OFF`) and then has the write-ahead log fsynced. A
//! follower's append is synced on the appending thread before it is
//! reported durable: its answer to the leader says the entries are on disk.
//!
//! A leader's own append (this member's committed vote, entries of its
//! term) is reported durable at once and synced by the flusher thread
//! meanwhile, so that openraft 0.9, which waits for that report before it
//! runs its next command, sends the entries to the followers while the
//! leader's disk writes them (the Raft thesis, section 10.2.1). openraft
//! then counts the leader toward a commit before its copy is on disk, so
//! nothing may act on a commit until it is: [`DurableLog`] says how far the
//! log is durable, the state machine applies no entry past it, and the
//! commit index a leader sends its followers is clamped to it. An entry is
//! thus applied anywhere, and answered, only once a majority holds it on
//! disk with the leader among them.
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
    AnyError, ErrorSubject, ErrorVerb, LeaderId, OptionalSend, RaftLogReader, StorageIOError,
};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

use super::{Entry, LogId, StorageError, TypeConfig, Vote, decode, encode};
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
    /// The member this log belongs to.
    own_id: u64,
    conn: Arc<Mutex<Connection>>,
    wal: Arc<File>,
    /// Entries appended since the last checkpoint.
    since_checkpoint: Arc<AtomicUsize>,
    flusher: Sender<FlusherWork>,
    progress: Arc<Progress>,
}

/// What the flusher thread is asked to do.
enum FlusherWork {
    /// Sync the write-ahead log (after a leader's own append).
    Sync,
    /// [`CHECKPOINT_EVERY_ENTRIES`] went by.
    Checkpoint,
}

/// Where this member's log stands.
struct Progress {
    /// The leadership this member holds (its own committed vote), if any:
    /// appends of its entries are the leader's own.
    leading: Mutex<Option<LeaderId<u64>>>,
    appended: Mutex<Appended>,
    durable: watch::Sender<Durable>,
    /// Held through a sync and the recording of its outcome: the kernel
    /// reports a write-back error to one fsync of a file only, so a sync
    /// running beside a failing one could report data durable that is not.
    syncing: Mutex<()>,
}

/// What the log holds, perhaps not yet synced.
#[derive(Clone, Copy, Debug, Default)]
struct Appended {
    /// Its last entry.
    last: Option<LogId>,
    /// Counts truncations: a sync that began before one must not raise the
    /// durable mark to an entry the truncation removed.
    truncations: u64,
}

/// How far the log is durable.
#[derive(Clone, Debug, Default)]
struct Durable {
    /// The last entry on disk; every entry of the log before it is too. An
    /// entry of the log, so that a commit clamped to it names one.
    up_to: Option<LogId>,
    /// The truncations the log had gone through when `up_to` was synced.
    truncations: u64,
    /// A sync failed. The mark stays where it was for good (after a failed
    /// fsync the kernel may drop the unwritten pages and report the next
    /// one fine), and the log takes no more appends.
    failed: Option<String>,
}

/// How far a member's log is durable, for what must not act on an entry
/// before it is (see the module documentation).
#[derive(Clone)]
pub struct DurableLog(watch::Receiver<Durable>);

/// Why a wait for durability ended without it.
#[derive(Debug, thiserror::Error)]
pub enum DurabilityError {
    #[error("a raft log sync failed: {0}")]
    SyncFailed(String),
    #[error("the raft log is closed")]
    Closed,
}

impl DurableLog {
    /// Returns once `log_id` and every entry before it are durable.
    pub async fn wait_for(&self, log_id: LogId) -> Result<(), DurabilityError> {
        let mut durable = self.0.clone();
        let settled = durable
            .wait_for(|d| d.up_to >= Some(log_id) || d.failed.is_some())
            .await
            .map_err(|_| DurabilityError::Closed)?;
        match &settled.failed {
            Some(error) if settled.up_to < Some(log_id) => {
                Err(DurabilityError::SyncFailed(error.clone()))
            }
            _ => Ok(()),
        }
    }

    /// A commit index no further than the durable log: what a leader may
    /// tell its followers is committed.
    pub fn clamp(&self, committed: Option<LogId>) -> Option<LogId> {
        committed.min(self.0.borrow().up_to)
    }
}

impl Progress {
    fn new(last: Option<LogId>) -> Progress {
        Progress {
            leading: Mutex::new(None),
            appended: Mutex::new(Appended {
                last,
                truncations: 0,
            }),
            durable: watch::Sender::new(Durable {
                up_to: last,
                truncations: 0,
                failed: None,
            }),
            syncing: Mutex::new(()),
        }
    }

    fn durability(&self) -> DurableLog {
        DurableLog(self.durable.subscribe())
    }

    /// Records the log's new last entry after an append.
    fn appended(&self, last: LogId) {
        lock(&self.appended).last = Some(last);
    }

    /// Records the log's new last entry after a truncation (`None` if it
    /// could not be read: nothing then counts as durable until the next
    /// sync). The durable mark comes back at once: what is left of the log
    /// up to it is on disk.
    fn truncated(&self, last: Option<LogId>) {
        let mut appended = lock(&self.appended);
        appended.last = last;
        appended.truncations += 1;
        let truncations = appended.truncations;
        self.durable.send_modify(|d| {
            d.up_to = d.up_to.min(last);
            d.truncations = truncations;
        });
    }

    /// Syncs the write-ahead log: everything appended before the sync
    /// began is durable after it, and the mark moves there unless the log
    /// was truncated meanwhile.
    fn sync(&self, wal: &File) -> std::io::Result<()> {
        let _one_at_a_time = lock(&self.syncing);
        self.failure()?;
        let before = *lock(&self.appended);
        let synced = wal.sync_data();
        // Held while the mark moves: no truncation in between.
        let appended = lock(&self.appended);
        match &synced {
            Ok(()) if appended.truncations == before.truncations => {
                self.durable.send_if_modified(|d| mark_synced(d, before))
            }
            Ok(()) => false,
            Err(error) => self.durable.send_if_modified(|d| {
                d.failed = Some(error.to_string());
                true
            }),
        };
        synced
    }

    /// The earlier sync failure, if any.
    fn failure(&self) -> std::io::Result<()> {
        match &self.durable.borrow().failed {
            Some(error) => Err(std::io::Error::other(format!(
                "an earlier raft log sync failed: {error}"
            ))),
            None => Ok(()),
        }
    }

    /// Whether an append of entries by `entry_leader` is this member's
    /// own, as the leader it is.
    fn is_own(&self, entry_leader: &LeaderId<u64>) -> bool {
        lock(&self.leading).as_ref() == Some(entry_leader)
    }
}

/// Moves the durable mark to what a sync covered; whether it moved. It
/// only rises while the log is not truncated (syncs may finish out of
/// order), goes to the log's last entry after a truncation, and never
/// moves after a failure.
fn mark_synced(durable: &mut Durable, synced: Appended) -> bool {
    let moves = durable.failed.is_none()
        && (synced.truncations > durable.truncations
            || (synced.truncations == durable.truncations && synced.last > durable.up_to));
    if moves {
        durable.up_to = synced.last;
        durable.truncations = synced.truncations;
    }
    moves
}

/// The vote a member restarts with. Its own won vote comes back not won,
/// so that openraft starts it as a follower that voted for itself, and it
/// leads again only after winning a later term: restored as leader of the
/// same term (what openraft does with a won vote), it would write anew,
/// and differently, under the same log ids, early-reported entries that a
/// crash took from its disk while followers kept them. Every restart of a
/// leader costs an election; a lone member wins one at once.
fn as_restarted(vote: Vote, own_id: u64) -> Vote {
    match leadership_of(&vote, own_id) {
        Some(leader) => Vote::new(leader.term, own_id),
        None => vote,
    }
}

/// The leadership a saved vote gives member `own_id`: its own, once
/// committed (won).
fn leadership_of(vote: &Vote, own_id: u64) -> Option<LeaderId<u64>> {
    (vote.is_committed() && vote.leader_id().voted_for() == Some(own_id)).then(|| *vote.leader_id())
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
        let progress = Arc::new(Progress::new(last_log_id(&conn).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(e.to_string()),
            )
        })?));
        let conn = Arc::new(Mutex::new(conn));
        let (flusher, work) = channel();
        let since_checkpoint = Arc::new(AtomicUsize::new(0));
        let flusher_state = FlusherState {
            conn: conn.clone(),
            wal: wal.clone(),
            since_checkpoint: since_checkpoint.clone(),
            progress: progress.clone(),
        };
        std::thread::Builder::new()
            .name("raft-log-flush".into())
            .spawn(move || run_flusher(&flusher_state, &work))
            .map_err(open_error)?;
        Ok(LogStore {
            own_id,
            conn,
            wal,
            since_checkpoint,
            flusher,
            progress,
        })
    }

    /// How far this log is durable.
    pub fn durability(&self) -> DurableLog {
        self.progress.durability()
    }

    /// Makes every committed write durable, for operations that must be
    /// durable when they return.
    fn sync_now(&self) -> Result<(), StorageError> {
        self.progress.sync(&self.wal).map_err(write_error)
    }

    /// Syncs the write-ahead log on this thread and reports an append's
    /// outcome.
    fn sync_and_report(&self, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError> {
        let synced = self.progress.sync(&self.wal);
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

/// The id of the log's last entry, or of the last purged one when none is
/// left.
fn last_log_id(conn: &Connection) -> Result<Option<LogId>, StorageError> {
    let last_purged: Option<LogId> = LogStore::meta(conn, LAST_PURGED)?;
    Ok(LogStore::last_entry_id(conn)?.or(last_purged))
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the flusher thread works on, shared with the store.
struct FlusherState {
    conn: Arc<Mutex<Connection>>,
    wal: Arc<File>,
    since_checkpoint: Arc<AtomicUsize>,
    progress: Arc<Progress>,
}

/// The flusher thread: one fsync for every sync asked for meanwhile, and a
/// durable checkpoint each time appends report [`CHECKPOINT_EVERY_ENTRIES`]
/// gone by (a failed one is tried again that many entries later). Ends when
/// every store is dropped, after a last checkpoint.
fn run_flusher(state: &FlusherState, work: &Receiver<FlusherWork>) {
    while let Ok(first) = work.recv() {
        let (mut sync_due, mut checkpoint_due) = (false, false);
        for item in std::iter::once(first).chain(work.try_iter()) {
            match item {
                FlusherWork::Sync => sync_due = true,
                FlusherWork::Checkpoint => checkpoint_due = true,
            }
        }
        if sync_due && let Err(error) = state.progress.sync(&state.wal) {
            tracing::error!(%error, "raft log sync failed");
        }
        // After a failed sync the log's pages may be lost under SQLite's
        // feet: nothing is copied into the database from then on, and the
        // next start recovers from what the log file holds.
        if checkpoint_due && state.progress.failure().is_ok() {
            checkpoint(&state.conn, &state.since_checkpoint);
        }
    }
    let conn = lock(&state.conn);
    if state.progress.failure().is_err() {
        let _ = conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
        return;
    }
    // SQLite checkpoints on close without syncing at `synchronous = OFF`:
    // leave nothing for it to copy.
    if let Err(error) = durable_checkpoint(&conn) {
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
        let last_log_id = last_log_id(&conn)?;
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
        self.sync_now()?;
        *lock(&self.progress.leading) = leadership_of(vote, self.own_id);
        Ok(())
    }

    /// Not quite the last saved vote, as openraft's contract has it: see
    /// [`as_restarted`] (its conformance suite saves no won votes).
    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let vote: Option<Vote> = LogStore::meta(&self.lock(), VOTE)?;
        Ok(vote.map(|vote| as_restarted(vote, self.own_id)))
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
        if let Err(error) = self.progress.failure() {
            callback.log_io_completed(Err(copy_of(&error)));
            return Err(write_error(error));
        }
        let mut count = 0;
        let mut own = true;
        let result = {
            let mut conn = self.lock();
            let tx = conn.transaction().map_err(write_error)?;
            let mut last = None;
            for entry in entries {
                own &= self.progress.is_own(&entry.log_id.leader_id);
                let bytes = encode(&entry).map_err(write_error)?;
                tx.execute_cached(
                    "INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)",
                    params![entry.log_id.index as i64, bytes],
                )
                .map_err(write_error)?;
                count += 1;
                last = Some(entry.log_id);
            }
            let committed = tx.commit();
            if let (Ok(()), Some(last)) = (&committed, last) {
                self.progress.appended(last);
            }
            committed
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
        if !own {
            return self.sync_and_report(callback);
        }
        // After a failed sync, nothing is reported durable again (the sync
        // itself refuses); the flusher is gone only if it panicked.
        if self.progress.failure().is_err() || self.flusher.send(FlusherWork::Sync).is_err() {
            return self.sync_and_report(callback);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let conn = self.lock();
        conn.execute_cached("DELETE FROM log WHERE idx >= ?1", [log_id.index as i64])
            .map_err(write_error)?;
        let last = last_log_id(&conn);
        self.progress
            .truncated(last.as_ref().ok().copied().flatten());
        last?;
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
    use std::time::Duration;

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload};
    use proptest::prelude::*;

    use super::super::state_machine::StateMachineStore;
    use super::*;

    /// Long enough for a wait that should end to have ended.
    const SETTLE: Duration = Duration::from_millis(100);

    /// The value of `task`, which must end well within [`SETTLE`].
    async fn finished_well<T, E: std::fmt::Debug>(
        task: tokio::task::JoinHandle<Result<T, E>>,
    ) -> T {
        tokio::time::timeout(SETTLE, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn wal() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("wal")).unwrap();
        (dir, file)
    }

    #[test]
    fn a_member_leads_only_under_its_own_won_vote() {
        let mut own = Vote::new(3, 1);
        assert_eq!(
            leadership_of(&own, 1),
            None,
            "a candidate does not lead yet"
        );
        own.commit();
        assert_eq!(leadership_of(&own, 1), Some(*own.leader_id()));
        assert_eq!(
            leadership_of(&Vote::new_committed(3, 2), 1),
            None,
            "another's leadership"
        );
    }

    #[tokio::test]
    async fn appended_entries_count_as_durable_only_after_a_sync() {
        let (_dir, wal) = wal();
        let progress = Progress::new(Some(log_id(1, 1, 5)));
        let log = progress.durability();
        progress.appended(log_id(1, 1, 7));
        let waiting = tokio::spawn({
            let log = log.clone();
            async move { log.wait_for(log_id(1, 1, 7)).await }
        });
        tokio::time::sleep(SETTLE).await;
        assert!(!waiting.is_finished(), "entry 7 is not synced yet");
        assert_eq!(
            log.clamp(Some(log_id(1, 1, 7))),
            Some(log_id(1, 1, 5)),
            "a commit is told only as far as the disk holds the log"
        );
        progress.sync(&wal).unwrap();
        finished_well(waiting).await;
        assert_eq!(log.clamp(Some(log_id(1, 1, 7))), Some(log_id(1, 1, 7)));
        assert_eq!(log.clamp(None), None);
    }

    #[tokio::test]
    async fn a_truncation_takes_the_durable_mark_back_to_the_logs_last_entry() {
        let (_dir, wal) = wal();
        let progress = Progress::new(Some(log_id(1, 1, 10)));
        let log = progress.durability();
        progress.truncated(Some(log_id(1, 1, 8)));
        assert_eq!(
            log.clamp(Some(log_id(1, 1, 10))),
            Some(log_id(1, 1, 8)),
            "at once: what is left of the log up to the mark is on disk"
        );
        progress.sync(&wal).unwrap();
        assert_eq!(
            log.clamp(Some(log_id(2, 2, 11))),
            Some(log_id(1, 1, 8)),
            "a clamped commit names an entry the log holds"
        );
        progress.appended(log_id(2, 2, 9));
        assert_eq!(log.clamp(Some(log_id(2, 2, 9))), Some(log_id(1, 1, 8)));
        progress.sync(&wal).unwrap();
        assert_eq!(log.clamp(Some(log_id(2, 2, 9))), Some(log_id(2, 2, 9)));
    }

    #[test]
    fn syncs_finishing_out_of_order_never_move_the_mark_to_a_truncated_or_older_entry() {
        let synced = |last, truncations| Appended {
            last: Some(last),
            truncations,
        };
        let mut durable = Durable {
            up_to: Some(log_id(1, 1, 10)),
            ..Durable::default()
        };
        assert!(mark_synced(&mut durable, synced(log_id(1, 1, 12), 0)));
        assert!(
            !mark_synced(&mut durable, synced(log_id(1, 1, 11), 0)),
            "an older sync"
        );
        assert!(
            mark_synced(&mut durable, synced(log_id(1, 1, 8), 1)),
            "after a truncation"
        );
        assert_eq!(durable.up_to, Some(log_id(1, 1, 8)));
        assert!(
            !mark_synced(&mut durable, synced(log_id(1, 1, 12), 0)),
            "a sync from before the truncation"
        );
        durable.failed = Some("EIO".into());
        assert!(
            !mark_synced(&mut durable, synced(log_id(2, 2, 9), 1)),
            "after a failure"
        );
        assert_eq!(durable.up_to, Some(log_id(1, 1, 8)));
    }

    #[test]
    fn a_restarted_leader_comes_back_without_its_leadership() {
        let mut own = Vote::new(4, 1);
        own.commit();
        let restarted = as_restarted(own, 1);
        assert!(!restarted.is_committed());
        assert_eq!(restarted.leader_id(), own.leader_id());
        let theirs = Vote::new_committed(4, 2);
        assert_eq!(as_restarted(theirs, 1), theirs);
        assert_eq!(as_restarted(Vote::new(5, 1), 1), Vote::new(5, 1));
    }

    #[tokio::test]
    async fn a_failed_sync_fails_the_waits_it_leaves_unmet() {
        let progress = Progress::new(Some(log_id(1, 1, 5)));
        let log = progress.durability();
        progress
            .durable
            .send_modify(|d| d.failed = Some("EIO".into()));
        assert!(
            log.wait_for(log_id(1, 1, 5)).await.is_ok(),
            "entry 5 was synced before"
        );
        assert!(matches!(
            log.wait_for(log_id(1, 1, 6)).await,
            Err(DurabilityError::SyncFailed(_))
        ));
        let (_dir, wal) = wal();
        progress.appended(log_id(1, 1, 6));
        assert!(
            progress.sync(&wal).is_err(),
            "no sync counts after a failed one"
        );
        assert_eq!(log.clamp(Some(log_id(1, 1, 6))), Some(log_id(1, 1, 5)));
    }

    #[tokio::test]
    async fn the_state_machine_applies_no_entry_before_the_log_holds_it_on_disk() {
        let (_dir, wal) = wal();
        let sm_dir = tempfile::tempdir().unwrap();
        let progress = Progress::new(None);
        let mut state = StateMachineStore::open(sm_dir.path())
            .unwrap()
            .applying_durable_entries_of(progress.durability());
        progress.appended(log_id(1, 1, 1));
        let applying = tokio::spawn({
            let mut state = state.clone();
            async move {
                let entry = Entry {
                    log_id: log_id(1, 1, 1),
                    payload: EntryPayload::Blank,
                };
                state.apply(vec![entry]).await
            }
        });
        tokio::time::sleep(SETTLE).await;
        assert!(!applying.is_finished());
        assert_eq!(state.applied_state().await.unwrap().0, None);
        progress.sync(&wal).unwrap();
        finished_well(applying).await;
        assert_eq!(
            state.applied_state().await.unwrap().0,
            Some(log_id(1, 1, 1))
        );
    }

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
