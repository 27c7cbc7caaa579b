//! Running calls: argument checks, quotas, the worker pool, a fresh instance per call with
//! fuel, deadline and memory limits, nested calls, mutation commits with OCC retries, result
//! checks and metering.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kiln_component::bindings::exports::kiln::platform::guest::Call;
use kiln_component::bindings::kiln::platform::types::{
    Error as WitError, FunctionKind as WitKind, Header, HttpRequest,
};
use kiln_store::catalog::Catalog;
use kiln_store::{StoreError, Transaction};
use kiln_value::validator::IdCheck;
use kiln_value::{DocumentId, Object, Value, from_msgpack, to_msgpack};
use tracing::Instrument;
use wasmtime::component::TypedFunc;
use wasmtime::{Store, Trap};

use crate::deployment::{Deployment, FunctionEntry, Version, normalize_path};
use crate::error::CallError;
use crate::heap_touch::thread_minor_faults;
use crate::host::{HostCtx, LogBuffer, MemoryLimiter, wit_error};
use crate::idempotency;
use crate::journal::Journal;
use crate::metering::CallRecord;
use crate::query_cache::CacheKey;
use crate::{CallOutcome, CallRequest, FunctionKind, Shared};

/// Milliseconds since the Unix epoch, now.
pub(crate) fn wall_clock_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn wit_kind(kind: FunctionKind) -> WitKind {
    match kind {
        FunctionKind::Query => WitKind::Query,
        FunctionKind::Mutation => WitKind::Mutation,
        FunctionKind::Action => WitKind::Action,
    }
}

/// Convex's message for a call of a function the deployed app does not export (`public`:
/// the caller may only call public functions).
fn not_found_message(path: &str, public: bool) -> String {
    let public = if public { "public " } else { "" };
    format!(
        "Could not find {public}function for '{path}'. Did you forget to run `npx convex dev` or `npx convex deploy`?"
    )
}

/// Ids in arguments must name existing documents' tables of this deployment, those of the
/// component instance (the second field; `""`: the app) whose function is called.
struct CatalogIds<'a>(Arc<Catalog>, &'a str);

impl IdCheck for CatalogIds<'_> {
    fn is_id_of(&self, id: &str, table: &str) -> bool {
        match (DocumentId::decode(id), self.0.table(&kiln_store::component_table(self.1, table))) {
            (Ok(d), Some(t)) => d.table == t.number,
            _ => false,
        }
    }
}

/// Checks arguments against size limits and the function's validator; returns their encoding.
fn check_args(
    dep: &Deployment,
    entry: &FunctionEntry,
    component: &str,
    path: &str,
    args: &Value,
) -> Result<Vec<u8>, CallError> {
    if !matches!(args, Value::Object(_)) {
        return Err(CallError::new("InvalidArgs", format!("{path}: arguments must be an object")));
    }
    let max = dep.config.read().limits.max_value_bytes;
    if args.size() > max {
        return Err(CallError::new(
            "ArgumentsTooLarge",
            format!("{path}: arguments are {} bytes, over {max}", args.size()),
        ));
    }
    kiln_value::validation::validate_value(args).map_err(|e| CallError::new("InvalidArgs", format!("{path}: {e}")))?;
    if let Some(v) = &entry.args {
        v.check(args, &CatalogIds(dep.store.catalog(), component))
            // Convex's wording: apps and their tests match on `ArgumentValidationError`.
            .map_err(|e| CallError::new("InvalidArgs", format!("ArgumentValidationError: {e}\nFunction: {path}")))?;
    }
    Ok(to_msgpack(args))
}

/// Decodes a result and checks its size and the function's return validator.
fn check_result(
    dep: &Deployment,
    entry: &FunctionEntry,
    component: &str,
    path: &str,
    bytes: &[u8],
) -> Result<Value, CallError> {
    let value = from_msgpack(bytes).map_err(|e| CallError::new("InvalidReturnValue", format!("{path}: {e}")))?;
    let max = dep.config.read().limits.max_value_bytes;
    if value.size() > max {
        return Err(CallError::new(
            "ResultTooLarge",
            format!("{path} returned {} bytes, over the limit of {max}", value.size()),
        ));
    }
    if let Some(v) = &entry.returns {
        v.check(&value, &CatalogIds(dep.store.catalog(), component)).map_err(|e| {
            CallError::new("InvalidReturnValue", format!("{path}: the return value does not match the validator: {e}"))
        })?;
    }
    Ok(value)
}

/// The result of running one instance.
pub(crate) struct Executed {
    pub ctx: HostCtx,
    pub outcome: Result<Vec<u8>, CallError>,
    pub fuel: u64,
    /// Minor page faults the worker took instantiating and running it.
    pub faults: u64,
    /// Whether the mutation's idempotency record is already written into its transaction.
    pub recorded: bool,
}

/// A spent call's store: dropping it resets its instance slot (copying back the pages the
/// call wrote), which a caller can put off until it has replied.
pub(crate) struct SpentStore {
    _store: Store<HostCtx>,
}

/// Runs one call in a fresh instance (synchronously, on a worker thread).
pub(crate) fn execute(ctx: HostCtx, args: Vec<u8>, request_id: &str, fuel: u64) -> Executed {
    execute_keeping_store(ctx, args, request_id, fuel).0
}

