//! The peer port (`[cluster.network] peer_bind`, default 7947/TCP): the
//! gRPC server node-to-node services run on, never the client gRPC port.

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use engram_replication::node::Replicator;

use crate::metadata::MetadataGroup;

/// Serves the peer services on `listener` until `shutdown` completes: the
/// metadata group's, and replication's once the graph is open.
pub async fn serve(
    listener: TcpListener,
    metadata: MetadataGroup,
    replicator: Option<Replicator>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(metadata.service())
        .add_optional_service(replicator.map(|r| r.service()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
