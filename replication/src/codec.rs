//! Replication batches: runs of consecutive WAL records of one space.
//!
//! The records are encoded one after another, little-endian like the WAL
//! frame: `seq u64 | kind u8 | len u32 | payload[len]`, with
//! `seq = first_seq + i`. The CRC32 (IEEE, the WAL's) covers this
//! *uncompressed* encoding, so a bug in compression is caught as well as a
//! flipped bit on the wire. Above `compress_above` bytes the encoding is
//! sent as one zstd frame when that is smaller.
//!
//! [`Batch::decode`] checks, before it allocates anything large, that the
//! declared uncompressed size is within [`BatchLimits::max_batch_bytes`];
//! then the checksum; then that the records are exactly the declared
//! count, consecutive from `first_seq` to `last_seq`, with no byte left
//! over. It never panics on any input (fuzz target
//! `replication_batch_decode`).

use crate::CodecError;
use crate::compress::{self, Compression};

/// Bytes of a record's header: seq (8), kind (1), payload length (4).
pub const RECORD_HEADER: usize = 13;

/// One WAL record of a space, as shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The space's sequence number of this record.
    pub seq: u64,
    /// The record kind (`engram_graph::kind`).
    pub kind: u8,
    /// The record's payload (the mutation encoding), verbatim.
    pub payload: Vec<u8>,
}

/// What a receiver accepts in one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest uncompressed encoding (default 4 MiB; configure it at least
    /// the WAL's largest payload plus 64 KiB so one record always fits).
    pub max_batch_bytes: u32,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_batch_bytes: 4 << 20,
        }
    }
}

impl BatchLimits {
    /// Most records a batch within the limit can hold (each has a header).
    pub fn max_records(&self) -> u64 {
        u64::from(self.max_batch_bytes) / RECORD_HEADER as u64
    }
}

/// How a sender encodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// zstd level, or `None` to never compress.
    pub zstd_level: Option<i32>,
    /// Encodings up to this many bytes are sent uncompressed (default 512).
    pub compress_above: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            zstd_level: Some(1),
            compress_above: 512,
        }
    }
}

/// The body of a batch as it travels: the fields of the wire message that
/// describe the records (epoch, space and peer fields travel beside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Sequence number of the first record (at least 1).
    pub first_seq: u64,
    /// Sequence number of the last record.
    pub last_seq: u64,
    /// Number of records.
    pub record_count: u32,
    /// How `records` is compressed.
    pub compression: Compression,
    /// Size of the uncompressed encoding.
    pub uncompressed_len: u32,
    /// CRC32 (IEEE) of the uncompressed encoding.
    pub crc32: u32,
    /// The encoding, compressed or not.
    pub records: Vec<u8>,
}

impl Batch {
    /// Encodes `records`, which must be non-empty and consecutive, within
    /// `limits` (a sender never builds what its receivers would refuse).
    pub fn encode(
        records: &[Record],
        options: &EncodeOptions,
        limits: &BatchLimits,
    ) -> Result<Batch, CodecError> {
        let (first, last) = match (records.first(), records.last()) {
            (Some(f), Some(l)) => (f.seq, l.seq),
            _ => {
                return Err(CodecError::Malformed(
                    "a batch needs at least one record".into(),
                ));
            }
        };
        let size: usize = records
            .iter()
            .map(|r| RECORD_HEADER + r.payload.len())
            .sum();
        if size > limits.max_batch_bytes as usize {
            return Err(CodecError::TooLarge {
                what: "batch",
                len: size as u64,
                limit: u64::from(limits.max_batch_bytes),
            });
        }
        let mut plain = Vec::with_capacity(size);
        for (i, r) in records.iter().enumerate() {
            let expected = first
                .checked_add(i as u64)
                .ok_or_else(|| CodecError::Malformed("sequence numbers overflow".into()))?;
            if r.seq != expected {
                return Err(CodecError::NotConsecutive {
                    index: i as u32,
                    expected,
                    got: r.seq,
                });
            }
            plain.extend_from_slice(&r.seq.to_le_bytes());
            plain.push(r.kind);
            plain.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
            plain.extend_from_slice(&r.payload);
        }
        if first == 0 {
            return Err(CodecError::Malformed("sequence numbers start at 1".into()));
        }
        let crc32 = crc32fast::hash(&plain);
        let uncompressed_len = plain.len() as u32;
        let (compression, body) =
            compress::pack(plain, options.zstd_level, options.compress_above)?;
        Ok(Batch {
            first_seq: first,
            last_seq: last,
            record_count: records.len() as u32,
            compression,
            uncompressed_len,
            crc32,
            records: body,
        })
    }

