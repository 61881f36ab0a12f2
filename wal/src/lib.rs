//! # engram-wal: Engram's write-ahead log
//!
//! Every change to Engram is first a record in this log. The log owns
//! framing, checksums, group commit, `fdatasync`, replay, torn-tail
//! truncation and segment retention. It knows nothing about what records
//! mean: the payload and the `kind` byte belong to the layer above.
//!
//! ## Durability contract
//! - [`Wal::append`] assigns the next LSN (global, dense, strictly increasing
//!   across restarts) and returns an [`AppendTicket`]. With
//!   [`Durability::Always`] (the default) the ticket resolves only after the
//!   `fdatasync` that covers the record. Concurrent appends are batched by a
//!   single writer thread into one `pwrite` and one `fdatasync` (group commit).
//! - If a write or fsync fails, every pending append fails (none is
//!   acknowledged) and the log enters a failed state: every later append is
//!   refused with [`WalError::Failed`] until the log is reopened. The log never
//!   retries an fsync on the same file and reports success; a reopen validates
//!   the files and always starts a new segment. A panic in the writer thread
//!   is handled the same way: no append waits forever on a writer that is gone.
//! - [`Durability::Interval`] acknowledges after `write(2)` and fsyncs at most
//!   every interval; [`Durability::None`] never fsyncs (tests and benchmarks
//!   only; logged loudly at open).
//!
//! ## Recovery contract ([`Wal::open`])
//! The owner passes one more than the highest LSN it has applied as
//! [`WalOptions::lsn_floor`] (the "floor").
//! - Every segment is decoded. Damage (incomplete frame, CRC mismatch, bad
//!   magic, LSN out of order) with **nothing valid after it** is a torn tail: the
//!   segment is cut at that offset and the event is logged with segment and
//!   offset ([`OpenReport::torn_tail`]).
//! - Damage (or missing records) **wholly below the floor** loses nothing: the
//!   records are already applied and never replayed again. It is logged as a
//!   warning with segment and offset, reported in
//!   [`OpenReport::applied_damage`], counted in
//!   `engram_wal_applied_damage_skipped_total`, and `open` goes on; replay
//!   steps over it (asking replay for those records gives
//!   [`WalError::Skipped`]). Retention removes it with its segment.
//! - Other damage **followed by valid records** stops `open` with
//!   [`WalError::Corrupt`] naming segment and offset, unless
//!   [`WalOptions::repair`] is set: then the log is cut there and the damaged
//!   remainder is moved to `<dir>/corrupt/` ([`OpenReport::repaired`]).
//!   Repair loses the records from the damage on that are not applied yet.
//! - The frame format does not mark group-commit boundaries, so a torn last
//!   group is recognised only as damage with nothing valid after it (see the
//!   `recovery` module for why that is the case after a process crash, and
//!   what a machine crash can leave instead).
//! - A frame with a valid CRC but an unknown format version stops `open` with
//!   [`WalError::Unsupported`]; it is never truncated.
//! - Reading accepts any payload length the frame format allows
//!   ([`frame::READ_PAYLOAD_LIMIT`]); [`WalConfig::max_payload`] limits
//!   appends only, so lowering it never makes existing records unreadable.
//!
//! ## Retention
//! Segments are deleted by [`Wal::release_through`] once every record in them
//! is at or below the LSN the caller has applied (and made durable elsewhere)
//! and below every live [`Pin`]. The segment being written is never deleted;
//! [`Wal::rotate`] seals it and starts a new one, so that an owner who must
//! not keep old records (forgotten content) can release everything written
//! so far. A deleted segment's blocks go back to the filesystem unerased.
//! Files that repair moved to `corrupt/` are deleted
//! [`WalConfig::corrupt_retention_hours`] after the repair, at open and by
//! [`Wal::prune_quarantine`].
//!
//! ## On-disk layout
//! `<dir>/<first LSN, 20 decimal digits>.wal` segment files, each
//! preallocated to `segment_size` bytes where the filesystem allows; the
//! unwritten rest of a segment is zeros. Frames are packed back to back; all
//! integers are little-endian:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0  | 4 | magic `b"EGWL"` |
//! | 4  | 1 | format version (1) |
//! | 5  | 1 | operation kind (opaque to the log) |
//! | 6  | 2 | flags (0; reserved) |
//! | 8  | 4 | payload length `n` |
//! | 12 | 4 | CRC32 (IEEE, `crc32fast`) over bytes `0..12` and `16..36+n` |
//! | 16 | 8 | LSN |
//! | 24 | 4 | space id |
//! | 28 | 8 | per-space sequence number |
//! | 36 | n | payload |
//!
//! ## Metrics
//! Registered in the [`prometheus::Registry`] passed in [`WalOptions`]:
//! `engram_wal_records_total`, `engram_wal_bytes_total`,
//! `engram_wal_fsyncs_total`, `engram_wal_fsync_seconds` (histogram),
//! `engram_wal_group_commit_records` (histogram), `engram_wal_failed`,
//! `engram_wal_segments`, `engram_wal_applied_damage_skipped_total`.

/// Largest LSN the log hands out or accepts in a segment name (2^62): far
/// beyond any real log, and low enough that LSN arithmetic never overflows
/// even on damaged input.
pub const MAX_LSN: u64 = 1 << 62;

mod config;
mod error;
pub mod frame;
mod log;
mod metrics;
mod recovery;
mod segment;

pub use config::{Durability, MIN_SEGMENT_SIZE, WalConfig};
pub use error::WalError;
pub use frame::RecordHeader;
pub use log::{
    AppendTicket, AppliedDamage, CORRUPT_DIR, CommitHook, OpenReport, Pin, Record, Replay,
    Truncation, Wal, WalOptions, WalStats,
};
