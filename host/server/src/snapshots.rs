//! Snapshot export and import as the `convex` CLI drives them (`npx convex export`,
//! `npx convex import`): `POST /api/export/request/zip`, `GET /api/export/zip/<ts>`,
//! `_system/cli/exports:getLatest`; `POST /api/import/start_upload`, `upload_part`,
//! `finish_upload`, `/api/perform_import`, `_system/cli/queryImport[:list]`.
//!
//! An export reads every table at one snapshot and writes Convex's ZIP
//! ([`kiln_snapshot`]) under `<data>/snapshots/<deployment>/`; only the latest is kept. An
//! import is checked completely (every document decodes, ids fit this deployment, the mode's
//! rule holds) before `perform_import` writes anything, then written in batches keeping each
//! document's `_id` and `_creationTime`. Both run to the end within their request, so the
//! state the CLI subscribes to is final when it asks; one runs at a time per deployment.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kiln_snapshot::{SnapshotError, SnapshotReader, SnapshotWriter};
use kiln_store::{Query as StoreQuery, Store, TransactionLimits};
use kiln_value::{DocumentId, Object, Value};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;

use crate::AppState;
use crate::admin::{json_body, require_admin};
use crate::error::{RequestBody, Result, ServerError};
use crate::routing::Deployment;

/// The system table of stored files.
const STORAGE: &str = "_storage";

/// Documents per transaction of an import (and per batch handed between threads).
const BATCH: usize = 500;

/// A deployment's exports and imports.
#[derive(Default)]
pub struct Snapshots {
    /// Held while an export or import runs.
    busy: tokio::sync::Mutex<()>,
    latest_export: Mutex<Option<Export>>,
    imports: Mutex<BTreeMap<String, Import>>,
    /// Uploads in progress: their parts and bytes so far.
    uploads: Mutex<HashMap<String, (Vec<u64>, u64)>>,
}

#[derive(Clone)]
struct Export {
    start_ts: u64,
    complete_ts: u64,
    path: PathBuf,
}

#[derive(Clone)]
struct Import {
    file: PathBuf,
    mode: Mode,
    /// The number of documents per table.
    tables: BTreeMap<String, u64>,
    state: ImportState,
}

#[derive(Clone)]
enum ImportState {
    WaitingForConfirmation { message: String, manual: bool },
    Completed { rows: u64 },
    Failed { message: String },
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    RequireEmpty,
    Append,
    Replace,
    ReplaceAll,
}

fn text(s: &str) -> Value {
    Value::String(s.to_owned())
}

impl Snapshots {
    /// `_system/cli/exports:getLatest`: the latest export's state, or null.
    pub fn latest_export(&self) -> Value {
        match &*self.latest_export.lock() {
            None => Value::Null,
            Some(e) => Value::Object(Object::from([
                ("state".to_owned(), text("completed")),
                ("start_ts".to_owned(), Value::Int64(e.start_ts as i64)),
                ("complete_ts".to_owned(), Value::Int64(e.complete_ts as i64)),
                ("zip_object_key".to_owned(), Value::String(format!("snapshot_{}.zip", e.start_ts))),
            ])),
        }
    }

    /// `_system/cli/queryImport` of `id`: `{ _id, state }`, or null.
    pub fn import(&self, id: &str) -> Value {
        self.imports.lock().get(id).map_or(Value::Null, |i| import_value(id, i))
    }

    /// `_system/cli/queryImport:list`: every import of this process.
    pub fn imports(&self) -> Value {
        Value::Array(self.imports.lock().iter().map(|(id, i)| import_value(id, i)).collect())
    }
}

fn import_value(id: &str, import: &Import) -> Value {
    let state = match &import.state {
        ImportState::WaitingForConfirmation { message, manual } => Object::from([
            ("state".to_owned(), text("waiting_for_confirmation")),
            ("message_to_confirm".to_owned(), Value::String(message.clone())),
            ("require_manual_confirmation".to_owned(), Value::Boolean(*manual)),
        ]),
        ImportState::Completed { rows } => Object::from([
            ("state".to_owned(), text("completed")),
            ("num_rows_written".to_owned(), Value::Int64(*rows as i64)),
        ]),
        ImportState::Failed { message } => Object::from([
            ("state".to_owned(), text("failed")),
            ("error_message".to_owned(), Value::String(message.clone())),
        ]),
    };
    Value::Object(Object::from([
        ("_id".to_owned(), Value::String(id.to_owned())),
        ("state".to_owned(), Value::Object(state)),
    ]))
}

