//! The guest toolchain benchmark: build time and size per example, cranelift compile time and
//! `.cwasm` size, instantiate + call latency (pooling allocator, fresh instance per call), and
//! the fuel of an empty query.
//!
//! `cargo bench -p kiln-guest-sdk --bench guest` (`-- --quick` for fewer calls).

// A benchmark aborts on the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../tests/guest/host.rs"]
#[allow(dead_code)]
mod host;

use std::path::Path;
use std::time::{Duration, Instant};

use host::Host;
use kiln_guest_sdk::bindings::exports::kiln::platform::guest::Call;
use kiln_guest_sdk::bindings::kiln::platform::types::FunctionKind;
use kiln_guest_sdk::bindings::{App, AppPre};
use kiln_guest_sdk::{BuildOptions, build_app};
use kiln_value::{Object, Value, to_msgpack};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

fn report(name: &str, value: String) {
    println!("{name:<62} {value}");
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn pooling_engine(fuel: bool, keep_resident: bool) -> Engine {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(64).total_core_instances(64).total_memories(64).total_tables(64);
    pool.max_memory_size(64 << 20);
    if keep_resident {
        // Reset only the pages a call dirtied (PAGEMAP_SCAN), keeping them mapped: the next
        // instance in the slot takes no page faults on them.
        pool.linear_memory_keep_resident(16 << 20).pagemap_scan(wasmtime::Enabled::Auto);
    }
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool)).memory_init_cow(true).consume_fuel(fuel);
    Engine::new(&config).unwrap()
}

/// Latencies of `calls` instantiate-and-call rounds, each with a fresh instance.
fn call_latencies(
    engine: &Engine,
    component: &Component,
    path: &str,
    kind: FunctionKind,
    calls: usize,
) -> Vec<Duration> {
    let mut linker: Linker<Host> = Linker::new(engine);
    App::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h).unwrap();
    let pre = AppPre::new(linker.instantiate_pre(component).unwrap()).unwrap();
    let args = to_msgpack(&Value::Object(Object::new()));
    let call = Call { kind, path: path.to_owned(), args, request_id: String::new(), http: None, touch_heap: false };
    let mut lat = Vec::with_capacity(calls);
    for i in 0..calls + 50 {
        let t = Instant::now();
        let mut store = Store::new(engine, Host::for_call(kind, 1, 1.0e12));
        let app = pre.instantiate(&mut store).unwrap();
        let result = app.kiln_platform_guest().call_invoke(&mut store, &call).unwrap();
        // Dropping the store returns the slot (and resets its memory): part of every call's cost.
        drop(store);
        let elapsed = t.elapsed();
        result.unwrap_or_else(|e| panic!("{path}: {}", e.message));
        if i >= 50 {
            lat.push(elapsed);
        }
    }
    lat.sort();
    lat
}

/// Splits the cost of one empty query into instantiation and the call.
fn breakdown(engine: &Engine, component: &Component) {
    let mut linker: Linker<Host> = Linker::new(engine);
    App::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h).unwrap();
    let pre = AppPre::new(linker.instantiate_pre(component).unwrap()).unwrap();
    let call = Call {
        kind: FunctionKind::Query,
        path: "probe:empty".into(),
        args: to_msgpack(&Value::Object(Object::new())),
        request_id: String::new(),
        http: None,
        touch_heap: false,
    };
    let (mut inst, mut inv, mut again) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2000 {
        let t = Instant::now();
        let mut store = Store::new(engine, Host::for_call(FunctionKind::Query, 1, 1.0e12));
        let app = pre.instantiate(&mut store).unwrap();
        let t2 = Instant::now();
        app.kiln_platform_guest().call_invoke(&mut store, &call).unwrap().unwrap();
        inv.push(t2.elapsed());
        inst.push(t2 - t);
        let t3 = Instant::now();
        app.kiln_platform_guest().call_invoke(&mut store, &call).unwrap().unwrap();
        again.push(t3.elapsed());
    }
    inst.sort();
    inv.sort();
    again.sort();
    report(
        "  breakdown: instantiate / first invoke / second invoke (p50)",
        format!("{:.1} us / {:.1} us / {:.1} us", pct(&inst, 0.5), pct(&inv, 0.5), pct(&again, 0.5)),
    );
}

