//! The public configuration, request and answer types of the memory graph
//! (settings, limits, errors, what remember and recall take and return,
//! statistics and reports), with their defaults and validation.

use super::*;
use crate::EngineConfig;

/// Input limits. Exceeding one is a typed error naming the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Content bytes (default 64 KiB).
    pub max_content_bytes: usize,
    /// Metadata bytes as JSON text (default 16 KiB).
    pub max_metadata_bytes: usize,
    /// Tags per memory (default 32).
    pub max_tags: usize,
    /// Bytes per tag (default 128).
    pub max_tag_bytes: usize,
    /// Embedding dimension (default 4096).
    pub max_embedding_dim: usize,
    /// Results per recall (default 1000).
    pub max_recall_limit: usize,
    /// Edges a memory may have, both directions together (default 100 000).
    /// An explicit link (`link`, remember's `links`) beyond it is refused
    /// with [`GraphError::TooManyEdges`]; write-time semantic edges skip a
    /// neighbour at the limit. Temporal edges (one to and one from each
    /// episode of a session) and consolidation edges (one per member; a
    /// concept gets at most `consolidation.batch_size`) are never refused,
    /// so a memory can exceed it by those few. Forget works at any degree.
    pub max_edges_per_memory: usize,
    /// Links in one remember request (default 100).
    pub max_links: usize,
    /// Bytes of a session id (default 256).
    pub max_session_bytes: usize,
    /// Largest hot-cache capacity a space may ask for (default 1 000 000
    /// records; the configured `hot_capacity` must not exceed it either).
    pub max_hot_capacity: usize,
    /// Spaces on a node, `default` included (default 10 000); creating one
    /// more is refused with [`GraphError::TooManySpaces`].
    pub max_spaces: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_bytes: 64 * 1024,
            max_metadata_bytes: 16 * 1024,
            max_tags: 32,
            max_tag_bytes: 128,
            max_embedding_dim: 4096,
            max_recall_limit: 1000,
            max_edges_per_memory: 100_000,
            max_links: 100,
            max_session_bytes: 256,
            max_hot_capacity: 1_000_000,
            max_spaces: 10_000,
        }
    }
}

/// Settings of the memory graph.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    /// Storage engine settings.
    pub engine: EngineConfig,
    /// Input limits.
    pub limits: Limits,
    /// Confidence of a memory remembered without one (default 0.7).
    pub default_confidence: f32,
    /// Spaces created at start if missing (besides `default`).
    pub bootstrap_spaces: Vec<String>,
    /// Whether `default` and `bootstrap_spaces` are created at open
    /// (standalone: yes; in a cluster the metadata group creates them).
    pub create_default_spaces: bool,
    /// Stability of the forgetting curve in days (default 7): a memory keeps
    /// half its confidence after 27 × stability days.
    pub stability_days: f64,
    /// Weight of the temporal edge between consecutive episodes of a session (default 0.7).
    pub temporal_weight: f32,
    /// Vector index parameters (HNSW).
    pub ann: HnswParams,
    /// Spaces with at most this many embeddings are searched exhaustively
    /// (int8 scan, exact re-rank; default 200 000): on two cores this is
    /// faster than the HNSW walk at equal recall up to about that size.
    pub exact_search_below: usize,
    /// Semantic edges made at write time to at most this many nearest
    /// neighbours (default 5; 0 disables them).
    pub semantic_k: usize,
    /// Cosine similarity a neighbour needs for a semantic edge (default 0.8).
    pub semantic_threshold: f32,
    /// Access statistics recorded by recall are written every this many
    /// milliseconds by the background task (default 1000).
    pub access_flush_ms: u64,
    /// Pending access updates held at most (default 65536); beyond it new
    /// ones are dropped and counted (statistics, never data).
    pub access_buffer: usize,
    /// Consolidation settings.
    pub consolidation: ConsolidationConfig,
    /// Decoded records of the most recently used memories cached per space
    /// (the hot tier), unless the space sets its own (default 10,000).
    pub hot_capacity: usize,
    /// Memories neither stored nor recalled for this many seconds move to
    /// the zstd-compressed cold column family (default 30 days; 0 = never).
    pub cold_after_sec: u64,
    /// Estimated memory the loaded spaces' indexes (memory table, lexical
    /// postings, adjacency, vectors, tag sets, hot records) may use, in MiB
    /// (default 1024; 0 = unlimited). Beyond it the background task unloads
    /// the least recently used idle spaces (their index snapshot written)
    /// and they load again on their next use; the most recently used space
    /// stays even when it alone is larger. Listing spaces, readiness and
    /// metrics never load a space.
    pub index_budget_mb: u64,
}

