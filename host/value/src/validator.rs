//! Validators: Convex's `ValidatorJSON` (from `v.*` in user code and schemas), parsed and checked.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value as Json;

use crate::error::{Result, ValueError};
use crate::json::{from_convex_json, to_convex_json};
use crate::validation::{CREATION_TIME_FIELD, ID_FIELD};
use crate::value::{Object, Value};

/// A field of an object validator.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldValidator {
    /// The field's validator.
    pub validator: Validator,
    /// Whether the field may be absent.
    pub optional: bool,
}

/// A parsed `ValidatorJSON`.
#[derive(Clone, Debug, PartialEq)]
pub enum Validator {
    /// `v.null()`.
    Null,
    /// `v.number()` / `v.float64()`.
    Float64,
    /// `v.int64()` / `v.bigint()`.
    Int64,
    /// `v.boolean()`.
    Boolean,
    /// `v.string()`.
    String,
    /// `v.bytes()`.
    Bytes,
    /// `v.any()`.
    Any,
    /// `v.literal(x)`.
    Literal(Value),
    /// `v.id("table")`.
    Id(String),
    /// `v.array(element)`.
    Array(Box<Validator>),
    /// `v.object({...})`.
    Object(BTreeMap<String, FieldValidator>),
    /// `v.record(keys, values)`.
    Record(Box<Validator>, Box<Validator>),
    /// `v.union(...)`.
    Union(Vec<Validator>),
}

/// Decides whether a string is an id of a named table (the validator layer knows no tables).
pub trait IdCheck {
    /// True when `id` is a valid id of `table`.
    fn is_id_of(&self, id: &str, table: &str) -> bool;
}

/// Accepts any well-formed id for any table (used when no table registry is at hand).
pub struct AnyWellFormedId;

impl IdCheck for AnyWellFormedId {
    fn is_id_of(&self, id: &str, _table: &str) -> bool {
        crate::id::DocumentId::decode(id).is_ok()
    }
}

fn invalid(msg: impl Into<String>) -> ValueError {
    ValueError::InvalidValidator(msg.into())
}

impl Validator {
    /// Parses `ValidatorJSON`.
    pub fn from_json(j: &Json) -> Result<Validator> {
        let obj = j.as_object().ok_or_else(|| invalid("a validator must be an object"))?;
        let ty = obj.get("type").and_then(Json::as_str).ok_or_else(|| invalid("missing `type`"))?;
        let field = |name: &str| obj.get(name).ok_or_else(|| invalid(format!("{ty} validator needs `{name}`")));
        Ok(match ty {
            "null" => Validator::Null,
            "number" => Validator::Float64,
            "bigint" => Validator::Int64,
            "boolean" => Validator::Boolean,
            "string" => Validator::String,
            "bytes" => Validator::Bytes,
            "any" => Validator::Any,
            "literal" => Validator::Literal(from_convex_json(field("value")?)?),
            "id" => Validator::Id(
                field("tableName")?.as_str().ok_or_else(|| invalid("`tableName` must be a string"))?.to_owned(),
            ),
            "array" => Validator::Array(Box::new(Validator::from_json(field("value")?)?)),
            "object" => {
                let fields = field("value")?.as_object().ok_or_else(|| invalid("object `value` must be an object"))?;
                let mut out = BTreeMap::new();
                for (name, f) in fields {
                    out.insert(name.clone(), parse_field(f)?);
                }
                Validator::Object(out)
            }
            "record" => {
                let values = parse_field(field("values")?)?;
                Validator::Record(Box::new(Validator::from_json(field("keys")?)?), Box::new(values.validator))
            }
            "union" => Validator::Union(
                field("value")?
                    .as_array()
                    .ok_or_else(|| invalid("union `value` must be an array"))?
                    .iter()
                    .map(Validator::from_json)
                    .collect::<Result<_>>()?,
            ),
            other => return Err(invalid(format!("unknown validator type {other:?}"))),
        })
    }

