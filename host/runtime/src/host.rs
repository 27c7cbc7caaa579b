//! The host side of world `app`'s imports, bound to one call's context: its transaction (none
//! for actions), identity, seed and time, log buffer and memory limiter.

use std::collections::HashMap;
use std::sync::Arc;

use kiln_component::bindings::kiln::platform::db::{self, Page, QueryStream};
use kiln_component::bindings::kiln::platform::log::Level;
use kiln_component::bindings::kiln::platform::search::VectorMatch;
use kiln_component::bindings::kiln::platform::types::{self, Error as WitError, HttpRequest, HttpResponse};
use kiln_component::bindings::kiln::platform::{auth, env, functions, http, log, scheduler, search, storage};
use kiln_store::query::Query;
use kiln_store::{PageRequest, StoreError, StreamId, Timestamp, Transaction};
use kiln_value::{DocumentId, Object, Patch, Value, from_msgpack, object_to_msgpack, to_msgpack};
use wasmtime::component::Resource;

use crate::deployment::{Deployment, Version};
use crate::error::CallError;
use crate::journal::Journal;
use crate::{FunctionKind, Shared, call};

/// A log line of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogLine {
    /// `DEBUG`, `INFO`, `LOG`, `WARN` or `ERROR`.
    pub level: &'static str,
    /// The text (truncated to the deployment's line limit).
    pub text: String,
}

/// A call's log lines, capped in count and length.
#[derive(Clone, Debug, Default)]
pub(crate) struct LogBuffer {
    pub lines: Vec<LogLine>,
    pub dropped: usize,
    pub max_lines: usize,
    pub max_bytes: usize,
}

impl LogBuffer {
    pub fn new(max_lines: usize, max_bytes: usize) -> LogBuffer {
        LogBuffer { lines: Vec::new(), dropped: 0, max_lines, max_bytes }
    }

    pub fn push(&mut self, level: &'static str, mut text: String) {
        if self.lines.len() >= self.max_lines {
            self.dropped += 1;
            return;
        }
        if text.len() > self.max_bytes {
            let cut = text.floor_char_boundary(self.max_bytes);
            text.truncate(cut);
            text.push_str(" [truncated]");
        }
        self.lines.push(LogLine { level, text });
    }

    pub fn extend(&mut self, other: LogBuffer) {
        for line in other.lines {
            self.push(line.level, line.text);
        }
        self.dropped += other.dropped;
    }

    /// The lines, with a final line reporting any that were dropped.
    pub fn finish(mut self) -> Vec<LogLine> {
        if self.dropped > 0 {
            let text = format!(
                "[kiln] log limit reached: {} more lines were dropped (limit {})",
                self.dropped, self.max_lines
            );
            self.lines.push(LogLine { level: "WARN", text });
        }
        self.lines
    }
}

