//! The RocksDB-backed store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rocksdb::{
    BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily, ColumnFamilyDescriptor,
    CompactOptions, DB, DBCompressionType, Direction, IteratorMode, Options, ReadOptions,
    WaitForCompactOptions, WriteBatch, WriteOptions,
};

use crate::keys;
use crate::mutation;
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
    /// The metadata group's Raft log: index (u64, big-endian) → entry.
    RaftLog,
    /// The metadata group's vote, committed log id, purge point and
    /// state-machine snapshot, by name.
    RaftState,
}

impl Cf {
    /// Every column family.
    pub const ALL: [Cf; 9] = [
        Cf::Meta,
        Cf::Episodes,
        Cf::Edges,
        Cf::Terms,
        Cf::Vectors,
        Cf::Cold,
        Cf::Access,
        Cf::RaftLog,
        Cf::RaftState,
    ];
    /// Column families holding per-space data (all but `meta` and the
    /// metadata group's two).
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
            Cf::RaftLog => "raft_log",
            Cf::RaftState => "raft_state",
        }
    }
}

/// The warm tier: one RocksDB database with Engram's column families.
pub struct Store {
    pub(crate) db: DB,
    path: PathBuf,
    pub(crate) write_opts: WriteOptions,
    cache: Cache,
    /// Capacity of `cache` in bytes, as configured: rust-rocksdb's
    /// [`Cache`] has no capacity getter, and the DB-wide
    /// `rocksdb.block-cache-capacity` property describes the `default`
    /// column family's own (unused, 32 MiB) cache, not this one.
    cache_capacity: usize,
}

/// RocksDB figures for status and metrics, summed over column families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes held by the shared block cache.
    pub block_cache_usage_bytes: u64,
    /// Capacity of the shared block cache (`block_cache_mb` in bytes).
    pub block_cache_capacity_bytes: u64,
    /// Bytes RocksDB estimates compaction still has to rewrite.
    pub pending_compaction_bytes: u64,
    /// Size of all live SST files.
    pub sst_bytes: u64,
    /// Bytes in memtables (active and immutable).
    pub memtable_bytes: u64,
    /// Bytes RocksDB holds for open SST files outside the block cache
    /// (their index and filter blocks; `rocksdb.estimate-table-readers-mem`).
    pub table_readers_bytes: u64,
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

/// DB options that make RocksDB write a fresh MANIFEST (the live files
/// only) on every MANIFEST update and delete the previous one.
const MANIFEST_ROLL_OPTIONS: &str = "max_manifest_file_size=0;max_manifest_space_amp_pct=0";

