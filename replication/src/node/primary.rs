//! Leading a space: the [`PrimarySpace`] core fed from the engine's
//! records, one shipper task per other member, and the write-concern waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use engram_graph::{GraphError, SpaceOptions};
use engram_lsm::SpaceId;
use tokio::sync::{Notify, oneshot};

use super::proto;
use super::{
    Assignment, Inner, ReplicaStatus, ReplicationError, Role, lock, read, wal_tail, write,
};
use crate::Record;
use crate::codec::Batch;
use crate::protocol::{
    Ack, Concern, EpochStart, History, Incarnation, PrimarySpace, Progress, Refusal, Wait, Waiters,
};
use crate::state::SpaceReplicaState;

/// What a member's shipper last saw.
#[derive(Debug, Clone, Default)]
struct PeerSeen {
    /// Highest sequence number it acknowledged durable in this primary's
    /// life (kept across sessions; the ring keeps what it lacks).
    floor: u64,
    last_ack: Option<Instant>,
    /// Why shipping to it is stuck, if it is.
    stalled: Option<String>,
    /// Since when it has been catching up (a session started behind).
    behind_since: Option<Instant>,
}

struct Led {
    core: PrimarySpace,
    waiters: Waiters<oneshot::Sender<Wait>>,
    seen: HashMap<String, PeerSeen>,
    /// When each record not yet on every member was appended here.
    appended_at: std::collections::VecDeque<(u64, Instant)>,
}

/// A space this node leads.
pub(crate) struct PrimaryRole {
    pub(crate) uid: u64,
    pub(crate) name: String,
    pub(crate) local: SpaceId,
    pub(crate) epoch: u64,
    led: Mutex<Led>,
    stopped: AtomicBool,
    /// A peer refused with a higher promise: stop taking writes.
    deposed: AtomicBool,
    wakers: Vec<Arc<Notify>>,
    last_refresh_lsn: AtomicU64,
    /// Keeps the WAL from the oldest record a member may still need.
    wal_pin: Mutex<Option<engram_wal::Pin>>,
}

