//! Tunables of the runtime and of deployments, with their defaults (the `kiln` binary reads
//! `KILN_*` overrides into them).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use kiln_store::StoreConfig;

pub use crate::pool::Priority;

/// Process-wide configuration.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where deployments' components (`<name>.wasm`) live (`KILN_DATA_DIR`, default `./kiln-data`;
    /// the binary keeps SQLite files there too).
    pub data_dir: PathBuf,
    /// Where compiled components are cached as `.cwasm` (`KILN_CACHE_DIR`, default
    /// `<data_dir>/cache`); `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// Threads that run guest code (`KILN_WORKER_THREADS`, default 2 per core, at least 4).
    pub worker_threads: usize,
    /// How long the caller of a call that is the only one on the workers waits for its reply
    /// actively, yielding its core, instead of letting its core idle (`KILN_ACTIVE_WAIT_US`,
    /// default 100 µs, at most 10 ms; 0 turns it off): see `pool.rs`.
    pub active_wait: Duration,
    /// Threads that run actions (`KILN_ACTION_THREADS`, default 16): a pool of their own, so
    /// that an action waiting on `fetch` or a timer never holds a worker of queries and
    /// mutations.
    pub action_threads: usize,
    /// The OS priority of those threads (default `Idle`: a spinning action takes no core a
    /// query or mutation wants; a busy host runs actions only on what cores are left).
    pub action_priority: Priority,
    /// The OS priority a long query or mutation runs on at (default `Low(10)`).
    pub demoted_priority: Priority,
    /// A query or mutation still running after this long gives up its worker's priority: a
    /// new worker takes its place and its own thread runs on at `demoted_priority` (default
    /// 5 ms; see `pool.rs`).
    pub demote_after: Duration,
    /// Stack size of those threads; guests run on them.
    pub worker_stack_bytes: usize,
    /// Largest native stack a guest may use before it traps with a stack overflow.
    pub max_wasm_stack: usize,
    /// How often the epoch advances (the granularity of deadlines).
    pub epoch_tick: Duration,
    /// Largest linear memory any deployment may be allowed (the pooling allocator's slot size).
    pub max_memory_bytes: usize,
    /// Linear memory kept mapped between instances of a slot (dirty pages are reset in place).
    pub keep_resident_bytes: usize,
    /// Bytes of each table kept mapped between instances and reset in place: without it a
    /// QuickJS guest faults its function table in again on every call (about 15 % of
    /// trivial-query throughput).
    pub table_keep_resident_bytes: usize,
    /// Minor page faults that make a call count as faulting when deciding whether calls
    /// should write their heap's pages first (`KILN_HEAP_TOUCH_FAULTS`, default 8; 0 makes
    /// every call do it).
    pub heap_touch_faults: u64,
    /// How often usage totals are written to the deployments' stores.
    pub usage_flush_interval: Duration,
    /// How long idempotency records of mutations are kept (`KILN_MUTATION_RECORD_RETENTION_SECS`,
    /// default one hour): a client resending a mutation later than this may apply it twice.
    pub mutation_record_retention: Duration,
    /// How long finished scheduled functions stay in `_scheduled_functions`
    /// (`KILN_SCHEDULED_RETENTION_SECS`, default 7 days, as Convex keeps them).
    pub scheduled_retention: Duration,
    /// Whether guests are metered in fuel (fuel limits and usage need it; turning it off
    /// exists to measure its cost).
    pub meter_fuel: bool,
    /// Bytes of query results each deployment keeps for reuse (`KILN_QUERY_CACHE_BYTES`,
    /// default 32 MiB; 0 turns the cache off).
    pub query_cache_bytes: usize,
    /// Whether compiled guest code is announced in `/tmp/perf-<pid>.map` so that `perf`
    /// can name guest functions (`KILN_PERF_MAP=1`; for profiling only).
    pub perf_map: bool,
    /// Memory for cranelift's per-function results, reused when a new component shares
    /// functions with one compiled before (every JavaScript app shares the runtime's); 0 off.
    pub compile_cache_bytes: usize,
    /// The configuration of every deployment's store.
    pub store: StoreConfig,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let data_dir = PathBuf::from("kiln-data");
        RuntimeConfig {
            cache_dir: Some(data_dir.join("cache")),
            data_dir,
            worker_threads: (2 * cores).max(4),
            active_wait: Duration::from_micros(100),
            action_threads: 16,
            action_priority: Priority::Idle,
            demoted_priority: Priority::Low(10),
            demote_after: Duration::from_millis(5),
            worker_stack_bytes: 16 << 20,
            max_wasm_stack: 2 << 20,
            epoch_tick: Duration::from_millis(1),
            max_memory_bytes: 256 << 20,
            keep_resident_bytes: 16 << 20,
            table_keep_resident_bytes: 1 << 20,
            heap_touch_faults: 8,
            usage_flush_interval: Duration::from_secs(2),
            mutation_record_retention: Duration::from_secs(3600),
            scheduled_retention: Duration::from_secs(7 * 24 * 3600),
            meter_fuel: true,
            query_cache_bytes: 32 << 20,
            perf_map: false,
            compile_cache_bytes: 64 << 20,
            store: StoreConfig::default(),
        }
    }
}

