//! Writing and reading the snapshot ZIP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, Write};

use kiln_value::{Object, Value, to_clean_json};
use serde_json::Value as Json;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use crate::context::Context;
use crate::error::SnapshotError;
use crate::shape::Shape;

const README: &str = "# A snapshot of a Kiln deployment\n\n\
Each table's documents are lines of JSON in `<table>/documents.jsonl` (int64 values as decimal\n\
strings, bytes as base64); `<table>/generated_schema.jsonl` tells which strings are which.\n\
The tables of a mounted component are under `_components/<name>/` (nested ones under\n\
`_components/<name>/_components/<child>/`).\n\
`npx convex import` reads this file into a Kiln or Convex deployment.\n";

/// Where the files of table `name` go: a component's table (`<instance>/<table>`, the
/// instance's names `/`-separated) under `_components/<name>/` for each name, as in Convex.
fn table_folder(name: &str) -> String {
    match name.rsplit_once('/') {
        Some((instance, table)) => {
            let mut folder: String = instance.split('/').map(|n| format!("_components/{n}/")).collect();
            folder.push_str(table);
            folder
        }
        None => name.to_owned(),
    }
}

/// The table an entry's folder names (the inverse of [`table_folder`]) and the rest of its
/// path, or `None` for a malformed `_components` path.
fn table_of<'a>(parts: &[&'a str]) -> Option<(String, Vec<&'a str>)> {
    let mut instance = Vec::new();
    let mut rest = parts;
    while let ["_components", name, tail @ ..] = rest {
        if name.is_empty() {
            return None;
        }
        instance.push(*name);
        rest = tail;
    }
    if rest.first() == Some(&"_components") {
        return None;
    }
    let prefix = if instance.is_empty() { String::new() } else { format!("{}/", instance.join("/")) };
    Some((prefix, rest.to_vec()))
}

fn options() -> SimpleFileOptions {
    SimpleFileOptions::default().compression_method(CompressionMethod::Deflated).unix_permissions(0o644)
}

/// Writes a snapshot: [`SnapshotWriter::begin_table`], its documents, `end_table`, …, `finish`.
pub struct SnapshotWriter<W: Write + Seek> {
    zip: ZipWriter<W>,
    table: Option<(String, Vec<String>)>,
}

impl<W: Write + Seek> SnapshotWriter<W> {
    /// Starts a snapshot of `tables` (name and number) in `out`.
    pub fn new(out: W, tables: &[(String, u32)]) -> Result<SnapshotWriter<W>, SnapshotError> {
        let mut zip = ZipWriter::new(out);
        zip.start_file("README.md", options())?;
        zip.write_all(README.as_bytes())?;
        // Each instance (the app, each component) lists its own tables.
        let mut by_instance: std::collections::BTreeMap<&str, Vec<(&str, u32)>> = Default::default();
        by_instance.entry("").or_default();
        for (name, number) in tables {
            let (instance, table) = name.rsplit_once('/').unwrap_or(("", name));
            by_instance.entry(instance).or_default().push((table, *number));
        }
        for (instance, tables) in by_instance {
            let folder = if instance.is_empty() { String::new() } else { table_folder(&format!("{instance}/")) };
            zip.start_file(format!("{folder}_tables/documents.jsonl"), options())?;
            for (name, number) in tables {
                let line = serde_json::json!({ "name": name, "id": number });
                zip.write_all(line.to_string().as_bytes())?;
                zip.write_all(b"\n")?;
            }
        }
        Ok(SnapshotWriter { zip, table: None })
    }

    /// Starts table `name`'s documents.
    pub fn begin_table(&mut self, name: &str) -> Result<(), SnapshotError> {
        self.end_table()?;
        self.zip.start_file(format!("{}/documents.jsonl", table_folder(name)), options())?;
        self.table = Some((name.to_owned(), Vec::new()));
        Ok(())
    }

