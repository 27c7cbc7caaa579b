//! The server in-process on a real socket, with the node tests' app built by `kiln build`,
//! driven by a raw WebSocket client (to check the protocol's ordering rules message by
//! message) and plain HTTP.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use kiln_runtime::RuntimeConfig;
use kiln_server::{Server, ServerConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message, WebSocket};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().parent().unwrap().to_path_buf()
}

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("component-cache")
}

/// The deploy body of the test app (`tests/node/app`), built once per run.
fn deploy_body() -> &'static Value {
    static BODY: OnceLock<Value> = OnceLock::new();
    BODY.get_or_init(|| {
        let app = repo().join("host/server/tests/node/app");
        let options = kiln_guest_sdk::BuildOptions { cache_dir: Some(cache_dir()), ..Default::default() };
        let out = kiln_guest_sdk::build_app(&app, &options).unwrap_or_else(|e| panic!("building the test app: {e}"));
        json!({
            "component": base64::engine::general_purpose::STANDARD.encode(&out.component),
            "manifest": serde_json::to_value(&out.manifest).unwrap(),
        })
    })
}

/// A server on its own tokio runtime, with the test app deployed to the default deployment.
struct TestServer {
    rt: tokio::runtime::Runtime,
    server: Arc<Server>,
    addr: std::net::SocketAddr,
    admin_key: String,
    instance_key: String,
    _dir: Option<tempfile::TempDir>,
}

impl TestServer {
    fn start(adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TestServer::open(dir.path(), None, adjust);
        t._dir = Some(dir);
        let (status, body) = t.post("/api/kiln/deploy", deploy_body(), true);
        assert_eq!(status, 200, "deploy: {body}");
        t
    }

