//! HTTP metrics and the `/metrics` endpoint (Prometheus text format).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::{ApiError, AppState};

/// `engram.v1.MemoryService` and `ClusterService` methods, as labelled in the gRPC metrics.
const GRPC_METHODS: [&str; 10] = [
    "Remember",
    "Recall",
    "Get",
    "Forget",
    "Link",
    "Consolidate",
    "CreateSpace",
    "ListSpaces",
    "DeleteSpace",
    "GetClusterHealth",
];

/// Request counters and latency histograms, plus per-space gauges refreshed
/// at each scrape.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    memories: IntGaugeVec,
    tiers: IntGaugeVec,
    vectors: IntGaugeVec,
    storage: IntGaugeVec,
    ready: IntGauge,
    grpc_requests: IntCounterVec,
    grpc_latency: HistogramVec,
}

impl HttpMetrics {
    /// Creates and registers the metrics.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "engram_http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "engram_http_request_duration_seconds",
                "HTTP request latency by route and method",
            )
            .buckets(prometheus::exponential_buckets(0.000_05, 2.5, 14)?),
            &["route", "method"],
        )?;
        let memories = IntGaugeVec::new(
            Opts::new("engram_space_memories", "Memories per space"),
            &["space"],
        )?;
        let tiers = IntGaugeVec::new(
            Opts::new("engram_space_tier_memories", "Memories per space and tier"),
            &["space", "tier"],
        )?;
        let vectors = IntGaugeVec::new(
            Opts::new(
                "engram_space_vectors",
                "Vector index work pending per space: unlinked (not in the HNSW graph yet), tombstones (forgotten, memory not reclaimed yet)",
            ),
            &["space", "state"],
        )?;
        let storage = IntGaugeVec::new(
            Opts::new(
                "engram_rocksdb_bytes",
                "RocksDB sizes: block_cache_usage, block_cache_capacity, pending_compaction, sst, memtable",
            ),
            &["kind"],
        )?;
        let ready = IntGauge::new("engram_ready", "1 when the server is ready to serve")?;
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "engram_grpc_requests_total",
                "gRPC calls by method and status code",
            ),
            &["method", "code"],
        )?;
        let grpc_latency = HistogramVec::new(
            HistogramOpts::new(
                "engram_grpc_request_duration_seconds",
                "gRPC call latency by method",
            )
            .buckets(prometheus::exponential_buckets(0.000_05, 2.5, 14)?),
            &["method"],
        )?;
        // Every method's series exist from the start (rate() over a series
        // that appears mid-window undercounts, and dashboards show zeros).
        for method in GRPC_METHODS {
            grpc_requests.with_label_values(&[method, "Ok"]);
            grpc_latency.with_label_values(&[method]);
        }
        r.register(Box::new(grpc_requests.clone()))?;
        r.register(Box::new(grpc_latency.clone()))?;
        r.register(Box::new(storage.clone()))?;
        r.register(Box::new(ready.clone()))?;
        r.register(Box::new(requests.clone()))?;
        r.register(Box::new(latency.clone()))?;
        r.register(Box::new(memories.clone()))?;
        r.register(Box::new(tiers.clone()))?;
        r.register(Box::new(vectors.clone()))?;
        Ok(Self {
            requests,
            latency,
            memories,
            vectors,
            tiers,
            storage,
            ready,
            grpc_requests,
            grpc_latency,
        })
    }

    /// Records one gRPC call.
    pub(crate) fn observe_grpc(&self, method: &str, code: tonic::Code, seconds: f64) {
        self.grpc_latency
            .with_label_values(&[method])
            .observe(seconds);
        self.grpc_requests
            .with_label_values(&[method, &format!("{code:?}")])
            .inc();
    }
}

/// Middleware counting every request under its route template (never the
/// raw path, so ids do not explode the label set).
pub(crate) async fn track(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    s.http
        .latency
        .with_label_values(&[&route, &method])
        .observe(started.elapsed().as_secs_f64());
    s.http
        .requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    resp
}

/// `GET /metrics`.
pub(crate) async fn render(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    s.http.ready.set(i64::from(s.is_ready()));
    if let Some(g) = s.graph_if_open() {
        let st = g.engine().store().stats();
        for (kind, v) in [
            ("block_cache_usage", st.block_cache_usage_bytes),
            ("block_cache_capacity", st.block_cache_capacity_bytes),
            ("pending_compaction", st.pending_compaction_bytes),
            ("sst", st.sst_bytes),
            ("memtable", st.memtable_bytes),
        ] {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            s.http.storage.with_label_values(&[kind]).set(v);
        }
    }
    let spaces = match s.graph_if_open().filter(|_| s.is_ready()) {
        Some(g) => {
            let g = Arc::clone(g);
            crate::http::blocking(move || Ok(g.spaces()?)).await.ok()
        }
        None => None,
    };
    if let Some(spaces) = spaces {
        // Deleted spaces must disappear from the exposition.
        s.http.memories.reset();
        s.http.tiers.reset();
        s.http.vectors.reset();
        for sp in spaces {
            let n = i64::try_from(sp.memories).unwrap_or(i64::MAX);
            s.http.memories.with_label_values(&[&sp.name]).set(n);
            for (tier, v) in [
                ("hot", sp.hot),
                ("warm", sp.memories - sp.cold),
                ("cold", sp.cold),
            ] {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                s.http.tiers.with_label_values(&[&sp.name, tier]).set(v);
            }
            for (state, v) in [
                ("unlinked", sp.unlinked_vectors),
                ("tombstones", sp.vector_tombstones),
            ] {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                s.http.vectors.with_label_values(&[&sp.name, state]).set(v);
            }
        }
    }
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&s.registry.gather(), &mut buf)
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok(([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response())
}
