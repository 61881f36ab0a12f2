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

/// Inverted index of one space. Episodes get dense `u32` document numbers
/// (reused after forget), so postings are small `(doc, tf)` pairs and
/// scoring accumulates into a flat array instead of hashing every posting.
#[derive(Debug, Default)]
pub struct LexicalIndex {
    postings: HashMap<String, Vec<(u32, u32)>>,
    docs: Vec<EpisodeId>,
    lengths: Vec<u32>,
    doc_of: crate::ids::IdMap<u32>,
    free: Vec<u32>,
    total_len: u64,
}

/// Id written into a freed document slot.
const NO_DOC: EpisodeId = [0; 16];

impl LexicalIndex {
    fn doc(&mut self, id: EpisodeId) -> u32 {
        if let Some(d) = self.doc_of.get(&id) {
            return *d;
        }
        let d = match self.free.pop() {
            Some(d) => {
                self.docs[d as usize] = id;
                d
            }
            None => {
                self.docs.push(id);
                self.lengths.push(0);
                (self.docs.len() - 1) as u32
            }
        };
        self.doc_of.insert(id, d);
        d
    }

    /// Adds one posting (used while loading and on remember). Each
    /// (term, episode) pair is added once.
    pub fn add_posting(&mut self, term: &str, id: EpisodeId, tf: u32) {
        let d = self.doc(id);
        match self.postings.get_mut(term) {
            Some(list) => list.push((d, tf)),
            None => {
                self.postings.insert(term.to_owned(), vec![(d, tf)]);
            }
        }
    }

    /// Records a document's length in terms.
    pub fn set_length(&mut self, id: EpisodeId, len: u32) {
        let d = self.doc(id) as usize;
        self.total_len -= u64::from(self.lengths[d]);
        self.lengths[d] = len;
        self.total_len += u64::from(len);
    }

    /// Removes a document and its postings for `doc_terms`.
    pub fn remove(&mut self, id: &EpisodeId, doc_terms: impl IntoIterator<Item = String>) {
        let Some(d) = self.doc_of.remove(id) else {
            return;
        };
        for t in doc_terms {
            if let Some(list) = self.postings.get_mut(&t) {
                list.retain(|(x, _)| *x != d);
                if list.is_empty() {
                    self.postings.remove(&t);
                }
            }
        }
        self.total_len -= u64::from(self.lengths[d as usize]);
        self.lengths[d as usize] = 0;
        self.docs[d as usize] = NO_DOC;
        self.free.push(d);
    }

    /// Documents of exactly `len` terms containing the rarest of `terms`:
    /// the candidates for an identical text (the caller compares content
    /// hashes, then contents), found without any per-content table. Empty
    /// when a term is not indexed at all.
    pub fn same_length_candidates<'a>(
        &self,
        terms: impl IntoIterator<Item = &'a str>,
        len: u32,
    ) -> Vec<EpisodeId> {
        let mut lists = Vec::new();
        for t in terms {
            match self.postings.get(t) {
                Some(l) => lists.push(l),
                None => return Vec::new(),
            }
        }
        let Some(rarest) = lists.into_iter().min_by_key(|l| l.len()) else {
            return Vec::new();
        };
        rarest
            .iter()
            .filter(|(d, _)| self.lengths[*d as usize] == len)
            .map(|(d, _)| self.docs[*d as usize])
            .collect()
    }

    /// Drops spare capacity (after a bulk load).
    pub fn shrink_to_fit(&mut self) {
        for list in self.postings.values_mut() {
            list.shrink_to_fit();
        }
        self.postings.shrink_to_fit();
        self.docs.shrink_to_fit();
        self.lengths.shrink_to_fit();
        self.doc_of.shrink_to_fit();
    }

    /// Number of indexed documents.
    pub fn documents(&self) -> usize {
        self.doc_of.len()
    }

    /// Number of distinct terms.
    pub fn vocabulary(&self) -> usize {
        self.postings.len()
    }

    /// `true` if the index still knows `id` or any posting points at it
    /// (used by tests proving forget).
    pub fn mentions(&self, id: &EpisodeId) -> bool {
        self.doc_of.contains_key(id)
            || self
                .postings
                .values()
                .any(|l| l.iter().any(|(d, _)| self.docs[*d as usize] == *id))
    }

    /// The `limit` best BM25 scores among documents matching any query term
    /// and accepted by `keep`, best first. `keep` runs once per matching
    /// document, before the ranking cut.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        keep: impl Fn(&EpisodeId) -> bool,
    ) -> Vec<(EpisodeId, f64)> {
        let n = self.doc_of.len() as f64;
        if n == 0.0 {
            return Vec::new();
        }
        let avgdl = (self.total_len as f64 / n).max(1.0);
        let mut query_terms = terms(query);
        query_terms.sort();
        query_terms.dedup();
        let mut scores = vec![0.0f32; self.docs.len()];
        let mut touched: Vec<u32> = Vec::new();
        for t in &query_terms {
            let Some(list) = self.postings.get(t) else {
                continue;
            };
            let df = list.len() as f64;
            let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
            for (d, tf) in list {
                let tf = f64::from(*tf);
                let dl = f64::from(self.lengths[*d as usize]);
                let s = idf * tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * dl / avgdl));
                let slot = &mut scores[*d as usize];
                if *slot == 0.0 {
                    touched.push(*d);
                }
                *slot += s as f32;
            }
        }
        let hits: Vec<(EpisodeId, f64)> = touched
            .into_iter()
            .map(|d| (self.docs[d as usize], f64::from(scores[d as usize])))
            .filter(|(id, _)| keep(id))
            .collect();
        crate::rank::top_k(hits, limit)
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

    #[test]
    fn forgotten_documents_leave_nothing_and_their_slots_are_reused() {
        let mut idx = LexicalIndex::default();
        let add = |idx: &mut LexicalIndex, n: u8, text: &str| {
            let id = [n; 16];
            let (tf, len) = term_frequencies(text);
            for (t, f) in tf {
                idx.add_posting(&t, id, f);
            }
            idx.set_length(id, len);
            id
        };
        let a = add(&mut idx, 1, "red apple");
        let b = add(&mut idx, 2, "green apple");
        idx.remove(&a, terms("red apple"));
        assert!(!idx.mentions(&a));
        assert_eq!(idx.documents(), 1);
        assert_eq!(
            idx.vocabulary(),
            2,
            "'red' disappears with its only document"
        );
        let c = add(&mut idx, 3, "red pear");
        let apple: Vec<_> = idx
            .search("apple", 10, |_| true)
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(apple, vec![b]);
        let red: Vec<_> = idx
            .search("red", 10, |_| true)
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(
            red,
            vec![c],
            "the reused slot belongs to the new document only"
        );
        assert!(!idx.mentions(&a));
    }
}
