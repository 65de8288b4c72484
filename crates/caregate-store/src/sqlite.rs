//! The embedded SQLite backend.
//!
//! Writes go through one dedicated writer thread: it takes every commit request that is
//! waiting, applies each inside its own savepoint, and makes the whole group durable with a
//! single `COMMIT` (one fsync). Concurrent clients therefore share fsyncs instead of queueing
//! for them, which is what lets SQLite reach thousands of durable writes per second. Reads
//! use a small pool of read-only connections; WAL mode lets them run beside the writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction};

use crate::audit::{self, AuditQuery, AuditRecord, ChainHead, ChainReport};
use crate::conformance::{self, ConformanceRecord, ConformanceReport};
use crate::index::{IncludeSpec, IndexEntry, IndexKind, IndexValue, SearchQuery};
use crate::manifest::{self, Manifest, Row, SortValue};
use crate::sql_query::{build_search, SqlArg};
use crate::{
    HistoryPage, HistoryQuery, HistoryScope, Key, SearchPage, Store, StoreError, VersionRecord,
    WriteMethod, WriteOp,
};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS caregate_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- One row per logical resource: where its newest version is.
CREATE TABLE IF NOT EXISTS resource (
    rid INTEGER PRIMARY KEY,
    rtype TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    last_updated_ms INTEGER NOT NULL,
    UNIQUE (rtype, id)
);
-- The index rows of a resource's current version (manifest.rs), for resources that have
-- any. Apart from `resource` so the rows searches probe stay small.
CREATE TABLE IF NOT EXISTS resource_ix (rid INTEGER PRIMARY KEY, ix BLOB NOT NULL);
-- Every version ever written, in write order (seq). Rows are never updated or deleted.
CREATE TABLE IF NOT EXISTS version (
    seq INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    version INTEGER NOT NULL,
    last_updated TEXT NOT NULL,
    last_updated_ms INTEGER NOT NULL,
    method TEXT NOT NULL,
    hash TEXT NOT NULL,
    content BLOB,
    UNIQUE (rid, version)
);
CREATE INDEX IF NOT EXISTS version_by_time ON version (last_updated_ms);
-- Search index over current versions only; rows are replaced on every write. Each table is
-- clustered on the columns searches use (WITHOUT ROWID), so a row costs one B-tree insert;
-- a resource's own rows are listed in resource_ix. Absent optional values are stored as ''
-- because key columns cannot be NULL.
-- Search parameter keys ("Patient:family") as small integers: index keys stay short.
CREATE TABLE IF NOT EXISTS param (pid INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS ix_string (param INTEGER NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (param, norm, exact, rid)) WITHOUT ROWID;
-- The display text is part of the key: two CodeableConcepts of one resource that carry only
-- text ('' code and system) are two rows, both found by :text.
CREATE TABLE IF NOT EXISTS ix_token (param INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, rid INTEGER NOT NULL,
    text TEXT NOT NULL DEFAULT '', PRIMARY KEY (param, code, system, rid, text)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_reference (param INTEGER NOT NULL, tid TEXT NOT NULL, ttype TEXT NOT NULL, url TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (param, tid, ttype, url, rid)) WITHOUT ROWID;
-- Every reference query names its parameter, so the primary key serves it; the old
-- (ttype, tid) index only cost another B-tree insert per row.
DROP INDEX IF EXISTS ix_reference_t;
CREATE TABLE IF NOT EXISTS ix_date (param INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (param, lo, hi, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_number (param INTEGER NOT NULL, value REAL NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (param, value, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_quantity (param INTEGER NOT NULL, value REAL NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL, unit TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (param, value, system, code, unit, rid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix_uri (param INTEGER NOT NULL, uri TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (param, uri, rid)) WITHOUT ROWID;
"#;

/// Inserts one index row, its placeholders in key order as [`bind_row`] binds them (the
/// token table adds the display text last); indexed by [`manifest::kind_tag`].
const INSERT_INDEX_ROW: [&str; 7] = [
    "INSERT OR IGNORE INTO ix_string (param, norm, exact, rid) VALUES (?1, ?2, ?3, ?4)",
    "INSERT OR IGNORE INTO ix_token (param, code, system, rid, text) VALUES (?1, ?2, ?3, ?4, ?5)",
    "INSERT OR IGNORE INTO ix_reference (param, tid, ttype, url, rid) VALUES (?1, ?2, ?3, ?4, ?5)",
    "INSERT OR IGNORE INTO ix_date (param, lo, hi, rid) VALUES (?1, ?2, ?3, ?4)",
    "INSERT OR IGNORE INTO ix_number (param, value, rid) VALUES (?1, ?2, ?3)",
    "INSERT OR IGNORE INTO ix_quantity (param, value, system, code, unit, rid) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    "INSERT OR IGNORE INTO ix_uri (param, uri, rid) VALUES (?1, ?2, ?3)",
];

/// Deletes one index row by its table's key, bound as [`INSERT_INDEX_ROW`]; indexed by
/// [`manifest::kind_tag`].
const DELETE_INDEX_ROW: [&str; 7] = [
    "DELETE FROM ix_string WHERE param = ?1 AND norm = ?2 AND exact = ?3 AND rid = ?4",
    // Every display text of the code at once (the list holds the code, not the texts).
    "DELETE FROM ix_token WHERE param = ?1 AND code = ?2 AND system = ?3 AND rid = ?4",
    "DELETE FROM ix_reference WHERE param = ?1 AND tid = ?2 AND ttype = ?3 AND url = ?4 AND rid = ?5",
    "DELETE FROM ix_date WHERE param = ?1 AND lo = ?2 AND hi = ?3 AND rid = ?4",
    "DELETE FROM ix_number WHERE param = ?1 AND value = ?2 AND rid = ?3",
    "DELETE FROM ix_quantity WHERE param = ?1 AND value = ?2 AND system = ?3 AND code = ?4 AND unit = ?5 AND rid = ?6",
    "DELETE FROM ix_uri WHERE param = ?1 AND uri = ?2 AND rid = ?3",
];

const SCHEMA_VERSION: &str = "5";

#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// Most commit requests folded into one database transaction.
    pub max_group: usize,
    /// Read connections kept open.
    pub read_connections: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            max_group: 512,
            read_connections: 64,
        }
    }
}

/// The writer's cache of parameter ids. Ids created inside a transaction that is rolled
/// back must be forgotten, so new ones stay `pending` until their transaction commits.
#[derive(Default)]
struct ParamIds {
    // Looked up once per index row on the writer thread; the keys are the registry's.
    known: std::collections::HashMap<String, i64, foldhash::fast::RandomState>,
    pending: Vec<String>,
}

impl ParamIds {
    fn id(&mut self, tx: &Transaction<'_>, key: &str) -> Result<i64, StoreError> {
        if let Some(id) = self.known.get(key) {
            return Ok(*id);
        }
        tx.prepare_cached("INSERT OR IGNORE INTO param (key) VALUES (?1)")?
            .execute([key])?;
        let id: i64 = tx
            .prepare_cached("SELECT pid FROM param WHERE key = ?1")?
            .query_row([key], |r| r.get(0))?;
        self.known.insert(key.to_string(), id);
        self.pending.push(key.to_string());
        Ok(id)
    }

    fn committed(&mut self) {
        self.pending.clear();
    }

    /// Forgets ids created since `mark` (their rows were rolled back).
    fn rolled_back(&mut self, mark: usize) {
        for key in self.pending.drain(mark..) {
            self.known.remove(&key);
        }
    }
}

struct CommitRequest {
    ops: Vec<WriteOp>,
    /// AuditEvents committed with the writes (and only if they succeed).
    audit: Vec<AuditRecord>,
    /// Conformance statistics to add (fire-and-forget).
    stats: Vec<ConformanceRecord>,
    /// `None` for fire-and-forget audit appends (reads), which must not wait for an fsync.
    reply: Option<ReplyTo>,
}

/// Where the writer leaves a commit's result for the request thread waiting on it. The
/// waiter sleeps at once: a channel's receive spins and yields the CPU first, which cost
/// more than the work itself with a dozen writers waiting on a commit of a few ms.
#[derive(Default)]
struct Reply {
    answer: Mutex<Option<Answer>>,
    ready: parking_lot::Condvar,
}

/// A commit's result, and what the request carried when the writer hands it back.
type Answer = (Result<(), StoreError>, Option<Spent>);

/// What a commit request carried, handed back with its answer so the request thread that
/// allocated it also frees it: mimalloc frees fastest on the allocating thread, and the
/// writer thread, which every commit waits on, has less to do (freeing a Bundle's writes
/// was about a twentieth of its time).
struct Spent {
    _ops: Vec<WriteOp>,
    _audit: Vec<AuditRecord>,
    _stats: Vec<ConformanceRecord>,
}

impl Reply {
    /// A reply slot and the writer's end of it.
    fn pair() -> (Arc<Reply>, ReplyTo) {
        let reply = Arc::new(Reply::default());
        (reply.clone(), ReplyTo(Some(reply)))
    }

    fn wait(&self) -> Result<(), StoreError> {
        let (result, spent) = {
            let mut slot = self.answer.lock();
            loop {
                if let Some(answer) = slot.take() {
                    break answer;
                }
                self.ready.wait(&mut slot);
            }
        };
        drop(spent);
        result
    }
}

/// The writer's end of a [`Reply`]. Dropped unanswered (the writer stopped or panicked),
/// it answers `Closed`, so no requester waits forever.
struct ReplyTo(Option<Arc<Reply>>);

impl ReplyTo {
    fn send(self, result: Result<(), StoreError>) {
        self.answer(result, None);
    }

    fn answer(mut self, result: Result<(), StoreError>, spent: Option<Spent>) {
        if let Some(reply) = self.0.take() {
            *reply.answer.lock() = Some((result, spent));
            reply.ready.notify_one();
        }
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if let Some(reply) = self.0.take() {
            *reply.answer.lock() = Some((Err(StoreError::Closed), None));
            reply.ready.notify_one();
        }
    }
}

pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<Sender<CommitRequest>>>,
    writer_thread: Mutex<Option<thread::JoinHandle<()>>>,
    checkpoints: Mutex<Option<(Sender<()>, thread::JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    options: SqliteOptions,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Arc<SqliteStore>, StoreError> {
        let conn = open_for_writing(path)?;
        configure(&conn)?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(audit::SCHEMA)?;
        conn.execute_batch(conformance::SCHEMA)?;
        let found: Option<String> = conn
            .query_row(
                "SELECT value FROM caregate_meta WHERE key = 'schema'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO caregate_meta (key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) if v == "4" => migrate_v4(&conn)?,
            Some(v) => {
                return Err(StoreError::Database(format!(
                    "database schema version {v} is not supported by this caregate (expects {SCHEMA_VERSION})"
                )))
            }
        }
        // Checkpoints run on their own thread so the writer never stalls on one; the writer
        // only checkpoints itself if the WAL grows far past what the checkpointer keeps up with.
        conn.pragma_update(None, "wal_autocheckpoint", 50_000)?;
        // After the WAL restarts, shrink the file back rather than keep its peak size.
        conn.pragma_update(None, "journal_size_limit", 64i64 << 20)?;
        let checkpointer = open_for_writing(path)?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(10))?;
        // Checkpoints are what extend the database file.
        grow_in_chunks(&checkpointer);
        let (stop_checkpoints, checkpoint_stop_rx) = bounded::<()>(1);
        let checkpoint_thread = thread::Builder::new()
            .name("caregate-sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpointer, checkpoint_stop_rx))
            .map_err(|e| StoreError::Database(format!("cannot start checkpoint thread: {e}")))?;
        let (tx, rx) = bounded::<CommitRequest>(4096);
        let max_group = options.max_group.max(1);
        let chain = ChainHead::load(&conn)?;
        let handle = thread::Builder::new()
            .name("caregate-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, max_group, chain))
            .map_err(|e| StoreError::Database(format!("cannot start writer thread: {e}")))?;
        Ok(Arc::new(SqliteStore {
            path: path.to_path_buf(),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(handle)),
            checkpoints: Mutex::new(Some((stop_checkpoints, checkpoint_thread))),
            readers: Mutex::new(Vec::new()),
            options,
        }))
    }

    fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = match self.readers.lock().pop() {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY
                        | OpenFlags::SQLITE_OPEN_NO_MUTEX
                        | OpenFlags::SQLITE_OPEN_URI,
                )?;
                c.busy_timeout(std::time::Duration::from_secs(10))?;
                c.set_prepared_statement_cache_capacity(128);
                tune_cache(&c)?;
                register_index_functions(&c)?;
                c
            }
        };
        let result = f(&conn);
        let mut pool = self.readers.lock();
        if pool.len() < self.options.read_connections {
            pool.push(conn);
        }
        result
    }

    /// Waits until everything queued before it is committed, so an audit search sees
    /// every event recorded before it was asked (read AuditEvents are queued, not waited
    /// for).
    fn barrier(&self) -> Result<(), StoreError> {
        let (reply, reply_to) = Reply::pair();
        self.send(CommitRequest {
            ops: Vec::new(),
            audit: Vec::new(),
            stats: Vec::new(),
            reply: Some(reply_to),
        })?;
        reply.wait()
    }

    fn send(&self, request: CommitRequest) -> Result<(), StoreError> {
        let writer = self.writer.lock();
        let sender = writer.as_ref().ok_or(StoreError::Closed)?;
        sender.send(request).map_err(|_| StoreError::Closed)
    }

    /// Stops the writer after it has committed everything already queued.
    pub fn close(&self) {
        self.writer.lock().take();
        if let Some(handle) = self.writer_thread.lock().take() {
            let _ = handle.join();
        }
        if let Some((stop, handle)) = self.checkpoints.lock().take() {
            let _ = stop.send(());
            let _ = handle.join();
        }
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.close();
    }
}

/// Grow the database file 32 MiB at a time. Readers map the file (`mmap_size`) and remap
/// whenever it has grown: growing page by page, as checkpoints of the audit trail do all
/// the time, made every reader unmap and fault its pages back in (a tenth of a search's
/// CPU in profiles). Through the writers' VFS (vfs.rs) a chunk is added without writing it.
fn grow_in_chunks(conn: &Connection) {
    let mut chunk: std::os::raw::c_int = 32 << 20;
    // SAFETY: the handle is this open connection's; SQLITE_FCNTL_CHUNK_SIZE reads one int
    // through the pointer, which outlives the call.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_CHUNK_SIZE,
            (&mut chunk as *mut std::os::raw::c_int).cast(),
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(target: "caregate::store", rc, "chunked file growth not available");
    }
}

/// A connection for the writer or the checkpointer, through the VFS that writes the WAL a
/// transaction at a time and grows the database file without writing it (vfs.rs).
fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    Ok(if crate::vfs::register() {
        Connection::open_with_flags_and_vfs(path, OpenFlags::default(), crate::vfs::VFS_NAME)?
    } else {
        Connection::open(path)?
    })
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    // WAL lets readers run beside the writer; synchronous=FULL makes each COMMIT durable
    // before it returns, so an acknowledged write survives a crash or power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.set_prepared_statement_cache_capacity(64);
    tune_cache(conn)?;
    grow_in_chunks(conn);
    Ok(())
}

