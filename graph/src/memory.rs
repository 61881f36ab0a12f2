//! The memory model: spaces, remember / get / forget / link, and recall.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engram_lsm::{Cf, EpisodeId, Mutation, SpaceId, keys};
use serde_json::{Map, Value};

use crate::activation;
use crate::adjacency::Adjacency;
use crate::background::{Failures, Task};
use crate::hnsw::{Hnsw, HnswParams};
use crate::ids::{IdMap, IdSet};
use crate::record::{self, AccessRecord, EdgeKind, EdgeRecord, EpisodeRecord, SpaceRecord};
use crate::snapshot::{self, Reader, SnapshotError, Writer};
use crate::table::Table;
use crate::text::{self, LexicalIndex};
use crate::{Engine, EngineError, OpenOptions, RecoveryReport};

mod access;
mod consolidate;
mod forget;
mod link;
mod read;
mod remember;
mod replicated;
mod residency;
mod snapshots;
mod spaces;
mod tiers;
mod types;

use remember::episode_mutations;
use residency::{Figures, Resident, Use};
use spaces::stats;
use types::invalid;

pub use consolidate::ConsolidationReport;
pub use remember::{Begun, PendingRemember, QuickBegin, QuickFinish};
pub use replicated::WriteAuthority;
pub use spaces::{DamagedSpace, WarmUpReport};
pub use types::{
    ConsolidationConfig, Cue, GraphConfig, GraphError, Limits, LinkSpec, Memory, Recalled,
    RememberRequest, Remembered, SnapshotReport, SpaceOptions, SpaceStats, Via,
};

/// WAL operation kinds written by the graph.
pub mod kind {
    /// Space creation.
    pub const CREATE_SPACE: u8 = 1;
    /// Space deletion.
    pub const DROP_SPACE: u8 = 2;
    /// Remember.
    pub const REMEMBER: u8 = 3;
    /// Forget.
    pub const FORGET: u8 = 4;
    /// Link.
    pub const LINK: u8 = 5;
    /// A batch of access statistics.
    pub const ACCESS: u8 = 6;
    /// A concept made by consolidation.
    pub const CONSOLIDATE: u8 = 7;
    /// Idle memories moved to the cold tier.
    pub const ARCHIVE: u8 = 8;
    /// The first record of a primary's epoch (no mutations): replicas
    /// learn where the epoch starts, and quorums count from it.
    pub const EPOCH_START: u8 = 9;
}

/// Name of the space that always exists.
pub const DEFAULT_SPACE: &str = "default";

/// Weight of an explicit link when none is given.
pub const DEFAULT_LINK_WEIGHT: f32 = 0.9;

/// What recall needs of every memory without reading its record: 40 bytes.
#[derive(Debug, Clone, Default)]
struct EpisodeMeta {
    occurred_at_ms: i64,
    stored_at_ms: i64,
    last_access_ms: i64,
    confidence: f32,
    access_count: u32,
    /// Interned tag set ([`TagSets`]).
    tags: u32,
    /// Made by consolidation.
    concept: bool,
    /// Has a consolidation edge to a concept.
    consolidated: bool,
    /// The record is in the cold column family.
    cold: bool,
}

impl EpisodeMeta {
    fn access(&self) -> AccessRecord {
        AccessRecord {
            count: self.access_count,
            last_ms: self.last_access_ms,
        }
    }

    fn set_access(&mut self, r: AccessRecord) {
        self.access_count = r.count;
        self.last_access_ms = r.last_ms;
    }

    /// Confidence after the forgetting curve at `now`: the clock restarts at
    /// the last access, and stability grows with the number of accesses.
    fn decayed(&self, now: i64, stability_days: f64) -> f32 {
        let since = self.stored_at_ms.max(self.last_access_ms);
        let age = (now - since).max(0) as f64 / 86_400_000.0;
        let stability = stability_days * (1.0 + f64::from(self.access_count).ln_1p());
        (f64::from(self.confidence) * activation::retention(age, stability)) as f32
    }
}

/// The distinct tag sets of a space, interned and counted: memories refer to
/// theirs by number (0 is the empty set). A set lives while a memory uses
/// it: the last one forgotten removes it (its strings leave memory and the
/// next index snapshot), and its number is reused by the next new set, so
/// churn of unique tags never grows it beyond the most sets in use at once.
#[derive(Debug, Default)]
struct TagSets {
    /// Set `i` at `i - 1` with the number of memories using it; a free
    /// number holds an empty set and 0.
    sets: Vec<(Box<[String]>, u32)>,
    index: HashMap<Box<[String]>, u32>,
    /// Free numbers, reused first.
    free: Vec<u32>,
}

