//! Kiln's function runner.
//!
//! One [`Runtime`] per process holds the wasmtime engine (pooling allocator, copy-on-write
//! images, fuel and epochs), a pool of worker threads that run guest code, and the
//! deployments (tenants). Each call gets a fresh instance of the deployment's current version
//! with its own fuel, deadline and memory cap; its imports are bound to a store transaction
//! (a read-only snapshot for queries, a serializable transaction for mutations, none for
//! actions). Every call is metered.

mod call;
mod crons;
mod deployment;
mod engine;
pub mod error;
mod fetch;
mod heap_touch;
mod host;
mod idempotency;
mod journal;
pub mod knobs;
mod metering;
mod permits;
mod pool;
mod query_cache;
mod scheduler;
mod secret;
mod storage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use kiln_component::bindings::App;
use kiln_component::load::{check_imports, load_component};
use kiln_persistence::PersistenceFactory;
use kiln_store::{ReadToken, Schema, Store, Timestamp};
use kiln_value::{Validator, Value};
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};

pub use deployment::{Deployment, Version, normalize_path};
pub use engine::EngineHandle;
pub use error::{CallError, Result, RuntimeError};
pub use host::LogLine;
pub use kiln_blobs::OpenBlob;
pub use kiln_component::manifest::{AuthProviderSpec, ComponentInstance, Manifest};
pub use knobs::{DeploymentConfig, FetchPolicy, Limits, Priority, Quotas, RuntimeConfig};
pub use metering::{CallRecord, FunctionUsage, Usage};
pub use storage::FileMeta;

use crate::deployment::FunctionEntry;
use crate::host::HostCtx;
use crate::metering::Metering;
use crate::pool::WorkerPool;
use crate::query_cache::QueryCache;

/// A copy of `component` (a module of its own to wasmtime) to analyze. An instance leaves its
/// pooled memory slot warm for its component, and each reset of a warm slot copies back every
/// page any instance in it has written (`PAGEMAP_SCAN` cannot tell one call's pages from
/// earlier ones'), so an analysis in the deployed component would have every call on that slot
/// copy the manifest walk's pages too (bank app: 66 pages; a trivial query writes ~25).
/// The copy's slot is released with it.
fn analysis_copy(engine: &wasmtime::Engine, component: &Component) -> Result<Component> {
    let engine_error = |e: wasmtime::Error| RuntimeError::Engine(format!("{e:#}"));
    let bytes = component.serialize().map_err(engine_error)?;
    // SAFETY: the bytes are this engine's own serialization of a component it holds.
    unsafe { Component::deserialize(engine, &bytes) }.map_err(engine_error)
}

/// The interface a guest component exports its entry points under (WIT `guest`).
const GUEST_INTERFACE: &str = "kiln:platform/guest@0.1.0";

/// The kinds of functions clients call.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FunctionKind {
    /// A read-only, deterministic function over a snapshot.
    Query,
    /// A serializable transaction.
    Mutation,
    /// A non-transactional function.
    Action,
}

/// A request to an HTTP action (`convex/http.ts`).
#[derive(Clone, Debug)]
pub struct HttpCall {
    /// The method, e.g. `POST`.
    pub method: String,
    /// The absolute URL the client addressed (what `request.url` answers).
    pub url: String,
    /// The path the app's router matches (`/webhook`: without `/http` or `/d/<name>`).
    pub route: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The caller's identity, if its `Authorization` carried a valid token.
    pub identity: Option<Value>,
    /// The request id.
    pub request_id: String,
}

/// An HTTP action's response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The reply an HTTP action's result value (`{status, headers: [[name, value]], body}`)
    /// describes.
    pub fn from_value(value: &Value) -> std::result::Result<HttpReply, CallError> {
        let bad = |what: &str| CallError::new("InvalidHttpResponse", format!("the HTTP action's response {what}"));
        let Value::Object(o) = value else { return Err(bad("is not an object")) };
        let status = match o.get("status") {
            Some(Value::Float64(s)) if (100.0..=599.0).contains(s) && s.fract() == 0.0 => *s as u16,
            _ => return Err(bad("has no valid status")),
        };
        let mut headers = Vec::new();
        if let Some(Value::Array(list)) = o.get("headers") {
            for pair in list {
                match pair {
                    Value::Array(p) if p.len() == 2 => match (&p[0], &p[1]) {
                        (Value::String(n), Value::String(v)) => headers.push((n.clone(), v.clone())),
                        _ => return Err(bad("has a header that is not two strings")),
                    },
                    _ => return Err(bad("has a header that is not a pair")),
                }
            }
        }
        let body = match o.get("body") {
            Some(Value::Bytes(b)) => b.clone(),
            None | Some(Value::Null) => Vec::new(),
            _ => return Err(bad("body is not bytes")),
        };
        Ok(HttpReply { status, headers, body })
    }
}

