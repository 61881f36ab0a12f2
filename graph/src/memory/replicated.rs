//! What the replication layer needs of the graph: a gate on who may
//! originate records ([`WriteAuthority`]), local ids for spaces another node
//! created, and keeping the map of spaces in step with replicated records
//! ([`Graph::apply_replicated`]).
//!
//! A replica appends its primary's records verbatim
//! ([`crate::Engine::append_replicated`]); the store applies them like any
//! record. What the store cannot do is the graph's own bookkeeping: a
//! replicated `CREATE_SPACE` must add the space to the map, a `DROP_SPACE`
//! must remove it, and any other record makes indexes held in memory stale
//! (replicas keep spaces unloaded: their next use loads them from the
//! store).

use std::sync::Arc;

use engram_lsm::{Mutation, SpaceId, keys};

use super::{Graph, GraphError, Space, invalid, kind, lock, read, write};
use crate::record;
use crate::snapshot;

/// Decides whether this node may originate records for a space (cluster
/// mode: only the space's primary may; replicas only append what their
/// primary sent). Without one, every write is admitted (standalone).
pub trait WriteAuthority: Send + Sync + std::fmt::Debug {
    /// `Ok` when this node may write to local space `space` (named `name`);
    /// otherwise the error the writer gets, usually
    /// [`GraphError::NotPrimary`].
    fn admit(&self, space: SpaceId, name: &str) -> Result<(), GraphError>;
}

impl Graph {
    /// Sets who may originate writes; `false` (and nothing changes) when
    /// one is set already.
    pub fn set_write_authority(&self, authority: Arc<dyn WriteAuthority>) -> bool {
        self.authority.set(authority).is_ok()
    }

    /// Refuses an origin write to `space` unless the write authority (if
    /// any) admits it.
    pub(super) fn admit(&self, space: &Space) -> Result<(), GraphError> {
        match self.authority.get() {
            Some(a) => a.admit(space.id, &space.record.name),
            None => Ok(()),
        }
    }

    /// A fresh local id for a space another node created: its replicated
    /// records are appended under it (the `CREATE_SPACE` record first).
    pub fn reserve_space_id(&self) -> Result<SpaceId, GraphError> {
        let mut next = lock(&self.next_space_id);
        let id = *next;
        if id > keys::MAX_SPACE_ID {
            return Err(invalid("space", "space ids exhausted"));
        }
        *next += 1;
        Ok(id)
    }

    /// Makes sure no space created or reserved later gets an id at or
    /// below `id`: ids held by replication state whose space has no record
    /// yet (reserved before a restart) are not reused.
    pub fn reserve_space_ids_through(&self, id: SpaceId) {
        let mut next = lock(&self.next_space_id);
        *next = (*next).max(id.saturating_add(1));
    }

    /// The name of the local space `id`, if it is in the map.
    pub fn space_name_of(&self, id: SpaceId) -> Option<String> {
        read(&self.spaces)
            .values()
            .find(|s| s.id == id)
            .map(|s| s.record.name.clone())
    }

    /// Keeps the map of spaces in step with a replicated record of local
    /// space `id` that is durable and applied to the store: a
    /// `CREATE_SPACE` adds the space (unloaded), a `DROP_SPACE` removes
    /// it, and any other record drops the space's in-memory indexes, which
    /// it made stale (the next use loads them from the store).
    ///
    /// A `CREATE_SPACE` for a name this node holds under another id is
    /// refused with [`GraphError::SpaceExists`]: two spaces never share a
    /// name.
    pub fn apply_replicated(
        &self,
        id: SpaceId,
        wal_kind: u8,
        mutations: &[Mutation],
    ) -> Result<(), GraphError> {
        match wal_kind {
            kind::CREATE_SPACE => self.replicated_create(id, mutations),
            kind::DROP_SPACE => {
                self.replicated_drop(id);
                Ok(())
            }
            _ => {
                self.replicated_change(id);
                Ok(())
            }
        }
    }

    /// Appends the `EPOCH_START` record of a new epoch to local space `id`
    /// (an origin write: the write authority must admit it); returns its
    /// sequence number.
    pub fn write_epoch_start(&self, id: SpaceId) -> Result<u64, GraphError> {
        let space = read(&self.spaces)
            .values()
            .find(|s| s.id == id)
            .cloned()
            .ok_or_else(|| GraphError::SpaceNotFound(format!("#{id}")))?;
        Ok(self.submit(&space, kind::EPOCH_START, Vec::new())?.seq)
    }

