//! The store: opening and recovery, the single committer, subscriptions, pruning, and
//! catalog operations (indexes with backfill, schemas).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use kiln_persistence::{CommitRecord, IndexId, IndexWrite, KeyRange, Order, Persistence, PersistenceError, Timestamp};
use kiln_value::validator::IdCheck;
use kiln_value::{DocumentId, FieldPath};
use parking_lot::{Mutex, RwLock};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::cache::{CacheStats, DocumentCache};
use crate::catalog::{CATALOG_INDEX, Catalog, Schema, check_index_definition, check_system_table, check_table_name};
use crate::commit_log::{Check, CommitLog, WrittenKeys};
use crate::document::{Document, ordered_index_key};
use crate::error::{Result, StoreError};
use crate::knobs::{StoreConfig, TransactionLimits};
use crate::query::Query;
use crate::read_set::{ReadSet, ReadToken};
use crate::search::{SearchIndexes, SearchWrite};
use crate::subscription::{Registry, SubState, Subscription};
use crate::transaction::Transaction;

/// A change to the catalog, applied by the committer to the newest catalog.
pub(crate) type CatalogEdit = Box<dyn FnOnce(&mut Catalog) -> Result<()> + Send + Sync>;

/// A document write: the id, the new document (`None` deletes) and its storage encoding.
pub(crate) type DocWrite = (DocumentId, Option<Arc<Document>>, Option<Vec<u8>>);

/// A transaction ready to commit.
pub(crate) struct CommitRequest {
    pub begin_ts: Timestamp,
    pub reads: ReadSet,
    pub docs: Vec<DocWrite>,
    pub index_writes: Vec<IndexWrite>,
    pub keys: WrittenKeys,
    /// What the commit changes in search indexes.
    pub search: Vec<SearchWrite>,
    pub catalog_edit: Option<CatalogEdit>,
    /// Dropped once the commit is validated (its writes visible to transactions that begin
    /// then), handed back through [`Hold::refused`] if it is refused.
    pub until_validated: Option<Box<dyn Hold>>,
}

/// What a transaction keeps until its commit is validated ([`crate::Transaction::hold_until_validated`]):
/// dropped then, or handed back through [`Hold::refused`] when the commit is refused.
pub trait Hold: Send + Sync {
    /// The commit was refused; called before the committer replies, so that whoever waits
    /// for the reply finds what this did.
    fn refused(self: Box<Self>);
}

/// Replies to a refused commit, handing its hold back first.
fn refuse(held: Option<Box<dyn Hold>>, reply: oneshot::Sender<Result<Timestamp>>, error: StoreError) {
    if let Some(held) = held {
        held.refused();
    }
    let _ = reply.send(Err(error));
}

struct Envelope {
    request: CommitRequest,
    reply: oneshot::Sender<Result<Timestamp>>,
}

#[derive(Clone)]
struct Snapshot {
    ts: Timestamp,
    catalog: Arc<Catalog>,
    /// The commit that made `catalog` current: reads at or after it may use it.
    catalog_ts: Timestamp,
}

/// Counters of the store's activity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Commits made durable.
    pub commits: u64,
    /// Commits refused for conflicts.
    pub conflicts: u64,
    /// Live subscriptions.
    pub subscriptions: usize,
    /// The document cache.
    pub cache: CacheStats,
    /// The newest published commit.
    pub published_ts: Timestamp,
    /// The newest validated commit (newer than `published_ts` while commits are in flight).
    pub validated_ts: Timestamp,
    /// Transactions waiting for a commit they read to become durable (a read-write
    /// transaction's answer, a range scan over pending writes).
    pub waiting_for_durability: usize,
    /// Memory the search indexes' recent writes take (not yet merged to disk).
    pub search_memory_bytes: usize,
    /// Bytes the search indexes take on disk.
    pub search_disk_bytes: u64,
    /// Search indexes built from all their documents since the store opened.
    pub search_builds: u64,
    /// Memory the vector indexes' graphs take.
    pub vector_memory_bytes: usize,
}

/// A document's versions in validated commits not yet published, oldest first.
type PendingVersions = Vec<(Timestamp, Option<Arc<Document>>)>;

/// State shared by the store handle, its transactions and its background tasks.
pub(crate) struct Inner {
    pub(crate) persistence: Arc<dyn Persistence>,
    pub(crate) config: StoreConfig,
    snapshot: RwLock<Snapshot>,
    /// The newest validated commit (durable or not): where read-write transactions begin.
    validated: RwLock<Snapshot>,
    /// Documents written by validated commits not yet published, newest last per document.
    pending: Mutex<HashMap<DocumentId, PendingVersions>>,
    pub(crate) cache: Mutex<DocumentCache>,
    log: Mutex<CommitLog>,
    registry: Arc<Mutex<Registry>>,
    commit_tx: Mutex<Option<mpsc::Sender<Envelope>>>,
    next_table_number: AtomicU32,
    next_index_id: AtomicU32,
    prune_floor: AtomicU64,
    failed: Mutex<Option<String>>,
    /// Whether the failure left the storage intact: once the commits in flight have drained,
    /// the store drops what the failed commits validated and accepts commits again.
    recoverable: AtomicBool,
    /// Timestamps of commits validated but lost to a storage failure (first, last): a
    /// transaction whose snapshot includes one read writes that never happened.
    lost: Mutex<Vec<(Timestamp, Timestamp)>>,
    commits: AtomicU64,
    conflicts: AtomicU64,
    published: watch::Sender<Timestamp>,
    /// Transactions in `wait_published` for a commit not yet published.
    waiting: std::sync::atomic::AtomicUsize,
    /// Full-text search indexes.
    pub(crate) search: SearchIndexes,
}

/// Nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Milliseconds since the Unix epoch, with sub-millisecond precision (for `_creationTime`).
pub(crate) fn now_ms() -> f64 {
    now_ns() as f64 / 1e6
}

fn next_ts(last: Timestamp) -> Timestamp {
    Timestamp(now_ns().max(last.0 + 1))
}

impl Inner {
    pub(crate) fn reserve_table_number(&self) -> u32 {
        self.next_table_number.fetch_add(1, Ordering::Relaxed)
    }

