//! The recent-commit log: what each recent commit wrote, for OCC checks, cache fills and
//! subscription refreshes. Bounded by age and by memory; a snapshot older than what the log
//! covers can no longer be validated and gets `SnapshotTooOld`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_persistence::{IndexId, Timestamp};
use kiln_value::DocumentId;

use crate::read_set::ReadSet;

/// The keys one commit wrote (old and new keys of every index of every changed document).
pub type WrittenKeys = Arc<Vec<(IndexId, Vec<u8>)>>;

struct Entry {
    ts: Timestamp,
    keys: WrittenKeys,
    docs: Vec<DocumentId>,
    bytes: usize,
    at: Instant,
}

/// The outcome of checking a read set against the log.
#[derive(Debug, PartialEq)]
pub enum Check {
    /// No commit after the snapshot wrote anything read.
    Clean,
    /// The commit at this timestamp wrote this key of this index, which was read.
    Conflict(Timestamp, IndexId, Vec<u8>),
    /// The log no longer covers the snapshot.
    TooOld,
}

/// Recent commits, oldest first; includes validated commits not yet durable.
pub struct CommitLog {
    entries: VecDeque<Entry>,
    /// Every commit after `floor` is in `entries`.
    floor: Timestamp,
    last_write: HashMap<DocumentId, Timestamp>,
    bytes: usize,
    max_age: Duration,
    max_bytes: usize,
}

impl CommitLog {
    /// An empty log covering everything after `floor`.
    pub fn new(floor: Timestamp, max_age: Duration, max_bytes: usize) -> CommitLog {
        CommitLog { entries: VecDeque::new(), floor, last_write: HashMap::new(), bytes: 0, max_age, max_bytes }
    }

    /// Appends a commit (timestamps must increase).
    pub fn push(&mut self, ts: Timestamp, keys: WrittenKeys, docs: Vec<DocumentId>) {
        // Real allocations: the entry and its Arc'd key list, each key's heap buffer and slot,
        // and per document a list slot plus its `last_write` map entry.
        let bytes = 160 + keys.iter().map(|(_, k)| k.len() + 56).sum::<usize>() + docs.len() * 70;
        for d in &docs {
            self.last_write.insert(*d, ts);
        }
        self.bytes += bytes;
        self.entries.push_back(Entry { ts, keys, docs, bytes, at: Instant::now() });
    }

    /// Drops entries that are too old or over the memory budget, never past `published`
    /// (pending commits must stay for validation).
    pub fn evict(&mut self, published: Timestamp) {
        let now = Instant::now();
        while let Some(front) = self.entries.front() {
            let expired = now.duration_since(front.at) > self.max_age || self.bytes > self.max_bytes;
            if !expired || front.ts > published {
                break;
            }
            let Some(e) = self.entries.pop_front() else { break };
            self.bytes -= e.bytes;
            self.floor = e.ts;
            for d in e.docs {
                if self.last_write.get(&d) == Some(&e.ts) {
                    self.last_write.remove(&d);
                }
            }
        }
    }

    /// Forgets the commits after `ts` (they failed to persist). Their documents stay marked as
    /// written, so that no read fills the cache with a revision it cannot prove newest.
    pub fn truncate_after(&mut self, ts: Timestamp) {
        while self.entries.back().is_some_and(|e| e.ts > ts) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= e.bytes;
            }
        }
    }

    /// Checks `reads` (normalized) against every commit after `since`.
    pub fn check(&self, since: Timestamp, reads: &ReadSet) -> Check {
        self.check_range(since, Timestamp(u64::MAX), reads)
    }

    /// Checks `reads` against the commits in `(since, until]`.
    pub fn check_range(&self, since: Timestamp, until: Timestamp, reads: &ReadSet) -> Check {
        if since < self.floor {
            return Check::TooOld;
        }
        let first = self.entries.partition_point(|e| e.ts <= since);
        for e in self.entries.range(first..) {
            if e.ts > until {
                break;
            }
            for (index, key) in e.keys.iter() {
                if reads.contains(*index, key) {
                    return Check::Conflict(e.ts, *index, key.clone());
                }
            }
        }
        Check::Clean
    }

    /// Whether `doc` may have been written after `ts` (true when the log cannot tell).
    pub fn written_after(&self, doc: &DocumentId, ts: Timestamp) -> bool {
        ts < self.floor || self.last_write.get(doc).is_some_and(|w| *w > ts)
    }

    /// The oldest snapshot the log can validate.
    #[cfg(test)]
    pub fn floor(&self) -> Timestamp {
        self.floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_persistence::KeyRange;
    use kiln_value::{InternalId, TableNumber};

    #[test]
    fn checks_only_later_commits_and_knows_its_floor() {
        let mut log = CommitLog::new(Timestamp(5), Duration::from_secs(60), 1 << 20);
        let doc = DocumentId::new(TableNumber(1), InternalId([1; 16]));
        log.push(Timestamp(10), Arc::new(vec![(IndexId(1), b"k".to_vec())]), vec![doc]);
        let mut reads = ReadSet::new();
        reads.add(IndexId(1), KeyRange::point(b"k"));
        reads.normalize();
        assert_eq!(log.check(Timestamp(10), &reads), Check::Clean);
        assert_eq!(log.check(Timestamp(9), &reads), Check::Conflict(Timestamp(10), IndexId(1), b"k".to_vec()));
        assert_eq!(log.check_range(Timestamp(5), Timestamp(9), &reads), Check::Clean);
        assert_eq!(log.check(Timestamp(4), &reads), Check::TooOld);
        assert!(log.written_after(&doc, Timestamp(9)));
        assert!(!log.written_after(&doc, Timestamp(10)));

        let mut tiny = CommitLog::new(Timestamp(0), Duration::from_secs(60), 0);
        tiny.push(Timestamp(3), Arc::new(vec![]), vec![doc]);
        tiny.evict(Timestamp(2));
        assert_eq!(tiny.floor(), Timestamp(0), "pending commits stay");
        tiny.evict(Timestamp(3));
        assert_eq!(tiny.floor(), Timestamp(3));
        assert!(tiny.written_after(&doc, Timestamp(2)));
    }
}
