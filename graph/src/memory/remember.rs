//! Remember: a new episode from request to acknowledgment.
//!
//! A remember validates the request, prepares the episode under the space's
//! lock (links, semantic neighbours, its session's temporal edge), appends
//! one WAL record, waits for the group commit, and then adds the episode to
//! the in-memory indexes. The WAL writer thread applies each group to the
//! store before it answers the group ([`crate::Engine::settled`]).
//!
//! Three entry points:
//! - [`Graph::remember`]: all of it on the calling thread (it may block).
//! - [`Graph::remember_begin`] → [`PendingRemember::group_commit`] →
//!   [`Graph::remember_finish`]: for async callers, the first and last step
//!   on a thread that may block, the wait for the fsync on none.
//! - [`Graph::remember_quick`] and [`Graph::remember_finish_quick`]: the
//!   same two steps, done without blocking when nothing would make them
//!   wait (every lock free at once, the space in memory, no search) and
//!   handed back otherwise ([`QuickBegin::Blocked`], [`QuickFinish::Blocked`]) for
//!   the blocking step. They let an async caller run a plain remember on a
//!   runtime worker with no thread hand-off but the WAL writer's.

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use engram_lsm::{EpisodeId, Mutation};

use super::residency::Loaded;
use super::{
    EpisodeMeta, Graph, GraphError, RememberRequest, Remembered, Space, SpaceState, Writing,
    id_string, invalid, kind, lock, now_ms, parse_id, read, try_read, try_write, write,
};
use crate::engine::EngineError;
use crate::record::{self, EdgeKind, EdgeRecord, EpisodeRecord};
use crate::text;
use crate::{Committed, Engine};

use super::DEFAULT_LINK_WEIGHT;

/// What a remember request turns into.
enum Draft {
    /// `dedupe` found this memory: nothing to write.
    Existing(Remembered),
    /// A new episode, its confidence and storage time.
    New(NewEpisode, f32, i64),
}

/// A new episode before it gets an id (remember, consolidation).
struct NewEpisode {
    record: EpisodeRecord,
    embedding: Option<Vec<f32>>,
    /// Edges from the new episode.
    edges_to: Vec<(EpisodeId, EdgeRecord)>,
    /// Edges to the new episode.
    edges_from: Vec<(EpisodeId, EdgeRecord)>,
}

/// A new episode between its WAL append and its index update.
struct PreparedEpisode {
    id: EpisodeId,
    record: EpisodeRecord,
    embedding: Option<Vec<f32>>,
    tf: std::collections::HashMap<String, u32>,
    len: u32,
    edges: Vec<(EpisodeId, EpisodeId, EdgeRecord)>,
}

/// What [`Graph::remember_begin`] did: found the duplicate `dedupe` asked
/// for, or appended a new memory that now waits for its group commit.
#[derive(Debug)]
pub enum Begun {
    /// Nothing was written: identical content exists (`dedupe`).
    Done(Remembered),
    /// Appended; await [`PendingRemember::group_commit`], then call
    /// [`Graph::remember_finish`] (or [`Graph::remember_finish_quick`]).
    Pending(Box<PendingRemember>),
}

/// What [`Graph::remember_quick`] did.
#[derive(Debug)]
pub enum QuickBegin {
    /// What [`Graph::remember_begin`] would have returned.
    Begun(Begun),
    /// Nothing was done: something would have made it wait (a lock held, a
    /// space to load, a dedupe or a vector search to run). The request is
    /// handed back for [`Graph::remember_begin`] on a thread that may block.
    Blocked(RememberRequest),
}

/// What [`Graph::remember_finish_quick`] did.
#[derive(Debug)]
pub enum QuickFinish {
    /// Finished (or failed), as [`Graph::remember_finish`] would have.
    Done(Result<Remembered, GraphError>),
    /// Something is left that may block (the space's lock is held, the
    /// record waits to be applied or WAL upkeep is due, edges to delete, a
    /// failed write to undo): finish with [`Graph::remember_finish`] on a
    /// thread that may block.
    Blocked(Box<PendingRemember>),
}

/// A remember appended to the WAL (see [`Graph::remember_begin`]).
pub struct PendingRemember {
    space: Arc<Space>,
    /// The space's state, held until finished: the space cannot be unloaded
    /// between the record's append and its index update.
    loaded: Loaded,
    /// Taken when the episode enters the indexes (or its write is undone).
    prepared: Option<PreparedEpisode>,
    appended: Option<crate::engine::Appended>,
    committed: Option<Result<Committed, GraphError>>,
    /// Edges to delete after the index update (an endpoint was forgotten
    /// while the record was written).
    dangling: Vec<Mutation>,
    /// The episode, once in the indexes.
    indexed: Option<EpisodeId>,
    confidence: f32,
    stored_at_ms: i64,
    occurred_at_ms: i64,
    /// Counts as a write in flight until finished (shutdown waits for it).
    _writing: Writing,
}

