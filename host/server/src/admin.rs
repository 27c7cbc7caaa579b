//! Admin endpoints: deploys, deployments, configuration (auth providers, environment),
//! logs, usage, dropping connections, and metrics.
//!
//! Deployment-scoped endpoints need that deployment's admin key or the instance key
//! (`Authorization: Convex <key>`); creating and listing deployments needs the instance key.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::AppState;
use crate::auth::AuthConfig;
use crate::error::{RequestBody, Result, ServerError};
use crate::registry::FetchConfig;
use crate::routing::Deployment;

fn admin_key(headers: &HeaderMap) -> Result<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Convex "))
        .map(str::trim)
        .ok_or_else(|| ServerError::Unauthorized("this endpoint needs `Authorization: Convex <admin key>`".into()))
}

/// Checks the deployment's admin key (or the instance key).
pub fn require_admin(state: &AppState, deployment: &str, headers: &HeaderMap) -> Result<()> {
    let key = admin_key(headers)?;
    state.deployment(deployment)?;
    if state.registry.is_admin_key(deployment, key) {
        Ok(())
    } else {
        Err(ServerError::Unauthorized(format!("invalid admin key for deployment {deployment:?}")))
    }
}

fn require_instance(state: &AppState, headers: &HeaderMap) -> Result<()> {
    let key = admin_key(headers)?;
    if state.registry.is_instance_key(key) {
        Ok(())
    } else {
        Err(ServerError::Unauthorized("this endpoint needs the instance admin key".into()))
    }
}

/// A JSON body (read by [`RequestBody`], so within the size and time limits).
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| ServerError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A deploy upload: the component and the manifest `kiln build` wrote beside it.
#[derive(Deserialize)]
pub struct DeployBody {
    /// The component, base64.
    pub component: String,
    /// The manifest; when given, the component's own must match it.
    #[serde(default)]
    pub manifest: Option<JsonValue>,
}

/// `POST /api/kiln/deploy`: validates, applies the schema, switches atomically.
pub async fn deploy(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let body: DeployBody =
        serde_json::from_slice(&body).map_err(|e| ServerError::BadRequest(format!("invalid deploy body: {e}")))?;
    let component = base64::engine::general_purpose::STANDARD
        .decode(body.component.as_bytes())
        .map_err(|_| ServerError::BadRequest("`component` is not base64".into()))?;
    let expected = body.manifest;
    let version = state
        .runtime
        .deploy_checked(&d, &component, |v| match &expected {
            None => Ok(()),
            Some(m) => {
                let actual = serde_json::to_value(&v.manifest).map_err(|e| e.to_string())?;
                if &actual == m {
                    Ok(())
                } else {
                    Err("the uploaded manifest does not match the component's own (rebuild and deploy again)".into())
                }
            }
        })
        .await?;
    // The pushed modules no longer describe what runs: the CLI's next push sends them all.
    crate::push::record_pushed(&state, &d, None)?;
    deployed(&state, &d, &version).await?;
    tracing::info!(deployment = %d, version = %version.id, "deploy finished");
    Ok(Json(json!({
        "version": version.id,
        "functions": version.manifest.functions.len(),
    }))
    .into_response())
}

/// What every deploy (`kiln deploy`, a push) ends with once the version serves: the app's
/// identity providers take effect and subscribed queries re-run on the new version.
pub async fn deployed(state: &AppState, deployment: &str, version: &kiln_runtime::Version) -> Result<()> {
    let dep = state.deployment(deployment)?;
    *dep.app_auth.write() = crate::app_auth(&version.manifest);
    dep.hub.invalidate_all();
    crate::cluster::publish_app(state, deployment).await
}

