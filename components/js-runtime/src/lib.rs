//! Kiln's QuickJS runtime: a component of world `app` that runs a Convex-style app bundled as
//! one ES module.
//!
//! Build time (pre-initialization, driven by the guest SDK): the host writes the bundle into
//! memory (`kiln-source-alloc`) and runs `kiln-wizer-init`, which creates the QuickJS runtime,
//! installs the natives and the prelude (`prelude.js`), and evaluates the bundle; the memory
//! image is then snapshotted, so every call starts with the app already loaded.
//!
//! Call time: `invoke` hands the call to the prelude's dispatcher, drives the returned promise
//! to completion, and converts the result between Convex JSON and MessagePack. Natives reach
//! the world only through the WIT imports (`syscall.rs`); WASI calls made by libc are served by
//! `kiln-wasi-stubs` from the same per-call state.

mod asym;
mod crypto;
mod heap_pages;
mod syscall;
mod values;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use javy_plugin_api::javy::quickjs::prelude::Func;
use javy_plugin_api::javy::quickjs::{self, Ctx, Function, Module, Object, Persistent};
use javy_plugin_api::javy::{self, Runtime};
use kiln_value::{Value, from_msgpack, to_convex_json};

wit_bindgen::generate!({ world: "app", path: "../../wit" });

use exports::kiln::platform::guest::{Call, FunctionInfo, Guest, HttpRoute, Manifest};
use kiln::platform::types::{Error, FunctionKind, HttpRequest, Visibility};
use kiln::platform::{env, log};

const PRELUDE: &str = include_str!("prelude.js");

thread_local! {
    static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
    static SOURCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static INIT_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    static IN_CALL: Cell<Option<&'static str>> = const { Cell::new(None) };
    static RNG: Cell<u64> = const { Cell::new(0x853c_49e6_748f_ea9b) };
    /// The call's arguments (MessagePack of an object), for `__kiln_native.argsJson`.
    static ARGS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The arguments decoded when the call started, where no arguments object was built.
    static ARGS_TREE: RefCell<Option<Value>> = const { RefCell::new(None) };
    /// The call's arguments object, built from `ARGS` when a query or mutation starts, for
    /// `__kiln_native.args`; none where the package's own decoder must decide.
    static ARGS_JS: RefCell<Option<Persistent<quickjs::Value<'static>>>> = const { RefCell::new(None) };
    /// The prelude's entry points, kept from initialization (in the snapshot): looking them up
    /// on the global object by name in every call cost two atoms from Rust strings.
    static ENTRY: RefCell<Option<Entry>> = const { RefCell::new(None) };
    /// A result `__kiln_native.result` took (envelope tag "2").
    static RESULT: RefCell<Option<Value>> = const { RefCell::new(None) };
    /// The path of the running call, for the dispatcher's messages (`__kiln_native.path`).
    static CALL_PATH: RefCell<String> = const { RefCell::new(String::new()) };
    /// The deployment's environment variables (JSON) while a pushed app loads: Convex runs a
    /// push's module-level code with them (`auth.config.ts` reads its providers from them).
    /// Cleared before the snapshot is taken.
    static INIT_ENV: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The app's exported functions, found at initialization (in the snapshot).
    static FUNCTIONS: RefCell<Functions> = const { RefCell::new(BTreeMap::new()) };
    /// The request of the running HTTP action, for `__kiln_native.httpRequest`.
    static HTTP_REQUEST: RefCell<Option<HttpRequest>> = const { RefCell::new(None) };
}

