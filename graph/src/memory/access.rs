//! Access statistics: writing what recalls recorded (counts, last access)
//! in ACCESS records, and promoting the cold memories recalled back to the
//! warm tier.

use super::*;
use crate::access::AccessBatch;
use crate::background::{Fit, RecordBudget, encoded_len};

impl Graph {
    /// Access updates dropped because the buffer was full (see
    /// [`GraphConfig::access_buffer`]).
    pub fn access_dropped(&self) -> u64 {
        self.access.dropped()
    }

    /// Writes the access statistics recorded by recalls since the last call
    /// (per space, WAL records of at most 4096 episodes within the WAL's
    /// `max_payload`); returns how many episodes were updated. The
    /// background task calls this every `access_flush_ms`. A space that
    /// fails is logged with its name and counted
    /// (`engram_background_failures_total{task="access_flush"}`); its
    /// pending statistics are dropped and the other spaces are still written.
    pub fn flush_access(&self) -> Result<usize, GraphError> {
        let _writing = self.gate.enter()?;
        let _one = self.flushing.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = self.access.take();
        if pending.is_empty() {
            return Ok(0);
        }
        let by_id: HashMap<SpaceId, Arc<Space>> = read(&self.spaces)
            .values()
            .map(|s| (s.id, Arc::clone(s)))
            .collect();
        let mut written = 0;
        for (sid, updates) in pending {
            let Some(space) = by_id.get(&sid) else {
                continue; // deleted since
            };
            // A replica's copy is written only by its primary: reads served
            // here are not counted (statistics, never data).
            if self.admit(space).is_err() {
                continue;
            }
            // An unloaded space has nothing pending: the unload flushed it
            // (see the `residency` module).
            let Some(resident) = space.resident() else {
                continue;
            };
            let st = &resident.state;
            let _tiering = lock(&space.tiering);
            let records: Vec<(EpisodeId, AccessRecord, bool)> = {
                let state = read(st);
                updates
                    .iter()
                    .filter_map(|(id, (n, last))| {
                        state.episodes.get(id).map(|m| {
                            let r = AccessRecord {
                                count: m.access_count.saturating_add(*n),
                                last_ms: m.last_access_ms.max(*last),
                            };
                            (*id, r, m.cold)
                        })
                    })
                    .collect()
            };
            match self.flush_space_access(space, st, &records) {
                Ok(n) => written += n,
                Err(GraphError::SpaceNotFound(_)) => {} // deleted since
                Err(e) => self.background_failed(Task::AccessFlush, space, &e),
            }
        }
        Ok(written)
    }

    /// Writes one space's access statistics `records` (id, statistics,
    /// cold) for [`Graph::flush_access`]; returns how many were written.
    fn flush_space_access(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        records: &[(EpisodeId, AccessRecord, bool)],
    ) -> Result<usize, GraphError> {
        /// Episodes updated by one ACCESS record at most.
        const ACCESS_BATCH: usize = 4096;
        let max_payload = self.config.engine.wal.max_payload;
        let mut budget = RecordBudget::new(max_payload, ACCESS_BATCH);
        let mut batch = AccessBatch::default();
        let mut written = 0;
        for (id, r, cold) in records {
            let mut entry = vec![Mutation::PutAccess {
                id: *id,
                value: r.encode(),
            }];
            // Access promotes a cold memory back to the warm family.
            if *cold {
                if let Some(bytes) = self.engine.store().cold(space.id, id)? {
                    entry.push(Mutation::PutEpisode {
                        id: *id,
                        record: bytes,
                    });
                    entry.push(Mutation::DeleteCold { id: *id });
                }
            }
            let mut size = encoded_len(&entry);
            if entry.len() > 1 && budget.fit(size) == Fit::Never {
                tracing::warn!(
                    space = %space.record.name,
                    memory = %id_string(id),
                    bytes = size,
                    max_payload,
                    "cold memory too large to promote in one WAL record; it stays cold"
                );
                self.failures.count(Task::AccessFlush);
                entry.truncate(1);
                size = encoded_len(&entry);
            }
            match budget.fit(size) {
                Fit::Here => {}
                Fit::Next => {
                    written += self.write_access(space, st, std::mem::take(&mut batch))?;
                    budget.reset();
                }
                Fit::Never => {
                    // Only with a `max_payload` below a few dozen bytes.
                    tracing::warn!(
                        space = %space.record.name,
                        memory = %id_string(id),
                        max_payload,
                        "access statistics do not fit in a WAL record; dropped"
                    );
                    self.failures.count(Task::AccessFlush);
                    continue;
                }
            }
            budget.add(size);
            if entry.len() > 1 {
                batch.promoted.push(*id);
            }
            batch.updates.push((*id, *r));
            batch.mutations.extend(entry);
        }
        if !batch.updates.is_empty() {
            written += self.write_access(space, st, batch)?;
        }
        Ok(written)
    }

    /// Writes one ACCESS record and applies it to the in-memory metadata;
    /// returns how many episodes it updated.
    fn write_access(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        batch: AccessBatch,
    ) -> Result<usize, GraphError> {
        let AccessBatch {
            mutations,
            updates,
            promoted,
        } = batch;
        self.submit(space, kind::ACCESS, mutations)?;
        let mut gone = Vec::new();
        {
            let mut state = write(st);
            let s = &mut *state;
            for (id, r) in &updates {
                match s.episodes.get_mut(id) {
                    Some(m) => m.set_access(*r),
                    // Forgotten while this record was written.
                    None => gone.push(Mutation::DeleteAccess { id: *id }),
                }
            }
            for id in &promoted {
                if let Some(m) = s.episodes.get_mut(id) {
                    if m.cold {
                        m.cold = false;
                        s.cold -= 1;
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.submit(space, kind::FORGET, gone)?;
        }
        Ok(updates.len())
    }
}
