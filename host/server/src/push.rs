//! The push protocol of the `convex` CLI (`npx convex deploy`, `npx convex dev`), as convex
//! 1.48 speaks it to a self-hosted deployment: `get_config_hashes`, `deploy2/evaluate_schema`,
//! `deploy2/evaluate_push`, `deploy2/start_push`, `deploy2/wait_for_schema`,
//! `deploy2/finish_push`, `deploy2/report_push_completed`.
//!
//! The CLI bundles the app itself (its esbuild output: entry modules and shared chunks). The
//! server turns the modules into a component with the guest SDK's pipeline — no bundler: the
//! runtime links them by path ([`kiln_guest_sdk::module_set`]) — prepares it (compile, check,
//! analyze), answers the analysis, then checks the data against the new schema and backfills
//! new indexes while `wait_for_schema` reports progress; `finish_push` deploys it the way
//! `kiln deploy` does. A push is held in memory between its requests (one per deployment; a
//! newer one replaces it) and its modules are kept beside the component, so the next push
//! sends only what changed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use kiln_guest_sdk::module_set::{self, SetModule};
use kiln_runtime::{ComponentInstance, Manifest, Version};
use kiln_store::Schema;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::AppState;
use crate::admin::require_admin;
use crate::error::{RequestBody, Result, ServerError};
use crate::routing::Deployment;

/// A module as the CLI pushes it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModuleConfig {
    /// Its path under `convex/` (`messages.js`, `_deps/ABC.js`).
    pub path: String,
    /// Its source.
    pub source: String,
    /// Its source map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_map: Option<String>,
    /// `isolate` or `node`.
    pub environment: String,
}

impl ModuleConfig {
    /// The CLI's hash of a module: SHA-256 of its source then its source map, in hex.
    fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.source.as_bytes());
        h.update(self.source_map.as_deref().unwrap_or("").as_bytes());
        hex(&h.finalize())
    }
}

/// A module the CLI says is unchanged since the last push.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModuleHash {
    path: String,
    sha256: String,
    environment: String,
}

/// The app's part of a push.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AppDefinition {
    /// Its `convex.config.js`, when it mounts components.
    #[serde(default)]
    definition: Option<ModuleConfig>,
    #[serde(default)]
    dependencies: Vec<String>,
    schema: Option<ModuleConfig>,
    #[serde(default)]
    changed_modules: Vec<ModuleConfig>,
    #[serde(default)]
    unchanged_module_hashes: Vec<ModuleHash>,
    #[serde(default)]
    udf_server_version: String,
}

/// A component definition of a push (each definition once, however often it is mounted).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComponentDefinitionConfig {
    /// Its folder relative to `convex/`.
    definition_path: String,
    /// Its `convex.config.js`.
    definition: ModuleConfig,
    #[serde(default)]
    dependencies: Vec<String>,
    schema: Option<ModuleConfig>,
    #[serde(default)]
    functions: Vec<ModuleConfig>,
}

/// The body of `start_push`, `evaluate_push` and `evaluate_schema`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PushRequest {
    #[serde(default)]
    dry_run: bool,
    app_definition: AppDefinition,
    #[serde(default)]
    component_definitions: Vec<ComponentDefinitionConfig>,
    #[serde(default)]
    node_dependencies: Vec<Json>,
}

/// What the last finished push of a deployment left, kept in `<data>/<name>.modules.json`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct Pushed {
    udf_server_version: String,
    modules: Vec<ModuleConfig>,
}

/// A compiled push.
struct Build {
    /// SHA-256 of the module set.
    digest: String,
    component: Vec<u8>,
    version: Arc<Version>,
    modules: Vec<ModuleConfig>,
    /// The module paths of each component definition pushed, by definition path.
    component_modules: BTreeMap<String, Vec<String>>,
    schema: Option<Schema>,
    udf_server_version: String,
}

/// Where a pending push's schema work is.
#[derive(Clone, Debug)]
enum Status {
    InProgress {
        validated: bool,
        indexes_complete: usize,
        indexes_total: usize,
    },
    Failed {
        error: String,
        table: Option<String>,
    },
    Complete,
    /// A newer push of the deployment replaced this one.
    Replaced,
}

/// A push between `start_push` and `finish_push`.
struct Pending {
    id: String,
    build: Arc<Build>,
    dry_run: bool,
    indexes: IndexDiff,
    status: watch::Sender<Status>,
    started: Instant,
    work: tokio::task::AbortHandle,
}

/// A deployment's pushes.
#[derive(Default)]
pub struct Pushes {
    /// Held while a push of the deployment compiles.
    compiling: tokio::sync::Mutex<()>,
    /// The last compiled push (the CLI evaluates, then starts the same push).
    last: parking_lot::Mutex<Option<Arc<Build>>>,
    pending: parking_lot::Mutex<Option<Arc<Pending>>>,
}

