//! Blob storage for files (`ctx.storage`): each blob is addressed by the SHA-256 of its bytes,
//! so two uploads of the same file share one blob. Blobs stream in and out in chunks — a
//! 1 GB file never sits in memory — and a blob is durable (written, fsynced and renamed into
//! place) before [`BlobStore::put`] returns, so a document naming it can commit afterwards.
//! Which documents name a blob is the caller's business: it deletes a blob once none does.

use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

mod error;

pub use error::{BlobError, Result};

/// A stored blob: the SHA-256 of its bytes and its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlobRef {
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
}

impl BlobRef {
    /// The digest in lowercase hex (the blob's name in a [`DirBlobStore`]).
    pub fn hex(&self) -> String {
        hex(&self.sha256)
    }
}

/// Lowercase hex of a digest.
pub fn hex(sha256: &[u8; 32]) -> String {
    sha256.iter().map(|b| format!("{b:02x}")).collect()
}

/// An open blob: a reader of the requested bytes and the whole blob's size.
pub struct OpenBlob {
    /// The bytes asked for (the whole blob, or the range).
    pub reader: Box<dyn AsyncRead + Send + Unpin>,
    /// How many bytes `reader` yields.
    pub len: u64,
    /// The size of the whole blob.
    pub size: u64,
}

/// Where blobs live.
#[async_trait]
pub trait BlobStore: Send + Sync {
    /// Streams `body` into the store; returns its digest and size once the blob is durable.
    /// A body longer than `max_bytes` is refused with [`BlobError::TooLarge`] and leaves
    /// nothing behind.
    async fn put(&self, body: &mut (dyn AsyncRead + Send + Unpin), max_bytes: u64) -> Result<BlobRef>;

    /// Opens blob `sha256`, all of it or `range` (end exclusive, within the blob); `None`
    /// when there is no such blob.
    async fn open(&self, sha256: &[u8; 32], range: Option<Range<u64>>) -> Result<Option<OpenBlob>>;

    /// Whether blob `sha256` is stored.
    async fn contains(&self, sha256: &[u8; 32]) -> Result<bool>;

    /// Deletes blob `sha256`; `false` when there was none.
    async fn delete(&self, sha256: &[u8; 32]) -> Result<bool>;

    /// The digests of every stored blob (to find blobs no document names after a crash).
    async fn list(&self) -> Result<Vec<[u8; 32]>>;
}

/// Opens deployments' blob stores where they are not files under the data directory (in a
/// database several hosts share, so that a deployment's files move with it).
#[async_trait]
pub trait BlobStoreFactory: Send + Sync {
    /// The blob store of deployment `name`.
    async fn open_blobs(&self, name: &str) -> Result<std::sync::Arc<dyn BlobStore>>;
}

/// Blobs as files under a directory: `<root>/<first two hex digits>/<hex digest>`, written
/// through `<root>/tmp/`.
#[derive(Debug)]
pub struct DirBlobStore {
    root: PathBuf,
}

/// Bytes read and written per step.
const CHUNK: usize = 256 << 10;

impl DirBlobStore {
    /// Opens (creating) the store under `root`, removing what an interrupted upload left in
    /// its temporary directory.
    pub async fn open(root: impl Into<PathBuf>) -> Result<DirBlobStore> {
        let root = root.into();
        let tmp = root.join("tmp");
        if tokio::fs::try_exists(&tmp).await.map_err(|e| BlobError::io(&tmp, e))? {
            tokio::fs::remove_dir_all(&tmp).await.map_err(|e| BlobError::io(&tmp, e))?;
        }
        tokio::fs::create_dir_all(&tmp).await.map_err(|e| BlobError::io(&tmp, e))?;
        Ok(DirBlobStore { root })
    }

    /// The store under `root` as it is, not prepared for writes (for a read-only data
    /// directory: reads work, writes fail with `StorageFailed`).
    pub fn open_as_is(root: impl Into<PathBuf>) -> DirBlobStore {
        DirBlobStore { root: root.into() }
    }

    fn path(&self, sha256: &[u8; 32]) -> PathBuf {
        let name = hex(sha256);
        self.root.join(&name[..2]).join(name)
    }

