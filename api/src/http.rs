//! HTTP handlers, the router and the OpenAPI document generated from them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engram_graph::{Cue, GraphError, SpaceOptions, Spread};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use utoipa::OpenApi;

use crate::model::*;
use crate::task::blocking;
use crate::{ApiConfig, ApiError, AppState, VERSION, backup, forward, guard, metrics, replicated};

type Shared = State<Arc<AppState>>;
type QueryResult<T> = Result<Query<T>, QueryRejection>;
type PathResult = Result<Path<String>, PathRejection>;

/// The whole HTTP API.
pub(crate) fn router(state: Arc<AppState>, config: &ApiConfig) -> Router {
    let api = Router::new()
        .route("/health/alive", get(alive))
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/api/v1/system/health", get(ready))
        .route(
            "/metrics",
            get({
                let cap = config.max_space_series;
                move |s: Shared| metrics::render(s, cap)
            }),
        )
        .route("/cluster/health", get(cluster_health))
        .route("/cluster/spaces/{space}/verify", post(verify_space))
        .route("/openapi.json", get(openapi_json))
        .route("/api/v1/memories/remember", post(remember))
        .route("/api/v1/memories/search", get(search))
        .route("/api/v1/memories/recall", post(recall))
        .route("/api/v1/memories/{id}", get(get_memory).delete(forget))
        .route("/api/v1/memories/{id}/links", post(link))
        .route("/api/v1/consolidate", post(consolidate))
        .route("/api/v1/spaces", get(list_spaces).post(create_space))
        .route(
            "/api/v1/spaces/{space}",
            get(get_space).delete(delete_space),
        )
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(forward::Forwarding {
                state: Arc::clone(&state),
                body_limit: config.body_limit_bytes,
            }),
            forward::route,
        ))
        .layer(axum::middleware::from_fn_with_state(
            config.request_timeout,
            timeout,
        ));
    // A backup streams for as long as the store is large: no request timeout.
    let long = Router::new().route("/api/v1/system/backup", post(backup::backup));
    let app: Router = api
        .merge(long)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(config.hosts.clone()),
            guard::check_host,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state);
    // axum adds a 405's `Allow` header after the layers above have run (they
    // wrap each route); only a layer around the whole router sees it.
    Router::new()
        .fallback_service(app)
        .layer(axum::middleware::from_fn(name_allowed_methods))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Engram",
        description = "Memory database for AI agents: remember episodes, recall them by cue with spreading activation."
    ),
    paths(
        alive,
        health,
        ready,
        system_health,
        cluster_health,
        verify_space,
        remember,
        search,
        recall,
        get_memory,
        forget,
        link,
        consolidate,
        list_spaces,
        create_space,
        get_space,
        delete_space,
        backup::backup
    ),
    components(schemas(ErrorBody, WriteConcernParam))
)]
struct ApiDoc;

/// The OpenAPI 3.1 document of the HTTP API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