/// A change of indexes, as the CLI prints it (`table.index`).
#[derive(Clone, Debug, Default)]
struct IndexDiff {
    added: Vec<(String, Vec<String>)>,
    removed: Vec<(String, Vec<String>)>,
}

impl IndexDiff {
    fn between(current: &kiln_store::Catalog, next: Option<&Schema>) -> IndexDiff {
        let mut now = BTreeMap::new();
        for (table, meta) in current.tables.iter().filter(|(t, _)| !t.starts_with('_')) {
            for (index, m) in &meta.indexes {
                now.insert(format!("{table}.{index}"), m.fields.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
        }
        let mut then = BTreeMap::new();
        for (table, def) in next.map(|s| &s.tables).into_iter().flatten() {
            for (index, fields) in &def.indexes {
                then.insert(format!("{table}.{index}"), fields.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
        }
        let only = |a: &BTreeMap<String, Vec<String>>, b: &BTreeMap<String, Vec<String>>| {
            a.iter().filter(|(k, v)| b.get(*k) != Some(v)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        IndexDiff { added: only(&then, &now), removed: only(&now, &then) }
    }

    fn json(&self) -> Json {
        let list = |l: &[(String, Vec<String>)]| -> Vec<Json> {
            l.iter().map(|(name, fields)| json!({"name": name, "type": "database", "fields": fields})).collect()
        };
        json!({ "added_indexes": list(&self.added), "removed_indexes": list(&self.removed) })
    }

    /// The diff split by component instance (`""`: the app, always present), each index
    /// named within its instance (`btree.by_namespace` of `aggregate/btree`), as the CLI
    /// prints them.
    fn by_component(&self) -> BTreeMap<String, Json> {
        let split = |l: &[(String, Vec<String>)]| {
            let mut out: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
            for (name, fields) in l {
                let (component, own) = match name.split_once('.').and_then(|(table, _)| table.rsplit_once('/')) {
                    Some((component, _)) => (component, &name[component.len() + 1..]),
                    None => ("", name.as_str()),
                };
                out.entry(component.to_owned()).or_default().push((own.to_owned(), fields.clone()));
            }
            out
        };
        let (added, removed) = (split(&self.added), split(&self.removed));
        let mut components: BTreeSet<String> = added.keys().chain(removed.keys()).cloned().collect();
        components.insert(String::new());
        components
            .into_iter()
            .map(|c| {
                let diff = IndexDiff {
                    added: added.get(&c).cloned().unwrap_or_default(),
                    removed: removed.get(&c).cloned().unwrap_or_default(),
                };
                (c, diff.json())
            })
            .collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pushed_path(state: &AppState, deployment: &str) -> PathBuf {
    state.config.runtime.data_dir.join(format!("{deployment}.modules.json"))
}

/// The modules of the deployment's last push (none before one, or after `kiln deploy`).
fn pushed(state: &AppState, deployment: &str) -> Pushed {
    let path = pushed_path(state, deployment);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "unreadable record of pushed modules; ignored");
            Pushed::default()
        }),
        Err(_) => Pushed::default(),
    }
}

/// Records the modules of a deployed push (or forgets them: a prebuilt component was deployed).
pub fn record_pushed(state: &AppState, deployment: &str, modules: Option<(&str, &[ModuleConfig])>) -> Result<()> {
    let path = pushed_path(state, deployment);
    let Some((udf_server_version, modules)) = modules else {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ServerError::Internal(format!("{}: {e}", path.display())))
            }
            _ => Ok(()),
        };
    };
    let record = Pushed { udf_server_version: udf_server_version.to_owned(), modules: modules.to_vec() };
    let bytes = serde_json::to_vec(&record).map_err(|e| ServerError::Internal(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| ServerError::Internal(format!("{}: {e}", path.display())))
}

/// A push body: JSON, brotli-compressed when the CLI says so, at most `limit` bytes decoded.
fn decode<T: serde::de::DeserializeOwned>(headers: &HeaderMap, body: &[u8], limit: usize) -> Result<T> {
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    let decoded;
    let json = match encoding.trim() {
        "identity" | "" => body,
        "br" => {
            use std::io::Read;
            let mut out = Vec::new();
            let reader = brotli_decompressor::Decompressor::new(body, 64 << 10);
            reader
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ServerError::BadRequest(format!("the body is not valid brotli: {e}")))?;
            if out.len() > limit {
                return Err(ServerError::BodyTooLarge(limit));
            }
            decoded = out;
            &decoded[..]
        }
        other => return Err(ServerError::BadRequest(format!("unsupported Content-Encoding {other:?}"))),
    };
    serde_json::from_slice(json).map_err(|e| ServerError::BadRequest(format!("invalid push request: {e}")))
}

fn failed(code: &str, message: impl Into<String>) -> ServerError {
    ServerError::DeployFailed { code: code.to_owned(), message: message.into() }
}

impl From<kiln_guest_sdk::SdkError> for ServerError {
    fn from(e: kiln_guest_sdk::SdkError) -> Self {
        failed(e.code(), e.to_string())
    }
}

/// The runtime pushes are pre-initialized with: compiled once per process, on an engine
/// with epoch interruption (which bounds their load time).
fn preinitializer() -> Result<&'static kiln_guest_sdk::preinit::Preinitializer> {
    static READY: OnceLock<std::result::Result<kiln_guest_sdk::preinit::Preinitializer, String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            let engine = kiln_guest_sdk::bounded_engine().map_err(|e| e.to_string())?;
            kiln_guest_sdk::preinitializer(&engine).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| ServerError::Internal(e.clone()))
}

