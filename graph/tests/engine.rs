//! Engine recovery without crashes: idempotent replay, retention, WAL damage.

use std::path::Path;

use engram_graph::{Engine, EngineConfig, EngineError, OpenOptions};
use engram_lsm::Mutation;
use engram_wal::WalConfig;

fn put(n: u8) -> Vec<Mutation> {
    let mut id = [0; 16];
    id[15] = n;
    vec![Mutation::PutEpisode {
        id,
        record: vec![n],
    }]
}

fn open(dir: &Path, config: &EngineConfig) -> (Engine, engram_graph::RecoveryReport) {
    Engine::open(dir, config, OpenOptions::default()).expect("open engine")
}

#[test]
fn sequences_are_per_space_and_continue_after_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EngineConfig::default();
    let (engine, report) = open(dir.path(), &cfg);
    assert_eq!(report.replayed, 0);
    let a1 = engine.submit(1, 1, put(1)).expect("submit");
    let b1 = engine.submit(2, 1, put(2)).expect("submit");
    let a2 = engine.submit(1, 1, put(3)).expect("submit");
    assert_eq!((a1.seq, b1.seq, a2.seq), (1, 1, 2));
    assert_eq!((a1.lsn, b1.lsn, a2.lsn), (1, 2, 3));
    assert_eq!(
        engine
            .store()
            .episode(
                1,
                &[0; 15]
                    .iter()
                    .chain(&[3])
                    .copied()
                    .collect::<Vec<_>>()
                    .try_into()
                    .expect("id")
            )
            .expect("get"),
        Some(vec![3])
    );
    drop(engine);
    let (engine, report) = open(dir.path(), &cfg);
    assert_eq!(report.applied_before, 3);
    assert_eq!(engine.submit(1, 1, put(4)).expect("submit").seq, 3);
    assert_eq!(engine.submit(2, 1, put(5)).expect("submit").lsn, 5);
}

#[tokio::test]
async fn a_committed_group_is_applied_before_its_writers_hear_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EngineConfig {
        wal_release_interval: 3,
        ..EngineConfig::default()
    };
    let (engine, _) = open(dir.path(), &cfg);
    let id = |n: u8| {
        let mut id = [0; 16];
        id[15] = n;
        id
    };
    for n in 1..=2u8 {
        let appended = engine.append(1, 1, put(n)).expect("append");
        let c = Engine::group_commit(appended).await.expect("durable");
        // No `apply_durable`: the WAL writer applied it on commit.
        assert!(engine.settled(c.lsn), "record {n} not settled");
        assert_eq!(engine.applied_lsn(), c.lsn);
        assert_eq!(
            engine.store().episode(1, &id(n)).expect("get"),
            Some(vec![n])
        );
    }
    // Every `wal_release_interval` records a writer must do the release
    // (it blocks): not settled until `apply_durable` did it.
    let appended = engine.append(1, 1, put(3)).expect("append");
    let c = Engine::group_commit(appended).await.expect("durable");
    assert_eq!(engine.applied_lsn(), 3);
    assert!(!engine.settled(c.lsn), "a due release was left undone");
    engine.apply_durable(c.lsn).expect("release");
    assert!(engine.settled(c.lsn));
}

#[test]
fn replay_onto_an_older_store_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EngineConfig::default();
    let (engine, _) = open(dir.path(), &cfg);
    engine.submit(1, 1, put(1)).expect("submit");
    let old = dir.path().join("old-db");
    engine.checkpoint(&old).expect("checkpoint");
    for n in 2..=10 {
        engine.submit(1, 1, put(n)).expect("submit");
    }
    drop(engine);
    // Put the older store back: the WAL still holds records 2..=10.
    std::fs::remove_dir_all(dir.path().join("db")).expect("rm db");
    std::fs::rename(&old, dir.path().join("db")).expect("restore old db");
    let (engine, report) = open(dir.path(), &cfg);
    assert_eq!(report.applied_before, 1);
    assert_eq!(report.replayed, 9);
    assert_eq!(report.skipped, 0);
    assert_eq!(engine.store().applied_seq(1).expect("seq"), 10);
    drop(engine);
    // Replaying again finds nothing to do.
    let (_, report) = open(dir.path(), &cfg);
    assert_eq!((report.replayed, report.applied_before), (0, 10));
}

#[test]
fn released_wal_behind_an_older_store_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EngineConfig {
        wal: WalConfig {
            segment_size: 4096,
            max_payload: 1024,
            ..WalConfig::default()
        },
        wal_release_interval: 1,
        ..EngineConfig::default()
    };
    let (engine, _) = open(dir.path(), &cfg);
    engine.submit(1, 1, put(1)).expect("submit");
    let old = dir.path().join("old-db");
    engine.checkpoint(&old).expect("checkpoint");
    for n in 2..=200 {
        engine
            .submit(
                1,
                1,
                vec![Mutation::PutSpace {
                    record: vec![n as u8; 100],
                }],
            )
            .expect("submit");
    }
    assert!(
        engine.wal().first_retained_lsn() > 2,
        "retention must have released segments"
    );
    drop(engine);
    std::fs::remove_dir_all(dir.path().join("db")).expect("rm db");
    std::fs::rename(&old, dir.path().join("db")).expect("restore old db");
    let err = Engine::open(dir.path(), &cfg, OpenOptions::default()).expect_err("must refuse");
    assert!(
        matches!(err, EngineError::WalBehindStore { applied: 1, .. }),
        "{err}"
    );
}

