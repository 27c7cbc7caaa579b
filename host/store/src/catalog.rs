//! The catalog: tables, their indexes and document validators, and store-wide settings.
//!
//! The catalog is versioned with the data: every change is part of a commit, each transaction
//! reads the catalog of its snapshot, and every table access records a read of the table's
//! catalog key so that schema and index changes conflict with transactions that used the
//! table's old shape.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use kiln_persistence::IndexId;
use kiln_value::validation::{CREATION_TIME_FIELD, ID_FIELD, check_identifier};
use kiln_value::{FieldPath, TableNumber, Validator};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::error::{Result, StoreError};

/// The pseudo-index whose keys are table names: reads and writes of the catalog.
pub const CATALOG_INDEX: IndexId = IndexId(0);
/// The built-in index of every table by `_id`.
pub const BY_ID: &str = "by_id";
/// The built-in index of every table by `_creationTime`.
pub const BY_CREATION_TIME: &str = "by_creation_time";
/// Most fields in a user index.
pub const MAX_INDEX_FIELDS: usize = 16;

/// A user index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    /// The index's number.
    pub id: u32,
    /// The indexed fields, in order (`_creationTime` is implicitly last).
    pub fields: Vec<FieldPath>,
    /// False while the index is being backfilled; queries wait for true.
    pub ready: bool,
}

/// A full-text search index (`searchIndex` in a schema) or a vector index (`vectorIndex`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchIndexMeta {
    /// The index's number (its read-set keys and its directory use it).
    pub id: u32,
    /// The searched string field, or the vector field of a vector index.
    pub search_field: FieldPath,
    /// The fields `.eq` may filter on.
    pub filter_fields: Vec<FieldPath>,
    /// False while the index is being built; queries fail with `IndexNotReady`.
    pub ready: bool,
    /// A vector index's dimensions; `None` for a text index.
    #[serde(default)]
    pub dimensions: Option<u32>,
}

impl SearchIndexMeta {
    /// The definition the search crate works with.
    pub fn def(&self) -> kiln_search::SearchIndexDef {
        kiln_search::SearchIndexDef {
            search_field: self.search_field.to_string(),
            filter_fields: self.filter_fields.iter().map(ToString::to_string).collect(),
        }
    }

    /// The definition of a vector index.
    pub fn vector_def(&self) -> kiln_search::VectorIndexDef {
        kiln_search::VectorIndexDef {
            vector_field: self.search_field.to_string(),
            dimensions: self.dimensions.unwrap_or_default() as usize,
            filter_fields: self.filter_fields.iter().map(ToString::to_string).collect(),
        }
    }

    /// Whether this is what `declared` asks for (otherwise a deploy replaces it).
    pub fn declares(&self, declared: &SearchIndexSchema) -> bool {
        self.search_field == declared.search_field
            && self.filter_fields == declared.filter_fields
            && self.dimensions == declared.dimensions
    }
}

/// A search or vector index as a schema declares it: the searched (or vector) field, the
/// filter fields, and a vector index's dimensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchIndexSchema {
    /// The searched string field, or the vector field.
    pub search_field: FieldPath,
    /// The fields `.eq` may filter on.
    pub filter_fields: Vec<FieldPath>,
    /// A vector index's dimensions; `None` for a text index.
    pub dimensions: Option<u32>,
}

/// Most filter fields of a search index (Convex's limit).
pub const MAX_SEARCH_FILTER_FIELDS: usize = 16;

/// A table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TableMeta {
    /// The table's name.
    pub name: String,
    /// The number its ids carry.
    pub number: TableNumber,
    /// The number of its `by_id` index.
    pub by_id: u32,
    /// The number of its `by_creation_time` index.
    pub by_creation_time: u32,
    /// User indexes by name.
    pub indexes: BTreeMap<String, IndexMeta>,
    /// Full-text search and vector indexes by name.
    #[serde(default)]
    pub search_indexes: BTreeMap<String, SearchIndexMeta>,
    /// The schema's document validator (ValidatorJSON text), if any.
    pub document_type: Option<String>,
    #[serde(skip)]
    validator: Option<Validator>,
}

/// How an index orders its keys.
#[derive(Clone, Debug, PartialEq)]
pub enum IndexKind {
    /// `by_id`: keys are the 16 bytes of the internal id.
    ById,
    /// Keys are the fields' values, then `_creationTime`, then the id.
    Ordered(Vec<FieldPath>),
    /// A search index: results are ordered by relevance, keys stand for (score, id).
    Search(Arc<SearchPlan>),
}

