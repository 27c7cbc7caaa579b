//! Builds the guest components (`components/`: the QuickJS runtime and the Rust example guest)
//! for wasm32-wasip1 and hands their paths to the crate, which embeds them.
//!
//! The components live in their own workspace (another target) and are built by a nested
//! cargo into `target/guest`. `KILN_GUEST_WASM_DIR` may point at prebuilt modules instead.

// A build script reports failure by panicking, with the message cargo shows.
#![allow(clippy::expect_used)]

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const MODULES: [&str; 2] = ["kiln_js_runtime", "kiln_rust_guest"];

include!("src/esbuild_flags.rs");

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest_dir.parent().expect("guest-sdk lives in the repository root").to_path_buf();
    let components = root.join("components");
    for watched in [
        "components/Cargo.toml",
        "components/Cargo.lock",
        "components/.cargo/config.toml",
        "components/js-runtime",
        "components/rust-guest",
        "components/wasi-stubs",
        "host/value/src",
        "host/value/Cargo.toml",
        "wit",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=KILN_GUEST_WASM_DIR");

    let dir = match env::var_os("KILN_GUEST_WASM_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            ensure_wasi_sdk(&root.join("target/wasi-sdk"));
            build_components(&components);
            root.join("target/guest/wasm32-wasip1/release")
        }
    };
    bundle_convex_package(&manifest_dir);
    for module in MODULES {
        let path = dir.join(format!("{module}.wasm"));
        if !path.exists() {
            panic!("missing guest module {}", path.display());
        }
        println!("cargo:rustc-env={}_WASM={}", module.to_uppercase(), path.display());
    }
}

/// Bundles the function factories of the guest SDK's own `convex` package (its
/// `node_modules`, installed by `npm ci`) with esbuild, as `kiln build` bundles an app, into
/// `$OUT_DIR/convex-package.js`: pushed apps run their functions through this copy, to which
/// the fast paths apply (see `module_set.rs`).
fn bundle_convex_package(manifest_dir: &Path) {
    let modules = manifest_dir.join("node_modules");
    let package = modules.join("convex/package.json");
    println!("cargo:rerun-if-changed={}", package.display());
    println!("cargo:rerun-if-changed={}", manifest_dir.join("src/esbuild_flags.rs").display());
    let esbuild = modules.join(".bin/esbuild");
    if !package.exists() || !esbuild.exists() {
        panic!(
            "{} has no `convex` package or esbuild: run `npm ci` in {} (the README's commands do)",
            modules.display(),
            manifest_dir.display()
        );
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let entry = out.join("convex-package-entry.mjs");
    std::fs::write(
        &entry,
        // As an app's `_generated/server.js` does: esbuild then renames the package's locals
        // named `query`, `mutation`, ... as in an app's bundle, which the reviewed digests of
        // the fast paths' functions are of.
        "import { queryGeneric, internalQueryGeneric, mutationGeneric, internalMutationGeneric, \
         actionGeneric, internalActionGeneric, httpActionGeneric } from \"convex/server\";\n\
         export const query = queryGeneric;\n\
         export const internalQuery = internalQueryGeneric;\n\
         export const mutation = mutationGeneric;\n\
         export const internalMutation = internalMutationGeneric;\n\
         export const action = actionGeneric;\n\
         export const internalAction = internalActionGeneric;\n\
         export const httpAction = httpActionGeneric;\n\
         export { queryGeneric, internalQueryGeneric, mutationGeneric, internalMutationGeneric, \
         actionGeneric, internalActionGeneric };\n\
         export { ConvexError } from \"convex/values\";\n",
    )
    .expect("writing the package's entry");
    let bundle = out.join("convex-package.js");
    let status = Command::new(&esbuild)
        .current_dir(manifest_dir)
        .arg(&entry)
        .args(ESBUILD_FLAGS)
        .arg(format!("--outfile={}", bundle.display()))
        // The entry lives outside the SDK: resolve `convex` from the SDK's node_modules.
        .env("NODE_PATH", &modules)
        .status()
        .expect("running esbuild");
    if !status.success() {
        panic!("esbuild could not bundle the convex package");
    }
    println!("cargo:rustc-env=KILN_CONVEX_PACKAGE_JS={}", bundle.display());
}

/// Runs cargo on the components workspace. The parent cargo's per-build variables are removed
/// so that they do not leak into the nested build (which has its own target and flags).
fn build_components(components: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(components).args(["build", "--release", "--locked", "--workspace"]);
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS")
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "RUSTC"
                    | "RUSTDOC"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "RUSTC_LINKER"
            );
        if leaks {
            cmd.env_remove(&key);
        }
    }
    let status = cmd.status().expect("failed to run cargo for the guest components");
    if !status.success() {
        panic!("building the guest components failed (see the output above)");
    }
}

/// rquickjs-sys compiles QuickJS with a WASI SDK. A tree of links onto Debian's clang-19 and
/// wasi-libc serves as one; `.ci/setup` installs the packages.
fn ensure_wasi_sdk(sdk: &Path) {
    let clang = Path::new("/usr/bin/clang-19");
    if sdk.join("bin/clang").exists() || !clang.exists() {
        return;
    }
    let link = |target: &Path, at: PathBuf| {
        if let Some(parent) = at.parent() {
            std::fs::create_dir_all(parent).expect("create WASI SDK directories");
        }
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(target, &at).expect("link WASI SDK tool");
    };
    link(clang, sdk.join("bin/clang"));
    link(Path::new("/usr/bin/llvm-ar-19"), sdk.join("bin/ar"));
    for triple in ["wasm32-wasi", "wasm32-wasip1", "wasm32-wasip2"] {
        link(Path::new("/usr/include/wasm32-wasi"), sdk.join("share/wasi-sysroot/include").join(triple));
        link(Path::new("/usr/lib/wasm32-wasi"), sdk.join("share/wasi-sysroot/lib").join(triple));
    }
}
