//! Vector indexes: an HNSW graph (usearch) over one table's vector field, with the filter
//! values of each document, persisted to one file that records the store commit it covers.
//!
//! Vectors are normalized on the way in, so the graph's inner-product distance is one minus
//! the cosine similarity, and scores computed outside the graph ([`similarity`]) agree with
//! it. A query whose filter admits few documents is answered exactly from the filter's
//! postings instead of walking the graph, so selective filters do not lose recall.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

use kiln_value::{InternalId, Value, from_convex_json_or_undefined};
use serde_json::Value as Json;

use crate::doc::filter_hash;
use crate::error::{Result, SearchError};

/// Fewest dimensions a vector index may have (Convex's limit).
pub const MIN_DIMENSIONS: usize = 2;
/// Most dimensions a vector index may have (Convex's limit).
pub const MAX_DIMENSIONS: usize = 4096;
/// Most results one vector search returns (Convex's limit).
pub const MAX_VECTOR_RESULTS: usize = 256;
/// Results of a vector search without a `limit`.
pub const DEFAULT_VECTOR_RESULTS: usize = 10;
/// Most `q.eq` clauses one vector search's filter may have (Convex's limit).
pub const MAX_VECTOR_FILTER_CLAUSES: usize = 64;

/// How the HNSW graphs are built and searched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VectorConfig {
    /// Neighbours per graph node.
    pub connectivity: usize,
    /// Candidates kept while inserting (higher: a better graph, slower inserts).
    pub expansion_add: usize,
    /// Candidates kept while searching, at least (higher: better recall, slower searches).
    pub expansion_search: usize,
    /// Threads inserting one batch of vectors into a graph (builds and merges).
    pub add_threads: usize,
}

impl Default for VectorConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        VectorConfig { connectivity: 32, expansion_add: 128, expansion_search: 200, add_threads: cores.min(SLOTS) }
    }
}
/// A filter admitting at most this many documents, or an index holding at most this many, is
/// answered exactly (HNSW may miss a neighbour; scoring this many costs less than a search).
const EXACT_FILTER_MAX: usize = 2048;
/// Graph operations that may run at once (usearch keeps a context per concurrent caller).
const SLOTS: usize = 32;
/// Changes applied under one write lock, so searches are not held up for long.
const APPLY_CHUNK: usize = 64;

const MAGIC: &[u8; 8] = b"KILNVEC1";

/// A vector index: the vector field, its dimensions and the fields filters may test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VectorIndexDef {
    /// The vector field (a dotted path).
    pub vector_field: String,
    /// How many numbers each vector has.
    pub dimensions: usize,
    /// The fields `q.eq` may test (dotted paths).
    pub filter_fields: Vec<String>,
}

/// A document as a vector index sees it: its vector (normalized) and its filter values' hashes.
#[derive(Clone, Debug, PartialEq)]
pub struct DocVector {
    /// The vector scaled to length one (all zeros stays all zeros).
    pub vector: Box<[f32]>,
    /// [`filter_hash`] of each filter field's value, in the index's order.
    pub filters: Box<[u64]>,
}

fn normalized(numbers: impl Iterator<Item = f64>) -> Box<[f32]> {
    let v: Vec<f64> = numbers.collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter().map(|x| (x * scale) as f32).collect()
}

impl DocVector {
    /// The document's entry, or `None` when its vector field is not an array of
    /// `dimensions` finite numbers (such a document is not in the index, as in Convex).
    pub fn new(def: &VectorIndexDef, field: Option<&Value>, filters: &[Option<&Value>]) -> Option<DocVector> {
        let Some(Value::Array(items)) = field else { return None };
        if items.len() != def.dimensions {
            return None;
        }
        let mut numbers = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Value::Float64(x) if x.is_finite() => numbers.push(*x),
                _ => return None,
            }
        }
        Some(DocVector {
            vector: normalized(numbers.into_iter()),
            filters: filters.iter().map(|v| filter_hash(*v)).collect(),
        })
    }

    /// Bytes the entry takes in memory.
    pub fn bytes(&self) -> usize {
        self.vector.len() * 4 + self.filters.len() * 8 + 32
    }
}

/// The cosine similarity of two normalized vectors.
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A vector search as `ctx.vectorSearch` sends it, checked against the index and Convex's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorQuery {
    /// The query vector, normalized.
    pub vector: Box<[f32]>,
    /// How many results to return.
    pub limit: usize,
    /// `q.or` of `q.eq` clauses as (filter field position, value hash); `None`: no filter.
    pub filter: Option<Vec<(usize, u64)>>,
}

