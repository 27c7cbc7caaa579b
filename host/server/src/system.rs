//! System functions: queries under `_system/` that the `convex` CLI calls through the ordinary
//! query paths (WebSocket and HTTP) as an admin. The host answers them itself: they are not in
//! the app's component, and they work before any app is deployed. One Kiln does not serve is
//! refused by name.

use std::collections::BTreeMap;

use kiln_runtime::{CallError, Manifest, Runtime};
use kiln_value::{Object, Value};

/// What system queries read of a deployment.
pub struct Facts<'a> {
    /// Its environment variables.
    pub env: &'a BTreeMap<String, String>,
    /// What its deployed app defines, if one is deployed.
    pub manifest: Option<&'a Manifest>,
    /// The component instance asked about (`""`: the app).
    pub component: &'a str,
}

/// [`query`] for deployment `name` of `runtime`, and the system queries that read its tables.
pub async fn query_deployment(
    runtime: &Runtime,
    name: &str,
    snapshots: &crate::snapshots::Snapshots,
    admin: bool,
    component: &str,
    path: &str,
    args: &Value,
) -> Result<Value, CallError> {
    let deployment = runtime.deployment(name);
    let version = deployment.as_ref().and_then(|d| d.version());
    if !component.is_empty() {
        let mounted = version.as_ref().and_then(|v| v.manifest.component_instances().ok()).unwrap_or_default();
        if !mounted.iter().any(|i| i.path == component) {
            return Err(CallError::new(
                "ComponentNotFound",
                format!("the deployed app mounts no component at {component:?}"),
            ));
        }
    }
    if admin && let Some(d) = &deployment {
        match kiln_runtime::normalize_path(path).as_str() {
            "_system/cli/tables:default" => return Ok(tables(d.store(), component)),
            "_system/cli/tableData:default" => return table_data(d.store(), component, args).await,
            "_system/cli/exports:getLatest" => return Ok(snapshots.latest_export()),
            "_system/cli/queryImport:list" => return Ok(snapshots.imports()),
            "_system/cli/queryImport:default" => {
                let id = match args {
                    Value::Object(o) => o.get("importId").and_then(Value::as_str),
                    _ => None,
                };
                let Some(id) = id else {
                    return Err(CallError::new("InvalidArgs", "_system/cli/queryImport takes { importId: string }"));
                };
                return Ok(snapshots.import(id));
            }
            _ => {}
        }
    }
    let config = deployment.as_ref().map(|d| d.config());
    let none = BTreeMap::new();
    let facts = Facts {
        env: config.as_ref().map_or(&none, |c| &c.env),
        manifest: version.as_ref().map(|v| &v.manifest),
        component,
    };
    query(&facts, admin, path, args)
}

/// A page of Convex's pagination result.
fn page(items: Vec<Value>, is_done: bool, cursor: String) -> Value {
    Value::Object(Object::from([
        ("page".to_owned(), Value::Array(items)),
        ("isDone".to_owned(), Value::Boolean(is_done)),
        ("continueCursor".to_owned(), Value::String(cursor)),
    ]))
}

/// `_system/cli/tables` (`npx convex data [--component <path>]`): the tables of the app or
/// of a component instance, in one page.
fn tables(store: &kiln_store::Store, component: &str) -> Value {
    let prefix = if component.is_empty() { String::new() } else { format!("{component}/") };
    let names = store
        .catalog()
        .tables
        .keys()
        .filter_map(|t| t.strip_prefix(&prefix))
        .filter(|t| !t.starts_with('_') && !t.contains('/'))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let items =
        names.into_iter().map(|name| Value::Object(Object::from([("name".to_owned(), Value::String(name))]))).collect();
    page(items, true, String::new())
}

