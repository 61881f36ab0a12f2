//! The engine when the store refuses a write (the `lsm::apply` fail point,
//! compiled in only for tests, fails `Store::apply` with a RocksDB message):
//! a cause that passes (file descriptors, disk space) degrades the engine
//! and heals; anything else still fails it. Fail points are process-global,
//! so every test here holds a `FailScenario`, which serialises them.

use std::path::Path;
use std::time::Duration;

use engram_graph::{Engine, EngineConfig, EngineError, OpenOptions, RecoveryReport};
use engram_lsm::Mutation;

/// How RocksDB words a WAL file it could not open for want of descriptors.
const EMFILE: &str =
    "IO error: While open a file for appending: /data/db/000042.log: Too many open files";
/// How RocksDB words a write to a full disk.
const ENOSPC: &str = "IO error: No space left on device: While appending to file: \
                      /data/db/000042.log: No space left on device";
const CORRUPTION: &str = "Corruption: block checksum mismatch: stored = 1, computed = 2";

fn id(n: u8) -> [u8; 16] {
    let mut id = [0; 16];
    id[15] = n;
    id
}

fn put(n: u8) -> Vec<Mutation> {
    vec![Mutation::PutEpisode {
        id: id(n),
        record: vec![n],
    }]
}

fn open(dir: &Path) -> (Engine, RecoveryReport) {
    Engine::open(dir, &EngineConfig::default(), OpenOptions::default()).expect("open engine")
}

/// Fails the next `times` applies with `message`.
fn refuse_applies(times: u32, message: &str) {
    fail::cfg("lsm::apply", &format!("{times}*return({message})")).expect("fail point");
}

fn stored(engine: &Engine, n: u8) -> Option<Vec<u8>> {
    engine.store().episode(1, &id(n)).expect("read")
}

/// One write refused with `message`, then the next write succeeds and
/// applies both, in order; a restart finds nothing left to replay.
fn heals_after(message: &str, cause: &str) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = open(dir.path());
    engine
        .submit(1, 1, put(1))
        .expect("a write before the fault");

    refuse_applies(1, message);
    let err = engine
        .submit(1, 1, put(2))
        .expect_err("the store refuses the write");
    assert!(matches!(err, EngineError::ApplyDeferred(_)), "{err}");
    assert!(err.to_string().contains("may still take effect"), "{err}");
    assert_eq!(engine.failure(), None, "a cause that passes fails nothing");
    let degraded = engine.degraded().expect("the engine says it is degraded");
    assert!(degraded.contains(cause), "{degraded}");
    assert_eq!(stored(&engine, 2), None, "not applied yet");
    assert_eq!(engine.spaces_applied_after_error(), vec![1]);

    // The cause is gone: the next write applies the waiting record first.
    let c = engine
        .submit(1, 1, put(3))
        .expect("the next write succeeds");
    assert_eq!((c.lsn, c.seq), (3, 3));
    assert_eq!(engine.degraded(), None, "a successful apply ends it");
    assert_eq!(engine.failure(), None);
    for n in 1..=3 {
        assert_eq!(stored(&engine, n), Some(vec![n]), "record {n}");
    }
    assert_eq!(engine.applied_lsn(), 3);
    assert_eq!(engine.store().applied_seq(1).expect("seq"), 3);
    // Still listed: the writer of record 2 was told it failed.
    assert_eq!(engine.spaces_applied_after_error(), vec![1]);
    fail::remove("lsm::apply");
    drop(engine);

    let (engine, report) = open(dir.path());
    assert_eq!((report.applied_before, report.replayed), (3, 0));
    assert_eq!(stored(&engine, 2), Some(vec![2]));
    scenario.teardown();
}

#[test]
fn a_transient_apply_failure_heals_once_the_cause_is_gone() {
    heals_after(EMFILE, "Too many open files");
}

#[test]
fn a_full_disk_apply_failure_heals_once_space_is_free() {
    heals_after(ENOSPC, "No space left on device");
}

