//! Snapshots: a whole copy of a space for a member that needs records its
//! primary no longer keeps in memory or in its WAL (a wiped or new member,
//! one that was away longer than the retained WAL covers, or one that
//! lacks records written before its primary restarted). The primary streams an image of the space read under one
//! RocksDB snapshot ([`engram_lsm::Store::export_space`]) in chunks of about
//! 1 MiB ([`crate::SnapshotChunk`]); the member writes it under a fresh
//! local id and makes it its copy in one synced write at the end
//! ([`engram_graph::Graph::commit_installed_copy`]), with the promise of the
//! primary's epoch. Until then its old copy stays; a crash or a refusal in
//! between leaves nothing (the half-written id is removed, at once or at the
//! next start). Afterwards the member handshakes again and streams the
//! records after the image's sequence number.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_graph::Graph;
use engram_lsm::{ImageFamily, SpaceId};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::primary::PrimaryRole;
use super::proto::{self, ReplStatus, snapshot_part::Part};
use super::ship::history_proto;
use super::{Inner, Role, lock, replica, write};
use crate::chunk::{ChunkLimits, Pair, SnapshotChunk};
use crate::compress::Compression;
use crate::protocol::Incarnation;
use crate::state::SpaceReplicaState;

/// Chunks are cut at about this many bytes of keys and values.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks buffered between the exporting thread and the stream.
const CHUNKS_IN_FLIGHT: usize = 4;
/// Longest a snapshot may take, end to end.
const SNAPSHOT_LIMIT: Duration = Duration::from_secs(30 * 60);

/// What an export sent.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    seq: u64,
    entries: u64,
    bytes: u64,
}

/// Cuts the exported entries into chunks and hands them to the stream.
struct Chunker {
    tx: mpsc::Sender<proto::SnapshotPart>,
    zstd_level: Option<i32>,
    family: Option<ImageFamily>,
    pairs: Vec<Pair>,
    size: usize,
    sent: Sent,
    failed: Option<String>,
}

impl Chunker {
    fn push(&mut self, family: ImageFamily, key: &[u8], value: &[u8]) -> bool {
        let size = 8 + key.len() + value.len();
        if self.family != Some(family) || self.size + size > CHUNK_BYTES {
            if !self.flush() {
                return false;
            }
            self.family = Some(family);
        }
        self.pairs.push((key.to_vec(), value.to_vec()));
        self.size += size;
        self.sent.entries += 1;
        self.sent.bytes += (key.len() + value.len()) as u64;
        true
    }

    /// Sends the pending pairs as one chunk; `false` when the stream is gone
    /// or the chunk cannot be encoded.
    fn flush(&mut self) -> bool {
        let Some(family) = self.family else {
            return true;
        };
        if self.pairs.is_empty() {
            return true;
        }
        let chunk = match SnapshotChunk::encode(
            family.name(),
            &self.pairs,
            self.zstd_level,
            &ChunkLimits::default(),
        ) {
            Ok(c) => c,
            Err(e) => {
                self.failed = Some(format!("encoding a snapshot chunk failed: {e}"));
                return false;
            }
        };
        self.pairs.clear();
        self.size = 0;
        let part = proto::SnapshotPart {
            part: Some(Part::Chunk(proto::SnapshotChunkPart {
                family: chunk.family,
                entries: chunk.entries,
                compression: u32::try_from(chunk.compression.to_wire()).unwrap_or(0),
                uncompressed_len: chunk.uncompressed_len,
                crc32: chunk.crc32,
                kvs: chunk.kvs,
            })),
        };
        if self.tx.blocking_send(part).is_err() {
            self.failed = Some("the member closed the snapshot stream".into());
            return false;
        }
        true
    }
}

