//! Transactions: snapshot reads, buffered writes, query streams and pagination.
//!
//! A transaction reads at its begin timestamp and sees its own writes through an overlay of
//! the index entries it changed. Every read records the index key range it covered; at commit
//! the committer checks those ranges against every write committed since the snapshot.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use kiln_persistence::{IndexId, IndexWrite, KeyRange, Order, Timestamp};
use kiln_value::index_key::{encode_tuple, prefix_successor};
use kiln_value::validation::{
    CREATION_TIME_FIELD, ID_FIELD, check_top_level_name, validate_document, validate_user_fields,
};
use kiln_value::validator::IdCheck;
use kiln_value::{DocumentId, InternalId, Object, Patch, TableNumber, Value};

use crate::catalog::{
    CATALOG_INDEX, Catalog, IndexKind, IndexRef, SearchPlan, TableMeta, check_system_table, check_table_name,
};
use crate::commit_log::WrittenKeys;
use crate::document::{Document, by_id_key, ordered_index_key};
use crate::error::{LimitKind, Result, StoreError};
use crate::knobs::TransactionLimits;
use crate::pagination::{self, Position};
use crate::query::{Operator, Query, RangeExpr, RangeOp, Source};
use crate::read_set::{ReadSet, ReadToken};
use crate::search::{
    MAX_SEARCH_RESULTS, SearchWrite, Terms, WriteEntry, doc_terms, doc_vector, search_error, unchanged,
};
use crate::store::{CatalogEdit, CommitRequest, Inner, now_ms};

/// Resource use of a transaction so far, checked against its limits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Document bytes read.
    pub bytes_read: usize,
    /// Document bytes written.
    pub bytes_written: usize,
    /// Documents scanned (read from indexes or by id, before filters).
    pub documents_scanned: usize,
    /// Distinct documents written.
    pub documents_written: usize,
    /// Index ranges read (queries and point reads).
    pub index_ranges: usize,
}

/// A buffered write: the document as of the snapshot, and as this transaction left it.
#[derive(Clone)]
struct Write {
    old: Option<Arc<Document>>,
    new: Option<Arc<Document>>,
}

/// A handle to an open query stream of a transaction.
pub type StreamId = u32;

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum StreamState {
    Open,
    /// The whole range was read.
    Exhausted,
    /// A limit ended the stream early.
    Stopped,
}

struct Stream {
    index: IndexRef,
    range: KeyRange,
    order: Order,
    operators: Vec<Operator>,
    counts: Vec<usize>,
    /// The last key handed to the operators.
    cursor: Option<Vec<u8>>,
    /// Fetched but not yet examined.
    buffer: VecDeque<(Vec<u8>, Arc<Document>)>,
    /// The last key covered by fetches so far.
    fetched_to: Option<Vec<u8>>,
    /// Whether fetches have covered the whole range.
    complete: bool,
    state: StreamState,
    batch: usize,
    /// A search's results, by key (descending relevance), once computed.
    search: Option<Vec<(Vec<u8>, DocumentId)>>,
}

impl Stream {
    /// The part of the range not fetched yet.
    fn unfetched(&self) -> KeyRange {
        let Some(k) = &self.fetched_to else { return self.range.clone() };
        match self.order {
            Order::Asc => KeyRange { start: successor(k), end: self.range.end.clone() },
            Order::Desc => KeyRange { start: self.range.start.clone(), end: Some(k.clone()) },
        }
    }

    /// The part of the range whose keys have been examined.
    fn read_range(&self) -> KeyRange {
        if self.state == StreamState::Exhausted {
            return self.range.clone();
        }
        match (&self.cursor, self.order) {
            (None, _) => KeyRange { start: self.range.start.clone(), end: Some(self.range.start.clone()) },
            (Some(c), Order::Asc) => KeyRange { start: self.range.start.clone(), end: Some(successor(c)) },
            (Some(c), Order::Desc) => KeyRange { start: c.clone(), end: self.range.end.clone() },
        }
    }

    /// What the stream has read, as index key ranges.
    fn reads(&self) -> Vec<(IndexId, KeyRange)> {
        match &self.index.kind {
            _ if self.index.id == CATALOG_INDEX => Vec::new(),
            // Any matching write could change a search's results, however far it has read.
            IndexKind::Search(plan) => plan
                .query
                .read_ranges(&plan.meta.def())
                .into_iter()
                .map(|(start, end)| (self.index.id, KeyRange { start, end }))
                .collect(),
            _ => vec![(self.index.id, self.read_range())],
        }
    }

    fn limit_reached(&self) -> bool {
        self.operators.iter().zip(&self.counts).any(|(op, n)| matches!(op, Operator::Limit(l) if n >= l))
    }
}

/// The smallest key after `k`.
fn successor(k: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(k.len() + 1);
    s.extend_from_slice(k);
    s.push(0);
    s
}

/// A request for one page of a paginated query.
#[derive(Clone, Debug, Default)]
pub struct PageRequest {
    /// Where to start (`None`: the beginning); a cursor from an earlier page.
    pub cursor: Option<String>,
    /// Where to end, inclusive (re-running a page reactively keeps its end).
    pub end_cursor: Option<String>,
    /// How many documents to return (ignored when `end_cursor` is given).
    pub page_size: usize,
    /// Stop early after examining this many documents.
    pub max_rows_read: Option<usize>,
    /// Stop early after reading this many document bytes.
    pub max_bytes_read: Option<usize>,
}

/// Why a page wants to be split in two (Convex's `pageStatus`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PageStatus {
    /// The page read more than half of what it may read: split it before it grows past that.
    SplitRecommended,
    /// The page stopped at its read limits before its end cursor: it is incomplete until it is
    /// split at `split_cursor`.
    SplitRequired,
}

impl PageStatus {
    /// Convex's name for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            PageStatus::SplitRecommended => "SplitRecommended",
            PageStatus::SplitRequired => "SplitRequired",
        }
    }
}

/// One page of results.
#[derive(Clone, Debug)]
pub struct Page {
    /// The documents, in query order.
    pub documents: Vec<Arc<Document>>,
    /// Where the next page starts.
    pub continue_cursor: String,
    /// Whether the query has no more results.
    pub is_done: bool,
    /// A cursor in the page's middle: `(cursor, split]` and `(split, continue]` are the two
    /// halves (none for pages of fewer than two documents that were not cut short).
    pub split_cursor: Option<String>,
    /// Set when the page is large for its read limits or was cut short by them.
    pub page_status: Option<PageStatus>,
}

