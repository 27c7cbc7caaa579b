//! What the server benchmarks share: the Kiln server in a child process (the bench binary
//! re-executed with `KILN_BENCH_SERVE`), a keep-alive HTTP client, CPU accounting, reporting.

// Each benchmark uses a part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

pub fn report(name: &str, value: String) {
    println!("{name:<72} {value}");
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap().to_path_buf()
}

pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// "p50 … ms, p99 … ms, max … ms" of latencies in microseconds.
pub fn spread(mut micros: Vec<u64>) -> String {
    micros.sort_unstable();
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        pct(&micros, 0.5),
        pct(&micros, 0.99),
        pct(&micros, 1.0),
        micros.len()
    )
}

pub fn int64(n: i64) -> Value {
    json!({"$integer": base64::engine::general_purpose::STANDARD.encode(n.to_le_bytes())})
}

pub fn from_int64(v: &Value) -> i64 {
    let bytes = base64::engine::general_purpose::STANDARD.decode(v["$integer"].as_str().unwrap()).unwrap();
    i64::from_le_bytes(bytes.try_into().unwrap())
}

// ---------------------------------------------------------------------------------------------
// The server process.

pub fn serve_child(data: &str) {
    kiln_server::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut config = kiln_server::ServerConfig::default();
        config.runtime.data_dir = PathBuf::from(data);
        config.runtime.cache_dir = Some(cache_dir());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // `KILN_BENCH_DATABASE`: a host of that PostgreSQL database (as `kiln serve --database`),
        // its leases lasting `KILN_BENCH_LEASE_MS`.
        let (server, _) = match std::env::var("KILN_BENCH_DATABASE") {
            Ok(url) => {
                let mut options = kiln_postgres::PostgresOptions::new(&url);
                options.lock_wait = Duration::ZERO;
                if let Some(ms) = std::env::var("KILN_BENCH_LEASE_MS").ok().and_then(|v| v.parse().ok()) {
                    options.lease_ttl = Duration::from_millis(ms);
                }
                let lease = options.lease_ttl;
                let factory = kiln_postgres::PostgresFactory::new(options).unwrap();
                let cluster = kiln_postgres::cluster::PostgresCluster::open(&factory).await.unwrap();
                let poll = Duration::from_millis(200);
                let factory = Arc::new(factory);
                let member =
                    kiln_server::cluster::Member::new(Arc::new(cluster), format!("http://{addr}"), poll, lease)
                        .with_blobs(factory.clone());
                kiln_server::Server::start_member(config, factory, Some(member)).await.unwrap()
            }
            Err(_) => {
                let persistence = Arc::new(kiln_sqlite::SqliteFactory {
                    data_dir: config.runtime.data_dir.clone(),
                    options: kiln_sqlite::SqliteOptions::default(),
                });
                kiln_server::Server::start(config, persistence).await.unwrap()
            }
        };
        // The instance key administers every deployment (also one another host created).
        let key = std::fs::read_to_string(Path::new(data).join("admin_key")).unwrap();
        println!("ready {addr} {}", key.trim());
        std::io::stdout().flush().unwrap();
        let server = Arc::new(server);
        let serving = server.clone();
        tokio::spawn(async move { serving.serve(listener).await });
        // Runs until the parent closes our stdin (or dies).
        let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await;
        server.shutdown().await;
    });
}

/// The Kiln server in a child process, with its data in a temporary directory.
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub admin_key: String,
    _data: tempfile::TempDir,
}

impl ServerProcess {
    /// A server on embedded SQLite.
    pub fn spawn() -> ServerProcess {
        ServerProcess::spawn_with(&[])
    }

    /// A server with `env` (`KILN_BENCH_DATABASE`, `KILN_BENCH_LEASE_MS`) set.
    pub fn spawn_with(env: &[(&str, String)]) -> ServerProcess {
        let data = tempfile::tempdir().unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("KILN_BENCH_SERVE", data.path())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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

    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time the server process has used (user + system).
    pub fn cpu(&self) -> Duration {
        tree_cpu(self.child.id())
    }

    pub fn deploy(&self, app: &str) {
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

/// User + system CPU ticks of a process from `/proc/<pid>/stat`: its own, and its reaped
/// children's.
fn stat_ticks(pid: u32) -> Option<(u32, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start with the state.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<u64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    let field = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some((field(1) as u32, field(11) + field(12), field(13) + field(14)))
}

/// CPU time (user + system) of a process and all its descendants, living and reaped: a
/// PostgreSQL cluster's backends come and go with connections.
pub fn tree_cpu(root: u32) -> Duration {
    let mut parents: Vec<(u32, u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
            && let Some((ppid, own, _)) = stat_ticks(pid)
        {
            parents.push((pid, ppid, own));
        }
    }
    let Some((_, own, reaped)) = stat_ticks(root) else { return Duration::ZERO };
    let mut ticks = own + reaped;
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        for &(pid, ppid, own) in &parents {
            if ppid == tree[i] && !tree.contains(&pid) {
                tree.push(pid);
                ticks += own;
            }
        }
        i += 1;
    }
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / per_second)
}

/// CPU time this process has used (user + system).
pub fn self_cpu() -> Duration {
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
pub struct Http {
    sender: SendRequest<Full<Bytes>>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Http { sender }
    }

    pub async fn post(&mut self, path: &str, body: &Value) -> Value {
        let (status, value) = self.send(path, body).await;
        assert_eq!(status, 200, "{path}: {value}");
        value
    }

    /// POSTs JSON and returns the status and the JSON answer.
    pub async fn send(&mut self, path: &str, body: &Value) -> (u16, Value) {
        self.sender.ready().await.unwrap();
        let req = hyper::Request::post(path)
            .header(hyper::header::HOST, "127.0.0.1")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let res = self.sender.send_request(req).await.unwrap();
        let status = res.status().as_u16();
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    /// Calls a Convex function through `/api/<kind>`; panics unless it succeeds.
    pub async fn call(&mut self, kind: &str, path: &str, args: Value) -> Value {
        let body = self.post(&format!("/api/{kind}"), &json!({"path": path, "args": args})).await;
        assert_eq!(body["status"], "success", "{path}: {body}");
        body["value"].clone()
    }
}
