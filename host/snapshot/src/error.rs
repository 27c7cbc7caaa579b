//! The snapshot format's error type, with stable codes.

use thiserror::Error;

/// What is wrong with a snapshot, or with writing one.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// Not a ZIP file, or a damaged one.
    #[error("the snapshot is not a readable ZIP file: {0}")]
    Zip(String),
    /// A line of a table's file that is not what the format says.
    #[error("{entry} line {line}: {message}")]
    Line {
        /// The ZIP entry.
        entry: String,
        /// Its line (1-based).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// A shape or export context that does not parse or fit.
    #[error("{0}")]
    Shape(String),
    /// What the snapshot holds that Kiln does not import (components' tables, stored files).
    #[error("{0}")]
    Unsupported(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SnapshotError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            SnapshotError::Zip(_) => "InvalidSnapshot",
            SnapshotError::Line { .. } | SnapshotError::Shape(_) => "InvalidSnapshotData",
            SnapshotError::Unsupported(_) => "UnsupportedSnapshot",
            SnapshotError::Io(_) => "IoError",
        }
    }
}

impl From<zip::result::ZipError> for SnapshotError {
    fn from(e: zip::result::ZipError) -> Self {
        match e {
            zip::result::ZipError::Io(e) => SnapshotError::Io(e),
            other => SnapshotError::Zip(other.to_string()),
        }
    }
}
