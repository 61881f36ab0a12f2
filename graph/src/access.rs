//! Access statistics recorded by recall, written in the background.
//!
//! Recall must never wait for a disk write (ARCHITECTURE "A read", step 4),
//! so it only adds the returned ids to this buffer; [`crate::Graph::flush_access`]
//! (run by the background task every `access_flush_ms`) turns what has
//! accumulated into WAL records per space ([`AccessBatch`], each within
//! the WAL's `max_payload`). The buffer is bounded: when it
//! is full, further accesses are dropped and counted, since they are
//! statistics that only tune the forgetting curve.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use engram_lsm::{EpisodeId, Mutation, SpaceId};

use crate::ids::IdMap;
use crate::record::AccessRecord;

/// Accesses per space and episode: how many, and the latest time.
pub(crate) type Pending = HashMap<SpaceId, IdMap<(u32, i64)>>;

/// One ACCESS WAL record being gathered by [`crate::Graph::flush_access`]
/// (kept within the WAL's payload limit by its caller).
#[derive(Debug, Default)]
pub(crate) struct AccessBatch {
    /// The record's mutations: statistics, and promotions of cold records.
    pub(crate) mutations: Vec<Mutation>,
    /// Episodes and their new statistics.
    pub(crate) updates: Vec<(EpisodeId, AccessRecord)>,
    /// Cold episodes the record moves back to the warm family.
    pub(crate) promoted: Vec<EpisodeId>,
}

#[derive(Debug)]
pub(crate) struct AccessBuffer {
    pending: Mutex<(Pending, usize)>,
    capacity: usize,
    dropped: AtomicU64,
}

impl AccessBuffer {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            pending: Mutex::new((HashMap::new(), 0)),
            capacity,
            dropped: AtomicU64::new(0),
        }
    }

    /// Notes that `ids` were returned at `now_ms`. Never blocks on I/O.
    pub(crate) fn record(&self, space: SpaceId, ids: &[EpisodeId], now_ms: i64) {
        if ids.is_empty() {
            return;
        }
        let mut g = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (pending, len) = &mut *g;
        let per_space = pending.entry(space).or_default();
        for id in ids {
            match per_space.get_mut(id) {
                Some(e) => {
                    e.0 = e.0.saturating_add(1);
                    e.1 = e.1.max(now_ms);
                }
                None if *len < self.capacity => {
                    per_space.insert(*id, (1, now_ms));
                    *len += 1;
                }
                None => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Everything recorded since the last call.
    pub(crate) fn take(&self) -> Pending {
        let mut g = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.1 = 0;
        std::mem::take(&mut g.0)
    }

    /// Accesses dropped because the buffer was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_merge_and_capacity_bounds_distinct_entries() {
        let b = AccessBuffer::new(2);
        b.record(1, &[[1; 16], [2; 16]], 10);
        b.record(1, &[[1; 16], [3; 16]], 20);
        assert_eq!(b.dropped(), 1, "a third distinct id does not fit");
        let p = b.take();
        assert_eq!(p[&1][&[1; 16]], (2, 20));
        assert_eq!(p[&1][&[2; 16]], (1, 10));
        assert!(b.take().is_empty());
        b.record(2, &[[3; 16]], 30);
        assert_eq!(b.take()[&2][&[3; 16]], (1, 30), "room again after take");
    }
}
