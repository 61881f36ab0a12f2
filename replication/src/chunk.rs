//! Snapshot chunks: runs of key/value pairs of one column family.
//!
//! A chunk's body is `key_len u32 | key | value_len u32 | value`, repeated
//! `entries` times, little-endian; keys are the space's keys without the
//! sender's local space prefix. Like a batch, the CRC32 covers the
//! uncompressed body and the body may be one zstd frame. [`SnapshotChunk::decode`]
//! never panics and its memory is bounded by [`ChunkLimits::max_chunk_bytes`]
//! (the body, the pairs copied out of it, and their list: a few times the
//! limit, never what a header claims)
//! (fuzz target `snapshot_chunk_decode`).

use crate::CodecError;
use crate::compress::{self, Compression};

/// Bytes of an entry's two length fields.
const ENTRY_OVERHEAD: usize = 8;
/// Longest column family name.
const MAX_FAMILY: usize = 64;

/// One key/value pair of a column family.
pub type Pair = (Vec<u8>, Vec<u8>);

/// What a receiver accepts in one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Largest uncompressed body (senders cut chunks at 1 MiB).
    pub max_chunk_bytes: u32,
}

impl Default for ChunkLimits {
    fn default() -> Self {
        Self {
            max_chunk_bytes: 4 << 20,
        }
    }
}

/// One chunk as it travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotChunk {
    /// Column family name.
    pub family: String,
    /// Number of key/value pairs.
    pub entries: u32,
    /// How `kvs` is compressed.
    pub compression: Compression,
    /// Size of the uncompressed body.
    pub uncompressed_len: u32,
    /// CRC32 (IEEE) of the uncompressed body.
    pub crc32: u32,
    /// The body, compressed or not.
    pub kvs: Vec<u8>,
}

impl SnapshotChunk {
    /// Encodes `pairs` of `family` (zstd at `zstd_level` when that is
    /// smaller), refusing a body over `limits`.
    pub fn encode(
        family: &str,
        pairs: &[Pair],
        zstd_level: Option<i32>,
        limits: &ChunkLimits,
    ) -> Result<SnapshotChunk, CodecError> {
        check_family(family)?;
        let size: usize = pairs
            .iter()
            .map(|(k, v)| ENTRY_OVERHEAD + k.len() + v.len())
            .sum();
        if size > limits.max_chunk_bytes as usize {
            return Err(CodecError::TooLarge {
                what: "snapshot chunk",
                len: size as u64,
                limit: u64::from(limits.max_chunk_bytes),
            });
        }
        let mut plain = Vec::with_capacity(size);
        for (k, v) in pairs {
            plain.extend_from_slice(&(k.len() as u32).to_le_bytes());
            plain.extend_from_slice(k);
            plain.extend_from_slice(&(v.len() as u32).to_le_bytes());
            plain.extend_from_slice(v);
        }
        let crc32 = crc32fast::hash(&plain);
        let uncompressed_len = plain.len() as u32;
        let (compression, kvs) = compress::pack(plain, zstd_level, 0)?;
        Ok(SnapshotChunk {
            family: family.to_owned(),
            entries: pairs.len() as u32,
            compression,
            uncompressed_len,
            crc32,
            kvs,
        })
    }

    /// The key/value pairs of this chunk.
    pub fn decode(&self, limits: &ChunkLimits) -> Result<Vec<Pair>, CodecError> {
        check_family(&self.family)?;
        let most = u64::from(limits.max_chunk_bytes) / ENTRY_OVERHEAD as u64;
        if u64::from(self.entries) > most {
            return Err(CodecError::TooMany {
                what: "entries",
                count: u64::from(self.entries),
                limit: most,
            });
        }
        let plain = compress::unpack(
            "snapshot chunk",
            self.compression,
            &self.kvs,
            self.uncompressed_len,
            self.crc32,
            limits.max_chunk_bytes,
        )?;
        // Never more than the bytes can hold, whatever the header says.
        let mut out = Vec::with_capacity((self.entries as usize).min(plain.len() / ENTRY_OVERHEAD));
        let mut at = 0usize;
        for _ in 0..self.entries {
            let key = field(&plain, &mut at, "key")?;
            let value = field(&plain, &mut at, "value")?;
            out.push((key.to_vec(), value.to_vec()));
        }
        if at != plain.len() {
            return Err(CodecError::TrailingBytes(plain.len() - at, "entry"));
        }
        Ok(out)
    }
}

