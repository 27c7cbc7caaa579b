//! A deployment file opened read-only because its disk was full (or failed) when it was
//! opened: reads are served from it, and a write tries to open the file for writing again
//! (at most once a second), so writes resume by themselves once space is freed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use kiln_persistence::{
    CommitRecord, DocumentRevision, IndexId, KeyRange, Order, Persistence, RecoveredState, Result, ScanHit, StepResult,
    Timestamp,
};
use kiln_value::{DocumentId, InternalId, TableNumber};
use parking_lot::{Mutex, RwLock};

use crate::{SqliteOptions, SqlitePersistence, storage};

const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A [`SqlitePersistence`] that may be swapped for one opened for writing.
pub(crate) struct Reopening {
    path: std::path::PathBuf,
    options: SqliteOptions,
    current: RwLock<Arc<SqlitePersistence>>,
    last_try: Mutex<Instant>,
}

impl Reopening {
    pub(crate) fn new(opened: SqlitePersistence, options: SqliteOptions) -> Reopening {
        Reopening {
            path: opened.path().to_owned(),
            options,
            current: RwLock::new(Arc::new(opened)),
            last_try: Mutex::new(Instant::now()),
        }
    }

    fn current(&self) -> Arc<SqlitePersistence> {
        self.current.read().clone()
    }

    /// The instance to write through: a writable one if the file can be opened for writing now.
    async fn writable(&self) -> Arc<SqlitePersistence> {
        let current = self.current();
        if current.read_only.as_ref().is_none_or(|r| !r.retry) {
            return current;
        }
        {
            let mut last = self.last_try.lock();
            if last.elapsed() < RETRY_EVERY {
                return current;
            }
            *last = Instant::now();
        }
        let (path, options) = (self.path.clone(), self.options.clone());
        let opened = tokio::task::spawn_blocking(move || SqlitePersistence::open_writable(&path, options))
            .await
            .map_err(storage)
            .and_then(|r| r);
        match opened {
            Ok(writable) => {
                tracing::info!(path = %self.path.display(), "the SQLite file can be written again");
                let writable = Arc::new(writable);
                *self.current.write() = writable.clone();
                writable
            }
            Err(e) => {
                tracing::debug!(error = %e, "the SQLite file still cannot be written");
                current
            }
        }
    }
}

#[async_trait]
impl Persistence for Reopening {
    async fn recover(&self) -> Result<RecoveredState> {
        self.current().recover().await
    }

    async fn commit(&self, record: CommitRecord) -> Result<()> {
        self.writable().await.commit(record).await
    }

    async fn get_document(&self, id: DocumentId, ts: Timestamp) -> Result<Option<DocumentRevision>> {
        self.current().get_document(id, ts).await
    }

    async fn scan_table(
        &self,
        table: TableNumber,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>> {
        self.current().scan_table(table, range, ts, order, limit).await
    }

    async fn scan_index(
        &self,
        index: IndexId,
        range: &KeyRange,
        ts: Timestamp,
        order: Order,
        limit: usize,
    ) -> Result<Vec<ScanHit>> {
        self.current().scan_index(index, range, ts, order, limit).await
    }

    async fn scan_revisions(
        &self,
        table: TableNumber,
        since: Timestamp,
        until: Timestamp,
        after: Option<(Timestamp, InternalId)>,
        limit: usize,
    ) -> Result<Vec<DocumentRevision>> {
        self.current().scan_revisions(table, since, until, after, limit).await
    }

    async fn write_index_entries(
        &self,
        index: IndexId,
        ts: Timestamp,
        entries: Vec<(Vec<u8>, DocumentId)>,
    ) -> Result<()> {
        self.writable().await.write_index_entries(index, ts, entries).await
    }

    async fn delete_index_entries(&self, index: IndexId, max_rows: usize) -> Result<StepResult> {
        self.writable().await.delete_index_entries(index, max_rows).await
    }

    async fn prune(&self, cutoff: Timestamp, max_rows: usize) -> Result<StepResult> {
        self.writable().await.prune(cutoff, max_rows).await
    }
}