/// Memory-mapped reads and a larger page cache: without them every B-tree page a query
/// touches is copied out of the kernel with `pread`, which dominated profiles.
fn tune_cache(conn: &Connection) -> Result<(), StoreError> {
    // Plans that do not depend on bound values. Otherwise SQLite marks statements whose plan
    // a binding could change (ranges, IN-subqueries, joins) and rusqlite's statement cache,
    // which clears bindings when a statement comes back, makes SQLite re-prepare them on
    // every execution: a fifth of a read's CPU. caregate never runs ANALYZE, so value-based
    // planning had nothing to gain.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.pragma_update(None, "mmap_size", 1i64 << 34)?;
    conn.pragma_update(None, "cache_size", -8_192)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(())
}

/// SQL functions over a resource's row list (manifest.rs), for `_sort` and `:missing`:
/// `cg_sort_key(ix, kind, descending, param...)` is its sort key over the rows of one or
/// more parameters (NULL without a value) and `cg_has(ix, kind, param)` whether it has a
/// value. `kind` is [`manifest::kind_tag`]; a `param` may be NULL (a parameter no resource
/// ever had).
fn register_index_functions(conn: &Connection) -> Result<(), StoreError> {
    use rusqlite::functions::{Context, FunctionFlags};
    use rusqlite::types::{Value, ValueRef};
    fn list<'c>(ctx: &'c Context<'_>) -> rusqlite::Result<Option<(&'c [u8], IndexKind)>> {
        let ValueRef::Blob(blob) = ctx.get_raw(0) else {
            return Ok(None);
        };
        let tag: i64 = ctx.get(1)?;
        let kind = u8::try_from(tag)
            .ok()
            .and_then(manifest::kind_of_tag)
            .ok_or_else(|| {
                rusqlite::Error::UserFunctionError(format!("no index kind {tag}").into())
            })?;
        Ok(Some((blob, kind)))
    }
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("cg_sort_key", -1, flags, |ctx| {
        let descending: bool = ctx.get(2)?;
        let Some((blob, kind)) = list(ctx)? else {
            return Ok(Value::Null);
        };
        let params = (3..ctx.len())
            .filter_map(|i| ctx.get::<Option<i64>>(i).transpose())
            .collect::<rusqlite::Result<Vec<i64>>>()?;
        match manifest::sort_key(blob, kind, &params, descending) {
            Ok(Some(SortValue::Text(t))) => Ok(Value::Text(t.to_string())),
            Ok(Some(SortValue::Int(i))) => Ok(Value::Integer(i)),
            Ok(Some(SortValue::Real(f))) => Ok(Value::Real(f)),
            Ok(None) => Ok(Value::Null),
            Err(e) => Err(rusqlite::Error::UserFunctionError(Box::new(e))),
        }
    })?;
    conn.create_scalar_function("cg_has", 3, flags, |ctx| {
        let (Some((blob, kind)), Some(param)) = (list(ctx)?, ctx.get::<Option<i64>>(2)?) else {
            return Ok(false);
        };
        manifest::has(blob, kind, param)
            .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
    })?;
    Ok(())
}

