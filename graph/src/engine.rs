//! The durable engine: WAL + warm store + recovery, and the ordered write path.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use engram_lsm::{Mutation, Operation, SpaceId, Store, StoreConfig, StoreError, mutation};
use engram_wal::{OpenReport, RecordHeader, Wal, WalConfig, WalError, WalOptions};
use prometheus::{Histogram, HistogramOpts, IntCounter, Registry};

mod degraded;
mod purge;

pub use purge::PurgeReport;

/// Settings of the storage engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Write-ahead log settings.
    pub wal: WalConfig,
    /// RocksDB settings.
    pub store: StoreConfig,
    /// After this many applied records the engine syncs RocksDB's WAL and
    /// releases WAL segments that are no longer needed (default 16384).
    pub wal_release_interval: u64,
    /// Milliseconds after a forget (or a space deletion) by which the
    /// background task starts the purge that removes the erased content from
    /// every file: RocksDB memtables are flushed and the space's key range
    /// compacted to the bottommost level, the WAL segment being written is
    /// sealed and every applied segment deleted (default 60 000). Forgets
    /// within the window share one purge. 0: at the next check (about every
    /// 10 ms; one compaction per forget, costly). See [`Engine::purge_now`].
    pub purge_after_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            wal: WalConfig::default(),
            store: StoreConfig::default(),
            wal_release_interval: 16384,
            purge_after_ms: 60_000,
        }
    }
}

/// How to open the engine (operator choices, not configuration).
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Truncate WAL damage found before the tail instead of refusing to start.
    pub repair: bool,
    /// Registry for the engine's and the WAL's metrics.
    pub registry: Option<Registry>,
}

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The write-ahead log failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The warm store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A WAL record's payload is not a valid operation.
    #[error("WAL record at LSN {lsn} has an undecodable payload: {error}")]
    Payload {
        /// Record LSN.
        lsn: u64,
        /// Decoder error.
        error: mutation::DecodeError,
    },
    /// The WAL no longer holds records the store has not applied.
    #[error(
        "the WAL starts at LSN {wal_first} but the store has applied only up to {applied}: \
         records in between are lost; restore from a backup or a replica"
    )]
    WalBehindStore {
        /// First LSN in the WAL.
        wal_first: u64,
        /// Last LSN applied in the store.
        applied: u64,
    },
    /// An earlier apply failed; the engine must be reopened (replay repairs it).
    #[error("storage engine stopped after a failure ({0}); restart to recover")]
    Failed(String),
    /// The record is durable in the WAL, but the store refused it for a
    /// cause that can pass ([`StoreError::is_transient`]): it waits in
    /// order and is applied by the next write or background retry.
    #[error(
        "the write is durable in the WAL but the store refused it for now ({0}); it is applied \
         automatically once storage recovers, so it may still take effect: retry with dedupe"
    )]
    ApplyDeferred(#[source] StoreError),
    /// RocksDB refused records for want of file descriptors and still does
    /// although descriptors are available again: it stopped itself (a fatal
    /// background error) and only reopening it clears that.
    #[error(
        "RocksDB stopped accepting writes after running out of file descriptors ({0}) and does \
         not resume by itself although descriptors are available again; restart to recover \
         (the WAL replays every durable record)"
    )]
    StoreStopped(#[source] StoreError),
    /// Storage is degraded and too many durable records already wait to be
    /// applied: the write was refused before it reached the WAL.
    #[error(
        "storage is degraded ({reason}); {pending} durable records wait to be applied, so new \
         writes are refused until they are: retry later"
    )]
    Degraded {
        /// What fails, since when.
        reason: String,
        /// Records waiting.
        pending: usize,
    },
    /// Creating the data directory failed.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Metrics could not be registered.
    #[error("engine metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A replicated record does not continue the space's sequence.
    #[error(
        "replicated record {got} of space {space} does not follow: the next sequence number is {expected}"
    )]
    SequenceMismatch {
        /// Local space id.
        space: SpaceId,
        /// The sequence number the space expects next.
        expected: u64,
        /// The one the record carries.
        got: u64,
    },
    /// A replicated record's payload is not a valid operation.
    #[error("replicated record {seq} of space {space} has an undecodable payload: {error}")]
    ReplicatedPayload {
        /// Local space id.
        space: SpaceId,
        /// Its sequence number.
        seq: u64,
        /// Decoder error.
        error: mutation::DecodeError,
    },
}

