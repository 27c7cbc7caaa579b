//! Kiln's server: the Convex HTTP API and WebSocket sync protocol (so the official `convex`
//! clients work unmodified), deploy uploads, admin keys and user JWTs, reactivity, function
//! logs and Prometheus metrics.
//!
//! Every deployment is served under `/d/<name>` (the official clients keep a URL's path, so
//! `new ConvexClient("http://host:3210/d/chat")` works) and the default deployment also at
//! the root. A request is routed after that prefix is stripped (see [`routing`]).

pub mod admin;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod environment;
pub mod error;
pub mod files;
pub mod http_actions;
pub mod knobs;
pub mod logs;
pub mod metrics;
pub mod push;
pub mod registry;
pub mod routing;
pub mod snapshots;
pub mod sync;
pub mod system;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use kiln_runtime::{CallOutcome, DeploymentConfig, FunctionKind, Runtime};
use parking_lot::RwLock;
use tokio::sync::{Semaphore, watch};

pub use crate::auth::{AuthConfig, AuthProvider, Caller};
pub use crate::error::{Result, ServerError};
pub use crate::knobs::ServerConfig;

use crate::logs::FunctionLog;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::sync::hub::Hub;

/// A deployment as the server sees it: its hub, limits, log and auth.
pub struct DeploymentState {
    /// The name.
    pub name: String,
    /// Its subscribed queries.
    pub hub: Arc<Hub>,
    /// Calls in flight (HTTP and sockets).
    pub inflight: Arc<Semaphore>,
    /// The function log.
    pub log: FunctionLog,
    /// Identity providers configured for the deployment (`kiln config`, the config endpoint).
    pub auth: RwLock<AuthConfig>,
    /// Identity providers the deployed app declares in its `auth.config.ts`.
    pub app_auth: RwLock<AuthConfig>,
    /// Verifies user tokens.
    pub verifier: auth::Verifier,
    /// Bumped to close every socket of the deployment.
    pub drop_sockets: watch::Sender<u64>,
    /// Open sockets.
    pub connections: AtomicUsize,
    /// Pushes of the `convex` CLI.
    pub pushes: push::Pushes,
    /// Snapshot exports and imports.
    pub snapshots: Arc<snapshots::Snapshots>,
    /// Turns true when the deployment closes here (stops its hub).
    pub closed: watch::Sender<bool>,
}

impl DeploymentState {
    /// Every accepted identity provider: the configured ones, then the app's.
    pub fn auth_config(&self) -> AuthConfig {
        let mut config = self.auth.read().clone();
        config.providers.extend(self.app_auth.read().providers.iter().cloned());
        config
    }
}

/// The identity providers of a deployed app's `auth.config.ts` (checked when it was deployed).
pub fn app_auth(manifest: &kiln_runtime::Manifest) -> AuthConfig {
    let specs = manifest.auth_providers().unwrap_or_else(|e| {
        tracing::error!(error = %e, "a deployed app's auth.config.ts no longer reads");
        Vec::new()
    });
    AuthConfig { providers: specs.into_iter().map(AuthProvider::from_app).collect() }
}

/// State shared by every request.
pub struct AppState {
    /// The configuration.
    pub config: ServerConfig,
    /// The function runner.
    pub runtime: Arc<Runtime>,
    /// Admin keys and deployment settings.
    pub registry: Registry,
    /// This host's place among the hosts sharing its database (`None`: it is alone).
    pub cluster: Option<cluster::Member>,
    /// Deployments by name.
    pub deployments: RwLock<HashMap<String, Arc<DeploymentState>>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Turns true when the server stops.
    pub shutdown: watch::Sender<bool>,
    /// Pushes compiled at once (`PushLimits::concurrent_compiles`).
    pub compiles: Semaphore,
    /// Held while a deployment opens or closes here: a poll and a creation never open the same
    /// one twice (a second opening would take its lease again and fence the first).
    opening: tokio::sync::Mutex<()>,
}