/// A search query resolved against its search index.
#[derive(Clone, Debug, PartialEq)]
pub struct SearchPlan {
    /// The index.
    pub meta: SearchIndexMeta,
    /// The query.
    pub query: kiln_search::TextQuery,
}

/// An index resolved for a query.
#[derive(Clone, Debug)]
pub struct IndexRef {
    /// The index's number.
    pub id: IndexId,
    /// Its table.
    pub table: TableNumber,
    /// `table.index`, for messages.
    pub full_name: String,
    /// How keys are built.
    pub kind: IndexKind,
}

impl IndexRef {
    /// The fields a range expression may use, in order.
    pub fn range_fields(&self) -> Vec<FieldPath> {
        match &self.kind {
            IndexKind::ById => vec![system_path(ID_FIELD)],
            IndexKind::Ordered(fields) => {
                fields.iter().cloned().chain(std::iter::once(system_path(CREATION_TIME_FIELD))).collect()
            }
            IndexKind::Search(_) => Vec::new(),
        }
    }
}

fn system_path(name: &str) -> FieldPath {
    // System field names are valid paths by construction.
    FieldPath::parse(name).unwrap_or_else(|_| unreachable!("system field names are valid paths"))
}

impl TableMeta {
    /// A new, empty table.
    pub fn new(name: &str, number: TableNumber, by_id: u32, by_creation_time: u32) -> TableMeta {
        TableMeta {
            name: name.to_owned(),
            number,
            by_id,
            by_creation_time,
            indexes: BTreeMap::new(),
            search_indexes: BTreeMap::new(),
            document_type: None,
            validator: None,
        }
    }

    /// A ready full-text search index by name.
    pub fn search_index(&self, name: &str) -> Result<&SearchIndexMeta> {
        let full_name = format!("{}.{}", self.name, name);
        match self.search_indexes.get(name) {
            Some(meta) if meta.dimensions.is_some() => Err(StoreError::InvalidQuery(format!(
                "{full_name} is a vector index, not a search index: use ctx.vectorSearch in an action"
            ))),
            Some(meta) if meta.ready => Ok(meta),
            Some(_) => Err(StoreError::IndexNotReady(full_name)),
            None if self.indexes.contains_key(name) => Err(StoreError::InvalidQuery(format!(
                "{full_name} is a database index, not a search index: use .withIndex"
            ))),
            None => Err(StoreError::IndexNotFound(full_name)),
        }
    }

    /// A ready vector index by name.
    pub fn vector_index(&self, name: &str) -> Result<&SearchIndexMeta> {
        let full_name = format!("{}.{}", self.name, name);
        match self.search_indexes.get(name) {
            Some(meta) if meta.dimensions.is_none() => Err(StoreError::InvalidQuery(format!(
                "{full_name} is a full-text search index, not a vector index: use .withSearchIndex in a query"
            ))),
            Some(meta) if meta.ready => Ok(meta),
            Some(_) => Err(StoreError::IndexNotReady(full_name)),
            None if self.indexes.contains_key(name) => Err(StoreError::InvalidQuery(format!(
                "{full_name} is a database index, not a vector index: use .withIndex in a query"
            ))),
            None => Err(StoreError::IndexNotFound(full_name)),
        }
    }

    /// The parsed document validator, if the schema gives one.
    pub fn validator(&self) -> Option<&Validator> {
        self.validator.as_ref()
    }

    fn set_document_type(&mut self, v: Option<Validator>) {
        self.document_type = v.as_ref().map(|v| v.to_json().to_string());
        self.validator = v;
    }

    /// Resolves an index by name (`by_id`, `by_creation_time` or a user index).
    pub fn index(&self, name: &str) -> Result<IndexRef> {
        let full_name = format!("{}.{}", self.name, name);
        let (id, kind) = match name {
            BY_ID => (self.by_id, IndexKind::ById),
            BY_CREATION_TIME => (self.by_creation_time, IndexKind::Ordered(Vec::new())),
            _ => match self.indexes.get(name) {
                Some(meta) if meta.ready => (meta.id, IndexKind::Ordered(meta.fields.clone())),
                Some(_) => return Err(StoreError::IndexNotReady(full_name)),
                None if self.search_indexes.get(name).is_some_and(|m| m.dimensions.is_some()) => {
                    return Err(StoreError::InvalidQuery(format!(
                        "{full_name} is a vector index: use ctx.vectorSearch in an action"
                    )));
                }
                None if self.search_indexes.contains_key(name) => {
                    return Err(StoreError::InvalidQuery(format!(
                        "{full_name} is a search index: use .withSearchIndex"
                    )));
                }
                None => return Err(StoreError::IndexNotFound(full_name)),
            },
        };
        Ok(IndexRef { id: IndexId(id), table: self.number, full_name, kind })
    }

