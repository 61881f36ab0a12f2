//! Copying a whole space between nodes: [`Store::export_space`] reads a
//! consistent image of one space (its data in every data column family,
//! its meta entries and its applied sequence number, all under one RocksDB
//! snapshot), and the install functions write such an image under a fresh
//! local space id on another node.
//!
//! An install is crash-safe: [`Store::install_begin`] marks the new id as
//! *installing* (synced, `meta` key `0x07`) before any of its keys is
//! written; [`Store::install_commit`] writes the applied sequence number
//! and the replication state, drops the copy it replaces and clears the
//! mark in one synced WriteBatch. A crash before the commit leaves keys
//! under an id that is only marked installing: [`Store::abandoned_installs`]
//! finds them at the next start and [`Store::install_abort`] removes them.
//! No reader sees a half space, because nothing names the new id before the
//! commit.

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};

use crate::{Cf, SpaceId, Store, StoreError, keys};

/// Where an exported entry belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFamily {
    /// A data column family; keys are without the space prefix.
    Data(Cf),
    /// A per-space `meta` entry; the key is its one-byte tag
    /// ([`META_TAGS`]).
    Meta,
}

impl ImageFamily {
    /// Name on the wire: the column family's, or `"meta"`.
    pub fn name(self) -> &'static str {
        match self {
            ImageFamily::Data(cf) => cf.name(),
            ImageFamily::Meta => "meta",
        }
    }

    /// The family named `name`, if an image may carry it.
    pub fn from_name(name: &str) -> Option<ImageFamily> {
        if name == "meta" {
            return Some(ImageFamily::Meta);
        }
        Cf::DATA
            .iter()
            .find(|cf| cf.name() == name)
            .map(|cf| ImageFamily::Data(*cf))
    }
}

/// Per-space `meta` entries an image carries: the space record, the
/// consolidation cursor and the figures (not the applied sequence number,
/// purge marks or replication state, which belong to the node).
pub const META_TAGS: [u8; 3] = [0x02, 0x03, 0x05];

fn meta_key(tag: u8, space: SpaceId) -> [u8; 5] {
    let mut k = [tag, 0, 0, 0, 0];
    k[1..].copy_from_slice(&space.to_be_bytes());
    k
}

fn prefixed(space: SpaceId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&keys::space_start(space));
    k.extend_from_slice(key);
    k
}

