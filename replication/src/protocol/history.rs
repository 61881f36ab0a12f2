//! Epoch histories: which epoch wrote which sequence numbers of a space.
//!
//! Every node keeps, per space, the list of `(epoch, start_seq)` at which
//! each epoch's primary started writing (Kafka's leader-epoch idea, design
//! D3). Because an `(epoch, seq)` pair names exactly one record (a primary
//! never resumes an epoch after losing its memory: the review's rule 1),
//! two nodes hold the same record at `seq` exactly when their histories
//! give `seq` the same epoch. Comparing histories at a handshake therefore
//! tells whether the replica's log is a prefix of the primary's
//! ([`Catchup::Stream`]) or holds records the primary does not have
//! ([`Catchup::Diverged`]: the replica is reinstalled from a snapshot, never
//! rolled back).

/// The first sequence number an epoch's primary wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpochStart {
    /// The epoch.
    pub epoch: u64,
    /// Its first sequence number.
    pub start_seq: u64,
}

/// A space's epoch history: epochs strictly increasing, start sequence
/// numbers non-decreasing (an epoch whose successor starts at the same
/// sequence number wrote nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History(Vec<EpochStart>);

/// What a replica does after comparing its log with the primary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// The replica's log is a prefix of the primary's: stream from `from`.
    Stream {
        /// The next sequence number the replica needs.
        from: u64,
    },
    /// The replica holds records from `at` on that the primary does not
    /// have (or has from another epoch): reinstall from a snapshot of at
    /// least `at - 1`.
    Diverged {
        /// The first sequence number where the logs differ.
        at: u64,
    },
}

impl History {
    /// A history from its entries; `None` unless epochs strictly increase,
    /// start sequence numbers do not decrease and every start is at least 1.
    pub fn new(entries: Vec<EpochStart>) -> Option<History> {
        let ordered = entries
            .windows(2)
            .all(|w| w[0].epoch < w[1].epoch && w[0].start_seq <= w[1].start_seq);
        let positive = entries.iter().all(|e| e.start_seq >= 1);
        (ordered && positive).then_some(History(entries))
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochStart] {
        &self.0
    }

    /// The newest epoch (0 for an empty history).
    pub fn last_epoch(&self) -> u64 {
        self.0.last().map_or(0, |e| e.epoch)
    }

    /// The epoch that wrote `seq` (0 for seq 0 or before the first entry).
    pub fn epoch_of(&self, seq: u64) -> u64 {
        let i = self.0.partition_point(|e| e.start_seq <= seq);
        // Among entries starting at or before `seq`, the last one wrote it
        // (an earlier entry with the same start wrote nothing).
        i.checked_sub(1).map_or(0, |i| self.0[i].epoch)
    }

    /// Appends the start of a new epoch at `start_seq`; `false` (and no
    /// change) unless the epoch is newer and the start not earlier than the
    /// last entry's.
    pub fn begin(&mut self, epoch: u64, start_seq: u64) -> bool {
        let ok = start_seq >= 1
            && self
                .0
                .last()
                .is_none_or(|l| epoch > l.epoch && start_seq >= l.start_seq);
        if ok {
            self.0.push(EpochStart { epoch, start_seq });
        }
        ok
    }

    /// The last sequence number `self`'s log holds from `epoch` (entry at
    /// index `i`), given the log ends at `last`.
    fn end_of(&self, i: usize, last: u64) -> u64 {
        match self.0.get(i + 1) {
            Some(next) => (next.start_seq - 1).min(last),
            None => last,
        }
    }

    /// The entries of epochs that wrote at least one record of a log
    /// ending at `last`, each with the last sequence number it wrote there.
    fn written(&self, last: u64) -> Vec<(EpochStart, u64)> {
        (0..self.0.len())
            .map(|i| (self.0[i], self.end_of(i, last)))
            .filter(|(e, end)| *end >= e.start_seq)
            .collect()
    }

