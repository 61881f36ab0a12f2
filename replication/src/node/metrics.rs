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
        };
        if let Some(r) = registry {
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
