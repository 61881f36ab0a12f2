//! Holding a copy: the [`ReplicaSpace`] core of each space this node
//! replicates, its durable state (`lsm` meta key `0x06`), and the append of
//! the primary's records under the primary's sequence numbers.

use std::sync::Arc;

use engram_graph::{Engine, kind};
use engram_lsm::{Mutation, SpaceId, mutation};

use super::proto::{self, ReplStatus};
use super::{Inner, ReplicationError, Role, lock, write};
use crate::codec::Batch;
use crate::protocol::{
    BatchHeader, EpochStart, History, Incarnation, Persist, Refusal, ReplicaSpace,
};
use crate::state::SpaceReplicaState;
use crate::{CodecError, Compression};

/// One space held here as a replica.
#[derive(Debug)]
pub(crate) struct ReplicaSlot {
    pub(crate) uid: u64,
    pub(crate) name: String,
    pub(crate) local: SpaceId,
    pub(crate) core: ReplicaSpace,
}

/// Reads the replicated spaces this node holds (at start).
pub(crate) fn load_slots(inner: &Arc<Inner>) -> Result<(), ReplicationError> {
    let store = inner.graph.engine().store();
    let states = store
        .replica_states()
        .map_err(|e| ReplicationError::Storage(e.to_string()))?;
    if let Some(max) = states.iter().map(|(local, _)| *local).max() {
        inner.graph.reserve_space_ids_through(max);
    }
    for (local, bytes) in states {
        let state = match SpaceReplicaState::decode(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(space = local, error = %e, "the replication state of a local space is damaged; the space is not served as a replica until it is rebuilt");
                continue;
            }
        };
        // Every record in this node's WAL is durable after recovery.
        let durable = inner.graph.engine().next_seq(local).saturating_sub(1);
        let core = ReplicaSpace {
            promised: state.promised,
            promised_to: state.promised_to.clone(),
            history: state.history.clone(),
            last_seq: durable,
            durable_seq: durable,
            session: None,
        };
        write(&inner.uids).insert(state.uid, local);
        // Until an assignment says otherwise, nobody writes to it here.
        write(&inner.roles.by_local).insert(
            local,
            Role::Replica {
                uid: state.uid,
                primary: None,
            },
        );
        inner.feed.untrack(local);
        lock(&inner.slots).insert(
            state.uid,
            Arc::new(tokio::sync::Mutex::new(ReplicaSlot {
                uid: state.uid,
                name: state.name,
                local,
                core,
            })),
        );
    }
    Ok(())
}

fn slot(inner: &Inner, uid: u64) -> Option<Arc<tokio::sync::Mutex<ReplicaSlot>>> {
    lock(&inner.slots).get(&uid).cloned()
}

/// The slot of space `uid`, created (with a fresh local id) on the first
/// handshake.
pub(crate) fn slot_or_create(
    inner: &Inner,
    uid: u64,
    name: &str,
) -> Result<Arc<tokio::sync::Mutex<ReplicaSlot>>, ReplicationError> {
    let mut slots = lock(&inner.slots);
    if let Some(s) = slots.get(&uid) {
        return Ok(s.clone());
    }
    let local = inner.graph.reserve_space_id()?;
    inner.feed.untrack(local);
    write(&inner.uids).insert(uid, local);
    write(&inner.roles.by_local).insert(local, Role::Replica { uid, primary: None });
    let slot = Arc::new(tokio::sync::Mutex::new(ReplicaSlot {
        uid,
        name: name.to_owned(),
        local,
        core: ReplicaSpace::default(),
    }));
    slots.insert(uid, slot.clone());
    Ok(slot)
}

pub(crate) fn status_of(refusal: &Refusal) -> (ReplStatus, u64) {
    match refusal {
        Refusal::StaleEpoch { .. } => (ReplStatus::ReplStaleEpoch, 0),
        Refusal::PrimaryRestarted => (ReplStatus::ReplPrimaryRestarted, 0),
        Refusal::NeedHandshake => (ReplStatus::ReplNeedHandshake, 0),
        Refusal::NotContiguous { expected } => (ReplStatus::ReplNotContiguous, *expected),
        Refusal::Diverged { at } => (ReplStatus::ReplDiverged, *at),
    }
}