/// A call of a function.
#[derive(Clone, Debug)]
pub struct CallRequest {
    /// The kind the caller expects.
    pub kind: FunctionKind,
    /// `module:export`.
    pub path: String,
    /// The mounted component instance whose function this is (`""`: the app's); only
    /// internal calls reach components' functions.
    pub component: String,
    /// The arguments object.
    pub args: Value,
    /// The caller's identity (Convex's `UserIdentity` shape), if authenticated.
    pub identity: Option<Value>,
    /// Whether internal functions may be called (admins, the scheduler).
    pub internal: bool,
    /// The request id passed to actions.
    pub request_id: String,
    /// Queries only: evaluate at this snapshot instead of the newest one (so that several
    /// queries share one timestamp).
    pub snapshot: Option<Timestamp>,
    /// Mutations only: a key that makes the call idempotent. The first call that commits
    /// records its result in the same transaction; a later call with the same key returns
    /// that result without running again.
    pub idempotency_key: Option<String>,
    /// With `idempotency_key`: no earlier call can have used the key (it names a request of a
    /// client session's first connection), so the result is recorded without first looking
    /// for an earlier one.
    pub idempotency_fresh: bool,
    /// Queries only: the result may come from (and goes into) the deployment's query cache,
    /// when nothing the cached run read has changed at the requested snapshot.
    pub cacheable: bool,
    /// Queries only: the journal of an earlier run of this query (see [`CallOutcome::journal`]);
    /// its pages end where they ended then.
    pub journal: Option<String>,
    /// Mutations only: the scheduled job this call runs; it is marked done in the mutation's
    /// own transaction, which commits only while the job is still pending.
    pub scheduled_job: Option<kiln_value::DocumentId>,
}

impl CallRequest {
    /// A public call without identity.
    pub fn new(kind: FunctionKind, path: &str, args: Value) -> CallRequest {
        CallRequest {
            kind,
            path: path.to_owned(),
            component: String::new(),
            args,
            identity: None,
            internal: false,
            request_id: String::new(),
            snapshot: None,
            idempotency_key: None,
            idempotency_fresh: false,
            cacheable: false,
            journal: None,
            scheduled_job: None,
        }
    }
}

/// A call the runtime made on its own (a scheduled function), reported to whoever listens
/// ([`Runtime::background_calls`]) since no client receives its outcome.
#[derive(Clone, Debug)]
pub struct BackgroundCall {
    /// The deployment.
    pub deployment: String,
    /// `module:export`.
    pub path: String,
    /// Its kind.
    pub kind: FunctionKind,
    /// Its outcome (result, logs, fuel, time).
    pub outcome: Arc<CallOutcome>,
}

/// Announces a background call's outcome.
pub(crate) fn report_background(
    shared: &Shared,
    dep: &Deployment,
    path: &str,
    kind: FunctionKind,
    outcome: &CallOutcome,
) {
    if shared.background.receiver_count() == 0 {
        return;
    }
    let copy = CallOutcome {
        result: outcome.result.clone(),
        logs: outcome.logs.clone(),
        fuel: outcome.fuel,
        wall: outcome.wall,
        commit_ts: outcome.commit_ts,
        retries: outcome.retries,
        ..CallOutcome::default()
    };
    // A listener that went away is fine: nobody asked any more.
    let _ = shared.background.send(BackgroundCall {
        deployment: dep.name.clone(),
        path: path.to_owned(),
        kind,
        outcome: Arc::new(copy),
    });
}

