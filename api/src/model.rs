//! Request bodies and response shapes (ARCHITECTURE.md "API shapes").
//! Unknown fields in a request are an error, never silently ignored. The
//! same conversions serve HTTP and gRPC, so both validate alike.

use std::time::{Duration, UNIX_EPOCH};

use engram_graph::{
    ConsolidationReport, Cue, LinkSpec, Memory, Recalled, RememberRequest, Remembered, SpaceStats,
    Spread, Via,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::ApiError;

/// Milliseconds since the epoch as RFC 3339 UTC (times before 1970 print as
/// the epoch).
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Parses the time given in request field `field`: RFC 3339 with any offset,
/// or a plain date (`2026-01-31`) meaning its midnight UTC, or with
/// `end_of_day` its last millisecond (for `cue.to`, so that a range ending
/// on a date includes that day, as the CLI's `--to` does). Returns UTC
/// milliseconds.
pub(crate) fn parse_time(field: &str, s: &str, end_of_day: bool) -> Result<i64, ApiError> {
    let ms = match s.parse::<jiff::Timestamp>() {
        Ok(t) => t.as_millisecond(),
        Err(e) => match plain_date(s) {
            Some(t) if end_of_day => t.as_millisecond() + (DAY_MS - 1),
            Some(t) => t.as_millisecond(),
            None => {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "{field}: {s:?} is neither an RFC 3339 time with an offset nor a date ({e}); e.g. 2026-01-31T12:00:00Z, 2026-01-31T17:00:00+05:00 or 2026-01-31"
                    ),
                ));
            }
        },
    };
    if ms < 0 {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("{field}: {s:?} is before 1970-01-01T00:00:00Z, which is not supported"),
        ));
    }
    Ok(ms)
}

/// Midnight UTC of `s` when it is a plain calendar date, exactly
/// `YYYY-MM-DD` (jiff's date parser alone would also take a date with a
/// time and drop the time).
fn plain_date(s: &str) -> Option<jiff::Timestamp> {
    let b = s.as_bytes();
    let shaped = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shaped {
        return None;
    }
    let date: jiff::civil::Date = s.parse().ok()?;
    jiff::tz::Offset::UTC.to_timestamp(date.at(0, 0, 0, 0)).ok()
}

/// Deserializes `null` as the type's default: generated clients send
/// `"tags": null` for an optional field they leave unset, which must mean
/// the same as leaving it out.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// [`parse_time`] of an optional field.
fn opt_time(field: &str, s: Option<&str>, end_of_day: bool) -> Result<Option<i64>, ApiError> {
    s.map(|s| parse_time(field, s, end_of_day)).transpose()
}

/// An association to create: from the path's memory (or the new one) to `target`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    /// Id of the memory to link to (same space).
    pub target: String,
    /// Association strength in (0, 1] (default 0.9).
    pub weight: Option<f32>,
}

/// `POST /api/v1/memories/remember`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RememberBody {
    /// The episode's text (non-empty).
    pub content: String,
    /// Confidence in [0, 1] (default from config `memory.default_confidence`).
    pub confidence: Option<f32>,
    /// Optional embedding; its length must match the space's dimension.
    pub embedding: Option<Vec<f32>>,
    /// Tags for filtering (`null` is the same as none).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(nullable)]
    pub tags: Vec<String>,
    /// Free-form JSON object stored with the memory.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// When it happened: RFC 3339, or a date (`2026-01-31`) for midnight
    /// UTC (default: now).
    pub occurred_at: Option<String>,
    /// Conversation or session id; memories of a session are linked in order.
    pub session: Option<String>,
    /// Associations to existing memories (`null` is the same as none).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(nullable)]
    pub links: Vec<LinkBody>,
    /// Return the existing memory instead of storing identical content twice
    /// (`null` is the same as `false`).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(nullable)]
    pub dedupe: bool,
}

