//! Routes, and the deployment prefix: `/d/<name>/rest` is routed as `/rest` for deployment
//! `name`; any other path belongs to the default deployment, except a request carrying an
//! admin key of another deployment (`Authorization: Convex <name>|…`), which belongs to that
//! one: the `convex` CLI resolves its admin endpoints against the origin of the deployment URL
//! it is given (`new URL("/api/…", url)`), so `/d/<name>` never reaches the server from it.
//! The prefix is stripped before routing, so one set of routes serves every deployment.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::Uri;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use tower::util::MapRequest;
use tower_http::cors::CorsLayer;
use tracing::Instrument;

use crate::error::{BodyLimit, BodyTimeout};
use crate::{AppState, admin, api, files, http_actions, push, snapshots, sync};

/// The deployment a request addresses.
#[derive(Clone, Debug)]
pub struct Deployment(pub String);

/// A request's URI before its deployment prefix was stripped: what a forwarded request asks
/// of the host it goes to.
#[derive(Clone, Debug)]
pub struct ForwardUri(pub Uri);

/// Splits `/d/<name>/rest` into the deployment and `/rest`.
fn split_prefix(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/d/")?;
    let (name, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!name.is_empty()).then_some((name, tail))
}

/// The deployment whose admin key (`<name>|<secret>`, in `Authorization: Convex …`) a request
/// carries, if `exists` says there is one of that name (the instance key's `instance|…` names
/// none). Whether the key is right is checked where it is used.
fn admin_key_deployment(req: &Request, exists: impl Fn(&str) -> bool) -> Option<String> {
    let value = req.headers().get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (name, _) = value.strip_prefix("Convex ")?.split_once('|')?;
    (name != crate::registry::INSTANCE_KEY_NAME && exists(name)).then(|| name.to_owned())
}

/// A request to the site origin: every path is an HTTP action's, so `/route` becomes
/// `/http/route` (and `/d/<name>/route` `/d/<name>/http/route`) for the routes.
fn to_site(mut req: Request) -> Request {
    let path = req.uri().path();
    let routed = match split_prefix(path) {
        Some((name, tail)) => format!("/d/{name}/http{tail}"),
        None => format!("/http{path}"),
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    if let Ok(uri) = format!("{routed}{query}").parse::<Uri>() {
        *req.uri_mut() = uri;
    }
    req.extensions_mut().insert(crate::http_actions::SiteRequest);
    req
}

fn rewrite(default: &str, exists: impl Fn(&str) -> bool, mut req: Request) -> Request {
    let path = req.uri().path().to_owned();
    let original = ForwardUri(req.uri().clone());
    req.extensions_mut().insert(original);
    let deployment = match split_prefix(&path) {
        Some((name, tail)) => {
            let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
            if let Ok(uri) = format!("{tail}{query}").parse::<Uri>() {
                *req.uri_mut() = uri;
            }
            name.to_owned()
        }
        None => admin_key_deployment(&req, exists).unwrap_or_else(|| default.to_owned()),
    };
    req.extensions_mut().insert(Deployment(deployment));
    req
}

/// Counts requests and wraps each in a tracing span.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let deployment = req.extensions().get::<Deployment>().map(|d| d.0.clone()).unwrap_or_default();
    let span = tracing::info_span!("request", method = %req.method(), %endpoint, %deployment);
    let started = Instant::now();
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.in_scope(|| tracing::debug!(status, micros = started.elapsed().as_micros() as u64, "request done"));
    state.metrics.request(&deployment, endpoint.trim_start_matches("/api/"), status);
    response
}

