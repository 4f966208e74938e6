//! A SQLite VFS that gathers the write-ahead log's writes into one
//! `pwrite` per commit. SQLite writes each log frame as two writes (its
//! 24-byte header, then the page), so a commit of ten pages costs twenty
//! system calls; on a 4 KiB write through the mount they were a sixth of
//! the process's CPU.
//!
//! The VFS wraps the default one. For a log file (`SQLITE_OPEN_WAL`) it
//! holds writes that continue one another in a buffer and writes them out
//! when the frame that ends a commit is in, when the buffer passes
//! [`GATHER_MAX`], and before anything else touches the file (a read, a
//! size, a truncate, a sync, a file control, a close), so SQLite never
//! sees the file without its own writes. Every other file, and every
//! other call, passes straight to the default VFS.
//!
//! The store syncs the log itself after a commit (`synchronous = OFF`), so
//! a commit's frames must be in the file by the time its COMMIT returns:
//! they are, because its last frame ends the commit.
//!
//! This module is the crate's only `unsafe` code: SQLite calls it through
//! C function pointers, with the file memory it allocated.

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the store opens its database with.
pub const VFS_NAME: &CStr = c"aspen-gathered-log";
/// The bytes of log writes held before they are written out regardless.
pub const GATHER_MAX: usize = 64 * 1024;
/// The most the default VFS writes in one call: it keeps only the low 17
/// bits of a write's length.
const WRITE_MAX: usize = 64 * 1024;
/// The log file's header, before its first frame.
const LOG_HEADER: i64 = 32;
/// A frame header: page number, then (for the frame that ends a commit)
/// the database's size in pages, nonzero.
const FRAME_HEADER: usize = 24;

/// The default VFS this one wraps, found when this one is registered.
static BASE: OnceLock<usize> = OnceLock::new();

/// Registers the VFS (once per process); the SQLite result code.
pub fn register() -> c_int {
    static REGISTERED: OnceLock<c_int> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find with null returns the default VFS,
        // which SQLite keeps for the life of the process; the VFS
        // registered is leaked, so it lives as long.
        unsafe {
            let base = ffi::sqlite3_vfs_find(std::ptr::null());
            if base.is_null() {
                return ffi::SQLITE_ERROR;
            }
            let _ = BASE.set(base as usize);
            let mut vfs = *base;
            vfs.zName = VFS_NAME.as_ptr();
            vfs.szOsFile = std::mem::size_of::<GatherFile>() as c_int + (*base).szOsFile;
            vfs.xOpen = Some(open);
            vfs.pNext = std::ptr::null_mut();
            ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0)
        }
    })
}

/// The file SQLite allocates `szOsFile` bytes for: this header, then the
/// default VFS's own file.
#[repr(C)]
struct GatherFile {
    header: ffi::sqlite3_file,
    real: *mut ffi::sqlite3_file,
    /// Whether this is a log file (gathered) or passed through.
    gather: bool,
    pending: Vec<u8>,
    /// Where `pending` goes in the file.
    pending_at: i64,
    /// The last write was the header of a frame that ends a commit.
    commit_page_next: bool,
}

impl GatherFile {
    unsafe fn methods(&self) -> &ffi::sqlite3_io_methods {
        // SAFETY: `real` was opened by the default VFS, which set its
        // methods (open fails otherwise, and then none are called).
        unsafe { &*(*self.real).pMethods }
    }

    /// Writes out the held bytes; the SQLite result code.
    unsafe fn flush(&mut self) -> c_int {
        if self.pending.is_empty() {
            return ffi::SQLITE_OK;
        }
        let Some(write) = (unsafe { self.methods() }).xWrite else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let mut rc = ffi::SQLITE_OK;
        let mut at = self.pending_at;
        for piece in self.pending.chunks(WRITE_MAX) {
            // SAFETY: the piece is live and its length fits a c_int.
            rc = unsafe { write(self.real, piece.as_ptr().cast(), piece.len() as c_int, at) };
            if rc != ffi::SQLITE_OK {
                break;
            }
            at += piece.len() as i64;
        }
        self.pending.clear();
        rc
    }

