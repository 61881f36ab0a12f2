//! Replication with three real `engram` processes on loopback, RF 3: a
//! space created through one node is led by its placed primary and copied
//! to the two others; quorum writes sent to every node are forwarded to the
//! primary, acknowledged and readable through every node; copies converge
//! (`verify`); a replica killed with `kill -9` does not stop quorum writes,
//! `engram status --json` exits 4 while it lags and 0 once it restarted and
//! caught up from the primary's WAL; `all` times out with an unknown outcome while a copy is down;
//! forget and space deletion reach every copy; gRPC calls are forwarded
//! like HTTP requests. A second cluster shows a
//! member whose data directory was wiped reinstalled from a snapshot while
//! writes go on, and corrupted batches (fault point) refused and resent.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Options, Server, run_cli};
use engram_api::grpc::pb;
use pb::cluster_service_client::ClusterServiceClient;
use pb::memory_service_client::MemoryServiceClient;
use serde_json::{Value, json};

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("udp port")
        .port()
}

fn node_env(id: &str, port: u16, seeds: &str) -> Vec<(String, String)> {
    [
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
        ("ENGRAM_CLUSTER__SWIM__PROBE_PERIOD_MS", "300".into()),
        ("ENGRAM_CLUSTER__SWIM__PROBE_RTT_MS", "100".into()),
        ("ENGRAM_CLUSTER__SWIM__SUSPECT_TO_DOWN_MS", "1500".into()),
        ("ENGRAM_CLUSTER__SWIM__GOSSIP_INTERVAL_MS", "100".into()),
        ("ENGRAM_CLUSTER__SWIM__REJOIN_INTERVAL_MS", "300".into()),
        (
            "ENGRAM_CLUSTER__REPLICATION__REPLICATION_FACTOR",
            "3".into(),
        ),
        (
            "ENGRAM_CLUSTER__REPLICATION__REBALANCE_GRACE_MS",
            "1500".into(),
        ),
        (
            "ENGRAM_CLUSTER__REPLICATION__BOOTSTRAP_WAIT_MS",
            "20000".into(),
        ),
        ("ENGRAM_REPLICATION__WRITE_TIMEOUT_MS", "2000".into()),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect()
}

/// A node with extra environment (later entries win).
fn start_node_with(dir: &Path, id: &str, port: u16, seeds: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = node_env(id, port, seeds);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Server::start_with(
        dir,
        Options {
            env,
            ..Options::default()
        },
    )
}

/// The sum of a counter's samples whose labels contain `labels` in the
/// node's `/metrics`.
fn counter(s: &Server, name: &str, labels: &str) -> f64 {
    let text = s.get("/metrics").text();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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

fn health(s: &Server) -> Value {
    let r = s.get("/cluster/health");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The committed assignment of `space` as `s` sees it.
fn assignment(s: &Server, space: &str) -> Option<Value> {
    health(s)["spaces"]
        .as_array()?
        .iter()
        .find(|p| p["space"] == space)
        .and_then(|p| p.get("assignment").cloned())
        .filter(|a| !a.is_null())
}

fn remember(s: &Server, space: &str, content: &str, concern: &str) -> common::Resp {
    let body = serde_json::to_vec(&json!({ "content": content })).expect("json");
    s.req(
        "POST",
        "/api/v1/memories/remember",
        &[
            ("Content-Type", "application/json"),
            ("X-Memory-Space", space),
            ("X-Write-Concern", concern),
        ],
        &body,
    )
}

fn verify(s: &Server, space: &str) -> Value {
    let r = s.req("POST", &format!("/cluster/spaces/{space}/verify"), &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn by_name<'a>(nodes: &'a [Option<Server>], name: &str) -> &'a Server {
    let i: usize = name.trim_start_matches("node-").parse().expect("node name");
    nodes[i].as_ref().expect("running")
}

fn status_json(s: &Server) -> (i32, Value) {
    let url = format!("http://{}", s.http);
    let (code, out, err) = run_cli(
        &["status", "--json", "--url", &url],
        &[("ENGRAM_REPLICATION__LAG_ALERT_RECORDS", "5")],
    );
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out} {err}"));
    (code, v)
}

/// Data directories, gossip ports and the seed list of three nodes.
fn three_homes() -> (Vec<tempfile::TempDir>, Vec<u16>, String) {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let ports: Vec<u16> = (0..3).map(|_| free_udp_port()).collect();
    let seeds: String = ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    (dirs, ports, seeds)
}

#[test]
fn three_nodes_replicate_every_write_forward_and_report_lag() {
    let (dirs, ports, seeds) = three_homes();
    // 1 MiB of recent records in memory: a copy that misses more catches
    // up from the primary's WAL.
    let wal_only = [("ENGRAM_REPLICATION__RECENT_RECORDS_MB", "1")];
    let started = Instant::now();
    let mut nodes: Vec<Option<Server>> = (0..3)
        .map(|i| {
            Some(start_node_with(
                dirs[i].path(),
                &format!("node-{i}"),
                ports[i],
                &seeds,
                &wal_only,
            ))
        })
        .collect();
    // `default` is created once three nodes registered, on all three.
    let took = wait_until(
        "the default space on three copies",
        Duration::from_secs(60),
        || {
            nodes.iter().flatten().all(|n| {
                assignment(n, "default").and_then(|a| a["replicas"].as_array().map(Vec::len))
                    == Some(3)
            })
        },
    );
    println!(
        "replication: `default` assigned to 3 nodes {:.1} s after the first start",
        (started.elapsed()).as_secs_f64()
    );
    let _ = took;

    // Create a space through node-1.
    let r = by_name(&nodes, "node-1").post("/api/v1/spaces", &json!({ "id": "notes" }));
    assert_eq!(r.status, 201, "{}", r.text());
    let a = assignment(by_name(&nodes, "node-1"), "notes").expect("assigned");
    let primary = a["primary"].as_str().expect("primary").to_owned();
    let replicas: Vec<String> = a["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|v| v.as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(replicas.len(), 3);
    println!("replication: space notes led by {primary}, copies on {replicas:?}");

    // Quorum writes through every node: forwarded to the primary.
    let mut ids = Vec::new();
    let t = Instant::now();
    for i in 0..60 {
        let via = nodes[i % 3].as_ref().expect("node");
        let r = remember(via, "notes", &format!("memory number {i}"), "quorum");
        assert_eq!(
            r.status,
            201,
            "write {i} through node-{}: {}",
            i % 3,
            r.text()
        );
        assert_eq!(r.header("x-engram-served-by"), Some(primary.as_str()));
        ids.push(r.json()["id"].as_str().expect("id").to_owned());
    }
    println!(
        "replication: 60 quorum writes through 3 nodes in {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    // Readable through every node.
    for n in nodes.iter().flatten() {
        for id in ids.iter().step_by(7) {
            let r = n.req(
                "GET",
                &format!("/api/v1/memories/{id}?space=notes"),
                &[],
                b"",
            );
            assert_eq!(r.status, 200, "{}", r.text());
        }
    }
    // Lag 0 and every copy equal.
    let p = by_name(&nodes, &primary);
    wait_until("lag 0", Duration::from_secs(10), || {
        let h = health(p);
        h["max_lag_records"] == 0
            && h["replication"]
                .as_array()
                .is_some_and(|r| r.iter().filter(|e| e["space"] == "notes").count() == 3)
    });
    wait_until("consistent copies", Duration::from_secs(10), || {
        verify(by_name(&nodes, "node-0"), "notes")["consistent"] == true
    });
    let v = verify(by_name(&nodes, "node-2"), "notes");
    assert_eq!(v["copies"].as_array().map(Vec::len), Some(3), "{v}");
    for c in v["copies"].as_array().expect("copies") {
        assert_eq!(c["memories"], 60, "{v}");
    }
    let (code, st) = status_json(p);
    assert_eq!(code, 0, "{st}");

    // gRPC: a call through a node that does not lead the space is
    // forwarded to its primary; GetReplicationStatus reports the copies.
    let other = replicas
        .iter()
        .find(|r| **r != primary)
        .expect("replica")
        .clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let addr = format!("http://{}", by_name(&nodes, &other).grpc);
        let mut c = MemoryServiceClient::connect(addr).await.expect("connect");
        let r = c
            .remember(pb::RememberRequest {
                space: "notes".into(),
                content: "remembered through gRPC".into(),
                write_concern: "quorum".into(),
                ..Default::default()
            })
            .await
            .expect("a forwarded remember");
        assert_eq!(
            r.metadata()
                .get("x-engram-served-by")
                .and_then(|v| v.to_str().ok()),
            Some(primary.as_str())
        );
        let id = r.into_inner().id;
        let got = c
            .get(pb::GetRequest {
                space: "notes".into(),
                id,
                include_embedding: false,
            })
            .await
            .expect("a forwarded get")
            .into_inner();
        assert_eq!(got.content, "remembered through gRPC");
        let addr = format!("http://{}", by_name(&nodes, &primary).grpc);
        let mut cc = ClusterServiceClient::connect(addr).await.expect("connect");
        let st = cc
            .get_replication_status(pb::GetReplicationStatusRequest {})
            .await
            .expect("replication status")
            .into_inner();
        let notes: Vec<_> = st
            .replication
            .iter()
            .filter(|e| e.space == "notes")
            .collect();
        assert_eq!(notes.len(), 3, "{st:?}");
        assert_eq!(notes[0].role, "primary", "{st:?}");
        let h = cc
            .get_cluster_health(pb::GetClusterHealthRequest {})
            .await
            .expect("health")
            .into_inner();
        let placed = h
            .spaces
            .iter()
            .find(|s| s.space == "notes")
            .and_then(|s| s.assignment.clone())
            .expect("assignment over gRPC");
        assert_eq!(placed.primary, primary);
        assert_eq!(placed.replicas.len(), 3);
    });

    // A replica other than the primary is killed: quorum writes go on,
    // `all` cannot hold.
    let victim = replicas
        .iter()
        .find(|r| **r != primary)
        .expect("replica")
        .clone();
    let vi: usize = victim.trim_start_matches("node-").parse().expect("index");
    nodes[vi].as_mut().expect("victim").kill9();
    nodes[vi] = None;
    let writer = by_name(&nodes, &primary);
    // About 60 KB each: more than the ring keeps.
    let filler = "remembered while a copy was away ".repeat(1800);
    for i in 0..20 {
        let r = remember(
            writer,
            "notes",
            &format!("while {victim} is down {i} {filler}"),
            "quorum",
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let r = remember(writer, "notes", "needs every copy", "all");
    assert_eq!(r.status, 503, "{}", r.text());
    let e = r.json();
    assert_eq!(e["error"]["code"], "write_concern_timeout", "{e}");
    assert_eq!(e["error"]["outcome"], "unknown", "{e}");
    assert!(e["error"]["sequence"].as_u64().is_some(), "{e}");
    let (code, st) = status_json(writer);
    assert_eq!(code, 4, "a copy lags by 21 records: {st}");
    assert!(st["max_lag_records"].as_u64().unwrap_or(0) > 5, "{st}");
    assert_eq!(st["lagging"], true, "{st}");
    // Health checks ask about the node itself.
    let url = format!("http://{}", writer.http);
    let (code, out, _) = run_cli(
        &["status", "--ignore-lag", "--url", &url],
        &[("ENGRAM_REPLICATION__LAG_ALERT_RECORDS", "5")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replica notes"), "{out}");

    // It restarts with its data and catches up.
    let from_wal = counter(
        by_name(&nodes, &primary),
        "engram_replication_records_shipped_total",
        "source=\"wal\"",
    );
    nodes[vi] = Some(start_node_with(
        dirs[vi].path(),
        &victim,
        ports[vi],
        &seeds,
        &wal_only,
    ));
    let caught = wait_until(
        "the restarted copy to catch up",
        Duration::from_secs(30),
        || health(by_name(&nodes, &primary))["max_lag_records"] == 0,
    );
    println!(
        "replication: {victim} caught up 21 records from the WAL {:.0} ms after it was ready",
        caught.as_secs_f64() * 1000.0
    );
    let read_back = counter(
        by_name(&nodes, &primary),
        "engram_replication_records_shipped_total",
        "source=\"wal\"",
    ) - from_wal;
    assert!(
        read_back >= 1.0,
        "none of the records it lacked was read from the WAL"
    );
    println!(
        "replication: {read_back} of the records it lacked were read back from the primary's WAL"
    );
    let (code, st) = status_json(by_name(&nodes, &primary));
    assert_eq!(code, 0, "{st}");
    wait_until(
        "consistent copies after the restart",
        Duration::from_secs(10),
        || verify(by_name(&nodes, "node-0"), "notes")["consistent"] == true,
    );

    // A forget reaches every copy.
    let gone = &ids[3];
    let r = by_name(&nodes, &victim).req(
        "DELETE",
        &format!("/api/v1/memories/{gone}?space=notes"),
        &[("X-Write-Concern", "all")],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let v = verify(by_name(&nodes, "node-1"), "notes");
    assert_eq!(v["consistent"], true, "{v}");
    for c in v["copies"].as_array().expect("copies") {
        assert_eq!(c["memories"], 81, "{v}");
    }

    // Deleting the space removes every copy.
    let r = by_name(&nodes, &victim).req("DELETE", "/api/v1/spaces/notes", &[], b"");
    assert_eq!(r.status, 204, "{}", r.text());
    wait_until("the space gone everywhere", Duration::from_secs(10), || {
        nodes.iter().flatten().all(|n| {
            let r = n.get("/api/v1/spaces");
            !r.text().contains("\"notes\"")
        })
    });
}

#[test]
fn a_wiped_member_rejoins_by_snapshot_under_load_and_corrupted_batches_are_refused() {
    let (dirs, ports, seeds) = three_homes();
    // node-0 is the only metadata voter, so the others may lose their data
    // directory (a voter whose raft state is gone refuses to start); every
    // node sends its first three batches corrupted.
    let extra = [
        ("ENGRAM_METADATA_VOTERS", "node-0"),
        ("ENGRAM_FAILPOINTS", "replication::corrupt_batch=3*return"),
    ];
    let mut nodes: Vec<Option<Server>> = (0..3)
        .map(|i| {
            Some(start_node_with(
                dirs[i].path(),
                &format!("node-{i}"),
                ports[i],
                &seeds,
                &extra,
            ))
        })
        .collect();
    wait_until(
        "the default space on three copies",
        Duration::from_secs(60),
        || {
            nodes.iter().flatten().all(|n| {
                assignment(n, "default").and_then(|a| a["replicas"].as_array().map(Vec::len))
                    == Some(3)
            })
        },
    );
    let r = by_name(&nodes, "node-0").post("/api/v1/spaces", &json!({ "id": "wiki" }));
    assert_eq!(r.status, 201, "{}", r.text());
    let a = assignment(by_name(&nodes, "node-0"), "wiki").expect("assigned");
    let primary = a["primary"].as_str().expect("primary").to_owned();
    for i in 0..40 {
        let r = remember(
            by_name(&nodes, &primary),
            "wiki",
            &format!("page {i}"),
            "all",
        );
        assert_eq!(r.status, 201, "write {i}: {}", r.text());
    }
    // The corrupted batches were refused by checksum and sent again.
    let refused: f64 = nodes
        .iter()
        .flatten()
        .map(|n| {
            counter(
                n,
                "engram_replication_batches_refused_total",
                "REPL_CHECKSUM_MISMATCH",
            )
        })
        .sum();
    assert!(refused >= 1.0, "no corrupted batch was refused");
    println!("replication: {refused} corrupted batches refused by checksum, then resent");
    wait_until("consistent copies", Duration::from_secs(10), || {
        verify(by_name(&nodes, "node-0"), "wiki")["consistent"] == true
    });

    // A member that is neither the primary nor the voter loses its data.
    let victim = ["node-1", "node-2"]
        .into_iter()
        .find(|n| *n != primary)
        .expect("a victim")
        .to_owned();
    let vi: usize = victim.trim_start_matches("node-").parse().expect("index");
    nodes[vi].as_mut().expect("victim").kill9();
    nodes[vi] = None;
    std::fs::remove_dir_all(dirs[vi].path()).expect("wipe");
    std::fs::create_dir_all(dirs[vi].path()).expect("recreate");
    for i in 0..20 {
        let r = remember(
            by_name(&nodes, &primary),
            "wiki",
            &format!("while {victim} is gone {i}"),
            "quorum",
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    nodes[vi] = Some(start_node_with(
        dirs[vi].path(),
        &victim,
        ports[vi],
        &seeds,
        &extra,
    ));
    // Writes go on while it is reinstalled (bounded in count and time).
    let started = Instant::now();
    let mut during = 0;
    loop {
        let p = by_name(&nodes, &primary);
        let r = remember(p, "wiki", &format!("during the install {during}"), "quorum");
        assert_eq!(r.status, 201, "{}", r.text());
        during += 1;
        let h = health(p);
        let back = h["replication"].as_array().is_some_and(|r| {
            r.iter().any(|e| {
                e["space"] == "wiki" && e["replica"] == victim.as_str() && e["state"] == "in_sync"
            })
        });
        if back && h["max_lag_records"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60) && during < 3000,
            "{victim} was not reinstalled: {h}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    let p = by_name(&nodes, &primary);
    assert!(
        counter(
            p,
            "engram_replication_snapshots_sent_total",
            "outcome=\"installed\""
        ) >= 1.0,
        "the primary sent no snapshot"
    );
    assert!(
        counter(
            by_name(&nodes, &victim),
            "engram_replication_snapshots_installed_total",
            "outcome=\"installed\""
        ) >= 1.0,
        "{victim} installed no snapshot"
    );
    println!(
        "replication: wiped {victim} reinstalled from a snapshot and in sync {:.2} s after it was ready, {during} quorum writes meanwhile",
        took.as_secs_f64()
    );
    let total = 40 + 20 + during;
    wait_until(
        "consistent copies after the install",
        Duration::from_secs(10),
        || {
            let v = verify(by_name(&nodes, "node-0"), "wiki");
            v["consistent"] == true
                && v["copies"]
                    .as_array()
                    .is_some_and(|c| c.len() == 3 && c.iter().all(|c| c["memories"] == total))
        },
    );
    // `all` holds again, and the wiped node forwards writes like every node
    // once its (wiped) copy of the metadata group shows the space; until
    // then it answers 503 not_primary, which a client retries.
    wait_until(
        "the wiped node's metadata to show the space",
        Duration::from_secs(20),
        || assignment(by_name(&nodes, &victim), "wiki").is_some(),
    );
    let r = remember(by_name(&nodes, &victim), "wiki", "every copy again", "all");
    assert_eq!(r.status, 201, "{}", r.text());
    let (code, st) = status_json(p);
    assert_eq!(code, 0, "{st}");
}
