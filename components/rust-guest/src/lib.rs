//! A counter written in Rust against world `app`, with no JavaScript involved: one query
//! (`counter:get`), one mutation (`counter:increment`), and `counter:probe`, which tries to
//! reach the filesystem and the clock through std (and gets only what the platform allows).

use kiln_value::{Object, Value, from_msgpack, to_msgpack};

wit_bindgen::generate!({ world: "app", path: "../../wit" });

use exports::kiln::platform::guest::{Call, FunctionInfo, Guest, Manifest};
use kiln::platform::types::{Error, FunctionKind, Visibility};
use kiln::platform::{db, env, log};

const TABLE: &str = "counters";

fn error(code: &str, message: impl Into<String>) -> Error {
    Error { code: code.to_owned(), message: message.into(), data: None }
}

fn install_hooks() {
    fn write(_fd: u32, bytes: &[u8]) {
        log::write(log::Level::Log, String::from_utf8_lossy(bytes).trim_end());
    }
    fn now_ns() -> u64 {
        (env::now_ms() * 1e6) as u64
    }
    fn fill_random(buf: &mut [u8]) {
        let mut x = env::seed() | 1;
        for b in buf {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    kiln_wasi_stubs::install(kiln_wasi_stubs::Hooks { write, now_ns, fill_random });
}

fn name_arg(args: &[u8]) -> Result<String, Error> {
    match from_msgpack(args) {
        Ok(Value::Object(o)) => match o.get("name") {
            None => Ok("default".to_owned()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(error("InvalidArgs", format!("`name` must be a string, not {}", other.kind().name()))),
        },
        Ok(_) => Err(error("InvalidArgs", "arguments must be an object")),
        Err(e) => Err(error(e.code(), e.to_string())),
    }
}

/// The counter document named `name`, if any.
fn find(name: &str) -> Result<Option<Object>, Error> {
    let query = format!(
        r#"{{"source":{{"type":"FullTableScan","tableName":"{TABLE}","order":null}},"operators":[{{"filter":{{"$eq":[{{"$field":"name"}},{{"$literal":{}}}]}}}},{{"limit":1}}]}}"#,
        kiln_value::to_convex_json(&Value::from(name))
    );
    let stream = db::open_query(&query)?;
    match stream.next()? {
        Some(bytes) => match from_msgpack(&bytes) {
            Ok(Value::Object(o)) => Ok(Some(o)),
            _ => Err(error("InvalidDocument", "the host returned a document that is not an object")),
        },
        None => Ok(None),
    }
}

fn count_of(doc: &Object) -> i64 {
    match doc.get("count") {
        Some(Value::Int64(n)) => *n,
        _ => 0,
    }
}

fn get(args: &[u8]) -> Result<Value, Error> {
    let name = name_arg(args)?;
    Ok(Value::Int64(find(&name)?.as_ref().map_or(0, count_of)))
}

fn increment(args: &[u8]) -> Result<Value, Error> {
    let name = name_arg(args)?;
    let next = match find(&name)? {
        Some(doc) => {
            let n = count_of(&doc) + 1;
            let id = doc.get("_id").and_then(Value::as_str).ok_or_else(|| error("InvalidDocument", "no _id"))?;
            let set: Object = [("count".to_owned(), Value::Int64(n))].into();
            db::patch(id, &to_msgpack(&Value::Object(set)), &[])?;
            n
        }
        None => {
            let doc: Object =
                [("name".to_owned(), Value::from(name.as_str())), ("count".to_owned(), Value::Int64(1))].into();
            db::insert(TABLE, &to_msgpack(&Value::Object(doc)))?;
            1
        }
    };
    println!("counter {name} is now {next}");
    Ok(Value::Int64(next))
}

/// What std's filesystem and clock give a guest: an error and the call's frozen time.
fn probe() -> Value {
    let fs = match std::fs::read_to_string("/etc/hostname") {
        Ok(_) => "readable".to_owned(),
        Err(e) => e.to_string(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(-1.0);
    let object: Object = [("fs".to_owned(), Value::from(fs)), ("nowMs".to_owned(), Value::Float64(now))].into();
    Value::Object(object)
}

struct Counter;

impl Guest for Counter {
    fn invoke(call: Call) -> Result<Vec<u8>, Error> {
        install_hooks();
        let result = match (call.kind, call.path.as_str()) {
            (FunctionKind::Query, "counter:get") => get(&call.args),
            (FunctionKind::Mutation, "counter:increment") => increment(&call.args),
            (FunctionKind::Query, "counter:probe") => Ok(probe()),
            (_, "counter:get" | "counter:increment" | "counter:probe") => {
                Err(error("WrongFunctionKind", format!("{} is not a {:?}", call.path, call.kind)))
            }
            _ => Err(error("FunctionNotFound", format!("Could not find function for '{}'", call.path))),
        };
        kiln_wasi_stubs::reset();
        result.map(|v| to_msgpack(&v))
    }

    fn analyze() -> Result<Manifest, Error> {
        let args = r#"{"type":"object","value":{"name":{"fieldType":{"type":"string"},"optional":true}}}"#;
        let function = |path: &str, kind| FunctionInfo {
            path: path.to_owned(),
            kind,
            visibility: Visibility::Public,
            args: Some(args.to_owned()),
            returns: None,
        };
        Ok(Manifest {
            functions: vec![
                function("counter:get", FunctionKind::Query),
                function("counter:increment", FunctionKind::Mutation),
                function("counter:probe", FunctionKind::Query),
            ],
            schema: None,
            crons: None,
            http_routes: Vec::new(),
        })
    }
}

export!(Counter);
