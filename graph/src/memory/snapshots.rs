//! Loading a space's in-memory state (from its index snapshot or the warm
//! store), and writing the index snapshots at a clean shutdown.

use super::*;

impl Graph {
    /// Builds the space's in-memory state from its index snapshot, or else
    /// from the warm store (removing what a crash left of forgotten memories).
    pub(super) fn load_state(&self, space: &Space) -> Result<SpaceState, GraphError> {
        let started = Instant::now();
        let (loaded, source) = match self.load_snapshot(space)? {
            Some(st) => (st, "index snapshot"),
            None => {
                let (loaded, orphans) = load_space(
                    &self.engine,
                    space.id,
                    space.record.embedding_dim,
                    &self.config,
                )?;
                // A replica leaves them to its primary, whose own cleanup
                // reaches it as a record.
                if !orphans.is_empty() && self.admit(space).is_ok() {
                    tracing::info!(space = %space.record.name, count = orphans.len(), "removing entries of forgotten memories left by a crash");
                    self.submit(space, kind::FORGET, orphans)?;
                }
                // Rebuilt from the store: exact again.
                space.inexact.store(false, Ordering::SeqCst);
                (loaded, "warm store")
            }
        };
        tracing::info!(
            space = %space.record.name,
            memories = loaded.episodes.len(),
            from = source,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "space loaded into memory"
        );
        Ok(loaded)
    }

    /// The space's indexes from its snapshot, if one was written at the
    /// last clean shutdown or when the space was last unloaded, and it
    /// reflects exactly what the store holds now
    /// (the file is removed either way). Vectors come from the store.
    fn load_snapshot(&self, space: &Space) -> Result<Option<SpaceState>, GraphError> {
        let store = self.engine.store();
        let seq = store.applied_seq(space.id)?;
        let (dim, params) = (space.record.embedding_dim, self.config.ann);
        let taken = snapshot::take(&self.index_dir, space.id, seq, |r| {
            SpaceState::read_from(r, dim, params)
        });
        let mut st = match taken {
            Ok(Some(st)) => st,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.snapshots_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(space = %space.record.name, error = %e, "index snapshot not used; rebuilding the indexes from the warm store");
                return Ok(None);
            }
        };
        if let Some(ann) = st.ann.as_mut() {
            for entry in store.scan_space(Cf::Vectors, space.id)? {
                let (k, v) = entry?;
                let (_, id) = keys::decode_episode(&k)
                    .ok_or_else(|| GraphError::Corrupt("vector key".into()))?;
                ann.insert(id, &record::vector_from_bytes(&v)?);
            }
            ann.set_graph_from(self.config.exact_search_below);
        }
        self.snapshots_used.fetch_add(1, Ordering::Relaxed);
        Ok(Some(st))
    }

    /// Spaces loaded from an index snapshot since open, and snapshots found
    /// but refused (damaged, or not matching the store).
    pub fn snapshot_loads(&self) -> (u64, u64) {
        (
            self.snapshots_used.load(Ordering::Relaxed),
            self.snapshots_refused.load(Ordering::Relaxed),
        )
    }

    /// Stops accepting writes (they fail with [`GraphError::ShuttingDown`])
    /// and waits up to `wait` for those in flight; `true` once none is left.
    /// For a clean shutdown, before [`Graph::save_index_snapshots`].
    pub fn seal_writes(&self, wait: Duration) -> bool {
        self.gate.sealed.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + wait;
        while !self.gate.quiescent() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    /// Writes every loaded space's indexes to `<data dir>/indexes/`, so the
    /// next start reads them instead of rebuilding them from the store.
    /// Only after [`Graph::seal_writes`] returned `true`; otherwise nothing
    /// is written. A failed space is logged and left to be rebuilt; after a
    /// storage engine failure ([`Engine::failure`]) every loaded space is.
    pub fn save_index_snapshots(&self) -> SnapshotReport {
        let mut report = SnapshotReport::default();
        if !self.gate.quiescent() {
            tracing::warn!("writes still in flight: index snapshots not written");
            return report;
        }
        // After a failed write the in-memory indexes can disagree with the
        // store although the sequences match (a record applied whose caller
        // saw an error, so it never reached the indexes): only a rebuild
        // from the store is exact then.
        let failure = self.engine.failure();
        // Likewise for a space holding a record applied after its writer
        // was told the write failed: its indexes may lack it.
        let late = self.engine.spaces_applied_after_error();
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        for space in all {
            let Some(resident) = space.resident() else {
                continue; // not loaded: its snapshot, if any, is still exact
            };
            let st = &resident.state;
            if let Some(reason) = &failure {
                report.failed += 1;
                tracing::warn!(space = %space.record.name, failure = %reason, "the storage engine failed: index snapshot not written; the next start rebuilds this space's indexes");
                let _ = snapshot::remove(&self.index_dir, space.id);
                continue;
            }
            if late.contains(&space.id) || space.inexact.load(Ordering::SeqCst) {
                report.failed += 1;
                tracing::warn!(space = %space.record.name, "a record of this space was applied after its write was reported failed: index snapshot not written; the next start rebuilds this space's indexes");
                let _ = snapshot::remove(&self.index_dir, space.id);
                continue;
            }
            let state = read(st);
            let written = self
                .engine
                .store()
                .applied_seq(space.id)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|seq| {
                    if seq + 1 != self.engine.next_seq(space.id) {
                        return Err(std::io::Error::other("records not yet applied"));
                    }
                    snapshot::write(&self.index_dir, space.id, seq, |w| state.write_to(w))
                });
            match written {
                Ok(bytes) => {
                    report.spaces += 1;
                    report.memories += state.episodes.len();
                    report.bytes += bytes;
                    // Listed without loading it after the restart.
                    if let Ok(seq) = self.engine.store().applied_seq(space.id) {
                        self.record_figures_at_shutdown(&space, &state, seq);
                    }
                }
                Err(e) => {
                    report.failed += 1;
                    tracing::warn!(space = %space.record.name, error = %e, "writing the index snapshot failed; the next start rebuilds this space's indexes");
                    let _ = snapshot::remove(&self.index_dir, space.id);
                }
            }
        }
        report
    }
}

