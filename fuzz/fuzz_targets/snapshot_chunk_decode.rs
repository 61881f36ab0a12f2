//! Any snapshot chunk from a peer: the decoder never panics, stays within
//! memory bounded by its limit, and what it accepts encodes back to the same pairs.
#![no_main]

use engram_replication::{ChunkLimits, Compression, SnapshotChunk};
use libfuzzer_sys::fuzz_target;

/// Header: flags (1), entries (4), uncompressed_len (4), crc32 (4); the
/// rest is the body. Flag bit 0: zstd; bit 1: use the body's true size and
/// CRC, so the parser is reached.
const HEADER: usize = 13;

fn u32_at(d: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&d[at..at + 4]);
    u32::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let flags = data[0];
    let body = data[HEADER..].to_vec();
    let checked = flags & 2 != 0;
    let chunk = SnapshotChunk {
        family: "episodes".into(),
        entries: u32_at(data, 1),
        compression: if flags & 1 != 0 && !checked { Compression::Zstd } else { Compression::None },
        uncompressed_len: if checked { body.len() as u32 } else { u32_at(data, 5) },
        crc32: if checked { crc32fast::hash(&body) } else { u32_at(data, 9) },
        kvs: body,
    };
    let limits = ChunkLimits { max_chunk_bytes: 1 << 16 };
    if let Ok(pairs) = chunk.decode(&limits) {
        assert_eq!(pairs.len() as u32, chunk.entries);
        let again = SnapshotChunk::encode("episodes", &pairs, Some(1), &limits).expect("re-encodes");
        assert_eq!(again.decode(&limits).expect("decodes again"), pairs);
    }
});
