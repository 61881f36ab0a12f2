//! The WAL's error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the log. Variants carry what an operator
/// needs to act: the segment file and byte offset of damage, the reason a log
/// stopped accepting writes.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An operating-system call failed.
    #[error("WAL I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A damaged record that the owner has not applied yet was found before
    /// the tail of the log.
    #[error(
        "WAL corrupt in segment {segment} at offset {offset}: {reason}; valid records follow, \
         so this is not a torn tail, and the damage reaches records the store has not applied \
         yet. Start once in repair mode (--repair) to cut the log there: everything from the \
         damage on moves to wal/corrupt/, so the unapplied records in and after it are lost and \
         nothing before it is; restoring a backup would lose at least as much"
    )]
    Corrupt {
        /// Segment file holding the damage.
        segment: PathBuf,
        /// Byte offset of the first bad frame in that segment.
        offset: u64,
        /// What is wrong with the bytes there.
        reason: String,
    },
    /// A record was written by a newer build with a format this one cannot read.
    #[error("WAL segment {segment} at offset {offset}: {reason}; upgrade engram to read this log")]
    Unsupported {
        /// Segment file.
        segment: PathBuf,
        /// Byte offset of the frame.
        offset: u64,
        /// Version and flags found.
        reason: String,
    },
    /// Records are missing between two segments (a segment was removed by hand?).
    #[error(
        "WAL is missing records: expected LSN {expected} but segment {segment} starts at {found}"
    )]
    Gap {
        /// The LSN that should come next.
        expected: u64,
        /// The LSN found instead.
        found: u64,
        /// The segment where the gap shows.
        segment: PathBuf,
    },
    /// A write or fsync failed earlier (or the writer thread panicked); the
    /// log refuses appends until reopened.
    #[error("WAL stopped accepting writes after a failure ({reason}); reopen it to recover")]
    Failed {
        /// The first failure.
        reason: String,
    },
    /// Replay was asked for records that open found damaged and stepped over
    /// because the owner had already applied them.
    #[error(
        "WAL records {first} to {last} (segment {segment}, offset {offset}) were damaged and \
         skipped at open because the store had already applied them ({reason}); they cannot \
         be replayed"
    )]
    Skipped {
        /// Segment file holding the damage.
        segment: PathBuf,
        /// Byte offset of the damage in that segment.
        offset: u64,
        /// First unreadable LSN.
        first: u64,
        /// Last unreadable LSN.
        last: u64,
        /// What is wrong with the bytes there.
        reason: String,
    },
    /// The payload is larger than `max_payload`.
    #[error("WAL record payload of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        limit: u32,
    },
    /// Replay was asked for records that retention already removed.
    #[error("WAL records from LSN {requested} are no longer retained (oldest is {oldest})")]
    Truncated {
        /// First LSN asked for.
        requested: u64,
        /// First LSN still on disk.
        oldest: u64,
    },
    /// Starting a new segment on request ([`crate::Wal::rotate`]) failed;
    /// the log goes on writing to the current one.
    #[error("starting a new WAL segment failed: {reason}; the log goes on in the current segment")]
    Rotate {
        /// Why.
        reason: String,
    },
    /// The log was closed while the append was pending.
    #[error("WAL is closed")]
    Closed,
    /// The configuration is not usable.
    #[error("invalid WAL configuration: {0}")]
    Config(String),
    /// Metrics could not be registered.
    #[error("WAL metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl WalError {
    /// `true` for an operating-system call that failed for a cause that can
    /// pass: file descriptors exhausted (EMFILE, ENFILE), disk full (ENOSPC),
    /// quota exceeded (EDQUOT). Nothing else is, and [`WalError::Failed`]
    /// never is: the log fails itself for good on any write or fsync error,
    /// whatever its cause. The owner may retry an operation that failed
    /// transiently and left nothing half done, such as
    /// [`crate::Wal::release_through`] (deleting segments already applied).
    pub fn is_transient(&self) -> bool {
        match self {
            WalError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOSPC | libc::EDQUOT)
            ),
            _ => false,
        }
    }
}

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, WalError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, WalError> {
        self.map_err(|source| WalError::Io {
            path: path.into(),
            source,
        })
    }
}