/// The writes of a transaction at one moment, to return to when what follows fails (a nested
/// mutation that throws). Reads are not rolled back: what the failed part read still decided
/// what the transaction did, so it stays in the read set.
pub struct Savepoint {
    writes: BTreeMap<DocumentId, Write>,
    overlay: HashMap<IndexId, BTreeMap<Vec<u8>, Option<DocumentId>>>,
    new_tables: BTreeMap<String, Arc<TableMeta>>,
    bytes_written: usize,
    documents_written: usize,
}

/// A transaction on a [`crate::Store`].
pub struct Transaction {
    inner: Arc<Inner>,
    ts: Timestamp,
    catalog: Arc<Catalog>,
    read_only: bool,
    /// System transactions may use reserved `_`-prefixed tables; others cannot even see them.
    system: bool,
    limits: TransactionLimits,
    reads: ReadSet,
    tables_read: BTreeSet<String>,
    writes: BTreeMap<DocumentId, Write>,
    overlay: HashMap<IndexId, BTreeMap<Vec<u8>, Option<DocumentId>>>,
    new_tables: BTreeMap<String, Arc<TableMeta>>,
    pub(crate) catalog_edit: Option<CatalogEdit>,
    pub(crate) catalog_writes: BTreeSet<String>,
    streams: HashMap<StreamId, Stream>,
    next_stream: StreamId,
    usage: Usage,
    until_validated: Option<Box<dyn crate::store::Hold>>,
}

impl Transaction {
    pub(crate) fn new(
        inner: Arc<Inner>,
        ts: Timestamp,
        catalog: Arc<Catalog>,
        read_only: bool,
        limits: TransactionLimits,
    ) -> Transaction {
        Transaction {
            inner,
            ts,
            catalog,
            read_only,
            system: false,
            limits,
            reads: ReadSet::new(),
            tables_read: BTreeSet::new(),
            writes: BTreeMap::new(),
            overlay: HashMap::new(),
            new_tables: BTreeMap::new(),
            catalog_edit: None,
            catalog_writes: BTreeSet::new(),
            streams: HashMap::new(),
            next_stream: 0,
            usage: Usage::default(),
            until_validated: None,
        }
    }

    /// Keeps `guard` until this transaction's commit is validated (its writes visible to any
    /// transaction that begins afterwards; then it is dropped) or refused (then it is handed
    /// back through [`crate::Hold::refused`]), or until the transaction is dropped: a turn
    /// among writers of the same documents ends there, not when the commit is durable.
    pub fn hold_until_validated(&mut self, guard: Box<dyn crate::Hold>) {
        self.until_validated = Some(guard);
    }

    pub(crate) fn set_system(&mut self) {
        self.system = true;
    }

    fn visible_table(&self, name: &str) -> bool {
        self.system || !name.starts_with('_') || crate::catalog::READABLE_SYSTEM_TABLES.contains(&name)
    }

    /// Marks the transaction's writes so far, for [`Transaction::rollback_to`].
    pub fn savepoint(&self) -> Savepoint {
        Savepoint {
            writes: self.writes.clone(),
            overlay: self.overlay.clone(),
            new_tables: self.new_tables.clone(),
            bytes_written: self.usage.bytes_written,
            documents_written: self.usage.documents_written,
        }
    }

    /// Undoes every write (and table creation) made since `savepoint` was taken.
    pub fn rollback_to(&mut self, savepoint: Savepoint) {
        self.writes = savepoint.writes;
        self.overlay = savepoint.overlay;
        self.new_tables = savepoint.new_tables;
        self.usage.bytes_written = savepoint.bytes_written;
        self.usage.documents_written = savepoint.documents_written;
    }

