//! # engram-graph: the memory model
//!
//! Agents *remember* episodes into isolated memory spaces and *recall* them
//! from a partial cue ([`Graph`]). Everything is built on the durable
//! [`Engine`] this crate also owns, which joins the WAL (`engram-wal`) and the
//! warm store (`engram-lsm`) into one write path and recovers them together.
//!
//! ## Memory model ([`Graph`])
//! - **Spaces** (names `[a-z0-9][a-z0-9_-]{0,62}`; `default` always exists)
//!   are created and deleted through WAL records. A space's data is reachable
//!   only through its own name (invariant 5): every index is per space.
//! - **remember** writes one WAL record holding the episode, its BM25
//!   postings, its embedding and its edges (temporal: previous episode of the
//!   same session; explicit: requested links). Two different texts are always
//!   two memories; identical content is merged only with `dedupe`.
//! - **forget** writes one record deleting content, embedding, postings,
//!   archived copy and every edge in both directions (invariant 6).
//! - **recall**: filters (tags, time range, decayed confidence) apply
//!   *before* ranking; BM25 and cosine seeds are fused by normalised score
//!   (each divided by the best of its kind; the mean of both when the cue
//!   has text and an embedding), so the best seed has activation 1;
//!   activation then spreads along edges ([`activation`]); the score is
//!   `activation × (0.5 + 0.5 × decayed confidence) × (0.8 + 0.2 × recency)`,
//!   recency `exp(-age_days / 30)`. Decayed confidence follows a power-law
//!   forgetting curve ([`activation::retention`]).
//! - A space's in-memory indexes and adjacency are rebuilt from the warm
//!   store on its first use after open (after WAL replay), so recall after a
//!   crash equals recall before it and a restart does not wait for every
//!   space to load; [`Graph::warm_up`] loads them all ahead of use. A space
//!   that cannot be loaded (corrupt data, a storage error) is refused alone
//!   with [`GraphError::SpaceUnavailable`] while the others serve
//!   ([`Graph::damaged_spaces`]); creating or deleting a space never holds
//!   the map of spaces across the WAL's fsync.
//!
//! ## Write path ([`Engine::submit`])
//! 1. The next per-space sequence number is assigned and the record is queued
//!    in the WAL under one lock, so LSN order and per-space sequence order agree.
//! 2. The caller waits for the group commit that makes the record durable.
//! 3. Records are applied to RocksDB strictly in LSN order, as one WriteBatch
//!    per drain (whoever arrives first applies everything acknowledged so far),
//!    together with each space's applied sequence and the applied LSN.
//! 4. Only then is the write acknowledged to the caller.
//!
//! ## Recovery ([`Engine::open`])
//! Opens RocksDB, reads the applied LSN and per-space sequences, opens the WAL
//! (cutting a torn tail; refusing damage before it unless repairing), replays
//! every record after the applied LSN, skipping any whose sequence a space
//! already has, and reports what it did ([`RecoveryReport`]). An acknowledged
//! write survives `kill -9` at any instant (invariant 1); replay is idempotent
//! (invariant 2); column families agree after a crash (invariant 3).
//!
//! ## Retention
//! Every `wal_release_interval` applied records, RocksDB's WAL is synced and
//! WAL segments wholly at or below the applied LSN are deleted (unless pinned).
//! A forget or a space deletion also arms a purge ([`Engine::purge_now`]):
//! `purge_after_ms` later the background task flushes RocksDB, compacts the
//! affected spaces' key ranges to the bottommost level (tombstones and the
//! values they hide are dropped), seals the WAL segment being written and
//! deletes every applied one, so no file keeps the erased content
//! (invariant 6).

mod access;
pub mod activation;
mod adjacency;
mod background;
mod engine;
pub mod hnsw;
mod hot;
mod ids;
mod memory;
mod rank;
pub mod record;
mod snapshot;
mod table;
pub mod text;

pub use activation::Spread;
pub use background::Background;
pub use engine::{
    AppendObserver, Appended, AppendedRecord, Committed, Engine, EngineConfig, EngineError,
    OpenOptions, PurgeReport, RecoveryReport,
};
pub use memory::{
    Begun, ConsolidationConfig, ConsolidationReport, Cue, DEFAULT_LINK_WEIGHT, DEFAULT_SPACE,
    Graph, GraphConfig, GraphError, Limits, LinkSpec, Memory, PendingRemember, QuickBegin,
    QuickFinish, Recalled, RememberRequest, Remembered, SnapshotReport, SpaceOptions, SpaceStats,
    Via, WriteAuthority, kind, valid_space_name,
};
pub use memory::{DamagedSpace, WarmUpReport};
