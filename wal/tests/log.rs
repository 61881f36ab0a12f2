//! Behaviour and property tests of the log: round trips, torn tails, bit
//! flips, repair, retention and group commit.

mod common;

use std::fs;
use std::sync::Arc;

use common::*;
use engram_wal::{Durability, RecordHeader, Wal, WalConfig, WalError, WalOptions};
use proptest::prelude::*;

fn inputs_strategy() -> impl Strategy<Value = Vec<Input>> {
    prop::collection::vec(
        (
            any::<u32>(),
            any::<u64>(),
            any::<u8>(),
            prop::collection::vec(any::<u8>(), 0..600),
        ),
        1..60,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(space, seq, kind, payload)| Input {
                header: RecordHeader { space, seq, kind },
                payload,
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sequence of appends comes back, in order and byte for byte, from
    /// the live log and after a reopen, from any starting LSN.
    #[test]
    fn appends_round_trip_through_replay(
        inputs in inputs_strategy(),
        segment_size in prop::sample::select(vec![4096u64, 8192, 65536]),
        from_pick in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(segment_size, Durability::None);
        let (wal, report) = open(dir.path(), &cfg).expect("open");
        prop_assert_eq!(report.records, 0);
        let lsns = append_all(&wal, &inputs);
        prop_assert_eq!(lsns, (1..=inputs.len() as u64).collect::<Vec<_>>());
        prop_assert!(same(&replay_all(&wal, 1), &inputs));
        drop(wal);

        let (wal, report) = open(dir.path(), &cfg).expect("reopen");
        prop_assert_eq!(report.records, inputs.len() as u64);
        prop_assert!(report.torn_tail.is_none());
        prop_assert!(same(&replay_all(&wal, 1), &inputs));
        let from = from_pick.index(inputs.len()) + 1;
        prop_assert!(same(&replay_all(&wal, from as u64), &inputs[from - 1..]));
        // New appends continue the LSN sequence.
        let next = append_all(&wal, &inputs[..1]);
        prop_assert_eq!(next, vec![inputs.len() as u64 + 1]);
    }

    /// Cutting the last segment at any byte offset (shrinking the file, or
    /// zeroing its end as a torn preallocated write would) recovers exactly
    /// the records that lie wholly before the cut: a prefix, and every record
    /// written before the cut point.
    #[test]
    fn cut_last_segment_recovers_exact_prefix(
        inputs in inputs_strategy(),
        cut_pick in any::<prop::sample::Index>(),
        zero_fill in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(8192, Durability::Always);
        let (wal, _) = open(dir.path(), &cfg).expect("open");
        append_all(&wal, &inputs);
        drop(wal);

        let positions = frame_positions(dir.path());
        prop_assert_eq!(positions.len(), inputs.len());
        let last_seg = positions.last().expect("records").0.clone();
        let in_last: Vec<_> = positions.iter().filter(|p| p.0 == last_seg).collect();
        let written_end = in_last.last().map(|p| p.1 + p.2).unwrap_or(0);
        let cut = cut_pick.index(written_end + 1);
        if zero_fill {
            let mut data = fs::read(&last_seg).expect("read");
            data[cut..].fill(0);
            fs::write(&last_seg, data).expect("write");
        } else {
            fs::OpenOptions::new().write(true).open(&last_seg).expect("open seg")
                .set_len(cut as u64).expect("set_len");
        }
        let survivors = positions.iter().filter(|p| p.0 != last_seg || p.1 + p.2 <= cut).count();

        let (wal, report) = open(dir.path(), &cfg).expect("reopen after cut");
        prop_assert_eq!(report.records, survivors as u64);
        prop_assert!(same(&replay_all(&wal, 1), &inputs[..survivors]));
        if survivors < inputs.len() && !zero_fill {
            // Partial bytes of a frame may remain; they must have been cut and reported.
            let partial_left = cut > in_last.iter().map(|p| p.1 + p.2).filter(|e| *e <= cut).max().unwrap_or(0);
            prop_assert_eq!(report.torn_tail.is_some(), partial_left);
        }
        // The log keeps working and numbering continues after the prefix.
        let next = append_all(&wal, &inputs[..1]);
        prop_assert_eq!(next, vec![survivors as u64 + 1]);
        drop(wal);
        let (wal, _) = open(dir.path(), &cfg).expect("third open");
        let mut expected = inputs[..survivors].to_vec();
        expected.push(inputs[0].clone());
        prop_assert!(same(&replay_all(&wal, 1), &expected));
    }

    /// Any single bit flip inside any record is detected: a damaged last
    /// record is cut as a torn tail; damage before the tail refuses to open
    /// (naming segment and offset) and repair mode truncates there. A damaged
    /// record is never returned.
    #[test]
    fn single_bit_flip_is_always_detected(
        inputs in inputs_strategy(),
        rec_pick in any::<prop::sample::Index>(),
        bit_pick in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(8192, Durability::None);
        let (wal, _) = open(dir.path(), &cfg).expect("open");
        append_all(&wal, &inputs);
        drop(wal);

        let positions = frame_positions(dir.path());
        let k = rec_pick.index(positions.len());
        let (seg, off, len) = positions[k].clone();
        let bit = bit_pick.index(len * 8);
        let mut data = fs::read(&seg).expect("read");
        data[off + bit / 8] ^= 1 << (bit % 8);
        fs::write(&seg, data).expect("write");

        match open(dir.path(), &cfg) {
            Ok((wal, report)) => {
                prop_assert_eq!(k, inputs.len() - 1, "damage before the tail was accepted");
                let tail = report.torn_tail.expect("torn tail reported");
                prop_assert_eq!(&tail.segment, &seg);
                prop_assert_eq!(tail.offset, off as u64);
                prop_assert!(same(&replay_all(&wal, 1), &inputs[..k]));
            }
            Err(WalError::Corrupt { segment, offset, .. }) => {
                prop_assert!(k < inputs.len() - 1, "a damaged last record must be a torn tail");
                prop_assert_eq!(&segment, &seg);
                prop_assert_eq!(offset, off as u64);
                let (wal, report) = open_repair(dir.path(), &cfg).expect("repair");
                let repaired = report.repaired.expect("repair reported");
                prop_assert!(repaired.moved_to.as_ref().is_some_and(|p| p.exists()));
                prop_assert!(same(&replay_all(&wal, 1), &inputs[..k]));
                drop(wal);
                // After repair the log opens cleanly.
                let (_, report) = open(dir.path(), &cfg).expect("open after repair");
                prop_assert_eq!(report.records, k as u64);
            }
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

#[test]
fn group_commit_batches_concurrent_appenders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = prometheus::Registry::new();
    let (wal, _) = Wal::open(
        dir.path(),
        WalConfig::default(),
        WalOptions {
            registry: Some(registry.clone()),
            ..WalOptions::default()
        },
    )
    .expect("open");
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..32)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                for i in 0..40u64 {
                    let r = input(t * 1000 + i, 256);
                    wal.append(r.header, &r.payload)
                        .expect("append")
                        .wait()
                        .expect("ack");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let value = |name: &str| -> f64 {
        registry
            .gather()
            .iter()
            .find(|m| m.name() == name)
            .map(|m| m.get_metric()[0].get_counter().get_value())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    };
    let records = value("engram_wal_records_total");
    let fsyncs = value("engram_wal_fsyncs_total");
    assert_eq!(records, 1280.0);
    assert_eq!(wal.synced_lsn(), 1280);
    assert!(
        fsyncs >= 1.0 && fsyncs < records,
        "fsyncs {fsyncs} for {records} records: no batching"
    );
    assert_eq!(replay_all(&wal, 1).len(), 1280);
}

#[test]
fn retention_keeps_pinned_and_unapplied_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(4096, Durability::None);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    let inputs: Vec<_> = (1..=200).map(|i| input(i, 100)).collect();
    append_all(&wal, &inputs);
    let before = segments(dir.path()).len();
    assert!(before > 5, "test needs several segments, got {before}");

    let pin = wal.pin(50);
    wal.release_through(150).expect("release");
    assert!(
        wal.first_retained_lsn() <= 50,
        "pinned record 50 was removed"
    );
    assert!(same(&replay_all(&wal, 50), &inputs[49..]));
    drop(pin);

    let removed = wal.release_through(150).expect("release");
    assert!(removed > 0);
    let first = wal.first_retained_lsn();
    assert!(first > 50 && first <= 151, "first retained {first}");
    assert!(same(&replay_all(&wal, 151), &inputs[150..]));
    assert!(matches!(
        wal.replay(1),
        Err(WalError::Truncated { requested: 1, .. })
    ));

    // Releasing everything keeps the active segment.
    wal.release_through(u64::MAX).expect("release all");
    assert!(!segments(dir.path()).is_empty());
    drop(wal);
    let (wal, report) = open(dir.path(), &cfg).expect("reopen");
    assert_eq!(
        report.first_lsn.unwrap_or(201),
        wal.first_retained_lsn().min(201)
    );
    assert_eq!(append_all(&wal, &inputs[..1]), vec![201]);
}

#[test]
fn lsn_floor_never_lets_numbering_go_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(4096, Durability::None);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    append_all(&wal, &[input(1, 10), input(2, 10)]);
    drop(wal);
    let (wal, report) = Wal::open(
        dir.path(),
        cfg.clone(),
        WalOptions {
            lsn_floor: 1000,
            ..WalOptions::default()
        },
    )
    .expect("open with floor");
    assert_eq!(report.last_lsn, 2);
    assert_eq!(append_all(&wal, &[input(3, 10)]), vec![1000]);
    drop(wal);
    let (wal, report) = open(dir.path(), &cfg).expect("reopen");
    assert_eq!(report.first_lsn, Some(1000));
    assert_eq!(replay_all(&wal, 1000).len(), 1);
}

#[test]
fn oversized_records_and_bad_config_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(4096, Durability::None);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    let big = vec![0u8; MAX_PAYLOAD as usize + 1];
    assert!(matches!(
        wal.append(
            RecordHeader {
                space: 1,
                seq: 1,
                kind: 1
            },
            &big
        ),
        Err(WalError::RecordTooLarge { .. })
    ));
    let bad = WalConfig {
        segment_size: 1024,
        ..WalConfig::default()
    };
    assert!(matches!(open(dir.path(), &bad), Err(WalError::Config(_))));
    let bad = WalConfig {
        segment_size: 4096,
        max_payload: 8192,
        ..WalConfig::default()
    };
    assert!(matches!(open(dir.path(), &bad), Err(WalError::Config(_))));
}

#[test]
fn newer_format_version_stops_open_and_is_never_truncated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(4096, Durability::None);
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    append_all(&wal, &[input(1, 10), input(2, 10)]);
    drop(wal);
    let (seg, off, len) = frame_positions(dir.path())[1].clone();
    let mut data = fs::read(&seg).expect("read");
    let frame = &mut data[off..off + len];
    frame[4] = 9;
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..12]);
    h.update(&frame[16..]);
    let crc = h.finalize();
    frame[12..16].copy_from_slice(&crc.to_le_bytes());
    fs::write(&seg, &data).expect("write");
    assert!(matches!(
        open(dir.path(), &cfg),
        Err(WalError::Unsupported { .. })
    ));
    assert_eq!(
        fs::read(&seg).expect("read again"),
        data,
        "open must not modify the segment"
    );
}

