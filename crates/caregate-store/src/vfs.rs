//! The VFS of the connections that write: SQLite's own `unix` VFS, with two of its file
//! writes done differently.
//!
//! **WAL frames, a transaction at a time.** SQLite appends a frame to the WAL as two
//! `pwrite`s, its 24-byte header and then the page, at offsets that never line up with the
//! kernel's pages (the WAL starts with a 32-byte header and each frame is 4,120 bytes).
//! Every such write pays for a system call and for preparing each page-cache page it
//! touches partly. An import writes about two frames per resource, and these writes were
//! 8 % of the server's CPU. The same pattern replayed in C on this machine (40,000 frames,
//! an fsync every 400) cost 5.9–6.2 µs of CPU per frame written as SQLite writes them,
//! 1.9–2.1 µs written as below. So a WAL's consecutive writes are kept in a buffer and
//! handed to the `unix` VFS together (in writes of up to [`MAX_WRITE`] bytes, the most it
//! takes at once):
//! - when the transaction's commit frame has been added (its header, written on its own,
//!   carries the database size), so a commit is in the file before SQLite publishes it to
//!   readers in the WAL index, with or without an fsync;
//! - before anything that must see the file as written: a read, a sync, a size, a
//!   truncation, a file control, closing; and before a write elsewhere than straight after
//!   the buffer;
//! - when the buffer reaches [`FLUSH_AT`] bytes.
//!
//! Errors of a gathered write are returned by the call that flushed it; a commit frame's
//! is the commit's.
//!
//! **Growing the database file without writing it.** The database grows in 32 MiB chunks
//! (`SQLITE_FCNTL_CHUNK_SIZE`, see `grow_in_chunks`). Before a checkpoint copies pages past
//! its end, SQLite hints the size it needs, and the `unix` VFS, built without
//! `posix_fallocate`, then writes one byte into every 4 KiB block of the new chunk: 8,192
//! one-byte writes per chunk, half of the checkpointer's time in an import. Here the hint
//! extends the file with `ftruncate` (through the `unix` VFS's own truncate, which rounds
//! up to the chunk) first, so there is nothing left for it to write. The chunk's blocks
//! are allocated as pages are copied into them.
//!
//! Everything else, and every other file (the shared-memory index, temporary files), goes
//! to the `unix` VFS unchanged. The writer's and the checkpointer's connections use this
//! VFS; readers use the default one.

use std::ffi::{c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name connections open the VFS by.
pub(crate) const VFS_NAME: &str = "caregate-writer";
const VFS_NAME_C: &CStr = c"caregate-writer";

/// Gathered bytes that are written out even without a reason to.
const FLUSH_AT: usize = 1 << 20;
/// The most the unix VFS writes in one call: it masks a write's length to 17 bits.
const MAX_WRITE: usize = 0x1f000;

/// A WAL frame header's size; the only 24-byte writes to a WAL.
const FRAME_HEADER: c_int = 24;
/// The WAL file header's size: frames start after it.
const WAL_HEADER: i64 = 32;

/// Registers the VFS once; whether it is available. It is not on platforms without
/// SQLite's `unix` VFS: connections then use the default one.
pub(crate) fn register() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find and sqlite3_vfs_register are thread-safe. The new VFS
        // is leaked: SQLite keeps a pointer to it for the life of the process.
        unsafe {
            let unix = ffi::sqlite3_vfs_find(c"unix".as_ptr());
            if unix.is_null() {
                return false;
            }
            let size = std::mem::size_of::<GatheringFile>() as c_int;
            let vfs = Box::leak(Box::new(ffi::sqlite3_vfs {
                iVersion: 2,
                szOsFile: size + (*unix).szOsFile,
                mxPathname: (*unix).mxPathname,
                pNext: ptr::null_mut(),
                zName: VFS_NAME_C.as_ptr(),
                pAppData: unix.cast(),
                xOpen: Some(open),
                // The unix VFS's own functions ignore the VFS they are called through
                // (only its xOpen reads it, and that one is called with the unix VFS).
                xDelete: (*unix).xDelete,
                xAccess: (*unix).xAccess,
                xFullPathname: (*unix).xFullPathname,
                xDlOpen: (*unix).xDlOpen,
                xDlError: (*unix).xDlError,
                xDlSym: (*unix).xDlSym,
                xDlClose: (*unix).xDlClose,
                xRandomness: (*unix).xRandomness,
                xSleep: (*unix).xSleep,
                xCurrentTime: (*unix).xCurrentTime,
                xGetLastError: (*unix).xGetLastError,
                xCurrentTimeInt64: (*unix).xCurrentTimeInt64,
                xSetSystemCall: None,
                xGetSystemCall: None,
                xNextSystemCall: None,
            }));
            ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
        }
    })
}