/// `GET /api/kiln/hosts` (instance key): the hosts sharing this one's database and the
/// deployments each serves (alone, this host and all its deployments).
pub async fn hosts(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response> {
    require_instance(&state, &headers)?;
    let hosts: Vec<JsonValue> = match &state.cluster {
        Some(member) => {
            crate::cluster::read(&state).await?;
            let me = member.backend.host_id();
            member
                .hosts()
                .into_iter()
                .map(|(h, owned)| {
                    json!({
                        "id": h.id, "url": h.url, "alive": h.alive, "seenMsAgo": h.seen_ms_ago,
                        "self": h.id == me, "deployments": owned,
                    })
                })
                .collect()
        }
        None => {
            let url = state.config.deployment_url(&state.config.default_deployment);
            let owned = state.runtime.deployment_names();
            vec![
                json!({ "id": "local", "url": url, "alive": true, "seenMsAgo": 0, "self": true, "deployments": owned }),
            ]
        }
    };
    Ok(Json(json!({ "hosts": hosts })).into_response())
}

/// `GET /api/kiln/deployments` (instance key): the deployments.
pub async fn list_deployments(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response> {
    require_instance(&state, &headers)?;
    let names = state.registry.names();
    let list: Vec<JsonValue> = names
        .iter()
        .map(|n| {
            let version = state.runtime.deployment(n).and_then(|d| d.version()).map(|v| v.id.clone());
            json!({ "name": n, "version": version, "path": format!("/d/{n}") })
        })
        .collect();
    Ok(Json(json!({ "deployments": list })).into_response())
}

/// `POST /api/kiln/deployments {name}` (instance key): creates one; the admin key is in
/// the response and nowhere else.
pub async fn create_deployment(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_instance(&state, &headers)?;
    let body: JsonValue = json_body(&body)?;
    let name =
        body.get("name").and_then(JsonValue::as_str).ok_or_else(|| ServerError::BadRequest("missing `name`".into()))?;
    let key = state.create_deployment(name).await?;
    Ok(Json(json!({ "name": name, "adminKey": key, "path": format!("/d/{name}") })).into_response())
}

/// A configuration change.
#[derive(Deserialize)]
pub struct ConfigBody {
    /// New identity providers.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// New environment variables (replacing all).
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    /// Where actions may fetch (replacing the deployment's lists).
    #[serde(default)]
    pub fetch: Option<FetchConfig>,
}

/// `GET /api/kiln/config`: the deployment's auth providers and environment variable names.
pub async fn get_config(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let record = state.registry.get(&d).unwrap_or_default();
    Ok(Json(json!({
        "auth": record.auth,
        "appAuth": state.deployment(&d).ok().map(|dep| dep.app_auth.read().clone()),
        "env": record.env.keys().collect::<Vec<_>>(),
        "fetch": record.fetch,
        "serverFetch": { "allowedHosts": state.config.fetch.allowed_hosts, "deniedHosts": state.config.fetch.denied_hosts },
    }))
    .into_response())
}

/// `POST /api/kiln/config`: sets auth providers and/or environment variables.
pub async fn set_config(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let body: ConfigBody = json_body(&body)?;
    let dep = state.deployment(&d)?;
    if let Some(fetch) = &body.fetch {
        fetch.validate()?;
    }
    if let Some(env) = &body.env {
        crate::environment::check(env)?;
    }
    let env_changed = body.env.is_some();
    // The runtime gets the new configuration before another change may start, as in
    // `update_environment_variables`: concurrent changes leave both with the same one.
    let change = |record: &mut crate::registry::DeploymentRecord| {
        if let Some(auth) = &body.auth {
            record.auth = auth.clone();
        }
        if let Some(env) = &body.env {
            record.env = env.clone();
        }
        if let Some(fetch) = &body.fetch {
            record.fetch = fetch.clone();
        }
        Ok(())
    };
    let apply = |record: &crate::registry::DeploymentRecord| {
        *dep.auth.write() = record.auth.clone();
        if (body.env.is_some() || body.fetch.is_some())
            && let Some(rdep) = state.runtime.deployment(&d)
        {
            let mut config = (*rdep.config()).clone();
            config.fetch = state.fetch_policy(&record.fetch);
            config.env = record.env.clone();
            state.runtime.configure(&d, config)?;
        }
        Ok(())
    };
    state.registry.modify(&d, change, apply).await?;
    if env_changed {
        // Functions read `process.env`: their results may change.
        dep.hub.invalidate_all();
    }
    Ok(Json(json!({ "ok": true })).into_response())
}

/// The body of `POST /api/update_environment_variables`.
#[derive(Deserialize)]
pub struct EnvironmentChanges {
    /// Applied in order, all or none.
    pub changes: Vec<crate::environment::Change>,
}

/// `GET /api/v1/get_canonical_urls` (`npx convex dev`): where clients reach the deployment
/// (`convexCloudUrl`) and its HTTP actions (`convexSiteUrl`), as this request reached the
/// server.
pub async fn canonical_urls(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)))
        .ok_or_else(|| ServerError::BadRequest("the request has no valid Host header".into()))?;
    let scheme = match headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) {
        Some("https") => "https",
        _ => "http",
    };
    let mut cloud = format!("{scheme}://{host}");
    if d != state.config.default_deployment {
        cloud.push_str(&format!("/d/{d}"));
    }
    // The site origin is another listener: its address is the configured one (under `/http`
    // of the deployment's URL when none is served).
    let site = match state.config.site_listen {
        Some(_) => state.config.site_url(&d),
        None => format!("{cloud}/http"),
    };
    Ok(Json(json!({ "convexCloudUrl": cloud, "convexSiteUrl": site })).into_response())
}

