//! The reply cache: at-most-once namespace mutations. A client numbers the
//! mutations of its session; the state machine remembers each one's reply,
//! so a retry (after a timeout or a leader change, when the client cannot
//! know whether the first attempt was applied) gets the first reply instead
//! of being applied twice (a second create would say `EEXIST`, a second
//! unlink `ENOENT`). Replies go with their session, and a session keeps the
//! last [`REMEMBERED_PER_SESSION`] request ids.

use aspen_proto::Errno;
use aspen_proto::mds::{NsReply, SessionId};
use rusqlite::{Connection, OptionalExtension, params};

use super::{decode, encode};
use crate::namespace::StoreError;
use crate::sql::CachedStatements;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS replies (
    session INTEGER NOT NULL,
    request INTEGER NOT NULL,
    reply BLOB NOT NULL,
    PRIMARY KEY (session, request)
) WITHOUT ROWID;
";

/// How many request ids back a retry is still recognised. A client never
/// has this many mutations outstanding at once.
pub const REMEMBERED_PER_SESSION: u64 = 4096;

type Reply = Result<NsReply, Errno>;

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

/// The reply already given to `(session, request)`.
pub(crate) fn recall(
    conn: &Connection,
    session: SessionId,
    request: u64,
) -> Result<Option<Reply>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .query_row_cached(
            "SELECT reply FROM replies WHERE session = ?1 AND request = ?2",
            params![session.0 as i64, request as i64],
            |r| r.get(0),
        )
        .optional()?;
    bytes.map(|b| decode(&b).map_err(corrupt)).transpose()
}

/// Remembers the reply to `(session, request)` and forgets ids too old to
/// be retried.
pub(crate) fn remember(
    conn: &Connection,
    session: SessionId,
    request: u64,
    reply: &Reply,
) -> Result<(), StoreError> {
    let bytes = encode(reply).map_err(corrupt)?;
    conn.execute_cached(
        "INSERT OR REPLACE INTO replies (session, request, reply) VALUES (?1, ?2, ?3)",
        params![session.0 as i64, request as i64, bytes],
    )?;
    conn.execute_cached(
        "DELETE FROM replies WHERE session = ?1 AND request <= ?2",
        params![
            session.0 as i64,
            request.saturating_sub(REMEMBERED_PER_SESSION) as i64
        ],
    )?;
    Ok(())
}

/// Forgets a closed session's replies.
pub(crate) fn forget(conn: &Connection, session: SessionId) -> Result<(), StoreError> {
    conn.execute_cached("DELETE FROM replies WHERE session = ?1", [session.0 as i64])?;
    Ok(())
}
