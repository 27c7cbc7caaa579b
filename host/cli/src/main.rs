//! `kiln`: the command-line tool of Kiln.

mod client;
mod dev;
mod knobs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use crate::client::{Target, admin_key, deployment_url};

/// mimalloc: under load every call allocates and frees on several threads, where glibc's
/// allocator spent ~11 % of the CPU (consolidating its fast bins among other things).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Everything the CLI can fail at, with stable codes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Building an app failed.
    #[error(transparent)]
    Sdk(#[from] kiln_guest_sdk::SdkError),
    /// The server could not start.
    #[error(transparent)]
    Server(#[from] kiln_server::ServerError),
    /// The server refused a request.
    #[error("{message}")]
    Remote {
        /// Its code.
        code: String,
        /// Its message.
        message: String,
    },
    /// A function failed.
    #[error("{message}{}", data.as_ref().map(|d| format!("\ndata: {d}")).unwrap_or_default())]
    Function {
        /// The error message.
        message: String,
        /// `ConvexError` data.
        data: Option<Value>,
    },
    /// The server could not be reached.
    #[error("{0}")]
    Http(String),
    /// Wrong usage or local problem.
    #[error("{0}")]
    Usage(String),
}

impl CliError {
    /// The stable code.
    pub fn code(&self) -> &str {
        match self {
            CliError::Sdk(e) => e.code(),
            CliError::Server(e) => e.code(),
            CliError::Remote { code, .. } => code,
            CliError::Function { .. } => "FunctionFailed",
            CliError::Http(_) => "Unreachable",
            CliError::Usage(_) => "Usage",
        }
    }
}

/// Kiln: Convex-style apps as WebAssembly components.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the server is.
#[derive(clap::Args, Clone)]
struct Remote {
    /// The server's URL.
    #[arg(long, env = "KILN_URL", default_value = "http://127.0.0.1:3210")]
    url: String,
    /// The deployment (default: the server's default deployment).
    #[arg(long, short = 'd', env = "KILN_DEPLOYMENT")]
    deployment: Option<String>,
    /// The admin key (default: a local server's instance key from its data directory).
    #[arg(long, env = "KILN_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// A local server's data directory (where its `admin_key` is).
    #[arg(long, env = "KILN_DATA_DIR", default_value = "kiln-data")]
    data: PathBuf,
}

impl Remote {
    fn target(&self) -> Result<Target, CliError> {
        Ok(Target {
            url: deployment_url(&self.url, self.deployment.as_deref()),
            admin_key: admin_key(self.admin_key.clone(), &self.data)?,
        })
    }
}

/// Local server options.
#[derive(clap::Args, Clone)]
struct Local {
    /// The data directory (one SQLite file per deployment, the compiled-component cache).
    #[arg(long, env = "KILN_DATA_DIR", default_value = "kiln-data")]
    data: PathBuf,
    /// Keep deployments' data in this PostgreSQL database (`postgres://user:password@host:port/db`,
    /// one schema per deployment) instead of SQLite files under `--data`, which then holds
    /// the compiled-component cache, the admin key and the deployment registry.
    #[arg(long, env = "KILN_DATABASE_URL", hide_env_values = true, value_name = "URL")]
    database: Option<String>,
    /// Where the other hosts sharing `--database` reach this one, to forward requests for the
    /// deployments it serves (default: `http://<--listen>`).
    #[arg(long, env = "KILN_ADVERTISE", value_name = "URL")]
    advertise: Option<String>,
    /// Where to listen.
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:3210")]
    listen: SocketAddr,
    /// Where to serve HTTP actions at the root of the URL, as Convex's site origin (default:
    /// the port after `--listen`'s, so 3211; `off` serves them only under `/http/`).
    #[arg(long, env = "KILN_SITE_LISTEN", value_name = "ADDRESS|off")]
    site_listen: Option<String>,
    /// A directory of static files to serve at `/` (e.g. a web page).
    #[arg(long = "static")]
    static_dir: Option<PathBuf>,
    /// A host every deployment's actions may fetch even at a loopback, private or link-local
    /// address (`name`, `*.suffix`, `host:port`, an IP address); repeatable.
    #[arg(long = "allow-fetch", value_name = "HOST")]
    allow_fetch: Vec<String>,
    /// A host no deployment's actions may fetch; repeatable.
    #[arg(long = "deny-fetch", value_name = "HOST")]
    deny_fetch: Vec<String>,
}

impl Local {
    fn options(&self) -> dev::ServeOptions {
        dev::ServeOptions {
            data: self.data.clone(),
            database: self.database.clone(),
            advertise: self.advertise.clone(),
            listen: self.listen,
            site_listen: self.site_listen.clone(),
            static_dir: self.static_dir.clone(),
            allow_fetch: self.allow_fetch.clone(),
            deny_fetch: self.deny_fetch.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Runs a server (embedded SQLite under the data directory).
    Serve {
        #[command(flatten)]
        local: Local,
    },
    /// Builds an app's convex/ folder into `<app>/.kiln/app.wasm` and `manifest.json`.
    Build {
        /// The app directory (containing convex/ and node_modules/convex).
        app: PathBuf,
    },
    /// Writes the app's `convex/_generated/` files.
    Codegen {
        /// The app directory.
        app: PathBuf,
    },
    /// Builds an app and uploads it to a server.
    Deploy {
        /// The app directory.
        app: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Develops an app: serves it locally (or uses --url), deploys, redeploys on change.
    Dev {
        /// The app directory.
        app: PathBuf,
        /// Use this running server instead of starting one.
        #[arg(long)]
        url: Option<String>,
        /// The deployment (created if the local server does not have it).
        #[arg(long, short = 'd')]
        deployment: Option<String>,
        /// The admin key for --url.
        #[arg(long, env = "KILN_ADMIN_KEY", hide_env_values = true)]
        admin_key: Option<String>,
        /// Deploy once, then stop.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        local: Local,
    },
    /// Runs a function (as admin) and prints its result as Convex JSON.
    Run {
        /// `module:function`.
        function: String,
        /// The arguments object (Convex JSON).
        #[arg(default_value = "{}")]
        args: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Prints the function log.
    Logs {
        /// Keep printing new entries.
        #[arg(long, short = 'f')]
        follow: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Manages deployments (needs the instance admin key).
    Deployments {
        #[command(subcommand)]
        action: DeploymentsAction,
    },
    /// Lists the hosts sharing the server's database and the deployments each serves (needs
    /// the instance admin key).
    Hosts {
        #[command(flatten)]
        remote: Remote,
    },
    /// Shows or changes a deployment's configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Prints the configuration (auth providers, environment variable names, fetch lists).
    Show {
        #[command(flatten)]
        remote: Remote,
    },
    /// Sets where the deployment's actions may fetch (replacing its lists). Any public
    /// address is allowed by default; loopback, private and link-local ones only for allowed
    /// hosts.
    Fetch {
        /// A host its actions may fetch even at a non-public address; repeatable.
        #[arg(long = "allow", value_name = "HOST")]
        allow: Vec<String>,
        /// A host its actions may never fetch; repeatable.
        #[arg(long = "deny", value_name = "HOST")]
        deny: Vec<String>,
        /// Only allowed hosts may be fetched at all.
        #[arg(long)]
        only_allowed: bool,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum DeploymentsAction {
    /// Creates a deployment and prints its admin key (shown once).
    Create {
        /// The name (1-64 of [A-Za-z0-9_-]).
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Lists the deployments.
    List {
        #[command(flatten)]
        remote: Remote,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}

fn instance_target(remote: &Remote) -> Result<Target, CliError> {
    Ok(Target {
        url: remote.url.trim_end_matches('/').to_owned(),
        admin_key: admin_key(remote.admin_key.clone(), &remote.data)?,
    })
}

fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Serve { local } => dev::serve(local.options()),
        Command::Build { app } => build(&app),
        Command::Codegen { app } => {
            let changed = kiln_guest_sdk::codegen::codegen(&app)?;
            if changed.is_empty() {
                println!("convex/_generated/ is up to date");
            } else {
                println!("wrote convex/_generated/{{{}}}", changed.join(", "));
            }
            Ok(())
        }
        Command::Deploy { app, remote } => dev::build_and_deploy(&app, &remote.target()?),
        Command::Dev { app, url, deployment, admin_key, once, local } => {
            dev::dev(dev::DevOptions { app, url, admin_key, deployment, serve: local.options(), once })
        }
        Command::Run { function, args, remote } => {
            let args: Value =
                serde_json::from_str(&args).map_err(|e| CliError::Usage(format!("the arguments are not JSON: {e}")))?;
            let value = remote.target()?.run(&function, &args)?;
            println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
            Ok(())
        }
        Command::Logs { follow, remote } => remote.target()?.logs(follow, |e| {
            if e.get("seq").is_some() {
                println!("{}", client::format_log(e));
            }
        }),
        Command::Config { action } => match action {
            ConfigAction::Show { remote } => {
                let config = remote.target()?.config()?;
                println!("{}", serde_json::to_string_pretty(&config).unwrap_or_default());
                Ok(())
            }
            ConfigAction::Fetch { allow, deny, only_allowed, remote } => {
                let body = serde_json::json!({
                    "fetch": { "allowedHosts": allow, "deniedHosts": deny, "onlyAllowed": only_allowed },
                });
                remote.target()?.set_config(&body)?;
                println!("fetch configuration set");
                Ok(())
            }
        },
        Command::Hosts { remote } => {
            let reply = instance_target(&remote)?.list_hosts()?;
            for h in reply.get("hosts").and_then(Value::as_array).into_iter().flatten() {
                let text = |k: &str| h.get(k).and_then(Value::as_str).unwrap_or("?").to_owned();
                let state = match (h.get("alive").and_then(Value::as_bool), h.get("self").and_then(Value::as_bool)) {
                    (Some(true), Some(true)) => "alive (this host)",
                    (Some(true), _) => "alive",
                    _ => "silent",
                };
                let owned: Vec<&str> = h
                    .get("deployments")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!("{:<28} {:<24} {:<18} {}", text("id"), text("url"), state, owned.join(", "));
            }
            Ok(())
        }
        Command::Deployments { action } => match action {
            DeploymentsAction::Create { name, remote } => {
                let reply = instance_target(&remote)?.create_deployment(&name)?;
                println!("created deployment {name}");
                println!("  url: {}/d/{name}", remote.url.trim_end_matches('/'));
                let key = reply.get("adminKey").and_then(Value::as_str).unwrap_or("?");
                println!("  admin key (shown once): {key}");
                let url = format!("{}/d/{name}", remote.url.trim_end_matches('/'));
                println!("for the official convex CLI, set:\n{}", self_hosted_lines(&url, key));
                Ok(())
            }
            DeploymentsAction::List { remote } => {
                let reply = instance_target(&remote)?.list_deployments()?;
                for d in reply.get("deployments").and_then(Value::as_array).into_iter().flatten() {
                    println!(
                        "{:<24} {}/d/{}  version {}",
                        d.get("name").and_then(Value::as_str).unwrap_or("?"),
                        remote.url.trim_end_matches('/'),
                        d.get("name").and_then(Value::as_str).unwrap_or("?"),
                        d.get("version").and_then(Value::as_str).unwrap_or("-"),
                    );
                }
                Ok(())
            }
        },
    }
}

fn build(app: &std::path::Path) -> Result<(), CliError> {
    let started = std::time::Instant::now();
    let out = kiln_guest_sdk::build_app(app, &crate::knobs::build_options())?;
    for warning in &out.warnings {
        eprintln!("warning: {warning}");
    }
    let t = out.timings;
    println!(
        "built {} ({} KiB, {} functions) in {:.2} s [bundle {:.0} ms, pre-initialize {:.0} ms, componentize {:.0} ms, analyze {:.0} ms]",
        out.wasm_path.display(),
        out.component.len() / 1024,
        out.manifest.functions.len(),
        started.elapsed().as_secs_f64(),
        t.bundle.as_secs_f64() * 1e3,
        t.preinit.as_secs_f64() * 1e3,
        t.componentize.as_secs_f64() * 1e3,
        t.analyze.as_secs_f64() * 1e3,
    );
    println!("manifest: {}", out.manifest_path.display());
    Ok(())
}

/// The two lines that point the official `convex` CLI at a deployment.
fn self_hosted_lines(url: &str, admin_key: &str) -> String {
    format!("  CONVEX_SELF_HOSTED_URL={url}\n  CONVEX_SELF_HOSTED_ADMIN_KEY={admin_key}")
}