/// Reads the image of `local` and sends it (chunks, then the end) into `tx`.
fn export(
    graph: Arc<Graph>,
    local: SpaceId,
    zstd_level: Option<i32>,
    tx: mpsc::Sender<proto::SnapshotPart>,
) -> Result<Sent, String> {
    let mut c = Chunker {
        tx,
        zstd_level,
        family: None,
        pairs: Vec::new(),
        size: 0,
        sent: Sent::default(),
        failed: None,
    };
    let exported = graph
        .engine()
        .store()
        .export_space(local, |family, key, value| c.push(family, key, value));
    let seq = match exported {
        Ok(Some(seq)) => seq,
        Ok(None) => return Err(c.failed.unwrap_or_else(|| "the export stopped".into())),
        Err(e) => return Err(format!("reading the space failed: {e}")),
    };
    if !c.flush() {
        return Err(c.failed.unwrap_or_else(|| "the export stopped".into()));
    }
    c.sent.seq = seq;
    let end = proto::SnapshotPart {
        part: Some(Part::End(proto::SnapshotEnd {
            seq,
            entries: c.sent.entries,
            bytes: c.sent.bytes,
        })),
    };
    if c.tx.blocking_send(end).is_err() {
        return Err("the member closed the snapshot stream".into());
    }
    Ok(c.sent)
}

/// Streams a snapshot of the space `role` leads to `peer`; `true` when the
/// member installed one at least as recent as `need`.
pub(crate) async fn send(inner: &Arc<Inner>, role: &Arc<PrimaryRole>, peer: &str) -> bool {
    let started = Instant::now();
    let Some(mut client) = inner.snapshot_client(peer) else {
        role.set_stalled(peer, Some("its peer address is not known".into()));
        return false;
    };
    role.set_stalled(peer, None);
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    let header = proto::SnapshotPart {
        part: Some(Part::Header(proto::SnapshotHeader {
            header: Some(inner.header(peer)),
            space_uid: role.uid,
            space: role.name.clone(),
            epoch: role.epoch,
            incarnation: inner.incarnation,
            history: history_proto(&role.history()),
        })),
    };
    if tx.send(header).await.is_err() {
        return false;
    }
    let (g, local, level) = (
        inner.graph.clone(),
        role.local,
        inner.config.encode.zstd_level,
    );
    let exporter = tokio::task::spawn_blocking(move || export(g, local, level, tx));
    tracing::info!(space = %role.name, %peer, "streaming a snapshot to a member that lacks records no longer kept here");
    let answer = tokio::time::timeout(
        SNAPSHOT_LIMIT,
        client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let exported = exporter
        .await
        .unwrap_or_else(|e| Err(format!("the export failed: {e}")));
    let outcome = |label: &str| {
        inner
            .metrics
            .snapshots_sent
            .with_label_values(&[label])
            .inc();
    };
    let answer = match answer {
        Ok(Ok(a)) => a.into_inner(),
        Ok(Err(status)) => {
            outcome("unreachable");
            let why = match &exported {
                Err(e) => format!("snapshot failed: {e}"),
                Ok(_) => format!("snapshot failed: {}", status.message()),
            };
            role.set_stalled(peer, Some(why));
            return false;
        }
        Err(_) => {
            outcome("timeout");
            role.set_stalled(
                peer,
                Some(format!(
                    "snapshot took longer than {} s",
                    SNAPSHOT_LIMIT.as_secs()
                )),
            );
            return false;
        }
    };
    if answer.status != ReplStatus::ReplOk as i32 {
        outcome(status_name(answer.status));
        role.set_stalled(
            peer,
            Some(format!(
                "snapshot refused ({}): {}",
                status_name(answer.status),
                answer.message
            )),
        );
        // As for a handshake: a higher promise, or one naming another
        // process at this epoch, means another primary took over.
        if (answer.status == ReplStatus::ReplStaleEpoch as i32
            && answer.promised_epoch > role.epoch)
            || answer.status == ReplStatus::ReplPrimaryRestarted as i32
        {
            role.depose(answer.promised_epoch.max(role.epoch));
        }
        return false;
    }
    let sent = match exported {
        Ok(s) => s,
        Err(e) => {
            // The member says it installed what it got: only a complete
            // image (with its end) is ever installed, so this cannot be.
            outcome("failed");
            role.set_stalled(peer, Some(format!("snapshot failed: {e}")));
            return false;
        }
    };
    outcome("installed");
    let elapsed = started.elapsed();
    inner
        .metrics
        .snapshot_seconds
        .with_label_values(&["sent"])
        .observe(elapsed.as_secs_f64());
    inner
        .metrics
        .snapshot_bytes
        .with_label_values(&["sent"])
        .inc_by(sent.bytes);
    tracing::info!(
        space = %role.name,
        %peer,
        seq = answer.installed_seq,
        entries = sent.entries,
        bytes = sent.bytes,
        elapsed_ms = elapsed.as_millis() as u64,
        "snapshot installed on the member"
    );
    role.snapshot_installed(peer, answer.installed_seq);
    true
}

fn status_name(status: i32) -> &'static str {
    match ReplStatus::try_from(status).unwrap_or(ReplStatus::Unspecified) {
        ReplStatus::ReplOk => "ok",
        ReplStatus::ReplStaleEpoch => "stale_epoch",
        ReplStatus::ReplPrimaryRestarted => "primary_restarted",
        ReplStatus::ReplChecksumMismatch => "checksum_mismatch",
        ReplStatus::ReplMalformed => "malformed",
        ReplStatus::ReplBusy => "busy",
        ReplStatus::ReplNotContiguous => "older_than_copy",
        _ => "failed",
    }
}

