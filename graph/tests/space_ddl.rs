//! Creating or deleting a space never stalls requests to other spaces: the
//! map of spaces is not locked across the WAL's fsync. The `wal::fsync`
//! fail point makes that fsync take a second. Fail points are process-wide,
//! so they live in this file of their own (each test holds a
//! `FailScenario`, which runs them one at a time).

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use engram_graph::{Graph, GraphConfig, GraphError, OpenOptions, RememberRequest};

/// The slowed fsync.
const FSYNC: Duration = Duration::from_millis(1000);
/// A read of another space must finish well within it.
const READ_LIMIT: Duration = Duration::from_millis(500);
/// When the DDL is surely inside its fsync.
const SETTLE: Duration = Duration::from_millis(200);

fn open(dir: &std::path::Path) -> Arc<Graph> {
    let (g, _) = Graph::open(dir, GraphConfig::default(), OpenOptions::default()).expect("open");
    Arc::new(g)
}

fn text(content: &str) -> RememberRequest {
    RememberRequest {
        content: content.into(),
        ..RememberRequest::default()
    }
}

/// Runs `f` on a thread of its own; the answer comes with its duration.
fn timed<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Receiver<(T, Duration)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let r = f();
        let _ = tx.send((r, started.elapsed()));
    });
    rx
}

/// Runs `ddl` with the next WAL fsync slowed to [`FSYNC`], and meanwhile
/// reads memory `id` of space `other`; returns how long the read took.
fn read_during(
    g: &Arc<Graph>,
    ddl: impl FnOnce(&Graph) -> Result<(), GraphError> + Send + 'static,
    other: &str,
    id: &str,
) -> Duration {
    fail::cfg("wal::fsync", &format!("1*sleep({})", FSYNC.as_millis())).expect("fail point");
    let slow = {
        let g = Arc::clone(g);
        timed(move || ddl(g.as_ref()).map_err(|e| e.to_string()))
    };
    std::thread::sleep(SETTLE);
    let read = {
        let (g, other, id) = (Arc::clone(g), other.to_owned(), id.to_owned());
        timed(move || {
            g.get(&other, &id, false)
                .map(|m| m.content)
                .map_err(|e| e.to_string())
        })
    };
    let bound = FSYNC * 10;
    let (content, took) = read.recv_timeout(bound).expect("the read finished");
    let (done, ddl_took) = slow.recv_timeout(bound).expect("the DDL finished");
    fail::remove("wal::fsync");
    done.expect("the DDL succeeded");
    content.expect("the read succeeded");
    assert!(
        ddl_took >= FSYNC - Duration::from_millis(100),
        "the fail point slowed the DDL's fsync (took {ddl_took:?})"
    );
    took
}

#[test]
fn creating_a_space_does_not_stall_other_spaces() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("b", None).expect("create b");
    let m = g.remember("b", text("the kettle is on")).expect("remember");
    let took = read_during(&g, |g| g.create_space("a", None), "b", &m.id);
    assert!(
        took < READ_LIMIT,
        "a read of b waited {took:?} for the creation of a"
    );
    assert!(g.space_names().contains(&"a".to_owned()));
    scenario.teardown();
}

#[test]
fn deleting_a_space_does_not_stall_other_spaces() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("a", None).expect("create a");
    g.create_space("b", None).expect("create b");
    g.remember("a", text("soon gone")).expect("remember a");
    let m = g.remember("b", text("the kettle is on")).expect("remember");
    let took = read_during(&g, |g| g.delete_space("a"), "b", &m.id);
    assert!(
        took < READ_LIMIT,
        "a read of b waited {took:?} for the deletion of a"
    );
    assert!(!g.space_names().contains(&"a".to_owned()));
    scenario.teardown();
}
