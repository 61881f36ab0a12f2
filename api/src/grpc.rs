//! The gRPC API (`engram.v1.MemoryService`), mirroring the HTTP API: the
//! same conversions and validation, the same errors mapped to gRPC codes.

use std::sync::Arc;

use engram_graph::{Cue, DEFAULT_LINK_WEIGHT, SpaceOptions};
use serde_json::{Map, Value};
use tonic::{Code, Request, Response, Status};

use crate::http::{remember_durably, space_of};
use crate::model::{
    ConsolidateOut, CueBody, LinkBody, MemoryOut, RecalledOut, RememberBody, RememberOut, SpaceOut,
    SpreadBody,
};
use crate::task::blocking;
use crate::{ApiError, AppState};
use crate::{grpc_forward, replicated};

/// Generated messages and service traits of `engram.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("engram.v1");

    /// Encoded descriptors for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("engram_descriptor");
}

pub use pb::cluster_service_server::ClusterServiceServer;
pub use pb::memory_service_server::MemoryServiceServer;

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Self {
        let code = match e.status.as_u16() {
            // Limits reached: not a conflict with an existing thing.
            409 if e.code.starts_with("too_many_") => Code::ResourceExhausted,
            400 | 422 => Code::InvalidArgument,
            404 => Code::NotFound,
            408 => Code::DeadlineExceeded,
            409 => Code::AlreadyExists,
            413 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            _ => Code::Internal,
        };
        Status::new(code, format!("{}: {}", e.code, e.message))
    }
}

/// `engram.v1.MemoryService` over the shared [`AppState`].
#[derive(Debug, Clone)]
pub struct MemoryGrpc {
    state: Arc<AppState>,
}

impl MemoryGrpc {
    /// The service; wrap it in [`MemoryServiceServer`].
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }

    fn graph(&self) -> Result<Arc<engram_graph::Graph>, Status> {
        Ok(self.state.graph()?)
    }

    /// A request's `write_concern` field ("" = the server's default).
    fn concern(&self, name: &str) -> Result<engram_replication::protocol::Concern, Status> {
        if name.is_empty() {
            return Ok(self.state.default_concern());
        }
        replicated::parse_concern(name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "write_concern {name:?} is not one of primary, quorum, all"
            ))
        })
    }

    /// Counts and times one call under its method name and status code.
    async fn observed<T>(
        &self,
        method: &'static str,
        call: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let started = std::time::Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        };
        self.state
            .http
            .observe_grpc(method, code, started.elapsed().as_secs_f64());
        result
    }
}

/// The message and its space: metadata `x-memory-space` (as the HTTP
/// header) or the message's `space` field (as the HTTP query parameter);
/// the metadata given twice, or disagreeing with the field, is
/// `INVALID_ARGUMENT`.
fn with_space<T: HasSpace>(request: Request<T>) -> Result<(String, T), ApiError> {
    let headers = request.metadata().clone().into_headers();
    let mut r = request.into_inner();
    let field = std::mem::take(r.space_field());
    let space = space_of(&headers, (!field.is_empty()).then_some(field))?;
    Ok((space, r))
}

/// Where a call about one space is served.
enum Routed<T> {
    Local(Request<T>),
    Forward {
        client: grpc_forward::Client,
        primary: String,
        me: String,
        message: T,
    },
}

impl MemoryGrpc {
    /// Resolves the call's space once and decides where it is served.
    fn routed<T: HasSpace>(&self, request: Request<T>) -> Result<Routed<T>, Status> {
        if self.state.replicator().is_none() {
            return Ok(Routed::Local(request));
        }
        let forwarded = grpc_forward::forwarded(&request);
        let (metadata, extensions, mut message) = request.into_parts();
        let headers = metadata.clone().into_headers();
        let field = message.space_field().clone();
        let space = space_of(&headers, (!field.is_empty()).then_some(field))?;
        match grpc_forward::route(&self.state, &space, forwarded)? {
            grpc_forward::Route::Local => Ok(Routed::Local(Request::from_parts(
                metadata, extensions, message,
            ))),
            grpc_forward::Route::Forward {
                client,
                primary,
                me,
            } => {
                *message.space_field() = space;
                Ok(Routed::Forward {
                    client: *client,
                    primary,
                    me,
                    message,
                })
            }
        }
    }

