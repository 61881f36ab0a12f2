//! The primary side of one space, as a pure state machine: sessions with
//! each replica, what to send next, and which writes their write concern
//! allows to acknowledge.
//!
//! Rules from the design review that live here:
//! - the quorum is `⌊RF/2⌋ + 1` of the **configured** replication factor,
//!   never of the current set's size; with fewer members than that,
//!   `quorum` and `all` writes fail at once ([`Wait::Insufficient`], rule 4);
//! - the primary counts itself only through what its own WAL synced, and a
//!   replica only through acks of the current session, whose progress is
//!   reset at every handshake (rules 3, 5);
//! - the first record of an epoch is its `EPOCH_START`; `commit_seq` does
//!   not move until that record is on a quorum (rule 6), so nothing of an
//!   earlier epoch is reported committed on the strength of this epoch's
//!   copies alone;
//! - an ack or refusal naming a higher epoch deposes this primary
//!   ([`Deposed`]): every waiting write is then of unknown outcome; so does
//!   `PrimaryRestarted` (its epoch belongs to an earlier process);
//! - refusals and acks count only for the session they name (a delayed one
//!   of an older session changes nothing), and an ack ends the wait for the
//!   batch in flight only if it answers that batch.

use std::collections::BTreeMap;

use super::history::{EpochStart, History};
use super::replica::{Ack, Refusal};

/// When a write may be acknowledged to its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Concern {
    /// Synced on the primary.
    Primary,
    /// Synced on a quorum of the configured replication factor.
    Quorum,
    /// Synced on every member of the replica set.
    All,
}

/// Where a replica's session stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A handshake is needed (none sent, or the last one failed).
    Probe,
    /// A handshake with this nonce is out.
    Handshaking {
        /// Its nonce.
        nonce: u64,
    },
    /// In session: records from `next_seq` on are to be sent, one batch at
    /// a time.
    Streaming {
        /// Session nonce.
        nonce: u64,
        /// Next sequence number to send.
        next_seq: u64,
        /// Last sequence number of the batch in flight, if any.
        inflight: Option<u64>,
    },
    /// The replica diverged or is too far behind: it must install a
    /// snapshot of at least `need`, then handshake again.
    NeedSnapshot {
        /// Smallest acceptable snapshot sequence number.
        need: u64,
    },
}

/// One member of the replica set other than the primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id.
    pub node: String,
    /// Its session.
    pub progress: Progress,
    /// Synced there, as acknowledged in the current session (0 otherwise).
    pub durable_seq: u64,
}

/// The next batch for a replica: which records and the epoch bookkeeping
/// the replica checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// Session nonce.
    pub nonce: u64,
    /// Epoch of record `first - 1`.
    pub prev_epoch: u64,
    /// First sequence number.
    pub first: u64,
    /// Last sequence number.
    pub last: u64,
    /// Epochs starting inside the batch.
    pub epoch_starts: Vec<EpochStart>,
}

/// What a handshake sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakePlan {
    /// Epoch.
    pub epoch: u64,
    /// Fresh nonce for the session.
    pub nonce: u64,
    /// The primary's history.
    pub history: History,
    /// The primary's last sequence number.
    pub last_seq: u64,
}

/// A peer knows of a higher epoch: this primary must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deposed {
    /// The epoch the peer promised.
    pub promised: u64,
}

/// Whether a write can be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Its concern holds.
    Ready,
    /// Not yet.
    Pending,
    /// It cannot hold with this replica set: fewer members than a quorum.
    Insufficient,
}

/// One space on its primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrimarySpace {
    /// This primary's epoch.
    pub epoch: u64,
    /// Which epoch wrote which records here.
    pub history: History,
    /// Last sequence number appended.
    pub last_seq: u64,
    /// Last sequence number synced here.
    pub synced_seq: u64,
    /// The sequence number of this epoch's `EPOCH_START` record.
    pub epoch_start: u64,
    /// The configured replication factor.
    pub replication_factor: usize,
    /// The other members of the replica set.
    pub peers: Vec<Peer>,
    /// Highest sequence number known committed (never decreases).
    pub commit_seq: u64,
    next_nonce: u64,
}