impl Drop for PendingRemember {
    fn drop(&mut self) {
        if self.prepared.is_some() {
            self.space.inexact.store(true, Ordering::SeqCst);
            tracing::warn!(space = %self.space.record.name, "a remember was abandoned between its WAL append and its index update: the space's indexes may lack it until they are rebuilt from the store (no index snapshot is written for it)");
        }
    }
}

impl std::fmt::Debug for PendingRemember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRemember")
            .field("space", &self.space.record.name)
            .field("committed", &self.committed.as_ref().map(|c| c.is_ok()))
            .finish_non_exhaustive()
    }
}

impl PendingRemember {
    /// A remember whose record was just appended; the answer's confidence
    /// and times are the prepared record's.
    fn new(
        space: Arc<Space>,
        loaded: Loaded,
        prepared: PreparedEpisode,
        appended: crate::engine::Appended,
        writing: Writing,
    ) -> Box<PendingRemember> {
        Box::new(PendingRemember {
            confidence: prepared.record.confidence,
            stored_at_ms: prepared.record.stored_at_ms,
            occurred_at_ms: prepared.record.occurred_at_ms,
            space,
            loaded,
            prepared: Some(prepared),
            appended: Some(appended),
            committed: None,
            dangling: Vec::new(),
            indexed: None,
            _writing: writing,
        })
    }

    /// Waits for the WAL's group commit (fsync) without holding a thread.
    pub async fn group_commit(&mut self) {
        if let Some(appended) = self.appended.take() {
            let r = Engine::group_commit(appended)
                .await
                .map_err(GraphError::from);
            self.committed = Some(r);
        }
    }

    /// The answer once the episode is in the indexes.
    fn remembered(&self, id: &EpisodeId, seq: u64) -> Remembered {
        Remembered::new(
            &self.space,
            id,
            seq,
            self.confidence,
            self.stored_at_ms,
            self.occurred_at_ms,
        )
    }
}

/// The space's state for one step of a remember: a lock to take as needed,
/// or a write guard taken up front (the quick path).
enum Access<'a> {
    Lock(&'a RwLock<SpaceState>),
    Held(&'a mut SpaceState),
}

impl Access<'_> {
    fn read<R>(&mut self, f: impl FnOnce(&SpaceState) -> R) -> R {
        match self {
            Access::Lock(l) => f(&read(l)),
            Access::Held(s) => f(s),
        }
    }

    fn write<R>(&mut self, f: impl FnOnce(&mut SpaceState) -> R) -> R {
        match self {
            Access::Lock(l) => f(&mut write(l)),
            Access::Held(s) => f(s),
        }
    }
}

impl Graph {
    /// Stores a memory durably (acknowledged after the WAL fsync and apply).
    pub fn remember(
        &self,
        space_name: &str,
        req: RememberRequest,
    ) -> Result<Remembered, GraphError> {
        let _writing = self.gate.enter()?;
        let space = self.space(space_name)?;
        self.admit(&space)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let (draft, confidence, stored_at_ms) =
            match self.remember_draft(&space, &mut Access::Lock(st), req)? {
                Draft::Existing(found) => return Ok(found),
                Draft::New(d, c, t) => (d, c, t),
            };
        let occurred_at_ms = draft.record.occurred_at_ms;
        let (id, committed) = self.store_episode(&space, st, draft, kind::REMEMBER)?;
        Ok(Remembered::new(
            &space,
            &id,
            committed.seq,
            confidence,
            stored_at_ms,
            occurred_at_ms,
        ))
    }

