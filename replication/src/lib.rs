//! Per-space log shipping between Engram nodes.
//!
//! What is here so far is the wire side that every later piece builds on:
//! - [`codec`]: replication batches, runs of consecutive WAL records of one
//!   space (`seq u64 | kind u8 | len u32 | payload`, little-endian), with a
//!   CRC32 over the uncompressed encoding and zstd above a size threshold;
//! - [`chunk`]: snapshot chunks, runs of key/value pairs of one column
//!   family, checksummed and compressed the same way;
//! - [`compress`]: the bounded zstd helpers both use;
//! - [`protocol`]: the protocol's pure state machines (epoch histories,
//!   the replica and primary sides of a space) and their simulator;
//! - [`state`]: what a node persists per replicated space (uid, promise,
//!   history), encoded so that damage is an error, never a panic.
//!
//! Every decoder reads untrusted bytes from the network: it never panics,
//! uses memory bounded by its configured limit (a few times it, never what a
//! header claims), and says what is wrong
//! ([`CodecError`]). `docs/replication.md` describes the protocol.

pub mod chunk;
pub mod codec;
pub mod compress;
mod error;
#[cfg(feature = "node")]
pub mod node;
pub mod protocol;
pub mod state;

pub use chunk::{ChunkLimits, SnapshotChunk};
pub use codec::{Batch, BatchLimits, EncodeOptions, Record};
pub use compress::Compression;
pub use error::CodecError;
pub use state::SpaceReplicaState;
