//! The directory blob store on a real file system.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::pin::Pin;
use std::task::{Context, Poll};

use kiln_blobs::{BlobStore, DirBlobStore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// `len` pseudo-random bytes, produced as they are read (never held whole).
struct Generated {
    left: u64,
    state: u64,
}

impl Generated {
    fn new(len: u64, seed: u64) -> Generated {
        Generated { left: len, state: seed | 1 }
    }
}

impl AsyncRead for Generated {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        // Odd-sized pieces, so chunk boundaries fall anywhere.
        let n = (buf.remaining() as u64).min(self.left).min(70_001) as usize;
        for _ in 0..n {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            buf.put_slice(&[self.state as u8]);
        }
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

async fn digest_of(mut r: impl AsyncRead + Unpin) -> ([u8; 32], u64) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf).await.unwrap();
        if k == 0 {
            return (h.finalize().into(), n);
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

#[tokio::test]
async fn a_streamed_blob_reads_back_byte_identical_whole_and_by_range() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirBlobStore::open(dir.path()).await.unwrap();
    let len = 24 << 20;
    let blob = store.put(&mut Generated::new(len, 7), 1 << 30).await.unwrap();
    let (expected, n) = digest_of(Generated::new(len, 7)).await;
    assert_eq!((blob.sha256, blob.size), (expected, len));
    assert_eq!(n, len);

    let whole = store.open(&blob.sha256, None).await.unwrap().unwrap();
    assert_eq!((whole.len, whole.size), (len, len));
    assert_eq!(digest_of(whole.reader).await, (expected, len));

    let mut part = store.open(&blob.sha256, Some(1000..1010)).await.unwrap().unwrap();
    let mut got = Vec::new();
    part.reader.read_to_end(&mut got).await.unwrap();
    let mut all = Vec::new();
    Generated::new(1010, 7).read_to_end(&mut all).await.unwrap();
    assert_eq!(got, all[1000..1010]);
    assert_eq!((part.len, part.size), (10, len));

    let err = store.open(&blob.sha256, Some(len - 1..len + 1)).await.err().unwrap();
    assert_eq!(err.code(), "InvalidRange");
}

#[tokio::test]
async fn the_same_bytes_share_one_blob_and_delete_frees_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirBlobStore::open(dir.path()).await.unwrap();
    let a = store.put(&mut &b"hello"[..], 100).await.unwrap();
    let b = store.put(&mut &b"hello"[..], 100).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a.hex(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
    assert!(store.contains(&a.sha256).await.unwrap());
    let c = store.put(&mut &b"other"[..], 100).await.unwrap();
    let mut both = vec![a.sha256, c.sha256];
    both.sort_unstable();
    assert_eq!(store.list().await.unwrap(), both, "list names every blob once");
    assert!(store.delete(&a.sha256).await.unwrap());
    assert_eq!(store.list().await.unwrap(), vec![c.sha256]);
    assert!(!store.delete(&a.sha256).await.unwrap());
    assert!(store.open(&a.sha256, None).await.unwrap().is_none());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirBlobStore::open(dir.path()).await.unwrap();
    let err = store.put(&mut Generated::new(1 << 20, 3), (1 << 20) - 1).await.unwrap_err();
    assert_eq!(err.code(), "FileTooLarge");
    let files = walk(dir.path());
    assert!(files.is_empty(), "left behind: {files:?}");
    // What an interrupted upload left in tmp/ is removed when the store opens.
    std::fs::write(dir.path().join("tmp/upload-crashed"), b"partial").unwrap();
    drop(store);
    let _store = DirBlobStore::open(dir.path()).await.unwrap();
    assert!(walk(dir.path()).is_empty());
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}