/// `__kiln_native.httpRequest()`: the running HTTP action's request as `[method, url,
/// [[name, value], …], body]` (the body an `ArrayBuffer`), taken once; `null` after.
fn http_request<'js>(ctx: Ctx<'js>) -> quickjs::Result<quickjs::Value<'js>> {
    let Some(request) = HTTP_REQUEST.with(|r| r.borrow_mut().take()) else { return Ok(quickjs::Value::new_null(ctx)) };
    let out = quickjs::Array::new(ctx.clone())?;
    out.set(0, request.method)?;
    out.set(1, request.url)?;
    let headers = quickjs::Array::new(ctx.clone())?;
    for (i, header) in request.headers.into_iter().enumerate() {
        let pair = quickjs::Array::new(ctx.clone())?;
        pair.set(0, header.name)?;
        pair.set(1, header.value)?;
        headers.set(i, pair)?;
    }
    out.set(2, headers)?;
    out.set(3, quickjs::ArrayBuffer::new(ctx.clone(), request.body)?)?;
    Ok(out.into_value())
}

/// Exported functions by module and export name. A call hands its function to the dispatcher
/// instead of the path's two parts as strings, which the dispatcher's property reads each
/// made an atom of.
type Functions = BTreeMap<String, BTreeMap<String, Persistent<Function<'static>>>>;

/// The functions each module of `modules` exports.
fn functions_of<'js>(ctx: &Ctx<'js>, modules: &Object<'js>) -> quickjs::Result<Functions> {
    let mut all = Functions::new();
    for name in modules.keys::<String>() {
        let name = name?;
        let module: quickjs::Value = modules.get(&name)?;
        let Some(module) = module.as_object() else { continue };
        let mut exports = BTreeMap::new();
        for export in module.keys::<String>() {
            let export = export?;
            let value: quickjs::Value = module.get(&export)?;
            if let Some(function) = value.as_function() {
                exports.insert(export, Persistent::save(ctx, function.clone()));
            }
        }
        all.insert(name, exports);
    }
    Ok(all)
}

/// The prelude's functions that drive a call.
struct Entry {
    dispatch: Persistent<Function<'static>>,
    settled: Persistent<Function<'static>>,
    failed: Persistent<Function<'static>>,
    run_timer: Persistent<Function<'static>>,
}

impl Entry {
    fn of(ctx: &Ctx<'_>) -> quickjs::Result<Entry> {
        let globals = ctx.globals();
        let get = |name: &str| globals.get::<_, Function>(name).map(|f| Persistent::save(ctx, f));
        Ok(Entry {
            dispatch: get("__kiln_dispatch")?,
            settled: get("__kiln_settled")?,
            failed: get("__kiln_failed")?,
            run_timer: get("__kiln_run_timer")?,
        })
    }

    /// The entry point `pick` chooses, for a call in `ctx`.
    fn get<'js>(ctx: &Ctx<'js>, pick: fn(&Entry) -> &Persistent<Function<'static>>) -> Result<Function<'js>, Error> {
        let saved = ENTRY.with(|e| e.borrow().as_ref().map(|e| pick(e).clone())).ok_or_else(not_initialized)?;
        saved.restore(ctx).map_err(|e| js_error(ctx, e))
    }
}

/// The largest result `__kiln_native.result` keeps (the host checks its configured limit).
const MAX_RESULT_BYTES: usize = 16 << 20;

/// The call's arguments as the package's `jsonToConvex(JSON.parse(argsJson))` makes them (an
/// array of the arguments object); `undefined` outside a call or where the package's decoder
/// would defer (see `values::js_of_msgpack`).
fn args_value<'js>(ctx: Ctx<'js>) -> quickjs::Result<quickjs::Value<'js>> {
    let Some(saved) = ARGS_JS.with(|a| a.borrow().clone()) else { return Ok(quickjs::Value::new_undefined(ctx)) };
    let array = quickjs::Array::new(ctx.clone())?;
    array.set(0, saved.restore(&ctx)?)?;
    Ok(array.into_value())
}

