//! Full-text search and vector indexes, derived from the store's documents.
//!
//! Each search index is a tantivy index ([`TextIndex`]) that reflects every commit up to some
//! timestamp, plus the revisions published after it, kept in memory until a background merge
//! writes them into tantivy. A vector index works the same way over an HNSW graph
//! ([`VectorIndex`]), except that the graph changes in place: only its newest state is
//! served (vector searches run in actions, at no snapshot), it is saved to its file every
//! `vector_save_interval`, and a restart catches up from the last save. A search at snapshot `ts` takes the newest tantivy snapshot at or
//! before `ts`, leaves out the documents written between it and `ts`, and matches and scores
//! those from their revisions in memory (and the transaction's own writes) instead: exactly
//! the documents as of `ts`. Old tantivy snapshots stay usable for a while (readers at older
//! snapshots), and the memory part keeps what they need.
//!
//! The index on disk records the commit it reflects. After a restart an index that does not
//! cover the newest commit catches up with the revisions committed since (which pruning
//! keeps), or is rebuilt from the documents when that is not possible: nothing acknowledged is
//! missing and nothing is there twice.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kiln_persistence::Timestamp;
use kiln_search::{DocTerms, DocVector, TextIndex, TextQuery, TextSnapshot, VectorIndex, VectorQuery};
use kiln_value::{InternalId, TableNumber, Value};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::catalog::{Catalog, SearchIndexMeta};
use crate::document::Document;
use crate::error::{Result, StoreError};
use crate::knobs::StoreConfig;
use crate::store::Inner;

/// How long a search waits for its index to be rebuilt before failing with `IndexNotReady`.
pub(crate) const BUILD_WAIT: Duration = Duration::from_secs(60);

/// Most documents one search query returns (Convex's limit).
pub const MAX_SEARCH_RESULTS: usize = 1024;

/// A revision as one search index sees it: `None` when the document is gone or its searched
/// field is not a string.
pub(crate) type Terms = Option<Arc<DocTerms>>;

/// A revision as one index of kind `K` sees it (`None`: not in the index).
type Entry<K> = Option<Arc<<K as Kind>::Doc>>;

/// What one commit changed in one search or vector index.
pub(crate) struct SearchWrite {
    pub index: u32,
    pub id: InternalId,
    pub entry: WriteEntry,
}

/// The new revision as a text or vector index sees it.
pub(crate) enum WriteEntry {
    Text(Terms),
    Vector(Option<Arc<DocVector>>),
}

pub(crate) fn search_error(e: kiln_search::SearchError) -> StoreError {
    StoreError::Search { code: e.code(), message: e.to_string() }
}

/// The terms of `doc` in search index `meta`.
pub(crate) fn doc_terms(meta: &SearchIndexMeta, doc: &Document) -> Terms {
    let Some(Value::String(text)) = doc.field(&meta.search_field) else { return None };
    let filters: Vec<Option<&Value>> = meta.filter_fields.iter().map(|f| doc.field(f)).collect();
    Some(Arc::new(DocTerms::new(text, &filters)))
}

/// The vector of `doc` in vector index `meta` (`None` unless its field holds a vector of the
/// index's dimensions).
pub(crate) fn doc_vector(meta: &SearchIndexMeta, doc: &Document) -> Option<Arc<DocVector>> {
    let filters: Vec<Option<&Value>> = meta.filter_fields.iter().map(|f| doc.field(f)).collect();
    DocVector::new(&meta.vector_def(), doc.field(&meta.search_field), &filters).map(Arc::new)
}

