//! Integration tests of the store on real SQLite files.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Runs the block in fresh transactions (bound to `$tx`) until it commits, retrying
/// conflicts; evaluates to `(block value, commit timestamp)`.
macro_rules! retry {
    ($store:expr, |$tx:ident| $body:block) => {{
        let mut attempt = 0u32;
        loop {
            let mut $tx = $store.begin();
            let result: Result<_, kiln_store::StoreError> = async { $body }.await;
            let result = match result {
                Ok(v) => $tx.commit().await.map(|ts| (v, ts)),
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => break r,
                Err(e) if e.is_retryable() && attempt < 100 => {
                    attempt += 1;
                    if let Some(ts) = e.retry_after() {
                        $store.wait_for(ts).await;
                    }
                }
                Err(e) => panic!("transaction failed: {e}"),
            }
        }
    }};
}

mod basics;
mod crash;
mod full_disk;
mod limits;
mod memory;
mod model;
mod occ;
mod pagination;
mod pending;
mod schema;
mod search;
mod subscriptions;
mod vector;

use std::path::Path;
use std::sync::Arc;

use kiln_sqlite::{SqliteOptions, SqlitePersistence};
use kiln_store::{Store, StoreConfig};
use kiln_value::{Object, Value, parse_convex_json};

/// Opens the store of deployment "test" under `dir`.
pub async fn open(dir: &Path, config: StoreConfig) -> Store {
    let p = SqlitePersistence::open_in_dir(dir, "test", SqliteOptions::default()).unwrap();
    Store::open(Arc::new(p), config).await.unwrap()
}

/// Where a test's store keeps its data: a SQLite file, or a deployment on the PostgreSQL
/// cluster `KILN_TEST_POSTGRES_URL` names.
pub enum Backend {
    /// Deployment "test" under this directory.
    Sqlite(tempfile::TempDir),
    /// A deployment on a cluster.
    Postgres {
        /// The cluster's URL.
        url: String,
        /// The deployment.
        name: String,
    },
}

impl Backend {
    /// A fresh SQLite backend.
    pub fn sqlite() -> Backend {
        Backend::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh deployment on the test cluster; `None` (the test is skipped, saying so)
    /// outside CI when no cluster is named. In CI a missing cluster fails.
    pub fn postgres() -> Option<Backend> {
        let url = match std::env::var("KILN_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) if std::env::var_os("CI").is_some() => panic!("KILN_TEST_POSTGRES_URL is not set in CI"),
            Err(_) => {
                eprintln!("skipped: KILN_TEST_POSTGRES_URL is not set (the README's test command starts a cluster)");
                return None;
            }
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        Some(Backend::Postgres { url, name: format!("store-{}-{nanos}-{n}", std::process::id()) })
    }

    /// Opens the store (again).
    pub async fn open(&self, config: StoreConfig) -> Store {
        match self {
            Backend::Sqlite(dir) => open(dir.path(), config).await,
            Backend::Postgres { url, name } => open_postgres(url, name, config).await,
        }
    }
}

/// Opens the store of deployment `name` on the PostgreSQL cluster at `url`.
pub async fn open_postgres(url: &str, name: &str, config: StoreConfig) -> Store {
    // A killed child's lease expires within a second (the crash test reopens after each kill).
    let options = kiln_postgres::PostgresOptions {
        lease_ttl: std::time::Duration::from_secs(1),
        ..kiln_postgres::PostgresOptions::new(url)
    };
    let factory = kiln_postgres::PostgresFactory::new(options).unwrap();
    let p = factory.open_deployment(name).await.unwrap();
    Store::open(Arc::new(p), config).await.unwrap()
}

/// A store config for tests: no background pruning.
pub fn config() -> StoreConfig {
    StoreConfig { prune_interval: std::time::Duration::ZERO, ..StoreConfig::default() }
}

/// An object from Convex JSON text.
pub fn obj(json: &str) -> Object {
    match parse_convex_json(json).unwrap() {
        Value::Object(o) => o,
        other => panic!("not an object: {other:?}"),
    }
}

/// Runs the named test of this binary in a child process with extra environment.
pub fn child(test: &str, envs: &[(&str, String)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", test, "--ignored", "--nocapture", "--test-threads=1"]);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

/// Runs the named child test (see [`child`]) until it has printed its first `ACK <n>` line,
/// kills it with SIGKILL `delay` later, and returns every acknowledged number.
pub fn ack_until_killed(test: &str, envs: &[(&str, String)], delay: std::time::Duration) -> Vec<u64> {
    use std::io::BufRead;
    let mut proc =
        child(test, envs).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let stdout = proc.stdout.take().unwrap();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ACK ") {
                seen.push(n.trim().parse::<u64>().unwrap());
                let _ = first_tx.send(());
            }
        }
        seen
    });
    first_rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the child never acknowledged anything");
    std::thread::sleep(delay);
    proc.kill().unwrap();
    proc.wait().unwrap();
    reader.join().unwrap()
}
