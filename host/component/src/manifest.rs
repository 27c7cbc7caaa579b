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
    /// The default export of `convex/auth.config.ts`, if the app has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Json>,
    /// With a `convex.config.ts`: the app's definition and the component definitions it uses
    /// (`{app, definitions: [{id, path, definition, schema, crons, httpRoutes}]}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub components: Option<Json>,
}

/// One mounted instance of a component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentInstance {
    /// Its path from the app: the names given to `use`, `/`-separated (`limiter`, `a/b`).
    pub path: String,
    /// Its definition's id in the build: its functions are `@<id>/<module>:<export>`.
    pub definition: String,
    /// Its definition's folder relative to the app's `convex/` folder.
    pub definition_path: String,
}

/// How deep components may mount components.
pub const MAX_COMPONENT_DEPTH: usize = 16;

/// An identity provider an app declares in `convex/auth.config.ts`, in either of Convex's
/// forms: an OpenID Connect `domain`, or `type: "customJwt"` with an issuer and a JWKS.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuthProviderSpec {
    /// The OpenID Connect domain (also the issuer).
    pub domain: Option<String>,
    /// The issuer of a custom JWT provider.
    pub issuer: Option<String>,
    /// The expected audience.
    pub application_id: Option<String>,
    /// The one algorithm a custom JWT provider signs with.
    pub algorithm: Option<String>,
    /// A JWKS given inline (a `data:` URI in the file).
    pub jwks: Option<Json>,
    /// Where to fetch the JWKS.
    pub jwks_url: Option<String>,
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
            auth: parse_json("auth.config", m.auth)?,
            components: parse_json("convex.config", m.components)?,
            http_routes: m.http_routes.into_iter().map(|r| RouteSpec { path: r.path, method: r.method }).collect(),
        })
    }

    /// A function by path.
    pub fn function(&self, path: &str) -> Option<&FunctionSpec> {
        self.functions.iter().find(|f| f.path == path)
    }

    /// Fails with [`ComponentError::AuthConfig`] when the app's `auth.config.ts` is not one
    /// Kiln can apply, and refuses, by name, what mounted components declare that Kiln does
    /// not run yet (their cron jobs, HTTP routes and environment variables).
    pub fn check_supported(&self) -> Result<()> {
        self.auth_providers()?;
        self.component_instances()?;
        let Some(tree) = &self.components else { return Ok(()) };
        let mut found = Vec::new();
        let analyses = std::iter::once(("the app", tree.get("app").unwrap_or(&Json::Null)));
        let definitions = tree.get("definitions").and_then(Json::as_array).into_iter().flatten();
        for (owner, analysis) in
            analyses.chain(definitions.map(|d| {
                (d.get("path").and_then(Json::as_str).unwrap_or("?"), d.get("definition").unwrap_or(&Json::Null))
            }))
        {
            let non_empty = |key: &str| match analysis.get(key) {
                Some(Json::Array(a)) => !a.is_empty(),
                Some(Json::Object(o)) => !o.is_empty(),
                _ => false,
            };
            if non_empty("httpMounts") {
                found.push(format!("HTTP routes of components (mounted with httpPrefix by {owner})"));
            }
            if non_empty("envVars") {
                found.push(format!("environment variables of components (declared by {owner})"));
            }
            for child in analysis.get("childComponents").and_then(Json::as_array).into_iter().flatten() {
                if child.get("env").is_some_and(|e| matches!(e, Json::Array(a) if !a.is_empty())) {
                    let name = child.get("name").and_then(Json::as_str).unwrap_or("?");
                    found.push(format!("environment variables passed to component {name} (by {owner})"));
                }
            }
        }
        for d in tree.get("definitions").and_then(Json::as_array).into_iter().flatten() {
            let path = d.get("path").and_then(Json::as_str).unwrap_or("?");
            if d.get("crons").is_some_and(|c| !c.is_null()) {
                found.push(format!("cron jobs of components ({path}/crons)"));
            }
            if d.get("httpRoutes").and_then(Json::as_array).is_some_and(|r| !r.is_empty()) {
                found.push(format!("HTTP actions of components ({path}/http)"));
            }
        }
        found.dedup();
        unsupported_error(found.into_iter().map(|f| format!("{f} are not supported yet")).collect())
    }

    /// The deployment's schema: the app's, and each mounted instance's tables under
    /// `<instance>/<table>` (its `v.id` validators renamed alike); `None` when neither has one.
    pub fn deployment_schema(&self) -> Result<Option<Json>> {
        let instances = self.component_instances()?;
        let mut schemas: std::collections::HashMap<&str, &Json> = std::collections::HashMap::new();
        for d in self.components.iter().flat_map(|t| t.get("definitions").and_then(Json::as_array)).flatten() {
            if let (Some(id), Some(schema)) = (d.get("id").and_then(Json::as_str), d.get("schema"))
                && !schema.is_null()
            {
                schemas.insert(id, schema);
            }
        }
        let mut merged = match &self.schema {
            Some(schema) => schema.clone(),
            None if instances.iter().any(|i| schemas.contains_key(i.definition.as_str())) => {
                serde_json::json!({"tables": [], "schemaValidation": true})
            }
            None => return Ok(None),
        };
        let mut added = Vec::new();
        for instance in &instances {
            let Some(schema) = schemas.get(instance.definition.as_str()) else { continue };
            for table in schema.get("tables").and_then(Json::as_array).into_iter().flatten() {
                let mut table = table.clone();
                qualify_ids(&mut table, &instance.path);
                added.push(table);
            }
        }
        match merged.get_mut("tables").and_then(Json::as_array_mut) {
            Some(tables) => tables.extend(added),
            None => return Err(ComponentError::Wasm("the app's schema has no `tables`".into())),
        }
        Ok(Some(merged))
    }

    /// Every component instance the app mounts, parents before their children, from the
    /// `convex.config` definitions; none without the file.
    pub fn component_instances(&self) -> Result<Vec<ComponentInstance>> {
        let Some(tree) = &self.components else { return Ok(Vec::new()) };
        let bad = |why: String| ComponentError::ComponentConfig(format!("convex.config: {why}"));
        let mut by_path = std::collections::HashMap::new();
        for d in tree.get("definitions").and_then(Json::as_array).into_iter().flatten() {
            let (Some(id), Some(path)) = (d.get("id").and_then(Json::as_str), d.get("path").and_then(Json::as_str))
            else {
                return Err(bad("a component definition without an id and a path".into()));
            };
            by_path.insert(path, (id, d.get("definition").unwrap_or(&Json::Null)));
        }
        let mut out = Vec::new();
        // (parent instance path, its definition's analysis, depth)
        let mut pending = vec![(String::new(), tree.get("app").unwrap_or(&Json::Null), 0usize)];
        while let Some((parent, analysis, depth)) = pending.pop() {
            let owner = if parent.is_empty() { "the app".to_owned() } else { format!("component {parent}") };
            let mut names = std::collections::HashSet::new();
            let children = analysis.get("childComponents").and_then(Json::as_array).into_iter().flatten();
            let mut mounted = Vec::new();
            for child in children {
                let name = child.get("name").and_then(Json::as_str).unwrap_or_default();
                if !is_component_name(name) {
                    return Err(bad(format!(
                        "{owner} mounts a component named {name:?}: names are identifiers (letters, digits, `_`, at most 64)"
                    )));
                }
                if !names.insert(name) {
                    return Err(bad(format!("{owner} mounts two components named {name:?}")));
                }
                let def_path = child.get("path").and_then(Json::as_str).unwrap_or_default();
                let Some((id, definition)) = by_path.get(def_path) else {
                    return Err(bad(format!(
                        "{owner} mounts {name:?} from {def_path:?}, which the build did not bundle"
                    )));
                };
                if depth + 1 > MAX_COMPONENT_DEPTH {
                    return Err(bad(format!("components nest more than {MAX_COMPONENT_DEPTH} deep ({parent}/{name})")));
                }
                let path = if parent.is_empty() { name.to_owned() } else { format!("{parent}/{name}") };
                out.push(ComponentInstance {
                    path: path.clone(),
                    definition: (*id).to_owned(),
                    definition_path: def_path.to_owned(),
                });
                mounted.push((path, *definition, depth + 1));
            }
            // Children in the order they were mounted.
            pending.extend(mounted.into_iter().rev());
        }
        Ok(out)
    }

    /// The identity providers of the app's `convex/auth.config.ts` (none without the file).
    pub fn auth_providers(&self) -> Result<Vec<AuthProviderSpec>> {
        let Some(config) = &self.auth else { return Ok(Vec::new()) };
        let bad = |why: String| ComponentError::AuthConfig(format!("convex/auth.config.ts: {why}"));
        let providers = match config.get("providers") {
            Some(Json::Array(list)) => list,
            None | Some(Json::Null) => return Ok(Vec::new()),
            Some(_) => return Err(bad("`providers` must be an array".into())),
        };
        providers
            .iter()
            .enumerate()
            .map(|(i, p)| auth_provider(p).map_err(|why| bad(format!("provider {i}: {why}"))))
            .collect()
    }
}

