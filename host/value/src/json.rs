//! Convex JSON (the wire encoding of the official clients) and the "clean" export format.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, general_purpose};
use serde_json::{Map, Number, Value as Json};

use crate::error::{Result, ValueError};
use crate::limits::MAX_VALUE_DEPTH;
use crate::validation::check_field_name;
use crate::value::{Object, Value};

/// Base64 decoding that accepts input with or without padding (clients differ).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A patch: fields to set (`Some`) or remove (`None`, from `{"$undefined": null}`).
pub type Patch = BTreeMap<String, Option<Value>>;

/// Encodes a base64 string the way Convex JSON does (standard alphabet, padded).
pub fn base64_encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn decode_base64(key: &'static str, s: &str) -> Result<Vec<u8>> {
    LENIENT.decode(s).map_err(|e| ValueError::InvalidBase64 { key, detail: e.to_string() })
}

fn decode_8_bytes(key: &'static str, payload: &Json) -> Result<[u8; 8]> {
    let s =
        payload.as_str().ok_or_else(|| ValueError::InvalidBase64 { key, detail: "payload must be a string".into() })?;
    let bytes = decode_base64(key, s)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| ValueError::InvalidBase64 { key, detail: format!("expected 8 bytes, got {}", bytes.len()) })
}

fn is_special_float(f: f64) -> bool {
    !f.is_finite() || (f == 0.0 && f.is_sign_negative())
}

/// Encodes a value as Convex JSON.
pub fn to_convex_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Int64(i) => special("$integer", base64_encode(&i.to_le_bytes())),
        Value::Float64(f) => match Number::from_f64(*f) {
            Some(n) if !is_special_float(*f) => Json::Number(n),
            _ => special("$float", base64_encode(&f.to_le_bytes())),
        },
        Value::Bytes(b) => special("$bytes", base64_encode(b)),
        Value::Array(a) => Json::Array(a.iter().map(to_convex_json).collect()),
        Value::Object(o) => Json::Object(o.iter().map(|(k, v)| (k.clone(), to_convex_json(v))).collect()),
    }
}

fn special(key: &str, payload: String) -> Json {
    let mut m = Map::new();
    m.insert(key.to_owned(), Json::String(payload));
    Json::Object(m)
}

/// Decodes Convex JSON into a value.
pub fn from_convex_json(j: &Json) -> Result<Value> {
    decode(j, 0)
}

/// Parses a Convex JSON string into a value.
pub fn parse_convex_json(s: &str) -> Result<Value> {
    let j: Json = serde_json::from_str(s).map_err(|e| ValueError::Malformed(e.to_string()))?;
    from_convex_json(&j)
}

/// Decodes Convex JSON where `{"$undefined": null}` stands for a missing value (index ranges and
/// filter literals): `Ok(None)` is undefined.
pub fn from_convex_json_or_undefined(j: &Json) -> Result<Option<Value>> {
    if is_undefined(j) { Ok(None) } else { decode(j, 0).map(Some) }
}

/// Decodes a Convex JSON object as a patch: `{"$undefined": null}` removes a field.
pub fn patch_from_convex_json(j: &Json) -> Result<Patch> {
    let Json::Object(m) = j else {
        return Err(ValueError::Malformed("a patch must be an object".into()));
    };
    let mut patch = Patch::new();
    for (k, v) in m {
        check_field_name(k)?;
        let value = if is_undefined(v) { None } else { Some(decode(v, 1)?) };
        patch.insert(k.clone(), value);
    }
    Ok(patch)
}

fn is_undefined(j: &Json) -> bool {
    matches!(j, Json::Object(m) if m.len() == 1 && m.get("$undefined") == Some(&Json::Null))
}

