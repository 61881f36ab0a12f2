//! Index snapshots: a loaded space's in-memory indexes (memories by slot,
//! lexical postings, adjacency, sessions, tag sets) written to one file at a
//! clean shutdown, so the next start reads them back instead of rebuilding
//! them from every key of the space in the warm store.
//!
//! A snapshot is a cache, never a source of truth. It names the space and
//! the space's sequence number it reflects; it is used only when that is
//! exactly the space's applied sequence when the space loads, and it is
//! removed as soon as it has been read (used or not), so a later crash can
//! never meet a stale one. Anything unexpected (checksum, version, bounds)
//! means "rebuild from the store", logged, never an error for the caller.
//!
//! File: `b"ENGRAMIX"`, format version (u32), space id (u64), sequence
//! (u64), the sections, then a CRC-32 of everything before it. Integers are
//! little-endian; arrays of numbers are stored raw after their length.
//! Vector indexes are not included: vectors are read from the store.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use engram_lsm::SpaceId;

const MAGIC: &[u8; 8] = b"ENGRAMIX";
const VERSION: u32 = 2;

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnapshotError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

pub(crate) fn invalid(what: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(what.into())
}

/// The snapshot file of a space.
pub(crate) fn path(dir: &Path, space: SpaceId) -> PathBuf {
    dir.join(format!("space-{space}.idx"))
}

/// Writes sections to a file through a 1 MiB buffer, checksumming each
/// buffer as it goes out.
pub(crate) struct Writer {
    file: File,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

const CHUNK: usize = 1 << 20;

impl Writer {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.drain()?;
        }
        Ok(())
    }

    fn drain(&mut self) -> std::io::Result<()> {
        self.crc.update(&self.buf);
        self.bytes += self.buf.len() as u64;
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }

    pub(crate) fn id(&mut self, id: &[u8; 16]) -> std::io::Result<()> {
        self.put(id)
    }

    pub(crate) fn u8(&mut self, v: u8) -> std::io::Result<()> {
        self.put(&[v])
    }

    pub(crate) fn u32(&mut self, v: u32) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn i64(&mut self, v: i64) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    pub(crate) fn f32(&mut self, v: f32) -> std::io::Result<()> {
        self.put(&v.to_le_bytes())
    }

    /// A length (as u64).
    pub(crate) fn len(&mut self, n: usize) -> std::io::Result<()> {
        self.u64(n as u64)
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.len(b.len())?;
        self.put(b)
    }

    pub(crate) fn str(&mut self, s: &str) -> std::io::Result<()> {
        self.bytes(s.as_bytes())
    }

    /// Numbers stored raw after their count.
    pub(crate) fn u32s(&mut self, v: &[u32]) -> std::io::Result<()> {
        self.len(v.len())?;
        for x in v {
            self.put(&x.to_le_bytes())?;
        }
        Ok(())
    }
}

