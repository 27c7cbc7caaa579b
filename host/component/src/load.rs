//! Components: checking what they import, compiling with an on-disk cache of compiled code,
//! and calling `analyze`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use crate::bindings::App;
use crate::error::{ComponentError, Result};
use crate::manifest::Manifest;

/// The interfaces a component of world `app` may import (`types` comes with them: it holds
/// only type definitions the others use).
pub const ALLOWED_IMPORTS: [&str; 10] =
    ["types", "db", "auth", "scheduler", "storage", "functions", "search", "http", "log", "env"];

/// The package every import must come from.
pub const PACKAGE: &str = "kiln:platform";

static CRANELIFT_COMPILES: AtomicU64 = AtomicU64::new(0);

/// How many components this process compiled with cranelift (cache misses).
pub fn cranelift_compiles() -> u64 {
    CRANELIFT_COMPILES.load(Ordering::Relaxed)
}

/// The component's imports (instance names, e.g. `kiln:platform/db@0.1.0`).
pub fn component_imports(engine: &Engine, component: &Component) -> Vec<String> {
    component.component_type().imports(engine).map(|(name, _)| name.to_owned()).collect()
}

/// Fails unless every import of `component` is one of world `app`'s interfaces.
pub fn check_imports(engine: &Engine, component: &Component) -> Result<()> {
    for name in component_imports(engine, component) {
        let allowed = name
            .strip_prefix(PACKAGE)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| rest.split('@').next().unwrap_or_default())
            .is_some_and(|iface| ALLOWED_IMPORTS.contains(&iface));
        if !allowed {
            return Err(ComponentError::Wasm(format!(
                "the component imports `{name}`, which is not part of world `app`"
            )));
        }
    }
    Ok(())
}

/// Compiles a component, reusing a cached `.cwasm` from `cache_dir` when one exists for the
/// same bytes and engine configuration.
pub fn load_component(engine: &Engine, bytes: &[u8], cache_dir: Option<&Path>) -> Result<Component> {
    let Some(dir) = cache_dir else {
        CRANELIFT_COMPILES.fetch_add(1, Ordering::Relaxed);
        return Component::new(engine, bytes).map_err(ComponentError::wasm);
    };
    let path = cache_path(engine, bytes, dir);
    if path.exists() {
        // SAFETY: the file was written by `Component::serialize` of this engine configuration
        // (the key includes its compatibility hash) into a directory we own.
        if let Ok(c) = unsafe { Component::deserialize_file(engine, &path) } {
            return Ok(c);
        }
    }
    CRANELIFT_COMPILES.fetch_add(1, Ordering::Relaxed);
    let component = Component::new(engine, bytes).map_err(ComponentError::wasm)?;
    let serialized = component.serialize().map_err(ComponentError::wasm)?;
    // A cache that cannot be written (a read-only or full disk) only costs the next start a
    // compile.
    if let Err(e) = write_cache(dir, &path, &serialized) {
        tracing::warn!(error = %e, "could not keep the compiled component");
    }
    Ok(component)
}

fn write_cache(dir: &Path, path: &Path, serialized: &[u8]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| ComponentError::io(dir, e))?;
    // Write then rename, so a concurrent reader never sees half a file.
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!("tmp{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, serialized).map_err(|e| ComponentError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ComponentError::io(path, e)
    })
}

fn cache_path(engine: &Engine, bytes: &[u8], dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = Sha256::new();
    h.update(bytes);
    let mut engine_hash = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut engine_hash);
    h.update(engine_hash.finish().to_le_bytes());
    let digest = h.finalize();
    let name: String = digest.iter().take(20).map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.cwasm"))
}

/// Instantiates the component with every import trapping and calls `analyze`.
pub fn analyze(engine: &Engine, component: &Component) -> Result<Manifest> {
    let mut store = Store::new(engine, ());
    // Engines that meter fuel or interrupt on epochs need a budget; analyze is cheap.
    let _ = store.set_fuel(10_000_000_000);
    store.set_epoch_deadline(1 << 40);
    let mut linker: Linker<()> = Linker::new(engine);
    linker.define_unknown_imports_as_traps(component).map_err(ComponentError::wasm)?;
    let app = App::instantiate(&mut store, component, &linker).map_err(ComponentError::wasm)?;
    let manifest = app
        .kiln_platform_guest()
        .call_analyze(&mut store)
        .map_err(ComponentError::wasm)?
        .map_err(|e| ComponentError::Analyze { code: e.code, message: e.message })?;
    Manifest::from_wit(manifest)
}
