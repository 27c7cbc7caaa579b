//! The SQLite backend against the persistence conformance suite, plus its own guarantees.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use kiln_persistence::{CommitRecord, Persistence, PersistenceError, Timestamp, conformance};
use kiln_sqlite::{SqliteOptions, SqlitePersistence};
use kiln_value::{DocumentId, InternalId, TableNumber};

fn fresh(commit_log: bool) -> (tempfile::TempDir, SqlitePersistence) {
    let dir = tempfile::tempdir().unwrap();
    let p =
        SqlitePersistence::open_in_dir(dir.path(), "test", SqliteOptions { commit_log, ..Default::default() }).unwrap();
    (dir, p)
}

macro_rules! conformance_tests {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            // Commits through the log (the default), and straight into the tables.
            for commit_log in [true, false] {
                let (_dir, p) = fresh(commit_log);
                conformance::$name(&p).await;
            }
        }
    )*};
}

conformance_tests!(snapshot_reads, index_scans, pruning, revision_scans, backfill_and_drop, catalog_recovery);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_opener_is_refused() {
    let (dir, _p) = fresh(true);
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

/// Commits 400 documents of 2 KiB one by one, straight into the tables, and returns the WAL
/// file's largest size seen.
async fn largest_wal(checkpoint_pages: u32) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    // Commits written into the tables directly: the file's own WAL is the one measured.
    let options = SqliteOptions { checkpoint_pages, commit_log: false, ..Default::default() };
    let p = SqlitePersistence::open_in_dir(dir.path(), "w", options).unwrap();
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
async fn checkpointed_load(background_checkpoint: bool, commit_log: bool) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    // Through the log, the tables' WAL grows as the materializer copies every 64 commits.
    let options = SqliteOptions {
        checkpoint_pages: 1024,
        background_checkpoint,
        commit_log,
        materialize_commits: 64,
        ..Default::default()
    };
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
    for commit_log in [false, true] {
        let (background, inline, largest) = checkpointed_load(true, commit_log).await;
        assert!(background > 0, "no checkpoint ran in the background ({inline} on the writer)");
        assert!(largest <= 4 * 1024 * 4096 + (2 << 20), "the WAL grew to {largest} bytes");
    }
    let (background, inline, largest) = checkpointed_load(false, false).await;
    assert_eq!(background, 0, "background checkpoints although turned off");
    assert!(inline > 0 && largest <= 2 * 1024 * 4096 + (1 << 20), "{inline} checkpoints, WAL {largest} bytes");
}