/// Schema 4 found a resource's index rows through a `(rid, param)` index on each table;
/// schema 5 lists them in `resource_ix` instead (manifest.rs). Builds the lists from the
/// tables, in `rid` order through those indexes, then drops the indexes: one transaction,
/// so an interrupted migration leaves schema 4 as it was.
fn migrate_v4(conn: &Connection) -> Result<(), StoreError> {
    const KEY_COLUMNS: [(&str, &str); 7] = [
        ("ix_string", "norm, exact"),
        ("ix_token", "code, system"),
        ("ix_reference", "tid, ttype, url"),
        ("ix_date", "lo, hi"),
        ("ix_number", "value"),
        ("ix_quantity", "value, system, code, unit"),
        ("ix_uri", "uri"),
    ];
    let tx = conn.unchecked_transaction()?;
    // A table's rows are appended to what earlier tables listed. In Rust: SQL's `||` would
    // turn the bytes into text.
    let mut listed = tx.prepare("SELECT ix FROM resource_ix WHERE rid = ?1")?;
    let mut store = tx.prepare("INSERT OR REPLACE INTO resource_ix (rid, ix) VALUES (?1, ?2)")?;
    let mut append = |rid: i64, list: Manifest| -> Result<(), StoreError> {
        let Some(new) = list.finish() else {
            return Ok(());
        };
        let mut all: Vec<u8> = listed
            .query_row([rid], |r| r.get::<_, Option<Vec<u8>>>(0))
            .optional()?
            .flatten()
            .unwrap_or_default();
        all.extend_from_slice(&new);
        store.execute(params![rid, all])?;
        Ok(())
    };
    for (table, columns) in KEY_COLUMNS {
        let mut select = tx.prepare(&format!(
            "SELECT rid, param, {columns} FROM {table} ORDER BY rid"
        ))?;
        let mut found = select.query([])?;
        let mut pending: Option<(i64, Manifest)> = None;
        while let Some(r) = found.next()? {
            let rid: i64 = r.get(0)?;
            let param: i64 = r.get(1)?;
            if pending.as_ref().is_some_and(|(p, _)| *p != rid) {
                if let Some((p, list)) = pending.take() {
                    append(p, list)?;
                }
            }
            let list = &mut pending.get_or_insert_with(|| (rid, Manifest::default())).1;
            let text = |i: usize| r.get::<_, String>(i);
            match table {
                "ix_string" => {
                    let (norm, exact) = (text(2)?, text(3)?);
                    list.push(
                        param,
                        &Row::String {
                            norm: &norm,
                            exact: &exact,
                        },
                    );
                }
                "ix_token" => {
                    let (code, system) = (text(2)?, text(3)?);
                    list.push(
                        param,
                        &Row::Token {
                            code: &code,
                            system: &system,
                        },
                    );
                }
                "ix_reference" => {
                    let (tid, ttype, url) = (text(2)?, text(3)?, text(4)?);
                    list.push(
                        param,
                        &Row::Reference {
                            tid: &tid,
                            ttype: &ttype,
                            url: &url,
                        },
                    );
                }
                "ix_date" => list.push(
                    param,
                    &Row::Date {
                        lo: r.get(2)?,
                        hi: r.get(3)?,
                    },
                ),
                "ix_number" => list.push(param, &Row::Number(r.get(2)?)),
                "ix_quantity" => {
                    let (system, code, unit) = (text(3)?, text(4)?, text(5)?);
                    let row = Row::Quantity {
                        value: r.get(2)?,
                        system: &system,
                        code: &code,
                        unit: &unit,
                    };
                    list.push(param, &row);
                }
                _ => list.push(param, &Row::Uri(&text(2)?)),
            }
        }
        if let Some((p, list)) = pending.take() {
            append(p, list)?;
        }
    }
    drop((listed, store));
    tx.execute_batch(
        "DROP INDEX IF EXISTS ix_string_r; DROP INDEX IF EXISTS ix_token_r;
         -- Schema 4 kept one row per code and lost a resource's second text-only token.
         CREATE TABLE ix_token_5 (param INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, rid INTEGER NOT NULL,
             text TEXT NOT NULL DEFAULT '', PRIMARY KEY (param, code, system, rid, text)) WITHOUT ROWID;
         INSERT OR IGNORE INTO ix_token_5 (param, code, system, rid, text)
             SELECT param, code, system, rid, coalesce(text, '') FROM ix_token;
         DROP TABLE ix_token;
         ALTER TABLE ix_token_5 RENAME TO ix_token;
         DROP INDEX IF EXISTS ix_reference_r; DROP INDEX IF EXISTS ix_date_r;
         DROP INDEX IF EXISTS ix_number_r; DROP INDEX IF EXISTS ix_quantity_r;
         DROP INDEX IF EXISTS ix_uri_r;
         UPDATE caregate_meta SET value = '5' WHERE key = 'schema';",
    )?;
    tx.commit()?;
    Ok(())
}

