//! Native versions of the `convex` package's value codecs: `jsonToConvex`, `convexToJson` and
//! `patchValueToJson` (the JSON of a patch, where a top-level `undefined` removes a field).
//!
//! The guest SDK gives the package's own functions a prologue that calls these first. Each
//! returns exactly what the JavaScript original returns, or `undefined` to hand the input back
//! to the original: for anything the original rejects (so the error is the package's own) and
//! for anything but a tree of plain values (proxies, class instances, sparse arrays are left
//! to it). The codecs are pure, so running the original afterwards is safe (a getter on a
//! plain object then runs twice).
//!
//! Also here: the JSON of a syscall's argument object and the value of its JSON reply, for
//! `__kiln_fast.syscall` (`syscall.rs`), as `JSON.stringify` and `JSON.parse` would make them,
//! and the document of the fast `db.get`, decoded from the host's MessagePack directly.
//!
//! Why: in QuickJS these codecs were the largest part of a call's fuel (a four-field document
//! cost ~190k instructions to decode, ~230k to encode); natively ~20k.

use std::cell::Cell;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use javy_plugin_api::javy::quickjs::object::{Filter, Property};
use javy_plugin_api::javy::quickjs::{self, Array, ArrayBuffer, Atom, Ctx, Object, Type, Value, qjs};
use kiln_value::json::base64_encode;
use serde_json::Value as Json;

/// Deeper values are left to the JavaScript original (which has no limit of its own).
const MAX_DEPTH: usize = 64;
/// The `convex` package's limit on field names, in UTF-16 units (ASCII here).
const MAX_FIELD_LEN: usize = 1024;

thread_local! {
    /// Addresses of the intrinsic `Object.prototype`, `Array.prototype` and
    /// `ArrayBuffer.prototype`, taken before any app code runs.
    static PROTOTYPES: Cell<[usize; 3]> = const { Cell::new([0; 3]) };
}

/// Records the intrinsic prototypes; called once, before the prelude and the app run.
pub(crate) fn capture_prototypes(ctx: &Ctx<'_>) -> quickjs::Result<()> {
    let globals = ctx.globals();
    let mut found = [0; 3];
    for (slot, name) in found.iter_mut().zip(["Object", "Array", "ArrayBuffer"]) {
        let constructor: Object = globals.get(name)?;
        let prototype: Object = constructor.get("prototype")?;
        *slot = address(prototype.as_value());
    }
    PROTOTYPES.with(|p| p.set(found));
    Ok(())
}

fn address(value: &Value<'_>) -> usize {
    // SAFETY: reads the pointer bits of an object value (no dereference).
    unsafe { qjs::JS_VALUE_GET_PTR(value.as_raw()) as usize }
}

#[derive(PartialEq)]
enum Proto {
    /// `Object.prototype` or `null`.
    Plain,
    Array,
    ArrayBuffer,
    Other,
}

fn proto_of(object: &Object<'_>) -> Proto {
    if object.as_value().is_proxy() {
        return Proto::Other;
    }
    let [plain, array, buffer] = PROTOTYPES.with(Cell::get);
    match object.get_prototype() {
        None => Proto::Plain,
        Some(p) => match address(p.as_value()) {
            a if a == plain => Proto::Plain,
            a if a == array => Proto::Array,
            a if a == buffer => Proto::ArrayBuffer,
            _ => Proto::Other,
        },
    }
}

/// A field name the package's `validateObjectField` accepts (false: let the original report).
fn valid_field(name: &str) -> bool {
    name.len() <= MAX_FIELD_LEN
        && !name.starts_with('$')
        && name != "__proto__"
        && name.bytes().all(|b| (32..127).contains(&b))
}

/// Decodes canonical, padded standard base64, which the package's `toByteArray` decodes the
/// same way; `None` for anything else (unpadded, URL-safe, stray bits), which the package's own
/// decoder then handles.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    STANDARD.decode(text).ok()
}

/// The Rust text of a JavaScript string or property name, or `None` (for the original to
/// handle) when it is not Unicode: a lone surrogate has no UTF-8 form.
pub(crate) fn text(ctx: &Ctx<'_>, converted: quickjs::Result<String>) -> Option<String> {
    match converted {
        Ok(s) => Some(s),
        Err(_) => {
            let _ = ctx.catch();
            None
        }
    }
}

