//! `[cluster]` configuration: typed, with defaults, validated with errors
//! that name the key. `cmd` embeds [`ClusterConfig`] in its layered config.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ClusterError;

/// `[cluster]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Join a cluster (SWIM gossip on `network.swim_bind`). Off: a standalone
    /// node that opens no gossip socket.
    pub enabled: bool,
    /// This node's name, unique in the cluster and stable across restarts
    /// (a StatefulSet pod name such as `engram-0`). Empty: the host name.
    pub node_id: String,
    /// Rack of this node (replicas avoid sharing one). Empty: unknown.
    pub rack: String,
    /// Zone of this node (replicas avoid sharing one, before racks).
    pub zone: String,
    /// Sockets and peers.
    pub network: NetworkConfig,
    /// Failure detection timings.
    pub swim: SwimConfig,
    /// Placement of spaces on nodes.
    pub replication: ReplicationConfig,
    /// The metadata group (Raft) that decides space uids and assignments.
    pub metadata: MetadataConfig,
}

/// `[cluster.metadata]`: the metadata group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetadataConfig {
    /// Node ids of the group's voters, the same list on every node (3 or
    /// 5; every other node is a learner). Empty: this node alone, only
    /// without seeds. A bootstrap hint: once the group exists, changing it
    /// does not change the group.
    #[serde(deserialize_with = "seed_list")]
    pub voters: Vec<String>,
    /// How often the leader sends heartbeats.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time between this and
    /// twice this starts an election (above `heartbeat_ms`).
    pub election_timeout_ms: u64,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            voters: Vec::new(),
            heartbeat_ms: 250,
            election_timeout_ms: 1000,
        }
    }
}

/// `[cluster.network]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// UDP address the gossip socket binds.
    pub swim_bind: SocketAddr,
    /// `ip` or `ip:port` other nodes reach this node's gossip socket at
    /// (port defaults to `swim_bind`'s). Empty: `swim_bind` when it names an
    /// address, else the address of the interface that routes to the first
    /// seed. Never `0.0.0.0`, `::`, or loopback with non-loopback seeds.
    pub advertise_addr: String,
    /// `host:port` of nodes to join through (DNS names allowed; re-resolved
    /// whenever this node has no peers). A list, or one comma-separated string.
    #[serde(deserialize_with = "seed_list")]
    pub seeds: Vec<String>,
    /// TCP address of the peer port: node-to-node RPCs (the metadata
    /// group). Peers reach it at the advertised gossip address's IP and
    /// this port. Never the client gRPC port.
    pub peer_bind: SocketAddr,
}

/// `[cluster.swim]`: SWIM timings (LAN defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SwimConfig {
    /// How often one random member is probed.
    pub probe_period_ms: u64,
    /// How long a direct probe waits for its reply before asking others to
    /// probe indirectly (below `probe_period_ms`).
    pub probe_rtt_ms: u64,
    /// Members asked to probe indirectly.
    pub indirect_probes: usize,
    /// How long a suspect member has to refute before it is declared down.
    pub suspect_to_down_ms: u64,
    /// Times each membership update is piggy-backed on outgoing messages.
    pub max_transmissions: u8,
    /// How often updates are gossiped to `gossip_fanout` random members.
    pub gossip_interval_ms: u64,
    /// Members per periodic gossip.
    pub gossip_fanout: usize,
    /// How often a member asks a peer for members it does not know yet.
    pub announce_interval_ms: u64,
    /// How often a node without peers re-resolves its seeds and announces
    /// itself to them again.
    pub rejoin_interval_ms: u64,
    /// How long a down member is remembered (so it cannot rejoin with a
    /// stale identity).
    pub remove_down_after_sec: u64,
    /// Largest gossip datagram sent or accepted.
    pub max_packet_bytes: usize,
}

