//! Shapes: the type Convex infers for a table's documents, written as the first line of a
//! table's `generated_schema.jsonl` (`{"n": int64, "tags": array<string>}`, `unknown`, …).
//! An import needs it to tell what a string in the clean JSON stands for (an int64 is written
//! `"5"`, bytes as base64).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::error::SnapshotError;

/// A shape of values.
#[derive(Clone, Debug, PartialEq)]
pub enum Shape {
    /// No value.
    Never,
    /// `null`.
    Null,
    /// An int64.
    Int64,
    /// Any float64.
    Float64,
    /// -∞.
    NegativeInf,
    /// +∞.
    PositiveInf,
    /// -0.
    NegativeZero,
    /// A NaN.
    NaN,
    /// A finite float64 other than -0.
    NormalFloat64,
    /// A boolean.
    Boolean,
    /// One string.
    StringLiteral(String),
    /// An id of the table with this number.
    Id(u32),
    /// A string that is a field name.
    FieldName,
    /// Any string.
    String,
    /// Bytes.
    Bytes,
    /// An array of elements of this shape.
    Array(Box<Shape>),
    /// A set (no longer a Convex type).
    Set(Box<Shape>),
    /// A map (no longer a Convex type).
    Map(Box<Shape>, Box<Shape>),
    /// An object with these fields (optional or not makes no difference to decoding).
    Object(BTreeMap<String, Shape>),
    /// An object whose field names have the first shape and values the second.
    Record(Box<Shape>, Box<Shape>),
    /// One of these shapes.
    Union(Vec<Shape>),
    /// Anything.
    Unknown,
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Never => f.write_str("never"),
            Shape::Null => f.write_str("null"),
            Shape::Int64 => f.write_str("int64"),
            Shape::Float64 => f.write_str("float64"),
            Shape::NegativeInf => f.write_str("-inf"),
            Shape::PositiveInf => f.write_str("inf"),
            Shape::NegativeZero => f.write_str("-0"),
            Shape::NaN => f.write_str("NaN"),
            Shape::NormalFloat64 => f.write_str("normalfloat64"),
            Shape::Boolean => f.write_str("boolean"),
            Shape::StringLiteral(s) => write!(f, "{s:?}"),
            Shape::Id(n) => write!(f, "id<{n}>"),
            Shape::FieldName => f.write_str("field_name"),
            Shape::String => f.write_str("string"),
            Shape::Bytes => f.write_str("bytes"),
            Shape::Array(e) => write!(f, "array<{e}>"),
            Shape::Set(e) => write!(f, "set<{e}>"),
            Shape::Map(k, v) => write!(f, "map<{k}, {v}>"),
            Shape::Object(fields) => {
                f.write_str("{")?;
                for (i, (name, shape)) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{name:?}: {shape}")?;
                }
                f.write_str("}")
            }
            Shape::Record(k, v) => write!(f, "record<{k}, {v}>"),
            Shape::Union(options) => {
                for (i, s) in options.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{s}")?;
                }
                Ok(())
            }
            Shape::Unknown => f.write_str("unknown"),
        }
    }
}

impl FromStr for Shape {
    type Err = SnapshotError;

    fn from_str(s: &str) -> Result<Shape, SnapshotError> {
        let (shape, rest) = union(s, 0)?;
        if rest.is_empty() { Ok(shape) } else { Err(bad(rest)) }
    }
}

fn bad(at: &str) -> SnapshotError {
    SnapshotError::Shape(format!("unexpected text at '{}'", at.chars().take(40).collect::<String>()))
}

/// Nesting deeper than this is refused (a document's own depth limit is far below).
const MAX_DEPTH: usize = 256;

fn union(s: &str, depth: usize) -> Result<(Shape, &str), SnapshotError> {
    if depth > MAX_DEPTH {
        return Err(SnapshotError::Shape("the shape nests too deeply".into()));
    }
    let mut options = Vec::new();
    let mut rest = s;
    loop {
        let (shape, after) = one(rest, depth)?;
        options.push(shape);
        match after.strip_prefix(" | ") {
            Some(more) => rest = more,
            None => {
                rest = after;
                break;
            }
        }
    }
    let shape = if options.len() == 1 { options.remove(0) } else { Shape::Union(options) };
    Ok((shape, rest))
}

/// `s` after `prefix`, or an error at `s`.
fn expect<'a>(s: &'a str, prefix: &str) -> Result<&'a str, SnapshotError> {
    s.strip_prefix(prefix).ok_or_else(|| bad(s))
}