/// Options of a new space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpaceOptions {
    /// Embedding dimension (none: the space refuses embeddings).
    pub embedding_dim: Option<u32>,
    /// Hot-tier capacity in memories (none: the configured default).
    pub hot_capacity: Option<u32>,
}

/// Background consolidation.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsolidationConfig {
    /// Seconds between background runs (default 300; 0 disables them).
    pub interval_sec: u64,
    /// Episodes examined per space and run at most (default 256).
    pub batch_size: usize,
    /// Similarity a cluster needs in background runs (default 0.8).
    pub threshold: f32,
}

impl Default for ConsolidationConfig {
    fn default() -> Self {
        Self {
            interval_sec: 300,
            batch_size: 256,
            threshold: 0.8,
        }
    }
}

impl GraphConfig {
    /// Checks every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), GraphError> {
        if !(0.0..=1.0).contains(&self.default_confidence) {
            return Err(invalid("default_confidence", "must be within [0, 1]"));
        }
        if !(self.temporal_weight > 0.0 && self.temporal_weight <= 1.0) {
            return Err(invalid("temporal_weight", "must be within (0, 1]"));
        }
        if self.stability_days.is_nan() || self.stability_days <= 0.0 {
            return Err(invalid("stability_days", "must be positive"));
        }
        if !(self.semantic_threshold > 0.0 && self.semantic_threshold <= 1.0) {
            return Err(invalid("semantic_threshold", "must be within (0, 1]"));
        }
        let c = &self.consolidation;
        if !(c.threshold > 0.0 && c.threshold <= 1.0) {
            return Err(invalid("consolidation.threshold", "must be within (0, 1]"));
        }
        if c.batch_size == 0 {
            return Err(invalid("consolidation.batch_size", "must be at least 1"));
        }
        if self.limits.max_edges_per_memory == 0 {
            return Err(invalid("limits.max_edges_per_memory", "must be at least 1"));
        }
        if self.limits.max_session_bytes == 0 {
            return Err(invalid("limits.max_session_bytes", "must be at least 1"));
        }
        if self.limits.max_spaces == 0 {
            return Err(invalid("limits.max_spaces", "must be at least 1"));
        }
        if self.hot_capacity > self.limits.max_hot_capacity {
            return Err(invalid(
                "hot_capacity",
                format!(
                    "{} exceeds limits.max_hot_capacity ({})",
                    self.hot_capacity, self.limits.max_hot_capacity
                ),
            ));
        }
        if self.access_flush_ms == 0 {
            return Err(invalid("access_flush_ms", "must be at least 1"));
        }
        if self.ann.m < 2 || self.ann.ef_construction == 0 || self.ann.ef_search == 0 {
            return Err(invalid(
                "ann",
                "m must be at least 2 and ef_construction, ef_search at least 1",
            ));
        }
        for name in &self.bootstrap_spaces {
            if !valid_space_name(name) {
                return Err(GraphError::InvalidSpaceName(name.clone()));
            }
        }
        self.engine
            .wal
            .validate()
            .map_err(|e| invalid("engine.wal", e.to_string()))?;
        self.engine
            .store
            .validate()
            .map_err(|e| invalid("engine.store", e.to_string()))?;
        Ok(())
    }
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            limits: Limits::default(),
            default_confidence: 0.7,
            bootstrap_spaces: Vec::new(),
            create_default_spaces: true,
            stability_days: 7.0,
            temporal_weight: 0.7,
            ann: HnswParams::default(),
            exact_search_below: 200_000,
            semantic_k: 5,
            semantic_threshold: 0.8,
            access_flush_ms: 1000,
            access_buffer: 65_536,
            consolidation: ConsolidationConfig::default(),
            hot_capacity: 10_000,
            cold_after_sec: 30 * 86_400,
            index_budget_mb: 1024,
        }
    }
}

