//! Lexical side: tokenisation and the in-memory BM25 index of a space.

use std::collections::HashMap;

use unicode_segmentation::UnicodeSegmentation;

use crate::snapshot::{Reader, SnapshotError, Writer, invalid};

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

/// Words too common to say what a text is about: English function words
/// (articles, pronouns, auxiliaries, prepositions, conjunctions, common
/// adverbs) and chat fillers ("ok", "haha", "yeah"). Consolidation builds
/// concepts from the other terms only; search and recall still index every
/// term (BM25 already weighs common ones down). Sorted, for binary search.
const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "ah",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "aren't",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "can't",
    "cannot",
    "could",
    "couldn't",
    "did",
    "didn't",
    "do",
    "does",
    "doesn't",
    "doing",
    "don't",
    "down",
    "during",
    "each",
    "else",
    "ever",
    "few",
    "for",
    "from",
    "further",
    "get",
    "gonna",
    "got",
    "ha",
    "had",
    "hadn't",
    "haha",
    "hahaha",
    "has",
    "hasn't",
    "have",
    "haven't",
    "having",
    "he",
    "he'd",
    "he'll",
    "he's",
    "her",
    "here",
    "here's",
    "hers",
    "herself",
    "hey",
    "hi",
    "him",
    "himself",
    "his",
    "hm",
    "hmm",
    "how",
    "how's",
    "i",
    "i'd",
    "i'll",
    "i'm",
    "i've",
    "if",
    "in",
    "into",
    "is",
    "isn't",
    "it",
    "it's",
    "its",
    "itself",
    "just",
    "let's",
    "lol",
    "me",
    "more",
    "most",
    "much",
    "mustn't",
    "my",
    "myself",
    "no",
    "nope",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "oh",
    "ok",
    "okay",
    "on",
    "once",
    "only",
    "or",
    "other",
    "ought",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "please",
    "quite",
    "really",
    "same",
    "shan't",
    "she",
    "she'd",
    "she'll",
    "she's",
    "should",
    "shouldn't",
    "so",
    "some",
    "such",
    "sure",
    "than",
    "thank",
    "thanks",
    "that",
    "that's",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "there's",
    "these",
    "they",
    "they'd",
    "they'll",
    "they're",
    "they've",
    "this",
    "those",
    "though",
    "through",
    "to",
    "too",
    "uh",
    "um",
    "under",
    "until",
    "up",
    "us",
    "very",
    "was",
    "wasn't",
    "we",
    "we'd",
    "we'll",
    "we're",
    "we've",
    "well",
    "were",
    "weren't",
    "what",
    "what's",
    "when",
    "when's",
    "where",
    "where's",
    "which",
    "while",
    "who",
    "who's",
    "whom",
    "why",
    "why's",
    "will",
    "with",
    "won't",
    "would",
    "wouldn't",
    "yeah",
    "yep",
    "yes",
    "you",
    "you'd",
    "you'll",
    "you're",
    "you've",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// `true` for a term in [`STOP_WORDS`] (terms are lower-cased; a typographic
/// apostrophe counts as `'`).
pub fn is_stop_word(term: &str) -> bool {
    if term.contains('\u{2019}') {
        let plain = term.replace('\u{2019}', "'");
        return STOP_WORDS.binary_search(&plain.as_str()).is_ok();
    }
    STOP_WORDS.binary_search(&term).is_ok()
}

/// The terms of `text` that can say what it is about: its [`terms`] without
/// stop words and single ASCII characters (a CJK character is a term of
/// its own and stays), each once, in order of first use.
pub fn distinctive_terms(text: &str) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    terms(text)
        .into_iter()
        .filter(|t| t.len() > 1 && !is_stop_word(t))
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

thread_local! {
    /// Score accumulator of [`LexicalIndex::search`]; all zero between calls.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The hits scoring at least the `limit`-th best score (0: all), unordered.
fn cut_with_ties(mut hits: Vec<(u32, f64)>, limit: usize) -> Vec<(u32, f64)> {
    if limit > 0 && hits.len() > limit {
        hits.select_nth_unstable_by(limit - 1, |a, b| b.1.total_cmp(&a.1));
        let cut = hits[limit - 1].1;
        hits.retain(|h| h.1 >= cut);
    }
    hits
}

/// Index of `slot` in an unordered posting list. Compares 16 slots per step
/// without an early exit inside the step, which the compiler turns into SIMD
/// compares (a plain `position` is a scalar loop; at 1M memories a common
/// term's list has hundreds of thousands of entries and every forget of a
/// memory with that term searches it).
fn find(slots: &[u32], slot: u32) -> Option<usize> {
    let chunks = slots.chunks_exact(16);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        if chunk.iter().fold(false, |hit, x| hit | (*x == slot)) {
            return chunk.iter().position(|x| *x == slot).map(|i| c * 16 + i);
        }
    }
    tail.iter()
        .position(|x| *x == slot)
        .map(|i| slots.len() - tail.len() + i)
}