/// Prepares this process for pushes, once: compiles the runtime for pre-initializing, then
/// an empty app's component, whose functions (nearly all of any JavaScript app's) fill
/// cranelift's cache (see `Runtime::warm_compiler`). `get_config_hashes` starts it while the
/// CLI bundles; a push's compile waits for it rather than compiling the same functions beside it.
async fn warm_up(runtime: Arc<kiln_runtime::Runtime>) {
    static WARM: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    WARM.get_or_init(|| async move {
        let started = Instant::now();
        let empty = tokio::task::spawn_blocking(|| {
            let set = module_set::module_set(
                &[SetModule { path: "warm_up.js", source: "export {};" }],
                None,
                None,
                &BTreeMap::new(),
            )?;
            Ok::<_, ServerError>(kiln_guest_sdk::module_set_component(
                preinitializer()?,
                &set.bytes,
                kiln_guest_sdk::preinit::Bounds::default(),
            )?)
        })
        .await;
        let warmed = match empty {
            Ok(Ok(component)) => runtime.warm_compiler(component).await.map_err(ServerError::from),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(ServerError::Internal(e.to_string())),
        };
        match warmed {
            Ok(()) => tracing::info!(ms = started.elapsed().as_millis() as u64, "ready for pushes"),
            Err(e) => tracing::warn!(error = %e, "preparing for pushes failed"),
        }
    })
    .await;
}

/// The push's modules, with the unchanged ones taken from the last push; refuses what Kiln
/// does not run (Node.js modules) by name.
fn modules_of(state: &AppState, deployment: &str, request: &PushRequest) -> Result<Vec<ModuleConfig>> {
    let mut refused = Vec::new();
    if request.app_definition.definition.is_none() && !request.component_definitions.is_empty() {
        return Err(ServerError::BadRequest(
            "component definitions were pushed without the app's convex.config".into(),
        ));
    }
    for c in &request.component_definitions {
        for m in c.functions.iter().filter(|m| m.environment == "node" && !module_set::is_chunk(&m.path)) {
            let file = m.path.strip_suffix(".js").unwrap_or(&m.path);
            refused.push(format!(
                "Node.js modules (\"use node\" in {file} of component {}) are not supported yet",
                c.definition_path
            ));
        }
    }
    let app = &request.app_definition;
    let mut modules = app.changed_modules.clone();
    if !app.unchanged_module_hashes.is_empty() {
        let last = pushed(state, deployment);
        for unchanged in &app.unchanged_module_hashes {
            let found = last.modules.iter().find(|m| {
                m.path == unchanged.path && m.environment == unchanged.environment && m.hash() == unchanged.sha256
            });
            match found {
                Some(m) => modules.push(m.clone()),
                None => {
                    return Err(failed(
                        "UnknownModuleHash",
                        format!("module {} is not known to the server at that hash; push all modules", unchanged.path),
                    ));
                }
            }
        }
    }
    for m in modules.iter().filter(|m| m.environment == "node") {
        let file = m.path.strip_suffix(".js").unwrap_or(&m.path);
        if !module_set::is_chunk(&m.path) {
            refused.push(format!("Node.js modules (\"use node\" in convex/{file}) are not supported yet"));
        }
    }
    if modules.iter().any(|m| m.environment != "node" && m.environment != "isolate") {
        return Err(ServerError::BadRequest("a module's environment must be \"isolate\" or \"node\"".into()));
    }
    let deps: Vec<&str> =
        request.node_dependencies.iter().filter_map(|d| d.get("name").and_then(Json::as_str)).collect();
    if !deps.is_empty() {
        refused.push(format!("external packages for Node.js modules ({}) are not supported yet", deps.join(", ")));
    }
    if !refused.is_empty() {
        return Err(failed("Unsupported", format!("Kiln does not run this app: {}", refused.join("; "))));
    }
    modules.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(modules)
}

