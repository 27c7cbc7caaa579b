//! Full-text search indexes, derived from the store's documents.
//!
//! Each search index is a tantivy index ([`TextIndex`]) that reflects every commit up to some
//! timestamp, plus the revisions published after it, kept in memory until a background merge
//! writes them into tantivy. A search at snapshot `ts` takes the newest tantivy snapshot at or
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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use kiln_persistence::Timestamp;
use kiln_search::{DocTerms, SearchIndexDef, TextIndex, TextQuery, TextSnapshot};
use kiln_value::{InternalId, TableNumber, Value};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::catalog::{Catalog, SearchIndexMeta};
use crate::document::Document;
use crate::error::{Result, StoreError};
use crate::knobs::StoreConfig;
use crate::store::Inner;

/// Most documents one search query returns (Convex's limit).
pub const MAX_SEARCH_RESULTS: usize = 1024;

/// A revision as one search index sees it: `None` when the document is gone or its searched
/// field is not a string.
pub(crate) type Terms = Option<Arc<DocTerms>>;

/// What one commit changed in one search index.
pub(crate) struct SearchWrite {
    pub index: u32,
    pub id: InternalId,
    pub terms: Terms,
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
type Pending = (Arc<LiveIndex>, Option<Timestamp>);

struct View {
    /// Tantivy snapshots, oldest first, with when each was taken; empty until built.
    snapshots: VecDeque<(TextSnapshot, Instant)>,
    /// Revisions published after the oldest snapshot, by commit.
    recent: BTreeMap<Timestamp, Vec<(InternalId, Terms)>>,
    recent_bytes: usize,
}

/// One search index of the store.
pub(crate) struct LiveIndex {
    pub meta: SearchIndexMeta,
    pub table: TableNumber,
    pub def: SearchIndexDef,
    dir: Option<PathBuf>,
    view: Mutex<View>,
    index: Arc<Mutex<Option<TextIndex>>>,
    /// Bytes the tantivy index took after its last change.
    disk: Arc<std::sync::atomic::AtomicU64>,
    built: watch::Sender<bool>,
    /// One build or merge at a time.
    work: tokio::sync::Mutex<()>,
    /// Full builds from the documents since the store opened.
    builds: std::sync::atomic::AtomicU64,
}

fn entry_bytes(terms: &Terms) -> usize {
    48 + terms.as_ref().map_or(0, |t| t.bytes())
}

impl LiveIndex {
    fn new(meta: SearchIndexMeta, table: TableNumber, dir: Option<PathBuf>) -> LiveIndex {
        LiveIndex {
            def: meta.def(),
            meta,
            table,
            dir,
            view: Mutex::new(View { snapshots: VecDeque::new(), recent: BTreeMap::new(), recent_bytes: 0 }),
            index: Arc::new(Mutex::new(None)),
            disk: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            built: watch::channel(false).0,
            work: tokio::sync::Mutex::new(()),
            builds: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn record(&self, ts: Timestamp, changes: Vec<(InternalId, Terms)>) {
        let bytes: usize = changes.iter().map(|(_, t)| entry_bytes(t)).sum();
        let mut view = self.view.lock();
        view.recent_bytes += bytes;
        view.recent.entry(ts).or_default().extend(changes);
    }

    /// Bytes the revisions in memory take.
    pub fn memory_bytes(&self) -> usize {
        self.view.lock().recent_bytes
    }

    /// Bytes the tantivy index takes.
    pub fn disk_bytes(&self) -> u64 {
        self.disk.load(std::sync::atomic::Ordering::Relaxed)
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
        for (id, terms) in &touched {
            let Some(terms) = terms else { continue };
            if query.matches(&self.def, terms) {
                hits.push((search.score(terms).map_err(search_error)?, *id));
            }
        }
        hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        hits.truncate(limit);
        Ok(hits)
    }

    /// Builds the tantivy index from the documents at the newest snapshot (replacing any),
    /// then serves queries.
    async fn build(self: &Arc<Self>, inner: &Inner) -> Result<()> {
        let _work = self.work.lock().await;
        let span = tracing::info_span!("search_index_build", index = self.meta.id);
        let _guard = span.enter();
        let started = Instant::now();
        let ts = inner.published_ts();
        let (dir, def, slot) = (self.dir.clone(), self.def.clone(), self.index.clone());
        blocking(move || {
            let index = match &dir {
                Some(dir) => {
                    if dir.exists() {
                        std::fs::remove_dir_all(dir)
                            .map_err(|e| StoreError::Search { code: "SearchIndexFailed", message: e.to_string() })?;
                    }
                    TextIndex::open(dir, def)
                }
                None => TextIndex::in_memory(def),
            }
            .map_err(search_error)?;
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
                if let Some(terms) = doc_terms(&self.meta, &doc) {
                    changes.push((doc.id.internal, Some(terms)));
                }
            }
            total += changes.len();
            let full = hits.len() >= batch;
            after = hits.last().map(|h| h.key.clone());
            // Intermediate commits cover no timestamp: a crash mid-build rebuilds.
            let covers = if full { 0 } else { ts.0 };
            let slot = self.index.clone();
            blocking(move || with_index(&slot, |index| index.apply(&changes, covers))).await?;
            if !full {
                break;
            }
            tracing::debug!(documents = total, "search index build progress");
        }
        self.install(ts).await?;
        self.builds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(documents = total, ms = started.elapsed().as_millis() as u64, "search index built");
        Ok(())
    }

    /// Serves the tantivy index as it is (covering every commit up to `ts`) from now on.
    async fn install(&self, ts: Timestamp) -> Result<()> {
        let snapshot = blocking({
            let (slot, disk) = (self.index.clone(), self.disk.clone());
            move || {
                with_index(&slot, |index| {
                    disk.store(index.size_bytes(), std::sync::atomic::Ordering::Relaxed);
                    Ok(index.snapshot())
                })
            }
        })
        .await?;
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
        let mut latest: HashMap<InternalId, Terms> = HashMap::new();
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
                let terms = match &r.value {
                    Some(bytes) => doc_terms(&self.meta, &Document::decode(r.id, bytes)?),
                    None => None,
                };
                latest.insert(r.id.internal, terms);
            }
            if revisions.len() < batch {
                break;
            }
            after = revisions.last().map(|r| (r.ts, r.id.internal));
        }
        let changes: Vec<(InternalId, Terms)> = latest.into_iter().collect();
        let count = changes.len();
        let slot = self.index.clone();
        blocking(move || with_index(&slot, |index| index.apply(&changes, until.0))).await?;
        self.install(until).await?;
        let ms = started.elapsed().as_millis() as u64;
        tracing::info!(documents = count, ms, from = from.0, until = until.0, "search index caught up");
        Ok(())
    }

