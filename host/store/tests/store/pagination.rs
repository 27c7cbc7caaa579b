//! Pagination under concurrent inserts and deletes, reactive page re-runs, and cursor integrity.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use kiln_store::query::Query;
use kiln_store::{PageRequest, PageStatus, Store};
use kiln_value::{DocumentId, Value};
use parking_lot::Mutex;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::{config, obj, open};

/// Pages through `q`; between pages it waits for the writer's next write (or its end), so the
/// writes interleave with the pages however the scheduler runs the two tasks.
async fn page_through(
    store: &Store,
    q: &Query,
    size: usize,
    writes: &AtomicUsize,
    writer_done: &AtomicBool,
) -> Vec<DocumentId> {
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let before = writes.load(Ordering::Acquire);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while writes.load(Ordering::Acquire) == before && !writer_done.load(Ordering::Acquire) {
            assert!(tokio::time::Instant::now() < deadline, "the writer made no progress for 10 s");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let mut tx = store.begin_read_only();
        let page = tx
            .query_page(q.clone(), PageRequest { cursor: cursor.take(), page_size: size, ..Default::default() })
            .await
            .unwrap();
        assert!(page.documents.len() <= size);
        seen.extend(page.documents.iter().map(|d| d.id));
        if page.is_done {
            return seen;
        }
        cursor = Some(page.continue_cursor);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paging_while_others_insert_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path(), config()).await);
    store.add_index("p", "by_k", &["k"]).await.unwrap();
    let mut initial = Vec::new();
    for batch in 0..6 {
        let (ids, _) = retry!(store, |tx| {
            let mut ids = Vec::new();
            for i in 0..100 {
                ids.push(tx.insert("p", obj(&format!(r#"{{"k": {}}}"#, batch * 100 + i))).await?);
            }
            Ok(ids)
        });
        initial.extend(ids);
    }
    let queries = [
        Query::from_json(&json!({"source": {"type": "FullTableScan", "tableName": "p", "order": "asc"}})).unwrap(),
        Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "p.by_k",
            "range": [{"type": "Gte", "fieldPath": "k", "value": 50}], "order": "desc"}}))
        .unwrap(),
    ];
    let deleted = Arc::new(Mutex::new(HashSet::new()));
    for q in queries {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicUsize::new(0));
        let writer_done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, stop, deleted, initial) = (store.clone(), stop.clone(), deleted.clone(), initial.clone());
            let (progress, writer_done) = (progress.clone(), writer_done.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(7);
                let mut mine: Vec<DocumentId> = Vec::new();
                let mut writes = 0;
                // Bounded and paced: appends at the end of the scan order must not outrun the pager.
                while !stop.load(Ordering::Relaxed) && writes < 400 {
                    tokio::time::sleep(Duration::from_micros(300)).await;
                    if rng.gen_bool(0.5) {
                        let k = rng.gen_range(0..700);
                        let (id, _) = retry!(store, |tx| { tx.insert("p", obj(&format!(r#"{{"k": {k}}}"#))).await });
                        mine.push(id);
                    } else {
                        let victim = if rng.gen_bool(0.5) && !mine.is_empty() {
                            mine.swap_remove(rng.gen_range(0..mine.len()))
                        } else {
                            initial[rng.gen_range(0..initial.len())]
                        };
                        if deleted.lock().insert(victim) {
                            retry!(store, |tx| {
                                if tx.get(victim).await?.is_some() {
                                    tx.delete(victim).await?;
                                }
                                Ok(())
                            });
                        }
                    }
                    writes += 1;
                    progress.store(writes, Ordering::Release);
                }
                writer_done.store(true, Ordering::Release);
                writes
            })
        };
        let seen = page_through(&store, &q, 13, &progress, &writer_done).await;
        stop.store(true, Ordering::Relaxed);
        let writes = writer.await.unwrap();
        let unique: HashSet<_> = seen.iter().copied().collect();
        assert_eq!(unique.len(), seen.len(), "a document was returned twice");
        let deleted = deleted.lock().clone();
        let mut tx = store.begin_read_only();
        for id in &initial {
            let doc_k = |d: &kiln_store::Document| match d.value["k"] {
                Value::Float64(k) => k,
                _ => panic!(),
            };
            if !deleted.contains(id) {
                let d = tx.get(*id).await.unwrap().unwrap();
                let in_query = matches!(q.source, kiln_store::query::Source::FullTableScan { .. }) || doc_k(&d) >= 50.0;
                assert!(!in_query || unique.contains(id), "a document that existed throughout was missed");
            }
        }
        assert!(writes > 10, "the writer hardly ran ({writes} writes)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerunning_a_page_with_its_end_cursor_keeps_its_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    store.add_index("p", "by_k", &["k"]).await.unwrap();
    retry!(store, |tx| {
        for k in 0..10 {
            tx.insert("p", obj(&format!(r#"{{"k": {}}}"#, k * 10))).await?;
        }
        Ok(())
    });
    let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "p.by_k", "range": []}})).unwrap();
    let mut tx = store.begin_read_only();
    let first = tx.query_page(q.clone(), PageRequest { page_size: 4, ..Default::default() }).await.unwrap();
    assert_eq!(first.documents.len(), 4);
    assert!(!first.is_done);
    // A document inserted inside the first page's range shows up when the page re-runs with its
    // end cursor, and the page still ends where it ended.
    retry!(store, |tx| { tx.insert("p", obj(r#"{"k": 15}"#)).await });
    let mut tx = store.begin_read_only();
    let again = tx
        .query_page(
            q.clone(),
            PageRequest { end_cursor: Some(first.continue_cursor.clone()), page_size: 4, ..Default::default() },
        )
        .await
        .unwrap();
    let ks: Vec<f64> = again
        .documents
        .iter()
        .map(|d| match d.value["k"] {
            Value::Float64(k) => k,
            _ => panic!(),
        })
        .collect();
    assert_eq!(ks, vec![0.0, 10.0, 15.0, 20.0, 30.0]);
    assert_eq!(again.continue_cursor, first.continue_cursor);
    let next = tx
        .query_page(
            q.clone(),
            PageRequest { cursor: Some(first.continue_cursor.clone()), page_size: 100, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(next.documents.len(), 6);
    assert!(next.is_done);
    let done = tx
        .query_page(q, PageRequest { cursor: Some(next.continue_cursor), page_size: 5, ..Default::default() })
        .await
        .unwrap();
    assert!(done.documents.is_empty() && done.is_done);
}

fn ks(page: &kiln_store::Page) -> Vec<f64> {
    page.documents
        .iter()
        .map(|d| match d.value["k"] {
            Value::Float64(k) => k,
            _ => panic!("k is not a number"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grown_page_splits_into_two_pages_that_cover_it_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    store.add_index("p", "by_k", &["k"]).await.unwrap();
    retry!(store, |tx| {
        for k in 0..20 {
            tx.insert("p", obj(&format!(r#"{{"k": {k}}}"#))).await?;
        }
        Ok(())
    });
    let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "p.by_k", "range": []}})).unwrap();
    let mut tx = store.begin_read_only();
    let first = tx.query_page(q.clone(), PageRequest { page_size: 3, ..Default::default() }).await.unwrap();
    let rest = tx
        .query_page(
            q.clone(),
            PageRequest { cursor: Some(first.continue_cursor.clone()), page_size: 3, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!((ks(&first), ks(&rest)), (vec![0.0, 1.0, 2.0], vec![3.0, 4.0, 5.0]));
    // The first page grows to 3 + 6 documents; the split cursor falls in its middle.
    retry!(store, |tx| {
        for k in [0.5, 0.6, 1.5, 1.6, 1.7, 1.8] {
            tx.insert("p", obj(&format!(r#"{{"k": {k}}}"#))).await?;
        }
        Ok(())
    });
    let mut tx = store.begin_read_only();
    let end = Some(first.continue_cursor.clone());
    let grown = tx
        .query_page(q.clone(), PageRequest { end_cursor: end.clone(), page_size: 3, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(ks(&grown), vec![0.0, 0.5, 0.6, 1.0, 1.5, 1.6, 1.7, 1.8, 2.0]);
    assert_eq!(grown.page_status, None, "no read limits were given");
    let split = grown.split_cursor.clone().expect("a page of nine documents has a split cursor");
    let left = tx
        .query_page(q.clone(), PageRequest { end_cursor: Some(split.clone()), page_size: 3, ..Default::default() })
        .await
        .unwrap();
    let right = tx
        .query_page(
            q.clone(),
            PageRequest { cursor: Some(split), end_cursor: end.clone(), page_size: 3, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(ks(&left), vec![0.0, 0.5, 0.6, 1.0, 1.5]);
    assert_eq!(ks(&right), vec![1.6, 1.7, 1.8, 2.0]);
    assert_eq!(right.continue_cursor, first.continue_cursor, "the halves end where the page ended");

    // Read limits: more than half of them read recommends a split; reaching them before the
    // end cursor requires one, and the page keeps its end so that the halves still cover it.
    let limited =
        |rows| PageRequest { end_cursor: end.clone(), page_size: 3, max_rows_read: Some(rows), ..Default::default() };
    let recommended = tx.query_page(q.clone(), limited(16)).await.unwrap();
    assert_eq!((recommended.documents.len(), recommended.page_status), (9, Some(PageStatus::SplitRecommended)));
    let required = tx.query_page(q.clone(), limited(4)).await.unwrap();
    assert_eq!(ks(&required), vec![0.0, 0.5, 0.6, 1.0]);
    assert_eq!(required.page_status, Some(PageStatus::SplitRequired));
    assert_eq!(required.continue_cursor, first.continue_cursor);
    let tail = tx
        .query_page(
            q.clone(),
            PageRequest { cursor: required.split_cursor.clone(), end_cursor: end, page_size: 3, ..Default::default() },
        )
        .await
        .unwrap();
    assert_eq!(ks(&tail), vec![1.5, 1.6, 1.7, 1.8, 2.0]);
    // Without an end cursor a page cut short by its limits is complete: it ends where it stopped
    // (having read all it may, it is worth splitting as it grows).
    let short = tx
        .query_page(q.clone(), PageRequest { page_size: 5, max_rows_read: Some(2), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(
        (ks(&short), short.page_status, short.is_done),
        (vec![0.0, 0.5], Some(PageStatus::SplitRecommended), false)
    );
    // The byte limit cuts pages short the same way.
    let bytes =
        tx.query_page(q, PageRequest { page_size: 5, max_bytes_read: Some(1), ..Default::default() }).await.unwrap();
    assert_eq!(ks(&bytes), vec![0.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_foreign_cursors_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), config()).await;
    retry!(store, |tx| {
        for k in 0..5 {
            tx.insert("p", obj(&format!(r#"{{"k": {k}}}"#))).await?;
        }
        Ok(())
    });
    let asc = Query::full_table_scan("p");
    let desc =
        Query::from_json(&json!({"source": {"type": "FullTableScan", "tableName": "p", "order": "desc"}})).unwrap();
    let mut tx = store.begin_read_only();
    let page = tx.query_page(asc.clone(), PageRequest { page_size: 2, ..Default::default() }).await.unwrap();
    let cursor = page.continue_cursor;
    let mut chars: Vec<char> = cursor.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    for bad in [tampered, "not a cursor".to_string(), String::new(), format!("{cursor}AA")] {
        let err = tx
            .query_page(asc.clone(), PageRequest { cursor: Some(bad.clone()), page_size: 2, ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), "InvalidCursor", "{bad:?}");
    }
    let err = tx
        .query_page(desc, PageRequest { cursor: Some(cursor), page_size: 2, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), "InvalidCursor");
}
