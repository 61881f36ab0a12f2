//! The domain writes the warm store applies, and their compact binary
//! encoding (the payload the layer above puts in WAL records).
//!
//! Encoding (big-endian): version byte `1`, mutation count (u32), then each
//! mutation as a tag byte and its fields; ids are 16 raw bytes, byte strings
//! a u32 length and the bytes, terms a u16 length and UTF-8. The decoder
//! never allocates more than its input's length and never panics.

use crate::keys::MAX_TERM_LEN;
use crate::{EpisodeId, SpaceId};

/// One change to a space's data. Applied inside an [`Operation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Creates or updates the space's record in `meta`.
    PutSpace {
        /// Opaque space record (name, options).
        record: Vec<u8>,
    },
    /// Removes every key of the space in every data column family (range
    /// deletes) and its record; its applied sequence number is kept.
    DropSpace,
    /// Stores an episode record.
    PutEpisode {
        /// Episode id.
        id: EpisodeId,
        /// Serialized episode.
        record: Vec<u8>,
    },
    /// Removes an episode record.
    DeleteEpisode {
        /// Episode id.
        id: EpisodeId,
    },
    /// Stores a directed edge.
    PutEdge {
        /// Source episode.
        from: EpisodeId,
        /// Target episode.
        to: EpisodeId,
        /// Serialized edge (weight, kind).
        record: Vec<u8>,
    },
    /// Removes a directed edge.
    DeleteEdge {
        /// Source episode.
        from: EpisodeId,
        /// Target episode.
        to: EpisodeId,
    },
    /// Stores one posting of the lexical index.
    PutPosting {
        /// Normalised term.
        term: String,
        /// Episode containing it.
        id: EpisodeId,
        /// Posting value (term frequency, ...).
        value: Vec<u8>,
    },
    /// Removes one posting.
    DeletePosting {
        /// Normalised term.
        term: String,
        /// Episode.
        id: EpisodeId,
    },
    /// Stores an embedding.
    PutVector {
        /// Episode id.
        id: EpisodeId,
        /// Encoded vector.
        vector: Vec<u8>,
    },
    /// Removes an embedding.
    DeleteVector {
        /// Episode id.
        id: EpisodeId,
    },
    /// Stores an archived (cold tier) episode.
    PutCold {
        /// Episode id.
        id: EpisodeId,
        /// Serialized episode.
        record: Vec<u8>,
    },
    /// Removes an archived episode.
    DeleteCold {
        /// Episode id.
        id: EpisodeId,
    },
    /// Stores an episode's access statistics.
    PutAccess {
        /// Episode id.
        id: EpisodeId,
        /// Encoded statistics.
        value: Vec<u8>,
    },
    /// Removes an episode's access statistics.
    DeleteAccess {
        /// Episode id.
        id: EpisodeId,
    },
}

/// A WAL record's worth of mutations on one space, applied atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// WAL LSN of the record.
    pub lsn: u64,
    /// Space the mutations belong to.
    pub space: SpaceId,
    /// Per-space sequence number of the record.
    pub seq: u64,
    /// The changes.
    pub mutations: Vec<Mutation>,
}

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Input ended inside a field.
    #[error("payload truncated at byte {0}")]
    Truncated(usize),
    /// Unknown encoding version.
    #[error("unknown mutation encoding version {0}")]
    Version(u8),
    /// Unknown mutation tag.
    #[error("unknown mutation tag {tag} at byte {at}")]
    Tag {
        /// The tag.
        tag: u8,
        /// Its offset.
        at: usize,
    },
    /// A term is not UTF-8 or too long.
    #[error("invalid term at byte {0}")]
    Term(usize),
    /// Bytes left over after the last mutation.
    #[error("{0} trailing bytes after the last mutation")]
    Trailing(usize),
}

const VERSION: u8 = 1;

