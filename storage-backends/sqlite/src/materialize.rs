//! Group commits through a commit log in a file of its own, materialized in the background.
//!
//! The writer thread makes each group commit durable as one row of the log file's
//! `commit_log` (a few sequential pages and one `fdatasync`), instead of as the documents' and
//! index entries' rows (a random B-tree leaf per document, ~13 KiB of WAL per transfer). The
//! [`Materializer`] copies logged commits into the deployment's file many at a time, so a hot
//! leaf is written once per copy rather than once per group commit; being another file, it has
//! its own write lock and WAL, so copying never holds up a commit.
//!
//! The deployment's file records how far it has materialized (`meta.materialized_ts`, in the
//! same transaction); opening it copies whatever later commits the log holds, so a crash loses
//! nothing acknowledged. The writer deletes log rows already materialized as it appends.
//!
//! Reads: a point read of a commit not yet materialized is answered from the [`Overlay`] of
//! logged commits; a scan whose timestamp includes one has the materializer catch up first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use kiln_persistence::{
    CommitRecord, DocumentRevision, IndexId, IndexWrite, KeyRange, Order, Result, ScanHit, Timestamp,
};
use kiln_value::{DocumentId, TableNumber};
use parking_lot::{Condvar, Mutex};
use rusqlite::{Connection, params};

use crate::checkpoint::Checkpointing;
use crate::{WriterMsg, commit_log, meta_int, storage, ts_from_sql, ts_to_sql, write_records};

/// The log file's schema.
pub(crate) const LOG_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS commit_log (
    ts INTEGER PRIMARY KEY,
    records BLOB NOT NULL
) WITHOUT ROWID;
";

/// The log file of the deployment file at `path`.
pub(crate) fn log_path(path: &Path) -> std::path::PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push("-commits");
    path.with_file_name(name)
}

/// Turns off the log connection's lookaside allocator: its ~50 KiB per connection speed up
/// statements the log hardly runs, and every deployment, idle or not, would keep them.
pub(crate) fn drop_lookaside(log: &Connection) -> bool {
    // SAFETY: the handle is the open connection's own; a null buffer with zero slots asks
    // SQLite to free the lookaside memory, allowed while none of it is in use (no statement
    // is running here).
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            log.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            0 as std::ffi::c_int,
            0 as std::ffi::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "the commit log keeps its lookaside memory");
    }
    rc == rusqlite::ffi::SQLITE_OK
}

/// Logged commits not yet materialized: their document revisions by id, for point reads.
pub(crate) struct Overlay {
    inner: Mutex<OverlayInner>,
    /// Signalled when commits leave the overlay.
    drained: Condvar,
    /// The oldest commit timestamp in the overlay (`u64::MAX`: none). A read at an earlier
    /// timestamp needs nothing from it.
    oldest: AtomicU64,
    /// Group commits that had to wait for room (see `wait_for_room`).
    pub(crate) waits: AtomicU64,
}

/// A document's logged revisions, oldest first (`None`: deleted).
type Revisions = Vec<(Timestamp, Option<Arc<Vec<u8>>>)>;

/// What one logged commit wrote, to forget once it is materialized.
struct Logged {
    ts: Timestamp,
    docs: Vec<DocumentId>,
    /// Its index entries, read only by scans while the materializer cannot copy (kept as they
    /// came, so that commits pay no indexing for that rare case).
    indexes: Vec<IndexWrite>,
    bytes: usize,
}

#[derive(Default)]
struct OverlayInner {
    revisions: HashMap<DocumentId, Revisions>,
    /// Commits in timestamp order with what each wrote and its size.
    commits: VecDeque<Logged>,
    /// The size of the commits held (see [`record_bytes`]).
    bytes: usize,
}

/// About how many bytes of memory a commit record holds.
pub(crate) fn record_bytes(r: &CommitRecord) -> usize {
    let docs: usize = r.documents.iter().map(|(_, v)| 32 + v.as_ref().map_or(0, Vec::len)).sum();
    let indexes: usize = r.indexes.iter().map(|w| 48 + w.key.len()).sum();
    64 + docs + indexes + r.catalog.as_ref().map_or(0, Vec::len)
}

impl Overlay {
    /// A new, empty overlay.
    pub(crate) fn new() -> Overlay {
        Overlay {
            inner: Mutex::default(),
            drained: Condvar::new(),
            oldest: AtomicU64::new(u64::MAX),
            waits: AtomicU64::new(0),
        }
    }

