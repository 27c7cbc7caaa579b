//! An in-memory host for world `app`: every import implemented over a small in-memory
//! database, with a log of the calls a function makes. Each call gets a fresh instance.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kiln_guest_sdk::bindings::App;
use kiln_guest_sdk::bindings::exports::kiln::platform::guest::Call;
use kiln_guest_sdk::bindings::kiln::platform::db::{self, Page, QueryStream};
use kiln_guest_sdk::bindings::kiln::platform::log::Level;
use kiln_guest_sdk::bindings::kiln::platform::search::VectorMatch;
use kiln_guest_sdk::bindings::kiln::platform::types::{Error, FunctionKind, HttpRequest, HttpResponse};
use kiln_guest_sdk::bindings::kiln::platform::{auth, env, functions, http, log, scheduler, search, storage, types};
use kiln_store::Document;
use kiln_store::query::{Operator, Query, RangeOp, Source};
use kiln_value::{DocumentId, InternalId, Object, TableNumber, Value, cmp_optional, from_msgpack, to_msgpack};
use wasmtime::component::{Component, HasSelf, Linker, Resource};
use wasmtime::{Engine, Store};

fn err(code: &str, message: impl Into<String>) -> Error {
    Error { code: code.to_owned(), message: message.into(), data: None }
}

/// Documents by table, in insertion order; ids and creation times are deterministic.
#[derive(Default)]
pub struct MemDb {
    tables: BTreeMap<String, (TableNumber, Vec<Document>)>,
    next: u64,
}

impl MemDb {
    fn table_number(&mut self, table: &str) -> TableNumber {
        let n = self.tables.len() as u32 + 1;
        self.tables.entry(table.to_owned()).or_insert_with(|| (TableNumber(n), Vec::new())).0
    }

    fn find(&self, id: &str) -> Option<(&str, usize)> {
        let parsed = DocumentId::decode(id).ok()?;
        self.tables.iter().find_map(|(name, (n, docs))| {
            (*n == parsed.table).then(|| docs.iter().position(|d| d.id == parsed)).flatten().map(|i| (name.as_str(), i))
        })
    }

    /// Every document of a table.
    pub fn all(&self, table: &str) -> Vec<Object> {
        self.tables.get(table).map(|(_, docs)| docs.iter().map(|d| d.value.clone()).collect()).unwrap_or_default()
    }
}

/// What the host sees of one call.
#[derive(Default)]
pub struct Host {
    pub db: Arc<Mutex<MemDb>>,
    pub calls: Vec<String>,
    pub logs: Vec<(String, String)>,
    pub seed: u64,
    pub now_ms: f64,
    pub identity: Option<Value>,
    pub variables: Vec<(String, String)>,
    pub kind: Option<FunctionKind>,
    /// Whether the call asks the guest to write its heap's pages first.
    pub touch_heap: bool,
    streams: HashMap<u32, VecDeque<Vec<u8>>>,
    next_stream: u32,
    nested: Option<Arc<Nested>>,
}

/// What a host function needs to run nested calls (`runQuery` and friends).
pub struct Nested {
    engine: Engine,
    component: Component,
    linker: Linker<Host>,
}

impl Host {
    /// A host for one call of `kind`, with a fixed seed and time.
    pub fn for_call(kind: FunctionKind, seed: u64, now_ms: f64) -> Host {
        Host { seed, now_ms, kind: Some(kind), ..Host::default() }
    }

    fn writable(&self) -> Result<(), Error> {
        match self.kind {
            Some(FunctionKind::Query) => {
                Err(err("ReadOnlyTransaction", "this transaction is read-only (queries cannot write)"))
            }
            Some(FunctionKind::Action) => Err(err("NotAllowed", "actions have no database access")),
            _ => Ok(()),
        }
    }

