//! Order-preserving byte encoding of values and tuples of values (index keys).
//!
//! For any values `a`, `b`: `encode(a) < encode(b)` (bytewise) exactly when `a < b` in the
//! Convex total order, and the same holds for tuples compared lexicographically. Every encoding
//! is self-delimiting and prefix-free, so a tuple's encoding is the concatenation of its
//! elements' and an equality prefix of a tuple is a byte prefix of its key.
//!
//! Layout: a tag byte in rank order, then
//! int64/float64: 8 big-endian bytes with the sign handled so unsigned order matches;
//! string/bytes: the bytes with `00` escaped as `00 FF`, terminated by `00 01`;
//! array: the elements, then `00`; object: per field `01`, the escaped name, the value; then `00`.

use crate::error::{Result, ValueError};
use crate::value::{Object, Value};

const TAG_UNDEFINED: u8 = 0x01;
const TAG_NULL: u8 = 0x02;
const TAG_INT64: u8 = 0x03;
const TAG_FLOAT64: u8 = 0x04;
const TAG_FALSE: u8 = 0x05;
const TAG_TRUE: u8 = 0x06;
const TAG_STRING: u8 = 0x07;
const TAG_BYTES: u8 = 0x08;
const TAG_ARRAY: u8 = 0x09;
const TAG_OBJECT: u8 = 0x0a;
const END: u8 = 0x00;
const FIELD: u8 = 0x01;

/// Appends the encoding of one value (`None` = undefined, a missing field) to `out`.
pub fn encode_value(out: &mut Vec<u8>, v: Option<&Value>) {
    let Some(v) = v else {
        out.push(TAG_UNDEFINED);
        return;
    };
    match v {
        Value::Null => out.push(TAG_NULL),
        Value::Int64(i) => {
            out.push(TAG_INT64);
            out.extend_from_slice(&((*i as u64) ^ (1 << 63)).to_be_bytes());
        }
        Value::Float64(f) => {
            out.push(TAG_FLOAT64);
            out.extend_from_slice(&float_to_ordered(*f).to_be_bytes());
        }
        Value::Boolean(false) => out.push(TAG_FALSE),
        Value::Boolean(true) => out.push(TAG_TRUE),
        Value::String(s) => {
            out.push(TAG_STRING);
            encode_escaped(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(TAG_BYTES);
            encode_escaped(out, b);
        }
        Value::Array(a) => {
            out.push(TAG_ARRAY);
            for e in a {
                encode_value(out, Some(e));
            }
            out.push(END);
        }
        Value::Object(o) => {
            out.push(TAG_OBJECT);
            for (k, v) in o {
                out.push(FIELD);
                encode_escaped(out, k.as_bytes());
                encode_value(out, Some(v));
            }
            out.push(END);
        }
    }
}

/// Encodes a tuple of possibly-missing values.
pub fn encode_tuple<'a>(values: impl IntoIterator<Item = Option<&'a Value>>) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        encode_value(&mut out, v);
    }
    out
}

/// Maps a float to a u64 whose unsigned order is IEEE 754 `totalOrder`.
fn float_to_ordered(f: f64) -> u64 {
    let bits = f.to_bits();
    if bits >> 63 == 1 { !bits } else { bits ^ (1 << 63) }
}

fn float_from_ordered(u: u64) -> f64 {
    f64::from_bits(if u >> 63 == 1 { u ^ (1 << 63) } else { !u })
}

fn encode_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// The smallest byte string greater than every string that starts with `prefix`,
/// or `None` when no such string exists (the prefix is empty or all `FF`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < 0xff {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// A cursor over encoded bytes.
pub struct KeyReader<'a> {
    bytes: &'a [u8],
}

impl<'a> KeyReader<'a> {
    /// Reads encoded values from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        KeyReader { bytes }
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    /// Decodes the next value (`None` = undefined).
    pub fn read_value(&mut self) -> Result<Option<Value>> {
        self.read(0)
    }

    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self.bytes.split_first().ok_or_else(|| malformed("key ends early"))?;
        self.bytes = rest;
        Ok(b)
    }

    fn eight(&mut self) -> Result<u64> {
        if self.bytes.len() < 8 {
            return Err(malformed("key ends inside a number"));
        }
        let (head, rest) = self.bytes.split_at(8);
        self.bytes = rest;
        let mut a = [0u8; 8];
        a.copy_from_slice(head);
        Ok(u64::from_be_bytes(a))
    }

    fn escaped(&mut self) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match self.byte()? {
                0 => match self.byte()? {
                    0xff => out.push(0),
                    0x01 => return Ok(out),
                    _ => return Err(malformed("bad escape in key")),
                },
                b => out.push(b),
            }
        }
    }

    fn read(&mut self, depth: usize) -> Result<Option<Value>> {
        if depth > crate::limits::MAX_VALUE_DEPTH {
            return Err(malformed("key nests too deeply"));
        }
        Ok(Some(match self.byte()? {
            TAG_UNDEFINED => return Ok(None),
            TAG_NULL => Value::Null,
            TAG_INT64 => Value::Int64((self.eight()? ^ (1 << 63)) as i64),
            TAG_FLOAT64 => Value::Float64(float_from_ordered(self.eight()?)),
            TAG_FALSE => Value::Boolean(false),
            TAG_TRUE => Value::Boolean(true),
            TAG_STRING => {
                Value::String(String::from_utf8(self.escaped()?).map_err(|_| malformed("string is not UTF-8"))?)
            }
            TAG_BYTES => Value::Bytes(self.escaped()?),
            TAG_ARRAY => {
                let mut a = Vec::new();
                while self.bytes.first() != Some(&END) {
                    a.push(self.read(depth + 1)?.ok_or_else(|| malformed("undefined in array"))?);
                }
                self.byte()?;
                Value::Array(a)
            }
            TAG_OBJECT => {
                let mut o = Object::new();
                loop {
                    match self.byte()? {
                        END => break,
                        FIELD => {
                            let k =
                                String::from_utf8(self.escaped()?).map_err(|_| malformed("field name is not UTF-8"))?;
                            let v = self.read(depth + 1)?.ok_or_else(|| malformed("undefined field"))?;
                            o.insert(k, v);
                        }
                        _ => return Err(malformed("bad object marker in key")),
                    }
                }
                Value::Object(o)
            }
            _ => return Err(malformed("unknown tag in key")),
        }))
    }
}

fn malformed(what: &str) -> ValueError {
    ValueError::Malformed(what.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_with_zero_bytes_keep_order_and_prefix_freedom() {
        let a = encode_tuple([Some(&Value::from("x"))]);
        let b = encode_tuple([Some(&Value::from("x\0y"))]);
        assert!(a < b);
        assert!(!b.starts_with(&a));
    }

    #[test]
    fn prefix_successor_bounds_the_prefix() {
        assert_eq!(prefix_successor(&[1, 2, 0xff]), Some(vec![1, 3]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(&[]), None);
    }

    #[test]
    fn decode_inverts_encode() {
        let v = Value::Object([("a\0".to_string(), Value::Array(vec![Value::Float64(-0.0), Value::Int64(-7)]))].into());
        let key = encode_tuple([None, Some(&v)]);
        let mut r = KeyReader::new(&key);
        assert_eq!(r.read_value().unwrap(), None);
        assert_eq!(r.read_value().unwrap(), Some(v));
        assert!(r.rest().is_empty());
    }
}
