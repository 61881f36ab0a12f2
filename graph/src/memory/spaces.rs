//! The lifecycle of spaces: creating and deleting them, loading their
//! indexes ahead of use, and keeping one space that cannot be loaded from
//! stopping the others.
//!
//! Contracts:
//! - Create and delete are serialised by `Graph::ddl`, not by the lock of
//!   the `spaces` map: the map is locked only to look a name up and to insert
//!   or remove a space, never across the WAL's fsync, so creating or deleting
//!   a space never stalls requests to other spaces. A space being created is
//!   invisible until its record is durable; of two creates of one name, one
//!   wins and the other gets [`GraphError::SpaceExists`]; `max_spaces` is
//!   checked with no other create in flight. A delete waits for the writes in
//!   flight to the space (its `alive` lock) and later writes see it gone.
//! - A space whose indexes cannot be loaded is *damaged*: the error is kept
//!   on the space, logged once, and every request to it fails at once with
//!   [`GraphError::SpaceUnavailable`] instead of repeating the load (seconds
//!   for a large space); the other spaces serve, and the node stays ready.
//!   Corrupt data (an undecodable record or key, RocksDB reporting
//!   corruption) stays refused until a restart: it does not heal by itself,
//!   and loading again would only repeat a long scan to fail at the same
//!   place. Any other storage error (I/O, too many open files, ...) may pass,
//!   so the first request after a back-off (5 s, doubling up to 5 min) loads
//!   the space again. A damaged space can still be deleted.
//! - A space record that cannot be decoded does not stop `Graph::open`: the
//!   space is kept, damaged, under its name when the name at the start of
//!   the record is still readable; otherwise it is logged and reported by id
//!   ([`Graph::damaged_spaces`]) and its data stays in the store untouched.

use super::*;

/// Wait before a space whose load failed with a storage error is loaded
/// again; it doubles with every failure, up to [`LOAD_RETRY_MAX`].
const LOAD_RETRY_FIRST: Duration = Duration::from_secs(5);
/// Longest wait between two loads of a space that keeps failing.
const LOAD_RETRY_MAX: Duration = Duration::from_secs(300);

/// Why a space's indexes could not be loaded (kept on the space).
#[derive(Debug, Clone)]
pub(super) struct Damage {
    /// The load's error.
    reason: String,
    /// When a request may load the space again; `None`: not before a restart.
    retry_at: Option<Instant>,
    /// Failed loads so far (an unreadable space record counts as one).
    failures: u32,
}

impl Damage {
    /// The error every request to the damaged space `space` gets.
    fn error(&self, space: &str) -> GraphError {
        let next = match self.retry_at {
            None => "corrupt data: not loaded again before a restart".to_owned(),
            Some(t) => match t.saturating_duration_since(Instant::now()) {
                wait if wait.is_zero() => "the next request loads it again".to_owned(),
                wait => format!(
                    "loaded again in {} s at the earliest",
                    wait.as_secs().max(1)
                ),
            },
        };
        GraphError::SpaceUnavailable {
            space: space.to_owned(),
            reason: format!("{} ({next})", self.reason),
        }
    }

    fn report(&self, space: &Space) -> DamagedSpace {
        DamagedSpace {
            name: Some(space.record.name.clone()),
            id: space.id,
            reason: self.reason.clone(),
            retried: self.retry_at.is_some(),
            failures: self.failures,
        }
    }
}

/// A space that cannot serve because its data could not be loaded (see
/// [`Graph::damaged_spaces`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedSpace {
    /// Its name; `None` when its space record is unreadable too (the data
    /// stays in the store under `id`).
    pub name: Option<String>,
    /// Numeric id: the prefix of the space's keys in the store.
    pub id: SpaceId,
    /// Why it could not be loaded.
    pub reason: String,
    /// `true` when a request loads it again after a back-off (a storage
    /// error); `false` when it stays refused until a restart (corrupt data).
    pub retried: bool,
    /// Failed loads so far (an unreadable space record counts as one).
    pub failures: u32,
}