/// Like `execute`, but also hands back the spent store.
pub(crate) fn execute_keeping_store(
    mut ctx: HostCtx,
    args: Vec<u8>,
    request_id: &str,
    fuel: u64,
) -> (Executed, SpentStore) {
    let limits = ctx.deployment.config.read().limits.clone();
    let deadline = match ctx.kind {
        FunctionKind::Action => limits.action_deadline,
        _ => limits.query_mutation_deadline,
    };
    let shared = ctx.shared.clone();
    ctx.limiter = MemoryLimiter { cap: limits.memory_bytes.min(shared.config.max_memory_bytes), exceeded: false };
    let (version, path, kind) = (ctx.version.clone(), ctx.path.clone(), ctx.kind);
    let span = tracing::debug_span!(
        "guest",
        deployment = %ctx.deployment.name,
        %path,
        component = %ctx.component,
        ?kind,
        depth = ctx.depth
    );
    let _guard = span.enter();
    let mut store = Store::new(shared.engine.engine(), ctx);
    store.limiter(|c| &mut c.limiter);
    let _ = store.set_fuel(fuel);
    let tick = shared.config.epoch_tick.as_micros().max(1);
    let deadline_ticks = (deadline.as_micros() / tick) as u64 + 1;
    let demote_ticks = (shared.config.demote_after.as_micros() / tick).max(1) as u64;
    if kind != FunctionKind::Action && demote_ticks < deadline_ticks {
        // A long query or mutation hands its worker's place to a new thread and runs on at a
        // lower priority (see `pool.rs`); the callback runs again at the deadline itself.
        store.set_epoch_deadline(demote_ticks);
        let mut demoted = false;
        store.epoch_deadline_callback(move |_| {
            if std::mem::replace(&mut demoted, true) {
                return Err(Trap::Interrupt.into());
            }
            crate::pool::demote_current_worker();
            Ok(wasmtime::UpdateDeadline::Continue(deadline_ticks - demote_ticks))
        });
    } else {
        store.set_epoch_deadline(deadline_ticks);
    }
    let touch_heap = version.heap_touch.active();
    let http = store.data_mut().http.take();
    let call = Call {
        kind: if http.is_some() { WitKind::HttpAction } else { wit_kind(kind) },
        path: version.bundle_path(&store.data().component, &path),
        args,
        request_id: request_id.to_owned(),
        http,
        touch_heap,
    };
    let faults = thread_minor_faults();
    let result = invoke(&version, &mut store, &call);
    let faults = thread_minor_faults().saturating_sub(faults);
    version.heap_touch.record(faults);
    let used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let mut ctx = store.data_mut().take();
    if let Some(txn) = ctx.txn.as_mut() {
        for (_, id) in ctx.streams.drain() {
            let _ = txn.close_query(id);
        }
    }
    let outcome = classify(result, &ctx, &path, fuel, deadline);
    (Executed { ctx, outcome, fuel: used, faults, recorded: false }, SpentStore { _store: store })
}

/// The signature of the guest's `invoke` export.
type Invoke<'a> = TypedFunc<(&'a Call,), (Result<Vec<u8>, WitError>,)>;

/// Instantiates `version` in `store` and calls its `invoke` with `call`. Wasmtime's type check
/// of the export (~2 µs; the generated bindings' `AppPre` checked every export of the guest
/// interface on every instance) runs on a version's first call only.
fn invoke(version: &Version, store: &mut Store<HostCtx>, call: &Call) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
    let instance = version.pre.instantiate(&mut *store)?;
    let func = instance
        .get_func(&mut *store, version.invoke)
        .ok_or_else(|| wasmtime::format_err!("the component's invoke export is not a function"))?;
    let typed: Invoke<'_> = if version.invoke_checked.load(Ordering::Acquire) {
        // SAFETY: every instance of a version comes from its one `InstancePre`, so from the same
        // component with the same types, and an earlier instance's `invoke` passed `typed`
        // with this very signature.
        unsafe { TypedFunc::new_unchecked(func) }
    } else {
        let typed = func.typed(&*store)?;
        version.invoke_checked.store(true, Ordering::Release);
        typed
    };
    Ok(typed.call(&mut *store, (call,))?.0)
}

fn classify(
    result: wasmtime::Result<Result<Vec<u8>, WitError>>,
    ctx: &HostCtx,
    path: &str,
    fuel: u64,
    deadline: Duration,
) -> Result<Vec<u8>, CallError> {
    let memory = || {
        CallError::new(
            "MemoryLimitExceeded",
            format!("{path} exceeded its memory limit of {} MiB", ctx.limiter.cap >> 20),
        )
    };
    match result {
        Err(e) => Err(match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                CallError::new("FuelExhausted", format!("{path} used all of its {fuel} units of fuel"))
            }
            Some(Trap::Interrupt) => {
                CallError::new("DeadlineExceeded", format!("{path} ran past its deadline of {deadline:?}"))
            }
            Some(Trap::StackOverflow) => stack_overflow(path),
            Some(Trap::MemoryOutOfBounds) if below_address_zero(&e) => stack_overflow(path),
            _ if ctx.limiter.exceeded => memory(),
            Some(trap) => CallError::new("GuestTrap", format!("{path} trapped: {trap}")),
            None if format!("{e:#}").contains("concurrent") => {
                CallError::new("Overloaded", format!("{path}: no instance slot is free: {e:#}"))
            }
            None => CallError::new("GuestTrap", format!("{path} failed: {e:#}")),
        }),
        Ok(r) => match (&ctx.fatal, r) {
            (Some(fatal), _) => Err(fatal.error.clone()),
            (None, Err(_)) if ctx.limiter.exceeded => Err(memory()),
            (None, Err(e)) => Err(CallError {
                code: e.code,
                message: e.message,
                data: e.data.as_deref().and_then(|d| from_msgpack(d).ok()),
            }),
            (None, Ok(bytes)) => Ok(bytes),
        },
    }
}