    /// A server on the data directory `data`; `keys` are the (admin, instance) keys of an earlier
    /// server there (a new directory shows them once).
    fn open(data: &Path, keys: Option<(String, String)>, adjust: impl FnOnce(&mut ServerConfig)) -> TestServer {
        let mut config = ServerConfig {
            runtime: RuntimeConfig {
                data_dir: data.to_path_buf(),
                cache_dir: Some(cache_dir()),
                worker_threads: 2,
                ..RuntimeConfig::default()
            },
            rerun_concurrency: 2,
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let persistence = Arc::new(kiln_sqlite::SqliteFactory {
            data_dir: config.runtime.data_dir.clone(),
            options: kiln_sqlite::SqliteOptions::default(),
        });
        let (server, first) = rt.block_on(Server::start(config, persistence)).unwrap();
        let server = Arc::new(server);
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = server.clone();
        rt.spawn(async move { serving.serve(listener).await });
        let (admin_key, instance_key) =
            keys.unwrap_or_else(|| (first.default_admin_key.unwrap(), first.instance_key.unwrap()));
        TestServer { rt, server, addr, admin_key, instance_key, _dir: None }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into()
    }

    /// POSTs JSON; returns the status and the body (JSON, or a string of the text).
    fn post(&self, path: &str, body: &Value, admin: bool) -> (u16, Value) {
        self.post_raw(path, body.to_string(), admin)
    }

    fn post_raw(&self, path: &str, body: String, admin: bool) -> (u16, Value) {
        let mut req = Self::agent().post(self.url(path)).header("Content-Type", "application/json");
        if admin {
            req = req.header("Authorization", format!("Convex {}", self.admin_key));
        }
        let mut res = req.send(body).unwrap();
        let status = res.status().as_u16();
        let text = res.body_mut().with_config().limit(64 << 20).read_to_string().unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    fn get_text(&self, path: &str) -> (u16, String) {
        let mut res = Self::agent()
            .get(self.url(path))
            .header("Authorization", format!("Convex {}", self.admin_key))
            .call()
            .unwrap();
        (res.status().as_u16(), res.body_mut().read_to_string().unwrap())
    }

    /// Calls a function over HTTP and returns its value (Convex JSON); panics on failure.
    fn call(&self, kind: &str, path: &str, args: Value) -> Value {
        let (status, body) = self.post(&format!("/api/{kind}"), &json!({"path": path, "args": args}), false);
        assert_eq!((status, &body["status"]), (200, &json!("success")), "{kind} {path}: {body}");
        body["value"].clone()
    }

    /// How many times the function log saw `path` run.
    fn runs(&self, path: &str) -> usize {
        let (status, text) = self.get_text("/api/kiln/logs");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["path"] == path && e["cached"] != true)
            .count()
    }

    fn socket(&self) -> Client {
        Client::connect(self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.rt.block_on(self.server.shutdown());
    }
}

/// A raw protocol client.
struct Client {
    ws: WebSocket<TcpStream>,
    query_set: u32,
}

impl Client {
    fn connect(addr: std::net::SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let (ws, _) = tungstenite::client(format!("ws://{addr}/api/1.48.0/sync"), stream).unwrap();
        Client { ws, query_set: 0 }
    }

    fn send(&mut self, msg: Value) {
        self.ws.send(Message::text(msg.to_string())).unwrap();
    }

    fn hello(&mut self, session: &str) {
        self.send(json!({"type": "Connect", "sessionId": session, "connectionCount": 0, "lastCloseReason": null}));
    }

    fn add(&mut self, query_id: u32, path: &str, args: Value) {
        self.modify(vec![json!({"type": "Add", "queryId": query_id, "udfPath": path, "args": [args]})]);
    }

    fn modify(&mut self, modifications: Vec<Value>) {
        let base = self.query_set;
        self.query_set += 1;
        self.send(json!({
            "type": "ModifyQuerySet", "baseVersion": base, "newVersion": base + 1, "modifications": modifications,
        }));
    }

    /// The next protocol message (skipping pings); `None` once the socket is closed.
    fn next(&mut self) -> Option<Value> {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    if v["type"] != "Ping" {
                        return Some(v);
                    }
                }
                Ok(Message::Close(_)) | Err(tungstenite::Error::ConnectionClosed) => return None,
                Ok(_) => {}
                Err(e) => panic!("socket error: {e}"),
            }
        }
    }

    /// Reads until a message of `kind` arrives; returns it and what came before.
    fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let m = self.next().unwrap_or_else(|| panic!("closed while waiting for {kind}; got {before:?}"));
            if m["type"] == kind {
                return (m, before);
            }
            before.push(m);
        }
    }

    /// Reads until the socket closes; returns the FatalError message among what came.
    fn fatal_error(&mut self) -> String {
        let mut error = None;
        while let Some(m) = self.next() {
            if m["type"] == "FatalError" {
                error = m["error"].as_str().map(str::to_owned);
            }
        }
        error.expect("a FatalError before the close")
    }
}

