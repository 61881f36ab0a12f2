//! Layered configuration: built-in defaults < config file < `ENGRAM_*`
//! environment < command-line flags (figment). Every key is documented in
//! `config/default.toml`; unknown keys and bad values are errors that name
//! the key.
//!
//! Environment: `ENGRAM_<SECTION>__<KEY>` sets a nested key (double
//! underscore between levels, e.g. `ENGRAM_MEMORY__CONSOLIDATION__THRESHOLD`),
//! `ENGRAM_<KEY>` a top-level one (`ENGRAM_DATA_DIR`). The deployment
//! documents' short names are aliases: `ENGRAM_HTTP_PORT`, `ENGRAM_GRPC_PORT`,
//! `ENGRAM_BIND`, `ENGRAM_CACHE_SIZE_MB`, `ENGRAM_LOG_FORMAT`, `ENGRAM_LOG_LEVEL`,
//! `ENGRAM_NODE_ID`, `ENGRAM_CLUSTER_ADVERTISE_ADDR`, `ENGRAM_CLUSTER_SEEDS`
//! (comma-separated `host:port`), `ENGRAM_METADATA_VOTERS` (comma-separated
//! node ids).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use engram_cluster::ClusterConfig;
use engram_graph::hnsw::HnswParams;
use engram_graph::{ConsolidationConfig, EngineConfig, GraphConfig, Limits};
use engram_lsm::StoreConfig;
use engram_wal::{Durability, WalConfig};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

pub use crate::config_replication::ReplicationSection;

/// Where a config file is looked for when `--config` is not given.
pub const CONTAINER_CONFIG: &str = "/config/engram.toml";

/// Short environment names used by the deployment documents.
const ALIASES: &[(&str, &str)] = &[
    ("ENGRAM_HTTP_PORT", "server.http_port"),
    ("ENGRAM_GRPC_PORT", "server.grpc_port"),
    ("ENGRAM_BIND", "server.bind"),
    ("ENGRAM_CACHE_SIZE_MB", "storage.cache_size_mb"),
    ("ENGRAM_LOG_FORMAT", "log.format"),
    ("ENGRAM_LOG_LEVEL", "log.level"),
    ("ENGRAM_NODE_ID", "cluster.node_id"),
    (
        "ENGRAM_CLUSTER_ADVERTISE_ADDR",
        "cluster.network.advertise_addr",
    ),
    ("ENGRAM_CLUSTER_SEEDS", "cluster.network.seeds"),
    ("ENGRAM_METADATA_VOTERS", "cluster.metadata.voters"),
];

/// The whole configuration (the shape of `config/default.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory: WAL, RocksDB, lock file.
    pub data_dir: PathBuf,
    /// Listeners and request handling.
    pub server: ServerConfig,
    /// Logging.
    pub log: LogConfig,
    /// RocksDB (warm tier).
    pub storage: StorageConfig,
    /// Write-ahead log.
    pub wal: WalSection,
    /// The memory model.
    pub memory: MemorySection,
    /// Cluster membership and placement.
    pub cluster: ClusterConfig,
    /// Replication of writes (cluster mode).
    pub replication: ReplicationSection,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address both listeners bind.
    pub bind: IpAddr,
    /// HTTP port (0 picks a free one, for tests).
    pub http_port: u16,
    /// gRPC port (0 picks a free one, for tests).
    pub grpc_port: u16,
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// Requests taking longer are answered 408.
    pub request_timeout_ms: u64,
    /// How long in-flight requests may drain at shutdown.
    pub shutdown_drain_ms: u64,
    /// Load every space's indexes before reporting ready.
    pub warm_up: bool,
    /// Threads that run storage calls (each request's graph work holds one
    /// while it waits for its fsync); more concurrent requests queue.
    pub blocking_threads: usize,
    /// A new connection that has not sent a whole request header (HTTP) or
    /// its first bytes (gRPC) within this is closed; on HTTP it also closes
    /// keep-alive connections idle this long between requests.
    pub header_read_timeout_ms: u64,
    /// Open HTTP connections at most; more are closed at once and counted.
    pub max_connections: usize,
    /// Open gRPC connections at most; more are closed at once and counted.
    pub grpc_max_connections: usize,
    /// Concurrent gRPC calls (HTTP/2 streams) per connection.
    pub grpc_max_concurrent_streams: u32,
    /// Host names requests may address (`Host` header, port ignored); others
    /// get 421. IP literals are always accepted. Empty: the loopback names
    /// (`localhost`, `*.localhost`) when bound to a loopback address, any
    /// name otherwise. `"*"` accepts any; `".example.com"` a domain and its
    /// subdomains.
    pub allowed_hosts: Vec<String>,
    /// Spaces exported one by one in the per-space metrics (largest first);
    /// the rest are summed under `space="_other"`.
    pub max_space_series: usize,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// Filter when `RUST_LOG` is unset (tracing `EnvFilter` syntax).
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `[storage]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Shared RocksDB block cache in MiB.
    pub cache_size_mb: usize,
    /// Memtable size per column family in MiB.
    pub write_buffer_mb: usize,
    /// Bloom filter bits per key (0 disables).
    pub bloom_bits_per_key: f64,
    /// RocksDB flush and compaction threads.
    pub max_background_jobs: i32,
    /// zstd level of the bottommost level and the cold tier.
    pub zstd_level: i32,
    /// Records applied between RocksDB WAL syncs and WAL segment release.
    pub wal_release_interval: u64,
    /// Files RocksDB keeps open at most; the connection limits leave this
    /// many descriptors (plus 512) free under the open-files limit.
    pub max_open_files: i32,
    /// At most this long after a forget, no copy of the forgotten data is
    /// left in RocksDB files or WAL segments.
    pub purge_after_ms: u64,
}

/// `[wal]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalSection {
    /// Segment file size in MiB.
    pub segment_size_mb: u64,
    /// Largest record payload in bytes.
    pub max_record_bytes: u32,
    /// `always` (fsync before every acknowledgement), `never`, or an
    /// interval such as `10ms` (acknowledged writes of the last interval can
    /// be lost in a power failure).
    pub fsync: String,
    /// Preallocate segment files (much faster fsync on most file systems).
    pub preallocate: bool,
    /// Hours files moved to `wal/corrupt/` by `--repair` are kept (0: until
    /// removed by hand).
    pub corrupt_retention_hours: u64,
}