impl PrimarySpace {
    /// A primary that starts `epoch` on a log ending at `last_seq` (all
    /// synced), whose `EPOCH_START` record is `last_seq + 1`: the caller
    /// appends that record next. `nonce_seed` makes session nonces differ
    /// across incarnations.
    pub fn start(
        epoch: u64,
        mut history: History,
        last_seq: u64,
        replication_factor: usize,
        peers: &[&str],
        nonce_seed: u64,
    ) -> Option<PrimarySpace> {
        let epoch_start = last_seq + 1;
        if !history.begin(epoch, epoch_start) {
            return None;
        }
        Some(PrimarySpace {
            epoch,
            history,
            last_seq,
            synced_seq: last_seq,
            epoch_start,
            replication_factor: replication_factor.max(1),
            peers: peers
                .iter()
                .map(|n| Peer {
                    node: (*n).to_owned(),
                    progress: Progress::Probe,
                    durable_seq: 0,
                })
                .collect(),
            commit_seq: 0,
            next_nonce: nonce_seed,
        })
    }

    /// Copies needed for `quorum`: `⌊RF/2⌋ + 1`.
    pub fn quorum(&self) -> usize {
        self.replication_factor / 2 + 1
    }

    /// Assigns the next sequence number to an appended record.
    pub fn append(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// This node's WAL synced through `seq`.
    pub fn synced(&mut self, seq: u64) {
        self.synced_seq = self.synced_seq.max(seq.min(self.last_seq));
        self.advance_commit();
    }

    fn peer_mut(&mut self, node: &str) -> Option<&mut Peer> {
        self.peers.iter_mut().find(|p| p.node == node)
    }

    /// Starts a session with `node`: a fresh nonce, progress reset.
    pub fn handshake(&mut self, node: &str) -> Option<HandshakePlan> {
        self.next_nonce = self.next_nonce.wrapping_add(1);
        let nonce = self.next_nonce;
        let plan = HandshakePlan {
            epoch: self.epoch,
            nonce,
            history: self.history.clone(),
            last_seq: self.last_seq,
        };
        let p = self.peer_mut(node)?;
        p.progress = Progress::Handshaking { nonce };
        p.durable_seq = 0;
        Some(plan)
    }

    /// The replica accepted handshake `nonce` and needs records from
    /// `from` on; `durable` is what it has synced.
    pub fn handshake_ok(&mut self, node: &str, nonce: u64, from: u64, durable: u64) {
        let last_seq = self.last_seq;
        let Some(p) = self.peer_mut(node) else { return };
        if p.progress != (Progress::Handshaking { nonce }) {
            return; // an answer to an older handshake
        }
        let from = from.max(1);
        p.progress = Progress::Streaming {
            nonce,
            next_seq: from,
            inflight: None,
        };
        // Records it holds below `from` are a prefix of ours (the
        // histories said so), durable up to what it reported.
        p.durable_seq = durable.min(from.saturating_sub(1)).min(last_seq);
        self.advance_commit();
    }

    /// The replica refused the handshake or batch of session `nonce` with
    /// `refusal`. A higher promise, or a promise naming another process at
    /// this epoch, deposes this primary whatever the session; any other
    /// refusal counts only for the current session.
    pub fn refused(&mut self, node: &str, nonce: u64, refusal: &Refusal) -> Result<(), Deposed> {
        match refusal {
            Refusal::StaleEpoch { promised } if *promised > self.epoch => {
                return Err(Deposed {
                    promised: *promised,
                });
            }
            Refusal::PrimaryRestarted => {
                return Err(Deposed {
                    promised: self.epoch,
                });
            }
            _ => {}
        }
        let Some(p) = self.peer_mut(node) else {
            return Ok(());
        };
        let current = match &p.progress {
            Progress::Handshaking { nonce } | Progress::Streaming { nonce, .. } => Some(*nonce),
            Progress::Probe | Progress::NeedSnapshot { .. } => None,
        };
        if current != Some(nonce) {
            return Ok(()); // about an older session
        }
        p.durable_seq = 0;
        p.progress = match refusal {
            Refusal::Diverged { at } => Progress::NeedSnapshot {
                need: at.saturating_sub(1),
            },
            _ => Progress::Probe,
        };
        Ok(())
    }

    /// The records `node` needs next are no longer available here (gone
    /// from the recent-records ring and the WAL): it must install a
    /// snapshot of at least `need` before streaming again.
    pub fn needs_snapshot(&mut self, node: &str, need: u64) {
        if let Some(p) = self.peer_mut(node) {
            p.durable_seq = 0;
            p.progress = Progress::NeedSnapshot { need };
        }
    }

    /// `node` installed a snapshot through `seq` (durably): when that is
    /// enough, it handshakes again and streams from `seq + 1`; otherwise
    /// (records it needs were lost meanwhile) it needs another one.
    pub fn snapshot_installed(&mut self, node: &str, seq: u64) {
        let Some(p) = self.peer_mut(node) else { return };
        if let Progress::NeedSnapshot { need } = p.progress {
            if seq >= need {
                p.progress = Progress::Probe;
            }
        }
    }

    /// The next batch for `node`, at most `max_records` long, if it is in
    /// session, has nothing in flight and is behind. Only records synced
    /// here are shipped, so every replica's log is a prefix of this
    /// primary's durable log, also across its restarts (shipping before the
    /// local sync, as the design allows, needs a promotion that fetches what
    /// only replicas hold; that comes with failover).
    pub fn next_batch(&mut self, node: &str, max_records: u64) -> Option<BatchPlan> {
        let last_seq = self.synced_seq;
        let history = self.history.clone();
        let p = self.peer_mut(node)?;
        let Progress::Streaming {
            nonce,
            next_seq,
            inflight,
        } = &mut p.progress
        else {
            return None;
        };
        if inflight.is_some() || *next_seq > last_seq || max_records == 0 {
            return None;
        }
        let first = *next_seq;
        let last = last_seq.min(first.saturating_add(max_records - 1));
        *inflight = Some(last);
        Some(BatchPlan {
            nonce: *nonce,
            prev_epoch: history.epoch_of(first - 1),
            first,
            last,
            epoch_starts: history
                .entries()
                .iter()
                .filter(|e| e.start_seq >= first && e.start_seq <= last)
                .copied()
                .collect(),
        })
    }

    /// An acknowledgement from `node`. Only current-epoch acks of the
    /// current session count; one naming a higher promise deposes.
    pub fn acked(&mut self, node: &str, ack: &Ack) -> Result<(), Deposed> {
        if ack.promised > self.epoch {
            return Err(Deposed {
                promised: ack.promised,
            });
        }
        let epoch = self.epoch;
        let last_seq = self.last_seq;
        let Some(p) = self.peer_mut(node) else {
            return Ok(());
        };
        let Progress::Streaming {
            nonce,
            next_seq,
            inflight,
        } = &mut p.progress
        else {
            return Ok(());
        };
        if ack.nonce != *nonce || ack.promised != epoch {
            return Ok(());
        }
        // Only the answer to the batch in flight ends its wait (a
        // duplicated ack of an earlier batch does not).
        if *inflight == Some(ack.batch_last) {
            *inflight = None;
            *next_seq = (*next_seq).max(ack.batch_last + 1);
        }
        // A replica never syncs what it was not sent.
        p.durable_seq = p.durable_seq.max(ack.durable_seq.min(last_seq));
        self.advance_commit();
        Ok(())
    }

    /// The message to `node` was lost or timed out: resend from what it
    /// acknowledged.
    pub fn timed_out(&mut self, node: &str) {
        if let Some(p) = self.peer_mut(node)
            && let Progress::Streaming {
                next_seq, inflight, ..
            } = &mut p.progress
        {
            *inflight = None;
            *next_seq = (*next_seq).min(p.durable_seq + 1);
        }
    }

    /// Synced copies per member, this primary first.
    fn copies(&self) -> Vec<u64> {
        std::iter::once(self.synced_seq)
            .chain(self.peers.iter().map(|p| p.durable_seq))
            .collect()
    }

    /// The largest seq synced on a quorum, not before this epoch's
    /// `EPOCH_START` is.
    fn advance_commit(&mut self) {
        let mut copies = self.copies();
        let q = self.quorum();
        if copies.len() < q {
            return;
        }
        copies.sort_unstable_by(|a, b| b.cmp(a));
        let on_quorum = copies[q - 1];
        if on_quorum >= self.epoch_start {
            self.commit_seq = self.commit_seq.max(on_quorum);
        }
    }

    /// The largest seq synced on every member.
    pub fn all_seq(&self) -> u64 {
        self.copies().into_iter().min().unwrap_or(0)
    }

    /// Whether write `seq` may be acknowledged under `concern`.
    pub fn wait(&self, seq: u64, concern: Concern) -> Wait {
        let members = 1 + self.peers.len();
        match concern {
            Concern::Primary if self.synced_seq >= seq => Wait::Ready,
            Concern::Primary => Wait::Pending,
            _ if members < self.quorum() => Wait::Insufficient,
            Concern::Quorum if self.commit_seq >= seq => Wait::Ready,
            Concern::All if self.commit_seq >= seq && self.all_seq() >= seq => Wait::Ready,
            _ => Wait::Pending,
        }
    }
}

/// Writes waiting for their concern, by sequence number.
#[derive(Debug)]
pub struct Waiters<T> {
    by_seq: BTreeMap<u64, Vec<(Concern, T)>>,
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Self {
            by_seq: BTreeMap::new(),
        }
    }
}

