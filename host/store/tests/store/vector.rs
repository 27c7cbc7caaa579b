//! Vector search through the store: built on deploy from the documents, every published
//! commit seen (in memory before a merge, in the graph after), equal to brute force on small
//! tables, resumed after a clean restart, refused queries with codes, the memory budget.

use std::collections::BTreeMap;

use kiln_store::query::Query;
use kiln_store::{Schema, StoreConfig};
use kiln_value::DocumentId;
use serde_json::{Value as Json, json};

use crate::{config, obj, open};

const DIMS: usize = 8;

fn schema(dimensions: u64) -> Schema {
    Schema::parse(&schema_json(dimensions)).unwrap()
}

fn schema_json(dimensions: u64) -> String {
    json!({"tables": [{"tableName": "items", "indexes": [],
            "searchIndexes": [{"indexDescriptor": "search_name", "searchField": "name", "filterFields": []}],
            "vectorIndexes": [{"indexDescriptor": "by_embedding", "vectorField": "embedding",
                "dimensions": dimensions, "filterFields": ["kind"]}]}], "schemaValidation": false})
    .to_string()
}

fn vector_config(dir: &std::path::Path) -> StoreConfig {
    StoreConfig {
        search_dir: Some(dir.join("search")),
        search_merge_interval: std::time::Duration::from_secs(3600),
        ..config()
    }
}

/// A xorshift vector of `DIMS` numbers from a seed.
fn vector(seed: u64) -> Vec<f64> {
    pseudo_vector(seed, DIMS)
}

/// A xorshift vector of `dims` numbers in -0.5..0.5 from a seed.
pub fn pseudo_vector(seed: u64, dims: usize) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..dims)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
        })
        .collect()
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn kind_is(kinds: &[&str]) -> Json {
    let eqs: Vec<Json> = kinds.iter().map(|k| json!({"$eq": [{"$field": "kind"}, {"$literal": k}]})).collect();
    json!({ "$or": eqs })
}

/// The reference: id → (vector, kind).
type Model = BTreeMap<DocumentId, (Vec<f64>, String)>;

fn brute_force(model: &Model, q: &[f64], limit: usize, kinds: Option<&[&str]>) -> Vec<DocumentId> {
    let mut all: Vec<(f64, DocumentId)> = model
        .iter()
        .filter(|(_, (_, k))| kinds.is_none_or(|ks| ks.contains(&k.as_str())))
        .map(|(id, (v, _))| (cosine(q, v), *id))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.into_iter().take(limit).map(|(_, id)| id).collect()
}

