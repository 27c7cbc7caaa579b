//! The HTTP API of convex-compat §4: function calls in either argument format, batches and
//! timestamps. A function's own failure is HTTP 560 with `{"status": "error", …}` (what the
//! official `ConvexHttpClient` expects); problems with the request itself are 4xx/5xx with
//! `{"code", "message"}`.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_runtime::{CallOutcome, CallRequest, FunctionKind};
use kiln_store::Timestamp;
use kiln_value::Value;
use serde::Deserialize;
use serde_json::{Value as JsonValue, json};

use crate::auth::Caller;
use crate::error::{RequestBody, Result, ServerError};
use crate::routing::Deployment;
use crate::sync::protocol::{decode_ts, encode_ts};
use crate::{AppState, DeploymentState};

/// Status of a function's own failure (Convex's `STATUS_CODE_UDF_FAILED`).
pub const STATUS_UDF_FAILED: u16 = 560;

/// Who sent the request, from its `Authorization` header.
pub async fn caller(state: &AppState, dep: &DeploymentState, headers: &HeaderMap) -> Result<Caller> {
    let Some(value) = headers.get(header::AUTHORIZATION) else { return Ok(Caller::Anonymous) };
    let value = value.to_str().map_err(|_| ServerError::InvalidAuthToken("unreadable Authorization header".into()))?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        let config = dep.auth_config();
        return dep
            .verifier
            .verify(&config, token.trim())
            .await
            .map(Caller::User)
            .map_err(ServerError::InvalidAuthToken);
    }
    if let Some(key) = value.strip_prefix("Convex ") {
        return admin_caller(state, &dep.name, key.trim());
    }
    Err(ServerError::InvalidAuthToken("the Authorization header must be `Bearer <jwt>` or `Convex <admin key>`".into()))
}

/// An admin caller from `key` or `key:<base64 identity JSON>` (acting as that identity).
pub fn admin_caller(state: &AppState, deployment: &str, key: &str) -> Result<Caller> {
    let (key, acting_as) = match key.split_once(':') {
        Some((k, identity)) => (k, Some(identity)),
        None => (key, None),
    };
    if !state.registry.is_admin_key(deployment, key) {
        return Err(ServerError::Unauthorized(format!("invalid admin key for deployment {deployment:?}")));
    }
    let identity = match acting_as {
        None => None,
        Some(encoded) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| ServerError::BadRequest("the acting-as identity is not base64".into()))?;
            let claims: serde_json::Map<String, JsonValue> = serde_json::from_slice(&bytes)
                .map_err(|_| ServerError::BadRequest("the acting-as identity is not a JSON object".into()))?;
            Some(acting_identity(&claims))
        }
    };
    Ok(Caller::Admin(identity))
}

/// An identity an admin acts as: the given attributes, with `tokenIdentifier` filled in.
pub fn acting_identity(attrs: &serde_json::Map<String, JsonValue>) -> Value {
    let mut out = kiln_value::Object::new();
    for (k, v) in attrs {
        if let Ok(v) = kiln_value::from_convex_json(v) {
            out.insert(k.clone(), v);
        }
    }
    let text = |k: &str| attrs.get(k).and_then(JsonValue::as_str).unwrap_or_default().to_owned();
    if !out.contains_key("tokenIdentifier") {
        out.insert("tokenIdentifier".into(), Value::String(format!("{}|{}", text("issuer"), text("subject"))));
    }
    Value::Object(out)
}

/// The arguments object from `args`: an object, `[object]`, or absent.
pub fn parse_args(args: Option<&JsonValue>) -> std::result::Result<Value, String> {
    let obj = match args {
        None | Some(JsonValue::Null) => return Ok(Value::Object(Default::default())),
        Some(JsonValue::Array(items)) if items.len() == 1 => &items[0],
        Some(JsonValue::Array(items)) => return Err(format!("expected one arguments object, got {}", items.len())),
        Some(other) => other,
    };
    if !obj.is_object() {
        return Err("arguments must be an object".to_owned());
    }
    kiln_value::from_convex_json(obj).map_err(|e| format!("invalid arguments: {e}"))
}

#[derive(Deserialize)]
struct FunctionBody {
    /// Absent only for `/api/run/...`, whose URL names the function.
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    args: Option<JsonValue>,
    #[serde(default)]
    ts: Option<String>,
    /// A mounted component instance whose function `path` is (admins only).
    #[serde(default, rename = "componentPath")]
    component_path: Option<String>,
}

/// Output formats: Convex JSON (`convex_encoded_json`) or clean JSON (`json`).
#[derive(Copy, Clone, PartialEq)]
enum Format {
    Convex,
    Clean,
}

fn format_of(f: Option<&str>, default: Format) -> Result<Format> {
    match f {
        None => Ok(default),
        Some("convex_encoded_json" | "convex_json") => Ok(Format::Convex),
        Some("json") => Ok(Format::Clean),
        Some(other) => Err(ServerError::BadRequest(format!("unknown format {other:?}"))),
    }
}

