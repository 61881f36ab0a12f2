//! The metadata group: openraft's storage suite on our RocksDB-backed
//! store, and a group of real nodes in one process talking gRPC over
//! loopback (election, forwarding, leader loss, restart, learners,
//! snapshots, bootstrap refusals).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_cluster::metadata::pb::PeerHeader;
use engram_cluster::metadata::pb::ProbeRequest;
use engram_cluster::metadata::pb::metadata_service_client::MetadataServiceClient;
use engram_cluster::metadata::storage::{LogStore, StateMachine};
use engram_cluster::metadata::types::TypeConfig;
use engram_cluster::metadata::{
    Bootstrap, Command, MetadataError, MetadataGroup, MetadataOptions, Outcome, PeerResolver,
    RaftDisk, Rejection,
};
use engram_lsm::{Store, StoreConfig};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn open_store(dir: &Path) -> Arc<Store> {
    let config = StoreConfig {
        block_cache_mb: 8,
        ..StoreConfig::default()
    };
    // A store closed a moment ago may still be held by a task finishing.
    let started = Instant::now();
    loop {
        match Store::open(dir, &config) {
            Ok(s) => return Arc::new(s),
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("open store: {e}"),
        }
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk: Arc<dyn RaftDisk> = open_store(dir.path());
        let sm = StateMachine::open(disk.clone())?;
        Ok((dir, LogStore::new(disk), sm))
    }
}

#[test]
fn openraft_storage_suite_passes_on_the_rocksdb_log_store() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

/// Peer addresses by node name, as gossip would report them.
#[derive(Default)]
struct Book(Mutex<HashMap<String, String>>);

impl PeerResolver for Book {
    fn peer_addr(&self, node: &str) -> Option<String> {
        self.0.lock().ok()?.get(node).cloned()
    }
}

struct Node {
    group: MetadataGroup,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Node {
    async fn kill(mut self) {
        self.group.shutdown().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = self.server.await;
    }
}

fn options(name: &str, addr: &str, voters: &[&str]) -> MetadataOptions {
    let mut o = MetadataOptions::new(name, addr, voters.iter().map(|v| v.to_string()).collect());
    o.heartbeat = Duration::from_millis(50);
    o.election_timeout = (Duration::from_millis(300), Duration::from_millis(600));
    o.rpc_timeout = Duration::from_millis(500);
    o.propose_timeout = Duration::from_secs(10);
    o.snapshot_every = 4;
    o.keep_after_snapshot = 0;
    o
}

async fn start(
    name: &str,
    dir: &Path,
    listener: TcpListener,
    voters: &[&str],
    book: &Arc<Book>,
) -> Result<(Node, JoinHandle<Result<Bootstrap, MetadataError>>), MetadataError> {
    let addr = listener.local_addr().expect("addr").to_string();
    let disk: Arc<dyn RaftDisk> = open_store(dir);
    let group =
        MetadataGroup::start(options(name, &addr, voters), disk, book.clone(), None).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let group = group.clone();
        async move {
            let _ = engram_cluster::peer::serve(listener, group, None, async {
                let _ = stopped.await;
            })
            .await;
        }
    });
    let boot = tokio::spawn({
        let group = group.clone();
        async move { group.bootstrap().await }
    });
    Ok((
        Node {
            group,
            stop: Some(stop),
            server,
        },
        boot,
    ))
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bind(book: &Book, name: &str) -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    book.0.lock().expect("book").insert(name.to_string(), addr);
    l
}

