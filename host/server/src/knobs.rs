//! Tunables of the server, with their defaults (the `kiln` binary reads `KILN_*` overrides
//! into them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kiln_runtime::RuntimeConfig;

/// The server's configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen (`KILN_LISTEN`, default `127.0.0.1:3210`).
    pub listen: SocketAddr,
    /// A directory of static files served at `/` (e.g. an example's web page).
    pub static_dir: Option<PathBuf>,
    /// The deployment served at the root (`/api/...`); others live under `/d/<name>`.
    pub default_deployment: String,
    /// Largest HTTP request body (function calls).
    pub max_body_bytes: usize,
    /// Largest deploy upload (also a push, and one part of an import's upload).
    pub max_deploy_bytes: usize,
    /// Largest snapshot an import may upload in all.
    pub max_import_bytes: u64,
    /// Largest WebSocket message from a client.
    pub max_ws_message_bytes: usize,
    /// Queries one socket may subscribe to.
    pub max_queries_per_socket: usize,
    /// Mutations one socket may have queued.
    pub max_queued_mutations_per_socket: usize,
    /// Actions one socket may run at once.
    pub max_actions_per_socket: usize,
    /// Function calls in flight per deployment from HTTP requests and sockets together;
    /// beyond it requests are refused with `TooManyConcurrentRequests`.
    pub max_inflight_per_deployment: usize,
    /// How often a WebSocket ping frame is sent.
    pub ping_interval: Duration,
    /// After this long without sending anything, a socket gets a JSON `Ping`.
    pub idle_ping: Duration,
    /// A socket from which nothing (not even a pong) arrives for this long is dropped.
    pub client_timeout: Duration,
    /// A socket that cannot take a message within this time is dropped.
    pub send_timeout: Duration,
    /// An HTTP connection that does not send a complete request head within this time (also
    /// while idle between requests) is closed.
    pub header_timeout: Duration,
    /// A request whose body does not arrive within this time is refused (`RequestTimeout`)
    /// and its connection closed.
    pub body_timeout: Duration,
    /// Transitions larger than this are sent as `TransitionChunk`s.
    pub transition_chunk_bytes: usize,
    /// Subscribed queries re-run at once per deployment.
    pub rerun_concurrency: usize,
    /// Log entries kept per deployment for `kiln logs`.
    pub log_history: usize,
    /// A token that may read `/metrics` (`Authorization: Bearer <token>`) besides the instance
    /// admin key (`KILN_METRICS_TOKEN`); none by default.
    pub metrics_token: Option<String>,
    /// Where every deployment's actions may fetch, before each deployment's own lists.
    pub fetch: FetchLists,
    /// Bounds on compiling what the `convex` CLI pushes.
    pub push: PushLimits,
    /// Where clients reach this server (`KILN_PUBLIC_URL`; default `http://<listen address>`):
    /// the origin of file URLs and upload URLs.
    pub public_url: Option<String>,
    /// Where HTTP actions are served at the root of the URL, as at Convex's site origin
    /// (`KILN_SITE_LISTEN`; by default the port after `listen`'s, 3211; `None` serves them
    /// only under `/http/`).
    pub site_listen: Option<SocketAddr>,
    /// Where clients reach the site origin (`KILN_PUBLIC_SITE_URL`; default
    /// `http://<site address>`).
    pub public_site_url: Option<String>,
    /// Largest request body of an HTTP action (`KILN_MAX_HTTP_ACTION_BODY_BYTES`, default
    /// 20 MiB as Convex's); files go through upload URLs instead.
    pub max_http_action_body_bytes: usize,
    /// The call limits every deployment starts with (`KILN_MAX_FILE_BYTES` sets the file size limit).
    pub limits: kiln_runtime::Limits,
    /// The function runner's configuration (data directory included).
    pub runtime: RuntimeConfig,
}

/// Host lists of the fetch policy (see `kiln_runtime::FetchPolicy`).
#[derive(Clone, Debug, Default)]
pub struct FetchLists {
    /// Hosts actions may fetch even at loopback, private or link-local addresses.
    pub allowed_hosts: Vec<String>,
    /// Hosts actions may never fetch.
    pub denied_hosts: Vec<String>,
}

/// Bounds on compiling pushed modules, so a push cannot exhaust the host.
#[derive(Clone, Debug)]
pub struct PushLimits {
    /// The most source (all modules, source maps not counted) one push may have.
    pub max_source_bytes: usize,
    /// How long loading the modules (their top-level code) may take.
    pub load_time: Duration,
    /// The most memory the app may grow while it loads.
    pub load_memory: usize,
    /// Pushes compiled at once on this host (each deployment compiles one at a time).
    pub concurrent_compiles: usize,
    /// A push not finished within this time is forgotten.
    pub pending_for: Duration,
}

impl Default for PushLimits {
    fn default() -> Self {
        PushLimits {
            max_source_bytes: 32 << 20,
            load_time: Duration::from_secs(30),
            load_memory: 1 << 30,
            concurrent_compiles: 1,
            pending_for: Duration::from_secs(15 * 60),
        }
    }
}

impl ServerConfig {
    /// Where clients reach deployment `name`: the public URL, with `/d/<name>` for all but
    /// the default deployment.
    pub fn deployment_url(&self, name: &str) -> String {
        let base = match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.listen.ip().is_unspecified() => format!("http://127.0.0.1:{}", self.listen.port()),
            None => format!("http://{}", self.listen),
        };
        if name == self.default_deployment { base } else { format!("{base}/d/{name}") }
    }

    /// Where deployment `name`'s HTTP actions are at the site origin (under `/http` of its
    /// URL when no site address is served).
    pub fn site_url(&self, name: &str) -> String {
        let base = match (&self.public_site_url, self.site_listen) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(addr)) if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
            (None, Some(addr)) => format!("http://{addr}"),
            (None, None) => return format!("{}/http", self.deployment_url(name)),
        };
        if name == self.default_deployment { base } else { format!("{base}/d/{name}") }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        let runtime = RuntimeConfig::default();
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3210)),
            static_dir: None,
            public_url: None,
            site_listen: Some(SocketAddr::from(([127, 0, 0, 1], 3211))),
            public_site_url: None,
            max_http_action_body_bytes: 20 << 20,
            limits: kiln_runtime::Limits::default(),
            default_deployment: "default".to_owned(),
            max_body_bytes: 40 << 20,
            max_deploy_bytes: 128 << 20,
            max_import_bytes: 16 << 30,
            max_ws_message_bytes: 40 << 20,
            max_queries_per_socket: 2048,
            max_queued_mutations_per_socket: 1024,
            max_actions_per_socket: 64,
            max_inflight_per_deployment: 4096,
            ping_interval: Duration::from_secs(5),
            idle_ping: Duration::from_secs(15),
            client_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            transition_chunk_bytes: 4 << 20,
            rerun_concurrency: runtime.worker_threads,
            log_history: 1000,
            metrics_token: None,
            fetch: FetchLists::default(),
            push: PushLimits::default(),
            runtime,
        }
    }
}
