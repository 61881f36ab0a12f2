//! Spaces in cluster mode: what the metadata group committed, turned into
//! what this node does. A task on every node hands the committed
//! assignments to the [`Replicator`] (lead here, or hold a copy for
//! another node), retires deleted spaces once their deletion reached a
//! quorum, asks for a new epoch when this process may not lead the one it
//! was assigned (epochs are single-use: a restarted primary takes a new
//! one), and, on the metadata leader, creates `default` and the bootstrap
//! spaces once enough nodes registered (review F7).
//!
//! [`create_space`] and [`delete_space`] are what the API calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_replication::node::{Assignment, PeerDirectory, Replicator};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Cluster;
use crate::metadata::{
    Command, EpochReason, MetaState, MetadataError, MetadataGroup, Outcome, Rejection,
    SpaceLifecycle, SpaceMeta, SpaceSettings,
};
use crate::placement::{PlacementNode, PlacementParams, partition_of, replica_set};

/// Settings of the task.
#[derive(Debug, Clone)]
pub struct SpacesOptions {
    /// Spaces the metadata leader creates (besides `default`).
    pub bootstrap_spaces: Vec<String>,
    /// How long the leader waits for `replication_factor` registered live
    /// nodes before it creates them on fewer.
    pub bootstrap_wait: Duration,
}

/// Peer addresses from gossip, the cluster id from the metadata group.
#[derive(Debug, Clone)]
pub struct Directory {
    cluster: Arc<Cluster>,
    metadata: MetadataGroup,
}

impl Directory {
    /// The directory of `cluster`'s members.
    pub fn new(cluster: Arc<Cluster>, metadata: MetadataGroup) -> Directory {
        Directory { cluster, metadata }
    }
}

impl PeerDirectory for Directory {
    fn peer_addr(&self, node: &str) -> Option<String> {
        self.cluster.peer_addr(node).map(|a| a.to_string())
    }

    fn cluster_id(&self) -> String {
        self.metadata.status().cluster_id
    }
}

/// Why a space could not be created or deleted through the metadata group.
#[derive(Debug, thiserror::Error)]
pub enum SpaceChangeError {
    /// The name is taken.
    #[error("space {0:?} already exists")]
    Exists(String),
    /// No such space.
    #[error("space {0:?} does not exist")]
    NotFound(String),
    /// No node to place it on yet.
    #[error(
        "no registered node can hold the space yet; retry when the cluster's nodes have joined the metadata group"
    )]
    NoNodes,
    /// The group refused for another reason.
    #[error("the metadata group refused: {0}")]
    Refused(String),
    /// The group could not decide (no leader, timeout).
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

/// The assignment the replicator takes for `s`.
pub fn assignment_of(s: &SpaceMeta) -> Assignment {
    Assignment {
        uid: s.uid,
        name: s.name.clone(),
        epoch: s.epoch,
        primary: s.primary.clone(),
        replicas: s.replicas.clone(),
        embedding_dim: s.options.embedding_dim,
        hot_capacity: s.options.hot_capacity,
        deleting: s.state == SpaceLifecycle::Deleting,
    }
}

/// Registered nodes that gossip says are up, with their zones and racks.
fn live_registered(state: &MetaState, cluster: &Cluster) -> Vec<PlacementNode> {
    state
        .nodes
        .keys()
        .filter_map(|n| cluster.identity_of(n))
        .map(|i| PlacementNode {
            id: i.node_id,
            zone: i.zone,
            rack: i.rack,
        })
        .collect()
}

/// The replica set (primary first) a new space named `name` gets.
fn place(state: &MetaState, cluster: &Cluster, name: &str) -> Option<Vec<String>> {
    let info = state.cluster.as_ref()?;
    let nodes = live_registered(state, cluster);
    let params = PlacementParams {
        replication_factor: usize::from(info.replication_factor.max(1)),
        jump_buckets: info.jump_buckets,
        ..cluster.placement_params()
    };
    let set: Vec<String> = replica_set(partition_of(name, info.jump_buckets), &nodes, &params)
        .into_iter()
        .map(|n| n.id.clone())
        .collect();
    (!set.is_empty()).then_some(set)
}

/// Creates a space through the metadata group, placed over the registered
/// live nodes; returns its committed assignment.
pub async fn create_space(
    metadata: &MetadataGroup,
    cluster: &Cluster,
    name: &str,
    options: SpaceSettings,
) -> Result<SpaceMeta, SpaceChangeError> {
    let state = metadata.state();
    if state.spaces.contains_key(name) {
        return Err(SpaceChangeError::Exists(name.to_owned()));
    }
    let replicas = place(&state, cluster, name).ok_or(SpaceChangeError::NoNodes)?;
    let proposed = metadata
        .propose(Command::CreateSpace {
            name: name.to_owned(),
            primary: replicas[0].clone(),
            replicas,
            options,
        })
        .await?;
    match proposed.outcome {
        Outcome::Space(s) => Ok(s),
        Outcome::Rejected(Rejection::SpaceExists { name, .. }) => {
            Err(SpaceChangeError::Exists(name))
        }
        other => Err(SpaceChangeError::Refused(format!("{other:?}"))),
    }
}

