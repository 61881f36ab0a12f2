//! Replication between three graphs in one process, over the real gRPC
//! service on loopback: a space led by one node is copied to the two
//! others record for record, write concerns wait for the copies, replicas
//! refuse origin writes, a restarted replica catches up, and bad batches
//! are refused without applying anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_graph::{Graph, GraphConfig, GraphError, OpenOptions, RememberRequest};
use engram_replication::node::proto::{self, replication_service_client::ReplicationServiceClient};
use engram_replication::node::{
    Assignment, PeerDirectory, ReplicationConfig, ReplicationError, Replicator,
};
use engram_replication::protocol::Concern;
use engram_replication::{Batch, BatchLimits, EncodeOptions, Record};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[derive(Debug, Default)]
struct Directory {
    addrs: Mutex<HashMap<String, String>>,
}

impl PeerDirectory for Directory {
    fn peer_addr(&self, node: &str) -> Option<String> {
        self.addrs.lock().ok()?.get(node).cloned()
    }
    fn cluster_id(&self) -> String {
        "test-cluster".into()
    }
}

struct Node {
    name: String,
    dir: tempfile::TempDir,
    graph: Arc<Graph>,
    replicator: Replicator,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

fn config() -> GraphConfig {
    GraphConfig {
        create_default_spaces: false,
        ..GraphConfig::default()
    }
}

fn replication_config() -> ReplicationConfig {
    ReplicationConfig {
        write_timeout: Duration::from_secs(3),
        rpc_timeout: Duration::from_secs(2),
        retry: Duration::from_millis(50),
        ..ReplicationConfig::default()
    }
}

async fn start(
    name: &str,
    dir: tempfile::TempDir,
    directory: &Arc<Directory>,
    port: Option<u16>,
) -> Node {
    start_with(name, dir, directory, port, replication_config()).await
}

async fn start_with(
    name: &str,
    dir: tempfile::TempDir,
    directory: &Arc<Directory>,
    port: Option<u16>,
    rc: ReplicationConfig,
) -> Node {
    let _ = &port;
    let (graph, _) = Graph::open(dir.path(), config(), OpenOptions::default()).expect("open graph");
    let graph = Arc::new(graph);
    let replicator =
        Replicator::start(name, graph.clone(), rc, directory.clone(), None).expect("replicator");
    let listener = TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    directory
        .addrs
        .lock()
        .expect("directory")
        .insert(name.to_owned(), addr.to_string());
    let (tx, rx) = oneshot::channel::<()>();
    let service = replicator.service();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            )
            .await;
    });
    Node {
        name: name.to_owned(),
        dir,
        graph,
        replicator,
        stop: Some(tx),
        server: Some(server),
    }
}

