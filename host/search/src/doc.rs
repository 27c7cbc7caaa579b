//! A document as one search index sees it: the searched field's terms with their counts, and
//! its filter values (hashed). Built once per written revision, it serves the in-memory part of
//! an index (matching and scoring recent writes), the tantivy part (what is indexed) and the
//! read-set keys that make search queries reactive.

use kiln_value::{Value, index_key};
use sha2::{Digest, Sha256};

use crate::analyzer::terms;
use crate::query::{SearchIndexDef, TextQuery};

/// One document's searchable content.
#[derive(Clone, Debug, PartialEq)]
pub struct DocTerms {
    /// The searched field's text (what tantivy indexes).
    pub text: String,
    /// Distinct terms, sorted, with how often each occurs.
    pub terms: Vec<(String, u32)>,
    /// Terms in the text, repeats included (BM25's document length).
    pub length: u32,
    /// Hashes of the filter fields' values, in the index's order.
    pub filters: Vec<u64>,
}

/// The hash a filter value is indexed and compared under: of its index-key encoding (equal
/// values, and only those, have equal encodings); `None` is an absent field.
pub fn filter_hash(value: Option<&Value>) -> u64 {
    let mut key = Vec::new();
    index_key::encode_value(&mut key, value);
    let digest = Sha256::digest(&key);
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(head)
}

/// Read-set keys of a term regardless of filters start with this byte…
const ANY_FILTER: u8 = 0;
/// …and those of a term in documents with one filter field's value with this one.
const ONE_FILTER: u8 = 1;

fn filtered_key(field: usize, hash: u64, term: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + term.len());
    k.push(ONE_FILTER);
    k.push(field as u8);
    k.extend_from_slice(&hash.to_be_bytes());
    k.extend_from_slice(term);
    k
}

fn unfiltered_key(term: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + term.len());
    k.push(ANY_FILTER);
    k.extend_from_slice(term);
    k
}

/// The first key after every key starting with `prefix`, or `None` if there is none.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

impl DocTerms {
    /// Tokenizes `text` and hashes the filter values (in the index's order).
    pub fn new(text: &str, filters: &[Option<&Value>]) -> DocTerms {
        let mut all = terms(text);
        let length = all.len() as u32;
        all.sort_unstable();
        let mut counted: Vec<(String, u32)> = Vec::new();
        for t in all {
            match counted.last_mut() {
                Some((last, n)) if *last == t => *n += 1,
                _ => counted.push((t, 1)),
            }
        }
        DocTerms {
            text: text.to_owned(),
            terms: counted,
            length,
            filters: filters.iter().map(|v| filter_hash(*v)).collect(),
        }
    }

    /// Approximate heap bytes held (for memory budgets).
    pub fn bytes(&self) -> usize {
        96 + self.text.len() + self.terms.iter().map(|(t, _)| t.len() + 32).sum::<usize>() + self.filters.len() * 8
    }

    /// The read-set keys a write of this document touches: each term alone, and each term
    /// with each filter field's value. A search query reads the keys its terms could match
    /// (see [`TextQuery::read_ranges`]), so only a write of a document that could match it
    /// conflicts with it or invalidates it.
    pub fn keys(&self) -> Vec<Vec<u8>> {
        let mut keys = Vec::with_capacity(self.terms.len() * (1 + self.filters.len()));
        for (t, _) in &self.terms {
            keys.push(unfiltered_key(t.as_bytes()));
            for (i, h) in self.filters.iter().enumerate() {
                keys.push(filtered_key(i, *h, t.as_bytes()));
            }
        }
        keys
    }

    /// How often `term` occurs.
    pub fn count(&self, term: &str) -> u32 {
        self.terms.binary_search_by(|(t, _)| t.as_str().cmp(term)).map_or(0, |i| self.terms[i].1)
    }

    /// The terms starting with `prefix`, with their counts.
    pub fn with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, u32)> + 'a {
        let start = self.terms.partition_point(|(t, _)| t.as_str() < prefix);
        self.terms[start..].iter().take_while(move |(t, _)| t.starts_with(prefix)).map(|(t, n)| (t.as_str(), *n))
    }
}

impl TextQuery {
    /// The positions (in the index's filter fields) and value hashes of the query's filters.
    pub fn filter_hashes(&self, def: &SearchIndexDef) -> Vec<(usize, u64)> {
        self.filters
            .iter()
            .filter_map(|(field, value)| {
                def.filter_fields.iter().position(|f| f == field).map(|i| (i, filter_hash(value.as_ref())))
            })
            .collect()
    }