impl VectorQuery {
    /// Parses a query: `vector`, `limit` (`None`: the default) and the filter expression
    /// JSON of the `convex` package (`{$eq: [{$field}, {$literal}]}` or `{$or: [...]}`).
    pub fn parse(
        def: &VectorIndexDef,
        vector: &[f64],
        limit: Option<u32>,
        filter: Option<&Json>,
    ) -> Result<VectorQuery> {
        let bad = |m: String| SearchError::InvalidQuery(m);
        if vector.len() != def.dimensions {
            return Err(bad(format!(
                "the query vector has {} dimensions; this index has {}",
                vector.len(),
                def.dimensions
            )));
        }
        if let Some(x) = vector.iter().find(|x| !x.is_finite()) {
            return Err(bad(format!("the query vector holds {x}, which is not a finite number")));
        }
        let limit = match limit {
            None => DEFAULT_VECTOR_RESULTS,
            Some(n) if (1..=MAX_VECTOR_RESULTS as u32).contains(&n) => n as usize,
            Some(n) => {
                return Err(bad(format!("limit {n} is out of range: it must be between 1 and {MAX_VECTOR_RESULTS}")));
            }
        };
        let filter = match filter.filter(|f| !f.is_null()) {
            None => None,
            Some(expr) => {
                let mut clauses = Vec::new();
                collect_clauses(def, expr, &mut clauses, true)?;
                if clauses.len() > MAX_VECTOR_FILTER_CLAUSES {
                    return Err(SearchError::TooManyFilters { found: clauses.len(), max: MAX_VECTOR_FILTER_CLAUSES });
                }
                Some(clauses)
            }
        };
        Ok(VectorQuery { vector: normalized(vector.iter().copied()), limit, filter })
    }

    /// Whether the filter admits `doc`.
    pub fn admits(&self, doc: &DocVector) -> bool {
        admits(self.filter.as_deref(), &doc.filters)
    }
}

fn admits(filter: Option<&[(usize, u64)]>, values: &[u64]) -> bool {
    match filter {
        None => true,
        Some(clauses) => clauses.iter().any(|(field, hash)| values.get(*field) == Some(hash)),
    }
}

fn collect_clauses(def: &VectorIndexDef, expr: &Json, out: &mut Vec<(usize, u64)>, top: bool) -> Result<()> {
    let bad = |m: String| SearchError::InvalidQuery(m);
    if let Some(list) = expr.get("$or").and_then(Json::as_array) {
        if !top {
            return Err(bad("q.or may not be nested inside q.or in a vector search filter".into()));
        }
        for e in list {
            collect_clauses(def, e, out, false)?;
        }
        return Ok(());
    }
    let Some([field, value]) = expr.get("$eq").and_then(Json::as_array).map(Vec::as_slice) else {
        return Err(bad(format!("a vector search filter is made of q.eq and q.or, not {expr}")));
    };
    let name = field
        .get("$field")
        .and_then(Json::as_str)
        .ok_or_else(|| bad("the first argument of q.eq must be a field name".into()))?;
    let position = def.filter_fields.iter().position(|f| f == name).ok_or_else(|| {
        bad(format!("{name:?} is not a filter field of this index (its filter fields: {:?})", def.filter_fields))
    })?;
    let literal = value.get("$literal").ok_or_else(|| bad("the second argument of q.eq must be a value".into()))?;
    let value = from_convex_json_or_undefined(literal).map_err(|e| bad(format!("the value of {name:?}: {e}")))?;
    out.push((position, filter_hash(value.as_ref())));
    Ok(())
}

/// Bounds concurrent graph operations to the contexts usearch reserved.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Slots {
    fn take(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.0.freed.notify_one();
    }
}

struct Graph {
    hnsw: usearch::Index,
    keys: HashMap<InternalId, u64>,
    /// Each graph key's document and filter value hashes.
    docs: HashMap<u64, (InternalId, Box<[u64]>)>,
    /// Graph keys by (filter field position, value hash).
    postings: HashMap<(usize, u64), HashSet<u64>>,
    next_key: u64,
    /// The newest commit the graph reflects.
    ts: u64,
}

fn index_error(what: &str, e: impl std::fmt::Display) -> SearchError {
    SearchError::Index(format!("vector index: {what}: {e}"))
}

fn new_hnsw(dimensions: usize, config: &VectorConfig) -> Result<usearch::Index> {
    let options = usearch::IndexOptions {
        dimensions,
        metric: usearch::MetricKind::IP,
        quantization: usearch::ScalarKind::F32,
        connectivity: config.connectivity,
        expansion_add: config.expansion_add,
        expansion_search: config.expansion_search,
        multi: false,
    };
    let hnsw = usearch::Index::new(&options).map_err(|e| index_error("create", e))?;
    hnsw.reserve_capacity_and_threads(1024, SLOTS).map_err(|e| index_error("reserve", e))?;
    Ok(hnsw)
}

