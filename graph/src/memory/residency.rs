//! Which spaces' indexes are in memory: loading a space on use, unloading
//! the least recently used ones so that the estimated size of every loaded
//! space's indexes stays within `index_budget_mb` (invariant 9), and the
//! figures of a space that is not in memory.
//!
//! Contracts:
//! - A loaded space's state is one [`Resident`] in the space's slot. Every
//!   operation that uses it holds a clone of its `Arc` ([`Loaded`]) from the
//!   moment it gets it until it is done with it, writes included: a
//!   [`PendingRemember`] holds it from `remember_begin` across its group
//!   commit to `remember_finish`. An unload takes the state out of the slot
//!   only when the slot's `Arc` is the only one ([`Arc::get_mut`], under the
//!   slot's write lock, so no clone can be made meanwhile): no operation
//!   ever sees its state disappear or change under it, and a request that
//!   comes after the unload loads the space again.
//! - No write is lost. Every write to a space's store goes through an
//!   operation holding its state (or through its load, under `loading`), so
//!   a state nobody holds has no write in flight: its applied sequence is
//!   the last one appended ([`Engine::next_seq`]), and the snapshot written
//!   from it is stamped with that sequence. While the unload writes it, it
//!   holds the space's `loading` lock, so a request arriving meanwhile waits
//!   and then loads that snapshot (which `snapshot::take` uses only if the
//!   store is still at that sequence; otherwise the space is rebuilt from
//!   the store, the source of truth). The space's `alive` lock is held too:
//!   a deletion waits, then removes the snapshot and the figures. Nothing is
//!   unloaded after a storage engine failure (the indexes may then disagree
//!   with the store although the sequences match), while the engine is
//!   degraded, or once writes are sealed. A space holding a record applied
//!   after its writer was told the write failed
//!   ([`Engine::spaces_applied_after_error`]) is unloaded without a
//!   snapshot or figures: its next load rebuilds it from the store.
//! - Access statistics are never stranded: an unload step first writes the
//!   pending ones, and skips every space used since that flush began (a
//!   request's use is stamped on a logical clock when it gets the state and
//!   again when it lets it go, after recording its accesses).
//! - Least recently used first: only requests count as uses, not the
//!   background passes, the listing or the unload step. The most recently
//!   used space stays loaded even when it alone exceeds the budget (logged
//!   once). Loads are never refused: a burst of requests to many spaces can
//!   exceed the budget until the next step (every second).
//! - A space's figures (memories, cold, edges, terms) are known without
//!   loading it: from its state when it is loaded; otherwise from the
//!   figures recorded when it was unloaded or at the last clean shutdown
//!   (kept in the store's `meta` family, stamped with the applied sequence
//!   they reflect), or, when those are missing or stale (after a crash),
//!   counted from its keys in the store and recorded. What only memory
//!   knows (hot records, unlinked vectors, vector tombstones) reads 0 for a
//!   space that is not in memory.
//! - The estimate of a space's indexes is a per-structure formula (the
//!   constants below) over figures the indexes keep anyway: it is
//!   approximate (allocator slack and hash-table load vary) but computed in
//!   constant time, at load and at every step.

use prometheus::{IntCounter, IntGauge, Registry};
use serde::{Deserialize, Serialize};

use super::*;

// Estimated bytes per structure of a space's indexes (64-bit, typical
// allocator and hash-table slack included).

