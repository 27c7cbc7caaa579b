//! Deployments (tenants): a store, the current version of the app, configuration, metering.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kiln_component::Manifest;
use kiln_store::Store;
use kiln_value::Validator;
use parking_lot::RwLock;
use tokio::sync::Semaphore;
use wasmtime::component::{ComponentExportIndex, InstancePre};

use crate::FunctionKind;
use crate::error::CallError;
use crate::heap_touch::HeapTouch;
use crate::host::HostCtx;
use crate::knobs::DeploymentConfig;
use crate::metering::Metering;
use crate::query_cache::QueryCache;
use crate::secret::SeedKey;
use crate::storage::FileMeta;
use kiln_blobs::OpenBlob;
use tokio::io::AsyncRead;

/// A function of a version, ready for calls.
pub(crate) struct FunctionEntry {
    pub kind: FunctionKind,
    pub public: bool,
    pub args: Option<Validator>,
    pub returns: Option<Validator>,
}

/// An installed version of a deployment's app.
pub struct Version {
    /// A hash of the component bytes.
    pub id: String,
    /// What the app defines.
    pub manifest: Manifest,
    pub(crate) functions: HashMap<String, FunctionEntry>,
    /// Mounted component instances: each path (`limiter`, `a/b`) and its definition's id.
    pub(crate) instances: HashMap<String, String>,
    /// Each component definition's functions by their path within it; out of reach of
    /// `functions`' lookups, so a caller reaches them only through [`Version::function_in`].
    pub(crate) component_functions: HashMap<String, HashMap<String, FunctionEntry>>,
    /// Its component, linked to the host's imports.
    pub(crate) pre: InstancePre<HostCtx>,
    /// The guest's `invoke` export (see `call::invoke`).
    pub(crate) invoke: ComponentExportIndex,
    /// Set once an instance's `invoke` has passed wasmtime's type check against the bindings'
    /// signature: later instances of the same component have the same types.
    pub(crate) invoke_checked: AtomicBool,
    /// Whether its calls ask the guest to write its heap's pages first.
    pub(crate) heap_touch: HeapTouch,
}

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Version").field("id", &self.id).field("functions", &self.functions.len()).finish()
    }
}

impl Version {
    pub(crate) fn function(&self, path: &str) -> Option<&FunctionEntry> {
        self.functions.get(path)
    }

    /// A function of component instance `instance` (`""`: the app) by its path within the
    /// instance's definition.
    pub(crate) fn function_in(&self, instance: &str, path: &str) -> Option<&FunctionEntry> {
        if instance.is_empty() {
            return self.functions.get(path);
        }
        self.component_functions.get(self.instances.get(instance)?)?.get(path)
    }

    /// Whether `instance` is mounted (the app always is).
    pub(crate) fn has_instance(&self, instance: &str) -> bool {
        instance.is_empty() || self.instances.contains_key(instance)
    }

    /// The path the guest's `invoke` knows a function of `instance` by (`@<definition>/…`).
    pub(crate) fn bundle_path(&self, instance: &str, path: &str) -> String {
        match self.instances.get(instance) {
            Some(definition) if !instance.is_empty() => format!("@{definition}/{path}"),
            _ => path.to_owned(),
        }
    }

    /// The kind of a function (by any path form), and whether it is public.
    pub fn function_kind(&self, path: &str) -> Option<(FunctionKind, bool)> {
        self.functions.get(&normalize_path(path)).map(|f| (f.kind, f.public))
    }

    /// [`Version::function_kind`] of a function of component instance `instance` (`""`: the app).
    pub fn function_kind_in(&self, instance: &str, path: &str) -> Option<(FunctionKind, bool)> {
        self.function_in(instance, &normalize_path(path)).map(|f| (f.kind, f.public))
    }

    /// Whether calls currently ask the guest to write its heap's data pages when they start
    /// (turned on while calls take many page faults; see `heap_touch`).
    pub fn touches_heap(&self) -> bool {
        self.heap_touch.active()
    }
}

/// Stripes of [`Deployment::turns`].
pub(crate) const TURNS: usize = 64;

