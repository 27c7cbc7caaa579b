//! Model-based property test: random transactions against the store and a `BTreeMap` model,
//! with the SQLite file closed and reopened in between.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_store::query::Query;
use kiln_store::{Document, PageRequest, Store, StoreConfig, Transaction};
use kiln_value::{DocumentId, Object, Value, cmp_optional};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;

use crate::{Backend, config};

#[derive(Clone, Debug)]
enum Op {
    Insert { table: u8, tag: Option<i64>, n: i64 },
    Patch { pick: Index, tag: Option<Option<i64>>, n: i64 },
    Replace { pick: Index, tag: Option<i64>, n: i64 },
    Delete { pick: Index },
    Get { pick: Index },
    Scan { table: u8, desc: bool, limit: Option<u8>, min_n: Option<i64> },
    ByTag { tag: Option<i64>, desc: bool },
    TagRange { lo: i64, hi: i64, desc: bool },
    Paginate { table: u8, size: u8, desc: bool },
}

#[derive(Clone, Debug)]
enum Step {
    Txn { ops: Vec<Op>, commit: bool },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let tag = || proptest::option::weighted(0.8, 0i64..4);
    prop_oneof![
        4 => (0u8..2, tag(), 0i64..10).prop_map(|(table, tag, n)| Op::Insert { table, tag, n }),
        2 => (any::<Index>(), proptest::option::of(tag()), 0i64..10).prop_map(|(pick, tag, n)| Op::Patch { pick, tag, n }),
        1 => (any::<Index>(), tag(), 0i64..10).prop_map(|(pick, tag, n)| Op::Replace { pick, tag, n }),
        1 => any::<Index>().prop_map(|pick| Op::Delete { pick }),
        1 => any::<Index>().prop_map(|pick| Op::Get { pick }),
        2 => (0u8..2, any::<bool>(), proptest::option::of(0u8..5), proptest::option::of(0i64..10))
            .prop_map(|(table, desc, limit, min_n)| Op::Scan { table, desc, limit, min_n }),
        2 => (tag(), any::<bool>()).prop_map(|(tag, desc)| Op::ByTag { tag, desc }),
        1 => (0i64..4, 0i64..5, any::<bool>()).prop_map(|(lo, hi, desc)| Op::TagRange { lo, hi, desc }),
        1 => (0u8..2, 1u8..4, any::<bool>()).prop_map(|(table, size, desc)| Op::Paginate { table, size, desc }),
    ]
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let txn = (proptest::collection::vec(op(), 1..8), proptest::bool::weighted(0.85))
        .prop_map(|(ops, commit)| Step::Txn { ops, commit });
    proptest::collection::vec(prop_oneof![6 => txn, 1 => Just(Step::Reopen)], 1..14)
}

/// The model: every document's full value (system fields included), by id.
type Model = BTreeMap<DocumentId, (u8, Object)>;

fn table_name(t: u8) -> &'static str {
    ["t0", "t1"][t as usize]
}

fn fields(tag: Option<i64>, n: i64) -> Object {
    let mut o: Object = [("n".to_string(), Value::Float64(n as f64))].into();
    if let Some(t) = tag {
        o.insert("tag".into(), Value::Int64(t));
    }
    o
}

fn creation(o: &Object) -> f64 {
    match o["_creationTime"] {
        Value::Float64(t) => t,
        _ => panic!("no creation time"),
    }
}

/// Index order: the given field values, then `_creationTime`, then the id.
fn sort(docs: &mut [(DocumentId, Object)], field: Option<&str>, desc: bool) {
    docs.sort_by(|(ia, a), (ib, b)| {
        let by_field = field.map_or(Ordering::Equal, |f| cmp_optional(a.get(f), b.get(f)));
        by_field.then(creation(a).total_cmp(&creation(b))).then(ia.internal.cmp(&ib.internal))
    });
    if desc {
        docs.reverse();
    }
}

fn values(docs: Vec<Arc<Document>>) -> Vec<Object> {
    docs.iter().map(|d| d.value.clone()).collect()
}