/// A length-prefixed field at `*at`, moving `*at` past it.
fn field<'a>(plain: &'a [u8], at: &mut usize, what: &'static str) -> Result<&'a [u8], CodecError> {
    let len = plain
        .get(*at..*at + 4)
        .ok_or(CodecError::Truncated { what, at: *at })?;
    let mut n = [0u8; 4];
    n.copy_from_slice(len);
    let start = *at + 4;
    let bytes = start
        .checked_add(u32::from_le_bytes(n) as usize)
        .and_then(|end| plain.get(start..end))
        .ok_or(CodecError::Truncated { what, at: start })?;
    *at = start + bytes.len();
    Ok(bytes)
}

fn check_family(family: &str) -> Result<(), CodecError> {
    if family.is_empty()
        || family.len() > MAX_FAMILY
        || !family.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(CodecError::Malformed(format!(
            "column family name {family:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refusals_are_typed() {
        let limits = ChunkLimits::default();
        let pairs = vec![
            (b"k1".to_vec(), vec![9u8; 3000]),
            (b"k2".to_vec(), Vec::new()),
        ];
        let c = SnapshotChunk::encode("episodes", &pairs, Some(1), &limits).expect("encode");
        assert_eq!(c.compression, Compression::Zstd);
        assert_eq!(c.decode(&limits).expect("decode"), pairs);
        let mut bad = SnapshotChunk::encode("episodes", &pairs, None, &limits).expect("encode");
        bad.kvs[3] ^= 0x10;
        assert!(matches!(
            bad.decode(&limits),
            Err(CodecError::ChecksumMismatch { .. })
        ));
        let mut family = c.clone();
        family.family = "../etc".into();
        assert!(matches!(
            family.decode(&limits),
            Err(CodecError::Malformed(_))
        ));
        let mut many = c.clone();
        many.entries = u32::MAX;
        assert!(matches!(
            many.decode(&limits),
            Err(CodecError::TooMany { .. })
        ));
        let mut fewer = SnapshotChunk::encode("edges", &pairs, None, &limits).expect("encode");
        fewer.entries = 1;
        assert!(matches!(
            fewer.decode(&limits),
            Err(CodecError::TrailingBytes(..))
        ));
        let small = ChunkLimits {
            max_chunk_bytes: 100,
        };
        assert!(matches!(c.decode(&small), Err(CodecError::TooLarge { .. })));
        assert!(SnapshotChunk::encode("edges", &pairs, None, &small).is_err());
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(
            pairs in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..40), proptest::collection::vec(any::<u8>(), 0..200)),
                0..30),
            zstd in any::<bool>(),
        ) {
            let limits = ChunkLimits::default();
            let c = SnapshotChunk::encode("terms", &pairs, zstd.then_some(1), &limits).expect("encode");
            prop_assert_eq!(c.decode(&limits).expect("decode"), pairs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            kvs in proptest::collection::vec(any::<u8>(), 0..2000),
            entries in any::<u32>(),
            zstd in any::<bool>(),
            uncompressed_len in 0u32..10_000,
            crc32 in any::<u32>(),
            plain_and_checked in any::<bool>(),
        ) {
            // Half the cases reach the parser: uncompressed, with the right
            // size and checksum.
            let (zstd, uncompressed_len, crc32) = if plain_and_checked {
                (false, kvs.len() as u32, crc32fast::hash(&kvs))
            } else {
                (zstd, uncompressed_len, crc32)
            };
            let c = SnapshotChunk {
                family: "vectors".into(),
                entries,
                compression: if zstd { Compression::Zstd } else { Compression::None },
                uncompressed_len,
                crc32,
                kvs,
            };
            let _ = c.decode(&ChunkLimits { max_chunk_bytes: 64 * 1024 });
        }
    }
}
