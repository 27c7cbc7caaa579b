//! Optimistic concurrency control and serializability.

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_store::query::Query;
use kiln_value::{DocumentId, Value};
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{config, obj, open};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_on_one_document_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let (id, _) = retry!(store, |tx| { tx.insert("c", obj(r#"{"n": 0}"#)).await });
    let mut a = store.begin();
    let mut b = store.begin();
    for tx in [&mut a, &mut b] {
        let n = match tx.get(id).await.unwrap().unwrap().value["n"] {
            Value::Float64(n) => n,
            _ => panic!(),
        };
        tx.patch(id, [("n".to_string(), Some(Value::Float64(n + 1.0)))].into()).await.unwrap();
    }
    // What a transaction holds until validation is dropped when it commits, and handed back
    // (before the reply) when it is refused.
    struct Probe {
        turn: Arc<()>,
        refused: Arc<std::sync::Mutex<Vec<Arc<()>>>>,
    }
    impl kiln_store::Hold for Probe {
        fn refused(self: Box<Self>) {
            self.refused.lock().unwrap().push(self.turn.clone());
        }
    }
    let (turn, refused) = (Arc::new(()), Arc::new(std::sync::Mutex::new(Vec::new())));
    a.hold_until_validated(Box::new(Probe { turn: turn.clone(), refused: refused.clone() }));
    b.hold_until_validated(Box::new(Probe { turn: turn.clone(), refused: refused.clone() }));
    a.commit().await.unwrap();
    assert_eq!(Arc::strong_count(&turn), 2, "the committed one let go");
    let err = b.commit().await.unwrap_err();
    assert_eq!(refused.lock().unwrap().len(), 1, "the refused one came back before the reply");
    assert_eq!(Arc::strong_count(&turn), 2, "and holds only what it handed back");
    assert_eq!(err.code(), "Conflict");
    assert!(err.is_retryable());
    assert!(err.to_string().contains("\"c\""), "{err}");
    // The conflict names the key it happened on: the same for another conflict on it.
    assert_ne!(err.conflict_key(), 0);
    let mut c = store.begin();
    let mut d = store.begin();
    for tx in [&mut c, &mut d] {
        tx.get(id).await.unwrap();
        tx.patch(id, [("n".to_string(), Some(Value::Float64(9.0)))].into()).await.unwrap();
    }
    c.commit().await.unwrap();
    assert_eq!(d.commit().await.unwrap_err().conflict_key(), err.conflict_key());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disjoint_ranges_both_commit_and_phantoms_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    store.add_index("t", "by_k", &["k"]).await.unwrap();
    retry!(store, |tx| {
        for k in 0..10 {
            tx.insert("t", obj(&format!(r#"{{"k": {k}}}"#))).await?;
        }
        Ok(())
    });
    let range = |lo: i32, hi: i32| {
        Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "t.by_k",
            "range": [{"type": "Gte", "fieldPath": "k", "value": lo}, {"type": "Lt", "fieldPath": "k", "value": hi}]}}))
        .unwrap()
    };
    // Each reads its own range and inserts inside it: no overlap, both commit.
    let mut a = store.begin();
    let mut b = store.begin();
    assert_eq!(a.collect(range(0, 5)).await.unwrap().len(), 5);
    assert_eq!(b.collect(range(5, 10)).await.unwrap().len(), 5);
    a.insert("t", obj(r#"{"k": 2.5}"#)).await.unwrap();
    b.insert("t", obj(r#"{"k": 7.5}"#)).await.unwrap();
    a.commit().await.unwrap();
    b.commit().await.unwrap();

    // A phantom: `reader` scanned [0, 5); `writer` inserts k=3 there and commits first.
    let mut reader = store.begin();
    reader.collect(range(0, 5)).await.unwrap();
    reader.insert("other", obj("{}")).await.unwrap();
    retry!(store, |tx| { tx.insert("t", obj(r#"{"k": 3}"#)).await });
    assert_eq!(reader.commit().await.unwrap_err().code(), "Conflict");

    // An insert just outside the range read does not conflict.
    let mut reader = store.begin();
    reader.collect(range(0, 5)).await.unwrap();
    reader.insert("other", obj("{}")).await.unwrap();
    retry!(store, |tx| { tx.insert("t", obj(r#"{"k": 5}"#)).await });
    reader.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_query_only_reads_up_to_its_last_result() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    retry!(store, |tx| {
        for k in 0..10 {
            tx.insert("t", obj(&format!(r#"{{"k": {k}}}"#))).await?;
        }
        Ok(())
    });
    let first_two =
        Query::from_json(&json!({"source": {"type": "FullTableScan", "tableName": "t"}, "operators": [{"limit": 2}]}))
            .unwrap();
    let mut reader = store.begin();
    assert_eq!(reader.collect(first_two).await.unwrap().len(), 2);
    reader.insert("elsewhere", obj("{}")).await.unwrap();
    // Appending at the end of the table is past what the reader read.
    retry!(store, |tx| { tx.insert("t", obj(r#"{"k": 10}"#)).await });
    reader.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_never_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let (id, _) = retry!(store, |tx| { tx.insert("c", obj(r#"{"n": 0}"#)).await });
    let mut q = store.begin_read_only();
    let before = q.get(id).await.unwrap().unwrap();
    retry!(store, |tx| { tx.patch(id, [("n".to_string(), Some(Value::Float64(5.0)))].into()).await });
    // The snapshot still shows the old value, and "committing" a query always succeeds.
    assert_eq!(q.get(id).await.unwrap().unwrap().value, before.value);
    assert_eq!(q.collect(Query::full_table_scan("c")).await.unwrap()[0].value, before.value);
    q.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_transfers_are_serializable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), config()).await);
    const ACCOUNTS: usize = 100;
    const INITIAL: i64 = 1000;
    let (ids, _) = retry!(store, |tx| {
        let mut ids = Vec::new();
        for i in 0..ACCOUNTS {
            ids.push(
                tx.insert(
                    "accounts",
                    obj(&format!(
                        r#"{{"i": {i}, "balance": {{"$integer": "{}"}}}}"#,
                        kiln_value::json::base64_encode(&INITIAL.to_le_bytes())
                    )),
                )
                .await?,
            );
        }
        Ok(ids)
    });
    let ids = Arc::new(ids);
    let balance = |d: &kiln_store::Document| match d.value["balance"] {
        Value::Int64(b) => b,
        _ => panic!(),
    };
    let mut workers = Vec::new();
    for w in 0..8u64 {
        let (store, ids) = (store.clone(), ids.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            let mut log = Vec::new();
            for _ in 0..60 {
                let (a, b) = loop {
                    let (a, b) = (rng.gen_range(0..ACCOUNTS), rng.gen_range(0..ACCOUNTS));
                    if a != b {
                        break (a, b);
                    }
                };
                let amount: i64 = rng.gen_range(1..400);
                let ((moved, _), ts) = retry!(store, |tx| {
                    let da = tx.get(ids[a]).await?.unwrap();
                    let db = tx.get(ids[b]).await?.unwrap();
                    let (ba, bb) = (balance(&da), balance(&db));
                    if ba < amount {
                        return Ok((false, ()));
                    }
                    tx.patch(ids[a], [("balance".to_string(), Some(Value::Int64(ba - amount)))].into()).await?;
                    tx.patch(ids[b], [("balance".to_string(), Some(Value::Int64(bb + amount)))].into()).await?;
                    Ok((true, ()))
                });
                if moved {
                    log.push((ts, a, b, amount));
                }
            }
            log
        }));
    }
    let mut committed = Vec::new();
    for w in workers {
        committed.extend(w.await.unwrap());
    }
    committed.sort();
    let mut model = vec![INITIAL; ACCOUNTS];
    for (_, a, b, amount) in &committed {
        assert!(model[*a] >= *amount, "serial replay would overdraw account {a}");
        model[*a] -= amount;
        model[*b] += amount;
    }
    let mut tx = store.begin_read_only();
    let docs = tx.collect(Query::full_table_scan("accounts")).await.unwrap();
    let actual: BTreeMap<usize, i64> = docs
        .iter()
        .map(|d| {
            (
                match d.value["i"] {
                    Value::Float64(i) => i as usize,
                    _ => panic!(),
                },
                balance(d),
            )
        })
        .collect();
    assert_eq!(actual.values().sum::<i64>(), INITIAL * ACCOUNTS as i64);
    assert_eq!(actual.values().copied().collect::<Vec<_>>(), model);
    assert!(committed.len() > 200, "only {} transfers committed", committed.len());
    let _ = DocumentId::decode(&ids[0].encode()).unwrap();
    eprintln!("transfers committed: {}, conflicts: {}", committed.len(), store.stats().conflicts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_records_commit_with_user_writes_and_conflict_like_documents() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let key = kiln_value::InternalId([7; 16]);
    let record = |n: f64| [("n".to_string(), Value::Float64(n))].into_iter().collect::<kiln_value::Object>();

    // Two transactions both find no record, then both write it: the second must conflict.
    let mut a = store.begin();
    let mut b = store.begin();
    assert!(a.get_record("_requests", key).await.unwrap().is_none());
    assert!(b.get_record("_requests", key).await.unwrap().is_none());
    a.insert("things", obj("{}")).await.unwrap();
    a.put_record("_requests", key, record(1.0)).await.unwrap();
    b.put_record("_requests", key, record(2.0)).await.unwrap();
    a.commit().await.unwrap();
    let err = b.commit().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");

    let mut tx = store.begin();
    let got = tx.get_record("_requests", key).await.unwrap().unwrap();
    assert_eq!(got.value["n"], Value::Float64(1.0), "the record committed with the user write");
    assert!(tx.get_record("requests", key).await.is_err(), "records live only in system tables");
    // User code cannot see the system table, by name or by id.
    assert!(
        tx.collect(kiln_store::query::Query::full_table_scan("_requests")).await.map(|d| d.is_empty()).unwrap_or(true)
    );
    let id = got.value["_id"].clone();
    let Value::String(id) = id else { panic!() };
    assert_eq!(tx.normalize_id(None, &id).unwrap(), None);
    drop(tx);

    // Applying an app schema leaves system tables alone.
    let schema = kiln_store::Schema::parse(r#"{"tables": [], "schemaValidation": true}"#).unwrap();
    store.set_schema(&schema).await.unwrap();
    let mut tx = store.begin_read_only();
    assert!(tx.get_record("_requests", key).await.unwrap().is_some());
}
