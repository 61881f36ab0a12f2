//! In-memory adjacency of a space's association graph, by slot (see
//! `table.rs`).
//!
//! Most memories have a handful of edges, so each node's lists are exact-size
//! boxed slices in flat vectors (no spare capacity, no per-node hash table):
//! an edge costs 12 bytes at its source and 8 at its target, a node without
//! edges 32. Updates rebuild the node's slice, which is cheap at these degrees.

use crate::record::{EdgeKind, EdgeRecord};
use crate::snapshot::{Reader, SnapshotError, Writer, invalid};

fn kind_code(k: EdgeKind) -> u8 {
    match k {
        EdgeKind::Explicit => 0,
        EdgeKind::Temporal => 1,
        EdgeKind::Semantic => 2,
        EdgeKind::Consolidation => 3,
    }
}

fn kind_from(c: u8) -> Result<EdgeKind, SnapshotError> {
    Ok(match c {
        0 => EdgeKind::Explicit,
        1 => EdgeKind::Temporal,
        2 => EdgeKind::Semantic,
        3 => EdgeKind::Consolidation,
        _ => return Err(invalid("edge kind")),
    })
}

#[derive(Debug, Default)]
pub(crate) struct Adjacency {
    out: Vec<Box<[(u32, EdgeRecord)]>>,
    inc: Vec<Box<[(u32, f32)]>>,
    edges: usize,
}

fn upsert<T: Copy>(list: &mut Box<[(u32, T)]>, key: u32, v: T) -> bool {
    if let Some(slot) = list.iter_mut().find(|(k, _)| *k == key) {
        slot.1 = v;
        return false;
    }
    let mut items = list.to_vec();
    items.push((key, v));
    *list = items.into_boxed_slice();
    true
}

fn without<T: Copy>(list: &mut Box<[(u32, T)]>, key: u32) {
    *list = list.iter().filter(|(k, _)| *k != key).copied().collect();
}

fn grow<T>(v: &mut Vec<Box<[T]>>, slot: u32) {
    let s = slot as usize;
    if v.len() <= s {
        v.resize_with(s + 1, || Box::new([]));
    }
}

impl Adjacency {
    /// Adds the edge `from → to`, or replaces its record.
    pub(crate) fn add(&mut self, from: u32, to: u32, e: EdgeRecord) {
        grow(&mut self.out, from);
        grow(&mut self.inc, to);
        let added = upsert(&mut self.out[from as usize], to, e);
        upsert(&mut self.inc[to as usize], from, e.weight);
        self.edges += usize::from(added);
    }

    /// Edges leaving `n`.
    pub(crate) fn outgoing(&self, n: u32) -> &[(u32, EdgeRecord)] {
        self.out.get(n as usize).map_or(&[], |b| &b[..])
    }

    /// Sources of the edges reaching `n`, with their weights.
    pub(crate) fn incoming(&self, n: u32) -> &[(u32, f32)] {
        self.inc.get(n as usize).map_or(&[], |b| &b[..])
    }