/// What differs between a text index and a vector index; the rest of [`LiveIndex`] is shared.
pub(crate) trait Kind: Send + Sync + Sized + 'static {
    /// A document as the index sees it.
    type Doc: Send + Sync + 'static;
    /// The index on disk (and in memory).
    type Disk: Send + 'static;
    /// A view searches use while the index changes.
    type Snapshot: Clone + Send + Sync + 'static;
    /// Whether older snapshots stay valid after changes (tantivy's do; a graph changes in place).
    const KEEPS_SNAPSHOTS: bool;
    fn entry(meta: &SearchIndexMeta, doc: &Document) -> Entry<Self>;
    fn entry_bytes(doc: &Self::Doc) -> usize;
    fn create(dir: Option<&Path>, meta: &SearchIndexMeta, config: &StoreConfig) -> kiln_search::Result<Self::Disk>;
    fn open(dir: &Path, meta: &SearchIndexMeta, config: &StoreConfig) -> kiln_search::Result<Self::Disk>;
    fn apply(disk: &mut Self::Disk, changes: &[(InternalId, Entry<Self>)], ts: u64) -> kiln_search::Result<()>;
    fn snapshot(disk: &Self::Disk) -> Self::Snapshot;
    fn snapshot_ts(snapshot: &Self::Snapshot) -> u64;
    /// The newest commit a restart finds in the files (zero: none).
    fn durable_ts(disk: &Self::Disk) -> u64;
    /// Makes the index's current state durable (a no-op where every apply already is).
    fn persist(disk: &mut Self::Disk) -> kiln_search::Result<()>;
    fn disk_bytes(disk: &Self::Disk) -> u64;
    /// Memory the index structure itself takes (beyond the revisions not merged yet).
    fn structure_bytes(disk: &Self::Disk) -> usize;
}

/// Full-text search indexes (tantivy).
pub(crate) struct Text;

impl Kind for Text {
    type Doc = DocTerms;
    type Disk = TextIndex;
    type Snapshot = TextSnapshot;
    const KEEPS_SNAPSHOTS: bool = true;
    fn entry(meta: &SearchIndexMeta, doc: &Document) -> Terms {
        doc_terms(meta, doc)
    }
    fn entry_bytes(doc: &DocTerms) -> usize {
        doc.bytes()
    }
    fn create(dir: Option<&Path>, meta: &SearchIndexMeta, _: &StoreConfig) -> kiln_search::Result<TextIndex> {
        match dir {
            Some(dir) => TextIndex::open(dir, meta.def()),
            None => TextIndex::in_memory(meta.def()),
        }
    }
    fn open(dir: &Path, meta: &SearchIndexMeta, _: &StoreConfig) -> kiln_search::Result<TextIndex> {
        TextIndex::open(dir, meta.def())
    }
    fn apply(disk: &mut TextIndex, changes: &[(InternalId, Terms)], ts: u64) -> kiln_search::Result<()> {
        disk.apply(changes, ts)
    }
    fn snapshot(disk: &TextIndex) -> TextSnapshot {
        disk.snapshot()
    }
    fn snapshot_ts(snapshot: &TextSnapshot) -> u64 {
        snapshot.ts()
    }
    fn durable_ts(disk: &TextIndex) -> u64 {
        disk.indexed_ts()
    }
    fn persist(_: &mut TextIndex) -> kiln_search::Result<()> {
        Ok(())
    }
    fn disk_bytes(disk: &TextIndex) -> u64 {
        disk.size_bytes()
    }
    fn structure_bytes(_: &TextIndex) -> usize {
        0
    }
}

/// Vector indexes (usearch HNSW graphs).
pub(crate) struct Vector;

impl Kind for Vector {
    type Doc = DocVector;
    type Disk = Arc<VectorIndex>;
    type Snapshot = (Arc<VectorIndex>, u64);
    const KEEPS_SNAPSHOTS: bool = false;
    fn entry(meta: &SearchIndexMeta, doc: &Document) -> Option<Arc<DocVector>> {
        doc_vector(meta, doc)
    }
    fn entry_bytes(doc: &DocVector) -> usize {
        doc.bytes()
    }
    fn create(dir: Option<&Path>, meta: &SearchIndexMeta, config: &StoreConfig) -> kiln_search::Result<Self::Disk> {
        VectorIndex::create(dir, meta.vector_def(), &config.vector)
    }
    fn open(dir: &Path, meta: &SearchIndexMeta, config: &StoreConfig) -> kiln_search::Result<Self::Disk> {
        VectorIndex::open(dir, meta.vector_def(), &config.vector)
    }
    fn apply(disk: &mut Self::Disk, changes: &[(InternalId, Entry<Self>)], ts: u64) -> kiln_search::Result<()> {
        disk.apply(changes, ts)
    }
    fn snapshot(disk: &Self::Disk) -> Self::Snapshot {
        (disk.clone(), disk.indexed_ts())
    }
    fn snapshot_ts(snapshot: &Self::Snapshot) -> u64 {
        snapshot.1
    }
    fn durable_ts(disk: &Self::Disk) -> u64 {
        disk.saved_ts()
    }
    fn persist(disk: &mut Self::Disk) -> kiln_search::Result<()> {
        if disk.saved_ts() < disk.indexed_ts() { disk.save() } else { Ok(()) }
    }
    fn disk_bytes(disk: &Self::Disk) -> u64 {
        disk.disk_bytes()
    }
    fn structure_bytes(disk: &Self::Disk) -> usize {
        disk.memory_bytes()
    }
}