#[test]
fn interval_durability_acknowledges_and_syncs_in_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(
        1 << 20,
        Durability::Interval(std::time::Duration::from_millis(5)),
    );
    let (wal, _) = open(dir.path(), &cfg).expect("open");
    append_all(&wal, &[input(1, 10), input(2, 10)]);
    assert_eq!(wal.committed_lsn(), 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while wal.synced_lsn() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "interval fsync never happened"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

#[test]
fn lowering_max_record_bytes_keeps_existing_records_readable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = config(8192, Durability::None);
    let (wal, _) = open(dir.path(), &before).expect("open");
    let inputs: Vec<_> = (1..=20).map(|i| input(i, 1000)).collect();
    append_all(&wal, &inputs);
    drop(wal);

    // The operator lowers the limit below the size of every record written.
    let after = WalConfig {
        max_payload: 100,
        ..before.clone()
    };
    let (wal, report) = open(dir.path(), &after).expect("reopen with a lower limit");
    assert_eq!(report.records, 20, "{report:?}");
    assert!(report.torn_tail.is_none(), "{report:?}");
    assert!(same(&replay_all(&wal, 1), &inputs));
    // Appends obey the new limit.
    let r = input(21, 101);
    assert!(matches!(
        wal.append(r.header, &r.payload),
        Err(WalError::RecordTooLarge { limit: 100, .. })
    ));
    assert_eq!(append_all(&wal, &[input(21, 100)]), vec![21]);
    drop(wal);
    let (wal, report) = open(dir.path(), &after).expect("third open");
    assert_eq!(report.records, 21);
    assert_eq!(replay_all(&wal, 1).len(), 21);
}
