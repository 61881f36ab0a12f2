//! The memory model: spaces, remember / get / forget / link, and recall.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engram_lsm::{Cf, EpisodeId, Mutation, SpaceId, keys};
use serde_json::{Map, Value};

use crate::access::AccessBatch;
use crate::activation::{self, Spread};
use crate::adjacency::Adjacency;
use crate::background::{Failures, Fit, RecordBudget, Task, encoded_len};
use crate::hnsw::{Hnsw, HnswParams};
use crate::ids::{IdMap, IdSet};
use crate::record::{self, AccessRecord, EdgeKind, EdgeRecord, EpisodeRecord, SpaceRecord};
use crate::snapshot::{self, Reader, SnapshotError, Writer};
use crate::table::Table;
use crate::text::{self, LexicalIndex};
use crate::{Engine, EngineConfig, EngineError, OpenOptions, RecoveryReport};

mod consolidate;
mod remember;
mod residency;
mod spaces;

use residency::{Figures, Resident, Use};

pub use consolidate::ConsolidationReport;
pub use remember::{Begun, PendingRemember, QuickBegin, QuickFinish};
pub use spaces::{DamagedSpace, WarmUpReport};

/// WAL operation kinds written by the graph.
pub mod kind {
    /// Space creation.
    pub const CREATE_SPACE: u8 = 1;
    /// Space deletion.
    pub const DROP_SPACE: u8 = 2;
    /// Remember.
    pub const REMEMBER: u8 = 3;
    /// Forget.
    pub const FORGET: u8 = 4;
    /// Link.
    pub const LINK: u8 = 5;
    /// A batch of access statistics.
    pub const ACCESS: u8 = 6;
    /// A concept made by consolidation.
    pub const CONSOLIDATE: u8 = 7;
    /// Idle memories moved to the cold tier.
    pub const ARCHIVE: u8 = 8;
}

/// Name of the space that always exists.
pub const DEFAULT_SPACE: &str = "default";

/// Weight of an explicit link when none is given.
pub const DEFAULT_LINK_WEIGHT: f32 = 0.9;

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
}