    /// The first of the three steps of a remember for callers that must
    /// not block an async runtime's threads (the API): validates, prepares
    /// the episode under the space's locks and appends its record to the
    /// WAL, all on a thread that may block. Await
    /// [`PendingRemember::group_commit`] on any thread, then finish with
    /// [`Graph::remember_finish`] on a thread that may block again (it
    /// adds the memory to the indexes), or try [`Graph::remember_finish_quick`]
    /// first. [`Graph::remember_quick`] is this step without blocking, when
    /// it can be done so.
    ///
    /// A pending remember must be finished: dropping it leaves the memory
    /// durable and in the store but missing from the in-memory indexes
    /// until they are rebuilt (the space is marked so). The API runs all
    /// three steps in a task of its own, which completes even if the client
    /// goes away.
    pub fn remember_begin(
        &self,
        space_name: &str,
        req: RememberRequest,
    ) -> Result<Begun, GraphError> {
        let writing = self.gate.enter()?;
        let space = self.space(space_name)?;
        self.admit(&space)?;
        let held = self.state(&space)?;
        let (draft, _, _) = match self.remember_draft(&space, &mut Access::Lock(&held), req)? {
            Draft::Existing(found) => return Ok(Begun::Done(found)),
            Draft::New(d, c, t) => (d, c, t),
        };
        let (prepared, mutations) = self.prepare_episode(&mut Access::Lock(&held), draft)?;
        let id = prepared.id;
        let appended = {
            // As in `submit`: a deleted space refuses the write, and a
            // delete in progress waits for the append (its own record then
            // follows this one in LSN order).
            let alive = read(&space.alive);
            if *alive {
                self.engine
                    .append(space.id, kind::REMEMBER, mutations)
                    .map_err(GraphError::from)
            } else {
                Err(GraphError::SpaceNotFound(space.record.name.clone()))
            }
        };
        match appended {
            Ok(appended) => Ok(Begun::Pending(PendingRemember::new(
                space, held, prepared, appended, writing,
            ))),
            Err(e) => {
                self.abandon_episode(&space, &held, &id);
                Err(e)
            }
        }
    }

    /// [`Graph::remember_begin`] without blocking, for a runtime worker: a
    /// plain remember (no dedupe, no vector search) into a space in memory
    /// whose locks are free at once is prepared and appended here, holding
    /// the space's write lock for the few microseconds it takes (the WAL
    /// append included: it only takes the log's queue lock). Anything else
    /// comes back untouched as [`QuickBegin::Blocked`].
    pub fn remember_quick(
        &self,
        space_name: &str,
        req: RememberRequest,
    ) -> Result<QuickBegin, GraphError> {
        let searches = req.dedupe || (req.embedding.is_some() && self.config.semantic_k > 0);
        if searches {
            return Ok(QuickBegin::Blocked(req));
        }
        let writing = self.gate.enter()?;
        let space = self.space(space_name)?;
        self.admit(&space)?;
        let Some(held) = self.state_if_loaded(&space) else {
            return Ok(QuickBegin::Blocked(req));
        };
        // `alive` before the space's state, as a space deletion takes them.
        let Some(alive) = try_read(&space.alive) else {
            return Ok(QuickBegin::Blocked(req));
        };
        if !*alive {
            return Err(GraphError::SpaceNotFound(space.record.name.clone()));
        }
        let st: &RwLock<SpaceState> = &held;
        let Some(mut state) = try_write(st) else {
            return Ok(QuickBegin::Blocked(req));
        };
        let mut access = Access::Held(&mut state);
        let (draft, _, _) = match self.remember_draft(&space, &mut access, req)? {
            Draft::Existing(found) => return Ok(QuickBegin::Begun(Begun::Done(found))),
            Draft::New(d, c, t) => (d, c, t),
        };
        let (prepared, mutations) = self.prepare_episode(&mut access, draft)?;
        let id = prepared.id;
        // Appended under the space's lock (the append only takes the log's
        // queue lock): no other writer can have added an edge waiting for
        // this episode, so a refused append is undone here without blocking.
        match self.engine.append(space.id, kind::REMEMBER, mutations) {
            Ok(appended) => {
                drop(state);
                drop(alive);
                Ok(QuickBegin::Begun(Begun::Pending(PendingRemember::new(
                    space, held, prepared, appended, writing,
                ))))
            }
            Err(e) => {
                state.unfinished.remove(&id);
                Err(e.into())
            }
        }
    }