async fn check(store: &kiln_store::Store, model: &Model, what: &str) {
    for seed in 1000..1020u64 {
        let q = vector(seed);
        let kinds: Option<&[&str]> = match seed % 3 {
            0 => None,
            1 => Some(&["a"]),
            _ => Some(&["b", "c"]),
        };
        let filter = kinds.map(kind_is);
        let hits = store.vector_search("items", "by_embedding", &q, Some(15), filter.as_ref()).await.unwrap();
        let got: Vec<DocumentId> = hits.iter().map(|(_, id)| *id).collect();
        assert_eq!(got, brute_force(model, &q, 15, kinds), "{what}: query {seed}");
        for (score, id) in &hits {
            assert!((f64::from(*score) - cosine(&q, &model[id].0)).abs() < 1e-4, "{what}: the score is the cosine");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_search_sees_every_commit_and_agrees_with_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let mut model = Model::new();
    {
        let store = open(dir.path(), vector_config(dir.path())).await;
        // Documents written before the index exists are found through its build.
        let (ids, _) = retry!(store, |tx| {
            let mut ids = Vec::new();
            for n in 0..120u64 {
                let kind = ["a", "b", "c"][n as usize % 3];
                let o = obj(&json!({"name": format!("item {n}"), "embedding": vector(n), "kind": kind}).to_string());
                ids.push((tx.insert("items", o).await?, n, kind));
            }
            // Not a vector of the index's size, or no vector: not in the index.
            tx.insert("items", obj(&json!({"name": "short", "embedding": [1.0, 2.0], "kind": "a"}).to_string()))
                .await?;
            tx.insert("items", obj(&json!({"name": "none", "kind": "a"}).to_string())).await?;
            Ok(ids)
        });
        for (id, n, kind) in ids {
            model.insert(id, (vector(n), kind.to_owned()));
        }
        store.set_schema(&schema(DIMS as u64)).await.unwrap();
        check(&store, &model, "built").await;

        // Inserts, moves, kind changes and deletions are seen at once (the memory part).
        let victims: Vec<DocumentId> = model.keys().copied().step_by(7).collect();
        let moved: Vec<DocumentId> =
            model.keys().copied().skip(3).step_by(11).filter(|id| !victims.contains(id)).collect();
        let (added, _) = retry!(store, |tx| {
            let mut added = Vec::new();
            for n in 200..260u64 {
                let o = obj(&json!({"name": format!("new {n}"), "embedding": vector(n), "kind": "b"}).to_string());
                added.push((tx.insert("items", o).await?, n));
            }
            for id in &victims {
                tx.delete(*id).await?;
            }
            for (i, id) in moved.iter().enumerate() {
                let set = obj(&json!({"embedding": vector(500 + i as u64), "kind": "c"}).to_string());
                tx.patch(*id, set.into_iter().map(|(k, v)| (k, Some(v))).collect()).await?;
            }
            Ok(added)
        });
        for (id, n) in added {
            model.insert(id, (vector(n), "b".into()));
        }
        for id in &victims {
            model.remove(id);
        }
        for (i, id) in moved.iter().enumerate() {
            if let Some(entry) = model.get_mut(id) {
                *entry = (vector(500 + i as u64), "c".into());
            }
        }
        check(&store, &model, "in memory").await;
        store.flush_search().await;
        check(&store, &model, "merged").await;
        assert!(store.stats().vector_memory_bytes > 0);
        store.close().await;
    }
    // A clean stop saved the graph: the next start serves it without a rebuild.
    let store = open(dir.path(), vector_config(dir.path())).await;
    check(&store, &model, "reopened").await;
    assert_eq!(store.stats().search_builds, 0);
    // Dropping the vector index from the schema drops it; declaring it with other dimensions
    // rebuilds it (and the old vectors no longer fit).
    store.set_schema(&schema(4)).await.unwrap();
    let hits = store.vector_search("items", "by_embedding", &[1.0, 0.0, 0.0, 0.0], Some(10), None).await.unwrap();
    assert!(hits.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vector_queries_outside_the_index_or_the_limits_are_refused_with_codes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), vector_config(dir.path())).await;
    store.set_schema(&schema(DIMS as u64)).await.unwrap();
    let v = vector(1);
    let code = |r: kiln_store::Result<Vec<(f32, DocumentId)>>| r.unwrap_err().code();
    assert_eq!(code(store.vector_search("items", "by_embedding", &v[..3], None, None).await), "InvalidSearchQuery");
    assert_eq!(code(store.vector_search("items", "by_embedding", &v, Some(0), None).await), "InvalidSearchQuery");
    assert_eq!(code(store.vector_search("items", "by_embedding", &v, Some(257), None).await), "InvalidSearchQuery");
    let other = json!({"$eq": [{"$field": "name"}, {"$literal": "x"}]});
    assert_eq!(code(store.vector_search("items", "by_embedding", &v, None, Some(&other)).await), "InvalidSearchQuery");
    assert_eq!(code(store.vector_search("items", "nope", &v, None, None).await), "IndexNotFound");
    assert_eq!(code(store.vector_search("nope", "by_embedding", &v, None, None).await), "IndexNotFound");
    assert_eq!(code(store.vector_search("items", "search_name", &v, None, None).await), "InvalidQuery");
    // A vector index is not a text search index.
    let mut tx = store.begin_read_only();
    let text = Query::from_json(&json!({"source": {"type": "Search", "indexName": "items.by_embedding",
        "filters": [{"type": "Search", "fieldPath": "embedding", "value": "x"}]}, "operators": []}))
    .unwrap();
    assert_eq!(tx.collect(text).await.unwrap_err().code(), "InvalidQuery");
    // Convex's limits on dimensions.
    for bad in [1u64, 4097] {
        let err = Schema::parse(&schema_json(bad)).unwrap_err();
        assert_eq!(err.code(), "InvalidIndex", "{bad} dimensions: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_adding_vectors_past_the_memory_budget_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), StoreConfig { vector_memory_bytes: 1, ..vector_config(dir.path()) }).await;
    store.set_schema(&schema(DIMS as u64)).await.unwrap();
    store.flush_search().await;
    let mut tx = store.begin();
    tx.insert("items", obj(&json!({"name": "x", "embedding": vector(1), "kind": "a"}).to_string())).await.unwrap();
    let err = tx.commit().await.unwrap_err();
    assert_eq!(err.code(), "VectorIndexMemoryExceeded", "{err}");
    // Documents without a vector are still written.
    let (id, _) = retry!(store, |tx| { tx.insert("items", obj(&json!({"name": "plain"}).to_string())).await });
    retry!(store, |tx| { tx.delete(id).await });
}
