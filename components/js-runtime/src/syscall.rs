//! The syscalls of the `convex` package's `convex/server` code, mapped onto the WIT imports.
//!
//! Arguments and results are Convex JSON: as text for `Convex.syscall` (each reply is "0" +
//! result JSON or "1" + error JSON), or as values for `__kiln_fast.syscall`, which the SDK
//! points the package's syscall helpers at (no `JSON.stringify`/`JSON.parse` around the call).
//! Values cross the WIT boundary as MessagePack.

use std::cell::RefCell;
use std::collections::HashMap;

use javy_plugin_api::javy::quickjs::{
    self, ArrayBuffer, Ctx, Exception, Function, Object, TypedArray, Value as JsValue, qjs,
};

use kiln_value::{Value, from_convex_json, from_msgpack, json::patch_from_convex_json, to_convex_json, to_msgpack};
use serde_json::{Value as Json, json};

use crate::kiln::platform::types::{Error, Header, HttpRequest};
use crate::kiln::platform::{auth, db, functions, http, scheduler, search, storage};
use crate::{call_kind, error, values};

thread_local! {
    static STREAMS: RefCell<(u32, HashMap<u32, db::QueryStream>)> = RefCell::new((0, HashMap::new()));
}

/// Drops every query stream of the call.
pub(crate) fn close_streams() {
    STREAMS.with(|s| s.borrow_mut().1.clear());
}

/// Refuses syscalls while the app is being loaded (there is no call to serve them).
fn in_call(op: &str) -> Result<(), Error> {
    match call_kind() {
        Some(_) => Ok(()),
        None => Err(error("NotAvailable", format!("{op} cannot be called while the app is being loaded"))),
    }
}

/// Runs one syscall with parsed arguments.
fn run(op: &str, args: &Json) -> Result<Json, Error> {
    in_call(op)?;
    dispatch(op, args)
}

/// The Convex JSON of an error's data, if it has any.
fn error_data(e: &Error) -> Option<Json> {
    e.data.as_deref().and_then(|d| from_msgpack(d).ok()).map(|data| to_convex_json(&data))
}

/// Runs one syscall with arguments as JSON text and encodes its reply.
pub(crate) fn call(op: &str, args: &str) -> String {
    let result = serde_json::from_str::<Json>(args)
        .map_err(|e| error("InvalidSyscallArgs", format!("{op}: arguments are not JSON: {e}")))
        .and_then(|args| run(op, &args));
    match result {
        Ok(v) => format!("0{v}"),
        Err(e) => {
            let mut reply = json!({"code": e.code, "message": e.message});
            if let Some(data) = error_data(&e) {
                reply["data"] = data;
            }
            format!("1{reply}")
        }
    }
}

/// `__kiln_fast.syscall(op, arg)`: what `Convex.syscall(op, JSON.stringify(arg))` followed by
/// `JSON.parse` returns, without the text. A failure is thrown as an `Error` with `code` (and
/// `data`), like the prelude's `Convex.syscall` throws it.
pub(crate) fn call_value<'js>(ctx: Ctx<'js>, op: String, arg: JsValue<'js>) -> quickjs::Result<JsValue<'js>> {
    let args = match values::json_of_js(&arg)? {
        Some(args) => Ok(args),
        // Something only `JSON.stringify` itself knows how to write (`toJSON`, proxies, ...).
        None => {
            let json: Object = ctx.globals().get("JSON")?;
            let stringify: Function = json.get("stringify")?;
            let text: Option<String> = stringify.call((arg,))?;
            serde_json::from_str::<Json>(text.as_deref().unwrap_or("undefined"))
                .map_err(|e| error("InvalidSyscallArgs", format!("{op}: arguments are not JSON: {e}")))
        }
    };
    match args.and_then(|args| run(&op, &args)) {
        Ok(reply) => values::js_of_json(&ctx, &reply),
        Err(e) => Err(throw(&ctx, &e)?),
    }
}

