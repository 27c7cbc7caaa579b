//! The peer benchmark: Kiln against small hand-written Node servers doing the same work, driven
//! by one load generator (this process; the official client's row by a Node script, since
//! that client is JavaScript), each system alone, in alternating rounds. Prints one table.
//!
//! Systems: Kiln with the bank example (`kiln-http`: `/api/mutation` and `/api/query`;
//! `kiln-ws`: the official `ConvexClient` over WebSocket; `kiln-pg-http`: the same HTTP calls
//! to a Kiln whose data is in PostgreSQL), `node-sqlite` (better-sqlite3, WAL,
//! synchronous=FULL) and `node-pg` (`pg` on a throwaway PostgreSQL cluster, durable commits).
//! Then failover: two Kiln hosts share a database; the deployment's owner is killed and the
//! time until a mutation succeeds through the other host is measured (`--tries=`).
//! Workloads: transfers (read two accounts, move 1, write both) from 64 clients over 1,000 and
//! over 10 accounts; an indexed point query from 32 connections with all-distinct arguments
//! (every request runs the query) and with repeated ones.
//!
//! `bash host/server/benches/peers/run [--quick]` installs what is missing and runs it; see the
//! README beside this file.

// A benchmark aborts on the first failure.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../support/mod.rs"]
mod support;

/// The allocator the `kiln` binary uses (the Kiln server runs in this binary's child process).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use support::{Http, ServerProcess, from_int64, int64, pct, self_cpu, serve_child, tree_cpu};

const ACCOUNTS: usize = 1_000;
const BALANCE: i64 = 1_000_000;
const HOT_ACCOUNTS: usize = 10;
const TRANSFER_CLIENTS: usize = 64;
const QUERY_CONNECTIONS: usize = 32;

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/peers")
}

// ---------------------------------------------------------------------------------------------
// The systems.

/// What a measurement runs against.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum System {
    KilnHttp,
    KilnWs,
    KilnPg,
    NodeSqlite,
    NodePg,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::KilnHttp => "kiln-http",
            System::KilnWs => "kiln-ws (official client)",
            System::KilnPg => "kiln-pg-http",
            System::NodeSqlite => "node-sqlite",
            System::NodePg => "node-pg",
        }
    }
}

/// A Node peer server in a child process; it prints `ready <port>` once seeded.
struct NodePeer {
    child: Child,
    addr: SocketAddr,
}

