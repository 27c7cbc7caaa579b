//! The manifest: what an app defines, as `analyze` reports it and `manifest.json` stores it.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::bindings::exports::kiln::platform::guest as wit;
use crate::bindings::kiln::platform::types::{FunctionKind, Visibility};
use crate::error::{ComponentError, Result};

/// One function of the app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSpec {
    /// `dir/module:export`.
    pub path: String,
    /// `query`, `mutation`, `action` or `httpAction`.
    pub kind: String,
    /// `public` or `internal`.
    pub visibility: String,
    /// The arguments validator (ValidatorJSON), if declared.
    pub args: Option<Json>,
    /// The return value validator (ValidatorJSON), if declared.
    pub returns: Option<Json>,
}

/// One HTTP route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// The path (or prefix ending in `*`).
    pub path: String,
    /// The method.
    pub method: String,
}

/// Everything the host needs to know about an app.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Every function, sorted by path.
    pub functions: Vec<FunctionSpec>,
    /// The schema (`defineSchema(...).export()`), if any.
    pub schema: Option<Json>,
    /// The cron jobs (`cronJobs().export()`), if any.
    pub crons: Option<Json>,
    /// The HTTP routes.
    pub http_routes: Vec<RouteSpec>,
}

fn parse_json(what: &str, text: Option<String>) -> Result<Option<Json>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| ComponentError::Wasm(format!("the app's {what} is not JSON: {e}")))
    })
    .transpose()
}

impl Manifest {
    /// Converts the WIT record, parsing the JSON texts it carries.
    pub fn from_wit(m: wit::Manifest) -> Result<Manifest> {
        let mut functions = m
            .functions
            .into_iter()
            .map(|f| {
                Ok(FunctionSpec {
                    kind: match f.kind {
                        FunctionKind::Query => "query",
                        FunctionKind::Mutation => "mutation",
                        FunctionKind::Action => "action",
                        FunctionKind::HttpAction => "httpAction",
                    }
                    .to_owned(),
                    visibility: match f.visibility {
                        Visibility::Public => "public",
                        Visibility::Internal => "internal",
                    }
                    .to_owned(),
                    args: parse_json(&format!("args validator of {}", f.path), f.args)?,
                    returns: parse_json(&format!("returns validator of {}", f.path), f.returns)?,
                    path: f.path,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        functions.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Manifest {
            functions,
            schema: parse_json("schema", m.schema)?,
            crons: parse_json("crons", m.crons)?,
            http_routes: m.http_routes.into_iter().map(|r| RouteSpec { path: r.path, method: r.method }).collect(),
        })
    }

    /// A function by path.
    pub fn function(&self, path: &str) -> Option<&FunctionSpec> {
        self.functions.iter().find(|f| f.path == path)
    }

    /// What the app declares that Kiln does not run yet, each named with the file that
    /// declares it: a deploy refuses these instead of accepting an app whose cron jobs, routes
    /// or indexes would silently never run.
    pub fn unsupported(&self) -> Vec<String> {
        let mut found = Vec::new();
        if let Some(crons) = &self.crons
            && crons.as_object().is_none_or(|jobs| !jobs.is_empty())
        {
            found.push("cron jobs (convex/crons.ts) are not supported yet".to_owned());
        }
        if !self.http_routes.is_empty() {
            found.push("HTTP actions (the routes of convex/http.ts) are not supported yet".to_owned());
        } else if let Some(f) = self.functions.iter().find(|f| f.kind == "httpAction") {
            found.push(format!("HTTP actions ({}) are not supported yet", f.path));
        }
        let tables = self.schema.as_ref().and_then(|s| s.get("tables")).and_then(Json::as_array);
        for table in tables.map(Vec::as_slice).unwrap_or_default() {
            let name = table.get("tableName").and_then(Json::as_str).unwrap_or("?");
            for (key, what) in [("searchIndexes", "search index"), ("vectorIndexes", "vector index")] {
                for index in table.get(key).and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default() {
                    let index = index.get("indexDescriptor").and_then(Json::as_str).unwrap_or("?");
                    found.push(format!("{what} {name}.{index} (convex/schema.ts) is not supported yet"));
                }
            }
        }
        found
    }

    /// Fails with [`ComponentError::Unsupported`] when the app declares anything of
    /// [`Manifest::unsupported`].
    pub fn check_supported(&self) -> Result<()> {
        unsupported_error(self.unsupported())
    }
}

/// [`ComponentError::Unsupported`] listing `found`, or nothing when it is empty.
pub fn unsupported_error(found: Vec<String>) -> Result<()> {
    if found.is_empty() { Ok(()) } else { Err(ComponentError::Unsupported(found.join("; "))) }
}