/// The value of `query_id` in a Transition, if it was updated there.
fn updated(transition: &Value, query_id: u32) -> Option<Value> {
    transition["modifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["type"] == "QueryUpdated" && m["queryId"] == query_id)
        .map(|m| m["value"].clone())
}

fn ts(version: &Value) -> u64 {
    let bytes = base64::engine::general_purpose::STANDARD.decode(version["ts"].as_str().unwrap()).unwrap();
    u64::from_le_bytes(bytes.try_into().unwrap())
}

#[test]
fn protocol_violations_get_a_fatal_error_and_a_close() {
    let server = TestServer::start(|_| {});
    let mut c = server.socket();
    c.send(json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": []}));
    assert!(c.fatal_error().contains("first message must be Connect"));

    let mut c = server.socket();
    c.hello("s-1");
    c.send(json!({"type": "ModifyQuerySet", "baseVersion": 3, "newVersion": 4, "modifications": []}));
    assert!(c.fatal_error().starts_with("InvalidQuerySetVersion"));

    let mut c = server.socket();
    c.hello("s-2");
    c.ws.send(Message::text("{not json")).unwrap();
    assert!(c.fatal_error().starts_with("InvalidMessage"));

    let mut c = server.socket();
    c.hello("s-3");
    c.add(1, "counter:get", json!({"name": "a"}));
    c.add(1, "counter:get", json!({"name": "b"}));
    assert!(c.fatal_error().contains("added twice"));

    // The server is unharmed.
    assert_eq!(server.call("query", "counter:get", json!({"name": "a"})), json!(0.0));
}

#[test]
fn an_oversize_message_is_closed_with_a_reason() {
    let server = TestServer::start(|c| c.max_ws_message_bytes = 64 << 10);
    let mut c = server.socket();
    c.hello("big");
    let huge = json!({"type": "Mutation", "requestId": 0, "udfPath": "counter:increment", "args": [{"name": "x".repeat(100 << 10)}]});
    c.send(huge);
    let close = loop {
        match c.ws.read() {
            Ok(Message::Close(frame)) => break frame.expect("a close frame with a code"),
            Ok(_) => {}
            Err(e) => panic!("the socket ended without a close frame: {e}"),
        }
    };
    assert_eq!(u16::from(close.code), 1009);
    assert!(close.reason.contains("MessageTooLarge") && close.reason.contains("65536"), "{}", close.reason);
    // The server is unharmed.
    assert_eq!(server.call("query", "counter:get", json!({"name": "a"})), json!(0.0));
}

#[test]
fn a_socket_may_not_exceed_its_query_limit() {
    let server = TestServer::start(|c| c.max_queries_per_socket = 3);
    let mut c = server.socket();
    c.hello("s");
    for i in 0..3 {
        c.add(i, "counter:get", json!({"name": format!("c{i}")}));
    }
    // The server may answer each ModifyQuerySet with its own Transition; all three must be
    // accepted (the socket stays open) and the last one reaches query set 3.
    loop {
        let (t, _) = c.until("Transition");
        if t["endVersion"]["querySet"] == 3 {
            break;
        }
    }
    c.add(3, "counter:get", json!({"name": "c3"}));
    assert!(c.fatal_error().starts_with("TooManyQueries"));
}

#[test]
fn mutation_response_precedes_the_transition_that_covers_it() {
    let server = TestServer::start(|_| {});
    let mut c = server.socket();
    c.hello("ordering");
    c.add(0, "counter:get", json!({"name": "n"}));
    c.add(1, "counter:get", json!({"name": "busy"}));
    let (mut initial, mut end) = (None, json!(null));
    while end["querySet"] != 2 {
        let (t, _) = c.until("Transition");
        initial = updated(&t, 0).or(initial);
        end = t["endVersion"].clone();
    }
    assert_eq!(initial, Some(json!(0.0)));

    // Another writer commits to a counter the socket also watches over HTTP meanwhile, so
    // Transitions keep coming. (Not to the mutation's own counter: on a slow machine the slow
    // mutation could then lose every retry to it.)
    let writer = {
        let url = server.url("/api/mutation");
        std::thread::spawn(move || {
            for _ in 0..20 {
                let body = json!({"path": "counter:increment", "args": {"name": "busy"}}).to_string();
                TestServer::agent().post(&url).header("Content-Type", "application/json").send(body).unwrap();
            }
        })
    };
    for request_id in 0..5u32 {
        c.send(json!({
            "type": "Mutation", "requestId": request_id, "udfPath": "counter:increment",
            "args": [{"name": "n", "spin": 20000}],
        }));
        let (response, before) = c.until("MutationResponse");
        assert_eq!(response["requestId"], request_id);
        assert_eq!(response["success"], true, "{response}");
        let mutation_ts = ts(&json!({"ts": response["ts"]}));
        for t in &before {
            assert_eq!(t["type"], "Transition");
            assert_eq!(t["startVersion"], end, "transitions chain");
            assert!(ts(&t["endVersion"]) < mutation_ts, "a transition past the mutation came before its response");
            end = t["endVersion"].clone();
        }
        // Then a Transition reaching the mutation's timestamp, with a value that includes it.
        loop {
            let (t, _) = c.until("Transition");
            assert_eq!(t["startVersion"], end, "transitions chain");
            end = t["endVersion"].clone();
            if ts(&end) >= mutation_ts {
                let seen = updated(&t, 0).map(|v| v.as_f64().unwrap());
                let returned = response["result"].as_f64().unwrap();
                assert!(seen.is_none_or(|v| v >= returned), "the covering transition shows {seen:?} < {returned}");
                break;
            }
        }
    }
    writer.join().unwrap();
}

#[test]
fn one_execution_serves_every_socket_and_only_invalidated_queries_rerun() {
    let server = TestServer::start(|_| {});
    let mut other = server.socket();
    other.hello("other");
    other.add(0, "counter:get", json!({"name": "elsewhere"}));
    other.until("Transition");
    let mut sockets: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = server.socket();
            c.hello(&format!("fan-{i}"));
            c.add(7, "counter:get", json!({"name": "shared"}));
            c
        })
        .collect();
    for c in &mut sockets {
        let (t, _) = c.until("Transition");
        assert_eq!(updated(&t, 7), Some(json!(0.0)));
    }
    let before = server.runs("counter:get");
    assert!(before <= 3, "20 sockets on one query ran it {before} times (plus the other query)");

    server.call("mutation", "counter:increment", json!({"name": "shared"}));
    for c in &mut sockets {
        let (t, _) = c.until("Transition");
        assert_eq!(updated(&t, 7), Some(json!(1.0)));
    }
    assert_eq!(server.runs("counter:get") - before, 1, "one re-run for 20 sockets; the untouched query is not re-run");
}

