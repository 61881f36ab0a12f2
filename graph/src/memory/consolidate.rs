//! Consolidation: episodes that say nearly the same thing are summarised by
//! a *concept* memory linked to each of them.
//!
//! A run takes up to `batch_size` episodes that are neither concepts nor
//! already consolidated, in id (creation) order, starting after the last one
//! the previous run examined and going on from the oldest once the newest is
//! passed: successive runs make laps over the whole space, so every episode
//! is examined, however many never cluster. Where a run stopped is kept per
//! space in the store (`meta` key `0x03`), so a restart continues the lap;
//! the report says how much of it is left (`remaining`) and whether the run
//! started a new one (`wrapped`). For each, its neighbours among the
//! other unconsolidated episodes are found by embedding cosine similarity
//! (spaces with embeddings) or, without embeddings, by BM25 with the
//! episode's distinctive terms as the query (its words without stop words
//! and fillers, [`text::distinctive_terms`]), normalised by the episode's
//! score against itself: an episode with no distinctive term ("Haha, ok!")
//! joins no cluster, and two that share only function words ("I live in
//! Berlin", "I live in Lisbon") score by what is left. Neighbours at or
//! above `threshold` form a cluster with it; a cluster of two or more
//! becomes a concept:
//! - content: `Concept (N memories): `, the distinctive terms shared by at
//!   least two members (most shared first, then rarest in the space, at most
//!   12), then `; differing: ` and, member by member in id order separated
//!   by ` / `, up to three terms only that member says (rarest first; at
//!   most 12 in all), so what tells the members apart is kept:
//!   `Concept (2 memories): live, maya; differing: berlin / lisbon`. Stop
//!   words never appear; a cluster whose members have no distinctive term
//!   makes no concept;
//! - confidence: mean of the members'; tags: those every member has;
//!   `occurred_at`: the latest member's; embedding: the members' centroid;
//! - metadata `{"kind": "concept", "members": N}` (the members' own
//!   metadata is not merged in);
//! - a consolidation edge from each member to the concept, weighted by the
//!   member's similarity.
//!
//! Concepts stay out of recall and search results unless the cue sets
//! `include_concepts`; spreading activation still passes through them, so
//! a member can reach the others of its concept.
//!
//! The concept and its edges are one WAL record, written under the space's
//! write lock after checking, under that lock, that every member still
//! exists: a member forgotten while the run was clustering contributes
//! nothing (the concept is made of the others, or not at all when fewer
//! than two remain), and a forget that comes later finds the concept.
//! Members are then consolidated and never picked again, so runs are
//! idempotent: a second run over the same episodes creates nothing.
//! Forgetting a concept frees its members for a later run.
//!
//! Forgetting a member leaves nothing of it in a concept (invariant 6):
//! each concept it belongs to is forgotten and, when at least two other
//! members remain, replaced by a new concept (new id) made of them exactly
//! as above, with their edges' weights. Both happen in forget, under the
//! space's write lock, before the member's own deletions: a crash in
//! between leaves the member in place and its concept already without it
//! (or its members free for a later run), never a concept holding a
//! forgotten member's words.

use std::collections::BTreeMap;

use super::*;

/// What a consolidation run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsolidationReport {
    /// Episodes examined.
    pub examined: usize,
    /// Concepts created.
    pub concepts: usize,
    /// Episodes linked to a new concept.
    pub members: usize,
    /// Unconsolidated episodes newer than the last one examined: the next
    /// runs examine them before starting again from the oldest (0: the next
    /// run starts from the oldest).
    pub remaining: usize,
    /// The run passed the newest unconsolidated episode and went on from the
    /// oldest (summed over spaces: any of them did).
    pub wrapped: bool,
}

impl std::ops::AddAssign for ConsolidationReport {
    fn add_assign(&mut self, o: Self) {
        self.examined += o.examined;
        self.concepts += o.concepts;
        self.members += o.members;
        self.remaining += o.remaining;
        self.wrapped |= o.wrapped;
    }
}

/// The seeds of one run: up to `batch` of the sorted `candidates`, starting
/// after `cursor` (the last episode the previous run examined) and going on
/// from the oldest once the newest is passed, never one twice; `true` when
/// it went on from the oldest.
fn lap_order(
    candidates: &[EpisodeId],
    cursor: Option<EpisodeId>,
    batch: usize,
) -> (Vec<EpisodeId>, bool) {
    let start = cursor.map_or(0, |c| candidates.partition_point(|id| *id <= c));
    let (before, after) = candidates.split_at(start);
    let order: Vec<EpisodeId> = after.iter().chain(before).take(batch).copied().collect();
    let wrapped = order.len() > after.len();
    (order, wrapped)
}

