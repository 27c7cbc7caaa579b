//! Transaction limits and invalid input return their documented error codes.

use kiln_store::query::Query;
use kiln_value::{Object, Value};

use crate::{config, obj, open};

/// The error code of a result that must be an error (without printing a huge `Ok`).
fn code_of<T>(r: Result<Vec<T>, kiln_store::StoreError>) -> &'static str {
    match r {
        Ok(v) => panic!("expected an error, got {} results", v.len()),
        Err(e) => e.code(),
    }
}

fn doc_of(bytes: usize) -> Object {
    obj(&format!(r#"{{"blob": "{}"}}"#, "x".repeat(bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let mut tx = store.begin();
    let mut err = None;
    for i in 0..16_001 {
        if let Err(e) = tx.insert("many", obj(&format!(r#"{{"i": {i}}}"#))).await {
            err = Some((i, e));
            break;
        }
    }
    let (i, e) = err.expect("16,001 inserts must fail");
    assert_eq!((i, e.code()), (16_000, "TooManyDocumentsWritten"));
    assert!(e.to_string().contains("16000"), "{e}");

    let mut tx = store.begin();
    let mut code = None;
    for _ in 0..17 {
        if let Err(e) = tx.insert("big", doc_of(1_000_000)).await {
            code = Some(e.code());
            break;
        }
    }
    assert_eq!(code, Some("TooManyBytesWritten"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let (id, _) = retry!(store, |tx| { tx.insert("one", obj("{}")).await });
    let mut tx = store.begin_read_only();
    for _ in 0..4_096 {
        tx.get(id).await.unwrap();
    }
    assert_eq!(tx.get(id).await.unwrap_err().code(), "TooManyReads");

    for _ in 0..2 {
        retry!(store, |tx| {
            for i in 0..16_000 {
                tx.insert("rows", obj(&format!(r#"{{"i": {i}}}"#))).await?;
            }
            Ok(())
        });
    }
    retry!(store, |tx| { tx.insert("rows", obj("{}")).await });
    let mut tx = store.begin_read_only();
    assert_eq!(code_of(tx.collect(Query::full_table_scan("rows")).await), "TooManyDocumentsRead");

    for _ in 0..9 {
        retry!(store, |tx| {
            tx.insert("blobs", doc_of(1_000_000)).await?;
            tx.insert("blobs", doc_of(1_000_000)).await
        });
    }
    let mut tx = store.begin_read_only();
    assert_eq!(code_of(tx.collect(Query::full_table_scan("blobs")).await), "TooManyBytesRead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_documents_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    let mut tx = store.begin();
    let code = |r: Result<kiln_value::DocumentId, kiln_store::StoreError>| r.unwrap_err().code();
    assert_eq!(code(tx.insert("t", doc_of(1 << 20)).await), "DocumentTooLarge");
    assert_eq!(code(tx.insert("t", obj(r#"{"_secret": 1}"#)).await), "ReservedField");
    assert_eq!(code(tx.insert("t", obj(r#"{"a-b": 1}"#)).await), "InvalidTopLevelField");
    assert_eq!(code(tx.insert("bad-name", obj("{}")).await), "InvalidTableName");
    assert_eq!(code(tx.insert("_system", obj("{}")).await), "InvalidTableName");
    // A component instance's tables are qualified by its path; nothing else may hold a `/`.
    for bad in ["/t", "a//t", "a/", "a-b/t", "a/_t", "a/b-c", "a/t/"] {
        assert_eq!(code(tx.insert(bad, obj("{}")).await), "InvalidTableName", "{bad}");
    }
    let qualified = kiln_store::component_table("limiter/inner", "counters");
    assert_eq!(qualified, "limiter/inner/counters");
    assert_eq!(kiln_store::component_table("", "counters"), "counters");
    let in_component = tx.insert(&qualified, obj(r#"{"n": 1}"#)).await.unwrap();
    assert_eq!(tx.table_name_of(&in_component), Some(qualified.clone()));
    let mut deep = Value::Null;
    for _ in 0..16 {
        deep = Value::Array(vec![deep]);
    }
    assert_eq!(code(tx.insert("t", [("d".to_string(), deep)].into()).await), "NestingTooDeep");
    let id = tx.insert("t", obj(r#"{"a": 1}"#)).await.unwrap();
    let err = tx.patch(id, [("_id".to_string(), Some(Value::from("other")))].into()).await.unwrap_err();
    assert_eq!(err.code(), "SystemFieldModified");
    let err = tx.patch(id, [("big".to_string(), Some(Value::String("x".repeat(1 << 20))))].into()).await.unwrap_err();
    assert_eq!(err.code(), "DocumentTooLarge");
    let err = tx.replace(id, obj(r#"{"_creationTime": 5}"#)).await.unwrap_err();
    assert_eq!(err.code(), "SystemFieldModified");
    // Failed writes leave the transaction usable and change nothing.
    assert_eq!(tx.get(id).await.unwrap().unwrap().value["a"], Value::Float64(1.0));
    tx.commit().await.unwrap();
}
