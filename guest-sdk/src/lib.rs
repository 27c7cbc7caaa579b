//! Kiln's guest toolchain.
//!
//! `build_app` turns a Convex-style app (a folder with `convex/` and `node_modules/convex`)
//! into one component of world `app`:
//! 1. [`bundle`]: esbuild bundles every module of `convex/` into one ES module;
//! 2. [`wasi`]: the QuickJS runtime module (built from `components/js-runtime`) gets its WASI
//!    imports replaced by in-guest stubs, so it can only reach the world through `app`;
//! 3. [`preinit`]: the runtime evaluates the bundle once and its memory is snapshotted;
//! 4. [`component`]: the snapshot is encoded as a component, checked to import nothing outside
//!    `app`, and its `analyze` export produces the [`Manifest`].
//!
//! The outputs are `<app>/.kiln/app.wasm` and `<app>/.kiln/manifest.json`.

pub mod bundle;
pub mod codegen;
pub mod component;
pub mod error;
/// The flags esbuild bundles with (shared with `build.rs`).
pub mod esbuild_flags;
pub mod fast_paths;
pub mod module_set;
pub mod preinit;
pub mod wasi;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use error::{Result, SdkError};
pub use kiln_component::Manifest;
/// The engine type the toolchain's functions take.
pub use wasmtime::Engine;

/// The host side of world `app` (bindings, loading, the manifest) is `kiln-component`'s.
pub use kiln_component::{bindings, manifest};

/// The QuickJS runtime module as built (before its WASI imports are replaced).
pub const JS_RUNTIME_MODULE: &[u8] = include_bytes!(env!("KILN_JS_RUNTIME_WASM"));

/// The function factories of the `convex` package the SDK was built with, bundled by esbuild
/// (see `build.rs`; [`module_set::fast_package`] applies the fast paths).
pub const CONVEX_PACKAGE: &str = include_str!(env!("KILN_CONVEX_PACKAGE_JS"));

/// The Rust example guest module as built.
pub const RUST_GUEST_MODULE: &[u8] = include_bytes!(env!("KILN_RUST_GUEST_WASM"));

/// The runtime module with WASI virtualized; computed once per process.
fn virtualized_runtime() -> Result<&'static [u8]> {
    static RUNTIME: OnceLock<std::result::Result<Vec<u8>, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| wasi::virtualize(JS_RUNTIME_MODULE).map_err(|e| e.to_string()))
        .as_deref()
        .map_err(|e| SdkError::Wasm(e.clone()))
}

/// How long each step of a build took.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildTimings {
    /// esbuild.
    pub bundle: Duration,
    /// Evaluating the bundle and snapshotting.
    pub preinit: Duration,
    /// Encoding the component.
    pub componentize: Duration,
    /// Compiling (or loading from the cache) and analyzing.
    pub analyze: Duration,
}

/// The result of `build_app`.
#[derive(Clone, Debug)]
pub struct BuildOutput {
    /// The component bytes.
    pub component: Vec<u8>,
    /// What the app defines.
    pub manifest: Manifest,
    /// Where the component was written.
    pub wasm_path: PathBuf,
    /// Where the manifest was written.
    pub manifest_path: PathBuf,
    /// Step timings.
    pub timings: BuildTimings,
    /// What the user should know about the build (e.g. why it runs without fast paths).
    pub warnings: Vec<String>,
}

/// Options of `build_app`.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Where compiled components are cached (`.cwasm`), if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Leaves the `convex` package's code as esbuild bundled it, without [`fast_paths`]
    /// (for comparing results; slower).
    pub plain_bundle: bool,
    /// The esbuild executable; by default the app's (or the SDK's) `node_modules` one.
    pub esbuild: Option<PathBuf>,
}

/// The engine configuration the toolchain uses to pre-initialize and analyze.
pub fn engine() -> Result<Engine> {
    Engine::new(&wasmtime::Config::new()).map_err(SdkError::wasm)
}

/// An engine for pre-initializing code the host did not build ([`preinit::Bounds::time`]
/// needs its epoch interruption).
pub fn bounded_engine() -> Result<Engine> {
    Engine::new(wasmtime::Config::new().epoch_interruption(true)).map_err(SdkError::wasm)
}

/// The QuickJS runtime ready to pre-initialize apps with `engine` (see [`bounded_engine`]).
pub fn preinitializer(engine: &Engine) -> Result<preinit::Preinitializer> {
    preinit::Preinitializer::new(engine, virtualized_runtime()?)
}

/// Builds the component of a module set (from [`module_set::module_set`]) within `bounds`.
pub fn module_set_component(
    preinitializer: &preinit::Preinitializer,
    set: &[u8],
    bounds: preinit::Bounds,
) -> Result<Vec<u8>> {
    component::componentize(&preinitializer.run(set, bounds)?)
}

/// Builds the component of a JavaScript bundle.
pub fn js_component(engine: &Engine, bundle: &str) -> Result<Vec<u8>> {
    let snapshot = preinit::preinitialize(engine, virtualized_runtime()?, bundle)?;
    component::componentize(&snapshot)
}

/// Builds the component of the Rust example guest.
pub fn rust_guest_component() -> Result<Vec<u8>> {
    component::componentize(&wasi::virtualize(RUST_GUEST_MODULE)?)
}

/// Builds the app at `app_dir` and writes `.kiln/app.wasm` and `.kiln/manifest.json`.
pub fn build_app(app_dir: &Path, options: &BuildOptions) -> Result<BuildOutput> {
    let app_dir = &std::fs::canonicalize(app_dir).map_err(|e| SdkError::io(app_dir, e))?;
    let span = tracing::info_span!("kiln_build", app = %app_dir.display());
    let _guard = span.enter();
    let mut timings = BuildTimings::default();
    manifest::unsupported_error(bundle::unsupported_files(&app_dir.join("convex"))?)?;
    codegen::codegen(app_dir)?;

    let t = Instant::now();
    let bundle = bundle::bundle(app_dir, !options.plain_bundle, options.esbuild.as_deref())?;
    timings.bundle = t.elapsed();

    let engine = engine()?;
    let t = Instant::now();
    let snapshot = preinit::preinitialize(&engine, virtualized_runtime()?, &bundle.source)?;
    timings.preinit = t.elapsed();

    let t = Instant::now();
    let bytes = component::componentize(&snapshot)?;
    timings.componentize = t.elapsed();

    let t = Instant::now();
    let compiled = component::load_component(&engine, &bytes, options.cache_dir.as_deref())?;
    component::check_imports(&engine, &compiled)?;
    let manifest = component::analyze(&engine, &compiled)?;
    timings.analyze = t.elapsed();
    manifest.check_supported()?;

    let out = app_dir.join(".kiln");
    let wasm_path = out.join("app.wasm");
    let manifest_path = out.join("manifest.json");
    std::fs::write(&wasm_path, &bytes).map_err(|e| SdkError::io(&wasm_path, e))?;
    let json = serde_json::to_string_pretty(&manifest).map_err(|e| SdkError::Wasm(e.to_string()))?;
    std::fs::write(&manifest_path, json + "\n").map_err(|e| SdkError::io(&manifest_path, e))?;
    tracing::info!(bytes = bytes.len(), functions = manifest.functions.len(), "app built");
    let warnings = bundle.fast_paths_off.into_iter().collect();
    Ok(BuildOutput { component: bytes, manifest, wasm_path, manifest_path, timings, warnings })
}