#[test]
fn damage_in_records_already_applied_does_not_stop_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EngineConfig {
        wal_release_interval: u64::MAX,
        ..EngineConfig::default()
    };
    let (engine, _) = open(dir.path(), &cfg);
    for n in 1..=5 {
        engine.submit(1, 1, put(n)).expect("submit");
    }
    drop(engine);
    // Record 2 is in the store already: its damage loses nothing.
    let seg = std::fs::read_dir(dir.path().join("wal"))
        .expect("wal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .min()
        .expect("segment");
    let mut data = std::fs::read(&seg).expect("read");
    let frame_len = 36 + engram_lsm::mutation::encode(&put(1)).len();
    data[frame_len + 40] ^= 0x10;
    std::fs::write(&seg, data).expect("write");
    let (engine, report) = open(dir.path(), &cfg);
    assert_eq!(report.applied_before, 5);
    assert_eq!(report.wal.applied_damage.len(), 1);
    assert_eq!(report.wal.applied_damage[0].offset, frame_len as u64);
    assert_eq!(engine.submit(1, 1, put(6)).expect("submit").lsn, 6);
}

#[test]
fn corruption_before_the_tail_stops_open_until_repair() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EngineConfig {
        wal_release_interval: u64::MAX,
        ..EngineConfig::default()
    };
    let (engine, _) = open(dir.path(), &cfg);
    engine.submit(1, 1, put(1)).expect("submit");
    let old = dir.path().join("old-db");
    engine.checkpoint(&old).expect("checkpoint");
    for n in 2..=5 {
        engine.submit(1, 1, put(n)).expect("submit");
    }
    drop(engine);
    // Roll the store back to record 1, so records 2.. must replay.
    std::fs::remove_dir_all(dir.path().join("db")).expect("rm db");
    std::fs::rename(&old, dir.path().join("db")).expect("restore old db");
    // Damage record 2 in the WAL: not applied yet, so it stops open.
    let wal_dir = dir.path().join("wal");
    let seg = std::fs::read_dir(&wal_dir)
        .expect("wal dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .min()
        .expect("segment");
    let mut data = std::fs::read(&seg).expect("read");
    let frame_len = 36 + engram_lsm::mutation::encode(&put(1)).len();
    data[frame_len + 40] ^= 0x10;
    std::fs::write(&seg, data).expect("write");
    let err = Engine::open(dir.path(), &cfg, OpenOptions::default())
        .expect_err("corruption must stop open");
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt") && msg.contains(&format!("offset {frame_len}")),
        "{msg}"
    );
    let (_, report) = Engine::open(
        dir.path(),
        &cfg,
        OpenOptions {
            repair: true,
            ..OpenOptions::default()
        },
    )
    .expect("repair opens");
    let repaired = report.wal.repaired.expect("repair reported");
    assert_eq!(repaired.offset, frame_len as u64);
    assert!(
        dir.path()
            .join("wal")
            .join("corrupt")
            .read_dir()
            .expect("corrupt dir")
            .count()
            > 0
    );
}

/// What an observer is told of one record: space, seq, kind, payload.
type Told = (u32, u64, u8, Vec<u8>);

/// Everything an observer was told, in order.
#[derive(Default)]
struct Seen(std::sync::Mutex<Vec<Told>>);

impl engram_graph::AppendObserver for Seen {
    fn appended(&self, r: &engram_graph::AppendedRecord<'_>) {
        self.0
            .lock()
            .expect("seen")
            .push((r.space, r.seq, r.kind, r.payload.to_vec()));
    }
}

#[tokio::test]
async fn replicated_records_keep_the_primarys_sequence_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = EngineConfig::default();
    let (engine, _) = open(dir.path(), &cfg);
    let seen = std::sync::Arc::new(Seen::default());
    assert!(engine.set_observer(seen.clone()));
    assert!(!engine.set_observer(seen.clone()), "one observer");
    let payloads: Vec<Vec<u8>> = (1..=2)
        .map(|n| engram_lsm::mutation::encode(&put(n)))
        .collect();
    // Out of order or undecodable: refused, nothing appended.
    assert!(matches!(
        engine.append_replicated(7, 2, 1, &payloads[1]),
        Err(EngineError::SequenceMismatch {
            space: 7,
            expected: 1,
            got: 2
        })
    ));
    assert!(matches!(
        engine.append_replicated(7, 1, 1, &[0xff, 0xff, 0xff]),
        Err(EngineError::ReplicatedPayload { seq: 1, .. })
    ));
    assert_eq!(engine.next_seq(7), 1);
    assert!(seen.0.lock().expect("seen").is_empty());
    for (i, p) in payloads.iter().enumerate() {
        let a = engine
            .append_replicated(7, i as u64 + 1, 1, p)
            .expect("append");
        let c = Engine::group_commit(a).await.expect("durable");
        engine.apply_durable(c.lsn).expect("applied");
        assert_eq!(c.seq, i as u64 + 1);
    }
    // Applied like a local write; a local write continues the sequence.
    let mut id = [0; 16];
    id[15] = 2;
    assert_eq!(engine.store().episode(7, &id).expect("get"), Some(vec![2]));
    assert_eq!(engine.submit(7, 3, put(3)).expect("submit").seq, 3);
    let got = seen.0.lock().expect("seen").clone();
    assert_eq!(
        got,
        vec![
            (7, 1, 1, payloads[0].clone()),
            (7, 2, 1, payloads[1].clone()),
            (7, 3, 3, engram_lsm::mutation::encode(&put(3))),
        ],
        "the observer sees local and replicated records with their payloads"
    );
    drop(engine);
    let (engine, _) = open(dir.path(), &cfg);
    assert_eq!(engine.next_seq(7), 4, "sequences survive a restart");
}
