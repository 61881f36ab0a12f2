//! Client side of the metadata group's peer RPCs (`MetadataService` on
//! the peer port). Connection errors are `Unreachable` (openraft backs
//! off), never a panic; every message says which node it means to reach,
//! and the receiver refuses one meant for another node.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use super::pb::metadata_service_client::MetadataServiceClient;
use super::pb::{PeerHeader, ProbeReply, ProbeRequest, RaftPayload};
use super::types::{MetaNode, RaftId, TypeConfig};

/// Where to reach a node's peer port now (gossip knows the current
/// address; a membership's stored address may be stale).
pub trait PeerResolver: Send + Sync + 'static {
    /// `host:port` of `node`'s peer port, if known.
    fn peer_addr(&self, node: &str) -> Option<String>;
}

/// Largest peer message either side sends or accepts.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Snapshot chunk size: JSON turns bytes into numbers (up to 4 characters
/// each), so a chunk stays far below [`MAX_MESSAGE_BYTES`].
pub const SNAPSHOT_CHUNK_BYTES: u64 = 512 * 1024;

fn client(channel: Channel) -> MetadataServiceClient<Channel> {
    MetadataServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Why a forwarded proposal got no answer.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// It was certainly not delivered (no connection): safe to retry.
    NotSent(String),
    /// It may have been delivered and may still commit.
    Unknown(String),
}

/// A failure of a peer call, as text for openraft's error wrappers.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerCallError(pub String);

/// Who this node is, for the headers of its messages.
#[derive(Clone)]
pub struct Sender {
    /// This node's name.
    pub me: String,
    /// The cluster id, once known.
    pub cluster_id: Arc<std::sync::RwLock<String>>,
}

impl Sender {
    pub(crate) fn header(&self, to: &str) -> PeerHeader {
        let cluster_id = match self.cluster_id.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        };
        PeerHeader {
            from_node: self.me.clone(),
            to_node: to.to_string(),
            cluster_id,
        }
    }
}

/// Opens a gRPC channel to `addr` (lazily connected, bounded connect time).
pub(crate) fn channel(addr: &str, connect_timeout: Duration) -> Result<Channel, PeerCallError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| PeerCallError(format!("bad peer address {addr:?}: {e}")))?
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true);
    Ok(endpoint.connect_lazy())
}

/// Creates a connection per target for openraft.
#[derive(Clone)]
pub struct Network {
    pub(crate) sender: Sender,
    pub(crate) resolver: Arc<dyn PeerResolver>,
    pub(crate) connect_timeout: Duration,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: RaftId, node: &MetaNode) -> Connection {
        Connection {
            target,
            node: node.clone(),
            net: self.clone(),
            client: None,
        }
    }
}

/// A connection to one member.
pub struct Connection {
    target: RaftId,
    node: MetaNode,
    net: Network,
    client: Option<(String, MetadataServiceClient<Channel>)>,
}

/// Which RPC a payload is for.
#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Connection {
    fn client(&mut self) -> Result<MetadataServiceClient<Channel>, PeerCallError> {
        let addr = self
            .net
            .resolver
            .peer_addr(&self.node.name)
            .unwrap_or_else(|| self.node.peer_addr.clone());
        if let Some((a, c)) = &self.client
            && *a == addr
        {
            return Ok(c.clone());
        }
        let c = client(channel(&addr, self.net.connect_timeout)?);
        self.client = Some((addr, c.clone()));
        Ok(c)
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<RaftId, MetaNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let json = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let payload = RaftPayload {
            header: Some(self.net.sender.header(&self.node.name)),
            json,
        };
        let mut client = self
            .client()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(payload);
        request.set_timeout(option.hard_ttl());
        let answer = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(status) => {
                // Reconnect next time: the address may have changed.
                self.client = None;
                let e = PeerCallError(format!(
                    "{} ({}): {}",
                    self.node.name,
                    self.node.peer_addr,
                    status.message()
                ));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, E> = serde_json::from_slice(&answer.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<RaftId>, RPCError<RaftId, MetaNode, RaftError<RaftId>>> {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<RaftId>,
        RPCError<RaftId, MetaNode, RaftError<RaftId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<RaftId>,
        option: RPCOption,
    ) -> Result<VoteResponse<RaftId>, RPCError<RaftId, MetaNode, RaftError<RaftId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

/// Asks the node at `addr` whether it holds metadata-group state.
pub(crate) async fn probe(
    sender: &Sender,
    to: &str,
    addr: &str,
    timeout: Duration,
) -> Result<ProbeReply, PeerCallError> {
    let mut client = client(channel(addr, timeout)?);
    let mut request = tonic::Request::new(ProbeRequest {
        header: Some(sender.header(to)),
    });
    request.set_timeout(timeout);
    client
        .bootstrap_probe(request)
        .await
        .map(|r| r.into_inner())
        .map_err(|s| PeerCallError(format!("{to} ({addr}): {}", s.message())))
}

/// Sends a JSON payload to `addr`'s `Propose`.
pub(crate) async fn propose_remote(
    sender: &Sender,
    to: &str,
    addr: &str,
    json: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ForwardError> {
    let mut client = client(channel(addr, timeout).map_err(|e| ForwardError::NotSent(e.0))?);
    let mut request = tonic::Request::new(RaftPayload {
        header: Some(sender.header(to)),
        json,
    });
    request.set_timeout(timeout);
    client
        .propose(request)
        .await
        .map(|r| r.into_inner().json)
        .map_err(|s| {
            let text = format!("{to} ({addr}): {}", s.message());
            match s.code() {
                // Refused before it ran (connection failed, or the peer
                // refused the message as misaddressed or undecodable).
                tonic::Code::Unavailable
                | tonic::Code::FailedPrecondition
                | tonic::Code::InvalidArgument
                | tonic::Code::PermissionDenied => ForwardError::NotSent(text),
                _ => ForwardError::Unknown(text),
            }
        })
}
