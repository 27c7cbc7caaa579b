//! Read sets: the index key ranges a transaction or query read, and the tokens built on them.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_persistence::{IndexId, KeyRange, Timestamp};

/// The key ranges read, per index. After [`ReadSet::normalize`] each index's ranges are sorted
/// and disjoint, so membership is a binary search.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadSet {
    ranges: BTreeMap<IndexId, Vec<KeyRange>>,
}

impl ReadSet {
    /// An empty read set.
    pub fn new() -> ReadSet {
        ReadSet::default()
    }

    /// Records a read of `range` in `index`.
    pub fn add(&mut self, index: IndexId, range: KeyRange) {
        if !range.is_empty() {
            self.ranges.entry(index).or_default().push(range);
        }
    }

    /// Merges another read set into this one.
    pub fn extend(&mut self, other: &ReadSet) {
        for (index, ranges) in &other.ranges {
            self.ranges.entry(*index).or_default().extend(ranges.iter().cloned());
        }
    }

    /// Sorts and merges overlapping or touching ranges.
    pub fn normalize(&mut self) {
        for ranges in self.ranges.values_mut() {
            ranges.sort_by(|a, b| a.start.cmp(&b.start));
            let mut merged: Vec<KeyRange> = Vec::with_capacity(ranges.len());
            for r in ranges.drain(..) {
                match merged.last_mut() {
                    Some(last) if last.end.as_ref().is_none_or(|e| r.start <= *e) => {
                        last.end = match (&last.end, r.end) {
                            (None, _) | (_, None) => None,
                            (Some(a), Some(b)) => Some(if *a >= b { a.clone() } else { b }),
                        };
                    }
                    _ => merged.push(r),
                }
            }
            *ranges = merged;
        }
    }

    /// Whether `key` of `index` lies in a read range. The set must be normalized.
    pub fn contains(&self, index: IndexId, key: &[u8]) -> bool {
        let Some(ranges) = self.ranges.get(&index) else { return false };
        let after = ranges.partition_point(|r| r.start.as_slice() <= key);
        after > 0 && ranges[after - 1].contains(key)
    }

    /// Every range, per index.
    pub fn iter(&self) -> impl Iterator<Item = (IndexId, &KeyRange)> {
        self.ranges.iter().flat_map(|(i, rs)| rs.iter().map(move |r| (*i, r)))
    }

    /// The number of ranges.
    pub fn len(&self) -> usize {
        self.ranges.values().map(Vec::len).sum()
    }

    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// A query result's proof of freshness: what it read, and as of when.
///
/// A token stays valid at a later timestamp exactly when no commit in between wrote a key in
/// its read set; see [`crate::Store::refresh_token`].
#[derive(Clone, Debug)]
pub struct ReadToken {
    /// The snapshot the reads were made at.
    pub ts: Timestamp,
    /// The normalized read set.
    pub read_set: Arc<ReadSet>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &[u8], b: Option<&[u8]>) -> KeyRange {
        KeyRange { start: a.to_vec(), end: b.map(<[u8]>::to_vec) }
    }

    #[test]
    fn normalize_merges_and_contains_searches() {
        let mut s = ReadSet::new();
        s.add(IndexId(1), r(b"m", Some(b"p")));
        s.add(IndexId(1), r(b"a", Some(b"c")));
        s.add(IndexId(1), r(b"b", Some(b"d")));
        s.add(IndexId(1), r(b"x", None));
        s.add(IndexId(1), r(b"z", Some(b"zz")));
        s.add(IndexId(2), r(b"q", Some(b"q")));
        s.normalize();
        assert_eq!(s.len(), 3);
        for (k, want) in
            [(&b"a"[..], true), (b"c", true), (b"d", false), (b"n", true), (b"p", false), (b"zzz", true), (b"0", false)]
        {
            assert_eq!(s.contains(IndexId(1), k), want, "{:?}", std::str::from_utf8(k));
        }
        assert!(!s.contains(IndexId(2), b"q"));
    }
}