/// The call's arguments as the Convex JSON text of an array of the arguments object.
fn args_json() -> String {
    let tree = ARGS_TREE.with(|t| t.borrow().as_ref().map(|args| to_convex_json(args).to_string()));
    // (A query's or mutation's arguments were decoded into an object instead; rarely needed.)
    let json =
        tree.or_else(|| ARGS.with(|a| from_msgpack(&a.borrow()).ok().map(|args| to_convex_json(&args).to_string())));
    format!("[{}]", json.as_deref().unwrap_or("{}"))
}

/// Decodes a call's arguments, which must be the MessagePack of an object.
fn decode_args(args: &[u8]) -> Result<Value, Error> {
    match from_msgpack(args) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(error("InvalidArgs", format!("arguments must be an object, not {}", other.kind().name()))),
        Err(e) => Err(error(e.code(), e.to_string())),
    }
}

/// Takes a call's result as the host would decode it from `convexToJson`'s JSON and answers
/// its size, kept only up to [`MAX_RESULT_BYTES`]; `undefined` where the package's code must
/// decide (see `values::value_of_js`).
fn take_result<'js>(ctx: Ctx<'js>, result: quickjs::Value<'js>) -> quickjs::Result<quickjs::Value<'js>> {
    let Some(value) = values::value_of_js(&ctx, &result)? else { return Ok(quickjs::Value::new_undefined(ctx)) };
    let size = value.size();
    if size <= MAX_RESULT_BYTES {
        RESULT.with(|r| *r.borrow_mut() = Some(value));
    }
    Ok(quickjs::Value::new_number(ctx, size as f64))
}

fn error(code: &str, message: impl Into<String>) -> Error {
    Error { code: code.to_owned(), message: message.into(), data: None }
}

/// The kind of the call in progress, or `None` during initialization.
pub(crate) fn call_kind() -> Option<&'static str> {
    IN_CALL.with(Cell::get)
}

/// The next random number of the call. An action asks the host each time (fresh numbers from
/// the operating system's CSPRNG: a generator in the guest would let anyone who saw one of its
/// outputs compute the rest); a query or mutation runs SplitMix64 from the host's seed, so a
/// re-run at the same snapshot draws the same numbers.
fn next_random() -> u64 {
    if call_kind() == Some("action") {
        return env::seed();
    }
    RNG.with(|r| {
        let mut z = r.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        r.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

fn now_ms() -> f64 {
    if call_kind().is_some() { env::now_ms() } else { 0.0 }
}

fn stub_write(fd: u32, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let line = text.trim_end_matches('\n');
    if !line.is_empty() {
        log::write(if fd == 2 { log::Level::Error } else { log::Level::Log }, line);
    }
}

fn stub_now_ns() -> u64 {
    (now_ms() * 1e6) as u64
}

fn stub_fill_random(buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let r = next_random().to_le_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
}

/// Allocates the buffer the build tooling writes the JavaScript bundle into.
#[unsafe(export_name = "kiln-source-alloc")]
pub extern "C" fn source_alloc(len: u32) -> *mut u8 {
    SOURCE.with(|s| {
        let mut s = s.borrow_mut();
        *s = vec![0; len as usize];
        s.as_mut_ptr()
    })
}

/// The pre-initializer's entry point: creates the runtime and evaluates the bundle written
/// with `kiln-source-alloc`. A failure is kept for `kiln-init-error` (the snapshot taken
/// afterwards is then discarded by the build).
#[unsafe(export_name = "kiln-wizer-init")]
pub extern "C" fn wizer_init() {
    let source = SOURCE.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if let Err(message) = initialize(&source) {
        INIT_ERROR.with(|e| *e.borrow_mut() = message);
    }
    // After the bundle is freed, so that its pages are free space.
    drop(source);
    heap_pages::record_snapshot_heap();
}

/// The length of the initialization error message (0: initialization succeeded).
#[unsafe(export_name = "kiln-init-error-len")]
pub extern "C" fn init_error_len() -> u32 {
    INIT_ERROR.with(|e| e.borrow().len() as u32)
}

/// The initialization error message.
#[unsafe(export_name = "kiln-init-error")]
pub extern "C" fn init_error() -> *const u8 {
    INIT_ERROR.with(|e| e.borrow().as_ptr())
}

/// How a set of ES modules starts (instead of one bundle): the `convex` CLI pushes its own
/// esbuild output, entry points and shared chunks that import each other by relative path.
const MODULE_SET: &[u8] = b"\0kiln-module-set\n";

/// The modules of a set: (name, source) pairs, each a little-endian u32 length and the bytes;
/// the last is the entry point.
fn module_set(mut rest: &[u8]) -> Result<Vec<(&str, &str)>, String> {
    fn take<'a>(rest: &mut &'a [u8], what: &str) -> Result<&'a str, String> {
        let (len, tail) =
            rest.split_first_chunk::<4>().ok_or_else(|| format!("the module set ends inside a {what}"))?;
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(format!("the module set ends inside a {what}"));
        }
        let (bytes, tail) = tail.split_at(len);
        *rest = tail;
        std::str::from_utf8(bytes).map_err(|e| format!("a {what} of the module set is not UTF-8: {e}"))
    }
    let mut modules = Vec::new();
    loop {
        let name = take(&mut rest, "module name")?;
        let source = take(&mut rest, "module source")?;
        modules.push((name, source));
        if rest.is_empty() {
            return Ok(modules);
        }
    }
}