/// `_system/cli/tableData` (`npx convex data <table>`): a page of a table's documents in
/// creation order (`order`: `asc` or `desc`), with `paginationOpts` as for any paginated query.
async fn table_data(store: &kiln_store::Store, component: &str, args: &Value) -> Result<Value, CallError> {
    let bad = |what: &str| CallError::new("InvalidArgs", format!("_system/cli/tableData: {what}"));
    let Value::Object(args) = args else { return Err(bad("arguments must be an object")) };
    let table = args.get("table").and_then(Value::as_str).ok_or_else(|| bad("`table` must be a string"))?;
    if table.starts_with('_') {
        return Err(bad("system tables are not listed"));
    }
    if table.contains('/') {
        return Err(bad("name a component's table with the component path, not in the table name"));
    }
    let table = &kiln_store::component_table(component, table);
    let order = match args.get("order").and_then(Value::as_str) {
        None | Some("asc") => kiln_store::Order::Asc,
        Some("desc") => kiln_store::Order::Desc,
        Some(other) => return Err(bad(&format!("`order` must be \"asc\" or \"desc\", not {other:?}"))),
    };
    let opts = match args.get("paginationOpts") {
        Some(Value::Object(o)) => o,
        _ => return Err(bad("`paginationOpts` must be an object")),
    };
    let cursor = opts.get("cursor").and_then(Value::as_str).map(str::to_owned);
    let size = match opts.get("numItems") {
        Some(Value::Float64(n)) if *n >= 1.0 => n.min(10_000.0) as usize,
        Some(Value::Int64(n)) if *n >= 1 => (*n).min(10_000) as usize,
        _ => return Err(bad("`paginationOpts.numItems` must be a positive number")),
    };
    let mut query = kiln_store::Query::full_table_scan(table);
    query.order = order;
    let request = kiln_store::PageRequest {
        cursor,
        end_cursor: None,
        page_size: size,
        max_rows_read: None,
        max_bytes_read: None,
    };
    let mut txn = store.begin_read_only();
    let found = txn.query_page(query, request).await.map_err(|e| CallError::new(e.code(), e.to_string()))?;
    let items = found.documents.iter().map(|d| Value::Object(d.value.clone())).collect();
    Ok(page(items, found.is_done, found.continue_cursor))
}

/// `_system/cli/modules:apiSpec`: the functions of the deployed app or of one of its
/// component instances, as `npx convex function-spec` prints them (and `npx convex run` lists
/// them when a name is wrong).
fn api_spec(manifest: Option<&Manifest>, component: &str) -> Value {
    // A component's functions are `@<definition id>/<module>:<export>` in the manifest.
    let prefix = match manifest.and_then(|m| m.component_instances().ok()) {
        Some(instances) if !component.is_empty() => match instances.into_iter().find(|i| i.path == component) {
            Some(i) => format!("@{}/", i.definition),
            None => return Value::Array(Vec::new()),
        },
        _ => String::new(),
    };
    let json = |j: &Option<serde_json::Value>| {
        j.as_ref().and_then(|j| kiln_value::from_convex_json(j).ok()).unwrap_or(Value::Null)
    };
    let text = |s: &str| Value::String(s.to_owned());
    let mut out = Vec::new();
    for f in manifest.map(|m| m.functions.as_slice()).unwrap_or_default() {
        let kind = match f.kind.as_str() {
            "query" => "Query",
            "mutation" => "Mutation",
            "action" => "Action",
            _ => continue,
        };
        let Some(path) = f.path.strip_prefix(&prefix) else { continue };
        if prefix.is_empty() && path.starts_with('@') {
            continue;
        }
        // Convex names modules by their file: `dir/module.js:export`.
        let identifier = match path.rsplit_once(':') {
            Some((module, export)) => format!("{module}.js:{export}"),
            None => path.to_owned(),
        };
        out.push(Value::Object(Object::from([
            ("functionType".to_owned(), text(kind)),
            ("identifier".to_owned(), Value::String(identifier)),
            ("visibility".to_owned(), Value::Object(Object::from([("kind".to_owned(), text(&f.visibility))]))),
            ("args".to_owned(), json(&f.args)),
            ("returns".to_owned(), json(&f.returns)),
        ])));
    }
    let routes = if component.is_empty() { manifest.map(|m| m.http_routes.as_slice()) } else { None };
    for r in routes.unwrap_or_default() {
        out.push(Value::Object(Object::from([
            ("functionType".to_owned(), text("HttpAction")),
            ("method".to_owned(), text(&r.method)),
            ("path".to_owned(), text(&r.path)),
        ])));
    }
    Value::Array(out)
}

/// Whether `path` names a system function.
pub fn is_system(path: &str) -> bool {
    path.trim_start_matches('/').starts_with("_system/")
}

