//! File storage (`ctx.storage`): each stored file is a document of the system table
//! `_storage` (`sha256` in base16, `size`, `contentType`, as Convex's) naming a blob of the deployment's
//! [`BlobStore`]; its id is the storage id apps hold.
//!
//! A blob is durable before the document naming it commits. Identical files share one blob,
//! so a blob is freed only when no document names it any more: after the transaction that
//! deleted the last one commits, or at the next start for blobs a crash left unnamed. Storing
//! holds [`Files::naming`] shared from writing the blob until its document commits, and
//! freeing holds it exclusively while it checks and deletes, so a file stored again while its
//! blob is being freed is never left without its bytes.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use kiln_blobs::{BlobError, BlobStore, OpenBlob};
use kiln_persistence::Order;
use kiln_store::query::{Query, RangeExpr, RangeOp, Source};
use kiln_store::{Store, StoreError, Transaction};
use kiln_value::{DocumentId, FieldPath, Object, Value};
use sha2::Sha256;
use tokio::io::AsyncRead;

use crate::error::CallError;

/// The system table of stored files.
pub(crate) const TABLE: &str = "_storage";
/// Its index by content digest (which documents name a blob).
pub(crate) const BY_SHA: &str = "by_sha256";
/// The fields of [`BY_SHA`].
pub(crate) const BY_SHA_FIELDS: [&str; 1] = ["sha256"];
/// How long an upload URL stays valid (as Convex's: one hour).
const UPLOAD_TTL_MS: f64 = 3_600_000.0;

/// A stored file's metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// The storage id (the `_storage` document's id).
    pub id: DocumentId,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
    /// The content type given when it was stored, if any.
    pub content_type: Option<String>,
}

impl FileMeta {
    /// The metadata a `_storage` document holds (`None` if it holds none).
    pub fn from_document(id: DocumentId, doc: &Object) -> Option<FileMeta> {
        let sha256 = kiln_blobs::parse_hex(doc.get("sha256").and_then(Value::as_str)?)?;
        let size = match doc.get("size")? {
            Value::Float64(n) if *n >= 0.0 => *n as u64,
            _ => return None,
        };
        let content_type = doc.get("contentType").and_then(Value::as_str).map(str::to_owned);
        Some(FileMeta { id, sha256, size, content_type })
    }

    /// What `ctx.storage.getMetadata` answers: `{storageId, sha256, size, contentType}`.
    pub fn to_value(&self) -> Value {
        let content_type = self.content_type.clone().map(Value::String).unwrap_or(Value::Null);
        Value::Object(
            [
                ("storageId".to_owned(), Value::String(self.id.encode())),
                ("sha256".to_owned(), Value::String(kiln_blobs::hex(&self.sha256))),
                ("size".to_owned(), Value::Float64(self.size as f64)),
                ("contentType".to_owned(), content_type),
            ]
            .into(),
        )
    }
}

fn blob_error(e: BlobError) -> CallError {
    CallError::new(e.code(), e.to_string())
}

fn store_error(e: StoreError) -> CallError {
    CallError::new(e.code(), e.to_string())
}

/// A deployment's files: its blob store and the lock between storing and freeing blobs.
pub struct Files {
    blobs: Arc<dyn BlobStore>,
    /// Shared by stores (blob written → document committed), exclusive while freeing.
    naming: Arc<tokio::sync::RwLock<()>>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Files")
    }
}

impl Files {
    /// Files kept in `blobs`.
    pub(crate) fn new(blobs: Arc<dyn BlobStore>) -> Files {
        Files { blobs, naming: Arc::default() }
    }

