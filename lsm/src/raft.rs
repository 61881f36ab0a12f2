//! Storage of the metadata group's Raft log (column families `raft_log` and
//! `raft_state`).
//!
//! The cluster layer keeps its Raft log here so it never names a RocksDB
//! type. Log entries are opaque bytes keyed by their index (big-endian, so
//! keys sort by index); the state family holds a few named values (vote,
//! committed log id, purge point, state-machine snapshot). Every write is
//! **synced** before it returns: Raft must not answer a vote or an append
//! for something a crash could take back. (A synced write also syncs the
//! data families' earlier unsynced writes, which is harmless.) A read error
//! is returned like any other; the caller treats it as fatal.

use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::{Cf, Store, StoreError};

/// A key above every 8-byte index key.
const PAST_LAST_INDEX: [u8; 9] = [0xff; 9];

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl Store {
    pub(crate) fn synced(&self) -> WriteOptions {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        o
    }

    fn raft_index(&self, key: &[u8]) -> Result<u64, StoreError> {
        let b: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
            cf: Cf::RaftLog.name(),
            detail: format!("log key of {} bytes, expected 8", key.len()),
        })?;
        Ok(u64::from_be_bytes(b))
    }

    /// Writes `entries` (index, bytes) as one synced batch. An existing
    /// entry at the same index is replaced.
    pub fn raft_append(&self, entries: &[(u64, Vec<u8>)]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let cf = self.handle(Cf::RaftLog)?;
        let mut batch = WriteBatch::default();
        for (index, bytes) in entries {
            batch.put_cf(cf, index_key(*index), bytes);
        }
        self.db
            .write_opt(batch, &self.synced())
            .map_err(|e| self.err(e))
    }

    /// Entries with `from <= index < to`, in index order.
    pub fn raft_entries(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let cf = self.handle(Cf::RaftLog)?;
        let start = index_key(from);
        let it = self
            .db
            .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward));
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let index = self.raft_index(&k)?;
            if index >= to {
                break;
            }
            out.push((index, v.into_vec()));
        }
        Ok(out)
    }

    /// The entry with the highest index, if the log holds any.
    pub fn raft_last_entry(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let cf = self.handle(Cf::RaftLog)?;
        match self.db.iterator_cf(cf, IteratorMode::End).next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(|e| self.err(e))?;
                Ok(Some((self.raft_index(&k)?, v.into_vec())))
            }
        }
    }

    /// Deletes every entry at or above `index` (synced).
    pub fn raft_truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let cf = self.handle(Cf::RaftLog)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, &index_key(index)[..], &PAST_LAST_INDEX[..]);
        self.db
            .write_opt(batch, &self.synced())
            .map_err(|e| self.err(e))
    }

    /// Deletes every entry at or below `index` and stores `state` under
    /// `key` in the same synced batch (the purge point must never be
    /// behind what was deleted).
    pub fn raft_purge_to(&self, index: u64, key: &str, state: &[u8]) -> Result<(), StoreError> {
        let log = self.handle(Cf::RaftLog)?;
        let st = self.handle(Cf::RaftState)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(st, key.as_bytes(), state);
        match index.checked_add(1) {
            Some(end) => batch.delete_range_cf(log, &index_key(0)[..], &index_key(end)[..]),
            None => batch.delete_range_cf(log, &index_key(0)[..], &PAST_LAST_INDEX[..]),
        }
        self.db
            .write_opt(batch, &self.synced())
            .map_err(|e| self.err(e))
    }

    /// Deletes the whole Raft log and every state value (synced): the node
    /// no longer remembers any metadata group, vote or storage id. Used
    /// when a backup is restored, whose votes and log belong to another
    /// time.
    pub fn raft_clear(&self) -> Result<(), StoreError> {
        let log = self.handle(Cf::RaftLog)?;
        let st = self.handle(Cf::RaftState)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(log, &index_key(0)[..], &PAST_LAST_INDEX[..]);
        // State keys are short ASCII names.
        batch.delete_range_cf(st, &b""[..], &[0xff_u8][..]);
        self.db
            .write_opt(batch, &self.synced())
            .map_err(|e| self.err(e))
    }

    /// Stores `value` under `key` in `raft_state` (synced).
    pub fn raft_put_state(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let cf = self.handle(Cf::RaftState)?;
        self.db
            .put_cf_opt(cf, key.as_bytes(), value, &self.synced())
            .map_err(|e| self.err(e))
    }

    /// The value stored under `key` in `raft_state`.
    pub fn raft_get_state(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let cf = self.handle(Cf::RaftState)?;
        self.db.get_cf(cf, key.as_bytes()).map_err(|e| self.err(e))
    }
}
