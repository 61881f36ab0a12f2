//! Why bytes from a peer were refused.

/// A batch or chunk that cannot be accepted, and why. Each maps to a typed
/// refusal on the wire: [`CodecError::ChecksumMismatch`] to
/// `CHECKSUM_MISMATCH`, everything else to `MALFORMED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The declared uncompressed size is above the receiver's limit.
    #[error("{what} of {len} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its declared or actual size.
        len: u64,
        /// The limit.
        limit: u64,
    },
    /// More records or entries than the receiver accepts in one message.
    #[error("{count} {what} is over the limit of {limit}")]
    TooMany {
        /// Records or entries.
        what: &'static str,
        /// How many were declared.
        count: u64,
        /// The limit.
        limit: u64,
    },
    /// The CRC32 of the uncompressed bytes is not the one sent.
    #[error("checksum mismatch: sent {sent:#010x}, computed {computed:#010x}")]
    ChecksumMismatch {
        /// The CRC32 in the message.
        sent: u32,
        /// The CRC32 of the bytes received (after decompression).
        computed: u32,
    },
    /// Decompression failed or produced another size than declared.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The bytes end inside a record or entry.
    #[error("truncated {what} at byte {at}")]
    Truncated {
        /// What was cut.
        what: &'static str,
        /// Offset in the uncompressed bytes.
        at: usize,
    },
    /// Bytes left after the declared records or entries.
    #[error("{0} bytes after the last {1}")]
    TrailingBytes(usize, &'static str),
    /// The header does not describe the body (counts, sequence range).
    #[error("malformed: {0}")]
    Malformed(String),
    /// A record's sequence number is not the next one.
    #[error("record {index} has sequence {got}, expected {expected}")]
    NotConsecutive {
        /// Position in the batch.
        index: u32,
        /// The sequence number expected there.
        expected: u64,
        /// The one found.
        got: u64,
    },
}
