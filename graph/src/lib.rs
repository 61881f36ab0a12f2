//! # engram-graph
//!
//! The memory model (spaces, episodes, edges, recall) is built here on top of
//! the durable [`Engine`], which this crate owns today: it joins the WAL
//! (`engram-wal`) and the warm store (`engram-lsm`) into one write path and
//! recovers them together.
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

mod engine;

pub use engine::{Committed, Engine, EngineConfig, EngineError, OpenOptions, RecoveryReport};
