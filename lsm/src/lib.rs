//! # engram-lsm: the warm tier
//!
//! Engram's durable state lives in one RocksDB database with the column
//! families `meta`, `episodes`, `edges`, `terms`, `vectors` and `cold`
//! ([`Cf`]); their key encodings are documented and tested in [`keys`].
//! Nothing above this crate sees a `rocksdb` type: callers speak in domain
//! [`Mutation`]s grouped into [`Operation`]s (one per WAL record), read
//! episodes, edges and postings, and take checkpoints.
//!
//! The metadata group's Raft log and state live in two more families,
//! `raft_log` and `raft_state`, behind a typed API whose writes are all
//! synced (`raft_*` methods of [`Store`]).
//!
//! ## Contract
//! - [`Store::apply`] writes a batch of operations as **one atomic
//!   WriteBatch** that also stores each touched space's applied sequence
//!   number and the last applied LSN. The caller applies records in LSN order
//!   and skips those at or below [`Store::applied_seq`], which makes WAL replay
//!   idempotent (invariant 4 of ARCHITECTURE.md: sequences never go back).
//! - Column families never disagree after a crash (invariant 3): RocksDB's own
//!   WAL stays on, unsynced, so a multi-family batch is recovered whole or not
//!   at all, and RocksDB syncs that WAL before any flush when several families
//!   exist. Engram's WAL is the durable log; before it releases segments the
//!   engine calls [`Store::sync_wal`] so applied data no longer depends on them.
//! - Dropping a space range-deletes its keys in every data family; its applied
//!   sequence stays so old records are never re-applied.
//! - Deletes are tombstones: the deleted bytes stay in SST files until a
//!   compaction drops them. A record that erases content for good (a forget,
//!   a space deletion: [`mutation::erases_content`]) marks its space in
//!   `meta` in the same batch ([`Store::purge_due`]); [`Store::purge`]
//!   flushes, compacts the marked spaces' key ranges to the bottommost level
//!   and checks no file in them still holds a deletion; the caller then
//!   clears the marks ([`Store::clear_purge_due`]). RocksDB writes a fresh
//!   MANIFEST on every update, so the key bounds of deleted files (posting
//!   keys hold terms) do not outlive them there either.
//! - Compression: lz4 on upper levels, zstd on the bottommost level and on
//!   every level of `cold` (or none: [`StoreConfig::compression`]); bloom
//!   filters and a shared block cache come from [`StoreConfig`].

mod config;
mod error;
mod install;
pub mod keys;
pub mod mutation;
mod raft;
mod replica;
mod store;

pub use config::StoreConfig;
pub use error::StoreError;
pub use install::{ImageFamily, META_TAGS};
pub use mutation::{DecodeError, Mutation, Operation};
pub use store::{Cf, Entry, Store, StoreStats};

/// Numeric id of a memory space (assigned by the graph; below `u32::MAX`).
pub type SpaceId = u32;
/// Id of an episode (the 16 bytes of a ULID).
pub type EpisodeId = [u8; 16];
