//! Outgoing HTTP for actions. By default an action may fetch any public `http`/`https`
//! address; a host the deployment denies, and any address that is not public (loopback,
//! private, link-local, cloud metadata, ...) unless its host is allowed, is refused. The check
//! runs on the addresses the host name resolves to, in the resolver the connection then uses
//! (so a name cannot resolve to a public address for the check and a private one for the
//! connection), and again at every redirect. Timeouts and size caps have codes of their own.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use kiln_component::bindings::kiln::platform::types::{Header, HttpRequest, HttpResponse};
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

use crate::error::CallError;
use crate::knobs::FetchPolicy;

/// Whether `host` (and `port`) matches an entry of a host list: `name`, `*.suffix`,
/// `name:port`, an IP address (`[v6]:port` with a port).
fn matches(list: &[String], host: &str, port: Option<u16>) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    list.iter().any(|entry| {
        let (pattern, want_port) = split_port(entry);
        let host_ok = match pattern.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                    && host[..host.len() - suffix.len()].ends_with('.')
            }
            None => host.eq_ignore_ascii_case(pattern),
        };
        host_ok && want_port.is_none_or(|p| Some(p) == port)
    })
}

/// An entry's host and port: `host:port`, `[v6]:port`, or a bare host or IPv6 address.
fn split_port(entry: &str) -> (&str, Option<u16>) {
    if let Some(rest) = entry.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        };
    }
    match entry.rsplit_once(':') {
        // More than one colon: an IPv6 address without a port.
        Some((h, _)) if h.contains(':') => (entry, None),
        Some((h, p)) => (h, p.parse::<u16>().ok()),
        None => (entry, None),
    }
}

/// Why `ip` is not a public address, or `None` when it is one.
pub(crate) fn non_public(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip == Ipv4Addr::new(169, 254, 169, 254) => "a cloud metadata address",
        (127, _, _) => "a loopback address",
        (0, _, _) => "an unspecified (this-network) address",
        (10, _, _) | (192, 168, _) => "a private address",
        (172, b, _) if (16..32).contains(&b) => "a private address",
        (169, 254, _) => "a link-local address",
        // Shared address space (carrier-grade NAT; also Alibaba Cloud's metadata address).
        (100, b, _) if (64..128).contains(&b) => "a shared (carrier-grade NAT) address",
        // IETF protocol assignments (Oracle Cloud's metadata address is 192.0.0.192).
        (192, 0, 0) => "an IETF protocol address",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18 | 19, _) => "a benchmarking address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved address",
        _ => return None,
    })
}

fn non_public_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    let embedded = |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d) addresses reach the IPv4
    // address inside; so do NAT64 (64:ff9b::/96) and 6to4 (2002::/16) ones.
    if s[..5] == [0; 5] && (s[5] == 0xffff || s[5] == 0) {
        return non_public_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return non_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return non_public_v4(embedded(s[1], s[2]));
    }
    Some(match s[0] {
        x if x & 0xfe00 == 0xfc00 => "a private (unique local) address",
        x if x & 0xffc0 == 0xfe80 => "a link-local address",
        x if x & 0xffc0 == 0xfec0 => "a site-local address",
        x if x & 0xff00 == 0xff00 => "a multicast address",
        // Teredo tunnels to an address that cannot be checked.
        0x2001 if s[1] == 0 => "a Teredo address",
        0x2001 if s[1] == 0xdb8 => "a documentation address",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only address",
        _ => return None,
    })
}

/// A refusal by the policy, carried through ureq as the source of an I/O error.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves with the system resolver, then applies the policy to the host and to every
/// address it resolved to; the connection uses exactly the addresses checked.
#[derive(Debug)]
struct CheckingResolver {
    policy: FetchPolicy,
    inner: DefaultResolver,
}

impl CheckingResolver {
    fn refuse(why: String) -> ureq::Error {
        ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, Refused(why)))
    }

    /// Whether a request to `host:port` may be made at all (before resolving it).
    fn check_host(&self, host: &str, port: Option<u16>) -> Result<(), String> {
        if matches(&self.policy.denied_hosts, host, port) {
            return Err(format!("{host} is denied by this deployment's fetch configuration"));
        }
        if self.policy.only_allowed && !matches(&self.policy.allowed_hosts, host, port) {
            return Err(format!("{host} is not among this deployment's allowed fetch hosts"));
        }
        Ok(())
    }
}

impl Resolver for CheckingResolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or_default();
        let port = uri.port_u16();
        self.check_host(host, port).map_err(Self::refuse)?;
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if matches(&self.policy.allowed_hosts, host, port) {
            return Ok(addrs);
        }
        for addr in addrs.iter() {
            if let Some(why) = non_public(addr.ip()) {
                return Err(Self::refuse(format!(
                    "{host} resolves to {}, {why}; allow the host in this deployment's fetch configuration to reach it",
                    addr.ip()
                )));
            }
        }
        Ok(addrs)
    }
}