impl<T> Waiters<T> {
    /// Adds a waiter for `seq`.
    pub fn add(&mut self, seq: u64, concern: Concern, waiter: T) {
        self.by_seq.entry(seq).or_default().push((concern, waiter));
    }

    /// Removes and returns every waiter whose concern now holds (or can
    /// never hold: `Insufficient`), with the verdict.
    pub fn ready(&mut self, space: &PrimarySpace) -> Vec<(u64, Wait, T)> {
        let mut out = Vec::new();
        let seqs: Vec<u64> = self.by_seq.keys().copied().collect();
        for seq in seqs {
            let Some(list) = self.by_seq.remove(&seq) else {
                continue;
            };
            let mut keep = Vec::new();
            for (concern, w) in list {
                match space.wait(seq, concern) {
                    Wait::Pending => keep.push((concern, w)),
                    verdict => out.push((seq, verdict, w)),
                }
            }
            if !keep.is_empty() {
                self.by_seq.insert(seq, keep);
            }
        }
        out
    }

    /// Removes every waiter (the epoch ended: their outcome is unknown).
    pub fn drain(&mut self) -> Vec<(u64, T)> {
        std::mem::take(&mut self.by_seq)
            .into_iter()
            .flat_map(|(seq, list)| list.into_iter().map(move |(_, w)| (seq, w)))
            .collect()
    }

