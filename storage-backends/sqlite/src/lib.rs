//! SQLite persistence: one file per deployment, WAL mode, and group commit.
//!
//! All writes go through one writer thread that owns the only write connection. It drains every
//! commit waiting in its queue into one SQLite transaction, so concurrent commits share one
//! fsync; each commit is acknowledged only after that transaction is durable
//! (`synchronous=FULL`). Reads run on a small pool of read-only connections on tokio's blocking
//! threads, and never wait for the writer (WAL readers see the last durable state).
//!
//! Layout: `documents(table_id, id, ts, value)` and `index_entries(index_id, key, ts, doc_table,
//! doc_id)`, both keyed by (key…, ts) so a snapshot read is a range scan that keeps, per key, the
//! newest revision at or before the read timestamp. `meta` holds the newest timestamp, the
//! catalog and pruning progress, so opening a file reads no documents.
//!
//! By default group commits are made durable in a commit log, a second SQLite file beside the
//! deployment's (`<file>-commits`), and copied into the tables later in the background; see
//! `materialize.rs`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use async_trait::async_trait;
use kiln_persistence::{
    CommitRecord, DocumentRevision, IndexId, KeyRange, Order, Persistence, PersistenceError, RecoveredState, Result,
    ScanHit, StepResult, Timestamp,
};
use kiln_value::{DocumentId, InternalId, TableNumber};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, params};
use tokio::sync::oneshot;

mod checkpoint;
mod commit_log;
mod materialize;
mod reopen;
pub use checkpoint::CheckpointStats;
use checkpoint::Checkpointing;
use materialize::{Gathering, Materializer, MaterializerMsg, Overlay, ScanSource, ScanView};

/// Where deployments' files live unless configured otherwise.
pub const DEFAULT_DATA_DIR: &str = "kiln-data";

/// Opens each deployment's SQLite file under a data directory.
#[derive(Clone, Debug)]
pub struct SqliteFactory {
    /// Where the files live.
    pub data_dir: PathBuf,
    /// How every file is opened.
    pub options: SqliteOptions,
}

#[async_trait]
impl kiln_persistence::PersistenceFactory for SqliteFactory {
    async fn open(&self, name: &str) -> Result<Arc<dyn Persistence>> {
        let (dir, name, options) = (self.data_dir.clone(), name.to_owned(), self.options.clone());
        // Opening replays the commit log: file I/O, off the reactor.
        let reopen_options = options.clone();
        let opened = tokio::task::spawn_blocking(move || SqlitePersistence::open_in_dir(&dir, &name, options))
            .await
            .map_err(storage)??;
        if opened.read_only.as_ref().is_some_and(|r| r.retry) {
            return Ok(Arc::new(reopen::Reopening::new(opened, reopen_options)));
        }
        Ok(Arc::new(opened))
    }
}

/// The system call the bundled SQLite makes a commit durable with: `fdatasync` when it was built
/// with `HAVE_FDATASYNC` (the workspace's `.cargo/config.toml` sets it), else `fsync`.
pub fn sync_call() -> &'static str {
    sync_call_of(option_env!("LIBSQLITE3_FLAGS").unwrap_or_default())
}

/// The sync call of a SQLite compiled with `flags` (`-DHAVE_FDATASYNC` alone defines it as 1).
fn sync_call_of(flags: &str) -> &'static str {
    let defined = flags.split_whitespace().any(|f| matches!(f, "-DHAVE_FDATASYNC" | "-DHAVE_FDATASYNC=1"));
    if defined { "fdatasync" } else { "fsync" }
}

/// The on-disk format version, kept in SQLite's `user_version`. Version 1 (no commit log) is
/// upgraded on open; a version-1 program refuses a version-2 file, whose log it would ignore.
/// Version 2 records `meta.materialized_ts`.
const FORMAT_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS documents (
    table_id INTEGER NOT NULL,
    id BLOB NOT NULL,
    ts INTEGER NOT NULL,
    value BLOB,
    PRIMARY KEY (table_id, id, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS documents_by_ts ON documents (ts);
CREATE TABLE IF NOT EXISTS index_entries (
    index_id INTEGER NOT NULL,
    key BLOB NOT NULL,
    ts INTEGER NOT NULL,
    doc_table INTEGER,
    doc_id BLOB,
    PRIMARY KEY (index_id, key, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS index_entries_by_ts ON index_entries (ts);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    int_value INTEGER,
    blob_value BLOB
) WITHOUT ROWID;
";

/// Tunables of the SQLite backend.
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// Read connections kept open for reuse.
    pub reader_connections: usize,
    /// SQLite page cache per connection, in KiB.
    pub cache_kib: u32,
    /// Most commits written in one durable transaction.
    pub max_batch: usize,
    /// How long opening waits for another holder of the file lock to let go.
    pub lock_timeout: std::time::Duration,
    /// Whether commits wait for fsync (`synchronous=FULL`). Turning this off loses durability
    /// on power failure (not on a process crash); it exists for benchmarks' comparisons.
    pub durable: bool,
    /// Pages the WAL grows to before it is copied into the database file (what SQLite calls
    /// `wal_autocheckpoint`; the WAL file is also trimmed to this size after a checkpoint).
    /// A page rewritten by many commits is copied once per checkpoint, so a longer WAL costs
    /// less per commit: 16384 instead of SQLite's 1000 gave ~15 % more transfers/s.
    pub checkpoint_pages: u32,
    /// Whether a thread of its own copies the WAL into the file while the writer goes on
    /// committing; if not, the writer checkpoints between transactions (SQLite's default).
    pub background_checkpoint: bool,
    /// Whether group commits go to the commit log first (see `materialize.rs`); if not, each
    /// is written into the documents' and index entries' tables directly.
    pub commit_log: bool,
    /// Logged commits that make the materializer copy them, whatever else happens.
    pub materialize_commits: usize,
    /// Bytes of logged commits that make the materializer copy them; four times as many
    /// waiting make new group commits wait for it.
    pub materialize_bytes: usize,
    /// How long the materializer waits for more commits before copying what it has.
    pub materialize_idle: std::time::Duration,
    /// Page cache of the connection that copies commits into the tables, in KiB (it rewrites
    /// the hot leaves of thousands of commits at a time).
    pub materialize_cache_kib: u32,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            reader_connections: 4,
            cache_kib: 2048,
            max_batch: 2048,
            lock_timeout: std::time::Duration::from_secs(2),
            durable: true,
            checkpoint_pages: 16384,
            background_checkpoint: true,
            commit_log: true,
            materialize_commits: 4096,
            materialize_bytes: 16 << 20,
            materialize_idle: std::time::Duration::from_millis(20),
            materialize_cache_kib: 32768,
        }
    }
}