    /// The newest commit the index on disk covers (zero before it is built).
    pub fn disk_ts(&self) -> Timestamp {
        self.view.lock().snapshots.back().map_or(Timestamp::ZERO, |(s, _)| Timestamp(s.ts()))
    }

    /// Opens the index on disk after a restart (the store's newest commit is `ts`, revisions up
    /// to `pruned` may be gone): serves it at once if it covers `ts` (a clean stop), or says
    /// from which commit it must catch up, or that it must be rebuilt.
    fn resume(&self, ts: Timestamp, pruned: Timestamp) -> Resume {
        let Some(dir) = &self.dir else { return Resume::Rebuild };
        if !dir.exists() {
            return Resume::Rebuild;
        }
        let index = match TextIndex::open(dir, self.def.clone()) {
            Ok(index) => index,
            Err(e) => {
                tracing::warn!(error = %e, index = self.meta.id, "search index unreadable; rebuilding");
                return Resume::Rebuild;
            }
        };
        let covered = Timestamp(index.indexed_ts());
        // Zero: a build that did not finish.
        if covered == Timestamp::ZERO || covered > ts || covered < pruned {
            return Resume::Rebuild;
        }
        self.disk.store(index.size_bytes(), std::sync::atomic::Ordering::Relaxed);
        let snapshot = index.snapshot();
        *self.index.lock() = Some(index);
        if covered < ts {
            return Resume::CatchUp(covered);
        }
        self.view.lock().snapshots.push_back((snapshot, Instant::now()));
        self.built.send_replace(true);
        Resume::Ready
    }

    /// Writes the revisions in memory into tantivy (up to the newest published commit), takes
    /// a new snapshot, and forgets snapshots and revisions no longer needed.
    async fn merge(&self, inner: &Inner, keep_for: std::time::Duration, budget: usize, force: bool) -> Result<()> {
        let _work = self.work.lock().await;
        let (target, changes) = {
            let view = self.view.lock();
            let Some((newest, _)) = view.snapshots.back() else { return Ok(()) };
            // Revisions are recorded before their commit is published: all up to `target` are here.
            let target = inner.published_ts();
            let mut latest: HashMap<InternalId, Terms> = HashMap::new();
            for (_, changes) in view.recent.range(Timestamp(newest.ts() + 1)..).take_while(|(t, _)| **t <= target) {
                for (id, terms) in changes {
                    latest.insert(*id, terms.clone());
                }
            }
            if latest.is_empty() && !(force && newest.ts() < target.0) {
                drop(view);
                self.evict(keep_for, budget);
                return Ok(());
            }
            (target, latest.into_iter().collect::<Vec<_>>())
        };
        let (slot, disk) = (self.index.clone(), self.disk.clone());
        let snapshot = blocking(move || {
            with_index(&slot, |index| {
                index.apply(&changes, target.0)?;
                disk.store(index.size_bytes(), std::sync::atomic::Ordering::Relaxed);
                Ok(index.snapshot())
            })
        })
        .await?;
        self.view.lock().snapshots.push_back((snapshot, Instant::now()));
        self.evict(keep_for, budget);
        Ok(())
    }