fn stack_overflow(path: &str) -> CallError {
    CallError::new("StackOverflow", format!("{path} exhausted its stack (unbounded recursion?)"))
}

/// How far below address 0 a fault still counts as a stack that ran past it.
const STACK_WRAP_BYTES: u64 = 64 << 20;

/// Whether a memory fault hit the top of the 32-bit address space: where a guest's shadow
/// stack, which toolchains put at the bottom of linear memory, goes once it grows past 0
/// (QuickJS keeps each call's arguments and locals there, so recursion through wide frames
/// runs it out before wasmtime's native stack). wasmtime names the address in the error's
/// context ("memory fault at wasm address 0x…"); without it, the trap stays a `GuestTrap`.
fn below_address_zero(e: &wasmtime::Error) -> bool {
    let text = format!("{e:#}");
    let Some((_, rest)) = text.split_once("memory fault at wasm address 0x") else { return false };
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    u64::from_str_radix(&hex, 16).is_ok_and(|address| ((1 << 32) - STACK_WRAP_BYTES..1 << 32).contains(&address))
}

/// A context for a call of `kind` to `path`.
#[allow(clippy::too_many_arguments)]
fn new_ctx(
    shared: &Arc<Shared>,
    dep: &Arc<Deployment>,
    version: &Arc<crate::deployment::Version>,
    kind: FunctionKind,
    path: &str,
    txn: Option<Transaction>,
    identity: Option<Value>,
    seed: u64,
    now_ms: f64,
    depth: u32,
) -> HostCtx {
    let limits = dep.config.read().limits.clone();
    HostCtx {
        shared: shared.clone(),
        deployment: dep.clone(),
        version: version.clone(),
        kind,
        path: path.to_owned(),
        component: String::new(),
        txn,
        streams: Default::default(),
        next_stream: 0,
        identity,
        seed,
        now_ms,
        logs: LogBuffer::new(limits.log_lines, limits.log_line_bytes),
        fatal: None,
        limiter: MemoryLimiter { cap: limits.memory_bytes, exceeded: false },
        depth,
        nested_fuel: 0,
        journal: Journal::default(),
        scheduled: Default::default(),
        freed: Vec::new(),
        http: None,
    }
}

fn fuel_for(dep: &Deployment, kind: FunctionKind) -> u64 {
    let limits = &dep.config.read().limits;
    if kind == FunctionKind::Action { limits.action_fuel } else { limits.query_mutation_fuel }
}

/// Runs `runQuery`/`runMutation`/`runAction` from inside a host call, on the same worker
/// thread. Queries and mutations share the caller's transaction; from an action each nested
/// call is its own transaction with its own limits.
/// How the `convex` package names a function of a mounted component (`components.x.mod.fn`).
pub(crate) const REFERENCE_PREFIX: &str = "_reference/childComponent/";
/// How a function handle (`createFunctionHandle`) starts.
pub(crate) const HANDLE_PREFIX: &str = "function://";

/// A function of `instance` as errors and logs name it (`limiter/lib:limit`).
pub(crate) fn display_path(instance: &str, path: &str) -> String {
    if instance.is_empty() { path.to_owned() } else { format!("{instance}/{path}") }
}

/// The function a call from instance `from` names, and whether the caller may reach it:
/// `module:export` is `from`'s own; a reference `_reference/childComponent/<child>/<module…>/
/// <export>` is a public function of `from`'s mounted child; a handle (`function://<instance>;
/// <path>`, see [`function_handle`]) is the function it was made for, whoever holds it.
pub(crate) fn resolve<'v>(
    version: &'v Version,
    from: &str,
    name: &str,
) -> Result<(String, String, &'v FunctionEntry), CallError> {
    let (instance, path, by_handle) = callee(version, from, name)?;
    let entry = version
        .function_in(&instance, &path)
        // A component's API is its public functions; its internal ones are its own.
        .filter(|e| e.public || instance == from || by_handle)
        .ok_or_else(|| CallError::new("FunctionNotFound", not_found_message(&display_path(&instance, &path), false)))?;
    Ok((instance, path, entry))
}

/// The handle of a function of `instance`: it names the instance, so that it reaches the same
/// function from any component it is passed to.
pub(crate) fn function_handle(instance: &str, path: &str) -> String {
    format!("{HANDLE_PREFIX}{instance};{path}")
}

