//! Invariant 9 for the indexes: memory is bounded by `index_budget_mb`,
//! not by the number of spaces. Idle spaces leave memory (least recently
//! used first, their snapshot written) and come back on use with the same
//! answers; listing spaces loads none of them; and unloading a space while
//! it is being written loses nothing.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use engram_graph::{
    Begun, ConsolidationConfig, Cue, EngineConfig, Graph, GraphConfig, GraphError, OpenOptions,
    RememberRequest, SpaceStats, Spread,
};
use engram_wal::{Durability, WalConfig};

// The server's allocator: RSS after unloading depends on whether freed
// index memory goes back to the system, which glibc's malloc often keeps.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No fsync (these tests are about memory, not durability against power
/// loss) and no background consolidation.
fn config(index_budget_mb: u64) -> GraphConfig {
    GraphConfig {
        engine: EngineConfig {
            wal: WalConfig {
                durability: Durability::None,
                ..WalConfig::default()
            },
            ..EngineConfig::default()
        },
        consolidation: ConsolidationConfig {
            interval_sec: 0,
            ..ConsolidationConfig::default()
        },
        index_budget_mb,
        ..GraphConfig::default()
    }
}

fn open(dir: &Path, config: GraphConfig) -> Graph {
    Graph::open(dir, config, OpenOptions::default())
        .expect("open graph")
        .0
}

fn text(content: &str) -> RememberRequest {
    RememberRequest {
        content: content.into(),
        ..RememberRequest::default()
    }
}

fn cue(t: &str) -> Cue {
    Cue {
        text: Some(t.into()),
        ..Cue::default()
    }
}

/// Every match of `q` (the limit is above the space's size) as sorted
/// (id, content) pairs: the order of near-equal scores depends on the clock
/// (forgetting curve, access statistics), not on the indexes.
fn answers(g: &Graph, space: &str, q: &str) -> BTreeSet<(String, String)> {
    g.recall(space, &cue(q), 1000, &Spread::default())
        .expect("recall")
        .into_iter()
        .map(|r| (r.memory.id, r.memory.content))
        .collect()
}

/// The id of the best match of `q`.
fn best(g: &Graph, space: &str, q: &str) -> Option<String> {
    g.recall(space, &cue(q), 1, &Spread::default())
        .expect("recall")
        .into_iter()
        .next()
        .map(|r| r.memory.id)
}

/// What the indexes decide of a space's statistics (the hot tier, the HNSW
/// backlog and tombstones exist only in memory).
fn figures(s: &SpaceStats) -> (String, usize, Option<u32>, usize, usize, usize) {
    (
        s.name.clone(),
        s.memories,
        s.embedding_dim,
        s.edges,
        s.terms,
        s.cold,
    )
}

fn loaded_count(g: &Graph) -> usize {
    g.loaded_spaces().0
}

#[test]
fn idle_spaces_are_unloaded_under_the_index_budget_and_reloaded_on_use() {
    const SPACES: usize = 20;
    const EACH: usize = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path(), config(1));
    let names: Vec<String> = (0..SPACES).map(|s| format!("s{s:02}")).collect();
    for (s, name) in names.iter().enumerate() {
        g.create_space(name, None).expect("create");
        for i in 0..EACH {
            let mut r = text(&format!(
                "note {i} of space {s} about topic{} with mark{s}x{i}",
                i % 7
            ));
            r.session = Some(format!("chat{}", i % 3));
            g.remember(name, r).expect("remember");
        }
    }
    // Used in name order: s00 is the least recently used.
    let mut before = Vec::new();
    for (s, name) in names.iter().enumerate() {
        let stats = g.space_stats(name).expect("stats");
        let topic = answers(&g, name, "topic3");
        let mark = best(&g, name, &format!("mark{s}x17"));
        assert!(!topic.is_empty() && mark.is_some(), "{name}");
        before.push((figures(&stats), topic, mark));
    }
    assert_eq!(loaded_count(&g), SPACES + 1, "default and the 20 spaces");

    let budget = g.index_budget_bytes();
    assert_eq!(budget, 1024 * 1024);
    let unloaded = g.unload_idle_spaces();
    assert!(unloaded > 0, "20 spaces of 200 memories exceed 1 MiB");
    assert_eq!(loaded_count(&g), SPACES + 1 - unloaded);
    assert!(
        g.index_bytes() <= budget / 10 * 9,
        "{} estimated bytes left in memory, budget {budget} (unloaded to 90 %)",
        g.index_bytes()
    );
    // Least recently used first: once a space is still loaded, so is
    // every space used after it, and the most recently used one stays.
    let loaded: Vec<bool> = names
        .iter()
        .map(|n| g.space_loaded(n).expect("space"))
        .collect();
    assert!(!loaded[0] && loaded[SPACES - 1], "{loaded:?}");
    assert!(
        loaded.windows(2).all(|w| !w[0] || w[1]),
        "not least recently used first: {loaded:?}"
    );
    assert!(!g.space_loaded("default").expect("default"), "never used");

    // Statistics of an unloaded space come without loading it; its first
    // use loads it from the snapshot written at the unload, with the same
    // answers.
    let (from_snapshot, refused) = g.snapshot_loads();
    assert_eq!((from_snapshot, refused), (0, 0));
    let mut reloaded = 0;
    for (s, name) in names.iter().enumerate() {
        if loaded[s] {
            continue;
        }
        let (stats, topic, mark) = &before[s];
        let now = g.space_stats(name).expect("stats");
        assert_eq!(&figures(&now), stats, "{name}: figures while unloaded");
        assert!(!g.space_loaded(name).expect("space"), "stats loaded {name}");
        assert_eq!(&answers(&g, name, "topic3"), topic, "{name}");
        assert_eq!(&best(&g, name, &format!("mark{s}x17")), mark, "{name}");
        assert!(g.space_loaded(name).expect("space"), "{name} loaded by use");
        let now = g.space_stats(name).expect("stats");
        assert_eq!(&figures(&now), stats, "{name}: figures after reload");
        reloaded += 1;
    }
    assert_eq!(
        g.snapshot_loads(),
        (reloaded, 0),
        "every unloaded space came back from its snapshot, none rebuilt"
    );
    // And it takes writes again.
    g.remember(&names[0], text("written after the reload"))
        .expect("remember");
    assert_eq!(g.space_stats(&names[0]).expect("stats").memories, EACH + 1);
}

