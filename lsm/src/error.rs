//! The warm store's error type.

use std::path::PathBuf;

/// Errors of the warm store, carrying what is needed to act on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// RocksDB reported an error.
    #[error("RocksDB error in {path}: {message}")]
    Rocks {
        /// Database directory.
        path: PathBuf,
        /// RocksDB's message.
        message: String,
    },
    /// Space ids are below `u32::MAX`.
    #[error("space id {0} is reserved")]
    InvalidSpace(u32),
    /// A term is longer than a posting key can hold.
    #[error(
        "term of {len} bytes exceeds the limit of {} bytes",
        crate::keys::MAX_TERM_LEN
    )]
    TermTooLong {
        /// Its length.
        len: usize,
    },
    /// A stored value is malformed.
    #[error("corrupt value in column family {cf}: {detail}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A checkpoint target already exists.
    #[error("checkpoint directory {0} already exists")]
    CheckpointExists(PathBuf),
    /// The configuration is not usable.
    #[error("invalid store configuration: {0}")]
    Config(String),
}

/// How `strerror` (glibc, musl) words running out of file descriptors:
/// EMFILE (`Too many open files`; musl: `No file descriptors available`) and
/// ENFILE (`Too many open files in system`).
const FD_EXHAUSTION_CAUSES: [&str; 2] = ["Too many open files", "No file descriptors available"];

/// How RocksDB and `strerror` word running out of space: ENOSPC (also
/// RocksDB's own `No space left on device` subcode) and EDQUOT (glibc:
/// `Disk quota exceeded`; musl: `Quota exceeded`).
const SPACE_CAUSES: [&str; 3] = [
    "No space left on device",
    "Disk quota exceeded",
    "Quota exceeded",
];

impl StoreError {
    /// `true` when the error is an I/O error whose cause can pass without
    /// anything being wrong with the data: file descriptors exhausted
    /// (EMFILE, ENFILE), disk full (ENOSPC), quota exceeded (EDQUOT).
    /// Everything else (corruption, invalid argument, other I/O errors,
    /// Engram's own checks) is permanent.
    ///
    /// RocksDB reports errors as text (`IO error: <context>: <strerror>`), so
    /// this matches RocksDB's `IO error` messages that name one of those
    /// causes. Whether RocksDB itself accepts writes again once the cause is
    /// gone is another matter: see [`StoreError::is_fd_exhaustion`].
    pub fn is_transient(&self) -> bool {
        self.is_fd_exhaustion()
            || self
                .io_message()
                .is_some_and(|m| SPACE_CAUSES.iter().any(|c| m.contains(c)))
    }

    /// `true` when the error is an I/O error caused by running out of file
    /// descriptors (EMFILE, ENFILE). RocksDB never resumes by itself after
    /// such an error in a write: the only file a write opens is a new
    /// RocksDB WAL file when a memtable is switched, and a failure there (or
    /// in a flush, a compaction or a MANIFEST write) is a fatal background
    /// error that stops writes until the database is reopened. Its automatic
    /// recovery covers `No space left on device` only (its SstFileManager
    /// resumes once space is free), and not when that hit a memtable switch;
    /// EDQUOT is a plain I/O error to RocksDB, as fatal as EMFILE.
    pub fn is_fd_exhaustion(&self) -> bool {
        self.io_message()
            .is_some_and(|m| FD_EXHAUSTION_CAUSES.iter().any(|c| m.contains(c)))
    }

    fn io_message(&self) -> Option<&str> {
        match self {
            StoreError::Rocks { message, .. } if message.starts_with("IO error") => {
                Some(message.as_str())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rocks(message: &str) -> StoreError {
        StoreError::Rocks {
            path: PathBuf::from("/data/db"),
            message: message.into(),
        }
    }

    #[test]
    fn resource_exhaustion_is_transient_and_everything_else_permanent() {
        let transient = [
            "IO error: While open a file for appending: /data/db/000042.log: Too many open files",
            "IO error: While open a file for appending: /data/db/000042.sst: Too many open files in system",
            "IO error: No space left on device: While appending to file: /data/db/000042.log: No space left on device",
            "IO error: While appending to file: /data/db/000042.log: Disk quota exceeded",
        ];
        for m in transient {
            assert!(rocks(m).is_transient(), "{m}");
        }
        let permanent = [
            "Corruption: block checksum mismatch: stored = 1, computed = 2 in /data/db/000042.sst",
            "Invalid argument: Column family not found",
            "IO error: While fsync: /data/db/000042.log: Input/output error",
            // A cause named outside an I/O error is not one.
            "Corruption: value mentions Too many open files",
        ];
        for m in permanent {
            assert!(!rocks(m).is_transient(), "{m}");
        }
        assert!(
            !StoreError::Corrupt {
                cf: "meta",
                detail: "No space left on device".into()
            }
            .is_transient()
        );
    }

    #[test]
    fn only_descriptor_exhaustion_is_fd_exhaustion() {
        assert!(
            rocks("IO error: While open a file for appending: x: Too many open files")
                .is_fd_exhaustion()
        );
        assert!(
            rocks("IO error: While open a file for appending: x: Too many open files in system")
                .is_fd_exhaustion()
        );
        assert!(!rocks("IO error: No space left on device: While appending to file: x: No space left on device").is_fd_exhaustion());
    }
}