async fn openapi_json() -> Response {
    match openapi().to_json() {
        Ok(s) => ([(axum::http::header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => {
            ApiError::internal(format!("rendering the OpenAPI document: {e}")).into_response()
        }
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("the request handler panicked; see the server log").into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

/// The 405 of a known path called with another method; its message is
/// completed with the allowed methods by [`name_allowed_methods`].
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    method_not_allowed_error(&method, None)
}

/// A 405 naming the methods the route accepts (`allow`: the `Allow`
/// header's value), when known.
fn method_not_allowed_error(method: &axum::http::Method, allow: Option<&str>) -> ApiError {
    let message = match allow {
        Some(allow) if !allow.trim().is_empty() => {
            let methods: Vec<&str> = allow
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .collect();
            format!(
                "this route does not accept {method}; use {} (also in the Allow header)",
                methods.join(", ")
            )
        }
        _ => format!("this route does not accept {method}; see /openapi.json for its methods"),
    };
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message,
        detail: None,
    }
}

/// Rewrites every 405 into the JSON error naming the allowed methods, and
/// keeps its `Allow` header.
async fn name_allowed_methods(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let method = req.method().clone();
    let resp = next.run(req).await;
    if resp.status() != StatusCode::METHOD_NOT_ALLOWED {
        return resp;
    }
    let allow = resp.headers().get(axum::http::header::ALLOW).cloned();
    let listed = allow.as_ref().and_then(|v| v.to_str().ok());
    let mut out = method_not_allowed_error(&method, listed).into_response();
    if let Some(allow) = allow {
        out.headers_mut().insert(axum::http::header::ALLOW, allow);
    }
    out
}

/// Answers 408 with a JSON error when a request runs longer than the
/// configured timeout. The graph call it waited for may still complete (a
/// write that timed out here can be stored; retry with `dedupe`).
async fn timeout(
    State(limit): State<std::time::Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError {
            status: StatusCode::REQUEST_TIMEOUT,
            code: "request_timeout",
            message: format!("the request took longer than {limit:?}"),
            detail: None,
        }
        .into_response(),
    }
}

/// Remembers `req` in `space` and returns once it is durable. Nothing here
/// blocks a runtime thread: the prepare-and-append and the index update
/// run right here only when they cannot wait for anything (every lock free
/// at once, the space in memory, no search; the WAL writer thread applies
/// the group to RocksDB before answering it), else on the blocking pool;
/// the group commit (fsync) is awaited.
pub(crate) async fn remember_durably(
    graph: Arc<engram_graph::Graph>,
    space: String,
    req: engram_graph::RememberRequest,
) -> Result<engram_graph::Remembered, ApiError> {
    // In a task of its own: once appended, the remember completes even if
    // the client goes away (a dropped pending remember leaves the space's
    // indexes inexact until rebuilt).
    tokio::spawn(async move {
        // Without blocking when nothing would wait (the common case: no
        // thread hand-off but the WAL writer's); else on the blocking pool.
        let begun = match graph.remember_quick(&space, req)? {
            engram_graph::QuickBegin::Begun(b) => b,
            engram_graph::QuickBegin::Blocked(req) => {
                let g = Arc::clone(&graph);
                blocking(move || Ok(g.remember_begin(&space, req)?)).await?
            }
        };
        let mut pending = match begun {
            engram_graph::Begun::Done(found) => return Ok(found),
            engram_graph::Begun::Pending(p) => p,
        };
        pending.group_commit().await;
        match graph.remember_finish_quick(pending) {
            engram_graph::QuickFinish::Done(r) => Ok(r?),
            engram_graph::QuickFinish::Blocked(p) => {
                blocking(move || Ok(graph.remember_finish(p)?)).await
            }
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// Parses a JSON body, answering 415 unless it is declared JSON, 400 (or
/// 413 for an oversized body) with a JSON error instead of axum's
/// plain-text rejections.
fn parse<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    guard::require_json(headers)?;
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        code: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        },
        message: e.body_text(),
        detail: None,
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", json_error_message(&e)))
}

/// serde's message for a body that does not fit the route, in JSON terms:
/// serde names the Rust type it expected (`struct CueBody`, `usize`), which
/// means nothing to a client.
pub(crate) fn json_error_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // What was found: serde says `map` and `sequence`.
    let text = if let Some(rest) = text.strip_prefix("invalid type: map,") {
        format!("invalid type: object,{rest}")
    } else if let Some(rest) = text.strip_prefix("invalid type: sequence,") {
        format!("invalid type: array,{rest}")
    } else {
        text
    };
    // What was expected: the last `expected ` (a value quoted before it
    // may contain the word), up to serde_json's ` at line L column C`.
    let Some(at) = text.rfind("expected ") else {
        return text;
    };
    let (head, tail) = text.split_at(at + "expected ".len());
    let end = tail.rfind(" at line ").unwrap_or(tail.len());
    let (expected, rest) = tail.split_at(end);
    format!("{head}{}{rest}", json_term(expected))
}

/// The JSON name of what serde `expected`, when serde gave a Rust one.
fn json_term(expected: &str) -> &str {
    match expected {
        "f32" | "f64" => "a number",
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a non-negative integer",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "an integer",
        "a sequence" => "an array",
        "a map" => "a JSON object",
        e if e.starts_with("struct ") => "a JSON object",
        e if e.starts_with("tuple") || e.starts_with("a tuple") => "an array",
        e if e.starts_with("unit struct ") => "null",
        e if e.starts_with("enum ") => "one of the documented values",
        e => e,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpaceQuery {
    space: Option<String>,
}

/// The query of a write: its space and its write concern.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteQuery {
    space: Option<String>,
    write_concern: Option<String>,
}

/// The request's space: header `X-Memory-Space` or query `space`. The
/// header given twice is a 400 even when both copies agree: a gateway that
/// appends its own header must not be bypassed by the client's.
pub(crate) fn space_of(headers: &HeaderMap, query: Option<String>) -> Result<String, ApiError> {
    let mut values = headers.get_all("x-memory-space").iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "space_conflict",
                "X-Memory-Space is given more than once; give it once",
            ));
        }
        (Some(v), None) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request("invalid_space_name", "X-Memory-Space is not ASCII")
                })?
                .to_owned(),
        ),
    };
    resolve_space(header, query)
}