/// `[memory]`: mirrors the graph's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySection {
    /// Confidence of a memory remembered without one.
    pub default_confidence: f32,
    /// Spaces created at startup if missing (besides `default`).
    pub bootstrap_spaces: Vec<String>,
    /// Forgetting curve: days for confidence to fall to 1/e without access.
    pub stability_days: f64,
    /// Weight of recency in recall ranking, (0, 1].
    pub temporal_weight: f32,
    /// Vectors per space below which vector recall scans exactly.
    pub exact_search_below: usize,
    /// Semantic edges made per new embedded memory.
    pub semantic_k: usize,
    /// Cosine similarity for a semantic edge.
    pub semantic_threshold: f32,
    /// How often recall statistics are written.
    pub access_flush_ms: u64,
    /// Accesses buffered between writes (more are dropped and counted).
    pub access_buffer: usize,
    /// Default hot-cache records per space.
    pub hot_capacity: usize,
    /// Seconds without access before a memory moves to the cold tier (0: never).
    pub cold_after_sec: u64,
    /// MiB the loaded spaces' in-memory indexes may use (0: unlimited);
    /// least recently used idle spaces are unloaded beyond it.
    pub index_budget_mb: u64,
    /// Input limits.
    pub limits: LimitsSection,
    /// HNSW parameters.
    pub ann: AnnSection,
    /// Background consolidation.
    pub consolidation: ConsolidationSection,
}

/// `[memory.limits]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest content in bytes.
    pub max_content_bytes: usize,
    /// Largest metadata (serialised) in bytes.
    pub max_metadata_bytes: usize,
    /// Most tags per memory.
    pub max_tags: usize,
    /// Longest tag in bytes.
    pub max_tag_bytes: usize,
    /// Largest embedding dimension.
    pub max_embedding_dim: usize,
    /// Largest recall limit.
    pub max_recall_limit: usize,
    /// Most edges a memory may have, both directions.
    pub max_edges_per_memory: usize,
    /// Most links in one remember request.
    pub max_links: usize,
    /// Longest session id in bytes.
    pub max_session_bytes: usize,
    /// Largest hot-cache capacity a space may ask for.
    pub max_hot_capacity: usize,
    /// Most spaces on a node.
    pub max_spaces: usize,
}

/// `[memory.ann]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnnSection {
    /// Links per node.
    pub m: usize,
    /// Candidates while building.
    pub ef_construction: usize,
    /// Candidates while searching.
    pub ef_search: usize,
}

/// `[memory.consolidation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsolidationSection {
    /// Seconds between background runs (0: never).
    pub interval_sec: u64,
    /// Memories examined per space and run.
    pub batch_size: usize,
    /// Similarity that merges memories into a concept.
    pub threshold: f32,
}