    /// Compares a replica's log (`self`, ending at `last`) with the
    /// primary's (`primary`, ending at `primary_last`); see the module.
    /// Entries of epochs that wrote nothing in a log (a successor starting
    /// at the same sequence number, or a start past the log's end) say
    /// nothing about its records and are left out of the comparison.
    ///
    /// `writing` is the epoch the primary is writing now (0: none). Records
    /// of that epoch here came from that primary, whatever `primary_last`
    /// says: a handshake delayed on the network carries an older
    /// `primary_last`, and the primary's log never shrinks within its epoch
    /// (a restarted primary takes a new one).
    pub fn compare(
        &self,
        last: u64,
        primary: &History,
        primary_last: u64,
        writing: u64,
    ) -> Catchup {
        let mine = self.written(last);
        let theirs = primary.written(primary_last);
        // The common prefix: epochs with the same start, so the same
        // records from that start on (an (epoch, seq) pair names one
        // record); the records both hold end where either log leaves the
        // last common epoch.
        let common = mine
            .iter()
            .zip(&theirs)
            .take_while(|(a, b)| a.0 == b.0)
            .count();
        let agreed = match common.checked_sub(1) {
            None => 0,
            Some(c) if writing != 0 && mine[c].0.epoch == writing => mine[c].1,
            Some(c) => mine[c].1.min(theirs[c].1),
        };
        // Every earlier common epoch ended at the same place in both logs
        // (the next common entry starts at the same seq), so the logs agree
        // on 1..=agreed.
        if last <= agreed {
            Catchup::Stream { from: last + 1 }
        } else {
            Catchup::Diverged { at: agreed + 1 }
        }
    }

