//! The metadata group: a small Raft group (openraft 0.9.25) that every
//! node follows and that decides what must never fork — the cluster's
//! identity, space uids, and each space's epoch, primary and replica set
//! (design §4, review F2).
//!
//! - Voters are a static list, the same on every node (`[cluster.metadata]
//!   voters`; empty = this node alone); every other node is a learner that
//!   the leader adds. The list is a bootstrap hint: a pristine voter asks
//!   every other voter ([`network::probe`]) and initializes only when all
//!   answer "pristine"; any answer of "initialized" means it waits to be
//!   added, and a voter the running group still lists whose raft state is
//!   gone refuses to start ([`MetadataError::VoterWiped`]).
//! - The log and vote live in the node's RocksDB (`lsm`'s raft families,
//!   synced writes); the state machine ([`state::MetaState`]) is in memory,
//!   restored from its last snapshot plus the committed log.
//! - The leader proposes `InitCluster` with a random cluster id once; peer
//!   messages carry it and receivers refuse another one.
//! - Any node can [`MetadataGroup::propose`]: it forwards to the leader over
//!   the peer port (one hop) and returns the state machine's outcome.

mod bootstrap;
pub mod metrics;
pub mod network;
pub mod service;
pub mod state;
pub mod storage;
mod tasks;
pub mod types;

/// Generated peer protocol (`cluster/proto/peer.proto`).
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("engram.peer.v1");
}

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

pub use network::PeerResolver;
pub use pb::metadata_service_server::MetadataServiceServer;
pub use service::MetadataPeerService;
pub use state::{
    Command, EpochReason, MetaState, Outcome, Rejection, SpaceLifecycle, SpaceMeta, SpaceSettings,
};
pub use storage::RaftDisk;
pub use types::{MetaNode, RaftId, raft_id};

use network::{ForwardError, Network, Sender, propose_remote};
use storage::{LogStore, Shared, StateMachine, is_pristine, storage_id};
use types::MetaRaft;

/// How a node takes part in the metadata group.
#[derive(Debug, Clone)]
pub struct MetadataOptions {
    /// This node's name.
    pub node: String,
    /// `host:port` other nodes reach this node's peer port at.
    pub peer_addr: String,
    /// Voter names, the same list on every node; empty = this node alone.
    pub voters: Vec<String>,
    /// Copies of every space (fixed when the cluster is initialized).
    pub replication_factor: u8,
    /// Partitions (fixed when the cluster is initialized).
    pub jump_buckets: u32,
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Election timeout range (a follower that hears nothing for a random
    /// time in it starts an election).
    pub election_timeout: (Duration, Duration),
    /// A snapshot is taken after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log below the last snapshot (a follower that
    /// lags by more gets the snapshot).
    pub keep_after_snapshot: u64,
    /// Bound on one peer call and on connecting.
    pub rpc_timeout: Duration,
    /// How long [`MetadataGroup::propose`] keeps retrying without a leader.
    pub propose_timeout: Duration,
}

impl MetadataOptions {
    /// Production timings for `node` reachable at `peer_addr`.
    pub fn new(node: &str, peer_addr: &str, voters: Vec<String>) -> MetadataOptions {
        MetadataOptions {
            node: node.to_string(),
            peer_addr: peer_addr.to_string(),
            voters,
            replication_factor: 3,
            jump_buckets: 16_384,
            heartbeat: Duration::from_millis(250),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_every: 1000,
            keep_after_snapshot: 100,
            rpc_timeout: Duration::from_secs(2),
            propose_timeout: Duration::from_secs(10),
        }
    }

    /// The voter list in effect (this node alone when empty).
    pub fn effective_voters(&self) -> Vec<String> {
        if self.voters.is_empty() {
            vec![self.node.clone()]
        } else {
            self.voters.clone()
        }
    }
}

/// A proposal's result: the log index it was committed at and what the
/// state machine made of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// Log index.
    pub index: u64,
    /// Outcome.
    pub outcome: Outcome,
}

/// Why a forwarded proposal was not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ProposeError {
    /// The receiver does not lead (any more).
    #[error("not the metadata leader (leader: {leader:?})")]
    NotLeader {
        /// The leader it knows of.
        leader: Option<String>,
    },
    /// Raft failed.
    #[error("{0}")]
    Failed(String),
}

/// The group as one node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataStatus {
    /// Cluster id (empty before `InitCluster`).
    pub cluster_id: String,
    /// The leader this node knows.
    pub leader: Option<String>,
    /// Voters of the latest membership.
    pub voters: Vec<String>,
    /// Learners of the latest membership.
    pub learners: Vec<String>,
    /// This node's Raft role.
    pub role: &'static str,
    /// Current term.
    pub term: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Registered nodes.
    pub registered_nodes: Vec<String>,
}