impl std::fmt::Display for DamagedSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name}")?,
            None => write!(f, "space id {} (name unreadable)", self.id)?,
        }
        write!(f, ": {}", self.reason)?;
        if self.retried {
            write!(f, " (loaded again on use after a back-off)")
        } else {
            write!(f, " (refused until a restart)")
        }
    }
}

/// What [`Graph::warm_up`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarmUpReport {
    /// Spaces whose indexes are in memory.
    pub loaded: usize,
    /// Spaces left unloaded because the index memory budget was reached
    /// (they load on first use).
    pub left_unloaded: usize,
    /// Spaces that could not be loaded: requests to them fail with
    /// [`GraphError::SpaceUnavailable`] while the others serve.
    pub damaged: Vec<DamagedSpace>,
}

impl Graph {
    /// Loads spaces' indexes now instead of on first use (a server calls
    /// this before it reports ready), the most recently created first,
    /// while the estimated total stays below the index memory budget
    /// ([`GraphConfig::index_budget_mb`]); the others are left to load on
    /// first use (counted in the report, logged). A space that cannot be
    /// loaded does not stop the others: it is marked damaged (logged,
    /// refused with [`GraphError::SpaceUnavailable`]) and listed in the
    /// report. It does not fail today; the `Result` stays for callers.
    pub fn warm_up(&self) -> Result<WarmUpReport, GraphError> {
        let mut all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        all.sort_by(|a, b| {
            b.record
                .created_at_ms
                .cmp(&a.record.created_at_ms)
                .then_with(|| a.record.name.cmp(&b.record.name))
        });
        let budget = self.index_budget_bytes();
        let mut total = self.index_bytes();
        let mut report = WarmUpReport::default();
        for space in all {
            if space.is_loaded() {
                report.loaded += 1;
                continue;
            }
            // A copy this node may not write (a replica's, in a cluster)
            // stays unloaded: its primary's records would make its indexes
            // stale at once.
            if self.authority.get().is_some() && self.admit(&space).is_err() {
                continue;
            }
            if budget > 0 && total >= budget {
                report.left_unloaded += 1;
                // Its figures now (counted from the store once if a crash
                // left them stale), so listing it later reads them at once.
                if let Err(e) = self.stats_of(&space) {
                    tracing::debug!(space = %space.record.name, error = %e, "figures of a space left unloaded not read");
                }
                continue;
            }
            // Not a request (see `Use`): only the load itself is stamped.
            if let Ok(held) = self.acquire(&space, Use::Background) {
                report.loaded += 1;
                total = total.saturating_add(held.bytes());
            }
            // Otherwise damaged (listed below) or deleted meanwhile.
        }
        self.set_index_bytes_gauge(total);
        if report.left_unloaded > 0 {
            tracing::info!(
                loaded = report.loaded,
                left_unloaded = report.left_unloaded,
                index_bytes = total,
                budget_bytes = budget,
                "warm-up stopped at memory.index_budget_mb: the other spaces load on first use"
            );
        }
        report.damaged = self.damaged_spaces();
        Ok(report)
    }

    /// Spaces whose indexes are in memory, and all spaces (damaged ones
    /// included, except those whose record is unreadable).
    pub fn loaded_spaces(&self) -> (usize, usize) {
        let spaces = read(&self.spaces);
        let loaded = spaces.values().filter(|s| s.is_loaded()).count();
        (loaded, spaces.len())
    }

    /// Spaces that cannot serve because their data could not be loaded, by
    /// name (those with an unreadable record last, by id). Cheap: no load.
    pub fn damaged_spaces(&self) -> Vec<DamagedSpace> {
        let mut out: Vec<DamagedSpace> = read(&self.spaces)
            .values()
            .filter_map(|s| lock(&s.damaged).as_ref().map(|d| d.report(s)))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.extend(self.unreadable.iter().cloned());
        out
    }