    fn evict(&self, keep_for: std::time::Duration, budget: usize) {
        let mut view = self.view.lock();
        while view.snapshots.len() > 1
            && view.snapshots.front().is_some_and(|(_, at)| at.elapsed() > keep_for || view.recent_bytes > budget)
        {
            view.snapshots.pop_front();
            let oldest = view.snapshots.front().map_or(Timestamp::ZERO, |(s, _)| Timestamp(s.ts()));
            evict_recent(&mut view, oldest);
        }
    }
}

/// Drops the revisions at or before `ts` (the oldest snapshot covers them).
fn evict_recent(view: &mut View, ts: Timestamp) {
    let keep = view.recent.split_off(&Timestamp(ts.0 + 1));
    let dropped = std::mem::replace(&mut view.recent, keep);
    let freed: usize = dropped.values().flatten().map(|(_, t)| entry_bytes(t)).sum();
    view.recent_bytes -= freed.min(view.recent_bytes);
}

fn with_index<T>(
    slot: &Mutex<Option<TextIndex>>,
    f: impl FnOnce(&mut TextIndex) -> kiln_search::Result<T>,
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

/// The search indexes of one store.
pub(crate) struct SearchIndexes {
    dir: Option<PathBuf>,
    live: RwLock<HashMap<u32, Arc<LiveIndex>>>,
    /// Indexes waiting to be built (new, or not covering the newest commit after a restart).
    pending_builds: Mutex<Vec<Pending>>,
    /// Wakes the merger early (memory over budget, builds waiting).
    pub wake: tokio::sync::Notify,
    budget: usize,
}

impl SearchIndexes {
    pub fn new(config: &StoreConfig) -> SearchIndexes {
        SearchIndexes {
            dir: config.search_dir.clone(),
            live: RwLock::new(HashMap::new()),
            pending_builds: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
            budget: config.search_memory_bytes,
        }
    }

    /// A search index by number.
    pub fn get(&self, id: u32) -> Option<Arc<LiveIndex>> {
        self.live.read().get(&id).cloned()
    }

    /// Every search index.
    pub fn all(&self) -> Vec<Arc<LiveIndex>> {
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
            let index = Arc::new(LiveIndex::new(meta.clone(), table.number, dir));
            let resume = match opening {
                Some(pruned) => index.resume(ts, pruned),
                None => Resume::Rebuild,
            };
            match resume {
                Resume::Ready => {}
                Resume::CatchUp(from) => self.pending_builds.lock().push((index.clone(), Some(from))),
                Resume::Rebuild => self.pending_builds.lock().push((index.clone(), None)),
            }
            if !matches!(resume, Resume::Ready) {
                self.wake.notify_one();
            }
            live.insert(meta.id, index);
        }
        let gone: Vec<u32> = live.keys().filter(|id| !wanted.contains(id)).copied().collect();
        for id in gone {
            if let Some(index) = live.remove(&id)
                && let Some(dir) = &index.dir
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
        let mut by_index: HashMap<u32, Vec<(InternalId, Terms)>> = HashMap::new();
        for w in writes {
            by_index.entry(w.index).or_default().push((w.id, w.terms));
        }
        let live = self.live.read();
        let mut over = false;
        for (id, changes) in by_index {
            if let Some(index) = live.get(&id) {
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
        self.all().iter().map(|i| i.memory_bytes()).sum()
    }

    /// Builds waiting indexes, then merges every index's recent revisions (`force`: records
    /// the newest commit in every index even without changes). Returns the indexes built.
    pub async fn maintain(&self, inner: &Inner, force: bool) -> Vec<(TableNumber, u32)> {
        let builds: Vec<Pending> = std::mem::take(&mut *self.pending_builds.lock());
        let mut built = Vec::new();
        for (index, from) in builds {
            if self.get(index.meta.id).is_none() {
                continue;
            }
            let done = match from {
                Some(from) => index.catch_up(inner, from).await,
                None => index.build(inner).await,
            };
            match done {
                Ok(()) => built.push((index.table, index.meta.id)),
                Err(e) => {
                    tracing::error!(error = %e, index = index.meta.id, "search index build failed; retrying");
                    // A failed catch-up may have left the index half-changed: rebuild it.
                    self.pending_builds.lock().push((index, None));
                }
            }
        }
        let budget = inner.config.search_memory_bytes;
        for index in self.all() {
            if let Err(e) = index.merge(inner, inner.config.search_snapshot_age, budget, force).await {
                tracing::warn!(error = %e, index = index.meta.id, "search index merge failed");
            }
        }
        built
    }

    /// The oldest commit an index on disk covers, or will catch up from: revisions after it
    /// must not be pruned (a restart lists them).
    pub fn prune_limit(&self) -> Option<Timestamp> {
        let waiting = self.pending_builds.lock().iter().filter_map(|(_, from)| *from).min();
        let covered = self.all().iter().map(|i| i.disk_ts()).filter(|ts| *ts > Timestamp::ZERO).min();
        waiting.into_iter().chain(covered).min()
    }

    /// Full builds of indexes from the documents since the store opened (new indexes, and
    /// restarts that could not resume an index on disk).
    pub fn builds(&self) -> u64 {
        self.all().iter().map(|i| i.builds.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// Bytes the indexes take on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.all().iter().map(|i| i.disk_bytes()).sum()
    }
}
