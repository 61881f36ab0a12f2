//! Key encodings, in one place. Every data key starts with the 4-byte
//! big-endian space id, and numeric parts are big-endian, so the keys of one
//! space are contiguous (per-space scans and range deletion) and sort by id.
//!
//! | column family | key | value |
//! |---|---|---|
//! | `meta` | `0x00` `"applied_lsn"` | u64 BE: highest WAL LSN applied |
//! | `meta` | `0x01` space(4) | u64 BE: highest per-space sequence applied |
//! | `meta` | `0x02` space(4) | space record (opaque, owned by the graph) |
//! | `meta` | `0x03` space(4) | episode id(16): where the space's last consolidation run stopped |
//! | `meta` | `0x04` space(4) | u64 BE: LSN of the last record that erased content of the space and is not purged yet ([`crate::Store::purge`]) |
//! | `meta` | `0x05` space(4) | the space's figures (counts) while its indexes are not in memory (opaque, owned by the graph; written directly, not through the WAL) |
//! | `meta` | `0x06` space(4) | the space's replication state: cluster uid, promise, epoch history (opaque, owned by the replication layer; synced, not through the WAL) |
//! | `meta` | `0x07` space(4) | empty: a copy of a space is being installed under this id and is not committed yet ([`crate::Store::install_begin`]) |
//! | `episodes` | space(4) id(16) | episode record |
//! | `edges` | space(4) from(16) to(16) | edge record |
//! | `terms` | space(4) term length(2, BE) term(UTF-8) id(16) | posting value |
//! | `vectors` | space(4) id(16) | embedding bytes |
//! | `cold` | space(4) id(16) | archived episode record (zstd) |
//! | `access` | space(4) id(16) | access statistics: count u32 BE, last access ms i64 BE |
//!
//! `applied` entries are kept when a space is dropped, so replaying that
//! space's old records after a crash can never resurrect it.

use crate::{EpisodeId, SpaceId, StoreError};

/// Longest term (in bytes) a posting key can hold.
pub const MAX_TERM_LEN: usize = 1024;

pub(crate) const APPLIED_LSN: &[u8] = b"\x00applied_lsn";
const APPLIED_SEQ: u8 = 0x01;
const SPACE_RECORD: u8 = 0x02;
const CONSOLIDATION_CURSOR: u8 = 0x03;
const PURGE_DUE: u8 = 0x04;
const SPACE_FIGURES: u8 = 0x05;
const REPLICA_STATE: u8 = 0x06;
const INSTALLING: u8 = 0x07;

/// Space ids must stay below this so that `space + 1` bounds a range delete.
pub const MAX_SPACE_ID: SpaceId = u32::MAX - 1;

pub(crate) fn check_space(space: SpaceId) -> Result<(), StoreError> {
    if space > MAX_SPACE_ID {
        return Err(StoreError::InvalidSpace(space));
    }
    Ok(())
}

