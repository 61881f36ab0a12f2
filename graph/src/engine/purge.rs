//! Purging erased content from the files (invariant 6 of ARCHITECTURE.md:
//! forget really deletes, in every tier).
//!
//! A forget or a space deletion only writes deletions: RocksDB keeps the
//! erased values in SST files (and its own WAL) behind tombstones until a
//! compaction happens to drop them, and Engram's WAL keeps the records that
//! carried them (the remember, and the forget, whose posting deletions name
//! the terms) until their segment is released. A purge pass removes all of
//! it:
//! 1. the WAL segment being written is sealed ([`engram_wal::Wal::rotate`]) and the
//!    records in it are applied;
//! 2. the store flushes its memtables and compacts the key ranges of the
//!    spaces marked by erasing records down to the bottommost level
//!    ([`engram_lsm::Store::purge`]); the marks of spaces found clean are
//!    cleared;
//! 3. RocksDB's WAL is synced and every WAL segment holding only applied
//!    records is deleted (all but the new one, unless a pin holds them);
//! 4. quarantined WAL files past `corrupt_retention_hours` are deleted.
//!
//! **Deadline.** The first erasure applied after a pass arms the timer; the
//! background task starts a pass once it is `purge_after_ms` old, and that
//! pass covers every erasure applied before it flushed. A pass that could
//! not finish (a space still holding deletions, a pinned WAL segment, an
//! error) is tried again `purge_after_ms` later. The marks live in the
//! store, written in the batch that applies the erasing record, so a
//! restart resumes a pending purge at once.
//!
//! **Cost.** A pass rewrites the SST files of the affected spaces (about
//! their size; twice for data not yet in the bottommost level) and `meta`,
//! alongside writes; everything else is a few fsyncs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use engram_lsm::{Operation, SpaceId, mutation};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

use super::{Engine, EngineError, lock};

/// How often quarantined WAL files are checked against their retention
/// when no purge runs.
const QUARANTINE_EVERY: Duration = Duration::from_secs(3600);

/// What one purge pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Spaces whose key ranges were compacted clean (their marks cleared).
    pub spaces: usize,
    /// Spaces whose key range still held deletions afterwards (a compaction
    /// failed, or new deletions were flushed meanwhile): purged again later.
    pub spaces_left: Vec<SpaceId>,
    /// WAL segments deleted.
    pub wal_segments_deleted: usize,
    /// A WAL segment holding an erasing record is still kept by a pin (a
    /// replica or a replay reading it): purged again later.
    pub wal_retained: bool,
    /// Quarantined WAL files deleted (past `corrupt_retention_hours`).
    pub quarantine_deleted: usize,
    /// Time the pass took.
    pub elapsed: Duration,
}

impl PurgeReport {
    /// `true` when nothing erased before the pass is left in any file.
    pub fn complete(&self) -> bool {
        self.spaces_left.is_empty() && !self.wal_retained
    }
}

#[derive(Debug)]
struct State {
    /// When the oldest erasure not yet purged was applied (or a retry due).
    due_since: Option<Instant>,
    /// LSN of the latest erasing record applied.
    erased_lsn: u64,
    /// Passes finished (complete or not).
    passes: u64,
    /// When quarantined WAL files were last checked.
    quarantine_checked: Instant,
}

/// The engine's purge bookkeeping; `state` is a leaf lock (taken after
/// `applied` when both are held).
pub(super) struct Purge {
    after: Duration,
    state: Mutex<State>,
    /// One pass at a time.
    running: Mutex<()>,
    seconds: Histogram,
    passes: IntCounter,
    failures: IntCounter,
}

impl Purge {
    pub(super) fn new(after_ms: u64, registry: Option<&Registry>) -> Result<Purge, EngineError> {
        let seconds = Histogram::with_opts(
            HistogramOpts::new(
                "engram_purge_seconds",
                "Time of one purge pass (flush, compaction of the spaces with erased content, \
                 WAL rotation and release)",
            )
            .buckets(prometheus::exponential_buckets(0.01, 3.0, 11)?),
        )?;
        let passes = IntCounter::new(
            "engram_purges_total",
            "Purge passes run after forgets and space deletions",
        )?;
        let failures = IntCounter::new(
            "engram_purge_failures_total",
            "Purge passes and quarantine clean-ups that failed (logged; a pass is tried again \
             purge_after_ms later)",
        )?;
        if let Some(r) = registry {
            r.register(Box::new(seconds.clone()))?;
            r.register(Box::new(passes.clone()))?;
            r.register(Box::new(failures.clone()))?;
        }
        Ok(Purge {
            after: Duration::from_millis(after_ms),
            state: Mutex::new(State {
                due_since: None,
                erased_lsn: 0,
                passes: 0,
                quarantine_checked: Instant::now(),
            }),
            running: Mutex::new(()),
            seconds,
            passes,
            failures,
        })
    }

    /// Arms the timer when `ops` (just applied) erase content.
    pub(super) fn note_applied(&self, ops: &[Operation]) {
        let Some(op) = ops
            .iter()
            .rev()
            .find(|op| mutation::erases_content(&op.mutations))
        else {
            return;
        };
        let mut s = lock(&self.state);
        s.erased_lsn = s.erased_lsn.max(op.lsn);
        s.due_since.get_or_insert_with(Instant::now);
    }