impl std::fmt::Debug for PrimaryRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryRole")
            .field("name", &self.name)
            .field("uid", &self.uid)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl PrimaryRole {
    pub(crate) fn deposed(&self) -> bool {
        self.deposed.load(Ordering::SeqCst) || self.stopped.load(Ordering::SeqCst)
    }

    /// Whether a member in session still lacks records synced here.
    pub(crate) fn owes(&self, inner: &Inner) -> bool {
        self.refresh(inner);
        let led = lock(&self.led);
        led.core.peers.iter().any(|p| {
            matches!(p.progress, Progress::Streaming { .. }) && p.durable_seq < led.core.synced_seq
        })
    }

    /// Notes why shipping to `peer` is stuck (`None`: it is not).
    pub(crate) fn set_stalled(&self, peer: &str, why: Option<String>) {
        lock(&self.led)
            .seen
            .entry(peer.to_owned())
            .or_default()
            .stalled = why;
    }

    /// This primary's epoch history.
    pub(crate) fn history(&self) -> History {
        lock(&self.led).core.history.clone()
    }

    /// A member promised a higher epoch: stop taking writes.
    pub(crate) fn depose(&self, promised: u64) {
        depose(self, promised);
    }

    /// `peer` installed a snapshot through `seq`.
    pub(crate) fn snapshot_installed(&self, peer: &str, seq: u64) {
        let mut led = lock(&self.led);
        led.core.snapshot_installed(peer, seq);
        let seen = led.seen.entry(peer.to_owned()).or_default();
        seen.floor = seq;
        seen.stalled = None;
    }

    /// `Insufficient` when the replica set is smaller than a quorum.
    pub(crate) fn check_members(&self) -> Result<(), ReplicationError> {
        let led = lock(&self.led);
        let members = 1 + led.core.peers.len();
        if members < led.core.quorum() {
            return Err(ReplicationError::Insufficient {
                space: self.name.clone(),
                members,
                quorum: led.core.quorum(),
            });
        }
        Ok(())
    }

    pub(crate) fn stop(&self, inner: &Inner) {
        self.stopped.store(true, Ordering::SeqCst);
        inner.feed.drop_space(self.local);
        *lock(&self.wal_pin) = None;
        for w in &self.wakers {
            w.notify_one();
            inner.feed.remove_waker(w);
        }
        let drained = lock(&self.led).waiters.drain();
        for (_, tx) in drained {
            drop(tx); // the waiter sees its outcome unknown
        }
    }

    /// Moves the records the engine appended since the last call into the
    /// core, marks those the WAL synced, and answers the waiters whose
    /// concern now holds.
    fn refresh(&self, inner: &Inner) {
        let durable = inner.feed.durable_lsn();
        let mut led = lock(&self.led);
        loop {
            let after = led.core.last_seq;
            let records = inner.feed.after(self.local, after, 4096);
            if records.is_empty() {
                break;
            }
            let now = Instant::now();
            for r in records {
                // Records the ring dropped before they were counted here
                // (it was full): they are in the log, and counted, but can
                // no longer be shipped from the ring.
                while led.core.last_seq + 1 < r.seq {
                    let seq = led.core.append();
                    led.appended_at.push_back((seq, now));
                }
                if r.seq != led.core.last_seq + 1 {
                    break;
                }
                led.core.append();
                led.appended_at.push_back((r.seq, now));
            }
            if led.core.last_seq == after {
                break;
            }
        }
        // The ring says which LSN each record has: synced through the
        // last record at or below the durable LSN.
        let synced = inner
            .feed
            .after(self.local, led.core.synced_seq, usize::MAX)
            .into_iter()
            .take_while(|r| r.lsn <= durable && r.seq <= led.core.last_seq)
            .last()
            .map(|r| r.seq);
        if let Some(s) = synced {
            led.core.synced(s);
        }
        self.last_refresh_lsn.store(durable, Ordering::Relaxed);
        answer_waiters(&mut led);
        if led.core.peers.is_empty() {
            // No copy to ship to: the ring keeps nothing.
            let synced = led.core.synced_seq;
            led.appended_at.clear();
            drop(led);
            inner.feed.trim(self.local, synced);
        } else {
            drop(led);
        }
        self.pin_wal(inner);
    }

    /// Moves the WAL pin to the oldest record a member may still need
    /// (none: no pin). Retention never depends on it for correctness: a
    /// record the WAL lost is sent in a snapshot instead.
    fn pin_wal(&self, inner: &Inner) {
        let oldest = inner.feed.oldest_lsn(self.local);
        let mut pin = lock(&self.wal_pin);
        match (oldest, pin.as_ref().map(engram_wal::Pin::lsn)) {
            (Some(lsn), Some(held)) if lsn == held => {}
            (Some(lsn), _) => *pin = Some(inner.graph.engine().wal().pin(lsn)),
            (None, _) => *pin = None,
        }
    }
}

fn answer_waiters(led: &mut Led) {
    let Led { core, waiters, .. } = led;
    // Writers that gave up (timed out) wait no more.
    waiters.retain(|tx| !tx.is_closed());
    for (_, verdict, tx) in waiters.ready(core) {
        let _ = tx.send(verdict);
    }
}