/// The file SQLite sees; the unix VFS's file follows it in the same allocation.
#[repr(C)]
struct GatheringFile {
    base: ffi::sqlite3_file,
    inner: *mut ffi::sqlite3_file,
    /// Whether this is a WAL; only WAL writes are gathered.
    wal: bool,
    /// Whether this is a main database file; only its size hints extend it.
    main_db: bool,
    /// The gathered bytes, which belong at `start` in the file.
    pending: Vec<u8>,
    start: i64,
    /// The commit frame's header was the last write: its page completes the commit.
    commit_page_next: bool,
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

unsafe extern "C" fn open(
    vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands us `szOsFile` bytes at `file`, aligned for any file object:
    // ours first, the unix VFS's right after (our size is a multiple of 8).
    unsafe {
        let unix: *mut ffi::sqlite3_vfs = (*vfs).pAppData.cast();
        let inner: *mut ffi::sqlite3_file = file
            .cast::<u8>()
            .add(std::mem::size_of::<GatheringFile>())
            .cast();
        (*inner).pMethods = ptr::null();
        let Some(unix_open) = (*unix).xOpen else {
            (*file).pMethods = ptr::null();
            return ffi::SQLITE_ERROR;
        };
        let rc = unix_open(unix, name, inner, flags, out_flags);
        if rc != ffi::SQLITE_OK {
            // A file the unix VFS opened despite failing must still be closed.
            if let Some(close) = (*inner).pMethods.as_ref().and_then(|m| m.xClose) {
                close(inner);
            }
            (*file).pMethods = ptr::null();
            return rc;
        }
        ptr::write(
            file.cast::<GatheringFile>(),
            GatheringFile {
                base: ffi::sqlite3_file { pMethods: &METHODS },
                inner,
                wal: flags & ffi::SQLITE_OPEN_WAL != 0,
                main_db: flags & ffi::SQLITE_OPEN_MAIN_DB != 0,
                pending: Vec::new(),
                start: 0,
                commit_page_next: false,
            },
        );
        ffi::SQLITE_OK
    }
}

/// Our file behind SQLite's pointer, and the unix VFS's methods for its inner file.
///
/// SAFETY: `file` must be a file [`open`] opened and not yet closed.
unsafe fn parts<'f>(
    file: *mut ffi::sqlite3_file,
) -> (&'f mut GatheringFile, &'static ffi::sqlite3_io_methods) {
    // SAFETY: as the caller promises; the unix VFS's method table is static.
    unsafe {
        let f = &mut *file.cast::<GatheringFile>();
        let methods = &*(*f.inner).pMethods;
        (f, methods)
    }
}

