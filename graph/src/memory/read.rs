//! Reading memories: one memory by id, recall from a cue, and what both
//! use (a record from whichever tier holds it, vector neighbours, the
//! embedding check).

use super::*;
use crate::activation::Spread;

impl Graph {
    pub(super) fn check_embedding(
        &self,
        space: &Space,
        e: Option<&[f32]>,
    ) -> Result<(), GraphError> {
        let Some(e) = e else { return Ok(()) };
        let Some(dim) = space.record.embedding_dim else {
            return Err(invalid(
                "embedding",
                format!(
                    "space {:?} was created without an embedding dimension; store vectors in a space created with one (POST /api/v1/spaces {{\"id\": \"...\", \"embedding_dim\": N}})",
                    space.record.name
                ),
            ));
        };
        if e.len() != dim as usize {
            return Err(invalid(
                "embedding",
                format!("dimension {} does not match the space's {dim}", e.len()),
            ));
        }
        if e.iter().any(|x| !x.is_finite()) {
            return Err(invalid("embedding", "values must be finite numbers"));
        }
        Ok(())
    }

    /// Vector neighbours of `q` accepted by `accept`, most similar first:
    /// an exhaustive int8 scan with exact re-ranking for spaces of up to
    /// `exact_search_below` vectors or when a filter starves the graph walk,
    /// the HNSW index otherwise.
    pub(super) fn vector_neighbours(
        &self,
        state: &SpaceState,
        q: &[f32],
        k: usize,
        accept: impl Fn(&EpisodeId) -> bool + Sync,
    ) -> Vec<(EpisodeId, f32)> {
        let Some(ann) = &state.ann else {
            return Vec::new();
        };
        let exhaustive = ann.len() <= self.config.exact_search_below;
        let mut found = if exhaustive {
            ann.scan(q, k, &accept)
        } else {
            ann.search(q, k, &accept)
        };
        if !exhaustive && found.len() < k.min(ann.len()) {
            found = ann.scan(q, k, &accept);
        }
        found
    }

