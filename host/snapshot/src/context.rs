//! Export contexts: how one document's clean JSON decodes where its table's shape leaves it
//! open (a `"5"` that is an int64 where the table also has strings there). A table's
//! `generated_schema.jsonl` holds, after the shape, one `{"<_id>": <context>}` line per
//! document that needs one.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln_value::{Object, Value};
use serde_json::{Value as Json, json};

use crate::error::SnapshotError;
use crate::shape::Shape;

/// How a value's clean JSON decodes.
#[derive(Clone, Debug, PartialEq)]
pub enum Context {
    /// As the shape says; where the shape leaves a string open, a string.
    Infer,
    /// A string that is an int64.
    Int64,
    /// A string that is ±Infinity.
    Float64Inf,
    /// `"NaN"`, this NaN (its little-endian bytes).
    NaN([u8; 8]),
    /// A string that is base64 bytes.
    Bytes,
    /// An array's elements.
    Array(Vec<Context>),
    /// An object's fields (missing ones: `Infer`).
    Object(BTreeMap<String, Context>),
}

impl Context {
    /// The JSON Convex writes for it.
    pub fn to_json(&self) -> Json {
        match self {
            Context::Infer => json!("infer"),
            Context::Int64 => json!("int64"),
            Context::Float64Inf => json!("float64inf"),
            Context::Bytes => json!("bytes"),
            Context::NaN(bytes) => json!({ "$float64NaN": STANDARD.encode(bytes) }),
            Context::Array(items) => Json::Array(items.iter().map(Context::to_json).collect()),
            Context::Object(fields) => Json::Object(fields.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
        }
    }

    /// Reads Convex's JSON of a context.
    pub fn from_json(json: &Json) -> Result<Context, SnapshotError> {
        let bad = || SnapshotError::Shape(format!("invalid export context {json}"));
        Ok(match json {
            Json::String(s) => match s.as_str() {
                "infer" => Context::Infer,
                "int64" => Context::Int64,
                "float64inf" => Context::Float64Inf,
                "bytes" => Context::Bytes,
                "set" | "map" => {
                    return Err(SnapshotError::Shape("sets and maps are no longer Convex values".into()));
                }
                _ => return Err(bad()),
            },
            Json::Array(items) => Context::Array(items.iter().map(Context::from_json).collect::<Result<_, _>>()?),
            Json::Object(fields) => match fields.get("$float64NaN") {
                Some(Json::String(b64)) => {
                    let bytes = STANDARD.decode(b64).map_err(|_| bad())?;
                    Context::NaN(bytes.try_into().map_err(|_| bad())?)
                }
                _ => Context::Object(
                    fields
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), Context::from_json(v)?)))
                        .collect::<Result<_, SnapshotError>>()?,
                ),
            },
            _ => return Err(bad()),
        })
    }

    /// The context a value needs under the `unknown` shape (which leaves every string open),
    /// the shape Kiln writes.
    pub fn of(value: &Value) -> Context {
        match value {
            Value::Int64(_) => Context::Int64,
            Value::Float64(f) if f.is_nan() => Context::NaN(f.to_le_bytes()),
            Value::Float64(f) if f.is_infinite() => Context::Float64Inf,
            Value::Bytes(_) => Context::Bytes,
            Value::Array(items) => {
                let inner: Vec<Context> = items.iter().map(Context::of).collect();
                if inner.iter().all(|c| *c == Context::Infer) { Context::Infer } else { Context::Array(inner) }
            }
            Value::Object(fields) => Context::of_object(fields),
            Value::Null | Value::Boolean(_) | Value::Float64(_) | Value::String(_) => Context::Infer,
        }
    }

    /// [`Context::of`] an object.
    pub fn of_object(fields: &Object) -> Context {
        let inner: BTreeMap<String, Context> =
            fields.iter().map(|(k, v)| (k.clone(), Context::of(v))).filter(|(_, c)| *c != Context::Infer).collect();
        if inner.is_empty() { Context::Infer } else { Context::Object(inner) }
    }

    /// Decodes `json` (clean JSON) whose value has one of `shapes`.
    pub fn apply(&self, json: &Json, shapes: &[&Shape]) -> Result<Value, SnapshotError> {
        let mismatch =
            |what: &str| SnapshotError::Shape(format!("export context {} does not fit {what}", self.to_json()));
        match json {
            Json::Null => Ok(Value::Null),
            Json::Bool(b) => Ok(Value::Boolean(*b)),
            Json::Number(n) => n.as_f64().map(Value::Float64).ok_or_else(|| mismatch("a number")),
            Json::String(s) => {
                let context = match self {
                    Context::Infer => match string_contexts(shapes).as_slice() {
                        [only] => only.clone(),
                        _ => Context::Infer,
                    },
                    other => other.clone(),
                };
                match context {
                    Context::Infer => Ok(Value::String(s.clone())),
                    Context::Int64 => {
                        s.parse::<i64>().map(Value::Int64).map_err(|_| mismatch(&format!("the string {s:?}")))
                    }
                    Context::Float64Inf => match s.as_str() {
                        "Infinity" => Ok(Value::Float64(f64::INFINITY)),
                        "-Infinity" => Ok(Value::Float64(f64::NEG_INFINITY)),
                        _ => Err(mismatch(&format!("the string {s:?}"))),
                    },
                    Context::NaN(bytes) if s == "NaN" && f64::from_le_bytes(bytes).is_nan() => {
                        Ok(Value::Float64(f64::from_le_bytes(bytes)))
                    }
                    Context::Bytes => {
                        STANDARD.decode(s).map(Value::Bytes).map_err(|_| mismatch(&format!("the string {s:?}")))
                    }
                    _ => Err(mismatch("a string")),
                }
            }
            Json::Array(items) => {
                let element: Vec<&Shape> = shapes.iter().flat_map(|s| s.array_element()).collect();
                let out = match self {
                    Context::Infer => items.iter().map(|j| Context::Infer.apply(j, &element)).collect(),
                    Context::Array(contexts) if contexts.len() == items.len() => {
                        items.iter().zip(contexts).map(|(j, c)| c.apply(j, &element)).collect()
                    }
                    _ => Err(mismatch("an array")),
                };
                Ok(Value::Array(out?))
            }
            Json::Object(fields) => {
                let hints = match self {
                    Context::Infer => None,
                    Context::Object(hints) => Some(hints),
                    _ => return Err(mismatch("an object")),
                };
                let mut out = Object::new();
                for (key, j) in fields {
                    let field: Vec<&Shape> = shapes.iter().flat_map(|s| s.object_field(key)).collect();
                    let hint = hints.and_then(|h| h.get(key)).unwrap_or(&Context::Infer);
                    out.insert(key.clone(), hint.apply(j, &field)?);
                }
                Ok(Value::Object(out))
            }
        }
    }
}

