//! A digest of a node's copy of a space: what `verify` compares across
//! the replicas. It covers every key and value of the space's data column
//! families, keys without their node-local space id prefix.

use engram_lsm::{Cf, SpaceId};

use super::proto;
use super::{Inner, ReplicationError};

/// What a node holds of a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpaceDigest {
    /// Node.
    pub node: String,
    /// Last sequence number applied to its store.
    pub applied_seq: u64,
    /// Memories (warm and cold).
    pub memories: u64,
    /// Hex: entries, bytes and two CRC32s over the contents.
    pub digest: String,
}

const FAMILIES: [Cf; 6] = [
    Cf::Episodes,
    Cf::Edges,
    Cf::Terms,
    Cf::Vectors,
    Cf::Cold,
    Cf::Access,
];

fn compute(inner: &Inner, local: SpaceId) -> Result<SpaceDigest, ReplicationError> {
    let store = inner.graph.engine().store();
    let storage = |e: engram_lsm::StoreError| ReplicationError::Storage(e.to_string());
    let mut forward = crc32fast::Hasher::new();
    let mut keyed = crc32fast::Hasher::new();
    let (mut entries, mut bytes, mut memories) = (0u64, 0u64, 0u64);
    for cf in FAMILIES {
        for entry in store.scan_space(cf, local).map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let key = k.get(4..).unwrap_or_default();
            forward.update(cf.name().as_bytes());
            forward.update(&(key.len() as u32).to_le_bytes());
            forward.update(key);
            forward.update(&(v.len() as u32).to_le_bytes());
            forward.update(&v);
            keyed.update(&v);
            keyed.update(key);
            entries += 1;
            bytes += (key.len() + v.len()) as u64;
            if matches!(cf, Cf::Episodes | Cf::Cold) {
                memories += 1;
            }
        }
    }
    Ok(SpaceDigest {
        node: inner.node.clone(),
        applied_seq: store.applied_seq(local).map_err(storage)?,
        memories,
        digest: format!(
            "{entries:x}-{bytes:x}-{:08x}{:08x}",
            forward.finalize(),
            keyed.finalize()
        ),
    })
}

/// The digest of this node's copy of `uid`, computed off the async threads.
pub(crate) async fn local(
    inner: &std::sync::Arc<Inner>,
    uid: u64,
) -> Result<Option<SpaceDigest>, ReplicationError> {
    let Some(local) = inner.local_of(uid) else {
        return Ok(None);
    };
    let i = inner.clone();
    tokio::task::spawn_blocking(move || compute(&i, local).map(Some))
        .await
        .map_err(|e| ReplicationError::Storage(e.to_string()))?
}

/// The digest of `node`'s copy, asked over the peer port.
pub(crate) async fn remote(
    inner: &Inner,
    node: &str,
    uid: u64,
) -> Result<Option<SpaceDigest>, ReplicationError> {
    let Some(mut client) = inner.client(node) else {
        return Err(ReplicationError::Storage(format!(
            "the peer address of node {node:?} is not known"
        )));
    };
    let answer = client
        .get_space_digest(proto::SpaceDigestRequest {
            header: Some(inner.header(node)),
            space_uid: uid,
        })
        .await
        .map_err(|s| ReplicationError::Storage(format!("node {node:?}: {}", s.message())))?
        .into_inner();
    Ok(answer.found.then_some(SpaceDigest {
        node: answer.node,
        applied_seq: answer.applied_seq,
        memories: answer.memories,
        digest: answer.digest,
    }))
}
