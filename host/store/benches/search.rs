//! The search benchmark: a text index over 100,000 documents of ~200 words (build time, disk
//! size, query latency and throughput) and the transfer benchmark's commits/s with and without
//! a search index on the written table.
//!
//! `cargo bench -p kiln-store --bench search` (`-- --quick` for 20,000 documents, `-- --docs N`).

// A benchmark aborts on the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_sqlite::{SqliteOptions, SqlitePersistence};
use kiln_store::query::Query;
use kiln_store::{Schema, Store, StoreConfig};
use kiln_value::{DocumentId, Object, Value};
use serde_json::json;

const SYLLABLES: [&str; 32] = [
    "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "hu", "je", "ko", "la", "mo", "nu", "pa",
    "qui", "re", "si", "to", "ul", "ve", "wa", "xi", "yo", "ze", "an", "el", "or",
];

/// A xorshift generator (deterministic runs).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A word rank, about Zipf-distributed over a 30,000-word vocabulary.
    fn rank(&mut self) -> u64 {
        30_000f64.powf(self.unit()) as u64
    }
}

fn word(rank: u64) -> String {
    let (a, b, c) = (rank % 32, (rank / 32) % 32, rank / 1024);
    let mut w = format!("{}{}", SYLLABLES[a as usize], SYLLABLES[b as usize]);
    if c > 0 {
        w.push_str(SYLLABLES[(c % 32) as usize]);
    }
    w
}

fn text(rng: &mut Rng, words: usize) -> String {
    (0..words).map(|_| word(rng.rank())).collect::<Vec<_>>().join(" ")
}

fn config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig { prune_interval: Duration::ZERO, search_dir: Some(dir.join("search")), ..StoreConfig::default() }
}

async fn open(dir: &std::path::Path, name: &str) -> Store {
    let p = SqlitePersistence::open_in_dir(dir, name, SqliteOptions::default()).expect("open sqlite");
    Store::open(Arc::new(p), config(&dir.join(name))).await.expect("open store")
}

fn schema(table: &str, field: &str, search: bool) -> Schema {
    let indexes = if search {
        json!([{"indexDescriptor": "search", "searchField": field, "filterFields": ["group"]}])
    } else {
        json!([])
    };
    Schema::parse(
        &json!({"tables": [{"tableName": table, "indexes": [], "searchIndexes": indexes, "vectorIndexes": []}],
            "schemaValidation": false})
        .to_string(),
    )
    .unwrap()
}