pub(crate) enum WriterMsg {
    Commit(CommitRecord, oneshot::Sender<Result<()>>),
    Backfill(IndexId, Timestamp, Vec<(Vec<u8>, DocumentId)>, oneshot::Sender<Result<()>>),
    DeleteIndex(IndexId, usize, oneshot::Sender<Result<StepResult>>),
    Prune(Timestamp, usize, oneshot::Sender<Result<StepResult>>),
    Materialize(oneshot::Sender<Result<()>>),
}

struct Shared {
    path: PathBuf,
    /// How read connections open the file: normally, or (storage that cannot be written)
    /// read-only with SQLite's `mode=ro` or, without a WAL to read, `immutable=1`.
    reads: ReadMode,
    options: SqliteOptions,
    readers: Mutex<Vec<Connection>>,
    checkpoints: Arc<CheckpointStats>,
}

/// A deployment's persistence in one SQLite file (and its commit log).
pub struct SqlitePersistence {
    shared: Arc<Shared>,
    writer_tx: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    /// The materializer, when commits go through the log: reads that need logged commits in
    /// the tables ask it directly, not behind the writer's queued commits.
    materializer: Option<Arc<Materializer>>,
    /// Set when opened read-only (the storage cannot be written).
    read_only: Option<ReadOnly>,
    /// The newest commit the log held when opened that the tables lacked (a full disk kept it
    /// from being copied), and the newest catalog among those commits.
    log_tail: Option<(Timestamp, Option<Vec<u8>>)>,
    writer: Mutex<Option<JoinHandle<()>>>,
    // Held for the lifetime of the instance: a second opener gets `Locked`.
    _lock: Option<File>,
}

/// A file served read-only.
struct ReadOnly {
    /// Why it could not be opened for writing.
    why: String,
    /// The logged commits the tables lack (reads merge them in).
    overlay: Overlay,
    /// Whether opening for writing may work later (a full disk, not a read-only one).
    retry: bool,
}

/// How connections open a file that cannot be written.
#[derive(Copy, Clone, Debug, PartialEq)]
enum ReadMode {
    Normal,
    ReadOnly,
    Immutable,
}

/// A storage error; full-disk and read-only errors (SQLite's or the file system's) get codes
/// of their own.
pub(crate) fn storage(e: impl std::fmt::Display + 'static) -> PersistenceError {
    let any = &e as &dyn std::any::Any;
    let code = any.downcast_ref::<rusqlite::Error>().and_then(rusqlite::Error::sqlite_error_code);
    let io = any.downcast_ref::<std::io::Error>().map(std::io::Error::kind);
    use std::io::ErrorKind as Io;
    match (code, io) {
        (Some(rusqlite::ErrorCode::DiskFull), _) | (_, Some(Io::StorageFull)) => PersistenceError::Full(e.to_string()),
        (Some(rusqlite::ErrorCode::ReadOnly), _) | (_, Some(Io::ReadOnlyFilesystem | Io::PermissionDenied)) => {
            PersistenceError::ReadOnly(e.to_string())
        }
        _ => PersistenceError::Storage(e.to_string()),
    }
}

fn corrupt(what: impl Into<String>) -> PersistenceError {
    PersistenceError::Corrupt(what.into())
}

pub(crate) fn ts_to_sql(ts: Timestamp) -> Result<i64> {
    i64::try_from(ts.0).map_err(|_| storage(format!("timestamp {ts} out of range")))
}

pub(crate) fn ts_from_sql(v: i64) -> Result<Timestamp> {
    u64::try_from(v).map(Timestamp).map_err(|_| corrupt(format!("negative timestamp {v}")))
}

fn doc_id_from_sql(table: i64, id: &[u8]) -> Result<DocumentId> {
    let table = u32::try_from(table).map_err(|_| corrupt(format!("bad table number {table}")))?;
    let internal: [u8; 16] = id.try_into().map_err(|_| corrupt("document id is not 16 bytes"))?;
    Ok(DocumentId::new(TableNumber(table), InternalId(internal)))
}

