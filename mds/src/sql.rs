//! Prepared-statement reuse for the MDS's SQLite stores. Parsing SQL was
//! the largest single cost of a metadata write, so every statement on a hot
//! path goes through the connection's statement cache.

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