/// `[cluster.replication]`: placement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Copies of every space (the first is the primary). Capped by the
    /// number of live nodes.
    pub replication_factor: usize,
    /// Partitions spaces are hashed into. Fixed for the life of a cluster:
    /// changing it re-places almost every space.
    pub jump_buckets: u32,
    /// Score penalty of a candidate whose rack already holds a replica.
    pub rack_penalty: f64,
    /// Score penalty of a candidate whose zone already holds a replica.
    pub zone_penalty: f64,
    /// How long a membership change must hold before partitions move
    /// (a node that flaps within it moves nothing).
    pub rebalance_grace_ms: u64,
    /// How long the metadata leader waits for `replication_factor`
    /// registered nodes before it creates `default` and the bootstrap
    /// spaces on fewer (ms).
    pub bootstrap_wait_ms: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            swim_bind: SocketAddr::from(([0, 0, 0, 0], 7946)),
            advertise_addr: String::new(),
            seeds: Vec::new(),
            peer_bind: SocketAddr::from(([0, 0, 0, 0], 7947)),
        }
    }
}

impl Default for SwimConfig {
    fn default() -> Self {
        SwimConfig {
            probe_period_ms: 1000,
            probe_rtt_ms: 500,
            indirect_probes: 3,
            suspect_to_down_ms: 5000,
            max_transmissions: 10,
            gossip_interval_ms: 200,
            gossip_fanout: 3,
            announce_interval_ms: 30_000,
            rejoin_interval_ms: 2000,
            remove_down_after_sec: 86_400,
            max_packet_bytes: 1400,
        }
    }
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replication_factor: 3,
            jump_buckets: 16_384,
            rack_penalty: 1.0,
            zone_penalty: 2.0,
            rebalance_grace_ms: 30_000,
            bootstrap_wait_ms: 30_000,
        }
    }
}

/// Largest node id, rack or zone in bytes (they travel in every datagram).
pub const MAX_NAME_BYTES: usize = 63;

/// Most seeds.
pub const MAX_SEEDS: usize = 64;

fn invalid(key: &'static str, message: impl Into<String>) -> ClusterError {
    ClusterError::Config {
        key,
        message: message.into(),
    }
}

/// A node id: 1–63 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_BYTES
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
        })
}

/// A rack or zone: at most 63 printable ASCII characters (may be empty).
pub fn valid_location(s: &str) -> bool {
    s.len() <= MAX_NAME_BYTES && s.bytes().all(|b| b.is_ascii_graphic())
}