    /// The snapshot timestamp this transaction reads at.
    pub fn begin_ts(&self) -> Timestamp {
        self.ts
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Resource use so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The catalog of this transaction's snapshot.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    // ---- tables -------------------------------------------------------------------------

    /// The table, created in this transaction if it does not exist yet.
    pub(crate) fn ensure_table(&mut self, name: &str) -> Arc<TableMeta> {
        match self.table(name) {
            Some(t) => t,
            None => self.create_table(name),
        }
    }

    /// Records that this transaction looked `name` up (its catalog entry joins the read set);
    /// copies the name only the first time, as every document access looks its table up.
    fn note_table_read(&mut self, name: &str) {
        if !self.tables_read.contains(name) {
            self.tables_read.insert(name.to_owned());
        }
    }

    fn table(&mut self, name: &str) -> Option<Arc<TableMeta>> {
        if !self.visible_table(name) {
            return None;
        }
        self.note_table_read(name);
        self.new_tables.get(name).cloned().or_else(|| self.catalog.tables.get(name).cloned())
    }

    fn table_of(&mut self, id: &DocumentId) -> Option<Arc<TableMeta>> {
        let meta = match self.catalog.table_by_number(id.table) {
            Some(t) => Some(t.clone()),
            None => self.new_tables.values().find(|t| t.number == id.table).cloned(),
        }?;
        if !self.visible_table(&meta.name) {
            return None;
        }
        self.note_table_read(&meta.name);
        Some(meta)
    }

    fn create_table(&mut self, name: &str) -> Arc<TableMeta> {
        let number = TableNumber(self.inner.reserve_table_number());
        let meta = Arc::new(TableMeta::new(name, number, self.inner.reserve_index_id(), self.inner.reserve_index_id()));
        self.new_tables.insert(name.to_owned(), meta.clone());
        meta
    }

    /// Parses `id` as an id of `table` (or of any existing table when `table` is `None`);
    /// `Ok(None)` when it is not one (Convex's `normalizeId`).
    pub fn normalize_id(&mut self, table: Option<&str>, id: &str) -> Result<Option<DocumentId>> {
        let Ok(parsed) = DocumentId::decode(id) else { return Ok(None) };
        let meta = match table {
            Some(name) => self.table(name),
            None => self.table_of(&parsed),
        };
        Ok(meta.filter(|m| m.number == parsed.table).map(|_| parsed))
    }

    /// The name of the table an id belongs to, if that table exists.
    pub fn table_name_of(&mut self, id: &DocumentId) -> Option<String> {
        self.table_of(id).map(|t| t.name.clone())
    }

    // ---- accounting ---------------------------------------------------------------------

    fn charge(&mut self, kind: LimitKind, amount: usize) -> Result<()> {
        let (used, limit) = match kind {
            LimitKind::BytesRead => (&mut self.usage.bytes_read, self.limits.max_bytes_read),
            LimitKind::BytesWritten => (&mut self.usage.bytes_written, self.limits.max_bytes_written),
            LimitKind::DocumentsScanned => (&mut self.usage.documents_scanned, self.limits.max_documents_scanned),
            LimitKind::DocumentsWritten => (&mut self.usage.documents_written, self.limits.max_documents_written),
            LimitKind::IndexRanges => (&mut self.usage.index_ranges, self.limits.max_index_ranges),
        };
        *used = used.saturating_add(amount);
        if *used > limit { Err(StoreError::LimitExceeded { kind, limit }) } else { Ok(()) }
    }

    fn charge_scan(&mut self, doc: &Document) -> Result<()> {
        self.charge(LimitKind::DocumentsScanned, 1)?;
        self.charge(LimitKind::BytesRead, doc.size())
    }

    // ---- point reads --------------------------------------------------------------------

    /// Reads a document by id (`None` if it does not exist at the snapshot or was deleted
    /// by this transaction).
    pub async fn get(&mut self, id: DocumentId) -> Result<Option<Arc<Document>>> {
        let Some(meta) = self.table_of(&id) else { return Ok(None) };
        self.read_by_id(&meta, id).await
    }

    async fn read_by_id(&mut self, meta: &TableMeta, id: DocumentId) -> Result<Option<Arc<Document>>> {
        self.charge(LimitKind::IndexRanges, 1)?;
        self.reads.add(IndexId(meta.by_id), KeyRange::point(&by_id_key(&id)));
        let doc = self.visible(id).await?;
        if let Some(d) = &doc {
            self.charge_scan(d)?;
        }
        Ok(doc)
    }

    /// The version of a document this transaction sees (without recording a read).
    async fn visible(&self, id: DocumentId) -> Result<Option<Arc<Document>>> {
        if let Some(w) = self.writes.get(&id) {
            return Ok(w.new.clone());
        }
        // A read-write snapshot may include commits not yet durable; their versions are
        // only in memory until published.
        if !self.read_only
            && let Some(doc) = self.inner.pending_version(&id, self.ts)
        {
            return Ok(doc);
        }
        if let Some(hit) = self.inner.cache.lock().get(&id, self.ts) {
            return Ok(hit);
        }
        let revision = self.inner.persistence.get_document(id, self.ts).await;
        // Pruning may have removed what an old snapshot needs; report that, not what it broke.
        self.inner.check_not_pruned(self.ts)?;
        let revision = revision?;
        let Some(revision) = revision else { return Ok(None) };
        let doc = match &revision.value {
            Some(bytes) => Some(Arc::new(Document::decode(id, bytes)?)),
            None => None,
        };
        self.inner.fill_cache(id, self.ts, revision.ts, doc.clone());
        Ok(doc)
    }

    // ---- writes -------------------------------------------------------------------------

    fn check_writable(&self) -> Result<()> {
        if self.read_only { Err(StoreError::ReadOnly) } else { Ok(()) }
    }

    fn check_schema(&self, meta: &TableMeta, doc: &Document) -> Result<()> {
        if !self.catalog.schema_validation {
            return Ok(());
        }
        let Some(validator) = meta.validator() else { return Ok(()) };
        validator.check_document(&doc.value, &CatalogIds(&self.catalog, &self.new_tables)).map_err(|e| match e {
            kiln_value::ValueError::ValidationFailed { path, message } => {
                StoreError::SchemaViolation { table: meta.name.clone(), path, message }
            }
            other => StoreError::Value(other),
        })
    }

    /// Inserts a document into `table` (created if it does not exist); returns its id.
    pub async fn insert(&mut self, table: &str, fields: Object) -> Result<DocumentId> {
        self.check_writable()?;
        if self.system && table.starts_with('_') {
            check_table_name(&table[1..])?;
        } else {
            check_table_name(table)?;
        }
        validate_user_fields(&fields)?;
        let meta = self.ensure_table(table);
        let id = DocumentId::new(meta.number, InternalId::fresh());
        let doc = Document::new(id, now_ms(), fields);
        validate_document(&doc.value)?;
        self.check_schema(&meta, &doc)?;
        self.record_write(&meta, id, None, Some(Arc::new(doc)))?;
        Ok(id)
    }

    /// Inserts a document under its own id and creation time (a snapshot import, which keeps
    /// both so that references between documents hold). The table is created with the id's
    /// table number when it does not exist; refused with `ImportConflict` when the table has
    /// another number, the number belongs to another table (or may), or the id exists.
    pub async fn import_document(
        &mut self,
        table: &str,
        id: DocumentId,
        creation_time: f64,
        fields: Object,
    ) -> Result<()> {
        self.check_writable()?;
        check_table_name(table)?;
        validate_user_fields(&fields)?;
        if !(creation_time.is_finite() && creation_time > 0.0) {
            return Err(StoreError::ImportConflict(format!(
                "document {} has an invalid _creationTime {creation_time}",
                id.encode()
            )));
        }
        let meta = match self.table(table) {
            Some(meta) if meta.number == id.table => meta,
            Some(meta) => {
                return Err(StoreError::ImportConflict(format!(
                    "table {table:?} has number {} here and {} in the snapshot (document {}): import into a deployment where the table does not exist yet, or has the snapshot's number",
                    meta.number.0,
                    id.table.0,
                    id.encode()
                )));
            }
            None => {
                let taken = self
                    .catalog
                    .table_by_number(id.table)
                    .map(|t| t.name.clone())
                    .or_else(|| self.new_tables.values().find(|t| t.number == id.table).map(|t| t.name.clone()));
                if taken.is_some() || !self.inner.reserve_table_number_exactly(id.table.0) {
                    return Err(StoreError::ImportConflict(format!(
                        "table number {} of {table:?} is taken{} in this deployment",
                        id.table.0,
                        taken.map(|t| format!(" by {t:?}")).unwrap_or_default()
                    )));
                }
                let meta = Arc::new(TableMeta::new(
                    table,
                    id.table,
                    self.inner.reserve_index_id(),
                    self.inner.reserve_index_id(),
                ));
                self.note_table_read(table);
                self.new_tables.insert(table.to_owned(), meta.clone());
                meta
            }
        };
        if self.read_by_id(&meta, id).await?.is_some() {
            return Err(StoreError::ImportConflict(format!("document {} exists already", id.encode())));
        }
        let doc = Document::new(id, creation_time, fields);
        validate_document(&doc.value)?;
        self.check_schema(&meta, &doc)?;
        self.record_write(&meta, id, None, Some(Arc::new(doc)))
    }

    /// Applies a patch (set fields, or remove them with `None`); returns the new document.
    pub async fn patch(&mut self, id: DocumentId, patch: Patch) -> Result<Arc<Document>> {
        self.check_writable()?;
        let (meta, current) = self.existing(id).await?;
        let mut fields = current.value.clone();
        for (name, value) in patch {
            if name == ID_FIELD || name == CREATION_TIME_FIELD {
                if value.as_ref() != current.value.get(&name) {
                    return Err(StoreError::SystemFieldModified(name));
                }
                continue;
            }
            check_top_level_name(&name)?;
            if name.starts_with('_') {
                return Err(kiln_value::ValueError::ReservedField(name).into());
            }
            match value {
                Some(v) => fields.insert(name, v),
                None => fields.remove(&name),
            };
        }
        validate_document(&fields)?;
        let doc = Arc::new(Document { id, value: fields });
        self.check_schema(&meta, &doc)?;
        self.record_write(&meta, id, Some(current), Some(doc.clone()))?;
        Ok(doc)
    }

    /// Replaces a document's fields (system fields may be given only unchanged).
    pub async fn replace(&mut self, id: DocumentId, mut fields: Object) -> Result<Arc<Document>> {
        self.check_writable()?;
        let (meta, current) = self.existing(id).await?;
        for system in [ID_FIELD, CREATION_TIME_FIELD] {
            if let Some(v) = fields.remove(system)
                && Some(&v) != current.value.get(system)
            {
                return Err(StoreError::SystemFieldModified(system.to_owned()));
            }
        }
        validate_user_fields(&fields)?;
        let doc = Arc::new(Document::new(id, current.creation_time(), fields));
        validate_document(&doc.value)?;
        self.check_schema(&meta, &doc)?;
        self.record_write(&meta, id, Some(current), Some(doc.clone()))?;
        Ok(doc)
    }

    /// Deletes a document.
    pub async fn delete(&mut self, id: DocumentId) -> Result<()> {
        self.check_writable()?;
        let (meta, current) = self.existing(id).await?;
        self.record_write(&meta, id, Some(current), None)
    }

    // ---- host records -------------------------------------------------------------------

    /// Reads the host's record `key` of system table `table` (`_`-prefixed) within this
    /// transaction: a point read, so a concurrent write of the same record conflicts. Guests
    /// never reach system tables; this is for the host's own bookkeeping that must commit
    /// atomically with user writes (e.g. idempotency records of mutations).
    pub async fn get_record(&mut self, table: &str, key: InternalId) -> Result<Option<Arc<Document>>> {
        check_system_table(table)?;
        let was = std::mem::replace(&mut self.system, true);
        let result = match self.table(table) {
            Some(meta) => self.read_by_id(&meta, DocumentId::new(meta.number, key)).await,
            None => Ok(None),
        };
        self.system = was;
        result
    }

    /// Inserts a new record into the host's system table `table`; returns its id.
    pub async fn insert_record(&mut self, table: &str, fields: Object) -> Result<DocumentId> {
        self.check_writable()?;
        check_system_table(table)?;
        validate_user_fields(&fields)?;
        let was = std::mem::replace(&mut self.system, true);
        let meta = self.ensure_table(table);
        let id = DocumentId::new(meta.number, InternalId::fresh());
        let doc = Document::new(id, now_ms(), fields);
        let result = match validate_document(&doc.value) {
            Ok(()) => self.record_write(&meta, id, None, Some(Arc::new(doc))),
            Err(e) => Err(e.into()),
        };
        self.system = was;
        result.map(|()| id)
    }

    /// Deletes the host's record `key` of system table `table`; `false` when there is none.
    pub async fn delete_record(&mut self, table: &str, key: InternalId) -> Result<bool> {
        self.check_writable()?;
        check_system_table(table)?;
        let was = std::mem::replace(&mut self.system, true);
        let result = async {
            let Some(meta) = self.table(table) else { return Ok(false) };
            let id = DocumentId::new(meta.number, key);
            let Some(current) = self.read_by_id(&meta, id).await? else { return Ok(false) };
            self.record_write(&meta, id, Some(current), None).map(|()| true)
        }
        .await;
        self.system = was;
        result
    }

    /// Creates the host's system table `table` if it does not exist yet. Created up front, a
    /// first write to it later does not change the catalog, which would fail reads at
    /// earlier snapshots.
    pub fn create_system_table(&mut self, table: &str) -> Result<()> {
        self.check_writable()?;
        check_system_table(table)?;
        let was = std::mem::replace(&mut self.system, true);
        self.ensure_table(table);
        self.system = was;
        Ok(())
    }

    /// Writes (inserts or replaces) the host's record `key` of system table `table`.
    pub async fn put_record(&mut self, table: &str, key: InternalId, fields: Object) -> Result<()> {
        self.check_writable()?;
        check_system_table(table)?;
        validate_user_fields(&fields)?;
        let was = std::mem::replace(&mut self.system, true);
        let result = async {
            let meta = self.ensure_table(table);
            let id = DocumentId::new(meta.number, key);
            let current = self.read_by_id(&meta, id).await?;
            let created = current.as_ref().map(|d| d.creation_time()).unwrap_or_else(now_ms);
            let doc = Document::new(id, created, fields);
            validate_document(&doc.value)?;
            self.record_write(&meta, id, current, Some(Arc::new(doc)))
        }
        .await;
        self.system = was;
        result
    }

    /// The table and current revision of a document about to be written.
    async fn existing(&mut self, id: DocumentId) -> Result<(Arc<TableMeta>, Arc<Document>)> {
        let not_found = || StoreError::DocumentNotFound(id.encode());
        let meta = self.table_of(&id).ok_or_else(not_found)?;
        // Apps may read some system tables (`ctx.db.system`); only the host writes them.
        if meta.name.starts_with('_') && !self.system {
            return Err(StoreError::SystemTableReadOnly(meta.name.clone()));
        }
        let doc = self.read_by_id(&meta, id).await?.ok_or_else(not_found)?;
        Ok((meta, doc))
    }

    fn record_write(
        &mut self,
        meta: &TableMeta,
        id: DocumentId,
        snapshot: Option<Arc<Document>>,
        new: Option<Arc<Document>>,
    ) -> Result<()> {
        let previous = match self.writes.get(&id) {
            Some(w) => w.new.clone(),
            None => snapshot.clone(),
        };
        if !self.writes.contains_key(&id) {
            self.charge(LimitKind::DocumentsWritten, 1)?;
        }
        if let Some(d) = &new {
            self.charge(LimitKind::BytesWritten, d.size())?;
        }
        let by_id = self.overlay.entry(IndexId(meta.by_id)).or_default();
        by_id.insert(by_id_key(&id), new.as_ref().map(|_| id));
        for (index, fields) in meta.ordered_indexes() {
            let entries = self.overlay.entry(index).or_default();
            if let Some(p) = &previous {
                entries.insert(ordered_index_key(fields, p), None);
            }
            if let Some(n) = &new {
                entries.insert(ordered_index_key(fields, n), Some(id));
            }
        }
        self.writes.entry(id).or_insert(Write { old: snapshot, new: None }).new = new;
        Ok(())
    }

    // ---- queries ------------------------------------------------------------------------

    /// Resolves a query's index and key range, recording the table's catalog read.
    fn plan(&mut self, query: &Query) -> Result<Option<(IndexRef, KeyRange)>> {
        let table = query.table();
        let Some(meta) = self.table(table) else {
            // A missing table reads as empty; the catalog read makes its creation a conflict.
            return Ok(None);
        };
        let (index, range) = match &query.source {
            Source::FullTableScan { .. } => (meta.index(crate::catalog::BY_CREATION_TIME)?, KeyRange::all()),
            Source::IndexRange { index, range, .. } => {
                let index = meta.index(index)?;
                let range = compile_range(&index, range)?;
                (index, range)
            }
            Source::Search { index, filters, .. } => {
                let search = meta.search_index(index)?;
                let text = kiln_search::TextQuery::parse(&search.def(), filters).map_err(search_error)?;
                let plan = SearchPlan { meta: search.clone(), query: text };
                let index = IndexRef {
                    id: IndexId(search.id),
                    table: meta.number,
                    full_name: format!("{}.{index}", meta.name),
                    kind: IndexKind::Search(Arc::new(plan)),
                };
                (index, KeyRange::all())
            }
        };
        Ok(Some((index, range)))
    }

    /// Opens a stream over a query's results.
    pub fn open_query(&mut self, query: Query) -> Result<StreamId> {
        let planned = self.plan(&query)?;
        self.open_planned(planned, query)
    }

    fn open_planned(&mut self, planned: Option<(IndexRef, KeyRange)>, query: Query) -> Result<StreamId> {
        self.charge(LimitKind::IndexRanges, 1)?;
        let id = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1);
        let (index, range, state) = match planned {
            Some((index, range)) => (index, range, StreamState::Open),
            None => (
                IndexRef { id: CATALOG_INDEX, table: TableNumber(0), full_name: String::new(), kind: IndexKind::ById },
                KeyRange { start: Vec::new(), end: Some(Vec::new()) },
                StreamState::Exhausted,
            ),
        };
        let counts = vec![0; query.operators.len()];
        let mut stream = Stream {
            index,
            range,
            order: query.order,
            operators: query.operators,
            counts,
            cursor: None,
            buffer: VecDeque::new(),
            fetched_to: None,
            complete: false,
            state,
            batch: 4,
            search: None,
        };
        if stream.state == StreamState::Open && stream.limit_reached() {
            stream.state = StreamState::Stopped;
        }
        self.streams.insert(id, stream);
        Ok(id)
    }

