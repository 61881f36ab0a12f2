//! The replica side of one space, as a pure state machine.
//!
//! A replica accepts records for a space only inside a *session*: the
//! primary of the epoch it promised last, identified by node and process
//! incarnation, after a handshake that compared their epoch histories.
//! Every refusal is typed ([`Refusal`]) and changes nothing (invariant 7).
//! What must be durable before an answer is returned as [`Persist`] work:
//! the adapter writes it (synced) and only then sends the answer.
//!
//! Rules from the design review that live here:
//! - a handshake at the promised epoch from another process than the one
//!   the promise names is refused (a restarted primary needs a new epoch:
//!   rule 1); the promised process is persisted with the promise, so this
//!   holds across the replica's restarts and after a fence;
//! - a fence persists the higher promise and ends the session, and the
//!   adapter runs batches under the per-space lock in read mode and
//!   handshakes and fences in write mode, so no batch of the old epoch is
//!   appended or acknowledged after a new promise or session (rule 2);
//!   [`ReplicaSpace::appended`] re-checks the session anyway, and the ack
//!   carries the promise it was built under and [`ReplicaSpace::ack`]
//!   refuses to build an `OK` once the promise moved;
//! - durable means synced: acks and fence answers report `durable_seq`,
//!   never records only appended (rule 3).

use super::history::{Catchup, EpochStart, History};

/// A primary process: node name and a random number drawn at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    /// Node id.
    pub node: String,
    /// Drawn at process start; differs after every restart.
    pub incarnation: u64,
}

/// The session a replica accepts batches in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Its epoch.
    pub epoch: u64,
    /// The primary process.
    pub primary: Incarnation,
    /// Chosen by the primary per handshake; every batch and ack carries it.
    pub nonce: u64,
}

/// Why a replica refused a message. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The message's epoch is below the one this replica promised.
    StaleEpoch {
        /// The promise.
        promised: u64,
    },
    /// A handshake at the promised epoch from another incarnation of its
    /// primary: a restarted primary must take a new epoch.
    PrimaryRestarted,
    /// No session for this epoch, primary and nonce: handshake first.
    NeedHandshake,
    /// The batch does not continue this replica's log.
    NotContiguous {
        /// The sequence number expected next.
        expected: u64,
    },
    /// This replica holds records the primary does not have from `at` on:
    /// it needs a snapshot of at least `at - 1`.
    Diverged {
        /// First differing sequence number.
        at: u64,
    },
}

/// Durable work an answer waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// The promise, the process it names and the history (one synced
    /// metadata write).
    Promise {
        /// Promised epoch.
        epoch: u64,
        /// The primary (or fencing candidate) the promise is for.
        to: Incarnation,
        /// History after the change.
        history: History,
    },
    /// Append records `first..=last` (after `skip` leading duplicates of the
    /// batch) and sync them; new history entries first. Hand it back to
    /// [`ReplicaSpace::appended`], which refuses it if a handshake or fence
    /// came in between.
    Append {
        /// The batch's epoch.
        epoch: u64,
        /// The batch's session nonce.
        nonce: u64,
        /// Leading records of the batch already held here.
        skip: u64,
        /// First new sequence number.
        first: u64,
        /// Last sequence number.
        last: u64,
        /// History entries the batch starts (persisted before the records).
        starts: Vec<EpochStart>,
    },
}

/// What the replica answers a fence with (after persisting the promise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceAnswer {
    /// The new promise.
    pub promised: u64,
    /// Everything synced here.
    pub durable_seq: u64,
    /// The history of that log.
    pub history: History,
}

/// A batch header as the replica checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchHeader {
    /// Sender's epoch.
    pub epoch: u64,
    /// Session nonce.
    pub nonce: u64,
    /// Epoch of record `first_seq - 1` (0 when `first_seq` is 1).
    pub prev_epoch: u64,
    /// First sequence number.
    pub first_seq: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Epochs starting inside the batch.
    pub epoch_starts: Vec<EpochStart>,
}

/// An acknowledgement for the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Synced through this sequence number.
    pub durable_seq: u64,
    /// The promise this ack was built under.
    pub promised: u64,
    /// The session it belongs to.
    pub nonce: u64,
    /// Last sequence number of the batch it answers: a duplicated old ack
    /// must not end the wait for the batch in flight.
    pub batch_last: u64,
}

