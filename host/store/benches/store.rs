//! The store benchmark: durable commit throughput (1 and 64 writers), read-modify-write
//! transfers, point-read latency from the cache and from SQLite, range-scan rate, open time
//! and resident memory with a million documents.
//!
//! `cargo bench -p kiln-store --bench store` (add `-- --quick` for a smaller run, or
//! `-- --docs N` to choose the data set size). Figures are printed as a table.

// A benchmark aborts on the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_sqlite::{SqliteOptions, SqlitePersistence};
use kiln_store::query::Query;
use kiln_store::{Store, StoreConfig, StoreError, TransactionLimits};
use kiln_value::{DocumentId, Object, Value};
use serde_json::json;

struct Args {
    docs: usize,
    seconds: f64,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let docs = argv
        .iter()
        .position(|a| a == "--docs")
        .and_then(|i| argv.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 100_000 } else { 1_000_000 });
    Args { docs, seconds: if quick { 1.0 } else { 3.0 } }
}

fn config() -> StoreConfig {
    StoreConfig { prune_interval: Duration::ZERO, ..StoreConfig::default() }
}

async fn open_named(dir: &Path, name: &str, config: StoreConfig) -> Store {
    let p = SqlitePersistence::open_in_dir(dir, name, SqliteOptions::default()).expect("open sqlite");
    Store::open(Arc::new(p), config).await.expect("open store")
}

/// The deployment holding the large data set.
async fn open(dir: &Path, config: StoreConfig) -> Store {
    open_named(dir, "data", config).await
}

fn fields(pairs: &[(&str, Value)]) -> Object {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn rss_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, value: String) {
    println!("{name:<58} {value}");
}

/// Runs `f` until it commits, waiting for the conflicting commit before each retry.
async fn with_retry<T>(
    store: &Store,
    mut f: impl AsyncFnMut(&mut kiln_store::Transaction) -> Result<T, StoreError>,
) -> (T, u32) {
    let mut retries = 0;
    loop {
        let mut tx = store.begin();
        let r = match f(&mut tx).await {
            Ok(v) => tx.commit().await.map(|_| v),
            Err(e) => Err(e),
        };
        match r {
            Ok(v) => return (v, retries),
            Err(e) if e.is_retryable() => {
                retries += 1;
                if let Some(ts) = e.retry_after() {
                    store.wait_for(ts).await;
                }
            }
            Err(e) => panic!("benchmark transaction failed: {e}"),
        }
    }
}

