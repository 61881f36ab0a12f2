//! Explicit links: adding or re-weighting an edge between two memories.

use super::*;

impl Graph {
    /// Adds (or re-weights) an explicit edge between two memories of a
    /// space; refused with [`GraphError::TooManyEdges`] when either already
    /// has `max_edges_per_memory` edges.
    pub fn link(
        &self,
        space_name: &str,
        from: &str,
        to: &str,
        weight: Option<f32>,
    ) -> Result<(), GraphError> {
        let _writing = self.gate.enter()?;
        let space = self.space(space_name)?;
        self.admit(&space)?;
        let held = self.state(&space)?;
        let st: &RwLock<SpaceState> = &held;
        let (f, t) = (parse_id(from)?, parse_id(to)?);
        let weight = weight.unwrap_or(DEFAULT_LINK_WEIGHT);
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(invalid("weight", format!("{weight} is outside (0, 1]")));
        }
        if f == t {
            return Err(invalid("target", "a memory cannot link to itself"));
        }
        let mut state = write(st);
        for (s, i) in [(from, &f), (to, &t)] {
            if !state.episodes.contains_key(i) {
                return Err(GraphError::MemoryNotFound(s.to_owned()));
            }
        }
        // Re-weighting an existing edge adds none.
        if !state.has_edge(&f, &t) {
            let limit = self.config.limits.max_edges_per_memory;
            for (s, i) in [(from, &f), (to, &t)] {
                if state.degree(i) >= limit {
                    return Err(GraphError::TooManyEdges {
                        memory: s.to_owned(),
                        limit,
                    });
                }
            }
        }
        let e = EdgeRecord {
            weight,
            kind: EdgeKind::Explicit,
        };
        self.submit(
            &space,
            kind::LINK,
            vec![Mutation::PutEdge {
                from: f,
                to: t,
                record: record::encode(&e)?,
            }],
        )?;
        state.add_edge(f, t, e);
        Ok(())
    }
}