/// Refuses linear memory growth beyond the deployment's cap, remembering that it did.
pub(crate) struct MemoryLimiter {
    pub cap: usize,
    pub exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// A host error the guest must not be able to swallow: it decides the call's outcome.
#[derive(Clone, Debug)]
pub(crate) struct Fatal {
    pub error: CallError,
    /// For a retryable conflict: the commit a retry should wait for.
    pub retry_after: Option<Timestamp>,
    pub retryable: bool,
}

/// Everything the imports of one call need.
pub(crate) struct HostCtx {
    pub shared: Arc<Shared>,
    pub deployment: Arc<Deployment>,
    pub version: Arc<Version>,
    pub kind: FunctionKind,
    pub path: String,
    /// The component instance the function belongs to (its path; `""`: the app): its tables
    /// are the only ones the call sees.
    pub component: String,
    pub txn: Option<Transaction>,
    pub streams: HashMap<u32, StreamId>,
    pub next_stream: u32,
    pub identity: Option<Value>,
    pub seed: u64,
    pub now_ms: f64,
    pub logs: LogBuffer,
    pub fatal: Option<Fatal>,
    pub limiter: MemoryLimiter,
    pub depth: u32,
    pub nested_fuel: u64,
    /// Where this query's pages ended before, and end now.
    pub journal: Journal,
    /// What this call (with the calls it made) has scheduled, for the scheduler's limits.
    pub scheduled: crate::scheduler::Scheduled,
    /// Blobs of files this call's transaction deleted, freed once it commits.
    pub freed: Vec<[u8; 32]>,
    /// An HTTP action's request (handed to the guest when the call starts).
    pub http: Option<HttpRequest>,
}

pub(crate) fn wit_error(code: &str, message: impl Into<String>) -> WitError {
    WitError { code: code.to_owned(), message: message.into(), data: None }
}

impl HostCtx {
    /// Takes the call's state out, leaving an empty context with the same deployment (for a
    /// store that outlives its call until its slot is reset).
    pub(crate) fn take(&mut self) -> HostCtx {
        let empty = HostCtx {
            shared: self.shared.clone(),
            deployment: self.deployment.clone(),
            version: self.version.clone(),
            kind: self.kind,
            path: String::new(),
            component: String::new(),
            txn: None,
            streams: HashMap::new(),
            next_stream: 0,
            identity: None,
            seed: 0,
            now_ms: 0.0,
            logs: LogBuffer::new(0, 0),
            fatal: None,
            limiter: MemoryLimiter { cap: self.limiter.cap, exceeded: false },
            depth: self.depth,
            nested_fuel: 0,
            journal: Journal::default(),
            scheduled: Default::default(),
            freed: Vec::new(),
            http: None,
        };
        std::mem::replace(self, empty)
    }

    /// Converts a store error, remembering it if the guest must not be able to swallow it.
    fn store_error(&mut self, e: StoreError) -> WitError {
        let fatal = e.is_retryable()
            || matches!(
                e,
                StoreError::LimitExceeded { .. }
                    | StoreError::Persistence(_)
                    | StoreError::Failed(_)
                    | StoreError::Closed
            );
        let err = CallError::new(e.code(), format!("{}: {e}", self.path));
        if fatal && self.fatal.is_none() {
            self.fatal = Some(Fatal { retry_after: e.retry_after(), retryable: e.is_retryable(), error: err.clone() });
        }
        wit_error(&err.code, err.message)
    }

    fn txn(&mut self) -> Result<&mut Transaction, WitError> {
        let path = &self.path;
        self.txn.as_mut().ok_or_else(|| {
            wit_error(
                "NotAllowed",
                format!("{path}: actions cannot use the database directly; use runQuery or runMutation"),
            )
        })
    }

    fn writable(&mut self) -> Result<&mut Transaction, WitError> {
        if self.kind == FunctionKind::Query {
            return Err(wit_error(
                "ReadOnlyTransaction",
                format!("{}: queries cannot write to the database", self.path),
            ));
        }
        self.txn()
    }

    /// Parses an id the guest passed; `None` when it is well-formed but of no table the call
    /// sees (another component instance's tables are invisible).
    fn parse_id(&mut self, id: &str) -> Result<Option<DocumentId>, WitError> {
        let parsed = DocumentId::decode(id).map_err(|e| wit_error(e.code(), format!("{}: {e}", self.path)))?;
        let component = self.component.clone();
        let txn = self.txn()?;
        let owner = |name: &str| name.rsplit_once('/').map_or("", |(c, _)| c).to_owned();
        Ok(txn.table_name_of(&parsed).filter(|name| owner(name) == component).map(|_| parsed))
    }

    /// The store's name of a table the guest names: one of its own instance's tables (a `/`
    /// would name another instance's). System tables are the app's only, for now.
    fn table_name(&self, table: &str) -> Result<String, WitError> {
        if table.contains('/') {
            return Err(wit_error(
                "InvalidTableName",
                format!("{}: invalid table name {table:?}: table names are identifiers", self.path),
            ));
        }
        if !self.component.is_empty() && table.starts_with('_') {
            return Err(wit_error(
                "NotSupported",
                format!("{}: system tables ({table}) in components are not supported yet", self.path),
            ));
        }
        Ok(kiln_store::component_table(&self.component, table))
    }

