//! Query journals (Convex's `QueryJournal`): what a query's first run decided that its re-runs
//! must repeat. Today that is where each of its paginated pages ended, so a live page keeps its
//! bounds while documents are inserted and deleted around them: it grows or shrinks instead
//! of pushing documents into (or pulling them out of) the next page, which would make a
//! client skip or repeat them.
//!
//! The journal is the JSON text `{"endCursors":[…]}` (one signed cursor per `paginate` call, in
//! the order the query makes them). Clients keep it opaque and send it back when they
//! subscribe again after a reconnect.

use serde::{Deserialize, Serialize};

use crate::error::CallError;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Text {
    end_cursors: Vec<String>,
}

/// A query's journal while it runs: the end cursors it was given, and the ones it records.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    /// Whether this run keeps a journal (top-level queries, and the queries they call).
    active: bool,
    given: Vec<String>,
    recorded: Vec<String>,
}

impl Journal {
    /// The journal of a top-level query, continuing `text` (a journal from an earlier run).
    pub(crate) fn for_query(text: Option<&str>) -> Result<Journal, CallError> {
        let given = match text {
            None | Some("null") => Vec::new(),
            Some(text) => {
                let parsed: Text = serde_json::from_str(text).map_err(|_| {
                    CallError::new("InvalidCursor", "InvalidCursor: the query journal is not one this server wrote")
                })?;
                parsed.end_cursors
            }
        };
        Ok(Journal { active: true, given, recorded: Vec::new() })
    }

    /// The end cursor for the next page this run reads: the one the earlier run recorded for
    /// the same page, unless the query names its own.
    pub(crate) fn end_cursor(&self, explicit: Option<String>) -> Option<String> {
        match explicit {
            Some(c) => Some(c),
            None if self.active => self.given.get(self.recorded.len()).cloned(),
            None => None,
        }
    }

    /// Records where the next page ended.
    pub(crate) fn record(&mut self, continue_cursor: &str) {
        if self.active {
            self.recorded.push(continue_cursor.to_owned());
        }
    }

    /// The journal to hand to the client: none when the run read no pages.
    pub(crate) fn finish(self) -> Option<String> {
        if !self.active || self.recorded.is_empty() {
            return None;
        }
        serde_json::to_string(&Text { end_cursors: self.recorded }).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_ends_each_page_where_the_first_run_did() {
        let mut first = Journal::for_query(None).unwrap();
        assert_eq!(first.end_cursor(None), None);
        first.record("a");
        assert_eq!(first.end_cursor(None), None);
        first.record("b");
        let text = first.finish().unwrap();
        let mut rerun = Journal::for_query(Some(&text)).unwrap();
        assert_eq!(rerun.end_cursor(None).as_deref(), Some("a"));
        assert_eq!(rerun.end_cursor(Some("x".into())).as_deref(), Some("x"));
        rerun.record("a");
        assert_eq!(rerun.end_cursor(None).as_deref(), Some("b"));
        rerun.record("b");
        assert_eq!(rerun.end_cursor(None), None);
        assert_eq!(rerun.finish(), Some(text));
    }

    #[test]
    fn a_foreign_journal_is_an_invalid_cursor_and_no_pages_no_journal() {
        assert_eq!(Journal::for_query(Some("{\"end_cursor\":1}")).unwrap_err().code, "InvalidCursor");
        assert_eq!(Journal::for_query(Some("null")).unwrap().finish(), None);
        let mut inactive = Journal::default();
        inactive.record("a");
        assert_eq!(inactive.end_cursor(None), None);
        assert_eq!(inactive.finish(), None);
    }
}
