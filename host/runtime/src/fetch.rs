//! Outgoing HTTP for actions: only to allowed hosts, with a timeout, no redirects, and caps on
//! request and response sizes.

use std::io::Read;

use kiln_guest_sdk::bindings::kiln::platform::types::{Header, HttpRequest, HttpResponse};

use crate::error::CallError;
use crate::knobs::FetchPolicy;

/// Whether `host` (and `port`) is allowed by an allow-list entry.
fn allowed(policy: &FetchPolicy, host: &str, port: Option<u16>) -> bool {
    policy.allowed_hosts.iter().any(|entry| {
        let (pattern, want_port) = match entry.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().ok()),
            None => (entry.as_str(), None),
        };
        let host_ok = match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => host.eq_ignore_ascii_case(pattern),
        };
        host_ok && want_port.is_none_or(|p| Some(p) == port)
    })
}

/// Performs one request under `policy`.
pub(crate) fn fetch(policy: &FetchPolicy, request: HttpRequest) -> Result<HttpResponse, CallError> {
    let uri: ureq::http::Uri =
        request.url.parse().map_err(|e| CallError::new("InvalidUrl", format!("{}: {e}", request.url)))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(CallError::new("InvalidUrl", format!("{}: only http and https are supported", request.url))),
    }
    let host = uri.host().unwrap_or_default();
    if !allowed(policy, host, uri.port_u16()) {
        return Err(CallError::new("FetchNotAllowed", format!("{host} is not in this deployment's fetch allow-list")));
    }
    if request.body.len() > policy.max_request_bytes {
        return Err(CallError::new(
            "RequestTooLarge",
            format!("the request body is over {} bytes", policy.max_request_bytes),
        ));
    }
    let mut builder = ureq::http::Request::builder().method(request.method.as_str()).uri(uri);
    for h in &request.headers {
        builder = builder.header(h.name.as_str(), h.value.as_str());
    }
    let req = builder.body(request.body).map_err(|e| CallError::new("InvalidRequest", e.to_string()))?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(policy.timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let response = agent.run(req).map_err(|e| match e {
        ureq::Error::Timeout(_) => {
            CallError::new("FetchTimeout", format!("the request took over {:?}", policy.timeout))
        }
        other => CallError::new("FetchFailed", other.to_string()),
    })?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| Header { name: k.as_str().to_owned(), value: String::from_utf8_lossy(v.as_bytes()).into_owned() })
        .collect();
    let mut body = Vec::new();
    let limit = policy.max_response_bytes as u64;
    response
        .into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| CallError::new("FetchFailed", e.to_string()))?;
    if body.len() as u64 > limit {
        return Err(CallError::new("ResponseTooLarge", format!("the response body is over {limit} bytes")));
    }
    Ok(HttpResponse { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matching() {
        let policy = FetchPolicy {
            allowed_hosts: vec!["api.example.com".into(), "*.svc.internal".into(), "127.0.0.1:8080".into()],
            ..FetchPolicy::default()
        };
        assert!(allowed(&policy, "api.example.com", None));
        assert!(allowed(&policy, "API.example.com", Some(443)));
        assert!(!allowed(&policy, "evil.example.com", None));
        assert!(allowed(&policy, "a.svc.internal", None));
        assert!(!allowed(&policy, "svc.internal", None));
        assert!(!allowed(&policy, "xsvc.internal", None));
        assert!(allowed(&policy, "127.0.0.1", Some(8080)));
        assert!(!allowed(&policy, "127.0.0.1", Some(8081)));
    }
}
