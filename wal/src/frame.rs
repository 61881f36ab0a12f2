//! Record framing: a pure encoder and decoder with no I/O.
//!
//! See the crate documentation for the byte layout. Every byte of the header
//! except the CRC field, and every byte of the payload, is covered by the CRC,
//! so any single-bit change to a frame is detected.

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"EGWL";
/// Frame format version written by this build.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 36;
/// Largest payload length the log believes when it *reads* frames: the
/// largest the 32-bit length field can express. The configured
/// `max_payload` limits appends only; a record accepted under an earlier,
/// larger limit must stay readable after the limit is lowered. A damaged
/// length field still cannot make the decoder read past the buffer it was
/// given (a whole segment file at most), so this bound costs nothing.
pub const READ_PAYLOAD_LIMIT: u32 = u32::MAX;

const CRC_RANGE: std::ops::Range<usize> = 12..16;

/// The caller-supplied part of a record: what it is about and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Numeric id of the memory space the record belongs to.
    pub space: u32,
    /// Per-space sequence number (assigned by the caller, strictly increasing per space).
    pub seq: u64,
    /// Operation kind; its meaning belongs to the layer above.
    pub kind: u8,
}

/// A decoded frame borrowing its payload from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Global log sequence number.
    pub lsn: u64,
    /// Space, sequence and kind.
    pub header: RecordHeader,
    /// Opaque payload.
    pub payload: &'a [u8],
}

impl Frame<'_> {
    /// Total encoded length of this frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Why bytes at some offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the announced payload need.
    Incomplete,
    /// The header is all zero bytes: preallocated space that was never written.
    Zeroed,
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// The announced payload is longer than the configured maximum.
    TooLong {
        /// The announced length.
        len: u32,
    },
    /// The CRC does not match the bytes.
    Checksum,
    /// The CRC matches but the version or flags are unknown to this build.
    Unsupported {
        /// The format version found.
        version: u8,
        /// The flags found.
        flags: u16,
    },
}

impl FrameError {
    /// `true` when the bytes might be a frame written by a newer build rather than damage.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, FrameError::Unsupported { .. })
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Incomplete => f.write_str("incomplete frame"),
            FrameError::Zeroed => f.write_str("zeroed bytes where a frame was expected"),
            FrameError::BadMagic => f.write_str("bad magic"),
            FrameError::TooLong { len } => write!(f, "announced payload length {len} is too long"),
            FrameError::Checksum => f.write_str("CRC mismatch"),
            FrameError::Unsupported { version, flags } => {
                write!(
                    f,
                    "unsupported frame format version {version} (flags {flags:#06x})"
                )
            }
        }
    }
}

/// Appends the frame for `(lsn, header, payload)` to `out`.
///
/// The caller guarantees `payload.len() <= u32::MAX`; the log enforces a much
/// smaller limit before calling this.
pub fn encode_into(out: &mut Vec<u8>, lsn: u64, header: RecordHeader, payload: &[u8]) {
    let start = out.len();
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(header.kind);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&header.space.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = checksum(&out[start..]);
    out[start + CRC_RANGE.start..start + CRC_RANGE.end].copy_from_slice(&crc.to_le_bytes());
}

/// Encodes one frame into a new vector.
pub fn encode(lsn: u64, header: RecordHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    encode_into(&mut out, lsn, header, payload);
    out
}

fn checksum(frame: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..CRC_RANGE.start]);
    hasher.update(&frame[CRC_RANGE.end..]);
    hasher.finalize()
}