fn decode(j: &Json, depth: usize) -> Result<Value> {
    if depth > MAX_VALUE_DEPTH {
        return Err(ValueError::NestingTooDeep { depth, limit: MAX_VALUE_DEPTH });
    }
    Ok(match j {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Boolean(*b),
        Json::String(s) => Value::String(s.clone()),
        Json::Number(n) => {
            Value::Float64(n.as_f64().ok_or_else(|| ValueError::Malformed(format!("number {n} is not a float64")))?)
        }
        Json::Array(a) => Value::Array(a.iter().map(|e| decode(e, depth + 1)).collect::<Result<_>>()?),
        Json::Object(m) => {
            if m.len() == 1
                && let Some((k, payload)) = m.iter().next()
                && k.starts_with('$')
            {
                return decode_special(k, payload);
            }
            let mut out = Object::new();
            for (k, v) in m {
                check_field_name(k)?;
                out.insert(k.clone(), decode(v, depth + 1)?);
            }
            Value::Object(out)
        }
    })
}

fn decode_special(key: &str, payload: &Json) -> Result<Value> {
    match key {
        "$integer" => Ok(Value::Int64(i64::from_le_bytes(decode_8_bytes("$integer", payload)?))),
        "$float" => {
            let f = f64::from_le_bytes(decode_8_bytes("$float", payload)?);
            if is_special_float(f) { Ok(Value::Float64(f)) } else { Err(ValueError::FloatNotSpecial(f)) }
        }
        "$bytes" => {
            let s = payload.as_str().ok_or_else(|| ValueError::InvalidBase64 {
                key: "$bytes",
                detail: "payload must be a string".into(),
            })?;
            Ok(Value::Bytes(decode_base64("$bytes", s)?))
        }
        "$undefined" => Err(ValueError::UndefinedNotAllowed),
        other => Err(ValueError::UnknownSpecialKey(other.to_owned())),
    }
}

/// Encodes a value in the "clean" export format: plain JSON a human or another tool can read.
///
/// int64 becomes a decimal string, bytes a base64 string, NaN/±Infinity the strings
/// `"NaN"`, `"Infinity"`, `"-Infinity"`. The mapping is lossy by design.
pub fn to_clean_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Int64(i) => Json::String(i.to_string()),
        Value::Float64(f) => match Number::from_f64(*f) {
            Some(n) => Json::Number(n),
            None if f.is_nan() => Json::String("NaN".into()),
            None if *f > 0.0 => Json::String("Infinity".into()),
            None => Json::String("-Infinity".into()),
        },
        Value::Bytes(b) => Json::String(general_purpose::STANDARD.encode(b)),
        Value::Array(a) => Json::Array(a.iter().map(to_clean_json).collect()),
        Value::Object(o) => Json::Object(o.iter().map(|(k, v)| (k.clone(), to_clean_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integer_one_matches_the_client_encoding() {
        assert_eq!(to_convex_json(&Value::Int64(1)), json!({"$integer": "AQAAAAAAAAA="}));
    }

    #[test]
    fn finite_floats_are_plain_numbers_and_special_ones_are_not() {
        assert_eq!(to_convex_json(&Value::Float64(1.5)), json!(1.5));
        assert!(to_convex_json(&Value::Float64(-0.0)).get("$float").is_some());
        assert_eq!(
            from_convex_json(&json!({"$float": base64_encode(&1.5f64.to_le_bytes())})),
            Err(ValueError::FloatNotSpecial(1.5))
        );
    }

    #[test]
    fn patch_understands_undefined() {
        let p = patch_from_convex_json(&json!({"a": {"$undefined": null}, "b": 1})).unwrap();
        assert_eq!(p.get("a"), Some(&None));
        assert_eq!(p.get("b"), Some(&Some(Value::Float64(1.0))));
        assert_eq!(from_convex_json(&json!({"a": {"$undefined": null}})).unwrap_err().code(), "UndefinedNotAllowed");
    }

    #[test]
    fn clean_export_is_plain() {
        let v = Value::Array(vec![Value::Int64(-5), Value::Bytes(vec![1, 2]), Value::Float64(f64::NAN)]);
        assert_eq!(to_clean_json(&v), json!(["-5", "AQI=", "NaN"]));
    }
}
