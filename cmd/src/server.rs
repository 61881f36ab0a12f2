//! `engram start`: the server's lifecycle.
//!
//! 1. lock the data directory, bind both listeners (a busy port or a second
//!    server on the same data directory fails here, clearly);
//! 2. serve at once: `/health/alive` answers, readiness is 503;
//! 3. join the cluster (when `cluster.enabled`), recover storage, start
//!    background work, warm up, then report ready;
//! 4. on SIGTERM or SIGINT: not ready, stop accepting, leave the cluster, drain (bounded),
//!    flush, log `Graceful shutdown complete`, exit 0. A second signal
//!    exits at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use engram_api::AppState;
use engram_api::grpc::{ClusterGrpc, ClusterServiceServer, MemoryGrpc, MemoryServiceServer, pb};
use engram_cluster::metadata::{MetadataError, MetadataGroup, MetadataOptions, RaftDisk};
use engram_cluster::spaces::SpacesOptions;
use engram_cluster::{Cluster, StartOptions};
use engram_graph::{Background, Graph, OpenOptions};
use engram_replication::node::Replicator;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::listener;
use crate::lock::DirLock;

/// Runs the server until a signal; returns after a clean shutdown.
pub fn run(config: Config, repair: bool) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("engram-worker")
        .max_blocking_threads(config.server.blocking_threads)
        .build()
        .context("starting the async runtime")?;
    let result = rt.block_on(serve(config, repair));
    // Blocking graph calls still running after the drain get a short grace;
    // only then is the data directory's lock released.
    rt.shutdown_timeout(Duration::from_secs(2));
    let result = result.map(drop);
    if result.is_ok() {
        tracing::info!("Graceful shutdown complete");
    }
    result
}

async fn bind(addr: SocketAddr, what: &str, flag: &str, env: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow!(
                "cannot listen for {what} on {addr}: the port is already in use (another engram or another program?); choose another with {flag} or {env}"
            )
        } else {
            anyhow!("cannot listen for {what} on {addr}: {e}")
        }
    })
}

/// Raises the soft open-files limit to the hard one: every client
/// connection and every RocksDB SST file holds a descriptor, and 1024 (a
/// common default) is too few for a database with many clients.
fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// The node's RocksDB store, for the metadata group's raft families.
struct GraphDisk(Arc<Graph>);

impl RaftDisk for GraphDisk {
    fn store(&self) -> &engram_lsm::Store {
        self.0.engine().store()
    }
}

/// Options of the metadata group from `[cluster]`.
fn metadata_options(config: &Config, cluster: &Cluster) -> MetadataOptions {
    let me = cluster.me();
    let c = &config.cluster;
    let mut o = MetadataOptions::new(&me.node_id, &me.peer.to_string(), c.metadata.voters.clone());
    o.replication_factor = u8::try_from(c.replication.replication_factor).unwrap_or(u8::MAX);
    o.jump_buckets = c.replication.jump_buckets;
    o.heartbeat = Duration::from_millis(c.metadata.heartbeat_ms);
    o.election_timeout = (
        Duration::from_millis(c.metadata.election_timeout_ms),
        Duration::from_millis(c.metadata.election_timeout_ms.saturating_mul(2)),
    );
    o
}