impl SqlitePersistence {
    /// Opens (creating if needed) the file of deployment `name` under `data_dir`.
    pub fn open_in_dir(data_dir: &Path, name: &str, options: SqliteOptions) -> Result<Self> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(storage(format!("invalid deployment name {name:?}: use 1-64 of [A-Za-z0-9_-]")));
        }
        std::fs::create_dir_all(data_dir).map_err(storage)?;
        Self::open(&data_dir.join(format!("{name}.sqlite3")), options)
    }

    /// Opens (creating if needed) the SQLite file at `path`. When the storage cannot be written
    /// (a read-only or full file system) an existing file is opened read-only: reads work,
    /// writes fail with `StorageReadOnly`.
    pub fn open(path: &Path, options: SqliteOptions) -> Result<Self> {
        let (why, retry) = match Self::open_writable(path, options.clone()) {
            Err(PersistenceError::ReadOnly(why)) if path.exists() => (why, false),
            // A full disk fails SQLite in several ways (creating a WAL index is an I/O error).
            Err(PersistenceError::Full(why) | PersistenceError::Storage(why)) if path.exists() => (why, true),
            other => return other,
        };
        tracing::warn!(path = %path.display(), error = %why, "the SQLite file cannot be written: serving it read-only");
        Self::open_read_only(path, options, why, retry)
    }

    /// Whether this instance was opened read-only, and why.
    pub fn read_only_reason(&self) -> Option<&str> {
        self.read_only.as_ref().map(|r| r.why.as_str())
    }

    fn open_read_only(path: &Path, options: SqliteOptions, why: String, retry: bool) -> Result<Self> {
        // A shared lock where the lock file exists (it cannot be created here). An instance
        // that will try to open the file for writing again takes none: it reads only, and the
        // writable instance that replaces it takes the exclusive lock.
        let lock = if retry { None } else { File::open(path.with_extension("lock")).ok() };
        if let Some(l) = &lock
            && l.try_lock_shared().is_err()
        {
            return Err(PersistenceError::Locked(path.display().to_string()));
        }
        let (conn, reads) = open_unwritable(path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(storage)?;
        if !(1..=FORMAT_VERSION).contains(&version) {
            return Err(corrupt(format!("unsupported file format version {version} (expected {FORMAT_VERSION})")));
        }
        // Commits logged but not copied into the tables yet are read from the log.
        let overlay = Overlay::new();
        let mut log_tail = None;
        let log_path = materialize::log_path(path);
        if log_path.exists() {
            let (log, _) = open_unwritable(&log_path)?;
            let done = meta_int(&conn, "materialized_ts")?.map(ts_from_sql).transpose()?.unwrap_or_default();
            let records = materialize::logged_after(&log, done)?;
            overlay.add(&records);
            log_tail = tail_of(&records);
        }
        drop(conn);
        Ok(SqlitePersistence {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                reads,
                options,
                readers: Mutex::new(Vec::new()),
                checkpoints: Arc::new(CheckpointStats::default()),
            }),
            writer_tx: Mutex::new(None),
            materializer: None,
            read_only: Some(ReadOnly { why, overlay, retry }),
            log_tail,
            writer: Mutex::new(None),
            _lock: lock,
        })
    }

    pub(crate) fn open_writable(path: &Path, options: SqliteOptions) -> Result<Self> {
        let lock_path = path.with_extension("lock");
        let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(storage)?;
        // The lock can be held for a moment by a process forked elsewhere in this program
        // (between fork and exec it shares our descriptors), so wait a little before giving up.
        let deadline = std::time::Instant::now() + options.lock_timeout;
        while lock.try_lock().is_err() {
            if std::time::Instant::now() >= deadline {
                return Err(PersistenceError::Locked(path.display().to_string()));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }

        let conn = Connection::open(path).map_err(storage)?;
        configure(&conn, &options)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(storage)?;
        let fresh: bool = conn
            .query_row("SELECT count(*) = 0 FROM sqlite_master WHERE name = 'documents'", [], |r| r.get(0))
            .map_err(storage)?;
        if !fresh && !(1..=FORMAT_VERSION).contains(&version) {
            return Err(corrupt(format!("unsupported file format version {version} (expected {FORMAT_VERSION})")));
        }
        if fresh || version != FORMAT_VERSION {
            // Writes: a file already current is opened without any (so also on a full disk).
            conn.execute_batch(SCHEMA).map_err(storage)?;
            conn.pragma_update(None, "user_version", FORMAT_VERSION).map_err(storage)?;
        }
        let mut conn = conn;
        let log_path = materialize::log_path(path);
        // A log left by a run that used it is replayed even if this one does not.
        let mut log = None;
        let mut uncopied = Vec::new();
        let mut log_tail = None;
        if options.commit_log || log_path.exists() {
            let mut l = Connection::open(&log_path).map_err(storage)?;
            configure(&l, &log_options(&options))?;
            let _ = materialize::drop_lookaside(&l);
            l.execute_batch(materialize::LOG_SCHEMA).map_err(storage)?;
            let (replayed, left) = materialize::replay(&mut conn, &mut l)?;
            if replayed > 0 {
                tracing::info!(path = %path.display(), commits = replayed, "materialized the commit log");
            }
            if !left.is_empty() && !options.commit_log {
                return Err(PersistenceError::Full(format!("{}: the commit log cannot be copied", path.display())));
            }
            log_tail = tail_of(&left);
            uncopied = left;
            log = options.commit_log.then_some(l);
        }

        tracing::debug!(path = %path.display(), sync = sync_call(), "opened SQLite file");
        let (tx, rx) = mpsc::channel();
        let max_batch = options.max_batch.max(1);
        let checkpoints = Arc::new(CheckpointStats::default());
        let mut materializer = None;
        let writer = match log {
            Some(log) => {
                let (m, writer) = spawn_log_writer(path, &options, (conn, log), checkpoints.clone(), rx)?;
                if !uncopied.is_empty() {
                    // Still logged: the materializer copies them once there is room.
                    m.overlay.add(&uncopied);
                    m.submit(MaterializerMsg::Commits(uncopied));
                }
                materializer = Some(m);
                writer
            }
            None => {
                let writer_path = path.to_owned();
                let (writer_options, writer_stats) = (options.clone(), checkpoints.clone());
                std::thread::Builder::new()
                    .name("kiln-sqlite-writer".into())
                    .spawn(move || {
                        // The hook that watches the WAL records into this thread's state, so
                        // it is installed here.
                        match Checkpointing::install(&conn, &writer_path, &writer_options, writer_stats) {
                            Ok(ckpt) => writer_loop(conn, ckpt, rx, max_batch),
                            Err(e) => tracing::error!(error = %e, "SQLite writer could not start"),
                        }
                    })
                    .map_err(storage)?
            }
        };
        Ok(SqlitePersistence {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                reads: ReadMode::Normal,
                options,
                readers: Mutex::new(Vec::new()),
                checkpoints,
            }),
            writer_tx: Mutex::new(Some(tx)),
            materializer,
            read_only: None,
            log_tail,
            writer: Mutex::new(Some(writer)),
            _lock: Some(lock),
        })
    }

    /// The path of the SQLite file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// How many WAL checkpoints ran, and where.
    pub fn checkpoint_stats(&self) -> &CheckpointStats {
        &self.shared.checkpoints
    }

    /// How many group commits waited because too many bytes of logged commits were not yet
    /// copied into the tables (always 0 without the commit log).
    pub fn commits_waited_for_copies(&self) -> u64 {
        self.materializer.as_ref().map_or(0, |m| m.overlay.waits.load(std::sync::atomic::Ordering::Relaxed))
    }

    async fn send<T: Send + 'static>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> WriterMsg) -> Result<T> {
        if let Some(r) = &self.read_only {
            let why = format!("served read-only since it was opened ({})", r.why);
            // Opened read-only for want of space (or after a failure): the disk's fault.
            return Err(if r.retry { PersistenceError::Full(why) } else { PersistenceError::ReadOnly(why) });
        }
        let (reply, rx) = oneshot::channel();
        {
            let guard = self.writer_tx.lock();
            let tx = guard.as_ref().ok_or(PersistenceError::Closed)?;
            tx.send(make(reply)).map_err(|_| PersistenceError::Closed)?;
        }
        rx.await.map_err(|_| PersistenceError::Closed)?
    }

    /// Has the materializer catch up if a scan at `ts` could need a logged commit.
    async fn settle(&self, ts: Timestamp) -> Result<()> {
        if self.materializer.as_ref().is_some_and(|m| m.overlay.covers(ts)) {
            self.materialize_now().await?;
        }
        Ok(())
    }

    /// Has the materializer catch up for a scan of `range` at `ts`. When it cannot (its copy
    /// fails: a full disk), the overlay's part of the scan instead, for the scan to merge with
    /// what the tables hold, so that reads keep working.
    async fn settle_or_view(&self, ts: Timestamp, source: ScanSource, range: &KeyRange) -> Result<Option<ScanView>> {
        if let Some(ReadOnly { overlay, .. }) = &self.read_only {
            // Nothing can copy the log's commits: they are always merged in.
            return Ok(overlay.covers(ts).then(|| overlay.scan_view(source, range, ts)));
        }
        match self.settle(ts).await {
            Ok(()) => Ok(None),
            Err(e) => match &self.materializer {
                Some(m) if m.overlay.covers(ts) && e.leaves_storage_intact() => {
                    tracing::warn!(error = %e, "the commit log cannot be copied; scanning it beside the tables");
                    Ok(Some(m.overlay.scan_view(source, range, ts)))
                }
                _ => Err(e),
            },
        }
    }

    /// Has the materializer copy every acknowledged commit into the tables.
    async fn materialize_now(&self) -> Result<()> {
        let Some(m) = &self.materializer else { return Ok(()) };
        let (reply, rx) = oneshot::channel();
        m.submit(MaterializerMsg::Writer(WriterMsg::Materialize(reply)));
        rx.await.map_err(|_| PersistenceError::Closed)?
    }

    async fn read<T: Send + 'static>(&self, f: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let shared = self.shared.clone();
        let read = move || {
            let conn = shared.readers.lock().pop();
            let conn = match conn {
                Some(c) => c,
                None => open_reader(&shared.path, shared.reads, &shared.options)?,
            };
            let result = f(&conn);
            let mut pool = shared.readers.lock();
            if pool.len() < shared.options.reader_connections {
                pool.push(conn);
            }
            result
        };
        // A call's worker waits for the read either way: two thread hand-offs saved per read.
        if kiln_persistence::blocking_reads_allowed() {
            return read();
        }
        tokio::task::spawn_blocking(read).await.map_err(|e| storage(format!("read task failed: {e}")))?
    }
}

