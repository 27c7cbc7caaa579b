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

/// Commits 400 documents of 2 KiB one by one and returns the WAL file's largest size seen.
async fn largest_wal(checkpoint_pages: u32) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let p = SqlitePersistence::open_in_dir(dir.path(), "w", SqliteOptions { checkpoint_pages, ..Default::default() })
        .unwrap();
    let wal = dir.path().join("w.sqlite3-wal");
    let mut largest = 0;
    for i in 1..=400u64 {
        let id = DocumentId::new(TableNumber(1), InternalId::at(i));
        p.commit(CommitRecord { ts: Timestamp(i), documents: vec![(id, Some(vec![7; 2048]))], ..Default::default() })
            .await
            .unwrap();
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    let state = p.recover().await.unwrap();
    assert_eq!(state.max_ts, Timestamp(400));
    largest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_is_checkpointed_at_the_configured_length() {
    // ~1 MiB of documents: a 16-page WAL is copied into the file and trimmed again and again,
    // one of 100000 pages just grows.
    let short = largest_wal(16).await;
    let long = largest_wal(100_000).await;
    assert!(short < 256 << 10, "a 16-page WAL grew to {short} bytes");
    assert!(long > 1 << 20, "a 100000-page WAL stayed at {long} bytes");
}

/// The bundled SQLite is built to make commits durable with `fdatasync` (see the workspace's
/// `.cargo/config.toml`): on Linux it skips a journal commit per group commit.
#[cfg(target_os = "linux")]
#[test]
fn commits_are_made_durable_with_fdatasync() {
    assert_eq!(kiln_sqlite::sync_call(), "fdatasync");
}
