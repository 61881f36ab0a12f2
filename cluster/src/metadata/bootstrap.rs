//! Bootstrap (design §4, review F2): whether this node initializes the
//! group, joins it, or must not run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::error::{InitializeError, RaftError};

use super::network::probe;
use super::{Bootstrap, MetaNode, MetadataError, MetadataGroup, raft_id};

impl MetadataGroup {
    /// Decides whether this node initializes the group (design §4 and
    /// review F2). Waits — logging who it waits for — until every other
    /// voter answers, so run it in a task; an error means this node must
    /// not start.
    pub async fn bootstrap(&self) -> Result<Bootstrap, MetadataError> {
        let outcome = self.decide_bootstrap().await?;
        // Only now may Raft messages reach this node.
        self.inner
            .admitted
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Registration waits for the decision: a wiped voter must not
        // replace its registration before it noticed.
        self.spawn(self.clone().register());
        Ok(outcome)
    }

    pub(super) async fn decide_bootstrap(&self) -> Result<Bootstrap, MetadataError> {
        let inner = &self.inner;
        if !inner.pristine_at_start {
            return Ok(Bootstrap::Resumed);
        }
        let voters = inner.opts.effective_voters();
        if !voters.contains(&inner.opts.node) {
            return Ok(Bootstrap::Learner);
        }
        let mut last_log = Instant::now();
        let mut ours = voters.clone();
        ours.sort();
        loop {
            if self
                .inner
                .stopping
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(MetadataError::Stopped);
            }
            let mut pristine = 0;
            let mut missing = Vec::new();
            for v in voters.iter().filter(|v| **v != inner.opts.node) {
                let Some(addr) = inner.resolver.peer_addr(v) else {
                    missing.push(format!("{v}: address unknown"));
                    continue;
                };
                match probe(&inner.sender, v, &addr, inner.opts.rpc_timeout).await {
                    Ok(r) if r.initialized => {
                        // The running group registered this node with
                        // another data directory: it lost its raft state
                        // (its votes and acknowledged entries).
                        if r.voters.contains(&inner.opts.node)
                            && !r.asker_storage_id.is_empty()
                            && r.asker_storage_id != inner.storage_id
                        {
                            return Err(MetadataError::VoterWiped {
                                node: inner.opts.node.clone(),
                                voters: r.voters,
                            });
                        }
                        // Never registered: it never took part (a slower
                        // start than the voter that initialized), so it
                        // joins with its empty store.
                        if self.raft_initialized().await {
                            return Ok(Bootstrap::Initialized);
                        }
                        return Ok(Bootstrap::Joining);
                    }
                    Ok(r) => {
                        // Both new: initializing with different lists would
                        // form two groups.
                        let mut theirs = r.configured_voters.clone();
                        theirs.sort();
                        if !theirs.is_empty() && theirs != ours {
                            return Err(MetadataError::VoterMismatch {
                                node: inner.opts.node.clone(),
                                ours,
                                peer: v.clone(),
                                theirs,
                            });
                        }
                        pristine += 1
                    }
                    Err(e) => missing.push(e.0),
                }
            }
            if missing.is_empty() && pristine + 1 == voters.len() {
                return self.initialize(&voters).await;
            }
            if self.raft_initialized().await {
                // Another voter initialized and already reached us.
                return Ok(Bootstrap::Joining);
            }
            if last_log.elapsed() >= Duration::from_secs(10) {
                tracing::warn!(waiting_for = ?missing, "metadata: waiting for every voter before initializing");
                last_log = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) async fn raft_initialized(&self) -> bool {
        self.inner.raft.is_initialized().await.unwrap_or(false)
    }

    pub(super) async fn initialize(&self, voters: &[String]) -> Result<Bootstrap, MetadataError> {
        let inner = &self.inner;
        let mut nodes = BTreeMap::new();
        for v in voters {
            let addr = if *v == inner.opts.node {
                inner.opts.peer_addr.clone()
            } else {
                inner.resolver.peer_addr(v).unwrap_or_default()
            };
            nodes.insert(
                raft_id(v),
                MetaNode {
                    name: v.clone(),
                    peer_addr: addr,
                },
            );
        }
        match inner.raft.initialize(nodes).await {
            Ok(()) => Ok(Bootstrap::Initialized),
            // Another voter's messages arrived first: same membership.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(Bootstrap::Joining),
            Err(e) => Err(MetadataError::Raft(e.to_string())),
        }
    }
}