/// Whether a write from `old` to `new` leaves what search index `meta` sees unchanged.
pub(crate) fn unchanged(meta: &SearchIndexMeta, old: Option<&Document>, new: Option<&Document>) -> bool {
    match (old, new) {
        (Some(o), Some(n)) => {
            o.field(&meta.search_field) == n.field(&meta.search_field)
                && meta.filter_fields.iter().all(|f| o.field(f) == n.field(f))
        }
        (None, None) => true,
        _ => false,
    }
}

/// What a restart finds of an index on disk.
enum Resume {
    Ready,
    CatchUp(Timestamp),
    Rebuild,
}

/// Work waiting for the merger: a build, or a catch-up from a commit.
type Pending = (AnyIndex, Option<Timestamp>);

struct View<K: Kind> {
    /// Snapshots, oldest first, with when each was taken; empty until built.
    snapshots: VecDeque<(K::Snapshot, Instant)>,
    /// Revisions published after the oldest snapshot, by commit.
    recent: BTreeMap<Timestamp, Vec<(InternalId, Entry<K>)>>,
    recent_bytes: usize,
}

/// Figures an index keeps current for the usage report and for pruning.
#[derive(Default)]
struct Figures {
    /// Bytes the files took after the last change.
    disk: AtomicU64,
    /// The newest commit the files cover.
    durable: AtomicU64,
    /// Bytes the index structure takes in memory.
    structure: AtomicUsize,
}

/// One search or vector index of the store.
pub(crate) struct LiveIndex<K: Kind> {
    pub meta: SearchIndexMeta,
    pub table: TableNumber,
    dir: Option<PathBuf>,
    view: Mutex<View<K>>,
    index: Arc<Mutex<Option<K::Disk>>>,
    figures: Arc<Figures>,
    /// When the index was last made durable ([`Kind::persist`]), and how often it is.
    persisted: Mutex<Instant>,
    save_every: Duration,
    built: watch::Sender<bool>,
    /// One build or merge at a time.
    work: tokio::sync::Mutex<()>,
    /// Full builds from the documents since the store opened.
    builds: AtomicU64,
}

fn entry_bytes<K: Kind>(entry: &Entry<K>) -> usize {
    48 + entry.as_ref().map_or(0, |t| K::entry_bytes(t))
}

impl<K: Kind> LiveIndex<K> {
    fn new(meta: SearchIndexMeta, table: TableNumber, dir: Option<PathBuf>, save_every: Duration) -> LiveIndex<K> {
        LiveIndex {
            meta,
            table,
            dir,
            view: Mutex::new(View { snapshots: VecDeque::new(), recent: BTreeMap::new(), recent_bytes: 0 }),
            index: Arc::new(Mutex::new(None)),
            figures: Arc::new(Figures::default()),
            persisted: Mutex::new(Instant::now()),
            save_every,
            built: watch::channel(false).0,
            work: tokio::sync::Mutex::new(()),
            builds: AtomicU64::new(0),
        }
    }

    fn record(&self, ts: Timestamp, changes: Vec<(InternalId, Entry<K>)>) {
        let bytes: usize = changes.iter().map(|(_, t)| entry_bytes::<K>(t)).sum();
        let mut view = self.view.lock();
        view.recent_bytes += bytes;
        view.recent.entry(ts).or_default().extend(changes);
    }

    /// Bytes the revisions in memory take.
    pub fn memory_bytes(&self) -> usize {
        self.view.lock().recent_bytes
    }

    /// Bytes the index's files take.
    pub fn disk_bytes(&self) -> u64 {
        self.figures.disk.load(Ordering::Relaxed)
    }

    /// Bytes the index structure takes in memory (a vector index's graph).
    pub fn structure_bytes(&self) -> usize {
        self.figures.structure.load(Ordering::Relaxed)
    }

    async fn wait_built(&self) {
        let mut rx = self.built.subscribe();
        let _ = rx.wait_for(|b| *b).await;
    }