fn initialize(source: &[u8]) -> Result<(), String> {
    // A set's modules are declared under their names before its entry point is evaluated:
    // QuickJS resolves an import (`./_deps/x.js` from `dir/m.js` is `_deps/x.js`) to a module
    // it already holds, and there is no loader to reach anything else.
    let mut modules = match source.strip_prefix(MODULE_SET) {
        Some(rest) => module_set(rest)?,
        None => vec![("app.js", std::str::from_utf8(source).map_err(|e| format!("the bundle is not UTF-8: {e}"))?)],
    };
    if let Some(at) = modules.iter().position(|(name, _)| *name == ENV_ENTRY) {
        let (_, env) = modules.remove(at);
        INIT_ENV.with(|e| *e.borrow_mut() = Some(env.to_owned()));
    }
    let loaded = load_modules(&modules);
    INIT_ENV.with(|e| *e.borrow_mut() = None);
    loaded
}

/// The entry of a module set that holds the environment variables (no module can be named so).
const ENV_ENTRY: &str = "\0env";

fn load_modules(modules: &[(&str, &str)]) -> Result<(), String> {
    let mut config = javy::Config::default();
    // QuickJS's own stack check does not work on wasm32: unbounded recursion ends with the
    // engine's stack-overflow trap, which the host reports (the instance is discarded).
    config.text_encoding(true);
    let runtime = Runtime::new(config).map_err(|e| e.to_string())?;
    runtime.context().with(|ctx| {
        let js = |e: quickjs::Error| javy::from_js_error(ctx.clone(), e).to_string();
        install_natives(&ctx).map_err(js)?;
        let (_, promise) = load_stripped(&ctx, &[("kiln:prelude", PRELUDE)])?.eval().map_err(js)?;
        promise.finish::<()>().map_err(js)?;
        let (module, promise) = load_stripped(&ctx, modules)?.eval().map_err(js)?;
        promise.finish::<()>().map_err(js)?;
        let modules: Object = module.get("modules").map_err(js)?;
        let functions = functions_of(&ctx, &modules).map_err(js)?;
        FUNCTIONS.with(|f| *f.borrow_mut() = functions);
        ctx.globals().set("__kiln_modules", modules).map_err(js)?;
        let entry = Entry::of(&ctx).map_err(js)?;
        ENTRY.with(|e| *e.borrow_mut() = Some(entry));
        Ok::<_, String>(())
    })?;
    RUNTIME.with(|r| *r.borrow_mut() = Some(runtime));
    Ok(())
}