impl Drop for SqlitePersistence {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what it has queued, then exit.
        self.writer_tx.lock().take();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

fn configure(conn: &Connection, options: &SqliteOptions) -> Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL").map_err(storage)?;
    conn.pragma_update(None, "synchronous", if options.durable { "FULL" } else { "OFF" }).map_err(storage)?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib)).map_err(storage)?;
    conn.pragma_update(None, "mmap_size", 0).map_err(storage)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
    let pages = options.checkpoint_pages.max(1);
    conn.pragma_update(None, "wal_autocheckpoint", pages).map_err(storage)?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(storage)?;
    conn.pragma_update(None, "journal_size_limit", i64::from(pages) * page_size).map_err(storage)?;
    Ok(())
}

fn open_reader(path: &Path, mode: ReadMode, options: &SqliteOptions) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = match mode {
        ReadMode::Normal => Connection::open_with_flags(path, flags),
        ReadMode::ReadOnly => Connection::open_with_flags(file_uri(path, "mode=ro"), flags),
        ReadMode::Immutable => Connection::open_with_flags(file_uri(path, "immutable=1"), flags),
    }
    .map_err(storage)?;
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib)).map_err(storage)?;
    conn.pragma_update(None, "mmap_size", 0).map_err(storage)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(storage)?;
    Ok(conn)
}

