//! Prometheus metrics of one log, registered in a registry the caller owns.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

#[derive(Clone)]
pub(crate) struct WalMetrics {
    pub records: IntCounter,
    pub bytes: IntCounter,
    pub fsyncs: IntCounter,
    pub fsync_seconds: Histogram,
    pub group_records: Histogram,
    pub failed: IntGauge,
    pub segments: IntGauge,
    pub applied_damage: IntCounter,
}

impl WalMetrics {
    pub fn new(registry: Option<&Registry>) -> Result<Self, prometheus::Error> {
        let m = Self {
            records: IntCounter::new("engram_wal_records_total", "Records appended to the WAL")?,
            bytes: IntCounter::new(
                "engram_wal_bytes_total",
                "Bytes (frames) written to the WAL",
            )?,
            fsyncs: IntCounter::new("engram_wal_fsyncs_total", "fdatasync calls made by the WAL")?,
            fsync_seconds: Histogram::with_opts(
                HistogramOpts::new("engram_wal_fsync_seconds", "Latency of WAL fdatasync calls")
                    .buckets(vec![
                        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 1.0,
                    ]),
            )?,
            group_records: Histogram::with_opts(
                HistogramOpts::new(
                    "engram_wal_group_commit_records",
                    "Records made durable by one group commit",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ]),
            )?,
            failed: IntGauge::new(
                "engram_wal_failed",
                "1 when the WAL refuses appends after an I/O failure or a writer panic",
            )?,
            segments: IntGauge::new("engram_wal_segments", "WAL segment files on disk")?,
            applied_damage: IntCounter::new(
                "engram_wal_applied_damage_skipped_total",
                "Stretches of damaged or missing WAL records found at open below the store's \
                 applied LSN and skipped (not needed; retention removes them)",
            )?,
        };
        if let Some(r) = registry {
            r.register(Box::new(m.records.clone()))?;
            r.register(Box::new(m.bytes.clone()))?;
            r.register(Box::new(m.fsyncs.clone()))?;
            r.register(Box::new(m.fsync_seconds.clone()))?;
            r.register(Box::new(m.group_records.clone()))?;
            r.register(Box::new(m.failed.clone()))?;
            r.register(Box::new(m.segments.clone()))?;
            r.register(Box::new(m.applied_damage.clone()))?;
        }
        Ok(m)
    }
}