fn is_special(f: f64) -> bool {
    f.is_nan() || f.is_infinite() || (f == 0.0 && f.is_sign_negative())
}

fn wrap<'js>(ctx: &Ctx<'js>, key: &str, value: Value<'js>) -> quickjs::Result<Value<'js>> {
    let object = Object::new(ctx.clone())?;
    object.set(key, value)?;
    Ok(object.into_value())
}

fn string<'js>(ctx: &Ctx<'js>, s: &str) -> quickjs::Result<Value<'js>> {
    Ok(quickjs::String::from_str(ctx.clone(), s)?.into_value())
}

/// The array of `f` of each item (the package's `value.map(f)`), or `None` if `f` defers or an
/// item is `undefined`: a hole (which `map` keeps) or an error, for the original to decide.
fn map_items<'js>(
    ctx: &Ctx<'js>,
    object: &Object<'js>,
    mut f: impl FnMut(&Value<'js>) -> quickjs::Result<Option<Value<'js>>>,
) -> quickjs::Result<Option<Value<'js>>> {
    let Some(array) = object.clone().into_array() else { return Ok(None) };
    let out = Array::new(ctx.clone())?;
    for i in 0..array.len() {
        let item: Value = array.get(i)?;
        if item.is_undefined() {
            return Ok(None);
        }
        let Some(item) = f(&item)? else { return Ok(None) };
        out.set(i, item)?;
    }
    Ok(Some(out.into_value()))
}

/// `jsonToConvex(value)`, or `undefined` to run the original.
pub(crate) fn json_to_convex<'js>(ctx: Ctx<'js>, value: Value<'js>) -> quickjs::Result<Value<'js>> {
    Ok(from_json(&ctx, &value, 0)?.unwrap_or_else(|| Value::new_undefined(ctx)))
}

fn from_json<'js>(ctx: &Ctx<'js>, value: &Value<'js>, depth: usize) -> quickjs::Result<Option<Value<'js>>> {
    match value.type_of() {
        Type::Null | Type::Bool | Type::Int | Type::Float | Type::String => return Ok(Some(value.clone())),
        Type::Array | Type::Object if depth < MAX_DEPTH => {}
        _ => return Ok(None),
    }
    let Some(object) = value.as_object() else { return Ok(None) };
    match proto_of(object) {
        Proto::Array if value.is_array() => map_items(ctx, object, |item| from_json(ctx, item, depth + 1)),
        Proto::Plain if !value.is_array() => {
            let keys = object.own_keys::<Atom>(Filter::default()).collect::<quickjs::Result<Vec<_>>>()?;
            if let [key] = keys.as_slice() {
                let Some(name) = text(ctx, key.to_string()) else { return Ok(None) };
                if name.starts_with('$') {
                    let item: Value = object.get(key.clone())?;
                    let Some(encoded) = item.as_string().and_then(|s| text(ctx, s.to_string())) else {
                        return Ok(None);
                    };
                    let Some(bytes) = base64_decode(&encoded) else { return Ok(None) };
                    return Ok(match (name.as_str(), <[u8; 8]>::try_from(bytes.as_slice())) {
                        ("$bytes", _) => Some(ArrayBuffer::new_copy(ctx.clone(), &bytes)?.into_value()),
                        ("$integer", Ok(b)) => Some(Value::new_big_int(ctx.clone(), i64::from_le_bytes(b))?),
                        ("$float", Ok(b)) if is_special(f64::from_le_bytes(b)) => {
                            Some(Value::new_float(ctx.clone(), f64::from_le_bytes(b)))
                        }
                        _ => None,
                    });
                }
            }
            let out = Object::new(ctx.clone())?;
            for key in keys {
                if !text(ctx, key.to_string()).is_some_and(|name| valid_field(&name)) {
                    return Ok(None);
                }
                let item: Value = object.get(key.clone())?;
                let Some(item) = from_json(ctx, &item, depth + 1)? else { return Ok(None) };
                out.set(key, item)?;
            }
            Ok(Some(out.into_value()))
        }
        _ => Ok(None),
    }
}