impl TagSets {
    /// The number of `tags`, counting one more memory that uses it (pair
    /// with [`TagSets::release`] when that memory goes).
    fn intern(&mut self, tags: &[String]) -> u32 {
        if tags.is_empty() {
            return 0;
        }
        if let Some(&i) = self.index.get(tags) {
            if let Some(entry) = self.sets.get_mut(i as usize - 1) {
                entry.1 += 1;
            }
            return i;
        }
        let set: Box<[String]> = tags.into();
        let reused = self.free.pop().and_then(|i| {
            let entry = self.sets.get_mut(i as usize - 1)?;
            *entry = (set.clone(), 1);
            Some(i)
        });
        let i = match reused {
            Some(i) => i,
            None => {
                self.sets.push((set.clone(), 1));
                self.sets.len() as u32
            }
        };
        self.index.insert(set, i);
        i
    }

    /// One memory fewer uses set `i`; after the last one it is removed.
    fn release(&mut self, i: u32) {
        let Some(entry) = (i as usize)
            .checked_sub(1)
            .and_then(|k| self.sets.get_mut(k))
        else {
            return;
        };
        if entry.1 == 0 {
            return;
        }
        entry.1 -= 1;
        if entry.1 == 0 {
            let set = std::mem::take(&mut entry.0);
            self.index.remove(&set);
            self.free.push(i);
        }
    }

    fn get(&self, i: u32) -> &[String] {
        match i {
            0 => &[],
            i => self.sets.get(i as usize - 1).map_or(&[], |s| &s.0[..]),
        }
    }

    /// Sets in use.
    fn len(&self) -> usize {
        self.index.len()
    }

    /// Counts the memories using each set (`tags` of every memory) after a
    /// snapshot was read, and frees the sets none uses; `false` when a
    /// memory refers to a free or missing set.
    fn recount(&mut self, tags: impl Iterator<Item = u32>) -> bool {
        for e in &mut self.sets {
            e.1 = 0;
        }
        for i in tags.filter(|i| *i != 0) {
            match self.sets.get_mut(i as usize - 1) {
                Some(e) if !e.0.is_empty() => e.1 += 1,
                _ => return false,
            }
        }
        self.free.clear();
        for (k, e) in self.sets.iter_mut().enumerate() {
            if e.1 == 0 {
                let set = std::mem::take(&mut e.0);
                self.index.remove(&set);
                self.free.push(k as u32 + 1);
            }
        }
        true
    }
}

#[derive(Debug, Default)]
struct SpaceState {
    tagsets: TagSets,
    /// Memories by dense slot; the lexical index and the adjacency refer to
    /// them by slot.
    episodes: Table<EpisodeMeta>,
    lexical: LexicalIndex,
    ann: Option<Hnsw>,
    edges: Adjacency,
    sessions: HashMap<String, EpisodeId>,
    /// Session episodes whose records are being written (prepared, not yet
    /// in `episodes`), each with the edges to it that arrived first: the
    /// next episode of a session can finish before its predecessor does,
    /// and its temporal edge then waits here instead of being dropped.
    unfinished: IdMap<Vec<(EpisodeId, EpisodeId, EdgeRecord)>>,
    /// Memories in the cold tier.
    cold: usize,
    /// Lexical postings (for the estimate of the indexes' size).
    postings: usize,
}

impl SpaceState {
    fn new(dim: Option<u32>, params: HnswParams, graph_from: usize) -> Self {
        SpaceState {
            ann: dim.map(|d| Hnsw::with_graph_from(d as usize, params, graph_from)),
            ..SpaceState::default()
        }
    }

    /// Adds an edge between two memories (a consolidation edge marks its
    /// source consolidated); `false` (nothing added) when either is not in
    /// the space.
    fn add_edge(&mut self, from: EpisodeId, to: EpisodeId, e: EdgeRecord) -> bool {
        let (Some(f), Some(t)) = (self.episodes.slot(&from), self.episodes.slot(&to)) else {
            return false;
        };
        self.edges.add(f, t, e);
        if e.kind == EdgeKind::Consolidation {
            if let Some(m) = self.episodes.get_mut(&from) {
                m.consolidated = true;
            }
        }
        true
    }

