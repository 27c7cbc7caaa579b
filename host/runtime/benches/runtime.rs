//! The runtime benchmark: trivial-query latency and throughput in process, durable transfer
//! mutations with 64 concurrent callers, the cost of fuel metering, resident memory per idle
//! deployment, and cold start of a deployment from its cached `.cwasm`.
//!
//! The transfer of the target is the issue's "two reads, two patches": the bank's
//! `accounts:move`. The bank's `accounts:transfer` also records each transfer (an insert into
//! a second table) and is reported beside it.
//!
//! It also measures fairness between deployments (`--fairness` runs only that part), with
//! `--heap-touch` only compares the heap touch's decision with never and always touching, and
//! with `--components` only measures components: a mutation calling a component's against the
//! same work in the app (fuel, latency), and building and deploying an app with two npm
//! components.
//!
//! `cargo bench -p kiln-runtime --bench runtime` (`-- --quick` for a shorter run;
//! `--profile-transfers`, `--profile-rust-transfers` or `--profile-queries` for one long phase
//! to attach a profiler to, with `--logged` for `accounts:transfer` instead of `accounts:move`).

// A benchmark aborts on the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The allocator the `kiln` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use kiln_runtime::{CallRequest, DeploymentConfig, FunctionKind, Limits, Runtime, RuntimeConfig};
use kiln_store::StoreConfig;
use kiln_value::{Object, Value, parse_convex_json};

fn report(name: &str, value: String) {
    println!("{name:<66} {value}");
}

/// A KiB figure of `/proc/self/status` (`VmRSS:`, `RssAnon:`, ...).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Minor page faults of the process so far (field 10 of `/proc/self/stat`).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    fields.split_whitespace().nth(7).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// CPU time the process has used so far, user and system (fields 14 and 15 of
/// `/proc/self/stat`, in clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let ticks: u64 = fields.split_whitespace().skip(11).take(2).filter_map(|v| v.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

