//! Replication on a node (feature `node`): the thin adapters around the
//! protocol cores. [`Replicator`] takes the committed assignments of the
//! metadata group ([`Assignment`]) and, per space, either leads it
//! (creates it locally, ships its records to the other members and tells
//! writers when their write concern holds) or holds a copy (answers the
//! primary's handshakes and batches through [`ReplicationService`]).
//!
//! The graph is told who may originate writes ([`engram_graph::WriteAuthority`]):
//! only the primary of a space; a replica only appends what its primary
//! sent, under the primary's sequence numbers (invariant 4).
//!
//! [`ReplicationService`]: proto::replication_service_server::ReplicationService

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use engram_graph::{Graph, GraphError, WriteAuthority};
use engram_lsm::SpaceId;
use prometheus::Registry;
use tonic::transport::Channel;

use crate::codec::{BatchLimits, EncodeOptions};
use crate::protocol::Concern;

mod digest;
mod feed;
mod metrics;
mod primary;
mod replica;
mod service;
mod ship;
mod snapshot;
mod wal_tail;

pub use digest::SpaceDigest;
pub use service::ReplicationPeerService;

use feed::Feed;
use metrics::Metrics;
use primary::PrimaryRole;
use replica::ReplicaSlot;

/// The generated gRPC code of `proto/replication.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("engram.replication.v1");
}

/// Settings (`[replication]`).
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// How long a write waits for its concern before the 503 (default 5 s).
    pub write_timeout: Duration,
    /// Largest batch, uncompressed.
    pub limits: BatchLimits,
    /// Compression of batches.
    pub encode: EncodeOptions,
    /// Bytes of recent records kept per space for replicas that lag.
    pub recent_records_bytes: usize,
    /// WAL bytes per space kept for members that lag beyond the ring;
    /// a member further behind gets a snapshot.
    pub max_retained_wal_bytes: usize,
    /// Bound of one peer call.
    pub rpc_timeout: Duration,
    /// Wait between attempts to reach a replica that did not answer.
    pub retry: Duration,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            write_timeout: Duration::from_secs(5),
            limits: BatchLimits::default(),
            encode: EncodeOptions::default(),
            recent_records_bytes: 64 << 20,
            max_retained_wal_bytes: 1 << 30,
            rpc_timeout: Duration::from_secs(5),
            retry: Duration::from_millis(200),
        }
    }
}

/// The committed assignment of one space, as the metadata group holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Cluster-wide uid.
    pub uid: u64,
    /// Name.
    pub name: String,
    /// Epoch of the assignment.
    pub epoch: u64,
    /// The node that takes writes.
    pub primary: String,
    /// Every member, the primary included.
    pub replicas: Vec<String>,
    /// Embedding dimension the space was created with.
    pub embedding_dim: Option<u32>,
    /// Its hot-tier capacity, if set.
    pub hot_capacity: Option<u32>,
    /// Deletion was requested.
    pub deleting: bool,
}

/// Where the peer port of a node is.
pub trait PeerDirectory: Send + Sync + std::fmt::Debug {
    /// `host:port` of `node`'s peer port, if known.
    fn peer_addr(&self, node: &str) -> Option<String>;
    /// The cluster id peers must carry ("" while unknown).
    fn cluster_id(&self) -> String;
}

