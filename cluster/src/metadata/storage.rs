//! openraft storage of the metadata group: the log and vote in `lsm`'s
//! `raft_log`/`raft_state` column families (every write synced), and the
//! state machine in memory, restored from its last snapshot at startup
//! (openraft then re-applies the committed entries after it).
//!
//! Values are JSON: self-describing, so openraft's own serde attributes
//! and later additions to [`MetaState`] decode; the metadata log is small.

// openraft's storage traits fix the error type (`StorageError`, 224 bytes);
// the helpers here return what the trait methods return.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, RwLock};

use engram_lsm::Store;
use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    EntryPayload, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageIOError, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::state::{MetaState, Outcome};
use super::types::{Entry, LogId, MetaNode, RaftId, StorageError, TypeConfig};

/// The RocksDB store holding the raft families (the node's data store).
pub trait RaftDisk: Send + Sync + 'static {
    /// The store.
    fn store(&self) -> &Store;
}

impl RaftDisk for Store {
    fn store(&self) -> &Store {
        self
    }
}

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const SNAPSHOT: &str = "snapshot";

fn io_read(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn io_write(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn get_json<T: DeserializeOwned>(
    disk: &dyn RaftDisk,
    key: &str,
) -> Result<Option<T>, StorageError> {
    match disk.store().raft_get_state(key).map_err(io_read)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io_read),
    }
}

fn put_json<T: Serialize>(disk: &dyn RaftDisk, key: &str, value: &T) -> Result<(), StorageError> {
    let bytes = serde_json::to_vec(value).map_err(io_write)?;
    disk.store().raft_put_state(key, &bytes).map_err(io_write)
}

const STORAGE_ID: &str = "storage_id";

/// `true` when the node never took part in a metadata group: no log
/// entry, vote, purge point or snapshot (its storage id does not count).
pub fn is_pristine(disk: &dyn RaftDisk) -> Result<bool, engram_lsm::StoreError> {
    let s = disk.store();
    Ok(s.raft_last_entry()?.is_none()
        && s.raft_get_state(VOTE)?.is_none()
        && s.raft_get_state(PURGED)?.is_none()
        && s.raft_get_state(SNAPSHOT)?.is_none())
}

/// This data directory's random id, created (synced) on first use: a node
/// that comes back with another one lost its data.
pub fn storage_id(disk: &dyn RaftDisk) -> Result<String, engram_lsm::StoreError> {
    let s = disk.store();
    if let Some(id) = s.raft_get_state(STORAGE_ID)? {
        return Ok(String::from_utf8_lossy(&id).into_owned());
    }
    let id = format!("{:032x}", rand::random::<u128>());
    s.raft_put_state(STORAGE_ID, id.as_bytes())?;
    Ok(id)
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    disk: Arc<dyn RaftDisk>,
}