    /// Refuses what a component's function cannot do yet (`what`), by name.
    fn not_in_component(&self, what: &str) -> Result<(), WitError> {
        if self.component.is_empty() {
            return Ok(());
        }
        Err(wit_error(
            "NotSupported",
            format!("{}: {what} in components (component {}) is not supported yet", self.path, self.component),
        ))
    }

    fn existing_id(&mut self, id: &str) -> Result<DocumentId, WitError> {
        self.parse_id(id)?
            .ok_or_else(|| wit_error("DocumentNotFound", format!("{}: document {id:?} does not exist", self.path)))
    }
}

fn object(bytes: &[u8]) -> Result<Object, WitError> {
    match from_msgpack(bytes) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(other) => Err(wit_error("InvalidDocument", format!("expected an object, found {}", other.kind().name()))),
        Err(e) => Err(wit_error(e.code(), e.to_string())),
    }
}

impl types::Host for HostCtx {}

impl db::HostQueryStream for HostCtx {
    fn next(&mut self, stream: Resource<QueryStream>) -> Result<Option<Vec<u8>>, WitError> {
        let id = *self.streams.get(&stream.rep()).ok_or_else(|| wit_error("QueryStreamNotFound", "no such query"))?;
        let handle = self.shared.handle.clone();
        let txn = self.txn()?;
        let result = handle.block_on(txn.next(id));
        match result {
            Ok(doc) => Ok(doc.map(|d| object_to_msgpack(&d.value))),
            Err(e) => Err(self.store_error(e)),
        }
    }

    fn drop(&mut self, stream: Resource<QueryStream>) -> wasmtime::Result<()> {
        if let (Some(id), Some(txn)) = (self.streams.remove(&stream.rep()), self.txn.as_mut()) {
            let _ = txn.close_query(id);
        }
        Ok(())
    }
}

impl db::Host for HostCtx {
    fn get(&mut self, id: String, table: Option<String>) -> Result<Option<Vec<u8>>, WitError> {
        let doc_id = match table {
            Some(t) => {
                let t = self.table_name(&t)?;
                self.txn()?.normalize_id(Some(&t), &id).map_err(|e| self.store_error(e))?
            }
            None => self.parse_id(&id)?,
        };
        let Some(doc_id) = doc_id else { return Ok(None) };
        let handle = self.shared.handle.clone();
        let txn = self.txn()?;
        let result = handle.block_on(txn.get(doc_id));
        match result {
            Ok(doc) => Ok(doc.map(|d| object_to_msgpack(&d.value))),
            Err(e) => Err(self.store_error(e)),
        }
    }

    fn insert(&mut self, table: String, fields: Vec<u8>) -> Result<String, WitError> {
        let table = self.table_name(&table)?;
        let fields = object(&fields)?;
        let handle = self.shared.handle.clone();
        let txn = self.writable()?;
        let result = handle.block_on(txn.insert(&table, fields));
        result.map(|id| id.encode()).map_err(|e| self.store_error(e))
    }

    fn patch(&mut self, id: String, set: Vec<u8>, remove: Vec<String>) -> Result<(), WitError> {
        let mut patch: Patch = object(&set)?.into_iter().map(|(k, v)| (k, Some(v))).collect();
        patch.extend(remove.into_iter().map(|k| (k, None)));
        let doc_id = self.existing_id(&id)?;
        let handle = self.shared.handle.clone();
        let txn = self.writable()?;
        let result = handle.block_on(txn.patch(doc_id, patch));
        result.map(|_| ()).map_err(|e| self.store_error(e))
    }

