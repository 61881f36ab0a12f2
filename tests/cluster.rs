//! Cluster membership with real `engram` processes: three nodes on loopback
//! converge, agree on placement, form one metadata group (one leader, one
//! cluster id), detect a `kill -9`, re-place after the grace period, and
//! take the restarted node back; the advertise-address refusal, run inside
//! a private network namespace (no route leaves it); seeds without metadata
//! voters are refused.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Options, Server, bin, run_cli};
use engram_api::grpc::pb;
use pb::cluster_service_client::ClusterServiceClient;
use serde_json::{Value, json};

/// Timings of the test cluster (the defaults are LAN production values).
const PROBE_PERIOD_MS: u64 = 300;
const SUSPECT_TO_DOWN_MS: u64 = 1500;
const GRACE_MS: u64 = 1500;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("udp port")
        .port()
}

fn node_env(id: &str, port: u16, seeds: &str) -> Vec<(String, String)> {
    let env = [
        ("ENGRAM_CLUSTER__ENABLED", "true".to_string()),
        ("ENGRAM_NODE_ID", id.to_string()),
        (
            "ENGRAM_CLUSTER__NETWORK__SWIM_BIND",
            format!("127.0.0.1:{port}"),
        ),
        ("ENGRAM_CLUSTER_SEEDS", seeds.to_string()),
        ("ENGRAM_METADATA_VOTERS", "node-0,node-1,node-2".into()),
        ("ENGRAM_CLUSTER__NETWORK__PEER_BIND", "127.0.0.1:0".into()),
        ("ENGRAM_CLUSTER__METADATA__HEARTBEAT_MS", "100".into()),
        (
            "ENGRAM_CLUSTER__METADATA__ELECTION_TIMEOUT_MS",
            "600".into(),
        ),
        ("ENGRAM_CLUSTER__ZONE", format!("zone-{id}")),
        (
            "ENGRAM_CLUSTER__SWIM__PROBE_PERIOD_MS",
            PROBE_PERIOD_MS.to_string(),
        ),
        ("ENGRAM_CLUSTER__SWIM__PROBE_RTT_MS", "100".into()),
        (
            "ENGRAM_CLUSTER__SWIM__SUSPECT_TO_DOWN_MS",
            SUSPECT_TO_DOWN_MS.to_string(),
        ),
        ("ENGRAM_CLUSTER__SWIM__GOSSIP_INTERVAL_MS", "100".into()),
        ("ENGRAM_CLUSTER__SWIM__REJOIN_INTERVAL_MS", "300".into()),
        (
            "ENGRAM_CLUSTER__REPLICATION__REPLICATION_FACTOR",
            "2".into(),
        ),
        (
            "ENGRAM_CLUSTER__REPLICATION__REBALANCE_GRACE_MS",
            GRACE_MS.to_string(),
        ),
        (
            "ENGRAM_MEMORY__BOOTSTRAP_SPACES",
            "[\"agent-1\", \"agent-2\", \"agent-3\", \"agent-4\"]".into(),
        ),
    ];
    env.iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn start_node(dir: &Path, id: &str, port: u16, seeds: &str) -> Server {
    Server::start_with(
        dir,
        Options {
            env: node_env(id, port, seeds),
            ..Options::default()
        },
    )
}

fn health(s: &Server) -> Value {
    let r = s.get("/cluster/health");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The desired placement of every space in a health answer, without the
/// committed assignments (their epochs move when a primary restarts).
fn placement(h: &Value) -> Value {
    let mut spaces = h["spaces"].clone();
    for s in spaces.as_array_mut().into_iter().flatten() {
        if let Some(o) = s.as_object_mut() {
            o.remove("assignment");
        }
    }
    spaces
}

fn state_of(h: &Value, id: &str) -> Option<String> {
    h["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == id)
        .and_then(|m| m["state"].as_str())
        .map(String::from)
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    loop {
        if ok() {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The metadata group as `s` reports it: (cluster id, leader, voters,
/// registered nodes).
fn metadata(s: &Server) -> (String, Option<String>, usize, usize) {
    let h = health(s);
    let m = &h["metadata"];
    (
        m["cluster_id"].as_str().unwrap_or_default().to_string(),
        m["leader"].as_str().map(String::from),
        m["voters"].as_array().map_or(0, Vec::len),
        m["registered_nodes"].as_array().map_or(0, Vec::len),
    )
}

/// Every node of `nodes` knows the same leader (not `except`) and cluster
/// id, with 3 voters and 3 registered nodes; returns the leader.
fn one_metadata_group(nodes: &[&Server], except: Option<&str>) -> Option<(String, String)> {
    let seen: Vec<_> = nodes.iter().map(|n| metadata(n)).collect();
    let (id, leader, _, _) = seen.first()?.clone();
    let leader = leader?;
    (!id.is_empty()
        && except != Some(leader.as_str())
        && seen
            .iter()
            .all(|m| m.0 == id && m.1.as_deref() == Some(leader.as_str()) && m.2 == 3 && m.3 == 3))
    .then_some((id, leader))
}

/// Every node sees node-0, node-1 and node-2 alive.
fn all_alive(nodes: &[Server]) -> bool {
    nodes.iter().all(|n| {
        let h = health(n);
        (0..3).all(|i| state_of(&h, &format!("node-{i}")).as_deref() == Some("alive"))
    })
}

fn placed(h: &Value) -> Vec<String> {
    h["rebalance"]["placed_nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_nodes_converge_detect_kill9_replace_and_readmit() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let seeds = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let t0 = Instant::now();
    let mut nodes: Vec<Server> = (0..3)
        .map(|i| start_node(dirs[i].path(), &format!("node-{i}"), ports[i], &seeds))
        .collect();

    // 1. Convergence: 3 alive members everywhere within 10 s.
    let converged = wait_until(
        "3 alive members on every node",
        Duration::from_secs(10),
        || all_alive(&nodes),
    );
    println!(
        "cluster: 3 alive members on every node {:?} after the first process was spawned ({converged:?} after the last was ready)",
        t0.elapsed()
    );
    wait_until("placement over 3 nodes", Duration::from_secs(10), || {
        nodes.iter().all(|n| placed(&health(n)).len() == 3)
    });
    // One metadata group: every node knows the same leader and cluster id,
    // and all three registered.
    let mut group = None;
    let formed = wait_until("one metadata group", Duration::from_secs(20), || {
        group = one_metadata_group(&nodes.iter().collect::<Vec<_>>(), None);
        group.is_some()
    });
    let (cluster_id, first_leader) = group.expect("metadata group");
    println!(
        "cluster: metadata group formed (leader {first_leader}, cluster id {cluster_id}) {:?} after the first spawn ({formed:?} after convergence)",
        t0.elapsed()
    );
    // The leader creates `default` and the bootstrap spaces once two
    // (replication_factor) nodes registered; every node learns them.
    wait_until(
        "5 spaces assigned on every node",
        Duration::from_secs(20),
        || {
            nodes.iter().all(|n| {
                health(n)["spaces"].as_array().is_some_and(|a| {
                    a.len() == 5 && a.iter().all(|s| s["assignment"]["uid"].as_u64().is_some())
                })
            })
        },
    );
    let h0 = health(&nodes[0]);
    assert_eq!(h0["enabled"], true);
    assert_eq!(h0["status"], "healthy", "{h0:#}");
    assert_eq!(h0["node"]["node_id"], "node-0");
    assert_eq!(h0["node"]["gossip_addr"], format!("127.0.0.1:{}", ports[0]));
    assert_eq!(h0["node"]["http_addr"], nodes[0].http.to_string());
    assert_eq!(h0["node"]["zone"], "zone-node-0");
    assert_eq!(h0["replication_factor"], 2);
    // Every node places every space the same way, on 2 distinct live nodes.
    let spaces = h0["spaces"].as_array().expect("spaces").clone();
    assert_eq!(spaces.len(), 5, "default + 4 bootstrap spaces: {h0:#}");
    for s in &spaces {
        assert_eq!(s["replicas"].as_array().map(Vec::len), Some(2), "{s}");
        assert_eq!(s["live_replicas"], 2);
        assert_eq!(s["primary"], s["replicas"][0]);
    }
    for n in &nodes[1..] {
        assert_eq!(
            placement(&health(n)),
            placement(&h0),
            "nodes disagree on placement"
        );
    }

    // The same data through `engram status --json` and gRPC.
    let url = format!("http://{}", nodes[1].http);
    let (code, out, err) = run_cli(&["status", "--json", "--url", &url], &[]);
    assert_eq!(code, 0, "{err}");
    let st: Value = serde_json::from_str(&out).expect("status json");
    assert_eq!(
        st["cluster"]["members"].as_array().map(Vec::len),
        Some(3),
        "{st:#}"
    );
    assert_eq!(st["cluster"]["node"]["node_id"], "node-1");
    assert_eq!(placement(&st["cluster"]), placement(&h0));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let grpc_health = rt.block_on(async {
        let mut c = ClusterServiceClient::connect(format!("http://{}", nodes[2].grpc))
            .await
            .expect("connect");
        c.get_cluster_health(pb::GetClusterHealthRequest {})
            .await
            .expect("GetClusterHealth")
            .into_inner()
    });
    assert!(grpc_health.enabled);
    assert_eq!(
        grpc_health.node.as_ref().map(|n| n.node_id.as_str()),
        Some("node-2")
    );
    assert_eq!(grpc_health.members.len(), 3);
    assert_eq!(grpc_health.replication_factor, 2);
    assert_eq!(grpc_health.spaces.len(), 5);
    let grpc_meta = grpc_health.metadata.expect("metadata status");
    assert_eq!(grpc_meta.cluster_id, cluster_id);
    assert_eq!(grpc_meta.voters.len(), 3);
    assert!(
        !grpc_health
            .node
            .as_ref()
            .expect("node")
            .peer_addr
            .is_empty()
    );

    // 2. kill -9 node-2: the others mark it down within the suspicion time
    // (plus one probe cycle), then re-place its partitions after the grace.
    let generation_before = h0["members"][2]["generation"].as_u64().expect("generation");
    nodes[2].kill9();
    let killed = Instant::now();
    let detected = wait_until(
        "node-2 down on node-0 and node-1",
        Duration::from_secs(10),
        || {
            nodes[..2]
                .iter()
                .all(|n| state_of(&health(n), "node-2").as_deref() == Some("down"))
        },
    );
    println!(
        "cluster: kill -9 detected as down after {detected:?} (suspect_to_down_ms {SUSPECT_TO_DOWN_MS}, probe_period_ms {PROBE_PERIOD_MS})"
    );
    assert!(
        detected < Duration::from_millis(SUSPECT_TO_DOWN_MS + 4 * PROBE_PERIOD_MS + 1000),
        "down only after {detected:?}"
    );
    let replaced = wait_until("placement without node-2", Duration::from_secs(10), || {
        nodes[..2]
            .iter()
            .all(|n| placed(&health(n)) == ["node-0", "node-1"])
    });
    let since_kill = killed.elapsed();
    println!("cluster: partitions re-placed {since_kill:?} after the kill (grace {GRACE_MS} ms)");
    assert!(
        since_kill >= Duration::from_millis(GRACE_MS),
        "re-placed before the grace period ended ({replaced:?})"
    );
    let h = health(&nodes[0]);
    assert_eq!(h["status"], "degraded", "{h:#}");
    assert!(h["rebalance"]["partitions_moved"].as_u64().unwrap_or(0) > 0);
    for s in h["spaces"].as_array().expect("spaces") {
        assert_eq!(
            s["live_replicas"], 2,
            "every space keeps 2 live replicas: {s}"
        );
        assert!(
            !s["replicas"]
                .as_array()
                .expect("r")
                .contains(&json!("node-2"))
        );
    }
    // The two live voters keep (or elect) a leader other than node-2.
    let mut regrouped = None;
    let elected = wait_until(
        "a metadata leader among node-0 and node-1",
        Duration::from_secs(20),
        || {
            let m: Vec<_> = nodes[..2].iter().map(metadata).collect();
            regrouped = m[0].1.clone().filter(|l| {
                l != "node-2"
                    && m.iter()
                        .all(|x| x.0 == cluster_id && x.1.as_deref() == Some(l))
            });
            regrouped.is_some()
        },
    );
    println!(
        "cluster: metadata leader after killing node-2 (leader was {first_leader}): {} ({elected:?} after the re-placement)",
        regrouped.unwrap_or_default()
    );
    let metrics = nodes[0].get("/metrics").text();
    assert!(
        metrics.contains("engram_metadata_has_leader 1"),
        "{metrics}"
    );
    let applied = metrics
        .lines()
        .find(|l| l.starts_with("engram_metadata_proposals_total{outcome=\"applied\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(
        applied >= 1.0,
        "node-0 registered itself through a proposal: {metrics}"
    );
    assert!(metrics.contains("engram_metadata_proposal_seconds_bucket"));
    assert!(
        metrics.contains("engram_cluster_members{state=\"down\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("engram_cluster_rebalances_total"));

    // 3. Restart node-2 with the same node id: alive again, newer generation.
    let restarted = Instant::now();
    nodes[2] = start_node(dirs[2].path(), "node-2", ports[2], &seeds);
    let back = wait_until(
        "node-2 alive again everywhere",
        Duration::from_secs(10),
        || all_alive(&nodes),
    );
    println!(
        "cluster: restarted node-2 alive everywhere {:?} after its spawn ({back:?} after it was ready)",
        restarted.elapsed()
    );
    let h = health(&nodes[0]);
    let m2 = h["members"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["node_id"] == "node-2"))
        .expect("node-2")
        .clone();
    assert!(m2["generation"].as_u64().unwrap_or(0) > generation_before);
    wait_until(
        "placement over 3 nodes again",
        Duration::from_secs(10),
        || nodes.iter().all(|n| placed(&health(n)).len() == 3),
    );
    assert_eq!(
        placement(&health(&nodes[0])),
        placement(&h0),
        "placement returns to the 3-node one"
    );
    // The restarted node resumes its raft state (no second group): the
    // same cluster id, one leader everywhere, from its new peer port.
    wait_until(
        "node-2 back in the metadata group",
        Duration::from_secs(20),
        || {
            one_metadata_group(&nodes.iter().collect::<Vec<_>>(), None)
                .is_some_and(|(id, _)| id == cluster_id)
        },
    );

    // 4. node-2 comes back with an empty data directory: the group lists it
    // as a voter and registered another storage id for it, so it lost its
    // votes and acknowledged entries; it refuses to run and says what to do.
    nodes[2].signal(libc::SIGTERM);
    assert!(
        nodes[2]
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let wiped = tempfile::tempdir().expect("tempdir");
    let out = Command::new("timeout")
        .arg("60")
        .arg(bin())
        .args(["start", "--data-dir"])
        .arg(wiped.path())
        .args(["--http-port", "0", "--grpc-port", "0"])
        .envs(node_env("node-2", ports[2], &seeds))
        .env_remove("RUST_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("run engram");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && out.status.code() != Some(124),
        "a wiped voter ran (or hung): {:?}\n{err}",
        out.status
    );
    assert!(err.contains("has no raft state"), "{err}");
    assert!(err.contains("old data directory"), "{err}");
    println!("cluster: a wiped voter refused to start ({:?})", out.status);

    // 5. A graceful stop is announced: peers see it down without waiting
    // for the suspicion timeout.
    nodes[1].signal(libc::SIGTERM);
    assert!(
        nodes[1]
            .wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let left = wait_until("node-1 down after leaving", Duration::from_secs(10), || {
        state_of(&health(&nodes[0]), "node-1").as_deref() == Some("down")
    });
    println!("cluster: SIGTERM'd node-1 seen down after {left:?}");
}

#[test]
fn a_standalone_node_reports_standalone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let h = health(&s);
    assert_eq!(h["enabled"], false);
    assert_eq!(h["status"], "standalone");
    assert_eq!(h["members"], json!([]));
    assert_eq!(h["metadata"], Value::Null);
    assert_eq!(h["spaces"][0]["space"], "default");
}

#[test]
fn wildcard_or_loopback_advertise_addresses_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    for (advertise, bind) in [
        ("0.0.0.0", "0.0.0.0:0"),
        ("127.0.0.1", "0.0.0.0:0"),
        ("", "127.0.0.1:0"),
    ] {
        // Refused before any datagram is sent (the seed is only parsed).
        let (code, _, err) = run_cli(
            &[
                "start",
                "--data-dir",
                d,
                "--http-port",
                "0",
                "--grpc-port",
                "0",
            ],
            &[
                ("ENGRAM_CLUSTER__ENABLED", "true"),
                ("ENGRAM_NODE_ID", "node-x"),
                ("ENGRAM_CLUSTER__NETWORK__SWIM_BIND", bind),
                ("ENGRAM_CLUSTER_ADVERTISE_ADDR", advertise),
                ("ENGRAM_CLUSTER_SEEDS", "192.0.2.10:7946"),
                ("ENGRAM_METADATA_VOTERS", "node-x"),
            ],
        );
        assert_ne!(
            code, 0,
            "advertise {advertise:?} bind {bind} accepted: {err}"
        );
        assert!(err.contains("[cluster.network].advertise_addr"), "{err}");
        assert!(err.contains("ENGRAM_CLUSTER_ADVERTISE_ADDR"), "{err}");
    }
}

/// Runs a shell script inside a new network namespace that has only a
/// loopback interface: no route reaches the non-loopback seed, and nothing
/// the node sends can leave.
fn in_private_netns(script: &str) -> (i32, String) {
    let out = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", script])
        .env("ENGRAM", bin())
        .env_remove("RUST_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .expect("unshare runs (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn wildcard_bind_without_advertise_fails_and_the_env_override_starts() {
    let probe = Command::new("unshare").args(["--net", "true"]).status();
    assert!(
        probe.is_ok_and(|s| s.success()),
        "this test needs `unshare --net` (root or CAP_SYS_ADMIN): it runs the node in a private network namespace"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let common = format!(
        "ip link set lo up; export HOME={d} ENGRAM_CLUSTER__ENABLED=true ENGRAM_NODE_ID=node-x \
         ENGRAM_CLUSTER__NETWORK__SWIM_BIND=0.0.0.0:7946 ENGRAM_CLUSTER_SEEDS=192.0.2.10:7946 \
         ENGRAM_METADATA_VOTERS=node-x;",
        d = dir.path().display()
    );
    // Without an advertise address: no interface routes to the seed, so
    // auto-detection fails and the start is refused, naming both settings.
    let (code, out) = in_private_netns(&format!(
        "{common} \"$ENGRAM\" start --data-dir {d}/a --http-port 7432 --grpc-port 50051",
        d = dir.path().display()
    ));
    assert_ne!(code, 0, "started without an advertise address: {out}");
    assert!(out.contains("[cluster.network].advertise_addr"), "{out}");
    assert!(out.contains("ENGRAM_CLUSTER_ADVERTISE_ADDR"), "{out}");
    // With ENGRAM_CLUSTER_ADVERTISE_ADDR it starts, reports ready, advertises
    // that address, and stops cleanly.
    let (code, out) = in_private_netns(&format!(
        "{common} export ENGRAM_CLUSTER_ADVERTISE_ADDR=192.0.2.20; \
         \"$ENGRAM\" start --data-dir {d}/b --http-port 7432 --grpc-port 50051 2>{d}/log & pid=$!; \
         ok=1; for i in $(seq 1 100); do \
           if \"$ENGRAM\" status --json --url http://127.0.0.1:7432 >{d}/status.json 2>/dev/null; then ok=0; break; fi; \
           sleep 0.1; done; \
         kill -TERM $pid; wait $pid; rc=$?; cat {d}/status.json; cat {d}/log >&2; \
         [ $ok -eq 0 ] && [ $rc -eq 0 ]",
        d = dir.path().display()
    ));
    assert_eq!(
        code, 0,
        "did not start with ENGRAM_CLUSTER_ADVERTISE_ADDR: {out}"
    );
    assert!(
        out.contains("\"gossip_addr\": \"192.0.2.20:7946\""),
        "{out}"
    );
    assert!(
        out.contains("advertising the configured gossip address"),
        "{out}"
    );
}

#[test]
fn seeds_without_metadata_voters_are_refused() {
    // Every node would form a metadata group of its own: refused before
    // anything starts, naming the key and what to set.
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let (code, _, err) = run_cli(
        &[
            "start",
            "--data-dir",
            d,
            "--http-port",
            "0",
            "--grpc-port",
            "0",
        ],
        &[
            ("ENGRAM_CLUSTER__ENABLED", "true"),
            ("ENGRAM_NODE_ID", "node-0"),
            ("ENGRAM_CLUSTER_SEEDS", "127.0.0.1:7946"),
        ],
    );
    assert_ne!(code, 0, "started without voters: {err}");
    assert!(err.contains("cluster.metadata.voters"), "{err}");
    assert!(
        err.contains("engram-0"),
        "the message shows an example: {err}"
    );
    assert!(
        std::fs::read_dir(d).map_or(0, |r| r.count()) == 0,
        "nothing was created in the data directory"
    );
}

#[test]
fn a_restored_backup_forgets_the_metadata_group_it_was_taken_in() {
    // A one-node cluster: its own metadata group, a cluster id.
    let env = |id: &str| -> Vec<(String, String)> {
        [
            ("ENGRAM_CLUSTER__ENABLED", "true"),
            ("ENGRAM_NODE_ID", id),
            ("ENGRAM_CLUSTER__NETWORK__SWIM_BIND", "127.0.0.1:0"),
            ("ENGRAM_CLUSTER__NETWORK__PEER_BIND", "127.0.0.1:0"),
            // One node: one copy (a larger factor makes quorum writes wait
            // for copies that cannot exist).
            ("ENGRAM_CLUSTER__REPLICATION__REPLICATION_FACTOR", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let cluster_id = |s: &Server| {
        let mut id = String::new();
        wait_until("a cluster id", Duration::from_secs(20), || {
            id = metadata(s).0;
            !id.is_empty()
        });
        id
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start_with(
        dir.path(),
        Options {
            env: env("solo"),
            ..Options::default()
        },
    );
    let before = cluster_id(&s);
    common::wait_space_led(&s, "default", Duration::from_secs(20));
    let r = s.post("/api/v1/memories/remember", &json!({"content": "kept"}));
    assert_eq!(r.status, 201);
    let id = r.json()["id"].as_str().expect("id").to_owned();
    let out = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{}", s.http);
    let (code, stdout, err) = run_cli(
        &[
            "backup",
            "--output",
            out.path().to_str().expect("utf8"),
            "--url",
            &url,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(30)).is_some());
    let restored = tempfile::tempdir().expect("tempdir");
    let target = restored.path().join("data");
    let (code, _, err) = run_cli(
        &[
            "restore",
            "--input",
            stdout.trim(),
            "--data-dir",
            target.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("metadata-group state was cleared"), "{err}");
    // Started again, it forms a new group (its old vote and log are gone)
    // and still holds the data.
    let s = Server::start_with(
        &target,
        Options {
            env: env("solo"),
            ..Options::default()
        },
    );
    let after = cluster_id(&s);
    assert_ne!(
        after, before,
        "the restored node resumed the backup's metadata group"
    );
    assert_eq!(s.get(&format!("/api/v1/memories/{id}")).status, 200);
}