#[test]
fn large_transitions_arrive_in_chunks() {
    let server = TestServer::start(|c| c.transition_chunk_bytes = 4096);
    let big = "x".repeat(50_000);
    let mut c = server.socket();
    c.hello("chunks");
    c.add(0, "values:echo", json!({"value": big}));
    let mut parts = Vec::new();
    loop {
        let m = c.next().unwrap();
        assert_eq!(m["type"], "TransitionChunk", "{m}");
        assert_eq!(m["partNumber"], parts.len());
        parts.push(m["chunk"].as_str().unwrap().to_owned());
        if parts.len() == m["totalParts"].as_u64().unwrap() as usize {
            break;
        }
    }
    assert!(parts.len() >= 12, "{} parts", parts.len());
    let t: Value = serde_json::from_str(&parts.concat()).unwrap();
    assert_eq!(t["type"], "Transition");
    assert_eq!(updated(&t, 0), Some(json!(big)));
}

#[test]
fn http_formats_batches_and_request_errors() {
    let server = TestServer::start(|c| c.max_body_bytes = 64 << 10);
    let args =
        json!({"value": {"n": {"$integer": base64::engine::general_purpose::STANDARD.encode(7i64.to_le_bytes())}}});
    // Convex JSON by default on /api/query; clean JSON (int64 as a string) with format=json and on /api/run.
    let (status, body) = server.post("/api/query", &json!({"path": "values:echo", "args": args}), false);
    assert_eq!(status, 200);
    assert_eq!(body["value"]["n"]["$integer"], "BwAAAAAAAAA=");
    let (_, body) = server.post("/api/query", &json!({"path": "values:echo", "args": args, "format": "json"}), false);
    assert_eq!(body["value"]["n"], "7");
    let (_, body) = server.post("/api/run/values/echo", &json!({"args": args}), false);
    assert_eq!(body["value"]["n"], "7");

    let (status, body) = server.post(
        "/api/query_batch",
        &json!({"queries": [{"path": "counter:get", "args": {"name": "q"}}, {"path": "nope:nothing", "args": {}}]}),
        false,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["value"], json!(0.0));
    assert_eq!(body["results"][1]["status"], "error");

    let (status, body) = server.post("/api/query_ts", &json!({}), false);
    assert_eq!(status, 200, "{body}");
    let before = body["ts"].as_str().unwrap().to_owned();
    server.call("mutation", "counter:increment", json!({"name": "q"}));
    let (_, body) = server.post("/api/query_ts", &json!({}), false);
    assert_ne!(body["ts"].as_str().unwrap(), before);
    // A read at the older timestamp sees the older state.
    let (status, body) =
        server.post("/api/query_at_ts", &json!({"path": "counter:get", "args": {"name": "q"}, "ts": before}), false);
    assert_eq!((status, &body["value"]), (200, &json!(0.0)), "{body}");

    // Request errors: coded JSON with a 4xx status.
    let (status, body) = server.post_raw("/api/query", "{oops".into(), false);
    assert_eq!((status, body["code"].as_str()), (400, Some("BadRequest")), "{body}");
    let (status, body) = server.post("/api/query", &json!({"args": {}}), false);
    assert_eq!((status, body["code"].as_str()), (400, Some("BadRequest")), "a body without a path: {body}");
    assert!(body.to_string().contains("path"), "{body}");
    let (status, body) =
        server.post("/api/query", &json!({"path": "values:echo", "args": {"value": "y".repeat(70_000)}}), false);
    assert_eq!((status, body["code"].as_str()), (413, Some("BodyTooLarge")), "{body}");
    let (status, body) = server.post("/d/missing/api/query", &json!({"path": "counter:get", "args": {}}), false);
    assert_eq!((status, body["code"].as_str()), (404, Some("DeploymentNotFound")), "{body}");
    // A function's own failure is 560 with the Convex error body.
    let (status, body) = server.post("/api/mutation", &json!({"path": "values:fail", "args": {}}), false);
    assert_eq!((status, &body["status"]), (560, &json!("error")), "{body}");
    assert_eq!(body["errorData"]["code"], "BROKEN");
    let (status, version) = server.get_text("/version");
    assert_eq!((status, version.starts_with("kiln ")), (200, true), "{version}");
}