/// `convexToJson(value)`, or `undefined` to run the original.
pub(crate) fn convex_to_json<'js>(ctx: Ctx<'js>, value: Value<'js>) -> quickjs::Result<Value<'js>> {
    Ok(to_json(&ctx, &value, 0, false)?.unwrap_or_else(|| Value::new_undefined(ctx)))
}

/// `patchValueToJson(value)`, or `undefined` to run the original.
pub(crate) fn patch_value_to_json<'js>(ctx: Ctx<'js>, value: Value<'js>) -> quickjs::Result<Value<'js>> {
    Ok(to_json(&ctx, &value, 0, true)?.unwrap_or_else(|| Value::new_undefined(ctx)))
}

fn to_json<'js>(
    ctx: &Ctx<'js>,
    value: &Value<'js>,
    depth: usize,
    top_level_undefined: bool,
) -> quickjs::Result<Option<Value<'js>>> {
    match value.type_of() {
        Type::Null | Type::Bool | Type::Int | Type::String => return Ok(Some(value.clone())),
        Type::Float => {
            let f = value.as_float().unwrap_or(f64::NAN);
            return Ok(Some(if is_special(f) {
                wrap(ctx, "$float", string(ctx, &base64_encode(&f.to_le_bytes()))?)?
            } else {
                value.clone()
            }));
        }
        Type::BigInt => {
            return Ok(match int64_of(ctx, value)? {
                Some(n) => Some(wrap(ctx, "$integer", string(ctx, &base64_encode(&n.to_le_bytes()))?)?),
                None => None,
            });
        }
        Type::Array | Type::Object if depth < MAX_DEPTH => {}
        _ => return Ok(None),
    }
    let Some(object) = value.as_object() else { return Ok(None) };
    match proto_of(object) {
        // SAFETY: JS_IsArrayBuffer only reads the object's class.
        Proto::ArrayBuffer if unsafe { qjs::JS_IsArrayBuffer(value.as_raw()) } => {
            let Some(bytes) = buffer_bytes(ctx, object) else { return Ok(None) };
            Ok(Some(wrap(ctx, "$bytes", string(ctx, &base64_encode(&bytes))?)?))
        }
        Proto::Array if value.is_array() => map_items(ctx, object, |item| to_json(ctx, item, depth + 1, false)),
        Proto::Plain if is_plain_object(value) => {
            let mut fields = Vec::new();
            for key in object.own_keys::<Atom>(Filter::default()) {
                let key = key?;
                // Non-ASCII names sort differently in UTF-16; the original decides.
                let Some(name) = text(ctx, key.to_string()).filter(|name| name.is_ascii()) else {
                    return Ok(None);
                };
                fields.push((name, key));
            }
            fields.sort_by(|a, b| a.0.cmp(&b.0));
            let out = Object::new(ctx.clone())?;
            for (name, key) in fields {
                let item: Value = object.get(key.clone())?;
                if item.is_undefined() {
                    if top_level_undefined {
                        if !valid_field(&name) {
                            return Ok(None);
                        }
                        out.set(key, wrap(ctx, "$undefined", Value::new_null(ctx.clone()))?)?;
                    }
                    continue;
                }
                if !valid_field(&name) {
                    return Ok(None);
                }
                let Some(item) = to_json(ctx, &item, depth + 1, false)? else { return Ok(None) };
                out.set(key, item)?;
            }
            Ok(Some(out.into_value()))
        }
        _ => Ok(None),
    }
}

/// Whether an object with a plain prototype (see [`proto_of`]) is a plain object: not an array
/// or an ArrayBuffer given a plain prototype.
fn is_plain_object(value: &Value<'_>) -> bool {
    // SAFETY: JS_IsArrayBuffer only reads the object's class.
    !value.is_array() && !unsafe { qjs::JS_IsArrayBuffer(value.as_raw()) }
}

/// The bytes of an ArrayBuffer, or `None` if it is detached (the original throws its own
/// error).
fn buffer_bytes(ctx: &Ctx<'_>, object: &Object<'_>) -> Option<Vec<u8>> {
    let Some(buffer) = ArrayBuffer::from_object(object.clone()) else {
        let _ = ctx.catch();
        return None;
    };
    buffer.as_bytes().map(<[u8]>::to_vec)
}

