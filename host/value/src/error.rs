//! The value layer's error type, with stable codes.

use thiserror::Error;

/// Everything that can go wrong when decoding, validating or identifying a value.
///
/// Each variant has a stable [`ValueError::code`] that clients and tests match on;
/// messages are for humans and may change.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ValueError {
    /// The input is not well-formed JSON, MessagePack or index-key bytes.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// An object with a single `$`-prefixed key that is not a known encoding.
    #[error("unknown special key `{0}`: only $integer, $float and $bytes are supported")]
    UnknownSpecialKey(String),
    /// A `$bytes`, `$integer` or `$float` payload that is not valid base64 of the right length.
    #[error("invalid base64 in {key}: {detail}")]
    InvalidBase64 {
        /// The special key (`$bytes`, `$integer`, `$float`).
        key: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A `$float` carrying a finite, non-negative-zero number (which must be a plain JSON number).
    #[error("float {0} must be encoded as a JSON number, not $float")]
    FloatNotSpecial(f64),
    /// A `$undefined` outside a patch.
    #[error("`$undefined` is only allowed as a field value in a patch")]
    UndefinedNotAllowed,
    /// A field name that breaks the rules (leading `$`, non-printable ASCII, too long).
    #[error("invalid field name {name:?}: {reason}")]
    InvalidFieldName {
        /// The offending name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A top-level document field that is not an identifier.
    #[error("invalid top-level field name {name:?}: {reason}")]
    InvalidTopLevelField {
        /// The offending name.
        name: String,
        /// Which rule it broke.
        reason: &'static str,
    },
    /// A user-written top-level field with the reserved `_` prefix.
    #[error("field {0:?} starts with `_`, which is reserved for system fields")]
    ReservedField(String),
    /// A document over the size limit.
    #[error("document is {size} bytes, over the limit of {limit} bytes")]
    DocumentTooLarge {
        /// The document's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A value over the size limit (arguments, return values).
    #[error("value is {size} bytes, over the limit of {limit} bytes")]
    ValueTooLarge {
        /// The value's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Nesting deeper than allowed.
    #[error("value nests {depth} levels deep, over the limit of {limit}")]
    NestingTooDeep {
        /// The depth reached.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// An object with too many fields.
    #[error("object has {count} fields, over the limit of {limit}")]
    TooManyFields {
        /// The number of fields.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An array with too many elements.
    #[error("array has {len} elements, over the limit of {limit}")]
    ArrayTooLong {
        /// The number of elements.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A document id string that does not decode (bad characters, length or checksum).
    #[error("invalid document id {id:?}: {reason}")]
    InvalidId {
        /// The string given.
        id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A well-formed id that belongs to another table than the one expected.
    #[error("id {id:?} belongs to another table than {expected:?}")]
    IdWrongTable {
        /// The string given.
        id: String,
        /// The table that was expected.
        expected: String,
    },
    /// A field path (`a.b.c`) that is empty or has an empty segment.
    #[error("invalid field path {0:?}")]
    InvalidFieldPath(String),
    /// A validator (ValidatorJSON) that could not be parsed.
    #[error("invalid validator: {0}")]
    InvalidValidator(String),
    /// A value that does not match its validator; `path` names the field.
    #[error("{message} at path `{path}`")]
    ValidationFailed {
        /// Where in the value (`.author.name`, `[3]`), empty for the root.
        path: String,
        /// What did not match.
        message: String,
    },
}

impl ValueError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            ValueError::Malformed(_) => "MalformedValue",
            ValueError::UnknownSpecialKey(_) => "UnknownSpecialKey",
            ValueError::InvalidBase64 { .. } => "InvalidBase64",
            ValueError::FloatNotSpecial(_) => "FloatNotSpecial",
            ValueError::UndefinedNotAllowed => "UndefinedNotAllowed",
            ValueError::InvalidFieldName { .. } => "InvalidFieldName",
            ValueError::InvalidTopLevelField { .. } => "InvalidTopLevelField",
            ValueError::ReservedField(_) => "ReservedField",
            ValueError::DocumentTooLarge { .. } => "DocumentTooLarge",
            ValueError::ValueTooLarge { .. } => "ValueTooLarge",
            ValueError::NestingTooDeep { .. } => "NestingTooDeep",
            ValueError::TooManyFields { .. } => "TooManyFields",
            ValueError::ArrayTooLong { .. } => "ArrayTooLong",
            ValueError::InvalidId { .. } => "InvalidId",
            ValueError::IdWrongTable { .. } => "IdWrongTable",
            ValueError::InvalidFieldPath(_) => "InvalidFieldPath",
            ValueError::InvalidValidator(_) => "InvalidValidator",
            ValueError::ValidationFailed { .. } => "ValidationFailed",
        }
    }
}

/// Result type of the value layer.
pub type Result<T, E = ValueError> = std::result::Result<T, E>;
