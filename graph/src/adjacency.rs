//! In-memory adjacency of a space's association graph.
//!
//! Most memories have a handful of edges, so each node's lists are exact-size
//! boxed slices (no spare capacity, no per-node hash table): an edge costs 24
//! bytes at its source and 20 at its target. Updates rebuild the node's slice,
//! which is cheap at these degrees.

use engram_lsm::EpisodeId;

use crate::ids::IdMap;
use crate::record::EdgeRecord;

#[derive(Debug, Default)]
pub(crate) struct Adjacency {
    out: IdMap<Box<[(EpisodeId, EdgeRecord)]>>,
    inc: IdMap<Box<[(EpisodeId, f32)]>>,
    edges: usize,
}

fn upsert<T: Copy>(
    list: Option<&[(EpisodeId, T)]>,
    key: EpisodeId,
    v: T,
) -> (Box<[(EpisodeId, T)]>, bool) {
    let mut items: Vec<(EpisodeId, T)> = list.map(<[_]>::to_vec).unwrap_or_default();
    let added = match items.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => {
            slot.1 = v;
            false
        }
        None => {
            items.push((key, v));
            true
        }
    };
    (items.into_boxed_slice(), added)
}

fn without<T: Copy>(list: &[(EpisodeId, T)], key: &EpisodeId) -> Box<[(EpisodeId, T)]> {
    list.iter().filter(|(k, _)| k != key).copied().collect()
}

impl Adjacency {
    /// Adds the edge `from → to`, or replaces its record.
    pub(crate) fn add(&mut self, from: EpisodeId, to: EpisodeId, e: EdgeRecord) {
        let (out, added) = upsert(self.out.get(&from).map(|b| &b[..]), to, e);
        self.out.insert(from, out);
        let (inc, _) = upsert(self.inc.get(&to).map(|b| &b[..]), from, e.weight);
        self.inc.insert(to, inc);
        self.edges += usize::from(added);
    }

    /// Edges leaving `n`.
    pub(crate) fn outgoing(&self, n: &EpisodeId) -> &[(EpisodeId, EdgeRecord)] {
        self.out.get(n).map_or(&[], |b| &b[..])
    }

    /// Sources of the edges reaching `n`, with their weights.
    pub(crate) fn incoming(&self, n: &EpisodeId) -> &[(EpisodeId, f32)] {
        self.inc.get(n).map_or(&[], |b| &b[..])
    }

    /// Neighbours in both directions with the edge weight (spreading follows
    /// an association from either end).
    pub(crate) fn neighbours<'a>(
        &'a self,
        n: &EpisodeId,
    ) -> impl Iterator<Item = (&'a EpisodeId, f32)> + use<'a> {
        let outs = self.outgoing(n).iter().map(|(t, e)| (t, e.weight));
        let ins = self.incoming(n).iter().map(|(f, w)| (f, *w));
        outs.chain(ins)
    }

    /// Removes every edge touching `n`; returns the other ends of its
    /// outgoing and of its incoming edges.
    pub(crate) fn remove_node(&mut self, n: &EpisodeId) -> (Vec<EpisodeId>, Vec<EpisodeId>) {
        let outs: Vec<EpisodeId> = self.outgoing(n).iter().map(|(t, _)| *t).collect();
        let ins: Vec<EpisodeId> = self.incoming(n).iter().map(|(f, _)| *f).collect();
        for to in &outs {
            if let Some(list) = self.inc.get(to) {
                let rest = without(list, n);
                match rest.is_empty() {
                    true => self.inc.remove(to),
                    false => self.inc.insert(*to, rest),
                };
            }
        }
        for from in &ins {
            if let Some(list) = self.out.get(from) {
                let rest = without(list, n);
                match rest.is_empty() {
                    true => self.out.remove(from),
                    false => self.out.insert(*from, rest),
                };
            }
        }
        self.out.remove(n);
        self.inc.remove(n);
        // A self-edge would be counted in both lists; links refuse them.
        self.edges -= outs.len() + ins.len();
        (outs, ins)
    }

    /// Number of edges.
    pub(crate) fn len(&self) -> usize {
        self.edges
    }

    /// `true` if any list still mentions `n`.
    pub(crate) fn mentions(&self, n: &EpisodeId) -> bool {
        self.out.contains_key(n)
            || self.inc.contains_key(n)
            || self.out.values().any(|l| l.iter().any(|(t, _)| t == n))
            || self.inc.values().any(|l| l.iter().any(|(f, _)| f == n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::EdgeKind;

    fn e(w: f32) -> EdgeRecord {
        EdgeRecord {
            weight: w,
            kind: EdgeKind::Explicit,
        }
    }

    #[test]
    fn add_replace_and_remove_keep_both_directions_consistent() {
        let (a, b, c) = ([1; 16], [2; 16], [3; 16]);
        let mut g = Adjacency::default();
        g.add(a, b, e(0.5));
        g.add(a, b, e(0.8));
        g.add(c, b, e(0.3));
        g.add(b, c, e(0.2));
        assert_eq!(g.len(), 3, "re-adding replaces");
        assert_eq!(g.outgoing(&a), &[(b, e(0.8))]);
        let mut nb: Vec<(EpisodeId, f32)> = g.neighbours(&b).map(|(k, w)| (*k, w)).collect();
        nb.sort_by_key(|x| x.0);
        assert_eq!(nb, vec![(a, 0.8), (c, 0.2), (c, 0.3)]);
        let (outs, ins) = g.remove_node(&b);
        assert_eq!((outs, ins.len()), (vec![c], 2));
        assert_eq!(g.len(), 0);
        assert!(!g.mentions(&b) && !g.mentions(&a) && !g.mentions(&c));
    }
}
