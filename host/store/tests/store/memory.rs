//! Bounded memory: with a 1 MiB cache over 50 MiB of documents, queries still return the right
//! answers and the process's peak memory stays within the budget plus a fixed overhead.
//! Measured in a child process so that nothing else in this test binary counts.

use std::path::Path;

use kiln_store::query::Query;
use kiln_store::{PageRequest, StoreConfig, TransactionLimits};
use kiln_value::Value;
use serde_json::json;

use crate::{child, config, obj, open};

const DOCS: usize = 12_800;
const PAYLOAD: usize = 4_096;
const CACHE: usize = 1 << 20;
/// What a process needs besides the cache: SQLite page caches (5 connections x 2 MiB), the
/// async runtime and its threads, and batches in flight.
const FIXED_OVERHEAD: usize = 24 << 20;

fn payload(i: usize) -> String {
    let c = char::from(b'a' + (i % 26) as u8);
    format!("{i:08}{}", c.to_string().repeat(PAYLOAD - 8))
}

fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn check(d: &kiln_store::Document) -> usize {
    let Value::Float64(i) = d.value["i"] else { panic!("no i") };
    let i = i as usize;
    assert_eq!(d.value["payload"], Value::String(payload(i)), "document {i} has the wrong payload");
    i
}

#[test]
#[ignore = "run as a child process by `memory_stays_within_the_cache_budget`"]
fn memory_child() {
    let Ok(dir) = std::env::var("KILN_MEMORY_DIR") else { return };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let before = status_kib("VmRSS:");
    rt.block_on(async move {
        let store = open(Path::new(&dir), StoreConfig { cache_bytes: CACHE, ..config() }).await;
        // Reading 50 MiB in one transaction is over the user limits, on purpose.
        let reader = || store.begin_with(true, TransactionLimits::unlimited());
        let mut tx = reader();
        // Every document through a full scan, both directions.
        for order in ["asc", "desc"] {
            let q = Query::from_json(&json!({"source": {"type": "FullTableScan", "tableName": "big", "order": order}}))
                .unwrap();
            let id = tx.open_query(q).unwrap();
            let mut seen = vec![false; DOCS];
            while let Some(d) = tx.next(id).await.unwrap() {
                seen[check(&d)] = true;
            }
            assert!(seen.iter().all(|s| *s), "a full scan missed documents");
            tx.close_query(id).unwrap();
            tx = reader();
        }
        // Index ranges.
        for bucket in 0..16 {
            let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "big.by_bucket",
                "range": [{"type": "Eq", "fieldPath": "bucket", "value": bucket as f64}]}}))
            .unwrap();
            let docs = tx.collect(q).await.unwrap();
            assert_eq!(docs.len(), DOCS / 16);
            assert!(docs.iter().all(|d| check(d) % 16 == bucket));
            tx = reader();
        }
        // Paging through everything.
        let q = Query::full_table_scan("big");
        let (mut cursor, mut total) = (None, 0);
        loop {
            let mut tx = reader();
            let page =
                tx.query_page(q.clone(), PageRequest { cursor, page_size: 500, ..Default::default() }).await.unwrap();
            page.documents.iter().for_each(|d| {
                check(d);
            });
            total += page.documents.len();
            if page.is_done {
                break;
            }
            cursor = Some(page.continue_cursor);
        }
        assert_eq!(total, DOCS);
        // Point reads of every document by id: they go through (and churn) the cache.
        let mut tx = reader();
        let stream = tx.open_query(Query::full_table_scan("big")).unwrap();
        let mut ids = Vec::new();
        while let Some(d) = tx.next(stream).await.unwrap() {
            ids.push(d.id);
        }
        drop(tx);
        for chunk in ids.chunks(1000) {
            let mut tx = reader();
            for id in chunk {
                check(&tx.get(*id).await.unwrap().unwrap());
            }
        }
        let stats = store.stats();
        assert!(stats.cache.bytes <= CACHE, "cache holds {} bytes", stats.cache.bytes);
        assert!(stats.cache.misses > 0);
        store.close().await;
    });
    println!("RSS_BEFORE_KIB {before}");
    println!("PEAK_KIB {}", status_kib("VmHWM:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_the_cache_budget() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), config()).await;
        store.add_index("big", "by_bucket", &["bucket"]).await.unwrap();
        for batch in 0..DOCS / 400 {
            let mut tx = store.begin();
            for i in batch * 400..(batch + 1) * 400 {
                tx.insert("big", obj(&format!(r#"{{"i": {i}, "bucket": {}, "payload": "{}"}}"#, i % 16, payload(i))))
                    .await
                    .unwrap();
            }
            tx.commit().await.unwrap();
        }
        store.close().await;
    }
    let out = child("memory::memory_child", &[("KILN_MEMORY_DIR", dir.path().display().to_string())]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let value = |key: &str| -> usize {
        stdout
            .lines()
            .find_map(|l| l.split_once(key).map(|(_, v)| v))
            .unwrap_or_else(|| panic!("no {key} in:\n{stdout}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (before, peak) = (value("RSS_BEFORE_KIB") * 1024, value("PEAK_KIB") * 1024);
    let data = DOCS * PAYLOAD;
    eprintln!("data {} MiB, RSS before open {} MiB, peak {} MiB", data >> 20, before >> 20, peak >> 20);
    assert!(
        peak <= before + CACHE + FIXED_OVERHEAD,
        "peak RSS {} MiB exceeds {} MiB + cache 1 MiB + overhead {} MiB",
        peak >> 20,
        before >> 20,
        FIXED_OVERHEAD >> 20
    );
    assert!(peak - before < data / 2, "memory grew like the data set");
}