/// What a system query answers about a deployment.
pub fn query(facts: &Facts<'_>, admin: bool, path: &str, args: &Value) -> Result<Value, CallError> {
    let env = facts.env;
    let path = kiln_runtime::normalize_path(path);
    if !admin {
        return Err(CallError::new("Unauthorized", format!("{path} is a system function: it needs an admin key")));
    }
    let variable = |name: &str, value: &str| {
        Value::Object(Object::from([
            ("name".to_owned(), Value::String(name.to_owned())),
            ("value".to_owned(), Value::String(value.to_owned())),
        ]))
    };
    match path.as_str() {
        "_system/cli/queryEnvironmentVariables:default" => {
            Ok(Value::Array(env.iter().map(|(name, value)| variable(name, value)).collect()))
        }
        "_system/cli/queryEnvironmentVariables:get" => {
            let name = match args {
                Value::Object(o) => o.get("name").and_then(Value::as_str),
                _ => None,
            };
            let Some(name) = name else {
                return Err(CallError::new("InvalidArgs", format!("{path} takes {{ name: string }}")));
            };
            Ok(env.get(name).map_or(Value::Null, |value| variable(name, value)))
        }
        "_system/cli/modules:apiSpec" => Ok(api_spec(facts.manifest, facts.component)),
        _ => Err(CallError::new(
            "UnsupportedSystemFunction",
            format!("the system function {path} is not supported by this version of Kiln"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_queries_answer_admins_only_and_unknown_ones_are_refused_by_name() {
        let env = BTreeMap::from([("B".to_owned(), "2".to_owned()), ("A".to_owned(), "1".to_owned())]);
        let env = &Facts { env: &env, manifest: None, component: "" };
        let none = Value::Object(Object::new());
        let list = query(env, true, "_system/cli/queryEnvironmentVariables", &none).unwrap();
        let Value::Array(items) = list else { panic!("{list:?}") };
        let names: Vec<_> = items
            .iter()
            .map(|v| match v {
                Value::Object(o) => o["name"].as_str().unwrap().to_owned(),
                _ => panic!(),
            })
            .collect();
        assert_eq!(names, ["A", "B"]);
        let arg = |name: &str| Value::Object(Object::from([("name".to_owned(), Value::from(name))]));
        let got = query(env, true, "_system/cli/queryEnvironmentVariables.js:get", &arg("B")).unwrap();
        assert!(matches!(&got, Value::Object(o) if o["value"].as_str() == Some("2")), "{got:?}");
        assert_eq!(query(env, true, "_system/cli/queryEnvironmentVariables:get", &arg("C")).unwrap(), Value::Null);
        assert_eq!(
            query(env, true, "_system/cli/queryEnvironmentVariables:get", &none).unwrap_err().code,
            "InvalidArgs"
        );
        assert_eq!(query(env, false, "_system/cli/queryEnvironmentVariables", &none).unwrap_err().code, "Unauthorized");
        let e = query(env, true, "_system/cli/tables", &none).unwrap_err();
        assert_eq!(e.code, "UnsupportedSystemFunction");
        assert!(e.message.contains("_system/cli/tables:default"), "{}", e.message);
        assert!(is_system("/_system/x") && !is_system("messages:list"));
    }

    #[test]
    fn the_api_spec_lists_the_deployed_functions() {
        let none = Value::Object(Object::new());
        let empty = query(
            &Facts { env: &BTreeMap::new(), manifest: None, component: "" },
            true,
            "_system/cli/modules:apiSpec",
            &none,
        );
        assert_eq!(empty.unwrap(), Value::Array(Vec::new()), "nothing deployed");
        let manifest: Manifest = serde_json::from_value(serde_json::json!({
            "functions": [
                {"path": "dir/messages:list", "kind": "query", "visibility": "public",
                 "args": {"type": "object", "value": {}}, "returns": null},
                {"path": "messages:send", "kind": "mutation", "visibility": "internal", "args": null, "returns": null},
            ],
            "schema": null, "crons": null,
            "httpRoutes": [{"path": "/hook", "method": "POST"}],
        }))
        .unwrap();
        let facts = Facts { env: &BTreeMap::new(), manifest: Some(&manifest), component: "" };
        let spec = kiln_value::to_convex_json(&query(&facts, true, "_system/cli/modules:apiSpec", &none).unwrap());
        assert_eq!(spec[0]["functionType"], "Query");
        assert_eq!(spec[0]["identifier"], "dir/messages.js:list");
        assert_eq!(spec[0]["visibility"]["kind"], "public");
        assert_eq!(spec[0]["args"]["type"], "object");
        assert_eq!(spec[1]["visibility"]["kind"], "internal");
        assert_eq!(spec[2]["functionType"], "HttpAction");
        assert_eq!(spec[2]["path"], "/hook");
    }
}