impl AppState {
    /// A deployment by name.
    pub fn deployment(&self, name: &str) -> Result<Arc<DeploymentState>> {
        self.deployments.read().get(name).cloned().ok_or_else(|| ServerError::DeploymentNotFound(name.to_owned()))
    }

    /// A deployment's store.
    pub fn deployment_store(&self, name: &str) -> Result<Arc<kiln_store::Store>> {
        self.runtime
            .deployment(name)
            .map(|d| d.store().clone())
            .ok_or_else(|| ServerError::DeploymentNotFound(name.to_owned()))
    }

    /// Records a finished call in the deployment's log and the metrics.
    pub fn observe(&self, dep: &DeploymentState, kind: FunctionKind, path: &str, out: &CallOutcome) {
        let outcome = match &out.result {
            Ok(_) => "ok",
            Err(e) => e.code.as_str(),
        };
        self.metrics.call(&dep.name, logs::kind_name(kind), outcome, out.fuel);
        dep.log.record(kind, path, out);
    }

    /// A deployment's fetch policy: the server's lists joined with the deployment's own.
    pub fn fetch_policy(&self, own: &registry::FetchConfig) -> kiln_runtime::FetchPolicy {
        let base = &self.config.fetch;
        let join = |a: &[String], b: &[String]| a.iter().chain(b).cloned().collect::<Vec<_>>();
        kiln_runtime::FetchPolicy {
            allowed_hosts: join(&base.allowed_hosts, &own.allowed_hosts),
            denied_hosts: join(&base.denied_hosts, &own.denied_hosts),
            only_allowed: own.only_allowed,
            ..kiln_runtime::FetchPolicy::default()
        }
    }

    /// Opens a deployment in the runtime and starts its hub (with other hosts, after loading
    /// its deployed app from the shared records; fails while another host holds it).
    pub async fn open_deployment(self: &Arc<Self>, name: &str) -> Result<Arc<DeploymentState>> {
        let _opening = self.opening.lock().await;
        if let Some(open) = self.deployments.read().get(name) {
            return Ok(open.clone());
        }
        if self.runtime.deployment(name).is_none() {
            cluster::fetch_app(self, name).await?;
        }
        let record = self.registry.get(name).unwrap_or_default();
        let config = DeploymentConfig {
            env: record.env.clone(),
            fetch: self.fetch_policy(&record.fetch),
            public_url: self.config.deployment_url(name),
            site_url: self.config.site_url(name),
            limits: self.config.limits.clone(),
            ..DeploymentConfig::default()
        };
        let dep = match self.runtime.deployment(name) {
            Some(d) => d,
            None => self.runtime.open_deployment(name, config).await?,
        };
        let weak = Arc::downgrade(self);
        let dep_name = name.to_owned();
        let observer: sync::hub::Observer = Arc::new(move |kind, path, out| {
            if let Some(state) = weak.upgrade()
                && let Some(d) = state.deployments.read().get(&dep_name).cloned()
            {
                state.observe(&d, kind, path, out);
            }
        });
        let snapshots = Arc::new(snapshots::Snapshots::default());
        let closed = watch::channel(false).0;
        let hub = Arc::new(Hub::new(
            name,
            self.runtime.clone(),
            dep.store().clone(),
            self.config.rerun_concurrency,
            observer,
            snapshots.clone(),
        ));
        // The hub stops when the server stops or the deployment closes here.
        let (stop_hub, hub_stopped) = watch::channel(false);
        let (mut server_stop, mut dep_closed) = (self.shutdown.subscribe(), closed.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = server_stop.wait_for(|s| *s) => {}
                _ = dep_closed.wait_for(|s| *s) => {}
            }
            stop_hub.send_replace(true);
        });
        tokio::spawn(hub.clone().run(hub_stopped));
        let state = Arc::new(DeploymentState {
            name: name.to_owned(),
            hub,
            inflight: Arc::new(Semaphore::new(self.config.max_inflight_per_deployment)),
            log: FunctionLog::new(self.config.log_history),
            auth: RwLock::new(record.auth),
            app_auth: RwLock::new(dep.version().map(|v| app_auth(&v.manifest)).unwrap_or_default()),
            verifier: auth::Verifier::default(),
            drop_sockets: watch::channel(0).0,
            connections: AtomicUsize::new(0),
            pushes: push::Pushes::default(),
            snapshots,
            closed,
        });
        self.deployments.write().insert(name.to_owned(), state.clone());
        Ok(state)
    }

    /// Creates a deployment; returns its admin key (shown once).
    pub async fn create_deployment(self: &Arc<Self>, name: &str) -> Result<String> {
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(ServerError::BadRequest(format!(
                "invalid deployment name {name:?}: use 1-64 of [A-Za-z0-9_-]"
            )));
        }
        if name == registry::INSTANCE_KEY_NAME {
            // The instance admin key begins with it; requests are routed by admin keys' names.
            return Err(ServerError::BadRequest(format!("{name:?} is reserved; choose another deployment name")));
        }
        let key = self.registry.create(name).await?;
        self.open_deployment(name).await?;
        tracing::info!(deployment = name, "deployment created");
        Ok(key)
    }

    /// Stops serving a deployment here: its sockets close (clients reconnect, and reach the
    /// host that serves it next), its hub and scheduler stop, and its storage closes once the
    /// calls still running end (releasing its lease for another host).
    pub async fn close_deployment(&self, name: &str) {
        let _closing = self.opening.lock().await;
        let state = self.deployments.write().remove(name);
        if let Some(state) = state {
            state.closed.send_replace(true);
            state.drop_sockets.send_modify(|n| *n += 1);
        }
        self.runtime.close_deployment(name).await;
    }
}

