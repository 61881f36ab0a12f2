//! Per-space replication state (`meta` key `0x06`): which cluster-wide
//! space this local space is a copy of, the epoch it promised and to whom,
//! and its epoch history. The bytes belong to the replication layer; they
//! are written synced, outside the WAL, because a promise must be durable
//! before the replica answers, and they survive the space's data being
//! dropped until deleted explicitly.

use crate::{Cf, SpaceId, Store, StoreError, keys};

impl Store {
    /// Stores `space`'s replication state (synced).
    pub fn put_replica_state(&self, space: SpaceId, state: &[u8]) -> Result<(), StoreError> {
        keys::check_space(space)?;
        self.db
            .put_cf_opt(
                self.handle(Cf::Meta)?,
                keys::replica_state(space),
                state,
                &self.synced(),
            )
            .map_err(|e| self.err(e))
    }

    /// `space`'s replication state, if stored.
    pub fn replica_state(&self, space: SpaceId) -> Result<Option<Vec<u8>>, StoreError> {
        keys::check_space(space)?;
        self.db
            .get_cf(self.handle(Cf::Meta)?, keys::replica_state(space))
            .map_err(|e| self.err(e))
    }

    /// Every stored replication state, by local space id.
    pub fn replica_states(&self) -> Result<Vec<(SpaceId, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan_prefix(Cf::Meta, &keys::meta_prefix_replica_state())? {
            let (k, v) = item?;
            let space = keys::meta_space(&k).ok_or(StoreError::Corrupt {
                cf: "meta",
                detail: "malformed replication-state key".into(),
            })?;
            out.push((space, v.into_vec()));
        }
        Ok(out)
    }

    /// Deletes `space`'s replication state (synced).
    pub fn delete_replica_state(&self, space: SpaceId) -> Result<(), StoreError> {
        keys::check_space(space)?;
        self.db
            .delete_cf_opt(
                self.handle(Cf::Meta)?,
                keys::replica_state(space),
                &self.synced(),
            )
            .map_err(|e| self.err(e))
    }
}
