//! The runtime's errors: deployment management failures, and the error of a call.

use kiln_value::Value;
use thiserror::Error;

/// An error of a call, as clients see it: a stable code, a message naming the function, and
/// for `ConvexError` the thrown data.
#[derive(Clone, Debug, PartialEq, Error)]
#[error("{code}: {message}")]
pub struct CallError {
    /// The stable code (`FuelExhausted`, `ConvexError`, `Conflict`, `TooManyReads`, …).
    pub code: String,
    /// A human-readable message.
    pub message: String,
    /// The data of a thrown `ConvexError`.
    pub data: Option<Value>,
}

impl CallError {
    /// An error with a code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> CallError {
        CallError { code: code.into(), message: message.into(), data: None }
    }

    /// Whether the error came from the user's code (a thrown error), not from a limit or the
    /// platform.
    pub fn is_user_error(&self) -> bool {
        self.code == "ConvexError" || self.code == "UncaughtException"
    }
}

/// Errors managing deployments.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// No deployment has that name.
    #[error("deployment {0:?} not found")]
    DeploymentNotFound(String),
    /// A deployment with that name exists already.
    #[error("deployment {0:?} exists already")]
    DeploymentExists(String),
    /// The deployment has no app deployed yet.
    #[error("deployment {0:?} has no app deployed")]
    NotDeployed(String),
    /// The component is invalid or imports something outside world `app`.
    #[error(transparent)]
    Component(#[from] kiln_component::ComponentError),
    /// The store refused (e.g. a schema the existing data violates).
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    /// The storage failed.
    #[error(transparent)]
    Persistence(#[from] kiln_persistence::PersistenceError),
    /// The caller's check refused the version.
    #[error("deploy refused: {0}")]
    Rejected(String),
    /// wasmtime refused the configuration or component.
    #[error("wasm engine: {0}")]
    Engine(String),
}

impl RuntimeError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            RuntimeError::DeploymentNotFound(_) => "DeploymentNotFound",
            RuntimeError::DeploymentExists(_) => "DeploymentExists",
            RuntimeError::NotDeployed(_) => "NotDeployed",
            RuntimeError::Component(e) => e.code(),
            RuntimeError::Store(e) => e.code(),
            RuntimeError::Persistence(e) => e.code(),
            RuntimeError::Rejected(_) => "DeployRejected",
            RuntimeError::Engine(_) => "EngineError",
        }
    }
}

/// Result type of deployment management.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