    /// Whether a read at `ts` may need what the overlay holds.
    pub(crate) fn covers(&self, ts: Timestamp) -> bool {
        ts.0 >= self.oldest.load(Ordering::Acquire)
    }

    /// Adds logged `records` (called before their commits are acknowledged).
    pub(crate) fn add(&self, records: &[CommitRecord]) {
        let mut inner = self.inner.lock();
        for r in records {
            let mut docs = Vec::with_capacity(r.documents.len());
            for (id, value) in &r.documents {
                inner.revisions.entry(*id).or_default().push((r.ts, value.clone().map(Arc::new)));
                docs.push(*id);
            }
            let bytes = record_bytes(r);
            inner.bytes += bytes;
            inner.commits.push_back(Logged { ts: r.ts, docs, indexes: r.indexes.clone(), bytes });
        }
        if let Some(c) = inner.commits.front() {
            self.oldest.store(c.ts.0, Ordering::Release);
        }
    }

    /// Waits (up to `patience`) while the overlay holds more than `max_bytes`: commits then
    /// arrive faster than the materializer copies them, and memory must not pay for it.
    fn wait_for_room(&self, max_bytes: usize, patience: std::time::Duration) {
        let deadline = std::time::Instant::now() + patience;
        let mut inner = self.inner.lock();
        if inner.bytes > max_bytes {
            self.waits.fetch_add(1, Ordering::Relaxed);
        }
        while inner.bytes > max_bytes {
            if self.drained.wait_until(&mut inner, deadline).timed_out() {
                tracing::warn!(bytes = inner.bytes, "the materializer is not keeping up with commits");
                return;
            }
        }
    }

    /// Drops commits up to `ts` (called once they are in the deployment's file).
    fn remove_through(&self, ts: Timestamp) {
        let mut inner = self.inner.lock();
        while inner.commits.front().is_some_and(|c| c.ts <= ts) {
            let Some(logged) = inner.commits.pop_front() else { break };
            inner.bytes -= logged.bytes;
            for id in logged.docs {
                if let Some(revs) = inner.revisions.get_mut(&id) {
                    revs.retain(|(t, _)| *t > ts);
                    if revs.is_empty() {
                        inner.revisions.remove(&id);
                    }
                }
            }
        }
        let oldest = inner.commits.front().map_or(u64::MAX, |c| c.ts.0);
        self.oldest.store(oldest, Ordering::Release);
        drop(inner);
        self.drained.notify_all();
    }

    /// What logged commits at or before `ts` wrote in `range` of `source`, newest per key, and
    /// the newest revision of every document they wrote: taken before the tables are read, a
    /// scan that merges it with them misses no commit the materializer copies meanwhile.
    pub(crate) fn scan_view(&self, source: ScanSource, range: &KeyRange, ts: Timestamp) -> ScanView {
        let inner = self.inner.lock();
        let newest = |revs: &Revisions| {
            revs.iter().rev().find(|(t, _)| *t <= ts).map(|(t, v)| (*t, v.as_ref().map(|v| v.as_ref().clone())))
        };
        let docs: HashMap<DocumentId, DocumentRevision> = inner
            .revisions
            .iter()
            .filter_map(|(id, revs)| newest(revs).map(|(t, value)| (*id, DocumentRevision { id: *id, ts: t, value })))
            .collect();
        let keys = match source {
            ScanSource::Table(table) => docs
                .values()
                .filter(|r| r.id.table == table && range.contains(&r.id.internal.0))
                .map(|r| (r.id.internal.0.to_vec(), r.value.is_some().then_some(r.id)))
                .collect(),
            // Oldest commit first, so that a key's newest entry is the one kept.
            ScanSource::Index(index) => inner
                .commits
                .iter()
                .take_while(|c| c.ts <= ts)
                .flat_map(|c| &c.indexes)
                .filter(|w| w.index == index && range.contains(&w.key))
                .map(|w| (w.key.clone(), w.doc))
                .collect(),
        };
        ScanView { keys, docs }
    }

    /// The newest revision of `id` at or before `ts` among logged commits, if any.
    pub(crate) fn get(&self, id: DocumentId, ts: Timestamp) -> Option<DocumentRevision> {
        let inner = self.inner.lock();
        let revs = inner.revisions.get(&id)?;
        let (t, value) = revs.iter().rev().find(|(t, _)| *t <= ts)?;
        Some(DocumentRevision { id, ts: *t, value: value.as_ref().map(|v| v.as_ref().clone()) })
    }
}

