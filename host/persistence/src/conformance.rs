//! A conformance suite every `Persistence` backend must pass (enabled by the `conformance`
//! feature). Backends call each check from their own tests with a fresh, empty instance.

// A test suite: failing loudly on the first broken expectation is the point.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_value::{DocumentId, InternalId, TableNumber};

use crate::*;

fn doc(table: u32, n: u8) -> DocumentId {
    DocumentId::new(TableNumber(table), InternalId([n; 16]))
}

fn commit(ts: u64, docs: &[(DocumentId, Option<&[u8]>)], idx: &[(u32, &[u8], Option<DocumentId>)]) -> CommitRecord {
    CommitRecord {
        ts: Timestamp(ts),
        documents: docs.iter().map(|(id, v)| (*id, v.map(<[u8]>::to_vec))).collect(),
        indexes: idx.iter().map(|(i, k, d)| IndexWrite { index: IndexId(*i), key: k.to_vec(), doc: *d }).collect(),
        catalog: None,
    }
}

fn keys(hits: &[ScanHit]) -> Vec<Vec<u8>> {
    hits.iter().map(|h| h.key.clone()).collect()
}

/// Snapshot reads see, per document, the newest revision at or before the read timestamp.
pub async fn snapshot_reads(p: &dyn Persistence) {
    let a = doc(1, 1);
    p.commit(commit(10, &[(a, Some(b"v1"))], &[])).await.unwrap();
    p.commit(commit(20, &[(a, Some(b"v2"))], &[])).await.unwrap();
    p.commit(commit(30, &[(a, None)], &[])).await.unwrap();
    assert_eq!(p.get_document(a, Timestamp(5)).await.unwrap(), None);
    let at = |ts| async move { p.get_document(a, Timestamp(ts)).await.unwrap().unwrap() };
    assert_eq!(at(10).await.value.as_deref(), Some(&b"v1"[..]));
    assert_eq!(at(19).await.value.as_deref(), Some(&b"v1"[..]));
    assert_eq!(at(25).await.ts, Timestamp(20));
    assert_eq!(at(30).await.value, None);
    let state = p.recover().await.unwrap();
    assert_eq!(state.max_ts, Timestamp(30));
}

/// Index scans keep the newest entry per key, skip tombstones, honour bounds, order and limit,
/// and join each entry with its document as of the scan.
pub async fn index_scans(p: &dyn Persistence) {
    let (a, b, c) = (doc(1, 1), doc(1, 2), doc(1, 3));
    p.commit(commit(
        10,
        &[(a, Some(b"a")), (b, Some(b"b")), (c, Some(b"c"))],
        &[(7, b"k1", Some(a)), (7, b"k2", Some(b)), (7, b"k3", Some(c)), (8, b"k1", Some(c))],
    ))
    .await
    .unwrap();
    // b moves from k2 to k4; a is deleted; c changes its value only.
    p.commit(commit(
        20,
        &[(b, Some(b"b2")), (a, None), (c, Some(b"c2"))],
        &[(7, b"k2", None), (7, b"k4", Some(b)), (7, b"k1", None)],
    ))
    .await
    .unwrap();
    let scan = |ts: u64, range: KeyRange, order, limit| async move {
        p.scan_index(IndexId(7), &range, Timestamp(ts), order, limit).await.unwrap()
    };
    assert_eq!(
        keys(&scan(15, KeyRange::all(), Order::Asc, 10).await),
        vec![b"k1".to_vec(), b"k2".to_vec(), b"k3".to_vec()]
    );
    let now = scan(25, KeyRange::all(), Order::Asc, 10).await;
    assert_eq!(keys(&now), vec![b"k3".to_vec(), b"k4".to_vec()]);
    assert_eq!(now[0].revision.value.as_deref(), Some(&b"c2"[..]));
    assert_eq!(now[0].revision.id, c);
    assert_eq!(keys(&scan(25, KeyRange::all(), Order::Desc, 10).await), vec![b"k4".to_vec(), b"k3".to_vec()]);
    assert_eq!(keys(&scan(15, KeyRange::all(), Order::Desc, 2).await), vec![b"k3".to_vec(), b"k2".to_vec()]);
    let bounded = KeyRange { start: b"k2".to_vec(), end: Some(b"k3".to_vec()) };
    assert_eq!(keys(&scan(15, bounded, Order::Asc, 10).await), vec![b"k2".to_vec()]);
    let other = p.scan_index(IndexId(8), &KeyRange::all(), Timestamp(25), Order::Asc, 10).await.unwrap();
    assert_eq!(keys(&other), vec![b"k1".to_vec()]);

    let table = p.scan_table(TableNumber(1), &KeyRange::all(), Timestamp(25), Order::Asc, 10).await.unwrap();
    assert_eq!(table.iter().map(|h| h.revision.id).collect::<Vec<_>>(), vec![b, c]);
    let table = p.scan_table(TableNumber(1), &KeyRange::all(), Timestamp(15), Order::Desc, 2).await.unwrap();
    assert_eq!(table.iter().map(|h| h.revision.id).collect::<Vec<_>>(), vec![c, b]);
}