/// BM25 parameters (the usual defaults).
const K1: f64 = 1.2;
const B: f64 = 0.75;

/// The documents containing one term: slots, and term frequencies stored
/// apart as bytes (5 bytes per posting; a frequency above 255 counts as 255,
/// where BM25's saturation has long made the difference negligible).
#[derive(Debug, Default)]
struct Postings {
    slots: Vec<u32>,
    tfs: Vec<u8>,
}

impl Postings {
    fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Inverted index of one space over documents identified by their dense
/// slot numbers (see `table.rs`): compact postings and a flat array of
/// document lengths.
#[derive(Debug, Default)]
pub struct LexicalIndex {
    postings: HashMap<String, Postings>,
    lengths: Vec<u32>,
    docs: usize,
    total_len: u64,
}

impl LexicalIndex {
    /// Adds a document of `len` terms in `slot` (before its postings).
    pub fn add_document(&mut self, slot: u32, len: u32) {
        let s = slot as usize;
        if self.lengths.len() <= s {
            self.lengths.resize(s + 1, 0);
        }
        self.lengths[s] = len;
        self.docs += 1;
        self.total_len += u64::from(len);
    }

    /// Adds one posting. Each (term, document) pair is added once.
    pub fn add_posting(&mut self, term: &str, slot: u32, tf: u32) {
        let tf = u8::try_from(tf).unwrap_or(u8::MAX);
        match self.postings.get_mut(term) {
            Some(list) => {
                list.slots.push(slot);
                list.tfs.push(tf);
            }
            None => {
                let list = Postings {
                    slots: vec![slot],
                    tfs: vec![tf],
                };
                self.postings.insert(term.to_owned(), list);
            }
        }
    }

    /// Removes the document in `slot` and its postings for `doc_terms`.
    pub fn remove(&mut self, slot: u32, doc_terms: impl IntoIterator<Item = String>) {
        for t in doc_terms {
            if let Some(list) = self.postings.get_mut(&t) {
                if let Some(i) = find(&list.slots, slot) {
                    list.slots.swap_remove(i);
                    list.tfs.swap_remove(i);
                }
                if list.slots.is_empty() {
                    self.postings.remove(&t);
                }
            }
        }
        if let Some(l) = self.lengths.get_mut(slot as usize) {
            self.total_len -= u64::from(*l);
            *l = 0;
            self.docs -= 1;
        }
    }

    /// Number of indexed documents.
    pub fn documents(&self) -> usize {
        self.docs
    }

    /// Number of documents holding `term`.
    pub fn document_frequency(&self, term: &str) -> usize {
        self.postings.get(term).map_or(0, Postings::len)
    }

    /// Number of distinct terms.
    pub fn vocabulary(&self) -> usize {
        self.postings.len()
    }

    /// `true` if every posting points at a slot accepted by `live` (used by
    /// tests proving that forget leaves no dangling entry).
    pub fn all_postings(&self, live: impl Fn(u32) -> bool) -> bool {
        self.postings
            .values()
            .all(|l| l.slots.iter().all(|s| live(*s)))
    }

    /// Writes the index to a snapshot (see `snapshot.rs`).
    pub(crate) fn write_to(&self, w: &mut Writer) -> std::io::Result<()> {
        w.u32s(&self.lengths)?;
        w.len(self.postings.len())?;
        for (term, list) in &self.postings {
            w.str(term)?;
            w.u32s(&list.slots)?;
            w.bytes(&list.tfs)?;
        }
        Ok(())
    }

