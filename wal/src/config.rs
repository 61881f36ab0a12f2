//! WAL configuration.

use std::time::Duration;

use crate::WalError;
use crate::frame::HEADER_LEN;

/// When an append is acknowledged relative to `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Acknowledge only after the `fdatasync` that covers the record (group commit).
    #[default]
    Always,
    /// Acknowledge after `write(2)`; `fdatasync` at most this often. A crash of
    /// the machine (not only the process) can lose up to one interval of
    /// acknowledged records.
    Interval(Duration),
    /// Never `fdatasync`. For tests and benchmarks only: logged loudly at open.
    None,
}

/// Settings of one log. `Default` gives the production defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of each segment file in bytes (default 64 MiB). A record must fit
    /// in one segment.
    pub segment_size: u64,
    /// Largest payload accepted by `append` (default 8 MiB). Appends only:
    /// records already in the log were accepted under the limit in force
    /// when they were written, so reading (open, replay) accepts any length
    /// the frame format allows ([`crate::frame::READ_PAYLOAD_LIMIT`]), and
    /// lowering this setting never makes existing records look corrupt.
    pub max_payload: u32,
    /// Acknowledgement policy.
    pub durability: Durability,
    /// Reserve each new segment's blocks with `fallocate(2)` so that later
    /// `fdatasync` calls do not have to update the file size (much faster on
    /// most filesystems). Falls back to a growing file where unsupported.
    pub preallocate: bool,
    /// Hours a file that repair moved to `corrupt/` is kept (default 168,
    /// 7 days; 0 keeps them until removed by hand). Quarantined records can
    /// hold content that was forgotten since: this bounds how long it stays
    /// on disk. Enforced at open and by [`crate::Wal::prune_quarantine`].
    pub corrupt_retention_hours: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_size: 64 * 1024 * 1024,
            max_payload: 8 * 1024 * 1024,
            durability: Durability::Always,
            preallocate: true,
            corrupt_retention_hours: 168,
        }
    }
}

/// Smallest accepted segment size.
pub const MIN_SEGMENT_SIZE: u64 = 4096;

impl WalConfig {
    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<(), WalError> {
        if self.segment_size < MIN_SEGMENT_SIZE {
            return Err(WalError::Config(format!(
                "segment_size {} is below the minimum of {MIN_SEGMENT_SIZE} bytes",
                self.segment_size
            )));
        }
        if self.max_payload == 0 {
            return Err(WalError::Config(
                "max_payload must be at least 1 byte".into(),
            ));
        }
        if HEADER_LEN as u64 + u64::from(self.max_payload) > self.segment_size {
            return Err(WalError::Config(format!(
                "max_payload {} plus the {HEADER_LEN}-byte header does not fit in segment_size {}",
                self.max_payload, self.segment_size
            )));
        }
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return Err(WalError::Config(
                    "durability interval must be at least 1 ms; use Always for per-write fsync"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}