/// Copies committed WAL frames into the database file in the background (PASSIVE: never
/// blocks the writer or readers).
fn checkpoint_loop(conn: Connection, stop: Receiver<()>) {
    loop {
        match stop.recv_timeout(std::time::Duration::from_millis(250)) {
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(target: "caregate::store", error = %e, "WAL checkpoint failed");
                }
            }
            _ => return,
        }
    }
}

/// How long fire-and-forget appends may wait to share a commit.
const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);

fn writer_loop(
    mut conn: Connection,
    rx: Receiver<CommitRequest>,
    max_group: usize,
    mut chain: ChainHead,
) {
    let mut ids = ParamIds::default();
    let mut synchronous_full = true;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        // Fire-and-forget appends (read AuditEvents, conformance statistics) wait up to
        // BATCH_WINDOW for company: one commit for many reads instead of one each. Nobody
        // waits on them, and anything a client does wait for (a write, or the barrier that
        // audit searches send) ends the wait at once.
        let deadline = std::time::Instant::now() + BATCH_WINDOW;
        loop {
            while group.len() < max_group {
                match rx.try_recv() {
                    Ok(req) => group.push(req),
                    Err(_) => break,
                }
            }
            if group.len() >= max_group || group.iter().any(|r| r.reply.is_some()) {
                break;
            }
            match rx.recv_deadline(deadline) {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        // A group of fire-and-forget audit appends (reads) commits without an fsync: the
        // next durable commit's fsync of the WAL covers its frames too, and a process crash
        // loses nothing. Anything a client waits for is made durable before the reply.
        let needs_fsync = group.iter().any(|r| r.reply.is_some());
        if needs_fsync != synchronous_full {
            let mode = if needs_fsync { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", mode) {
                Ok(()) => synchronous_full = needs_fsync,
                Err(e) if needs_fsync => {
                    // Never acknowledge a write that might not be durable.
                    for req in group {
                        if let Some(reply) = req.reply {
                            reply.send(Err(StoreError::Database(format!(
                                "cannot make the commit durable: {e}"
                            ))));
                        }
                    }
                    continue;
                }
                Err(_) => {}
            }
        }
        let results = commit_group(&mut conn, &group, &mut ids, &mut chain);
        for (req, result) in group.into_iter().zip(results) {
            let CommitRequest {
                ops,
                audit,
                stats,
                reply,
            } = req;
            match reply {
                // A requester that went away (client disconnected) just never reads it.
                Some(reply) => reply.answer(
                    result,
                    Some(Spent {
                        _ops: ops,
                        _audit: audit,
                        _stats: stats,
                    }),
                ),
                None => {
                    if let Err(e) = result {
                        tracing::error!(target: "caregate::audit", error = %e, "audit events could not be stored");
                    }
                }
            }
        }
    }
}

/// Applies the group in one transaction and commits once. Each request's preconditions
/// are all checked before any of its writes, so a conflicting request is skipped without a
/// savepoint. Should a write fail for any other reason, the group is rolled back and
/// replayed with one savepoint per request, so only the failing request fails. If the final
/// COMMIT fails, every request of the group fails: none of them was acknowledged.
fn commit_group(
    conn: &mut Connection,
    group: &[CommitRequest],
    ids: &mut ParamIds,
    chain: &mut ChainHead,
) -> Vec<Result<(), StoreError>> {
    let chain_at_start = chain.clone();
    let results = match commit_group_fast(conn, group, ids, chain) {
        Ok(results) => results,
        Err(_) => {
            ids.rolled_back(0);
            *chain = chain_at_start.clone();
            commit_group_isolated(conn, group, ids, chain)
        }
    };
    if results
        .iter()
        .any(|r| matches!(r, Err(StoreError::Database(_))))
        && results.iter().all(Result::is_err)
    {
        // The group's COMMIT failed: nothing of it exists, including new parameter ids
        // and audit events.
        ids.rolled_back(0);
        *chain = chain_at_start;
    } else {
        ids.committed();
    }
    results
}

fn commit_group_fast(
    conn: &mut Connection,
    group: &[CommitRequest],
    ids: &mut ParamIds,
    chain: &mut ChainHead,
) -> Result<Vec<Result<(), StoreError>>, StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut rows = RowIds::load(&tx)?;
    let mut results = Vec::with_capacity(group.len());
    {
        let mut statements = WriteStatements::new(&tx);
        for req in group {
            match check_preconditions(&tx, &req.ops, Absence::ProvenByInsert)? {
                Ok(current) => {
                    for (op, cur) in req.ops.iter().zip(current) {
                        apply_op(&tx, op, cur, ids, &mut rows, &mut statements)?;
                    }
                    audit::append(&tx, chain, &req.audit)?;
                    conformance::record(&tx, &req.stats)?;
                    results.push(Ok(()));
                }
                Err(conflict) => results.push(Err(conflict)),
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

fn commit_group_isolated(
    conn: &mut Connection,
    group: &[CommitRequest],
    ids: &mut ParamIds,
    chain: &mut ChainHead,
) -> Vec<Result<(), StoreError>> {
    let tx = match conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            return group
                .iter()
                .map(|_| Err(StoreError::from(clone_err(&e))))
                .collect()
        }
    };
    let mut rows = match RowIds::load(&tx) {
        Ok(rows) => rows,
        Err(e) => {
            let msg = e.to_string();
            return group
                .iter()
                .map(|_| Err(StoreError::Database(msg.clone())))
                .collect();
        }
    };
    let mut results = Vec::with_capacity(group.len());
    {
        let mut statements = WriteStatements::new(&tx);
        for req in group {
            results.push(apply_in_savepoint(
                &tx,
                req,
                ids,
                chain,
                &mut rows,
                &mut statements,
            ));
        }
    }
    if let Err(e) = tx.commit() {
        let msg = e.to_string();
        return group
            .iter()
            .map(|_| Err(StoreError::Database(msg.clone())))
            .collect();
    }
    results
}

/// How [`check_preconditions`] treats an op whose resource must not exist yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Absence {
    /// Look the resource up, as for any other op.
    Checked,
    /// Skip the lookup: the op's `INSERT INTO resource` fails on the `(rtype, id)` key if the
    /// resource exists, which fails the group's fast path, and the replay with savepoints
    /// checks every op and reports the conflict. Nearly every create has a fresh
    /// server-assigned id, so the lookup was a wasted index search per create on the
    /// one writer thread.
    ProvenByInsert,
}

/// Row ids of the next resource and version, handed out by the writer. Read once per
/// database transaction (the writer is the only one writing), so a write inserts its
/// resource row complete instead of inserting it and then updating it with the version's
/// `seq`. Ids of rolled-back writes are skipped, never reused within the transaction.
struct RowIds {
    next_rid: i64,
    next_seq: i64,
}

impl RowIds {
    fn load(tx: &Transaction<'_>) -> Result<RowIds, StoreError> {
        let (rid, seq): (i64, i64) = tx.query_row(
            "SELECT (SELECT coalesce(max(rid), 0) FROM resource), (SELECT coalesce(max(seq), 0) FROM version)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(RowIds {
            next_rid: rid + 1,
            next_seq: seq + 1,
        })
    }

    fn rid(&mut self) -> i64 {
        self.next_rid += 1;
        self.next_rid - 1
    }

    fn seq(&mut self) -> i64 {
        self.next_seq += 1;
        self.next_seq - 1
    }
}

