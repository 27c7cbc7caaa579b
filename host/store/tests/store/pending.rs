//! Read-write transactions begin at the newest validated commit, before it is durable: they
//! read its versions from memory, range scans over its writes wait for it, and nothing they
//! return gets out before what they read is durable.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use kiln_persistence::{
    CommitRecord, IndexId, KeyRange, Order, Persistence, PersistenceError, RecoveredState, ScanHit, StepResult,
    Timestamp,
};
use kiln_sqlite::{SqliteOptions, SqlitePersistence};
use kiln_store::query::Query;
use kiln_store::{Store, StoreError};
use kiln_value::{DocumentId, TableNumber, Value};
use serde_json::json;
use tokio::sync::watch;

use crate::{config, obj};

/// What the gate does with commits: let them through, hold them, or fail them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Gate {
    Open,
    Closed,
    Failing,
}

/// SQLite persistence whose commits can be held back (validated by the store, not yet
/// durable) or failed.
struct Gated {
    sqlite: SqlitePersistence,
    gate: watch::Sender<Gate>,
}

#[async_trait]
impl Persistence for Gated {
    async fn recover(&self) -> Result<RecoveredState, PersistenceError> {
        self.sqlite.recover().await
    }
    async fn commit(&self, record: CommitRecord) -> Result<(), PersistenceError> {
        let mut rx = self.gate.subscribe();
        let gate = *rx.wait_for(|g| *g != Gate::Closed).await.map_err(|_| PersistenceError::Closed)?;
        if gate == Gate::Failing {
            return Err(PersistenceError::Storage("the test failed this commit".into()));
        }
        self.sqlite.commit(record).await
    }
    async fn get_document(
        &self,
        id: DocumentId,
        ts: Timestamp,
    ) -> Result<Option<kiln_persistence::DocumentRevision>, PersistenceError> {
        self.sqlite.get_document(id, ts).await
    }
    async fn scan_table(
        &self,
        table: TableNumber,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>, PersistenceError> {
        self.sqlite.scan_table(table, range, ts, order, limit).await
    }
    async fn scan_index(
        &self,
        index: IndexId,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>, PersistenceError> {
        self.sqlite.scan_index(index, range, ts, order, limit).await
    }
    async fn scan_revisions(
        &self,
        table: TableNumber,
        since: Timestamp,
        until: Timestamp,
        after: Option<(Timestamp, kiln_value::InternalId)>,
        limit: usize,
    ) -> Result<Vec<kiln_persistence::DocumentRevision>, PersistenceError> {
        self.sqlite.scan_revisions(table, since, until, after, limit).await
    }
    async fn write_index_entries(
        &self,
        index: IndexId,
        ts: Timestamp,
        entries: Vec<(Vec<u8>, DocumentId)>,
    ) -> Result<(), PersistenceError> {
        self.sqlite.write_index_entries(index, ts, entries).await
    }
    async fn delete_index_entries(&self, index: IndexId, max_rows: usize) -> Result<StepResult, PersistenceError> {
        self.sqlite.delete_index_entries(index, max_rows).await
    }
    async fn prune(&self, cutoff: Timestamp, max_rows: usize) -> Result<StepResult, PersistenceError> {
        self.sqlite.prune(cutoff, max_rows).await
    }
}

async fn open_gated(dir: &std::path::Path) -> (Store, watch::Sender<Gate>) {
    let sqlite = SqlitePersistence::open_in_dir(dir, "test", SqliteOptions::default()).unwrap();
    let (gate, _) = watch::channel(Gate::Open);
    let store = Store::open(Arc::new(Gated { sqlite, gate: gate.clone() }), config()).await.unwrap();
    (store, gate)
}

/// A gated store holding one document `{n: 1}` of table `c`, its gate then closed.
async fn one_document(dir: &std::path::Path) -> (Arc<Store>, watch::Sender<Gate>, DocumentId) {
    let (store, gate) = open_gated(dir).await;
    let mut tx = store.begin();
    let id = tx.insert("c", obj(r#"{"n": 1}"#)).await.unwrap();
    tx.commit().await.unwrap();
    gate.send_replace(Gate::Closed);
    (Arc::new(store), gate, id)
}

fn n(doc: &kiln_store::Document) -> f64 {
    match doc.value["n"] {
        Value::Float64(n) => n,
        ref other => panic!("n is {other:?}"),
    }
}

/// Commits `n = value` to `id` in the background; returns once the store has validated it
/// (it is then pending behind the closed gate).
async fn pending_patch(
    store: &Arc<Store>,
    id: DocumentId,
    value: f64,
) -> tokio::task::JoinHandle<Result<Timestamp, StoreError>> {
    let before = store.begin().begin_ts();
    let task = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin();
            tx.patch(id, [("n".to_string(), Some(Value::Float64(value)))].into()).await?;
            tx.commit().await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.begin().begin_ts() == before {
        assert!(tokio::time::Instant::now() < deadline, "read-write transactions never began after the pending commit");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task
}

/// Whether `task` is waiting for a commit to become durable: the store says when one more
/// transaction than `before` (counted before the task started) waits, with no guess of how
/// long the task takes to get there, and the task has not finished by then.
async fn still_waiting<T>(store: &Store, before: usize, task: &tokio::task::JoinHandle<T>) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.stats().waiting_for_durability <= before {
        if task.is_finished() || tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    !task.is_finished()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_transactions_read_validated_commits_and_answer_after_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (store, gate, id) = one_document(dir.path()).await;
    let first = pending_patch(&store, id, 2.0).await;
    // Queries read what is durable; a read-write transaction reads the validated commit.
    let mut query = store.begin_read_only();
    assert_eq!(n(&query.get(id).await.unwrap().unwrap()), 1.0);
    let mut tx = store.begin();
    assert_eq!(n(&tx.get(id).await.unwrap().unwrap()), 2.0, "the pending version is visible");
    tx.patch(id, [("n".to_string(), Some(Value::Float64(3.0)))].into()).await.unwrap();
    let second = tokio::spawn(async move { tx.commit().await });
    // A transaction that only read answers once what it read is durable.
    let before = store.stats().waiting_for_durability;
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin();
            let seen = n(&tx.get(id).await?.unwrap());
            tx.commit().await.map(|_| seen)
        })
    };
    assert!(
        still_waiting(&store, before, &reader).await,
        "a read-only commit returned before its snapshot was durable"
    );
    assert!(!first.is_finished() && !second.is_finished());

    gate.send_replace(Gate::Open);
    let t1 = first.await.unwrap().unwrap();
    let t2 = second.await.unwrap().expect("reading the pending version means no conflict");
    assert!(t2 > t1);
    assert!(reader.await.unwrap().unwrap() >= 2.0);
    let mut query = store.begin_read_only();
    assert_eq!(n(&query.get(id).await.unwrap().unwrap()), 3.0);
    assert_eq!(store.stats().conflicts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_scan_over_pending_writes_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let (store, gate) = open_gated(dir.path()).await;
    let store = Arc::new(store);
    store.add_index("c", "by_n", &["n"]).await.unwrap();
    let mut tx = store.begin();
    let a = tx.insert("c", obj(r#"{"n": 1}"#)).await.unwrap();
    let b = tx.insert("c", obj(r#"{"n": 100}"#)).await.unwrap();
    tx.commit().await.unwrap();

    gate.send_replace(Gate::Closed);
    let pending = pending_patch(&store, a, 5.0).await;
    let range = |lo: f64, hi: f64| {
        Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "c.by_n",
            "range": [{"type": "Gte", "fieldPath": "n", "value": lo}, {"type": "Lte", "fieldPath": "n", "value": hi}],
            "order": "asc"}}))
        .unwrap()
    };
    // A range the pending commit did not write into is read at once.
    let mut tx = store.begin();
    let far = tx.collect(range(50.0, 200.0)).await.unwrap();
    assert_eq!(far.iter().map(|d| d.id).collect::<Vec<_>>(), vec![b]);
    // One it wrote into (its old key 1 and new key 5) waits, then sees the new version.
    let before = store.stats().waiting_for_durability;
    let scan = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin();
            tx.collect(range(0.0, 10.0)).await.map(|docs| docs.iter().map(|d| n(d)).collect::<Vec<_>>())
        })
    };
    assert!(still_waiting(&store, before, &scan).await, "the scan did not wait for the pending commit");
    gate.send_replace(Gate::Open);
    pending.await.unwrap().unwrap();
    assert_eq!(scan.await.unwrap().unwrap(), vec![5.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_commit_that_fails_ends_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (store, gate, id) = one_document(dir.path()).await;
    let doomed = pending_patch(&store, id, 2.0).await;
    let before = store.stats().waiting_for_durability;
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut tx = store.begin();
            tx.get(id).await?;
            tx.commit().await
        })
    };
    assert!(still_waiting(&store, before, &reader).await);
    gate.send_replace(Gate::Failing);
    assert!(matches!(doomed.await.unwrap(), Err(StoreError::Persistence(_))));
    let e = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("the reader hung").unwrap().unwrap_err();
    assert_eq!(e.code(), "StoreFailed", "{e}");
}