impl Default for Config {
    fn default() -> Self {
        let g = GraphConfig::default();
        let e = &g.engine;
        Config {
            data_dir: PathBuf::from("./engram-data"),
            server: ServerConfig::default(),
            log: LogConfig {
                format: LogFormat::Human,
                level: "info".into(),
            },
            storage: StorageConfig {
                cache_size_mb: e.store.block_cache_mb,
                write_buffer_mb: e.store.write_buffer_mb,
                bloom_bits_per_key: e.store.bloom_bits_per_key,
                max_background_jobs: e.store.max_background_jobs,
                zstd_level: e.store.zstd_level,
                wal_release_interval: e.wal_release_interval,
                max_open_files: e.store.max_open_files,
                purge_after_ms: e.purge_after_ms,
            },
            wal: WalSection {
                segment_size_mb: e.wal.segment_size / (1024 * 1024),
                max_record_bytes: e.wal.max_payload,
                fsync: "always".into(),
                preallocate: e.wal.preallocate,
                corrupt_retention_hours: e.wal.corrupt_retention_hours,
            },
            memory: MemorySection {
                default_confidence: g.default_confidence,
                bootstrap_spaces: g.bootstrap_spaces.clone(),
                stability_days: g.stability_days,
                temporal_weight: g.temporal_weight,
                exact_search_below: g.exact_search_below,
                semantic_k: g.semantic_k,
                semantic_threshold: g.semantic_threshold,
                access_flush_ms: g.access_flush_ms,
                access_buffer: g.access_buffer,
                hot_capacity: g.hot_capacity,
                cold_after_sec: g.cold_after_sec,
                index_budget_mb: g.index_budget_mb,
                limits: LimitsSection {
                    max_content_bytes: g.limits.max_content_bytes,
                    max_metadata_bytes: g.limits.max_metadata_bytes,
                    max_tags: g.limits.max_tags,
                    max_tag_bytes: g.limits.max_tag_bytes,
                    max_embedding_dim: g.limits.max_embedding_dim,
                    max_recall_limit: g.limits.max_recall_limit,
                    max_edges_per_memory: g.limits.max_edges_per_memory,
                    max_links: g.limits.max_links,
                    max_session_bytes: g.limits.max_session_bytes,
                    max_hot_capacity: g.limits.max_hot_capacity,
                    max_spaces: g.limits.max_spaces,
                },
                ann: AnnSection {
                    m: g.ann.m,
                    ef_construction: g.ann.ef_construction,
                    ef_search: g.ann.ef_search,
                },
                consolidation: ConsolidationSection {
                    interval_sec: g.consolidation.interval_sec,
                    batch_size: g.consolidation.batch_size,
                    threshold: g.consolidation.threshold,
                },
            },
            cluster: ClusterConfig::default(),
            replication: ReplicationSection::default(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            http_port: 7432,
            grpc_port: 50051,
            body_limit_bytes: 1024 * 1024,
            request_timeout_ms: 30_000,
            shutdown_drain_ms: 20_000,
            warm_up: true,
            blocking_threads: 64,
            header_read_timeout_ms: 10_000,
            max_connections: 10_000,
            grpc_max_connections: 10_000,
            grpc_max_concurrent_streams: 256,
            allowed_hosts: Vec::new(),
            max_space_series: 1000,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Config::default().log
    }
}
impl Default for StorageConfig {
    fn default() -> Self {
        Config::default().storage
    }
}
impl Default for WalSection {
    fn default() -> Self {
        Config::default().wal
    }
}
impl Default for MemorySection {
    fn default() -> Self {
        Config::default().memory
    }
}
impl Default for LimitsSection {
    fn default() -> Self {
        Config::default().memory.limits
    }
}
impl Default for AnnSection {
    fn default() -> Self {
        Config::default().memory.ann
    }
}
impl Default for ConsolidationSection {
    fn default() -> Self {
        Config::default().memory.consolidation
    }
}

/// Flag values that override everything else (only those given).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--bind`, `--http-port`, `--grpc-port`.
    #[serde(skip_serializing_if = "ServerOverrides::is_empty")]
    pub server: ServerOverrides,
}

/// `[server]` flags.
#[derive(Debug, Default, Serialize)]
pub struct ServerOverrides {
    /// `--bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind: Option<IpAddr>,
    /// `--http-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_port: Option<u16>,
    /// `--grpc-port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_port: Option<u16>,
}

impl ServerOverrides {
    fn is_empty(&self) -> bool {
        self.bind.is_none() && self.http_port.is_none() && self.grpc_port.is_none()
    }
}

/// A `[server]` key that a flag of `engram start` can also set. Flags win
/// over the environment and the file, so a value set in both places is a
/// trap: the server follows the flag, `engram status` (which has no such
/// flags) follows the environment or file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenKey {
    /// `server.bind`, `--bind`.
    Bind,
    /// `server.http_port`, `--http-port`.
    HttpPort,
    /// `server.grpc_port`, `--grpc-port`.
    GrpcPort,
}

impl ListenKey {
    /// The dotted configuration key.
    pub fn key(self) -> &'static str {
        match self {
            ListenKey::Bind => "server.bind",
            ListenKey::HttpPort => "server.http_port",
            ListenKey::GrpcPort => "server.grpc_port",
        }
    }

    /// The flag of `engram start` that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            ListenKey::Bind => "--bind",
            ListenKey::HttpPort => "--http-port",
            ListenKey::GrpcPort => "--grpc-port",
        }
    }

    /// The environment variables that set it, the winning one first (the
    /// short alias is merged after the nested form, see [`load`]).
    fn env_vars(self) -> [&'static str; 2] {
        match self {
            ListenKey::Bind => ["ENGRAM_BIND", "ENGRAM_SERVER__BIND"],
            ListenKey::HttpPort => ["ENGRAM_HTTP_PORT", "ENGRAM_SERVER__HTTP_PORT"],
            ListenKey::GrpcPort => ["ENGRAM_GRPC_PORT", "ENGRAM_SERVER__GRPC_PORT"],
        }
    }

    /// The key's name inside `[server]`.
    fn leaf(self) -> &'static str {
        let key = self.key();
        key.strip_prefix("server.").unwrap_or(key)
    }

    /// Whether two spellings of a value mean the same (`8000` and ` 8000`,
    /// `0.0.0.0` and `0.0.0.0`).
    fn same(self, a: &str, b: &str) -> bool {
        let (a, b) = (a.trim(), b.trim());
        match self {
            ListenKey::Bind => match (a.parse::<IpAddr>(), b.parse::<IpAddr>()) {
                (Ok(x), Ok(y)) => x == y,
                _ => a == b,
            },
            ListenKey::HttpPort | ListenKey::GrpcPort => {
                match (a.parse::<u16>(), b.parse::<u16>()) {
                    (Ok(x), Ok(y)) => x == y,
                    _ => a == b,
                }
            }
        }
    }
}

/// A configuration layer below the flags that sets a [`ListenKey`].
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// An environment variable, as spelled in the environment, and its value.
    Env {
        /// The variable's name.
        var: String,
        /// Its value.
        value: String,
    },
    /// The config file and the value written there.
    File {
        /// The file.
        path: PathBuf,
        /// The dotted key.
        key: &'static str,
        /// The value as TOML.
        value: toml::Value,
    },
}

impl Origin {
    /// The value as text (a TOML string without its quotes).
    fn raw(&self) -> String {
        match self {
            Origin::Env { value, .. } => value.clone(),
            Origin::File { value, .. } => match value {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        }
    }
}

impl std::fmt::Display for Origin {
    /// `ENGRAM_SERVER__HTTP_PORT=8000`, or
    /// `server.http_port = 8000 in /config/engram.toml`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Env { var, value } => write!(f, "{var}={value}"),
            Origin::File { path, key, value } => {
                write!(f, "{key} = {value} in {}", path.display())
            }
        }
    }
}