/// What a scan reads.
#[derive(Copy, Clone, Debug)]
pub(crate) enum ScanSource {
    /// A table by id (keys are the 16 bytes of internal ids).
    Table(TableNumber),
    /// An index.
    Index(IndexId),
}

/// The overlay's part of a scan (see [`Overlay::scan_view`]).
pub(crate) struct ScanView {
    /// Keys in range with the document each now points to (`None`: removed).
    keys: BTreeMap<Vec<u8>, Option<DocumentId>>,
    /// The newest logged revision of each document.
    docs: HashMap<DocumentId, DocumentRevision>,
}

impl ScanView {
    /// How many keys the overlay decides; a table scan asks for this many more hits.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// Merges `table` (the tables' hits in `order`, `requested` asked for) with the overlay,
    /// whose keys and revisions are newer: the first `limit` live hits.
    pub(crate) fn merge(self, table: Vec<ScanHit>, requested: usize, order: Order, limit: usize) -> Vec<ScanHit> {
        // With a full batch the tables may hold more keys past the last one; only keys up to it
        // are known.
        let last = (table.len() >= requested).then(|| table.last().map(|h| h.key.clone())).flatten();
        let mut merged: BTreeMap<Vec<u8>, DocumentRevision> = BTreeMap::new();
        for hit in table {
            if self.keys.contains_key(&hit.key) {
                continue;
            }
            let revision = self.docs.get(&hit.revision.id).cloned().unwrap_or(hit.revision);
            if revision.value.is_some() {
                merged.insert(hit.key, revision);
            }
        }
        for (key, doc) in self.keys {
            if let Some(revision) = doc.and_then(|d| self.docs.get(&d)).filter(|r| r.value.is_some()) {
                merged.insert(key, revision.clone());
            }
        }
        let known = |k: &Vec<u8>| match (&last, order) {
            (None, _) => true,
            (Some(l), Order::Asc) => k <= l,
            (Some(l), Order::Desc) => k >= l,
        };
        let hits = merged.into_iter().filter(|(k, _)| known(k)).map(|(key, revision)| ScanHit { key, revision });
        match order {
            Order::Asc => hits.take(limit).collect(),
            Order::Desc => hits.rev().take(limit).collect(),
        }
    }
}

/// What the writer and readers hand the materializer, in order.
pub(crate) enum MaterializerMsg {
    /// Commits now durable in the log.
    Commits(Vec<CommitRecord>),
    /// Copy what is gathered (the writer has been idle for a moment).
    Copy,
    /// Work on the deployment's file, done after every commit before it is materialized.
    Writer(WriterMsg),
}

/// How much the materializer gathers before copying.
pub(crate) struct Gathering {
    /// Commits that make it copy, whatever else happens.
    pub max_commits: usize,
    /// Bytes of commits (see [`record_bytes`]) that make it copy.
    pub max_bytes: usize,
    /// How long the writer waits for more commits before having it copy what it has.
    pub idle: std::time::Duration,
}

/// The deployment file's side. It has no thread of its own (an idle deployment would pay for
/// one): its work runs as jobs on tokio's blocking threads, one at a time per deployment.
pub(crate) struct Materializer {
    queue: Mutex<Queue>,
    /// The connection and the gathered commits; held by the running job.
    work: Mutex<Option<Work>>,
    /// Logged commits not yet copied, for reads.
    pub(crate) overlay: Overlay,
    /// How far the deployment's file has materialized (the writer deletes log rows up to it).
    materialized: AtomicU64,
    gathering: Gathering,
    runtime: Option<tokio::runtime::Handle>,
}

#[derive(Default)]
struct Queue {
    msgs: Vec<MaterializerMsg>,
    /// Commits and bytes handed over since the last copy began.
    commits: usize,
    bytes: usize,
    /// A job is running or about to.
    scheduled: bool,
    closed: bool,
}

struct Work {
    conn: Connection,
    ckpt: Checkpointing,
    pending: Vec<CommitRecord>,
    pending_bytes: usize,
}

