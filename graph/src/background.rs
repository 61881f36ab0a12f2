//! The graph's background tasks: writing access statistics,
//! consolidating episodes into concepts, linking vectors, moving idle
//! memories to the cold tier, unloading idle spaces beyond the index memory
//! budget ([`Graph::unload_idle_spaces`]), and purging forgotten content
//! from the storage files ([`crate::Engine::purge_if_due`]). Each runs on its own
//! thread and holds only a weak reference, so dropping the graph ends it
//! too.
//!
//! Contracts of the passes they run ([`Graph::flush_access`],
//! [`Graph::archive_loaded`], [`Graph::consolidate_loaded`]):
//! - a pass goes through every space even when one fails: the failure is
//!   logged with the space's name and counted in
//!   `engram_background_failures_total{task}` ([`Failures`]);
//! - every WAL record a pass writes stays within the WAL's `max_payload`
//!   ([`RecordBudget`]); an entry that cannot fit even alone is skipped,
//!   logged and counted, never written.

use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use engram_lsm::Mutation;
use prometheus::{IntCounterVec, Opts, Registry};

use crate::Graph;

/// How often the HNSW backlog is worked on, and how many nodes per space
/// each time (about 1 ms each at 384 dimensions: the space's write lock is
/// held for tens of milliseconds at most).
const LINK_EVERY: Duration = Duration::from_millis(100);
const LINK_BUDGET: usize = 32;
/// Nodes relinked around removed vectors per space each time (one
/// neighbourhood selection each, about 40 µs at 384 dimensions: see the
/// ignored `reclaim_cost_at_384_dimensions` test).
const RECLAIM_BUDGET: usize = 128;

/// How often idle memories are looked for (when `cold_after_sec` is set).
const TIERING_EVERY: Duration = Duration::from_secs(60);

/// How often the loaded spaces' indexes are measured against the index
/// memory budget (and idle spaces unloaded beyond it): loads between two
/// steps can exceed the budget for at most this long.
const BUDGET_EVERY: Duration = Duration::from_secs(1);

/// How often the purge task checks whether a purge is due: a quarter of
/// `purge_after_ms`, between 10 ms and 1 s, so a purge starts at most that
/// late.
fn purge_check_every(purge_after_ms: u64) -> Duration {
    Duration::from_millis((purge_after_ms / 4).clamp(10, 1000))
}

/// A background task, as labelled in `engram_background_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Task {
    /// Moving idle memories to the cold tier.
    Archive,
    /// Writing access statistics (and promoting recalled cold memories).
    AccessFlush,
    /// Consolidating episodes into concepts.
    Consolidation,
}

impl Task {
    const ALL: [Task; 3] = [Task::Archive, Task::AccessFlush, Task::Consolidation];

    fn label(self) -> &'static str {
        match self {
            Task::Archive => "archive",
            Task::AccessFlush => "access_flush",
            Task::Consolidation => "consolidation",
        }
    }
}

/// `engram_background_failures_total{task}`: spaces a background pass
/// failed on, and entries it had to skip. Every task's series exists from
/// the start at 0, so an alert on its rate sees the first failure.
#[derive(Debug, Clone)]
pub(crate) struct Failures(IntCounterVec);

impl Failures {
    /// The counter, registered in `registry` when there is one.
    pub(crate) fn new(registry: Option<&Registry>) -> Result<Failures, prometheus::Error> {
        let counter = IntCounterVec::new(
            Opts::new(
                "engram_background_failures_total",
                "Background work that failed, by task (archive, access_flush, consolidation): \
                 a space whose pass failed or an entry that was skipped; the log names the space",
            ),
            &["task"],
        )?;
        for task in Task::ALL {
            counter.with_label_values(&[task.label()]);
        }
        if let Some(r) = registry {
            r.register(Box::new(counter.clone()))?;
        }
        Ok(Failures(counter))
    }

    /// Counts one failure of `task`.
    pub(crate) fn count(&self, task: Task) {
        self.0.with_label_values(&[task.label()]).inc();
    }
}

/// Bytes of the mutation encoding's own header (version byte, count).
const PAYLOAD_HEADER: usize = 5;
/// Bytes left unused below the WAL's `max_payload`, so a record never sits
/// exactly at the limit.
const PAYLOAD_HEADROOM: usize = 256;

/// Where the next entry (the mutations of one memory) of a background WAL
/// record goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// Into the record being gathered.
    Here,
    /// Into a new record: write the one gathered so far first.
    Next,
    /// Nowhere: alone it exceeds the WAL's payload limit.
    Never,
}

/// Keeps the records a background pass writes within the WAL's
/// `max_payload` and at most `max_entries` entries each, measuring entries
/// as [`engram_lsm::mutation::encode`] writes them ([`encoded_len`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordBudget {
    limit: usize,
    max_entries: usize,
    bytes: usize,
    entries: usize,
}

