//! Several hosts serving one set of deployments from a shared database.
//!
//! Each host sends heartbeats (with the URL it is reached at, `--advertise`) and, every poll,
//! reads the hosts, the shared registry and the deployments' leases. A deployment is served
//! by the host holding its lease (the persistence takes it on open and fences commits with
//! it); this module decides which host tries to take which. Every host computes the same plan
//! from the same view ([`assign`]: each deployment to the live host it scores highest among
//! those under their share); a free or expired lease is taken by the host the plan names (by
//! any host once it has stayed free for a lease time, so a named host that never comes does
//! not strand it), and a host holding a deployment the plan gives another hands it over, one
//! per poll.
//! A deployment whose lease another host took is closed here at once. Requests and sockets
//! for a deployment served elsewhere are forwarded to its owner ([`forward`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use kiln_persistence::cluster::{Cluster, HostEntry, LeaseEntry};
use parking_lot::RwLock;
use sha2::Digest;

use crate::AppState;
use crate::error::{Result, ServerError};
use crate::routing::{Deployment, ForwardUri};

/// The header a forwarded request carries (the forwarding host's id): it is never forwarded again.
pub const FORWARDED_BY: &str = "x-kiln-forwarded-by";

/// Shared records of deployed apps: `app/<name>` (the component), `appdigest/<name>` (its
/// SHA-256, which hosts poll to compile new apps ahead of a takeover) and `pushed/<name>` (the
/// modules of the `convex` CLI's last push, empty after `kiln deploy`).
const APP_RECORDS: &str = "app/";
const DIGEST_RECORDS: &str = "appdigest/";
const PUSHED_RECORDS: &str = "pushed/";

/// This host's place in a cluster.
pub struct Member {
    /// The shared database.
    pub backend: Arc<dyn Cluster>,
    /// Where this host is reached.
    pub advertise: String,
    /// How often the cluster is read.
    pub poll: Duration,
    /// How long a lease lasts unrenewed (a lease free for longer may be taken by any host).
    pub lease: Duration,
    /// Where deployments' files are kept, shared by the hosts (`None`: each host's data directory).
    pub blobs: Option<Arc<dyn kiln_blobs::BlobStoreFactory>>,
    view: RwLock<View>,
    /// The app digest each deployment served elsewhere was compiled at here (so that taking
    /// it over loads compiled code instead of compiling).
    warmed: parking_lot::Mutex<HashMap<String, String>>,
    /// An app is being compiled ahead (one at a time).
    warming: Arc<std::sync::atomic::AtomicBool>,
}

/// What the last poll read.
#[derive(Default)]
struct View {
    hosts: Vec<HostEntry>,
    leases: HashMap<String, LeaseEntry>,
}

impl Member {
    /// A member of `backend`'s cluster reached at `advertise`.
    pub fn new(backend: Arc<dyn Cluster>, advertise: String, poll: Duration, lease: Duration) -> Member {
        Member {
            backend,
            advertise,
            poll,
            lease,
            blobs: None,
            view: RwLock::default(),
            warmed: parking_lot::Mutex::default(),
            warming: Arc::default(),
        }
    }

    /// Keeps deployments' files in `blobs` (so that they move with the deployment).
    pub fn with_blobs(mut self, blobs: Arc<dyn kiln_blobs::BlobStoreFactory>) -> Member {
        self.blobs = Some(blobs);
        self
    }

    /// Where the host holding `deployment`'s live lease is reached, unless it is this one.
    pub fn owner_url(&self, deployment: &str) -> Option<String> {
        let view = self.view.read();
        let lease = view.leases.get(deployment).filter(|l| l.expires_in_ms > 0)?;
        if lease.owner == self.backend.host_id() {
            return None;
        }
        view.hosts.iter().find(|h| h.id == lease.owner).map(|h| h.url.clone())
    }

    /// The hosts and the deployments each holds, as of the last poll.
    pub fn hosts(&self) -> Vec<(HostEntry, Vec<String>)> {
        let view = self.view.read();
        view.hosts
            .iter()
            .map(|h| {
                let mut owned: Vec<String> = view
                    .leases
                    .values()
                    .filter(|l| l.owner == h.id && l.expires_in_ms > 0)
                    .map(|l| l.deployment.clone())
                    .collect();
                owned.sort();
                (h.clone(), owned)
            })
            .collect()
    }
}