/// The cluster's gossip view resolves peer addresses.
impl PeerResolver for crate::Cluster {
    fn peer_addr(&self, node: &str) -> Option<String> {
        crate::Cluster::peer_addr(self, node).map(|a| a.to_string())
    }
}

/// What [`MetadataGroup::bootstrap`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// The node already had raft state; Raft resumes from it.
    Resumed,
    /// This node initialized the group (with every other voter pristine).
    Initialized,
    /// Another voter is initialized: this node waits to be added.
    Joining,
    /// Not a voter: waits to be added as a learner.
    Learner,
}

/// Errors of the metadata group.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Raft storage failed.
    #[error("metadata storage: {0}")]
    Storage(String),
    /// openraft refused or failed.
    #[error("metadata group: {0}")]
    Raft(String),
    /// A configured voter has no raft state although the running group
    /// lists it.
    #[error(
        "metadata voter {node} has no raft state (wiped or new disk?) but the running group lists it as a voter ({voters:?}) and registered another data directory for it; start it with its old data directory: a voter that lost its state must not vote again (it may have voted and acknowledged entries it no longer holds)"
    )]
    VoterWiped {
        /// This node.
        node: String,
        /// The group's voters as a peer reported them.
        voters: Vec<String>,
    },
    /// No leader answered in time.
    #[error("the metadata group has no leader (waited {waited_ms} ms): {last}")]
    NoLeader {
        /// How long.
        waited_ms: u128,
        /// Last error seen.
        last: String,
    },
    /// Options are not usable.
    #[error("metadata options: {0}")]
    Options(String),
    /// Two pristine voters are configured with different voter lists:
    /// initializing would form two groups.
    #[error(
        "cluster.metadata.voters differs between nodes: this node ({node}) lists {ours:?}, {peer} lists {theirs:?}; set the same list on every node and start again"
    )]
    VoterMismatch {
        /// This node.
        node: String,
        /// Its list.
        ours: Vec<String>,
        /// The other node.
        peer: String,
        /// Its list.
        theirs: Vec<String>,
    },
    /// A proposal was sent but its outcome is not known (it may still
    /// commit): the caller must check the state before retrying.
    #[error("metadata proposal outcome unknown after {waited_ms} ms: {last}")]
    OutcomeUnknown {
        /// How long.
        waited_ms: u128,
        /// What happened.
        last: String,
    },
    /// The group is shutting down.
    #[error("the metadata group is shutting down")]
    Stopped,
}

