//! A text index of one search index on disk (tantivy): per document its id, the searchable
//! field's terms and its filter values (hashed), and in the commit the timestamp of the last
//! store commit it reflects. Snapshots of it answer the best-matching ids by BM25, and score
//! documents held elsewhere (the store's recent writes) on the same scale.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use kiln_value::InternalId;
use tantivy::collector::TopDocs;
use tantivy::columnar::Column;
use tantivy::fieldnorm::FieldNormReader;
use tantivy::query::{Bm25StatisticsProvider, Bm25Weight, BooleanQuery, ConstScoreQuery, Occur, Query, TermQuery};
use tantivy::schema::{FAST, Field, INDEXED, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TantivyDocument, Term};

use crate::analyzer::{ANALYZER, analyzer};
use crate::doc::DocTerms;
use crate::error::{Result, SearchError};
use crate::query::{SearchIndexDef, TextQuery};

/// At most this many dictionary terms stand for the query's prefix term (the most frequent
/// ones would score alike anyway); more would make a one-letter prefix as costly as a scan.
pub const MAX_PREFIX_EXPANSIONS: usize = 1024;

/// Memory for tantivy's indexing buffer (its minimum per thread).
const WRITER_HEAP_BYTES: usize = 15_000_000;

/// A match: a document and its BM25 score.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Hit {
    /// The document.
    pub id: InternalId,
    /// Its relevance.
    pub score: f32,
}

#[derive(Clone, Debug)]
struct Fields {
    id: Field,
    id_hi: Field,
    id_lo: Field,
    text: Field,
    filters: Vec<Field>,
}

/// A search index's tantivy index.
pub struct TextIndex {
    def: Arc<SearchIndexDef>,
    reader: IndexReader,
    writer: IndexWriter,
    fields: Fields,
    ts: u64,
}

impl std::fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndex").field("def", &self.def).field("ts", &self.ts).finish()
    }
}

fn schema(def: &SearchIndexDef) -> Schema {
    let mut b = Schema::builder();
    // The id is a term (to delete by) and two fast columns (to read hits quickly).
    b.add_bytes_field("id", INDEXED);
    b.add_u64_field("id_hi", FAST);
    b.add_u64_field("id_lo", FAST);
    let indexing = TextFieldIndexing::default().set_tokenizer(ANALYZER).set_index_option(IndexRecordOption::WithFreqs);
    b.add_text_field("text", TextOptions::default().set_indexing_options(indexing));
    for i in 0..def.filter_fields.len() {
        b.add_u64_field(&format!("f{i}"), INDEXED);
    }
    b.build()
}