/// What a call produced.
#[derive(Debug)]
pub struct CallOutcome {
    /// The result value or the error.
    pub result: std::result::Result<Value, CallError>,
    /// Log lines (of the final attempt), with a final line if some were dropped.
    pub logs: Vec<LogLine>,
    /// Fuel consumed (nested calls and retries included).
    pub fuel: u64,
    /// Wall time.
    pub wall: Duration,
    /// Minor page faults taken while instantiating and running the call's instances (retries
    /// included, nested calls not): copy-on-write faults of memory slots, mostly.
    pub minor_faults: u64,
    /// The commit timestamp of a mutation.
    pub commit_ts: Option<Timestamp>,
    /// What a query read: the token for subscriptions.
    pub read_token: Option<ReadToken>,
    /// How many times a mutation was retried after conflicts.
    pub retries: u32,
    /// Whether a mutation's result was replayed from its idempotency record (it had already
    /// committed; nothing ran).
    pub replayed: bool,
    /// Whether a query's result came from the query cache (nothing ran).
    pub cached: bool,
    /// A query's journal (Convex's `QueryJournal`): where its paginated pages ended, to pass
    /// as [`CallRequest::journal`] when the query is run again for the same subscriber.
    pub journal: Option<String>,
}

impl Default for CallOutcome {
    fn default() -> Self {
        CallOutcome {
            result: Err(CallError::new("NotRun", "the call did not run")),
            logs: Vec::new(),
            fuel: 0,
            wall: Duration::ZERO,
            minor_faults: 0,
            commit_ts: None,
            read_token: None,
            retries: 0,
            replayed: false,
            cached: false,
            journal: None,
        }
    }
}

/// State shared by the runtime, its workers and every call.
pub(crate) struct Shared {
    pub config: RuntimeConfig,
    pub engine: EngineHandle,
    /// Runs queries and mutations.
    pub pool: WorkerPool,
    /// Runs actions, at a lower OS priority: their waits (fetch, timers, nested calls) and
    /// their long computations never hold or outrun the workers of queries and mutations.
    pub action_pool: WorkerPool,
    /// Numbers deployments for the pools' fair queues.
    pub next_tenant: AtomicU64,
    pub linker: Linker<HostCtx>,
    pub handle: Handle,
    /// Outcomes of calls the runtime makes on its own.
    pub background: tokio::sync::broadcast::Sender<BackgroundCall>,
}

/// The function runner of a process.
pub struct Runtime {
    shared: Arc<Shared>,
    deployments: Arc<RwLock<HashMap<String, Arc<Deployment>>>>,
    /// Versions by the hash of their component: deployments of the same app share compiled
    /// code and its memory image instead of each holding a copy.
    versions: Mutex<HashMap<String, std::sync::Weak<Version>>>,
    flusher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Opens deployments' persistence (the binary's choice of backend).
    persistence: Arc<dyn PersistenceFactory>,
    /// Opens deployments' file storage when it is not under the data directory.
    blob_factory: Option<Arc<dyn kiln_blobs::BlobStoreFactory>>,
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(RuntimeError::DeploymentNotFound(format!("{name} (names are 1-64 of [A-Za-z0-9_-])"))) }
}

impl Runtime {
    /// Starts the engine and the workers; deployments' persistence comes from `persistence`.
    /// Must be called within a tokio runtime.
    pub fn new(config: RuntimeConfig, persistence: Arc<dyn PersistenceFactory>) -> Result<Runtime> {
        let engine = EngineHandle::new(&config)?;
        let pool = WorkerPool::with_demotion(
            "kiln-worker",
            config.worker_threads,
            config.worker_stack_bytes,
            knobs::Priority::Normal,
            config.demoted_priority,
            config.active_wait,
        )
        .map_err(|e| RuntimeError::Engine(format!("starting workers: {e}")))?;
        let action_pool = WorkerPool::new(
            "kiln-action",
            config.action_threads,
            config.worker_stack_bytes,
            config.action_priority,
            config.active_wait,
        )
        .map_err(|e| RuntimeError::Engine(format!("starting action workers: {e}")))?;
        let mut linker = Linker::new(engine.engine());
        App::add_to_linker::<HostCtx, HasSelf<HostCtx>>(&mut linker, |c| c)
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let shared = Arc::new(Shared {
            config,
            engine,
            pool,
            action_pool,
            next_tenant: AtomicU64::new(1),
            linker,
            handle: Handle::current(),
            background: tokio::sync::broadcast::channel(1024).0,
        });
        let runtime = Runtime {
            shared,
            deployments: Arc::default(),
            versions: Mutex::default(),
            flusher: Mutex::new(None),
            persistence,
            blob_factory: None,
        };
        Ok(runtime)
    }

