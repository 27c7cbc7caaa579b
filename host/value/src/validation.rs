//! Structural validation: field names, identifiers, sizes, counts and depth.

use crate::error::{Result, ValueError};
use crate::limits::*;
use crate::value::{Object, Value, object_fields_size};

/// The system field holding a document's id.
pub const ID_FIELD: &str = "_id";
/// The system field holding a document's creation time (float64 ms since the epoch).
pub const CREATION_TIME_FIELD: &str = "_creationTime";

/// Checks a field name at any depth: non-empty, printable ASCII (32–126), no leading `$`,
/// at most [`MAX_FIELD_NAME_LEN`] characters.
pub fn check_field_name(name: &str) -> Result<()> {
    let bad = |reason| Err(ValueError::InvalidFieldName { name: truncate(name), reason });
    if name.is_empty() {
        return bad("field names must not be empty");
    }
    if name.len() > MAX_FIELD_NAME_LEN {
        return bad("field names are at most 1024 characters");
    }
    if name.starts_with('$') {
        return bad("field names must not start with `$`");
    }
    if !name.bytes().all(|b| (32..127).contains(&b)) {
        return bad("field names may only contain printable ASCII characters");
    }
    Ok(())
}

/// Checks an identifier (a top-level field or a table name): `[A-Za-z_][A-Za-z0-9_]*`,
/// at most [`MAX_IDENTIFIER_LEN`] characters.
pub fn check_identifier(name: &str) -> Result<(), &'static str> {
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err("identifiers must not be empty"),
        Some(b) if !(b.is_ascii_alphabetic() || b == b'_') => {
            return Err("identifiers must start with a letter or `_`");
        }
        _ => {}
    }
    if !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err("identifiers may only contain letters, digits and `_`");
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err("identifiers are at most 64 characters");
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

/// Checks any value (argument, return value, nested field) against the structural limits.
pub fn validate_value(v: &Value) -> Result<()> {
    walk(v, 0, MAX_VALUE_DEPTH)?;
    let size = v.size();
    if size > MAX_VALUE_SIZE {
        return Err(ValueError::ValueTooLarge { size, limit: MAX_VALUE_SIZE });
    }
    Ok(())
}

/// Checks the fields a user supplies for a document (insert or replace): top-level names are
/// identifiers without the reserved `_` prefix, and the whole value obeys the document limits.
pub fn validate_user_fields(fields: &Object) -> Result<()> {
    for name in fields.keys() {
        check_top_level_name(name)?;
        if name.starts_with('_') {
            return Err(ValueError::ReservedField(name.clone()));
        }
    }
    validate_document(fields)
}

/// Checks a top-level field name is an identifier.
pub fn check_top_level_name(name: &str) -> Result<()> {
    check_identifier(name).map_err(|reason| ValueError::InvalidTopLevelField { name: truncate(name), reason })
}

/// Checks a whole document (system fields included) against the document limits.
pub fn validate_document(doc: &Object) -> Result<()> {
    check_object(doc, 1, MAX_DOCUMENT_DEPTH)?;
    let size = 2 + object_fields_size(doc);
    if size > MAX_DOCUMENT_SIZE {
        return Err(ValueError::DocumentTooLarge { size, limit: MAX_DOCUMENT_SIZE });
    }
    Ok(())
}

fn walk(v: &Value, depth: usize, limit: usize) -> Result<()> {
    match v {
        Value::Array(a) => {
            if depth + 1 > limit {
                return Err(ValueError::NestingTooDeep { depth: depth + 1, limit });
            }
            if a.len() > MAX_ARRAY_LEN {
                return Err(ValueError::ArrayTooLong { len: a.len(), limit: MAX_ARRAY_LEN });
            }
            a.iter().try_for_each(|e| walk(e, depth + 1, limit))
        }
        Value::Object(o) => check_object(o, depth + 1, limit),
        _ => Ok(()),
    }
}

fn check_object(o: &Object, depth: usize, limit: usize) -> Result<()> {
    if depth > limit {
        return Err(ValueError::NestingTooDeep { depth, limit });
    }
    if o.len() > MAX_OBJECT_FIELDS {
        return Err(ValueError::TooManyFields { count: o.len(), limit: MAX_OBJECT_FIELDS });
    }
    for (k, v) in o {
        check_field_name(k)?;
        walk(v, depth, limit)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> Value {
        (0..levels).fold(Value::Null, |inner, _| Value::Array(vec![inner]))
    }

    #[test]
    fn field_names() {
        assert!(check_field_name("a b~").is_ok());
        for bad in ["", "$a", "é", "a\n"] {
            assert_eq!(check_field_name(bad).unwrap_err().code(), "InvalidFieldName", "{bad:?}");
        }
        assert!(check_field_name(&"x".repeat(1025)).is_err());
    }

    #[test]
    fn identifiers() {
        assert!(check_identifier("_abc9").is_ok());
        assert!(check_identifier("9abc").is_err());
        assert!(check_identifier("a-b").is_err());
        assert!(check_identifier(&"a".repeat(65)).is_err());
    }

    #[test]
    fn user_fields_reject_reserved_and_non_identifiers() {
        let o: Object = [("_secret".to_string(), Value::Null)].into();
        assert_eq!(validate_user_fields(&o).unwrap_err().code(), "ReservedField");
        let o: Object = [("a.b".to_string(), Value::Null)].into();
        assert_eq!(validate_user_fields(&o).unwrap_err().code(), "InvalidTopLevelField");
    }

    #[test]
    fn depth_limits() {
        // The document object is level 1, so 15 nested arrays reach level 16.
        let ok: Object = [("a".to_string(), nested(15))].into();
        assert!(validate_document(&ok).is_ok());
        let deep: Object = [("a".to_string(), nested(16))].into();
        assert_eq!(validate_document(&deep).unwrap_err().code(), "NestingTooDeep");
        assert!(validate_value(&nested(64)).is_ok());
        assert_eq!(validate_value(&nested(65)).unwrap_err().code(), "NestingTooDeep");
    }

    #[test]
    fn size_and_count_limits() {
        let at_limit = MAX_DOCUMENT_SIZE - 2 - ("a".len() + 1) - 2;
        let ok: Object = [("a".to_string(), Value::String("x".repeat(at_limit)))].into();
        assert!(validate_document(&ok).is_ok());
        let big: Object = [("a".to_string(), Value::String("x".repeat(at_limit + 1)))].into();
        assert_eq!(validate_document(&big).unwrap_err().code(), "DocumentTooLarge");
        let wide: Object = (0..1025).map(|i| (format!("f{i}"), Value::Null)).collect();
        assert_eq!(validate_document(&wide).unwrap_err().code(), "TooManyFields");
        let long = Value::Array(vec![Value::Null; 8193]);
        assert_eq!(validate_value(&long).unwrap_err().code(), "ArrayTooLong");
    }
}
