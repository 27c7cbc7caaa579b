//! The runtime on real components built by `kiln build` (the example apps and a hostile test
//! app) and real SQLite-backed stores.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kiln_runtime::{CallOutcome, CallRequest, DeploymentConfig, FunctionKind, Limits, Quotas, Runtime, RuntimeConfig};
use kiln_store::StoreConfig;
use kiln_value::{Value, parse_convex_json};

use FunctionKind::{Action, Mutation, Query};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap().to_path_buf()
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

/// The component of an app, built once per test run.
fn component(app: &str) -> Vec<u8> {
    static BUILT: OnceLock<Mutex<HashMap<String, Vec<u8>>>> = OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap();
    built
        .entry(app.to_owned())
        .or_insert_with(|| {
            let dir = if app.starts_with("fixtures/") {
                repo().join("guest-sdk/tests").join(app)
            } else {
                repo().join("examples").join(app)
            };
            let options = kiln_guest_sdk::BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() };
            kiln_guest_sdk::build_app(&dir, &options).unwrap_or_else(|e| panic!("building {app}: {e}")).component
        })
        .clone()
}

fn runtime_config(dir: &Path) -> RuntimeConfig {
    RuntimeConfig {
        data_dir: dir.to_path_buf(),
        cache_dir: Some(cache_dir()),
        worker_threads: 4,
        usage_flush_interval: Duration::from_millis(100),
        store: StoreConfig { prune_interval: Duration::ZERO, ..StoreConfig::default() },
        ..RuntimeConfig::default()
    }
}

/// Deployments' SQLite files under `dir`.
fn sqlite(dir: &Path) -> Arc<dyn kiln_persistence::PersistenceFactory> {
    Arc::new(kiln_sqlite::SqliteFactory { data_dir: dir.to_path_buf(), options: Default::default() })
}

fn test_limits() -> Limits {
    // A smaller fuel budget keeps `while (true) {}` short in tests.
    Limits { query_mutation_fuel: 2_000_000_000, ..Limits::default() }
}

async fn deploy(rt: &Runtime, name: &str, app: &str, config: DeploymentConfig) {
    rt.open_deployment(name, config).await.unwrap();
    rt.deploy(name, &component(app)).await.unwrap_or_else(|e| panic!("deploying {app}: {e}"));
}

fn args(json: &str) -> Value {
    parse_convex_json(json).unwrap()
}

async fn call(rt: &Runtime, dep: &str, kind: FunctionKind, path: &str, a: &str) -> CallOutcome {
    rt.call(dep, CallRequest::new(kind, path, args(a))).await
}

fn ok(out: &CallOutcome) -> Value {
    match &out.result {
        Ok(v) => v.clone(),
        Err(e) => panic!("call failed: {e}"),
    }
}

fn code(out: &CallOutcome) -> String {
    match &out.result {
        Ok(v) => panic!(
            "expected an error, got {}",
            kiln_value::to_convex_json(v).to_string().chars().take(200).collect::<String>()
        ),
        Err(e) => e.code.clone(),
    }
}

