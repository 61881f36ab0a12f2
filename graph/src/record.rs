//! Values stored in the warm tier, encoded with postcard (compact, serde).
//! Field order is part of the on-disk format: append new fields only.

use serde::{Deserialize, Serialize};

/// A space's persistent description (`meta` column family).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpaceRecord {
    /// Space name.
    pub name: String,
    /// Embedding dimension fixed at creation, if the space takes embeddings.
    pub embedding_dim: Option<u32>,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Records held in the hot tier's cache; the configured default if absent.
    pub hot_capacity: Option<u32>,
}

/// An episode as stored in the `episodes` column family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeRecord {
    /// Text of the memory.
    pub content: String,
    /// Confidence in [0, 1] at storage time.
    pub confidence: f32,
    /// Tags.
    pub tags: Vec<String>,
    /// Metadata, a JSON object in text form.
    pub metadata_json: String,
    /// Stream the episode belongs to.
    pub session: Option<String>,
    /// When it happened, ms since the Unix epoch.
    pub occurred_at_ms: i64,
    /// When it was stored, ms since the Unix epoch.
    pub stored_at_ms: i64,
    /// Length of the content in terms (for BM25).
    pub terms: u32,
    /// `true` for a concept made by consolidation.
    pub concept: bool,
}

/// Why an edge exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EdgeKind {
    /// Linked by a client.
    Explicit,
    /// Consecutive episodes of one session.
    Temporal,
    /// Nearest neighbours by embedding at write time.
    Semantic,
    /// Episode to the concept that consolidates it.
    Consolidation,
}

/// How often and when an episode was last recalled (`access` column family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccessRecord {
    /// Times returned by recall.
    pub count: u32,
    /// Last time returned by recall, ms since the Unix epoch.
    pub last_ms: i64,
}

impl AccessRecord {
    /// 12 bytes: count u32 BE, last access i64 BE.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&self.count.to_be_bytes());
        v.extend_from_slice(&self.last_ms.to_be_bytes());
        v
    }

    /// Inverse of [`AccessRecord::encode`].
    pub fn decode(b: &[u8]) -> Result<AccessRecord, crate::GraphError> {
        if b.len() != 12 {
            return Err(crate::GraphError::Corrupt(format!(
                "access record of {} bytes",
                b.len()
            )));
        }
        let mut c = [0; 4];
        let mut l = [0; 8];
        c.copy_from_slice(&b[..4]);
        l.copy_from_slice(&b[4..]);
        Ok(AccessRecord {
            count: u32::from_be_bytes(c),
            last_ms: i64::from_be_bytes(l),
        })
    }
}

/// An edge as stored in the `edges` column family.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EdgeRecord {
    /// Weight in (0, 1].
    pub weight: f32,
    /// Origin.
    pub kind: EdgeKind,
}

/// Encodes a record.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, crate::GraphError> {
    postcard::to_allocvec(v)
        .map_err(|e| crate::GraphError::Corrupt(format!("encoding a record: {e}")))
}

/// Decodes a record; `what` names it in the error.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T, crate::GraphError> {
    postcard::from_bytes(bytes).map_err(|e| crate::GraphError::Corrupt(format!("{what}: {e}")))
}

/// Embedding to bytes (little-endian f32).
pub fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Bytes to embedding.
pub fn vector_from_bytes(b: &[u8]) -> Result<Vec<f32>, crate::GraphError> {
    if b.len() % 4 != 0 {
        return Err(crate::GraphError::Corrupt(format!(
            "vector of {} bytes",
            b.len()
        )));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}
