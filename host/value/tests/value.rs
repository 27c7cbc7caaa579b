//! Integration tests of the value model: codecs, order and limits, over generated values.

// Tests fail loudly on the first broken expectation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kiln_value::index_key::{KeyReader, encode_tuple};
use kiln_value::json::{base64_encode, patch_from_convex_json};
use kiln_value::validation::{validate_document, validate_user_fields};
use kiln_value::{Object, Value, from_convex_json, from_msgpack, parse_convex_json, to_convex_json, to_msgpack};
use proptest::prelude::*;
use serde_json::json;

fn field_name() -> impl Strategy<Value = String> {
    // Printable ASCII without a leading `$`, including characters that need escaping in JSON.
    "[a-zA-Z_ \"\\\\.~][ -~]{0,6}"
}

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Int64),
        prop_oneof![
            any::<f64>(),
            Just(-0.0),
            Just(0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(f64::NEG_INFINITY),
            Just(f64::MIN_POSITIVE),
        ]
        .prop_map(Value::Float64),
        any::<bool>().prop_map(Value::Boolean),
        ".{0,8}".prop_map(Value::String),
        "[\\x00-\\x02a]{0,4}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        proptest::collection::vec(0u8..2, 0..4).prop_map(Value::Bytes),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::btree_map(field_name(), inner, 0..5).prop_map(Value::Object),
        ]
    })
}

fn tuple() -> impl Strategy<Value = Vec<Option<Value>>> {
    proptest::collection::vec(proptest::option::weighted(0.85, value()), 0..4)
}

fn cmp_tuples(a: &[Option<Value>], b: &[Option<Value>]) -> std::cmp::Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| kiln_value::cmp_optional(x.as_ref(), y.as_ref()))
        .find(|o| o.is_ne())
        .unwrap_or(a.len().cmp(&b.len()))
}

fn enc(t: &[Option<Value>]) -> Vec<u8> {
    encode_tuple(t.iter().map(Option::as_ref))
}

fn bitwise_eq(a: &Value, b: &Value) -> bool {
    to_msgpack(a) == to_msgpack(b) && a == b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn convex_json_round_trips(v in value()) {
        let text = serde_json::to_string(&to_convex_json(&v)).unwrap();
        let back = parse_convex_json(&text).unwrap();
        prop_assert!(bitwise_eq(&back, &v), "{v:?} came back as {back:?}");
    }

    #[test]
    fn msgpack_round_trips(v in value()) {
        let back = from_msgpack(&to_msgpack(&v)).unwrap();
        prop_assert!(bitwise_eq(&back, &v));
    }

    #[test]
    fn index_key_order_is_value_order(a in value(), b in value()) {
        prop_assert_eq!(enc(&[Some(a.clone())]).cmp(&enc(&[Some(b.clone())])), a.cmp(&b));
    }

    #[test]
    fn index_key_order_is_tuple_order(a in tuple(), b in tuple()) {
        // Same-length tuples, as in one index; the tie-break suffix keeps keys distinct.
        let n = a.len().min(b.len());
        prop_assert_eq!(enc(&a[..n]).cmp(&enc(&b[..n])), cmp_tuples(&a[..n], &b[..n]));
    }

    #[test]
    fn equality_prefix_is_a_byte_prefix(a in tuple(), b in tuple()) {
        let joined: Vec<_> = a.iter().chain(&b).cloned().collect();
        prop_assert!(enc(&joined).starts_with(&enc(&a)));
    }

    #[test]
    fn index_keys_decode(t in tuple()) {
        let bytes = enc(&t);
        let mut r = KeyReader::new(&bytes);
        for expected in &t {
            let got = r.read_value().unwrap();
            prop_assert_eq!(got.as_ref(), expected.as_ref());
        }
        prop_assert!(r.rest().is_empty());
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = from_msgpack(&bytes);
        let _ = KeyReader::new(&bytes).read_value();
        if let Ok(s) = std::str::from_utf8(&bytes) {
            let _ = parse_convex_json(s);
            let _ = kiln_value::DocumentId::decode(s);
        }
    }
}

#[test]
fn extremes_round_trip_exactly() {
    let cases = [
        (Value::Int64(i64::MIN), json!({"$integer": base64_encode(&i64::MIN.to_le_bytes())})),
        (Value::Int64(i64::MAX), json!({"$integer": "/////////38="})),
        (Value::Int64(0), json!({"$integer": "AAAAAAAAAAA="})),
        (Value::Float64(f64::NAN), json!({"$float": base64_encode(&f64::NAN.to_le_bytes())})),
        (Value::Float64(f64::INFINITY), json!({"$float": "AAAAAAAA8H8="})),
        (Value::Float64(f64::NEG_INFINITY), json!({"$float": "AAAAAAAA8P8="})),
        (Value::Float64(-0.0), json!({"$float": "AAAAAAAAAIA="})),
        (Value::Float64(0.0), json!(0.0)),
        (Value::Bytes(vec![]), json!({"$bytes": ""})),
        (Value::Object(Object::new()), json!({})),
    ];
    for (v, j) in cases {
        assert_eq!(to_convex_json(&v), j, "{v:?}");
        assert!(bitwise_eq(&from_convex_json(&j).unwrap(), &v), "{j}");
    }
}

#[test]
fn object_keys_are_sorted_on_output() {
    let v = parse_convex_json(r#"{"b":1,"a":2,"B":3}"#).unwrap();
    assert_eq!(serde_json::to_string(&to_convex_json(&v)).unwrap(), r#"{"B":3.0,"a":2.0,"b":1.0}"#);
}

#[test]
fn bad_inputs_have_their_own_codes() {
    let code = |s: &str| parse_convex_json(s).unwrap_err().code();
    assert_eq!(code(r#"{"$oops": 1}"#), "UnknownSpecialKey");
    assert_eq!(code(r#"{"$set": []}"#), "UnknownSpecialKey");
    assert_eq!(code(r#"{"$map": []}"#), "UnknownSpecialKey");
    assert_eq!(code(r#"{"$bytes": "!!!"}"#), "InvalidBase64");
    assert_eq!(code(r#"{"$integer": "AQ=="}"#), "InvalidBase64");
    assert_eq!(code(r#"{"$integer": 5}"#), "InvalidBase64");
    assert_eq!(code(r#"{"a": 1, "$b": 2}"#), "InvalidFieldName");
    assert_eq!(code(r#"{"a": {"x\u0001": 2}}"#), "InvalidFieldName");
    assert_eq!(code(r#"{"a": "#), "MalformedValue");
    assert_eq!(code(r#"{"a": {"$undefined": null}}"#), "UndefinedNotAllowed");
    assert_eq!(code(&format!("{}1{}", "[".repeat(70), "]".repeat(70))), "NestingTooDeep");
    assert_eq!(patch_from_convex_json(&json!([1])).unwrap_err().code(), "MalformedValue");

    // 1 MiB + 1: one string field sized to push the document one byte over the limit.
    let overhead = 2 + ("body".len() + 1) + 2;
    let big = |n: usize| -> Object { [("body".to_string(), Value::String("x".repeat(n)))].into() };
    assert!(validate_user_fields(&big((1 << 20) - overhead)).is_ok());
    assert_eq!(validate_user_fields(&big((1 << 20) - overhead + 1)).unwrap_err().code(), "DocumentTooLarge");

    let mut deep = Value::Null;
    for _ in 0..16 {
        deep = Value::Object([("n".to_string(), deep)].into());
    }
    let doc: Object = [("n".to_string(), deep)].into();
    assert_eq!(validate_document(&doc).unwrap_err().code(), "NestingTooDeep");
}
