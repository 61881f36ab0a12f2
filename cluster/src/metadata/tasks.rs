//! The group's background tasks: keeping the outgoing cluster id current,
//! the gauges, initializing the cluster and adding learners on the leader,
//! and registering this node.

use std::time::Duration;

use openraft::ServerState;

use super::state::{Command, Outcome};
use super::{MetaNode, MetadataGroup, Proposed, now_ms, raft_id};

impl MetadataGroup {
    /// Keeps the cluster id in outgoing headers equal to the applied one.
    pub(super) async fn follow_cluster_id(self) {
        let mut rx = self.inner.shared.subscribe();
        loop {
            let id = self.inner.shared.read(|a| {
                a.state
                    .cluster
                    .as_ref()
                    .map(|c| c.cluster_id.clone())
                    .unwrap_or_default()
            });
            match self.inner.sender.cluster_id.write() {
                Ok(mut g) => *g = id,
                Err(p) => *p.into_inner() = id,
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Keeps the gauges equal to Raft's view and the applied index.
    pub(super) async fn update_gauges(self) {
        let mut metrics = self.inner.raft.metrics();
        let mut applied = self.inner.shared.subscribe();
        let m = &self.inner.metrics;
        loop {
            {
                let r = metrics.borrow();
                m.has_leader.set(i64::from(r.current_leader.is_some()));
                m.is_leader.set(i64::from(r.state == ServerState::Leader));
                m.term
                    .set(i64::try_from(r.current_term).unwrap_or(i64::MAX));
            }
            m.applied_index
                .set(i64::try_from(self.applied_index()).unwrap_or(i64::MAX));
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                r = applied.changed() => if r.is_err() { return },
            }
        }
    }

    /// On the leader: proposes `InitCluster` once if the state has none.
    pub(super) async fn init_cluster_when_leading(self) {
        let mut metrics = self.inner.raft.metrics();
        let me = raft_id(&self.inner.opts.node);
        loop {
            let leading = {
                let m = metrics.borrow();
                m.state == ServerState::Leader && m.current_leader == Some(me)
            };
            let initialized = self.inner.shared.read(|a| a.state.cluster.is_some());
            if leading && !initialized {
                let cmd = Command::InitCluster {
                    cluster_id: format!("{:032x}", rand::random::<u128>()),
                    replication_factor: self.inner.opts.replication_factor,
                    jump_buckets: self.inner.opts.jump_buckets,
                    created_at_ms: now_ms(),
                };
                match self.inner.raft.client_write(cmd).await {
                    Ok(r) if r.data == Outcome::Done => {
                        tracing::info!(index = r.log_id.index, "metadata: cluster initialized")
                    }
                    Ok(r) => {
                        // Refused (bad parameters): retrying at once would
                        // write a synced entry per loop.
                        tracing::error!(outcome = ?r.data, "metadata: the cluster could not be initialized");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metadata: cannot initialize the cluster yet");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                continue;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Registers this node (name, raft id, storage id) once the cluster is
    /// initialized, and again whenever the registered storage id is not
    /// this data directory's.
    pub(super) async fn register(self) {
        let mut rx = self.inner.shared.subscribe();
        let me = self.inner.opts.node.clone();
        // A new learner's own copy is empty until the leader adds it, so
        // the first proposal cannot wait for it to show the cluster.
        let mut proposed = false;
        loop {
            let registered = self
                .inner
                .shared
                .read(|a| a.state.nodes.get(&me).map(|n| n.storage_id.clone()));
            let needed = match registered {
                Some(id) => id != self.inner.storage_id,
                None => !proposed,
            };
            if needed {
                let cmd = Command::RegisterNode {
                    name: me.clone(),
                    raft_id: raft_id(&me),
                    storage_id: self.inner.storage_id.clone(),
                };
                match self.propose(cmd).await {
                    Ok(Proposed {
                        outcome: Outcome::Done,
                        index,
                    }) => {
                        tracing::info!(index, "metadata: node registered");
                        proposed = true;
                    }
                    Ok(p) => {
                        tracing::debug!(outcome = ?p.outcome, "metadata: registration refused; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "metadata: cannot register this node yet");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                continue;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    /// On the leader: adds every registered node that is not a member yet
    /// as a learner (once; openraft keeps replicating to it).
    pub(super) async fn add_learners_when_leading(self) {
        let mut applied = self.inner.shared.subscribe();
        let mut metrics = self.inner.raft.metrics();
        loop {
            if self.is_leader() {
                let (voters, learners) = self.members();
                let missing: Vec<String> = self.inner.shared.read(|a| {
                    a.state
                        .nodes
                        .keys()
                        .filter(|n| !voters.contains(n) && !learners.contains(n))
                        .cloned()
                        .collect()
                });
                for node in missing {
                    let Some(addr) = self.inner.resolver.peer_addr(&node) else {
                        continue;
                    };
                    let added = self
                        .inner
                        .raft
                        .add_learner(
                            raft_id(&node),
                            MetaNode {
                                name: node.clone(),
                                peer_addr: addr,
                            },
                            false,
                        )
                        .await;
                    match added {
                        Ok(_) => tracing::info!(%node, "metadata: learner added"),
                        Err(e) => {
                            tracing::warn!(%node, error = %e, "metadata: cannot add learner yet")
                        }
                    }
                }
            }
            tokio::select! {
                r = applied.changed() => if r.is_err() { return },
                r = metrics.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
