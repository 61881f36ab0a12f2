//! The gRPC `ReplicationService` on the peer port: every message names the
//! node it is for and, once both sides know it, the cluster; others are
//! refused before anything is looked at.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::Inner;
use super::proto::{self, replication_service_server::ReplicationService};
use super::{digest, replica, snapshot};

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ReplicationPeerService {
    inner: Arc<Inner>,
}

impl ReplicationPeerService {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Refuses a message meant for another node or from another cluster.
    fn check(&self, header: Option<&proto::PeerHeader>) -> Result<(), Status> {
        let Some(h) = header else {
            return Err(Status::invalid_argument("the message has no peer header"));
        };
        if h.to_node != self.inner.node {
            return Err(Status::failed_precondition(format!(
                "this is node {:?}, not {:?}: the sender's address book is stale",
                self.inner.node, h.to_node
            )));
        }
        let mine = self.inner.directory.cluster_id();
        if !mine.is_empty() && !h.cluster_id.is_empty() && h.cluster_id != mine {
            return Err(Status::permission_denied(format!(
                "the sender belongs to cluster {:?}, this node to {:?}",
                h.cluster_id, mine
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ReplicationService for ReplicationPeerService {
    async fn handshake(
        &self,
        request: Request<proto::HandshakeRequest>,
    ) -> Result<Response<proto::HandshakeResponse>, Status> {
        let req = request.into_inner();
        self.check(req.header.as_ref())?;
        Ok(Response::new(replica::handshake(&self.inner, req).await))
    }

    async fn apply_batch(
        &self,
        request: Request<proto::ReplicationBatch>,
    ) -> Result<Response<proto::ReplicationAck>, Status> {
        let req = request.into_inner();
        self.check(req.header.as_ref())?;
        Ok(Response::new(replica::apply_batch(&self.inner, req).await))
    }

    async fn install_snapshot(
        &self,
        request: Request<tonic::Streaming<proto::SnapshotPart>>,
    ) -> Result<Response<proto::SnapshotAck>, Status> {
        let stream = request.into_inner();
        let ack = snapshot::install(&self.inner, stream, |h| self.check(h)).await?;
        Ok(Response::new(ack))
    }

    async fn get_space_digest(
        &self,
        request: Request<proto::SpaceDigestRequest>,
    ) -> Result<Response<proto::SpaceDigest>, Status> {
        let req = request.into_inner();
        self.check(req.header.as_ref())?;
        let found = digest::local(&self.inner, req.space_uid)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(match found {
            Some(d) => proto::SpaceDigest {
                found: true,
                applied_seq: d.applied_seq,
                memories: d.memories,
                digest: d.digest,
                node: self.inner.node.clone(),
            },
            None => proto::SpaceDigest {
                found: false,
                node: self.inner.node.clone(),
                ..Default::default()
            },
        }))
    }
}
