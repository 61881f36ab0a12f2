//! zstd with bounded output, for batches and snapshot chunks.

use crate::CodecError;

/// How a message body is compressed (the wire enum's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Sent as is.
    None,
    /// One zstd frame.
    Zstd,
}

impl Compression {
    /// The wire value (`COMPRESSION_NONE = 0`, `COMPRESSION_ZSTD = 1`).
    pub fn to_wire(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Zstd => 1,
        }
    }

    /// From the wire value; anything else is malformed.
    pub fn from_wire(v: i32) -> Result<Self, CodecError> {
        match v {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Zstd),
            other => Err(CodecError::Malformed(format!(
                "unknown compression {other}"
            ))),
        }
    }
}

/// `bytes` as one zstd frame at `level`.
pub fn zstd(bytes: &[u8], level: i32) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(bytes.len()));
    zstd_safe::compress(&mut out, bytes, level).map_err(|code| {
        CodecError::Decompress(format!("compress: {}", zstd_safe::get_error_name(code)))
    })?;
    Ok(out)
}

/// Decompresses one zstd frame that must hold exactly `expected` bytes,
/// allocating `expected` bytes and no more (the caller has checked it
/// against its limit): a frame that would produce more fails instead of
/// growing the buffer.
pub fn unzstd(frame: &[u8], expected: usize) -> Result<Vec<u8>, CodecError> {
    let mut out: Vec<u8> = Vec::with_capacity(expected);
    let n = zstd_safe::decompress(&mut out, frame)
        .map_err(|code| CodecError::Decompress(zstd_safe::get_error_name(code).to_owned()))?;
    if n != expected || out.len() != expected {
        return Err(CodecError::Decompress(format!(
            "{n} bytes, {expected} declared"
        )));
    }
    Ok(out)
}

/// The body as sent: compressed with zstd at `level` when `compress` is
/// `Some(level)` and `bytes` is longer than `above` and the frame is
/// actually smaller, else as is.
pub(crate) fn pack(
    bytes: Vec<u8>,
    compress: Option<i32>,
    above: usize,
) -> Result<(Compression, Vec<u8>), CodecError> {
    match compress {
        Some(level) if bytes.len() > above => {
            let frame = zstd(&bytes, level)?;
            if frame.len() < bytes.len() {
                Ok((Compression::Zstd, frame))
            } else {
                Ok((Compression::None, bytes))
            }
        }
        _ => Ok((Compression::None, bytes)),
    }
}

/// The uncompressed body of a message: checks the declared size against
/// `limit` before allocating, decompresses, checks the size and the CRC32.
pub(crate) fn unpack<'a>(
    what: &'static str,
    compression: Compression,
    body: &'a [u8],
    uncompressed_len: u32,
    crc32: u32,
    limit: u32,
) -> Result<std::borrow::Cow<'a, [u8]>, CodecError> {
    if uncompressed_len > limit {
        return Err(CodecError::TooLarge {
            what,
            len: u64::from(uncompressed_len),
            limit: u64::from(limit),
        });
    }
    let plain: std::borrow::Cow<'a, [u8]> = match compression {
        Compression::None => {
            if body.len() != uncompressed_len as usize {
                return Err(CodecError::Malformed(format!(
                    "{what} of {} bytes, {uncompressed_len} declared",
                    body.len()
                )));
            }
            std::borrow::Cow::Borrowed(body)
        }
        Compression::Zstd => std::borrow::Cow::Owned(unzstd(body, uncompressed_len as usize)?),
    };
    let computed = crc32fast::hash(&plain);
    if computed != crc32 {
        return Err(CodecError::ChecksumMismatch {
            sent: crc32,
            computed,
        });
    }
    Ok(plain)
}