/// Creates the space here if needed and starts leading it; or notes that
/// another node leads it.
pub(crate) async fn apply_assignment(
    inner: &Arc<Inner>,
    a: &Assignment,
) -> Result<(), ReplicationError> {
    let me = inner.node.as_str();
    if a.primary != me {
        if let Some(p) = lock(&inner.primaries).remove(&a.uid) {
            tracing::info!(space = %a.name, epoch = a.epoch, primary = %a.primary, "no longer the primary of this space");
            p.stop(inner);
            inner.feed.untrack(p.local);
            write(&inner.roles.by_local).insert(
                p.local,
                Role::Replica {
                    uid: a.uid,
                    primary: Some(a.primary.clone()),
                },
            );
        }
        if let Some(local) = inner.local_of(a.uid) {
            write(&inner.roles.by_local).insert(
                local,
                Role::Replica {
                    uid: a.uid,
                    primary: Some(a.primary.clone()),
                },
            );
        }
        return Ok(());
    }
    if let Some(p) = lock(&inner.primaries).get(&a.uid) {
        if p.epoch == a.epoch {
            return Ok(());
        }
    }
    // Lead it: create it here first if this node holds no copy.
    let graph = inner.graph.clone();
    let mut created_now = false;
    let local = match inner.local_of(a.uid) {
        Some(local) => local,
        None => {
            let name = a.name.clone();
            let options = SpaceOptions {
                embedding_dim: a.embedding_dim,
                hot_capacity: a.hot_capacity,
            };
            let g = graph.clone();
            // A space of that name already here (from before this node
            // joined, or a restored backup) is adopted: its records stay,
            // and a new epoch starts after them.
            let (local, created) =
                tokio::task::spawn_blocking(move || match g.create_space_with(&name, options) {
                    Ok(()) => g.space_id(&name).map(|id| (id, true)),
                    Err(GraphError::SpaceExists(_)) => g.space_id(&name).map(|id| (id, false)),
                    Err(e) => Err(e),
                })
                .await
                .map_err(|e| ReplicationError::Storage(e.to_string()))??;
            created_now = created;
            local
        }
    };
    // What this node holds of the space, and its history.
    let store_state = {
        let g = graph.clone();
        tokio::task::spawn_blocking(move || g.engine().store().replica_state(local))
            .await
            .map_err(|e| ReplicationError::Storage(e.to_string()))?
            .map_err(|e| ReplicationError::Storage(e.to_string()))?
    };
    let previous = match store_state {
        Some(bytes) => Some(
            SpaceReplicaState::decode(&bytes)
                .map_err(|e| ReplicationError::Storage(e.to_string()))?,
        ),
        None => None,
    };
    let history = previous
        .as_ref()
        .map(|s| s.history.clone())
        .unwrap_or_default();
    let last_seq = graph.engine().next_seq(local).saturating_sub(1);
    if previous.as_ref().is_some_and(|s| s.promised >= a.epoch)
        && previous
            .as_ref()
            .and_then(|s| s.promised_to.as_ref())
            .is_some_and(|p| p.incarnation != inner.incarnation || p.node != inner.node)
    {
        // Epochs are single-use: this process may not lead an epoch that an
        // earlier process (or another node) was promised.
        lock(&inner.stale_epochs).insert(a.uid, a.epoch);
        return Err(ReplicationError::Storage(format!(
            "epoch {} of this space was promised to an earlier process; it needs a new epoch",
            a.epoch
        )));
    }
    // A new epoch starts with a record of its own (the space's creation
    // is epoch 1's); the core is started before it so it counts it.
    let needs_start_record = !created_now;
    let peers: Vec<&str> = a
        .replicas
        .iter()
        .map(String::as_str)
        .filter(|n| *n != inner.node)
        .collect();
    let rf = inner.replication_factor.load(Ordering::SeqCst);
    let start_last = if needs_start_record { last_seq } else { 0 };
    let Some(core) = PrimarySpace::start(
        a.epoch,
        history,
        start_last,
        rf,
        &peers,
        inner.incarnation.rotate_left(17) ^ a.uid,
    ) else {
        return Err(ReplicationError::Storage(format!(
            "epoch {} does not extend this node's history of the space",
            a.epoch
        )));
    };
    let state = SpaceReplicaState {
        uid: a.uid,
        name: a.name.clone(),
        promised: a.epoch,
        promised_to: Some(Incarnation {
            node: inner.node.clone(),
            incarnation: inner.incarnation,
        }),
        history: core.history.clone(),
    };
    persist(inner, local, &state).await?;
    lock(&inner.stale_epochs).remove(&a.uid);
    write(&inner.uids).insert(a.uid, local);
    inner.feed.track(local);
    let wakers: Vec<Arc<Notify>> = peers.iter().map(|_| Arc::new(Notify::new())).collect();
    let role = Arc::new(PrimaryRole {
        uid: a.uid,
        name: a.name.clone(),
        local,
        epoch: a.epoch,
        led: Mutex::new(Led {
            core,
            waiters: Waiters::default(),
            seen: peers
                .iter()
                .map(|p| ((*p).to_owned(), PeerSeen::default()))
                .collect(),
            appended_at: Default::default(),
        }),
        stopped: AtomicBool::new(false),
        deposed: AtomicBool::new(false),
        wakers: wakers.clone(),
        last_refresh_lsn: AtomicU64::new(0),
        wal_pin: Mutex::new(None),
    });
    if let Some(old) = lock(&inner.primaries).insert(a.uid, role.clone()) {
        old.stop(inner);
    }
    write(&inner.roles.by_local).insert(local, Role::Primary(role.clone()));
    if needs_start_record {
        let g = graph.clone();
        let started = tokio::task::spawn_blocking(move || g.write_epoch_start(local))
            .await
            .map_err(|e| ReplicationError::Storage(e.to_string()))
            .and_then(|r| r.map_err(ReplicationError::from));
        if let Err(e) = started {
            // Not leading after all: the next pass tries again.
            lock(&inner.primaries).remove(&a.uid);
            write(&inner.roles.by_local).insert(
                local,
                Role::Replica {
                    uid: a.uid,
                    primary: None,
                },
            );
            role.stop(inner);
            return Err(e);
        }
    }
    role.refresh(inner);
    for (peer, waker) in peers.iter().zip(wakers) {
        inner.feed.add_waker(waker.clone());
        tokio::spawn(ship(inner.clone(), role.clone(), (*peer).to_owned(), waker));
    }
    tracing::info!(space = %a.name, uid = a.uid, epoch = a.epoch, replicas = ?a.replicas, "leading the space");
    Ok(())
}

