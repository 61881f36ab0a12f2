//! Fault injection (the `fail` crate, compiled in only for tests): a failed
//! write or fsync never yields an acknowledgment and never damages what was
//! already durable. Fail points are process-global, so every test here holds
//! a `FailScenario`, which serialises them.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use engram_wal::{AppendTicket, Durability, WalError};

fn acked_prefix_then_fault(fail_point: &str) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(64 * 1024, Durability::Always);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    let durable: Vec<_> = (1..=30).map(|i| input(i, 200)).collect();
    append_all(&wal, &durable);

    fail::cfg(fail_point, "return").expect("configure fail point");
    let wal = Arc::new(wal);
    let attempts: Vec<_> = (0..8)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                let mut acked = 0;
                for i in 0..20 {
                    let r = input(1000 + t * 100 + i, 200);
                    if let Ok(ticket) = wal.append(r.header, &r.payload) {
                        match ticket.wait() {
                            Ok(_) => acked += 1,
                            Err(e) => assert!(matches!(e, WalError::Failed { .. }), "{e}"),
                        }
                    }
                }
                acked
            })
        })
        .collect();
    let acked: usize = attempts
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .sum();
    assert_eq!(
        acked, 0,
        "an append was acknowledged although {fail_point} failed"
    );
    assert!(wal.failure().is_some(), "log must be in the failed state");
    let r = input(9999, 10);
    assert!(matches!(
        wal.append(r.header, &r.payload),
        Err(WalError::Failed { .. })
    ));
    assert_eq!(wal.committed_lsn(), 30);
    fail::remove(fail_point);
    drop(wal);

    let (wal, report) = open(dir.path(), &cfg).expect("reopen after fault");
    assert!(report.repaired.is_none());
    let records = replay_all(&wal, 1);
    assert!(records.len() >= durable.len());
    assert!(
        same(&records[..durable.len()], &durable),
        "durable records damaged"
    );
    // Records past the durable prefix were never acknowledged; if any reached
    // the disk they are intact records that were really appended.
    for r in &records[durable.len()..] {
        assert!(r.header.seq >= 1000 && r.header.seq < 2000 && r.payload.len() == 200);
    }
    // The reopened log accepts and acknowledges writes again.
    assert_eq!(
        append_all(&wal, &[input(5000, 10)]),
        vec![records.len() as u64 + 1]
    );
    scenario.teardown();
}

#[test]
fn fsync_failure_is_never_acknowledged_and_keeps_durable_records() {
    acked_prefix_then_fault("wal::fsync");
}

#[test]
fn disk_full_write_is_never_acknowledged_and_keeps_durable_records() {
    acked_prefix_then_fault("wal::write");
}

#[test]
fn partial_write_then_disk_full_leaves_a_torn_tail_only() {
    acked_prefix_then_fault("wal::write_partial");
}

#[test]
fn fsync_failure_while_rolling_segments_is_not_acknowledged() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(4096, Durability::Always);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    let durable: Vec<_> = (1..=5).map(|i| input(i, 500)).collect();
    append_all(&wal, &durable);
    // Fail the second fsync from now: the seal of the full segment or the new one.
    fail::cfg("wal::fsync", "1*off->return").expect("cfg");
    let big: Vec<_> = (100..120).map(|i| input(i, 500)).collect();
    let tickets: Vec<_> = big
        .iter()
        .filter_map(|r| wal.append(r.header, &r.payload).ok())
        .collect();
    let results: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    fail::remove("wal::fsync");
    let first_err = results
        .iter()
        .position(|r| r.is_err())
        .expect("some append must fail");
    assert!(
        results[first_err..].iter().all(|r| r.is_err()),
        "ack after a failed fsync"
    );
    let acked = durable.len() + first_err;
    drop(wal);
    let (wal, _) = open(dir.path(), &cfg).expect("reopen");
    let records = replay_all(&wal, 1);
    let mut expected = durable.clone();
    expected.extend(big[..first_err].iter().cloned());
    assert!(records.len() >= acked);
    assert!(same(&records[..acked], &expected));
    scenario.teardown();
}

#[test]
fn open_reports_io_errors_instead_of_panicking() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(4096, Durability::Always);
    fail::cfg("wal::fsync", "return").expect("cfg");
    assert!(matches!(open(dir.path(), &cfg), Err(WalError::Io { .. })));
    fail::remove("wal::fsync");
    assert!(open(dir.path(), &cfg).is_ok());
    scenario.teardown();
}