impl RememberBody {
    pub(crate) fn into_request(self) -> Result<RememberRequest, ApiError> {
        Ok(RememberRequest {
            content: self.content,
            confidence: self.confidence,
            embedding: self.embedding,
            tags: self.tags,
            metadata: self.metadata.unwrap_or_default(),
            occurred_at_ms: opt_time("occurred_at", self.occurred_at.as_deref(), false)?,
            session: self.session,
            links: self
                .links
                .into_iter()
                .map(|l| LinkSpec {
                    target: l.target,
                    weight: l.weight,
                })
                .collect(),
            dedupe: self.dedupe,
        })
    }
}

/// What to recall by; every given part must match (filters) or score (text,
/// embedding).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CueBody {
    /// Lexical cue (BM25 over content).
    pub text: Option<String>,
    /// Vector cue (cosine), same dimension as the space.
    pub embedding: Option<Vec<f32>>,
    /// Only memories carrying every tag (`null` is the same as none).
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(nullable)]
    pub tags: Vec<String>,
    /// Only memories that occurred at or after this time: RFC 3339, or a
    /// date (`2026-01-31`) for midnight UTC.
    pub from: Option<String>,
    /// Only memories that occurred at or before this time: RFC 3339, or a
    /// date (`2026-01-31`) for the end of that day (UTC), so the day is
    /// included. Not before `from`.
    pub to: Option<String>,
    /// Only memories with at least this confidence.
    pub min_confidence: Option<f32>,
    /// Return concepts made by consolidation too (default `false`: episodes
    /// only; spreading passes through concepts either way). A concept has
    /// `concept: true` and metadata `{"kind": "concept", "members": N}`.
    #[serde(default, deserialize_with = "null_as_default")]
    #[schema(nullable)]
    pub include_concepts: bool,
}

/// Spreading activation over the association graph.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpreadBody {
    /// Hops from the seeds (0 switches spreading off; default 2).
    pub depth: Option<u32>,
    /// Activation kept per hop, in (0, 1].
    pub decay: Option<f32>,
    /// Activation below which spreading stops.
    pub threshold: Option<f32>,
    /// Edges followed per memory.
    pub fan_out: Option<usize>,
}

/// `POST /api/v1/memories/recall`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallBody {
    /// The cue.
    pub cue: CueBody,
    /// Most results returned (default 10).
    pub limit: Option<usize>,
    /// Spreading parameters.
    pub spread: Option<SpreadBody>,
}

impl CueBody {
    /// The graph's cue; 400 for a time that does not parse or a `from`
    /// after `to` (a range nothing can match).
    pub(crate) fn into_cue(self) -> Result<Cue, ApiError> {
        let from_ms = opt_time("cue.from", self.from.as_deref(), false)?;
        let to_ms = opt_time("cue.to", self.to.as_deref(), true)?;
        if let Some((f, t)) = from_ms.zip(to_ms).filter(|(f, t)| f > t) {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "cue.from ({}) is after cue.to ({}), so nothing can match; give a cue.from at or before cue.to",
                    rfc3339(f),
                    rfc3339(t)
                ),
            ));
        }
        Ok(Cue {
            text: self.text,
            embedding: self.embedding,
            tags: self.tags,
            from_ms,
            to_ms,
            min_confidence: self.min_confidence,
            include_concepts: self.include_concepts,
        })
    }
}

impl SpreadBody {
    pub(crate) fn into_spread(self) -> Spread {
        let d = Spread::default();
        Spread {
            depth: self.depth.unwrap_or(d.depth),
            decay: self.decay.unwrap_or(d.decay),
            threshold: self.threshold.unwrap_or(d.threshold),
            fan_out: self.fan_out.unwrap_or(d.fan_out),
        }
    }
}

impl RecallBody {
    pub(crate) fn into_parts(self) -> Result<(Cue, usize, Spread), ApiError> {
        let cue = self.cue.into_cue()?;
        let spread = self.spread.unwrap_or_default().into_spread();
        Ok((cue, self.limit.unwrap_or(10), spread))
    }
}

/// `POST /api/v1/spaces`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpaceBody {
    /// Space name: 1–63 characters of `a-z`, `0-9`, `_`, `-`, starting with a letter or digit.
    pub id: String,
    /// Embedding dimension of the space; without it the space stores no vectors.
    pub embedding_dim: Option<u32>,
    /// Records kept in the hot cache for this space.
    pub hot_capacity: Option<u32>,
}