/// Picks the space from a header value and a query value (both optional).
pub(crate) fn resolve_space(
    header: Option<String>,
    query: Option<String>,
) -> Result<String, ApiError> {
    let space = match (header, query) {
        (Some(h), Some(q)) if h != q => {
            return Err(ApiError::bad_request(
                "space_conflict",
                format!("X-Memory-Space {h:?} and the space parameter {q:?} disagree; give one"),
            ));
        }
        (Some(h), _) => h,
        (None, Some(q)) => q,
        (None, None) => engram_graph::DEFAULT_SPACE.to_owned(),
    };
    if !engram_graph::valid_space_name(&space) {
        return Err(GraphError::InvalidSpaceName(space).into());
    }
    Ok(space)
}

fn query<T: DeserializeOwned>(q: QueryResult<T>) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// The path parameter, or a JSON 400 (a segment that is not UTF-8 once
/// percent-decoded) instead of axum's plain-text rejection.
fn path(p: PathResult) -> Result<String, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))
}

#[utoipa::path(get, path = "/health/alive", tag = "health",
    responses((status = 200, description = "The process runs", body = AliveOut)))]
async fn alive() -> Json<AliveOut> {
    Json(AliveOut { status: "alive" })
}

#[utoipa::path(get, path = "/cluster/health", tag = "cluster",
    responses((status = 200, description = "Members with their state and addresses, placement of every space, and an overall status (always 200: the status is in the body)", body = ClusterHealthOut)))]
async fn cluster_health(State(s): Shared) -> Json<ClusterHealthOut> {
    Json(cluster_health_out(&s))
}

#[utoipa::path(post, path = "/cluster/spaces/{space}/verify", tag = "cluster",
    params(("space" = String, Path, description = "Space name")),
    responses(
        (status = 200, description = "Every copy's applied sequence, memories and digest, and whether they agree", body = VerifyOut),
        (status = 400, description = "Standalone node, or an invalid name", body = ErrorBody),
        (status = 404, description = "Unknown space", body = ErrorBody)))]
async fn verify_space(State(s): Shared, space: PathResult) -> Result<Json<VerifyOut>, ApiError> {
    let space = path(space)?;
    let (Some(metadata), Some(replicator)) = (s.metadata(), s.replicator()) else {
        return Err(ApiError::bad_request(
            "standalone",
            "verify compares the copies of a replicated space; this node runs standalone",
        ));
    };
    let Some(meta) = metadata.state().spaces.get(&space).cloned() else {
        return Err(GraphError::SpaceNotFound(space).into());
    };
    let mut copies = Vec::new();
    for node in &meta.replicas {
        let copy = match replicator.peer_digest(node, meta.uid).await {
            Ok(Some(d)) => CopyOut {
                node: node.clone(),
                found: true,
                applied_seq: Some(d.applied_seq),
                memories: Some(d.memories),
                digest: Some(d.digest),
                error: None,
            },
            Ok(None) => CopyOut {
                node: node.clone(),
                found: false,
                applied_seq: None,
                memories: None,
                digest: None,
                error: None,
            },
            Err(e) => CopyOut {
                node: node.clone(),
                found: false,
                applied_seq: None,
                memories: None,
                digest: None,
                error: Some(e.to_string()),
            },
        };
        copies.push(copy);
    }
    let consistent = copies.iter().all(|c| c.found)
        && copies
            .windows(2)
            .all(|w| w[0].digest == w[1].digest && w[0].applied_seq == w[1].applied_seq);
    Ok(Json(VerifyOut {
        space,
        uid: meta.uid,
        epoch: meta.epoch,
        primary: meta.primary,
        consistent,
        copies,
    }))
}

