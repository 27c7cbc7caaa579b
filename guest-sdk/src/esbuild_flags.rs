/// How esbuild bundles an app (`kiln build`) and the SDK's copy of the `convex` package
/// (`build.rs`, which includes this file): the fast paths' reviewed digests are of the
/// package's functions as these flags print them.
pub const ESBUILD_FLAGS: [&str; 8] = [
    "--bundle",
    "--format=esm",
    "--platform=browser",
    "--target=es2022",
    "--charset=utf8",
    "--legal-comments=none",
    "--log-level=error",
    "--color=false",
];
