//! Pre-initialization: the runtime module evaluates the app's bundle once, at build time, and
//! the resulting memory image becomes the module every call starts from.

use std::time::Duration;

use wasmtime::{Engine, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wizer::{ModuleContext, WasmtimeWizer, Wizer};

use crate::error::{Result, SdkError};
use crate::wasi::strip_exports;

/// Exports used only while pre-initializing.
const INIT_EXPORTS: [&str; 4] = ["kiln-source-alloc", "kiln-init-error", "kiln-init-error-len", "_initialize"];

/// Bounds on one pre-initialization, for code the host did not build itself (a push).
#[derive(Clone, Copy, Debug, Default)]
pub struct Bounds {
    /// Wall time for evaluating the app; needs an engine with epoch interruption
    /// ([`crate::bounded_engine`]).
    pub time: Option<Duration>,
    /// The largest linear memory the app may grow while it loads.
    pub memory: Option<usize>,
}

/// Runs `kiln-wizer-init` of `runtime` (a virtualized runtime module) on `bundle` and returns
/// the snapshot, with the initialization exports removed.
pub fn preinitialize(engine: &Engine, runtime: &'static [u8], bundle: &str) -> Result<Vec<u8>> {
    Preinitializer::new(engine, runtime)?.run(bundle.as_bytes(), Bounds::default())
}

/// The runtime module instrumented for snapshotting and compiled once, for any number of
/// pre-initializations (compiling it is most of the time one takes).
pub struct Preinitializer {
    wizer: Wizer,
    cx: ModuleContext<'static>,
    module: Module,
}

impl Preinitializer {
    /// Instruments and compiles `runtime` (a virtualized runtime module) for `engine`.
    pub fn new(engine: &Engine, runtime: &'static [u8]) -> Result<Preinitializer> {
        let mut wizer = Wizer::new();
        wizer.init_func("kiln-wizer-init");
        let (cx, instrumented) = wizer.instrument(runtime).map_err(SdkError::wasm)?;
        let module = Module::new(engine, &instrumented).map_err(SdkError::wasm)?;
        Ok(Preinitializer { wizer, cx, module })
    }

    /// Evaluates `bundle` (a bundle, or a module set) within `bounds` and returns the
    /// snapshot, with the initialization exports removed.
    pub fn run(&self, bundle: &[u8], bounds: Bounds) -> Result<Vec<u8>> {
        let engine = self.module.engine();
        let mut limits = StoreLimitsBuilder::new();
        if let Some(memory) = bounds.memory {
            limits = limits.memory_size(memory);
        }
        let mut store: Store<StoreLimits> = Store::new(engine, limits.build());
        store.limiter(|limits| limits);
        // The deadline: one epoch tick, given by a thread that waits for the time or for the
        // end of this function (the sender is dropped), whichever comes first.
        let (_done, waiting) = std::sync::mpsc::channel::<()>();
        if let Some(time) = bounds.time {
            store.set_epoch_deadline(1);
            store.epoch_deadline_trap();
            let engine = engine.clone();
            std::thread::spawn(move || {
                if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = waiting.recv_timeout(time) {
                    engine.increment_epoch();
                }
            });
        }
        let load_error = |e: wasmtime::Error| match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => SdkError::AppLoad(format!(
                "loading the app took longer than {:?} (the modules' top-level code must finish quickly)",
                bounds.time.unwrap_or_default()
            )),
            Some(wasmtime::Trap::StackOverflow) => {
                SdkError::AppLoad("loading the app overflowed the stack (unbounded recursion?)".into())
            }
            _ => SdkError::AppLoad(format!("{e:#}")),
        };
        let mut linker = Linker::new(engine);
        // Nothing may reach the world while an app loads; any import called traps.
        linker.define_unknown_imports_as_traps(&self.module).map_err(SdkError::wasm)?;
        let instance = linker.instantiate(&mut store, &self.module).map_err(SdkError::wasm)?;
        let alloc = instance.get_typed_func::<u32, u32>(&mut store, "kiln-source-alloc").map_err(SdkError::wasm)?;
        let len = u32::try_from(bundle.len()).map_err(|_| SdkError::AppLoad("the bundle is over 4 GiB".into()))?;
        let ptr = alloc.call(&mut store, len).map_err(load_error)?;
        let memory =
            instance.get_memory(&mut store, "memory").ok_or_else(|| SdkError::Wasm("no memory export".into()))?;
        memory.write(&mut store, ptr as usize, bundle).map_err(SdkError::wasm)?;
        // As wizer runs a module: a reactor's `_initialize`, then the initialization function.
        for name in ["_initialize", "kiln-wizer-init"] {
            if name == "_initialize" && instance.get_export(&mut store, name).is_none() {
                continue;
            }
            let init = instance.get_typed_func::<(), ()>(&mut store, name).map_err(SdkError::wasm)?;
            futures::executor::block_on(init.call_async(&mut store, ())).map_err(load_error)?;
        }
        let len = instance
            .get_typed_func::<(), u32>(&mut store, "kiln-init-error-len")
            .and_then(|f| f.call(&mut store, ()))
            .map_err(SdkError::wasm)?;
        if len > 0 {
            let ptr = instance
                .get_typed_func::<(), u32>(&mut store, "kiln-init-error")
                .and_then(|f| f.call(&mut store, ()))
                .map_err(SdkError::wasm)?;
            let mut message = vec![0u8; len as usize];
            memory.read(&store, ptr as usize, &mut message).map_err(SdkError::wasm)?;
            return Err(SdkError::AppLoad(String::from_utf8_lossy(&message).into_owned()));
        }
        let snapshot = futures::executor::block_on(
            self.wizer.snapshot(&self.cx, &mut WasmtimeWizer { store: &mut store, instance }),
        )
        .map_err(SdkError::wasm)?;
        let mut module = walrus::Module::from_buffer(&snapshot).map_err(SdkError::wasm)?;
        strip_exports(&mut module, |name| INIT_EXPORTS.contains(&name));
        Ok(module.emit_wasm())
    }
}