/// Pruning removes exactly what no read at or after the cutoff can see.
pub async fn pruning(p: &dyn Persistence) {
    let (a, b) = (doc(2, 1), doc(2, 2));
    p.commit(commit(10, &[(a, Some(b"a1")), (b, Some(b"b1"))], &[(9, b"ka", Some(a)), (9, b"kb", Some(b))]))
        .await
        .unwrap();
    p.commit(commit(20, &[(a, Some(b"a2")), (b, None)], &[(9, b"kb", None)])).await.unwrap();
    p.commit(commit(40, &[(a, Some(b"a3"))], &[])).await.unwrap();
    loop {
        if p.prune(Timestamp(30), 1).await.unwrap().done {
            break;
        }
    }
    // Reads at or after the cutoff are unchanged…
    assert_eq!(p.get_document(a, Timestamp(30)).await.unwrap().unwrap().value.as_deref(), Some(&b"a2"[..]));
    assert_eq!(p.get_document(a, Timestamp(40)).await.unwrap().unwrap().value.as_deref(), Some(&b"a3"[..]));
    assert!(p.get_document(b, Timestamp(30)).await.unwrap().is_none_or(|r| r.value.is_none()));
    let hits = p.scan_index(IndexId(9), &KeyRange::all(), Timestamp(30), Order::Asc, 10).await.unwrap();
    assert_eq!(keys(&hits), vec![b"ka".to_vec()]);
    // …and the superseded revision is gone.
    assert_eq!(p.get_document(a, Timestamp(15)).await.unwrap(), None);
    assert_eq!(p.recover().await.unwrap().pruned_up_to, Timestamp(30));

    // A later pruning removes what commits since the first superseded, and nothing else.
    let c = doc(2, 3);
    p.commit(commit(50, &[(a, Some(b"a5")), (c, Some(b"c5"))], &[(9, b"ka", None), (9, b"kc", Some(c))]))
        .await
        .unwrap();
    p.commit(commit(60, &[(c, None)], &[(9, b"kc", None)])).await.unwrap();
    p.commit(commit(80, &[(a, Some(b"a8"))], &[])).await.unwrap();
    loop {
        if p.prune(Timestamp(70), 1).await.unwrap().done {
            break;
        }
    }
    assert_eq!(p.get_document(a, Timestamp(45)).await.unwrap(), None, "a3 was superseded at 50");
    assert_eq!(p.get_document(a, Timestamp(70)).await.unwrap().unwrap().value.as_deref(), Some(&b"a5"[..]));
    assert_eq!(p.get_document(a, Timestamp(80)).await.unwrap().unwrap().value.as_deref(), Some(&b"a8"[..]));
    assert!(p.get_document(c, Timestamp(70)).await.unwrap().is_none_or(|r| r.value.is_none()));
    assert_eq!(p.get_document(c, Timestamp(55)).await.unwrap(), None, "c's revisions before its deletion are gone");
    let hits = p.scan_index(IndexId(9), &KeyRange::all(), Timestamp(70), Order::Asc, 10).await.unwrap();
    assert!(hits.is_empty(), "ka and kc were removed by 60");
    assert_eq!(p.recover().await.unwrap().pruned_up_to, Timestamp(70));
}

/// The revisions of one table between two commits, tombstones included, in (timestamp, id)
/// order, batch by batch.
pub async fn revision_scans(p: &dyn Persistence) {
    let (a, b, other) = (doc(4, 1), doc(4, 2), doc(5, 1));
    p.commit(commit(10, &[(a, Some(b"a1")), (other, Some(b"o1"))], &[])).await.unwrap();
    p.commit(commit(20, &[(b, Some(b"b1")), (a, Some(b"a2"))], &[])).await.unwrap();
    p.commit(commit(30, &[(a, None), (other, None)], &[])).await.unwrap();
    p.commit(commit(40, &[(b, Some(b"b2"))], &[])).await.unwrap();
    let all = p.scan_revisions(TableNumber(4), Timestamp(10), Timestamp(30), None, 10).await.unwrap();
    let seen: Vec<(u64, u8, Option<&[u8]>)> =
        all.iter().map(|r| (r.ts.0, r.id.internal.0[0], r.value.as_deref())).collect();
    assert_eq!(seen, vec![(20, 1, Some(&b"a2"[..])), (20, 2, Some(&b"b1"[..])), (30, 1, None)]);
    // In batches, each after the last one returned.
    let first = p.scan_revisions(TableNumber(4), Timestamp(0), Timestamp(40), None, 2).await.unwrap();
    assert_eq!(first.iter().map(|r| r.ts.0).collect::<Vec<_>>(), vec![10, 20]);
    let last = first.last().map(|r| (r.ts, r.id.internal));
    let rest = p.scan_revisions(TableNumber(4), Timestamp(0), Timestamp(40), last, 10).await.unwrap();
    let rest: Vec<(u64, u8)> = rest.iter().map(|r| (r.ts.0, r.id.internal.0[0])).collect();
    assert_eq!(rest, vec![(20, 2), (30, 1), (40, 2)]);
}

/// Backfilled entries are visible, and dropped indexes' entries can be deleted in steps.
pub async fn backfill_and_drop(p: &dyn Persistence) {
    let a = doc(3, 1);
    p.commit(commit(10, &[(a, Some(b"a"))], &[])).await.unwrap();
    p.write_index_entries(IndexId(11), Timestamp(10), vec![(b"x".to_vec(), a)]).await.unwrap();
    let hits = p.scan_index(IndexId(11), &KeyRange::all(), Timestamp(10), Order::Asc, 10).await.unwrap();
    assert_eq!(keys(&hits), vec![b"x".to_vec()]);
    while !p.delete_index_entries(IndexId(11), 1).await.unwrap().done {}
    assert!(p.scan_index(IndexId(11), &KeyRange::all(), Timestamp(10), Order::Asc, 10).await.unwrap().is_empty());
}

/// The catalog written with a commit is recovered.
pub async fn catalog_recovery(p: &dyn Persistence) {
    let mut record = commit(5, &[], &[]);
    record.catalog = Some(b"catalog v1".to_vec());
    p.commit(record).await.unwrap();
    p.commit(commit(6, &[], &[])).await.unwrap();
    let state = p.recover().await.unwrap();
    assert_eq!(state.catalog.as_deref(), Some(&b"catalog v1"[..]));
    assert_eq!(state.max_ts, Timestamp(6));
}
