//! `[replication]`: how writes are replicated in a cluster (ignored by a
//! standalone node).

use std::time::Duration;

use anyhow::{Result, bail};
use engram_replication::node::ReplicationConfig;
use engram_replication::protocol::Concern;
use serde::{Deserialize, Serialize};

/// `[replication]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationSection {
    /// Write concern of a request that names none: `primary`, `quorum`
    /// or `all`.
    pub default_write_concern: String,
    /// How long a durable write waits for its concern before the 503
    /// `write_concern_timeout` (ms).
    pub write_timeout_ms: u64,
    /// Recent records a primary keeps in memory per space for replicas
    /// that lag (MiB); a replica further behind is caught up from the WAL.
    pub recent_records_mb: u64,
    /// WAL a primary keeps per space for replicas that lag beyond the
    /// recent records (MiB; 0: none). A replica further behind is sent a
    /// snapshot of the space.
    pub max_retained_wal_mb: u64,
    /// `engram status` exits 4 when a copy lacks more records than this.
    pub lag_alert_records: u64,
    /// `engram status` exits 4 when a copy lacks a record older than this
    /// many seconds.
    pub lag_alert_seconds: u64,
}

impl Default for ReplicationSection {
    fn default() -> Self {
        ReplicationSection {
            default_write_concern: "quorum".into(),
            write_timeout_ms: 5000,
            recent_records_mb: 64,
            max_retained_wal_mb: 1024,
            lag_alert_records: 1000,
            lag_alert_seconds: 10,
        }
    }
}

impl ReplicationSection {
    /// The default write concern; an error names the key.
    pub fn concern(&self) -> Result<Concern> {
        match engram_api::replicated::parse_concern(&self.default_write_concern) {
            Some(c) => Ok(c),
            None => bail!(
                "config key \"replication.default_write_concern\": {:?} is not one of \"primary\", \"quorum\", \"all\"",
                self.default_write_concern
            ),
        }
    }

    /// Checks ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        self.concern()?;
        if self.write_timeout_ms == 0 {
            bail!("config key \"replication.write_timeout_ms\" must be at least 1");
        }
        if self.recent_records_mb == 0 {
            bail!(
                "config key \"replication.recent_records_mb\" must be at least 1 (copies in sync are fed from these records)"
            );
        }
        Ok(())
    }

    /// The replicator's settings.
    pub fn replicator(&self) -> ReplicationConfig {
        ReplicationConfig {
            write_timeout: self.write_timeout(),
            recent_records_bytes: usize::try_from(self.recent_records_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            max_retained_wal_bytes: usize::try_from(
                self.max_retained_wal_mb.saturating_mul(1 << 20),
            )
            .unwrap_or(usize::MAX),
            ..ReplicationConfig::default()
        }
    }

    /// `write_timeout_ms`.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
}
