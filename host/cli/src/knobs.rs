//! The `KILN_*` environment variables, read into the libraries' configuration structs. Only
//! this binary reads them: the libraries' defaults are pure.

use std::path::PathBuf;
use std::time::Duration;

use kiln_runtime::RuntimeConfig;
use kiln_server::ServerConfig;
use kiln_sqlite::SqliteOptions;
use kiln_store::StoreConfig;

/// The PostgreSQL backend's knobs for the database at `url`: `KILN_POSTGRES_POOL_SIZE`,
/// `KILN_POSTGRES_MAX_BATCH`, `KILN_POSTGRES_CONNECT_TIMEOUT_SECS`, `KILN_POSTGRES_LEASE_SECS`.
pub fn postgres_options(url: &str) -> kiln_postgres::PostgresOptions {
    let mut o = kiln_postgres::PostgresOptions::new(url);
    set_usize("KILN_POSTGRES_POOL_SIZE", &mut o.pool_size);
    set_usize("KILN_POSTGRES_MAX_BATCH", &mut o.max_batch);
    set_secs("KILN_POSTGRES_CONNECT_TIMEOUT_SECS", &mut o.connect_timeout);
    set_secs("KILN_POSTGRES_LEASE_SECS", &mut o.lease_ttl);
    // Hosts sharing the database take deployments whose leases are free; they never wait.
    o.lock_wait = Duration::ZERO;
    o
}

/// How often a host sharing its database reads the other hosts and the leases
/// (`KILN_CLUSTER_POLL_MS`, default 500).
pub fn cluster_poll() -> Duration {
    env_u64("KILN_CLUSTER_POLL_MS")
        .map_or(Duration::from_millis(500), Duration::from_millis)
        .max(Duration::from_millis(50))
}

/// A `KILN_*` number; an unparsable value is ignored with a warning.
fn env_u64(name: &str) -> Option<u64> {
    let raw = std::env::var(name).ok()?;
    match raw.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => {
            eprintln!("warning: ignoring {name}={raw:?}: not a number");
            None
        }
    }
}

fn set_usize(name: &str, slot: &mut usize) {
    if let Some(v) = env_u64(name) {
        *slot = usize::try_from(v).unwrap_or(usize::MAX);
    }
}

fn set_secs(name: &str, slot: &mut Duration) {
    if let Some(v) = env_u64(name) {
        *slot = Duration::from_secs(v);
    }
}

/// The store's knobs: `KILN_CACHE_BYTES`, `KILN_COMMIT_LOG_SECS`, `KILN_COMMIT_LOG_BYTES`,
/// `KILN_REVISION_RETENTION_SECS`, `KILN_PRUNE_INTERVAL_SECS`, `KILN_PRUNE_BATCH_ROWS`,
/// `KILN_SCAN_BATCH`, `KILN_BACKFILL_BATCH`, `KILN_SEARCH_MERGE_MS`, `KILN_SEARCH_SNAPSHOT_SECS`,
/// `KILN_SEARCH_MEMORY_BYTES`, `KILN_VECTOR_SAVE_SECS`, `KILN_VECTOR_MEMORY_BYTES`,
/// `KILN_VECTOR_EF_SEARCH`.
fn store_config() -> StoreConfig {
    let mut c = StoreConfig::default();
    set_usize("KILN_CACHE_BYTES", &mut c.cache_bytes);
    set_secs("KILN_COMMIT_LOG_SECS", &mut c.commit_log_age);
    set_usize("KILN_COMMIT_LOG_BYTES", &mut c.commit_log_bytes);
    set_secs("KILN_REVISION_RETENTION_SECS", &mut c.revision_retention);
    set_secs("KILN_PRUNE_INTERVAL_SECS", &mut c.prune_interval);
    set_usize("KILN_PRUNE_BATCH_ROWS", &mut c.prune_batch_rows);
    set_usize("KILN_SCAN_BATCH", &mut c.scan_batch);
    set_usize("KILN_BACKFILL_BATCH", &mut c.backfill_batch);
    if let Some(ms) = env_u64("KILN_SEARCH_MERGE_MS") {
        c.search_merge_interval = Duration::from_millis(ms.max(10));
    }
    set_secs("KILN_SEARCH_SNAPSHOT_SECS", &mut c.search_snapshot_age);
    set_usize("KILN_SEARCH_MEMORY_BYTES", &mut c.search_memory_bytes);
    set_secs("KILN_VECTOR_SAVE_SECS", &mut c.vector_save_interval);
    set_usize("KILN_VECTOR_MEMORY_BYTES", &mut c.vector_memory_bytes);
    // Recall against speed: docs/performance.md has the trade measured.
    if let Some(n) = env_u64("KILN_VECTOR_EF_SEARCH") {
        c.vector.expansion_search = (n as usize).max(16);
    }
    c
}

/// The runtime's knobs (the data and cache directories come from the command line).
fn runtime_config() -> RuntimeConfig {
    let mut c = RuntimeConfig { store: store_config(), ..RuntimeConfig::default() };
    set_secs("KILN_MUTATION_RECORD_RETENTION_SECS", &mut c.mutation_record_retention);
    set_secs("KILN_SCHEDULED_RETENTION_SECS", &mut c.scheduled_retention);
    set_usize("KILN_QUERY_CACHE_BYTES", &mut c.query_cache_bytes);
    set_usize("KILN_COMPILE_CACHE_BYTES", &mut c.compile_cache_bytes);
    if let Some(n) = env_u64("KILN_HEAP_TOUCH_FAULTS") {
        c.heap_touch_faults = n;
    }
    c.perf_map = env_u64("KILN_PERF_MAP").is_some_and(|n| n != 0);
    if let Some(n) = env_u64("KILN_WORKER_THREADS") {
        c.worker_threads = (n as usize).max(1);
    }
    if let Some(n) = env_u64("KILN_ACTION_THREADS") {
        c.action_threads = (n as usize).max(1);
    }
    if let Some(n) = env_u64("KILN_ACTIVE_WAIT_US") {
        // Longer waits would hold a reactor thread for calls that are not small.
        c.active_wait = Duration::from_micros(n.min(10_000));
    }
    if let Some(n) = env_u64("KILN_DEMOTE_AFTER_MS") {
        c.demote_after = Duration::from_millis(n.max(1));
    }
    c
}