fn report(name: &str, value: String) {
    println!("{name:<64} {value}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// 64 tasks move one unit between random accounts for `secs`, each transfer also rewriting
/// both accounts' memo (a short text): commits per second.
async fn transfers(store: &Arc<Store>, ids: &Arc<Vec<DocumentId>>, secs: f64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let (store, ids, stop, count) = (store.clone(), ids.clone(), stop.clone(), count.clone());
            tokio::spawn(async move {
                let mut rng = Rng(w.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
                while !stop.load(Ordering::Relaxed) {
                    let a = ids[(rng.next() % ids.len() as u64) as usize];
                    let b = ids[(rng.next() % ids.len() as u64) as usize];
                    if a == b {
                        continue;
                    }
                    let memo = Value::String(text(&mut rng, 12));
                    loop {
                        let mut tx = store.begin();
                        let result = async {
                            for (id, delta) in [(a, -1), (b, 1)] {
                                let doc = tx.get(id).await?.expect("account");
                                let Value::Int64(balance) = doc.value["balance"] else { panic!("balance") };
                                let patch = [
                                    ("balance".to_owned(), Some(Value::Int64(balance + delta))),
                                    ("memo".to_owned(), Some(memo.clone())),
                                ];
                                tx.patch(id, patch.into()).await?;
                            }
                            tx.commit().await
                        }
                        .await;
                        match result {
                            Ok(_) => break,
                            Err(e) if e.is_retryable() => {
                                if let Some(ts) = e.retry_after() {
                                    store.wait_for(ts).await;
                                }
                            }
                            Err(e) => panic!("transfer: {e}"),
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn search(text: &str, limit: usize) -> Query {
    Query::from_json(&json!({
        "source": {"type": "Search", "indexName": "articles.search",
                   "filters": [{"type": "Search", "fieldPath": "body", "value": text}]},
        "operators": [{"limit": limit}]
    }))
    .unwrap()
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let quick = argv.iter().any(|a| a == "--quick");
    let docs: usize = argv
        .iter()
        .position(|a| a == "--docs")
        .and_then(|i| argv.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 20_000 } else { 100_000 });
    let secs = if quick { 1.0 } else { 3.0 };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::Builder::new().prefix("kiln-search-bench").tempdir().unwrap();
    println!("kiln-store search benchmark: {docs} documents of ~200 words, 2 worker threads");
    rt.block_on(async {
        // Transfers without, then with, a search index on the memo they write.
        let store = Arc::new(open(dir.path(), "transfers").await);
        store.set_schema(&schema("accounts", "memo", false)).await.unwrap();
        let mut ids = Vec::new();
        let mut tx = store.begin();
        let mut rng = Rng(7);
        for i in 0..10_000i64 {
            let doc: Object = [
                ("balance".to_owned(), Value::Int64(1_000_000)),
                ("group".to_owned(), Value::Int64(i % 16)),
                ("memo".to_owned(), Value::String(text(&mut rng, 12))),
            ]
            .into_iter()
            .collect();
            ids.push(tx.insert("accounts", doc).await.unwrap());
        }
        tx.commit().await.unwrap();
        let ids = Arc::new(ids);
        let without = transfers(&store, &ids, secs).await;
        report("transfer commits/s, no search index (64 tasks)", format!("{without:.0}"));
        store.set_schema(&schema("accounts", "memo", true)).await.unwrap();
        let with = transfers(&store, &ids, secs).await;
        report("transfer commits/s, search index on the written memo", format!("{with:.0}"));
        Arc::try_unwrap(store).ok().unwrap().close().await;

        // The corpus, then the index built over it.
        let store = Arc::new(open(dir.path(), "articles").await);
        let t = Instant::now();
        let mut rng = Rng(42);
        for batch in (0..docs).step_by(500) {
            let mut tx = store.begin();
            for i in batch..(batch + 500).min(docs) {
                let words = 150 + (rng.next() % 100) as usize;
                let doc: Object = [
                    ("body".to_owned(), Value::String(text(&mut rng, words))),
                    ("group".to_owned(), Value::Int64((i % 16) as i64)),
                ]
                .into_iter()
                .collect();
                tx.insert("articles", doc).await.unwrap();
            }
            tx.commit().await.unwrap();
        }
        report(&format!("load {docs} documents (500 per commit)"), format!("{:.1} s", t.elapsed().as_secs_f64()));
        let t = Instant::now();
        store.set_schema(&schema("articles", "body", true)).await.unwrap();
        report("search index build (deploy until ready)", format!("{:.1} s", t.elapsed().as_secs_f64()));
        let stats = store.stats();
        report("search index size on disk", format!("{:.1} MiB", stats.search_disk_bytes as f64 / 1048576.0));

        // Queries of 1-3 words (the last a prefix), first 10 results.
        let mut rng = Rng(99);
        let queries: Vec<String> = (0..2_000)
            .map(|_| {
                let n = 1 + (rng.next() % 3) as usize;
                (0..n).map(|_| word(rng.rank())).collect::<Vec<_>>().join(" ")
            })
            .collect();
        let mut latencies = Vec::with_capacity(queries.len());
        let t = Instant::now();
        for q in &queries {
            let started = Instant::now();
            let mut tx = store.begin_read_only();
            let found = tx.collect(search(q, 10)).await.unwrap();
            std::hint::black_box(found);
            latencies.push(started.elapsed());
        }
        let serial = queries.len() as f64 / t.elapsed().as_secs_f64();
        latencies.sort();
        report(
            "text query latency, take(10), p50 / p99",
            format!(
                "{:.2} / {:.2} ms",
                percentile(&latencies, 0.5).as_secs_f64() * 1e3,
                percentile(&latencies, 0.99).as_secs_f64() * 1e3
            ),
        );
        report("text queries/s, 1 task", format!("{serial:.0}"));
        let queries = Arc::new(queries);
        let t = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|k| {
                let (store, queries) = (store.clone(), queries.clone());
                tokio::spawn(async move {
                    for q in queries.iter().skip(k).step_by(4) {
                        let mut tx = store.begin_read_only();
                        std::hint::black_box(tx.collect(search(q, 10)).await.unwrap());
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        report("text queries/s, 4 tasks", format!("{:.0}", queries.len() as f64 / t.elapsed().as_secs_f64()));
        Arc::try_unwrap(store).ok().unwrap().close().await;
    });
}