/// `/cluster/health`'s answer (shared with gRPC `GetClusterHealth`).
pub(crate) fn cluster_health_out(s: &AppState) -> ClusterHealthOut {
    // Names only: listing must not load a space's indexes.
    let mut spaces = s
        .graph_if_open()
        .map(|g| g.space_names())
        .unwrap_or_default();
    // In a cluster every space the metadata group holds, held here or not.
    let committed = s.metadata().map(|m| m.state());
    if let Some(state) = &committed {
        spaces.extend(state.spaces.keys().cloned());
        spaces.sort();
        spaces.dedup();
    }
    match s.cluster() {
        Some(c) => {
            let mut out: ClusterHealthOut = c.health(&spaces).into();
            out.metadata = s.metadata().map(|m| m.status().into());
            if let Some(state) = &committed {
                for p in &mut out.spaces {
                    p.assignment = state.spaces.get(&p.space).map(|a| AssignmentOut {
                        uid: a.uid,
                        epoch: a.epoch,
                        primary: a.primary.clone(),
                        replicas: a.replicas.clone(),
                        state: match a.state {
                            engram_cluster::metadata::SpaceLifecycle::Active => "active",
                            engram_cluster::metadata::SpaceLifecycle::Deleting => "deleting",
                        },
                    });
                }
            }
            if let Some(r) = s.replicator() {
                out.replication = r.status().iter().map(ReplicaLagOut::from).collect();
                out.max_lag_records = out
                    .replication
                    .iter()
                    .map(|r| r.lag_records)
                    .max()
                    .unwrap_or(0);
                out.max_lag_seconds = out
                    .replication
                    .iter()
                    .map(|r| r.lag_seconds)
                    .fold(0.0, f64::max);
            }
            // No metadata leader: nothing that needs the group can change.
            if out.status == "healthy" && out.metadata.as_ref().is_some_and(|m| m.leader.is_none())
            {
                out.status = "degraded";
            }
            out
        }
        None => ClusterHealthOut::standalone(spaces),
    }
}

#[utoipa::path(get, path = "/health", tag = "health",
    responses((status = 200, description = "Summary status and version", body = HealthOut)))]
async fn health(State(s): Shared) -> Json<HealthOut> {
    let status = match s.graph_if_open() {
        Some(g) if g.engine().failure().is_some() => "unhealthy",
        // Ready, but the store refuses writes for a cause that passes
        // (retried), or some space could not be loaded (the others serve).
        Some(g) if s.is_ready() && g.engine().degraded().is_some() => "degraded",
        Some(g) if s.is_ready() && !g.damaged_spaces().is_empty() => "degraded",
        _ if s.is_ready() => "healthy",
        _ => "degraded",
    };
    Json(HealthOut {
        status,
        version: VERSION,
    })
}

#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses(
        (status = 200, description = "Ready", body = SystemHealthOut),
        (status = 503, description = "Starting, stopping or unhealthy", body = SystemHealthOut)))]
async fn ready(state: Shared) -> Result<Response, ApiError> {
    system_health(state).await
}

#[utoipa::path(get, path = "/api/v1/system/health", tag = "health",
    responses(
        (status = 200, description = "Ready, with checks and per-space figures", body = SystemHealthOut),
        (status = 503, description = "Starting, stopping or unhealthy", body = SystemHealthOut)))]