/// One space on a replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaSpace {
    /// Highest epoch promised (persisted).
    pub promised: u64,
    /// The process that promise is for (persisted with it): only it may
    /// handshake at `promised`.
    pub promised_to: Option<Incarnation>,
    /// Which epoch wrote which records here (persisted with them).
    pub history: History,
    /// Last sequence number appended (synced or not).
    pub last_seq: u64,
    /// Last sequence number synced.
    pub durable_seq: u64,
    /// The current session, if any (in memory only: lost on restart).
    pub session: Option<Session>,
}

impl ReplicaSpace {
    /// The state after a restart: what was synced survives, the session
    /// does not, and records appended but not synced are gone.
    pub fn restarted(&self) -> ReplicaSpace {
        ReplicaSpace {
            promised: self.promised,
            promised_to: self.promised_to.clone(),
            // Entries are synced before their records, so a crash can leave
            // one whose records are gone; comparisons ignore an epoch with
            // no record here, and the next handshake's adopt drops it.
            history: self.history.clone(),
            last_seq: self.durable_seq,
            durable_seq: self.durable_seq,
            session: None,
        }
    }

    /// A handshake from `primary` at `epoch` with its history and last
    /// sequence number. On success the session starts and the answer is
    /// where to stream from; the promise (and adopted history) must be
    /// persisted before answering.
    pub fn handshake(
        &mut self,
        epoch: u64,
        primary: Incarnation,
        nonce: u64,
        primary_history: &History,
        primary_last: u64,
    ) -> Result<(u64, Persist), Refusal> {
        if epoch < self.promised {
            return Err(Refusal::StaleEpoch {
                promised: self.promised,
            });
        }
        if epoch == self.promised && self.promised_to.as_ref().is_some_and(|p| *p != primary) {
            return Err(Refusal::PrimaryRestarted);
        }
        match self
            .history
            .compare(self.last_seq, primary_history, primary_last, epoch)
        {
            // Like every refusal, this changes nothing: the replica asks
            // for a snapshot, whose install records the promise.
            Catchup::Diverged { at } => Err(Refusal::Diverged { at }),
            Catchup::Stream { from } => {
                self.promised = epoch;
                self.promised_to = Some(primary.clone());
                self.history.adopt(primary_history, self.last_seq);
                self.session = Some(Session {
                    epoch,
                    primary: primary.clone(),
                    nonce,
                });
                Ok((
                    from,
                    Persist::Promise {
                        epoch,
                        to: primary,
                        history: self.history.clone(),
                    },
                ))
            }
        }
    }

    /// Checks a batch. `Ok(None)`: every record is already here (answer
    /// with [`ReplicaSpace::ack`]); `Ok(Some(Append))`: append and sync, then
    /// [`ReplicaSpace::appended`] and [`ReplicaSpace::synced`], then ack.
    pub fn batch(&mut self, b: &BatchHeader) -> Result<Option<Persist>, Refusal> {
        if b.epoch < self.promised {
            return Err(Refusal::StaleEpoch {
                promised: self.promised,
            });
        }
        let in_session = self
            .session
            .as_ref()
            .is_some_and(|s| s.epoch == b.epoch && s.nonce == b.nonce);
        if b.epoch > self.promised || !in_session {
            return Err(Refusal::NeedHandshake);
        }
        if b.first_seq == 0 || b.last_seq < b.first_seq {
            return Err(Refusal::NotContiguous {
                expected: self.last_seq + 1,
            });
        }
        if b.last_seq <= self.last_seq {
            return Ok(None); // a duplicate: nothing new
        }
        if b.first_seq > self.last_seq + 1 || self.history.epoch_of(b.first_seq - 1) != b.prev_epoch
        {
            return Err(Refusal::NotContiguous {
                expected: self.last_seq + 1,
            });
        }
        let first = self.last_seq + 1;
        // Entries this history has already (the handshake adopted the start
        // of the primary's epoch) are not new.
        let starts: Vec<EpochStart> = b
            .epoch_starts
            .iter()
            .filter(|e| e.start_seq >= first && e.start_seq <= b.last_seq)
            .filter(|e| !self.history.entries().contains(e))
            .copied()
            .collect();
        Ok(Some(Persist::Append {
            epoch: b.epoch,
            nonce: b.nonce,
            skip: first - b.first_seq,
            first,
            last: b.last_seq,
            starts,
        }))
    }