    fn outgoing(&self, id: &EpisodeId) -> Vec<(EpisodeId, EdgeRecord)> {
        self.episodes.slot(id).map_or_else(Vec::new, |s| {
            self.edges
                .outgoing(s)
                .iter()
                .map(|(t, e)| (*self.episodes.id(*t), *e))
                .collect()
        })
    }

    fn incoming(&self, id: &EpisodeId) -> Vec<EpisodeId> {
        self.episodes.slot(id).map_or_else(Vec::new, |s| {
            self.edges
                .incoming(s)
                .iter()
                .map(|(f, _)| *self.episodes.id(*f))
                .collect()
        })
    }

    /// Both-direction neighbours of a memory with edge weights.
    fn neighbours<'a>(
        &'a self,
        id: &EpisodeId,
    ) -> impl Iterator<Item = (&'a EpisodeId, f32)> + use<'a> {
        let slot = self.episodes.slot(id);
        slot.into_iter()
            .flat_map(|s| self.edges.neighbours(s))
            .map(|(s, w)| (self.episodes.id(s), w))
    }

    /// The `limit` best BM25 matches accepted by `keep`, best first, ties by id.
    fn lexical_search(
        &self,
        query: &str,
        limit: usize,
        keep: impl Fn(&EpisodeId) -> bool,
    ) -> Vec<(EpisodeId, f64)> {
        self.lexical_search_slots(query, limit, |s| keep(self.episodes.id(s)))
    }

    /// [`SpaceState::lexical_search`] with `keep` on slots (no id lookup
    /// per match).
    fn lexical_search_slots(
        &self,
        query: &str,
        limit: usize,
        keep: impl Fn(u32) -> bool,
    ) -> Vec<(EpisodeId, f64)> {
        // Cut by score on slots first (common terms match a large part of
        // the space); everything tied with the cut stays, so the final order
        // by id among equal scores is unaffected.
        let hits = self
            .lexical
            .search_top(query, limit, keep)
            .into_iter()
            .map(|(s, v)| (*self.episodes.id(s), v))
            .collect();
        crate::rank::top_k(hits, limit)
    }

    fn edge_count(&self) -> usize {
        self.edges.len()
    }

    /// Edges of a memory, both directions (0 when it is not in the space).
    fn degree(&self, id: &EpisodeId) -> usize {
        self.episodes.slot(id).map_or(0, |s| {
            self.edges.outgoing(s).len() + self.edges.incoming(s).len()
        })
    }

    /// `true` if the edge `from → to` exists.
    fn has_edge(&self, from: &EpisodeId, to: &EpisodeId) -> bool {
        match (self.episodes.slot(from), self.episodes.slot(to)) {
            (Some(f), Some(t)) => self.edges.outgoing(f).iter().any(|(x, _)| *x == t),
            _ => false,
        }
    }

    /// Writes everything but the vector index to a snapshot.
    fn write_to(&self, w: &mut Writer) -> std::io::Result<()> {
        // Every number, a free one as an empty set: memories keep their
        // numbers, and a removed set's tags are never written. (Readers
        // from before sets were removed refuse an empty set: they rebuild.)
        w.len(self.tagsets.sets.len())?;
        for (set, _) in &self.tagsets.sets {
            w.len(set.len())?;
            for t in set.iter() {
                w.str(t)?;
            }
        }
        self.episodes.write_to(w, |w, m| {
            w.i64(m.occurred_at_ms)?;
            w.i64(m.stored_at_ms)?;
            w.i64(m.last_access_ms)?;
            w.f32(m.confidence)?;
            w.u32(m.access_count)?;
            w.u32(m.tags)?;
            w.u8(u8::from(m.concept) | u8::from(m.consolidated) << 1 | u8::from(m.cold) << 2)
        })?;
        self.lexical.write_to(w)?;
        self.edges.write_to(w)?;
        w.len(self.sessions.len())?;
        for (session, id) in &self.sessions {
            w.str(session)?;
            w.id(id)?;
        }
        Ok(())
    }

    /// Reads what [`SpaceState::write_to`] wrote; the vector index (if the
    /// space has a dimension) starts empty.
    fn read_from(
        r: &mut Reader<'_>,
        dim: Option<u32>,
        params: HnswParams,
    ) -> Result<SpaceState, SnapshotError> {
        let mut st = SpaceState::new(dim, params, usize::MAX);
        let sets = r.len(u32::MAX as usize)?;
        for _ in 0..sets {
            let n = r.len(usize::MAX)?;
            let set = (0..n)
                .map(|_| r.string())
                .collect::<Result<Box<[String]>, _>>()?;
            let i = st.tagsets.sets.len() as u32 + 1;
            // An empty set is a free number.
            if !set.is_empty() && st.tagsets.index.insert(set.clone(), i).is_some() {
                return Err(snapshot::invalid("tag sets"));
            }
            st.tagsets.sets.push((set, 0));
        }
        st.episodes = Table::read_from(r, |r| {
            let m = EpisodeMeta {
                occurred_at_ms: r.i64()?,
                stored_at_ms: r.i64()?,
                last_access_ms: r.i64()?,
                confidence: r.f32()?,
                access_count: r.u32()?,
                tags: r.u32()?,
                concept: false,
                consolidated: false,
                cold: false,
            };
            if m.tags as usize > sets {
                return Err(snapshot::invalid("tag set number"));
            }
            let flags = r.u8()?;
            if flags > 0b111 {
                return Err(snapshot::invalid("memory flags"));
            }
            Ok(EpisodeMeta {
                concept: flags & 1 != 0,
                consolidated: flags & 2 != 0,
                cold: flags & 4 != 0,
                ..m
            })
        })?;
        if !st.tagsets.recount(st.episodes.iter().map(|(_, m)| m.tags)) {
            return Err(snapshot::invalid("tag set number"));
        }
        let slots = st.episodes.slots();
        let live = |s: u32| st.episodes.is_live(s);
        st.lexical = LexicalIndex::read_from(r, slots, live)?;
        st.edges = Adjacency::read_from(r, slots, live)?;
        let n = r.len(usize::MAX)?;
        for _ in 0..n {
            let session = r.string()?;
            let id = r.id()?;
            // A session whose last write failed may name a memory that was
            // never stored: it links to nothing either way.
            if st.episodes.contains_key(&id) {
                st.sessions.insert(session, id);
            }
        }
        st.cold = st.episodes.iter().filter(|(_, m)| m.cold).count();
        let postings = std::cell::Cell::new(0usize);
        st.lexical.all_postings(|_| {
            postings.set(postings.get() + 1);
            true
        });
        st.postings = postings.get();
        Ok(st)
    }
}

