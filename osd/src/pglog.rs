//! The PG log: every mutation of a PG's objects, in the order its primary
//! gave them ([`LogVersion`]), stored in the object store's database in the
//! same transaction as the mutation itself. Peering compares logs to find
//! what a member missed; recovery replays or copies it. Each PG keeps at
//! least its last [`KEPT_ENTRIES`]; a member further behind is backfilled.

use aspen_placement::PgId;
use aspen_proto::osd::{LogEntry, LogVersion, ObjectOp};
use rusqlite::{Connection, OptionalExtension, params};

use crate::store::StoreError;

/// Log entries each PG keeps at least.
pub const KEPT_ENTRIES: u64 = 3000;
/// The log is trimmed on every this many appends, not on each: a trim
/// changes the database page of the PG's oldest entries, and one write
/// per append to that page is a tenth of a small write's log traffic.
pub const TRIM_EVERY: u64 = 64;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pglog (
    pool INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    version INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    object BLOB NOT NULL,
    op BLOB NOT NULL,
    PRIMARY KEY (pool, seed, version)
) WITHOUT ROWID;
-- each PG's newest position as recovery last set it: a newer one is the
-- log's newest entry (an append touches no page of this table)
CREATE TABLE IF NOT EXISTS pgs (
    pool INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (pool, seed)
) WITHOUT ROWID;
";

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(error.to_string())
}

/// Sets `pg`'s newest position (after recovery made this member equal to
/// one that is there). Entries past it were never acknowledged (the
/// authority lacks them) and are dropped, so the versions that follow are
/// free for the authority's next entries.
pub(crate) fn set_last(conn: &Connection, pg: PgId, at: LogVersion) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM pglog WHERE pool = ?1 AND seed = ?2 AND version > ?3")?
        .execute(params![pg.pool.0, pg.seed, at.version as i64])?;
    record_last(conn, pg, at)
}

fn record_last(conn: &Connection, pg: PgId, at: LogVersion) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO pgs (pool, seed, epoch, version) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (pool, seed) DO UPDATE SET epoch = ?3, version = ?4",
    )?
    .execute(params![
        pg.pool.0,
        pg.seed,
        at.epoch as i64,
        at.version as i64
    ])?;
    Ok(())
}

/// The newest position in `pg` (zero before anything was logged): the
/// log's newest entry, or the position recovery set if that is newer
/// (the log never loses its newest entry to a trim).
pub(crate) fn last(conn: &Connection, pg: PgId) -> Result<LogVersion, StoreError> {
    let set = newest_of(
        conn,
        "SELECT epoch, version FROM pgs WHERE pool = ?1 AND seed = ?2",
        pg,
    )?;
    let logged = newest_of(
        conn,
        "SELECT epoch, version FROM pglog WHERE pool = ?1 AND seed = ?2 ORDER BY version DESC LIMIT 1",
        pg,
    )?;
    Ok(set.max(logged))
}

fn newest_of(conn: &Connection, query: &str, pg: PgId) -> Result<LogVersion, StoreError> {
    Ok(conn
        .prepare_cached(query)?
        .query_row(params![pg.pool.0, pg.seed], |r| {
            Ok(LogVersion {
                epoch: r.get::<_, i64>(0)? as u64,
                version: r.get::<_, i64>(1)? as u64,
            })
        })
        .optional()?
        .unwrap_or_default())
}

/// Appends `entry`, whose position passed [`check_next`], and, every
/// [`TRIM_EVERY`] versions, trims the oldest entries beyond
/// [`KEPT_ENTRIES`].
pub(crate) fn append(conn: &Connection, pg: PgId, entry: &LogEntry) -> Result<(), StoreError> {
    let op = postcard::to_stdvec(&entry.op).map_err(corrupt)?;
    conn.prepare_cached(
        "INSERT INTO pglog (pool, seed, version, epoch, object, op) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        pg.pool.0,
        pg.seed,
        entry.at.version as i64,
        entry.at.epoch as i64,
        entry.object,
        op
    ])?;
    if !entry.at.version.is_multiple_of(TRIM_EVERY) {
        return Ok(());
    }
    conn.prepare_cached("DELETE FROM pglog WHERE pool = ?1 AND seed = ?2 AND version <= ?3")?
        .execute(params![
            pg.pool.0,
            pg.seed,
            entry.at.version.saturating_sub(KEPT_ENTRIES) as i64
        ])?;
    Ok(())
}

