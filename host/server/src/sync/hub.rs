//! The subscription hub of a deployment: every distinct subscribed query — (function,
//! arguments, caller) — is executed once and shared by all sockets that subscribe to it.
//!
//! The hub works in rounds. Each round takes the newest published commit timestamp `ts`,
//! re-runs at exactly `ts` the queries whose read sets a commit in `(result ts, ts]` touched
//! (the store's subscriptions say which), runs new queries at `ts` too, and publishes a
//! [`View`]: every result in it is valid at `ts`, so a socket can build a consistent
//! Transition from any view. Sockets are woken only when one of their queries' results
//! changed; a socket waiting for a timestamp (after a mutation) watches the view timestamp.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use futures::StreamExt;
use kiln_runtime::{CallOutcome, CallRequest, FunctionKind, Runtime};
use kiln_store::{Store, Subscription, Timestamp};
use kiln_value::Value;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use tokio::sync::{Notify, watch};

use crate::auth::Caller;

/// Identifies a distinct query: caller, function and arguments.
pub type QueryKey = Arc<str>;

/// What to run.
#[derive(Debug)]
pub struct QuerySpec {
    /// The function path.
    pub path: String,
    /// The component instance whose query it is (`""`: the app's).
    pub component: String,
    /// The arguments, or why they could not be decoded.
    pub args: Result<Value, String>,
    /// Who runs it.
    pub caller: Caller,
    /// The journal the subscriber got from an earlier run (when it subscribes again after a
    /// reconnect).
    pub journal: Option<String>,
}

impl QuerySpec {
    /// The sharing key.
    pub fn key(&self) -> QueryKey {
        let args = match &self.args {
            Ok(v) => kiln_value::to_convex_json(v).to_string(),
            Err(e) => format!("!{e}"),
        };
        let journal = self.journal.as_deref().unwrap_or_default();
        let path = kiln_runtime::normalize_path(&self.path);
        let component = &self.component;
        format!("{}\u{0}{component}\u{0}{path}\u{0}{args}\u{0}{journal}", self.caller.cache_key()).into()
    }
}

/// A failed query's error.
#[derive(Clone, Debug)]
pub struct QueryFailure {
    /// The message for the client.
    pub message: String,
    /// `ConvexError` data, as Convex JSON.
    pub data: Option<Box<RawValue>>,
}

/// A query's result at some snapshot.
#[derive(Debug)]
pub struct QueryResult {
    /// The value as Convex JSON (serialized once, shared by every socket), or the failure.
    pub outcome: Result<Box<RawValue>, QueryFailure>,
    /// Log lines of the run that produced it.
    pub log_lines: Vec<String>,
    /// The query's journal: where its pages end.
    pub journal: Option<String>,
}

impl PartialEq for QueryFailure {
    fn eq(&self, other: &Self) -> bool {
        self.message == other.message && self.data.as_ref().map(|d| d.get()) == other.data.as_ref().map(|d| d.get())
    }
}

impl PartialEq for QueryResult {
    /// Equal results are not pushed again; the JSON text is canonical (sorted keys), so text
    /// equality is value equality.
    fn eq(&self, other: &Self) -> bool {
        let same = match (&self.outcome, &other.outcome) {
            (Ok(a), Ok(b)) => a.get() == b.get(),
            (Err(a), Err(b)) => a == b,
            _ => false,
        };
        same && self.log_lines == other.log_lines && self.journal == other.journal
    }
}

/// Every current result, all valid at `ts`.
#[derive(Debug, Default)]
pub struct View {
    /// The snapshot the results are valid at.
    pub ts: Timestamp,
    /// Results by query.
    pub results: Arc<HashMap<QueryKey, Arc<QueryResult>>>,
}

struct Entry {
    spec: Arc<QuerySpec>,
    /// The journal re-runs continue: the subscriber's, then the one the first run produced.
    /// Every re-run ends its pages where the first run ended them, so a live page grows and
    /// shrinks with the documents in its range instead of shifting into the next page.
    journal: Option<String>,
    watchers: HashMap<u64, Arc<Notify>>,
    result: Option<Arc<QueryResult>>,
    /// Tells when a commit invalidates the result; `None` for results that depend on no data
    /// (e.g. a missing function), which only a new deploy changes.
    sub: Option<Subscription>,
}