/// Builds the service for `state`: the routes behind the deployment-prefix rewrite; for the
/// site origin (`site`), only HTTP actions, at every path.
pub fn service(
    state: Arc<AppState>,
    site: bool,
) -> MapRequest<Router, impl FnMut(Request) -> Request + Clone + Send + 'static> {
    let body_limit = state.config.max_body_bytes;
    let functions = Router::new()
        .route("/api/query", post(api::query))
        .route("/api/mutation", post(api::mutation))
        .route("/api/action", post(api::action))
        .route("/api/function", post(api::function))
        .route("/api/run/{*path}", post(api::run))
        .route("/api/query_batch", post(api::query_batch))
        .route("/api/query_ts", post(api::query_ts))
        .route("/api/query_at_ts", post(api::query_at_ts))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(Extension(BodyLimit(body_limit)));
    let admin = Router::new()
        .route("/api/kiln/deploy", post(admin::deploy))
        .route("/api/deploy2/evaluate_schema", post(push::evaluate_schema))
        .route("/api/deploy2/evaluate_push", post(push::evaluate_push))
        .route("/api/deploy2/start_push", post(push::start_push))
        .route("/api/deploy2/finish_push", post(push::finish_push))
        .route("/api/import/upload_part", post(snapshots::upload_part))
        .layer(DefaultBodyLimit::max(state.config.max_deploy_bytes))
        .layer(Extension(BodyLimit(state.config.max_deploy_bytes)))
        .route("/api/kiln/deployments", get(admin::list_deployments).post(admin::create_deployment))
        .route("/api/kiln/hosts", get(admin::hosts))
        .route("/api/kiln/config", get(admin::get_config).post(admin::set_config))
        .route("/api/update_environment_variables", post(admin::update_environment_variables))
        .route("/api/get_config_hashes", post(push::get_config_hashes))
        .route("/api/v1/get_canonical_urls", get(admin::canonical_urls))
        .route("/api/export/request/zip", post(snapshots::request_export))
        .route("/api/export/zip/{ts}", get(snapshots::download_export))
        .route("/api/import/start_upload", post(snapshots::start_upload))
        .route("/api/import/finish_upload", post(snapshots::finish_upload))
        .route("/api/perform_import", post(snapshots::perform_import))
        .route("/api/deploy2/wait_for_schema", post(push::wait_for_schema))
        .route("/api/deploy2/report_push_completed", post(push::report_push_completed))
        .route("/api/stream_function_logs", get(admin::stream_function_logs))
        .route("/api/kiln/logs", get(admin::logs))
        .route("/api/kiln/usage", get(admin::usage))
        .route("/api/kiln/drop_connections", post(admin::drop_connections));
    let mut router = Router::new()
        .merge(functions)
        .merge(admin)
        .route("/api/sync", get(sync::upgrade))
        .route("/api/{version}/sync", get(sync::upgrade))
        .route("/api/storage/upload", post(files::upload))
        .route("/api/storage/{id}", get(files::download))
        .route("/version", get(api::version))
        .route("/metrics", get(admin::metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe));
    if let Some(dir) = &state.config.static_dir {
        router = router.fallback_service(tower_http::services::ServeDir::new(dir));
    }
    // HTTP actions answer CORS themselves (their app's OPTIONS routes), as in Convex: they
    // are merged after the permissive CORS layer of the API.
    let http_actions = Router::new()
        .route("/http", axum::routing::any(http_actions::serve))
        .route("/http/", axum::routing::any(http_actions::serve))
        .route("/http/{*path}", axum::routing::any(http_actions::serve))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe));
    let router = router
        .layer(CorsLayer::permissive())
        .merge(http_actions)
        .layer(Extension(BodyTimeout(state.config.body_timeout)))
        .layer(middleware::from_fn_with_state(state.clone(), crate::cluster::forward))
        .with_state(state.clone());
    let default = state.config.default_deployment.clone();
    let default: Arc<str> = default.into();
    MapRequest::new(router, move |req| {
        let req = if site { to_site(req) } else { req };
        rewrite(&default, |name| state.registry.contains(name), req)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_name_deployments() {
        assert_eq!(split_prefix("/d/chat/api/query"), Some(("chat", "/api/query")));
        assert_eq!(split_prefix("/d/chat"), Some(("chat", "/")));
        assert_eq!(split_prefix("/d//api"), None);
        assert_eq!(split_prefix("/api/query"), None);
        let exists = |name: &str| name == "x" || name == "shop";
        let req = rewrite(
            "default",
            exists,
            Request::builder().uri("/d/x/api/1.48.0/sync?a=b").body(Default::default()).unwrap(),
        );
        assert_eq!(req.uri().to_string(), "/api/1.48.0/sync?a=b");
        assert_eq!(req.extensions().get::<Deployment>().unwrap().0, "x");
    }

    #[test]
    fn a_root_request_with_another_deployments_admin_key_is_that_deployments() {
        let exists = |name: &str| name == "shop";
        let at = |uri: &str, auth: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(auth) = auth {
                b = b.header("Authorization", auth);
            }
            rewrite("default", exists, b.body(Default::default()).unwrap())
                .extensions()
                .get::<Deployment>()
                .unwrap()
                .0
                .clone()
        };
        assert_eq!(at("/api/update_environment_variables", Some("Convex shop|abc")), "shop");
        assert_eq!(at("/api/update_environment_variables", Some("Convex instance|abc")), "default");
        assert_eq!(at("/api/query", Some("Convex nowhere|abc")), "default", "no such deployment");
        assert_eq!(at("/api/query", Some("Bearer shop|abc")), "default", "a user token");
        assert_eq!(at("/api/query", None), "default");
        assert_eq!(at("/d/x/api/query", Some("Convex shop|abc")), "x", "the prefix decides");
    }
}