    fn run_query(&mut self, query: &str) -> Result<Vec<Vec<u8>>, Error> {
        let json: serde_json::Value = serde_json::from_str(query).map_err(|e| err("InvalidQuery", e.to_string()))?;
        let q = Query::from_json(&json).map_err(|e| err(e.code(), e.to_string()))?;
        self.calls.push(format!("db.query {}", q.table()));
        let db = self.db.lock().unwrap();
        let mut docs: Vec<Document> = db.tables.get(q.table()).map(|(_, d)| d.clone()).unwrap_or_default();
        if let Source::IndexRange { range, .. } = &q.source {
            docs.retain(|d| {
                range.iter().all(|r| {
                    let ord = cmp_optional(d.field(&r.field), r.value.as_ref());
                    match r.op {
                        RangeOp::Eq => ord.is_eq(),
                        RangeOp::Gt => ord.is_gt(),
                        RangeOp::Gte => ord.is_ge(),
                        RangeOp::Lt => ord.is_lt(),
                        RangeOp::Lte => ord.is_le(),
                    }
                })
            });
        }
        if q.order == kiln_store::Order::Desc {
            docs.reverse();
        }
        let mut out = Vec::new();
        let mut counts = vec![0usize; q.operators.len()];
        'docs: for d in docs {
            for (op, count) in q.operators.iter().zip(counts.iter_mut()) {
                match op {
                    Operator::Filter(e) => {
                        if !e.matches(&d).map_err(|e| err(e.code(), e.to_string()))? {
                            continue 'docs;
                        }
                    }
                    Operator::Limit(n) => {
                        if *count >= *n {
                            break 'docs;
                        }
                        *count += 1;
                    }
                }
            }
            out.push(to_msgpack(&Value::Object(d.value)));
        }
        Ok(out)
    }

    fn nested_call(&mut self, kind: FunctionKind, name: &str, args: &[u8]) -> Result<Vec<u8>, Error> {
        self.calls.push(format!("functions.run {name}"));
        let nested = self.nested.clone().ok_or_else(|| err("NotSupported", "no nested calls here"))?;
        let mut inner = Host {
            db: self.db.clone(),
            seed: self.seed,
            now_ms: self.now_ms,
            identity: self.identity.clone(),
            variables: self.variables.clone(),
            kind: Some(kind),
            nested: Some(nested.clone()),
            ..Host::default()
        };
        let result = invoke_in(&nested, &mut inner, kind, name, args);
        self.calls.extend(inner.calls.into_iter().map(|c| format!("  {c}")));
        self.logs.extend(inner.logs);
        result.map_err(|e| err("InstanceFailed", e.to_string()))?
    }
}

fn invoke_in(
    nested: &Nested,
    host: &mut Host,
    kind: FunctionKind,
    path: &str,
    args: &[u8],
) -> wasmtime::Result<Result<Vec<u8>, Error>> {
    invoke_metered(nested, host, kind, path, args, None).map(|(r, _)| r)
}

/// Runs one call in a fresh store; with `fuel`, also returns the fuel it consumed.
fn invoke_metered(
    nested: &Nested,
    host: &mut Host,
    kind: FunctionKind,
    path: &str,
    args: &[u8],
    fuel: Option<u64>,
) -> wasmtime::Result<(Result<Vec<u8>, Error>, u64)> {
    let touch_heap = host.touch_heap;
    let mut store = Store::new(&nested.engine, std::mem::take(host));
    match fuel {
        Some(f) => store.set_fuel(f)?,
        // An engine that meters fuel gets plenty for an unmetered call; others refuse fuel.
        None => store.set_fuel(u64::MAX / 2).unwrap_or(()),
    }
    let app = App::instantiate(&mut store, &nested.component, &nested.linker)?;
    let call =
        Call { kind, path: path.to_owned(), args: args.to_vec(), request_id: "req".into(), http: None, touch_heap };
    let result = app.kiln_platform_guest().call_invoke(&mut store, &call);
    let consumed = fuel.map_or(Ok(0), |f| store.get_fuel().map(|left| f - left))?;
    *host = store.into_data();
    Ok((result?, consumed))
}

impl types::Host for Host {}

impl db::HostQueryStream for Host {
    fn next(&mut self, stream: Resource<QueryStream>) -> Result<Option<Vec<u8>>, Error> {
        self.calls.push("db.next".into());
        let queue = self.streams.get_mut(&stream.rep()).ok_or_else(|| err("QueryStreamNotFound", "no such stream"))?;
        Ok(queue.pop_front())
    }