impl Materializer {
    /// A materializer of the deployment file `conn`, whose WAL `ckpt` watches.
    pub(crate) fn new(conn: Connection, ckpt: Checkpointing, gathering: Gathering) -> Self {
        Materializer {
            queue: Mutex::default(),
            work: Mutex::new(Some(Work { conn, ckpt, pending: Vec::new(), pending_bytes: 0 })),
            overlay: Overlay::new(),
            materialized: AtomicU64::new(0),
            gathering,
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// Whether commits were handed over and not copied yet.
    fn gathering_commits(&self) -> bool {
        self.queue.lock().commits > 0
    }

    /// Hands `msg` over, starting a job if it calls for one.
    pub(crate) fn submit(self: &Arc<Self>, msg: MaterializerMsg) {
        let mut queue = self.queue.lock();
        if queue.closed {
            drop(queue);
            if let MaterializerMsg::Writer(msg) = msg {
                refuse(msg);
            }
            return;
        }
        let urgent = match &msg {
            MaterializerMsg::Commits(records) => {
                queue.commits += records.len();
                queue.bytes += records.iter().map(record_bytes).sum::<usize>();
                queue.commits >= self.gathering.max_commits || queue.bytes >= self.gathering.max_bytes
            }
            MaterializerMsg::Copy | MaterializerMsg::Writer(_) => true,
        };
        queue.msgs.push(msg);
        if urgent && !queue.scheduled {
            queue.scheduled = true;
            drop(queue);
            let job = Job(Some(self.clone()));
            match &self.runtime {
                Some(rt) => drop(rt.spawn_blocking(move || job.run())),
                None => drop(std::thread::spawn(move || job.run())),
            }
        }
    }

    /// A job: carries out what is queued until nothing is.
    fn run(&self) {
        loop {
            let msgs = {
                let mut queue = self.queue.lock();
                if queue.msgs.is_empty() {
                    queue.scheduled = false;
                    return;
                }
                std::mem::take(&mut queue.msgs)
            };
            let mut work = self.work.lock();
            match work.as_mut() {
                Some(work) => self.carry_out(work, msgs, false),
                None => msgs.into_iter().for_each(|m| {
                    if let MaterializerMsg::Writer(m) = m {
                        refuse(m)
                    }
                }),
            }
        }
    }

    fn carry_out(&self, work: &mut Work, msgs: Vec<MaterializerMsg>, closing: bool) {
        let mut copy_now = closing;
        for msg in msgs {
            match msg {
                MaterializerMsg::Commits(records) => {
                    work.pending_bytes += records.iter().map(record_bytes).sum::<usize>();
                    work.pending.extend(records);
                    copy_now |= work.pending.len() >= self.gathering.max_commits
                        || work.pending_bytes >= self.gathering.max_bytes;
                }
                MaterializerMsg::Copy => copy_now = true,
                MaterializerMsg::Writer(msg) => {
                    let copied = self.copy(work);
                    crate::maintain(&mut work.conn, msg, copied);
                    work.ckpt.after_transaction(&work.conn);
                }
            }
        }
        if copy_now {
            let _ = self.copy(work);
            work.ckpt.after_transaction(&work.conn);
        }
    }

    /// Copies the pending commits into the deployment's file with the new materialized
    /// timestamp, in one transaction; on failure they stay pending (and logged) for the next try.
    fn copy(&self, work: &mut Work) -> Result<()> {
        let Some(last) = work.pending.last() else { return Ok(()) };
        let last = last.ts;
        let span = tracing::debug_span!("sqlite_materialize", commits = work.pending.len());
        let _enter = span.enter();
        {
            // What is copied from here on is no longer gathering.
            let mut queue = self.queue.lock();
            queue.commits = queue.commits.saturating_sub(work.pending.len());
            queue.bytes = queue.bytes.saturating_sub(work.pending_bytes);
        }
        let conn = &mut work.conn;
        let result = (|| {
            let tx = conn.transaction().map_err(storage)?;
            write_records(&tx, work.pending.iter())?;
            set_materialized(&tx, last)?;
            tx.commit().map_err(storage)
        })();
        match &result {
            Ok(()) => {
                work.pending.clear();
                work.pending_bytes = 0;
                self.overlay.remove_through(last);
                self.materialized.store(last.0, Ordering::Release);
            }
            Err(e) => {
                tracing::error!(error = %e, "materializing the commit log failed");
                let mut queue = self.queue.lock();
                queue.commits += work.pending.len();
                queue.bytes += work.pending_bytes;
            }
        }
        result
    }

    /// Refuses further work, finishes what is queued and copies everything gathered (called
    /// by the writer as it ends: a clean close leaves nothing to replay).
    fn close(&self) {
        let msgs = {
            let mut queue = self.queue.lock();
            queue.closed = true;
            std::mem::take(&mut queue.msgs)
        };
        // Waits for a running job to finish.
        let mut work = self.work.lock();
        if let Some(mut w) = work.take() {
            self.carry_out(&mut w, msgs, true);
        }
    }
}

/// A scheduled run of a materializer. Dropped without running (its runtime was shutting down),
/// it runs on a thread of its own instead, so no queued message waits forever.
struct Job(Option<Arc<Materializer>>);

impl Job {
    fn run(mut self) {
        if let Some(m) = self.0.take() {
            m.run();
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            let _ = std::thread::Builder::new().name("kiln-sqlite-mat".into()).spawn(move || m.run());
        }
    }
}

/// The writer's loop when commits go through the log: appends group commits to `log`, and
/// hands the commits, and everything else, to the materializer.
pub(crate) fn log_writer_loop(
    mut log: Connection,
    mut ckpt: Checkpointing,
    materializer: Arc<Materializer>,
    rx: mpsc::Receiver<WriterMsg>,
    max_batch: usize,
) {
    let max_unmaterialized = materializer.gathering.max_bytes.saturating_mul(4);
    let mut next: Option<WriterMsg> = None;
    let mut deleted_through = 0;
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None if materializer.gathering_commits() => match rx.recv_timeout(materializer.gathering.idle) {
                Ok(m) => m,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    materializer.submit(MaterializerMsg::Copy);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
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
                let (records, replies): (Vec<CommitRecord>, Vec<_>) = batch.into_iter().unzip();
                materializer.overlay.wait_for_room(max_unmaterialized, std::time::Duration::from_secs(10));
                let done = materializer.materialized.load(Ordering::Acquire);
                let delete = (done > deleted_through).then_some(done);
                let result = append(&mut log, &records, delete);
                match &result {
                    Ok(()) => {
                        deleted_through = delete.unwrap_or(deleted_through);
                        // Both before any caller hears of the commits: a read after that may
                        // look in the overlay or ask the materializer for them.
                        materializer.overlay.add(&records);
                        materializer.submit(MaterializerMsg::Commits(records));
                    }
                    Err(e) => tracing::error!(error = %e, "group commit failed"),
                }
                for reply in replies {
                    let _ = reply.send(result.clone());
                }
            }
            other => materializer.submit(MaterializerMsg::Writer(other)),
        }
        ckpt.after_transaction(&log);
    }
    materializer.close();
}

