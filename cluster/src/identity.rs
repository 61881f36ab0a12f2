//! A member's identity as gossiped: who it is, where to reach it, where it
//! runs, and which run of the process it is.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::{MAX_NAME_BYTES, valid_location, valid_node_id};

/// One member of the cluster, as every datagram carries it.
///
/// foca's `Addr` of an identity is its advertised gossip address: a message
/// to a seed (whose identity is unknown yet) is accepted by whoever listens
/// there, and a restarted node (same address, higher `generation`) replaces
/// its previous identity everywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// Unique, stable node name (`cluster.node_id`).
    pub node_id: String,
    /// Advertised gossip address (UDP).
    pub gossip: SocketAddr,
    /// Advertised HTTP address.
    pub http: SocketAddr,
    /// Advertised gRPC address.
    pub grpc: SocketAddr,
    /// Advertised peer address (TCP, node-to-node RPCs).
    pub peer: SocketAddr,
    /// Rack (may be empty).
    pub rack: String,
    /// Zone (may be empty).
    pub zone: String,
    /// Which run of the process: start time in milliseconds since the Unix
    /// epoch, raised by one each time the node rejoins after being declared
    /// down. Higher wins.
    pub generation: u64,
}

impl NodeIdentity {
    /// A placeholder for a seed whose identity is not known yet: only its
    /// address matters (foca accepts an announce addressed to any identity
    /// with the receiver's address).
    pub fn seed(gossip: SocketAddr) -> NodeIdentity {
        NodeIdentity {
            node_id: String::new(),
            gossip,
            http: gossip,
            grpc: gossip,
            peer: gossip,
            rack: String::new(),
            zone: String::new(),
            generation: 0,
        }
    }

    /// Whether a decoded identity is well-formed (the decoder rejects others).
    pub fn is_valid(&self) -> bool {
        // Seed placeholders travel as announce destinations.
        (self.node_id.is_empty() && self.generation == 0 || valid_node_id(&self.node_id))
            && valid_location(&self.rack)
            && valid_location(&self.zone)
            && self.node_id.len() <= MAX_NAME_BYTES
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        // Declared down by the others (a long pause, a partition): come back
        // as a newer generation of the same node.
        Some(NodeIdentity {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.generation, &self.node_id) > (adversary.generation, &adversary.node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Identity;

    fn id(name: &str, generation: u64) -> NodeIdentity {
        let a: SocketAddr = "10.0.0.1:7946".parse().expect("addr");
        NodeIdentity {
            node_id: name.into(),
            gossip: a,
            http: a,
            grpc: a,
            peer: a,
            rack: String::new(),
            zone: String::new(),
            generation,
        }
    }

    #[test]
    fn a_restarted_node_wins_over_its_previous_run() {
        assert!(id("engram-0", 2).win_addr_conflict(&id("engram-0", 1)));
        assert!(!id("engram-0", 1).win_addr_conflict(&id("engram-0", 2)));
        let renewed = id("engram-0", 5).renew().expect("renews");
        assert_eq!(renewed.generation, 6);
        assert_eq!(renewed.addr(), id("engram-0", 5).addr());
    }

    #[test]
    fn malformed_identities_are_invalid() {
        assert!(id("engram-0", 1).is_valid());
        assert!(NodeIdentity::seed("10.0.0.1:7946".parse().expect("addr")).is_valid());
        assert!(!id("", 3).is_valid());
        assert!(!id("UPPER", 1).is_valid());
        let mut long = id("engram-0", 1);
        long.zone = "z".repeat(64);
        assert!(!long.is_valid());
    }
}
