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

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

fn report(name: &str, value: String) {
    println!("{name:<72} {value}");
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap().to_path_buf()
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// "p50 … ms, p99 … ms, max … ms" of latencies in microseconds.
fn spread(mut micros: Vec<u64>) -> String {
    micros.sort_unstable();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        pct(&micros, 0.5),
        pct(&micros, 0.99),
        pct(&micros, 1.0),
        micros.len()
    )
}

fn int64(n: i64) -> Value {
    json!({"$integer": base64::engine::general_purpose::STANDARD.encode(n.to_le_bytes())})
}

fn from_int64(v: &Value) -> i64 {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v["$integer"].as_str().unwrap()).unwrap();
    i64::from_le_bytes(bytes.try_into().unwrap())
}

// ---------------------------------------------------------------------------------------------
// The server process.

fn serve_child(data: &str) {
    kiln_server::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut config = kiln_server::ServerConfig::default();
        config.runtime.data_dir = PathBuf::from(data);
        config.runtime.cache_dir = Some(cache_dir());
        let persistence = Arc::new(kiln_sqlite::SqliteFactory {
            data_dir: config.runtime.data_dir.clone(),
            options: kiln_sqlite::SqliteOptions::default(),
        });
        let (server, first) = kiln_server::Server::start(config, persistence).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("ready {} {}", listener.local_addr().unwrap(), first.default_admin_key.unwrap());
        std::io::stdout().flush().unwrap();
        let server = Arc::new(server);
        let serving = server.clone();
        tokio::spawn(async move { serving.serve(listener).await });
        // Runs until the parent closes our stdin (or dies).
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
        server.shutdown().await;
    });
}

struct ServerProcess {
    child: std::process::Child,
    addr: SocketAddr,
    admin_key: String,
    _data: tempfile::TempDir,
}

impl ServerProcess {
    fn spawn() -> ServerProcess {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("KILN_BENCH_SERVE", data.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let mut parts = line.split_whitespace().skip(1);
        let addr = parts.next().expect("the server did not start").parse().unwrap();
        let admin_key = parts.next().unwrap().to_owned();
        ServerProcess { child, addr, admin_key, _data: data }
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time the server process has used (user + system).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start at index 2.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let (utime, stime) = (fields.get(11).copied().unwrap_or(0), fields.get(12).copied().unwrap_or(0));
        Duration::from_secs_f64((utime + stime) as f64 / ticks)
    }

    fn deploy(&self, app: &str) {
        let options = kiln_guest_sdk::BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() };
        let built = kiln_guest_sdk::build_app(&repo().join(app), &options).unwrap();
        let body = json!({
            "component": base64::engine::general_purpose::STANDARD.encode(&built.component),
            "manifest": serde_json::to_value(&built.manifest).unwrap(),
        });
        let res = ureq::post(format!("http://{}/api/kiln/deploy", self.addr))
            .header("Authorization", format!("Convex {}", self.admin_key))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time this process has used (user + system).
fn self_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes only into the struct passed to it.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let t = |tv: libc::timeval| Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000);
    t(usage.ru_utime) + t(usage.ru_stime)
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// One keep-alive HTTP/1.1 connection.
struct Http {
    sender: SendRequest<Full<Bytes>>,
}

impl Http {
    async fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Http { sender }
    }

    async fn post(&mut self, path: &str, body: &Value) -> Value {
        self.sender.ready().await.unwrap();
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(status, 200, "{path}: {value}");
        value
    }

    async fn call(&mut self, kind: &str, path: &str, args: Value) -> Value {
        let body = self.post(&format!("/api/{kind}"), &json!({"path": path, "args": args})).await;
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["value"].clone()
    }
}

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