/// `POST /api/v1/consolidate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsolidateBody {
    /// Similarity in (0, 1] above which memories merge into a concept.
    pub threshold: Option<f32>,
}

/// A stored memory.
#[derive(Debug, Serialize, ToSchema)]
pub struct MemoryOut {
    /// Memory id (ULID).
    pub id: String,
    /// Its space.
    pub space: String,
    /// Text.
    pub content: String,
    /// Confidence in [0, 1].
    pub confidence: f32,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata object.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Session id, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// When it happened (RFC 3339).
    pub occurred_at: String,
    /// When it was stored (RFC 3339).
    pub stored_at: String,
    /// Times it was recalled or read.
    pub access_count: u32,
    /// Last recall or read (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_accessed_at: Option<String>,
    /// Made by consolidation from similar memories.
    pub concept: bool,
    /// Only with `?include=embedding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

impl From<&Memory> for MemoryOut {
    fn from(m: &Memory) -> Self {
        MemoryOut {
            id: m.id.clone(),
            space: m.space.clone(),
            content: m.content.clone(),
            confidence: m.confidence,
            tags: m.tags.clone(),
            metadata: m.metadata.clone(),
            session: m.session.clone(),
            occurred_at: rfc3339(m.occurred_at_ms),
            stored_at: rfc3339(m.stored_at_ms),
            access_count: m.access_count,
            last_accessed_at: m.last_access_ms.map(rfc3339),
            concept: m.concept,
            embedding: m.embedding.clone(),
        }
    }
}

/// Answer to remember.
#[derive(Debug, Serialize, ToSchema)]
pub struct RememberOut {
    /// New (or, with `dedupe`, existing) memory id.
    pub id: String,
    /// Its space.
    pub space: String,
    /// The space's write sequence number of this write.
    pub sequence: u64,
    /// Stored confidence.
    pub confidence: f32,
    /// RFC 3339 (of the existing memory after a dedupe).
    pub stored_at: String,
    /// When it happened, RFC 3339 (of the existing memory after a dedupe).
    pub occurred_at: String,
    /// True when `dedupe` found the same memory (same content, session,
    /// tags and metadata, and the same `occurred_at` if given): `id` is
    /// that memory's, nothing was written (status 200, not 201).
    pub deduplicated: bool,
}

impl From<Remembered> for RememberOut {
    fn from(r: Remembered) -> Self {
        RememberOut {
            id: r.id,
            space: r.space,
            sequence: r.sequence,
            confidence: r.confidence,
            stored_at: rfc3339(r.stored_at_ms),
            occurred_at: rfc3339(r.occurred_at_ms),
            deduplicated: r.deduplicated,
        }
    }
}

/// Answer to search.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchOut {
    /// Ranked matches.
    pub memories: Vec<MemoryOut>,
    /// `memories.len()`.
    pub count: usize,
}

/// How a result was reached.
#[derive(Debug, Serialize, ToSchema)]
pub struct ViaOut {
    /// `lexical`, `vector`, `filter` (a cue of filters only: no text, no
    /// embedding; such results come newest first) or `edge`.
    pub kind: &'static str,
    /// For `edge`: ids from the seed to this memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<Vec<String>>,
}

/// One recall result.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecalledOut {
    /// The memory.
    pub memory: MemoryOut,
    /// Final rank score.
    pub score: f32,
    /// Activation reached (1 for seeds).
    pub activation: f32,
    /// Confidence after the forgetting curve.
    pub confidence: f32,
    /// How it was found.
    pub via: ViaOut,
}

impl From<&Recalled> for RecalledOut {
    fn from(r: &Recalled) -> Self {
        let via = match &r.via {
            Via::Lexical => ViaOut {
                kind: "lexical",
                path: None,
            },
            Via::Vector => ViaOut {
                kind: "vector",
                path: None,
            },
            Via::Filter => ViaOut {
                kind: "filter",
                path: None,
            },
            Via::Edge { path } => ViaOut {
                kind: "edge",
                path: Some(path.clone()),
            },
        };
        RecalledOut {
            memory: MemoryOut::from(&r.memory),
            score: r.score,
            activation: r.activation,
            confidence: r.confidence,
            via,
        }
    }
}

