//! The RocksDB-backed store.

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use crate::keys;
use crate::{EpisodeId, Mutation, Operation, SpaceId, StoreConfig, StoreError};

/// Column families. Names are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cf {
    /// Applied sequence numbers and space records.
    Meta,
    /// Episode records.
    Episodes,
    /// Edges.
    Edges,
    /// Lexical postings.
    Terms,
    /// Embeddings.
    Vectors,
    /// Archived episodes (zstd at every level).
    Cold,
    /// Access statistics of episodes (count, last access), written in
    /// batches after recalls.
    Access,
}

impl Cf {
    /// Every column family.
    pub const ALL: [Cf; 7] = [
        Cf::Meta,
        Cf::Episodes,
        Cf::Edges,
        Cf::Terms,
        Cf::Vectors,
        Cf::Cold,
        Cf::Access,
    ];
    /// Column families holding per-space data (all but `meta`).
    pub const DATA: [Cf; 6] = [
        Cf::Episodes,
        Cf::Edges,
        Cf::Terms,
        Cf::Vectors,
        Cf::Cold,
        Cf::Access,
    ];

    /// On-disk name.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Episodes => "episodes",
            Cf::Edges => "edges",
            Cf::Terms => "terms",
            Cf::Vectors => "vectors",
            Cf::Cold => "cold",
            Cf::Access => "access",
        }
    }
}

/// The warm tier: one RocksDB database with Engram's column families.
pub struct Store {
    db: DB,
    path: PathBuf,
    write_opts: WriteOptions,
    cache: Cache,
}

/// RocksDB figures for status and metrics, summed over column families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes held by the shared block cache.
    pub block_cache_usage_bytes: u64,
    /// Block cache capacity.
    pub block_cache_capacity_bytes: u64,
    /// Bytes RocksDB estimates compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// Size of all live SST files.
    pub sst_bytes: u64,
    /// Bytes in memtables (active and immutable).
    pub memtable_bytes: u64,
    /// Compactions running now.
    pub running_compactions: u64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A key/value pair read from a scan.
pub type Entry = (Box<[u8]>, Box<[u8]>);

fn cf_options(cf: Cf, config: &StoreConfig, cache: &Cache) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    if config.bloom_bits_per_key > 0.0 {
        table.set_bloom_filter(config.bloom_bits_per_key, false);
    }
    let mut o = Options::default();
    o.set_block_based_table_factory(&table);
    o.set_write_buffer_size(config.write_buffer_mb * 1024 * 1024);
    if cf == Cf::Cold {
        o.set_compression_type(DBCompressionType::Zstd);
        o.set_compression_options(-14, config.zstd_level, 0, 0);
    } else {
        o.set_compression_type(DBCompressionType::Lz4);
    }
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    o.set_bottommost_compression_options(-14, config.zstd_level, 0, 0, true);
    o
}