    /// Keeps deployments' files where `factory` says (e.g. in the database hosts share)
    /// instead of under `<data_dir>/files/<name>`.
    pub fn with_blob_factory(mut self, factory: Arc<dyn kiln_blobs::BlobStoreFactory>) -> Runtime {
        self.blob_factory = Some(factory);
        self
    }

    /// The runtime's configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// The engine (for tools that compile or inspect components the same way).
    pub fn engine(&self) -> &wasmtime::Engine {
        self.shared.engine.engine()
    }

    fn component_path(&self, name: &str) -> PathBuf {
        self.shared.config.data_dir.join(format!("{name}.wasm"))
    }

    /// Opens a deployment (creating its store if new) with `config`. A component deployed
    /// before is loaded again (from the compiled-component cache when possible).
    pub async fn open_deployment(&self, name: &str, config: DeploymentConfig) -> Result<Arc<Deployment>> {
        check_name(name)?;
        if self.deployments.read().contains_key(name) {
            return Err(RuntimeError::DeploymentExists(name.to_owned()));
        }
        let persistence = self.persistence.open(name).await?;
        let mut store_config = self.shared.config.store.clone();
        store_config.search_dir = Some(self.shared.config.data_dir.join("search").join(name));
        let store = Arc::new(Store::open(persistence, store_config).await?);
        // The host's tables exist before any call: created by a call's first write, they
        // would change the catalog and fail reads at snapshots taken before it.
        let mut tx = store.begin_system();
        tx.create_system_table(metering::USAGE_TABLE)?;
        tx.create_system_table(idempotency::TABLE)?;
        tx.create_system_table(secret::TABLE)?;
        tx.create_system_table(scheduler::TABLE)?;
        tx.create_system_table(crons::TABLE)?;
        tx.create_system_table(storage::TABLE)?;
        tx.commit().await?;
        store.ensure_system_index(scheduler::TABLE, scheduler::BY_STATE, &scheduler::BY_STATE_FIELDS).await?;
        store.ensure_system_index(crons::TABLE, crons::BY_NEXT, &crons::BY_NEXT_FIELDS).await?;
        store.ensure_system_index(storage::TABLE, storage::BY_SHA, &storage::BY_SHA_FIELDS).await?;
        let blobs: Arc<dyn kiln_blobs::BlobStore> = match &self.blob_factory {
            Some(factory) => factory
                .open_blobs(name)
                .await
                .map_err(|e| RuntimeError::Engine(format!("opening the file storage of {name:?}: {e}")))?,
            None => {
                let blob_dir = self.shared.config.data_dir.join("files").join(name);
                match kiln_blobs::DirBlobStore::open(&blob_dir).await {
                    Ok(blobs) => Arc::new(blobs),
                    // A read-only or full data directory still serves reads (as the store does).
                    Err(e) => {
                        tracing::warn!(deployment = name, error = %e, "file storage cannot be written; serving reads only");
                        Arc::new(kiln_blobs::DirBlobStore::open_as_is(&blob_dir))
                    }
                }
            }
        };
        let files = storage::Files::new(blobs);
        match files.sweep(&store).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deployment = name, freed = n, "freed the blobs of deleted or unfinished files"),
            Err(e) => tracing::warn!(deployment = name, error = %e.message, "sweeping unnamed blobs failed"),
        }
        let metering = Metering::load(&store).await?;
        let seed_key = secret::SeedKey::load(&store).await?;
        let upload_key = storage::UploadKey::derive(seed_key.bytes(), name);
        let deployment = Arc::new(Deployment {
            name: name.to_owned(),
            store,
            tenant: self.shared.next_tenant.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            permits: permits::Permits::new(config.limits.max_concurrency.max(1)),
            action_permits: Arc::new(Semaphore::new(config.limits.max_concurrent_actions.max(1))),
            turns: (0..deployment::TURNS).map(|_| Arc::new(tokio::sync::Mutex::new(()))).collect(),
            config: RwLock::new(Arc::new(config)),
            version: RwLock::new(None),
            metering,
            seed_key,
            query_cache: QueryCache::new(self.shared.config.query_cache_bytes),
            deploy_lock: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            executor: Mutex::new(None),
            files,
            upload_key,
        });
        let path = self.component_path(name);
        if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| RuntimeError::Engine(format!("{}: {e}", path.display())))?;
            let version = self.prepare(&bytes).await?;
            *deployment.version.write() = Some(version);
        }
        let mut deployments = self.deployments.write();
        if deployments.contains_key(name) {
            return Err(RuntimeError::DeploymentExists(name.to_owned()));
        }
        deployments.insert(name.to_owned(), deployment.clone());
        drop(deployments);
        let executor = tokio::spawn(scheduler::execute(self.shared.clone(), deployment.clone()));
        *deployment.executor.lock() = Some(executor);
        self.start_flusher();
        Ok(deployment)
    }

    /// Stops serving a deployment: its scheduler stops and its usage is written; its store
    /// closes when the calls still holding it end. False if it was not open.
    pub async fn close_deployment(&self, name: &str) -> bool {
        let Some(dep) = self.deployments.write().remove(name) else { return false };
        if let Some(executor) = dep.executor.lock().take() {
            executor.abort();
        }
        if let Err(e) = dep.metering.flush(&dep.store).await {
            tracing::warn!(deployment = %name, error = %e, "writing usage failed while closing the deployment");
        }
        tracing::info!(deployment = %name, "deployment closed");
        true
    }

    /// A deployment by name.
    pub fn deployment(&self, name: &str) -> Option<Arc<Deployment>> {
        self.deployments.read().get(name).cloned()
    }

    /// The names of all deployments.
    pub fn deployment_names(&self) -> Vec<String> {
        let mut names: Vec<_> = self.deployments.read().keys().cloned().collect();
        names.sort();
        names
    }

    /// Replaces a deployment's configuration (limits, quotas, environment, fetch policy).
    pub fn configure(&self, name: &str, config: DeploymentConfig) -> Result<()> {
        let dep = self.deployment(name).ok_or_else(|| RuntimeError::DeploymentNotFound(name.to_owned()))?;
        let old = dep.config.read().limits.clone();
        let (was, now) = (old.max_concurrency.max(1), config.limits.max_concurrency.max(1));
        if now > was {
            dep.permits.add(now - was);
        } else {
            dep.permits.forget(was - now);
        }
        let (was, now) = (old.max_concurrent_actions.max(1), config.limits.max_concurrent_actions.max(1));
        if now > was {
            dep.action_permits.add_permits(now - was);
        } else {
            dep.action_permits.forget_permits(was - now);
        }
        *dep.config.write() = Arc::new(config);
        dep.invalidate_cache();
        Ok(())
    }

    /// Compiles `component` and discards the result, past the compiled-component cache: what
    /// it fills is cranelift's per-function cache (`RuntimeConfig::compile_cache_bytes`), so
    /// that a component sharing its functions (any JavaScript app) compiles mostly from there.
    pub async fn warm_compiler(&self, component: Vec<u8>) -> Result<()> {
        let engine = self.engine().clone();
        tokio::task::spawn_blocking(move || wasmtime::component::Component::new(&engine, &component).map(drop))
            .await
            .map_err(|e| RuntimeError::Engine(e.to_string()))?
            .map_err(|e| RuntimeError::Engine(format!("{e:#}")))
    }

    /// Compiles (or loads from the cache), checks and analyzes a component without deploying
    /// it; a component some deployment already runs (or a holder of an earlier result keeps)
    /// is shared, not prepared again.
    pub async fn prepare(&self, bytes: &[u8]) -> Result<Arc<Version>> {
        let digest = Sha256::digest(bytes);
        let key: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(version) = self.versions.lock().get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(version);
        }
        let engine = self.engine().clone();
        let cache = self.shared.config.cache_dir.clone();
        let owned = bytes.to_vec();
        let (component, manifest) =
            tokio::task::spawn_blocking(move || -> Result<(Component, kiln_component::Manifest)> {
                let component = load_component(&engine, &owned, cache.as_deref())?;
                check_imports(&engine, &component)?;
                let manifest = kiln_component::load::analyze(&engine, &analysis_copy(&engine, &component)?)?;
                Ok((component, manifest))
            })
            .await
            .map_err(|e| RuntimeError::Engine(e.to_string()))??;
        let mut functions = HashMap::new();
        let mut component_functions: HashMap<String, HashMap<String, FunctionEntry>> = HashMap::new();
        let instances: HashMap<String, String> =
            manifest.component_instances()?.into_iter().map(|i| (i.path, i.definition)).collect();
        for f in &manifest.functions {
            let parse = |v: &Option<serde_json::Value>| -> Result<Option<Validator>> {
                Ok(v.as_ref().map(Validator::from_json).transpose().map_err(kiln_store::StoreError::from)?)
            };
            let kind = match f.kind.as_str() {
                "query" => FunctionKind::Query,
                "mutation" => FunctionKind::Mutation,
                "action" => FunctionKind::Action,
                _ => continue,
            };
            let entry = FunctionEntry {
                kind,
                public: f.visibility == "public",
                args: parse(&f.args)?,
                returns: parse(&f.returns)?,
            };
            // A component definition's functions are bundled as `@<id>/<module>:<export>`.
            match f.path.strip_prefix('@').and_then(|rest| rest.split_once('/')) {
                Some((definition, path)) => {
                    component_functions.entry(definition.to_owned()).or_default().insert(path.to_owned(), entry);
                }
                None => {
                    functions.insert(f.path.clone(), entry);
                }
            }
        }
        let pre = self.shared.linker.instantiate_pre(&component).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let invoke = component
            .get_export_index(None, GUEST_INTERFACE)
            .and_then(|guest| component.get_export_index(Some(&guest), "invoke"))
            .ok_or_else(|| RuntimeError::Engine(format!("the component does not export {GUEST_INTERFACE}#invoke")))?;
        let heap_touch = heap_touch::HeapTouch::new(self.shared.config.heap_touch_faults);
        let version = Arc::new(Version {
            id: key[..16].to_owned(),
            manifest,
            functions,
            instances,
            component_functions,
            pre,
            invoke,
            invoke_checked: AtomicBool::new(false),
            heap_touch,
        });
        let mut versions = self.versions.lock();
        versions.retain(|_, v| v.strong_count() > 0);
        // Two deploys of the same new component may race: the first to get here wins.
        if let Some(existing) = versions.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(existing);
        }
        versions.insert(key, Arc::downgrade(&version));
        Ok(version)
    }

    /// Installs a new version of a deployment's app: compiles and checks the component, applies
    /// its schema (backfilling new indexes; a schema the data violates is refused and the old
    /// version keeps serving), then switches atomically. Calls already running finish on the
    /// version they started with.
    pub async fn deploy(&self, name: &str, component: &[u8]) -> Result<Arc<Version>> {
        self.deploy_checked(name, component, |_| Ok(())).await
    }

    /// [`Runtime::deploy`], refusing the version (before anything changes) when `check`
    /// fails, e.g. because its manifest is not the one the uploader built.
    pub async fn deploy_checked(
        &self,
        name: &str,
        component: &[u8],
        check: impl FnOnce(&Version) -> std::result::Result<(), String>,
    ) -> Result<Arc<Version>> {
        let dep = self.deployment(name).ok_or_else(|| RuntimeError::DeploymentNotFound(name.to_owned()))?;
        let span = tracing::info_span!("deploy", deployment = %name, bytes = component.len());
        let work = async {
            // One deploy of a deployment at a time: schema and version must come from the same upload.
            let _deploying = dep.deploy_lock.lock().await;
            let version = self.prepare(component).await?;
            // A prebuilt component is held to what `kiln build` refuses.
            version.manifest.check_supported()?;
            check(&version).map_err(RuntimeError::Rejected)?;
            let crons = crons::parse(version.manifest.crons.as_ref(), &version).map_err(RuntimeError::Rejected)?;
            // The app's schema and its components' tables, each under its instance's path.
            if let Some(schema) = version.manifest.deployment_schema()? {
                let schema = Schema::parse(&schema.to_string())?;
                dep.store.set_schema(&schema).await?;
            }
            let path = self.component_path(name);
            let tmp = path.with_extension("wasm.tmp");
            std::fs::write(&tmp, component)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|e| RuntimeError::Engine(format!("{}: {e}", path.display())))?;
            *dep.version.write() = Some(version.clone());
            dep.invalidate_cache();
            // The new version's cron jobs replace the old one's.
            crons::register(&dep.store, &crons).await?;
            tracing::info!(version = %version.id, functions = version.functions.len(), "deployed");
            Ok(version)
        };
        tracing::Instrument::instrument(work, span).await
    }

    /// Runs an HTTP action of a deployment; the outcome's value is the response (see
    /// [`HttpReply::from_value`]).
    pub async fn http_action(&self, deployment: &str, request: HttpCall) -> CallOutcome {
        let Some(dep) = self.deployment(deployment) else {
            return CallOutcome {
                result: Err(CallError::new("DeploymentNotFound", format!("deployment {deployment:?} not found"))),
                ..CallOutcome::default()
            };
        };
        call::http_call(self.shared.clone(), dep, request).await
    }

    /// Calls a function of a deployment.
    pub async fn call(&self, deployment: &str, request: CallRequest) -> CallOutcome {
        match self.deployment(deployment) {
            Some(dep) => call::call(self.shared.clone(), dep, request).await,
            None => CallOutcome {
                result: Err(CallError::new("DeploymentNotFound", format!("deployment {deployment:?} not found"))),
                ..CallOutcome::default()
            },
        }
    }

    /// The outcomes of calls the runtime makes on its own (scheduled functions), from now on.
    pub fn background_calls(&self) -> tokio::sync::broadcast::Receiver<BackgroundCall> {
        self.shared.background.subscribe()
    }

    /// A deployment's usage totals.
    pub fn usage(&self, deployment: &str) -> Option<Usage> {
        self.deployment(deployment).map(|d| d.metering.usage())
    }

    /// A deployment's most recent calls (up to 1000), oldest first.
    pub fn recent_calls(&self, deployment: &str) -> Vec<CallRecord> {
        self.deployment(deployment).map(|d| d.metering.recent()).unwrap_or_default()
    }

    /// Writes every deployment's usage totals to its store now.
    pub async fn flush_usage(&self) {
        let deployments: Vec<_> = self.deployments.read().values().cloned().collect();
        for d in deployments {
            if let Err(e) = d.metering.flush(&d.store).await {
                tracing::warn!(deployment = %d.name, error = %e, "writing usage failed");
            }
        }
    }

    fn start_flusher(&self) {
        let mut flusher = self.flusher.lock();
        if flusher.is_some() {
            return;
        }
        let interval = self.shared.config.usage_flush_interval;
        let retention = self.shared.config.mutation_record_retention;
        let job_retention = self.shared.config.scheduled_retention;
        // Weak references: the flusher ends with the runtime.
        let (shared, targets) = (Arc::downgrade(&self.shared), Arc::downgrade(&self.deployments));
        *flusher = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let (Some(_alive), Some(targets)) = (shared.upgrade(), targets.upgrade()) else { return };
                let list: Vec<Arc<Deployment>> = targets.read().values().cloned().collect();
                drop(targets);
                for d in list {
                    if let Err(e) = d.metering.flush(&d.store).await {
                        tracing::warn!(deployment = %d.name, error = %e, "writing usage failed");
                    }
                    // Expire old idempotency records, a bounded amount per round.
                    for _ in 0..16 {
                        match idempotency::prune(&d.store, retention, 2000).await {
                            Ok(2000) => continue,
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(deployment = %d.name, error = %e, "expiring mutation records failed");
                                break;
                            }
                        }
                    }
                    // And finished scheduled functions.
                    for _ in 0..16 {
                        match scheduler::prune(&d.store, job_retention, 2000).await {
                            Ok(2000) => continue,
                            Ok(_) => break,
                            Err(e) => {
                                tracing::warn!(deployment = %d.name, error = %e, "expiring scheduled functions failed");
                                break;
                            }
                        }
                    }
                }
            }
        }));
    }

    /// Flushes usage and stops background work. Stores close when their last user drops them.
    pub async fn shutdown(&self) {
        if let Some(f) = self.flusher.lock().take() {
            f.abort();
        }
        let deployments: Vec<_> = self.deployments.read().values().cloned().collect();
        for d in deployments {
            if let Some(executor) = d.executor.lock().take() {
                executor.abort();
            }
        }
        self.flush_usage().await;
        self.deployments.write().clear();
    }
}
