//! Content chunks addressed by their BLAKE3 hash. The small chunks (at
//! most [`INLINE_CHUNK_MAX`]) of a small write (at most [`SMALL_WRITE_MAX`]
//! bytes in all) are kept inline in SQLite, so it costs one log sync; a
//! larger chunk, and a larger write's chunks however small each is, are
//! appended to segment files (written once, sequentially,
//! whatever the write pattern: inline bytes are written twice, into the
//! log and again at its checkpoint). The chunk index and
//! reference counts live in SQLite, in the object store's database, so a
//! chunk and the extents naming it change in one transaction.
//!
//! Every read is hashed and refuses bytes that do not match the chunk's
//! name. A chunk in a segment file is stored after its hash tree (see
//! [`crate::tree`]), so a read of a few KiB hashes only the pieces it
//! returns; inline chunks (and those of segments written before trees)
//! are re-hashed whole. Reads are located under the store's lock and read
//! from disk after it is released ([`ChunkRead`]).
//! Space comes back in two steps: chunks no extent references leave the
//! index ([`ContentStore::drop_unreferenced`]), and segments whose live
//! bytes fell below [`COMPACT_BELOW_LIVE`] are rewritten, at most
//! [`COMPACT_STEP_BYTES`] per transaction so a large segment never holds
//! the store for long ([`ContentStore::compact_step`]); a segment file is
//! deleted only once every live chunk it held is durable elsewhere.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::IoSliceMut;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
use rusqlite::{Connection, OptionalExtension, params};
use rustix::io::Errno;

use crate::extents::ChunkId;
use crate::store::{StoreError, io};
use crate::tree;
use crate::tree_cache::TreeCache;

/// The largest chunk: a write is cut into chunks of at most this size, and
/// a read verifies whole chunks.
pub const MAX_CHUNK: usize = 64 * 1024;
/// The chunks of a write of at most this many bytes in all are stored
/// inline, up to [`INLINE_CHUNK_MAX`] each: a small write then costs one
/// log sync, where a segment would add a second sync of its own. A larger
/// write (a write-back of many scattered pieces) goes to a segment whole,
/// its small pieces too.
pub const SMALL_WRITE_MAX: usize = 64 * 1024;
/// The largest chunk stored inline. A larger one (a 64 KiB file's) goes to
/// a segment file even in a small write: inline, it would span a chain of
/// overflow pages, written into the log and again at the checkpoint, and
/// read back one page after another from wherever the database had free
/// pages; in a segment it is written once and read with one read.
pub const INLINE_CHUNK_MAX: usize = 16 * 1024;
/// Segment file handles kept open for reading (up to two per segment, one
/// per [`ReadPattern`]); past this many, the cache is emptied and refilled
/// as reads come.
pub const MAX_OPEN_READERS: usize = 256;
/// The segment number of inline chunks.
const INLINE: i64 = 0;
/// A segment stops taking appends once it is this large.
pub const SEGMENT_TARGET_BYTES: u64 = 256 * 1024 * 1024;
/// A sealed segment whose live bytes are below this fraction of what it
/// holds is rewritten by compaction.
pub const COMPACT_BELOW_LIVE: f64 = 0.5;
/// The most bytes one compaction step copies (one transaction, holding the
/// store): a 256 MiB segment is rewritten in many steps, and writes go on
/// between them.
pub const COMPACT_STEP_BYTES: u64 = 8 * 1024 * 1024;
/// The most released references one garbage collection step applies to
/// the chunk index (one transaction, holding the store).
pub const RELEASE_STEP: usize = 16 * 1024;

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
-- References that edits and deletes gave up, not yet subtracted from
-- `chunks.refs` (see ContentStore::release). Appended by rowid, so a
-- delete dirties no random page of the chunk index.
CREATE TABLE IF NOT EXISTS released (
    row INTEGER PRIMARY KEY,
    chunk BLOB NOT NULL
);
-- `tree` is 1 for segments that store each chunk's hash tree (see
-- crate::tree) just before its bytes; segments written before trees were
-- stored have 0. `written` counts the trees, `live` only chunk bytes (a
-- whole live segment is about 99.6% live).
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY,
    written INTEGER NOT NULL,
    live INTEGER NOT NULL,
    tree INTEGER NOT NULL DEFAULT 0
);
";

/// The bytes inline chunks hold.
pub(crate) fn inline_bytes(conn: &Connection) -> Result<u64, StoreError> {
    let bytes: i64 = conn.query_row("SELECT bytes FROM inline_usage", [], |r| r.get(0))?;
    Ok(bytes as u64)
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, StoreError> {
    let count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get(0),
    )?;
    Ok(count > 0)
}

/// Brings a store written by an earlier version up to this layout.
pub(crate) fn migrate(conn: &Connection) -> Result<(), StoreError> {
    if !has_column(conn, "segments", "tree")? {
        conn.execute_batch("ALTER TABLE segments ADD COLUMN tree INTEGER NOT NULL DEFAULT 0")?;
    }
    move_inline_bytes_out_of_the_index(conn)
}

