//! # engram-api: the HTTP API
//!
//! An axum [`Router`] over a [`Graph`], with the request and response shapes
//! of ARCHITECTURE.md "API shapes". Graph calls block on the WAL's fsync, so
//! they run on tokio's blocking pool. Every error is a JSON body
//! `{"error": {"code", "message"}}`; bad input is always a 4xx.
//!
//! The space of a memory request comes from the `X-Memory-Space` header or
//! the `space` query parameter (default `default`); both present and
//! different is a 400. It is resolved once per request.

mod error;
mod metrics;
mod model;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use engram_graph::{Graph, SpaceOptions};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use error::ApiError;
pub use metrics::HttpMetrics;
use model::*;

/// Version reported by health endpoints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// HTTP limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest accepted request body (default 1 MiB).
    pub body_limit_bytes: usize,
    /// Requests taking longer are answered 408 (default 30 s).
    pub request_timeout: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The memory graph.
    pub graph: Arc<Graph>,
    /// `false` until recovery and warm-up finish, and again during shutdown.
    pub ready: AtomicBool,
    /// Process start.
    pub started: Instant,
    /// Metrics registry rendered by `/metrics`.
    pub registry: prometheus::Registry,
    http: HttpMetrics,
}

impl AppState {
    /// State over `graph`, registering the HTTP metrics in `registry`.
    pub fn new(
        graph: Arc<Graph>,
        registry: prometheus::Registry,
    ) -> Result<Arc<AppState>, prometheus::Error> {
        let http = HttpMetrics::register(&registry)?;
        Ok(Arc::new(AppState {
            graph,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            registry,
            http,
        }))
    }

    /// Marks the server ready (or not).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

type Shared = State<Arc<AppState>>;

/// The whole HTTP API.
pub fn router(state: Arc<AppState>, config: &ApiConfig) -> Router {
    let api = Router::new()
        .route("/health/alive", get(alive))
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/api/v1/system/health", get(ready))
        .route("/metrics", get(metrics::render))
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
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ));
    api.with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal("the request handler panicked; see the server log").into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("route_not_found", "no such route")
}

/// Runs a blocking graph call on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// Parses a JSON body, answering 400 (or 413 for an oversized body) with
/// a JSON error instead of axum's plain-text rejections.
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError {
        status: e.status(),
        code: if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "body_too_large"
        } else {
            "invalid_body"
        },
        message: e.body_text(),
    })?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
}

#[derive(Debug, Deserialize)]
struct SpaceQuery {
    space: Option<String>,
}

/// The request's space: header `X-Memory-Space` or query `space`.
fn space_of(headers: &HeaderMap, query: Option<String>) -> Result<String, ApiError> {
    let header = match headers.get("x-memory-space") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| {
                    ApiError::bad_request("invalid_space_name", "X-Memory-Space is not ASCII")
                })?
                .to_owned(),
        ),
        None => None,
    };
    let space = match (header, query) {
        (Some(h), Some(q)) if h != q => {
            return Err(ApiError::bad_request(
                "space_conflict",
                format!("X-Memory-Space {h:?} and ?space={q:?} disagree; give one"),
            ));
        }
        (Some(h), _) => h,
        (None, Some(q)) => q,
        (None, None) => engram_graph::DEFAULT_SPACE.to_owned(),
    };
    if !engram_graph::valid_space_name(&space) {
        return Err(engram_graph::GraphError::InvalidSpaceName(space).into());
    }
    Ok(space)
}

fn query<T: DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(t)| t)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

async fn alive() -> Json<Value> {
    Json(json!({"status": "alive"}))
}

async fn health(State(s): Shared) -> Json<Value> {
    let status = if s.is_ready() { "healthy" } else { "degraded" };
    Json(json!({"status": status, "version": VERSION}))
}

async fn ready(State(s): Shared) -> Result<Response, ApiError> {
    let is_ready = s.is_ready();
    let graph = Arc::clone(&s.graph);
    let (loaded, total) = graph.loaded_spaces();
    let wal_failure = graph.engine().wal().failure();
    let engine_ok = wal_failure.is_none();
    let spaces: Vec<Value> = if is_ready {
        blocking(move || Ok(graph.spaces()?))
            .await?
            .iter()
            .map(space_json)
            .collect()
    } else {
        Vec::new()
    };
    let checks = json!([
        {"name": "recovery", "status": if is_ready { "pass" } else { "fail" },
         "message": if is_ready { "ready" } else { "starting or shutting down" }},
        {"name": "wal", "status": if engine_ok { "pass" } else { "fail" },
         "message": wal_failure.unwrap_or_else(|| format!("synced through LSN {}", s.graph.engine().wal().synced_lsn()))},
        {"name": "indexes", "status": "pass", "message": format!("{loaded} of {total} spaces loaded")},
    ]);
    let ok = is_ready && engine_ok;
    let body = json!({
        "status": if ok { "healthy" } else { "unhealthy" },
        "version": VERSION,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "checks": checks,
        "spaces": spaces,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(body)).into_response())
}

