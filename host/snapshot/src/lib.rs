//! Convex's snapshot ZIP, the file `npx convex export` downloads and `npx convex import`
//! uploads: `README.md`, `_tables/documents.jsonl` (each table's name and number), and per
//! table `<table>/documents.jsonl` (one document per line in clean JSON: int64 as a decimal
//! string, bytes as base64, ±Infinity and NaN as strings) with `<table>/generated_schema.jsonl`
//! (the table's [`Shape`], then the [`Context`] of each document the shape leaves open).
//! Kiln writes the `unknown` shape with a context for every document that needs one, which
//! Convex reads too; it reads Convex's inferred shapes.

pub mod archive;
pub mod context;
pub mod error;
pub mod shape;

pub use archive::{SnapshotReader, SnapshotWriter, TableEntry};
pub use context::Context;
pub use error::SnapshotError;
pub use shape::Shape;