    /// Waits up to `limit` for the index to be served (after a restart that catches it up or
    /// rebuilds it); false if it still is not.
    pub async fn built_within(&self, limit: std::time::Duration) -> bool {
        tokio::time::timeout(limit, self.wait_built()).await.is_ok()
    }

    /// Builds the index from the documents at the newest snapshot (replacing any), then
    /// serves queries.
    async fn build(self: &Arc<Self>, inner: &Inner) -> Result<()> {
        let _work = self.work.lock().await;
        let span = tracing::info_span!("search_index_build", index = self.meta.id);
        let _guard = span.enter();
        let started = Instant::now();
        let ts = inner.published_ts();
        let (dir, meta, slot, config) = (self.dir.clone(), self.meta.clone(), self.index.clone(), inner.config.clone());
        blocking(move || {
            if let Some(dir) = &dir
                && dir.exists()
            {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| StoreError::Search { code: "SearchIndexFailed", message: e.to_string() })?;
            }
            let index = K::create(dir.as_deref(), &meta, &config).map_err(search_error)?;
            *slot.lock() = Some(index);
            Ok(())
        })
        .await?;
        let mut after: Option<Vec<u8>> = None;
        let mut total = 0usize;
        let batch = inner.config.backfill_batch.max(1) * 4;
        loop {
            let hits = inner.scan_table_after(self.table, after.as_deref(), ts, batch).await?;
            let mut changes = Vec::with_capacity(hits.len());
            for hit in &hits {
                let Some(bytes) = &hit.revision.value else { continue };
                let doc = Document::decode(hit.revision.id, bytes)?;
                if let Some(entry) = K::entry(&self.meta, &doc) {
                    changes.push((doc.id.internal, Some(entry)));
                }
            }
            total += changes.len();
            let full = hits.len() >= batch;
            after = hits.last().map(|h| h.key.clone());
            // Intermediate commits cover no timestamp: a crash mid-build rebuilds.
            let covers = if full { 0 } else { ts.0 };
            let slot = self.index.clone();
            blocking(move || with_index::<K, _>(&slot, |index| K::apply(index, &changes, covers))).await?;
            if !full {
                break;
            }
            tracing::debug!(documents = total, "search index build progress");
        }
        self.persist(true).await?;
        self.install(ts).await?;
        self.builds.fetch_add(1, Ordering::Relaxed);
        tracing::info!(documents = total, ms = started.elapsed().as_millis() as u64, "search index built");
        Ok(())
    }

    /// Makes the index durable if it is due (`force`: now), and refreshes its figures.
    async fn persist(&self, force: bool) -> Result<()> {
        let due = force || self.persisted.lock().elapsed() >= self.save_interval();
        let (slot, figures) = (self.index.clone(), self.figures.clone());
        blocking(move || {
            with_index::<K, _>(&slot, |index| {
                if due {
                    K::persist(index)?;
                }
                figures.disk.store(K::disk_bytes(index), Ordering::Relaxed);
                figures.durable.store(K::durable_ts(index), Ordering::Relaxed);
                figures.structure.store(K::structure_bytes(index), Ordering::Relaxed);
                Ok(())
            })
        })
        .await?;
        if due {
            *self.persisted.lock() = Instant::now();
        }
        Ok(())
    }

    fn save_interval(&self) -> Duration {
        self.save_every
    }

    /// Serves the index as it is (covering every commit up to `ts`) from now on.
    async fn install(&self, ts: Timestamp) -> Result<()> {
        let slot = self.index.clone();
        let snapshot = blocking(move || with_index::<K, _>(&slot, |index| Ok(K::snapshot(index)))).await?;
        {
            let mut view = self.view.lock();
            view.snapshots.clear();
            view.snapshots.push_back((snapshot, Instant::now()));
            evict_recent(&mut view, ts);
        }
        self.built.send_replace(true);
        Ok(())
    }

    /// Brings an index on disk that covers the commits up to `from` up to the newest commit
    /// with the revisions written since (a restart after a crash); rebuilds it when the
    /// persistence cannot list them.
    async fn catch_up(self: &Arc<Self>, inner: &Inner, from: Timestamp) -> Result<()> {
        let work = self.work.lock().await;
        let started = Instant::now();
        let until = inner.published_ts();
        let mut latest: HashMap<InternalId, Entry<K>> = HashMap::new();
        let mut after = None;
        let batch = inner.config.backfill_batch.max(1) * 4;
        loop {
            let revisions = match inner.persistence.scan_revisions(self.table, from, until, after, batch).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, index = self.meta.id, "cannot list recent revisions; rebuilding");
                    drop(work);
                    return self.build(inner).await;
                }
            };
            for r in &revisions {
                let entry = match &r.value {
                    Some(bytes) => K::entry(&self.meta, &Document::decode(r.id, bytes)?),
                    None => None,
                };
                latest.insert(r.id.internal, entry);
            }
            if revisions.len() < batch {
                break;
            }
            after = revisions.last().map(|r| (r.ts, r.id.internal));
        }
        let changes: Vec<(InternalId, Entry<K>)> = latest.into_iter().collect();
        let count = changes.len();
        let slot = self.index.clone();
        blocking(move || with_index::<K, _>(&slot, |index| K::apply(index, &changes, until.0))).await?;
        self.persist(true).await?;
        self.install(until).await?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(documents = count, ms, from = from.0, until = until.0, "search index caught up");
        Ok(())
    }

    /// The newest commit the index's files cover (zero before it is built): a restart
    /// resumes from there.
    pub fn disk_ts(&self) -> Timestamp {
        Timestamp(self.figures.durable.load(Ordering::Relaxed))
    }

    /// Opens the index on disk after a restart (the store's newest commit is `ts`, revisions up
    /// to `pruned` may be gone): serves it at once if it covers `ts` (a clean stop), or says
    /// from which commit it must catch up, or that it must be rebuilt.
    fn resume(&self, ts: Timestamp, pruned: Timestamp, config: &StoreConfig) -> Resume {
        let Some(dir) = &self.dir else { return Resume::Rebuild };
        if !dir.exists() {
            return Resume::Rebuild;
        }
        let index = match K::open(dir, &self.meta, config) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(error = %e, index = self.meta.id, "search index unreadable; rebuilding");
                return Resume::Rebuild;
            }
        };
        let covered = Timestamp(K::durable_ts(&index));
        // Zero: a build that did not finish.
        if covered == Timestamp::ZERO || covered > ts || covered < pruned {
            return Resume::Rebuild;
        }
        self.figures.disk.store(K::disk_bytes(&index), Ordering::Relaxed);
        self.figures.durable.store(covered.0, Ordering::Relaxed);
        self.figures.structure.store(K::structure_bytes(&index), Ordering::Relaxed);
        let snapshot = K::snapshot(&index);
        *self.index.lock() = Some(index);
        if covered < ts {
            return Resume::CatchUp(covered);
        }
        self.view.lock().snapshots.push_back((snapshot, Instant::now()));
        self.built.send_replace(true);
        Resume::Ready
    }

    /// Writes the revisions in memory into the index (up to the newest published commit),
    /// takes a new snapshot, and forgets snapshots and revisions no longer needed.
    async fn merge(&self, inner: &Inner, keep_for: Duration, budget: usize, force: bool) -> Result<()> {
        let _work = self.work.lock().await;
        let pending = {
            let view = self.view.lock();
            let Some((newest, _)) = view.snapshots.back() else { return Ok(()) };
            let newest = K::snapshot_ts(newest);
            // Revisions are recorded before their commit is published: all up to `target` are here.
            let target = inner.published_ts();
            let mut latest: HashMap<InternalId, Entry<K>> = HashMap::new();
            for (_, changes) in view.recent.range(Timestamp(newest + 1)..).take_while(|(t, _)| **t <= target) {
                for (id, entry) in changes {
                    latest.insert(*id, entry.clone());
                }
            }
            (!latest.is_empty() || (force && newest < target.0))
                .then(|| (target, latest.into_iter().collect::<Vec<_>>()))
        };
        if let Some((target, changes)) = pending {
            let slot = self.index.clone();
            let snapshot = blocking(move || {
                with_index::<K, _>(&slot, |index| {
                    K::apply(index, &changes, target.0)?;
                    Ok(K::snapshot(index))
                })
            })
            .await?;
            self.view.lock().snapshots.push_back((snapshot, Instant::now()));
        }
        self.persist(force).await?;
        self.evict(keep_for, budget);
        Ok(())
    }

    fn evict(&self, keep_for: Duration, budget: usize) {
        let mut view = self.view.lock();
        while view.snapshots.len() > 1
            && view
                .snapshots
                .front()
                .is_some_and(|(_, at)| !K::KEEPS_SNAPSHOTS || at.elapsed() > keep_for || view.recent_bytes > budget)
        {
            view.snapshots.pop_front();
            let oldest = view.snapshots.front().map_or(Timestamp::ZERO, |(s, _)| Timestamp(K::snapshot_ts(s)));
            evict_recent(&mut view, oldest);
        }
    }
}

