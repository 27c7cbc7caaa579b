//! HTTP actions (`convex/http.ts`): every method under `/http/…` of a deployment, and at the
//! site origin (a listener of its own, as Convex serves `<name>.convex.site`), where every
//! path is the app's (`/d/<name>/…` for other deployments than the default). The request is
//! routed by the app's own router; the server adds no CORS headers: answering preflights is
//! the app's business, as in Convex.

use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_runtime::{FunctionKind, HttpCall, HttpReply};

use crate::AppState;
use crate::error::{BodyTimeout, Result, ServerError};
use crate::routing::Deployment;

/// Marks a request that reached the site origin (its URL is the site's).
#[derive(Clone, Copy, Debug)]
pub struct SiteRequest;

/// Errors of HTTP actions themselves (not of the request) and the status they answer.
fn failure_status(code: &str) -> StatusCode {
    match code {
        "NoHttpRouter" | "NotDeployed" => StatusCode::NOT_FOUND,
        "ShuttingDown" | "Overloaded" | "QuotaExceeded" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Any method of `/http/<route>` (and of every path at the site origin): the app's HTTP action
/// for the route, or its router's 404.
pub async fn serve(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    site: Option<Extension<SiteRequest>>,
    body_timeout: Option<Extension<BodyTimeout>>,
    req: Request,
) -> Result<Response> {
    let dep = state.deployment(&d)?;
    let _permit =
        dep.inflight.clone().try_acquire_owned().map_err(|_| ServerError::TooManyConcurrentRequests(d.clone()))?;
    let path = req.uri().path();
    let route = match path.strip_prefix("/http") {
        Some("") | None => "/".to_owned(),
        Some(rest) => rest.to_owned(),
    };
    let base = match site {
        Some(_) => state.config.site_url(&d),
        None => format!("{}/http", state.config.deployment_url(&d)),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{base}{route}{query}");
    let method = req.method().as_str().to_owned();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    // A token that does not verify leaves the caller anonymous: the header may be the
    // webhook's own (a shared secret), which the action checks itself.
    let identity = match req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(value) => match value.strip_prefix("Bearer ") {
            Some(token) => dep.verifier.verify(&dep.auth_config(), token.trim()).await.ok(),
            None => None,
        },
        None => None,
    };
    let limit = state.config.max_http_action_body_bytes;
    let timeout = body_timeout.map_or(std::time::Duration::from_secs(60), |t| t.0.0);
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(req.into_body(), limit))
        .await
        .map_err(|_| ServerError::RequestTimeout(timeout))?;
    let body = read.map_err(|_| ServerError::BodyTooLarge(limit))?.to_vec();
    let call = HttpCall {
        method: method.clone(),
        url,
        route: route.clone(),
        headers,
        body,
        identity,
        request_id: format!("{:016x}", rand::random::<u64>()),
    };
    let out = state.runtime.http_action(&d, call).await;
    state.observe(&dep, FunctionKind::Action, &format!("{method} {route}"), &out);
    let reply = match &out.result {
        Ok(value) => HttpReply::from_value(value),
        Err(e) => Err(e.clone()),
    };
    match reply {
        Ok(reply) => respond(reply),
        Err(e) => {
            let body = serde_json::json!({ "code": e.code, "message": e.message });
            Ok((failure_status(&e.code), axum::Json(body)).into_response())
        }
    }
}

/// The response an HTTP action returned.
fn respond(reply: HttpReply) -> Result<Response> {
    let status = StatusCode::from_u16(reply.status)
        .map_err(|_| ServerError::Internal(format!("the HTTP action answered status {}", reply.status)))?;
    let mut response = Response::new(Body::from(reply.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        // The server frames the body itself.
        if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        // Headers the guest's `Headers` accepted are valid; anything else is dropped by name.
        match (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::warn!(header = %name, "an HTTP action's response header is not valid HTTP; dropped"),
        }
    }
    Ok(response)
}
