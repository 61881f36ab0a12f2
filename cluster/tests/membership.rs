//! Three members in one process on loopback: they find each other through a
//! seed, agree on placement, and a member that leaves is seen down and its
//! partitions re-placed after the grace period.

use std::time::{Duration, Instant};

use engram_cluster::{Cluster, ClusterConfig, HealthStatus, MemberState, StartOptions};

fn config(node: &str, seeds: Vec<String>) -> ClusterConfig {
    let mut c = ClusterConfig {
        enabled: true,
        node_id: node.into(),
        ..ClusterConfig::default()
    };
    c.network.swim_bind = "127.0.0.1:0".parse().expect("addr");
    c.network.seeds = seeds;
    c.swim.probe_period_ms = 200;
    c.swim.probe_rtt_ms = 80;
    c.swim.suspect_to_down_ms = 600;
    c.swim.gossip_interval_ms = 50;
    c.swim.rejoin_interval_ms = 200;
    c.replication.replication_factor = 2;
    c.replication.jump_buckets = 1024;
    c.replication.rebalance_grace_ms = 500;
    // Required with seeds (membership alone does not start the group).
    c.metadata.voters = vec!["a".into(), "b".into(), "c".into()];
    c
}

async fn start(node: &str, seeds: Vec<String>) -> Cluster {
    Cluster::start(
        StartOptions {
            config: config(node, seeds),
            http_port: 7432,
            grpc_port: 50051,
            peer_port: 7947,
        },
        &prometheus::Registry::new(),
    )
    .await
    .expect("starts")
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn alive(c: &Cluster) -> usize {
    c.health(&[])
        .members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_converge_agree_on_placement_and_replace_a_leaver() {
    let a = start("node-a", vec![]).await;
    let seed = vec![a.local_addr().to_string()];
    let b = start("node-b", seed.clone()).await;
    let c = start("node-c", seed).await;
    wait_for(
        "3 alive members everywhere",
        Duration::from_secs(10),
        || [&a, &b, &c].iter().all(|n| alive(n) == 3),
    )
    .await;
    let spaces: Vec<String> = (0..20).map(|i| format!("space-{i}")).collect();
    wait_for("placement over 3 nodes", Duration::from_secs(10), || {
        [&a, &b, &c]
            .iter()
            .all(|n| n.health(&[]).rebalance.placed_nodes.len() == 3)
    })
    .await;
    let ha = a.health(&spaces);
    assert_eq!(ha.status, HealthStatus::Healthy);
    assert_eq!(
        ha.spaces,
        b.health(&spaces).spaces,
        "nodes disagree on placement"
    );
    assert_eq!(
        ha.spaces,
        c.health(&spaces).spaces,
        "nodes disagree on placement"
    );
    assert!(
        ha.spaces
            .iter()
            .all(|s| s.replicas.len() == 2 && s.live_replicas == 2)
    );
    // The identity carries the advertised addresses.
    let me = &ha.node.identity;
    assert_eq!(me.http.port(), 7432);
    assert_eq!(me.gossip, a.local_addr());

    c.leave().await;
    drop(c);
    wait_for("node-c down on a and b", Duration::from_secs(5), || {
        [&a, &b].iter().all(|n| {
            n.health(&[])
                .members
                .iter()
                .any(|m| m.identity.node_id == "node-c" && m.state == MemberState::Down)
        })
    })
    .await;
    wait_for(
        "re-placement without node-c",
        Duration::from_secs(5),
        || {
            [&a, &b]
                .iter()
                .all(|n| n.health(&[]).rebalance.placed_nodes == ["node-a", "node-b"])
        },
    )
    .await;
    let h = a.health(&spaces);
    assert!(
        h.spaces
            .iter()
            .all(|s| s.live_replicas == 2 && !s.replicas.contains(&"node-c".to_string()))
    );
    assert!(h.rebalance.partitions_moved > 0);
    // A down member leaves the cluster degraded, not unavailable.
    assert_eq!(h.status, HealthStatus::Degraded);
    a.leave().await;
    b.leave().await;
}
