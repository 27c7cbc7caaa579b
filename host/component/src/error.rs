//! The errors of loading and inspecting components, with stable codes.

use thiserror::Error;

/// What can go wrong loading, checking or analyzing a component.
#[derive(Debug, Error)]
pub enum ComponentError {
    /// The component is invalid, or imports something outside world `app`.
    #[error("invalid WebAssembly: {0}")]
    Wasm(String),
    /// The app's `analyze` export failed.
    #[error("analyzing the app failed: {code}: {message}")]
    Analyze {
        /// The guest's error code.
        code: String,
        /// The guest's message.
        message: String,
    },
    /// The app declares something Kiln does not run yet (named, with the declaring file).
    #[error("the app uses what Kiln does not support yet: {0}")]
    Unsupported(String),
    /// The app's `convex/auth.config.ts` is not one Kiln can apply (named, with the reason).
    #[error("{0}")]
    AuthConfig(String),
    /// The app's `convex.config.ts` mounts components in a way Kiln cannot run (named).
    #[error("{0}")]
    ComponentConfig(String),
    /// A file of the compiled-code cache could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ComponentError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ComponentError::Wasm(_) => "InvalidWasm",
            ComponentError::Analyze { .. } => "AnalyzeFailed",
            ComponentError::Unsupported(_) => "UnsupportedFeature",
            ComponentError::AuthConfig(_) => "InvalidAuthConfig",
            ComponentError::ComponentConfig(_) => "InvalidComponentConfig",
            ComponentError::Io { .. } => "IoError",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> ComponentError {
        ComponentError::Io { path: path.display().to_string(), source }
    }

    pub(crate) fn wasm(e: impl std::fmt::Display) -> ComponentError {
        ComponentError::Wasm(format!("{e:#}"))
    }
}

/// Result type of component loading.
pub type Result<T, E = ComponentError> = std::result::Result<T, E>;
