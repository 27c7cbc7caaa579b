//! Subscriptions: registered read tokens, and which of them a commit invalidates.
//!
//! Each token's ranges live in a per-index [`IntervalIndex`]; a commit stabs the index with
//! every key it wrote, so the work per commit depends on the keys written and the matches,
//! not on the number of subscriptions.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_persistence::{IndexId, Timestamp};
use tokio::sync::Notify;

use crate::interval_index::{EntryHandle, IntervalIndex};
use crate::read_set::ReadToken;

/// Shared state of one subscription.
#[derive(Default)]
pub(crate) struct SubState {
    /// The timestamp of the commit that invalidated it; 0 while valid.
    invalidated_at: AtomicU64,
    notify: Notify,
}

impl SubState {
    pub(crate) fn invalidate(&self, ts: Timestamp) {
        let ts = ts.0.max(1);
        if self.invalidated_at.compare_exchange(0, ts, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.notify.notify_waiters();
            self.notify.notify_one();
        }
    }

    fn invalidated_at(&self) -> Option<Timestamp> {
        match self.invalidated_at.load(Ordering::Acquire) {
            0 => None,
            ts => Some(Timestamp(ts)),
        }
    }
}

struct Registered {
    handles: Vec<(IndexId, EntryHandle)>,
    state: Arc<SubState>,
}

/// All live subscriptions of a store.
#[derive(Default)]
pub(crate) struct Registry {
    next_id: u64,
    subs: HashMap<u64, Registered>,
    by_index: HashMap<IndexId, IntervalIndex<u64>>,
}

impl Registry {
    pub(crate) fn register(&mut self, token: &ReadToken, state: Arc<SubState>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let handles = token
            .read_set
            .iter()
            .map(|(index, range)| (index, self.by_index.entry(index).or_default().insert(range.clone(), id)))
            .collect();
        self.subs.insert(id, Registered { handles, state });
        id
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Arc<SubState>> {
        let reg = self.subs.remove(&id)?;
        for (index, handle) in &reg.handles {
            if let Some(tree) = self.by_index.get_mut(index) {
                tree.remove(handle);
                if tree.is_empty() {
                    self.by_index.remove(index);
                }
            }
        }
        Some(reg.state)
    }

    /// Invalidates (and unregisters) every subscription whose reads contain a written key.
    pub(crate) fn on_commit(&mut self, keys: &[(IndexId, Vec<u8>)], ts: Timestamp) -> usize {
        let mut hit = HashSet::new();
        for (index, key) in keys {
            if let Some(tree) = self.by_index.get(index) {
                tree.stab(key, |id| {
                    hit.insert(*id);
                });
            }
        }
        for id in &hit {
            if let Some(state) = self.remove(*id) {
                state.invalidate(ts);
            }
        }
        hit.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.subs.len()
    }
}

/// A registered token: resolves once a commit writes something the token's query read.
/// Dropping it unregisters it.
pub struct Subscription {
    pub(crate) id: u64,
    pub(crate) state: Arc<SubState>,
    pub(crate) registry: Arc<parking_lot::Mutex<Registry>>,
}

impl Subscription {
    /// The timestamp of the invalidating commit, if one happened.
    pub fn invalidated_at(&self) -> Option<Timestamp> {
        self.state.invalidated_at()
    }

    /// Waits until a commit invalidates the token; returns that commit's timestamp.
    pub async fn invalidated(&self) -> Timestamp {
        loop {
            let notified = self.state.notify.notified();
            if let Some(ts) = self.state.invalidated_at() {
                return ts;
            }
            notified.await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.registry.lock().remove(self.id);
    }
}