/// A number from the environment (the benchmark's own knobs, for profiling runs).
fn env_knob(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

fn runtime(dir: &Path, cache: &Path, meter_fuel: bool) -> Runtime {
    runtime_with(dir, cache, meter_fuel, |_| {})
}

fn runtime_with(dir: &Path, cache: &Path, meter_fuel: bool, adjust: impl FnOnce(&mut RuntimeConfig)) -> Runtime {
    let defaults = RuntimeConfig::default();
    let mut config = RuntimeConfig {
        data_dir: dir.to_path_buf(),
        cache_dir: Some(cache.to_path_buf()),
        meter_fuel,
        // `KILN_PERF_MAP=1` names guest functions for `perf`; the others are for experiments.
        perf_map: env_knob("KILN_PERF_MAP").is_some_and(|n| n != 0),
        worker_threads: env_knob("KILN_WORKER_THREADS").map_or(defaults.worker_threads, |n| n as usize),
        active_wait: env_knob("KILN_ACTIVE_WAIT_US").map_or(defaults.active_wait, Duration::from_micros),
        heap_touch_faults: env_knob("KILN_HEAP_TOUCH_FAULTS").unwrap_or(defaults.heap_touch_faults),
        store: StoreConfig { prune_interval: Duration::ZERO, ..StoreConfig::default() },
        ..defaults
    };
    adjust(&mut config);
    let sqlite = kiln_sqlite::SqliteOptions {
        commit_log: env_knob("KILN_SQLITE_COMMIT_LOG").is_none_or(|n| n != 0),
        ..kiln_sqlite::SqliteOptions::default()
    };
    Runtime::new(config, Arc::new(kiln_sqlite::SqliteFactory { data_dir: dir.to_path_buf(), options: sqlite })).unwrap()
}

fn config(concurrency: usize) -> DeploymentConfig {
    DeploymentConfig {
        limits: Limits { max_concurrency: concurrency, mutation_retries: 1000, ..Limits::default() },
        ..Default::default()
    }
}

fn empty() -> Value {
    Value::Object(Object::new())
}

/// Sequential latency and concurrent throughput of a trivial query.
async fn trivial_queries(rt: &Arc<Runtime>, seconds: f64) -> (Vec<Duration>, f64, u64, f64) {
    queries(rt, "probe", "probe:empty", seconds).await
}

/// Sequential latency, concurrent throughput and minor page faults per call of calls of query
/// `path` without arguments.
async fn queries(rt: &Arc<Runtime>, deployment: &str, path: &str, seconds: f64) -> (Vec<Duration>, f64, u64, f64) {
    let mut lat = Vec::new();
    let mut fuel = 0;
    for i in 0..3000 {
        let t = Instant::now();
        let out = rt.call(deployment, CallRequest::new(FunctionKind::Query, path, empty())).await;
        if i >= 200 {
            lat.push(t.elapsed());
        }
        fuel = out.fuel;
        out.result.unwrap();
    }
    lat.sort();
    let (qps, faults) = query_round(rt, deployment, path, seconds).await;
    (lat, qps, fuel, faults)
}

/// Calls of query `path` from 16 concurrent callers for `seconds`; returns calls/s and minor
/// page faults per call.
async fn query_round(rt: &Arc<Runtime>, deployment: &str, path: &str, seconds: f64) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (started, faults) = (Instant::now(), minor_faults());
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (rt, stop, count) = (rt.clone(), stop.clone(), count.clone());
            let (deployment, path) = (deployment.to_owned(), path.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    rt.call(&deployment, CallRequest::new(FunctionKind::Query, &path, empty())).await.result.unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = count.load(Ordering::Relaxed) as f64;
    (n / started.elapsed().as_secs_f64(), (minor_faults() - faults) as f64 / n.max(1.0))
}

/// The heap touch's decision (touch while calls fault) against never and always touching, in
/// alternating rounds: trivial queries and bank moves (the examples' workloads), and the
/// hostile app's `scatter` query (writes 120 scattered pages).
async fn heap_touch(dir: &Path, cache: &Path, [probe, bank, hostile]: [&Vec<u8>; 3], seconds: f64, quick: bool) {
    let modes = [("decision", 8), ("never", u64::MAX), ("always", 0)];
    let mut runtimes = Vec::new();
    for (name, faults) in modes {
        let rt = Arc::new(runtime_with(&dir.join(name), cache, true, |c| c.heap_touch_faults = faults));
        for (dep, component, concurrency) in [("probe", probe, 16), ("bank", bank, 64), ("hostile", hostile, 16)] {
            rt.open_deployment(dep, config(concurrency)).await.unwrap();
            rt.deploy(dep, component).await.unwrap();
        }
        let accounts = open_accounts(&rt, "bank").await;
        runtimes.push((name, rt, accounts));
    }
    let rounds = if quick { 3 } else { 6 };
    let round = seconds / 5.0;
    let mut sums = vec![[0.0f64; 7]; modes.len()];
    for r in 0..rounds {
        for k in 0..modes.len() {
            let i = (k + r) % modes.len();
            let (_, rt, accounts) = &runtimes[i];
            let (qps, qfaults) = query_round(rt, "probe", "probe:empty", round).await;
            let moves = transfer_round(rt, "bank", MOVE, accounts, round).await;
            let (sps, sfaults) = query_round(rt, "hostile", "hostile:scatter", round).await;
            for (slot, v) in
                [qps, qfaults, moves.per_s, moves.faults, moves.cpu_us, sps, sfaults].into_iter().enumerate()
            {
                sums[i][slot] += v / rounds as f64;
            }
        }
    }
    for (i, (name, rt, _)) in runtimes.iter().enumerate() {
        let s = sums[i];
        report(
            &format!("heap touch {name}: trivial q/s (faults), moves/s (faults, us CPU), scatter q/s (faults)"),
            format!("{:.0} ({:.2}), {:.0} ({:.2}, {:.0}), {:.0} ({:.1})", s[0], s[1], s[2], s[3], s[4], s[5], s[6]),
        );
        rt.shutdown().await;
    }
}

/// The mutation of the target: two reads, two patches.
const MOVE: &str = "accounts:move";
/// The bank's transfer that also records itself: two reads, two patches, one insert.
const TRANSFER: &str = "accounts:transfer";

/// What a round of transfers measured.
struct TransferRound {
    /// Transfers committed per second.
    per_s: f64,
    /// Retries (OCC conflicts), minor page faults and CPU time (µs) per transfer.
    retries: f64,
    faults: f64,
    cpu_us: f64,
    /// A transfer's latency (ms) at the callers: median and 99th percentile.
    p50_ms: f64,
    p99_ms: f64,
}

/// Transfers (mutation `path`) between random accounts from 64 concurrent callers.
async fn transfers(rt: &Arc<Runtime>, deployment: &str, path: &str, seconds: f64) -> TransferRound {
    let ids = open_accounts(rt, deployment).await;
    transfer_round(rt, deployment, path, &ids, seconds).await
}

/// Opens the 1000 accounts the transfers move money between.
async fn open_accounts(rt: &Arc<Runtime>, deployment: &str) -> Arc<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..1000 {
        let a =
            parse_convex_json(&format!(r#"{{"owner": "o{i}", "balance": {{"$integer": "AADKmjsAAAA="}}}}"#)).unwrap();
        let out = rt.call(deployment, CallRequest::new(FunctionKind::Mutation, "accounts:open", a)).await;
        let Ok(Value::String(id)) = out.result else { panic!("open failed: {:?}", out.result) };
        ids.push(id);
    }
    Arc::new(ids)
}

/// One round of [`transfers`] between the accounts `ids`.
async fn transfer_round(
    rt: &Arc<Runtime>,
    deployment: &str,
    path: &str,
    ids: &Arc<Vec<String>>,
    seconds: f64,
) -> TransferRound {
    let stop = Arc::new(AtomicBool::new(false));
    let (count, retries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (started, faults, cpu) = (Instant::now(), minor_faults(), cpu_time());
    let tasks: Vec<_> = (0..64u64)
        .map(|w| {
            let (rt, ids, stop, count, retries) =
                (rt.clone(), ids.clone(), stop.clone(), count.clone(), retries.clone());
            let (deployment, path) = (deployment.to_owned(), path.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut x = (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let (a, b) = ((x % 1000) as usize, ((x >> 20) % 1000) as usize);
                    if a == b {
                        continue;
                    }
                    // Built directly: the callers' own work shares the machine with the host.
                    let args: Object = [
                        ("from".to_owned(), Value::from(ids[a].as_str())),
                        ("to".to_owned(), Value::from(ids[b].as_str())),
                        ("amount".to_owned(), Value::Int64(1)),
                    ]
                    .into();
                    let args = Value::Object(args);
                    let t = Instant::now();
                    let out = rt.call(&deployment, CallRequest::new(FunctionKind::Mutation, &path, args)).await;
                    out.result.unwrap();
                    latencies.push(t.elapsed());
                    count.fetch_add(1, Ordering::Relaxed);
                    retries.fetch_add(u64::from(out.retries), Ordering::Relaxed);
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let n = count.load(Ordering::Relaxed) as f64;
    let per = |x: f64| x / n.max(1.0);
    latencies.sort();
    TransferRound {
        per_s: n / started.elapsed().as_secs_f64(),
        retries: per(retries.load(Ordering::Relaxed) as f64),
        faults: per((minor_faults() - faults) as f64),
        cpu_us: per((cpu_time() - cpu).as_secs_f64() * 1e6),
        p50_ms: pct(&latencies, 0.5) / 1e3,
        p99_ms: pct(&latencies, 0.99) / 1e3,
    }
}

/// One caller's latency and fuel of transfers (mutation `path`).
async fn single_transfer_profile(rt: &Arc<Runtime>, deployment: &str, path: &str, label: &str) {
    let mut ids = Vec::new();
    for i in 0..2 {
        let a =
            parse_convex_json(&format!(r#"{{"owner": "p{i}", "balance": {{"$integer": "AADKmjsAAAA="}}}}"#)).unwrap();
        let Ok(Value::String(id)) =
            rt.call(deployment, CallRequest::new(FunctionKind::Mutation, "accounts:open", a)).await.result
        else {
            panic!()
        };
        ids.push(id);
    }
    let args = parse_convex_json(&format!(
        r#"{{"from": "{}", "to": "{}", "amount": {{"$integer": "AQAAAAAAAAA="}}}}"#,
        ids[0], ids[1]
    ))
    .unwrap();
    let mut lat = Vec::new();
    let mut fuel = 0;
    for _ in 0..500 {
        let t = Instant::now();
        let out = rt.call(deployment, CallRequest::new(FunctionKind::Mutation, path, args.clone())).await;
        lat.push(t.elapsed());
        fuel = out.fuel;
        out.result.unwrap();
    }
    lat.sort();
    report(
        &format!("{label}{path}, one caller: p50 / p99 latency, fuel"),
        format!("{:.1} us / {:.1} us, {fuel}", pct(&lat, 0.5), pct(&lat, 0.99)),
    );
}

/// Deployments the idle-memory measurement opens.
const IDLE_DEPLOYMENTS: usize = 40;
/// The flag that makes this binary measure idle deployments only (`--idle-memory DIR CACHE
/// COMPONENT`): in the benchmark's own process the allocator may hand memory of the earlier
/// phases back to the system meanwhile, which once made the figure negative.
const IDLE_MEMORY: &str = "--idle-memory";

/// Opens [`IDLE_DEPLOYMENTS`] deployments of `component` in `dir`, one call each, and prints the
/// resident memory each added in KiB.
fn idle_memory(args: &[String]) {
    let [dir, cache, component] = args else { panic!("usage: {IDLE_MEMORY} DIR CACHE COMPONENT") };
    let component = std::fs::read(component).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let runtime = runtime(Path::new(dir), Path::new(cache), true);
        // One deployment first: the runtime's own first-use allocations are not a deployment's.
        runtime.open_deployment("warm", config(4)).await.unwrap();
        runtime.deploy("warm", &component).await.unwrap();
        runtime.call("warm", CallRequest::new(FunctionKind::Query, "accounts:total", empty())).await.result.unwrap();
        let fields = ["VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"];
        let before = fields.map(status_kib);
        for i in 0..IDLE_DEPLOYMENTS {
            let name = format!("idle{i}");
            runtime.open_deployment(&name, config(4)).await.unwrap();
            runtime.deploy(&name, &component).await.unwrap();
            runtime.call(&name, CallRequest::new(FunctionKind::Query, "accounts:total", empty())).await.result.unwrap();
        }
        let per = fields.map(status_kib).map(|k| k as f64);
        let per: Vec<f64> =
            per.iter().zip(before).map(|(after, b)| (after - b as f64) / IDLE_DEPLOYMENTS as f64).collect();
        println!("{:.0} KiB (anonymous {:.0}, file {:.0}, shared {:.0})", per[0], per[1], per[2], per[3]);
        runtime.shutdown().await;
    });
}

/// A local HTTP server that answers every request after `delay` (a thread per connection).
fn slow_server(delay: Duration) -> u16 {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut stream in server.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let _ = stream.read(&mut [0u8; 4096]);
                std::thread::sleep(delay);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            });
        }
    });
    port
}

/// Deployment `b`'s point queries, one after another for `seconds`: p50 and p99 in µs.
async fn point_queries(rt: &Runtime, seconds: f64) -> (f64, f64, usize) {
    let mut lat = Vec::new();
    let started = Instant::now();
    let args = parse_convex_json(r#"{"name": "b"}"#).unwrap();
    while started.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        rt.call("b", CallRequest::new(FunctionKind::Query, "hostile:counter", args.clone())).await.result.unwrap();
        lat.push(t.elapsed());
    }
    lat.sort();
    (pct(&lat, 0.5), pct(&lat, 0.99), lat.len())
}

/// Fairness between deployments: `b`'s point queries alone, while `a` runs 50 actions waiting
/// 5 s on `fetch`, and while `a` spins in as many queries, mutations and actions as it may.
async fn fairness(dir: &Path, cache: &Path, hostile: &[u8], seconds: f64) {
    let rt = Arc::new(runtime(dir, cache, true));
    let port = slow_server(Duration::from_secs(5));
    let a = DeploymentConfig {
        limits: Limits { action_fuel: 10_000_000_000, max_concurrent_actions: 64, ..Limits::default() },
        fetch: kiln_runtime::FetchPolicy { allowed_hosts: vec![format!("127.0.0.1:{port}")], ..Default::default() },
        ..Default::default()
    };
    rt.open_deployment("a", a).await.unwrap();
    rt.deploy("a", hostile).await.unwrap();
    rt.open_deployment("b", config(4)).await.unwrap();
    rt.deploy("b", hostile).await.unwrap();
    let name = parse_convex_json(r#"{"name": "b"}"#).unwrap();
    rt.call("b", CallRequest::new(FunctionKind::Mutation, "hostile:increment", name)).await.result.unwrap();
    let alone = point_queries(&rt, seconds).await;

    let url = parse_convex_json(&format!(r#"{{"url": "http://127.0.0.1:{port}/slow"}}"#)).unwrap();
    let waiting: Vec<_> = (0..50)
        .map(|_| {
            let (rt, url) = (rt.clone(), url.clone());
            tokio::spawn(async move {
                rt.call("a", CallRequest::new(FunctionKind::Action, "hostile:fetchText", url)).await.result.unwrap()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let during_fetch = point_queries(&rt, seconds.min(4.0)).await;
    for w in waiting {
        w.await.unwrap();
    }

    let limits = Limits::default();
    let spin = |kinds: &[(FunctionKind, &'static str, usize)]| {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = kinds
            .iter()
            .flat_map(|&(kind, path, n)| std::iter::repeat_n((kind, path), n))
            .map(|(kind, path)| {
                let (rt, stop) = (rt.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let out = rt.call("a", CallRequest::new(kind, path, empty())).await;
                        assert_eq!(out.result.unwrap_err().code, "FuelExhausted");
                    }
                })
            })
            .collect();
        (stop, tasks)
    };
    let queries = (FunctionKind::Query, "hostile:spin", limits.max_concurrency);
    let mutations = (FunctionKind::Mutation, "hostile:spinMutation", limits.max_concurrency);
    let actions = (FunctionKind::Action, "hostile:spinAction", 64);
    let mut during_spin = Vec::new();
    for (what, kinds) in [
        ("queries", vec![queries]),
        ("actions", vec![actions]),
        ("queries, mutations, actions", vec![queries, mutations, actions]),
    ] {
        let (stop, tasks) = spin(&kinds);
        tokio::time::sleep(Duration::from_millis(200)).await;
        during_spin.push((format!("while a spins in {what}"), point_queries(&rt, seconds).await));
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
    }
    rt.shutdown().await;
    let measured = [("alone".to_owned(), alone), ("while a runs 50 actions waiting on fetch".to_owned(), during_fetch)];
    for (what, (p50, p99, n)) in measured.into_iter().chain(during_spin) {
        report(
            &format!("deployment b's point query {what}: p50 / p99 (target p99 <= 2x alone)"),
            format!("{p50:.1} us / {p99:.1} us ({n} queries)"),
        );
    }
}

/// A component call against the same work in the app, and an app with two npm components
/// built and deployed (its packages are installed by the node tests' `npm ci`).
async fn components(repo: &Path, dir: &Path, cache: &Path, calls: usize) {
    let fixture = kiln_guest_sdk::build_app(&repo.join("guest-sdk/tests/fixtures/components"), &Default::default())
        .unwrap()
        .component;
    let runtime = runtime(dir, cache, true);
    runtime.open_deployment("c", config(16)).await.unwrap();
    runtime.deploy("c", &fixture).await.unwrap();
    let args = parse_convex_json(r#"{"name": "bench"}"#).unwrap();
    for path in ["app:bumpVia", "app:bumpHere"] {
        // The first call inserts the counter; the measured ones find and patch it.
        runtime.call("c", CallRequest::new(FunctionKind::Mutation, path, args.clone())).await.result.unwrap();
        let (mut lat, mut fuel) = (Vec::with_capacity(calls), 0);
        let cpu = cpu_time();
        for _ in 0..calls {
            let t = Instant::now();
            let out = runtime.call("c", CallRequest::new(FunctionKind::Mutation, path, args.clone())).await;
            out.result.unwrap();
            lat.push(t.elapsed());
            fuel = out.fuel;
        }
        let cpu_us = (cpu_time() - cpu).as_secs_f64() * 1e6 / calls as f64;
        lat.sort();
        report(
            &format!(
                "{path} (find + patch a counter{}): fuel, p50 / p99, CPU",
                if path.ends_with("Via") { " in a component" } else { " in the app" }
            ),
            format!("{fuel}, {:.1} us / {:.1} us, {cpu_us:.0} us", pct(&lat, 0.5), pct(&lat, 0.99)),
        );
    }
    runtime.shutdown().await;

    let app = repo.join("host/server/tests/node/components-app");
    if !repo.join("host/server/tests/node/node_modules/@convex-dev/aggregate").is_dir() {
        return println!("(skipped the npm components app: run `npm ci` in host/server/tests/node)");
    }
    let t = Instant::now();
    let built = kiln_guest_sdk::build_app(&app, &Default::default()).unwrap();
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let runtime = runtime_with(&dir.join("npm"), &dir.join("npm-cache"), true, |_| {});
    runtime.open_deployment("npm", config(16)).await.unwrap();
    let t = Instant::now();
    runtime.deploy("npm", &built.component).await.unwrap();
    let deploy_ms = t.elapsed().as_secs_f64() * 1e3;
    report(
        "app with two npm components (rate limiter, aggregate): kiln build / deploy (cold cache)",
        format!("{build_ms:.0} ms / {deploy_ms:.0} ms ({} KiB)", built.component.len() / 1024),
    );
    runtime.shutdown().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == IDLE_MEMORY) {
        return idle_memory(&args[at + 1..]);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let profile_rust = std::env::args().any(|a| a == "--profile-rust-transfers");
    let profile = profile_rust || std::env::args().any(|a| a == "--profile-transfers");
    let profile_queries = std::env::args().any(|a| a == "--profile-queries");
    let profiled = if std::env::args().any(|a| a == "--logged") { TRANSFER } else { MOVE };
    let seconds = if quick { 2.0 } else { 5.0 };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap().to_path_buf();
    let work = tempfile::Builder::new().prefix("kiln-runtime-bench").tempdir_in(repo.join("target")).unwrap();
    let cache = work.path().join("cache");
    let build = |app: &str| kiln_guest_sdk::build_app(&repo.join(app), &Default::default()).unwrap().component;
    let (probe, bank) = (build("guest-sdk/tests/fixtures/probe"), build("examples/bank"));
    let only_fairness = std::env::args().any(|a| a == "--fairness");
    let only_heap_touch = std::env::args().any(|a| a == "--heap-touch");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        println!("kiln runtime benchmark ({seconds:.0} s per throughput phase, 2 cores)");
        if only_fairness {
            let hostile = build("guest-sdk/tests/fixtures/hostile");
            return fairness(&work.path().join("fairness"), &cache, &hostile, seconds).await;
        }
        if std::env::args().any(|a| a == "--components") {
            let calls = if quick { 200 } else { 2000 };
            return components(&repo, &work.path().join("components"), &cache, calls).await;
        }
        if only_heap_touch {
            let hostile = build("guest-sdk/tests/fixtures/hostile");
            return heap_touch(&work.path().join("touch"), &cache, [&probe, &bank, &hostile], seconds, quick).await;
        }
        if profile_queries {
            let runtime = Arc::new(runtime(&work.path().join("profile"), &cache, true));
            runtime.open_deployment("probe", config(16)).await.unwrap();
            runtime.deploy("probe", &probe).await.unwrap();
            let (lat, qps, fuel, faults) = trivial_queries(&runtime, 10.0).await;
            report(
                "trivial query (profile run): p50 / p99, queries/s, fuel, faults per call",
                format!("{:.1} us / {:.1} us, {qps:.0}, {fuel}, {faults:.2}", pct(&lat, 0.5), pct(&lat, 0.99)),
            );
            return;
        }
        if profile {
            let runtime = Arc::new(runtime(&work.path().join("profile"), &cache, true));
            runtime.open_deployment("bank", config(64)).await.unwrap();
            // The Rust guest shows what the host costs without the JavaScript runtime.
            let component = if profile_rust { kiln_guest_sdk::rust_guest_component().unwrap() } else { bank.clone() };
            runtime.deploy("bank", &component).await.unwrap();
            single_transfer_profile(&runtime, "bank", profiled, "").await;
            let r = transfers(&runtime, "bank", profiled, 10.0).await;
            report(
                &format!("{profiled}/s (profile run)"),
                format!(
                    "{:.0} ({:.3} retries, {:.2} faults, {:.0} us CPU each; latency p50 {:.1} ms, p99 {:.1} ms)",
                    r.per_s, r.retries, r.faults, r.cpu_us, r.p50_ms, r.p99_ms
                ),
            );
            return;
        }
        let dir = work.path().join("metered");
        let runtime = Arc::new(runtime(&dir, &cache, true));
        runtime.open_deployment("probe", config(16)).await.unwrap();
        runtime.deploy("probe", &probe).await.unwrap();
        runtime.open_deployment("bank", config(64)).await.unwrap();
        runtime.deploy("bank", &bank).await.unwrap();
        let (lat, qps, fuel, qfaults) = trivial_queries(&runtime, seconds).await;
        single_transfer_profile(&runtime, "bank", MOVE, "").await;
        let moves = transfers(&runtime, "bank", MOVE, seconds).await;
        single_transfer_profile(&runtime, "bank", TRANSFER, "").await;
        let logged = transfers(&runtime, "bank", TRANSFER, seconds).await;
        // The same workloads in a guest compiled from Rust: what the platform costs without
        // the JavaScript runtime.
        runtime.open_deployment("rust", config(64)).await.unwrap();
        runtime.deploy("rust", &kiln_guest_sdk::rust_guest_component().unwrap()).await.unwrap();
        let (rust_lat, rust_qps, rust_fuel, _) = queries(&runtime, "rust", "counter:get", seconds).await;
        single_transfer_profile(&runtime, "rust", MOVE, "Rust guest: ").await;
        let rust = transfers(&runtime, "rust", MOVE, seconds).await;
        runtime.shutdown().await;

        // The cost of fuel metering: this machine's speed drifts by tens of percent over
        // seconds, so rounds with and without metering alternate and their totals compare.
        let (on, off) = (
            Arc::new(self::runtime(&work.path().join("cost-on"), &cache, true)),
            Arc::new(self::runtime(&work.path().join("cost-off"), &cache, false)),
        );
        let mut accounts = Vec::new();
        for rt in [&on, &off] {
            rt.open_deployment("probe", config(16)).await.unwrap();
            rt.deploy("probe", &probe).await.unwrap();
            rt.open_deployment("bank", config(64)).await.unwrap();
            rt.deploy("bank", &bank).await.unwrap();
            accounts.push(open_accounts(rt, "bank").await);
        }
        // An even number of rounds, each order in turn: what a round leaves behind (WAL pages
        // still being written back, say) lands on the next one, and with metering always first
        // the transfers' figure swung from -9 % to +15 % between runs.
        let rounds = if quick { 2 } else { 10 };
        let round = seconds / 5.0;
        let (mut p50s, mut qsum, mut tsum, mut tcpu) = ([Vec::new(), Vec::new()], [0.0; 2], [0.0; 2], [0.0; 2]);
        for r in 0..rounds {
            let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let rt = [&on, &off][i];
                let mut lat = Vec::with_capacity(500);
                for _ in 0..500 {
                    let t = Instant::now();
                    rt.call("probe", CallRequest::new(FunctionKind::Query, "probe:empty", empty())).await.result.unwrap();
                    lat.push(t.elapsed());
                }
                lat.sort();
                p50s[i].push(pct(&lat, 0.5));
                qsum[i] += query_round(rt, "probe", "probe:empty", round).await.0;
                let moves = transfer_round(rt, "bank", MOVE, &accounts[i], round).await;
                tsum[i] += moves.per_s;
                tcpu[i] += moves.cpu_us;
            }
        }
        on.shutdown().await;
        off.shutdown().await;
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (p50_on, p50_off) = (median(&mut p50s[0]), median(&mut p50s[1]));

        report(
            "trivial query, one caller: p50 / p99 per call (target p50 <= 50 us), fuel",
            format!("{:.1} us / {:.1} us, {fuel}", pct(&lat, 0.5), pct(&lat, 0.99)),
        );
        report("trivial queries/s, 16 concurrent callers", format!("{qps:.0} ({qfaults:.2} minor faults per call)"));
        report(
            "transfers (accounts:move) committed/s, 64 callers, durable (target >= 15000)",
            format!(
                "{:.0} ({:.3} retries, {:.2} minor faults, {:.0} us CPU per transfer)",
                moves.per_s, moves.retries, moves.faults, moves.cpu_us
            ),
        );
        report(
            "accounts:move latency under that load: p50 / p99",
            format!("{:.1} ms / {:.1} ms", moves.p50_ms, moves.p99_ms),
        );
        report(
            "recorded transfers (accounts:transfer, + an insert) committed/s, same",
            format!("{:.0} ({:.3} retries, {:.0} us CPU per transfer)", logged.per_s, logged.retries, logged.cpu_us),
        );
        report(
            &format!("fuel metering cost, {rounds} alternating rounds: p50 / queries/s / transfers/s"),
            format!(
                "{:+.1}% / {:+.1}% / {:+.1}% (on: {p50_on:.1} us, {:.0}/s, {:.0}/s; off: {p50_off:.1} us, {:.0}/s, {:.0}/s)",
                (p50_on / p50_off - 1.0) * 100.0,
                (qsum[1] / qsum[0] - 1.0) * 100.0,
                (tsum[1] / tsum[0] - 1.0) * 100.0,
                qsum[0] / rounds as f64,
                tsum[0] / rounds as f64,
                qsum[1] / rounds as f64,
                tsum[1] / rounds as f64,
            ),
        );
        report(
            "  CPU per transfer in those rounds: on / off",
            format!(
                "{:.0} us / {:.0} us ({:+.1}%)",
                tcpu[0] / rounds as f64,
                tcpu[1] / rounds as f64,
                (tcpu[0] / tcpu[1] - 1.0) * 100.0
            ),
        );

        report(
            "Rust guest: counter:get (empty table), one caller: p50 / p99, fuel",
            format!("{:.1} us / {:.1} us, {rust_fuel}", pct(&rust_lat, 0.5), pct(&rust_lat, 0.99)),
        );
        report("Rust guest: counter:get/s, 16 concurrent callers", format!("{rust_qps:.0}"));
        report(
            "Rust guest: transfers (accounts:move) committed/s, 64 callers, durable",
            format!("{:.0} ({:.3} retries, {:.0} us CPU per transfer)", rust.per_s, rust.retries, rust.cpu_us),
        );

        fairness(&work.path().join("fairness"), &cache, &build("guest-sdk/tests/fixtures/hostile"), seconds).await;

        // Idle deployments (in a child process), and cold starts from the cached .cwasm.
        let dir = work.path().join("idle");
        let component = work.path().join("bank.wasm");
        std::fs::write(&component, &bank).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--bench", IDLE_MEMORY])
            .arg(&dir)
            .arg(&cache)
            .arg(&component)
            .output()
            .unwrap();
        assert!(child.status.success(), "{}", String::from_utf8_lossy(&child.stderr));
        let per = String::from_utf8_lossy(&child.stdout).trim().to_owned();
        report(
            &format!("resident memory per idle deployment ({IDLE_DEPLOYMENTS} deployments, one call each)"),
            per,
        );
        let runtime = self::runtime(&dir, &cache, true);
        let mut starts = Vec::new();
        for i in 0..IDLE_DEPLOYMENTS {
            let t = Instant::now();
            runtime.open_deployment(&format!("idle{i}"), config(4)).await.unwrap();
            runtime
                .call(&format!("idle{i}"), CallRequest::new(FunctionKind::Query, "accounts:total", empty()))
                .await
                .result
                .unwrap();
            starts.push(t.elapsed());
        }
        starts.sort();
        report(
            "cold start of a deployment from its cached .cwasm (open + first call): p50 / max",
            format!("{:.1} ms / {:.1} ms", pct(&starts, 0.5) / 1e3, starts.last().unwrap().as_secs_f64() * 1e3),
        );
    });
}