/// What the environment and the config file say, to attribute a value to
/// its layer.
struct Layers {
    /// Every environment variable (name, value) that is valid Unicode.
    env: Vec<(String, String)>,
    /// The config file and its contents.
    file: Option<(PathBuf, toml::Table)>,
}

impl Layers {
    /// Reads the process environment and `file` (a file that cannot be read
    /// or parsed counts as absent: [`load`] has already reported it).
    fn read(file: Option<&Path>) -> Layers {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        let file = file.and_then(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let table = toml::from_str::<toml::Table>(&text).ok()?;
            Some((p.to_path_buf(), table))
        });
        Layers { env, file }
    }

    /// The layers below the flags that set `key`, the winning one first:
    /// the environment (the variable that wins, matched like figment does,
    /// ignoring case), then the file. Empty: the default applies.
    fn origins(&self, key: ListenKey) -> Vec<Origin> {
        let mut out = Vec::new();
        let env = key.env_vars().into_iter().find_map(|name| {
            self.env
                .iter()
                .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        });
        if let Some((var, value)) = env {
            out.push(Origin::Env {
                var: var.clone(),
                value: value.clone(),
            });
        }
        if let Some((path, table)) = &self.file {
            let value = table.get("server").and_then(|s| s.get(key.leaf())).cloned();
            if let Some(value) = value {
                out.push(Origin::File {
                    path: path.clone(),
                    key: key.key(),
                    value,
                });
            }
        }
        out
    }

    /// One warning per flag in `flags` that overrides a different value set
    /// in the environment or the file.
    fn conflicts(&self, flags: &ServerOverrides) -> Vec<String> {
        let given = [
            (ListenKey::Bind, flags.bind.map(|v| v.to_string())),
            (ListenKey::HttpPort, flags.http_port.map(|v| v.to_string())),
            (ListenKey::GrpcPort, flags.grpc_port.map(|v| v.to_string())),
        ];
        let mut out = Vec::new();
        for (key, flag_value) in given {
            let Some(flag_value) = flag_value else {
                continue;
            };
            let origins = self.origins(key);
            let overridden: Vec<String> = origins
                .iter()
                .filter(|o| !key.same(&flag_value, &o.raw()))
                .map(ToString::to_string)
                .collect();
            if overridden.is_empty() {
                continue;
            }
            let mut msg = format!(
                "{} {flag_value} overrides {} (flags win over environment and file)",
                key.flag(),
                overridden.join(" and ")
            );
            // `engram status` has no flags: it follows the winning layer.
            let status_misses = origins
                .first()
                .filter(|top| key == ListenKey::HttpPort && !key.same(&flag_value, &top.raw()));
            if let Some(top) = status_misses {
                msg.push_str(&format!(
                    "; the server listens on port {flag_value}, but `engram status` without --url \
                     (e.g. a container healthcheck) reads port {} from {top} and will not reach it",
                    top.raw().trim()
                ));
            }
            msg.push_str(&format!(": set {} in one place only", key.key()));
            if key != ListenKey::Bind {
                msg.push_str(&format!(
                    " (in a container, keep the command's {} and publish the port on another host port with -p)",
                    key.flag()
                ));
            }
            out.push(msg);
        }
        out
    }
}

/// The layers below the flags (environment, then `file`) that set `key`,
/// the winning one first; empty when the default applies.
pub fn origins(file: Option<&Path>, key: ListenKey) -> Vec<Origin> {
    Layers::read(file).origins(key)
}

/// Warnings for `engram start`: each of `--bind`, `--http-port` and
/// `--grpc-port` given in `flags` that overrides a different value from the
/// environment or `file`, naming both layers and both values.
pub fn flag_conflicts(file: Option<&Path>, flags: &ServerOverrides) -> Vec<String> {
    Layers::read(file).conflicts(flags)
}

/// The config file in effect: `--config`, else `/config/engram.toml`, else
/// `$XDG_CONFIG_HOME/engram/config.toml` (`~/.config` when unset), if present.
pub fn config_file(explicit: Option<&Path>) -> Result<Option<PathBuf>> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!(
                "config file {} does not exist or is not a file",
                p.display()
            );
        }
        return Ok(Some(p.to_path_buf()));
    }
    let mut candidates = vec![PathBuf::from(CONTAINER_CONFIG)];
    match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => candidates.push(PathBuf::from(x).join("engram/config.toml")),
        None => {
            if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                candidates.push(PathBuf::from(h).join(".config/engram/config.toml"));
            }
        }
    }
    Ok(candidates.into_iter().find(|p| p.is_file()))
}

/// Environment variables that are not configuration keys but belong to
/// Engram's CLI and tooling (`./x`, tests, benchmarks), and are therefore
/// not rejected.
const NOT_CONFIG: &[&str] = &[
    "ENGRAM_URL",
    "ENGRAM_FUZZ_SECONDS",
    "ENGRAM_CRASH_ITERATIONS",
    "ENGRAM_CRASH_SEED",
    "ENGRAM_SCHEMATHESIS_EXAMPLES",
    "ENGRAM_BENCH_DIR",
    // deployments/docker (build-local.sh, docker-compose.yml) and ./x
    "ENGRAM_IMAGE",
    "ENGRAM_RUNTIME_BASE",
    "ENGRAM_SBOM",
    "ENGRAM_CONFIG_FILE",
    "ENGRAM_HTTP_HOST_PORT",
    "ENGRAM_GRPC_HOST_PORT",
    "ENGRAM_PUBLISH_ADDR",
    "ENGRAM_RENDERED_DIR",
    "ENGRAM_TEST_BIN",
    // Fault points of test builds (replication/src/node/mod.rs).
    "ENGRAM_FAILPOINTS",
];

