//! A small HTTP/1.1 client (hyper) for the CLI commands that talk to a
//! running server.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client as Hyper;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::Config;

/// The URL of the local server from the configuration.
pub(crate) fn default_url(config: &Config) -> String {
    let host = match config.server.bind {
        ip if ip.is_unspecified() || ip.is_loopback() => "127.0.0.1".to_owned(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("http://{host}:{}", config.server.http_port)
}

/// A failure to reach the server at all (as opposed to an error answer).
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

/// Talks to one server.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: Hyper<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl Client {
    /// A client for `base` (`http://host:port`).
    pub fn new(base: &str, timeout: Duration) -> Result<Client> {
        let base = base.trim_end_matches('/').to_owned();
        if !base.starts_with("http://") {
            bail!("server URL {base:?} must start with http://");
        }
        base.parse::<Uri>()
            .with_context(|| format!("server URL {base:?} is not a valid URL"))?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        Ok(Client {
            base,
            http: Hyper::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }

    /// The server URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Response<Incoming>> {
        let uri: Uri = format!("{}{path}", self.base)
            .parse()
            .with_context(|| format!("bad request path {path:?}"))?;
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Full::new(Bytes::from(serde_json::to_vec(v)?))
            }
            None => Full::new(Bytes::new()),
        };
        let req = req.body(body)?;
        match tokio::time::timeout(self.timeout, self.http.request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(Unreachable(format!("cannot reach {}: {e}", self.base)).into()),
            Err(_) => Err(Unreachable(format!(
                "no answer from {} within {:?}",
                self.base, self.timeout
            ))
            .into()),
        }
    }

    /// Sends a request and reads a JSON answer (`null` for an empty body).
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value)> {
        let resp = self.send(method, path, body).await?;
        let status = resp.status();
        let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| Unreachable(format!("{} stopped answering", self.base)))?
            .map_err(|e| Unreachable(format!("reading the answer of {}: {e}", self.base)))?
            .to_bytes();
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let v = serde_json::from_slice(&bytes).map_err(|e| {
            Unreachable(format!(
                "{} answered {status} with a body that is not JSON: {e}",
                self.base
            ))
        })?;
        Ok((status, v))
    }

    /// Like [`Client::json`], but an error status becomes an error carrying
    /// the server's `{"error": {"code", "message"}}`.
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, v) = self.json(method, path, body).await?;
        if status.is_success() {
            return Ok(v);
        }
        let code = v["error"]["code"].as_str().unwrap_or("unknown");
        let message = v["error"]["message"].as_str().unwrap_or("");
        bail!("server answered {status}: {code}: {message}")
    }
}

/// Percent-encodes a query or path component.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_escapes_everything_but_unreserved() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("Az09-_.~"), "Az09-_.~");
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(Client::new("http://127.0.0.1:7432", Duration::from_secs(1)).is_ok());
        assert!(Client::new("https://example", Duration::from_secs(1)).is_err());
        assert!(Client::new("127.0.0.1:7432", Duration::from_secs(1)).is_err());
    }
}
