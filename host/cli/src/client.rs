//! A small blocking client of a Kiln server's admin and function endpoints.

use std::io::BufRead;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use crate::CliError;

/// Where a server is and how to authenticate to it.
pub struct Target {
    /// The deployment's base URL (`http://host:port` or `http://host:port/d/<name>`).
    pub url: String,
    /// The admin key.
    pub admin_key: String,
}

/// The admin key: given, or the local server's instance key (`<data>/admin_key`).
pub fn admin_key(given: Option<String>, data: &Path) -> Result<String, CliError> {
    if let Some(k) = given {
        return Ok(k);
    }
    let path = data.join("admin_key");
    std::fs::read_to_string(&path).map(|k| k.trim().to_owned()).map_err(|_| {
        CliError::Usage(format!(
            "no admin key: pass --admin-key, set KILN_ADMIN_KEY, or run next to a local server's {}",
            path.display()
        ))
    })
}

/// The URL of a deployment: `url`, or `url/d/<deployment>` when one is named.
pub fn deployment_url(url: &str, deployment: Option<&str>) -> String {
    let base = url.trim_end_matches('/');
    match deployment {
        Some(d) => format!("{base}/d/{d}"),
        None => base.to_owned(),
    }
}

fn agent(timeout: Option<Duration>) -> ureq::Agent {
    ureq::Agent::config_builder().timeout_global(timeout).http_status_as_error(false).build().into()
}

fn read_reply(mut response: ureq::http::Response<ureq::Body>) -> Result<Value, CliError> {
    let status = response.status().as_u16();
    let text = response
        .body_mut()
        .with_config()
        .limit(256 << 20)
        .read_to_string()
        .map_err(|e| CliError::Http(e.to_string()))?;
    let body: Value = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    if status >= 400 && status != 560 {
        let code = body.get("code").and_then(Value::as_str).unwrap_or("HttpError").to_owned();
        let message = body.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or(text);
        return Err(CliError::Remote { code, message });
    }
    Ok(body)
}

impl Target {
    fn post(&self, path: &str, body: &Value, timeout: Duration) -> Result<Value, CliError> {
        let response = agent(Some(timeout))
            .post(format!("{}{path}", self.url))
            .header("Authorization", format!("Convex {}", self.admin_key))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| CliError::Http(format!("{}: {e}", self.url)))?;
        read_reply(response)
    }

    fn get(&self, path: &str) -> Result<Value, CliError> {
        let response = agent(Some(Duration::from_secs(30)))
            .get(format!("{}{path}", self.url))
            .header("Authorization", format!("Convex {}", self.admin_key))
            .call()
            .map_err(|e| CliError::Http(format!("{}: {e}", self.url)))?;
        read_reply(response)
    }

    /// Uploads a component and its manifest.
    pub fn deploy(&self, component: &[u8], manifest: &Value) -> Result<Value, CliError> {
        let body = json!({
            "component": base64::engine::general_purpose::STANDARD.encode(component),
            "manifest": manifest,
        });
        self.post("/api/kiln/deploy", &body, Duration::from_secs(600))
    }

    /// Runs a function (any kind) as admin; returns the value or the failure.
    pub fn run(&self, function: &str, args: &Value) -> Result<Value, CliError> {
        let body = json!({ "path": function, "args": args, "format": "convex_encoded_json" });
        let reply = self.post("/api/function", &body, Duration::from_secs(660))?;
        match reply.get("status").and_then(Value::as_str) {
            Some("success") => Ok(reply.get("value").cloned().unwrap_or(Value::Null)),
            _ => Err(CliError::Function {
                message: reply.get("errorMessage").and_then(Value::as_str).unwrap_or("unknown error").to_owned(),
                data: reply.get("errorData").cloned(),
            }),
        }
    }

    /// Creates a deployment (needs the instance key); returns the reply with its admin key.
    pub fn create_deployment(&self, name: &str) -> Result<Value, CliError> {
        self.post("/api/kiln/deployments", &json!({ "name": name }), Duration::from_secs(60))
    }

    /// The deployment's configuration (auth providers, environment variable names, fetch).
    pub fn config(&self) -> Result<Value, CliError> {
        self.get("/api/kiln/config")
    }

    /// Changes the deployment's configuration (`{auth?, env?, fetch?}`).
    pub fn set_config(&self, body: &Value) -> Result<Value, CliError> {
        self.post("/api/kiln/config", body, Duration::from_secs(60))
    }

    /// Lists the hosts sharing the server's database (needs the instance key).
    pub fn list_hosts(&self) -> Result<Value, CliError> {
        self.get("/api/kiln/hosts")
    }

    /// Lists deployments (needs the instance key).
    pub fn list_deployments(&self) -> Result<Value, CliError> {
        self.get("/api/kiln/deployments")
    }

    /// Streams the function log, calling `each` per entry; returns when the stream ends.
    pub fn logs(&self, follow: bool, mut each: impl FnMut(&Value)) -> Result<(), CliError> {
        let response = agent(None)
            .get(format!("{}/api/kiln/logs?follow={follow}", self.url))
            .header("Authorization", format!("Convex {}", self.admin_key))
            .call()
            .map_err(|e| CliError::Http(format!("{}: {e}", self.url)))?;
        if response.status().as_u16() >= 400 {
            return read_reply(response).map(|_| ());
        }
        let reader = std::io::BufReader::new(response.into_body().into_reader());
        for line in reader.lines() {
            let line = line.map_err(|e| CliError::Http(e.to_string()))?;
            if let Ok(entry) = serde_json::from_str::<Value>(&line) {
                each(&entry);
            }
        }
        Ok(())
    }
}

/// One log entry as a line of text.
pub fn format_log(entry: &Value) -> String {
    let text = |k: &str| entry.get(k).and_then(Value::as_str).unwrap_or_default();
    let num = |k: &str| entry.get(k).and_then(Value::as_u64).unwrap_or_default();
    let mut out = format!(
        "{} {:<8} {} {} ({:.1} ms, {} fuel)",
        num("tsMs"),
        text("kind"),
        text("path"),
        text("outcome"),
        num("wallUs") as f64 / 1000.0,
        num("fuel")
    );
    if let Some(e) = entry.get("error").and_then(Value::as_str) {
        out.push_str(&format!("\n    {e}"));
    }
    for line in entry.get("lines").and_then(Value::as_array).into_iter().flatten() {
        out.push_str(&format!("\n    {}", line.as_str().unwrap_or_default()));
    }
    out
}
