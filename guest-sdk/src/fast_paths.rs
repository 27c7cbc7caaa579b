//! Fast paths: a few functions of the bundled `convex` package are pointed at natives of the
//! QuickJS runtime (`components/js-runtime/src/values.rs` and `syscall.rs`):
//! - the value codecs (`jsonToConvex`, `convexToJson`, `patchValueToJson`) get a prologue that
//!   calls the native first, which answers `undefined` whenever the original should run;
//! - the syscall helpers (`performSyscall`, `performAsyncSyscall`) hand their argument object
//!   to the host and get the reply as a value, instead of a `JSON.stringify` and a
//!   `JSON.parse` around a text call; their error handling is unchanged. The host call is
//!   synchronous (it throws inside the same `try`), so the `await` on it is dropped: an
//!   `await` costs QuickJS as much as a small syscall;
//! - the factories of a call's context (`setupReader`, `setupWriter`, `setupAuth`, ...) are
//!   memoized: they build only stateless objects of closures, so those are built once while
//!   the app is loaded (the snapshot every call starts from) instead of in every call.
//!   Sharing them is safe because every call runs in a fresh instance of that snapshot.
//!   The memoized reader and writer are handed to the runtime's `__kiln_fast.reader`/`writer`,
//!   which put native `get`, `insert` and `patch` in front of the package's methods (without
//!   their three async layers); those defer to the package's method for anything they do not
//!   take;
//! - `invokeQuery` and `invokeMutation` no longer await the handler inside two more async
//!   functions (`invokeFunction` and themselves): they hand the handler's promise to
//!   `__kiln_fast.invoke`, together with the package's `validateReturnValue`, `convexToJson`
//!   and `invokeFunction`, which the runtime applies to the outcome (see `prelude.js`); and
//!   they take their arguments from `__kiln_fast.args`, which the runtime builds as values
//!   instead of JSON text (the package's `jsonToConvex` still decodes what it must decide),
//!   and their context object from `__kiln_fast.context`: built once while the app loads by
//!   running the invoker per visibility (`__kiln_fast.ready`), safe to share for the same
//!   reason as the memoized factories.
//! - the function factories (`queryGeneric`, `mutationGeneric` and their internal twins) tell
//!   `__kiln_fast.made` which handler and visibility each function's invoker closes over, so
//!   that the dispatcher can do what that invoker would do without the calls through it
//!   (only while the function's invoker is still the one the factory made).
//! - the methods of the package's `QueryImpl` that read a query's results (`collect`, `take`,
//!   `first`, `unique`) first ask `__kiln_fast.take`, which reads them in one native call
//!   (an indexed point query ~508k → ~241k fuel); methods are named `Class.method` here.
//!
//! Why edits and not replacements: the package's code stays the reference for every edge and
//! error message. Edits apply only to versions of the package whose edited functions were
//! reviewed, and whose edited and relied-upon functions are exactly the reviewed ones
//! ([`VERIFIED`], [`check`]), and each only where its function and every line it
//! changes are found exactly; any other bundle is left as it is and simply runs slower.