fn u16_at(buf: &[u8], at: usize) -> u16 {
    let mut b = [0; 2];
    b.copy_from_slice(&buf[at..at + 2]);
    u16::from_le_bytes(b)
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    let mut b = [0; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(buf: &[u8], at: usize) -> u64 {
    let mut b = [0; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Decodes the frame at the start of `buf`.
///
/// `max_payload` bounds the announced payload length, so a damaged length
/// field can never make the decoder read or allocate beyond it (readers of
/// the log pass [`READ_PAYLOAD_LIMIT`]). Never panics.
pub fn decode(buf: &[u8], max_payload: u32) -> Result<Frame<'_>, FrameError> {
    if buf.len() < HEADER_LEN {
        if buf.iter().all(|b| *b == 0) {
            return Err(FrameError::Zeroed);
        }
        return Err(FrameError::Incomplete);
    }
    let header = &buf[..HEADER_LEN];
    if header.iter().all(|b| *b == 0) {
        return Err(FrameError::Zeroed);
    }
    if header[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    let len = u32_at(buf, 8);
    if len > max_payload {
        return Err(FrameError::TooLong { len });
    }
    let Some(end) = usize::try_from(len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN))
    else {
        return Err(FrameError::TooLong { len });
    };
    if buf.len() < end {
        return Err(FrameError::Incomplete);
    }
    let frame = &buf[..end];
    if checksum(frame) != u32_at(frame, CRC_RANGE.start) {
        return Err(FrameError::Checksum);
    }
    let version = frame[4];
    let flags = u16_at(frame, 6);
    if version != FORMAT_VERSION || flags != 0 {
        return Err(FrameError::Unsupported { version, flags });
    }
    Ok(Frame {
        lsn: u64_at(frame, 16),
        header: RecordHeader {
            space: u32_at(frame, 24),
            seq: u64_at(frame, 28),
            kind: frame[5],
        },
        payload: &frame[HEADER_LEN..],
    })
}

/// Offset (relative to `buf`) of the first position at or after `from` where a
/// frame with a valid checksum starts, if any.
///
/// Used to tell a torn tail (nothing valid follows) from damage in the middle
/// of the log (valid records follow the bad bytes).
pub fn find_valid_frame(buf: &[u8], from: usize, max_payload: u32) -> Option<usize> {
    let mut at = from;
    while at + MAGIC.len() <= buf.len() {
        let rel = buf[at..].iter().position(|b| *b == MAGIC[0])?;
        at += rel;
        if buf[at..].starts_with(&MAGIC) {
            match decode(&buf[at..], max_payload) {
                Ok(_) | Err(FrameError::Unsupported { .. }) => return Some(at),
                Err(_) => {}
            }
        }
        at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        let h = RecordHeader {
            space: 7,
            seq: 42,
            kind: 3,
        };
        let bytes = encode(99, h, b"hello");
        assert_eq!(bytes.len(), HEADER_LEN + 5);
        let f = decode(&bytes, 1024).expect("valid frame");
        assert_eq!(f.lsn, 99);
        assert_eq!(f.header, h);
        assert_eq!(f.payload, b"hello");
    }

    #[test]
    fn layout_matches_documentation() {
        let h = RecordHeader {
            space: 0x0102_0304,
            seq: 5,
            kind: 9,
        };
        let b = encode(0x1122, h, b"xy");
        assert_eq!(&b[0..4], b"EGWL");
        assert_eq!(b[4], FORMAT_VERSION);
        assert_eq!(b[5], 9);
        assert_eq!(&b[6..8], &[0, 0]);
        assert_eq!(&b[8..12], &2u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x1122u64.to_le_bytes());
        assert_eq!(&b[24..28], &0x0102_0304u32.to_le_bytes());
        assert_eq!(&b[28..36], &5u64.to_le_bytes());
        assert_eq!(&b[36..], b"xy");
    }

    #[test]
    fn zeroes_truncation_and_length_are_reported() {
        assert_eq!(decode(&[0; 64], 16), Err(FrameError::Zeroed));
        let b = encode(
            1,
            RecordHeader {
                space: 1,
                seq: 1,
                kind: 1,
            },
            &[7; 32],
        );
        assert_eq!(decode(&b[..40], 64), Err(FrameError::Incomplete));
        assert_eq!(decode(&b, 16), Err(FrameError::TooLong { len: 32 }));
    }

    #[test]
    fn unknown_version_with_valid_crc_is_unsupported_not_corrupt() {
        let mut b = encode(
            1,
            RecordHeader {
                space: 1,
                seq: 1,
                kind: 1,
            },
            b"p",
        );
        b[4] = 2;
        let crc = checksum(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(decode(&b, 16).is_err_and(|e| e.is_unsupported()));
    }

    #[test]
    fn finds_the_next_valid_frame_after_garbage() {
        let mut buf = vec![0xAB; 10];
        buf.extend_from_slice(b"EGWLjunk");
        let at = buf.len();
        buf.extend(encode(
            5,
            RecordHeader {
                space: 1,
                seq: 1,
                kind: 1,
            },
            b"ok",
        ));
        assert_eq!(find_valid_frame(&buf, 0, 64), Some(at));
        assert_eq!(find_valid_frame(&buf, at + 1, 64), None);
    }
}