async fn system_health(State(s): Shared) -> Result<Response, ApiError> {
    let is_ready = s.is_ready();
    let graph = s.graph_if_open().cloned();
    let mut checks = vec![CheckOut {
        name: "recovery",
        status: if is_ready { "pass" } else { "fail" },
        message: if is_ready {
            "ready".into()
        } else if graph.is_none() {
            "storage recovery running".into()
        } else {
            "warming up or shutting down".into()
        },
    }];
    let (mut ok, mut spaces, mut wal, mut storage) = (is_ready, Vec::new(), None, None);
    if let Some(graph) = graph {
        let failure = graph.engine().failure();
        let w = graph.engine().wal().stats();
        checks.push(CheckOut {
            name: "wal",
            status: if failure.is_none() { "pass" } else { "fail" },
            message: failure
                .clone()
                .unwrap_or_else(|| format!("synced through LSN {}", w.synced_lsn)),
        });
        ok &= failure.is_none();
        // Writes the store refuses for a cause that passes (descriptors,
        // disk space) are retried: a warning, not unreadiness (reads serve;
        // it heals, or turns into the failure above when it cannot).
        let degraded = graph.engine().degraded();
        checks.push(CheckOut {
            name: "store",
            status: if degraded.is_none() { "pass" } else { "warn" },
            message: degraded
                .unwrap_or_else(|| format!("applied through LSN {}", graph.engine().applied_lsn())),
        });
        // Cheap: nothing is loaded to answer (neither here nor below).
        let (loaded, total) = graph.loaded_spaces();
        let mib = |b: u64| b.div_ceil(1024 * 1024);
        let budget = match graph.index_budget_bytes() {
            0 => "unlimited".to_owned(),
            b => format!("{} MiB", mib(b)),
        };
        checks.push(CheckOut {
            name: "indexes",
            status: "pass",
            message: format!(
                "{loaded} of {total} spaces loaded, about {} MiB of indexes (budget {budget})",
                mib(graph.index_bytes())
            ),
        });
        // A space that cannot be loaded is a warning, not unreadiness: one
        // tenant's damaged data must not take the node out of service.
        let damaged = graph.damaged_spaces();
        checks.push(CheckOut {
            name: "spaces",
            status: if damaged.is_empty() { "pass" } else { "warn" },
            message: if damaged.is_empty() {
                "no damaged space".into()
            } else {
                const LISTED: usize = 20;
                let mut listed: Vec<String> =
                    damaged.iter().take(LISTED).map(ToString::to_string).collect();
                if damaged.len() > LISTED {
                    listed.push(format!("and {} more", damaged.len() - LISTED));
                }
                let n = damaged.len();
                format!(
                    "{n} {} unavailable (503 space_unavailable; the other spaces serve; see docs/operations/troubleshooting.md): {}",
                    if n == 1 { "space" } else { "spaces" },
                    listed.join("; ")
                )
            },
        });
        wal = Some(WalOut {
            last_lsn: w.committed_lsn,
            synced_lsn: w.synced_lsn,
            records: w.records,
            bytes: w.bytes,
            fsyncs: w.fsyncs,
            fsync_mean_ms: if w.fsyncs == 0 {
                0.0
            } else {
                w.fsync_seconds_total * 1000.0 / w.fsyncs as f64
            },
            segments: w.segments,
        });
        let st = graph.engine().store().stats();
        storage = Some(StorageOut {
            block_cache_usage_bytes: st.block_cache_usage_bytes,
            block_cache_capacity_bytes: st.block_cache_capacity_bytes,
            pending_compaction_bytes: st.pending_compaction_bytes,
            sst_bytes: st.sst_bytes,
            memtable_bytes: st.memtable_bytes,
        });
        if is_ready {
            spaces = blocking(move || Ok(graph.spaces()?))
                .await?
                .iter()
                .map(SpaceOut::from)
                .collect();
        }
    }
    let body = SystemHealthOut {
        status: if ok { "healthy" } else { "unhealthy" },
        ready: is_ready,
        version: VERSION,
        uptime_seconds: s.started.elapsed().as_secs(),
        checks,
        spaces,
        wal,
        storage,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(body)).into_response())
}

#[utoipa::path(post, path = "/api/v1/memories/remember", tag = "memories",
    params(
        ("X-Memory-Space" = Option<String>, Header, description = "Target space (default `default`)"),
        ("X-Write-Concern" = Option<WriteConcernParam>, Header, description = "Write concern in a cluster: primary, quorum or all (default [replication] default_write_concern)"),
        ("write_concern" = Option<WriteConcernParam>, Query, description = "Write concern; must equal the header when both are given"),
        ("space" = Option<String>, Query, description = "Target space; must equal the header when both are given")),
    request_body = RememberBody,
    responses(
        (status = 201, description = "Stored durably (WAL fsynced)", body = RememberOut),
        (status = 200, description = "`dedupe` found identical content", body = RememberOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "Unknown space or link target", body = ErrorBody),
        (status = 409, description = "A link target has the most edges allowed (too_many_edges)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body not sent as Content-Type: application/json", body = ErrorBody),
        (status = 503, description = "Starting or storage unavailable; in a cluster also write_concern_timeout (durable on the primary, not yet on enough copies: `sequence` and `outcome` unknown, read it back before retrying), insufficient_replicas, not_primary or no_primary (retry; Retry-After)", body = ErrorBody)))]