    fn replace(&mut self, id: String, fields: Vec<u8>) -> Result<(), WitError> {
        let fields = object(&fields)?;
        let doc_id = self.existing_id(&id)?;
        let handle = self.shared.handle.clone();
        let txn = self.writable()?;
        let result = handle.block_on(txn.replace(doc_id, fields));
        result.map(|_| ()).map_err(|e| self.store_error(e))
    }

    fn delete(&mut self, id: String) -> Result<(), WitError> {
        let doc_id = self.existing_id(&id)?;
        let handle = self.shared.handle.clone();
        let txn = self.writable()?;
        let result = handle.block_on(txn.delete(doc_id));
        result.map_err(|e| self.store_error(e))
    }

    fn normalize_id(&mut self, table: String, id: String) -> Result<Option<String>, WitError> {
        let table = self.table_name(&table)?;
        let txn = self.txn()?;
        let result = txn.normalize_id(Some(&table), &id);
        result.map(|o| o.map(|d| d.encode())).map_err(|e| self.store_error(e))
    }

    fn open_query(&mut self, query: String) -> Result<Resource<QueryStream>, WitError> {
        let json: serde_json::Value =
            serde_json::from_str(&query).map_err(|e| wit_error("InvalidQuery", format!("{}: {e}", self.path)))?;
        let mut query = Query::from_json(&json).map_err(|e| self.store_error(e))?;
        query.set_table(self.table_name(query.table())?);
        let txn = self.txn()?;
        let id = txn.open_query(query).map_err(|e| self.store_error(e))?;
        let rep = self.next_stream;
        self.next_stream = self.next_stream.wrapping_add(1);
        self.streams.insert(rep, id);
        Ok(Resource::new_own(rep))
    }

    fn query_page(
        &mut self,
        query: String,
        cursor: Option<String>,
        end_cursor: Option<String>,
        page_size: u32,
        maximum_rows_read: Option<u32>,
        maximum_bytes_read: Option<u32>,
    ) -> Result<Page, WitError> {
        let json: serde_json::Value =
            serde_json::from_str(&query).map_err(|e| wit_error("InvalidQuery", format!("{}: {e}", self.path)))?;
        let mut query = Query::from_json(&json).map_err(|e| self.store_error(e))?;
        query.set_table(self.table_name(query.table())?);
        let request = PageRequest {
            cursor,
            end_cursor: self.journal.end_cursor(end_cursor),
            page_size: page_size as usize,
            max_rows_read: maximum_rows_read.map(|n| n as usize),
            max_bytes_read: maximum_bytes_read.map(|n| n as usize),
        };
        let handle = self.shared.handle.clone();
        let txn = self.txn()?;
        let result = handle.block_on(txn.query_page(query, request));
        let page = result.map_err(|e| self.store_error(e))?;
        self.journal.record(&page.continue_cursor);
        Ok(Page {
            documents: page.documents.iter().map(|d| object_to_msgpack(&d.value)).collect(),
            is_done: page.is_done,
            continue_cursor: page.continue_cursor,
            split_cursor: page.split_cursor,
            page_status: page.page_status.map(|s| s.as_str().to_owned()),
        })
    }
}

impl auth::Host for HostCtx {
    fn get_user_identity(&mut self) -> Option<Vec<u8>> {
        // As in Convex, the caller's identity does not reach into components.
        if !self.component.is_empty() {
            return None;
        }
        self.identity.as_ref().map(to_msgpack)
    }
}

fn call_error(e: CallError) -> WitError {
    WitError { code: e.code, message: e.message, data: e.data.as_ref().map(to_msgpack) }
}

