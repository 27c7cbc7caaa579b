//! The value model and its total order.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

/// An object: field names to values, kept sorted by name (byte order).
pub type Object = BTreeMap<String, Value>;

/// A Convex value.
///
/// Equality and ordering follow the Convex total order
/// (null < int64 < float64 < false < true < string < bytes < array < object);
/// floats compare by IEEE 754 `totalOrder`, so `NaN == NaN` and `-0.0 < 0.0`.
/// "undefined" (a missing field) is `Option::None` where it can occur and sorts first.
#[derive(Clone, Debug)]
pub enum Value {
    /// `null`.
    Null,
    /// A 64-bit signed integer (a JS `bigint`).
    Int64(i64),
    /// A 64-bit float (a JS `number`).
    Float64(f64),
    /// `true` or `false`.
    Boolean(bool),
    /// A Unicode string.
    String(String),
    /// A byte string (a JS `ArrayBuffer`).
    Bytes(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
    /// An object.
    Object(Object),
}

/// The kind of a value, in total-order rank.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ValueKind {
    /// `null`.
    Null,
    /// int64.
    Int64,
    /// float64.
    Float64,
    /// boolean.
    Boolean,
    /// string.
    String,
    /// bytes.
    Bytes,
    /// array.
    Array,
    /// object.
    Object,
}

impl ValueKind {
    /// The Convex name of this kind, as used in messages and validators.
    pub fn name(self) -> &'static str {
        match self {
            ValueKind::Null => "null",
            ValueKind::Int64 => "int64",
            ValueKind::Float64 => "float64",
            ValueKind::Boolean => "boolean",
            ValueKind::String => "string",
            ValueKind::Bytes => "bytes",
            ValueKind::Array => "array",
            ValueKind::Object => "object",
        }
    }
}

impl Value {
    /// The kind of this value.
    pub fn kind(&self) -> ValueKind {
        match self {
            Value::Null => ValueKind::Null,
            Value::Int64(_) => ValueKind::Int64,
            Value::Float64(_) => ValueKind::Float64,
            Value::Boolean(_) => ValueKind::Boolean,
            Value::String(_) => ValueKind::String,
            Value::Bytes(_) => ValueKind::Bytes,
            Value::Array(_) => ValueKind::Array,
            Value::Object(_) => ValueKind::Object,
        }
    }

    /// The object map, if this is an object.
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// An estimate of the heap memory this value holds (not counting the `Value` itself),
    /// for memory budgets: allocations, their allocator overhead, and container nodes.
    pub fn heap_size(&self) -> usize {
        match self {
            Value::Null | Value::Boolean(_) | Value::Int64(_) | Value::Float64(_) => 0,
            Value::String(s) => allocation(s.capacity()),
            Value::Bytes(b) => allocation(b.capacity()),
            Value::Array(a) => {
                allocation(a.capacity() * std::mem::size_of::<Value>()) + a.iter().map(Value::heap_size).sum::<usize>()
            }
            Value::Object(o) => object_heap_size(o),
        }
    }

    /// The accounted size of this value in bytes, used for document and transaction limits.
    ///
    /// It approximates the encoded size: scalars 1 or 9 bytes, strings and bytes their length
    /// plus 2, containers 2 plus their contents (object fields add their name plus 1).
    pub fn size(&self) -> usize {
        match self {
            Value::Null | Value::Boolean(_) => 1,
            Value::Int64(_) | Value::Float64(_) => 9,
            Value::String(s) => s.len() + 2,
            Value::Bytes(b) => b.len() + 2,
            Value::Array(a) => 2 + a.iter().map(Value::size).sum::<usize>(),
            Value::Object(o) => 2 + object_fields_size(o),
        }
    }
}

/// Bytes an allocation of `n` bytes really takes: malloc rounds up and adds a header.
fn allocation(n: usize) -> usize {
    if n == 0 { 0 } else { n.next_multiple_of(16) + 16 }
}

/// An estimate of the heap memory of an object's fields (see [`Value::heap_size`]).
pub fn object_heap_size(o: &Object) -> usize {
    // A BTreeMap node always has room for 11 entries; nodes average about 8 once maps split.
    const NODE: usize = 11 * (std::mem::size_of::<String>() + std::mem::size_of::<Value>()) + 16;
    let nodes = o.len().div_ceil(8);
    allocation(NODE) * nodes + o.iter().map(|(k, v)| allocation(k.capacity()) + v.heap_size()).sum::<usize>()
}

/// Size of an object's fields, without the container overhead.
pub(crate) fn object_fields_size(o: &Object) -> usize {
    o.iter().map(|(k, v)| k.len() + 1 + v.size()).sum()
}

/// Compares two possibly-missing values: a missing value (undefined) sorts first.
pub fn cmp_optional(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => a.cmp(b),
    }
}

impl Ord for Value {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Int64(a), Value::Int64(b)) => a.cmp(b),
            (Value::Float64(a), Value::Float64(b)) => a.total_cmp(b),
            (Value::Boolean(a), Value::Boolean(b)) => a.cmp(b),
            (Value::String(a), Value::String(b)) => a.cmp(b),
            (Value::Bytes(a), Value::Bytes(b)) => a.cmp(b),
            (Value::Array(a), Value::Array(b)) => a.cmp(b),
            (Value::Object(a), Value::Object(b)) => a.iter().cmp(b.iter()),
            (a, b) => a.kind().cmp(&b.kind()),
        }
    }
}

impl PartialOrd for Value {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind().hash(state);
        match self {
            Value::Null => {}
            Value::Int64(i) => i.hash(state),
            Value::Float64(f) => f.to_bits().hash(state),
            Value::Boolean(b) => b.hash(state),
            Value::String(s) => s.hash(state),
            Value::Bytes(b) => b.hash(state),
            Value::Array(a) => a.hash(state),
            Value::Object(o) => o.hash(state),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", crate::json::to_convex_json(self))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int64(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Float64(v)
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

impl From<Vec<u8>> for Value {
    fn from(v: Vec<u8>) -> Self {
        Value::Bytes(v)
    }
}

impl From<Vec<Value>> for Value {
    fn from(v: Vec<Value>) -> Self {
        Value::Array(v)
    }
}

impl From<Object> for Value {
    fn from(v: Object) -> Self {
        Value::Object(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_convex_total_order() {
        let ordered = [
            Value::Null,
            Value::Int64(i64::MAX),
            Value::Float64(f64::NEG_INFINITY),
            Value::Boolean(false),
            Value::Boolean(true),
            Value::String(String::new()),
            Value::Bytes(vec![]),
            Value::Array(vec![]),
            Value::Object(Object::new()),
        ];
        for w in ordered.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        assert_eq!(cmp_optional(None, Some(&Value::Null)), Ordering::Less);
    }

    #[test]
    fn floats_use_total_order() {
        assert!(Value::Float64(-0.0) < Value::Float64(0.0));
        assert_eq!(Value::Float64(f64::NAN), Value::Float64(f64::NAN));
        assert!(Value::Float64(f64::INFINITY) < Value::Float64(f64::NAN));
    }

    #[test]
    fn objects_compare_field_by_field_then_by_length() {
        let a: Object = [("a".to_string(), Value::Int64(1))].into();
        let ab: Object = [("a".to_string(), Value::Int64(1)), ("b".to_string(), Value::Null)].into();
        let b: Object = [("b".to_string(), Value::Null)].into();
        assert!(Value::Object(a.clone()) < Value::Object(ab));
        assert!(Value::Object(a) < Value::Object(b));
    }
}