/// Neighbours examined per episode.
const NEIGHBOURS: usize = 16;
/// Shared terms in a concept's content, and differing terms in all.
const CONCEPT_TERMS: usize = 12;
/// Differing terms shown per member.
const DIFFERING_PER_MEMBER: usize = 3;
/// Members a concept needs: fewer make none, and a concept left with fewer
/// by forget is forgotten.
const MIN_MEMBERS: usize = 2;

/// A member of a concept: its id, its similarity to the cluster (the
/// weight of its edge to the concept) and its record.
type Member = (EpisodeId, f32, Arc<EpisodeRecord>);

/// A concept ready to be written: its record and embedding, and each
/// member with its edge to it.
struct Concept {
    record: EpisodeRecord,
    embedding: Option<Vec<f32>>,
    members: Vec<(EpisodeId, EdgeRecord)>,
}

impl SpaceState {
    /// The members of a concept (sources of its consolidation edges) with
    /// their edges' weights.
    fn members(&self, concept: &EpisodeId) -> Vec<(EpisodeId, f32)> {
        let Some(c) = self.episodes.slot(concept) else {
            return Vec::new();
        };
        self.edges
            .incoming(c)
            .iter()
            .filter_map(|(from, _)| {
                self.edges
                    .outgoing(*from)
                    .iter()
                    .find(|(to, e)| *to == c && e.kind == EdgeKind::Consolidation)
                    .map(|(_, e)| (*self.episodes.id(*from), e.weight))
            })
            .collect()
    }
}