/// Waits for every ticket, giving up after `limit`: `None` for a ticket that
/// was still pending (an append that would have waited forever).
fn wait_bounded(tickets: Vec<AppendTicket>, limit: Duration) -> Vec<Option<Result<u64, WalError>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let n = tickets.len();
    for (i, ticket) in tickets.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((i, ticket.wait()));
        });
    }
    drop(tx);
    let mut out: Vec<Option<Result<u64, WalError>>> = (0..n).map(|_| None).collect();
    let deadline = Instant::now() + limit;
    while let Ok((i, r)) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        out[i] = Some(r);
    }
    out
}

#[test]
fn writer_panic_fails_waiters_instead_of_hanging() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(64 * 1024, Durability::Always);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    let durable: Vec<_> = (1..=5).map(|i| input(i, 100)).collect();
    append_all(&wal, &durable);

    // The writer's next write stops until more appends are queued behind
    // it, then panics.
    let entered = Arc::new(Barrier::new(2));
    let resume = Arc::new(Barrier::new(2));
    {
        let entered = Arc::clone(&entered);
        let resume = Arc::clone(&resume);
        fail::cfg_callback("wal::write", move || {
            let _ = entered.wait();
            let _ = resume.wait();
            panic!("injected panic in the WAL writer");
        })
        .expect("configure fail point");
    }
    let r = input(100, 100);
    let mut tickets = vec![wal.append(r.header, &r.payload).expect("append accepted")];
    let _ = entered.wait();
    for i in 101..104 {
        let r = input(i, 100);
        tickets.push(wal.append(r.header, &r.payload).expect("append queued"));
    }
    let _ = resume.wait();

    // The write in progress and the appends queued behind it all fail.
    for (i, result) in wait_bounded(tickets, Duration::from_secs(20))
        .into_iter()
        .enumerate()
    {
        match result {
            Some(Err(WalError::Failed { .. })) => {}
            Some(other) => panic!("append {i}: expected a failure, got {other:?}"),
            None => panic!("append {i} still waits for a writer that panicked"),
        }
    }
    // The log is in the failed state and says why; later appends are refused.
    let reason = wal.failure().expect("the log must be in the failed state");
    assert!(reason.contains("panicked"), "{reason}");
    let r = input(200, 10);
    assert!(matches!(
        wal.append(r.header, &r.payload),
        Err(WalError::Failed { .. })
    ));
    assert_eq!(wal.committed_lsn(), 5);
    assert!(matches!(wal.close(), Err(WalError::Failed { .. })));
    fail::remove("wal::write");

    // A reopen recovers: the durable records are intact and appends work.
    let (wal, _) = open(dir.path(), &cfg).expect("reopen after the panic");
    let records = replay_all(&wal, 1);
    assert!(
        same(&records[..durable.len()], &durable),
        "durable records damaged"
    );
    assert_eq!(
        append_all(&wal, &[input(300, 10)]),
        vec![records.len() as u64 + 1]
    );
    scenario.teardown();
}

#[test]
fn a_segment_open_refused_for_want_of_descriptors_keeps_the_log_writing() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(4096, Durability::Always);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    // Every new segment's open(2) fails with EMFILE: about three segments'
    // worth of records go on in the first one, all acknowledged.
    fail::cfg("wal::roll_open", "return").expect("cfg");
    let mut written: Vec<_> = (1..=20).map(|i| input(i, 500)).collect();
    assert_eq!(append_all(&wal, &written), (1..=20).collect::<Vec<u64>>());
    assert!(wal.failure().is_none(), "{:?}", wal.failure());
    assert_eq!(segments(dir.path()).len(), 1, "no file was left behind");
    // Descriptors back: the next group starts a new segment.
    fail::remove("wal::roll_open");
    let more = input(21, 500);
    assert_eq!(append_all(&wal, std::slice::from_ref(&more)), vec![21]);
    written.push(more);
    assert_eq!(segments(dir.path()).len(), 2);
    drop(wal);
    let (wal, _) = open(dir.path(), &cfg).expect("reopen");
    assert!(same(&replay_all(&wal, 1), &written));
    scenario.teardown();
}