/// How a function is changed.
enum Edit {
    /// A prologue calling this native of `__kiln_fast` with the single parameter.
    Prologue(&'static str),
    /// Whole-line replacements inside the body (an empty replacement drops the line), given
    /// the exact parameter list; `sync` also drops the `async` of the declaration, and `load`
    /// is a statement run while the app is loaded, once the edit is in (`{name}` stands for the
    /// function's name in the bundle), after the memoized factories are built.
    Lines {
        params: &'static str,
        lines: &'static [(&'static str, &'static str)],
        sync: bool,
        load: Option<&'static str>,
    },
    /// Results memoized by the single argument (if any), computed for these arguments while
    /// the app is loaded and passed through this function of `__kiln_fast`, if any.
    Memo(&'static [&'static str], Option<&'static str>),
}

const VALUES: &str = "convex/dist/esm/values/value.js";
const SYSCALL: &str = "convex/dist/esm/server/impl/syscall.js";

const IMPL: &str = "convex/dist/esm/server/impl/";
const QUERY: &str = "convex/dist/esm/server/impl/query_impl.js";
const REGISTRATION: &str = "convex/dist/esm/server/impl/registration_impl.js";

/// The edit of the package's `invokeQuery`/`invokeMutation` (see the module's docs): arguments
/// from `__kiln_fast.args`, the context from `__kiln_fast.context`, the handler's promise to
/// `__kiln_fast.invoke`, no `async`; at load, `__kiln_fast.ready` builds the contexts.
macro_rules! invoker {
    ($function:literal, $kind:literal, $ctx:literal) => {
        (
            REGISTRATION,
            $function,
            Edit::Lines {
                params: "func, argsStr, visibility",
                lines: &[
                    (
                        "const args = jsonToConvex(JSON.parse(argsStr));",
                        "const args = globalThis.__kiln_fast.args(argsStr, jsonToConvex);",
                    ),
                    (
                        concat!("const ", $ctx, " = {"),
                        concat!("const ", $ctx, " = globalThis.__kiln_fast.context(\"", $kind, "\", visibility) ?? {"),
                    ),
                    (
                        concat!("const result = await invokeFunction(func, ", $ctx, ", args);"),
                        concat!(
                            "return globalThis.__kiln_fast.invoke(func, ",
                            $ctx,
                            ", args, validateReturnValue, convexToJson, invokeFunction);"
                        ),
                    ),
                    ("validateReturnValue(result);", ""),
                    ("return JSON.stringify(convexToJson(result === void 0 ? null : result));", ""),
                ],
                sync: true,
                load: Some(concat!(
                    "globalThis.__kiln_fast.ready(\"",
                    $kind,
                    "\", (visibility) => {name}(null, null, visibility));"
                )),
            },
        )
    };
}

/// The line of a function factory of the package that sets the function's invoker.
macro_rules! invoker_line {
    ($invoker:literal, $visibility:literal) => {
        concat!("func.", $invoker, " = (argsStr) => ", $invoker, "(handler, argsStr, \"", $visibility, "\");")
    };
}

/// The edit of a function factory of the package (`queryGeneric`, ...): after it sets the
/// function's invoker, `__kiln_fast.made` learns the handler and visibility the invoker
/// closes over.
macro_rules! factory {
    ($function:literal, $invoker:literal, $kind:literal, $visibility:literal) => {
        (
            REGISTRATION,
            $function,
            Edit::Lines {
                params: "functionDefinition",
                lines: &[(
                    invoker_line!($invoker, $visibility),
                    concat!(
                        invoker_line!($invoker, $visibility),
                        " globalThis.__kiln_fast.made(func, \"",
                        $kind,
                        "\", handler, \"",
                        $visibility,
                        "\");"
                    ),
                )],
                sync: false,
                load: None,
            },
        )
    };
}

/// The edit of a method of the package's `QueryImpl` that reads a query's results: one line,
/// where it would start the query's iteration, first asks `__kiln_fast.take(query, n)`
/// (`n` results at most, -1 for all), which answers them in one native call instead of a
/// `queryStream`, a `queryStreamNext` per document and more, and a `queryCleanup`, each
/// behind an `await` (`undefined`: the package's own code runs on).
macro_rules! query_method {
    ($method:literal, $params:literal, $line:literal, $fast:literal) => {
        (QUERY, $method, Edit::Lines { params: $params, lines: &[($line, $fast)], sync: false, load: None })
    };
}

/// The edits: (part of the module path, function or `Class.method`, edit).
const TARGETS: &[(&str, &str, Edit)] = &[
    (VALUES, "jsonToConvex", Edit::Prologue("jsonToConvex")),
    (VALUES, "convexToJson", Edit::Prologue("convexToJson")),
    (VALUES, "patchValueToJson", Edit::Prologue("patchValueToJson")),
    (
        SYSCALL,
        "performSyscall",
        Edit::Lines {
            params: "op, arg",
            lines: &[
                (
                    "const resultStr = Convex.syscall(op, JSON.stringify(arg));",
                    "const resultStr = globalThis.__kiln_fast.syscall(op, arg);",
                ),
                ("return JSON.parse(resultStr);", "return resultStr;"),
            ],
            sync: false,
            load: None,
        },
    ),
    (
        SYSCALL,
        "performAsyncSyscall",
        Edit::Lines {
            params: "op, arg",
            lines: &[
                (
                    "resultStr = await Convex.asyncSyscall(op, JSON.stringify(arg));",
                    "resultStr = globalThis.__kiln_fast.syscall(op, arg);",
                ),
                ("return JSON.parse(resultStr);", "return resultStr;"),
            ],
            sync: false,
            load: None,
        },
    ),
    invoker!("invokeQuery", "query", "queryCtx"),
    invoker!("invokeMutation", "mutation", "mutationCtx"),
    factory!("queryGeneric", "invokeQuery", "query", "public"),
    factory!("internalQueryGeneric", "invokeQuery", "query", "internal"),
    factory!("mutationGeneric", "invokeMutation", "mutation", "public"),
    factory!("internalMutationGeneric", "invokeMutation", "mutation", "internal"),
    query_method!(
        "QueryImpl.collect",
        "",
        "const out = [];",
        "const __kiln_r = globalThis.__kiln_fast.take(this, -1); if (__kiln_r !== void 0) return __kiln_r; const out = [];"
    ),
    query_method!(
        "QueryImpl.take",
        "n",
        "return this.limit(n).collect();",
        "return globalThis.__kiln_fast.take(this, n) ?? this.limit(n).collect();"
    ),
    query_method!(
        "QueryImpl.first",
        "",
        "const first_array = await this.take(1);",
        "const first_array = globalThis.__kiln_fast.take(this, 1) ?? await this.take(1);"
    ),
    query_method!(
        "QueryImpl.unique",
        "",
        "const first_two_array = await this.take(2);",
        "const first_two_array = globalThis.__kiln_fast.take(this, 2) ?? await this.take(2);"
    ),
    (IMPL, "setupReader", Edit::Memo(&[], Some("reader"))),
    (IMPL, "setupWriter", Edit::Memo(&[], Some("writer"))),
    (IMPL, "setupAuth", Edit::Memo(&[""], None)),
    (IMPL, "setupMutationAuth", Edit::Memo(&[""], None)),
    (IMPL, "setupStorageReader", Edit::Memo(&[""], None)),
    (IMPL, "setupStorageWriter", Edit::Memo(&[""], None)),
    (IMPL, "setupMutationScheduler", Edit::Memo(&[], None)),
    (IMPL, "setupQueryMeta", Edit::Memo(&["public", "internal"], None)),
    (IMPL, "setupMutationMeta", Edit::Memo(&["public", "internal"], None)),
];

/// The name and parameter list of a top-level `[async ]function NAME(PARAMS) {` line, or of a
/// `var NAME = ((PARAMS) => {` line (how esbuild writes the package's function factories),
/// with the line that closes its body.
fn declaration(line: &str) -> Option<(&str, &str, &'static str)> {
    let line = line.trim_end();
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    let valid = |name: &str, params: &str| ident(name) && (params.is_empty() || params.split(", ").all(ident));
    if let Some(rest) = line.strip_prefix("var ") {
        let (name, rest) = rest.split_once(" = ((")?;
        let params = rest.strip_suffix(") => {")?;
        return valid(name, params).then_some((name, params, "});"));
    }
    let rest = line.strip_prefix("async ").unwrap_or(line).strip_prefix("function ")?.strip_suffix(") {")?;
    let (name, params) = rest.split_once('(')?;
    valid(name, params).then_some((name, params, "}"))
}

/// The name of the class a top-level `var NAME = class[ _NAME] {` line (how esbuild writes the
/// package's classes) opens; its body ends at a `};` line.
fn class_opened(line: &str) -> Option<&str> {
    let rest = line.trim_end().strip_prefix("var ")?;
    let (name, rest) = rest.split_once(" = class")?;
    let inner = rest.strip_suffix(" {")?;
    let ok = inner.is_empty()
        || inner.strip_prefix(" _").is_some_and(|n| {
            n.trim_end_matches(|c: char| c.is_ascii_digit()) == name.trim_end_matches(|c: char| c.is_ascii_digit())
        });
    ok.then_some(name)
}

/// The name and parameter list of a method line `  [async ]NAME(PARAMS) {` of a class body,
/// with the line that closes it.
fn method(line: &str) -> Option<(&str, &str, &'static str)> {
    let rest = line.trim_end().strip_prefix("  ")?;
    let rest = rest.strip_prefix("async ").unwrap_or(rest).strip_suffix(") {")?;
    let (name, params) = rest.split_once('(')?;
    let ident = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    (ident(name) && (params.is_empty() || params.split(", ").all(ident))).then_some((name, params, "  }"))
}

/// Where the scan of a bundle is: the module (esbuild heads each with a `// path` line) and
/// the class whose body it is in.
#[derive(Default)]
struct Scope<'a> {
    module: &'a str,
    class: Option<String>,
}

