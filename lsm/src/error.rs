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