/// Loads the layered configuration. `file` comes from [`config_file`].
pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading config file {}", f.display()))?;
        // Parse first so a syntax error names the file and line.
        toml::from_str::<toml::Table>(&text)
            .with_context(|| format!("config file {} is not valid TOML", f.display()))?;
        fig = fig.merge(Toml::file(f));
    }
    // Unknown ENGRAM_* variables are errors like unknown keys in a file.
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        let v = v.to_str().unwrap_or("");
        if !k.starts_with("ENGRAM_") || NOT_CONFIG.contains(&k) {
            continue;
        }
        if ALIASES.iter().any(|(a, _)| *a == k) {
            continue;
        }
        let key = k["ENGRAM_".len()..].to_ascii_lowercase().replace("__", ".");
        if !known_key(&key) && !service_link(k, v) {
            bail!(
                "unknown environment variable {k} (config key {key:?}){}; nested keys use \
                 ENGRAM_<SECTION>__<KEY>, two underscores between levels (e.g. \
                 ENGRAM_STORAGE__CACHE_SIZE_MB); every key is in config/default.toml",
                suggestion(k)
            );
        }
    }
    fig = fig.merge(
        Env::prefixed("ENGRAM_")
            .filter(|k| {
                let k = k.as_str().to_ascii_uppercase();
                // Only real keys: everything else was rejected above or is a
                // service-link variable.
                !ALIASES.iter().any(|(a, _)| a["ENGRAM_".len()..] == k)
                    && known_key(&k.to_ascii_lowercase().replace("__", "."))
            })
            .split("__"),
    );
    for (var, key) in ALIASES {
        fig = fig.merge(Env::raw().only(&[*var]).map(move |_| (*key).into()));
    }
    fig = fig.merge(Serialized::defaults(overrides));
    let config: Config = fig.extract().map_err(|e| {
        let mut msg = String::new();
        for err in e {
            let key = err.path.join(".");
            let source = err
                .metadata
                .as_ref()
                .map(|m| match &m.source {
                    Some(s) => format!("{} ({s})", m.name),
                    None => m.name.to_string(),
                })
                .unwrap_or_default();
            msg.push_str(&format!(
                "\n  config key {:?}: {} [from {}]",
                key,
                err.kind,
                if source.is_empty() {
                    "?".into()
                } else {
                    source
                }
            ));
        }
        anyhow::anyhow!("invalid configuration:{msg}")
    })?;
    config.validate()?;
    Ok(config)
}

/// Variables that Kubernetes service links (of any Service named `engram` or
/// `engram-…`) inject into every container of the namespace:
/// `ENGRAM[_X]_SERVICE_HOST`, `ENGRAM[_X]_SERVICE_PORT[_NAME]`,
/// `ENGRAM[_X]_PORT=tcp://…` and `ENGRAM[_X]_PORT_<n>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`.
/// They are not configuration and must not stop the server. The shapes are
/// matched exactly (a bare `…_PORT` only with a `tcp://`-style value), so a
/// mistyped key such as `ENGRAM_SERVER_HTTP_PORT=8000` is still an error.
fn service_link(var: &str, value: &str) -> bool {
    let Some(rest) = var.strip_prefix("ENGRAM") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('_').skip(1).collect();
    let n = parts.len();
    let is = |i: usize, s: &str| n > i && parts[n - 1 - i] == s;
    let proto = |p: &str| matches!(p, "TCP" | "UDP" | "SCTP");
    // …_SERVICE_HOST, …_SERVICE_PORT
    if n >= 2 && is(1, "SERVICE") && (is(0, "HOST") || is(0, "PORT")) {
        return true;
    }
    // …_SERVICE_PORT_<NAME>
    if n >= 3 && is(2, "SERVICE") && is(1, "PORT") {
        return true;
    }
    // …_PORT=tcp://host:port
    if n >= 1
        && is(0, "PORT")
        && ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|p| value.starts_with(p))
    {
        return true;
    }
    // …_PORT_<n>_<PROTO>[_PROTO|_PORT|_ADDR]
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if n >= 3 && is(2, "PORT") && numeric(parts[n - 2]) && proto(parts[n - 1]) {
        return true;
    }
    n >= 4
        && is(3, "PORT")
        && numeric(parts[n - 3])
        && proto(parts[n - 2])
        && matches!(parts[n - 1], "PROTO" | "PORT" | "ADDR")
}

/// Every dotted key of the configuration, sections included, each with
/// whether it is a value (not a section).
fn config_keys() -> Vec<(String, bool)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, bool)>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&p, v, out);
                out.push((p, !v.is_table()));
            }
        }
    }
    let Ok(v) = toml::Value::try_from(Config::default()) else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    walk("", &v, &mut keys);
    keys
}

/// Whether `key` is a dotted key of the configuration (for environment checks).
fn known_key(key: &str) -> bool {
    config_keys().iter().any(|(k, _)| k == key)
}

/// The flag of `engram start` that overrides a configuration key, if any.
fn flag_for(key: &str) -> Option<&'static str> {
    match key {
        "data_dir" => Some("--data-dir"),
        "server.bind" => Some("--bind"),
        "server.http_port" => Some("--http-port"),
        "server.grpc_port" => Some("--grpc-port"),
        _ => None,
    }
}

