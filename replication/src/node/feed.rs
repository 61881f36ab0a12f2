//! The primary's feed: every record the engine appends, kept per local
//! space in a ring of recent records (bounded in bytes) until every replica
//! has it, and a wake-up for the shippers after each group commit. Beside
//! the ring, an index of where each record not yet on every member lies in
//! the WAL (sequence number → LSN): records the ring dropped are read back
//! from the WAL through it. The index covers only the newest
//! `max_retained_wal_bytes` of the whole WAL (every space's records count,
//! since the primary pins the shared WAL from the oldest indexed record):
//! older entries leave it, and a member that needs them gets a snapshot.
//!
//! The engine calls [`Feed`] under its order lock and on its WAL writer
//! thread: nothing here blocks beyond a short mutex, and the feed holds no
//! reference to the graph (the graph's engine owns the feed through its
//! observer slot).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use engram_graph::{AppendObserver, AppendedRecord};
use engram_lsm::SpaceId;
use tokio::sync::Notify;

use crate::Record;

/// A record as the feed keeps it.
#[derive(Debug, Clone)]
pub(crate) struct FeedRecord {
    pub seq: u64,
    pub lsn: u64,
    pub kind: u8,
    pub payload: Arc<[u8]>,
}

#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<FeedRecord>,
    bytes: usize,
    /// Records dropped from the front because the ring was full.
    evicted_through: u64,
    /// (seq, LSN, WAL position before it) of every record not yet
    /// trimmed, ring or not.
    index: VecDeque<(u64, u64, u64)>,
}

impl Ring {
    /// Drops index entries more than `limit` WAL bytes behind `end`.
    fn bound_index(&mut self, end: u64, limit: u64) {
        while self
            .index
            .front()
            .is_some_and(|(_, _, pos)| end - pos > limit)
        {
            self.index.pop_front();
        }
    }
}

