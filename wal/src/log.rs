//! The log itself: open (validation is in [`crate::recovery`]), group-commit
//! appends, replay and retention.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus::Registry;
use tokio::sync::oneshot;

use crate::error::IoContext;
use crate::frame::{self, FrameError, READ_PAYLOAD_LIMIT, RecordHeader};
use crate::metrics::WalMetrics;
use crate::recovery::{self, Scanned, Skip};
use crate::segment::{self, SegmentFile};
use crate::{Durability, WalConfig, WalError};

/// Name of the folder (inside the log directory) that repair moves damaged bytes to.
pub const CORRUPT_DIR: &str = "corrupt";

/// How to open a log.
#[derive(Debug, Clone, Default)]
pub struct WalOptions {
    /// Truncate at damage found before the tail (moving the damaged remainder
    /// to `corrupt/`) instead of refusing to open.
    pub repair: bool,
    /// The next LSN handed out is at least this. The owner of the log passes
    /// one more than the highest LSN it has applied, so LSNs never go back even
    /// if the log directory was lost; segments wholly below it are removed.
    /// Records below it are never needed again, so damage found in them at
    /// open is skipped ([`OpenReport::applied_damage`]) instead of stopping
    /// the open. 0 (the default) claims nothing is applied.
    pub lsn_floor: u64,
    /// Registry for the log's metrics; `None` keeps them private.
    pub registry: Option<Registry>,
}

/// What `open` found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Segments that hold records.
    pub segments: usize,
    /// Records found.
    pub records: u64,
    /// First retained LSN, if any record is retained.
    pub first_lsn: Option<u64>,
    /// Last valid LSN (0 when the log holds no record).
    pub last_lsn: u64,
    /// A torn or corrupt tail that was cut off.
    pub torn_tail: Option<Truncation>,
    /// Damage before the tail that repair mode cut off.
    pub repaired: Option<Truncation>,
    /// Damaged or missing records below [`WalOptions::lsn_floor`] (already
    /// applied by the owner) that open stepped over. Each is also logged as a
    /// warning and counted in `engram_wal_applied_damage_skipped_total`.
    pub applied_damage: Vec<AppliedDamage>,
}

/// Damaged or missing records that the owner had already applied: not
/// needed, so open steps over them; retention removes them with their segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedDamage {
    /// Segment holding the damage (for missing records: the segment after them).
    pub segment: PathBuf,
    /// Offset of the damage within it.
    pub offset: u64,
    /// First LSN that could not be read.
    pub first_lsn: u64,
    /// LSN of the first record read after the damage: records `first_lsn`
    /// up to (not including) this one are unreadable, all below the floor.
    pub resume_lsn: u64,
    /// Why the bytes there were not the expected records.
    pub reason: String,
}

/// Where the log was cut and how much was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncation {
    /// Segment cut.
    pub segment: PathBuf,
    /// Offset of the cut within it.
    pub offset: u64,
    /// Why the bytes there were not a valid record.
    pub reason: String,
    /// Non-zero bytes removed from that segment and the ones after it.
    pub bytes: u64,
    /// Where the removed bytes were moved (repair only).
    pub moved_to: Option<PathBuf>,
}

/// The log's counters since it was opened (see [`Wal::stats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WalStats {
    /// Highest acknowledged LSN.
    pub committed_lsn: u64,
    /// Highest LSN covered by `fdatasync`.
    pub synced_lsn: u64,
    /// Records appended since open.
    pub records: u64,
    /// Bytes appended since open.
    pub bytes: u64,
    /// `fdatasync` calls since open.
    pub fsyncs: u64,
    /// Seconds spent in `fdatasync` since open.
    pub fsync_seconds_total: f64,
    /// Segment files on disk.
    pub segments: u64,
}

/// One record read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Global log sequence number.
    pub lsn: u64,
    /// Space, per-space sequence and kind.
    pub header: RecordHeader,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// A pending append. Resolves once the record is acknowledged according to
/// the log's [`Durability`] (for `Always`: after the covering `fdatasync`).
#[derive(Debug)]
pub struct AppendTicket {
    lsn: u64,
    rx: oneshot::Receiver<Result<u64, WalError>>,
}