impl Graph {
    fn remove(&mut self, id: &InternalId) -> Result<()> {
        let Some(key) = self.keys.remove(id) else { return Ok(()) };
        self.hnsw.remove(key).map_err(|e| index_error("remove", e))?;
        if let Some((_, filters)) = self.docs.remove(&key) {
            for (i, h) in filters.iter().enumerate() {
                if let Some(set) = self.postings.get_mut(&(i, *h)) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.postings.remove(&(i, *h));
                    }
                }
            }
        }
        Ok(())
    }

    /// Inserts documents not in the graph, their vectors by up to `threads` threads at once
    /// (usearch inserts concurrently into a graph reserved for that many callers).
    fn add_all(&mut self, adds: &[(InternalId, &DocVector)], threads: usize) -> Result<()> {
        let needed = self.hnsw.size() + adds.len();
        if needed > self.hnsw.capacity() {
            let grown = (self.hnsw.capacity() * 2).max(needed).max(1024);
            self.hnsw.reserve_capacity_and_threads(grown, SLOTS).map_err(|e| index_error("reserve", e))?;
        }
        let first = self.next_key;
        self.next_key += adds.len() as u64;
        let hnsw = &self.hnsw;
        let insert = |from: usize, part: &[(InternalId, &DocVector)]| -> Vec<(usize, String)> {
            let mut failed = Vec::new();
            for (i, (_, doc)) in part.iter().enumerate() {
                if let Err(e) = hnsw.add(first + (from + i) as u64, &doc.vector) {
                    failed.push((from + i, e.to_string()));
                }
            }
            failed
        };
        let threads = threads.clamp(1, SLOTS);
        let failed: Vec<(usize, String)> = if threads == 1 || adds.len() < 8 {
            insert(0, adds)
        } else {
            let per = adds.len().div_ceil(threads);
            std::thread::scope(|s| {
                let parts: Vec<_> =
                    adds.chunks(per).enumerate().map(|(t, part)| s.spawn(move || insert(t * per, part))).collect();
                parts.into_iter().flat_map(|p| p.join().unwrap_or_else(|_| vec![(0, "panicked".into())])).collect()
            })
        };
        if let Some((_, e)) = failed.first() {
            // Keep the maps and the graph in agreement: drop what did get in.
            let failed: HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
            for i in (0..adds.len()).filter(|i| !failed.contains(i)) {
                let _ = self.hnsw.remove(first + i as u64);
            }
            return Err(index_error("add", e));
        }
        for (i, (id, doc)) in adds.iter().enumerate() {
            let key = first + i as u64;
            for (f, h) in doc.filters.iter().enumerate() {
                self.postings.entry((f, *h)).or_default().insert(key);
            }
            self.docs.insert(key, (*id, doc.filters.clone()));
            self.keys.insert(*id, key);
        }
        Ok(())
    }
}

/// One match of a vector search.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VectorHit {
    /// Cosine similarity to the query (higher is closer).
    pub score: f32,
    /// The document.
    pub id: InternalId,
}

/// A vector index of one table: shared by searches and the store's merger.
pub struct VectorIndex {
    def: VectorIndexDef,
    file: Option<PathBuf>,
    graph: RwLock<Graph>,
    slots: Slots,
    add_threads: usize,
    /// The newest commit saved to the file (zero: none).
    saved_ts: Mutex<u64>,
}