impl LogStore {
    /// Log store over `disk`.
    pub fn new(disk: Arc<dyn RaftDisk>) -> LogStore {
        LogStore { disk }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        let raw = self.disk.store().raft_entries(from, to).map_err(io_read)?;
        raw.iter()
            .map(|(_, bytes)| serde_json::from_slice(bytes).map_err(io_read))
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = get_json(self.disk.as_ref(), PURGED)?;
        let last = match self.disk.store().raft_last_entry().map_err(io_read)? {
            Some((_, bytes)) => {
                let entry: Entry = serde_json::from_slice(&bytes).map_err(io_read)?;
                Some(entry.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> Result<(), StorageError> {
        put_json(self.disk.as_ref(), VOTE, vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftId>>, StorageError> {
        get_json(self.disk.as_ref(), VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        put_json(self.disk.as_ref(), COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(get_json::<Option<LogId>>(self.disk.as_ref(), COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut raw = Vec::new();
        for entry in entries {
            let bytes = serde_json::to_vec(&entry).map_err(io_write)?;
            raw.push((entry.log_id.index, bytes));
        }
        let result = self.disk.store().raft_append(&raw);
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(io_write(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.disk
            .store()
            .raft_truncate_from(log_id.index)
            .map_err(io_write)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(&Some(log_id)).map_err(io_write)?;
        self.disk
            .store()
            .raft_purge_to(log_id.index, PURGED, &bytes)
            .map_err(io_write)
    }
}

/// What the state machine holds, and what a snapshot carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId>,
    /// Last applied membership.
    pub membership: StoredMembership<RaftId, MetaNode>,
    /// The state.
    pub state: MetaState,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, MetaNode>,
    data: Vec<u8>,
}

/// The state machine's data, shared with readers (routing, the API).
pub struct Shared {
    applied: RwLock<Applied>,
    changed: watch::Sender<u64>,
    /// Serialises writes of the stored snapshot (a build racing an install
    /// must not put an older snapshot back).
    snapshot_write: std::sync::Mutex<()>,
}

/// Stores `stored` as the current snapshot unless the one stored is as new
/// or newer: the stored snapshot never goes back, so the log purged below
/// it is never needed again after a restart.
fn store_snapshot(
    disk: &dyn RaftDisk,
    shared: &Shared,
    stored: &StoredSnapshot,
) -> Result<(), StorageError> {
    let _one = match shared.snapshot_write.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some(existing) = get_json::<StoredSnapshot>(disk, SNAPSHOT)?
        && existing.meta.last_log_id >= stored.meta.last_log_id
    {
        return Ok(());
    }
    put_json(disk, SNAPSHOT, stored)
}

impl Shared {
    /// A copy of what is applied now.
    pub fn applied(&self) -> Applied {
        match self.applied.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Runs `f` on the applied state without copying it.
    pub fn read<T>(&self, f: impl FnOnce(&Applied) -> T) -> T {
        match self.applied.read() {
            Ok(g) => f(&g),
            Err(p) => f(&p.into_inner()),
        }
    }

    /// A receiver that sees the index of every applied entry.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn replace(&self, applied: Applied) {
        let index = applied.last_applied.map_or(0, |l| l.index);
        match self.applied.write() {
            Ok(mut g) => *g = applied,
            Err(p) => *p.into_inner() = applied,
        }
        self.changed.send_replace(index);
    }

    fn update<T>(&self, f: impl FnOnce(&mut Applied) -> T) -> T {
        let (out, index) = match self.applied.write() {
            Ok(mut g) => {
                let out = f(&mut g);
                (out, g.last_applied.map_or(0, |l| l.index))
            }
            Err(p) => {
                let mut g = p.into_inner();
                let out = f(&mut g);
                (out, g.last_applied.map_or(0, |l| l.index))
            }
        };
        self.changed.send_replace(index);
        out
    }
}

/// The state machine.
pub struct StateMachine {
    disk: Arc<dyn RaftDisk>,
    shared: Arc<Shared>,
}

impl StateMachine {
    /// Opens the state machine: the state of the last snapshot stored in
    /// `disk`, or an empty one.
    pub fn open(disk: Arc<dyn RaftDisk>) -> Result<StateMachine, StorageError> {
        let applied = match get_json::<StoredSnapshot>(disk.as_ref(), SNAPSHOT)? {
            Some(s) => serde_json::from_slice(&s.data)
                .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?,
            None => Applied::default(),
        };
        let (changed, _) = watch::channel(applied.last_applied.map_or(0, |l| l.index));
        Ok(StateMachine {
            disk,
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                changed,
                snapshot_write: std::sync::Mutex::new(()),
            }),
        })
    }

    /// The shared view of the state.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }
}

/// Builds snapshots of the state machine.
pub struct SnapshotBuilder {
    disk: Arc<dyn RaftDisk>,
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applied = self.shared.applied();
        let data = serde_json::to_vec(&applied)
            .map_err(|e| StorageError::from(StorageIOError::write_snapshot(None, &e)))?;
        let id = match applied.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, data.len()),
            None => format!("empty-{}", data.len()),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership.clone(),
            snapshot_id: id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        store_snapshot(self.disk.as_ref(), &self.shared, &stored)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<RaftId, MetaNode>), StorageError> {
        Ok(self.shared.read(|a| (a.last_applied, a.membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        Ok(self.shared.update(|a| {
            let mut out = Vec::new();
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => out.push(Outcome::Done),
                    EntryPayload::Normal(command) => out.push(a.state.apply(command)),
                    EntryPayload::Membership(m) => {
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        out.push(Outcome::Done);
                    }
                }
            }
            out
        }))
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            disk: self.disk.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<RaftId, MetaNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let mut applied: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(None, &e)))?;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        store_snapshot(self.disk.as_ref(), &self.shared, &stored)?;
        self.shared.replace(applied);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(
            get_json::<StoredSnapshot>(self.disk.as_ref(), SNAPSHOT)?.map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }),
        )
    }
}
