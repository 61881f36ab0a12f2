//! Lexical side: tokenisation and the in-memory BM25 index of a space.

use std::collections::HashMap;

use engram_lsm::EpisodeId;
use unicode_segmentation::UnicodeSegmentation;

/// Terms of `text`: Unicode words (UAX #29), lower-cased, each at most
/// [`engram_lsm::keys::MAX_TERM_LEN`] bytes (longer words are dropped).
pub fn terms(text: &str) -> Vec<String> {
    text.unicode_words()
        .map(str::to_lowercase)
        .filter(|t| t.len() <= engram_lsm::keys::MAX_TERM_LEN)
        .collect()
}

/// Term frequencies of `text`, and its length in terms.
pub fn term_frequencies(text: &str) -> (HashMap<String, u32>, u32) {
    let mut tf = HashMap::new();
    let mut len = 0u32;
    for t in terms(text) {
        *tf.entry(t).or_insert(0) += 1;
        len += 1;
    }
    (tf, len)
}

/// BM25 parameters (the usual defaults).
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// Inverted index of one space.
#[derive(Debug, Default)]
pub struct LexicalIndex {
    postings: HashMap<String, HashMap<EpisodeId, u32>>,
    lengths: HashMap<EpisodeId, u32>,
    total_len: u64,
}

impl LexicalIndex {
    /// Adds one posting (used while loading and on remember).
    pub fn add_posting(&mut self, term: &str, id: EpisodeId, tf: u32) {
        self.postings
            .entry(term.to_owned())
            .or_default()
            .insert(id, tf);
    }

    /// Records a document's length in terms.
    pub fn set_length(&mut self, id: EpisodeId, len: u32) {
        if let Some(old) = self.lengths.insert(id, len) {
            self.total_len -= u64::from(old);
        }
        self.total_len += u64::from(len);
    }

    /// Removes a document and its postings for `doc_terms`.
    pub fn remove(&mut self, id: &EpisodeId, doc_terms: impl IntoIterator<Item = String>) {
        for t in doc_terms {
            if let Some(p) = self.postings.get_mut(&t) {
                p.remove(id);
                if p.is_empty() {
                    self.postings.remove(&t);
                }
            }
        }
        if let Some(old) = self.lengths.remove(id) {
            self.total_len -= u64::from(old);
        }
    }

    /// Number of indexed documents.
    pub fn documents(&self) -> usize {
        self.lengths.len()
    }

    /// Number of distinct terms.
    pub fn vocabulary(&self) -> usize {
        self.postings.len()
    }

    /// `true` if any posting mentions `id` (used by tests proving forget).
    pub fn mentions(&self, id: &EpisodeId) -> bool {
        self.lengths.contains_key(id) || self.postings.values().any(|p| p.contains_key(id))
    }

    /// The `limit` best BM25 scores among documents matching any query term
    /// and accepted by `keep`, best first.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        keep: impl Fn(&EpisodeId) -> bool,
    ) -> Vec<(EpisodeId, f64)> {
        let n = self.lengths.len() as f64;
        if n == 0.0 {
            return Vec::new();
        }
        let avgdl = (self.total_len as f64 / n).max(1.0);
        let mut query_terms = terms(query);
        query_terms.sort();
        query_terms.dedup();
        let mut scores: HashMap<EpisodeId, f64> = HashMap::new();
        for t in &query_terms {
            let Some(p) = self.postings.get(t) else {
                continue;
            };
            let df = p.len() as f64;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (id, tf) in p {
                if !keep(id) {
                    continue;
                }
                let tf = f64::from(*tf);
                let dl = f64::from(self.lengths.get(id).copied().unwrap_or(0));
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * dl / avgdl));
                *scores.entry(*id).or_insert(0.0) += s;
            }
        }
        crate::rank::top_k(scores.into_iter().collect(), limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_segmented_and_lower_cased() {
        assert_eq!(
            terms("Ana adopted a DOG, named Rex!"),
            ["ana", "adopted", "a", "dog", "named", "rex"]
        );
        assert_eq!(terms("Größe café 東京"), ["größe", "café", "東", "京"]);
    }

    #[test]
    fn rarer_terms_weigh_more_and_filters_apply_before_ranking() {
        let mut idx = LexicalIndex::default();
        let docs = [
            ("the dog barked", 1u8),
            ("the cat slept", 2),
            ("the dog and the cat", 3),
        ];
        for (text, n) in docs {
            let mut id = [0; 16];
            id[15] = n;
            let (tf, len) = term_frequencies(text);
            for (t, f) in tf {
                idx.add_posting(&t, id, f);
            }
            idx.set_length(id, len);
        }
        let hits = idx.search("dog", 10, |_| true);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].0[15], 1, "shorter document ranks first");
        let hits = idx.search("dog", 10, |id| id[15] != 1);
        assert_eq!(hits.iter().map(|h| h.0[15]).collect::<Vec<_>>(), vec![3]);
        let the = idx.search("the", 10, |_| true);
        assert_eq!(
            idx.search("the", 1, |_| true),
            the[..1].to_vec(),
            "top-1 equals the head of the full ranking"
        );
        let barked = idx.search("barked", 10, |_| true);
        assert!(barked[0].1 > the[0].1, "rare term outweighs a common one");
    }
}
