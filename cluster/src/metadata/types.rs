//! openraft type configuration of the metadata group.

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

use super::state::{Command, Outcome};
use crate::placement::stable_hash;

/// Raft node id: the stable hash of the node's name (`cluster.node_id`).
pub type RaftId = u64;

/// A member of the metadata group as openraft stores it in memberships:
/// its name and the peer address it had when it was added. Connections
/// prefer the address gossip currently reports for the name (pod IPs
/// change); this one is the fallback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaNode {
    /// Node id (`cluster.node_id`).
    pub name: String,
    /// `host:port` of its peer port when it was added.
    pub peer_addr: String,
}

impl fmt::Display for MetaNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// Types of Engram's metadata group.
    pub TypeConfig:
        D = Command,
        R = Outcome,
        NodeId = RaftId,
        Node = MetaNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log entry of the metadata group.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log id of the metadata group.
pub type LogId = openraft::LogId<RaftId>;
/// openraft's storage error for this group.
pub type StorageError = openraft::StorageError<RaftId>;
/// The Raft handle of the metadata group.
pub type MetaRaft = openraft::Raft<TypeConfig>;

/// The raft id of the node called `name`.
pub fn raft_id(name: &str) -> RaftId {
    stable_hash(name.as_bytes())
}
