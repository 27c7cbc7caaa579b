//! `kiln serve` and `kiln dev`: a server in this process; for `dev`, also build, deploy and
//! redeploy whenever the app's `convex/` folder changes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use kiln_server::{Server, ServerConfig};
use notify::Watcher;

use crate::CliError;
use crate::client::{Target, deployment_url};

/// Options of a local server.
pub struct ServeOptions {
    /// Data directory.
    pub data: PathBuf,
    /// A PostgreSQL database for the deployments' data (default: SQLite files under `data`).
    pub database: Option<String>,
    /// Where the other hosts sharing `database` reach this one (default: `http://<listen>`).
    pub advertise: Option<String>,
    /// Listen address.
    pub listen: SocketAddr,
    /// The site origin's address (`off`: none); by default the port after `listen`'s.
    pub site_listen: Option<String>,
    /// Static files to serve at `/`.
    pub static_dir: Option<PathBuf>,
    /// Hosts every deployment's actions may fetch even at non-public addresses.
    pub allow_fetch: Vec<String>,
    /// Hosts no deployment's actions may fetch.
    pub deny_fetch: Vec<String>,
}

/// Raises the open-file limit to its hard maximum: every WebSocket is a file descriptor, and
/// the usual soft limit (1024) would cap a server at about a thousand clients.
fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    kiln_server::raise_open_file_limit();
    tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(|e| CliError::Usage(e.to_string()))
}

fn config(opts: &ServeOptions) -> ServerConfig {
    let mut config = crate::knobs::server_config();
    config.listen = opts.listen;
    config.static_dir = opts.static_dir.clone();
    config.runtime.data_dir = opts.data.clone();
    config.runtime.cache_dir = Some(crate::knobs::cache_dir().unwrap_or_else(|| opts.data.join("cache")));
    config.fetch.allowed_hosts = opts.allow_fetch.clone();
    config.fetch.denied_hosts = opts.deny_fetch.clone();
    config
}

/// Where the site origin listens: `--site-listen`, or the port after `--listen`'s (port 0
/// stays 0: any free port).
fn site_address(opts: &ServeOptions) -> Result<Option<SocketAddr>, CliError> {
    match opts.site_listen.as_deref() {
        Some("off") => Ok(None),
        Some(text) => text
            .parse()
            .map(Some)
            .map_err(|e| CliError::Usage(format!("--site-listen {text:?}: not an address or `off`: {e}"))),
        None => {
            let port = match opts.listen.port() {
                0 => 0,
                p => p.checked_add(1).ok_or_else(|| CliError::Usage("no port after 65535 for the site".into()))?,
            };
            Ok(Some(SocketAddr::new(opts.listen.ip(), port)))
        }
    }
}

/// A started local server.
struct Local {
    server: std::sync::Arc<Server>,
    url: String,
    instance_key: String,
}