    /// Renders this validator back as `ValidatorJSON`.
    pub fn to_json(&self) -> Json {
        use serde_json::json;
        match self {
            Validator::Null => json!({"type": "null"}),
            Validator::Float64 => json!({"type": "number"}),
            Validator::Int64 => json!({"type": "bigint"}),
            Validator::Boolean => json!({"type": "boolean"}),
            Validator::String => json!({"type": "string"}),
            Validator::Bytes => json!({"type": "bytes"}),
            Validator::Any => json!({"type": "any"}),
            Validator::Literal(v) => json!({"type": "literal", "value": to_convex_json(v)}),
            Validator::Id(t) => json!({"type": "id", "tableName": t}),
            Validator::Array(e) => json!({"type": "array", "value": e.to_json()}),
            Validator::Object(fields) => {
                let value: serde_json::Map<String, Json> = fields
                    .iter()
                    .map(|(k, f)| (k.clone(), json!({"fieldType": f.validator.to_json(), "optional": f.optional})))
                    .collect();
                json!({"type": "object", "value": value})
            }
            Validator::Record(k, v) => json!({
                "type": "record", "keys": k.to_json(), "values": {"fieldType": v.to_json(), "optional": false}
            }),
            Validator::Union(members) => {
                json!({"type": "union", "value": members.iter().map(Validator::to_json).collect::<Vec<_>>()})
            }
        }
    }

    /// Checks `value`; the error names the path of the first mismatch.
    pub fn check(&self, value: &Value, ids: &dyn IdCheck) -> Result<()> {
        self.check_at(value, ids, &mut String::new())
    }

    /// Checks a stored document: like `check` for an object validator, except that the system
    /// fields `_id` and `_creationTime` are always allowed.
    pub fn check_document(&self, doc: &Object, ids: &dyn IdCheck) -> Result<()> {
        match self {
            Validator::Object(fields) => check_object_fields(fields, doc, ids, &mut String::new(), true),
            Validator::Any => Ok(()),
            Validator::Union(members) => {
                if members.iter().any(|m| m.check_document(doc, ids).is_ok()) {
                    Ok(())
                } else {
                    Err(mismatch("", format!("document does not match any member of {self}")))
                }
            }
            _ => Err(mismatch("", format!("a document validator must be an object, not {self}"))),
        }
    }

    fn check_at(&self, value: &Value, ids: &dyn IdCheck, path: &mut String) -> Result<()> {
        let ok = match (self, value) {
            (Validator::Any, _)
            | (Validator::Null, Value::Null)
            | (Validator::Float64, Value::Float64(_))
            | (Validator::Int64, Value::Int64(_))
            | (Validator::Boolean, Value::Boolean(_))
            | (Validator::String, Value::String(_))
            | (Validator::Bytes, Value::Bytes(_)) => true,
            (Validator::Literal(l), v) => l == v,
            (Validator::Id(table), Value::String(s)) => {
                if !ids.is_id_of(s, table) {
                    return Err(mismatch(path, format!("{s:?} is not an id of table {table:?}")));
                }
                true
            }
            (Validator::Array(elem), Value::Array(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    elem.check_at(item, ids, path)?;
                    path.truncate(len);
                }
                true
            }
            (Validator::Object(fields), Value::Object(o)) => {
                return check_object_fields(fields, o, ids, path, false);
            }
            (Validator::Record(keys, values), Value::Object(o)) => {
                for (k, v) in o {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    keys.check_at(&Value::String(k.clone()), ids, path)?;
                    values.check_at(v, ids, path)?;
                    path.truncate(len);
                }
                true
            }
            (Validator::Union(members), v) => members.iter().any(|m| m.check_at(v, ids, &mut path.clone()).is_ok()),
            _ => false,
        };
        if ok { Ok(()) } else { Err(mismatch(path, format!("value {} does not match validator {self}", short(value)))) }
    }
}

fn parse_field(f: &Json) -> Result<FieldValidator> {
    let validator = Validator::from_json(f.get("fieldType").ok_or_else(|| invalid("field needs `fieldType`"))?)?;
    let optional = f.get("optional").and_then(Json::as_bool).unwrap_or(false);
    Ok(FieldValidator { validator, optional })
}

