//! Content chunks addressed by their BLAKE3 hash. Small chunks (at most
//! [`INLINE_MAX`]) are kept inline in SQLite, so a small write costs one
//! log sync; larger ones are appended to segment files (written once,
//! sequentially, whatever the write pattern). The chunk index and
//! reference counts live in SQLite, in the object store's database, so a
//! chunk and the extents naming it change in one transaction.
//!
//! Every read re-hashes the whole chunk and refuses bytes that do not match
//! its name. Chunks are at most [`MAX_CHUNK`] bytes, so that costs little.
//! Space comes back in two steps: chunks no extent references leave the
//! index ([`ContentStore::drop_unreferenced`]), and segments whose live
//! bytes fell below [`COMPACT_BELOW_LIVE`] are rewritten
//! ([`ContentStore::compact`]); a segment file is deleted only once every
//! live chunk it held is durable elsewhere.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::extents::ChunkId;
use crate::store::{StoreError, io};

/// The largest chunk: a write is cut into chunks of at most this size, and
/// a read verifies whole chunks.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Chunks up to this size are stored inline in the database.
pub const INLINE_MAX: usize = 16 * 1024;
/// A write of at most this many bytes in all is stored inline whatever
/// its chunks' sizes: a small file's bytes then cost one log sync, where
/// a segment would add a second sync of its own.
pub const SMALL_WRITE_MAX: usize = 64 * 1024;
/// The segment number of inline chunks.
const INLINE: i64 = 0;
/// A segment stops taking appends once it is this large.
pub const SEGMENT_TARGET_BYTES: u64 = 256 * 1024 * 1024;
/// A sealed segment whose live bytes are below this fraction of what it
/// holds is rewritten by compaction.
pub const COMPACT_BELOW_LIVE: f64 = 0.5;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chunks (
    id BLOB PRIMARY KEY,
    segment INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    len INTEGER NOT NULL,
    refs INTEGER NOT NULL
) WITHOUT ROWID;
-- The bytes of inline chunks (segment 0; a chunk's offset is its row
-- here). Not in the chunk index: a WITHOUT ROWID table keeps whole rows in
-- its interior pages, and bytes there made every lookup read overflow
-- pages. Appended by rowid, so a new chunk dirties no random page here.
CREATE TABLE IF NOT EXISTS inline_chunks (
    row INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
-- The bytes inline chunks hold (one row), kept as they come and go so
-- the space used is never summed from the chunks.
CREATE TABLE IF NOT EXISTS inline_usage (
    only INTEGER PRIMARY KEY CHECK (only = 0),
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO inline_usage (only, bytes)
    SELECT 0, COALESCE(SUM(len), 0) FROM chunks WHERE segment = 0;
-- Chunks in segment files, by segment (compaction lists them). Inline
-- chunks stay out, so storing one touches no page of this index.
DROP INDEX IF EXISTS chunks_by_segment;
DROP INDEX IF EXISTS chunks_by_segment_len;
CREATE INDEX IF NOT EXISTS chunks_in_segment_files ON chunks (segment) WHERE segment <> 0;
CREATE INDEX IF NOT EXISTS unreferenced_chunks ON chunks (refs) WHERE refs = 0;
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    written INTEGER NOT NULL,
    live INTEGER NOT NULL
);
";

/// The bytes inline chunks hold.
pub(crate) fn inline_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let bytes: i64 = conn.query_row("SELECT bytes FROM inline_usage", [], |r| r.get(0))?;
    Ok(bytes as u64)
}

/// Moves inline bytes out of the chunk index of a store written before
/// they had their own table.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let old: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('chunks') WHERE name = 'data'",
        [],
        |r| r.get(0),
    )?;
    if old == 0 {
        return Ok(());
    }
    // Rolled back on drop unless committed.
    let tx = conn.unchecked_transaction()?;
    let inline: Vec<(Vec<u8>, Vec<u8>)> = tx
        .prepare("SELECT id, data FROM chunks WHERE segment = ?1 AND data IS NOT NULL")?
        .query_map([INLINE], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, data) in inline {
        tx.execute("INSERT INTO inline_chunks (data) VALUES (?1)", [&data])?;
        tx.execute(
            "UPDATE chunks SET offset = ?2 WHERE id = ?1",
            params![id, tx.last_insert_rowid()],
        )?;
    }
    tx.execute_batch("ALTER TABLE chunks DROP COLUMN data")?;
    tx.commit()?;
    Ok(())
}

/// Where a chunk's bytes are.
#[derive(Clone, Copy, Debug)]
struct Location {
    segment: i64,
    offset: u64,
    len: u64,
}