/// Observes every query run (for logs and metrics).
pub type Observer = Arc<dyn Fn(FunctionKind, &str, &CallOutcome) + Send + Sync>;

/// A deployment's subscribed queries.
pub struct Hub {
    deployment: String,
    runtime: Arc<Runtime>,
    store: Arc<Store>,
    entries: Mutex<HashMap<QueryKey, Entry>>,
    view: Mutex<Arc<View>>,
    ts: watch::Sender<Timestamp>,
    wake: Notify,
    rerun_all: AtomicBool,
    next_watcher: AtomicU64,
    concurrency: usize,
    observer: Observer,
    snapshots: Arc<crate::snapshots::Snapshots>,
}

impl Hub {
    /// A hub for `deployment`; start it with [`Hub::run`].
    pub fn new(
        deployment: &str,
        runtime: Arc<Runtime>,
        store: Arc<Store>,
        concurrency: usize,
        observer: Observer,
        snapshots: Arc<crate::snapshots::Snapshots>,
    ) -> Hub {
        Hub {
            deployment: deployment.to_owned(),
            runtime,
            store,
            entries: Mutex::default(),
            view: Mutex::default(),
            ts: watch::channel(Timestamp::ZERO).0,
            wake: Notify::new(),
            rerun_all: AtomicBool::new(false),
            next_watcher: AtomicU64::new(1),
            concurrency: concurrency.max(1),
            observer,
            snapshots,
        }
    }

    /// A new watcher id for [`Hub::subscribe`].
    pub fn watcher_id(&self) -> u64 {
        self.next_watcher.fetch_add(1, Ordering::Relaxed)
    }

    /// Subscribes watcher `id` to a query; `notify` is signalled whenever its result changes.
    pub fn subscribe(&self, spec: QuerySpec, id: u64, notify: Arc<Notify>) -> QueryKey {
        let key = spec.key();
        let mut entries = self.entries.lock();
        let entry = entries.entry(key.clone()).or_insert_with(|| Entry {
            journal: spec.journal.clone(),
            spec: Arc::new(spec),
            watchers: HashMap::new(),
            result: None,
            sub: None,
        });
        let new = entry.result.is_none() && entry.watchers.is_empty();
        entry.watchers.insert(id, notify);
        if new {
            // The view may still hold a result of this query from before it was last
            // unsubscribed: rounds since then advanced the view's timestamp without re-running
            // it, so that result may predate commits the view claims. A session must wait for
            // the new run instead (read-your-writes: a query added right after a mutation).
            let mut view = self.view.lock();
            if view.results.contains_key(&key) {
                let mut results = (*view.results).clone();
                results.remove(&key);
                *view = Arc::new(View { ts: view.ts, results: Arc::new(results) });
            }
        }
        drop(entries);
        if new {
            self.wake.notify_one();
        }
        key
    }

    /// Removes watcher `id` from a query; the query is dropped when nobody watches it.
    pub fn unsubscribe(&self, key: &QueryKey, id: u64) {
        let mut entries = self.entries.lock();
        if let Some(entry) = entries.get_mut(key) {
            entry.watchers.remove(&id);
            if entry.watchers.is_empty() {
                entries.remove(key);
            }
        }
    }

    /// The newest view.
    pub fn view(&self) -> Arc<View> {
        self.view.lock().clone()
    }

    /// A receiver of the view's timestamp.
    pub fn watch_ts(&self) -> watch::Receiver<Timestamp> {
        self.ts.subscribe()
    }

