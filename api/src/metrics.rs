//! HTTP metrics and the `/metrics` endpoint (Prometheus text format).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
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
    damaged: IntGauge,
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
                "RocksDB sizes: block_cache_usage, block_cache_capacity, pending_compaction, sst, memtable, table_readers",
            ),
            &["kind"],
        )?;
        let ready = IntGauge::new("engram_ready", "1 when the server is ready to serve")?;
        let damaged = IntGauge::new(
            "engram_spaces_damaged",
            "Spaces whose data could not be loaded: requests to them get 503 space_unavailable while the others serve (see /api/v1/system/health, check spaces)",
        )?;
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
        r.register(Box::new(damaged.clone()))?;
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
            damaged,
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
    let method = method_label(req.method());
    let started = Instant::now();
    let resp = next.run(req).await;
    s.http
        .latency
        .with_label_values(&[&route, method])
        .observe(started.elapsed().as_secs_f64());
    s.http
        .requests
        .with_label_values(&[&route, method, resp.status().as_str()])
        .inc();
    resp
}

/// The method as a label: the standard methods by name, any other as
/// `other` (clients can invent methods; each would be a new series).
fn method_label(m: &Method) -> &'static str {
    const KNOWN: [(Method, &str); 9] = [
        (Method::GET, "GET"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::DELETE, "DELETE"),
        (Method::HEAD, "HEAD"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::PATCH, "PATCH"),
        (Method::CONNECT, "CONNECT"),
        (Method::TRACE, "TRACE"),
    ];
    KNOWN
        .iter()
        .find(|(k, _)| k == m)
        .map_or("other", |(_, name)| *name)
}

/// Name under which spaces beyond `server.max_space_series` are summed
/// (not a valid space name, so it cannot collide with one).
const OTHER_SPACES: &str = "_other";

/// `GET /metrics`. Per-space series cover the `max_space_series` largest
/// spaces; the rest are summed under `space="_other"`.
pub(crate) async fn render(
    State(s): State<Arc<AppState>>,
    max_space_series: usize,
) -> Result<Response, ApiError> {
    s.http.ready.set(i64::from(s.is_ready()));
    if let Some(g) = s.graph_if_open() {
        let damaged = g.damaged_spaces().len();
        s.http
            .damaged
            .set(i64::try_from(damaged).unwrap_or(i64::MAX));
        let st = g.engine().store().stats();
        for (kind, v) in [
            ("block_cache_usage", st.block_cache_usage_bytes),
            ("block_cache_capacity", st.block_cache_capacity_bytes),
            ("pending_compaction", st.pending_compaction_bytes),
            ("sst", st.sst_bytes),
            ("memtable", st.memtable_bytes),
            ("table_readers", st.table_readers_bytes),
        ] {
            let v = i64::try_from(v).unwrap_or(i64::MAX);
            s.http.storage.with_label_values(&[kind]).set(v);
        }
    }
    let spaces = match s.graph_if_open().filter(|_| s.is_ready()) {
        Some(g) => {
            let g = Arc::clone(g);
            crate::task::blocking(move || Ok(g.spaces()?)).await.ok()
        }
        None => None,
    };
    // One scrape at a time from here (no await below): the per-space
    // families are reset, set and encoded without another scrape between.
    static SCRAPE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = SCRAPE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(mut spaces) = spaces {
        spaces.sort_by(|a, b| b.memories.cmp(&a.memories).then(a.name.cmp(&b.name)));
        // Sums are built here and only then set (one lock for the reset and
        // the sets), so concurrent scrapes never add to each other.
        type Key = (&'static str, String, &'static str);
        let mut sums: std::collections::BTreeMap<Key, i64> = std::collections::BTreeMap::new();
        let mut add = |family: &'static str, name: &str, label: &'static str, v: usize| {
            let e = sums.entry((family, name.to_owned(), label)).or_insert(0);
            *e = e.saturating_add(i64::try_from(v).unwrap_or(i64::MAX));
        };
        for (i, sp) in spaces.iter().enumerate() {
            let name = if i < max_space_series {
                sp.name.as_str()
            } else {
                OTHER_SPACES
            };
            add("memories", name, "", sp.memories);
            add("tiers", name, "hot", sp.hot);
            add("tiers", name, "warm", sp.memories - sp.cold);
            add("tiers", name, "cold", sp.cold);
            add("vectors", name, "unlinked", sp.unlinked_vectors);
            add("vectors", name, "tombstones", sp.vector_tombstones);
        }
        // Deleted spaces must disappear from the exposition.
        s.http.memories.reset();
        s.http.tiers.reset();
        s.http.vectors.reset();
        for ((family, name, label), v) in sums {
            match family {
                "memories" => s.http.memories.with_label_values(&[&name]).set(v),
                "tiers" => s.http.tiers.with_label_values(&[&name, label]).set(v),
                _ => s.http.vectors.with_label_values(&[&name, label]).set(v),
            }
        }
    }
    // The replication lag gauges are set by `Replicator::status`: refreshed
    // at each scrape, so alerts see current lag without another reader.
    if let Some(r) = s.replicator() {
        let _ = r.status();
    }
    let mut buf = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&s.registry.gather(), &mut buf)
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    Ok(([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response())
}