    /// Reserves table number `n` if no number at or above it was handed out yet (a lower one
    /// may belong to a transaction still running).
    pub(crate) fn reserve_table_number_exactly(&self, n: u32) -> bool {
        self.next_table_number
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| (next <= n).then_some(n + 1))
            .is_ok()
    }

    pub(crate) fn reserve_index_id(&self) -> u32 {
        self.next_index_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Fails if pruning may have removed revisions a read at `ts` needs. Called after each
    /// persistence read: the floor is raised before pruning starts, so a read that finished
    /// with `ts` at or above the floor saw intact data.
    /// Up to `limit` documents of `table` at `ts` whose ids come after `after` (from the
    /// first when `None`), in id order: one batch of a whole-table scan.
    pub(crate) async fn scan_table_after(
        &self,
        table: kiln_value::TableNumber,
        after: Option<&[u8]>,
        ts: Timestamp,
        limit: usize,
    ) -> Result<Vec<kiln_persistence::ScanHit>> {
        let range = match after {
            Some(k) => {
                let mut start = k.to_vec();
                start.push(0);
                KeyRange { start, end: None }
            }
            None => KeyRange::all(),
        };
        let hits = self.persistence.scan_table(table, &range, ts, Order::Asc, limit).await;
        self.check_not_pruned(ts)?;
        Ok(hits?)
    }

    pub(crate) fn check_not_pruned(&self, ts: Timestamp) -> Result<()> {
        if ts.0 < self.prune_floor.load(Ordering::Acquire) {
            return Err(StoreError::SnapshotTooOld { ts });
        }
        Ok(())
    }

    /// Caches a revision read from persistence if it is provably the newest one.
    pub(crate) fn fill_cache(&self, id: DocumentId, read_ts: Timestamp, rev_ts: Timestamp, doc: Option<Arc<Document>>) {
        let mut cache = self.cache.lock();
        if cache.contains(&id) {
            return;
        }
        // The revision is the newest at `read_ts`; it is the newest overall unless a commit
        // after `read_ts` (published or pending) wrote the document.
        if self.log.lock().written_after(&id, read_ts) {
            return;
        }
        cache.put(id, rev_ts, doc);
    }

    fn snapshot(&self) -> Snapshot {
        self.snapshot.read().clone()
    }

    /// The version of `id` a read at `ts` sees among validated commits not yet published:
    /// `Some` when one of them wrote it at or before `ts`.
    pub(crate) fn pending_version(&self, id: &DocumentId, ts: Timestamp) -> Option<Option<Arc<Document>>> {
        let pending = self.pending.lock();
        let versions = pending.get(id)?;
        versions.iter().rev().find(|(t, _)| *t <= ts).map(|(_, d)| d.clone())
    }

    /// The newest published commit.
    pub(crate) fn published_ts(&self) -> Timestamp {
        self.snapshot.read().ts
    }

    /// Whether a validated commit in `(published, ts]` wrote a key of `index` in `range`.
    pub(crate) fn pending_writes_in(&self, ts: Timestamp, index: IndexId, range: &KeyRange) -> bool {
        let published = self.published_ts();
        if ts <= published {
            return false;
        }
        let mut reads = ReadSet::new();
        reads.add(index, range.clone());
        // `TooOld` cannot happen for commits not yet published, but err on the side of waiting.
        self.log.lock().check_range(published, ts, &reads) != Check::Clean
    }

    /// Whether a snapshot at `ts` includes commits lost to a storage failure.
    pub(crate) fn saw_lost_commits(&self, ts: Timestamp) -> bool {
        self.lost.lock().iter().any(|(first, last)| (*first..=*last).contains(&ts))
    }

    /// Waits until the commit at `ts` is published (so durable); fails if the store failed
    /// or closed first, or if that commit was lost.
    pub(crate) async fn wait_published(&self, ts: Timestamp) -> Result<()> {
        let lost = || StoreError::Failed("a commit this transaction read was lost to a storage failure".into());
        if self.saw_lost_commits(ts) {
            return Err(lost());
        }
        let mut rx = self.published.subscribe();
        if *rx.borrow() >= ts {
            return Ok(());
        }
        /// Counts the wait while it lasts (also when the future is dropped).
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&self.waiting);
        loop {
            if *rx.borrow_and_update() >= ts {
                return Ok(());
            }
            if let Some(msg) = self.failed.lock().clone() {
                return Err(StoreError::Failed(msg));
            }
            if self.saw_lost_commits(ts) {
                return Err(lost());
            }
            rx.changed().await.map_err(|_| StoreError::Closed)?;
        }
    }

    pub(crate) async fn submit(&self, request: CommitRequest) -> Result<Timestamp> {
        let (reply, rx) = oneshot::channel();
        let tx = self.commit_tx.lock().clone().ok_or(StoreError::Closed)?;
        tx.send(Envelope { request, reply }).await.map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn table_of_index(catalog: &Catalog, index: IndexId, key: &[u8]) -> String {
        if index == CATALOG_INDEX {
            return String::from_utf8_lossy(key).into_owned();
        }
        catalog
            .tables
            .values()
            .find(|t| {
                t.by_id == index.0
                    || t.by_creation_time == index.0
                    || t.indexes.values().any(|m| m.id == index.0)
                    || t.search_indexes.values().any(|m| m.id == index.0)
            })
            .map(|t| t.name.clone())
            .unwrap_or_default()
    }
}

type Inflight = Pin<Box<dyn Future<Output = Completed> + Send>>;

struct Completed {
    ts: Timestamp,
    result: std::result::Result<(), PersistenceError>,
    reply: oneshot::Sender<Result<Timestamp>>,
    docs: Vec<(DocumentId, Option<Arc<Document>>)>,
    keys: WrittenKeys,
    search: Vec<SearchWrite>,
    catalog: Option<Arc<Catalog>>,
}

