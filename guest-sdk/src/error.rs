//! The guest toolchain's error type, with stable codes.

use thiserror::Error;

/// What can go wrong while building or inspecting an app.
#[derive(Debug, Error)]
pub enum SdkError {
    /// The app directory has no `convex/` folder with modules.
    #[error("{0}")]
    NotAnApp(String),
    /// A tool the build needs (node, esbuild) is missing.
    #[error("{0}")]
    ToolMissing(String),
    /// esbuild rejected the app (TypeScript syntax, unresolved imports); the message carries
    /// file and line.
    #[error("bundling failed:\n{0}")]
    Bundle(String),
    /// Evaluating the bundle in the runtime threw (the message has the JavaScript stack).
    #[error("loading the app failed: {0}")]
    AppLoad(String),
    /// A WebAssembly module or component is invalid or could not be transformed.
    #[error("invalid WebAssembly: {0}")]
    Wasm(String),
    /// Loading, checking or analyzing the component failed, or the app declares what Kiln
    /// does not run yet.
    #[error(transparent)]
    Component(#[from] kiln_component::ComponentError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl SdkError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            SdkError::NotAnApp(_) => "NotAnApp",
            SdkError::ToolMissing(_) => "ToolMissing",
            SdkError::Bundle(_) => "BundleFailed",
            SdkError::AppLoad(_) => "AppLoadFailed",
            SdkError::Wasm(_) => "InvalidWasm",
            SdkError::Component(e) => e.code(),
            SdkError::Io { .. } => "IoError",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> SdkError {
        SdkError::Io { path: path.display().to_string(), source }
    }

    pub(crate) fn wasm(e: impl std::fmt::Display) -> SdkError {
        SdkError::Wasm(format!("{e:#}"))
    }
}

/// Result type of the guest toolchain.
pub type Result<T, E = SdkError> = std::result::Result<T, E>;