    fn drop(&mut self, stream: Resource<QueryStream>) -> wasmtime::Result<()> {
        self.streams.remove(&stream.rep());
        Ok(())
    }
}

impl db::Host for Host {
    fn get(&mut self, id: String, table: Option<String>) -> Result<Option<Vec<u8>>, Error> {
        self.calls.push(format!("db.get {}", table.as_deref().unwrap_or("*")));
        let db = self.db.lock().unwrap();
        Ok(db.find(&id).filter(|(t, _)| table.as_deref().is_none_or(|want| want == *t)).map(|(t, i)| {
            let doc = &db.tables[t].1[i];
            to_msgpack(&Value::Object(doc.value.clone()))
        }))
    }

    fn insert(&mut self, table: String, fields: Vec<u8>) -> Result<String, Error> {
        self.calls.push(format!("db.insert {table}"));
        self.writable()?;
        let Ok(Value::Object(fields)) = from_msgpack(&fields) else {
            return Err(err("InvalidDocument", "not an object"));
        };
        let mut db = self.db.lock().unwrap();
        let number = db.table_number(&table);
        db.next += 1;
        let mut raw = [0u8; 16];
        raw[8..].copy_from_slice(&db.next.to_be_bytes());
        let id = DocumentId::new(number, InternalId(raw));
        let created = 1_700_000_000_000.0 + db.next as f64;
        db.tables.get_mut(&table).unwrap().1.push(Document::new(id, created, fields));
        Ok(id.encode())
    }

    fn patch(&mut self, id: String, set: Vec<u8>, remove: Vec<String>) -> Result<(), Error> {
        self.calls.push("db.patch".into());
        self.writable()?;
        let Ok(Value::Object(set)) = from_msgpack(&set) else { return Err(err("InvalidDocument", "not an object")) };
        let mut db = self.db.lock().unwrap();
        let (t, i) = db.find(&id).map(|(t, i)| (t.to_owned(), i)).ok_or_else(|| err("DocumentNotFound", id.clone()))?;
        let doc = &mut db.tables.get_mut(&t).unwrap().1[i];
        doc.value.extend(set);
        for k in remove {
            doc.value.remove(&k);
        }
        Ok(())
    }

    fn replace(&mut self, id: String, fields: Vec<u8>) -> Result<(), Error> {
        self.calls.push("db.replace".into());
        self.writable()?;
        let Ok(Value::Object(fields)) = from_msgpack(&fields) else {
            return Err(err("InvalidDocument", "not an object"));
        };
        let mut db = self.db.lock().unwrap();
        let (t, i) = db.find(&id).map(|(t, i)| (t.to_owned(), i)).ok_or_else(|| err("DocumentNotFound", id.clone()))?;
        let doc = &mut db.tables.get_mut(&t).unwrap().1[i];
        *doc = Document::new(doc.id, doc.creation_time(), fields);
        Ok(())
    }

    fn delete(&mut self, id: String) -> Result<(), Error> {
        self.calls.push("db.delete".into());
        self.writable()?;
        let mut db = self.db.lock().unwrap();
        let (t, i) = db.find(&id).map(|(t, i)| (t.to_owned(), i)).ok_or_else(|| err("DocumentNotFound", id.clone()))?;
        db.tables.get_mut(&t).unwrap().1.remove(i);
        Ok(())
    }

    fn normalize_id(&mut self, table: String, id: String) -> Result<Option<String>, Error> {
        self.calls.push(format!("db.normalize-id {table}"));
        let db = self.db.lock().unwrap();
        let ok = matches!((DocumentId::decode(&id), db.tables.get(&table)), (Ok(d), Some((n, _))) if d.table == *n);
        Ok(ok.then_some(id))
    }

    fn open_query(&mut self, query: String) -> Result<Resource<QueryStream>, Error> {
        let docs = self.run_query(&query)?;
        let rep = self.next_stream;
        self.next_stream += 1;
        self.streams.insert(rep, docs.into());
        Ok(Resource::new_own(rep))
    }