    /// Reads what [`LexicalIndex::write_to`] wrote, for the memories in the
    /// slots `live` accepts (below `slots`): every posting must name a live
    /// slot at most once per term with a frequency of at least 1, and free
    /// slots must have no length. The counts are recomputed, not trusted.
    pub(crate) fn read_from(
        r: &mut Reader<'_>,
        slots: u32,
        live: impl Fn(u32) -> bool,
    ) -> Result<Self, SnapshotError> {
        let lengths = r.u32s(u32::MAX)?;
        if lengths.len() > slots as usize {
            return Err(invalid("document lengths beyond the last slot"));
        }
        let mut docs = 0;
        let mut total_len = 0u64;
        for (slot, len) in lengths.iter().enumerate() {
            if live(slot as u32) {
                docs += 1;
                total_len += u64::from(*len);
            } else if *len != 0 {
                return Err(invalid("a free slot with a document length"));
            }
        }
        let terms = r.len(usize::MAX)?;
        let mut postings = HashMap::with_capacity(terms);
        // seen[slot] == n + 1 once term n listed the slot.
        let mut seen = vec![0u32; lengths.len()];
        for n in 0..terms {
            let term = r.string()?;
            let slots = r.u32s(lengths.len() as u32)?;
            let tfs = r.bytes()?.to_vec();
            if slots.is_empty() || tfs.len() != slots.len() || tfs.contains(&0) {
                return Err(invalid("posting list"));
            }
            let mark = n as u32 + 1;
            for &d in &slots {
                if !live(d) || std::mem::replace(&mut seen[d as usize], mark) == mark {
                    return Err(invalid("a posting for a free slot, or listed twice"));
                }
            }
            if postings.insert(term, Postings { slots, tfs }).is_some() {
                return Err(invalid("a term listed twice"));
            }
        }
        Ok(LexicalIndex {
            postings,
            lengths,
            docs,
            total_len,
        })
    }

    /// Drops spare capacity (after a bulk load).
    pub fn shrink_to_fit(&mut self) {
        for list in self.postings.values_mut() {
            list.slots.shrink_to_fit();
            list.tfs.shrink_to_fit();
        }
        self.postings.shrink_to_fit();
        self.lengths.shrink_to_fit();
    }

    /// Documents of exactly `len` terms containing the rarest of `terms`:
    /// the candidates for an identical text (the caller compares contents),
    /// found without any per-content table. Empty when a term is not
    /// indexed at all.
    pub fn same_length_candidates<'a>(
        &self,
        terms: impl IntoIterator<Item = &'a str>,
        len: u32,
    ) -> Vec<u32> {
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
            .slots
            .iter()
            .filter(|d| self.lengths[**d as usize] == len)
            .copied()
            .collect()
    }