    /// Serves a call about one space here (`local`) or on its primary
    /// (`remote`); answers in a cluster name the node that served them.
    async fn serve<T, R, L, LF, F, FF>(
        &self,
        request: Request<T>,
        local: L,
        remote: F,
    ) -> Result<Response<R>, Status>
    where
        T: HasSpace,
        L: FnOnce(Request<T>) -> LF,
        LF: std::future::Future<Output = Result<Response<R>, Status>>,
        F: FnOnce(grpc_forward::Client, Request<T>) -> FF,
        FF: std::future::Future<Output = Result<Response<R>, Status>>,
    {
        match self.routed(request)? {
            Routed::Local(request) => {
                let mut answer = local(request).await?;
                if let Some(me) = grpc_forward::me(&self.state) {
                    grpc_forward::served_by(&mut answer, &me);
                }
                Ok(answer)
            }
            Routed::Forward {
                client,
                primary,
                me,
                message,
            } => grpc_forward::send(client, &primary, &me, message, remote).await,
        }
    }
}

/// Messages addressed to one space.
trait HasSpace {
    fn space_field(&mut self) -> &mut String;
}

macro_rules! has_space {
    ($($t:ty),*) => {$(
        impl HasSpace for $t {
            fn space_field(&mut self) -> &mut String {
                &mut self.space
            }
        }
    )*};
}

has_space!(
    pb::RememberRequest,
    pb::RecallRequest,
    pb::GetRequest,
    pb::ForgetRequest,
    pb::LinkRequest,
    pb::ConsolidateRequest
);

fn opt_vec(v: Vec<f32>) -> Option<Vec<f32>> {
    (!v.is_empty()).then_some(v)
}

fn metadata(text: &str) -> Result<Map<String, Value>, ApiError> {
    if text.is_empty() {
        return Ok(Map::new());
    }
    serde_json::from_str(text).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "metadata_json must be a JSON object: {}",
                crate::http::json_error_message(&e)
            ),
        )
    })
}

fn memory(m: MemoryOut) -> pb::Memory {
    pb::Memory {
        id: m.id,
        space: m.space,
        content: m.content,
        confidence: m.confidence,
        tags: m.tags,
        metadata_json: Value::Object(m.metadata).to_string(),
        session: m.session,
        occurred_at: m.occurred_at,
        stored_at: m.stored_at,
        embedding: m.embedding.unwrap_or_default(),
        access_count: m.access_count,
        last_accessed_at: m.last_accessed_at,
        concept: m.concept,
    }
}

fn space_pb(s: SpaceOut) -> pb::Space {
    pb::Space {
        id: s.id,
        memories: s.memories as u64,
        embedding_dim: s.embedding_dim,
        edges: s.edges as u64,
        terms: s.terms as u64,
        tiers: Some(pb::Tiers {
            hot: s.tiers.hot as u64,
            hot_capacity: s.tiers.hot_capacity as u64,
            warm: s.tiers.warm as u64,
            cold: s.tiers.cold as u64,
        }),
        unlinked_vectors: s.unlinked_vectors as u64,
        vector_tombstones: s.vector_tombstones as u64,
    }
}

impl MemoryGrpc {
    async fn do_remember(
        &self,
        request: Request<pb::RememberRequest>,
    ) -> Result<Response<pb::RememberResponse>, Status> {
        let (space, r) = with_space(request)?;
        let concern = self.concern(&r.write_concern)?;
        // The HTTP body's conversion, so both APIs validate alike.
        let req = RememberBody {
            content: r.content,
            confidence: r.confidence,
            embedding: opt_vec(r.embedding),
            tags: r.tags,
            metadata: Some(metadata(&r.metadata_json)?),
            occurred_at: r.occurred_at,
            session: r.session,
            links: r
                .links
                .into_iter()
                .map(|l| LinkBody {
                    target: l.target,
                    weight: l.weight,
                })
                .collect(),
            dedupe: r.dedupe,
        }
        .into_request()?;
        let graph = self.graph()?;
        replicated::precheck(&self.state, &graph, &space, concern)?;
        let done = remember_durably(graph.clone(), space.clone(), req).await?;
        let seq = (done.sequence > 0).then_some(done.sequence);
        replicated::hold(&self.state, &graph, &space, seq, concern).await?;
        let out = RememberOut::from(done);
        Ok(Response::new(pb::RememberResponse {
            id: out.id,
            space: out.space,
            sequence: out.sequence,
            confidence: out.confidence,
            stored_at: out.stored_at,
            deduplicated: out.deduplicated,
            occurred_at: out.occurred_at,
        }))
    }