/// A named tenant.
pub struct Deployment {
    pub(crate) name: String,
    pub(crate) store: Arc<Store>,
    /// Replaced as a whole, so a call holds one consistent configuration without copying it.
    pub(crate) config: RwLock<Arc<DeploymentConfig>>,
    pub(crate) version: RwLock<Option<Arc<Version>>>,
    /// Its number in the worker pools' fair queues.
    pub(crate) tenant: u64,
    /// Bound its queries and mutations in progress on workers.
    pub(crate) permits: Arc<crate::permits::Permits>,
    /// Bound its actions in progress.
    pub(crate) action_permits: Arc<Semaphore>,
    pub(crate) metering: Metering,
    /// Keys the seeds of its queries and mutations.
    pub(crate) seed_key: SeedKey,
    pub(crate) query_cache: QueryCache,
    /// Bumped by every deploy and configuration change; part of the query cache's keys, so a
    /// call that started under the old code or environment cannot fill the cache for the new.
    pub(crate) generation: AtomicU64,
    /// Held by a deploy from preparing the version to switching to it.
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    /// Turns of retried mutations, by the hash of the key they conflicted on (striped): a
    /// retry waits for the retries before it on the same documents to be validated instead of
    /// running beside them and conflicting again.
    pub(crate) turns: Box<[Arc<tokio::sync::Mutex<()>>]>,
    /// Its stored files (`ctx.storage`).
    pub(crate) files: crate::storage::Files,
    /// Signs its upload URLs.
    pub(crate) upload_key: crate::storage::UploadKey,
    /// The scheduler's executor task (see `scheduler.rs`), aborted when the runtime stops.
    pub(crate) executor: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Deployment {
    /// The deployment's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The deployment's store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The version serving calls, if any.
    pub fn version(&self) -> Option<Arc<Version>> {
        self.version.read().clone()
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<DeploymentConfig> {
        self.config.read().clone()
    }

    /// Checks the token of an upload URL made by `ctx.storage.generateUploadUrl`.
    pub fn check_upload_token(&self, token: &str) -> Result<(), CallError> {
        self.upload_key.check(token, crate::call::wall_clock_ms())
    }

    /// Stores `body` as a new file (streamed, up to the deployment's file size limit).
    pub async fn store_file(
        &self,
        body: &mut (dyn AsyncRead + Send + Unpin),
        content_type: Option<String>,
    ) -> Result<FileMeta, CallError> {
        let max = self.config.read().limits.max_file_bytes;
        self.files.store(&self.store, body, content_type, None, max).await
    }

    /// The stored file `id` at the newest snapshot, if any.
    pub async fn file(&self, id: &str) -> Result<Option<FileMeta>, CallError> {
        let mut txn = self.store.begin_system_read_only();
        crate::storage::metadata(&mut txn, id).await
    }

    /// Opens the bytes of a stored file, all or `range` (end exclusive); `None` if they are
    /// gone (the file was deleted since its metadata was read).
    pub async fn open_file(&self, meta: &FileMeta, range: Option<Range<u64>>) -> Result<Option<OpenBlob>, CallError> {
        self.files.open(meta, range).await
    }

    /// Keeps the bytes of every file, also of files deleted meanwhile, until the guard drops
    /// (take it before the snapshot whose files are read).
    pub async fn keep_files(&self) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.files.keep().await
    }

    /// Starts a new cache generation and drops the cached query results.
    pub(crate) fn invalidate_cache(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.query_cache.clear();
    }

    /// The current cache generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Canonical function path: `dir/module:export`, `.js` stripped, `:default` when no export.
pub fn normalize_path(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let (module, export) = match path.rsplit_once(':') {
        Some((m, e)) => (m, e),
        None => (path, "default"),
    };
    let module = module.strip_suffix(".js").unwrap_or(module);
    format!("{module}:{export}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        assert_eq!(normalize_path("messages:list"), "messages:list");
        assert_eq!(normalize_path("messages.js:list"), "messages:list");
        assert_eq!(normalize_path("/dir/mod"), "dir/mod:default");
    }
}
