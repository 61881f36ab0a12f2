//! Ranking helpers shared by the indexes.

use engram_lsm::EpisodeId;

/// Keeps the `k` highest-scoring entries, best first (ties by id, so results
/// are deterministic). Selection is linear; only the kept entries are sorted.
pub fn top_k<S: Copy + Into<f64>>(mut v: Vec<(EpisodeId, S)>, k: usize) -> Vec<(EpisodeId, S)> {
    if k == 0 {
        return Vec::new();
    }
    let order = |a: &(EpisodeId, S), b: &(EpisodeId, S)| {
        b.1.into().total_cmp(&a.1.into()).then(a.0.cmp(&b.0))
    };
    if v.len() > k {
        v.select_nth_unstable_by(k - 1, order);
        v.truncate(k);
    }
    v.sort_by(order);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_best_in_order_with_deterministic_ties() {
        let id = |n: u8| [n; 16];
        let v = vec![(id(3), 0.5f32), (id(1), 0.9), (id(2), 0.5), (id(4), 0.1)];
        assert_eq!(
            top_k(v.clone(), 3),
            vec![(id(1), 0.9), (id(2), 0.5), (id(3), 0.5)]
        );
        assert_eq!(top_k(v.clone(), 10).len(), 4);
        assert!(top_k(v, 0).is_empty());
    }
}