/// Why a write's concern did not hold, or replication refused something.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The write is durable here but not yet on enough copies.
    #[error(
        "write {seq} of space {space:?} is durable on the primary but was not confirmed by enough replicas within {timeout_ms} ms; its outcome is unknown: read it back before retrying"
    )]
    Timeout {
        /// Space.
        space: String,
        /// Sequence number of the write.
        seq: u64,
        /// The configured bound.
        timeout_ms: u64,
    },
    /// The replica set is smaller than a quorum of the replication factor.
    #[error(
        "space {space:?} has {members} copies assigned, fewer than the {quorum} a quorum of the replication factor needs; write with write_concern=primary or add nodes"
    )]
    Insufficient {
        /// Space.
        space: String,
        /// Members of its replica set.
        members: usize,
        /// Copies a quorum needs.
        quorum: usize,
    },
    /// This node stopped leading the space while the write waited.
    #[error(
        "this node stopped being the primary of space {space:?} while write {seq} waited; its outcome is unknown: read it back before retrying"
    )]
    RoleLost {
        /// Space.
        space: String,
        /// Sequence number of the write.
        seq: u64,
    },
    /// The graph refused.
    #[error(transparent)]
    Graph(#[from] GraphError),
    /// The node's store failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

/// The role of a local space.
#[derive(Debug, Clone)]
enum Role {
    Primary(Arc<PrimaryRole>),
    Replica {
        #[allow(dead_code)]
        uid: u64,
        primary: Option<String>,
    },
}

/// Who holds which role, by local space id: the graph's write authority.
/// Holds no reference to the graph (the graph holds this).
#[derive(Debug, Default)]
struct Roles {
    by_local: RwLock<HashMap<SpaceId, Role>>,
}

impl WriteAuthority for Roles {
    fn admit(&self, space: SpaceId, name: &str) -> Result<(), GraphError> {
        match read(&self.by_local).get(&space) {
            Some(Role::Primary(p)) if !p.deposed() => Ok(()),
            Some(Role::Primary(_)) => Err(GraphError::NotPrimary {
                space: name.to_owned(),
                primary: None,
            }),
            Some(Role::Replica { primary, .. }) => Err(GraphError::NotPrimary {
                space: name.to_owned(),
                primary: primary.clone(),
            }),
            None => Err(GraphError::NotPrimary {
                space: name.to_owned(),
                primary: None,
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) struct Inner {
    node: String,
    /// Drawn at start: replicas tell a restarted primary from the old one.
    incarnation: u64,
    graph: Arc<Graph>,
    feed: Arc<Feed>,
    config: ReplicationConfig,
    directory: Arc<dyn PeerDirectory>,
    roles: Arc<Roles>,
    /// Replicated spaces this node knows, by uid → local id.
    uids: RwLock<HashMap<u64, SpaceId>>,
    /// Copies held as a replica, by uid.
    slots: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<ReplicaSlot>>>>,
    /// Spaces led here, by uid.
    primaries: Mutex<HashMap<u64, Arc<PrimaryRole>>>,
    /// The replication factor (quorums are `⌊RF/2⌋+1` of it).
    replication_factor: AtomicUsize,
    clients: Mutex<
        HashMap<
            String,
            (
                String,
                proto::replication_service_client::ReplicationServiceClient<Channel>,
            ),
        >,
    >,
    metrics: Metrics,
    /// Serialises [`Replicator::apply`].
    applying: tokio::sync::Mutex<()>,
    /// Spaces assigned to this node at an epoch an earlier process was
    /// promised: uid → that epoch (the coordinator moves them to a new one).
    stale_epochs: Mutex<HashMap<u64, u64>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Replication on this node; cheap to clone.
#[derive(Debug, Clone)]
pub struct Replicator {
    inner: Arc<Inner>,
}

impl Replicator {
    /// Attaches replication to `graph` (opened without default spaces):
    /// installs the feed and the write authority and reads the replicated
    /// spaces this node holds. Shippers start when assignments arrive
    /// ([`Replicator::apply`]).
    pub fn start(
        node: &str,
        graph: Arc<Graph>,
        config: ReplicationConfig,
        directory: Arc<dyn PeerDirectory>,
        registry: Option<&Registry>,
    ) -> Result<Replicator, ReplicationError> {
        let feed = Arc::new(Feed::new(
            config.recent_records_bytes,
            config.max_retained_wal_bytes,
        ));
        let roles = Arc::new(Roles::default());
        if !graph.engine().set_observer(feed.clone()) {
            return Err(ReplicationError::Storage(
                "the engine's append observer is taken".into(),
            ));
        }
        if !graph.set_write_authority(roles.clone()) {
            return Err(ReplicationError::Storage(
                "the graph's write authority is taken".into(),
            ));
        }
        let metrics =
            Metrics::new(registry).map_err(|e| ReplicationError::Storage(e.to_string()))?;
        let inner = Arc::new(Inner {
            node: node.to_owned(),
            incarnation: rand::random(),
            graph,
            feed,
            config,
            directory,
            roles,
            uids: RwLock::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            primaries: Mutex::new(HashMap::new()),
            replication_factor: AtomicUsize::new(1),
            clients: Mutex::new(HashMap::new()),
            metrics,
            applying: tokio::sync::Mutex::new(()),
            stale_epochs: Mutex::new(HashMap::new()),
        });
        replica::load_slots(&inner)?;
        set_fail_points();
        Ok(Replicator { inner })
    }

    /// The gRPC service replicas answer on (the peer port).
    pub fn service(
        &self,
    ) -> proto::replication_service_server::ReplicationServiceServer<ReplicationPeerService> {
        let max = self.inner.config.limits.max_batch_bytes as usize + (1 << 20);
        proto::replication_service_server::ReplicationServiceServer::new(
            ReplicationPeerService::new(self.inner.clone()),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Takes the committed assignments (every space of the cluster), the
    /// uids of deleted spaces and the configured replication factor:
    /// starts leading the spaces assigned to this node as primary (creating
    /// them here first), stops leading the others, notes which copies it
    /// holds for whom, deletes the spaces being deleted that it leads, and
    /// drops its copies of retired spaces. Returns the uids whose deletion
    /// reached a quorum from here (the metadata group may retire them).
    /// Blocking work runs off the async threads.
    pub async fn apply(
        &self,
        replication_factor: usize,
        assignments: &[Assignment],
        retired: &[u64],
    ) -> Vec<u64> {
        let _one = self.inner.applying.lock().await;
        self.inner
            .replication_factor
            .store(replication_factor.max(1), Ordering::SeqCst);
        let mut deleted = Vec::new();
        for a in assignments {
            let outcome = if a.deleting {
                // A restarted primary leads it again first (a new epoch),
                // so its deletion is replicated like any write.
                let must_lead = a.primary == self.inner.node
                    && !lock(&self.inner.primaries).contains_key(&a.uid)
                    && self.inner.local_of(a.uid).is_some();
                let led = if must_lead {
                    primary::apply_assignment(&self.inner, a).await
                } else {
                    Ok(())
                };
                match led {
                    Ok(()) => primary::delete(&self.inner, a).await.map(|done| {
                        if done {
                            deleted.push(a.uid);
                        }
                    }),
                    Err(e) => Err(e),
                }
            } else {
                primary::apply_assignment(&self.inner, a).await
            };
            if let Err(e) = outcome {
                tracing::warn!(space = %a.name, uid = a.uid, error = %e, "applying the space's assignment failed; retried with the next change");
            }
        }
        primary::stop_unassigned(&self.inner, assignments);
        replica::drop_retired(&self.inner, retired).await;
        deleted
    }

    /// Spaces this node should lead but may not at their current epoch (an
    /// earlier process of it was promised that epoch: epochs are
    /// single-use): uid → epoch. The metadata group must assign them a new
    /// epoch (same members).
    pub fn needs_new_epoch(&self) -> Vec<(u64, u64)> {
        lock(&self.inner.stale_epochs)
            .iter()
            .map(|(u, e)| (*u, *e))
            .collect()
    }

    /// Waits until write `seq` of local space `space` holds under
    /// `concern`. A space this node does not lead (any more) is
    /// [`ReplicationError::RoleLost`]: its writes are refused before they
    /// reach the log, so the write was taken under a role now gone.
    pub async fn wait(
        &self,
        space: SpaceId,
        seq: u64,
        concern: Concern,
    ) -> Result<(), ReplicationError> {
        let role = match read(&self.inner.roles.by_local).get(&space) {
            Some(Role::Primary(p)) => p.clone(),
            // Its write was admitted, so this node led the space then: it
            // no longer does, and the write's fate is not known here.
            _ => {
                return Err(ReplicationError::RoleLost {
                    space: format!("#{space}"),
                    seq,
                });
            }
        };
        primary::wait(&self.inner, &role, seq, concern).await
    }

    /// Refuses, before anything is written, a write to local space `space`
    /// under `concern` that cannot hold because the space's replica set is
    /// smaller than a quorum of the replication factor. Spaces not led here
    /// pass (the graph refuses their writes).
    pub fn check(&self, space: SpaceId, concern: Concern) -> Result<(), ReplicationError> {
        if concern == Concern::Primary {
            return Ok(());
        }
        match read(&self.inner.roles.by_local).get(&space) {
            Some(Role::Primary(p)) => p.check_members(),
            _ => Ok(()),
        }
    }

    /// Whether this node leads space `uid` now.
    pub fn leads(&self, uid: u64) -> bool {
        lock(&self.inner.primaries)
            .get(&uid)
            .is_some_and(|p| !p.deposed())
    }

    /// Replication status of every space led or held here.
    pub fn status(&self) -> Vec<ReplicaStatus> {
        // The lag gauges are set below for the copies that exist now:
        // series of copies gone (moved, deleted, no longer led here) go.
        self.inner.metrics.lag_records.reset();
        self.inner.metrics.lag_seconds.reset();
        let mut out = Vec::new();
        let primaries: Vec<Arc<PrimaryRole>> =
            lock(&self.inner.primaries).values().cloned().collect();
        for p in primaries {
            out.extend(p.status(&self.inner));
        }
        // Per space, the primary's own entry first.
        out.sort_by(|a, b| {
            (&a.space, a.role != "primary", &a.replica).cmp(&(
                &b.space,
                b.role != "primary",
                &b.replica,
            ))
        });
        out
    }

    /// The digest of this node's copy of space `uid` (`None`: no copy).
    pub async fn digest(&self, uid: u64) -> Result<Option<SpaceDigest>, ReplicationError> {
        digest::local(&self.inner, uid).await
    }

    /// The digest of `node`'s copy of space `uid`, over the peer port.
    pub async fn peer_digest(
        &self,
        node: &str,
        uid: u64,
    ) -> Result<Option<SpaceDigest>, ReplicationError> {
        if node == self.inner.node {
            return self.digest(uid).await;
        }
        digest::remote(&self.inner, node, uid).await
    }

    /// Ships what the spaces led here still owe the copies in session,
    /// for at most `limit`: at shutdown, after the listeners drained, so a
    /// replica is not left behind by a restart (the recent-records ring
    /// does not survive one).
    pub async fn drain(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let primaries: Vec<Arc<PrimaryRole>> =
                lock(&self.inner.primaries).values().cloned().collect();
            let owed = primaries.iter().any(|p| p.owes(&self.inner));
            if !owed || std::time::Instant::now() >= deadline {
                if owed {
                    tracing::warn!(
                        limit_ms = limit.as_millis() as u64,
                        "stopping with records not yet on every copy in session; the copies that lack them get a snapshot when this node is back"
                    );
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops every shipper (waiting writes fail with an unknown outcome).
    pub fn shutdown(&self) {
        let primaries: Vec<Arc<PrimaryRole>> = lock(&self.inner.primaries)
            .drain()
            .map(|(_, p)| p)
            .collect();
        for p in primaries {
            p.stop(&self.inner);
        }
    }
}

/// One (space, replica) pair as the primary sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// Space.
    pub space: String,
    /// Uid.
    pub uid: u64,
    /// The member.
    pub replica: String,
    /// `primary` or `replica`.
    pub role: &'static str,
    /// The primary's own entry: `primary` or `deposed`; a member's:
    /// `in_sync`, `catching_up`, `needs_snapshot`, `connecting`, `stalled`.
    pub state: String,
    /// Epoch.
    pub epoch: u64,
    /// Last sequence number the primary appended.
    pub primary_seq: u64,
    /// Last sequence number the member has durably.
    pub replica_seq: u64,
    /// `primary_seq - replica_seq`.
    pub lag_records: u64,
    /// Age of the oldest record the member lacks, on the primary's clock.
    pub lag_seconds: f64,
    /// Why the member is stalled, if it is.
    pub detail: Option<String>,
}

impl Inner {
    fn client(
        &self,
        node: &str,
    ) -> Option<proto::replication_service_client::ReplicationServiceClient<Channel>> {
        let addr = self.directory.peer_addr(node)?;
        let mut clients = lock(&self.clients);
        if let Some((a, c)) = clients.get(node)
            && *a == addr
        {
            return Some(c.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(self.config.rpc_timeout)
            .timeout(self.config.rpc_timeout)
            .tcp_nodelay(true);
        let max = self.config.limits.max_batch_bytes as usize + (1 << 20);
        let client = proto::replication_service_client::ReplicationServiceClient::new(
            endpoint.connect_lazy(),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        clients.insert(node.to_owned(), (addr, client.clone()));
        Some(client)
    }

    /// A client for a snapshot stream: no per-call timeout (a snapshot
    /// takes as long as the space is large; its sender bounds it).
    fn snapshot_client(
        &self,
        node: &str,
    ) -> Option<proto::replication_service_client::ReplicationServiceClient<Channel>> {
        let addr = self.directory.peer_addr(node)?;
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect_timeout(self.config.rpc_timeout)
            .tcp_nodelay(true);
        let max = self.config.limits.max_batch_bytes as usize + (1 << 20);
        Some(
            proto::replication_service_client::ReplicationServiceClient::new(
                endpoint.connect_lazy(),
            )
            .max_decoding_message_size(max)
            .max_encoding_message_size(max),
        )
    }

    fn header(&self, to: &str) -> proto::PeerHeader {
        proto::PeerHeader {
            from_node: self.node.clone(),
            to_node: to.to_owned(),
            cluster_id: self.directory.cluster_id(),
        }
    }

    fn local_of(&self, uid: u64) -> Option<SpaceId> {
        read(&self.uids).get(&uid).copied()
    }
}

/// Sets the fault points named in `ENGRAM_FAILPOINTS`
/// (`name=actions;name=actions`, the `fail` crate's syntax), for fault
/// tests. They act only in builds with the `failpoints` feature (test
/// builds); otherwise they are ignored.
fn set_fail_points() {
    let Ok(spec) = std::env::var("ENGRAM_FAILPOINTS") else {
        return;
    };
    for item in spec.split(';').filter(|i| !i.trim().is_empty()) {
        match item.split_once('=') {
            Some((name, actions)) => match fail::cfg(name.trim(), actions.trim()) {
                Ok(()) => tracing::warn!(
                    point = name.trim(),
                    actions = actions.trim(),
                    "fault point set (ENGRAM_FAILPOINTS)"
                ),
                Err(e) => {
                    tracing::warn!(point = name.trim(), error = %e, "ENGRAM_FAILPOINTS: cannot set the fault point")
                }
            },
            None => tracing::warn!(item, "ENGRAM_FAILPOINTS: expected name=actions"),
        }
    }
}