/// The current `(rid, version)` of each op's resource, or the first conflict.
#[allow(clippy::type_complexity)]
fn check_preconditions(
    tx: &Transaction<'_>,
    ops: &[WriteOp],
    absence: Absence,
) -> Result<Result<Vec<Option<(i64, u64)>>, StoreError>, StoreError> {
    let mut current = Vec::with_capacity(ops.len());
    for (op_index, op) in ops.iter().enumerate() {
        if op.expected_version.is_none() && absence == Absence::ProvenByInsert {
            current.push(None);
            continue;
        }
        let cur: Option<(i64, u64)> = tx
            .prepare_cached("SELECT rid, version FROM resource WHERE rtype = ?1 AND id = ?2")?
            .query_row(params![op.resource_type, op.id], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64))
            })
            .optional()?;
        let actual = cur.map(|(_, v)| v);
        if actual != op.expected_version {
            return Ok(Err(StoreError::Conflict {
                op_index,
                resource_type: op.resource_type.clone(),
                id: op.id.clone(),
                expected: op.expected_version,
                actual,
            }));
        }
        current.push(cur);
    }
    Ok(Ok(current))
}

fn clone_err(e: &rusqlite::Error) -> rusqlite::Error {
    rusqlite::Error::InvalidParameterName(e.to_string())
}

fn apply_in_savepoint(
    tx: &Transaction<'_>,
    req: &CommitRequest,
    ids: &mut ParamIds,
    chain: &mut ChainHead,
    rows: &mut RowIds,
    statements: &mut WriteStatements<'_>,
) -> Result<(), StoreError> {
    tx.execute_batch("SAVEPOINT request")?;
    let mark = ids.pending.len();
    let chain_mark = chain.clone();
    let applied = apply_ops(tx, &req.ops, ids, rows, statements)
        .and_then(|()| audit::append(tx, chain, &req.audit))
        .and_then(|()| conformance::record(tx, &req.stats));
    match applied {
        Ok(()) => {
            tx.execute_batch("RELEASE request")?;
            Ok(())
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO request; RELEASE request")?;
            ids.rolled_back(mark);
            *chain = chain_mark;
            Err(e)
        }
    }
}

