//! A text index of one search index on disk (tantivy): per document its id, the searchable
//! field's terms and its filter values (hashed), and in the commit the timestamp of the last
//! store commit it reflects. Queries answer the best-matching ids by BM25.

use std::path::Path;

use kiln_value::{InternalId, Value, index_key};
use sha2::{Digest, Sha256};
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, INDEXED, IndexRecordOption, STORED, Schema, TextFieldIndexing, TextOptions, Value as _};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::analyzer::{ANALYZER, analyzer};
use crate::error::{Result, SearchError};
use crate::query::{SearchIndexDef, TextQuery};

/// At most this many dictionary terms stand for the query's prefix term (the most frequent
/// ones would score alike anyway); more would make a one-letter prefix as costly as a scan.
pub const MAX_PREFIX_EXPANSIONS: usize = 1024;

/// Memory for tantivy's indexing buffer (its minimum per thread).
const WRITER_HEAP_BYTES: usize = 15_000_000;

/// One document of the index.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The document.
    pub id: InternalId,
    /// The searched field's text.
    pub text: String,
    /// The filter fields' values, in the index's order (`None`: the field is absent).
    pub filters: Vec<Option<Value>>,
}

/// A match: a document and its BM25 score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// The document.
    pub id: InternalId,
    /// Its relevance.
    pub score: f32,
}

/// A search index's tantivy index.
pub struct TextIndex {
    def: SearchIndexDef,
    index: Index,
    reader: IndexReader,
    writer: IndexWriter,
    id: Field,
    text: Field,
    filters: Vec<Field>,
}

impl std::fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndex").field("def", &self.def).finish()
    }
}

fn schema(def: &SearchIndexDef) -> Schema {
    let mut b = Schema::builder();
    b.add_bytes_field("id", INDEXED | STORED);
    let indexing = TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs);
    b.add_text_field("text", TextOptions::default().set_indexing_options(indexing));
    for i in 0..def.filter_fields.len() {
        b.add_u64_field(&format!("f{i}"), INDEXED);
    }
    b.build()
}

/// The term a filter value is indexed as: a hash of its index-key encoding (equal values,
/// and only those, have equal encodings).
fn filter_term(field: Field, value: Option<&Value>) -> Term {
    let mut key = Vec::new();
    index_key::encode_value(&mut key, value);
    let digest = Sha256::digest(&key);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    Term::from_field_u64(field, u64::from_le_bytes(head))
}

impl TextIndex {
    /// Opens the index in `dir`, creating it (empty, covering nothing) if there is none. An
    /// index of another shape (the definition changed) is an error: the caller rebuilds it.
    pub fn open(dir: &Path, def: SearchIndexDef) -> Result<TextIndex> {
        std::fs::create_dir_all(dir).map_err(|e| SearchError::Index(format!("{}: {e}", dir.display())))?;
        let wanted = schema(&def);
        let index = match Index::open_in_dir(dir) {
            Ok(index) => {
                if index.schema() != wanted {
                    return Err(SearchError::Index(format!("{}: the index has another shape", dir.display())));
                }
                index
            }
            Err(tantivy::TantivyError::OpenDirectoryError(_) | tantivy::TantivyError::OpenReadError(_)) => {
                Index::create_in_dir(dir, wanted)?
            }
            Err(e) => return Err(e.into()),
        };
        TextIndex::with_index(index, def)
    }

    /// A new index in memory (tests and rebuilds).
    pub fn in_memory(def: SearchIndexDef) -> Result<TextIndex> {
        TextIndex::with_index(Index::create_in_ram(schema(&def)), def)
    }

    fn with_index(index: Index, def: SearchIndexDef) -> Result<TextIndex> {
        index.tokenizers().register(ANALYZER, analyzer());
        let schema = index.schema();
        let field = |name: &str| schema.get_field(name).map_err(SearchError::from);
        let id = field("id")?;
        let text = field("text")?;
        let filters = (0..def.filter_fields.len()).map(|i| field(&format!("f{i}"))).collect::<Result<Vec<_>>>()?;
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        Ok(TextIndex { def, index, reader, writer, id, text, filters })
    }

