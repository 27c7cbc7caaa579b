//! The text index against a plain reference model: tokenize, match any term (the last also as
//! a prefix), apply equality filters, score by BM25 — over random corpora, updates and
//! deletions, through a real tantivy index on disk.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use std::sync::Arc;

use kiln_search::{DocTerms, SearchIndexDef, TextIndex, TextQuery};
use kiln_value::{InternalId, Value};
use proptest::prelude::*;

#[path = "search/vector.rs"]
mod vector;

const WORDS: [&str; 12] =
    ["apple", "apply", "ape", "banana", "band", "bandit", "cat", "car", "cart", "dog", "do", "eel"];

fn def() -> SearchIndexDef {
    SearchIndexDef { search_field: "body".into(), filter_fields: vec!["channel".into()] }
}

fn id(n: u8) -> InternalId {
    InternalId([n; 16])
}

/// The reference: a document as its terms and its channel.
#[derive(Clone, Debug)]
struct Doc {
    terms: Vec<String>,
    channel: i64,
}

fn doc_strategy() -> impl Strategy<Value = (Vec<usize>, i64)> {
    (prop::collection::vec(0..WORDS.len(), 0..12), 0..3i64)
}

fn text_of(words: &[usize]) -> String {
    // Case and punctuation go through the tokenizer like any text.
    words
        .iter()
        .enumerate()
        .map(|(i, w)| if i % 3 == 0 { WORDS[*w].to_uppercase() } else { WORDS[*w].to_owned() })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A document's channel: channel 0 stands for a document without the field.
fn channel_value(channel: i64) -> Option<Value> {
    (channel != 0).then_some(Value::Int64(channel))
}

fn entry(words: &[usize], channel: i64) -> Arc<DocTerms> {
    Arc::new(DocTerms::new(&text_of(words), &[channel_value(channel).as_ref()]))
}

fn matches(doc: &Doc, query: &TextQuery) -> bool {
    let Some((last, exact)) = query.terms.split_last() else { return false };
    let filtered = query.filters.iter().all(|(_, v)| *v == channel_value(doc.channel));
    filtered && doc.terms.iter().any(|t| exact.contains(t) || t.starts_with(last.as_str()))
}

/// BM25 as tantivy computes it (k1 = 1.2, b = 0.75), the prefix term expanded to every term
/// of the corpus it begins (and itself).
fn bm25(docs: &BTreeMap<u8, Doc>, doc: &Doc, query: &TextQuery) -> f32 {
    let n = docs.len() as f32;
    let total: usize = docs.values().map(|d| d.terms.len()).sum();
    let avg = total as f32 / n;
    let score_term = |term: &str| -> f32 {
        let df = docs.values().filter(|d| d.terms.iter().any(|t| t == term)).count() as f32;
        let tf = doc.terms.iter().filter(|t| *t == term).count() as f32;
        if tf == 0.0 {
            return 0.0;
        }
        let idf = (1.0 + (n - df + 0.5) / (df + 0.5)).ln();
        let norm = 1.2 * (1.0 - 0.75 + 0.75 * doc.terms.len() as f32 / avg);
        idf * tf * 2.2 / (tf + norm)
    };
    let Some((last, exact)) = query.terms.split_last() else { return 0.0 };
    // An exact term under the prefix counts once, with the expansions.
    let mut score: f32 = exact.iter().filter(|t| !t.starts_with(last.as_str())).map(|t| score_term(t)).sum();
    let mut expansions: Vec<&String> =
        docs.values().flat_map(|d| d.terms.iter()).filter(|t| t.starts_with(last.as_str())).collect();
    expansions.sort();
    expansions.dedup();
    score += expansions.iter().map(|t| score_term(t)).sum::<f32>();
    score
}

fn query(words: &[usize], channel: Option<i64>) -> TextQuery {
    let mut filters = vec![
        serde_json::json!({"type": "Search", "fieldPath": "body", "value": words.iter().map(|w| WORDS[*w]).collect::<Vec<_>>().join(" ")}),
    ];
    if let Some(c) = channel {
        // `.eq("channel", undefined)` for channel 0: documents without the field.
        let value = match c {
            0 => serde_json::json!({"$undefined": null}),
            c => serde_json::json!({"$integer": kiln_value::json::base64_encode(&c.to_le_bytes())}),
        };
        filters.push(serde_json::json!({"type": "Eq", "fieldPath": "channel", "value": value}));
    }

    TextQuery::parse(&def(), &serde_json::Value::Array(filters)).unwrap()
}

fn query_strategy() -> impl Strategy<Value = (Vec<usize>, Option<i64>, usize)> {
    // The last word may be cut short: it is searched as a prefix.
    (prop::collection::vec(0..WORDS.len(), 1..4), prop::option::of(0..3i64), 1..5usize)
}

fn prefix_query((words, channel, cut): &(Vec<usize>, Option<i64>, usize)) -> TextQuery {
    let mut q = query(words, *channel);
    if let Some(last) = q.terms.last_mut() {
        let keep = (*cut).min(last.len());
        last.truncate(keep);
    }
    q
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Updates and deletions, committed in batches: every query finds exactly the documents
    /// the reference finds.
    #[test]
    fn matches_agree_with_the_reference(
        batches in prop::collection::vec(prop::collection::vec((0..20u8, prop::option::of(doc_strategy())), 1..12), 1..5),
        queries in prop::collection::vec(query_strategy(), 1..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut index = TextIndex::open(dir.path(), def()).unwrap();
        let mut model: BTreeMap<u8, Doc> = BTreeMap::new();
        for (ts, batch) in batches.iter().enumerate() {
            let mut changes = Vec::new();
            for (n, change) in batch {
                match change {
                    Some((words, channel)) => {
                        let e = entry(words, *channel);
                        model.insert(*n, Doc { terms: kiln_search::analyzer::terms(&e.text), channel: *channel });
                        changes.push((id(*n), Some(e)));
                    }
                    None => {
                        model.remove(n);
                        changes.push((id(*n), None));
                    }
                }
            }
            // Several changes of one document in a batch: its last one counts.
            let mut last: BTreeMap<u8, usize> = BTreeMap::new();
            for (i, (n, _)) in batch.iter().enumerate() {
                last.insert(*n, i);
            }
            let changes: Vec<_> = changes.into_iter().enumerate().filter(|(i, (d, _))| last.get(&d.0[0]) == Some(i)).map(|(_, c)| c).collect();
            index.apply(&changes, ts as u64 + 1).unwrap();
        }
        prop_assert_eq!(index.indexed_ts(), batches.len() as u64);
        for q in &queries {
            let q = prefix_query(q);
            let mut found: Vec<u8> = index.search(&q, 1024).unwrap().iter().map(|h| h.id.0[0]).collect();
            found.sort_unstable();
            let expected: Vec<u8> = model.iter().filter(|(_, d)| matches(d, &q)).map(|(n, _)| *n).collect();
            prop_assert_eq!(found, expected, "query {:?}", q);
        }
        // Reopened from disk: the same documents and the same timestamp.
        drop(index);
        let index = TextIndex::open(dir.path(), def()).unwrap();
        prop_assert_eq!(index.len(), model.len() as u64);
        prop_assert_eq!(index.indexed_ts(), batches.len() as u64);
    }

    /// Inserts only (tantivy's statistics count deleted documents until segments merge): the
    /// scores are the reference's BM25 and the order follows them.
    #[test]
    fn scores_agree_with_reference_bm25(
        docs in prop::collection::vec(doc_strategy(), 1..20),
        queries in prop::collection::vec(query_strategy(), 1..8),
    ) {
        let mut index = TextIndex::in_memory(def()).unwrap();
        let mut model: BTreeMap<u8, Doc> = BTreeMap::new();
        let mut changes = Vec::new();
        for (n, (words, channel)) in docs.iter().enumerate() {
            let e = entry(words, *channel);
            model.insert(n as u8, Doc { terms: kiln_search::analyzer::terms(&e.text), channel: *channel });
            changes.push((id(n as u8), Some(e)));
        }
        index.apply(&changes, 1).unwrap();
        let snapshot = index.snapshot();
        for q in &queries {
            let q = prefix_query(q);
            let hits = index.search(&q, 1024).unwrap();
            // Documents scored outside the index (the store's recent writes) get the same score.
            let mut scorer = snapshot.search(&q, &[]).unwrap();
            for hit in &hits {
                let terms = changes[hit.id.0[0] as usize].1.as_ref().unwrap();
                let outside = scorer.score(terms).unwrap();
                prop_assert!((outside - hit.score).abs() <= 1e-4 * hit.score.max(1.0), "{} vs {}", outside, hit.score);
            }
            for pair in hits.windows(2) {
                prop_assert!(pair[0].score >= pair[1].score, "descending scores");
            }
            for hit in &hits {
                let expected = bm25(&model, &model[&hit.id.0[0]], &q);
                prop_assert!((hit.score - expected).abs() <= 0.02 * expected.max(0.1), "doc {}: {} vs {} for {:?}", hit.id.0[0], hit.score, expected, q);
            }
        }
    }
}

#[test]
fn an_index_of_another_shape_is_refused_and_a_missing_one_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut index = TextIndex::open(dir.path(), def()).unwrap();
    assert_eq!(index.indexed_ts(), 0, "a new index covers nothing");
    index.apply(&[(id(1), Some(entry(&[0, 6], 1)))], 7).unwrap();
    drop(index);
    let other = SearchIndexDef { search_field: "body".into(), filter_fields: vec![] };
    assert_eq!(TextIndex::open(dir.path(), other).unwrap_err().code(), "SearchIndexFailed");
    let index = TextIndex::open(dir.path(), def()).unwrap();
    assert_eq!(index.indexed_ts(), 7);
    let hits = index.search(&query(&[6], None), 10).unwrap();
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), [id(1)]);
}
