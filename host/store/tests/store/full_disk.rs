//! A full disk: writes are refused with `StorageFull` while it is full, reads (point reads and
//! scans) keep working, and writes resume by themselves once space is freed. Runs on a small
//! tmpfs of its own, so it needs permission to mount one (CI runs as root).

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_store::query::Query;
use kiln_store::{StoreError, Timestamp};

use crate::{config, obj, open};

/// A tmpfs mounted on a temporary directory, unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one of `size` (e.g. `"8m"`); `None` (the test reports itself skipped) where this
    /// process may not mount, except under CI, which must be able to.
    pub fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        if status.is_ok_and(|s| s.success()) {
            return Some(Tmpfs { dir });
        }
        assert!(std::env::var_os("CI").is_none(), "{test}: CI must be able to mount a tmpfs");
        eprintln!("SKIPPED {test}: cannot mount a tmpfs here (not root?)");
        None
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the file system at `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let tail = vec![0u8; 512];
    while f.write_all(&tail).is_ok() {}
    path
}

async fn insert(store: &kiln_store::Store, k: u32) -> Result<Timestamp, StoreError> {
    let mut tx = store.begin();
    tx.insert("t", obj(&format!(r#"{{"k": {k}, "pad": "{}"}}"#, "x".repeat(2000)))).await?;
    tx.commit().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_refused_while_the_disk_is_full_and_resume_once_space_is_freed() {
    let Some(fs) = Tmpfs::mount("8m", "writes_are_refused_while_the_disk_is_full_and_resume_once_space_is_freed")
    else {
        return;
    };
    let store = open(fs.path(), config()).await;
    for k in 0..20 {
        insert(&store, k).await.unwrap();
    }
    let filler = fill(fs.path());
    // Enough refused commits to be sure the first failure did not stop the store for good.
    let mut refused = 0;
    for k in 100..110 {
        match insert(&store, k).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), "StorageFull", "{e}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "the disk was never full");
    // Reads work on the full disk: a point read and a table scan.
    let mut tx = store.begin_read_only();
    let all = tx.collect(Query::full_table_scan("t")).await.unwrap();
    assert!(all.len() >= 20);
    assert!(tx.get(all[0].id).await.unwrap().is_some());
    drop(tx);

    std::fs::remove_file(filler).unwrap();
    let ts = insert(&store, 200).await.expect("writes resume once space is free");
    let mut tx = store.begin_read_only();
    assert!(tx.begin_ts() >= ts);
    let after = tx.collect(Query::full_table_scan("t")).await.unwrap();
    assert_eq!(after.len(), all.len() + 1);
    drop(tx);
    store.close().await;

    // What was acknowledged is durable, and nothing refused appeared.
    let store = open(fs.path(), config()).await;
    let mut tx = store.begin_read_only();
    let reopened = tx.collect(Query::full_table_scan("t")).await.unwrap();
    assert_eq!(reopened.len(), after.len());
}