async fn start_local(opts: &ServeOptions) -> Result<Local, CliError> {
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", opts.listen)))?;
    let addr = listener.local_addr().map_err(|e| CliError::Usage(e.to_string()))?;
    let site = match site_address(opts)? {
        Some(at) => {
            let site = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| CliError::Usage(format!("cannot listen on {at} for HTTP actions (--site-listen): {e}")))?;
            Some(site)
        }
        None => None,
    };
    let mut config = config(opts);
    // Port 0 picks a port: the files' and site's URLs name the ones the listeners got.
    config.listen = addr;
    config.site_listen = match &site {
        Some(l) => Some(l.local_addr().map_err(|e| CliError::Usage(e.to_string()))?),
        None => None,
    };
    let (persistence, member): (std::sync::Arc<dyn kiln_persistence::PersistenceFactory>, _) = match &opts.database {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let options = crate::knobs::postgres_options(url);
            let lease = options.lease_ttl;
            let factory = kiln_postgres::PostgresFactory::new(options)
                .map_err(|e| CliError::Usage(format!("--database: {e}")))?;
            // Every host of the database is a member of its cluster.
            let cluster = kiln_postgres::cluster::PostgresCluster::open(&factory)
                .await
                .map_err(|e| CliError::Usage(format!("--database: {e}")))?;
            let advertise = match &opts.advertise {
                Some(url) => url.trim_end_matches('/').to_owned(),
                None if addr.ip().is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
                None => format!("http://{addr}"),
            };
            if !advertise.starts_with("http://") {
                return Err(CliError::Usage(format!("--advertise {advertise:?}: give an http:// URL")));
            }
            let poll = crate::knobs::cluster_poll();
            let factory = std::sync::Arc::new(factory);
            // Files live in the database too, so that they move with their deployment.
            let member = kiln_server::cluster::Member::new(std::sync::Arc::new(cluster), advertise, poll, lease)
                .with_blobs(factory.clone());
            (factory as _, Some(member))
        }
        Some(_) => return Err(CliError::Usage("--database takes a postgres:// URL".into())),
        None if opts.advertise.is_some() => {
            return Err(CliError::Usage("--advertise is for hosts sharing a --database".into()));
        }
        None => {
            let factory = kiln_sqlite::SqliteFactory {
                data_dir: config.runtime.data_dir.clone(),
                options: crate::knobs::sqlite_options(),
            };
            (std::sync::Arc::new(factory) as _, None)
        }
    };
    let (server, first) = Server::start_member(config, persistence, member).await?;
    let server = std::sync::Arc::new(server);
    let url = format!("http://{addr}");
    if let Some(key) = &first.instance_key {
        println!(
            "created {} with a new instance admin key (saved in {}):\n  {key}",
            opts.data.display(),
            opts.data.join("admin_key").display()
        );
    }
    if let Some(key) = &first.default_admin_key {
        println!("admin key of the default deployment (shown once):\n  {key}");
        println!("for the official convex CLI, set:\n{}", crate::self_hosted_lines(&url, key));
    }
    let instance_key = crate::client::admin_key(first.instance_key.clone(), &opts.data)?;
    let serving = server.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve(listener).await {
            eprintln!("server error: {e}");
        }
    });
    if let Some(site) = site {
        let serving = server.clone();
        tokio::spawn(async move {
            if let Err(e) = serving.serve_site(site).await {
                eprintln!("site server error: {e}");
            }
        });
    }
    Ok(Local { server, url, instance_key })
}

/// `kiln serve`: runs until Ctrl-C.
pub fn serve(opts: ServeOptions) -> Result<(), CliError> {
    runtime()?.block_on(async {
        let local = start_local(&opts).await?;
        let names = local.server.state().registry.names();
        println!("kiln is serving on {} (data: {})", local.url, opts.data.display());
        for name in names {
            println!("  deployment {name}: {}/d/{name}", local.url);
        }
        if opts.static_dir.is_some() {
            println!("  web page: {}/", local.url);
        }
        let config = &local.server.state().config;
        if config.site_listen.is_some() {
            println!("  HTTP actions (site): {}", config.site_url(&config.default_deployment));
        }
        let _ = tokio::signal::ctrl_c().await;
        println!("stopping");
        local.server.shutdown().await;
        Ok(())
    })
}

/// Options of `kiln dev`.
pub struct DevOptions {
    /// The app directory.
    pub app: PathBuf,
    /// A running server to use instead of starting one.
    pub url: Option<String>,
    /// Its admin key.
    pub admin_key: Option<String>,
    /// The deployment (default: the server's default deployment).
    pub deployment: Option<String>,
    /// The local server, when one is started.
    pub serve: ServeOptions,
    /// Stop after the first deploy (for scripts and tests).
    pub once: bool,
}

fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} {elapsed}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Builds the app and deploys it; prints what happened.
pub fn build_and_deploy(app: &Path, target: &Target) -> Result<(), CliError> {
    let started = Instant::now();
    let bar = spinner("building");
    let built = kiln_guest_sdk::build_app(app, &crate::knobs::build_options());
    let built = match built {
        Ok(b) => b,
        Err(e) => {
            bar.finish_and_clear();
            return Err(e.into());
        }
    };
    for warning in &built.warnings {
        bar.println(format!("warning: {warning}"));
    }
    bar.set_message(format!("deploying {} KiB", built.component.len() / 1024));
    let manifest = serde_json::to_value(&built.manifest).map_err(|e| CliError::Usage(e.to_string()))?;
    let reply = target.deploy(&built.component, &manifest);
    bar.finish_and_clear();
    let reply = reply?;
    println!(
        "deployed version {} ({} functions) to {} in {:.1} s",
        reply.get("version").and_then(|v| v.as_str()).unwrap_or("?"),
        built.manifest.functions.len(),
        target.url,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

enum Event {
    Changed(PathBuf),
    Stop,
}

/// `kiln dev`: build, deploy, then watch and redeploy until Ctrl-C.
pub fn dev(opts: DevOptions) -> Result<(), CliError> {
    let rt = runtime()?;
    let (target, local) = match &opts.url {
        Some(url) => {
            let key = crate::client::admin_key(opts.admin_key.clone(), &opts.serve.data)?;
            (Target { url: deployment_url(url, opts.deployment.as_deref()), admin_key: key }, None)
        }
        None => {
            let local = rt.block_on(start_local(&opts.serve))?;
            if let Some(d) = &opts.deployment
                && local.server.state().deployment(d).is_err()
            {
                let key = rt.block_on(local.server.state().create_deployment(d))?;
                println!("created deployment {d}; its admin key (shown once):\n  {key}");
            }
            let target = Target {
                url: deployment_url(&local.url, opts.deployment.as_deref()),
                admin_key: local.instance_key.clone(),
            };
            println!("kiln dev: serving on {}", local.url);
            (target, Some(local))
        }
    };
    let first = build_and_deploy(&opts.app, &target);
    if opts.serve.static_dir.is_some()
        && let Some(local) = &local
    {
        println!("open {}/ in a browser", local.url);
    }
    if opts.once {
        if let Some(local) = local {
            rt.block_on(local.server.shutdown());
        }
        return first;
    }
    if let Err(e) = first {
        eprintln!("error[{}]: {e}", e.code());
    }

    let (tx, rx) = mpsc::channel();
    let watch_tx = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            for path in event.paths {
                let _ = watch_tx.send(Event::Changed(path));
            }
        }
    })
    .map_err(|e| CliError::Usage(format!("cannot watch files: {e}")))?;
    let convex = opts.app.join("convex");
    watcher
        .watch(&convex, notify::RecursiveMode::Recursive)
        .map_err(|e| CliError::Usage(format!("cannot watch {}: {e}", convex.display())))?;
    rt.spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(Event::Stop);
    });
    println!("watching {} for changes (Ctrl-C stops)", convex.display());
    // Generated files and build outputs change during builds; they do not trigger one.
    let relevant = |p: &Path| !p.components().any(|c| matches!(c.as_os_str().to_str(), Some("_generated" | ".kiln")));
    loop {
        match rx.recv() {
            Ok(Event::Stop) | Err(_) => break,
            Ok(Event::Changed(p)) if !relevant(&p) => continue,
            Ok(Event::Changed(_)) => {
                // Let a burst of saves settle.
                let mut stop = false;
                while let Ok(e) = rx.recv_timeout(Duration::from_millis(250)) {
                    stop |= matches!(e, Event::Stop);
                }
                if stop {
                    break;
                }
                if let Err(e) = build_and_deploy(&opts.app, &target) {
                    eprintln!("error[{}]: {e}", e.code());
                }
            }
        }
    }
    drop(watcher);
    if let Some(local) = local {
        rt.block_on(local.server.shutdown());
    }
    Ok(())
}
