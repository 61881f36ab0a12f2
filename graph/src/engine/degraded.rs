//! Storage that failed for a cause that passes (file descriptors exhausted,
//! disk full: [`engram_lsm::StoreError::is_transient`],
//! [`engram_wal::WalError::is_transient`]) without the engine failing.
//!
//! **Apply.** A WriteBatch that RocksDB refused for such a cause goes back to
//! the front of the pending records, in LSN order: those records are already
//! durable in the WAL, so nothing is lost and nothing is reordered. The
//! callers waiting on that apply get [`super::EngineError::ApplyDeferred`]
//! (an HTTP 503 `storage_unavailable`), although their record is durable: it
//! is applied by the next attempt, like a write whose acknowledgment timed
//! out. Every later write tries the pending records first, and
//! [`super::Engine::retry_pending_apply`], called about every second by the
//! background task, tries them on a quiet server. The first apply that
//! succeeds ends the degraded state (logged as `storage recovered`).
//!
//! **Release.** Syncing RocksDB's WAL and deleting applied WAL segments
//! refused for such a cause loses nothing (the segments stay until the next
//! attempt, at most once a second): the write that triggered it succeeds and
//! the state is degraded until a release succeeds.
//!
//! **What does not heal.** RocksDB resumes by itself only from a full disk
//! (its SstFileManager retries once space is free), not when it ran out of
//! file descriptors while opening a file (a new RocksDB WAL at a memtable
//! switch, an SST file of a flush or compaction, a MANIFEST): that is a fatal
//! background error, every later write returns it, and only reopening the
//! database clears it (`DB::Resume` refuses fatal errors, and the C API
//! behind the `rocksdb` crate does not expose it). So when a retry is
//! refused for want of descriptors although the engine can open a file
//! again, the engine fails ([`super::EngineError::StoreStopped`]): restart
//! to recover, the WAL replays everything.
//!
//! **Indexes.** A record applied after its writer was told the write failed
//! never reached the in-memory indexes (the graph undid its preparation):
//! until the space is loaded again from the store, they can lack it. Such
//! spaces are listed by [`super::Engine::spaces_applied_after_error`]; their
//! index snapshots must not be written.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use engram_lsm::SpaceId;
use prometheus::{IntCounter, IntGauge, Registry};

use super::lock;

/// Least time between two background retries (writes retry at once).
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);

/// Records waiting to be applied beyond which, while degraded, new writes
/// are refused before they reach the WAL ([`super::EngineError::Degraded`]):
/// every retry writes them all in one WriteBatch.
pub(super) const MAX_PENDING: usize = 4096;

/// The step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Writing records to RocksDB.
    Apply,
    /// Syncing RocksDB's WAL and deleting applied WAL segments.
    Release,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Apply => "store apply",
            Stage::Release => "WAL release",
        }
    }
}

#[derive(Debug)]
struct State {
    stage: Stage,
    reason: String,
    since: Instant,
    last_try: Instant,
    failures: u64,
}

/// The engine's degraded state; `state` and `late` are leaf locks.
pub(super) struct Degradation {
    state: Mutex<Option<State>>,
    /// Spaces with a record applied (or still to be) after its writer got an error.
    late: Mutex<BTreeSet<SpaceId>>,
    gauge: IntGauge,
    retries: IntCounter,
}

impl Degradation {
    pub(super) fn new(registry: Option<&Registry>) -> Result<Degradation, prometheus::Error> {
        let gauge = IntGauge::new(
            "engram_store_degraded",
            "1 while writes to the store fail for a cause that can pass (file descriptors \
             exhausted, disk full) and are retried",
        )?;
        let retries = IntCounter::new(
            "engram_store_apply_retries_total",
            "Background retries of records that the store refused for a cause that can pass",
        )?;
        if let Some(r) = registry {
            r.register(Box::new(gauge.clone()))?;
            r.register(Box::new(retries.clone()))?;
        }
        Ok(Degradation {
            state: Mutex::new(None),
            late: Mutex::new(BTreeSet::new()),
            gauge,
            retries,
        })
    }

    /// Records a failure of `stage` (a first one, or a retry's).
    pub(super) fn enter(&self, stage: Stage, reason: String) {
        let now = Instant::now();
        let mut s = lock(&self.state);
        if let Some(st) = s.as_mut().filter(|st| st.stage == stage) {
            st.reason = reason;
            st.last_try = now;
            st.failures += 1;
            tracing::debug!(stage = stage.name(), error = %st.reason, failures = st.failures, "storage still refuses the retry");
            return;
        }
        tracing::warn!(stage = stage.name(), error = %reason, "storage degraded: a write failed for a cause that can pass; retrying (the records are durable in the WAL)");
        *s = Some(State {
            stage,
            reason,
            since: now,
            last_try: now,
            failures: 1,
        });
        self.gauge.set(1);
    }

    /// Ends a degraded state of `stage` (another stage's stays).
    pub(super) fn clear(&self, stage: Stage) {
        let mut s = lock(&self.state);
        if s.as_ref().is_some_and(|st| st.stage == stage) {
            if let Some(st) = s.take() {
                tracing::info!(
                    stage = stage.name(),
                    degraded_ms = st.since.elapsed().as_millis() as u64,
                    failures = st.failures,
                    "storage recovered"
                );
            }
            self.gauge.set(0);
        }
    }

    /// `true` when degraded at `stage`.
    pub(super) fn at(&self, stage: Stage) -> bool {
        lock(&self.state)
            .as_ref()
            .is_some_and(|st| st.stage == stage)
    }

    /// `true` when degraded and the last attempt is at least [`RETRY_EVERY`] old.
    pub(super) fn retry_due(&self) -> bool {
        lock(&self.state)
            .as_ref()
            .is_some_and(|st| st.last_try.elapsed() >= RETRY_EVERY)
    }

    /// `false` while degraded at [`Stage::Release`] and the last attempt is
    /// younger than [`RETRY_EVERY`]: a release is not tried on every write.
    pub(super) fn release_due(&self) -> bool {
        match &*lock(&self.state) {
            Some(st) if st.stage == Stage::Release => st.last_try.elapsed() >= RETRY_EVERY,
            _ => true,
        }
    }

    pub(super) fn count_retry(&self) {
        self.retries.inc();
    }

    /// What failed, since when, how often.
    pub(super) fn describe(&self) -> Option<String> {
        lock(&self.state).as_ref().map(|st| {
            format!(
                "{} failing for {} s ({} attempts), retried automatically: {}",
                st.stage.name(),
                st.since.elapsed().as_secs(),
                st.failures,
                st.reason
            )
        })
    }

    pub(super) fn note_late(&self, spaces: impl IntoIterator<Item = SpaceId>) {
        lock(&self.late).extend(spaces);
    }

    pub(super) fn late(&self) -> Vec<SpaceId> {
        lock(&self.late).iter().copied().collect()
    }
}