fn encode(v: &Value, format: Format) -> JsonValue {
    match format {
        Format::Convex => kiln_value::to_convex_json(v),
        Format::Clean => kiln_value::to_clean_json(v),
    }
}

/// A failed call's message as Convex words it for clients, `[Request ID: <16 hex>] Server
/// Error` and then what went wrong (apps and tests match on this form).
pub(crate) fn failure_message(message: &str) -> String {
    let request_id = format!("{:016x}", rand::random::<u64>());
    tracing::debug!(%request_id, %message, "function failed");
    format!("[Request ID: {request_id}] Server Error\n{message}")
}

/// The response body of a call.
fn outcome_body(out: &CallOutcome, format: Format) -> (u16, JsonValue) {
    let log_lines = crate::logs::log_lines(out);
    match &out.result {
        Ok(v) => (200, json!({"status": "success", "value": encode(v, format), "logLines": log_lines})),
        Err(e) => {
            let mut body =
                json!({"status": "error", "errorMessage": failure_message(&e.message), "logLines": log_lines});
            if let Some(data) = &e.data {
                body["errorData"] = encode(data, format);
            }
            (STATUS_UDF_FAILED, body)
        }
    }
}

fn respond(status: u16, body: JsonValue) -> Response {
    (StatusCode::from_u16(status).unwrap_or(StatusCode::OK), Json(body)).into_response()
}

fn parse_body(body: &Bytes) -> Result<FunctionBody> {
    serde_json::from_slice(body).map_err(|e| ServerError::BadRequest(format!("invalid request body: {e}")))
}

impl FunctionBody {
    /// The function's path, which every endpoint but `/api/run/...` requires in the body.
    fn path(&self) -> Result<&str> {
        self.path.as_deref().ok_or_else(|| ServerError::BadRequest("invalid request body: missing field `path`".into()))
    }

    /// The component instance named (`""`: the app).
    fn component(&self) -> &str {
        self.component_path.as_deref().unwrap_or_default()
    }
}

/// Runs one call for an HTTP request (inflight limit, identity, logging, metrics).
#[allow(clippy::too_many_arguments)]
async fn run_call(
    state: &Arc<AppState>,
    dep: &Arc<DeploymentState>,
    caller: &Caller,
    kind: FunctionKind,
    component: &str,
    path: &str,
    args: Value,
    snapshot: Option<Timestamp>,
) -> Result<CallOutcome> {
    let _permit = dep
        .inflight
        .clone()
        .try_acquire_owned()
        .map_err(|_| ServerError::TooManyConcurrentRequests(dep.name.clone()))?;
    if !component.is_empty() && !caller.is_admin() {
        let message = format!("calling a function of component {component:?} needs an admin key");
        return Ok(CallOutcome {
            result: Err(kiln_runtime::CallError::new("Unauthorized", message)),
            ..CallOutcome::default()
        });
    }
    if kind == FunctionKind::Query && crate::system::is_system(path) {
        let admin = caller.is_admin();
        let result =
            crate::system::query_deployment(&state.runtime, &dep.name, &dep.snapshots, admin, component, path, &args)
                .await;
        return Ok(CallOutcome { result, ..CallOutcome::default() });
    }
    let mut req = CallRequest::new(kind, path, args);
    req.component = component.to_owned();
    req.identity = caller.identity();
    req.internal = caller.is_admin();
    req.snapshot = snapshot;
    req.cacheable = kind == FunctionKind::Query;
    if kind == FunctionKind::Action {
        req.request_id = format!("{:016x}", rand::random::<u64>());
    }
    let out = state.runtime.call(&dep.name, req).await;
    state.observe(dep, kind, path, &out);
    Ok(out)
}

/// A call whose arguments cannot be decoded fails like a function would.
fn args_failure(message: String) -> Response {
    respond(STATUS_UDF_FAILED, json!({"status": "error", "errorMessage": failure_message(&message), "logLines": []}))
}

async fn call_endpoint(
    state: Arc<AppState>,
    deployment: &str,
    headers: &HeaderMap,
    body: &Bytes,
    kind: Option<FunctionKind>,
    path_override: Option<String>,
    default_format: Format,
) -> Result<Response> {
    let dep = state.deployment(deployment)?;
    let caller = caller(&state, &dep, headers).await?;
    let body = parse_body(body)?;
    let format = format_of(body.format.as_deref(), default_format)?;
    let path = match path_override {
        Some(p) => p,
        None => body.path()?.to_owned(),
    };
    let component = body.component();
    let kind = match kind {
        Some(k) => k,
        None => function_kind(&state, deployment, component, &path, &caller)?,
    };
    let args = match parse_args(body.args.as_ref()) {
        Ok(a) => a,
        Err(m) => return Ok(args_failure(m)),
    };
    let out = run_call(&state, &dep, &caller, kind, component, &path, args, None).await?;
    let (status, body) = outcome_body(&out, format);
    Ok(respond(status, body))
}