    /// Writes `body` to a new temporary file, hashing it; the file is fsynced.
    async fn write_temp(
        &self,
        body: &mut (dyn AsyncRead + Send + Unpin),
        max_bytes: u64,
    ) -> Result<(PathBuf, BlobRef)> {
        let tmp = self.root.join("tmp").join(format!("upload-{}", unique()));
        let mut file = tokio::fs::File::create(&tmp).await.map_err(|e| BlobError::io(&tmp, e))?;
        let result = async {
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; CHUNK];
            let mut size = 0u64;
            loop {
                let n = body.read(&mut buf).await.map_err(BlobError::Body)?;
                if n == 0 {
                    break;
                }
                size += n as u64;
                if size > max_bytes {
                    return Err(BlobError::TooLarge { max_bytes });
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n]).await.map_err(|e| BlobError::io(&tmp, e))?;
            }
            file.sync_all().await.map_err(|e| BlobError::io(&tmp, e))?;
            Ok(BlobRef { sha256: hasher.finalize().into(), size })
        }
        .await;
        match result {
            Ok(blob) => Ok((tmp, blob)),
            Err(e) => {
                drop(file);
                // Nothing of a refused or failed upload stays.
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }
}

/// A name no other upload of this process uses at the same time.
fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Makes a rename in `dir` durable.
async fn sync_dir(dir: &Path) -> Result<()> {
    let d = tokio::fs::File::open(dir).await.map_err(|e| BlobError::io(dir, e))?;
    d.sync_all().await.map_err(|e| BlobError::io(dir, e))
}

#[async_trait]
impl BlobStore for DirBlobStore {
    async fn put(&self, body: &mut (dyn AsyncRead + Send + Unpin), max_bytes: u64) -> Result<BlobRef> {
        let (tmp, blob) = self.write_temp(body, max_bytes).await?;
        let path = self.path(&blob.sha256);
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        if tokio::fs::try_exists(&path).await.map_err(|e| BlobError::io(&path, e))? {
            // The same bytes are stored already: keep the one copy.
            let _ = tokio::fs::remove_file(&tmp).await;
            return Ok(blob);
        }
        tokio::fs::create_dir_all(&dir).await.map_err(|e| BlobError::io(&dir, e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| BlobError::io(&path, e))?;
        sync_dir(&dir).await?;
        Ok(blob)
    }

    async fn open(&self, sha256: &[u8; 32], range: Option<Range<u64>>) -> Result<Option<OpenBlob>> {
        let path = self.path(sha256);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BlobError::io(&path, e)),
        };
        let size = file.metadata().await.map_err(|e| BlobError::io(&path, e))?.len();
        let range = range.unwrap_or(0..size);
        if range.start > range.end || range.end > size {
            return Err(BlobError::InvalidRange { start: range.start, end: range.end, size });
        }
        file.seek(std::io::SeekFrom::Start(range.start)).await.map_err(|e| BlobError::io(&path, e))?;
        let len = range.end - range.start;
        Ok(Some(OpenBlob { reader: Box::new(file.take(len)), len, size }))
    }

    async fn contains(&self, sha256: &[u8; 32]) -> Result<bool> {
        let path = self.path(sha256);
        tokio::fs::try_exists(&path).await.map_err(|e| BlobError::io(&path, e))
    }

    async fn delete(&self, sha256: &[u8; 32]) -> Result<bool> {
        let path = self.path(sha256);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(BlobError::io(&path, e)),
        }
    }

    async fn list(&self) -> Result<Vec<[u8; 32]>> {
        let mut found = Vec::new();
        let mut dirs = tokio::fs::read_dir(&self.root).await.map_err(|e| BlobError::io(&self.root, e))?;
        while let Some(dir) = dirs.next_entry().await.map_err(|e| BlobError::io(&self.root, e))? {
            let dir = dir.path();
            // Only the two-hex-digit fan-out directories hold blobs (`tmp` holds uploads).
            if dir.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.len() != 2) || !dir.is_dir() {
                continue;
            }
            let mut files = tokio::fs::read_dir(&dir).await.map_err(|e| BlobError::io(&dir, e))?;
            while let Some(file) = files.next_entry().await.map_err(|e| BlobError::io(&dir, e))? {
                if let Some(sha256) = file.file_name().to_str().and_then(parse_hex) {
                    found.push(sha256);
                }
            }
        }
        found.sort_unstable();
        Ok(found)
    }
}

/// A digest from its hex, if `name` is one.
pub fn parse_hex(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