    /// The next result of a stream, or `None` when it is done.
    pub async fn next(&mut self, stream: StreamId) -> Result<Option<Arc<Document>>> {
        let mut s = self.streams.remove(&stream).ok_or(stream_not_found(stream))?;
        let result = self.advance(&mut s).await;
        self.streams.insert(stream, s);
        result
    }

    /// Closes a stream; what it read stays in the read set.
    pub fn close_query(&mut self, stream: StreamId) -> Result<()> {
        let s = self.streams.remove(&stream).ok_or(stream_not_found(stream))?;
        self.retire(&s);
        Ok(())
    }

    fn retire(&mut self, s: &Stream) {
        for (index, range) in s.reads() {
            self.reads.add(index, range);
        }
    }

    /// Runs a query to completion.
    pub async fn collect(&mut self, query: Query) -> Result<Vec<Arc<Document>>> {
        let id = self.open_query(query)?;
        let mut out = Vec::new();
        while let Some(d) = self.next(id).await? {
            out.push(d);
        }
        self.close_query(id)?;
        Ok(out)
    }

    async fn advance(&mut self, s: &mut Stream) -> Result<Option<Arc<Document>>> {
        loop {
            if s.state != StreamState::Open {
                return Ok(None);
            }
            if let Some((key, doc)) = s.buffer.pop_front() {
                s.cursor = Some(key);
                self.charge_scan(&doc)?;
                let mut pass = true;
                for (op, count) in s.operators.iter().zip(s.counts.iter_mut()) {
                    match op {
                        Operator::Filter(e) => {
                            if !e.matches(&doc)? {
                                pass = false;
                                break;
                            }
                        }
                        Operator::Limit(_) => *count += 1,
                    }
                }
                // Once any limit is full no later document can get through, so stop reading.
                if s.limit_reached() {
                    s.state = StreamState::Stopped;
                }
                if pass {
                    return Ok(Some(doc));
                }
                continue;
            }
            if s.complete {
                s.state = StreamState::Exhausted;
                return Ok(None);
            }
            self.refill(s).await?;
        }
    }

