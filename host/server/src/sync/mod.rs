//! WebSocket sync (convex-compat §3): one task per socket, pulling consistent results from
//! the deployment's [`hub::Hub`].
//!
//! Ordering rules the official client relies on:
//! - every Transition starts at the version the previous one ended at, and is computed from
//!   one hub view (one snapshot);
//! - mutations of a socket run one at a time, in order; while one runs no Transition is sent,
//!   so its `MutationResponse{ts}` always precedes any Transition past `ts`, and afterwards a
//!   Transition at or past `ts` follows (the client resolves the mutation only then);
//! - a resent mutation (same session and request id) is applied once: the runtime keeps an
//!   idempotency record in the mutation's own transaction.

pub mod hub;
pub mod protocol;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use kiln_runtime::{CallOutcome, CallRequest, FunctionKind};
use kiln_store::Timestamp;
use kiln_value::Value;
use serde_json::Value as JsonValue;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};

use self::hub::{QueryKey, QueryResult, QuerySpec};
use self::protocol::{ClientMessage, QuerySetModification, ServerMessage, StateModification, StateVersion, encode_ts};
use crate::auth::Caller;
use crate::routing::Deployment;
use crate::{AppState, DeploymentState};

/// `GET /api/<version>/sync`: upgrades to a WebSocket.
pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    ws: WebSocketUpgrade,
) -> Result<Response, crate::ServerError> {
    let dep = state.deployment(&d)?;
    // The reader accepts up to twice the limit, so that a message just over it is read whole
    // and refused with a close frame: refused while unread bytes wait in the socket, the close
    // would be followed by a reset that can destroy it before the client reads it.
    let max = state.config.max_ws_message_bytes.saturating_mul(2);
    Ok(ws
        .max_message_size(max)
        .max_frame_size(max)
        // A small read buffer keeps idle connections cheap; it grows when a message needs it.
        // Frames fed together (a MutationResponse and its Transition) leave in one write at
        // the flush that follows them: with no write buffer each frame was its own `send`.
        .read_buffer_size(4096)
        .write_buffer_size(64 << 10)
        .on_upgrade(move |socket| run(state, dep, socket)))
}

/// A finished mutation or action.
enum Done {
    Mutation(u32, Box<CallOutcome>),
    Action(u32, Box<CallOutcome>),
}

struct SocketQuery {
    path: String,
    component: String,
    args: Result<Value, String>,
    /// The journal the client sent with the query.
    journal: Option<String>,
    key: QueryKey,
    last_sent: Option<Arc<QueryResult>>,
}

/// Why a socket ends.
enum End {
    /// The client went away or the connection broke.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
    /// A protocol violation: FatalError, then close.
    Fatal(String),
}

struct Session {
    state: Arc<AppState>,
    dep: Arc<DeploymentState>,
    watcher: u64,
    notify: Arc<Notify>,
    session_id: Option<String>,
    /// Whether Connect said this is the session's first connection (`connectionCount` 0).
    first_connection: bool,
    caller: Caller,
    identity_version: u32,
    query_set_version: u32,
    queries: BTreeMap<u32, SocketQuery>,
    removed: Vec<u32>,
    sent: StateVersion,
    sent_ts: Timestamp,
    mutations: VecDeque<(u32, String, String, Vec<JsonValue>)>,
    mutation_running: bool,
    pending_ts: Option<Timestamp>,
    actions_running: usize,
    clock_skew: Option<f64>,
    done_tx: mpsc::UnboundedSender<Done>,
    outbox: Vec<String>,
    transitions: u64,
}