/// Moves inline bytes out of the chunk index of a store written before
/// they had their own table.
fn move_inline_bytes_out_of_the_index(conn: &Connection) -> Result<(), StoreError> {
    if !has_column(conn, "chunks", "data")? {
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

/// Where a chunk's bytes are: a row of `chunks` with its segment's
/// `tree` flag (see [`ContentStore::locate`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Location {
    segment: i64,
    /// Where the chunk's bytes start (its tree, if stored, ends there).
    offset: u64,
    len: u64,
    /// Whether the chunk's tree is stored.
    tree: bool,
}

impl Location {
    /// A location from the columns `c.segment, c.offset, c.len,
    /// COALESCE(s.tree, 0)` of `chunks c LEFT JOIN segments s ON s.id =
    /// c.segment`, as a caller's own statement selects them.
    pub(crate) fn from_columns(segment: i64, offset: i64, len: i64, tree: i64) -> Location {
        Location {
            segment,
            offset: offset as u64,
            len: len as u64,
            tree: tree != 0,
        }
    }
}

/// How [`ContentStore::put`] stores a chunk.
#[derive(Clone, Copy, Debug, Default)]
pub struct Put<'a> {
    /// Recovery and repair installing a known-good copy: an existing chunk
    /// with the same id is read back first, and if its stored bytes are
    /// damaged they are replaced by these.
    pub verify_existing: bool,
    /// The chunk goes inline, without a tree (the caller's rule:
    /// [`crate::store::in_segment`]).
    pub inline: bool,
    /// The chunk's hash tree as its PG's primary computed it
    /// ([`tree::build`]; one of the wrong length is refused): taken as is,
    /// so a replica does not hash the bytes again. Its reads still verify
    /// the bytes against it, and scrub compares the copies.
    pub known_tree: Option<&'a [u8]>,
    /// A new chunk is stored holding one reference (its bytes live at
    /// once), that of the extent about to name it: the caller counts that
    /// reference as given up, so a chunk no extent ends up naming is
    /// released like any other. Stored unreferenced and then referenced,
    /// it would pass through `unreferenced_chunks`, rewriting a page of
    /// that index on every write. Without, the chunk has no references
    /// until extents take them ([`ContentStore::add_refs`]).
    pub held: bool,
}

/// What [`ContentStore::put`] stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stored {
    pub id: ChunkId,
    /// No chunk with this content was stored before.
    pub new: bool,
}

/// The segment files of one store and the one appends go to.
pub struct ContentStore {
    dir: PathBuf,
    active: Option<(i64, File, u64)>,
    /// The id the next segment gets: above every id the index or the
    /// directory has ever held, so a segment file is never reused (a
    /// segment whose index row was rolled back may hold bytes on disk).
    next_segment: Option<i64>,
    /// Segments written since the last sync, each with the span of bytes
    /// appended to it since.
    dirty: BTreeMap<i64, Range<u64>>,
    /// Segment files open for reading. A handle outlives its file's
    /// deletion by compaction, so a read located under the store's lock
    /// still finds its bytes after the lock is released.
    ///
    /// One handle per segment and [`ReadPattern`]: the readahead advice
    /// holds for an open file, not for the file.
    readers: Mutex<HashMap<(i64, ReadPattern), Arc<File>>>,
    /// Chunk trees small reads checked, so the next small read of the
    /// chunk reads only its pieces.
    trees: Arc<TreeCache>,
}

/// How the read a chunk belongs to moves through its segment file, so the
/// kernel reads ahead only where that helps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadPattern {
    /// Reads in order or long ones (whole objects, scrub, recovery, a
    /// file read sequentially): the chunks after this one are likely next,
    /// so the kernel's readahead pays.
    Streaming,
    /// Short reads at scattered places (told apart in [`crate::trails`]):
    /// readahead would only read bytes nobody asked for (on a 4 KiB random
    /// read, twice the bytes read).
    Scattered,
}

/// A chunk located under the store's lock: its bytes are read and
/// verified by [`ChunkRead::read`] once the lock is released. That
/// is safe because segment files are append-only and never reused, and
/// the open handle keeps a compacted segment's bytes readable.
pub struct ChunkRead {
    id: ChunkId,
    source: ChunkSource,
}

enum ChunkSource {
    /// An inline chunk's bytes, already read from the database.
    Inline(Vec<u8>),
    Segment {
        file: Arc<File>,
        offset: u64,
        len: usize,
        tree: bool,
        trees: Arc<TreeCache>,
    },
}

impl ChunkRead {
    /// The whole chunk, verified against its id.
    pub fn verified(self) -> Result<Vec<u8>, StoreError> {
        let len = self.len();
        self.read(0..len)
    }

    /// Bytes `range` of the chunk, verified: against the chunk's id, or,
    /// when its tree is stored, against the tree (itself checked against
    /// the id), hashing only the pieces the range touches.
    pub fn read(&self, range: Range<usize>) -> Result<Vec<u8>, StoreError> {
        waited(self.read_if(range, Wait::ForDisk)?).map(Cow::into_owned)
    }

    /// Whether the chunk's bytes are still to be read from a segment file
    /// (an inline chunk's came with its location).
    pub fn in_segment(&self) -> bool {
        matches!(self.source, ChunkSource::Segment { .. })
    }

    fn len(&self) -> usize {
        match &self.source {
            ChunkSource::Inline(bytes) => bytes.len(),
            ChunkSource::Segment { len, .. } => *len,
        }
    }