/// Waits (polling) until `done` holds; fails after 10 s naming `what`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn config() -> DeploymentConfig {
    DeploymentConfig { limits: test_limits(), ..DeploymentConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_mutations_and_actions_round_trip_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "chat", "chat", config()).await;
    let sent = call(&rt, "chat", Mutation, "messages:send", r#"{"author": "ann", "body": "hello"}"#).await;
    assert!(matches!(ok(&sent), Value::String(_)));
    assert!(sent.commit_ts.is_some());
    call(&rt, "chat", Mutation, "messages:send", r#"{"author": "bob", "body": "hi"}"#).await;
    let list = call(&rt, "chat", Query, "messages:list", "{}").await;
    let Value::Array(messages) = ok(&list) else { panic!() };
    assert_eq!(messages.len(), 2);
    assert!(list.read_token.is_some(), "queries return what they read");
    let summary = call(&rt, "chat", Action, "messages:summary", "{}").await;
    assert_eq!(ok(&summary), Value::from("2 messages, latest by bob"));
    let like = call(&rt, "chat", Mutation, "messages:like", r#"{"id": "nope"}"#).await;
    assert_eq!(code(&like), "InvalidArgs");

    deploy(&rt, "hostile", "fixtures/hostile", config()).await;
    let write = call(&rt, "hostile", Query, "hostile:writeInQuery", "{}").await;
    assert!(write.result.as_ref().unwrap_err().message.contains("queries cannot write"), "{:?}", write.result);
    assert_eq!(ok(&call(&rt, "hostile", Query, "hostile:items", "{}").await), Value::Array(vec![]));
    assert_eq!(code(&call(&rt, "nowhere", Query, "x:y", "{}").await), "DeploymentNotFound");
    assert_eq!(code(&call(&rt, "chat", Query, "messages:nothing", "{}").await), "FunctionNotFound");
    assert_eq!(
        code(&call(&rt, "chat", Query, "messages:count", "{}").await),
        "FunctionNotFound",
        "internal functions are hidden"
    );
    assert_eq!(code(&call(&rt, "chat", Mutation, "messages:list", "{}").await), "WrongFunctionKind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_has_its_own_error_and_neighbours_do_not_notice() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap());
    let hostile =
        DeploymentConfig { limits: Limits { max_concurrency: 1, ..test_limits() }, ..DeploymentConfig::default() };
    deploy(&rt, "hostile", "fixtures/hostile", hostile).await;
    deploy(&rt, "calm", "chat", config()).await;
    call(&rt, "calm", Mutation, "messages:send", r#"{"author": "ann", "body": "hello"}"#).await;

    // The calm deployment's latency on its own…
    let mut baseline = Vec::new();
    for _ in 0..20 {
        baseline.push(call(&rt, "calm", Query, "messages:list", "{}").await.wall);
    }
    baseline.sort();
    // …and while the hostile one misbehaves on every slot it is allowed.
    let calm = {
        let rt = rt.clone();
        tokio::spawn(async move {
            let mut during = Vec::new();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(4) {
                let out = call(&rt, "calm", Query, "messages:list", "{}").await;
                ok(&out);
                during.push(out.wall);
            }
            during.sort();
            during
        })
    };
    let Value::String(item) = ok(&call(&rt, "hostile", Mutation, "hostile:addItem", r#"{"name": "a"}"#).await) else {
        panic!()
    };
    let id_args = format!(r#"{{"id": "{item}"}}"#);
    let cases = [
        ("hostile:spin", "{}", "FuelExhausted"),
        ("hostile:allocate", "{}", "MemoryLimitExceeded"),
        ("hostile:recurse", "{}", "StackOverflow"),
        ("hostile:recurseWide", "{}", "StackOverflow"),
        ("hostile:readLoop", id_args.as_str(), "TooManyReads"),
        ("hostile:swallowLimit", id_args.as_str(), "TooManyReads"),
    ];
    for (path, a, want) in cases {
        let out = call(&rt, "hostile", Query, path, a).await;
        assert_eq!(code(&out), want, "{path}");
        assert!(
            out.result.as_ref().unwrap_err().message.contains(path),
            "the message names the function: {:?}",
            out.result
        );
    }
    // Producing 20 MiB of JSON takes more fuel than this test's small budget, and with 64 MiB
    // QuickJS's growing JSON buffer hits the memory cap first: the result limit is tested
    // with room for both.
    let roomy = Limits { memory_bytes: 256 << 20, ..Limits::default() };
    deploy(&rt, "roomy", "fixtures/hostile", DeploymentConfig { limits: roomy, ..DeploymentConfig::default() }).await;
    let big = call(&rt, "roomy", Query, "hostile:bigResult", "{}").await;
    assert_eq!(code(&big), "ResultTooLarge");
    assert!(big.result.as_ref().unwrap_err().message.contains("hostile:bigResult"));
    let during = calm.await.unwrap();
    let p50 = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "calm p50 alone {:?}, during the hostile run {:?} ({} calls)",
        p50(&baseline),
        p50(&during),
        during.len()
    );
    assert!(p50(&during) < p50(&baseline) * 5 + Duration::from_millis(20), "the neighbour slowed down");
    // The hostile deployment itself keeps serving.
    assert_eq!(ok(&call(&rt, "hostile", Query, "hostile:items", "{}").await), Value::Array(vec![Value::from("a")]));

    // The wall-clock deadline also stops a call that has fuel to spare.
    let slow = DeploymentConfig {
        limits: Limits {
            query_mutation_fuel: u64::MAX / 4,
            query_mutation_deadline: Duration::from_millis(300),
            ..Limits::default()
        },
        ..DeploymentConfig::default()
    };
    deploy(&rt, "slow", "fixtures/hostile", slow).await;
    let started = Instant::now();
    assert_eq!(code(&call(&rt, "slow", Query, "hostile:spin", "{}").await), "DeadlineExceeded");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_waiting_for_its_commit_leaves_its_slot_to_other_calls() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap());
    let one_slot =
        DeploymentConfig { limits: Limits { max_concurrency: 1, ..test_limits() }, ..DeploymentConfig::default() };
    deploy(&rt, "chat", "chat", one_slot).await;
    // Another connection holds the write lock of the deployment's commit log: its next group
    // commit waits.
    let blocker = rusqlite::Connection::open(dir.path().join("chat.sqlite3-commits")).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let send = {
        let rt = rt.clone();
        tokio::spawn(
            async move { call(&rt, "chat", Mutation, "messages:send", r#"{"author": "ann", "body": "hi"}"#).await },
        )
    };
    // The mutation runs in milliseconds, then waits for its commit; the only slot is free.
    let store = rt.deployment("chat").unwrap().store().clone();
    until("the mutation's commit to be in flight", || {
        let stats = store.stats();
        stats.validated_ts > stats.published_ts
    })
    .await;
    let list = tokio::time::timeout(Duration::from_secs(3), call(&rt, "chat", Query, "messages:list", "{}")).await;
    let waiting = !send.is_finished();
    blocker.execute_batch("COMMIT").unwrap();
    let list = list.expect("a query waited for a mutation's durable commit to get a slot");
    assert!(waiting, "the mutation's commit waited for the write lock");
    assert_eq!(ok(&list), Value::Array(Vec::new()), "the commit was not published yet");
    ok(&send.await.unwrap());
    let Value::Array(messages) = ok(&call(&rt, "chat", Query, "messages:list", "{}").await) else { panic!() };
    assert_eq!(messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_deployments_are_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "a", "fixtures/hostile", config()).await;
    deploy(&rt, "b", "fixtures/hostile", config()).await;
    let (va, vb) = (rt.deployment("a").unwrap().version().unwrap(), rt.deployment("b").unwrap().version().unwrap());
    assert!(Arc::ptr_eq(&va, &vb), "deployments of one component share its compiled code");
    assert_eq!(ok(&call(&rt, "a", Query, "hostile:setGlobal", "{}").await), Value::Null);
    assert_eq!(
        ok(&call(&rt, "a", Query, "hostile:setGlobal", "{}").await),
        Value::Null,
        "a global is gone in the next call"
    );

    let Value::String(secret) = ok(&call(&rt, "a", Mutation, "hostile:addItem", r#"{"name": "secret"}"#).await) else {
        panic!()
    };
    call(&rt, "b", Mutation, "hostile:addItem", r#"{"name": "b's own"}"#).await;
    let peek = ok(&call(&rt, "b", Query, "hostile:getItem", &format!(r#"{{"id": "{secret}"}}"#)).await);
    assert!(peek == Value::Null || peek == Value::from("not an item id"), "b read a's document: {peek:?}");
    assert_eq!(ok(&call(&rt, "b", Query, "hostile:items", "{}").await), Value::Array(vec![Value::from("b's own")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_deterministic_at_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "d", "fixtures/hostile", config()).await;
    let a = call(&rt, "d", Query, "hostile:entropy", "{}").await;
    let b = call(&rt, "d", Query, "hostile:entropy", "{}").await;
    let bytes = |o: &CallOutcome| kiln_value::to_msgpack(&ok(o));
    assert_eq!(bytes(&a), bytes(&b), "same snapshot, same result: Math.random, Date.now and randomUUID included");
    let snapshot = a.read_token.as_ref().unwrap().ts;
    let Value::Object(o) = ok(&a) else { panic!() };
    assert_eq!(o["now"], Value::Float64(snapshot.0 as f64 / 1e6), "Date.now is the snapshot's time");
    call(&rt, "d", Mutation, "hostile:addItem", r#"{"name": "x"}"#).await;
    let c = call(&rt, "d", Query, "hostile:entropy", "{}").await;
    assert_ne!(bytes(&a), bytes(&c), "a newer snapshot draws other numbers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_draw_fresh_randomness_and_query_seeds_are_keyed_per_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap());
    deploy(&rt, "d", "fixtures/hostile", config()).await;
    // Concurrent calls of one action start within the same milliseconds: their UUIDs, random
    // numbers and bytes must still all differ.
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { ok(&call(&rt, "d", Action, "hostile:actionEntropy", "{}").await) })
        })
        .collect();
    let (mut uuids, mut randoms, mut bytes) = (std::collections::HashSet::new(), Vec::new(), Vec::new());
    for c in calls {
        let Value::Object(o) = c.await.unwrap() else { panic!() };
        uuids.insert(o["uuid"].clone());
        let Value::Float64(r) = o["random"] else { panic!() };
        randoms.push(r.to_bits());
        bytes.push(kiln_value::to_msgpack(&o["bytes"]));
    }
    randoms.sort_unstable();
    randoms.dedup();
    bytes.sort();
    bytes.dedup();
    assert_eq!((uuids.len(), randoms.len(), bytes.len()), (1000, 1000, 1000), "every action drew its own numbers");

    // The same deployment name, function, arguments and snapshot in another data directory
    // draws other numbers: the seed is keyed by each deployment's own secret.
    let at = |ts| {
        let mut req = CallRequest::new(Query, "hostile:entropy", args("{}"));
        req.snapshot = Some(ts);
        req
    };
    let first = call(&rt, "d", Query, "hostile:entropy", "{}").await;
    let again = ok(&rt.call("d", at(first.read_token.as_ref().unwrap().ts)).await);
    assert_eq!(again, ok(&first), "a query re-run at its snapshot draws the same numbers");
    // (Its table exists before the shared snapshot: a catalog change after it would make
    // that snapshot too old for this store.)
    call(&rt, "d", Mutation, "hostile:addItem", r#"{"name": "first"}"#).await;
    let other_dir = tempfile::tempdir().unwrap();
    let other = Runtime::new(runtime_config(other_dir.path()), sqlite(other_dir.path())).unwrap();
    deploy(&other, "d", "fixtures/hostile", config()).await;
    // A snapshot both stores have: the newer store's, once the older one has committed later.
    let ts = call(&other, "d", Query, "hostile:entropy", "{}").await.read_token.unwrap().ts;
    call(&rt, "d", Mutation, "hostile:addItem", r#"{"name": "later"}"#).await;
    let again = ok(&rt.call("d", at(ts)).await);
    let elsewhere = ok(&other.call("d", at(ts)).await);
    let Value::Object(elsewhere) = elsewhere else { panic!() };
    let Value::Object(here) = again else { panic!() };
    assert_eq!(elsewhere["now"], here["now"], "the same snapshot");
    assert_ne!((&elsewhere["random"], &elsewhere["uuid"]), (&here["random"], &here["uuid"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_lists_reach_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "bank", "bank", config()).await;
    // An empty page: the host hands the guest an empty list of documents.
    let page = ok(&call(
        &rt,
        "bank",
        Query,
        "accounts:byOwner",
        r#"{"owner": "nobody", "paginationOpts": {"numItems": 10, "cursor": null}}"#,
    )
    .await);
    let Value::Object(page) = page else { panic!() };
    assert_eq!(page["page"], Value::Array(vec![]));
    assert_eq!(page["isDone"], Value::Boolean(true));
    // `process.env` of a deployment without variables: an empty list of pairs.
    deploy(&rt, "probe", "fixtures/probe", config()).await;
    let Value::Object(globals) = ok(&call(&rt, "probe", Query, "probe:webGlobals", "{}").await) else { panic!() };
    assert_eq!(globals["env"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_querys_journal_keeps_its_pages_bounds_when_it_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "bank", "bank", config()).await;
    let open = |n: usize| {
        let rt = &rt;
        async move {
            for _ in 0..n {
                ok(&call(
                    rt,
                    "bank",
                    Mutation,
                    "accounts:open",
                    r#"{"owner": "ann", "balance": {"$integer": "AAAAAAAAAAA="}}"#,
                )
                .await);
            }
        }
    };
    let page = |journal: Option<String>| {
        let rt = &rt;
        async move {
            let mut req = CallRequest::new(
                Query,
                "accounts:byOwner",
                args(r#"{"owner": "ann", "paginationOpts": {"numItems": 3, "cursor": null}}"#),
            );
            req.journal = journal;
            let out = rt.call("bank", req).await;
            let Value::Object(page) = ok(&out) else { panic!("not a page") };
            let Value::Array(docs) = &page["page"] else { panic!("no documents") };
            (docs.len(), page["isDone"].clone(), out.journal)
        }
    };
    open(2).await;
    let (len, done, journal) = page(None).await;
    assert_eq!((len, done), (2, Value::Boolean(true)));
    let journal = journal.expect("a query that paginates produces a journal");
    // Run again with its journal, the page still ends at the end of the range: it grows past
    // `numItems` to hold the new accounts instead of leaving them to a next page.
    open(3).await;
    let (len, done, again) = page(Some(journal.clone())).await;
    assert_eq!((len, done), (5, Value::Boolean(true)));
    assert_eq!(again.as_deref(), Some(journal.as_str()), "the journal stays the same");
    // A fresh run stops after `numItems` as usual.
    let (len, done, _) = page(None).await;
    assert_eq!((len, done), (3, Value::Boolean(false)));
    // A query that reads no page has no journal; a journal from elsewhere is an invalid cursor.
    assert_eq!(call(&rt, "bank", Query, "accounts:total", "{}").await.journal, None);
    let mut req = CallRequest::new(
        Query,
        "accounts:byOwner",
        args(r#"{"owner": "ann", "paginationOpts": {"numItems": 3, "cursor": null}}"#),
    );
    req.journal = Some(r#"{"endCursors":["AAAA"]}"#.into());
    let message = rt.call("bank", req).await.result.unwrap_err().message;
    // usePaginatedQuery looks for the word to start over.
    assert!(message.contains("InvalidCursor"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_child_mutation_leaves_no_writes_and_unsupported_options_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "d", "fixtures/hostile", config()).await;
    // Sorted: documents inserted in the same millisecond come in the order of their ids.
    let names = |v: Value| match v {
        Value::Array(items) => {
            let mut names: Vec<_> = items.into_iter().map(|i| i.as_str().unwrap().to_owned()).collect();
            names.sort();
            names
        }
        other => panic!("{other:?}"),
    };
    let inside = names(ok(&call(&rt, "d", Mutation, "hostile:catchingParent", "{}").await));
    assert_eq!(inside, ["caught", "parent", "second child"], "the child's insert and patch are undone at once");
    let committed = names(ok(&call(&rt, "d", Query, "hostile:items", "{}").await));
    assert_eq!(committed, ["parent", "second child"]);

    for (path, option) in [("hostile:staleSnapshot", "useStaleSnapshot"), ("hostile:limitedChild", "transactionLimits")]
    {
        let out = call(&rt, "d", Mutation, path, "{}").await;
        let e = out.result.unwrap_err();
        assert!(e.message.contains(option) && e.message.contains("not supported"), "{path}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_on_a_few_hot_accounts_never_fail_with_a_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap());
    let cfg =
        DeploymentConfig { limits: Limits { max_concurrency: 64, ..Limits::default() }, ..DeploymentConfig::default() };
    deploy(&rt, "bank", "bank", cfg).await;
    // 10 accounts of 1,000 each ("$integer" is the little-endian int64 in base64).
    let thousand = "6AMAAAAAAAA=";
    let mut ids = Vec::new();
    for _ in 0..10 {
        let opened = call(
            &rt,
            "bank",
            Mutation,
            "accounts:open",
            &format!(r#"{{"owner": "hot", "balance": {{"$integer": "{thousand}"}}}}"#),
        )
        .await;
        let Value::String(id) = ok(&opened) else { panic!("an id") };
        ids.push(id);
    }
    let ids = Arc::new(ids);
    let one = "AQAAAAAAAAA=";
    let until = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..64u64)
        .map(|c| {
            let (rt, ids) = (rt.clone(), ids.clone());
            tokio::spawn(async move {
                let (mut done, mut failed, mut retried) = (0, Vec::new(), 0);
                let mut n = c;
                while Instant::now() < until {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    let (from, to) = ((n >> 33) as usize % 10, (n >> 13) as usize % 9);
                    let to = if to >= from { to + 1 } else { to };
                    let a = format!(
                        r#"{{"from": "{}", "to": "{}", "amount": {{"$integer": "{one}"}}}}"#,
                        ids[from], ids[to]
                    );
                    let out = call(&rt, "bank", Mutation, "accounts:move", &a).await;
                    retried += out.retries;
                    match out.result {
                        Ok(_) => done += 1,
                        Err(e) => failed.push(e.code),
                    }
                }
                (done, failed, retried)
            })
        })
        .collect();
    let (mut done, mut failed, mut retried) = (0, Vec::new(), 0);
    for c in clients {
        let (d, f, r) = c.await.unwrap();
        done += d;
        failed.extend(f);
        retried += r;
    }
    assert!(
        failed.is_empty(),
        "{} of {} transfers failed: {:?}",
        failed.len(),
        done + failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(retried > 0, "the transfers did contend ({done} transfers)");
    // Money is conserved.
    let total = ok(&call(&rt, "bank", Query, "accounts:total", "{}").await);
    assert_eq!(total, Value::Int64(10_000), "after {done} transfers");

    // The hottest case: 64 writers of one document at once; none gives up.
    let wide = DeploymentConfig { limits: Limits { max_concurrency: 64, ..Limits::default() }, ..Default::default() };
    deploy(&rt, "one", "fixtures/hostile", wide).await;
    let writers: Vec<_> = (0..64)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { call(&rt, "one", Mutation, "hostile:increment", r#"{"name": "hot"}"#).await })
        })
        .collect();
    let mut most_retries = 0;
    for w in writers {
        let out = w.await.unwrap();
        most_retries = most_retries.max(out.retries);
        assert!(out.result.is_ok(), "{:?}", out.result);
    }
    assert_eq!(ok(&call(&rt, "one", Query, "hostile:counter", r#"{"name": "hot"}"#).await), Value::Float64(64.0));
    // (Retries take turns, but first attempts do not: how often one writer loses depends on
    // how the first attempts interleave with the retries, 1 to 8 times seen.)
    assert!(most_retries > 0, "the writers did contend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_are_exact_and_exhausted_retries_surface_as_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap());
    let cfg = DeploymentConfig {
        limits: Limits { max_concurrency: 8, mutation_retries: 64, ..test_limits() },
        ..DeploymentConfig::default()
    };
    deploy(&rt, "d", "fixtures/hostile", cfg.clone()).await;
    let run_many = |n: usize| {
        let rt = rt.clone();
        async move {
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let rt = rt.clone();
                    tokio::spawn(async move { call(&rt, "d", Mutation, "hostile:increment", r#"{"name": "c"}"#).await })
                })
                .collect();
            let mut outs = Vec::new();
            for t in tasks {
                outs.push(t.await.unwrap());
            }
            outs
        }
    };
    let outs = run_many(40).await;
    assert!(outs.iter().all(|o| o.result.is_ok()), "{:?}", outs.iter().find(|o| o.result.is_err()).map(|o| &o.result));
    assert_eq!(ok(&call(&rt, "d", Query, "hostile:counter", r#"{"name": "c"}"#).await), Value::Float64(40.0));
    assert!(outs.iter().any(|o| o.retries > 0), "the increments did contend");

    rt.configure("d", DeploymentConfig { limits: Limits { mutation_retries: 0, ..cfg.limits.clone() }, ..cfg.clone() })
        .unwrap();
    let outs = run_many(40).await;
    let conflicts = outs.iter().filter(|o| matches!(&o.result, Err(e) if e.code == "Conflict")).count();
    let succeeded = outs.iter().filter(|o| o.result.is_ok()).count();
    assert_eq!(conflicts + succeeded, 40);
    assert!(conflicts > 0, "with no retries some increments must fail");
    let expected = 40.0 + succeeded as f64;
    assert_eq!(ok(&call(&rt, "d", Query, "hostile:counter", r#"{"name": "c"}"#).await), Value::Float64(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_with_one_idempotency_key_apply_once_and_queries_run_at_a_given_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap());
    let cfg = DeploymentConfig {
        limits: Limits { max_concurrency: 8, mutation_retries: 64, ..test_limits() },
        ..DeploymentConfig::default()
    };
    deploy(&rt, "d", "fixtures/hostile", cfg).await;
    let keyed = |key: &str| {
        let mut req = CallRequest::new(Mutation, "hostile:increment", args(r#"{"name": "k"}"#));
        req.idempotency_key = Some(key.to_owned());
        req
    };
    let first = rt.call("d", keyed("session-1/7")).await;
    let first_value = ok(&first);
    let first_ts = first.commit_ts.unwrap();
    assert!(!first.replayed);
    let again = rt.call("d", keyed("session-1/7")).await;
    assert!(again.replayed, "the resent mutation is not run again");
    assert_eq!(ok(&again), first_value, "it returns the recorded result");
    assert!(again.commit_ts.unwrap() >= first_ts);
    let counter = || async { ok(&call(&rt, "d", Query, "hostile:counter", r#"{"name": "k"}"#).await) };
    assert_eq!(counter().await, Value::Float64(1.0));
    // Concurrent resends of one new request: exactly one applies.
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let rt = rt.clone();
            let req = keyed("session-1/8");
            tokio::spawn(async move { rt.call("d", req).await })
        })
        .collect();
    let mut replayed = 0;
    for t in tasks {
        let out = t.await.unwrap();
        assert_eq!(ok(&out), Value::Float64(2.0), "every caller gets the one result");
        replayed += usize::from(out.replayed);
    }
    assert_eq!(replayed, 11, "one call ran, the others replayed its result");
    assert_eq!(counter().await, Value::Float64(2.0));

    // A query at the first mutation's snapshot sees the counter as it was then.
    let mut at = CallRequest::new(Query, "hostile:counter", args(r#"{"name": "k"}"#));
    at.snapshot = Some(first_ts);
    let out = rt.call("d", at).await;
    assert_eq!(ok(&out), Value::Float64(1.0));
    assert_eq!(out.read_token.unwrap().ts, first_ts);
    let mut future = CallRequest::new(Query, "hostile:counter", args(r#"{"name": "k"}"#));
    future.snapshot = Some(kiln_store::Timestamp(u64::MAX));
    assert_eq!(code(&rt.call("d", future).await), "SnapshotInFuture");

    // A key of a session's first connection is not looked up, but still recorded: the resend
    // after a reconnect is replayed.
    let mut fresh = keyed("session-2/1");
    fresh.idempotency_fresh = true;
    let first = rt.call("d", fresh).await;
    assert!(!first.replayed);
    let again = rt.call("d", keyed("session-2/1")).await;
    assert!(again.replayed, "the resend after a reconnect is not run again");
    assert_eq!(ok(&again), ok(&first));
    assert_eq!(counter().await, Value::Float64(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisting_usage_for_the_first_time_leaves_earlier_snapshots_readable() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "d", "chat", config()).await;
    // The deployment's first call; its usage is persisted (every 100 ms here) only after it.
    let sent = call(&rt, "d", Mutation, "messages:send", r#"{"author": "ann", "body": "hello"}"#).await;
    ok(&sent);
    let store = rt.deployment("d").unwrap().store().clone();
    until("the usage to be persisted after the call", || store.stats().published_ts > sent.commit_ts.unwrap()).await;
    let mut at_send = CallRequest::new(Query, "messages:list", args("{}"));
    at_send.snapshot = sent.commit_ts;
    let Value::Array(messages) = ok(&rt.call("d", at_send).await) else { panic!("a list") };
    assert_eq!(messages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metering_sums_persists_and_quotas_stop_calls() {
    let dir = tempfile::tempdir().unwrap();
    let mut fuel_seen = 0;
    {
        let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
        deploy(&rt, "d", "fixtures/hostile", config()).await;
        for i in 0..5 {
            fuel_seen += call(&rt, "d", Mutation, "hostile:addItem", &format!(r#"{{"name": "i{i}"}}"#)).await.fuel;
            fuel_seen += call(&rt, "d", Query, "hostile:items", "{}").await.fuel;
        }
        let failed = call(&rt, "d", Query, "hostile:spin", "{}").await;
        fuel_seen += failed.fuel;
        let usage = rt.usage("d").unwrap();
        assert_eq!(usage.total.fuel, fuel_seen, "per-call fuel sums to the deployment's total");
        assert_eq!(usage.total.calls, 11);
        assert_eq!(usage.total.errors, 1);
        assert_eq!(usage.functions["hostile:addItem"].calls, 5);
        let per_fn: u64 = usage.functions.values().map(|f| f.fuel).sum();
        assert_eq!(per_fn, usage.total.fuel);
        assert!(usage.functions["hostile:spin"].fuel >= 2_000_000_000);
        assert_eq!(rt.recent_calls("d").last().unwrap().outcome, "FuelExhausted");

        // A quota of about three small calls from now.
        let small = call(&rt, "d", Query, "hostile:items", "{}").await.fuel;
        let quota = DeploymentConfig {
            quotas: Quotas {
                fuel_per_period: Some(rt.usage("d").unwrap().period_fuel + 3 * small),
                period: Duration::from_secs(3600),
            },
            ..config()
        };
        rt.configure("d", quota.clone()).unwrap();
        let mut codes = Vec::new();
        for _ in 0..6 {
            let out = call(&rt, "d", Query, "hostile:items", "{}").await;
            codes.push(out.result.as_ref().err().map(|e| e.code.clone()));
        }
        assert!(codes.iter().take(3).all(Option::is_none), "{codes:?}");
        assert!(codes.iter().skip(3).all(|c| c.as_deref() == Some("QuotaExceeded")), "{codes:?}");
        let raised = DeploymentConfig { quotas: Quotas { fuel_per_period: Some(u64::MAX), ..quota.quotas }, ..quota };
        rt.configure("d", raised).unwrap();
        assert!(call(&rt, "d", Query, "hostile:items", "{}").await.result.is_ok());
        rt.shutdown().await;
    }
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    rt.open_deployment("d", config()).await.unwrap();
    let usage = rt.usage("d").unwrap();
    assert!(usage.total.calls >= 18, "usage survives a restart: {:?}", usage.total);
    assert!(usage.total.fuel > fuel_seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_loads_the_compiled_component_without_cranelift() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cfg = |c: &Path| RuntimeConfig { cache_dir: Some(c.to_path_buf()), ..runtime_config(dir.path()) };
    {
        let rt = Runtime::new(cfg(&cache), sqlite(dir.path())).unwrap();
        deploy(&rt, "d", "bank", config()).await;
        rt.shutdown().await;
    }
    let before = kiln_guest_sdk::component::cranelift_compiles();
    let rt = Runtime::new(cfg(&cache), sqlite(dir.path())).unwrap();
    rt.open_deployment("d", config()).await.unwrap();
    assert_eq!(kiln_guest_sdk::component::cranelift_compiles(), before, "the .cwasm from the cache was used");
    let total = call(&rt, "d", Query, "accounts:total", "{}").await;
    assert_eq!(ok(&total), Value::Int64(0), "and it serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_and_results_are_validated_and_logs_capped() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "chat", "chat", config()).await;
    let bad = call(&rt, "chat", Mutation, "messages:send", r#"{"author": 5, "body": "x"}"#).await;
    assert_eq!(code(&bad), "InvalidArgs");
    let message = bad.result.unwrap_err().message;
    assert!(message.contains("messages:send") && message.contains(".author"), "{message}");
    let missing = call(&rt, "chat", Mutation, "messages:send", r#"{"author": "a"}"#).await;
    assert!(missing.result.unwrap_err().message.contains(".body"));
    let huge = format!(r#"{{"author": "a", "body": "{}"}}"#, "z".repeat(17 << 20));
    assert_eq!(code(&call(&rt, "chat", Mutation, "messages:send", &huge).await), "ArgumentsTooLarge");

    deploy(&rt, "h", "fixtures/hostile", config()).await;
    assert_eq!(ok(&call(&rt, "h", Query, "hostile:typedReturn", r#"{"wrong": false}"#).await), Value::Float64(42.0));
    assert_eq!(code(&call(&rt, "h", Query, "hostile:typedReturn", r#"{"wrong": true}"#).await), "InvalidReturnValue");
    let flood = call(&rt, "h", Query, "hostile:logFlood", "{}").await;
    ok(&flood);
    assert_eq!(flood.logs.len(), 257);
    assert!(flood.logs[..256].iter().all(|l| l.text.len() <= 4096 + " [truncated]".len()));
    assert!(flood.logs[256].text.contains("744 more lines were dropped"), "{:?}", flood.logs[256]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_calls_and_fetch_with_an_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in server.incoming() {
            let mut stream = stream.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
        }
    });
    let cfg = DeploymentConfig {
        fetch: kiln_runtime::FetchPolicy { allowed_hosts: vec![format!("127.0.0.1:{port}")], ..Default::default() },
        ..config()
    };
    deploy(&rt, "d", "fixtures/hostile", cfg).await;
    assert_eq!(ok(&call(&rt, "d", Action, "hostile:viaAction", r#"{"name": "n1"}"#).await), Value::Float64(1.0));
    assert_eq!(ok(&call(&rt, "d", Query, "hostile:viaQuery", "{}").await), Value::Array(vec![Value::from("n1")]));

    let fetched =
        ok(&call(&rt, "d", Action, "hostile:fetchText", &format!(r#"{{"url": "http://127.0.0.1:{port}/x"}}"#)).await);
    assert_eq!(fetched, args(r#"{"status": 200, "body": "hello"}"#));
    let refused = call(&rt, "d", Action, "hostile:fetchText", r#"{"url": "http://127.0.0.1:1/x"}"#).await;
    let e = refused.result.unwrap_err();
    assert!(e.message.contains("a loopback address"), "refused after resolving, not by a list: {e}");
}

/// A local HTTP server that answers every request after `delay`; counts the requests begun.
fn slow_server(delay: Duration) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let begun = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = begun.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in server.incoming() {
            let Ok(mut stream) = stream else { return };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                std::thread::sleep(delay);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nslow");
            });
        }
    });
    (port, begun)
}

/// Runs `n` point queries of deployment `b` one after another; each must finish within a
/// second, and `busy` must still hold when the last one has.
async fn b_keeps_serving(rt: &Runtime, n: usize, busy: impl Fn() -> bool) {
    for i in 0..n {
        let out = call(rt, "b", Query, "hostile:counter", r#"{"name": "b"}"#).await;
        ok(&out);
        assert!(out.wall < Duration::from_secs(1), "query {i} of deployment b took {:?}", out.wall);
    }
    assert!(busy(), "deployment a's calls were still running while b's queries completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deployments_waiting_or_spinning_calls_do_not_stop_anothers_queries() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let dir = tempfile::tempdir().unwrap();
    let rt = Arc::new(Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap());
    let (port, begun) = slow_server(Duration::from_secs(5));
    let a = DeploymentConfig {
        limits: Limits { max_concurrent_actions: 64, action_fuel: 2_000_000_000, ..test_limits() },
        fetch: kiln_runtime::FetchPolicy { allowed_hosts: vec![format!("127.0.0.1:{port}")], ..Default::default() },
        ..config()
    };
    deploy(&rt, "a", "fixtures/hostile", a).await;
    deploy(&rt, "b", "fixtures/hostile", config()).await;

    // 50 actions of a wait on the slow server.
    let url = format!(r#"{{"url": "http://127.0.0.1:{port}/slow"}}"#);
    let done = Arc::new(AtomicUsize::new(0));
    let fetching: Vec<_> = (0..50)
        .map(|_| {
            let (rt, url, done) = (rt.clone(), url.clone(), done.clone());
            tokio::spawn(async move {
                let out = call(&rt, "a", Action, "hostile:fetchText", &url).await;
                done.fetch_add(1, SeqCst);
                out
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while begun.load(SeqCst) < 8 {
        assert!(Instant::now() < deadline, "a's actions never reached the slow server");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b_keeps_serving(&rt, 50, || done.load(SeqCst) == 0).await;
    for f in fetching {
        assert_eq!(ok(&f.await.unwrap()), args(r#"{"status": 200, "body": "slow"}"#));
    }

    // a spins in as many queries, mutations and actions as it may run at once.
    let running = Arc::new(AtomicUsize::new(0));
    let spinning: Vec<_> =
        [(Query, "hostile:spin", 4), (Mutation, "hostile:spinMutation", 4), (Action, "hostile:spinAction", 64)]
            .into_iter()
            .flat_map(|(kind, path, n)| std::iter::repeat_n((kind, path), n))
            .map(|(kind, path)| {
                let (rt, running) = (rt.clone(), running.clone());
                running.fetch_add(1, SeqCst);
                tokio::spawn(async move {
                    let out = call(&rt, "a", kind, path, "{}").await;
                    running.fetch_sub(1, SeqCst);
                    out
                })
            })
            .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    b_keeps_serving(&rt, 50, || running.load(SeqCst) > 0).await;
    for s in spinning {
        assert_eq!(code(&s.await.unwrap()), "FuelExhausted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_data_violates_is_refused_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "d", "chat", config()).await;
    let old = rt.deployment("d").unwrap().version().unwrap().id.clone();
    // Data the hostile app's schema forbids (items.name must be a string).
    let store = rt.deployment("d").unwrap().store().clone();
    let mut tx = store.begin();
    let bad = tx.insert("items", args(r#"{"name": 5}"#).as_object().unwrap().clone()).await.unwrap();
    tx.commit().await.unwrap();
    let err = rt.deploy("d", &component("fixtures/hostile")).await.unwrap_err();
    assert_eq!(err.code(), "SchemaViolation");
    assert!(err.to_string().contains(&bad.encode()), "{err}");
    assert_eq!(rt.deployment("d").unwrap().version().unwrap().id, old);
    assert!(call(&rt, "d", Query, "messages:list", "{}").await.result.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_query_results_are_reused_only_while_what_they_read_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "d", "bank", config()).await;
    let open = |owner: &str| format!(r#"{{"owner": "{owner}", "balance": {{"$integer": "ZAAAAAAAAAA="}}}}"#);
    let a = ok(&call(&rt, "d", Mutation, "accounts:open", &open("a")).await);
    let b = ok(&call(&rt, "d", Mutation, "accounts:open", &open("b")).await);
    let get_a = || {
        let mut req = CallRequest::new(Query, "accounts:get", Value::Object([("id".to_owned(), a.clone())].into()));
        req.cacheable = true;
        req
    };
    let first = rt.call("d", get_a()).await;
    assert!(!first.cached && first.fuel > 0);
    let again = rt.call("d", get_a()).await;
    assert!(again.cached, "the same query with nothing changed is answered from the cache");
    assert_eq!((ok(&again), again.fuel), (ok(&first), 0));
    assert!(again.read_token.is_some(), "a cached result still carries its read set");

    // A commit that touches nothing the query read keeps the entry valid.
    ok(&call(&rt, "d", Mutation, "accounts:open", &open("c")).await);
    assert!(rt.call("d", get_a()).await.cached);
    // Without `cacheable`, or as another caller, it runs.
    assert!(
        !call(&rt, "d", Query, "accounts:get", &format!(r#"{{"id": {}}}"#, kiln_value::to_convex_json(&a)))
            .await
            .cached
    );
    let mut as_user = get_a();
    as_user.identity = Some(Value::from("someone"));
    assert!(!rt.call("d", as_user).await.cached);

    // A commit that writes what it read invalidates it: the new balance shows.
    let transfer = format!(
        r#"{{"from": {}, "to": {}, "amount": {{"$integer": "AQAAAAAAAAA="}}}}"#,
        kiln_value::to_convex_json(&a),
        kiln_value::to_convex_json(&b)
    );
    ok(&call(&rt, "d", Mutation, "accounts:transfer", &transfer).await);
    let after = rt.call("d", get_a()).await;
    assert!(!after.cached);
    let Value::Object(doc) = ok(&after) else { panic!("an account") };
    assert_eq!(doc.get("balance"), Some(&Value::Int64(99)));
    assert!(rt.call("d", get_a()).await.cached);

    // An older snapshot than the cached run is not served from it.
    let mut old = get_a();
    old.snapshot = first.read_token.as_ref().map(|t| t.ts);
    let old = rt.call("d", old).await;
    assert!(!old.cached);
    let Value::Object(doc) = ok(&old) else { panic!("an account") };
    assert_eq!(doc.get("balance"), Some(&Value::Int64(100)));

    // A new configuration (e.g. environment variables) empties the cache.
    rt.configure("d", config()).unwrap();
    assert!(!rt.call("d", get_a()).await.cached);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_keep_schema_version_and_stored_component_together() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    rt.open_deployment("d", config()).await.unwrap();
    // Many messages: a switch to chat validates and backfills for a while, a switch to bank
    // is quick, so the two deploys' steps would interleave if nothing ordered them.
    let store = rt.deployment("d").unwrap().store().clone();
    let mut tx = store.begin();
    for i in 0..5000 {
        let message = format!(r#"{{"author": "a{}", "body": "hi", "likes": 0}}"#, i % 50);
        tx.insert("messages", args(&message).as_object().unwrap().clone()).await.unwrap();
    }
    tx.commit().await.unwrap();
    let (chat, bank) = (component("chat"), component("bank"));
    for round in 0..6 {
        let (a, b) = tokio::join!(rt.deploy("d", &chat), rt.deploy("d", &bank));
        a.unwrap();
        b.unwrap();
        let dep = rt.deployment("d").unwrap();
        let version = dep.version().unwrap();
        // The component a restart would load is the one serving.
        let stored = std::fs::read(dir.path().join("d.wasm")).unwrap();
        let digest: String = sha2::Sha256::digest(&stored).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(&digest[..16], version.id, "round {round}: the stored component is not the serving one");
        // The store's indexes are the serving version's schema (undeclared ones are dropped).
        let schema = kiln_store::Schema::parse(&version.manifest.schema.as_ref().unwrap().to_string()).unwrap();
        let catalog = dep.store().catalog();
        for (table, declared) in &schema.tables {
            let meta = catalog.table(table).unwrap_or_else(|| panic!("round {round}: no table {table}"));
            for index in declared.indexes.keys() {
                assert!(
                    meta.indexes.contains_key(index),
                    "round {round}: {table}.{index} of the serving schema is missing"
                );
            }
        }
    }
    // Both apps' functions answer in turn, whichever deploy ran last.
    let serving = rt.deployment("d").unwrap().version().unwrap();
    let path = if serving.manifest.function("messages:list").is_some() { "messages:list" } else { "accounts:total" };
    assert!(call(&rt, "d", Query, path, "{}").await.result.is_ok());
}

/// Runs `path` 384 times one call after another: the minor faults per call over the last 128
/// calls, and whether any call ran with the heap touch on.
async fn faults_of_repeated_calls(rt: &Runtime, dep: &str, kind: FunctionKind, path: &str, a: &str) -> (f64, bool) {
    let version = rt.deployment(dep).unwrap().version().unwrap();
    let (mut faults, mut touched) = (0, false);
    for i in 0..384 {
        touched |= version.touches_heap();
        let out = call(rt, dep, kind, path, a).await;
        ok(&out);
        if i >= 256 {
            faults += out.minor_faults;
        }
    }
    (faults as f64 / 128.0, touched)
}

/// Calls whose writes scatter over more page runs than a reused memory slot keeps fault on
/// every call until the host asks the guest to touch its heap; then they stop faulting. Calls
/// that fault only on a fresh slot (the bank's transfers) are never asked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_keep_faulting_get_the_heap_touch_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let never =
        Runtime::new(RuntimeConfig { heap_touch_faults: u64::MAX, ..runtime_config(dir.path()) }, sqlite(dir.path()))
            .unwrap();
    deploy(&never, "scatter", "fixtures/hostile", config()).await;
    let (without, touched) = faults_of_repeated_calls(&never, "scatter", Query, "hostile:scatter", "{}").await;
    assert!(!touched);
    assert!(without >= 16.0, "the scattering query faulted only {without:.1} times per call without the touch");
    never.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "scatter", "fixtures/hostile", config()).await;
    let (with, touched) = faults_of_repeated_calls(&rt, "scatter", Query, "hostile:scatter", "{}").await;
    assert!(touched, "the host never asked for the touch");
    assert!(with < without / 4.0, "{with:.1} faults per call with the touch, {without:.1} without");

    deploy(&rt, "bank", "bank", config()).await;
    let open = |owner: &str| format!(r#"{{"owner": "{owner}", "balance": {{"$integer": "AAAAAAAAAQA="}}}}"#);
    let a = ok(&call(&rt, "bank", Mutation, "accounts:open", &open("a")).await);
    let b = ok(&call(&rt, "bank", Mutation, "accounts:open", &open("b")).await);
    let transfer = format!(
        r#"{{"from": {}, "to": {}, "amount": {{"$integer": "AQAAAAAAAAA="}}}}"#,
        kiln_value::to_convex_json(&a),
        kiln_value::to_convex_json(&b)
    );
    let (faults, touched) = faults_of_repeated_calls(&rt, "bank", Mutation, "accounts:transfer", &transfer).await;
    assert!(!touched, "transfers were asked to touch the heap ({faults:.1} faults per call)");
}

/// Deploying analyzes the component in an instance of a copy of it: a pooled memory slot stays
/// warm for its component, and each reset of it copies back every page any of its instances
/// ever wrote, so the manifest walk's pages must not stay in a slot that calls reuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploying_leaves_no_warm_memory_slot_behind() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    let resident = |rt: &Runtime| {
        rt.engine().pooling_allocator_metrics().expect("the engine pools instances").unused_memory_bytes_resident()
    };
    deploy(&rt, "bank", "bank", config()).await;
    // (Analyzing in the deployment's own component left ~66 pages here.)
    assert_eq!(resident(&rt), 0, "bytes kept resident in unused slots after the deploy");
    ok(&call(&rt, "bank", Query, "accounts:total", "{}").await);
    // The worker releases the slot after it has replied.
    let released = Instant::now();
    while resident(&rt) == 0 && released.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(resident(&rt) > 0, "a call leaves its slot warm");
    rt.shutdown().await;
}

/// The app of `fixtures/components`: two instances of one local component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_keep_their_tables_apart_and_roll_back_alone() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "c", "fixtures/components", config()).await;
    let json = |out: &CallOutcome| kiln_value::to_convex_json(&ok(out));

    let first = call(&rt, "c", Mutation, "app:bump", r#"{"name": "a", "first": 1, "second": 10}"#).await;
    let Value::String(counter_id) = ok(&first) else { panic!("an id") };
    ok(&call(&rt, "c", Mutation, "app:bump", r#"{"name": "a", "first": 2, "second": 20}"#).await);
    let mut read = CallRequest::new(Query, "app:read", args(r#"{"name": "a"}"#));
    read.identity = Some(Value::from("someone"));
    let out = rt.call("c", read).await;
    // Each instance has its own table of counters; the app's table of the same name is empty;
    // the caller's identity does not reach into components.
    assert_eq!(
        json(&out),
        json!({"counter": {"value": 3.0, "identity": null}, "second": {"value": 30.0, "identity": null},
               "own": 0.0, "log": ["bump a", "bump a"]})
    );

    // A component's mutation that throws leaves none of its writes; the app's own commit.
    let failed = call(&rt, "c", Mutation, "app:bumpThenFail", r#"{"name": "a"}"#).await;
    assert_eq!(json(&failed), json!("caught: true"));
    let out = call(&rt, "c", Query, "app:read", r#"{"name": "a"}"#).await;
    assert_eq!(json(&out)["counter"]["value"], json!(3.0));
    assert_eq!(json(&out)["log"], json!(["bump a", "bump a", "fail a"]));

    // The app cannot read a component's document by its id, nor name its table.
    let peek = call(&rt, "c", Query, "app:peek", &format!(r#"{{"id": "{counter_id}"}}"#)).await;
    assert_eq!(json(&peek), json!({"byId": null, "normalized": null}));
    for table in ["counter/counters", "second/counters"] {
        let out = call(&rt, "c", Query, "app:reach", &format!(r#"{{"table": "{table}"}}"#)).await;
        let err = out.result.as_ref().unwrap_err();
        assert!(err.message.contains("invalid table name"), "{table}: {err:?}");
    }
    // Only a component's public functions are its API; unknown components are named.
    // (A nested call's error reaches the caller's code as an exception.)
    let message = |out: CallOutcome| out.result.unwrap_err().message;
    let internal = message(call(&rt, "c", Query, "app:callInternal", "{}").await);
    assert!(internal.contains("Could not find function for 'counter/lib:secret'"), "{internal}");
    let missing = message(call(&rt, "c", Query, "app:callMissing", "{}").await);
    assert!(missing.contains("the app mounts no component named \"nowhere\""), "{missing}");
    // Clients reach the app's functions only.
    for path in ["lib:add", "@c0/lib:add", "counter/lib:add"] {
        let out = call(&rt, "c", Mutation, path, r#"{"name": "x", "by": 1}"#).await;
        assert_eq!(code(&out), "FunctionNotFound", "{path}");
    }
}

/// A copy of the components fixture whose `counter` component declares `schema` instead
/// (its packages linked from the guest SDK's), built.
fn components_with_counter_schema(schema: &str) -> Vec<u8> {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == ".kiln" || name == "_generated" {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &to.join(&name));
            } else {
                std::fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
    }
    let app = tempfile::tempdir().unwrap();
    copy(&repo().join("guest-sdk/tests/fixtures/components"), app.path());
    std::os::unix::fs::symlink(repo().join("guest-sdk/node_modules"), app.path().join("node_modules")).unwrap();
    std::fs::write(app.path().join("convex/components/counter/schema.ts"), schema).unwrap();
    let options = kiln_guest_sdk::BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() };
    kiln_guest_sdk::build_app(app.path(), &options).unwrap().component
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_components_schema_change_is_checked_against_its_data_and_backfills_its_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "c", "fixtures/components", config()).await;
    ok(&call(&rt, "c", Mutation, "app:bump", r#"{"name": "a", "first": 1, "second": 2}"#).await);
    let old = rt.deployment("c").unwrap().version().unwrap().id.clone();
    let head = "import { defineSchema, defineTable } from \"convex/server\";\nimport { v } from \"convex/values\";\n";
    // A field the component's documents lack: refused, naming the instance's table; the old
    // version serves on.
    let stricter = format!(
        "{head}export default defineSchema({{ counters: defineTable({{ name: v.string(), value: v.number(), \
         previous: v.optional(v.id(\"counters\")), owner: v.string() }}).index(\"by_name\", [\"name\"]) }});\n"
    );
    let err = rt.deploy("c", &components_with_counter_schema(&stricter)).await.unwrap_err();
    assert_eq!(err.code(), "SchemaViolation");
    assert!(err.to_string().contains("counter/counters"), "{err}");
    assert_eq!(rt.deployment("c").unwrap().version().unwrap().id, old);
    // A new index: added to both instances' tables and backfilled; the app's table of the
    // same name is not touched.
    let indexed = format!(
        "{head}export default defineSchema({{ counters: defineTable({{ name: v.string(), value: v.number(), \
         previous: v.optional(v.id(\"counters\")) }}).index(\"by_name\", [\"name\"]).index(\"by_value\", [\"value\"]) }});\n"
    );
    rt.deploy("c", &components_with_counter_schema(&indexed)).await.unwrap();
    let catalog = rt.deployment("c").unwrap().store().catalog();
    for table in ["counter/counters", "second/counters"] {
        let meta = catalog.table(table).unwrap_or_else(|| panic!("{table}"));
        assert!(meta.indexes.get("by_value").is_some_and(|i| i.ready), "{table}: {:?}", meta.indexes.keys());
    }
    assert!(catalog.table("counters").is_none_or(|t| !t.indexes.contains_key("by_value")));
    let out = call(&rt, "c", Query, "app:read", r#"{"name": "a"}"#).await;
    assert_eq!(kiln_value::to_convex_json(&ok(&out))["second"]["value"], serde_json::json!(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_are_called_and_scheduled_by_handles() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::new(runtime_config(dir.path()), sqlite(dir.path())).unwrap();
    deploy(&rt, "c", "fixtures/components", config()).await;
    let json = |out: &CallOutcome| kiln_value::to_convex_json(&ok(out));

    // The app calls a component's function by handle and schedules it by handle and by
    // reference; the component calls back and schedules the app's internal function by the
    // handle it was given.
    let handle = json(&call(&rt, "c", Mutation, "app:withHandles", r#"{"name": "h"}"#).await);
    assert!(handle.as_str().is_some_and(|h| h.starts_with("function://")), "{handle}");
    let read = || async { json(&call(&rt, "c", Query, "app:read", r#"{"name": "h"}"#).await) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = read().await;
        if now["counter"]["value"] == json!(3.0)
            && now["second"]["value"] == json!(3.0)
            && now["log"] == json!(["now h", "later h"])
        {
            break;
        }
        assert!(Instant::now() < deadline, "scheduled calls did not all run: {now}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A handle from a client's call is an ordinary string: clients still reach only the app.
    let by_client = call(&rt, "c", Mutation, handle.as_str().unwrap(), r#"{"name": "h", "by": 1}"#).await;
    assert_eq!(code(&by_client), "FunctionNotFound");

    // A component's jobs are its own; a child's internal functions get no handle.
    let cancel = json(&call(&rt, "c", Mutation, "app:cancelTheirs", "{}").await);
    assert!(cancel.as_str().is_some_and(|m| m.contains("no scheduled function has the id")), "{cancel}");
    let internal = call(&rt, "c", Query, "app:handleOfInternal", "{}").await;
    let message = internal.result.unwrap_err().message;
    assert!(message.contains("Could not find function for 'counter/lib:secret'"), "{message}");
    // The scheduler runs a component's function as that instance: the metering names it.
    let usage = rt.usage("c").unwrap();
    assert!(usage.functions.contains_key("second/lib:add"), "{:?}", usage.functions.keys());
    // Each instance's share: what the app's calls and the scheduler's ran in it.
    let (counter, second) = (&usage.components["counter"], &usage.components["second"]);
    assert!(counter.calls >= 3 && counter.fuel > 0, "{counter:?}");
    assert!(second.calls >= 1 && second.fuel > 0, "{second:?}");
    assert!(usage.total.fuel > counter.fuel + second.fuel, "{usage:?}");
}
