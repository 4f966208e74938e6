//! What the MDS's SQLite stores share: prepared-statement reuse (parsing
//! SQL was the largest single cost of a metadata write, so every statement
//! on a hot path goes through the connection's statement cache) and durable
//! checkpoints for connections that commit without syncing.

use rusqlite::{Connection, Params, Row};

/// How many distinct statements a connection keeps prepared.
pub(crate) const STATEMENT_CACHE_CAPACITY: usize = 128;

/// `execute` and `query_row` through the statement cache.
pub(crate) trait CachedStatements {
    fn execute_cached(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize>;

    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl Params,
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T>;
}

impl CachedStatements for Connection {
    fn execute_cached(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn query_row_cached<T>(
        &self,
        sql: &str,
        params: impl Params,
        map: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, map)
    }
}

/// Copies the write-ahead log into the database, durably, on a connection
/// that otherwise runs at `synchronous = OFF`: for the checkpoint SQLite
/// runs at `NORMAL`, so it syncs the log before copying (a crash mid-copy
/// recovers from the log) and the database after (the log may then be
/// reused). Automatic checkpoints must be off on such a connection.
/// A checkpoint that could not copy the whole log (a reader held part of
/// it) did not sync the database, and fails.
pub(crate) fn durable_checkpoint(conn: &Connection) -> rusqlite::Result<()> {
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
        (busy, log, copied) => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some(format!(
                "checkpoint copied {copied} of {log} log frames (busy {busy})"
            )),
        )),
    }
}