/// The single committer: validates commits in arrival order, assigns timestamps, and keeps
/// several commits in flight to persistence (which batches them into one durable write);
/// completions are published strictly in timestamp order.
async fn run_committer(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Envelope>,
    mut catalog: Arc<Catalog>,
    mut last_ts: Timestamp,
) {
    let mut inflight: FuturesOrdered<Inflight> = FuturesOrdered::new();
    // Replies to commits that failed, sent once the store has recovered (or cannot): a caller
    // that hears of its failure and tries again then finds the store accepting commits.
    let mut failed_replies = Vec::new();
    let mut open = true;
    while open || !inflight.is_empty() {
        tokio::select! {
            Some(done) = inflight.next(), if !inflight.is_empty() => {
                if let Some(failure) = publish(&inner, done) {
                    failed_replies.push(failure);
                }
                if inflight.is_empty() {
                    recover(&inner, &mut catalog, last_ts);
                    for (reply, e) in failed_replies.drain(..) {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            envelope = rx.recv(), if open => match envelope {
                Some(e) => {
                    if let Some(f) = validate(&inner, &mut catalog, &mut last_ts, e) {
                        inflight.push_back(f);
                    }
                }
                None => open = false,
            },
        }
    }
}

/// The hash of an index key that [`StoreError::Conflict`] reports (never 0).
fn conflict_key(index: IndexId, key: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    index.0.hash(&mut h);
    key.hash(&mut h);
    h.finish().max(1)
}

fn validate(
    inner: &Arc<Inner>,
    catalog: &mut Arc<Catalog>,
    last_ts: &mut Timestamp,
    envelope: Envelope,
) -> Option<Inflight> {
    let Envelope { mut request, reply } = envelope;
    // Handed back on every refusal below, dropped after validation on success.
    let held = request.until_validated.take();
    if let Some(msg) = inner.failed.lock().clone() {
        refuse(held, reply, StoreError::Failed(msg));
        return None;
    }
    if inner.saw_lost_commits(request.begin_ts) {
        // Its snapshot held writes that were never made durable: retry on a fresh one.
        inner.conflicts.fetch_add(1, Ordering::Relaxed);
        refuse(held, reply, StoreError::Conflict { table: String::new(), conflicting_ts: request.begin_ts, key: 0 });
        return None;
    }
    let check = inner.log.lock().check(request.begin_ts, &request.reads);
    match check {
        Check::Clean => {}
        Check::TooOld => {
            refuse(held, reply, StoreError::SnapshotTooOld { ts: request.begin_ts });
            return None;
        }
        Check::Conflict(conflicting_ts, index, key) => {
            inner.conflicts.fetch_add(1, Ordering::Relaxed);
            let table = Inner::table_of_index(catalog, index, &key);
            tracing::debug!(%table, "commit conflict");
            let key = conflict_key(index, &key);
            refuse(held, reply, StoreError::Conflict { table, conflicting_ts, key });
            return None;
        }
    }
    let mut new_catalog = None;
    if let Some(edit) = request.catalog_edit {
        let mut next = (**catalog).clone();
        if let Err(e) = edit(&mut next) {
            refuse(held, reply, e);
            return None;
        }
        let blob = match next.encode() {
            Ok(b) => b,
            Err(e) => {
                refuse(held, reply, e);
                return None;
            }
        };
        let next = Arc::new(next);
        *catalog = next.clone();
        new_catalog = Some((next, blob));
    }
    let ts = next_ts(*last_ts);
    *last_ts = ts;
    let doc_ids = request.docs.iter().map(|(id, _, _)| *id).collect();
    inner.log.lock().push(ts, request.keys.clone(), doc_ids);
    {
        // Pending versions first: a transaction that begins at `ts` must find them.
        let mut pending = inner.pending.lock();
        for (id, doc, _) in &request.docs {
            pending.entry(*id).or_default().push((ts, doc.clone()));
        }
    }
    {
        let mut validated = inner.validated.write();
        validated.ts = ts;
        if new_catalog.is_some() {
            validated.catalog = catalog.clone();
            validated.catalog_ts = ts;
        }
    }
    drop(held);
    let mut documents = Vec::with_capacity(request.docs.len());
    let mut docs = Vec::with_capacity(request.docs.len());
    for (id, doc, encoded) in request.docs {
        documents.push((id, encoded));
        docs.push((id, doc));
    }
    let record = CommitRecord {
        ts,
        documents,
        indexes: request.index_writes,
        catalog: new_catalog.as_ref().map(|(_, blob)| blob.clone()),
    };
    let persistence = inner.persistence.clone();
    let keys = request.keys;
    let search = request.search;
    Some(Box::pin(async move {
        let result = persistence.commit(record).await;
        Completed { ts, result, reply, docs, keys, search, catalog: new_catalog.map(|(c, _)| c) }
    }))
}

/// Publishes a completed commit, or returns its reply and error when it failed.
fn publish(inner: &Inner, done: Completed) -> Option<(oneshot::Sender<Result<Timestamp>>, StoreError)> {
    let Completed { ts, result, reply, docs, keys, search, catalog } = done;
    if let Err(e) = result {
        if e.leaves_storage_intact() {
            tracing::warn!(error = %e, ts = ts.0, "commit failed; the commits validated after it fail too");
        } else {
            tracing::error!(error = %e, ts = ts.0, "commit failed; the commits validated after it fail too");
        }
        let mut failed = inner.failed.lock();
        if failed.is_none() {
            *failed = Some(e.to_string());
            inner.recoverable.store(e.leaves_storage_intact(), Ordering::Release);
        }
        drop(failed);
        // Wake transactions waiting for a commit that will never be published.
        inner.published.send_modify(|_| {});
        return Some((reply, StoreError::Persistence(e)));
    }
    if let Some(msg) = inner.failed.lock().clone() {
        // An earlier commit failed; later ones were validated assuming it succeeded. This one
        // is durable all the same, so memory can no longer be brought back in line with the
        // storage: the store stays failed (a restart reads what the storage holds).
        tracing::error!(ts = ts.0, "a commit validated after a failed one was made durable; restart to recover");
        inner.recoverable.store(false, Ordering::Release);
        return Some((reply, StoreError::Failed(msg)));
    }
    let ids: Vec<DocumentId> = docs.iter().map(|(id, _)| *id).collect();
    {
        let mut cache = inner.cache.lock();
        for (id, doc) in docs {
            cache.put(id, ts, doc);
        }
    }
    // Search indexes learn of the commit before it becomes visible: a search at its
    // timestamp finds its writes.
    if let Some(c) = &catalog {
        inner.search.sync_catalog(c, ts, None);
    }
    inner.search.record(ts, search);
    {
        // Subscriptions are invalidated before the commit becomes visible, under the registry
        // lock: whoever sees the new timestamp also sees every invalidation it caused, and a
        // token registered concurrently is checked against either the old or the new state,
        // never a mix.
        let mut registry = inner.registry.lock();
        registry.on_commit(&keys, ts);
        let mut snap = inner.snapshot.write();
        snap.ts = ts;
        if let Some(c) = catalog {
            snap.catalog = c;
            snap.catalog_ts = ts;
        }
        drop(snap);
        inner.published.send_replace(ts);
    }
    {
        // Published and cached, so readers no longer need the pending versions.
        let mut pending = inner.pending.lock();
        for id in ids {
            if let Some(versions) = pending.get_mut(&id) {
                versions.retain(|(t, _)| *t > ts);
                if versions.is_empty() {
                    pending.remove(&id);
                }
            }
        }
    }
    inner.log.lock().evict(ts);
    inner.commits.fetch_add(1, Ordering::Relaxed);
    let _ = reply.send(Ok(ts));
    None
}

/// After a failed commit, once no commit is in flight: if the storage is intact, forgets what
/// the failed commits (and those validated after them) wrote, so that the store is back at its
/// last published state, and accepts commits again. A full disk thus refuses writes only while
/// it is full.
fn recover(inner: &Inner, catalog: &mut Arc<Catalog>, last_ts: Timestamp) {
    if !inner.recoverable.load(Ordering::Acquire) {
        return;
    }
    let Some(msg) = inner.failed.lock().clone() else { return };
    let published = inner.snapshot();
    if last_ts > published.ts {
        let mut lost = inner.lost.lock();
        lost.push((Timestamp(published.ts.0 + 1), last_ts));
        // Old ranges only matter to transactions older than the commit log covers.
        let excess = lost.len().saturating_sub(256);
        lost.drain(..excess);
    }
    inner.log.lock().truncate_after(published.ts);
    inner.pending.lock().clear();
    *catalog = published.catalog.clone();
    *inner.validated.write() = published;
    inner.recoverable.store(false, Ordering::Release);
    *inner.failed.lock() = None;
    tracing::warn!(error = %msg, "the store accepts commits again after a storage failure");
}

/// A deployment's document store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Store {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
    background: Mutex<Vec<JoinHandle<()>>>,
    shutdown: watch::Sender<bool>,
}

impl Store {
    /// Opens a store on `persistence`, recovering its catalog and newest timestamp.
    /// Must be called within a tokio runtime.
    pub async fn open(persistence: Arc<dyn Persistence>, config: StoreConfig) -> Result<Store> {
        let span = tracing::info_span!("store_open");
        let _guard = span.enter();
        let state = persistence.recover().await?;
        let (catalog, ts) = match &state.catalog {
            Some(bytes) => (Catalog::decode(bytes)?, state.max_ts),
            None => {
                let catalog = Catalog::new();
                let ts = next_ts(state.max_ts);
                persistence.commit(CommitRecord { ts, catalog: Some(catalog.encode()?), ..Default::default() }).await?;
                (catalog, ts)
            }
        };
        let catalog = Arc::new(catalog);
        let (commit_tx, commit_rx) = mpsc::channel(4096);
        let inner = Arc::new(Inner {
            persistence,
            snapshot: RwLock::new(Snapshot { ts, catalog: catalog.clone(), catalog_ts: ts }),
            validated: RwLock::new(Snapshot { ts, catalog: catalog.clone(), catalog_ts: ts }),
            pending: Mutex::new(HashMap::new()),
            cache: Mutex::new(DocumentCache::new(config.cache_bytes)),
            log: Mutex::new(CommitLog::new(ts, config.commit_log_age, config.commit_log_bytes)),
            registry: Arc::new(Mutex::new(Registry::default())),
            commit_tx: Mutex::new(Some(commit_tx)),
            next_table_number: AtomicU32::new(catalog.next_table_number),
            next_index_id: AtomicU32::new(catalog.next_index_id),
            prune_floor: AtomicU64::new(state.pruned_up_to.0),
            failed: Mutex::new(None),
            recoverable: AtomicBool::new(false),
            lost: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            published: watch::channel(ts).0,
            waiting: std::sync::atomic::AtomicUsize::new(0),
            search: SearchIndexes::new(&config),
            config,
        });
        inner.search.sync_catalog(&catalog, ts, Some(state.pruned_up_to));
        let committer = tokio::spawn(run_committer(inner.clone(), commit_rx, catalog.clone(), ts));
        let (shutdown, _) = watch::channel(false);
        let store =
            Store { inner, committer: Mutex::new(Some(committer)), background: Mutex::new(Vec::new()), shutdown };
        store.start_background(&catalog);
        tracing::info!(ts = ts.0, tables = catalog.tables.len(), "store opened");
        Ok(store)
    }

    fn start_background(&self, catalog: &Catalog) {
        let mut tasks = self.background.lock();
        if !self.inner.config.prune_interval.is_zero() {
            let inner = self.inner.clone();
            let mut stop = self.shutdown.subscribe();
            let interval = self.inner.config.prune_interval;
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stop.changed() => return,
                    }
                    if let Err(e) = prune(&inner).await {
                        tracing::warn!(error = %e, "pruning failed");
                    }
                }
            }));
        }
        {
            let inner = self.inner.clone();
            let mut stop = self.shutdown.subscribe();
            let interval = self.inner.config.search_merge_interval.max(Duration::from_millis(10));
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = inner.search.wake.notified() => {}
                        _ = stop.changed() => return,
                    }
                    maintain_search(&inner, false).await;
                }
            }));
        }
        // Resume work a previous run did not finish.
        for table in catalog.tables.values() {
            for meta in table.indexes.values().filter(|m| !m.ready) {
                let (inner, table, id) = (self.inner.clone(), table.name.clone(), meta.id);
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = backfill(&inner, &table, id).await {
                        tracing::error!(error = %e, %table, index = id, "index backfill failed");
                    }
                }));
            }
        }
        if !catalog.dropped_indexes.is_empty() {
            let inner = self.inner.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = clean_dropped_indexes(&inner).await {
                    tracing::warn!(error = %e, "dropped index cleanup failed");
                }
            }));
        }
    }

    /// Begins a read-write transaction at the newest snapshot.
    pub fn begin(&self) -> Transaction {
        self.begin_with(false, self.inner.config.limits.clone())
    }

    /// Begins a read-only transaction (a query) at the newest snapshot.
    pub fn begin_read_only(&self) -> Transaction {
        self.begin_with(true, self.inner.config.limits.clone())
    }

    /// Begins a system transaction: read-write, without limits, and able to use the reserved
    /// `_`-prefixed tables that user transactions cannot see (for the host's own records).
    pub fn begin_system(&self) -> Transaction {
        let mut tx = self.begin_with(false, TransactionLimits::unlimited());
        tx.set_system();
        tx
    }

    /// Begins a transaction with explicit limits.
    ///
    /// A read-only transaction reads the newest published (durable) commit. A read-write one
    /// reads the newest validated commit, durable or not: it can only return anything once
    /// its own commit, which follows those, is durable (see [`Transaction::commit`] and
    /// [`Transaction::settle`]), and its conflict window then no longer includes the time
    /// the commits before it take to become durable.
    pub fn begin_with(&self, read_only: bool, limits: TransactionLimits) -> Transaction {
        // After a failed commit the validated state holds commits that will never be published.
        let snap = if read_only || self.inner.failed.lock().is_some() {
            self.inner.snapshot()
        } else {
            self.inner.validated.read().clone()
        };
        Transaction::new(self.inner.clone(), snap.ts, snap.catalog, read_only, limits)
    }

    /// Begins a read-only transaction at an earlier snapshot `ts` (so that several queries
    /// can be evaluated at one timestamp). Fails with `SnapshotInFuture` when `ts` is newer
    /// than the newest published commit, and with `SnapshotTooOld` when it is older than the
    /// current catalog (tables or indexes changed since) or already pruned.
    pub fn begin_read_only_at(&self, ts: Timestamp) -> Result<Transaction> {
        let snap = self.inner.snapshot();
        if ts > snap.ts {
            return Err(StoreError::SnapshotInFuture { ts });
        }
        if ts < snap.catalog_ts {
            return Err(StoreError::SnapshotTooOld { ts });
        }
        self.inner.check_not_pruned(ts)?;
        Ok(Transaction::new(self.inner.clone(), ts, snap.catalog, true, self.inner.config.limits.clone()))
    }

    /// A receiver of the newest published commit timestamp (changes with every commit).
    pub fn watch_published(&self) -> watch::Receiver<Timestamp> {
        self.inner.published.subscribe()
    }

    /// The newest published commit timestamp.
    pub fn published_ts(&self) -> Timestamp {
        self.inner.snapshot.read().ts
    }

    /// Waits until the commit at `ts` (or a later one) is published, so that a transaction
    /// begun afterwards sees it. Returns early if the store stops publishing.
    pub async fn wait_for(&self, ts: Timestamp) {
        let mut rx = self.inner.published.subscribe();
        let _ = rx.wait_for(|p| *p >= ts).await;
    }

    /// The newest catalog.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.inner.snapshot().catalog
    }

    /// Activity counters.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            conflicts: self.inner.conflicts.load(Ordering::Relaxed),
            subscriptions: self.inner.registry.lock().len(),
            cache: self.inner.cache.lock().stats(),
            published_ts: self.published_ts(),
            validated_ts: self.inner.validated.read().ts,
            waiting_for_durability: self.inner.waiting.load(Ordering::Relaxed),
            search_memory_bytes: self.inner.search.memory_bytes(),
            search_disk_bytes: self.inner.search.disk_bytes(),
            search_builds: self.inner.search.builds(),
            vector_memory_bytes: self.inner.search.vector_memory_bytes(),
        }
    }

    /// Registers a token; the subscription resolves when a commit after `token.ts` writes a
    /// key the token read (immediately if one already has).
    pub fn subscribe(&self, token: &ReadToken) -> Subscription {
        let state = Arc::new(SubState::default());
        let mut registry = self.inner.registry.lock();
        // Under the registry lock no publication can slip between this check and registering.
        let published = self.published_ts();
        let check = self.inner.log.lock().check_range(token.ts, published, &token.read_set);
        let id = registry.register(token, state.clone());
        match check {
            Check::Clean => {}
            Check::Conflict(..) => {
                registry.remove(id);
                state.invalidate(published);
            }
            Check::TooOld => {
                registry.remove(id);
                state.invalidate(published);
            }
        }
        Subscription { id, state, registry: self.inner.registry.clone() }
    }

    /// The token moved to `ts` if no commit in `(token.ts, ts]` wrote what it read; `None`
    /// when one did (or the log no longer covers `token.ts`) and the query must re-run.
    pub fn refresh_token(&self, token: &ReadToken, ts: Timestamp) -> Option<ReadToken> {
        let ts = ts.min(self.published_ts());
        if ts <= token.ts {
            return Some(token.clone());
        }
        match self.inner.log.lock().check_range(token.ts, ts, &token.read_set) {
            Check::Clean => Some(ReadToken { ts, read_set: token.read_set.clone() }),
            Check::Conflict(..) | Check::TooOld => None,
        }
    }

    /// The documents of `table` closest to `vector` in vector index `index`, as
    /// `ctx.vectorSearch` asks (`limit`: `None` for the default; `filter`: the `convex`
    /// package's filter expression): (cosine similarity, id), best first. Sees every commit
    /// published before the call.
    pub async fn vector_search(
        &self,
        table: &str,
        index: &str,
        vector: &[f64],
        limit: Option<u32>,
        filter: Option<&serde_json::Value>,
    ) -> Result<Vec<(f32, DocumentId)>> {
        let catalog = self.catalog();
        let meta = catalog.table(table).ok_or_else(|| StoreError::IndexNotFound(format!("{table}.{index}")))?;
        let number = meta.number;
        let index_meta = meta.vector_index(index)?;
        let query = kiln_search::VectorQuery::parse(&index_meta.vector_def(), vector, limit, filter)
            .map_err(crate::search::search_error)?;
        let live = self
            .inner
            .search
            .vector(index_meta.id)
            .ok_or_else(|| StoreError::IndexNotReady(format!("{table}.{index}")))?;
        if !live.built_within(crate::search::BUILD_WAIT).await {
            return Err(StoreError::IndexNotReady(format!("{table}.{index} (being rebuilt)")));
        }
        let hits = live.search(query).await?;
        Ok(hits.into_iter().map(|(score, id)| (score, DocumentId::new(number, id))).collect())
    }

    /// Builds waiting search indexes and merges every search index's recent writes into its
    /// files now (the background merger does this every `search_merge_interval`).
    pub async fn flush_search(&self) {
        maintain_search(&self.inner, true).await;
    }

    /// Prunes revisions older than the retention window now; returns the rows removed.
    pub async fn prune_now(&self) -> Result<u64> {
        prune(&self.inner).await
    }

    /// Adds an index and waits until it is backfilled and ready. Creates the table if needed.
    pub async fn add_index(&self, table: &str, name: &str, fields: &[&str]) -> Result<()> {
        check_table_name(table)?;
        let fields = fields.iter().map(|f| FieldPath::parse(f)).collect::<kiln_value::Result<Vec<_>>>()?;
        check_index_definition(table, name, &fields)?;
        let id = self.inner.reserve_index_id();
        let (t, n) = (table.to_owned(), name.to_owned());
        self.catalog_change(table, move |tx| {
            let (t, n, fields) = (t.clone(), n.clone(), fields.clone());
            tx.ensure_table(&t);
            Box::new(move |c: &mut Catalog| c.add_index(&t, &n, fields, id))
        })
        .await?;
        backfill(&self.inner, table, id).await
    }

    /// Adds an index to the host's system table `table` (created if needed) unless it already
    /// exists with these fields, and waits until it is backfilled.
    pub async fn ensure_system_index(&self, table: &str, name: &str, fields: &[&str]) -> Result<()> {
        check_system_table(table)?;
        let fields = fields.iter().map(|f| FieldPath::parse(f)).collect::<kiln_value::Result<Vec<_>>>()?;
        if let Some(index) = self.catalog().table(table).and_then(|t| t.indexes.get(name)) {
            if index.fields == fields {
                return Ok(());
            }
            return Err(StoreError::InvalidIndex {
                index: format!("{table}.{name}"),
                reason: "exists with other fields".into(),
            });
        }
        let id = self.inner.reserve_index_id();
        let (t, n) = (table.to_owned(), name.to_owned());
        self.catalog_change(table, move |tx| {
            let (t, n, fields) = (t.clone(), n.clone(), fields.clone());
            tx.set_system();
            tx.ensure_table(&t);
            Box::new(move |c: &mut Catalog| c.add_index(&t, &n, fields, id))
        })
        .await?;
        backfill(&self.inner, table, id).await
    }

    /// Begins a read-only system transaction at the newest published snapshot (the host
    /// reading its own tables).
    pub fn begin_system_read_only(&self) -> Transaction {
        let mut tx = self.begin_with(true, TransactionLimits::unlimited());
        tx.set_system();
        tx
    }

    /// Drops a user index; its entries are deleted in the background.
    pub async fn drop_index(&self, table: &str, name: &str) -> Result<()> {
        let (t, n) = (table.to_owned(), name.to_owned());
        self.catalog_change(table, move |_| {
            let (t, n) = (t.clone(), n.clone());
            Box::new(move |c: &mut Catalog| c.drop_index(&t, &n))
        })
        .await?;
        let inner = self.inner.clone();
        self.background.lock().push(tokio::spawn(async move {
            if let Err(e) = clean_dropped_indexes(&inner).await {
                tracing::warn!(error = %e, "dropped index cleanup failed");
            }
        }));
        Ok(())
    }

    /// Waits before retrying after `e`: for the conflicting commit to be published, plus a
    /// growing delay.
    async fn backoff(&self, e: &StoreError, attempt: u32) {
        if let Some(ts) = e.retry_after() {
            self.wait_for(ts).await;
        }
        tokio::time::sleep(Duration::from_millis(1 << attempt.min(8))).await;
    }

    /// Runs a catalog change as a transaction that writes the table's catalog key, retrying
    /// on conflicts.
    async fn catalog_change(&self, table: &str, make: impl Fn(&mut Transaction) -> CatalogEdit) -> Result<Timestamp> {
        let mut attempt = 0;
        loop {
            let mut tx = self.begin_with(false, TransactionLimits::unlimited());
            let edit = make(&mut tx);
            tx.catalog_writes.insert(table.to_owned());
            tx.catalog_edit = Some(edit);
            match tx.commit().await {
                Err(e) if e.is_retryable() && attempt < 8 => {
                    attempt += 1;
                    self.backoff(&e, attempt).await;
                }
                other => return other,
            }
        }
    }

    /// Applies a schema (from `defineSchema(...).export()`): creates declared tables, adds
    /// declared indexes (backfilled before this returns), drops undeclared ones, and sets the
    /// document validators. With validation on, existing documents are checked first and a
    /// violation rejects the whole schema.
    pub async fn set_schema(&self, schema: &Schema) -> Result<()> {
        let mut attempt = 0;
        let (ts, added) = loop {
            match self.try_set_schema(schema).await {
                Err(e) if e.is_retryable() && attempt < 8 => {
                    attempt += 1;
                    self.backoff(&e, attempt).await;
                }
                other => break other?,
            }
        };
        tracing::info!(ts = ts.0, new_indexes = added.len(), "schema applied");
        for (table, id) in added {
            if self.catalog().table(&table).is_some_and(|t| t.search_indexes.values().any(|m| m.id == id)) {
                self.wait_search_ready(&table, id).await;
            } else {
                backfill(&self.inner, &table, id).await?;
            }
        }
        if !self.catalog().dropped_indexes.is_empty() {
            clean_dropped_indexes(&self.inner).await?;
        }
        Ok(())
    }

    /// Checks that every document at the newest snapshot satisfies `schema` (the check
    /// [`Store::set_schema`] makes), without changing anything; `progress` learns each table
    /// checked.
    pub async fn check_schema(&self, schema: &Schema, mut progress: impl FnMut(&str) + Send) -> Result<()> {
        let mut tx = self.begin_with(true, TransactionLimits::unlimited());
        let catalog = Arc::new(tx.catalog().clone());
        check_documents(&mut tx, &catalog, schema, &mut progress).await
    }

    /// The number of documents in `table` at the newest snapshot (a scan).
    pub async fn count_documents(&self, table: &str) -> Result<u64> {
        let mut tx = self.begin_with(true, TransactionLimits::unlimited());
        if tx.catalog().table(table).is_none() {
            return Ok(0);
        }
        let stream = tx.open_query(Query::full_table_scan(table))?;
        let mut n = 0;
        while tx.next(stream).await?.is_some() {
            n += 1;
        }
        tx.close_query(stream)?;
        Ok(n)
    }

    async fn try_set_schema(&self, schema: &Schema) -> Result<(Timestamp, Vec<(String, u32)>)> {
        let mut tx = self.begin_with(false, TransactionLimits::unlimited());
        let catalog = Arc::new(tx.catalog().clone());
        check_documents(&mut tx, &catalog, schema, &mut |_| {}).await?;
        let mut added = Vec::new();
        let mut new_tables = Vec::new();
        for (name, def) in &schema.tables {
            let existing = catalog.table(name);
            if existing.is_none() {
                new_tables.push(tx.ensure_table(name));
            }
            for (index, fields) in &def.indexes {
                let same = existing.and_then(|t| t.indexes.get(index)).is_some_and(|m| &m.fields == fields);
                if !same {
                    added.push((name.clone(), index.clone(), fields.clone(), self.inner.reserve_index_id()));
                }
            }
        }
        let mut added_search = Vec::new();
        for (name, def) in &schema.tables {
            let existing = catalog.table(name);
            for (index, declared) in &def.search_indexes {
                let same = existing.and_then(|t| t.search_indexes.get(index)).is_some_and(|m| m.declares(declared));
                if !same {
                    added_search.push((name.clone(), index.clone(), declared.clone(), self.inner.reserve_index_id()));
                }
            }
        }
        let touched: BTreeSet<String> =
            schema.tables.keys().chain(catalog.tables.keys()).filter(|t| !t.starts_with('_')).cloned().collect();
        tx.catalog_writes.extend(touched);
        let schema = schema.clone();
        let to_add = added.clone();
        let to_add_search = added_search.clone();
        tx.catalog_edit = Some(Box::new(move |c: &mut Catalog| {
            // System tables belong to the host, not to the app's schema.
            let names: Vec<String> = c.tables.keys().filter(|t| !t.starts_with('_')).cloned().collect();
            for table in names {
                let declared = schema.tables.get(&table);
                let existing: Vec<(String, Vec<FieldPath>)> = c
                    .table(&table)
                    .map(|t| t.indexes.iter().map(|(n, m)| (n.clone(), m.fields.clone())).collect())
                    .unwrap_or_default();
                for (index, fields) in existing {
                    if declared.and_then(|d| d.indexes.get(&index)) != Some(&fields) {
                        c.drop_index(&table, &index)?;
                    }
                }
                if let Some(t) = c.table_mut(&table) {
                    // A search index's files go with it (see `SearchIndexes::sync_catalog`).
                    t.search_indexes.retain(|name, m| {
                        declared.and_then(|d| d.search_indexes.get(name)).is_some_and(|d| m.declares(d))
                    });
                }
                c.set_document_type(&table, declared.and_then(|d| d.document_type.clone()));
            }
            for (table, index, fields, id) in to_add {
                c.add_index(&table, &index, fields, id)?;
            }
            for (table, index, def, id) in to_add_search {
                c.add_search_index(&table, &index, def, id)?;
            }
            c.schema_validation = schema.schema_validation;
            Ok(())
        }));
        drop(new_tables);
        let ts = tx.commit().await?;
        let mut added: Vec<(String, u32)> = added.into_iter().map(|(t, _, _, id)| (t, id)).collect();
        added.extend(added_search.into_iter().map(|(t, _, _, id)| (t, id)));
        Ok((ts, added))
    }

    /// Waits until search index `id` of `table` is built and ready (or gone).
    async fn wait_search_ready(&self, table: &str, id: u32) {
        let mut published = self.inner.published.subscribe();
        self.inner.search.wake.notify_one();
        loop {
            let ready = self
                .catalog()
                .table(table)
                .and_then(|t| t.search_indexes.values().find(|m| m.id == id).map(|m| m.ready));
            if ready != Some(false) {
                return;
            }
            if published.changed().await.is_err() {
                return;
            }
        }
    }

    /// Stops the committer (after in-flight commits finish) and background tasks.
    pub async fn close(self) {
        self.inner.commit_tx.lock().take();
        let committer = self.committer.lock().take();
        if let Some(c) = committer {
            let _ = c.await;
        }
        let _ = self.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = self.background.lock().drain(..).collect();
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        // Search indexes on disk then cover the newest commit: the next start resumes them.
        maintain_search(&self.inner, true).await;
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.inner.commit_tx.lock().take();
        let _ = self.shutdown.send(true);
        for t in self.background.lock().drain(..) {
            t.abort();
        }
    }
}

