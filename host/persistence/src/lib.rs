//! The `Persistence` trait: the store's only way to durable storage.
//!
//! A backend keeps every revision of every document and index entry, stamped with the commit
//! timestamp that wrote it; a snapshot read at `ts` sees, per key, the latest revision at or
//! before `ts`. Backends know nothing of values, schemas or transactions: documents and the
//! catalog are opaque bytes, index keys are ordered byte strings.

use std::cell::Cell;
use std::fmt;

pub mod cluster;
#[cfg(feature = "conformance")]
pub mod conformance;

use async_trait::async_trait;
use kiln_value::{DocumentId, InternalId, TableNumber};
use thiserror::Error;

thread_local! {
    static BLOCKING_READS: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as one that may block on storage (a worker that runs calls and waits for
/// their reads anyway, not an async runtime's thread): backends then serve its reads on it
/// directly instead of handing each to a blocking pool and waking it when done.
pub fn allow_blocking_reads() {
    BLOCKING_READS.with(|b| b.set(true));
}

/// Whether this thread may block on storage reads (see [`allow_blocking_reads`]).
pub fn blocking_reads_allowed() -> bool {
    BLOCKING_READS.with(Cell::get)
}

/// A commit timestamp: nanoseconds since the Unix epoch, strictly increasing per deployment.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The timestamp before any commit.
    pub const ZERO: Timestamp = Timestamp(0);

    /// The next timestamp.
    pub fn succ(self) -> Timestamp {
        Timestamp(self.0.saturating_add(1))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The number of an index within a deployment.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IndexId(pub u32);

/// A half-open byte range `[start, end)`; `end == None` means unbounded.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyRange {
    /// Inclusive lower bound.
    pub start: Vec<u8>,
    /// Exclusive upper bound, if any.
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange { start: Vec::new(), end: None }
    }

    /// The single key `key`.
    pub fn point(key: &[u8]) -> KeyRange {
        let mut end = key.to_vec();
        end.push(0);
        KeyRange { start: key.to_vec(), end: Some(end) }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }

    /// Whether the range holds no key.
    pub fn is_empty(&self) -> bool {
        self.end.as_deref().is_some_and(|e| e <= self.start.as_slice())
    }
}

/// Scan direction.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Order {
    /// Ascending key order.
    Asc,
    /// Descending key order.
    Desc,
}

/// One stored revision of a document. `value == None` is a deletion (tombstone).
#[derive(Clone, Debug, PartialEq)]
pub struct DocumentRevision {
    /// The document.
    pub id: DocumentId,
    /// The commit that wrote this revision.
    pub ts: Timestamp,
    /// The encoded document, or `None` if this revision deletes it.
    pub value: Option<Vec<u8>>,
}

/// A live document found by a scan, with the key it was found under.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanHit {
    /// The index key (for by-id scans, the 16 bytes of the internal id).
    pub key: Vec<u8>,
    /// The document's latest revision at the scan's timestamp (never a tombstone).
    pub revision: DocumentRevision,
}

/// A write of one index entry: `doc == None` removes the key.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexWrite {
    /// The index.
    pub index: IndexId,
    /// The full index key.
    pub key: Vec<u8>,
    /// The document the key now points to, or `None` for a tombstone.
    pub doc: Option<DocumentId>,
}

/// Everything one transaction commit writes; a backend applies it atomically.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommitRecord {
    /// The commit timestamp, greater than every earlier commit's.
    pub ts: Timestamp,
    /// New document revisions (`None` deletes).
    pub documents: Vec<(DocumentId, Option<Vec<u8>>)>,
    /// Index entry revisions.
    pub indexes: Vec<IndexWrite>,
    /// The whole catalog, when this commit changes it.
    pub catalog: Option<Vec<u8>>,
}

/// What a backend recovers on open, without reading documents.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecoveredState {
    /// The newest commit timestamp, or zero for an empty store.
    pub max_ts: Timestamp,
    /// The latest catalog written, if any.
    pub catalog: Option<Vec<u8>>,
    /// The timestamp up to which old revisions have been pruned.
    pub pruned_up_to: Timestamp,
}

/// Progress of one bounded step of background maintenance.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct StepResult {
    /// Rows removed in this step.
    pub rows_deleted: u64,
    /// True when there is nothing left to do.
    pub done: bool,
}