fn callee(version: &Version, from: &str, name: &str) -> Result<(String, String, bool), CallError> {
    if let Some(handle) = name.strip_prefix(HANDLE_PREFIX) {
        let invalid =
            || CallError::new("InvalidFunctionHandle", format!("{name} is not a function handle of this deployment"));
        let (instance, path) = handle.split_once(';').ok_or_else(invalid)?;
        if path.is_empty() || !version.has_instance(instance) {
            return Err(invalid());
        }
        return Ok((instance.to_owned(), normalize_path(path), true));
    }
    let Some(reference) = name.strip_prefix(REFERENCE_PREFIX) else {
        return Ok((from.to_owned(), normalize_path(name), false));
    };
    let parts: Vec<&str> = reference.split('/').collect();
    let [child, module @ .., export] = parts.as_slice() else {
        return Err(CallError::new("FunctionNotFound", format!("{name} names no function of a component")));
    };
    if module.is_empty() || parts.iter().any(|p| p.is_empty()) {
        return Err(CallError::new("FunctionNotFound", format!("{name} names no function of a component")));
    }
    let instance = kiln_store::component_table(from, child);
    if !version.has_instance(&instance) {
        let owner = if from.is_empty() { "the app".to_owned() } else { format!("component {from}") };
        return Err(CallError::new("FunctionNotFound", format!("{owner} mounts no component named {child:?}")));
    }
    Ok((instance, normalize_path(&format!("{}:{export}", module.join("/"))), false))
}

pub(crate) fn run_nested(ctx: &mut HostCtx, kind: FunctionKind, name: &str, args: &[u8]) -> Result<Vec<u8>, WitError> {
    let limits = ctx.deployment.config.read().limits.clone();
    if ctx.depth >= limits.max_nesting {
        return Err(wit_error(
            "NestingTooDeep",
            format!("{}: calls nest more than {} deep", ctx.path, limits.max_nesting),
        ));
    }
    let version = ctx.version.clone();
    let (component, path, entry) =
        resolve(&version, &ctx.component, name).map_err(|e| wit_error(&e.code, e.message))?;
    if entry.kind != kind {
        return Err(wit_error("WrongFunctionKind", format!("{path} is a {:?}, not a {kind:?}", entry.kind)));
    }
    let value = from_msgpack(args).map_err(|e| wit_error(e.code(), e.to_string()))?;
    let args =
        check_args(&ctx.deployment, entry, &component, &path, &value).map_err(|e| wit_error(&e.code, e.message))?;
    let (shared, dep) = (ctx.shared.clone(), ctx.deployment.clone());
    let fuel = fuel_for(&dep, kind);
    // Within a query or mutation the child shares the caller's snapshot, so its seed follows
    // from the caller's; from an action each child has a snapshot of its own.
    let seed = crate::secret::nested_seed(ctx.seed, &path, &args);
    let child = |txn, now_ms, seed| {
        let mut callee =
            new_ctx(&shared, &dep, &version, kind, &path, txn, ctx.identity.clone(), seed, now_ms, ctx.depth + 1);
        callee.component = component.clone();
        callee
    };
    // A child mutation shares its caller's transaction; if it fails (even when the caller
    // catches the error and commits), none of its writes remain.
    let savepoint = match kind {
        FunctionKind::Mutation => ctx.txn.as_ref().map(Transaction::savepoint),
        _ => None,
    };
    let called = Instant::now();
    let executed = match (ctx.kind, kind) {
        (FunctionKind::Query | FunctionKind::Mutation, FunctionKind::Query)
        | (FunctionKind::Mutation, FunctionKind::Mutation) => {
            // A query's pages read by the queries it calls are part of its journal.
            let mut callee = child(ctx.txn.take(), ctx.now_ms, seed);
            callee.journal = std::mem::take(&mut ctx.journal);
            callee.scheduled = ctx.scheduled;
            let mut ex = execute(callee, args, "", fuel);
            ctx.scheduled = ex.ctx.scheduled;
            ctx.txn = ex.ctx.txn.take();
            // A failed child's writes are rolled back below: its deletions with them.
            if ex.outcome.is_ok() {
                ctx.freed.append(&mut ex.ctx.freed);
            }
            ctx.journal = std::mem::take(&mut ex.ctx.journal);
            if ctx.fatal.is_none() {
                ctx.fatal = ex.ctx.fatal.take();
            }
            ex
        }
        (FunctionKind::Action, FunctionKind::Query) => {
            let (txn, now, seed) = snapshot_stamp(&dep, &path, &args, dep.store.begin_read_only());
            execute(child(txn, now, seed), args, "", fuel)
        }
        (FunctionKind::Action, FunctionKind::Mutation) => {
            let (mut attempt, started) = (0, Instant::now());
            loop {
                let (txn, now, seed) = snapshot_stamp(&dep, &path, &args, dep.store.begin());
                let mut callee = child(txn, now, seed);
                callee.scheduled = ctx.scheduled;
                let mut ex = execute(callee, args.clone(), "", fuel);
                let retry = match (&ex.outcome, ex.ctx.txn.take()) {
                    (Ok(_), Some(txn)) => {
                        let failed = shared.handle.block_on(txn.commit()).err();
                        if failed.is_none() {
                            let _runtime = shared.handle.enter();
                            dep.files.free(&dep.store, std::mem::take(&mut ex.ctx.freed));
                        }
                        failed
                    }
                    (_, txn) => {
                        let retry = ex.ctx.fatal.as_ref().filter(|f| f.retryable).map(|f| StoreError::Conflict {
                            table: String::new(),
                            conflicting_ts: f.retry_after.unwrap_or_default(),
                            key: 0,
                        });
                        // The error goes back to the action: first let what it read become durable.
                        if let (None, Some(txn), Err(e)) = (&retry, txn, &ex.outcome) {
                            ex.outcome = Err(shared.handle.block_on(settled(&txn, e.clone())));
                        }
                        retry
                    }
                };
                match retry {
                    None => {
                        if ex.outcome.is_ok() {
                            ctx.scheduled = ex.ctx.scheduled;
                        }
                        break ex;
                    }
                    Some(e)
                        if e.is_retryable()
                            && attempt < limits.mutation_retries
                            && started.elapsed() < limits.mutation_retry_time =>
                    {
                        attempt += 1;
                        ctx.nested_fuel += ex.fuel;
                        // An action's thread may wait: it holds no query or mutation worker.
                        std::thread::sleep(retry_backoff(attempt));
                    }
                    Some(e) => {
                        ex.outcome = Err(CallError::new(e.code(), format!("{path}: {e}")));
                        break ex;
                    }
                }
            }
        }
        (FunctionKind::Action, FunctionKind::Action) => {
            let mut callee = child(None, wall_clock_ms(), crate::secret::os_random_u64());
            callee.scheduled = ctx.scheduled;
            let ex = execute(callee, args, "", fuel);
            ctx.scheduled = ex.ctx.scheduled;
            ex
        }
        (caller, callee) => {
            return Err(wit_error("NotAllowed", format!("{}: a {caller:?} cannot call a {callee:?}", ctx.path)));
        }
    };
    let spent = executed.fuel + executed.ctx.nested_fuel;
    ctx.nested_fuel += spent;
    ctx.logs.extend(executed.ctx.logs);
    let result = executed.outcome.and_then(|bytes| check_result(&dep, entry, &component, &path, &bytes).map(|_| bytes));
    // A call into another instance is reported under that instance as well.
    if component != ctx.component {
        let outcome = result.as_ref().err().map_or("ok".to_owned(), |e| e.code.clone());
        let path = display_path(&component, &path);
        let record = CallRecord { path, kind, fuel: spent, wall: called.elapsed(), outcome };
        dep.metering.record_component(&component, &record);
    }
    if result.is_err()
        && let (Some(savepoint), Some(txn)) = (savepoint, ctx.txn.as_mut())
    {
        txn.rollback_to(savepoint);
    }
    result.map_err(|e| WitError { code: e.code, message: e.message, data: e.data.as_ref().map(to_msgpack) })
}