impl From<engram_lsm::StoreError> for GraphError {
    fn from(e: engram_lsm::StoreError) -> Self {
        GraphError::Storage(EngineError::Store(e))
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> GraphError {
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
    fn new(
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
#[derive(Debug, Clone, PartialEq)]
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

/// What recall needs of every memory without reading its record: 40 bytes.
#[derive(Debug, Clone, Default)]
struct EpisodeMeta {
    occurred_at_ms: i64,
    stored_at_ms: i64,
    last_access_ms: i64,
    confidence: f32,
    access_count: u32,
    /// Interned tag set ([`TagSets`]).
    tags: u32,
    /// Made by consolidation.
    concept: bool,
    /// Has a consolidation edge to a concept.
    consolidated: bool,
    /// The record is in the cold column family.
    cold: bool,
}

impl EpisodeMeta {
    fn access(&self) -> AccessRecord {
        AccessRecord {
            count: self.access_count,
            last_ms: self.last_access_ms,
        }
    }

    fn set_access(&mut self, r: AccessRecord) {
        self.access_count = r.count;
        self.last_access_ms = r.last_ms;
    }

    /// Confidence after the forgetting curve at `now`: the clock restarts at
    /// the last access, and stability grows with the number of accesses.
    fn decayed(&self, now: i64, stability_days: f64) -> f32 {
        let since = self.stored_at_ms.max(self.last_access_ms);
        let age = (now - since).max(0) as f64 / 86_400_000.0;
        let stability = stability_days * (1.0 + f64::from(self.access_count).ln_1p());
        (f64::from(self.confidence) * activation::retention(age, stability)) as f32
    }
}

/// The distinct tag sets of a space, interned and counted: memories refer to
/// theirs by number (0 is the empty set). A set lives while a memory uses
/// it: the last one forgotten removes it (its strings leave memory and the
/// next index snapshot), and its number is reused by the next new set, so
/// churn of unique tags never grows it beyond the most sets in use at once.
#[derive(Debug, Default)]
struct TagSets {
    /// Set `i` at `i - 1` with the number of memories using it; a free
    /// number holds an empty set and 0.
    sets: Vec<(Box<[String]>, u32)>,
    index: HashMap<Box<[String]>, u32>,
    /// Free numbers, reused first.
    free: Vec<u32>,
}

impl TagSets {
    /// The number of `tags`, counting one more memory that uses it (pair
    /// with [`TagSets::release`] when that memory goes).
    fn intern(&mut self, tags: &[String]) -> u32 {
        if tags.is_empty() {
            return 0;
        }
        if let Some(&i) = self.index.get(tags) {
            if let Some(entry) = self.sets.get_mut(i as usize - 1) {
                entry.1 += 1;
            }
            return i;
        }
        let set: Box<[String]> = tags.into();
        let reused = self.free.pop().and_then(|i| {
            let entry = self.sets.get_mut(i as usize - 1)?;
            *entry = (set.clone(), 1);
            Some(i)
        });
        let i = match reused {
            Some(i) => i,
            None => {
                self.sets.push((set.clone(), 1));
                self.sets.len() as u32
            }
        };
        self.index.insert(set, i);
        i
    }

    /// One memory fewer uses set `i`; after the last one it is removed.
    fn release(&mut self, i: u32) {
        let Some(entry) = (i as usize)
            .checked_sub(1)
            .and_then(|k| self.sets.get_mut(k))
        else {
            return;
        };
        if entry.1 == 0 {
            return;
        }
        entry.1 -= 1;
        if entry.1 == 0 {
            let set = std::mem::take(&mut entry.0);
            self.index.remove(&set);
            self.free.push(i);
        }
    }

    fn get(&self, i: u32) -> &[String] {
        match i {
            0 => &[],
            i => self.sets.get(i as usize - 1).map_or(&[], |s| &s.0[..]),
        }
    }

    /// Sets in use.
    fn len(&self) -> usize {
        self.index.len()
    }

    /// Counts the memories using each set (`tags` of every memory) after a
    /// snapshot was read, and frees the sets none uses; `false` when a
    /// memory refers to a free or missing set.
    fn recount(&mut self, tags: impl Iterator<Item = u32>) -> bool {
        for e in &mut self.sets {
            e.1 = 0;
        }
        for i in tags.filter(|i| *i != 0) {
            match self.sets.get_mut(i as usize - 1) {
                Some(e) if !e.0.is_empty() => e.1 += 1,
                _ => return false,
            }
        }
        self.free.clear();
        for (k, e) in self.sets.iter_mut().enumerate() {
            if e.1 == 0 {
                let set = std::mem::take(&mut e.0);
                self.index.remove(&set);
                self.free.push(k as u32 + 1);
            }
        }
        true
    }
}

#[derive(Debug, Default)]
struct SpaceState {
    tagsets: TagSets,
    /// Memories by dense slot; the lexical index and the adjacency refer to
    /// them by slot.
    episodes: Table<EpisodeMeta>,
    lexical: LexicalIndex,
    ann: Option<Hnsw>,
    edges: Adjacency,
    sessions: HashMap<String, EpisodeId>,
    /// Session episodes whose records are being written (prepared, not yet
    /// in `episodes`), each with the edges to it that arrived first: the
    /// next episode of a session can finish before its predecessor does,
    /// and its temporal edge then waits here instead of being dropped.
    unfinished: IdMap<Vec<(EpisodeId, EpisodeId, EdgeRecord)>>,
    /// Memories in the cold tier.
    cold: usize,
    /// Lexical postings (for the estimate of the indexes' size).
    postings: usize,
}

impl SpaceState {
    fn new(dim: Option<u32>, params: HnswParams, graph_from: usize) -> Self {
        SpaceState {
            ann: dim.map(|d| Hnsw::with_graph_from(d as usize, params, graph_from)),
            ..SpaceState::default()
        }
    }

    /// Adds an edge between two memories (a consolidation edge marks its
    /// source consolidated); `false` (nothing added) when either is not in
    /// the space.
    fn add_edge(&mut self, from: EpisodeId, to: EpisodeId, e: EdgeRecord) -> bool {
        let (Some(f), Some(t)) = (self.episodes.slot(&from), self.episodes.slot(&to)) else {
            return false;
        };
        self.edges.add(f, t, e);
        if e.kind == EdgeKind::Consolidation {
            if let Some(m) = self.episodes.get_mut(&from) {
                m.consolidated = true;
            }
        }
        true
    }

    fn outgoing(&self, id: &EpisodeId) -> Vec<(EpisodeId, EdgeRecord)> {
        self.episodes.slot(id).map_or_else(Vec::new, |s| {
            self.edges
                .outgoing(s)
                .iter()
                .map(|(t, e)| (*self.episodes.id(*t), *e))
                .collect()
        })
    }

    fn incoming(&self, id: &EpisodeId) -> Vec<EpisodeId> {
        self.episodes.slot(id).map_or_else(Vec::new, |s| {
            self.edges
                .incoming(s)
                .iter()
                .map(|(f, _)| *self.episodes.id(*f))
                .collect()
        })
    }

    /// Both-direction neighbours of a memory with edge weights.
    fn neighbours<'a>(
        &'a self,
        id: &EpisodeId,
    ) -> impl Iterator<Item = (&'a EpisodeId, f32)> + use<'a> {
        let slot = self.episodes.slot(id);
        slot.into_iter()
            .flat_map(|s| self.edges.neighbours(s))
            .map(|(s, w)| (self.episodes.id(s), w))
    }

    /// The `limit` best BM25 matches accepted by `keep`, best first, ties by id.
    fn lexical_search(
        &self,
        query: &str,
        limit: usize,
        keep: impl Fn(&EpisodeId) -> bool,
    ) -> Vec<(EpisodeId, f64)> {
        self.lexical_search_slots(query, limit, |s| keep(self.episodes.id(s)))
    }

    /// [`SpaceState::lexical_search`] with `keep` on slots (no id lookup
    /// per match).
    fn lexical_search_slots(
        &self,
        query: &str,
        limit: usize,
        keep: impl Fn(u32) -> bool,
    ) -> Vec<(EpisodeId, f64)> {
        // Cut by score on slots first (common terms match a large part of
        // the space); everything tied with the cut stays, so the final order
        // by id among equal scores is unaffected.
        let hits = self
            .lexical
            .search_top(query, limit, keep)
            .into_iter()
            .map(|(s, v)| (*self.episodes.id(s), v))
            .collect();
        crate::rank::top_k(hits, limit)
    }

    fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Edges of a memory, both directions (0 when it is not in the space).
    fn degree(&self, id: &EpisodeId) -> usize {
        self.episodes.slot(id).map_or(0, |s| {
            self.edges.outgoing(s).len() + self.edges.incoming(s).len()
        })
    }

    /// `true` if the edge `from → to` exists.
    fn has_edge(&self, from: &EpisodeId, to: &EpisodeId) -> bool {
        match (self.episodes.slot(from), self.episodes.slot(to)) {
            (Some(f), Some(t)) => self.edges.outgoing(f).iter().any(|(x, _)| *x == t),
            _ => false,
        }
    }

    /// Writes everything but the vector index to a snapshot.
    fn write_to(&self, w: &mut Writer) -> std::io::Result<()> {
        // Every number, a free one as an empty set: memories keep their
        // numbers, and a removed set's tags are never written. (Readers
        // from before sets were removed refuse an empty set: they rebuild.)
        w.len(self.tagsets.sets.len())?;
        for (set, _) in &self.tagsets.sets {
            w.len(set.len())?;
            for t in set.iter() {
                w.str(t)?;
            }
        }
        self.episodes.write_to(w, |w, m| {
            w.i64(m.occurred_at_ms)?;
            w.i64(m.stored_at_ms)?;
            w.i64(m.last_access_ms)?;
            w.f32(m.confidence)?;
            w.u32(m.access_count)?;
            w.u32(m.tags)?;
            w.u8(u8::from(m.concept) | u8::from(m.consolidated) << 1 | u8::from(m.cold) << 2)
        })?;
        self.lexical.write_to(w)?;
        self.edges.write_to(w)?;
        w.len(self.sessions.len())?;
        for (session, id) in &self.sessions {
            w.str(session)?;
            w.id(id)?;
        }
        Ok(())
    }

    /// Reads what [`SpaceState::write_to`] wrote; the vector index (if the
    /// space has a dimension) starts empty.
    fn read_from(
        r: &mut Reader<'_>,
        dim: Option<u32>,
        params: HnswParams,
    ) -> Result<SpaceState, SnapshotError> {
        let mut st = SpaceState::new(dim, params, usize::MAX);
        let sets = r.len(u32::MAX as usize)?;
        for _ in 0..sets {
            let n = r.len(usize::MAX)?;
            let set = (0..n)
                .map(|_| r.string())
                .collect::<Result<Box<[String]>, _>>()?;
            let i = st.tagsets.sets.len() as u32 + 1;
            // An empty set is a free number.
            if !set.is_empty() && st.tagsets.index.insert(set.clone(), i).is_some() {
                return Err(snapshot::invalid("tag sets"));
            }
            st.tagsets.sets.push((set, 0));
        }
        st.episodes = Table::read_from(r, |r| {
            let m = EpisodeMeta {
                occurred_at_ms: r.i64()?,
                stored_at_ms: r.i64()?,
                last_access_ms: r.i64()?,
                confidence: r.f32()?,
                access_count: r.u32()?,
                tags: r.u32()?,
                concept: false,
                consolidated: false,
                cold: false,
            };
            if m.tags as usize > sets {
                return Err(snapshot::invalid("tag set number"));
            }
            let flags = r.u8()?;
            if flags > 0b111 {
                return Err(snapshot::invalid("memory flags"));
            }
            Ok(EpisodeMeta {
                concept: flags & 1 != 0,
                consolidated: flags & 2 != 0,
                cold: flags & 4 != 0,
                ..m
            })
        })?;
        if !st.tagsets.recount(st.episodes.iter().map(|(_, m)| m.tags)) {
            return Err(snapshot::invalid("tag set number"));
        }
        let slots = st.episodes.slots();
        let live = |s: u32| st.episodes.is_live(s);
        st.lexical = LexicalIndex::read_from(r, slots, live)?;
        st.edges = Adjacency::read_from(r, slots, live)?;
        let n = r.len(usize::MAX)?;
        for _ in 0..n {
            let session = r.string()?;
            let id = r.id()?;
            // A session whose last write failed may name a memory that was
            // never stored: it links to nothing either way.
            if st.episodes.contains_key(&id) {
                st.sessions.insert(session, id);
            }
        }
        st.cold = st.episodes.iter().filter(|(_, m)| m.cold).count();
        let postings = std::cell::Cell::new(0usize);
        st.lexical.all_postings(|_| {
            postings.set(postings.get() + 1);
            true
        });
        st.postings = postings.get();
        Ok(st)
    }
}

/// Counts writes in flight so a shutdown can stop new ones and wait for the
/// rest before it snapshots the indexes (a write changes the store and then
/// the in-memory state; a snapshot must see neither half alone).
#[derive(Debug, Default)]
struct WriteGate {
    sealed: AtomicBool,
    inflight: Arc<AtomicUsize>,
}

/// One write in flight (see [`WriteGate`]); owned, so a write can span
/// threads (see [`PendingRemember`]).
struct Writing(Arc<AtomicUsize>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WriteGate {
    fn enter(&self) -> Result<Writing, GraphError> {
        // Count first, then look: with `seal` storing then counting (both
        // SeqCst), either this write sees the seal or the seal sees it.
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let w = Writing(Arc::clone(&self.inflight));
        if self.sealed.load(Ordering::SeqCst) {
            return Err(GraphError::ShuttingDown);
        }
        Ok(w)
    }

    fn quiescent(&self) -> bool {
        self.sealed.load(Ordering::SeqCst) && self.inflight.load(Ordering::SeqCst) == 0
    }
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

#[derive(Debug)]
struct Space {
    id: SpaceId,
    record: SpaceRecord,
    /// Indexes and adjacency while they are in memory: loaded on use (so a
    /// restart is ready as soon as the engine has recovered), unloaded when
    /// idle beyond the index memory budget (see the `residency` module).
    state: RwLock<Option<Arc<Resident>>>,
    /// Serialises loading and unloading.
    loading: Mutex<()>,
    /// One consolidation run per space at a time.
    consolidating: Mutex<()>,
    /// `false` once deleted; writers hold it shared while they submit.
    alive: RwLock<bool>,
    /// Hot tier: decoded records of recently used memories.
    hot: Mutex<crate::hot::HotCache>,
    /// Orders forget against moves between the warm and cold families, so a
    /// move can never re-create a forgotten record.
    tiering: Mutex<()>,
    /// Why its data could not be loaded, while requests to it are refused
    /// (see the `spaces` module); `None` for a space that serves.
    damaged: Mutex<Option<spaces::Damage>>,
    /// Its figures as last known while it is not in memory.
    figures: Mutex<Option<Figures>>,
    /// Logged once: its indexes alone exceed the budget.
    oversized: AtomicBool,
    /// Its in-memory indexes may lack a record that is in the store (a
    /// remember dropped between its append and its finish): they are never
    /// written to a snapshot; the next load from the store clears it.
    inexact: AtomicBool,
}

impl Space {
    fn new(
        id: SpaceId,
        record: SpaceRecord,
        state: Option<Arc<Resident>>,
        default_hot: usize,
    ) -> Space {
        let hot = record.hot_capacity.map_or(default_hot, |c| c as usize);
        Space {
            id,
            record,
            state: RwLock::new(state),
            loading: Mutex::new(()),
            consolidating: Mutex::new(()),
            alive: RwLock::new(true),
            hot: Mutex::new(crate::hot::HotCache::new(hot)),
            tiering: Mutex::new(()),
            damaged: Mutex::new(None),
            figures: Mutex::new(None),
            oversized: AtomicBool::new(false),
            inexact: AtomicBool::new(false),
        }
    }
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The guard if `l` can be read-locked at once (a poisoned lock is taken
/// as it is, as [`read`] does).
fn try_read<T>(l: &RwLock<T>) -> Option<RwLockReadGuard<'_, T>> {
    match l.try_read() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(PoisonError::into_inner(p)),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The guard if `l` can be write-locked at once.
fn try_write<T>(l: &RwLock<T>) -> Option<RwLockWriteGuard<'_, T>> {
    match l.try_write() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(PoisonError::into_inner(p)),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn id_string(id: &EpisodeId) -> String {
    ulid::Ulid::from_bytes(*id).to_string()
}

fn parse_id(s: &str) -> Result<EpisodeId, GraphError> {
    ulid::Ulid::from_string(s)
        .map(|u| u.to_bytes())
        .map_err(|_| GraphError::InvalidId(s.to_owned()))
}

/// Checks a space name against `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn valid_space_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// The memory graph of one node: every space, on one durable engine.
#[derive(Debug)]
pub struct Graph {
    engine: Engine,
    config: GraphConfig,
    /// Index snapshots (`<data dir>/indexes/`).
    index_dir: PathBuf,
    gate: WriteGate,
    /// Spaces loaded from an index snapshot, and snapshots refused.
    snapshots_used: AtomicU64,
    snapshots_refused: AtomicU64,
    spaces: RwLock<HashMap<String, Arc<Space>>>,
    next_space_id: std::sync::Mutex<SpaceId>,
    access: crate::access::AccessBuffer,
    flushing: Mutex<()>,
    /// `engram_background_failures_total` (see [`crate::background`]).
    failures: Failures,
    /// Serialises creating and deleting spaces (the `spaces` lock is never
    /// held across their WAL fsync).
    ddl: Mutex<()>,
    /// Spaces whose record could not be decoded, name included (logged at
    /// open; their data stays in the store).
    unreadable: Vec<spaces::DamagedSpace>,
    /// Logical clock of the uses of spaces (least recently used first).
    clock: Arc<AtomicU64>,
    /// Index memory metrics (see the `residency` module).
    residency: residency::Metrics,
}

impl Graph {
    /// Opens the graph on `data_dir`: recovers the engine, loads every
    /// space's indexes and adjacency from the warm store, and creates
    /// `default` and the configured bootstrap spaces if missing.
    pub fn open(
        data_dir: &Path,
        config: GraphConfig,
        options: OpenOptions,
    ) -> Result<(Graph, RecoveryReport), GraphError> {
        config.validate()?;
        let registry = options.registry.clone();
        let (engine, report) = Engine::open(data_dir, &config.engine, options)?;
        let failures = Failures::new(registry.as_ref()).map_err(EngineError::Metrics)?;
        let budget = config.index_budget_mb.saturating_mul(1024 * 1024);
        let residency =
            residency::Metrics::new(registry.as_ref(), budget).map_err(EngineError::Metrics)?;
        let store = engine.store();
        let mut max_id = 0;
        for (space, _) in store.applied_seqs()? {
            max_id = max_id.max(space);
        }
        let mut spaces: HashMap<String, Arc<Space>> = HashMap::new();
        let mut unreadable = Vec::new();
        for (id, bytes) in store.spaces()? {
            max_id = max_id.max(id);
            // A damaged record makes that space unavailable, not the node.
            let taken = |name: &str| spaces.contains_key(name);
            match spaces::open_space(id, &bytes, config.hot_capacity, taken) {
                Ok(space) => {
                    spaces.insert(space.record.name.clone(), Arc::new(space));
                }
                Err(damaged) => unreadable.push(damaged),
            }
        }
        let graph = Graph {
            engine,
            index_dir: data_dir.join("indexes"),
            gate: WriteGate::default(),
            snapshots_used: AtomicU64::new(0),
            snapshots_refused: AtomicU64::new(0),
            spaces: RwLock::new(spaces),
            next_space_id: std::sync::Mutex::new(max_id + 1),
            access: crate::access::AccessBuffer::new(config.access_buffer),
            flushing: Mutex::new(()),
            failures,
            ddl: Mutex::new(()),
            unreadable,
            clock: Arc::new(AtomicU64::new(0)),
            residency,
            config,
        };
        let mut wanted = vec![DEFAULT_SPACE.to_owned()];
        wanted.extend(graph.config.bootstrap_spaces.iter().cloned());
        for name in wanted {
            if !read(&graph.spaces).contains_key(&name) {
                if !graph.unreadable.is_empty() {
                    tracing::warn!(space = %name, "creating a missing space while some space records are unreadable: if one of them was this space, its old data stays in the store under that id");
                }
                graph.create_space(&name, None)?;
            }
        }
        Ok((graph, report))
    }

    /// The storage engine underneath (status, checkpoints).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Builds the space's in-memory state from its index snapshot, or else
    /// from the warm store (removing what a crash left of forgotten memories).
    fn load_state(&self, space: &Space) -> Result<SpaceState, GraphError> {
        let started = Instant::now();
        let (loaded, source) = match self.load_snapshot(space)? {
            Some(st) => (st, "index snapshot"),
            None => {
                let (loaded, orphans) = load_space(
                    &self.engine,
                    space.id,
                    space.record.embedding_dim,
                    &self.config,
                )?;
                if !orphans.is_empty() {
                    tracing::info!(space = %space.record.name, count = orphans.len(), "removing entries of forgotten memories left by a crash");
                    self.submit(space, kind::FORGET, orphans)?;
                }
                // Rebuilt from the store: exact again.
                space.inexact.store(false, Ordering::SeqCst);
                (loaded, "warm store")
            }
        };
        tracing::info!(
            space = %space.record.name,
            memories = loaded.episodes.len(),
            from = source,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "space loaded into memory"
        );
        Ok(loaded)
    }

    /// The space's indexes from its snapshot, if one was written at the
    /// last clean shutdown or when the space was last unloaded, and it
    /// reflects exactly what the store holds now
    /// (the file is removed either way). Vectors come from the store.
    fn load_snapshot(&self, space: &Space) -> Result<Option<SpaceState>, GraphError> {
        let store = self.engine.store();
        let seq = store.applied_seq(space.id)?;
        let (dim, params) = (space.record.embedding_dim, self.config.ann);
        let taken = snapshot::take(&self.index_dir, space.id, seq, |r| {
            SpaceState::read_from(r, dim, params)
        });
        let mut st = match taken {
            Ok(Some(st)) => st,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.snapshots_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(space = %space.record.name, error = %e, "index snapshot not used; rebuilding the indexes from the warm store");
                return Ok(None);
            }
        };
        if let Some(ann) = st.ann.as_mut() {
            for entry in store.scan_space(Cf::Vectors, space.id)? {
                let (k, v) = entry?;
                let (_, id) = keys::decode_episode(&k)
                    .ok_or_else(|| GraphError::Corrupt("vector key".into()))?;
                ann.insert(id, &record::vector_from_bytes(&v)?);
            }
            ann.set_graph_from(self.config.exact_search_below);
        }
        self.snapshots_used.fetch_add(1, Ordering::Relaxed);
        Ok(Some(st))
    }

    /// Spaces loaded from an index snapshot since open, and snapshots found
    /// but refused (damaged, or not matching the store).
    pub fn snapshot_loads(&self) -> (u64, u64) {
        (
            self.snapshots_used.load(Ordering::Relaxed),
            self.snapshots_refused.load(Ordering::Relaxed),
        )
    }

    /// Stops accepting writes (they fail with [`GraphError::ShuttingDown`])
    /// and waits up to `wait` for those in flight; `true` once none is left.
    /// For a clean shutdown, before [`Graph::save_index_snapshots`].
    pub fn seal_writes(&self, wait: Duration) -> bool {
        self.gate.sealed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        while !self.gate.quiescent() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Writes every loaded space's indexes to `<data dir>/indexes/`, so the
    /// next start reads them instead of rebuilding them from the store.
    /// Only after [`Graph::seal_writes`] returned `true`; otherwise nothing
    /// is written. A failed space is logged and left to be rebuilt; after a
    /// storage engine failure ([`Engine::failure`]) every loaded space is.
    pub fn save_index_snapshots(&self) -> SnapshotReport {
        let mut report = SnapshotReport::default();
        if !self.gate.quiescent() {
            tracing::warn!("writes still in flight: index snapshots not written");
            return report;
        }
        // After a failed write the in-memory indexes can disagree with the
        // store although the sequences match (a record applied whose caller
        // saw an error, so it never reached the indexes): only a rebuild
        // from the store is exact then.
        let failure = self.engine.failure();
        // Likewise for a space holding a record applied after its writer
        // was told the write failed: its indexes may lack it.
        let late = self.engine.spaces_applied_after_error();
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        for space in all {
            let Some(resident) = space.resident() else {
                continue; // not loaded: its snapshot, if any, is still exact
            };
            let st = &resident.state;
            if let Some(reason) = &failure {
                report.failed += 1;
                tracing::warn!(space = %space.record.name, failure = %reason, "the storage engine failed: index snapshot not written; the next start rebuilds this space's indexes");
                let _ = snapshot::remove(&self.index_dir, space.id);
                continue;
            }
            if late.contains(&space.id) || space.inexact.load(Ordering::SeqCst) {
                report.failed += 1;
                tracing::warn!(space = %space.record.name, "a record of this space was applied after its write was reported failed: index snapshot not written; the next start rebuilds this space's indexes");
                let _ = snapshot::remove(&self.index_dir, space.id);
                continue;
            }
            let state = read(st);
            let written = self
                .engine
                .store()
                .applied_seq(space.id)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|seq| {
                    if seq + 1 != self.engine.next_seq(space.id) {
                        return Err(std::io::Error::other("records not yet applied"));
                    }
                    snapshot::write(&self.index_dir, space.id, seq, |w| state.write_to(w))
                });
            match written {
                Ok(bytes) => {
                    report.spaces += 1;
                    report.memories += state.episodes.len();
                    report.bytes += bytes;
                    // Listed without loading it after the restart.
                    if let Ok(seq) = self.engine.store().applied_seq(space.id) {
                        self.record_figures_at_shutdown(&space, &state, seq);
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(space = %space.record.name, error = %e, "writing the index snapshot failed; the next start rebuilds this space's indexes");
                    let _ = snapshot::remove(&self.index_dir, space.id);
                }
            }
        }
        report
    }

    /// Submits a record for a space that still exists: deleting the space
    /// waits for it, and a record for a deleted space is refused, so nothing
    /// is ever written under a dropped space's id after its range delete.
    fn submit(
        &self,
        space: &Space,
        wal_kind: u8,
        mutations: Vec<Mutation>,
    ) -> Result<crate::Committed, GraphError> {
        let alive = read(&space.alive);
        if !*alive {
            return Err(GraphError::SpaceNotFound(space.record.name.clone()));
        }
        Ok(self.engine.submit(space.id, wal_kind, mutations)?)
    }

    /// Moves the space's memories that were neither stored nor recalled for
    /// `idle` to the cold tier (zstd column family); returns how many moved.
    /// Recall still finds them; being recalled moves them back. The moves
    /// are WAL records of at most 1024 memories within the WAL's
    /// `max_payload`; a memory too large to move in one record stays warm
    /// (logged, and counted in `engram_background_failures_total`).
    pub fn archive(
        &self,
        space_name: &str,
        idle: std::time::Duration,
    ) -> Result<usize, GraphError> {
        let space = self.space(space_name)?;
        self.archive_space(&space, idle, Use::Request)
    }

    /// One background run of [`Graph::archive`] over every loaded space with
    /// `cold_after_sec` (nothing when it is 0). A space that fails is logged
    /// with its name and counted
    /// (`engram_background_failures_total{task="archive"}`), and the run goes
    /// on with the others; only a shutdown stops it.
    pub fn archive_loaded(&self) -> Result<usize, GraphError> {
        if self.config.cold_after_sec == 0 {
            return Ok(0);
        }
        let idle = std::time::Duration::from_secs(self.config.cold_after_sec);
        let all: Vec<Arc<Space>> = read(&self.spaces)
            .values()
            .filter(|s| s.is_loaded())
            .cloned()
            .collect();
        let mut moved = 0;
        for space in all {
            match self.archive_space(&space, idle, Use::Background) {
                Ok(n) => moved += n,
                Err(GraphError::SpaceNotFound(_)) => {}
                Err(GraphError::ShuttingDown) => return Err(GraphError::ShuttingDown),
                Err(e) => self.background_failed(Task::Archive, &space, &e),
            }
        }
        Ok(moved)
    }

    /// Logs and counts a background pass's failure on one space; the pass
    /// goes on with the next space.
    fn background_failed(&self, task: Task, space: &Space, e: &GraphError) {
        tracing::warn!(
            space = %space.record.name,
            task = ?task,
            error = %e,
            "background work failed for this space; continuing with the other spaces"
        );
        self.failures.count(task);
    }

    /// Archives one space's idle memories; a background pass (`by`) skips a
    /// space that was unloaded meanwhile.
    fn archive_space(
        &self,
        space: &Space,
        idle: std::time::Duration,
        by: Use,
    ) -> Result<usize, GraphError> {
        /// Memories moved by one ARCHIVE record at most.
        const ARCHIVE_BATCH: usize = 1024;
        let _writing = self.gate.enter()?;
        let Some(held) = self.state_as(space, by)? else {
            return Ok(0);
        };
        let st: &RwLock<SpaceState> = &held;
        let cutoff = now_ms().saturating_sub(i64::try_from(idle.as_millis()).unwrap_or(i64::MAX));
        let _tiering = lock(&space.tiering);
        let ids: Vec<EpisodeId> = read(st)
            .episodes
            .iter()
            .filter(|(_, m)| !m.cold && m.stored_at_ms.max(m.last_access_ms) <= cutoff)
            .map(|(id, _)| *id)
            .collect();
        let max_payload = self.config.engine.wal.max_payload;
        let mut budget = RecordBudget::new(max_payload, ARCHIVE_BATCH);
        let mut m = Vec::new();
        let mut done = Vec::new();
        let mut moved = 0;
        for id in ids {
            let Some(bytes) = self.engine.store().episode(space.id, &id)? else {
                continue;
            };
            let entry = [
                Mutation::DeleteEpisode { id },
                Mutation::PutCold { id, record: bytes },
            ];
            let size = encoded_len(&entry);
            match budget.fit(size) {
                Fit::Here => {}
                Fit::Next => {
                    let (batch, moving) = (std::mem::take(&mut m), std::mem::take(&mut done));
                    moved += self.archive_batch(space, st, batch, moving)?;
                    budget.reset();
                }
                Fit::Never => {
                    tracing::warn!(
                        space = %space.record.name,
                        memory = %id_string(&id),
                        bytes = size,
                        max_payload,
                        "memory too large to move to the cold tier in one WAL record; it stays warm"
                    );
                    self.failures.count(Task::Archive);
                    continue;
                }
            }
            budget.add(size);
            m.extend(entry);
            done.push(id);
        }
        if !done.is_empty() {
            moved += self.archive_batch(space, st, m, done)?;
        }
        Ok(moved)
    }

    /// Writes one ARCHIVE record (`m`, moving `done`) and marks its memories
    /// cold; returns how many it moved.
    fn archive_batch(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        m: Vec<Mutation>,
        done: Vec<EpisodeId>,
    ) -> Result<usize, GraphError> {
        self.submit(space, kind::ARCHIVE, m)?;
        let mut state = write(st);
        let mut hot = lock(&space.hot);
        let s = &mut *state;
        for id in &done {
            if let Some(meta) = s.episodes.get_mut(id) {
                if !meta.cold {
                    meta.cold = true;
                    s.cold += 1;
                }
            }
            hot.remove(id);
        }
        Ok(done.len())
    }

    /// Links up to `budget` vectors of each loaded space's HNSW backlog (left
    /// by a restart or by crossing `exact_search_below`) and relinks up to
    /// `reclaim_budget` nodes around removed vectors ([`Hnsw::reclaim`]);
    /// returns how many vectors were linked. The background task calls this
    /// ten times a second with small budgets, so the space's lock is never
    /// held for long.
    pub fn link_vectors(&self, budget: usize, reclaim_budget: usize) -> usize {
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        let mut done = 0;
        for space in all {
            let Some(resident) = space.resident() else {
                continue;
            };
            let st = &resident.state;
            if read(st)
                .ann
                .as_ref()
                .is_some_and(|a| a.backlog() > 0 || a.reclaim_due())
            {
                if let Some(ann) = write(st).ann.as_mut() {
                    done += ann.link_backlog(budget);
                    ann.reclaim(reclaim_budget);
                }
            }
        }
        done
    }

    /// The configuration the graph was opened with.
    pub fn config(&self) -> &GraphConfig {
        &self.config
    }

    /// Access updates dropped because the buffer was full (see
    /// [`GraphConfig::access_buffer`]).
    pub fn access_dropped(&self) -> u64 {
        self.access.dropped()
    }

    /// Writes the access statistics recorded by recalls since the last call
    /// (per space, WAL records of at most 4096 episodes within the WAL's
    /// `max_payload`); returns how many episodes were updated. The
    /// background task calls this every `access_flush_ms`. A space that
    /// fails is logged with its name and counted
    /// (`engram_background_failures_total{task="access_flush"}`); its
    /// pending statistics are dropped and the other spaces are still written.
    pub fn flush_access(&self) -> Result<usize, GraphError> {
        let _writing = self.gate.enter()?;
        let _one = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = self.access.take();
        if pending.is_empty() {
            return Ok(0);
        }
        let by_id: HashMap<SpaceId, Arc<Space>> = read(&self.spaces)
            .values()
            .map(|s| (s.id, Arc::clone(s)))
            .collect();
        let mut written = 0;
        for (sid, updates) in pending {
            let Some(space) = by_id.get(&sid) else {
                continue; // deleted since
            };
            // An unloaded space has nothing pending: the unload flushed it
            // (see the `residency` module).
            let Some(resident) = space.resident() else {
                continue;
            };
            let st = &resident.state;
            let _tiering = lock(&space.tiering);
            let records: Vec<(EpisodeId, AccessRecord, bool)> = {
                let state = read(st);
                updates
                    .iter()
                    .filter_map(|(id, (n, last))| {
                        state.episodes.get(id).map(|m| {
                            let r = AccessRecord {
                                count: m.access_count.saturating_add(*n),
                                last_ms: m.last_access_ms.max(*last),
                            };
                            (*id, r, m.cold)
                        })
                    })
                    .collect()
            };
            match self.flush_space_access(space, st, &records) {
                Ok(n) => written += n,
                Err(GraphError::SpaceNotFound(_)) => {} // deleted since
                Err(e) => self.background_failed(Task::AccessFlush, space, &e),
            }
        }
        Ok(written)
    }

    /// Writes one space's access statistics `records` (id, statistics,
    /// cold) for [`Graph::flush_access`]; returns how many were written.
    fn flush_space_access(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        records: &[(EpisodeId, AccessRecord, bool)],
    ) -> Result<usize, GraphError> {
        /// Episodes updated by one ACCESS record at most.
        const ACCESS_BATCH: usize = 4096;
        let max_payload = self.config.engine.wal.max_payload;
        let mut budget = RecordBudget::new(max_payload, ACCESS_BATCH);
        let mut batch = AccessBatch::default();
        let mut written = 0;
        for (id, r, cold) in records {
            let mut entry = vec![Mutation::PutAccess {
                id: *id,
                value: r.encode(),
            }];
            // Access promotes a cold memory back to the warm family.
            if *cold {
                if let Some(bytes) = self.engine.store().cold(space.id, id)? {
                    entry.push(Mutation::PutEpisode {
                        id: *id,
                        record: bytes,
                    });
                    entry.push(Mutation::DeleteCold { id: *id });
                }
            }
            let mut size = encoded_len(&entry);
            if entry.len() > 1 && budget.fit(size) == Fit::Never {
                tracing::warn!(
                    space = %space.record.name,
                    memory = %id_string(id),
                    bytes = size,
                    max_payload,
                    "cold memory too large to promote in one WAL record; it stays cold"
                );
                self.failures.count(Task::AccessFlush);
                entry.truncate(1);
                size = encoded_len(&entry);
            }
            match budget.fit(size) {
                Fit::Here => {}
                Fit::Next => {
                    written += self.write_access(space, st, std::mem::take(&mut batch))?;
                    budget.reset();
                }
                Fit::Never => {
                    // Only with a `max_payload` below a few dozen bytes.
                    tracing::warn!(
                        space = %space.record.name,
                        memory = %id_string(id),
                        max_payload,
                        "access statistics do not fit in a WAL record; dropped"
                    );
                    self.failures.count(Task::AccessFlush);
                    continue;
                }
            }
            budget.add(size);
            if entry.len() > 1 {
                batch.promoted.push(*id);
            }
            batch.updates.push((*id, *r));
            batch.mutations.extend(entry);
        }
        if !batch.updates.is_empty() {
            written += self.write_access(space, st, batch)?;
        }
        Ok(written)
    }

    /// Writes one ACCESS record and applies it to the in-memory metadata;
    /// returns how many episodes it updated.
    fn write_access(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        batch: AccessBatch,
    ) -> Result<usize, GraphError> {
        let AccessBatch {
            mutations,
            updates,
            promoted,
        } = batch;
        self.submit(space, kind::ACCESS, mutations)?;
        let mut gone = Vec::new();
        {
            let mut state = write(st);
            let s = &mut *state;
            for (id, r) in &updates {
                match s.episodes.get_mut(id) {
                    Some(m) => m.set_access(*r),
                    // Forgotten while this record was written.
                    None => gone.push(Mutation::DeleteAccess { id: *id }),
                }
            }
            for id in &promoted {
                if let Some(m) = s.episodes.get_mut(id) {
                    if m.cold {
                        m.cold = false;
                        s.cold -= 1;
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.submit(space, kind::FORGET, gone)?;
        }
        Ok(updates.len())
    }

    /// Every space's name, sorted, without loading any space's indexes.
    pub fn space_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.spaces).keys().cloned().collect();
        names.sort();
        names
    }

    /// Every space that serves with its statistics, by name, without
    /// loading any (see [`SpaceStats`]): a damaged space
    /// ([`Graph::damaged_spaces`]) is left out rather than failing the whole
    /// list, and so is one whose figures cannot be read (logged).
    pub fn spaces(&self) -> Result<Vec<SpaceStats>, GraphError> {
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        let mut out = Vec::with_capacity(all.len());
        for s in all {
            match self.stats_of(&s) {
                Ok(st) => out.push(st),
                // Damaged, or deleted since the list was taken.
                Err(GraphError::SpaceUnavailable { .. } | GraphError::SpaceNotFound(_)) => {}
                Err(e) => tracing::warn!(
                    space = %s.record.name,
                    error = %e,
                    "the space's figures could not be read; it is left out of the list"
                ),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Statistics of one space, without loading it (see [`SpaceStats`]).
    pub fn space_stats(&self, name: &str) -> Result<SpaceStats, GraphError> {
        let space = self.space(name)?;
        self.stats_of(&space)
    }

    /// Checks every limit; returns the metadata as JSON text (serialised once).
    fn validate(&self, space: &Space, req: &RememberRequest) -> Result<String, GraphError> {
        let l = &self.config.limits;
        if req.content.trim().is_empty() {
            return Err(invalid("content", "must not be empty"));
        }
        if req.content.len() > l.max_content_bytes {
            return Err(invalid(
                "content",
                format!(
                    "{} bytes exceeds the limit of {}",
                    req.content.len(),
                    l.max_content_bytes
                ),
            ));
        }
        if let Some(c) = req.confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(invalid("confidence", format!("{c} is outside [0, 1]")));
            }
        }
        if req.tags.len() > l.max_tags {
            return Err(invalid(
                "tags",
                format!("{} tags exceed the limit of {}", req.tags.len(), l.max_tags),
            ));
        }
        if let Some(t) = req
            .tags
            .iter()
            .find(|t| t.is_empty() || t.len() > l.max_tag_bytes)
        {
            return Err(invalid(
                "tags",
                format!("tag {t:?} must be 1..={} bytes", l.max_tag_bytes),
            ));
        }
        let metadata_json =
            serde_json::to_string(&req.metadata).map_err(|e| invalid("metadata", e.to_string()))?;
        let meta_len = metadata_json.len();
        if meta_len > l.max_metadata_bytes {
            return Err(invalid(
                "metadata",
                format!(
                    "{meta_len} bytes exceeds the limit of {}",
                    l.max_metadata_bytes
                ),
            ));
        }
        self.check_embedding(space, req.embedding.as_deref())?;
        if let Some(session) = &req.session {
            if session.len() > l.max_session_bytes {
                return Err(invalid(
                    "session",
                    format!(
                        "{} bytes exceeds the limit of {} (limits.max_session_bytes)",
                        session.len(),
                        l.max_session_bytes
                    ),
                ));
            }
        }
        if req.links.len() > l.max_links {
            return Err(invalid(
                "links",
                format!(
                    "{} links exceed the limit of {} per request (limits.max_links); link the rest with POST /api/v1/memories/{{id}}/links",
                    req.links.len(),
                    l.max_links
                ),
            ));
        }
        if req.links.len() > l.max_edges_per_memory {
            return Err(invalid(
                "links",
                format!(
                    "{} links exceed the limit of {} edges per memory",
                    req.links.len(),
                    l.max_edges_per_memory
                ),
            ));
        }
        for link in &req.links {
            if let Some(w) = link.weight {
                if !(w > 0.0 && w <= 1.0) {
                    return Err(invalid("links", format!("weight {w} is outside (0, 1]")));
                }
            }
        }
        Ok(metadata_json)
    }

    fn check_embedding(&self, space: &Space, e: Option<&[f32]>) -> Result<(), GraphError> {
        let Some(e) = e else { return Ok(()) };
        let Some(dim) = space.record.embedding_dim else {
            return Err(invalid(
                "embedding",
                format!(
                    "space {:?} was created without an embedding dimension; store vectors in a space created with one (POST /api/v1/spaces {{\"id\": \"...\", \"embedding_dim\": N}})",
                    space.record.name
                ),
            ));
        };
        if e.len() != dim as usize {
            return Err(invalid(
                "embedding",
                format!("dimension {} does not match the space's {dim}", e.len()),
            ));
        }
        if e.iter().any(|x| !x.is_finite()) {
            return Err(invalid("embedding", "values must be finite numbers"));
        }
        Ok(())
    }

    /// Vector neighbours of `q` accepted by `accept`, most similar first:
    /// an exhaustive int8 scan with exact re-ranking for spaces of up to
    /// `exact_search_below` vectors or when a filter starves the graph walk,
    /// the HNSW index otherwise.
    fn vector_neighbours(
        &self,
        state: &SpaceState,
        q: &[f32],
        k: usize,
        accept: impl Fn(&EpisodeId) -> bool + Sync,
    ) -> Vec<(EpisodeId, f32)> {
        let Some(ann) = &state.ann else {
            return Vec::new();
        };
        let exhaustive = ann.len() <= self.config.exact_search_below;
        let mut found = if exhaustive {
            ann.scan(q, k, &accept)
        } else {
            ann.search(q, k, &accept)
        };
        if !exhaustive && found.len() < k.min(ann.len()) {
            found = ann.scan(q, k, &accept);
        }
        found
    }

    /// One memory by id.
    pub fn get(
        &self,
        space_name: &str,
        id: &str,
        with_embedding: bool,
    ) -> Result<Memory, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let eid = parse_id(id)?;
        let Some(access) = read(st).episodes.get(&eid).map(EpisodeMeta::access) else {
            return Err(GraphError::MemoryNotFound(id.to_owned()));
        };
        self.load_memory(&space, st, &eid, with_embedding, access)?
            .ok_or_else(|| GraphError::MemoryNotFound(id.to_owned()))
    }

    /// An episode's record from whichever tier holds it: the hot cache,
    /// the warm `episodes` family, or the cold archive (both families read
    /// from one store snapshot, so a memory moving between them is never
    /// missed).
    fn read_record(
        &self,
        space: &Space,
        id: &EpisodeId,
    ) -> Result<Option<Arc<EpisodeRecord>>, GraphError> {
        if let Some(r) = lock(&space.hot).get(id) {
            return Ok(Some(r));
        }
        let Some(bytes) = self.engine.store().episode_in_any_tier(space.id, id)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(record::decode(&bytes, "episode")?)))
    }

    /// A memory as returned to clients; its record enters the hot tier.
    fn load_memory(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        id: &EpisodeId,
        with_embedding: bool,
        access: AccessRecord,
    ) -> Result<Option<Memory>, GraphError> {
        let Some(rec) = self.read_record(space, id)? else {
            return Ok(None);
        };
        {
            // Forget removes a memory from the indexes and the hot tier
            // under the space's write lock: checked under its read lock, a
            // record read just before a forget is neither cached after it
            // nor returned.
            let state = read(st);
            if !state.episodes.contains_key(id) {
                return Ok(None);
            }
            lock(&space.hot).insert(*id, Arc::clone(&rec));
        }
        let metadata = match serde_json::from_str::<Value>(&rec.metadata_json) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(GraphError::Corrupt(format!(
                    "metadata of {}",
                    id_string(id)
                )));
            }
        };
        let embedding = match with_embedding {
            true => match self.engine.store().vector(space.id, id)? {
                Some(b) => Some(record::vector_from_bytes(&b)?),
                None => None,
            },
            false => None,
        };
        Ok(Some(Memory {
            id: id_string(id),
            space: space.record.name.clone(),
            content: rec.content.clone(),
            confidence: rec.confidence,
            tags: rec.tags.clone(),
            metadata,
            session: rec.session.clone(),
            occurred_at_ms: rec.occurred_at_ms,
            stored_at_ms: rec.stored_at_ms,
            embedding,
            access_count: access.count,
            last_access_ms: (access.count > 0).then_some(access.last_ms),
            concept: rec.concept,
        }))
    }

    /// Forgets a memory everywhere: content, embedding, postings, edges in
    /// both directions, archived copy, in-memory indexes, and what concepts
    /// derived from it: each concept it belongs to is replaced by one of its
    /// other members, or forgotten when too few remain
    /// (`Graph::release_concepts`). Durable. Works at any number of edges
    /// (several WAL records when one cannot hold them).
    pub fn forget(&self, space_name: &str, id: &str) -> Result<(), GraphError> {
        let _writing = self.gate.enter()?;
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let eid = parse_id(id)?;
        let _tiering = lock(&space.tiering);
        let mut state = write(st);
        if !state.episodes.contains_key(&eid) {
            return Err(GraphError::MemoryNotFound(id.to_owned()));
        }
        // Its concepts first, each durably: a crash in between leaves the
        // memory in place and its concepts already without it, never a
        // concept holding the words of a memory that is gone.
        self.release_concepts(&space, &mut state, &eid)?;
        if self.forget_locked(&space, &mut state, &eid)? {
            Ok(())
        } else {
            Err(GraphError::MemoryNotFound(id.to_owned()))
        }
    }

    /// Forgets `eid` (see [`Graph::forget`]) under the space's write and
    /// tiering locks, leaving its concepts to the caller; `false` (nothing
    /// done) when its record is missing.
    fn forget_locked(
        &self,
        space: &Space,
        state: &mut SpaceState,
        eid: &EpisodeId,
    ) -> Result<bool, GraphError> {
        let eid = *eid;
        let Some(rec) = self.read_record(space, &eid)? else {
            return Ok(false);
        };
        let (tf, _) = text::term_frequencies(&rec.content);
        let outs: Vec<EpisodeId> = state.outgoing(&eid).into_iter().map(|(t, _)| t).collect();
        let ins: Vec<EpisodeId> = state.incoming(&eid);
        // A well-linked memory's deletions can exceed one WAL record: its
        // edges and postings go first, in as many records as they need
        // within `max_payload`, and the record deleting the memory itself
        // comes last. Each record only deletes, so replaying it again
        // changes nothing; a crash (or a failed write) between them leaves
        // the memory in place with some of its own edges or index entries
        // gone, and forgetting it again finishes the job. No other memory
        // loses anything but its edges to this one.
        let mut leading = Vec::with_capacity(outs.len() + ins.len() + tf.len());
        for to in &outs {
            leading.push(Mutation::DeleteEdge { from: eid, to: *to });
        }
        for from in &ins {
            leading.push(Mutation::DeleteEdge {
                from: *from,
                to: eid,
            });
        }
        for term in tf.keys() {
            leading.push(Mutation::DeletePosting {
                term: term.clone(),
                id: eid,
            });
        }
        let last = vec![
            Mutation::DeleteVector { id: eid },
            Mutation::DeleteAccess { id: eid },
            Mutation::DeleteCold { id: eid },
            Mutation::DeleteEpisode { id: eid },
        ];
        for m in forget_records(self.config.engine.wal.max_payload, leading, last) {
            self.submit(space, kind::FORGET, m)?;
        }

        lock(&space.hot).remove(&eid);
        if let Some(slot) = state.episodes.slot(&eid) {
            state.postings = state.postings.saturating_sub(tf.len());
            state.lexical.remove(slot, tf.into_keys());
            state.edges.remove_node(slot);
        }
        if let Some((_, meta)) = state.episodes.remove(&eid) {
            if meta.cold {
                state.cold -= 1;
            }
            state.tagsets.release(meta.tags);
        }
        if let Some(ann) = state.ann.as_mut() {
            ann.remove(&eid);
        }
        for from in ins {
            // A member of a forgotten concept can be consolidated again.
            let still = state
                .outgoing(&from)
                .iter()
                .any(|(_, e)| e.kind == EdgeKind::Consolidation);
            if let Some(m) = state.episodes.get_mut(&from) {
                m.consolidated = still;
            }
        }
        state.sessions.retain(|_, last| *last != eid);
        Ok(true)
    }

    /// Tag sets a space holds in memory (tests proving that sets no memory
    /// uses are removed).
    #[doc(hidden)]
    pub fn tag_sets(&self, space_name: &str) -> Result<usize, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let sets = read(st).tagsets.len();
        Ok(sets)
    }

    /// Adds (or re-weights) an explicit edge between two memories of a
    /// space; refused with [`GraphError::TooManyEdges`] when either already
    /// has `max_edges_per_memory` edges.
    pub fn link(
        &self,
        space_name: &str,
        from: &str,
        to: &str,
        weight: Option<f32>,
    ) -> Result<(), GraphError> {
        let _writing = self.gate.enter()?;
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let (f, t) = (parse_id(from)?, parse_id(to)?);
        let weight = weight.unwrap_or(DEFAULT_LINK_WEIGHT);
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(invalid("weight", format!("{weight} is outside (0, 1]")));
        }
        if f == t {
            return Err(invalid("target", "a memory cannot link to itself"));
        }
        let mut state = write(st);
        for (s, i) in [(from, &f), (to, &t)] {
            if !state.episodes.contains_key(i) {
                return Err(GraphError::MemoryNotFound(s.to_owned()));
            }
        }
        // Re-weighting an existing edge adds none.
        if !state.has_edge(&f, &t) {
            let limit = self.config.limits.max_edges_per_memory;
            for (s, i) in [(from, &f), (to, &t)] {
                if state.degree(i) >= limit {
                    return Err(GraphError::TooManyEdges {
                        memory: s.to_owned(),
                        limit,
                    });
                }
            }
        }
        let e = EdgeRecord {
            weight,
            kind: EdgeKind::Explicit,
        };
        self.submit(
            &space,
            kind::LINK,
            vec![Mutation::PutEdge {
                from: f,
                to: t,
                record: record::encode(&e)?,
            }],
        )?;
        state.add_edge(f, t, e);
        Ok(())
    }

    /// Recalls memories of one space from a cue: lexical and vector seeds
    /// fused by reciprocal rank, filtered before ranking, then spreading
    /// activation, then scoring. `spread.depth == 0` disables spreading.
    pub fn recall(
        &self,
        space_name: &str,
        cue: &Cue,
        limit: usize,
        spread: &Spread,
    ) -> Result<Vec<Recalled>, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let l = &self.config.limits;
        if limit == 0 || limit > l.max_recall_limit {
            return Err(invalid(
                "limit",
                format!("must be within 1..={}", l.max_recall_limit),
            ));
        }
        if spread.depth > activation::MAX_DEPTH {
            return Err(invalid(
                "spread.depth",
                format!("must be at most {}", activation::MAX_DEPTH),
            ));
        }
        if !(spread.decay > 0.0 && spread.decay <= 1.0) {
            return Err(invalid("spread.decay", "must be within (0, 1]"));
        }
        if !(0.0..=1.0).contains(&spread.threshold) {
            return Err(invalid("spread.threshold", "must be within [0, 1]"));
        }
        if spread.fan_out > activation::MAX_FAN_OUT {
            return Err(invalid(
                "spread.fan_out",
                format!("must be at most {}", activation::MAX_FAN_OUT),
            ));
        }
        self.check_embedding(&space, cue.embedding.as_deref())?;
        if cue.text.as_deref().is_none_or(|t| t.trim().is_empty())
            && cue.embedding.is_none()
            && cue.tags.is_empty()
            && cue.from_ms.is_none()
            && cue.to_ms.is_none()
        {
            return Err(invalid(
                "cue",
                "give at least one of text, embedding, tags, from or to",
            ));
        }
        let now = now_ms();
        let stability = self.config.stability_days;
        let state = read(st);
        let decayed = |m: &EpisodeMeta| m.decayed(now, stability);
        let accept = |id: &EpisodeId| {
            let Some(m) = state.episodes.get(id) else {
                return false;
            };
            let tags = state.tagsets.get(m.tags);
            cue.tags.iter().all(|t| tags.contains(t))
                && cue.from_ms.is_none_or(|f| m.occurred_at_ms >= f)
                && cue.to_ms.is_none_or(|t| m.occurred_at_ms <= t)
                && cue.min_confidence.is_none_or(|c| decayed(m) >= c)
        };
        // Concepts are returned only when asked for; spreading still
        // passes through them (`accept`), linking the members of one.
        let wanted = |m: &EpisodeMeta| cue.include_concepts || !m.concept;
        let seed = |id: &EpisodeId| accept(id) && state.episodes.get(id).is_some_and(wanted);
        let pool = (limit * 4).max(32);
        let filtered = !cue.tags.is_empty()
            || cue.from_ms.is_some()
            || cue.to_ms.is_some()
            || cue.min_confidence.is_some();
        // Normalised-score fusion: BM25 scores divided by the best BM25
        // score, cosine similarities (clamped at 0) divided by the best one;
        // with both kinds of cue a memory gets the mean of its two values.
        let lexical: Vec<(EpisodeId, f64)> = match cue.text.as_deref() {
            Some(t) if filtered => state.lexical_search(t, pool, seed),
            // Every indexed document exists, so without filters only the
            // kind is checked, by slot.
            Some(t) if cue.include_concepts => state.lexical_search_slots(t, pool, |_| true),
            Some(t) => state.lexical_search_slots(t, pool, |s| !state.episodes.meta_at(s).concept),
            None => Vec::new(),
        };
        let vector: Vec<(EpisodeId, f64)> = match &cue.embedding {
            Some(q) => self
                .vector_neighbours(&state, q, pool, seed)
                .into_iter()
                .map(|(id, s)| (id, f64::from(s)))
                .collect(),
            None => Vec::new(),
        };
        let sources = f64::from(u8::from(cue.text.is_some()) + u8::from(cue.embedding.is_some()));
        let mut fused: IdMap<(f64, f64, Via)> = IdMap::default();
        for (list, via) in [(&lexical, Via::Lexical), (&vector, Via::Vector)] {
            let best = list.first().map_or(0.0, |x| x.1);
            if best <= 0.0 {
                continue;
            }
            for (id, score) in list {
                let part = (score / best).max(0.0) / sources;
                let e = fused.entry(*id).or_insert((0.0, 0.0, via.clone()));
                e.0 += part;
                if part > e.1 {
                    e.1 = part;
                    e.2 = via.clone();
                }
            }
        }
        let filter_only = cue.text.is_none() && cue.embedding.is_none();
        if filter_only {
            // A filter-only cue seeds the most recent matching memories.
            let mut all: Vec<(&EpisodeId, &EpisodeMeta)> =
                state.episodes.iter().filter(|(id, _)| seed(id)).collect();
            all.sort_by(|a, b| {
                b.1.occurred_at_ms
                    .cmp(&a.1.occurred_at_ms)
                    .then(b.0.cmp(a.0))
            });
            for (id, _) in all.into_iter().take(pool) {
                fused.insert(*id, (1.0, 1.0, Via::Filter));
            }
        }
        let seeds: Vec<(EpisodeId, f32)> = fused.iter().map(|(id, v)| (*id, v.0 as f32)).collect();
        let reached = activation::spread(&seeds, spread, |n| state.neighbours(n), accept);
        let mut ranked: Vec<(EpisodeId, f32, f32, f32, Via)> = reached
            .into_iter()
            .filter_map(|(id, r)| {
                let m = state.episodes.get(&id).filter(|m| wanted(m))?;
                let conf = decayed(m);
                let age_days = (now - m.occurred_at_ms).max(0) as f64 / 86_400_000.0;
                let recency = (-age_days / 30.0).exp() as f32;
                let via = if r.path.len() > 1 {
                    Via::Edge {
                        path: r.path.iter().map(id_string).collect(),
                    }
                } else {
                    fused.get(&id).map(|f| f.2.clone()).unwrap_or(Via::Lexical)
                };
                Some((
                    id,
                    activation::score(r.activation, conf, recency),
                    r.activation,
                    conf,
                    via,
                ))
            })
            .collect();
        if filter_only {
            // Nothing to rank by relevance (every seed has the same
            // activation): newest `occurred_at` first, then newest id.
            ranked.sort_by_key(|r| {
                let at = state
                    .episodes
                    .get(&r.0)
                    .map_or(i64::MIN, |m| m.occurred_at_ms);
                (std::cmp::Reverse(at), std::cmp::Reverse(r.0))
            });
        } else {
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        ranked.truncate(limit);
        let access: Vec<AccessRecord> = ranked
            .iter()
            .map(|r| {
                state
                    .episodes
                    .get(&r.0)
                    .map(EpisodeMeta::access)
                    .unwrap_or_default()
            })
            .collect();
        drop(state);
        let returned: Vec<EpisodeId> = ranked.iter().map(|r| r.0).collect();
        self.access.record(space.id, &returned, now);
        let mut out = Vec::with_capacity(ranked.len());
        for ((id, score, act, conf, via), access) in ranked.into_iter().zip(access) {
            if let Some(memory) = self.load_memory(&space, st, &id, false, access)? {
                out.push(Recalled {
                    memory,
                    score,
                    activation: act,
                    confidence: conf,
                    via,
                });
            }
        }
        Ok(out)
    }

    /// `true` if any in-memory structure of the space still mentions `id`
    /// (used by tests proving that forget leaves no trace).
    pub fn mentions(&self, space_name: &str, id: &str) -> Result<bool, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let eid = parse_id(id)?;
        let s = read(st);
        Ok(s.episodes.contains_key(&eid)
            || !s.lexical.all_postings(|x| s.episodes.is_live(x))
            || s.ann.as_ref().is_some_and(|a| a.contains(&eid))
            || !s.edges.all_live(|x| s.episodes.is_live(x))
            || s.sessions.values().any(|l| *l == eid)
            || lock(&space.hot).contains(&eid))
    }

    /// Numeric id of a space (for tests that inspect the store).
    pub fn space_id(&self, name: &str) -> Result<SpaceId, GraphError> {
        Ok(self.space(name)?.id)
    }
}

/// Splits a forget's deletions into WAL records within `max_payload`:
/// `leading` in order, as many per record as fit, then `last` whole, in the
/// final record. (A single deletion larger than the limit, possible only
/// with an absurdly small `max_payload`, gets a record of its own, which the
/// WAL refuses with its limit in the error.)
/// The mutations that store a new episode: its record, its postings and
/// its vector (edges are the caller's), with room for `extra` more.
fn episode_mutations(
    id: EpisodeId,
    record: &EpisodeRecord,
    tf: &std::collections::HashMap<String, u32>,
    embedding: Option<&[f32]>,
    extra: usize,
) -> Result<Vec<Mutation>, GraphError> {
    let mut m = Vec::with_capacity(2 + tf.len() + extra);
    m.push(Mutation::PutEpisode {
        id,
        record: record::encode(record)?,
    });
    for (term, f) in tf {
        m.push(Mutation::PutPosting {
            term: term.clone(),
            id,
            value: f.to_be_bytes().to_vec(),
        });
    }
    if let Some(e) = embedding {
        m.push(Mutation::PutVector {
            id,
            vector: record::vector_bytes(e),
        });
    }
    Ok(m)
}

fn forget_records(
    max_payload: u32,
    leading: Vec<Mutation>,
    last: Vec<Mutation>,
) -> Vec<Vec<Mutation>> {
    let mut budget = RecordBudget::new(max_payload, usize::MAX);
    let mut records = Vec::new();
    let mut current = Vec::new();
    for m in leading {
        let size = encoded_len(std::slice::from_ref(&m));
        if budget.fit(size) != Fit::Here && !current.is_empty() {
            records.push(std::mem::take(&mut current));
            budget.reset();
        }
        budget.add(size);
        current.push(m);
    }
    let size = encoded_len(&last);
    if budget.fit(size) != Fit::Here && !current.is_empty() {
        records.push(std::mem::take(&mut current));
    }
    current.extend(last);
    records.push(current);
    records
}

fn stats(s: &Space, state: &RwLock<SpaceState>) -> SpaceStats {
    let st = read(state);
    let hot = lock(&s.hot);
    SpaceStats {
        name: s.record.name.clone(),
        memories: st.episodes.len(),
        embedding_dim: s.record.embedding_dim,
        edges: st.edge_count(),
        terms: st.lexical.vocabulary(),
        hot: hot.len(),
        hot_capacity: hot.capacity(),
        cold: st.cold,
        unlinked_vectors: st.ann.as_ref().map_or(0, Hnsw::backlog),
        vector_tombstones: st.ann.as_ref().map_or(0, Hnsw::tombstones),
    }
}

/// Builds a space's in-memory state from the warm store. Also returns the
/// deletions that remove what a crash in the middle of a race with forget
/// can leave behind (an edge or access row of a forgotten episode).
fn load_space(
    engine: &Engine,
    space: SpaceId,
    dim: Option<u32>,
    config: &GraphConfig,
) -> Result<(SpaceState, Vec<Mutation>), GraphError> {
    let store = engine.store();
    // Vectors load without building graph links (minutes for a large
    // space); the backlog is linked afterwards by inserts and the
    // background task, and searches scan until it is done.
    let mut st = SpaceState::new(dim, config.ann, usize::MAX);
    let mut last_in_session: HashMap<String, EpisodeId> = HashMap::new();
    let warm = store.scan_space(Cf::Episodes, space)?.map(|e| (false, e));
    let cold = store.scan_space(Cf::Cold, space)?.map(|e| (true, e));
    for (is_cold, entry) in warm.chain(cold) {
        let (k, v) = entry?;
        let (_, id) =
            keys::decode_episode(&k).ok_or_else(|| GraphError::Corrupt("episode key".into()))?;
        let rec: EpisodeRecord = record::decode(&v, "episode")?;
        if let Some(s) = &rec.session {
            // ULIDs sort by creation time: the largest is the session's last.
            let e = last_in_session.entry(s.clone()).or_insert(id);
            if id > *e {
                *e = id;
            }
        }
        let tags = st.tagsets.intern(&rec.tags);
        let slot = st.episodes.insert(
            id,
            EpisodeMeta {
                confidence: rec.confidence,
                tags,
                occurred_at_ms: rec.occurred_at_ms,
                stored_at_ms: rec.stored_at_ms,
                last_access_ms: 0,
                access_count: 0,
                concept: rec.concept,
                consolidated: false,
                cold: is_cold,
            },
        );
        st.lexical.add_document(slot, rec.terms);
        st.cold += usize::from(is_cold);
    }
    st.sessions = last_in_session;
    let mut orphans = Vec::new();
    for entry in store.scan_space(Cf::Access, space)? {
        let (k, v) = entry?;
        let (_, id) =
            keys::decode_episode(&k).ok_or_else(|| GraphError::Corrupt("access key".into()))?;
        match st.episodes.get_mut(&id) {
            Some(m) => m.set_access(AccessRecord::decode(&v)?),
            None => orphans.push(Mutation::DeleteAccess { id }),
        }
    }
    for entry in store.scan_space(Cf::Terms, space)? {
        let (k, v) = entry?;
        let (_, term, id) =
            keys::decode_posting(&k).ok_or_else(|| GraphError::Corrupt("posting key".into()))?;
        let tf: [u8; 4] = v
            .as_ref()
            .try_into()
            .map_err(|_| GraphError::Corrupt("posting value".into()))?;
        match st.episodes.slot(&id) {
            Some(slot) => {
                st.lexical.add_posting(&term, slot, u32::from_be_bytes(tf));
                st.postings += 1;
            }
            None => orphans.push(Mutation::DeletePosting { term, id }),
        }
    }
    for entry in store.scan_space(Cf::Vectors, space)? {
        let (k, v) = entry?;
        let (_, id) =
            keys::decode_episode(&k).ok_or_else(|| GraphError::Corrupt("vector key".into()))?;
        if let Some(ann) = st.ann.as_mut() {
            ann.insert(id, &record::vector_from_bytes(&v)?);
        }
    }
    for entry in store.scan_space(Cf::Edges, space)? {
        let (k, v) = entry?;
        let (_, from, to) =
            keys::decode_edge(&k).ok_or_else(|| GraphError::Corrupt("edge key".into()))?;
        let e: EdgeRecord = record::decode(&v, "edge")?;
        if !st.add_edge(from, to, e) {
            orphans.push(Mutation::DeleteEdge { from, to });
        }
    }
    if let Some(ann) = st.ann.as_mut() {
        ann.set_graph_from(config.exact_search_below);
    }
    st.lexical.shrink_to_fit();
    st.episodes.shrink_to_fit();
    st.edges.shrink_to_fit();
    Ok((st, orphans))
}
