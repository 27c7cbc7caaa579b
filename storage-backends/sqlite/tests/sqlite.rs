//! The SQLite backend against the persistence conformance suite, plus its own guarantees.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

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

/// Document `i` of table 1.
fn nth(i: u64) -> DocumentId {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    DocumentId::new(TableNumber(1), InternalId(id))
}

/// Commits 4000 documents of 4 KiB from 32 tasks into a WAL checkpointed every 1024 pages;
/// returns the checkpoints run in the background and by the writer, and the largest WAL seen.
async fn checkpointed_load(background_checkpoint: bool) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions { checkpoint_pages: 1024, background_checkpoint, ..Default::default() };
    let p = Arc::new(SqlitePersistence::open_in_dir(dir.path(), "c", options.clone()).unwrap());
    let wal = dir.path().join("c.sqlite3-wal");
    let next = Arc::new(std::sync::atomic::AtomicU64::new(1));
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let (p, next, wal) = (p.clone(), next.clone(), wal.clone());
            tokio::spawn(async move {
                let mut largest = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i > 4000 {
                        return largest;
                    }
                    let id = nth(i);
                    let record = CommitRecord {
                        ts: Timestamp(i),
                        documents: vec![(id, Some(vec![i as u8; 4096]))],
                        ..Default::default()
                    };
                    p.commit(record).await.unwrap();
                    largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
                }
            })
        })
        .collect();
    let mut largest = 0;
    for t in tasks {
        largest = largest.max(t.await.unwrap());
    }
    let stats = p.checkpoint_stats();
    let counts = (stats.background.load(Ordering::Relaxed), stats.inline.load(Ordering::Relaxed));
    drop(p);
    let p = SqlitePersistence::open_in_dir(dir.path(), "c", options).unwrap();
    assert_eq!(p.recover().await.unwrap().max_ts, Timestamp(4000));
    for i in (1..=4000u64).step_by(97) {
        let rev = p.get_document(nth(i), Timestamp(4000)).await.unwrap().unwrap();
        assert_eq!(rev.value, Some(vec![i as u8; 4096]), "document {i}");
    }
    (counts.0, counts.1, largest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpointer_thread_copies_the_wal_while_commits_go_on() {
    // ~16 MiB of documents cross the 1024-page threshold many times; the checkpointer copies
    // most of each WAL, the writer only the last few commits, and the WAL still starts over.
    let (background, inline, largest) = checkpointed_load(true).await;
    assert!(background > 0, "no checkpoint ran in the background ({inline} on the writer)");
    assert!(largest <= 4 * 1024 * 4096 + (2 << 20), "the WAL grew to {largest} bytes");
    let (background, inline, largest) = checkpointed_load(false).await;
    assert_eq!(background, 0, "background checkpoints although turned off");
    assert!(inline > 0 && largest <= 2 * 1024 * 4096 + (1 << 20), "{inline} checkpoints, WAL {largest} bytes");
}

/// The bundled SQLite is built to make commits durable with `fdatasync` (see the workspace's
/// `.cargo/config.toml`): on Linux it skips a journal commit per group commit.
#[cfg(target_os = "linux")]
#[test]
fn commits_are_made_durable_with_fdatasync() {
    assert_eq!(kiln_sqlite::sync_call(), "fdatasync");
}
