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

/// Opens `name` again (the factory waits for a closed earlier opener's lease to go).
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
async fn a_deployment_open_on_another_host_is_refused_until_it_closes() {
    let Some(url) = url() else { return };
    let name = fresh_name("l");
    // A short lease, renewed every third of it: it stays held while open.
    let short = PostgresOptions { lease_ttl: Duration::from_millis(600), ..PostgresOptions::new(&url) };
    let first = PostgresFactory::new(short).unwrap().open_deployment(&name).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let impatient = PostgresOptions { lock_wait: Duration::from_millis(200), ..PostgresOptions::new(&url) };
    match PostgresFactory::new(impatient).unwrap().open_deployment(&name).await {
        Err(e @ PersistenceError::Locked(_)) => assert_eq!(e.code(), "StorageLocked"),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened one deployment on two hosts"),
    }
    // Another deployment on the same database is not affected.
    factory(&url).open_deployment(&fresh_name("m")).await.unwrap();
    // Closing releases the lease: another host opens it at once.
    drop(first);
    let started = Instant::now();
    reopen(&factory(&url), &name).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_lease_moved_cannot_commit() {
    let Some(url) = url() else { return };
    let name = fresh_name("f");
    let commit =
        |ts: u64| CommitRecord { ts: Timestamp(ts), documents: vec![(doc(ts), Some(vec![1]))], ..Default::default() };
    // Host A's lease runs out as if A were paused (it renews far less often than it expires);
    // host B waits for the expiry and takes the deployment over.
    let a_options = PostgresOptions {
        lease_ttl: Duration::from_millis(300),
        renew_every: Some(Duration::from_secs(60)),
        ..PostgresOptions::new(&url)
    };
    let a = PostgresFactory::new(a_options).unwrap().open_deployment(&name).await.unwrap();
    a.commit(commit(1)).await.unwrap();
    let b = factory(&url).open_deployment(&name).await.unwrap();
    b.commit(commit(2)).await.unwrap();
    // A resumes: its commits are refused, now and later, and leave nothing behind.
    for ts in [3, 4] {
        let err = a.commit(commit(ts)).await.unwrap_err();
        assert_eq!(err.code(), "StorageLocked", "{err}");
        assert!(err.to_string().contains("moved to another host"), "{err}");
    }
    b.commit(commit(5)).await.unwrap();
    assert_eq!(b.recover().await.unwrap().max_ts, Timestamp(5));
    assert!(b.get_document(doc(3), Timestamp(5)).await.unwrap().is_none());
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

/// A cluster of this test's own (`.ci/postgres`), which it may stop and start.
struct OwnCluster {
    dir: std::path::PathBuf,
    url: String,
}

impl OwnCluster {
    fn script(command: &str, dir: &std::path::Path) -> String {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.ci/postgres");
        let out = std::process::Command::new("bash").arg(script).arg(command).arg(dir).output().unwrap();
        assert!(out.status.success(), "postgres {command}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn start() -> OwnCluster {
        let dir = std::env::temp_dir().join(fresh_name("cluster"));
        std::fs::create_dir_all(&dir).unwrap();
        let url = OwnCluster::script("start", &dir);
        OwnCluster { dir, url }
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        OwnCluster::script("stop", &self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_fail_clearly_while_the_server_is_down_and_resume_after_with_nothing_acknowledged_lost() {
    // Gated like the others: where the suite has a cluster, this test can make its own.
    if url().is_none() {
        return;
    }
    let cluster = OwnCluster::start();
    let options = PostgresOptions { connect_timeout: Duration::from_secs(1), ..PostgresOptions::new(&cluster.url) };
    let p = Arc::new(PostgresFactory::new(options).unwrap().open_deployment("restarted").await.unwrap());
    let (acked, errors) = (Arc::new(std::sync::Mutex::new(Vec::new())), Arc::new(std::sync::Mutex::new(Vec::new())));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (p, acked, errors, stop) = (p.clone(), acked.clone(), errors.clone(), stop.clone());
        tokio::spawn(async move {
            let mut ts = 0u64;
            while !stop.load(Ordering::Relaxed) {
                ts += 1;
                let record = CommitRecord {
                    ts: Timestamp(ts),
                    documents: vec![(doc(ts), Some(ts.to_be_bytes().to_vec()))],
                    ..Default::default()
                };
                match p.commit(record).await {
                    Ok(()) => acked.lock().unwrap().push(ts),
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        })
    };
    fn count<T>(v: &std::sync::Mutex<Vec<T>>) -> usize {
        v.lock().unwrap().len()
    }
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait("commits", &|| count(&acked) >= 100);
    OwnCluster::script("halt", &cluster.dir);
    wait("failures while the server is down", &|| count(&errors) >= 3);
    let before = count(&acked);
    OwnCluster::script("resume", &cluster.dir);
    wait("commits after the restart", &|| count(&acked) >= before + 100);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();

    let message = errors.lock().unwrap()[0].clone();
    assert!(message.contains("PostgreSQL") && message.starts_with("storage failure"), "{message}");
    // Every acknowledged commit is there, read through a new factory once this one closed.
    drop(p);
    let p = PostgresFactory::new(PostgresOptions::new(&cluster.url)).unwrap().open_deployment("restarted").await;
    let p = p.unwrap();
    let acked = acked.lock().unwrap().clone();
    let newest = *acked.last().unwrap();
    for ts in acked {
        let revision = p.get_document(doc(ts), Timestamp(newest)).await.unwrap();
        assert!(revision.is_some(), "acknowledged commit {ts} was lost");
    }
}

/// Reads an open blob to the end.
async fn read_all(blob: kiln_blobs::OpenBlob) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut reader = blob.reader;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await.unwrap();
    assert_eq!(out.len() as u64, blob.len, "the reader yields the announced length");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_stored_in_chunks_read_by_range_shared_by_hosts_and_unfinished_uploads_leave_nothing() {
    use kiln_blobs::{BlobError, BlobStoreFactory};
    let Some(url) = url() else { return };
    let name = fresh_name("b");
    let blobs = factory(&url).open_blobs(&name).await.unwrap();
    // 2.5 chunks of a pattern whose every position differs from its neighbours.
    let bytes: Vec<u8> = (0..(5u32 << 19)).map(|i| (i % 251) as u8).collect();
    let blob = blobs.put(&mut bytes.as_slice(), 10 << 20).await.unwrap();
    assert_eq!(blob.size, bytes.len() as u64);
    let again = blobs.put(&mut bytes.as_slice(), 10 << 20).await.unwrap();
    assert_eq!(again, blob, "the same bytes are one blob");
    let empty = blobs.put(&mut &b""[..], 10).await.unwrap();
    assert_eq!(read_all(blobs.open(&empty.sha256, None).await.unwrap().unwrap()).await, b"");
    // Another host (another factory) reads the same file, whole and by ranges across chunks.
    let other = factory(&url).open_blobs(&name).await.unwrap();
    assert_eq!(read_all(other.open(&blob.sha256, None).await.unwrap().unwrap()).await, bytes);
    for range in [0..1, (1 << 20) - 3..(1 << 20) + 5, 1_000_000..2_600_000, 2_621_439..2_621_440, 7..7] {
        let part = read_all(other.open(&blob.sha256, Some(range.clone())).await.unwrap().unwrap()).await;
        assert_eq!(part, bytes[range.start as usize..range.end as usize], "range {range:?}");
    }
    assert!(matches!(other.open(&blob.sha256, Some(0..3_000_000)).await, Err(BlobError::InvalidRange { .. })));
    assert!(other.open(&[7u8; 32], None).await.unwrap().is_none());
    // Too large: refused, and no chunk of it stays.
    let big = vec![1u8; 3 << 20];
    assert!(matches!(blobs.put(&mut big.as_slice(), 2 << 20).await, Err(BlobError::TooLarge { .. })));
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let orphans = format!(
        "SELECT count(*) FROM \"kiln_{name}\".blob_chunks WHERE upload NOT IN (SELECT upload FROM \"kiln_{name}\".blobs)"
    );
    assert_eq!(client.query_one(&orphans, &[]).await.unwrap().get::<_, i64>(0), 0);
    // Chunks of an upload a crash cut short are deleted when the store opens again.
    let plant = format!("INSERT INTO \"kiln_{name}\".blob_chunks (upload, n, data) VALUES (-1, 0, '\\x00')");
    client.execute(&plant, &[]).await.unwrap();
    drop(factory(&url).open_blobs(&name).await.unwrap());
    assert_eq!(client.query_one(&orphans, &[]).await.unwrap().get::<_, i64>(0), 0);
    let mut listed = other.list().await.unwrap();
    listed.sort_unstable();
    let mut expected = vec![blob.sha256, empty.sha256];
    expected.sort_unstable();
    assert_eq!(listed, expected);
    assert!(other.contains(&blob.sha256).await.unwrap());
    assert!(other.delete(&blob.sha256).await.unwrap());
    assert!(!other.delete(&blob.sha256).await.unwrap());
    assert!(!blobs.contains(&blob.sha256).await.unwrap());
}