/// A function the edits may target: its name in the bundle, the name it is known by (esbuild's
/// digits removed; `Class.method` for a method), its parameters and closing line.
struct Declared<'a> {
    name: &'a str,
    base: String,
    params: &'a str,
    closer: &'static str,
}

impl<'a> Scope<'a> {
    /// Follows `line`; the function it declares, if any.
    fn visit(&mut self, line: &'a str) -> Option<Declared<'a>> {
        let trim = |n: &str| n.trim_end_matches(|c: char| c.is_ascii_digit()).to_owned();
        if let Some(path) = line.strip_prefix("// ") {
            self.module = path.trim_end();
            self.class = None;
            return None;
        }
        if let Some(class) = &self.class {
            if line.trim_end() == "};" {
                self.class = None;
                return None;
            }
            let (name, params, closer) = method(line)?;
            return Some(Declared { name, base: format!("{class}.{name}"), params, closer });
        }
        if let Some(class) = class_opened(line) {
            self.class = Some(trim(class));
            return None;
        }
        let (name, params, closer) = declaration(line)?;
        Some(Declared { name, base: trim(name), params, closer })
    }

    /// Whether the scan is in a module of the `convex` package whose path ends with `suffix`.
    fn in_module(&self, suffix: &str) -> bool {
        self.module.contains(suffix) && self.module.ends_with(".js")
    }
}

/// The body with every line of `lines` replaced (indentation kept), or `None` unless each
/// appears exactly once.
fn replace_lines(body: &[&str], lines: &[(&str, &str)]) -> Option<String> {
    let mut out = String::new();
    let mut found = vec![0; lines.len()];
    for line in body {
        match lines.iter().position(|(old, _)| line.trim() == *old) {
            Some(i) => {
                found[i] += 1;
                let indent = &line[..line.len() - line.trim_start().len()];
                if !lines[i].1.is_empty() {
                    out.push_str(&format!("{indent}{}\n", lines[i].1));
                }
            }
            None => out.push_str(line),
        }
    }
    found.iter().all(|&n| n == 1).then_some(out)
}

/// The functions the natives mirror or the runtime calls, besides those the edits change.
const RELIED: &[(&str, &str)] = &[
    (REGISTRATION, "invokeFunction"),
    (REGISTRATION, "validateReturnValue"),
    // `__kiln_fast.take` does what these do to a query's state and operators.
    (QUERY, "QueryImpl.constructor"),
    (QUERY, "QueryImpl.takeQuery"),
    (QUERY, "QueryImpl.startQuery"),
    (QUERY, "QueryImpl.closeQuery"),
    (QUERY, "QueryImpl.limit"),
    (QUERY, "QueryImpl.next"),
];

/// Exact versions of the `convex` package whose edited and relied-upon functions were
/// reviewed, with a digest of each function's text as esbuild bundles it ([`digests`]). A
/// bundle of any other version, or whose functions differ, is left unchanged: correct, only
/// slower (see [`FUEL_WITHOUT_FAST_PATHS`]).
pub const VERIFIED: &[(&str, &[(&str, &str)])] = &[(
    "1.48.0",
    &[
        ("QueryImpl.closeQuery", "1a5bed70e1b3fb10"),
        ("QueryImpl.collect", "a2ce4581479a2c0e"),
        ("QueryImpl.constructor", "a9baca64af385df2"),
        ("QueryImpl.first", "06634dd117a1a1f4"),
        ("QueryImpl.limit", "591a464003cce5a7"),
        ("QueryImpl.next", "cccae68ee700d323"),
        ("QueryImpl.startQuery", "58adf0db4e88f0a2"),
        ("QueryImpl.take", "6f22c14af8d36313"),
        ("QueryImpl.takeQuery", "6cd57215fbf53f7f"),
        ("QueryImpl.unique", "41220b61718cae4d"),
        ("convexToJson", "c739f166641f1d03"),
        ("internalMutationGeneric", "75509cb205c57a08"),
        ("internalQueryGeneric", "82d212e5137e9db6"),
        ("invokeFunction", "04f44b424057cb69"),
        ("invokeMutation", "3783f49d8325354c"),
        ("invokeQuery", "669d6fb5502c6702"),
        ("jsonToConvex", "ec001bbbc7b9f022"),
        ("mutationGeneric", "35cd61145aa14002"),
        ("patchValueToJson", "5eec0e5e022f2fbb"),
        ("performAsyncSyscall", "9eebfb889ef1c67d"),
        ("performSyscall", "771daa7fad51192d"),
        ("queryGeneric", "cb358640d55fdf9e"),
        ("setupAuth", "79fa338a80f0d096"),
        ("setupMutationAuth", "a6569feeaf4a9e45"),
        ("setupMutationMeta", "90859c3747acc4a2"),
        ("setupMutationScheduler", "603ffae1631f9267"),
        ("setupQueryMeta", "601c682fe0317f22"),
        ("setupReader", "4e2ce2420e3d81df"),
        ("setupStorageReader", "50dd842f400e4505"),
        ("setupStorageWriter", "ae1cdc131f189793"),
        ("setupWriter", "3d2ae391a0852d52"),
        ("validateReturnValue", "da76c899ee340fe8"),
    ],
)];

/// What the bundle costs without the fast paths, for the build's warning (an empty query's
/// and a bank transfer's fuel, measured by the guest SDK's tests with and without them).
pub const FUEL_WITHOUT_FAST_PATHS: &str =
    "about 10x the fuel per call (an empty query ~250k instead of ~29k, a bank transfer ~2.1M instead of ~162k)";

/// Digests (SHA-256, 16 hex digits) of the text of every function the fast paths edit or rely
/// on, by name, as they stand in an unedited bundle; a function missing from the bundle is
/// missing here.
pub fn digests(bundle: &str) -> std::collections::BTreeMap<&'static str, String> {
    use sha2::{Digest, Sha256};
    let wanted: Vec<(&str, &str)> =
        TARGETS.iter().map(|(module, function, _)| (*module, *function)).chain(RELIED.iter().copied()).collect();
    let mut out = std::collections::BTreeMap::new();
    let mut scope = Scope::default();
    let mut lines = bundle.lines();
    while let Some(line) = lines.next() {
        let Some(Declared { base, closer, .. }) = scope.visit(line) else { continue };
        let Some(&(_, function)) = wanted.iter().find(|(suffix, f)| scope.in_module(suffix) && *f == base) else {
            continue;
        };
        if out.contains_key(function) {
            continue;
        }
        // The declaration, then the body up to the closing line, with esbuild's renaming undone
        // (it appends digits to a name that another module of the bundle also uses).
        let mut h = Sha256::new();
        h.update(without_renaming(line).as_bytes());
        for body in lines.by_ref() {
            h.update(b"\n");
            h.update(without_renaming(body).as_bytes());
            if body.trim_end() == closer {
                break;
            }
        }
        let digest: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        out.insert(function, digest);
    }
    out
}