#[test]
fn listing_spaces_loads_nothing() {
    const SPACES: usize = 30;
    let dir = tempfile::tempdir().expect("tempdir");
    let expected: Vec<_> = {
        let g = open(dir.path(), config(1024));
        for s in 0..SPACES {
            let name = format!("l{s:02}");
            g.create_space(&name, (s % 3 == 0).then_some(4))
                .expect("create");
            for i in 0..=s {
                let mut r = text(&format!("entry {i} of {name} word{i}"));
                r.session = (s % 2 == 0).then(|| "walk".to_owned());
                if s % 3 == 0 {
                    r.embedding = Some(vec![1.0, i as f32, 0.5, s as f32]);
                }
                g.remember(&name, r).expect("remember");
            }
        }
        g.archive("l05", Duration::ZERO).expect("archive");
        let all = g.spaces().expect("spaces");
        assert_eq!(all.len(), SPACES + 1);
        assert_eq!(all[6].name, "l05");
        assert_eq!(all[6].cold, 6, "l05 is in the cold tier");
        let figs: Vec<_> = all.iter().map(figures).collect();
        // Dropped without a clean shutdown: no snapshot, no recorded
        // figures; listing counts them from the store.
        figs
    };
    let listed = |g: &Graph| -> Vec<_> {
        let all = g.spaces().expect("spaces");
        assert_eq!(loaded_count(g), 0, "listing loaded a space");
        all.iter().map(figures).collect()
    };

    let g = open(dir.path(), config(1024));
    assert_eq!(g.loaded_spaces(), (0, SPACES + 1));
    assert_eq!(listed(&g), expected, "counted from the store");
    assert_eq!(listed(&g), expected, "again, from the figures kept");
    let one = g.space_stats("l07").expect("stats");
    assert_eq!(figures(&one), expected[8]);
    assert_eq!(
        (one.hot, one.unlinked_vectors, one.vector_tombstones),
        (0, 0, 0)
    );
    assert_eq!(loaded_count(&g), 0, "space_stats loaded a space");
    drop(g);

    // After a restart the figures recorded by the listing are used.
    let g = open(dir.path(), config(1024));
    assert_eq!(listed(&g), expected, "from the recorded figures");

    // A write loads its space; unloaded again, the listing sees the write
    // without loading anything.
    g.remember("l03", text("one more entry")).expect("remember");
    assert_eq!(loaded_count(&g), 1);
    let l03 = figures(&g.space_stats("l03").expect("stats"));
    assert_eq!(l03.1, expected[4].1 + 1);
    assert!(g.unload_space("l03").expect("unload"), "l03 is idle");
    let mut want = expected.clone();
    want[4] = l03;
    let now = listed(&g);
    assert_eq!(now[4], want[4], "l03 counts its new memory");
    assert_eq!(now, want);
    // Deleted spaces leave the list; nothing is loaded to find that out.
    g.delete_space("l04").expect("delete");
    want.remove(5);
    assert_eq!(listed(&g), want);

    // A clean shutdown, then a restart: still nothing loaded to list.
    g.remember("l10", text("and one here")).expect("remember");
    want[10] = figures(&g.space_stats("l10").expect("stats"));
    assert_eq!(want[10].1, expected[11].1 + 1);
    assert!(g.seal_writes(Duration::from_secs(5)));
    assert_eq!(g.save_index_snapshots().spaces, 1, "only l10 is loaded");
    drop(g);
    let g = open(dir.path(), config(1024));
    assert_eq!(listed(&g), want, "after a clean restart");
}

