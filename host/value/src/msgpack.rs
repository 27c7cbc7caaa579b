//! MessagePack: Kiln's canonical internal encoding (storage, and the WIT boundary).
//!
//! Every distinction of the value model survives a round trip: int64 is a msgpack integer,
//! float64 always a 64-bit float (so `-0.0`, NaN payloads and integral floats stay floats),
//! bytes are `bin` and strings `str`. Objects are written with sorted keys, so equal values
//! have equal encodings.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, Serializer};

use crate::error::{Result, ValueError};
use crate::limits::MAX_VALUE_DEPTH;
use crate::value::{Object, Value, object_fields_size};

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Int64(i) => s.serialize_i64(*i),
            Value::Float64(f) => s.serialize_f64(*f),
            Value::Boolean(b) => s.serialize_bool(*b),
            Value::String(v) => s.serialize_str(v),
            Value::Bytes(b) => s.serialize_bytes(b),
            Value::Array(a) => s.collect_seq(a),
            Value::Object(o) => s.collect_map(o),
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kiln value")
    }
    fn visit_unit<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Value, E> {
        Ok(Value::Boolean(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Value, E> {
        Ok(Value::Int64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Value, E> {
        i64::try_from(v).map(Value::Int64).map_err(|_| E::custom(format!("integer {v} does not fit in int64")))
    }
    fn visit_f32<E>(self, v: f32) -> std::result::Result<Value, E> {
        Ok(Value::Float64(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Value, E> {
        Ok(Value::Float64(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Value, E> {
        Ok(Value::Bytes(v.to_vec()))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> std::result::Result<Value, E> {
        Ok(Value::Bytes(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Value, A::Error> {
        // Cap the pre-allocation: the length prefix is untrusted input.
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Value, A::Error> {
        let mut out = Object::new();
        while let Some((k, v)) = map.next_entry::<String, Value>()? {
            if out.insert(k, v).is_some() {
                return Err(de::Error::custom("duplicate key in object"));
            }
        }
        Ok(Value::Object(out))
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

/// Encodes a value as MessagePack.
pub fn to_msgpack(v: &Value) -> Vec<u8> {
    let mut buf = Vec::with_capacity(v.size());
    write_msgpack(v, &mut buf);
    buf
}

/// Encodes an object (a document) as MessagePack, the same bytes as `to_msgpack` of the object.
pub fn object_to_msgpack(o: &Object) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2 + object_fields_size(o));
    write_msgpack(o, &mut buf);
    buf
}

/// Encodes an object without its field `skip`: the same bytes as `object_to_msgpack` of a copy
/// with `skip` removed, without making the copy (documents are stored without `_id`).
pub fn object_to_msgpack_without(o: &Object, skip: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(2 + object_fields_size(o));
    write_msgpack(&Without(o, skip), &mut buf);
    buf
}

/// An object seen without one of its fields.
struct Without<'a>(&'a Object, &'a str);

impl Serialize for Without<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Without(o, skip) = *self;
        let mut map = s.serialize_map(Some(o.len() - usize::from(o.contains_key(skip))))?;
        for (k, v) in o.iter().filter(|(k, _)| k.as_str() != skip) {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

fn write_msgpack<T: Serialize + ?Sized>(v: &T, buf: &mut Vec<u8>) {
    // Writing into a Vec cannot fail and every value is representable, so this never errs.
    let result = v.serialize(&mut rmp_serde::Serializer::new(buf));
    debug_assert!(result.is_ok(), "msgpack encoding failed: {result:?}");
}

/// Decodes MessagePack into a value; trailing bytes, non-string keys and ext types are errors.
pub fn from_msgpack(bytes: &[u8]) -> Result<Value> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    // One level for the container itself plus slack; deeper input is refused, not recursed.
    de.set_max_depth(MAX_VALUE_DEPTH + 2);
    let v = Value::deserialize(&mut de).map_err(|e| ValueError::Malformed(e.to_string()))?;
    if de.position() == bytes.len() as u64 {
        Ok(v)
    } else {
        Err(ValueError::Malformed("trailing bytes after MessagePack value".into()))
    }
}

/// Decodes MessagePack that must hold an object.
pub fn object_from_msgpack(bytes: &[u8]) -> Result<Object> {
    match from_msgpack(bytes)? {
        Value::Object(o) => Ok(o),
        other => Err(ValueError::Malformed(format!("expected an object, found {}", other.kind().name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinctions_survive() {
        let v = Value::Array(vec![
            Value::Int64(3),
            Value::Float64(3.0),
            Value::Float64(-0.0),
            Value::Float64(f64::from_bits(0x7ff8_dead_beef_0001)),
            Value::String("ab".into()),
            Value::Bytes(b"ab".to_vec()),
            Value::Bytes(vec![]),
        ]);
        let back = from_msgpack(&to_msgpack(&v)).unwrap();
        assert_eq!(back, v);
        let Value::Array(items) = back else { panic!() };
        let Value::Float64(nan) = items[3] else { panic!() };
        assert_eq!(nan.to_bits(), 0x7ff8_dead_beef_0001);
    }

    #[test]
    fn an_object_without_a_field_encodes_as_the_copy_without_it() {
        let mut o = Object::new();
        o.insert("_id".into(), Value::String("abc".into()));
        o.insert("a".into(), Value::Int64(1));
        o.insert("z".into(), Value::Array(vec![Value::Null]));
        let mut copy = o.clone();
        copy.remove("_id");
        assert_eq!(object_to_msgpack_without(&o, "_id"), object_to_msgpack(&copy));
        assert_eq!(object_to_msgpack_without(&copy, "_id"), object_to_msgpack(&copy));
        assert_eq!(object_from_msgpack(&object_to_msgpack_without(&o, "_id")).unwrap(), copy);
    }

    #[test]
    fn garbage_is_an_error() {
        assert_eq!(from_msgpack(&[0xc1]).unwrap_err().code(), "MalformedValue");
        assert_eq!(from_msgpack(&[0xc0, 0xc0]).unwrap_err().code(), "MalformedValue");
        // u64 beyond int64
        assert!(from_msgpack(&[0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // map with an integer key
        assert!(from_msgpack(&[0x81, 0x01, 0x02]).is_err());
        // a claimed 4-billion-element array must not allocate
        assert!(from_msgpack(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        let bytes = vec![0x91; 100_000];
        assert_eq!(from_msgpack(&bytes).unwrap_err().code(), "MalformedValue");
    }
}
