//! Kiln's transactional document store.
//!
//! One [`Store`] per deployment. Transactions ([`Transaction`]) read a consistent snapshot
//! (MVCC over timestamped revisions in a [`kiln_persistence::Persistence`] backend), buffer
//! their writes, and commit through a single committer that checks their read sets (index key
//! ranges) against every write committed since their snapshot: serializable optimistic
//! concurrency control. The same read sets, as [`ReadToken`]s, tell subscriptions which
//! commits invalidate which query results.
//!
//! Memory is bounded: documents live in persistence; the store keeps a budgeted cache and a
//! bounded log of recent commits.

mod cache;
pub mod catalog;
mod commit_log;
pub mod document;
pub mod error;
mod interval_index;
pub mod knobs;
mod pagination;
pub mod query;
pub mod read_set;
mod search;
mod store;
mod subscription;
mod transaction;

pub use cache::CacheStats;
pub use catalog::{Catalog, Schema, component_table};
pub use document::Document;
pub use error::{LimitKind, Result, StoreError};
pub use kiln_persistence::{Order, Timestamp};
pub use knobs::{StoreConfig, TransactionLimits};
pub use query::Query;
pub use read_set::{ReadSet, ReadToken};
pub use search::MAX_SEARCH_RESULTS;
pub use store::{Hold, Store, StoreStats};
pub use subscription::Subscription;
pub use transaction::{Page, PageRequest, PageStatus, Savepoint, StreamId, Transaction, Usage, compile_range};