/// The `i64` of a BigInt, or `None` if it does not fit.
fn int64_of(ctx: &Ctx<'_>, value: &Value<'_>) -> quickjs::Result<Option<i64>> {
    let mut n = 0i64;
    // SAFETY: `value` is a live BigInt of this context; JS_ToBigInt64 wraps modulo 2^64, so
    // the result is compared with the original to refuse what does not fit.
    let exact = unsafe {
        qjs::JS_ToBigInt64(ctx.as_raw().as_ptr(), &mut n, value.as_raw()) == 0 && {
            let back = Value::new_big_int(ctx.clone(), n)?;
            qjs::JS_IsStrictEqual(ctx.as_raw().as_ptr(), value.as_raw(), back.as_raw())
        }
    };
    Ok(exact.then_some(n))
}

/// A field name that both `convexToJson` and the host's decoder accept.
fn storable_field(name: &str) -> bool {
    valid_field(name) && kiln_value::validation::check_field_name(name).is_ok()
}

/// The value the host decodes from the Convex JSON that `convexToJson(value)` writes, made
/// directly (no JavaScript objects in between), for the fast `db.insert` and `db.patch`.
/// `None` wherever the package's code or the host's decoder would refuse or defer (and close
/// to the depth limit), so that the caller runs the package's own code and its own error.
pub(crate) fn value_of_js(ctx: &Ctx<'_>, value: &Value<'_>) -> quickjs::Result<Option<kiln_value::Value>> {
    stored(ctx, value, 0)
}

