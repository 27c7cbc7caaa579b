//! The document cache: the latest committed revision of recently used documents, within a
//! memory budget (least recently used first out).
//!
//! Invariant: an entry is the newest revision of its document among all published commits.
//! The committer overwrites entries of documents it writes; readers insert only revisions the
//! commit log proves are still the newest.

use std::sync::Arc;

use hashlink::LruCache;
use kiln_persistence::Timestamp;
use kiln_value::DocumentId;

use crate::document::Document;

/// Bytes charged per entry on top of the document (map slot, Arc, links).
const ENTRY_OVERHEAD: usize = 96;

struct Entry {
    ts: Timestamp,
    doc: Option<Arc<Document>>,
    bytes: usize,
}

/// A bounded LRU cache of documents.
pub struct DocumentCache {
    map: LruCache<DocumentId, Entry>,
    bytes: usize,
    budget: usize,
    hits: u64,
    misses: u64,
}

/// Cache counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Bytes charged for the current entries.
    pub bytes: usize,
    /// Number of entries.
    pub entries: usize,
    /// Lookups answered.
    pub hits: u64,
    /// Lookups that went to persistence.
    pub misses: u64,
}

impl DocumentCache {
    /// An empty cache with a budget in bytes.
    pub fn new(budget: usize) -> DocumentCache {
        DocumentCache { map: LruCache::new_unbounded(), bytes: 0, budget, hits: 0, misses: 0 }
    }

    /// The document as of `read_ts` if the cache can answer: `Some(None)` means "does not exist".
    pub fn get(&mut self, id: &DocumentId, read_ts: Timestamp) -> Option<Option<Arc<Document>>> {
        match self.map.get(id) {
            Some(e) if e.ts <= read_ts => {
                self.hits += 1;
                Some(e.doc.clone())
            }
            _ => {
                self.misses += 1;
                None
            }
        }
    }

    /// Stores the newest revision of a document (written at `ts`; `None` = deleted).
    pub fn put(&mut self, id: DocumentId, ts: Timestamp, doc: Option<Arc<Document>>) {
        let bytes = ENTRY_OVERHEAD + doc.as_ref().map_or(0, |d| d.heap_size());
        if let Some(old) = self.map.insert(id, Entry { ts, doc, bytes }) {
            self.bytes -= old.bytes;
        }
        self.bytes += bytes;
        while self.bytes > self.budget {
            match self.map.remove_lru() {
                Some((_, e)) => self.bytes -= e.bytes,
                None => break,
            }
        }
    }

    /// Whether the cache already holds `id`.
    pub fn contains(&self, id: &DocumentId) -> bool {
        self.map.contains_key(id)
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats { bytes: self.bytes, entries: self.map.len(), hits: self.hits, misses: self.misses }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_value::{InternalId, Object, TableNumber, Value};

    fn doc(n: u8, size: usize) -> Arc<Document> {
        let id = DocumentId::new(TableNumber(1), InternalId([n; 16]));
        let fields: Object = [("x".to_string(), Value::String("y".repeat(size)))].into();
        Arc::new(Document::new(id, 1.0, fields))
    }

    #[test]
    fn respects_timestamps_and_budget() {
        let mut c = DocumentCache::new(10_000);
        let d = doc(1, 10);
        c.put(d.id, Timestamp(5), Some(d.clone()));
        assert!(c.get(&d.id, Timestamp(4)).is_none(), "a newer revision cannot answer an older read");
        assert_eq!(c.get(&d.id, Timestamp(5)).unwrap().unwrap().id, d.id);
        for n in 2..200 {
            let d = doc(n, 1000);
            c.put(d.id, Timestamp(6), Some(d));
        }
        assert!(c.stats().bytes <= 10_000);
        assert!(c.stats().entries < 20);
    }
}
