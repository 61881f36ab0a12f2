//! Approximate nearest neighbours for cosine similarity: a hierarchical
//! navigable small-world graph (Malkov & Yashunin), pure data, no I/O.
//!
//! Vectors are normalised at insert, so cosine similarity is a dot product and
//! the distance is `1 - dot`. Removal of a linked node leaves a tombstone:
//! the node still routes searches but is never returned. Tombstones are
//! reclaimed in the background ([`Hnsw::reclaim`], after FreshDiskANN's
//! delete consolidation): every node linked to one is relinked to its live
//! neighbours and the neighbours' neighbours, and once a full pass has done
//! that, nothing points at the tombstones any more and their slots are
//! reused by later inserts. So memory follows the live vectors, not every
//! vector ever inserted. Node levels come from a hash of the key, so the
//! same set of keys gets the same levels whatever the order.
//!
//! Why our own: the maintained Rust crates either cannot delete (forget must
//! remove a vector) or build C++ through `cxx`, whose build dependencies
//! change the feature set of RocksDB's bindgen and force a 17-minute RocksDB
//! rebuild. This is ~250 lines with a recall test against brute force.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use engram_lsm::EpisodeId;

/// Index parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HnswParams {
    /// Links per node on upper levels (twice that on level 0).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least `k`).
    pub ef_search: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 128,
            ef_search: 256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Dist(f32);

impl Eq for Dist {}

impl PartialOrd for Dist {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Dist {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// An HNSW index over the embeddings of one space.
#[derive(Debug)]
pub struct Hnsw {
    dim: usize,
    params: HnswParams,
    vectors: Vec<f32>,
    links: Vec<Vec<Vec<u32>>>,
    /// int8 copies of the vectors (`dim` per node) and their scales, for
    /// the exhaustive scan.
    codes: Vec<i8>,
    scales: Vec<f32>,
    keys: Vec<EpisodeId>,
    deleted: Vec<bool>,
    index_of: crate::ids::IdMap<u32>,
    entry: Option<u32>,
    max_level: usize,
    live: usize,
    /// Links are built once more than this many vectors are live.
    graph_from: usize,
    /// Nodes below this index are linked (or deleted).
    linked_upto: usize,
    /// Removed nodes that links may still point at.
    tombstones: Vec<u32>,
    /// Slots no link points at, reused by inserts (their `deleted` is set).
    free: Vec<u32>,
    /// The reclaim pass in progress.
    pass: Option<Pass>,
}

/// A reclaim pass: relinks every node below `end` away from removed
/// neighbours, then frees `freeing` (the tombstones when it started).
#[derive(Debug)]
struct Pass {
    next: usize,
    end: usize,
    freeing: Vec<u32>,
}

/// Older nodes linked per insert while a backlog remains.
const LINK_BACKLOG_STEP: usize = 8;

fn normalise(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| x / norm).collect()
}

/// `true` when the CPU has AVX2 and FMA (checked once).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Dot product: the portable loop, compiled a second time for AVX2 and
/// chosen at run time (the build targets baseline x86-64, so SSE2 only).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { dot_avx2(a, b) };
    }
    dot_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_portable(a, b)
}

/// int8 dot product, dispatched like [`dot`].
fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 (checked above).
        return unsafe { dot_i8_avx2(a, b) };
    }
    dot_i8_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot_i8_avx2(a: &[i8], b: &[i8]) -> i32 {
    dot_i8_portable(a, b)
}

/// Widening multiply-add in 16 lanes; the compiler turns it into
/// `pmaddwd` (SSE2) or `vpmaddwd` (AVX2).
#[inline(always)]
fn dot_i8_portable(a: &[i8], b: &[i8]) -> i32 {
    let mut acc = [0i32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: i32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += i32::from(i16::from(x[i]) * i16::from(y[i]));
        }
    }
    acc.iter().sum::<i32>() + tail
}

