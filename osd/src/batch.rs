//! Group commit for the object store: concurrent mutations join one open
//! SQLite transaction, each inside its own savepoint (a failed change
//! undoes only itself), and the next sync commits them all at once and
//! syncs the log once. Pages that every change touches (the PG log, the
//! chunk index, the usage counters) are then written to the log once per
//! batch rather than once per change.
//!
//! Each batch carries an [`Outcome`] that its members wait on: set once
//! the batch is durable, or failed when its commit or sync fails (then
//! every member fails, none is acknowledged).

use std::sync::{Arc, OnceLock};

use rusqlite::Connection;

use crate::store::StoreError;

/// Why a batch did not become durable.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    /// The disk was full: members report "no space".
    full: bool,
    message: String,
}

impl Failure {
    pub(crate) fn of(error: &StoreError) -> Failure {
        let full = match error {
            StoreError::NoSpace => true,
            StoreError::Sqlite(error) => {
                error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
            }
            _ => false,
        };
        Failure {
            full,
            message: error.to_string(),
        }
    }

    pub(crate) fn to_error(&self) -> StoreError {
        if self.full {
            StoreError::NoSpace
        } else {
            StoreError::Io(format!(
                "the commit this change joined failed: {}",
                self.message
            ))
        }
    }
}

/// Whether a batch became durable; unset until its sync finished.
pub(crate) type Outcome = Arc<OnceLock<Result<(), Failure>>>;

/// What [`Batches::commit`] did.
pub(crate) enum Committed {
    /// No batch was open.
    Nothing,
    /// The commit failed: the batch was rolled back and its members told.
    Failed,
    /// Committed; the caller settles the outcome once it is durable.
    Batch(Outcome),
}

/// The open batch of one connection, if any.
#[derive(Default)]
pub(crate) struct Batches {
    open: Option<Outcome>,
}

impl Batches {
    /// The open batch, beginning one if none is open.
    pub(crate) fn join(&mut self, conn: &Connection) -> Result<Outcome, StoreError> {
        if let Some(outcome) = &self.open {
            return Ok(outcome.clone());
        }
        if !conn.is_autocommit() {
            // Left by a failed batch whose rollback failed too.
            conn.execute_batch("ROLLBACK")?;
        }
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let outcome = Outcome::default();
        self.open = Some(outcome.clone());
        Ok(outcome)
    }

    /// Runs `change` in a savepoint of the open batch (which the caller
    /// joined): kept on success, undone on failure. Should SQLite have
    /// rolled back the whole transaction (it does on some I/O errors), the
    /// batch fails with it.
    pub(crate) fn apply<T, C>(
        &mut self,
        conn: &mut Connection,
        context: &mut C,
        change: impl FnOnce(&Connection, &mut C) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (result, kept) = {
            let mut savepoint = conn.savepoint()?;
            let result = change(&savepoint, context);
            let kept = match &result {
                Ok(_) => savepoint.commit(),
                Err(_) => savepoint.rollback().and_then(|()| savepoint.commit()),
            };
            (result, kept.map_err(StoreError::from))
        };
        if let Err(error) = kept {
            // The savepoint could be neither kept nor undone: the batch is
            // in an unknown state, so none of it may count.
            self.fail(conn, &error);
            return Err(error);
        }
        if result.is_err() && conn.is_autocommit() {
            let error = StoreError::Io("SQLite rolled back the open transaction".into());
            self.fail(conn, &error);
        }
        result
    }

    /// Commits the open batch.
    pub(crate) fn commit(&mut self, conn: &Connection) -> Committed {
        let Some(outcome) = self.open.take() else {
            return Committed::Nothing;
        };
        if let Err(error) = conn.execute_batch("COMMIT") {
            self.open = Some(outcome);
            self.fail(conn, &error.into());
            return Committed::Failed;
        }
        Committed::Batch(outcome)
    }

    /// Rolls the open batch back and fails its members.
    fn fail(&mut self, conn: &Connection, error: &StoreError) {
        let Some(outcome) = self.open.take() else {
            return;
        };
        if !conn.is_autocommit()
            && let Err(rollback) = conn.execute_batch("ROLLBACK")
        {
            tracing::warn!(%rollback, "rolling back a failed batch failed");
        }
        let _ = outcome.set(Err(Failure::of(error)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .unwrap();
        conn
    }

    fn insert(conn: &Connection, n: i64) -> Result<(), StoreError> {
        conn.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
        Ok(())
    }

    fn rows(conn: &Connection) -> Vec<i64> {
        let mut statement = conn.prepare("SELECT n FROM t ORDER BY n").unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A table and an open batch holding one inserted row.
    fn one_row_batch() -> (Connection, Batches, Outcome) {
        let mut conn = table();
        let mut batches = Batches::default();
        let outcome = batches.join(&conn).unwrap();
        batches
            .apply(&mut conn, &mut (), |c, _| insert(c, 1))
            .unwrap();
        (conn, batches, outcome)
    }

    #[test]
    fn changes_share_one_batch_and_a_failed_one_undoes_only_itself() {
        let (mut conn, mut batches, first) = one_row_batch();
        let second = batches.join(&conn).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "one open batch");
        let failed = batches.apply(&mut conn, &mut (), |c, _| {
            insert(c, 2)?;
            Err::<(), _>(StoreError::Invalid("half-way".into()))
        });
        assert!(failed.is_err());
        batches
            .apply(&mut conn, &mut (), |c, _| insert(c, 3))
            .unwrap();
        assert!(!conn.is_autocommit(), "nothing committed before the sync");
        let Committed::Batch(outcome) = batches.commit(&conn) else {
            panic!("the open batch commits");
        };
        assert!(Arc::ptr_eq(&outcome, &first));
        assert!(conn.is_autocommit());
        assert_eq!(rows(&conn), vec![1, 3]);
        assert!(matches!(batches.commit(&conn), Committed::Nothing));
        let next = batches.join(&conn).unwrap();
        assert!(!Arc::ptr_eq(&next, &first), "a new batch after a commit");
    }

    #[test]
    fn a_batch_the_database_rolled_back_fails_all_its_members() {
        let (mut conn, mut batches, outcome) = one_row_batch();
        // A change that ends the whole transaction, as SQLite does itself
        // on some I/O errors.
        let failed = batches.apply(&mut conn, &mut (), |c, _| {
            c.execute_batch("ROLLBACK")?;
            Err::<(), _>(StoreError::Io("disk error".into()))
        });
        assert!(failed.is_err());
        let settled = outcome.get().expect("the members are told");
        assert!(matches!(
            settled.clone().map_err(|f| f.to_error()),
            Err(StoreError::Io(_))
        ));
        assert!(matches!(batches.commit(&conn), Committed::Nothing));
        assert_eq!(rows(&conn), Vec::<i64>::new());
    }

    #[test]
    fn a_full_disk_reaches_the_members_as_no_space() {
        let failure = Failure::of(&StoreError::NoSpace);
        assert!(matches!(failure.to_error(), StoreError::NoSpace));
        let failure = Failure::of(&StoreError::Io("x".into()));
        assert!(matches!(failure.to_error(), StoreError::Io(_)));
    }
}
