//! The process's wasmtime engine and the epoch ticker that drives deadlines.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ProfilingStrategy};

use crate::error::{Result, RuntimeError};
use crate::knobs::RuntimeConfig;

/// Instances one call may hold at once (itself and nested calls).
pub(crate) const INSTANCES_PER_WORKER: u32 = 10;

/// Cranelift's results per function, kept in memory up to a byte budget: components built
/// from the same QuickJS runtime share nearly all their code (an app is data in the runtime's
/// memory), so a new app's component compiles mostly from here.
#[derive(Debug)]
struct CompileCache {
    entries: parking_lot::Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>,
    bytes: std::sync::atomic::AtomicUsize,
    budget: usize,
}

impl CompileCache {
    fn new(budget: usize) -> CompileCache {
        CompileCache { entries: Default::default(), bytes: Default::default(), budget }
    }
}

impl wasmtime::CacheStore for CompileCache {
    fn get(&self, key: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.entries.lock().get(key).map(|v| std::borrow::Cow::Owned(v.clone()))
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let size = key.len() + value.len();
        // Full: later functions compile as usual (the runtime's own are cached first).
        if self.bytes.fetch_add(size, Ordering::Relaxed) + size > self.budget {
            self.bytes.fetch_sub(size, Ordering::Relaxed);
            return false;
        }
        if let Some(old) = self.entries.lock().insert(key.to_vec(), value) {
            self.bytes.fetch_sub(key.len() + old.len(), Ordering::Relaxed);
        }
        true
    }
}

/// The engine plus the thread advancing its epoch.
pub struct EngineHandle {
    engine: Engine,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl EngineHandle {
    /// Builds the engine: cranelift, pooling allocator with copy-on-write images, fuel and
    /// epoch interruption.
    pub fn new(config: &RuntimeConfig) -> Result<EngineHandle> {
        // Each worker may also have a demoted thread still running its call (see `pool.rs`).
        let slots = (2 * config.worker_threads + config.action_threads) as u32 * INSTANCES_PER_WORKER;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(slots)
            .total_core_instances(slots * 4)
            .total_memories(slots * 2)
            .total_tables(slots * 4)
            .max_memory_size(config.max_memory_bytes)
            .linear_memory_keep_resident(config.keep_resident_bytes)
            .table_keep_resident(config.table_keep_resident_bytes)
            .pagemap_scan(Enabled::Auto)
            .total_stacks(slots);

        let mut c = Config::new();
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .memory_init_cow(true)
            .consume_fuel(config.meter_fuel)
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            // Calls run synchronously, but the async feature is compiled in and wasmtime
            // requires its stacks to hold the largest wasm stack.
            .async_stack_size(config.max_wasm_stack + (512 << 10));
        if config.perf_map {
            c.profiler(ProfilingStrategy::PerfMap);
        }
        if config.compile_cache_bytes > 0 {
            c.enable_incremental_compilation(Arc::new(CompileCache::new(config.compile_cache_bytes)))
                .map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        }
        let engine = Engine::new(&c).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop, tick) = (engine.clone(), stop.clone(), config.epoch_tick);
            std::thread::Builder::new()
                .name("kiln-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(e.to_string()))?
        };
        Ok(EngineHandle { engine, stop, ticker: Some(ticker) })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