/// Writes the snapshot of `space` at `seq` atomically (temporary file,
/// fsync, rename, directory fsync); returns its size in bytes.
pub(crate) fn write(
    dir: &Path,
    space: SpaceId,
    seq: u64,
    body: impl FnOnce(&mut Writer) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let target = path(dir, space);
    let tmp = target.with_extension("idx.tmp");
    let mut w = Writer {
        file: File::create(&tmp)?,
        buf: Vec::with_capacity(CHUNK + 4096),
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    let written = (|| {
        w.put(MAGIC)?;
        w.u32(VERSION)?;
        w.u64(u64::from(space))?;
        w.u64(seq)?;
        body(&mut w)?;
        w.drain()?;
        let crc = w.crc.clone().finalize();
        w.file.write_all(&crc.to_le_bytes())?;
        w.file.sync_all()?;
        Ok(w.bytes + 4)
    })();
    match written {
        Ok(n) => {
            std::fs::rename(&tmp, &target)?;
            File::open(dir)?.sync_all()?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Reads sections back from a checked buffer.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.buf.len() {
            return Err(invalid("truncated section"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let b = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub(crate) fn f32(&mut self) -> Result<f32, SnapshotError> {
        Ok(f32::from_le_bytes(self.array()?))
    }

    pub(crate) fn id(&mut self) -> Result<[u8; 16], SnapshotError> {
        self.array()
    }

    /// A length written by [`Writer::len`], at most `max` (and never more
    /// items than bytes left, so a damaged length cannot allocate wildly).
    pub(crate) fn len(&mut self, max: usize) -> Result<usize, SnapshotError> {
        let n = usize::try_from(self.u64()?).map_err(|_| invalid("length"))?;
        if n > max || n > self.buf.len() {
            return Err(invalid(format!("length {n} out of range")));
        }
        Ok(n)
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], SnapshotError> {
        let n = self.len(usize::MAX)?;
        self.take(n)
    }

    pub(crate) fn string(&mut self) -> Result<String, SnapshotError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| invalid("string is not UTF-8"))
    }

    /// Numbers written by [`Writer::u32s`], each checked against `below`.
    pub(crate) fn u32s(&mut self, below: u32) -> Result<Vec<u32>, SnapshotError> {
        let n = self.len(usize::MAX)?;
        let raw = self.take(n.checked_mul(4).ok_or_else(|| invalid("length"))?)?;
        let v: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if v.iter().any(|x| *x >= below) {
            return Err(invalid("slot out of range"));
        }
        Ok(v)
    }
}

/// Reads and removes the snapshot of `space`. `Ok(None)` when there is
/// none; `Ok(Some)` only when it is intact and reflects exactly `seq`;
/// parsing is `body`'s job, on the checked contents.
pub(crate) fn take<T>(
    dir: &Path,
    space: SpaceId,
    seq: u64,
    body: impl FnOnce(&mut Reader<'_>) -> Result<T, SnapshotError>,
) -> Result<Option<T>, SnapshotError> {
    let p = path(dir, space);
    let mut data = Vec::new();
    match File::open(&p) {
        Ok(mut f) => {
            f.read_to_end(&mut data)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    // Read once: whatever happens next, this file is never trusted again.
    std::fs::remove_file(&p)?;
    File::open(dir)?.sync_all()?;
    let parsed = (|| {
        let header = MAGIC.len() + 4 + 8 + 8;
        if data.len() < header + 4 || &data[..MAGIC.len()] != MAGIC {
            return Err(invalid("not an index snapshot"));
        }
        let (content, crc) = data.split_at(data.len() - 4);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(content) != stored {
            return Err(invalid("checksum mismatch"));
        }
        let mut r = Reader {
            buf: &content[MAGIC.len()..],
        };
        let version = r.u32()?;
        if version != VERSION {
            return Err(invalid(format!(
                "format version {version}, expected {VERSION}"
            )));
        }
        let (sid, at) = (r.u64()?, r.u64()?);
        if sid != u64::from(space) {
            return Err(invalid(format!("written for space {sid}")));
        }
        if at != seq {
            return Err(invalid(format!(
                "reflects sequence {at}, the space is at {seq}"
            )));
        }
        let v = body(&mut r)?;
        if !r.buf.is_empty() {
            return Err(invalid("trailing bytes"));
        }
        Ok(v)
    })();
    parsed.map(Some)
}

/// Removes the snapshot of `space` if there is one.
pub(crate) fn remove(dir: &Path, space: SpaceId) -> std::io::Result<()> {
    match std::fs::remove_file(path(dir, space)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(w: &mut Writer) -> std::io::Result<()> {
        w.str("terms")?;
        w.u32s(&[1, 2, 3])?;
        w.id(&[7; 16])?;
        w.f32(0.5)?;
        w.i64(-3)
    }

    type Parsed = (String, Vec<u32>, [u8; 16], f32, i64);

    fn parse(r: &mut Reader<'_>) -> Result<Parsed, SnapshotError> {
        Ok((r.string()?, r.u32s(4)?, r.id()?, r.f32()?, r.i64()?))
    }

    #[test]
    fn round_trips_once_and_only_for_its_space_and_sequence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().join("indexes");
        let n = write(&d, 3, 41, body).expect("write");
        assert_eq!(n, std::fs::metadata(path(&d, 3)).expect("file").len());
        let got = take(&d, 3, 41, parse).expect("take").expect("present");
        assert_eq!(got, ("terms".into(), vec![1, 2, 3], [7; 16], 0.5, -3));
        assert!(take(&d, 3, 41, parse).expect("take").is_none(), "read once");

        write(&d, 3, 41, body).expect("write");
        let e = take(&d, 3, 42, parse).expect_err("another sequence");
        assert!(e.to_string().contains("sequence 41"), "{e}");
        assert!(!path(&d, 3).exists(), "refused snapshots are removed too");

        // Slot bounds are checked by the section reader.
        write(&d, 3, 41, body).expect("write");
        let e = take(&d, 3, 41, |r| {
            r.string()?;
            r.u32s(3)
        })
        .expect_err("slot 3 is out of range");
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn any_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        write(d, 1, 5, body).expect("write");
        let good = std::fs::read(path(d, 1)).expect("read");
        for cut in [0, 7, 20, good.len() - 1] {
            std::fs::write(path(d, 1), &good[..cut]).expect("truncate");
            assert!(take(d, 1, 5, parse).is_err(), "truncated at {cut}");
        }
        for i in (0..good.len()).step_by(3) {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            std::fs::write(path(d, 1), &bad).expect("damage");
            assert!(take(d, 1, 5, parse).is_err(), "bit flipped at {i}");
        }
        // Unparsed trailing sections are refused as well.
        write(d, 1, 5, body).expect("write");
        assert!(take(d, 1, 5, |r| r.string()).is_err());
    }
}
