//! Forwarding in a cluster: every node accepts every request; a request
//! for a space led by another node is proxied to that node's HTTP listener
//! with the space resolved once (sent as `X-Memory-Space`), and answers
//! carry `X-Engram-Served-By`. A forwarded request is never forwarded
//! again: a node that does not lead the space any more answers 503
//! `not_primary` (the client, or the first hop's next attempt, retries).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use engram_graph::DEFAULT_SPACE;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{ApiError, AppState};

/// Set on a request one node forwards to another (its value: the sender).
pub const FORWARDED_BY: &str = "x-engram-forwarded-by";
/// Set on every answer in a cluster: the node that served it.
pub const SERVED_BY: &str = "x-engram-served-by";

type Proxy = Client<HttpConnector, Body>;

fn client() -> &'static Proxy {
    static CLIENT: OnceLock<Proxy> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(2)));
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http)
    })
}

/// The space a request is about: `X-Memory-Space`, the `space` query
/// parameter, the path of `/api/v1/spaces/{space}`, else `default`.
/// `None` when it does not name one validly (the handler answers the 400).
fn space_of(req: &Request) -> Option<String> {
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/api/v1/spaces/") {
        return (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_owned());
    }
    let mut headers = req.headers().get_all("x-memory-space").iter();
    if let Some(h) = headers.next() {
        if headers.next().is_some() {
            return None;
        }
        return h.to_str().ok().map(str::to_owned);
    }
    let from_query = req.uri().query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "space")
            .map(|(_, v)| v.to_owned())
    });
    Some(from_query.unwrap_or_else(|| DEFAULT_SPACE.to_owned()))
}

/// Whether the route is about one space's data (forwarded to its primary).
fn forwardable(req: &Request) -> bool {
    let path = req.uri().path();
    path.starts_with("/api/v1/memories")
        || path == "/api/v1/consolidate"
        || (path.starts_with("/api/v1/spaces/") && req.method() == axum::http::Method::GET)
}

/// What the layer needs.
#[derive(Debug)]
pub(crate) struct Forwarding {
    pub state: Arc<AppState>,
    /// Largest body read to forward (`server.body_limit_bytes`).
    pub body_limit: usize,
}

/// The layer (see the module documentation).
pub(crate) async fn route(State(f): State<Arc<Forwarding>>, req: Request, next: Next) -> Response {
    let s = &f.state;
    let (Some(metadata), Some(cluster), Some(replicator)) =
        (s.metadata(), s.cluster(), s.replicator())
    else {
        return next.run(req).await;
    };
    let me = replicator.node().to_owned();
    let served_by = |mut r: Response, node: &str| {
        if let Ok(v) = HeaderValue::from_str(node) {
            r.headers_mut()
                .insert(HeaderName::from_static(SERVED_BY), v);
        }
        r
    };
    if !forwardable(&req) {
        return served_by(next.run(req).await, &me);
    }
    let Some(space) = space_of(&req) else {
        return served_by(next.run(req).await, &me);
    };
    let primary = metadata
        .state()
        .spaces
        .get(&space)
        .map(|m| m.primary.clone());
    let Some(primary) = primary.filter(|p| *p != me) else {
        return served_by(next.run(req).await, &me);
    };
    if req.headers().contains_key(FORWARDED_BY) {
        return ApiError::unavailable(
            "not_primary",
            format!(
                "this node does not lead space {space:?} (its primary is {primary}) and does not forward a forwarded request again; retry"
            ),
        )
        .into_response();
    }
    let Some(target) = cluster.identity_of(&primary) else {
        return ApiError::unavailable(
            "no_primary",
            format!(
                "the primary of space {space:?}, node {primary}, is not reachable; retry shortly"
            ),
        )
        .into_response();
    };
    match proxy(req, &space, &me, target.http, f.body_limit).await {
        Ok(r) => {
            let mut r = r;
            if !r.headers().contains_key(SERVED_BY)
                && let Ok(v) = HeaderValue::from_str(&primary)
            {
                r.headers_mut()
                    .insert(HeaderName::from_static(SERVED_BY), v);
            }
            r
        }
        Err(e) => e.into_response(),
    }
}

async fn proxy(
    req: Request,
    space: &str,
    me: &str,
    to: std::net::SocketAddr,
    limit: usize,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let bytes = to_bytes(body, limit).await.map_err(|e| ApiError {
        status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        code: "body_too_large",
        message: e.to_string(),
        detail: None,
    })?;
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = Uri::try_from(format!("http://{to}{path}"))
        .map_err(|e| ApiError::internal(format!("forwarding address: {e}")))?;
    let h = &mut parts.headers;
    h.remove(axum::http::header::HOST);
    h.remove(axum::http::header::CONNECTION);
    if let Ok(v) = HeaderValue::from_str(&to.to_string()) {
        h.insert(axum::http::header::HOST, v);
    }
    if let Ok(v) = HeaderValue::from_str(me) {
        h.insert(HeaderName::from_static(FORWARDED_BY), v);
    }
    // Resolved once, here: the primary serves exactly this space.
    if let Ok(v) = HeaderValue::from_str(space)
        && !parts.uri.path().starts_with("/api/v1/spaces/")
    {
        h.remove("x-memory-space");
        h.insert(HeaderName::from_static("x-memory-space"), v);
        // The query's `space` would now be a second, possibly different,
        // copy: the header wins only if the query names the same one.
    }
    let request = Request::from_parts(parts, Body::from(bytes));
    let answer = client().request(request).await.map_err(|e| {
        ApiError::unavailable(
            "no_primary",
            format!("forwarding to the space's primary at {to} failed: {e}; retry shortly"),
        )
    })?;
    Ok(answer.map(Body::new).into_response())
}