    async fn do_recall(
        &self,
        request: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        let (space, r) = with_space(request)?;
        let cue: Cue = match r.cue {
            Some(c) => CueBody {
                text: c.text,
                embedding: opt_vec(c.embedding),
                tags: c.tags,
                from: c.from,
                to: c.to,
                min_confidence: c.min_confidence,
                include_concepts: c.include_concepts,
            }
            .into_cue()?,
            None => Cue::default(),
        };
        let spread = r
            .spread
            .map(|s| SpreadBody {
                depth: s.depth,
                decay: s.decay,
                threshold: s.threshold,
                fan_out: s.fan_out.map(|f| f as usize),
            })
            .unwrap_or_default()
            .into_spread();
        let limit = if r.limit == 0 { 10 } else { r.limit as usize };
        let graph = self.graph()?;
        let hits = blocking(move || Ok(graph.recall(&space, &cue, limit, &spread)?)).await?;
        let results: Vec<pb::Recalled> = hits
            .iter()
            .map(|h| {
                let o = RecalledOut::from(h);
                pb::Recalled {
                    memory: Some(memory(o.memory)),
                    score: o.score,
                    activation: o.activation,
                    confidence: o.confidence,
                    via: Some(pb::Via {
                        kind: o.via.kind.to_owned(),
                        path: o.via.path.unwrap_or_default(),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::RecallResponse {
            count: results.len() as u32,
            results,
        }))
    }

    async fn do_get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::Memory>, Status> {
        let (space, r) = with_space(request)?;
        let graph = self.graph()?;
        let m = blocking(move || Ok(graph.get(&space, &r.id, r.include_embedding)?)).await?;
        Ok(Response::new(memory(MemoryOut::from(&m))))
    }

    async fn do_forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        let (space, r) = with_space(request)?;
        let concern = self.concern(&r.write_concern)?;
        let graph = self.graph()?;
        replicated::precheck(&self.state, &graph, &space, concern)?;
        let (g, sp) = (graph.clone(), space.clone());
        blocking(move || Ok(g.forget(&sp, &r.id)?)).await?;
        replicated::hold(&self.state, &graph, &space, None, concern).await?;
        Ok(Response::new(pb::ForgetResponse {}))
    }

    async fn do_link(
        &self,
        request: Request<pb::LinkRequest>,
    ) -> Result<Response<pb::LinkResponse>, Status> {
        let (space, r) = with_space(request)?;
        let concern = self.concern(&r.write_concern)?;
        let graph = self.graph()?;
        replicated::precheck(&self.state, &graph, &space, concern)?;
        let (from, to, weight) = (r.source.clone(), r.target.clone(), r.weight);
        let (g, sp) = (graph.clone(), space.clone());
        blocking(move || Ok(g.link(&sp, &from, &to, weight)?)).await?;
        replicated::hold(&self.state, &graph, &space, None, concern).await?;
        Ok(Response::new(pb::LinkResponse {
            source: r.source,
            target: r.target,
            weight: r.weight.unwrap_or(DEFAULT_LINK_WEIGHT),
        }))
    }

    async fn do_consolidate(
        &self,
        request: Request<pb::ConsolidateRequest>,
    ) -> Result<Response<pb::ConsolidateResponse>, Status> {
        let (space, r) = with_space(request)?;
        let concern = self.concern(&r.write_concern)?;
        let graph = self.graph()?;
        replicated::precheck(&self.state, &graph, &space, concern)?;
        let threshold = r
            .threshold
            .unwrap_or(graph.config().consolidation.threshold);
        let (g, sp) = (graph.clone(), space.clone());
        let rep = blocking(move || Ok(g.consolidate(&sp, threshold)?)).await?;
        replicated::hold(&self.state, &graph, &space, None, concern).await?;
        let o = ConsolidateOut::new(rep, threshold);
        Ok(Response::new(pb::ConsolidateResponse {
            examined: o.examined as u64,
            concepts: o.concepts as u64,
            members: o.members as u64,
            threshold: o.threshold,
            remaining: o.remaining as u64,
            wrapped: o.wrapped,
        }))
    }

    async fn do_create_space(
        &self,
        request: Request<pb::CreateSpaceRequest>,
    ) -> Result<Response<pb::Space>, Status> {
        let r = request.into_inner();
        let concern = self.concern(&r.write_concern)?;
        let graph = self.graph()?;
        let settings = engram_cluster::metadata::SpaceSettings {
            embedding_dim: r.embedding_dim,
            hot_capacity: r.hot_capacity,
        };
        if let Some(stats) =
            replicated::create_space(&self.state, &graph, &r.id, settings, concern).await?
        {
            return Ok(Response::new(space_pb(SpaceOut::from(&stats))));
        }
        let stats = blocking(move || {
            let options = SpaceOptions {
                embedding_dim: r.embedding_dim,
                hot_capacity: r.hot_capacity,
            };
            graph.create_space_with(&r.id, options)?;
            Ok(graph.space_stats(&r.id)?)
        })
        .await?;
        Ok(Response::new(space_pb(SpaceOut::from(&stats))))
    }

    async fn do_list_spaces(
        &self,
        _request: Request<pb::ListSpacesRequest>,
    ) -> Result<Response<pb::ListSpacesResponse>, Status> {
        let graph = self.graph()?;
        let spaces = blocking(move || Ok(graph.spaces()?)).await?;
        Ok(Response::new(pb::ListSpacesResponse {
            spaces: spaces.iter().map(|s| space_pb(SpaceOut::from(s))).collect(),
        }))
    }

    async fn do_delete_space(
        &self,
        request: Request<pb::DeleteSpaceRequest>,
    ) -> Result<Response<pb::DeleteSpaceResponse>, Status> {
        let r = request.into_inner();
        if replicated::delete_space(&self.state, &r.id).await? {
            return Ok(Response::new(pb::DeleteSpaceResponse {}));
        }
        let graph = self.graph()?;
        blocking(move || Ok(graph.delete_space(&r.id)?)).await?;
        Ok(Response::new(pb::DeleteSpaceResponse {}))
    }
}

#[tonic::async_trait]
impl pb::memory_service_server::MemoryService for MemoryGrpc {
    async fn remember(
        &self,
        request: Request<pb::RememberRequest>,
    ) -> Result<Response<pb::RememberResponse>, Status> {
        self.observed(
            "Remember",
            self.serve(
                request,
                |r| self.do_remember(r),
                |mut c, r| async move { c.remember(r).await },
            ),
        )
        .await
    }

    async fn recall(
        &self,
        request: Request<pb::RecallRequest>,
    ) -> Result<Response<pb::RecallResponse>, Status> {
        self.observed(
            "Recall",
            self.serve(
                request,
                |r| self.do_recall(r),
                |mut c, r| async move { c.recall(r).await },
            ),
        )
        .await
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::Memory>, Status> {
        self.observed(
            "Get",
            self.serve(
                request,
                |r| self.do_get(r),
                |mut c, r| async move { c.get(r).await },
            ),
        )
        .await
    }

    async fn forget(
        &self,
        request: Request<pb::ForgetRequest>,
    ) -> Result<Response<pb::ForgetResponse>, Status> {
        self.observed(
            "Forget",
            self.serve(
                request,
                |r| self.do_forget(r),
                |mut c, r| async move { c.forget(r).await },
            ),
        )
        .await
    }

    async fn link(
        &self,
        request: Request<pb::LinkRequest>,
    ) -> Result<Response<pb::LinkResponse>, Status> {
        self.observed(
            "Link",
            self.serve(
                request,
                |r| self.do_link(r),
                |mut c, r| async move { c.link(r).await },
            ),
        )
        .await
    }

    async fn consolidate(
        &self,
        request: Request<pb::ConsolidateRequest>,
    ) -> Result<Response<pb::ConsolidateResponse>, Status> {
        self.observed(
            "Consolidate",
            self.serve(
                request,
                |r| self.do_consolidate(r),
                |mut c, r| async move { c.consolidate(r).await },
            ),
        )
        .await
    }

    async fn create_space(
        &self,
        request: Request<pb::CreateSpaceRequest>,
    ) -> Result<Response<pb::Space>, Status> {
        self.observed("CreateSpace", self.do_create_space(request))
            .await
    }

    async fn list_spaces(
        &self,
        request: Request<pb::ListSpacesRequest>,
    ) -> Result<Response<pb::ListSpacesResponse>, Status> {
        self.observed("ListSpaces", self.do_list_spaces(request))
            .await
    }

    async fn delete_space(
        &self,
        request: Request<pb::DeleteSpaceRequest>,
    ) -> Result<Response<pb::DeleteSpaceResponse>, Status> {
        self.observed("DeleteSpace", self.do_delete_space(request))
            .await
    }
}

/// `engram.v1.ClusterService` over the shared [`AppState`].
#[derive(Debug, Clone)]
pub struct ClusterGrpc {
    inner: MemoryGrpc,
}

impl ClusterGrpc {
    /// The service; wrap it in [`ClusterServiceServer`].
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            inner: MemoryGrpc::new(state),
        }
    }
}

fn lag_pb(r: crate::model::ReplicaLagOut) -> pb::ReplicaLag {
    pb::ReplicaLag {
        space: r.space,
        replica: r.replica,
        role: r.role,
        state: r.state,
        epoch: r.epoch,
        primary_seq: r.primary_seq,
        replica_seq: r.replica_seq,
        lag_records: r.lag_records,
        lag_seconds: r.lag_seconds,
        detail: r.detail.unwrap_or_default(),
    }
}

fn member_pb(m: crate::model::ClusterMemberOut) -> pb::ClusterMember {
    pb::ClusterMember {
        node_id: m.node_id,
        state: m.state.into(),
        gossip_addr: m.gossip_addr,
        http_addr: m.http_addr,
        grpc_addr: m.grpc_addr,
        peer_addr: m.peer_addr,
        rack: m.rack,
        zone: m.zone,
        generation: m.generation,
        is_self: m.is_self,
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for ClusterGrpc {
    async fn get_cluster_health(
        &self,
        _request: Request<pb::GetClusterHealthRequest>,
    ) -> Result<Response<pb::ClusterHealth>, Status> {
        let state = Arc::clone(&self.inner.state);
        self.inner
            .observed("GetClusterHealth", async move {
                let h = crate::http::cluster_health_out(&state);
                Ok(Response::new(pb::ClusterHealth {
                    enabled: h.enabled,
                    status: h.status.into(),
                    node: h.node.map(member_pb),
                    members: h.members.into_iter().map(member_pb).collect(),
                    replication_factor: h.replication_factor.unwrap_or(0),
                    jump_buckets: h.jump_buckets.unwrap_or(0),
                    rebalance: h.rebalance.map(|r| pb::RebalanceStatus {
                        placed_nodes: r.placed_nodes,
                        pending: r.pending,
                        pending_for_ms: r.pending_for_ms.unwrap_or(0),
                        grace_ms: r.grace_ms,
                        rebalances: r.rebalances,
                        partitions_moved: r.partitions_moved,
                    }),
                    spaces: h
                        .spaces
                        .into_iter()
                        .map(|s| pb::SpacePlacement {
                            space: s.space,
                            partition: s.partition,
                            primary: s.primary.unwrap_or_default(),
                            replicas: s.replicas,
                            live_replicas: s.live_replicas,
                            assignment: s.assignment.map(|a| pb::SpaceAssignment {
                                uid: a.uid,
                                epoch: a.epoch,
                                primary: a.primary,
                                replicas: a.replicas,
                                state: a.state.into(),
                            }),
                        })
                        .collect(),
                    replication: h.replication.into_iter().map(lag_pb).collect(),
                    max_lag_records: h.max_lag_records,
                    max_lag_seconds: h.max_lag_seconds,
                    metadata: h.metadata.map(|m| pb::MetadataStatus {
                        cluster_id: m.cluster_id,
                        leader: m.leader.unwrap_or_default(),
                        voters: m.voters,
                        learners: m.learners,
                        role: m.role.into(),
                        term: m.term,
                        applied_index: m.applied_index,
                        registered_nodes: m.registered_nodes,
                    }),
                }))
            })
            .await
    }

    async fn get_replication_status(
        &self,
        _request: Request<pb::GetReplicationStatusRequest>,
    ) -> Result<Response<pb::ReplicationStatus>, Status> {
        let state = Arc::clone(&self.inner.state);
        self.inner
            .observed("GetReplicationStatus", async move {
                let h = crate::http::cluster_health_out(&state);
                Ok(Response::new(pb::ReplicationStatus {
                    replication: h.replication.into_iter().map(lag_pb).collect(),
                    max_lag_records: h.max_lag_records,
                    max_lag_seconds: h.max_lag_seconds,
                }))
            })
            .await
    }
}
