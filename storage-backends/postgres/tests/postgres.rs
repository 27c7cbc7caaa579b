//! The PostgreSQL backend against the persistence conformance suite, plus its own guarantees,
//! on the cluster `KILN_TEST_POSTGRES_URL` names (the README's test command starts a
//! throwaway one; see `.ci/postgres`).

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use kiln_persistence::{CommitRecord, IndexId, IndexWrite, Persistence, PersistenceError, Timestamp, conformance};
use kiln_postgres::{PostgresFactory, PostgresOptions};
use kiln_value::{DocumentId, InternalId, TableNumber};

/// The test cluster's URL; outside CI a missing one skips the test (saying so), in CI it fails.
fn url() -> Option<String> {
    match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(url) => Some(url),
        Err(_) if std::env::var_os("CI").is_some() => panic!("KILN_TEST_POSTGRES_URL is not set in CI"),
        Err(_) => {
            eprintln!("skipped: KILN_TEST_POSTGRES_URL is not set (the README's test command starts a cluster)");
            None
        }
    }
}

/// A deployment name no other test (or earlier run) uses.
fn fresh_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("t{what}-{}-{nanos}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn factory(url: &str) -> PostgresFactory {
    PostgresFactory::new(PostgresOptions::new(url)).unwrap()
}

macro_rules! conformance_tests {
    ($($name:ident),*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(url) = url() else { return };
            let p = factory(&url).open_deployment(&fresh_name("c")).await.unwrap();
            conformance::$name(&p).await;
        }
    )*};
}

conformance_tests!(snapshot_reads, index_scans, pruning, revision_scans, backfill_and_drop, catalog_recovery);

fn doc(i: u64) -> DocumentId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    DocumentId::new(TableNumber(1), InternalId(id))
}

/// Opens `name` again (the factory waits for a closed earlier opener's lock to go).
async fn reopen(f: &PostgresFactory, name: &str) -> kiln_postgres::PostgresPersistence {
    f.open_deployment(name).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_are_grouped_durable_and_recovered_by_another_process() {
    let Some(url) = url() else { return };
    let name = fresh_name("g");
    {
        let p = Arc::new(factory(&url).open_deployment(&name).await.unwrap());
        // Many commits at once: the writer groups them; each waits for its own.
        let mut tasks = Vec::new();
        for i in 1..=300u64 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                let record = CommitRecord {
                    ts: Timestamp(i),
                    documents: vec![(doc(i), Some(i.to_be_bytes().to_vec()))],
                    indexes: vec![IndexWrite { index: IndexId(3), key: i.to_be_bytes().to_vec(), doc: Some(doc(i)) }],
                    catalog: (i == 150).then(|| b"catalog at 150".to_vec()),
                };
                p.commit(record).await
            }));
            tokio::task::yield_now().await;
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    // A new factory is a new set of connections, as another host would have.
    let p = reopen(&factory(&url), &name).await;
    let state = p.recover().await.unwrap();
    assert_eq!(state.max_ts, Timestamp(300));
    assert_eq!(state.catalog.as_deref(), Some(&b"catalog at 150"[..]));
    for i in [1, 150, 300] {
        let revision = p.get_document(doc(i), Timestamp(300)).await.unwrap().unwrap();
        assert_eq!(revision.value, Some(i.to_be_bytes().to_vec()));
    }
    let all = kiln_persistence::KeyRange::all();
    let hits = p.scan_index(IndexId(3), &all, Timestamp(300), kiln_persistence::Order::Asc, 1000).await.unwrap();
    assert_eq!(hits.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_open_elsewhere_is_refused_until_it_closes() {
    let Some(url) = url() else { return };
    let name = fresh_name("l");
    let first = factory(&url).open_deployment(&name).await.unwrap();
    let impatient = PostgresOptions { lock_wait: Duration::from_millis(200), ..PostgresOptions::new(&url) };
    match PostgresFactory::new(impatient).unwrap().open_deployment(&name).await {
        Err(e @ PersistenceError::Locked(_)) => assert_eq!(e.code(), "StorageLocked"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened one deployment twice"),
    }
    // Another deployment on the same database is not affected.
    factory(&url).open_deployment(&fresh_name("m")).await.unwrap();
    drop(first);
    reopen(&factory(&url), &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_unreachable_servers_fail_with_clear_errors() {
    let err = PostgresFactory::new(PostgresOptions::new("not a url")).unwrap_err();
    assert!(err.to_string().contains("invalid database URL"), "{err}");
    // Nothing listens on port 1 of the loopback interface.
    let options = PostgresOptions {
        connect_timeout: Duration::from_secs(2),
        ..PostgresOptions::new("postgres://x@127.0.0.1:1/db")
    };
    let started = Instant::now();
    let err = PostgresFactory::new(options).unwrap().open_deployment("d").await.unwrap_err();
    assert_eq!(err.code(), "StorageFailure");
    assert!(err.to_string().contains("cannot connect to the database"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let Some(url) = url() else { return };
    assert!(factory(&url).open_deployment("bad name").await.is_err());
}
