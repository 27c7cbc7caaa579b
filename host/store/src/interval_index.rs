//! An interval index: which of many registered key ranges contain a given key.
//!
//! A treap keyed by (range start, entry id), each node augmented with the greatest range end in
//! its subtree, so a stabbing query visits only subtrees that can contain the key:
//! O(log n + k) expected for k matches, instead of a scan over every range.

use kiln_persistence::KeyRange;

/// Upper bound of a range: `None` is +infinity.
type End = Option<Vec<u8>>;

fn end_gt(a: &End, b: &End) -> bool {
    match (a, b) {
        (None, None) => false,
        (None, Some(_)) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a > b,
    }
}

/// A subtree.
type Link<T> = Option<Box<Node<T>>>;

struct Node<T> {
    range: KeyRange,
    id: u64,
    value: T,
    priority: u64,
    max_end: End,
    left: Link<T>,
    right: Link<T>,
}

impl<T> Node<T> {
    fn update(&mut self) {
        let mut m = self.range.end.clone();
        for child in [&self.left, &self.right].into_iter().flatten() {
            if end_gt(&child.max_end, &m) {
                m = child.max_end.clone();
            }
        }
        self.max_end = m;
    }

    fn before(&self, start: &[u8], id: u64) -> bool {
        (self.range.start.as_slice(), self.id) < (start, id)
    }
}

/// Ranges with attached values, searchable by key.
pub struct IntervalIndex<T> {
    root: Link<T>,
    len: usize,
    next_id: u64,
    rng: u64,
}

impl<T> Default for IntervalIndex<T> {
    fn default() -> Self {
        IntervalIndex { root: None, len: 0, next_id: 0, rng: 0x9e37_79b9_7f4a_7c15 }
    }
}

/// A handle to remove an entry again.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryHandle {
    start: Vec<u8>,
    id: u64,
}

impl<T> IntervalIndex<T> {
    /// An empty index.
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn next_priority(&mut self) -> u64 {
        // xorshift64*: priorities only need to look random to keep the treap balanced.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Adds `range` with `value`; returns the handle that removes it.
    pub fn insert(&mut self, range: KeyRange, value: T) -> EntryHandle {
        let id = self.next_id;
        self.next_id += 1;
        let handle = EntryHandle { start: range.start.clone(), id };
        let node = Box::new(Node {
            max_end: range.end.clone(),
            range,
            id,
            value,
            priority: self.next_priority(),
            left: None,
            right: None,
        });
        let (l, r) = split(self.root.take(), &handle.start, id);
        self.root = merge(merge(l, Some(node)), r);
        self.len += 1;
        handle
    }

    /// Removes an entry, returning its value.
    pub fn remove(&mut self, handle: &EntryHandle) -> Option<T> {
        let (l, rest) = split(self.root.take(), &handle.start, handle.id);
        let (mid, r) = split(rest, &handle.start, handle.id + 1);
        self.root = merge(l, r);
        mid.map(|n| {
            self.len -= 1;
            n.value
        })
    }

    /// Calls `f` with the value of every range containing `key`.
    pub fn stab(&self, key: &[u8], mut f: impl FnMut(&T)) {
        stab(&self.root, key, &mut f);
    }
}

/// Splits into (entries before (start, id), entries at or after it).
fn split<T>(node: Link<T>, start: &[u8], id: u64) -> (Link<T>, Link<T>) {
    match node {
        None => (None, None),
        Some(mut n) => {
            if n.before(start, id) {
                let (l, r) = split(n.right.take(), start, id);
                n.right = l;
                n.update();
                (Some(n), r)
            } else {
                let (l, r) = split(n.left.take(), start, id);
                n.left = r;
                n.update();
                (l, Some(n))
            }
        }
    }
}

fn merge<T>(a: Link<T>, b: Link<T>) -> Link<T> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(mut a), Some(mut b)) => {
            if a.priority > b.priority {
                a.right = merge(a.right.take(), Some(b));
                a.update();
                Some(a)
            } else {
                b.left = merge(Some(a), b.left.take());
                b.update();
                Some(b)
            }
        }
    }
}

fn stab<T>(node: &Link<T>, key: &[u8], f: &mut impl FnMut(&T)) {
    let Some(n) = node else { return };
    // Nothing in this subtree ends after `key`.
    if n.max_end.as_deref().is_some_and(|e| e <= key) {
        return;
    }
    stab(&n.left, key, f);
    if n.range.start.as_slice() <= key {
        if n.range.contains(key) {
            f(&n.value);
        }
        // Right subtree starts are >= this start; they may still be <= key.
        stab(&n.right, key, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn range(a: u8, len: Option<u8>) -> KeyRange {
        KeyRange { start: vec![a], end: len.map(|l| vec![a.saturating_add(l)]) }
    }

    proptest! {
        #[test]
        fn matches_brute_force(
            ops in proptest::collection::vec((any::<bool>(), 0u8..64, proptest::option::of(0u8..16), any::<prop::sample::Index>()), 1..200),
            probes in proptest::collection::vec(proptest::collection::vec(0u8..80, 0..3), 1..20),
        ) {
            let mut index = IntervalIndex::new();
            let mut model: Vec<(EntryHandle, KeyRange, usize)> = Vec::new();
            for (n, (insert, start, len, pick)) in ops.into_iter().enumerate() {
                if insert || model.is_empty() {
                    let r = range(start, len);
                    let h = index.insert(r.clone(), n);
                    model.push((h, r, n));
                } else {
                    let (h, _, v) = model.remove(pick.index(model.len()));
                    prop_assert_eq!(index.remove(&h), Some(v));
                    prop_assert_eq!(index.remove(&h), None);
                }
            }
            prop_assert_eq!(index.len(), model.len());
            for key in probes {
                let mut got = Vec::new();
                index.stab(&key, |v| got.push(*v));
                got.sort();
                let mut want: Vec<usize> = model.iter().filter(|(_, r, _)| r.contains(&key)).map(|(_, _, v)| *v).collect();
                want.sort();
                prop_assert_eq!(got, want);
            }
        }
    }
}