    /// The records and history entries of `append` (from
    /// [`ReplicaSpace::batch`]) were written, not yet synced; returns the
    /// new last sequence number. Refused, changing nothing, when the
    /// session, the promise or the log moved since the batch was checked,
    /// or an entry does not extend the history: the caller must then not
    /// have written them (it runs this before writing, under its lock).
    pub fn appended(&mut self, append: &Persist) -> Result<u64, Refusal> {
        let Persist::Append {
            epoch,
            nonce,
            first,
            last,
            starts,
            ..
        } = append
        else {
            return Err(Refusal::NeedHandshake);
        };
        let in_session = self
            .session
            .as_ref()
            .is_some_and(|s| s.epoch == *epoch && s.nonce == *nonce);
        if self.promised != *epoch || !in_session {
            return Err(Refusal::StaleEpoch {
                promised: self.promised,
            });
        }
        if *first != self.last_seq + 1 || last < first {
            return Err(Refusal::NotContiguous {
                expected: self.last_seq + 1,
            });
        }
        let mut history = self.history.clone();
        for e in starts {
            if !history.begin(e.epoch, e.start_seq) {
                return Err(Refusal::NotContiguous {
                    expected: self.last_seq + 1,
                });
            }
        }
        self.history = history;
        self.last_seq = *last;
        Ok(*last)
    }

    /// The WAL synced through `seq`.
    pub fn synced(&mut self, seq: u64) {
        self.durable_seq = self.durable_seq.max(seq.min(self.last_seq));
    }

    /// The acknowledgement for the batch ending at `batch_last` of session
    /// `nonce` at `epoch`: `OK` with what is synced, unless the promise
    /// moved meanwhile (then the stale-epoch refusal, never an `OK`).
    pub fn ack(&self, epoch: u64, nonce: u64, batch_last: u64) -> Result<Ack, Refusal> {
        if self.promised != epoch || self.session.as_ref().is_none_or(|s| s.nonce != nonce) {
            return Err(Refusal::StaleEpoch {
                promised: self.promised,
            });
        }
        Ok(Ack {
            durable_seq: self.durable_seq,
            promised: self.promised,
            nonce,
            batch_last,
        })
    }

    /// Whether `primary` may install a snapshot at `epoch`: the same
    /// checks as a handshake's promise. Nothing changes here.
    pub fn check_install(&self, epoch: u64, primary: &Incarnation) -> Result<(), Refusal> {
        if epoch < self.promised {
            return Err(Refusal::StaleEpoch {
                promised: self.promised,
            });
        }
        if epoch == self.promised && self.promised_to.as_ref().is_some_and(|p| p != primary) {
            return Err(Refusal::PrimaryRestarted);
        }
        Ok(())
    }

    /// The state after a snapshot of `primary`'s log through `seq` (with
    /// its `history`) was installed durably, together with the promise of
    /// `epoch`: the copy holds exactly records `1..=seq`, and no session.
    /// The caller checked [`ReplicaSpace::check_install`] and persisted
    /// the returned state with the copy.
    pub fn installed(
        &self,
        epoch: u64,
        primary: Incarnation,
        history: &History,
        seq: u64,
    ) -> ReplicaSpace {
        let mut adopted = History::default();
        adopted.adopt(history, seq);
        ReplicaSpace {
            promised: epoch,
            promised_to: Some(primary),
            history: adopted,
            last_seq: seq,
            durable_seq: seq,
            session: None,
        }
    }

