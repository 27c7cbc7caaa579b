//! Read tokens and subscriptions: which commits invalidate which query results.

use std::time::Duration;

use kiln_store::query::Query;
use kiln_value::Value;
use serde_json::json;

use crate::{config, obj, open};

fn k_range(lo: i64, hi: i64) -> Query {
    Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "t.by_k",
        "range": [{"type": "Gte", "fieldPath": "k", "value": lo}, {"type": "Lt", "fieldPath": "k", "value": hi}]}}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_invalidate_exactly_the_tokens_they_touch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    store.add_index("t", "by_k", &["k"]).await.unwrap();
    let (ids, _) = retry!(store, |tx| {
        let mut ids = Vec::new();
        for k in 0..10 {
            ids.push(tx.insert("t", obj(&format!(r#"{{"k": {k}}}"#))).await?);
        }
        Ok(ids)
    });
    let mut q = store.begin_read_only();
    assert_eq!(q.collect(k_range(2, 5)).await.unwrap().len(), 3);
    let token = q.read_token();
    let sub = store.subscribe(&token);
    let mut g = store.begin_read_only();
    g.get(ids[8]).await.unwrap();
    let point = store.subscribe(&g.read_token());

    // Outside both: nothing invalidated, and the token can be moved forward.
    let (_, ts) = retry!(store, |tx| { tx.insert("t", obj(r#"{"k": 7}"#)).await });
    assert_eq!(sub.invalidated_at(), None);
    assert_eq!(point.invalidated_at(), None);
    let refreshed = store.refresh_token(&token, ts).expect("still valid");
    assert_eq!(refreshed.ts, ts);

    // A phantom insert into the range invalidates the range token only.
    let (_, ts2) = retry!(store, |tx| { tx.insert("t", obj(r#"{"k": 3.5}"#)).await });
    let at = tokio::time::timeout(Duration::from_secs(5), sub.invalidated()).await.unwrap();
    assert_eq!(at, ts2);
    assert_eq!(point.invalidated_at(), None);
    assert!(store.refresh_token(&token, ts2).is_none());
    assert!(store.refresh_token(&refreshed, ts2).is_none());

    // A patch of the point-read document invalidates the point token.
    retry!(store, |tx| { tx.patch(ids[8], [("k".to_string(), Some(Value::Float64(80.0)))].into()).await });
    tokio::time::timeout(Duration::from_secs(5), point.invalidated()).await.unwrap();

    // Subscribing with a token that is already stale resolves at once.
    let late = store.subscribe(&token);
    assert!(late.invalidated_at().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscriptions_only_the_touched_one_fires() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let (ids, _) = retry!(store, |tx| {
        let mut ids = Vec::new();
        for i in 0..2_000 {
            ids.push(tx.insert("docs", obj(&format!(r#"{{"i": {i}}}"#))).await?);
        }
        Ok(ids)
    });
    let mut subs = Vec::new();
    for id in &ids {
        let mut tx = store.begin_read_only();
        tx.get(*id).await.unwrap();
        subs.push(store.subscribe(&tx.read_token()));
    }
    assert_eq!(store.stats().subscriptions, 2_000);
    retry!(store, |tx| { tx.delete(ids[1234]).await });
    let fired: Vec<usize> =
        subs.iter().enumerate().filter(|(_, s)| s.invalidated_at().is_some()).map(|(i, _)| i).collect();
    assert_eq!(fired, vec![1234]);
    // Fired subscriptions are unregistered; dropping the rest unregisters them too.
    assert_eq!(store.stats().subscriptions, 1_999);
    subs.truncate(10);
    assert_eq!(store.stats().subscriptions, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_at_an_earlier_snapshot_see_that_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let mut tx = store.begin();
    let id = tx.insert("counters", obj(r#"{"n": 1}"#)).await.unwrap();
    let created = tx.commit().await.unwrap();
    let mut tx = store.begin();
    tx.patch(id, [("n".to_string(), Some(Value::Float64(2.0)))].into()).await.unwrap();
    let patched = tx.commit().await.unwrap();

    let mut old = store.begin_read_only_at(created).unwrap();
    assert_eq!(old.get(id).await.unwrap().unwrap().value["n"], Value::Float64(1.0));
    assert_eq!(old.read_token().ts, created, "the token is at the requested snapshot");
    let mut new = store.begin_read_only_at(patched).unwrap();
    assert_eq!(new.get(id).await.unwrap().unwrap().value["n"], Value::Float64(2.0));
    assert!(old.insert("counters", obj("{}")).await.is_err(), "snapshot reads are read-only");

    let future = kiln_store::Timestamp(patched.0 + 1_000_000_000);
    assert_eq!(store.begin_read_only_at(future).err().unwrap().code(), "SnapshotInFuture");
    // Before the table existed the catalog was different: that snapshot is refused.
    let before = kiln_store::Timestamp(created.0 - 1);
    assert_eq!(store.begin_read_only_at(before).err().unwrap().code(), "SnapshotTooOld");
}