/// Raises the soft limit of open files to the hard limit: every WebSocket is a descriptor,
/// and the usual soft limit (1024) would cap a server at about that many clients.
pub fn raise_open_file_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
                limit.rlim_cur = limit.rlim_max;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// What a first start created, to be shown to the operator once.
#[derive(Debug, Default)]
pub struct FirstStart {
    /// The instance admin key (also in `<data>/admin_key`).
    pub instance_key: Option<String>,
    /// The default deployment's admin key.
    pub default_admin_key: Option<String>,
}

/// A running server (without its listener; see [`Server::serve`]).
pub struct Server {
    state: Arc<AppState>,
}

impl Server {
    /// Opens the data directory, the runtime (deployments' persistence from `persistence`) and
    /// every deployment (creating the default deployment on first start). Must be called
    /// within a tokio runtime.
    pub async fn start(
        config: ServerConfig,
        persistence: Arc<dyn kiln_persistence::PersistenceFactory>,
    ) -> Result<(Server, FirstStart)> {
        Server::start_member(config, persistence, None).await
    }

    /// [`Server::start`] as one of the hosts sharing `member`'s database: the registry and
    /// deployed apps are the shared ones, and this host serves the deployments whose leases
    /// it takes (see [`cluster`]), forwarding requests for the others to their hosts.
    pub async fn start_member(
        config: ServerConfig,
        persistence: Arc<dyn kiln_persistence::PersistenceFactory>,
        member: Option<cluster::Member>,
    ) -> Result<(Server, FirstStart)> {
        let (registry, instance_key) = match &member {
            Some(m) => Registry::open_shared(&config.runtime.data_dir, m.backend.clone()).await?,
            None => Registry::open(&config.runtime.data_dir)?,
        };
        let mut runtime = Runtime::new(config.runtime.clone(), persistence)?;
        if let Some(blobs) = member.as_ref().and_then(|m| m.blobs.clone()) {
            runtime = runtime.with_blob_factory(blobs);
        }
        let state = Arc::new(AppState {
            runtime: Arc::new(runtime),
            registry,
            cluster: member,
            deployments: RwLock::default(),
            metrics: Metrics::default(),
            shutdown: watch::channel(false).0,
            compiles: Semaphore::new(config.push.concurrent_compiles.max(1)),
            opening: tokio::sync::Mutex::new(()),
            config,
        });
        // Scheduled functions' calls reach the function log and the metrics like clients' do.
        let mut background = state.runtime.background_calls();
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            loop {
                let call = match background.recv().await {
                    Ok(call) => call,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the function log missed scheduled calls");
                        continue;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let Some(state) = weak.upgrade() else { return };
                let dep = state.deployments.read().get(&call.deployment).cloned();
                if let Some(dep) = dep {
                    state.observe(&dep, call.kind, &call.path, &call.outcome);
                }
            }
        });
        let names = state.registry.names();
        let mut first = FirstStart { instance_key, default_admin_key: None };
        let default = state.config.default_deployment.clone();
        if state.cluster.is_some() {
            // Another host may create the default deployment at the same time: one wins.
            if !names.contains(&default) {
                match state.create_deployment(&default).await {
                    Ok(key) => first.default_admin_key = Some(key),
                    Err(ServerError::DeploymentExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            cluster::poll(&state).await?;
            tokio::spawn(cluster::run(Arc::downgrade(&state), state.shutdown.subscribe()));
            return Ok((Server { state }, first));
        }
        for name in &names {
            state.open_deployment(name).await?;
        }
        if !names.contains(&default) {
            first.default_admin_key = Some(state.create_deployment(&default).await?);
        }
        Ok((Server { state }, first))
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Serves on `listener` until [`Server::shutdown`] is called.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.accept(listener, false).await
    }

    /// Serves the site origin (HTTP actions at every path) on `listener` until
    /// [`Server::shutdown`] is called.
    pub async fn serve_site(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        self.accept(listener, true).await
    }

    async fn accept(&self, listener: tokio::net::TcpListener, site: bool) -> std::io::Result<()> {
        let mut stop = self.state.shutdown.subscribe();
        let service = routing::service(self.state.clone(), site);
        // Every connection task holds a sender; all dropped means all connections ended.
        let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
        let config = &self.state.config;
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, or a connection reset before it was accepted:
                        // keep serving the connections there are.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                },
                () = async { drop(stop.wait_for(|s| *s).await) } => break,
            };
            // Responses are small and latency-bound: never hold one back waiting for an ACK.
            let _ = stream.set_nodelay(true);
            let svc =
                tower::ServiceExt::map_request(service.clone(), |req: axum::http::Request<hyper::body::Incoming>| {
                    req.map(axum::body::Body::new)
                });
            let mut http = hyper::server::conn::http1::Builder::new();
            // A connection that does not send a complete request head within the timeout is
            // closed, also while idle between requests; a stalled body is `body_timeout`'s.
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(config.header_timeout);
            let conn = http
                .serve_connection(
                    hyper_util::rt::TokioIo::new(stream),
                    hyper_util::service::TowerToHyperService::new(svc),
                )
                .with_upgrades();
            let (open, mut stop) = (open_tx.clone(), self.state.shutdown.subscribe());
            tokio::spawn(async move {
                let mut conn = std::pin::pin!(conn);
                let ended = tokio::select! {
                    ended = conn.as_mut() => ended,
                    () = async { drop(stop.wait_for(|s| *s).await) } => {
                        // The request in progress finishes; no further one is read.
                        conn.as_mut().graceful_shutdown();
                        tokio::time::timeout(std::time::Duration::from_secs(10), conn).await.unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(open);
            });
        }
        drop(listener);
        drop(open_tx);
        // Upgraded sockets were told to close by the shutdown; their connections have ended.
        let _ = open_rx.recv().await;
        Ok(())
    }

    /// Stops serving: closes sockets, stops hubs, flushes usage.
    pub async fn shutdown(&self) {
        self.state.shutdown.send_replace(true);
        self.state.runtime.shutdown().await;
        if let Some(member) = &self.state.cluster
            && let Err(e) = member.backend.leave().await
        {
            tracing::warn!(error = %e, "leaving the cluster failed");
        }
    }
}