    /// Streams `body` into a new file (at most `max_bytes`); returns its metadata once the
    /// document naming it has committed. `sha256` (base64), when given, must match the bytes.
    pub(crate) async fn store(
        &self,
        store: &Arc<Store>,
        body: &mut (dyn AsyncRead + Send + Unpin),
        content_type: Option<String>,
        sha256: Option<&str>,
        max_bytes: u64,
    ) -> Result<FileMeta, CallError> {
        let _naming = self.naming.read().await;
        let blob = self.blobs.put(body, max_bytes).await.map_err(blob_error)?;
        let digest = kiln_blobs::hex(&blob.sha256);
        // Given in base16, as `_storage` holds it, or in base64, as HTTP's `Digest` has it.
        if let Some(expected) = sha256
            && !expected.eq_ignore_ascii_case(&digest)
            && expected != STANDARD.encode(blob.sha256)
        {
            drop(_naming);
            self.free(store, vec![blob.sha256]);
            return Err(CallError::new(
                "StorageDigestMismatch",
                format!("the file's SHA-256 is {digest}, not the {expected} given"),
            ));
        }
        let mut fields: Object =
            [("sha256".to_owned(), Value::String(digest)), ("size".to_owned(), Value::Float64(blob.size as f64))]
                .into();
        if let Some(t) = &content_type {
            fields.insert("contentType".to_owned(), Value::String(t.clone()));
        }
        let mut txn = store.begin_system();
        let committed = match txn.insert_record(TABLE, fields).await {
            Ok(id) => txn.commit().await.map(|_| id),
            Err(e) => Err(e),
        };
        match committed {
            Ok(id) => Ok(FileMeta { id, sha256: blob.sha256, size: blob.size, content_type }),
            Err(e) => {
                // Nothing names the blob: free it now rather than at the next start.
                drop(_naming);
                self.free(store, vec![blob.sha256]);
                Err(store_error(e))
            }
        }
    }

    /// Keeps every blob from being freed while the guard lives (an export reading the files
    /// of a snapshot).
    pub(crate) async fn keep(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.naming.clone().read_owned().await
    }

    /// Opens the bytes of `meta` (all, or `range`); `None` if its blob is missing.
    pub(crate) async fn open(&self, meta: &FileMeta, range: Option<Range<u64>>) -> Result<Option<OpenBlob>, CallError> {
        self.blobs.open(&meta.sha256, range).await.map_err(blob_error)
    }