    /// The last step of a remember begun with [`Graph::remember_begin`] or
    /// [`Graph::remember_quick`]: applies the record to the store if the
    /// WAL writer has not, and adds the memory to the indexes (or, when its
    /// group commit failed, undoes the preparation). Blocks on the space's
    /// locks and RocksDB: run it where blocking is allowed.
    pub fn remember_finish(&self, mut p: Box<PendingRemember>) -> Result<Remembered, GraphError> {
        let (id, seq) = match p.prepared.take() {
            Some(prepared) => {
                let committed = match p.committed.take() {
                    Some(Ok(c)) => self
                        .engine
                        .apply_durable(c.lsn)
                        .map(|()| c)
                        .map_err(GraphError::from),
                    Some(Err(e)) => Err(e),
                    None => Err(GraphError::Storage(EngineError::Failed(
                        "remember_finish before the group commit was awaited".into(),
                    ))),
                };
                let id = prepared.id;
                let c = match committed {
                    Ok(c) => c,
                    Err(e) => {
                        self.abandon_episode(&p.space, &p.loaded, &id);
                        return Err(e);
                    }
                };
                p.committed = Some(Ok(c));
                let dangling = {
                    let st: &RwLock<SpaceState> = &p.loaded;
                    let mut state = write(st);
                    self.finish_episode(&p.space, &mut state, prepared)
                };
                p.dangling = dangling;
                (id, c.seq)
            }
            // Indexed by `remember_finish_quick`; edges were left to delete.
            None => match (&p.committed, p.indexed) {
                (Some(Ok(c)), Some(id)) => (id, c.seq),
                _ => {
                    return Err(GraphError::Storage(EngineError::Failed(
                        "remember_finish called twice for one remember".into(),
                    )));
                }
            },
        };
        self.delete_dangling(&p.space, std::mem::take(&mut p.dangling));
        Ok(p.remembered(&id, seq))
    }

    /// [`Graph::remember_finish`] without blocking, for a runtime worker:
    /// when the group commit succeeded, the WAL writer applied the record
    /// and the space's write lock is free at once, the memory enters the
    /// indexes here. Anything else comes back as [`QuickFinish::Blocked`].
    pub fn remember_finish_quick(&self, mut p: Box<PendingRemember>) -> QuickFinish {
        let c = match &p.committed {
            Some(Ok(c)) if self.engine.settled(c.lsn) => *c,
            _ => return QuickFinish::Blocked(p),
        };
        let st: &RwLock<SpaceState> = &p.loaded;
        let Some(mut state) = try_write(st) else {
            return QuickFinish::Blocked(p);
        };
        let Some(prepared) = p.prepared.take() else {
            drop(state);
            return QuickFinish::Done(Err(GraphError::Storage(EngineError::Failed(
                "remember_finish_quick called twice for one remember".into(),
            ))));
        };
        let id = prepared.id;
        let dangling = self.finish_episode(&p.space, &mut state, prepared);
        drop(state);
        if dangling.is_empty() {
            return QuickFinish::Done(Ok(p.remembered(&id, c.seq)));
        }
        p.dangling = dangling;
        p.indexed = Some(id);
        QuickFinish::Blocked(p)
    }

    /// Validates a remember request and builds its episode, or finds the
    /// existing duplicate.
    fn remember_draft(
        &self,
        space: &Space,
        access: &mut Access<'_>,
        req: RememberRequest,
    ) -> Result<Draft, GraphError> {
        let metadata_json = self.validate(space, &req)?;
        if req.dedupe {
            // Never on the quick path, which holds the lock already.
            if let Access::Lock(st) = access {
                if let Some(found) = self.find_duplicate(space, st, &req, &metadata_json)? {
                    return Ok(Draft::Existing(found));
                }
            }
        }
        let confidence = req.confidence.unwrap_or(self.config.default_confidence);
        let stored_at_ms = now_ms();
        let edges_to = access.read(|state| self.link_edges(state, &req.links))?;
        let record = EpisodeRecord {
            content: req.content,
            confidence,
            tags: req.tags,
            metadata_json,
            session: req.session,
            occurred_at_ms: req.occurred_at_ms.unwrap_or(stored_at_ms),
            stored_at_ms,
            terms: 0,
            concept: false,
        };
        let draft = NewEpisode {
            record,
            embedding: req.embedding,
            edges_to,
            edges_from: Vec::new(),
        };
        Ok(Draft::New(draft, confidence, stored_at_ms))
    }

    /// The edges of a request's explicit links, each target checked.
    fn link_edges(
        &self,
        state: &SpaceState,
        links: &[super::LinkSpec],
    ) -> Result<Vec<(EpisodeId, EdgeRecord)>, GraphError> {
        let mut edges_to = Vec::with_capacity(links.len());
        for l in links {
            let target = parse_id(&l.target)?;
            if !state.episodes.contains_key(&target) {
                return Err(GraphError::MemoryNotFound(l.target.clone()));
            }
            // Checked here, not under the lock that adds the edge:
            // concurrent remembers can pass it by as many as are in
            // flight (forget works at any degree; the limit bounds it).
            let limit = self.config.limits.max_edges_per_memory;
            if state.degree(&target) >= limit {
                return Err(GraphError::TooManyEdges {
                    memory: l.target.clone(),
                    limit,
                });
            }
            let e = EdgeRecord {
                weight: l.weight.unwrap_or(DEFAULT_LINK_WEIGHT),
                kind: EdgeKind::Explicit,
            };
            edges_to.push((target, e));
        }
        Ok(edges_to)
    }

