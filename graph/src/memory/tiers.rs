//! Storage tiers and vector upkeep: moving idle memories to the cold tier,
//! and linking the HNSW backlog of the loaded spaces.

use super::*;
use crate::background::{Fit, RecordBudget, encoded_len};

impl Graph {
    /// Moves the space's memories that were neither stored nor recalled for
    /// `idle` to the cold tier (zstd column family); returns how many moved.
    /// Recall still finds them; being recalled moves them back. The moves
    /// are WAL records of at most 1024 memories within the WAL's
    /// `max_payload`; a memory too large to move in one record stays warm
    /// (logged, and counted in `engram_background_failures_total`).
    pub fn archive(
        &self,
        space_name: &str,
        idle: std::time::Duration,
    ) -> Result<usize, GraphError> {
        let space = self.space(space_name)?;
        self.archive_space(&space, idle, Use::Request)
    }

    /// One background run of [`Graph::archive`] over every loaded space with
    /// `cold_after_sec` (nothing when it is 0). A space that fails is logged
    /// with its name and counted
    /// (`engram_background_failures_total{task="archive"}`), and the run goes
    /// on with the others; only a shutdown stops it.
    pub fn archive_loaded(&self) -> Result<usize, GraphError> {
        if self.config.cold_after_sec == 0 {
            return Ok(0);
        }
        let idle = std::time::Duration::from_secs(self.config.cold_after_sec);
        let all: Vec<Arc<Space>> = read(&self.spaces)
            .values()
            .filter(|s| s.is_loaded())
            .cloned()
            .collect();
        let mut moved = 0;
        for space in all {
            match self.archive_space(&space, idle, Use::Background) {
                Ok(n) => moved += n,
                Err(GraphError::SpaceNotFound(_)) => {}
                Err(GraphError::ShuttingDown) => return Err(GraphError::ShuttingDown),
                Err(e) => self.background_failed(Task::Archive, &space, &e),
            }
        }
        Ok(moved)
    }

    /// Archives one space's idle memories; a background pass (`by`) skips a
    /// space that was unloaded meanwhile.
    fn archive_space(
        &self,
        space: &Space,
        idle: std::time::Duration,
        by: Use,
    ) -> Result<usize, GraphError> {
        /// Memories moved by one ARCHIVE record at most.
        const ARCHIVE_BATCH: usize = 1024;
        let _writing = self.gate.enter()?;
        let Some(held) = self.state_as(space, by)? else {
            return Ok(0);
        };
        let st: &RwLock<SpaceState> = &held;
        let cutoff = now_ms().saturating_sub(i64::try_from(idle.as_millis()).unwrap_or(i64::MAX));
        let _tiering = lock(&space.tiering);
        let ids: Vec<EpisodeId> = read(st)
            .episodes
            .iter()
            .filter(|(_, m)| !m.cold && m.stored_at_ms.max(m.last_access_ms) <= cutoff)
            .map(|(id, _)| *id)
            .collect();
        let max_payload = self.config.engine.wal.max_payload;
        let mut budget = RecordBudget::new(max_payload, ARCHIVE_BATCH);
        let mut m = Vec::new();
        let mut done = Vec::new();
        let mut moved = 0;
        for id in ids {
            let Some(bytes) = self.engine.store().episode(space.id, &id)? else {
                continue;
            };
            let entry = [
                Mutation::DeleteEpisode { id },
                Mutation::PutCold { id, record: bytes },
            ];
            let size = encoded_len(&entry);
            match budget.fit(size) {
                Fit::Here => {}
                Fit::Next => {
                    let (batch, moving) = (std::mem::take(&mut m), std::mem::take(&mut done));
                    moved += self.archive_batch(space, st, batch, moving)?;
                    budget.reset();
                }
                Fit::Never => {
                    tracing::warn!(
                        space = %space.record.name,
                        memory = %id_string(&id),
                        bytes = size,
                        max_payload,
                        "memory too large to move to the cold tier in one WAL record; it stays warm"
                    );
                    self.failures.count(Task::Archive);
                    continue;
                }
            }
            budget.add(size);
            m.extend(entry);
            done.push(id);
        }
        if !done.is_empty() {
            moved += self.archive_batch(space, st, m, done)?;
        }
        Ok(moved)
    }

    /// Writes one ARCHIVE record (`m`, moving `done`) and marks its memories
    /// cold; returns how many it moved.
    fn archive_batch(
        &self,
        space: &Space,
        st: &RwLock<SpaceState>,
        m: Vec<Mutation>,
        done: Vec<EpisodeId>,
    ) -> Result<usize, GraphError> {
        self.submit(space, kind::ARCHIVE, m)?;
        let mut state = write(st);
        let mut hot = lock(&space.hot);
        let s = &mut *state;
        for id in &done {
            if let Some(meta) = s.episodes.get_mut(id) {
                if !meta.cold {
                    meta.cold = true;
                    s.cold += 1;
                }
            }
            hot.remove(id);
        }
        Ok(done.len())
    }

    /// Links up to `budget` vectors of each loaded space's HNSW backlog (left
    /// by a restart or by crossing `exact_search_below`) and relinks up to
    /// `reclaim_budget` nodes around removed vectors ([`Hnsw::reclaim`]);
    /// returns how many vectors were linked. The background task calls this
    /// ten times a second with small budgets, so the space's lock is never
    /// held for long.
    pub fn link_vectors(&self, budget: usize, reclaim_budget: usize) -> usize {
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        let mut done = 0;
        for space in all {
            let Some(resident) = space.resident() else {
                continue;
            };
            let st = &resident.state;
            if read(st)
                .ann
                .as_ref()
                .is_some_and(|a| a.backlog() > 0 || a.reclaim_due())
            {
                if let Some(ann) = write(st).ann.as_mut() {
                    done += ann.link_backlog(budget);
                    ann.reclaim(reclaim_budget);
                }
            }
        }
        done
    }
}