    /// BM25 contribution of one posting list to each of its documents:
    /// `idf · tf · (k1 + 1) / (tf + k1 · (1 − b + b · dl / avgdl))`, with the
    /// per-list constants folded so each posting costs one division.
    fn scored<'a>(
        &'a self,
        list: &'a Postings,
        n: f64,
        avgdl: f64,
    ) -> impl Iterator<Item = (u32, f64)> + 'a {
        let df = list.len() as f64;
        let idf = ((n - df + 0.5) / (df + 0.5) + 1.0).ln();
        let numerator = idf * (K1 + 1.0);
        let (base, per_term) = (K1 * (1.0 - B), K1 * B / avgdl);
        list.slots.iter().zip(&list.tfs).map(move |(d, tf)| {
            let tf = f64::from(*tf);
            let dl = f64::from(self.lengths[*d as usize]);
            (*d, numerator * tf / (tf + base + per_term * dl))
        })
    }

    /// BM25 scores of every document matching any query term and accepted
    /// by `keep` (run once per matching document), unordered: the caller
    /// ranks them by score with ties broken by memory id, which unlike a
    /// slot is the same after a restart.
    pub fn search(&self, query: &str, keep: impl Fn(u32) -> bool) -> Vec<(u32, f64)> {
        self.search_top(query, 0, keep)
    }

    /// [`LexicalIndex::search`] cut to the `limit` best scores (0: no cut)
    /// and every match tied with the last of them, unordered. With a large
    /// space and common terms this skips materialising and sorting every
    /// match: the cut is found with a `limit`-sized heap over the scores.
    /// `keep` may run more than once for a document.
    pub fn search_top(
        &self,
        query: &str,
        limit: usize,
        keep: impl Fn(u32) -> bool,
    ) -> Vec<(u32, f64)> {
        let n = self.docs as f64;
        if n == 0.0 {
            return Vec::new();
        }
        let avgdl = (self.total_len as f64 / n).max(1.0);
        let mut query_terms = terms(query);
        query_terms.sort();
        query_terms.dedup();
        let lists: Vec<&Postings> = query_terms
            .iter()
            .filter_map(|t| self.postings.get(t))
            .collect();
        let total: usize = lists.iter().map(|l| l.len()).sum();
        let score = |list| self.scored(list, n, avgdl);
        // Few postings: accumulate in a small map instead of zeroing an
        // array as large as the space.
        if total * 64 < self.lengths.len() {
            let mut acc: HashMap<u32, f64> = HashMap::with_capacity(total);
            for list in lists {
                for (d, s) in score(list) {
                    *acc.entry(d).or_insert(0.0) += s;
                }
            }
            let hits = acc.into_iter().filter(|(d, _)| keep(*d)).collect();
            return cut_with_ties(hits, limit);
        }
        // A per-thread score array, reused across queries and cleared
        // through the touched list (allocating and zeroing one as large as
        // the space per query costs more than the scoring at 1M memories).
        SCORES.with(|cell| {
            let mut scores = cell.borrow_mut();
            if scores.len() < self.lengths.len() {
                scores.resize(self.lengths.len(), 0.0);
            }
            let mut touched: Vec<u32> = Vec::with_capacity(total.min(self.lengths.len()));
            for list in lists {
                for (d, s) in score(list) {
                    let slot = &mut scores[d as usize];
                    if *slot == 0.0 {
                        touched.push(d);
                    }
                    *slot += s as f32;
                }
            }
            // Scores are positive, so their bit patterns order like them.
            let mut cut = 0u32;
            if limit > 0 && touched.len() > limit {
                let mut best = std::collections::BinaryHeap::with_capacity(limit + 1);
                for &d in &touched {
                    let bits = scores[d as usize].to_bits();
                    let full = best.len() == limit;
                    if full
                        && best
                            .peek()
                            .is_some_and(|m: &std::cmp::Reverse<u32>| bits <= m.0)
                    {
                        continue;
                    }
                    if keep(d) {
                        best.push(std::cmp::Reverse(bits));
                        if full {
                            best.pop();
                        }
                    }
                }
                if best.len() == limit {
                    cut = best.peek().map_or(0, |m| m.0);
                }
            }
            let mut out = Vec::with_capacity(if cut > 0 { limit * 2 } else { touched.len() });
            for d in touched {
                let s = std::mem::take(&mut scores[d as usize]);
                if s.to_bits() >= cut && keep(d) {
                    out.push((d, f64::from(s)));
                }
            }
            out
        })
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
    fn distinctive_terms_drop_stop_words_and_fillers() {
        assert!(
            STOP_WORDS.windows(2).all(|w| w[0] < w[1]),
            "sorted and unique, for binary search"
        );
        assert!(
            distinctive_terms("Haha ok, see you. Yeah!")
                .iter()
                .eq(["see"])
        );
        assert_eq!(
            distinctive_terms("I live in Berlin, Maya said. I LIVE in Berlin."),
            ["live", "berlin", "maya", "said"]
        );
        assert_eq!(
            distinctive_terms("I don\u{2019}t know x 東京"),
            ["know", "東", "京"]
        );
        assert!(distinctive_terms("it is what it is").is_empty());
    }

    fn add(idx: &mut LexicalIndex, slot: u32, text: &str) {
        let (tf, len) = term_frequencies(text);
        idx.add_document(slot, len);
        for (t, f) in tf {
            idx.add_posting(&t, slot, f);
        }
    }

    fn ranked(idx: &LexicalIndex, q: &str, keep: impl Fn(u32) -> bool) -> Vec<(u32, f64)> {
        let mut v = idx.search(q, keep);
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// Reference: every match sorted by score, cut at the `limit`-th with ties.
    fn best_with_ties(mut v: Vec<(u32, f64)>, limit: usize) -> Vec<(u32, f64)> {
        if limit > 0 && v.len() > limit {
            v.sort_by(|a, b| b.1.total_cmp(&a.1));
            let cut = v[limit - 1].1;
            v.retain(|h| h.1 >= cut);
        }
        v.sort_by_key(|h| h.0);
        v
    }

    #[test]
    fn search_top_keeps_exactly_the_best_and_their_ties_under_filters() {
        let words = ["alpha", "river", "stone", "cloud", "engine", "garden"];
        let mut idx = LexicalIndex::default();
        let mut x = 7u64;
        for slot in 0..3000u32 {
            let text: Vec<&str> = (0..(slot % 5 + 1))
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    words[(x >> 33) as usize % words.len()]
                })
                .collect();
            add(&mut idx, slot, &text.join(" "));
        }
        for q in ["river", "river garden", "alpha stone cloud", "nothing"] {
            for limit in [0, 1, 3, 10, 50] {
                for modulo in [1, 3, 7] {
                    let keep = |s: u32| s % modulo == 0;
                    let want = best_with_ties(idx.search_top(q, 0, keep), limit);
                    let mut got = idx.search_top(q, limit, keep);
                    got.sort_by_key(|h| h.0);
                    assert_eq!(got, want, "{q:?} limit {limit} keep %{modulo}");
                    if limit > 0 && !want.is_empty() {
                        assert!(got.len() >= limit.min(want.len()));
                    }
                }
            }
        }
    }

    #[test]
    fn rarer_terms_weigh_more_and_filters_apply_before_ranking() {
        let mut idx = LexicalIndex::default();
        add(&mut idx, 1, "the dog barked");
        add(&mut idx, 2, "the cat slept");
        add(&mut idx, 3, "the dog and the cat");
        let hits = ranked(&idx, "dog", |_| true);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].0, 1, "shorter document ranks first");
        let hits = ranked(&idx, "dog", |s| s != 1);
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![3]);
        let the = ranked(&idx, "the", |_| true);
        let barked = ranked(&idx, "barked", |_| true);
        assert!(barked[0].1 > the[0].1, "rare term outweighs a common one");
        // The sparse path (few postings in a large index) scores the same.
        for s in 10..200 {
            add(&mut idx, s, "filler words only");
        }
        assert_eq!(ranked(&idx, "barked", |_| true)[0].0, 1);
    }

    #[test]
    fn find_returns_the_first_position_in_chunks_and_tail() {
        let v: Vec<u32> = (0..37).collect();
        for x in [0, 15, 16, 31, 32, 36] {
            assert_eq!(find(&v, x), Some(x as usize));
        }
        assert_eq!(find(&v, 37), None);
        assert_eq!(find(&[], 1), None);
        assert_eq!(find(&[7, 3, 7], 7), Some(0));
    }

    /// Cost of removing a document at 1M documents from a 50-word
    /// vocabulary, printed (`cargo test --release --workspace --lib --
    /// --ignored lexical_remove_cost --nocapture`; docs/performance.md
    /// quotes it).
    #[test]
    #[ignore = "prints a measurement; builds a 1M-document index"]
    fn lexical_remove_cost_at_1m_documents() {
        let mut idx = LexicalIndex::default();
        let mut x = 99u64;
        let mut docs = Vec::new();
        for slot in 0..1_000_000u32 {
            let mut t: Vec<String> = (0..12)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("w{}", x % 50)
                })
                .collect();
            t.sort();
            t.dedup();
            idx.add_document(slot, t.len() as u32);
            for w in &t {
                idx.add_posting(w, slot, 1);
            }
            docs.push(t);
        }
        let gone = |k: u32| k * 997 % 1_000_000;
        let t = std::time::Instant::now();
        for k in 0..1000 {
            idx.remove(gone(k), docs[gone(k) as usize].clone());
        }
        eprintln!(
            "remove: {:?} per document at 1M documents (50-word vocabulary)",
            t.elapsed() / 1000
        );
        assert!(idx.all_postings(|s| (0..1000).all(|k| gone(k) != s)));
    }

    #[test]
    fn removed_documents_leave_no_posting() {
        let mut idx = LexicalIndex::default();
        add(&mut idx, 0, "red apple");
        add(&mut idx, 1, "green apple");
        idx.remove(0, terms("red apple"));
        assert!(idx.all_postings(|s| s != 0));
        assert_eq!(idx.documents(), 1);
        assert_eq!(
            idx.vocabulary(),
            2,
            "'red' disappears with its only document"
        );
        add(&mut idx, 0, "red pear");
        let apple: Vec<u32> = ranked(&idx, "apple", |_| true)
            .into_iter()
            .map(|h| h.0)
            .collect();
        assert_eq!(apple, vec![1]);
        assert_eq!(idx.same_length_candidates(["pear", "red"], 2), vec![0]);
        assert!(idx.same_length_candidates(["pear"], 3).is_empty());
    }
}
