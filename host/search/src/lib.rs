//! Full-text search for deployments: Convex's tokenizer ([`analyzer`]), its search queries
//! and limits ([`TextQuery`]), documents as an index sees them ([`DocTerms`]), and a tantivy
//! index of one search index that records which store commit it reflects ([`TextIndex`]) with
//! consistent views of it ([`TextSnapshot`]); vector indexes ([`VectorIndex`], usearch HNSW)
//! with Convex's vector queries ([`VectorQuery`]). The store stays the source of truth: it feeds
//! the index and can delete and rebuild it.

pub mod analyzer;
mod doc;
mod error;
mod index;
mod query;
mod vector;

pub use doc::{DocTerms, filter_hash};
pub use error::{Result, SearchError};
pub use index::{Hit, MAX_PREFIX_EXPANSIONS, Search, TextIndex, TextSnapshot};
pub use query::{MAX_FILTER_CONDITIONS, MAX_QUERY_TERMS, SearchIndexDef, TextQuery};
pub use vector::{
    DEFAULT_VECTOR_RESULTS, DocVector, MAX_DIMENSIONS, MAX_VECTOR_FILTER_CLAUSES, MAX_VECTOR_RESULTS, MIN_DIMENSIONS,
    VectorConfig, VectorHit, VectorIndex, VectorIndexDef, VectorQuery, similarity,
};