    async fn refill(&mut self, s: &mut Stream) -> Result<()> {
        let remaining = s.unfetched();
        if remaining.is_empty() {
            s.complete = true;
            return Ok(());
        }
        if let IndexKind::Search(plan) = &s.index.kind {
            let plan = plan.clone();
            return self.refill_search(s, &plan, remaining).await;
        }
        // Persistence holds only published commits: if one not yet published, inside this
        // snapshot, wrote into the range, wait for it (and those before it) to be published.
        if !self.read_only && self.inner.pending_writes_in(self.ts, s.index.id, &remaining) {
            self.inner.wait_published(self.ts).await?;
        }
        let n = s.batch;
        s.batch = (s.batch * 4).min(self.inner.config.scan_batch.max(1));
        let p = &self.inner.persistence;
        let hits = match s.index.kind {
            IndexKind::ById => p.scan_table(s.index.table, &remaining, self.ts, s.order, n).await,
            IndexKind::Ordered(_) => p.scan_index(s.index.id, &remaining, self.ts, s.order, n).await,
            IndexKind::Search(_) => Ok(Vec::new()),
        };
        self.inner.check_not_pruned(self.ts)?;
        let hits = hits?;
        let full = hits.len() >= n;
        let window = match (full, hits.last(), s.order) {
            (true, Some(last), Order::Asc) => {
                KeyRange { start: remaining.start.clone(), end: Some(successor(&last.key)) }
            }
            (true, Some(last), Order::Desc) => KeyRange { start: last.key.clone(), end: remaining.end.clone() },
            _ => remaining.clone(),
        };
        let overlay = self.overlay.get(&s.index.id);
        let mut merged: Vec<(Vec<u8>, Arc<Document>)> = Vec::with_capacity(hits.len());
        for hit in hits {
            if overlay.is_some_and(|o| o.contains_key(&hit.key)) {
                continue;
            }
            let Some(bytes) = &hit.revision.value else { continue };
            merged.push((hit.key, Arc::new(Document::decode(hit.revision.id, bytes)?)));
        }
        if let Some(o) = overlay {
            let bounds =
                (Bound::Included(window.start.clone()), window.end.clone().map_or(Bound::Unbounded, Bound::Excluded));
            for (key, id) in o.range::<Vec<u8>, _>(bounds) {
                if let Some(doc) = id.and_then(|id| self.writes.get(&id)).and_then(|w| w.new.clone()) {
                    merged.push((key.clone(), doc));
                }
            }
            match s.order {
                Order::Asc => merged.sort_by(|a, b| a.0.cmp(&b.0)),
                Order::Desc => merged.sort_by(|a, b| b.0.cmp(&a.0)),
            }
        }
        s.buffer.extend(merged);
        s.complete = !full;
        s.fetched_to = match (full, s.order) {
            (true, Order::Asc) => window.end.map(|mut e| {
                e.pop();
                e
            }),
            (true, Order::Desc) => Some(window.start),
            (false, _) => None,
        };
        Ok(())
    }

