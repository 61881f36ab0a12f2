//! Catch-up from the WAL: records of a space the recent-records ring no
//! longer holds, read back from the primary's own WAL for a member that
//! lags further behind. The feed's index says at which LSN a record lies;
//! the primary pins the WAL from the oldest record a member may still need
//! (bounded by `max_retained_wal_bytes`), so the engine's retention keeps
//! those segments. A member behind what the WAL keeps gets a snapshot.
//!
//! One cursor per member stays open across batches (the WAL reader holds
//! one segment in memory at a time and its own pin), so a long catch-up
//! reads each segment once.

use std::iter::Peekable;

use engram_graph::Graph;
use engram_lsm::SpaceId;
use engram_wal::{Replay, WalError};

use super::feed::Feed;
use crate::Record;
use crate::codec::RECORD_HEADER;

/// Where a member's catch-up stands in the WAL.
pub(crate) struct WalCursor {
    replay: Peekable<Replay>,
    /// The next record of the space the reader yields.
    next_seq: u64,
}

impl std::fmt::Debug for WalCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalCursor")
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

/// Reads records `first..=limit` of local space `local` from the WAL, as
/// many as fit in `budget` bytes of batch encoding (at least one).
/// `Ok(None)`: the WAL no longer holds `first` (the member needs a
/// snapshot). `Ok(Some(empty))`: nothing readable yet.
pub(crate) fn read(
    graph: &Graph,
    feed: &Feed,
    local: SpaceId,
    first: u64,
    limit: u64,
    budget: usize,
    cursor: &mut Option<WalCursor>,
) -> Result<Option<Vec<Record>>, String> {
    if cursor.as_ref().is_none_or(|c| c.next_seq != first) {
        *cursor = None;
        let Some(lsn) = feed.lsn_of(local, first) else {
            return Ok(None);
        };
        match graph.engine().wal().replay(lsn) {
            Ok(replay) => {
                *cursor = Some(WalCursor {
                    replay: replay.peekable(),
                    next_seq: first,
                });
            }
            Err(WalError::Truncated { .. }) => return Ok(None),
            Err(e) => return Err(format!("reading the WAL failed: {e}")),
        }
    }
    let Some(c) = cursor.as_mut() else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let mut used = 0usize;
    while c.next_seq <= limit {
        let size = match c.replay.peek() {
            None => break,
            Some(Err(_)) => {
                let e = c.replay.next().and_then(Result::err);
                *cursor = None;
                return Err(format!(
                    "reading the WAL failed: {}",
                    e.map_or_else(|| "unknown error".into(), |e| e.to_string())
                ));
            }
            Some(Ok(r)) if r.header.space != local || r.header.seq < c.next_seq => {
                c.replay.next();
                continue;
            }
            Some(Ok(r)) if r.header.seq != c.next_seq => {
                let (got, want) = (r.header.seq, c.next_seq);
                *cursor = None;
                return Err(format!(
                    "the WAL holds record {got} of the space where {want} was expected"
                ));
            }
            Some(Ok(r)) => RECORD_HEADER + r.payload.len(),
        };
        if !out.is_empty() && used + size > budget {
            break;
        }
        let Some(Ok(r)) = c.replay.next() else {
            break;
        };
        out.push(Record {
            seq: r.header.seq,
            kind: r.header.kind,
            payload: r.payload,
        });
        used += size;
        c.next_seq += 1;
    }
    if out.is_empty() {
        // The reader reached what the WAL had acknowledged when it
        // started: the next call starts a new one.
        *cursor = None;
    }
    Ok(Some(out))
}