/// A record as it is appended, for an [`AppendObserver`].
#[derive(Debug, Clone, Copy)]
pub struct AppendedRecord<'a> {
    /// Local space id.
    pub space: SpaceId,
    /// WAL LSN.
    pub lsn: u64,
    /// The space's sequence number.
    pub seq: u64,
    /// Record kind.
    pub kind: u8,
    /// The payload as written to the WAL (the mutation encoding).
    pub payload: &'a [u8],
}

/// Watches every record appended to the WAL, local or replicated (the
/// replication layer's feed). Called under the engine's order lock, in
/// sequence order per space, before the record is durable: it must not
/// block or take a lock that a writer holds while appending.
pub trait AppendObserver: Send + Sync {
    /// `record` was just appended.
    fn appended(&self, record: &AppendedRecord<'_>);

    /// Every record through `lsn` is durable (and applied unless applies
    /// are refused). Called on the WAL writer thread after each group
    /// commit: it must return at once (wake someone, never wait).
    fn committed(&self, _lsn: u64) {}
}

/// What recovery found and did at open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    /// What the WAL found (segments, torn tail, repair).
    pub wal: OpenReport,
    /// LSN the store had applied before replay.
    pub applied_before: u64,
    /// Records replayed into the store.
    pub replayed: u64,
    /// Records skipped because the store already had them.
    pub skipped: u64,
    /// LSN applied after replay.
    pub applied_after: u64,
    /// Time spent opening and replaying.
    pub elapsed: Duration,
}

/// Where an acknowledged write landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// WAL LSN.
    pub lsn: u64,
    /// Per-space sequence number.
    pub seq: u64,
}

/// A record appended to the WAL but not yet acknowledged (see
/// [`Engine::append`]). Dropping it abandons the wait, not the record: it is
/// still applied in LSN order by the next write.
#[derive(Debug)]
pub struct Appended {
    ticket: engram_wal::AppendTicket,
    seq: u64,
}

struct Order {
    next_seq: HashMap<SpaceId, u64>,
    pending: VecDeque<Operation>,
}

struct Applied {
    lsn: u64,
    released_at: u64,
}

/// RocksDB refused the WAL writer's apply of the records through `through`.
struct Refused {
    through: u64,
    path: PathBuf,
    message: String,
    transient: bool,
}

impl Refused {
    /// The error the writer of a record in the refused batch gets.
    fn error(&self) -> EngineError {
        let e = StoreError::Rocks {
            path: self.path.clone(),
            message: self.message.clone(),
        };
        if self.transient {
            EngineError::ApplyDeferred(e)
        } else {
            EngineError::Store(e)
        }
    }
}

struct EngineMetrics {
    apply_seconds: Histogram,
    replayed: IntCounter,
}

/// The storage engine. See the crate documentation for the write path.
pub struct Engine {
    /// Declared before `core`: dropping the log joins its writer thread,
    /// which holds the commit hook and with it a reference to `core`.
    wal: Wal,
    core: Arc<Core>,
}

/// The engine's state that the WAL writer thread's commit hook shares
/// ([`Core::on_commit`]): everything but the log itself.
struct Core {
    store: Store,
    order: Mutex<Order>,
    applied: Mutex<Applied>,
    /// `applied.lsn`, readable without the lock ([`Engine::settled`]).
    applied_lsn: AtomicU64,
    /// Applied records since the last release reached `release_interval`
    /// (or a release failed): a writer that can block should release.
    release_wanted: AtomicBool,
    /// Set when an apply fails; a leaf lock (never held while taking another).
    failed: Mutex<Option<String>>,
    /// The last refusal of the store to the WAL writer's apply: the writers
    /// of those records get it instead of trying again at once (each write
    /// makes one attempt). A leaf lock.
    refused: Mutex<Option<Refused>>,
    /// Failures that can pass, retried (see the `degraded` module).
    degradation: degraded::Degradation,
    release_interval: u64,
    metrics: EngineMetrics,
    /// Erased content waiting to be purged from the files.
    purge: purge::Purge,
    /// Sees every appended record and every group commit.
    observer: OnceLock<Arc<dyn AppendObserver>>,
}