    pub(super) fn space(&self, name: &str) -> Result<Arc<Space>, GraphError> {
        read(&self.spaces)
            .get(name)
            .cloned()
            .ok_or_else(|| GraphError::SpaceNotFound(name.to_owned()))
    }

    /// Creates a space, durably.
    pub fn create_space(&self, name: &str, embedding_dim: Option<u32>) -> Result<(), GraphError> {
        self.create_space_with(
            name,
            SpaceOptions {
                embedding_dim,
                hot_capacity: None,
            },
        )
    }

    /// Creates a space with options, durably. Requests to other spaces go
    /// on while its record is written; another create or a delete waits.
    pub fn create_space_with(&self, name: &str, options: SpaceOptions) -> Result<(), GraphError> {
        let _writing = self.gate.enter()?;
        let embedding_dim = options.embedding_dim;
        if !valid_space_name(name) {
            return Err(GraphError::InvalidSpaceName(name.to_owned()));
        }
        if let Some(d) = embedding_dim {
            if d == 0 || d as usize > self.config.limits.max_embedding_dim {
                return Err(invalid(
                    "embedding_dim",
                    format!(
                        "must be within 1..={}",
                        self.config.limits.max_embedding_dim
                    ),
                ));
            }
        }
        if let Some(h) = options.hot_capacity {
            let max = self.config.limits.max_hot_capacity;
            if h as usize > max {
                return Err(invalid(
                    "hot_capacity",
                    format!("{h} exceeds the limit of {max} (limits.max_hot_capacity)"),
                ));
            }
        }
        // One create or delete at a time: what is checked here still holds
        // when the space is inserted below, without holding the map's lock
        // across the WAL's fsync.
        let _ddl = lock(&self.ddl);
        {
            let spaces = read(&self.spaces);
            if spaces.contains_key(name) {
                return Err(GraphError::SpaceExists(name.to_owned()));
            }
            if spaces.len() >= self.config.limits.max_spaces {
                return Err(GraphError::TooManySpaces {
                    limit: self.config.limits.max_spaces,
                });
            }
        }
        let id = {
            let mut next = lock(&self.next_space_id);
            let id = *next;
            if id > keys::MAX_SPACE_ID {
                return Err(invalid("space", "space ids exhausted"));
            }
            *next += 1;
            id
        };
        let record = SpaceRecord {
            name: name.to_owned(),
            embedding_dim,
            created_at_ms: now_ms(),
            hot_capacity: options.hot_capacity,
        };
        // A snapshot left under a reused id must never meet this space.
        snapshot::remove(&self.index_dir, id).map_err(|source| {
            GraphError::Storage(EngineError::DataDir {
                path: snapshot::path(&self.index_dir, id),
                source,
            })
        })?;
        self.engine.submit(
            id,
            kind::CREATE_SPACE,
            vec![Mutation::PutSpace {
                record: record::encode(&record)?,
            }],
        )?;
        let state = SpaceState::new(
            embedding_dim,
            self.config.ann,
            self.config.exact_search_below,
        );
        let resident = Arc::new(Resident::new(state, &self.clock, 0));
        let space = Space::new(id, record, Some(resident), self.config.hot_capacity);
        write(&self.spaces).insert(name.to_owned(), Arc::new(space));
        Ok(())
    }

    /// Deletes a space and all its data, durably (a damaged space too).
    /// Requests to other spaces go on while the deletion is written.
    pub fn delete_space(&self, name: &str) -> Result<(), GraphError> {
        if name == DEFAULT_SPACE {
            return Err(GraphError::DefaultSpace);
        }
        let _writing = self.gate.enter()?;
        let _ddl = lock(&self.ddl);
        let space = self.space(name)?;
        self.admit(&space)?;
        {
            // Waits for writes in flight to this space; later ones see it gone.
            let mut alive = write(&space.alive);
            self.engine
                .submit(space.id, kind::DROP_SPACE, vec![Mutation::DropSpace])?;
            *alive = false;
        }
        write(&self.spaces).remove(name);
        if let Err(e) = snapshot::remove(&self.index_dir, space.id) {
            tracing::warn!(space = name, error = %e, "removing the deleted space's index snapshot failed");
        }
        Ok(())
    }

