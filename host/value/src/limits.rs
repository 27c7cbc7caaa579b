//! Limits of the value model. These are part of the Convex contract, not tunables.

/// Largest document, in accounted bytes ([`crate::Value::size`]).
pub const MAX_DOCUMENT_SIZE: usize = 1 << 20;
/// Largest argument or return value, in accounted bytes.
pub const MAX_VALUE_SIZE: usize = 16 << 20;
/// Most fields in one object.
pub const MAX_OBJECT_FIELDS: usize = 1024;
/// Most elements in one array.
pub const MAX_ARRAY_LEN: usize = 8192;
/// Deepest nesting of a document, counting the document object itself as level 1.
pub const MAX_DOCUMENT_DEPTH: usize = 16;
/// Deepest nesting of any value (arguments, return values), guarding recursion.
pub const MAX_VALUE_DEPTH: usize = 64;
/// Longest field name.
pub const MAX_FIELD_NAME_LEN: usize = 1024;
/// Longest top-level field name or table name (an identifier).
pub const MAX_IDENTIFIER_LEN: usize = 64;
