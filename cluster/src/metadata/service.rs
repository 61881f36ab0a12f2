//! Server side of `MetadataService` (peer port): hands openraft's messages
//! to the local Raft, answers bootstrap probes and runs forwarded
//! proposals when this node leads.

use std::sync::Arc;

use openraft::error::{ClientWriteError, InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::{Request, Response, Status};

use super::network::Sender;
use super::pb::metadata_service_server::MetadataService;
use super::pb::{PeerHeader, ProbeReply, ProbeRequest, RaftPayload};
use super::state::Command;
use super::storage::{RaftDisk, Shared, is_pristine};
use super::types::{MetaRaft, RaftId, TypeConfig};
use super::{ProposeError, Proposed};

/// The gRPC service; cheap to clone.
#[derive(Clone)]
pub struct MetadataPeerService {
    pub(crate) raft: MetaRaft,
    pub(crate) sender: Sender,
    pub(crate) shared: Arc<Shared>,
    pub(crate) disk: Arc<dyn RaftDisk>,
    /// Raft messages are refused until bootstrap admitted this node.
    pub(crate) admitted: Arc<std::sync::atomic::AtomicBool>,
    /// This node's configured voters.
    pub(crate) voters: Vec<String>,
}

fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(json)
        .map_err(|e| Status::invalid_argument(format!("undecodable metadata message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(value)
        .map_err(|e| Status::internal(format!("cannot encode a metadata answer: {e}")))?;
    Ok(Response::new(RaftPayload { header: None, json }))
}

impl MetadataPeerService {
    /// Refuses Raft messages until bootstrap decided this node may take
    /// part (a voter that lost its data must never vote or take entries).
    fn admitted(&self) -> Result<(), Status> {
        if self.admitted.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Status::unavailable(format!(
                "node {:?} has not joined the metadata group yet (bootstrap in progress)",
                self.sender.me
            )))
        }
    }

    /// Refuses a message meant for another node or from another cluster.
    fn check(&self, header: Option<&PeerHeader>) -> Result<(), Status> {
        let Some(h) = header else {
            return Err(Status::invalid_argument("peer message without a header"));
        };
        if h.to_node != self.sender.me {
            return Err(Status::failed_precondition(format!(
                "message for node {:?} reached node {:?} (stale address?)",
                h.to_node, self.sender.me
            )));
        }
        let ours = self.sender.header("").cluster_id;
        if !ours.is_empty() && !h.cluster_id.is_empty() && ours != h.cluster_id {
            return Err(Status::permission_denied(format!(
                "node {:?} belongs to cluster {}, this node ({:?}) to cluster {}",
                h.from_node, h.cluster_id, self.sender.me, ours
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl MetadataService for MetadataPeerService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let p = request.into_inner();
        self.check(p.header.as_ref())?;
        self.admitted()?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&p.json)?;
        let result = self.raft.append_entries(rpc).await;
        encode(&result)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let p = request.into_inner();
        self.check(p.header.as_ref())?;
        self.admitted()?;
        let rpc: VoteRequest<RaftId> = decode(&p.json)?;
        let result = self.raft.vote(rpc).await;
        encode(&result)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let p = request.into_inner();
        self.check(p.header.as_ref())?;
        self.admitted()?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(&p.json)?;
        let result: Result<_, RaftError<RaftId, InstallSnapshotError>> =
            self.raft.install_snapshot(rpc).await;
        encode(&result)
    }

    async fn propose(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let p = request.into_inner();
        self.check(p.header.as_ref())?;
        let command: Command = decode(&p.json)?;
        let result: Result<Proposed, ProposeError> = match self.raft.client_write(command).await {
            Ok(r) => Ok(Proposed {
                index: r.log_id.index,
                outcome: r.data,
            }),
            // A forwarded proposal is never forwarded again: the caller
            // retries against the leader it is told about.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader {
                    leader: f.leader_node.map(|n| n.name),
                })
            }
            Err(e) => Err(ProposeError::Failed(e.to_string())),
        };
        encode(&result)
    }

    async fn bootstrap_probe(
        &self,
        request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeReply>, Status> {
        let p = request.into_inner();
        self.check(p.header.as_ref())?;
        let pristine = is_pristine(self.disk.as_ref())
            .map_err(|e| Status::internal(format!("cannot read the raft state: {e}")))?;
        let initialized = !pristine
            || self
                .raft
                .is_initialized()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        let asker = p
            .header
            .as_ref()
            .map(|h| h.from_node.clone())
            .unwrap_or_default();
        let (cluster_id, asker_storage_id) = self.shared.read(|a| {
            let id = a
                .state
                .cluster
                .as_ref()
                .map(|c| c.cluster_id.clone())
                .unwrap_or_default();
            let registered = a
                .state
                .nodes
                .get(&asker)
                .map(|n| n.storage_id.clone())
                .unwrap_or_default();
            (id, registered)
        });
        // The latest membership in the log (applied or not).
        let voters: Vec<String> = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            let mem = m.membership_config.membership();
            mem.voter_ids()
                .filter_map(|id| mem.get_node(&id).map(|n| n.name.clone()))
                .collect()
        };
        Ok(Response::new(ProbeReply {
            initialized,
            cluster_id,
            voters,
            asker_storage_id,
            configured_voters: self.voters.clone(),
        }))
    }
}