    /// Writes a new episode with its postings, embedding and edges as one WAL
    /// record, adding semantic edges (nearest neighbours above the threshold)
    /// and the temporal edge from its session's previous episode, then
    /// updates the in-memory indexes.
    fn store_episode(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        draft: NewEpisode,
        wal_kind: u8,
    ) -> Result<(EpisodeId, Committed), GraphError> {
        let (prepared, m) = self.prepare_episode(&mut Access::Lock(st), draft)?;
        let id = prepared.id;
        let committed = match self.submit(space, wal_kind, m) {
            Ok(c) => c,
            Err(e) => {
                self.abandon_episode(space, st, &id);
                return Err(e);
            }
        };
        let dangling = self.finish_episode(space, &mut write(st), prepared);
        self.delete_dangling(space, dangling);
        Ok((id, committed))
    }

    /// Undoes [`Graph::prepare_episode`]'s mark of an episode whose record
    /// was not written: the edges that waited for it (written by the next
    /// episode of its session) are deleted again.
    fn abandon_episode(&self, space: &Space, st: &RwLock<SpaceState>, id: &EpisodeId) {
        let Some(waiting) = write(st).unfinished.remove(id) else {
            return;
        };
        if waiting.is_empty() {
            return;
        }
        let m = waiting
            .into_iter()
            .map(|(from, to, _)| Mutation::DeleteEdge { from, to })
            .collect();
        if let Err(e) = self.submit(space, kind::FORGET, m) {
            tracing::warn!(error = %e, "could not delete edges to a memory whose write failed; they are removed at the next load");
        }
    }

    /// Deletes edges whose endpoint was forgotten while the episode that
    /// adds them was written (see [`Graph::finish_episode`]).
    fn delete_dangling(&self, space: &Space, dangling: Vec<Mutation>) {
        if dangling.is_empty() {
            return;
        }
        if let Err(e) = self.submit(space, kind::FORGET, dangling) {
            tracing::warn!(error = %e, "could not delete edges to a forgotten memory; they are removed at the next load");
        }
    }

    /// The WAL mutations of a new episode, and what [`Graph::finish_episode`]
    /// needs once they are durable.
    fn prepare_episode(
        &self,
        access: &mut Access<'_>,
        draft: NewEpisode,
    ) -> Result<(PreparedEpisode, Vec<Mutation>), GraphError> {
        let NewEpisode {
            mut record,
            embedding,
            mut edges_to,
            edges_from,
        } = draft;
        let id = ulid::Ulid::new().to_bytes();
        let (tf, len) = text::term_frequencies(&record.content);
        record.terms = len;
        if let (Some(e), true) = (&embedding, self.config.semantic_k > 0 && !record.concept) {
            let neighbours = access.read(|state| {
                // A neighbour at the edge limit is passed over for the next one.
                let limit = self.config.limits.max_edges_per_memory;
                let accept = |n: &EpisodeId| {
                    state.episodes.get(n).is_some_and(|m| !m.concept) && state.degree(n) < limit
                };
                self.vector_neighbours(state, e, self.config.semantic_k, accept)
            });
            for (n, sim) in neighbours {
                if sim >= self.config.semantic_threshold && !edges_to.iter().any(|x| x.0 == n) {
                    let e = EdgeRecord {
                        weight: sim.min(1.0),
                        kind: EdgeKind::Semantic,
                    };
                    edges_to.push((n, e));
                }
            }
        }
        let mut edges: Vec<(EpisodeId, EpisodeId, EdgeRecord)> = Vec::new();
        edges.extend(edges_to.into_iter().map(|(to, e)| (id, to, e)));
        edges.extend(edges_from.into_iter().map(|(from, e)| (from, id, e)));
        let mut m = episode_mutations(id, &record, &tf, embedding.as_deref(), edges.len() + 1)?;
        for (from, to, e) in &edges {
            m.push(Mutation::PutEdge {
                from: *from,
                to: *to,
                record: record::encode(e)?,
            });
        }
        let temporal = EdgeRecord {
            weight: self.config.temporal_weight,
            kind: EdgeKind::Temporal,
        };
        let temporal_bytes = record::encode(&temporal)?;
        // Last, with nothing that can fail after it: the session's previous
        // episode is read and replaced under the space's lock so concurrent
        // writers of one session form a chain, and this episode is marked
        // unfinished so that the next one's temporal edge waits for it if
        // that one finishes first ([`Graph::finish_episode`]). A failed
        // write undoes the mark ([`Graph::abandon_episode`]).
        let previous = record.session.as_ref().and_then(|s| {
            access.write(|state| {
                state.unfinished.insert(id, Vec::new());
                state.sessions.insert(s.clone(), id)
            })
        });
        if let Some(prev) = previous {
            edges.push((prev, id, temporal));
            m.push(Mutation::PutEdge {
                from: prev,
                to: id,
                record: temporal_bytes,
            });
        }
        let prepared = PreparedEpisode {
            id,
            record,
            embedding,
            tf,
            len,
            edges,
        };
        Ok((prepared, m))
    }