/// Fails with the first document of `tx`'s snapshot that breaks `schema` (when it is enforced).
async fn check_documents(
    tx: &mut Transaction,
    catalog: &Catalog,
    schema: &Schema,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<()> {
    if !schema.schema_validation {
        return Ok(());
    }
    for (name, def) in &schema.tables {
        let Some(validator) = &def.document_type else { continue };
        let stream = tx.open_query(Query::full_table_scan(name))?;
        while let Some(doc) = tx.next(stream).await? {
            validator.check_document(&doc.value, &SchemaIds(catalog, schema)).map_err(|e| match e {
                kiln_value::ValueError::ValidationFailed { path, message } => StoreError::SchemaViolation {
                    table: name.clone(),
                    path,
                    message: format!("existing document {} breaks the new schema: {message}", doc.id),
                },
                other => other.into(),
            })?;
        }
        tx.close_query(stream)?;
        progress(name);
    }
    Ok(())
}

/// Ids in a schema check: tables existing or declared by the schema being applied.
struct SchemaIds<'a>(&'a Catalog, &'a Schema);

impl IdCheck for SchemaIds<'_> {
    fn is_id_of(&self, id: &str, table: &str) -> bool {
        match (DocumentId::decode(id), self.0.table(table)) {
            (Ok(d), Some(t)) => d.table == t.number,
            (Ok(_), None) => self.1.tables.contains_key(table),
            _ => false,
        }
    }
}