fn id_halves(id: &InternalId) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&id.0[..8]);
    lo.copy_from_slice(&id.0[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
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

    /// A new index in memory (tests, and deployments without a data directory).
    pub fn in_memory(def: SearchIndexDef) -> Result<TextIndex> {
        TextIndex::with_index(Index::create_in_ram(schema(&def)), def)
    }

    fn with_index(index: Index, def: SearchIndexDef) -> Result<TextIndex> {
        index.tokenizers().register(ANALYZER, analyzer());
        let schema = index.schema();
        let field = |name: &str| schema.get_field(name).map_err(SearchError::from);
        let fields = Fields {
            id: field("id")?,
            id_hi: field("id_hi")?,
            id_lo: field("id_lo")?,
            text: field("text")?,
            filters: (0..def.filter_fields.len()).map(|i| field(&format!("f{i}"))).collect::<Result<Vec<_>>>()?,
        };
        let writer = index.writer_with_num_threads(1, WRITER_HEAP_BYTES)?;
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let metas = index.load_metas()?;
        let ts = metas.payload.as_deref().and_then(|p| p.parse().ok()).unwrap_or(0);
        Ok(TextIndex { def: Arc::new(def), reader, writer, fields, ts })
    }

    /// The definition.
    pub fn def(&self) -> &SearchIndexDef {
        &self.def
    }

    /// The timestamp of the last store commit the index reflects (0: none).
    pub fn indexed_ts(&self) -> u64 {
        self.ts
    }

    /// Applies the changes of the store's commits up to `ts` (each document's newest value,
    /// `None` for a deleted or unsearchable one) and commits them durably, recording `ts`.
    pub fn apply(&mut self, changes: &[(InternalId, Option<Arc<DocTerms>>)], ts: u64) -> Result<()> {
        for (id, terms) in changes {
            self.writer.delete_term(Term::from_field_bytes(self.fields.id, &id.0));
            if let Some(terms) = terms {
                let (hi, lo) = id_halves(id);
                let mut doc = TantivyDocument::default();
                doc.add_bytes(self.fields.id, &id.0[..]);
                doc.add_u64(self.fields.id_hi, hi);
                doc.add_u64(self.fields.id_lo, lo);
                doc.add_text(self.fields.text, &terms.text);
                for (field, hash) in self.fields.filters.iter().zip(&terms.filters) {
                    doc.add_u64(*field, *hash);
                }
                self.writer.add_document(doc)?;
            }
        }
        let mut commit = self.writer.prepare_commit()?;
        commit.set_payload(&ts.to_string());
        commit.commit()?;
        self.reader.reload()?;
        self.ts = ts;
        Ok(())
    }

    /// The index as it is now: searchable while later changes are applied.
    pub fn snapshot(&self) -> TextSnapshot {
        TextSnapshot {
            searcher: self.reader.searcher(),
            ts: self.ts,
            def: self.def.clone(),
            fields: self.fields.clone(),
        }
    }

    /// The `limit` best matches of `query` now (see [`Search::top`]).
    pub fn search(&self, query: &TextQuery, limit: usize) -> Result<Vec<Hit>> {
        self.snapshot().search(query, &[])?.top(limit, &HashSet::new())
    }

    /// Documents in the index.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the index has no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the index's segments take on disk (or in memory).
    pub fn size_bytes(&self) -> u64 {
        self.reader.searcher().space_usage().map_or(0, |u| u.total().get_bytes())
    }
}

/// A consistent view of a text index at the store commit [`TextSnapshot::ts`].
#[derive(Clone)]
pub struct TextSnapshot {
    searcher: Searcher,
    ts: u64,
    def: Arc<SearchIndexDef>,
    fields: Fields,
}

impl std::fmt::Debug for TextSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextSnapshot").field("ts", &self.ts).finish()
    }
}

impl TextSnapshot {
    /// The store commit this view reflects.
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// Documents in the view.
    pub fn len(&self) -> u64 {
        self.searcher.num_docs()
    }

    /// Whether the view has no documents.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A search for `query` in this view together with `extra`: documents held elsewhere (the
    /// store's recent writes), which count in the BM25 statistics (documents, lengths, term
    /// frequencies) so that index hits and extra documents are scored on one scale.
    pub fn search<'a>(&'a self, query: &'a TextQuery, extra: &[&DocTerms]) -> Result<Search<'a>> {
        let mut docs = self.searcher.total_num_docs()?;
        let mut tokens = self.searcher.total_num_tokens(self.fields.text)?;
        let mut extra_freqs: HashMap<String, u64> = HashMap::new();
        for doc in extra {
            docs += 1;
            tokens += u64::from(doc.length);
            for (term, _) in query.matched_terms(doc) {
                *extra_freqs.entry(term.to_owned()).or_default() += 1;
            }
        }
        Ok(Search { snapshot: self, query, docs, tokens, extra_freqs, doc_freqs: HashMap::new() })
    }
}

/// One query against a [`TextSnapshot`] and extra documents ([`TextSnapshot::search`]).
pub struct Search<'a> {
    snapshot: &'a TextSnapshot,
    query: &'a TextQuery,
    docs: u64,
    tokens: u64,
    extra_freqs: HashMap<String, u64>,
    doc_freqs: HashMap<String, u64>,
}

/// The combined statistics, as tantivy asks for them.
struct Stats<'s, 'a>(&'s Search<'a>);

impl Bm25StatisticsProvider for Stats<'_, '_> {
    fn total_num_tokens(&self, _field: Field) -> tantivy::Result<u64> {
        Ok(self.0.tokens)
    }

    fn total_num_docs(&self) -> tantivy::Result<u64> {
        Ok(self.0.docs)
    }

    fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let extra = term.value().as_str().and_then(|t| self.0.extra_freqs.get(t)).copied().unwrap_or(0);
        Ok(self.0.snapshot.searcher.doc_freq(term)? + extra)
    }
}

impl Search<'_> {
    fn average(&self) -> Option<f32> {
        (self.docs > 0 && self.tokens > 0).then(|| self.tokens as f32 / self.docs as f32)
    }

    /// The `limit` best matches in the view among documents not in `skip`: documents with
    /// any of the query's terms (the last also as a prefix) whose filter fields equal the
    /// query's values, by descending BM25.
    pub fn top(&self, limit: usize, skip: &HashSet<InternalId>) -> Result<Vec<Hit>> {
        let query = self.query;
        if query.terms.is_empty() || limit == 0 || self.average().is_none() {
            return Ok(Vec::new());
        }
        let snapshot = self.snapshot;
        let searcher = &snapshot.searcher;
        let text = snapshot.fields.text;
        let mut words: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        let term_query = |t: Term| -> Box<dyn Query> { Box::new(TermQuery::new(t, IndexRecordOption::WithFreqs)) };
        let (last, exact) = query.terms.split_last().map_or((None, &[][..]), |(l, e)| (Some(l), e));
        for t in exact.iter().filter(|t| last.is_none_or(|l| !t.starts_with(l.as_str()))) {
            words.push((Occur::Should, term_query(Term::from_field_text(text, t))));
        }
        if let Some(prefix) = last {
            let mut expanded: Vec<Vec<u8>> = Vec::new();
            for segment in searcher.segment_readers() {
                let inverted = segment.inverted_index(text)?;
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
                let word = String::from_utf8_lossy(&key).into_owned();
                words.push((Occur::Should, term_query(Term::from_field_text(text, &word))));
            }
        }
        let filters = query.filter_hashes(&snapshot.def);
        if filters.len() != query.filters.len() {
            return Err(SearchError::InvalidQuery("a filter field is not one of this index".into()));
        }
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![(Occur::Must, Box::new(BooleanQuery::new(words)))];
        for (i, hash) in filters {
            // Filters select; they do not add to the relevance.
            let filter = term_query(Term::from_field_u64(snapshot.fields.filters[i], hash));
            clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(filter, 0.0))));
        }
        let top = searcher.search_with_statistics_provider(
            &BooleanQuery::new(clauses),
            &TopDocs::with_limit(limit + skip.len()),
            &Stats(self),
        )?;
        let mut columns: HashMap<u32, (Column<u64>, Column<u64>)> = HashMap::new();
        let mut hits = Vec::with_capacity(top.len().min(limit));
        for (score, address) in top {
            let (hi, lo) = match columns.entry(address.segment_ord) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let fast = searcher.segment_reader(address.segment_ord).fast_fields();
                    e.insert((fast.u64("id_hi")?, fast.u64("id_lo")?))
                }
            };
            let (Some(hi), Some(lo)) = (hi.first(address.doc_id), lo.first(address.doc_id)) else {
                return Err(SearchError::Index("a search document has no id".into()));
            };
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&hi.to_be_bytes());
            id[8..].copy_from_slice(&lo.to_be_bytes());
            let id = InternalId(id);
            if !skip.contains(&id) {
                hits.push(Hit { id, score });
                if hits.len() == limit {
                    break;
                }
            }
        }
        Ok(hits)
    }

    /// The BM25 score of `doc` (zero if it does not match the query's terms), on the scale
    /// of [`Search::top`]'s scores.
    pub fn score(&mut self, doc: &DocTerms) -> Result<f32> {
        let norm = FieldNormReader::fieldnorm_to_id(doc.length);
        let average = self.average().unwrap_or(doc.length.max(1) as f32);
        let mut score = 0.0;
        for (term, count) in self.query.matched_terms(doc) {
            let df = match self.doc_freqs.get(term) {
                Some(df) => *df,
                None => {
                    let t = Term::from_field_text(self.snapshot.fields.text, term);
                    let df = Stats(self).doc_freq(&t)?;
                    self.doc_freqs.insert(term.to_owned(), df);
                    df
                }
            };
            score += Bm25Weight::for_one_term_without_explain(df.min(self.docs), self.docs, average).score(norm, count);
        }
        Ok(score)
    }
}