/// `true` when `mutations` (one record's) remove stored content for good,
/// as a forget or a space deletion does, rather than move it between tiers:
/// a `DropSpace`, a `DeleteVector`, a `DeleteEpisode` without a `PutCold`
/// of the same id (an archive move), or a `DeleteCold` without a
/// `PutEpisode` of the same id (a promotion). [`crate::Store::apply`] marks
/// the space of such a record for [`crate::Store::purge`], in the same
/// batch.
pub fn erases_content(mutations: &[Mutation]) -> bool {
    let mut warm_deleted = Vec::new();
    let mut cold_deleted = Vec::new();
    for m in mutations {
        match m {
            Mutation::DropSpace | Mutation::DeleteVector { .. } => return true,
            Mutation::DeleteEpisode { id } => warm_deleted.push(id),
            Mutation::DeleteCold { id } => cold_deleted.push(id),
            _ => {}
        }
    }
    if warm_deleted.is_empty() && cold_deleted.is_empty() {
        return false;
    }
    let mut to_cold = std::collections::HashSet::new();
    let mut to_warm = std::collections::HashSet::new();
    for m in mutations {
        match m {
            Mutation::PutCold { id, .. } => {
                to_cold.insert(id);
            }
            Mutation::PutEpisode { id, .. } => {
                to_warm.insert(id);
            }
            _ => {}
        }
    }
    warm_deleted.iter().any(|id| !to_cold.contains(id))
        || cold_deleted.iter().any(|id| !to_warm.contains(id))
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn put_term(out: &mut Vec<u8>, t: &str) {
    out.extend_from_slice(&(t.len() as u16).to_be_bytes());
    out.extend_from_slice(t.as_bytes());
}

/// Encodes mutations for a WAL payload.
pub fn encode(mutations: &[Mutation]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + mutations.len() * 48);
    out.push(VERSION);
    out.extend_from_slice(&(mutations.len() as u32).to_be_bytes());
    for m in mutations {
        match m {
            Mutation::PutSpace { record } => {
                out.push(1);
                put_bytes(&mut out, record);
            }
            Mutation::DropSpace => out.push(2),
            Mutation::PutEpisode { id, record } => {
                out.push(3);
                out.extend_from_slice(id);
                put_bytes(&mut out, record);
            }
            Mutation::DeleteEpisode { id } => {
                out.push(4);
                out.extend_from_slice(id);
            }
            Mutation::PutEdge { from, to, record } => {
                out.push(5);
                out.extend_from_slice(from);
                out.extend_from_slice(to);
                put_bytes(&mut out, record);
            }
            Mutation::DeleteEdge { from, to } => {
                out.push(6);
                out.extend_from_slice(from);
                out.extend_from_slice(to);
            }
            Mutation::PutPosting { term, id, value } => {
                out.push(7);
                put_term(&mut out, term);
                out.extend_from_slice(id);
                put_bytes(&mut out, value);
            }
            Mutation::DeletePosting { term, id } => {
                out.push(8);
                put_term(&mut out, term);
                out.extend_from_slice(id);
            }
            Mutation::PutVector { id, vector } => {
                out.push(9);
                out.extend_from_slice(id);
                put_bytes(&mut out, vector);
            }
            Mutation::DeleteVector { id } => {
                out.push(10);
                out.extend_from_slice(id);
            }
            Mutation::PutCold { id, record } => {
                out.push(11);
                out.extend_from_slice(id);
                put_bytes(&mut out, record);
            }
            Mutation::DeleteCold { id } => {
                out.push(12);
                out.extend_from_slice(id);
            }
            Mutation::PutAccess { id, value } => {
                out.push(13);
                out.extend_from_slice(id);
                put_bytes(&mut out, value);
            }
            Mutation::DeleteAccess { id } => {
                out.push(14);
                out.extend_from_slice(id);
            }
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or(DecodeError::Truncated(self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn id(&mut self) -> Result<EpisodeId, DecodeError> {
        let mut id = [0; 16];
        id.copy_from_slice(self.take(16)?);
        Ok(id)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let mut n = [0; 4];
        n.copy_from_slice(self.take(4)?);
        Ok(self.take(u32::from_be_bytes(n) as usize)?.to_vec())
    }
    fn term(&mut self) -> Result<String, DecodeError> {
        let at = self.pos;
        let mut n = [0; 2];
        n.copy_from_slice(self.take(2)?);
        let len = u16::from_be_bytes(n) as usize;
        if len > MAX_TERM_LEN {
            return Err(DecodeError::Term(at));
        }
        let b = self.take(len)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| DecodeError::Term(at))
    }
}

/// Decodes a payload produced by [`encode`].
pub fn decode(buf: &[u8]) -> Result<Vec<Mutation>, DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    let version = r.u8()?;
    if version != VERSION {
        return Err(DecodeError::Version(version));
    }
    let mut n = [0; 4];
    n.copy_from_slice(r.take(4)?);
    let count = u32::from_be_bytes(n) as usize;
    // Every mutation takes at least one byte: cap the reservation by the input.
    let mut out = Vec::with_capacity(count.min(buf.len()));
    for _ in 0..count {
        let at = r.pos;
        let m = match r.u8()? {
            1 => Mutation::PutSpace { record: r.bytes()? },
            2 => Mutation::DropSpace,
            3 => Mutation::PutEpisode {
                id: r.id()?,
                record: r.bytes()?,
            },
            4 => Mutation::DeleteEpisode { id: r.id()? },
            5 => Mutation::PutEdge {
                from: r.id()?,
                to: r.id()?,
                record: r.bytes()?,
            },
            6 => Mutation::DeleteEdge {
                from: r.id()?,
                to: r.id()?,
            },
            7 => Mutation::PutPosting {
                term: r.term()?,
                id: r.id()?,
                value: r.bytes()?,
            },
            8 => Mutation::DeletePosting {
                term: r.term()?,
                id: r.id()?,
            },
            9 => Mutation::PutVector {
                id: r.id()?,
                vector: r.bytes()?,
            },
            10 => Mutation::DeleteVector { id: r.id()? },
            11 => Mutation::PutCold {
                id: r.id()?,
                record: r.bytes()?,
            },
            12 => Mutation::DeleteCold { id: r.id()? },
            13 => Mutation::PutAccess {
                id: r.id()?,
                value: r.bytes()?,
            },
            14 => Mutation::DeleteAccess { id: r.id()? },
            tag => return Err(DecodeError::Tag { tag, at }),
        };
        out.push(m);
    }
    if r.pos != buf.len() {
        return Err(DecodeError::Trailing(buf.len() - r.pos));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn mutation() -> impl Strategy<Value = Mutation> {
        let id = any::<[u8; 16]>();
        let bytes = prop::collection::vec(any::<u8>(), 0..64);
        prop_oneof![
            bytes
                .clone()
                .prop_map(|record| Mutation::PutSpace { record }),
            Just(Mutation::DropSpace),
            (id, bytes.clone()).prop_map(|(id, record)| Mutation::PutEpisode { id, record }),
            id.prop_map(|id| Mutation::DeleteEpisode { id }),
            (id, id, bytes.clone()).prop_map(|(from, to, record)| Mutation::PutEdge {
                from,
                to,
                record
            }),
            (id, id).prop_map(|(from, to)| Mutation::DeleteEdge { from, to }),
            ("\\PC{0,20}", id, bytes.clone()).prop_map(|(term, id, value)| Mutation::PutPosting {
                term,
                id,
                value
            }),
            ("\\PC{0,20}", id).prop_map(|(term, id)| Mutation::DeletePosting { term, id }),
            (id, bytes.clone()).prop_map(|(id, vector)| Mutation::PutVector { id, vector }),
            id.prop_map(|id| Mutation::DeleteVector { id }),
            (id, bytes.clone()).prop_map(|(id, record)| Mutation::PutCold { id, record }),
            id.prop_map(|id| Mutation::DeleteCold { id }),
            (id, bytes).prop_map(|(id, value)| Mutation::PutAccess { id, value }),
            id.prop_map(|id| Mutation::DeleteAccess { id }),
        ]
    }

    proptest! {
        #[test]
        fn mutations_round_trip(ms in prop::collection::vec(mutation(), 0..20)) {
            prop_assert_eq!(decode(&encode(&ms)), Ok(ms));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn every_truncation_is_an_error(ms in prop::collection::vec(mutation(), 1..8), cut in any::<prop::sample::Index>()) {
            let b = encode(&ms);
            let cut = cut.index(b.len());
            prop_assert!(decode(&b[..cut]).is_err());
        }
    }

    #[test]
    fn forgets_and_drops_erase_content_tier_moves_do_not() {
        let (a, b) = ([1; 16], [2; 16]);
        let forget = [
            Mutation::DeleteVector { id: a },
            Mutation::DeleteAccess { id: a },
            Mutation::DeleteCold { id: a },
            Mutation::DeleteEpisode { id: a },
        ];
        assert!(erases_content(&forget));
        assert!(erases_content(&[Mutation::DropSpace]));
        let archive = [
            Mutation::DeleteEpisode { id: a },
            Mutation::PutCold {
                id: a,
                record: vec![1],
            },
        ];
        assert!(!erases_content(&archive));
        let promote = [
            Mutation::PutEpisode {
                id: b,
                record: vec![1],
            },
            Mutation::DeleteCold { id: b },
        ];
        assert!(!erases_content(&promote));
        let archive_one_delete_other = [
            Mutation::DeleteEpisode { id: a },
            Mutation::PutCold {
                id: b,
                record: vec![1],
            },
        ];
        assert!(erases_content(&archive_one_delete_other));
        let residue = [
            Mutation::DeleteEdge { from: a, to: b },
            Mutation::DeleteAccess { id: b },
            Mutation::DeletePosting {
                term: "kite".into(),
                id: b,
            },
        ];
        assert!(!erases_content(&residue), "no content in these rows");
        assert!(!erases_content(&[]));
    }

    #[test]
    fn huge_counts_do_not_allocate_beyond_the_input() {
        let mut b = vec![VERSION];
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&b), Err(DecodeError::Truncated(5)));
    }
}