impl LiveIndex<Text> {
    /// The best `limit` matches of `query` at snapshot `ts`, with `own` (the transaction's
    /// writes to this index) in place of what the snapshot holds for those documents; by
    /// descending score, ties by id. The index must be built ([`LiveIndex::built_within`]).
    pub async fn search(
        &self,
        ts: Timestamp,
        query: &TextQuery,
        own: HashMap<InternalId, Terms>,
        limit: usize,
    ) -> Result<Vec<(f32, InternalId)>> {
        let (snapshot, mut touched) = {
            let view = self.view.lock();
            let Some((snapshot, _)) = view.snapshots.iter().rev().find(|(s, _)| Timestamp(s.ts()) <= ts) else {
                return Err(StoreError::SnapshotTooOld { ts });
            };
            let mut touched: HashMap<InternalId, Terms> = HashMap::new();
            for (_, changes) in view.recent.range(Timestamp(snapshot.ts() + 1)..).take_while(|(t, _)| **t <= ts) {
                for (id, terms) in changes {
                    touched.insert(*id, terms.clone());
                }
            }
            (snapshot.clone(), touched)
        };
        touched.extend(own);
        let skip: HashSet<InternalId> = touched.keys().copied().collect();
        let extra: Vec<&DocTerms> = touched.values().flatten().map(|t| &**t).collect();
        let mut search = snapshot.search(query, &extra).map_err(search_error)?;
        let mut hits: Vec<(f32, InternalId)> =
            search.top(limit, &skip).map_err(search_error)?.into_iter().map(|h| (h.score, h.id)).collect();
        let def = self.meta.def();
        for (id, terms) in &touched {
            let Some(terms) = terms else { continue };
            if query.matches(&def, terms) {
                hits.push((search.score(terms).map_err(search_error)?, *id));
            }
        }
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        hits.truncate(limit);
        Ok(hits)
    }
}