impl Drop for Engine {
    /// A clean shutdown flushes RocksDB's memtables, so the next open does
    /// not replay RocksDB's own log (seconds for a large store). Durability
    /// never depends on it: the WAL holds every acknowledged write.
    fn drop(&mut self) {
        let started = Instant::now();
        match self.core.store.flush() {
            Ok(()) => tracing::info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "store flushed at shutdown"
            ),
            Err(e) => tracing::warn!(error = %e, "flushing the store at shutdown failed"),
        }
    }
}

impl Core {
    /// The WAL's commit hook, on its writer thread: applies the group just
    /// committed (through `committed`) before its writers are answered, so
    /// that they find it [settled](Engine::settled). Skipped while applies
    /// are refused (degraded: writers and the background task retry, at
    /// their own pace) or the engine failed; errors are handled as for any
    /// apply (logged, the engine degraded or failed) and reach the writers
    /// through their own [`Engine::apply_durable`].
    fn on_commit(&self, committed: u64) {
        self.apply_on_commit(committed);
        if let Some(observer) = self.observer.get() {
            observer.committed(committed);
        }
    }

    fn apply_on_commit(&self, committed: u64) {
        if self.degradation.at(degraded::Stage::Apply) {
            return;
        }
        let mut applied = lock(&self.applied);
        if applied.lsn >= committed || self.check_failed().is_err() {
            return;
        }
        if let Err(EngineError::ApplyDeferred(e) | EngineError::Store(e)) =
            self.apply_committed(&mut applied, committed)
        {
            if let StoreError::Rocks { path, message } = e {
                *lock(&self.refused) = Some(Refused {
                    through: committed,
                    path,
                    message,
                    transient: self.degradation.at(degraded::Stage::Apply),
                });
            }
        }
    }

    /// The error of the WAL writer's refused apply if it covered `lsn` and
    /// nothing applied it since (the caller holds the apply lock and saw
    /// `lsn` unapplied).
    fn refusal_of(&self, lsn: u64) -> Option<EngineError> {
        let mut refused = lock(&self.refused);
        match refused.as_ref() {
            Some(r) if r.through >= lsn => Some(r.error()),
            Some(_) => {
                // A later write is past the refused batch: it retries.
                *refused = None;
                None
            }
            None => None,
        }
    }