/// Copies the deployment's file and its commit log, WALs included, as a crash would leave them.
fn snapshot_files(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("r.sqlite3") {
            std::fs::copy(entry.path(), to.join(name)).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_commits_not_yet_materialized_survive_a_crash() {
    let (dir, copy) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The materializer would wait an hour for more commits: everything stays in the log.
    let options = SqliteOptions {
        materialize_idle: std::time::Duration::from_secs(3600),
        materialize_commits: 1_000_000,
        ..Default::default()
    };
    let p = SqlitePersistence::open_in_dir(dir.path(), "r", options.clone()).unwrap();
    for i in 1..=50u64 {
        let value = if i == 50 { None } else { Some(vec![i as u8; 100]) };
        let documents = vec![(nth(i), Some(vec![1; 10])), (nth(1000 + i), value)];
        p.commit(CommitRecord { ts: Timestamp(i), documents, ..Default::default() }).await.unwrap();
    }
    // Point reads see logged commits before they are in the tables.
    let rev = p.get_document(nth(1049), Timestamp(60)).await.unwrap().unwrap();
    assert_eq!((rev.ts, rev.value), (Timestamp(49), Some(vec![49; 100])));
    assert_eq!(p.get_document(nth(1049), Timestamp(48)).await.unwrap(), None);
    snapshot_files(dir.path(), copy.path());
    drop(p);

    // The copy's tables lack the commits; opening it replays them from its log.
    let tables = rusqlite::Connection::open(copy.path().join("r.sqlite3")).unwrap();
    let rows: i64 = tables.query_row("SELECT count(*) FROM documents", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0, "the commits were materialized before the snapshot");
    drop(tables);
    let p = SqlitePersistence::open_in_dir(copy.path(), "r", options).unwrap();
    assert_eq!(p.recover().await.unwrap().max_ts, Timestamp(50));
    for i in 1..=49u64 {
        let rev = p.get_document(nth(1000 + i), Timestamp(50)).await.unwrap().unwrap();
        assert_eq!(rev.value, Some(vec![i as u8; 100]));
    }
    let deleted = p.get_document(nth(1050), Timestamp(50)).await.unwrap().unwrap();
    assert_eq!((deleted.ts, deleted.value), (Timestamp(50), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_waits_for_logged_commits_to_reach_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions { materialize_idle: std::time::Duration::from_secs(3600), ..Default::default() };
    let p = SqlitePersistence::open_in_dir(dir.path(), "s", options).unwrap();
    for i in 1..=20u64 {
        p.commit(CommitRecord {
            ts: Timestamp(i),
            documents: vec![(nth(i), Some(vec![i as u8]))],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let all = kiln_persistence::KeyRange { start: Vec::new(), end: None };
    let hits = p.scan_table(TableNumber(1), &all, Timestamp(20), kiln_persistence::Order::Asc, 100).await.unwrap();
    assert_eq!(hits.len(), 20);
    let hits = p.scan_table(TableNumber(1), &all, Timestamp(7), kiln_persistence::Order::Asc, 100).await.unwrap();
    assert_eq!(hits.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logged_commits_beyond_the_byte_budget_are_copied_without_being_asked() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing asks for a copy and the materializer would idle for an hour; only the bytes
    // gathered (each commit is over the budget) make it copy.
    let options = SqliteOptions {
        materialize_idle: std::time::Duration::from_secs(3600),
        materialize_commits: 1_000_000,
        materialize_bytes: 1000,
        ..Default::default()
    };
    let p = SqlitePersistence::open_in_dir(dir.path(), "b", options).unwrap();
    for i in 1..=30u64 {
        p.commit(CommitRecord {
            ts: Timestamp(i),
            documents: vec![(nth(i), Some(vec![1; 2000]))],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let tables = rusqlite::Connection::open(dir.path().join("b.sqlite3")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let rows: i64 = tables.query_row("SELECT count(*) FROM documents", [], |r| r.get(0)).unwrap();
        if rows == 30 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "only {rows} of 30 commits reached the tables");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_file_is_upgraded_and_a_newer_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let direct = SqliteOptions { commit_log: false, ..Default::default() };
    let p = SqlitePersistence::open_in_dir(dir.path(), "v", direct).unwrap();
    p.commit(CommitRecord { ts: Timestamp(1), documents: vec![(nth(1), Some(vec![1]))], ..Default::default() })
        .await
        .unwrap();
    drop(p);
    let set_version = |v: i64| {
        let c = rusqlite::Connection::open(dir.path().join("v.sqlite3")).unwrap();
        c.pragma_update(None, "user_version", v).unwrap();
    };
    // Version 1 had no commit log: opening it with one adds the log and keeps the data.
    set_version(1);
    let p = SqlitePersistence::open_in_dir(dir.path(), "v", SqliteOptions::default()).unwrap();
    p.commit(CommitRecord { ts: Timestamp(2), documents: vec![(nth(2), Some(vec![2]))], ..Default::default() })
        .await
        .unwrap();
    assert_eq!(p.get_document(nth(1), Timestamp(2)).await.unwrap().unwrap().value, Some(vec![1]));
    assert_eq!(p.get_document(nth(2), Timestamp(2)).await.unwrap().unwrap().value, Some(vec![2]));
    drop(p);
    set_version(3);
    let err = SqlitePersistence::open_in_dir(dir.path(), "v", SqliteOptions::default()).err().unwrap();
    assert!(err.to_string().contains("unsupported file format version 3"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_wait_while_four_byte_budgets_are_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions { materialize_bytes: 1000, ..Default::default() };
    let p = Arc::new(SqlitePersistence::open_in_dir(dir.path(), "w", options).unwrap());
    // Another connection holds the tables' write lock: the materializer cannot copy.
    let blocker = rusqlite::Connection::open(dir.path().join("w.sqlite3")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let commit = |i: u64| {
        let p = p.clone();
        async move {
            let record =
                CommitRecord { ts: Timestamp(i), documents: vec![(nth(i), Some(vec![1; 2000]))], ..Default::default() };
            p.commit(record).await
        }
    };
    // Two commits of ~2 KiB fit in the 4000 bytes allowed uncopied; the third waits.
    commit(1).await.unwrap();
    commit(2).await.unwrap();
    assert_eq!(p.commits_waited_for_copies(), 0);
    let third = tokio::spawn(commit(3));
    // The writer says when it starts waiting; no guess of how long it takes to get there.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while p.commits_waited_for_copies() == 0 {
        assert!(!third.is_finished(), "a commit went on while 4 KiB waited to be copied");
        assert!(std::time::Instant::now() < deadline, "the third commit never waited");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(!third.is_finished(), "a commit went on while 4 KiB waited to be copied");
    blocker.execute_batch("COMMIT").unwrap();
    let done = tokio::time::timeout(std::time::Duration::from_secs(10), third).await;
    done.expect("the commit still waited after the copy could go on").unwrap().unwrap();
    assert_eq!(p.get_document(nth(3), Timestamp(3)).await.unwrap().unwrap().value, Some(vec![1; 2000]));
}

#[test]
fn the_materializer_outlives_the_runtime_the_file_was_opened_in() {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteOptions { materialize_idle: std::time::Duration::from_secs(3600), ..Default::default() };
    let first = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let p = first.block_on(async {
        let p = SqlitePersistence::open_in_dir(dir.path(), "o", options).unwrap();
        for i in 1..=5u64 {
            let record =
                CommitRecord { ts: Timestamp(i), documents: vec![(nth(i), Some(vec![1]))], ..Default::default() };
            p.commit(record).await.unwrap();
        }
        p
    });
    // The materializer's jobs were to run on this runtime's blocking threads.
    drop(first);
    let second = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    second.block_on(async {
        let all = kiln_persistence::KeyRange { start: Vec::new(), end: None };
        let scan = p.scan_table(TableNumber(1), &all, Timestamp(5), kiln_persistence::Order::Asc, 100);
        let hits = tokio::time::timeout(std::time::Duration::from_secs(10), scan).await.unwrap().unwrap();
        assert_eq!(hits.len(), 5);
    });
}

/// The bundled SQLite is built to make commits durable with `fdatasync` (see the workspace's
/// `.cargo/config.toml`): on Linux it skips a journal commit per group commit.
#[cfg(target_os = "linux")]
#[test]
fn commits_are_made_durable_with_fdatasync() {
    assert_eq!(kiln_sqlite::sync_call(), "fdatasync");
}
