//! Module sets: an app as several ES modules that import each other by relative path — what
//! the `convex` CLI pushes (its own esbuild output: one module per file of `convex/`, shared
//! chunks under `_deps/`, the schema bundled apart) — turned into the source the QuickJS
//! runtime takes, with no bundler: the runtime declares each module under its path and
//! evaluates a generated entry point that maps module paths to namespaces, as
//! [`crate::bundle`]'s single bundle does.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use crate::error::{Result, SdkError};

/// The function factories of the `convex` package, bundled when the SDK was built (see
/// `build.rs`), with the [`crate::fast_paths`] applied, and the package's version; or why the
/// fast paths do not apply to it.
pub fn fast_package() -> Result<&'static (String, String), &'static str> {
    static PACKAGE: OnceLock<Result<(String, String), String>> = OnceLock::new();
    PACKAGE
        .get_or_init(|| {
            let source = crate::CONVEX_PACKAGE;
            let version = crate::fast_paths::convex_version(source)
                .ok_or("the SDK's convex package declares no version")?
                .to_owned();
            let (source, _) = crate::fast_paths::install(source)?;
            Ok((source, version))
        })
        .as_ref()
        .map_err(String::as_str)
}

/// The version of the `convex` package bundled into pushed modules: esbuild heads the
/// package's `index.js` with a `// …/convex/dist/esm/index.js` line, and its first statement
/// declares the version (`var <name> = "1.48.0";`, whatever the minifier named it).
pub fn pushed_convex_version<'a>(modules: &[SetModule<'a>]) -> Option<&'a str> {
    for m in modules {
        let mut lines = m.source.lines();
        while let Some(line) = lines.next() {
            if line.starts_with("// ") && line.trim_end().ends_with("convex/dist/esm/index.js") {
                let next = lines.next()?.trim();
                let (_, value) = next.strip_prefix("var ")?.split_once(" = \"")?;
                return value.strip_suffix("\";");
            }
        }
    }
    None
}

/// Where the app's copy of the package declares `ConvexError`, as (line of the statement's
/// end `};`, the class's name), if the module has it; `Err` if it has the package's
/// `values/errors.js` but not in the form expected (minified with `keepNames`, as the CLI
/// bundles: `var …, NAME = class extends (…) {`, a static block naming it `ConvexError`, the
/// statement ending at a `};` line).
fn convex_error_class(source: &str) -> Result<Option<(usize, &str)>, ()> {
    let lines: Vec<&str> = source.lines().collect();
    let mut in_errors = false;
    for (i, line) in lines.iter().enumerate() {
        if let Some(path) = line.strip_prefix("// ") {
            in_errors = path.trim_end().ends_with("convex/dist/esm/values/errors.js");
            continue;
        }
        if !in_errors || !line.trim_end().ends_with('{') {
            continue;
        }
        let Some((before, _)) = line.rsplit_once(" = class") else { continue };
        let name = before.rsplit([' ', ',']).next().unwrap_or_default();
        let named = lines.get(i + 1).map(|l| l.trim()) == Some("static {")
            && lines.get(i + 2).is_some_and(|l| l.trim().ends_with("(this, \"ConvexError\");"));
        let ident = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if !named || !ident {
            continue;
        }
        let end = lines[i + 1..].iter().position(|l| l.starts_with('}')).map(|p| p + i + 1).ok_or(())?;
        return if lines[end].trim_end() == "};" { Ok(Some((end, name))) } else { Err(()) };
    }
    if lines.iter().any(|l| l.starts_with("// ") && l.trim_end().ends_with("convex/dist/esm/values/errors.js")) {
        return Err(());
    }
    Ok(None)
}

/// `source` with `globalThis[Symbol.for("kiln.ConvexError")]` set to the app's `ConvexError`
/// class at the end of the statement declaring it (on the same line: line numbers stay).
fn with_convex_error_exposed(source: &str, end: usize, name: &str) -> String {
    let mut out = String::with_capacity(source.len() + 64);
    for (i, line) in source.split_inclusive('\n').enumerate() {
        if i == end {
            let (text, newline) = line.strip_suffix('\n').map_or((line, ""), |t| (t, "\n"));
            out.push_str(&format!("{text} globalThis[Symbol.for(\"kiln.ConvexError\")] = {name};{newline}"));
        } else {
            out.push_str(line);
        }
    }
    out
}