fn now_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// Pre-serialized JSON embedded in a message (it was produced by our own encoder).
fn raw(json: String) -> Box<RawValue> {
    RawValue::from_string(json).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

fn args_of(args: &[JsonValue]) -> Result<Value, String> {
    match args {
        [one] => crate::api::parse_args(Some(one)),
        _ => Err(format!("expected one arguments object, got {}", args.len())),
    }
}

impl Session {
    fn push(&mut self, msg: &ServerMessage<'_>) {
        match serde_json::to_string(msg) {
            Ok(text) => self.outbox.push(text),
            Err(e) => tracing::error!(error = %e, "could not encode a server message"),
        }
    }

    fn spec(&self, path: &str, component: &str, args: &Result<Value, String>, journal: Option<String>) -> QuerySpec {
        QuerySpec {
            path: path.to_owned(),
            component: component.to_owned(),
            args: args.clone(),
            caller: self.caller.clone(),
            journal,
        }
    }

    async fn handle(&mut self, text: &str) -> Result<(), End> {
        let msg: ClientMessage = serde_json::from_str(text)
            .map_err(|e| End::Fatal(format!("InvalidMessage: could not parse a message: {e}")))?;
        if self.session_id.is_none() && !matches!(msg, ClientMessage::Connect { .. }) {
            return Err(End::Fatal("InvalidMessage: the first message must be Connect".into()));
        }
        match msg {
            ClientMessage::Connect {
                session_id,
                connection_count,
                last_close_reason,
                max_observed_timestamp,
                client_ts,
            } => {
                if self.session_id.is_some() {
                    return Err(End::Fatal("InvalidMessage: Connect was sent twice".into()));
                }
                tracing::debug!(%session_id, connection_count, ?last_close_reason, "client connected");
                self.session_id = Some(session_id);
                // A session's first connection has sent no mutation before: nothing to replay.
                self.first_connection = connection_count == 0;
                self.clock_skew = client_ts.map(|c| now_ms() - c);
                if let Some(seen) = max_observed_timestamp.as_deref().and_then(protocol::decode_ts) {
                    self.check_observed(seen).await?;
                }
            }
            ClientMessage::ModifyQuerySet { base_version, new_version, modifications } => {
                if base_version != self.query_set_version || new_version <= base_version {
                    return Err(End::Fatal(format!(
                        "InvalidQuerySetVersion: ModifyQuerySet from {base_version} to {new_version}, but the query set is at {}",
                        self.query_set_version
                    )));
                }
                for m in modifications {
                    match m {
                        QuerySetModification::Add { query_id, udf_path, args, component_path, journal } => {
                            if self.queries.contains_key(&query_id) {
                                return Err(End::Fatal(format!("InvalidQuerySet: query {query_id} was added twice")));
                            }
                            if self.queries.len() >= self.state.config.max_queries_per_socket {
                                return Err(End::Fatal(format!(
                                    "TooManyQueries: a connection may subscribe to at most {} queries",
                                    self.state.config.max_queries_per_socket
                                )));
                            }
                            let args = args_of(&args);
                            let component = component_path.unwrap_or_default();
                            let spec = self.spec(&udf_path, &component, &args, journal.clone());
                            let key = self.dep.hub.subscribe(spec, self.watcher, self.notify.clone());
                            self.removed.retain(|id| *id != query_id);
                            let query = SocketQuery { path: udf_path, component, args, journal, key, last_sent: None };
                            self.queries.insert(query_id, query);
                        }
                        QuerySetModification::Remove { query_id } => {
                            if let Some(q) = self.queries.remove(&query_id) {
                                self.dep.hub.unsubscribe(&q.key, self.watcher);
                                self.removed.push(query_id);
                            }
                        }
                    }
                }
                self.query_set_version = new_version;
            }
            ClientMessage::Authenticate { base_version, token_type, value, impersonating } => {
                if base_version != self.identity_version {
                    return Err(End::Fatal(format!(
                        "InvalidIdentityVersion: Authenticate based on {base_version}, but the identity is at {}",
                        self.identity_version
                    )));
                }
                let caller = match token_type.as_str() {
                    "None" => Ok(Caller::Anonymous),
                    "User" => {
                        let config = self.dep.auth_config();
                        self.dep.verifier.verify(&config, value.as_deref().unwrap_or_default()).await.map(Caller::User)
                    }
                    "Admin" => {
                        crate::api::admin_caller(&self.state, &self.dep.name, value.as_deref().unwrap_or_default())
                            .map(|c| match (c, impersonating) {
                                (Caller::Admin(None), Some(JsonValue::Object(attrs))) => {
                                    Caller::Admin(Some(crate::api::acting_identity(&attrs)))
                                }
                                (c, _) => c,
                            })
                            .map_err(|e| e.to_string())
                    }
                    other => Err(format!("unknown token type {other:?}")),
                };
                match caller {
                    Ok(caller) => self.set_caller(caller, base_version + 1),
                    Err(error) => {
                        self.push(&ServerMessage::AuthError { error, base_version, auth_update_attempted: true });
                        return Err(End::Close(1000, "AuthError".into()));
                    }
                }
            }
            ClientMessage::Mutation { request_id, udf_path, args, component_path } => {
                if self.mutations.len() >= self.state.config.max_queued_mutations_per_socket {
                    let reason = "TooManyConcurrentRequests: too many mutations queued on this connection".to_owned();
                    self.respond_failure(FunctionKind::Mutation, request_id, reason);
                } else {
                    self.mutations.push_back((request_id, udf_path, component_path.unwrap_or_default(), args));
                }
            }
            ClientMessage::Action { request_id, udf_path, args, component_path } => {
                if self.actions_running >= self.state.config.max_actions_per_socket {
                    let reason = "TooManyConcurrentRequests: too many actions running on this connection".to_owned();
                    self.respond_failure(FunctionKind::Action, request_id, reason);
                } else {
                    self.actions_running += 1;
                    self.spawn_call(
                        FunctionKind::Action,
                        request_id,
                        udf_path,
                        component_path.unwrap_or_default(),
                        args,
                    );
                }
            }
            ClientMessage::Event { event_type } => tracing::debug!(%event_type, "client event"),
        }
        Ok(())
    }

    /// A client that saw a newer timestamp than this server has must not be served older
    /// data: wait briefly for the store to catch up, else close (it reconnects later).
    async fn check_observed(&self, seen: Timestamp) -> Result<(), End> {
        let Some(rd) = self.state.runtime.deployment(&self.dep.name) else { return Ok(()) };
        if seen <= rd.store().published_ts() {
            return Ok(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), rd.store().wait_for(seen)).await;
        if seen <= rd.store().published_ts() {
            return Ok(());
        }
        Err(End::Close(1011, "InternalServerError: the client has seen a newer timestamp than this server has".into()))
    }

    /// A new identity: every query is re-subscribed under it and sent again.
    fn set_caller(&mut self, caller: Caller, version: u32) {
        self.caller = caller;
        self.identity_version = version;
        let ids: Vec<u32> = self.queries.keys().copied().collect();
        for id in ids {
            let Some(q) = self.queries.get(&id) else { continue };
            // The pages keep the bounds the client has seen.
            let journal = q.last_sent.as_ref().and_then(|r| r.journal.clone()).or_else(|| q.journal.clone());
            let spec = self.spec(&q.path, &q.component, &q.args, journal);
            let old = q.key.clone();
            let key = self.dep.hub.subscribe(spec, self.watcher, self.notify.clone());
            if key != old {
                self.dep.hub.unsubscribe(&old, self.watcher);
            }
            if let Some(q) = self.queries.get_mut(&id) {
                q.key = key;
                q.last_sent = None;
            }
        }
    }

    fn respond_failure(&mut self, kind: FunctionKind, request_id: u32, message: String) {
        let result = raw(JsonValue::String(crate::api::failure_message(&message)).to_string());
        let msg = match kind {
            FunctionKind::Mutation => ServerMessage::MutationResponse {
                request_id,
                success: false,
                result: &result,
                ts: None,
                log_lines: &[],
                error_data: None,
            },
            _ => ServerMessage::ActionResponse {
                request_id,
                success: false,
                result: &result,
                log_lines: &[],
                error_data: None,
            },
        };
        self.push(&msg);
    }

    fn spawn_call(&self, kind: FunctionKind, request_id: u32, path: String, component: String, args: Vec<JsonValue>) {
        let (state, dep, tx) = (self.state.clone(), self.dep.clone(), self.done_tx.clone());
        let (caller, first_connection) = (self.caller.clone(), self.first_connection);
        let key = self.session_id.as_ref().map(|s| format!("{s}/{request_id}"));
        tokio::spawn(async move {
            let out = match (args_of(&args), dep.inflight.clone().try_acquire_owned()) {
                (Err(message), _) => CallOutcome {
                    result: Err(kiln_runtime::CallError::new("InvalidArgs", message)),
                    ..Default::default()
                },
                (Ok(_), _) if !component.is_empty() && !caller.is_admin() => CallOutcome {
                    result: Err(kiln_runtime::CallError::new(
                        "Unauthorized",
                        format!("calling a function of component {component:?} needs an admin key"),
                    )),
                    ..Default::default()
                },
                (Ok(_), Err(_)) => CallOutcome {
                    result: Err(kiln_runtime::CallError::new(
                        "TooManyConcurrentRequests",
                        format!("TooManyConcurrentRequests: too many requests for deployment {:?}", dep.name),
                    )),
                    ..Default::default()
                },
                (Ok(args), Ok(_permit)) => {
                    let mut req = CallRequest::new(kind, &path, args);
                    req.component = component;
                    req.identity = caller.identity();
                    req.internal = caller.is_admin();
                    match kind {
                        FunctionKind::Mutation => {
                            req.idempotency_key = key;
                            req.idempotency_fresh = first_connection;
                        }
                        _ => req.request_id = key.unwrap_or_default(),
                    }
                    let out = state.runtime.call(&dep.name, req).await;
                    state.observe(&dep, kind, &path, &out);
                    out
                }
            };
            let done = match kind {
                FunctionKind::Mutation => Done::Mutation(request_id, Box::new(out)),
                _ => Done::Action(request_id, Box::new(out)),
            };
            let _ = tx.send(done);
        });
    }

    fn start_next_mutation(&mut self) {
        if self.mutation_running {
            return;
        }
        if let Some((request_id, path, component, args)) = self.mutations.pop_front() {
            self.mutation_running = true;
            self.spawn_call(FunctionKind::Mutation, request_id, path, component, args);
        }
    }

    fn finished(&mut self, done: Done) {
        let (kind, request_id, out) = match done {
            Done::Mutation(id, out) => (FunctionKind::Mutation, id, out),
            Done::Action(id, out) => (FunctionKind::Action, id, out),
        };
        let log_lines = crate::logs::log_lines(&out);
        let (success, result, error_data) = match &out.result {
            Ok(v) => (true, raw(kiln_value::to_convex_json(v).to_string()), None),
            Err(e) => (
                false,
                raw(JsonValue::String(crate::api::failure_message(&e.message)).to_string()),
                e.data.as_ref().map(|d| raw(kiln_value::to_convex_json(d).to_string())),
            ),
        };
        match kind {
            FunctionKind::Mutation => {
                self.mutation_running = false;
                let ts = if success { out.commit_ts } else { None };
                if let Some(ts) = ts {
                    self.pending_ts = Some(self.pending_ts.map_or(ts, |p| p.max(ts)));
                }
                self.push(&ServerMessage::MutationResponse {
                    request_id,
                    success,
                    result: &result,
                    ts: ts.map(encode_ts),
                    log_lines: &log_lines,
                    error_data: error_data.as_deref(),
                });
            }
            _ => {
                self.actions_running = self.actions_running.saturating_sub(1);
                self.push(&ServerMessage::ActionResponse {
                    request_id,
                    success,
                    result: &result,
                    log_lines: &log_lines,
                    error_data: error_data.as_deref(),
                });
            }
        }
    }

    /// Sends a Transition if one is due: some result changed, the query set or identity
    /// changed, or a mutation's timestamp is now covered. Needs every subscribed query's
    /// result in the view, and no mutation running.
    fn maybe_transition(&mut self) {
        if self.mutation_running || self.session_id.is_none() {
            return;
        }
        let view = self.dep.hub.view();
        if view.ts < self.sent_ts || self.queries.values().any(|q| !view.results.contains_key(&q.key)) {
            return;
        }
        let end =
            StateVersion { query_set: self.query_set_version, identity: self.identity_version, ts: encode_ts(view.ts) };
        let covered = self.pending_ts.is_some_and(|t| t <= view.ts);
        let changed: Vec<(u32, Arc<QueryResult>)> = self
            .queries
            .iter()
            .filter_map(|(id, q)| {
                let r = view.results.get(&q.key)?;
                (q.last_sent.as_ref().is_none_or(|l| !Arc::ptr_eq(l, r))).then(|| (*id, r.clone()))
            })
            .collect();
        let due = !changed.is_empty()
            || !self.removed.is_empty()
            || covered
            || end.query_set != self.sent.query_set
            || end.identity != self.sent.identity;
        if !due {
            return;
        }
        let mut modifications = Vec::with_capacity(changed.len() + self.removed.len());
        // Worded for the client here: the shared result keeps the bare message, so that an
        // unchanged failure compares equal and is not sent again.
        let failures: Vec<String> = changed
            .iter()
            .map(|(_, r)| r.outcome.as_ref().err().map(|f| crate::api::failure_message(&f.message)).unwrap_or_default())
            .collect();
        for ((id, r), failure) in changed.iter().zip(&failures) {
            let journal = r.journal.as_deref();
            modifications.push(match &r.outcome {
                Ok(value) => StateModification::QueryUpdated { query_id: *id, value, log_lines: &r.log_lines, journal },
                Err(f) => StateModification::QueryFailed {
                    query_id: *id,
                    error_message: failure,
                    log_lines: &r.log_lines,
                    error_data: f.data.as_deref(),
                    journal,
                },
            });
        }
        for id in &self.removed {
            modifications.push(StateModification::QueryRemoved { query_id: *id });
        }
        let msg = ServerMessage::Transition {
            start_version: self.sent.clone(),
            end_version: end.clone(),
            modifications,
            client_clock_skew: self.clock_skew,
            server_ts: now_ms() * 1e6,
        };
        let text = match serde_json::to_string(&msg) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "could not encode a transition");
                return;
            }
        };
        drop(msg);
        self.transitions += 1;
        self.chunked(text);
        for (id, r) in changed {
            if let Some(q) = self.queries.get_mut(&id) {
                q.last_sent = Some(r);
            }
        }
        self.removed.clear();
        self.sent = end;
        self.sent_ts = view.ts;
        if covered {
            self.pending_ts = None;
        }
    }

    /// Queues a Transition, split into `TransitionChunk`s when large.
    fn chunked(&mut self, text: String) {
        let limit = self.state.config.transition_chunk_bytes.max(1024);
        if text.len() <= limit {
            self.outbox.push(text);
            return;
        }
        let mut parts = Vec::new();
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(limit);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            parts.push(&rest[..cut]);
            rest = &rest[cut..];
        }
        let id = format!("{}-{}", self.watcher, self.transitions);
        let total = parts.len() as u32;
        let encoded: Vec<String> = parts
            .iter()
            .enumerate()
            .filter_map(|(i, chunk)| {
                serde_json::to_string(&ServerMessage::TransitionChunk {
                    chunk,
                    part_number: i as u32,
                    total_parts: total,
                    transition_id: id.clone(),
                })
                .ok()
            })
            .collect();
        self.outbox.extend(encoded);
    }

    fn close(&mut self) {
        for q in self.queries.values() {
            self.dep.hub.unsubscribe(&q.key, self.watcher);
        }
        self.queries.clear();
    }
}