    /// The records of this batch, checked as the module says.
    pub fn decode(&self, limits: &BatchLimits) -> Result<Vec<Record>, CodecError> {
        if self.record_count == 0 {
            return Err(CodecError::Malformed("a batch with no records".into()));
        }
        if u64::from(self.record_count) > limits.max_records() {
            return Err(CodecError::TooMany {
                what: "records",
                count: u64::from(self.record_count),
                limit: limits.max_records(),
            });
        }
        if self.first_seq == 0 {
            return Err(CodecError::Malformed("sequence numbers start at 1".into()));
        }
        let span = self.first_seq.checked_add(u64::from(self.record_count) - 1);
        if span != Some(self.last_seq) {
            return Err(CodecError::Malformed(format!(
                "first_seq {} and {} records do not end at last_seq {}",
                self.first_seq, self.record_count, self.last_seq
            )));
        }
        let plain = compress::unpack(
            "batch",
            self.compression,
            &self.records,
            self.uncompressed_len,
            self.crc32,
            limits.max_batch_bytes,
        )?;
        // Never more than the bytes can hold, whatever the header says.
        let mut out =
            Vec::with_capacity((self.record_count as usize).min(plain.len() / RECORD_HEADER));
        let mut at = 0usize;
        for i in 0..self.record_count {
            let header = plain
                .get(at..at + RECORD_HEADER)
                .ok_or(CodecError::Truncated {
                    what: "record header",
                    at,
                })?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&header[..8]);
            let seq = u64::from_le_bytes(seq);
            let kind = header[8];
            let mut len = [0u8; 4];
            len.copy_from_slice(&header[9..13]);
            let len = u32::from_le_bytes(len) as usize;
            let expected = self.first_seq + u64::from(i);
            if seq != expected {
                return Err(CodecError::NotConsecutive {
                    index: i,
                    expected,
                    got: seq,
                });
            }
            let start = at + RECORD_HEADER;
            let payload = start
                .checked_add(len)
                .and_then(|end| plain.get(start..end))
                .ok_or(CodecError::Truncated {
                    what: "record payload",
                    at: start,
                })?;
            out.push(Record {
                seq,
                kind,
                payload: payload.to_vec(),
            });
            at = start + len;
        }
        if at != plain.len() {
            return Err(CodecError::TrailingBytes(plain.len() - at, "record"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn records(first: u64, payloads: &[Vec<u8>]) -> Vec<Record> {
        payloads
            .iter()
            .enumerate()
            .map(|(i, p)| Record {
                seq: first + i as u64,
                kind: (i % 7) as u8,
                payload: p.clone(),
            })
            .collect()
    }

    fn options(zstd: bool) -> EncodeOptions {
        EncodeOptions {
            zstd_level: zstd.then_some(1),
            compress_above: 64,
        }
    }

    #[test]
    fn a_compressible_batch_is_sent_compressed_and_decodes_to_the_same_records() {
        let rs = records(41, &[vec![7u8; 5000], b"short".to_vec(), Vec::new()]);
        let limits = BatchLimits::default();
        let b = Batch::encode(&rs, &options(true), &limits).expect("encode");
        assert_eq!(b.compression, Compression::Zstd);
        assert!(b.records.len() < b.uncompressed_len as usize / 10);
        assert_eq!((b.first_seq, b.last_seq, b.record_count), (41, 43, 3));
        assert_eq!(b.decode(&limits).expect("decode"), rs);
        let plain = Batch::encode(&rs, &options(false), &limits).expect("encode");
        assert_eq!(plain.compression, Compression::None);
        assert_eq!(
            plain.crc32, b.crc32,
            "the CRC covers the uncompressed bytes"
        );
        assert_eq!(plain.decode(&limits).expect("decode"), rs);
    }

    #[test]
    fn the_sender_refuses_what_a_receiver_would() {
        let limits = BatchLimits {
            max_batch_bytes: 100,
        };
        let big = records(1, &[vec![0u8; 100]]);
        assert!(matches!(
            Batch::encode(&big, &options(false), &limits),
            Err(CodecError::TooLarge { .. })
        ));
        let mut gap = records(1, &[vec![1], vec![2]]);
        gap[1].seq = 3;
        assert!(matches!(
            Batch::encode(&gap, &options(false), &limits),
            Err(CodecError::NotConsecutive {
                index: 1,
                expected: 2,
                got: 3
            })
        ));
        assert!(Batch::encode(&[], &options(false), &limits).is_err());
        assert!(Batch::encode(&records(0, &[vec![1]]), &options(false), &limits).is_err());
    }

    #[test]
    fn refusals_are_typed() {
        let limits = BatchLimits::default();
        let good = Batch::encode(
            &records(10, &[vec![1; 40], vec![2; 40]]),
            &options(false),
            &limits,
        )
        .expect("encode");
        let mut flipped = good.clone();
        flipped.records[20] ^= 1;
        assert!(matches!(
            flipped.decode(&limits),
            Err(CodecError::ChecksumMismatch { .. })
        ));
        let mut short = good.clone();
        short.records.truncate(30);
        assert!(matches!(
            short.decode(&limits),
            Err(CodecError::Malformed(_))
        ));
        let mut count = good.clone();
        count.record_count = 3;
        assert!(matches!(
            count.decode(&limits),
            Err(CodecError::Malformed(_))
        ));
        count.last_seq = 12;
        assert!(matches!(
            count.decode(&limits),
            Err(CodecError::Truncated { .. })
        ));
        let mut huge = good.clone();
        huge.uncompressed_len = u32::MAX;
        assert!(matches!(
            huge.decode(&limits),
            Err(CodecError::TooLarge { .. })
        ));
        let mut range = good.clone();
        range.last_seq = 99;
        assert!(matches!(
            range.decode(&limits),
            Err(CodecError::Malformed(_))
        ));
        // A zstd frame that inflates beyond the declared size.
        let mut bomb = Batch::encode(&records(1, &[vec![0; 100_000]]), &options(true), &limits)
            .expect("encode");
        bomb.uncompressed_len = 1000;
        assert!(matches!(
            bomb.decode(&limits),
            Err(CodecError::Decompress(_))
        ));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(
            first in 1u64..u64::MAX / 2,
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..20),
            zstd in any::<bool>(),
        ) {
            let rs = records(first, &payloads);
            let limits = BatchLimits::default();
            let b = Batch::encode(&rs, &options(zstd), &limits).expect("encode");
            prop_assert_eq!(b.decode(&limits).expect("decode"), rs);
        }

        #[test]
        fn a_changed_byte_is_never_accepted_as_other_records(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..10),
            zstd in any::<bool>(),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let rs = records(5, &payloads);
            let limits = BatchLimits::default();
            let mut b = Batch::encode(&rs, &options(zstd), &limits).expect("encode");
            let i = at.index(b.records.len());
            b.records[i] ^= 1 << bit;
            // Either refused, or (never) the same records: a flipped bit can
            // not pass as different content.
            if let Ok(got) = b.decode(&limits) {
                prop_assert_eq!(got, rs);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            records in proptest::collection::vec(any::<u8>(), 0..2000),
            first_seq in any::<u64>(),
            last_seq in any::<u64>(),
            record_count in any::<u32>(),
            zstd in any::<bool>(),
            uncompressed_len in 0u32..10_000,
            crc32 in any::<u32>(),
            plain_and_checked in any::<bool>(),
        ) {
            // Half the cases reach the parser: uncompressed, with the right
            // size and checksum.
            let (zstd, uncompressed_len, crc32) = if plain_and_checked {
                (false, records.len() as u32, crc32fast::hash(&records))
            } else {
                (zstd, uncompressed_len, crc32)
            };
            let b = Batch {
                first_seq,
                last_seq,
                record_count,
                compression: if zstd { Compression::Zstd } else { Compression::None },
                uncompressed_len,
                crc32,
                records,
            };
            let _ = b.decode(&BatchLimits { max_batch_bytes: 64 * 1024 });
        }
    }
}
