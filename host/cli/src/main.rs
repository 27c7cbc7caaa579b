//! `kiln`: the command-line tool of Kiln.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Kiln: Convex-style apps as WebAssembly components.
#[derive(Parser)]
#[command(name = "kiln", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Build { app } => build(&app),
        Command::Codegen { app } => kiln_guest_sdk::codegen::codegen(&app).map(|changed| {
            if changed.is_empty() {
                println!("convex/_generated/ is up to date");
            } else {
                println!("wrote convex/_generated/{{{}}}", changed.join(", "));
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error[{}]: {e}", e.code());
            ExitCode::FAILURE
        }
    }
}

fn build(app: &std::path::Path) -> kiln_guest_sdk::Result<()> {
    let started = std::time::Instant::now();
    let out = kiln_guest_sdk::build_app(app, &kiln_guest_sdk::BuildOptions::default())?;
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