fn auth_provider(p: &Json) -> std::result::Result<AuthProviderSpec, String> {
    let Some(fields) = p.as_object() else { return Err("not an object".into()) };
    let text = |key: &str| -> std::result::Result<Option<String>, String> {
        match fields.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{key}` must be a non-empty string")),
        }
    };
    // Kiln reads the file when it builds the app, without the deployment's environment.
    let missing = |key: &str| {
        format!(
            "`{key}` is missing (environment variables in auth.config.ts are not supported yet: \
             Kiln reads the file at build time; write the value, or configure the provider with `kiln config`)"
        )
    };
    for key in fields.keys() {
        if !["type", "domain", "issuer", "applicationID", "algorithm", "jwks"].contains(&key.as_str()) {
            return Err(format!("unknown field `{key}`"));
        }
    }
    let application_id = text("applicationID")?;
    match text("type")?.as_deref() {
        None | Some("oidc") => {
            let domain = text("domain")?.ok_or_else(|| missing("domain"))?;
            if !domain.starts_with("https://") && !domain.starts_with("http://") {
                return Err(format!("`domain` {domain:?} must be an http(s) URL"));
            }
            Ok(AuthProviderSpec { domain: Some(domain), application_id, ..AuthProviderSpec::default() })
        }
        Some("customJwt") => {
            let issuer = text("issuer")?.ok_or_else(|| missing("issuer"))?;
            let algorithm = text("algorithm")?.ok_or_else(|| missing("algorithm"))?;
            if !["RS256", "ES256"].contains(&algorithm.as_str()) {
                return Err(format!("`algorithm` {algorithm:?} must be RS256 or ES256"));
            }
            let jwks = text("jwks")?.ok_or_else(|| missing("jwks"))?;
            let (jwks, jwks_url) = match jwks.strip_prefix("data:") {
                Some(uri) => (Some(data_uri_json(uri)?), None),
                None if jwks.starts_with("https://") || jwks.starts_with("http://") => (None, Some(jwks)),
                None => return Err("`jwks` must be an http(s) URL or a data: URI".into()),
            };
            Ok(AuthProviderSpec {
                issuer: Some(issuer),
                application_id,
                algorithm: Some(algorithm),
                jwks,
                jwks_url,
                domain: None,
            })
        }
        Some(other) => Err(format!("unknown provider type {other:?} (Convex's are \"oidc\" and \"customJwt\")")),
    }
}

/// The JSON document of a `data:` URI (after `data:`), base64 or percent-encoded.
fn data_uri_json(uri: &str) -> std::result::Result<Json, String> {
    use base64::Engine;
    let (meta, data) = uri.split_once(',').ok_or("the jwks data: URI has no `,`")?;
    let bytes = if meta.ends_with(";base64") {
        base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|_| "the jwks data: URI is not base64")?
    } else {
        percent_encoding::percent_decode_str(data).collect()
    };
    serde_json::from_slice(&bytes).map_err(|e| format!("the jwks data: URI is not JSON: {e}"))
}

/// Renames, within one table of a component's schema, the table and every table an id
/// validator names to the instance's (`<instance>/<table>`).
fn qualify_ids(value: &mut Json, instance: &str) {
    match value {
        Json::Object(o) => {
            for (key, v) in o.iter_mut() {
                match v {
                    // The table's own name, and that of every `v.id` validator.
                    Json::String(name) if key == "tableName" => *name = format!("{instance}/{name}"),
                    _ => qualify_ids(v, instance),
                }
            }
        }
        Json::Array(items) => items.iter_mut().for_each(|v| qualify_ids(v, instance)),
        _ => {}
    }
}

/// Whether `name` may name a mounted component (an identifier, as in Convex).
fn is_component_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// [`ComponentError::Unsupported`] listing `found`, or nothing when it is empty.
pub fn unsupported_error(found: Vec<String>) -> Result<()> {
    if found.is_empty() { Ok(()) } else { Err(ComponentError::Unsupported(found.join("; "))) }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn with_auth(auth: Json) -> Manifest {
        Manifest {
            functions: Vec::new(),
            schema: None,
            crons: None,
            http_routes: Vec::new(),
            auth: Some(auth),
            components: None,
        }
    }

    #[test]
    fn auth_config_providers_in_both_of_convexs_forms() {
        let jwks = json!({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]});
        let b64 = {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(jwks.to_string())
        };
        let manifest = with_auth(json!({"providers": [
            {"domain": "https://clerk.example.com", "applicationID": "convex"},
            {"type": "customJwt", "issuer": "https://i.example", "algorithm": "ES256",
             "jwks": format!("data:text/plain;charset=utf-8;base64,{b64}")},
            {"type": "customJwt", "issuer": "https://j.example", "algorithm": "RS256",
             "jwks": "data:application/json,%7B%22keys%22%3A%5B%5D%7D"},
            {"type": "customJwt", "issuer": "https://k.example", "algorithm": "RS256", "jwks": "https://k.example/jwks"},
        ]}));
        let providers = manifest.auth_providers().unwrap();
        assert_eq!(providers[0].domain.as_deref(), Some("https://clerk.example.com"));
        assert_eq!(providers[0].application_id.as_deref(), Some("convex"));
        assert_eq!(providers[1].jwks.as_ref(), Some(&jwks));
        assert_eq!(providers[1].algorithm.as_deref(), Some("ES256"));
        assert_eq!(providers[2].jwks.as_ref(), Some(&json!({"keys": []})));
        assert_eq!(providers[3].jwks_url.as_deref(), Some("https://k.example/jwks"));
        assert!(manifest.check_supported().is_ok());
        assert!(with_auth(json!({})).auth_providers().unwrap().is_empty());
    }

    #[test]
    fn an_auth_config_kiln_cannot_apply_is_refused_with_the_reason() {
        for (provider, why) in [
            (json!({"applicationID": "convex"}), "`domain` is missing (environment variables"),
            (json!({"domain": "clerk.example.com"}), "must be an http(s) URL"),
            (json!({"type": "saml", "domain": "https://x"}), "unknown provider type"),
            (json!({"domain": "https://x", "applicationId": "typo"}), "unknown field `applicationId`"),
            (
                json!({"type": "customJwt", "issuer": "https://i", "algorithm": "HS256", "jwks": "https://i/j"}),
                "RS256 or ES256",
            ),
            (json!({"type": "customJwt", "issuer": "https://i", "algorithm": "RS256", "jwks": "data:,{"}), "not JSON"),
            (json!({"type": "customJwt", "issuer": "https://i", "algorithm": "RS256"}), "`jwks` is missing"),
        ] {
            let err = with_auth(json!({"providers": [provider]})).check_supported().unwrap_err();
            assert_eq!(err.code(), "InvalidAuthConfig");
            let message = err.to_string();
            assert!(message.starts_with("convex/auth.config.ts: provider 0: "), "{message}");
            assert!(message.contains(why), "{message} lacks {why}");
        }
        let err = with_auth(json!({"providers": {}})).check_supported().unwrap_err();
        assert!(err.to_string().contains("must be an array"));
    }

    fn with_components(components: Json) -> Manifest {
        Manifest { auth: None, components: Some(components), ..with_auth(Json::Null) }
    }

    fn child(name: &str, path: &str) -> Json {
        json!({"name": name, "path": path, "args": [], "env": null})
    }

    #[test]
    fn mounted_components_are_listed_parents_first() {
        let manifest = with_components(json!({
            "app": {"childComponents": [child("limiter", "../node_modules/rl"), child("counts", "c"), child("more", "c")]},
            "definitions": [
                {"id": "c0", "path": "../node_modules/rl", "definition": {"childComponents": []}},
                {"id": "c1", "path": "c", "definition": {"childComponents": [child("inner", "../node_modules/rl")]}},
            ],
        }));
        let found: Vec<(String, String)> =
            manifest.component_instances().unwrap().into_iter().map(|i| (i.path, i.definition)).collect();
        let expected =
            [("limiter", "c0"), ("counts", "c1"), ("more", "c1"), ("counts/inner", "c0"), ("more/inner", "c0")];
        assert_eq!(found, expected.map(|(p, d)| (p.to_owned(), d.to_owned())));
        assert!(manifest.check_supported().is_ok());
    }

    #[test]
    fn a_component_config_kiln_cannot_run_is_refused_with_the_reason() {
        let def = json!([{"id": "c0", "path": "c", "definition": {"childComponents": []}}]);
        for (children, why) in [
            (json!([child("a", "c"), child("a", "c")]), "two components named \"a\""),
            (json!([child("a-b", "c")]), "named \"a-b\""),
            (json!([child("a", "elsewhere")]), "did not bundle"),
        ] {
            let err = with_components(json!({"app": {"childComponents": children}, "definitions": def}))
                .component_instances();
            let err = err.unwrap_err();
            assert_eq!(err.code(), "InvalidComponentConfig");
            assert!(err.to_string().contains(why), "{err} lacks {why}");
        }
        // A definition mounting itself would nest forever: refused at the depth limit.
        let looping = json!({
            "app": {"childComponents": [child("a", "c")]},
            "definitions": [{"id": "c0", "path": "c", "definition": {"childComponents": [child("a", "c")]}}],
        });
        let err = with_components(looping).component_instances().unwrap_err();
        assert!(err.to_string().contains("nest more than 16"), "{err}");
    }

    #[test]
    fn component_schemas_join_the_deployment_schema_under_their_instances() {
        let counters = json!({"tables": [{
            "tableName": "counters",
            "indexes": [{"indexDescriptor": "by_name", "fields": ["name"]}],
            "documentType": {"type": "object", "value": {"next": {"fieldType": {"type": "id", "tableName": "counters"}, "optional": false}}},
        }], "schemaValidation": true});
        let mut manifest = with_components(json!({
            "app": {"childComponents": [child("one", "c"), child("two", "c")]},
            "definitions": [{"id": "c0", "path": "c", "definition": {"childComponents": []}, "schema": counters}],
        }));
        let schema = manifest.deployment_schema().unwrap().unwrap();
        let tables = schema["tables"].as_array().unwrap();
        let names: Vec<&str> = tables.iter().map(|t| t["tableName"].as_str().unwrap()).collect();
        assert_eq!(names, ["one/counters", "two/counters"]);
        assert_eq!(tables[1]["documentType"]["value"]["next"]["fieldType"]["tableName"], "two/counters");
        assert_eq!(tables[0]["indexes"][0]["indexDescriptor"], "by_name");
        manifest.schema = Some(json!({"tables": [{"tableName": "messages"}], "schemaValidation": false}));
        let schema = manifest.deployment_schema().unwrap().unwrap();
        assert_eq!(schema["tables"].as_array().unwrap().len(), 3);
        assert_eq!(schema["schemaValidation"], false);
        assert_eq!(with_auth(Json::Null).deployment_schema().unwrap(), None);
    }

    #[test]
    fn what_components_declare_that_kiln_does_not_run_is_refused_by_name() {
        let manifest = with_components(json!({
            "app": {"childComponents": [child("one", "c")]},
            "definitions": [{"id": "c0", "path": "c", "definition": {"childComponents": []}, "crons": {"tick": {}}}],
        }));
        let err = manifest.check_supported().unwrap_err();
        assert_eq!(err.code(), "UnsupportedFeature");
        assert!(err.to_string().contains("cron jobs of components (c/crons)"), "{err}");
    }
}
