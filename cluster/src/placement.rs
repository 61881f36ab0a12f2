//! Placement: pure functions from (space, nodes, parameters) to replica sets.
//! No I/O, no clocks (the grace period's clock is passed in), so every node
//! computes the same answer from the same membership.
//!
//! - `space → partition`: jump consistent hash of a stable 64-bit hash of
//!   the space name over `jump_buckets`. Independent of membership.
//! - `partition → replica set`: rendezvous (highest random weight) over the
//!   live nodes; each pick after the first subtracts `zone_penalty` from
//!   candidates in a zone already holding a replica and `rack_penalty` from
//!   those in a rack already holding one, so replicas spread across zones,
//!   then racks, before doubling up. The first pick is the primary.
//!
//! Adding a node changes a partition's replica set only where the new node
//! scores into its top `replication_factor` (≈ R/N of partitions; the
//! primary moves for ≈ 1/N); removing one changes only the partitions it
//! was in. [`Rebalancer`] applies membership changes only once they have
//! held for the grace period.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

/// What placement needs to know about a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PlacementNode {
    /// Node id.
    pub id: String,
    /// Zone (empty: unknown; all unknowns count as one zone).
    pub zone: String,
    /// Rack within the zone.
    pub rack: String,
}

/// Placement parameters (from `[cluster.replication]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlacementParams {
    /// Replicas per partition (capped by the node count).
    pub replication_factor: usize,
    /// Partitions.
    pub jump_buckets: u32,
    /// Penalty for a rack already used.
    pub rack_penalty: f64,
    /// Penalty for a zone already used.
    pub zone_penalty: f64,
}

/// FNV-1a 64 followed by the splitmix64 finaliser: stable across
/// platforms, processes and compiler versions (unlike `std`'s hasher).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Lamport & Veach's jump consistent hash: `key` → bucket in `0..buckets`.
/// Growing `buckets` from n to n+1 moves only 1/(n+1) of the keys.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The partition of a space.
pub fn partition_of(space: &str, jump_buckets: u32) -> u32 {
    jump_hash(stable_hash(space.as_bytes()), jump_buckets)
}

/// Rendezvous weight of `node` for `partition`, uniform in [0, 1).
pub fn rendezvous_score(node: &str, partition: u32) -> f64 {
    let h = mix(stable_hash(node.as_bytes()) ^ mix(u64::from(partition) ^ 0x9e37_79b9_7f4a_7c15));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The replica set of `partition` among `nodes` (primary first).
pub fn replica_set<'n>(
    partition: u32,
    nodes: &'n [PlacementNode],
    params: &PlacementParams,
) -> Vec<&'n PlacementNode> {
    let want = params.replication_factor.min(nodes.len());
    let mut scored: Vec<(f64, &PlacementNode)> = nodes
        .iter()
        .map(|n| (rendezvous_score(&n.id, partition), n))
        .collect();
    let mut chosen: Vec<&PlacementNode> = Vec::with_capacity(want);
    while chosen.len() < want {
        let mut best: Option<(f64, usize)> = None;
        for (i, (score, n)) in scored.iter().enumerate() {
            let mut s = *score;
            if chosen.iter().any(|c| c.zone == n.zone) {
                s -= params.zone_penalty;
            }
            if chosen.iter().any(|c| c.zone == n.zone && c.rack == n.rack) {
                s -= params.rack_penalty;
            }
            let better = match best {
                None => true,
                Some((b, j)) => s > b || (s == b && n.id < scored[j].1.id),
            };
            if better {
                best = Some((s, i));
            }
        }
        let Some((_, i)) = best else { break };
        chosen.push(scored.swap_remove(i).1);
    }
    chosen
}

/// Replica sets of every partition, by node id (primary first).
pub fn all_replica_sets(nodes: &[PlacementNode], params: &PlacementParams) -> Vec<Vec<String>> {
    (0..params.jump_buckets)
        .map(|p| {
            replica_set(p, nodes, params)
                .into_iter()
                .map(|n| n.id.clone())
                .collect()
        })
        .collect()
}