/// The kind of a function, for endpoints that accept any kind.
fn function_kind(
    state: &AppState,
    deployment: &str,
    component: &str,
    path: &str,
    caller: &Caller,
) -> Result<FunctionKind> {
    let version = state.runtime.deployment(deployment).and_then(|d| d.version());
    // Unknown functions are run as queries so that the runtime reports them uniformly.
    Ok(version
        .and_then(|v| v.function_kind_in(component, path))
        .filter(|(_, public)| *public || caller.is_admin())
        .map(|(k, _)| k)
        .unwrap_or(FunctionKind::Query))
}

/// `POST /api/query`.
pub async fn query(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    call_endpoint(state, &d, &headers, &body, Some(FunctionKind::Query), None, Format::Convex).await
}

/// `POST /api/mutation`.
pub async fn mutation(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    call_endpoint(state, &d, &headers, &body, Some(FunctionKind::Mutation), None, Format::Convex).await
}

/// `POST /api/action`.
pub async fn action(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    call_endpoint(state, &d, &headers, &body, Some(FunctionKind::Action), None, Format::Convex).await
}

/// `POST /api/function`: any kind.
pub async fn function(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    call_endpoint(state, &d, &headers, &body, None, None, Format::Convex).await
}

/// `POST /api/run/{module/path}/{function}`: any kind, clean JSON by default.
pub async fn run(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    Path(path): Path<String>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    let (module, export) = path
        .rsplit_once('/')
        .ok_or_else(|| ServerError::BadRequest("expected /api/run/<module path>/<function>".into()))?;
    let body = if body.is_empty() { Bytes::from_static(b"{}") } else { body };
    call_endpoint(state, &d, &headers, &body, None, Some(format!("{module}:{export}")), Format::Clean).await
}

/// `POST /api/query_batch`: several queries at one snapshot.
pub async fn query_batch(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    #[derive(Deserialize)]
    struct Batch {
        queries: Vec<FunctionBody>,
    }
    let dep = state.deployment(&d)?;
    let caller = caller(&state, &dep, &headers).await?;
    let batch: Batch =
        serde_json::from_slice(&body).map_err(|e| ServerError::BadRequest(format!("invalid request body: {e}")))?;
    let store = state.runtime.deployment(&d).ok_or_else(|| ServerError::DeploymentNotFound(d.clone()))?;
    let ts = store.store().published_ts();
    let mut results = Vec::with_capacity(batch.queries.len());
    for q in batch.queries {
        let format = format_of(q.format.as_deref(), Format::Convex)?;
        let body = match parse_args(q.args.as_ref()) {
            Ok(args) => {
                outcome_body(
                    &run_call(&state, &dep, &caller, FunctionKind::Query, q.component(), q.path()?, args, Some(ts))
                        .await?,
                    format,
                )
                .1
            }
            Err(m) => json!({"status": "error", "errorMessage": failure_message(&m), "logLines": []}),
        };
        results.push(body);
    }
    Ok(respond(200, json!({ "results": results })))
}

/// `POST /api/query_ts`: the newest snapshot timestamp.
pub async fn query_ts(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
) -> Result<Response> {
    let dep = state.runtime.deployment(&d).ok_or_else(|| ServerError::DeploymentNotFound(d.clone()))?;
    Ok(respond(200, json!({ "ts": encode_ts(dep.store().published_ts()) })))
}

/// `POST /api/query_at_ts`: a query at a snapshot from `query_ts`.
pub async fn query_at_ts(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    let dep = state.deployment(&d)?;
    let caller = caller(&state, &dep, &headers).await?;
    let body = parse_body(&body)?;
    let format = format_of(body.format.as_deref(), Format::Convex)?;
    let ts = body
        .ts
        .as_deref()
        .and_then(decode_ts)
        .ok_or_else(|| ServerError::BadRequest("missing or invalid `ts`".into()))?;
    let args = match parse_args(body.args.as_ref()) {
        Ok(a) => a,
        Err(m) => return Ok(args_failure(m)),
    };
    let out =
        run_call(&state, &dep, &caller, FunctionKind::Query, body.component(), body.path()?, args, Some(ts)).await?;
    let (status, body) = outcome_body(&out, format);
    Ok(respond(status, body))
}

/// `GET /version`.
pub async fn version() -> &'static str {
    concat!("kiln ", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_come_as_object_or_one_element_array() {
        let obj = parse_args(Some(&json!({"a": 1}))).unwrap();
        assert_eq!(parse_args(Some(&json!([{"a": 1}]))).unwrap(), obj);
        assert_eq!(parse_args(None).unwrap(), Value::Object(Default::default()));
        assert!(parse_args(Some(&json!([1]))).is_err());
        assert!(parse_args(Some(&json!([{}, {}]))).is_err());
        assert!(parse_args(Some(&json!({"n": {"$integer": "bad"}}))).is_err());
    }
}
