//! Request-level errors: everything that is not a function's own failure. Each has a stable
//! code and an HTTP status, and renders as `{"code": …, "message": …}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use thiserror::Error;

/// A refused or failed request.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The body or a parameter is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such deployment.
    #[error("deployment {0:?} not found")]
    DeploymentNotFound(String),
    /// A deployment of that name exists already.
    #[error("deployment {0:?} exists already")]
    DeploymentExists(String),
    /// The credentials are missing or wrong for an admin operation.
    #[error("{0}")]
    Unauthorized(String),
    /// A user token was refused.
    #[error("{0}")]
    InvalidAuthToken(String),
    /// Too many requests are in flight for the deployment.
    #[error("too many concurrent requests for deployment {0:?}; retry later")]
    TooManyConcurrentRequests(String),
    /// The body is larger than allowed.
    #[error("request body too large (limit {0} bytes)")]
    BodyTooLarge(usize),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0:?}")]
    RequestTimeout(std::time::Duration),
    /// A deploy was refused (invalid component, schema the data violates, …).
    #[error("{message}")]
    DeployFailed {
        /// The stable code of the underlying failure.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// Environment variables that break Convex's rules (names, sizes, counts).
    #[error("{0}")]
    InvalidEnvironmentVariables(String),
    /// Something not supported by this server.
    #[error("{0}")]
    Unsupported(String),
    /// A failure of file storage (its code says which: `FileTooLarge`, `InvalidUploadToken`, …).
    #[error("{message}")]
    Storage {
        /// The stable code.
        code: String,
        /// What went wrong.
        message: String,
    },
    /// The deployment is between hosts (its owner died or is handing it over): retry soon.
    #[error("{0}")]
    Unavailable(String),
    /// The shared database failed (several hosts' registry and leases).
    #[error("{0}")]
    Persistence(#[from] kiln_persistence::PersistenceError),
    /// A failure of the server itself.
    #[error("{0}")]
    Internal(String),
}

impl ServerError {
    /// The stable code.
    pub fn code(&self) -> &str {
        match self {
            ServerError::BadRequest(_) => "BadRequest",
            ServerError::DeploymentNotFound(_) => "DeploymentNotFound",
            ServerError::DeploymentExists(_) => "DeploymentExists",
            ServerError::Unauthorized(_) => "Unauthorized",
            ServerError::InvalidAuthToken(_) => "InvalidAuthToken",
            ServerError::TooManyConcurrentRequests(_) => "TooManyConcurrentRequests",
            ServerError::BodyTooLarge(_) => "BodyTooLarge",
            ServerError::RequestTimeout(_) => "RequestTimeout",
            ServerError::DeployFailed { code, .. } => code,
            ServerError::InvalidEnvironmentVariables(_) => "InvalidEnvironmentVariables",
            ServerError::Unsupported(_) => "Unsupported",
            ServerError::Storage { code, .. } => code,
            ServerError::Unavailable(_) => "DeploymentUnavailable",
            ServerError::Persistence(e) => e.code(),
            ServerError::Internal(_) => "InternalServerError",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ServerError::BadRequest(_)
            | ServerError::DeployFailed { .. }
            | ServerError::InvalidEnvironmentVariables(_) => StatusCode::BAD_REQUEST,
            ServerError::DeploymentNotFound(_) => StatusCode::NOT_FOUND,
            ServerError::DeploymentExists(_) => StatusCode::CONFLICT,
            ServerError::Unauthorized(_) | ServerError::InvalidAuthToken(_) => StatusCode::UNAUTHORIZED,
            ServerError::TooManyConcurrentRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ServerError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ServerError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ServerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            ServerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ServerError::Unavailable(_) | ServerError::Persistence(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServerError::Storage { code, .. } => match code.as_str() {
                "FileTooLarge" => StatusCode::PAYLOAD_TOO_LARGE,
                "InvalidUploadToken" | "UploadUrlExpired" => StatusCode::FORBIDDEN,
                "StorageFileNotFound" | "InvalidStorageId" => StatusCode::NOT_FOUND,
                "InvalidRange" => StatusCode::RANGE_NOT_SATISFIABLE,
                "UploadFailed" | "StorageDigestMismatch" => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }
}

impl From<kiln_runtime::RuntimeError> for ServerError {
    fn from(e: kiln_runtime::RuntimeError) -> Self {
        match e {
            kiln_runtime::RuntimeError::DeploymentNotFound(name) => ServerError::DeploymentNotFound(name),
            kiln_runtime::RuntimeError::DeploymentExists(name) => ServerError::DeploymentExists(name),
            other => ServerError::DeployFailed { code: other.code().to_owned(), message: other.to_string() },
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}

/// A request body, read within the route's size limit; a body over it is refused with
/// `BodyTooLarge` (axum's own rejection would be plain text without a code).
pub struct RequestBody(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for RequestBody {
    type Rejection = ServerError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ServerError> {
        let limit = req.extensions().get::<BodyLimit>().map(|l| l.0).unwrap_or_default();
        let timeout = req.extensions().get::<BodyTimeout>().map_or(DEFAULT_BODY_TIMEOUT, |t| t.0);
        let read = tokio::time::timeout(timeout, axum::body::Bytes::from_request(req, state))
            .await
            .map_err(|_| ServerError::RequestTimeout(timeout))?;
        read.map(RequestBody).map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServerError::BodyTooLarge(limit)
            } else {
                ServerError::BadRequest(format!("could not read the request body: {rejection}"))
            }
        })
    }
}

/// The body limit of a route, recorded for error messages.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub usize);

/// How long a request's body may take to arrive.
#[derive(Clone, Copy, Debug)]
pub struct BodyTimeout(pub std::time::Duration);

const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Result of request handling.
pub type Result<T, E = ServerError> = std::result::Result<T, E>;