impl RecordBudget {
    pub(crate) fn new(max_payload: u32, max_entries: usize) -> RecordBudget {
        let max_payload = usize::try_from(max_payload).unwrap_or(usize::MAX);
        RecordBudget {
            limit: max_payload.saturating_sub(PAYLOAD_HEADER + PAYLOAD_HEADROOM),
            max_entries: max_entries.max(1),
            bytes: 0,
            entries: 0,
        }
    }

    /// Where an entry of `bytes` encoded bytes goes.
    pub(crate) fn fit(&self, bytes: usize) -> Fit {
        if bytes > self.limit {
            Fit::Never
        } else if self.entries > 0
            && (self.entries >= self.max_entries || self.bytes + bytes > self.limit)
        {
            Fit::Next
        } else {
            Fit::Here
        }
    }

    /// Notes an entry added to the record being gathered.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.entries += 1;
    }

    /// Starts a new record.
    pub(crate) fn reset(&mut self) {
        self.bytes = 0;
        self.entries = 0;
    }
}

/// Encoded size of `mutations` inside a WAL payload, byte for byte as
/// [`engram_lsm::mutation::encode`] writes them (without its header).
pub(crate) fn encoded_len(mutations: &[Mutation]) -> usize {
    const ID: usize = 16;
    const TAG: usize = 1;
    const BYTES: usize = 4; // u32 length
    const TERM: usize = 2; // u16 length
    mutations
        .iter()
        .map(|m| match m {
            Mutation::PutSpace { record } => TAG + BYTES + record.len(),
            Mutation::DropSpace => TAG,
            Mutation::PutEpisode { record, .. } => TAG + ID + BYTES + record.len(),
            Mutation::DeleteEpisode { .. } => TAG + ID,
            Mutation::PutEdge { record, .. } => TAG + 2 * ID + BYTES + record.len(),
            Mutation::DeleteEdge { .. } => TAG + 2 * ID,
            Mutation::PutPosting { term, value, .. } => {
                TAG + TERM + term.len() + ID + BYTES + value.len()
            }
            Mutation::DeletePosting { term, .. } => TAG + TERM + term.len() + ID,
            Mutation::PutVector { vector, .. } => TAG + ID + BYTES + vector.len(),
            Mutation::DeleteVector { .. } => TAG + ID,
            Mutation::PutCold { record, .. } => TAG + ID + BYTES + record.len(),
            Mutation::DeleteCold { .. } => TAG + ID,
            Mutation::PutAccess { value, .. } => TAG + ID + BYTES + value.len(),
            Mutation::DeleteAccess { .. } => TAG + ID,
        })
        .sum()
}

#[derive(Debug, Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    /// Sleeps for `d` or until stopped; returns `true` when stopped.
    fn wait(&self, d: Duration) -> bool {
        let g = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (g, _) = self
            .wake
            .wait_timeout_while(g, d, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *g
    }
}