    /// The terms of `doc` this query matches, with their counts: its exact terms, and those
    /// starting with its last term (each document term once).
    pub fn matched_terms<'a>(&'a self, doc: &'a DocTerms) -> Vec<(&'a str, u32)> {
        let Some((last, exact)) = self.terms.split_last() else { return Vec::new() };
        let mut out: Vec<(&str, u32)> = exact
            .iter()
            .filter_map(|t| {
                let n = doc.count(t);
                (n > 0 && !t.starts_with(last.as_str())).then_some((t.as_str(), n))
            })
            .collect();
        out.extend(doc.with_prefix(last));
        out
    }

    /// Whether `doc` matches: one of the terms (the last as a prefix) and every filter.
    pub fn matches(&self, def: &SearchIndexDef, doc: &DocTerms) -> bool {
        self.filter_hashes(def).iter().all(|(i, h)| doc.filters.get(*i) == Some(h))
            && !self.matched_terms(doc).is_empty()
    }

    /// The read-set key ranges `[start, end)` (`None`: unbounded) covering every key a
    /// matching document writes ([`DocTerms::keys`]): per term a point (the last term a
    /// prefix range), narrowed by the query's first filter when it has one.
    pub fn read_ranges(&self, def: &SearchIndexDef) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let first_filter = self.filter_hashes(def).first().copied();
        let key = |term: &[u8]| match first_filter {
            Some((i, h)) => filtered_key(i, h, term),
            None => unfiltered_key(term),
        };
        let Some((last, exact)) = self.terms.split_last() else { return Vec::new() };
        let mut ranges: Vec<(Vec<u8>, Option<Vec<u8>>)> = exact
            .iter()
            .map(|t| {
                let k = key(t.as_bytes());
                let mut end = k.clone();
                end.push(0);
                (k, Some(end))
            })
            .collect();
        let start = key(last.as_bytes());
        let end = prefix_end(&start);
        ranges.push((start, end));
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> SearchIndexDef {
        SearchIndexDef { search_field: "body".into(), filter_fields: vec!["channel".into()] }
    }

    fn q(terms: &[&str], channel: Option<&str>) -> TextQuery {
        TextQuery {
            terms: terms.iter().map(|t| (*t).to_owned()).collect(),
            filters: channel.map(|c| ("channel".to_owned(), Some(Value::String(c.into())))).into_iter().collect(),
        }
    }

    fn in_ranges(ranges: &[(Vec<u8>, Option<Vec<u8>>)], key: &[u8]) -> bool {
        ranges.iter().any(|(s, e)| key >= s.as_slice() && e.as_ref().is_none_or(|e| key < e.as_slice()))
    }

    #[test]
    fn terms_are_counted_and_matched_with_the_last_as_prefix() {
        let general = Value::String("general".into());
        let d = DocTerms::new("Hello hello, help world", &[Some(&general)]);
        assert_eq!(d.length, 4);
        assert_eq!(d.count("hello"), 2);
        assert!(q(&["world", "hel"], Some("general")).matches(&def(), &d));
        assert!(q(&["nothing", "wor"], None).matches(&def(), &d));
        assert!(!q(&["hel", "x"], None).matches(&def(), &d), "only the last term is a prefix");
        assert!(!q(&["hello"], Some("random")).matches(&def(), &d));
        assert!(q(&["hello"], None).matches(&def(), &DocTerms::new("hello", &[None])));
        let query = q(&["help", "hel"], None);
        let matched = query.matched_terms(&d).into_iter().map(|(t, _)| t).collect::<Vec<_>>();
        assert_eq!(matched, ["hello", "help"], "a term both exact and under the prefix counts once");
    }

    #[test]
    fn a_matching_document_writes_a_key_the_query_reads_and_others_do_not() {
        let (a, b) = (Value::String("a".into()), Value::String("b".into()));
        let query = q(&["apple", "ban"], Some("a"));
        let ranges = query.read_ranges(&def());
        let keys = |text: &str, ch: &Value| DocTerms::new(text, &[Some(ch)]).keys();
        assert!(keys("banana split", &a).iter().any(|k| in_ranges(&ranges, k)));
        assert!(keys("an apple", &a).iter().any(|k| in_ranges(&ranges, k)));
        assert!(!keys("an apple", &b).iter().any(|k| in_ranges(&ranges, k)), "other channel");
        assert!(!keys("cherry ba", &a).iter().any(|k| in_ranges(&ranges, k)), "no term matches");
        assert!(!keys("applesauce", &a).iter().any(|k| in_ranges(&ranges, k)), "only the last term is a prefix");
        let unfiltered = q(&["ban"], None).read_ranges(&def());
        assert!(keys("bandana", &b).iter().any(|k| in_ranges(&unfiltered, k)));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff]), None);
    }
}
