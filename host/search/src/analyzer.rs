//! Convex's tokenizer: words split at anything that is not a letter or digit, lowercased, and
//! words of 32 bytes or more dropped. Documents and queries go through the same analyzer.

use tantivy::tokenizer::{LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer, TokenStream};

/// Terms of this many bytes or more are dropped (not truncated), as in Convex.
pub const MAX_TERM_BYTES: usize = 32;

/// The name the analyzer is registered under in every index.
pub const ANALYZER: &str = "kiln";

/// A new analyzer.
pub fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(MAX_TERM_BYTES))
        .filter(LowerCaser)
        .build()
}

/// The terms of `text`, in order (with repeats).
pub fn terms(text: &str) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out = Vec::new();
    while stream.advance() {
        out.push(stream.token().text.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_split_lowercased_and_long_ones_dropped() {
        assert_eq!(terms("Hello, World! it's 2026"), ["hello", "world", "it", "s", "2026"]);
        assert_eq!(terms("Ünïcode ÉTÉ"), ["ünïcode", "été"]);
        let long = "x".repeat(MAX_TERM_BYTES);
        assert_eq!(terms(&format!("short {long} {}", &long[1..])), ["short", &long[1..]]);
        assert!(terms(" ,.;").is_empty());
    }
}
