//! Search queries as the `convex` package sends them (a query source
//! `{type: "Search", indexName, filters}`), checked against the index and Convex's limits.

use kiln_value::{Value, from_convex_json_or_undefined};
use serde_json::Value as Json;

use crate::analyzer::terms;
use crate::error::{Result, SearchError};

/// Terms one query may search for (after tokenization), as in Convex.
pub const MAX_QUERY_TERMS: usize = 16;
/// Filter conditions one query may have, as in Convex.
pub const MAX_FILTER_CONDITIONS: usize = 8;

/// A search index: the field searched and the fields it filters on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchIndexDef {
    /// The searched field (a dotted path).
    pub search_field: String,
    /// The fields `.eq` may filter on (dotted paths).
    pub filter_fields: Vec<String>,
}

/// A parsed search: terms (the last matched as a prefix) and equality filters.
#[derive(Clone, Debug, PartialEq)]
pub struct TextQuery {
    /// The query's terms, in order, without repeats; the last one also matches as a prefix.
    pub terms: Vec<String>,
    /// `(field, value)`: the document's field must equal the value (`None`: must be absent,
    /// as `.eq(field, undefined)` asks).
    pub filters: Vec<(String, Option<Value>)>,
}

impl TextQuery {
    /// Parses the `filters` of a search source against `index`.
    pub fn parse(index: &SearchIndexDef, filters: &Json) -> Result<TextQuery> {
        let bad = |m: String| SearchError::InvalidQuery(m);
        let list = filters.as_array().ok_or_else(|| bad("a search query's filters must be an array".into()))?;
        let mut text = None;
        let mut eqs = Vec::new();
        for filter in list {
            let field = filter
                .get("fieldPath")
                .and_then(Json::as_str)
                .ok_or_else(|| bad("a search filter has no fieldPath".into()))?;
            match filter.get("type").and_then(Json::as_str) {
                Some("Search") => {
                    if field != index.search_field {
                        return Err(bad(format!(
                            "the search field of this index is {:?}, not {field:?}",
                            index.search_field
                        )));
                    }
                    if text.is_some() {
                        return Err(bad("a search query searches once (one .search)".into()));
                    }
                    let value = filter
                        .get("value")
                        .and_then(Json::as_str)
                        .ok_or_else(|| bad("the searched text must be a string".into()))?;
                    text = Some(value.to_owned());
                }
                Some("Eq") => {
                    if !index.filter_fields.iter().any(|f| f == field) {
                        return Err(bad(format!(
                            "{field:?} is not a filter field of this index (its filter fields: {:?})",
                            index.filter_fields
                        )));
                    }
                    let json = filter.get("value").unwrap_or(&Json::Null);
                    let value =
                        from_convex_json_or_undefined(json).map_err(|e| bad(format!("the value of {field:?}: {e}")))?;
                    eqs.push((field.to_owned(), value));
                }
                other => return Err(bad(format!("unknown search filter type {other:?}"))),
            }
        }
        let text = text.ok_or_else(|| bad("a search query needs a .search(field, text)".into()))?;
        if eqs.len() > MAX_FILTER_CONDITIONS {
            return Err(SearchError::TooManyFilters { found: eqs.len(), max: MAX_FILTER_CONDITIONS });
        }
        let all = terms(&text);
        if all.len() > MAX_QUERY_TERMS {
            return Err(SearchError::TooManyTerms { found: all.len(), max: MAX_QUERY_TERMS });
        }
        // Repeats add nothing to which documents match; the last occurrence keeps its place
        // (only the query's last term is a prefix).
        let mut unique: Vec<String> = Vec::with_capacity(all.len());
        for t in all {
            unique.retain(|u| *u != t);
            unique.push(t);
        }
        Ok(TextQuery { terms: unique, filters: eqs })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn index() -> SearchIndexDef {
        SearchIndexDef { search_field: "body".into(), filter_fields: vec!["channel".into(), "user.id".into()] }
    }

    #[test]
    fn a_search_with_filters_parses_into_terms_and_values() {
        let q = TextQuery::parse(
            &index(),
            &json!([
                {"type": "Search", "fieldPath": "body", "value": "Hello, hello WORLD wor"},
                {"type": "Eq", "fieldPath": "channel", "value": "#general"},
                {"type": "Eq", "fieldPath": "user.id", "value": {"$integer": "BwAAAAAAAAA="}},
                {"type": "Eq", "fieldPath": "channel", "value": {"$undefined": null}},
            ]),
        )
        .unwrap();
        assert_eq!(q.terms, ["hello", "world", "wor"]);
        assert_eq!(q.filters[0], ("channel".to_owned(), Some(Value::String("#general".into()))));
        assert_eq!(q.filters[1], ("user.id".to_owned(), Some(Value::Int64(7))));
        assert_eq!(q.filters[2], ("channel".to_owned(), None), "eq(field, undefined): the field is absent");
    }

    #[test]
    fn queries_beyond_the_index_or_the_limits_are_refused_with_codes() {
        let search = |text: &str| json!({"type": "Search", "fieldPath": "body", "value": text});
        let code = |filters: Json| TextQuery::parse(&index(), &filters).unwrap_err().code();
        assert_eq!(code(json!([{"type": "Search", "fieldPath": "title", "value": "x"}])), "InvalidSearchQuery");
        assert_eq!(code(json!([search("x"), {"type": "Eq", "fieldPath": "other", "value": 1}])), "InvalidSearchQuery");
        assert_eq!(code(json!([{"type": "Eq", "fieldPath": "channel", "value": "a"}])), "InvalidSearchQuery");
        assert_eq!(code(json!([search("x"), search("y")])), "InvalidSearchQuery");
        let words: Vec<String> = (0..17).map(|i| format!("w{i}")).collect();
        assert_eq!(code(json!([search(&words.join(" "))])), "SearchQueryTooManyTerms");
        let mut many = vec![search("x")];
        many.extend((0..9).map(|i| json!({"type": "Eq", "fieldPath": "channel", "value": format!("c{i}")})));
        assert_eq!(code(Json::Array(many)), "SearchQueryTooManyFilters");
    }
}