/// `line` with the digits at the end of every identifier removed: esbuild renames a function's
/// locals and the functions it calls (`syscallArgs2`) when other modules of the bundle use the
/// same names, so the same package code reads differently in different apps.
fn without_renaming(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut ident = String::new();
    let flush = |ident: &mut String, out: &mut String| {
        let kept = ident.trim_end_matches(|c: char| c.is_ascii_digit());
        out.push_str(if kept.is_empty() { ident.as_str() } else { kept });
        ident.clear();
    };
    for c in line.chars() {
        let part = c.is_ascii_alphanumeric() || c == '_' || c == '$';
        if part && (!ident.is_empty() || !c.is_ascii_digit()) {
            ident.push(c);
        } else {
            flush(&mut ident, &mut out);
            out.push(c);
        }
    }
    flush(&mut ident, &mut out);
    out
}

/// Whether the fast paths may edit this bundle: its `convex` version is verified and every
/// function they edit or rely on is exactly the reviewed one; otherwise why not.
pub fn check(bundle: &str) -> Result<(), String> {
    let Some(version) = convex_version(bundle) else {
        return Err("the bundle's convex package declares no version".to_owned());
    };
    let Some((_, expected)) = VERIFIED.iter().find(|(v, _)| *v == version) else {
        return Err(format!("convex {version} is not a verified version of the package"));
    };
    // A function esbuild left out (the app does not use it) needs no edit and is relied on
    // by nothing that remains.
    for (function, digest) in digests(bundle) {
        match expected.iter().find(|(f, _)| *f == function) {
            Some((_, reviewed)) if *reviewed == digest => {}
            _ => return Err(format!("convex {version}'s `{function}` differs from the reviewed one")),
        }
    }
    Ok(())
}