    /// Writes a document (with its `_id` and `_creationTime`) of the current table.
    pub fn document(&mut self, doc: &Object) -> Result<(), SnapshotError> {
        let Some((_, overrides)) = &mut self.table else {
            return Err(SnapshotError::Shape("a document outside a table".into()));
        };
        let context = Context::of_object(doc);
        if context != Context::Infer {
            let id = match doc.get("_id") {
                Some(Value::String(id)) => id.clone(),
                _ => return Err(SnapshotError::Shape("a document without an _id".into())),
            };
            overrides.push(serde_json::json!({ id: context.to_json() }).to_string());
        }
        let line = serde_json::to_vec(&to_clean_json(&Value::Object(doc.clone())))
            .map_err(|e| SnapshotError::Shape(e.to_string()))?;
        self.zip.write_all(&line)?;
        self.zip.write_all(b"\n")?;
        Ok(())
    }

    /// Ends the current table (if any) with its `generated_schema.jsonl`.
    pub fn end_table(&mut self) -> Result<(), SnapshotError> {
        let Some((name, overrides)) = self.table.take() else { return Ok(()) };
        self.zip.start_file(format!("{}/generated_schema.jsonl", table_folder(&name)), options())?;
        self.zip.write_all(Json::String(Shape::Unknown.to_string()).to_string().as_bytes())?;
        self.zip.write_all(b"\n")?;
        for line in overrides {
            self.zip.write_all(line.as_bytes())?;
            self.zip.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Writes the bytes of stored file `id` (`size` bytes) as `_storage/<id>`, as Convex's
    /// exports hold them (after the table `_storage` with their documents).
    pub fn storage_file(&mut self, id: &str, size: u64, bytes: &mut dyn Read) -> Result<u64, SnapshotError> {
        self.end_table()?;
        // Files are mostly compressed already (images, archives): stored as they are.
        let options = SimpleFileOptions::default()
            .compression_method(CompressionMethod::Stored)
            .unix_permissions(0o644)
            .large_file(size >= u64::from(u32::MAX));
        self.zip.start_file(format!("_storage/{id}"), options)?;
        Ok(std::io::copy(bytes, &mut self.zip)?)
    }

    /// Ends the snapshot; returns the output.
    pub fn finish(mut self) -> Result<W, SnapshotError> {
        self.end_table()?;
        Ok(self.zip.finish()?)
    }
}

/// A table in a snapshot.
#[derive(Clone, Debug)]
pub struct TableEntry {
    /// Its name.
    pub name: String,
    documents: String,
    schema: Option<String>,
}

/// Reads a snapshot.
pub struct SnapshotReader<R: Read + Seek> {
    zip: ZipArchive<R>,
    tables: Vec<TableEntry>,
    skipped: Vec<String>,
}

impl<R: Read + Seek> SnapshotReader<R> {
    /// Opens a snapshot and lists its tables (a component's as `<instance>/<table>`); refuses
    /// what Kiln does not import (components' stored files, unknown files) by name.
    pub fn open(input: R) -> Result<SnapshotReader<R>, SnapshotError> {
        let mut zip = ZipArchive::new(input)?;
        let mut documents = Vec::new();
        let mut schemas = HashMap::new();
        let mut skipped = Vec::new();
        let mut refused = Vec::new();
        for i in 0..zip.len() {
            let entry = zip.by_index(i)?;
            let name = entry.name()?.into_owned();
            let size = entry.size();
            drop(entry);
            if name.ends_with('/') || name == "README.md" {
                continue;
            }
            let parts: Vec<&str> = name.split('/').collect();
            let Some((instance, rest)) = table_of(&parts) else {
                refused.push(format!("the file {name:?}"));
                continue;
            };
            match rest.as_slice() {
                ["_tables", "documents.jsonl"] => {}
                ["_storage", "documents.jsonl"] if size == 0 => {}
                ["_storage", ..] if instance.is_empty() => refused.push("stored files (_storage/)".to_owned()),
                ["_storage", ..] => {
                    let what = format!("the stored files of component {:?}", instance.trim_end_matches('/'));
                    if !refused.contains(&what) {
                        refused.push(what);
                    }
                }
                [table, "documents.jsonl"] if table.starts_with('_') => skipped.push(format!("{instance}{table}")),
                [table, "documents.jsonl"] => documents.push((format!("{instance}{table}"), name.clone())),
                [table, "generated_schema.jsonl"] => {
                    schemas.insert(format!("{instance}{table}"), name.clone());
                }
                _ => refused.push(format!("the file {name:?}")),
            }
        }
        if !refused.is_empty() {
            return Err(SnapshotError::Unsupported(format!(
                "the snapshot holds what Kiln does not import yet: {}",
                refused.join(", ")
            )));
        }
        documents.sort();
        let tables = documents
            .into_iter()
            .map(|(name, documents)| TableEntry { schema: schemas.remove(&name), name, documents })
            .collect();
        Ok(SnapshotReader { zip, tables, skipped })
    }

    /// The tables, by name.
    pub fn tables(&self) -> &[TableEntry] {
        &self.tables
    }

    /// System tables (`_…`) in the snapshot that an import leaves out.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Decodes each document of `table` (with `_id` and `_creationTime`, as Convex values)
    /// and hands it to `each`, in the file's order; stops at the first error of either.
    pub fn documents<E: From<SnapshotError>>(
        &mut self,
        table: &TableEntry,
        mut each: impl FnMut(Object) -> Result<(), E>,
    ) -> Result<(), E> {
        let (shape, contexts) = self.schema(table)?;
        let entry = self.zip.by_name(&table.documents).map_err(SnapshotError::from)?;
        let at = |line: usize, message: String| SnapshotError::Line { entry: table.documents.clone(), line, message };
        for (n, line) in BufReader::new(entry).lines().enumerate() {
            let line = line.map_err(SnapshotError::from)?;
            if line.trim().is_empty() {
                continue;
            }
            let json: Json = serde_json::from_str(&line).map_err(|e| at(n + 1, e.to_string()))?;
            let id = json.get("_id").and_then(Json::as_str).unwrap_or_default().to_owned();
            let context = contexts.get(&id).unwrap_or(&Context::Infer);
            match context.apply(&json, &[&shape]).map_err(|e| at(n + 1, e.to_string()))? {
                Value::Object(doc) => each(doc)?,
                _ => return Err(at(n + 1, "a document must be a JSON object".into()).into()),
            }
        }
        Ok(())
    }

    /// A table's shape and the contexts of its documents (`unknown` and none without the file).
    fn schema(&mut self, table: &TableEntry) -> Result<(Shape, HashMap<String, Context>), SnapshotError> {
        let Some(name) = &table.schema else { return Ok((Shape::Unknown, HashMap::new())) };
        let entry = self.zip.by_name(name)?;
        let at = |line: usize, message: String| SnapshotError::Line { entry: name.clone(), line, message };
        let mut shape = Shape::Unknown;
        let mut contexts = HashMap::new();
        for (n, line) in BufReader::new(entry).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let json: Json = serde_json::from_str(&line).map_err(|e| at(n + 1, e.to_string()))?;
            if n == 0 {
                let text =
                    json.as_str().ok_or_else(|| at(1, "the first line must be the shape, a JSON string".into()))?;
                shape = text.parse().map_err(|e: SnapshotError| at(1, e.to_string()))?;
                continue;
            }
            let Json::Object(map) = json else { return Err(at(n + 1, "expected {\"<_id>\": <context>}".into())) };
            for (id, context) in map {
                contexts.insert(id, Context::from_json(&context).map_err(|e| at(n + 1, e.to_string()))?);
            }
        }
        Ok((shape, contexts))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn doc(id: &str, fields: &[(&str, Value)]) -> Object {
        let mut o: Object = fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        o.insert("_id".into(), Value::String(id.into()));
        o.insert("_creationTime".into(), Value::Float64(1_700_000_000_123.5));
        o
    }

    #[test]
    fn a_snapshot_reads_back_what_was_written() {
        let docs = vec![
            doc("a1", &[("n", Value::Int64(-7)), ("s", Value::String("-7".into())), ("b", Value::Bytes(vec![0, 255]))]),
            doc("a2", &[("nested", Value::Array(vec![Value::Float64(f64::NEG_INFINITY), Value::Null]))]),
            doc("a3", &[("plain", Value::Float64(-0.0))]),
        ];
        let mut w = SnapshotWriter::new(Cursor::new(Vec::new()), &[("things".into(), 3), ("empty".into(), 4)]).unwrap();
        w.begin_table("things").unwrap();
        for d in &docs {
            w.document(d).unwrap();
        }
        w.begin_table("empty").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let mut r = SnapshotReader::open(Cursor::new(bytes)).unwrap();
        let tables = r.tables().to_vec();
        assert_eq!(tables.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["empty", "things"]);
        let mut back = Vec::new();
        r.documents::<SnapshotError>(&tables[1], |d| {
            back.push(d);
            Ok(())
        })
        .unwrap();
        assert_eq!(back.len(), 3);
        assert_eq!(back[0], docs[0]);
        assert_eq!(back[1], docs[1]);
        let Some(Value::Float64(z)) = back[2].get("plain") else { panic!() };
        assert!(z.is_sign_negative() && *z == 0.0);
    }

    #[test]
    fn component_tables_round_trip_under_components_folders() {
        let tables = [("notes".to_owned(), 10), ("limiter/rateLimits".to_owned(), 11), ("a/b/t".to_owned(), 12)];
        let mut w = SnapshotWriter::new(Cursor::new(Vec::new()), &tables).unwrap();
        for (name, number) in &tables {
            w.begin_table(name).unwrap();
            let id =
                kiln_value::DocumentId::new(kiln_value::TableNumber(*number), kiln_value::InternalId([1; 16])).encode();
            let doc: Object =
                [("_id".to_owned(), Value::String(id)), ("_creationTime".to_owned(), Value::Float64(1.0))].into();
            w.document(&doc).unwrap();
        }
        let bytes = w.finish().unwrap().into_inner();
        let zip = ZipArchive::new(Cursor::new(bytes.clone())).unwrap();
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
        for expected in [
            "_components/limiter/rateLimits/documents.jsonl",
            "_components/a/_components/b/t/generated_schema.jsonl",
            "_components/a/_components/b/_tables/documents.jsonl",
            "_tables/documents.jsonl",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected} not in {names:?}");
        }
        let r = SnapshotReader::open(Cursor::new(bytes)).unwrap();
        let read: Vec<&str> = r.tables().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(read, ["a/b/t", "limiter/rateLimits", "notes"]);
    }

    #[test]
    fn convex_shapes_decide_without_contexts_and_unsupported_parts_are_named() {
        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("users/documents.jsonl", options()).unwrap();
        zip.write_all(b"{\"_id\":\"u1\",\"_creationTime\":1.5,\"n\":\"12\",\"raw\":\"AQ==\"}\n").unwrap();
        zip.start_file("users/generated_schema.jsonl", options()).unwrap();
        zip.write_all(
            b"\"{\\\"_creationTime\\\": normalfloat64, \\\"_id\\\": id<1>, \\\"n\\\": int64, \\\"raw\\\": bytes}\"\n",
        )
        .unwrap();
        zip.start_file("_scheduled_functions/documents.jsonl", options()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let mut r = SnapshotReader::open(Cursor::new(bytes)).unwrap();
        assert_eq!(r.skipped(), ["_scheduled_functions"]);
        let table = r.tables()[0].clone();
        let mut got = None;
        r.documents::<SnapshotError>(&table, |d| {
            got = Some(d);
            Ok(())
        })
        .unwrap();
        let got = got.unwrap();
        assert_eq!(got.get("n"), Some(&Value::Int64(12)));
        assert_eq!(got.get("raw"), Some(&Value::Bytes(vec![1])));

        let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
        zip.start_file("_components/limiter/_storage/x", options()).unwrap();
        zip.start_file("_storage/documents.jsonl", options()).unwrap();
        zip.write_all(b"{}\n").unwrap();
        zip.start_file("_components//t/documents.jsonl", options()).unwrap();
        let bytes = zip.finish().unwrap().into_inner();
        let err = SnapshotReader::open(Cursor::new(bytes)).err().unwrap();
        assert_eq!(err.code(), "UnsupportedSnapshot");
        assert!(err.to_string().contains("the stored files of component \"limiter\""), "{err}");
        assert!(err.to_string().contains("stored files (_storage/)"), "{err}");
        assert!(err.to_string().contains("\"_components//t/documents.jsonl\""), "{err}");
        assert_eq!(SnapshotReader::open(Cursor::new(b"not a zip".to_vec())).err().unwrap().code(), "InvalidSnapshot");
    }
}