impl Store {
    /// Reads `space` under one RocksDB snapshot: calls `sink` for every
    /// entry (meta entries first, then each data column family in key
    /// order) and returns the space's applied sequence number at that
    /// snapshot. `sink` returning `false` stops the export early
    /// (returns `Ok(None)`).
    pub fn export_space(
        &self,
        space: SpaceId,
        mut sink: impl FnMut(ImageFamily, &[u8], &[u8]) -> bool,
    ) -> Result<Option<u64>, StoreError> {
        keys::check_space(space)?;
        let snapshot = self.db.snapshot();
        let meta = self.handle(Cf::Meta)?;
        let seq = match snapshot
            .get_cf(meta, keys::applied_seq(space))
            .map_err(|e| self.err(e))?
        {
            None => 0,
            Some(v) => {
                let b: [u8; 8] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    cf: "meta",
                    detail: format!("{}-byte applied sequence of space {space}", v.len()),
                })?;
                u64::from_be_bytes(b)
            }
        };
        for tag in META_TAGS {
            if let Some(v) = snapshot
                .get_cf(meta, meta_key(tag, space))
                .map_err(|e| self.err(e))?
            {
                if !sink(ImageFamily::Meta, &[tag], &v) {
                    return Ok(None);
                }
            }
        }
        for cf in Cf::DATA {
            let mut opts = ReadOptions::default();
            opts.set_snapshot(&snapshot);
            opts.set_iterate_upper_bound(keys::space_end(space).to_vec());
            // Bulk reads should not push the serving working set out.
            opts.fill_cache(false);
            let start = keys::space_start(space);
            let it = self.db.iterator_cf_opt(
                self.handle(cf)?,
                opts,
                IteratorMode::From(&start, rocksdb::Direction::Forward),
            );
            for item in it {
                let (k, v) = item.map_err(|e| self.err(e))?;
                let key = k.get(4..).unwrap_or_default();
                if !sink(ImageFamily::Data(cf), key, &v) {
                    return Ok(None);
                }
            }
        }
        Ok(Some(seq))
    }

    /// Marks `space` (a fresh id) as being installed, synced, before any
    /// of its keys is written.
    pub fn install_begin(&self, space: SpaceId) -> Result<(), StoreError> {
        keys::check_space(space)?;
        self.db
            .put_cf_opt(
                self.handle(Cf::Meta)?,
                keys::installing(space),
                [],
                &self.synced(),
            )
            .map_err(|e| self.err(e))
    }

    /// Writes image entries of `space` (being installed), not synced: the
    /// commit's synced write covers them (RocksDB's WAL is sequential).
    pub fn install_put(
        &self,
        space: SpaceId,
        entries: &[(ImageFamily, Vec<u8>, Vec<u8>)],
    ) -> Result<(), StoreError> {
        keys::check_space(space)?;
        let mut batch = WriteBatch::default();
        for (family, key, value) in entries {
            match family {
                ImageFamily::Data(cf) => {
                    if !Cf::DATA.contains(cf) {
                        return Err(StoreError::Corrupt {
                            cf: "meta",
                            detail: format!("an image may not write column family {}", cf.name()),
                        });
                    }
                    batch.put_cf(self.handle(*cf)?, prefixed(space, key), value);
                }
                ImageFamily::Meta => {
                    let tag = match key.as_slice() {
                        [t] if META_TAGS.contains(t) => *t,
                        _ => {
                            return Err(StoreError::Corrupt {
                                cf: "meta",
                                detail: format!("an image may not write meta key {key:?}"),
                            });
                        }
                    };
                    batch.put_cf(self.handle(Cf::Meta)?, meta_key(tag, space), value);
                }
            }
        }
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| self.err(e))
    }

    /// Makes the installed `space` the node's copy, in one synced
    /// WriteBatch: its applied sequence number `seq` and replication state
    /// `state` are written and the installing mark cleared; the copy it
    /// replaces (`replaces`), if any, loses its data, meta entries and
    /// replication state (its applied sequence number stays, so replaying
    /// its old records can never bring it back).
    pub fn install_commit(
        &self,
        space: SpaceId,
        seq: u64,
        state: &[u8],
        replaces: Option<SpaceId>,
    ) -> Result<(), StoreError> {
        keys::check_space(space)?;
        let meta = self.handle(Cf::Meta)?;
        let mut batch = WriteBatch::default();
        if let Some(old) = replaces {
            keys::check_space(old)?;
            self.add_drop(&mut batch, old)?;
            batch.delete_cf(meta, keys::replica_state(old));
            // Its content is erased: the next purge pass compacts it away
            // like a dropped space's.
            let lsn = self.applied_lsn()?;
            batch.put_cf(meta, keys::purge_due(old), lsn.to_be_bytes());
        }
        batch.put_cf(meta, keys::applied_seq(space), seq.to_be_bytes());
        batch.put_cf(meta, keys::replica_state(space), state);
        batch.delete_cf(meta, keys::installing(space));
        self.db
            .write_opt(batch, &self.synced())
            .map_err(|e| self.err(e))
    }

    /// Removes everything written under `space` by an install that did not
    /// commit (synced).
    pub fn install_abort(&self, space: SpaceId) -> Result<(), StoreError> {
        keys::check_space(space)?;
        let mut batch = WriteBatch::default();
        self.add_drop(&mut batch, space)?;
        batch.delete_cf(self.handle(Cf::Meta)?, keys::installing(space));
        self.db
            .write_opt(batch, &self.synced())
            .map_err(|e| self.err(e))
    }

    /// Ids marked installing whose install never committed (a crash).
    pub fn abandoned_installs(&self) -> Result<Vec<SpaceId>, StoreError> {
        let mut out = Vec::new();
        for item in self.scan_prefix(Cf::Meta, &keys::meta_prefix_installing())? {
            let (k, _) = item?;
            let space = keys::meta_space(&k).ok_or(StoreError::Corrupt {
                cf: "meta",
                detail: "malformed installing key".into(),
            })?;
            out.push(space);
        }
        Ok(out)
    }

    /// Adds the deletion of `space`'s data and per-space meta entries
    /// (not its applied sequence number) to `batch`.
    fn add_drop(&self, batch: &mut WriteBatch, space: SpaceId) -> Result<(), StoreError> {
        for cf in Cf::DATA {
            batch.delete_range_cf(
                self.handle(cf)?,
                keys::space_start(space),
                keys::space_end(space),
            );
        }
        let meta = self.handle(Cf::Meta)?;
        for tag in META_TAGS {
            batch.delete_cf(meta, meta_key(tag, space));
        }
        Ok(())
    }
}