fn pick(model: &Model, i: &Index) -> Option<DocumentId> {
    (!model.is_empty()).then(|| *model.keys().nth(i.index(model.len())).unwrap())
}

fn order(desc: bool) -> &'static str {
    if desc { "desc" } else { "asc" }
}

async fn run_op(tx: &mut Transaction, model: &mut Model, op: &Op) {
    match op {
        Op::Insert { table, tag, n } => {
            let id = tx.insert(table_name(*table), fields(*tag, *n)).await.unwrap();
            let doc = tx.get(id).await.unwrap().unwrap();
            model.insert(id, (*table, doc.value.clone()));
        }
        Op::Patch { pick: p, tag, n } => {
            let Some(id) = pick(model, p) else { return };
            let mut patch: kiln_value::Patch = [("n".to_string(), Some(Value::Float64(*n as f64)))].into();
            if let Some(t) = tag {
                patch.insert("tag".into(), t.map(Value::Int64));
            }
            let doc = tx.patch(id, patch.clone()).await.unwrap();
            let entry = model.get_mut(&id).unwrap();
            for (k, v) in patch {
                match v {
                    Some(v) => entry.1.insert(k, v),
                    None => entry.1.remove(&k),
                };
            }
            assert_eq!(doc.value, entry.1);
        }
        Op::Replace { pick: p, tag, n } => {
            let Some(id) = pick(model, p) else { return };
            let doc = tx.replace(id, fields(*tag, *n)).await.unwrap();
            let entry = model.get_mut(&id).unwrap();
            let mut expected = fields(*tag, *n);
            expected.insert("_id".into(), entry.1["_id"].clone());
            expected.insert("_creationTime".into(), entry.1["_creationTime"].clone());
            entry.1 = expected;
            assert_eq!(doc.value, entry.1);
        }
        Op::Delete { pick: p } => {
            let Some(id) = pick(model, p) else { return };
            tx.delete(id).await.unwrap();
            model.remove(&id);
        }
        Op::Get { pick: p } => {
            let Some(id) = pick(model, p) else { return };
            let got = tx.get(id).await.unwrap().map(|d| d.value.clone());
            assert_eq!(got.as_ref(), model.get(&id).map(|(_, o)| o));
        }
        Op::Scan { table, desc, limit, min_n } => {
            let mut ops = Vec::new();
            if let Some(m) = min_n {
                ops.push(json!({"filter": {"$gte": [{"$field": "n"}, {"$literal": *m as f64}]}}));
            }
            if let Some(l) = limit {
                ops.push(json!({"limit": l}));
            }
            let q = Query::from_json(&json!({
                "source": {"type": "FullTableScan", "tableName": table_name(*table), "order": order(*desc)},
                "operators": ops,
            }))
            .unwrap();
            let got = values(tx.collect(q).await.unwrap());
            let mut expected: Vec<_> =
                model.iter().filter(|(_, (t, _))| t == table).map(|(id, (_, o))| (*id, o.clone())).collect();
            sort(&mut expected, None, *desc);
            let expected: Vec<Object> = expected
                .into_iter()
                .map(|(_, o)| o)
                .filter(|o| min_n.is_none_or(|m| o["n"] >= Value::Float64(m as f64)))
                .take(limit.map_or(usize::MAX, usize::from))
                .collect();
            assert_eq!(got, expected, "{op:?}");
        }
        Op::ByTag { tag, desc } => {
            let value = tag.map_or(json!({"$undefined": null}), |t| kiln_value::to_convex_json(&Value::Int64(t)));
            let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "t0.by_tag",
                "range": [{"type": "Eq", "fieldPath": "tag", "value": value}], "order": order(*desc)}}))
            .unwrap();
            let got = values(tx.collect(q).await.unwrap());
            let mut expected: Vec<_> = model
                .iter()
                .filter(|(_, (t, o))| *t == 0 && o.get("tag") == tag.map(Value::Int64).as_ref())
                .map(|(id, (_, o))| (*id, o.clone()))
                .collect();
            sort(&mut expected, None, *desc);
            assert_eq!(got, expected.into_iter().map(|(_, o)| o).collect::<Vec<_>>(), "{op:?}");
        }
        Op::TagRange { lo, hi, desc } => {
            let int = |v: i64| kiln_value::to_convex_json(&Value::Int64(v));
            let q = Query::from_json(&json!({"source": {"type": "IndexRange", "indexName": "t0.by_tag",
                "range": [{"type": "Gte", "fieldPath": "tag", "value": int(*lo)}, {"type": "Lt", "fieldPath": "tag", "value": int(*hi)}],
                "order": order(*desc)}}))
            .unwrap();
            let got = values(tx.collect(q).await.unwrap());
            let mut expected: Vec<_> = model
                .iter()
                .filter(|(_, (t, o))| {
                    *t == 0 && matches!(o.get("tag"), Some(Value::Int64(g)) if (*lo..*hi).contains(g))
                })
                .map(|(id, (_, o))| (*id, o.clone()))
                .collect();
            sort(&mut expected, Some("tag"), *desc);
            assert_eq!(got, expected.into_iter().map(|(_, o)| o).collect::<Vec<_>>(), "{op:?}");
        }
        Op::Paginate { table, size, desc } => {
            let q = Query::from_json(
                &json!({"source": {"type": "FullTableScan", "tableName": table_name(*table), "order": order(*desc)}}),
            )
            .unwrap();
            let mut all = Vec::new();
            let mut cursor = None;
            for _ in 0..1000 {
                let page = tx
                    .query_page(
                        q.clone(),
                        PageRequest { cursor: cursor.take(), page_size: usize::from(*size), ..Default::default() },
                    )
                    .await
                    .unwrap();
                assert!(page.documents.len() <= usize::from(*size));
                all.extend(values(page.documents));
                if page.is_done {
                    break;
                }
                cursor = Some(page.continue_cursor);
            }
            let mut expected: Vec<_> =
                model.iter().filter(|(_, (t, _))| t == table).map(|(id, (_, o))| (*id, o.clone())).collect();
            sort(&mut expected, None, *desc);
            assert_eq!(all, expected.into_iter().map(|(_, o)| o).collect::<Vec<_>>(), "{op:?}");
        }
    }
}