fn stored(ctx: &Ctx<'_>, value: &Value<'_>, depth: usize) -> quickjs::Result<Option<kiln_value::Value>> {
    use kiln_value::Value as V;
    // The decoder refuses anything nested deeper than its limit, scalars included.
    if depth + 1 >= MAX_DEPTH.min(kiln_value::limits::MAX_VALUE_DEPTH) {
        return Ok(None);
    }
    Ok(Some(match value.type_of() {
        Type::Null => V::Null,
        Type::Bool => V::Boolean(value.as_bool().unwrap_or(false)),
        Type::Int => V::Float64(f64::from(value.as_int().unwrap_or(0))),
        // Special floats travel as `$float` and come back bit for bit.
        Type::Float => V::Float64(value.as_float().unwrap_or(f64::NAN)),
        Type::String => match value.as_string().and_then(|s| text(ctx, s.to_string())) {
            Some(s) => V::String(s),
            None => return Ok(None),
        },
        Type::BigInt => match int64_of(ctx, value)? {
            Some(n) => V::Int64(n),
            None => return Ok(None),
        },
        Type::Array | Type::Object => {
            let Some(object) = value.as_object() else { return Ok(None) };
            match proto_of(object) {
                // SAFETY: JS_IsArrayBuffer only reads the object's class.
                Proto::ArrayBuffer if unsafe { qjs::JS_IsArrayBuffer(value.as_raw()) } => {
                    match buffer_bytes(ctx, object) {
                        Some(bytes) => V::Bytes(bytes),
                        None => return Ok(None),
                    }
                }
                Proto::Array if value.is_array() => {
                    let Some(array) = object.clone().into_array() else { return Ok(None) };
                    let mut items = Vec::with_capacity(array.len());
                    for i in 0..array.len() {
                        let item: Value = array.get(i)?;
                        if item.is_undefined() {
                            return Ok(None);
                        }
                        let Some(item) = stored(ctx, &item, depth + 1)? else { return Ok(None) };
                        items.push(item);
                    }
                    V::Array(items)
                }
                Proto::Plain if is_plain_object(value) => {
                    // `convexToJson` leaves out an undefined field.
                    match fields_of(ctx, object, depth)? {
                        Some((fields, _)) => V::Object(fields),
                        None => return Ok(None),
                    }
                }
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    }))
}

/// The fields of a plain object and the names of its `undefined` fields, or `None` (see
/// [`value_of_js`]).
#[allow(clippy::type_complexity)]
fn fields_of(
    ctx: &Ctx<'_>,
    object: &Object<'_>,
    depth: usize,
) -> quickjs::Result<Option<(kiln_value::Object, Vec<String>)>> {
    let mut fields = kiln_value::Object::new();
    let mut undefined = Vec::new();
    for key in object.own_keys::<Atom>(Filter::default()) {
        let key = key?;
        // Non-ASCII names sort differently in UTF-16; the package decides.
        let Some(name) = text(ctx, key.to_string()).filter(|name| name.is_ascii()) else { return Ok(None) };
        let item: Value = object.get(key)?;
        if item.is_undefined() {
            undefined.push(name);
            continue;
        }
        if !storable_field(&name) {
            return Ok(None);
        }
        let Some(item) = stored(ctx, &item, depth + 1)? else { return Ok(None) };
        fields.insert(name, item);
    }
    Ok(Some((fields, undefined)))
}

/// The fields a patch sets and the fields it removes (a top-level `undefined`), as the host
/// decodes them from `patchValueToJson(value)`, or `None` (see [`value_of_js`]); the value
/// must be a plain object.
#[allow(clippy::type_complexity)]
pub(crate) fn patch_of_js(
    ctx: &Ctx<'_>,
    value: &Value<'_>,
) -> quickjs::Result<Option<(kiln_value::Object, Vec<String>)>> {
    let Some(object) = value.as_object() else { return Ok(None) };
    if proto_of(object) != Proto::Plain || !is_plain_object(value) {
        return Ok(None);
    }
    let Some((set, removed)) = fields_of(ctx, object, 0)? else { return Ok(None) };
    Ok(removed.iter().all(|name| storable_field(name)).then_some((set, removed)))
}

/// What `jsonToConvex` makes of the Convex JSON of a value from the host (a document for the
/// fast `db.get`, a call's arguments), decoded straight from its MessagePack into JavaScript
/// values; `None` where `jsonToConvex`'s native would defer to the package (a field name it
/// does not take, the depth limit) and for anything but the host's canonical encoding (an
/// ext type, an integer beyond int64, keys not strictly ascending, bytes left over), which the
/// caller leaves to the package's own path (where a malformed value is reported).
pub(crate) fn js_of_msgpack<'js>(ctx: &Ctx<'js>, bytes: &[u8]) -> quickjs::Result<Option<Value<'js>>> {
    let mut input = bytes;
    let value = js_of_packed(ctx, &mut input, 0)?;
    Ok(value.filter(|_| input.is_empty()))
}

/// The next `n` bytes of `input`.
fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = input.split_at_checked(n)?;
    *input = rest;
    Some(head)
}

/// The next `n` bytes of `input` as a big-endian number.
fn big_endian(input: &mut &[u8], n: usize) -> Option<u64> {
    Some(take(input, n)?.iter().fold(0, |acc, &b| acc << 8 | u64::from(b)))
}

/// A length of `n` big-endian bytes.
fn packed_len(input: &mut &[u8], n: usize) -> Option<usize> {
    big_endian(input, n).and_then(|l| usize::try_from(l).ok())
}

/// A MessagePack scalar number, its marker read: an int64, a float, or neither.
enum Number {
    Int(i64),
    Float(f64),
}

fn packed_number(input: &mut &[u8], marker: rmp::Marker) -> Option<Option<Number>> {
    use rmp::Marker as M;
    let int = |n: Option<i64>| Some(n.map(Number::Int));
    match marker {
        M::FixPos(n) => int(Some(i64::from(n))),
        M::FixNeg(n) => int(Some(i64::from(n))),
        M::U8 => int(big_endian(input, 1).map(|n| n as i64)),
        M::U16 => int(big_endian(input, 2).map(|n| n as i64)),
        M::U32 => int(big_endian(input, 4).map(|n| n as i64)),
        M::U64 => int(big_endian(input, 8).and_then(|n| i64::try_from(n).ok())),
        M::I8 => int(big_endian(input, 1).map(|n| i64::from(n as u8 as i8))),
        M::I16 => int(big_endian(input, 2).map(|n| i64::from(n as u16 as i16))),
        M::I32 => int(big_endian(input, 4).map(|n| i64::from(n as u32 as i32))),
        M::I64 => int(big_endian(input, 8).map(|n| n as i64)),
        M::F32 => Some(big_endian(input, 4).map(|b| Number::Float(f64::from(f32::from_bits(b as u32))))),
        M::F64 => Some(big_endian(input, 8).map(|b| Number::Float(f64::from_bits(b)))),
        _ => None,
    }
}