/// Declares `modules` without the source texts QuickJS keeps for every function (for
/// `Function.prototype.toString`): each function holds a copy of its own text, nested ones
/// again inside their parents', about 1.5 times the bundle in all. Every page of the snapshot's
/// heap is copied back after each call, so they cost every call. Compiled in a throwaway
/// QuickJS runtime, freed before the snapshot with the parsed modules and their sources; line
/// numbers stay. (javy's `compile_to_bytecode` would do, but a javy runtime is never freed.)
/// Returns the last module, which no other imports (a set's entry point).
fn load_stripped<'js>(ctx: &Ctx<'js>, modules: &[(&str, &str)]) -> Result<Module<'js>, String> {
    let bytecode = {
        let rt = quickjs::Runtime::new().map_err(|e| e.to_string())?;
        let scratch = quickjs::Context::full(&rt).map_err(|e| e.to_string())?;
        scratch.with(|c| compile_in_order(&c, modules))?
    };
    let mut last = None;
    for bytes in &bytecode {
        // SAFETY: the bytecode was written just now by this build of QuickJS. Reading a module
        // resolves its imports among the modules read before it.
        last = Some(
            unsafe { Module::load(ctx.clone(), bytes) }.map_err(|e| javy::from_js_error(ctx.clone(), e).to_string())?,
        );
    }
    last.ok_or_else(|| "no modules".to_owned())
}

/// Compiles `modules` in `c`, each after the modules it imports: compiling a module resolves
/// its imports, so one that names a module of the set not compiled yet fails with "could not
/// load module", and that module is compiled first. Returns the bytecode of each, in the
/// order compiled (the last given module last, as none imports it).
fn compile_in_order(c: &Ctx<'_>, modules: &[(&str, &str)]) -> Result<Vec<Vec<u8>>, String> {
    let position: BTreeMap<&str, usize> = modules.iter().enumerate().map(|(i, (name, _))| (*name, i)).collect();
    let mut done = vec![false; modules.len()];
    let mut out = Vec::with_capacity(modules.len());
    for start in 0..modules.len() {
        let mut stack = vec![start];
        while let Some(&i) = stack.last() {
            if done[i] {
                stack.pop();
                continue;
            }
            let (name, source) = modules[i];
            let js = |e| javy::from_js_error(c.clone(), e).to_string();
            match Module::declare(c.clone(), name, source) {
                Ok(module) => {
                    let options = quickjs::module::WriteOptions { strip_source: true, ..Default::default() };
                    out.push(module.write(options).map_err(js)?);
                    done[i] = true;
                    stack.pop();
                }
                Err(e) => {
                    let message = js(e);
                    let missing = message
                        .split_once("could not load module '")
                        .and_then(|(_, rest)| rest.split_once('\''))
                        .and_then(|(m, _)| position.get(m).copied());
                    match missing {
                        Some(j) if !done[j] && !stack.contains(&j) => stack.push(j),
                        Some(j) if stack.contains(&j) => {
                            return Err(format!("{name}: modules import each other in a cycle ({})", modules[j].0));
                        }
                        _ if modules.len() > 1 => return Err(format!("{name}: {message}")),
                        _ => return Err(message),
                    }
                }
            }
        }
    }
    Ok(out)
}

