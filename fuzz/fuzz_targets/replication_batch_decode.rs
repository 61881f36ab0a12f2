//! Any replication batch from a peer: the decoder never panics, stays within
//! memory bounded by its limit, and what it accepts is consecutive records that
//! encode back to a batch decoding to the same records.
#![no_main]

use engram_replication::{Batch, BatchLimits, Compression, EncodeOptions};
use libfuzzer_sys::fuzz_target;

/// Header: flags (1), first_seq (8), last_seq (8), record_count (4),
/// uncompressed_len (4), crc32 (4); the rest is the body. Flag bit 0: zstd;
/// bit 1: use the body's true size and CRC, so the parser is reached.
const HEADER: usize = 29;

fn u64_at(d: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[at..at + 8]);
    u64::from_le_bytes(b)
}

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
    let batch = Batch {
        first_seq: u64_at(data, 1),
        last_seq: u64_at(data, 9),
        record_count: u32_at(data, 17),
        compression: if flags & 1 != 0 && !checked { Compression::Zstd } else { Compression::None },
        uncompressed_len: if checked { body.len() as u32 } else { u32_at(data, 21) },
        crc32: if checked { crc32fast::hash(&body) } else { u32_at(data, 25) },
        records: body,
    };
    let limits = BatchLimits { max_batch_bytes: 1 << 16 };
    if let Ok(records) = batch.decode(&limits) {
        assert_eq!(records.len() as u32, batch.record_count);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(r.seq, batch.first_seq + i as u64);
        }
        let again = Batch::encode(&records, &EncodeOptions::default(), &limits).expect("re-encodes");
        assert_eq!(again.decode(&limits).expect("decodes again"), records);
    }
});