async fn remember(
    State(s): Shared,
    headers: HeaderMap,
    q: QueryResult<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let concern = replicated::concern_of(&s, &headers, q.write_concern.as_deref())?;
    let space = space_of(&headers, q.space)?;
    let req = parse::<RememberBody>(&headers, body)?.into_request()?;
    let graph = s.graph()?;
    replicated::precheck(&s, &graph, &space, concern)?;
    let r = remember_durably(graph.clone(), space.clone(), req).await?;
    // A deduplicated answer names no write of its own: everything written
    // to the space so far must hold.
    let seq = (r.sequence > 0).then_some(r.sequence);
    replicated::hold(&s, &graph, &space, seq, concern).await?;
    let status = if r.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(RememberOut::from(r))).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct SearchQuery {
    /// Text to match.
    q: String,
    /// Most results (default 10).
    limit: Option<usize>,
    /// Return concepts made by consolidation too (default `false`).
    include_concepts: Option<bool>,
    /// Target space.
    space: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/memories/search", tag = "memories",
    params(SearchQuery,
        ("X-Memory-Space" = Option<String>, Header, description = "Target space (default `default`)")),
    responses(
        (status = 200, description = "Ranked lexical matches, no spreading", body = SearchOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "Unknown space", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody)))]
async fn search(
    State(s): Shared,
    headers: HeaderMap,
    q: QueryResult<SearchQuery>,
) -> Result<Json<SearchOut>, ApiError> {
    let q = query(q)?;
    let space = space_of(&headers, q.space)?;
    let cue = Cue {
        text: Some(q.q),
        include_concepts: q.include_concepts.unwrap_or(false),
        ..Cue::default()
    };
    let spread = Spread {
        depth: 0,
        ..Spread::default()
    };
    let limit = q.limit.unwrap_or(10);
    let graph = s.graph()?;
    let hits = blocking(move || Ok(graph.recall(&space, &cue, limit, &spread)?)).await?;
    let memories: Vec<MemoryOut> = hits.iter().map(|h| MemoryOut::from(&h.memory)).collect();
    Ok(Json(SearchOut {
        count: memories.len(),
        memories,
    }))
}

