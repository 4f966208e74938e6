//! The Raft log in SQLite: entries, the vote and the
//! purge point. An append is acknowledged only after its transaction is
//! durable (`synchronous = FULL`).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageIOError};
use rusqlite::{Connection, OptionalExtension, params};

use super::{Entry, LogId, StorageError, TypeConfig, Vote, decode, encode};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
";
const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";

/// The log store. Clones share one database connection.
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
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
    pub fn open(path: &Path) -> Result<LogStore, rusqlite::Error> {
        LogStore::with_connection(Connection::open(path)?)
    }

    pub fn open_in_memory() -> Result<LogStore, rusqlite::Error> {
        LogStore::with_connection(Connection::open_in_memory()?)
    }

    fn with_connection(conn: Connection) -> Result<LogStore, rusqlite::Error> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(LogStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn meta<T: for<'de> serde::Deserialize<'de>>(
        conn: &Connection,
        key: &str,
    ) -> Result<Option<T>, StorageError> {
        let bytes: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM log_meta WHERE key = ?1", [key], |r| {
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
        conn.execute(
            "INSERT INTO log_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = ?2",
            params![key, bytes],
        )
        .map_err(write_error)?;
        Ok(())
    }

    fn last_entry_id(conn: &Connection) -> Result<Option<LogId>, StorageError> {
        let bytes: Option<Vec<u8>> = conn
            .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(read_error)?;
        let entry: Option<Entry> = bytes.map(|b| decode(&b).map_err(read_error)).transpose()?;
        Ok(entry.map(|e| e.log_id))
    }
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
        let conn = self.lock();
        LogStore::set_meta(&conn, VOTE, vote)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, AnyError::new(&e)))
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
        let result = {
            let mut conn = self.lock();
            let tx = conn.transaction().map_err(write_error)?;
            for entry in entries {
                let bytes = encode(&entry).map_err(write_error)?;
                tx.execute(
                    "INSERT OR REPLACE INTO log (idx, entry) VALUES (?1, ?2)",
                    params![entry.log_id.index as i64, bytes],
                )
                .map_err(write_error)?;
            }
            tx.commit()
        };
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(write_error(error))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let conn = self.lock();
        conn.execute("DELETE FROM log WHERE idx >= ?1", [log_id.index as i64])
            .map_err(write_error)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(write_error)?;
        LogStore::set_meta(&tx, LAST_PURGED, &log_id)?;
        tx.execute("DELETE FROM log WHERE idx <= ?1", [log_id.index as i64])
            .map_err(write_error)?;
        tx.commit().map_err(write_error)
    }
}