impl AppendTicket {
    /// LSN the record was given.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// Blocks the calling thread until acknowledged. Works from any thread,
    /// a tokio worker included (where it stalls that worker: async callers
    /// should use [`AppendTicket::durable`] or a blocking pool).
    pub fn wait(self) -> Result<u64, WalError> {
        block_on(self.rx).unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Waits asynchronously until acknowledged.
    pub async fn durable(self) -> Result<u64, WalError> {
        self.rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }
}

/// Wakes a parked thread.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` to completion on this thread, parking between polls (tokio's
/// `blocking_recv` refuses to run inside a runtime; this does not care).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

fn writer_gone() -> WalError {
    WalError::Failed {
        reason: "the WAL writer thread stopped".into(),
    }
}

/// Keeps records from `lsn` on from being removed by retention while alive.
#[derive(Debug)]
pub struct Pin {
    lsn: u64,
    shared: Arc<Shared>,
}

impl Pin {
    /// The pinned LSN.
    pub fn lsn(&self) -> u64 {
        self.lsn
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = lock(&self.shared.pins);
        if let Some(n) = pins.get_mut(&self.lsn) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&self.lsn);
            }
        }
    }
}

struct Waiter {
    lsn: u64,
    end: usize,
    tx: oneshot::Sender<Result<u64, WalError>>,
}

/// Answer to a [`Wal::rotate`] request: the last LSN in the sealed segments.
type RotationReply = oneshot::Sender<Result<u64, WalError>>;

#[derive(Default)]
struct Queue {
    next_lsn: u64,
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    /// Pending [`Wal::rotate`] requests.
    rotations: Vec<RotationReply>,
    failed: Option<String>,
    closing: bool,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    config: WalConfig,
    queue: Mutex<Queue>,
    wake: Condvar,
    committed: AtomicU64,
    synced: AtomicU64,
    segments: Mutex<Vec<SegmentFile>>,
    /// Applied damage found at open, for replay to step over.
    skips: Mutex<Vec<Skip>>,
    pins: Mutex<BTreeMap<u64, usize>>,
    /// A new segment could not be made (see [`never_created`]) and none has
    /// been since: further refusals are logged at debug level only.
    roll_refused: AtomicBool,
    /// Called on the writer thread after each group is acknowledged and
    /// before its appenders are told (see [`Wal::on_commit`]).
    on_commit: std::sync::OnceLock<Hook>,
    metrics: WalMetrics,
}

/// See [`Wal::on_commit`].
pub type CommitHook = Box<dyn Fn(u64) + Send + Sync>;