/// Compiles a push (or reuses the deployment's last build of the same modules): one compile
/// per deployment at a time, `concurrent_compiles` per host, within the push limits.
async fn build(state: &Arc<AppState>, deployment: &str, request: &PushRequest) -> Result<Arc<Build>> {
    let limits = &state.config.push;
    let modules = modules_of(state, deployment, request)?;
    let schema_module = request.app_definition.schema.as_ref();
    let definitions = &request.component_definitions;
    let size: usize = modules.iter().map(|m| m.source.len()).sum::<usize>()
        + schema_module.map_or(0, |s| s.source.len())
        + request.app_definition.definition.as_ref().map_or(0, |d| d.source.len())
        + definitions
            .iter()
            .flat_map(|c| c.functions.iter().chain(c.schema.as_ref()).chain([&c.definition]))
            .map(|m| m.source.len())
            .sum::<usize>();
    if size > limits.max_source_bytes {
        return Err(failed(
            "PushTooLarge",
            format!("the push has {size} bytes of modules, over the limit of {} bytes", limits.max_source_bytes),
        ));
    }
    let set_modules: Vec<SetModule<'_>> =
        modules.iter().map(|m| SetModule { path: &m.path, source: &m.source }).collect();
    // Module-level code (an `auth.config.ts`) sees the deployment's variables as they are now;
    // they are part of what is compiled, so changing them compiles the push anew.
    let env = state.registry.get(deployment).map(|r| r.env.clone()).unwrap_or_default();
    let components = request.app_definition.definition.as_ref().map(|config| module_set::SetComponents {
        config: &config.source,
        dependencies: request.app_definition.dependencies.iter().map(String::as_str).collect(),
        definitions: definitions
            .iter()
            .map(|c| module_set::SetDefinition {
                path: &c.definition_path,
                config: &c.definition.source,
                dependencies: c.dependencies.iter().map(String::as_str).collect(),
                schema: c.schema.as_ref().map(|s| s.source.as_str()),
                modules: c.functions.iter().map(|m| SetModule { path: &m.path, source: &m.source }).collect(),
            })
            .collect(),
    });
    let module_set::ModuleSet { bytes: set, fast_paths_off } =
        module_set::module_set(&set_modules, schema_module.map(|s| s.source.as_str()), components.as_ref(), &env)?;
    let digest = hex(&Sha256::digest(&set));
    let dep = state.deployment(deployment)?;
    let reuse = |dep: &crate::DeploymentState| dep.pushes.last.lock().clone().filter(|b| b.digest == digest);
    if let Some(build) = reuse(&dep) {
        return Ok(build);
    }
    let _compiling = dep.pushes.compiling.lock().await;
    if let Some(build) = reuse(&dep) {
        return Ok(build);
    }
    warm_up(state.runtime.clone()).await;
    let _permit = state.compiles.acquire().await.map_err(|_| ServerError::Internal("the server is stopping".into()))?;
    let span = tracing::info_span!("push_compile", deployment, modules = modules.len(), bytes = size);
    let started = Instant::now();
    let bounds = kiln_guest_sdk::preinit::Bounds { time: Some(limits.load_time), memory: Some(limits.load_memory) };
    let component = tokio::task::spawn_blocking(move || {
        let _guard = span.enter();
        Ok::<_, ServerError>(kiln_guest_sdk::module_set_component(preinitializer()?, &set, bounds)?)
    })
    .await
    .map_err(|e| ServerError::Internal(e.to_string()))??;
    let loaded = started.elapsed();
    let version = state.runtime.prepare(&component).await?;
    version.manifest.check_supported().map_err(|e| failed(e.code(), e.to_string()))?;
    // The app's schema with its components' tables under their instances.
    let schema = match version.manifest.deployment_schema().map_err(|e| failed(e.code(), e.to_string()))? {
        Some(s) => Some(Schema::parse(&s.to_string()).map_err(|e| failed(e.code(), e.to_string()))?),
        None => None,
    };
    if let Some(why) = &fast_paths_off {
        tracing::warn!(deployment, "the pushed app runs without the fast paths: {why}");
    }
    tracing::info!(
        deployment,
        load_ms = loaded.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "push compiled"
    );
    let build = Arc::new(Build {
        digest,
        component,
        version,
        modules,
        component_modules: definitions
            .iter()
            .map(|c| (c.definition_path.clone(), c.functions.iter().map(|m| m.path.clone()).collect()))
            .collect(),
        schema,
        udf_server_version: request.app_definition.udf_server_version.clone(),
    });
    *dep.pushes.last.lock() = Some(build.clone());
    Ok(build)
}

