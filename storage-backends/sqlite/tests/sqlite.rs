//! The SQLite backend against the persistence conformance suite, plus its own guarantees.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kiln_persistence::{CommitRecord, Persistence, PersistenceError, Timestamp, conformance};
use kiln_sqlite::{SqliteOptions, SqlitePersistence};
use kiln_value::{DocumentId, InternalId, TableNumber};

fn fresh() -> (tempfile::TempDir, SqlitePersistence) {
    let dir = tempfile::tempdir().unwrap();
    let p = SqlitePersistence::open_in_dir(dir.path(), "test", SqliteOptions::default()).unwrap();
    (dir, p)
}

macro_rules! conformance_tests {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let (_dir, p) = fresh();
            conformance::$name(&p).await;
        }
    )*};
}

conformance_tests!(snapshot_reads, index_scans, pruning, backfill_and_drop, catalog_recovery);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_opener_is_refused() {
    let (dir, _p) = fresh();
    let quick = SqliteOptions { lock_timeout: std::time::Duration::from_millis(50), ..SqliteOptions::default() };
    match SqlitePersistence::open_in_dir(dir.path(), "test", quick) {
        Err(e @ PersistenceError::Locked(_)) => assert_eq!(e.code(), "StorageLocked"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened the same file twice"),
    }
    assert!(SqlitePersistence::open_in_dir(dir.path(), "../escape", SqliteOptions::default()).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_are_durable_and_reopen_recovers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let p = Arc::new(SqlitePersistence::open_in_dir(dir.path(), "d", SqliteOptions::default()).unwrap());
        let tasks: Vec<_> = (1..=200u64)
            .map(|i| {
                let p = p.clone();
                tokio::spawn(async move {
                    let id = DocumentId::new(TableNumber(1), InternalId([i as u8; 16]));
                    p.commit(CommitRecord {
                        ts: Timestamp(i),
                        documents: vec![(id, Some(vec![i as u8]))],
                        ..Default::default()
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    let p = SqlitePersistence::open_in_dir(dir.path(), "d", SqliteOptions::default()).unwrap();
    let state = p.recover().await.unwrap();
    assert!(state.max_ts >= Timestamp(1));
    for i in 1..=200u64 {
        let id = DocumentId::new(TableNumber(1), InternalId([i as u8; 16]));
        let rev = p.get_document(id, Timestamp(u64::from(u32::MAX))).await.unwrap().unwrap();
        assert_eq!(rev.value, Some(vec![i as u8]));
    }
}