    /// A fence for `epoch` by `candidate`, a promoting primary: persist the
    /// promise (naming it), end the session, report what is synced. The
    /// same fence again (a lost answer) is answered again.
    pub fn fence(
        &mut self,
        epoch: u64,
        candidate: Incarnation,
    ) -> Result<(FenceAnswer, Persist), Refusal> {
        let repeated = epoch == self.promised && self.promised_to.as_ref() == Some(&candidate);
        if epoch < self.promised || (epoch == self.promised && !repeated) {
            return Err(Refusal::StaleEpoch {
                promised: self.promised,
            });
        }
        self.promised = epoch;
        self.promised_to = Some(candidate.clone());
        self.session = None;
        let answer = FenceAnswer {
            promised: epoch,
            durable_seq: self.durable_seq,
            history: self.history.clone(),
        };
        Ok((
            answer,
            Persist::Promise {
                epoch,
                to: candidate,
                history: self.history.clone(),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(node: &str, inc: u64) -> Incarnation {
        Incarnation {
            node: node.into(),
            incarnation: inc,
        }
    }

    fn hist(entries: &[(u64, u64)]) -> History {
        History::new(
            entries
                .iter()
                .map(|&(epoch, start_seq)| EpochStart { epoch, start_seq })
                .collect(),
        )
        .expect("history")
    }

    fn header(epoch: u64, nonce: u64, prev: u64, first: u64, last: u64) -> BatchHeader {
        BatchHeader {
            epoch,
            nonce,
            prev_epoch: prev,
            first_seq: first,
            last_seq: last,
            epoch_starts: Vec::new(),
        }
    }

    /// A replica in session with a at epoch 1, holding 1..=n synced.
    fn in_session(n: u64) -> ReplicaSpace {
        let mut r = ReplicaSpace::default();
        let h = hist(&[(1, 1)]);
        r.handshake(1, p("a", 7), 42, &h, 0).expect("handshake");
        if n > 0 {
            let mut b = header(1, 42, 0, 1, n);
            b.epoch_starts = vec![EpochStart {
                epoch: 1,
                start_seq: 1,
            }];
            let a = r.batch(&b).expect("batch").expect("append");
            assert!(matches!(a, Persist::Append { first: 1, last, .. } if last == n));
            let last = r.appended(&a).expect("appended");
            r.synced(last);
        }
        r
    }

    #[test]
    fn batches_append_in_order_and_duplicates_are_acked_again() {
        let mut r = in_session(3);
        assert_eq!(
            r.ack(1, 42, 3),
            Ok(Ack {
                durable_seq: 3,
                promised: 1,
                nonce: 42,
                batch_last: 3,
            })
        );
        assert_eq!(r.batch(&header(1, 42, 1, 2, 3)), Ok(None), "a duplicate");
        // Overlap: the known prefix is skipped.
        assert_eq!(
            r.batch(&header(1, 42, 1, 3, 5)),
            Ok(Some(Persist::Append {
                epoch: 1,
                nonce: 42,
                skip: 1,
                first: 4,
                last: 5,
                starts: Vec::new()
            }))
        );
        // A gap, a wrong previous epoch.
        assert_eq!(
            r.batch(&header(1, 42, 1, 5, 6)),
            Err(Refusal::NotContiguous { expected: 4 })
        );
        assert_eq!(
            r.batch(&header(1, 42, 9, 4, 6)),
            Err(Refusal::NotContiguous { expected: 4 })
        );
        assert_eq!(
            r.batch(&header(1, 42, 1, 0, 6)),
            Err(Refusal::NotContiguous { expected: 4 })
        );
        // Another nonce or a higher epoch: handshake first.
        assert_eq!(
            r.batch(&header(1, 43, 1, 4, 6)),
            Err(Refusal::NeedHandshake)
        );
        assert_eq!(
            r.batch(&header(2, 42, 1, 4, 6)),
            Err(Refusal::NeedHandshake)
        );
        assert_eq!(r, in_session(3), "refusals change nothing");
    }

    #[test]
    fn a_fence_ends_the_session_and_no_old_batch_is_acked_after_it() {
        let mut r = in_session(3);
        // A batch of epoch 1 was checked; before its ack is built, a fence
        // for epoch 2 is answered (the adapter's lock forbids this order;
        // the ack refuses anyway).
        let a = r
            .batch(&header(1, 42, 1, 4, 4))
            .expect("batch")
            .expect("append");
        let last = r.appended(&a).expect("appended");
        r.synced(last);
        let (answer, persist) = r.fence(2, p("b", 1)).expect("fence");
        assert_eq!((answer.promised, answer.durable_seq), (2, 4));
        assert_eq!(
            persist,
            Persist::Promise {
                epoch: 2,
                to: p("b", 1),
                history: hist(&[(1, 1)])
            }
        );
        assert_eq!(r.ack(1, 42, 4), Err(Refusal::StaleEpoch { promised: 2 }));
        assert_eq!(
            r.batch(&header(1, 42, 1, 5, 5)),
            Err(Refusal::StaleEpoch { promised: 2 })
        );
        // The same fence again (its answer was lost) is answered again; a
        // fence for the same epoch by another candidate is refused.
        assert_eq!(r.fence(2, p("b", 1)).map(|x| x.0), Ok(answer));
        assert_eq!(
            r.fence(2, p("c", 1)).map(|x| x.0),
            Err(Refusal::StaleEpoch { promised: 2 })
        );
        // Only the candidate the promise names may handshake at epoch 2,
        // also after this replica restarts.
        assert_eq!(
            r.restarted()
                .handshake(2, p("c", 1), 5, &hist(&[(1, 1), (2, 5)]), 4),
            Err(Refusal::PrimaryRestarted)
        );
        assert!(
            r.restarted()
                .handshake(2, p("b", 1), 5, &hist(&[(1, 1), (2, 5)]), 4)
                .is_ok()
        );
        assert!(matches!(
            r.handshake(1, p("a", 7), 42, &hist(&[(1, 1)]), 9),
            Err(Refusal::StaleEpoch { promised: 2 })
        ));
    }

    #[test]
    fn a_batch_checked_before_a_handshake_is_not_appended_after_it() {
        let mut r = in_session(10);
        let a = r
            .batch(&header(1, 42, 1, 11, 15))
            .expect("batch")
            .expect("append");
        // A new primary's handshake gets in between (the adapter's lock
        // forbids it; the state machine refuses anyway).
        let h = hist(&[(1, 1), (2, 11)]);
        r.handshake(2, p("b", 1), 99, &h, 11).expect("handshake");
        let before = r.clone();
        assert_eq!(r.appended(&a), Err(Refusal::StaleEpoch { promised: 2 }));
        assert_eq!(r, before, "a refusal changes nothing");
        // The new primary's first batch starts its epoch at 11: the entry
        // adopted at the handshake is not new, the record is.
        let mut b = header(2, 99, 1, 11, 11);
        b.epoch_starts = vec![EpochStart {
            epoch: 2,
            start_seq: 11,
        }];
        let a = r.batch(&b).expect("batch").expect("append");
        assert!(matches!(&a, Persist::Append { starts, .. } if starts.is_empty()));
        assert_eq!(r.appended(&a), Ok(11));
        assert_eq!((r.history.epoch_of(10), r.history.epoch_of(11)), (1, 2));
    }

    #[test]
    fn a_restarted_primary_cannot_resume_its_epoch() {
        let mut r = in_session(3);
        assert_eq!(
            r.handshake(1, p("a", 8), 50, &hist(&[(1, 1)]), 3),
            Err(Refusal::PrimaryRestarted)
        );
        // The same process may handshake again (a lost connection).
        assert!(r.handshake(1, p("a", 7), 51, &hist(&[(1, 1)]), 3).is_ok());
        // After the replica restarts the session is gone, but the promise
        // names the process: still refused; a new epoch is accepted.
        let mut again = r.restarted();
        assert!(again.session.is_none());
        assert_eq!(
            again.handshake(1, p("a", 8), 52, &hist(&[(1, 1)]), 3),
            Err(Refusal::PrimaryRestarted)
        );
        assert!(
            again
                .handshake(2, p("a", 8), 60, &hist(&[(1, 1), (2, 4)]), 4)
                .is_ok()
        );
    }

    #[test]
    fn a_restart_loses_what_was_not_synced_and_a_diverged_log_is_refused() {
        let mut r = in_session(3);
        let a = r
            .batch(&header(1, 42, 1, 4, 6))
            .expect("batch")
            .expect("append");
        r.appended(&a).expect("appended");
        assert_eq!((r.last_seq, r.durable_seq), (6, 3));
        assert_eq!(
            r.ack(1, 42, 6).map(|a| a.durable_seq),
            Ok(3),
            "only synced records are acked"
        );
        let mut r = r.restarted();
        assert_eq!((r.last_seq, r.durable_seq), (3, 3));
        // A new primary at epoch 2 started at 3: this replica's record 3
        // (epoch 1) is not the primary's.
        assert_eq!(
            r.handshake(2, p("b", 1), 9, &hist(&[(1, 1), (2, 3)]), 8),
            Err(Refusal::Diverged { at: 3 })
        );
        assert_eq!(
            (r.promised, r.last_seq),
            (1, 3),
            "a refusal changes nothing"
        );
    }

    #[test]
    fn a_snapshot_install_takes_the_promise_and_the_next_handshake_streams_after_it() {
        let r = ReplicaSpace::default();
        let h = hist(&[(1, 1), (3, 40)]);
        assert_eq!(r.check_install(3, &p("a", 7)), Ok(()));
        let r = r.installed(3, p("a", 7), &h, 50);
        assert_eq!((r.promised, r.last_seq, r.durable_seq), (3, 50, 50));
        assert_eq!(r.history, h);
        // A stale primary, or another process at the promised epoch, may
        // not install over it.
        assert_eq!(
            r.check_install(2, &p("b", 1)),
            Err(Refusal::StaleEpoch { promised: 3 })
        );
        assert_eq!(
            r.check_install(3, &p("a", 8)),
            Err(Refusal::PrimaryRestarted)
        );
        let mut r = r;
        let (from, _) = r.handshake(3, p("a", 7), 5, &h, 70).expect("handshake");
        assert_eq!(from, 51);
        // An epoch that starts after the snapshot is not in its history.
        let later = hist(&[(1, 1), (3, 40), (4, 60)]);
        let r = ReplicaSpace::default().installed(4, p("c", 1), &later, 50);
        assert_eq!(r.history, h);
    }
}