impl scheduler::Host for HostCtx {
    fn schedule(&mut self, name: String, args: Vec<u8>, ts_ms: f64) -> Result<String, WitError> {
        if self.kind == FunctionKind::Query {
            return Err(wit_error("NotAllowed", format!("{}: queries cannot schedule functions", self.path)));
        }
        let (instance, path, entry) = call::resolve(&self.version, &self.component, &name).map_err(call_error)?;
        let args = from_msgpack(&args).map_err(|e| wit_error(e.code(), format!("{}: {e}", self.path)))?;
        let mut so_far = self.scheduled;
        let display = call::display_path(&instance, &path);
        crate::scheduler::check(&self.deployment, &mut so_far, &display, entry.kind, &args, ts_ms)
            .map_err(call_error)?;
        let job = crate::scheduler::NewJob { component: &instance, path: &path, args, ts_ms };
        let handle = self.shared.handle.clone();
        let id = match self.txn.as_mut() {
            Some(txn) => {
                let result = handle.block_on(crate::scheduler::schedule(txn, job));
                result.map_err(|e| self.store_error(e))?
            }
            None => {
                let store = self.deployment.store.clone();
                handle.block_on(crate::scheduler::schedule_now(&store, job)).map_err(call_error)?
            }
        };
        self.scheduled = so_far;
        Ok(id.encode())
    }

    fn cancel(&mut self, id: String) -> Result<(), WitError> {
        if self.kind == FunctionKind::Query {
            return Err(wit_error("NotAllowed", format!("{}: queries cannot cancel scheduled functions", self.path)));
        }
        let id = DocumentId::decode(&id).map_err(|e| wit_error(e.code(), format!("{}: {e}", self.path)))?;
        let handle = self.shared.handle.clone();
        match self.txn.as_mut() {
            Some(txn) => handle.block_on(crate::scheduler::cancel(txn, &self.component, id)).map_err(call_error),
            None => {
                let store = self.deployment.store.clone();
                handle.block_on(crate::scheduler::cancel_now(&store, &self.component, id)).map_err(call_error)
            }
        }
    }
}

impl HostCtx {
    /// Refuses a storage operation queries may not do.
    fn not_in_query(&self, what: &str) -> Result<(), WitError> {
        if self.kind == FunctionKind::Query {
            return Err(wit_error("NotAllowed", format!("{}: queries cannot {what}", self.path)));
        }
        Ok(())
    }

    /// Refuses a storage operation only actions may do.
    fn only_in_action(&self, what: &str) -> Result<(), WitError> {
        if self.kind != FunctionKind::Action {
            return Err(wit_error(
                "NotAllowed",
                format!("{}: only actions can {what} (queries and mutations pass storage ids)", self.path),
            ));
        }
        Ok(())
    }

    fn storage_error(&self, e: CallError) -> WitError {
        wit_error(&e.code, format!("{}: {}", self.path, e.message))
    }

    /// The stored file `id`: read in the call's transaction (a query then depends on it), or
    /// at the newest snapshot in an action.
    fn file(&mut self, id: &str) -> Result<Option<crate::storage::FileMeta>, WitError> {
        self.not_in_component("file storage")?;
        let handle = self.shared.handle.clone();
        let result = match self.txn.as_mut() {
            Some(txn) => handle.block_on(crate::storage::metadata(txn, id)),
            None => handle.block_on(self.deployment.file(id)),
        };
        result.map_err(|e| self.storage_error(e))
    }
}

impl storage::Host for HostCtx {
    fn get_url(&mut self, id: String) -> Result<Option<String>, WitError> {
        let meta = self.file(&id)?;
        let base = self.deployment.config.read().public_url.clone();
        Ok(meta.map(|m| crate::storage::url(&base, &m.id)))
    }

    fn get_metadata(&mut self, id: String) -> Result<Option<Vec<u8>>, WitError> {
        Ok(self.file(&id)?.map(|m| to_msgpack(&m.to_value())))
    }

    fn generate_upload_url(&mut self) -> Result<String, WitError> {
        self.not_in_component("file storage")?;
        self.not_in_query("generate upload URLs")?;
        let token = self.deployment.upload_key.token(crate::call::wall_clock_ms());
        let base = self.deployment.config.read().public_url.clone();
        Ok(format!("{}/api/storage/upload?token={token}", base.trim_end_matches('/')))
    }