/// For an unknown `ENGRAM_*` variable, the variable it was probably meant
/// to be (the same letters with other underscores, e.g.
/// `ENGRAM_SERVER_HTTP_PORT` for `ENGRAM_SERVER__HTTP_PORT`), as a message
/// fragment; when a flag of `engram start` overrides that key, the fragment
/// says so, since setting it is then useless where the flag is given (as in
/// the container image's command). Empty when nothing is close.
fn suggestion(var: &str) -> String {
    fn squash(s: &str) -> String {
        s.chars()
            .filter(|c| *c != '_')
            .map(|c| c.to_ascii_uppercase())
            .collect()
    }
    let wanted = squash(var);
    let nested = config_keys()
        .into_iter()
        .filter(|(_, value)| *value)
        .map(|(key, _)| {
            let name = format!("ENGRAM_{}", key.to_ascii_uppercase().replace('.', "__"));
            (name, key)
        });
    let aliases = ALIASES
        .iter()
        .map(|(alias, key)| ((*alias).to_owned(), (*key).to_owned()));
    let Some((name, key)) = nested
        .chain(aliases)
        .find(|(name, _)| squash(name.as_str()) == wanted)
    else {
        return String::new();
    };
    match flag_for(&key) {
        Some(flag) => format!(
            "; did you mean {name}? Note that `engram start {flag}` wins over it (flags win over \
             environment and file; the container image's command passes --bind, --http-port and \
             --grpc-port), so set it in one place only"
        ),
        None => format!("; did you mean {name}?"),
    }
}

impl Config {
    /// Checks ranges and cross-field rules; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("config key \"data_dir\" must not be empty");
        }
        if self.server.body_limit_bytes < 1024 {
            bail!("config key \"server.body_limit_bytes\" must be at least 1024");
        }
        if !(1..=4096).contains(&self.server.blocking_threads) {
            bail!("config key \"server.blocking_threads\" must be within 1..=4096");
        }
        if self.server.request_timeout_ms == 0 {
            bail!("config key \"server.request_timeout_ms\" must be at least 1");
        }
        if self.server.shutdown_drain_ms > 25_000 {
            bail!(
                "config key \"server.shutdown_drain_ms\" must be at most 25000 (shutdown must finish within 30 s)"
            );
        }
        if self.server.header_read_timeout_ms == 0 {
            bail!("config key \"server.header_read_timeout_ms\" must be at least 1");
        }
        for (key, v) in [
            ("server.max_connections", self.server.max_connections),
            (
                "server.grpc_max_connections",
                self.server.grpc_max_connections,
            ),
            (
                "server.grpc_max_concurrent_streams",
                self.server.grpc_max_concurrent_streams as usize,
            ),
        ] {
            if v == 0 {
                bail!("config key {key:?} must be at least 1");
            }
        }
        engram_api::HostPolicy::parse(&self.server.allowed_hosts, self.server.bind)
            .map_err(|e| anyhow::anyhow!("config key \"server.allowed_hosts\": {e}"))?;
        if self.server.http_port != 0 && self.server.http_port == self.server.grpc_port {
            bail!("config keys \"server.http_port\" and \"server.grpc_port\" must differ");
        }
        if self.storage.cache_size_mb == 0 {
            bail!("config key \"storage.cache_size_mb\" must be at least 1");
        }
        if self.storage.wal_release_interval == 0 {
            bail!("config key \"storage.wal_release_interval\" must be at least 1");
        }
        if self.wal.segment_size_mb == 0 {
            bail!("config key \"wal.segment_size_mb\" must be at least 1");
        }
        let durability = parse_fsync(&self.wal.fsync)?;
        if self.cluster.enabled && durability != Durability::Always {
            bail!(
                "config key \"wal.fsync\" must be \"always\" with cluster.enabled (got {:?}): replicas acknowledge and write concerns count only records on disk",
                self.wal.fsync
            );
        }
        self.cluster.validate()?;
        self.replication.validate()?;
        tracing_subscriber::EnvFilter::try_new(&self.log.level).with_context(|| {
            format!(
                "config key \"log.level\": {:?} is not a valid filter",
                self.log.level
            )
        })?;
        let g = self.graph_config()?;
        g.validate().map_err(|e| match e {
            engram_graph::GraphError::Invalid { field, message } => {
                let key = match field {
                    "engine.wal" => "wal".to_owned(),
                    "engine.store" => "storage".to_owned(),
                    f => format!("memory.{f}"),
                };
                anyhow::anyhow!("config key {key:?}: {message}")
            }
            engram_graph::GraphError::InvalidSpaceName(n) => anyhow::anyhow!(
                "config key \"memory.bootstrap_spaces\": {n:?} is not a valid space name (1-63 of a-z 0-9 _ -, starting with a letter or digit)"
            ),
            e => anyhow::anyhow!("invalid configuration: {e}"),
        })?;
        Ok(())
    }

    /// The graph's configuration.
    pub fn graph_config(&self) -> Result<GraphConfig> {
        let m = &self.memory;
        let s = &self.storage;
        let segment_size = self
            .wal
            .segment_size_mb
            .checked_mul(1024 * 1024)
            .context("config key \"wal.segment_size_mb\" is too large")?;
        Ok(GraphConfig {
            engine: EngineConfig {
                wal: WalConfig {
                    segment_size,
                    max_payload: self.wal.max_record_bytes,
                    durability: parse_fsync(&self.wal.fsync)?,
                    preallocate: self.wal.preallocate,
                    corrupt_retention_hours: self.wal.corrupt_retention_hours,
                },
                store: StoreConfig {
                    block_cache_mb: s.cache_size_mb,
                    bloom_bits_per_key: s.bloom_bits_per_key,
                    write_buffer_mb: s.write_buffer_mb,
                    max_background_jobs: s.max_background_jobs,
                    zstd_level: s.zstd_level,
                    max_open_files: s.max_open_files,
                    ..StoreConfig::default()
                },
                wal_release_interval: s.wal_release_interval,
                purge_after_ms: s.purge_after_ms,
            },
            limits: Limits {
                max_content_bytes: m.limits.max_content_bytes,
                max_metadata_bytes: m.limits.max_metadata_bytes,
                max_tags: m.limits.max_tags,
                max_tag_bytes: m.limits.max_tag_bytes,
                max_embedding_dim: m.limits.max_embedding_dim,
                max_recall_limit: m.limits.max_recall_limit,
                max_edges_per_memory: m.limits.max_edges_per_memory,
                max_links: m.limits.max_links,
                max_session_bytes: m.limits.max_session_bytes,
                max_hot_capacity: m.limits.max_hot_capacity,
                max_spaces: m.limits.max_spaces,
            },
            default_confidence: m.default_confidence,
            bootstrap_spaces: m.bootstrap_spaces.clone(),
            // In a cluster the metadata group creates them on R nodes.
            create_default_spaces: !self.cluster.enabled,
            stability_days: m.stability_days,
            temporal_weight: m.temporal_weight,
            ann: HnswParams {
                m: m.ann.m,
                ef_construction: m.ann.ef_construction,
                ef_search: m.ann.ef_search,
            },
            exact_search_below: m.exact_search_below,
            semantic_k: m.semantic_k,
            semantic_threshold: m.semantic_threshold,
            access_flush_ms: m.access_flush_ms,
            access_buffer: m.access_buffer,
            consolidation: ConsolidationConfig {
                interval_sec: m.consolidation.interval_sec,
                batch_size: m.consolidation.batch_size,
                threshold: m.consolidation.threshold,
            },
            hot_capacity: m.hot_capacity,
            cold_after_sec: m.cold_after_sec,
            index_budget_mb: m.index_budget_mb,
        })
    }

    /// The HTTP limits.
    pub fn api_config(&self) -> Result<engram_api::ApiConfig> {
        let hosts = engram_api::HostPolicy::parse(&self.server.allowed_hosts, self.server.bind)
            .map_err(|e| anyhow::anyhow!("config key \"server.allowed_hosts\": {e}"))?;
        Ok(engram_api::ApiConfig {
            body_limit_bytes: self.server.body_limit_bytes,
            request_timeout: Duration::from_millis(self.server.request_timeout_ms),
            hosts,
            max_space_series: self.server.max_space_series,
        })
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }
}