/// Counts writes in flight so a shutdown can stop new ones and wait for the
/// rest before it snapshots the indexes (a write changes the store and then
/// the in-memory state; a snapshot must see neither half alone).
#[derive(Debug, Default)]
struct WriteGate {
    sealed: AtomicBool,
    inflight: Arc<AtomicUsize>,
}

/// One write in flight (see [`WriteGate`]); owned, so a write can span
/// threads (see [`PendingRemember`]).
struct Writing(Arc<AtomicUsize>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl WriteGate {
    fn enter(&self) -> Result<Writing, GraphError> {
        // Count first, then look: with `seal` storing then counting (both
        // SeqCst), either this write sees the seal or the seal sees it.
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let w = Writing(Arc::clone(&self.inflight));
        if self.sealed.load(Ordering::SeqCst) {
            return Err(GraphError::ShuttingDown);
        }
        Ok(w)
    }

    fn quiescent(&self) -> bool {
        self.sealed.load(Ordering::SeqCst) && self.inflight.load(Ordering::SeqCst) == 0
    }
}

#[derive(Debug)]
struct Space {
    id: SpaceId,
    record: SpaceRecord,
    /// Indexes and adjacency while they are in memory: loaded on use (so a
    /// restart is ready as soon as the engine has recovered), unloaded when
    /// idle beyond the index memory budget (see the `residency` module).
    state: RwLock<Option<Arc<Resident>>>,
    /// Serialises loading and unloading.
    loading: Mutex<()>,
    /// One consolidation run per space at a time.
    consolidating: Mutex<()>,
    /// `false` once deleted; writers hold it shared while they submit.
    alive: RwLock<bool>,
    /// Hot tier: decoded records of recently used memories.
    hot: Mutex<crate::hot::HotCache>,
    /// Orders forget against moves between the warm and cold families, so a
    /// move can never re-create a forgotten record.
    tiering: Mutex<()>,
    /// Why its data could not be loaded, while requests to it are refused
    /// (see the `spaces` module); `None` for a space that serves.
    damaged: Mutex<Option<spaces::Damage>>,
    /// Its figures as last known while it is not in memory.
    figures: Mutex<Option<Figures>>,
    /// Logged once: its indexes alone exceed the budget.
    oversized: AtomicBool,
    /// Its in-memory indexes may lack a record that is in the store (a
    /// remember dropped between its append and its finish): they are never
    /// written to a snapshot; the next load from the store clears it.
    inexact: AtomicBool,
}

impl Space {
    fn new(
        id: SpaceId,
        record: SpaceRecord,
        state: Option<Arc<Resident>>,
        default_hot: usize,
    ) -> Space {
        let hot = record.hot_capacity.map_or(default_hot, |c| c as usize);
        Space {
            id,
            record,
            state: RwLock::new(state),
            loading: Mutex::new(()),
            consolidating: Mutex::new(()),
            alive: RwLock::new(true),
            hot: Mutex::new(crate::hot::HotCache::new(hot)),
            tiering: Mutex::new(()),
            damaged: Mutex::new(None),
            figures: Mutex::new(None),
            oversized: AtomicBool::new(false),
            inexact: AtomicBool::new(false),
        }
    }
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// The guard if `l` can be read-locked at once (a poisoned lock is taken
/// as it is, as [`read`] does).
fn try_read<T>(l: &RwLock<T>) -> Option<RwLockReadGuard<'_, T>> {
    match l.try_read() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(PoisonError::into_inner(p)),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// The guard if `l` can be write-locked at once.
fn try_write<T>(l: &RwLock<T>) -> Option<RwLockWriteGuard<'_, T>> {
    match l.try_write() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(PoisonError::into_inner(p)),
        Err(TryLockError::WouldBlock) => None,
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn id_string(id: &EpisodeId) -> String {
    ulid::Ulid::from_bytes(*id).to_string()
}

fn parse_id(s: &str) -> Result<EpisodeId, GraphError> {
    ulid::Ulid::from_string(s)
        .map(|u| u.to_bytes())
        .map_err(|_| GraphError::InvalidId(s.to_owned()))
}

/// Checks a space name against `[a-z0-9][a-z0-9_-]{0,62}`.
pub fn valid_space_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// The memory graph of one node: every space, on one durable engine.
#[derive(Debug)]
pub struct Graph {
    engine: Engine,
    config: GraphConfig,
    /// Index snapshots (`<data dir>/indexes/`).
    index_dir: PathBuf,
    gate: WriteGate,
    /// Spaces loaded from an index snapshot, and snapshots refused.
    snapshots_used: AtomicU64,
    snapshots_refused: AtomicU64,
    spaces: RwLock<HashMap<String, Arc<Space>>>,
    next_space_id: std::sync::Mutex<SpaceId>,
    access: crate::access::AccessBuffer,
    flushing: Mutex<()>,
    /// `engram_background_failures_total` (see [`crate::background`]).
    failures: Failures,
    /// Serialises creating and deleting spaces (the `spaces` lock is never
    /// held across their WAL fsync).
    ddl: Mutex<()>,
    /// Spaces whose record could not be decoded, name included (logged at
    /// open; their data stays in the store).
    unreadable: Vec<spaces::DamagedSpace>,
    /// Logical clock of the uses of spaces (least recently used first).
    clock: Arc<AtomicU64>,
    /// Index memory metrics (see the `residency` module).
    residency: residency::Metrics,
    /// Who may originate writes (cluster mode; see the `replicated` module).
    authority: std::sync::OnceLock<Arc<dyn WriteAuthority>>,
}

impl Graph {
    /// Opens the graph on `data_dir`: recovers the engine, loads every
    /// space's indexes and adjacency from the warm store, and creates
    /// `default` and the configured bootstrap spaces if missing.
    pub fn open(
        data_dir: &Path,
        config: GraphConfig,
        options: OpenOptions,
    ) -> Result<(Graph, RecoveryReport), GraphError> {
        config.validate()?;
        let registry = options.registry.clone();
        let (engine, report) = Engine::open(data_dir, &config.engine, options)?;
        let failures = Failures::new(registry.as_ref()).map_err(EngineError::Metrics)?;
        let budget = config.index_budget_mb.saturating_mul(1024 * 1024);
        let residency =
            residency::Metrics::new(registry.as_ref(), budget).map_err(EngineError::Metrics)?;
        let store = engine.store();
        let mut max_id = 0;
        // Copies whose install a crash interrupted are removed before any
        // space is read: none of them was ever served.
        for space in store.abandoned_installs()? {
            tracing::warn!(
                space,
                "removing a copy of a space whose install did not complete"
            );
            store.install_abort(space)?;
            max_id = max_id.max(space);
        }
        for (space, _) in store.applied_seqs()? {
            max_id = max_id.max(space);
        }
        let mut spaces: HashMap<String, Arc<Space>> = HashMap::new();
        let mut unreadable = Vec::new();
        for (id, bytes) in store.spaces()? {
            max_id = max_id.max(id);
            // A damaged record makes that space unavailable, not the node.
            let taken = |name: &str| spaces.contains_key(name);
            match spaces::open_space(id, &bytes, config.hot_capacity, taken) {
                Ok(space) => {
                    spaces.insert(space.record.name.clone(), Arc::new(space));
                }
                Err(damaged) => unreadable.push(damaged),
            }
        }
        let graph = Graph {
            engine,
            index_dir: data_dir.join("indexes"),
            gate: WriteGate::default(),
            snapshots_used: AtomicU64::new(0),
            snapshots_refused: AtomicU64::new(0),
            spaces: RwLock::new(spaces),
            next_space_id: std::sync::Mutex::new(max_id + 1),
            access: crate::access::AccessBuffer::new(config.access_buffer),
            flushing: Mutex::new(()),
            failures,
            ddl: Mutex::new(()),
            unreadable,
            clock: Arc::new(AtomicU64::new(0)),
            residency,
            authority: std::sync::OnceLock::new(),
            config,
        };
        // In a cluster the metadata group creates them (on R nodes at once).
        let mut wanted = Vec::new();
        if graph.config.create_default_spaces {
            wanted.push(DEFAULT_SPACE.to_owned());
            wanted.extend(graph.config.bootstrap_spaces.iter().cloned());
        }
        for name in wanted {
            if !read(&graph.spaces).contains_key(&name) {
                if !graph.unreadable.is_empty() {
                    tracing::warn!(space = %name, "creating a missing space while some space records are unreadable: if one of them was this space, its old data stays in the store under that id");
                }
                graph.create_space(&name, None)?;
            }
        }
        Ok((graph, report))
    }

    /// The storage engine underneath (status, checkpoints).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Submits a record for a space that still exists: deleting the space
    /// waits for it, and a record for a deleted space is refused, so nothing
    /// is ever written under a dropped space's id after its range delete.
    fn submit(
        &self,
        space: &Space,
        wal_kind: u8,
        mutations: Vec<Mutation>,
    ) -> Result<crate::Committed, GraphError> {
        self.admit(space)?;
        let alive = read(&space.alive);
        if !*alive {
            return Err(GraphError::SpaceNotFound(space.record.name.clone()));
        }
        Ok(self.engine.submit(space.id, wal_kind, mutations)?)
    }

    /// Logs and counts a background pass's failure on one space; the pass
    /// goes on with the next space.
    fn background_failed(&self, task: Task, space: &Space, e: &GraphError) {
        tracing::warn!(
            space = %space.record.name,
            task = ?task,
            error = %e,
            "background work failed for this space; continuing with the other spaces"
        );
        self.failures.count(task);
    }

    /// The configuration the graph was opened with.
    pub fn config(&self) -> &GraphConfig {
        &self.config
    }

    /// Tag sets a space holds in memory (tests proving that sets no memory
    /// uses are removed).
    #[doc(hidden)]
    pub fn tag_sets(&self, space_name: &str) -> Result<usize, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let sets = read(st).tagsets.len();
        Ok(sets)
    }

    /// `true` if any in-memory structure of the space still mentions `id`
    /// (used by tests proving that forget leaves no trace).
    pub fn mentions(&self, space_name: &str, id: &str) -> Result<bool, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let eid = parse_id(id)?;
        let s = read(st);
        Ok(s.episodes.contains_key(&eid)
            || !s.lexical.all_postings(|x| s.episodes.is_live(x))
            || s.ann.as_ref().is_some_and(|a| a.contains(&eid))
            || !s.edges.all_live(|x| s.episodes.is_live(x))
            || s.sessions.values().any(|l| *l == eid)
            || lock(&space.hot).contains(&eid))
    }

    /// Numeric id of a space (for tests that inspect the store).
    pub fn space_id(&self, name: &str) -> Result<SpaceId, GraphError> {
        Ok(self.space(name)?.id)
    }
}