/// A refusal of an install, counted.
fn refuse(
    inner: &Inner,
    status: ReplStatus,
    promised: u64,
    message: impl Into<String>,
) -> proto::SnapshotAck {
    let message = message.into();
    let label = status_name(status as i32);
    inner
        .metrics
        .snapshots_installed
        .with_label_values(&[label])
        .inc();
    tracing::warn!(reason = label, %message, "refused a snapshot");
    proto::SnapshotAck {
        status: status as i32,
        promised_epoch: promised,
        installed_seq: 0,
        message,
    }
}

/// Receives and installs a snapshot (the member's side). `check` refuses
/// a header meant for another node or cluster.
pub(crate) async fn install(
    inner: &Arc<Inner>,
    mut stream: Streaming<proto::SnapshotPart>,
    check: impl Fn(Option<&proto::PeerHeader>) -> Result<(), tonic::Status>,
) -> Result<proto::SnapshotAck, tonic::Status> {
    let started = Instant::now();
    let first = tokio::time::timeout(PART_IDLE, stream.message())
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("no snapshot header came"))??;
    let Some(proto::SnapshotPart {
        part: Some(Part::Header(h)),
    }) = first
    else {
        return Ok(refuse(
            inner,
            ReplStatus::ReplMalformed,
            0,
            "a snapshot stream must start with its header",
        ));
    };
    check(h.header.as_ref())?;
    let from = h
        .header
        .as_ref()
        .map(|x| x.from_node.clone())
        .unwrap_or_default();
    if let Some(why) = replica::refuse_if_led(inner, h.space_uid) {
        return Ok(refuse(inner, ReplStatus::ReplBusy, 0, why));
    }
    if !engram_graph::valid_space_name(&h.space) {
        return Ok(refuse(
            inner,
            ReplStatus::ReplMalformed,
            0,
            format!("invalid space name {:?}", h.space),
        ));
    }
    let Some(history) = replica::history_of(&h.history) else {
        return Ok(refuse(
            inner,
            ReplStatus::ReplMalformed,
            0,
            "the history is not ordered",
        ));
    };
    let slot = match replica::slot_or_create(inner, h.space_uid, &h.space) {
        Ok(s) => s,
        Err(e) => return Ok(refuse(inner, ReplStatus::ReplFailed, 0, e.to_string())),
    };
    // The install runs to its end (commit or abort) in a task of its own,
    // even when this call is cancelled (the primary went away): a dropped
    // future must not leave a half-written id or a commit whose in-memory
    // half never ran.
    let task = tokio::spawn(run_install(
        inner.clone(),
        stream,
        h,
        from,
        history,
        slot,
        started,
    ));
    task.await
        .map_err(|e| tonic::Status::internal(format!("the install failed: {e}")))
}

/// Longest wait for the next part of a snapshot stream.
const PART_IDLE: Duration = Duration::from_secs(60);