    /// Every space's name, sorted, without loading any space's indexes.
    pub fn space_names(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.spaces).keys().cloned().collect();
        names.sort();
        names
    }

    /// Every space that serves with its statistics, by name, without
    /// loading any (see [`SpaceStats`]): a damaged space
    /// ([`Graph::damaged_spaces`]) is left out rather than failing the whole
    /// list, and so is one whose figures cannot be read (logged).
    pub fn spaces(&self) -> Result<Vec<SpaceStats>, GraphError> {
        let all: Vec<Arc<Space>> = read(&self.spaces).values().cloned().collect();
        let mut out = Vec::with_capacity(all.len());
        for s in all {
            match self.stats_of(&s) {
                Ok(st) => out.push(st),
                // Damaged, or deleted since the list was taken.
                Err(GraphError::SpaceUnavailable { .. } | GraphError::SpaceNotFound(_)) => {}
                Err(e) => tracing::warn!(
                    space = %s.record.name,
                    error = %e,
                    "the space's figures could not be read; it is left out of the list"
                ),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Statistics of one space, without loading it (see [`SpaceStats`]).
    pub fn space_stats(&self, name: &str) -> Result<SpaceStats, GraphError> {
        let space = self.space(name)?;
        self.stats_of(&space)
    }
}

pub(super) fn stats(s: &Space, state: &RwLock<SpaceState>) -> SpaceStats {
    let st = read(state);
    let hot = lock(&s.hot);
    SpaceStats {
        name: s.record.name.clone(),
        memories: st.episodes.len(),
        embedding_dim: s.record.embedding_dim,
        edges: st.edge_count(),
        terms: st.lexical.vocabulary(),
        hot: hot.len(),
        hot_capacity: hot.capacity(),
        cold: st.cold,
        unlinked_vectors: st.ann.as_ref().map_or(0, Hnsw::backlog),
        vector_tombstones: st.ann.as_ref().map_or(0, Hnsw::tombstones),
    }
}

/// The space [`Graph::open`] makes of its stored record: the space; for a
/// record that does not decode, the space marked damaged under the name at
/// the record's start when that is readable and not `taken`; else `Err`
/// with the report of the unreadable space (logged here).
pub(super) fn open_space(
    id: SpaceId,
    bytes: &[u8],
    default_hot: usize,
    taken: impl Fn(&str) -> bool,
) -> Result<Space, DamagedSpace> {
    let reason = match record::decode::<SpaceRecord>(bytes, "space record") {
        Ok(record) => return Ok(Space::new(id, record, None, default_hot)),
        Err(e) => e.to_string(),
    };
    match space_name_of(bytes).filter(|n| !taken(n)) {
        Some(name) => {
            tracing::error!(
                space = %name,
                space_id = id,
                error = %reason,
                "the space's record is corrupt: requests to the space fail with space_unavailable (503) until it is restored or deleted; the other spaces serve"
            );
            let record = SpaceRecord {
                name,
                embedding_dim: None,
                created_at_ms: 0,
                hot_capacity: None,
            };
            let space = Space::new(id, record, None, default_hot);
            *lock(&space.damaged) = Some(Damage {
                reason,
                retry_at: None,
                failures: 1,
            });
            Ok(space)
        }
        None => {
            tracing::error!(
                space_id = id,
                error = %reason,
                "a space record is corrupt and its name unreadable: that space is unavailable, its data stays in the store; the other spaces serve"
            );
            Err(DamagedSpace {
                name: None,
                id,
                reason,
                retried: false,
                failures: 1,
            })
        }
    }
}

/// The name a space record starts with (its first field), when the record
/// does not decode whole; `None` unless it is a valid space name.
fn space_name_of(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Name {
        name: String,
    }
    let (n, _) = postcard::take_from_bytes::<Name>(bytes).ok()?;
    valid_space_name(&n.name).then_some(n.name)
}

/// Refuses a damaged space at once, unless its back-off has passed (then
/// the caller loads it again).
pub(super) fn refuse_damaged(space: &Space) -> Result<(), GraphError> {
    match &*lock(&space.damaged) {
        Some(d) if d.retry_at.is_none_or(|t| Instant::now() < t) => {
            Err(d.error(&space.record.name))
        }
        _ => Ok(()),
    }
}

/// Marks `space` damaged by its load's error `e` and returns what requests
/// get from now on. A space deleted meanwhile is not damage: `e` is
/// returned as it is then.
pub(super) fn mark_damaged(space: &Space, e: GraphError) -> GraphError {
    if matches!(e, GraphError::SpaceNotFound(_) | GraphError::ShuttingDown) {
        return e;
    }
    let corrupt = is_corruption(&e);
    let mut damaged = lock(&space.damaged);
    let failures = damaged.as_ref().map_or(0, |d| d.failures).saturating_add(1);
    let retry_at = (!corrupt).then(|| Instant::now() + load_retry_after(failures));
    tracing::error!(
        space = %space.record.name,
        error = %e,
        failures,
        retried = !corrupt,
        "the space's indexes could not be loaded: requests to it fail with space_unavailable (503); the other spaces serve"
    );
    let damage = Damage {
        reason: e.to_string(),
        retry_at,
        failures,
    };
    let refused = damage.error(&space.record.name);
    *damaged = Some(damage);
    refused
}

/// Forgets an earlier failed load once the space has loaded.
pub(super) fn clear_damage(space: &Space) {
    if let Some(d) = lock(&space.damaged).take() {
        tracing::info!(space = %space.record.name, failures = d.failures, "space loaded after failed attempts; it serves again");
    }
}

/// `true` when `e` says stored data is corrupt: loading again cannot help.
fn is_corruption(e: &GraphError) -> bool {
    match e {
        GraphError::Corrupt(_) => true,
        GraphError::Storage(EngineError::Store(engram_lsm::StoreError::Corrupt { .. })) => true,
        // RocksDB's status text: "Corruption: block checksum mismatch ...".
        GraphError::Storage(EngineError::Store(engram_lsm::StoreError::Rocks {
            message, ..
        })) => message.starts_with("Corruption"),
        _ => false,
    }
}

/// Back-off before loading a space again after its `failures`-th failed load.
fn load_retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    LOAD_RETRY_FIRST
        .saturating_mul(1 << doublings)
        .min(LOAD_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_retries_back_off_to_five_minutes() {
        let waits: Vec<u64> = (1..=8).map(|f| load_retry_after(f).as_secs()).collect();
        assert_eq!(waits, vec![5, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(load_retry_after(u32::MAX), LOAD_RETRY_MAX);
    }

    #[test]
    fn corrupt_data_is_not_retried_but_storage_errors_are() {
        assert!(is_corruption(&GraphError::Corrupt("episode".into())));
        let rocks = |m: &str| {
            GraphError::from(engram_lsm::StoreError::Rocks {
                path: PathBuf::from("db"),
                message: m.into(),
            })
        };
        assert!(is_corruption(&rocks("Corruption: block checksum mismatch")));
        assert!(!is_corruption(&rocks("IO error: No space left on device")));
    }

    #[test]
    fn the_name_of_a_damaged_space_record_is_recovered() {
        let record = SpaceRecord {
            name: "notes".into(),
            embedding_dim: Some(4),
            created_at_ms: 1,
            hot_capacity: None,
        };
        let mut bytes = record::encode(&record).expect("encode");
        bytes.truncate(7); // name (1 + 5 bytes) and one byte of what follows
        bytes[6] = 9; // not an Option tag
        assert!(record::decode::<SpaceRecord>(&bytes, "space record").is_err());
        assert_eq!(space_name_of(&bytes).as_deref(), Some("notes"));
        assert_eq!(space_name_of(&[0xff, 0xff]), None);
        assert_eq!(space_name_of(&[2, b'A', b'B']), None, "not a space name");
    }
}