    /// Neighbours in both directions with the edge weight (spreading follows
    /// an association from either end).
    pub(crate) fn neighbours(&self, n: u32) -> impl Iterator<Item = (u32, f32)> + '_ {
        let outs = self.outgoing(n).iter().map(|(t, e)| (*t, e.weight));
        let ins = self.incoming(n).iter().copied();
        outs.chain(ins)
    }

    /// Removes every edge touching `n`; returns the other ends of its
    /// outgoing and of its incoming edges.
    pub(crate) fn remove_node(&mut self, n: u32) -> (Vec<u32>, Vec<u32>) {
        let outs: Vec<u32> = self.outgoing(n).iter().map(|(t, _)| *t).collect();
        let ins: Vec<u32> = self.incoming(n).iter().map(|(f, _)| *f).collect();
        for to in &outs {
            without(&mut self.inc[*to as usize], n);
        }
        for from in &ins {
            without(&mut self.out[*from as usize], n);
        }
        if let Some(l) = self.out.get_mut(n as usize) {
            *l = Box::new([]);
        }
        if let Some(l) = self.inc.get_mut(n as usize) {
            *l = Box::new([]);
        }
        // A self-edge would be counted in both lists; links refuse them.
        self.edges -= outs.len() + ins.len();
        (outs, ins)
    }

    /// Number of edges.
    pub(crate) fn len(&self) -> usize {
        self.edges
    }

    /// `true` if every list of a slot refused by `live` is empty and no list
    /// points at such a slot (tests proving forget leaves nothing dangling).
    pub(crate) fn all_live(&self, live: impl Fn(u32) -> bool) -> bool {
        let out_ok = self
            .out
            .iter()
            .enumerate()
            .all(|(s, l)| l.is_empty() || (live(s as u32) && l.iter().all(|(t, _)| live(*t))));
        let inc_ok = self
            .inc
            .iter()
            .enumerate()
            .all(|(s, l)| l.is_empty() || (live(s as u32) && l.iter().all(|(f, _)| live(*f))));
        out_ok && inc_ok
    }

    /// Writes both directions to a snapshot (see `snapshot.rs`).
    pub(crate) fn write_to(&self, w: &mut Writer) -> std::io::Result<()> {
        w.len(self.out.len())?;
        for list in &self.out {
            w.len(list.len())?;
            for (to, e) in list.iter() {
                w.u32(*to)?;
                w.f32(e.weight)?;
                w.u8(kind_code(e.kind))?;
            }
        }
        w.len(self.inc.len())?;
        for list in &self.inc {
            w.len(list.len())?;
            for (from, weight) in list.iter() {
                w.u32(*from)?;
                w.f32(*weight)?;
            }
        }
        Ok(())
    }

    /// Reads what [`Adjacency::write_to`] wrote, for the memories in the
    /// slots `live` accepts (below `slots`): every edge must join two
    /// different live slots, appear once, and be listed at both ends.
    pub(crate) fn read_from(
        r: &mut Reader<'_>,
        slots: u32,
        live: impl Fn(u32) -> bool,
    ) -> Result<Self, SnapshotError> {
        let node = |r: &mut Reader<'_>| -> Result<u32, SnapshotError> {
            let n = r.u32()?;
            if n >= slots || !live(n) {
                return Err(invalid("edge to a free slot or out of range"));
            }
            Ok(n)
        };
        let n = r.len(slots as usize)?;
        let mut out = Vec::with_capacity(n);
        let mut forward: Vec<(u32, u32)> = Vec::new();
        for from in 0..n as u32 {
            let k = r.len(slots as usize)?;
            let mut list = Vec::with_capacity(k);
            for _ in 0..k {
                let to = node(r)?;
                let weight = r.f32()?;
                let kind = kind_from(r.u8()?)?;
                list.push((to, EdgeRecord { weight, kind }));
                forward.push((from, to));
            }
            out.push(list.into_boxed_slice());
        }
        let n = r.len(slots as usize)?;
        let mut inc = Vec::with_capacity(n);
        let mut backward: Vec<(u32, u32)> = Vec::with_capacity(forward.len());
        for to in 0..n as u32 {
            let k = r.len(slots as usize)?;
            let mut list = Vec::with_capacity(k);
            for _ in 0..k {
                let from = node(r)?;
                list.push((from, r.f32()?));
                backward.push((from, to));
            }
            inc.push(list.into_boxed_slice());
        }
        forward.sort_unstable();
        backward.sort_unstable();
        let ok = forward == backward
            && forward.windows(2).all(|w| w[0] != w[1])
            && forward.iter().all(|(f, t)| f != t)
            && forward.iter().all(|(f, _)| live(*f));
        if !ok {
            return Err(invalid("edges not listed once at both ends"));
        }
        let edges = forward.len();
        Ok(Adjacency { out, inc, edges })
    }

    /// Drops spare capacity (after a bulk load).
    pub(crate) fn shrink_to_fit(&mut self) {
        self.out.shrink_to_fit();
        self.inc.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(w: f32) -> EdgeRecord {
        EdgeRecord {
            weight: w,
            kind: EdgeKind::Explicit,
        }
    }

    /// Writes `body` as a snapshot and reads it back as adjacency over
    /// `slots` slots, all live except `dead`.
    fn round_trip(
        slots: u32,
        dead: u32,
        body: impl FnOnce(&mut Writer) -> std::io::Result<()>,
    ) -> Result<Adjacency, SnapshotError> {
        let dir = tempfile::tempdir().expect("tempdir");
        crate::snapshot::write(dir.path(), 1, 1, body).expect("write");
        crate::snapshot::take(dir.path(), 1, 1, |r| {
            Adjacency::read_from(r, slots, |s| s != dead)
        })
        .map(|a| a.expect("present"))
    }

    /// Raw lists: `out[from] = [to…]`, `inc[to] = [from…]`.
    fn lists(out: &[&[u32]], inc: &[&[u32]]) -> impl FnOnce(&mut Writer) -> std::io::Result<()> {
        let (out, inc): (Vec<Vec<u32>>, Vec<Vec<u32>>) = (
            out.iter().map(|l| l.to_vec()).collect(),
            inc.iter().map(|l| l.to_vec()).collect(),
        );
        move |w| {
            w.len(out.len())?;
            for l in &out {
                w.len(l.len())?;
                for t in l {
                    w.u32(*t)?;
                    w.f32(0.5)?;
                    w.u8(0)?;
                }
            }
            w.len(inc.len())?;
            for l in &inc {
                w.len(l.len())?;
                for f in l {
                    w.u32(*f)?;
                    w.f32(0.5)?;
                }
            }
            Ok(())
        }
    }

    #[test]
    fn snapshots_round_trip_and_refuse_edges_not_listed_once_at_both_ends() {
        let mut g = Adjacency::default();
        g.add(0, 1, e(0.5));
        g.add(2, 1, e(0.3));
        g.add(1, 2, e(0.2));
        let back = round_trip(3, 99, |w| g.write_to(w)).expect("valid");
        assert_eq!(back.len(), 3);
        for n in 0..3 {
            assert_eq!(back.outgoing(n), g.outgoing(n));
            assert_eq!(back.incoming(n), g.incoming(n));
        }
        type Lists<'a> = &'a [&'a [u32]];
        let bad: [(&str, Lists, Lists, u32); 5] = [
            ("listed twice", &[&[1, 1]], &[&[], &[0]], 99),
            ("self-edge", &[&[0]], &[&[0]], 99),
            ("missing at its target", &[&[1]], &[], 99),
            ("only at its target", &[], &[&[], &[0]], 99),
            ("to a free slot", &[&[1]], &[&[], &[0]], 1),
        ];
        for (what, out, inc, dead) in bad {
            assert!(round_trip(3, dead, lists(out, inc)).is_err(), "{what}");
        }
        assert!(round_trip(3, 99, lists(&[&[1]], &[&[], &[0]])).is_ok());
    }

    #[test]
    fn add_replace_and_remove_keep_both_directions_consistent() {
        let (a, b, c) = (0u32, 1u32, 2u32);
        let mut g = Adjacency::default();
        g.add(a, b, e(0.5));
        g.add(a, b, e(0.8));
        g.add(c, b, e(0.3));
        g.add(b, c, e(0.2));
        assert_eq!(g.len(), 3, "re-adding replaces");
        assert_eq!(g.outgoing(a), &[(b, e(0.8))]);
        let mut nb: Vec<(u32, f32)> = g.neighbours(b).collect();
        nb.sort_by_key(|x| x.0);
        assert_eq!(nb, vec![(a, 0.8), (c, 0.2), (c, 0.3)]);
        let (outs, ins) = g.remove_node(b);
        assert_eq!((outs, ins.len()), (vec![c], 2));
        assert_eq!(g.len(), 0);
        assert!(g.all_live(|s| s != b));
        assert!(g.neighbours(a).next().is_none() && g.neighbours(c).next().is_none());
    }
}