/// Throws a syscall's failure as the prelude's `Convex.syscall` does: an `Error` with `code`
/// (and `data`).
fn throw(ctx: &Ctx<'_>, e: &Error) -> quickjs::Result<quickjs::Error> {
    let exception = Exception::from_message(ctx.clone(), &e.message)?;
    let object = exception.as_object();
    object.set("code", e.code.as_str())?;
    if let Some(data) = error_data(e) {
        object.set("data", values::js_of_json(ctx, &data)?)?;
    }
    Ok(ctx.throw(exception.into_value()))
}

/// The Rust text of a JavaScript string, or `None`.
fn string_of(ctx: &Ctx<'_>, value: &JsValue<'_>) -> Option<String> {
    value.as_string().and_then(|s| values::text(ctx, s.to_string()))
}

// The natives behind the prelude's fast `db.get`, `db.insert` and `db.patch`. Each does what
// the package's method does through `1.0/get`, `1.0/insert` or `1.0/shallowMerge`, with the
// values converted directly, and answers `undefined` *before* any syscall for whatever it does
// not take, so that the package's own method then runs (and reports its own error).

/// `__kiln_fast.dbGet(table, id)`: a promise of the document, or null for no document
/// (`undefined`: run the package's `get`, which is only a read).
pub(crate) fn db_get<'js>(ctx: Ctx<'js>, table: JsValue<'js>, id: JsValue<'js>) -> quickjs::Result<JsValue<'js>> {
    let defer = JsValue::new_undefined(ctx.clone());
    let Some(id) = string_of(&ctx, &id) else { return Ok(defer) };
    let table = if table.is_undefined() {
        None
    } else {
        let Some(table) = string_of(&ctx, &table) else { return Ok(defer) };
        Some(table)
    };
    match in_call("1.0/get").and_then(|()| db::get(&id, table.as_deref())) {
        Ok(Some(doc)) => match values::js_of_msgpack(&ctx, &doc)? {
            Some(doc) => fulfilled(&ctx, &doc),
            None => Ok(defer),
        },
        Ok(None) => Ok(JsValue::new_null(ctx)),
        Err(e) => Err(throw(&ctx, &e)?),
    }
}

/// A promise fulfilled with `value`, as `Promise.resolve(value)` makes it (the intrinsic
/// `Promise`): made here, it saves the fast paths a JavaScript call of `Promise.resolve`.
fn fulfilled<'js>(ctx: &Ctx<'js>, value: &JsValue<'js>) -> quickjs::Result<JsValue<'js>> {
    let raw = ctx.as_raw().as_ptr();
    // SAFETY: `raw` is the live context of `value`, which the call only reads; the promise it
    // returns is a new reference, owned by the `JsValue` made of it.
    unsafe {
        let promise = qjs::JS_NewSettledPromise(raw, false, value.as_raw());
        if qjs::JS_IsException(promise) {
            return Err(quickjs::Error::Exception);
        }
        Ok(JsValue::from_raw(ctx.clone(), promise))
    }
}

/// `__kiln_fast.dbInsert(table, value)`: a promise of the new document's id.
pub(crate) fn db_insert<'js>(ctx: Ctx<'js>, table: JsValue<'js>, value: JsValue<'js>) -> quickjs::Result<JsValue<'js>> {
    let defer = JsValue::new_undefined(ctx.clone());
    // The package refuses system tables itself.
    let Some(table) = string_of(&ctx, &table).filter(|t| !t.starts_with('_')) else { return Ok(defer) };
    let Some(value) = values::value_of_js(&ctx, &value)? else { return Ok(defer) };
    match in_call("1.0/insert").and_then(|()| db::insert(&table, &to_msgpack(&value))) {
        Ok(id) => fulfilled(&ctx, &quickjs::String::from_str(ctx.clone(), &id)?.into_value()),
        Err(e) => Err(throw(&ctx, &e)?),
    }
}

/// `__kiln_fast.dbPatch(id, value)`: `true` once the patch is applied.
pub(crate) fn db_patch<'js>(ctx: Ctx<'js>, id: JsValue<'js>, value: JsValue<'js>) -> quickjs::Result<JsValue<'js>> {
    let defer = JsValue::new_undefined(ctx.clone());
    let Some(id) = string_of(&ctx, &id) else { return Ok(defer) };
    let Some((set, remove)) = values::patch_of_js(&ctx, &value)? else { return Ok(defer) };
    match in_call("1.0/shallowMerge").and_then(|()| db::patch(&id, &to_msgpack(&Value::Object(set)), &remove)) {
        Ok(()) => Ok(JsValue::new_bool(ctx, true)),
        Err(e) => Err(throw(&ctx, &e)?),
    }
}