/// Answer to recall.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecallOut {
    /// Ranked results.
    pub results: Vec<RecalledOut>,
    /// `results.len()`.
    pub count: usize,
}

/// Answer to link.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinkOut {
    /// From.
    pub source: String,
    /// To.
    pub target: String,
    /// Strength.
    pub weight: f32,
}

/// Answer to consolidate.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsolidateOut {
    /// Memories looked at.
    pub examined: usize,
    /// Concepts created.
    pub concepts: usize,
    /// Memories that joined a concept.
    pub members: usize,
    /// Threshold used.
    pub threshold: f32,
    /// Unconsolidated memories still ahead in this lap through the space;
    /// 0: the next run starts again from the oldest.
    pub remaining: usize,
    /// This run passed the newest memory and went on from the oldest.
    pub wrapped: bool,
}

impl ConsolidateOut {
    pub(crate) fn new(r: ConsolidationReport, threshold: f32) -> Self {
        ConsolidateOut {
            examined: r.examined,
            concepts: r.concepts,
            members: r.members,
            threshold,
            remaining: r.remaining,
            wrapped: r.wrapped,
        }
    }
}

/// Memories per tier.
#[derive(Debug, Serialize, ToSchema)]
pub struct TiersOut {
    /// Records in the hot cache.
    pub hot: usize,
    /// Hot cache bound.
    pub hot_capacity: usize,
    /// In the warm tier.
    pub warm: usize,
    /// Archived in the cold tier.
    pub cold: usize,
}

/// A memory space and its figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpaceOut {
    /// Name.
    pub id: String,
    /// Memories stored.
    pub memories: usize,
    /// Embedding dimension, once fixed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dim: Option<u32>,
    /// Association edges.
    pub edges: usize,
    /// Distinct terms in the lexical index.
    pub terms: usize,
    /// Tier sizes.
    pub tiers: TiersOut,
    /// Vectors not yet linked into the HNSW graph.
    pub unlinked_vectors: usize,
    /// Removed vectors whose memory is not reclaimed yet.
    pub vector_tombstones: usize,
}

impl From<&SpaceStats> for SpaceOut {
    fn from(s: &SpaceStats) -> Self {
        SpaceOut {
            id: s.name.clone(),
            memories: s.memories,
            embedding_dim: s.embedding_dim,
            edges: s.edges,
            terms: s.terms,
            tiers: TiersOut {
                hot: s.hot,
                hot_capacity: s.hot_capacity,
                warm: s.memories.saturating_sub(s.cold),
                cold: s.cold,
            },
            unlinked_vectors: s.unlinked_vectors,
            vector_tombstones: s.vector_tombstones,
        }
    }
}

/// Answer to list spaces.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpacesOut {
    /// Every space.
    pub spaces: Vec<SpaceOut>,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthOut {
    /// `healthy`, `degraded` (starting, stopping, or ready with a space that
    /// could not be loaded: see the `spaces` check) or `unhealthy`.
    pub status: &'static str,
    /// Server version.
    pub version: &'static str,
}

/// `GET /health/alive`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliveOut {
    /// Always `alive`.
    pub status: &'static str,
}

/// One readiness check.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckOut {
    /// `recovery`, `wal`, `indexes` or `spaces` (spaces that could not be
    /// loaded, with the reasons).
    pub name: &'static str,
    /// `pass`, `warn` (the node serves, but not everything: `spaces` lists
    /// damaged spaces; readiness is not affected) or `fail`.
    pub status: &'static str,
    /// Detail.
    pub message: String,
}

/// WAL figures since the server started.
#[derive(Debug, Serialize, ToSchema)]
pub struct WalOut {
    /// Highest acknowledged log sequence number.
    pub last_lsn: u64,
    /// Highest LSN covered by fdatasync.
    pub synced_lsn: u64,
    /// Records appended.
    pub records: u64,
    /// Bytes appended.
    pub bytes: u64,
    /// fdatasync calls.
    pub fsyncs: u64,
    /// Mean fdatasync time in milliseconds (0 before the first).
    pub fsync_mean_ms: f64,
    /// Segment files on disk.
    pub segments: u64,
}