fn install_natives(ctx: &Ctx<'_>) -> quickjs::Result<()> {
    values::capture_prototypes(ctx)?;
    let native = Object::new(ctx.clone())?;
    native.set("jsonToConvex", Func::from(values::json_to_convex))?;
    native.set("convexToJson", Func::from(values::convex_to_json))?;
    native.set("patchValueToJson", Func::from(values::patch_value_to_json))?;
    native.set("syscallValue", Func::from(syscall::call_value))?;
    native.set("dbGet", Func::from(syscall::db_get))?;
    native.set("dbInsert", Func::from(syscall::db_insert))?;
    native.set("dbPatch", Func::from(syscall::db_patch))?;
    native.set("queryTake", Func::from(syscall::query_take))?;
    native.set("digest", Func::from(crypto::digest))?;
    native.set("storageStore", Func::from(syscall::storage_store))?;
    native.set("storageGet", Func::from(syscall::storage_get))?;
    native.set("hmac", Func::from(crypto::hmac))?;
    native.set("asymImport", Func::from(asym::import))?;
    native.set("asymSign", Func::from(asym::sign))?;
    native.set("asymVerify", Func::from(asym::verify))?;
    native.set("asymExport", Func::from(asym::export))?;
    native.set("asymGenerate", Func::from(asym::generate))?;
    native.set("syscall", Func::from(|op: String, args: String| syscall::call(&op, &args)))?;
    native.set("args", Func::from(args_value))?;
    native.set("argsJson", Func::from(args_json))?;
    native.set("result", Func::from(take_result))?;
    native.set("httpRequest", Func::from(http_request))?;
    native.set(
        "log",
        Func::from(|level: i32, line: String| {
            if call_kind().is_none() {
                return;
            }
            let level = match level {
                0 => log::Level::Debug,
                1 => log::Level::Info,
                3 => log::Level::Warn,
                4 => log::Level::Error,
                _ => log::Level::Log,
            };
            log::write(level, &line);
        }),
    )?;
    native.set("random", Func::from(|| (next_random() >> 11) as f64 / (1u64 << 53) as f64))?;
    native.set("randomU32", Func::from(|| (next_random() >> 32) as f64))?;
    native.set("now", Func::from(now_ms))?;
    // An action's timers wait in real time (the host ignores it elsewhere).
    native.set(
        "sleep",
        Func::from(|ms: f64| {
            if call_kind().is_some() {
                env::sleep(ms);
            }
        }),
    )?;
    native.set(
        "env",
        Func::from(|| {
            if call_kind().is_none() {
                return INIT_ENV.with(|e| e.borrow().clone()).unwrap_or_else(|| "{}".to_owned());
            }
            let vars = env::variables();
            serde_json::Value::Object(vars.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect())
                .to_string()
        }),
    )?;
    native.set("kind", Func::from(|| call_kind().unwrap_or("init").to_owned()))?;
    native.set("path", Func::from(|| CALL_PATH.with(|p| p.borrow().clone())))?;
    ctx.globals().set("__kiln_native", native)
}

/// The dispatcher's number for a kind (see `__kiln_dispatch`).
fn kind_code(kind: FunctionKind) -> i32 {
    match kind {
        FunctionKind::Query => 0,
        FunctionKind::Mutation => 1,
        FunctionKind::Action => 2,
        FunctionKind::HttpAction => 3,
    }
}

fn kind_name(kind: FunctionKind) -> &'static str {
    match kind {
        FunctionKind::Query => "query",
        FunctionKind::Mutation => "mutation",
        FunctionKind::Action => "action",
        FunctionKind::HttpAction => "http-action",
    }
}

/// Starts a call: the heap touch the host asked for, per-call randomness and the WASI stubs'
/// hooks.
fn begin_call(kind: &'static str, touch_heap: bool) {
    if touch_heap {
        heap_pages::touch();
    }
    IN_CALL.with(|c| c.set(Some(kind)));
    RESULT.with(|r| r.borrow_mut().take());
    RNG.with(|r| r.set(env::seed()));
    kiln_wasi_stubs::install(kiln_wasi_stubs::Hooks {
        write: stub_write,
        now_ns: stub_now_ns,
        fill_random: stub_fill_random,
    });
}

fn end_call() {
    ARGS_JS.with(|a| a.borrow_mut().take());
    ARGS_TREE.with(|t| t.borrow_mut().take());
    ARGS.with(|a| a.borrow_mut().clear());
    HTTP_REQUEST.with(|r| r.borrow_mut().take());
    syscall::close_streams();
    kiln_wasi_stubs::reset();
    IN_CALL.with(|c| c.set(None));
}