/// How long [`Store::purge`] waits for RocksDB's background jobs (which
/// delete the files its compactions made obsolete) before checking.
const PURGE_WAIT: Duration = Duration::from_secs(30);

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
    if !config.compression {
        o.set_compression_type(DBCompressionType::None);
        o.set_bottommost_compression_type(DBCompressionType::None);
        return o;
    }
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
        let cache_capacity = config.block_cache_mb.saturating_mul(1024 * 1024);
        let cache = Cache::new_lru_cache(cache_capacity);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(config.max_background_jobs);
        db_opts.set_max_open_files(config.max_open_files);
        db_opts.set_manual_wal_flush(false);
        db_opts.set_atomic_flush(false);
        // Every MANIFEST write (flush, compaction) starts a new MANIFEST
        // holding only the live files, and the old one is deleted: the
        // smallest and largest keys of deleted SST files (posting keys hold
        // terms of forgotten content) leave the MANIFEST with the files.
        // See [`Store::purge`].
        let db_opts = db_opts
            .get_options_from_string(MANIFEST_ROLL_OPTIONS)
            .map_err(err)?;
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
            cache_capacity,
        })
    }

    /// Directory of the database.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, e: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            message: e.into_string(),
        }
    }

    pub(crate) fn handle(&self, cf: Cf) -> Result<&ColumnFamily, StoreError> {
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
    ///
    /// Fault point `lsm::apply` (compiled in with the `failpoints` feature,
    /// for tests): fails with [`StoreError::Rocks`] whose message is the
    /// point's argument, as RocksDB words it (`IO error: ...: Too many open
    /// files`), without writing anything.
    pub fn apply(&self, ops: &[Operation]) -> Result<(), StoreError> {
        let Some(last) = ops.last() else {
            return Ok(());
        };
        fail::fail_point!("lsm::apply", |message: Option<String>| {
            Err(StoreError::Rocks {
                path: self.path.clone(),
                message: message.unwrap_or_else(|| "IO error: injected fault".into()),
            })
        });
        let mut batch = WriteBatch::default();
        let meta = self.handle(Cf::Meta)?;
        for op in ops {
            keys::check_space(op.space)?;
            for m in &op.mutations {
                self.add(&mut batch, op.space, m)?;
            }
            batch.put_cf(meta, keys::applied_seq(op.space), op.seq.to_be_bytes());
            if mutation::erases_content(&op.mutations) {
                batch.put_cf(meta, keys::purge_due(op.space), op.lsn.to_be_bytes());
            }
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
                b.delete_cf(self.handle(Cf::Meta)?, keys::space_figures(space));
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

    /// The figures of `space` last written by [`Store::set_space_figures`]
    /// (opaque bytes owned by the graph), if any.
    pub fn space_figures(&self, space: SpaceId) -> Result<Option<Vec<u8>>, StoreError> {
        self.get(Cf::Meta, &keys::space_figures(space))
    }

    /// Records the figures (counts) of `space` for listing it while its
    /// indexes are not in memory. Written directly, not through a WAL
    /// record: they are a cache local to this node, stamped by the graph
    /// with the space's applied sequence so that stale ones are recognised
    /// and recounted. Dropping the space removes them.
    pub fn set_space_figures(&self, space: SpaceId, figures: &[u8]) -> Result<(), StoreError> {
        keys::check_space(space)?;
        self.db
            .put_cf_opt(
                self.handle(Cf::Meta)?,
                keys::space_figures(space),
                figures,
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

    pub(crate) fn scan_prefix<'a>(
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
            // Both from the shared cache every Engram column family uses; the
            // DB-wide properties would describe the `default` family's cache.
            block_cache_usage_bytes: self.cache.get_usage() as u64,
            block_cache_capacity_bytes: self.cache_capacity as u64,
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
            s.table_readers_bytes += prop("rocksdb.estimate-table-readers-mem");
        }
        s
    }

    /// Spaces whose content a record erased (a forget, a space deletion)
    /// since their last [`Store::purge`], with the LSN of the latest such
    /// record. [`Store::apply`] sets these marks in the batch that applies
    /// the record, so they survive a crash.
    pub fn purge_due(&self) -> Result<Vec<(SpaceId, u64)>, StoreError> {
        self.scan_prefix(Cf::Meta, &keys::meta_prefix_purge_due())?
            .map(|r| {
                let (k, v) = r?;
                let corrupt = || StoreError::Corrupt {
                    cf: "meta",
                    detail: "malformed purge mark".into(),
                };
                let space = keys::meta_space(&k).ok_or_else(corrupt)?;
                let lsn: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt())?;
                Ok((space, u64::from_be_bytes(lsn)))
            })
            .collect()
    }

    /// Physically removes what deletions left in the files of `spaces`:
    /// flushes every memtable (RocksDB's own WAL files that held the deleted
    /// values are then obsolete and deleted), compacts each space's key
    /// range in every data family down to the bottommost level with a
    /// forced bottommost pass (tombstones and the values they shadow, and
    /// older versions of overwritten values, are dropped), then compacts
    /// `meta` (so the last MANIFEST written describes only the new files),
    /// and waits up to 30 s for RocksDB's background jobs, which delete the
    /// obsolete files. Returns the spaces whose range still has a file
    /// holding deletions (a compaction failed: RocksDB does not report
    /// manual compaction errors through its C API; or new deletions were
    /// flushed meanwhile): purge them again later.
    ///
    /// Cost: rewrites every SST file overlapping the spaces' key ranges
    /// (about the spaces' size, twice for data that was not yet in the
    /// bottommost level), plus `meta` (small). Runs alongside writes:
    /// automatic compactions are not excluded.
    ///
    /// A checkpoint taken before (or while) this runs keeps hard links to
    /// the old files, and with them the deleted values, until removed.
    pub fn purge(&self, spaces: &[SpaceId]) -> Result<Vec<SpaceId>, StoreError> {
        for space in spaces {
            keys::check_space(*space)?;
        }
        self.flush()?;
        let mut opts = CompactOptions::default();
        opts.set_exclusive_manual_compaction(false);
        opts.set_bottommost_level_compaction(BottommostLevelCompaction::ForceOptimized);
        for space in spaces {
            let (start, end) = (keys::space_start(*space), keys::space_end(*space));
            for cf in Cf::DATA {
                self.db
                    .compact_range_cf_opt(self.handle(cf)?, Some(start), Some(end), &opts);
            }
        }
        self.db
            .compact_range_cf_opt(self.handle(Cf::Meta)?, None::<&[u8]>, None::<&[u8]>, &opts);
        let mut wait = WaitForCompactOptions::default();
        wait.set_timeout(u64::try_from(PURGE_WAIT.as_micros()).unwrap_or(u64::MAX));
        if let Err(e) = self.db.wait_for_compact(&wait) {
            tracing::debug!(error = %e, "waiting for RocksDB background jobs after a purge stopped");
        }
        let files = self.db.live_files().map_err(|e| self.err(e))?;
        let meta = Cf::Meta.name();
        Ok(spaces
            .iter()
            .copied()
            .filter(|space| {
                let (start, end) = (keys::space_start(*space), keys::space_end(*space));
                files.iter().any(|f| {
                    f.column_family_name != meta
                        && f.num_deletions > 0
                        && f.start_key.as_deref().is_none_or(|k| k < end.as_slice())
                        && f.end_key.as_deref().is_none_or(|k| k >= start.as_slice())
                })
            })
            .collect())
    }

    /// Removes purge marks: each `(space, lsn)` whose stored LSN is still at
    /// most `lsn` (a newer erasure keeps its mark). The caller must not
    /// apply records concurrently (the engine holds its apply lock).
    pub fn clear_purge_due(&self, marks: &[(SpaceId, u64)]) -> Result<(), StoreError> {
        let meta = self.handle(Cf::Meta)?;
        let mut batch = WriteBatch::default();
        for (space, lsn) in marks {
            keys::check_space(*space)?;
            let key = keys::purge_due(*space);
            let Some(v) = self.get(Cf::Meta, &key)? else {
                continue;
            };
            let stored: [u8; 8] = v.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                cf: "meta",
                detail: format!("{}-byte purge mark of space {space}", v.len()),
            })?;
            if u64::from_be_bytes(stored) <= *lsn {
                batch.delete_cf(meta, key);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.db
            .write_opt(batch, &self.write_opts)
            .map_err(|e| self.err(e))
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

#[cfg(test)]
mod purge_tests {
    use super::*;

    fn op(lsn: u64, space: SpaceId, seq: u64, mutations: Vec<Mutation>) -> Operation {
        Operation {
            lsn,
            space,
            seq,
            mutations,
        }
    }

    /// Files under `dir` (recursively) whose bytes contain `needle`.
    fn files_holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![dir.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if let Ok(bytes) = std::fs::read(&path) {
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        found.push(path);
                    }
                }
            }
        }
        found
    }

    #[test]
    fn purge_leaves_no_byte_of_a_deleted_value_or_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig {
            compression: false,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), &config).expect("open");
        let (gone, kept) = ([7; 16], [8; 16]);
        let marker = "qzxpurgemarker4711";
        store
            .apply(&[
                op(
                    1,
                    1,
                    1,
                    vec![
                        Mutation::PutEpisode {
                            id: gone,
                            record: format!("content {marker}").into_bytes(),
                        },
                        Mutation::PutPosting {
                            term: marker.into(),
                            id: gone,
                            value: vec![0, 0, 0, 1],
                        },
                    ],
                ),
                op(
                    2,
                    2,
                    1,
                    vec![Mutation::PutEpisode {
                        id: kept,
                        record: b"another space".to_vec(),
                    }],
                ),
            ])
            .expect("apply");
        store.flush().expect("flush");
        assert!(!files_holding(dir.path(), marker.as_bytes()).is_empty());
        assert!(
            store.purge_due().expect("marks").is_empty(),
            "puts erase nothing"
        );
        store
            .apply(&[op(
                3,
                1,
                2,
                vec![
                    Mutation::DeletePosting {
                        term: marker.into(),
                        id: gone,
                    },
                    Mutation::DeleteEpisode { id: gone },
                ],
            )])
            .expect("forget");
        let marks = store.purge_due().expect("marks");
        assert_eq!(marks, vec![(1, 3)]);
        assert_eq!(store.purge(&[1]).expect("purge"), Vec::<SpaceId>::new());
        store.clear_purge_due(&marks).expect("clear");
        assert!(store.purge_due().expect("marks").is_empty());
        let left = files_holding(dir.path(), marker.as_bytes());
        assert!(left.is_empty(), "deleted bytes left in {left:?}");
        assert_eq!(
            store.episode(2, &kept).expect("read"),
            Some(b"another space".to_vec())
        );
        assert_eq!(store.episode(1, &gone).expect("read"), None);
    }

    #[test]
    fn a_newer_erasure_keeps_its_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), &StoreConfig::default()).expect("open");
        let forget = |lsn| op(lsn, 1, lsn, vec![Mutation::DeleteEpisode { id: [1; 16] }]);
        store.apply(&[forget(1)]).expect("apply");
        let marks = store.purge_due().expect("marks");
        store.apply(&[forget(2)]).expect("apply");
        store.clear_purge_due(&marks).expect("clear");
        assert_eq!(store.purge_due().expect("marks"), vec![(1, 2)]);
    }
}