/// Deletes a space this node leads (its `DROP_SPACE` record is replicated
/// like any write) and waits for a quorum; `true` when that holds, or when
/// this node leads it and holds no copy any more.
pub(crate) async fn delete(inner: &Arc<Inner>, a: &Assignment) -> Result<bool, ReplicationError> {
    if a.primary != inner.node {
        return Ok(false);
    }
    let Some(role) = lock(&inner.primaries).get(&a.uid).cloned() else {
        // Not led by this process (restarted meanwhile): nothing was
        // started here, so only a missing copy is done.
        return Ok(inner.local_of(a.uid).is_none());
    };
    let g = inner.graph.clone();
    let name = a.name.clone();
    let local = role.local;
    let dropped = tokio::task::spawn_blocking(move || {
        if g.space_name_of(local).is_none() {
            return Ok(());
        }
        match g.delete_space(&name) {
            Ok(()) | Err(GraphError::SpaceNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    })
    .await
    .map_err(|e| ReplicationError::Storage(e.to_string()))?;
    dropped?;
    role.refresh(inner);
    let last = lock(&role.led).core.last_seq;
    wait(inner, &role, last, Concern::Quorum).await?;
    Ok(true)
}

/// Stops leading spaces that are no longer assigned at all.
pub(crate) fn stop_unassigned(inner: &Inner, assignments: &[Assignment]) {
    let gone: Vec<Arc<PrimaryRole>> = {
        let mut primaries = lock(&inner.primaries);
        let uids: Vec<u64> = primaries
            .keys()
            .filter(|u| !assignments.iter().any(|a| a.uid == **u))
            .copied()
            .collect();
        uids.iter().filter_map(|u| primaries.remove(u)).collect()
    };
    for p in gone {
        p.stop(inner);
        write(&inner.roles.by_local).remove(&p.local);
    }
}

async fn persist(
    inner: &Inner,
    local: SpaceId,
    state: &SpaceReplicaState,
) -> Result<(), ReplicationError> {
    let bytes = state
        .encode()
        .map_err(|e| ReplicationError::Storage(e.to_string()))?;
    let g = inner.graph.clone();
    tokio::task::spawn_blocking(move || g.engine().store().put_replica_state(local, &bytes))
        .await
        .map_err(|e| ReplicationError::Storage(e.to_string()))?
        .map_err(|e| ReplicationError::Storage(e.to_string()))
}

/// Waits for write `seq` under `concern` (see [`super::Replicator::wait`]).
pub(crate) async fn wait(
    inner: &Inner,
    role: &Arc<PrimaryRole>,
    seq: u64,
    concern: Concern,
) -> Result<(), ReplicationError> {
    role.refresh(inner);
    // The write is durable here: wake the shippers now rather than at
    // their next poll.
    for w in &role.wakers {
        w.notify_one();
    }
    let rx = {
        let mut led = lock(&role.led);
        match led.core.wait(seq, concern) {
            Wait::Ready => return Ok(()),
            Wait::Insufficient => {
                return Err(ReplicationError::Insufficient {
                    space: role.name.clone(),
                    members: 1 + led.core.peers.len(),
                    quorum: led.core.quorum(),
                });
            }
            Wait::Pending => {
                if role.deposed() {
                    return Err(ReplicationError::RoleLost {
                        space: role.name.clone(),
                        seq,
                    });
                }
                let (tx, rx) = oneshot::channel();
                led.waiters.add(seq, concern, tx);
                rx
            }
        }
    };
    let timeout = inner.config.write_timeout;
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, rx).await;
    inner
        .metrics
        .concern_wait
        .with_label_values(&[concern_label(concern)])
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(Ok(Wait::Ready)) => Ok(()),
        Ok(Ok(Wait::Insufficient)) => {
            let led = lock(&role.led);
            Err(ReplicationError::Insufficient {
                space: role.name.clone(),
                members: 1 + led.core.peers.len(),
                quorum: led.core.quorum(),
            })
        }
        Ok(Ok(Wait::Pending) | Err(_)) => Err(ReplicationError::RoleLost {
            space: role.name.clone(),
            seq,
        }),
        Err(_) => {
            inner
                .metrics
                .concern_timeouts
                .with_label_values(&[concern_label(concern)])
                .inc();
            Err(ReplicationError::Timeout {
                space: role.name.clone(),
                seq,
                timeout_ms: timeout.as_millis() as u64,
            })
        }
    }
}