impl NodePeer {
    fn spawn(script: &str, args: &[String]) -> NodePeer {
        let mut child = Command::new("node")
            .arg(here().join(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("node is required");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port: u16 = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
        NodePeer { child, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }
}

impl Drop for NodePeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway PostgreSQL cluster under a temporary directory, on a free loopback port.
struct Postgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl Postgres {
    /// Runs a PostgreSQL program, as the `postgres` user when this process is root (the server
    /// refuses to run as root).
    fn command(&self, program: &str) -> Command {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        }
    }

    fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("pg_ctl").exists())
            .max()
            .expect("PostgreSQL is not installed: `bash host/server/benches/peers/run` installs it");
        let dir = tempfile::tempdir().unwrap();
        // The cluster's user creates its data directory and socket here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let pg = Postgres { bin, dir, port };
        let data = pg.data();
        let status = pg
            .command("initdb")
            .args(["-D", data.to_str().unwrap(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb failed");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={} -c max_connections=200 -c shared_buffers=256MB",
            pg.dir.path().display()
        );
        let status = pg
            .command("pg_ctl")
            .args(["-D", data.to_str().unwrap(), "-l"])
            .arg(pg.dir.path().join("postgres.log"))
            .args(["-w", "-o", &options, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "PostgreSQL did not start; see its log");
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's pid (its backends are its children).
    fn pid(&self) -> u32 {
        let pidfile = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap_or_default();
        pidfile.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data().to_str().unwrap_or_default(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .status();
    }
}

/// Everything under test, started once and kept for all rounds.
struct Systems {
    kiln: ServerProcess,
    kiln_accounts: Arc<Vec<String>>,
    kiln_pg: ServerProcess,
    kiln_pg_accounts: Arc<Vec<String>>,
    sqlite: NodePeer,
    _sqlite_dir: tempfile::TempDir,
    pg: NodePeer,
    postgres: Postgres,
}

impl Systems {
    async fn start() -> Systems {
        let kiln = ServerProcess::spawn();
        let kiln_accounts = Arc::new(bank(&kiln).await);
        let sqlite_dir = tempfile::tempdir().unwrap();
        let seed = [ACCOUNTS.to_string(), BALANCE.to_string()];
        let db = sqlite_dir.path().join("bank.sqlite3").display().to_string();
        let sqlite = NodePeer::spawn("sqlite-server.mjs", &[db, seed[0].clone(), seed[1].clone()]);
        let postgres = Postgres::start();
        let pg = NodePeer::spawn("pg-server.mjs", &[postgres.url(), seed[0].clone(), seed[1].clone()]);
        // Kiln's schemas (`kiln_*`) sit beside the Node server's table in the same database.
        let kiln_pg = ServerProcess::spawn_with(&[("KILN_BENCH_DATABASE", postgres.url())]);
        let kiln_pg_accounts = Arc::new(bank(&kiln_pg).await);
        Systems { kiln, kiln_accounts, kiln_pg, kiln_pg_accounts, sqlite, _sqlite_dir: sqlite_dir, pg, postgres }
    }

    /// The accounts of `system` (Kiln's ids).
    fn accounts(&self, system: System) -> Arc<Vec<String>> {
        if system == System::KilnPg { self.kiln_pg_accounts.clone() } else { self.kiln_accounts.clone() }
    }

    fn addr(&self, system: System) -> SocketAddr {
        match system {
            System::KilnHttp | System::KilnWs => self.kiln.addr,
            System::KilnPg => self.kiln_pg.addr,
            System::NodeSqlite => self.sqlite.addr,
            System::NodePg => self.pg.addr,
        }
    }

    /// CPU used so far by everything that serves `system`.
    fn server_cpu(&self, system: System) -> Duration {
        match system {
            System::KilnHttp | System::KilnWs => self.kiln.cpu(),
            System::KilnPg => self.kiln_pg.cpu() + tree_cpu(self.postgres.pid()),
            System::NodeSqlite => tree_cpu(self.sqlite.child.id()),
            System::NodePg => tree_cpu(self.pg.child.id()) + tree_cpu(self.postgres.pid()),
        }
    }

    /// The sum of all balances, which transfers must keep.
    async fn total(&self, system: System) -> i64 {
        let mut http = Http::connect(self.addr(system)).await;
        match system {
            System::KilnHttp | System::KilnWs | System::KilnPg => {
                from_int64(&http.call("query", "accounts:total", json!({})).await)
            }
            System::NodeSqlite | System::NodePg => http.post("/total", &json!({})).await.as_i64().unwrap(),
        }
    }
}

/// Deploys the bank to `kiln`'s default deployment and opens its accounts; returns their ids.
async fn bank(kiln: &ServerProcess) -> Vec<String> {
    kiln.deploy("examples/bank");
    let mut http = Http::connect(kiln.addr).await;
    let mut accounts = Vec::with_capacity(ACCOUNTS);
    for i in 0..ACCOUNTS {
        let args = json!({"owner": format!("owner-{i}"), "balance": int64(BALANCE)});
        accounts.push(http.call("mutation", "accounts:open", args).await.as_str().unwrap().to_owned());
    }
    accounts
}

// ---------------------------------------------------------------------------------------------
// Workloads and measurements.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Workload {
    Transfers,
    HotTransfers,
    DistinctQueries,
    RepeatedQueries,
}

impl Workload {
    fn name(self) -> String {
        match self {
            Workload::Transfers => format!("transfers, {ACCOUNTS} accounts, {TRANSFER_CLIENTS} clients"),
            Workload::HotTransfers => format!("transfers, {HOT_ACCOUNTS} hot accounts, {TRANSFER_CLIENTS} clients"),
            Workload::DistinctQueries => format!("point query, distinct args, {QUERY_CONNECTIONS} conns"),
            Workload::RepeatedQueries => format!("point query, repeated args, {QUERY_CONNECTIONS} conns"),
        }
    }

    fn systems(self) -> &'static [System] {
        match self {
            Workload::Transfers | Workload::HotTransfers => {
                &[System::KilnHttp, System::KilnWs, System::KilnPg, System::NodeSqlite, System::NodePg]
            }
            Workload::DistinctQueries | Workload::RepeatedQueries => {
                &[System::KilnHttp, System::KilnPg, System::NodeSqlite, System::NodePg]
            }
        }
    }

    /// The short name `--only=` takes.
    fn key(self) -> &'static str {
        match self {
            Workload::Transfers => "transfers",
            Workload::HotTransfers => "hot",
            Workload::DistinctQueries => "distinct",
            Workload::RepeatedQueries => "repeated",
        }
    }

    fn accounts(self) -> usize {
        if self == Workload::HotTransfers { HOT_ACCOUNTS } else { ACCOUNTS }
    }
}

/// One measured run.
#[derive(Clone, Debug)]
struct Measurement {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    server_cpu_us: f64,
    load_cpu_us: f64,
    failed: u64,
}

/// Two distinct account indexes below `n`.
fn pair(n: usize) -> (usize, usize) {
    let mut rng = rand::thread_rng();
    let from = rng.gen_range(0..n);
    (from, (from + rng.gen_range(1..n)) % n)
}

/// The request `system` gets for one operation of `workload`.
fn request(system: System, workload: Workload, accounts: &[String], counter: &AtomicU64) -> (&'static str, Value) {
    let kiln = matches!(system, System::KilnHttp | System::KilnPg);
    match workload {
        Workload::Transfers | Workload::HotTransfers => {
            let (from, to) = pair(workload.accounts());
            if kiln {
                let args = json!({"from": accounts[from], "to": accounts[to], "amount": int64(1)});
                ("/api/mutation", json!({"path": "accounts:move", "args": args}))
            } else {
                ("/transfer", json!({"from": from + 1, "to": to + 1, "amount": 1}))
            }
        }
        Workload::DistinctQueries | Workload::RepeatedQueries => {
            let owner = if workload == Workload::DistinctQueries {
                format!("nobody-{}", counter.fetch_add(1, Ordering::Relaxed))
            } else {
                format!("owner-{}", rand::thread_rng().gen_range(0..ACCOUNTS))
            };
            if kiln {
                ("/api/query", json!({"path": "accounts:ofOwner", "args": {"owner": owner}}))
            } else {
                ("/owner", json!({"owner": owner}))
            }
        }
    }
}

/// Runs `workload` against an HTTP system: a warm-up, then `seconds` measured.
async fn over_http(systems: &Systems, system: System, workload: Workload, warmup: f64, seconds: f64) -> Measurement {
    let connections = match workload {
        Workload::Transfers | Workload::HotTransfers => TRANSFER_CLIENTS,
        _ => QUERY_CONNECTIONS,
    };
    let addr = systems.addr(system);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(rand::thread_rng().r#gen::<u32>() as u64 * 1_000_000));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (stop, counter, accounts) = (stop.clone(), counter.clone(), systems.accounts(system));
        let mut http = Http::connect(addr).await;
        tasks.push(tokio::spawn(async move {
            // (finished at, latency in µs, succeeded)
            let mut done: Vec<(Instant, u64, bool)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (path, body) = request(system, workload, &accounts, &counter);
                let t = Instant::now();
                let (status, answer) = http.send(path, &body).await;
                let kiln = matches!(system, System::KilnHttp | System::KilnPg);
                let ok = status == 200 && (!kiln || answer["status"] == "success");
                done.push((Instant::now(), t.elapsed().as_micros() as u64, ok));
            }
            done
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let (start, server0, load0) = (Instant::now(), systems.server_cpu(system), self_cpu());
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let (end, server1, load1) = (Instant::now(), systems.server_cpu(system), self_cpu());
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut failed = 0;
    for task in tasks {
        for (at, micros, ok) in task.await.unwrap() {
            if at >= start && at < end {
                latencies.push(micros);
                failed += u64::from(!ok);
            }
        }
    }
    measurement(latencies, failed, end - start, server1 - server0, load1 - load0)
}

fn measurement(mut micros: Vec<u64>, failed: u64, elapsed: Duration, server: Duration, load: Duration) -> Measurement {
    micros.sort_unstable();
    let n = micros.len().max(1) as f64;
    Measurement {
        per_second: micros.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(&micros, 0.5),
        p99_ms: pct(&micros, 0.99),
        server_cpu_us: server.as_secs_f64() * 1e6 / n,
        load_cpu_us: load.as_secs_f64() * 1e6 / n,
        failed,
    }
}

/// Runs transfers through the official `ConvexClient` (a Node script with one client per
/// simulated user); the script says when its measured window starts and ends.
async fn official_client(systems: &Systems, workload: Workload, warmup: f64, seconds: f64) -> Measurement {
    let accounts_file = tempfile::NamedTempFile::new().unwrap();
    let accounts = &systems.kiln_accounts[..workload.accounts()];
    std::fs::write(accounts_file.path(), serde_json::to_vec(accounts).unwrap()).unwrap();
    let mut child = Command::new("node")
        .arg(here().join("official-client.mjs"))
        .arg(format!("http://{}", systems.kiln.addr))
        .arg(accounts_file.path())
        .args([TRANSFER_CLIENTS.to_string(), warmup.to_string(), seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node is required");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut server0 = Duration::ZERO;
    let mut result = None;
    while let Some(line) = rx.recv().await {
        if line == "measuring" {
            server0 = systems.server_cpu(System::KilnWs);
        } else if let Some(done) = line.strip_prefix("done ") {
            let server = systems.server_cpu(System::KilnWs) - server0;
            result = Some((serde_json::from_str::<Value>(done).unwrap(), server));
        }
    }
    assert!(child.wait().unwrap().success(), "official-client.mjs failed");
    let (v, server) = result.expect("official-client.mjs reported nothing");
    let ops = v["ops"].as_f64().unwrap().max(1.0);
    Measurement {
        per_second: ops / v["seconds"].as_f64().unwrap(),
        p50_ms: v["p50"].as_f64().unwrap(),
        p99_ms: v["p99"].as_f64().unwrap(),
        server_cpu_us: server.as_secs_f64() * 1e6 / ops,
        load_cpu_us: v["cpuMicros"].as_f64().unwrap() / ops,
        failed: v["failed"].as_u64().unwrap(),
    }
}

// ---------------------------------------------------------------------------------------------
// Failover.

/// How long the failover hosts' leases last.
const FAILOVER_LEASE_MS: u64 = 2000;

/// The hosts `GET /api/kiln/hosts` of `host` lists: (url, deployments) of the live ones.
fn live_hosts(host: &ServerProcess) -> Vec<(String, Vec<String>)> {
    let mut res = ureq::get(format!("http://{}/api/kiln/hosts", host.addr))
        .header("Authorization", format!("Convex {}", host.admin_key))
        .call()
        .unwrap();
    let list: Value = serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
    list["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["alive"] == true)
        .map(|h| {
            let owned = h["deployments"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_owned()).collect();
            (h["url"].as_str().unwrap().to_owned(), owned)
        })
        .collect()
}

/// Two hosts on a database of their own: `tries` times, kills the owner of the deployment and
/// measures (in µs) until a mutation through the other host succeeds, then starts a new host.
async fn failover(postgres: &Postgres, tries: usize) -> Vec<u64> {
    let port = postgres.port.to_string();
    let status = postgres
        .command("psql")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-qc", "CREATE DATABASE failover"])
        .status()
        .unwrap();
    assert!(status.success(), "creating the failover database failed");
    let url = format!("postgres://postgres@127.0.0.1:{port}/failover");
    let env = [("KILN_BENCH_DATABASE", url), ("KILN_BENCH_LEASE_MS", FAILOVER_LEASE_MS.to_string())];
    let mut hosts = [ServerProcess::spawn_with(&env), ServerProcess::spawn_with(&env)];
    hosts[0].deploy("examples/bank");
    let mut times = Vec::with_capacity(tries);
    let open = json!({"path": "accounts:open", "args": {"owner": "failover", "balance": int64(1)}});
    for _ in 0..tries {
        // Both hosts alive, the deployment served by one of them.
        let owner = loop {
            let live = live_hosts(&hosts[0]);
            let owner = live.iter().find(|(_, owned)| owned.iter().any(|d| d == "default")).map(|(url, _)| url.clone());
            if live.len() == 2
                && let Some(url) = owner
            {
                break hosts.iter().position(|h| format!("http://{}", h.addr) == url).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let survivor = 1 - owner;
        let mut http = Http::connect(hosts[survivor].addr).await;
        let (status, _) = http.send("/api/mutation", &open).await;
        assert_eq!(status, 200, "the deployment serves before the kill");
        hosts[owner].child.kill().unwrap();
        let killed = Instant::now();
        loop {
            let (status, answer) = http.send("/api/mutation", &open).await;
            if status == 200 && answer["status"] == "success" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(killed.elapsed().as_micros() as u64);
        eprintln!("failover: {:.0} ms", killed.elapsed().as_secs_f64() * 1e3);
        hosts[owner] = ServerProcess::spawn_with(&env);
    }
    times
}

// ---------------------------------------------------------------------------------------------
// The table.

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn print_table(results: &BTreeMap<(Workload, System), Vec<Measurement>>, rounds: usize) {
    println!();
    println!("Medians of {rounds} alternating round(s); CPU in µs per operation.");
    println!();
    println!(
        "| workload | system | ops/s | p50 ms | p99 ms | server CPU | load gen CPU | failed | Kiln HTTP / WS / PG ÷ this |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let rate = |w: Workload, s: System| results.get(&(w, s)).map(|m| median(m.iter().map(|m| m.per_second)));
    for (&(workload, system), runs) in results {
        let med = |f: fn(&Measurement) -> f64| median(runs.iter().map(f));
        let ratio = match system {
            System::NodeSqlite | System::NodePg => {
                let own = med(|m| m.per_second);
                let of = |s| rate(workload, s).map(|r| format!("{:.2}×", r / own)).unwrap_or_else(|| "—".into());
                format!("{} / {} / {}", of(System::KilnHttp), of(System::KilnWs), of(System::KilnPg))
            }
            _ => String::new(),
        };
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {} | {} |",
            workload.name(),
            system.name(),
            med(|m| m.per_second),
            med(|m| m.p50_ms),
            med(|m| m.p99_ms),
            med(|m| m.server_cpu_us),
            med(|m| m.load_cpu_us),
            runs.iter().map(|m| m.failed).sum::<u64>(),
            ratio
        );
    }
}

fn main() {
    if let Ok(data) = std::env::var("KILN_BENCH_SERVE") {
        return serve_child(&data);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, warmup, mut seconds) = if quick { (1, 0.5, 2.0) } else { (3, 1.0, 10.0) };
    // `--only=distinct,hot` picks workloads, `--kiln` leaves the peers out, `--seconds=60`
    // lengthens each row (e.g. to attach `perf` to the Kiln process, which prints its pid).
    let flag = |name: &str| std::env::args().find_map(|a| a.strip_prefix(name).map(str::to_owned));
    let only: Option<Vec<String>> = flag("--only=").map(|o| o.split(',').map(str::to_owned).collect());
    let kiln_only = std::env::args().any(|a| a == "--kiln");
    if let Some(s) = flag("--seconds=") {
        seconds = s.parse().expect("--seconds=<number>");
    }
    kiln_server::raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let systems = Systems::start().await;
        eprintln!("kiln server pid {}", systems.kiln.child.id());
        let workloads: Vec<Workload> =
            [Workload::Transfers, Workload::HotTransfers, Workload::DistinctQueries, Workload::RepeatedQueries]
                .into_iter()
                .filter(|w| only.as_ref().is_none_or(|o| o.iter().any(|k| k == w.key())))
                .collect();
        let mut results: BTreeMap<(Workload, System), Vec<Measurement>> = BTreeMap::new();
        for round in 0..rounds {
            for &workload in &workloads {
                // Alternate which system goes first from round to round.
                let mut order: Vec<System> = workload
                    .systems()
                    .iter()
                    .copied()
                    .filter(|s| !kiln_only || matches!(s, System::KilnHttp | System::KilnWs | System::KilnPg))
                    .collect();
                let turn = round % order.len();
                order.rotate_left(turn);
                for system in order {
                    let m = match system {
                        System::KilnWs => official_client(&systems, workload, warmup, seconds).await,
                        _ => over_http(&systems, system, workload, warmup, seconds).await,
                    };
                    eprintln!(
                        "round {}: {} / {}: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, failed {}",
                        round + 1,
                        workload.name(),
                        system.name(),
                        m.per_second,
                        m.p50_ms,
                        m.p99_ms,
                        m.failed
                    );
                    results.entry((workload, system)).or_default().push(m);
                }
            }
        }
        for system in [System::KilnHttp, System::KilnPg, System::NodeSqlite, System::NodePg] {
            if kiln_only && !matches!(system, System::KilnHttp | System::KilnPg) {
                continue;
            }
            assert_eq!(
                systems.total(system).await,
                ACCOUNTS as i64 * BALANCE,
                "{}: money not conserved",
                system.name()
            );
        }
        print_table(&results, rounds);
        if only.as_ref().is_none_or(|o| o.iter().any(|k| k == "failover")) {
            let tries = flag("--tries=").map_or(if quick { 2 } else { 10 }, |t| t.parse().expect("--tries=<number>"));
            let mut times = failover(&systems.postgres, tries).await;
            times.sort_unstable();
            println!();
            println!(
                "Failover, owner killed → first successful mutation through the other host ({tries} tries, \
                 lease {FAILOVER_LEASE_MS} ms, poll 200 ms): p50 {:.0} ms, min {:.0} ms, max {:.0} ms",
                pct(&times, 0.5),
                pct(&times, 0.0),
                pct(&times, 1.0)
            );
        }
    });
}