/// Errors of the memory graph; each maps to one stable API error code.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// Space names are `[a-z0-9][a-z0-9_-]{0,62}`.
    #[error(
        "invalid space name {0:?}: use 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit"
    )]
    InvalidSpaceName(String),
    /// The space exists already.
    #[error("space {0:?} already exists")]
    SpaceExists(String),
    /// No such space.
    #[error(
        "space {0:?} does not exist; create it first: HTTP POST /api/v1/spaces with the body {{\"id\": {0:?}}} (gRPC: CreateSpace)"
    )]
    SpaceNotFound(String),
    /// The default space cannot be deleted.
    #[error("the default space cannot be deleted")]
    DefaultSpace,
    /// No such memory in this space.
    #[error("memory {0} does not exist in this space")]
    MemoryNotFound(String),
    /// Not a ULID.
    #[error("invalid memory id {0:?}: expected a 26-character ULID")]
    InvalidId(String),
    /// Some input is out of range or too large; `field` names it.
    #[error("invalid {field}: {message}")]
    Invalid {
        /// The offending field.
        field: &'static str,
        /// What is wrong, with the limit when there is one.
        message: String,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] EngineError),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The server is shutting down and accepts no more writes.
    #[error(
        "the server is shutting down and accepts no more writes; retry on another node or after the restart"
    )]
    ShuttingDown,
    /// A link would give a memory more edges than `max_edges_per_memory`.
    #[error(
        "memory {memory} already has {limit} edges, the most allowed (limits.max_edges_per_memory); link it to fewer memories or raise the limit"
    )]
    TooManyEdges {
        /// The memory at the limit.
        memory: String,
        /// The configured limit.
        limit: usize,
    },
    /// The node holds `limits.max_spaces` spaces already.
    #[error(
        "this node holds {limit} spaces, the most allowed (limits.max_spaces); delete unused spaces or raise the limit"
    )]
    TooManySpaces {
        /// The configured limit.
        limit: usize,
    },
    /// The space's data could not be loaded (corrupt, or a storage error):
    /// requests to it fail at once while the other spaces serve.
    #[error(
        "space {space:?} could not be loaded and is unavailable: {reason}; the other spaces serve normally; see docs/operations/troubleshooting.md, \"A space is unavailable\""
    )]
    SpaceUnavailable {
        /// The space.
        space: String,
        /// The load's error, and when the space is loaded again.
        reason: String,
    },
    /// This node holds a copy of the space but may not originate writes to
    /// it: another node is its primary (cluster mode).
    #[error(
        "this node is not the primary of space {space:?}{}; send the write to the primary (a cluster node forwards it there)",
        primary.as_deref().map(|p| format!(" (the primary is {p})")).unwrap_or_default()
    )]
    NotPrimary {
        /// The space.
        space: String,
        /// Its primary, when known.
        primary: Option<String>,
    },
}

impl From<engram_lsm::StoreError> for GraphError {
    fn from(e: engram_lsm::StoreError) -> Self {
        GraphError::Storage(EngineError::Store(e))
    }
}

pub(super) fn invalid(field: &'static str, message: impl Into<String>) -> GraphError {
    GraphError::Invalid {
        field,
        message: message.into(),
    }
}

/// A link requested at remember time or by `link`.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkSpec {
    /// Target memory id (ULID).
    pub target: String,
    /// Weight in (0, 1] (default 0.9).
    pub weight: Option<f32>,
}

/// What to remember.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RememberRequest {
    /// UTF-8 text, non-empty.
    pub content: String,
    /// Confidence in [0, 1]; the configured default when absent.
    pub confidence: Option<f32>,
    /// Embedding of the space's dimension.
    pub embedding: Option<Vec<f32>>,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata object.
    pub metadata: Map<String, Value>,
    /// When it happened (ms since the epoch); now when absent.
    pub occurred_at_ms: Option<i64>,
    /// Stream id: consecutive episodes of a session are linked by temporal edges.
    pub session: Option<String>,
    /// Explicit links to existing memories of the same space.
    pub links: Vec<LinkSpec>,
    /// Return the existing memory instead of storing the same memory twice:
    /// one with the same content, session, tags (in any order) and
    /// metadata, and, when `occurred_at_ms` is given, the same time (a
    /// retry of the same request). Nothing else is compared; nothing of the
    /// existing memory changes.
    pub dedupe: bool,
}

impl Remembered {
    /// The answer for a newly written episode.
    pub(super) fn new(
        space: &Space,
        id: &EpisodeId,
        sequence: u64,
        confidence: f32,
        stored_at_ms: i64,
        occurred_at_ms: i64,
    ) -> Self {
        Remembered {
            id: id_string(id),
            space: space.record.name.clone(),
            sequence,
            confidence,
            stored_at_ms,
            occurred_at_ms,
            deduplicated: false,
        }
    }
}