/// `POST /api/update_environment_variables` (`npx convex env set|remove`): changes some of the
/// deployment's environment variables; the next call of a function sees them.
pub async fn update_environment_variables(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let body: EnvironmentChanges = json_body(&body)?;
    let dep = state.deployment(&d)?;
    // Read, changed and written as one change of the registry: concurrent changes do not
    // lose each other's variables.
    let change = |record: &mut crate::registry::DeploymentRecord| {
        record.env = crate::environment::changed(&record.env, &body.changes)?;
        Ok(())
    };
    let apply = |record: &crate::registry::DeploymentRecord| {
        if let Some(rdep) = state.runtime.deployment(&d) {
            let mut config = (*rdep.config()).clone();
            config.env = record.env.clone();
            state.runtime.configure(&d, config)?;
        }
        Ok(())
    };
    state.registry.modify(&d, change, apply).await?;
    // Functions read `process.env`: their results may change.
    dep.hub.invalidate_all();
    Ok(Json(json!({})).into_response())
}

/// Query of `GET /api/stream_function_logs`.
#[derive(Deserialize)]
pub struct StreamLogsQuery {
    /// Where the previous answer ended (`newCursor`); 0 at first.
    #[serde(default)]
    pub cursor: f64,
}

/// `GET /api/stream_function_logs?cursor=` (`npx convex logs`): the calls from `cursor` on, as
/// the CLI's `FunctionExecution`s, and the new cursor (the log position of the next call, never
/// 0). At cursor 0 it answers the history at once; otherwise it waits up to
/// [`crate::logs::LONG_POLL`] for a call. A cursor beyond the log (the server restarted since)
/// starts over.
pub async fn stream_function_logs(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    Query(q): Query<StreamLogsQuery>,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let dep = state.deployment(&d)?;
    let mut first = !(q.cursor.is_finite() && q.cursor >= 1.0);
    let mut after = if first { 0 } else { q.cursor as u64 - 1 };
    if after > dep.log.last_seq() {
        (first, after) = (true, 0);
    }
    let (mut entries, mut rx) = dep.log.follow(after);
    if entries.is_empty() && !first {
        let deadline = tokio::time::Instant::now() + crate::logs::LONG_POLL;
        while entries.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(entry)) if entry.seq > after => entries.push(entry),
                Ok(Ok(_)) => {}
                // Fell behind the broadcast: take what the history still holds.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    (entries, rx) = dep.log.follow(after);
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) | Err(_) => break,
            }
        }
        // And whatever else arrived with it.
        while let Ok(entry) = rx.try_recv() {
            if entry.seq > entries.last().map_or(after, |e| e.seq) {
                entries.push(entry);
            }
        }
    }
    let cursor = entries.last().map_or(after, |e| e.seq) + 1;
    let entries: Vec<JsonValue> = entries.iter().map(crate::logs::LogEntry::execution_json).collect();
    Ok(Json(json!({ "entries": entries, "newCursor": cursor })).into_response())
}

/// Query of the logs endpoint.
#[derive(Deserialize)]
pub struct LogsQuery {
    /// Entries after this sequence number.
    #[serde(default)]
    pub after: u64,
    /// Keep the response open and stream new entries.
    #[serde(default)]
    pub follow: bool,
}