/// The newest of logged `records`, and the newest catalog among them.
fn tail_of(records: &[CommitRecord]) -> Option<(Timestamp, Option<Vec<u8>>)> {
    records.last().map(|last| (last.ts, records.iter().rev().find_map(|r| r.catalog.clone())))
}

/// A `file:` URI for `path` with `query`.
fn file_uri(path: &Path, query: &str) -> String {
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    format!("{uri}?{query}")
}

/// Opens a file whose storage cannot be written: read-only (SQLite reads its WAL with the
/// `-shm` file as it is), else, when it has no WAL to read, as an immutable file.
fn open_unwritable(path: &Path) -> Result<(Connection, ReadMode)> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let check = |conn: Connection| -> rusqlite::Result<Connection> {
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))?;
        Ok(conn)
    };
    let first = Connection::open_with_flags(file_uri(path, "mode=ro"), flags).and_then(check);
    match first {
        Ok(conn) => Ok((conn, ReadMode::ReadOnly)),
        Err(e) => {
            let mut wal = path.as_os_str().to_owned();
            wal.push("-wal");
            let wal_len = std::fs::metadata(std::path::PathBuf::from(wal)).map_or(0, |m| m.len());
            if wal_len > 0 {
                // Commits in the WAL would be missing from an immutable view.
                return Err(storage(format!("{}: cannot read the file and its WAL read-only: {e}", path.display())));
            }
            let conn =
                Connection::open_with_flags(file_uri(path, "immutable=1"), flags).and_then(check).map_err(storage)?;
            Ok((conn, ReadMode::Immutable))
        }
    }
}

/// The commit log file's options: its WAL is checkpointed at SQLite's usual length, by the
/// writer (the log's pages are few and hot, so a checkpoint copies little however long the WAL).
fn log_options(options: &SqliteOptions) -> SqliteOptions {
    SqliteOptions { checkpoint_pages: options.checkpoint_pages.min(1000), ..options.clone() }
}

/// Makes the materializer of the deployment's file `conn` and starts the writer thread,
/// owning the log file `log`.
fn spawn_log_writer(
    path: &Path,
    options: &SqliteOptions,
    (conn, log): (Connection, Connection),
    stats: Arc<CheckpointStats>,
    rx: mpsc::Receiver<WriterMsg>,
) -> Result<(Arc<Materializer>, JoinHandle<()>)> {
    conn.pragma_update(None, "cache_size", -i64::from(options.materialize_cache_kib.max(options.cache_kib)))
        .map_err(storage)?;
    let gathering = Gathering {
        max_commits: options.materialize_commits.max(1),
        max_bytes: options.materialize_bytes.max(1),
        idle: options.materialize_idle,
    };
    let ckpt = Checkpointing::install(&conn, path, options, stats.clone())?;
    let materializer = Arc::new(Materializer::new(conn, ckpt, gathering));
    let (log_path, log_options, max_batch) =
        (materialize::log_path(path), log_options(options), options.max_batch.max(1));
    let m = materializer.clone();
    let writer = std::thread::Builder::new()
        .name("kiln-sqlite-writer".into())
        .spawn(move || match Checkpointing::install(&log, &log_path, &log_options, stats) {
            Ok(ckpt) => materialize::log_writer_loop(log, ckpt, m, rx, max_batch),
            Err(e) => tracing::error!(error = %e, "SQLite writer could not start"),
        })
        .map_err(storage)?;
    Ok((materializer, writer))
}

/// Carries out maintenance message `msg` on the deployment's file `conn`, unless `ready`
/// (whether what came before it is in the tables) says it cannot.
fn maintain(conn: &mut Connection, msg: WriterMsg, ready: Result<()>) {
    match msg {
        WriterMsg::Commit(record, reply) => {
            let _ = reply.send(ready.and_then(|()| write_batch(conn, std::iter::once(&record))));
        }
        WriterMsg::Backfill(index, ts, entries, reply) => {
            let _ = reply.send(ready.and_then(|()| write_index_entries(conn, index, ts, &entries)));
        }
        WriterMsg::DeleteIndex(index, max_rows, reply) => {
            let _ = reply.send(ready.and_then(|()| delete_index_entries(conn, index, max_rows)));
        }
        WriterMsg::Prune(cutoff, max_rows, reply) => {
            let _ = reply.send(ready.and_then(|()| prune_step(conn, cutoff, max_rows)));
        }
        WriterMsg::Materialize(reply) => {
            let _ = reply.send(ready);
        }
    }
}

/// A group commit: `first` and the commits queued behind it, up to `max_batch`; the first
/// other message met is left in `next`.
pub(crate) fn gather_batch(
    first: (CommitRecord, oneshot::Sender<Result<()>>),
    rx: &mpsc::Receiver<WriterMsg>,
    max_batch: usize,
    next: &mut Option<WriterMsg>,
) -> Vec<(CommitRecord, oneshot::Sender<Result<()>>)> {
    let mut batch = vec![first];
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(WriterMsg::Commit(r, s)) => batch.push((r, s)),
            Ok(other) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

fn writer_loop(mut conn: Connection, mut ckpt: Checkpointing, rx: mpsc::Receiver<WriterMsg>, max_batch: usize) {
    let mut next: Option<WriterMsg> = None;
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        match msg {
            WriterMsg::Commit(record, reply) => {
                let batch = crate::gather_batch((record, reply), &rx, max_batch, &mut next);
                let span = tracing::debug_span!("sqlite_group_commit", commits = batch.len());
                let _enter = span.enter();
                let result = write_batch(&mut conn, batch.iter().map(|(r, _)| r));
                if let Err(e) = &result {
                    tracing::error!(error = %e, "group commit failed");
                }
                for (_, reply) in batch {
                    let _ = reply.send(result.clone());
                }
            }
            other => maintain(&mut conn, other, Ok(())),
        }
        ckpt.after_transaction(&conn);
    }
    // The checkpointer's connection closes first, so the writer's, the last one, copies what
    // is left of the WAL into the file and removes it.
    drop(ckpt);
    drop(conn);
}