/// What a string may stand for under these shapes, each once: exactly one means the shape
/// decides; more leave it to the document's context.
fn string_contexts(shapes: &[&Shape]) -> Vec<Context> {
    let mut out: Vec<Context> = Vec::new();
    let mut add = |c: Context| {
        if !out.contains(&c) {
            out.push(c);
        }
    };
    for shape in shapes.iter().flat_map(|s| s.options()) {
        match shape {
            Shape::Int64 => add(Context::Int64),
            Shape::NegativeInf | Shape::PositiveInf => add(Context::Float64Inf),
            // Several NaNs and both infinities: never decided by the shape alone.
            Shape::NaN | Shape::Float64 => {
                add(Context::NaN(f64::NAN.to_le_bytes()));
                add(Context::Float64Inf);
            }
            Shape::StringLiteral(_) | Shape::Id(_) | Shape::FieldName | Shape::String => add(Context::Infer),
            Shape::Bytes => add(Context::Bytes),
            Shape::Unknown => {
                for c in [Context::Infer, Context::Float64Inf, Context::Int64, Context::Bytes] {
                    add(c);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use kiln_value::to_clean_json;
    use proptest::prelude::*;

    use super::*;

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Boolean),
            any::<i64>().prop_map(Value::Int64),
            any::<f64>().prop_map(Value::Float64),
            Just(Value::Float64(f64::INFINITY)),
            Just(Value::Float64(f64::from_bits(0x7ff8_0000_0000_0001))),
            "[a-z0-9 ]{0,8}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Float64(x), Value::Float64(y)) => x.to_bits() == y.to_bits(),
            (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().zip(y.iter()).all(|((ka, a), (kb, b))| ka == kb && same(a, b))
            }
            _ => a == b,
        }
    }

    proptest! {
        /// Any value survives clean JSON with its context under the `unknown` shape, and the
        /// context survives its JSON.
        #[test]
        fn values_round_trip_under_the_unknown_shape(v in value()) {
            let context = Context::of(&v);
            let context = Context::from_json(&context.to_json()).unwrap();
            let back = context.apply(&to_clean_json(&v), &[&Shape::Unknown]).unwrap();
            prop_assert!(same(&v, &back), "{v:?} came back as {back:?}");
        }
    }

    #[test]
    fn the_shape_decides_where_it_can() {
        let shape: Shape = "{\"n\": int64, \"b\": bytes, \"s\": string, \"either\": int64 | string}".parse().unwrap();
        let json = json!({"n": "5", "b": "AQI=", "s": "5", "either": "7"});
        let v = Context::Infer.apply(&json, &[&shape]).unwrap();
        let Value::Object(o) = v else { panic!() };
        assert_eq!(o.get("n"), Some(&Value::Int64(5)));
        assert_eq!(o.get("b"), Some(&Value::Bytes(vec![1, 2])));
        assert_eq!(o.get("s"), Some(&Value::String("5".into())));
        // Open: a string unless the document's context says otherwise.
        assert_eq!(o.get("either"), Some(&Value::String("7".into())));
        let context = Context::from_json(&json!({"either": "int64"})).unwrap();
        let Value::Object(o) = context.apply(&json, &[&shape]).unwrap() else { panic!() };
        assert_eq!(o.get("either"), Some(&Value::Int64(7)));
        // A context that does not fit is an error.
        assert!(Context::Int64.apply(&json!("x"), &[&Shape::Unknown]).is_err());
        assert!(Context::Bytes.apply(&json!([1]), &[&Shape::Unknown]).is_err());
    }
}