#[test]
fn concurrent_requests_beyond_the_deployment_limit_are_refused() {
    let server = TestServer::start(|c| c.max_inflight_per_deployment = 1);
    let url = server.url("/api/mutation");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Slow mutations back to back keep the one slot busy most of the time.
    let slow = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut done = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = json!({"path": "counter:increment", "args": {"name": "slow", "spin": 200_000}}).to_string();
                let res = TestServer::agent().post(&url).header("Content-Type", "application/json").send(body).unwrap();
                if res.status() == 200 {
                    done += 1;
                }
            }
            done
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let (status, body) = server.post("/api/query", &json!({"path": "counter:get", "args": {"name": "x"}}), false);
        if status == 429 {
            break body;
        }
        assert!(Instant::now() < deadline, "never refused");
        std::thread::sleep(Duration::from_millis(2));
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(refused["code"], "TooManyConcurrentRequests");
    let done = slow.join().unwrap();
    assert!(done >= 1);
    assert_eq!(server.call("query", "counter:get", json!({"name": "slow"})), json!(done as f64));
}

#[test]
fn metrics_count_requests_calls_commits_and_connections() {
    let server = TestServer::start(|c| c.metrics_token = Some("scrape-token".into()));
    // The metrics name every deployment: neither anonymous readers nor a deployment's own
    // key may read them; the instance key and the configured scrape token may.
    let metrics_with = |auth: Option<String>| {
        let mut req = TestServer::agent().get(server.url("/metrics"));
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        let mut res = req.call().unwrap();
        (res.status().as_u16(), res.body_mut().read_to_string().unwrap())
    };
    assert_eq!(metrics_with(None).0, 401);
    assert_eq!(metrics_with(Some(format!("Convex {}", server.admin_key))).0, 401, "a deployment's key");
    assert_eq!(metrics_with(Some("Bearer wrong".into())).0, 401);
    assert_eq!(metrics_with(Some("Bearer scrape-token".into())).0, 200);
    assert_eq!(metrics_with(Some(format!("Convex {}", server.instance_key))).0, 200);

    server.call("mutation", "counter:increment", json!({"name": "m"}));
    server.call("query", "counter:get", json!({"name": "m"}));
    let mut c = server.socket();
    c.hello("metrics");
    c.add(0, "counter:get", json!({"name": "m"}));
    c.until("Transition");
    let (status, text) = metrics_with(Some(format!("Convex {}", server.instance_key)));
    assert_eq!(status, 200);
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
    };
    assert!(value("kiln_function_calls_total{deployment=\"default\",kind=\"mutation\",outcome=\"ok\"}") >= 1.0);
    assert!(value("kiln_function_calls_total{deployment=\"default\",kind=\"query\",outcome=\"ok\"}") >= 2.0);
    assert!(value("kiln_commits_total{deployment=\"default\"}") >= 1.0);
    assert!(value("kiln_fuel_consumed_total{deployment=\"default\"}") > 0.0);
    assert_eq!(value("kiln_connections{deployment=\"default\"}"), 1.0);
    assert!(value("kiln_subscriptions{deployment=\"default\"}") >= 1.0);
    assert!(text.contains("kiln_http_requests_total{deployment=\"default\",endpoint=\"mutation\",status=\"200\"}"));
}