pub(crate) fn applied_seq(space: SpaceId) -> [u8; 5] {
    let mut k = [APPLIED_SEQ, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

pub(crate) fn space_record(space: SpaceId) -> [u8; 5] {
    let mut k = [SPACE_RECORD, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

pub(crate) fn consolidation_cursor(space: SpaceId) -> [u8; 5] {
    let mut k = [CONSOLIDATION_CURSOR, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

pub(crate) fn purge_due(space: SpaceId) -> [u8; 5] {
    let mut k = [PURGE_DUE, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

pub(crate) fn space_figures(space: SpaceId) -> [u8; 5] {
    let mut k = [SPACE_FIGURES, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

pub(crate) fn replica_state(space: SpaceId) -> [u8; 5] {
    let mut k = [REPLICA_STATE, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

pub(crate) fn installing(space: SpaceId) -> [u8; 5] {
    let mut k = [INSTALLING, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

pub(crate) fn meta_prefix_installing() -> [u8; 1] {
    [INSTALLING]
}

pub(crate) fn meta_prefix_replica_state() -> [u8; 1] {
    [REPLICA_STATE]
}

pub(crate) fn meta_prefix_purge_due() -> [u8; 1] {
    [PURGE_DUE]
}

pub(crate) fn meta_prefix_applied() -> [u8; 1] {
    [APPLIED_SEQ]
}

pub(crate) fn meta_prefix_spaces() -> [u8; 1] {
    [SPACE_RECORD]
}

/// Space id of a `0x01` to `0x07` meta key.
pub(crate) fn meta_space(key: &[u8]) -> Option<SpaceId> {
    let b: [u8; 4] = key.get(1..5)?.try_into().ok()?;
    Some(SpaceId::from_be_bytes(b))
}

/// All keys of `space` in a data column family lie in `[space_start, space_end)`.
pub fn space_start(space: SpaceId) -> [u8; 4] {
    space.to_be_bytes()
}

/// Exclusive end of `space`'s key range (valid for `space <= MAX_SPACE_ID`).
pub fn space_end(space: SpaceId) -> [u8; 4] {
    space.saturating_add(1).to_be_bytes()
}

/// `space | id` — key of an episode, a vector, a cold record or access statistics.
pub fn episode(space: SpaceId, id: &EpisodeId) -> [u8; 20] {
    let mut k = [0; 20];
    k[..4].copy_from_slice(&space.to_be_bytes());
    k[4..].copy_from_slice(id);
    k
}

/// `space | from | to` — key of an edge.
pub fn edge(space: SpaceId, from: &EpisodeId, to: &EpisodeId) -> [u8; 36] {
    let mut k = [0; 36];
    k[..4].copy_from_slice(&space.to_be_bytes());
    k[4..20].copy_from_slice(from);
    k[20..].copy_from_slice(to);
    k
}

/// `space | from` — prefix of every edge leaving `from`.
pub fn edges_from(space: SpaceId, from: &EpisodeId) -> [u8; 20] {
    episode(space, from)
}

/// `space | len | term` — prefix of every posting of `term`.
pub fn term_prefix(space: SpaceId, term: &str) -> Result<Vec<u8>, StoreError> {
    let len = term.len();
    if len > MAX_TERM_LEN {
        return Err(StoreError::TermTooLong { len });
    }
    let mut k = Vec::with_capacity(4 + 2 + len + 16);
    k.extend_from_slice(&space.to_be_bytes());
    k.extend_from_slice(&(len as u16).to_be_bytes());
    k.extend_from_slice(term.as_bytes());
    Ok(k)
}

/// `space | len | term | id` — key of one posting.
pub fn posting(space: SpaceId, term: &str, id: &EpisodeId) -> Result<Vec<u8>, StoreError> {
    let mut k = term_prefix(space, term)?;
    k.extend_from_slice(id);
    Ok(k)
}

/// Decodes an episode-shaped key (`space | id`).
pub fn decode_episode(key: &[u8]) -> Option<(SpaceId, EpisodeId)> {
    if key.len() != 20 {
        return None;
    }
    let space = SpaceId::from_be_bytes(key[..4].try_into().ok()?);
    Some((space, key[4..].try_into().ok()?))
}

/// Decodes an edge key.
pub fn decode_edge(key: &[u8]) -> Option<(SpaceId, EpisodeId, EpisodeId)> {
    if key.len() != 36 {
        return None;
    }
    let space = SpaceId::from_be_bytes(key[..4].try_into().ok()?);
    Some((
        space,
        key[4..20].try_into().ok()?,
        key[20..].try_into().ok()?,
    ))
}

/// Decodes a posting key into (space, term, id).
pub fn decode_posting(key: &[u8]) -> Option<(SpaceId, String, EpisodeId)> {
    let space = SpaceId::from_be_bytes(key.get(..4)?.try_into().ok()?);
    let len = u16::from_be_bytes(key.get(4..6)?.try_into().ok()?) as usize;
    if key.len() != 6 + len + 16 {
        return None;
    }
    let term = std::str::from_utf8(&key[6..6 + len]).ok()?.to_owned();
    Some((space, term, key[6 + len..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip(space in 0..=MAX_SPACE_ID, a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), term in "\\PC{0,40}") {
            prop_assert_eq!(decode_episode(&episode(space, &a)), Some((space, a)));
            prop_assert_eq!(decode_edge(&edge(space, &a, &b)), Some((space, a, b)));
            let p = posting(space, &term, &a).expect("posting key");
            prop_assert_eq!(decode_posting(&p), Some((space, term.clone(), a)));
            prop_assert!(p.starts_with(&term_prefix(space, &term).expect("prefix")));
        }

        #[test]
        fn every_key_of_a_space_sorts_inside_its_range(space in 0..=MAX_SPACE_ID, a in any::<[u8; 16]>(), b in any::<[u8; 16]>(), term in "\\PC{0,40}") {
            let start = space_start(space);
            let end = space_end(space);
            let keys = [episode(space, &a).to_vec(), edge(space, &a, &b).to_vec(), posting(space, &term, &a).expect("key")];
            for k in keys {
                prop_assert!(k.as_slice() >= start.as_slice() && k.as_slice() < end.as_slice());
            }
        }

        #[test]
        fn ids_sort_numerically_within_a_space(space in 0..=MAX_SPACE_ID, x in any::<u128>(), y in any::<u128>()) {
            let (kx, ky) = (episode(space, &x.to_be_bytes()), episode(space, &y.to_be_bytes()));
            prop_assert_eq!(kx.cmp(&ky), x.cmp(&y));
        }
    }

    #[test]
    fn overlong_terms_and_reserved_space_are_refused() {
        assert!(matches!(
            term_prefix(1, &"x".repeat(MAX_TERM_LEN + 1)),
            Err(StoreError::TermTooLong { .. })
        ));
        assert!(check_space(u32::MAX).is_err());
        assert!(check_space(MAX_SPACE_ID).is_ok());
    }

    #[test]
    fn per_space_meta_keys_are_distinct_and_name_their_space() {
        let space = 0x0102_0304;
        let keys = [
            applied_seq(space),
            space_record(space),
            consolidation_cursor(space),
            purge_due(space),
            space_figures(space),
        ];
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(meta_space(k), Some(space));
            assert!(keys[i + 1..].iter().all(|other| other != k));
        }
        assert!(!consolidation_cursor(space).starts_with(&meta_prefix_spaces()));
        assert!(!consolidation_cursor(space).starts_with(&meta_prefix_applied()));
        assert!(purge_due(space).starts_with(&meta_prefix_purge_due()));
        assert!(!space_record(space).starts_with(&meta_prefix_purge_due()));
        assert!(!space_figures(space).starts_with(&meta_prefix_spaces()));
        assert!(!space_figures(space).starts_with(&meta_prefix_applied()));
        assert!(!space_figures(space).starts_with(&meta_prefix_purge_due()));
    }
}
