//! The vector benchmark: HNSW indexes of 100,000 384-dimension vectors, uniformly random and
//! embedding-like (build time,
//! memory, saved size, recall@10 against brute force, queries/s from one and two threads, p50
//! and p99 latency).
//!
//! `cargo bench -p kiln-search --bench vector` (`-- --quick` for 20,000 vectors; `--docs N`,
//! `--dims D`, `--data random|embedding`, `--connectivity M`, `--ef-add N`, `--ef-search N`,
//! `--ef-sweep N,N,…` (one build searched with each), `--add-threads N` to explore).

// A benchmark aborts on the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_search::{DocVector, VectorConfig, VectorIndex, VectorIndexDef, VectorQuery, similarity};
use kiln_value::{InternalId, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn arg(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

/// Uniformly random vectors (no neighbourhood structure: the hardest case for a graph index),
/// or embedding-like ones: a random linear image of a 24-dimension latent, plus noise (text
/// embeddings have a low intrinsic dimension).
enum Data {
    Random,
    Embedding(Vec<Vec<f64>>),
}

impl Data {
    fn vector(&self, rng: &mut StdRng, dims: usize) -> Vec<f64> {
        match self {
            Data::Random => (0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect(),
            Data::Embedding(basis) => {
                let latent: Vec<f64> = basis.iter().map(|_| rng.gen_range(-1.0..1.0)).collect();
                (0..dims)
                    .map(|d| {
                        let x: f64 = basis.iter().zip(&latent).map(|(b, z)| b[d] * z).sum();
                        x + 0.05 * rng.gen_range(-1.0..1.0)
                    })
                    .collect()
            }
        }
    }
}

fn id(n: usize) -> InternalId {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(n as u64).to_be_bytes());
    InternalId(b)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let mut rng = StdRng::seed_from_u64(1);
    let dims = arg("--dims").unwrap_or(384);
    let basis: Vec<Vec<f64>> = (0..24).map(|_| (0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect();
    let only = std::env::args().position(|a| a == "--data").and_then(|i| std::env::args().nth(i + 1));
    for (name, data) in [("random", Data::Random), ("embedding-like", Data::Embedding(basis))] {
        if only.as_deref().is_none_or(|o| name.starts_with(o)) {
            run(name, &data, dims, &mut rng);
        }
    }
}

fn run(name: &str, data: &Data, dims: usize, rng: &mut StdRng) {
    let quick = std::env::args().any(|a| a == "--quick");
    let docs = arg("--docs").unwrap_or(if quick { 20_000 } else { 100_000 });
    let d = VectorConfig::default();
    let config = VectorConfig {
        connectivity: arg("--connectivity").unwrap_or(d.connectivity),
        expansion_add: arg("--ef-add").unwrap_or(d.expansion_add),
        expansion_search: arg("--ef-search").unwrap_or(d.expansion_search),
        add_threads: arg("--add-threads").unwrap_or(d.add_threads),
    };
    println!("vector index: {docs} {name} vectors of {dims} dimensions, {config:?}");
    let def = VectorIndexDef { vector_field: "embedding".into(), dimensions: dims, filter_fields: Vec::new() };
    let entries: Vec<Arc<DocVector>> = (0..docs)
        .map(|_| {
            let field = Value::Array(data.vector(rng, dims).into_iter().map(Value::Float64).collect());
            Arc::new(DocVector::new(&def, Some(&field), &[]).unwrap())
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let index = VectorIndex::create(Some(dir.path()), def.clone(), &config).unwrap();
    let started = Instant::now();
    for (i, chunk) in entries.chunks(1000).enumerate() {
        let changes: Vec<_> = chunk.iter().enumerate().map(|(j, e)| (id(i * 1000 + j), Some(e.clone()))).collect();
        index.apply(&changes, 0).unwrap();
    }
    index.apply(&[], 1).unwrap();
    let build = started.elapsed();
    let started = Instant::now();
    index.save().unwrap();
    let save = started.elapsed();
    println!(
        "  build {:.1} s ({:.0} vectors/s), memory {:.1} MiB, saved {:.1} MiB in {:.2} s",
        build.as_secs_f64(),
        docs as f64 / build.as_secs_f64(),
        index.memory_bytes() as f64 / 1048576.0,
        index.disk_bytes() as f64 / 1048576.0,
        save.as_secs_f64()
    );
    let started = Instant::now();
    let reopened = VectorIndex::open(dir.path(), def.clone(), &config).unwrap();
    println!("  reopened in {:.2} s", started.elapsed().as_secs_f64());
    drop(reopened);
    drop(index);

    let queries: Vec<VectorQuery> =
        (0..400).map(|_| VectorQuery::parse(&def, &data.vector(rng, dims), Some(10), None).unwrap()).collect();
    // The same graph searched with each candidate-list size (`--ef-sweep 64,128,…`).
    let sweep: Vec<usize> = std::env::args()
        .position(|a| a == "--ef-sweep")
        .and_then(|i| std::env::args().nth(i + 1))
        .map(|list| list.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![config.expansion_search]);
    for ef in sweep {
        let config = VectorConfig { expansion_search: ef, ..config };
        let index = VectorIndex::open(dir.path(), def.clone(), &config).unwrap();
        println!("  expansion_search {ef}:");
        measure(&index, &queries, &entries, quick);
    }
}

fn measure(index: &VectorIndex, queries: &[VectorQuery], entries: &[Arc<DocVector>], quick: bool) {
    let (mut found, mut wanted) = (0usize, 0usize);
    for q in queries.iter().take(200) {
        let mut exact: Vec<(f32, usize)> =
            entries.iter().enumerate().map(|(i, e)| (similarity(&q.vector, &e.vector), i)).collect();
        exact.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
        let exact: HashSet<InternalId> = exact[..10].iter().map(|(_, i)| id(*i)).collect();
        let got = index.search(q, &HashSet::new()).unwrap();
        wanted += 10;
        found += got.iter().filter(|h| exact.contains(&h.id)).count();
    }
    println!("    recall@10 {:.3} (200 queries against brute force)", found as f64 / wanted as f64);

    for threads in [1usize, 2] {
        let rounds = if quick { 2_000 } else { 4_000 };
        let started = Instant::now();
        let latencies: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let (index, queries) = (index, queries);
                    s.spawn(move || {
                        (0..rounds / threads)
                            .map(|i| {
                                let q = &queries[(i * threads + t) % queries.len()];
                                let at = Instant::now();
                                index.search(q, &HashSet::new()).unwrap();
                                at.elapsed()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let mut sorted = latencies;
        sorted.sort();
        println!(
            "    {threads} thread(s): {:.0} queries/s, p50 {:.3} ms, p99 {:.3} ms",
            sorted.len() as f64 / elapsed,
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99)
        );
    }
}
