//! # engram-api: the HTTP and gRPC APIs
//!
//! An axum [`Router`] and a tonic service ([`grpc`]) over a [`Graph`], with
//! the request and response shapes of ARCHITECTURE.md "API shapes" (the
//! OpenAPI document comes from the code: [`openapi`]). Graph calls block on
//! the WAL's fsync, so they run on tokio's blocking pool. Every error is a JSON body
//! `{"error": {"code", "message"}}`; bad input is always a 4xx.
//!
//! The space of a memory request comes from the `X-Memory-Space` header or
//! the `space` query parameter (default `default`); both present and
//! different is a 400. It is resolved once per request.

mod backup;
mod error;
mod forward;
pub mod grpc;
mod grpc_forward;
mod guard;
mod http;
mod metrics;
pub mod model;
pub mod replicated;
mod task;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use engram_cluster::Cluster;
use engram_cluster::metadata::MetadataGroup;
use engram_graph::Graph;
use engram_replication::node::Replicator;
use engram_replication::protocol::Concern;

pub use error::ApiError;
pub use guard::HostPolicy;
pub use http::openapi;
pub use metrics::HttpMetrics;

/// Version reported by health endpoints.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// HTTP limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Largest accepted request body (default 1 MiB).
    pub body_limit_bytes: usize,
    /// Requests taking longer are answered 408 (default 30 s).
    pub request_timeout: Duration,
    /// `Host` names requests may address (default: the loopback names).
    pub hosts: HostPolicy,
    /// Spaces exported one by one by the per-space metrics (default 1000).
    pub max_space_series: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            body_limit_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            hosts: HostPolicy::automatic(std::net::Ipv4Addr::LOCALHOST.into()),
            max_space_series: 1000,
        }
    }
}

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    /// The memory graph, once storage recovery has finished.
    graph: OnceLock<Arc<Graph>>,
    /// `false` until recovery and warm-up finish, and again during shutdown.
    ready: AtomicBool,
    /// Process start.
    pub started: Instant,
    /// Metrics registry rendered by `/metrics`.
    pub registry: prometheus::Registry,
    http: HttpMetrics,
    /// Cluster membership, when `cluster.enabled`.
    cluster: OnceLock<Arc<Cluster>>,
    /// The metadata group, when `cluster.enabled` (after recovery).
    metadata: OnceLock<MetadataGroup>,
    /// Replication, when `cluster.enabled` (after recovery).
    replication: OnceLock<Replication>,
}

/// Replication as the API uses it (cluster mode).
#[derive(Debug)]
struct Replication {
    replicator: Replicator,
    default_concern: Concern,
    write_timeout: Duration,
}

impl AppState {
    /// State without a graph yet (the server answers health checks while
    /// storage recovers), registering the HTTP metrics in `registry`.
    pub fn starting(registry: prometheus::Registry) -> Result<Arc<AppState>, prometheus::Error> {
        let http = HttpMetrics::register(&registry)?;
        Ok(Arc::new(AppState {
            graph: OnceLock::new(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            registry,
            http,
            cluster: OnceLock::new(),
            metadata: OnceLock::new(),
            replication: OnceLock::new(),
        }))
    }

    /// State over an open `graph` (not ready until [`AppState::set_ready`]).
    pub fn new(
        graph: Arc<Graph>,
        registry: prometheus::Registry,
    ) -> Result<Arc<AppState>, prometheus::Error> {
        let state = Self::starting(registry)?;
        state.attach(graph);
        Ok(state)
    }

    /// Hands the recovered graph to the API (once; later calls are ignored).
    pub fn attach(&self, graph: Arc<Graph>) {
        let _ = self.graph.set(graph);
    }

    /// Takes the graph away from nobody: returns the attached graph, if any.
    pub fn graph_if_open(&self) -> Option<&Arc<Graph>> {
        self.graph.get()
    }

    /// The graph, or a 503 while storage is still recovering.
    pub(crate) fn graph(&self) -> Result<Arc<Graph>, ApiError> {
        self.graph.get().cloned().ok_or_else(|| ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "starting",
            message: "storage recovery is still running; retry shortly".into(),
            detail: None,
        })
    }

    /// Hands the running cluster member to the API (once).
    pub fn attach_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster member, when clustering is enabled.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.get()
    }

    /// Hands the running metadata group to the API (once).
    pub fn attach_metadata(&self, metadata: MetadataGroup) {
        let _ = self.metadata.set(metadata);
    }

    /// The metadata group, when clustering is enabled and it started.
    pub fn metadata(&self) -> Option<&MetadataGroup> {
        self.metadata.get()
    }

    /// Marks the server ready (or not).
    /// Attaches replication: writes wait for their concern (`default`
    /// unless the request names one) up to `write_timeout`.
    pub fn attach_replicator(
        &self,
        replicator: Replicator,
        default: Concern,
        write_timeout: Duration,
    ) {
        let _ = self.replication.set(Replication {
            replicator,
            default_concern: default,
            write_timeout,
        });
    }

    /// Replication, in cluster mode.
    pub fn replicator(&self) -> Option<&Replicator> {
        self.replication.get().map(|r| &r.replicator)
    }

    /// The write concern of a request that names none.
    pub(crate) fn default_concern(&self) -> Concern {
        self.replication
            .get()
            .map_or(Concern::Primary, |r| r.default_concern)
    }

    /// How long a write waits for its concern.
    pub(crate) fn write_timeout(&self) -> Duration {
        self.replication
            .get()
            .map_or(Duration::from_secs(5), |r| r.write_timeout)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the server is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// The whole HTTP API.
pub fn router(state: Arc<AppState>, config: &ApiConfig) -> Router {
    http::router(state, config)
}
