//! Pre-initialization: the runtime module evaluates the app's bundle once, at build time, and
//! the resulting memory image becomes the module every call starts from.

use std::cell::Cell;

use wasmtime::{Engine, Instance, Linker, Module, Store};
use wasmtime_wizer::Wizer;

use crate::error::{Result, SdkError};
use crate::wasi::strip_exports;

/// Exports used only while pre-initializing.
const INIT_EXPORTS: [&str; 4] = ["kiln-source-alloc", "kiln-init-error", "kiln-init-error-len", "_initialize"];

/// Runs `kiln-wizer-init` of `runtime` (a virtualized runtime module) on `bundle` and returns
/// the snapshot, with the initialization exports removed.
pub fn preinitialize(engine: &Engine, runtime: &[u8], bundle: &str) -> Result<Vec<u8>> {
    let mut store = Store::new(engine, ());
    let saved: Cell<Option<Instance>> = Cell::new(None);
    let mut wizer = Wizer::new();
    wizer.init_func("kiln-wizer-init");
    let snapshot = futures::executor::block_on(wizer.run(&mut store, runtime, async |store, module: &Module| {
        let mut linker = Linker::new(store.engine());
        // Nothing may reach the world while an app loads; any import called traps.
        linker.define_unknown_imports_as_traps(module)?;
        let instance = linker.instantiate(&mut *store, module)?;
        let alloc = instance.get_typed_func::<u32, u32>(&mut *store, "kiln-source-alloc")?;
        let len = u32::try_from(bundle.len()).map_err(|_| wasmtime::Error::msg("the bundle is over 4 GiB"))?;
        let ptr = alloc.call(&mut *store, len)?;
        let memory =
            instance.get_memory(&mut *store, "memory").ok_or_else(|| wasmtime::Error::msg("no memory export"))?;
        memory.write(&mut *store, ptr as usize, bundle.as_bytes())?;
        saved.set(Some(instance));
        Ok(instance)
    }))
    .map_err(|e| SdkError::AppLoad(format!("{e:#}")))?;
    if let Some(instance) = saved.get() {
        let len = instance
            .get_typed_func::<(), u32>(&mut store, "kiln-init-error-len")
            .and_then(|f| f.call(&mut store, ()))
            .map_err(SdkError::wasm)?;
        if len > 0 {
            let ptr = instance
                .get_typed_func::<(), u32>(&mut store, "kiln-init-error")
                .and_then(|f| f.call(&mut store, ()))
                .map_err(SdkError::wasm)?;
            let memory = instance.get_memory(&mut store, "memory").ok_or_else(|| SdkError::Wasm("no memory".into()))?;
            let mut message = vec![0u8; len as usize];
            memory.read(&store, ptr as usize, &mut message).map_err(SdkError::wasm)?;
            return Err(SdkError::AppLoad(String::from_utf8_lossy(&message).into_owned()));
        }
    }
    let mut module = walrus::Module::from_buffer(&snapshot).map_err(SdkError::wasm)?;
    strip_exports(&mut module, |name| INIT_EXPORTS.contains(&name));
    Ok(module.emit_wasm())
}