/// `__kiln_fast.take(query, n, decode)`: the results of a `QueryImpl` that is still being
/// prepared, `n` at most (-1: all), as the package's `take(n)` (or `collect()`) answers them,
/// read in one native call: the query opened once and drained here, where the package takes a
/// `queryStream`, a `queryStreamNext` per document plus one, and a `queryCleanup`, each behind
/// an `await`. The query's state ends as the package leaves it (`closed` after `take`,
/// `consumed` after `collect`). `decode` is the package's `jsonToConvex`, for a document the
/// native decoder leaves to it. `undefined`, before anything is read, for whatever it does not
/// take (another state, an argument the package would refuse), so the package's code runs on.
pub(crate) fn query_take<'js>(
    ctx: Ctx<'js>,
    query: JsValue<'js>,
    n: JsValue<'js>,
    decode: JsValue<'js>,
) -> quickjs::Result<JsValue<'js>> {
    let defer = JsValue::new_undefined(ctx.clone());
    let Some(decode) = decode.as_function() else { return Ok(defer) };
    let limit = match n.as_number() {
        Some(-1.0) => None,
        Some(n) if n >= 0.0 && n.fract() == 0.0 && n <= f64::from(u32::MAX) => Some(n as u32),
        _ => return Ok(defer),
    };
    let Some(query) = query.as_object() else { return Ok(defer) };
    let Ok(state) = query.get::<_, Object>("state") else { return Ok(defer) };
    if state.get::<_, Option<String>>("type").ok().flatten().as_deref() != Some("preparing") {
        return Ok(defer);
    }
    let Some(mut json) = values::json_of_js(&state.get::<_, JsValue>("query")?)? else { return Ok(defer) };
    let ended = |how: &str| -> quickjs::Result<()> {
        let next = Object::new(ctx.clone())?;
        next.set("type", how)?;
        query.set("state", next)
    };
    if let Some(n) = limit {
        // What `limit(n)` does: the operator added, this query closed to further chaining.
        let Some(operators) = json.get_mut("operators").and_then(Json::as_array_mut) else { return Ok(defer) };
        operators.push(json!({ "limit": n }));
        ended("closed")?;
    }
    let stream = match in_call("1.0/queryStream").and_then(|()| db::open_query(&json.to_string())) {
        Ok(stream) => stream,
        Err(e) => return Err(throw(&ctx, &e)?),
    };
    if limit.is_none() {
        ended("consumed")?;
    }
    let out = quickjs::Array::new(ctx.clone())?;
    let mut count = 0;
    loop {
        let doc = match stream.next() {
            Ok(Some(doc)) => doc,
            Ok(None) => break,
            // As the package's `performAsyncSyscall` rethrows a failed `queryStreamNext` (the
            // host's database errors carry no `data`).
            Err(e) if e.data.is_none() => {
                return Err(ctx.throw(Exception::from_message(ctx.clone(), &e.message)?.into_value()));
            }
            Err(e) => return Err(throw(&ctx, &e)?),
        };
        let value = match values::js_of_msgpack(&ctx, &doc)? {
            Some(value) => value,
            None => {
                let json = json_of(&doc).map_err(|e| throw(&ctx, &e).unwrap_or(quickjs::Error::Exception))?;
                decode.call((values::js_of_json(&ctx, &json)?,))?
            }
        };
        out.set(count, value)?;
        count += 1;
    }
    Ok(out.into_value())
}

/// `1.0/get`: a document by id (and table, if given).
fn get_document(id: &str, table: Option<&str>) -> Result<Option<Value>, Error> {
    db::get(id, table)?.map(|doc| value_of(&doc)).transpose()
}

fn bad_args(op: &str, what: &str) -> Error {
    error("InvalidSyscallArgs", format!("{op}: {what}"))
}

fn not_supported(what: &str) -> Error {
    error("NotSupported", format!("{what} is not supported by this version of Kiln"))
}

