//! Full-text search for deployments (issue 27, first piece: not wired to the store yet):
//! Convex's tokenizer ([`analyzer`]), its search queries and limits ([`TextQuery`]), and a
//! tantivy index of one search index that records which store commit it reflects
//! ([`TextIndex`]). The store stays the source of truth: an index can be deleted and rebuilt.

pub mod analyzer;
mod error;
mod index;
mod query;

pub use error::{Result, SearchError};
pub use index::{Entry, Hit, MAX_PREFIX_EXPANSIONS, TextIndex};
pub use query::{MAX_FILTER_CONDITIONS, MAX_QUERY_TERMS, SearchIndexDef, TextQuery};