    /// Runs a search once (at this snapshot, with this transaction's writes), then hands its
    /// results out batch by batch, reading each document.
    async fn refill_search(&mut self, s: &mut Stream, plan: &SearchPlan, remaining: KeyRange) -> Result<()> {
        if s.search.is_none() {
            // The index's memory part holds published commits only.
            if !self.read_only && self.ts > self.inner.published_ts() {
                self.inner.wait_published(self.ts).await?;
            }
            let live = self
                .inner
                .search
                .text(plan.meta.id)
                .ok_or_else(|| StoreError::IndexNotReady(s.index.full_name.clone()))?;
            // After a restart an index that has to be rebuilt is not served until it is; a
            // search waits a while for it rather than fail at once.
            if !live.built_within(crate::search::BUILD_WAIT).await {
                return Err(StoreError::IndexNotReady(format!("{} (being rebuilt)", s.index.full_name)));
            }
            let own: HashMap<InternalId, Terms> = self
                .writes
                .iter()
                .filter(|(id, _)| id.table == s.index.table)
                .map(|(id, w)| (id.internal, w.new.as_ref().and_then(|d| doc_terms(&plan.meta, d))))
                .collect();
            // `.take(n)` without filters can only use the first n results; otherwise up to
            // Convex's maximum. (Pagination narrows the range, so it asks for all.)
            let whole_range = s.range == KeyRange::all();
            let limit = match s.operators.as_slice() {
                [Operator::Limit(n)] if whole_range => (*n).min(MAX_SEARCH_RESULTS),
                _ => MAX_SEARCH_RESULTS,
            };
            let hits = live.search(self.ts, &plan.query, own, limit).await?;
            let table = s.index.table;
            s.search = Some(
                hits.into_iter()
                    .map(|(score, id)| {
                        let mut key = (!score.max(0.0).to_bits()).to_be_bytes().to_vec();
                        key.extend_from_slice(&id.0);
                        (key, DocumentId::new(table, id))
                    })
                    .collect(),
            );
        }
        let n = s.batch;
        s.batch = (s.batch * 4).min(self.inner.config.scan_batch.max(1));
        let results = s.search.as_deref().unwrap_or_default();
        let in_range = results.iter().filter(|(k, _)| remaining.contains(k));
        let batch: Vec<(Vec<u8>, DocumentId)> = match s.order {
            Order::Asc => in_range.take(n + 1).cloned().collect(),
            Order::Desc => in_range.rev().take(n + 1).cloned().collect(),
        };
        let full = batch.len() > n;
        let mut last = None;
        for (key, id) in batch.into_iter().take(n) {
            self.reads.add(IndexId(self.by_id_index(&id)), KeyRange::point(&by_id_key(&id)));
            if let Some(doc) = self.visible(id).await? {
                s.buffer.push_back((key.clone(), doc));
            }
            last = Some(key);
        }
        s.complete = !full;
        s.fetched_to = if full { last } else { None };
        Ok(())
    }

    fn by_id_index(&self, id: &DocumentId) -> u32 {
        self.catalog
            .table_by_number(id.table)
            .or_else(|| self.new_tables.values().find(|t| t.number == id.table))
            .map_or(0, |t| t.by_id)
    }