fn str_arg<'a>(op: &str, args: &'a Json, key: &str) -> Result<&'a str, Error> {
    args.get(key).and_then(Json::as_str).ok_or_else(|| bad_args(op, &format!("`{key}` must be a string")))
}

fn opt_str_arg(args: &Json, key: &str) -> Option<String> {
    args.get(key).and_then(Json::as_str).map(str::to_owned)
}

fn value_arg(op: &str, args: &Json, key: &str) -> Result<Vec<u8>, Error> {
    let j = args.get(key).ok_or_else(|| bad_args(op, &format!("missing `{key}`")))?;
    let v = from_convex_json(j).map_err(|e| error(e.code(), format!("{op}: {e}")))?;
    Ok(to_msgpack(&v))
}

/// A value the host sent.
fn value_of(bytes: &[u8]) -> Result<Value, Error> {
    from_msgpack(bytes).map_err(|e| error(e.code(), format!("invalid value from the host: {e}")))
}

fn json_of(bytes: &[u8]) -> Result<Json, Error> {
    value_of(bytes).map(|v| to_convex_json(&v))
}

/// The function a syscall names: `module:export`, a mounted component's function as the
/// package references it (`_reference/childComponent/…`) or a handle (`function://…`), all
/// resolved by the host.
fn function_name(op: &str, args: &Json) -> Result<String, Error> {
    if let Some(name) = opt_str_arg(args, "name") {
        return Ok(name);
    }
    if let Some(reference) = opt_str_arg(args, "reference") {
        return Ok(reference);
    }
    if let Some(handle) = opt_str_arg(args, "functionHandle") {
        return Ok(handle);
    }
    Err(error("UnsupportedSyscall", format!("{op}: no function named (`name`, `reference` or `functionHandle`)")))
}

