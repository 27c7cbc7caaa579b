//! The server benchmark. The server runs in a child process (this binary re-executed with
//! `KILN_BENCH_SERVE`), with the bank example deployed on embedded SQLite; this process is
//! the load, over loopback:
//! - resident memory per idle WebSocket connection;
//! - mutation-to-subscriber latency with 1,000 and 10,000 sockets subscribed to one query;
//! - an indexed point query over HTTP: latency alone, and req/s with 32 keep-alive connections
//!   (arguments repeat, so results come from the query cache; and all-distinct arguments,
//!   so every request runs the function);
//! - keynote-style transfers (two accounts read, debited and credited per mutation) from 64
//!   WebSocket clients.
//!
//! `cargo bench -p kiln-server --bench server` (`-- --quick` for a shorter run).

// A benchmark aborts on the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use support::{Http, ServerProcess, from_int64, int64, report, self_cpu, serve_child, spread};

type Socket = WebSocketStream<TcpStream>;

async fn socket(addr: SocketAddr, session: &str) -> Socket {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/api/1.48.0/sync"), stream).await.unwrap();
    let hello = json!({"type": "Connect", "sessionId": session, "connectionCount": 0, "lastCloseReason": null});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    ws
}

/// The next text message.
async fn next_text(ws: &mut Socket) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return t.as_str().to_owned(),
            Some(Ok(_)) => {}
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// Opens `n` sockets, at most 256 handshakes at a time (the listen backlog is finite).
async fn open_sockets(addr: SocketAddr, n: usize, subscribe: Option<Value>) -> Vec<Socket> {
    futures::stream::iter(0..n)
        .map(|i| {
            let subscribe = subscribe.clone();
            async move {
                let mut ws = socket(addr, &format!("bench-{i}")).await;
                if let Some(args) = subscribe {
                    let add = json!({
                        "type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
                        "modifications": [{"type": "Add", "queryId": 0, "udfPath": "accounts:get", "args": [args]}],
                    });
                    ws.send(Message::text(add.to_string())).await.unwrap();
                    while !next_text(&mut ws).await.contains("QueryUpdated") {}
                }
                ws
            }
        })
        .buffer_unordered(256)
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// The measurements.

async fn idle_memory(server: &ServerProcess, n: usize) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = server.rss_kib();
    let sockets = open_sockets(server.addr, n, None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    report(
        &format!("memory per idle WebSocket connection ({n} sockets; target <= 20 KB)"),
        format!(
            "{:.1} KB (server RSS {} -> {} MiB)",
            (after - before) as f64 * 1.024 / n as f64,
            before / 1024,
            after / 1024
        ),
    );
    drop(sockets);
}

async fn fan_out(server: &ServerProcess, accounts: &[String], subscribers: usize, rounds: usize) {
    let watched = accounts[0].clone();
    let sockets = open_sockets(server.addr, subscribers, Some(json!({"id": watched}))).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(m)) = ws.next().await {
                    if let Message::Text(t) = m
                        && t.as_str().contains("QueryUpdated")
                    {
                        let _ = tx.send(Instant::now());
                    }
                }
            })
        })
        .collect();
    let mut http = Http::connect(server.addr).await;
    let mut latencies = Vec::with_capacity(subscribers * rounds);
    let mut lasts = Vec::with_capacity(rounds);
    let (server_cpu, own_cpu) = (server.cpu(), self_cpu());
    for _ in 0..rounds {
        let args = json!({"from": watched, "to": accounts[1], "amount": int64(1)});
        let sent = Instant::now();
        http.call("mutation", "accounts:transfer", args).await;
        let mut last = Duration::ZERO;
        for _ in 0..subscribers {
            let got = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await.unwrap().unwrap();
            let d = got.duration_since(sent);
            last = last.max(d);
            latencies.push(d.as_micros() as u64);
        }
        lasts.push(last.as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (server_cpu, own_cpu) = (server.cpu() - server_cpu, self_cpu() - own_cpu);
    for r in readers {
        r.abort();
    }
    report(
        &format!("mutation-to-subscriber latency, {subscribers} subscribers, {rounds} mutations"),
        spread(latencies),
    );
    report(&format!("  time until the last of {subscribers} subscribers has it"), spread(lasts));
    report(
        "  CPU per mutation: server / load generator",
        format!(
            "{:.1} ms / {:.1} ms (incl. 200 ms pauses)",
            server_cpu.as_secs_f64() * 1e3 / rounds as f64,
            own_cpu.as_secs_f64() * 1e3 / rounds as f64
        ),
    );
}

/// Lets the load tasks run for `seconds`, stops them, and gathers their latencies.
async fn stop_after(seconds: f64, stop: &AtomicBool, tasks: Vec<tokio::task::JoinHandle<Vec<u64>>>) -> Vec<u64> {
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Point queries from `connections` keep-alive connections for `seconds`; `owner` picks the
/// argument of each request.
async fn point_queries(
    addr: SocketAddr,
    connections: usize,
    seconds: f64,
    owner: Arc<dyn Fn() -> String + Send + Sync>,
) -> (f64, Vec<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (stop, owner) = (stop.clone(), owner.clone());
            tokio::spawn(async move {
                let mut http = Http::connect(addr).await;
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    let v = http.call("query", "accounts:ofOwner", json!({"owner": owner()})).await;
                    lat.push(t.elapsed().as_micros() as u64);
                    std::hint::black_box(v);
                }
                lat
            })
        })
        .collect();
    let all = stop_after(seconds, &stop, tasks).await;
    (all.len() as f64 / started.elapsed().as_secs_f64(), all)
}