    /// Reads one page of a query, starting after `request.cursor`.
    pub async fn query_page(&mut self, query: Query, request: PageRequest) -> Result<Page> {
        let planned = self.plan(&query)?;
        let key = self.catalog.cursor_key;
        let Some((index, range)) = planned else {
            let fp = pagination::fingerprint(CATALOG_INDEX, &KeyRange::all(), query.order);
            self.charge(LimitKind::IndexRanges, 1)?;
            return Ok(Page {
                documents: Vec::new(),
                continue_cursor: pagination::encode(&key, fp, &Position::End),
                is_done: true,
                split_cursor: None,
                page_status: None,
            });
        };
        if request.page_size == 0 && request.end_cursor.is_none() {
            return Err(StoreError::InvalidQuery("page size must be at least 1".into()));
        }
        let fp = pagination::fingerprint(index.id, &range, query.order);
        let start = request.cursor.as_deref().map(|c| pagination::decode(&key, fp, c)).transpose()?;
        let end = request.end_cursor.as_deref().map(|c| pagination::decode(&key, fp, c)).transpose()?;
        let mut narrowed = range.clone();
        if start == Some(Position::End) {
            narrowed.end = Some(narrowed.start.clone());
        }
        let order = query.order;
        if let Some(Position::After(k)) = &start {
            match order {
                Order::Asc => narrowed.start = narrowed.start.max(successor(k)),
                Order::Desc => narrowed.end = Some(narrowed.end.map_or(k.clone(), |e| e.min(k.clone()))),
            }
        }
        if let Some(Position::After(k)) = &end {
            match order {
                Order::Asc => narrowed.end = Some(narrowed.end.map_or(successor(k), |e| e.min(successor(k)))),
                Order::Desc => narrowed.start = narrowed.start.max(k.clone()),
            }
        }
        let id = self.open_planned(Some((index, narrowed)), query)?;
        let mut documents = Vec::new();
        // The index key of each document, for the split cursor.
        let mut keys = Vec::new();
        let mut cut_short = false;
        let (scanned_before, bytes_before) = (self.usage.documents_scanned, self.usage.bytes_read);
        loop {
            if end.is_none() && documents.len() >= request.page_size {
                break;
            }
            let over = |used: usize, max: Option<usize>| max.is_some_and(|m| used >= m.max(1));
            if over(self.usage.documents_scanned - scanned_before, request.max_rows_read)
                || over(self.usage.bytes_read - bytes_before, request.max_bytes_read)
            {
                cut_short = true;
                break;
            }
            match self.next(id).await? {
                Some(d) => {
                    documents.push(d);
                    keys.push(self.streams.get(&id).and_then(|s| s.cursor.clone()));
                }
                None => break,
            }
        }
        let s = self.streams.remove(&id).ok_or(stream_not_found(id))?;
        self.retire(&s);
        let stopped_at = match (&s.state, &s.cursor) {
            (StreamState::Open, Some(c)) => Some(Position::After(c.clone())),
            _ => None,
        };
        let encode = |p: &Position| pagination::encode(&key, fp, p);
        let (continue_at, split_at, page_status) = match (end, stopped_at) {
            // Cut short before its end cursor: the page keeps its end, and the split falls where
            // reading stopped, so that both halves together still cover the whole range.
            (Some(e), Some(stop)) if cut_short => (e, Some(stop), Some(PageStatus::SplitRequired)),
            (Some(e), _) => (e, None, None),
            // Without an end cursor the page simply ends where it stopped.
            (None, Some(stop)) => (stop, None, None),
            (None, None) => (Position::End, None, None),
        };
        let page_status = page_status.or_else(|| {
            let half = |used: usize, max: Option<usize>| max.is_some_and(|m| used * 2 > m);
            (half(self.usage.documents_scanned - scanned_before, request.max_rows_read)
                || half(self.usage.bytes_read - bytes_before, request.max_bytes_read))
            .then_some(PageStatus::SplitRecommended)
        });
        let split_at = split_at.or_else(|| {
            let middle = keys.len().checked_sub(1)? / 2;
            (keys.len() >= 2).then(|| keys[middle].clone().map(Position::After)).flatten()
        });
        Ok(Page {
            documents,
            is_done: continue_at == Position::End,
            continue_cursor: encode(&continue_at),
            split_cursor: split_at.as_ref().map(encode),
            page_status,
        })
    }

    // ---- finishing ----------------------------------------------------------------------

    fn final_reads(&mut self) -> ReadSet {
        let streams: Vec<Stream> = self.streams.drain().map(|(_, s)| s).collect();
        for s in &streams {
            self.retire(s);
        }
        let mut reads = std::mem::take(&mut self.reads);
        for name in &self.tables_read {
            reads.add(CATALOG_INDEX, KeyRange::point(name.as_bytes()));
        }
        reads.normalize();
        reads
    }

    /// What this transaction has read so far, as a token at its snapshot (for subscriptions).
    pub fn read_token(&mut self) -> ReadToken {
        let mut reads = self.reads.clone();
        for s in self.streams.values() {
            for (index, range) in s.reads() {
                reads.add(index, range);
            }
        }
        for name in &self.tables_read {
            reads.add(CATALOG_INDEX, KeyRange::point(name.as_bytes()));
        }
        reads.normalize();
        ReadToken { ts: self.ts, read_set: Arc::new(reads) }
    }

    /// Waits until every commit this transaction's snapshot includes is durable. A read-write
    /// transaction reads validated commits before they are; whatever it returns without
    /// committing writes (a result, an error) must wait for this first.
    pub async fn settle(&self) -> Result<()> {
        self.inner.wait_published(self.ts).await
    }