/// int8 codes of a (normalised) vector and the scale that restores it.
fn quantise(v: &[f32]) -> (Vec<i8>, f32) {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    if max == 0.0 {
        return (vec![0; v.len()], 0.0);
    }
    let scale = max / 127.0;
    let codes = v
        .iter()
        .map(|x| (x / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (codes, scale)
}

/// Dot product with eight independent accumulators, so the compiler can
/// vectorise it (a single running sum is a serial dependency chain).
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn level_of(key: &EpisodeId, m: usize) -> usize {
    // SplitMix64 over the key: a uniform u in (0, 1].
    let mut x = u64::from_le_bytes(key[..8].try_into().unwrap_or([0; 8]))
        ^ u64::from_le_bytes(key[8..].try_into().unwrap_or([0; 8]));
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let u = ((x >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let ml = 1.0 / (m.max(2) as f64).ln();
    ((-u.ln() * ml) as usize).min(16)
}

impl Hnsw {
    /// An empty index for `dim`-dimensional vectors whose links are built
    /// from the first vector on.
    pub fn new(dim: usize, params: HnswParams) -> Self {
        Self::with_graph_from(dim, params, 0)
    }

    /// An empty index that stores vectors only until it holds more than
    /// `graph_from` of them (see [`Hnsw::insert`]).
    pub fn with_graph_from(dim: usize, params: HnswParams, graph_from: usize) -> Self {
        Self {
            dim,
            params,
            vectors: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            links: Vec::new(),
            keys: Vec::new(),
            deleted: Vec::new(),
            index_of: crate::ids::IdMap::default(),
            entry: None,
            max_level: 0,
            live: 0,
            graph_from,
            linked_upto: 0,
            tombstones: Vec::new(),
            free: Vec::new(),
            pass: None,
        }
    }

    /// Live (not removed) vectors.
    pub fn len(&self) -> usize {
        self.live
    }

    /// `true` when no live vector is indexed.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// `true` if `key` is indexed and not removed.
    pub fn contains(&self, key: &EpisodeId) -> bool {
        self.index_of.contains_key(key)
    }

    /// The stored (normalised) vector of `key`, if indexed.
    pub fn get(&self, key: &EpisodeId) -> Option<&[f32]> {
        self.index_of.get(key).map(|i| self.vector(*i))
    }

    fn vector(&self, i: u32) -> &[f32] {
        let s = i as usize * self.dim;
        &self.vectors[s..s + self.dim]
    }

    fn dist(&self, q: &[f32], i: u32) -> Dist {
        Dist(1.0 - dot(q, self.vector(i)))
    }

    fn max_links(&self, level: usize) -> usize {
        if level == 0 {
            self.params.m * 2
        } else {
            self.params.m
        }
    }

    /// Adds `key` (replacing an earlier vector of the same key). Vectors of
    /// the wrong dimension are ignored; the graph validates them before.
    /// Until the index holds more than `graph_from` vectors only the vectors
    /// are stored (they are searched by [`Hnsw::scan`]); from then on each
    /// insert links itself and up to eight older nodes, and [`Hnsw::search`]
    /// walks the graph once every node is linked (scanning until then).
    pub fn insert(&mut self, key: EpisodeId, v: &[f32]) {
        if v.len() != self.dim {
            return;
        }
        self.remove(&key);
        let q = normalise(v);
        let level = level_of(&key, self.params.m);
        let (codes, scale) = quantise(&q);
        let id = if let Some(id) = self.free.pop() {
            let i = id as usize;
            self.vectors[i * self.dim..(i + 1) * self.dim].copy_from_slice(&q);
            self.codes[i * self.dim..(i + 1) * self.dim].copy_from_slice(&codes);
            self.scales[i] = scale;
            self.keys[i] = key;
            self.deleted[i] = false;
            self.links[i] = vec![Vec::new(); level + 1];
            id
        } else {
            self.vectors.extend_from_slice(&q);
            self.codes.extend_from_slice(&codes);
            self.scales.push(scale);
            self.keys.push(key);
            self.deleted.push(false);
            self.links.push(vec![Vec::new(); level + 1]);
            (self.keys.len() - 1) as u32
        };
        self.index_of.insert(key, id);
        self.live += 1;
        if (id as usize) < self.linked_upto {
            // A reused slot the backlog has already passed: link it now.
            self.connect(id);
        }
        // Link the new node and up to LINK_BACKLOG_STEP older ones, so a
        // backlog left by crossing `graph_from` (or by a restart) is absorbed
        // gradually instead of stalling one insert for minutes.
        self.link_backlog(LINK_BACKLOG_STEP + 1);
    }

    /// Changes the size from which links are built (a space loads its
    /// vectors with linking deferred, then sets its threshold back).
    pub fn set_graph_from(&mut self, graph_from: usize) {
        self.graph_from = graph_from;
    }

    /// Nodes not linked yet while links are due (0 below `graph_from`).
    pub fn backlog(&self) -> usize {
        if self.linked_upto > 0 || self.live > self.graph_from {
            self.keys.len() - self.linked_upto
        } else {
            0
        }
    }

    /// Links up to `budget` nodes of the backlog; returns how many.
    pub fn link_backlog(&mut self, budget: usize) -> usize {
        if self.backlog() == 0 {
            return 0;
        }
        let end = self.keys.len();
        let mut done = 0;
        while self.linked_upto < end && done < budget {
            let i = self.linked_upto;
            self.linked_upto += 1;
            if !self.deleted[i] {
                self.connect(i as u32);
                done += 1;
            }
        }
        done
    }

    /// `true` once every node is linked: searches walk the graph.
    fn linked(&self) -> bool {
        self.linked_upto > 0 && self.linked_upto == self.keys.len()
    }

    /// Links node `id` (already stored) into the graph.
    fn connect(&mut self, id: u32) {
        let level = self.links[id as usize].len() - 1;
        let q = self.vector(id).to_vec();
        let Some(mut ep) = self.entry else {
            self.entry = Some(id);
            self.max_level = level;
            return;
        };
        for l in (level + 1..=self.max_level).rev() {
            ep = self.greedy(&q, ep, l);
        }
        let mut eps = vec![ep];
        for l in (0..=level.min(self.max_level)).rev() {
            let found = self.search_layer(&q, &eps, self.params.ef_construction, l);
            // Tombstones route the search but get no new links (a reclaim
            // pass must only have to relink the nodes that existed before).
            let alive: Vec<(Dist, u32)> = found
                .iter()
                .filter(|(_, i)| !self.deleted[*i as usize])
                .copied()
                .collect();
            let chosen = self.select(&alive, self.max_links(l));
            self.links[id as usize][l] = chosen.clone();
            for n in chosen {
                self.links[n as usize][l].push(id);
                if self.links[n as usize][l].len() > self.max_links(l) {
                    // Overflow: keep the closest links. (Re-running the
                    // diversity heuristic here costs O(m²) distances per
                    // neighbour and made inserts ~5× slower for little recall.)
                    let base = self.vector(n);
                    let mut cands: Vec<(Dist, u32)> = self.links[n as usize][l]
                        .iter()
                        .map(|c| (self.dist(base, *c), *c))
                        .collect();
                    cands.sort();
                    cands.truncate(self.max_links(l));
                    self.links[n as usize][l] = cands.into_iter().map(|(_, c)| c).collect();
                }
            }
            eps = found.iter().map(|(_, i)| *i).collect();
        }
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(id);
        }
    }

    /// Removes `key`; it is never returned again. Returns whether it was
    /// present. A node no link can point at (not linked yet) is freed at
    /// once; a linked one becomes a tombstone until [`Hnsw::reclaim`].
    pub fn remove(&mut self, key: &EpisodeId) -> bool {
        match self.index_of.remove(key) {
            Some(i) => {
                self.deleted[i as usize] = true;
                self.live -= 1;
                if (i as usize) < self.linked_upto || self.entry == Some(i) {
                    self.tombstones.push(i);
                } else {
                    self.free.push(i);
                }
                true
            }
            None => false,
        }
    }

    /// Removed vectors whose memory is not reusable yet.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len() + self.pass.as_ref().map_or(0, |p| p.freeing.len())
    }

    /// `true` when [`Hnsw::reclaim`] has work: a pass in progress, or
    /// tombstones worth a pass (a quarter of the live nodes, at least 64;
    /// a pass visits every node, so it is amortised over many removals).
    pub fn reclaim_due(&self) -> bool {
        self.pass.is_some() || self.tombstones.len() >= (self.live / 4).max(64)
    }

    /// Works on the reclaim pass for up to `budget` relinked nodes (each
    /// costs one neighbourhood selection, like an insert); starts a pass
    /// when one is due. Returns the number of slots freed (at the end of a
    /// pass), so a caller can loop until `reclaim_due` is false.
    pub fn reclaim(&mut self, budget: usize) -> usize {
        if self.pass.is_none() {
            if !self.reclaim_due() {
                return 0;
            }
            self.pass = Some(Pass {
                next: 0,
                end: self.linked_upto,
                freeing: std::mem::take(&mut self.tombstones),
            });
        }
        let Some(mut pass) = self.pass.take() else {
            return 0;
        };
        // Checking a node with no removed neighbour is a few loads: bound
        // those too, so one call stays short on a large index.
        let mut examined = 0;
        let mut relinked = 0;
        let budget = budget.max(1);
        while pass.next < pass.end && relinked < budget && examined < budget * 64 {
            let p = pass.next as u32;
            pass.next += 1;
            examined += 1;
            if !self.deleted[p as usize] && self.relink(p) {
                relinked += 1;
            }
        }
        if pass.next < pass.end {
            self.pass = Some(pass);
            return 0;
        }
        // No live node links to the pass's tombstones now. Nodes removed
        // during the pass may still: relink them too (they keep routing
        // searches until the next pass), so no link at all points at a
        // slot about to be freed. Then free.
        for d in self.tombstones.clone() {
            self.relink(d);
        }
        if self.entry.is_some_and(|e| self.deleted[e as usize]) {
            self.pick_entry();
        }
        for &i in &pass.freeing {
            self.links[i as usize] = Vec::new();
        }
        let n = pass.freeing.len();
        self.free.append(&mut pass.freeing);
        n
    }

    /// Replaces the links of node `p` to removed nodes by the closest live
    /// nodes among its live neighbours and the removed ones' neighbours
    /// (keeping the neighbour-selection heuristic). Returns whether any
    /// level needed it.
    fn relink(&mut self, p: u32) -> bool {
        let mut changed = false;
        for l in 0..self.links[p as usize].len() {
            let links = &self.links[p as usize][l];
            if !links.iter().any(|n| self.deleted[*n as usize]) {
                continue;
            }
            let mut cands: Vec<u32> = Vec::with_capacity(links.len() * 4);
            for &n in links {
                if !self.deleted[n as usize] {
                    cands.push(n);
                } else if let Some(second) = self.links[n as usize].get(l) {
                    cands.extend(
                        second
                            .iter()
                            .filter(|m| **m != p && !self.deleted[**m as usize]),
                    );
                }
            }
            cands.sort_unstable();
            cands.dedup();
            let base = self.vector(p);
            let mut scored: Vec<(Dist, u32)> =
                cands.into_iter().map(|c| (self.dist(base, c), c)).collect();
            scored.sort();
            scored.truncate(self.params.ef_construction);
            let chosen = self.select(&scored, self.max_links(l));
            self.links[p as usize][l] = chosen;
            changed = true;
        }
        changed
    }

    /// Makes the live linked node with the most levels the entry point.
    fn pick_entry(&mut self) {
        let best = (0..self.linked_upto)
            .filter(|i| !self.deleted[*i])
            .max_by_key(|i| (self.links[*i].len(), std::cmp::Reverse(*i)));
        self.entry = best.map(|i| i as u32);
        self.max_level = best.map_or(0, |i| self.links[i].len().saturating_sub(1));
    }

    /// The neighbour-selection heuristic: keep a candidate only if it is
    /// closer to the base than to every neighbour kept so far (spreads links
    /// in all directions), then fill up with the closest pruned ones.
    fn select(&self, sorted: &[(Dist, u32)], m: usize) -> Vec<u32> {
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        let mut pruned = Vec::new();
        for (d, c) in sorted {
            if kept.len() >= m {
                break;
            }
            let cv = self.vector(*c);
            if kept.iter().all(|k| self.dist(cv, *k).0 > d.0) {
                kept.push(*c);
            } else {
                pruned.push(*c);
            }
        }
        for c in pruned {
            if kept.len() >= m {
                break;
            }
            kept.push(c);
        }
        kept
    }

    fn greedy(&self, q: &[f32], mut ep: u32, level: usize) -> u32 {
        let mut best = self.dist(q, ep);
        loop {
            let mut moved = false;
            for n in &self.links[ep as usize][level] {
                let d = self.dist(q, *n);
                if d < best {
                    best = d;
                    ep = *n;
                    moved = true;
                }
            }
            if !moved {
                return ep;
            }
        }
    }

    /// Beam search on one level; returns up to `ef` nodes sorted by distance.
    fn search_layer(&self, q: &[f32], eps: &[u32], ef: usize, level: usize) -> Vec<(Dist, u32)> {
        let mut visited = vec![0u64; self.keys.len().div_ceil(64)];
        let mut seen = |i: u32| {
            let (w, b) = (i as usize / 64, i as usize % 64);
            let was = visited[w] & (1 << b) != 0;
            visited[w] |= 1 << b;
            was
        };
        let mut candidates = BinaryHeap::new();
        let mut best: BinaryHeap<(Dist, u32)> = BinaryHeap::new();
        for &e in eps {
            if !seen(e) {
                let d = self.dist(q, e);
                candidates.push(Reverse((d, e)));
                best.push((d, e));
            }
        }
        while best.len() > ef {
            best.pop();
        }
        while let Some(Reverse((d, c))) = candidates.pop() {
            if best.len() >= ef && best.peek().is_some_and(|w| d > w.0) {
                break;
            }
            for n in self.links[c as usize].get(level).into_iter().flatten() {
                if seen(*n) {
                    continue;
                }
                let dn = self.dist(q, *n);
                if best.len() < ef || best.peek().is_some_and(|w| dn < w.0) {
                    candidates.push(Reverse((dn, *n)));
                    best.push((dn, *n));
                    if best.len() > ef {
                        best.pop();
                    }
                }
            }
        }
        let mut out = best.into_vec();
        out.sort();
        out
    }

    /// Up to `k` live keys accepted by `accept`, most similar first, with
    /// their cosine similarity. May return fewer than `k` when the filter
    /// rejects most of the neighbourhood; the caller then falls back to an
    /// exact scan.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        accept: impl Fn(&EpisodeId) -> bool + Sync,
    ) -> Vec<(EpisodeId, f32)> {
        if !self.linked() {
            return self.scan(q, k, &accept);
        }
        let Some(mut ep) = self.entry else {
            return Vec::new();
        };
        if q.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let q = normalise(q);
        for l in (1..=self.max_level).rev() {
            ep = self.greedy(&q, ep, l);
        }
        let found = self.search_layer(&q, &[ep], self.params.ef_search.max(k), 0);
        found
            .into_iter()
            .filter(|(_, i)| !self.deleted[*i as usize] && accept(&self.keys[*i as usize]))
            .take(k)
            .map(|(d, i)| (self.keys[i as usize], 1.0 - d.0))
            .collect()
    }

    /// Exhaustive search over every live vector accepted by `accept`, fast:
    /// int8 dot products pick `max(4k, k + 32)` candidates (split across the
    /// available cores for large indexes), which are then re-ranked with the
    /// full vectors. Misses a true neighbour only when int8 rounding moves
    /// it by more than the gap to the candidate cut, which the recall tests
    /// and benchmark measure.
    pub fn scan(
        &self,
        q: &[f32],
        k: usize,
        accept: impl Fn(&EpisodeId) -> bool + Sync,
    ) -> Vec<(EpisodeId, f32)> {
        if q.len() != self.dim || k == 0 || self.live == 0 {
            return Vec::new();
        }
        let q = normalise(q);
        let (qc, qs) = quantise(&q);
        let keep = (k * 4).max(k + 32);
        let n = self.keys.len();
        let part = |range: std::ops::Range<usize>| -> Vec<(Dist, u32)> {
            let mut best: BinaryHeap<(Dist, u32)> = BinaryHeap::with_capacity(keep + 1);
            for i in range {
                if self.deleted[i] || !accept(&self.keys[i]) {
                    continue;
                }
                let codes = &self.codes[i * self.dim..(i + 1) * self.dim];
                let sim = dot_i8(&qc, codes) as f32 * qs * self.scales[i];
                let d = Dist(-sim);
                if best.len() < keep {
                    best.push((d, i as u32));
                } else if best.peek().is_some_and(|w| d < w.0) {
                    best.pop();
                    best.push((d, i as u32));
                }
            }
            best.into_vec()
        };
        let threads = std::thread::available_parallelism().map_or(1, |p| p.get().min(8));
        let candidates: Vec<(Dist, u32)> = if n >= 32_768 && threads > 1 {
            let chunk = n.div_ceil(threads);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let part = &part;
                        s.spawn(move || part(t * chunk..((t + 1) * chunk).min(n)))
                    })
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_default())
                    .collect()
            })
        } else {
            part(0..n)
        };
        let scored = candidates
            .into_iter()
            .map(|(_, i)| (self.keys[i as usize], dot(&q, self.vector(i))))
            .collect();
        crate::rank::top_k(scored, k)
    }

    /// Exact search over every live vector accepted by `accept`.
    pub fn exact(
        &self,
        q: &[f32],
        k: usize,
        accept: impl Fn(&EpisodeId) -> bool,
    ) -> Vec<(EpisodeId, f32)> {
        if q.len() != self.dim || k == 0 {
            return Vec::new();
        }
        let q = normalise(q);
        let scored: Vec<(EpisodeId, f32)> = (0..self.keys.len() as u32)
            .filter(|i| !self.deleted[*i as usize] && accept(&self.keys[*i as usize]))
            .map(|i| (self.keys[i as usize], dot(&q, self.vector(i))))
            .collect();
        crate::rank::top_k(scored, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> EpisodeId {
        let mut k = [0; 16];
        k[8..].copy_from_slice(&i.to_be_bytes());
        k[..8].copy_from_slice(&(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).to_be_bytes());
        k
    }

    fn random(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                (0..dim)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        (x % 20_000) as f32 / 10_000.0 - 1.0
                    })
                    .collect()
            })
            .collect()
    }

    /// `n` random vectors and an index holding them under `key(i)`.
    fn filled(n: usize, dim: usize, seed: u64, params: HnswParams) -> (Vec<Vec<f32>>, Hnsw) {
        let data = random(n, dim, seed);
        let mut idx = Hnsw::new(dim, params);
        for (i, v) in data.iter().enumerate() {
            idx.insert(key(i as u64), v);
        }
        (data, idx)
    }

    #[test]
    fn recall_at_10_against_brute_force() {
        let (n, dim) = (4000, 32);
        let (_, idx) = filled(n, dim, 7, HnswParams::default());
        let recall = recall(&idx, &random(100, dim, 99));
        eprintln!("hnsw recall@10 on {n} random {dim}-dim vectors: {recall:.3}");
        assert!(recall >= 0.95, "recall@10 {recall}");
    }

    #[test]
    fn int8_scan_matches_brute_force_on_random_384_dim_vectors() {
        let (n, dim) = (5000, 384);
        let (data, mut idx) = filled(n, dim, 5, HnswParams::default());
        let mut hits = 0;
        let queries = random(50, dim, 77);
        for q in &queries {
            let truth: Vec<_> = idx
                .exact(q, 10, |_| true)
                .into_iter()
                .map(|x| x.0)
                .collect();
            let got = idx.scan(q, 10, |_| true);
            assert_eq!(got.len(), 10);
            hits += got.iter().filter(|g| truth.contains(&g.0)).count();
        }
        let recall = hits as f64 / (queries.len() * 10) as f64;
        eprintln!("int8 scan recall@10 on {n} random {dim}-dim vectors: {recall:.3}");
        assert!(recall >= 0.99, "recall@10 {recall}");
        // Removed keys and the filter hold in the scan too.
        idx.remove(&key(3));
        let got = idx.scan(&data[3], 5, |k| *k != key(4));
        assert!(got.iter().all(|(k, _)| *k != key(3) && *k != key(4)));
    }

    #[test]
    fn deferred_links_are_built_from_the_backlog_and_scanned_until_then() {
        let (n, dim) = (600, 16);
        let data = random(n, dim, 21);
        let mut idx = Hnsw::with_graph_from(dim, HnswParams::default(), usize::MAX);
        for (i, v) in data.iter().enumerate() {
            idx.insert(key(i as u64), v);
        }
        assert_eq!(idx.backlog(), 0, "loading defers every link");
        idx.set_graph_from(100);
        assert_eq!(idx.backlog(), n);
        // Until every node is linked, search scans: exact answers.
        assert_eq!(idx.search(&data[7], 1, |_| true)[0].0, key(7));
        assert_eq!(idx.link_backlog(250), 250);
        assert_eq!(idx.backlog(), n - 250);
        while idx.link_backlog(100) > 0 {}
        assert_eq!(idx.backlog(), 0);
        let mut hits = 0;
        for (i, v) in data.iter().enumerate().take(50) {
            hits += usize::from(idx.search(v, 1, |_| true)[0].0 == key(i as u64));
        }
        assert!(hits >= 48, "graph walk finds the vector itself: {hits}/50");
    }

    #[test]
    fn removed_keys_are_never_returned_and_filters_hold() {
        let (data, mut idx) = filled(500, 8, 3, HnswParams::default());
        for i in (0..500).step_by(2) {
            assert!(idx.remove(&key(i)));
        }
        assert!(!idx.remove(&key(0)));
        assert_eq!(idx.len(), 250);
        for q in random(20, 8, 11) {
            for (k, _) in idx.search(&q, 10, |_| true) {
                let i = u64::from_be_bytes(k[8..].try_into().expect("8 bytes"));
                assert!(i % 2 == 1, "removed key {i} returned");
            }
            let only = key(7);
            let got = idx.exact(&q, 10, |k| *k == only);
            assert_eq!(got.len(), 1);
        }
        // Re-inserting a removed key makes it findable again.
        idx.insert(key(0), &data[0]);
        assert_eq!(idx.search(&data[0], 1, |_| true)[0].0, key(0));
    }

    fn recall(idx: &Hnsw, queries: &[Vec<f32>]) -> f64 {
        let mut hits = 0;
        for q in queries {
            let truth: Vec<_> = idx
                .exact(q, 10, |_| true)
                .into_iter()
                .map(|x| x.0)
                .collect();
            let got = idx.search(q, 10, |_| true);
            hits += got.iter().filter(|g| truth.contains(&g.0)).count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    /// No live node links to a removed or freed slot.
    fn no_link_to_removed(idx: &Hnsw) -> bool {
        (0..idx.keys.len()).filter(|i| !idx.deleted[*i]).all(|i| {
            idx.links[i]
                .iter()
                .flatten()
                .all(|n| !idx.deleted[*n as usize])
        })
    }

    /// The invariants the searches index by: no node (tombstones included)
    /// links to a free slot, every level-`l` link points at a node with
    /// more than `l` levels, and the entry point is present.
    fn consistent(idx: &Hnsw) {
        let free: std::collections::HashSet<u32> = idx.free.iter().copied().collect();
        for (i, levels) in idx.links.iter().enumerate() {
            if free.contains(&(i as u32)) {
                assert!(levels.is_empty(), "free slot {i} keeps links");
                continue;
            }
            for (l, links) in levels.iter().enumerate() {
                for n in links {
                    assert!(!free.contains(n), "{i} links to free slot {n}");
                    assert!(
                        idx.links[*n as usize].len() > l,
                        "{i} links to {n} at level {l}"
                    );
                }
            }
        }
        if let Some(e) = idx.entry {
            assert!(!free.contains(&e), "entry point freed");
            assert_eq!(idx.links[e as usize].len(), idx.max_level + 1);
        }
    }

    #[test]
    fn an_entry_point_removed_during_a_pass_is_replaced() {
        let (n, dim) = (300, 8);
        let (data, mut idx) = filled(n, dim, 41, HnswParams::default());
        // Remove the entry's neighbours and enough others for a pass...
        let e = idx.entry.expect("entry");
        let around: Vec<u32> = idx.links[e as usize].iter().flatten().copied().collect();
        for i in around {
            let k = idx.keys[i as usize];
            idx.remove(&k);
        }
        for i in 0..n as u64 {
            if idx.tombstones() >= 80 {
                break;
            }
            if idx.index_of.get(&key(i)).is_some_and(|s| *s != e) {
                idx.remove(&key(i));
            }
        }
        assert!(idx.reclaim_due());
        idx.reclaim(1);
        assert!(idx.pass.is_some());
        // ... then the entry itself while the pass runs.
        let k = idx.keys[e as usize];
        idx.remove(&k);
        while idx.pass.is_some() {
            idx.reclaim(1000);
        }
        consistent(&idx);
        let entry = idx.entry.expect("entry");
        assert!(!idx.deleted[entry as usize], "the entry point is live");
        // Every live vector is still found by the graph walk.
        let top = |idx: &Hnsw, v: &[f32]| idx.search(v, 1, |_| true).first().map(|h| h.0);
        let live: Vec<usize> = (0..n).filter(|i| idx.contains(&key(*i as u64))).collect();
        let found = live
            .iter()
            .filter(|i| top(&idx, &data[**i]) == Some(key(**i as u64)))
            .count();
        assert!(
            found * 10 >= live.len() * 9,
            "{found} of {} found",
            live.len()
        );
        // New vectors get links and are found too.
        let more = random(50, dim, 43);
        for (i, v) in more.iter().enumerate() {
            idx.insert(key(5000 + i as u64), v);
        }
        consistent(&idx);
        let found = (0..50)
            .filter(|i| top(&idx, &more[*i]) == Some(key(5000 + *i as u64)))
            .count();
        assert!(found >= 45, "{found} of 50 new vectors found");
    }

    #[test]
    fn reclaim_relinks_around_tombstones_then_reuses_their_slots() {
        // A small beam, so recall depends on the quality of the links.
        let params = HnswParams {
            m: 6,
            ef_construction: 40,
            ef_search: 16,
        };
        let (n, dim) = (3000, 32);
        let (data, mut idx) = filled(n, dim, 17, params);
        let queries = random(60, dim, 5);
        let before = recall(&idx, &queries);
        // Remove half, the entry point among them.
        let entry = idx.keys[idx.entry.expect("entry") as usize];
        assert!(idx.remove(&entry));
        for i in (0..n as u64).step_by(2) {
            idx.remove(&key(i));
        }
        let removed = n - idx.len();
        assert_eq!(idx.tombstones(), removed, "linked nodes become tombstones");
        assert!(idx.reclaim_due());
        assert!(!no_link_to_removed(&idx));
        let mut freed = 0;
        for _ in 0..10_000 {
            if !idx.reclaim_due() {
                break;
            }
            freed += idx.reclaim(50);
        }
        assert!(!idx.reclaim_due());
        assert_eq!((freed, idx.tombstones()), (removed, 0));
        assert!(
            no_link_to_removed(&idx),
            "every link to a tombstone was replaced"
        );
        assert!(!idx.deleted[idx.entry.expect("entry") as usize]);
        // Against an index built afresh from the surviving vectors.
        let mut fresh = Hnsw::new(dim, params);
        for (i, v) in data.iter().enumerate() {
            if idx.contains(&key(i as u64)) {
                fresh.insert(key(i as u64), v);
            }
        }
        let (after, rebuilt) = (recall(&idx, &queries), recall(&fresh, &queries));
        eprintln!(
            "recall@10 before removal {before:.3}, after reclaim {after:.3}, rebuilt {rebuilt:.3}"
        );
        assert!(
            after >= rebuilt * 0.9,
            "recall@10 after reclaim {after}, rebuilt {rebuilt}"
        );
        // New vectors take the freed slots: the index does not grow.
        let more = random(removed, dim, 23);
        for (i, v) in more.iter().enumerate() {
            idx.insert(key(10_000 + i as u64), v);
        }
        assert_eq!(idx.keys.len(), n, "freed slots are reused");
        assert_eq!(idx.len(), n);
        assert!(idx.free.is_empty());
        let refilled = recall(&idx, &queries);
        eprintln!("recall@10 after refilling the freed slots {refilled:.3}");
        assert!(
            refilled >= before * 0.9,
            "recall@10 after reuse {refilled}, before {before}"
        );
        assert_eq!(idx.search(&more[5], 1, |_| true)[0].0, key(10_005));
    }

    #[test]
    fn unlinked_removals_are_reused_at_once_and_churn_stays_bounded() {
        let dim = 8;
        let data = random(400, dim, 31);
        // Links deferred: nothing can point at a node, so removal frees it.
        let mut idx = Hnsw::with_graph_from(dim, HnswParams::default(), usize::MAX);
        for (i, v) in data.iter().enumerate().take(100) {
            idx.insert(key(i as u64), v);
        }
        for i in 0..50 {
            idx.remove(&key(i));
        }
        assert_eq!(idx.tombstones(), 0);
        for (i, v) in data.iter().enumerate().skip(100).take(50) {
            idx.insert(key(i as u64), v);
        }
        assert_eq!(idx.keys.len(), 100);
        // Linked from the start: churn (insert one, remove the oldest) with
        // the background reclaim in between keeps the slots bounded.
        let mut idx = Hnsw::new(dim, HnswParams::default());
        for (i, v) in data.iter().enumerate().take(200) {
            idx.insert(key(i as u64), v);
        }
        for round in 0..2000u64 {
            idx.insert(key(1000 + round), &data[(round % 400) as usize]);
            idx.remove(&key(if round < 200 {
                round
            } else {
                1000 + round - 200
            }));
            if idx.reclaim(16) > 0 {
                consistent(&idx);
            }
        }
        consistent(&idx);
        assert_eq!(idx.len(), 200);
        assert!(
            idx.keys.len() <= 400,
            "slots {} for 200 live",
            idx.keys.len()
        );
        assert!(idx.search(&data[0], 5, |_| true).len() == 5);
    }

    /// Cost of reclaiming at 384 dimensions, printed (run with
    /// `cargo test --release --workspace --lib -- --ignored reclaim_cost
    /// --nocapture`; docs/performance.md quotes it).
    #[test]
    #[ignore = "prints a measurement; takes a few seconds"]
    fn reclaim_cost_at_384_dimensions() {
        let (n, dim) = (6000, 384);
        let data = random(n, dim, 12_345);
        let mut idx = Hnsw::new(dim, HnswParams::default());
        let t = std::time::Instant::now();
        for (i, v) in data.iter().enumerate() {
            idx.insert(key(i as u64), v);
        }
        let per_insert = t.elapsed() / n as u32;
        for i in (0..n as u64).step_by(4) {
            idx.remove(&key(i));
        }
        let (t, mut calls, mut worst) = (std::time::Instant::now(), 0, std::time::Duration::ZERO);
        while idx.reclaim_due() {
            let c = std::time::Instant::now();
            idx.reclaim(128);
            worst = worst.max(c.elapsed());
            calls += 1;
        }
        eprintln!(
            "{n} vectors of {dim} dimensions: insert {per_insert:?} each; reclaiming {} \
             tombstones took {:?} in {calls} steps of 128 relinks, the longest {worst:?}",
            n / 4,
            t.elapsed()
        );
        assert_eq!(idx.tombstones(), 0);
        consistent(&idx);
    }

    #[test]
    fn empty_and_mismatched_queries_return_nothing() {
        let mut idx = Hnsw::new(4, HnswParams::default());
        assert!(idx.search(&[1.0; 4], 5, |_| true).is_empty());
        idx.insert(key(1), &[1.0, 0.0, 0.0, 0.0]);
        assert!(idx.search(&[1.0; 3], 5, |_| true).is_empty());
        idx.insert(key(2), &[1.0; 3]);
        assert_eq!(idx.len(), 1, "wrong dimension is ignored");
    }
}