/// Partitions whose replica set differs between two memberships.
pub fn moved_partitions(
    before: &[PlacementNode],
    after: &[PlacementNode],
    params: &PlacementParams,
) -> usize {
    (0..params.jump_buckets)
        .filter(|&p| {
            let a = replica_set(p, before, params);
            let b = replica_set(p, after, params);
            a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.id != y.id)
        })
        .count()
}

/// Primaries per node (for balance checks and health output).
pub fn primaries_per_node(
    nodes: &[PlacementNode],
    params: &PlacementParams,
) -> BTreeMap<String, usize> {
    let mut out: BTreeMap<String, usize> = nodes.iter().map(|n| (n.id.clone(), 0)).collect();
    for p in 0..params.jump_buckets {
        if let Some(n) = replica_set(p, nodes, params).first() {
            *out.entry(n.id.clone()).or_default() += 1;
        }
    }
    out
}

/// A membership change the rebalancer has applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebalance {
    /// Partitions whose replica set changed.
    pub moved: usize,
    /// Node ids placed before and after.
    pub before: Vec<String>,
    /// Node ids placed after.
    pub after: Vec<String>,
}

/// Holds the membership placement is computed over, and changes it only
/// after the live membership has differed from it, unchanged, for the grace
/// period. A node that leaves and comes back within the grace moves nothing;
/// every further change restarts the clock.
#[derive(Debug, Clone)]
pub struct Rebalancer {
    grace: Duration,
    params: PlacementParams,
    applied: Vec<PlacementNode>,
    pending: Option<(Vec<PlacementNode>, Instant)>,
}

impl Rebalancer {
    /// Starts with `initial` placed.
    pub fn new(initial: Vec<PlacementNode>, grace: Duration, params: PlacementParams) -> Self {
        Rebalancer {
            grace,
            params,
            applied: normalise(initial),
            pending: None,
        }
    }

    /// The membership placement currently uses (sorted by id).
    pub fn applied(&self) -> &[PlacementNode] {
        &self.applied
    }

    /// The membership waiting for its grace period, and since when.
    pub fn pending(&self) -> Option<(&[PlacementNode], Instant)> {
        self.pending.as_ref().map(|(n, t)| (n.as_slice(), *t))
    }

    /// Parameters.
    pub fn params(&self) -> &PlacementParams {
        &self.params
    }

    /// Feeds the live membership at `now`; returns the rebalance if one was
    /// applied.
    pub fn observe(&mut self, live: Vec<PlacementNode>, now: Instant) -> Option<Rebalance> {
        let live = normalise(live);
        if live == self.applied {
            self.pending = None;
            return None;
        }
        match &self.pending {
            Some((p, since)) if *p == live => {
                if now.saturating_duration_since(*since) < self.grace {
                    return None;
                }
            }
            _ => {
                self.pending = Some((live, now));
                if !self.grace.is_zero() {
                    return None;
                }
            }
        }
        let (next, _) = self.pending.take()?;
        let moved = moved_partitions(&self.applied, &next, &self.params);
        let ids = |v: &[PlacementNode]| v.iter().map(|n| n.id.clone()).collect();
        let r = Rebalance {
            moved,
            before: ids(&self.applied),
            after: ids(&next),
        };
        self.applied = next;
        Some(r)
    }
}