    /// Every ordered index writes must maintain (ready or backfilling), with its fields.
    pub fn ordered_indexes(&self) -> impl Iterator<Item = (IndexId, &[FieldPath])> {
        std::iter::once((IndexId(self.by_creation_time), &[][..]))
            .chain(self.indexes.values().map(|m| (IndexId(m.id), m.fields.as_slice())))
    }
}

/// The whole catalog of one deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Tables by name.
    pub tables: BTreeMap<String, Arc<TableMeta>>,
    /// The next unused table number.
    pub next_table_number: u32,
    /// The next unused index number (0 is the catalog pseudo-index).
    pub next_index_id: u32,
    /// Whether writes are checked against the tables' document validators.
    pub schema_validation: bool,
    /// Secret key signing pagination cursors.
    pub cursor_key: [u8; 32],
    /// Dropped indexes whose entries still have to be deleted.
    pub dropped_indexes: Vec<u32>,
    #[serde(skip)]
    by_number: HashMap<TableNumber, String>,
}

impl Catalog {
    /// An empty catalog with a fresh cursor key.
    pub fn new() -> Catalog {
        let mut cursor_key = [0u8; 32];
        if getrandom::fill(&mut cursor_key).is_err() {
            tracing::warn!("no OS randomness: pagination cursor key derived from time");
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            cursor_key[..16].copy_from_slice(&t.as_nanos().to_le_bytes());
        }
        Catalog {
            tables: BTreeMap::new(),
            next_table_number: 1,
            next_index_id: 1,
            schema_validation: false,
            cursor_key,
            dropped_indexes: Vec::new(),
            by_number: HashMap::new(),
        }
    }

    /// Decodes a stored catalog.
    pub fn decode(bytes: &[u8]) -> Result<Catalog> {
        let mut c: Catalog = rmp_serde::from_slice(bytes)
            .map_err(|e| kiln_persistence::PersistenceError::Corrupt(format!("catalog: {e}")))?;
        for t in c.tables.values_mut() {
            if let Some(text) = &t.document_type {
                let v = parse_validator_text(text)?;
                Arc::make_mut(t).validator = Some(v);
            }
        }
        c.reindex();
        Ok(c)
    }