/// The policy's refusal inside a ureq error, if that is what it is.
fn refusal(e: &ureq::Error) -> Option<&Refused> {
    match e {
        ureq::Error::Io(io) => io.get_ref().and_then(|inner| inner.downcast_ref::<Refused>()),
        _ => None,
    }
}

/// Performs one request under `policy` (following up to `max_redirects` redirects, each
/// checked like the first request).
pub(crate) fn fetch(policy: &FetchPolicy, request: HttpRequest) -> Result<HttpResponse, CallError> {
    let uri: ureq::http::Uri =
        request.url.parse().map_err(|e| CallError::new("InvalidUrl", format!("{}: {e}", request.url)))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(CallError::new("InvalidUrl", format!("{}: only http and https are supported", request.url))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(CallError::new("InvalidUrl", format!("{}: the URL has no host", request.url)));
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
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(policy.timeout))
        .http_status_as_error(false)
        .max_redirects(policy.max_redirects)
        .build();
    let resolver = CheckingResolver { policy: policy.clone(), inner: DefaultResolver::default() };
    let agent = ureq::Agent::with_parts(config, DefaultConnector::default(), resolver);
    let response = agent.run(req).map_err(|e| match e {
        ureq::Error::Timeout(_) => {
            CallError::new("FetchTimeout", format!("the request took over {:?}", policy.timeout))
        }
        ureq::Error::TooManyRedirects => {
            CallError::new("TooManyRedirects", format!("more than {} redirects", policy.max_redirects))
        }
        e => match refusal(&e) {
            Some(refused) => CallError::new("FetchNotAllowed", refused.to_string()),
            None => CallError::new("FetchFailed", e.to_string()),
        },
    })?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| Header { name: k.as_str().to_owned(), value: String::from_utf8_lossy(v.as_bytes()).into_owned() })
        .collect();
    let mut body = Vec::new();
    let limit = policy.max_response_bytes as u64;
    response.into_body().into_reader().take(limit + 1).read_to_end(&mut body).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            CallError::new("FetchTimeout", format!("the response took over {:?}", policy.timeout))
        } else {
            CallError::new("FetchFailed", e.to_string())
        }
    })?;
    if body.len() as u64 > limit {
        return Err(CallError::new("ResponseTooLarge", format!("the response body is over {limit} bytes")));
    }
    Ok(HttpResponse { status, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_lists_match_names_wildcards_ports_and_addresses() {
        let list: Vec<String> =
            ["api.example.com", "*.svc.internal", "127.0.0.1:8080", "::1", "[fe80::1]:9000"].map(String::from).to_vec();
        assert!(matches(&list, "api.example.com", None));
        assert!(matches(&list, "API.example.com", Some(443)));
        assert!(!matches(&list, "evil.example.com", None));
        assert!(matches(&list, "a.svc.internal", None));
        assert!(matches(&list, "a.SVC.internal", None));
        assert!(!matches(&list, "svc.internal", None));
        assert!(!matches(&list, "xsvc.internal", None));
        assert!(matches(&list, "127.0.0.1", Some(8080)));
        assert!(!matches(&list, "127.0.0.1", Some(8081)));
        assert!(matches(&list, "[::1]", Some(3000)), "a bare IPv6 address allows every port");
        assert!(matches(&list, "[fe80::1]", Some(9000)));
        assert!(!matches(&list, "[fe80::1]", Some(9001)));
    }

    #[test]
    fn only_public_addresses_pass() {
        let refused = [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.170.2",
            "100.100.100.200",
            "192.0.0.192",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2001:0:4136:e378::1",
        ];
        for ip in refused {
            assert!(non_public(ip.parse().unwrap()).is_some(), "{ip} must be refused");
        }
        assert_eq!(non_public("169.254.169.254".parse().unwrap()), Some("a cloud metadata address"));
        assert_eq!(non_public("::ffff:127.0.0.1".parse().unwrap()), Some("a loopback address"));
        for ip in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(non_public(ip.parse().unwrap()), None, "{ip} is public");
        }
    }

    #[test]
    fn denied_and_allow_only_hosts_are_refused_before_resolving() {
        let policy = FetchPolicy {
            allowed_hosts: vec!["ok.example".into()],
            denied_hosts: vec!["*.blocked.example".into()],
            only_allowed: false,
            ..FetchPolicy::default()
        };
        let resolver = CheckingResolver { policy, inner: DefaultResolver::default() };
        assert!(resolver.check_host("a.blocked.example", None).is_err());
        assert!(resolver.check_host("anything.example", None).is_ok());
        let only = CheckingResolver {
            policy: FetchPolicy { only_allowed: true, ..resolver.policy.clone() },
            inner: DefaultResolver::default(),
        };
        assert!(only.check_host("anything.example", None).is_err());
        assert!(only.check_host("ok.example", Some(443)).is_ok());
    }
}