fn dispatch(op: &str, args: &Json) -> Result<Json, Error> {
    Ok(match op {
        // `db.system.get`: the host lets apps read the system tables Convex exposes.
        "1.0/get" => match get_document(str_arg(op, args, "id")?, opt_str_arg(args, "table").as_deref())? {
            Some(doc) => to_convex_json(&doc),
            None => Json::Null,
        },
        "1.0/insert" => {
            let id = db::insert(str_arg(op, args, "table")?, &value_arg(op, args, "value")?)?;
            json!({ "_id": id })
        }
        "1.0/shallowMerge" => {
            let patch = patch_from_convex_json(args.get("value").unwrap_or(&Json::Null))
                .map_err(|e| error(e.code(), format!("{op}: {e}")))?;
            let mut set = kiln_value::Object::new();
            let mut remove = Vec::new();
            for (k, v) in patch {
                match v {
                    Some(v) => {
                        set.insert(k, v);
                    }
                    None => remove.push(k),
                }
            }
            db::patch(str_arg(op, args, "id")?, &to_msgpack(&Value::Object(set)), &remove)?;
            Json::Null
        }
        "1.0/replace" => {
            db::replace(str_arg(op, args, "id")?, &value_arg(op, args, "value")?)?;
            Json::Null
        }
        "1.0/remove" => {
            db::delete(str_arg(op, args, "id")?)?;
            Json::Null
        }
        "1.0/db/normalizeId" => {
            let id = db::normalize_id(str_arg(op, args, "table")?, str_arg(op, args, "idString")?)?;
            json!({ "id": id })
        }
        "1.0/queryStream" => {
            let query = args.get("query").ok_or_else(|| bad_args(op, "missing `query`"))?;
            let stream = db::open_query(&query.to_string())?;
            let id = STREAMS.with(|s| {
                let mut s = s.borrow_mut();
                let id = s.0;
                s.0 = s.0.wrapping_add(1);
                s.1.insert(id, stream);
                id
            });
            json!({ "queryId": id })
        }
        "1.0/queryStreamNext" => {
            let id =
                args.get("queryId").and_then(Json::as_u64).ok_or_else(|| bad_args(op, "`queryId` must be a number"))?;
            let next = STREAMS.with(|s| {
                let s = s.borrow();
                let stream =
                    s.1.get(&(id as u32))
                        .ok_or_else(|| error("QueryStreamNotFound", format!("query {id} is not open")))?;
                stream.next()
            })?;
            match next {
                Some(doc) => json!({ "value": json_of(&doc)?, "done": false }),
                None => json!({ "value": null, "done": true }),
            }
        }
        "1.0/queryCleanup" => {
            let id = args.get("queryId").and_then(Json::as_u64).unwrap_or(u64::MAX);
            let removed = STREAMS.with(|s| s.borrow_mut().1.remove(&(id as u32)).is_some());
            json!(removed)
        }
        "1.0/queryPage" => {
            let query = args.get("query").ok_or_else(|| bad_args(op, "missing `query`"))?;
            let page_size = args
                .get("pageSize")
                .and_then(Json::as_f64)
                .ok_or_else(|| bad_args(op, "`pageSize` must be a number"))?;
            let limit =
                |name: &str| args.get(name).and_then(Json::as_f64).map(|n| n.clamp(0.0, u32::MAX as f64) as u32);
            let page = db::query_page(
                &query.to_string(),
                opt_str_arg(args, "cursor").as_deref(),
                opt_str_arg(args, "endCursor").as_deref(),
                page_size.clamp(0.0, u32::MAX as f64) as u32,
                limit("maximumRowsRead"),
                limit("maximumBytesRead"),
            )?;
            let docs = page.documents.iter().map(|d| json_of(d)).collect::<Result<Vec<_>, _>>()?;
            json!({
                "page": docs,
                "isDone": page.is_done,
                "continueCursor": page.continue_cursor,
                "splitCursor": page.split_cursor,
                "pageStatus": page.page_status,
            })
        }
        "1.0/getUserIdentity" => match auth::get_user_identity() {
            Some(identity) => json_of(&identity)?,
            None => Json::Null,
        },
        "1.0/schedule" | "1.0/actions/schedule" => {
            let ts = args.get("ts").and_then(Json::as_f64).ok_or_else(|| bad_args(op, "`ts` must be a number"))?;
            let id = scheduler::schedule(&function_name(op, args)?, &value_arg(op, args, "args")?, ts * 1000.0)?;
            json!(id)
        }
        "1.0/createFunctionHandle" => json!(functions::create_function_handle(&function_name(op, args)?)?),
        "1.0/cancel_job" | "1.0/actions/cancel_job" => {
            scheduler::cancel(str_arg(op, args, "id")?)?;
            Json::Null
        }
        "1.0/runUdf" => {
            let (name, fn_args) = (function_name(op, args)?, value_arg(op, args, "args")?);
            // Options Kiln does not honour yet are refused by name, not ignored.
            if args.get("transactionLimits").is_some_and(|l| !l.is_null()) {
                return Err(not_supported(&format!(
                    "{name}: `transactionLimits` in the options of ctx.runQuery/ctx.runMutation"
                )));
            }
            let result = match args.get("udfType").and_then(Json::as_str) {
                Some("snapshotQuery") => {
                    return Err(not_supported(&format!(
                        "{name}: ctx.runQuery with `useStaleSnapshot` (a query at a stale snapshot)"
                    )));
                }
                Some("query") => functions::run_query(&name, &fn_args)?,
                Some("mutation") => functions::run_mutation(&name, &fn_args)?,
                other => return Err(bad_args(op, &format!("unknown udfType {other:?}"))),
            };
            json_of(&result)?
        }
        "1.0/actions/query" | "1.0/actions/mutation" | "1.0/actions/action" => {
            let (name, fn_args) = (function_name(op, args)?, value_arg(op, args, "args")?);
            let result = match op {
                "1.0/actions/query" => functions::run_query(&name, &fn_args)?,
                "1.0/actions/mutation" => functions::run_mutation(&name, &fn_args)?,
                _ => functions::run_action(&name, &fn_args)?,
            };
            json_of(&result)?
        }
        "1.0/actions/vectorSearch" => {
            let query = args.get("query").ok_or_else(|| bad_args(op, "missing `query`"))?;
            let index = str_arg(op, query, "indexName")?;
            let vector: Vec<f64> = query
                .get("vector")
                .and_then(Json::as_array)
                .and_then(|v| v.iter().map(Json::as_f64).collect::<Option<Vec<f64>>>())
                .ok_or_else(|| bad_args(op, "`vector` must be an array of numbers"))?;
            // The host checks the range (1 to 256) and says so; here only the type.
            let limit = match query.get("limit").filter(|l| !l.is_null()) {
                None => None,
                Some(l) => match l.as_f64() {
                    Some(n) if n.fract() == 0.0 && n >= 0.0 => Some(n.min(u32::MAX as f64) as u32),
                    _ => {
                        return Err(bad_args(
                            op,
                            &format!("`limit` must be a whole number between 1 and 256, not {l}"),
                        ));
                    }
                },
            };
            let filter = query.get("expressions").filter(|e| !e.is_null()).map(Json::to_string);
            let results = search::vector_search(index, &vector, limit, filter.as_deref())?;
            json!({ "results": results.iter().map(|m| json!({"_id": m.id, "_score": m.score})).collect::<Vec<_>>() })
        }
        "1.0/storageGetUrl" => json!(storage::get_url(str_arg(op, args, "storageId")?)?),
        "1.0/storageGetMetadata" => match storage::get_metadata(str_arg(op, args, "storageId")?)? {
            Some(m) => json_of(&m)?,
            None => Json::Null,
        },
        "1.0/storageGenerateUploadUrl" => json!(storage::generate_upload_url()?),
        "1.0/storageDelete" => {
            storage::delete(str_arg(op, args, "storageId")?)?;
            Json::Null
        }
        "kiln/fetch" => {
            let headers = args
                .get("headers")
                .and_then(Json::as_array)
                .map(|hs| {
                    hs.iter()
                        .filter_map(|h| {
                            Some(Header { name: h.get(0)?.as_str()?.to_owned(), value: h.get(1)?.as_str()?.to_owned() })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let request = HttpRequest {
                method: str_arg(op, args, "method")?.to_owned(),
                url: str_arg(op, args, "url")?.to_owned(),
                headers,
                body: unhex(str_arg(op, args, "body")?).ok_or_else(|| bad_args(op, "`body` must be hex"))?,
            };
            let response = http::fetch(&request)?;
            json!({
                "status": response.status,
                "headers": response.headers.iter().map(|h| json!([h.name, h.value])).collect::<Vec<_>>(),
                "body": hex(&response.body),
            })
        }
        _ => {
            return Err(error(
                "UnsupportedSyscall",
                format!("The operation {op} is not supported by this version of Kiln"),
            ));
        }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// `__kiln_native.storageStore(bytes, contentType, sha256?)`: stores the bytes (a
/// `Uint8Array`) as a new file and returns its storage id (`ctx.storage.store` in actions).
pub(crate) fn storage_store<'js>(
    ctx: Ctx<'js>,
    bytes: TypedArray<'js, u8>,
    content_type: String,
    sha256: Option<String>,
) -> quickjs::Result<String> {
    let data = bytes.as_bytes().unwrap_or_default();
    let content_type = (!content_type.is_empty()).then_some(content_type);
    match in_call("storage/storeBlob").and_then(|()| storage::store(data, content_type.as_deref(), sha256.as_deref())) {
        Ok(id) => Ok(id),
        Err(e) => Err(throw(&ctx, &e)?),
    }
}

/// `__kiln_native.storageGet(id)`: `[bytes, contentType]` of a stored file, or `null`
/// (`ctx.storage.get` in actions).
pub(crate) fn storage_get<'js>(ctx: Ctx<'js>, id: String) -> quickjs::Result<JsValue<'js>> {
    match in_call("storage/getBlob").and_then(|()| storage::get(&id)) {
        Ok(None) => Ok(JsValue::new_null(ctx)),
        Ok(Some(file)) => {
            let pair = quickjs::Array::new(ctx.clone())?;
            pair.set(0, ArrayBuffer::new(ctx.clone(), file.bytes)?)?;
            match file.content_type {
                Some(t) => pair.set(1, t)?,
                None => pair.set(1, JsValue::new_null(ctx.clone()))?,
            }
            Ok(pair.into_value())
        }
        Err(e) => Err(throw(&ctx, &e)?),
    }
}