#[utoipa::path(post, path = "/api/v1/memories/recall", tag = "memories",
    params(
        ("X-Memory-Space" = Option<String>, Header, description = "Target space (default `default`)"),
        ("space" = Option<String>, Query, description = "Target space")),
    request_body = RecallBody,
    responses(
        (status = 200, description = "Ranked results with how each was reached", body = RecallOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "Unknown space", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body not sent as Content-Type: application/json", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody)))]
async fn recall(
    State(s): Shared,
    headers: HeaderMap,
    q: QueryResult<SpaceQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<RecallOut>, ApiError> {
    let space = space_of(&headers, query(q)?.space)?;
    let (cue, limit, spread) = parse::<RecallBody>(&headers, body)?.into_parts()?;
    let graph = s.graph()?;
    let hits = blocking(move || Ok(graph.recall(&space, &cue, limit, &spread)?)).await?;
    let results: Vec<RecalledOut> = hits.iter().map(RecalledOut::from).collect();
    Ok(Json(RecallOut {
        count: results.len(),
        results,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct GetQuery {
    /// Target space.
    space: Option<String>,
    /// `embedding` to include the stored embedding.
    include: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/memories/{id}", tag = "memories",
    params(("id" = String, Path, description = "Memory id"), GetQuery,
        ("X-Memory-Space" = Option<String>, Header, description = "Target space (default `default`)")),
    responses(
        (status = 200, description = "The memory", body = MemoryOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such memory or space", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody)))]
async fn get_memory(
    State(s): Shared,
    headers: HeaderMap,
    id: PathResult,
    q: QueryResult<GetQuery>,
) -> Result<Json<MemoryOut>, ApiError> {
    let id = path(id)?;
    let q = query(q)?;
    let space = space_of(&headers, q.space)?;
    let with_embedding = match q.include.as_deref() {
        None => false,
        Some("embedding") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("include={other:?}: only \"embedding\" is known"),
            ));
        }
    };
    let graph = s.graph()?;
    let m = blocking(move || Ok(graph.get(&space, &id, with_embedding)?)).await?;
    Ok(Json(MemoryOut::from(&m)))
}

#[utoipa::path(delete, path = "/api/v1/memories/{id}", tag = "memories",
    params(("id" = String, Path, description = "Memory id"),
        ("X-Memory-Space" = Option<String>, Header, description = "Target space (default `default`)"),
        ("X-Write-Concern" = Option<WriteConcernParam>, Header, description = "Write concern in a cluster: primary, quorum or all (default [replication] default_write_concern)"),
        ("write_concern" = Option<WriteConcernParam>, Query, description = "Write concern; must equal the header when both are given"),
        ("space" = Option<String>, Query, description = "Target space")),
    responses(
        (status = 204, description = "Forgotten everywhere: record, indexes, edges"),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such memory or space", body = ErrorBody),
        (status = 503, description = "Starting or storage unavailable; in a cluster also write_concern_timeout (durable on the primary, not yet on enough copies: `sequence` and `outcome` unknown, read it back before retrying), insufficient_replicas, not_primary or no_primary (retry; Retry-After)", body = ErrorBody)))]
async fn forget(
    State(s): Shared,
    headers: HeaderMap,
    id: PathResult,
    q: QueryResult<WriteQuery>,
) -> Result<StatusCode, ApiError> {
    let id = path(id)?;
    let q = query(q)?;
    let concern = replicated::concern_of(&s, &headers, q.write_concern.as_deref())?;
    let space = space_of(&headers, q.space)?;
    let graph = s.graph()?;
    replicated::precheck(&s, &graph, &space, concern)?;
    let (g, sp) = (graph.clone(), space.clone());
    blocking(move || Ok(g.forget(&sp, &id)?)).await?;
    replicated::hold(&s, &graph, &space, None, concern).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/v1/memories/{id}/links", tag = "memories",
    params(("id" = String, Path, description = "Source memory id"),
        ("X-Memory-Space" = Option<String>, Header, description = "Target space (default `default`)"),
        ("X-Write-Concern" = Option<WriteConcernParam>, Header, description = "Write concern in a cluster: primary, quorum or all (default [replication] default_write_concern)"),
        ("write_concern" = Option<WriteConcernParam>, Query, description = "Write concern; must equal the header when both are given"),
        ("space" = Option<String>, Query, description = "Target space")),
    request_body = LinkBody,
    responses(
        (status = 201, description = "Association stored", body = LinkOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "No such memory or space", body = ErrorBody),
        (status = 409, description = "Either memory has the most edges allowed (too_many_edges)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body not sent as Content-Type: application/json", body = ErrorBody),
        (status = 503, description = "Starting or storage unavailable; in a cluster also write_concern_timeout (durable on the primary, not yet on enough copies: `sequence` and `outcome` unknown, read it back before retrying), insufficient_replicas, not_primary or no_primary (retry; Retry-After)", body = ErrorBody)))]
async fn link(
    State(s): Shared,
    headers: HeaderMap,
    id: PathResult,
    q: QueryResult<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let id = path(id)?;
    let q = query(q)?;
    let concern = replicated::concern_of(&s, &headers, q.write_concern.as_deref())?;
    let space = space_of(&headers, q.space)?;
    let l: LinkBody = parse(&headers, body)?;
    let graph = s.graph()?;
    replicated::precheck(&s, &graph, &space, concern)?;
    let (from, to, weight) = (id.clone(), l.target.clone(), l.weight);
    let (g, sp) = (graph.clone(), space.clone());
    blocking(move || Ok(g.link(&sp, &from, &to, weight)?)).await?;
    replicated::hold(&s, &graph, &space, None, concern).await?;
    let out = LinkOut {
        source: id,
        target: l.target,
        weight: l.weight.unwrap_or(engram_graph::DEFAULT_LINK_WEIGHT),
    };
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

#[utoipa::path(post, path = "/api/v1/consolidate", tag = "memories",
    params(
        ("X-Memory-Space" = Option<String>, Header, description = "Target space (default `default`)"),
        ("X-Write-Concern" = Option<WriteConcernParam>, Header, description = "Write concern in a cluster: primary, quorum or all (default [replication] default_write_concern)"),
        ("write_concern" = Option<WriteConcernParam>, Query, description = "Write concern; must equal the header when both are given"),
        ("space" = Option<String>, Query, description = "Target space")),
    request_body(content = Option<ConsolidateBody>, description = "Optional; empty body uses the configured threshold"),
    responses(
        (status = 200, description = "What consolidation did", body = ConsolidateOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 404, description = "Unknown space", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body not sent as Content-Type: application/json", body = ErrorBody),
        (status = 503, description = "Starting or storage unavailable; in a cluster also write_concern_timeout (durable on the primary, not yet on enough copies: `sequence` and `outcome` unknown, read it back before retrying), insufficient_replicas, not_primary or no_primary (retry; Retry-After)", body = ErrorBody)))]
async fn consolidate(
    State(s): Shared,
    headers: HeaderMap,
    q: QueryResult<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ConsolidateOut>, ApiError> {
    let q = query(q)?;
    let concern = replicated::concern_of(&s, &headers, q.write_concern.as_deref())?;
    let space = space_of(&headers, q.space)?;
    let b: ConsolidateBody = match body {
        Ok(b) if b.is_empty() => ConsolidateBody::default(),
        other => parse(&headers, other)?,
    };
    let graph = s.graph()?;
    replicated::precheck(&s, &graph, &space, concern)?;
    let threshold = b
        .threshold
        .unwrap_or(graph.config().consolidation.threshold);
    let (g, sp) = (graph.clone(), space.clone());
    let r = blocking(move || Ok(g.consolidate(&sp, threshold)?)).await?;
    replicated::hold(&s, &graph, &space, None, concern).await?;
    Ok(Json(ConsolidateOut::new(r, threshold)))
}

#[utoipa::path(get, path = "/api/v1/spaces", tag = "spaces",
    responses(
        (status = 200, description = "Every space", body = SpacesOut),
        (status = 503, description = "Starting", body = ErrorBody)))]
async fn list_spaces(State(s): Shared) -> Result<Json<SpacesOut>, ApiError> {
    let graph = s.graph()?;
    let spaces = blocking(move || Ok(graph.spaces()?)).await?;
    Ok(Json(SpacesOut {
        spaces: spaces.iter().map(SpaceOut::from).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/spaces", tag = "spaces",
    params(
        ("X-Write-Concern" = Option<WriteConcernParam>, Header, description = "Write concern in a cluster: primary, quorum or all (default [replication] default_write_concern)"),
        ("write_concern" = Option<WriteConcernParam>, Query, description = "Write concern; must equal the header when both are given")),
    request_body = SpaceBody,
    responses(
        (status = 201, description = "Created", body = SpaceOut),
        (status = 400, description = "Invalid input", body = ErrorBody),
        (status = 409, description = "Exists, or the node holds limits.max_spaces spaces (too_many_spaces)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body not sent as Content-Type: application/json", body = ErrorBody),
        (status = 503, description = "Starting or storage unavailable; in a cluster also write_concern_timeout (durable on the primary, not yet on enough copies: `sequence` and `outcome` unknown, read it back before retrying), insufficient_replicas, not_primary or no_primary (retry; Retry-After)", body = ErrorBody)))]
async fn create_space(
    State(s): Shared,
    headers: HeaderMap,
    q: QueryResult<WriteQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    if q.space.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "the space to create is named in the body (\"id\"), not in the query",
        ));
    }
    let concern = replicated::concern_of(&s, &headers, q.write_concern.as_deref())?;
    let b: SpaceBody = parse(&headers, body)?;
    let graph = s.graph()?;
    let settings = engram_cluster::metadata::SpaceSettings {
        embedding_dim: b.embedding_dim,
        hot_capacity: b.hot_capacity,
    };
    if let Some(stats) = replicated::create_space(&s, &graph, &b.id, settings, concern).await? {
        return Ok((StatusCode::CREATED, Json(SpaceOut::from(&stats))).into_response());
    }
    let stats = blocking(move || {
        let options = SpaceOptions {
            embedding_dim: b.embedding_dim,
            hot_capacity: b.hot_capacity,
        };
        graph.create_space_with(&b.id, options)?;
        Ok(graph.space_stats(&b.id)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(SpaceOut::from(&stats))).into_response())
}

#[utoipa::path(get, path = "/api/v1/spaces/{space}", tag = "spaces",
    params(("space" = String, Path, description = "Space name")),
    responses(
        (status = 200, description = "The space", body = SpaceOut),
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 404, description = "Unknown space", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody)))]
async fn get_space(State(s): Shared, space: PathResult) -> Result<Json<SpaceOut>, ApiError> {
    let space = path(space)?;
    let graph = s.graph()?;
    let stats = blocking(move || Ok(graph.space_stats(&space)?)).await?;
    Ok(Json(SpaceOut::from(&stats)))
}

#[utoipa::path(delete, path = "/api/v1/spaces/{space}", tag = "spaces",
    params(("space" = String, Path, description = "Space name")),
    responses(
        (status = 204, description = "Deleted with every memory in it"),
        (status = 400, description = "Invalid name or the default space", body = ErrorBody),
        (status = 404, description = "Unknown space", body = ErrorBody),
        (status = 503, description = "Starting", body = ErrorBody)))]
async fn delete_space(State(s): Shared, space: PathResult) -> Result<StatusCode, ApiError> {
    let space = path(space)?;
    if replicated::delete_space(&s, &space).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    let graph = s.graph()?;
    blocking(move || Ok(graph.delete_space(&space)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