    fn query_page(
        &mut self,
        query: String,
        cursor: Option<String>,
        _end: Option<String>,
        page_size: u32,
        _max_rows: Option<u32>,
        _max_bytes: Option<u32>,
    ) -> Result<Page, Error> {
        let docs = self.run_query(&query)?;
        let start: usize =
            cursor.as_deref().map(|c| c.parse().map_err(|_| err("InvalidCursor", c))).transpose()?.unwrap_or(0);
        let end = (start + page_size as usize).min(docs.len());
        Ok(Page {
            documents: docs[start.min(end)..end].to_vec(),
            is_done: end == docs.len(),
            continue_cursor: end.to_string(),
            split_cursor: None,
            page_status: None,
        })
    }
}

impl auth::Host for Host {
    fn get_user_identity(&mut self) -> Option<Vec<u8>> {
        self.calls.push("auth.get-user-identity".into());
        self.identity.as_ref().map(to_msgpack)
    }
}

impl scheduler::Host for Host {
    fn schedule(&mut self, name: String, _args: Vec<u8>, ts_ms: f64) -> Result<String, Error> {
        self.calls.push(format!("scheduler.schedule {name} at {ts_ms}"));
        Ok("scheduled-1".into())
    }

    fn cancel(&mut self, id: String) -> Result<(), Error> {
        self.calls.push(format!("scheduler.cancel {id}"));
        Ok(())
    }
}

impl storage::Host for Host {
    fn get_url(&mut self, _id: String) -> Result<Option<String>, Error> {
        Err(err("NotSupported", "no storage in this harness"))
    }
    fn get_metadata(&mut self, _id: String) -> Result<Option<Vec<u8>>, Error> {
        Err(err("NotSupported", "no storage in this harness"))
    }
    fn generate_upload_url(&mut self) -> Result<String, Error> {
        Err(err("NotSupported", "no storage in this harness"))
    }
    fn delete(&mut self, _id: String) -> Result<(), Error> {
        Err(err("NotSupported", "no storage in this harness"))
    }
    fn store(&mut self, _b: Vec<u8>, _t: Option<String>, _s: Option<String>) -> Result<String, Error> {
        Err(err("NotSupported", "no storage in this harness"))
    }
    fn get(&mut self, _id: String) -> Result<Option<storage::StoredFile>, Error> {
        Err(err("NotSupported", "no storage in this harness"))
    }
}

impl functions::Host for Host {
    fn run_query(&mut self, name: String, args: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.nested_call(FunctionKind::Query, &name, &args)
    }
    fn run_mutation(&mut self, name: String, args: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.nested_call(FunctionKind::Mutation, &name, &args)
    }
    fn run_action(&mut self, name: String, args: Vec<u8>) -> Result<Vec<u8>, Error> {
        self.nested_call(FunctionKind::Action, &name, &args)
    }
    fn create_function_handle(&mut self, _name: String) -> Result<String, Error> {
        Err(err("NotSupported", "no function handles in this harness"))
    }
}

impl search::Host for Host {
    fn vector_search(
        &mut self,
        _i: String,
        _v: Vec<f64>,
        _l: Option<u32>,
        _f: Option<String>,
    ) -> Result<Vec<VectorMatch>, Error> {
        Err(err("NotSupported", "no vector search in this harness"))
    }
}

impl http::Host for Host {
    fn fetch(&mut self, request: HttpRequest) -> Result<HttpResponse, Error> {
        self.calls.push(format!("http.fetch {}", request.url));
        Err(err("NotAllowed", "no network in this harness"))
    }
}

impl log::Host for Host {
    fn write(&mut self, level: Level, line: String) {
        let level = kiln_guest_sdk::bindings::level_name(level);
        self.logs.push((level.to_owned(), line));
    }
}