    /// Distinct subscribed queries.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether no query is subscribed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-runs every query in the next round (after a deploy: functions may have changed).
    pub fn invalidate_all(&self) {
        self.rerun_all.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Runs rounds until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut published = self.store.watch_published();
        loop {
            if *shutdown.borrow() {
                return;
            }
            self.round().await;
            tokio::select! {
                _ = published.changed() => {}
                () = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn execute(
        &self,
        spec: &QuerySpec,
        journal: Option<String>,
        ts: Timestamp,
    ) -> (QueryResult, Option<kiln_store::ReadToken>, bool) {
        let args = match &spec.args {
            Ok(v) => v.clone(),
            Err(e) => {
                let failure = QueryFailure { message: e.clone(), data: None };
                return (QueryResult { outcome: Err(failure), log_lines: Vec::new(), journal }, None, false);
            }
        };
        if crate::system::is_system(&spec.path) {
            // Answered by the host; re-run when the environment changes (`invalidate_all`).
            let outcome = crate::system::query_deployment(
                &self.runtime,
                &self.deployment,
                &self.snapshots,
                spec.caller.is_admin(),
                &spec.component,
                &spec.path,
                &args,
            )
            .await
            .map(|v| raw_json(&v))
            .map_err(|e| QueryFailure { message: e.message, data: None });
            return (QueryResult { outcome, log_lines: Vec::new(), journal }, None, false);
        }
        if !spec.component.is_empty() && !spec.caller.is_admin() {
            let message = format!("querying component {:?} needs an admin key", spec.component);
            let failure = QueryFailure { message, data: None };
            return (QueryResult { outcome: Err(failure), log_lines: Vec::new(), journal: None }, None, false);
        }
        let mut req = CallRequest::new(FunctionKind::Query, &spec.path, args);
        req.component = spec.component.clone();
        req.identity = spec.caller.identity();
        req.internal = spec.caller.is_admin();
        req.snapshot = Some(ts);
        req.cacheable = true;
        req.journal = journal;
        let out = self.runtime.call(&self.deployment, req).await;
        (self.observer)(FunctionKind::Query, &spec.path, &out);
        let snapshot_lost = matches!(&out.result, Err(e) if e.code == "SnapshotTooOld" || e.code == "SnapshotInFuture");
        let outcome = match &out.result {
            Ok(v) => Ok(raw_json(v)),
            Err(e) => Err(QueryFailure { message: e.message.clone(), data: e.data.as_ref().map(raw_json) }),
        };
        let result = QueryResult { outcome, log_lines: crate::logs::log_lines(&out), journal: out.journal };
        (result, out.read_token, snapshot_lost)
    }

    /// One round: re-run what commits up to the newest timestamp invalidated, run new
    /// queries, publish the view, wake the watchers of changed results.
    async fn round(&self) {
        let ts = self.store.published_ts();
        let rerun_all = self.rerun_all.swap(false, Ordering::AcqRel);
        let todo: Vec<(QueryKey, Arc<QuerySpec>, Option<String>)> = self
            .entries
            .lock()
            .iter()
            .filter(|(_, e)| {
                rerun_all
                    || e.result.is_none()
                    || e.sub.as_ref().is_some_and(|s| s.invalidated_at().is_some_and(|at| at <= ts))
            })
            .map(|(k, e)| (k.clone(), e.spec.clone(), e.journal.clone()))
            .collect();
        let current = self.view();
        if todo.is_empty() {
            if ts > current.ts {
                // A result of a query no longer subscribed stays until the next re-run rebuilds
                // the view; `subscribe` drops it if the query comes back.
                *self.view.lock() = Arc::new(View { ts, results: current.results.clone() });
                self.ts.send_replace(ts);
            }
            return;
        }
        let runs: Vec<_> = futures::stream::iter(todo)
            .map(|(key, spec, journal)| async move { (key, self.execute(&spec, journal, ts).await) })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut woken = Vec::new();
        let mut retry = false;
        {
            let mut entries = self.entries.lock();
            for (key, (result, token, snapshot_lost)) in runs {
                let Some(entry) = entries.get_mut(&key) else { continue };
                if snapshot_lost {
                    // The catalog changed after `ts` (a deploy): run again at a newer one.
                    entry.result = None;
                    entry.sub = None;
                    retry = true;
                    continue;
                }
                entry.sub = token.map(|t| self.store.subscribe(&t));
                if result.journal.is_some() {
                    entry.journal = result.journal.clone();
                }
                if entry.result.as_deref() != Some(&result) {
                    entry.result = Some(Arc::new(result));
                    woken.extend(entry.watchers.values().cloned());
                }
            }
            let results = entries.iter().filter_map(|(k, e)| e.result.clone().map(|r| (k.clone(), r))).collect();
            *self.view.lock() = Arc::new(View { ts: ts.max(current.ts), results: Arc::new(results) });
        }
        self.ts.send_replace(ts.max(current.ts));
        for w in woken {
            w.notify_one();
        }
        if retry {
            self.wake.notify_one();
        }
    }
}

/// A value as Convex JSON text, checked once so every socket can embed it verbatim.
fn raw_json(value: &Value) -> Box<RawValue> {
    serde_json::value::to_raw_value(&kiln_value::to_convex_json(value)).unwrap_or_else(|_| RawValue::NULL.to_owned())
}