#[test]
fn no_write_is_lost_across_an_unload() {
    const SPACES: usize = 4;
    const EACH: usize = 60;
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path(), config(1));
    let names: Vec<String> = (0..SPACES).map(|s| format!("w{s}")).collect();
    for name in &names {
        g.create_space(name, None).expect("create");
    }
    let done = AtomicBool::new(false);
    let unloads = AtomicUsize::new(0);
    // Per space: (id, content) acknowledged and still there; forgotten ids.
    type Written = (Vec<(String, String)>, Vec<String>);
    let written: Vec<Written> = std::thread::scope(|scope| {
        let (g, done, unloads, names) = (&g, &done, &unloads, &names);
        let unloader = scope.spawn(move || {
            while !done.load(Ordering::SeqCst) {
                for name in names {
                    if g.unload_space(name).expect("unload") {
                        unloads.fetch_add(1, Ordering::SeqCst);
                    }
                }
                unloads.fetch_add(g.unload_idle_spaces(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let writers: Vec<_> = (0..SPACES)
            .flat_map(|s| {
                let name = &names[s];
                // Plain remembers, some forgotten again.
                let plain = scope.spawn(move || {
                    let (mut kept, mut forgotten) = (Vec::new(), Vec::new());
                    for i in 0..EACH {
                        let content = format!("space{s} plain note{i} token{s}x0x{i}");
                        let id = g.remember(name, text(&content)).expect("remember").id;
                        if i % 10 == 3 {
                            g.forget(name, &id).expect("forget");
                            forgotten.push(id);
                        } else {
                            kept.push((id, content));
                        }
                        if i == EACH / 2 {
                            // Halfway, until the unloader got the space
                            // (between two remembers of the other writer).
                            let deadline = Instant::now() + Duration::from_secs(20);
                            while g.space_loaded(name).expect("space") {
                                assert!(Instant::now() < deadline, "{name} never unloaded");
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        } else if i % 8 == 0 {
                            std::thread::sleep(Duration::from_millis(2)); // idle a moment
                        }
                    }
                    (kept, forgotten)
                });
                // The API's three steps: the space cannot be unloaded
                // between the append and the index update.
                let stepped = scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    let mut kept = Vec::new();
                    for i in 0..EACH / 2 {
                        let content = format!("space{s} stepped note{i} token{s}x1x{i}");
                        let mut p = match g.remember_begin(name, text(&content)).expect("begin") {
                            Begun::Pending(p) => p,
                            Begun::Done(_) => panic!("no dedupe asked"),
                        };
                        assert!(
                            !g.unload_space(name).expect("unload"),
                            "{name} unloaded under a pending remember"
                        );
                        rt.block_on(p.group_commit());
                        let id = g.remember_finish(p).expect("finish").id;
                        kept.push((id, content));
                        if i % 4 == 0 {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    (kept, Vec::new())
                });
                [plain, stepped]
            })
            .collect();
        let mut per_space: Vec<Written> = vec![(Vec::new(), Vec::new()); SPACES];
        for (k, w) in writers.into_iter().enumerate() {
            let (kept, forgotten) = w.join().expect("writer");
            per_space[k / 2].0.extend(kept);
            per_space[k / 2].1.extend(forgotten);
        }
        done.store(true, Ordering::SeqCst);
        unloader.join().expect("unloader");
        per_space
    });
    assert!(
        unloads.load(Ordering::SeqCst) > 0,
        "no unload happened between the writes"
    );
    assert!(
        g.snapshot_loads().0 > 0,
        "no space came back from a snapshot"
    );

    let check = |g: &Graph, when: &str| {
        for (s, name) in names.iter().enumerate() {
            let (kept, forgotten) = &written[s];
            let stats = g.space_stats(name).expect("stats");
            assert_eq!(stats.memories, kept.len(), "{when}: {name} memories");
            for (id, content) in kept {
                let m = g
                    .get(name, id, false)
                    .unwrap_or_else(|e| panic!("{when}: {name} lost {id}: {e}"));
                assert_eq!(&m.content, content, "{when}");
                let token = content.rsplit(' ').next().expect("token");
                assert_eq!(
                    best(g, name, token).as_deref(),
                    Some(id.as_str()),
                    "{when}: {name} does not recall {content:?}"
                );
            }
            for id in forgotten {
                assert!(
                    matches!(g.get(name, id, false), Err(GraphError::MemoryNotFound(_))),
                    "{when}: {name} brought back forgotten {id}"
                );
                assert!(!g.mentions(name, id).expect("mentions"), "{when}: {id}");
            }
        }
    };
    check(&g, "after the writes");
    // Unloaded once more, then restarted without a clean shutdown.
    for name in &names {
        g.unload_space(name).expect("unload");
    }
    drop(g);
    let g = open(dir.path(), config(1));
    check(&g, "after a restart");
}

/// `VmRSS` and `VmHWM` of this process in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
#[ignore = "measurement (minutes): cargo test -p engram-graph --release --test budget -- --ignored --nocapture"]
fn measure_thousand_spaces_under_budget() {
    const SPACES: usize = 1000;
    const EACH: usize = 1000;
    // MEASURE_BUDGET_MB=0 measures the same data set without a budget.
    let budget_mb: u64 = std::env::var("MEASURE_BUDGET_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    const WORDS: [&str; 16] = [
        "meeting", "invoice", "garden", "travel", "recipe", "project", "doctor", "music", "budget",
        "school", "weather", "friend", "report", "coffee", "server", "holiday",
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path(), config(budget_mb));
    let (baseline, _) = rss_kib();
    let started = Instant::now();
    let names: Vec<String> = (0..SPACES).map(|s| format!("m{s:04}")).collect();
    for (s, name) in names.iter().enumerate() {
        g.create_space(name, None).expect("create");
        for i in 0..EACH {
            let content = format!(
                "note {i}: the {} about the {} with {} ({s})",
                WORDS[i % 16],
                WORDS[(i / 16 + s) % 16],
                WORDS[(i * 7 + s) % 16]
            );
            g.remember(name, text(&content)).expect("remember");
        }
        // What the background task does every second.
        if s % 10 == 9 {
            g.unload_idle_spaces();
        }
    }
    g.unload_idle_spaces();
    let written = started.elapsed();
    let (rss, peak) = rss_kib();
    let (loaded, total) = g.loaded_spaces();
    println!(
        "{SPACES} spaces x {EACH} memories written in {:.1} s; budget {budget_mb} MiB",
        written.as_secs_f64()
    );
    println!(
        "loaded {loaded} of {total}; estimated index bytes {} MiB",
        g.index_bytes() / (1024 * 1024)
    );
    println!(
        "RSS baseline {} MiB, after {} MiB (+{} MiB), peak {} MiB",
        baseline / 1024,
        rss / 1024,
        rss.saturating_sub(baseline) / 1024,
        peak / 1024
    );
    // RocksDB's own memory (memtables, block cache, open SST files' index
    // and filter blocks) is in RSS too, bounded by the storage settings.
    let st = g.engine().store().stats();
    let rocks_kib =
        (st.memtable_bytes + st.block_cache_usage_bytes + st.table_readers_bytes) / 1024;
    let mib = |b: u64| b / (1024 * 1024);
    println!(
        "RocksDB memtables {} MiB + block cache {} MiB + table readers {} MiB; \
         RSS without them {} MiB",
        mib(st.memtable_bytes),
        mib(st.block_cache_usage_bytes),
        mib(st.table_readers_bytes),
        rss.saturating_sub(rocks_kib) / 1024
    );

    let t = Instant::now();
    let listed = g.spaces().expect("spaces");
    println!(
        "listing {} spaces: {:.1} ms, loaded after listing: {}",
        listed.len(),
        t.elapsed().as_secs_f64() * 1000.0,
        g.loaded_spaces().0
    );

    let unloaded: Vec<&String> = names
        .iter()
        .filter(|n| !g.space_loaded(n).expect("space"))
        .take(20)
        .collect();
    if budget_mb == 0 {
        assert!(unloaded.is_empty(), "unloaded without a budget");
        return;
    }
    assert!(!unloaded.is_empty(), "nothing was unloaded");
    let mut first = Vec::new();
    let mut second = Vec::new();
    for name in &unloaded {
        let t = Instant::now();
        let hits = g
            .recall(name, &cue("garden coffee"), 10, &Spread::default())
            .expect("recall");
        first.push(t.elapsed());
        assert!(!hits.is_empty());
        let t = Instant::now();
        g.recall(name, &cue("garden coffee"), 10, &Spread::default())
            .expect("recall");
        second.push(t.elapsed());
    }
    first.sort();
    second.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "first recall in an unloaded space (n={}): median {:.2} ms, max {:.2} ms; \
         next recall: median {:.2} ms; loads from snapshot/refused: {:?}",
        first.len(),
        ms(first[first.len() / 2]),
        ms(first[first.len() - 1]),
        ms(second[second.len() / 2]),
        g.snapshot_loads()
    );
}