#[derive(Debug, Default)]
struct Rings {
    by_space: HashMap<SpaceId, Ring>,
    /// Spaces this node holds as a replica: their records come from a
    /// primary and are not kept.
    untracked: HashSet<SpaceId>,
    /// Bytes of every record appended to the WAL since start (all spaces).
    wal_end: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Feed {
    rings: Mutex<Rings>,
    /// Bytes a ring may hold.
    ring_bytes: usize,
    /// WAL bytes the index of one space may cover.
    wal_bytes: usize,
    /// Highest LSN known durable.
    durable_lsn: AtomicU64,
    /// Woken after every group commit (one permit each: a wake-up is never
    /// lost between a shipper's check and its wait).
    wakers: Mutex<Vec<Arc<Notify>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Feed {
    pub(crate) fn new(ring_bytes: usize, wal_bytes: usize) -> Feed {
        Feed {
            rings: Mutex::new(Rings::default()),
            ring_bytes: ring_bytes.max(1),
            wal_bytes,
            durable_lsn: AtomicU64::new(0),
            wakers: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn durable_lsn(&self) -> u64 {
        self.durable_lsn.load(Ordering::Acquire)
    }

    /// Stops keeping records of `space` (a replica's copy).
    pub(crate) fn untrack(&self, space: SpaceId) {
        let mut rings = lock(&self.rings);
        rings.untracked.insert(space);
        rings.by_space.remove(&space);
    }

    /// Keeps records of `space` again (this node became its primary).
    pub(crate) fn track(&self, space: SpaceId) {
        lock(&self.rings).untracked.remove(&space);
    }

    /// Records of `space` after `after`, at most `max`.
    pub(crate) fn after(&self, space: SpaceId, after: u64, max: usize) -> Vec<FeedRecord> {
        let rings = lock(&self.rings);
        let Some(ring) = rings.by_space.get(&space) else {
            return Vec::new();
        };
        let Some(front) = ring.records.front().map(|r| r.seq) else {
            return Vec::new();
        };
        let start = usize::try_from((after + 1).saturating_sub(front)).unwrap_or(usize::MAX);
        if start >= ring.records.len() {
            return Vec::new();
        }
        ring.records.range(start..).take(max).cloned().collect()
    }

    /// Records `first..=last` of `space`, or `None` when the ring no longer
    /// (or not yet) holds all of them.
    pub(crate) fn range(&self, space: SpaceId, first: u64, last: u64) -> Option<Vec<Record>> {
        let rings = lock(&self.rings);
        let ring = rings.by_space.get(&space)?;
        let front = ring.records.front()?.seq;
        if first < front {
            return None;
        }
        let start = usize::try_from(first - front).ok()?;
        if start >= ring.records.len() {
            return None;
        }
        let out: Vec<Record> = ring
            .records
            .range(start..)
            .take_while(|r| r.seq <= last)
            .map(|r| Record {
                seq: r.seq,
                kind: r.kind,
                payload: r.payload.to_vec(),
            })
            .collect();
        let complete = out.first().is_some_and(|r| r.seq == first)
            && out.last().is_some_and(|r| r.seq == last);
        complete.then_some(out)
    }

    /// How many consecutive records of `space` from `first` on fit in
    /// `budget` bytes of batch encoding (at least one, so a record larger
    /// than the budget still goes alone; 0 when the ring does not hold
    /// `first`).
    pub(crate) fn fitting(&self, space: SpaceId, first: u64, budget: usize) -> u64 {
        let rings = lock(&self.rings);
        let Some(ring) = rings.by_space.get(&space) else {
            return 0;
        };
        let Some(front) = ring.records.front().map(|r| r.seq) else {
            return 0;
        };
        let Some(start) = first
            .checked_sub(front)
            .and_then(|d| usize::try_from(d).ok())
        else {
            return 0;
        };
        if start >= ring.records.len() {
            return 0;
        }
        let mut used = 0usize;
        let mut n = 0u64;
        for r in ring.records.range(start..) {
            let size = crate::codec::RECORD_HEADER + r.payload.len();
            if n > 0 && used + size > budget {
                break;
            }
            used += size;
            n += 1;
        }
        n
    }

    /// Drops records of `space` through `seq` (every replica has them).
    pub(crate) fn trim(&self, space: SpaceId, seq: u64) {
        let mut rings = lock(&self.rings);
        if let Some(ring) = rings.by_space.get_mut(&space) {
            while ring.records.front().is_some_and(|r| r.seq <= seq) {
                if let Some(r) = ring.records.pop_front() {
                    ring.bytes -= r.payload.len();
                }
            }
            while ring.index.front().is_some_and(|(s, _, _)| *s <= seq) {
                ring.index.pop_front();
            }
        }
    }

    /// The LSN of record `seq` of `space`, while the index holds it.
    pub(crate) fn lsn_of(&self, space: SpaceId, seq: u64) -> Option<u64> {
        let rings = lock(&self.rings);
        let index = &rings.by_space.get(&space)?.index;
        let i = index.binary_search_by_key(&seq, |(s, _, _)| *s).ok()?;
        index.get(i).map(|(_, lsn, _)| *lsn)
    }

    /// The LSN of the oldest record of `space` some member may still need
    /// from the WAL (what the WAL must keep).
    pub(crate) fn oldest_lsn(&self, space: SpaceId) -> Option<u64> {
        let mut rings = lock(&self.rings);
        let end = rings.wal_end;
        let ring = rings.by_space.get_mut(&space)?;
        // The rest of the WAL moved on while this space was quiet.
        ring.bound_index(end, self.wal_bytes as u64);
        ring.index.front().map(|(_, lsn, _)| *lsn)
    }

    /// Forgets `space` (deleted, or no longer led here).
    pub(crate) fn drop_space(&self, space: SpaceId) {
        lock(&self.rings).by_space.remove(&space);
    }

    pub(crate) fn add_waker(&self, waker: Arc<Notify>) {
        lock(&self.wakers).push(waker);
    }

    pub(crate) fn remove_waker(&self, waker: &Arc<Notify>) {
        lock(&self.wakers).retain(|w| !Arc::ptr_eq(w, waker));
    }

    /// Wakes every shipper.
    pub(crate) fn wake(&self) {
        for w in lock(&self.wakers).iter() {
            w.notify_one();
        }
    }
}

impl AppendObserver for Feed {
    fn appended(&self, record: &AppendedRecord<'_>) {
        let mut rings = lock(&self.rings);
        let before = rings.wal_end;
        let size = (crate::codec::RECORD_HEADER + record.payload.len()) as u64;
        rings.wal_end += size;
        let end = rings.wal_end;
        if rings.untracked.contains(&record.space) {
            return;
        }
        let ring = rings.by_space.entry(record.space).or_default();
        ring.records.push_back(FeedRecord {
            seq: record.seq,
            lsn: record.lsn,
            kind: record.kind,
            payload: Arc::from(record.payload),
        });
        ring.bytes += record.payload.len();
        ring.index.push_back((record.seq, record.lsn, before));
        ring.bound_index(end, self.wal_bytes as u64);
        while ring.bytes > self.ring_bytes && ring.records.len() > 1 {
            if let Some(r) = ring.records.pop_front() {
                ring.bytes -= r.payload.len();
                ring.evicted_through = r.seq;
            }
        }
    }

    fn committed(&self, lsn: u64) {
        self.durable_lsn.fetch_max(lsn, Ordering::AcqRel);
        self.wake();
    }
}