/// Fault point `replication::corrupt_batch` (with the `failpoints`
/// feature; set through `ENGRAM_FAILPOINTS`): `true` when the next batch
/// is to be sent corrupted.
fn corrupt_fail_point() -> bool {
    fail::fail_point!("replication::corrupt_batch", |_| true);
    false
}

fn concern_label(c: Concern) -> &'static str {
    match c {
        Concern::Primary => "primary",
        Concern::Quorum => "quorum",
        Concern::All => "all",
    }
}

/// What a shipper does next.
enum Step {
    Handshake(crate::protocol::HandshakePlan),
    Send(crate::protocol::BatchPlan),
    /// Records from this one through the second are to be read from the WAL.
    Wal(u64, u64),
    Snapshot,
    Idle,
}

/// The shipper of one (space, member) pair: handshakes, then streams
/// batches one at a time, each taking everything synced meanwhile.
async fn ship(inner: Arc<Inner>, role: Arc<PrimaryRole>, peer: String, waker: Arc<Notify>) {
    let budget = inner.config.limits.max_batch_bytes as usize;
    let mut backoff = inner.config.retry;
    let mut cursor: Option<wal_tail::WalCursor> = None;
    while !role.stopped.load(Ordering::SeqCst) {
        role.refresh(&inner);
        let step = {
            let mut led = lock(&role.led);
            let progress = led
                .core
                .peers
                .iter()
                .find(|p| p.node == peer)
                .map(|p| p.progress.clone());
            match progress {
                Some(Progress::Probe) => led
                    .core
                    .handshake(&peer)
                    .map_or(Step::Idle, Step::Handshake),
                Some(Progress::Streaming {
                    next_seq, inflight, ..
                }) => {
                    // As many records as fit in one batch's byte limit,
                    // from the ring, or else from the WAL.
                    let fit = inner.feed.fitting(role.local, next_seq, budget);
                    if fit == 0 && inflight.is_none() && next_seq <= led.core.synced_seq {
                        Step::Wal(next_seq, led.core.synced_seq)
                    } else {
                        led.core
                            .next_batch(&peer, fit.max(1))
                            .map_or(Step::Idle, Step::Send)
                    }
                }
                Some(Progress::NeedSnapshot { .. }) => Step::Snapshot,
                _ => Step::Idle,
            }
        };
        if !matches!(step, Step::Wal(..) | Step::Idle) {
            // Its reader pins the WAL: keep it only while reading from it.
            cursor = None;
        }
        let ok = match step {
            Step::Idle => {
                // A commit or a write's wait wakes us; the poll bounds the
                // delay of records written by background work.
                let _ = tokio::time::timeout(Duration::from_millis(200), waker.notified()).await;
                continue;
            }
            Step::Handshake(plan) => handshake(&inner, &role, &peer, plan).await,
            Step::Send(plan) => send(&inner, &role, &peer, plan, None).await,
            Step::Wal(first, limit) => {
                let (g, feed, local) = (inner.graph.clone(), inner.feed.clone(), role.local);
                let mut c = cursor.take();
                let read = tokio::task::spawn_blocking(move || {
                    let r = wal_tail::read(&g, &feed, local, first, limit, budget, &mut c);
                    (r, c)
                })
                .await;
                match read {
                    Ok((Ok(Some(records)), c)) if !records.is_empty() => {
                        cursor = c;
                        let plan = lock(&role.led).core.next_batch(&peer, records.len() as u64);
                        match plan {
                            Some(plan) if plan.first == first => {
                                let n = usize::try_from(plan.last - plan.first + 1)
                                    .unwrap_or(usize::MAX);
                                let records: Vec<Record> = records.into_iter().take(n).collect();
                                send(&inner, &role, &peer, plan, Some(records)).await
                            }
                            Some(_) => {
                                lock(&role.led).core.timed_out(&peer);
                                false
                            }
                            None => false,
                        }
                    }
                    Ok((Ok(Some(_)), c)) => {
                        cursor = c;
                        false
                    }
                    Ok((Ok(None), _)) => {
                        tracing::info!(space = %role.name, %peer, first, "records a member needs are no longer in the ring or the WAL; it gets a snapshot");
                        lock(&role.led)
                            .core
                            .needs_snapshot(&peer, first.saturating_sub(1));
                        true
                    }
                    Ok((Err(e), _)) => {
                        role.set_stalled(&peer, Some(e));
                        false
                    }
                    Err(e) => {
                        role.set_stalled(&peer, Some(format!("reading the WAL failed: {e}")));
                        false
                    }
                }
            }
            Step::Snapshot => super::snapshot::send(&inner, &role, &peer).await,
        };
        if ok {
            backoff = inner.config.retry;
        } else {
            let _ = tokio::time::timeout(backoff, waker.notified()).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

pub(crate) fn history_proto(h: &History) -> Vec<proto::EpochStart> {
    h.entries()
        .iter()
        .map(|e| proto::EpochStart {
            epoch: e.epoch,
            start_seq: e.start_seq,
        })
        .collect()
}

/// The core's view of a refusal on the wire.
pub(crate) fn refusal_of(status: i32, promised: u64, expected: u64, diverged_at: u64) -> Refusal {
    match proto::ReplStatus::try_from(status).unwrap_or(proto::ReplStatus::ReplFailed) {
        proto::ReplStatus::ReplStaleEpoch => Refusal::StaleEpoch { promised },
        proto::ReplStatus::ReplPrimaryRestarted => Refusal::PrimaryRestarted,
        proto::ReplStatus::ReplNotContiguous => Refusal::NotContiguous { expected },
        proto::ReplStatus::ReplDiverged => Refusal::Diverged { at: diverged_at },
        _ => Refusal::NeedHandshake,
    }
}

fn status_label(status: i32) -> &'static str {
    match proto::ReplStatus::try_from(status).unwrap_or(proto::ReplStatus::Unspecified) {
        proto::ReplStatus::ReplOk => "ok",
        proto::ReplStatus::ReplStaleEpoch => "stale_epoch",
        proto::ReplStatus::ReplNeedHandshake => "need_handshake",
        proto::ReplStatus::ReplNotContiguous => "not_contiguous",
        proto::ReplStatus::ReplChecksumMismatch => "checksum_mismatch",
        proto::ReplStatus::ReplMalformed => "malformed",
        proto::ReplStatus::ReplDiverged => "diverged",
        proto::ReplStatus::ReplPrimaryRestarted => "primary_restarted",
        proto::ReplStatus::ReplUnknownSpace => "unknown_space",
        proto::ReplStatus::ReplBusy => "busy",
        proto::ReplStatus::ReplFailed => "failed",
        proto::ReplStatus::Unspecified => "unspecified",
    }
}

fn depose(role: &PrimaryRole, promised: u64) {
    if !role.deposed.swap(true, Ordering::SeqCst) {
        tracing::warn!(space = %role.name, epoch = role.epoch, promised, "a replica promised a higher epoch: this node stops taking writes for the space");
    }
    let drained = lock(&role.led).waiters.drain();
    drop(drained);
}

async fn handshake(
    inner: &Inner,
    role: &PrimaryRole,
    peer: &str,
    plan: crate::protocol::HandshakePlan,
) -> bool {
    let Some(mut client) = inner.client(peer) else {
        stalled(role, peer, "its peer address is not known yet");
        let mut led = lock(&role.led);
        let _ = led.core.refused(peer, plan.nonce, &Refusal::NeedHandshake);
        return false;
    };
    let request = proto::HandshakeRequest {
        header: Some(inner.header(peer)),
        space_uid: role.uid,
        space: role.name.clone(),
        epoch: plan.epoch,
        incarnation: inner.incarnation,
        nonce: plan.nonce,
        history: history_proto(&plan.history),
        last_seq: plan.last_seq,
    };
    let answer = client.handshake(request).await;
    let mut led = lock(&role.led);
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            inner
                .metrics
                .handshakes
                .with_label_values(&[status_label(r.status)])
                .inc();
            if r.status == proto::ReplStatus::ReplOk as i32 {
                led.core
                    .handshake_ok(peer, plan.nonce, r.next_seq, r.durable_seq);
                let synced = led.core.synced_seq;
                let seen = led.seen.entry(peer.to_owned()).or_default();
                seen.stalled = None;
                seen.last_ack = Some(Instant::now());
                // What it holds now (less than before if its data was
                // wiped): the ring keeps what it lacks.
                seen.floor = r.durable_seq;
                seen.behind_since = (r.durable_seq < synced).then(Instant::now);
                answer_waiters(&mut led);
                true
            } else {
                let refusal = refusal_of(r.status, r.promised_epoch, 0, r.diverged_at);
                let why = format!(
                    "handshake refused ({}): {}",
                    status_label(r.status),
                    r.message
                );
                led.seen.entry(peer.to_owned()).or_default().stalled = Some(why);
                if let Err(d) = led.core.refused(peer, plan.nonce, &refusal) {
                    drop(led);
                    depose(role, d.promised);
                }
                false
            }
        }
        Err(status) => {
            let _ = led.core.refused(peer, plan.nonce, &Refusal::NeedHandshake);
            led.seen.entry(peer.to_owned()).or_default().stalled =
                Some(format!("unreachable: {}", status.message()));
            false
        }
    }
}