struct Inner {
    raft: MetaRaft,
    shared: Arc<Shared>,
    sender: Sender,
    resolver: Arc<dyn PeerResolver>,
    disk: Arc<dyn RaftDisk>,
    opts: MetadataOptions,
    metrics: metrics::Metrics,
    storage_id: String,
    pristine_at_start: bool,
    /// Set once bootstrap decided this node may take part: until then the
    /// peer service refuses Raft messages, so a node that must not run
    /// (a wiped voter) never votes or takes entries.
    admitted: Arc<std::sync::atomic::AtomicBool>,
    /// Set by shutdown: bootstrap stops waiting.
    stopping: std::sync::atomic::AtomicBool,
    tasks: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

/// A node's handle on the metadata group; cheap to clone.
#[derive(Clone)]
pub struct MetadataGroup {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MetadataGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetadataGroup")
            .field("node", &self.inner.opts.node)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl MetadataGroup {
    /// Opens the group's storage on `disk` and starts Raft. Serve
    /// [`MetadataGroup::service`] on the peer port, then call
    /// [`MetadataGroup::bootstrap`].
    pub async fn start(
        opts: MetadataOptions,
        disk: Arc<dyn RaftDisk>,
        resolver: Arc<dyn PeerResolver>,
        registry: Option<&prometheus::Registry>,
    ) -> Result<MetadataGroup, MetadataError> {
        let metrics = metrics::Metrics::new(registry)
            .map_err(|e| MetadataError::Options(format!("registering metrics: {e}")))?;
        if opts.node.is_empty() {
            return Err(MetadataError::Options("the node name is empty".into()));
        }
        let voters = opts.effective_voters();
        let mut ids: Vec<RaftId> = voters.iter().map(|v| raft_id(v)).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != voters.len() {
            return Err(MetadataError::Options(format!(
                "voters {voters:?} name a node twice (or two names hash alike)"
            )));
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "engram-metadata".into(),
            heartbeat_interval: ms(opts.heartbeat),
            election_timeout_min: ms(opts.election_timeout.0),
            election_timeout_max: ms(opts.election_timeout.1),
            install_snapshot_timeout: ms(opts.rpc_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(opts.snapshot_every.max(1)),
            // Snapshot chunks travel as JSON (bytes become numbers, about
            // 3.5 times larger): keep a chunk well below the message limit.
            snapshot_max_chunk_size: network::SNAPSHOT_CHUNK_BYTES,
            max_in_snapshot_log_to_keep: opts.keep_after_snapshot,
            ..Config::default()
        }
        .validate()
        .map_err(|e| MetadataError::Options(e.to_string()))?;
        let pristine_at_start =
            is_pristine(disk.as_ref()).map_err(|e| MetadataError::Storage(e.to_string()))?;
        let storage_id =
            storage_id(disk.as_ref()).map_err(|e| MetadataError::Storage(e.to_string()))?;
        let sm =
            StateMachine::open(disk.clone()).map_err(|e| MetadataError::Storage(e.to_string()))?;
        let shared = sm.shared();
        let cluster_id = shared.read(|a| {
            a.state
                .cluster
                .as_ref()
                .map(|c| c.cluster_id.clone())
                .unwrap_or_default()
        });
        let sender = Sender {
            me: opts.node.clone(),
            cluster_id: Arc::new(RwLock::new(cluster_id)),
        };
        let network = Network {
            sender: sender.clone(),
            resolver: resolver.clone(),
            connect_timeout: opts.rpc_timeout,
        };
        let raft = MetaRaft::new(
            raft_id(&opts.node),
            Arc::new(config),
            network,
            LogStore::new(disk.clone()),
            sm,
        )
        .await
        .map_err(|e| MetadataError::Raft(e.to_string()))?;
        let group = MetadataGroup {
            inner: Arc::new(Inner {
                raft,
                shared,
                sender,
                resolver,
                disk,
                opts,
                metrics,
                storage_id,
                pristine_at_start,
                admitted: Arc::new(std::sync::atomic::AtomicBool::new(false)),
                stopping: std::sync::atomic::AtomicBool::new(false),
                tasks: std::sync::Mutex::new(Vec::new()),
            }),
        };
        group.spawn(group.clone().follow_cluster_id());
        group.spawn(group.clone().init_cluster_when_leading());
        group.spawn(group.clone().add_learners_when_leading());
        group.spawn(group.clone().update_gauges());
        Ok(group)
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(f);
        match self.inner.tasks.lock() {
            Ok(mut t) => t.push(handle),
            Err(p) => p.into_inner().push(handle),
        }
    }

    /// This data directory's storage id.
    pub fn storage_id(&self) -> &str {
        &self.inner.storage_id
    }

    /// The gRPC service to serve on the peer port.
    pub fn service(&self) -> MetadataServiceServer<MetadataPeerService> {
        MetadataServiceServer::new(MetadataPeerService {
            raft: self.inner.raft.clone(),
            sender: self.inner.sender.clone(),
            shared: self.inner.shared.clone(),
            disk: self.inner.disk.clone(),
            admitted: self.inner.admitted.clone(),
            voters: self.inner.opts.effective_voters(),
        })
        .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(network::MAX_MESSAGE_BYTES)
    }

    /// Proposes `command` through the leader (forwarded over the peer port
    /// when this node does not lead) and returns its outcome. Retries while
    /// there is no leader, up to `propose_timeout`.
    pub async fn propose(&self, command: Command) -> Result<Proposed, MetadataError> {
        let started = Instant::now();
        let result = self.propose_once(command).await;
        let m = &self.inner.metrics;
        m.proposal_seconds.observe(started.elapsed().as_secs_f64());
        let outcome = match &result {
            Ok(Proposed {
                outcome: Outcome::Rejected(_),
                ..
            }) => "rejected",
            Ok(_) => "applied",
            Err(_) => "failed",
        };
        m.proposals.with_label_values(&[outcome]).inc();
        result
    }

    /// Sends `command` to `target`'s `Propose` within `within`.
    async fn forward(
        &self,
        target: &str,
        command: &Command,
        within: Duration,
    ) -> Result<Result<Proposed, ProposeError>, ForwardError> {
        let inner = &self.inner;
        let Some(addr) = inner.resolver.peer_addr(target) else {
            return Err(ForwardError::NotSent(format!(
                "{target}: peer address unknown"
            )));
        };
        let json = serde_json::to_vec(command).map_err(|e| ForwardError::NotSent(e.to_string()))?;
        let bytes = propose_remote(&inner.sender, target, &addr, json, within).await?;
        serde_json::from_slice::<Result<Proposed, ProposeError>>(&bytes)
            .map_err(|e| ForwardError::Unknown(format!("undecodable answer from {target}: {e}")))
    }

    /// One proposal, bounded by `propose_timeout`: retried only while it
    /// certainly did not reach a leader (no leader known, refused by a
    /// non-leader, connection failed). A proposal that may have been
    /// delivered and timed out is [`MetadataError::OutcomeUnknown`], never
    /// sent twice.
    async fn propose_once(&self, command: Command) -> Result<Proposed, MetadataError> {
        let inner = &self.inner;
        let started = Instant::now();
        let deadline = started + inner.opts.propose_timeout;
        let mut last = String::from("no leader yet");
        let unknown = |last: String| MetadataError::OutcomeUnknown {
            waited_ms: started.elapsed().as_millis(),
            last,
        };
        while Instant::now() < deadline {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let local =
                tokio::time::timeout(remaining, inner.raft.client_write(command.clone())).await;
            match local {
                Err(_) => {
                    return Err(unknown(
                        "not committed in time by this node, the leader".into(),
                    ));
                }
                Ok(Ok(r)) => {
                    return Ok(Proposed {
                        index: r.log_id.index,
                        outcome: r.data,
                    });
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    // A node not in the membership yet (a new learner)
                    // knows no leader: ask the voters, who name it.
                    let mut targets: Vec<String> = match f.leader_node {
                        Some(node) => vec![node.name],
                        None => inner
                            .opts
                            .effective_voters()
                            .into_iter()
                            .filter(|v| *v != inner.opts.node)
                            .collect(),
                    };
                    let mut tried = 0;
                    while let Some(target) = targets.pop() {
                        tried += 1;
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        if tried > 8 || remaining.is_zero() {
                            break;
                        }
                        let within =
                            remaining.min(inner.opts.rpc_timeout.max(Duration::from_secs(5)));
                        match self.forward(&target, &command, within).await {
                            Ok(Ok(p)) => return Ok(p),
                            Ok(Err(ProposeError::NotLeader { leader })) => {
                                last = format!("{target} does not lead (leader: {leader:?})");
                                if let Some(l) = leader
                                    && l != target
                                {
                                    targets.push(l);
                                }
                            }
                            Ok(Err(ProposeError::Failed(e))) => return Err(MetadataError::Raft(e)),
                            Err(ForwardError::NotSent(e)) => last = e,
                            Err(ForwardError::Unknown(e)) => return Err(unknown(e)),
                        }
                    }
                }
                Ok(Err(e)) => return Err(MetadataError::Raft(e.to_string())),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(MetadataError::NoLeader {
            waited_ms: started.elapsed().as_millis(),
            last,
        })
    }

    /// Adds `node` (reachable at its gossiped peer address) as a learner.
    /// Only on the leader; returns once the learner caught up.
    pub async fn add_learner(&self, node: &str) -> Result<(), MetadataError> {
        let addr = self.inner.resolver.peer_addr(node).unwrap_or_default();
        self.inner
            .raft
            .add_learner(
                raft_id(node),
                MetaNode {
                    name: node.to_string(),
                    peer_addr: addr,
                },
                true,
            )
            .await
            .map(|_| ())
            .map_err(|e| MetadataError::Raft(e.to_string()))
    }

    /// A copy of the applied state.
    pub fn state(&self) -> MetaState {
        self.inner.shared.read(|a| a.state.clone())
    }

    /// Index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.inner
            .shared
            .read(|a| a.last_applied.map_or(0, |l| l.index))
    }

    /// The leader's name, if this node knows one.
    pub fn leader(&self) -> Option<String> {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.name.clone())
    }

    /// Voters and learners of the latest membership, by name.
    pub fn members(&self) -> (Vec<String>, Vec<String>) {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        let mem = m.membership_config.membership();
        let name = |id: RaftId| mem.get_node(&id).map(|n| n.name.clone());
        let voters = mem.voter_ids().filter_map(name).collect();
        let learners = mem.learner_ids().filter_map(name).collect();
        (voters, learners)
    }

    /// What `/cluster/health` shows of the group.
    pub fn status(&self) -> MetadataStatus {
        let (cluster_id, applied_index, registered_nodes) = self.inner.shared.read(|a| {
            (
                a.state
                    .cluster
                    .as_ref()
                    .map(|c| c.cluster_id.clone())
                    .unwrap_or_default(),
                a.last_applied.map_or(0, |l| l.index),
                a.state.nodes.keys().cloned().collect(),
            )
        });
        let (voters, learners) = self.members();
        let (role, term) = {
            let m = self.inner.raft.metrics();
            let m = m.borrow();
            let role = match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Learner => "learner",
                ServerState::Candidate => "candidate",
                ServerState::Shutdown => "shutdown",
            };
            (role, m.current_term)
        };
        MetadataStatus {
            cluster_id,
            leader: self.leader(),
            voters,
            learners,
            role,
            term,
            applied_index,
            registered_nodes,
        }
    }

    /// Is this node the leader?
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.opts.node
    }

    /// Stops Raft and the group's tasks.
    pub async fn shutdown(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let tasks = match self.inner.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(p) => std::mem::take(&mut *p.into_inner()),
        };
        for t in tasks {
            t.abort();
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "metadata: raft did not shut down cleanly");
        }
    }
}