    /// Adds a durable new episode to the in-memory indexes (and its record
    /// to the hot cache) under the space's write lock, `state`. Returns the
    /// edges to delete again ([`Graph::delete_dangling`], after the lock is
    /// released).
    fn finish_episode(
        &self,
        space: &Space,
        state: &mut SpaceState,
        p: PreparedEpisode,
    ) -> Vec<Mutation> {
        let PreparedEpisode {
            id,
            record,
            embedding,
            tf,
            len,
            edges,
        } = p;

        let record = Arc::new(record);
        // Under the space's write lock, as forget removes it from the cache.
        lock(&space.hot).insert(id, Arc::clone(&record));
        if let Some(e) = embedding {
            if let Some(ann) = state.ann.as_mut() {
                ann.insert(id, &e);
            }
        }
        let tags = state.tagsets.intern(&record.tags);
        let slot = state.episodes.insert(
            id,
            EpisodeMeta {
                confidence: record.confidence,
                tags,
                occurred_at_ms: record.occurred_at_ms,
                stored_at_ms: record.stored_at_ms,
                last_access_ms: 0,
                access_count: 0,
                concept: record.concept,
                consolidated: false,
                cold: false,
            },
        );
        state.lexical.add_document(slot, len);
        state.postings += tf.len();
        for (term, f) in tf {
            state.lexical.add_posting(&term, slot, f);
        }
        // Edges to this episode that finished before it (the next episode
        // of its session, written concurrently) were waiting for it.
        let waiting = state.unfinished.remove(&id).unwrap_or_default();
        // An endpoint still being written (a session's previous episode)
        // gets the edge when it finishes. One forgotten while this record
        // was being written leaves a dangling edge in the store: it is
        // deleted again right away (and any that a crash leaves behind are
        // removed when the space loads).
        let mut dangling = Vec::new();
        for (from, to, e) in edges.into_iter().chain(waiting) {
            if state.add_edge(from, to, e) {
                continue;
            }
            let missing = if state.episodes.contains_key(&from) {
                to
            } else {
                from
            };
            match state.unfinished.get_mut(&missing) {
                Some(w) => w.push((from, to, e)),
                None => dangling.push(Mutation::DeleteEdge { from, to }),
            }
        }
        dangling
    }

    /// The memory a `dedupe` request repeats: same content, session, tags
    /// (as a set) and metadata, and the same time when the request gives
    /// one (see [`RememberRequest::dedupe`]).
    fn find_duplicate(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        req: &RememberRequest,
        metadata_json: &str,
    ) -> Result<Option<Remembered>, GraphError> {
        let candidates: Vec<(EpisodeId, EpisodeMeta)> = {
            let state = read(st);
            let (tf, len) = text::term_frequencies(&req.content);
            state
                .lexical
                .same_length_candidates(tf.keys().map(String::as_str), len)
                .into_iter()
                .map(|slot| *state.episodes.id(slot))
                .filter_map(|id| state.episodes.get(&id).map(|m| (id, m.clone())))
                .collect()
        };
        let tag_set = |t: &[String]| {
            t.iter()
                .cloned()
                .collect::<std::collections::BTreeSet<String>>()
        };
        let wanted_tags = tag_set(&req.tags);
        for (id, meta) in candidates {
            if meta.concept {
                continue;
            }
            let Some(rec) = self.read_record(space, &id)? else {
                continue;
            };
            let same = rec.content == req.content
                && rec.session == req.session
                && rec.metadata_json == metadata_json
                && tag_set(&rec.tags) == wanted_tags
                && req.occurred_at_ms.is_none_or(|t| t == rec.occurred_at_ms);
            if same {
                return Ok(Some(Remembered {
                    id: id_string(&id),
                    space: space.record.name.clone(),
                    sequence: 0,
                    confidence: meta.confidence,
                    stored_at_ms: meta.stored_at_ms,
                    occurred_at_ms: rec.occurred_at_ms,
                    deduplicated: true,
                }));
            }
        }
        Ok(None)
    }