/// Runs a client's call to completion, including retries, and meters it.
pub(crate) async fn call(shared: Arc<Shared>, dep: Arc<Deployment>, req: CallRequest) -> CallOutcome {
    let started = Instant::now();
    let span = tracing::info_span!("call", deployment = %dep.name, path = %req.path, kind = ?req.kind);
    let mut out = CallOutcome::default();
    let path = normalize_path(&req.path);
    let result = run(&shared, &dep, &req, &path, &mut out).instrument(span).await;
    // A component's function is metered under its instance (`counter/lib:add`).
    let component = if req.internal { req.component.as_str() } else { "" };
    let metered = display_path(component, &path);
    let out = finish(&dep, out, metered.clone(), req.kind, result, started);
    if !component.is_empty() {
        let outcome = out.result.as_ref().err().map_or("ok".to_owned(), |e| e.code.clone());
        let record = CallRecord { path: metered, kind: req.kind, fuel: out.fuel, wall: out.wall, outcome };
        dep.metering.record_component(component, &record);
    }
    out
}

/// Meters a finished call and puts its result into its outcome.
fn finish(
    dep: &Deployment,
    mut out: CallOutcome,
    path: String,
    kind: FunctionKind,
    result: Result<Value, CallError>,
    started: Instant,
) -> CallOutcome {
    out.wall = started.elapsed();
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => e.code.clone(),
    };
    dep.metering.record(CallRecord { path, kind, fuel: out.fuel, wall: out.wall, outcome });
    out.result = result;
    out
}