/// Writes the entries of index `id` for every document of `table`, batch by batch at the
/// newest snapshot, then marks the index ready. Commits made meanwhile maintain the index
/// themselves (they see it in the catalog), and entries carry timestamps, so a document
/// changed during the backfill ends with its newest entry whichever write lands first.
async fn backfill(inner: &Arc<Inner>, table: &str, id: u32) -> Result<()> {
    let span = tracing::info_span!("index_backfill", %table, index = id);
    let _guard = span.enter();
    let mut after: Option<Vec<u8>> = None;
    let mut total = 0usize;
    loop {
        let snap = inner.snapshot();
        let Some(meta) = snap.catalog.table(table) else { return Ok(()) };
        let Some(index) = meta.indexes.values().find(|m| m.id == id) else { return Ok(()) };
        if index.ready {
            return Ok(());
        }
        let batch = inner.config.backfill_batch.max(1);
        let hits = inner.scan_table_after(meta.number, after.as_deref(), snap.ts, batch).await?;
        let mut entries = Vec::with_capacity(hits.len());
        for hit in &hits {
            let Some(bytes) = &hit.revision.value else { continue };
            let doc = Document::decode(hit.revision.id, bytes)?;
            entries.push((ordered_index_key(&index.fields, &doc), doc.id));
        }
        total += entries.len();
        inner.persistence.write_index_entries(IndexId(id), snap.ts, entries).await?;
        match hits.last() {
            Some(last) if hits.len() >= batch => after = Some(last.key.clone()),
            _ => break,
        }
    }
    let table_name = table.to_owned();
    let edit: CatalogEdit = Box::new(move |c: &mut Catalog| {
        if let Some(t) = c.table_mut(&table_name) {
            for m in t.indexes.values_mut() {
                if m.id == id {
                    m.ready = true;
                }
            }
        }
        Ok(())
    });
    let ts = inner.snapshot().ts;
    let keys = WrittenKeys::new(vec![(CATALOG_INDEX, table.as_bytes().to_vec())]);
    inner
        .submit(CommitRequest {
            begin_ts: ts,
            reads: ReadSet::new(),
            docs: Vec::new(),
            index_writes: Vec::new(),
            keys,
            search: Vec::new(),
            catalog_edit: Some(edit),
            until_validated: None,
        })
        .await?;
    tracing::info!(documents = total, "index ready");
    Ok(())
}