    fn delete(&mut self, id: String) -> Result<(), WitError> {
        self.not_in_query("delete files")?;
        self.not_in_component("file storage")?;
        let handle = self.shared.handle.clone();
        if let Some(txn) = self.txn.as_mut() {
            // Its blob is freed once this transaction commits (see `call.rs`).
            let sha256 = handle.block_on(crate::storage::delete(txn, &id)).map_err(|e| self.storage_error(e))?;
            self.freed.push(sha256);
            return Ok(());
        }
        let store = self.deployment.store.clone();
        let mut attempt = 0u32;
        let sha256 = loop {
            let mut txn = store.begin_system();
            let sha256 = handle.block_on(crate::storage::delete(&mut txn, &id)).map_err(|e| self.storage_error(e))?;
            match handle.block_on(crate::scheduler::committed(txn, &mut attempt)) {
                Ok(true) => break sha256,
                Ok(false) => continue,
                Err(e) => return Err(wit_error(e.code(), format!("{}: {e}", self.path))),
            }
        };
        let _runtime = handle.enter();
        self.deployment.files.free(&store, vec![sha256]);
        Ok(())
    }

    fn store(
        &mut self,
        bytes: Vec<u8>,
        content_type: Option<String>,
        sha256: Option<String>,
    ) -> Result<String, WitError> {
        self.only_in_action("store files")?;
        self.not_in_component("file storage")?;
        let handle = self.shared.handle.clone();
        let dep = self.deployment.clone();
        let max = dep.config.read().limits.max_file_bytes;
        let stored =
            handle.block_on(dep.files.store(&dep.store, &mut &bytes[..], content_type, sha256.as_deref(), max));
        stored.map(|m| m.id.encode()).map_err(|e| self.storage_error(e))
    }

    fn get(&mut self, id: String) -> Result<Option<storage::StoredFile>, WitError> {
        self.only_in_action("read files' bytes")?;
        let Some(meta) = self.file(&id)? else { return Ok(None) };
        // The bytes go into the guest's memory, which cannot hold more than its cap.
        if meta.size > self.limiter.cap as u64 {
            return Err(wit_error(
                "FileTooLarge",
                format!(
                    "{}: file {id} has {} bytes, more than an action's memory ({} bytes); serve it with getUrl",
                    self.path, meta.size, self.limiter.cap
                ),
            ));
        }
        let handle = self.shared.handle.clone();
        let dep = self.deployment.clone();
        let read = handle.block_on(async {
            let Some(mut blob) = dep.files.open(&meta, None).await? else { return Ok(None) };
            let mut bytes = Vec::with_capacity(blob.len as usize);
            tokio::io::AsyncReadExt::read_to_end(&mut blob.reader, &mut bytes)
                .await
                .map_err(|e| CallError::new("StorageFailed", format!("reading file {id}: {e}")))?;
            Ok(Some(bytes))
        });
        let bytes = read.map_err(|e: CallError| self.storage_error(e))?;
        Ok(bytes.map(|bytes| storage::StoredFile { bytes, content_type: meta.content_type }))
    }
}

impl functions::Host for HostCtx {
    fn run_query(&mut self, name: String, args: Vec<u8>) -> Result<Vec<u8>, WitError> {
        call::run_nested(self, FunctionKind::Query, &name, &args)
    }
    fn run_mutation(&mut self, name: String, args: Vec<u8>) -> Result<Vec<u8>, WitError> {
        call::run_nested(self, FunctionKind::Mutation, &name, &args)
    }
    fn run_action(&mut self, name: String, args: Vec<u8>) -> Result<Vec<u8>, WitError> {
        call::run_nested(self, FunctionKind::Action, &name, &args)
    }
    fn create_function_handle(&mut self, name: String) -> Result<String, WitError> {
        let (instance, path, _) = call::resolve(&self.version, &self.component, &name).map_err(call_error)?;
        Ok(call::function_handle(&instance, &path))
    }
}