async fn run(state: Arc<AppState>, dep: Arc<DeploymentState>, socket: WebSocket) {
    dep.connections.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("socket", deployment = %dep.name);
    span.in_scope(|| tracing::debug!("socket opened"));
    let end = tracing::Instrument::instrument(serve(state.clone(), dep.clone(), socket), span.clone()).await;
    dep.connections.fetch_sub(1, Ordering::Relaxed);
    span.in_scope(|| tracing::debug!(reason = end, "socket closed"));
}

/// The close of a socket whose client sent a message over the limit (1009: message too big).
fn too_large(config: &crate::ServerConfig) -> End {
    End::Close(1009, format!("MessageTooLarge: messages are limited to {} bytes", config.max_ws_message_bytes))
}

/// Runs a socket to its end; returns why it ended.
async fn serve(state: Arc<AppState>, dep: Arc<DeploymentState>, socket: WebSocket) -> &'static str {
    // Not split into halves: reads happen only inside `select!` and writes only after it, so
    // one owner suffices and no lock is taken per frame.
    let mut socket = socket;
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut session = Session {
        watcher: dep.hub.watcher_id(),
        notify: Arc::new(Notify::new()),
        state: state.clone(),
        dep: dep.clone(),
        session_id: None,
        first_connection: false,
        caller: Caller::Anonymous,
        identity_version: 0,
        query_set_version: 0,
        queries: BTreeMap::new(),
        removed: Vec::new(),
        sent: StateVersion { ts: encode_ts(Timestamp::ZERO), ..Default::default() },
        sent_ts: Timestamp::ZERO,
        mutations: VecDeque::new(),
        mutation_running: false,
        pending_ts: None,
        actions_running: 0,
        clock_skew: None,
        done_tx,
        outbox: Vec::new(),
        transitions: 0,
    };
    let config = state.config.clone();
    let mut hub_ts = dep.hub.watch_ts();
    let mut dropper = dep.drop_sockets.subscribe();
    let mut shutdown = state.shutdown.subscribe();
    let mut ticker = tokio::time::interval(config.ping_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_recv, mut last_send) = (Instant::now(), Instant::now());
    let mut pending_ping = None;
    let end = loop {
        let waiting = session.pending_ts.is_some();
        let step: Result<(), End> = tokio::select! {
            frame = socket.next() => match frame {
                // tungstenite's capacity error: say why before closing (1009, "message too big").
                Some(Err(e)) if e.to_string().contains("Space limit exceeded") => Err(too_large(&config)),
                None | Some(Err(_)) => Err(End::Gone),
                Some(Ok(frame)) => {
                    last_recv = Instant::now();
                    match frame {
                        Message::Text(text) if text.len() > config.max_ws_message_bytes => Err(too_large(&config)),
                        Message::Text(text) => session.handle(text.as_str()).await,
                        Message::Binary(_) => Err(End::Fatal("InvalidMessage: binary messages are not part of the protocol".into())),
                        Message::Close(_) => Err(End::Gone),
                        Message::Ping(_) | Message::Pong(_) => Ok(()),
                    }
                }
            },
            Some(done) = done_rx.recv() => {
                session.finished(done);
                Ok(())
            }
            () = session.notify.notified() => Ok(()),
            Ok(()) = hub_ts.changed(), if waiting => Ok(()),
            _ = ticker.tick() => {
                if last_recv.elapsed() > config.client_timeout {
                    Err(End::Close(1001, "ClientTimeout: nothing received from the client".into()))
                } else {
                    let ping = if last_send.elapsed() >= config.idle_ping {
                        Message::Text(Utf8Bytes::from_static(r#"{"type":"Ping"}"#))
                    } else {
                        Message::Ping(Default::default())
                    };
                    pending_ping = Some(ping);
                    Ok(())
                }
            }
            _ = dropper.changed() => Err(End::Close(1012, "InternalServerError: connections dropped by an administrator".into())),
            _ = shutdown.changed() => Err(End::Close(1001, "ServerShutdown: the server is stopping".into())),
        };
        let mut stop = step.err();
        if let Some(ping) = pending_ping.take() {
            match tokio::time::timeout(config.send_timeout, socket.send(ping)).await {
                Ok(Ok(())) => last_send = Instant::now(),
                _ => stop = Some(End::Gone),
            }
        }
        if stop.is_none() {
            session.start_next_mutation();
            session.maybe_transition();
        }
        if let Some(End::Fatal(error)) = &stop {
            session.push(&ServerMessage::FatalError { error: error.clone() });
        }
        // Send what is queued (also the FatalError/AuthError before closing), buffered and
        // flushed once: a MutationResponse and the Transition that covers it, or a burst of
        // Transition chunks, leave in one write instead of one each.
        let outbox = std::mem::take(&mut session.outbox);
        if !outbox.is_empty() {
            let sent = tokio::time::timeout(config.send_timeout, async {
                for text in outbox {
                    socket.feed(Message::Text(text.into())).await?;
                }
                socket.flush().await
            });
            match sent.await {
                Ok(Ok(())) => last_send = Instant::now(),
                _ => stop = Some(End::Gone),
            }
        }
        if let Some(end) = stop {
            break end;
        }
    };
    session.close();
    let (code, reason) = match &end {
        End::Gone => return "gone",
        End::Close(code, reason) => (*code, reason.clone()),
        End::Fatal(_) => (1000, "FatalError".to_owned()),
    };
    let frame = CloseFrame { code, reason: reason.chars().take(120).collect::<String>().into() };
    // The closing handshake: wait (briefly) for the client's own Close. Dropping the
    // connection with client data unread resets it, and a reset client can lose what was sent
    // just before the close, such as the FatalError.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        if socket.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(message)) = socket.recv().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        }
    })
    .await;
    match end {
        End::Fatal(_) => "fatal",
        _ => "closed",
    }
}