async fn run(
    shared: &Arc<Shared>,
    dep: &Arc<Deployment>,
    req: &CallRequest,
    path: &str,
    out: &mut CallOutcome,
) -> Result<Value, CallError> {
    let started = Instant::now();
    let version = dep
        .version()
        .ok_or_else(|| CallError::new("NotDeployed", format!("deployment {:?} has no app deployed", dep.name)))?;
    // Clients reach the app's public functions; the scheduler and admins any function.
    let component = if req.internal { req.component.as_str() } else { "" };
    let entry = version.function_in(component, path).filter(|e| e.public || req.internal).ok_or_else(|| {
        CallError::new("FunctionNotFound", not_found_message(&display_path(component, path), !req.internal))
    })?;
    if entry.kind != req.kind {
        return Err(CallError::new(
            "WrongFunctionKind",
            format!("Trying to execute {path} as {:?}, but it is defined as {:?}", req.kind, entry.kind),
        ));
    }
    let args = check_args(dep, entry, component, path, &req.args)?;
    let config = dep.config();
    let fuel = dep.metering.fuel_budget(&config.quotas, fuel_for(dep, req.kind), path)?;
    let cache_key = (req.kind == FunctionKind::Query && req.cacheable).then(|| {
        let version_key = format!("{}/{}", version.id, dep.generation());
        CacheKey::new(
            &version_key,
            &display_path(component, path),
            &args,
            req.identity.as_ref(),
            req.internal,
            req.journal.as_deref(),
        )
    });
    if let Some(key) = &cache_key {
        let ts = req.snapshot.unwrap_or_else(|| dep.store.published_ts());
        if let Some(hit) = dep.query_cache.get(&dep.store, key, ts) {
            out.logs = hit.logs;
            out.read_token = Some(hit.token);
            out.journal = hit.journal;
            out.cached = true;
            return Ok(hit.value);
        }
    }
    // A failed query hands back the journal it was given: the client keeps it.
    out.journal = req.journal.clone();
    let mut attempt = 0;
    // The turns (stripes of `Deployment::turns`) of the keys earlier attempts conflicted on,
    // and those a refused commit handed back (see `Turns`).
    let mut stripes: Vec<usize> = Vec::new();
    let kept: Arc<parking_lot::Mutex<Vec<Turn>>> = Arc::default();
    loop {
        // A retry after a conflict on a known key takes its turn among the retries of writers
        // of that key (FIFO), held until its commit is validated: they then run one after the
        // other, each reading what the one before wrote, instead of all at once conflicting
        // again. A retry that conflicted on several keys (two accounts of a transfer) holds
        // all their turns: it waits for one, and takes the others only if they are free
        // (otherwise it lets go and waits for the busy one), so that it never holds a turn
        // while waiting for another. Taken before a worker permit, so that waiting holds none.
        // A retry whose commit was refused again keeps the turns it held (it stays at the
        // front instead of queueing behind the writers that waited meanwhile).
        let mut turns = std::mem::take(&mut *kept.lock());
        let mut wait_for = None;
        for &stripe in &stripes {
            if turns.iter().any(|(held, _)| *held == stripe) {
                continue;
            }
            match dep.turns[stripe].clone().try_lock_owned() {
                Ok(turn) => turns.push((stripe, turn)),
                Err(_) => {
                    wait_for = Some(stripe);
                    break;
                }
            }
        }
        while let Some(first) = wait_for.take() {
            turns.clear();
            turns.push((first, dep.turns[first].clone().lock_owned().await));
            for &stripe in stripes.iter().filter(|&&s| s != first) {
                match dep.turns[stripe].clone().try_lock_owned() {
                    Ok(turn) => turns.push((stripe, turn)),
                    Err(_) => {
                        wait_for = Some(stripe);
                        break;
                    }
                }
            }
        }
        // A permit bounds the deployment's calls in progress on workers (taken per attempt, so
        // a conflict's backoff holds none), not its mutations waiting for their group commit:
        // that takes a millisecond or more, and with the default of 4 permits held through it
        // a deployment committed at most a few thousand mutations a second on idle workers.
        // A retry holding turns takes the permits' priority lane: the writers behind its turns
        // wait for it, so it must not queue behind every first attempt (see `permits.rs`).
        let closing = || CallError::new("ShuttingDown", "the deployment is closing");
        let permit = if req.kind == FunctionKind::Action {
            Permit::Action { _held: dep.action_permits.clone().acquire_owned().await.map_err(|_| closing())? }
        } else {
            Permit::Call { _held: dep.permits.acquire(!turns.is_empty()).await.ok_or_else(closing)? }
        };
        // A transaction normally begins on the worker, right before its instance runs, so that
        // a mutation's conflict window does not include its wait for a worker. A query at a
        // given snapshot and a mutation with an idempotency key that may have been used
        // (replayed here) begin now.
        let early = match (req.kind, req.snapshot, &req.idempotency_key) {
            (FunctionKind::Query, Some(ts), _) => {
                Some(dep.store.begin_read_only_at(ts).map_err(|e| CallError::new(e.code(), format!("{path}: {e}")))?)
            }
            (FunctionKind::Mutation, _, Some(key)) if !req.idempotency_fresh => {
                let mut txn = dep.store.begin();
                let replayed = match idempotency::replay(&mut txn, key).await {
                    Ok(replayed) => replayed,
                    Err(e) => return Err(settled(&txn, e).await),
                };
                if let Some(value) = replayed {
                    // The recorded result may come from a commit that is not durable yet.
                    txn.settle().await.map_err(|e| CallError::new(e.code(), format!("{path}: {e}")))?;
                    out.commit_ts = Some(txn.begin_ts());
                    out.replayed = true;
                    return Ok(value);
                }
                Some(txn)
            }
            _ => None,
        };
        let job = {
            let (shared, dep, version, path) = (shared.clone(), dep.clone(), version.clone(), path.to_owned());
            let (kind, identity, args, request_id) =
                (req.kind, req.identity.clone(), args.clone(), req.request_id.clone());
            let idempotency_key = req.idempotency_key.clone();
            let scheduled_job = req.scheduled_job;
            let component = component.to_owned();
            let journal = match kind {
                FunctionKind::Query => Journal::for_query(req.journal.as_deref())?,
                _ => Journal::default(),
            };
            move || {
                let (txn, now_ms, seed) = match (kind, early) {
                    // An action's `env.seed` answers fresh OS randomness on every call.
                    (FunctionKind::Action, _) => (None, wall_clock_ms(), crate::secret::os_random_u64()),
                    (_, Some(txn)) => snapshot_stamp(&dep, &path, &args, txn),
                    (FunctionKind::Query, None) => snapshot_stamp(&dep, &path, &args, dep.store.begin_read_only()),
                    (FunctionKind::Mutation, None) => snapshot_stamp(&dep, &path, &args, dep.store.begin()),
                };
                let mut ctx = new_ctx(&shared, &dep, &version, kind, &path, txn, identity, seed, now_ms, 0);
                ctx.component = component;
                ctx.journal = journal;
                let (mut ex, spent) = execute_keeping_store(ctx, args, &request_id, fuel);
                // A mutation's idempotency record is written here, on the worker, where the
                // read it begins with runs inline instead of through tokio's blocking pool (a
                // hand-off to another thread and back). It holds the value the result check
                // below decodes from the same bytes, and commits only if that check passes.
                if let (Some(key), Ok(bytes), Some(txn)) = (&idempotency_key, &ex.outcome, ex.ctx.txn.as_mut())
                    && kind == FunctionKind::Mutation
                    && let Ok(value) = from_msgpack(bytes)
                {
                    match shared.handle.block_on(idempotency::record(txn, key, &value)) {
                        Ok(()) => ex.recorded = true,
                        Err(e) => ex.outcome = Err(e),
                    }
                }
                // A scheduled mutation's job is marked done in its own transaction, which then
                // commits only while the job is still pending: it runs exactly once.
                if let (Some(job), Ok(_), Some(txn)) = (scheduled_job, &ex.outcome, ex.ctx.txn.as_mut())
                    && kind == FunctionKind::Mutation
                    && let Err(e) = shared.handle.block_on(crate::scheduler::complete(txn, job))
                {
                    ex.outcome = Err(e);
                }
                (ex, spent)
            }
        };
        let pool = if req.kind == FunctionKind::Action { &shared.action_pool } else { &shared.pool };
        let mut ex = pool
            .run(dep.tenant, job)
            .await
            .ok_or_else(|| CallError::new("ShuttingDown", "the runtime is shutting down"))?;
        drop(permit);
        out.fuel += ex.fuel + ex.ctx.nested_fuel;
        out.minor_faults += ex.faults;
        out.logs = std::mem::take(&mut ex.ctx.logs).finish();
        let txn = ex.ctx.txn.take();
        let freed = std::mem::take(&mut ex.ctx.freed);
        let failure = match (ex.outcome, txn) {
            (Ok(bytes), Some(mut txn)) if req.kind == FunctionKind::Mutation => {
                let value = match check_result(dep, entry, component, path, &bytes) {
                    Ok(value) => value,
                    Err(e) => return Err(settled(&txn, e).await),
                };
                if let Some(key) = &req.idempotency_key
                    && !ex.recorded
                    && let Err(e) = idempotency::record(&mut txn, key, &value).await
                {
                    return Err(settled(&txn, e).await);
                }
                if !turns.is_empty() {
                    txn.hold_until_validated(Box::new(Turns { held: std::mem::take(&mut turns), back: kept.clone() }));
                }
                match txn.commit().await {
                    Ok(ts) => {
                        out.commit_ts = Some(ts);
                        dep.files.free(&dep.store, freed);
                        return Ok(value);
                    }
                    Err(e) => e,
                }
            }
            (Ok(bytes), txn) => {
                if let Some(mut txn) = txn {
                    out.read_token = Some(txn.read_token());
                }
                let value = check_result(dep, entry, component, path, &bytes)?;
                out.journal = std::mem::take(&mut ex.ctx.journal).finish();
                if let (Some(key), Some(token)) = (cache_key, &out.read_token) {
                    dep.query_cache.put(key, token, &value, &out.logs, out.journal.as_deref());
                }
                return Ok(value);
            }
            (Err(e), txn) => match ex.ctx.fatal.take() {
                Some(f) if f.retryable => StoreError::Conflict {
                    table: String::new(),
                    conflicting_ts: f.retry_after.unwrap_or_default(),
                    key: 0,
                },
                _ => {
                    return Err(match (req.kind, txn) {
                        // A failed query's result depends on what it read, like a successful one.
                        (FunctionKind::Query, Some(mut txn)) => {
                            out.read_token = Some(txn.read_token());
                            e
                        }
                        (FunctionKind::Mutation, Some(txn)) => settled(&txn, e).await,
                        _ => e,
                    });
                }
            },
        };
        let in_time = started.elapsed() < config.limits.mutation_retry_time;
        if failure.is_retryable()
            && attempt < config.limits.mutation_retries
            && in_time
            && req.kind != FunctionKind::Action
        {
            attempt += 1;
            out.retries = attempt;
            let key = failure.conflict_key();
            if key != 0 {
                let stripe = (key % crate::deployment::TURNS as u64) as usize;
                if let Err(at) = stripes.binary_search(&stripe) {
                    stripes.insert(at, stripe);
                }
            } else {
                // No known key: spread the retries by a random wait instead (holding no
                // turn). (A mutation's snapshot includes every validated commit: no need to
                // wait for the conflicting commit to be published.)
                kept.lock().clear();
                tokio::time::sleep(retry_backoff(attempt)).await;
            }
            continue;
        }
        return Err(CallError::new(failure.code(), format!("{path}: {failure}")));
    }
}

