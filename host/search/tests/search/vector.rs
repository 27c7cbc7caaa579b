//! The vector index against exact brute force: recall, filters, updates, persistence and
//! Convex's query limits.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use kiln_search::{DocVector, VectorConfig, VectorIndex, VectorIndexDef, VectorQuery, similarity};
use kiln_value::{InternalId, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

fn def(dimensions: usize) -> VectorIndexDef {
    VectorIndexDef { vector_field: "embedding".into(), dimensions, filter_fields: vec!["genre".into()] }
}

fn vid(n: u32) -> InternalId {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&n.to_be_bytes());
    InternalId(b)
}

fn random_vector(rng: &mut StdRng, dims: usize) -> Vec<f64> {
    (0..dims).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn doc(def: &VectorIndexDef, v: &[f64], genre: Option<&str>) -> Arc<DocVector> {
    let field = Value::Array(v.iter().map(|x| Value::Float64(*x)).collect());
    let genre = genre.map(|g| Value::String(g.into()));
    Arc::new(DocVector::new(def, Some(&field), &[genre.as_ref()]).expect("a valid vector"))
}

fn eq(genre: &str) -> serde_json::Value {
    json!({"$eq": [{"$field": "genre"}, {"$literal": genre}]})
}

/// The exact answer: every admitted document scored, best first.
fn brute_force(docs: &HashMap<InternalId, Arc<DocVector>>, q: &VectorQuery) -> Vec<(f32, InternalId)> {
    let mut all: Vec<(f32, InternalId)> =
        docs.iter().filter(|(_, d)| q.admits(d)).map(|(id, d)| (similarity(&q.vector, &d.vector), *id)).collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    all.truncate(q.limit);
    all
}

fn recall(index: &VectorIndex, docs: &HashMap<InternalId, Arc<DocVector>>, queries: &[VectorQuery]) -> f64 {
    let (mut found, mut wanted) = (0usize, 0usize);
    for q in queries {
        let exact: HashSet<InternalId> = brute_force(docs, q).into_iter().map(|(_, id)| id).collect();
        let got = index.search(q, &HashSet::new()).unwrap();
        wanted += exact.len();
        found += got.iter().filter(|h| exact.contains(&h.id)).count();
    }
    if wanted == 0 { 1.0 } else { found as f64 / wanted as f64 }
}

#[test]
fn recall_at_10_on_10k_random_128_dimension_vectors_is_at_least_0_95() {
    let def = def(128);
    let mut rng = StdRng::seed_from_u64(7);
    let index = VectorIndex::create(None, def.clone(), &VectorConfig::default()).unwrap();
    let mut docs = HashMap::new();
    let changes: Vec<(InternalId, Option<Arc<DocVector>>)> = (0..10_000)
        .map(|n| {
            let d = doc(&def, &random_vector(&mut rng, 128), None);
            docs.insert(vid(n), d.clone());
            (vid(n), Some(d))
        })
        .collect();
    index.apply(&changes, 1).unwrap();
    let queries: Vec<VectorQuery> =
        (0..200).map(|_| VectorQuery::parse(&def, &random_vector(&mut rng, 128), Some(10), None).unwrap()).collect();
    let r = recall(&index, &docs, &queries);
    assert!(r >= 0.95, "recall@10 = {r}");
    // Scores are cosine similarities, best first.
    let hits = index.search(&queries[0], &HashSet::new()).unwrap();
    assert_eq!(hits.len(), 10);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let exact = brute_force(&docs, &queries[0]);
    assert!((hits[0].score - exact[0].0).abs() < 1e-4);
}

#[test]
fn filters_never_return_a_document_outside_them() {
    let def = def(16);
    let mut rng = StdRng::seed_from_u64(11);
    let index = VectorIndex::create(None, def.clone(), &VectorConfig::default()).unwrap();
    // "pop" holds half the documents (searched through the graph), the rest are spread thin
    // (answered exactly), some have no genre at all.
    let genres = ["pop", "jazz", "folk", "metal", "blues"];
    let mut docs = HashMap::new();
    let mut genre_of = HashMap::new();
    let mut changes = Vec::new();
    for n in 0..6_000 {
        let genre = match rng.gen_range(0..10) {
            0..=4 => Some("pop"),
            9 => None,
            _ => Some(genres[rng.gen_range(1..genres.len())]),
        };
        let d = doc(&def, &random_vector(&mut rng, 16), genre);
        docs.insert(vid(n), d.clone());
        genre_of.insert(vid(n), genre);
        changes.push((vid(n), Some(d)));
    }
    index.apply(&changes, 1).unwrap();
    let filters = [
        eq("pop"),
        eq("jazz"),
        json!({"$or": [eq("jazz"), eq("folk")]}),
        json!({"$or": [eq("pop"), eq("metal")]}),
        json!({"$eq": [{"$field": "genre"}, {"$literal": null}]}),
        eq("absent"),
    ];
    let allowed: [&[&str]; 6] = [&["pop"], &["jazz"], &["jazz", "folk"], &["pop", "metal"], &[], &[]];
    for (filter, allowed) in filters.iter().zip(allowed) {
        let queries: Vec<VectorQuery> = (0..30)
            .map(|_| VectorQuery::parse(&def, &random_vector(&mut rng, 16), Some(25), Some(filter)).unwrap())
            .collect();
        for q in &queries {
            for hit in index.search(q, &HashSet::new()).unwrap() {
                let genre = genre_of[&hit.id];
                assert!(genre.is_some_and(|g| allowed.contains(&g)), "{genre:?} leaked through {filter}");
            }
        }
        let r = recall(&index, &docs, &queries);
        assert!(r >= 0.9, "recall {r} with filter {filter}");
    }
    // `null` is a value, not an absent field: no document has genre null.
    let q = VectorQuery::parse(&def, &random_vector(&mut rng, 16), None, Some(&filters[4])).unwrap();
    assert!(index.search(&q, &HashSet::new()).unwrap().is_empty());
}

#[test]
fn updates_and_deletions_replace_entries_and_skipped_documents_are_left_out() {
    let def = def(4);
    let index = VectorIndex::create(None, def.clone(), &VectorConfig::default()).unwrap();
    let x = doc(&def, &[1.0, 0.0, 0.0, 0.0], Some("a"));
    let y = doc(&def, &[0.0, 1.0, 0.0, 0.0], Some("a"));
    index.apply(&[(vid(1), Some(x.clone())), (vid(2), Some(y.clone()))], 5).unwrap();
    let q = VectorQuery::parse(&def, &[2.0, 0.1, 0.0, 0.0], Some(1), None).unwrap();
    assert_eq!(index.search(&q, &HashSet::new()).unwrap()[0].id, vid(1));
    // Document 1 moves away, document 2 takes its place.
    index.apply(&[(vid(1), Some(doc(&def, &[0.0, 0.0, 1.0, 0.0], None))), (vid(2), Some(x.clone()))], 6).unwrap();
    assert_eq!(index.search(&q, &HashSet::new()).unwrap()[0].id, vid(2));
    assert_eq!(index.len(), 2);
    index.apply(&[(vid(2), None)], 7).unwrap();
    let all = VectorQuery::parse(&def, &[2.0, 0.1, 0.0, 0.0], Some(10), None).unwrap();
    let hits: Vec<InternalId> = index.search(&all, &HashSet::new()).unwrap().into_iter().map(|h| h.id).collect();
    assert_eq!(hits, [vid(1)]);
    assert_eq!(index.indexed_ts(), 7);
    assert!(index.search(&all, &HashSet::from([vid(1)])).unwrap().is_empty());
}

#[test]
fn a_saved_index_reopens_with_the_same_answers_and_the_commit_it_covers() {
    let dir = tempfile::tempdir().unwrap();
    let def = def(32);
    let mut rng = StdRng::seed_from_u64(3);
    let index = VectorIndex::create(Some(dir.path()), def.clone(), &VectorConfig::default()).unwrap();
    let changes: Vec<_> = (0..500)
        .map(|n| (vid(n), Some(doc(&def, &random_vector(&mut rng, 32), Some(if n % 2 == 0 { "a" } else { "b" })))))
        .collect();
    index.apply(&changes, 42).unwrap();
    assert_eq!(index.saved_ts(), 0);
    index.save().unwrap();
    assert_eq!(index.saved_ts(), 42);
    assert!(index.disk_bytes() > 500 * 32 * 4);
    let queries: Vec<VectorQuery> = (0..20)
        .map(|i| {
            let filter = (i % 2 == 0).then(|| eq("b"));
            VectorQuery::parse(&def, &random_vector(&mut rng, 32), Some(10), filter.as_ref()).unwrap()
        })
        .collect();
    let before: Vec<_> = queries.iter().map(|q| index.search(q, &HashSet::new()).unwrap()).collect();
    drop(index);
    let reopened = VectorIndex::open(dir.path(), def.clone(), &VectorConfig::default()).unwrap();
    assert_eq!((reopened.indexed_ts(), reopened.saved_ts(), reopened.len()), (42, 42, 500));
    let after: Vec<_> = queries.iter().map(|q| reopened.search(q, &HashSet::new()).unwrap()).collect();
    assert_eq!(before, after);
    // New documents after reopening get fresh keys and are found.
    let v = random_vector(&mut rng, 32);
    reopened.apply(&[(vid(9_999), Some(doc(&def, &v, None)))], 43).unwrap();
    let q = VectorQuery::parse(&def, &v, Some(1), None).unwrap();
    assert_eq!(reopened.search(&q, &HashSet::new()).unwrap()[0].id, vid(9_999));
    // Another definition refuses the file rather than misreading it.
    assert!(
        VectorIndex::open(dir.path(), VectorIndexDef { dimensions: 16, ..def.clone() }, &VectorConfig::default())
            .is_err()
    );
    std::fs::write(dir.path().join("vectors.bin"), b"KILNVEC1 truncated").unwrap();
    assert!(VectorIndex::open(dir.path(), def, &VectorConfig::default()).is_err());
}

#[test]
fn queries_outside_convex_limits_are_refused_with_codes() {
    let def = def(3);
    let v = [1.0, 2.0, 3.0];
    let err = |r: kiln_search::Result<VectorQuery>| r.unwrap_err();
    assert_eq!(err(VectorQuery::parse(&def, &[1.0, 2.0], None, None)).code(), "InvalidSearchQuery");
    assert_eq!(err(VectorQuery::parse(&def, &[1.0, f64::NAN, 2.0], None, None)).code(), "InvalidSearchQuery");
    assert_eq!(VectorQuery::parse(&def, &v, None, None).unwrap().limit, 10);
    assert_eq!(VectorQuery::parse(&def, &v, Some(256), None).unwrap().limit, 256);
    for bad in [0, 257] {
        assert!(err(VectorQuery::parse(&def, &v, Some(bad), None)).to_string().contains("between 1 and 256"));
    }
    let unknown = json!({"$eq": [{"$field": "title"}, {"$literal": "x"}]});
    assert!(err(VectorQuery::parse(&def, &v, None, Some(&unknown))).to_string().contains("not a filter field"));
    let nested = json!({"$or": [{"$or": [eq("a")]}]});
    assert_eq!(err(VectorQuery::parse(&def, &v, None, Some(&nested))).code(), "InvalidSearchQuery");
    let many = json!({"$or": (0..65).map(|i| eq(&i.to_string())).collect::<Vec<_>>()});
    assert_eq!(err(VectorQuery::parse(&def, &v, None, Some(&many))).code(), "SearchQueryTooManyFilters");
    // Documents whose field is not a vector of the index's size are not indexed.
    let short = Value::Array(vec![Value::Float64(1.0)]);
    let ints = Value::Array(vec![Value::Int64(1), Value::Int64(2), Value::Int64(3)]);
    for field in [Some(&short), Some(&ints), Some(&Value::String("x".into())), None] {
        assert!(DocVector::new(&def, field, &[None]).is_none());
    }
}