/// Per slot of the memory table: id (16), metadata (40), document length
/// (4), two adjacency list headers (32), and vector growth slack.
const SLOT_BYTES: u64 = 120;
/// Per memory: its entry in the id → slot map.
const LIVE_BYTES: u64 = 40;
/// Per distinct term: its string, two posting vectors (most terms are rare:
/// their small allocations dominate), the map entry.
const TERM_BYTES: u64 = 160;
/// Per posting (slot and frequency: 5 bytes, vector growth slack).
const POSTING_BYTES: u64 = 8;
/// Per edge: its outgoing (12) and incoming (8) entries.
const EDGE_BYTES: u64 = 20;
/// Per vector, besides 5 bytes per dimension (f32 and int8 code) and 8 per
/// `m` (level-0 links): key, scale, flags, map entry, link list headers.
const VECTOR_BYTES: u64 = 128;
/// Per session (name, last episode) and per episode being written.
const SESSION_BYTES: u64 = 88;
/// Per distinct tag set (interned twice, with its strings).
const TAG_SET_BYTES: u64 = 160;
/// Per record cached in the hot tier (a short memory's decoded record;
/// longer contents are not measured).
const HOT_RECORD_BYTES: u64 = 512;
/// Per loaded space: the empty structures.
const SPACE_BYTES: u64 = 4096;

/// Who uses a space's state: only requests count for least-recently-used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Use {
    /// A client's request (or a write it started).
    Request,
    /// A background pass (never loads a space it finds unloaded) or the
    /// warm-up: does not count as a use.
    Background,
}

/// A loaded space's in-memory state (see the module's contracts).
#[derive(Debug)]
pub(super) struct Resident {
    pub(super) state: RwLock<SpaceState>,
    /// Value of the graph's use clock at the last request that used it.
    used: AtomicU64,
    /// The graph's use clock (a logical clock: one tick per use).
    clock: Arc<AtomicU64>,
    /// Estimated bytes of its indexes, as last computed.
    bytes: AtomicU64,
}

impl Resident {
    pub(super) fn new(state: SpaceState, clock: &Arc<AtomicU64>, bytes: u64) -> Resident {
        let r = Resident {
            state: RwLock::new(state),
            used: AtomicU64::new(0),
            clock: Arc::clone(clock),
            bytes: AtomicU64::new(bytes),
        };
        r.touch();
        r
    }

    /// Stamps a use now.
    fn touch(&self) {
        let now = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.used.fetch_max(now, Ordering::SeqCst);
    }
}

/// A space's state held by one operation: it stays the space's state (it
/// cannot be unloaded) until this is dropped. A request's use is stamped
/// when it is taken and when it is dropped.
pub(super) struct Loaded {
    resident: Arc<Resident>,
    by: Use,
}

impl Loaded {
    fn new(resident: Arc<Resident>, by: Use) -> Loaded {
        if by == Use::Request {
            resident.touch();
        }
        Loaded { resident, by }
    }

    /// Estimated bytes of the space's indexes, as last computed.
    pub(super) fn bytes(&self) -> u64 {
        self.resident.bytes.load(Ordering::Relaxed)
    }
}

impl std::ops::Deref for Loaded {
    type Target = RwLock<SpaceState>;

    fn deref(&self) -> &RwLock<SpaceState> {
        &self.resident.state
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if self.by == Use::Request {
            self.resident.touch();
        }
    }
}

/// What is known of a space without its indexes (see the module's
/// contracts); stored postcard-encoded under the space's `meta` key `0x05`.
/// Field order is part of the on-disk format: append new fields only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Figures {
    /// The space's applied sequence they reflect.
    seq: u64,
    memories: u64,
    cold: u64,
    edges: u64,
    terms: u64,
}

impl Figures {
    fn of(state: &SpaceState, seq: u64) -> Figures {
        Figures {
            seq,
            memories: state.episodes.len() as u64,
            cold: state.cold as u64,
            edges: state.edge_count() as u64,
            terms: state.lexical.vocabulary() as u64,
        }
    }

    fn stats(&self, space: &Space) -> SpaceStats {
        let hot = lock(&space.hot);
        SpaceStats {
            name: space.record.name.clone(),
            memories: self.memories as usize,
            embedding_dim: space.record.embedding_dim,
            edges: self.edges as usize,
            terms: self.terms as usize,
            hot: hot.len(),
            hot_capacity: hot.capacity(),
            cold: self.cold as usize,
            unlinked_vectors: 0,
            vector_tombstones: 0,
        }
    }
}

