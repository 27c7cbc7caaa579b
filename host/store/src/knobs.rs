//! Tunables of the store, with their defaults and `KILN_*` environment overrides.

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
        }
    }
}

impl StoreConfig {
    /// The defaults, overridden by any `KILN_*` variables set in the environment.
    /// A variable that does not parse is ignored with a warning.
    pub fn from_env() -> Self {
        let mut c = StoreConfig::default();
        override_usize("KILN_CACHE_BYTES", &mut c.cache_bytes);
        override_secs("KILN_COMMIT_LOG_SECS", &mut c.commit_log_age);
        override_usize("KILN_COMMIT_LOG_BYTES", &mut c.commit_log_bytes);
        override_secs("KILN_REVISION_RETENTION_SECS", &mut c.revision_retention);
        override_secs("KILN_PRUNE_INTERVAL_SECS", &mut c.prune_interval);
        override_usize("KILN_PRUNE_BATCH_ROWS", &mut c.prune_batch_rows);
        override_usize("KILN_SCAN_BATCH", &mut c.scan_batch);
        override_usize("KILN_BACKFILL_BATCH", &mut c.backfill_batch);
        c
    }
}

/// A `KILN_*` number from the environment; an unparsable value is ignored with a warning.
/// (Every layer's knobs read their overrides through this.)
pub fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            tracing::warn!(variable = name, value = %raw, "ignoring unparsable knob");
            None
        }
    }
}

fn override_usize(name: &str, slot: &mut usize) {
    if let Some(v) = env_u64(name) {
        *slot = usize::try_from(v).unwrap_or(usize::MAX);
    }
}

fn override_secs(name: &str, slot: &mut Duration) {
    if let Some(v) = env_u64(name) {
        *slot = Duration::from_secs(v);
    }
}