struct Hook(CommitHook);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitHook")
    }
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("next_lsn", &self.next_lsn)
            .field("pending", &self.waiters.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl std::fmt::Debug for WalMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WalMetrics")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A segmented, checksummed, group-committed write-ahead log. See the crate docs.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

struct Active {
    file: File,
    path: PathBuf,
    pos: u64,
    /// LSN of the next record the writer will write.
    next_lsn: u64,
}

impl Wal {
    /// Opens (or creates) the log in `dir`: validates every segment, cuts a
    /// torn tail, steps over damage below `options.lsn_floor`, refuses other
    /// damage before the tail unless `options.repair`, and starts a fresh
    /// segment for new appends.
    pub fn open(
        dir: &Path,
        config: WalConfig,
        options: WalOptions,
    ) -> Result<(Wal, OpenReport), WalError> {
        config.validate()?;
        if options.lsn_floor > crate::MAX_LSN {
            return Err(WalError::Config(format!(
                "lsn_floor {} is beyond the largest LSN {}",
                options.lsn_floor,
                crate::MAX_LSN
            )));
        }
        match config.durability {
            Durability::None => tracing::warn!(
                dir = %dir.display(),
                "WAL durability is NONE: acknowledged writes are never fsynced and are lost on a \
                 machine crash. Use this only for tests and benchmarks."
            ),
            Durability::Interval(d) => tracing::warn!(
                dir = %dir.display(),
                interval_ms = d.as_millis() as u64,
                "WAL durability is interval: writes are acknowledged before fsync; a machine crash \
                 can lose up to one interval of acknowledged writes"
            ),
            Durability::Always => {}
        }
        fs::create_dir_all(dir).at(dir)?;
        prune_quarantine(dir, config.corrupt_retention_hours, SystemTime::now())?;
        let metrics = WalMetrics::new(options.registry.as_ref())?;
        let Scanned {
            mut segments,
            mut report,
            named_floor,
            mut skips,
        } = recovery::scan(dir, options.repair, options.lsn_floor)?;
        metrics
            .applied_damage
            .inc_by(report.applied_damage.len() as u64);

        // Every record below the floor is already applied by the owner: a
        // floor past the end means the log lost its tail (or was wiped), so
        // the old segments are dropped and numbering continues from the floor.
        if options.lsn_floor > report.last_lsn + 1 {
            for s in segments.drain(..) {
                fs::remove_file(&s.path).at(&s.path)?;
            }
            skips.clear();
            segment::sync_dir(dir)?;
            report.segments = 0;
            report.first_lsn = None;
        }
        let next_lsn = (report.last_lsn + 1)
            .max(options.lsn_floor)
            .max(named_floor)
            .max(1);
        let (file, path) = segment::create(dir, next_lsn, config.segment_size, config.preallocate)?;
        segments.push(SegmentFile {
            first_lsn: next_lsn,
            path: path.clone(),
        });
        metrics.segments.set(segments.len() as i64);

        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            config,
            queue: Mutex::new(Queue {
                next_lsn,
                ..Queue::default()
            }),
            wake: Condvar::new(),
            committed: AtomicU64::new(next_lsn - 1),
            synced: AtomicU64::new(next_lsn - 1),
            segments: Mutex::new(segments),
            skips: Mutex::new(skips),
            pins: Mutex::new(BTreeMap::new()),
            roll_refused: AtomicBool::new(false),
            on_commit: std::sync::OnceLock::new(),
            metrics,
        });
        let active = Active {
            file,
            path,
            pos: 0,
            next_lsn,
        };
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("engram-wal-writer".into())
            .spawn(move || writer_thread(&writer_shared, active))
            .at(dir)?;
        Ok((
            Wal {
                shared,
                writer: Some(writer),
            },
            report,
        ))
    }

    /// Queues a record. The returned ticket resolves once the record is
    /// acknowledged; an error there means the record was never acknowledged.
    pub fn append(&self, header: RecordHeader, payload: &[u8]) -> Result<AppendTicket, WalError> {
        let limit = self.shared.config.max_payload;
        if payload.len() > limit as usize {
            return Err(WalError::RecordTooLarge {
                size: payload.len(),
                limit,
            });
        }
        let (tx, rx) = oneshot::channel();
        let mut q = lock(&self.shared.queue);
        if let Some(reason) = &q.failed {
            return Err(WalError::Failed {
                reason: reason.clone(),
            });
        }
        if q.closing {
            return Err(WalError::Closed);
        }
        let lsn = q.next_lsn;
        q.next_lsn += 1;
        frame::encode_into(&mut q.buf, lsn, header, payload);
        let end = q.buf.len();
        q.waiters.push(Waiter { lsn, end, tx });
        drop(q);
        self.shared.wake.notify_one();
        Ok(AppendTicket { lsn, rx })
    }

    /// Installs `hook`, which the writer thread calls with the last LSN of
    /// every group it has just acknowledged (after the covering `fdatasync`
    /// under [`Durability::Always`]), before it answers that group's
    /// tickets: whatever the hook does with the records (the engine applies
    /// them to its store) is done when a ticket resolves. The hook runs on
    /// the writer thread, so the next group waits for it: it must be short
    /// and must never wait for the log itself (no [`AppendTicket::wait`],
    /// no [`Wal::rotate`]). It must not own the [`Wal`] either (the writer
    /// thread holds it until the log is dropped). Only the first hook
    /// installed is kept: returns `false` when one was already there.
    pub fn on_commit(&self, hook: CommitHook) -> bool {
        self.shared.on_commit.set(Hook(hook)).is_ok()
    }

    /// Highest acknowledged LSN (0 when none).
    pub fn committed_lsn(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    /// Highest LSN covered by `fdatasync`.
    pub fn synced_lsn(&self) -> u64 {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Counters for status reports.
    pub fn stats(&self) -> WalStats {
        let m = &self.shared.metrics;
        WalStats {
            committed_lsn: self.committed_lsn(),
            synced_lsn: self.synced_lsn(),
            records: m.records.get(),
            bytes: m.bytes.get(),
            fsyncs: m.fsyncs.get(),
            fsync_seconds_total: m.fsync_seconds.get_sample_sum(),
            segments: u64::try_from(m.segments.get()).unwrap_or(0),
        }
    }

    /// The reason the log refuses appends, if it does.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.queue).failed.clone()
    }

    /// The configuration the log runs with.
    pub fn config(&self) -> &WalConfig {
        &self.shared.config
    }

    /// Prevents retention from removing records from `lsn` on until the pin is dropped.
    pub fn pin(&self, lsn: u64) -> Pin {
        *lock(&self.shared.pins).entry(lsn).or_insert(0) += 1;
        Pin {
            lsn,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Removes whole segments all of whose records are at or below `applied`
    /// and below every pin. The segment being written is never removed.
    /// Returns how many segment files were removed.
    pub fn release_through(&self, applied: u64) -> Result<usize, WalError> {
        let mut segments = lock(&self.shared.segments);
        let pinned = lock(&self.shared.pins).keys().next().copied();
        let limit = match pinned {
            Some(p) => applied.min(p.saturating_sub(1)),
            None => applied,
        };
        let mut removable = 0;
        while removable + 1 < segments.len()
            && segments[removable + 1].first_lsn.saturating_sub(1) <= limit
        {
            removable += 1;
        }
        if removable == 0 {
            return Ok(0);
        }
        for s in segments.drain(..removable) {
            fs::remove_file(&s.path).at(&s.path)?;
        }
        segment::sync_dir(&self.shared.dir)?;
        self.shared.metrics.segments.set(segments.len() as i64);
        lock(&self.shared.skips).retain(|k| segments.iter().any(|s| s.path == k.segment));
        Ok(removable)
    }

    /// Seals the segment being written and starts a new one at the next
    /// LSN, so that [`Wal::release_through`] can delete every record written
    /// so far (it never deletes the segment being written). Blocks until the
    /// writer has done it: records queued before the call are written (and,
    /// unless durability is `None`, synced) into the sealed segment first.
    /// Returns the last LSN in the sealed segments. Nothing happens when the
    /// current segment is still empty.
    ///
    /// [`WalError::Rotate`] means the new segment could not be created; the
    /// log goes on in the current one.
    pub fn rotate(&self) -> Result<u64, WalError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut q = lock(&self.shared.queue);
            if let Some(reason) = &q.failed {
                return Err(WalError::Failed {
                    reason: reason.clone(),
                });
            }
            if q.closing {
                return Err(WalError::Closed);
            }
            q.rotations.push(tx);
        }
        self.shared.wake.notify_one();
        block_on(rx).unwrap_or_else(|_| Err(writer_gone()))
    }

    /// Deletes the files in `corrupt/` (records moved aside by repair) that
    /// have been there longer than [`WalConfig::corrupt_retention_hours`]
    /// (0: never). Open does this too. Returns how many were deleted.
    pub fn prune_quarantine(&self) -> Result<usize, WalError> {
        prune_quarantine(
            &self.shared.dir,
            self.shared.config.corrupt_retention_hours,
            SystemTime::now(),
        )
    }

    /// First LSN still retained on disk (records before it were released).
    pub fn first_retained_lsn(&self) -> u64 {
        lock(&self.shared.segments)
            .first()
            .map_or(1, |s| s.first_lsn)
    }

    /// Reads acknowledged records from `from` on, in LSN order, up to the
    /// LSN acknowledged when this call was made. Holds a pin while alive.
    pub fn replay(&self, from: u64) -> Result<Replay, WalError> {
        let from = from.max(1);
        let pin = self.pin(from);
        let until = self.committed_lsn();
        let segments = lock(&self.shared.segments).clone();
        let oldest = segments.first().map_or(1, |s| s.first_lsn);
        if from < oldest && from <= until {
            return Err(WalError::Truncated {
                requested: from,
                oldest,
            });
        }
        // Skip segments that end before `from`.
        let start = segments
            .iter()
            .rposition(|s| s.first_lsn <= from)
            .unwrap_or(0);
        Ok(Replay {
            segments: segments[start..].to_vec(),
            skips: lock(&self.shared.skips).clone(),
            index: 0,
            data: Vec::new(),
            pos: 0,
            next: 0,
            from,
            until,
            done: from > until,
            _pin: pin,
        })
    }

    /// Stops accepting appends, lets the writer finish what is queued (with a
    /// final fsync), and waits for it. Dropping the log does the same.
    pub fn close(mut self) -> Result<(), WalError> {
        self.shutdown();
        match self.failure() {
            Some(reason) => Err(WalError::Failed { reason }),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        lock(&self.shared.queue).closing = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.writer.take() {
            if w.join().is_err() {
                tracing::error!("WAL writer thread panicked");
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Body of the writer thread: runs [`run_writer`] and turns a panic in it
/// into the failed state, so that every pending and later append gets an
/// error instead of waiting for a writer that is gone.
fn writer_thread(shared: &Shared, active: Active) {
    // Appends the writer has taken from the queue; kept out here so that a
    // panic does not drop them unanswered.
    let mut in_flight: Vec<Waiter> = Vec::new();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_writer(shared, active, &mut in_flight);
    }));
    if let Err(payload) = outcome {
        let reason = format!(
            "the WAL writer thread panicked: {}",
            panic_message(&*payload)
        );
        fail_all(shared, reason, in_flight);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_owned()
    }
}

/// Puts the log in the failed state and fails every pending append: those
/// the writer had taken (`in_flight`) and those still queued. Appends made
/// after this are refused by [`Wal::append`].
fn fail_all(shared: &Shared, reason: String, in_flight: Vec<Waiter>) {
    tracing::error!(error = %reason, "WAL write failed; refusing further appends until reopened");
    shared.metrics.failed.set(1);
    let mut q = lock(&shared.queue);
    let reason = q.failed.get_or_insert(reason).clone();
    let queued = std::mem::take(&mut q.waiters);
    let rotations = std::mem::take(&mut q.rotations);
    q.buf.clear();
    drop(q);
    for w in in_flight.into_iter().chain(queued) {
        let _ = w.tx.send(Err(WalError::Failed {
            reason: reason.clone(),
        }));
    }
    for tx in rotations {
        let _ = tx.send(Err(WalError::Failed {
            reason: reason.clone(),
        }));
    }
}

/// Answers `rotations` after sealing the active segment (synced unless
/// durability is `None`) and starting the next one; an empty active
/// segment is kept as it is. Returns `false` when a failed sync put the log
/// in the failed state (the writer must stop).
fn rotate_active(shared: &Shared, active: &mut Active, rotations: Vec<RotationReply>) -> bool {
    let sealed = active.next_lsn.saturating_sub(1);
    let outcome = if active.pos == 0 {
        Ok(sealed)
    } else {
        if shared.config.durability != Durability::None {
            if let Err(e) = sync(shared, active) {
                let reason = e.to_string();
                for tx in rotations {
                    let _ = tx.send(Err(WalError::Failed {
                        reason: reason.clone(),
                    }));
                }
                fail_all(shared, reason, Vec::new());
                return false;
            }
            shared.synced.fetch_max(sealed, Ordering::AcqRel);
        }
        start_segment(shared, active).map(|()| sealed)
    };
    match outcome {
        Ok(sealed) => {
            for tx in rotations {
                let _ = tx.send(Ok(sealed));
            }
        }
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(error = %reason, "starting a new WAL segment on request failed; writing on in the current one");
            for tx in rotations {
                let _ = tx.send(Err(WalError::Rotate {
                    reason: reason.clone(),
                }));
            }
        }
    }
    true
}

/// Creates the segment starting at `active.next_lsn` and makes it the one
/// being written.
fn start_segment(shared: &Shared, active: &mut Active) -> Result<(), WalError> {
    let first = active.next_lsn;
    let (file, path) = segment::create(
        &shared.dir,
        first,
        shared.config.segment_size,
        shared.config.preallocate,
    )?;
    let mut segments = lock(&shared.segments);
    segments.push(SegmentFile {
        first_lsn: first,
        path: path.clone(),
    });
    shared.metrics.segments.set(segments.len() as i64);
    drop(segments);
    *active = Active {
        file,
        path,
        pos: 0,
        next_lsn: first,
    };
    Ok(())
}

/// Deletes the files in `<dir>/corrupt/` modified more than `hours` before
/// `now` (repair stamps what it moves there with the time of the move).
/// `hours == 0` keeps everything.
pub(crate) fn prune_quarantine(dir: &Path, hours: u64, now: SystemTime) -> Result<usize, WalError> {
    if hours == 0 {
        return Ok(0);
    }
    let corrupt = dir.join(CORRUPT_DIR);
    let entries = match fs::read_dir(&corrupt) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(WalError::Io {
                path: corrupt,
                source,
            });
        }
    };
    let keep = Duration::from_secs(hours.saturating_mul(3600));
    let mut removed = 0;
    for entry in entries {
        let entry = entry.at(&corrupt)?;
        let path = entry.path();
        let meta = entry.metadata().at(&path)?;
        if !meta.is_file() {
            continue;
        }
        // A modification time in the future (a clock set back) keeps the file.
        let expired = now
            .duration_since(meta.modified().at(&path)?)
            .is_ok_and(|age| age >= keep);
        if expired {
            fs::remove_file(&path).at(&path)?;
            tracing::info!(path = %path.display(), retention_hours = hours, "quarantined WAL bytes past their retention deleted");
            removed += 1;
        }
    }
    if removed > 0 {
        segment::sync_dir(&corrupt)?;
    }
    Ok(removed)
}

