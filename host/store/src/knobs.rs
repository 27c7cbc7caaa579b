//! Tunables of the store, with their defaults (the `kiln` binary reads the `KILN_*` overrides
//! named below into them).

use std::time::Duration;

/// Per-transaction limits. The defaults are Convex's documented limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransactionLimits {
    /// Most document bytes a transaction may read.
    pub max_bytes_read: usize,
    /// Most document bytes a transaction may write.
    pub max_bytes_written: usize,
    /// Most documents a transaction may scan (read from an index, before filters).
    pub max_documents_scanned: usize,
    /// Most documents a transaction may write.
    pub max_documents_written: usize,
    /// Most index ranges (queries and point reads) a transaction may read.
    pub max_index_ranges: usize,
}

impl Default for TransactionLimits {
    fn default() -> Self {
        TransactionLimits {
            max_bytes_read: 16 << 20,
            max_bytes_written: 16 << 20,
            max_documents_scanned: 32_000,
            max_documents_written: 16_000,
            max_index_ranges: 4_096,
        }
    }
}

impl TransactionLimits {
    /// No limits: for the store's own maintenance transactions (schema checks).
    pub fn unlimited() -> Self {
        TransactionLimits {
            max_bytes_read: usize::MAX,
            max_bytes_written: usize::MAX,
            max_documents_scanned: usize::MAX,
            max_documents_written: usize::MAX,
            max_index_ranges: usize::MAX,
        }
    }
}

/// Configuration of one store (one deployment).
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Memory budget of the document cache, in bytes (`KILN_CACHE_BYTES`).
    pub cache_bytes: usize,
    /// How long recent commits are kept for conflict checks and subscription refreshes
    /// (`KILN_COMMIT_LOG_SECS`). A transaction older than this fails with `SnapshotTooOld`.
    pub commit_log_age: Duration,
    /// Memory budget of the recent-commit log, in bytes (`KILN_COMMIT_LOG_BYTES`).
    pub commit_log_bytes: usize,
    /// How long old revisions stay readable before pruning (`KILN_REVISION_RETENTION_SECS`).
    pub revision_retention: Duration,
    /// How often the pruner runs (`KILN_PRUNE_INTERVAL_SECS`); zero disables it.
    pub prune_interval: Duration,
    /// Revisions examined per pruning step (`KILN_PRUNE_BATCH_ROWS`).
    pub prune_batch_rows: usize,
    /// Largest batch a query stream fetches from persistence at once (`KILN_SCAN_BATCH`).
    pub scan_batch: usize,
    /// Documents per index-backfill batch (`KILN_BACKFILL_BATCH`).
    pub backfill_batch: usize,
    /// Limits for user transactions.
    pub limits: TransactionLimits,
    /// Where search indexes keep their files (one directory per index); `None` keeps them
    /// in memory and rebuilds them on every start.
    pub search_dir: Option<std::path::PathBuf>,
    /// How often recent writes are merged into the search indexes on disk
    /// (`KILN_SEARCH_MERGE_MS`).
    pub search_merge_interval: Duration,
    /// How long a search index keeps older views for transactions at older snapshots
    /// (`KILN_SEARCH_SNAPSHOT_SECS`); a search at a snapshot older than every view kept gets
    /// `SnapshotTooOld`.
    pub search_snapshot_age: Duration,
    /// Memory budget of the recent writes search indexes hold before merging them, in bytes
    /// (`KILN_SEARCH_MEMORY_BYTES`): over it, merges run at once and older views are dropped.
    pub search_memory_bytes: usize,
    /// How often a changed vector index saves its graph (`KILN_VECTOR_SAVE_SECS`); a restart
    /// after a crash catches up from the last save.
    pub vector_save_interval: Duration,
    /// Memory the vector indexes' graphs of one store may take (`KILN_VECTOR_MEMORY_BYTES`):
    /// past it, writes that add vectors are refused with `VectorIndexMemoryExceeded`.
    pub vector_memory_bytes: usize,
    /// How vector indexes' graphs are built and searched.
    pub vector: kiln_search::VectorConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_bytes: 32 << 20,
            commit_log_age: Duration::from_secs(60),
            commit_log_bytes: 32 << 20,
            revision_retention: Duration::from_secs(300),
            prune_interval: Duration::from_secs(30),
            prune_batch_rows: 10_000,
            scan_batch: 256,
            backfill_batch: 1_000,
            limits: TransactionLimits::default(),
            search_dir: None,
            search_merge_interval: Duration::from_secs(1),
            search_snapshot_age: Duration::from_secs(30),
            search_memory_bytes: 64 << 20,
            vector_save_interval: Duration::from_secs(30),
            vector_memory_bytes: 2 << 30,
            vector: kiln_search::VectorConfig::default(),
        }
    }
}