/// A permit of an action or of a query or mutation, held while the call is on a worker.
enum Permit {
    Action { _held: tokio::sync::OwnedSemaphorePermit },
    Call { _held: crate::permits::Permit },
}

/// One turn among conflicting writers: its stripe of `Deployment::turns` and the guard.
type Turn = (usize, tokio::sync::OwnedMutexGuard<()>);

/// The turns a mutation's commit holds until it is validated: released then, or handed back
/// to the call when the commit is refused, for its retry.
struct Turns {
    held: Vec<Turn>,
    back: Arc<parking_lot::Mutex<Vec<Turn>>>,
}

impl kiln_store::Hold for Turns {
    fn refused(self: Box<Self>) {
        let Turns { held, back } = *self;
        *back.lock() = held;
    }
}

/// How long to wait before retry `attempt` of a conflicting mutation: a random time up to a
/// bound that doubles per attempt (200 µs, then up to 12.8 ms). The randomness spreads
/// writers that conflicted on the same documents, instead of having them retry in lockstep
/// and conflict again.
fn retry_backoff(attempt: u32) -> Duration {
    let bound = 200u64 << attempt.clamp(1, 7).saturating_sub(1);
    Duration::from_micros(crate::secret::os_random_u64() % (bound + 1))
}

/// `e`, once everything the mutation's snapshot read is durable: a read-write snapshot may
/// include commits still being written, and an error can reveal what was read.
async fn settled(txn: &Transaction, e: CallError) -> CallError {
    match txn.settle().await {
        Ok(()) => e,
        Err(s) => CallError::new(s.code(), format!("{}: {s}", e.message)),
    }
}