/// Outcome of remember.
#[derive(Debug, Clone, PartialEq)]
pub struct Remembered {
    /// Memory id (ULID).
    pub id: String,
    /// Space name.
    pub space: String,
    /// Per-space sequence number of the write (of the existing memory's
    /// write is not known after dedupe: then 0).
    pub sequence: u64,
    /// Stored confidence.
    pub confidence: f32,
    /// Storage time, ms since the epoch (of the existing memory after a
    /// dedupe).
    pub stored_at_ms: i64,
    /// When it happened, ms since the epoch (of the existing memory after a
    /// dedupe).
    pub occurred_at_ms: i64,
    /// `true` when `dedupe` found the same memory (see
    /// [`RememberRequest::dedupe`]) and nothing was written: `id` is that
    /// memory's.
    pub deduplicated: bool,
}

/// A memory as returned to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    /// ULID.
    pub id: String,
    /// Space name.
    pub space: String,
    /// Content.
    pub content: String,
    /// Stored confidence.
    pub confidence: f32,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata.
    pub metadata: Map<String, Value>,
    /// Session.
    pub session: Option<String>,
    /// When it happened.
    pub occurred_at_ms: i64,
    /// When it was stored.
    pub stored_at_ms: i64,
    /// Embedding, when asked for and present.
    pub embedding: Option<Vec<f32>>,
    /// Times returned by recall (as last written by the access flusher).
    pub access_count: u32,
    /// Last time returned by recall, ms since the epoch.
    pub last_access_ms: Option<i64>,
    /// `true` for a concept made by consolidation.
    pub concept: bool,
}

/// What to recall by.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cue {
    /// Text matched lexically (BM25).
    pub text: Option<String>,
    /// Embedding matched by cosine similarity.
    pub embedding: Option<Vec<f32>>,
    /// Every one of these tags must be present.
    pub tags: Vec<String>,
    /// Earliest `occurred_at` (inclusive).
    pub from_ms: Option<i64>,
    /// Latest `occurred_at` (inclusive).
    pub to_ms: Option<i64>,
    /// Minimum confidence after forgetting-curve decay.
    pub min_confidence: Option<f32>,
    /// Return concepts made by consolidation too (by default only episodes
    /// are returned; spreading passes through concepts either way).
    pub include_concepts: bool,
}

/// How a result was reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Via {
    /// Seed from the lexical index.
    Lexical,
    /// Seed from vector similarity.
    Vector,
    /// Seed of a cue with filters only (no text, no embedding): a memory
    /// matching every filter, ranked by recency.
    Filter,
    /// Reached by spreading activation along this path of ids (seed first).
    Edge {
        /// Ids from the seed to the result.
        path: Vec<String>,
    },
}

/// One recall result.
#[derive(Debug, Clone, PartialEq)]
pub struct Recalled {
    /// The memory.
    pub memory: Memory,
    /// Final score.
    pub score: f32,
    /// Activation (seed strength, or what spreading delivered).
    pub activation: f32,
    /// Confidence after forgetting-curve decay.
    pub confidence: f32,
    /// Why it was returned.
    pub via: Via,
}

/// Space statistics. Reading them never loads a space: for one whose
/// indexes are not in memory they come from its recorded figures (see
/// [`GraphConfig::index_budget_mb`]), and what only memory knows (`hot`,
/// `unlinked_vectors`, `vector_tombstones`) is 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpaceStats {
    /// Name.
    pub name: String,
    /// Memories.
    pub memories: usize,
    /// Embedding dimension.
    pub embedding_dim: Option<u32>,
    /// Edges.
    pub edges: usize,
    /// Distinct lexical terms.
    pub terms: usize,
    /// Memories whose records are cached in memory (hot tier).
    pub hot: usize,
    /// Hot-tier capacity.
    pub hot_capacity: usize,
    /// Memories archived in the cold tier (the rest are warm).
    pub cold: usize,
    /// Vectors waiting to be linked into the HNSW graph (searches scan
    /// until this is 0).
    pub unlinked_vectors: usize,
    /// Removed vectors whose memory the HNSW graph has not reclaimed yet
    /// (the background index task relinks around them, then reuses them).
    pub vector_tombstones: usize,
}

/// What [`Graph::save_index_snapshots`] wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnapshotReport {
    /// Spaces whose indexes were written.
    pub spaces: usize,
    /// Their memories.
    pub memories: usize,
    /// Bytes written.
    pub bytes: u64,
    /// Spaces that failed (logged); they are rebuilt at the next start.
    pub failed: usize,
}