    /// Drops this node's copy of local space `id` (named `name`), deleted
    /// elsewhere when its `DROP_SPACE` record could not reach this node
    /// (the space was retired meanwhile). Not an origin write of the
    /// space's data: no write authority is asked.
    pub fn drop_replicated_copy(&self, id: SpaceId, name: &str) -> Result<(), GraphError> {
        let _ddl = lock(&self.ddl);
        let Some(space) = read(&self.spaces).get(name).filter(|s| s.id == id).cloned() else {
            return Ok(());
        };
        {
            let mut alive = write(&space.alive);
            self.engine
                .submit(id, kind::DROP_SPACE, vec![Mutation::DropSpace])?;
            *alive = false;
        }
        *write(&space.state) = None;
        write(&self.spaces).remove(name);
        let _ = snapshot::remove(&self.index_dir, id);
        Ok(())
    }

    /// Makes the copy installed under the fresh id `id` (its image written
    /// with [`engram_lsm::Store::install_begin`] and
    /// [`engram_lsm::Store::install_put`]) this node's copy of its space,
    /// holding the records through `seq`, with replication state `state`;
    /// the copy under `replaces`, if any, is dropped in the same synced
    /// write. The installed space joins the map unloaded.
    pub fn commit_installed_copy(
        &self,
        id: SpaceId,
        seq: u64,
        state: &[u8],
        replaces: Option<SpaceId>,
    ) -> Result<String, GraphError> {
        let _ddl = lock(&self.ddl);
        let store = self.engine.store();
        let Some(bytes) = store
            .spaces()?
            .into_iter()
            .find_map(|(s, b)| (s == id).then_some(b))
        else {
            return Err(GraphError::Corrupt(format!(
                "the copy installed under space id {id} carries no space record"
            )));
        };
        let record = record::decode::<record::SpaceRecord>(&bytes, "space record")?;
        let old = replaces.and_then(|r| read(&self.spaces).values().find(|s| s.id == r).cloned());
        if let Some(existing) = read(&self.spaces).get(&record.name) {
            if Some(existing.id) != replaces {
                return Err(GraphError::SpaceExists(record.name));
            }
        }
        match &old {
            Some(o) => {
                let mut alive = write(&o.alive);
                self.engine.install_commit(id, seq, state, replaces)?;
                *alive = false;
                *write(&o.state) = None;
                write(&self.spaces).remove(&o.record.name);
                let _ = snapshot::remove(&self.index_dir, o.id);
            }
            None => self.engine.install_commit(id, seq, state, replaces)?,
        }
        let _ = snapshot::remove(&self.index_dir, id);
        let name = record.name.clone();
        let space = Space::new(id, record, None, self.config.hot_capacity);
        write(&self.spaces).insert(name.clone(), Arc::new(space));
        self.reserve_space_ids_through(id);
        Ok(name)
    }

    /// Whether a replicated `CREATE_SPACE` of a space named `name` under
    /// local id `id` would be refused (checked before appending it).
    pub fn check_replicated_create(&self, id: SpaceId, name: &str) -> Result<(), GraphError> {
        match read(&self.spaces).get(name) {
            Some(s) if s.id != id => Err(GraphError::SpaceExists(name.to_owned())),
            _ => Ok(()),
        }
    }

    fn replicated_create(&self, id: SpaceId, mutations: &[Mutation]) -> Result<(), GraphError> {
        let Some(bytes) = mutations.iter().find_map(|m| match m {
            Mutation::PutSpace { record } => Some(record),
            _ => None,
        }) else {
            return Err(GraphError::Corrupt(format!(
                "a replicated CREATE_SPACE record of space {id} carries no space record"
            )));
        };
        let record = record::decode::<record::SpaceRecord>(bytes, "space record")?;
        let _ddl = lock(&self.ddl);
        let mut spaces = write(&self.spaces);
        if let Some(existing) = spaces.get(&record.name) {
            if existing.id == id {
                return Ok(());
            }
            return Err(GraphError::SpaceExists(record.name));
        }
        let _ = snapshot::remove(&self.index_dir, id);
        let name = record.name.clone();
        let space = Space::new(id, record, None, self.config.hot_capacity);
        spaces.insert(name, Arc::new(space));
        Ok(())
    }

    fn replicated_drop(&self, id: SpaceId) {
        let _ddl = lock(&self.ddl);
        let found = read(&self.spaces)
            .iter()
            .find(|(_, s)| s.id == id)
            .map(|(n, s)| (n.clone(), s.clone()));
        if let Some((name, space)) = found {
            *write(&space.alive) = false;
            *write(&space.state) = None;
            write(&self.spaces).remove(&name);
        }
        let _ = snapshot::remove(&self.index_dir, id);
    }

    fn replicated_change(&self, id: SpaceId) {
        let found = read(&self.spaces).values().find(|s| s.id == id).cloned();
        if let Some(space) = found {
            if space.is_loaded() {
                let _loading = lock(&space.loading);
                *write(&space.state) = None;
                *lock(&space.figures) = None;
                let capacity = lock(&space.hot).capacity();
                *lock(&space.hot) = crate::hot::HotCache::new(capacity);
                let _ = snapshot::remove(&self.index_dir, id);
            }
        }
    }
}