    unsafe fn write(&mut self, bytes: &[u8], at: i64) -> c_int {
        let continues = at == self.pending_at + self.pending.len() as i64;
        if !continues {
            let rc = unsafe { self.flush() };
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            self.pending_at = at;
        }
        self.pending.extend_from_slice(bytes);
        let ends_commit = std::mem::replace(&mut self.commit_page_next, ends_commit(bytes, at));
        if ends_commit || self.pending.len() >= GATHER_MAX {
            return unsafe { self.flush() };
        }
        ffi::SQLITE_OK
    }
}

/// Whether a write of `bytes` at `at` is the header of a frame that ends a
/// commit (its page is the commit's last write).
fn ends_commit(bytes: &[u8], at: i64) -> bool {
    bytes.len() == FRAME_HEADER && at >= LOG_HEADER && bytes[4..8] != [0; 4]
}

/// The gather file behind SQLite's file pointer.
///
/// # Safety
/// `file` must have been opened by [`open`] and not yet closed.
unsafe fn gather<'a>(file: *mut ffi::sqlite3_file) -> &'a mut GatherFile {
    unsafe { &mut *(file as *mut GatherFile) }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(&base) = BASE.get() else {
        return ffi::SQLITE_ERROR;
    };
    let base = base as *mut ffi::sqlite3_vfs;
    // SAFETY: SQLite gave `file` szOsFile bytes, aligned for any type:
    // the default VFS's file follows this header, which is a multiple of
    // 8 bytes long.
    unsafe {
        let real =
            (file as *mut u8).add(std::mem::size_of::<GatherFile>()) as *mut ffi::sqlite3_file;
        let Some(base_open) = (*base).xOpen else {
            (*file).pMethods = std::ptr::null();
            return ffi::SQLITE_ERROR;
        };
        let rc = base_open(base, name, real, flags, out_flags);
        if rc != ffi::SQLITE_OK || (*real).pMethods.is_null() {
            (*file).pMethods = std::ptr::null();
            return if rc == ffi::SQLITE_OK {
                ffi::SQLITE_CANTOPEN
            } else {
                rc
            };
        }
        std::ptr::write(
            file as *mut GatherFile,
            GatherFile {
                header: ffi::sqlite3_file { pMethods: &METHODS },
                real,
                gather: flags & ffi::SQLITE_OPEN_WAL != 0,
                pending: Vec::new(),
                pending_at: 0,
                commit_page_next: false,
            },
        );
        ffi::SQLITE_OK
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// Runs the default VFS's method `$method` with `$args`; `$missing` if it
/// has none.
macro_rules! passed {
    ($file:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        let gathered = unsafe { gather($file) };
        match unsafe { gathered.methods() }.$method {
            Some(method) => unsafe { method(gathered.real $(, $arg)*) },
            None => $missing,
        }
    }};
}

/// [`passed!`] once what the file holds is written out; the SQLite result
/// code of that write if it fails.
macro_rules! flushed_then {
    ($file:expr, $method:ident, $missing:expr $(, $arg:expr)*) => {{
        let rc = unsafe { gather($file).flush() };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        passed!($file, $method, $missing $(, $arg)*)
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let gathered = unsafe { gather(file) };
    let flushed = unsafe { gathered.flush() };
    let closed = match unsafe { gathered.methods() }.xClose {
        Some(close) => unsafe { close(gathered.real) },
        None => ffi::SQLITE_OK,
    };
    // SAFETY: SQLite calls no method of a closed file; the buffer is
    // dropped once, here.
    unsafe { std::ptr::drop_in_place(&mut gathered.pending) };
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    at: ffi::sqlite3_int64,
) -> c_int {
    flushed_then!(file, xRead, ffi::SQLITE_IOERR_READ, buf, amount, at)
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    at: ffi::sqlite3_int64,
) -> c_int {
    let gathered = unsafe { gather(file) };
    if !gathered.gather || amount < 0 {
        return passed!(file, xWrite, ffi::SQLITE_IOERR_WRITE, buf, amount, at);
    }
    // SAFETY: SQLite passes `amount` readable bytes at `buf`.
    let bytes = unsafe { std::slice::from_raw_parts(buf as *const u8, amount as usize) };
    unsafe { gathered.write(bytes, at) }
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    flushed_then!(file, xTruncate, ffi::SQLITE_IOERR_TRUNCATE, size)
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed_then!(file, xSync, ffi::SQLITE_IOERR_FSYNC, flags)
}

unsafe extern "C" fn file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    flushed_then!(file, xFileSize, ffi::SQLITE_IOERR_FSTAT, size)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    passed!(file, xLock, ffi::SQLITE_OK, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    passed!(file, xUnlock, ffi::SQLITE_OK, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    passed!(file, xCheckReservedLock, ffi::SQLITE_OK, out)
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    flushed_then!(file, xFileControl, ffi::SQLITE_NOTFOUND, op, arg)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    passed!(file, xSectorSize, 4096)
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    passed!(file, xDeviceCharacteristics, 0)
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    passed!(
        file,
        xShmMap,
        ffi::SQLITE_IOERR_SHMMAP,
        region,
        size,
        extend,
        out
    )
}

unsafe extern "C" fn shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    passed!(file, xShmLock, ffi::SQLITE_IOERR_SHMLOCK, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    passed!(file, xShmBarrier, ())
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    passed!(file, xShmUnmap, ffi::SQLITE_OK, delete)
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    at: ffi::sqlite3_int64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // Without a memory map SQLite reads the page instead.
    let unmapped = || {
        unsafe { *out = std::ptr::null_mut() };
        ffi::SQLITE_OK
    };
    flushed_then!(file, xFetch, unmapped(), at, amount, out)
}

unsafe extern "C" fn unfetch(
    file: *mut ffi::sqlite3_file,
    at: ffi::sqlite3_int64,
    page: *mut c_void,
) -> c_int {
    passed!(file, xUnfetch, ffi::SQLITE_OK, at, page)
}

/// The name to open a connection with, registering the VFS first.
pub fn vfs_name() -> Result<&'static CStr, rusqlite::Error> {
    match register() {
        ffi::SQLITE_OK => Ok(VFS_NAME),
        code => Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(code),
            Some("registering the gathered-log VFS".into()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_frame_header_with_a_database_size_ends_a_commit() {
        let mut header = [0u8; FRAME_HEADER];
        header[3] = 7;
        assert!(!ends_commit(&header, LOG_HEADER), "a frame inside a commit");
        header[7] = 12;
        assert!(ends_commit(&header, LOG_HEADER));
        assert!(!ends_commit(&header, 0), "the log's own header");
        assert!(!ends_commit(&[1; 4096], LOG_HEADER + 24), "a page");
    }

    /// A second connection, through the default VFS, reads the log file
    /// itself: what it sees is what is in the file. At `synchronous = OFF`,
    /// as the store runs, SQLite never syncs the log to push it out.
    #[test]
    fn every_commit_is_in_the_log_file_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = rusqlite::Connection::open_with_flags_and_vfs(
            &path,
            rusqlite::OpenFlags::default(),
            vfs_name().unwrap(),
        )
        .unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);",
            )
            .unwrap();
        let reader = rusqlite::Connection::open(&path).unwrap();
        let count = || -> (i64, i64) {
            reader
                .query_row(
                    "SELECT count(*), coalesce(sum(length(v)), 0) FROM t",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap()
        };
        let insert = "INSERT INTO t (v) VALUES (zeroblob(?1))";
        writer.execute(insert, [100]).unwrap();
        assert_eq!(count(), (1, 100), "one small commit");
        // One commit far over GATHER_MAX and over the default VFS's
        // largest write.
        writer.execute_batch("BEGIN").unwrap();
        for _ in 0..100 {
            writer.execute(insert, [3000]).unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
        assert_eq!(count(), (101, 100 + 300_000));
        writer.execute(insert, [1]).unwrap();
        assert_eq!(count(), (102, 300_101), "a commit after the large one");

        drop(writer);
        drop(reader);
        let reopened = rusqlite::Connection::open_with_flags_and_vfs(
            &path,
            rusqlite::OpenFlags::default(),
            vfs_name().unwrap(),
        )
        .unwrap();
        let rows: i64 = reopened
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 102, "reopened");
    }
}