/// `GET /api/kiln/logs?after=&follow=`: the function log as NDJSON.
pub async fn logs(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    Query(q): Query<LogsQuery>,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let dep = state.deployment(&d)?;
    let (history, rx) = dep.log.follow(q.after);
    let last = history.last().map(|e| e.seq).unwrap_or(q.after);
    let line = |e: &crate::logs::LogEntry| {
        let mut s = serde_json::to_string(e).unwrap_or_default();
        s.push('\n');
        Ok::<_, std::convert::Infallible>(Bytes::from(s))
    };
    let head: Vec<_> = history.iter().map(line).collect();
    let head = futures::stream::iter(head);
    if !q.follow {
        return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(head)).into_response());
    }
    let mut stop = state.shutdown.subscribe();
    let tail = futures::stream::unfold((rx, last), move |(mut rx, last)| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                // A heartbeat line keeps proxies from closing an idle stream.
                Err(_) => return Some((Ok(Bytes::from_static(b"\n")), (rx, last))),
                Ok(Ok(e)) if e.seq > last => {
                    let seq = e.seq;
                    let mut s = serde_json::to_string(&e).unwrap_or_default();
                    s.push('\n');
                    return Some((Ok(Bytes::from(s)), (rx, seq)));
                }
                Ok(Ok(_)) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                    let s = format!("{{\"lagged\":{n}}}\n");
                    return Some((Ok(Bytes::from(s)), (rx, last)));
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
            }
        }
    })
    .take_until(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(head.chain(tail))).into_response())
}

/// `GET /api/kiln/usage`: fuel and calls, per deployment and function.
pub async fn usage(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let usage = state.runtime.usage(&d).ok_or_else(|| ServerError::DeploymentNotFound(d.clone()))?;
    let mut body = serde_json::to_value(usage).map_err(|e| ServerError::Internal(e.to_string()))?;
    if let (Some(obj), Some(rd)) = (body.as_object_mut(), state.runtime.deployment(&d)) {
        let stats = rd.store().stats();
        obj.insert("searchIndexDiskBytes".into(), stats.search_disk_bytes.into());
        obj.insert("searchIndexMemoryBytes".into(), stats.search_memory_bytes.into());
        obj.insert("vectorIndexMemoryBytes".into(), stats.vector_memory_bytes.into());
    }
    Ok(Json(body).into_response())
}

/// `POST /api/kiln/drop_connections`: closes every socket of the deployment (clients
/// reconnect).
pub async fn drop_connections(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let dep = state.deployment(&d)?;
    let open = dep.connections.load(std::sync::atomic::Ordering::Relaxed);
    dep.drop_sockets.send_modify(|n| *n += 1);
    Ok(Json(json!({ "dropped": open })).into_response())
}

/// Whether `headers` may read the metrics: they name every deployment, so they need the
/// instance admin key (`Convex <key>`) or the configured scrape token (`Bearer <token>`).
fn require_metrics_reader(state: &AppState, headers: &HeaderMap) -> Result<()> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if let (Some(token), Some(expected)) = (bearer, &state.config.metrics_token)
        && !expected.is_empty()
        && crate::registry::hash(token) == crate::registry::hash(expected)
    {
        return Ok(());
    }
    require_instance(state, headers).map_err(|_| {
        ServerError::Unauthorized(
            "/metrics needs `Authorization: Convex <instance admin key>` or `Bearer <metrics token>`".into(),
        )
    })
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Result<Response> {
    require_metrics_reader(&state, &headers)?;
    let deployments: Vec<_> = state.deployments.read().values().cloned().collect();
    for d in deployments {
        if let Some(rd) = state.runtime.deployment(&d.name) {
            let stats = rd.store().stats();
            state.metrics.store_stats(&d.name, &stats, d.hub.len());
        }
        state
            .metrics
            .connections
            .get_or_create(&crate::metrics::DeploymentLabels { deployment: d.name.clone() })
            .set(d.connections.load(std::sync::atomic::Ordering::Relaxed) as i64);
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.encode()).into_response())
}