/// `engram_index_bytes`, `engram_index_budget_bytes`,
/// `engram_space_loads_total` and `engram_space_unloads_total`.
#[derive(Debug, Clone)]
pub(super) struct Metrics {
    bytes: IntGauge,
    loads: IntCounter,
    unloads: IntCounter,
}

impl Metrics {
    /// The metrics, registered in `registry` when there is one.
    pub(super) fn new(
        registry: Option<&Registry>,
        budget_bytes: u64,
    ) -> Result<Metrics, prometheus::Error> {
        let bytes = IntGauge::new(
            "engram_index_bytes",
            "Estimated bytes of the in-memory indexes of every loaded space (memory.index_budget_mb \
             bounds it: idle spaces are unloaded, least recently used first)",
        )?;
        let budget = IntGauge::new(
            "engram_index_budget_bytes",
            "The index memory budget (memory.index_budget_mb) in bytes; 0: unlimited",
        )?;
        budget.set(gauge(budget_bytes));
        let loads = IntCounter::new(
            "engram_space_loads_total",
            "Spaces whose indexes were loaded into memory (first use, or use after an unload)",
        )?;
        let unloads = IntCounter::new(
            "engram_space_unloads_total",
            "Idle spaces whose indexes were written to their snapshot and dropped from memory \
             to stay within memory.index_budget_mb",
        )?;
        if let Some(r) = registry {
            r.register(Box::new(bytes.clone()))?;
            r.register(Box::new(budget.clone()))?;
            r.register(Box::new(loads.clone()))?;
            r.register(Box::new(unloads.clone()))?;
        }
        Ok(Metrics {
            bytes,
            loads,
            unloads,
        })
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Space {
    /// The space's state if it is loaded (not a use: see [`Loaded`]).
    pub(super) fn resident(&self) -> Option<Arc<Resident>> {
        read(&self.state).clone()
    }

    pub(super) fn is_loaded(&self) -> bool {
        read(&self.state).is_some()
    }
}

impl SpaceState {
    /// Estimated bytes of these indexes with `hot` records cached (see the
    /// constants): constant time.
    fn index_bytes(&self, dim: Option<u32>, m: usize, hot: usize) -> u64 {
        let n = |x: usize| x as u64;
        let vectors = self.ann.as_ref().map_or(0, |a| a.len() + a.tombstones());
        let per_vector = u64::from(dim.unwrap_or(0)) * 5 + 8 * n(m) + VECTOR_BYTES;
        SPACE_BYTES
            + u64::from(self.episodes.slots()) * SLOT_BYTES
            + n(self.episodes.len()) * LIVE_BYTES
            + n(self.lexical.vocabulary()) * TERM_BYTES
            + n(self.postings) * POSTING_BYTES
            + n(self.edges.len()) * EDGE_BYTES
            + n(vectors) * per_vector
            + n(self.sessions.len() + self.unfinished.len()) * SESSION_BYTES
            + n(self.tagsets.len()) * TAG_SET_BYTES
            + n(hot) * HOT_RECORD_BYTES
    }
}

impl Graph {
    /// The space's state for a request, loading it first (from its index
    /// snapshot, or else from the warm store) when it is not in memory. A
    /// space whose load failed is refused at once with
    /// [`GraphError::SpaceUnavailable`] (see the `spaces` module).
    pub(super) fn state(&self, space: &Space) -> Result<Loaded, GraphError> {
        self.acquire(space, Use::Request)
    }

    /// The space's state for a request when it is in memory and its slot
    /// is free at once (`None`: it would have to be loaded, or an unload
    /// holds the slot; either blocks).
    pub(super) fn state_if_loaded(&self, space: &Space) -> Option<Loaded> {
        let resident = super::try_read(&space.state)?.clone()?;
        Some(Loaded::new(resident, Use::Request))
    }

    /// The space's state for a request (loaded when needed), or for a
    /// background pass only when it is in memory (`None` otherwise: passes
    /// never load a space).
    pub(super) fn state_as(&self, space: &Space, by: Use) -> Result<Option<Loaded>, GraphError> {
        match by {
            Use::Request => self.acquire(space, by).map(Some),
            Use::Background => Ok(space.resident().map(|r| Loaded::new(r, by))),
        }
    }

    /// The space's state, loaded first when it is not in memory.
    pub(super) fn acquire(&self, space: &Space, by: Use) -> Result<Loaded, GraphError> {
        if let Some(r) = space.resident() {
            return Ok(Loaded::new(r, by));
        }
        // Neither waits behind the loading lock nor repeats a failed load.
        spaces::refuse_damaged(space)?;
        let _loading = lock(&space.loading);
        if let Some(r) = space.resident() {
            return Ok(Loaded::new(r, by));
        }
        spaces::refuse_damaged(space)?; // the load this one waited for failed
        let state = self
            .load_state(space)
            .map_err(|e| spaces::mark_damaged(space, e))?;
        spaces::clear_damage(space);
        let hot = lock(&space.hot).len();
        let bytes = state.index_bytes(space.record.embedding_dim, self.config.ann.m, hot);
        let resident = Arc::new(Resident::new(state, &self.clock, bytes));
        *write(&space.state) = Some(Arc::clone(&resident));
        self.residency.loads.inc();
        Ok(Loaded::new(resident, by))
    }

    /// The index memory budget in bytes (`index_budget_mb`; 0: unlimited).
    /// A pass that finds the loaded spaces over it unloads idle ones until
    /// they are at most 90 % of it.
    pub fn index_budget_bytes(&self) -> u64 {
        self.config.index_budget_mb.saturating_mul(1024 * 1024)
    }

    /// Estimated bytes of the indexes of every loaded space, as last
    /// computed (at each load and each [`Graph::unload_idle_spaces`]).
    pub fn index_bytes(&self) -> u64 {
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        all.iter()
            .filter_map(|s| s.resident())
            .map(|r| r.bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// `true` when the space's indexes are in memory. Cheap: no load.
    pub fn space_loaded(&self, name: &str) -> Result<bool, GraphError> {
        Ok(self.space(name)?.is_loaded())
    }

    /// Estimated bytes of a loaded space's indexes, computed again now
    /// (unless a writer holds its lock: then as last computed).
    fn estimate(&self, space: &Space, r: &Resident) -> u64 {
        let hot = lock(&space.hot).len();
        match r.state.try_read() {
            Ok(st) => {
                let b = st.index_bytes(space.record.embedding_dim, self.config.ann.m, hot);
                r.bytes.store(b, Ordering::Relaxed);
                b
            }
            Err(_) => r.bytes.load(Ordering::Relaxed),
        }
    }

    /// One step of the index memory budget (the background task runs it
    /// every second): estimates every loaded space and, when the total
    /// exceeds `index_budget_mb`, unloads the least recently used idle
    /// spaces (their snapshot written, see the `residency` module) until
    /// it is at most 90 % of the budget; the
    /// most recently used space always stays. Returns how many were
    /// unloaded. Failures are logged; the spaces concerned stay loaded.
    pub fn unload_idle_spaces(&self) -> usize {
        let budget = self.index_budget_bytes();
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        let mut loaded: Vec<(u64, u64, Arc<Space>)> = Vec::new();
        let mut total = 0u64;
        for space in all {
            let Some(r) = space.resident() else {
                continue;
            };
            let bytes = self.estimate(&space, &r);
            let used = r.used.load(Ordering::SeqCst);
            drop(r);
            total = total.saturating_add(bytes);
            loaded.push((used, bytes, space));
        }
        self.residency.bytes.set(gauge(total));
        if budget == 0 || total <= budget || loaded.len() < 2 {
            self.warn_if_oversized(&loaded, total, budget);
            return 0;
        }
        if self.engine.failure().is_some() {
            return 0; // nothing is unloaded after a failure (see above)
        }
        let since = match self.flush_before_unload() {
            Ok(since) => since,
            Err(GraphError::ShuttingDown) => return 0,
            Err(e) => {
                tracing::warn!(error = %e, "writing access statistics before unloading spaces failed; no space unloaded");
                return 0;
            }
        };
        loaded.sort_by_key(|(used, _, _)| *used);
        let mut unloaded = 0;
        // Down to the low watermark: the spaces loaded before the next pass
        // and the estimate's error (a few per cent) stay within the budget.
        let target = low_watermark(budget);
        // The most recently used one (last) stays.
        let candidates = loaded.len() - 1;
        for (_, bytes, space) in &loaded[..candidates] {
            if total <= target {
                break;
            }
            match self.unload(space, since) {
                Ok(true) => {
                    total = total.saturating_sub(*bytes);
                    unloaded += 1;
                }
                Ok(false) => {} // in use, used since, or deleted
                Err(GraphError::ShuttingDown) => break,
                Err(e) => tracing::warn!(
                    space = %space.record.name,
                    error = %e,
                    "unloading the space failed; it stays in memory"
                ),
            }
        }
        self.residency.bytes.set(gauge(total));
        if unloaded > 0 {
            tracing::info!(
                unloaded,
                index_bytes = total,
                budget_bytes = budget,
                "idle spaces unloaded to stay within memory.index_budget_mb; they load again on use"
            );
        }
        if total > budget {
            let left: Vec<(u64, u64, Arc<Space>)> = loaded
                .into_iter()
                .filter(|(_, _, s)| s.is_loaded())
                .collect();
            self.warn_if_oversized(&left, total, budget);
        }
        unloaded
    }

    /// Logs once per space that it alone exceeds the budget, when it is the
    /// only space left in memory and still over it.
    fn warn_if_oversized(&self, loaded: &[(u64, u64, Arc<Space>)], total: u64, budget: u64) {
        if budget == 0 || total <= budget {
            return;
        }
        if let [(_, bytes, space)] = loaded {
            if !space.oversized.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    space = %space.record.name,
                    estimated_bytes = *bytes,
                    budget_bytes = budget,
                    "this space's indexes alone exceed memory.index_budget_mb: it stays in memory while it is the most recently used; raise the budget"
                );
            }
        }
    }

    /// Unloads one space now if nothing is using it (see
    /// [`Graph::unload_idle_spaces`], which does this for the least
    /// recently used spaces when the budget is exceeded): its indexes are
    /// written to its snapshot and dropped from memory with its hot records,
    /// and its next use loads them back. `false` when it was not loaded or
    /// is in use.
    pub fn unload_space(&self, name: &str) -> Result<bool, GraphError> {
        let space = self.space(name)?;
        if !space.is_loaded() {
            return Ok(false);
        }
        let since = self.flush_before_unload()?;
        self.unload(&space, since)
    }

    /// Writes the access statistics recorded so far, so that none is left
    /// pending for a space that leaves memory; returns the use clock's value
    /// from which a use keeps a space loaded in this step.
    fn flush_before_unload(&self) -> Result<u64, GraphError> {
        let since = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        self.flush_access()?;
        Ok(since)
    }

    /// Unloads `space` if it was not used from `since` on and nothing holds
    /// its state (see the module's contracts); `true` when it did.
    fn unload(&self, space: &Space, since: u64) -> Result<bool, GraphError> {
        let _writing = self.gate.enter()?;
        // A request arriving meanwhile waits here, then loads the snapshot.
        let _loading = lock(&space.loading);
        // A deletion waits; a deleted space writes no snapshot. Nothing is
        // unloaded while storage fails or is degraded (its reload could fail
        // for the same cause).
        let alive = read(&space.alive);
        if !*alive || self.engine.failure().is_some() || self.engine.degraded().is_some() {
            return Ok(false);
        }
        let store = self.engine.store();
        let (resident, seq) = {
            let mut slot = write(&space.state);
            let Some(held) = slot.as_mut() else {
                return Ok(false);
            };
            // The only holder: nobody uses it, and nobody can take it while
            // the slot is locked.
            let Some(unique) = Arc::get_mut(held) else {
                return Ok(false);
            };
            if *unique.used.get_mut() >= since {
                return Ok(false);
            }
            let seq = store.applied_seq(space.id)?;
            if seq + 1 != self.engine.next_seq(space.id) {
                return Ok(false); // a record not applied yet
            }
            match slot.take() {
                Some(r) => (r, seq),
                None => return Ok(false),
            }
        };
        let started = Instant::now();
        let bytes = resident.bytes.load(Ordering::Relaxed);
        // A record applied after its writer was told it failed may be
        // missing from these indexes: no snapshot, and no figures from them;
        // the next load rebuilds the space from the store (which repairs it).
        let late = self.engine.spaces_applied_after_error().contains(&space.id)
            || space.inexact.load(Ordering::SeqCst);
        let figures = if late {
            let _ = snapshot::remove(&self.index_dir, space.id);
            None
        } else {
            let state = read(&resident.state);
            let written = snapshot::write(&self.index_dir, space.id, seq, |w| state.write_to(w));
            if let Err(e) = written {
                tracing::warn!(space = %space.record.name, error = %e, "writing the index snapshot of an unloaded space failed; its next use rebuilds its indexes from the store");
                let _ = snapshot::remove(&self.index_dir, space.id);
            }
            Some(Figures::of(&state, seq))
        };
        drop(resident);
        if let Some(f) = &figures {
            self.record_figures(space, f);
        }
        // `None`: counted from the store when the space is listed.
        *lock(&space.figures) = figures;
        {
            // The hot tier's records leave memory with the indexes.
            let mut hot = lock(&space.hot);
            let capacity = hot.capacity();
            *hot = crate::hot::HotCache::new(capacity);
        }
        drop(alive);
        self.residency.unloads.inc();
        tracing::debug!(
            space = %space.record.name,
            estimated_bytes = bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "space unloaded"
        );
        Ok(true)
    }

    /// Statistics of a space: from its indexes when they are in memory,
    /// otherwise from its figures (see the module's contracts); never loads
    /// it. A damaged space is refused with [`GraphError::SpaceUnavailable`].
    pub(super) fn stats_of(&self, space: &Space) -> Result<SpaceStats, GraphError> {
        if let Some(r) = space.resident() {
            return Ok(stats(space, &r.state));
        }
        spaces::refuse_damaged(space)?;
        Ok(self.unloaded_figures(space)?.stats(space))
    }

    /// Figures of a space that is not in memory: those kept since it was
    /// unloaded, or recorded in the store, when they reflect its applied
    /// sequence; otherwise counted from the store (and recorded).
    fn unloaded_figures(&self, space: &Space) -> Result<Figures, GraphError> {
        let store = self.engine.store();
        let seq = store.applied_seq(space.id)?;
        let kept = *lock(&space.figures);
        if let Some(f) = kept.filter(|f| f.seq == seq) {
            return Ok(f);
        }
        let stored = store
            .space_figures(space.id)?
            .and_then(|bytes| record::decode::<Figures>(&bytes, "space figures").ok());
        let figures = match stored.filter(|f| f.seq == seq) {
            Some(f) => f,
            None => {
                let f = self.count_figures(space, seq)?;
                let alive = read(&space.alive);
                if *alive {
                    self.record_figures(space, &f);
                }
                f
            }
        };
        *lock(&space.figures) = Some(figures);
        Ok(figures)
    }

    /// Counts a space's figures from its keys in the store, for `seq` (read
    /// before counting: a write landing meanwhile makes them stale, never
    /// wrongly current). Memories whose keys a crash left behind are
    /// counted too until the space loads and removes them.
    fn count_figures(&self, space: &Space, seq: u64) -> Result<Figures, GraphError> {
        let store = self.engine.store();
        let count = |cf: Cf| -> Result<u64, GraphError> {
            let mut n = 0u64;
            for entry in store.scan_space(cf, space.id)? {
                entry?;
                n += 1;
            }
            Ok(n)
        };
        let warm = count(Cf::Episodes)?;
        let cold = count(Cf::Cold)?;
        let edges = count(Cf::Edges)?;
        // Posting keys are `space | term length | term | id`, sorted: a new
        // term starts wherever the part before the id changes.
        let mut terms = 0u64;
        let mut last: Option<Box<[u8]>> = None;
        for entry in store.scan_space(Cf::Terms, space.id)? {
            let (k, _) = entry?;
            let term = &k[..k.len().saturating_sub(16)];
            if last.as_deref() != Some(term) {
                terms += 1;
                last = Some(term.into());
            }
        }
        Ok(Figures {
            seq,
            memories: warm + cold,
            cold,
            edges,
            terms,
        })
    }

    /// Records a space's figures in the store (for listing it without
    /// loading it, after a restart too). Best effort: a failure is logged
    /// and the figures are counted again when needed. The caller holds the
    /// space's `alive` lock and has checked it.
    fn record_figures(&self, space: &Space, figures: &Figures) {
        let written = record::encode(figures).and_then(|bytes| {
            self.engine
                .store()
                .set_space_figures(space.id, &bytes)
                .map_err(GraphError::from)
        });
        if let Err(e) = written {
            tracing::warn!(space = %space.record.name, error = %e, "recording the space's figures failed; they are counted from the store when it is listed");
        }
    }

    /// Records the figures of a loaded space whose snapshot was just
    /// written at `seq` at shutdown ([`Graph::save_index_snapshots`]).
    pub(super) fn record_figures_at_shutdown(&self, space: &Space, state: &SpaceState, seq: u64) {
        let alive = read(&space.alive);
        if *alive {
            self.record_figures(space, &Figures::of(state, seq));
        }
    }

    /// Sets `engram_index_bytes` (after a warm-up).
    pub(super) fn set_index_bytes_gauge(&self, total: u64) {
        self.residency.bytes.set(gauge(total));
    }
}

/// What [`Graph::unload_idle_spaces`] unloads down to once over `budget`:
/// 90 % of it.
fn low_watermark(budget: u64) -> u64 {
    budget / 10 * 9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_round_trip_through_their_encoding() {
        let f = Figures {
            seq: 41,
            memories: 1000,
            cold: 7,
            edges: 12,
            terms: 300,
        };
        let bytes = record::encode(&f).expect("encode");
        let back: Figures = record::decode(&bytes, "space figures").expect("decode");
        assert_eq!(back, f);
        assert!(record::decode::<Figures>(&bytes[..2], "space figures").is_err());
    }

    #[test]
    fn the_estimate_grows_with_every_structure() {
        let empty = SpaceState::new(Some(8), HnswParams::default(), 10);
        let base = empty.index_bytes(Some(8), 16, 0);
        assert_eq!(base, SPACE_BYTES);
        assert_eq!(
            empty.index_bytes(Some(8), 16, 10),
            base + 10 * HOT_RECORD_BYTES
        );
        let mut st = SpaceState::new(Some(8), HnswParams::default(), 10);
        let slot = st.episodes.insert([1; 16], EpisodeMeta::default());
        st.lexical.add_document(slot, 2);
        st.lexical.add_posting("kite", slot, 1);
        st.postings += 1;
        if let Some(ann) = st.ann.as_mut() {
            ann.insert([1; 16], &[1.0; 8]);
        }
        let one = st.index_bytes(Some(8), 16, 0);
        assert_eq!(
            one - base,
            SLOT_BYTES + LIVE_BYTES + TERM_BYTES + POSTING_BYTES + 8 * 5 + 8 * 16 + VECTOR_BYTES
        );
    }
}