impl VectorIndex {
    /// An empty index, kept in `dir` (created if missing) when given.
    pub fn create(dir: Option<&Path>, def: VectorIndexDef, config: &VectorConfig) -> Result<Arc<VectorIndex>> {
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir).map_err(|e| index_error("create directory", e))?;
        }
        let graph = Graph {
            hnsw: new_hnsw(def.dimensions, config)?,
            keys: HashMap::new(),
            docs: HashMap::new(),
            postings: HashMap::new(),
            next_key: 0,
            ts: 0,
        };
        Ok(Arc::new(Self::wrap(dir, def, graph, 0, config)))
    }

    fn wrap(dir: Option<&Path>, def: VectorIndexDef, graph: Graph, saved: u64, config: &VectorConfig) -> VectorIndex {
        VectorIndex {
            def,
            file: dir.map(|d| d.join("vectors.bin")),
            graph: RwLock::new(graph),
            slots: Slots { free: Mutex::new(SLOTS), freed: Condvar::new() },
            add_threads: config.add_threads,
            saved_ts: Mutex::new(saved),
        }
    }

    /// Opens the index saved in `dir`; fails when there is none or it is unreadable.
    pub fn open(dir: &Path, def: VectorIndexDef, config: &VectorConfig) -> Result<Arc<VectorIndex>> {
        let path = dir.join("vectors.bin");
        let mut bytes = Vec::new();
        std::fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| index_error("read", e))?;
        let mut r = Reader(&bytes);
        if r.take(8)? != MAGIC {
            return Err(index_error("read", "not a vector index file"));
        }
        let (ts, next_key, dims, fields, count) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        if dims as usize != def.dimensions || fields as usize != def.filter_fields.len() {
            return Err(index_error("read", "the file was written for another index definition"));
        }
        let mut graph = Graph {
            hnsw: new_hnsw(def.dimensions, config)?,
            keys: HashMap::with_capacity(count as usize),
            docs: HashMap::with_capacity(count as usize),
            postings: HashMap::new(),
            next_key,
            ts,
        };
        for _ in 0..count {
            let mut id = [0u8; 16];
            id.copy_from_slice(r.take(16)?);
            let id = InternalId(id);
            let key = r.u64()?;
            let filters: Box<[u64]> = (0..fields).map(|_| r.u64()).collect::<Result<_>>()?;
            for (i, h) in filters.iter().enumerate() {
                graph.postings.entry((i, *h)).or_default().insert(key);
            }
            graph.keys.insert(id, key);
            graph.docs.insert(key, (id, filters));
        }
        let len = r.u64()? as usize;
        graph.hnsw.load_from_buffer(r.take(len)?).map_err(|e| index_error("load graph", e))?;
        if graph.hnsw.size() != graph.docs.len() {
            return Err(index_error("read", "the graph and its documents disagree"));
        }
        let capacity = graph.hnsw.capacity().max(graph.hnsw.size() + 1024);
        graph.hnsw.reserve_capacity_and_threads(capacity, SLOTS).map_err(|e| index_error("reserve", e))?;
        graph.hnsw.change_expansion_add(config.expansion_add);
        graph.hnsw.change_expansion_search(config.expansion_search);
        Ok(Arc::new(Self::wrap(Some(dir), def, graph, ts, config)))
    }

    /// The index's definition.
    pub fn def(&self) -> &VectorIndexDef {
        &self.def
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Graph> {
        self.graph.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Graph> {
        self.graph.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest commit the graph reflects.
    pub fn indexed_ts(&self) -> u64 {
        self.read().ts
    }

    /// The newest commit saved to the file (what a restart resumes from; zero: none).
    pub fn saved_ts(&self) -> u64 {
        *self.saved_ts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Documents in the index.
    pub fn len(&self) -> usize {
        self.read().docs.len()
    }

    /// Whether the index holds no document.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the graph and its bookkeeping take in memory.
    pub fn memory_bytes(&self) -> usize {
        let g = self.read();
        g.hnsw.memory_usage() + g.docs.len() * (48 + 8 * self.def.filter_fields.len()) * 2
    }

    /// Bytes the saved file takes.
    pub fn disk_bytes(&self) -> u64 {
        self.file.as_ref().and_then(|f| std::fs::metadata(f).ok()).map_or(0, |m| m.len())
    }

    /// Replaces each document's entry (`None`: removes it) and records that the graph now
    /// reflects commit `ts` (zero: an unfinished build, which reflects no commit).
    pub fn apply(&self, changes: &[(InternalId, Option<Arc<DocVector>>)], ts: u64) -> Result<()> {
        for chunk in changes.chunks(APPLY_CHUNK) {
            let mut g = self.write();
            // The chunk's last entry per document wins.
            let mut adds: Vec<(InternalId, &DocVector)> = Vec::with_capacity(chunk.len());
            for (id, doc) in chunk {
                g.remove(id)?;
                adds.retain(|(a, _)| a != id);
                if let Some(doc) = doc {
                    if doc.vector.len() != self.def.dimensions {
                        return Err(index_error("add", "a vector of the wrong length"));
                    }
                    adds.push((*id, doc));
                }
            }
            g.add_all(&adds, self.add_threads)?;
        }
        let mut g = self.write();
        g.ts = if ts == 0 { 0 } else { g.ts.max(ts) };
        Ok(())
    }

    /// Writes the index to its file (atomically: a crash leaves the previous file whole).
    pub fn save(&self) -> Result<()> {
        let Some(file) = &self.file else { return Ok(()) };
        let (bytes, ts) = {
            let g = self.read();
            let mut out = Vec::with_capacity(64 + g.docs.len() * 40 + g.hnsw.serialized_length());
            out.extend_from_slice(MAGIC);
            for n in [g.ts, g.next_key, self.def.dimensions as u64, self.def.filter_fields.len() as u64] {
                out.extend_from_slice(&n.to_le_bytes());
            }
            out.extend_from_slice(&(g.docs.len() as u64).to_le_bytes());
            for (key, (id, filters)) in &g.docs {
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&key.to_le_bytes());
                for h in filters.iter() {
                    out.extend_from_slice(&h.to_le_bytes());
                }
            }
            let len = g.hnsw.serialized_length();
            out.extend_from_slice(&(len as u64).to_le_bytes());
            let start = out.len();
            out.resize(start + len, 0);
            g.hnsw.save_to_buffer(&mut out[start..]).map_err(|e| index_error("save graph", e))?;
            (out, g.ts)
        };
        let tmp = file.with_extension("tmp");
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&bytes)?;
            f.sync_all()
        });
        written.and_then(|()| std::fs::rename(&tmp, file)).map_err(|e| index_error("save", e))?;
        if let Some(dir) = file.parent() {
            let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
        }
        *self.saved_ts.lock().unwrap_or_else(|e| e.into_inner()) = ts;
        Ok(())
    }

    /// The `query.limit` documents closest to `query` that its filter admits, leaving out
    /// `skip` (documents the caller scores itself); by descending similarity, ties by id.
    pub fn search(&self, query: &VectorQuery, skip: &HashSet<InternalId>) -> Result<Vec<VectorHit>> {
        let g = self.read();
        let skip_keys: HashSet<u64> = skip.iter().filter_map(|id| g.keys.get(id).copied()).collect();
        let limit = query.limit;
        let mut hits = match query.filter.as_deref() {
            _ if g.docs.len() <= EXACT_FILTER_MAX => {
                let filter = query.filter.as_deref();
                let admitted = g
                    .docs
                    .iter()
                    .filter(|(key, (_, f))| !skip_keys.contains(key) && admits(filter, f))
                    .map(|(key, _)| *key);
                self.exact(&g, query, admitted)?
            }
            Some(clauses) => {
                let mut candidates: HashSet<u64> = HashSet::new();
                let mut small = true;
                for c in clauses {
                    if let Some(set) = g.postings.get(c) {
                        candidates.extend(set.iter().copied());
                    }
                    if candidates.len() > EXACT_FILTER_MAX {
                        small = false;
                        break;
                    }
                }
                if small {
                    self.exact(&g, query, candidates.into_iter().filter(|k| !skip_keys.contains(k)))?
                } else {
                    let docs = &g.docs;
                    let keep = |key: u64| {
                        !skip_keys.contains(&key) && docs.get(&key).is_some_and(|(_, f)| admits(Some(clauses), f))
                    };
                    self.graph_search(&g, query, limit, Some(&keep))?
                }
            }
            None if skip_keys.is_empty() => self.graph_search(&g, query, limit, None)?,
            None => {
                let keep = |key: u64| !skip_keys.contains(&key);
                self.graph_search(&g, query, limit, Some(&keep))?
            }
        };
        hits.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.id.cmp(&b.id)));
        hits.truncate(limit);
        Ok(hits)
    }

    fn graph_search(
        &self,
        g: &Graph,
        query: &VectorQuery,
        limit: usize,
        keep: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<VectorHit>> {
        let _slot = self.slots.take();
        let found = match keep {
            Some(keep) => g.hnsw.filtered_search(&query.vector, limit, keep),
            None => g.hnsw.search(&query.vector, limit),
        }
        .map_err(|e| index_error("search", e))?;
        Ok(found
            .keys
            .iter()
            .zip(&found.distances)
            .filter_map(|(key, d)| g.docs.get(key).map(|(id, _)| VectorHit { score: 1.0 - d, id: *id }))
            .collect())
    }

    fn exact(&self, g: &Graph, query: &VectorQuery, keys: impl Iterator<Item = u64>) -> Result<Vec<VectorHit>> {
        let mut buf = vec![0f32; self.def.dimensions];
        let mut hits = Vec::new();
        for key in keys {
            let Some((id, _)) = g.docs.get(&key) else { continue };
            let n = g.hnsw.get(key, &mut buf).map_err(|e| index_error("get", e))?;
            if n > 0 {
                hits.push(VectorHit { score: similarity(&query.vector, &buf), id: *id });
            }
        }
        Ok(hits)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(index_error("read", "the file is truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}
