//! Warm-store configuration. `cmd` maps the `[storage]` section of the TOML
//! config onto this struct.

use crate::StoreError;

/// RocksDB tuning. `Default` gives the production defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Shared LRU block cache for all column families, in MiB (default 256).
    pub block_cache_mb: usize,
    /// Bloom filter bits per key for point lookups (default 10; 0 disables).
    pub bloom_bits_per_key: f64,
    /// Memtable size per column family, in MiB (default 64).
    pub write_buffer_mb: usize,
    /// Background flush and compaction threads (default 2).
    pub max_background_jobs: i32,
    /// zstd level for the bottommost level and the `cold` family (default 3).
    pub zstd_level: i32,
    /// Compress data blocks (default true: lz4 on upper levels, zstd on the
    /// bottommost level and in `cold`). Off, SST files hold keys and values
    /// as written: for payloads that do not compress or CPU-starved nodes,
    /// and for tests that scan the files' raw bytes for a value that must
    /// be gone (a compressed copy would not show).
    pub compression: bool,
    /// `fsync` RocksDB's own WAL on every apply (default false: Engram's WAL
    /// is the durable log and RocksDB's is synced before WAL segments are
    /// released). Benchmarks set it to measure RocksDB synchronous puts.
    pub sync_writes: bool,
    /// Files RocksDB keeps open at most (default 2048; table readers beyond
    /// it are closed and reopened on demand). Bounded so client connections
    /// can never take the descriptors storage needs.
    pub max_open_files: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            block_cache_mb: 256,
            bloom_bits_per_key: 10.0,
            write_buffer_mb: 64,
            max_background_jobs: 2,
            zstd_level: 3,
            compression: true,
            sync_writes: false,
            max_open_files: 2048,
        }
    }
}

impl StoreConfig {
    /// Checks the settings are coherent.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.write_buffer_mb == 0 {
            return Err(StoreError::Config(
                "write_buffer_mb must be at least 1".into(),
            ));
        }
        if !(0.0..=64.0).contains(&self.bloom_bits_per_key) {
            return Err(StoreError::Config(format!(
                "bloom_bits_per_key {} is outside 0..=64",
                self.bloom_bits_per_key
            )));
        }
        if self.max_background_jobs < 1 {
            return Err(StoreError::Config(
                "max_background_jobs must be at least 1".into(),
            ));
        }
        if self.max_open_files < 64 {
            return Err(StoreError::Config(format!(
                "max_open_files {} is below 64",
                self.max_open_files
            )));
        }
        if !(1..=22).contains(&self.zstd_level) {
            return Err(StoreError::Config(format!(
                "zstd_level {} is outside 1..=22",
                self.zstd_level
            )));
        }
        Ok(())
    }
}