impl env::Host for Host {
    fn seed(&mut self) -> u64 {
        // An action gets new bits from every call, as from the runtime (here the next value
        // of a generator, so that tests stay reproducible).
        if matches!(self.kind, Some(FunctionKind::Action)) {
            self.seed = self.seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        }
        self.seed
    }
    fn now_ms(&mut self) -> f64 {
        self.now_ms
    }
    fn variables(&mut self) -> Vec<(String, String)> {
        self.variables.clone()
    }
    fn sleep(&mut self, ms: f64) {
        // The harness's clock is virtual: an action's wait moves it on.
        if matches!(self.kind, Some(FunctionKind::Action)) && ms > 0.0 {
            self.now_ms += ms;
        }
    }
}

/// A compiled component with its linker and database, ready to be called.
pub struct Harness {
    nested: Arc<Nested>,
    pub db: Arc<Mutex<MemDb>>,
}

/// The outcome of one call.
pub struct Outcome {
    pub result: Result<Vec<u8>, Error>,
    pub calls: Vec<String>,
    pub logs: Vec<(String, String)>,
}

impl Outcome {
    /// The result value (panics with the error otherwise).
    pub fn value(&self) -> Value {
        match &self.result {
            Ok(bytes) => from_msgpack(bytes).unwrap(),
            Err(e) => panic!("call failed: {}: {}", e.code, e.message),
        }
    }

    /// The error (panics if the call succeeded).
    pub fn error(&self) -> &Error {
        match &self.result {
            Ok(_) => panic!("the call succeeded"),
            Err(e) => e,
        }
    }
}

impl Harness {
    pub fn new(engine: &Engine, component: Component) -> Harness {
        let mut linker = Linker::new(engine);
        App::add_to_linker::<Host, HasSelf<Host>>(&mut linker, |h| h).unwrap();
        Harness { nested: Arc::new(Nested { engine: engine.clone(), component, linker }), db: Arc::default() }
    }

    /// Calls `path` with `args` in a fresh instance, with seed 7 and a fixed time.
    pub fn call(&self, kind: FunctionKind, path: &str, args: &Value) -> Outcome {
        self.call_with(kind, path, &to_msgpack(args), |_| {})
    }

    /// Like `call`, with raw argument bytes and a hook to adjust the host first.
    pub fn call_with(&self, kind: FunctionKind, path: &str, args: &[u8], setup: impl FnOnce(&mut Host)) -> Outcome {
        let mut host = Host {
            db: self.db.clone(),
            nested: Some(self.nested.clone()),
            ..Host::for_call(kind, 7, 1_750_000_000_123.0)
        };
        setup(&mut host);
        let result = invoke_in(&self.nested, &mut host, kind, path, args).expect("the instance must not trap");
        Outcome { result, calls: host.calls, logs: host.logs }
    }

    /// The fuel one call consumes (the engine must meter fuel).
    pub fn fuel_of(&self, kind: FunctionKind, path: &str, args: &Value) -> u64 {
        self.fuel_of_touching(kind, path, args, false)
    }

    /// Like `fuel_of`, with the call's `touch-heap` flag set as given.
    pub fn fuel_of_touching(&self, kind: FunctionKind, path: &str, args: &Value, touch_heap: bool) -> u64 {
        let mut host = Host {
            db: self.db.clone(),
            kind: Some(kind),
            nested: Some(self.nested.clone()),
            touch_heap,
            ..Host::default()
        };
        let (result, fuel) = invoke_metered(&self.nested, &mut host, kind, path, &to_msgpack(args), Some(u64::MAX / 2))
            .expect("no trap");
        result.unwrap_or_else(|e| panic!("{path} failed: {}", e.message));
        fuel
    }

    /// Calls `path` expecting the instance to trap; returns the trap.
    pub fn call_trapping(&self, kind: FunctionKind, path: &str, args: &Value) -> wasmtime::Trap {
        let mut host =
            Host { db: self.db.clone(), kind: Some(kind), nested: Some(self.nested.clone()), ..Host::default() };
        match invoke_in(&self.nested, &mut host, kind, path, &to_msgpack(args)) {
            Ok(_) => panic!("{path} did not trap"),
            Err(e) => *e.downcast_ref::<wasmtime::Trap>().unwrap_or_else(|| panic!("not a trap: {e:#}")),
        }
    }
}
