//! Results of queries kept while nothing they read changes: a later call of the same query
//! (same version, function, arguments, identity) at a snapshot the result is still valid at
//! is answered without running the guest.
//!
//! Validity comes from the store: an entry holds the read token of the run that produced it,
//! and [`kiln_store::Store::refresh_token`] moves it forward as long as no commit wrote what
//! it read. A query's `Date.now()` and `Math.random()` are those of the run whose result is
//! reused, as in Convex, whose query cache behaves the same way.

use std::collections::HashMap;

use kiln_store::{ReadToken, Store, Timestamp};
use kiln_value::Value;
use parking_lot::Mutex;

use crate::host::LogLine;

/// What identifies a query's result.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey(Vec<u8>);

impl CacheKey {
    /// The key of `path` with (encoded) `args` under `version` for `identity`, continuing
    /// `journal`.
    pub(crate) fn new(
        version: &str,
        path: &str,
        args: &[u8],
        identity: Option<&Value>,
        internal: bool,
        journal: Option<&str>,
    ) -> CacheKey {
        let identity = identity.map(kiln_value::to_msgpack).unwrap_or_default();
        let journal = journal.unwrap_or_default().as_bytes();
        let mut key = Vec::with_capacity(version.len() + path.len() + args.len() + identity.len() + journal.len() + 40);
        for part in [version.as_bytes(), path.as_bytes(), args, &identity, journal] {
            key.extend_from_slice(&(part.len() as u64).to_le_bytes());
            key.extend_from_slice(part);
        }
        key.push(u8::from(internal));
        CacheKey(key)
    }
}

/// A cached result.
pub(crate) struct Hit {
    /// The value.
    pub value: Value,
    /// The log lines of the run that produced it.
    pub logs: Vec<LogLine>,
    /// The read token, valid at the requested snapshot.
    pub token: ReadToken,
    /// The journal the run produced.
    pub journal: Option<String>,
}

struct Entry {
    /// The snapshot the result was computed at.
    from: Timestamp,
    /// Valid through `token.ts`.
    token: ReadToken,
    value: Value,
    logs: Vec<LogLine>,
    journal: Option<String>,
    bytes: usize,
    last_used: u64,
}

#[derive(Default)]
struct Entries {
    map: HashMap<CacheKey, Entry>,
    bytes: usize,
    clock: u64,
}

/// A deployment's query results, bounded in bytes.
pub(crate) struct QueryCache {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl QueryCache {
    /// An empty cache holding up to about `capacity` bytes (0 disables it).
    pub(crate) fn new(capacity: usize) -> QueryCache {
        QueryCache { entries: Mutex::default(), capacity }
    }

    /// The result of `key` valid at `ts`, if one is cached and nothing it read changed since.
    pub(crate) fn get(&self, store: &Store, key: &CacheKey, ts: Timestamp) -> Option<Hit> {
        if self.capacity == 0 {
            return None;
        }
        let mut entries = self.entries.lock();
        let entries = &mut *entries;
        entries.clock += 1;
        let entry = entries.map.get_mut(key)?;
        if ts < entry.from {
            return None;
        }
        if ts > entry.token.ts {
            match store.refresh_token(&entry.token, ts) {
                Some(token) if token.ts >= ts => entry.token = token,
                Some(_) => return None,
                None => {
                    if let Some(gone) = entries.map.remove(key) {
                        entries.bytes -= gone.bytes;
                    }
                    return None;
                }
            }
        }
        entry.last_used = entries.clock;
        let token = ReadToken { ts, read_set: entry.token.read_set.clone() };
        Some(Hit { value: entry.value.clone(), logs: entry.logs.clone(), token, journal: entry.journal.clone() })
    }

    /// Keeps a successful result computed at `token.ts`.
    pub(crate) fn put(&self, key: CacheKey, token: &ReadToken, value: &Value, logs: &[LogLine], journal: Option<&str>) {
        let bytes = key.0.len()
            + journal.map_or(0, str::len)
            + value.size()
            + logs.iter().map(|l| l.text.len() + 32).sum::<usize>()
            + token
                .read_set
                .iter()
                .map(|(_, r)| r.start.len() + r.end.as_ref().map_or(0, Vec::len) + 24)
                .sum::<usize>()
            + 128;
        // One entry may take at most a sixteenth of the cache.
        if bytes > self.capacity / 16 {
            return;
        }
        let mut entries = self.entries.lock();
        entries.clock += 1;
        let entry = Entry {
            from: token.ts,
            token: token.clone(),
            value: value.clone(),
            logs: logs.to_vec(),
            journal: journal.map(str::to_owned),
            bytes,
            last_used: entries.clock,
        };
        entries.bytes += bytes;
        if let Some(old) = entries.map.insert(key, entry) {
            entries.bytes -= old.bytes;
        }
        if entries.bytes > self.capacity {
            evict(&mut entries, self.capacity * 3 / 4);
        }
    }

    /// Forgets everything (a new version or configuration).
    pub(crate) fn clear(&self) {
        let mut entries = self.entries.lock();
        entries.map.clear();
        entries.bytes = 0;
    }

    /// Entries held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().map.len()
    }
}

/// Drops the least recently used entries until at most `target` bytes remain (in one pass,
/// so that eviction is amortized over many insertions).
fn evict(entries: &mut Entries, target: usize) {
    let mut by_age: Vec<(u64, CacheKey, usize)> =
        entries.map.iter().map(|(k, e)| (e.last_used, k.clone(), e.bytes)).collect();
    by_age.sort_unstable_by_key(|(used, _, _)| *used);
    for (_, key, bytes) in by_age {
        if entries.bytes <= target {
            break;
        }
        entries.map.remove(&key);
        entries.bytes -= bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_every_part() {
        let a = CacheKey::new("v1", "m:f", b"ab", None, false, None);
        assert_ne!(a, CacheKey::new("v1", "m:fa", b"b", None, false, None));
        assert_ne!(a, CacheKey::new("v2", "m:f", b"ab", None, false, None));
        assert_ne!(a, CacheKey::new("v1", "m:f", b"ab", None, true, None));
        assert_ne!(a, CacheKey::new("v1", "m:f", b"ab", Some(&Value::String("u".into())), false, None));
        assert_ne!(a, CacheKey::new("v1", "m:f", b"ab", None, false, Some("j")));
        assert_eq!(a, CacheKey::new("v1", "m:f", b"ab", None, false, None));
    }

    #[test]
    fn eviction_keeps_the_recently_used() {
        let cache = QueryCache::new(64 << 10);
        let token = ReadToken { ts: Timestamp(1), read_set: Default::default() };
        let value = Value::String("x".repeat(1000));
        for i in 0..200u32 {
            cache.put(CacheKey(i.to_le_bytes().to_vec()), &token, &value, &[], None);
            // Key 0 stays in use.
            cache.entries.lock().map.get_mut(&CacheKey(0u32.to_le_bytes().to_vec())).unwrap().last_used = u64::MAX;
        }
        let entries = cache.entries.lock();
        assert!(entries.bytes <= 64 << 10);
        assert!(entries.map.contains_key(&CacheKey(0u32.to_le_bytes().to_vec())));
        assert!(entries.map.contains_key(&CacheKey(199u32.to_le_bytes().to_vec())));
        drop(entries);
        assert!(cache.len() < 200);
    }
}