fn with_runtime<T>(f: impl FnOnce(&Runtime) -> Result<T, Error>) -> Result<T, Error> {
    RUNTIME.with(|r| match r.borrow().as_ref() {
        Some(rt) => f(rt),
        None => Err(not_initialized()),
    })
}

fn not_initialized() -> Error {
    error("NotInitialized", "the runtime was not pre-initialized with an app")
}

fn js_error(ctx: &Ctx<'_>, e: quickjs::Error) -> Error {
    error("UncaughtException", javy::from_js_error(ctx.clone(), e).to_string())
}

/// A function path's module (without a `.js` suffix) and export (`default` when absent):
/// `"messages:list"` → (`"messages"`, `"list"`).
fn split_path(path: &str) -> (&str, &str) {
    let (module, export) = path.rsplit_once(':').unwrap_or((path, "default"));
    (module.strip_suffix(".js").unwrap_or(module), export)
}

fn run(rt: &Runtime, call: Call) -> Result<String, Error> {
    let Call { path, args, request_id, kind, http, .. } = call;
    HTTP_REQUEST.with(|r| *r.borrow_mut() = http);
    // The arguments of a query or mutation (whose invokers take `__kiln_native.args`), if a
    // MessagePack map, are built into JavaScript values at once, without a `Value` tree.
    let wants_object = matches!(kind, FunctionKind::Query | FunctionKind::Mutation);
    let is_map = matches!(args.first(), Some(0x80..=0x8f | 0xde | 0xdf));
    let (module_name, export_name) = split_path(&path);
    CALL_PATH.with(|p| p.borrow_mut().clone_from(&path));
    rt.context().with(|ctx| {
        let js = |e| js_error(&ctx, e);
        let direct = if wants_object && is_map { values::js_of_msgpack(&ctx, &args).map_err(js)? } else { None };
        match direct {
            Some(v) => ARGS_JS.with(|a| *a.borrow_mut() = Some(Persistent::save(&ctx, v))),
            None => {
                let tree = decode_args(&args)?;
                ARGS_TREE.with(|t| *t.borrow_mut() = Some(tree));
            }
        }
        ARGS.with(|a| *a.borrow_mut() = args);
        let dispatch = Entry::get(&ctx, |e| &e.dispatch)?;
        let function = FUNCTIONS.with(|f| f.borrow().get(module_name).and_then(|m| m.get(export_name)).cloned());
        let function = function.map(|f| f.restore(&ctx)).transpose().map_err(js)?;
        // A failure envelope at once, or a promise, whose outcome `__kiln_settled` or
        // `__kiln_failed` turns into an envelope or into another promise to drive.
        let mut current: quickjs::Value = dispatch
            .call((kind_code(kind), function, (kind == FunctionKind::Action).then_some(request_id.as_str())))
            .map_err(js)?;
        loop {
            let Some(promise) = current.as_promise().cloned() else {
                return match current.as_string() {
                    Some(envelope) => envelope.to_string().map_err(js),
                    None => Err(error("InvalidResult", "the dispatcher answered neither an envelope nor a promise")),
                };
            };
            current = match promise.finish::<quickjs::Value>() {
                Ok(result) => {
                    let settled = Entry::get(&ctx, |e| &e.settled)?;
                    settled.call((result,)).map_err(js)?
                }
                Err(quickjs::Error::WouldBlock) => {
                    // No job is left: only a timer (actions) can make progress.
                    let run_timer = Entry::get(&ctx, |e| &e.run_timer)?;
                    let ran: bool = run_timer.call(()).map_err(js)?;
                    if !ran {
                        return Err(error("UnsettledPromise", format!("{path} returned a promise that never settled")));
                    }
                    current
                }
                Err(quickjs::Error::Exception) => {
                    let thrown = ctx.catch();
                    let failed = Entry::get(&ctx, |e| &e.failed)?;
                    failed.call((thrown,)).map_err(js)?
                }
                Err(e) => return Err(js_error(&ctx, e)),
            };
        }
    })
}