    /// Encodes the catalog for storage.
    pub fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self)
            .map_err(|e| StoreError::Persistence(kiln_persistence::PersistenceError::Storage(format!("catalog: {e}"))))
    }

    fn reindex(&mut self) {
        self.by_number = self.tables.values().map(|t| (t.number, t.name.clone())).collect();
    }

    /// A table by name.
    pub fn table(&self, name: &str) -> Option<&Arc<TableMeta>> {
        self.tables.get(name)
    }

    /// A table by number.
    pub fn table_by_number(&self, n: TableNumber) -> Option<&Arc<TableMeta>> {
        self.by_number.get(&n).and_then(|name| self.tables.get(name))
    }

    /// Adds a table (its numbers were reserved by the caller).
    pub fn add_table(&mut self, table: TableMeta) {
        self.next_table_number = self.next_table_number.max(table.number.0 + 1);
        self.next_index_id = self.next_index_id.max(table.by_id.max(table.by_creation_time) + 1);
        self.by_number.insert(table.number, table.name.clone());
        self.tables.insert(table.name.clone(), Arc::new(table));
    }

    /// Mutable access to a table.
    pub fn table_mut(&mut self, name: &str) -> Option<&mut TableMeta> {
        self.tables.get_mut(name).map(Arc::make_mut)
    }

    /// Adds a user index in the backfilling state.
    pub fn add_index(&mut self, table: &str, name: &str, fields: Vec<FieldPath>, id: u32) -> Result<()> {
        check_index_definition(table, name, &fields)?;
        let t = self.table_mut(table).ok_or_else(|| StoreError::IndexNotFound(format!("{table}.{name}")))?;
        if t.indexes.contains_key(name) {
            return Err(StoreError::InvalidIndex { index: format!("{table}.{name}"), reason: "already exists".into() });
        }
        t.indexes.insert(name.to_owned(), IndexMeta { id, fields, ready: false });
        self.next_index_id = self.next_index_id.max(id + 1);
        Ok(())
    }

    /// Adds a search or vector index in the building state.
    pub fn add_search_index(&mut self, table: &str, name: &str, def: SearchIndexSchema, id: u32) -> Result<()> {
        check_search_index_definition(table, name, &def)?;
        let t = self.table_mut(table).ok_or_else(|| StoreError::IndexNotFound(format!("{table}.{name}")))?;
        if t.indexes.contains_key(name) || t.search_indexes.contains_key(name) {
            return Err(StoreError::InvalidIndex { index: format!("{table}.{name}"), reason: "already exists".into() });
        }
        let meta = SearchIndexMeta {
            id,
            search_field: def.search_field,
            filter_fields: def.filter_fields,
            ready: false,
            dimensions: def.dimensions,
        };
        t.search_indexes.insert(name.to_owned(), meta);
        self.next_index_id = self.next_index_id.max(id + 1);
        Ok(())
    }

    /// Every search and vector index, with its table.
    pub fn search_indexes(&self) -> impl Iterator<Item = (&Arc<TableMeta>, &SearchIndexMeta)> {
        self.tables.values().flat_map(|t| t.search_indexes.values().map(move |m| (t, m)))
    }

    /// Removes a user index; its entries are queued for deletion.
    pub fn drop_index(&mut self, table: &str, name: &str) -> Result<()> {
        let t = self.table_mut(table).ok_or_else(|| StoreError::IndexNotFound(format!("{table}.{name}")))?;
        let meta = t.indexes.remove(name).ok_or_else(|| StoreError::IndexNotFound(format!("{table}.{name}")))?;
        self.dropped_indexes.push(meta.id);
        Ok(())
    }

    /// Sets a table's document validator.
    pub fn set_document_type(&mut self, table: &str, v: Option<Validator>) {
        if let Some(t) = self.table_mut(table) {
            t.set_document_type(v);
        }
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

fn parse_validator_text(text: &str) -> Result<Validator> {
    let json: Json = serde_json::from_str(text).map_err(|e| StoreError::InvalidSchema(e.to_string()))?;
    Ok(Validator::from_json(&json)?)
}

/// The system tables apps may read (through `ctx.db.system`), but not write.
pub const READABLE_SYSTEM_TABLES: &[&str] = &["_scheduled_functions", "_storage", "_cron_jobs"];

/// Checks a table name: an identifier not starting with `_` (reserved for system tables),
/// optionally qualified by the path of the component instance that owns the table
/// (`limiter/rateLimits`; see [`component_table`]).
pub fn check_table_name(name: &str) -> Result<()> {
    let short = || name.chars().take(100).collect::<String>();
    let table = match name.rsplit_once('/') {
        Some((component, table)) => {
            if component.split('/').any(|part| check_identifier(part).is_err()) {
                return Err(StoreError::InvalidTableName {
                    name: short(),
                    reason: "a component's table is `<component path>/<table>`, the path `/`-separated identifiers",
                });
            }
            table
        }
        None => name,
    };
    check_identifier(table).map_err(|reason| StoreError::InvalidTableName { name: short(), reason })?;
    if table.starts_with('_') {
        return Err(StoreError::InvalidTableName {
            name: name.to_owned(),
            reason: "names starting with `_` are reserved",
        });
    }
    Ok(())
}

/// The name of table `table` of component instance `component` (its path from the app, `""`
/// for the app itself): instances' tables live side by side in one store, apart by name.
pub fn component_table(component: &str, table: &str) -> String {
    if component.is_empty() { table.to_owned() } else { format!("{component}/{table}") }
}

/// Checks the name of a system table: `_` followed by a valid table name.
pub fn check_system_table(name: &str) -> Result<()> {
    match name.strip_prefix('_') {
        Some(rest) => check_table_name(rest),
        None => Err(StoreError::InvalidTableName { name: name.to_owned(), reason: "system tables start with `_`" }),
    }
}

/// Checks a user index definition.
pub fn check_index_definition(table: &str, name: &str, fields: &[FieldPath]) -> Result<()> {
    let bad = |reason: String| Err(StoreError::InvalidIndex { index: format!("{table}.{name}"), reason });
    if check_identifier(name).is_err() {
        return bad("index names must be identifiers".into());
    }
    if name == BY_ID || name == BY_CREATION_TIME || name.starts_with('_') {
        return bad("this index name is reserved".into());
    }
    if fields.is_empty() || fields.len() > MAX_INDEX_FIELDS {
        return bad(format!("an index has 1 to {MAX_INDEX_FIELDS} fields"));
    }
    for (i, f) in fields.iter().enumerate() {
        let first = &f.segments()[0];
        if first == CREATION_TIME_FIELD || first == ID_FIELD {
            return bad(format!("`{f}` is added to every index implicitly and cannot be listed"));
        }
        if fields[..i].contains(f) {
            return bad(format!("field `{f}` is listed twice"));
        }
    }
    Ok(())
}

/// Checks a search or vector index definition.
pub fn check_search_index_definition(table: &str, name: &str, def: &SearchIndexSchema) -> Result<()> {
    let bad = |reason: String| Err(StoreError::InvalidIndex { index: format!("{table}.{name}"), reason });
    if check_identifier(name).is_err() {
        return bad("index names must be identifiers".into());
    }
    if name == BY_ID || name == BY_CREATION_TIME || name.starts_with('_') {
        return bad("this index name is reserved".into());
    }
    if def.search_field.segments()[0].starts_with('_') {
        return bad(format!("the search field `{}` is a system field, which is not searchable", def.search_field));
    }
    if let Some(d) = def.dimensions {
        let (min, max) = (kiln_search::MIN_DIMENSIONS, kiln_search::MAX_DIMENSIONS);
        if !(min..=max).contains(&(d as usize)) {
            return bad(format!("a vector index has between {min} and {max} dimensions, not {d}"));
        }
    }
    if def.filter_fields.len() > MAX_SEARCH_FILTER_FIELDS {
        return bad(format!("a search index has at most {MAX_SEARCH_FILTER_FIELDS} filter fields"));
    }
    for (i, f) in def.filter_fields.iter().enumerate() {
        if def.filter_fields[..i].contains(f) {
            return bad(format!("filter field `{f}` is listed twice"));
        }
    }
    Ok(())
}

/// A table as declared by a schema.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSchema {
    /// Indexes by name, with their fields.
    pub indexes: BTreeMap<String, Vec<FieldPath>>,
    /// Search indexes by name.
    pub search_indexes: BTreeMap<String, SearchIndexSchema>,
    /// The document validator; `None` for `v.any()`.
    pub document_type: Option<Validator>,
}