fn dir(state: &AppState, deployment: &str) -> Result<PathBuf> {
    let dir = state.config.runtime.data_dir.join("snapshots").join(deployment);
    std::fs::create_dir_all(&dir).map_err(|e| ServerError::Internal(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

fn snapshot_error(e: SnapshotError) -> ServerError {
    ServerError::from(e)
}

impl From<SnapshotError> for ServerError {
    fn from(e: SnapshotError) -> Self {
        ServerError::DeployFailed { code: e.code().to_owned(), message: e.to_string() }
    }
}

fn store_error(e: kiln_store::StoreError) -> ServerError {
    ServerError::DeployFailed { code: e.code().to_owned(), message: e.to_string() }
}

fn token() -> String {
    rand::random::<[u8; 12]>().iter().map(|b| format!("{b:02x}")).collect()
}

/// `POST /api/export/request/zip`: writes a snapshot of every table.
pub async fn request_export(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    Query(params): Query<ExportParams>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let dep = state.deployment(&d)?;
    let Ok(_busy) = dep.snapshots.busy.try_lock() else {
        return Err(ServerError::DeployFailed {
            code: "ExportInProgress".into(),
            message: "an export or import of this deployment is running".into(),
        });
    };
    let runtime_dep = state.runtime.deployment(&d).ok_or_else(|| ServerError::DeploymentNotFound(d.clone()))?;
    let dir = dir(&state, &d)?;
    let span = tracing::info_span!("export", deployment = %d, files = params.include_storage);
    let files = params.include_storage.then_some(&*runtime_dep);
    let export = tracing::Instrument::instrument(export(runtime_dep.store(), files, dir), span).await?;
    let new_path = export.path.clone();
    // Two exports at one snapshot write the same file: the new one replaced it already.
    if let Some(old) = dep.snapshots.latest_export.lock().replace(export)
        && old.path != new_path
        && let Err(e) = std::fs::remove_file(&old.path)
    {
        tracing::warn!(path = %old.path.display(), error = %e, "removing the previous export failed");
    }
    dep.hub.invalidate_all();
    Ok(axum::Json(json!({})).into_response())
}

/// Query of `POST /api/export/request/zip`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportParams {
    /// Whether stored files go into the export (`npx convex export --include-file-storage`).
    #[serde(default)]
    include_storage: bool,
}

/// What the reading side hands the ZIP writer.
enum Piece {
    /// A batch of a table's documents.
    Documents(String, Vec<Object>),
    /// A stored file: its id, size and bytes.
    File(String, u64, Box<dyn tokio::io::AsyncRead + Send + Unpin>),
}

/// Reads every table at one snapshot into a new ZIP in `dir`; with `files`, also the
/// `_storage` table and the bytes of its files.
async fn export(store: &Store, files: Option<&kiln_runtime::Deployment>, dir: PathBuf) -> Result<Export> {
    // Taken before the snapshot: no file of it is freed until the export is written.
    let _kept = match files {
        Some(dep) => Some(dep.keep_files().await),
        None => None,
    };
    let mut tx = store.begin_with(true, TransactionLimits::unlimited());
    let start_ts = tx.begin_ts().0;
    let catalog = tx.catalog().clone();
    let tables: Vec<(String, u32)> = catalog
        .tables
        .iter()
        .filter(|(n, _)| !n.starts_with('_') || (files.is_some() && n.as_str() == STORAGE))
        .map(|(n, t)| (n.clone(), t.number.0))
        .collect();
    let path = dir.join(format!("snapshot_{start_ts}.zip"));
    let file = std::fs::File::create(&path).map_err(|e| ServerError::Internal(format!("{}: {e}", path.display())))?;
    // The ZIP is written on a blocking thread, fed batches of documents read here.
    let (send, mut receive) = tokio::sync::mpsc::channel::<Piece>(4);
    let names: Vec<(String, u32)> = tables.iter().filter(|(n, _)| n != STORAGE).cloned().collect();
    let handle = tokio::runtime::Handle::current();
    let writer = tokio::task::spawn_blocking(move || -> std::result::Result<u64, SnapshotError> {
        let mut w = SnapshotWriter::new(std::io::BufWriter::new(file), &names)?;
        let mut current = None::<String>;
        let mut n = 0;
        while let Some(piece) = receive.blocking_recv() {
            match piece {
                Piece::Documents(table, docs) => {
                    if current.as_deref() != Some(&table) {
                        w.begin_table(&table)?;
                        current = Some(table);
                    }
                    for doc in &docs {
                        w.document(doc)?;
                        n += 1;
                    }
                }
                Piece::File(id, size, reader) => {
                    current = None;
                    let mut reader = tokio_util::io::SyncIoBridge::new_with_handle(reader, handle.clone());
                    w.storage_file(&id, size, &mut reader)?;
                }
            }
        }
        use std::io::Write;
        w.finish()?.flush()?;
        Ok(n)
    });
    let read = async {
        for (table, _) in &tables {
            let stream = tx.open_query(StoreQuery::full_table_scan(table)).map_err(store_error)?;
            let mut batch = Vec::with_capacity(BATCH);
            // An empty table still gets its files.
            let mut first = true;
            while let Some(doc) = tx.next(stream).await.map_err(store_error)? {
                batch.push(doc.value.clone());
                if batch.len() == BATCH {
                    first = false;
                    if send.send(Piece::Documents(table.clone(), std::mem::take(&mut batch))).await.is_err() {
                        return Ok(());
                    }
                }
            }
            if (!batch.is_empty() || first) && send.send(Piece::Documents(table.clone(), batch)).await.is_err() {
                return Ok(());
            }
            tx.close_query(stream).map_err(store_error)?;
        }
        if let Some(dep) = files {
            let stream = tx.open_query(StoreQuery::full_table_scan(STORAGE)).map_err(store_error)?;
            while let Some(doc) = tx.next(stream).await.map_err(store_error)? {
                let id = doc.id.encode();
                let Some(meta) = kiln_runtime::FileMeta::from_document(doc.id, &doc.value) else {
                    tracing::warn!(file = %id, "a stored file's document has no digest; left out of the export");
                    continue;
                };
                match dep.open_file(&meta, None).await {
                    Ok(Some(blob)) => {
                        if send.send(Piece::File(id, meta.size, blob.reader)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => tracing::warn!(file = %id, "a stored file's bytes are missing; left out of the export"),
                    Err(e) => return Err(ServerError::Storage { code: e.code, message: e.message }),
                }
            }
            tx.close_query(stream).map_err(store_error)?;
        }
        Ok::<(), ServerError>(())
    };
    let read = read.await;
    drop(send);
    let written = writer.await.map_err(|e| ServerError::Internal(e.to_string()))?.map_err(snapshot_error);
    let result = read.and(written);
    match result {
        Ok(documents) => {
            let complete_ts = store.published_ts().0.max(start_ts);
            tracing::info!(documents, tables = tables.len(), "export written");
            Ok(Export { start_ts, complete_ts, path })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// `GET /api/export/zip/<ts>`: the export's ZIP (with range requests).
pub async fn download_export(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    UrlPath(ts): UrlPath<String>,
    request: Request,
) -> Result<Response> {
    require_admin(&state, &d, request.headers())?;
    let dep = state.deployment(&d)?;
    let export = dep.snapshots.latest_export.lock().clone();
    let Some(export) = export.filter(|e| e.start_ts.to_string() == ts) else {
        return Err(ServerError::BadRequest(format!("no export at timestamp {ts:?} (only the latest is kept)")));
    };
    let served = tower_http::services::ServeFile::new(&export.path)
        .oneshot(request)
        .await
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    let mut response = served.map(Body::new);
    let disposition = format!("attachment; filename=snapshot_{}.zip", export.start_ts);
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/zip"));
    Ok(response)
}

/// `POST /api/import/start_upload`: a token for the parts of an upload.
pub async fn start_upload(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let dep = state.deployment(&d)?;
    let upload = token();
    dep.snapshots.uploads.lock().insert(upload.clone(), (Vec::new(), 0));
    Ok(axum::Json(json!({ "uploadToken": upload })).into_response())
}

/// Parameters of `upload_part`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartParams {
    upload_token: String,
    part_number: u64,
}

fn part_path(dir: &std::path::Path, upload: &str, part: u64) -> PathBuf {
    dir.join(format!("upload-{upload}.part{part}"))
}

/// `POST /api/import/upload_part`: one part of the file.
pub async fn upload_part(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    Query(params): Query<PartParams>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let dep = state.deployment(&d)?;
    if params.part_number == 0 || params.part_number > 10_000 {
        return Err(ServerError::BadRequest("partNumber must be 1 to 10000".into()));
    }
    {
        let mut uploads = dep.snapshots.uploads.lock();
        let (parts, bytes) = uploads
            .get_mut(&params.upload_token)
            .ok_or_else(|| ServerError::BadRequest("unknown upload token".into()))?;
        let limit = state.config.max_import_bytes;
        if *bytes + body.len() as u64 > limit {
            return Err(ServerError::BodyTooLarge(limit as usize));
        }
        *bytes += body.len() as u64;
        parts.push(params.part_number);
    }
    let path = part_path(&dir(&state, &d)?, &params.upload_token, params.part_number);
    tokio::fs::write(&path, &body).await.map_err(|e| ServerError::Internal(format!("{}: {e}", path.display())))?;
    Ok(axum::Json(json!(params.part_number.to_string())).into_response())
}

/// What an import asks for.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImportArgs {
    #[serde(default)]
    table_name: Option<String>,
    #[serde(default)]
    component_path: Option<String>,
    mode: String,
    format: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FinishUpload {
    import: ImportArgs,
    upload_token: String,
    part_tokens: Vec<serde_json::Value>,
}

/// `POST /api/import/finish_upload`: joins the parts, checks the whole snapshot against the
/// deployment and the mode, and waits for `perform_import`.
pub async fn finish_upload(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let request: FinishUpload = json_body(&body)?;
    let dep = state.deployment(&d)?;
    let (parts, _) = dep
        .snapshots
        .uploads
        .lock()
        .remove(&request.upload_token)
        .ok_or_else(|| ServerError::BadRequest("unknown upload token".into()))?;
    let dir = dir(&state, &d)?;
    let cleanup = |parts: &[u64]| {
        for p in parts {
            let _ = std::fs::remove_file(part_path(&dir, &request.upload_token, *p));
        }
    };
    let unsupported = |what: String| {
        cleanup(&parts);
        Err(ServerError::Unsupported(what))
    };
    let args = &request.import;
    if args.format != "zip" {
        return unsupported(format!(
            "importing {} files is not supported yet: import a snapshot ZIP (npx convex export)",
            args.format
        ));
    }
    if args.table_name.is_some() || args.component_path.as_deref().is_some_and(|c| !c.is_empty()) {
        return unsupported("a snapshot ZIP is imported whole, not into one table or component".into());
    }
    let mode = match args.mode.as_str() {
        "requireEmpty" => Mode::RequireEmpty,
        "append" => Mode::Append,
        "replace" => Mode::Replace,
        "replaceAll" => Mode::ReplaceAll,
        other => return unsupported(format!("import mode {other:?}")),
    };
    // The parts in the order the CLI lists them.
    let order: Vec<u64> = request
        .part_tokens
        .iter()
        .map(|t| t.as_str().and_then(|s| s.parse().ok()).or_else(|| t.as_u64()))
        .collect::<Option<_>>()
        .ok_or_else(|| ServerError::BadRequest("invalid part tokens".into()))?;
    let file = dir.join(format!("import-{}.zip", request.upload_token));
    {
        let mut out = std::fs::File::create(&file).map_err(|e| ServerError::Internal(e.to_string()))?;
        for p in &order {
            let mut part = std::fs::File::open(part_path(&dir, &request.upload_token, *p))
                .map_err(|_| ServerError::BadRequest(format!("part {p} was not uploaded")))?;
            std::io::copy(&mut part, &mut out).map_err(|e| ServerError::Internal(e.to_string()))?;
        }
    }
    cleanup(&parts);
    let store = state.deployment_store(&d)?;
    let catalog = store.catalog();
    // A component's tables go to an instance the deployed app mounts.
    let mounted: BTreeSet<String> = match state.runtime.deployment(&d).and_then(|rd| rd.version()) {
        Some(version) => version.manifest.component_instances().map_err(|e| ServerError::Internal(e.to_string()))?,
        None => Vec::new(),
    }
    .into_iter()
    .map(|i| i.path)
    .collect();
    // The whole snapshot is read once before anything is written.
    let checked = {
        let file = file.clone();
        tokio::task::spawn_blocking(move || check(&file, &catalog, &mounted))
            .await
            .map_err(|e| ServerError::Internal(e.to_string()))?
    };
    let (tables, skipped) = match checked {
        Ok(found) => found,
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            return Err(e);
        }
    };
    let mut lines = vec!["Import change summary:".to_owned(), "table | create | delete".to_owned()];
    let mut deletes = false;
    let existing: Vec<String> = store.catalog().tables.keys().filter(|t| !t.starts_with('_')).cloned().collect();
    for table in tables.keys().chain(existing.iter().filter(|t| mode == Mode::ReplaceAll && !tables.contains_key(*t))) {
        let present = store.count_documents(table).await.map_err(store_error)?;
        let delete = match mode {
            Mode::Replace | Mode::ReplaceAll => present,
            _ => 0,
        };
        if mode == Mode::RequireEmpty && present > 0 {
            let _ = std::fs::remove_file(&file);
            return Err(ServerError::DeployFailed {
                code: "ImportConflict".into(),
                message: format!(
                    "table {table:?} has {present} documents: import with --replace or --append, or into an empty deployment"
                ),
            });
        }
        deletes |= delete > 0;
        lines.push(format!("{table} | {} | {delete} of {present}", tables.get(table).copied().unwrap_or(0)));
    }
    if !skipped.is_empty() {
        lines.push(format!("Not imported (system tables): {}", skipped.join(", ")));
    }
    let id = token();
    let import = Import {
        file,
        mode,
        tables,
        state: ImportState::WaitingForConfirmation { message: lines.join("\n"), manual: deletes },
    };
    dep.snapshots.imports.lock().insert(id.clone(), import);
    dep.hub.invalidate_all();
    Ok(axum::Json(json!({ "importId": id })).into_response())
}

/// Reads every document of the snapshot at `file`: each decodes, has an id of its table's
/// number that this deployment can take, and a component's table belongs to a `mounted`
/// instance. Returns the documents per table and the system
/// tables left out.
fn check(
    file: &std::path::Path,
    catalog: &kiln_store::Catalog,
    mounted: &BTreeSet<String>,
) -> Result<(BTreeMap<String, u64>, Vec<String>)> {
    let input = std::fs::File::open(file).map_err(|e| ServerError::Internal(e.to_string()))?;
    let mut reader = SnapshotReader::open(std::io::BufReader::new(input)).map_err(snapshot_error)?;
    let mut counts = BTreeMap::new();
    let mut numbers: BTreeMap<u32, String> = BTreeMap::new();
    for table in reader.tables().to_vec() {
        if let Some((instance, _)) = table.name.rsplit_once('/')
            && !mounted.contains(instance)
        {
            return Err(bad_import(format!(
                "the snapshot has tables of component {instance:?} ({:?}), which the deployed app does not mount: deploy the app that mounts it first",
                table.name
            )));
        }
        let mut number = None;
        let mut n = 0u64;
        reader.documents::<ServerError>(&table, |doc| {
            let (id, _, _) = split(&table.name, doc)?;
            match number {
                None => number = Some(id.table),
                Some(t) if t == id.table => {}
                Some(_) => {
                    return Err(bad_import(format!("table {:?} has ids of two different tables", table.name)));
                }
            }
            n += 1;
            Ok(())
        })?;
        if let Some(number) = number {
            if let Some(other) = numbers.insert(number.0, table.name.clone()) {
                return Err(bad_import(format!("tables {other:?} and {:?} have ids of the same table", table.name)));
            }
            match (catalog.table(&table.name), catalog.table_by_number(number)) {
                (Some(t), _) if t.number != number => {
                    return Err(bad_import(format!(
                        "table {:?} has number {} here and {} in the snapshot: import into a deployment where it does not exist yet",
                        table.name, t.number.0, number.0
                    )));
                }
                (None, Some(other)) => {
                    return Err(bad_import(format!(
                        "the snapshot's table {:?} has the number of this deployment's table {:?}",
                        table.name, other.name
                    )));
                }
                _ => {}
            }
        }
        counts.insert(table.name.clone(), n);
    }
    Ok((counts, reader.skipped().to_vec()))
}

fn bad_import(message: String) -> ServerError {
    ServerError::DeployFailed { code: "ImportConflict".into(), message }
}

/// A snapshot document's id, creation time and other fields.
fn split(table: &str, mut doc: Object) -> Result<(DocumentId, f64, Object)> {
    let id = match doc.remove("_id") {
        Some(Value::String(s)) => DocumentId::decode(&s)
            .map_err(|e| bad_import(format!("table {table:?}: {s:?} is not a document id: {e}")))?,
        _ => return Err(bad_import(format!("table {table:?}: a document has no _id"))),
    };
    let created = match doc.remove("_creationTime") {
        Some(Value::Float64(t)) => t,
        _ => return Err(bad_import(format!("table {table:?}: document {} has no _creationTime", id.encode()))),
    };
    Ok((id, created, doc))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PerformImport {
    import_id: String,
}

/// `POST /api/perform_import`: writes the checked snapshot.
pub async fn perform_import(
    State(state): State<Arc<AppState>>,
    Extension(Deployment(d)): Extension<Deployment>,
    headers: HeaderMap,
    RequestBody(body): RequestBody,
) -> Result<Response> {
    require_admin(&state, &d, &headers)?;
    let request: PerformImport = json_body(&body)?;
    let dep = state.deployment(&d)?;
    let import = dep
        .snapshots
        .imports
        .lock()
        .get(&request.import_id)
        .cloned()
        .ok_or_else(|| ServerError::BadRequest(format!("no import {:?}", request.import_id)))?;
    if !matches!(import.state, ImportState::WaitingForConfirmation { .. }) {
        return Err(ServerError::BadRequest("this import is not waiting for confirmation".into()));
    }
    let _busy = dep.snapshots.busy.lock().await;
    let store = state.deployment_store(&d)?;
    let span = tracing::info_span!("import", deployment = %d);
    let outcome = tracing::Instrument::instrument(write_import(&store, &import), span).await;
    let _ = std::fs::remove_file(&import.file);
    let new_state = match &outcome {
        Ok(rows) => ImportState::Completed { rows: *rows },
        Err(e) => ImportState::Failed { message: e.to_string() },
    };
    if let Some(i) = dep.snapshots.imports.lock().get_mut(&request.import_id) {
        i.state = new_state;
    }
    dep.hub.invalidate_all();
    outcome?;
    Ok(axum::Json(json!({})).into_response())
}

/// Deletes what the mode replaces, then writes the snapshot's documents in batches.
async fn write_import(store: &Store, import: &Import) -> Result<u64> {
    if matches!(import.mode, Mode::Replace | Mode::ReplaceAll) {
        let catalog = store.catalog();
        let doomed: Vec<String> = catalog
            .tables
            .keys()
            .filter(|t| !t.starts_with('_'))
            .filter(|t| import.mode == Mode::ReplaceAll || import.tables.contains_key(*t))
            .cloned()
            .collect();
        for table in doomed {
            loop {
                let mut tx = store.begin_with(false, TransactionLimits::unlimited());
                let stream = tx.open_query(StoreQuery::full_table_scan(&table)).map_err(store_error)?;
                let mut ids = Vec::with_capacity(BATCH);
                while ids.len() < BATCH
                    && let Some(doc) = tx.next(stream).await.map_err(store_error)?
                {
                    ids.push(doc.id);
                }
                tx.close_query(stream).map_err(store_error)?;
                if ids.is_empty() {
                    break;
                }
                for id in ids {
                    tx.delete(id).await.map_err(store_error)?;
                }
                tx.commit().await.map_err(store_error)?;
            }
        }
    }
    let (send, mut receive) = tokio::sync::mpsc::channel::<(String, Vec<Object>)>(4);
    let file = import.file.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let input = std::fs::File::open(&file).map_err(|e| ServerError::Internal(e.to_string()))?;
        let mut reader = SnapshotReader::open(std::io::BufReader::new(input)).map_err(snapshot_error)?;
        for table in reader.tables().to_vec() {
            let mut batch = Vec::with_capacity(BATCH);
            let sent = reader.documents::<ServerError>(&table, |doc| {
                batch.push(doc);
                if batch.len() == BATCH {
                    send.blocking_send((table.name.clone(), std::mem::take(&mut batch)))
                        .map_err(|_| ServerError::Internal("the import stopped".into()))?;
                }
                Ok(())
            });
            sent?;
            if !batch.is_empty() {
                send.blocking_send((table.name.clone(), batch))
                    .map_err(|_| ServerError::Internal("the import stopped".into()))?;
            }
        }
        Ok(())
    });
    let mut rows = 0u64;
    let mut written = Ok(());
    while let Some((table, docs)) = receive.recv().await {
        let mut tx = store.begin_with(false, TransactionLimits::unlimited());
        let mut batch = async {
            for doc in docs {
                let (id, created, fields) = split(&table, doc)?;
                tx.import_document(&table, id, created, fields).await.map_err(store_error)?;
                rows += 1;
            }
            Ok::<(), ServerError>(())
        }
        .await;
        if batch.is_ok() {
            batch = tx.commit().await.map(|_| ()).map_err(store_error);
        }
        if let Err(e) = batch {
            written = Err(e);
            break;
        }
    }
    drop(receive);
    let read = reader.await.map_err(|e| ServerError::Internal(e.to_string()))?;
    written?;
    read?;
    tracing::info!(rows, "import written");
    Ok(rows)
}