/// Builds search indexes waiting for it and merges recent writes into all of them; marks the
/// built ones ready. `closing`: the indexes must cover the newest commit when this returns.
async fn maintain_search(inner: &Arc<Inner>, closing: bool) {
    let built = inner.search.maintain(inner, closing).await;
    for (number, id) in built {
        let catalog = inner.snapshot().catalog;
        let Some(meta) = catalog.table_by_number(number) else { continue };
        if meta.search_indexes.values().find(|m| m.id == id).map(|m| m.ready) != Some(false) {
            continue;
        }
        let table = meta.name.clone();
        let name = table.clone();
        let edit: CatalogEdit = Box::new(move |c: &mut Catalog| {
            if let Some(t) = c.table_mut(&name) {
                for m in t.search_indexes.values_mut().filter(|m| m.id == id) {
                    m.ready = true;
                }
            }
            Ok(())
        });
        let request = CommitRequest {
            begin_ts: inner.snapshot().ts,
            reads: ReadSet::new(),
            docs: Vec::new(),
            index_writes: Vec::new(),
            keys: WrittenKeys::new(vec![(CATALOG_INDEX, table.as_bytes().to_vec())]),
            search: Vec::new(),
            catalog_edit: Some(edit),
            until_validated: None,
        };
        if let Err(e) = inner.submit(request).await {
            tracing::warn!(error = %e, %table, index = id, "marking a search index ready failed");
        }
    }
}