/// Answers a message nobody can carry out any more.
fn refuse(msg: WriterMsg) {
    let gone = || kiln_persistence::PersistenceError::Closed;
    match msg {
        WriterMsg::Commit(_, reply) | WriterMsg::Backfill(_, _, _, reply) | WriterMsg::Materialize(reply) => {
            let _ = reply.send(Err(gone()));
        }
        WriterMsg::DeleteIndex(_, _, reply) | WriterMsg::Prune(_, _, reply) => {
            let _ = reply.send(Err(gone()));
        }
    }
}

/// Appends one group commit's row, deleting rows materialized through `delete` in the same
/// transaction (no sync of its own).
fn append(log: &mut Connection, records: &[CommitRecord], delete: Option<u64>) -> Result<()> {
    let Some(last) = records.last() else { return Ok(()) };
    let ts = ts_to_sql(last.ts)?;
    let refs: Vec<&CommitRecord> = records.iter().collect();
    let tx = log.transaction().map_err(storage)?;
    if let Some(done) = delete {
        let done = ts_to_sql(Timestamp(done))?;
        tx.prepare_cached("DELETE FROM commit_log WHERE ts <= ?1")
            .and_then(|mut s| s.execute(params![done]))
            .map_err(storage)?;
    }
    tx.prepare_cached("INSERT INTO commit_log (ts, records) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![ts, commit_log::encode(&refs)]))
        .map_err(storage)?;
    tx.commit().map_err(storage)
}

fn set_materialized(tx: &rusqlite::Transaction, ts: Timestamp) -> Result<()> {
    let ts = ts_to_sql(ts)?;
    tx.prepare_cached("INSERT OR REPLACE INTO meta (name, int_value) VALUES ('materialized_ts', ?1)")
        .and_then(|mut s| s.execute(params![ts]))
        .map(|_| ())
        .map_err(storage)
}

/// The commits of `log` after `done`, oldest first.
pub(crate) fn logged_after(log: &Connection, done: Timestamp) -> Result<Vec<CommitRecord>> {
    let mut records = Vec::new();
    let mut stmt = log.prepare("SELECT records FROM commit_log ORDER BY ts").map_err(storage)?;
    let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(storage)?;
    for row in rows {
        records.extend(commit_log::decode(&row.map_err(storage)?)?.into_iter().filter(|r| r.ts > done));
    }
    Ok(records)
}

/// Copies into the deployment's file `conn` the commits of `log` it does not have yet (a crash
/// came first), then empties the log; returns how many commits were copied. On a full disk
/// it copies nothing and returns the commits instead, for the materializer to copy later.
pub(crate) fn replay(conn: &mut Connection, log: &mut Connection) -> Result<(usize, Vec<CommitRecord>)> {
    let done = meta_int(conn, "materialized_ts")?.map(ts_from_sql).transpose()?.unwrap_or_default();
    let records = logged_after(log, done)?;
    if let Some(last) = records.last() {
        let copied = (|| {
            let tx = conn.transaction().map_err(storage)?;
            write_records(&tx, records.iter())?;
            set_materialized(&tx, last.ts)?;
            tx.commit().map_err(storage)
        })();
        match copied {
            Ok(()) => {}
            Err(e @ kiln_persistence::PersistenceError::Full(_)) => {
                tracing::warn!(error = %e, commits = records.len(), "the commit log cannot be copied yet");
                return Ok((0, records));
            }
            Err(e) => return Err(e),
        }
    }
    // Only once the copy is durable may the log forget it. Rows already copied are left to the
    // writer, which deletes them with its first append: opening writes nothing when there is
    // nothing to copy (so it also works on a full disk).
    if !records.is_empty() {
        log.execute("DELETE FROM commit_log", []).map_err(storage)?;
    }
    Ok((records.len(), Vec::new()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_log_connection_gives_up_its_lookaside_after_being_configured() {
        let dir = tempfile::tempdir().unwrap();
        let log = Connection::open(log_path(&dir.path().join("d.sqlite3"))).unwrap();
        crate::configure(&log, &crate::SqliteOptions::default()).unwrap();
        assert!(drop_lookaside(&log));
        log.execute_batch(LOG_SCHEMA).unwrap();
    }

    #[test]
    fn a_scan_view_overrides_the_tables_and_keeps_only_keys_the_tables_vouch_for() {
        use kiln_value::InternalId;
        let doc = |n: u8| DocumentId::new(TableNumber(1), InternalId([n; 16]));
        let rev = |n: u8, ts: u64| DocumentRevision { id: doc(n), ts: Timestamp(ts), value: Some(vec![n]) };
        let hit = |k: &str, n: u8| ScanHit { key: k.as_bytes().to_vec(), revision: rev(n, 1) };
        let overlay = Overlay::new();
        let write =
            |k: &str, d: Option<DocumentId>| IndexWrite { index: IndexId(7), key: k.as_bytes().to_vec(), doc: d };
        overlay.add(&[CommitRecord {
            ts: Timestamp(5),
            // b is removed, c's document changes, d and bb are new.
            documents: vec![(doc(2), None), (doc(3), Some(vec![33])), (doc(4), Some(vec![4])), (doc(9), Some(vec![9]))],
            indexes: vec![write("b", None), write("d", Some(doc(4))), write("bb", Some(doc(9)))],
            catalog: None,
        }]);
        let view = || overlay.scan_view(ScanSource::Index(IndexId(7)), &KeyRange::all(), Timestamp(6));
        assert_eq!(view().len(), 3);
        let keys = |hits: Vec<ScanHit>| hits.into_iter().map(|h| String::from_utf8(h.key).unwrap()).collect::<Vec<_>>();
        // A full batch from the tables ends at c: d may not be next (the tables may hold more).
        let table = vec![hit("a", 1), hit("b", 2), hit("c", 3)];
        let merged = view().merge(table.clone(), 3, Order::Asc, 10);
        assert_eq!(merged[2].revision.value, Some(vec![33]), "c has its logged revision");
        assert_eq!(keys(merged), ["a", "bb", "c"]);
        // The tables had nothing more: d is known to follow.
        assert_eq!(keys(view().merge(table.clone(), 4, Order::Asc, 10)), ["a", "bb", "c", "d"]);
        assert_eq!(keys(view().merge(table, 4, Order::Asc, 2)), ["a", "bb"]);
        let desc = vec![hit("c", 3), hit("b", 2), hit("a", 1)];
        assert_eq!(keys(view().merge(desc, 4, Order::Desc, 3)), ["d", "c", "bb"]);
        // A scan before the commit sees none of it.
        let before = overlay.scan_view(ScanSource::Index(IndexId(7)), &KeyRange::all(), Timestamp(4));
        assert_eq!(before.len(), 0);
        overlay.remove_through(Timestamp(5));
        assert_eq!(view().len(), 0, "materialized commits leave the overlay");
    }
}