fn js_of_packed<'js>(ctx: &Ctx<'js>, input: &mut &[u8], depth: usize) -> quickjs::Result<Option<Value<'js>>> {
    use javy_plugin_api::javy::quickjs::Value as Js;
    use rmp::Marker as M;
    let Some(marker) = take(input, 1).map(|b| M::from_u8(b[0])) else { return Ok(None) };
    // In Convex JSON an int64 and a special float are objects, which the decoder takes only
    // above its depth limit.
    let nested = depth < MAX_DEPTH;
    if let Some(number) = packed_number(input, marker) {
        return Ok(match number {
            Some(Number::Int(n)) if nested => Some(Js::new_big_int(ctx.clone(), n)?),
            Some(Number::Float(f)) if !is_special(f) => Some(Js::new_number(ctx.clone(), f)),
            Some(Number::Float(f)) if nested => Some(Js::new_float(ctx.clone(), f)),
            _ => None,
        });
    }
    let value = match marker {
        M::Null => Js::new_null(ctx.clone()),
        M::True => Js::new_bool(ctx.clone(), true),
        M::False => Js::new_bool(ctx.clone(), false),
        M::FixStr(_) | M::Str8 | M::Str16 | M::Str32 => {
            let Some(text) = packed_str(input, marker) else { return Ok(None) };
            string(ctx, text)?
        }
        M::Bin8 | M::Bin16 | M::Bin32 if nested => {
            let width = match marker {
                M::Bin8 => 1,
                M::Bin16 => 2,
                _ => 4,
            };
            let Some(bytes) = packed_len(input, width).and_then(|n| take(input, n)) else { return Ok(None) };
            ArrayBuffer::new_copy(ctx.clone(), bytes)?.into_value()
        }
        M::FixArray(_) | M::Array16 | M::Array32 if nested => {
            let n = match marker {
                M::FixArray(n) => Some(usize::from(n)),
                M::Array16 => packed_len(input, 2),
                _ => packed_len(input, 4),
            };
            // Every item takes a byte at least: a longer claim is not the host's encoding.
            let Some(n) = n.filter(|&n| n <= input.len()) else { return Ok(None) };
            let out = Array::new(ctx.clone())?;
            for i in 0..n {
                let Some(item) = js_of_packed(ctx, input, depth + 1)? else { return Ok(None) };
                out.set(i, item)?;
            }
            out.into_value()
        }
        M::FixMap(_) | M::Map16 | M::Map32 if nested => {
            let n = match marker {
                M::FixMap(n) => Some(usize::from(n)),
                M::Map16 => packed_len(input, 2),
                _ => packed_len(input, 4),
            };
            let Some(n) = n.filter(|&n| n <= input.len() / 2) else { return Ok(None) };
            let out = Object::new(ctx.clone())?;
            let mut previous: Option<&str> = None;
            for _ in 0..n {
                let Some(key_marker) = take(input, 1).map(|b| M::from_u8(b[0])) else { return Ok(None) };
                let Some(name) = packed_str(input, key_marker) else { return Ok(None) };
                if !valid_field(name) || previous.is_some_and(|p| p >= name) {
                    return Ok(None);
                }
                previous = Some(name);
                let Some(item) = js_of_packed(ctx, input, depth + 1)? else { return Ok(None) };
                out.set(name, item)?;
            }
            out.into_value()
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

/// The text of a MessagePack string whose marker was read; `None` for another marker, a short
/// input or invalid UTF-8.
fn packed_str<'a>(input: &mut &'a [u8], marker: rmp::Marker) -> Option<&'a str> {
    use rmp::Marker as M;
    let n = match marker {
        M::FixStr(n) => usize::from(n),
        M::Str8 => packed_len(input, 1)?,
        M::Str16 => packed_len(input, 2)?,
        M::Str32 => packed_len(input, 4)?,
        _ => return None,
    };
    std::str::from_utf8(take(input, n)?).ok()
}