async fn run_install(
    inner: Arc<Inner>,
    mut stream: Streaming<proto::SnapshotPart>,
    h: proto::SnapshotHeader,
    from: String,
    history: crate::protocol::History,
    slot: Arc<tokio::sync::Mutex<replica::ReplicaSlot>>,
    started: Instant,
) -> proto::SnapshotAck {
    let inner = &inner;
    // Batches for this copy wait until the install is over.
    let mut s = slot.clone().lock_owned().await;
    let primary = Incarnation {
        node: from.clone(),
        incarnation: h.incarnation,
    };
    if let Err(r) = s.core.check_install(h.epoch, &primary) {
        let (status, _) = replica::status_of(&r);
        let promised = s.core.promised;
        return refuse(inner, status, promised, format!("{r:?}"));
    }
    let fresh = match inner.graph.reserve_space_id() {
        Ok(id) => id,
        Err(e) => return refuse(inner, ReplStatus::ReplFailed, 0, e.to_string()),
    };
    let g = inner.graph.clone();
    let begun = blocking(move || g.engine().store().install_begin(fresh)).await;
    if let Err(e) = begun {
        return refuse(inner, ReplStatus::ReplFailed, 0, e);
    }
    let received = receive(inner, &mut stream, fresh).await;
    drop(stream);
    let (seq, bytes) = match received {
        Ok(x) => x,
        Err((status, why)) => {
            abort(inner, fresh).await;
            let promised = s.core.promised;
            return refuse(inner, status, promised, why);
        }
    };
    if seq < s.core.last_seq {
        // Never shrink a copy: its records are the primary's (a prefix of
        // its log), so an older image would only lose some.
        abort(inner, fresh).await;
        let (promised, last) = (s.core.promised, s.core.last_seq);
        return refuse(
            inner,
            ReplStatus::ReplNotContiguous,
            promised,
            format!("the image holds records through {seq}, this copy through {last}"),
        );
    }
    let core = s.core.installed(h.epoch, primary, &history, seq);
    let state = SpaceReplicaState {
        uid: s.uid,
        name: s.name.clone(),
        promised: core.promised,
        promised_to: core.promised_to.clone(),
        history: core.history.clone(),
    };
    let bytes_state = match state.encode() {
        Ok(b) => b,
        Err(e) => {
            abort(inner, fresh).await;
            return refuse(inner, ReplStatus::ReplFailed, 0, e.to_string());
        }
    };
    // The space was retired meanwhile, or this node leads it now: the
    // image is not this node's copy any more.
    let current = lock(&inner.slots)
        .get(&s.uid)
        .is_some_and(|x| Arc::ptr_eq(x, &slot));
    let led = replica::refuse_if_led(inner, s.uid);
    if !current || led.is_some() {
        abort(inner, fresh).await;
        let promised = s.core.promised;
        let why = led.unwrap_or_else(|| "the space was retired during the install".into());
        return refuse(inner, ReplStatus::ReplBusy, promised, why);
    }
    let (g, old) = (inner.graph.clone(), s.local);
    let committed =
        blocking(move || g.commit_installed_copy(fresh, seq, &bytes_state, Some(old))).await;
    if let Err(e) = committed {
        abort(inner, fresh).await;
        let promised = s.core.promised;
        return refuse(inner, ReplStatus::ReplFailed, promised, e);
    }
    // The new copy is this node's copy of the space from now on.
    inner.feed.untrack(fresh);
    inner.feed.drop_space(old);
    write(&inner.uids).insert(s.uid, fresh);
    {
        let mut roles = write(&inner.roles.by_local);
        roles.remove(&old);
        roles.insert(
            fresh,
            Role::Replica {
                uid: s.uid,
                primary: Some(from),
            },
        );
    }
    s.local = fresh;
    s.core = core;
    let elapsed = started.elapsed();
    inner
        .metrics
        .snapshots_installed
        .with_label_values(&["installed"])
        .inc();
    inner
        .metrics
        .snapshot_seconds
        .with_label_values(&["installed"])
        .observe(elapsed.as_secs_f64());
    inner
        .metrics
        .snapshot_bytes
        .with_label_values(&["installed"])
        .inc_by(bytes);
    tracing::info!(space = %s.name, seq, bytes, elapsed_ms = elapsed.as_millis() as u64, "installed a snapshot of the space");
    proto::SnapshotAck {
        status: ReplStatus::ReplOk as i32,
        promised_epoch: s.core.promised,
        installed_seq: seq,
        message: String::new(),
    }
}