    /// Frees, in the background, those of the blobs `sha256s` that no committed document
    /// names any more (called after the transaction that deleted their documents committed).
    pub(crate) fn free(&self, store: &Arc<Store>, sha256s: Vec<[u8; 32]>) {
        if sha256s.is_empty() {
            return;
        }
        let (blobs, naming, store) = (self.blobs.clone(), self.naming.clone(), store.clone());
        tokio::spawn(async move {
            // Waits for stores in progress without blocking new ones behind it.
            let _freeing = loop {
                match naming.try_write() {
                    Ok(guard) => break guard,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            if let Err(e) = free_unnamed(&*blobs, &store, &sha256s).await {
                // The next start's sweep frees them.
                tracing::warn!(error = %e, "freeing deleted files' blobs failed");
            }
        });
    }

    /// Frees every blob no document names (what a crash between writing a blob and
    /// committing its document, or between deleting a document and freeing its blob, left).
    pub(crate) async fn sweep(&self, store: &Store) -> Result<usize, CallError> {
        let _freeing = self.naming.write().await;
        let all = self.blobs.list().await.map_err(blob_error)?;
        free_unnamed(&*self.blobs, store, &all).await
    }
}

/// Deletes those of `sha256s` that no `_storage` document names at the newest snapshot.
async fn free_unnamed(blobs: &dyn BlobStore, store: &Store, sha256s: &[[u8; 32]]) -> Result<usize, CallError> {
    let mut freed = 0;
    for sha256 in sha256s {
        if !named(store, sha256).await.map_err(store_error)? && blobs.delete(sha256).await.map_err(blob_error)? {
            freed += 1;
        }
    }
    Ok(freed)
}

/// Whether a document of `_storage` names blob `sha256`.
async fn named(store: &Store, sha256: &[u8; 32]) -> Result<bool, StoreError> {
    let mut txn = store.begin_system_read_only();
    let field = FieldPath::parse("sha256").unwrap_or_else(|_| unreachable!("a valid field path"));
    let query = Query {
        source: Source::IndexRange {
            table: TABLE.to_owned(),
            index: BY_SHA.to_owned(),
            range: vec![RangeExpr { op: RangeOp::Eq, field, value: Some(Value::String(kiln_blobs::hex(sha256))) }],
        },
        order: Order::Asc,
        operators: Vec::new(),
    };
    let stream = txn.open_query(query)?;
    Ok(txn.next(stream).await?.is_some())
}

/// The file `id` names, read in `txn`; `None` for no such file. An id of another table is
/// refused (`InvalidStorageId`).
pub(crate) async fn metadata(txn: &mut Transaction, id: &str) -> Result<Option<FileMeta>, CallError> {
    let invalid = || CallError::new("InvalidStorageId", format!("{id:?} is not a storage id"));
    let parsed = DocumentId::decode(id).map_err(|_| invalid())?;
    match txn.table_name_of(&parsed) {
        Some(t) if t == TABLE => {}
        // No `_storage` table yet at this snapshot: nothing was ever stored.
        None => return Ok(None),
        Some(_) => return Err(invalid()),
    }
    let doc = txn.get_record(TABLE, parsed.internal).await.map_err(store_error)?;
    Ok(doc.filter(|d| d.id == parsed).and_then(|d| FileMeta::from_document(parsed, &d.value)))
}

/// Deletes file `id`'s document in `txn`; returns the blob to free once `txn` commits.
pub(crate) async fn delete(txn: &mut Transaction, id: &str) -> Result<[u8; 32], CallError> {
    let meta = metadata(txn, id)
        .await?
        .ok_or_else(|| CallError::new("StorageFileNotFound", format!("no stored file has id {id:?}")))?;
    txn.delete_record(TABLE, meta.id.internal).await.map_err(store_error)?;
    Ok(meta.sha256)
}

/// The URL serving file `id` under the deployment's public URL `base`.
pub(crate) fn url(base: &str, id: &DocumentId) -> String {
    format!("{}/api/storage/{}", base.trim_end_matches('/'), id.encode())
}

type HmacSha256 = Hmac<Sha256>;

/// Signs upload tokens of one deployment.
pub(crate) struct UploadKey([u8; 32]);

impl UploadKey {
    /// The key of deployment `name`, derived from its secret `seed_key`.
    pub(crate) fn derive(seed_key: &[u8; 32], name: &str) -> UploadKey {
        let mut mac = HmacSha256::new_from_slice(seed_key).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        mac.update(b"kiln upload token\0");
        mac.update(name.as_bytes());
        UploadKey(mac.finalize().into_bytes().into())
    }

    fn mac(&self, expires_ms: u64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
        mac.update(&expires_ms.to_be_bytes());
        mac
    }

    /// A token for one upload URL, valid for an hour from `now_ms`.
    pub(crate) fn token(&self, now_ms: f64) -> String {
        let expires = (now_ms + UPLOAD_TTL_MS) as u64;
        let tag = self.mac(expires).finalize().into_bytes();
        format!("{expires}.{}", kiln_blobs::hex(&tag.into()))
    }

    /// Checks a token of [`UploadKey::token`] at `now_ms`.
    pub(crate) fn check(&self, token: &str, now_ms: f64) -> Result<(), CallError> {
        let invalid = || CallError::new("InvalidUploadToken", "the upload URL is not valid for this deployment");
        let (expires, tag) = token.split_once('.').ok_or_else(invalid)?;
        let expires: u64 = expires.parse().map_err(|_| invalid())?;
        let tag = kiln_blobs::parse_hex(tag).ok_or_else(invalid)?;
        self.mac(expires).verify_slice(&tag).map_err(|_| invalid())?;
        if (expires as f64) < now_ms {
            return Err(CallError::new("UploadUrlExpired", "the upload URL has expired (they are valid for an hour)"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_tokens_are_bound_to_their_deployment_and_expire() {
        let a = UploadKey::derive(&[7; 32], "a");
        let b = UploadKey::derive(&[7; 32], "b");
        let token = a.token(1_000.0);
        assert!(a.check(&token, 2_000.0).is_ok());
        assert_eq!(b.check(&token, 2_000.0).unwrap_err().code, "InvalidUploadToken");
        assert_eq!(a.check(&token, 1_000.0 + UPLOAD_TTL_MS + 1.0).unwrap_err().code, "UploadUrlExpired");
        let forged = token.replacen(|c: char| c.is_ascii_digit(), "9", 1);
        assert_eq!(a.check(&forged, 2_000.0).unwrap_err().code, "InvalidUploadToken");
        assert_eq!(a.check("nonsense", 2_000.0).unwrap_err().code, "InvalidUploadToken");
    }
}