/// The module the [`fast_package`] is declared as (no pushed path has a `:`).
const PACKAGE_MODULE: &str = "kiln:convex.js";

/// The entry's code that hands each function of the app to the SDK's copy of the package: the
/// same handler, visibility and validators, made by the copy's factory, so calls run the
/// copy's code with the fast paths. Anything else is kept as the module exports it. A
/// `ConvexError` the copy throws (a nested call's) is also an instance of the app's class,
/// which the app's code tests with `instanceof`.
const ADOPT: &str = r#"const appConvexError = globalThis[Symbol.for("kiln.ConvexError")];
delete globalThis[Symbol.for("kiln.ConvexError")];
if (typeof appConvexError === "function" && appConvexError !== kiln.ConvexError) {
  Object.setPrototypeOf(kiln.ConvexError.prototype, appConvexError.prototype);
}
function adopt(namespace) {
  const out = {};
  for (const [name, value] of Object.entries(namespace)) {
    out[name] = adoptFunction(value);
  }
  return out;
}
function adoptFunction(fn) {
  if (typeof fn !== "function" || typeof fn._handler !== "function") return fn;
  const make = fn.isQuery ? (fn.isPublic ? kiln.queryGeneric : fn.isInternal ? kiln.internalQueryGeneric : null)
    : fn.isMutation ? (fn.isPublic ? kiln.mutationGeneric : fn.isInternal ? kiln.internalMutationGeneric : null)
    : fn.isAction ? (fn.isPublic ? kiln.actionGeneric : fn.isInternal ? kiln.internalActionGeneric : null)
    : null;
  if (make === null) return fn;
  const made = make(fn._handler);
  made.exportArgs = fn.exportArgs;
  made.exportReturns = fn.exportReturns;
  return made;
}
"#;

/// How a module set starts (the runtime's `MODULE_SET`).
const MAGIC: &[u8] = b"\0kiln-module-set\n";

/// The name the schema module is declared under (no pushed module can have it: the CLI
/// bundles `schema.ts` apart and never among the functions).
const SCHEMA_MODULE: &str = "schema.js";

/// One module of a set.
#[derive(Clone, Debug)]
pub struct SetModule<'a> {
    /// Its path relative to `convex/`, with `/` separators and the `.js` extension
    /// (`messages.js`, `dir/module.js`, `_deps/ABC123.js`).
    pub path: &'a str,
    /// Its ES module source.
    pub source: &'a str,
}

/// A component definition as the `convex` CLI pushes it: its `convex.config.js` (which imports
/// the definitions it uses as `./_componentDeps/<base64url of their paths>`), its schema and
/// its modules (paths relative to its own folder).
#[derive(Clone, Debug)]
pub struct SetDefinition<'a> {
    /// Its folder relative to the app's `convex/` (`../node_modules/@x/y/dist/component`).
    pub path: &'a str,
    /// Its `convex.config.js` source.
    pub config: &'a str,
    /// The definitions its config uses (their paths).
    pub dependencies: Vec<&'a str>,
    /// Its schema module, if any.
    pub schema: Option<&'a str>,
    /// Its modules.
    pub modules: Vec<SetModule<'a>>,
}

/// The components of a pushed app: its `convex.config.js` and every definition it uses.
#[derive(Clone, Debug)]
pub struct SetComponents<'a> {
    /// The app's `convex.config.js` source.
    pub config: &'a str,
    /// The definitions it uses directly.
    pub dependencies: Vec<&'a str>,
    /// Every definition used, directly or through others.
    pub definitions: Vec<SetDefinition<'a>>,
}

/// The name the app's `convex.config.js` is declared under (pushed modules may not have it).
const CONFIG_MODULE: &str = "convex.config.js";