    /// [`ChunkRead::read`] (an inline chunk's bytes borrowed), or `None` if
    /// that would wait for the disk and `wait` is [`Wait::ForNothing`].
    pub fn read_if(
        &self,
        range: Range<usize>,
        wait: Wait,
    ) -> Result<Option<Cow<'_, [u8]>>, StoreError> {
        if range.start > range.end || range.end > self.len() {
            return Err(StoreError::Corrupt(format!(
                "an extent runs past chunk {}",
                hex(&self.id)
            )));
        }
        match &self.source {
            ChunkSource::Segment {
                file,
                offset,
                len,
                tree: true,
                trees,
            } if tree::pieces(*len) > 0 => Ok(self
                .read_pieces(file, trees, (*offset, *len), range, wait)?
                .map(Cow::Owned)),
            // A chunk of a segment written before trees is read and hashed
            // whole, up to MAX_CHUNK bytes for a read of a few: work for a
            // thread that may wait, not for one that must not.
            ChunkSource::Segment { len, .. } if wait == Wait::ForNothing && *len > tree::PIECE => {
                Ok(None)
            }
            _ => self.read_whole(range, wait),
        }
    }

    fn read_whole(
        &self,
        range: Range<usize>,
        wait: Wait,
    ) -> Result<Option<Cow<'_, [u8]>>, StoreError> {
        let bytes: Cow<'_, [u8]> = match &self.source {
            ChunkSource::Inline(bytes) => Cow::Borrowed(bytes),
            ChunkSource::Segment {
                file, offset, len, ..
            } => match read_at(file, *offset, *len, &self.id, wait)? {
                Some(bytes) => Cow::Owned(bytes),
                None => return Ok(None),
            },
        };
        if blake3::hash(&bytes).as_bytes() != &self.id {
            return Err(mismatch(&self.id));
        }
        Ok(Some(match bytes {
            _ if range.len() == bytes.len() => bytes,
            Cow::Borrowed(bytes) => Cow::Borrowed(&bytes[range]),
            Cow::Owned(bytes) => Cow::Owned(bytes[range].to_vec()),
        }))
    }

    /// The pieces `range` touches of the chunk at `offset` (`len` bytes)
    /// in `file`, checked against its tree: the stored one, or for a read
    /// of part of the chunk the one `trees` kept from an earlier read.
    fn read_pieces(
        &self,
        file: &File,
        trees: &TreeCache,
        (offset, len): (u64, usize),
        range: Range<usize>,
        wait: Wait,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let partial = range.len() < len;
        let Some(values) = self.tree(file, trees, (offset, len), partial, wait)? else {
            return Ok(None);
        };
        let first = range.start / tree::PIECE;
        let base = first * tree::PIECE;
        let end = (range.end.div_ceil(tree::PIECE) * tree::PIECE).min(len);
        let at = offset
            .checked_add(base as u64)
            .ok_or_else(|| mismatch(&self.id))?;
        let Some(mut bytes) = read_at(file, at, end - base, &self.id, wait)? else {
            return Ok(None);
        };
        if !tree::pieces_match(&values, first, &bytes) {
            return Err(mismatch(&self.id));
        }
        bytes.truncate(range.end - base);
        bytes.drain(..range.start - base);
        Ok(Some(bytes))
    }

    /// The chunk's tree, checked against its id: for a `partial` read the
    /// one `trees` kept if there is one, else the stored one (which a
    /// partial read leaves in `trees`).
    fn tree(
        &self,
        file: &File,
        trees: &TreeCache,
        (offset, len): (u64, usize),
        partial: bool,
        wait: Wait,
    ) -> Result<Option<Arc<[u8]>>, StoreError> {
        if partial && let Some(values) = trees.get(&self.id, len) {
            return Ok(Some(values));
        }
        let Some(values) = self.read_stored_tree(file, (offset, len), wait)? else {
            return Ok(None);
        };
        let values: Arc<[u8]> = Arc::from(values);
        if partial {
            trees.insert(self.id, len, values.clone());
        }
        Ok(Some(values))
    }

    /// The stored tree of the chunk at `offset` (`len` bytes) in `file`,
    /// checked against the chunk's id.
    fn read_stored_tree(
        &self,
        file: &File,
        (offset, len): (u64, usize),
        wait: Wait,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let tree_len = tree::tree_len(len) as u64;
        let tree_at = offset
            .checked_sub(tree_len)
            .ok_or_else(|| mismatch(&self.id))?;
        let Some(values) = read_at(file, tree_at, tree_len as usize, &self.id, wait)? else {
            return Ok(None);
        };
        if tree::root(&values, len) != Some(self.id) {
            return Err(mismatch(&self.id));
        }
        Ok(Some(values))
    }
}

/// The bytes of a read made with [`Wait::ForDisk`], which always has them.
pub(crate) fn waited<T>(read: Option<T>) -> Result<T, StoreError> {
    read.ok_or_else(|| StoreError::Io("a read that waits for the disk read nothing".into()))
}

/// Whether a read of a segment file may wait for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// It reads whatever it takes.
    ForDisk,
    /// It reads only bytes the page cache holds, and gives up otherwise.
    ForNothing,
}

fn mismatch(id: &ChunkId) -> StoreError {
    StoreError::Corrupt(format!("chunk {} does not match its hash", hex(id)))
}

/// `len` bytes at `offset` of `file` (a chunk of `id`'s), or `None` if
/// that would wait for the disk and `wait` is [`Wait::ForNothing`].
fn read_at(
    file: &File,
    offset: u64,
    len: usize,
    id: &ChunkId,
    wait: Wait,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut bytes = vec![0; len];
    match wait {
        Wait::ForDisk => {
            file.read_exact_at(&mut bytes, offset)
                .map_err(|e| StoreError::Corrupt(format!("chunk {}: {e}", hex(id))))?;
            Ok(Some(bytes))
        }
        Wait::ForNothing => Ok(read_cached_at(file, &mut bytes, offset).then_some(bytes)),
    }
}

/// Whether reads that wait for nothing are tried: cleared for good, for
/// every store in the process, the first time the kernel or filesystem
/// refuses `RWF_NOWAIT` (tmpfs, FUSE and NFS do), so reads stop paying a
/// failed system call first.
static READS_WITHOUT_WAITING: AtomicBool = AtomicBool::new(true);

/// Fills `buf` from `offset` of `file` if the page cache holds all of it,
/// without waiting for the disk (`preadv2` with `RWF_NOWAIT`); false when
/// it does not, or on a short read or any error: a read that may wait
/// then tells.
fn read_cached_at(file: &File, buf: &mut [u8], offset: u64) -> bool {
    // u64::MAX would mean the file's own position to preadv2.
    if offset > i64::MAX as u64 || !READS_WITHOUT_WAITING.load(Ordering::Relaxed) {
        return false;
    }
    let flags = rustix::io::ReadWriteFlags::NOWAIT;
    match rustix::io::preadv2(file, &mut [IoSliceMut::new(buf)], offset, flags) {
        Ok(read) => read == buf.len(),
        Err(error) if refuses_reads_without_waiting(error) => {
            READS_WITHOUT_WAITING.store(false, Ordering::Relaxed);
            false
        }
        Err(_) => false,
    }
}