/// Errors from a persistence backend.
#[derive(Clone, Debug, Error)]
pub enum PersistenceError {
    /// The underlying storage failed (I/O, database error).
    #[error("storage failure: {0}")]
    Storage(String),
    /// The disk is full: nothing was written; writes may succeed once space is freed.
    #[error("StorageFull: the disk is full: {0}")]
    Full(String),
    /// The storage cannot be written (a read-only file or directory); reads still work.
    #[error("StorageReadOnly: the storage cannot be written: {0}")]
    ReadOnly(String),
    /// The stored data is inconsistent.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The backend is already open elsewhere (another process or instance).
    #[error("storage is locked by another instance: {0}")]
    Locked(String),
    /// The backend has shut down.
    #[error("persistence is closed")]
    Closed,
}

impl PersistenceError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            PersistenceError::Storage(_) => "StorageFailure",
            PersistenceError::Full(_) => "StorageFull",
            PersistenceError::ReadOnly(_) => "StorageReadOnly",
            PersistenceError::Corrupt(_) => "StorageCorrupt",
            PersistenceError::Locked(_) => "StorageLocked",
            PersistenceError::Closed => "StorageClosed",
        }
    }

    /// Whether a commit that failed with this error left the storage as it was, so that later
    /// commits may be tried (a full disk, read-only storage, a failed write); not after
    /// corruption, a lock held elsewhere or a closed backend.
    pub fn leaves_storage_intact(&self) -> bool {
        matches!(self, PersistenceError::Storage(_) | PersistenceError::Full(_) | PersistenceError::ReadOnly(_))
    }
}

/// Result type of persistence calls.
pub type Result<T> = std::result::Result<T, PersistenceError>;

/// Durable, versioned storage for one deployment.
///
/// Opens the persistence of deployments: the seam through which the binary chooses the storage
/// backend (SQLite files, PostgreSQL) for the runtime, which only names deployments.
#[async_trait]
pub trait PersistenceFactory: Send + Sync + 'static {
    /// Opens (creating it if new) the persistence of deployment `name` (1-64 of
    /// `[A-Za-z0-9_-]`).
    async fn open(&self, name: &str) -> Result<std::sync::Arc<dyn Persistence>>;
}

/// Implementations must be safe to call concurrently. `commit` is acknowledged only when the
/// record is durable; concurrent commits should be batched into one durable write.
#[async_trait]
pub trait Persistence: Send + Sync + 'static {
    /// Reads what the store needs to start: newest timestamp, catalog, pruning progress.
    async fn recover(&self) -> Result<RecoveredState>;

    /// Durably and atomically applies one commit.
    async fn commit(&self, record: CommitRecord) -> Result<()>;

    /// The latest revision of `id` at or before `ts` (possibly a tombstone), if any.
    async fn get_document(&self, id: DocumentId, ts: Timestamp) -> Result<Option<DocumentRevision>>;

    /// Up to `limit` live documents of `table` whose internal ids lie in `range`, as of `ts`,
    /// in id order.
    async fn scan_table(
        &self,
        table: TableNumber,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>>;

    /// Up to `limit` live entries of `index` with keys in `range`, as of `ts`, in key order,
    /// each joined with its document's revision as of `ts`.
    async fn scan_index(
        &self,
        index: IndexId,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>>;

    /// Up to `limit` revisions of `table` (tombstones included) committed in `(since, until]`,
    /// in (timestamp, id) order, after the revision `after` names (from the first when
    /// `None`): what changed in a table between two commits. `until` must be published; the
    /// caller keeps those revisions from being pruned.
    async fn scan_revisions(
        &self,
        table: TableNumber,
        since: Timestamp,
        until: Timestamp,
        after: Option<(Timestamp, InternalId)>,
        limit: usize,
    ) -> Result<Vec<DocumentRevision>>;

    /// Writes index entries produced by a backfill, all stamped `ts` (idempotent).
    async fn write_index_entries(
        &self,
        index: IndexId,
        ts: Timestamp,
        entries: Vec<(Vec<u8>, DocumentId)>,
    ) -> Result<()>;

    /// Deletes up to `max_rows` entries of a dropped index.
    async fn delete_index_entries(&self, index: IndexId, max_rows: usize) -> Result<StepResult>;

    /// Removes up to about `max_rows` revisions that no read at or after `cutoff` can see:
    /// those superseded by a revision at or before `cutoff`, and tombstones at or before it.
    async fn prune(&self, cutoff: Timestamp, max_rows: usize) -> Result<StepResult>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = KeyRange::point(b"ab");
        assert!(r.contains(b"ab"));
        assert!(!r.contains(b"ab\0"));
        assert!(!r.contains(b"a"));
        assert!(KeyRange::all().contains(b"\xff\xff"));
        assert!(KeyRange { start: b"b".to_vec(), end: Some(b"a".to_vec()) }.is_empty());
    }
}
