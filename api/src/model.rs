//! Request bodies and response shapes (ARCHITECTURE.md "API shapes").
//! Unknown fields in a request are an error, never silently ignored.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use engram_graph::{Cue, LinkSpec, Memory, Recalled, RememberRequest, SpaceStats, Spread, Via};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::ApiError;

/// Milliseconds since the epoch as RFC 3339 UTC (times before 1970 print as
/// the epoch).
pub(crate) fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn parse_time(field: &'static str, s: &str) -> Result<i64, ApiError> {
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("{field}: {e} (expected RFC 3339, e.g. 2026-01-31T12:00:00Z)"),
        )
    })?;
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    i64::try_from(ms)
        .map_err(|_| ApiError::bad_request("invalid_request", format!("{field}: out of range")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkBody {
    pub target: String,
    pub weight: Option<f32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RememberBody {
    content: String,
    confidence: Option<f32>,
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    tags: Vec<String>,
    metadata: Option<Map<String, Value>>,
    occurred_at: Option<String>,
    session: Option<String>,
    #[serde(default)]
    links: Vec<LinkBody>,
    #[serde(default)]
    dedupe: bool,
}

impl RememberBody {
    pub(crate) fn into_request(self) -> Result<RememberRequest, ApiError> {
        Ok(RememberRequest {
            content: self.content,
            confidence: self.confidence,
            embedding: self.embedding,
            tags: self.tags,
            metadata: self.metadata.unwrap_or_default(),
            occurred_at_ms: self
                .occurred_at
                .as_deref()
                .map(|s| parse_time("occurred_at", s))
                .transpose()?,
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CueBody {
    text: Option<String>,
    embedding: Option<Vec<f32>>,
    #[serde(default)]
    tags: Vec<String>,
    from: Option<String>,
    to: Option<String>,
    min_confidence: Option<f32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpreadBody {
    depth: Option<u32>,
    decay: Option<f32>,
    threshold: Option<f32>,
    fan_out: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecallBody {
    cue: CueBody,
    limit: Option<usize>,
    spread: Option<SpreadBody>,
}

impl RecallBody {
    pub(crate) fn into_parts(self) -> Result<(Cue, usize, Spread), ApiError> {
        let c = self.cue;
        let cue = Cue {
            text: c.text,
            embedding: c.embedding,
            tags: c.tags,
            from_ms: c
                .from
                .as_deref()
                .map(|s| parse_time("cue.from", s))
                .transpose()?,
            to_ms: c
                .to
                .as_deref()
                .map(|s| parse_time("cue.to", s))
                .transpose()?,
            min_confidence: c.min_confidence,
        };
        let d = Spread::default();
        let s = self.spread.unwrap_or_default();
        let spread = Spread {
            depth: s.depth.unwrap_or(d.depth),
            decay: s.decay.unwrap_or(d.decay),
            threshold: s.threshold.unwrap_or(d.threshold),
            fan_out: s.fan_out.unwrap_or(d.fan_out),
        };
        Ok((cue, self.limit.unwrap_or(10), spread))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpaceBody {
    pub id: String,
    pub embedding_dim: Option<u32>,
    pub hot_capacity: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsolidateBody {
    pub threshold: Option<f32>,
}

pub(crate) fn memory_json(m: &Memory) -> Value {
    let mut v = json!({
        "id": m.id,
        "space": m.space,
        "content": m.content,
        "confidence": m.confidence,
        "tags": m.tags,
        "metadata": m.metadata,
        "occurred_at": rfc3339(m.occurred_at_ms),
        "stored_at": rfc3339(m.stored_at_ms),
        "access_count": m.access_count,
        "concept": m.concept,
    });
    if let Some(o) = v.as_object_mut() {
        if let Some(s) = &m.session {
            o.insert("session".into(), json!(s));
        }
        if let Some(t) = m.last_access_ms {
            o.insert("last_accessed_at".into(), json!(rfc3339(t)));
        }
        if let Some(e) = &m.embedding {
            o.insert("embedding".into(), json!(e));
        }
    }
    v
}

pub(crate) fn recalled_json(r: &Recalled) -> Value {
    let via = match &r.via {
        Via::Lexical => json!({"kind": "lexical"}),
        Via::Vector => json!({"kind": "vector"}),
        Via::Edge { path } => json!({"kind": "edge", "path": path}),
    };
    json!({
        "memory": memory_json(&r.memory),
        "score": r.score,
        "activation": r.activation,
        "confidence": r.confidence,
        "via": via,
    })
}

pub(crate) fn space_json(s: &SpaceStats) -> Value {
    let mut v = json!({
        "id": s.name,
        "memories": s.memories,
        "edges": s.edges,
        "terms": s.terms,
        "tiers": {"hot": s.hot, "hot_capacity": s.hot_capacity, "warm": s.memories - s.cold, "cold": s.cold},
        "unlinked_vectors": s.unlinked_vectors,
    });
    if let (Some(o), Some(d)) = (v.as_object_mut(), s.embedding_dim) {
        o.insert("embedding_dim".into(), json!(d));
    }
    v
}
