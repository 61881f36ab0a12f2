//! The memories of a space under dense slot numbers.
//!
//! Every memory gets a `u32` slot (freed slots are reused), and the indexes
//! (postings, document lengths, adjacency) refer to memories by slot. One
//! hash table maps ids to slots; everything else is a flat vector, which is
//! what keeps the in-memory cost per memory small.

use engram_lsm::EpisodeId;

use crate::ids::IdMap;
use crate::snapshot::{Reader, SnapshotError, Writer, invalid};

/// Id stored in a free slot (a ULID minted by this crate is never zero).
const FREE: EpisodeId = [0; 16];

#[derive(Debug)]
pub(crate) struct Table<M> {
    slot_of: IdMap<u32>,
    ids: Vec<EpisodeId>,
    metas: Vec<M>,
    free: Vec<u32>,
}

impl<M> Default for Table<M> {
    fn default() -> Self {
        Self {
            slot_of: IdMap::default(),
            ids: Vec::new(),
            metas: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<M: Default> Table<M> {
    /// Adds (or replaces) `id`; returns its slot.
    pub(crate) fn insert(&mut self, id: EpisodeId, meta: M) -> u32 {
        if let Some(&s) = self.slot_of.get(&id) {
            self.metas[s as usize] = meta;
            return s;
        }
        let s = match self.free.pop() {
            Some(s) => {
                self.ids[s as usize] = id;
                self.metas[s as usize] = meta;
                s
            }
            None => {
                self.ids.push(id);
                self.metas.push(meta);
                (self.ids.len() - 1) as u32
            }
        };
        self.slot_of.insert(id, s);
        s
    }

    /// Removes `id`; returns its former slot and metadata.
    pub(crate) fn remove(&mut self, id: &EpisodeId) -> Option<(u32, M)> {
        let s = self.slot_of.remove(id)?;
        self.ids[s as usize] = FREE;
        self.free.push(s);
        Some((s, std::mem::take(&mut self.metas[s as usize])))
    }
}

impl<M> Table<M> {
    pub(crate) fn slot(&self, id: &EpisodeId) -> Option<u32> {
        self.slot_of.get(id).copied()
    }

    /// Id in a slot (the zero id for a free slot).
    pub(crate) fn id(&self, slot: u32) -> &EpisodeId {
        &self.ids[slot as usize]
    }

    /// `true` if the slot holds a memory.
    pub(crate) fn is_live(&self, slot: u32) -> bool {
        self.ids.get(slot as usize).is_some_and(|i| *i != FREE)
    }

    /// Metadata in a live slot (a free slot's is the default).
    pub(crate) fn meta_at(&self, slot: u32) -> &M {
        &self.metas[slot as usize]
    }

    pub(crate) fn get(&self, id: &EpisodeId) -> Option<&M> {
        self.slot(id).map(|s| &self.metas[s as usize])
    }

    pub(crate) fn get_mut(&mut self, id: &EpisodeId) -> Option<&mut M> {
        let s = self.slot(id)?;
        Some(&mut self.metas[s as usize])
    }

    pub(crate) fn contains_key(&self, id: &EpisodeId) -> bool {
        self.slot_of.contains_key(id)
    }

    pub(crate) fn len(&self) -> usize {
        self.slot_of.len()
    }

    /// Number of slots, free ones included.
    pub(crate) fn slots(&self) -> u32 {
        self.ids.len() as u32
    }

    /// Live memories in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&EpisodeId, &M)> {
        self.ids
            .iter()
            .zip(&self.metas)
            .filter(|(id, _)| **id != FREE)
    }

    /// Writes the slots (ids, then each metadata by `meta`) and the free list.
    pub(crate) fn write_to(
        &self,
        w: &mut Writer,
        mut meta: impl FnMut(&mut Writer, &M) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        w.len(self.ids.len())?;
        for (id, m) in self.ids.iter().zip(&self.metas) {
            w.id(id)?;
            meta(w, m)?;
        }
        w.u32s(&self.free)
    }

    /// Reads what [`Table::write_to`] wrote, checking that the free list
    /// names exactly the free slots and that no id appears twice.
    pub(crate) fn read_from(
        r: &mut Reader<'_>,
        mut meta: impl FnMut(&mut Reader<'_>) -> Result<M, SnapshotError>,
    ) -> Result<Self, SnapshotError> {
        let n = r.len(u32::MAX as usize)?;
        let mut t = Table {
            slot_of: IdMap::default(),
            ids: Vec::with_capacity(n),
            metas: Vec::with_capacity(n),
            free: Vec::new(),
        };
        t.slot_of.reserve(n);
        for slot in 0..n as u32 {
            let id = r.id()?;
            t.metas.push(meta(r)?);
            t.ids.push(id);
            if id != FREE && t.slot_of.insert(id, slot).is_some() {
                return Err(invalid("an id in two slots"));
            }
        }
        t.free = r.u32s(n as u32)?;
        let mut seen = vec![false; n];
        for &s in &t.free {
            if t.ids[s as usize] != FREE || std::mem::replace(&mut seen[s as usize], true) {
                return Err(invalid("free list does not match the free slots"));
            }
        }
        if t.free.len() + t.slot_of.len() != n {
            return Err(invalid("free list does not match the free slots"));
        }
        Ok(t)
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.slot_of.shrink_to_fit();
        self.ids.shrink_to_fit();
        self.metas.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_reused_after_remove() {
        let mut t: Table<u8> = Table::default();
        assert_eq!(t.insert([1; 16], 10), 0);
        assert_eq!(t.insert([2; 16], 20), 1);
        assert_eq!(t.insert([1; 16], 11), 0, "re-insert keeps the slot");
        assert_eq!(t.remove(&[1; 16]), Some((0, 11)));
        assert!(!t.is_live(0) && t.is_live(1));
        assert_eq!(t.insert([3; 16], 30), 0, "slot reused");
        assert_eq!(t.id(0), &[3; 16]);
        assert_eq!(t.iter().map(|(_, m)| *m).collect::<Vec<_>>(), vec![30, 20]);
        assert_eq!((t.len(), t.get(&[2; 16])), (2, Some(&20)));
    }
}