    /// Applies every pending record through `committed` (acknowledged by
    /// the WAL) as one WriteBatch, in LSN order. `applied` is the held
    /// apply lock.
    fn apply_committed(&self, applied: &mut Applied, committed: u64) -> Result<(), EngineError> {
        let batch: Vec<Operation> = {
            let mut order = lock(&self.order);
            let n = order
                .pending
                .iter()
                .take_while(|op| op.lsn <= committed)
                .count();
            order.pending.drain(..n).collect()
        };
        if let Some(last) = batch.last().map(|op| op.lsn) {
            let t = Instant::now();
            if let Err(e) = self.store.apply(&batch) {
                return Err(self.apply_failed(e, batch));
            }
            self.metrics
                .apply_seconds
                .observe(t.elapsed().as_secs_f64());
            applied.lsn = last;
            self.applied_lsn.store(last, Ordering::Release);
            self.purge.note_applied(&batch);
        }
        self.degradation.clear(degraded::Stage::Apply);
        if self.release_is_due(applied) {
            self.release_wanted.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// `true` when WAL segments should be released: `release_interval`
    /// records applied since the last release, or a release failed.
    fn release_is_due(&self, applied: &Applied) -> bool {
        applied.lsn - applied.released_at >= self.release_interval
            || self.degradation.at(degraded::Stage::Release)
    }

    /// Handles a refused WriteBatch: a cause that can pass puts `batch` back
    /// in front of the pending records and degrades the engine; anything
    /// else (or descriptors exhausted in a RocksDB that stopped itself)
    /// fails it.
    fn apply_failed(&self, e: StoreError, batch: Vec<Operation>) -> EngineError {
        if !e.is_transient() {
            return self.fail(e.into());
        }
        let retry = self.degradation.at(degraded::Stage::Apply);
        if retry && e.is_fd_exhaustion() && descriptors_available(self.store.path()) {
            return self.fail(EngineError::StoreStopped(e));
        }
        self.degradation.note_late(batch.iter().map(|op| op.space));
        {
            let mut order = lock(&self.order);
            for op in batch.into_iter().rev() {
                order.pending.push_front(op);
            }
        }
        self.degradation
            .enter(degraded::Stage::Apply, e.to_string());
        EngineError::ApplyDeferred(e)
    }

    fn check_failed(&self) -> Result<(), EngineError> {
        match &*lock(&self.failed) {
            Some(reason) => Err(EngineError::Failed(reason.clone())),
            None => Ok(()),
        }
    }

    fn fail(&self, e: EngineError) -> EngineError {
        tracing::error!(error = %e, "storage engine apply failed; refusing writes until restart");
        lock(&self.failed).get_or_insert_with(|| e.to_string());
        e
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.core.store)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `true` when this process can open a file now (it is not out of
/// descriptors): opens the directory `dir` and closes it again.
fn descriptors_available(dir: &Path) -> bool {
    std::fs::File::open(dir).is_ok()
}

/// Records replayed per WriteBatch during recovery.
const REPLAY_BATCH: usize = 1024;

impl Engine {
    /// Opens the engine on `data_dir` (`wal/` and `db/` inside it): opens the
    /// store, opens the WAL (cutting a torn tail), replays every record after
    /// the store's applied LSN, skipping those a space already has, and
    /// releases WAL segments that are no longer needed.
    pub fn open(
        data_dir: &Path,
        config: &EngineConfig,
        options: OpenOptions,
    ) -> Result<(Engine, RecoveryReport), EngineError> {
        let started = Instant::now();
        std::fs::create_dir_all(data_dir).map_err(|source| EngineError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let store = Store::open(&data_dir.join("db"), &config.store)?;
        let applied_before = store.applied_lsn()?;
        let (wal, wal_report) = Wal::open(
            &data_dir.join("wal"),
            config.wal.clone(),
            WalOptions {
                repair: options.repair,
                lsn_floor: applied_before + 1,
                registry: options.registry.clone(),
            },
        )?;
        let metrics = EngineMetrics {
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "engram_store_apply_seconds",
                    "Time to apply one WriteBatch of WAL records to RocksDB",
                )
                .buckets(prometheus::exponential_buckets(0.000_01, 2.5, 14)?),
            )?,
            replayed: IntCounter::new(
                "engram_recovery_replayed_records_total",
                "WAL records replayed into the store at startup",
            )?,
        };
        if let Some(r) = &options.registry {
            r.register(Box::new(metrics.apply_seconds.clone()))?;
            r.register(Box::new(metrics.replayed.clone()))?;
        }
        let purge = purge::Purge::new(config.purge_after_ms, options.registry.as_ref())?;
        let degradation = degraded::Degradation::new(options.registry.as_ref())?;

        let mut seqs: HashMap<SpaceId, u64> = store.applied_seqs()?.into_iter().collect();
        let mut replayed = 0;
        let mut skipped = 0;
        let mut applied = applied_before;
        let records = wal.replay(applied_before + 1).map_err(|e| match e {
            WalError::Truncated { oldest, .. } => EngineError::WalBehindStore {
                wal_first: oldest,
                applied: applied_before,
            },
            e => e.into(),
        })?;
        let mut batch = Vec::with_capacity(REPLAY_BATCH);
        for rec in records {
            let rec = rec?;
            let mutations =
                mutation::decode(&rec.payload).map_err(|error| EngineError::Payload {
                    lsn: rec.lsn,
                    error,
                })?;
            let space = rec.header.space;
            let last = seqs.entry(space).or_insert(0);
            if rec.header.seq <= *last {
                skipped += 1;
                continue;
            }
            *last = rec.header.seq;
            batch.push(Operation {
                lsn: rec.lsn,
                space,
                seq: rec.header.seq,
                mutations,
            });
            applied = rec.lsn;
            if batch.len() == REPLAY_BATCH {
                store.apply(&batch)?;
                replayed += batch.len() as u64;
                batch.clear();
            }
        }
        store.apply(&batch)?;
        replayed += batch.len() as u64;
        metrics.replayed.inc_by(replayed);
        if replayed > 0 {
            store.sync_wal()?;
        }
        wal.release_through(applied)?;
        // Erasures applied before a restart whose purge had not finished.
        purge.resume(&store.purge_due()?);

        let report = RecoveryReport {
            wal: wal_report,
            applied_before,
            replayed,
            skipped,
            applied_after: applied,
            elapsed: started.elapsed(),
        };
        tracing::info!(
            replayed,
            skipped,
            applied_lsn = applied,
            torn_tail = report.wal.torn_tail.is_some(),
            elapsed_ms = report.elapsed.as_millis() as u64,
            "storage recovery complete"
        );
        let next_seq = seqs.into_iter().map(|(s, q)| (s, q + 1)).collect();
        let core = Arc::new(Core {
            store,
            order: Mutex::new(Order {
                next_seq,
                pending: VecDeque::new(),
            }),
            applied: Mutex::new(Applied {
                lsn: applied,
                released_at: applied,
            }),
            applied_lsn: AtomicU64::new(applied),
            release_wanted: AtomicBool::new(false),
            failed: Mutex::new(None),
            refused: Mutex::new(None),
            degradation,
            release_interval: config.wal_release_interval.max(1),
            metrics,
            purge,
            observer: OnceLock::new(),
        });
        let hook = Arc::clone(&core);
        wal.on_commit(Box::new(move |committed| hook.on_commit(committed)));
        Ok((Engine { wal, core }, report))
    }

    /// Appends `mutations` for `space` to the WAL as one record of `kind`,
    /// waits until it is durable (group commit), applies it to the store in
    /// LSN order, and returns its LSN and per-space sequence number.
    ///
    /// An error means the write was not acknowledged. (After an apply
    /// failure the record may still be durable in the WAL and reappear after
    /// a restart, like any commit whose acknowledgment was lost; after
    /// [`EngineError::ApplyDeferred`] it is durable and applied as soon as
    /// the store takes writes again.)
    pub fn submit(
        &self,
        space: SpaceId,
        kind: u8,
        mutations: Vec<Mutation>,
    ) -> Result<Committed, EngineError> {
        let appended = self.append(space, kind, mutations)?;
        let lsn = appended.ticket.wait()?;
        self.apply_through(lsn)?;
        Ok(Committed {
            lsn,
            seq: appended.seq,
        })
    }

    /// The first half of [`Engine::submit`]: appends the record (ordered
    /// like `submit`) without waiting. Finish with [`Engine::group_commit`] and [`Engine::apply_durable`]; the
    /// write is acknowledged only when that returns `Ok`.
    pub fn append(
        &self,
        space: SpaceId,
        kind: u8,
        mutations: Vec<Mutation>,
    ) -> Result<Appended, EngineError> {
        let payload = mutation::encode(&mutations);
        self.append_record(space, None, kind, mutations, &payload)
    }

    /// Appends a record another node wrote, with that node's sequence
    /// number, which must be the space's next one (invariant 4: a replica's
    /// sequence numbers are its primary's); the payload is written verbatim
    /// after it decodes. Finish like [`Engine::append`].
    pub fn append_replicated(
        &self,
        space: SpaceId,
        seq: u64,
        kind: u8,
        payload: &[u8],
    ) -> Result<Appended, EngineError> {
        let mutations = mutation::decode(payload)
            .map_err(|error| EngineError::ReplicatedPayload { space, seq, error })?;
        self.append_record(space, Some(seq), kind, mutations, payload)
    }

    /// Sets the observer of every appended record; `false` (and nothing
    /// changes) when one is set already.
    pub fn set_observer(&self, observer: Arc<dyn AppendObserver>) -> bool {
        self.core.observer.set(observer).is_ok()
    }

    /// Appends under the order lock: at the space's next sequence number,
    /// which must be `expected` when given.
    fn append_record(
        &self,
        space: SpaceId,
        expected: Option<u64>,
        kind: u8,
        mutations: Vec<Mutation>,
        payload: &[u8],
    ) -> Result<Appended, EngineError> {
        let mut order = lock(&self.core.order);
        self.core.check_failed()?;
        if order.pending.len() >= degraded::MAX_PENDING {
            if let Some(reason) = self.core.degradation.describe() {
                return Err(EngineError::Degraded {
                    reason,
                    pending: order.pending.len(),
                });
            }
        }
        let seq = order.next_seq.get(&space).copied().unwrap_or(1);
        if let Some(got) = expected
            && got != seq
        {
            return Err(EngineError::SequenceMismatch {
                space,
                expected: seq,
                got,
            });
        }
        let ticket = self
            .wal
            .append(RecordHeader { space, seq, kind }, payload)?;
        order.next_seq.insert(space, seq + 1);
        if let Some(observer) = self.core.observer.get() {
            observer.appended(&AppendedRecord {
                space,
                lsn: ticket.lsn(),
                seq,
                kind,
                payload,
            });
        }
        order.pending.push_back(Operation {
            lsn: ticket.lsn(),
            space,
            seq,
            mutations,
        });
        Ok(Appended { ticket, seq })
    }

    /// The second half of [`Engine::submit`] for async callers: awaits the
    /// group commit (fsync) without holding a thread. The record is durable
    /// but not applied yet: finish with [`Engine::apply_durable`] on a
    /// thread that may block before acknowledging the write.
    pub async fn group_commit(appended: Appended) -> Result<Committed, EngineError> {
        let lsn = appended.ticket.durable().await?;
        Ok(Committed {
            lsn,
            seq: appended.seq,
        })
    }

    /// Applies every durable record through `lsn` to the store (a RocksDB
    /// write, now and then a sync of RocksDB's WAL and a segment release):
    /// blocking work. Usually the WAL writer thread has applied it already
    /// ([`Engine::settled`]) and only the release can be left to do.
    pub fn apply_durable(&self, lsn: u64) -> Result<(), EngineError> {
        self.apply_through(lsn)
    }

    /// `true` when the record at `lsn` is applied to the store and no
    /// upkeep waits for a writer (a WAL release is not due): a write whose
    /// group commit returned can then be acknowledged without calling
    /// [`Engine::apply_durable`], so without blocking. The WAL writer thread
    /// applies each group it commits before answering it, so this is the
    /// common case; after a refused apply or once every `release_interval`
    /// records it is `false` and the writer calls `apply_durable`.
    pub fn settled(&self, lsn: u64) -> bool {
        self.core.applied_lsn.load(Ordering::Acquire) >= lsn
            && !self.core.release_wanted.load(Ordering::Acquire)
    }

    /// Applies every acknowledged pending record up to at least `lsn`, in
    /// LSN order, as one WriteBatch (whoever gets here first applies for
    /// all), then releases WAL segments when due.
    fn apply_through(&self, lsn: u64) -> Result<(), EngineError> {
        let mut applied = lock(&self.core.applied);
        if applied.lsn < lsn {
            if let Some(e) = self.core.refusal_of(lsn) {
                return Err(e);
            }
        }
        self.core.check_failed()?;
        if applied.lsn >= lsn {
            return self.release_if_due(&mut applied);
        }
        self.apply_pending(&mut applied)
    }

    /// Tries again what the store refused for a cause that can pass (see
    /// [`Engine::degraded`]): the records waiting to be applied, or the
    /// release of applied WAL segments. Does nothing unless degraded and the
    /// last attempt is a second old or more, so it can be called often.
    /// Writes retry on their own; this heals a server that receives none.
    /// The background task calls it about once a second; it may ignore the
    /// result (failures are logged and reported by [`Engine::degraded`] and
    /// [`Engine::failure`]).
    pub fn retry_pending_apply(&self) -> Result<(), EngineError> {
        if !self.core.degradation.retry_due() {
            return Ok(());
        }
        let mut applied = lock(&self.core.applied);
        self.core.check_failed()?;
        self.core.degradation.count_retry();
        self.apply_pending(&mut applied)
    }

    /// Applies every durable pending record as one WriteBatch, then, when
    /// due, syncs RocksDB's WAL and releases WAL segments. `applied` is the
    /// held apply lock.
    fn apply_pending(&self, applied: &mut Applied) -> Result<(), EngineError> {
        self.core
            .apply_committed(applied, self.wal.committed_lsn())?;
        self.release_if_due(applied)
    }

    /// Syncs RocksDB's WAL and releases WAL segments when
    /// `release_interval` records were applied since the last release, or
    /// a release failed (retried at most once a second). `applied` is the
    /// held apply lock.
    fn release_if_due(&self, applied: &mut Applied) -> Result<(), EngineError> {
        // A release that failed is retried even when a purge pass has
        // released since.
        let due = self.core.release_is_due(applied);
        if due && self.core.degradation.release_due() {
            self.release(applied)?;
        }
        let wanted = self.core.release_is_due(applied);
        self.core.release_wanted.store(wanted, Ordering::Release);
        Ok(())
    }

    /// Syncs RocksDB's WAL and deletes the WAL segments holding only applied
    /// records. A failure that can pass only degrades the engine (the
    /// segments stay until the next attempt); any other fails it.
    fn release(&self, applied: &mut Applied) -> Result<(), EngineError> {
        let lsn = applied.lsn;
        let outcome = match self.core.store.sync_wal() {
            Ok(()) => match self.wal.release_through(lsn) {
                Ok(_) => Ok(()),
                Err(e) => Err((e.is_transient(), EngineError::from(e))),
            },
            Err(e) => Err((e.is_transient(), EngineError::from(e))),
        };
        match outcome {
            Ok(()) => {
                applied.released_at = lsn;
                self.core.degradation.clear(degraded::Stage::Release);
                Ok(())
            }
            Err((true, e)) => {
                self.core
                    .degradation
                    .enter(degraded::Stage::Release, e.to_string());
                Ok(())
            }
            Err((false, e)) => Err(self.core.fail(e)),
        }
    }

    /// Commits a copy of a space installed under the fresh id `space`
    /// ([`engram_lsm::Store::install_commit`]) holding the records through
    /// `seq`: the next record of `space` gets `seq + 1`. Refused when a
    /// record of `space` was appended meanwhile (the id was not fresh).
    pub fn install_commit(
        &self,
        space: SpaceId,
        seq: u64,
        state: &[u8],
        replaces: Option<SpaceId>,
    ) -> Result<(), EngineError> {
        let mut order = lock(&self.core.order);
        self.core.check_failed()?;
        if replaces.is_some_and(|old| order.pending.iter().any(|o| o.space == old)) {
            return Err(EngineError::Store(StoreError::Corrupt {
                cf: "meta",
                detail:
                    "the copy being replaced has records not applied yet; the install is retried"
                        .into(),
            }));
        }
        if order.next_seq.contains_key(&space) || order.pending.iter().any(|o| o.space == space) {
            return Err(EngineError::Store(StoreError::Corrupt {
                cf: "meta",
                detail: format!(
                    "space id {space} already holds records; an install needs a fresh id"
                ),
            }));
        }
        self.core
            .store
            .install_commit(space, seq, state, replaces)?;
        order.next_seq.insert(space, seq + 1);
        Ok(())
    }

    /// Next sequence number `space` will get.
    pub fn next_seq(&self, space: SpaceId) -> u64 {
        lock(&self.core.order)
            .next_seq
            .get(&space)
            .copied()
            .unwrap_or(1)
    }

    /// Highest LSN applied to the store.
    pub fn applied_lsn(&self) -> u64 {
        lock(&self.core.applied).lsn
    }

    /// What fails for a cause that can pass (file descriptors exhausted,
    /// disk full) and is retried, if anything: records durable in the WAL
    /// that the store refused (writes answer [`EngineError::ApplyDeferred`]
    /// meanwhile), or the release of applied WAL segments. `None` again once
    /// a retry succeeds. Unlike [`Engine::failure`], it does not last until
    /// restart.
    pub fn degraded(&self) -> Option<String> {
        self.core.degradation.describe()
    }

    /// Spaces holding a record that the store applied (or will apply) after
    /// its writer was told the write failed ([`EngineError::ApplyDeferred`]),
    /// since open. Their in-memory indexes can lack that record until the
    /// space is loaded again from the store: do not write their index
    /// snapshots.
    pub fn spaces_applied_after_error(&self) -> Vec<SpaceId> {
        self.core.degradation.late()
    }

    /// Why the engine refuses writes, if it does: a WAL failure or a failed
    /// apply to the store (both last until restart).
    pub fn failure(&self) -> Option<String> {
        if let Some(w) = self.wal.failure() {
            return Some(format!("WAL: {w}"));
        }
        lock(&self.core.failed)
            .as_ref()
            .map(|s| format!("store apply: {s}"))
    }

    /// The warm store, for reads.
    pub fn store(&self) -> &Store {
        &self.core.store
    }

    /// The write-ahead log (status, pins, replay for replication).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Writes a consistent, openable copy of the store to `dir` (which must not
    /// exist). Its applied LSN tells a restore where the WAL continues.
    pub fn checkpoint(&self, dir: &Path) -> Result<u64, EngineError> {
        let applied = lock(&self.core.applied);
        self.core.store.checkpoint(dir)?;
        Ok(applied.lsn)
    }
}