/// `always`, `never` or a duration such as `10ms`.
fn parse_fsync(s: &str) -> Result<Durability> {
    match s {
        "always" => Ok(Durability::Always),
        "never" => Ok(Durability::None),
        other => {
            let d = humantime_like(other).with_context(|| {
                format!("config key \"wal.fsync\": {other:?} is not \"always\", \"never\" or an interval like \"10ms\"")
            })?;
            if d.is_zero() {
                bail!("config key \"wal.fsync\": the interval must be at least 1ms");
            }
            Ok(Durability::Interval(d))
        }
    }
}

/// `<n>ms` or `<n>s`.
fn humantime_like(s: &str) -> Option<Duration> {
    if let Some(n) = s.strip_suffix("ms") {
        return n.trim().parse().ok().map(Duration::from_millis);
    }
    if let Some(n) = s.strip_suffix('s') {
        return n.trim().parse().ok().map(Duration::from_secs);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_graph_defaults_and_validate() {
        let c = Config::default();
        c.validate().expect("defaults are valid");
        assert_eq!(c.graph_config().expect("converts"), GraphConfig::default());
    }

    #[test]
    fn every_key_is_known_and_nested_keys_are_found() {
        assert!(known_key("server.http_port"));
        assert!(known_key("memory.consolidation.threshold"));
        assert!(known_key("data_dir"));
        assert!(!known_key("server.nope"));
        assert!(!known_key("http_port"));
    }

    #[test]
    fn service_link_variables_are_recognised_exactly() {
        for (k, v) in [
            ("ENGRAM_SERVICE_HOST", "10.0.0.1"),
            ("ENGRAM_SERVICE_PORT", "7432"),
            ("ENGRAM_SERVICE_PORT_HTTP", "7432"),
            ("ENGRAM_PORT", "tcp://10.0.0.1:7432"),
            ("ENGRAM_PORT_7432_TCP", "tcp://10.0.0.1:7432"),
            ("ENGRAM_PORT_7432_TCP_ADDR", "10.0.0.1"),
            ("ENGRAM_PROD_SERVICE_HOST", "10.0.0.2"),
            ("ENGRAM_PROD_PORT_50051_TCP_PORT", "50051"),
        ] {
            assert!(service_link(k, v), "{k}");
        }
        for (k, v) in [
            ("ENGRAM_SERVER_HTTP_PORT", "8000"),
            ("ENGRAM_HTTP_PORT_NUMBER", "8000"),
            ("ENGRAM_PORT", "8000"),
            ("ENGRAM_NAME", "x"),
            ("ENGRAM_CACHE", "1"),
        ] {
            assert!(!service_link(k, v), "{k}");
        }
    }

    fn layers(env: &[(&str, &str)], file: Option<&str>) -> Layers {
        Layers {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            file: file.map(|text| {
                let table: toml::Table = toml::from_str(text).expect("test file is TOML");
                (PathBuf::from("/config/engram.toml"), table)
            }),
        }
    }

    #[test]
    fn a_flag_overriding_the_environment_or_file_is_named_with_both_values() {
        let flags = ServerOverrides {
            bind: None,
            http_port: Some(7432),
            grpc_port: None,
        };
        let w = layers(&[("ENGRAM_SERVER__HTTP_PORT", "8000")], None).conflicts(&flags);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "--http-port 7432 overrides ENGRAM_SERVER__HTTP_PORT=8000 (flags win over environment and file)"
            ),
            "{w:?}"
        );
        assert!(
            w[0].contains("`engram status`") && w[0].contains("port 8000"),
            "{w:?}"
        );

        // The same value in both places is no conflict; no flag, no warning.
        let same = layers(&[("ENGRAM_HTTP_PORT", " 7432")], None);
        assert!(same.conflicts(&flags).is_empty());
        let env = layers(&[("ENGRAM_HTTP_PORT", "8000")], None);
        assert!(env.conflicts(&ServerOverrides::default()).is_empty());

        // File and environment both overridden; the alias wins over the
        // nested form, as in `load`.
        let both = layers(
            &[
                ("ENGRAM_SERVER__GRPC_PORT", "50053"),
                ("ENGRAM_GRPC_PORT", "50054"),
            ],
            Some("[server]\nbind = \"0.0.0.0\"\ngrpc_port = 50052\n"),
        );
        let flags = ServerOverrides {
            bind: Some(IpAddr::from([127, 0, 0, 1])),
            http_port: Some(7432),
            grpc_port: Some(50051),
        };
        let w = both.conflicts(&flags);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].starts_with("--bind 127.0.0.1 overrides server.bind = ")
                && w[0].contains("0.0.0.0")
                && w[0].contains("in /config/engram.toml"),
            "{w:?}"
        );
        assert!(
            w[1].starts_with(
                "--grpc-port 50051 overrides ENGRAM_GRPC_PORT=50054 and server.grpc_port = 50052 in /config/engram.toml"
            ),
            "{w:?}"
        );
        assert!(!w[1].contains("engram status"), "{w:?}");
    }

    #[test]
    fn origins_follow_the_layer_order_and_the_environments_case() {
        let l = layers(
            &[
                ("engram_http_port", "8001"),
                ("ENGRAM_SERVER__HTTP_PORT", "8000"),
            ],
            Some("[server]\nhttp_port = 8002\n"),
        );
        let o: Vec<String> = l
            .origins(ListenKey::HttpPort)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            o,
            [
                "engram_http_port=8001",
                "server.http_port = 8002 in /config/engram.toml"
            ]
        );
        assert!(layers(&[], None).origins(ListenKey::Bind).is_empty());
        // The winning variable of each key is the alias `load` merges last.
        for key in [ListenKey::Bind, ListenKey::HttpPort, ListenKey::GrpcPort] {
            let [alias, nested] = key.env_vars();
            assert!(ALIASES.contains(&(alias, key.key())), "{alias}");
            let lowered = nested["ENGRAM_".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            assert_eq!(lowered, key.key());
        }
    }

    #[test]
    fn unknown_variables_suggest_the_key_and_say_when_a_flag_wins() {
        let s = suggestion("ENGRAM_SERVER_HTTP_PORT");
        assert!(s.contains("did you mean ENGRAM_SERVER__HTTP_PORT?"), "{s}");
        assert!(
            s.contains("--http-port") && s.contains("wins over it"),
            "{s}"
        );
        let s = suggestion("ENGRAM_STORAGE_CACHE_SIZE_MB");
        assert_eq!(s, "; did you mean ENGRAM_STORAGE__CACHE_SIZE_MB?");
        let s = suggestion("ENGRAM_HTTPPORT");
        assert!(s.contains("did you mean ENGRAM_HTTP_PORT?"), "{s}");
        assert_eq!(suggestion("ENGRAM_NOPE"), "");
        // A section is not a suggestion.
        assert_eq!(suggestion("ENGRAM_SER_VER"), "");
    }

    #[test]
    fn fsync_values_parse_and_reject_nonsense() {
        assert_eq!(parse_fsync("always").ok(), Some(Durability::Always));
        assert_eq!(parse_fsync("never").ok(), Some(Durability::None));
        assert_eq!(
            parse_fsync("10ms").ok(),
            Some(Durability::Interval(Duration::from_millis(10)))
        );
        assert!(parse_fsync("0ms").is_err());
        assert!(parse_fsync("sometimes").is_err());
    }
}

#[cfg(test)]
mod default_file {
    use super::*;

    /// `config/default.toml` documents exactly the built-in defaults, and
    /// every key: a new key without documentation fails here.
    #[test]
    fn the_documented_defaults_are_the_built_in_ones() {
        // At run time: a test binary reused from another checkout sharing
        // the target directory must still read this checkout's file.
        let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).to_owned(),
            Into::into,
        );
        let path = manifest.join("../config/default.toml");
        let text = std::fs::read_to_string(&path).expect("config/default.toml");
        let parsed: Config = toml::from_str(&text).expect("parses with deny_unknown_fields");
        assert_eq!(parsed, Config::default());
        let table: toml::Table = toml::from_str(&text).expect("toml");
        let full = toml::Value::try_from(Config::default()).expect("serialises");
        fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let p = format!("{prefix}{k}");
                    keys(&format!("{p}."), v, out);
                    out.push(p);
                }
            }
        }
        let (mut documented, mut all) = (Vec::new(), Vec::new());
        keys("", &toml::Value::Table(table), &mut documented);
        keys("", &full, &mut all);
        documented.sort();
        all.sort();
        assert_eq!(documented, all, "config/default.toml must list every key");
    }
}
