//! Documents, indexes and queries through the public API.

use kiln_store::query::Query;
use kiln_value::{DocumentId, Value};
use serde_json::json;

use crate::{config, obj, open};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_and_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let mut tx = store.begin();
    let id = tx.insert("messages", obj(r#"{"body": "hi", "n": 1}"#)).await.unwrap();
    let doc = tx.get(id).await.unwrap().unwrap();
    assert_eq!(doc.value["body"], Value::from("hi"));
    assert_eq!(doc.value["_id"], Value::String(id.encode()));
    assert!(matches!(doc.value["_creationTime"], Value::Float64(t) if t > 1.6e12));
    let all = tx.collect(Query::full_table_scan("messages")).await.unwrap();
    assert_eq!(all.len(), 1, "a transaction sees its own insert in queries");
    let ts = tx.commit().await.unwrap();
    assert!(ts > kiln_store::Timestamp(0));

    let mut tx = store.begin();
    let patched =
        tx.patch(id, [("n".to_string(), Some(Value::Float64(2.0))), ("body".to_string(), None)].into()).await.unwrap();
    assert_eq!(patched.value.get("body"), None);
    tx.commit().await.unwrap();

    let mut tx = store.begin();
    assert_eq!(tx.get(id).await.unwrap().unwrap().value["n"], Value::Float64(2.0));
    tx.replace(id, obj(r#"{"other": true}"#)).await.unwrap();
    tx.commit().await.unwrap();

    let mut tx = store.begin();
    let doc = tx.get(id).await.unwrap().unwrap();
    assert_eq!(doc.value.get("n"), None);
    assert_eq!(doc.value["other"], Value::Boolean(true));
    tx.delete(id).await.unwrap();
    assert!(tx.get(id).await.unwrap().is_none());
    tx.commit().await.unwrap();

    let mut tx = store.begin_read_only();
    assert!(tx.get(id).await.unwrap().is_none());
    let err = tx.insert("messages", obj("{}")).await.unwrap_err();
    assert_eq!(err.code(), "ReadOnlyTransaction");
    let err = store.begin().patch(id, Default::default()).await.unwrap_err();
    assert_eq!(err.code(), "DocumentNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_are_bound_to_tables() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let mut tx = store.begin();
    let a = tx.insert("a", obj("{}")).await.unwrap();
    tx.insert("b", obj("{}")).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin();
    assert_eq!(tx.normalize_id(Some("a"), &a.encode()).unwrap(), Some(a));
    assert_eq!(tx.normalize_id(Some("b"), &a.encode()).unwrap(), None);
    assert_eq!(tx.normalize_id(None, &a.encode()).unwrap(), Some(a));
    assert_eq!(tx.normalize_id(Some("a"), "garbage").unwrap(), None);
    assert_eq!(tx.table_name_of(&a).as_deref(), Some("a"));
    // A syntactically valid id of a table that does not exist reads as missing.
    let ghost = DocumentId::new(kiln_value::TableNumber(999), kiln_value::InternalId([1; 16]));
    assert!(tx.get(ghost).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_ranges_filters_order_and_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    store.add_index("msgs", "by_channel_n", &["channel", "n"]).await.unwrap();
    let mut tx = store.begin();
    for i in 0..20 {
        let ch = if i % 2 == 0 { "even" } else { "odd" };
        tx.insert("msgs", obj(&format!(r#"{{"channel": "{ch}", "n": {i}}}"#))).await.unwrap();
    }
    tx.insert("msgs", obj(r#"{"n": 100}"#)).await.unwrap();
    tx.commit().await.unwrap();

    let q = |range: serde_json::Value, order: &str, ops: serde_json::Value| {
        Query::from_json(&json!({
            "source": {"type": "IndexRange", "indexName": "msgs.by_channel_n", "range": range, "order": order},
            "operators": ops
        }))
        .unwrap()
    };
    let ns = |docs: Vec<std::sync::Arc<kiln_store::Document>>| -> Vec<f64> {
        docs.iter()
            .map(|d| match d.value["n"] {
                Value::Float64(n) => n,
                _ => -1.0,
            })
            .collect()
    };
    let mut tx = store.begin_read_only();
    let r = tx
        .collect(q(json!([{"type": "Eq", "fieldPath": "channel", "value": "even"}, {"type": "Gt", "fieldPath": "n", "value": 4}, {"type": "Lte", "fieldPath": "n", "value": 12}]), "asc", json!([])))
        .await
        .unwrap();
    assert_eq!(ns(r), vec![6.0, 8.0, 10.0, 12.0]);
    let r = tx
        .collect(q(
            json!([{"type": "Eq", "fieldPath": "channel", "value": "odd"}]),
            "desc",
            json!([{"filter": {"$gt": [{"$field": "n"}, {"$literal": 3}]}}, {"limit": 3}]),
        ))
        .await
        .unwrap();
    assert_eq!(ns(r), vec![19.0, 17.0, 15.0]);
    // A missing field is undefined, which sorts before every value.
    let r = tx
        .collect(q(json!([{"type": "Eq", "fieldPath": "channel", "value": {"$undefined": null}}]), "asc", json!([])))
        .await
        .unwrap();
    assert_eq!(ns(r), vec![100.0]);
    let err = tx.open_query(q(json!([{"type": "Eq", "fieldPath": "n", "value": 1}]), "asc", json!([]))).unwrap_err();
    assert_eq!(err.code(), "InvalidQuery");
    let missing =
        Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "msgs.nope", "range": []}})).unwrap();
    assert_eq!(tx.open_query(missing).unwrap_err().code(), "IndexNotFound");
    let by_ct = Query::from_json(&json!({"source": {"type": "FullTableScan", "tableName": "msgs", "order": "desc"}, "operators": [{"limit": 2}]})).unwrap();
    assert_eq!(ns(tx.collect(by_ct).await.unwrap()), vec![100.0, 19.0]);
    assert!(tx.collect(Query::full_table_scan("nothing_here")).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_an_index_backfills_existing_documents_and_reopen_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), kiln_store::StoreConfig { backfill_batch: 7, ..config() }).await;
        let mut tx = store.begin();
        for i in 0..50 {
            tx.insert("items", obj(&format!(r#"{{"k": {}}}"#, i % 5))).await.unwrap();
        }
        tx.commit().await.unwrap();
        store.add_index("items", "by_k", &["k"]).await.unwrap();
        let mut tx = store.begin_read_only();
        let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "items.by_k", "range": [{"type": "Eq", "fieldPath": "k", "value": 3}]}})).unwrap();
        assert_eq!(tx.collect(q).await.unwrap().len(), 10);
        store.close().await;
    }
    let store = open(dir.path(), config()).await;
    let mut tx = store.begin();
    tx.insert("items", obj(r#"{"k": 3}"#)).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin_read_only();
    let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "items.by_k", "range": [{"type": "Eq", "fieldPath": "k", "value": 3}]}})).unwrap();
    assert_eq!(tx.collect(q.clone()).await.unwrap().len(), 11);
    drop(tx);
    store.drop_index("items", "by_k").await.unwrap();
    let mut tx = store.begin_read_only();
    assert_eq!(tx.open_query(q).unwrap_err().code(), "IndexNotFound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_snapshots_fail_cleanly_after_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        open(dir.path(), kiln_store::StoreConfig { revision_retention: std::time::Duration::ZERO, ..config() }).await;
    let mut tx = store.begin();
    let id = tx.insert("t", obj(r#"{"v": 1}"#)).await.unwrap();
    tx.commit().await.unwrap();
    let mut old = store.begin_read_only();
    let mut tx = store.begin();
    tx.patch(id, [("v".to_string(), Some(Value::Float64(2.0)))].into()).await.unwrap();
    tx.commit().await.unwrap();
    assert!(store.prune_now().await.unwrap() > 0);
    // The cache still answers for the latest version; an old snapshot must not read pruned data.
    let err = old.collect(Query::full_table_scan("t")).await.unwrap_err();
    assert_eq!(err.code(), "SnapshotTooOld");
    assert!(err.is_retryable());
    let mut fresh = store.begin_read_only();
    assert_eq!(fresh.collect(Query::full_table_scan("t")).await.unwrap()[0].value["v"], Value::Float64(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_are_invisible_to_user_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let mut sys = store.begin_system();
    let id = sys.insert("_usage", obj(r#"{"fuel": 5}"#)).await.unwrap();
    sys.commit().await.unwrap();
    assert_eq!(store.begin().insert("_usage", obj("{}")).await.unwrap_err().code(), "InvalidTableName");
    let mut user = store.begin_read_only();
    assert!(user.get(id).await.unwrap().is_none(), "a user transaction cannot read a system document by id");
    assert!(user.collect(Query::full_table_scan("_usage")).await.unwrap().is_empty());
    assert_eq!(user.normalize_id(Some("_usage"), &id.encode()).unwrap(), None);
    let mut sys = store.begin_system();
    assert_eq!(sys.collect(Query::full_table_scan("_usage")).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readable_system_tables_are_read_by_apps_through_their_indexes_but_written_only_by_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    store.ensure_system_index("_scheduled_functions", "by_state", &["state.kind", "scheduledTime"]).await.unwrap();
    // Ensuring it again is a no-op; other fields under the same name are refused.
    store.ensure_system_index("_scheduled_functions", "by_state", &["state.kind", "scheduledTime"]).await.unwrap();
    let err = store.ensure_system_index("_scheduled_functions", "by_state", &["name"]).await.unwrap_err();
    assert_eq!(err.code(), "InvalidIndex");
    let mut sys = store.begin_system();
    let late = sys.insert_record("_scheduled_functions", obj(r#"{"state": {"kind": "pending"}, "scheduledTime": 20}"#));
    let late = late.await.unwrap();
    let early =
        sys.insert_record("_scheduled_functions", obj(r#"{"state": {"kind": "pending"}, "scheduledTime": 10}"#));
    let early = early.await.unwrap();
    sys.insert_record("_scheduled_functions", obj(r#"{"state": {"kind": "success"}, "scheduledTime": 5}"#))
        .await
        .unwrap();
    sys.commit().await.unwrap();

    let mut user = store.begin_read_only();
    assert!(user.get(late).await.unwrap().is_some(), "apps read `_scheduled_functions` by id");
    let pending: serde_json::Value = serde_json::json!({
        "source": {"type": "IndexRange", "indexName": "_scheduled_functions.by_state",
                   "range": [{"type": "Eq", "fieldPath": "state.kind", "value": "pending"}], "order": "asc"},
        "operators": []
    });
    let docs = user.collect(Query::from_json(&pending).unwrap()).await.unwrap();
    assert_eq!(docs.iter().map(|d| d.id).collect::<Vec<_>>(), vec![early, late], "pending, earliest first");
    let mut tx = store.begin();
    let err = tx.patch(late, [("scheduledTime".to_string(), Some(Value::Float64(1.0)))].into()).await.unwrap_err();
    assert_eq!(err.code(), "SystemTableReadOnly");
    assert_eq!(tx.delete(early).await.unwrap_err().code(), "SystemTableReadOnly");
    assert_eq!(tx.insert("_scheduled_functions", obj("{}")).await.unwrap_err().code(), "InvalidTableName");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_documents_keep_their_ids_and_creation_times_or_are_refused_by_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let mut tx = store.begin();
    let existing = tx.insert("people", obj(r#"{"name": "ada"}"#)).await.unwrap();
    tx.commit().await.unwrap();
    // A table the deployment does not have takes the snapshot's number; ids and times stay.
    let id = DocumentId::new(kiln_value::TableNumber(40), kiln_value::InternalId::fresh());
    let mut tx = store.begin();
    tx.import_document("things", id, 1_600_000_000_000.25, obj(r#"{"n": {"$integer": "BwAAAAAAAAA="}}"#))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin();
    let doc = tx.get(id).await.unwrap().unwrap();
    assert_eq!(doc.value["_id"], Value::String(id.encode()));
    assert_eq!(doc.value["_creationTime"], Value::Float64(1_600_000_000_000.25));
    assert_eq!(doc.value["n"], Value::Int64(7));
    // A new table after it gets a higher number than the imported one.
    let later = tx.insert("later", obj(r#"{}"#)).await.unwrap();
    assert!(later.table.0 > 40);
    tx.commit().await.unwrap();

    let refused = |e: kiln_store::StoreError| {
        assert_eq!(e.code(), "ImportConflict", "{e}");
        e.to_string()
    };
    let mut tx = store.begin();
    // The same id again.
    let e = tx.import_document("things", id, 1.0, obj("{}")).await.unwrap_err();
    assert!(refused(e).contains("exists already"));
    // A table that exists under another number.
    let other = DocumentId::new(kiln_value::TableNumber(41), kiln_value::InternalId::fresh());
    let e = tx.import_document("people", other, 1.0, obj("{}")).await.unwrap_err();
    assert!(refused(e).contains("has number"));
    // A number another table has.
    let taken = DocumentId::new(existing.table, kiln_value::InternalId::fresh());
    let e = tx.import_document("fresh", taken, 1.0, obj("{}")).await.unwrap_err();
    assert!(refused(e).contains("taken by \"people\""));
    // A creation time that is not one.
    let e = tx.import_document("things", other, f64::NAN, obj("{}")).await.unwrap_err();
    assert!(refused(e).contains("_creationTime"));
}
