//! Spreading activation and scoring: pure functions over plain data.
//!
//! Activation starts at the seeds and flows along edges in both directions
//! (an association is recalled from either end): the activation reaching a
//! neighbour is `activation × edge weight × decay`. A node keeps the highest
//! activation that reaches it; a node is expanded again only when its
//! activation improved, and never beyond `depth` hops, so the walk terminates
//! on any graph, cyclic or not, and its work is bounded by
//! `seeds × fan_out^depth`.

use engram_lsm::EpisodeId;

/// How activation spreads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Maximum hops from a seed (default 2, at most 4).
    pub depth: u32,
    /// Multiplier per hop in (0, 1] (default 0.5).
    pub decay: f32,
    /// Activation below which a node is not reached (default 0.05).
    pub threshold: f32,
    /// Strongest edges followed per node (default 16).
    pub fan_out: usize,
}

impl Default for Spread {
    fn default() -> Self {
        Self {
            depth: 2,
            decay: 0.5,
            threshold: 0.05,
            fan_out: 16,
        }
    }
}

/// Largest accepted `depth`.
pub const MAX_DEPTH: u32 = 4;

/// Largest accepted `fan_out`.
pub const MAX_FAN_OUT: usize = 64;

/// Edges one spread examines at most, whatever the graph: a recall's cost
/// is bounded even where `seeds × fan_out^depth` is not (a node's edges are
/// all read to pick its strongest `fan_out`, and a memory may have up to
/// `limits.max_edges_per_memory`). Spreading stops where the budget ends;
/// what was reached so far is returned.
pub const MAX_EDGES_EXAMINED: usize = 1_000_000;

/// How a node was reached.
#[derive(Debug, Clone, PartialEq)]
pub struct Reached {
    /// Final activation.
    pub activation: f32,
    /// Path from the seed that produced it (seed first, the node last);
    /// a single element for a seed.
    pub path: Vec<EpisodeId>,
}

/// Spreads activation from `seeds` over `neighbours(node)` (weighted, both
/// directions already merged by the caller). `accept` filters which nodes
/// may be reached. Returns every reached node.
pub fn spread<'a, N, I>(
    seeds: &[(EpisodeId, f32)],
    params: &Spread,
    neighbours: N,
    accept: impl Fn(&EpisodeId) -> bool,
) -> crate::ids::IdMap<Reached>
where
    N: Fn(&EpisodeId) -> I,
    I: Iterator<Item = (&'a EpisodeId, f32)>,
{
    let mut reached: crate::ids::IdMap<Reached> = crate::ids::IdMap::default();
    let mut frontier: Vec<EpisodeId> = Vec::new();
    for (id, a) in seeds {
        let better = reached.get(id).is_none_or(|r| r.activation < *a);
        if better {
            reached.insert(
                *id,
                Reached {
                    activation: *a,
                    path: vec![*id],
                },
            );
            frontier.push(*id);
        }
    }
    let decay = params.decay.clamp(0.0, 1.0);
    let fan_out = params.fan_out.min(MAX_FAN_OUT);
    let mut examined = 0usize;
    'hops: for _ in 0..params.depth.min(MAX_DEPTH) {
        let mut next = Vec::new();
        // Expand each node with its state at the start of this hop, so a
        // path never grows by more than one edge per hop.
        let current: Vec<(EpisodeId, Reached)> = frontier
            .iter()
            .filter_map(|n| reached.get(n).cloned().map(|r| (*n, r)))
            .collect();
        for (node, from) in current {
            if examined >= MAX_EDGES_EXAMINED {
                break 'hops;
            }
            let mut edges: Vec<(EpisodeId, f32)> = neighbours(&node)
                .take(MAX_EDGES_EXAMINED - examined)
                .map(|(id, w)| (*id, w.clamp(0.0, 1.0)))
                .collect();
            examined += edges.len();
            edges.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            edges.truncate(fan_out);
            for (to, w) in edges {
                let a = from.activation * w * decay;
                if a < params.threshold || !accept(&to) {
                    continue;
                }
                if reached.get(&to).is_some_and(|r| r.activation >= a) {
                    continue;
                }
                let mut path = from.path.clone();
                path.push(to);
                reached.insert(
                    to,
                    Reached {
                        activation: a,
                        path,
                    },
                );
                next.push(to);
            }
        }
        if next.is_empty() {
            break;
        }
        next.sort_unstable();
        next.dedup();
        frontier = next;
    }
    reached
}

/// Retention of a memory `age_days` after it was stored or last reinforced:
/// a power-law forgetting curve, `(1 + age / (9 × stability))^-0.5`, with
/// stability in days (1.0 at age 0; 0.5 at `27 × stability` days).
pub fn retention(age_days: f64, stability_days: f64) -> f64 {
    if age_days <= 0.0 || stability_days <= 0.0 {
        return 1.0;
    }
    (1.0 + age_days / (9.0 * stability_days)).powf(-0.5)
}