/// Limits of one deployment's calls.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Fuel per query or mutation call (about 1 s of guest work).
    pub query_mutation_fuel: u64,
    /// Fuel per action call.
    pub action_fuel: u64,
    /// Wall-clock deadline of a query or mutation call (host calls included).
    pub query_mutation_deadline: Duration,
    /// Wall-clock deadline of an action call.
    pub action_deadline: Duration,
    /// Linear memory cap of an instance.
    pub memory_bytes: usize,
    /// Queries and mutations of this deployment running at once.
    pub max_concurrency: usize,
    /// Actions of this deployment running at once (their waits hold no worker, so more than
    /// queries and mutations).
    pub max_concurrent_actions: usize,
    /// Depth of nested `runQuery`/`runMutation`/`runAction` calls.
    pub max_nesting: u32,
    /// Times a mutation is retried after an optimistic concurrency conflict (default 1,000).
    pub mutation_retries: u32,
    /// How long a mutation keeps being retried after conflicts before the conflict reaches its
    /// caller (default 10 s): under contention a mutation commits, late, rather than fail.
    pub mutation_retry_time: Duration,
    /// Log lines kept per call.
    pub log_lines: usize,
    /// Bytes kept per log line.
    pub log_line_bytes: usize,
    /// Largest argument or result, in accounted bytes.
    pub max_value_bytes: usize,
    /// Functions one call (with the calls it makes) may schedule (Convex: 1,000).
    pub max_scheduled_per_call: usize,
    /// Bytes of arguments one call may pass to the functions it schedules (Convex: 8 MiB).
    pub max_scheduled_args_bytes: usize,
    /// Scheduled functions of this deployment the scheduler runs at once.
    pub scheduler_concurrency: usize,
    /// Largest file one upload or `ctx.storage.store` may store (default 4 GiB).
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            query_mutation_fuel: 10_000_000_000,
            action_fuel: 600_000_000_000,
            query_mutation_deadline: Duration::from_secs(10),
            action_deadline: Duration::from_secs(600),
            memory_bytes: 64 << 20,
            max_concurrency: 4,
            max_concurrent_actions: 16,
            max_nesting: 8,
            mutation_retries: 1000,
            mutation_retry_time: Duration::from_secs(10),
            log_lines: 256,
            log_line_bytes: 4096,
            max_value_bytes: kiln_value::limits::MAX_VALUE_SIZE,
            max_scheduled_per_call: 1000,
            max_scheduled_args_bytes: 8 << 20,
            scheduler_concurrency: 32,
            max_file_bytes: 4 << 30,
        }
    }
}

/// Usage quotas of a deployment, enforced before each call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Quotas {
    /// Fuel per period; a call starts only while the period has fuel left, and never gets
    /// more than what is left.
    pub fuel_per_period: Option<u64>,
    /// The period's length.
    pub period: Duration,
}

/// Where actions may `fetch`: any public address by default; never a denied host; a
/// loopback, private, link-local or metadata address only for an allowed host.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchPolicy {
    /// Hosts that may be fetched even at addresses that are not public: `example.com`,
    /// `*.example.com`, `host:port`, an IP address, `[v6]:port`.
    pub allowed_hosts: Vec<String>,
    /// Hosts never fetched (same forms).
    pub denied_hosts: Vec<String>,
    /// Only allowed hosts may be fetched at all.
    pub only_allowed: bool,
    /// Redirects followed (each checked like the first request).
    pub max_redirects: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Largest response body.
    pub max_response_bytes: usize,
    /// Largest request body.
    pub max_request_bytes: usize,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            allowed_hosts: Vec::new(),
            denied_hosts: Vec::new(),
            only_allowed: false,
            max_redirects: 5,
            timeout: Duration::from_secs(30),
            max_response_bytes: 16 << 20,
            max_request_bytes: 16 << 20,
        }
    }
}

/// One deployment's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentConfig {
    /// Call limits.
    pub limits: Limits,
    /// Usage quotas.
    pub quotas: Quotas,
    /// Environment variables (`process.env`).
    pub env: BTreeMap<String, String>,
    /// The outgoing HTTP policy of actions.
    pub fetch: FetchPolicy,
    /// Where clients reach the deployment (`http://host:port`, with `/d/<name>` for all but
    /// the default deployment): the base of its files' URLs and upload URLs.
    pub public_url: String,
    /// Where its HTTP actions are served (`process.env.CONVEX_SITE_URL`).
    pub site_url: String,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig {
            limits: Limits::default(),
            quotas: Quotas::default(),
            env: BTreeMap::new(),
            fetch: FetchPolicy::default(),
            public_url: "http://127.0.0.1:3210".to_owned(),
            site_url: "http://127.0.0.1:3211".to_owned(),
        }
    }
}