    /// The definition.
    pub fn def(&self) -> &SearchIndexDef {
        &self.def
    }

    /// The timestamp of the last store commit the index reflects (0: none).
    pub fn indexed_ts(&self) -> Result<u64> {
        let metas = self.index.load_metas()?;
        Ok(metas.payload.as_deref().and_then(|p| p.parse().ok()).unwrap_or(0))
    }

    /// Applies the changes of the store's commits up to `ts` (each document's newest value,
    /// `None` for a deleted one) and commits them durably, recording `ts`.
    pub fn apply(&mut self, changes: &[(InternalId, Option<Entry>)], ts: u64) -> Result<()> {
        for (id, entry) in changes {
            self.writer.delete_term(Term::from_field_bytes(self.id, &id.0));
            if let Some(entry) = entry {
                let mut doc = TantivyDocument::default();
                doc.add_bytes(self.id, &entry.id.0[..]);
                doc.add_text(self.text, &entry.text);
                for (field, value) in self.filters.iter().zip(&entry.filters) {
                    let term = filter_term(*field, value.as_ref());
                    doc.add_u64(*field, term.value().as_u64().unwrap_or_default());
                }
                self.writer.add_document(doc)?;
            }
        }
        let mut commit = self.writer.prepare_commit()?;
        commit.set_payload(&ts.to_string());
        commit.commit()?;
        self.reader.reload()?;
        Ok(())
    }

    /// The `limit` best matches of `query`: documents with any of its terms (the last also as
    /// a prefix) whose filter fields equal the query's values, by descending BM25.
    pub fn search(&self, query: &TextQuery, limit: usize) -> Result<Vec<Hit>> {
        if query.terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let searcher = self.reader.searcher();
        let mut words: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let term_query = |t: Term| -> Box<dyn Query> { Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) };
        let (last, exact) = query.terms.split_last().map_or((None, &[][..]), |(l, e)| (Some(l), e));
        for t in exact {
            words.push((Occur::Should, term_query(Term::from_field_text(self.text, t))));
        }
        if let Some(prefix) = last {
            let mut expanded: Vec<Vec<u8>> = Vec::new();
            for segment in searcher.segment_readers() {
                let inverted = segment.inverted_index(self.text)?;
                let mut stream = inverted
                    .terms()
                    .range()
                    .ge(prefix.as_bytes())
                    .into_stream()
                    .map_err(|e| SearchError::Index(e.to_string()))?;
                while stream.advance() && expanded.len() < MAX_PREFIX_EXPANSIONS {
                    let key = stream.key();
                    if !key.starts_with(prefix.as_bytes()) {
                        break;
                    }
                    if !expanded.iter().any(|k| k == key) {
                        expanded.push(key.to_vec());
                    }
                }
            }
            // The prefix itself counts as an exact term even where no document has it yet.
            if !expanded.iter().any(|k| k == prefix.as_bytes()) {
                expanded.push(prefix.as_bytes().to_vec());
            }
            for key in expanded {
                let text = String::from_utf8_lossy(&key).into_owned();
                words.push((Occur::Should, term_query(Term::from_field_text(self.text, &text))));
            }
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, Box::new(BooleanQuery::new(words)))];
        for (field, value) in &query.filters {
            let Some(i) = self.def.filter_fields.iter().position(|f| f == field) else {
                return Err(SearchError::InvalidQuery(format!("{field:?} is not a filter field of this index")));
            };
            // Filters select; they do not add to the relevance.
            let filter = term_query(filter_term(self.filters[i], value.as_ref()));
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(filter, 0.0))));
        }
        let top = searcher.search(&BooleanQuery::new(clauses), &TopDocs::with_limit(limit))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, address) in top {
            let doc: TantivyDocument = searcher.doc(address)?;
            let id = doc
                .get_first(self.id)
                .and_then(|v| v.as_bytes())
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .ok_or_else(|| SearchError::Index("a search document has no id".into()))?;
            hits.push(Hit { id: InternalId(id), score });
        }
        Ok(hits)
    }

    /// Documents in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index has no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