/// Starts deleting a space through the metadata group (its primary drops
/// it and the deletion replicates).
pub async fn delete_space(
    metadata: &MetadataGroup,
    name: &str,
) -> Result<SpaceMeta, SpaceChangeError> {
    let state = metadata.state();
    let Some(s) = state.spaces.get(name) else {
        return Err(SpaceChangeError::NotFound(name.to_owned()));
    };
    let proposed = metadata
        .propose(Command::DeleteSpace {
            name: name.to_owned(),
            expect_uid: s.uid,
        })
        .await?;
    match proposed.outcome {
        Outcome::Space(s) => Ok(s),
        Outcome::Rejected(Rejection::NoSuchSpace(_)) => {
            Err(SpaceChangeError::NotFound(name.to_owned()))
        }
        other => Err(SpaceChangeError::Refused(format!("{other:?}"))),
    }
}

/// Starts the task (see the module documentation); it ends when `stop`
/// turns true.
pub fn spawn(
    metadata: MetadataGroup,
    cluster: Arc<Cluster>,
    replicator: Replicator,
    options: SpacesOptions,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut seen_index = None;
        let mut last_pass = Instant::now();
        loop {
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            if *stop.borrow() {
                break;
            }
            let index = metadata.applied_index();
            // Every change at once; a full pass every second retries what
            // failed (a node not reachable, an epoch to renew).
            if seen_index == Some(index) && last_pass.elapsed() < Duration::from_secs(1) {
                continue;
            }
            seen_index = Some(index);
            last_pass = Instant::now();
            pass(&metadata, &cluster, &replicator, &options, started).await;
        }
        // The server stops the shippers after its listeners drained.
    })
}

async fn pass(
    metadata: &MetadataGroup,
    cluster: &Cluster,
    replicator: &Replicator,
    options: &SpacesOptions,
    started: Instant,
) {
    let state = metadata.state();
    let Some(info) = state.cluster.clone() else {
        return;
    };
    let assignments: Vec<Assignment> = state.spaces.values().map(assignment_of).collect();
    let retired: Vec<u64> = state.retired.keys().copied().collect();
    let deleted = replicator
        .apply(usize::from(info.replication_factor), &assignments, &retired)
        .await;
    for uid in deleted {
        if let Err(e) = metadata.propose(Command::RetireSpace { uid }).await {
            tracing::warn!(uid, error = %e, "retiring a deleted space failed; retried");
        }
    }
    for (uid, epoch) in replicator.needs_new_epoch() {
        let Some(s) = state.space_by_uid(uid) else {
            continue;
        };
        if s.epoch != epoch || s.primary != replicator.node() {
            continue;
        }
        let proposed = metadata
            .propose(Command::SetAssignment {
                uid,
                expect_epoch: epoch,
                primary: s.primary.clone(),
                replicas: s.replicas.clone(),
                reason: EpochReason::PrimaryRestarted,
            })
            .await;
        match proposed {
            Ok(p) => {
                tracing::info!(space = %s.name, from_epoch = epoch, outcome = ?p.outcome, "asked for a new epoch: this process may not lead the one an earlier process was promised")
            }
            Err(e) => {
                tracing::warn!(space = %s.name, error = %e, "asking for a new epoch failed; retried")
            }
        }
    }
    if metadata.is_leader() {
        create_defaults(metadata, cluster, &state, options, started).await;
    }
}

/// On the leader: creates `default` and the bootstrap spaces that are
/// missing, once `replication_factor` registered nodes are up (or the
/// bootstrap wait passed), so their first replica set is full.
async fn create_defaults(
    metadata: &MetadataGroup,
    cluster: &Cluster,
    state: &MetaState,
    options: &SpacesOptions,
    started: Instant,
) {
    let Some(info) = &state.cluster else {
        return;
    };
    let wanted: Vec<&str> = std::iter::once(engram_graph::DEFAULT_SPACE)
        .chain(options.bootstrap_spaces.iter().map(String::as_str))
        .filter(|n| !state.spaces.contains_key(*n))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let live = live_registered(state, cluster).len();
    if live < usize::from(info.replication_factor) && started.elapsed() < options.bootstrap_wait {
        return;
    }
    for name in wanted {
        match create_space(metadata, cluster, name, SpaceSettings::default()).await {
            Ok(s) => {
                tracing::info!(space = name, primary = %s.primary, replicas = ?s.replicas, "created a space the configuration asks for")
            }
            Err(SpaceChangeError::Exists(_)) => {}
            Err(e) => {
                tracing::warn!(space = name, error = %e, "creating a space the configuration asks for failed; retried")
            }
        }
    }
}