/// Writes the chunks of the stream under `fresh` until its end; returns
/// the image's sequence number and bytes. Every chunk is checked before it
/// is written; nothing counts until the commit.
async fn receive(
    inner: &Arc<Inner>,
    stream: &mut Streaming<proto::SnapshotPart>,
    fresh: SpaceId,
) -> Result<(u64, u64), (ReplStatus, String)> {
    let limits = ChunkLimits::default();
    let (mut entries, mut bytes) = (0u64, 0u64);
    loop {
        let part = tokio::time::timeout(PART_IDLE, stream.message())
            .await
            .map_err(|_| {
                (
                    ReplStatus::ReplFailed,
                    format!("no part of the stream came for {} s", PART_IDLE.as_secs()),
                )
            })?
            .map_err(|s| {
                (
                    ReplStatus::ReplFailed,
                    format!("the stream broke: {}", s.message()),
                )
            })?;
        let Some(part) = part.and_then(|p| p.part) else {
            return Err((
                ReplStatus::ReplMalformed,
                "the snapshot stream ended before its end marker".into(),
            ));
        };
        match part {
            Part::Header(_) => {
                return Err((
                    ReplStatus::ReplMalformed,
                    "a second header in one snapshot stream".into(),
                ));
            }
            Part::End(end) => {
                if end.entries != entries || end.bytes != bytes {
                    return Err((
                        ReplStatus::ReplMalformed,
                        format!(
                            "the image ended after {entries} entries ({bytes} bytes) but its sender counted {} ({})",
                            end.entries, end.bytes
                        ),
                    ));
                }
                return Ok((end.seq, bytes));
            }
            Part::Chunk(c) => {
                let Some(family) = ImageFamily::from_name(&c.family) else {
                    return Err((
                        ReplStatus::ReplMalformed,
                        format!("unknown family {:?} in a snapshot chunk", c.family),
                    ));
                };
                let compression =
                    Compression::from_wire(i32::try_from(c.compression).unwrap_or(-1))
                        .map_err(|e| (ReplStatus::ReplMalformed, e.to_string()))?;
                let chunk = SnapshotChunk {
                    family: c.family,
                    entries: c.entries,
                    compression,
                    uncompressed_len: c.uncompressed_len,
                    crc32: c.crc32,
                    kvs: c.kvs,
                };
                let pairs = chunk.decode(&limits).map_err(|e| {
                    let status = match e {
                        crate::CodecError::ChecksumMismatch { .. } => {
                            ReplStatus::ReplChecksumMismatch
                        }
                        _ => ReplStatus::ReplMalformed,
                    };
                    (status, e.to_string())
                })?;
                entries += pairs.len() as u64;
                bytes += pairs
                    .iter()
                    .map(|(k, v)| (k.len() + v.len()) as u64)
                    .sum::<u64>();
                let rows: Vec<(ImageFamily, Vec<u8>, Vec<u8>)> =
                    pairs.into_iter().map(|(k, v)| (family, k, v)).collect();
                let g = inner.graph.clone();
                blocking(move || g.engine().store().install_put(fresh, &rows))
                    .await
                    .map_err(|e| (ReplStatus::ReplFailed, e))?;
            }
        }
    }
}

async fn abort(inner: &Arc<Inner>, fresh: SpaceId) {
    let g = inner.graph.clone();
    if let Err(e) = blocking(move || g.engine().store().install_abort(fresh)).await {
        tracing::warn!(space = fresh, error = %e, "removing an incomplete snapshot failed; it is removed at the next start");
    }
}

/// Runs store work off the async threads.
async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, String>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}