impl Node {
    /// Stops the server and the replicator and returns the data directory.
    async fn stop(mut self) -> tempfile::TempDir {
        self.replicator.shutdown();
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        drop(self.replicator);
        // The graph must be the last holder so the store closes.
        let graph = self.graph;
        for _ in 0..100 {
            if Arc::strong_count(&graph) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(graph);
        self.dir
    }
}

fn assignment(uid: u64, name: &str, epoch: u64, primary: &str, replicas: &[&str]) -> Assignment {
    Assignment {
        uid,
        name: name.into(),
        epoch,
        primary: primary.into(),
        replicas: replicas.iter().map(|s| (*s).to_owned()).collect(),
        embedding_dim: None,
        hot_capacity: None,
        deleting: false,
    }
}

fn text(s: &str) -> RememberRequest {
    RememberRequest {
        content: s.into(),
        ..RememberRequest::default()
    }
}

/// Remembers on `node` (blocking work off the runtime) and waits for the
/// concern.
async fn remember(
    node: &Node,
    space: &str,
    content: &str,
    concern: Concern,
) -> Result<u64, ReplicationError> {
    let g = node.graph.clone();
    let (space_name, c) = (space.to_owned(), content.to_owned());
    let r = tokio::task::spawn_blocking(move || g.remember(&space_name, text(&c)))
        .await
        .expect("join")?;
    let local = node.graph.space_id(space)?;
    node.replicator.wait(local, r.sequence, concern).await?;
    Ok(r.sequence)
}

async fn until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn digests_equal(nodes: &[&Node], uid: u64) -> bool {
    let mut seen = Vec::new();
    for n in nodes {
        match n.replicator.digest(uid).await {
            Ok(Some(d)) => seen.push((d.applied_seq, d.digest)),
            _ => return false,
        }
    }
    seen.windows(2).all(|w| w[0] == w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_space_is_copied_record_for_record_and_quorum_waits_for_the_copies() {
    let directory = Arc::new(Directory::default());
    let a = start("a", tempfile::tempdir().expect("dir"), &directory, None).await;
    let b = start("b", tempfile::tempdir().expect("dir"), &directory, None).await;
    let c = start("c", tempfile::tempdir().expect("dir"), &directory, None).await;
    let all = [assignment(7, "notes", 1, "a", &["a", "b", "c"])];
    for n in [&a, &b, &c] {
        n.replicator.apply(3, &all, &[]).await;
    }
    // The primary created the space; the replicas learn it from its
    // CREATE_SPACE record.
    assert!(a.graph.space_names().contains(&"notes".to_owned()));
    let mut seqs = Vec::new();
    for i in 0..50 {
        seqs.push(
            remember(&a, "notes", &format!("memory {i}"), Concern::Quorum)
                .await
                .expect("quorum write"),
        );
    }
    assert_eq!(seqs.first(), Some(&2), "seq 1 is the space's creation");
    let all_seq = remember(&a, "notes", "for all", Concern::All)
        .await
        .expect("all");
    until(
        "the replicas to hold the space",
        Duration::from_secs(10),
        async || {
            b.graph.space_names().contains(&"notes".to_owned())
                && c.graph.space_names().contains(&"notes".to_owned())
        },
    )
    .await;
    // `all` returned: every member holds the write durably.
    for n in [&b, &c] {
        let local = n.graph.space_id("notes").expect("local id");
        assert!(
            n.graph.engine().next_seq(local) > all_seq,
            "{} lacks the write",
            n.name
        );
    }
    until("equal digests", Duration::from_secs(10), async || {
        digests_equal(&[&a, &b, &c], 7).await
    })
    .await;
    let status = a.replicator.status();
    assert_eq!(status.len(), 3, "{status:?}");
    until("lag 0", Duration::from_secs(10), async || {
        a.replicator
            .status()
            .iter()
            .all(|s| s.lag_records == 0 && (s.state == "in_sync" || s.state == "primary"))
    })
    .await;
    // Replicas refuse origin writes, naming the primary.
    let g = b.graph.clone();
    let refused = tokio::task::spawn_blocking(move || g.remember("notes", text("not here")))
        .await
        .expect("join");
    match refused {
        Err(GraphError::NotPrimary { primary, .. }) => assert_eq!(primary.as_deref(), Some("a")),
        other => panic!("a replica took an origin write: {other:?}"),
    }
    // Replicas read what the primary wrote (from the store).
    let first_id = {
        let g = a.graph.clone();
        tokio::task::spawn_blocking(move || g.remember("notes", text("read me back")))
            .await
            .expect("join")
            .expect("write")
    };
    let local = a.graph.space_id("notes").expect("id");
    a.replicator
        .wait(local, first_id.sequence, Concern::All)
        .await
        .expect("all");
    let g = c.graph.clone();
    let id = first_id.id.clone();
    let got = tokio::task::spawn_blocking(move || g.get("notes", &id, false))
        .await
        .expect("join")
        .expect("read on a replica");
    assert_eq!(got.content, "read me back");
    // A forget reaches every copy.
    let g = a.graph.clone();
    let id = first_id.id.clone();
    tokio::task::spawn_blocking(move || g.forget("notes", &id))
        .await
        .expect("join")
        .expect("forget");
    until(
        "the forget on every copy",
        Duration::from_secs(10),
        async || digests_equal(&[&a, &b, &c], 7).await,
    )
    .await;
    let g = b.graph.clone();
    let id = first_id.id.clone();
    let gone = tokio::task::spawn_blocking(move || g.get("notes", &id, false))
        .await
        .expect("join");
    assert!(
        matches!(gone, Err(GraphError::MemoryNotFound(_))),
        "{gone:?}"
    );

    // One replica down: quorum writes go on; `all` times out with an
    // unknown outcome.
    let c_dir = c.stop().await;
    for i in 0..20 {
        remember(
            &a,
            "notes",
            &format!("while c is down {i}"),
            Concern::Quorum,
        )
        .await
        .expect("quorum with one replica down");
    }
    match remember(&a, "notes", "needs every copy", Concern::All).await {
        Err(ReplicationError::Timeout { .. }) => {}
        other => panic!("`all` held with a member down: {other:?}"),
    }
    // It comes back with its data and catches up from the primary.
    let c = start("c", c_dir, &directory, None).await;
    c.replicator.apply(3, &all, &[]).await;
    until("c to catch up", Duration::from_secs(15), async || {
        digests_equal(&[&a, &b, &c], 7).await
    })
    .await;
    remember(&a, "notes", "every copy again", Concern::All)
        .await
        .expect("all after the catch-up");

    // Deleting the space on the primary drops every copy.
    let g = a.graph.clone();
    tokio::task::spawn_blocking(move || g.delete_space("notes"))
        .await
        .expect("join")
        .expect("delete");
    until(
        "the deletion on every copy",
        Duration::from_secs(10),
        async || {
            !b.graph.space_names().contains(&"notes".to_owned())
                && !c.graph.space_names().contains(&"notes".to_owned())
        },
    )
    .await;
    for n in [a, b, c] {
        n.stop().await;
    }
}

fn fake_batch(first: u64, records: &[Record], epoch: u64, nonce: u64) -> proto::ReplicationBatch {
    let batch =
        Batch::encode(records, &EncodeOptions::default(), &BatchLimits::default()).expect("encode");
    proto::ReplicationBatch {
        header: Some(proto::PeerHeader {
            from_node: "a".into(),
            to_node: "b".into(),
            cluster_id: "test-cluster".into(),
        }),
        space_uid: 9,
        epoch,
        nonce,
        prev_epoch: if first == 1 { 0 } else { epoch },
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        record_count: batch.record_count,
        compression: u32::try_from(batch.compression.to_wire()).expect("wire"),
        uncompressed_len: batch.uncompressed_len,
        crc32: batch.crc32,
        records: batch.records,
        commit_seq: 0,
        epoch_starts: if first == 1 {
            vec![proto::EpochStart {
                epoch,
                start_seq: 1,
            }]
        } else {
            Vec::new()
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batches_are_refused_with_a_reason_and_change_nothing() {
    let directory = Arc::new(Directory::default());
    let b = start("b", tempfile::tempdir().expect("dir"), &directory, None).await;
    let addr = directory.peer_addr("b").expect("addr");
    let mut client = ReplicationServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let header = |to: &str| proto::PeerHeader {
        from_node: "a".into(),
        to_node: to.into(),
        cluster_id: "test-cluster".into(),
    };
    // Misaddressed and foreign-cluster messages never reach the protocol.
    let mut misaddressed = fake_batch(1, &[rec(1)], 1, 5);
    misaddressed.header = Some(header("z"));
    let e = client
        .apply_batch(misaddressed)
        .await
        .expect_err("misaddressed");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    let mut foreign = fake_batch(1, &[rec(1)], 1, 5);
    foreign.header = Some(proto::PeerHeader {
        cluster_id: "another".into(),
        ..header("b")
    });
    let e = client.apply_batch(foreign).await.expect_err("foreign");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // Before a handshake: need a handshake.
    let ack = client
        .apply_batch(fake_batch(1, &[rec(1)], 1, 5))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(ack.status, proto::ReplStatus::ReplNeedHandshake as i32);
    let hs = client
        .handshake(proto::HandshakeRequest {
            header: Some(header("b")),
            space_uid: 9,
            space: "fake".into(),
            epoch: 2,
            incarnation: 77,
            nonce: 5,
            history: vec![proto::EpochStart {
                epoch: 2,
                start_seq: 1,
            }],
            last_seq: 0,
        })
        .await
        .expect("handshake")
        .into_inner();
    assert_eq!(hs.status, proto::ReplStatus::ReplOk as i32, "{hs:?}");
    assert_eq!(hs.next_seq, 1);
    // Wrong checksum.
    let mut bad = fake_batch(1, &[rec(1)], 2, 5);
    bad.crc32 ^= 1;
    let ack = client.apply_batch(bad).await.expect("answer").into_inner();
    assert_eq!(ack.status, proto::ReplStatus::ReplChecksumMismatch as i32);
    // Truncated records.
    let mut cut = fake_batch(1, &[rec(1)], 2, 5);
    cut.records.truncate(cut.records.len() / 2);
    let ack = client.apply_batch(cut).await.expect("answer").into_inner();
    assert_ne!(ack.status, proto::ReplStatus::ReplOk as i32);
    // Claims more than the limit.
    let mut huge = fake_batch(1, &[rec(1)], 2, 5);
    huge.uncompressed_len = u32::MAX;
    let ack = client.apply_batch(huge).await.expect("answer").into_inner();
    assert_eq!(ack.status, proto::ReplStatus::ReplMalformed as i32);
    // Stale epoch.
    let ack = client
        .apply_batch(fake_batch(1, &[rec(1)], 1, 5))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(ack.status, proto::ReplStatus::ReplStaleEpoch as i32);
    assert_eq!(ack.promised_epoch, 2);
    // Not contiguous: starts at 3 on an empty log.
    let ack = client
        .apply_batch(fake_batch(3, &[rec(3)], 2, 5))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(ack.status, proto::ReplStatus::ReplNotContiguous as i32);
    assert_eq!(ack.expected_seq, 1);
    // A batch whose second record does not decode (checksum right): FAILED,
    // and not even its first record is appended.
    let broken = [
        rec(1),
        Record {
            seq: 2,
            kind: engram_graph::kind::REMEMBER,
            payload: vec![0xff, 0xff, 0xff],
        },
    ];
    let ack = client
        .apply_batch(fake_batch(1, &broken, 2, 5))
        .await
        .expect("answer")
        .into_inner();
    assert_eq!(ack.status, proto::ReplStatus::ReplFailed as i32, "{ack:?}");
    assert_eq!(ack.durable_seq, 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Nothing was applied: the node holds no space and an empty log.
    assert!(b.graph.space_names().is_empty());
    assert_eq!(
        b.replicator
            .digest(9)
            .await
            .expect("digest")
            .map(|d| d.applied_seq),
        Some(0)
    );
    b.stop().await;
}

/// A record whose payload is an empty mutation list.
fn rec(seq: u64) -> Record {
    Record {
        seq,
        kind: engram_graph::kind::EPOCH_START,
        payload: engram_lsm::mutation::encode(&[]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_set_smaller_than_a_quorum_refuses_quorum_writes_before_writing() {
    let directory = Arc::new(Directory::default());
    let a = start("a", tempfile::tempdir().expect("dir"), &directory, None).await;
    // Replication factor 3, one member: a quorum (2) can never hold.
    a.replicator
        .apply(3, &[assignment(5, "alone", 1, "a", &["a"])], &[])
        .await;
    let local = a.graph.space_id("alone").expect("created");
    match a.replicator.check(local, Concern::Quorum) {
        Err(ReplicationError::Insufficient {
            members: 1,
            quorum: 2,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert!(a.replicator.check(local, Concern::All).is_err());
    assert!(a.replicator.check(local, Concern::Primary).is_ok());
    let before = a.graph.engine().next_seq(local);
    // `primary` writes are taken; a quorum wait says why it cannot hold.
    remember(&a, "alone", "on one disk", Concern::Primary)
        .await
        .expect("primary write");
    assert_eq!(a.graph.engine().next_seq(local), before + 1);
    match remember(&a, "alone", "needs two copies", Concern::Quorum).await {
        Err(ReplicationError::Insufficient { .. }) => {}
        other => panic!("{other:?}"),
    }
    a.stop().await;
}

/// Writes `n` memories through `node` with `concern`.
async fn write_many(node: &Node, space: &str, prefix: &str, n: usize, concern: Concern) {
    for i in 0..n {
        remember(node, space, &format!("{prefix} {i}"), concern)
            .await
            .expect("write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_member_is_reinstalled_from_a_snapshot_with_an_equal_digest() {
    let directory = Arc::new(Directory::default());
    let a = start("a", tempfile::tempdir().expect("dir"), &directory, None).await;
    let b = start("b", tempfile::tempdir().expect("dir"), &directory, None).await;
    let c = start("c", tempfile::tempdir().expect("dir"), &directory, None).await;
    let all = [assignment(9, "wiki", 1, "a", &["a", "b", "c"])];
    for n in [&a, &b, &c] {
        n.replicator.apply(3, &all, &[]).await;
    }
    write_many(&a, "wiki", "before", 50, Concern::All).await;
    until("equal digests", Duration::from_secs(10), async || {
        digests_equal(&[&a, &b, &c], 9).await
    })
    .await;
    // c loses its data directory; the primary's ring dropped what every
    // member had, so c's records 1..=51 exist only in stores.
    drop(c.stop().await);
    write_many(&a, "wiki", "while c is away", 20, Concern::Quorum).await;
    let c = start("c", tempfile::tempdir().expect("dir"), &directory, None).await;
    c.replicator.apply(3, &all, &[]).await;
    // Writes go on while c is reinstalled.
    let mut written = 0;
    let started = Instant::now();
    while !digests_equal(&[&a, &b, &c], 9).await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "c was not reinstalled: {:?}",
            a.replicator.status()
        );
        remember(&a, "wiki", &format!("during {written}"), Concern::Quorum)
            .await
            .expect("quorum write during the install");
        written += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let d = c.replicator.digest(9).await.expect("digest").expect("copy");
    assert!(d.memories >= 70, "{d:?}");
    // The installed copy takes writes like any copy, and `all` holds.
    remember(&a, "wiki", "after the install", Concern::All)
        .await
        .expect("all after the install");
    until("equal digests again", Duration::from_secs(10), async || {
        digests_equal(&[&a, &b, &c], 9).await
    })
    .await;
    // It is a copy like any other after a restart too.
    let c_dir = c.stop().await;
    let c = start("c", c_dir, &directory, None).await;
    c.replicator.apply(3, &all, &[]).await;
    remember(&a, "wiki", "after c restarted", Concern::All)
        .await
        .expect("all after the restart");
    until(
        "equal digests after the restart",
        Duration::from_secs(10),
        async || digests_equal(&[&a, &b, &c], 9).await,
    )
    .await;
    let g = c.graph.clone();
    let names = tokio::task::spawn_blocking(move || g.space_names())
        .await
        .expect("join");
    assert_eq!(names, vec!["wiki".to_owned()], "one copy, no leftovers");
    for n in [a, b, c] {
        n.stop().await;
    }
}

fn snapshot_header(to: &str, uid: u64, epoch: u64) -> proto::SnapshotPart {
    proto::SnapshotPart {
        part: Some(proto::snapshot_part::Part::Header(proto::SnapshotHeader {
            header: Some(proto::PeerHeader {
                from_node: "fake".into(),
                to_node: to.into(),
                cluster_id: "test-cluster".into(),
            }),
            space_uid: uid,
            space: "fake-space".into(),
            epoch,
            incarnation: 5,
            history: vec![proto::EpochStart {
                epoch,
                start_seq: 1,
            }],
        })),
    }
}

fn snapshot_chunk(family: &str, pairs: &[(Vec<u8>, Vec<u8>)]) -> proto::SnapshotPart {
    let c = engram_replication::SnapshotChunk::encode(
        family,
        pairs,
        None,
        &engram_replication::ChunkLimits::default(),
    )
    .expect("chunk");
    proto::SnapshotPart {
        part: Some(proto::snapshot_part::Part::Chunk(
            proto::SnapshotChunkPart {
                family: c.family,
                entries: c.entries,
                compression: 0,
                uncompressed_len: c.uncompressed_len,
                crc32: c.crc32,
                kvs: c.kvs,
            },
        )),
    }
}

/// Sends `parts` as one snapshot stream and returns the answer.
async fn install(
    client: &mut ReplicationServiceClient<tonic::transport::Channel>,
    parts: Vec<proto::SnapshotPart>,
) -> proto::SnapshotAck {
    client
        .install_snapshot(tokio_stream::iter(parts))
        .await
        .expect("answer")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_or_bad_snapshot_leaves_nothing_behind() {
    let directory = Arc::new(Directory::default());
    let b = start("b", tempfile::tempdir().expect("dir"), &directory, None).await;
    let addr = directory.peer_addr("b").expect("addr");
    let mut client = ReplicationServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let record = |name: &str| -> Vec<u8> {
        // A space record as the graph writes it is opaque here: any bytes
        // do for an install that never commits.
        name.as_bytes().to_vec()
    };
    // 1. A chunk whose checksum does not match: refused, nothing kept.
    let mut bad = snapshot_chunk("episodes", &[(vec![1; 16], b"value".to_vec())]);
    if let Some(proto::snapshot_part::Part::Chunk(c)) = bad.part.as_mut() {
        c.crc32 ^= 1;
    }
    let parts = vec![snapshot_header("b", 77, 1), bad];
    let ack = install(&mut client, parts).await;
    assert_eq!(
        ack.status,
        proto::ReplStatus::ReplChecksumMismatch as i32,
        "{ack:?}"
    );
    // 2. An end that does not match what was sent.
    let parts = vec![
        snapshot_header("b", 77, 1),
        snapshot_chunk("meta", &[(vec![0x02], record("fake-space"))]),
        proto::SnapshotPart {
            part: Some(proto::snapshot_part::Part::End(proto::SnapshotEnd {
                seq: 10,
                entries: 5,
                bytes: 1,
            })),
        },
    ];
    let ack = install(&mut client, parts).await;
    assert_eq!(
        ack.status,
        proto::ReplStatus::ReplMalformed as i32,
        "{ack:?}"
    );
    // 3. A stream that stops before its end (the sender went away).
    let parts = vec![
        snapshot_header("b", 77, 1),
        snapshot_chunk("episodes", &[(vec![2; 16], b"half".to_vec())]),
    ];
    let ack = install(&mut client, parts).await;
    assert_eq!(
        ack.status,
        proto::ReplStatus::ReplMalformed as i32,
        "{ack:?}"
    );
    // 4. An unknown family and a first message that is not a header.
    let parts = vec![
        snapshot_header("b", 77, 1),
        snapshot_chunk("raft_log", &[(vec![3], b"x".to_vec())]),
    ];
    let ack = install(&mut client, parts).await;
    assert_eq!(
        ack.status,
        proto::ReplStatus::ReplMalformed as i32,
        "{ack:?}"
    );
    let parts = vec![snapshot_chunk("episodes", &[(vec![4; 16], b"x".to_vec())])];
    let ack = install(&mut client, parts).await;
    assert_eq!(
        ack.status,
        proto::ReplStatus::ReplMalformed as i32,
        "{ack:?}"
    );
    // Nothing of them is left: no space, no half-written keys, no
    // pending install.
    let store = b.graph.engine().store();
    assert!(store.abandoned_installs().expect("installs").is_empty());
    assert!(b.graph.space_names().is_empty());
    for space in 0..8 {
        for cf in engram_lsm::Cf::DATA {
            assert_eq!(
                store.scan_space(cf, space).expect("scan").count(),
                0,
                "keys of space id {space} in {}",
                cf.name()
            );
        }
    }
    // A crash in the middle of an install: the next start removes it.
    let store = b.graph.engine().store();
    store.install_begin(40).expect("begin");
    store
        .install_put(
            40,
            &[(
                engram_lsm::ImageFamily::Data(engram_lsm::Cf::Episodes),
                vec![5; 16],
                b"half".to_vec(),
            )],
        )
        .expect("put");
    let dir = b.stop().await;
    let b = start("b", dir, &directory, None).await;
    let store = b.graph.engine().store();
    assert!(store.abandoned_installs().expect("installs").is_empty());
    assert_eq!(
        store
            .scan_space(engram_lsm::Cf::Episodes, 40)
            .expect("scan")
            .count(),
        0
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_too_far_behind_has_its_copy_replaced_by_a_snapshot() {
    // No WAL kept for lagging members and a ring of one record: any member
    // that misses records needs a snapshot.
    let tiny = ReplicationConfig {
        recent_records_bytes: 1,
        max_retained_wal_bytes: 0,
        ..replication_config()
    };
    let directory = Arc::new(Directory::default());
    let a = start_with(
        "a",
        tempfile::tempdir().expect("dir"),
        &directory,
        None,
        tiny.clone(),
    )
    .await;
    let b = start("b", tempfile::tempdir().expect("dir"), &directory, None).await;
    let c = start("c", tempfile::tempdir().expect("dir"), &directory, None).await;
    let all = [assignment(11, "atlas", 1, "a", &["a", "b", "c"])];
    for n in [&a, &b, &c] {
        n.replicator.apply(3, &all, &[]).await;
    }
    write_many(&a, "atlas", "first", 20, Concern::All).await;
    let old_local = c.graph.space_id("atlas").expect("c holds a copy");
    let c_dir = c.stop().await;
    write_many(&a, "atlas", "while c is away", 30, Concern::Quorum).await;
    let c = start("c", c_dir, &directory, None).await;
    c.replicator.apply(3, &all, &[]).await;
    until("c reinstalled", Duration::from_secs(20), async || {
        digests_equal(&[&a, &b, &c], 11).await
    })
    .await;
    // Its old copy was replaced, not kept beside the new one.
    let new_local = c.graph.space_id("atlas").expect("c holds a copy");
    assert_ne!(
        new_local, old_local,
        "the copy was not replaced by a snapshot"
    );
    let store = c.graph.engine().store();
    assert!(store.abandoned_installs().expect("installs").is_empty());
    for cf in engram_lsm::Cf::DATA {
        assert_eq!(
            store.scan_space(cf, old_local).expect("scan").count(),
            0,
            "keys of the replaced copy left in {}",
            cf.name()
        );
    }
    assert!(store.replica_state(old_local).expect("state").is_none());
    // It takes writes again, and keeps them across a restart.
    remember(&a, "atlas", "after the install", Concern::All)
        .await
        .expect("all");
    let c_dir = c.stop().await;
    let c = start("c", c_dir, &directory, None).await;
    c.replicator.apply(3, &all, &[]).await;
    remember(&a, "atlas", "after the restart", Concern::All)
        .await
        .expect("all after the restart");
    until(
        "equal digests after the restart",
        Duration::from_secs(10),
        async || digests_equal(&[&a, &b, &c], 11).await,
    )
    .await;
    assert_eq!(c.graph.space_id("atlas").expect("copy"), new_local);
    for n in [a, b, c] {
        n.stop().await;
    }
}