fn check_object_fields(
    fields: &BTreeMap<String, FieldValidator>,
    o: &Object,
    ids: &dyn IdCheck,
    path: &mut String,
    allow_system: bool,
) -> Result<()> {
    for (name, f) in fields {
        let len = path.len();
        path.push('.');
        path.push_str(name);
        match o.get(name) {
            Some(v) => f.validator.check_at(v, ids, path)?,
            None if f.optional => {}
            None => return Err(mismatch(path, "missing required field".to_owned())),
        }
        path.truncate(len);
    }
    for name in o.keys() {
        let system = allow_system && (name == ID_FIELD || name == CREATION_TIME_FIELD);
        if !fields.contains_key(name) && !system {
            return Err(mismatch(&format!("{path}.{name}"), "field is not in the validator".to_owned()));
        }
    }
    Ok(())
}

fn mismatch(path: &str, message: String) -> ValueError {
    ValueError::ValidationFailed { path: path.to_owned(), message }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 80 { format!("{}…", &s[..s.floor_char_boundary(80)]) } else { s }
}

impl fmt::Display for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Validator::Null => write!(f, "v.null()"),
            Validator::Float64 => write!(f, "v.float64()"),
            Validator::Int64 => write!(f, "v.int64()"),
            Validator::Boolean => write!(f, "v.boolean()"),
            Validator::String => write!(f, "v.string()"),
            Validator::Bytes => write!(f, "v.bytes()"),
            Validator::Any => write!(f, "v.any()"),
            Validator::Literal(v) => write!(f, "v.literal({})", short(v)),
            Validator::Id(t) => write!(f, "v.id({t:?})"),
            Validator::Array(e) => write!(f, "v.array({e})"),
            Validator::Object(fields) => {
                write!(f, "v.object({{")?;
                for (i, (k, fv)) in fields.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    if fv.optional {
                        write!(f, "{sep}{k}: v.optional({})", fv.validator)?;
                    } else {
                        write!(f, "{sep}{k}: {}", fv.validator)?;
                    }
                }
                write!(f, "}})")
            }
            Validator::Record(k, v) => write!(f, "v.record({k}, {v})"),
            Validator::Union(m) => {
                write!(f, "v.union(")?;
                for (i, v) in m.iter().enumerate() {
                    write!(f, "{}{v}", if i == 0 { "" } else { ", " })?;
                }
                write!(f, ")")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message_validator() -> Validator {
        Validator::from_json(&json!({
            "type": "object",
            "value": {
                "body": {"fieldType": {"type": "string"}, "optional": false},
                "tags": {"fieldType": {"type": "array", "value": {"type": "string"}}, "optional": true},
                "kind": {"fieldType": {"type": "union", "value": [
                    {"type": "literal", "value": "a"}, {"type": "literal", "value": {"$integer": "AQAAAAAAAAA="}}
                ]}, "optional": false}
            }
        }))
        .unwrap()
    }

    #[test]
    fn json_round_trip() {
        let v = message_validator();
        assert_eq!(Validator::from_json(&v.to_json()).unwrap(), v);
    }

    #[test]
    fn errors_name_the_path() {
        let v = message_validator();
        let doc = crate::parse_convex_json(r#"{"body":"hi","kind":"a","tags":["x",5]}"#).unwrap();
        let err = v.check(&doc, &AnyWellFormedId).unwrap_err();
        assert_eq!(err.code(), "ValidationFailed");
        assert!(matches!(&err, ValueError::ValidationFailed { path, .. } if path == ".tags[1]"), "{err}");
        let doc = crate::parse_convex_json(r#"{"kind":{"$integer":"AQAAAAAAAAA="}}"#).unwrap();
        let err = v.check(&doc, &AnyWellFormedId).unwrap_err();
        assert!(matches!(&err, ValueError::ValidationFailed { path, .. } if path == ".body"), "{err}");
        let doc = crate::parse_convex_json(r#"{"body":"x","kind":"a","extra":1}"#).unwrap();
        assert!(v.check(&doc, &AnyWellFormedId).is_err());
        let Value::Object(o) =
            crate::parse_convex_json(r#"{"body":"x","kind":"a","_id":"x","_creationTime":1}"#).unwrap()
        else {
            panic!()
        };
        assert!(v.check_document(&o, &AnyWellFormedId).is_ok());
    }

    #[test]
    fn bad_validators_are_rejected() {
        for bad in [json!(5), json!({"type": "nope"}), json!({"type": "array"})] {
            assert_eq!(Validator::from_json(&bad).unwrap_err().code(), "InvalidValidator");
        }
    }
}