/// Builds a space's in-memory state from the warm store. Also returns the
/// deletions that remove what a crash in the middle of a race with forget
/// can leave behind (an edge or access row of a forgotten episode).
fn load_space(
    engine: &Engine,
    space: SpaceId,
    dim: Option<u32>,
    config: &GraphConfig,
) -> Result<(SpaceState, Vec<Mutation>), GraphError> {
    let store = engine.store();
    // Vectors load without building graph links (minutes for a large
    // space); the backlog is linked afterwards by inserts and the
    // background task, and searches scan until it is done.
    let mut st = SpaceState::new(dim, config.ann, usize::MAX);
    let mut last_in_session: HashMap<String, EpisodeId> = HashMap::new();
    let warm = store.scan_space(Cf::Episodes, space)?.map(|e| (false, e));
    let cold = store.scan_space(Cf::Cold, space)?.map(|e| (true, e));
    for (is_cold, entry) in warm.chain(cold) {
        let (k, v) = entry?;
        let (_, id) =
            keys::decode_episode(&k).ok_or_else(|| GraphError::Corrupt("episode key".into()))?;
        let rec: EpisodeRecord = record::decode(&v, "episode")?;
        if let Some(s) = &rec.session {
            // ULIDs sort by creation time: the largest is the session's last.
            let e = last_in_session.entry(s.clone()).or_insert(id);
            if id > *e {
                *e = id;
            }
        }
        let tags = st.tagsets.intern(&rec.tags);
        let slot = st.episodes.insert(
            id,
            EpisodeMeta {
                confidence: rec.confidence,
                tags,
                occurred_at_ms: rec.occurred_at_ms,
                stored_at_ms: rec.stored_at_ms,
                last_access_ms: 0,
                access_count: 0,
                concept: rec.concept,
                consolidated: false,
                cold: is_cold,
            },
        );
        st.lexical.add_document(slot, rec.terms);
        st.cold += usize::from(is_cold);
    }
    st.sessions = last_in_session;
    let mut orphans = Vec::new();
    for entry in store.scan_space(Cf::Access, space)? {
        let (k, v) = entry?;
        let (_, id) =
            keys::decode_episode(&k).ok_or_else(|| GraphError::Corrupt("access key".into()))?;
        match st.episodes.get_mut(&id) {
            Some(m) => m.set_access(AccessRecord::decode(&v)?),
            None => orphans.push(Mutation::DeleteAccess { id }),
        }
    }
    for entry in store.scan_space(Cf::Terms, space)? {
        let (k, v) = entry?;
        let (_, term, id) =
            keys::decode_posting(&k).ok_or_else(|| GraphError::Corrupt("posting key".into()))?;
        let tf: [u8; 4] = v
            .as_ref()
            .try_into()
            .map_err(|_| GraphError::Corrupt("posting value".into()))?;
        match st.episodes.slot(&id) {
            Some(slot) => {
                st.lexical.add_posting(&term, slot, u32::from_be_bytes(tf));
                st.postings += 1;
            }
            None => orphans.push(Mutation::DeletePosting { term, id }),
        }
    }
    for entry in store.scan_space(Cf::Vectors, space)? {
        let (k, v) = entry?;
        let (_, id) =
            keys::decode_episode(&k).ok_or_else(|| GraphError::Corrupt("vector key".into()))?;
        if let Some(ann) = st.ann.as_mut() {
            ann.insert(id, &record::vector_from_bytes(&v)?);
        }
    }
    for entry in store.scan_space(Cf::Edges, space)? {
        let (k, v) = entry?;
        let (_, from, to) =
            keys::decode_edge(&k).ok_or_else(|| GraphError::Corrupt("edge key".into()))?;
        let e: EdgeRecord = record::decode(&v, "edge")?;
        if !st.add_edge(from, to, e) {
            orphans.push(Mutation::DeleteEdge { from, to });
        }
    }
    if let Some(ann) = st.ann.as_mut() {
        ann.set_graph_from(config.exact_search_below);
    }
    st.lexical.shrink_to_fit();
    st.episodes.shrink_to_fit();
    st.edges.shrink_to_fit();
    Ok((st, orphans))
}