/// Writes `records` into the tables in one transaction.
fn write_batch<'a>(conn: &mut Connection, records: impl Iterator<Item = &'a CommitRecord>) -> Result<()> {
    let tx = conn.transaction().map_err(storage)?;
    write_records(&tx, records)?;
    tx.commit().map_err(storage)
}

/// Writes `records`' documents, index entries, newest timestamp and catalog in `tx`.
pub(crate) fn write_records<'a>(tx: &Transaction, records: impl Iterator<Item = &'a CommitRecord>) -> Result<()> {
    let mut max_ts = None;
    let mut catalog = None;
    {
        let mut put_doc = tx
            .prepare_cached("INSERT OR REPLACE INTO documents (table_id, id, ts, value) VALUES (?1, ?2, ?3, ?4)")
            .map_err(storage)?;
        let mut put_index = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO index_entries (index_id, key, ts, doc_table, doc_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(storage)?;
        for record in records {
            let ts = ts_to_sql(record.ts)?;
            for (id, value) in &record.documents {
                put_doc.execute(params![id.table.0, &id.internal.0[..], ts, value]).map_err(storage)?;
            }
            for w in &record.indexes {
                let (table, doc) = match &w.doc {
                    Some(d) => (Some(d.table.0), Some(&d.internal.0[..])),
                    None => (None, None),
                };
                put_index.execute(params![w.index.0, &w.key, ts, table, doc]).map_err(storage)?;
            }
            if record.catalog.is_some() {
                catalog = record.catalog.as_ref();
            }
            max_ts = max_ts.max(Some(ts));
        }
    }
    if let Some(ts) = max_ts {
        tx.prepare_cached(
            "INSERT INTO meta (name, int_value) VALUES ('max_ts', ?1)
             ON CONFLICT (name) DO UPDATE SET int_value = max(int_value, excluded.int_value)",
        )
        .and_then(|mut s| s.execute(params![ts]))
        .map_err(storage)?;
    }
    if let Some(c) = catalog {
        tx.execute("INSERT OR REPLACE INTO meta (name, blob_value) VALUES ('catalog', ?1)", params![c])
            .map_err(storage)?;
    }
    Ok(())
}

fn set_meta_int(tx: &Transaction, name: &str, v: i64) -> Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (name, int_value) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![name, v]))
        .map(|_| ())
        .map_err(storage)
}

pub(crate) fn meta_int(conn: &Connection, name: &str) -> Result<Option<i64>> {
    conn.query_row("SELECT int_value FROM meta WHERE name = ?1", params![name], |r| r.get(0))
        .optional()
        .map_err(storage)
        .map(Option::flatten)
}

fn write_index_entries(
    conn: &mut Connection,
    index: IndexId,
    ts: Timestamp,
    entries: &[(Vec<u8>, DocumentId)],
) -> Result<()> {
    let ts = ts_to_sql(ts)?;
    let tx = conn.transaction().map_err(storage)?;
    {
        let mut put = tx
            .prepare_cached(
                "INSERT OR REPLACE INTO index_entries (index_id, key, ts, doc_table, doc_id) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .map_err(storage)?;
        for (key, doc) in entries {
            put.execute(params![index.0, key, ts, doc.table.0, &doc.internal.0[..]]).map_err(storage)?;
        }
    }
    tx.commit().map_err(storage)
}

fn delete_index_entries(conn: &Connection, index: IndexId, max_rows: usize) -> Result<StepResult> {
    let limit = i64::try_from(max_rows).unwrap_or(i64::MAX);
    let n = conn
        .execute(
            "DELETE FROM index_entries WHERE (index_id, key, ts) IN
               (SELECT index_id, key, ts FROM index_entries WHERE index_id = ?1 LIMIT ?2)",
            params![index.0, limit],
        )
        .map_err(storage)?;
    Ok(StepResult { rows_deleted: n as u64, done: n < max_rows })
}

/// One bounded pruning step: handles revisions with timestamps in `(progress, boundary]`,
/// where the boundary is chosen so that roughly `max_rows` revisions are examined.
fn prune_step(conn: &mut Connection, cutoff: Timestamp, max_rows: usize) -> Result<StepResult> {
    let cutoff = ts_to_sql(cutoff)?;
    let tx = conn.transaction().map_err(storage)?;
    let progress = meta_int(&tx, "pruned_up_to")?.unwrap_or(0);
    if progress >= cutoff {
        return Ok(StepResult { rows_deleted: 0, done: true });
    }
    let offset = i64::try_from(max_rows.max(1)).unwrap_or(i64::MAX);
    let boundary_of = |table: &str| -> Result<Option<i64>> {
        tx.query_row(
            &format!("SELECT ts FROM {table} WHERE ts > ?1 AND ts <= ?2 ORDER BY ts LIMIT 1 OFFSET ?3"),
            params![progress, cutoff, offset],
            |r| r.get(0),
        )
        .optional()
        .map_err(storage)
    };
    let boundary =
        [boundary_of("documents")?, boundary_of("index_entries")?].into_iter().flatten().min().unwrap_or(cutoff);
    let mut deleted = 0u64;
    for sql in [
        // Revisions superseded by a newer one inside the window…
        "DELETE FROM documents WHERE (table_id, id, ts) IN (
            SELECT d.table_id, d.id, d.ts FROM documents n
            JOIN documents d ON d.table_id = n.table_id AND d.id = n.id AND d.ts < n.ts
            WHERE n.ts > ?1 AND n.ts <= ?2)",
        // …and tombstones inside it, which no read at or after the cutoff needs.
        "DELETE FROM documents WHERE ts > ?1 AND ts <= ?2 AND value IS NULL",
        "DELETE FROM index_entries WHERE (index_id, key, ts) IN (
            SELECT d.index_id, d.key, d.ts FROM index_entries n
            JOIN index_entries d ON d.index_id = n.index_id AND d.key = n.key AND d.ts < n.ts
            WHERE n.ts > ?1 AND n.ts <= ?2)",
        "DELETE FROM index_entries WHERE ts > ?1 AND ts <= ?2 AND doc_id IS NULL",
    ] {
        deleted += tx.execute(sql, params![progress, boundary]).map_err(storage)? as u64;
    }
    set_meta_int(&tx, "pruned_up_to", boundary)?;
    tx.commit().map_err(storage)?;
    Ok(StepResult { rows_deleted: deleted, done: boundary >= cutoff })
}