fn normalise(mut v: Vec<PlacementNode>) -> Vec<PlacementNode> {
    v.sort();
    v.dedup_by(|a, b| a.id == b.id);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(rf: usize, buckets: u32) -> PlacementParams {
        PlacementParams {
            replication_factor: rf,
            jump_buckets: buckets,
            rack_penalty: 1.0,
            zone_penalty: 2.0,
        }
    }

    fn node(i: usize, zones: usize, racks: usize) -> PlacementNode {
        PlacementNode {
            id: format!("engram-{i}"),
            zone: format!("zone-{}", i % zones.max(1)),
            rack: format!("rack-{}", (i / zones.max(1)) % racks.max(1)),
        }
    }

    fn nodes(n: usize, zones: usize, racks: usize) -> Vec<PlacementNode> {
        (0..n).map(|i| node(i, zones, racks)).collect()
    }

    #[test]
    fn stable_hash_and_jump_hash_are_fixed_functions() {
        // Pinned values: a change here re-places every space of every
        // existing cluster.
        assert_eq!(stable_hash(b"default"), stable_hash(b"default"));
        assert_eq!(
            partition_of("default", 16_384),
            partition_of("default", 16_384)
        );
        assert_eq!(jump_hash(0, 1), 0);
        let golden: Vec<u32> = ["default", "agent-1", "agent-2"]
            .iter()
            .map(|s| partition_of(s, 16_384))
            .collect();
        assert_eq!(golden, vec![GOLDEN[0], GOLDEN[1], GOLDEN[2]]);
    }

    const GOLDEN: [u32; 3] = [7848, 7331, 15176];

    #[test]
    fn jump_hash_moves_one_nth_when_buckets_grow() {
        let keys: Vec<u64> = (0..20_000u64).map(mix).collect();
        let moved = keys
            .iter()
            .filter(|&&k| jump_hash(k, 10) != jump_hash(k, 11))
            .count();
        let frac = moved as f64 / keys.len() as f64;
        assert!((frac - 1.0 / 11.0).abs() < 0.02, "moved {frac}");
    }

    #[test]
    fn replicas_spread_over_zones_then_racks() {
        let p = params(3, 512);
        // 3 zones × 2 racks: every replica set spans the three zones.
        let ns = nodes(6, 3, 2);
        for part in 0..p.jump_buckets {
            let set = replica_set(part, &ns, &p);
            let mut zones: Vec<&str> = set.iter().map(|n| n.zone.as_str()).collect();
            zones.sort();
            zones.dedup();
            assert_eq!(zones.len(), 3, "partition {part}: {set:?}");
        }
        // One zone, 3 racks: spans the racks.
        let ns = nodes(6, 1, 3);
        for part in 0..p.jump_buckets {
            let set = replica_set(part, &ns, &p);
            let mut racks: Vec<&str> = set.iter().map(|n| n.rack.as_str()).collect();
            racks.sort();
            racks.dedup();
            assert_eq!(racks.len(), 3, "partition {part}: {set:?}");
        }
    }

    #[test]
    fn three_nodes_rf2_keep_placing_every_partition_after_one_dies() {
        let p = params(2, 1024);
        let all = nodes(3, 1, 1);
        let survivors: Vec<PlacementNode> = all[..2].to_vec();
        for part in 0..p.jump_buckets {
            let set = replica_set(part, &survivors, &p);
            assert_eq!(set.len(), 2);
            let before = replica_set(part, &all, &p);
            // Partitions the dead node was not in keep their replica set.
            if !before.iter().any(|n| n.id == "engram-2") {
                assert_eq!(set, before, "partition {part} moved needlessly");
            }
        }
    }

    #[test]
    fn placement_moves_one_nth_on_join() {
        // Adding the Nth node: the primary moves for ≈ 1/N of partitions
        // and the replica set changes for ≈ R/N (measured, ±25 %).
        let buckets = 16_384;
        for n in [3usize, 5, 8] {
            for rf in [1usize, 2, 3] {
                let p = params(rf, buckets);
                let before = nodes(n - 1, 1, 1);
                let after = nodes(n, 1, 1);
                let moved = moved_partitions(&before, &after, &p) as f64 / f64::from(buckets);
                let expected = rf.min(n) as f64 / n as f64;
                assert!(
                    (moved / expected - 1.0).abs() < 0.25,
                    "n={n} rf={rf}: moved {moved:.3}, expected {expected:.3}"
                );
                let primaries_moved = (0..buckets)
                    .filter(|&q| {
                        replica_set(q, &before, &p)[0].id != replica_set(q, &after, &p)[0].id
                    })
                    .count() as f64
                    / f64::from(buckets);
                assert!(
                    (primaries_moved * n as f64 - 1.0).abs() < 0.25,
                    "n={n}: primaries moved {primaries_moved:.3}"
                );
            }
        }
    }

    #[test]
    fn primaries_are_balanced_within_15_percent() {
        let p = params(2, 16_384);
        for n in [2usize, 3, 5, 10] {
            let counts = primaries_per_node(&nodes(n, 1, 1), &p);
            let mean = f64::from(p.jump_buckets) / n as f64;
            for (id, c) in counts {
                assert!(
                    (c as f64 / mean - 1.0).abs() < 0.15,
                    "{id}: {c} primaries, mean {mean}"
                );
            }
        }
    }

    #[test]
    fn a_flapping_node_moves_nothing_and_a_lasting_change_moves_after_grace() {
        let p = params(2, 256);
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let three = nodes(3, 1, 1);
        let two = three[..2].to_vec();
        let mut r = Rebalancer::new(three.clone(), grace, p);
        // Down for 5 s, back: nothing moves.
        assert_eq!(r.observe(two.clone(), t0), None);
        assert_eq!(r.observe(two.clone(), t0 + Duration::from_secs(5)), None);
        assert_eq!(r.observe(three.clone(), t0 + Duration::from_secs(6)), None);
        assert!(r.pending().is_none());
        assert_eq!(r.applied(), &three[..]);
        // Down for good: moves after the grace period, counting only the
        // partitions that held engram-2.
        assert_eq!(r.observe(two.clone(), t0 + Duration::from_secs(20)), None);
        assert_eq!(r.observe(two.clone(), t0 + Duration::from_secs(29)), None);
        let moved = r
            .observe(two.clone(), t0 + Duration::from_secs(30))
            .expect("applied after grace");
        let held: usize = (0..p.jump_buckets)
            .filter(|&q| {
                replica_set(q, &three, &p)
                    .iter()
                    .any(|n| n.id == "engram-2")
            })
            .count();
        assert_eq!(moved.moved, held);
        assert_eq!(r.applied(), &two[..]);
    }

    proptest! {
        #[test]
        fn placement_is_deterministic_whatever_the_node_order(
            n in 1usize..9, rf in 1usize..5, zones in 1usize..4, seed in any::<u64>(), space in "[a-z0-9_-]{1,20}",
        ) {
            let p = params(rf, 4096);
            let ns = nodes(n, zones, 2);
            let mut shuffled = ns.clone();
            let len = shuffled.len();
            for i in 0..len {
                shuffled.swap(i, (mix(seed ^ i as u64) % len as u64) as usize);
            }
            let part = partition_of(&space, p.jump_buckets);
            prop_assert!(part < p.jump_buckets);
            let a: Vec<&str> = replica_set(part, &ns, &p).iter().map(|n| n.id.as_str()).collect();
            let b: Vec<&str> = replica_set(part, &shuffled, &p).iter().map(|n| n.id.as_str()).collect();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.len(), rf.min(n));
            let mut uniq = a.clone();
            uniq.sort();
            uniq.dedup();
            prop_assert_eq!(uniq.len(), a.len());
        }

        #[test]
        fn zone_diversity_whenever_enough_zones_exist(
            n in 3usize..12, zones in 1usize..5, rf in 1usize..4, part in 0u32..16_384,
        ) {
            let p = params(rf, 16_384);
            let ns = nodes(n, zones, 3);
            let set = replica_set(part, &ns, &p);
            let mut z: Vec<&str> = set.iter().map(|n| n.zone.as_str()).collect();
            z.sort();
            z.dedup();
            prop_assert_eq!(z.len(), set.len().min(zones.min(n)));
        }

        #[test]
        fn removing_a_node_moves_only_partitions_it_held(n in 2usize..8, gone in 0usize..8, rf in 1usize..4) {
            let gone = gone % n;
            let p = params(rf, 2048);
            let all = nodes(n, 1, 1);
            let mut rest = all.clone();
            let dead = rest.remove(gone);
            for q in 0..p.jump_buckets {
                let before = replica_set(q, &all, &p);
                if !before.iter().any(|x| x.id == dead.id) {
                    prop_assert_eq!(replica_set(q, &rest, &p), before);
                }
            }
        }
    }
}