/// RocksDB figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageOut {
    /// Bytes in the block cache.
    pub block_cache_usage_bytes: u64,
    /// Block cache capacity.
    pub block_cache_capacity_bytes: u64,
    /// Estimated bytes compaction has to rewrite.
    pub pending_compaction_bytes: u64,
    /// Live SST bytes.
    pub sst_bytes: u64,
    /// Memtable bytes.
    pub memtable_bytes: u64,
}

/// `GET /api/v1/system/health` and `/health/ready`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SystemHealthOut {
    /// `healthy` when ready (also with a damaged space: the `spaces` check
    /// says `warn`), else `unhealthy`.
    pub status: &'static str,
    /// True once recovery and warm-up finished (false again while stopping).
    pub ready: bool,
    /// Server version.
    pub version: &'static str,
    /// Seconds since the process started.
    pub uptime_seconds: u64,
    /// Individual checks.
    pub checks: Vec<CheckOut>,
    /// Every space with counts and tier sizes (empty until ready).
    pub spaces: Vec<SpaceOut>,
    /// WAL figures (absent until the storage is open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalOut>,
    /// RocksDB figures (absent until the storage is open).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageOut>,
}

/// Error detail.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case code.
    pub code: String,
    /// Human explanation.
    pub message: String,
}

/// Every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// `GET /cluster/health`: membership and placement as this node sees them.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterHealthOut {
    /// Whether this node runs cluster membership (`cluster.enabled`).
    pub enabled: bool,
    /// `healthy` (every member alive, placement settled, every replica
    /// live), `degraded` (a member suspect or down, a rebalance pending, or a
    /// replica not live), `unavailable` (some space has no live replica), or
    /// `standalone` (clustering disabled).
    pub status: &'static str,
    /// This node (absent when standalone).
    pub node: Option<ClusterMemberOut>,
    /// Every known member, this node included, by node id.
    pub members: Vec<ClusterMemberOut>,
    /// Copies of each space (`cluster.replication.replication_factor`).
    pub replication_factor: Option<u32>,
    /// Partitions spaces hash into (`cluster.replication.jump_buckets`).
    pub jump_buckets: Option<u32>,
    /// Rebalance state (absent when standalone).
    pub rebalance: Option<RebalanceOut>,
    /// Placement of every space this node knows.
    pub spaces: Vec<SpacePlacementOut>,
    /// The metadata group as this node sees it (absent when standalone or
    /// before storage recovered).
    pub metadata: Option<MetadataOut>,
    /// Replication of the spaces this node leads: one entry per copy (the
    /// primary's own first), as the primary sees it.
    pub replication: Vec<ReplicaLagOut>,
    /// Most records any copy lacks (0 when none lags or standalone).
    pub max_lag_records: u64,
    /// Age of the oldest record any copy lacks, in seconds.
    pub max_lag_seconds: f64,
}

/// One copy of a space as its primary sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplicaLagOut {
    /// Space name.
    pub space: String,
    /// Node holding the copy.
    pub replica: String,
    /// `primary` or `replica`.
    pub role: String,
    /// `primary`, `in_sync`, `catching_up`, `connecting`, `stalled`,
    /// `needs_snapshot` or `deposed`.
    pub state: String,
    /// Epoch of the space's assignment.
    pub epoch: u64,
    /// Last sequence number the primary wrote.
    pub primary_seq: u64,
    /// Last sequence number the copy holds durably.
    pub replica_seq: u64,
    /// `primary_seq - replica_seq`.
    pub lag_records: u64,
    /// Age of the oldest record the copy lacks, on the primary's clock
    /// (0 when in sync).
    pub lag_seconds: f64,
    /// Why the copy is stalled, if it is.
    pub detail: Option<String>,
}

