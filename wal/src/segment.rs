//! Segment files: naming, listing, creation with preallocation, and the few
//! system calls the log makes (each behind a fault-injection point in tests).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::WalError;
use crate::error::IoContext;

const SUFFIX: &str = ".wal";

/// A segment file and the LSN of its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SegmentFile {
    pub first_lsn: u64,
    pub path: PathBuf,
}

pub(crate) fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}{SUFFIX}")
}

fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|lsn| *lsn <= crate::MAX_LSN)
}

/// Segment files in `dir`, ordered by first LSN. Other entries are ignored.
pub(crate) fn list(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(first_lsn) = name.to_str().and_then(parse_name) else {
            continue;
        };
        if entry.file_type().at(entry.path())?.is_file() {
            out.push(SegmentFile {
                first_lsn,
                path: entry.path(),
            });
        }
    }
    out.sort_by_key(|s| s.first_lsn);
    Ok(out)
}

/// Creates (or replaces) the segment starting at `first_lsn`, reserving
/// `size` bytes when `preallocate` is set, and makes its directory entry durable.
pub(crate) fn create(
    dir: &Path,
    first_lsn: u64,
    size: u64,
    preallocate: bool,
) -> Result<(File, PathBuf), WalError> {
    let path = dir.join(segment_name(first_lsn));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .at(&path)?;
    if preallocate {
        if let Err(e) = fallocate(&file, size) {
            tracing::debug!(path = %path.display(), error = %e, "segment preallocation unsupported; the file will grow");
        }
    }
    sync_file(&file).at(&path)?;
    sync_dir(dir)?;
    Ok((file, path))
}

fn fallocate(file: &File, size: u64) -> io::Result<()> {
    let len =
        libc::off_t::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: plain system call on a file descriptor we own; no memory is shared.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `pwrite` of the whole buffer. Fault points: `wal::write` fails outright
/// with ENOSPC; `wal::write_partial` writes half the buffer, then fails with ENOSPC.
pub(crate) fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    fail::fail_point!("wal::write", |_| Err(io::Error::from_raw_os_error(
        libc::ENOSPC
    )));
    fail::fail_point!("wal::write_partial", |_| {
        file.write_all_at(&buf[..buf.len() / 2], offset)?;
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    });
    file.write_all_at(buf, offset)
}

/// `fdatasync`. Fault point `wal::fsync` fails with EIO.
pub(crate) fn sync_data(file: &File) -> io::Result<()> {
    fail::fail_point!("wal::fsync", |_| Err(io::Error::from_raw_os_error(
        libc::EIO
    )));
    file.sync_data()
}

fn sync_file(file: &File) -> io::Result<()> {
    fail::fail_point!("wal::fsync", |_| Err(io::Error::from_raw_os_error(
        libc::EIO
    )));
    file.sync_all()
}

/// Makes creations, renames and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Cuts `path` to `len` bytes and makes that durable.
pub(crate) fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let f = OpenOptions::new().write(true).open(path).at(path)?;
    f.set_len(len).at(path)?;
    f.sync_all().at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_lsn_and_foreign_files_are_ignored() {
        assert_eq!(parse_name(&segment_name(42)), Some(42));
        assert_eq!(parse_name("00000000000000000042.wal.tmp"), None);
        assert_eq!(parse_name("42.wal"), None);
        assert_eq!(parse_name(&segment_name(u64::MAX)), None, "beyond MAX_LSN");
        let dir = tempfile::tempdir().expect("tempdir");
        for lsn in [100, 7, 12345] {
            create(dir.path(), lsn, 4096, true).expect("create");
        }
        fs::write(dir.path().join("notes.txt"), b"x").expect("write");
        let lsns: Vec<u64> = list(dir.path())
            .expect("list")
            .iter()
            .map(|s| s.first_lsn)
            .collect();
        assert_eq!(lsns, vec![7, 100, 12345]);
    }
}