    /// Commits: validates the reads against later commits and makes the writes durable.
    /// Returns the commit timestamp (the snapshot timestamp when nothing was written).
    pub async fn commit(mut self) -> Result<Timestamp> {
        let span = tracing::debug_span!("commit", begin_ts = self.ts.0, writes = self.writes.len());
        let _guard = span.enter();
        if self.writes.is_empty() && self.new_tables.is_empty() && self.catalog_edit.is_none() {
            self.settle().await?;
            return Ok(self.ts);
        }
        let reads = self.final_reads();
        // Every write was checked when it was made; host records in system tables included.
        self.system = true;
        let mut docs = Vec::with_capacity(self.writes.len());
        let mut index_writes = Vec::new();
        let mut keys = Vec::new();
        let mut search = Vec::new();
        let mut adds_vectors = false;
        let writes = std::mem::take(&mut self.writes);
        for (id, w) in writes {
            if w.old.is_none() && w.new.is_none() {
                continue;
            }
            let Some(meta) = self.table_of(&id) else { continue };
            keys.push((IndexId(meta.by_id), by_id_key(&id)));
            for (index, fields) in meta.ordered_indexes() {
                let old = w.old.as_ref().map(|d| ordered_index_key(fields, d));
                let new = w.new.as_ref().map(|d| ordered_index_key(fields, d));
                if old != new {
                    if let Some(k) = old {
                        index_writes.push(IndexWrite { index, key: k.clone(), doc: None });
                        keys.push((index, k));
                    }
                    if let Some(k) = new {
                        index_writes.push(IndexWrite { index, key: k.clone(), doc: Some(id) });
                        keys.push((index, k));
                    }
                } else if let Some(k) = new {
                    keys.push((index, k));
                }
            }
            for meta in meta.search_indexes.values() {
                if unchanged(meta, w.old.as_deref(), w.new.as_deref()) {
                    continue;
                }
                if meta.dimensions.is_some() {
                    // Vector searches run in actions, outside transactions: no read-set keys.
                    let new = w.new.as_ref().and_then(|d| doc_vector(meta, d));
                    adds_vectors |= new.is_some();
                    search.push(SearchWrite { index: meta.id, id: id.internal, entry: WriteEntry::Vector(new) });
                    continue;
                }
                let old = w.old.as_ref().and_then(|d| doc_terms(meta, d));
                let new = w.new.as_ref().and_then(|d| doc_terms(meta, d));
                for terms in old.iter().chain(new.iter()) {
                    keys.extend(terms.keys().into_iter().map(|k| (IndexId(meta.id), k)));
                }
                search.push(SearchWrite { index: meta.id, id: id.internal, entry: WriteEntry::Text(new) });
            }
            let encoded = w.new.as_ref().map(|d| d.encode());
            docs.push((id, w.new, encoded));
        }
        let new_tables: Vec<Arc<TableMeta>> = std::mem::take(&mut self.new_tables).into_values().collect();
        let mut catalog_keys: BTreeSet<String> = std::mem::take(&mut self.catalog_writes);
        catalog_keys.extend(new_tables.iter().map(|t| t.name.clone()));
        keys.extend(catalog_keys.into_iter().map(|name| (CATALOG_INDEX, name.into_bytes())));
        let user_edit = self.catalog_edit.take();
        let catalog_edit: Option<CatalogEdit> = if new_tables.is_empty() && user_edit.is_none() {
            None
        } else {
            Some(Box::new(move |c: &mut Catalog| {
                for t in new_tables {
                    if c.table(&t.name).is_some() {
                        return Err(StoreError::Conflict {
                            table: t.name.clone(),
                            conflicting_ts: Timestamp::ZERO,
                            key: 0,
                        });
                    }
                    c.add_table((*t).clone());
                }
                match user_edit {
                    Some(edit) => edit(c),
                    None => Ok(()),
                }
            }))
        };
        if adds_vectors {
            let (used, budget) = (self.inner.search.vector_memory_bytes(), self.inner.config.vector_memory_bytes);
            if used > budget {
                return Err(StoreError::VectorMemoryExceeded { used, budget });
            }
        }
        let request = CommitRequest {
            begin_ts: self.ts,
            reads,
            docs,
            index_writes,
            keys: WrittenKeys::new(keys),
            search,
            catalog_edit,
            until_validated: self.until_validated.take(),
        };
        self.inner.submit(request).await
    }
}

fn stream_not_found(id: StreamId) -> StoreError {
    StoreError::StreamNotFound(id)
}

/// Id checks for validators against the tables this transaction can see.
struct CatalogIds<'a>(&'a Catalog, &'a BTreeMap<String, Arc<TableMeta>>);

impl IdCheck for CatalogIds<'_> {
    fn is_id_of(&self, id: &str, table: &str) -> bool {
        let number = self.0.tables.get(table).or_else(|| self.1.get(table)).map(|t| t.number);
        matches!((DocumentId::decode(id), number), (Ok(d), Some(n)) if d.table == n)
    }
}

/// Compiles index range expressions into a key range of the index.
pub fn compile_range(index: &IndexRef, exprs: &[RangeExpr]) -> Result<KeyRange> {
    let fields = index.range_fields();
    let bad = |m: String| StoreError::InvalidQuery(format!("index range on {}: {m}", index.full_name));
    let mut prefix = Vec::new();
    let mut i = 0;
    let mut rest = exprs;
    while let [first, tail @ ..] = rest {
        if first.op != RangeOp::Eq {
            break;
        }
        let field = fields.get(i).ok_or_else(|| bad(format!("too many fields (index has {})", fields.len())))?;
        if &first.field != field {
            return Err(bad(format!("expected `{field}` next, found `{}`", first.field)));
        }
        prefix.extend(key_part(index, first.value.as_ref())?);
        i += 1;
        rest = tail;
    }
    let (mut lower, mut upper) = (None, None);
    for e in rest {
        let field = fields.get(i).ok_or_else(|| bad("bounds after the last index field".into()))?;
        if &e.field != field {
            return Err(bad(format!("bounds must be on `{field}`, found `{}`", e.field)));
        }
        let slot = match e.op {
            RangeOp::Gt | RangeOp::Gte => &mut lower,
            RangeOp::Lt | RangeOp::Lte => &mut upper,
            RangeOp::Eq => return Err(bad("an equality after a bound".into())),
        };
        if slot.is_some() {
            return Err(bad("two bounds on the same side".into()));
        }
        *slot = Some(e);
    }
    let with = |e: &RangeExpr| -> Result<Vec<u8>> {
        let mut k = prefix.clone();
        k.extend(key_part(index, e.value.as_ref())?);
        Ok(k)
    };
    let empty = KeyRange { start: prefix.clone(), end: Some(prefix.clone()) };
    let start = match lower {
        None => prefix.clone(),
        Some(e) if e.op == RangeOp::Gte => with(e)?,
        Some(e) => match prefix_successor(&with(e)?) {
            Some(s) => s,
            None => return Ok(empty),
        },
    };
    let end = match upper {
        None => prefix_successor(&prefix),
        Some(e) if e.op == RangeOp::Lt => Some(with(e)?),
        Some(e) => prefix_successor(&with(e)?),
    };
    Ok(KeyRange { start, end })
}

/// The key bytes of one range value in an index.
fn key_part(index: &IndexRef, value: Option<&Value>) -> Result<Vec<u8>> {
    match index.kind {
        IndexKind::Search(_) => {
            Err(StoreError::InvalidQuery(format!("{} is a search index: it has no ranges", index.full_name)))
        }
        IndexKind::Ordered(_) => Ok(encode_tuple([value])),
        IndexKind::ById => {
            let s = value.and_then(Value::as_str).ok_or_else(|| {
                StoreError::InvalidQuery(format!(
                    "index range on {}: `_id` must be compared with an id string",
                    index.full_name
                ))
            })?;
            let id = DocumentId::decode(s)?;
            if id.table != index.table {
                // An id of another table matches nothing in this one; sort it by table.
                return Ok(if id.table < index.table { Vec::new() } else { vec![0xff; 17] });
            }
            Ok(by_id_key(&id))
        }
    }
}