/// Handle of the running background tasks; dropping it stops them after a
/// last flush of the access statistics (a consolidation in progress
/// finishes first).
#[derive(Debug)]
pub struct Background {
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts the access flusher, the vector-index linker, the index memory
    /// budget (every second), the purge of
    /// forgotten content (`engine.purge_after_ms` after a forget) and, unless
    /// switched off (interval or age 0), periodic consolidation and the move
    /// of idle memories to the cold tier (every minute).
    pub fn start(graph: &Arc<Graph>) -> std::io::Result<Background> {
        let stop = Arc::new(Stop::default());
        let mut threads = Vec::new();
        let flush_every = Duration::from_millis(graph.config().access_flush_ms);
        threads.push(spawn(
            "engram-access",
            &stop,
            graph,
            flush_every,
            |g, _| {
                if let Err(e) = g.flush_access() {
                    tracing::warn!(error = %e, "writing access statistics stopped");
                }
            },
        )?);
        let interval = graph.config().consolidation.interval_sec;
        if interval > 0 {
            threads.push(spawn(
                "engram-consolidate",
                &stop,
                graph,
                Duration::from_secs(interval),
                |g, stopping| {
                    if stopping {
                        return;
                    }
                    // Failing spaces are logged and counted by the pass.
                    match g.consolidate_loaded() {
                        Ok(r) if r.concepts > 0 => {
                            tracing::info!(
                                concepts = r.concepts,
                                members = r.members,
                                examined = r.examined,
                                "consolidated"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "consolidation stopped"),
                    }
                },
            )?);
        }
        threads.push(spawn(
            "engram-index",
            &stop,
            graph,
            LINK_EVERY,
            |g, stopping| {
                if !stopping {
                    g.link_vectors(LINK_BUDGET, RECLAIM_BUDGET);
                }
            },
        )?);
        if graph.config().cold_after_sec > 0 {
            threads.push(spawn(
                "engram-tiering",
                &stop,
                graph,
                TIERING_EVERY,
                |g, stopping| {
                    if stopping {
                        return;
                    }
                    match g.archive_loaded() {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(moved = n, "idle memories moved to the cold tier"),
                        Err(e) => tracing::warn!(error = %e, "moving idle memories to the cold tier stopped"),
                    }
                },
            )?);
        }
        threads.push(spawn(
            "engram-budget",
            &stop,
            graph,
            BUDGET_EVERY,
            |g, stopping| {
                // At shutdown the loaded spaces' snapshots are written by
                // `save_index_snapshots`, not here.
                if !stopping {
                    // Logged by the step.
                    g.unload_idle_spaces();
                }
            },
        )?);
        threads.push(spawn(
            "engram-purge",
            &stop,
            graph,
            purge_check_every(graph.config().engine.purge_after_ms),
            |g, stopping| {
                // At shutdown a pending purge stays marked in the store and
                // runs right after the next start.
                if stopping {
                    return;
                }
                // Failures are logged and counted by the engine. A degraded
                // store retries its deferred apply here too, so a quiet
                // server heals (at most once a second).
                let _ = g.engine().retry_pending_apply();
                let _ = g.engine().purge_if_due();
            },
        )?);
        Ok(Background { stop, threads })
    }
}

fn spawn(
    name: &str,
    stop: &Arc<Stop>,
    graph: &Arc<Graph>,
    every: Duration,
    task: fn(&Graph, bool),
) -> std::io::Result<JoinHandle<()>> {
    let stop = Arc::clone(stop);
    let graph: Weak<Graph> = Arc::downgrade(graph);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            loop {
                let stopped = stop.wait(every);
                match graph.upgrade() {
                    Some(g) => task(&g, stopped),
                    None => return,
                }
                if stopped {
                    return;
                }
            }
        })
}

impl Drop for Background {
    fn drop(&mut self) {
        *self
            .stop
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.stop.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use engram_lsm::mutation;

    use super::*;

    #[test]
    fn encoded_len_matches_the_encoder_for_every_mutation() {
        let id = [7; 16];
        let all = [
            Mutation::PutSpace { record: vec![1; 9] },
            Mutation::DropSpace,
            Mutation::PutEpisode {
                id,
                record: vec![2; 300],
            },
            Mutation::DeleteEpisode { id },
            Mutation::PutEdge {
                from: id,
                to: id,
                record: vec![3; 5],
            },
            Mutation::DeleteEdge { from: id, to: id },
            Mutation::PutPosting {
                term: "größe".into(),
                id,
                value: vec![4; 4],
            },
            Mutation::DeletePosting {
                term: "kite".into(),
                id,
            },
            Mutation::PutVector {
                id,
                vector: vec![5; 16],
            },
            Mutation::DeleteVector { id },
            Mutation::PutCold {
                id,
                record: vec![6; 1000],
            },
            Mutation::DeleteCold { id },
            Mutation::PutAccess {
                id,
                value: vec![8; 12],
            },
            Mutation::DeleteAccess { id },
        ];
        for m in &all {
            let one = std::slice::from_ref(m);
            assert_eq!(
                encoded_len(one) + PAYLOAD_HEADER,
                mutation::encode(one).len(),
                "{m:?}"
            );
        }
        assert_eq!(
            encoded_len(&all) + PAYLOAD_HEADER,
            mutation::encode(&all).len()
        );
    }

    #[test]
    fn purge_checks_run_often_enough_and_not_too_often() {
        assert_eq!(purge_check_every(60_000), Duration::from_secs(1));
        assert_eq!(purge_check_every(200), Duration::from_millis(50));
        assert_eq!(purge_check_every(0), Duration::from_millis(10));
    }

    #[test]
    fn a_record_budget_never_exceeds_the_payload_limit_or_the_entry_cap() {
        let max_payload = 1000;
        let limit = 1000 - PAYLOAD_HEADER - PAYLOAD_HEADROOM;
        let mut b = RecordBudget::new(max_payload, 3);
        assert_eq!(b.fit(limit + 1), Fit::Never, "alone too large");
        assert_eq!(b.fit(limit), Fit::Here, "alone exactly at the limit");
        b.add(limit - 10);
        assert_eq!(b.fit(11), Fit::Next);
        assert_eq!(b.fit(10), Fit::Here);
        b.reset();
        for _ in 0..3 {
            assert_eq!(b.fit(1), Fit::Here);
            b.add(1);
        }
        assert_eq!(b.fit(1), Fit::Next, "entry cap");
        let tiny = RecordBudget::new(1, 10);
        assert_eq!(tiny.fit(0), Fit::Here);
        assert_eq!(tiny.fit(1), Fit::Never);
    }
}