pub(crate) fn history_of(entries: &[proto::EpochStart]) -> Option<History> {
    History::new(
        entries
            .iter()
            .map(|e| EpochStart {
                epoch: e.epoch,
                start_seq: e.start_seq,
            })
            .collect(),
    )
}

async fn persist(inner: &Inner, slot: &ReplicaSlot) -> Result<(), ReplicationError> {
    let state = SpaceReplicaState {
        uid: slot.uid,
        name: slot.name.clone(),
        promised: slot.core.promised,
        promised_to: slot.core.promised_to.clone(),
        history: slot.core.history.clone(),
    };
    let bytes = state
        .encode()
        .map_err(|e| ReplicationError::Storage(e.to_string()))?;
    let g = inner.graph.clone();
    let local = slot.local;
    tokio::task::spawn_blocking(move || g.engine().store().put_replica_state(local, &bytes))
        .await
        .map_err(|e| ReplicationError::Storage(e.to_string()))?
        .map_err(|e| ReplicationError::Storage(e.to_string()))
}

/// Whether this node may hold a copy of `uid`: it must not lead it.
pub(crate) fn refuse_if_led(inner: &Inner, uid: u64) -> Option<String> {
    lock(&inner.primaries)
        .get(&uid)
        .filter(|p| !p.deposed())
        .map(|p| format!("this node leads space {:?} at epoch {}", p.name, p.epoch))
}

pub(crate) async fn handshake(
    inner: &Inner,
    req: proto::HandshakeRequest,
) -> proto::HandshakeResponse {
    let from = req
        .header
        .as_ref()
        .map(|h| h.from_node.clone())
        .unwrap_or_default();
    let refuse = |status: ReplStatus, message: String| proto::HandshakeResponse {
        status: status as i32,
        message,
        ..Default::default()
    };
    if let Some(why) = refuse_if_led(inner, req.space_uid) {
        return refuse(ReplStatus::ReplBusy, why);
    }
    let Some(history) = history_of(&req.history) else {
        return refuse(
            ReplStatus::ReplMalformed,
            "the history is not ordered".into(),
        );
    };
    if !engram_graph::valid_space_name(&req.space) {
        return refuse(
            ReplStatus::ReplMalformed,
            format!("invalid space name {:?}", req.space),
        );
    }
    let slot = match slot_or_create(inner, req.space_uid, &req.space) {
        Ok(s) => s,
        Err(e) => return refuse(ReplStatus::ReplFailed, e.to_string()),
    };
    let mut s = slot.lock().await;
    let before = s.core.clone();
    let primary = Incarnation {
        node: from.clone(),
        incarnation: req.incarnation,
    };
    match s
        .core
        .handshake(req.epoch, primary, req.nonce, &history, req.last_seq)
    {
        Ok((next, Persist::Promise { .. })) => {
            if let Err(e) = persist(inner, &s).await {
                s.core = before;
                return refuse(ReplStatus::ReplFailed, e.to_string());
            }
            write(&inner.roles.by_local).insert(
                s.local,
                Role::Replica {
                    uid: s.uid,
                    primary: Some(from),
                },
            );
            proto::HandshakeResponse {
                status: ReplStatus::ReplOk as i32,
                promised_epoch: s.core.promised,
                durable_seq: s.core.durable_seq,
                next_seq: next,
                diverged_at: 0,
                message: String::new(),
            }
        }
        Ok((_, _)) => refuse(ReplStatus::ReplFailed, "unexpected persist".into()),
        Err(refusal) => {
            let (status, at) = status_of(&refusal);
            proto::HandshakeResponse {
                status: status as i32,
                promised_epoch: s.core.promised,
                durable_seq: s.core.durable_seq,
                next_seq: 0,
                diverged_at: at,
                message: format!("{refusal:?}"),
            }
        }
    }
}

/// Counts a refusal and builds its answer.
fn refused(
    inner: &Inner,
    status: ReplStatus,
    promised: u64,
    durable: u64,
    expected: u64,
    batch_last: u64,
    message: String,
) -> proto::ReplicationAck {
    inner
        .metrics
        .refused
        .with_label_values(&[status.as_str_name()])
        .inc();
    proto::ReplicationAck {
        status: status as i32,
        durable_seq: durable,
        promised_epoch: promised,
        expected_seq: expected,
        batch_last,
        message,
    }
}