/// Writes out the gathered bytes.
fn flush(f: &mut GatheringFile, methods: &ffi::sqlite3_io_methods) -> c_int {
    if f.pending.is_empty() {
        return ffi::SQLITE_OK;
    }
    let mut rc = ffi::SQLITE_OK;
    let mut at = f.start;
    for chunk in f.pending.chunks(MAX_WRITE) {
        rc = match methods.xWrite {
            // SAFETY: `inner` is open; the chunk outlives the call and is shorter than
            // MAX_WRITE, so its length fits a c_int.
            Some(write) => unsafe {
                write(f.inner, chunk.as_ptr().cast(), chunk.len() as c_int, at)
            },
            None => ffi::SQLITE_IOERR_WRITE,
        };
        if rc != ffi::SQLITE_OK {
            break;
        }
        at += chunk.len() as i64;
    }
    // Dropped either way: after a failed write SQLite abandons the transaction, and its
    // frames past the last commit are never read.
    f.pending.clear();
    f.commit_page_next = false;
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    // SAFETY: SQLite calls this on a file `open` opened, with `amount` readable bytes.
    unsafe {
        let (f, methods) = parts(file);
        if !f.wal {
            return match methods.xWrite {
                Some(write) => write(f.inner, data, amount, offset),
                None => ffi::SQLITE_IOERR_WRITE,
            };
        }
        let Ok(len) = usize::try_from(amount) else {
            return ffi::SQLITE_IOERR_WRITE;
        };
        let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
        let follows = offset == f.start + f.pending.len() as i64;
        if !f.pending.is_empty() && (!follows || f.pending.len() + len > FLUSH_AT) {
            let rc = flush(f, methods);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        if f.pending.is_empty() {
            f.start = offset;
        }
        f.pending.extend_from_slice(bytes);
        if std::mem::take(&mut f.commit_page_next) || f.pending.len() >= FLUSH_AT {
            return flush(f, methods);
        }
        // A frame header's second word is the database size after a commit, and zero in
        // every other frame.
        if amount == FRAME_HEADER && offset >= WAL_HEADER && bytes[4..8] != [0; 4] {
            f.commit_page_next = true;
        }
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes each file once; ours is dropped in place after.
    unsafe {
        let (f, methods) = parts(file);
        let flushed = flush(f, methods);
        let closed = match methods.xClose {
            Some(close) => close(f.inner),
            None => ffi::SQLITE_OK,
        };
        ptr::drop_in_place(file.cast::<GatheringFile>());
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

unsafe extern "C" fn file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: as for `write`; for SQLITE_FCNTL_SIZE_HINT, `arg` points to an i64.
    unsafe {
        let (f, methods) = parts(file);
        // A size hint may extend the file by writing to it, which must not come before the
        // bytes that belong there.
        let rc = flush(f, methods);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if op == ffi::SQLITE_FCNTL_SIZE_HINT && f.main_db && !arg.is_null() {
            let rc = extend(f, methods, *arg.cast::<i64>());
            if rc != ffi::SQLITE_OK {
                return rc;
            }
        }
        match methods.xFileControl {
            Some(file_control) => file_control(f.inner, op, arg),
            None => ffi::SQLITE_NOTFOUND,
        }
    }
}

/// Makes the file at least `size` bytes long with the unix VFS's truncate (which rounds up
/// to the chunk size), so its size hint finds nothing to write.
fn extend(f: &mut GatheringFile, methods: &ffi::sqlite3_io_methods, size: i64) -> c_int {
    let (Some(file_size), Some(truncate)) = (methods.xFileSize, methods.xTruncate) else {
        return ffi::SQLITE_OK;
    };
    let mut current = 0i64;
    // SAFETY: `inner` is open; `current` outlives the call.
    let rc = unsafe { file_size(f.inner, &mut current) };
    if rc != ffi::SQLITE_OK || current >= size {
        return rc;
    }
    // SAFETY: as above.
    unsafe { truncate(f.inner, size) }
}

/// Methods that pass through to the unix VFS's file: `flush` ones after writing out what
/// is gathered (they read, sync, size or resize the file), `plain` ones as they are.
macro_rules! forward {
    (@before flush $f:ident $methods:ident) => {
        let rc = flush($f, $methods);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    };
    (@before plain $f:ident $methods:ident) => {};
    ($( $mode:ident $name:ident => $method:ident ( $( $arg:ident : $ty:ty ),* ) -> $ret:ty, $missing:expr; )*) => {
        $(
            unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
                // SAFETY: SQLite calls this on a file `open` opened; the arguments are
                // passed on as SQLite gave them.
                unsafe {
                    let (f, methods) = parts(file);
                    forward!(@before $mode f methods);
                    match methods.$method {
                        Some(method) => method(f.inner $(, $arg)*),
                        None => $missing,
                    }
                }
            }
        )*
    };
}

forward! {
    flush read => xRead(buf: *mut c_void, amount: c_int, offset: i64) -> c_int, ffi::SQLITE_IOERR_READ;
    flush truncate => xTruncate(size: i64) -> c_int, ffi::SQLITE_IOERR_TRUNCATE;
    flush sync => xSync(flags: c_int) -> c_int, ffi::SQLITE_IOERR_FSYNC;
    flush file_size => xFileSize(size: *mut i64) -> c_int, ffi::SQLITE_IOERR_FSTAT;
    plain lock => xLock(level: c_int) -> c_int, ffi::SQLITE_IOERR_LOCK;
    plain unlock => xUnlock(level: c_int) -> c_int, ffi::SQLITE_IOERR_UNLOCK;
    plain check_reserved_lock => xCheckReservedLock(out: *mut c_int) -> c_int, ffi::SQLITE_IOERR_CHECKRESERVEDLOCK;
    plain sector_size => xSectorSize() -> c_int, 4096;
    plain device_characteristics => xDeviceCharacteristics() -> c_int, 0;
    plain shm_map => xShmMap(page: c_int, page_size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, ffi::SQLITE_IOERR_SHMMAP;
    plain shm_lock => xShmLock(offset: c_int, n: c_int, flags: c_int) -> c_int, ffi::SQLITE_IOERR_SHMLOCK;
    plain shm_unmap => xShmUnmap(delete: c_int) -> c_int, ffi::SQLITE_OK;
    plain unfetch => xUnfetch(offset: i64, page: *mut c_void) -> c_int, ffi::SQLITE_OK;
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: as for `write`.
    unsafe {
        let (f, methods) = parts(file);
        if let Some(barrier) = methods.xShmBarrier {
            barrier(f.inner);
        }
    }
}

unsafe extern "C" fn fetch(
    file: *mut ffi::sqlite3_file,
    offset: i64,
    amount: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: as for `write`; without a mapping SQLite reads the page instead.
    unsafe {
        let (f, methods) = parts(file);
        match methods.xFetch {
            Some(fetch) if methods.iVersion >= 3 => fetch(f.inner, offset, amount, out),
            _ => {
                *out = ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn writer(path: &std::path::Path) -> Connection {
        assert!(register(), "the unix VFS exists on this platform");
        let c = Connection::open_with_flags_and_vfs(path, OpenFlags::default(), VFS_NAME)
            .expect("open through the gathering VFS");
        c.pragma_update(None, "journal_mode", "WAL").expect("wal");
        c
    }

    #[test]
    fn commits_are_readable_by_other_connections_at_once_with_or_without_fsync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.sqlite");
        let w = writer(&path);
        w.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
            .expect("schema");
        let r = Connection::open(&path).expect("reader");
        for (i, mode) in ["FULL", "NORMAL", "OFF"].iter().enumerate() {
            w.pragma_update(None, "synchronous", mode).expect("mode");
            // Several pages per commit: many frames gathered into one write.
            w.execute(
                "INSERT INTO t (k, v) VALUES (?1, randomblob(30000))",
                [i as i64],
            )
            .expect("insert");
            let (n, bytes): (i64, i64) = r
                .query_row("SELECT count(*), sum(length(v)) FROM t", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .expect("read");
            assert_eq!(
                (n, bytes),
                (i as i64 + 1, 30_000 * (i as i64 + 1)),
                "{mode}"
            );
        }
        r.query_row("PRAGMA integrity_check", [], |row| row.get::<_, String>(0))
            .map(|s| assert_eq!(s, "ok"))
            .expect("integrity");
    }

    #[test]
    fn a_transaction_larger_than_the_buffer_and_a_restarted_wal_stay_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("big.sqlite");
        let w = writer(&path);
        w.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 3000)
             INSERT INTO t (v) SELECT randomblob(1000) FROM s;",
        )
        .expect("3 MB in one transaction");
        // Copy everything into the database file; the next write starts the WAL over.
        let r = Connection::open(&path).expect("reader");
        r.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
            .expect("checkpoint");
        w.execute("DELETE FROM t WHERE k % 2 = 0", [])
            .expect("after restart");
        drop(w);
        let n: i64 = r
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(n, 1500);
        let check: String = r
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity");
        assert_eq!(check, "ok");
    }

    #[test]
    fn a_reopened_database_recovers_every_commit_from_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("r.sqlite");
        let w = writer(&path);
        // Keep the WAL as a crash would (no checkpoint), then recover it. Without an
        // fsync, nothing but the commit itself puts its frames in the file.
        w.execute_batch(
            "PRAGMA wal_autocheckpoint = 0; PRAGMA synchronous = NORMAL;
             CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)",
        )
        .expect("schema");
        for i in 0..50 {
            w.execute("INSERT INTO t (k, v) VALUES (?1, randomblob(5000))", [i])
                .expect("insert");
        }
        let wal = path.with_file_name("r.sqlite-wal");
        let copy = dir.path().join("copy.sqlite");
        std::fs::copy(&path, &copy).expect("copy database");
        std::fs::copy(&wal, dir.path().join("copy.sqlite-wal")).expect("copy wal");
        let c = Connection::open(&copy).expect("open the copy");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(n, 50);
    }

    #[test]
    fn a_checkpoint_grows_the_database_by_a_chunk_without_writing_the_chunk() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.sqlite");
        let w = writer(&path);
        let chunk: c_int = 8 << 20;
        let mut arg = chunk;
        // SAFETY: an open connection's handle; the file control reads one int.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                w.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_CHUNK_SIZE,
                (&mut arg as *mut c_int).cast(),
            )
        };
        assert_eq!(rc, ffi::SQLITE_OK);
        w.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB);
             WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 100)
             INSERT INTO t (v) SELECT randomblob(1000) FROM s;
             PRAGMA wal_checkpoint(PASSIVE);",
        )
        .expect("write and checkpoint");
        let meta = std::fs::metadata(&path).expect("database file");
        assert_eq!(meta.len(), u64::try_from(chunk).expect("positive"));
        // The unix VFS alone writes a byte into every block of the chunk. Judged only where
        // the file system keeps a file extended by `ftruncate` unallocated.
        let probe = dir.path().join("sparse");
        std::fs::File::create(&probe)
            .and_then(|f| f.set_len(8 << 20))
            .expect("probe file");
        let sparse = std::fs::metadata(&probe).expect("probe").blocks() * 512 < 1 << 20;
        let allocated = meta.blocks() * 512;
        assert!(
            !sparse || allocated < 2 << 20,
            "{allocated} bytes allocated for about 100 kB of pages"
        );
        let r = Connection::open(&path).expect("reader");
        let n: i64 = r
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count");
        assert_eq!(n, 100);
    }
}