    /// One memory by id.
    pub fn get(
        &self,
        space_name: &str,
        id: &str,
        with_embedding: bool,
    ) -> Result<Memory, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let eid = parse_id(id)?;
        let Some(access) = read(st).episodes.get(&eid).map(EpisodeMeta::access) else {
            return Err(GraphError::MemoryNotFound(id.to_owned()));
        };
        self.load_memory(&space, st, &eid, with_embedding, access)?
            .ok_or_else(|| GraphError::MemoryNotFound(id.to_owned()))
    }

    /// An episode's record from whichever tier holds it: the hot cache,
    /// the warm `episodes` family, or the cold archive (both families read
    /// from one store snapshot, so a memory moving between them is never
    /// missed).
    pub(super) fn read_record(
        &self,
        space: &Space,
        id: &EpisodeId,
    ) -> Result<Option<Arc<EpisodeRecord>>, GraphError> {
        if let Some(r) = lock(&space.hot).get(id) {
            return Ok(Some(r));
        }
        let Some(bytes) = self.engine.store().episode_in_any_tier(space.id, id)? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(record::decode(&bytes, "episode")?)))
    }

    /// A memory as returned to clients; its record enters the hot tier.
    fn load_memory(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        id: &EpisodeId,
        with_embedding: bool,
        access: AccessRecord,
    ) -> Result<Option<Memory>, GraphError> {
        let Some(rec) = self.read_record(space, id)? else {
            return Ok(None);
        };
        {
            // Forget removes a memory from the indexes and the hot tier
            // under the space's write lock: checked under its read lock, a
            // record read just before a forget is neither cached after it
            // nor returned.
            let state = read(st);
            if !state.episodes.contains_key(id) {
                return Ok(None);
            }
            lock(&space.hot).insert(*id, Arc::clone(&rec));
        }
        let metadata = match serde_json::from_str::<Value>(&rec.metadata_json) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(GraphError::Corrupt(format!(
                    "metadata of {}",
                    id_string(id)
                )));
            }
        };
        let embedding = match with_embedding {
            true => match self.engine.store().vector(space.id, id)? {
                Some(b) => Some(record::vector_from_bytes(&b)?),
                None => None,
            },
            false => None,
        };
        Ok(Some(Memory {
            id: id_string(id),
            space: space.record.name.clone(),
            content: rec.content.clone(),
            confidence: rec.confidence,
            tags: rec.tags.clone(),
            metadata,
            session: rec.session.clone(),
            occurred_at_ms: rec.occurred_at_ms,
            stored_at_ms: rec.stored_at_ms,
            embedding,
            access_count: access.count,
            last_access_ms: (access.count > 0).then_some(access.last_ms),
            concept: rec.concept,
        }))
    }

    /// Recalls memories of one space from a cue: lexical and vector seeds
    /// fused by reciprocal rank, filtered before ranking, then spreading
    /// activation, then scoring. `spread.depth == 0` disables spreading.
    pub fn recall(
        &self,
        space_name: &str,
        cue: &Cue,
        limit: usize,
        spread: &Spread,
    ) -> Result<Vec<Recalled>, GraphError> {
        let space = self.space(space_name)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let l = &self.config.limits;
        if limit == 0 || limit > l.max_recall_limit {
            return Err(invalid(
                "limit",
                format!("must be within 1..={}", l.max_recall_limit),
            ));
        }
        if spread.depth > activation::MAX_DEPTH {
            return Err(invalid(
                "spread.depth",
                format!("must be at most {}", activation::MAX_DEPTH),
            ));
        }
        if !(spread.decay > 0.0 && spread.decay <= 1.0) {
            return Err(invalid("spread.decay", "must be within (0, 1]"));
        }
        if !(0.0..=1.0).contains(&spread.threshold) {
            return Err(invalid("spread.threshold", "must be within [0, 1]"));
        }
        if spread.fan_out > activation::MAX_FAN_OUT {
            return Err(invalid(
                "spread.fan_out",
                format!("must be at most {}", activation::MAX_FAN_OUT),
            ));
        }
        self.check_embedding(&space, cue.embedding.as_deref())?;
        if cue.text.as_deref().is_none_or(|t| t.trim().is_empty())
            && cue.embedding.is_none()
            && cue.tags.is_empty()
            && cue.from_ms.is_none()
            && cue.to_ms.is_none()
        {
            return Err(invalid(
                "cue",
                "give at least one of text, embedding, tags, from or to",
            ));
        }
        let now = now_ms();
        let stability = self.config.stability_days;
        let state = read(st);
        let decayed = |m: &EpisodeMeta| m.decayed(now, stability);
        let accept = |id: &EpisodeId| {
            let Some(m) = state.episodes.get(id) else {
                return false;
            };
            let tags = state.tagsets.get(m.tags);
            cue.tags.iter().all(|t| tags.contains(t))
                && cue.from_ms.is_none_or(|f| m.occurred_at_ms >= f)
                && cue.to_ms.is_none_or(|t| m.occurred_at_ms <= t)
                && cue.min_confidence.is_none_or(|c| decayed(m) >= c)
        };
        // Concepts are returned only when asked for; spreading still
        // passes through them (`accept`), linking the members of one.
        let wanted = |m: &EpisodeMeta| cue.include_concepts || !m.concept;
        let seed = |id: &EpisodeId| accept(id) && state.episodes.get(id).is_some_and(wanted);
        let pool = (limit * 4).max(32);
        let filtered = !cue.tags.is_empty()
            || cue.from_ms.is_some()
            || cue.to_ms.is_some()
            || cue.min_confidence.is_some();
        // Normalised-score fusion: BM25 scores divided by the best BM25
        // score, cosine similarities (clamped at 0) divided by the best one;
        // with both kinds of cue a memory gets the mean of its two values.
        let lexical: Vec<(EpisodeId, f64)> = match cue.text.as_deref() {
            Some(t) if filtered => state.lexical_search(t, pool, seed),
            // Every indexed document exists, so without filters only the
            // kind is checked, by slot.
            Some(t) if cue.include_concepts => state.lexical_search_slots(t, pool, |_| true),
            Some(t) => state.lexical_search_slots(t, pool, |s| !state.episodes.meta_at(s).concept),
            None => Vec::new(),
        };
        let vector: Vec<(EpisodeId, f64)> = match &cue.embedding {
            Some(q) => self
                .vector_neighbours(&state, q, pool, seed)
                .into_iter()
                .map(|(id, s)| (id, f64::from(s)))
                .collect(),
            None => Vec::new(),
        };
        let sources = f64::from(u8::from(cue.text.is_some()) + u8::from(cue.embedding.is_some()));
        let mut fused: IdMap<(f64, f64, Via)> = IdMap::default();
        for (list, via) in [(&lexical, Via::Lexical), (&vector, Via::Vector)] {
            let best = list.first().map_or(0.0, |x| x.1);
            if best <= 0.0 {
                continue;
            }
            for (id, score) in list {
                let part = (score / best).max(0.0) / sources;
                let e = fused.entry(*id).or_insert((0.0, 0.0, via.clone()));
                e.0 += part;
                if part > e.1 {
                    e.1 = part;
                    e.2 = via.clone();
                }
            }
        }
        let filter_only = cue.text.is_none() && cue.embedding.is_none();
        if filter_only {
            // A filter-only cue seeds the most recent matching memories.
            let mut all: Vec<(&EpisodeId, &EpisodeMeta)> =
                state.episodes.iter().filter(|(id, _)| seed(id)).collect();
            all.sort_by(|a, b| {
                b.1.occurred_at_ms
                    .cmp(&a.1.occurred_at_ms)
                    .then(b.0.cmp(a.0))
            });
            for (id, _) in all.into_iter().take(pool) {
                fused.insert(*id, (1.0, 1.0, Via::Filter));
            }
        }
        let seeds: Vec<(EpisodeId, f32)> = fused.iter().map(|(id, v)| (*id, v.0 as f32)).collect();
        let reached = activation::spread(&seeds, spread, |n| state.neighbours(n), accept);
        let mut ranked: Vec<(EpisodeId, f32, f32, f32, Via)> = reached
            .into_iter()
            .filter_map(|(id, r)| {
                let m = state.episodes.get(&id).filter(|m| wanted(m))?;
                let conf = decayed(m);
                let age_days = (now - m.occurred_at_ms).max(0) as f64 / 86_400_000.0;
                let recency = (-age_days / 30.0).exp() as f32;
                let via = if r.path.len() > 1 {
                    Via::Edge {
                        path: r.path.iter().map(id_string).collect(),
                    }
                } else {
                    fused.get(&id).map(|f| f.2.clone()).unwrap_or(Via::Lexical)
                };
                Some((
                    id,
                    activation::score(r.activation, conf, recency),
                    r.activation,
                    conf,
                    via,
                ))
            })
            .collect();
        if filter_only {
            // Nothing to rank by relevance (every seed has the same
            // activation): newest `occurred_at` first, then newest id.
            ranked.sort_by_key(|r| {
                let at = state
                    .episodes
                    .get(&r.0)
                    .map_or(i64::MIN, |m| m.occurred_at_ms);
                (std::cmp::Reverse(at), std::cmp::Reverse(r.0))
            });
        } else {
            ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        ranked.truncate(limit);
        let access: Vec<AccessRecord> = ranked
            .iter()
            .map(|r| {
                state
                    .episodes
                    .get(&r.0)
                    .map(EpisodeMeta::access)
                    .unwrap_or_default()
            })
            .collect();
        drop(state);
        let returned: Vec<EpisodeId> = ranked.iter().map(|r| r.0).collect();
        self.access.record(space.id, &returned, now);
        let mut out = Vec::with_capacity(ranked.len());
        for ((id, score, act, conf, via), access) in ranked.into_iter().zip(access) {
            if let Some(memory) = self.load_memory(&space, st, &id, false, access)? {
                out.push(Recalled {
                    memory,
                    score,
                    activation: act,
                    confidence: conf,
                    via,
                });
            }
        }
        Ok(out)
    }
}