#[test]
fn stalled_and_idle_connections_are_closed() {
    use std::io::{Read, Write};
    let server = TestServer::start(|c| {
        c.header_timeout = Duration::from_millis(300);
        c.body_timeout = Duration::from_millis(300);
    });
    // Reads until the server closes the connection; fails if it keeps it open for 10 s.
    let until_closed = |stream: &mut TcpStream| -> String {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap_or_else(|e| panic!("the server kept the connection open: {e}"));
        String::from_utf8_lossy(&got).into_owned()
    };
    // Connected, silent.
    let mut idle = TcpStream::connect(server.addr).unwrap();
    assert_eq!(until_closed(&mut idle), "");
    // A request head that never ends.
    let mut head = TcpStream::connect(server.addr).unwrap();
    head.write_all(b"POST /api/query HTTP/1.1\r\nHost: kiln\r\nContent-Type: app").unwrap();
    until_closed(&mut head);
    // A body that stops arriving: refused with its own code, and the connection closed.
    let mut body = TcpStream::connect(server.addr).unwrap();
    body.write_all(b"POST /api/query HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"path\"")
        .unwrap();
    let answer = until_closed(&mut body);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeout"), "{answer}");
    // A kept-alive connection idle after its request.
    let mut kept = TcpStream::connect(server.addr).unwrap();
    kept.write_all(b"GET /version HTTP/1.1\r\nHost: kiln\r\n\r\n").unwrap();
    let answer = until_closed(&mut kept);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // The server still serves.
    assert_eq!(server.call("query", "counter:get", json!({"name": "still"})), json!(0.0));
}

/// A local HTTP server answering `answer(path)` to each request; counts connections.
fn local_http(answer: impl Fn(&str) -> String + Send + 'static) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
            let _ = stream.write_all(answer(&path).as_bytes());
        }
    });
    (port, connections)
}