fn stalled(role: &PrimaryRole, peer: &str, why: &str) {
    lock(&role.led)
        .seen
        .entry(peer.to_owned())
        .or_default()
        .stalled = Some(why.to_owned());
}

async fn send(
    inner: &Inner,
    role: &PrimaryRole,
    peer: &str,
    plan: crate::protocol::BatchPlan,
    from_wal: Option<Vec<Record>>,
) -> bool {
    let source = if from_wal.is_some() { "wal" } else { "ring" };
    let records = match from_wal {
        Some(r) => r,
        None => match inner.feed.range(role.local, plan.first, plan.last) {
            Some(r) => r,
            None => {
                // The ring dropped them since the plan was made: the next
                // pass reads them from the WAL.
                lock(&role.led).core.timed_out(peer);
                return true;
            }
        },
    };
    let count = records.len() as u64;
    let batch = match Batch::encode(&records, &inner.config.encode, &inner.config.limits) {
        Ok(mut b) => {
            if corrupt_fail_point() {
                // Fault point: the records change after their checksum.
                if let Some(byte) = b.records.last_mut() {
                    *byte ^= 0x5a;
                }
                tracing::warn!(space = %role.name, %peer, "fault point replication::corrupt_batch: sending a batch whose checksum does not match");
            }
            b
        }
        Err(e) => {
            stalled(role, peer, &format!("encoding a batch failed: {e}"));
            lock(&role.led).core.timed_out(peer);
            return false;
        }
    };
    let Some(mut client) = inner.client(peer) else {
        stalled(role, peer, "its peer address is not known");
        lock(&role.led).core.timed_out(peer);
        return false;
    };
    let commit_seq = lock(&role.led).core.commit_seq;
    let bytes = batch.records.len();
    let request = proto::ReplicationBatch {
        header: Some(inner.header(peer)),
        space_uid: role.uid,
        epoch: role.epoch,
        nonce: plan.nonce,
        prev_epoch: plan.prev_epoch,
        first_seq: batch.first_seq,
        last_seq: batch.last_seq,
        record_count: batch.record_count,
        compression: u32::try_from(batch.compression.to_wire()).unwrap_or(0),
        uncompressed_len: batch.uncompressed_len,
        crc32: batch.crc32,
        records: batch.records,
        commit_seq,
        epoch_starts: plan
            .epoch_starts
            .iter()
            .map(|e: &EpochStart| proto::EpochStart {
                epoch: e.epoch,
                start_seq: e.start_seq,
            })
            .collect(),
    };
    let started = Instant::now();
    let answer = client.apply_batch(request).await;
    inner
        .metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut led = lock(&role.led);
    match answer {
        Ok(r) => {
            let r = r.into_inner();
            inner
                .metrics
                .batches
                .with_label_values(&[status_label(r.status)])
                .inc();
            if r.status == proto::ReplStatus::ReplOk as i32 {
                inner.metrics.bytes_sent.inc_by(bytes as u64);
                let ack = Ack {
                    durable_seq: r.durable_seq,
                    promised: r.promised_epoch,
                    nonce: plan.nonce,
                    batch_last: r.batch_last,
                };
                if let Err(d) = led.core.acked(peer, &ack) {
                    drop(led);
                    depose(role, d.promised);
                    return false;
                }
                inner
                    .metrics
                    .records_shipped
                    .with_label_values(&[source])
                    .inc_by(count);
                let synced = led.core.synced_seq;
                let seen = led.seen.entry(peer.to_owned()).or_default();
                seen.floor = seen.floor.max(r.durable_seq.min(plan.last));
                seen.last_ack = Some(Instant::now());
                seen.stalled = None;
                if seen.floor >= synced {
                    if let Some(since) = seen.behind_since.take() {
                        inner
                            .metrics
                            .catchup_seconds
                            .observe(since.elapsed().as_secs_f64());
                    }
                }
                // Records every member holds leave the ring.
                let floor = led.seen.values().map(|s| s.floor).min().unwrap_or(0);
                while led.appended_at.front().is_some_and(|(s, _)| *s <= floor) {
                    led.appended_at.pop_front();
                }
                answer_waiters(&mut led);
                drop(led);
                inner.feed.trim(role.local, floor);
                true
            } else {
                let refusal = refusal_of(r.status, r.promised_epoch, r.expected_seq, 0);
                led.seen.entry(peer.to_owned()).or_default().stalled = Some(format!(
                    "batch refused ({}): {}",
                    status_label(r.status),
                    r.message
                ));
                if let Err(d) = led.core.refused(peer, plan.nonce, &refusal) {
                    drop(led);
                    depose(role, d.promised);
                }
                false
            }
        }
        Err(status) => {
            led.core.timed_out(peer);
            // The member may have restarted: handshake again.
            let _ = led.core.refused(peer, plan.nonce, &Refusal::NeedHandshake);
            led.seen.entry(peer.to_owned()).or_default().stalled =
                Some(format!("unreachable: {}", status.message()));
            false
        }
    }
}