#[test]
fn a_quiet_server_heals_by_the_background_retry() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = open(dir.path());
    refuse_applies(1, ENOSPC);
    engine
        .submit(1, 1, put(1))
        .expect_err("the store refuses the write");
    assert!(engine.degraded().is_some());

    // At most one retry a second: a call right away does nothing.
    engine.retry_pending_apply().expect("not due yet");
    assert!(engine.degraded().is_some());
    assert_eq!(stored(&engine, 1), None);

    std::thread::sleep(Duration::from_millis(1100));
    engine
        .retry_pending_apply()
        .expect("the retry applies the record");
    assert_eq!(engine.degraded(), None);
    assert_eq!(stored(&engine, 1), Some(vec![1]));
    assert_eq!(engine.applied_lsn(), 1);
    fail::remove("lsm::apply");
    scenario.teardown();
}

#[test]
fn a_corrupt_apply_failure_still_fails_the_engine() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = open(dir.path());
    refuse_applies(1, CORRUPTION);
    let err = engine
        .submit(1, 1, put(1))
        .expect_err("the store refuses the write");
    assert!(matches!(err, EngineError::Store(_)), "{err}");
    let failure = engine.failure().expect("the engine failed");
    assert!(failure.contains("Corruption"), "{failure}");
    assert_eq!(engine.degraded(), None);
    // Even with the store healthy again, writes are refused until restart.
    let err = engine
        .submit(1, 1, put(2))
        .expect_err("refused after the failure");
    assert!(matches!(err, EngineError::Failed(_)), "{err}");
    fail::remove("lsm::apply");
    drop(engine);

    // The WAL still holds the durable record: the restart applies it.
    let (engine, report) = open(dir.path());
    assert_eq!(report.replayed, 1);
    assert_eq!(stored(&engine, 1), Some(vec![1]));
    scenario.teardown();
}

#[test]
fn a_store_still_refusing_for_want_of_descriptors_once_they_are_back_fails_the_engine() {
    // RocksDB stops itself for good after a file open fails with EMFILE; a
    // retry refused although this process can open files again says so.
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = open(dir.path());
    refuse_applies(2, EMFILE);
    let err = engine.submit(1, 1, put(1)).expect_err("first refusal");
    assert!(matches!(err, EngineError::ApplyDeferred(_)), "{err}");
    assert_eq!(engine.failure(), None);
    let err = engine.submit(1, 1, put(2)).expect_err("refused again");
    assert!(matches!(err, EngineError::StoreStopped(_)), "{err}");
    let failure = engine.failure().expect("the engine failed");
    assert!(failure.contains("restart"), "{failure}");
    fail::remove("lsm::apply");
    assert!(matches!(
        engine.submit(1, 1, put(3)),
        Err(EngineError::Failed(_))
    ));
    drop(engine);

    let (engine, report) = open(dir.path());
    assert_eq!(report.replayed, 2, "both durable records are replayed");
    assert_eq!(stored(&engine, 1), Some(vec![1]));
    assert_eq!(stored(&engine, 2), Some(vec![2]));
    scenario.teardown();
}

#[test]
fn writes_beyond_the_degraded_backlog_are_refused_before_the_wal() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _) = open(dir.path());
    refuse_applies(1, ENOSPC);
    engine
        .submit(1, 1, put(1))
        .expect_err("the store refuses the write");

    // Appends (not yet applied) pile up behind the refused record until
    // the engine refuses them before they reach the WAL.
    let mut appended = 1u64;
    let refused = loop {
        match engine.append(1, 1, put(2)) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 100_000, "the backlog is never bounded");
    };
    assert!(
        matches!(refused, EngineError::Degraded { pending, .. } if pending as u64 == appended),
        "{refused}"
    );
    assert_eq!(
        engine.next_seq(1),
        appended + 1,
        "nothing refused was written"
    );

    // Healed, the whole backlog is applied and writes are taken again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while engine.wal().committed_lsn() < appended {
        assert!(std::time::Instant::now() < deadline, "group commit stalled");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(1100));
    engine
        .retry_pending_apply()
        .expect("the retry applies the backlog");
    assert_eq!(engine.degraded(), None);
    assert_eq!(engine.applied_lsn(), appended);
    let c = engine.submit(1, 1, put(3)).expect("writes are taken again");
    assert_eq!(c.lsn, appended + 1);
    fail::remove("lsm::apply");
    scenario.teardown();
}