/// A query's or mutation's transaction with the time and seed its snapshot fixes: the same
/// function, arguments and snapshot draw the same random numbers (the seed keyed by the
/// deployment's secret, so it cannot be computed from outside). A query sees its snapshot's
/// time; a mutation the time it starts (frozen for the call), as in Convex: its snapshot is the
/// newest commit, which may be long past on an idle deployment, and `runAfter` and the app's
/// own timestamps count from `Date.now()`.
fn snapshot_stamp(dep: &Deployment, path: &str, args: &[u8], txn: Transaction) -> (Option<Transaction>, f64, u64) {
    let ts = txn.begin_ts();
    let seed = dep.seed_key.snapshot_seed(path, args, ts);
    let snapshot_ms = ts.0 as f64 / 1e6;
    let now = if txn.is_read_only() { snapshot_ms } else { wall_clock_ms().max(snapshot_ms) };
    (Some(txn), now, seed)
}

/// Runs an HTTP action: `request` routed by the app's router, as an action (with its limits,
/// its permits and its pool), answering the response value `{status, headers, body}`.
pub(crate) async fn http_call(shared: Arc<Shared>, dep: Arc<Deployment>, request: crate::HttpCall) -> CallOutcome {
    let started = Instant::now();
    let label = format!("{} {}", request.method, request.route);
    let span = tracing::info_span!("http_action", deployment = %dep.name, route = %label);
    let mut out = CallOutcome::default();
    let result = async {
        let version = dep
            .version()
            .ok_or_else(|| CallError::new("NotDeployed", format!("deployment {:?} has no app deployed", dep.name)))?;
        if version.manifest.http_routes.is_empty() {
            return Err(CallError::new("NoHttpRouter", "the app has no HTTP router (convex/http.ts)"));
        }
        let config = dep.config();
        let fuel = dep.metering.fuel_budget(&config.quotas, config.limits.action_fuel, &label)?;
        let _permit = dep
            .action_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CallError::new("ShuttingDown", "the deployment is closing"))?;
        let job = {
            let (shared, dep) = (shared.clone(), dep.clone());
            move || {
                let crate::HttpCall { method, url, route, headers, body, identity, request_id } = request;
                let seed = crate::secret::os_random_u64();
                let mut ctx = new_ctx(
                    &shared,
                    &dep,
                    &version,
                    FunctionKind::Action,
                    &route,
                    None,
                    identity,
                    seed,
                    wall_clock_ms(),
                    0,
                );
                let headers = headers.into_iter().map(|(name, value)| Header { name, value }).collect();
                ctx.http = Some(HttpRequest { method, url, headers, body });
                let args = to_msgpack(&Value::Object(Object::default()));
                execute_keeping_store(ctx, args, &request_id, fuel)
            }
        };
        let mut ex = shared
            .action_pool
            .run(dep.tenant, job)
            .await
            .ok_or_else(|| CallError::new("ShuttingDown", "the runtime is shutting down"))?;
        out.fuel += ex.fuel + ex.ctx.nested_fuel;
        out.minor_faults += ex.faults;
        out.logs = std::mem::take(&mut ex.ctx.logs).finish();
        let bytes = ex.outcome?;
        from_msgpack(&bytes).map_err(|e| CallError::new("InvalidHttpResponse", format!("{label}: {e}")))
    }
    .instrument(span)
    .await;
    finish(&dep, out, label, FunctionKind::Action, result, started)
}

#[cfg(test)]
mod tests {
    use super::below_address_zero;

    fn fault(address: u64) -> wasmtime::Error {
        wasmtime::Error::msg("wasm trap: out of bounds memory access")
            .context(format!("memory fault at wasm address 0x{address:x} in linear memory of size 0x940000"))
    }

    #[test]
    fn only_faults_just_below_address_zero_are_a_stack_that_ran_past_it() {
        assert!(below_address_zero(&fault(0xffff_fff0)));
        assert!(below_address_zero(&fault(0xfc00_0000)));
        assert!(!below_address_zero(&fault(0xfbff_ffff)), "more than 64 MiB below 0");
        assert!(!below_address_zero(&fault(0x94_0010)), "just past the end of memory");
        assert!(!below_address_zero(&fault(0x1_0000_0000)), "beyond 32 bits");
        assert!(!below_address_zero(&wasmtime::Error::msg("wasm trap: out of bounds memory access")));
    }
}