impl ClusterConfig {
    /// Checks every key; the error names the first bad one.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if !self.node_id.is_empty() && !valid_node_id(&self.node_id) {
            return Err(invalid(
                "cluster.node_id",
                format!(
                    "{:?} is not a valid node id (1-63 of a-z 0-9 - _ ., starting with a letter or digit)",
                    self.node_id
                ),
            ));
        }
        if !valid_location(&self.rack) {
            return Err(invalid(
                "cluster.rack",
                "must be at most 63 printable ASCII characters without spaces",
            ));
        }
        if !valid_location(&self.zone) {
            return Err(invalid(
                "cluster.zone",
                "must be at most 63 printable ASCII characters without spaces",
            ));
        }
        if !self.network.advertise_addr.is_empty() {
            parse_advertise(&self.network.advertise_addr, self.network.swim_bind.port())?;
        }
        if self.network.seeds.len() > MAX_SEEDS {
            return Err(invalid(
                "cluster.network.seeds",
                format!("at most {MAX_SEEDS} seeds"),
            ));
        }
        for s in &self.network.seeds {
            split_host_port(s).ok_or_else(|| {
                invalid(
                    "cluster.network.seeds",
                    format!("{s:?} is not host:port (e.g. \"engram-0.engram-headless:7946\")"),
                )
            })?;
        }
        let w = &self.swim;
        if w.probe_period_ms == 0 || w.probe_rtt_ms == 0 || w.probe_rtt_ms >= w.probe_period_ms {
            return Err(invalid(
                "cluster.swim.probe_rtt_ms",
                "must be at least 1 and below cluster.swim.probe_period_ms",
            ));
        }
        if w.suspect_to_down_ms == 0 {
            return Err(invalid(
                "cluster.swim.suspect_to_down_ms",
                "must be at least 1",
            ));
        }
        if w.indirect_probes == 0 || w.indirect_probes > 16 {
            return Err(invalid(
                "cluster.swim.indirect_probes",
                "must be within 1..=16",
            ));
        }
        if w.max_transmissions == 0 {
            return Err(invalid(
                "cluster.swim.max_transmissions",
                "must be at least 1",
            ));
        }
        if w.gossip_interval_ms == 0 {
            return Err(invalid(
                "cluster.swim.gossip_interval_ms",
                "must be at least 1",
            ));
        }
        if w.gossip_fanout == 0 || w.gossip_fanout > 64 {
            return Err(invalid(
                "cluster.swim.gossip_fanout",
                "must be within 1..=64",
            ));
        }
        if w.announce_interval_ms == 0 {
            return Err(invalid(
                "cluster.swim.announce_interval_ms",
                "must be at least 1",
            ));
        }
        if w.rejoin_interval_ms == 0 {
            return Err(invalid(
                "cluster.swim.rejoin_interval_ms",
                "must be at least 1",
            ));
        }
        if w.remove_down_after_sec == 0 {
            return Err(invalid(
                "cluster.swim.remove_down_after_sec",
                "must be at least 1",
            ));
        }
        if !(512..=65_000).contains(&w.max_packet_bytes) {
            return Err(invalid(
                "cluster.swim.max_packet_bytes",
                "must be within 512..=65000",
            ));
        }
        let m = &self.metadata;
        if self.enabled && !self.network.seeds.is_empty() && m.voters.is_empty() {
            return Err(invalid(
                "cluster.metadata.voters",
                "must list the metadata group's voters (the same 1, 3 or 5 node ids on every node, e.g. [\"engram-0\", \"engram-1\", \"engram-2\"]) when cluster.network.seeds is set: with an empty list every node would form a group of its own",
            ));
        }
        for v in &m.voters {
            if !valid_node_id(v) {
                return Err(invalid(
                    "cluster.metadata.voters",
                    format!("{v:?} is not a valid node id"),
                ));
            }
        }
        let mut sorted: Vec<&String> = m.voters.iter().collect();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != m.voters.len() {
            return Err(invalid("cluster.metadata.voters", "names a node twice"));
        }
        if m.voters.len() > 7 || (m.voters.len() > 1 && m.voters.len() % 2 == 0) {
            return Err(invalid(
                "cluster.metadata.voters",
                format!(
                    "lists {} voters; use 1, 3, 5 or 7 (an even count tolerates no more failures than one fewer)",
                    m.voters.len()
                ),
            ));
        }
        if m.heartbeat_ms == 0 || m.election_timeout_ms <= m.heartbeat_ms {
            return Err(invalid(
                "cluster.metadata.election_timeout_ms",
                "must be above cluster.metadata.heartbeat_ms (at least 1)",
            ));
        }
        let r = &self.replication;
        if !(1..=7).contains(&r.replication_factor) {
            return Err(invalid(
                "cluster.replication.replication_factor",
                "must be within 1..=7",
            ));
        }
        if !(1..=65_536).contains(&r.jump_buckets) {
            return Err(invalid(
                "cluster.replication.jump_buckets",
                "must be within 1..=65536",
            ));
        }
        for (key, v) in [
            ("cluster.replication.rack_penalty", r.rack_penalty),
            ("cluster.replication.zone_penalty", r.zone_penalty),
        ] {
            if !v.is_finite() || !(0.0..=100.0).contains(&v) {
                return Err(invalid(key, "must be a number within 0..=100"));
            }
        }
        Ok(())
    }

    /// The grace period as a duration.
    pub fn rebalance_grace(&self) -> Duration {
        Duration::from_millis(self.replication.rebalance_grace_ms)
    }
}