/// The version of the `convex` package in a bundle (its `index.js` declares it).
pub fn convex_version(bundle: &str) -> Option<&str> {
    let mut module = "";
    for line in bundle.lines() {
        if let Some(path) = line.strip_prefix("// ") {
            module = path;
        } else if module.ends_with("convex/dist/esm/index.js") {
            let rest = line.strip_prefix("var version = \"")?;
            return rest.strip_suffix("\";");
        }
    }
    None
}

/// Applies the edits to an esbuild bundle if [`check`] allows it. Returns the new source and
/// the functions that were changed, or the bundle unchanged and why.
pub fn install(bundle: &str) -> Result<(String, Vec<&'static str>), String> {
    check(bundle)?;
    Ok(apply(bundle))
}

/// Applies the edits (esbuild heads each module's code with a `// path` line and may rename a
/// function by appending digits), each only where its function and every line it changes are
/// found exactly. Returns the new source and the functions that were changed.
fn apply(bundle: &str) -> (String, Vec<&'static str>) {
    let mut out = String::with_capacity(bundle.len() + 1024);
    let mut scope = Scope::default();
    let mut installed = Vec::new();
    let mut warm_up = String::new();
    let mut announce = String::new();
    let mut lines = bundle.split_inclusive('\n');
    while let Some(line) = lines.next() {
        let target = scope.visit(line).and_then(|Declared { name, base, params, closer }| {
            TARGETS
                .iter()
                .find(|(suffix, function, _)| {
                    scope.in_module(suffix) && base == *function && !installed.contains(function)
                })
                .map(|(_, function, edit)| (name, params, closer, *function, edit))
        });
        let Some((name, params, closer, function, edit)) = target else {
            out.push_str(line);
            continue;
        };
        if let Edit::Memo(keys, finish) = edit
            && !params.contains(',')
        {
            let made = |call: String| match finish {
                Some(f) => format!("globalThis.__kiln_fast.{f}({call})"),
                None => call,
            };
            let memo = format!("__kiln_memo_{name}");
            let key = if params.is_empty() { "\"\"" } else { params };
            out.push_str(&format!("var {memo} = new Map();\n{line}"));
            out.push_str(&format!(
                "  const __kiln_m = {memo}.get({key});\n  if (__kiln_m !== void 0) return __kiln_m;\n"
            ));
            if keys.is_empty() {
                warm_up.push_str(&format!("{memo}.set(\"\", {});\n", made(format!("{name}()"))));
            }
            for k in *keys {
                warm_up.push_str(&format!("{memo}.set(\"{k}\", {});\n", made(format!("{name}(\"{k}\")"))));
            }
            installed.push(function);
            continue;
        }
        let declared_at = out.len();
        out.push_str(line);
        match edit {
            Edit::Prologue(native) if !params.is_empty() && !params.contains(',') => {
                out.push_str(&format!(
                    "  const __kiln_r = globalThis.__kiln_fast.{native}({params});\n  if (__kiln_r !== void 0) return __kiln_r;\n"
                ));
                installed.push(function);
            }
            Edit::Lines { params: expected, lines: edits, sync, load } if params == *expected => {
                // The body runs to the first top-level closing line.
                let mut body = Vec::new();
                for line in lines.by_ref() {
                    body.push(line);
                    if line.trim_end() == closer {
                        break;
                    }
                }
                match replace_lines(&body, edits) {
                    Some(patched) => {
                        if *sync && out[declared_at..].starts_with("async ") {
                            out.replace_range(declared_at..declared_at + "async ".len(), "");
                        }
                        out.push_str(&patched);
                        if let Some(statement) = load {
                            announce.push_str(&format!("{}\n", statement.replace("{name}", name)));
                        }
                        installed.push(function);
                    }
                    None => body.iter().for_each(|l| out.push_str(l)),
                }
            }
            _ => {}
        }
    }
    if !warm_up.is_empty() || !announce.is_empty() {
        out.push_str("// Kiln: built and announced while the app is loaded.\n");
        out.push_str(&warm_up);
        out.push_str(&announce);
    }
    (out, installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "// node_modules/convex/dist/esm/index.js\nvar version = \"1.48.0\";\n\n";

    #[test]
    fn only_verified_versions_with_the_reviewed_functions_are_edited() {
        let body = "// node_modules/convex/dist/esm/values/value.js\nfunction jsonToConvex(value) {\n}\n";
        let other = format!("{}{body}", INDEX.replace("1.48.0", "1.48.1"));
        assert!(install(&other).unwrap_err().contains("1.48.1 is not a verified version"));
        assert!(install(body).unwrap_err().contains("declares no version"));
        // 1.48.0 is verified, but these are not its functions.
        let reason = install(&format!("{INDEX}{body}")).unwrap_err();
        assert!(reason.contains("`jsonToConvex` differs from the reviewed one"), "{reason}");
        assert_eq!(convex_version(INDEX), Some("1.48.0"));
        assert_eq!(apply(&format!("{INDEX}{body}")).1, vec!["jsonToConvex"], "the edit itself applies");
    }

    #[test]
    fn digests_cover_the_whole_function_and_ignore_esbuilds_renaming() {
        let f = |name: &str, body: &str| {
            digests(&format!(
                "// node_modules/convex/dist/esm/values/value.js\nfunction {name}(value) {{\n{body}}}\nafter();\n"
            ))
        };
        let a = f("jsonToConvex", "  return value;\n");
        assert_eq!(a.len(), 1);
        assert_eq!(a, f("jsonToConvex2", "  return value;\n"), "esbuild's digits do not count");
        assert_ne!(a, f("jsonToConvex", "  return value + 1;\n"));
        assert!(f("somethingElse", "").is_empty());
        assert_eq!(
            f("jsonToConvex", "  const syscallArgs2 = base64(value, 12);\n"),
            f("jsonToConvex", "  const syscallArgs = base64(value, 12);\n"),
            "nor the digits esbuild appends to locals"
        );
        assert_ne!(f("jsonToConvex", "  return f(value, 12);\n"), f("jsonToConvex", "  return f(value, 1);\n"));
    }

    #[test]
    fn prologues_go_into_the_package_functions_only() {
        let bundle = "// node_modules/convex/dist/esm/values/value.js\nfunction jsonToConvex2(value) {\n  return value;\n}\n\
                      function convexToJsonInternal(value, a, b, c) {\n}\n\
                      // convex/app.ts\nfunction patchValueToJson(v) {\n}\n";
        let (out, installed) = apply(&format!("{INDEX}{bundle}"));
        assert_eq!(installed, vec!["jsonToConvex"]);
        assert!(out.contains(
            "function jsonToConvex2(value) {\n  const __kiln_r = globalThis.__kiln_fast.jsonToConvex(value);\n  if (__kiln_r !== void 0) return __kiln_r;\n  return value;"
        ));
        // The app's own function of the same name is left alone.
        assert!(out.ends_with("// convex/app.ts\nfunction patchValueToJson(v) {\n}\n"));
    }

    #[test]
    fn line_edits_apply_only_when_every_line_is_found() {
        let body = "  check();\n  const resultStr = Convex.syscall(op, JSON.stringify(arg));\n  return JSON.parse(resultStr);\n}\n";
        let bundle = format!(
            "{INDEX}// node_modules/convex/dist/esm/server/impl/syscall.js\nfunction performSyscall(op, arg) {{\n{body}after();\n"
        );
        let (out, installed) = apply(&bundle);
        assert_eq!(installed, vec!["performSyscall"]);
        assert!(out.contains("  check();\n  const resultStr = globalThis.__kiln_fast.syscall(op, arg);\n  return resultStr;\n}\nafter();\n"));

        let changed = bundle.replace("return JSON.parse(resultStr);", "return JSON.parse(resultStr, reviver);");
        let (out, installed) = apply(&changed);
        assert!(installed.is_empty());
        assert_eq!(out, changed);
    }

    #[test]
    fn invokers_hand_the_handler_over_and_lose_their_async() {
        let body = "  const args = jsonToConvex(JSON.parse(argsStr));\n  const queryCtx = {\n  };\n  \
                    const result = await invokeFunction(func, queryCtx, args);\n  validateReturnValue(result);\n  \
                    return JSON.stringify(convexToJson(result === void 0 ? null : result));\n}\n";
        let bundle = format!(
            "{INDEX}// node_modules/convex/dist/esm/server/impl/registration_impl.js\n\
             async function invokeQuery(func, argsStr, visibility) {{\n{body}async function invokeFunction(func, ctx, args) {{\n}}\n"
        );
        let (out, installed) = apply(&bundle);
        assert_eq!(installed, vec!["invokeQuery"]);
        assert!(out.contains(
            "\nfunction invokeQuery(func, argsStr, visibility) {\n  \
             const args = globalThis.__kiln_fast.args(argsStr, jsonToConvex);\n  \
             const queryCtx = globalThis.__kiln_fast.context(\"query\", visibility) ?? {\n  };\n  \
             return globalThis.__kiln_fast.invoke(func, queryCtx, args, validateReturnValue, \
             convexToJson, invokeFunction);\n}\nasync function invokeFunction(func, ctx, args) {"
        ));
        // At load the runtime learns that query arguments may skip their JSON, and builds the
        // contexts by running the invoker once per visibility.
        assert!(out.ends_with(
            "globalThis.__kiln_fast.ready(\"query\", (visibility) => invokeQuery(null, null, visibility));\n"
        ));
        // A body that differs anywhere keeps its `async` and its awaits.
        let changed = bundle.replace("validateReturnValue(result);", "validateReturnValue(result, 1);");
        let (out, installed) = apply(&changed);
        assert!(installed.is_empty());
        assert_eq!(out, changed);
    }

    #[test]
    fn context_factories_are_memoized_and_built_at_load() {
        let bundle = "// node_modules/convex/dist/esm/server/impl/meta_impl.js\nfunction setupQueryMeta(visibility) {\n  return { visibility };\n}\n\
                      // node_modules/convex/dist/esm/server/impl/database_impl.js\nfunction setupReader() {\n  return {};\n}\nexport { modules };\n";
        let (out, installed) = apply(&format!("{INDEX}{bundle}"));
        assert_eq!(installed, vec!["setupQueryMeta", "setupReader"]);
        assert!(out.contains(
            "var __kiln_memo_setupQueryMeta = new Map();\nfunction setupQueryMeta(visibility) {\n  const __kiln_m = __kiln_memo_setupQueryMeta.get(visibility);\n  if (__kiln_m !== void 0) return __kiln_m;\n  return { visibility };"
        ));
        assert!(out.contains("  const __kiln_m = __kiln_memo_setupReader.get(\"\");\n"));
        assert!(out.ends_with(
            "export { modules };\n// Kiln: built and announced while the app is loaded.\n\
             __kiln_memo_setupQueryMeta.set(\"public\", setupQueryMeta(\"public\"));\n\
             __kiln_memo_setupQueryMeta.set(\"internal\", setupQueryMeta(\"internal\"));\n\
             __kiln_memo_setupReader.set(\"\", globalThis.__kiln_fast.reader(setupReader()));\n"
        ));
    }

    #[test]
    fn methods_are_edited_only_in_their_class() {
        let class = |name: &str| {
            format!(
                "var {name} = class _{name} {{\n  first() {{\n    return this.fullTableScan().first();\n  }}\n  \
                 async first() {{\n    const first_array = await this.take(1);\n    return first_array[0];\n  }}\n}};\n"
            )
        };
        let bundle = format!(
            "{INDEX}// node_modules/convex/dist/esm/server/impl/query_impl.js\n{}{}var after = 1;\n",
            class("QueryInitializerImpl"),
            class("QueryImpl")
        );
        let (out, installed) = apply(&bundle);
        assert_eq!(installed, vec!["QueryImpl.first"]);
        assert_eq!(out.matches("globalThis.__kiln_fast.take(this, 1) ?? await this.take(1);").count(), 1);
        assert!(out.contains(
            "var QueryImpl = class _QueryImpl {\n  first() {\n    return this.fullTableScan().first();\n  }\n  async first() {\n    \
             const first_array = globalThis.__kiln_fast.take(this, 1) ?? await this.take(1);"
        ));
        // The method's digest is taken, by `Class.method`, of the first method of that name.
        let found = digests(&bundle);
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), vec!["QueryImpl.first"]);
        // Outside the class body (after `};`), an indented line is no method of it.
        let outside = bundle.replace("var QueryImpl = class _QueryImpl {", "var QueryImpl = 1;\nvar Other = class {");
        assert!(apply(&outside).1.is_empty());
        assert_eq!(class_opened("var QueryImpl = class _Other {"), None);
        assert_eq!(class_opened("var QueryImpl2 = class _QueryImpl {"), Some("QueryImpl2"));
        assert_eq!(method("  async take(n) {"), Some(("take", "n", "  }")));
        assert_eq!(method("    take(n) {"), None);
    }

    #[test]
    fn declarations_are_recognized_exactly() {
        assert_eq!(declaration("function setupReader() {"), Some(("setupReader", "", "}")));
        assert_eq!(declaration("function convexToJson(value) {\n"), Some(("convexToJson", "value", "}")));
        assert_eq!(
            declaration("async function performAsyncSyscall(op, arg) {\n"),
            Some(("performAsyncSyscall", "op, arg", "}"))
        );
        assert_eq!(
            declaration("var queryGeneric = ((functionDefinition) => {\n"),
            Some(("queryGeneric", "functionDefinition", "});"))
        );
        assert_eq!(declaration("  function convexToJson(value) {"), None);
        assert_eq!(declaration("function f(a, {b}) {"), None);
        assert_eq!(declaration("var f = ((a) => a);"), None);
        assert_eq!(declaration("var f = (({a}) => {"), None);
    }

    #[test]
    fn function_factories_announce_what_their_invokers_close_over() {
        let body = "  const handler = functionDefinition.handler;\n  const func = dontCallDirectly(\"query\", handler);\n  \
                    func.invokeQuery = (argsStr) => invokeQuery(handler, argsStr, \"internal\");\n  return func;\n});\n";
        let bundle = format!(
            "{INDEX}// node_modules/convex/dist/esm/server/impl/registration_impl.js\n\
             var internalQueryGeneric = ((functionDefinition) => {{\n{body}var after = 1;\n"
        );
        let (out, installed) = apply(&bundle);
        assert_eq!(installed, vec!["internalQueryGeneric"]);
        assert!(out.contains(
            "  func.invokeQuery = (argsStr) => invokeQuery(handler, argsStr, \"internal\"); \
             globalThis.__kiln_fast.made(func, \"query\", handler, \"internal\");\n  return func;\n});\nvar after = 1;\n"
        ));
        // An invoker made differently is left alone.
        let changed = bundle.replace("argsStr, \"internal\")", "argsStr, \"public\")");
        let (out, installed) = apply(&changed);
        assert!(installed.is_empty());
        assert_eq!(out, changed);
    }
}