impl From<&engram_replication::node::ReplicaStatus> for ReplicaLagOut {
    fn from(r: &engram_replication::node::ReplicaStatus) -> Self {
        ReplicaLagOut {
            space: r.space.clone(),
            replica: r.replica.clone(),
            role: r.role.to_owned(),
            state: r.state.clone(),
            epoch: r.epoch,
            primary_seq: r.primary_seq,
            replica_seq: r.replica_seq,
            lag_records: r.lag_records,
            lag_seconds: r.lag_seconds,
            detail: r.detail.clone(),
        }
    }
}

/// The metadata group (Raft) as one node sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetadataOut {
    /// Random id fixed when the group initialized the cluster (empty
    /// before).
    pub cluster_id: String,
    /// Node id of the leader this node knows (absent: none known, e.g.
    /// during an election or before the group formed).
    pub leader: Option<String>,
    /// Voters of the latest membership.
    pub voters: Vec<String>,
    /// Learners of the latest membership.
    pub learners: Vec<String>,
    /// `leader`, `follower`, `learner`, `candidate` or `shutdown`.
    pub role: &'static str,
    /// Current Raft term.
    pub term: u64,
    /// Index of the last entry applied to this node's copy.
    pub applied_index: u64,
    /// Nodes registered with the group.
    pub registered_nodes: Vec<String>,
}

impl From<engram_cluster::metadata::MetadataStatus> for MetadataOut {
    fn from(m: engram_cluster::metadata::MetadataStatus) -> Self {
        MetadataOut {
            cluster_id: m.cluster_id,
            leader: m.leader,
            voters: m.voters,
            learners: m.learners,
            role: m.role,
            term: m.term,
            applied_index: m.applied_index,
            registered_nodes: m.registered_nodes,
        }
    }
}

/// One cluster member.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterMemberOut {
    /// Node id.
    pub node_id: String,
    /// `alive`, `suspect` or `down`.
    pub state: &'static str,
    /// Advertised gossip address (UDP).
    pub gossip_addr: String,
    /// Advertised HTTP address.
    pub http_addr: String,
    /// Advertised gRPC address.
    pub grpc_addr: String,
    /// Advertised peer address (TCP, node-to-node RPCs).
    pub peer_addr: String,
    /// Rack (may be empty).
    pub rack: String,
    /// Zone (may be empty).
    pub zone: String,
    /// Process generation (start time in ms; higher after a restart).
    pub generation: u64,
    /// Whether this is the node answering.
    pub is_self: bool,
}

/// Rebalance state.
#[derive(Debug, Serialize, ToSchema)]
pub struct RebalanceOut {
    /// Node ids placement currently uses.
    pub placed_nodes: Vec<String>,
    /// A membership change waits for `rebalance_grace_ms`.
    pub pending: bool,
    /// How long it has waited, in milliseconds.
    pub pending_for_ms: Option<u64>,
    /// `cluster.replication.rebalance_grace_ms`.
    pub grace_ms: u64,
    /// Membership changes applied to placement since start.
    pub rebalances: u64,
    /// Partitions whose replica set changed since start.
    pub partitions_moved: u64,
}

/// Where one space lives.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpacePlacementOut {
    /// Space name.
    pub space: String,
    /// Partition (jump hash of the name).
    pub partition: u32,
    /// Primary replica's node id.
    pub primary: Option<String>,
    /// Replica set, primary first.
    pub replicas: Vec<String>,
    /// Replicas alive or suspect.
    pub live_replicas: u32,
    /// The committed assignment (cluster mode, once the metadata group
    /// created the space): what serves it, beside the desired placement
    /// above.
    pub assignment: Option<AssignmentOut>,
}

/// `POST /cluster/spaces/{space}/verify`: every copy of a space compared.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyOut {
    /// Space name.
    pub space: String,
    /// Its uid.
    pub uid: u64,
    /// Epoch of its assignment.
    pub epoch: u64,
    /// Its primary.
    pub primary: String,
    /// Every copy answered with the same applied sequence and digest.
    pub consistent: bool,
    /// One entry per member of the replica set.
    pub copies: Vec<CopyOut>,
}