async fn clean_dropped_indexes(inner: &Arc<Inner>) -> Result<()> {
    let dropped = inner.snapshot().catalog.dropped_indexes.clone();
    for id in dropped {
        loop {
            let step =
                inner.persistence.delete_index_entries(IndexId(id), inner.config.prune_batch_rows.max(1)).await?;
            if step.done {
                break;
            }
            tokio::task::yield_now().await;
        }
        let edit: CatalogEdit = Box::new(move |c: &mut Catalog| {
            c.dropped_indexes.retain(|d| *d != id);
            Ok(())
        });
        let ts = inner.snapshot().ts;
        inner
            .submit(CommitRequest {
                begin_ts: ts,
                reads: ReadSet::new(),
                docs: Vec::new(),
                index_writes: Vec::new(),
                keys: WrittenKeys::default(),
                search: Vec::new(),
                catalog_edit: Some(edit),
                until_validated: None,
            })
            .await?;
    }
    Ok(())
}

async fn prune(inner: &Arc<Inner>) -> Result<u64> {
    let retention = inner.config.revision_retention.as_nanos() as u64;
    let mut cutoff = Timestamp(now_ns().saturating_sub(retention).min(inner.snapshot().ts.0));
    // A search index on disk catches up after a restart from the revisions since it was
    // written: those stay.
    if let Some(limit) = inner.search.prune_limit() {
        cutoff = cutoff.min(limit);
    }
    if cutoff.0 <= inner.prune_floor.load(Ordering::Acquire) {
        return Ok(0);
    }
    // Raise the floor first: reads below it from now on report SnapshotTooOld.
    inner.prune_floor.fetch_max(cutoff.0, Ordering::AcqRel);
    let span = tracing::debug_span!("prune", cutoff = cutoff.0);
    let _guard = span.enter();
    let mut total = 0;
    loop {
        let step = inner.persistence.prune(cutoff, inner.config.prune_batch_rows.max(1)).await?;
        total += step.rows_deleted;
        if step.done {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(total)
}