/// Final score of a recalled memory: activation weighted by the decayed
/// confidence and by recency (`recency` in [0, 1], 1 = just now):
/// `activation × (0.5 + 0.5 × confidence) × (0.8 + 0.2 × recency)`.
pub fn score(activation: f32, confidence_now: f32, recency: f32) -> f32 {
    activation
        * (0.5 + 0.5 * confidence_now.clamp(0.0, 1.0))
        * (0.8 + 0.2 * recency.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn id(n: u8) -> EpisodeId {
        let mut id = [0; 16];
        id[15] = n;
        id
    }

    /// Spreads from node 1 with default parameters over `edges`.
    fn spread_from_1(
        edges: &[(u8, Vec<(u8, f32)>)],
        accept: impl Fn(&EpisodeId) -> bool,
    ) -> crate::ids::IdMap<Reached> {
        let adj: HashMap<EpisodeId, Vec<(EpisodeId, f32)>> = edges
            .iter()
            .map(|(from, to)| (id(*from), to.iter().map(|(t, w)| (id(*t), *w)).collect()))
            .collect();
        spread(
            &[(id(1), 1.0)],
            &Spread::default(),
            |n| adj.get(n).into_iter().flatten().map(|(i, w)| (i, *w)),
            accept,
        )
    }

    #[test]
    fn spreading_work_is_bounded_on_a_dense_graph() {
        // 1 200 nodes, every node linked to every other: 1.4M edges, and
        // each expansion reads a node's 1 199 edges to pick its strongest.
        let n: u32 = 1200;
        let nid = |i: u32| {
            let mut id = [0; 16];
            id[12..].copy_from_slice(&i.to_be_bytes());
            id
        };
        let ids: Vec<EpisodeId> = (0..n).map(nid).collect();
        let examined = std::cell::Cell::new(0usize);
        let seeds: Vec<(EpisodeId, f32)> = ids.iter().take(200).map(|i| (*i, 1.0)).collect();
        let params = Spread {
            depth: MAX_DEPTH,
            decay: 1.0,
            threshold: 0.0,
            fan_out: 10_000,
        };
        let reached = spread(
            &seeds,
            &params,
            |node| {
                let me = *node;
                ids.iter().filter(move |o| **o != me).map(|o| {
                    examined.set(examined.get() + 1);
                    (o, 0.9)
                })
            },
            |_| true,
        );
        assert!(!reached.is_empty());
        assert!(
            examined.get() <= MAX_EDGES_EXAMINED,
            "{} edges examined",
            examined.get()
        );
    }

    #[test]
    fn activation_decays_along_paths_and_records_them() {
        let r = spread_from_1(&[(1, vec![(2, 1.0)]), (2, vec![(3, 0.8)])], |_| true);
        assert_eq!(r[&id(2)].activation, 0.5);
        assert!((r[&id(3)].activation - 0.2).abs() < 1e-6);
        assert_eq!(r[&id(3)].path, vec![id(1), id(2), id(3)]);
    }

    #[test]
    fn filtered_and_weak_nodes_are_not_reached() {
        let r = spread_from_1(&[(1, vec![(2, 1.0), (3, 0.05)])], |n| *n != id(2));
        assert_eq!(r.len(), 1);
    }

    proptest! {
        /// On any graph, cycles included, spreading terminates, stays within
        /// depth, never raises activation above its seed, and every path is a
        /// real walk along edges.
        #[test]
        fn spreading_terminates_and_is_bounded_on_any_graph(
            edges in prop::collection::vec((0u8..20, 0u8..20, 0.0f32..=1.0), 0..120),
            seeds in prop::collection::vec((0u8..20, 0.0f32..=1.0), 1..4),
            depth in 0u32..=6,
            decay in 0.1f32..=1.0,
        ) {
            let mut adj: HashMap<EpisodeId, Vec<(EpisodeId, f32)>> = HashMap::new();
            for (a, b, w) in &edges {
                adj.entry(id(*a)).or_default().push((id(*b), *w));
                adj.entry(id(*b)).or_default().push((id(*a), *w));
            }
            let seeds: Vec<_> = seeds.iter().map(|(n, a)| (id(*n), *a)).collect();
            let max_seed = seeds.iter().map(|s| s.1).fold(0.0, f32::max);
            let params = Spread { depth, decay, threshold: 0.01, fan_out: 8 };
            let r = spread(&seeds, &params, |n| adj.get(n).into_iter().flatten().map(|(i, w)| (i, *w)), |_| true);
            for (node, reached) in &r {
                prop_assert!(reached.activation <= max_seed + 1e-6);
                prop_assert!(reached.path.len() as u32 <= depth.min(MAX_DEPTH) + 1);
                prop_assert_eq!(reached.path.last(), Some(node));
                for pair in reached.path.windows(2) {
                    prop_assert!(adj[&pair[0]].iter().any(|(t, _)| *t == pair[1]));
                }
            }
        }
    }

    #[test]
    fn forgetting_curve_is_monotone_and_scores_follow_inputs() {
        assert_eq!(retention(0.0, 7.0), 1.0);
        assert!((retention(27.0 * 7.0, 7.0) - 0.5).abs() < 1e-9);
        assert!(retention(10.0, 7.0) > retention(100.0, 7.0));
        assert!(score(1.0, 1.0, 1.0) > score(1.0, 0.2, 1.0));
        assert!(score(0.9, 0.5, 1.0) > score(0.5, 0.5, 1.0));
    }
}
