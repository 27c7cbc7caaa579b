//! The store's error type, with stable codes.

use kiln_persistence::{PersistenceError, Timestamp};
use kiln_value::ValueError;
use thiserror::Error;

/// Which transaction limit was exceeded.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// Document bytes read.
    BytesRead,
    /// Document bytes written.
    BytesWritten,
    /// Documents scanned.
    DocumentsScanned,
    /// Documents written.
    DocumentsWritten,
    /// Index ranges read.
    IndexRanges,
}

impl LimitKind {
    fn describe(self) -> &'static str {
        match self {
            LimitKind::BytesRead => "bytes read",
            LimitKind::BytesWritten => "bytes written",
            LimitKind::DocumentsScanned => "documents read",
            LimitKind::DocumentsWritten => "documents written",
            LimitKind::IndexRanges => "reads (queries and gets)",
        }
    }
}

/// Everything the store can refuse or fail at.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Another transaction committed a write to something this one read. Retryable.
    #[error("documents read from or written to table {table:?} changed while this transaction ran; retry it")]
    Conflict {
        /// The table whose data changed, when known.
        table: String,
        /// The commit that changed it; a retry should read at or after it
        /// (see [`crate::Store::wait_for`]).
        conflicting_ts: Timestamp,
        /// A hash of the index key whose change caused the conflict (0 when unknown): writers
        /// that conflict on the same key can take turns (see
        /// [`crate::Transaction::hold_until_validated`]).
        key: u64,
    },
    /// The transaction's snapshot is older than the store retains. Retryable.
    #[error("transaction snapshot at {ts} is too old; retry it")]
    SnapshotTooOld {
        /// The snapshot timestamp.
        ts: Timestamp,
    },
    /// A snapshot newer than the newest published commit was asked for.
    #[error("snapshot at {ts} is not published yet")]
    SnapshotInFuture {
        /// The snapshot timestamp.
        ts: Timestamp,
    },
    /// A value, id or validator problem.
    #[error(transparent)]
    Value(#[from] ValueError),
    /// A table name that is not an identifier, or a reserved one.
    #[error("invalid table name {name:?}: {reason}")]
    InvalidTableName {
        /// The name given.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A query or index definition naming an index that does not exist.
    #[error("index {0:?} not found")]
    IndexNotFound(String),
    /// An index that is still being backfilled.
    #[error("index {0:?} is still being backfilled")]
    IndexNotReady(String),
    /// An index definition that cannot be built.
    #[error("invalid index {index:?}: {reason}")]
    InvalidIndex {
        /// The index name.
        index: String,
        /// What is wrong.
        reason: String,
    },
    /// A query that cannot be parsed or run.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// A filter expression that fails on a document.
    #[error("filter failed: {0}")]
    FilterFailed(String),
    /// A pagination cursor that was altered, belongs to another query or is malformed.
    #[error("InvalidCursor: {0}")]
    InvalidCursor(&'static str),
    /// A patch, replace or delete of a document that does not exist.
    #[error("document {0:?} does not exist")]
    DocumentNotFound(String),
    /// An attempt to change `_id` or `_creationTime`.
    #[error("system field {0:?} cannot be modified")]
    SystemFieldModified(String),
    /// A write by an app to a system table it may only read.
    #[error("system table {0} is read-only: only Kiln writes it")]
    SystemTableReadOnly(String),
    /// A document with its own id (a snapshot import) that this deployment cannot take.
    #[error("{0}")]
    ImportConflict(String),
    /// A write that breaks the deployment's schema.
    #[error("document in table {table:?} does not match the schema: {message} (at `{path}`)")]
    SchemaViolation {
        /// The table written to.
        table: String,
        /// The field path where the mismatch is.
        path: String,
        /// What does not match.
        message: String,
    },
    /// A schema that cannot be parsed or applied.
    #[error("invalid schema: {0}")]
    InvalidSchema(String),
    /// A transaction limit was exceeded.
    #[error("too many {} in a single transaction (limit: {limit})", kind.describe())]
    LimitExceeded {
        /// Which limit.
        kind: LimitKind,
        /// Its value.
        limit: usize,
    },
    /// A write in a read-only transaction.
    #[error("this transaction is read-only (queries cannot write)")]
    ReadOnly,
    /// A query stream id that is not open.
    #[error("query stream {0} is not open")]
    StreamNotFound(u32),
    /// The persistence backend failed.
    #[error(transparent)]
    Persistence(#[from] PersistenceError),
    /// The store stopped accepting writes after a persistence failure; reopen it.
    #[error("the store stopped accepting commits after a storage failure: {0}")]
    Failed(String),
    /// The store was shut down.
    #[error("the store is closed")]
    Closed,
    /// A search query was refused or a search index failed (the search crate's code).
    #[error("{message}")]
    Search {
        /// The stable code (`InvalidSearchQuery`, `SearchQueryTooManyTerms`, …).
        code: &'static str,
        /// What happened.
        message: String,
    },
    /// The vector indexes' graphs take more memory than the store's budget allows.
    #[error(
        "vector indexes take {used} bytes of memory, over this deployment's budget of {budget}: writes that add vectors are refused until some are deleted"
    )]
    VectorMemoryExceeded {
        /// Bytes the graphs take.
        used: usize,
        /// The budget (`vector_memory_bytes`).
        budget: usize,
    },
}

impl StoreError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Conflict { .. } => "Conflict",
            StoreError::SnapshotTooOld { .. } => "SnapshotTooOld",
            StoreError::SnapshotInFuture { .. } => "SnapshotInFuture",
            StoreError::Value(e) => e.code(),
            StoreError::InvalidTableName { .. } => "InvalidTableName",
            StoreError::IndexNotFound(_) => "IndexNotFound",
            StoreError::IndexNotReady(_) => "IndexNotReady",
            StoreError::InvalidIndex { .. } => "InvalidIndex",
            StoreError::InvalidQuery(_) => "InvalidQuery",
            StoreError::FilterFailed(_) => "FilterFailed",
            StoreError::InvalidCursor(_) => "InvalidCursor",
            StoreError::DocumentNotFound(_) => "DocumentNotFound",
            StoreError::SystemFieldModified(_) => "SystemFieldModified",
            StoreError::SystemTableReadOnly(_) => "SystemTableReadOnly",
            StoreError::ImportConflict(_) => "ImportConflict",
            StoreError::SchemaViolation { .. } => "SchemaViolation",
            StoreError::InvalidSchema(_) => "InvalidSchema",
            StoreError::LimitExceeded { kind, .. } => match kind {
                LimitKind::BytesRead => "TooManyBytesRead",
                LimitKind::BytesWritten => "TooManyBytesWritten",
                LimitKind::DocumentsScanned => "TooManyDocumentsRead",
                LimitKind::DocumentsWritten => "TooManyDocumentsWritten",
                LimitKind::IndexRanges => "TooManyReads",
            },
            StoreError::ReadOnly => "ReadOnlyTransaction",
            StoreError::StreamNotFound(_) => "QueryStreamNotFound",
            StoreError::Persistence(e) => e.code(),
            StoreError::Failed(_) => "StoreFailed",
            StoreError::Closed => "StoreClosed",
            StoreError::Search { code, .. } => code,
            StoreError::VectorMemoryExceeded { .. } => "VectorIndexMemoryExceeded",
        }
    }

    /// For a conflict, the timestamp a retry should wait for before beginning.
    pub fn retry_after(&self) -> Option<Timestamp> {
        match self {
            StoreError::Conflict { conflicting_ts, .. } => Some(*conflicting_ts),
            _ => None,
        }
    }

    /// For a conflict, the hash of the key it happened on (0 when unknown).
    pub fn conflict_key(&self) -> u64 {
        match self {
            StoreError::Conflict { key, .. } => *key,
            _ => 0,
        }
    }

    /// Whether running the whole transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Conflict { .. } | StoreError::SnapshotTooOld { .. })
    }
}

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