/// One copy in a [`VerifyOut`].
#[derive(Debug, Serialize, ToSchema)]
pub struct CopyOut {
    /// Node.
    pub node: String,
    /// The node holds a copy.
    pub found: bool,
    /// Last sequence number applied to its store.
    pub applied_seq: Option<u64>,
    /// Memories in it.
    pub memories: Option<u64>,
    /// Digest over its contents (keys without the node-local space id).
    pub digest: Option<String>,
    /// Why the node could not be asked.
    pub error: Option<String>,
}

/// A space's committed assignment in the metadata group.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AssignmentOut {
    /// Cluster-wide id (never reused).
    pub uid: u64,
    /// Epoch (every change of primary or replica set bumps it).
    pub epoch: u64,
    /// The node that takes its writes.
    pub primary: String,
    /// Every node holding a copy, the primary included.
    pub replicas: Vec<String>,
    /// `active` or `deleting`.
    pub state: &'static str,
}

impl ClusterMemberOut {
    fn from_status(m: &engram_cluster::MemberStatus) -> Self {
        let i = &m.identity;
        ClusterMemberOut {
            node_id: i.node_id.clone(),
            state: m.state.as_str(),
            gossip_addr: i.gossip.to_string(),
            http_addr: i.http.to_string(),
            grpc_addr: i.grpc.to_string(),
            peer_addr: i.peer.to_string(),
            rack: i.rack.clone(),
            zone: i.zone.clone(),
            generation: i.generation,
            is_self: m.is_self,
        }
    }
}

impl ClusterHealthOut {
    /// A standalone node's answer.
    pub fn standalone(spaces: Vec<String>) -> Self {
        ClusterHealthOut {
            enabled: false,
            status: "standalone",
            node: None,
            members: Vec::new(),
            replication_factor: None,
            jump_buckets: None,
            rebalance: None,
            metadata: None,
            replication: Vec::new(),
            max_lag_records: 0,
            max_lag_seconds: 0.0,
            spaces: spaces
                .into_iter()
                .map(|space| SpacePlacementOut {
                    space,
                    partition: 0,
                    primary: None,
                    replicas: Vec::new(),
                    live_replicas: 0,
                    assignment: None,
                })
                .collect(),
        }
    }
}

impl From<engram_cluster::ClusterHealth> for ClusterHealthOut {
    fn from(h: engram_cluster::ClusterHealth) -> Self {
        use engram_cluster::HealthStatus;
        ClusterHealthOut {
            enabled: true,
            status: match h.status {
                HealthStatus::Healthy => "healthy",
                HealthStatus::Degraded => "degraded",
                HealthStatus::Unavailable => "unavailable",
            },
            node: Some(ClusterMemberOut::from_status(&h.node)),
            members: h
                .members
                .iter()
                .map(ClusterMemberOut::from_status)
                .collect(),
            replication_factor: Some(h.replication_factor as u32),
            jump_buckets: Some(h.jump_buckets),
            rebalance: Some(RebalanceOut {
                placed_nodes: h.rebalance.placed_nodes,
                pending: h.rebalance.pending,
                pending_for_ms: h.rebalance.pending_for_ms,
                grace_ms: h.rebalance.grace_ms,
                rebalances: h.rebalance.rebalances,
                partitions_moved: h.rebalance.partitions_moved,
            }),
            spaces: h
                .spaces
                .into_iter()
                .map(|s| SpacePlacementOut {
                    space: s.space,
                    partition: s.partition,
                    primary: s.primary,
                    replicas: s.replicas,
                    live_replicas: s.live_replicas as u32,
                    assignment: None,
                })
                .collect(),
            metadata: None,
            replication: Vec::new(),
            max_lag_records: 0,
            max_lag_seconds: 0.0,
        }
    }
}

/// A write's concern in a cluster (`X-Write-Concern` or `write_concern`;
/// default `[replication] default_write_concern`); a standalone node
/// checks it and ignores it.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteConcernParam {
    /// Durable on the primary.
    Primary,
    /// Durable on a majority of the replication factor's copies.
    Quorum,
    /// Durable on every copy.
    All,
}
