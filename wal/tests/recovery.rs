//! Damage found at open, judged against the LSN the owner has applied: damage
//! in records below it loses nothing and never stops startup; damage at or
//! after it stops startup as before, except a torn tail, which is cut.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use engram_wal::{Durability, RecordHeader, Wal, WalConfig, WalError, WalOptions};
use proptest::prelude::*;

/// Ways one record can be damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hit {
    /// One bit of the payload.
    Payload,
    /// One bit of the CRC field.
    Crc,
    /// The lowest bit of the length field: the frame seems one byte longer or shorter.
    LengthLow,
    /// A high bit of the length field: the frame seems to run past the segment.
    LengthHigh,
    /// One bit of the magic.
    Magic,
    /// One bit of the LSN field.
    Lsn,
    /// The whole frame zeroed, as a lost write leaves it.
    Zeroed,
}

const HITS: [Hit; 7] = [
    Hit::Payload,
    Hit::Crc,
    Hit::LengthLow,
    Hit::LengthHigh,
    Hit::Magic,
    Hit::Lsn,
    Hit::Zeroed,
];

fn damage(seg: &Path, off: usize, len: usize, hit: Hit) {
    let mut data = fs::read(seg).expect("read segment");
    match hit {
        Hit::Payload => data[off + len - 1] ^= 0x10,
        Hit::Crc => data[off + 12] ^= 0x01,
        Hit::LengthLow => data[off + 8] ^= 0x01,
        Hit::LengthHigh => data[off + 11] ^= 0x40,
        Hit::Magic => data[off + 1] ^= 0x20,
        Hit::Lsn => data[off + 16] ^= 0x02,
        Hit::Zeroed => data[off..off + len].fill(0),
    }
    fs::write(seg, data).expect("write segment");
}

/// Records written by [`written_log`]: two segments of 30 (LSN 1-30, 31-60).
const RECORDS: u64 = 60;
/// The owner's applied LSN in most tests: records 1-40 are in its store.
const APPLIED: u64 = 40;

fn written_log(dir: &Path) -> (WalConfig, Vec<Input>) {
    let cfg = config(4096, Durability::None);
    let (wal, _) = open(dir, &cfg).expect("open");
    let inputs: Vec<_> = (1..=RECORDS).map(|i| input(i, 100)).collect();
    append_all(&wal, &inputs);
    drop(wal);
    (cfg, inputs)
}

#[test]
fn damage_in_applied_records_does_not_stop_startup() {
    for hit in HITS {
        for which in 0..4 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (cfg, inputs) = written_log(dir.path());
            let positions = frame_positions(dir.path());
            let last_in_first = positions.iter().filter(|p| p.0 == positions[0].0).count() as u64;
            assert!(last_in_first < APPLIED, "the test needs two segments");
            // The first record, one inside a segment, the last of a segment,
            // and the last applied one.
            let lsn = [1, 10, last_in_first, APPLIED][which];
            let (seg, off, len) = positions[(lsn - 1) as usize].clone();
            damage(&seg, off, len, hit);
            let case = format!("{hit:?} in record {lsn}");

            let registry = prometheus::Registry::new();
            let (wal, report) = Wal::open(
                dir.path(),
                cfg.clone(),
                WalOptions {
                    lsn_floor: APPLIED + 1,
                    registry: Some(registry.clone()),
                    ..WalOptions::default()
                },
            )
            .unwrap_or_else(|e| {
                panic!("{case}: damage below the applied LSN stopped startup: {e}")
            });
            assert!(report.torn_tail.is_none(), "{case}: {report:?}");
            assert!(report.repaired.is_none(), "{case}: {report:?}");
            assert_eq!(report.applied_damage.len(), 1, "{case}: {report:?}");
            let found = &report.applied_damage[0];
            assert_eq!(
                (found.first_lsn, found.resume_lsn),
                (lsn, lsn + 1),
                "{case}"
            );
            // A zeroed last record of a segment reads as the clean end of
            // that segment; the loss shows as records missing before the next.
            if !(hit == Hit::Zeroed && lsn == last_in_first) {
                assert_eq!((&found.segment, found.offset), (&seg, off as u64), "{case}");
            }
            assert_eq!(
                counter(&registry, "engram_wal_applied_damage_skipped_total"),
                Some(1.0),
                "{case}"
            );

            // Everything the owner still needs replays.
            assert!(
                same(&replay_all(&wal, APPLIED + 1), &inputs[APPLIED as usize..]),
                "{case}"
            );
            // Asking for the damaged record itself says why it cannot be had.
            let err = wal.replay(lsn).expect("replay").find_map(Result::err);
            assert!(
                matches!(err, Some(WalError::Skipped { first, .. }) if first == lsn),
                "{case}: {err:?}"
            );
            // Numbering goes on, and the damage stays harmless at the next open.
            assert_eq!(
                append_all(&wal, &[input(1000, 10)]),
                vec![RECORDS + 1],
                "{case}"
            );
            drop(wal);
            let (wal, report) = open_applied(dir.path(), &cfg, APPLIED, false)
                .unwrap_or_else(|e| panic!("{case}: second open: {e}"));
            assert_eq!(report.applied_damage.len(), 1, "{case}: {report:?}");
            // Once the owner has applied the rest, retention removes the
            // segments holding the damage.
            wal.release_through(RECORDS + 1).expect("release");
            drop(wal);
            let (_, report) = open_applied(dir.path(), &cfg, RECORDS + 1, false)
                .unwrap_or_else(|e| panic!("{case}: open after release: {e}"));
            assert!(report.applied_damage.is_empty(), "{case}: {report:?}");
        }
    }
}

