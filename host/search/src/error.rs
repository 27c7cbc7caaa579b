//! Errors of search, each with a stable code.

/// A refused search query or a failure of a search index.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// The query does not fit the index (wrong field, unknown filter field, no search term).
    #[error("{0}")]
    InvalidQuery(String),
    /// More terms than Convex allows in one query.
    #[error("the search query has {found} terms; at most {max} are allowed")]
    TooManyTerms {
        /// Terms in the query.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// More filter conditions than Convex allows.
    #[error("the search query has {found} filter conditions; at most {max} are allowed")]
    TooManyFilters {
        /// Conditions in the query.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// The index could not be read or written.
    #[error("search index failed: {0}")]
    Index(String),
}

impl SearchError {
    /// The stable code.
    pub fn code(&self) -> &'static str {
        match self {
            SearchError::InvalidQuery(_) => "InvalidSearchQuery",
            SearchError::TooManyTerms { .. } => "SearchQueryTooManyTerms",
            SearchError::TooManyFilters { .. } => "SearchQueryTooManyFilters",
            SearchError::Index(_) => "SearchIndexFailed",
        }
    }
}

impl From<tantivy::TantivyError> for SearchError {
    fn from(e: tantivy::TantivyError) -> Self {
        SearchError::Index(e.to_string())
    }
}

/// Result type of search.
pub type Result<T> = std::result::Result<T, SearchError>;
