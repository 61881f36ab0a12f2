//! `graph-bench`: the memory graph end to end (WAL fsync included).
//!
//! Measures remember throughput at 1 and 64 writers, preloads N memories,
//! then recall latency (lexical, lexical + spreading, and with embeddings),
//! RAM per memory and cold start (reopen + index rebuild) — all in one run.
//!
//! Usage: `graph-bench [--dir DIR] [--memories N] [--vectors N] [--dim D] [--queries Q] [--seconds S] [--ann-vectors N]`
//! (`--vectors` defaults to a tenth of `--memories`)

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use engram_graph::{Cue, Graph, GraphConfig, OpenOptions, RememberRequest, Spread};
use hdrhistogram::Histogram;

struct Args {
    dir: PathBuf,
    memories: u64,
    dim: usize,
    queries: usize,
    seconds: f64,
    ann_vectors: usize,
    vectors: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        dir: std::env::temp_dir(),
        memories: 100_000,
        dim: 384,
        queries: 2_000,
        seconds: 3.0,
        ann_vectors: 100_000,
        vectors: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => a.dir = PathBuf::from(value()?),
            "--memories" => {
                a.memories = value()?.parse().map_err(|e| format!("--memories: {e}"))?
            }
            "--dim" => a.dim = value()?.parse().map_err(|e| format!("--dim: {e}"))?,
            "--queries" => a.queries = value()?.parse().map_err(|e| format!("--queries: {e}"))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--vectors" => {
                a.vectors = Some(value()?.parse().map_err(|e| format!("--vectors: {e}"))?)
            }
            "--ann-vectors" => {
                a.ann_vectors = value()?
                    .parse()
                    .map_err(|e| format!("--ann-vectors: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.memories == 0 || a.queries == 0 || a.dim == 0 || a.dim > 4096 || a.seconds <= 0.0 {
        return Err(
            "--memories, --queries, --seconds must be positive; --dim within 1..=4096".into(),
        );
    }
    Ok(a)
}

/// Counts the bytes Rust code holds on the heap (RocksDB allocates through
/// C++ `new`, so its caches and memtables are not included): the measure of
/// what the graph's in-memory structures cost per memory.
struct CountingAlloc;

static HEAP: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a
// counter is updated besides.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { std::alloc::System.alloc(l) };
        if !p.is_null() {
            HEAP.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(p, l) };
        HEAP.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let q = unsafe { std::alloc::System.realloc(p, l, new) };
        if !q.is_null() {
            HEAP.fetch_add(new, std::sync::atomic::Ordering::Relaxed);
            HEAP.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn heap_bytes() -> usize {
    HEAP.load(std::sync::atomic::Ordering::Relaxed)
}

/// Deterministic pseudo-random numbers (SplitMix64) so runs are comparable.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const VOCAB: u64 = 20_000;

/// A word with a Zipf-like frequency: low ranks are common.
fn word(r: u64) -> String {
    let u = (r % 1_000_000) as f64 / 1_000_000.0;
    let rank = (VOCAB as f64).powf(u) as u64;
    format!("w{rank}")
}

fn content(i: u64) -> String {
    (0..12)
        .map(|j| word(mix(i * 31 + j)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn embedding(i: u64, dim: usize) -> Vec<f32> {
    (0..dim as u64)
        .map(|j| (mix(i * 7919 + j) % 2000) as f32 / 1000.0 - 1.0)
        .collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn open(dir: &Path) -> Graph {
    Graph::open(dir, GraphConfig::default(), OpenOptions::default())
        .expect("open graph")
        .0
}

/// Remember from `threads` writers for `seconds`; returns ops/s and latencies.
fn remember_rate(
    g: &Arc<Graph>,
    space: &str,
    threads: usize,
    seconds: f64,
    base: u64,
) -> (f64, Histogram<u64>) {
    let next = Arc::new(AtomicU64::new(base));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let g = Arc::clone(g);
            let next = Arc::clone(&next);
            let space = space.to_owned();
            std::thread::spawn(move || {
                let mut h = hist();
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    let req = RememberRequest {
                        content: content(i),
                        ..RememberRequest::default()
                    };
                    g.remember(&space, req).expect("remember");
                    let _ = h.record(t.elapsed().as_micros().max(1) as u64);
                }
                h
            })
        })
        .collect();
    let mut h = hist();
    for t in handles {
        h.add(t.join().expect("writer")).expect("merge");
    }
    (h.len() as f64 / start.elapsed().as_secs_f64(), h)
}

fn preload(g: &Arc<Graph>, space: &str, n: u64, dim: Option<usize>) {
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let g = Arc::clone(g);
            let next = Arc::clone(&next);
            let space = space.to_owned();
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let req = RememberRequest {
                        content: content(i),
                        embedding: dim.map(|d| embedding(i, d)),
                        session: Some(format!("s{}", i % 1000)),
                        ..RememberRequest::default()
                    };
                    g.remember(&space, req).expect("preload");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("preload thread");
    }
}

fn recall_latency(
    g: &Graph,
    space: &str,
    queries: usize,
    make: impl Fn(u64) -> Cue,
    spread: &Spread,
) -> Histogram<u64> {
    let mut h = hist();
    for q in 0..queries as u64 {
        let cue = make(q);
        let t = Instant::now();
        let r = g.recall(space, &cue, 10, spread).expect("recall");
        let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        std::hint::black_box(r);
    }
    h
}

fn row(name: &str, h: &Histogram<u64>) {
    println!(
        "| {name} | {} | {} | {} |",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.max()
    );
}

/// HNSW alone on random vectors: build time, recall@10 against brute force,
/// query latency of both. Random vectors are the hard case for HNSW (no
/// cluster structure to exploit).
fn ann_section(n: usize, dim: usize) {
    use engram_graph::hnsw::{Hnsw, HnswParams};
    let key = |i: u64| -> [u8; 16] {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&mix(i).to_be_bytes());
        k[8..].copy_from_slice(&i.to_be_bytes());
        k
    };
    let mut idx = Hnsw::new(dim, HnswParams::default());
    let t = Instant::now();
    for i in 0..n as u64 {
        idx.insert(key(i), &embedding(i, dim));
    }
    let build = t.elapsed();
    let (mut hits, mut ann_h, mut exact_h) = (0usize, hist(), hist());
    let (mut scan_hits, mut scan_h) = (0usize, hist());
    let queries = 200u64;
    for q in 0..queries {
        let v = embedding(q + 9_000_000, dim);
        let t = Instant::now();
        let got = idx.search(&v, 10, |_| true);
        let _ = ann_h.record(t.elapsed().as_micros().max(1) as u64);
        let t = Instant::now();
        let scanned = idx.scan(&v, 10, |_| true);
        let _ = scan_h.record(t.elapsed().as_micros().max(1) as u64);
        let t = Instant::now();
        let truth = idx.exact(&v, 10, |_| true);
        let _ = exact_h.record(t.elapsed().as_micros().max(1) as u64);
        hits += got
            .iter()
            .filter(|g| truth.iter().any(|t| t.0 == g.0))
            .count();
        scan_hits += scanned
            .iter()
            .filter(|g| truth.iter().any(|t| t.0 == g.0))
            .count();
    }
    println!();
    println!(
        "HNSW (m 16, ef_construction 128, ef_search 256) on {n} random {dim}-dim vectors: built in {:.1} s; recall@10 vs brute force {:.3}; query p50/p99 {}/{} µs vs exact scan {}/{} µs.",
        build.as_secs_f64(),
        hits as f64 / (queries as f64 * 10.0),
        ann_h.value_at_quantile(0.5),
        ann_h.value_at_quantile(0.99),
        exact_h.value_at_quantile(0.5),
        exact_h.value_at_quantile(0.99),
    );
    println!(
        "int8 scan + exact re-rank (the default below exact_search_below vectors) on the same index: recall@10 {:.3}; query p50/p99 {}/{} µs.",
        scan_hits as f64 / (queries as f64 * 10.0),
        scan_h.value_at_quantile(0.5),
        scan_h.value_at_quantile(0.99),
    );
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("graph-bench: {e}");
            std::process::exit(2);
        }
    };
    let root = a
        .dir
        .join(format!("engram-graph-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let g = Arc::new(open(&root));
    g.create_space("lexical", None).expect("space");
    g.create_space("vectors", Some(a.dim as u32))
        .expect("space");

    let (r1, h1) = remember_rate(&g, "default", 1, a.seconds, 10_000_000);
    let (r64, h64) = remember_rate(&g, "default", 64, a.seconds, 20_000_000);
    println!("| remember (WAL fsync before ack) | writers | ops/s | p50 µs | p99 µs |");
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| text only | 1 | {r1:.0} | {} | {} |",
        h1.value_at_quantile(0.5),
        h1.value_at_quantile(0.99)
    );
    println!(
        "| text only | 64 | {r64:.0} | {} | {} |",
        h64.value_at_quantile(0.5),
        h64.value_at_quantile(0.99)
    );

    let rss0 = rss_bytes();
    let t = Instant::now();
    preload(&g, "lexical", a.memories, None);
    let load_s = t.elapsed().as_secs_f64();
    let rss_lexical = rss_bytes().saturating_sub(rss0);
    let vec_n = a.vectors.unwrap_or(a.memories / 10).max(1);
    preload(&g, "vectors", vec_n, Some(a.dim));

    println!();
    println!(
        "Preloaded {} text memories in {load_s:.1} s ({:.0}/s, 64 writers); {vec_n} memories with {}-dim embeddings.",
        a.memories,
        a.memories as f64 / load_s,
        a.dim
    );
    println!();
    println!("| recall, limit 10 | p50 µs | p99 µs | max µs |");
    println!("|---|---:|---:|---:|");
    let lexical_cue = |q: u64| Cue {
        text: Some(format!("{} {}", word(mix(q ^ 0xA5)), word(mix(q ^ 0x5A)))),
        ..Cue::default()
    };
    let no_spread = Spread {
        depth: 0,
        ..Spread::default()
    };
    row(
        &format!("lexical, {} memories, no spreading", a.memories),
        &recall_latency(&g, "lexical", a.queries, lexical_cue, &no_spread),
    );
    row(
        &format!("lexical, {} memories, spreading depth 2", a.memories),
        &recall_latency(&g, "lexical", a.queries, lexical_cue, &Spread::default()),
    );
    let vq = (a.queries / 10).max(10);
    let dim = a.dim;
    row(
        &format!("vector, {vec_n} × {dim}-dim, spreading depth 2"),
        &recall_latency(
            &g,
            "vectors",
            vq,
            |q| Cue {
                embedding: Some(embedding(q + 5_000_000, dim)),
                ..Cue::default()
            },
            &Spread::default(),
        ),
    );
    println!();
    println!(
        "RAM: {:.0} bytes of RSS per text memory (content ~{} bytes, held in RocksDB, not in RAM).",
        rss_lexical as f64 / a.memories as f64,
        content(1).len()
    );
    let t = Instant::now();
    drop(g);
    let shutdown = t.elapsed();
    let t = Instant::now();
    let g = open(&root);
    let cold = t.elapsed();
    let heap0 = heap_bytes();
    let t = Instant::now();
    let lexical_n = g.space_stats("lexical").expect("load lexical").memories;
    let lexical_load = t.elapsed();
    let per_memory = heap_bytes().saturating_sub(heap0) as f64 / lexical_n as f64;
    println!(
        "Index RAM: loading the lexical space ({lexical_n} text memories) took {:.2} s and {per_memory:.0} bytes of heap per memory (metadata, postings, id maps; content stays in RocksDB).",
        lexical_load.as_secs_f64()
    );
    let t = Instant::now();
    g.warm_up().expect("warm up");
    let warm = t.elapsed();
    let total: usize = g.spaces().expect("spaces").iter().map(|s| s.memories).sum();
    println!(
        "Cold start: shutdown (memtable flush) took {:.2} s; reopen with {total} memories took {:.2} s to be ready (recovery; indexes load lazily); loading every space's indexes took {:.2} s more.",
        shutdown.as_secs_f64(),
        cold.as_secs_f64(),
        warm.as_secs_f64()
    );
    drop(g);
    let _ = std::fs::remove_dir_all(&root);
    if a.ann_vectors > 0 {
        ann_section(a.ann_vectors, a.dim);
    }
}
