//! The tokio adapter around foca: one task owns the foca state machine, the
//! UDP socket and the timers; everything else reads a snapshot.
//!
//! - Datagrams in → `Foca::handle_data`; foca's sends → the socket; foca's
//!   timers → `tokio::time::sleep` tasks that feed the timer back.
//! - Seeds are resolved (DNS allowed) at start and again whenever this node
//!   has no active peer, every `rejoin_interval_ms`: a node that lost every
//!   peer (partition, all others restarted with new addresses) rejoins by
//!   itself instead of waiting forever.
//! - Every 100 ms the live membership goes through the [`Rebalancer`], which
//!   applies it to placement once it has held for `rebalance_grace_ms`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use foca::{AccumulatingRuntime, Foca, OwnedNotification, PeriodicParams, State, Timer};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rand10::SeedableRng;
use rand10::rngs::SmallRng;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ClusterError;
use crate::advertise::{self, AdvertiseSource};
use crate::codec::GossipCodec;
use crate::config::{ClusterConfig, split_host_port, valid_node_id};
use crate::identity::NodeIdentity;
use crate::placement::{PlacementNode, PlacementParams, Rebalancer, partition_of, replica_set};

type Swim = Foca<NodeIdentity, GossipCodec, SmallRng, foca::NoCustomBroadcast>;

/// A member's liveness as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; may still refute.
    Suspect,
    /// Declared down by the cluster.
    Down,
}

impl MemberState {
    /// Lower-case name, as in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// One member (this node included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    /// Identity as gossiped.
    #[serde(flatten)]
    pub identity: NodeIdentity,
    /// Liveness.
    pub state: MemberState,
    /// Whether this is the node answering.
    pub is_self: bool,
}

/// Overall cluster state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Every member alive, placement settled, every replica of every space live.
    Healthy,
    /// Some member suspect or down, a rebalance pending, or a replica not live;
    /// every space still has a live replica.
    Degraded,
    /// Some space has no live replica.
    Unavailable,
}

/// Where one space lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpacePlacement {
    /// Space name.
    pub space: String,
    /// Its partition.
    pub partition: u32,
    /// The first replica, if any node is placed.
    pub primary: Option<String>,
    /// Replica set, primary first.
    pub replicas: Vec<String>,
    /// Replicas currently alive or suspect.
    pub live_replicas: usize,
}

/// Rebalance state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RebalanceStatus {
    /// Node ids placement currently uses.
    pub placed_nodes: Vec<String>,
    /// A changed membership is waiting for the grace period.
    pub pending: bool,
    /// How long it has waited, in milliseconds.
    pub pending_for_ms: Option<u64>,
    /// `rebalance_grace_ms`.
    pub grace_ms: u64,
    /// Rebalances applied since start.
    pub rebalances: u64,
    /// Partitions whose replica set changed since start.
    pub partitions_moved: u64,
}

/// Everything `/cluster/health` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterHealth {
    /// Overall state.
    pub status: HealthStatus,
    /// This node.
    pub node: MemberStatus,
    /// Every known member (this node included), by node id.
    pub members: Vec<MemberStatus>,
    /// `replication_factor`.
    pub replication_factor: usize,
    /// `jump_buckets`.
    pub jump_buckets: u32,
    /// Rebalance state.
    pub rebalance: RebalanceStatus,
    /// Placement of the given spaces.
    pub spaces: Vec<SpacePlacement>,
}

/// What the cluster layer needs from the server.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// `[cluster]`.
    pub config: ClusterConfig,
    /// Port the HTTP listener actually bound (advertised with the gossip IP).
    pub http_port: u16,
    /// Port the gRPC listener actually bound.
    pub grpc_port: u16,
    /// Port the peer listener actually bound.
    pub peer_port: u16,
}

#[derive(Debug)]
struct Metrics {
    members: IntGaugeVec,
    messages: IntCounterVec,
    rejected: IntCounter,
    probe_failures: IntCounter,
    rebalances: IntCounter,
    moved: IntCounter,
    pending: IntGauge,
}

