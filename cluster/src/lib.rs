//! # engram-cluster: membership and placement
//!
//! Owns which nodes form the cluster and where each memory space belongs
//! (ARCHITECTURE.md, "Cluster"). Replication, rebalance and migration build
//! on it; this crate moves no data.
//!
//! - [`membership`]: SWIM failure detection and gossip via `foca`, in one
//!   tokio task ([`Cluster`]). Each member gossips a [`NodeIdentity`]: node
//!   id, advertised gossip / HTTP / gRPC addresses, rack, zone, and a
//!   generation (a restarted node replaces its previous identity).
//! - [`advertise`]: the address peers learn. Invariant: never `0.0.0.0`,
//!   `::`, or loopback while any seed is not loopback.
//! - [`placement`]: pure functions. `space → partition` by jump hash over
//!   `jump_buckets` (fixed for the cluster's life); `partition → replica
//!   set` by rendezvous with rack/zone penalties; changes applied only after
//!   `rebalance_grace_ms` ([`placement::Rebalancer`]). Every node computes
//!   the same placement from the same membership.
//! - [`metadata`]: the metadata group (openraft) that decides the cluster
//!   id, space uids and each space's epoch, primary and replica set; its
//!   Raft log lives in `lsm`'s raft column families. Node-to-node RPCs run
//!   on the peer port (`peer`). Feature `metadata` (default); without it
//!   the crate does not depend on RocksDB (the fuzz crate builds it so).
//! - [`codec`]: the gossip wire format; decoding arbitrary bytes is an error,
//!   never a panic or a member with an invalid identity (fuzzed by
//!   `fuzz/fuzz_targets/gossip_decode.rs`).
//!
//! Callers: validate [`ClusterConfig`] (the server does at startup), start a
//! [`Cluster`] on a tokio runtime after the HTTP/gRPC listeners are bound
//! (their ports are gossiped), and call [`Cluster::leave`] at shutdown.

pub mod advertise;
pub mod codec;
pub mod config;
pub mod identity;
pub mod membership;
#[cfg(feature = "metadata")]
pub mod metadata;
#[cfg(feature = "metadata")]
pub mod peer;
pub mod placement;
#[cfg(feature = "metadata")]
pub mod spaces;

use std::net::SocketAddr;

pub use config::ClusterConfig;
pub use identity::NodeIdentity;
pub use membership::{
    Cluster, ClusterHealth, HealthStatus, MemberState, MemberStatus, RebalanceStatus,
    SpacePlacement, StartOptions,
};

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A configuration key has a bad value.
    #[error("config key {key:?}: {message}")]
    Config {
        /// Dotted key.
        key: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The advertised address would not reach this node.
    #[error("{0}")]
    Advertise(String),
    /// The gossip socket could not be bound.
    #[error(
        "cannot bind the gossip socket (config key \"cluster.network.swim_bind\") to {addr}: {source}"
    )]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("cluster metrics: {0}")]
    Metrics(String),
}