/// The analysis of the app and of each component definition, by definition path (`""`: the
/// app), as `start_push` answers it: the CLI's codegen reads each definition's functions.
fn analysis(build: &Build) -> Result<Json> {
    let manifest: &Manifest = &build.version.manifest;
    let tree = manifest.components.as_ref();
    let udf_config = json!({
        "serverVersion": build.udf_server_version, "importPhaseRngSeed": null, "importPhaseUnixTimestamp": null
    });
    let app_modules: Vec<&str> = build.modules.iter().map(|m| m.path.as_str()).collect();
    let mut definition = tree.and_then(|t| t.get("app")).cloned().unwrap_or_else(|| {
        json!({
            "definitionType": { "type": "app" },
            "childComponents": [],
            "httpMounts": {},
            "exports": { "type": "branch", "branch": [] },
        })
    });
    definition["path"] = json!("");
    let mut out = serde_json::Map::new();
    out.insert(
        String::new(),
        json!({
            "definition": definition,
            "schema": manifest.schema,
            "functions": module_functions(manifest, "", &app_modules),
            "udfConfig": udf_config,
        }),
    );
    let definitions = tree.and_then(|t| t.get("definitions")).and_then(Json::as_array).cloned().unwrap_or_default();
    for d in definitions {
        let (Some(id), Some(path)) = (d.get("id").and_then(Json::as_str), d.get("path").and_then(Json::as_str)) else {
            return Err(ServerError::Internal("the component analysis lacks a definition's id or path".into()));
        };
        let modules: Vec<&str> =
            build.component_modules.get(path).map(|m| m.iter().map(String::as_str).collect()).unwrap_or_default();
        let mut definition = d.get("definition").cloned().unwrap_or(Json::Null);
        definition["path"] = json!(path);
        out.insert(
            path.to_owned(),
            json!({
                "definition": definition,
                "schema": d.get("schema"),
                "functions": module_functions(manifest, &format!("@{id}/"), &modules),
                "udfConfig": udf_config,
            }),
        );
    }
    Ok(Json::Object(out))
}

