//! The graph's background tasks: writing access statistics and
//! consolidating episodes into concepts. Each runs on its own thread and
//! holds only a weak reference, so dropping the graph ends it too.

use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// Starts the access flusher, the vector-index linker and, unless
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
                    tracing::warn!(error = %e, "writing access statistics failed");
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
                    match g.consolidate_loaded() {
                        Ok(r) if r.concepts > 0 => {
                            tracing::info!(
                                concepts = r.concepts,
                                members = r.members,
                                "consolidated"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "consolidation failed"),
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
                        Err(e) => tracing::warn!(error = %e, "moving idle memories to the cold tier failed"),
                    }
                },
            )?);
        }
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
