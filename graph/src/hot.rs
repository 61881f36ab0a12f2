//! The hot tier's record cache: decoded episode records of the most
//! recently used memories of a space, bounded by the space's
//! `hot_capacity`. Least recently used entries are evicted first.

use std::collections::BTreeMap;
use std::sync::Arc;

use engram_lsm::EpisodeId;

use crate::ids::IdMap;
use crate::record::EpisodeRecord;

#[derive(Debug)]
pub(crate) struct HotCache {
    entries: IdMap<(Arc<EpisodeRecord>, u64)>,
    order: BTreeMap<u64, EpisodeId>,
    tick: u64,
    capacity: usize,
}

impl HotCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            entries: IdMap::default(),
            order: BTreeMap::new(),
            tick: 0,
            capacity,
        }
    }

    /// The cached record, now the most recently used.
    pub(crate) fn get(&mut self, id: &EpisodeId) -> Option<Arc<EpisodeRecord>> {
        self.tick += 1;
        let tick = self.tick;
        let (rec, used) = self.entries.get_mut(id)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, *id);
        Some(Arc::clone(rec))
    }

    /// Caches `rec` as the most recently used, evicting the least recently
    /// used beyond capacity.
    pub(crate) fn insert(&mut self, id: EpisodeId, rec: Arc<EpisodeRecord>) {
        if self.capacity == 0 {
            return;
        }
        self.remove(&id);
        self.tick += 1;
        self.entries.insert(id, (rec, self.tick));
        self.order.insert(self.tick, id);
        while self.entries.len() > self.capacity {
            match self.order.pop_first() {
                Some((_, old)) => {
                    self.entries.remove(&old);
                }
                None => break,
            }
        }
    }

    pub(crate) fn remove(&mut self, id: &EpisodeId) {
        if let Some((_, used)) = self.entries.remove(id) {
            self.order.remove(&used);
        }
    }

    pub(crate) fn contains(&self, id: &EpisodeId) -> bool {
        self.entries.contains_key(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(c: &str) -> Arc<EpisodeRecord> {
        Arc::new(EpisodeRecord {
            content: c.into(),
            confidence: 0.5,
            tags: vec![],
            metadata_json: "{}".into(),
            session: None,
            occurred_at_ms: 0,
            stored_at_ms: 0,
            terms: 1,
            concept: false,
        })
    }

    #[test]
    fn evicts_the_least_recently_used_beyond_capacity() {
        let mut h = HotCache::new(2);
        h.insert([1; 16], rec("a"));
        h.insert([2; 16], rec("b"));
        assert!(h.get(&[1; 16]).is_some(), "1 is now the most recent");
        h.insert([3; 16], rec("c"));
        assert!(!h.contains(&[2; 16]), "2 was least recently used");
        assert!(h.contains(&[1; 16]) && h.contains(&[3; 16]));
        assert_eq!(h.len(), 2);
        h.remove(&[1; 16]);
        assert_eq!(h.len(), 1);
        let mut off = HotCache::new(0);
        off.insert([1; 16], rec("a"));
        assert_eq!(off.len(), 0);
    }
}