/// The JSON that `JSON.stringify(value)` writes, for plain objects, arrays and primitives;
/// `None` for anything else (`toJSON`, boxed primitives, proxies, BigInt), which the caller
/// then gives to `JSON.stringify` itself.
pub(crate) fn json_of_js(value: &Value<'_>) -> quickjs::Result<Option<Json>> {
    json_of(value, 0)
}

fn json_of(value: &Value<'_>, depth: usize) -> quickjs::Result<Option<Json>> {
    match value.type_of() {
        Type::Null => return Ok(Some(Json::Null)),
        Type::Bool => return Ok(Some(Json::Bool(value.as_bool().unwrap_or(false)))),
        Type::Int => return Ok(Some(Json::from(value.as_int().unwrap_or(0)))),
        Type::Float => {
            // `JSON.stringify` writes -0 as 0 and non-finite numbers as null.
            let f = value.as_float().unwrap_or(f64::NAN);
            let f = if f == 0.0 { 0.0 } else { f };
            return Ok(Some(serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)));
        }
        Type::String => return Ok(value.as_string().and_then(|s| text(value.ctx(), s.to_string())).map(Json::String)),
        Type::Array | Type::Object if depth < MAX_DEPTH => {}
        _ => return Ok(None),
    }
    let Some(object) = value.as_object() else { return Ok(None) };
    let proto = proto_of(object);
    let is_array = value.is_array();
    if !((proto == Proto::Array && is_array) || (proto == Proto::Plain && !is_array))
        || object.get::<_, Value>("toJSON")?.is_function()
    {
        return Ok(None);
    }
    // What `JSON.stringify` leaves out of objects (and writes as null in arrays).
    let omitted =
        |v: &Value| matches!(v.type_of(), Type::Undefined | Type::Function | Type::Constructor | Type::Symbol);
    if is_array {
        let Some(array) = object.clone().into_array() else { return Ok(None) };
        let mut out = Vec::with_capacity(array.len());
        for i in 0..array.len() {
            let item: Value = array.get(i)?;
            out.push(if omitted(&item) {
                Json::Null
            } else {
                let Some(item) = json_of(&item, depth + 1)? else { return Ok(None) };
                item
            });
        }
        return Ok(Some(Json::Array(out)));
    }
    let mut out = serde_json::Map::new();
    for key in object.own_keys::<Atom>(Filter::default()) {
        let key = key?;
        let item: Value = object.get(key.clone())?;
        if omitted(&item) {
            continue;
        }
        let Some(item) = json_of(&item, depth + 1)? else { return Ok(None) };
        let Some(name) = text(value.ctx(), key.to_string()) else { return Ok(None) };
        out.insert(name, item);
    }
    Ok(Some(Json::Object(out)))
}

/// The value `JSON.parse` makes of `json` (own data properties, so `__proto__` is a field).
pub(crate) fn js_of_json<'js>(ctx: &Ctx<'js>, json: &Json) -> quickjs::Result<Value<'js>> {
    Ok(match json {
        Json::Null => Value::new_null(ctx.clone()),
        Json::Bool(b) => Value::new_bool(ctx.clone(), *b),
        Json::Number(n) => match n.as_f64().unwrap_or(f64::NAN) {
            f if f == 0.0 && f.is_sign_negative() => Value::new_float(ctx.clone(), f),
            f => Value::new_number(ctx.clone(), f),
        },
        Json::String(s) => string(ctx, s)?,
        Json::Array(items) => {
            let out = Array::new(ctx.clone())?;
            for (i, item) in items.iter().enumerate() {
                out.set(i, js_of_json(ctx, item)?)?;
            }
            out.into_value()
        }
        Json::Object(fields) => {
            let out = Object::new(ctx.clone())?;
            for (key, item) in fields {
                out.prop(key.as_str(), Property::from(js_of_json(ctx, item)?).writable().configurable().enumerable())?;
            }
            out.into_value()
        }
    })
}