impl LiveIndex<Vector> {
    /// The `query.limit` documents closest to the query vector that its filter admits, in
    /// the newest state the index knows (every commit recorded so far): the graph, with the
    /// documents written since its last merge scored here instead.
    pub async fn search(&self, query: VectorQuery) -> Result<Vec<(f32, InternalId)>> {
        let (graph, touched) = {
            let view = self.view.lock();
            let Some(((graph, ts), _)) = view.snapshots.back() else {
                return Err(StoreError::IndexNotReady(format!("vector index {}", self.meta.id)));
            };
            let mut touched: HashMap<InternalId, Option<Arc<DocVector>>> = HashMap::new();
            for (_, changes) in view.recent.range(Timestamp(ts + 1)..) {
                for (id, entry) in changes {
                    touched.insert(*id, entry.clone());
                }
            }
            (graph.clone(), touched)
        };
        blocking(move || {
            let skip: HashSet<InternalId> = touched.keys().copied().collect();
            let mut hits: Vec<(f32, InternalId)> =
                graph.search(&query, &skip).map_err(search_error)?.into_iter().map(|h| (h.score, h.id)).collect();
            for (id, doc) in &touched {
                if let Some(doc) = doc
                    && query.admits(doc)
                {
                    hits.push((kiln_search::similarity(&query.vector, &doc.vector), *id));
                }
            }
            hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            hits.truncate(query.limit);
            Ok(hits)
        })
        .await
    }
}

/// Drops the revisions at or before `ts` (the oldest snapshot covers them).
fn evict_recent<K: Kind>(view: &mut View<K>, ts: Timestamp) {
    let keep = view.recent.split_off(&Timestamp(ts.0 + 1));
    let dropped = std::mem::replace(&mut view.recent, keep);
    let freed: usize = dropped.values().flatten().map(|(_, t)| entry_bytes::<K>(t)).sum();
    view.recent_bytes -= freed.min(view.recent_bytes);
}

