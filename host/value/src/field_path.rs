//! Field paths: `a.b.c` addresses a field inside nested objects.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ValueError};
use crate::value::{Object, Value};

/// A dotted path into nested objects, e.g. `author.name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// Parses `a.b.c`; empty paths and empty segments are errors.
    pub fn parse(s: &str) -> Result<FieldPath> {
        if s.is_empty() || s.split('.').any(str::is_empty) {
            return Err(ValueError::InvalidFieldPath(s.to_owned()));
        }
        Ok(FieldPath(s.split('.').map(str::to_owned).collect()))
    }

    /// The path's segments.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The value at this path in `doc`, or `None` (undefined) if any step is missing
    /// or is not an object.
    pub fn get<'a>(&self, doc: &'a Object) -> Option<&'a Value> {
        let (first, rest) = self.0.split_first()?;
        let mut v = doc.get(first)?;
        for seg in rest {
            v = v.as_object()?.get(seg)?;
        }
        Some(v)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_nested() {
        let inner: Object = [("b".to_string(), Value::Int64(1))].into();
        let doc: Object = [("a".to_string(), Value::Object(inner)), ("c".to_string(), Value::Null)].into();
        assert_eq!(FieldPath::parse("a.b").unwrap().get(&doc), Some(&Value::Int64(1)));
        assert_eq!(FieldPath::parse("c.x").unwrap().get(&doc), None);
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("").is_err());
    }
}
