//! Forgetting a memory everywhere: its record, embedding, postings, access
//! statistics, archived copy and edges in both directions, in as many WAL
//! records as they need, then the in-memory indexes.

use super::*;
use crate::background::{Fit, RecordBudget, encoded_len};

impl Graph {
    /// Forgets a memory everywhere: content, embedding, postings, edges in
    /// both directions, archived copy, in-memory indexes, and what concepts
    /// derived from it: each concept it belongs to is replaced by one of its
    /// other members, or forgotten when too few remain
    /// (`Graph::release_concepts`). Durable. Works at any number of edges
    /// (several WAL records when one cannot hold them).
    pub fn forget(&self, space_name: &str, id: &str) -> Result<(), GraphError> {
        let _writing = self.gate.enter()?;
        let space = self.space(space_name)?;
        self.admit(&space)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let eid = parse_id(id)?;
        let _tiering = lock(&space.tiering);
        let mut state = write(st);
        if !state.episodes.contains_key(&eid) {
            return Err(GraphError::MemoryNotFound(id.to_owned()));
        }
        // Its concepts first, each durably: a crash in between leaves the
        // memory in place and its concepts already without it, never a
        // concept holding the words of a memory that is gone.
        self.release_concepts(&space, &mut state, &eid)?;
        if self.forget_locked(&space, &mut state, &eid)? {
            Ok(())
        } else {
            Err(GraphError::MemoryNotFound(id.to_owned()))
        }
    }

    /// Forgets `eid` (see [`Graph::forget`]) under the space's write and
    /// tiering locks, leaving its concepts to the caller; `false` (nothing
    /// done) when its record is missing.
    pub(super) fn forget_locked(
        &self,
        space: &Space,
        state: &mut SpaceState,
        eid: &EpisodeId,
    ) -> Result<bool, GraphError> {
        let eid = *eid;
        let Some(rec) = self.read_record(space, &eid)? else {
            return Ok(false);
        };
        let (tf, _) = text::term_frequencies(&rec.content);
        let outs: Vec<EpisodeId> = state.outgoing(&eid).into_iter().map(|(t, _)| t).collect();
        let ins: Vec<EpisodeId> = state.incoming(&eid);
        // A well-linked memory's deletions can exceed one WAL record: its
        // edges and postings go first, in as many records as they need
        // within `max_payload`, and the record deleting the memory itself
        // comes last. Each record only deletes, so replaying it again
        // changes nothing; a crash (or a failed write) between them leaves
        // the memory in place with some of its own edges or index entries
        // gone, and forgetting it again finishes the job. No other memory
        // loses anything but its edges to this one.
        let mut leading = Vec::with_capacity(outs.len() + ins.len() + tf.len());
        for to in &outs {
            leading.push(Mutation::DeleteEdge { from: eid, to: *to });
        }
        for from in &ins {
            leading.push(Mutation::DeleteEdge {
                from: *from,
                to: eid,
            });
        }
        for term in tf.keys() {
            leading.push(Mutation::DeletePosting {
                term: term.clone(),
                id: eid,
            });
        }
        let last = vec![
            Mutation::DeleteVector { id: eid },
            Mutation::DeleteAccess { id: eid },
            Mutation::DeleteCold { id: eid },
            Mutation::DeleteEpisode { id: eid },
        ];
        for m in forget_records(self.config.engine.wal.max_payload, leading, last) {
            self.submit(space, kind::FORGET, m)?;
        }

        lock(&space.hot).remove(&eid);
        if let Some(slot) = state.episodes.slot(&eid) {
            state.postings = state.postings.saturating_sub(tf.len());
            state.lexical.remove(slot, tf.into_keys());
            state.edges.remove_node(slot);
        }
        if let Some((_, meta)) = state.episodes.remove(&eid) {
            if meta.cold {
                state.cold -= 1;
            }
            state.tagsets.release(meta.tags);
        }
        if let Some(ann) = state.ann.as_mut() {
            ann.remove(&eid);
        }
        for from in ins {
            // A member of a forgotten concept can be consolidated again.
            let still = state
                .outgoing(&from)
                .iter()
                .any(|(_, e)| e.kind == EdgeKind::Consolidation);
            if let Some(m) = state.episodes.get_mut(&from) {
                m.consolidated = still;
            }
        }
        state.sessions.retain(|_, last| *last != eid);
        Ok(true)
    }
}

/// Splits a forget's deletions into WAL records within `max_payload`:
/// `leading` in order, as many per record as fit, then `last` whole, in the
/// final record. (A single deletion larger than the limit, possible only
/// with an absurdly small `max_payload`, gets a record of its own, which the
/// WAL refuses with its limit in the error.)
fn forget_records(
    max_payload: u32,
    leading: Vec<Mutation>,
    last: Vec<Mutation>,
) -> Vec<Vec<Mutation>> {
    let mut budget = RecordBudget::new(max_payload, usize::MAX);
    let mut records = Vec::new();
    let mut current = Vec::new();
    for m in leading {
        let size = encoded_len(std::slice::from_ref(&m));
        if budget.fit(size) != Fit::Here && !current.is_empty() {
            records.push(std::mem::take(&mut current));
            budget.reset();
        }
        budget.add(size);
        current.push(m);
    }
    let size = encoded_len(&last);
    if budget.fit(size) != Fit::Here && !current.is_empty() {
        records.push(std::mem::take(&mut current));
    }
    current.extend(last);
    records.push(current);
    records
}