/// Single-document insert transactions from `writers` concurrent tasks for `secs` seconds.
async fn insert_throughput(store: &Arc<Store>, writers: usize, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, stop, count) = (store.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut i = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    let doc = fields(&[("writer", Value::Int64(w as i64)), ("i", Value::Int64(i))]);
                    let mut tx = store.begin();
                    tx.insert("inserts", doc).await.expect("insert");
                    tx.commit().await.expect("commit");
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer task");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Moves one unit from `a` to `b` in one transaction.
async fn transfer(store: &Store, a: DocumentId, b: DocumentId) -> Result<(), StoreError> {
    let balance = |d: &kiln_store::Document| match d.value["balance"] {
        Value::Int64(v) => v,
        _ => 0,
    };
    let mut tx = store.begin();
    let da = tx.get(a).await?.ok_or(StoreError::DocumentNotFound(a.encode()))?;
    let db = tx.get(b).await?.ok_or(StoreError::DocumentNotFound(b.encode()))?;
    tx.patch(a, [("balance".to_owned(), Some(Value::Int64(balance(&da) - 1)))].into()).await?;
    tx.patch(b, [("balance".to_owned(), Some(Value::Int64(balance(&db) + 1)))].into()).await?;
    tx.commit().await.map(|_| ())
}

/// Transfers between random accounts from 64 tasks: read two documents, write two.
async fn transfer_throughput(store: &Arc<Store>, accounts: usize, secs: f64) -> (f64, f64) {
    let (ids, _) = with_retry(store, async |tx| {
        let mut ids = Vec::new();
        for i in 0..accounts {
            ids.push(
                tx.insert("accounts", fields(&[("i", Value::Int64(i as i64)), ("balance", Value::Int64(1_000_000))]))
                    .await?,
            );
        }
        Ok(ids)
    })
    .await;
    let ids = Arc::new(ids);
    let stop = Arc::new(AtomicBool::new(false));
    let (count, retries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let (store, ids, stop, count, retries) =
                (store.clone(), ids.clone(), stop.clone(), count.clone(), retries.clone());
            tokio::spawn(async move {
                let mut x = w.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let a = ids[(x % ids.len() as u64) as usize];
                    let b = ids[((x >> 20) % ids.len() as u64) as usize];
                    if a == b {
                        continue;
                    }
                    let mut r = 0u32;
                    loop {
                        match transfer(&store, a, b).await {
                            Ok(()) => break,
                            Err(e) if e.is_retryable() => {
                                r += 1;
                                if let Some(ts) = e.retry_after() {
                                    store.wait_for(ts).await;
                                }
                            }
                            Err(e) => panic!("transfer failed: {e}"),
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    retries.fetch_add(u64::from(r), Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("transfer task");
    }
    let n = count.load(Ordering::Relaxed) as f64;
    (n / start.elapsed().as_secs_f64(), retries.load(Ordering::Relaxed) as f64 / n.max(1.0))
}

/// Loads `docs` documents in 1,000-document transactions; returns every 10th id.
async fn load(store: &Store, docs: usize) -> Vec<DocumentId> {
    let mut sample = Vec::with_capacity(docs / 10 + 1);
    let payload = Value::String("p".repeat(64));
    for batch_start in (0..docs).step_by(1000) {
        let mut tx = store.begin();
        for i in batch_start..(batch_start + 1000).min(docs) {
            let doc = fields(&[
                ("group", Value::Int64((i % 100) as i64)),
                ("n", Value::Int64(i as i64)),
                ("payload", payload.clone()),
            ]);
            let id = tx.insert("docs", doc).await.expect("insert");
            if i.is_multiple_of(10) {
                sample.push(id);
            }
        }
        tx.commit().await.expect("commit");
    }
    sample
}

/// Latencies of `tx.get` for `ids`, each in a fresh read-only transaction batch.
async fn point_reads(store: &Store, ids: &[DocumentId]) -> Vec<Duration> {
    let mut lat = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(4000) {
        let mut tx = store.begin_read_only();
        for id in chunk {
            let t = Instant::now();
            let doc = tx.get(*id).await.expect("get");
            lat.push(t.elapsed());
            assert!(doc.is_some(), "document missing");
        }
    }
    lat.sort();
    lat
}

fn shuffle(ids: &mut [DocumentId], seed: u64) {
    let mut x = seed | 1;
    for i in (1..ids.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ids.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Child process: open the data set with the default configuration, read documents spread
/// over the whole table until the cache is full, and report resident memory.
fn measure_memory(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(async {
        let store = open(dir, config()).await;
        let opened = rss_kib("VmRSS:");
        let mut ids = Vec::new();
        {
            let mut tx = store.begin_with(true, TransactionLimits::unlimited());
            let stream = tx.open_query(Query::full_table_scan("docs")).expect("open");
            let mut n = 0usize;
            while let Some(d) = tx.next(stream).await.expect("next") {
                if n.is_multiple_of(5) {
                    ids.push(d.id);
                }
                n += 1;
            }
        }
        shuffle(&mut ids, 3);
        point_reads(&store, &ids).await;
        let stats = store.stats();
        println!(
            "{} MiB RSS after open, {} MiB RSS and {} MiB peak after reading {} documents (cache {} MiB in {} entries, budget {} MiB; ids held by the benchmark {} MiB)",
            opened >> 10,
            rss_kib("VmRSS:") >> 10,
            rss_kib("VmHWM:") >> 10,
            ids.len(),
            stats.cache.bytes >> 20,
            stats.cache.entries,
            config().cache_bytes >> 20,
            (ids.len() * std::mem::size_of::<DocumentId>()) >> 20,
        );
        store.close().await;
    });
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(i) = argv.iter().position(|a| a == "--measure-memory") {
        measure_memory(Path::new(&argv[i + 1]));
        return;
    }
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::Builder::new().prefix("kiln-bench").tempdir().expect("tempdir");
    println!(
        "kiln-store benchmark: {} documents, {:.0} s per throughput phase, 2 worker threads",
        args.docs, args.seconds
    );
    rt.block_on(async {
        let store = Arc::new(open_named(dir.path(), "throughput", config()).await);

        let one = insert_throughput(&store, 1, args.seconds).await;
        report("durable insert commits/s, 1 writer", format!("{one:.0}"));
        let many = insert_throughput(&store, 64, args.seconds).await;
        report("durable insert commits/s, 64 writers (target >= 20000)", format!("{many:.0}"));
        let (tps, retries) = transfer_throughput(&store, 10_000, args.seconds).await;
        report("transfer transactions/s (2 reads + 2 writes, 64 tasks)", format!("{tps:.0} ({retries:.3} retries/txn)"));

        let store = Arc::try_unwrap(store).ok().expect("no other references");
        store.close().await;

        let store = open(dir.path(), config()).await;
        let t = Instant::now();
        store.add_index("docs", "by_group", &["group"]).await.expect("index");
        let mut sample = load(&store, args.docs).await;
        let load_secs = t.elapsed().as_secs_f64();
        report(&format!("load {} documents (1000 per commit)", args.docs), format!("{load_secs:.1} s ({:.0} docs/s)", args.docs as f64 / load_secs));
        store.close().await;

        // Resident memory is measured in a fresh process: this one has run the throughput phases.
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .arg("--measure-memory")
            .arg(dir.path())
            .output()
            .expect("memory child");
        report(
            &format!("resident memory with {} documents, default cache", args.docs),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        );

        let t = Instant::now();
        let store = open(dir.path(), config()).await;
        report(&format!("open/recovery with {} documents", args.docs), format!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3));

        shuffle(&mut sample, 42);
        let hot: Vec<DocumentId> = sample.iter().take(20_000).copied().collect();
        point_reads(&store, &hot).await;
        let lat = point_reads(&store, &hot).await;
        report(
            "point read from the cache: p50 / p99 (target p50 <= 5 us)",
            format!("{:.2} us / {:.2} us", percentile(&lat, 0.5).as_secs_f64() * 1e6, percentile(&lat, 0.99).as_secs_f64() * 1e6),
        );

        let scan = |order: &str| Query::from_json(&json!({"source": {"type": "FullTableScan", "tableName": "docs", "order": order}})).expect("query");
        let t = Instant::now();
        let mut tx = store.begin_with(true, TransactionLimits::unlimited());
        let stream = tx.open_query(scan("asc")).expect("open");
        let mut rows = 0usize;
        while tx.next(stream).await.expect("next").is_some() {
            rows += 1;
        }
        assert_eq!(rows, args.docs);
        report("range scan rows/s (full table, by_creation_time)", format!("{:.0}", rows as f64 / t.elapsed().as_secs_f64()));
        let t = Instant::now();
        let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "docs.by_group",
            "range": [{"type": "Gte", "fieldPath": "group", "value": {"$integer": "AAAAAAAAAAA="}}, {"type": "Lt", "fieldPath": "group", "value": {"$integer": "CgAAAAAAAAA="}}]}}))
        .expect("query");
        let rows = tx.collect(q).await.expect("collect").len();
        report("range scan rows/s (user index, 10% of the table)", format!("{:.0}", rows as f64 / t.elapsed().as_secs_f64()));
        drop(tx);

        store.close().await;

        let store = open(dir.path(), StoreConfig { cache_bytes: 0, ..config() }).await;
        shuffle(&mut sample, 7);
        let cold: Vec<DocumentId> = sample.iter().take(20_000).copied().collect();
        let lat = point_reads(&store, &cold).await;
        report(
            "point read from SQLite (no cache): p50 / p99 (target p50 <= 50 us)",
            format!("{:.1} us / {:.1} us", percentile(&lat, 0.5).as_secs_f64() * 1e6, percentile(&lat, 0.99).as_secs_f64() * 1e6),
        );
        store.close().await;
    });
}