/// Fuel per iteration of small operations, from probe functions that repeat them `n` times:
/// where the guest's time goes.
fn fuel_breakdown(h: &host::Harness) {
    let args = |json: &str| kiln_value::parse_convex_json(json).unwrap();
    h.fuel_of(FunctionKind::Mutation, "probe:addThing", &args("{}"));
    let things = h.db.lock().unwrap().all("things");
    let Value::String(id) = things[0]["_id"].clone() else { panic!("no thing") };
    let per = |f: &str| {
        let at = |n: u32| {
            h.fuel_of(FunctionKind::Query, &format!("probe:{f}"), &args(&format!(r#"{{"id": "{id}", "n": {n}}}"#)))
        };
        (at(100) - at(0)) / 100
    };
    for (f, what) in [
        ("plainLoop", "one `sum += i` loop iteration"),
        ("awaits", "one await of a resolved promise"),
        ("rawReads", "Convex.syscall(\"1.0/get\") alone (guest Rust + host)"),
        ("asyncReads", "Convex.asyncSyscall(\"1.0/get\") alone"),
        ("parseOnly", "JSON.parse of a document"),
        ("convertOnly", "convex's jsonToConvex of a parsed document"),
        ("readMany", "ctx.db.get through the convex package"),
    ] {
        report(&format!("  fuel per {what}"), format!("{}", per(f)));
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let calls = if quick { 1000 } else { 5000 };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    println!("kiln guest toolchain benchmark ({calls} calls per latency figure)");

    let mut built = Vec::new();
    for app in ["examples/chat", "examples/bank", "guest-sdk/tests/fixtures/probe"] {
        let t = Instant::now();
        let out = build_app(&repo.join(app), &BuildOptions::default()).unwrap();
        report(
            &format!("kiln build {app}"),
            format!("{:.2} s, component {} KiB", t.elapsed().as_secs_f64(), out.component.len() / 1024),
        );
        built.push(out);
    }

    let engine = pooling_engine(false, true);
    let plain = pooling_engine(false, false);
    let t = Instant::now();
    let chat = Component::new(&engine, &built[0].component).unwrap();
    let compile = t.elapsed();
    let cwasm = chat.serialize().unwrap();
    let t = Instant::now();
    // SAFETY: produced by `serialize` just above with the same engine.
    let _ = unsafe { Component::deserialize(&engine, &cwasm) }.unwrap();
    report(
        "cranelift compile of the chat component / .cwasm size / deserialize",
        format!(
            "{:.2} s / {} KiB / {:.1} ms",
            compile.as_secs_f64(),
            cwasm.len() / 1024,
            t.elapsed().as_secs_f64() * 1e3
        ),
    );

    let probe = Component::new(&engine, &built[2].component).unwrap();
    let lat = call_latencies(&engine, &probe, "probe:empty", FunctionKind::Query, calls);
    report(
        "instantiate + call + drop, empty JS query: p50 / p99 (target p50 <= 50 us)",
        format!("{:.1} us / {:.1} us", pct(&lat, 0.5), pct(&lat, 0.99)),
    );
    let plain_probe = Component::new(&plain, &built[2].component).unwrap();
    let lat = call_latencies(&plain, &plain_probe, "probe:empty", FunctionKind::Query, calls);
    report(
        "  same, pages reset by madvise instead of kept resident",
        format!("{:.1} us / {:.1} us", pct(&lat, 0.5), pct(&lat, 0.99)),
    );
    if std::env::var_os("KILN_BENCH_BREAKDOWN").is_some() {
        breakdown(&engine, &probe);
    }
    let lat = call_latencies(&engine, &chat, "messages:list", FunctionKind::Query, calls);
    report(
        "instantiate + call chat messages:list (empty table): p50 / p99",
        format!("{:.1} us / {:.1} us", pct(&lat, 0.5), pct(&lat, 0.99)),
    );

    let rust_bytes = kiln_guest_sdk::rust_guest_component().unwrap();
    let rust = Component::new(&engine, &rust_bytes).unwrap();
    let lat = call_latencies(&engine, &rust, "counter:get", FunctionKind::Query, calls);
    report(
        &format!("instantiate + call Rust guest counter:get ({} KiB): p50 / p99", rust_bytes.len() / 1024),
        format!("{:.1} us / {:.1} us", pct(&lat, 0.5), pct(&lat, 0.99)),
    );

    let metered = pooling_engine(true, true);
    let probe = Component::new(&metered, &built[2].component).unwrap();
    let h = host::Harness::new(&metered, probe);
    let fuel = h.fuel_of(FunctionKind::Query, "probe:empty", &Value::Object(Object::new()));
    report("fuel of an empty JS query (baseline in tests/fuel-baseline.json)", format!("{fuel}"));
    fuel_breakdown(&h);
}