async fn run_case(steps: Vec<Step>, cache_bytes: usize, backend: Backend) {
    let cfg = || StoreConfig { cache_bytes, ..config() };
    let mut store: Store = backend.open(cfg()).await;
    store.add_index("t0", "by_tag", &["tag"]).await.unwrap();
    let mut model = Model::new();
    for step in steps {
        match step {
            Step::Reopen => {
                store.close().await;
                store = backend.open(cfg()).await;
            }
            Step::Txn { ops, commit } => {
                let mut tx = store.begin();
                let mut local = model.clone();
                for op in &ops {
                    run_op(&mut tx, &mut local, op).await;
                }
                if commit {
                    tx.commit().await.unwrap();
                    model = local;
                }
            }
        }
    }
    // A final check of everything through a fresh snapshot after one more reopen.
    store.close().await;
    let store = backend.open(cfg()).await;
    let mut tx = store.begin_read_only();
    for table in 0..2u8 {
        run_op(&mut tx, &mut model, &Op::Scan { table, desc: false, limit: None, min_n: None }).await;
    }
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_a_btreemap_model(steps in steps(), tiny_cache in any::<bool>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_case(steps, if tiny_cache { 2_000 } else { 64 << 20 }, Backend::sqlite()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 100, ..ProptestConfig::default() })]

    #[test]
    fn store_on_postgres_matches_a_btreemap_model(steps in steps(), tiny_cache in any::<bool>()) {
        let Some(backend) = Backend::postgres() else { return Ok(()) };
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_case(steps, if tiny_cache { 2_000 } else { 64 << 20 }, backend));
    }
}