impl Metrics {
    fn register(r: &Registry) -> Result<Metrics, prometheus::Error> {
        let members = IntGaugeVec::new(
            Opts::new(
                "engram_cluster_members",
                "Cluster members by state (this node included)",
            ),
            &["state"],
        )?;
        let messages = IntCounterVec::new(
            Opts::new(
                "engram_cluster_gossip_messages_total",
                "Gossip datagrams by direction",
            ),
            &["direction"],
        )?;
        let rejected = IntCounter::new(
            "engram_cluster_gossip_rejected_total",
            "Gossip datagrams rejected (malformed, too large, invalid identity, not for us)",
        )?;
        let probe_failures = IntCounter::new(
            "engram_cluster_probe_failures_total",
            "Probes that got no direct or indirect answer",
        )?;
        let rebalances = IntCounter::new(
            "engram_cluster_rebalances_total",
            "Membership changes applied to placement",
        )?;
        let moved = IntCounter::new(
            "engram_cluster_partitions_moved_total",
            "Partitions whose replica set changed",
        )?;
        let pending = IntGauge::new(
            "engram_cluster_rebalance_pending",
            "1 while a membership change waits for the rebalance grace period",
        )?;
        r.register(Box::new(members.clone()))?;
        r.register(Box::new(messages.clone()))?;
        r.register(Box::new(rejected.clone()))?;
        r.register(Box::new(probe_failures.clone()))?;
        r.register(Box::new(rebalances.clone()))?;
        r.register(Box::new(moved.clone()))?;
        r.register(Box::new(pending.clone()))?;
        for s in ["alive", "suspect", "down"] {
            members.with_label_values(&[s]).set(0);
        }
        for d in ["sent", "received"] {
            messages.with_label_values(&[d]);
        }
        Ok(Metrics {
            members,
            messages,
            rejected,
            probe_failures,
            rebalances,
            moved,
            pending,
        })
    }
}

#[derive(Debug)]
struct View {
    me: NodeIdentity,
    members: Vec<MemberStatus>,
    placed: Vec<PlacementNode>,
    pending_since: Option<Instant>,
    rebalances: u64,
    moved: u64,
}

#[derive(Debug)]
struct Shared {
    config: ClusterConfig,
    params: PlacementParams,
    view: RwLock<View>,
    metrics: Metrics,
}

/// A running cluster member. Dropping it does not leave the cluster: call
/// [`Cluster::leave`].
#[derive(Debug)]
pub struct Cluster {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    local_addr: SocketAddr,
}