#[test]
fn damage_after_applied_lsn_still_stops_startup() {
    for hit in HITS {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cfg, inputs) = written_log(dir.path());
        let positions = frame_positions(dir.path());
        // Record 10 is applied; record 45 is not, and valid records follow it.
        let (applied_seg, applied_off, applied_len) = positions[9].clone();
        let (seg, off, len) = positions[44].clone();
        damage(&applied_seg, applied_off, applied_len, hit);
        damage(&seg, off, len, hit);

        match open_applied(dir.path(), &cfg, 30, false) {
            Err(WalError::Corrupt {
                segment, offset, ..
            }) => assert_eq!(
                (segment, offset),
                (seg.clone(), off as u64),
                "{hit:?}: startup must stop at the unapplied damage, not the applied one"
            ),
            other => panic!(
                "{hit:?}: damage after the applied LSN must stop startup, got {:?}",
                other.map(|(_, report)| report)
            ),
        }

        // Repair cuts there: it loses the damaged record and those after it,
        // nothing before.
        let (wal, report) = open_applied(dir.path(), &cfg, 30, true).expect("repair");
        let repaired = report.repaired.clone().expect("repair reported");
        assert_eq!((&repaired.segment, repaired.offset), (&seg, off as u64));
        assert_eq!(report.applied_damage.len(), 1, "{hit:?}: {report:?}");
        assert!(same(&replay_all(&wal, 31), &inputs[30..44]), "{hit:?}");
    }
}

#[test]
fn torn_tail_is_cut_even_with_damage_in_applied_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, inputs) = written_log(dir.path());
    let positions = frame_positions(dir.path());
    let (applied_seg, applied_off, applied_len) = positions[9].clone();
    let (seg, off, len) = positions[RECORDS as usize - 1].clone();
    damage(&applied_seg, applied_off, applied_len, Hit::Payload);
    // The last record was cut short by a crash.
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open segment")
        .set_len((off + len / 2) as u64)
        .expect("set_len");

    let (wal, report) =
        open_applied(dir.path(), &cfg, 30, false).expect("a torn tail never stops startup");
    let tail = report.torn_tail.clone().expect("torn tail reported");
    assert_eq!((&tail.segment, tail.offset), (&seg, off as u64));
    assert_eq!(report.applied_damage.len(), 1, "{report:?}");
    assert!(same(
        &replay_all(&wal, 31),
        &inputs[30..RECORDS as usize - 1]
    ));
}

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

    /// Any single bit flip in any record the owner has applied leaves startup
    /// and the replay of every record it has not applied intact.
    #[test]
    fn any_bit_flip_below_the_applied_lsn_is_skipped(
        inputs in inputs_strategy(),
        rec_pick in any::<prop::sample::Index>(),
        bit_pick in any::<prop::sample::Index>(),
        applied_pick in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = config(8192, Durability::None);
        let (wal, _) = open(dir.path(), &cfg).expect("open");
        append_all(&wal, &inputs);
        drop(wal);

        let n = inputs.len();
        let positions = frame_positions(dir.path());
        let k = rec_pick.index(n);
        let applied = k + 1 + applied_pick.index(n - k);
        let (seg, off, len) = positions[k].clone();
        let bit = bit_pick.index(len * 8);
        let mut data = fs::read(&seg).expect("read");
        data[off + bit / 8] ^= 1 << (bit % 8);
        fs::write(&seg, data).expect("write");

        let opened = open_applied(dir.path(), &cfg, applied as u64, false);
        prop_assert!(
            opened.is_ok(),
            "damage in record {} (applied {}) stopped startup: {:?}",
            k + 1,
            applied,
            opened.as_ref().err()
        );
        let (wal, report) = opened.expect("checked above");
        prop_assert!(report.repaired.is_none());
        prop_assert!(!report.applied_damage.is_empty() || report.torn_tail.is_some());
        prop_assert!(same(&replay_all(&wal, applied as u64 + 1), &inputs[applied..]));
        prop_assert_eq!(append_all(&wal, &inputs[..1]), vec![n as u64 + 1]);
    }
}