/// The analyzed modules of one definition (its functions are `<prefix><module>:<export>`),
/// every module of `modules` listed, chunks left out.
fn module_functions(manifest: &Manifest, prefix: &str, modules: &[&str]) -> Json {
    let mut functions: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for m in modules {
        if !module_set::is_chunk(m) {
            functions.entry((*m).to_owned()).or_default();
        }
    }
    for f in &manifest.functions {
        let udf_type = match f.kind.as_str() {
            "query" => "Query",
            "mutation" => "Mutation",
            "action" => "Action",
            _ => continue,
        };
        let Some(path) = f.path.strip_prefix(prefix) else { continue };
        // The app's own functions never start with `@`; a component's are prefixed.
        if prefix.is_empty() && path.starts_with('@') {
            continue;
        }
        let Some((module, name)) = path.split_once(':') else { continue };
        let text = |v: &Option<Json>| v.as_ref().map(Json::to_string);
        functions.entry(format!("{module}.js")).or_default().push(json!({
            "name": name,
            "pos": null,
            "udfType": udf_type,
            "visibility": { "kind": f.visibility },
            "args": text(&f.args),
            "returns": text(&f.returns),
        }));
    }
    functions
        .into_iter()
        .map(|(path, list)| {
            (path, json!({ "functions": list, "httpRoutes": null, "cronSpecs": null, "sourceMapped": null }))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// The mounted instances as the CLI's checked component tree, from `instance` (`""`: the app).
fn checked_component(instances: &[ComponentInstance], instance: &str, definition_path: &str) -> Json {
    let children: serde_json::Map<String, Json> = instances
        .iter()
        .filter_map(|i| {
            let name =
                if instance.is_empty() { i.path.as_str() } else { i.path.strip_prefix(instance)?.strip_prefix('/')? };
            (!name.contains('/')).then(|| (name.to_owned(), checked_component(instances, &i.path, &i.definition_path)))
        })
        .collect();
    json!({
        "definitionPath": definition_path,
        "componentPath": instance,
        "args": {},
        "childComponents": children,
        "httpRoutes": { "httpModuleRoutes": null, "mounts": [] },
        "exports": {},
    })
}

/// The identity providers of the app's `auth.config.ts` in the CLI's form.
fn app_auth_json(manifest: &Manifest) -> Result<Vec<Json>> {
    let providers = manifest.auth_providers().map_err(|e| failed(e.code(), e.to_string()))?;
    Ok(providers
        .into_iter()
        .map(|p| match p.domain {
            Some(domain) => json!({ "applicationID": p.application_id, "domain": domain }),
            None => json!({
                "type": "customJwt",
                "applicationID": p.application_id,
                "issuer": p.issuer,
                "jwks": p.jwks_url.clone().or_else(|| p.jwks.as_ref().map(Json::to_string)),
                "algorithm": p.algorithm,
            }),
        })
        .collect())
}

fn schema_change(id: Option<&str>, indexes: &IndexDiff) -> Json {
    json!({
        "allocatedComponentIds": null,
        "schemaIds": id.map(|id| json!({ "kilnPush": id })),
        "indexDiffs": indexes.by_component(),
    })
}

async fn read_request(
    state: &Arc<AppState>,
    deployment: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<PushRequest> {
    require_admin(state, deployment, headers)?;
    decode(headers, body, state.config.max_deploy_bytes)
}

/// `POST /api/get_config_hashes`: the hashes of the modules of the last push.
pub async fn get_config_hashes(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    // A push follows (the CLI bundles meanwhile): the first in this process prepares for it.
    tokio::spawn(warm_up(state.runtime.clone()));
    let last = pushed(&state, &d);
    let hashes: Vec<Json> = last
        .modules
        .iter()
        .map(|m| json!({ "path": m.path, "hash": m.hash(), "environment": m.environment }))
        .collect();
    Ok(axum::Json(json!({
        "config": { "functions": "convex/", "authInfo": [] },
        "moduleHashes": hashes,
        "nodeDependencies": [],
        "udfServerVersion": if last.udf_server_version.is_empty() { Json::Null } else { json!(last.udf_server_version) },
    }))
    .into_response())
}

/// `POST /api/deploy2/evaluate_push`: what the push would change of the indexes.
pub async fn evaluate_push(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    let request = read_request(&state, &d, &headers, &body).await?;
    let build = build(&state, &d, &request).await?;
    let catalog = state.deployment_store(&d)?.catalog();
    let indexes = IndexDiff::between(&catalog, build.schema.as_ref());
    Ok(axum::Json(json!({ "schemaChange": schema_change(None, &indexes) })).into_response())
}

/// `POST /api/deploy2/evaluate_schema`: per table and index, what the push would do (the
/// CLI's warnings about large backfills and deletions).
pub async fn evaluate_schema(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    let request = read_request(&state, &d, &headers, &body).await?;
    let build = build(&state, &d, &request).await?;
    let store = state.deployment_store(&d)?;
    let catalog = store.catalog();
    let indexes = IndexDiff::between(&catalog, build.schema.as_ref());
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut tables = Vec::new();
    let validation = build.schema.as_ref().is_some_and(|s| s.schema_validation);
    if let Some(schema) = &build.schema {
        for (name, def) in &schema.tables {
            let n = store.count_documents(name).await.map_err(|e| ServerError::Internal(e.to_string()))?;
            counts.insert(name.clone(), n);
            let outcome = if validation && def.document_type.is_some() && n > 0 { "mustWalk" } else { "notValidated" };
            tables.push(json!({ "name": name, "outcome": outcome, "numDocs": n, "sizeBytes": 0 }));
        }
    }
    let mut predictions = Vec::new();
    let mut count = async |name: &str| -> Result<u64> {
        let table = name.split('.').next().unwrap_or_default().to_owned();
        if let Some(n) = counts.get(&table) {
            return Ok(*n);
        }
        let n = store.count_documents(&table).await.map_err(|e| ServerError::Internal(e.to_string()))?;
        counts.insert(table, n);
        Ok(n)
    };
    for (change, list) in [("added", &indexes.added), ("dropped", &indexes.removed)] {
        for (name, fields) in list {
            let n = count(name).await?;
            predictions.push(json!({
                "name": name, "type": "database", "fields": fields,
                "change": change, "needsBackfill": change == "added" && n > 0, "numDocs": n,
            }));
        }
    }
    Ok(axum::Json(json!({
        "componentSchemaEvaluations": { "": {
            "definitionPath": "",
            "schemaValidation": validation,
            "tables": tables,
            "indexes": predictions,
            "discardedStagedValidators": [],
        }},
        "newComponentDefinitions": [],
    }))
    .into_response())
}

/// `POST /api/deploy2/start_push`: compiles and analyzes the push, then checks the data
/// against its schema and backfills its new indexes in the background.
pub async fn start_push(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    let request = read_request(&state, &d, &headers, &body).await?;
    let build = build(&state, &d, &request).await?;
    let app_auth = app_auth_json(&build.version.manifest)?;
    let instances = build.version.manifest.component_instances().map_err(|e| failed(e.code(), e.to_string()))?;
    let dep = state.deployment(&d)?;
    let store = state.deployment_store(&d)?;
    let indexes = IndexDiff::between(&store.catalog(), build.schema.as_ref());
    let id = hex(&rand::random::<[u8; 12]>());
    let (status, _) = watch::channel(Status::InProgress {
        validated: false,
        indexes_complete: 0,
        indexes_total: if request.dry_run { 0 } else { indexes.added.len() },
    });
    let work = tokio::spawn(schema_work(
        store.clone(),
        build.schema.clone(),
        if request.dry_run { Vec::new() } else { indexes.added.clone() },
        status.clone(),
    ));
    let pending = Arc::new(Pending {
        id: id.clone(),
        build: build.clone(),
        dry_run: request.dry_run,
        indexes: indexes.clone(),
        status,
        started: Instant::now(),
        work: work.abort_handle(),
    });
    if let Some(old) = dep.pushes.pending.lock().replace(pending) {
        old.work.abort();
        old.status.send_replace(Status::Replaced);
    }
    let env = state.registry.get(&d).map(|r| r.env.clone()).unwrap_or_default();
    Ok(axum::Json(json!({
        "environmentVariables": env,
        "externalDepsId": null,
        "componentDefinitionPackages": {},
        "appAuth": app_auth,
        "analysis": analysis(&build)?,
        "app": checked_component(&instances, "", ""),
        "schemaChange": schema_change(Some(&id), &indexes),
    }))
    .into_response())
}

/// Checks the documents against the new schema, then adds its new indexes (backfilling
/// them; the serving version does not name them, so they change nothing it does).
async fn schema_work(
    store: Arc<kiln_store::Store>,
    schema: Option<Schema>,
    added: Vec<(String, Vec<String>)>,
    status: watch::Sender<Status>,
) {
    let total = added.len();
    if let Some(schema) = &schema
        && let Err(e) = store.check_schema(schema, |_| {}).await
    {
        let table = match &e {
            kiln_store::StoreError::SchemaViolation { table, .. } => Some(table.clone()),
            _ => None,
        };
        status.send_replace(Status::Failed { error: e.to_string(), table });
        return;
    }
    status.send_replace(Status::InProgress { validated: true, indexes_complete: 0, indexes_total: total });
    let catalog = store.catalog();
    for (i, (name, fields)) in added.iter().enumerate() {
        let Some((table, index)) = name.split_once('.') else { continue };
        // An index whose fields change is replaced when the push finishes.
        let exists = catalog.table(table).is_some_and(|t| t.indexes.contains_key(index));
        if !exists {
            let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
            if let Err(e) = store.add_index(table, index, &fields).await {
                status.send_replace(Status::Failed { error: e.to_string(), table: Some(table.to_owned()) });
                return;
            }
        }
        status.send_replace(Status::InProgress { validated: true, indexes_complete: i + 1, indexes_total: total });
    }
    status.send_replace(Status::Complete);
}

/// The pending push `schemaChange` names.
fn pending_of(
    dep: &crate::DeploymentState,
    schema_change: Option<&Json>,
    pending_for: Duration,
) -> Result<Arc<Pending>> {
    let id = schema_change
        .and_then(|c| c.get("schemaIds"))
        .and_then(|ids| ids.get("kilnPush"))
        .and_then(Json::as_str)
        .ok_or_else(|| ServerError::BadRequest("the request names no push (missing schemaChange.schemaIds)".into()))?;
    let mut slot = dep.pushes.pending.lock();
    if slot.as_ref().is_some_and(|p| p.started.elapsed() > pending_for) {
        slot.take();
    }
    match slot.as_ref() {
        Some(p) if p.id == id => Ok(p.clone()),
        Some(_) => Err(failed("PushReplaced", "Schema was overwritten by another push.")),
        None => Err(failed(
            "PushNotPending",
            "this push is no longer pending (it expired, or the server restarted); push again",
        )),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WaitRequest {
    schema_change: Option<Json>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// `POST /api/deploy2/wait_for_schema`: the push's schema work, once it changes or after
/// `timeoutMs` (at most 20 s).
pub async fn wait_for_schema(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let request: WaitRequest = decode(&headers, &body, state.config.max_body_bytes)?;
    let dep = state.deployment(&d)?;
    let pending = match pending_of(&dep, request.schema_change.as_ref(), state.config.push.pending_for) {
        Ok(p) => p,
        Err(ServerError::DeployFailed { code, .. }) if code == "PushReplaced" => {
            return Ok(axum::Json(json!({ "type": "raceDetected" })).into_response());
        }
        Err(e) => return Err(e),
    };
    let timeout = Duration::from_millis(request.timeout_ms.unwrap_or(10_000).min(20_000));
    let mut rx = pending.status.subscribe();
    let mut shutdown = state.shutdown.subscribe();
    let initial = format!("{:?}", *rx.borrow_and_update());
    let _ = tokio::time::timeout(timeout, async {
        loop {
            if !matches!(*rx.borrow(), Status::InProgress { .. }) || format!("{:?}", *rx.borrow()) != initial {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    })
    .await;
    let status = rx.borrow().clone();
    let body = match status {
        Status::InProgress { validated, indexes_complete, indexes_total } => json!({
            "type": "inProgress",
            "components": { "": {
                "schemaValidationComplete": validated,
                "indexesComplete": indexes_complete,
                "indexesTotal": indexes_total,
            }},
        }),
        Status::Failed { error, table } => {
            json!({ "type": "failed", "error": error, "componentPath": "", "tableName": table })
        }
        Status::Complete => json!({ "type": "complete" }),
        Status::Replaced => json!({ "type": "raceDetected" }),
    };
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FinishRequest {
    start_push: Json,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /api/deploy2/finish_push`: deploys the push (as `kiln deploy` does: the schema is
/// applied, then the version switches atomically) and answers what changed.
pub async fn finish_push(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let request: FinishRequest = decode(&headers, &body, state.config.max_deploy_bytes)?;
    let dep = state.deployment(&d)?;
    let pending = pending_of(&dep, request.start_push.get("schemaChange"), state.config.push.pending_for)?;
    let status = pending.status.borrow().clone();
    match status {
        Status::Complete => {}
        Status::Failed { error, .. } => return Err(failed("SchemaViolation", error)),
        Status::Replaced => return Err(failed("PushReplaced", "Schema was overwritten by another push.")),
        Status::InProgress { .. } => {
            return Err(failed("PushNotReady", "the push's schema is still being checked; wait for it first"));
        }
    }
    let before = pushed(&state, &d);
    let old_paths: BTreeSet<&str> = before.modules.iter().map(|m| m.path.as_str()).collect();
    let new_paths: BTreeSet<&str> = pending.build.modules.iter().map(|m| m.path.as_str()).collect();
    let old_auth: BTreeSet<String> =
        dep.app_auth.read().providers.iter().map(|p| serde_json::to_string(p).unwrap_or_default()).collect();
    let dry_run = request.dry_run || pending.dry_run;
    let mut new_auth = old_auth.clone();
    if !dry_run {
        let build = &pending.build;
        let expected = build.version.id.clone();
        let version = state
            .runtime
            .deploy_checked(&d, &build.component, |v| {
                if v.id == expected { Ok(()) } else { Err("the pushed component changed while it was deployed".into()) }
            })
            .await?;
        record_pushed(&state, &d, Some((&build.udf_server_version, &build.modules)))?;
        crate::admin::deployed(&state, &d, &version).await?;
        new_auth = dep.app_auth.read().providers.iter().map(|p| serde_json::to_string(p).unwrap_or_default()).collect();
        tracing::info!(deployment = %d, version = %version.id, "push finished");
    }
    {
        let mut slot = dep.pushes.pending.lock();
        if slot.as_ref().is_some_and(|p| p.id == pending.id) {
            slot.take();
        }
    }
    let list = |a: &BTreeSet<String>, b: &BTreeSet<String>| a.difference(b).cloned().collect::<Vec<_>>();
    let component_diffs: serde_json::Map<String, Json> = pending
        .indexes
        .by_component()
        .into_iter()
        .map(|(component, index_diff)| {
            let root = component.is_empty();
            let diff = json!({
                "diffType": { "type": if !root || !before.modules.is_empty() { "modify" } else { "create" } },
                "moduleDiff": {
                    "added": if root { new_paths.difference(&old_paths).collect::<Vec<_>>() } else { Vec::new() },
                    "removed": if root { old_paths.difference(&new_paths).collect::<Vec<_>>() } else { Vec::new() },
                },
                "udfConfigDiff": null,
                "cronDiff": { "added": [], "updated": [], "deleted": [] },
                "indexDiff": index_diff,
                "schemaDiff": null,
            });
            (component, diff)
        })
        .collect();
    Ok(axum::Json(json!({
        "authDiff": { "added": list(&new_auth, &old_auth), "removed": list(&old_auth, &new_auth) },
        "definitionDiffs": {},
        "componentDiffs": component_diffs,
    }))
    .into_response())
}

/// `POST /api/deploy2/report_push_completed`: the CLI's notice that it is done.
pub async fn report_push_completed(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    Ok(axum::Json(json!({})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_hashes_are_the_clis() {
        let m = ModuleConfig {
            path: "a.js".into(),
            source: "x".into(),
            source_map: Some("y".into()),
            environment: "isolate".into(),
        };
        // sha256("xy")
        assert_eq!(m.hash(), "769a4e6d0003189c7e96c5d9b7e810a0d11c3a12832527ec94b0f86d277f51ca");
    }

    #[test]
    fn bodies_may_be_brotli_and_are_bounded() {
        let mut headers = HeaderMap::new();
        let plain: Json = decode(&headers, b"{\"a\":1}", 100).unwrap();
        assert_eq!(plain, json!({"a": 1}));
        headers.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        // "{}" compressed by brotli (quality 4, text mode, as the CLI sends it).
        let compressed = [0x8bu8, 0x00, 0x80, 0x7b, 0x7d, 0x03];
        let empty: Json = decode(&headers, &compressed, 100).unwrap();
        assert_eq!(empty, json!({}));
        assert_eq!(decode::<Json>(&headers, &compressed, 1).unwrap_err().code(), "BodyTooLarge");
        assert_eq!(decode::<Json>(&headers, b"not brotli", 100).unwrap_err().code(), "BadRequest");
        headers.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        assert_eq!(decode::<Json>(&headers, b"{}", 100).unwrap_err().code(), "BadRequest");
    }
}