fn apply_ops(
    tx: &Transaction<'_>,
    ops: &[WriteOp],
    ids: &mut ParamIds,
    rows: &mut RowIds,
    statements: &mut WriteStatements<'_>,
) -> Result<(), StoreError> {
    for (op_index, op) in ops.iter().enumerate() {
        // Checked op by op, so a request that touches one resource twice sees its own writes.
        match check_preconditions(tx, std::slice::from_ref(op), Absence::Checked)? {
            Ok(mut cur) => apply_op(tx, op, cur.pop().flatten(), ids, rows, statements)?,
            Err(StoreError::Conflict {
                resource_type,
                id,
                expected,
                actual,
                ..
            }) => {
                return Err(StoreError::Conflict {
                    op_index,
                    resource_type,
                    id,
                    expected,
                    actual,
                })
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes one version whose precondition has been checked; `current` is its resource row.
fn apply_op(
    tx: &Transaction<'_>,
    op: &WriteOp,
    current: Option<(i64, u64)>,
    ids: &mut ParamIds,
    rows: &mut RowIds,
    statements: &mut WriteStatements<'_>,
) -> Result<(), StoreError> {
    let deleted = op.content.is_none();
    let seq = rows.seq();
    let (rid, had_rows) = match current {
        Some((rid, _)) => (rid, remove_index(tx, rid, &mut statements.delete)?),
        None => (rows.rid(), false),
    };
    match current {
        Some(_) => {
            statements
                .row(RowStatement::UpdateResource)?
                .execute(params![
                    rid,
                    op.version as i64,
                    seq,
                    deleted,
                    op.last_updated_ms
                ])?;
        }
        None => {
            statements
                .row(RowStatement::InsertResource)?
                .execute(params![
                    rid,
                    op.resource_type,
                    op.id,
                    op.version as i64,
                    seq,
                    deleted,
                    op.last_updated_ms
                ])?;
        }
    }
    let manifest = if deleted {
        None
    } else {
        write_index(tx, rid, &op.index, ids, &mut statements.insert)?
    };
    match manifest {
        Some(list) => {
            statements
                .row(RowStatement::PutIndexList)?
                .execute(params![rid, list])?;
        }
        None if had_rows => {
            statements
                .row(RowStatement::DeleteIndexList)?
                .execute([rid])?;
        }
        None => {}
    }
    statements
        .row(RowStatement::InsertVersion)?
        .execute(params![
            seq,
            rid,
            op.version as i64,
            op.last_updated,
            op.last_updated_ms,
            op.method.as_str(),
            op.hash,
            op.content
        ])?;
    Ok(())
}

fn corrupt(rid: i64, e: manifest::Corrupt) -> StoreError {
    StoreError::Database(format!("resource row {rid}: {e}"))
}

/// Deletes the index rows of the resource's current version, as its list names them;
/// whether it had any.
fn remove_index(
    tx: &Transaction<'_>,
    rid: i64,
    statements: &mut IndexStatements<'_>,
) -> Result<bool, StoreError> {
    let blob: Option<Vec<u8>> = tx
        .prepare_cached("SELECT ix FROM resource_ix WHERE rid = ?1")?
        .query_row([rid], |r| r.get(0))
        .optional()?;
    let Some(blob) = blob else {
        return Ok(false);
    };
    for row in manifest::rows(&blob) {
        let (param, row) = row.map_err(|e| corrupt(rid, e))?;
        bind_row(statements.get(&row)?, param, &row, rid, None)?;
    }
    Ok(true)
}

/// The statements every resource write runs, for one database transaction: each fetched
/// from the statement cache once per commit group rather than once per resource (a cache
/// fetch hashes the SQL text, and returning the statement resets it).
struct WriteStatements<'c> {
    tx: &'c Transaction<'c>,
    insert: IndexStatements<'c>,
    delete: IndexStatements<'c>,
    rows: [Option<rusqlite::CachedStatement<'c>>; 5],
}

/// The statements of [`WriteStatements::row`], by slot.
#[derive(Clone, Copy)]
enum RowStatement {
    InsertResource,
    UpdateResource,
    PutIndexList,
    DeleteIndexList,
    InsertVersion,
}

impl RowStatement {
    fn sql(self) -> &'static str {
        match self {
            RowStatement::InsertResource => {
                "INSERT INTO resource (rid, rtype, id, version, seq, deleted, last_updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
            }
            RowStatement::UpdateResource => {
                "UPDATE resource SET version = ?2, seq = ?3, deleted = ?4, last_updated_ms = ?5 WHERE rid = ?1"
            }
            RowStatement::PutIndexList => {
                "INSERT OR REPLACE INTO resource_ix (rid, ix) VALUES (?1, ?2)"
            }
            RowStatement::DeleteIndexList => "DELETE FROM resource_ix WHERE rid = ?1",
            RowStatement::InsertVersion => {
                "INSERT INTO version (seq, rid, version, last_updated, last_updated_ms, method, hash, content)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            }
        }
    }
}

impl<'c> WriteStatements<'c> {
    fn new(tx: &'c Transaction<'c>) -> Self {
        WriteStatements {
            tx,
            insert: IndexStatements::new(tx, &INSERT_INDEX_ROW),
            delete: IndexStatements::new(tx, &DELETE_INDEX_ROW),
            rows: Default::default(),
        }
    }

    fn row(
        &mut self,
        which: RowStatement,
    ) -> Result<&mut rusqlite::CachedStatement<'c>, StoreError> {
        Ok(match &mut self.rows[which as usize] {
            Some(statement) => statement,
            slot => slot.insert(self.tx.prepare_cached(which.sql())?),
        })
    }
}

/// One statement per index table, each prepared on first use.
struct IndexStatements<'c> {
    tx: &'c Transaction<'c>,
    sql: &'static [&'static str; 7],
    prepared: [Option<rusqlite::CachedStatement<'c>>; 7],
}

impl<'c> IndexStatements<'c> {
    fn new(tx: &'c Transaction<'c>, sql: &'static [&'static str; 7]) -> Self {
        IndexStatements {
            tx,
            sql,
            prepared: Default::default(),
        }
    }

    /// The statement for `row`'s table.
    fn get(&mut self, row: &Row<'_>) -> Result<&mut rusqlite::CachedStatement<'c>, StoreError> {
        let tag = usize::from(manifest::kind_tag(row.kind()));
        Ok(match &mut self.prepared[tag] {
            Some(statement) => statement,
            slot => slot.insert(self.tx.prepare_cached(self.sql[tag])?),
        })
    }
}

/// Runs an [`INSERT_INDEX_ROW`] or [`DELETE_INDEX_ROW`] statement for `row`: its table's key
/// in column order (`param`, the values, `rid`), then for token inserts the display text.
fn bind_row(
    statement: &mut rusqlite::CachedStatement<'_>,
    param: i64,
    row: &Row<'_>,
    rid: i64,
    text: Option<&str>,
) -> rusqlite::Result<usize> {
    match *row {
        Row::String { norm, exact } => statement.execute(params![param, norm, exact, rid]),
        Row::Token { code, system } => match text {
            Some(text) => statement.execute(params![param, code, system, rid, text]),
            None => statement.execute(params![param, code, system, rid]),
        },
        Row::Reference { tid, ttype, url } => {
            statement.execute(params![param, tid, ttype, url, rid])
        }
        Row::Date { lo, hi } => statement.execute(params![param, lo, hi, rid]),
        Row::Number(value) => statement.execute(params![param, value, rid]),
        Row::Quantity {
            value,
            system,
            code,
            unit,
        } => statement.execute(params![param, value, system, code, unit, rid]),
        Row::Uri(uri) => statement.execute(params![param, uri, rid]),
    }
}

/// An index entry as its table's row, with a token's display text ('' when none).
fn row_of(value: &IndexValue) -> (Row<'_>, &str) {
    let row = match value {
        IndexValue::String { normalized, exact } => Row::String {
            norm: normalized,
            exact,
        },
        IndexValue::Token { system, code, text } => {
            let row = Row::Token {
                code: or_empty(code),
                system: or_empty(system),
            };
            return (row, or_empty(text));
        }
        IndexValue::Reference {
            target_type,
            target_id,
            url,
        } => Row::Reference {
            tid: or_empty(target_id),
            ttype: or_empty(target_type),
            url: or_empty(url),
        },
        IndexValue::Date(range) => Row::Date {
            lo: range.start,
            hi: range.end,
        },
        IndexValue::Number(value) => Row::Number(*value),
        IndexValue::Quantity {
            value,
            system,
            code,
            unit,
        } => Row::Quantity {
            value: *value,
            system: or_empty(system),
            code: or_empty(code),
            unit: or_empty(unit),
        },
        IndexValue::Uri(uri) => Row::Uri(uri),
    };
    (row, "")
}

/// Inserts a version's index rows; returns the list of those inserted (a row the resource
/// already has is listed once) for its `resource_ix` row.
fn write_index(
    tx: &Transaction<'_>,
    rid: i64,
    entries: &[IndexEntry],
    ids: &mut ParamIds,
    statements: &mut IndexStatements<'_>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let mut manifest = Manifest::default();
    for e in entries {
        let param = ids.id(tx, &e.param)?;
        let (row, text) = row_of(&e.value);
        if bind_row(statements.get(&row)?, param, &row, rid, Some(text))? > 0 {
            manifest.push(param, &row);
        }
    }
    Ok(manifest.finish())
}

fn or_empty(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("")
}

const RECORD_COLUMNS: &str =
    "r.rtype, r.id, v.version, v.last_updated, v.last_updated_ms, v.method, v.hash, v.content";

/// The current version of `(?1 type, ?2 id)`, columns as [`RECORD_COLUMNS`].
const READ_CURRENT: &str =
    "SELECT ?1, ?2, v.version, v.last_updated, v.last_updated_ms, v.method, v.hash, v.content
     FROM version v WHERE v.seq = (SELECT seq FROM resource WHERE rtype = ?1 AND id = ?2)";

/// Version `?3` of `(?1 type, ?2 id)`, columns as [`RECORD_COLUMNS`].
const READ_VERSION: &str = "SELECT ?1, ?2, v.version, v.last_updated, v.last_updated_ms, v.method, v.hash, v.content
     FROM version v WHERE v.rid = (SELECT rid FROM resource WHERE rtype = ?1 AND id = ?2) AND v.version = ?3";

fn record_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<VersionRecord> {
    let method: String = row.get(5)?;
    Ok(VersionRecord {
        resource_type: row.get(0)?,
        id: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        last_updated: row.get(3)?,
        last_updated_ms: row.get(4)?,
        method: WriteMethod::parse(&method),
        hash: row.get(6)?,
        content: row.get(7)?,
    })
}

fn to_sql_args(args: &[SqlArg]) -> Vec<&dyn rusqlite::ToSql> {
    args.iter()
        .map(|a| match a {
            SqlArg::Text(s) => s as &dyn rusqlite::ToSql,
            SqlArg::Int(i) => i as &dyn rusqlite::ToSql,
            SqlArg::Real(f) => f as &dyn rusqlite::ToSql,
        })
        .collect()
}

impl Store for SqliteStore {
    fn read(&self, resource_type: &str, id: &str) -> Result<Option<VersionRecord>, StoreError> {
        self.with_reader(|c| {
            Ok(c.prepare_cached(READ_CURRENT)?
                .query_row(params![resource_type, id], record_from_row)
                .optional()?)
        })
    }

    fn current_versions(&self, keys: &[Key]) -> Result<Vec<(Key, u64)>, StoreError> {
        self.with_reader(|c| {
            let mut stmt =
                c.prepare_cached("SELECT version FROM resource WHERE rtype = ?1 AND id = ?2")?;
            let mut out = Vec::new();
            for key in keys {
                if let Some(v) = stmt
                    .query_row(params![key.0, key.1], |r| r.get::<_, i64>(0))
                    .optional()?
                {
                    out.push((key.clone(), v as u64));
                }
            }
            Ok(out)
        })
    }

    fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: u64,
    ) -> Result<Option<VersionRecord>, StoreError> {
        self.with_reader(|c| {
            Ok(c.prepare_cached(READ_VERSION)?
                .query_row(params![resource_type, id, version as i64], record_from_row)
                .optional()?)
        })
    }

    fn commit(&self, ops: Vec<WriteOp>, audit: Vec<AuditRecord>) -> Result<(), StoreError> {
        if ops.is_empty() && audit.is_empty() {
            return Ok(());
        }
        let (reply, reply_to) = Reply::pair();
        self.send(CommitRequest {
            ops,
            audit,
            stats: Vec::new(),
            reply: Some(reply_to),
        })?;
        reply.wait()
    }

    fn record_audit(&self, audit: Vec<AuditRecord>) -> Result<(), StoreError> {
        if audit.is_empty() {
            return Ok(());
        }
        self.send(CommitRequest {
            ops: Vec::new(),
            audit,
            stats: Vec::new(),
            reply: None,
        })
    }

    fn record_conformance(&self, stats: Vec<ConformanceRecord>) -> Result<(), StoreError> {
        if stats.is_empty() {
            return Ok(());
        }
        self.send(CommitRequest {
            ops: Vec::new(),
            audit: Vec::new(),
            stats,
            reply: None,
        })
    }

    fn conformance_report(
        &self,
        client: Option<&str>,
        since_day: Option<&str>,
    ) -> Result<ConformanceReport, StoreError> {
        self.barrier()?;
        self.with_reader(|c| conformance::report(c, client, since_day))
    }

    fn audit_search(&self, query: &AuditQuery) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
        self.barrier()?;
        self.with_reader(|c| audit::search(c, query))
    }

    fn verify_audit_chain(&self) -> Result<ChainReport, StoreError> {
        self.barrier()?;
        self.with_reader(audit::verify)
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchPage, StoreError> {
        let built = build_search(query);
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&built.select_sql)?;
            let args = to_sql_args(&built.select_args);
            let matches = stmt
                .query_map(args.as_slice(), record_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            let total = if query.total {
                // When the page is not full and starts at the beginning, the count is known.
                if query.offset == 0 && matches.len() < query.count {
                    Some(matches.len() as u64)
                } else {
                    let mut stmt = c.prepare_cached(&built.count_sql)?;
                    let args = to_sql_args(&built.count_args);
                    Some(stmt.query_row(args.as_slice(), |r| r.get::<_, i64>(0))? as u64)
                }
            } else {
                None
            };
            Ok(SearchPage { matches, total })
        })
    }

    fn include(
        &self,
        matches: &[Key],
        spec: &IncludeSpec,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        if matches.is_empty() {
            return Ok(Vec::new());
        }
        self.with_reader(|c| {
            let mut out = Vec::new();
            if spec.reverse {
                // Resources of source_type whose `param` points at one of the matches.
                let mut stmt = c.prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM ix_reference x
                     JOIN resource r ON r.rid = x.rid JOIN version v ON v.seq = r.seq
                     WHERE x.param = (SELECT pid FROM param WHERE key = ?1) AND x.ttype = ?2 AND x.tid = ?3 AND r.deleted = 0 AND r.rtype = ?4"
                ))?;
                for (ty, id) in matches {
                    if spec.target_type.as_deref().is_some_and(|t| t != ty) {
                        continue;
                    }
                    let rows = stmt.query_map(params![spec.param, ty, id, spec.source_type], record_from_row)?;
                    for row in rows {
                        out.push(row?);
                    }
                }
            } else {
                // The source's references for the parameter, from its row list.
                let param: Option<i64> = c
                    .prepare_cached("SELECT pid FROM param WHERE key = ?1")?
                    .query_row([&spec.param], |r| r.get(0))
                    .optional()?;
                let Some(param) = param else {
                    return Ok(out);
                };
                let mut list = c.prepare_cached(
                    "SELECT r.rid, x.ix FROM resource r LEFT JOIN resource_ix x ON x.rid = r.rid
                     WHERE r.rtype = ?1 AND r.id = ?2 AND r.deleted = 0",
                )?;
                let mut fetch = c.prepare_cached(&format!(
                    "SELECT {RECORD_COLUMNS} FROM resource r JOIN version v ON v.seq = r.seq
                     WHERE r.rtype = ?1 AND r.id = ?2 AND r.deleted = 0"
                ))?;
                for (ty, id) in matches {
                    if ty != &spec.source_type {
                        continue;
                    }
                    let Some((rid, blob)) = list
                        .query_row(params![ty, id], |r| {
                            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
                        })
                        .optional()?
                    else {
                        continue;
                    };
                    let mut targets: Vec<(String, String)> = Vec::new();
                    for row in manifest::rows(blob.as_deref().unwrap_or_default()) {
                        match row.map_err(|e| corrupt(rid, e))? {
                            (p, Row::Reference { tid, ttype, .. })
                                if p == param
                                    && !tid.is_empty()
                                    && !ttype.is_empty()
                                    && !targets.iter().any(|(t, i)| t == ttype && i == tid) =>
                            {
                                targets.push((ttype.to_string(), tid.to_string()));
                            }
                            _ => {}
                        }
                    }
                    for (tty, tid) in targets {
                        if spec.target_type.as_deref().is_some_and(|t| t != tty) {
                            continue;
                        }
                        if let Some(rec) = fetch.query_row(params![tty, tid], record_from_row).optional()? {
                            out.push(rec);
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        let mut where_sql = String::from("1 = 1");
        let mut args: Vec<SqlArg> = Vec::new();
        match &query.scope {
            HistoryScope::System => {}
            HistoryScope::Type(t) => {
                args.push(SqlArg::Text(t.clone()));
                where_sql.push_str(&format!(" AND r.rtype = ?{}", args.len()));
            }
            HistoryScope::Instance(t, id) => {
                args.push(SqlArg::Text(t.clone()));
                where_sql.push_str(&format!(" AND r.rtype = ?{}", args.len()));
                args.push(SqlArg::Text(id.clone()));
                where_sql.push_str(&format!(" AND r.id = ?{}", args.len()));
            }
        }
        if let Some(since) = query.since {
            args.push(SqlArg::Int(since));
            where_sql.push_str(&format!(" AND v.last_updated_ms >= ?{}", args.len()));
        }
        if let Some(before) = query.before {
            args.push(SqlArg::Int(before));
            where_sql.push_str(&format!(" AND v.last_updated_ms <= ?{}", args.len()));
        }
        let count_sql = format!(
            "SELECT COUNT(*) FROM version v JOIN resource r ON r.rid = v.rid WHERE {where_sql}"
        );
        let count_args = args.clone();
        args.push(SqlArg::Int(query.count as i64));
        let limit_at = args.len();
        args.push(SqlArg::Int(query.offset as i64));
        let select_sql = format!(
            "SELECT {RECORD_COLUMNS} FROM version v JOIN resource r ON r.rid = v.rid WHERE {where_sql}
             ORDER BY v.seq DESC LIMIT ?{limit_at} OFFSET ?{}",
            limit_at + 1
        );
        self.with_reader(|c| {
            let total = c
                .prepare_cached(&count_sql)?
                .query_row(to_sql_args(&count_args).as_slice(), |r| r.get::<_, i64>(0))?
                as u64;
            let versions = c
                .prepare_cached(&select_sql)?
                .query_map(to_sql_args(&args).as_slice(), record_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(HistoryPage { versions, total })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_dropped_unanswered_answers_closed() {
        let (reply, reply_to) = Reply::pair();
        let waiter = std::thread::spawn(move || reply.wait());
        drop(reply_to);
        assert!(matches!(
            waiter.join().expect("waiter"),
            Err(StoreError::Closed)
        ));
        let (reply, reply_to) = Reply::pair();
        reply_to.send(Ok(()));
        assert!(reply.wait().is_ok());
    }

    /// Cached statements stay prepared across executions with different values (see
    /// `tune_cache`): re-preparing on every execution cost a fifth of a read's CPU.
    #[test]
    fn cached_statements_are_not_reprepared() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.sqlite");
        let store = SqliteStore::open(&path, SqliteOptions::default()).expect("store");
        drop(store);
        let conn = Connection::open(&path).expect("open");
        tune_cache(&conn).expect("tuned");
        conn.execute_batch(
            "INSERT INTO resource (rid, rtype, id, version, seq, deleted, last_updated_ms) VALUES (1, 'Patient', 'a', 1, 1, 0, 0), (2, 'Patient', 'b', 1, 2, 0, 0);
             INSERT INTO version (seq, rid, version, last_updated, last_updated_ms, method, hash, content)
             VALUES (1, 1, 1, 't', 0, 'POST', 'h', x'7b7d'), (2, 2, 1, 't', 0, 'POST', 'h', x'7b7d');
             INSERT INTO param (pid, key) VALUES (1, 'Patient.family');
             INSERT INTO ix_string (param, norm, exact, rid) VALUES (1, 'alpha', 'Alpha', 1), (1, 'beta', 'Beta', 2);",
        )
        .expect("rows");
        // A join of the two tables, as search pages select them: without the planner
        // setting in `tune_cache` this one is re-prepared on every execution.
        let join = format!(
            "SELECT {RECORD_COLUMNS} FROM resource r JOIN version v ON v.seq = r.seq WHERE r.rtype = ?1 AND r.id = ?2"
        );
        for (sql, params) in [
            (READ_CURRENT, vec!["Patient", "a", "Patient", "b"]),
            (READ_VERSION, vec!["Patient", "a", "Patient", "b"]),
            (join.as_str(), vec!["Patient", "a", "Patient", "b"]),
        ] {
            for round in 0..4 {
                let mut stmt = conn.prepare_cached(sql).expect("prepare");
                let id = params[1 + 2 * (round % 2)];
                let record = if sql == READ_VERSION {
                    stmt.query_row(rusqlite::params!["Patient", id, 1i64], record_from_row)
                } else {
                    stmt.query_row(rusqlite::params!["Patient", id], record_from_row)
                }
                .expect("row");
                assert_eq!(record.id, id);
                assert_eq!(record.resource_type, "Patient");
            }
            let stmt = conn.prepare_cached(sql).expect("prepare");
            assert_eq!(
                stmt.get_status(rusqlite::StatementStatus::RePrepare),
                0,
                "{sql}"
            );
        }
        // A search page: a join, a range and an IN-subquery, as `sql_query` builds them.
        let search = format!(
            "SELECT {RECORD_COLUMNS} FROM resource r JOIN version v ON v.seq = r.seq
             WHERE r.rtype = ?1 AND r.deleted = 0 AND r.rid IN (SELECT rid FROM ix_string
             WHERE param = (SELECT pid FROM param WHERE key = ?2) AND norm >= ?3 AND norm < ?4)
             ORDER BY r.rid LIMIT ?5 OFFSET ?6"
        );
        for family in ["a", "b", "c", "d"] {
            let mut stmt = conn.prepare_cached(&search).expect("prepare");
            let end = format!("{family}z");
            let rows = stmt
                .query_map(
                    rusqlite::params!["Patient", "Patient.family", family, end, 10i64, 0i64],
                    record_from_row,
                )
                .expect("query")
                .count();
            assert!(rows <= 1);
        }
        let stmt = conn.prepare_cached(&search).expect("prepare");
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }
}
