//! Leading a space: the [`PrimarySpace`] core fed from the engine's
//! records, one shipper task per other member, and the write-concern waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use engram_graph::{GraphError, SpaceOptions};
use engram_lsm::SpaceId;
use tokio::sync::{Notify, oneshot};

use super::{Assignment, Inner, ReplicaStatus, ReplicationError, Role, lock, read, write};
use crate::protocol::{Concern, History, Incarnation, PrimarySpace, Progress, Wait, Waiters};
use crate::state::SpaceReplicaState;

/// What a member's shipper last saw.
#[derive(Debug, Clone, Default)]
pub(super) struct PeerSeen {
    /// Highest sequence number it acknowledged durable in this primary's
    /// life (kept across sessions; the ring keeps what it lacks).
    pub(super) floor: u64,
    pub(super) last_ack: Option<Instant>,
    /// Why shipping to it is stuck, if it is.
    pub(super) stalled: Option<String>,
    /// Since when it has been catching up (a session started behind).
    pub(super) behind_since: Option<Instant>,
}

pub(super) struct Led {
    pub(super) core: PrimarySpace,
    pub(super) waiters: Waiters<oneshot::Sender<Wait>>,
    pub(super) seen: HashMap<String, PeerSeen>,
    /// When each record not yet on every member was appended here.
    pub(super) appended_at: std::collections::VecDeque<(u64, Instant)>,
}

/// A space this node leads.
pub(crate) struct PrimaryRole {
    pub(crate) uid: u64,
    pub(crate) name: String,
    pub(crate) local: SpaceId,
    pub(crate) epoch: u64,
    pub(super) led: Mutex<Led>,
    pub(super) stopped: AtomicBool,
    /// A peer refused with a higher promise: stop taking writes.
    pub(super) deposed: AtomicBool,
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
    pub(super) fn refresh(&self, inner: &Inner) {
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

pub(super) fn answer_waiters(led: &mut Led) {
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
        tokio::spawn(super::ship::ship(
            inner.clone(),
            role.clone(),
            (*peer).to_owned(),
            waker,
        ));
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

fn concern_label(c: Concern) -> &'static str {
    match c {
        Concern::Primary => "primary",
        Concern::Quorum => "quorum",
        Concern::All => "all",
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

/// A peer promised a higher epoch: this node stops taking writes for the
/// space, and its waiting writes learn their outcome is unknown.
pub(super) fn depose(role: &PrimaryRole, promised: u64) {
    if !role.deposed.swap(true, Ordering::SeqCst) {
        tracing::warn!(space = %role.name, epoch = role.epoch, promised, "a replica promised a higher epoch: this node stops taking writes for the space");
    }
    let drained = lock(&role.led).waiters.drain();
    drop(drained);
}