/// The segment files of one store and the one appends go to.
pub struct ContentStore {
    dir: PathBuf,
    active: Option<(i64, File, u64)>,
    /// The id the next segment gets: above every id the index or the
    /// directory has ever held, so a segment file is never reused (a
    /// segment whose index row was rolled back may hold bytes on disk).
    next_segment: Option<i64>,
    /// Segments written since the last [`ContentStore::sync`].
    dirty: BTreeSet<i64>,
    /// Bytes of chunks stored inline (in the database, so in its log)
    /// since [`ContentStore::take_inline_written`].
    inline_written: u64,
}

impl ContentStore {
    pub fn open(dir: &Path) -> Result<ContentStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        Ok(ContentStore {
            dir: dir.to_path_buf(),
            active: None,
            next_segment: None,
            dirty: BTreeSet::new(),
            inline_written: 0,
        })
    }

    fn segment_path(&self, segment: i64) -> PathBuf {
        self.dir.join(format!("{segment:010}.seg"))
    }

    /// The segment appends go to, starting a new one when the current one
    /// is full (or on the first append after opening: segments are never
    /// appended to across restarts, so a torn tail is never built upon).
    fn active(&mut self, conn: &Connection) -> Result<&mut (i64, File, u64), StoreError> {
        let full = self
            .active
            .as_ref()
            .is_none_or(|(_, _, len)| *len >= SEGMENT_TARGET_BYTES);
        if full {
            let next = match self.next_segment {
                Some(next) => next,
                None => self.first_free_segment(conn)?,
            };
            self.next_segment = Some(next + 1);
            conn.execute(
                "INSERT INTO segments (id, written, live) VALUES (?1, 0, 0)",
                [next],
            )?;
            let file = OpenOptions::new()
                .create_new(true)
                .read(true)
                .write(true)
                .open(self.segment_path(next))
                .map_err(io)?;
            self.active = Some((next, file, 0));
        }
        Ok(self.active.as_mut().expect("set above"))
    }

    /// One past the highest segment id in the index or on disk.
    fn first_free_segment(&self, conn: &Connection) -> Result<i64, StoreError> {
        let indexed: i64 =
            conn.query_row("SELECT COALESCE(MAX(id), 0) FROM segments", [], |r| {
                r.get(0)
            })?;
        let mut highest = indexed;
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let name = entry.map_err(io)?.file_name();
            let id = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<i64>().ok());
            highest = highest.max(id.unwrap_or(0));
        }
        Ok(highest + 1)
    }

    /// Stops appending to the current segment: the transaction that
    /// created its index row, or recorded chunks in it, was rolled back.
    pub fn abandon_active(&mut self) {
        self.active = None;
    }

    /// Stores `bytes` (at most [`MAX_CHUNK`]) unless a chunk with the same
    /// content exists; its id. The chunk has no references until extents
    /// take them ([`ContentStore::add_refs`]).
    ///
    /// With `verify_existing` (recovery and repair installing a known-good
    /// copy), an existing chunk with that id is read back first, and if its
    /// stored bytes are damaged they are replaced by these.
    /// The inline bytes stored since the last call (the database log's
    /// growth, which decides when to checkpoint).
    pub fn take_inline_written(&mut self) -> u64 {
        std::mem::take(&mut self.inline_written)
    }

    /// With `small_write`, the chunk is part of a write of at most
    /// [`SMALL_WRITE_MAX`] bytes and goes inline.
    pub fn put(
        &mut self,
        conn: &Connection,
        bytes: &[u8],
        verify_existing: bool,
        small_write: bool,
    ) -> Result<ChunkId, StoreError> {
        if bytes.len() > MAX_CHUNK {
            return Err(StoreError::Invalid(format!(
                "a chunk of {} bytes is over {MAX_CHUNK}",
                bytes.len()
            )));
        }
        let id: ChunkId = *blake3::hash(bytes).as_bytes();
        if let Some(location) = self.locate(conn, &id)? {
            if verify_existing && matches!(self.get(conn, &id), Err(StoreError::Corrupt(_))) {
                self.rewrite(conn, &id, location, bytes)?;
            }
            return Ok(id);
        }
        if bytes.len() <= INLINE_MAX || small_write {
            conn.prepare_cached("INSERT INTO inline_chunks (data) VALUES (?1)")?
                .execute([bytes])?;
            conn.prepare_cached(
                "INSERT INTO chunks (id, segment, offset, len, refs) VALUES (?1, ?2, ?3, ?4, 0)",
            )?
            .execute(params![
                &id[..],
                INLINE,
                conn.last_insert_rowid(),
                bytes.len() as i64
            ])?;
            conn.prepare_cached("UPDATE inline_usage SET bytes = bytes + ?1")?
                .execute([bytes.len() as i64])?;
            self.inline_written += bytes.len() as u64;
            return Ok(id);
        }
        let (segment, file, len) = self.active(conn)?;
        let (segment, offset) = (*segment, *len);
        file.write_all_at(bytes, offset).map_err(io)?;
        *len += bytes.len() as u64;
        self.dirty.insert(segment);
        conn.prepare_cached(
            "INSERT INTO chunks (id, segment, offset, len, refs) VALUES (?1, ?2, ?3, ?4, 0)",
        )?
        .execute(params![&id[..], segment, offset as i64, bytes.len() as i64])?;
        conn.prepare_cached("UPDATE segments SET written = written + ?2 WHERE id = ?1")?
            .execute(params![segment, bytes.len() as i64])?;
        Ok(id)
    }

    /// Stores good bytes for a chunk whose stored copy is damaged, and
    /// points the index at them.
    fn rewrite(
        &mut self,
        conn: &Connection,
        id: &ChunkId,
        old: Location,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        if old.segment == INLINE {
            conn.execute(
                "INSERT OR REPLACE INTO inline_chunks (row, data) VALUES (?1, ?2)",
                params![old.offset as i64, bytes],
            )?;
            return Ok(());
        }
        let (segment, file, len) = self.active(conn)?;
        let (segment, offset) = (*segment, *len);
        file.write_all_at(bytes, offset).map_err(io)?;
        *len += bytes.len() as u64;
        self.dirty.insert(segment);
        let refs: i64 =
            conn.query_row("SELECT refs FROM chunks WHERE id = ?1", [&id[..]], |r| {
                r.get(0)
            })?;
        let live = if refs > 0 { bytes.len() as i64 } else { 0 };
        conn.execute(
            "UPDATE segments SET live = live - ?2 WHERE id = ?1",
            params![old.segment, live],
        )?;
        conn.execute(
            "UPDATE segments SET written = written + ?2, live = live + ?3 WHERE id = ?1",
            params![segment, bytes.len() as i64, live],
        )?;
        conn.execute(
            "UPDATE chunks SET segment = ?2, offset = ?3 WHERE id = ?1",
            params![&id[..], segment, offset as i64],
        )?;
        Ok(())
    }

    fn locate(&self, conn: &Connection, id: &ChunkId) -> Result<Option<Location>, StoreError> {
        Ok(conn
            .prepare_cached("SELECT segment, offset, len FROM chunks WHERE id = ?1")?
            .query_row([&id[..]], |r| {
                Ok(Location {
                    segment: r.get(0)?,
                    offset: r.get::<_, i64>(1)? as u64,
                    len: r.get::<_, i64>(2)? as u64,
                })
            })
            .optional()?)
    }

    /// The whole chunk, verified against its id.
    pub fn get(&self, conn: &Connection, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        let location = self
            .locate(conn, id)?
            .ok_or_else(|| StoreError::Corrupt(format!("chunk {} is missing", hex(id))))?;
        let bytes = if location.segment == INLINE {
            conn.prepare_cached("SELECT data FROM inline_chunks WHERE row = ?1")?
                .query_row([location.offset as i64], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("inline chunk {} has no data", hex(id)))
                })?
        } else {
            let file = File::open(self.segment_path(location.segment)).map_err(io)?;
            let mut bytes = vec![0; location.len as usize];
            file.read_exact_at(&mut bytes, location.offset)
                .map_err(|e| StoreError::Corrupt(format!("chunk {}: {e}", hex(id))))?;
            bytes
        };
        if blake3::hash(&bytes).as_bytes() != id {
            return Err(StoreError::Corrupt(format!(
                "chunk {} does not match its hash",
                hex(id)
            )));
        }
        Ok(bytes)
    }

    /// Adjusts reference counts (one per extent naming a chunk).
    pub fn add_refs(
        &self,
        conn: &Connection,
        ids: &[ChunkId],
        delta: i64,
    ) -> Result<(), StoreError> {
        let mut update = conn.prepare_cached("UPDATE chunks SET refs = refs + ?2 WHERE id = ?1")?;
        let mut live = conn.prepare_cached(
            "UPDATE segments SET live = live + ?2 * (SELECT len FROM chunks WHERE id = ?1) \
             WHERE id = (SELECT segment FROM chunks WHERE id = ?1)",
        )?;
        for id in ids {
            let before: i64 = conn
                .prepare_cached("SELECT refs FROM chunks WHERE id = ?1")?
                .query_row([&id[..]], |r| r.get(0))
                .optional()?
                .ok_or_else(|| StoreError::Corrupt(format!("chunk {} is missing", hex(id))))?;
            let after = before + delta;
            if after < 0 {
                return Err(StoreError::Corrupt(format!(
                    "chunk {} would have {after} references",
                    hex(id)
                )));
            }
            update.execute(params![&id[..], delta])?;
            // A chunk counts as live bytes while anything references it.
            match (before, after) {
                (0, a) if a > 0 => live.execute(params![&id[..], 1])?,
                (b, 0) if b > 0 => live.execute(params![&id[..], -1])?,
                _ => 0,
            };
        }
        Ok(())
    }

    /// Forgets chunks nothing references (their bytes stay in their segment
    /// until compaction rewrites it).
    pub fn drop_unreferenced(&self, conn: &Connection) -> Result<u64, StoreError> {
        conn.execute(
            "UPDATE inline_usage SET bytes = bytes - \
             (SELECT COALESCE(SUM(len), 0) FROM chunks WHERE refs = 0 AND segment = ?1)",
            [INLINE],
        )?;
        conn.execute(
            "DELETE FROM inline_chunks WHERE row IN \
             (SELECT offset FROM chunks WHERE refs = 0 AND segment = ?1)",
            [INLINE],
        )?;
        Ok(conn.execute("DELETE FROM chunks WHERE refs = 0", [])? as u64)
    }

    /// Segments written since the last sync.
    pub fn take_dirty(&mut self) -> Vec<i64> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Marks segments dirty again (after a failed sync).
    pub fn restore_dirty(&mut self, segments: &[i64]) {
        self.dirty.extend(segments);
    }

    /// The files of `segments`, to sync without holding the store.
    pub fn segment_files(&self, segments: &[i64]) -> Vec<PathBuf> {
        segments.iter().map(|s| self.segment_path(*s)).collect()
    }

    /// Segments worth rewriting: mostly dead bytes. The active segment is
    /// one of them once most of it is dead (a store whose files were all
    /// deleted gets its space back); it is sealed, so appends go to a new
    /// segment.
    pub fn compactable(&mut self, conn: &Connection) -> Result<Vec<i64>, StoreError> {
        let mut statement = conn.prepare_cached(
            "SELECT id FROM segments WHERE written > 0 \
             AND CAST(live AS REAL) < ?1 * written ORDER BY id",
        )?;
        let ids: Vec<i64> = statement
            .query_map(params![COMPACT_BELOW_LIVE], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        if let Some((active, _, _)) = &self.active
            && ids.contains(active)
        {
            self.active = None;
        }
        Ok(ids)
    }

    /// Copies the live chunks of `segment` to the active segment and
    /// repoints them; the old file may be deleted once this is durable
    /// ([`ContentStore::remove_segment`]).
    pub fn compact(&mut self, conn: &Connection, segment: i64) -> Result<u64, StoreError> {
        let live: Vec<Vec<u8>> = conn
            .prepare_cached("SELECT id FROM chunks WHERE segment = ?1 AND segment <> 0")?
            .query_map([segment], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut moved = 0;
        for raw in live {
            let id: ChunkId = raw
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt("a chunk id is not 32 bytes".into()))?;
            let bytes = self.get(conn, &id)?;
            let (target, file, len) = self.active(conn)?;
            let (target, offset) = (*target, *len);
            file.write_all_at(&bytes, offset).map_err(io)?;
            *len += bytes.len() as u64;
            self.dirty.insert(target);
            let refs: i64 =
                conn.query_row("SELECT refs FROM chunks WHERE id = ?1", [&id[..]], |r| {
                    r.get(0)
                })?;
            conn.execute(
                "UPDATE chunks SET segment = ?2, offset = ?3 WHERE id = ?1",
                params![&id[..], target, offset as i64],
            )?;
            let live_bytes = if refs > 0 { bytes.len() as i64 } else { 0 };
            conn.execute(
                "UPDATE segments SET written = written + ?2, live = live + ?3 WHERE id = ?1",
                params![target, bytes.len() as i64, live_bytes],
            )?;
            moved += bytes.len() as u64;
        }
        conn.execute("DELETE FROM segments WHERE id = ?1", [segment])?;
        Ok(moved)
    }

    /// Deletes a compacted segment's file.
    pub fn remove_segment(&self, segment: i64) -> Result<(), StoreError> {
        match std::fs::remove_file(self.segment_path(segment)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
            _ => Ok(()),
        }
    }

    /// The path of a segment file (for tests that damage one).
    pub fn segment_file(&self, segment: i64) -> PathBuf {
        self.segment_path(segment)
    }
}

pub(crate) fn hex(id: &ChunkId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes the bytes of segment `files` durable (a file compaction already
/// removed needs nothing).
pub fn sync_files(files: &[PathBuf]) -> Result<(), StoreError> {
    for path in files {
        match File::open(path) {
            Ok(file) => file.sync_data().map_err(io)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}