impl PrimaryRole {
    pub(crate) fn status(&self, inner: &Inner) -> Vec<ReplicaStatus> {
        self.refresh(inner);
        let led = lock(&self.led);
        let now = Instant::now();
        let primary_seq = led.core.last_seq;
        let mut out = vec![ReplicaStatus {
            space: self.name.clone(),
            uid: self.uid,
            replica: inner.node.clone(),
            role: "primary",
            state: if self.deposed() { "deposed" } else { "primary" }.into(),
            epoch: self.epoch,
            primary_seq,
            replica_seq: led.core.synced_seq,
            lag_records: primary_seq - led.core.synced_seq.min(primary_seq),
            lag_seconds: 0.0,
            detail: None,
        }];
        for p in &led.core.peers {
            let seen = led.seen.get(&p.node).cloned().unwrap_or_default();
            let have = p.durable_seq.max(seen.floor).min(primary_seq);
            let lag = primary_seq - have;
            let lag_seconds = led
                .appended_at
                .iter()
                .find(|(s, _)| *s > have)
                .map_or(0.0, |(_, at)| now.duration_since(*at).as_secs_f64());
            let state = match (&p.progress, &seen.stalled) {
                (_, Some(_)) => "stalled",
                (Progress::Streaming { .. }, None) if lag == 0 => "in_sync",
                (Progress::Streaming { .. }, None) => "catching_up",
                (Progress::NeedSnapshot { .. }, None) => "needs_snapshot",
                _ => "connecting",
            };
            out.push(ReplicaStatus {
                space: self.name.clone(),
                uid: self.uid,
                replica: p.node.clone(),
                role: "replica",
                state: state.into(),
                epoch: self.epoch,
                primary_seq,
                replica_seq: have,
                lag_records: lag,
                lag_seconds,
                detail: seen.stalled.clone(),
            });
            inner
                .metrics
                .lag_records
                .with_label_values(&[&self.name, &p.node])
                .set(lag as i64);
            inner
                .metrics
                .lag_seconds
                .with_label_values(&[&self.name, &p.node])
                .set(lag_seconds);
        }
        out
    }
}

/// Whether `local` is led here and not deposed (for callers holding only
/// the local id).
#[allow(dead_code)]
pub(crate) fn leads(inner: &Inner, local: SpaceId) -> bool {
    matches!(read(&inner.roles.by_local).get(&local), Some(Role::Primary(p)) if !p.deposed())
}
