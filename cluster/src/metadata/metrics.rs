//! Prometheus families of the metadata group (`engram_metadata_*`).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

/// The group's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// 1 while this node knows a leader.
    pub has_leader: IntGauge,
    /// 1 while this node leads.
    pub is_leader: IntGauge,
    /// Current term.
    pub term: IntGauge,
    /// Index of the last applied entry.
    pub applied_index: IntGauge,
    /// Proposals by outcome.
    pub proposals: IntCounterVec,
    /// Time from proposing to the outcome (forwarding included).
    pub proposal_seconds: Histogram,
}

/// Outcomes counted by `engram_metadata_proposals_total`.
pub const OUTCOMES: [&str; 3] = ["applied", "rejected", "failed"];

impl Metrics {
    /// Families registered in `registry`, or unregistered ones (tests).
    pub fn new(registry: Option<&Registry>) -> Result<Metrics, prometheus::Error> {
        let has_leader = IntGauge::new(
            "engram_metadata_has_leader",
            "1 while this node knows a metadata-group leader",
        )?;
        let is_leader = IntGauge::new(
            "engram_metadata_is_leader",
            "1 while this node leads the metadata group",
        )?;
        let term = IntGauge::new(
            "engram_metadata_term",
            "Current Raft term of the metadata group",
        )?;
        let applied_index = IntGauge::new(
            "engram_metadata_applied_index",
            "Index of the last metadata-group entry applied on this node",
        )?;
        let proposals = IntCounterVec::new(
            Opts::new(
                "engram_metadata_proposals_total",
                "Metadata proposals made through this node, by outcome (applied; rejected by the state machine; failed: no leader or an error)",
            ),
            &["outcome"],
        )?;
        let proposal_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "engram_metadata_proposal_seconds",
                "Time from a metadata proposal to its outcome, forwarding to the leader included",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        for o in OUTCOMES {
            proposals.with_label_values(&[o]);
        }
        if let Some(r) = registry {
            r.register(Box::new(has_leader.clone()))?;
            r.register(Box::new(is_leader.clone()))?;
            r.register(Box::new(term.clone()))?;
            r.register(Box::new(applied_index.clone()))?;
            r.register(Box::new(proposals.clone()))?;
            r.register(Box::new(proposal_seconds.clone()))?;
        }
        Ok(Metrics {
            has_leader,
            is_leader,
            term,
            applied_index,
            proposals,
            proposal_seconds,
        })
    }
}
