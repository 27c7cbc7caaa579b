//! The guest toolchain end to end: example apps and the Rust guest are built by our own
//! pipeline and run in wasmtime against an in-memory host.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod host;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use host::Harness;
use kiln_guest_sdk::bindings::kiln::platform::types::FunctionKind;
use kiln_guest_sdk::component::{check_imports, component_imports, load_component};
use kiln_guest_sdk::{BuildOptions, BuildOutput, build_app};
use kiln_value::{Object, Value, from_msgpack, parse_convex_json, to_msgpack};
use proptest::prelude::*;
use wasmtime::Engine;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| kiln_guest_sdk::engine().unwrap())
}

fn app_dir(app: &str) -> PathBuf {
    if app.starts_with("fixtures/") {
        repo().join("guest-sdk/tests").join(app)
    } else {
        repo().join("examples").join(app)
    }
}

/// Builds of apps (which write to the app's `.kiln/`) one at a time.
fn build_lock() -> std::sync::MutexGuard<'static, std::collections::HashMap<(String, bool), &'static BuildOutput>> {
    static APPS: OnceLock<std::sync::Mutex<std::collections::HashMap<(String, bool), &'static BuildOutput>>> =
        OnceLock::new();
    APPS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds an app once per test run.
fn built(app: &str) -> &'static BuildOutput {
    built_with(app, false)
}

/// Builds an app once per test run, with or without the guest SDK's fast paths.
fn built_with(app: &str, plain_bundle: bool) -> &'static BuildOutput {
    let mut apps = build_lock();
    if let Some(out) = apps.get(&(app.to_owned(), plain_bundle)) {
        return out;
    }
    let out =
        build_app(&app_dir(app), &BuildOptions { cache_dir: Some(cache_dir()), plain_bundle, ..Default::default() })
            .unwrap_or_else(|e| panic!("building {app}: {e}"));
    let out: &'static BuildOutput = Box::leak(Box::new(out));
    apps.insert((app.to_owned(), plain_bundle), out);
    out
}

fn harness(app: &str) -> Harness {
    harness_with(app, false)
}

fn harness_with(app: &str, plain_bundle: bool) -> Harness {
    let out = built_with(app, plain_bundle);
    Harness::new(engine(), load_component(engine(), &out.component, Some(&cache_dir())).unwrap())
}

fn rust_harness() -> Harness {
    let bytes = kiln_guest_sdk::rust_guest_component().unwrap();
    Harness::new(engine(), load_component(engine(), &bytes, Some(&cache_dir())).unwrap())
}

fn args(json: &str) -> Value {
    parse_convex_json(json).unwrap()
}

