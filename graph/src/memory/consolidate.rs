//! Consolidation: episodes that say nearly the same thing are summarised by
//! a *concept* memory linked to each of them.
//!
//! A run takes up to `batch_size` episodes that are neither concepts nor
//! already consolidated, oldest first. For each, its neighbours among the
//! other unconsolidated episodes are found by embedding cosine similarity
//! (spaces with embeddings) or, without embeddings, by BM25 with the
//! episode's own text as the query, normalised by the episode's score
//! against itself. Neighbours at or above `threshold` form a cluster with
//! it; a cluster of two or more becomes a concept:
//! - content: `Concept (N memories): ` and the terms shared by at least two
//!   members, most shared first (at most 12), so the concept never repeats a
//!   word that only one member said;
//! - confidence: mean of the members'; tags: those every member has;
//!   `occurred_at`: the latest member's; embedding: the members' centroid;
//! - metadata `{"kind": "concept", "members": N}`;
//! - a consolidation edge from each member to the concept, weighted by the
//!   member's similarity.
//!
//! The concept and its edges are one WAL record. Members are then
//! consolidated and never picked again, so runs are idempotent: a second run
//! over the same episodes creates nothing. Forgetting a concept frees its
//! members for a later run.

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
}

impl std::ops::AddAssign for ConsolidationReport {
    fn add_assign(&mut self, o: Self) {
        self.examined += o.examined;
        self.concepts += o.concepts;
        self.members += o.members;
    }
}

/// Neighbours examined per episode.
const NEIGHBOURS: usize = 16;
/// Terms in a concept's content.
const CONCEPT_TERMS: usize = 12;

impl Graph {
    /// Consolidates up to `consolidation.batch_size` episodes of a space,
    /// clustering those with similarity at or above `threshold` (in (0, 1]).
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
        self.consolidate_space(&space, threshold, self.config.consolidation.batch_size)
    }

    /// One background run: every space whose indexes are loaded, with the
    /// configured threshold and batch size.
    pub fn consolidate_loaded(&self) -> Result<ConsolidationReport, GraphError> {
        let all: Vec<Arc<Space>> = read(&self.spaces)
            .values()
            .filter(|s| s.state.get().is_some())
            .cloned()
            .collect();
        let mut total = ConsolidationReport::default();
        let c = &self.config.consolidation;
        for space in all {
            match self.consolidate_space(&space, c.threshold, c.batch_size) {
                Ok(r) => total += r,
                Err(GraphError::SpaceNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    fn consolidate_space(
        &self,
        space: &Space,
        threshold: f32,
        batch: usize,
    ) -> Result<ConsolidationReport, GraphError> {
        let _writing = self.gate.enter()?;
        let _one = space
            .consolidating
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let st = self.state(space)?;
        let free = |m: &EpisodeMeta| !m.concept && !m.consolidated;
        let mut candidates: Vec<EpisodeId> = read(st)
            .episodes
            .iter()
            .filter(|(_, m)| free(m))
            .map(|(id, _)| *id)
            .collect();
        candidates.sort_unstable();
        candidates.truncate(batch);
        let mut report = ConsolidationReport::default();
        let mut taken = IdSet::default();
        for seed in candidates {
            if taken.contains(&seed) {
                continue;
            }
            report.examined += 1;
            let text = match self.read_record(space, &seed)? {
                Some(r) => r.content.clone(),
                None => continue,
            };
            let cluster: Vec<(EpisodeId, f32)> = {
                let state = read(st);
                if !state.episodes.get(&seed).is_some_and(free) {
                    continue;
                }
                let accept = |id: &EpisodeId| {
                    !taken.contains(id) && state.episodes.get(id).is_some_and(free)
                };
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
                        let found = state.lexical_search(&text, NEIGHBOURS, accept);
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
            if cluster.len() < 2 || !cluster.iter().any(|(id, _)| *id == seed) {
                continue;
            }
            let Some(draft) = self.concept_of(space, st, &cluster)? else {
                continue;
            };
            match self.store_episode(space, st, draft, kind::CONSOLIDATE) {
                Ok(_) => {}
                Err(GraphError::SpaceNotFound(_)) => return Ok(report),
                Err(e) => return Err(e),
            }
            report.concepts += 1;
            report.members += cluster.len();
            taken.extend(cluster.iter().map(|(id, _)| *id));
        }
        Ok(report)
    }

    /// The concept summarising `cluster` (member, similarity), or `None`
    /// when fewer than two members still exist.
    fn concept_of(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        cluster: &[(EpisodeId, f32)],
    ) -> Result<Option<NewEpisode>, GraphError> {
        let mut records = Vec::with_capacity(cluster.len());
        for (id, sim) in cluster {
            if let Some(r) = self.read_record(space, id)? {
                records.push((*id, *sim, r));
            }
        }
        if records.len() < 2 {
            return Ok(None);
        }
        let n = records.len();
        // Terms by the number of members using them; ties alphabetical.
        let mut shared: BTreeMap<String, usize> = BTreeMap::new();
        for (_, _, r) in &records {
            for t in text::term_frequencies(&r.content).0.into_keys() {
                *shared.entry(t).or_default() += 1;
            }
        }
        let mut terms: Vec<(String, usize)> = shared.into_iter().filter(|(_, c)| *c >= 2).collect();
        terms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        terms.truncate(CONCEPT_TERMS);
        let summary: Vec<&str> = terms.iter().map(|(t, _)| t.as_str()).collect();
        let content = format!("Concept ({n} memories): {}", summary.join(", "));
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
        let embedding = {
            let state = read(st);
            state.ann.as_ref().and_then(|ann| {
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
            })
        };
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
        Ok(Some(NewEpisode {
            record,
            embedding,
            edges_to: Vec::new(),
            edges_from,
        }))
    }
}
