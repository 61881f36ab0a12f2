//! Hash maps keyed by episode ids.
//!
//! Ids are ULIDs minted by this crate (clients cannot choose them): the last
//! eight bytes are random, so they are already a good hash. Using them
//! directly instead of SipHash over 16 bytes makes the lookups on recall's
//! hot paths (filters, spreading, index maps) several times cheaper.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use engram_lsm::EpisodeId;

/// Hasher for [`EpisodeId`] keys: folds the bytes it is given into a u64.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // An array key is hashed as its bytes: keep the random tail and mix
        // in the rest so non-ULID keys (tests) still spread.
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 =
                self.0.rotate_left(29) ^ u64::from_le_bytes(b).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
}

/// Map keyed by episode id.
pub type IdMap<V> = HashMap<EpisodeId, V, BuildHasherDefault<IdHasher>>;
/// Set of episode ids.
pub type IdSet = HashSet<EpisodeId, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ids_spread_across_buckets() {
        let mut m: IdMap<u32> = IdMap::default();
        for i in 0..10_000u32 {
            let mut id = [0u8; 16];
            id[12..].copy_from_slice(&i.to_be_bytes());
            m.insert(id, i);
        }
        assert_eq!(m.len(), 10_000);
        let hashes: std::collections::HashSet<u64> = (0..10_000u32)
            .map(|i| {
                let mut id = [0u8; 16];
                id[12..].copy_from_slice(&i.to_be_bytes());
                let mut h = IdHasher::default();
                std::hash::Hash::hash(&id, &mut h);
                h.finish() >> 50
            })
            .collect();
        assert!(hashes.len() > 8_000, "top bits must vary: {}", hashes.len());
    }
}
