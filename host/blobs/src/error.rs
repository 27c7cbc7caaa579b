//! Errors of blob storage, each with a stable code.

use std::path::Path;

/// A failure of blob storage.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The store's files could not be read or written.
    #[error("file storage failed at {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Reading the body being stored failed (the client went away, say).
    #[error("reading the file's body failed: {0}")]
    Body(std::io::Error),
    /// The body is longer than allowed.
    #[error("the file is larger than the limit of {max_bytes} bytes")]
    TooLarge {
        /// The limit.
        max_bytes: u64,
    },
    /// The database holding the blobs failed.
    #[error("file storage failed: {0}")]
    Database(String),
    /// A range outside the blob.
    #[error("the range {start}..{end} is not within the file's {size} bytes")]
    InvalidRange {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// The blob's size.
        size: u64,
    },
}

impl BlobError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> BlobError {
        BlobError::Io { path: path.display().to_string(), source }
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            BlobError::Io { .. } | BlobError::Database(_) => "StorageFailed",
            BlobError::Body(_) => "UploadFailed",
            BlobError::TooLarge { .. } => "FileTooLarge",
            BlobError::InvalidRange { .. } => "InvalidRange",
        }
    }
}

/// Result type of blob storage.
pub type Result<T> = std::result::Result<T, BlobError>;