/// Whether `at` may follow `newest`, `pg`'s last position: after it and
/// with the next version. A log never has a hole, on the primary (whose
/// earlier entry may have been undone with its batch while this one was
/// being ordered) as on a replica (whose earlier entry may have been lost
/// on the way).
pub(crate) fn check_next(pg: PgId, newest: LogVersion, at: LogVersion) -> Result<(), StoreError> {
    if at <= newest {
        return Err(StoreError::Invalid(format!(
            "log entry {at:?} is not after {newest:?}"
        )));
    }
    if at.version != newest.version + 1 {
        return Err(StoreError::Gap(format!(
            "{pg:?} got version {} after {}",
            at.version, newest.version
        )));
    }
    Ok(())
}

/// The entries of `pg` after `after`, oldest first.
pub(crate) fn entries_after(
    conn: &Connection,
    pg: PgId,
    after: LogVersion,
) -> Result<Vec<LogEntry>, StoreError> {
    let mut statement = conn.prepare_cached(
        "SELECT epoch, version, object, op FROM pglog WHERE pool = ?1 AND seed = ?2 AND version > ?3 ORDER BY version",
    )?;
    let rows = statement.query_map(params![pg.pool.0, pg.seed, after.version as i64], row)?;
    rows.map(|stored| decode(stored?)).collect()
}

/// The entry of `pg` at `version`, if the log still holds it.
pub(crate) fn entry_at(
    conn: &Connection,
    pg: PgId,
    version: u64,
) -> Result<Option<LogEntry>, StoreError> {
    conn.prepare_cached(
        "SELECT epoch, version, object, op FROM pglog WHERE pool = ?1 AND seed = ?2 AND version = ?3",
    )?
    .query_row(params![pg.pool.0, pg.seed, version as i64], row)
    .optional()?
    .map(decode)
    .transpose()
}

/// A stored entry's columns: epoch, version, object, encoded op.
type StoredEntry = (i64, i64, Vec<u8>, Vec<u8>);

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEntry> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn decode((epoch, version, object, op): StoredEntry) -> Result<LogEntry, StoreError> {
    Ok(LogEntry {
        at: LogVersion {
            epoch: epoch as u64,
            version: version as u64,
        },
        object,
        op: postcard::from_bytes::<ObjectOp>(&op).map_err(corrupt)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aspen_placement::PoolId;

    fn entry(version: u64) -> LogEntry {
        LogEntry {
            at: LogVersion { epoch: 1, version },
            object: b"o".to_vec(),
            op: ObjectOp::Delete,
        }
    }

    #[test]
    fn the_log_keeps_at_least_its_last_entries_and_trims_every_so_often() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let pg = PgId {
            pool: PoolId(1),
            seed: 3,
        };
        let appended = KEPT_ENTRIES + 3 * TRIM_EVERY + 5;
        for version in 1..=appended {
            append(&conn, pg, &entry(version)).unwrap();
            let kept = entries_after(&conn, pg, LogVersion::default()).unwrap();
            let oldest = kept.first().unwrap().at.version;
            assert_eq!(kept.last().unwrap().at.version, version);
            assert!(kept.len() as u64 >= KEPT_ENTRIES.min(version));
            assert!(kept.len() as u64 <= KEPT_ENTRIES + TRIM_EVERY);
            assert_eq!(kept.len() as u64, version - oldest + 1, "no gaps");
        }
        assert_eq!(last(&conn, pg).unwrap(), entry(appended).at);
    }

    #[test]
    fn the_newest_position_is_the_logs_or_the_one_recovery_set_after_it() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let pg = PgId {
            pool: PoolId(2),
            seed: 9,
        };
        let at = |epoch, version| LogVersion { epoch, version };
        assert_eq!(last(&conn, pg).unwrap(), LogVersion::default());
        for version in 1..=5 {
            append(&conn, pg, &entry(version)).unwrap();
        }
        assert_eq!(last(&conn, pg).unwrap(), at(1, 5));

        set_last(&conn, pg, at(1, 3)).unwrap();
        assert_eq!(last(&conn, pg).unwrap(), at(1, 3), "entries past it go");
        append(&conn, pg, &entry(4)).unwrap();
        assert_eq!(last(&conn, pg).unwrap(), at(1, 4));

        set_last(&conn, pg, at(2, 100)).unwrap();
        assert_eq!(
            last(&conn, pg).unwrap(),
            at(2, 100),
            "a position past the log"
        );
        let next = LogEntry {
            at: at(2, 101),
            ..entry(0)
        };
        append(&conn, pg, &next).unwrap();
        assert_eq!(last(&conn, pg).unwrap(), at(2, 101));
    }
}