/// A hash of the deployment and host (FNV-1a, then MurmurHash3's finalizer so that names
/// differing in one letter score independently): each deployment's preference order over
/// hosts, the same on every host.
fn score(deployment: &str, host: &str) -> u64 {
    let mut h = deployment
        .bytes()
        .chain([0])
        .chain(host.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// Which live host should serve each deployment: in name order, each goes to the host it
/// scores highest among those still under their share (`⌈deployments / hosts⌉`), so no host
/// gets more than its share and every host computes the same from the same view.
fn assign<'a>(names: &[String], live: &[&'a str]) -> HashMap<String, &'a str> {
    let share = names.len().div_ceil(live.len().max(1));
    let mut load: HashMap<&str, usize> = HashMap::new();
    let mut sorted: Vec<&String> = names.iter().collect();
    sorted.sort();
    let mut out = HashMap::new();
    for name in sorted {
        let host = live
            .iter()
            .copied()
            .filter(|h| load.get(h).copied().unwrap_or(0) < share)
            .max_by_key(|h| (score(name, h), *h));
        if let Some(host) = host {
            *load.entry(host).or_insert(0) += 1;
            out.insert(name.clone(), host);
        }
    }
    out
}

/// Runs polls until the server stops; a failed poll is logged and retried.
pub async fn run(state: std::sync::Weak<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        let Some(app) = state.upgrade() else { return };
        let Some(member) = app.cluster.as_ref() else { return };
        let every = member.poll;
        if let Err(e) = poll(&app).await {
            tracing::warn!(error = %e, "reading the cluster failed");
        }
        drop(app);
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Reads the hosts and the leases of every deployment (what [`Member::hosts`] answers).
pub async fn read(state: &AppState) -> Result<()> {
    let Some(member) = state.cluster.as_ref() else { return Ok(()) };
    let hosts = member.backend.hosts().await?;
    let leases = member.backend.leases(&state.registry.names()).await?;
    *member.view.write() = View { hosts, leases: leases.into_iter().map(|l| (l.deployment.clone(), l)).collect() };
    Ok(())
}

/// One poll: heartbeat, read, close what moved away, take what is ours, hand over one
/// deployment past our share.
pub async fn poll(state: &Arc<AppState>) -> Result<()> {
    let Some(member) = state.cluster.as_ref() else { return Ok(()) };
    let me = member.backend.host_id().to_owned();
    member.backend.heartbeat(&member.advertise).await?;
    state.registry.refresh().await?;
    let names = state.registry.names();
    let hosts = member.backend.hosts().await?;
    let leases: HashMap<String, LeaseEntry> =
        member.backend.leases(&names).await?.into_iter().map(|l| (l.deployment.clone(), l)).collect();
    let mut live: Vec<&str> = hosts.iter().filter(|h| h.alive).map(|h| h.id.as_str()).collect();
    if !live.contains(&me.as_str()) {
        live.push(&me);
    }
    let local: Vec<String> = state.deployments.read().keys().cloned().collect();
    for name in &local {
        if leases.get(name).is_some_and(|l| l.owner != me) {
            tracing::warn!(deployment = %name, "the deployment's lease moved to another host; closing it here");
            state.close_deployment(name).await;
        }
    }
    let lease_ms = i64::try_from(member.lease.as_millis()).unwrap_or(i64::MAX);
    let plan = assign(&names, &live);
    let mine = |name: &str| plan.get(name).is_some_and(|h| *h == me);
    for name in &names {
        if state.deployments.read().contains_key(name) {
            continue;
        }
        let lease = leases.get(name);
        let free = lease.is_none_or(|l| l.expires_in_ms <= 0);
        let stranded = lease.is_some_and(|l| l.expires_in_ms <= -lease_ms);
        if free && (mine(name) || stranded) {
            match state.open_deployment(name).await {
                Ok(_) => {
                    tracing::info!(deployment = %name, "took the deployment");
                }
                Err(e) => tracing::debug!(deployment = %name, error = %e, "could not take the deployment"),
            }
        }
    }
    *member.view.write() = View { hosts: hosts.clone(), leases: leases.clone() };
    warm(state, member).await?;
    // Hand over one deployment the plan gives another host (which takes it on its next poll).
    let held: Vec<String> = state.deployments.read().keys().cloned().collect();
    if let Some(name) = held.iter().find(|n| plan.get(n.as_str()).is_some_and(|h| *h != me)) {
        tracing::info!(deployment = %name, "handing the deployment over to another host");
        state.close_deployment(name).await;
    }
    Ok(())
}

/// Compiles, in the background, the newest app of one deployment another host serves, if this
/// host has not yet (the compiled code stays in the runtime's cache on disk).
async fn warm(state: &Arc<AppState>, member: &Member) -> Result<()> {
    use std::sync::atomic::Ordering;
    if member.warming.load(Ordering::Acquire) {
        return Ok(());
    }
    let digests = member.backend.list(DIGEST_RECORDS).await?;
    let next = digests.into_iter().find_map(|(key, digest)| {
        let name = key[DIGEST_RECORDS.len()..].to_owned();
        let digest = String::from_utf8(digest).ok()?;
        let fresh = !state.deployments.read().contains_key(&name)
            && member.warmed.lock().get(&name).is_none_or(|d| *d != digest);
        fresh.then_some((name, digest))
    });
    let Some((name, digest)) = next else { return Ok(()) };
    member.warming.store(true, Ordering::Release);
    let (weak, warming) = (Arc::downgrade(state), member.warming.clone());
    tokio::spawn(async move {
        if let Some(state) = weak.upgrade() {
            let path = state.config.runtime.data_dir.join(format!("{name}.wasm"));
            let compiled = match fetch_app(&state, &name).await {
                Ok(()) => match std::fs::read(&path) {
                    Ok(bytes) => state.runtime.prepare(&bytes).await.map(drop).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            };
            match compiled {
                Ok(()) => tracing::info!(deployment = %name, "compiled its app ahead of a takeover"),
                Err(e) => tracing::warn!(deployment = %name, error = %e, "compiling an app ahead failed"),
            }
            if let Some(member) = &state.cluster {
                member.warmed.lock().insert(name, digest);
            }
        }
        warming.store(false, Ordering::Release);
    });
    Ok(())
}

/// Copies a deployed app (and the modules of its push) to the shared records, so that the
/// host that serves it next loads the same.
pub async fn publish_app(state: &AppState, deployment: &str) -> Result<()> {
    let Some(member) = state.cluster.as_ref() else { return Ok(()) };
    let dir = &state.config.runtime.data_dir;
    let read = |path: std::path::PathBuf| match std::fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ServerError::Internal(format!("{}: {e}", path.display()))),
    };
    let pushed = read(dir.join(format!("{deployment}.modules.json")))?;
    member.backend.put(&format!("{PUSHED_RECORDS}{deployment}"), &pushed).await?;
    let app = read(dir.join(format!("{deployment}.wasm")))?;
    member.backend.put(&format!("{APP_RECORDS}{deployment}"), &app).await?;
    let digest: String = sha2::Sha256::digest(&app).iter().map(|b| format!("{b:02x}")).collect();
    member.backend.put(&format!("{DIGEST_RECORDS}{deployment}"), digest.as_bytes()).await?;
    // This host compiled it already.
    member.warmed.lock().insert(deployment.to_owned(), digest);
    Ok(())
}