/// The module an importer in folder `dir` (`""` or `@c0/`) reaches definition `path` by, and
/// its source: the object `app.use(...)` takes, as Convex's runtime provides it.
fn dependency_module(dir: &str, path: &str, id: &str) -> (String, String) {
    use base64::Engine;
    let name = format!("{dir}_componentDeps/{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(path));
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let source = format!(
        "import definition from {};\nexport default {{ componentDefinitionPath: {}, defaultName: definition._name }};\n",
        quote(&format!("@{id}/{CONFIG_MODULE}")),
        quote(path)
    );
    (name, source)
}

/// Whether a path names a shared chunk rather than a module of the app.
pub fn is_chunk(path: &str) -> bool {
    path.starts_with("_deps/")
}

/// The module path functions are named by (`dir/module` for `dir/module.js`), for modules
/// that are not chunks.
pub fn module_name(path: &str) -> Option<&str> {
    (!is_chunk(path)).then(|| path.strip_suffix(".js")).flatten()
}

/// Checks a module path: relative, `/`-separated, no `.` or `..` segments, no characters an
/// import specifier or the runtime's framing could misread, ending in `.js`.
pub fn check_path(path: &str) -> Result<()> {
    let bad = |why: &str| Err(SdkError::NotAnApp(format!("module path {path:?} {why}")));
    if path.is_empty() || path.len() > 1024 {
        return bad("must have 1 to 1024 characters");
    }
    if !path.ends_with(".js") {
        return bad("must end with .js");
    }
    if path.chars().any(|c| c.is_control() || c == '\\' || c == '"' || c == ' ' || c == ':') {
        return bad("has a character a module path may not have");
    }
    if path.split('/').any(|segment| segment.is_empty() || segment == "." || segment == "..") {
        return bad("must be relative, without empty, `.` or `..` segments");
    }
    // `@<id>/` prefixes the modules of component definitions.
    if path.starts_with('@') {
        return bad("may not start with `@`");
    }
    Ok(())
}

/// A module set, ready for the runtime.
#[derive(Clone, Debug)]
pub struct ModuleSet {
    /// The runtime's source.
    pub bytes: Vec<u8>,
    /// Why the app's functions run on its own copy of the package (without the fast paths),
    /// if they do.
    pub fast_paths_off: Option<String>,
}

/// The runtime's source for `modules` (and the schema module, if any): every module declared
/// under its path, then an entry point exporting `modules` (module name → namespace; the
/// schema as `schema`). With `components`, each definition's modules join as `@<id>/<path>`
/// (ids `c0`, `c1`, … in the order of the definitions' paths, as `kiln build` numbers them)
/// and the configs as `convex.config` (the app's default export and `[id, path, definition]`
/// of each). Module-level code sees `env` as `process.env`, as in a Convex push (an
/// `auth.config.ts` reads its providers from it); calls see the deployment's current
/// variables. When the app bundles the version of the `convex` package the SDK has
/// ([`fast_package`]), that copy joins the set and runs the app's functions. Refuses invalid
/// or repeated paths, unknown definitions and an empty set.
pub fn module_set(
    modules: &[SetModule<'_>],
    schema: Option<&str>,
    components: Option<&SetComponents<'_>>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<ModuleSet> {
    check_modules(modules, "the app")?;
    let named: Vec<(&str, &str)> = modules.iter().filter_map(|m| module_name(m.path).map(|n| (n, m.path))).collect();
    if named.is_empty() {
        return Err(SdkError::NotAnApp("the push has no modules (only chunks under _deps/)".into()));
    }
    let mut definitions: Vec<&SetDefinition<'_>> =
        components.map(|c| c.definitions.iter().collect()).unwrap_or_default();
    definitions.sort_by_key(|d| d.path);
    let mut ids = std::collections::BTreeMap::new();
    for (i, d) in definitions.iter().enumerate() {
        if d.path.is_empty() || d.path.len() > 1024 || d.path.chars().any(char::is_control) {
            return Err(SdkError::NotAnApp(format!("component definition path {:?} is not valid", d.path)));
        }
        if ids.insert(d.path, format!("c{i}")).is_some() {
            return Err(SdkError::NotAnApp(format!("component definition {:?} is given twice", d.path)));
        }
        check_modules(&d.modules, d.path)?;
    }
    let id_of = |path: &str, user: &str| {
        ids.get(path).cloned().ok_or_else(|| {
            SdkError::NotAnApp(format!("{user} uses component definition {path:?}, which the push does not include"))
        })
    };
    let mut error_class = None;
    for (i, m) in modules.iter().enumerate() {
        match convex_error_class(m.source) {
            Ok(Some((end, name))) => {
                error_class.get_or_insert((i, end, name));
            }
            Ok(None) => {}
            Err(()) => error_class = Some((usize::MAX, 0, "")),
        }
    }
    let package = match (fast_package(), pushed_convex_version(modules)) {
        _ if error_class.is_some_and(|(i, ..)| i == usize::MAX) => {
            Err("the app's ConvexError class is not in the form the SDK links to".to_owned())
        }
        (Ok((source, version)), Some(pushed)) if pushed == version => Ok(source.as_str()),
        (Ok((_, version)), Some(pushed)) => {
            Err(format!("the app bundles convex {pushed}; the fast paths are for convex {version}"))
        }
        (Ok(_), None) => Err("the app bundles no recognizable convex package".to_owned()),
        (Err(why), _) => Err(why.to_owned()),
    };
    // Every module of the set (name, source) after the app's, and the entry's namespaces.
    let mut declared: Vec<(String, String)> = Vec::new();
    let mut namespaces: Vec<(String, String)> =
        named.iter().map(|(name, path)| (name.to_string(), path.to_string())).collect();
    if let Some(schema) = schema {
        declared.push((SCHEMA_MODULE.to_owned(), schema.to_owned()));
    }
    for d in &definitions {
        let id = &ids[d.path];
        for m in &d.modules {
            declared.push((format!("@{id}/{}", m.path), m.source.to_owned()));
            if let Some(name) = module_name(m.path) {
                namespaces.push((format!("@{id}/{name}"), format!("@{id}/{}", m.path)));
            }
        }
        if let Some(schema) = d.schema {
            declared.push((format!("@{id}/{SCHEMA_MODULE}"), schema.to_owned()));
        }
        declared.push((format!("@{id}/{CONFIG_MODULE}"), d.config.to_owned()));
        for dep in &d.dependencies {
            declared.push(dependency_module(&format!("@{id}/"), dep, &id_of(dep, d.path)?));
        }
    }
    if let Some(c) = components {
        declared.push((CONFIG_MODULE.to_owned(), c.config.to_owned()));
        for dep in &c.dependencies {
            declared.push(dependency_module("", dep, &id_of(dep, "convex/convex.config")?));
        }
    }

    let mut entry = String::from("// The modules of a pushed app, by module path.\n");
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    if package.is_ok() {
        entry.push_str(&format!("import * as kiln from {};\n", quote(PACKAGE_MODULE)));
    }
    for (i, (_, path)) in namespaces.iter().enumerate() {
        entry.push_str(&format!("import * as m{i} from {};\n", quote(path)));
    }
    if schema.is_some() {
        entry.push_str(&format!("import * as schema from {};\n", quote(SCHEMA_MODULE)));
    }
    for (i, d) in definitions.iter().enumerate() {
        if d.schema.is_some() {
            entry.push_str(&format!("import * as schema{i} from {};\n", quote(&format!("@c{i}/{SCHEMA_MODULE}"))));
        }
    }
    if components.is_some() {
        entry.push_str(&format!("import appConfig from {};\n", quote(CONFIG_MODULE)));
        for i in 0..definitions.len() {
            entry.push_str(&format!("import definition{i} from {};\n", quote(&format!("@c{i}/{CONFIG_MODULE}"))));
        }
        entry.push_str("const definitions = [\n");
        for (i, d) in definitions.iter().enumerate() {
            entry.push_str(&format!("  [{}, {}, definition{i}],\n", quote(&format!("c{i}")), quote(d.path)));
        }
        entry.push_str("];\n");
    }
    if package.is_ok() {
        entry.push_str(ADOPT);
    }
    entry.push_str("export const modules = {\n");
    for (i, (name, _)) in namespaces.iter().enumerate() {
        if package.is_ok() {
            entry.push_str(&format!("  {}: adopt(m{i}),\n", quote(name)));
        } else {
            entry.push_str(&format!("  {}: m{i},\n", quote(name)));
        }
    }
    if schema.is_some() {
        entry.push_str("  \"schema\": schema,\n");
    }
    for (i, d) in definitions.iter().enumerate() {
        if d.schema.is_some() {
            entry.push_str(&format!("  {}: schema{i},\n", quote(&format!("@c{i}/schema"))));
        }
    }
    if components.is_some() {
        entry.push_str("  \"convex.config\": { default: appConfig, definitions },\n");
    }
    entry.push_str("};\n");

    let mut out = MAGIC.to_vec();
    let mut push = |bytes: &[u8]| -> Result<()> {
        let len = u32::try_from(bytes.len()).map_err(|_| SdkError::NotAnApp("a module is over 4 GiB".into()))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(bytes);
        Ok(())
    };
    // The environment module-level code sees (the runtime's `ENV_ENTRY`).
    push(b"\0env")?;
    push(serde_json::to_string(env).map_err(|e| SdkError::NotAnApp(e.to_string()))?.as_bytes())?;
    if let Ok(source) = package {
        push(PACKAGE_MODULE.as_bytes())?;
        push(source.as_bytes())?;
    }
    for (i, m) in modules.iter().enumerate() {
        push(m.path.as_bytes())?;
        match error_class {
            Some((at, end, name)) if at == i && package.is_ok() => {
                push(with_convex_error_exposed(m.source, end, name).as_bytes())?
            }
            _ => push(m.source.as_bytes())?,
        }
    }
    for (name, source) in &declared {
        push(name.as_bytes())?;
        push(source.as_bytes())?;
    }
    // The entry's name has a `:`, which no pushed path has.
    push(b"kiln:entry.js")?;
    push(entry.as_bytes())?;
    Ok(ModuleSet { bytes: out, fast_paths_off: package.err() })
}

/// Checks the paths of the modules of the app or of a component definition (`whose`).
fn check_modules(modules: &[SetModule<'_>], whose: &str) -> Result<()> {
    let mut seen = BTreeSet::new();
    for m in modules {
        check_path(m.path)?;
        if m.path == SCHEMA_MODULE || m.path == CONFIG_MODULE {
            return Err(SdkError::NotAnApp(format!(
                "a module of {whose} may not be named {}: it is pushed apart",
                m.path
            )));
        }
        if !seen.insert(m.path) {
            return Err(SdkError::NotAnApp(format!("module {:?} of {whose} is given twice", m.path)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_relative_module_files() {
        for ok in ["messages.js", "dir/m.js", "_deps/ABC-12.js", "auth.config.js"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/abs.js",
            "a/../b.js",
            "./a.js",
            "a//b.js",
            "a.ts",
            "a\"b.js",
            "a\\b.js",
            "a b.js",
            "x\0.js",
            "kiln:x.js",
        ] {
            assert_eq!(check_path(bad).unwrap_err().code(), "NotAnApp", "{bad:?}");
        }
    }

    #[test]
    fn the_apps_convex_error_class_is_found_where_the_cli_bundles_it() {
        let source = "// a.js\nvar x = 1;\n// node_modules/convex/dist/esm/values/errors.js\n\
            var Lt = 1, Le, A = class extends (De = Error, Le = Gt, De) {\n  static {\n    n(this, \"ConvexError\");\n  }\n  constructor(t) {\n    super(t);\n  }\n};\nvar y = 2;\n";
        let (end, name) = convex_error_class(source).unwrap().unwrap();
        assert_eq!((end, name), (10, "A"));
        let exposed = with_convex_error_exposed(source, end, name);
        assert_eq!(exposed.lines().count(), source.lines().count());
        assert!(exposed.contains("}; globalThis[Symbol.for(\"kiln.ConvexError\")] = A;\nvar y = 2;"));
        assert_eq!(convex_error_class("// x.js\nvar a = class {\n};\n"), Ok(None));
        // The package's errors module in another form: not linked, so not adopted.
        let other = "// node_modules/convex/dist/esm/values/errors.js\nclass ConvexError extends Error {}\n";
        assert_eq!(convex_error_class(other), Err(()));
    }

    #[test]
    fn the_cli_bundles_version_is_read_from_the_package_index() {
        let modules = [SetModule {
            path: "_deps/A.js",
            source: "// ../node_modules/convex/dist/esm/index.js\nvar w = \"1.48.0\";\n",
        }];
        assert_eq!(pushed_convex_version(&modules), Some("1.48.0"));
        assert_eq!(pushed_convex_version(&[SetModule { path: "a.js", source: "var w = \"1.48.0\";" }]), None);
    }

    #[test]
    fn the_sdks_package_takes_the_fast_paths() {
        let (source, version) = fast_package().unwrap();
        assert_eq!(version, "1.48.0");
        assert!(source.contains("globalThis.__kiln_fast.made("));
    }

    #[test]
    fn chunks_are_not_modules_of_functions() {
        assert_eq!(module_name("dir/m.js"), Some("dir/m"));
        assert_eq!(module_name("auth.config.js"), Some("auth.config"));
        assert_eq!(module_name("_deps/X.js"), None);
    }

    #[test]
    fn component_definitions_join_under_their_ids() {
        let app = [SetModule { path: "a.js", source: "export const x = 1;" }];
        let definition = |path, dependencies| SetDefinition {
            path,
            config: "export default {};",
            dependencies,
            schema: Some("export default {};"),
            modules: vec![
                SetModule { path: "lib.js", source: "import \"./_deps/x.js\";" },
                SetModule { path: "_deps/x.js", source: "" },
            ],
        };
        let components = SetComponents {
            config: "import c from \"./_componentDeps/Y29tcG9uZW50cy9i\";",
            dependencies: vec!["components/b"],
            definitions: vec![
                definition("components/b", vec!["../node_modules/a"]),
                definition("../node_modules/a", vec![]),
            ],
        };
        let env = std::collections::BTreeMap::new();
        let set = module_set(&app, None, Some(&components), &env).unwrap();
        let text = String::from_utf8_lossy(&set.bytes);
        // Ids follow the definitions' paths: `../node_modules/a` is c0, `components/b` c1.
        assert!(text.contains("\"@c0/lib\": "), "{text}");
        assert!(text.contains("@c1/_deps/x.js"));
        assert!(text.contains("\"@c1/schema\": schema1"));
        assert!(text.contains("[\"c0\", \"../node_modules/a\", definition0]"));
        // The app reaches `components/b` (base64url `Y29tcG9uZW50cy9i`), which reaches `a`.
        assert!(text.contains("_componentDeps/Y29tcG9uZW50cy9i"));
        assert!(text.contains("@c1/_componentDeps/Li4vbm9kZV9tb2R1bGVzL2E"));
        assert!(text.contains("componentDefinitionPath: \"components/b\""));
        // A definition used but not pushed, or pushed twice, is refused.
        let mut missing = components.clone();
        missing.definitions.pop();
        let err = module_set(&app, None, Some(&missing), &env).unwrap_err();
        assert!(err.to_string().contains("which the push does not include"), "{err}");
        let mut twice = components.clone();
        twice.definitions.push(definition("components/b", vec![]));
        assert!(module_set(&app, None, Some(&twice), &env).unwrap_err().to_string().contains("given twice"));
        // App modules may not take the names of components' modules or of the config.
        assert!(check_path("@c0/lib.js").is_err());
        let config_named = [SetModule { path: "convex.config.js", source: "" }];
        assert!(module_set(&config_named, None, None, &env).is_err());
    }

    #[test]
    fn a_set_frames_every_module_then_the_entry() {
        let modules = [
            SetModule { path: "a.js", source: "export const x = 1;" },
            SetModule { path: "_deps/c.js", source: "export {};" },
        ];
        let env = std::collections::BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        let set = module_set(&modules, Some("export default 1;"), None, &env).unwrap();
        assert!(set.bytes.starts_with(MAGIC));
        // No convex package in these modules: they run as they are.
        assert!(set.fast_paths_off.is_some());
        let text = String::from_utf8_lossy(&set.bytes);
        assert!(text.contains("import * as m0 from \"a.js\""));
        assert!(!text.contains("from \"_deps/c.js\""));
        assert!(text.contains("\"schema\": schema"));
        assert!(text.contains("{\"A\":\"1\"}"));
        assert!(module_set(&[modules[1].clone()], None, None, &env).is_err());
        assert!(module_set(&[modules[0].clone(), modules[0].clone()], None, None, &env).is_err());
        let schema_named = [SetModule { path: "schema.js", source: "" }];
        assert!(module_set(&schema_named, None, None, &env).is_err());
    }
}