async fn transfers(server: &ServerProcess, accounts: Arc<Vec<String>>, clients: usize, seconds: f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let sockets = open_sockets(server.addr, clients, None).await;
    let started = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            let (stop, failed, accounts) = (stop.clone(), failed.clone(), accounts.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut request_id = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let (from, to) = {
                        let mut rng = rand::thread_rng();
                        let from = rng.gen_range(0..accounts.len());
                        let to = (from + rng.gen_range(1..accounts.len())) % accounts.len();
                        (from, to)
                    };
                    let args = json!({"from": accounts[from], "to": accounts[to], "amount": int64(1)});
                    let msg = json!({"type": "Mutation", "requestId": request_id, "udfPath": "accounts:transfer", "args": [args]});
                    let t = Instant::now();
                    ws.send(Message::text(msg.to_string())).await.unwrap();
                    loop {
                        let text = next_text(&mut ws).await;
                        if text.contains("\"MutationResponse\"") {
                            let v: Value = serde_json::from_str(&text).unwrap();
                            assert_eq!(v["requestId"], request_id);
                            if v["success"] != true {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                            break;
                        }
                    }
                    lat.push(t.elapsed().as_micros() as u64);
                    request_id += 1;
                }
                lat
            })
        })
        .collect();
    let all = stop_after(seconds, &stop, tasks).await;
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    report(&format!("transfers over WebSocket, {clients} clients, durable"), format!("{rate:.0}/s"));
    report("  transfer round-trip", spread(all));
    report("  failed transfers", failed.load(Ordering::Relaxed).to_string());
}

fn main() {
    if let Ok(data) = std::env::var("KILN_BENCH_SERVE") {
        return serve_child(&data);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // Names of sections to run (memory, fanout, http, transfers); all when none is given.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |section: &str| only.is_empty() || only.iter().any(|o| o == section);
    kiln_server::raise_open_file_limit();
    let server = ServerProcess::spawn();
    server.deploy("examples/bank");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        if run("memory") {
            idle_memory(&server, if quick { 2_000 } else { 10_000 }).await;
        }

        let n_accounts = 1000;
        let mut http = Http::connect(server.addr).await;
        let mut accounts = Vec::with_capacity(n_accounts);
        for i in 0..n_accounts {
            let id = http
                .call("mutation", "accounts:open", json!({"owner": format!("owner-{i}"), "balance": int64(1_000_000)}))
                .await;
            accounts.push(id.as_str().unwrap().to_owned());
        }
        let accounts = Arc::new(accounts);

        let rounds = if quick { 5 } else { 20 };
        if run("fanout") {
            fan_out(&server, &accounts, 1_000, rounds).await;
            if !quick {
                fan_out(&server, &accounts, 10_000, rounds).await;
            }
        }

        let seconds = if quick { 2.0 } else { 8.0 };
        if run("http") {
            http_point_queries(server.addr, n_accounts, seconds).await;
        }
        if run("transfers") {
            transfers(&server, accounts.clone(), 64, seconds).await;
        }
        let total = http.call("query", "accounts:total", json!({})).await;
        assert_eq!(from_int64(&total), n_accounts as i64 * 1_000_000, "transfers must conserve money");
        report("server RSS at the end", format!("{} MiB", server.rss_kib() / 1024));
    });
}

async fn http_point_queries(addr: SocketAddr, n_accounts: usize, seconds: f64) {
    let repeat: Arc<dyn Fn() -> String + Send + Sync> =
        Arc::new(move || format!("owner-{}", rand::thread_rng().gen_range(0..n_accounts)));
    let (_, lat) = point_queries(addr, 1, seconds / 2.0, repeat.clone()).await;
    report("indexed point query over HTTP, 1 connection (target p50 <= 1 ms)", spread(lat));
    let (rate, lat) = point_queries(addr, 32, seconds, repeat).await;
    report("indexed point query over HTTP, 32 connections (target >= 10,000/s)", format!("{rate:.0}/s"));
    report("  latency under that load", spread(lat));
    let counter = Arc::new(AtomicU64::new(0));
    let distinct: Arc<dyn Fn() -> String + Send + Sync> =
        Arc::new(move || format!("nobody-{}", counter.fetch_add(1, Ordering::Relaxed)));
    let (rate, lat) = point_queries(addr, 32, seconds, distinct).await;
    report("  with all-distinct arguments (every request runs the function)", format!("{rate:.0}/s"));
    report("  latency under that load", spread(lat));
}