/// A deployment schema, as exported by the `convex` package's `defineSchema(...).export()`.
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    /// Tables by name.
    pub tables: BTreeMap<String, TableSchema>,
    /// Whether writes are validated.
    pub schema_validation: bool,
}

impl Schema {
    /// Parses the JSON that `defineSchema(...).export()` produces.
    pub fn parse(json: &str) -> Result<Schema> {
        let bad = |m: String| StoreError::InvalidSchema(m);
        let root: Json = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let tables_json =
            root.get("tables").and_then(Json::as_array).ok_or_else(|| bad("missing `tables` array".into()))?;
        let mut tables = BTreeMap::new();
        for t in tables_json {
            let name =
                t.get("tableName").and_then(Json::as_str).ok_or_else(|| bad("a table has no `tableName`".into()))?;
            check_table_name(name)?;
            let mut indexes = BTreeMap::new();
            for idx in t.get("indexes").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
                let idx_name = idx
                    .get("indexDescriptor")
                    .and_then(Json::as_str)
                    .ok_or_else(|| bad(format!("an index of {name} has no `indexDescriptor`")))?;
                let fields = idx
                    .get("fields")
                    .and_then(Json::as_array)
                    .ok_or_else(|| bad(format!("index {name}.{idx_name} has no `fields`")))?
                    .iter()
                    .map(|f| {
                        let s =
                            f.as_str().ok_or_else(|| bad(format!("index {name}.{idx_name}: fields are strings")))?;
                        Ok(FieldPath::parse(s)?)
                    })
                    .collect::<Result<Vec<_>>>()?;
                check_index_definition(name, idx_name, &fields)?;
                if indexes.insert(idx_name.to_owned(), fields).is_some() {
                    return Err(bad(format!("index {name}.{idx_name} is declared twice")));
                }
            }
            let mut search_indexes = BTreeMap::new();
            for (key, field_key, vector) in
                [("searchIndexes", "searchField", false), ("vectorIndexes", "vectorField", true)]
            {
                let what = if vector { "vector index" } else { "search index" };
                for idx in t.get(key).and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
                    let idx_name = idx
                        .get("indexDescriptor")
                        .and_then(Json::as_str)
                        .ok_or_else(|| bad(format!("a {what} of {name} has no `indexDescriptor`")))?;
                    let path = |j: Option<&Json>, field: &str| -> Result<FieldPath> {
                        let s = j
                            .and_then(Json::as_str)
                            .ok_or_else(|| bad(format!("{what} {name}.{idx_name}: {field} must be a string")))?;
                        Ok(FieldPath::parse(s)?)
                    };
                    let search_field = path(idx.get(field_key), field_key)?;
                    let filter_fields = idx
                        .get("filterFields")
                        .and_then(Json::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|f| path(Some(f), "filterFields"))
                        .collect::<Result<Vec<_>>>()?;
                    let dimensions = if vector {
                        let d = idx.get("dimensions").and_then(Json::as_u64).ok_or_else(|| {
                            bad(format!("vector index {name}.{idx_name}: dimensions must be a positive integer"))
                        })?;
                        Some(u32::try_from(d).unwrap_or(u32::MAX))
                    } else {
                        None
                    };
                    let def = SearchIndexSchema { search_field, filter_fields, dimensions };
                    check_search_index_definition(name, idx_name, &def)?;
                    if indexes.contains_key(idx_name) || search_indexes.insert(idx_name.to_owned(), def).is_some() {
                        return Err(bad(format!("index {name}.{idx_name} is declared twice")));
                    }
                }
            }
            let document_type = match t.get("documentType") {
                None | Some(Json::Null) => None,
                Some(v) => match Validator::from_json(v)? {
                    Validator::Any => None,
                    v @ (Validator::Object(_) | Validator::Union(_)) => Some(v),
                    other => return Err(bad(format!("table {name}: a document type must be an object, not {other}"))),
                },
            };
            if tables.insert(name.to_owned(), TableSchema { indexes, search_indexes, document_type }).is_some() {
                return Err(bad(format!("table {name} is declared twice")));
            }
        }
        let schema_validation = root.get("schemaValidation").and_then(Json::as_bool).unwrap_or(true);
        Ok(Schema { tables, schema_validation })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_round_trips_with_validators() {
        let mut c = Catalog::new();
        c.add_table(TableMeta::new("messages", TableNumber(1), 1, 2));
        c.add_index("messages", "by_author", vec![FieldPath::parse("author").unwrap()], 3).unwrap();
        let v = Validator::from_json(&serde_json::json!({"type": "object", "value": {}})).unwrap();
        c.set_document_type("messages", Some(v.clone()));
        let back = Catalog::decode(&c.encode().unwrap()).unwrap();
        assert_eq!(back.table("messages").unwrap().validator(), Some(&v));
        assert_eq!(back.table_by_number(TableNumber(1)).unwrap().name, "messages");
        assert_eq!(back.next_index_id, 4);
        assert_eq!(back.cursor_key, c.cursor_key);
    }

    #[test]
    fn bad_index_definitions() {
        let f = |s: &str| FieldPath::parse(s).unwrap();
        assert!(check_index_definition("t", "by_x", &[f("x")]).is_ok());
        for (name, fields) in [
            ("by_id", vec![f("x")]),
            ("by-x", vec![f("x")]),
            ("i", vec![]),
            ("i", vec![f("_creationTime")]),
            ("i", vec![f("x"), f("x")]),
            ("i", (0..17).map(|i| f(&format!("f{i}"))).collect()),
        ] {
            assert_eq!(check_index_definition("t", name, &fields).unwrap_err().code(), "InvalidIndex", "{name}");
        }
    }

    #[test]
    fn parses_the_convex_schema_export() {
        let s = Schema::parse(
            r#"{"tables":[{"tableName":"messages","indexes":[{"indexDescriptor":"by_channel","fields":["channel","author.name"]}],
                "searchIndexes":[],"vectorIndexes":[],
                "documentType":{"type":"object","value":{"channel":{"fieldType":{"type":"string"},"optional":false}}}}],
                "schemaValidation":true}"#,
        )
        .unwrap();
        let t = &s.tables["messages"];
        assert_eq!(t.indexes["by_channel"].len(), 2);
        assert!(t.document_type.is_some());
        assert!(s.schema_validation);
        assert_eq!(Schema::parse("{}").unwrap_err().code(), "InvalidSchema");
        assert_eq!(Schema::parse(r#"{"tables":[{"tableName":"_x"}]}"#).unwrap_err().code(), "InvalidTableName");
    }
}
