//! Schemas: validation of writes, validation of existing data, and schema-declared indexes.

use kiln_store::Schema;
use kiln_store::StoreError;
use kiln_store::query::Query;
use kiln_value::Value;
use serde_json::json;

use crate::{config, obj, open};

fn schema(validation: bool) -> Schema {
    Schema::parse(
        &json!({
            "tables": [{
                "tableName": "messages",
                "indexes": [{"indexDescriptor": "by_author", "fields": ["author"]}],
                "searchIndexes": [], "vectorIndexes": [],
                "documentType": {"type": "object", "value": {
                    "body": {"fieldType": {"type": "string"}, "optional": false},
                    "author": {"fieldType": {"type": "string"}, "optional": true},
                    "tags": {"fieldType": {"type": "array", "value": {"type": "string"}}, "optional": true},
                    "reply_to": {"fieldType": {"type": "id", "tableName": "messages"}, "optional": true}
                }}
            }],
            "schemaValidation": validation
        })
        .to_string(),
    )
    .unwrap()
}

fn violation(e: StoreError) -> (String, String) {
    match e {
        StoreError::SchemaViolation { table, path, .. } => (table, path),
        other => panic!("expected a schema violation, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_break_the_schema_fail_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    store.set_schema(&schema(true)).await.unwrap();
    let mut tx = store.begin();
    let id = tx.insert("messages", obj(r#"{"body": "hi", "author": "ann"}"#)).await.unwrap();
    let err = tx.insert("messages", obj(r#"{"body": 5}"#)).await.unwrap_err();
    assert_eq!(err.code(), "SchemaViolation");
    assert_eq!(violation(err), ("messages".into(), ".body".into()));
    let err = tx
        .patch(id, [("tags".to_string(), Some(Value::Array(vec!["a".into(), Value::Float64(5.0)])))].into())
        .await
        .unwrap_err();
    assert_eq!(violation(err).1, ".tags[1]");
    let err = tx.replace(id, obj(r#"{"author": "bob"}"#)).await.unwrap_err();
    assert_eq!(violation(err).1, ".body");
    let err = tx.insert("messages", obj(r#"{"body": "x", "extra": 1}"#)).await.unwrap_err();
    assert_eq!(violation(err).1, ".extra");
    let other = tx.insert("elsewhere", obj("{}")).await.unwrap();
    let err = tx.insert("messages", obj(&format!(r#"{{"body": "x", "reply_to": "{other}"}}"#))).await.unwrap_err();
    assert_eq!(violation(err).1, ".reply_to");
    tx.insert("messages", obj(&format!(r#"{{"body": "x", "reply_to": "{id}"}}"#))).await.unwrap();
    tx.commit().await.unwrap();

    // The schema's index was created and is maintained.
    let mut tx = store.begin_read_only();
    let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "messages.by_author",
        "range": [{"type": "Eq", "fieldPath": "author", "value": "ann"}]}}))
    .unwrap();
    assert_eq!(tx.collect(q).await.unwrap().len(), 1);

    // Without validation, the same writes pass.
    store.set_schema(&schema(false)).await.unwrap();
    retry!(store, |tx| { tx.insert("messages", obj(r#"{"body": 5}"#)).await });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_that_existing_documents_break_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let (bad, _) = retry!(store, |tx| {
        tx.insert("messages", obj(r#"{"body": "fine"}"#)).await?;
        tx.insert("messages", obj(r#"{"body": ["not", "a", "string"]}"#)).await
    });
    let err = store.set_schema(&schema(true)).await.unwrap_err();
    assert_eq!(err.code(), "SchemaViolation");
    assert!(err.to_string().contains(&bad.encode()), "the error names the document: {err}");
    // Nothing changed: no validation, no index.
    retry!(store, |tx| { tx.insert("messages", obj(r#"{"body": 1}"#)).await });
    assert!(store.catalog().table("messages").unwrap().indexes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_changes_add_backfill_and_drop_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    retry!(store, |tx| {
        for a in ["ann", "bob", "ann"] {
            tx.insert("messages", obj(&format!(r#"{{"body": "x", "author": "{a}"}}"#))).await?;
        }
        Ok(())
    });
    store.set_schema(&schema(true)).await.unwrap();
    let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "messages.by_author",
        "range": [{"type": "Eq", "fieldPath": "author", "value": "ann"}]}}))
    .unwrap();
    assert_eq!(store.begin_read_only().collect(q.clone()).await.unwrap().len(), 2);
    let without_index = Schema::parse(
        &json!({"tables": [{"tableName": "messages", "indexes": []}], "schemaValidation": true}).to_string(),
    )
    .unwrap();
    store.set_schema(&without_index).await.unwrap();
    assert_eq!(store.begin_read_only().open_query(q).unwrap_err().code(), "IndexNotFound");
    assert!(store.catalog().dropped_indexes.is_empty(), "dropped index entries were cleaned up");
}