/// This host's name, as a default node id.
pub fn host_node_id() -> Result<String, ClusterError> {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let id = raw.trim().to_ascii_lowercase();
    if valid_node_id(&id) {
        Ok(id)
    } else {
        Err(ClusterError::Config {
            key: "cluster.node_id",
            message: format!(
                "not set, and the host name {id:?} is not a valid node id; set cluster.node_id or ENGRAM_NODE_ID"
            ),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

async fn resolve(seeds: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in seeds {
        let Some((host, port)) = split_host_port(s) else {
            continue;
        };
        match tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host((host.to_owned(), port)),
        )
        .await
        {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(e)) => debug!(seed = %s, error = %e, "seed does not resolve (yet)"),
            Err(_) => debug!(seed = %s, "seed resolution timed out"),
        }
    }
    out.dedup();
    out
}

fn foca_config(c: &ClusterConfig) -> foca::Config {
    let w = &c.swim;
    let nz = |v: usize| NonZeroUsize::new(v.max(1)).unwrap_or(NonZeroUsize::MIN);
    foca::Config {
        probe_period: Duration::from_millis(w.probe_period_ms),
        probe_rtt: Duration::from_millis(w.probe_rtt_ms),
        num_indirect_probes: nz(w.indirect_probes),
        max_transmissions: NonZeroU8::new(w.max_transmissions.max(1)).unwrap_or(NonZeroU8::MIN),
        suspect_to_down_after: Duration::from_millis(w.suspect_to_down_ms),
        remove_down_after: Some(Duration::from_secs(w.remove_down_after_sec)),
        max_packet_size: nz(w.max_packet_bytes),
        notify_down_members: true,
        periodic_announce: Some(PeriodicParams {
            frequency: Duration::from_millis(w.announce_interval_ms),
            num_members: nz(1),
        }),
        periodic_announce_to_down_members: Some(PeriodicParams {
            frequency: Duration::from_millis(w.rejoin_interval_ms.saturating_mul(5)),
            num_members: nz(2),
        }),
        periodic_gossip: Some(PeriodicParams {
            frequency: Duration::from_millis(w.gossip_interval_ms),
            num_members: nz(w.gossip_fanout),
        }),
    }
}

impl Cluster {
    /// Binds the gossip socket, decides the advertised address (refusing a
    /// wildcard or loopback one, see [`advertise::choose`]), and starts
    /// gossiping on the current tokio runtime.
    pub async fn start(opts: StartOptions, registry: &Registry) -> Result<Cluster, ClusterError> {
        let config = opts.config;
        config.validate()?;
        let node_id = if config.node_id.is_empty() {
            host_node_id()?
        } else {
            config.node_id.clone()
        };
        let bind = config.network.swim_bind;
        let seeds = resolve(&config.network.seeds).await;
        let (gossip, source) = advertise::choose(
            &config.network.advertise_addr,
            bind,
            &seeds,
            advertise::route_to,
        )?;
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| ClusterError::Bind {
                addr: bind,
                source: e,
            })?;
        let local_addr = socket.local_addr().map_err(|e| ClusterError::Bind {
            addr: bind,
            source: e,
        })?;
        // Port 0 (tests): advertise the port actually bound.
        let gossip = if gossip.port() == 0 {
            SocketAddr::new(gossip.ip(), local_addr.port())
        } else {
            gossip
        };
        match source {
            AdvertiseSource::Configured => {
                info!(%gossip, "advertising the configured gossip address")
            }
            AdvertiseSource::BindAddress => info!(%gossip, "advertising the gossip bind address"),
            AdvertiseSource::RouteToSeed(seed) => info!(
                %gossip, %seed,
                "advertising the address of the interface that routes to the first seed (auto-detected; set [cluster.network].advertise_addr to override)"
            ),
        }
        let me = NodeIdentity {
            node_id,
            gossip,
            http: SocketAddr::new(gossip.ip(), opts.http_port),
            grpc: SocketAddr::new(gossip.ip(), opts.grpc_port),
            peer: SocketAddr::new(gossip.ip(), opts.peer_port),
            rack: config.rack.clone(),
            zone: config.zone.clone(),
            generation: now_ms(),
        };
        let params = PlacementParams {
            replication_factor: config.replication.replication_factor,
            jump_buckets: config.replication.jump_buckets,
            rack_penalty: config.replication.rack_penalty,
            zone_penalty: config.replication.zone_penalty,
        };
        let metrics =
            Metrics::register(registry).map_err(|e| ClusterError::Metrics(e.to_string()))?;
        let me_node = placement_node(&me);
        let shared = Arc::new(Shared {
            params,
            view: RwLock::new(View {
                me: me.clone(),
                members: Vec::new(),
                placed: vec![me_node.clone()],
                pending_since: None,
                rebalances: 0,
                moved: 0,
            }),
            metrics,
            config: config.clone(),
        });
        let swim = Foca::new(
            me.clone(),
            foca_config(&config),
            SmallRng::seed_from_u64(rand::random()),
            GossipCodec,
        );
        let (stop, stop_rx) = watch::channel(false);
        let runner = Runner {
            swim,
            socket: Arc::new(socket),
            runtime: AccumulatingRuntime::new(),
            shared: shared.clone(),
            rebalancer: Rebalancer::new(vec![me_node], config.rebalance_grace(), params),
            local_addr,
        };
        info!(
            node_id = %me.node_id, %gossip, bind = %local_addr,
            seeds = ?config.network.seeds, "cluster membership starting"
        );
        let task = tokio::spawn(runner.run(stop_rx));
        let cluster = Cluster {
            shared,
            stop,
            task: Mutex::new(Some(task)),
            local_addr,
        };
        cluster.refresh_gauges();
        Ok(cluster)
    }

    /// The address the gossip socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's current identity.
    pub fn me(&self) -> NodeIdentity {
        read(&self.shared.view).me.clone()
    }

    /// The advertised peer address of the member called `node` (this node
    /// included), unless it is down or unknown.
    pub fn peer_addr(&self, node: &str) -> Option<SocketAddr> {
        let v = read(&self.shared.view);
        if v.me.node_id == node {
            return Some(v.me.peer);
        }
        v.members
            .iter()
            .find(|m| m.identity.node_id == node && m.state != MemberState::Down)
            .map(|m| m.identity.peer)
    }

    /// The advertised identity of the member called `node` (this node
    /// included), unless it is down or unknown.
    pub fn identity_of(&self, node: &str) -> Option<NodeIdentity> {
        let v = read(&self.shared.view);
        if v.me.node_id == node {
            return Some(v.me.clone());
        }
        v.members
            .iter()
            .find(|m| m.identity.node_id == node && m.state != MemberState::Down)
            .map(|m| m.identity.clone())
    }

    /// The nodes placement currently spreads spaces over (after the
    /// rebalance grace), with their zones and racks.
    pub fn placed_nodes(&self) -> Vec<PlacementNode> {
        read(&self.shared.view).placed.clone()
    }

    /// Placement parameters (`[cluster.replication]`).
    pub fn placement_params(&self) -> PlacementParams {
        self.shared.params
    }

    fn refresh_gauges(&self) {
        let v = read(&self.shared.view);
        set_member_gauges(&self.shared.metrics, &v.members);
    }

    /// Health, with the placement of `spaces`.
    pub fn health(&self, spaces: &[String]) -> ClusterHealth {
        let v = read(&self.shared.view);
        let me = MemberStatus {
            identity: v.me.clone(),
            state: MemberState::Alive,
            is_self: true,
        };
        let mut members: Vec<MemberStatus> = v.members.clone();
        members.push(me.clone());
        members.sort_by(|a, b| a.identity.node_id.cmp(&b.identity.node_id));
        let live: BTreeMap<&str, bool> = members
            .iter()
            .map(|m| (m.identity.node_id.as_str(), m.state != MemberState::Down))
            .collect();
        let p = &self.shared.params;
        let mut worst = HealthStatus::Healthy;
        if members.iter().any(|m| m.state != MemberState::Alive) || v.pending_since.is_some() {
            worst = HealthStatus::Degraded;
        }
        let spaces: Vec<SpacePlacement> = spaces
            .iter()
            .map(|s| {
                let partition = partition_of(s, p.jump_buckets);
                let replicas: Vec<String> = replica_set(partition, &v.placed, p)
                    .into_iter()
                    .map(|n| n.id.clone())
                    .collect();
                let live_replicas = replicas
                    .iter()
                    .filter(|r| live.get(r.as_str()).copied().unwrap_or(false))
                    .count();
                if live_replicas == 0 {
                    worst = HealthStatus::Unavailable;
                } else if live_replicas < replicas.len() && worst == HealthStatus::Healthy {
                    worst = HealthStatus::Degraded;
                }
                SpacePlacement {
                    space: s.clone(),
                    partition,
                    primary: replicas.first().cloned(),
                    replicas,
                    live_replicas,
                }
            })
            .collect();
        ClusterHealth {
            status: worst,
            node: me,
            members,
            replication_factor: p.replication_factor,
            jump_buckets: p.jump_buckets,
            rebalance: RebalanceStatus {
                placed_nodes: v.placed.iter().map(|n| n.id.clone()).collect(),
                pending: v.pending_since.is_some(),
                pending_for_ms: v.pending_since.map(|t| t.elapsed().as_millis() as u64),
                grace_ms: self.shared.config.replication.rebalance_grace_ms,
                rebalances: v.rebalances,
                partitions_moved: v.moved,
            },
            spaces,
        }
    }

    /// Tells a few peers this node is leaving (so they mark it down at once
    /// instead of after the suspicion timeout) and stops gossiping.
    pub async fn leave(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut t) = self.task.lock() {
            if let Some(t) = t.take() {
                t.abort();
            }
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn placement_node(id: &NodeIdentity) -> PlacementNode {
    PlacementNode {
        id: id.node_id.clone(),
        zone: id.zone.clone(),
        rack: id.rack.clone(),
    }
}

fn set_member_gauges(m: &Metrics, members: &[MemberStatus]) {
    let count = |s: MemberState| members.iter().filter(|m| m.state == s).count() as i64;
    // This node is alive by definition.
    m.members
        .with_label_values(&["alive"])
        .set(count(MemberState::Alive) + 1);
    m.members
        .with_label_values(&["suspect"])
        .set(count(MemberState::Suspect));
    m.members
        .with_label_values(&["down"])
        .set(count(MemberState::Down));
}

struct Runner {
    swim: Swim,
    socket: Arc<UdpSocket>,
    runtime: AccumulatingRuntime<NodeIdentity>,
    shared: Arc<Shared>,
    rebalancer: Rebalancer,
    local_addr: SocketAddr,
}

impl Runner {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer<NodeIdentity>>();
        let max = self.shared.config.swim.max_packet_bytes;
        let mut buf = vec![0u8; max + 1];
        let mut rejoin = tokio::time::interval(Duration::from_millis(
            self.shared.config.swim.rejoin_interval_ms,
        ));
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut placement_tick = tokio::time::interval(Duration::from_millis(100));
        placement_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        self.shared.metrics.messages.with_label_values(&["received"]).inc();
                        if n > max {
                            self.shared.metrics.rejected.inc();
                            debug!(%from, "gossip datagram over max_packet_bytes dropped");
                        } else if let Err(e) = self.swim.handle_data(&buf[..n], &mut self.runtime) {
                            self.shared.metrics.rejected.inc();
                            debug!(%from, error = %e, "gossip datagram rejected");
                        }
                    }
                    Err(e) => {
                        // ICMP errors from earlier sends surface here on
                        // some systems; they are not fatal.
                        debug!(error = %e, "gossip receive error");
                    }
                },
                Some(timer) = timer_rx.recv() => {
                    if let Err(e) = self.swim.handle_timer(timer, &mut self.runtime) {
                        warn!(error = %e, "gossip timer failed");
                    }
                }
                _ = rejoin.tick() => {
                    if self.swim.num_members() == 0 {
                        self.announce_to_seeds().await;
                    }
                }
                _ = placement_tick.tick() => {
                    // Suspicion has no notification: refresh states here.
                    self.publish_members();
                    self.rebalance();
                }
                _ = stop.changed() => {
                    if let Err(e) = self.swim.leave_cluster(&mut self.runtime) {
                        debug!(error = %e, "leaving the cluster");
                    }
                    self.drain(&timer_tx).await;
                    info!("left the cluster");
                    return;
                }
            }
            self.drain(&timer_tx).await;
        }
    }

    async fn announce_to_seeds(&mut self) {
        let me = self.swim.identity().gossip;
        let seeds = resolve(&self.shared.config.network.seeds).await;
        for s in seeds {
            if s == me || s == self.local_addr {
                continue;
            }
            debug!(seed = %s, "announcing to seed");
            if let Err(e) = self.swim.announce(NodeIdentity::seed(s), &mut self.runtime) {
                debug!(seed = %s, error = %e, "announce failed");
            }
        }
    }

    /// Carries out what foca asked for: datagrams, timers, notifications.
    async fn drain(&mut self, timers: &mpsc::UnboundedSender<Timer<NodeIdentity>>) {
        let mut changed = false;
        while let Some(n) = self.runtime.to_notify() {
            changed = true;
            match n {
                OwnedNotification::MemberUp(m) => {
                    info!(node_id = %m.node_id, gossip = %m.gossip, "member up")
                }
                OwnedNotification::MemberDown(m) => {
                    warn!(node_id = %m.node_id, gossip = %m.gossip, "member down")
                }
                OwnedNotification::Rename(old, new) => info!(
                    node_id = %new.node_id, old_generation = old.generation,
                    generation = new.generation, "member restarted with a newer identity"
                ),
                OwnedNotification::Rejoin(new) => {
                    warn!(
                        generation = new.generation,
                        "this node was declared down; rejoined"
                    );
                    write(&self.shared.view).me = new;
                }
                OwnedNotification::Defunct => warn!("this node was declared down"),
                OwnedNotification::ProbeFailed(_, m) => {
                    self.shared.metrics.probe_failures.inc();
                    debug!(node_id = %m.node_id, "probe failed");
                }
                _ => {}
            }
        }
        while let Some((to, data)) = self.runtime.to_send() {
            self.shared
                .metrics
                .messages
                .with_label_values(&["sent"])
                .inc();
            if let Err(e) = self.socket.send_to(&data, to.gossip).await {
                debug!(to = %to.gossip, error = %e, "gossip send failed");
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let tx = timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(timer);
            });
        }
        if changed {
            self.publish_members();
        }
    }

    fn publish_members(&self) {
        let me = self.swim.identity().clone();
        // One entry per node id: the newest generation (a restarted node's
        // previous identity stays known as down until foca forgets it).
        let mut by_id: BTreeMap<String, MemberStatus> = BTreeMap::new();
        for m in self.swim.iter_membership_state() {
            let id = m.id();
            if id.node_id == me.node_id {
                continue;
            }
            let state = match m.state() {
                State::Alive => MemberState::Alive,
                State::Suspect => MemberState::Suspect,
                State::Down => MemberState::Down,
            };
            let status = MemberStatus {
                identity: id.clone(),
                state,
                is_self: false,
            };
            match by_id.get(&id.node_id) {
                Some(prev) if prev.identity.generation >= id.generation => {}
                _ => {
                    by_id.insert(id.node_id.clone(), status);
                }
            }
        }
        let members: Vec<MemberStatus> = by_id.into_values().collect();
        set_member_gauges(&self.shared.metrics, &members);
        let mut v = write(&self.shared.view);
        v.members = members;
        v.me = me;
    }

    fn rebalance(&mut self) {
        let live: Vec<PlacementNode> = {
            let v = read(&self.shared.view);
            v.members
                .iter()
                .filter(|m| m.state != MemberState::Down)
                .map(|m| placement_node(&m.identity))
                .chain(std::iter::once(placement_node(&v.me)))
                .collect()
        };
        let applied = self.rebalancer.observe(live, Instant::now());
        let pending = self.rebalancer.pending().map(|(_, t)| t);
        let m = &self.shared.metrics;
        m.pending.set(i64::from(pending.is_some()));
        let mut v = write(&self.shared.view);
        v.pending_since = pending;
        if let Some(r) = applied {
            info!(
                moved_partitions = r.moved, before = ?r.before, after = ?r.after,
                "membership change applied to placement"
            );
            m.rebalances.inc();
            m.moved.inc_by(r.moved as u64);
            v.rebalances += 1;
            v.moved += r.moved as u64;
            v.placed = self.rebalancer.applied().to_vec();
        }
    }
}
