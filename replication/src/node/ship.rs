//! Shipping a led space to one member: one task per (space, member) that
//! handshakes, streams batches from the recent-records ring or the WAL, and
//! sends a snapshot when neither holds what the member needs; the answers
//! move the space's [`PrimarySpace`] core on.
//!
//! [`PrimarySpace`]: crate::protocol::PrimarySpace

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::primary::{PrimaryRole, answer_waiters, depose};
use super::{Inner, lock, proto, wal_tail};
use crate::Record;
use crate::codec::Batch;
use crate::protocol::{Ack, EpochStart, History, Progress, Refusal};

/// Fault point `replication::corrupt_batch` (with the `failpoints`
/// feature; set through `ENGRAM_FAILPOINTS`): `true` when the next batch
/// is to be sent corrupted.
fn corrupt_fail_point() -> bool {
    fail::fail_point!("replication::corrupt_batch", |_| true);
    false
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
pub(super) async fn ship(
    inner: Arc<Inner>,
    role: Arc<PrimaryRole>,
    peer: String,
    waker: Arc<Notify>,
) {
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