/// The group-commit loop. `waiters` holds the group being written.
fn run_writer(shared: &Shared, mut active: Active, waiters: &mut Vec<Waiter>) {
    let mut buf = Vec::new();
    let mut last_sync = Instant::now();
    let mut unsynced = false;
    let durability = shared.config.durability;
    loop {
        let closing;
        let rotations;
        {
            let mut q = lock(&shared.queue);
            loop {
                if !q.waiters.is_empty() || !q.rotations.is_empty() || q.closing {
                    break;
                }
                match durability {
                    Durability::Interval(d) if unsynced => {
                        let left = d.saturating_sub(last_sync.elapsed());
                        if left.is_zero() {
                            break;
                        }
                        q = shared
                            .wake
                            .wait_timeout(q, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    _ => q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner),
                }
            }
            std::mem::swap(&mut q.buf, &mut buf);
            std::mem::swap(&mut q.waiters, waiters);
            rotations = std::mem::take(&mut q.rotations);
            closing = q.closing;
        }

        let result = if waiters.is_empty() {
            Ok(())
        } else {
            write_group(shared, &mut active, &buf, waiters.as_slice())
        };
        let result = result.and_then(|()| {
            let last = waiters.last().map_or(0, |w| w.lsn);
            match durability {
                Durability::Always => {
                    if last != 0 {
                        sync(shared, &active)?;
                        shared.synced.store(last, Ordering::Release);
                    }
                }
                Durability::Interval(d) => {
                    if last != 0 {
                        unsynced = true;
                    }
                    if unsynced && (closing || last_sync.elapsed() >= d) {
                        let upto = shared.committed.load(Ordering::Acquire).max(last);
                        sync(shared, &active)?;
                        shared.synced.store(upto, Ordering::Release);
                        unsynced = false;
                        last_sync = Instant::now();
                    }
                }
                Durability::None => {}
            }
            Ok(())
        });

        match result {
            Ok(()) => {
                if let Some(last) = waiters.last() {
                    shared.committed.store(last.lsn, Ordering::Release);
                    shared.metrics.records.inc_by(waiters.len() as u64);
                    shared.metrics.bytes.inc_by(buf.len() as u64);
                    shared.metrics.group_records.observe(waiters.len() as f64);
                    if let Some(Hook(hook)) = shared.on_commit.get() {
                        hook(last.lsn);
                    }
                }
                for w in waiters.drain(..) {
                    let _ = w.tx.send(Ok(w.lsn));
                }
                buf.clear();
                if !rotations.is_empty() && !rotate_active(shared, &mut active, rotations) {
                    return;
                }
                let q = lock(&shared.queue);
                if closing && q.waiters.is_empty() && q.rotations.is_empty() {
                    return;
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for tx in rotations {
                    let _ = tx.send(Err(WalError::Failed {
                        reason: reason.clone(),
                    }));
                }
                fail_all(shared, reason, std::mem::take(waiters));
                return;
            }
        }
    }
}

fn sync(shared: &Shared, active: &Active) -> Result<(), WalError> {
    let t = Instant::now();
    segment::sync_data(&active.file).at(&active.path)?;
    shared.metrics.fsyncs.inc();
    shared
        .metrics
        .fsync_seconds
        .observe(t.elapsed().as_secs_f64());
    Ok(())
}

/// Writes the queued frames, rolling to new segments as they fill.
fn write_group(
    shared: &Shared,
    active: &mut Active,
    buf: &[u8],
    waiters: &[Waiter],
) -> Result<(), WalError> {
    let size = shared.config.segment_size;
    let mut start = 0usize;
    let mut rec_start = 0usize;
    // The next segment could not be made (no descriptor or no space, and no
    // file left behind): the rest of the group goes on in the current one.
    let mut roll_refused = false;
    for w in waiters {
        if !roll_refused && active.pos + (w.end - start) as u64 > size {
            if rec_start > start {
                segment::write_all_at(&active.file, &buf[start..rec_start], active.pos)
                    .at(&active.path)?;
                active.pos += (rec_start - start) as u64;
            }
            if shared.config.durability != Durability::None {
                sync(shared, active)?;
            }
            start = rec_start;
            let path = shared.dir.join(segment::segment_name(w.lsn));
            match create_segment(shared, w.lsn, &path) {
                Ok(file) => {
                    if shared.roll_refused.swap(false, Ordering::Relaxed) {
                        tracing::info!(segment = %path.display(), "new WAL segment started again");
                    }
                    let mut segments = lock(&shared.segments);
                    segments.push(SegmentFile {
                        first_lsn: w.lsn,
                        path: path.clone(),
                    });
                    shared.metrics.segments.set(segments.len() as i64);
                    drop(segments);
                    *active = Active {
                        file,
                        path,
                        pos: 0,
                        next_lsn: w.lsn,
                    };
                }
                Err(e) if never_created(&e, &path) => {
                    if shared.roll_refused.swap(true, Ordering::Relaxed) {
                        tracing::debug!(error = %e, "a new WAL segment still cannot be made");
                    } else {
                        tracing::warn!(error = %e, segment = %active.path.display(), "starting a new WAL segment failed before any file was made; writing on in the current one (tried again with each group)");
                    }
                    roll_refused = true;
                }
                Err(e) => return Err(e),
            }
        }
        rec_start = w.end;
    }
    if buf.len() > start {
        segment::write_all_at(&active.file, &buf[start..], active.pos).at(&active.path)?;
        active.pos += (buf.len() - start) as u64;
    }
    if let Some(last) = waiters.last() {
        active.next_lsn = last.lsn + 1;
    }
    Ok(())
}

/// Creates the segment at `path` (the one starting at `first_lsn`) for
/// [`write_group`]. Fault point `wal::roll_open` fails it as an `open(2)`
/// refused with EMFILE would, before any file exists.
fn create_segment(shared: &Shared, first_lsn: u64, path: &Path) -> Result<File, WalError> {
    fail::fail_point!("wal::roll_open", |_| Err(WalError::Io {
        path: path.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EMFILE),
    }));
    let (file, _) = segment::create(
        &shared.dir,
        first_lsn,
        shared.config.segment_size,
        shared.config.preallocate,
    )?;
    Ok(file)
}

/// `true` when `e` is the new segment's own `open(2)` refused for a cause
/// that passes (no descriptor, no space) and no file by that name exists:
/// nothing was written or synced, so the log can go on in the current
/// segment (which only grows past `segment_size`; readers take segments of
/// any length). A failure after the file was made (its fsync, the
/// directory's) stays fatal: the directory entry may or may not be durable.
fn never_created(e: &WalError, path: &Path) -> bool {
    let WalError::Io { path: failed, .. } = e else {
        return false;
    };
    failed == path
        && e.is_transient()
        && fs::symlink_metadata(path).is_err_and(|m| m.kind() == io::ErrorKind::NotFound)
}

/// Iterator over records returned by [`Wal::replay`].
#[derive(Debug)]
pub struct Replay {
    segments: Vec<SegmentFile>,
    /// Damage below the owner's applied LSN that open stepped over.
    skips: Vec<Skip>,
    index: usize,
    data: Vec<u8>,
    pos: usize,
    next: u64,
    from: u64,
    until: u64,
    done: bool,
    _pin: Pin,
}

impl Replay {
    fn fail(&mut self, e: WalError) -> Option<Result<Record, WalError>> {
        self.done = true;
        Some(Err(e))
    }
}

impl Iterator for Replay {
    type Item = Result<Record, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if self.pos >= self.data.len() || self.data.is_empty() {
                // Load the next segment.
                let Some(seg) = self.segments.get(self.index) else {
                    if self.next <= self.until {
                        let segment = self
                            .segments
                            .last()
                            .map(|s| s.path.clone())
                            .unwrap_or_default();
                        let reason = format!(
                            "log ends before LSN {}, but LSN {} was acknowledged",
                            self.next, self.until
                        );
                        let offset = self.pos as u64;
                        return self.fail(WalError::Corrupt {
                            segment,
                            offset,
                            reason,
                        });
                    }
                    self.done = true;
                    return None;
                };
                let path = seg.path.clone();
                match fs::read(&path).at(&path) {
                    Ok(d) => self.data = d,
                    Err(e) => return self.fail(e),
                }
                self.pos = 0;
                self.next = seg.first_lsn;
                self.index += 1;
                if self.data.is_empty() {
                    continue;
                }
            }
            if self.next > self.until {
                self.done = true;
                return None;
            }
            let seg_path = self.segments[self.index - 1].path.clone();
            match frame::decode(&self.data[self.pos..], READ_PAYLOAD_LIMIT) {
                Ok(f) if f.lsn == self.next => {
                    self.pos += f.encoded_len();
                    self.next += 1;
                    if f.lsn < self.from {
                        continue;
                    }
                    return Some(Ok(Record {
                        lsn: f.lsn,
                        header: f.header,
                        payload: f.payload.to_vec(),
                    }));
                }
                Ok(_) | Err(FrameError::Zeroed) | Err(FrameError::Incomplete)
                    if self.index < self.segments.len()
                        && self.segments[self.index].first_lsn == self.next =>
                {
                    // Clean end of a sealed segment: continue with the next one.
                    self.pos = self.data.len();
                }
                other => {
                    let reason = match other {
                        Ok(f) => format!("LSN {} where {} was expected", f.lsn, self.next),
                        Err(e) => e.to_string(),
                    };
                    let pos = self.pos;
                    let skip = self
                        .skips
                        .iter()
                        .find(|s| s.segment == seg_path && s.offset == pos)
                        .map(|s| (s.resume, s.first_lsn, s.resume_lsn, s.reason.clone()));
                    let Some((resume, first, resume_lsn, skip_reason)) = skip else {
                        return self.fail(WalError::Corrupt {
                            segment: seg_path,
                            offset: pos as u64,
                            reason,
                        });
                    };
                    // Damage open stepped over: go on after it unless the
                    // caller asked for a record it destroyed.
                    if resume_lsn > first && resume_lsn > self.from {
                        return self.fail(WalError::Skipped {
                            segment: seg_path,
                            offset: pos as u64,
                            first: first.max(self.from),
                            last: resume_lsn - 1,
                            reason: skip_reason,
                        });
                    }
                    self.next = resume_lsn;
                    self.pos = resume
                        .filter(|r| *r > pos)
                        .map_or(self.data.len(), |r| r.min(self.data.len()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Wal {
        let config = WalConfig {
            segment_size: 64 * 1024,
            max_payload: 1024,
            ..WalConfig::default()
        };
        Wal::open(dir, config, WalOptions::default())
            .expect("open")
            .0
    }

    fn append(wal: &Wal, seq: u64, payload: &[u8]) -> u64 {
        wal.append(
            RecordHeader {
                space: 1,
                seq,
                kind: 1,
            },
            payload,
        )
        .expect("append")
        .wait()
        .expect("durable")
    }

    fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_file() {
                let bytes = fs::read(&path).expect("read");
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(path);
                }
            }
        }
        found
    }

    #[test]
    fn rotate_then_release_leaves_no_written_record_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal = open(dir.path());
        let marker = b"forget-me-7d1f0c";
        append(&wal, 1, b"first");
        let lsn = append(&wal, 2, marker);
        assert_eq!(files_containing(dir.path(), marker).len(), 1);
        // Release alone never deletes the segment being written.
        assert_eq!(wal.release_through(lsn).expect("release"), 0);
        let sealed = wal.rotate().expect("rotate");
        assert_eq!(sealed, lsn);
        assert_eq!(
            wal.rotate().expect("rotate an empty segment"),
            lsn,
            "an empty segment is not replaced"
        );
        assert_eq!(wal.release_through(sealed).expect("release"), 1);
        assert_eq!(wal.first_retained_lsn(), lsn + 1);
        assert!(files_containing(dir.path(), marker).is_empty());

        let after = append(&wal, 3, b"after");
        assert_eq!(after, lsn + 1, "LSNs go on across the new segment");
        let replayed: Vec<u64> = wal
            .replay(after)
            .expect("replay")
            .map(|r| r.expect("record").lsn)
            .collect();
        assert_eq!(replayed, vec![after]);
        drop(wal);
        let config = WalConfig {
            segment_size: 64 * 1024,
            max_payload: 1024,
            ..WalConfig::default()
        };
        let (_wal, report) = Wal::open(dir.path(), config, WalOptions::default()).expect("reopen");
        assert_eq!((report.first_lsn, report.records), (Some(after), 1));
    }

    #[test]
    fn quarantine_is_deleted_after_its_retention_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let corrupt = dir.path().join(CORRUPT_DIR);
        fs::create_dir_all(&corrupt).expect("mkdir");
        fs::write(corrupt.join("00000000000000000007.wal"), b"damaged").expect("write");
        let now = SystemTime::now();
        assert_eq!(
            prune_quarantine(dir.path(), 0, now + Duration::from_secs(1 << 30)).expect("prune"),
            0,
            "0 keeps forever"
        );
        assert_eq!(
            prune_quarantine(dir.path(), 2, now).expect("prune"),
            0,
            "fresh"
        );
        assert_eq!(
            prune_quarantine(dir.path(), 2, now + Duration::from_secs(2 * 3600 + 60))
                .expect("prune"),
            1
        );
        assert!(fs::read_dir(&corrupt).expect("read_dir").next().is_none());
        let missing = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            prune_quarantine(missing.path(), 2, now).expect("no corrupt/"),
            0
        );
    }
}