    /// Checks every limit; returns the metadata as JSON text (serialised once).
    fn validate(&self, space: &Space, req: &RememberRequest) -> Result<String, GraphError> {
        let l = &self.config.limits;
        if req.content.trim().is_empty() {
            return Err(invalid("content", "must not be empty"));
        }
        if req.content.len() > l.max_content_bytes {
            return Err(invalid(
                "content",
                format!(
                    "{} bytes exceeds the limit of {}",
                    req.content.len(),
                    l.max_content_bytes
                ),
            ));
        }
        if let Some(c) = req.confidence {
            if !(0.0..=1.0).contains(&c) {
                return Err(invalid("confidence", format!("{c} is outside [0, 1]")));
            }
        }
        if req.tags.len() > l.max_tags {
            return Err(invalid(
                "tags",
                format!("{} tags exceed the limit of {}", req.tags.len(), l.max_tags),
            ));
        }
        if let Some(t) = req
            .tags
            .iter()
            .find(|t| t.is_empty() || t.len() > l.max_tag_bytes)
        {
            return Err(invalid(
                "tags",
                format!("tag {t:?} must be 1..={} bytes", l.max_tag_bytes),
            ));
        }
        let metadata_json =
            serde_json::to_string(&req.metadata).map_err(|e| invalid("metadata", e.to_string()))?;
        let meta_len = metadata_json.len();
        if meta_len > l.max_metadata_bytes {
            return Err(invalid(
                "metadata",
                format!(
                    "{meta_len} bytes exceeds the limit of {}",
                    l.max_metadata_bytes
                ),
            ));
        }
        self.check_embedding(space, req.embedding.as_deref())?;
        if let Some(session) = &req.session {
            if session.len() > l.max_session_bytes {
                return Err(invalid(
                    "session",
                    format!(
                        "{} bytes exceeds the limit of {} (limits.max_session_bytes)",
                        session.len(),
                        l.max_session_bytes
                    ),
                ));
            }
        }
        if req.links.len() > l.max_links {
            return Err(invalid(
                "links",
                format!(
                    "{} links exceed the limit of {} per request (limits.max_links); link the rest with POST /api/v1/memories/{{id}}/links",
                    req.links.len(),
                    l.max_links
                ),
            ));
        }
        if req.links.len() > l.max_edges_per_memory {
            return Err(invalid(
                "links",
                format!(
                    "{} links exceed the limit of {} edges per memory",
                    req.links.len(),
                    l.max_edges_per_memory
                ),
            ));
        }
        for link in &req.links {
            if let Some(w) = link.weight {
                if !(w > 0.0 && w <= 1.0) {
                    return Err(invalid("links", format!("weight {w} is outside (0, 1]")));
                }
            }
        }
        Ok(metadata_json)
    }
}

