//! A counter written in Rust against world `app`, with no JavaScript involved: one query
//! (`counter:get`), one mutation (`counter:increment`), and `counter:probe`, which tries to
//! reach the filesystem and the clock through std (and gets only what the platform allows).
//! Also the bank of `examples/bank` (`accounts:open`, `accounts:transfer`), so that the
//! runtime benchmark can set the platform's own cost beside the JavaScript runtime's.

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
    match args_object(args)?.get("name") {
        None => Ok("default".to_owned()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(error("InvalidArgs", format!("`name` must be a string, not {}", other.kind().name()))),
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

fn args_object(args: &[u8]) -> Result<Object, Error> {
    match from_msgpack(args) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(error("InvalidArgs", "arguments must be an object")),
        Err(e) => Err(error(e.code(), e.to_string())),
    }
}

/// A field the manifest's validator guarantees (the host checks arguments before the call).
fn field<'a>(o: &'a Object, name: &str) -> Result<&'a Value, Error> {
    o.get(name).ok_or_else(|| error("InvalidArgs", format!("missing `{name}`")))
}

fn int64(o: &Object, name: &str) -> Result<i64, Error> {
    match field(o, name)? {
        Value::Int64(n) => Ok(*n),
        other => Err(error("InvalidArgs", format!("`{name}` must be an int64, not {}", other.kind().name()))),
    }
}

fn string<'a>(o: &'a Object, name: &str) -> Result<&'a str, Error> {
    field(o, name)?.as_str().ok_or_else(|| error("InvalidArgs", format!("`{name}` must be a string")))
}

/// `accounts:open`: a new account; returns its id.
fn open(args: &[u8]) -> Result<Value, Error> {
    let a = args_object(args)?;
    let doc: Object = [
        ("owner".to_owned(), Value::from(string(&a, "owner")?)),
        ("balance".to_owned(), Value::Int64(int64(&a, "balance")?)),
    ]
    .into();
    Ok(Value::from(db::insert("accounts", &to_msgpack(&Value::Object(doc)))?.as_str()))
}

fn balance_of(id: &str) -> Result<i64, Error> {
    let bytes = db::get(id, Some("accounts"))?.ok_or_else(|| error("NoSuchAccount", format!("no account {id}")))?;
    match from_msgpack(&bytes) {
        Ok(Value::Object(doc)) => int64(&doc, "balance"),
        _ => Err(error("InvalidDocument", "the host returned a document that is not an object")),
    }
}

fn set_balance(id: &str, balance: i64) -> Result<(), Error> {
    let set: Object = [("balance".to_owned(), Value::Int64(balance))].into();
    db::patch(id, &to_msgpack(&Value::Object(set)), &[])
}

/// `accounts:transfer`: two reads, two patches and one insert, as in `examples/bank`.
fn transfer(args: &[u8]) -> Result<Value, Error> {
    let a = args_object(args)?;
    let (from, to, amount) = (string(&a, "from")?, string(&a, "to")?, int64(&a, "amount")?);
    let left = move_funds(from, to, amount)?;
    let record: Object = [
        ("from".to_owned(), Value::from(from)),
        ("to".to_owned(), Value::from(to)),
        ("amount".to_owned(), Value::Int64(amount)),
    ]
    .into();
    db::insert("transfers", &to_msgpack(&Value::Object(record)))?;
    Ok(Value::Int64(left))
}

/// `accounts:move`: two reads and two patches, as in `examples/bank`.
fn move_between(args: &[u8]) -> Result<Value, Error> {
    let a = args_object(args)?;
    move_funds(string(&a, "from")?, string(&a, "to")?, int64(&a, "amount")?).map(Value::Int64)
}

/// Moves `amount` from account `from` to account `to`; returns the source's new balance.
fn move_funds(from: &str, to: &str, amount: i64) -> Result<i64, Error> {
    if amount <= 0 {
        return Err(error("InvalidAmount", format!("amount {amount} is not positive")));
    }
    let (source, target) = (balance_of(from)?, balance_of(to)?);
    if source < amount {
        return Err(error("InsufficientFunds", format!("balance {source} is below {amount}")));
    }
    set_balance(from, source - amount)?;
    set_balance(to, target + amount)?;
    Ok(source - amount)
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
            (FunctionKind::Mutation, "accounts:open") => open(&call.args),
            (FunctionKind::Mutation, "accounts:transfer") => transfer(&call.args),
            (FunctionKind::Mutation, "accounts:move") => move_between(&call.args),
            (
                _,
                "counter:get" | "counter:increment" | "counter:probe" | "accounts:open" | "accounts:transfer"
                | "accounts:move",
            ) => Err(error("WrongFunctionKind", format!("{} is not a {:?}", call.path, call.kind))),
            _ => Err(error("FunctionNotFound", format!("Could not find function for '{}'", call.path))),
        };
        kiln_wasi_stubs::reset();
        result.map(|v| to_msgpack(&v))
    }

    fn analyze() -> Result<Manifest, Error> {
        let name = r#"{"type":"object","value":{"name":{"fieldType":{"type":"string"},"optional":true}}}"#;
        let open = r#"{"type":"object","value":{"owner":{"fieldType":{"type":"string"},"optional":false},"balance":{"fieldType":{"type":"bigint"},"optional":false}}}"#;
        let id = r#"{"fieldType":{"type":"id","tableName":"accounts"},"optional":false}"#;
        let transfer = format!(
            r#"{{"type":"object","value":{{"from":{id},"to":{id},"amount":{{"fieldType":{{"type":"bigint"}},"optional":false}}}}}}"#
        );
        let function = |path: &str, kind, args: &str| FunctionInfo {
            path: path.to_owned(),
            kind,
            visibility: Visibility::Public,
            args: Some(args.to_owned()),
            returns: None,
        };
        Ok(Manifest {
            functions: vec![
                function("counter:get", FunctionKind::Query, name),
                function("counter:increment", FunctionKind::Mutation, name),
                function("counter:probe", FunctionKind::Query, name),
                function("accounts:open", FunctionKind::Mutation, open),
                function("accounts:transfer", FunctionKind::Mutation, &transfer),
                function("accounts:move", FunctionKind::Mutation, &transfer),
            ],
            schema: None,
            crons: None,
            http_routes: Vec::new(),
            auth: None,
            components: None,
        })
    }
}

export!(Counter);