    /// After a [`Catchup::Stream`] verdict: takes the primary's entries for
    /// everything past the common prefix that starts at or before
    /// `last + 1` (this also drops an entry persisted here just before a
    /// crash, for an epoch that never wrote a record here).
    pub fn adopt(&mut self, primary: &History, last: u64) {
        let common = self
            .0
            .iter()
            .zip(&primary.0)
            .take_while(|(a, b)| a == b)
            .count();
        self.0.truncate(common);
        self.0.extend(
            primary.0[common..]
                .iter()
                .take_while(|e| e.start_seq <= last.saturating_add(1))
                .copied(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(entries: &[(u64, u64)]) -> History {
        History::new(
            entries
                .iter()
                .map(|&(epoch, start_seq)| EpochStart { epoch, start_seq })
                .collect(),
        )
        .expect("valid history")
    }

    #[test]
    fn histories_are_ordered() {
        assert!(
            History::new(vec![
                EpochStart {
                    epoch: 2,
                    start_seq: 1
                },
                EpochStart {
                    epoch: 1,
                    start_seq: 5
                }
            ])
            .is_none()
        );
        assert!(
            History::new(vec![
                EpochStart {
                    epoch: 1,
                    start_seq: 5
                },
                EpochStart {
                    epoch: 2,
                    start_seq: 4
                }
            ])
            .is_none()
        );
        assert!(
            History::new(vec![EpochStart {
                epoch: 1,
                start_seq: 0
            }])
            .is_none()
        );
        let mut x = h(&[(1, 1)]);
        assert!(!x.begin(1, 9) && !x.begin(3, 0) && x.begin(3, 9) && !x.begin(4, 8));
        assert_eq!(
            (x.epoch_of(0), x.epoch_of(1), x.epoch_of(8), x.epoch_of(9)),
            (0, 1, 1, 3)
        );
        // An epoch that wrote nothing: its successor starts at the same seq.
        let y = h(&[(1, 1), (2, 5), (3, 5)]);
        assert_eq!((y.epoch_of(4), y.epoch_of(5)), (1, 3));
    }

    #[test]
    fn the_design_examples() {
        // A replica behind on the same epochs streams.
        assert_eq!(
            h(&[(1, 1)]).compare(30, &h(&[(1, 1), (3, 50)]), 70, 3),
            Catchup::Stream { from: 31 }
        );
        // Epoch 1 went on past where epoch 3 began: 50..60 exist only here.
        assert_eq!(
            h(&[(1, 1)]).compare(60, &h(&[(1, 1), (3, 50)]), 70, 3),
            Catchup::Diverged { at: 50 }
        );
        // Ahead of what the primary said: diverged where it ends, unless
        // that is the epoch the primary is writing (a delayed handshake).
        assert_eq!(
            h(&[(1, 1)]).compare(100, &h(&[(1, 1)]), 90, 0),
            Catchup::Diverged { at: 91 }
        );
        assert_eq!(
            h(&[(1, 1)]).compare(100, &h(&[(1, 1)]), 90, 1),
            Catchup::Stream { from: 101 }
        );
        assert_eq!(
            h(&[(1, 1)]).compare(100, &h(&[(1, 1), (2, 95)]), 96, 2),
            Catchup::Diverged { at: 95 },
            "epoch 1 is not the one being written"
        );
        // An empty replica streams from the start; a log from an unknown
        // epoch diverges at once.
        assert_eq!(
            History::default().compare(0, &h(&[(2, 1)]), 5, 2),
            Catchup::Stream { from: 1 }
        );
        assert_eq!(
            h(&[(1, 1)]).compare(3, &h(&[(2, 1)]), 5, 2),
            Catchup::Diverged { at: 1 }
        );
        // A history entry persisted just before a crash, with no record.
        let mut r = h(&[(1, 1), (4, 11)]);
        let p = h(&[(1, 1), (5, 11)]);
        assert_eq!(r.compare(10, &p, 20, 5), Catchup::Stream { from: 11 });
        r.adopt(&p, 10);
        assert_eq!(r, p);
    }

    /// Logs built from one global set of epochs: epoch `k`'s primary wrote
    /// `starts[k]..=ends[k]`; a node's log follows a chain of epochs, taking
    /// each until the next one's start. Returns the per-seq epochs and the
    /// history.
    fn log_of(
        starts: &[u64],
        ends: &[u64],
        chain: &[usize],
        last: u64,
    ) -> Option<(Vec<u64>, History)> {
        let mut epochs = Vec::new();
        let mut history = History::default();
        for (i, &k) in chain.iter().enumerate() {
            let from = starts[k];
            if from != epochs.len() as u64 + 1 {
                return None; // not a log this chain can produce
            }
            let until = match chain.get(i + 1) {
                Some(&n) => starts[n].checked_sub(1)?,
                None => last,
            };
            if until > ends[k] || until + 1 < from {
                return None;
            }
            if !history.begin(k as u64 + 1, from) {
                return None;
            }
            epochs.extend(std::iter::repeat_n(
                k as u64 + 1,
                (until + 1 - from) as usize,
            ));
        }
        Some((epochs, history))
    }

    proptest! {
        #[test]
        fn compare_agrees_with_a_per_record_comparison(
            lens in proptest::collection::vec(0u64..6, 1..6),
            picks in proptest::collection::vec(any::<bool>(), 12),
            cut in 0u64..40,
            primary_cut in 0u64..40,
        ) {
            // Epoch k starts right after some earlier epoch's end.
            let n = lens.len();
            let mut starts = vec![1u64];
            let mut ends = vec![lens[0]];
            for k in 1..n {
                let base = if picks[k] { ends[k - 1] } else { starts[k - 1].saturating_sub(1) + (ends[k - 1] + 1 - starts[k - 1]) / 2 };
                starts.push(base + 1);
                ends.push(base + lens[k]);
            }
            // Two chains: the primary follows every epoch it can, the
            // replica skips some.
            let all: Vec<usize> = (0..n).collect();
            let some: Vec<usize> = (0..n).filter(|k| *k == 0 || picks[(k + 6) % 12]).collect();
            for (rc, pc) in [(&some, &all), (&all, &some), (&some, &some)] {
                let (Some((re, rh)), Some((pe, ph))) = (
                    (0..=cut).rev().find_map(|l| log_of(&starts, &ends, rc, l)),
                    (0..=primary_cut).rev().find_map(|l| log_of(&starts, &ends, pc, l)),
                ) else { continue };
                let (rl, pl) = (re.len() as u64, pe.len() as u64);
                let first_diff = (0..rl).find(|&i| i >= pl || re[i as usize] != pe[i as usize]);
                let want = match first_diff {
                    None => Catchup::Stream { from: rl + 1 },
                    Some(i) => Catchup::Diverged { at: i + 1 },
                };
                prop_assert_eq!(rh.compare(rl, &ph, pl, 0), want, "replica {:?} primary {:?}", re, pe);
            }
        }
    }
}