/// Writes the shared deployed app of `deployment` where the runtime loads it from.
pub async fn fetch_app(state: &AppState, deployment: &str) -> Result<()> {
    let Some(member) = state.cluster.as_ref() else { return Ok(()) };
    let dir = &state.config.runtime.data_dir;
    for (prefix, file) in
        [(APP_RECORDS, format!("{deployment}.wasm")), (PUSHED_RECORDS, format!("{deployment}.modules.json"))]
    {
        let path = dir.join(file);
        let io = |e: std::io::Error| ServerError::Internal(format!("{}: {e}", path.display()));
        match member.backend.get(&format!("{prefix}{deployment}")).await? {
            Some(bytes) if !bytes.is_empty() && std::fs::read(&path).ok().as_deref() != Some(bytes.as_slice()) => {
                let tmp = path.with_extension("fetched.tmp");
                std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path)).map_err(io)?;
            }
            Some(bytes) if !bytes.is_empty() => {}
            Some(_) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
                _ => {}
            },
            // Never deployed (or by a host before it shared its apps): keep what is here.
            None => {}
        }
    }
    Ok(())
}

/// Whether a request is the deployment's (forwarded to its owner) rather than this host's
/// own (instance-wide admin routes, static files).
fn deployment_route(path: &str) -> bool {
    (path.starts_with("/api/") || path == "/http" || path.starts_with("/http/"))
        && !matches!(path, "/api/kiln/deployments" | "/api/kiln/hosts")
}

/// A request for a deployment between hosts is held at least this long.
const HOLD_AT_LEAST: Duration = Duration::from_secs(10);