pub(crate) async fn apply_batch(
    inner: &Inner,
    req: proto::ReplicationBatch,
) -> proto::ReplicationAck {
    let Some(slot) = slot(inner, req.space_uid) else {
        return refused(
            inner,
            ReplStatus::ReplNeedHandshake,
            0,
            0,
            0,
            req.last_seq,
            "no session for this space: handshake first".into(),
        );
    };
    let mut s = slot.lock().await;
    let (promised, durable) = (s.core.promised, s.core.durable_seq);
    let Ok(compression) = Compression::from_wire(i32::try_from(req.compression).unwrap_or(-1))
    else {
        return refused(
            inner,
            ReplStatus::ReplMalformed,
            promised,
            durable,
            0,
            req.last_seq,
            format!("unknown compression {}", req.compression),
        );
    };
    let batch = Batch {
        first_seq: req.first_seq,
        last_seq: req.last_seq,
        record_count: req.record_count,
        compression,
        uncompressed_len: req.uncompressed_len,
        crc32: req.crc32,
        records: req.records,
    };
    // Invariant 7: nothing is applied from a batch that fails any check.
    let records = match batch.decode(&inner.config.limits) {
        Ok(r) => r,
        Err(e) => {
            let status = match e {
                CodecError::ChecksumMismatch { .. } => ReplStatus::ReplChecksumMismatch,
                _ => ReplStatus::ReplMalformed,
            };
            tracing::warn!(space = %s.name, first = req.first_seq, last = req.last_seq, error = %e, "refused a replication batch");
            return refused(
                inner,
                status,
                promised,
                durable,
                0,
                req.last_seq,
                e.to_string(),
            );
        }
    };
    let header = BatchHeader {
        epoch: req.epoch,
        nonce: req.nonce,
        prev_epoch: req.prev_epoch,
        first_seq: req.first_seq,
        last_seq: req.last_seq,
        epoch_starts: req
            .epoch_starts
            .iter()
            .map(|e| EpochStart {
                epoch: e.epoch,
                start_seq: e.start_seq,
            })
            .collect(),
    };
    let append = match s.core.batch(&header) {
        Err(refusal) => {
            let (status, expected) = status_of(&refusal);
            return refused(
                inner,
                status,
                promised,
                durable,
                expected,
                req.last_seq,
                format!("{refusal:?}"),
            );
        }
        Ok(None) => None,
        Ok(Some(p)) => Some(p),
    };
    if let Some(append) = append {
        if let Err(e) = append_records(inner, &mut s, &append, &records).await {
            tracing::warn!(space = %s.name, error = %e, "appending replicated records failed");
            let (promised, durable) = (s.core.promised, s.core.durable_seq);
            return refused(
                inner,
                ReplStatus::ReplFailed,
                promised,
                durable,
                0,
                req.last_seq,
                e.to_string(),
            );
        }
    }
    match s.core.ack(req.epoch, req.nonce, req.last_seq) {
        Ok(ack) => {
            inner.metrics.applied.inc_by(records.len() as u64);
            proto::ReplicationAck {
                status: ReplStatus::ReplOk as i32,
                durable_seq: ack.durable_seq,
                promised_epoch: ack.promised,
                expected_seq: 0,
                batch_last: ack.batch_last,
                message: String::new(),
            }
        }
        Err(refusal) => {
            let (status, expected) = status_of(&refusal);
            let (promised, durable) = (s.core.promised, s.core.durable_seq);
            refused(
                inner,
                status,
                promised,
                durable,
                expected,
                req.last_seq,
                format!("{refusal:?}"),
            )
        }
    }
}