impl search::Host for HostCtx {
    fn vector_search(
        &mut self,
        index: String,
        vector: Vec<f64>,
        limit: Option<u32>,
        filter: Option<String>,
    ) -> Result<Vec<VectorMatch>, WitError> {
        if self.kind != FunctionKind::Action {
            return Err(wit_error("NotAllowed", format!("{}: only actions can run vector searches", self.path)));
        }
        let invalid = |m: String| wit_error("InvalidSearchQuery", m);
        let Some((table, name)) = index.split_once('.') else {
            return Err(invalid(format!("{}: vector index {index:?} is not `table.index`", self.path)));
        };
        let table = self.table_name(table)?;
        let filter: Option<serde_json::Value> = match filter {
            Some(f) => Some(
                serde_json::from_str(&f)
                    .map_err(|e| invalid(format!("{}: the vector search filter is not JSON: {e}", self.path)))?,
            ),
            None => None,
        };
        let store = self.deployment.store.clone();
        let span = tracing::info_span!("vector_search", index = %index, limit = ?limit);
        let _guard = span.enter();
        let hits = self
            .shared
            .handle
            .clone()
            .block_on(store.vector_search(&table, name, &vector, limit, filter.as_ref()))
            .map_err(|e| self.store_error(e))?;
        Ok(hits.into_iter().map(|(score, id)| VectorMatch { id: id.encode(), score: f64::from(score) }).collect())
    }
}

impl http::Host for HostCtx {
    fn fetch(&mut self, request: HttpRequest) -> Result<HttpResponse, WitError> {
        if self.kind != FunctionKind::Action {
            return Err(wit_error("NotAllowed", format!("{}: only actions may fetch", self.path)));
        }
        let policy = self.deployment.config.read().fetch.clone();
        crate::fetch::fetch(&policy, request).map_err(|e| wit_error(&e.code, format!("{}: {}", self.path, e.message)))
    }
}

impl log::Host for HostCtx {
    fn write(&mut self, level: Level, line: String) {
        let level = kiln_component::bindings::level_name(level);
        self.logs.push(level, line);
    }
}

impl env::Host for HostCtx {
    fn seed(&mut self) -> u64 {
        match self.kind {
            // Actions are not re-run at a snapshot: each draw is fresh from the OS's CSPRNG.
            FunctionKind::Action => crate::secret::os_random_u64(),
            _ => self.seed,
        }
    }

    fn now_ms(&mut self) -> f64 {
        match self.kind {
            // Actions see real time; queries and mutations the call's frozen time.
            FunctionKind::Action => crate::call::wall_clock_ms(),
            _ => self.now_ms,
        }
    }

    fn sleep(&mut self, ms: f64) {
        // NaN and non-positive waits are no waits.
        if self.kind != FunctionKind::Action || ms.is_nan() || ms <= 0.0 {
            return;
        }
        // Never past the action's deadline: its epoch deadline ends the call when it resumes.
        let deadline = self.deployment.config.read().limits.action_deadline;
        let wait = std::time::Duration::from_secs_f64((ms / 1000.0).min(deadline.as_secs_f64()));
        std::thread::sleep(wait);
    }

    fn variables(&mut self) -> Vec<(String, String)> {
        // A component sees none of the app's environment variables (as in Convex, where it
        // sees only those declared for it, which Kiln refuses for now).
        if !self.component.is_empty() {
            return Vec::new();
        }
        let config = self.deployment.config.read();
        let mut vars: Vec<_> = config.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // As Convex sets them for every deployment (the app's own values win).
        for (name, value) in [("CONVEX_CLOUD_URL", &config.public_url), ("CONVEX_SITE_URL", &config.site_url)] {
            if !config.env.contains_key(name) {
                vars.push((name.to_owned(), value.clone()));
            }
        }
        vars
    }
}