    /// Keeps only the waiters `keep` accepts (drops those that gave up).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.by_seq.retain(|_, list| {
            list.retain(|(_, w)| keep(w));
            !list.is_empty()
        });
    }

    /// Number of waiting writes.
    pub fn len(&self) -> usize {
        self.by_seq.values().map(Vec::len).sum()
    }

    /// `true` when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::replica::{BatchHeader, Incarnation, ReplicaSpace};

    fn primary(rf: usize, peers: &[&str]) -> PrimarySpace {
        PrimarySpace::start(1, History::default(), 0, rf, peers, 100).expect("start")
    }

    /// Runs handshake and batches between `p` and `r` until `r` has synced
    /// everything `p` has.
    fn sync(p: &mut PrimarySpace, node: &str, r: &mut ReplicaSpace) {
        let h = p.handshake(node).expect("peer");
        let primary = Incarnation {
            node: "p".into(),
            incarnation: 1,
        };
        let (from, _) = r
            .handshake(h.epoch, primary, h.nonce, &h.history, h.last_seq)
            .expect("handshake");
        p.handshake_ok(node, h.nonce, from, r.durable_seq);
        while let Some(b) = p.next_batch(node, 2) {
            let header = BatchHeader {
                epoch: p.epoch,
                nonce: b.nonce,
                prev_epoch: b.prev_epoch,
                first_seq: b.first,
                last_seq: b.last,
                epoch_starts: b.epoch_starts.clone(),
            };
            if let Some(a) = r.batch(&header).expect("batch") {
                let last = r.appended(&a).expect("appended");
                r.synced(last);
            }
            let ack = r.ack(p.epoch, b.nonce, b.last).expect("ack");
            p.acked(node, &ack).expect("not deposed");
        }
    }

    #[test]
    fn quorum_counts_synced_copies_of_the_configured_factor() {
        let mut p = primary(3, &["b", "c"]);
        assert_eq!(p.quorum(), 2);
        let start = p.append(); // EPOCH_START
        assert_eq!(start, 1);
        let w = p.append();
        assert_eq!(p.wait(w, Concern::Primary), Wait::Pending, "not synced yet");
        p.synced(w);
        assert_eq!(p.wait(w, Concern::Primary), Wait::Ready);
        assert_eq!(
            p.wait(w, Concern::Quorum),
            Wait::Pending,
            "only the primary has it"
        );
        let mut b = ReplicaSpace::default();
        sync(&mut p, "b", &mut b);
        assert_eq!((b.durable_seq, p.commit_seq), (2, 2));
        assert_eq!(p.wait(w, Concern::Quorum), Wait::Ready);
        assert_eq!(p.wait(w, Concern::All), Wait::Pending, "c has nothing");
        let mut c = ReplicaSpace::default();
        sync(&mut p, "c", &mut c);
        assert_eq!(p.wait(w, Concern::All), Wait::Ready);
    }

    #[test]
    fn too_few_members_fail_quorum_writes_at_once() {
        // RF 3, but only one other member assigned: a quorum of 2 is still
        // possible. Alone, it is not.
        let alone = primary(3, &[]);
        assert_eq!(alone.wait(1, Concern::Quorum), Wait::Insufficient);
        assert_eq!(alone.wait(1, Concern::All), Wait::Insufficient);
        let mut one = primary(1, &[]);
        let s = one.append();
        one.synced(s);
        assert_eq!(
            one.wait(s, Concern::Quorum),
            Wait::Ready,
            "RF 1: the primary is the quorum"
        );
    }

    #[test]
    fn nothing_commits_before_the_epoch_start_is_on_a_quorum() {
        // A new primary at epoch 2 whose log holds 1..=5 of epoch 1.
        let h = History::new(vec![EpochStart {
            epoch: 1,
            start_seq: 1,
        }])
        .expect("history");
        let mut p = PrimarySpace::start(2, h, 5, 3, &["b", "c"], 7).expect("start");
        assert_eq!(p.epoch_start, 6);
        // b already holds 1..=5 of epoch 1 and says so.
        let n = p.handshake("b").expect("peer").nonce;
        p.handshake_ok("b", n, 6, 5);
        assert_eq!(
            p.commit_seq, 0,
            "5 is on two copies, but this epoch has not started on a quorum"
        );
        let s = p.append();
        p.synced(s);
        assert_eq!(p.commit_seq, 0);
        let b = p.next_batch("b", 10).expect("batch");
        assert_eq!((b.first, b.last, b.prev_epoch), (6, 6, 1));
        assert_eq!(
            b.epoch_starts,
            vec![EpochStart {
                epoch: 2,
                start_seq: 6
            }]
        );
        p.acked(
            "b",
            &Ack {
                durable_seq: 6,
                promised: 2,
                nonce: n,
                batch_last: 6,
            },
        )
        .expect("ack");
        assert_eq!(p.commit_seq, 6);
    }

    #[test]
    fn stale_sessions_do_not_count_and_a_higher_epoch_deposes() {
        let mut p = primary(3, &["b", "c"]);
        let s = p.append();
        p.synced(s);
        let old = p.handshake("b").expect("peer").nonce;
        let new = p.handshake("b").expect("peer").nonce;
        p.handshake_ok("b", old, 1, 0);
        assert_eq!(
            p.peers[0].progress,
            Progress::Handshaking { nonce: new },
            "an old answer is ignored"
        );
        p.handshake_ok("b", new, 1, 0);
        let batch = p.next_batch("b", 10).expect("batch");
        p.acked(
            "b",
            &Ack {
                durable_seq: 1,
                promised: 1,
                nonce: old,
                batch_last: 1,
            },
        )
        .expect("ignored");
        assert_eq!(p.commit_seq, 0, "an ack of an older session does not count");
        assert_eq!(
            p.acked(
                "b",
                &Ack {
                    durable_seq: 1,
                    promised: 2,
                    nonce: batch.nonce,
                    batch_last: batch.last,
                }
            ),
            Err(Deposed { promised: 2 })
        );
        assert_eq!(
            p.refused("c", 0, &Refusal::StaleEpoch { promised: 3 }),
            Err(Deposed { promised: 3 })
        );
        assert_eq!(
            p.refused("c", 0, &Refusal::PrimaryRestarted),
            Err(Deposed { promised: 1 }),
            "its epoch belongs to an earlier process"
        );
        // A refusal of another session than c's current one changes nothing.
        let c_nonce = p.handshake("c").expect("peer").nonce;
        assert_eq!(
            p.refused("c", c_nonce + 100, &Refusal::Diverged { at: 4 }),
            Ok(())
        );
        assert_eq!(
            p.peers[1].progress,
            Progress::Handshaking { nonce: c_nonce }
        );
        assert_eq!(
            p.refused("c", c_nonce, &Refusal::Diverged { at: 4 }),
            Ok(())
        );
        assert_eq!(p.peers[1].progress, Progress::NeedSnapshot { need: 3 });
    }

    #[test]
    fn only_the_ack_of_the_batch_in_flight_ends_its_wait() {
        let mut p = primary(3, &["b"]);
        for _ in 0..6 {
            let s = p.append();
            p.synced(s);
        }
        let n = p.handshake("b").expect("peer").nonce;
        p.handshake_ok("b", n, 1, 0);
        let first = p.next_batch("b", 2).expect("batch");
        assert_eq!((first.first, first.last), (1, 2));
        p.acked(
            "b",
            &Ack {
                durable_seq: 2,
                promised: 1,
                nonce: n,
                batch_last: 2,
            },
        )
        .expect("ack");
        let second = p.next_batch("b", 2).expect("batch");
        assert_eq!((second.first, second.last), (3, 4));
        // A duplicate of the first ack arrives: the second batch is still
        // in flight (nothing new is planned), though the copy count holds.
        p.acked(
            "b",
            &Ack {
                durable_seq: 2,
                promised: 1,
                nonce: n,
                batch_last: 2,
            },
        )
        .expect("ack");
        assert_eq!(
            p.next_batch("b", 2),
            None,
            "the second batch is still in flight: 5..=6 must wait"
        );
        assert_eq!(p.peers[0].durable_seq, 2);
    }

    #[test]
    fn waiters_are_released_by_concern() {
        let mut p = primary(3, &["b"]);
        let mut waiters = Waiters::default();
        let start = p.append();
        let w = p.append();
        waiters.add(w, Concern::Primary, "p");
        waiters.add(w, Concern::Quorum, "q");
        waiters.add(w, Concern::All, "a");
        assert!(waiters.ready(&p).is_empty());
        p.synced(w);
        assert_eq!(waiters.ready(&p), vec![(w, Wait::Ready, "p")]);
        let mut b = ReplicaSpace::default();
        sync(&mut p, "b", &mut b);
        assert!(start < w);
        let mut got = waiters.ready(&p);
        got.sort_by_key(|x| x.2);
        assert_eq!(got, vec![(w, Wait::Ready, "a"), (w, Wait::Ready, "q")]);
        assert!(waiters.is_empty());
        waiters.add(9, Concern::Quorum, "late");
        assert_eq!(waiters.drain(), vec![(9, "late")]);
    }

    #[test]
    fn a_member_that_needs_a_snapshot_handshakes_again_after_installing_enough() {
        let mut p = primary(3, &["b", "c"]);
        for _ in 0..5 {
            let s = p.append();
            p.synced(s);
        }
        p.needs_snapshot("b", 5);
        assert_eq!(p.peers[0].progress, Progress::NeedSnapshot { need: 5 });
        assert!(
            p.next_batch("b", 10).is_none(),
            "no batch while it needs one"
        );
        p.snapshot_installed("b", 4);
        assert_eq!(
            p.peers[0].progress,
            Progress::NeedSnapshot { need: 5 },
            "too old a snapshot is not enough"
        );
        p.snapshot_installed("b", 5);
        assert_eq!(p.peers[0].progress, Progress::Probe);
        let mut r = ReplicaSpace::default().installed(
            1,
            Incarnation {
                node: "p".into(),
                incarnation: 1,
            },
            &p.history,
            5,
        );
        sync(&mut p, "b", &mut r);
        assert_eq!(r.durable_seq, 5);
        assert_eq!(p.peers[0].durable_seq, 5);
    }
}