impl Graph {
    /// Consolidates up to `consolidation.batch_size` episodes of a space,
    /// clustering those with similarity at or above `threshold` (in (0, 1]),
    /// continuing after where the space's previous run stopped.
    pub fn consolidate(
        &self,
        space_name: &str,
        threshold: f32,
    ) -> Result<ConsolidationReport, GraphError> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(invalid(
                "threshold",
                format!("{threshold} is outside (0, 1]"),
            ));
        }
        let space = self.space(space_name)?;
        self.admit(&space)?;
        self.consolidate_space(
            &space,
            threshold,
            self.config.consolidation.batch_size,
            Use::Request,
        )
    }

    /// One background run: every space whose indexes are loaded, with the
    /// configured threshold and batch size. A space that fails is logged
    /// with its name and counted
    /// (`engram_background_failures_total{task="consolidation"}`), and the
    /// run goes on with the others; only a shutdown stops it.
    pub fn consolidate_loaded(&self) -> Result<ConsolidationReport, GraphError> {
        let all: Vec<Arc<Space>> = read(&self.spaces)
            .values()
            .filter(|s| s.is_loaded())
            .cloned()
            .collect();
        let mut total = ConsolidationReport::default();
        let c = &self.config.consolidation;
        for space in all {
            match self.consolidate_space(&space, c.threshold, c.batch_size, Use::Background) {
                Ok(r) => total += r,
                Err(GraphError::SpaceNotFound(_)) => {}
                Err(GraphError::ShuttingDown) => return Err(GraphError::ShuttingDown),
                Err(e) => self.background_failed(Task::Consolidation, &space, &e),
            }
        }
        Ok(total)
    }

    /// One run over one space; a background pass (`by`) skips a space that
    /// was unloaded meanwhile.
    fn consolidate_space(
        &self,
        space: &Space,
        threshold: f32,
        batch: usize,
        by: Use,
    ) -> Result<ConsolidationReport, GraphError> {
        let _writing = self.gate.enter()?;
        let _one = space
            .consolidating
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(held) = self.state_as(space, by)? else {
            return Ok(ConsolidationReport::default());
        };
        let st: &RwLock<SpaceState> = &held;
        let free = |m: &EpisodeMeta| !m.concept && !m.consolidated;
        let mut candidates: Vec<EpisodeId> = read(st)
            .episodes
            .iter()
            .filter(|(_, m)| free(m))
            .map(|(id, _)| *id)
            .collect();
        candidates.sort_unstable();
        let cursor = self.engine.store().consolidation_cursor(space.id)?;
        let (seeds, wrapped) = lap_order(&candidates, cursor, batch);
        let mut report = ConsolidationReport {
            wrapped,
            ..ConsolidationReport::default()
        };
        let mut taken = IdSet::default();
        let mut last = None;
        for seed in seeds {
            match self.consolidate_seed(space, st, seed, threshold, &mut taken, &mut report) {
                Ok(true) => {}
                Ok(false) => return Ok(report), // the space was deleted
                Err(e) => {
                    // The next run starts after the episode that failed.
                    if let Err(c) = self.save_cursor(space, &seed) {
                        tracing::warn!(space = %space.record.name, error = %c, "keeping the consolidation position failed");
                    }
                    return Err(e);
                }
            }
            last = Some(seed);
        }
        if let Some(last) = last {
            self.save_cursor(space, &last)?;
            report.remaining = read(st)
                .episodes
                .iter()
                .filter(|(id, m)| **id > last && free(m))
                .count();
        }
        Ok(report)
    }

    /// Examines one seed of a run: clusters it with its free neighbours and
    /// stores a concept for a cluster of two or more. `Ok(false)` when the
    /// space was deleted meanwhile.
    fn consolidate_seed(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        seed: EpisodeId,
        threshold: f32,
        taken: &mut IdSet,
        report: &mut ConsolidationReport,
    ) -> Result<bool, GraphError> {
        let free = |m: &EpisodeMeta| !m.concept && !m.consolidated;
        if taken.contains(&seed) {
            return Ok(true);
        }
        report.examined += 1;
        let text = match self.read_record(space, &seed)? {
            Some(r) => r.content.clone(),
            None => return Ok(true),
        };
        let cluster: Vec<(EpisodeId, f32)> = {
            let state = read(st);
            if !state.episodes.get(&seed).is_some_and(free) {
                return Ok(true);
            }
            let accept =
                |id: &EpisodeId| !taken.contains(id) && state.episodes.get(id).is_some_and(free);
            let vector = state
                .ann
                .as_ref()
                .and_then(|a| a.get(&seed))
                .map(<[f32]>::to_vec);
            match vector {
                Some(v) => self
                    .vector_neighbours(&state, &v, NEIGHBOURS, accept)
                    .into_iter()
                    .filter(|(_, s)| *s >= threshold)
                    .collect(),
                None => {
                    // Only what the episode is about: clustering on function
                    // words merges turns that merely share grammar.
                    let query = text::distinctive_terms(&text).join(" ");
                    if query.is_empty() {
                        return Ok(true);
                    }
                    let found = state.lexical_search(&query, NEIGHBOURS, accept);
                    let own = found.iter().find(|(id, _)| *id == seed).map(|x| x.1);
                    match own {
                        Some(own) if own > 0.0 => found
                            .into_iter()
                            .map(|(id, s)| (id, (s / own).min(1.0) as f32))
                            .filter(|(_, s)| *s >= threshold)
                            .collect(),
                        _ => Vec::new(),
                    }
                }
            }
        };
        if cluster.len() < MIN_MEMBERS || !cluster.iter().any(|(id, _)| *id == seed) {
            return Ok(true);
        }
        let mut members: Vec<Member> = Vec::with_capacity(cluster.len());
        for (id, sim) in &cluster {
            if let Some(r) = self.read_record(space, id)? {
                members.push((*id, *sim, r));
            }
        }
        {
            // Checked and written under the write lock that forget holds
            // from start to end: a member forgotten since the cluster was
            // found is dropped here, one forgotten later finds the concept.
            let mut state = write(st);
            members.retain(|(id, _, _)| state.episodes.get(id).is_some_and(free));
            let Some(concept) = concept_of(&members, &state)? else {
                return Ok(true);
            };
            match self.write_concept(space, &mut state, concept) {
                Ok(_) => {}
                Err(GraphError::SpaceNotFound(_)) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        report.concepts += 1;
        report.members += members.len();
        taken.extend(cluster.iter().map(|(id, _)| *id));
        Ok(true)
    }

    /// Writes a concept as one WAL record (the concept, its postings and
    /// embedding, an edge from each member) and adds it to the indexes.
    /// `state` is the space's, write-locked by the caller for the whole of
    /// it, after checking that every member still exists.
    fn write_concept(
        &self,
        space: &Space,
        state: &mut SpaceState,
        concept: Concept,
    ) -> Result<EpisodeId, GraphError> {
        let Concept {
            mut record,
            embedding,
            members,
        } = concept;
        let id = ulid::Ulid::new().to_bytes();
        let (tf, len) = text::term_frequencies(&record.content);
        record.terms = len;
        let mut m =
            super::episode_mutations(id, &record, &tf, embedding.as_deref(), members.len())?;
        for (from, e) in &members {
            m.push(Mutation::PutEdge {
                from: *from,
                to: id,
                record: record::encode(e)?,
            });
        }
        self.submit(space, kind::CONSOLIDATE, m)?;

        if let (Some(e), Some(ann)) = (&embedding, state.ann.as_mut()) {
            ann.insert(id, e);
        }
        let tags = state.tagsets.intern(&record.tags);
        let slot = state.episodes.insert(
            id,
            EpisodeMeta {
                occurred_at_ms: record.occurred_at_ms,
                stored_at_ms: record.stored_at_ms,
                confidence: record.confidence,
                tags,
                concept: true,
                ..EpisodeMeta::default()
            },
        );
        state.lexical.add_document(slot, len);
        state.postings += tf.len();
        for (term, f) in tf {
            state.lexical.add_posting(&term, slot, f);
        }
        for (from, e) in members {
            state.add_edge(from, id, e);
        }
        lock(&space.hot).insert(id, Arc::new(record));
        Ok(id)
    }

    /// Before `member` is forgotten: forgets every concept it belongs to
    /// and, when at least [`MIN_MEMBERS`] other members remain, writes a
    /// new concept of those (their edges' weights kept), so no concept's
    /// content, postings, tags or embedding keep anything derived from
    /// `member`. Under the space's write and tiering locks, as forget.
    pub(super) fn release_concepts(
        &self,
        space: &Space,
        state: &mut SpaceState,
        member: &EpisodeId,
    ) -> Result<(), GraphError> {
        let concepts: Vec<EpisodeId> = state
            .outgoing(member)
            .into_iter()
            .filter(|(_, e)| e.kind == EdgeKind::Consolidation)
            .map(|(c, _)| c)
            .collect();
        for concept in concepts {
            let mut rest: Vec<(EpisodeId, f32)> = state
                .members(&concept)
                .into_iter()
                .filter(|(id, _)| id != member)
                .collect();
            rest.sort_unstable_by_key(|a| a.0);
            let mut members: Vec<Member> = Vec::with_capacity(rest.len());
            for (id, weight) in rest {
                if let Some(r) = self.read_record(space, &id)? {
                    members.push((id, weight, r));
                }
            }
            // Durable before the replacement is written: a crash in
            // between leaves the members free for a later run.
            if !self.forget_locked(space, state, &concept)? {
                continue; // no record: nothing of `member` to remove
            }
            if let Some(replacement) = concept_of(&members, state)? {
                self.write_concept(space, state, replacement)?;
            }
        }
        Ok(())
    }

    /// Keeps where the space's run stopped, so the next one (after a
    /// restart too) continues from there. Not for a deleted space: its
    /// drop removed the key and nothing may write it again.
    fn save_cursor(&self, space: &Space, at: &EpisodeId) -> Result<(), GraphError> {
        let alive = read(&space.alive);
        if *alive {
            self.engine.store().set_consolidation_cursor(space.id, at)?;
        }
        Ok(())
    }
}

/// The concept summarising `members` (their vectors, when every one has
/// one, from `state`), or `None` when there are fewer than [`MIN_MEMBERS`].
fn concept_of(records: &[Member], state: &SpaceState) -> Result<Option<Concept>, GraphError> {
    if records.len() < MIN_MEMBERS {
        return Ok(None);
    }
    let n = records.len();
    let Some(content) = concept_content(records, state) else {
        return Ok(None);
    };
    let tags: Vec<String> = records[0]
        .2
        .tags
        .iter()
        .filter(|t| records.iter().all(|(_, _, r)| r.tags.contains(t)))
        .cloned()
        .collect();
    let confidence = records.iter().map(|(_, _, r)| r.confidence).sum::<f32>() / n as f32;
    let occurred_at_ms = records
        .iter()
        .map(|(_, _, r)| r.occurred_at_ms)
        .max()
        .unwrap_or(0);
    let embedding = state.ann.as_ref().and_then(|ann| {
        let vs: Vec<&[f32]> = records
            .iter()
            .filter_map(|(id, _, _)| ann.get(id))
            .collect();
        (vs.len() == n).then(|| {
            let mut c = vec![0.0f32; vs[0].len()];
            for v in &vs {
                for (a, x) in c.iter_mut().zip(v.iter()) {
                    *a += x / n as f32;
                }
            }
            c
        })
    });
    let mut metadata = Map::new();
    metadata.insert("kind".into(), Value::from("concept"));
    metadata.insert("members".into(), Value::from(n));
    let record = EpisodeRecord {
        content,
        confidence,
        tags,
        metadata_json: serde_json::to_string(&metadata)
            .map_err(|e| GraphError::Corrupt(format!("concept metadata: {e}")))?,
        session: None,
        occurred_at_ms,
        stored_at_ms: now_ms(),
        terms: 0,
        concept: true,
    };
    let edges_from = records
        .iter()
        .map(|(id, sim, _)| {
            let e = EdgeRecord {
                weight: sim.clamp(0.05, 1.0),
                kind: EdgeKind::Consolidation,
            };
            (*id, e)
        })
        .collect();
    Ok(Some(Concept {
        record,
        embedding,
        members: edges_from,
    }))
}

/// A concept's content (see the module's documentation), or `None` when
/// no member has a distinctive term.
fn concept_content(records: &[Member], state: &SpaceState) -> Option<String> {
    // Member by member in id (creation) order, whatever order the cluster
    // was found in.
    let mut by_id: Vec<&Member> = records.iter().collect();
    by_id.sort_unstable_by_key(|m| m.0);
    let said: Vec<Vec<String>> = by_id
        .iter()
        .map(|(_, _, r)| text::distinctive_terms(&r.content))
        .collect();
    let mut members_saying: BTreeMap<&str, usize> = BTreeMap::new();
    for t in said.iter().flatten() {
        *members_saying.entry(t.as_str()).or_default() += 1;
    }
    // Rarer in the space says more; ties alphabetical (the map's order).
    let df = |t: &str| state.lexical.document_frequency(t);
    let mut shared: Vec<(&str, usize)> = members_saying
        .iter()
        .filter(|(_, c)| **c >= 2)
        .map(|(t, c)| (*t, *c))
        .collect();
    shared.sort_by(|a, b| b.1.cmp(&a.1).then(df(a.0).cmp(&df(b.0))));
    shared.truncate(CONCEPT_TERMS);
    let mut budget = CONCEPT_TERMS;
    let mut differing: Vec<String> = Vec::new();
    for terms in &said {
        let mut own: Vec<&str> = terms
            .iter()
            .map(String::as_str)
            .filter(|t| members_saying.get(t) == Some(&1))
            .collect();
        own.sort_by(|a, b| df(a).cmp(&df(b)).then(a.cmp(b)));
        own.truncate(DIFFERING_PER_MEMBER.min(budget));
        budget -= own.len();
        if !own.is_empty() {
            differing.push(own.join(", "));
        }
    }
    if shared.is_empty() && differing.is_empty() {
        return None;
    }
    let mut content = format!("Concept ({} memories):", records.len());
    if !shared.is_empty() {
        let terms: Vec<&str> = shared.iter().map(|(t, _)| *t).collect();
        content.push(' ');
        content.push_str(&terms.join(", "));
    }
    if !differing.is_empty() {
        if !shared.is_empty() {
            content.push(';');
        }
        content.push_str(" differing: ");
        content.push_str(&differing.join(" / "));
    }
    Some(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> EpisodeId {
        let mut id = [0; 16];
        id[15] = n;
        id
    }

    #[test]
    fn runs_make_laps_over_every_candidate() {
        let all: Vec<EpisodeId> = (1..=5).map(id).collect();
        assert_eq!(lap_order(&all, None, 2), (vec![id(1), id(2)], false));
        assert_eq!(lap_order(&all, Some(id(2)), 2), (vec![id(3), id(4)], false));
        assert_eq!(
            lap_order(&all, Some(id(4)), 3),
            (vec![id(5), id(1), id(2)], true),
            "past the newest, on from the oldest"
        );
        assert_eq!(lap_order(&all, Some(id(5)), 9), (all.clone(), true));
        assert_eq!(
            lap_order(&all, None, 9),
            (all.clone(), false),
            "never one twice"
        );
        // The cursor's own episode was consolidated or forgotten since.
        let rest = [id(1), id(4), id(5)];
        assert_eq!(lap_order(&rest, Some(id(3)), 1), (vec![id(4)], false));
        assert_eq!(lap_order(&[], Some(id(3)), 4), (Vec::new(), false));
    }
}