    /// Marks found in the store at open: a purge is overdue.
    pub(super) fn resume(&self, marks: &[(SpaceId, u64)]) {
        let Some(lsn) = marks.iter().map(|(_, lsn)| *lsn).max() else {
            return;
        };
        let now = Instant::now();
        let mut s = lock(&self.state);
        s.erased_lsn = s.erased_lsn.max(lsn);
        s.due_since = Some(now.checked_sub(self.after).unwrap_or(now));
        tracing::info!(
            spaces = marks.len(),
            "content erased before the restart is not purged from the files yet; purging"
        );
    }
}

impl Engine {
    /// Runs a purge pass if one is due (`purge_after_ms` after the first
    /// erasure not purged yet), and otherwise, once an hour, deletes
    /// quarantined WAL files past their retention. The background task
    /// calls this every 10 ms to 1 s. Failures are logged and counted in
    /// `engram_purge_failures_total`.
    pub fn purge_if_due(&self) -> Result<Option<PurgeReport>, EngineError> {
        let (due, check_quarantine) = {
            let mut s = lock(&self.core.purge.state);
            let due = s
                .due_since
                .is_some_and(|t| t.elapsed() >= self.core.purge.after);
            let check = !due && s.quarantine_checked.elapsed() >= QUARANTINE_EVERY;
            if check {
                s.quarantine_checked = Instant::now();
            }
            (due, check)
        };
        if due {
            return self.purge_now().map(Some);
        }
        if !check_quarantine {
            return Ok(None);
        }
        if let Err(e) = self.wal.prune_quarantine() {
            self.core.purge.failures.inc();
            tracing::warn!(error = %e, "deleting quarantined WAL files past their retention failed");
            return Err(e.into());
        }
        Ok(None)
    }

    /// Runs a purge pass now (see the module documentation of `purge`):
    /// after it returns with a [complete](PurgeReport::complete) report, no
    /// file of the data directory holds content erased before the call, and
    /// a checkpoint taken afterwards holds none either. An incomplete pass
    /// or an error re-arms the timer.
    pub fn purge_now(&self) -> Result<PurgeReport, EngineError> {
        let _one = lock(&self.core.purge.running);
        let started = Instant::now();
        let target = {
            let mut s = lock(&self.core.purge.state);
            s.due_since = None;
            s.erased_lsn
        };
        let result = self.purge_pass(target, started);
        let retry = !matches!(&result, Ok(r) if r.complete());
        {
            let mut s = lock(&self.core.purge.state);
            s.passes += 1;
            if retry {
                s.due_since.get_or_insert_with(Instant::now);
            }
        }
        self.core.purge.passes.inc();
        self.core
            .purge
            .seconds
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(r) if r.complete() => tracing::info!(
                spaces = r.spaces,
                wal_segments_deleted = r.wal_segments_deleted,
                elapsed_ms = r.elapsed.as_millis() as u64,
                "erased content purged from the store and the WAL"
            ),
            Ok(r) => tracing::warn!(
                spaces_left = ?r.spaces_left,
                wal_retained = r.wal_retained,
                "purge incomplete (new deletions, a failed compaction or a pinned WAL segment); \
                 trying again after purge_after_ms"
            ),
            Err(e) => {
                self.core.purge.failures.inc();
                tracing::warn!(error = %e, "purge failed; trying again after purge_after_ms");
            }
        }
        result
    }

    fn purge_pass(&self, target: u64, started: Instant) -> Result<PurgeReport, EngineError> {
        let marks = self.core.store.purge_due()?;
        let sealed = self.wal.rotate()?;
        self.apply_through(sealed)?;
        let spaces: Vec<SpaceId> = marks.iter().map(|(space, _)| *space).collect();
        let spaces_left = self.core.store.purge(&spaces)?;
        let clean: Vec<(SpaceId, u64)> = marks
            .iter()
            .filter(|(space, _)| !spaces_left.contains(space))
            .copied()
            .collect();
        let (wal_segments_deleted, first_retained) = {
            let mut applied = lock(&self.core.applied);
            self.core.check_failed()?;
            self.core.store.clear_purge_due(&clean)?;
            self.core.store.sync_wal()?;
            let deleted = self.wal.release_through(applied.lsn)?;
            applied.released_at = applied.lsn;
            (deleted, self.wal.first_retained_lsn())
        };
        let quarantine_deleted = self.wal.prune_quarantine()?;
        Ok(PurgeReport {
            spaces: clean.len(),
            spaces_left,
            wal_segments_deleted,
            wal_retained: first_retained <= target,
            quarantine_deleted,
            elapsed: started.elapsed(),
        })
    }

    /// `true` while erased content waits for a purge pass (or its retry).
    pub fn purge_pending(&self) -> bool {
        lock(&self.core.purge.state).due_since.is_some()
    }

    /// Purge passes finished since open (complete or not).
    pub fn purges(&self) -> u64 {
        lock(&self.core.purge.state).passes
    }
}