fn one(s: &str, depth: usize) -> Result<(Shape, &str), SnapshotError> {
    // Longer names first where one begins another ("-inf" before "-0" is not needed: they differ).
    const UNITS: [(&str, Shape); 15] = [
        ("never", Shape::Never),
        ("null", Shape::Null),
        ("int64", Shape::Int64),
        ("float64", Shape::Float64),
        ("-inf", Shape::NegativeInf),
        ("inf", Shape::PositiveInf),
        ("-0", Shape::NegativeZero),
        ("NaN", Shape::NaN),
        ("normalfloat64", Shape::NormalFloat64),
        ("boolean", Shape::Boolean),
        ("field_name", Shape::FieldName),
        ("string", Shape::String),
        ("bytes", Shape::Bytes),
        ("unknown", Shape::Unknown),
        ("any", Shape::Unknown),
    ];
    for (name, shape) in UNITS {
        if let Some(rest) = s.strip_prefix(name) {
            return Ok((shape, rest));
        }
    }
    if let Some(mut rest) = s.strip_prefix('{') {
        let mut fields = BTreeMap::new();
        while !rest.starts_with('}') {
            let quoted = rest.strip_prefix('"').ok_or_else(|| bad(rest))?;
            let end = quoted.find('"').ok_or_else(|| bad(rest))?;
            let name = quoted[..end].to_owned();
            let after = &quoted[end + 1..];
            let after = after.strip_prefix('?').unwrap_or(after);
            let (shape, after) = union(expect(after, ": ")?, depth + 1)?;
            fields.insert(name, shape);
            rest = match after.strip_prefix(", ") {
                Some(next) => next,
                None if after.starts_with('}') => after,
                None => return Err(bad(after)),
            };
        }
        return Ok((Shape::Object(fields), &rest[1..]));
    }
    if let Some(rest) = s.strip_prefix("id<") {
        let end = rest.find('>').ok_or_else(|| bad(rest))?;
        let n = rest[..end].parse::<u32>().map_err(|_| bad(rest))?;
        return Ok((Shape::Id(n), &rest[end + 1..]));
    }
    for (prefix, make) in
        [("array<", Shape::Array as fn(Box<Shape>) -> Shape), ("set<", Shape::Set as fn(Box<Shape>) -> Shape)]
    {
        if let Some(rest) = s.strip_prefix(prefix) {
            let (element, rest) = union(rest, depth + 1)?;
            return Ok((make(Box::new(element)), expect(rest, ">")?));
        }
    }
    for (prefix, make) in [
        ("map<", Shape::Map as fn(Box<Shape>, Box<Shape>) -> Shape),
        ("record<", Shape::Record as fn(Box<Shape>, Box<Shape>) -> Shape),
    ] {
        if let Some(rest) = s.strip_prefix(prefix) {
            let (key, rest) = union(rest, depth + 1)?;
            let (value, rest) = union(expect(rest, ", ")?, depth + 1)?;
            return Ok((make(Box::new(key), Box::new(value)), expect(rest, ">")?));
        }
    }
    if let Some(rest) = s.strip_prefix('"') {
        // Literals Convex infers are short identifiers-like strings: no escapes.
        let end = rest.find('"').ok_or_else(|| bad(s))?;
        return Ok((Shape::StringLiteral(rest[..end].to_owned()), &rest[end + 1..]));
    }
    Err(bad(s))
}

impl Shape {
    /// The shape's options: a union's members, or itself.
    pub fn options(&self) -> &[Shape] {
        match self {
            Shape::Union(options) => options,
            other => std::slice::from_ref(other),
        }
    }

    /// The shapes an element of an array of this shape may have.
    pub fn array_element(&self) -> Vec<&Shape> {
        self.options()
            .iter()
            .flat_map(|s| match s {
                Shape::Array(e) => vec![&**e],
                Shape::Unknown => vec![s],
                _ => vec![],
            })
            .collect()
    }

    /// The shapes field `name` of an object of this shape may have.
    pub fn object_field(&self, name: &str) -> Vec<&Shape> {
        self.options()
            .iter()
            .flat_map(|s| match s {
                Shape::Object(fields) => fields.get(name).into_iter().collect(),
                Shape::Record(_, v) => vec![&**v],
                Shape::Unknown => vec![s],
                _ => vec![],
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_print_and_parse_back() {
        for text in [
            "unknown",
            "{\"_creationTime\": normalfloat64, \"_id\": id<10001>, \"n\": int64, \"tags\": array<string>}",
            "int64 | string | null",
            "record<field_name, bytes | -inf | inf | NaN | -0>",
            "{\"a\": {\"b\": \"red\" | \"blue\"}, \"c\": map<string, set<boolean>>}",
            "array<never>",
        ] {
            let shape: Shape = text.parse().unwrap();
            assert_eq!(shape.to_string(), text);
        }
        // Optional fields decode like any other.
        let shape: Shape = "{\"a\"?: int64}".parse().unwrap();
        assert_eq!(shape.object_field("a"), vec![&Shape::Int64]);
    }

    #[test]
    fn malformed_shapes_are_errors_not_panics() {
        for text in ["", "uniform", "{\"a\": int64", "array<int64", "id<x>", "{a: int64}", "int64 |", "\"open"] {
            assert!(text.parse::<Shape>().is_err(), "{text:?}");
        }
        let deep = "array<".repeat(1000) + "int64" + &">".repeat(1000);
        assert!(deep.parse::<Shape>().is_err());
    }
}
