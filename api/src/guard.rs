//! Request guards against cross-origin abuse of a server a browser can
//! reach: the `Host` check (DNS rebinding) and the JSON content type
//! (simple cross-origin POSTs cannot set it without a CORS preflight).

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::ApiError;

/// Which `Host` names a request may carry (port ignored). IP literals are
/// always accepted: a rebinding attack needs a DNS name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPolicy {
    /// Any host.
    Any,
    /// These names: exact (`engram.svc`) or a domain with its subdomains
    /// (`.example.com`), lowercase.
    Names(Vec<String>),
}

impl HostPolicy {
    /// The policy when `server.allowed_hosts` is empty: the loopback names
    /// when bound to a loopback address, any name otherwise.
    pub fn automatic(bind: IpAddr) -> Self {
        if bind.is_loopback() {
            HostPolicy::Names(vec!["localhost".into(), ".localhost".into()])
        } else {
            HostPolicy::Any
        }
    }

    /// Parses `server.allowed_hosts`.
    pub fn parse(list: &[String], bind: IpAddr) -> Result<Self, String> {
        if list.is_empty() {
            return Ok(Self::automatic(bind));
        }
        if list.iter().any(|h| h == "*") {
            return Ok(HostPolicy::Any);
        }
        let mut names = Vec::with_capacity(list.len());
        for h in list {
            let name = h.trim().to_ascii_lowercase();
            let bare = name.strip_prefix('.').unwrap_or(&name);
            let valid = !bare.is_empty()
                && bare.len() <= 253
                && bare
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !bare.starts_with('.')
                && !bare.ends_with('.');
            if !valid {
                return Err(format!(
                    "{h:?} is not a host name (letters, digits, '-' and '.'; a leading '.' allows subdomains; \"*\" allows any)"
                ));
            }
            names.push(name);
        }
        Ok(HostPolicy::Names(names))
    }

    /// Whether a `Host` header value is acceptable.
    pub fn allows(&self, host: &str) -> bool {
        let names = match self {
            HostPolicy::Any => return true,
            HostPolicy::Names(n) => n,
        };
        let name = strip_port(host).to_ascii_lowercase();
        if is_ip_literal(&name) {
            return true;
        }
        let name = name.strip_suffix('.').unwrap_or(&name);
        names.iter().any(|allowed| match allowed.strip_prefix('.') {
            Some(domain) => {
                name == domain
                    || name
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.'))
            }
            None => name == allowed,
        })
    }
}

/// `host[:port]`, `[v6]:port` or `[v6]` → the host part.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

/// Middleware: 421 `misdirected_host` when `Host` names a host the policy
/// does not allow. Requests without `Host` (HTTP/1.0 tools) pass: a browser
/// always sends one.
pub(crate) async fn check_host(
    State(policy): State<Arc<HostPolicy>>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(host) = req.headers().get(HOST) {
        let ok = host.to_str().is_ok_and(|h| policy.allows(h));
        if !ok {
            return ApiError {
                status: StatusCode::MISDIRECTED_REQUEST,
                code: "misdirected_host",
                message: format!(
                    "Host {:?} is not served here; add it to server.allowed_hosts (ENGRAM_SERVER__ALLOWED_HOSTS) if this server should answer to that name",
                    String::from_utf8_lossy(host.as_bytes())
                ),
                detail: None,
            }
            .into_response();
        }
    }
    next.run(req).await
}

/// 415 unless the request declares a JSON body (`application/json`, any
/// parameters, or an `application/*+json` type).
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let declared = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    match declared.as_deref() {
        Some("application/json") => Ok(()),
        Some(t) if t.starts_with("application/") && t.ends_with("+json") => Ok(()),
        other => Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "unsupported_media_type",
            message: format!(
                "the body must be JSON sent with Content-Type: application/json (got {})",
                other.map_or_else(|| "no Content-Type".to_owned(), |t| format!("{t:?}"))
            ),
            detail: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> HostPolicy {
        let list: Vec<String> = list.iter().map(|s| (*s).to_owned()).collect();
        HostPolicy::parse(&list, IpAddr::from([0, 0, 0, 0])).expect("valid")
    }

    #[test]
    fn loopback_binds_accept_only_loopback_names_and_ip_literals() {
        let p = HostPolicy::automatic(IpAddr::from([127, 0, 0, 1]));
        for ok in [
            "localhost",
            "localhost:7432",
            "LOCALHOST:7432",
            "api.localhost:80",
            "127.0.0.1:7432",
            "[::1]:7432",
            "[::1]",
            "10.1.2.3",
        ] {
            assert!(p.allows(ok), "{ok} refused");
        }
        for bad in [
            "attacker.example:7432",
            "localhost.attacker.example",
            "evil",
        ] {
            assert!(!p.allows(bad), "{bad} accepted");
        }
        assert_eq!(
            HostPolicy::automatic(IpAddr::from([0, 0, 0, 0])),
            HostPolicy::Any
        );
    }

    #[test]
    fn configured_names_match_exactly_or_as_domains() {
        let p = names(&["engram", ".engram.svc.cluster.local"]);
        assert!(p.allows("engram:7432"));
        assert!(p.allows("engram-0.engram.svc.cluster.local:7432"));
        assert!(p.allows("engram.svc.cluster.local"));
        assert!(!p.allows("xengram.svc.cluster.local"));
        assert!(!p.allows("engram.example"));
        assert_eq!(names(&["a", "*"]), HostPolicy::Any);
        let bad: Vec<String> = vec!["bad host".into()];
        assert!(HostPolicy::parse(&bad, IpAddr::from([0, 0, 0, 0])).is_err());
    }

    #[test]
    fn only_json_content_types_are_accepted() {
        let mut h = HeaderMap::new();
        assert_eq!(
            require_json(&h).map_err(|e| e.status),
            Err(StatusCode::UNSUPPORTED_MEDIA_TYPE)
        );
        for (t, ok) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("multipart/form-data; boundary=x", false),
        ] {
            h.insert(CONTENT_TYPE, t.parse().expect("header"));
            assert_eq!(require_json(&h).is_ok(), ok, "{t}");
        }
    }
}