fn int(i: i64) -> String {
    format!(r#"{{"$integer":"{}"}}"#, kiln_value::json::base64_encode(&i.to_le_bytes()))
}

use FunctionKind::{Action, Mutation, Query};

#[test]
fn chat_queries_and_mutations_round_trip() {
    let h = harness("chat");
    let sent = h.call(Mutation, "messages:send", &args(r#"{"author": "ann", "body": "hello"}"#));
    let Value::String(id) = sent.value() else { panic!("send returns an id") };
    assert_eq!(sent.calls, vec!["db.insert messages"]);
    h.call(Mutation, "messages:send", &args(r#"{"author": "bob", "body": "hi ann"}"#)).value();
    let liked = h.call(Mutation, "messages:like", &args(&format!(r#"{{"id": "{id}"}}"#)));
    assert_eq!(liked.value(), Value::Float64(1.0));
    assert_eq!(liked.calls, vec!["db.get *", "db.patch"]);

    let list = h.call(Query, "messages:list", &args("{}"));
    let Value::Array(items) = list.value() else { panic!() };
    let bodies: Vec<_> = items.iter().map(|m| m.as_object().unwrap()["body"].clone()).collect();
    assert_eq!(bodies, vec![Value::from("hello"), Value::from("hi ann")]);
    assert_eq!(items[0].as_object().unwrap()["likes"], Value::Float64(1.0));
    // `.order("desc").take(50)` is one query with a limit, read document by document.
    assert_eq!(list.calls[0], "db.query messages");
    assert!(list.calls[1..].iter().all(|c| c == "db.next"), "{:?}", list.calls);

    let by = h.call(Query, "messages:byAuthor", &args(r#"{"author": "bob"}"#));
    let Value::Array(items) = by.value() else { panic!() };
    assert_eq!(items.len(), 1);
}

#[test]
fn convex_errors_carry_their_data() {
    let h = harness("chat");
    let out = h.call(Mutation, "messages:send", &args(r#"{"author": "ann", "body": "   "}"#));
    let e = out.error();
    assert_eq!(e.code, "ConvexError");
    let data = from_msgpack(e.data.as_ref().unwrap()).unwrap();
    assert_eq!(data, args(r#"{"code": "EMPTY_MESSAGE", "message": "A message needs a body"}"#));

    let probe = harness("fixtures/probe");
    let e = probe.call(Mutation, "probe:convexError", &args("{}")).error().clone();
    assert_eq!(e.code, "ConvexError");
    assert_eq!(
        from_msgpack(e.data.as_ref().unwrap()).unwrap(),
        args(&format!(r#"{{"code": "NOPE", "count": {}}}"#, int(3)))
    );
}

#[test]
fn bank_int64_arithmetic_and_nested_action_calls() {
    let bank = harness("bank");
    let open = |owner: &str, balance: i64| match bank
        .call(Mutation, "accounts:open", &args(&format!(r#"{{"owner": "{owner}", "balance": {}}}"#, int(balance))))
        .value()
    {
        Value::String(id) => id,
        other => panic!("{other:?}"),
    };
    let (a, b) = (open("ann", 100), open("bob", 5));
    let moved = bank.call(
        Mutation,
        "accounts:transfer",
        &args(&format!(r#"{{"from": "{a}", "to": "{b}", "amount": {}}}"#, int(30))),
    );
    assert_eq!(moved.value(), Value::Int64(70));
    assert_eq!(moved.calls, vec!["db.get *", "db.get *", "db.patch", "db.patch", "db.insert transfers"]);
    // The same movement without its record.
    let unrecorded = bank.call(
        Mutation,
        "accounts:move",
        &args(&format!(r#"{{"from": "{a}", "to": "{b}", "amount": {}}}"#, int(20))),
    );
    assert_eq!(unrecorded.value(), Value::Int64(50));
    assert_eq!(unrecorded.calls, vec!["db.get *", "db.get *", "db.patch", "db.patch"]);
    let broke = bank.call(
        Mutation,
        "accounts:transfer",
        &args(&format!(r#"{{"from": "{b}", "to": "{a}", "amount": {}}}"#, int(1000))),
    );
    assert_eq!(broke.error().code, "ConvexError");
    assert_eq!(bank.call(Query, "accounts:total", &args("{}")).value(), Value::Int64(105));
    let page = bank.call(
        Query,
        "accounts:byOwner",
        &args(r#"{"owner": "ann", "paginationOpts": {"numItems": 10, "cursor": null}}"#),
    );
    let page = page.value();
    assert_eq!(page.as_object().unwrap()["isDone"], Value::Boolean(true));

    let chat = harness("chat");
    chat.call(Mutation, "messages:send", &args(r#"{"author": "ann", "body": "one"}"#)).value();
    let summary = chat.call(Action, "messages:summary", &args("{}"));
    assert_eq!(summary.value(), Value::from("1 messages, latest by ann"));
    assert!(summary.calls.contains(&"functions.run messages:count".to_owned()), "{:?}", summary.calls);
}

#[test]
fn exceptions_unknown_functions_and_bad_arguments_are_errors_not_traps() {
    let h = harness("fixtures/probe");
    let e = h.call(Query, "probe:boom", &args("{}")).error().clone();
    assert_eq!(e.code, "UncaughtException");
    assert!(e.message.starts_with("Uncaught Error: boom"), "{}", e.message);
    assert!(e.message.contains("at "), "the stack is included: {}", e.message);

    let e = h.call(Query, "probe:nothing", &args("{}")).error().clone();
    assert_eq!(e.code, "FunctionNotFound");
    assert!(e.message.contains("'probe:nothing'"), "the message names the path: {}", e.message);
    let e = h.call(Mutation, "probe:boom", &args("{}")).error().clone();
    assert!(e.message.starts_with("Trying to execute probe:boom as Mutation"), "{}", e.message);
    assert_eq!(h.call(Query, "nowhere:boom", &args("{}")).error().code, "FunctionNotFound");
    // Only a module's own exports are functions: nothing inherited by objects.
    for path in ["probe:constructor", "__proto__:hasOwnProperty", "probe:toString"] {
        assert_eq!(h.call(Query, path, &args("{}")).error().code, "FunctionNotFound", "{path}");
    }
    assert_eq!(h.call(Mutation, "probe:boom", &args("{}")).error().code, "WrongFunctionKind");
    let not_object = h.call_with(Query, "probe:boom", &to_msgpack(&Value::Array(vec![])), |_| {});
    assert_eq!(not_object.error().code, "InvalidArgs");
    let garbage = h.call_with(Query, "probe:boom", &[0xc1, 0x00], |_| {});
    assert_eq!(garbage.error().code, "MalformedValue");

    let unsupported = h.call(Query, "probe:unsupported", &args("{}")).error().clone();
    assert!(unsupported.message.contains("1.0/count"), "names the op: {}", unsupported.message);
    let write = h.call(Query, "probe:writeInQuery", &args("{}")).error().clone();
    assert!(write.message.contains("read-only"), "{}", write.message);
    let never = h.call(Query, "probe:neverSettles", &args("{}")).error().clone();
    assert_eq!(never.code, "UnsettledPromise");
    assert_eq!(h.call(Query, "probe:recurse", &args(r#"{"depth": 500}"#)).value(), Value::Float64(500.0));
    assert!(h.call(Query, "probe:timerInQuery", &args("{}")).error().message.contains("only available in actions"));
}

/// A harness for `app` on an engine that meters fuel.
fn metered_harness(app: &str) -> Harness {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    let metered = Engine::new(&config).unwrap();
    Harness::new(&metered, load_component(&metered, &built(app).component, Some(&cache_dir())).unwrap())
}

/// The dispatcher runs a function the package's factory made without going through its
/// invoker, but only while the invoker is still the one the factory made.
#[test]
fn internal_functions_run_and_a_replaced_invoker_is_called() {
    let h = harness("fixtures/probe");
    assert_eq!(h.call(Query, "probe:hiddenQuery", &args(r#"{"n": 41}"#)).value(), Value::Float64(42.0));
    assert_eq!(h.call(Mutation, "probe:hiddenMutation", &args(r#"{"n": 21}"#)).value(), Value::Float64(42.0));
    assert_eq!(
        h.call(Query, "probe:reinvoked", &args(r#"{"n": 1}"#)).value(),
        args(r#"{"replaced": [{"n": 1}]}"#),
        "a replaced invoker gets the arguments' JSON, as the package gives it (an array of one object)"
    );
}

/// Internal functions take the dispatcher's shortcut as public ones do: the same fuel as their
/// public twins (going through the invoker costs ~2.5k more).
#[test]
fn internal_functions_cost_what_their_public_twins_cost() {
    let probe = metered_harness("fixtures/probe");
    let n = args(r#"{"n": 1}"#);
    for (kind, hidden, shown) in
        [(Query, "probe:hiddenQuery", "probe:shownQuery"), (Mutation, "probe:hiddenMutation", "probe:shownMutation")]
    {
        let (hidden_fuel, shown_fuel) = (probe.fuel_of(kind, hidden, &n), probe.fuel_of(kind, shown, &n));
        assert!(hidden_fuel.abs_diff(shown_fuel) < 500, "{hidden}: {hidden_fuel} fuel, {shown}: {shown_fuel}");
    }
}

/// An app in a temporary folder: `files` under `convex/`, beside the guest SDK's
/// `node_modules` (for the `convex` package and esbuild).
fn temp_app(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir_all(dir.path().join("convex")).unwrap();
    std::os::unix::fs::symlink(repo().join("guest-sdk/node_modules"), dir.path().join("node_modules")).unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join("convex").join(name), text).unwrap();
    }
    dir
}

#[test]
fn apps_declaring_what_kiln_does_not_run_are_refused_by_name() {
    const FUNCTIONS: &str = r#"
import { internalMutation, query } from "./_generated/server";
export const list = query({ args: {}, handler: async () => [] });
export const tick = internalMutation({ args: {}, handler: async () => null });
"#;
    const HTTP: &str = r#"
import { httpRouter } from "convex/server";
import { httpAction } from "./_generated/server";
const http = httpRouter();
http.route({ path: "/hook", method: "POST", handler: httpAction(async () => new Response("ok")) });
export default http;
"#;
    const SEARCH: &str = r#"
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
export default defineSchema({
  messages: defineTable({ body: v.string(), embedding: v.array(v.float64()) })
    .searchIndex("search_body", { searchField: "body" })
    .vectorIndex("by_embedding", { vectorField: "embedding", dimensions: 3 }),
});
"#;
    const NODE: &str = "// Runs in Node.js on Convex.\n\"use node\";\nimport { action } from \"./_generated/server\";\nexport const go = action({ args: {}, handler: async () => 1 });\n";
    let cases = [("node.ts", NODE, "\"use node\" in convex/node.ts")];
    for (file, text, named) in cases {
        let app = temp_app(&[("messages.ts", FUNCTIONS), (file, text)]);
        let err = build_app(app.path(), &BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() })
            .err()
            .unwrap_or_else(|| panic!("{file}: the build succeeded"));
        assert_eq!(err.code(), "UnsupportedFeature", "{file}: {err}");
        assert!(err.to_string().contains(named), "{file}: {err}");
    }
    // The same app without them builds, cron jobs, HTTP routes, search and vector indexes
    // included (Kiln runs them).
    const CRONS: &str = r#"
import { cronJobs } from "convex/server";
import { internal } from "./_generated/api";
const crons = cronJobs();
crons.interval("tick", { minutes: 5 }, internal.messages.tick, {});
export default crons;
"#;
    let app = temp_app(&[("messages.ts", FUNCTIONS), ("crons.ts", CRONS), ("http.ts", HTTP), ("schema.ts", SEARCH)]);
    let out = build_app(app.path(), &BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() }).unwrap();
    assert!(out.manifest.function("messages:list").is_some());
    let routes: Vec<_> = out.manifest.http_routes.iter().map(|r| (r.path.as_str(), r.method.as_str())).collect();
    assert_eq!(routes, [("/hook", "POST")]);
    let tick = &out.manifest.crons.as_ref().expect("the manifest holds the cron jobs")["tick"];
    assert_eq!(tick["name"], "messages:tick");
    assert_eq!(tick["schedule"], serde_json::json!({"type": "interval", "minutes": 5}));
}

/// `fixtures/components`: an app mounting a local component twice.
#[test]
fn components_are_bundled_and_their_mounts_analyzed() {
    let app = repo().join("guest-sdk/tests/fixtures/components");
    let out = build_app(&app, &BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() }).unwrap();
    let mounts: Vec<String> = out.manifest.component_instances().unwrap().into_iter().map(|i| i.path).collect();
    assert_eq!(mounts, ["counter", "second"]);
    // Codegen wrote the component's own `_generated/` and `components` for the app.
    assert!(app.join("convex/components/counter/_generated/server.js").is_file());
    let api = std::fs::read_to_string(app.join("convex/_generated/api.js")).unwrap();
    assert!(api.contains("export const components = componentsGeneric()"), "{api}");

    // What the build bundled and analyzed: the component's modules under its definition's id,
    // its schema, and the app's mounts.
    let bundle = kiln_guest_sdk::bundle::bundle(&app, true, None).unwrap();
    assert!(bundle.modules.contains(&"@c0/lib".to_owned()), "{:?}", bundle.modules);
    assert!(!bundle.modules.iter().any(|m| m.starts_with("components/")), "{:?}", bundle.modules);
    let manifest = &out.manifest;
    assert_eq!(manifest.function("@c0/lib:add").map(|f| f.kind.as_str()), Some("mutation"));
    assert!(manifest.function("app:bump").is_some() && manifest.function("lib:add").is_none());
    let tree = manifest.components.as_ref().expect("the manifest holds the component tree");
    let definition = &tree["definitions"][0];
    assert_eq!(
        (&definition["id"], &definition["path"]),
        (&serde_json::json!("c0"), &serde_json::json!("components/counter"))
    );
    assert_eq!(definition["definition"]["name"], "counter");
    assert_eq!(definition["schema"]["tables"][0]["tableName"], "counters");
}

#[test]
fn console_timers_and_counters_log_as_in_convex() {
    let h = harness("fixtures/probe");
    let out = h.call(Query, "probe:consoleTimers", &args("{}"));
    assert_eq!(out.value(), Value::Null);
    let line = |level: &str, text: &str| (level.to_owned(), text.to_owned());
    assert_eq!(
        out.logs,
        vec![
            line("WARN", "Timer 'load' already exists"),
            // A query's clock is frozen for the whole call.
            line("LOG", "load: 0ms rows 3"),
            line("LOG", "load: 0ms"),
            line("WARN", "Timer 'load' does not exist"),
            line("WARN", "Timer 'missing' does not exist"),
            line("LOG", "default: 1"),
            line("LOG", "hits: 1"),
            line("LOG", "hits: 2"),
            line("LOG", "hits: 1"),
            line("WARN", "Count for 'never' does not exist"),
            line("LOG", "default: 0ms"),
        ]
    );
}

#[test]
fn unbounded_recursion_traps_cleanly_and_the_next_call_is_unaffected() {
    let h = harness("fixtures/probe");
    let trap = h.call_trapping(Query, "probe:recurse", &args(r#"{"depth": 1000000}"#));
    assert_eq!(trap, wasmtime::Trap::StackOverflow);
    assert_eq!(h.call(Query, "probe:recurse", &args(r#"{"depth": 100}"#)).value(), Value::Float64(100.0));
}

#[test]
fn calls_are_deterministic_and_start_from_a_clean_image() {
    let h = harness("fixtures/probe");
    let a = h.call(Query, "probe:entropy", &args("{}"));
    let b = h.call(Query, "probe:entropy", &args("{}"));
    assert_eq!(a.result.as_ref().unwrap(), b.result.as_ref().unwrap(), "byte-identical results");
    assert_eq!(a.logs, b.logs, "identical logs");
    assert_eq!(a.logs[1], ("WARN".to_owned(), "careful".to_owned()));
    let v = a.value();
    let o = v.as_object().unwrap();
    assert_eq!(o["now"], Value::Float64(1_750_000_000_123.0), "Date.now is the host's frozen time");
    assert_eq!(o["date"], Value::from("2025-06-15T15:06:40.123Z"), "so is new Date()");
    let other_seed = h.call_with(Query, "probe:entropy", &to_msgpack(&args("{}")), |host| host.seed = 8);
    assert_ne!(other_seed.value().as_object().unwrap()["random"], o["random"], "randomness comes from the seed");

    let first = h.call(Mutation, "probe:setGlobal", &args(r#"{"value": "x"}"#));
    assert_eq!(first.value(), Value::Null);
    let second = h.call(Mutation, "probe:setGlobal", &args(r#"{"value": "y"}"#));
    assert_eq!(second.value(), Value::Null, "a global set by one call is gone in the next");
}

#[test]
fn web_globals_and_timers() {
    let h = harness("fixtures/probe");
    let out = h.call_with(Query, "probe:webGlobals", &to_msgpack(&args("{}")), |host| {
        host.variables = vec![("GREETING".into(), "hello".into())];
    });
    let v = out.value();
    let o = v.as_object().unwrap();
    assert_eq!(o["href"], Value::from("https://user@example.com:8443/a/c?x=1&y=two+words&z=3#frag"));
    assert_eq!(o["host"], Value::from("example.com:8443"));
    assert_eq!(o["y"], Value::from("two words"));
    assert_eq!(o["relative"], Value::from("https://example.com/a/up?q"));
    assert_eq!(o["base64"], Value::from("S2lsbiB2"));
    assert_eq!(o["unbase64"], Value::from("Kiln"));
    assert_eq!(o["encoded"], Value::Array(vec![Value::Float64(195.0), Value::Float64(169.0)]));
    assert_eq!(o["decoded"], Value::from("kiln"));
    assert_eq!(o["clonedDate"], Value::Boolean(true));
    assert_eq!(o["clonedMap"], Value::from("one"));
    assert_eq!(o["env"], Value::from("hello"));

    let timers = h.call(Action, "probe:timers", &args("{}"));
    let order = vec![Value::from("early"), Value::from("late"), Value::from("waited")];
    assert_eq!(timers.value(), Value::Array(order));
}

#[test]
fn blobs_forms_streams_bodies_and_abort_signals_behave_as_on_the_web() {
    let h = harness("fixtures/probe");
    let v = h.call(Query, "probe:webApis", &args("{}")).value();
    let expected = parse_convex_json(
        r#"{
        "blob": {"size": 12, "type": "text/plain", "text": "héllo world", "slice": "wor"},
        "file": {"name": "greeting.txt", "size": 12, "lastModified": 7, "isBlob": true},
        "form": {"contentType": "multipart/form-data", "name": "grace", "tags": ["a", "b"],
                 "keys": ["name", "upload", "tag", "tag"],
                 "upload": {"name": "greeting.txt", "type": "text/plain", "text": "héllo world"}},
        "urlencoded": ["1", "3", "two words"],
        "streamed": "chunk one, chunk two",
        "chunks": ["abc"],
        "textBodyType": "text/plain;charset=UTF-8",
        "reread": "TypeError: Body is unusable: Body has already been read",
        "clone": {"status": 201, "json": {"n": 1}},
        "getWithBody": "TypeError: Request with GET/HEAD method cannot have body.",
        "badStatus": "RangeError: Response status 99 is not in the range 200 to 599",
        "redirect": "https://example.com/next",
        "aborted": {"aborted": true, "reason": "AbortError", "seen": ["onabort", "listener"]},
        "throwIfAborted": "thrown why"
    }"#,
    )
    .unwrap();
    assert_eq!(v, expected);
}

#[test]
fn crypto_subtle_digests_and_hmac_match_published_vectors() {
    let h = harness("fixtures/probe");
    let v = h.call(Query, "probe:subtle", &args("{}")).value();
    let o = v.as_object().unwrap();
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    let digests = o["digests"].as_object().unwrap();
    // FIPS 180 examples: the digests of "abc".
    assert_eq!(text(&digests["SHA-1"]), "a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(text(&digests["SHA-256"]), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        text(&digests["SHA-384"]),
        "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
    );
    assert_eq!(
        text(&digests["SHA-512"]),
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    );
    // RFC 4231, test case 2.
    assert_eq!(text(&o["hmac256"]), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    assert_eq!(
        text(&o["hmac512"]),
        "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"
    );
    assert_eq!(o["verifies"], Value::Boolean(true));
    assert_eq!(o["tamperedVerifies"], Value::Boolean(false));
    let jwk = o["jwk"].as_object().unwrap();
    assert_eq!(
        (text(&jwk["kty"]), text(&jwk["k"]), text(&jwk["alg"])),
        ("oct".into(), "SmVmZQ".into(), "HS256".into())
    );
    assert!(text(&o["md5"]).starts_with("NotSupportedError: the hash MD5"), "{:?}", o["md5"]);
    // Not a point of the curve.
    assert!(text(&o["ecdsa"]).starts_with("DataError: not a key of this curve"), "{:?}", o["ecdsa"]);
    assert!(text(&o["encrypt"]).starts_with("NotSupportedError: crypto.subtle.encrypt"), "{:?}", o["encrypt"]);
    assert!(text(&o["wrongUse"]).starts_with("InvalidAccessError"), "{:?}", o["wrongUse"]);
    assert!(text(&o["notExtractable"]).starts_with("InvalidAccessError"), "{:?}", o["notExtractable"]);
}

#[test]
fn components_import_only_world_app() {
    for app in ["chat", "bank"] {
        let compiled = load_component(engine(), &built(app).component, Some(&cache_dir())).unwrap();
        check_imports(engine(), &compiled).unwrap();
        let imports = component_imports(engine(), &compiled);
        assert!(imports.iter().all(|i| i.starts_with("kiln:platform/")), "{imports:?}");
        assert!(!imports.iter().any(|i| i.contains("wasi")), "{imports:?}");
    }
    let rust = kiln_guest_sdk::rust_guest_component().unwrap();
    let compiled = load_component(engine(), &rust, Some(&cache_dir())).unwrap();
    check_imports(engine(), &compiled).unwrap();
    // The Rust guest's std imports WASI files and clocks; they are gone from the component.
    let before = kiln_guest_sdk::wasi::import_names(kiln_guest_sdk::RUST_GUEST_MODULE).unwrap();
    assert!(before.iter().any(|i| i == "wasi_snapshot_preview1.path_open"));
}

#[test]
fn a_guest_cannot_reach_files_or_the_real_clock() {
    let h = rust_harness();
    let v = h.call(Query, "counter:probe", &args("{}")).value();
    let o = v.as_object().unwrap();
    let Value::String(fs) = &o["fs"] else { panic!() };
    assert_ne!(fs, "readable");
    // No directory is preopened, so libc finds no file; nothing reached the host's filesystem.
    assert!(fs.contains("os error"), "{fs}");
    let Value::Float64(now) = o["nowMs"] else { panic!() };
    assert!((now - 1_750_000_000_123.0).abs() < 0.01, "the clock is the host's frozen time: {now}");
}

#[test]
fn analyze_lists_functions_validators_and_schema() {
    let m = &built("chat").manifest;
    let paths: Vec<&str> = m.functions.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![
            "messages:byAuthor",
            "messages:count",
            "messages:generateUploadUrl",
            "messages:like",
            "messages:list",
            "messages:mine",
            "messages:search",
            "messages:send",
            "messages:sendImage",
            "messages:summary"
        ]
    );
    let routes: Vec<_> = m.http_routes.iter().map(|r| format!("{} {}", r.method, r.path)).collect();
    assert_eq!(routes, ["GET /messages", "OPTIONS /messages", "POST /messages"]);
    let count = m.function("messages:count").unwrap();
    assert_eq!((count.kind.as_str(), count.visibility.as_str()), ("query", "internal"));
    assert_eq!(m.function("messages:summary").unwrap().kind, "action");
    let like = m.function("messages:like").unwrap();
    assert_eq!(
        like.args.as_ref().unwrap()["value"]["id"]["fieldType"],
        serde_json::json!({"type": "id", "tableName": "messages"})
    );
    let schema = m.schema.as_ref().unwrap();
    let tables = schema["tables"].as_array().unwrap();
    assert_eq!(tables[0]["tableName"], "messages");
    assert_eq!(tables[0]["indexes"][0]["indexDescriptor"], "by_author");
    // The schema parses as a store schema: the manifest is what deployments apply.
    kiln_store::Schema::parse(&schema.to_string()).unwrap();
    let on_disk: kiln_guest_sdk::Manifest =
        serde_json::from_str(&std::fs::read_to_string(&built("chat").manifest_path).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
}

#[test]
fn the_rust_guest_bank_moves_money_between_accounts() {
    let h = rust_harness();
    let open = |owner: &str| {
        let v = h.call(
            Mutation,
            "accounts:open",
            &Value::Object(
                [("owner".to_owned(), Value::from(owner)), ("balance".to_owned(), Value::Int64(100))].into(),
            ),
        );
        v.value().as_str().unwrap().to_owned()
    };
    let (a, b) = (open("ann"), open("bob"));
    let transfer = |path: &str, amount: i64| {
        let args: Object = [
            ("from".to_owned(), Value::from(a.as_str())),
            ("to".to_owned(), Value::from(b.as_str())),
            ("amount".to_owned(), Value::Int64(amount)),
        ]
        .into();
        h.call(Mutation, path, &Value::Object(args))
    };
    let done = transfer("accounts:transfer", 30);
    assert_eq!(done.value(), Value::Int64(70));
    assert_eq!(done.calls, vec!["db.get accounts", "db.get accounts", "db.patch", "db.patch", "db.insert transfers"]);
    assert_eq!(transfer("accounts:transfer", 71).error().code, "InsufficientFunds");
    assert_eq!(transfer("accounts:transfer", 0).error().code, "InvalidAmount");
    let moved = transfer("accounts:move", 20);
    assert_eq!(moved.value(), Value::Int64(50));
    assert_eq!(moved.calls, vec!["db.get accounts", "db.get accounts", "db.patch", "db.patch"]);
    assert_eq!(transfer("accounts:move", 51).error().code, "InsufficientFunds");
    let balances: Vec<Value> = h.db.lock().unwrap().all("accounts").iter().map(|d| d["balance"].clone()).collect();
    assert_eq!(balances, vec![Value::Int64(50), Value::Int64(150)]);
    assert_eq!(h.db.lock().unwrap().all("transfers").len(), 1);
}

#[test]
fn the_rust_guest_passes_the_same_harness() {
    let h = rust_harness();
    assert_eq!(h.call(Query, "counter:get", &args("{}")).value(), Value::Int64(0));
    let inc = h.call(Mutation, "counter:increment", &args("{}"));
    assert_eq!(inc.value(), Value::Int64(1));
    assert_eq!(inc.calls, vec!["db.query counters", "db.next", "db.insert counters"]);
    assert_eq!(inc.logs, vec![("LOG".to_owned(), "counter default is now 1".to_owned())]);
    assert_eq!(h.call(Mutation, "counter:increment", &args("{}")).value(), Value::Int64(2));
    assert_eq!(h.call(Query, "counter:get", &args("{}")).value(), Value::Int64(2));
    assert_eq!(h.call(Query, "counter:get", &args(r#"{"name": "other"}"#)).value(), Value::Int64(0));
    assert_eq!(h.call(Query, "counter:nope", &args("{}")).error().code, "FunctionNotFound");
    assert_eq!(h.call(Mutation, "counter:get", &args("{}")).error().code, "WrongFunctionKind");
    assert_eq!(h.call(Query, "counter:get", &args(r#"{"name": 5}"#)).error().code, "InvalidArgs");
    assert_eq!(h.call(Query, "counter:increment", &args("{}")).error().code, "WrongFunctionKind");
    let a = h.call(Query, "counter:get", &args("{}"));
    let b = h.call(Query, "counter:get", &args("{}"));
    assert_eq!(a.result.unwrap(), b.result.unwrap());
    let docs = h.db.lock().unwrap().all("counters");
    assert_eq!(docs.len(), 1);
    let _: &Object = &docs[0];
}

/// The snapshot keeps no function's source text (each call copies the snapshot's heap back),
/// while errors still point at the bundle's lines.
#[test]
fn the_snapshot_holds_no_function_source_but_stacks_keep_line_numbers() {
    let bank = &built("bank").component;
    let has = |needle: &str| bank.windows(needle.len()).any(|w| w == needle.as_bytes());
    // Code, not a string constant: only a function's source text contains it.
    assert!(!has("source.balance < amount"), "the transfer handler's source text is in the component");
    assert!(has("INSUFFICIENT_FUNDS"), "the bundle's constants are");
    let e = harness("fixtures/probe").call(Query, "probe:boom", &args("{}")).error().clone();
    let line = e.message.split("app.js:").nth(1).and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next());
    assert!(line.is_some_and(|l| l.parse::<u32>().is_ok_and(|n| n > 0)), "a line number: {}", e.message);
}

#[test]
fn bundling_errors_name_the_file_and_line() {
    let err = build_app(&repo().join("guest-sdk/tests/fixtures/broken"), &BuildOptions::default()).unwrap_err();
    assert_eq!(err.code(), "BundleFailed");
    assert!(err.to_string().contains("convex/broken.ts:3:"), "{err}");
    let err = build_app(&repo().join("guest-sdk/tests"), &BuildOptions::default()).unwrap_err();
    assert_eq!(err.code(), "NotAnApp");
}

/// The fuel of an empty query, of the bank's transfer (two reads, two patches, an insert), of
/// its move (two reads, two patches), of a read by id and of an indexed point query
/// (`withIndex(...).first()`) are regression baselines: a change of more than 5% to the
/// runtime's per-call or per-access cost fails here. `KILN_UPDATE_BASELINES=1` records new
/// baselines.
#[test]
fn fuel_of_an_empty_query_and_a_transfer_matches_the_baseline() {
    let (probe, bank) = (metered_harness("fixtures/probe"), metered_harness("bank"));
    let empty = probe.fuel_of(Query, "probe:empty", &args("{}"));
    assert_eq!(empty, probe.fuel_of(Query, "probe:empty", &args("{}")), "fuel is deterministic");
    let open = |owner: &str| match bank
        .call(Mutation, "accounts:open", &args(&format!(r#"{{"owner": "{owner}", "balance": {}}}"#, int(100))))
        .value()
    {
        Value::String(id) => id,
        other => panic!("open returned {other:?}"),
    };
    let (a, b) = (open("ann"), open("bob"));
    let transfer = args(&format!(r#"{{"from": "{a}", "to": "{b}", "amount": {}}}"#, int(1)));
    let recorded = bank.fuel_of(Mutation, "accounts:transfer", &transfer);
    let moved = bank.fuel_of(Mutation, "accounts:move", &transfer);
    let got = bank.fuel_of(Query, "accounts:get", &args(&format!(r#"{{"id": "{a}"}}"#)));
    let of_owner = bank.fuel_of(Query, "accounts:ofOwner", &args(r#"{"owner": "bob"}"#));
    let measured = serde_json::json!({
        "probe:empty": empty, "bank:transfer": recorded, "bank:move": moved, "bank:get": got, "bank:ofOwner": of_owner,
    });
    let path = repo().join("guest-sdk/tests/fuel-baseline.json");
    if std::env::var_os("KILN_UPDATE_BASELINES").is_some() {
        std::fs::write(&path, format!("{measured}\n")).unwrap();
        return;
    }
    let baseline: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (name, fuel) in measured.as_object().unwrap() {
        let (fuel, expected) = (fuel.as_u64().unwrap(), baseline[name].as_u64().unwrap());
        let drift = (fuel as f64 - expected as f64) / expected as f64;
        assert!(
            drift.abs() <= 0.05,
            "{name} consumed {fuel} fuel, {:+.1}% from the baseline {expected}",
            drift * 100.0
        );
    }
}

/// A call with `touch-heap` writes the heap's pages before running (a loop over them, so it
/// costs fuel) and returns the same result; without the flag the loop does not run.
#[test]
fn a_call_asked_to_touch_its_heap_does_so_and_returns_the_same_result() {
    let probe = metered_harness("fixtures/probe");
    let plain = probe.fuel_of_touching(Query, "probe:empty", &args("{}"), false);
    let touched = probe.fuel_of_touching(Query, "probe:empty", &args("{}"), true);
    // At least one page's worth of loop per page of a heap of 100+ pages.
    assert!(touched > plain + 100, "touching cost {} fuel", touched as i64 - plain as i64);
    let result = |touch| probe.call_with(Query, "probe:empty", &to_msgpack(&args("{}")), |h| h.touch_heap = touch);
    let (touching, not) = (result(true).result, result(false).result);
    assert!(touching.is_ok(), "probe:empty failed");
    assert_eq!(touching.ok(), not.ok());
}

#[test]
fn a_second_load_of_a_component_does_not_compile_again() {
    let bytes = &built("bank").component;
    let dir = tempfile::tempdir().unwrap();
    load_component(engine(), bytes, Some(dir.path())).unwrap();
    let before = kiln_guest_sdk::component::cranelift_compiles();
    load_component(engine(), bytes, Some(dir.path())).unwrap();
    assert_eq!(kiln_guest_sdk::component::cranelift_compiles(), before, "the cached .cwasm was used");
}

#[test]
fn codegen_makes_the_examples_type_check() {
    for app in ["chat", "bank"] {
        let dir = repo().join("examples").join(app);
        kiln_guest_sdk::codegen::codegen(&dir).unwrap();
        let tsc = dir.join("node_modules/.bin/tsc");
        let out = std::process::Command::new(&tsc).arg("-p").arg(&dir).output().unwrap();
        assert!(
            out.status.success(),
            "tsc failed on {app}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What a call produced, for comparing builds: the result's bytes, or the error's code and the
/// first line of its message (stack traces name lines of the bundle, which differ).
fn outcome_text(out: &host::Outcome) -> String {
    match &out.result {
        Ok(bytes) => format!("ok {:?}", from_msgpack(bytes).unwrap()),
        Err(e) => format!(
            "err {} {} {:?}",
            e.code,
            e.message.lines().next().unwrap_or_default(),
            e.data.as_deref().map(|d| from_msgpack(d).unwrap())
        ),
    }
}

/// The reviewed digests are those of the `convex` package the lockfiles install: a change of
/// the package (or of esbuild's output of it) fails here until its functions are reviewed and
/// `fast_paths::VERIFIED` says so. The failure prints the new digests.
#[test]
fn the_installed_convex_package_is_the_verified_one() {
    let _lock = build_lock();
    let plain = kiln_guest_sdk::bundle::bundle(&app_dir("fixtures/values"), false, None).unwrap();
    let version = kiln_guest_sdk::fast_paths::convex_version(&plain.source).unwrap().to_owned();
    let found = kiln_guest_sdk::fast_paths::digests(&plain.source);
    let expected = kiln_guest_sdk::fast_paths::VERIFIED.iter().find(|(v, _)| *v == version).map(|(_, d)| *d);
    let listed: Vec<(&str, &str)> = found.iter().map(|(f, d)| (*f, d.as_str())).collect();
    assert_eq!(expected, Some(listed.as_slice()), "convex {version}: digests of the bundled functions {found:#?}");
    assert_eq!(kiln_guest_sdk::fast_paths::check(&plain.source), Ok(()));

    // Every app of the repository locks that version.
    for dir in ["guest-sdk", "examples/chat", "examples/bank", "host/server/tests/node"] {
        let lock: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(repo().join(dir).join("package-lock.json")).unwrap())
                .unwrap();
        let locked = lock["packages"]["node_modules/convex"]["version"].as_str().unwrap_or("none");
        assert!(
            kiln_guest_sdk::fast_paths::VERIFIED.iter().any(|(v, _)| *v == locked),
            "{dir}/package-lock.json locks convex {locked}, which fast_paths::VERIFIED does not list"
        );
    }
}

#[test]
fn a_convex_package_that_differs_from_the_reviewed_one_builds_without_fast_paths_and_says_so() {
    let files = [(
        "messages.ts",
        "import { query } from \"./_generated/server\";\nexport const list = query({ args: {}, handler: async () => [] });\n",
    )];
    let app = temp_app(&files);
    // The app's own copy of the package, with one reviewed function changed.
    std::fs::remove_file(app.path().join("node_modules")).unwrap();
    let modules = app.path().join("node_modules");
    std::fs::create_dir_all(&modules).unwrap();
    let sdk_modules = repo().join("guest-sdk/node_modules");
    for entry in std::fs::read_dir(&sdk_modules).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "convex" {
            std::os::unix::fs::symlink(entry.path(), modules.join(entry.file_name())).unwrap();
        }
    }
    copy_dir(&sdk_modules.join("convex"), &modules.join("convex"));
    let impl_file = modules.join("convex/dist/esm/server/impl/registration_impl.js");
    let text = std::fs::read_to_string(&impl_file).unwrap();
    let changed = text.replacen("Return value is a Query.", "Return value is a query!", 1);
    assert_ne!(text, changed, "validateReturnValue still has its message");
    std::fs::write(&impl_file, changed).unwrap();
    let out = build_app(app.path(), &BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() }).unwrap();
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].contains("`validateReturnValue` differs from the reviewed one"), "{}", out.warnings[0]);
    assert!(out.warnings[0].contains("fuel"), "the warning says what it costs: {}", out.warnings[0]);
    let bundle = std::fs::read_to_string(app.path().join(".kiln/bundle.js")).unwrap();
    assert!(!bundle.contains("__kiln_fast.syscall"), "no edit was applied");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_fast_paths_reach_every_function_of_the_convex_package_they_name() {
    let _lock = build_lock();
    let bundle = kiln_guest_sdk::bundle::bundle(&app_dir("fixtures/values"), true, None).unwrap();
    assert_eq!(bundle.source.matches("globalThis.__kiln_fast.syscall(op, arg)").count(), 2);
    // The memoized database objects get the native `get`, `insert` and `patch`.
    assert!(bundle.source.contains("globalThis.__kiln_fast.reader(setupReader())"));
    assert!(bundle.source.contains("globalThis.__kiln_fast.writer(setupWriter())"));
    let plain = kiln_guest_sdk::bundle::bundle(&app_dir("fixtures/values"), false, None).unwrap();
    assert_eq!(bundle.fast_paths_off, None);
    let (_, installed) = kiln_guest_sdk::fast_paths::install(&plain.source).unwrap();
    let mut installed = installed;
    installed.sort();
    assert_eq!(
        installed,
        vec![
            "QueryImpl.collect",
            "QueryImpl.first",
            "QueryImpl.take",
            "QueryImpl.unique",
            "convexToJson",
            "internalMutationGeneric",
            "internalQueryGeneric",
            "invokeMutation",
            "invokeQuery",
            "jsonToConvex",
            "mutationGeneric",
            "patchValueToJson",
            "performAsyncSyscall",
            "performSyscall",
            "queryGeneric",
            "setupAuth",
            "setupMutationAuth",
            "setupMutationMeta",
            "setupMutationScheduler",
            "setupQueryMeta",
            "setupReader",
            "setupStorageReader",
            "setupStorageWriter",
            "setupWriter",
        ]
    );
}

#[test]
fn the_fast_paths_change_no_result_and_no_error() {
    let (fast, plain) = (harness("fixtures/values"), harness_with("fixtures/values", true));
    let compare = |kind, path: &str, a: &Value| {
        let (f, p) = (fast.call(kind, path, a), plain.call(kind, path, a));
        assert_eq!(outcome_text(&f), outcome_text(&p), "{path} {a:?}");
        outcome_text(&f)
    };
    let Value::Float64(n) = fast.call(Query, "values:edgeCount", &args("{}")).value() else { panic!() };
    let mut errors = 0;
    for i in 0..n as i64 {
        let a = args(&format!(r#"{{"i": {i}}}"#));
        for (kind, path) in [(Query, "values:edge"), (Query, "values:edgeJson"), (Mutation, "values:edgePatch")] {
            errors += usize::from(compare(kind, path, &a).starts_with("err"));
        }
    }
    assert!(errors > 20, "the edges include values the package refuses ({errors} errors)");
    for text in [
        r#"{"$integer": "AQAAAAAAAAA="}"#,
        r#"{"$integer": "AQAAAAAAAA=="}"#,
        r#"{"$integer": "AQAAAAAAAAA"}"#,
        r#"{"$integer": 5}"#,
        r#"{"$bytes": "-_8="}"#,
        r#"{"$bytes": "AB=="}"#,
        r#"{"$bytes": "AB=C"}"#,
        r#"{"$float": "AAAAAAAA+H8="}"#,
        r#"{"$float": "AAAAAAAA8D8="}"#,
        r#"{"$commitTs": null}"#,
        r#"{"$set": []}"#,
        r#"{"$integer": "AQAAAAAAAAA=", "b": 1}"#,
        r#"{"__proto__": {"a": 1}, "b": [1, {"c": null}]}"#,
        r#"{"b": 1, "a": 2, "10": 3, "9": 4}"#,
        r#"[1, 2.5, "x", true, null, {"$bytes": ""}]"#,
        r#"{"café": 1}"#,
        r#"{"\ud800": 1}"#,
        r#"{"a": "\udfff", "$bytes": "AA=="}"#,
    ] {
        compare(Query, "values:decode", &Value::Object(Object::from([("text".into(), Value::from(text))])));
    }
    let Value::Float64(n) = fast.call(Query, "values:dbCaseCount", &args("{}")).value() else { panic!() };
    let mut db_errors = 0;
    for i in 0..n as i64 {
        let a = args(&format!(r#"{{"i": {i}}}"#));
        let (f, p) = (fast.call(Mutation, "values:dbCase", &a), plain.call(Mutation, "values:dbCase", &a));
        assert_eq!(outcome_text(&f), outcome_text(&p), "db case {i}");
        assert_eq!(f.calls, p.calls, "db case {i}: the same host calls");
        db_errors += usize::from(outcome_text(&f).contains("error"));
    }
    assert!(db_errors > 20, "the db cases include calls the package or the host refuse ({db_errors} errors)");
    let Value::Float64(n) = fast.call(Query, "values:outcomeCount", &args("{}")).value() else { panic!() };
    let mut outcomes = std::collections::BTreeSet::new();
    for i in 0..n as i64 {
        let a = args(&format!(r#"{{"i": {i}}}"#));
        for (kind, path) in [(Query, "values:outcome"), (Mutation, "values:outcomeMutation")] {
            outcomes.insert(compare(kind, path, &a).chars().take(3).collect::<String>());
        }
    }
    assert_eq!(outcomes.len(), 2, "handlers' outcomes include results and errors: {outcomes:?}");
    // Contexts are built once while the app loads: a call that changes its context leaves
    // nothing for the next, public or internal.
    for (kind, path) in [
        (Query, "values:markQuery"),
        (Mutation, "values:markMutation"),
        (Query, "values:markInternalQuery"),
        (Mutation, "values:markInternalMutation"),
    ] {
        for _ in 0..2 {
            let text = compare(kind, path, &args("{}"));
            assert!(text.starts_with("ok") && text.contains(r#""found": Array([])"#), "{path}: {text}");
        }
    }
    for id in ["nope", "", "0000000000000000000000000000000"] {
        compare(Query, "values:badGet", &Value::Object(Object::from([("id".into(), Value::from(id))])));
    }

    // Arguments nested around the decoders' depth limit (the runtime builds shallower ones
    // itself and leaves deeper ones to the package).
    for depth in [60, 62, 63, 64, 65] {
        let mut nested = Value::Int64(7);
        for _ in 0..depth {
            nested = Value::Object(Object::from([("d".into(), nested)]));
        }
        compare(Mutation, "values:roundTrip", &Value::Object(Object::from([("v".into(), nested)])));
    }

    // Generated values through arguments, documents, reads, patches and results.
    let field = proptest::prop_oneof!["[a-zA-Z_][ -~]{0,5}", "[0-9]{1,3}", Just("__proto__".to_owned())];
    let scalar = proptest::prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Int64),
        proptest::prop_oneof![any::<f64>(), Just(-0.0), Just(f64::NAN), Just(f64::INFINITY)].prop_map(Value::Float64),
        any::<bool>().prop_map(Value::Boolean),
        ".{0,6}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..7).prop_map(Value::Bytes),
    ];
    let value = scalar.prop_recursive(4, 24, 4, move |inner| {
        proptest::prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(field.clone(), inner, 0..4).prop_map(Value::Object),
        ]
    });
    let mut runner =
        proptest::test_runner::TestRunner::new(proptest::test_runner::Config { cases: 150, ..Default::default() });
    runner
        .run(&value, |v| {
            let a = Value::Object(Object::from([("v".into(), v)]));
            let (f, p) = (fast.call(Mutation, "values:roundTrip", &a), plain.call(Mutation, "values:roundTrip", &a));
            proptest::prop_assert_eq!(outcome_text(&f), outcome_text(&p));
            Ok(())
        })
        .unwrap();
}