/// Folds rows `(key, ts, payload)` ordered by key (and by ts within a key) into the newest
/// revision per key, keeping at most `limit` whose payload is live.
fn newest_per_key<P>(
    rows: impl Iterator<Item = Result<(Vec<u8>, i64, Option<P>)>>,
    limit: usize,
) -> Result<Vec<(Vec<u8>, i64, P)>> {
    let mut out = Vec::new();
    let mut current: Option<(Vec<u8>, i64, Option<P>)> = None;
    for row in rows {
        let (key, ts, payload) = row?;
        match &mut current {
            Some((k, best_ts, best)) if *k == key => {
                if ts > *best_ts {
                    *best_ts = ts;
                    *best = payload;
                }
            }
            _ => {
                if let Some((k, t, Some(p))) = current.take() {
                    out.push((k, t, p));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
                current = Some((key, ts, payload));
            }
        }
    }
    if let Some((k, t, Some(p))) = current
        && out.len() < limit
    {
        out.push((k, t, p));
    }
    Ok(out)
}

fn range_sql(base: &str, key_col: &str, tie_cols: &str, bounded: bool, order: Order) -> String {
    let upper = if bounded { format!(" AND {key_col} < ?4") } else { String::new() };
    let dir = match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    };
    format!("{base} AND {key_col} >= ?3{upper} ORDER BY {tie_cols} {dir}, ts {dir}")
}

fn get_document_sync(conn: &Connection, id: DocumentId, ts: Timestamp) -> Result<Option<DocumentRevision>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT ts, value FROM documents WHERE table_id = ?1 AND id = ?2 AND ts <= ?3 ORDER BY ts DESC LIMIT 1",
        )
        .map_err(storage)?;
    let row = stmt
        .query_row(params![id.table.0, &id.internal.0[..], ts_to_sql(ts)?], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<Vec<u8>>>(1)?))
        })
        .optional()
        .map_err(storage)?;
    row.map(|(t, value)| Ok(DocumentRevision { id, ts: ts_from_sql(t)?, value })).transpose()
}

#[async_trait]
impl Persistence for SqlitePersistence {
    async fn recover(&self) -> Result<RecoveredState> {
        if let Err(e) = self.materialize_now().await {
            // A full disk: the logged commits stay in the overlay, and the tail says how far.
            if !(e.leaves_storage_intact() && self.log_tail.is_some()) {
                return Err(e);
            }
        }
        self.read(|conn| {
            let max_ts = meta_int(conn, "max_ts")?.map(ts_from_sql).transpose()?.unwrap_or_default();
            let pruned_up_to = meta_int(conn, "pruned_up_to")?.map(ts_from_sql).transpose()?.unwrap_or_default();
            let catalog = conn
                .query_row("SELECT blob_value FROM meta WHERE name = 'catalog'", [], |r| r.get(0))
                .optional()
                .map_err(storage)?
                .flatten();
            Ok(RecoveredState { max_ts, catalog, pruned_up_to })
        })
        .await
        .map(|mut state| {
            // Logged commits not copied into the tables are newer than what the tables say.
            if let Some((ts, catalog)) = self.log_tail.clone() {
                state.max_ts = state.max_ts.max(ts);
                state.catalog = catalog.or(state.catalog);
            }
            state
        })
    }

    async fn commit(&self, record: CommitRecord) -> Result<()> {
        self.send(|reply| WriterMsg::Commit(record, reply)).await
    }

    async fn get_document(&self, id: DocumentId, ts: Timestamp) -> Result<Option<DocumentRevision>> {
        // Every commit newer than a logged revision is logged too, so the overlay's newest is
        // the newest; without one there, everything up to `ts` is in the tables.
        let overlay = match &self.read_only {
            Some(r) => Some(&r.overlay),
            None => self.materializer.as_ref().map(|m| &m.overlay),
        }
        .filter(|o| o.covers(ts));
        if let Some(revision) = overlay.and_then(|o| o.get(id, ts)) {
            return Ok(Some(revision));
        }
        self.read(move |conn| get_document_sync(conn, id, ts)).await
    }