/// Turns the dispatcher's envelope ("0" + result JSON, "1" + error JSON, or "2" for the result
/// `__kiln_native.result` took) into the result.
fn decode_envelope(envelope: &str) -> Result<Vec<u8>, Error> {
    let (tag, body) = envelope.split_at(envelope.len().min(1));
    if tag == "2" {
        return match RESULT.with(|r| r.borrow_mut().take()) {
            Some(value) => Ok(kiln_value::to_msgpack(&value)),
            None => Err(error("InvalidResult", "the function's result was not kept")),
        };
    }
    let json: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| error("InvalidResult", format!("the function's result is not JSON: {e}")))?;
    if tag == "0" {
        let value =
            kiln_value::from_convex_json(&json).map_err(|e| error(e.code(), format!("invalid return value: {e}")))?;
        return Ok(kiln_value::to_msgpack(&value));
    }
    let text = |k: &str| json.get(k).and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let data = match json.get("data") {
        Some(d) => Some(kiln_value::to_msgpack(
            &kiln_value::from_convex_json(d).map_err(|e| error(e.code(), format!("invalid ConvexError data: {e}")))?,
        )),
        None => None,
    };
    Err(Error { code: text("code"), message: text("message"), data })
}

struct Component;

impl Guest for Component {
    fn invoke(call: Call) -> Result<Vec<u8>, Error> {
        let kind = kind_name(call.kind);
        with_runtime(|rt| {
            begin_call(kind, call.touch_heap);
            let outcome = run(rt, call);
            end_call();
            decode_envelope(&outcome?)
        })
    }

    fn analyze() -> Result<Manifest, Error> {
        let text = with_runtime(|rt| {
            rt.context().with(|ctx| {
                let analyze: Function = ctx.globals().get("__kiln_analyze").map_err(|e| js_error(&ctx, e))?;
                analyze.call::<_, String>(()).map_err(|e| js_error(&ctx, e))
            })
        })?;
        parse_manifest(&text)
    }
}

fn parse_manifest(text: &str) -> Result<Manifest, Error> {
    use serde_json::Value as J;
    let bad = |m: &str| error("InvalidManifest", m.to_owned());
    let root: J = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let string = |v: &J| v.as_str().map(str::to_owned);
    let mut functions = Vec::new();
    for f in root.get("functions").and_then(J::as_array).ok_or_else(|| bad("no functions"))? {
        let kind = match f.get("kind").and_then(J::as_str) {
            Some("query") => FunctionKind::Query,
            Some("mutation") => FunctionKind::Mutation,
            Some("action") => FunctionKind::Action,
            Some("http-action") => FunctionKind::HttpAction,
            _ => return Err(bad("unknown function kind")),
        };
        let visibility = match f.get("visibility").and_then(J::as_str) {
            Some("internal") => Visibility::Internal,
            _ => Visibility::Public,
        };
        functions.push(FunctionInfo {
            path: f.get("path").and_then(string).ok_or_else(|| bad("function without a path"))?,
            kind,
            visibility,
            args: f.get("args").and_then(string),
            returns: f.get("returns").and_then(string),
        });
    }
    let http_routes = root
        .get("httpRoutes")
        .and_then(J::as_array)
        .map(|routes| {
            routes
                .iter()
                .filter_map(|r| {
                    Some(HttpRoute { path: r.get("path").and_then(string)?, method: r.get("method").and_then(string)? })
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Manifest {
        functions,
        schema: root.get("schema").and_then(string),
        crons: root.get("crons").and_then(string),
        http_routes,
        auth: root.get("auth").and_then(string),
        components: root.get("components").and_then(string),
    })
}

export!(Component);