/// Appends the new records of a checked batch under the primary's
/// sequence numbers, waits until they are durable and applied, and keeps
/// the graph's map of spaces in step. On failure the session ends (the
/// primary handshakes again and learns what is here).
async fn append_records(
    inner: &Inner,
    s: &mut ReplicaSlot,
    append: &Persist,
    records: &[crate::Record],
) -> Result<(), ReplicationError> {
    let Persist::Append {
        skip,
        first,
        last,
        starts,
        ..
    } = append
    else {
        return Ok(());
    };
    let before = s.core.clone();
    if let Err(r) = s.core.appended(append) {
        return Err(ReplicationError::Storage(format!("{r:?}")));
    }
    let fail = |s: &mut ReplicaSlot, e: ReplicationError| {
        let engine_last = inner.graph.engine().next_seq(s.local).saturating_sub(1);
        s.core = before.clone();
        s.core.session = None;
        s.core.last_seq = engine_last.max(s.core.durable_seq);
        Err(e)
    };
    if !starts.is_empty() {
        // History entries are durable before the records of their epoch.
        if let Err(e) = persist(inner, s).await {
            return fail(s, e);
        }
    }
    let new: Vec<&crate::Record> = records
        .iter()
        .skip(usize::try_from(*skip).unwrap_or(usize::MAX))
        .filter(|r| r.seq >= *first && r.seq <= *last)
        .collect();
    // Every record is checked before the first is appended (invariant 7:
    // nothing of a refused batch is applied).
    let mut kinds: Vec<(u8, Vec<Mutation>)> = Vec::new();
    for r in &new {
        let mutations = match mutation::decode(&r.payload) {
            Ok(m) => m,
            Err(e) => {
                return fail(
                    s,
                    ReplicationError::Storage(format!("record {} does not decode: {e}", r.seq)),
                );
            }
        };
        if r.kind == kind::CREATE_SPACE {
            if let Err(e) = inner.graph.check_replicated_create(s.local, &s.name) {
                return fail(s, e.into());
            }
        }
        if r.kind == kind::CREATE_SPACE || r.kind == kind::DROP_SPACE {
            kinds.push((r.kind, mutations));
        } else if !kinds.iter().any(|(k, _)| *k == r.kind) {
            kinds.push((r.kind, Vec::new()));
        }
    }
    let engine: &Engine = inner.graph.engine();
    let mut last_ticket = None;
    for r in new {
        match engine.append_replicated(s.local, r.seq, r.kind, &r.payload) {
            Ok(t) => last_ticket = Some(t),
            Err(e) => return fail(s, ReplicationError::Graph(e.into())),
        }
    }
    if let Some(t) = last_ticket {
        let committed = match Engine::group_commit(t).await {
            Ok(c) => c,
            Err(e) => return fail(s, ReplicationError::Graph(e.into())),
        };
        let g = inner.graph.clone();
        let applied = tokio::task::spawn_blocking(move || g.engine().apply_durable(committed.lsn))
            .await
            .map_err(|e| ReplicationError::Storage(e.to_string()));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return fail(s, ReplicationError::Graph(e.into())),
            Err(e) => return fail(s, e),
        }
    }
    // The space map's bookkeeping takes the graph's DDL lock and removes
    // files: off the async threads.
    let (g, local, name) = (inner.graph.clone(), s.local, s.name.clone());
    let _ = tokio::task::spawn_blocking(move || {
        for (k, m) in &kinds {
            if let Err(e) = g.apply_replicated(local, *k, m) {
                tracing::error!(space = %name, error = %e, "keeping the space map in step with a replicated record failed");
            }
        }
    })
    .await;
    s.core.synced(*last);
    Ok(())
}

/// Drops what this node keeps of retired spaces: the slot, the uid and the
/// replication state (the data went with the `DROP_SPACE` record; a copy
/// that missed it is dropped here).
pub(crate) async fn drop_retired(inner: &Inner, retired: &[u64]) {
    for uid in retired {
        let slot = lock(&inner.slots).remove(uid);
        // An install in progress finishes (or sees the slot gone) first.
        let _held = match &slot {
            Some(s) => Some(s.clone().lock_owned().await),
            None => None,
        };
        let Some(local) = inner.local_of(*uid) else {
            continue;
        };
        let g = inner.graph.clone();
        let dropped = tokio::task::spawn_blocking(move || -> Result<(), String> {
            if let Some(name) = g.space_name_of(local) {
                g.drop_replicated_copy(local, &name)
                    .map_err(|e| e.to_string())?;
            }
            g.engine()
                .store()
                .delete_replica_state(local)
                .map_err(|e| e.to_string())
        })
        .await;
        match dropped {
            Ok(Ok(())) => {
                write(&inner.uids).remove(uid);
                write(&inner.roles.by_local).remove(&local);
                inner.feed.drop_space(local);
            }
            Ok(Err(e)) => {
                tracing::warn!(uid, error = %e, "dropping the copy of a retired space failed; retried with the next change");
                if let Some(s) = slot {
                    lock(&inner.slots).insert(*uid, s);
                }
            }
            Err(e) => {
                tracing::warn!(uid, error = %e, "dropping the copy of a retired space failed")
            }
        }
    }
}