    async fn scan_table(
        &self,
        table: TableNumber,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>> {
        let view = self.settle_or_view(ts, ScanSource::Table(table), range).await?;
        let requested = limit.saturating_add(view.as_ref().map_or(0, ScanView::len));
        let range = range.clone();
        let hits = self
            .read(move |conn| {
                let sql = range_sql(
                    "SELECT id, ts, value FROM documents WHERE table_id = ?1 AND ts <= ?2",
                    "id",
                    "id",
                    range.end.is_some(),
                    order,
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(storage)?;
                let ts_sql = ts_to_sql(ts)?;
                let map = |r: &rusqlite::Row| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<Vec<u8>>>(2)?))
                };
                let rows = match &range.end {
                    Some(end) => stmt.query_map(params![table.0, ts_sql, range.start, end], map),
                    None => stmt.query_map(params![table.0, ts_sql, range.start], map),
                }
                .map_err(storage)?;
                let live = newest_per_key(rows.map(|r| r.map_err(storage)), requested)?;
                live.into_iter()
                    .map(|(key, t, value)| {
                        let id = doc_id_from_sql(i64::from(table.0), &key)?;
                        Ok(ScanHit { key, revision: DocumentRevision { id, ts: ts_from_sql(t)?, value: Some(value) } })
                    })
                    .collect()
            })
            .await?;
        Ok(match view {
            Some(view) => view.merge(hits, requested, order, limit),
            None => hits,
        })
    }

    async fn scan_revisions(
        &self,
        table: TableNumber,
        since: Timestamp,
        until: Timestamp,
        after: Option<(Timestamp, InternalId)>,
        limit: usize,
    ) -> Result<Vec<DocumentRevision>> {
        // The log's commits are listed from the tables, so they must be copied there first.
        match &self.read_only {
            Some(r) if r.overlay.covers(until) => {
                return Err(storage("the revisions of commits not yet copied from the log cannot be listed read-only"));
            }
            Some(_) => {}
            None => self.settle(until).await?,
        }
        let (after_ts, after_id) = match after {
            Some((ts, id)) => (ts_to_sql(ts)?, id.0.to_vec()),
            None => (ts_to_sql(since)?, Vec::new()),
        };
        let (since, until) = (ts_to_sql(since)?, ts_to_sql(until)?);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT id, ts, value FROM documents WHERE ts > ?2 AND ts <= ?3 AND table_id = ?1 \
                     AND (ts > ?4 OR (ts = ?4 AND id > ?5)) ORDER BY ts, id LIMIT ?6",
                )
                .map_err(storage)?;
            let rows = stmt
                .query_map(params![table.0, since, until, after_ts, after_id, limit], |r| {
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<Vec<u8>>>(2)?))
                })
                .map_err(storage)?;
            let mut out = Vec::new();
            for row in rows {
                let (id, ts, value) = row.map_err(storage)?;
                out.push(DocumentRevision {
                    id: doc_id_from_sql(i64::from(table.0), &id)?,
                    ts: ts_from_sql(ts)?,
                    value,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn scan_index(
        &self,
        index: IndexId,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>> {
        let view = self.settle_or_view(ts, ScanSource::Index(index), range).await?;
        let requested = limit.saturating_add(view.as_ref().map_or(0, ScanView::len));
        let range = range.clone();
        let hits = self
            .read(move |conn| {
                let sql = range_sql(
                    "SELECT key, ts, doc_table, doc_id FROM index_entries WHERE index_id = ?1 AND ts <= ?2",
                    "key",
                    "key",
                    range.end.is_some(),
                    order,
                );
                let mut stmt = conn.prepare_cached(&sql).map_err(storage)?;
                let ts_sql = ts_to_sql(ts)?;
                let map = |r: &rusqlite::Row| {
                    let table: Option<i64> = r.get(2)?;
                    let doc: Option<Vec<u8>> = r.get(3)?;
                    Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?, table.zip(doc)))
                };
                let rows = match &range.end {
                    Some(end) => stmt.query_map(params![index.0, ts_sql, range.start, end], map),
                    None => stmt.query_map(params![index.0, ts_sql, range.start], map),
                }
                .map_err(storage)?;
                let live = newest_per_key(rows.map(|r| r.map_err(storage)), requested)?;
                let mut hits = Vec::with_capacity(live.len());
                for (key, _, (table, doc)) in live {
                    let id = doc_id_from_sql(table, &doc)?;
                    match get_document_sync(conn, id, ts)? {
                        Some(revision) if revision.value.is_some() => hits.push(ScanHit { key, revision }),
                        _ => return Err(corrupt(format!("index {} points at missing document {id:?}", index.0))),
                    }
                }
                Ok(hits)
            })
            .await?;
        Ok(match view {
            Some(view) => view.merge(hits, requested, order, limit),
            None => hits,
        })
    }

    async fn write_index_entries(
        &self,
        index: IndexId,
        ts: Timestamp,
        entries: Vec<(Vec<u8>, DocumentId)>,
    ) -> Result<()> {
        self.send(|reply| WriterMsg::Backfill(index, ts, entries, reply)).await
    }

    async fn delete_index_entries(&self, index: IndexId, max_rows: usize) -> Result<StepResult> {
        self.send(|reply| WriterMsg::DeleteIndex(index, max_rows, reply)).await
    }

    async fn prune(&self, cutoff: Timestamp, max_rows: usize) -> Result<StepResult> {
        self.send(|reply| WriterMsg::Prune(cutoff, max_rows, reply)).await
    }
}

#[cfg(test)]
mod tests {
    use super::sync_call_of;

    #[test]
    fn the_sync_call_follows_the_build_flags() {
        assert_eq!(sync_call_of(""), "fsync");
        assert_eq!(sync_call_of("-DSQLITE_X=1 -DHAVE_FDATASYNC=1"), "fdatasync");
        assert_eq!(sync_call_of("-DHAVE_FDATASYNC"), "fdatasync");
        assert_eq!(sync_call_of("-DHAVE_FDATASYNC=0"), "fsync");
    }
}
