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