impl Store {
    /// Opens (creating if needed) the store at `path`.
    ///
    /// Consistency across column families after a crash comes from RocksDB's
    /// own WAL, which stays on (unsynced): a WriteBatch spanning several
    /// families is recovered all or nothing, and with more than one family
    /// RocksDB syncs its WAL before a flush, so no family can be persisted
    /// ahead of another. Atomic flush is therefore not enabled.
    pub fn open(path: &Path, config: &StoreConfig) -> Result<Store, StoreError> {
        config.validate()?;
        let err = |e: rocksdb::Error| StoreError::Rocks {
            path: path.to_path_buf(),
            message: e.into_string(),
        };
        let cache = Cache::new_lru_cache(config.block_cache_mb * 1024 * 1024);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(config.max_background_jobs);
        db_opts.set_max_open_files(config.max_open_files);
        db_opts.set_manual_wal_flush(false);
        db_opts.set_atomic_flush(false);
        let cfs = Cf::ALL
            .iter()
            .map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_options(*cf, config, &cache)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs).map_err(err)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(config.sync_writes);
        Ok(Store {
            db,
            path: path.to_path_buf(),
            write_opts,
            cache,
        })
    }

    /// Directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }

    fn handle(&self, cf: Cf) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(cf.name())
            .ok_or_else(|| StoreError::Rocks {
                path: self.path.clone(),
                message: format!("column family {} missing", cf.name()),
            })
    }

    /// Applies `ops` in order as one atomic WriteBatch that also records each
    /// touched space's sequence number and the last op's LSN. The caller
    /// (the engine) passes each record once, in LSN order, skipping records
    /// whose sequence is not above [`Store::applied_seq`].
    pub fn apply(&self, ops: &[Operation]) -> Result<(), StoreError> {
        let Some(last) = ops.last() else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        let meta = self.handle(Cf::Meta)?;
        for op in ops {
            keys::check_space(op.space)?;
            for m in &op.mutations {
                self.add(&mut batch, op.space, m)?;
            }
            batch.put_cf(meta, keys::applied_seq(op.space), op.seq.to_be_bytes());
        }
        batch.put_cf(meta, keys::APPLIED_LSN, last.lsn.to_be_bytes());
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| self.err(e))
    }

    fn add(&self, b: &mut WriteBatch, space: SpaceId, m: &Mutation) -> Result<(), StoreError> {
        match m {
            Mutation::PutSpace { record } => {
                b.put_cf(self.handle(Cf::Meta)?, keys::space_record(space), record)
            }
            Mutation::DropSpace => {
                for cf in Cf::DATA {
                    b.delete_range_cf(
                        self.handle(cf)?,
                        keys::space_start(space),
                        keys::space_end(space),
                    );
                }
                b.delete_cf(self.handle(Cf::Meta)?, keys::space_record(space));
                b.delete_cf(self.handle(Cf::Meta)?, keys::consolidation_cursor(space));
            }
            Mutation::PutEpisode { id, record } => {
                b.put_cf(self.handle(Cf::Episodes)?, keys::episode(space, id), record)
            }
            Mutation::DeleteEpisode { id } => {
                b.delete_cf(self.handle(Cf::Episodes)?, keys::episode(space, id))
            }
            Mutation::PutEdge { from, to, record } => {
                b.put_cf(self.handle(Cf::Edges)?, keys::edge(space, from, to), record)
            }
            Mutation::DeleteEdge { from, to } => {
                b.delete_cf(self.handle(Cf::Edges)?, keys::edge(space, from, to))
            }
            Mutation::PutPosting { term, id, value } => b.put_cf(
                self.handle(Cf::Terms)?,
                keys::posting(space, term, id)?,
                value,
            ),
            Mutation::DeletePosting { term, id } => {
                b.delete_cf(self.handle(Cf::Terms)?, keys::posting(space, term, id)?)
            }
            Mutation::PutVector { id, vector } => {
                b.put_cf(self.handle(Cf::Vectors)?, keys::episode(space, id), vector)
            }
            Mutation::DeleteVector { id } => {
                b.delete_cf(self.handle(Cf::Vectors)?, keys::episode(space, id))
            }
            Mutation::PutCold { id, record } => {
                b.put_cf(self.handle(Cf::Cold)?, keys::episode(space, id), record)
            }
            Mutation::DeleteCold { id } => {
                b.delete_cf(self.handle(Cf::Cold)?, keys::episode(space, id))
            }
            Mutation::PutAccess { id, value } => {
                b.put_cf(self.handle(Cf::Access)?, keys::episode(space, id), value)
            }
            Mutation::DeleteAccess { id } => {
                b.delete_cf(self.handle(Cf::Access)?, keys::episode(space, id))
            }
        }
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.handle(cf)?, key)
            .map_err(|e| self.err(e))
    }

    fn get_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        match self.get(Cf::Meta, key)? {
            None => Ok(0),
            Some(v) => {
                let b: [u8; 8] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                    cf: "meta",
                    detail: format!("{}-byte counter under key {key:?}", v.len()),
                })?;
                Ok(u64::from_be_bytes(b))
            }
        }
    }

    /// Highest LSN applied (0 for a new store).
    pub fn applied_lsn(&self) -> Result<u64, StoreError> {
        self.get_u64(keys::APPLIED_LSN)
    }

    /// Highest sequence number applied for `space` (0 if none). Survives
    /// dropping the space.
    pub fn applied_seq(&self, space: SpaceId) -> Result<u64, StoreError> {
        self.get_u64(&keys::applied_seq(space))
    }

    /// Every space that has ever had a record applied, with its applied sequence.
    pub fn applied_seqs(&self) -> Result<Vec<(SpaceId, u64)>, StoreError> {
        self.scan_prefix(Cf::Meta, &keys::meta_prefix_applied())?
            .map(|r| {
                let (k, v) = r?;
                let corrupt = || StoreError::Corrupt {
                    cf: "meta",
                    detail: "malformed applied-sequence entry".into(),
                };
                let space = keys::meta_space(&k).ok_or_else(corrupt)?;
                let seq: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt())?;
                Ok((space, u64::from_be_bytes(seq)))
            })
            .collect()
    }

    /// Space records of the spaces that exist.
    pub fn spaces(&self) -> Result<Vec<(SpaceId, Vec<u8>)>, StoreError> {
        self.scan_prefix(Cf::Meta, &keys::meta_prefix_spaces())?
            .map(|r| {
                let (k, v) = r?;
                let space = keys::meta_space(&k).ok_or(StoreError::Corrupt {
                    cf: "meta",
                    detail: "malformed space key".into(),
                })?;
                Ok((space, v.into_vec()))
            })
            .collect()
    }

    /// Where the last consolidation run of `space` stopped (the id of the
    /// last episode it examined), if one has run since the space was created.
    pub fn consolidation_cursor(&self, space: SpaceId) -> Result<Option<EpisodeId>, StoreError> {
        let Some(v) = self.get(Cf::Meta, &keys::consolidation_cursor(space))? else {
            return Ok(None);
        };
        let id: EpisodeId = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
            cf: "meta",
            detail: format!("{}-byte consolidation cursor of space {space}", v.len()),
        })?;
        Ok(Some(id))
    }

    /// Records where consolidation of `space` stopped. Written directly, not
    /// through a WAL record: it is a position to resume from, local to this
    /// node, and losing it only makes the next run start again from the
    /// oldest episode. Dropping the space removes it.
    pub fn set_consolidation_cursor(
        &self,
        space: SpaceId,
        id: &EpisodeId,
    ) -> Result<(), StoreError> {
        keys::check_space(space)?;
        self.db
            .put_cf_opt(
                self.handle(Cf::Meta)?,
                keys::consolidation_cursor(space),
                id,
                &self.write_opts,
            )
            .map_err(|e| self.err(e))
    }

    /// An episode record.
    pub fn episode(&self, space: SpaceId, id: &EpisodeId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Episodes, &keys::episode(space, id))
    }

    /// An embedding.
    pub fn vector(&self, space: SpaceId, id: &EpisodeId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Vectors, &keys::episode(space, id))
    }

    /// An archived episode.
    pub fn cold(&self, space: SpaceId, id: &EpisodeId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Cold, &keys::episode(space, id))
    }

    /// An episode record from the warm family or, failing that, the cold
    /// one, both read from one RocksDB snapshot. A move between the two
    /// (archive, promotion) is one atomic batch, so a record that exists is
    /// always found, whichever way it is moving; two separate reads could
    /// miss it in both.
    pub fn episode_in_any_tier(
        &self,
        space: SpaceId,
        id: &EpisodeId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let key = keys::episode(space, id);
        let snapshot = self.db.snapshot();
        if let Some(v) = snapshot
            .get_cf(self.handle(Cf::Episodes)?, key)
            .map_err(|e| self.err(e))?
        {
            return Ok(Some(v));
        }
        snapshot
            .get_cf(self.handle(Cf::Cold)?, key)
            .map_err(|e| self.err(e))
    }

    /// One edge's record.
    pub fn edge(
        &self,
        space: SpaceId,
        from: &EpisodeId,
        to: &EpisodeId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Edges, &keys::edge(space, from, to))
    }

    /// Every key/value of `space` in a data column family, in key order
    /// (decode keys with the functions in [`crate::keys`]).
    pub fn scan_space<'a>(
        &'a self,
        cf: Cf,
        space: SpaceId,
    ) -> Result<impl Iterator<Item = Result<Entry, StoreError>> + use<'a>, StoreError> {
        keys::check_space(space)?;
        self.scan_range(cf, &keys::space_start(space), &keys::space_end(space))
    }

    /// Edges leaving `from`: (target id, record).
    pub fn edges_from(
        &self,
        space: SpaceId,
        from: &EpisodeId,
    ) -> Result<Vec<(EpisodeId, Vec<u8>)>, StoreError> {
        self.scan_prefix(Cf::Edges, &keys::edges_from(space, from))?
            .map(|r| {
                let (k, v) = r?;
                let (_, _, to) = keys::decode_edge(&k).ok_or(StoreError::Corrupt {
                    cf: "edges",
                    detail: "malformed edge key".into(),
                })?;
                Ok((to, v.into_vec()))
            })
            .collect()
    }

    /// Postings of `term`: (episode id, value).
    pub fn postings(
        &self,
        space: SpaceId,
        term: &str,
    ) -> Result<Vec<(EpisodeId, Vec<u8>)>, StoreError> {
        let prefix = keys::term_prefix(space, term)?;
        self.scan_prefix(Cf::Terms, &prefix)?
            .map(|r| {
                let (k, v) = r?;
                let id: EpisodeId = k
                    .get(prefix.len()..)
                    .and_then(|s| s.try_into().ok())
                    .ok_or(StoreError::Corrupt {
                        cf: "terms",
                        detail: "malformed posting key".into(),
                    })?;
                Ok((id, v.into_vec()))
            })
            .collect()
    }

    fn scan_prefix<'a>(
        &'a self,
        cf: Cf,
        prefix: &[u8],
    ) -> Result<impl Iterator<Item = Result<Entry, StoreError>> + use<'a>, StoreError> {
        let mut end = prefix.to_vec();
        // The smallest key greater than every key starting with `prefix`.
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                break;
            }
        }
        self.scan_range(cf, prefix, &end)
    }

    fn scan_range<'a>(
        &'a self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
    ) -> Result<impl Iterator<Item = Result<Entry, StoreError>> + use<'a>, StoreError> {
        let mut opts = ReadOptions::default();
        if !end.is_empty() {
            opts.set_iterate_upper_bound(end.to_vec());
        }
        let it = self.db.iterator_cf_opt(
            self.handle(cf)?,
            opts,
            IteratorMode::From(start, Direction::Forward),
        );
        Ok(it.map(move |r| r.map_err(|e| self.err(e))))
    }

    /// Syncs RocksDB's own WAL, making everything applied so far durable in
    /// the store. The engine calls this before releasing WAL segments.
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        self.db.flush_wal(true).map_err(|e| self.err(e))
    }

    /// Flushes every memtable to SST files.
    pub fn flush(&self) -> Result<(), StoreError> {
        let cfs: Vec<&ColumnFamily> = Cf::ALL
            .iter()
            .map(|cf| self.handle(*cf))
            .collect::<Result<_, _>>()?;
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(|e| self.err(e))
    }

    /// Current RocksDB figures (cheap: in-memory properties only).
    pub fn stats(&self) -> StoreStats {
        let mut s = StoreStats {
            block_cache_usage_bytes: self.cache.get_usage() as u64,
            block_cache_capacity_bytes: self
                .db
                .property_int_value("rocksdb.block-cache-capacity")
                .ok()
                .flatten()
                .unwrap_or(0),
            running_compactions: self
                .db
                .property_int_value("rocksdb.num-running-compactions")
                .ok()
                .flatten()
                .unwrap_or(0),
            ..StoreStats::default()
        };
        for cf in Cf::ALL {
            let Ok(h) = self.handle(cf) else { continue };
            let prop = |name: &str| {
                self.db
                    .property_int_value_cf(h, name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            s.pending_compaction_bytes += prop("rocksdb.estimate-pending-compaction-bytes");
            s.sst_bytes += prop("rocksdb.total-sst-files-size");
            s.memtable_bytes += prop("rocksdb.cur-size-all-mem-tables");
        }
        s
    }

    /// Writes a consistent, openable copy of the store to `dir` (which must
    /// not exist) using RocksDB checkpoints (hard links where possible).
    pub fn checkpoint(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.exists() {
            return Err(StoreError::CheckpointExists(dir.to_path_buf()));
        }
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(|e| self.err(e))?;
        cp.create_checkpoint(dir).map_err(|e| self.err(e))
    }
}