/// `ip` or `ip:port` (IPv6 as `[ip]:port`); the port defaults to `port`.
pub fn parse_advertise(s: &str, port: u16) -> Result<SocketAddr, ClusterError> {
    let bad = || {
        invalid(
            "cluster.network.advertise_addr",
            format!(
                "{s:?} is not an IP address or IP:port (set it to this node's routable address, e.g. \"10.0.0.5:7946\")"
            ),
        )
    };
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(bad());
        }
        return Ok(a);
    }
    // A bare IP takes swim_bind's port (0 in tests: the bound port is
    // advertised once the socket exists).
    match s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, port)),
        Err(_) => Err(bad()),
    }
}

/// Splits `host:port` (a bracketed IPv6 host allowed).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 || host.len() > 253 {
        return None;
    }
    Some((host, port))
}

/// Seeds as a TOML list or one comma-separated string (handy in an
/// environment variable).
fn seed_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seeds {
        List(Vec<String>),
        One(String),
    }
    Ok(match Seeds::deserialize(d)? {
        Seeds::List(v) => v,
        Seeds::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        ClusterConfig::default().validate().expect("valid");
    }

    #[test]
    fn bad_values_name_their_key() {
        type Setter = Box<dyn Fn(&mut ClusterConfig)>;
        let cases: Vec<(&str, Setter)> = vec![
            (
                "cluster.node_id",
                Box::new(|c| c.node_id = "Engram 0".into()),
            ),
            ("cluster.zone", Box::new(|c| c.zone = "a b".into())),
            (
                "cluster.network.advertise_addr",
                Box::new(|c| c.network.advertise_addr = "not-an-ip".into()),
            ),
            (
                "cluster.network.seeds",
                Box::new(|c| c.network.seeds = vec!["no-port".into()]),
            ),
            (
                "cluster.swim.probe_rtt_ms",
                Box::new(|c| c.swim.probe_rtt_ms = 5000),
            ),
            (
                "cluster.replication.replication_factor",
                Box::new(|c| c.replication.replication_factor = 0),
            ),
            (
                "cluster.replication.jump_buckets",
                Box::new(|c| c.replication.jump_buckets = 0),
            ),
            (
                "cluster.replication.zone_penalty",
                Box::new(|c| c.replication.zone_penalty = f64::NAN),
            ),
            (
                "cluster.metadata.voters",
                Box::new(|c| {
                    c.enabled = true;
                    c.network.seeds = vec!["engram-0:7946".into()];
                }),
            ),
            (
                "cluster.metadata.voters",
                Box::new(|c| c.metadata.voters = vec!["a".into(), "b".into()]),
            ),
            (
                "cluster.metadata.voters",
                Box::new(|c| c.metadata.voters = vec!["a".into(), "a".into(), "b".into()]),
            ),
            (
                "cluster.metadata.voters",
                Box::new(|c| c.metadata.voters = vec!["Not Valid".into()]),
            ),
            (
                "cluster.metadata.election_timeout_ms",
                Box::new(|c| c.metadata.election_timeout_ms = 100),
            ),
        ];
        for (key, set) in cases {
            let mut c = ClusterConfig::default();
            set(&mut c);
            match c.validate() {
                Err(ClusterError::Config { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn advertise_accepts_ip_or_ip_port() {
        assert_eq!(
            parse_advertise("10.0.0.5", 7946).ok(),
            Some("10.0.0.5:7946".parse().expect("addr"))
        );
        assert_eq!(
            parse_advertise("10.0.0.5:8000", 7946).ok(),
            Some("10.0.0.5:8000".parse().expect("addr"))
        );
        assert_eq!(
            parse_advertise("fd00::1", 7946).ok(),
            Some("[fd00::1]:7946".parse().expect("addr"))
        );
        assert!(parse_advertise("engram-0", 7946).is_err());
    }

    #[test]
    fn seeds_parse_from_a_list_or_a_comma_separated_string() {
        #[derive(Deserialize)]
        struct W {
            network: NetworkConfig,
        }
        let a: W = toml::from_str("[network]\nseeds = [\"a:1\", \"b:2\"]").expect("list");
        let b: W = toml::from_str("[network]\nseeds = \"a:1, b:2\"").expect("string");
        assert_eq!(a.network.seeds, vec!["a:1", "b:2"]);
        assert_eq!(b.network.seeds, a.network.seeds);
    }
}