/// Serves until a signal; returns the data directory's lock, which the
/// caller releases only after every storage call has ended.
async fn serve(config: Config, repair: bool) -> Result<DirLock> {
    let started = Instant::now();
    let open_files = raise_nofile_limit();
    let lock = DirLock::acquire(&config.data_dir)?;
    // A backup interrupted by a crash leaves its checkpoint (hard links to
    // SST files, forgotten data included) behind: remove it now, not at the
    // next backup.
    let scratch = config.data_dir.join("backup-tmp");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("removing an interrupted backup's {}", scratch.display()))?;
        tracing::info!(path = %scratch.display(), "removed an interrupted backup's checkpoint");
    }
    let bind_ip = config.server.bind;
    let http = bind(
        SocketAddr::new(bind_ip, config.server.http_port),
        "HTTP",
        "--http-port",
        "ENGRAM_HTTP_PORT",
    )
    .await?;
    let grpc = bind(
        SocketAddr::new(bind_ip, config.server.grpc_port),
        "gRPC",
        "--grpc-port",
        "ENGRAM_GRPC_PORT",
    )
    .await?;
    let http_addr = http.local_addr()?;
    let grpc_addr = grpc.local_addr()?;
    tracing::info!(
        version = engram_api::VERSION,
        http = %http_addr,
        grpc = %grpc_addr,
        data_dir = %config.data_dir.display(),
        lock = %lock.path().display(),
        open_files_limit = open_files,
        "engram starting"
    );

    let registry = Registry::new();
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering process metrics")?;
    let state = AppState::starting(registry.clone()).context("registering HTTP metrics")?;

    // The peer port (node-to-node RPCs) is bound before membership starts,
    // so its port is gossiped.
    let peer = if config.cluster.enabled {
        let addr = config.cluster.network.peer_bind;
        Some(TcpListener::bind(addr).await.map_err(|e| {
            anyhow!(
                "cannot listen for peers on {addr}: {e}; choose another address with the config key cluster.network.peer_bind"
            )
        })?)
    } else {
        None
    };
    // Cluster membership starts before recovery: a bad advertise address
    // fails the start at once, and peers learn of this node while it
    // recovers (it is not ready, but it is alive).
    if config.cluster.enabled {
        let peer_port = match &peer {
            Some(l) => l.local_addr()?.port(),
            None => 0,
        };
        let cluster = Cluster::start(
            StartOptions {
                config: config.cluster.clone(),
                http_port: http_addr.port(),
                grpc_port: grpc_addr.port(),
                peer_port,
            },
            &registry,
        )
        .await
        .map_err(|e| anyhow!("cluster: {e}"))?;
        state.attach_cluster(Arc::new(cluster));
    }

    // Shutdown: `stop` flips on the first signal; `close` flips after
    // readiness is off, and only then do the listeners stop accepting.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let (close_tx, close_rx) = watch::channel(false);
    tokio::spawn(signals(Arc::clone(&stop_tx)));
    // Set when the node must not keep running (a metadata voter that lost
    // its raft state): the shutdown runs, then the start fails with it.
    let fatal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();

    // Connection caps sized so clients can never take the descriptors
    // storage needs (an exhausted fd table fails RocksDB's next file open).
    let reserve = listener::storage_reserve(config.storage.max_open_files as usize);
    let (http_cap, grpc_cap) = listener::fit_to_descriptors(
        config.server.max_connections,
        config.server.grpc_max_connections,
        reserve,
        open_files,
    );
    if (http_cap, grpc_cap)
        != (
            config.server.max_connections,
            config.server.grpc_max_connections,
        )
    {
        tracing::warn!(
            open_files_limit = open_files,
            storage_reserve = reserve,
            http = http_cap,
            grpc = grpc_cap,
            "connection limits lowered to fit the open-files limit (raise `ulimit -n` / LimitNOFILE to allow more)"
        );
    }
    let first_bytes_timeout = Duration::from_millis(config.server.header_read_timeout_ms);
    let connections = listener::ConnectionMetrics::register(&registry)
        .context("registering connection metrics")?;
    let router = engram_api::router(Arc::clone(&state), &config.api_config()?);
    let http_limits = listener::Limits {
        max_connections: http_cap,
        first_bytes_timeout,
    };
    let http_task = tokio::spawn(listener::serve_http(
        http,
        router,
        http_limits,
        connections.clone(),
        close_rx.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<MemoryServiceServer<MemoryGrpc>>()
        .await;
    // Reflection in both versions: grpcurl and most tools ask
    // `grpc.reflection.v1`, Python's grpcio-reflection and older grpcurl ask
    // `grpc.reflection.v1alpha`. Each lists both reflection services. The
    // builder is consumed by a build, hence one per version.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building gRPC reflection v1")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("building gRPC reflection v1alpha")?;
    let memory = MemoryServiceServer::new(MemoryGrpc::new(Arc::clone(&state)))
        .max_decoding_message_size(config.server.body_limit_bytes);
    let cluster_service = ClusterServiceServer::new(ClusterGrpc::new(Arc::clone(&state)));
    let grpc_incoming = listener::GrpcIncoming::new(
        grpc,
        listener::Limits {
            max_connections: grpc_cap,
            first_bytes_timeout,
        },
        connections,
    );
    let grpc_timeout = Duration::from_millis(config.server.request_timeout_ms);
    let grpc_streams = config.server.grpc_max_concurrent_streams;
    let mut grpc_rx = close_rx.clone();
    let grpc_task = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .timeout(grpc_timeout)
            .max_concurrent_streams(Some(grpc_streams))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(memory)
            .add_service(cluster_service)
            .serve_with_incoming_shutdown(grpc_incoming, async move {
                let _ = grpc_rx.wait_for(|s| *s).await;
            })
            .await
    });

    // Recovery runs while health checks already answer (503 until ready).
    let graph_config = config.graph_config()?;
    let data_dir = config.data_dir.clone();
    let open_registry = registry.clone();
    let opened = tokio::task::spawn_blocking(move || {
        Graph::open(
            &data_dir,
            graph_config,
            OpenOptions {
                repair,
                registry: Some(open_registry),
            },
        )
    })
    .await
    .context("storage recovery task failed")?;
    let (graph, report) = match opened {
        Ok(g) => g,
        Err(e) => {
            return Err(anyhow!(e).context(format!(
                "opening the data directory {}",
                config.data_dir.display()
            )));
        }
    };
    let graph = Arc::new(graph);

    // The metadata group needs the store (its raft families) and the
    // gossip view (peer addresses).
    let mut peer_task = None;
    let mut spaces_task = None;
    if let (Some(cluster), Some(listener)) = (state.cluster().cloned(), peer) {
        let disk: Arc<dyn RaftDisk> = Arc::new(GraphDisk(Arc::clone(&graph)));
        let opts = metadata_options(&config, &cluster);
        let resolver: Arc<dyn engram_cluster::metadata::PeerResolver> = cluster.clone();
        let group = MetadataGroup::start(opts, disk, resolver, Some(&registry))
            .await
            .map_err(|e| anyhow!("starting the metadata group: {e}"))?;
        state.attach_metadata(group.clone());
        // Replication: the graph takes origin writes only for the spaces
        // this node leads; the committed assignments say which.
        let directory = Arc::new(engram_cluster::spaces::Directory::new(
            Arc::clone(&cluster),
            group.clone(),
        ));
        let replicator = Replicator::start(
            &cluster.me().node_id,
            Arc::clone(&graph),
            config.replication.replicator(),
            directory,
            Some(&registry),
        )
        .map_err(|e| anyhow!("starting replication: {e}"))?;
        state.attach_replicator(
            replicator.clone(),
            config.replication.concern()?,
            config.replication.write_timeout(),
        );
        spaces_task = Some(engram_cluster::spaces::spawn(
            group.clone(),
            Arc::clone(&cluster),
            replicator.clone(),
            SpacesOptions {
                bootstrap_spaces: config.memory.bootstrap_spaces.clone(),
                bootstrap_wait: Duration::from_millis(config.cluster.replication.bootstrap_wait_ms),
            },
            close_rx.clone(),
        ));
        let mut peer_rx = close_rx.clone();
        peer_task = Some(tokio::spawn(engram_cluster::peer::serve(
            listener,
            group.clone(),
            Some(replicator),
            async move {
                let _ = peer_rx.wait_for(|s| *s).await;
            },
        )));
        let (fatal, stop_tx) = (Arc::clone(&fatal), Arc::clone(&stop_tx));
        tokio::spawn(async move {
            match group.bootstrap().await {
                Ok(b) => tracing::info!(bootstrap = ?b, "metadata group joined"),
                Err(MetadataError::Stopped) => {}
                Err(e) => {
                    tracing::error!(error = %e, "metadata group: this node must not run");
                    if let Ok(mut f) = fatal.lock() {
                        *f = Some(e.to_string());
                    }
                    let _ = stop_tx.send(true);
                }
            }
        });
    }
    // Only now can requests reach the graph: in a cluster, the write
    // authority and the replication feed are in place (no write is taken
    // that replication would not see).
    state.attach(Arc::clone(&graph));
    tracing::info!(
        replayed = report.replayed,
        applied_lsn = report.applied_after,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "storage recovered"
    );
    let background = Background::start(&graph).context("starting background tasks")?;
    // A space that cannot be loaded is refused (503 space_unavailable) while
    // the others serve: it is logged here and shown by the health checks,
    // and the node still becomes ready.
    let damaged = if config.server.warm_up && !*stop_rx.borrow() {
        let g = Arc::clone(&graph);
        let warm = tokio::task::spawn_blocking(move || g.warm_up()).await;
        match warm {
            Ok(Ok(report)) => report.damaged,
            Ok(Err(e)) => return Err(anyhow!(e).context("loading space indexes")),
            Err(e) => return Err(anyhow!(e).context("warm-up task failed")),
        }
    } else {
        // Without warm-up only unreadable space records are known yet.
        graph.damaged_spaces()
    };
    for d in &damaged {
        tracing::error!(
            space = d.name.as_deref().unwrap_or(""),
            space_id = d.id,
            reason = %d.reason,
            retried = d.retried,
            "space unavailable: its data could not be loaded; requests to it get 503 space_unavailable while the other spaces serve (see docs/operations/troubleshooting.md)"
        );
    }
    let (loaded, total) = graph.loaded_spaces();
    if !*stop_rx.borrow() {
        state.set_ready(true);
        health.set_service_status("", ServingStatus::Serving).await;
        health
            .set_serving::<MemoryServiceServer<MemoryGrpc>>()
            .await;
        tracing::info!(
            http = %http_addr,
            grpc = %grpc_addr,
            spaces = total,
            loaded,
            startup_ms = started.elapsed().as_millis() as u64,
            "engram ready"
        );
    }

    // Wait for the first signal.
    let mut rx = stop_rx.clone();
    let _ = rx.wait_for(|s| *s).await;
    tracing::info!("shutdown requested: readiness off, draining requests");
    state.set_ready(false);
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<MemoryServiceServer<MemoryGrpc>>()
        .await;
    let _ = close_tx.send(true);
    if let Some(task) = spaces_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    if let Some(metadata) = state.metadata() {
        metadata.shutdown().await;
    }
    if let Some(task) = peer_task {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    if let Some(cluster) = state.cluster() {
        // Peers mark this node down now instead of after the suspicion timeout.
        cluster.leave().await;
    }

    let drain = Duration::from_millis(config.server.shutdown_drain_ms);
    let deadline = tokio::time::Instant::now() + drain;
    for (name, task) in [("HTTP", http_task), ("gRPC", grpc_task.map_err_box())] {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(()))) => tracing::info!(server = name, "listener closed, requests drained"),
            Ok(Ok(Err(e))) => {
                tracing::warn!(server = name, error = %e, "server ended with an error")
            }
            Ok(Err(e)) => tracing::warn!(server = name, error = %e, "server task failed"),
            Err(_) => tracing::warn!(
                server = name,
                drain_ms = drain.as_millis() as u64,
                "requests still running after the drain period; closing them"
            ),
        }
    }

    // Requests drained: ship what the copies still lack, then stop the
    // shippers (bounded: a copy that does not answer is not waited for).
    if let Some(r) = state.replicator() {
        r.drain(Duration::from_secs(3)).await;
        r.shutdown();
    }

    // Background work stops (its last access flush runs), writes are sealed
    // and the loaded spaces' indexes written to snapshots, then everything
    // applied reaches SST files. Every acknowledged write was fsynced in
    // the WAL before its answer, so this only shortens the next start.
    let g = Arc::clone(&graph);
    tokio::task::spawn_blocking(move || {
        drop(background);
        if let Err(e) = g.flush_access() {
            tracing::warn!(error = %e, "writing access statistics at shutdown failed");
        }
        let t = std::time::Instant::now();
        if g.seal_writes(Duration::from_secs(5)) {
            let r = g.save_index_snapshots();
            tracing::info!(
                spaces = r.spaces,
                memories = r.memories,
                bytes = r.bytes,
                failed = r.failed,
                elapsed_ms = t.elapsed().as_millis() as u64,
                "index snapshots written"
            );
        } else {
            tracing::warn!("writes still running 5 s after the drain: index snapshots skipped (the next start rebuilds the indexes)");
        }
        match g.engine().store().flush() {
            Ok(()) => tracing::info!("store flushed"),
            Err(e) => tracing::warn!(error = %e, "flushing the store at shutdown failed"),
        }
    })
    .await
    .context("final flush task failed")?;
    let fatal = fatal.lock().ok().and_then(|f| f.clone());
    if let Some(message) = fatal {
        return Err(anyhow!(message));
    }
    Ok(lock)
}

/// Sets the stop flag on the first SIGTERM/SIGINT; exits on the second.
async fn signals(stop: Arc<watch::Sender<bool>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        // Keep the sender alive: returning would read as a stop request.
        std::future::pending::<()>().await;
        return;
    };
    for round in 0.. {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        if round == 0 {
            tracing::info!(signal = name, "signal received");
            let _ = stop.send(true);
        } else {
            tracing::warn!(
                signal = name,
                "second signal: exiting without a clean shutdown"
            );
            std::process::exit(130);
        }
    }
}

/// Makes the gRPC task's error type printable like the HTTP one.
trait MapErrBox {
    fn map_err_box(self) -> tokio::task::JoinHandle<Result<(), std::io::Error>>;
}

impl MapErrBox for tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    fn map_err_box(self) -> tokio::task::JoinHandle<Result<(), std::io::Error>> {
        tokio::spawn(async move {
            match self.await {
                Ok(r) => r.map_err(std::io::Error::other),
                Err(e) => Err(std::io::Error::other(e)),
            }
        })
    }
}
