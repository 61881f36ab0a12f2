//! Forwarding of gRPC calls in a cluster, as [`crate::forward`] does for
//! HTTP: a `MemoryService` call about a space led by another node is sent
//! to that node's gRPC listener with the space resolved once (in the
//! message's `space` field); answers carry `x-engram-served-by` metadata.
//! A forwarded call (metadata `x-engram-forwarded-by`) is never forwarded
//! again: a node that does not lead the space any more answers
//! `UNAVAILABLE` `not_primary`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::AppState;
use crate::forward::{FORWARDED_BY, SERVED_BY};
use crate::grpc::pb::memory_service_client::MemoryServiceClient;

/// Longest a forwarded call may take.
const FORWARD_LIMIT: Duration = Duration::from_secs(60);

/// A client of another node's `MemoryService`.
pub(crate) type Client = MemoryServiceClient<Channel>;

/// Where a call is served.
pub(crate) enum Route {
    /// Here (standalone, or this node leads the space).
    Local,
    /// By the space's primary, through this client.
    Forward {
        client: Box<Client>,
        primary: String,
        me: String,
    },
}

fn channels() -> &'static Mutex<HashMap<std::net::SocketAddr, Channel>> {
    static CHANNELS: OnceLock<Mutex<HashMap<std::net::SocketAddr, Channel>>> = OnceLock::new();
    CHANNELS.get_or_init(|| Mutex::new(HashMap::new()))
}

fn channel(addr: std::net::SocketAddr) -> Result<Channel, Status> {
    let mut map = channels().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = map.get(&addr) {
        return Ok(c.clone());
    }
    let c = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Status::internal(format!("forwarding address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .connect_lazy();
    map.insert(addr, c.clone());
    Ok(c)
}

/// Where a call about `space` is served; `forwarded` tells whether it came
/// from another node already.
pub(crate) fn route(state: &AppState, space: &str, forwarded: bool) -> Result<Route, Status> {
    let (Some(metadata), Some(cluster), Some(replicator)) =
        (state.metadata(), state.cluster(), state.replicator())
    else {
        return Ok(Route::Local);
    };
    let me = replicator.node().to_owned();
    let primary = metadata
        .state()
        .spaces
        .get(space)
        .map(|m| m.primary.clone());
    let Some(primary) = primary.filter(|p| *p != me) else {
        return Ok(Route::Local);
    };
    if forwarded {
        return Err(Status::unavailable(format!(
            "not_primary: this node does not lead space {space:?} (its primary is {primary}) and does not forward a forwarded call again; retry"
        )));
    }
    let Some(target) = cluster.identity_of(&primary) else {
        return Err(Status::unavailable(format!(
            "no_primary: the primary of space {space:?}, node {primary}, is not reachable; retry shortly"
        )));
    };
    let client = MemoryServiceClient::new(channel(target.grpc)?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    Ok(Route::Forward {
        client: Box::new(client),
        primary,
        me,
    })
}

/// Whether a call came from another node.
pub(crate) fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED_BY)
}

/// Sends `message` to the primary with `call` and marks the answer.
pub(crate) async fn send<T, R, F, Fut>(
    client: MemoryServiceClient<Channel>,
    primary: &str,
    me: &str,
    message: T,
    call: F,
) -> Result<Response<R>, Status>
where
    F: FnOnce(MemoryServiceClient<Channel>, Request<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<R>, Status>>,
{
    let mut request = Request::new(message);
    // Bounded, whatever deadline the caller set (or did not set).
    request.set_timeout(FORWARD_LIMIT);
    if let Ok(v) = MetadataValue::try_from(me) {
        request.metadata_mut().insert(FORWARDED_BY, v);
    }
    let mut answer = call(client, request).await.map_err(|s| {
        if matches!(s.code(), tonic::Code::Unavailable) && s.message().starts_with("transport") {
            Status::unavailable(format!(
                "no_primary: forwarding to the space's primary {primary} failed: {}; retry shortly",
                s.message()
            ))
        } else {
            s
        }
    })?;
    served_by(&mut answer, primary);
    Ok(answer)
}

/// Marks an answer with the node that served it.
pub(crate) fn served_by<R>(answer: &mut Response<R>, node: &str) {
    if let Ok(v) = MetadataValue::try_from(node) {
        answer.metadata_mut().insert(SERVED_BY, v);
    }
}

/// This node's name in a cluster (for marking local answers).
pub(crate) fn me(state: &Arc<AppState>) -> Option<String> {
    state.replicator().map(|r| r.node().to_owned())
}