async fn remember(
    State(s): Shared,
    headers: HeaderMap,
    q: Result<Query<SpaceQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let space = space_of(&headers, query(q)?.space)?;
    let req = parse::<RememberBody>(body)?.into_request()?;
    let graph = Arc::clone(&s.graph);
    let r = blocking(move || Ok(graph.remember(&space, req)?)).await?;
    let status = if r.deduplicated {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = json!({
        "id": r.id,
        "space": r.space,
        "sequence": r.sequence,
        "confidence": r.confidence,
        "stored_at": rfc3339(r.stored_at_ms),
        "deduplicated": r.deduplicated,
    });
    Ok((status, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    q: String,
    limit: Option<usize>,
    space: Option<String>,
}

async fn search(
    State(s): Shared,
    headers: HeaderMap,
    q: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let space = space_of(&headers, q.space)?;
    let cue = engram_graph::Cue {
        text: Some(q.q),
        ..engram_graph::Cue::default()
    };
    let spread = engram_graph::Spread {
        depth: 0,
        ..engram_graph::Spread::default()
    };
    let limit = q.limit.unwrap_or(10);
    let graph = Arc::clone(&s.graph);
    let hits = blocking(move || Ok(graph.recall(&space, &cue, limit, &spread)?)).await?;
    let memories: Vec<Value> = hits.iter().map(|h| memory_json(&h.memory)).collect();
    Ok(Json(json!({"count": memories.len(), "memories": memories})))
}

async fn recall(
    State(s): Shared,
    headers: HeaderMap,
    q: Result<Query<SpaceQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let space = space_of(&headers, query(q)?.space)?;
    let (cue, limit, spread) = parse::<RecallBody>(body)?.into_parts()?;
    let graph = Arc::clone(&s.graph);
    let hits = blocking(move || Ok(graph.recall(&space, &cue, limit, &spread)?)).await?;
    let results: Vec<Value> = hits.iter().map(recalled_json).collect();
    Ok(Json(json!({"count": results.len(), "results": results})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    space: Option<String>,
    include: Option<String>,
}

async fn get_memory(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
    let graph = Arc::clone(&s.graph);
    let m = blocking(move || Ok(graph.get(&space, &id, with_embedding)?)).await?;
    Ok(Json(memory_json(&m)))
}

async fn forget(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<SpaceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let space = space_of(&headers, query(q)?.space)?;
    let graph = Arc::clone(&s.graph);
    blocking(move || Ok(graph.forget(&space, &id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn link(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<SpaceQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let space = space_of(&headers, query(q)?.space)?;
    let l: LinkBody = parse(body)?;
    let graph = Arc::clone(&s.graph);
    let (from, to, weight) = (id.clone(), l.target.clone(), l.weight);
    blocking(move || Ok(graph.link(&space, &from, &to, weight)?)).await?;
    let body = json!({"source": id, "target": l.target, "weight": l.weight.unwrap_or(0.9)});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn consolidate(
    State(s): Shared,
    headers: HeaderMap,
    q: Result<Query<SpaceQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let space = space_of(&headers, query(q)?.space)?;
    let b: ConsolidateBody = match body {
        Ok(b) if b.is_empty() => ConsolidateBody { threshold: None },
        other => parse(other)?,
    };
    let graph = Arc::clone(&s.graph);
    let threshold = b
        .threshold
        .unwrap_or(graph.config().consolidation.threshold);
    let r = blocking(move || Ok(graph.consolidate(&space, threshold)?)).await?;
    Ok(Json(json!({
        "examined": r.examined,
        "concepts": r.concepts,
        "members": r.members,
        "threshold": threshold,
    })))
}

async fn list_spaces(State(s): Shared) -> Result<Json<Value>, ApiError> {
    let graph = Arc::clone(&s.graph);
    let spaces = blocking(move || Ok(graph.spaces()?)).await?;
    let spaces: Vec<Value> = spaces.iter().map(space_json).collect();
    Ok(Json(json!({"spaces": spaces})))
}

async fn create_space(
    State(s): Shared,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let b: SpaceBody = parse(body)?;
    let graph = Arc::clone(&s.graph);
    let stats = blocking(move || {
        let options = SpaceOptions {
            embedding_dim: b.embedding_dim,
            hot_capacity: b.hot_capacity,
        };
        graph.create_space_with(&b.id, options)?;
        Ok(graph.space_stats(&b.id)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(space_json(&stats))).into_response())
}

async fn get_space(State(s): Shared, Path(space): Path<String>) -> Result<Json<Value>, ApiError> {
    let graph = Arc::clone(&s.graph);
    let stats = blocking(move || Ok(graph.space_stats(&space)?)).await?;
    Ok(Json(space_json(&stats)))
}

async fn delete_space(State(s): Shared, Path(space): Path<String>) -> Result<StatusCode, ApiError> {
    let graph = Arc::clone(&s.graph);
    blocking(move || Ok(graph.delete_space(&space)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