/// Every deployment's SQLite file: `KILN_SQLITE_CACHE_KIB`, `KILN_SQLITE_CHECKPOINT_PAGES`,
/// `KILN_SQLITE_BACKGROUND_CHECKPOINT=0` (checkpoint on the writer), `KILN_SQLITE_COMMIT_LOG=0`
/// (write commits into their tables directly), `KILN_SQLITE_MATERIALIZE_COMMITS`.
pub fn sqlite_options() -> SqliteOptions {
    let mut o = SqliteOptions::default();
    if let Some(n) = env_u64("KILN_SQLITE_CACHE_KIB") {
        o.cache_kib = u32::try_from(n).unwrap_or(u32::MAX);
    }
    if let Some(n) = env_u64("KILN_SQLITE_CHECKPOINT_PAGES") {
        o.checkpoint_pages = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    }
    if let Some(n) = env_u64("KILN_SQLITE_BACKGROUND_CHECKPOINT") {
        o.background_checkpoint = n != 0;
    }
    if let Some(n) = env_u64("KILN_SQLITE_COMMIT_LOG") {
        o.commit_log = n != 0;
    }
    if let Some(n) = env_u64("KILN_SQLITE_MATERIALIZE_COMMITS") {
        o.materialize_commits = usize::try_from(n).unwrap_or(usize::MAX).max(1);
    }
    o
}

/// The server's knobs: `KILN_MAX_QUERIES_PER_SOCKET`, `KILN_MAX_INFLIGHT_PER_DEPLOYMENT`,
/// `KILN_MAX_BODY_BYTES`, `KILN_CLIENT_TIMEOUT_SECS`, `KILN_METRICS_TOKEN`, `KILN_PUBLIC_URL`,
/// `KILN_PUBLIC_SITE_URL`, `KILN_MAX_FILE_BYTES`, `KILN_MAX_HTTP_ACTION_BODY_BYTES`, the push limits
/// (`KILN_PUSH_MAX_SOURCE_BYTES`, `KILN_PUSH_LOAD_TIME_MS`, `KILN_PUSH_LOAD_MEMORY_BYTES`,
/// `KILN_PUSH_CONCURRENT_COMPILES`), `KILN_MAX_IMPORT_BYTES`, and the
/// runtime's and store's (the listen address and data directory come from the command line,
/// which also reads `KILN_LISTEN` and `KILN_DATA_DIR`).
pub fn server_config() -> ServerConfig {
    let mut c = ServerConfig { runtime: runtime_config(), ..ServerConfig::default() };
    c.rerun_concurrency = c.runtime.worker_threads;
    set_usize("KILN_MAX_QUERIES_PER_SOCKET", &mut c.max_queries_per_socket);
    set_usize("KILN_MAX_INFLIGHT_PER_DEPLOYMENT", &mut c.max_inflight_per_deployment);
    set_usize("KILN_MAX_BODY_BYTES", &mut c.max_body_bytes);
    if let Some(n) = env_u64("KILN_CLIENT_TIMEOUT_SECS") {
        c.client_timeout = Duration::from_secs(n.max(1));
    }
    c.metrics_token = std::env::var("KILN_METRICS_TOKEN").ok().filter(|t| !t.is_empty());
    c.public_url = std::env::var("KILN_PUBLIC_URL").ok().filter(|u| !u.is_empty());
    c.public_site_url = std::env::var("KILN_PUBLIC_SITE_URL").ok().filter(|u| !u.is_empty());
    if let Some(n) = env_u64("KILN_MAX_HTTP_ACTION_BODY_BYTES") {
        c.max_http_action_body_bytes = n as usize;
    }
    if let Some(n) = env_u64("KILN_MAX_FILE_BYTES") {
        c.limits.max_file_bytes = n;
    }
    if let Some(n) = env_u64("KILN_MAX_IMPORT_BYTES") {
        c.max_import_bytes = n;
    }
    set_usize("KILN_PUSH_MAX_SOURCE_BYTES", &mut c.push.max_source_bytes);
    if let Some(n) = env_u64("KILN_PUSH_LOAD_TIME_MS") {
        c.push.load_time = Duration::from_millis(n.max(1));
    }
    set_usize("KILN_PUSH_LOAD_MEMORY_BYTES", &mut c.push.load_memory);
    set_usize("KILN_PUSH_CONCURRENT_COMPILES", &mut c.push.concurrent_compiles);
    c
}

/// Where compiled components are cached, when `KILN_CACHE_DIR` says (else under the data
/// directory).
pub fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("KILN_CACHE_DIR").map(PathBuf::from)
}

/// How `kiln build`, `deploy` and `dev` build apps: esbuild from `KILN_ESBUILD` when set.
pub fn build_options() -> kiln_guest_sdk::BuildOptions {
    kiln_guest_sdk::BuildOptions {
        esbuild: std::env::var_os("KILN_ESBUILD").map(PathBuf::from),
        ..kiln_guest_sdk::BuildOptions::default()
    }
}