/// The mutations that store a new episode: its record, its postings and
/// its vector (edges are the caller's), with room for `extra` more.
pub(super) fn episode_mutations(
    id: EpisodeId,
    record: &EpisodeRecord,
    tf: &std::collections::HashMap<String, u32>,
    embedding: Option<&[f32]>,
    extra: usize,
) -> Result<Vec<Mutation>, GraphError> {
    let mut m = Vec::with_capacity(2 + tf.len() + extra);
    m.push(Mutation::PutEpisode {
        id,
        record: record::encode(record)?,
    });
    for (term, f) in tf {
        m.push(Mutation::PutPosting {
            term: term.clone(),
            id,
            value: f.to_be_bytes().to_vec(),
        });
    }
    if let Some(e) = embedding {
        m.push(Mutation::PutVector {
            id,
            vector: record::vector_bytes(e),
        });
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Cue, DEFAULT_SPACE};
    use crate::{GraphConfig, OpenOptions, Spread};

    fn open(dir: &std::path::Path) -> Graph {
        Graph::open(dir, GraphConfig::default(), OpenOptions::default())
            .expect("open graph")
            .0
    }

    fn text(content: &str) -> RememberRequest {
        RememberRequest {
            content: content.into(),
            ..RememberRequest::default()
        }
    }

    fn begun(q: QuickBegin) -> Box<PendingRemember> {
        match q {
            QuickBegin::Begun(Begun::Pending(p)) => p,
            other => panic!("expected a remember begun without blocking, got {other:?}"),
        }
    }

    fn blocked(q: QuickBegin) -> RememberRequest {
        match q {
            QuickBegin::Blocked(req) => req,
            other => panic!("expected the request handed back, got {other:?}"),
        }
    }

    fn found(g: &Graph, space: &str, word: &str) -> Vec<String> {
        let cue = Cue {
            text: Some(word.into()),
            ..Cue::default()
        };
        g.recall(space, &cue, 10, &Spread::default())
            .expect("recall")
            .into_iter()
            .map(|r| r.memory.id)
            .collect()
    }

    #[tokio::test]
    async fn a_plain_remember_completes_without_a_blocking_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = open(dir.path());
        g.remember(DEFAULT_SPACE, text("loads the space"))
            .expect("remember");
        let applied = g.engine().applied_lsn();
        let mut p = begun(
            g.remember_quick(DEFAULT_SPACE, text("quick path zebra"))
                .expect("quick"),
        );
        p.group_commit().await;
        // Applied by the WAL writer before the commit was answered.
        assert!(g.engine().applied_lsn() > applied, "applied on commit");
        let r = match g.remember_finish_quick(p) {
            QuickFinish::Done(r) => r.expect("remembered"),
            QuickFinish::Blocked(p) => panic!("finish wanted to block: {p:?}"),
        };
        assert!(!r.deduplicated && r.sequence > 0);
        assert_eq!(found(&g, DEFAULT_SPACE, "zebra"), vec![r.id.clone()]);
        assert_eq!(
            g.get(DEFAULT_SPACE, &r.id, false).expect("get").content,
            "quick path zebra"
        );
        drop(g);
        // Durable: the store has it after a restart.
        let g = open(dir.path());
        assert_eq!(found(&g, DEFAULT_SPACE, "zebra"), vec![r.id]);
    }

    #[test]
    fn what_would_wait_is_handed_back_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = open(dir.path());
        g.remember(DEFAULT_SPACE, text("first")).expect("remember");
        drop(g);
        let g = open(dir.path());
        // Not in memory yet: loading it blocks.
        let req = blocked(
            g.remember_quick(DEFAULT_SPACE, text("cold space"))
                .expect("quick"),
        );
        assert_eq!(req, text("cold space"));
        g.remember(DEFAULT_SPACE, text("loads it"))
            .expect("remember");

        let dedupe = RememberRequest {
            dedupe: true,
            ..text("first")
        };
        assert_eq!(
            blocked(
                g.remember_quick(DEFAULT_SPACE, dedupe.clone())
                    .expect("quick")
            ),
            dedupe
        );

        let space = g.space(DEFAULT_SPACE).expect("space");
        let held = g.state_if_loaded(&space).expect("loaded");
        let st: &RwLock<SpaceState> = &held;
        {
            let _reading = read(st);
            assert_eq!(
                blocked(
                    g.remember_quick(DEFAULT_SPACE, text("locked"))
                        .expect("quick")
                ),
                text("locked")
            );
        }
        {
            let _deleting = write(&space.alive);
            assert_eq!(
                blocked(
                    g.remember_quick(DEFAULT_SPACE, text("alive"))
                        .expect("quick")
                ),
                text("alive")
            );
        }
        // Nothing of the handed-back requests was written.
        let stats = g.space_stats(DEFAULT_SPACE).expect("stats");
        assert_eq!(stats.memories, 2);
        // Bad input is refused as on the blocking path.
        let err = g
            .remember_quick("no-such-space", text("x"))
            .expect_err("unknown space");
        assert!(matches!(err, GraphError::SpaceNotFound(_)), "{err}");
    }

    #[tokio::test]
    async fn a_finish_that_would_wait_is_completed_by_the_blocking_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = open(dir.path());
        g.remember(DEFAULT_SPACE, text("loads the space"))
            .expect("remember");
        let mut p = begun(
            g.remember_quick(DEFAULT_SPACE, text("held lock okapi"))
                .expect("quick"),
        );
        p.group_commit().await;
        let space = g.space(DEFAULT_SPACE).expect("space");
        let held = g.state_if_loaded(&space).expect("loaded");
        let st: &RwLock<SpaceState> = &held;
        let reading = read(st);
        let p = match g.remember_finish_quick(p) {
            QuickFinish::Blocked(p) => p,
            QuickFinish::Done(r) => panic!("finished under a held lock: {r:?}"),
        };
        drop(reading);
        let r = g.remember_finish(p).expect("finished");
        assert_eq!(found(&g, DEFAULT_SPACE, "okapi"), vec![r.id]);
        assert!(!space.inexact.load(Ordering::SeqCst), "nothing abandoned");
    }
}