/// Middleware: a request for a deployment another host serves goes to that host. One for a
/// deployment between hosts (its owner died or cannot be reached, or this host is opening it)
/// waits for it to be served again, up to two lease times (at least [`HOLD_AT_LEAST`]), then
/// is refused with `DeploymentUnavailable`.
pub async fn forward(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(member) = state.cluster.as_ref() else { return next.run(req).await };
    let Some(Deployment(name)) = req.extensions().get::<Deployment>().cloned() else { return next.run(req).await };
    if !deployment_route(req.uri().path()) || !state.registry.contains(&name) {
        return next.run(req).await;
    }
    let forwarded = req.headers().contains_key(FORWARDED_BY);
    let deadline = tokio::time::Instant::now() + (member.lease * 2).max(HOLD_AT_LEAST);
    let mut unreachable = None;
    loop {
        if state.deployments.read().contains_key(&name) {
            return next.run(req).await;
        }
        match member.owner_url(&name) {
            // Forwarded once already: the hosts disagree for a moment; the client retries.
            Some(_) if forwarded => break,
            Some(url) => match connect(&url).await {
                Ok(sender) => {
                    return proxy(sender, member.backend.host_id(), req).await.unwrap_or_else(|e| e.into_response());
                }
                // A dead owner's lease has not expired yet: wait for the host taking over.
                Err(e) => unreachable = Some(e),
            },
            None => {}
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    unreachable
        .unwrap_or_else(|| {
            ServerError::Unavailable(format!("deployment {name:?} is moving between hosts; retry in a moment"))
        })
        .into_response()
}

/// Opens an HTTP/1 connection to the host at `base` (`http://host:port`).
async fn connect(base: &str) -> Result<hyper::client::conn::http1::SendRequest<axum::body::Body>> {
    let authority = base
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ServerError::Unavailable(format!("the owner's address {base:?} is not an http:// URL")))?;
    let unreachable = |e: &dyn std::fmt::Display| {
        ServerError::Unavailable(format!("the host serving the deployment ({base}) cannot be reached: {e}; retry"))
    };
    let stream = tokio::net::TcpStream::connect(authority).await.map_err(|e| unreachable(&e))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| unreachable(&e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "a forwarded connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `req` (as it arrived, before the deployment prefix was stripped) over `sender`; a
/// WebSocket upgrade becomes a tunnel between the client and that host.
async fn proxy(
    mut sender: hyper::client::conn::http1::SendRequest<axum::body::Body>,
    me: &str,
    mut req: Request,
) -> Result<Response> {
    if let Some(ForwardUri(uri)) = req.extensions().get::<ForwardUri>().cloned() {
        let path: Uri = uri.path_and_query().map_or("/", |p| p.as_str()).parse().unwrap_or_default();
        *req.uri_mut() = path;
    }
    if let Ok(value) = me.parse() {
        req.headers_mut().insert(FORWARDED_BY, value);
    }
    let upgrade = req.headers().contains_key(axum::http::header::UPGRADE).then(|| hyper::upgrade::on(&mut req));
    let mut response = sender.send_request(req).await.map_err(|e| {
        ServerError::Unavailable(format!("the host serving the deployment failed to answer: {e}; retry"))
    })?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client) = upgrade
    {
        let owner = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            let (Ok(client), Ok(owner)) = (client.await, owner.await) else { return };
            let (mut client, mut owner) = (TokioIo::new(client), TokioIo::new(owner));
            let _ = tokio::io::copy_bidirectional(&mut client, &mut owner).await;
        });
    }
    Ok(response.map(axum::body::Body::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_plans_the_same_balanced_placement() {
        let hosts = ["a-1", "b-2", "c-3"];
        for n in [1usize, 2, 3, 5, 7, 300] {
            let names: Vec<String> = (0..n).map(|i| format!("app{i}")).collect();
            let plan = assign(&names, &hosts);
            assert_eq!(plan.len(), n, "every deployment has a host");
            let mut reversed = names.clone();
            reversed.reverse();
            let reordered = assign(&reversed, &[hosts[2], hosts[0], hosts[1]]);
            assert_eq!(plan, reordered, "the plan depends on neither list's order");
            let share = n.div_ceil(hosts.len());
            for host in hosts {
                let load = plan.values().filter(|h| **h == host).count();
                assert!(load <= share, "{host} got {load} of {n} (share {share})");
            }
        }
        // Two deployments on three hosts never share one (the placement the node test expects).
        for i in 0..200 {
            let names = vec![format!("x{i}"), "default".to_owned()];
            let plan = assign(&names, &hosts);
            assert_ne!(plan[&names[0]], plan[&names[1]]);
        }
    }

    #[test]
    fn only_deployment_routes_are_forwarded() {
        assert!(deployment_route("/api/query"));
        assert!(deployment_route("/api/1.48.0/sync"));
        assert!(deployment_route("/http/hook"));
        assert!(!deployment_route("/api/kiln/hosts"));
        assert!(!deployment_route("/api/kiln/deployments"));
        assert!(!deployment_route("/index.html"));
        assert!(!deployment_route("/metrics"));
    }
}