async fn rebind(book: &Book, name: &str) -> TcpListener {
    let addr = book.0.lock().expect("book")[name].clone();
    let started = Instant::now();
    loop {
        match TcpListener::bind(&addr).await {
            Ok(l) => return l,
            Err(e) => {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "rebind {addr}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

fn create(name: &str) -> Command {
    Command::CreateSpace {
        name: name.into(),
        primary: "a".into(),
        replicas: vec!["a".into(), "b".into(), "c".into()],
        options: Default::default(),
    }
}

fn leader_of(nodes: &HashMap<&str, Node>) -> Option<String> {
    let leaders: Vec<&str> = nodes
        .iter()
        .filter(|(_, n)| n.group.is_leader())
        .map(|(k, _)| *k)
        .collect();
    match leaders.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_voters_elect_forward_survive_the_leader_and_feed_a_learner() {
    let book = Arc::new(Book::default());
    let dirs: HashMap<&str, TempDir> = ["a", "b", "c", "d"]
        .into_iter()
        .map(|n| (n, tempfile::tempdir().expect("tempdir")))
        .collect();
    let voters = ["a", "b", "c"];
    let mut listeners = HashMap::new();
    for n in ["a", "b", "c", "d"] {
        listeners.insert(n, bind(&book, n).await);
    }

    // Three pristine voters started together: each probes the others, all
    // are pristine, they initialize the same membership; one leader.
    let mut nodes = HashMap::new();
    let mut boots = Vec::new();
    for n in voters {
        let l = listeners.remove(n).expect("listener");
        let (node, boot) = start(n, dirs[n].path(), l, &voters, &book)
            .await
            .expect("start");
        nodes.insert(n, node);
        boots.push(boot);
    }
    for b in boots {
        let outcome = b.await.expect("join").expect("bootstrap");
        assert!(
            matches!(outcome, Bootstrap::Initialized | Bootstrap::Joining),
            "{outcome:?}"
        );
    }
    let first_leader = until("one leader", || leader_of(&nodes)).await;
    // The leader initializes the cluster once; every voter applies it.
    let cluster_id = until("cluster id everywhere", || {
        let ids: Vec<Option<String>> = nodes
            .values()
            .map(|n| n.group.state().cluster.map(|c| c.cluster_id))
            .collect();
        (ids.iter().all(|i| i.is_some() && *i == ids[0])).then(|| ids[0].clone())
    })
    .await
    .expect("cluster id");
    assert_eq!(cluster_id.len(), 32);

    // A proposal through a follower is forwarded to the leader and its
    // outcome comes back; a duplicate is rejected by the state machine.
    let follower = voters
        .iter()
        .find(|n| **n != first_leader)
        .copied()
        .expect("follower");
    let p = nodes[follower]
        .group
        .propose(create("s1"))
        .await
        .expect("propose");
    let Outcome::Space(s1) = p.outcome else {
        panic!("created: {:?}", p.outcome)
    };
    assert_eq!((s1.uid, s1.epoch), (1, 1));
    let dup = nodes[follower]
        .group
        .propose(create("s1"))
        .await
        .expect("propose");
    assert!(matches!(
        dup.outcome,
        Outcome::Rejected(Rejection::SpaceExists { uid: 1, .. })
    ));
    for i in 2..=8 {
        nodes[follower]
            .group
            .propose(create(&format!("s{i}")))
            .await
            .expect("propose");
    }
    until("every voter applied s1..s8", || {
        nodes
            .values()
            .all(|n| n.group.state().spaces.len() == 8)
            .then_some(())
    })
    .await;

    // A learner (not in the voter list) waits to be added: it registers
    // through a voter (it knows no leader yet), the leader adds it, and it
    // catches up by snapshot (the log below it is purged).
    let l = listeners.remove("d").expect("listener");
    let (d, boot) = start("d", dirs["d"].path(), l, &voters, &book)
        .await
        .expect("start d");
    assert_eq!(
        boot.await.expect("join").expect("bootstrap"),
        Bootstrap::Learner
    );
    until("learner caught up", || {
        (d.group.state().spaces.len() == 8).then_some(())
    })
    .await;
    until("d listed as the learner", || {
        let (vs, ls) = d.group.members();
        (vs.len() == 3 && ls == ["d"]).then_some(())
    })
    .await;

    // The leader dies: the two others elect a new one, committed state is
    // still there, new proposals commit and reach the learner.
    let old = nodes.remove(first_leader.as_str()).expect("leader");
    old.kill().await;
    let second_leader = until("a new leader", || leader_of(&nodes)).await;
    assert_ne!(second_leader, first_leader);
    let p = d
        .group
        .propose(create("s9"))
        .await
        .expect("propose via learner");
    assert!(matches!(p.outcome, Outcome::Space(ref s) if s.uid == 9));
    until("s9 on survivors and learner", || {
        (nodes
            .values()
            .all(|n| n.group.state().spaces.contains_key("s9"))
            && d.group.state().spaces.contains_key("s9"))
        .then_some(())
    })
    .await;

    // The old leader restarts from its data directory: it resumes (no
    // re-initialization), keeps the cluster id and catches up.
    let fl: &str = voters
        .iter()
        .find(|n| **n == first_leader)
        .copied()
        .expect("name");
    let l = rebind(&book, fl).await;
    let (back, boot) = start(fl, dirs[fl].path(), l, &voters, &book)
        .await
        .expect("restart");
    assert_eq!(
        boot.await.expect("join").expect("bootstrap"),
        Bootstrap::Resumed
    );
    until("restarted node caught up", || {
        let st = back.group.state();
        (st.spaces.len() == 9
            && st.cluster.as_ref().map(|c| c.cluster_id.clone()) == Some(cluster_id.clone()))
        .then_some(())
    })
    .await;

    // A message addressed to another node (a stale address) is refused.
    let addr = book.0.lock().expect("book")[fl].clone();
    let mut client = MetadataServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let err = client
        .bootstrap_probe(ProbeRequest {
            header: Some(PeerHeader {
                from_node: "x".into(),
                to_node: "someone-else".into(),
                cluster_id: String::new(),
            }),
        })
        .await
        .expect_err("misaddressed");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    // And one from another cluster.
    let err = client
        .bootstrap_probe(ProbeRequest {
            header: Some(PeerHeader {
                from_node: "x".into(),
                to_node: fl.into(),
                cluster_id: "another-cluster".into(),
            }),
        })
        .await
        .expect_err("foreign cluster");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    // Every node registered its storage id.
    until("four nodes registered", || {
        (nodes.values().all(|n| n.group.state().nodes.len() == 4)).then_some(())
    })
    .await;
    assert_eq!(
        back.group.state().nodes[fl].storage_id,
        back.group.storage_id()
    );

    // The same voter with a wiped data directory refuses to start: the
    // running group lists it and registered another data directory.
    back.kill().await;
    let wiped = tempfile::tempdir().expect("tempdir");
    // Twice: the refusal must hold on the next start too (the leader's
    // heartbeats reached the node meanwhile and must have been refused, so
    // it never saved a vote or took an entry).
    for attempt in 0..2 {
        let l = rebind(&book, fl).await;
        let (w, boot) = start(fl, wiped.path(), l, &voters, &book)
            .await
            .expect("start wiped");
        // Give the leader's heartbeats time to knock.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let err = boot
            .await
            .expect("join")
            .expect_err("wiped voter must refuse");
        assert!(
            matches!(err, MetadataError::VoterWiped { .. }),
            "{attempt}: {err}"
        );
        assert!(err.to_string().contains("old data directory"), "{err}");
        w.kill().await;
        let disk = open_store(wiped.path());
        assert_eq!(
            disk.raft_get_state("vote").expect("read"),
            None,
            "{attempt}: it voted"
        );
        assert_eq!(
            disk.raft_last_entry().expect("read"),
            None,
            "{attempt}: it took entries"
        );
    }

    d.kill().await;
    for (_, n) in nodes {
        n.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_initializes_alone_and_resumes_after_restart() {
    let book = Arc::new(Book::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let l = bind(&book, "solo").await;
    let (n, boot) = start("solo", dir.path(), l, &[], &book)
        .await
        .expect("start");
    assert_eq!(
        boot.await.expect("join").expect("bootstrap"),
        Bootstrap::Initialized
    );
    until("initialized", || n.group.state().cluster.map(|_| ())).await;
    for i in 0..10 {
        n.group
            .propose(create(&format!("s{i}")))
            .await
            .expect("propose");
    }
    let before = n.group.state();
    n.kill().await;
    let l = rebind(&book, "solo").await;
    let (n, boot) = start("solo", dir.path(), l, &[], &book)
        .await
        .expect("restart");
    assert_eq!(
        boot.await.expect("join").expect("bootstrap"),
        Bootstrap::Resumed
    );
    // Snapshot plus the committed log after it: the same state.
    until("state restored", || {
        (n.group.state() == before).then_some(())
    })
    .await;
    n.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_voters_with_different_voter_lists_refuse_to_initialize() {
    let book = Arc::new(Book::default());
    let (dx, dy) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let lx = bind(&book, "x").await;
    let ly = bind(&book, "y").await;
    // x lists x, y, z; y lists x, y, w: each would initialize another group.
    let (x, bx) = start("x", dx.path(), lx, &["x", "y", "z"], &book)
        .await
        .expect("x");
    let (y, by) = start("y", dy.path(), ly, &["x", "y", "w"], &book)
        .await
        .expect("y");
    for boot in [bx, by] {
        let err = tokio::time::timeout(Duration::from_secs(20), boot)
            .await
            .expect("decided in time")
            .expect("join")
            .expect_err("mismatched lists must refuse");
        assert!(matches!(err, MetadataError::VoterMismatch { .. }), "{err}");
        assert!(err.to_string().contains("same list on every node"), "{err}");
    }
    assert!(!x.group.is_leader() && !y.group.is_leader());
    assert_eq!(x.group.state().cluster, None);
    x.kill().await;
    y.kill().await;
}