/// Whether `error` from a `preadv2` with `RWF_NOWAIT` says the kernel or
/// the filesystem does not take the flag at all (rather than that this
/// read would wait).
fn refuses_reads_without_waiting(error: Errno) -> bool {
    matches!(error, Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL)
}

impl ContentStore {
    pub fn open(dir: &Path) -> Result<ContentStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(io)?;
        Ok(ContentStore {
            dir: dir.to_path_buf(),
            active: None,
            next_segment: None,
            dirty: BTreeMap::new(),
            readers: Mutex::default(),
            trees: Arc::default(),
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
                "INSERT INTO segments (id, written, live, tree) VALUES (?1, 0, 0, 1)",
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
    /// content exists, as `how` says; its id, and whether it is new.
    pub fn put(
        &mut self,
        conn: &Connection,
        bytes: &[u8],
        how: Put<'_>,
    ) -> Result<Stored, StoreError> {
        let Put {
            verify_existing,
            inline,
            known_tree,
            held,
        } = how;
        if bytes.len() > MAX_CHUNK {
            return Err(StoreError::Invalid(format!(
                "a chunk of {} bytes is over {MAX_CHUNK}",
                bytes.len()
            )));
        }
        let tree = match known_tree {
            _ if inline => Cow::Borrowed(&[][..]),
            Some(tree) if tree.len() == tree::tree_len(bytes.len()) => Cow::Borrowed(tree),
            Some(_) => {
                return Err(StoreError::Invalid(format!(
                    "a hash tree of the wrong length for a chunk of {} bytes",
                    bytes.len()
                )));
            }
            None => Cow::Owned(tree::build(bytes)),
        };
        let id = tree::root(&tree, bytes.len()).unwrap_or_else(|| *blake3::hash(bytes).as_bytes());
        if let Some(location) = self.locate(conn, &id)? {
            if verify_existing && matches!(self.get(conn, &id), Err(StoreError::Corrupt(_))) {
                self.rewrite(conn, &id, location, bytes)?;
            }
            return Ok(Stored { id, new: false });
        }
        let len = bytes.len() as i64;
        let refs = i64::from(held);
        let mut insert = conn.prepare_cached(
            "INSERT INTO chunks (id, segment, offset, len, refs) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        if inline {
            conn.prepare_cached("INSERT INTO inline_chunks (data) VALUES (?1)")?
                .execute([bytes])?;
            insert.execute(params![
                &id[..],
                INLINE,
                conn.last_insert_rowid(),
                len,
                refs
            ])?;
            conn.prepare_cached("UPDATE inline_usage SET bytes = bytes + ?1")?
                .execute([len])?;
            return Ok(Stored { id, new: true });
        }
        let (segment, offset) = self.append(conn, bytes, &tree)?;
        insert.execute(params![&id[..], segment, offset as i64, len, refs])?;
        if held {
            conn.prepare_cached("UPDATE segments SET live = live + ?2 WHERE id = ?1")?
                .execute(params![segment, len])?;
        }
        Ok(Stored { id, new: true })
    }

    /// Appends a chunk's tree and then its bytes to the active segment;
    /// the segment and the offset of the bytes.
    fn append(
        &mut self,
        conn: &Connection,
        bytes: &[u8],
        tree: &[u8],
    ) -> Result<(i64, u64), StoreError> {
        let (segment, file, len) = self.active(conn)?;
        let (segment, at) = (*segment, *len);
        let offset = at + tree.len() as u64;
        file.write_all_at(tree, at).map_err(io)?;
        file.write_all_at(bytes, offset).map_err(io)?;
        let written = (tree.len() + bytes.len()) as u64;
        *len += written;
        self.mark_dirty(segment, at..at + written);
        conn.prepare_cached("UPDATE segments SET written = written + ?2 WHERE id = ?1")?
            .execute(params![segment, written as i64])?;
        Ok((segment, offset))
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
        let (segment, offset) = self.append(conn, bytes, &tree::build(bytes))?;
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
            "UPDATE segments SET live = live + ?2 WHERE id = ?1",
            params![segment, live],
        )?;
        conn.execute(
            "UPDATE chunks SET segment = ?2, offset = ?3 WHERE id = ?1",
            params![&id[..], segment, offset as i64],
        )?;
        Ok(())
    }

    fn locate(&self, conn: &Connection, id: &ChunkId) -> Result<Option<Location>, StoreError> {
        Ok(conn
            .prepare_cached(
                "SELECT c.segment, c.offset, c.len, COALESCE(s.tree, 0) FROM chunks c \
                 LEFT JOIN segments s ON s.id = c.segment WHERE c.id = ?1",
            )?
            .query_row([&id[..]], |r| {
                Ok(Location::from_columns(
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                ))
            })
            .optional()?)
    }

    /// The whole chunk, verified against its id.
    pub fn get(&self, conn: &Connection, id: &ChunkId) -> Result<Vec<u8>, StoreError> {
        self.start_read(conn, id, ReadPattern::Streaming)?
            .verified()
    }

    /// Locates a chunk for reading (see [`ChunkRead`]) as part of a read
    /// of `pattern`.
    pub fn start_read(
        &self,
        conn: &Connection,
        id: &ChunkId,
        pattern: ReadPattern,
    ) -> Result<ChunkRead, StoreError> {
        let location = self
            .locate(conn, id)?
            .ok_or_else(|| StoreError::Corrupt(format!("chunk {} is missing", hex(id))))?;
        self.start_located_read(conn, id, location, pattern)
    }

    /// [`ContentStore::start_read`] of a chunk the caller located itself.
    pub(crate) fn start_located_read(
        &self,
        conn: &Connection,
        id: &ChunkId,
        location: Location,
        pattern: ReadPattern,
    ) -> Result<ChunkRead, StoreError> {
        if location.len > MAX_CHUNK as u64 {
            return Err(StoreError::Corrupt(format!(
                "chunk {} is listed as {} bytes",
                hex(id),
                location.len
            )));
        }
        let source = if location.segment == INLINE {
            let bytes = conn
                .prepare_cached("SELECT data FROM inline_chunks WHERE row = ?1")?
                .query_row([location.offset as i64], |r| r.get::<_, Vec<u8>>(0))
                .optional()?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("inline chunk {} has no data", hex(id)))
                })?;
            ChunkSource::Inline(bytes)
        } else {
            ChunkSource::Segment {
                file: self.reader(location.segment, pattern)?,
                offset: location.offset,
                len: location.len as usize,
                tree: location.tree,
                trees: self.trees.clone(),
            }
        };
        Ok(ChunkRead { id: *id, source })
    }

    /// An open handle on a segment file for reads of `pattern`, from the
    /// cache when it has one.
    fn reader(&self, segment: i64, pattern: ReadPattern) -> Result<Arc<File>, StoreError> {
        let mut readers = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = readers.get(&(segment, pattern)) {
            return Ok(file.clone());
        }
        if readers.len() >= MAX_OPEN_READERS {
            readers.clear();
        }
        let file = File::open(self.segment_path(segment)).map_err(io)?;
        if pattern == ReadPattern::Scattered {
            // Best effort: without the advice the read is still right, only
            // the kernel may read ahead bytes nobody asked for.
            let _ = posix_fadvise(&file, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM);
        }
        let file = Arc::new(file);
        readers.insert((segment, pattern), file.clone());
        Ok(file)
    }

    /// Adjusts reference counts (one per extent naming a chunk): one lookup
    /// per distinct chunk, then one update per segment whose live bytes
    /// changed (a chunk's bytes are live while anything references it). A
    /// chunk whose count falls to zero is forgotten at once; its bytes stay
    /// in its segment until compaction rewrites it.
    pub fn add_refs(
        &self,
        conn: &Connection,
        ids: &[ChunkId],
        delta: i64,
    ) -> Result<(), StoreError> {
        self.adjust_refs(conn, ids, delta, OnDamage::Refuse)
    }

    fn adjust_refs(
        &self,
        conn: &Connection,
        ids: &[ChunkId],
        delta: i64,
        on_damage: OnDamage,
    ) -> Result<(), StoreError> {
        let mut changes: BTreeMap<&ChunkId, i64> = BTreeMap::new();
        for id in ids {
            *changes.entry(id).or_default() += delta;
        }
        // A plain single-row UPDATE: with RETURNING, SQLite would keep a
        // statement journal (a copy of each page it touches) for every call.
        let mut find =
            conn.prepare_cached("SELECT refs, segment, offset, len FROM chunks WHERE id = ?1")?;
        let mut update = conn.prepare_cached("UPDATE chunks SET refs = ?2 WHERE id = ?1")?;
        let mut live: BTreeMap<i64, i64> = BTreeMap::new();
        let mut inline_freed = 0;
        for (id, change) in changes {
            let found: Option<(i64, i64, i64, i64)> = find
                .query_row([&id[..]], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?;
            let Some((before, segment, offset, len)) = found else {
                on_damage.meet(format!("chunk {} is missing", hex(id)))?;
                continue;
            };
            let mut after = before + change;
            if after < 0 {
                on_damage.meet(format!("chunk {} would have {after} references", hex(id)))?;
                after = 0;
            }
            if after == 0 && before > 0 {
                inline_freed += self.forget(conn, id, segment, offset, len)?;
            } else {
                update.execute(params![&id[..], after])?;
            }
            match (before > 0, after > 0) {
                (false, true) => *live.entry(segment).or_default() += len,
                (true, false) => *live.entry(segment).or_default() -= len,
                _ => {}
            }
        }
        let mut update_live =
            conn.prepare_cached("UPDATE segments SET live = live + ?2 WHERE id = ?1")?;
        for (segment, bytes) in live {
            if segment != INLINE && bytes != 0 {
                update_live.execute(params![segment, bytes])?;
            }
        }
        if inline_freed > 0 {
            conn.prepare_cached("UPDATE inline_usage SET bytes = bytes - ?1")?
                .execute([inline_freed])?;
        }
        Ok(())
    }

    /// Forgets one chunk nothing references any more: its row, and the
    /// bytes of an inline chunk; returns the inline bytes freed.
    fn forget(
        &self,
        conn: &Connection,
        id: &ChunkId,
        segment: i64,
        offset: i64,
        len: i64,
    ) -> Result<i64, StoreError> {
        conn.prepare_cached("DELETE FROM chunks WHERE id = ?1")?
            .execute([&id[..]])?;
        if segment != INLINE {
            return Ok(0);
        }
        conn.prepare_cached("DELETE FROM inline_chunks WHERE row = ?1")?
            .execute([offset])?;
        Ok(len)
    }

    /// Records that one reference to each of `ids` is gone. The counts
    /// fall later, when garbage collection applies the released references
    /// in batches sorted by chunk ([`ContentStore::apply_released`]), so a
    /// delete or overwrite touches no random page of the chunk index.
    /// Until then the chunks count as referenced: nothing a live extent
    /// points to can be forgotten early.
    pub fn release(&self, conn: &Connection, ids: &[ChunkId]) -> Result<(), StoreError> {
        let mut insert = conn.prepare_cached("INSERT INTO released (chunk) VALUES (?1)")?;
        for id in ids {
            insert.execute([&id[..]])?;
        }
        Ok(())
    }

    /// Subtracts the oldest released references, at most `limit` of them,
    /// from their chunks' counts; returns how many it applied.
    pub fn apply_released(&self, conn: &Connection, limit: usize) -> Result<usize, StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = conn
            .prepare_cached("SELECT row, chunk FROM released ORDER BY row LIMIT ?1")?
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(0);
        };
        let ids: Vec<ChunkId> = rows
            .iter()
            .filter_map(|(_, raw)| match chunk_id(raw) {
                Ok(id) => Some(id),
                Err(error) => {
                    tracing::warn!(%error, "a released reference names no chunk");
                    None
                }
            })
            .collect();
        // A damaged index must not wedge collection for good: the rest of
        // the batch is applied, and the damage reported.
        self.adjust_refs(conn, &ids, -1, OnDamage::Report)?;
        conn.prepare_cached("DELETE FROM released WHERE row <= ?1")?
            .execute([last])?;
        Ok(rows.len())
    }

    /// Forgets chunks nothing references (stored by a change whose
    /// references never came; their bytes stay in their segment until
    /// compaction rewrites it).
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

    fn mark_dirty(&mut self, segment: i64, written: Range<u64>) {
        let span = self.dirty.entry(segment).or_insert(written.clone());
        *span = span.start.min(written.start)..span.end.max(written.end);
    }

    /// The bytes appended since the last sync, per segment, with the
    /// segment's file, to sync without holding the store.
    pub fn take_dirty(&mut self) -> Vec<DirtySpan> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|(segment, bytes)| DirtySpan {
                segment,
                file: self.segment_path(segment),
                bytes,
            })
            .collect()
    }

    /// Marks spans dirty again (after a failed sync).
    pub fn restore_dirty(&mut self, spans: &[DirtySpan]) {
        for span in spans {
            self.mark_dirty(span.segment, span.bytes.clone());
        }
    }

    /// Segments worth rewriting: mostly dead bytes, the deadest first. The
    /// active segment is one of them once most of it is dead (a store
    /// whose files were all deleted gets its space back); it is sealed, so
    /// appends go to a new segment.
    fn compactable(&mut self, conn: &Connection) -> Result<Vec<i64>, StoreError> {
        let mut statement = conn.prepare_cached(
            "SELECT id FROM segments WHERE written > 0 \
             AND CAST(live AS REAL) < ?1 * written ORDER BY CAST(live AS REAL) / written, id",
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

    /// One step of compaction: forgets the chunks nothing references (so
    /// garbage made since the last step is never copied), then copies the
    /// live chunks of the segments most worth it to the active segment,
    /// about `budget` bytes at most, and repoints them. Returns the bytes
    /// moved and the segments left empty, whose files may be deleted once
    /// this is durable ([`ContentStore::remove_segment`]).
    pub fn compact_step(
        &mut self,
        conn: &Connection,
        budget: u64,
    ) -> Result<(u64, Vec<i64>), StoreError> {
        self.drop_unreferenced(conn)?;
        let (mut moved, mut emptied) = (0, Vec::new());
        for segment in self.compactable(conn)? {
            let (bytes, empty) = self.compact(conn, segment, budget - moved)?;
            moved += bytes;
            if empty {
                emptied.push(segment);
            }
            if moved >= budget {
                break;
            }
        }
        Ok((moved, emptied))
    }

    /// Moves chunks out of `segment` until at least `budget` bytes are
    /// moved or none is left; returns the bytes moved and whether the
    /// segment is now empty (and forgotten).
    fn compact(
        &mut self,
        conn: &Connection,
        segment: i64,
        budget: u64,
    ) -> Result<(u64, bool), StoreError> {
        let held: Vec<(Vec<u8>, i64)> = conn
            .prepare_cached("SELECT id, refs FROM chunks WHERE segment = ?1 AND segment <> 0")?
            .query_map([segment], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let (mut moved, mut live_moved, mut taken) = (0, 0, 0);
        let mut live_added: BTreeMap<i64, i64> = BTreeMap::new();
        for (raw, refs) in &held {
            if moved >= budget {
                break;
            }
            taken += 1;
            let id = chunk_id(raw)?;
            let bytes = self.get(conn, &id)?;
            let (target, offset) = self.append(conn, &bytes, &tree::build(&bytes))?;
            conn.prepare_cached("UPDATE chunks SET segment = ?2, offset = ?3 WHERE id = ?1")?
                .execute(params![&id[..], target, offset as i64])?;
            let live_bytes = if *refs > 0 { bytes.len() as i64 } else { 0 };
            *live_added.entry(target).or_default() += live_bytes;
            moved += bytes.len() as u64;
            live_moved += live_bytes;
        }
        let mut update_live =
            conn.prepare_cached("UPDATE segments SET live = live + ?2 WHERE id = ?1")?;
        for (target, bytes) in live_added {
            update_live.execute(params![target, bytes])?;
        }
        if taken == held.len() {
            conn.execute("DELETE FROM segments WHERE id = ?1", [segment])?;
            return Ok((moved, true));
        }
        update_live.execute(params![segment, -live_moved])?;
        Ok((moved, false))
    }

    /// Deletes a compacted segment's file.
    pub fn remove_segment(&self, segment: i64) -> Result<(), StoreError> {
        self.readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(held, _), _| *held != segment);
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

/// What a reference change does when the index does not hold up (a chunk
/// missing, or a count that would fall below zero).
#[derive(Clone, Copy)]
enum OnDamage {
    /// Fails the change.
    Refuse,
    /// Logs it and goes on (a missing chunk is skipped, a count stops at
    /// zero).
    Report,
}

impl OnDamage {
    fn meet(self, damage: String) -> Result<(), StoreError> {
        match self {
            OnDamage::Refuse => Err(StoreError::Corrupt(damage)),
            OnDamage::Report => {
                tracing::warn!(%damage, "applying released chunk references");
                Ok(())
            }
        }
    }
}

pub(crate) fn chunk_id(raw: &[u8]) -> Result<ChunkId, StoreError> {
    raw.try_into()
        .map_err(|_| StoreError::Corrupt("a chunk id is not 32 bytes".into()))
}

pub(crate) fn hex(id: &ChunkId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes appended to one segment since its last sync.
#[derive(Clone, Debug)]
pub struct DirtySpan {
    segment: i64,
    file: PathBuf,
    bytes: Range<u64>,
}

/// Makes the bytes of `spans` durable (a file compaction already removed
/// needs nothing), then lets the page cache drop them.
///
/// Written bytes are not kept cached, as a block store writing around the
/// cache would not: the writer holds its own copy, and a later read finds
/// them on disk. Kept, every byte written grows the page cache into free
/// memory, and where free memory is handed back to a hypervisor (a VM with
/// free page reporting, as here) each newly touched page costs a host
/// fault: about 4 s of CPU per GiB written, more than hashing and sending
/// it (bench/RESULTS.md, 2026-12-03). Dropped, the same pages come back
/// for the next writes.
pub fn sync_spans(spans: &[DirtySpan]) -> Result<(), StoreError> {
    for span in spans {
        match File::open(&span.file) {
            Ok(file) => {
                file.sync_data().map_err(io)?;
                // Best effort: if the advice fails the pages stay cached.
                let _ = posix_fadvise(
                    &file,
                    span.bytes.start as i64,
                    (span.bytes.end - span.bytes.start) as i64,
                    PosixFadviseAdvice::POSIX_FADV_DONTNEED,
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(seed: u8) -> Vec<u8> {
        (0..MAX_CHUNK)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    /// An empty index (in memory) and segment directory.
    fn empty_store() -> (tempfile::TempDir, Connection, ContentStore) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let content = ContentStore::open(dir.path()).unwrap();
        (dir, conn, content)
    }

    /// A segment chunk of `chunk(seed)` put into `content`, and its
    /// scattered read.
    fn put_for_scattered_read(
        conn: &Connection,
        content: &mut ContentStore,
        seed: u8,
    ) -> (ChunkId, ChunkRead) {
        let id = content.put(conn, &chunk(seed), Put::default()).unwrap().id;
        let read = content
            .start_read(conn, &id, ReadPattern::Scattered)
            .unwrap();
        (id, read)
    }

    #[test]
    fn scattered_and_streaming_reads_agree_and_a_removed_segment_drops_both_handles() {
        let (_dir, conn, mut content) = empty_store();
        let id = content.put(&conn, &chunk(4), Put::default()).unwrap().id;
        let piece = 8192..12288;
        for pattern in [ReadPattern::Scattered, ReadPattern::Streaming] {
            let read = content.start_read(&conn, &id, pattern).unwrap();
            assert_eq!(read.read(piece.clone()).unwrap(), chunk(4)[piece.clone()]);
        }
        let segment = content.locate(&conn, &id).unwrap().unwrap().segment;
        let open = |content: &ContentStore| content.readers.lock().unwrap().len();
        assert_eq!(open(&content), 2, "one handle per pattern");
        content.remove_segment(segment).unwrap();
        assert_eq!(open(&content), 0);
    }

    #[test]
    fn a_small_read_checks_the_stored_tree_once_and_a_whole_chunk_read_every_time() {
        let (dir, conn, mut content) = empty_store();
        let (id, read) = put_for_scattered_read(&conn, &mut content, 6);
        assert_eq!(read.read(8192..12288).unwrap(), chunk(6)[8192..12288]);
        assert_eq!(content.trees.len(), 1, "the checked tree is kept");
        // Damage the stored tree: small reads go on against the kept one,
        // which still checks every piece they return.
        let location = content.locate(&conn, &id).unwrap().unwrap();
        let tree_at = location.offset - tree::tree_len(MAX_CHUNK) as u64;
        let segment = OpenOptions::new()
            .write(true)
            .open(content.segment_path(location.segment))
            .unwrap();
        segment.write_all_at(&[0xee; 32], tree_at).unwrap();
        assert_eq!(read.read(40_000..44_000).unwrap(), chunk(6)[40_000..44_000]);
        // A whole-chunk read (scrub, recovery) checks the stored tree.
        assert!(matches!(
            read.read(0..MAX_CHUNK),
            Err(StoreError::Corrupt(_))
        ));
        // So does a small read of a store that kept no tree.
        let fresh = ContentStore::open(dir.path()).unwrap();
        assert!(scattered_read_is_corrupt(&fresh, &conn, &id, 8192..12288));
        // A damaged piece fails against the kept tree too.
        segment
            .write_all_at(&[0xee; 16], location.offset + 40_000)
            .unwrap();
        assert!(scattered_read_is_corrupt(
            &content,
            &conn,
            &id,
            40_000..44_000
        ));
    }

    /// Whether a scattered read of `range` of chunk `id` from `content`
    /// reports corruption.
    fn scattered_read_is_corrupt(
        content: &ContentStore,
        conn: &Connection,
        id: &ChunkId,
        range: Range<usize>,
    ) -> bool {
        let read = content
            .start_read(conn, id, ReadPattern::Scattered)
            .unwrap();
        matches!(read.read(range), Err(StoreError::Corrupt(_)))
    }

    /// Whether the filesystem holding `path` takes `RWF_NOWAIT` (tmpfs
    /// does not).
    fn reads_without_waiting(path: &Path) -> bool {
        let file = File::open(path).unwrap();
        let mut byte = [0u8];
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        let read = rustix::io::preadv2(&file, &mut [IoSliceMut::new(&mut byte)], 0, flags);
        !matches!(read, Err(error) if refuses_reads_without_waiting(error))
    }

    #[test]
    fn a_read_that_waits_for_nothing_gives_up_on_bytes_it_cannot_read_at_once() {
        let (_dir, conn, mut content) = empty_store();
        let (id, read) = put_for_scattered_read(&conn, &mut content, 5);
        let piece = 8192..12288;
        // A read that waits brings the pages in; one that does not then
        // finds them, verified.
        assert_eq!(read.read(piece.clone()).unwrap(), chunk(5)[piece.clone()]);
        let cached = read.read_if(piece.clone(), Wait::ForNothing).unwrap();
        let segment = content.locate(&conn, &id).unwrap().unwrap().segment;
        let path = content.segment_path(segment);
        if reads_without_waiting(&path) {
            assert_eq!(cached.as_deref(), Some(&chunk(5)[piece.clone()]));
        } else {
            eprintln!(
                "{}: no RWF_NOWAIT here, so no read is cached",
                path.display()
            );
            assert_eq!(cached, None);
        }
        // Bytes it cannot have at once (here: cut off the file) are not an
        // error to it; the read that waits reports them.
        let file = OpenOptions::new().write(true).open(&path);
        file.unwrap().set_len(1).unwrap();
        assert_eq!(read.read_if(piece.clone(), Wait::ForNothing).unwrap(), None);
        assert!(matches!(read.read(piece), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_sync_covers_the_bytes_appended_since_the_last_and_they_read_back_after_it() {
        let (_dir, conn, mut content) = empty_store();
        let first = content.put(&conn, &chunk(1), Put::default()).unwrap().id;
        let spans = content.take_dirty();
        assert_eq!(spans.len(), 1);
        let appended = spans[0].bytes.clone();
        assert_eq!(appended.start, 0);
        assert!(appended.end > MAX_CHUNK as u64, "the chunk and its tree");
        // A failed sync gives its spans back; the next append widens them.
        content.restore_dirty(&spans);
        let second = content.put(&conn, &chunk(2), Put::default()).unwrap().id;
        let spans = content.take_dirty();
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].bytes, 0..2 * appended.end);
        sync_spans(&spans).unwrap();
        assert!(content.take_dirty().is_empty());
        assert_eq!(content.get(&conn, &first).unwrap(), chunk(1));
        assert_eq!(content.get(&conn, &second).unwrap(), chunk(2));
        content.put(&conn, &chunk(3), Put::default()).unwrap();
        assert_eq!(
            content.take_dirty()[0].bytes,
            2 * appended.end..3 * appended.end
        );
    }

    #[test]
    fn a_chunk_stored_held_has_its_reference_and_its_live_bytes_at_once() {
        let (_dir, conn, mut content) = empty_store();
        let held = Put {
            held: true,
            ..Put::default()
        };
        let Stored { id, new } = content.put(&conn, &chunk(5), held).unwrap();
        assert!(new);
        let again = content.put(&conn, &chunk(5), held).unwrap();
        assert_eq!(again, Stored { id, new: false }, "stored once");
        let refs: i64 = conn
            .query_row("SELECT refs FROM chunks WHERE id = ?1", [&id[..]], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(refs, 1, "the second store added nothing by itself");
        let live: i64 = conn
            .query_row("SELECT SUM(live) FROM segments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(live, MAX_CHUNK as i64);
        assert_eq!(content.drop_unreferenced(&conn).unwrap(), 0);

        content.release(&conn, &[id]).unwrap();
        assert_eq!(content.apply_released(&conn, 10).unwrap(), 1);
        assert!(content.get(&conn, &id).is_err(), "its one reference went");
        let live: i64 = conn
            .query_row("SELECT SUM(live) FROM segments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(live, 0);
    }

    #[test]
    fn compaction_forgets_chunks_nothing_references_instead_of_copying_them() {
        let (_dir, conn, mut content) = empty_store();
        let [dead, live, garbage] =
            [1, 2, 3].map(|seed| content.put(&conn, &chunk(seed), Put::default()).unwrap().id);
        content.add_refs(&conn, &[dead, live], 1).unwrap();
        content.add_refs(&conn, &[dead], -1).unwrap();
        // `garbage` was never referenced, like a chunk left by a delete
        // between two steps: it must not be copied, or the copy would make
        // a new mostly dead segment, and so on without end.
        let (moved, emptied) = content.compact_step(&conn, u64::MAX).unwrap();
        assert_eq!(moved, MAX_CHUNK as u64, "only the live chunk is copied");
        assert_eq!(emptied.len(), 1);
        assert_eq!(content.get(&conn, &live).unwrap(), chunk(2));
        assert!(content.get(&conn, &garbage).is_err());
        assert_eq!(content.compact_step(&conn, u64::MAX).unwrap(), (0, vec![]));
    }

    #[test]
    fn a_released_reference_holds_its_chunk_until_applied_and_the_last_one_forgets_it() {
        let (_dir, conn, mut content) = empty_store();
        let small = vec![7u8; 4096];
        let [shared, inline] = [
            content.put(&conn, &chunk(1), Put::default()).unwrap().id,
            content
                .put(
                    &conn,
                    &small,
                    Put {
                        inline: true,
                        ..Put::default()
                    },
                )
                .unwrap()
                .id,
        ];
        content
            .add_refs(&conn, &[shared, shared, inline], 1)
            .unwrap();
        let inline_before = inline_bytes(&conn).unwrap();
        content.release(&conn, &[shared, inline]).unwrap();
        content.drop_unreferenced(&conn).unwrap();
        assert_eq!(
            content.get(&conn, &inline).unwrap(),
            small,
            "still counted until applied"
        );

        assert_eq!(
            content.apply_released(&conn, 1).unwrap(),
            1,
            "at most the limit"
        );
        assert_eq!(
            content.get(&conn, &shared).unwrap(),
            chunk(1),
            "one reference is left"
        );
        assert_eq!(content.apply_released(&conn, 10).unwrap(), 1);
        assert!(
            content.get(&conn, &inline).is_err(),
            "its last reference went"
        );
        assert_eq!(
            inline_bytes(&conn).unwrap(),
            inline_before - small.len() as u64
        );
        assert_eq!(content.apply_released(&conn, 10).unwrap(), 0);

        content.release(&conn, &[shared]).unwrap();
        content.apply_released(&conn, 10).unwrap();
        assert!(content.get(&conn, &shared).is_err());
        let live: i64 = conn
            .query_row("SELECT SUM(live) FROM segments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(live, 0, "no live bytes are left in the segment");

        // A release of a chunk the index lost does not stop collection.
        content.release(&conn, &[shared]).unwrap();
        assert_eq!(content.apply_released(&conn, 10).unwrap(), 1);
        assert_eq!(content.apply_released(&conn, 10).unwrap(), 0);
    }
}