fn with_index<K: Kind, T>(
    slot: &Mutex<Option<K::Disk>>,
    f: impl FnOnce(&mut K::Disk) -> kiln_search::Result<T>,
) -> Result<T> {
    let mut guard = slot.lock();
    let index = guard.as_mut().ok_or_else(|| StoreError::Search {
        code: "SearchIndexFailed",
        message: "the search index is not open".into(),
    })?;
    f(index).map_err(search_error)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Search { code: "SearchIndexFailed", message: e.to_string() })?
}

/// A text or vector index.
#[derive(Clone)]
pub(crate) enum AnyIndex {
    Text(Arc<LiveIndex<Text>>),
    Vector(Arc<LiveIndex<Vector>>),
}

/// Runs the same code on either kind of index.
macro_rules! each {
    ($any:expr, $i:ident => $body:expr) => {
        match $any {
            AnyIndex::Text($i) => $body,
            AnyIndex::Vector($i) => $body,
        }
    };
}

impl AnyIndex {
    fn id(&self) -> u32 {
        each!(self, i => i.meta.id)
    }
    fn table(&self) -> TableNumber {
        each!(self, i => i.table)
    }
    fn dir(&self) -> Option<&PathBuf> {
        each!(self, i => i.dir.as_ref())
    }
}

/// The search and vector indexes of one store.
pub(crate) struct SearchIndexes {
    dir: Option<PathBuf>,
    live: RwLock<HashMap<u32, AnyIndex>>,
    /// Indexes waiting to be built (new, or not covering the newest commit after a restart).
    pending_builds: Mutex<Vec<Pending>>,
    /// Wakes the merger early (memory over budget, builds waiting).
    pub wake: tokio::sync::Notify,
    budget: usize,
    config: StoreConfig,
}

impl SearchIndexes {
    pub fn new(config: &StoreConfig) -> SearchIndexes {
        SearchIndexes {
            dir: config.search_dir.clone(),
            live: RwLock::new(HashMap::new()),
            pending_builds: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            budget: config.search_memory_bytes,
            config: config.clone(),
        }
    }

    /// A full-text search index by number.
    pub fn text(&self, id: u32) -> Option<Arc<LiveIndex<Text>>> {
        match self.live.read().get(&id) {
            Some(AnyIndex::Text(i)) => Some(i.clone()),
            _ => None,
        }
    }

    /// A vector index by number.
    pub fn vector(&self, id: u32) -> Option<Arc<LiveIndex<Vector>>> {
        match self.live.read().get(&id) {
            Some(AnyIndex::Vector(i)) => Some(i.clone()),
            _ => None,
        }
    }

    /// Every index.
    fn all(&self) -> Vec<AnyIndex> {
        self.live.read().values().cloned().collect()
    }

