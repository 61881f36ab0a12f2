//! Replication metrics (`engram_replication_*`).

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry,
};

#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub batches: IntCounterVec,
    pub handshakes: IntCounterVec,
    pub refused: IntCounterVec,
    pub applied: IntCounter,
    pub bytes_sent: IntCounter,
    pub batch_seconds: Histogram,
    pub concern_wait: HistogramVec,
    pub concern_timeouts: IntCounterVec,
    pub lag_records: IntGaugeVec,
    pub lag_seconds: GaugeVec,
    pub snapshots_sent: IntCounterVec,
    pub records_shipped: IntCounterVec,
    pub catchup_seconds: Histogram,
    pub snapshots_installed: IntCounterVec,
    pub snapshot_seconds: HistogramVec,
    pub snapshot_bytes: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new(registry: Option<&Registry>) -> Result<Metrics, prometheus::Error> {
        let m = Metrics {
            batches: IntCounterVec::new(
                Opts::new(
                    "engram_replication_batches_sent_total",
                    "Replication batches a primary sent, by the replica's answer",
                ),
                &["status"],
            )?,
            handshakes: IntCounterVec::new(
                Opts::new(
                    "engram_replication_handshakes_total",
                    "Handshakes a primary sent, by the replica's answer",
                ),
                &["status"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "engram_replication_batches_refused_total",
                    "Replication batches this node refused as a replica, by reason (nothing of them was applied)",
                ),
                &["reason"],
            )?,
            applied: IntCounter::new(
                "engram_replication_records_applied_total",
                "Records this node appended and applied as a replica",
            )?,
            bytes_sent: IntCounter::new(
                "engram_replication_bytes_sent_total",
                "Bytes of record encodings a primary shipped (compressed size)",
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "engram_replication_batch_seconds",
                    "Time from sending a batch to its answer (the replica's append and fsync included)",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.5, 14)?),
            )?,
            concern_wait: HistogramVec::new(
                HistogramOpts::new(
                    "engram_replication_write_concern_wait_seconds",
                    "Time a durable write waited for its write concern, by concern",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 2.5, 14)?),
                &["concern"],
            )?,
            concern_timeouts: IntCounterVec::new(
                Opts::new(
                    "engram_replication_write_concern_timeouts_total",
                    "Writes answered 503 write_concern_timeout, by concern",
                ),
                &["concern"],
            )?,
            lag_records: IntGaugeVec::new(
                Opts::new(
                    "engram_replication_lag_records",
                    "Records a replica lacks, as its primary last saw it",
                ),
                &["space", "replica"],
            )?,
            lag_seconds: GaugeVec::new(
                Opts::new(
                    "engram_replication_lag_seconds",
                    "Age of the oldest record a replica lacks, on the primary's clock",
                ),
                &["space", "replica"],
            )?,
            records_shipped: IntCounterVec::new(
                Opts::new(
                    "engram_replication_records_shipped_total",
                    "Records a primary shipped and a replica acknowledged, by where they were read (the recent-records ring or the WAL)",
                ),
                &["source"],
            )?,
            catchup_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "engram_replication_catchup_seconds",
                    "Time from a session that started behind (a member back from an absence, or after a snapshot) until the member held every record synced on the primary",
                )
                .buckets(prometheus::exponential_buckets(0.01, 2.5, 12)?),
            )?,
            snapshots_sent: IntCounterVec::new(
                Opts::new(
                    "engram_replication_snapshots_sent_total",
                    "Snapshots of a space a primary streamed to a replica that lacked records no longer kept, by outcome",
                ),
                &["outcome"],
            )?,
            snapshots_installed: IntCounterVec::new(
                Opts::new(
                    "engram_replication_snapshots_installed_total",
                    "Snapshots this node received as a replica, by outcome (refused and failed ones left nothing behind)",
                ),
                &["outcome"],
            )?,
            snapshot_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "engram_replication_snapshot_seconds",
                    "Time to stream (primary) or install (replica) one snapshot, by side",
                )
                .buckets(prometheus::exponential_buckets(0.01, 2.5, 12)?),
                &["side"],
            )?,
            snapshot_bytes: IntCounterVec::new(
                Opts::new(
                    "engram_replication_snapshot_bytes_total",
                    "Bytes of space images streamed (sent) or installed (received), uncompressed keys and values",
                ),
                &["side"],
            )?,
        };
        if let Some(r) = registry {
            r.register(Box::new(m.snapshots_sent.clone()))?;
            r.register(Box::new(m.records_shipped.clone()))?;
            r.register(Box::new(m.catchup_seconds.clone()))?;
            r.register(Box::new(m.snapshots_installed.clone()))?;
            r.register(Box::new(m.snapshot_seconds.clone()))?;
            r.register(Box::new(m.snapshot_bytes.clone()))?;
            r.register(Box::new(m.batches.clone()))?;
            r.register(Box::new(m.handshakes.clone()))?;
            r.register(Box::new(m.refused.clone()))?;
            r.register(Box::new(m.applied.clone()))?;
            r.register(Box::new(m.bytes_sent.clone()))?;
            r.register(Box::new(m.batch_seconds.clone()))?;
            r.register(Box::new(m.concern_wait.clone()))?;
            r.register(Box::new(m.concern_timeouts.clone()))?;
            r.register(Box::new(m.lag_records.clone()))?;
            r.register(Box::new(m.lag_seconds.clone()))?;
        }
        Ok(m)
    }
}