#[test]
fn actions_fetch_public_addresses_and_local_ones_only_when_allowed() {
    let server = TestServer::start(|_| {});
    let (refused_port, refused_connections) =
        local_http(|_| "HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nprivate".to_owned());
    let (port, _) = local_http(move |path| match path {
        "/redirect" => format!(
            "HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{refused_port}/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
        _ => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello".to_owned(),
    });
    let fetch =
        |url: String| server.post("/api/action", &json!({"path": "net:fetchText", "args": {"url": url}}), false);
    let local = format!("http://127.0.0.1:{port}/");

    // By default a loopback address is refused, after resolving, with a message saying why.
    let (status, body) = fetch(local.clone());
    assert_eq!(status, 560, "{body}");
    let message = body["errorMessage"].as_str().unwrap();
    assert!(message.contains("a loopback address") && message.contains("allow the host"), "{message}");
    let (status, body) = fetch(format!("http://localhost:{port}/"));
    assert_eq!(status, 560, "a name resolving to loopback: {body}");

    // Allowed through the deployment's configuration.
    let config = |fetch: Value| server.post("/api/kiln/config", &json!({ "fetch": fetch }), true);
    let (status, body) = config(json!({"allowedHosts": [format!("127.0.0.1:{port}")]}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = fetch(local.clone());
    assert_eq!((status, &body["value"]), (200, &json!({"status": 200.0, "body": "hello"})), "{body}");
    let (status, shown) = server.get_text("/api/kiln/config");
    assert_eq!(status, 200);
    assert!(shown.contains(&format!("127.0.0.1:{port}")), "{shown}");

    // A redirect from the allowed server to a local port that is not allowed is refused
    // before anything connects to it.
    let (status, body) = fetch(format!("http://127.0.0.1:{port}/redirect"));
    assert_eq!(status, 560, "{body}");
    assert!(body["errorMessage"].as_str().unwrap().contains("a loopback address"), "{body}");
    assert_eq!(
        refused_connections.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the refused server was never reached"
    );

    // A denied host stays refused even when allowed; bad entries are refused by name.
    let (status, _) = config(json!({"allowedHosts": [format!("127.0.0.1:{port}")], "deniedHosts": ["127.0.0.1"]}));
    assert_eq!(status, 200);
    let (status, body) = fetch(local);
    assert_eq!(status, 560);
    assert!(body["errorMessage"].as_str().unwrap().contains("denied"), "{body}");
    let (status, body) = config(json!({"allowedHosts": ["http://example.com/path"]}));
    assert_eq!((status, &body["code"]), (400, &json!("BadRequest")), "{body}");
}

/// A tmpfs mounted on a temporary directory, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Mounts one of `size`; `None` (the test reports itself skipped) where this process may not
    /// mount, except under CI, which must be able to.
    fn mount(size: &str, test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = Self::run(&["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"], dir.path());
        if mounted {
            return Some(Tmpfs(dir));
        }
        assert!(std::env::var_os("CI").is_none(), "{test}: CI must be able to mount a tmpfs");
        eprintln!("SKIPPED {test}: cannot mount a tmpfs here (not root?)");
        None
    }

    fn run(args: &[&str], dir: &Path) -> bool {
        let status =
            std::process::Command::new("mount").args(args).arg(dir).stderr(std::process::Stdio::null()).status();
        status.is_ok_and(|s| s.success())
    }

    /// Remounts; a file system with a file still open for writing is busy, and the server
    /// that had it open may still be closing its files.
    fn remount(&self, mode: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !Self::run(&["-o", &format!("remount,{mode}")], self.0.path()) {
            assert!(Instant::now() < deadline, "remount {mode}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_read_only_or_full_data_directory_still_starts_and_serves_reads() {
    let name = "a_read_only_or_full_data_directory_still_starts_and_serves_reads";
    let Some(fs) = Tmpfs::mount("64m", name) else { return };
    let data = fs.0.path().join("data");
    let bump =
        |t: &TestServer| t.post("/api/mutation", &json!({"path": "counter:increment", "args": {"name": "ro"}}), false);
    let keys = {
        let t = TestServer::open(&data, None, |_| {});
        let (status, body) = t.post("/api/kiln/deploy", deploy_body(), true);
        assert_eq!(status, 200, "deploy: {body}");
        for _ in 0..3 {
            assert_eq!(bump(&t).1["status"], "success");
        }
        (t.admin_key.clone(), t.instance_key.clone())
    };

    // Read-only: the server starts, queries answer, mutations are refused with the code.
    fs.remount("ro");
    let t = TestServer::open(&data, Some(keys.clone()), |_| {});
    assert_eq!(t.call("query", "counter:get", json!({"name": "ro"})), json!(3.0));
    let (_, refused) = bump(&t);
    assert_eq!(refused["status"], "error");
    assert!(refused["errorMessage"].as_str().unwrap().contains("StorageReadOnly"), "{refused}");
    drop(t);

    // Full: the same, with writes back once space is freed.
    fs.remount("rw");
    let mut filler = std::fs::File::create(fs.0.path().join("filler")).unwrap();
    let block = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut filler, &block).is_ok() {}
    let t = TestServer::open(&data, Some(keys), |_| {});
    assert_eq!(t.call("query", "counter:get", json!({"name": "ro"})), json!(3.0));
    let (_, refused) = bump(&t);
    let message = refused["errorMessage"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("StorageFull"), "{refused}");
    drop(filler);
    std::fs::remove_file(fs.0.path().join("filler")).unwrap();
    // Writes resume by themselves (the file is opened for writing again within a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = bump(&t);
        if body["status"] == "success" {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume once there was space: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(t.call("query", "counter:get", json!({"name": "ro"})), json!(4.0));
}

/// A push request as the `convex` CLI sends it (here uncompressed), of these modules.
fn push_request(modules: &[(&str, &str, &str)], components: Value) -> Value {
    let changed: Vec<Value> =
        modules.iter().map(|(path, source, env)| json!({"path": path, "source": source, "environment": env})).collect();
    json!({
        "adminKey": "", "dryRun": false, "functions": "convex/",
        "appDefinition": {
            "definition": null, "dependencies": [], "schema": null,
            "changedModules": changed, "unchangedModuleHashes": [], "udfServerVersion": "1.48.0",
        },
        "componentDefinitions": components, "nodeDependencies": [],
    })
}

#[test]
fn pushes_are_bounded_and_what_kiln_does_not_run_is_refused_by_name() {
    let server = TestServer::start(|c| {
        c.push.load_time = Duration::from_millis(500);
        c.push.max_source_bytes = 64 << 10;
    });
    let fine = "export const x = 1;";
    let refused = |body: Value| {
        let (status, body) = server.post("/api/deploy2/start_push", &body, true);
        assert_eq!(status, 400, "{body}");
        (body["code"].as_str().unwrap_or_default().to_owned(), body["message"].as_str().unwrap_or_default().to_owned())
    };
    // Module-level code that never finishes is stopped at the load time limit.
    let (code, message) =
        refused(push_request(&[("spin.js", "while (true) {}\nexport const y = 1;", "isolate")], json!([])));
    assert_eq!(code, "AppLoadFailed", "{message}");
    assert!(message.contains("took longer than"), "{message}");
    // Too much source.
    let big = format!("export const s = \"{}\";", "x".repeat(70 << 10));
    let (code, message) = refused(push_request(&[("big.js", &big, "isolate")], json!([])));
    assert_eq!(code, "PushTooLarge", "{message}");
    // Node.js modules and components, each named.
    let (code, message) = refused(push_request(&[("a.js", fine, "isolate"), ("n.js", fine, "node")], json!([])));
    assert_eq!(code, "Unsupported");
    assert!(message.contains("\"use node\" in convex/n"), "{message}");
    let module = |path: &str, env: &str| json!({"path": path, "source": fine, "environment": env});
    let component = json!([{
        "definitionPath": "../node_modules/@convex-dev/ratelimiter/dist/component",
        "definition": module("convex.config.js", "isolate"), "dependencies": [], "schema": null,
        "functions": [module("n.js", "node")], "udfServerVersion": "1.48.0",
    }]);
    let mut with_config = push_request(&[("a.js", fine, "isolate")], component.clone());
    with_config["appDefinition"]["definition"] = module("convex.config.js", "isolate");
    let (code, message) = refused(with_config);
    assert_eq!(code, "Unsupported");
    assert!(message.contains("\"use node\" in n of component ../node_modules/@convex-dev/ratelimiter"), "{message}");
    // Component definitions without the app's convex.config, or not as the CLI sends them.
    let (code, message) = refused(push_request(&[("a.js", fine, "isolate")], component));
    assert_eq!(code, "BadRequest");
    assert!(message.contains("without the app's convex.config"), "{message}");
    let (code, _) = refused(push_request(&[("a.js", fine, "isolate")], json!([{"definitionPath": "x"}])));
    assert_eq!(code, "BadRequest");
    // Paths a module may not have, and a hash the server never saw.
    let (code, _) = refused(push_request(&[("../up.js", fine, "isolate")], json!([])));
    assert_eq!(code, "NotAnApp");
    let mut unknown = push_request(&[("a.js", fine, "isolate")], json!([]));
    unknown["appDefinition"]["unchangedModuleHashes"] =
        json!([{"path": "b.js", "environment": "isolate", "sha256": "00"}]);
    let (code, message) = refused(unknown);
    assert_eq!(code, "UnknownModuleHash", "{message}");
    // A module that throws while loading names its error.
    let (code, message) =
        refused(push_request(&[("boom.js", "throw new Error(\"boom at load\");", "isolate")], json!([])));
    assert_eq!(code, "AppLoadFailed");
    assert!(message.contains("boom at load"), "{message}");
    // Without the admin key nothing is compiled.
    let (status, _) =
        server.post("/api/deploy2/start_push", &push_request(&[("a.js", fine, "isolate")], json!([])), false);
    assert_eq!(status, 401);
    // None of it changed what serves.
    assert_eq!(server.call("query", "counter:get", json!({"name": "a"})), json!(0.0));
}