    /// Follows the catalog: indexes it added get built, and dropped ones are forgotten and
    /// deleted. `opening` (with the commit up to which revisions were pruned): the store was
    /// just opened at `ts`, and indexes on disk are resumed (see [`LiveIndex::resume`]).
    pub fn sync_catalog(&self, catalog: &Catalog, ts: Timestamp, opening: Option<Timestamp>) {
        let mut live = self.live.write();
        let mut wanted = HashSet::new();
        for (table, meta) in catalog.search_indexes() {
            wanted.insert(meta.id);
            if live.contains_key(&meta.id) {
                continue;
            }
            let dir = self.dir.as_ref().map(|d| d.join(meta.id.to_string()));
            let (index, resume) = match meta.dimensions {
                None => {
                    let index = Arc::new(LiveIndex::<Text>::new(meta.clone(), table.number, dir, Duration::ZERO));
                    let resume = opening.map(|pruned| index.resume(ts, pruned, &self.config));
                    (AnyIndex::Text(index), resume)
                }
                Some(_) => {
                    let index = Arc::new(LiveIndex::<Vector>::new(
                        meta.clone(),
                        table.number,
                        dir,
                        self.config.vector_save_interval,
                    ));
                    let resume = opening.map(|pruned| index.resume(ts, pruned, &self.config));
                    (AnyIndex::Vector(index), resume)
                }
            };
            match resume.unwrap_or(Resume::Rebuild) {
                Resume::Ready => {}
                Resume::CatchUp(from) => {
                    self.pending_builds.lock().push((index.clone(), Some(from)));
                    self.wake.notify_one();
                }
                Resume::Rebuild => {
                    self.pending_builds.lock().push((index.clone(), None));
                    self.wake.notify_one();
                }
            }
            live.insert(meta.id, index);
        }
        let gone: Vec<u32> = live.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in gone {
            if let Some(index) = live.remove(&id)
                && let Some(dir) = index.dir()
            {
                // Readers still holding snapshots keep their open files.
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let _ = std::fs::remove_dir_all(dir);
                });
            }
        }
    }

    /// Records a published commit's changes (before the commit becomes visible).
    pub fn record(&self, ts: Timestamp, writes: Vec<SearchWrite>) {
        if writes.is_empty() {
            return;
        }
        let mut texts: HashMap<u32, Vec<(InternalId, Entry<Text>)>> = HashMap::new();
        let mut vectors: HashMap<u32, Vec<(InternalId, Entry<Vector>)>> = HashMap::new();
        for w in writes {
            match w.entry {
                WriteEntry::Text(t) => texts.entry(w.index).or_default().push((w.id, t)),
                WriteEntry::Vector(v) => vectors.entry(w.index).or_default().push((w.id, v)),
            }
        }
        let live = self.live.read();
        let mut over = false;
        for (id, changes) in texts {
            if let Some(AnyIndex::Text(index)) = live.get(&id) {
                index.record(ts, changes);
                over |= index.memory_bytes() > self.budget;
            }
        }
        for (id, changes) in vectors {
            if let Some(AnyIndex::Vector(index)) = live.get(&id) {
                index.record(ts, changes);
                over |= index.memory_bytes() > self.budget;
            }
        }
        if over {
            self.wake.notify_one();
        }
    }

    /// Memory the revisions not yet merged take, over all indexes.
    pub fn memory_bytes(&self) -> usize {
        self.all().iter().map(|i| each!(i, i => i.memory_bytes())).sum()
    }

    /// Memory the vector indexes' graphs take.
    pub fn vector_memory_bytes(&self) -> usize {
        self.all().iter().map(|i| each!(i, i => i.structure_bytes())).sum()
    }

    /// Builds waiting indexes, then merges every index's recent revisions (`force`: records
    /// the newest commit in every index even without changes, and saves vector graphs).
    /// Returns the indexes built.
    pub async fn maintain(&self, inner: &Inner, force: bool) -> Vec<(TableNumber, u32)> {
        let builds: Vec<Pending> = std::mem::take(&mut *self.pending_builds.lock());
        let mut built = Vec::new();
        for (index, from) in builds {
            if !self.live.read().contains_key(&index.id()) {
                continue;
            }
            let done = each!(&index, i => match from {
                Some(from) => i.catch_up(inner, from).await,
                None => i.build(inner).await,
            });
            match done {
                Ok(()) => built.push((index.table(), index.id())),
                Err(e) => {
                    tracing::error!(error = %e, index = index.id(), "search index build failed; retrying");
                    // A failed catch-up may have left the index half-changed: rebuild it.
                    self.pending_builds.lock().push((index, None));
                }
            }
        }
        let budget = inner.config.search_memory_bytes;
        for index in self.all() {
            let merged = each!(&index, i => i.merge(inner, inner.config.search_snapshot_age, budget, force).await);
            if let Err(e) = merged {
                tracing::warn!(error = %e, index = index.id(), "search index merge failed");
            }
        }
        built
    }

    /// The oldest commit an index on disk covers, or will catch up from: revisions after it
    /// must not be pruned (a restart lists them).
    pub fn prune_limit(&self) -> Option<Timestamp> {
        let waiting = self.pending_builds.lock().iter().filter_map(|(_, from)| *from).min();
        let covered = self.all().iter().map(|i| each!(i, i => i.disk_ts())).filter(|ts| *ts > Timestamp::ZERO).min();
        waiting.into_iter().chain(covered).min()
    }

    /// Full builds of indexes from the documents since the store opened (new indexes, and
    /// restarts that could not resume an index on disk).
    pub fn builds(&self) -> u64 {
        self.all().iter().map(|i| each!(i, i => i.builds.load(Ordering::Relaxed))).sum()
    }

    /// Bytes the indexes take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.all().iter().map(|i| each!(i, i => i.disk_bytes())).sum()
    }
}
