//! The memory model end to end on a real engine: spaces, remember, forget,
//! link, recall, isolation, and recovery reproducing recall.

use std::collections::HashSet;
use std::path::Path;

use engram_graph::{
    Cue, DEFAULT_SPACE, Graph, GraphConfig, GraphError, LinkSpec, OpenOptions, RememberRequest,
    SpaceOptions, Spread, Via,
};
use engram_lsm::{Cf, keys};
use proptest::prelude::*;
use serde_json::json;

fn open(dir: &Path) -> Graph {
    open_with(dir, GraphConfig::default())
}

fn open_with(dir: &Path, config: GraphConfig) -> Graph {
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

fn ids(results: &[engram_graph::Recalled]) -> Vec<String> {
    results.iter().map(|r| r.memory.id.clone()).collect()
}

#[test]
fn remember_get_and_distinct_texts_stay_distinct() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    let mut req = text("Ana adopted a dog");
    req.tags = vec!["pets".into()];
    req.metadata = json!({"source": "chat"})
        .as_object()
        .cloned()
        .expect("object");
    req.confidence = Some(0.9);
    let a = g.remember(DEFAULT_SPACE, req).expect("remember");
    let b = g
        .remember(DEFAULT_SPACE, text("Ana adopted a cat"))
        .expect("remember");
    assert_ne!(a.id, b.id);
    assert_eq!((a.sequence + 1, a.confidence), (b.sequence, 0.9));
    assert_eq!(b.confidence, 0.7, "documented default confidence");
    let m = g.get(DEFAULT_SPACE, &a.id, false).expect("get");
    assert_eq!(m.content, "Ana adopted a dog");
    assert_eq!(m.tags, vec!["pets".to_string()]);
    assert_eq!(m.metadata["source"], "chat");
    assert_eq!(m.space, "default");
    // Identical text: two memories unless the caller asks for dedupe.
    let again = g
        .remember(DEFAULT_SPACE, text("Ana adopted a dog"))
        .expect("remember");
    assert_ne!(again.id, a.id);
    let mut d = text("Ana adopted a dog");
    d.dedupe = true;
    let deduped = g.remember(DEFAULT_SPACE, d).expect("dedupe");
    assert!(deduped.deduplicated);
    assert!(deduped.id == a.id || deduped.id == again.id);
    assert_eq!(g.space_stats(DEFAULT_SPACE).expect("stats").memories, 3);
}

fn field<T: std::fmt::Debug>(r: Result<T, GraphError>) -> &'static str {
    match r {
        Err(GraphError::Invalid { field, .. }) => field,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn bad_input_gets_typed_errors_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("vec", Some(4)).expect("create");

    assert_eq!(field(g.remember("default", text(""))), "content");
    assert_eq!(
        field(g.remember("default", text(&"x".repeat(64 * 1024 + 1)))),
        "content"
    );
    let mut r = text("c");
    r.confidence = Some(1.5);
    assert_eq!(field(g.remember("default", r)), "confidence");
    let mut r = text("c");
    r.tags = (0..33).map(|i| i.to_string()).collect();
    assert_eq!(field(g.remember("default", r)), "tags");
    let mut r = text("c");
    r.metadata = json!({"big": "x".repeat(17 * 1024)})
        .as_object()
        .cloned()
        .expect("object");
    assert_eq!(field(g.remember("default", r)), "metadata");
    let mut r = text("c");
    r.embedding = Some(vec![0.1; 3]);
    assert_eq!(field(g.remember("vec", r.clone())), "embedding");
    assert_eq!(
        field(g.remember("default", r)),
        "embedding",
        "space without embeddings"
    );
    let mut r = text("c");
    r.embedding = Some(vec![f32::NAN; 4]);
    assert_eq!(field(g.remember("vec", r)), "embedding");
    assert!(matches!(
        g.remember("nope", text("c")),
        Err(GraphError::SpaceNotFound(_))
    ));
    assert!(matches!(
        g.create_space("Bad Name", None),
        Err(GraphError::InvalidSpaceName(_))
    ));
    assert!(matches!(
        g.create_space("vec", None),
        Err(GraphError::SpaceExists(_))
    ));
    assert!(matches!(
        g.get("default", "not-a-ulid", false),
        Err(GraphError::InvalidId(_))
    ));
    let mut r = text("c");
    r.links = vec![LinkSpec {
        target: ulid::Ulid::new().to_string(),
        weight: None,
    }];
    assert!(matches!(
        g.remember("default", r),
        Err(GraphError::MemoryNotFound(_))
    ));
    assert!(matches!(
        g.delete_space("default"),
        Err(GraphError::DefaultSpace)
    ));
    assert_eq!(
        field(g.recall("default", &cue("x"), 0, &Spread::default())),
        "limit"
    );
    assert_eq!(
        field(g.recall("default", &Cue::default(), 5, &Spread::default())),
        "cue"
    );
    let deep = Spread {
        depth: 9,
        ..Spread::default()
    };
    assert_eq!(
        field(g.recall("default", &cue("x"), 5, &deep)),
        "spread.depth"
    );
}

#[test]
fn spaces_are_durable_and_deleting_one_removes_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = GraphConfig {
        bootstrap_spaces: vec!["team-a".into()],
        ..GraphConfig::default()
    };
    let g = open_with(dir.path(), cfg.clone());
    let names: Vec<String> = g
        .spaces()
        .expect("spaces")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["default", "team-a"]);
    g.create_space("scratch", Some(8)).expect("create");
    let mut r = text("temporary thought");
    r.embedding = Some(vec![0.5; 8]);
    g.remember("scratch", r).expect("remember");
    let sid = g.space_id("scratch").expect("id");
    drop(g);

    let g = open_with(dir.path(), cfg.clone());
    let s = g.space_stats("scratch").expect("scratch survives restart");
    assert_eq!((s.memories, s.embedding_dim), (1, Some(8)));
    g.delete_space("scratch").expect("delete");
    for cf in Cf::DATA {
        let left = g
            .engine()
            .store()
            .scan_space(cf, sid)
            .expect("scan")
            .count();
        assert_eq!(left, 0, "{} keeps data of a deleted space", cf.name());
    }
    drop(g);
    let g = open_with(dir.path(), cfg);
    assert!(matches!(
        g.space_stats("scratch"),
        Err(GraphError::SpaceNotFound(_))
    ));
    g.create_space("scratch", None).expect("recreate");
    assert_eq!(
        g.space_stats("scratch").expect("stats").memories,
        0,
        "a new space never sees old data"
    );
    assert_ne!(
        g.space_id("scratch").expect("id"),
        sid,
        "space ids are never reused"
    );
}

/// Every key of `space` in every data column family that mentions `id`.
fn store_mentions(g: &Graph, space: &str, id: &str) -> Vec<String> {
    let sid = g.space_id(space).expect("space id");
    let raw = ulid::Ulid::from_string(id).expect("ulid").to_bytes();
    let mut found = Vec::new();
    for cf in Cf::DATA {
        for entry in g.engine().store().scan_space(cf, sid).expect("scan") {
            let (k, _) = entry.expect("entry");
            let hit = match cf {
                Cf::Edges => keys::decode_edge(&k).is_some_and(|(_, f, t)| f == raw || t == raw),
                Cf::Terms => keys::decode_posting(&k).is_some_and(|(_, _, i)| i == raw),
                _ => keys::decode_episode(&k).is_some_and(|(_, i)| i == raw),
            };
            if hit {
                found.push(cf.name().to_string());
            }
        }
    }
    found
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Forget leaves no trace in any column family, index, edge list or
    /// session chain, and stays forgotten after a restart and replay.
    #[test]
    fn forget_leaves_no_trace_anywhere(
        n in 3usize..12,
        forget_mask in prop::collection::vec(any::<bool>(), 12),
        links in prop::collection::vec((0usize..12, 0usize..12), 0..10),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = open(dir.path());
        g.create_space("s", Some(3)).expect("create");
        let mut made = Vec::new();
        for i in 0..n {
            let mut r = text(&format!("memory number {i} about topic{} shared", i % 3));
            r.session = Some(format!("conv{}", i % 2));
            r.embedding = Some(vec![i as f32, 1.0, (i % 3) as f32]);
            made.push(g.remember("s", r).expect("remember").id);
        }
        for (a, b) in links {
            if a < n && b < n && a != b {
                g.link("s", &made[a], &made[b], Some(0.5)).expect("link");
            }
        }
        // Access statistics and concepts exist too before anything is forgotten.
        let hits = g.recall("s", &cue("memory"), 100, &Spread::default()).expect("recall");
        prop_assert!(!hits.is_empty());
        prop_assert!(g.flush_access().expect("flush") > 0);
        let concepts = g.consolidate("s", 0.5).expect("consolidate").concepts;
        // Half the time every memory is archived first: forget must reach the cold tier.
        if n % 2 == 0 {
            prop_assert_eq!(g.archive("s", std::time::Duration::ZERO).expect("archive"), n + concepts);
        }
        let forgotten: Vec<String> = made.iter().zip(&forget_mask).filter(|(_, f)| **f).map(|(id, _)| id.clone()).collect();
        for id in &forgotten {
            g.forget("s", id).expect("forget");
            prop_assert!(matches!(g.forget("s", id), Err(GraphError::MemoryNotFound(_))));
        }
        let check = |g: &Graph| -> Result<(), TestCaseError> {
            for id in &forgotten {
                prop_assert!(store_mentions(g, "s", id).is_empty(), "store still mentions {}", id);
                prop_assert!(!g.mentions("s", id).expect("mentions"), "memory indexes still mention {}", id);
                prop_assert!(matches!(g.get("s", id, false), Err(GraphError::MemoryNotFound(_))));
                let c = Cue { text: Some("memory shared topic0 topic1 topic2".into()), embedding: Some(vec![1.0, 1.0, 1.0]), ..Cue::default() };
                let spread = Spread { depth: 4, threshold: 0.0, ..Spread::default() };
                let hits = g.recall("s", &c, 100, &spread).expect("recall");
                prop_assert!(!ids(&hits).contains(id), "recall returned forgotten {}", id);
            }
            Ok(())
        };
        check(&g)?;
        // A concept left with fewer than two members is forgotten too.
        let memories = g.space_stats("s").expect("stats").memories;
        prop_assert!(memories + forgotten.len() >= n && memories + forgotten.len() <= n + concepts, "{} memories", memories);
        drop(g);
        let g = open(dir.path());
        check(&g)?;
        prop_assert_eq!(g.space_stats("s").expect("stats").memories, memories);
    }

    /// Recall in one space never returns another space's memories, whatever
    /// the cue, even when the spaces hold identical texts.
    #[test]
    fn recall_never_returns_another_spaces_data(
        texts in prop::collection::vec("(apple|pear|plum|fig)( (red|green|ripe))?", 1..10),
        query in "(apple|pear|plum|fig|red|green|ripe)",
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = open(dir.path());
        g.create_space("a", None).expect("a");
        g.create_space("b", None).expect("b");
        let mut in_a = HashSet::new();
        for (i, t) in texts.iter().enumerate() {
            let mut r = text(t);
            r.session = Some("shared-session-name".into());
            in_a.insert(g.remember("a", r.clone()).expect("a").id);
            let b = g.remember("b", r).expect("b").id;
            if i > 0 {
                // Links inside b must not leak into a either.
                let _ = b;
            }
        }
        let spread = Spread { depth: 4, threshold: 0.0, ..Spread::default() };
        for r in g.recall("a", &cue(&query), 100, &spread).expect("recall") {
            prop_assert_eq!(&r.memory.space, "a");
            prop_assert!(in_a.contains(&r.memory.id));
        }
        let filter_only = Cue { tags: vec![], from_ms: Some(0), ..Cue::default() };
        for r in g.recall("b", &filter_only, 100, &spread).expect("recall") {
            prop_assert!(!in_a.contains(&r.memory.id));
        }
    }
}

#[test]
fn filters_apply_before_ranking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    for i in 0..50 {
        let mut r = text(&format!("coffee note {i}"));
        r.tags = vec![if i == 42 {
            "rare".into()
        } else {
            "common".into()
        }];
        r.occurred_at_ms = Some(1_000_000 + i);
        g.remember("default", r).expect("remember");
    }
    let c = Cue {
        text: Some("coffee".into()),
        tags: vec!["rare".into()],
        ..Cue::default()
    };
    let hits = g
        .recall("default", &c, 1, &Spread::default())
        .expect("recall");
    assert_eq!(
        hits.len(),
        1,
        "a filter applied after a top-1 cut would miss it"
    );
    assert_eq!(hits[0].memory.content, "coffee note 42");
    let c = Cue {
        text: Some("coffee".into()),
        from_ms: Some(1_000_010),
        to_ms: Some(1_000_012),
        ..Cue::default()
    };
    let got: HashSet<String> = g
        .recall("default", &c, 10, &Spread::default())
        .expect("recall")
        .into_iter()
        .map(|r| r.memory.content)
        .collect();
    assert_eq!(
        got,
        ["coffee note 10", "coffee note 11", "coffee note 12"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn spreading_reaches_linked_memories_and_says_how() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    let mut a = text("Ana adopted a dog from the shelter");
    a.session = Some("ana".into());
    let a = g.remember("default", a).expect("a").id;
    let mut b = text("Its name is Rex and it loves the beach");
    b.session = Some("ana".into());
    let b = g.remember("default", b).expect("b").id;
    let without = g
        .recall(
            "default",
            &cue("Ana adopted"),
            10,
            &Spread {
                depth: 0,
                ..Spread::default()
            },
        )
        .expect("recall");
    assert_eq!(ids(&without), vec![a.clone()]);
    assert_eq!(without[0].via, Via::Lexical);
    let with = g
        .recall("default", &cue("Ana adopted"), 10, &Spread::default())
        .expect("recall");
    assert_eq!(ids(&with), vec![a.clone(), b.clone()]);
    assert_eq!(with[1].via, Via::Edge { path: vec![a, b] });
    assert!(with[1].activation < with[0].activation);
}

#[test]
fn recovery_reproduces_identical_recall() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("v", Some(4)).expect("create");
    let mut prev: Option<String> = None;
    for i in 0..40 {
        let mut r = text(&format!(
            "event {i} in project {} with {}",
            i % 5,
            ["alice", "bob", "carol"][i % 3]
        ));
        r.session = Some(format!("s{}", i % 4));
        r.embedding = Some(vec![(i % 7) as f32, 1.0, (i % 3) as f32, 0.5]);
        if let Some(p) = &prev {
            if i % 6 == 0 {
                r.links = vec![LinkSpec {
                    target: p.clone(),
                    weight: Some(0.8),
                }];
            }
        }
        prev = Some(g.remember("v", r).expect("remember").id);
    }
    let old = dir.path().join("old-db");
    g.engine().checkpoint(&old).expect("checkpoint");
    let cues = [
        cue("project 3 alice"),
        Cue {
            embedding: Some(vec![2.0, 1.0, 1.0, 0.5]),
            ..Cue::default()
        },
        Cue {
            text: Some("bob".into()),
            embedding: Some(vec![6.0, 1.0, 0.0, 0.5]),
            ..Cue::default()
        },
    ];
    let run = |g: &Graph| -> Vec<Vec<(String, Via)>> {
        cues.iter()
            .map(|c| {
                g.recall("v", c, 15, &Spread::default())
                    .expect("recall")
                    .into_iter()
                    .map(|r| (r.memory.id, r.via))
                    .collect()
            })
            .collect()
    };
    let before = run(&g);
    for i in 0..10 {
        g.remember("v", text(&format!("later note {i}")))
            .expect("remember");
    }
    let after_writes = run(&g);
    drop(g);
    // Crash recovery from an older store: the WAL replays the later writes.
    std::fs::remove_dir_all(dir.path().join("db")).expect("rm");
    std::fs::rename(&old, dir.path().join("db")).expect("restore");
    let (g, report) =
        Graph::open(dir.path(), GraphConfig::default(), OpenOptions::default()).expect("reopen");
    assert!(
        report.replayed >= 10,
        "replay must rebuild the later writes"
    );
    assert_eq!(run(&g), after_writes);
    assert_eq!(before.len(), after_writes.len());
}

#[test]
fn vector_recall_through_the_ann_index_honours_forget_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Force the HNSW path even for a small space.
    let cfg = GraphConfig {
        exact_search_below: 0,
        ..GraphConfig::default()
    };
    let g = open_with(dir.path(), cfg.clone());
    g.create_space("v", Some(16)).expect("create");
    let vec_of = |i: u32| -> Vec<f32> {
        (0..16u64)
            .map(|j| {
                // SplitMix64: unrelated pseudo-random vectors per memory.
                let mut x = (u64::from(i) << 8 | j).wrapping_add(0x9E37_79B9_7F4A_7C15);
                x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                ((x ^ (x >> 31)) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    };
    let mut made = Vec::new();
    for i in 0..300u32 {
        let mut r = text(&format!("vector memory {i}"));
        r.embedding = Some(vec_of(i));
        r.tags = vec![if i % 10 == 0 {
            "tenth".into()
        } else {
            "other".into()
        }];
        made.push(g.remember("v", r).expect("remember").id);
    }
    let by_vec = |g: &Graph, i: u32, tags: Vec<String>| {
        let c = Cue {
            embedding: Some(vec_of(i)),
            tags,
            ..Cue::default()
        };
        g.recall(
            "v",
            &c,
            5,
            &Spread {
                depth: 0,
                ..Spread::default()
            },
        )
        .expect("recall")
    };
    let hits = by_vec(&g, 42, vec![]);
    assert_eq!(hits[0].memory.id, made[42]);
    assert_eq!(hits[0].via, Via::Vector);
    g.forget("v", &made[42]).expect("forget");
    assert!(!ids(&by_vec(&g, 42, vec![])).contains(&made[42]));
    // A selective filter still finds only matching memories (exact fallback).
    let tenth = by_vec(&g, 55, vec!["tenth".into()]);
    assert_eq!(tenth.len(), 5);
    assert!(
        tenth
            .iter()
            .all(|r| r.memory.tags == vec!["tenth".to_string()])
    );
    let with = g
        .get("v", &made[7], true)
        .expect("get")
        .embedding
        .expect("embedding");
    assert_eq!(with, vec_of(7));
    drop(g);
    // Rebuilt from the store after restart: still gone, still found.
    let g = open_with(dir.path(), cfg);
    assert!(!ids(&by_vec(&g, 42, vec![])).contains(&made[42]));
    assert_eq!(by_vec(&g, 43, vec![])[0].memory.id, made[43]);
}

fn vector(content: &str, v: [f32; 4]) -> RememberRequest {
    RememberRequest {
        content: content.into(),
        embedding: Some(v.to_vec()),
        ..RememberRequest::default()
    }
}

#[test]
fn semantic_edges_link_near_embeddings_and_carry_activation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("v", Some(4)).expect("create");
    let a = g
        .remember("v", vector("the harbour at dawn", [1.0, 0.0, 0.0, 0.0]))
        .expect("a");
    let b = g
        .remember("v", vector("boats leaving port", [0.95, 0.2, 0.0, 0.0]))
        .expect("b");
    g.remember("v", vector("tax forms", [0.0, 0.0, 1.0, 0.0]))
        .expect("c");
    assert_eq!(
        g.space_stats("v").expect("stats").edges,
        1,
        "only the near pair is linked"
    );
    let hits = g
        .recall("v", &cue("harbour"), 10, &Spread::default())
        .expect("recall");
    let via_b = hits
        .iter()
        .find(|h| h.memory.id == b.id)
        .expect("b reached");
    assert_eq!(
        via_b.via,
        Via::Edge {
            path: vec![a.id.clone(), b.id.clone()]
        }
    );
    // The threshold is a setting: at 0.999 nothing is linked.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let strict = open_with(
        dir2.path(),
        GraphConfig {
            semantic_threshold: 0.999,
            ..GraphConfig::default()
        },
    );
    strict.create_space("v", Some(4)).expect("create");
    for (t, v) in [("x", [1.0, 0.0, 0.0, 0.0]), ("y", [0.95, 0.2, 0.0, 0.0])] {
        strict.remember("v", vector(t, v)).expect("remember");
    }
    assert_eq!(strict.space_stats("v").expect("stats").edges, 0);
}

#[test]
fn access_statistics_are_written_in_the_background_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = GraphConfig {
        access_flush_ms: 20,
        ..GraphConfig::default()
    };
    let g = std::sync::Arc::new(open_with(dir.path(), config.clone()));
    let m = g
        .remember(DEFAULT_SPACE, text("the blue notebook"))
        .expect("remember");
    let background = engram_graph::Background::start(&g).expect("background");
    for _ in 0..3 {
        let hits = g
            .recall(DEFAULT_SPACE, &cue("notebook"), 5, &Spread::default())
            .expect("recall");
        assert_eq!(ids(&hits), vec![m.id.clone()]);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while g
        .get(DEFAULT_SPACE, &m.id, false)
        .expect("get")
        .access_count
        < 3
    {
        assert!(std::time::Instant::now() < deadline, "access never flushed");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    drop(background);
    let got = g.get(DEFAULT_SPACE, &m.id, false).expect("get");
    assert!(got.last_access_ms.is_some_and(|t| t >= got.stored_at_ms));
    drop(g);
    let g = open_with(dir.path(), config);
    assert_eq!(
        g.get(DEFAULT_SPACE, &m.id, false)
            .expect("get")
            .access_count,
        3
    );
    assert_eq!(g.access_dropped(), 0);
}

#[test]
fn consolidation_makes_one_concept_per_cluster_and_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    let mut members = Vec::new();
    for t in [
        "Ana walks her dog Rex in the park every morning",
        "every morning Ana walks Rex the dog in the park",
        "Ana and her dog Rex walk in the park each morning",
    ] {
        let mut r = text(t);
        r.tags = vec!["pets".into(), format!("t{}", members.len())];
        members.push(g.remember(DEFAULT_SPACE, r).expect("remember").id);
    }
    let other = g
        .remember(DEFAULT_SPACE, text("quarterly tax forms are due in April"))
        .expect("other")
        .id;
    assert!(matches!(
        g.consolidate(DEFAULT_SPACE, 0.0),
        Err(GraphError::Invalid {
            field: "threshold",
            ..
        })
    ));
    let r = g.consolidate(DEFAULT_SPACE, 0.5).expect("consolidate");
    assert_eq!((r.concepts, r.members), (1, 3), "{r:?}");
    let again = g.consolidate(DEFAULT_SPACE, 0.5).expect("consolidate");
    assert_eq!(again.concepts, 0, "idempotent: {again:?}");
    assert_eq!(g.space_stats(DEFAULT_SPACE).expect("stats").edges, 3);
    // Concepts only when the cue asks for them.
    let plain = g
        .recall(DEFAULT_SPACE, &cue("concept rex"), 10, &Spread::default())
        .expect("recall");
    assert!(!plain.is_empty() && plain.iter().all(|h| !h.memory.concept));
    let with_concepts = Cue {
        include_concepts: true,
        ..cue("concept")
    };
    let hits = g
        .recall(DEFAULT_SPACE, &with_concepts, 5, &Spread::default())
        .expect("recall");
    let concept = hits.first().expect("concept found").memory.clone();
    assert!(concept.concept);
    assert_eq!(concept.tags, vec!["pets".to_string()], "shared tags only");
    assert!(concept.content.contains("rex") && concept.content.contains("park"));
    assert!(!concept.content.contains("tax"));
    assert_eq!(concept.metadata["members"], json!(3));
    // Spreading from the concept reaches its members, not the outsider.
    let reached: Vec<String> = hits.iter().map(|h| h.memory.id.clone()).collect();
    for m in &members {
        assert!(
            reached.contains(m),
            "member {m} reached through the concept"
        );
    }
    assert!(!reached.contains(&other));
    // Survives a restart; forgetting the concept frees its members.
    drop(g);
    let g = open(dir.path());
    assert_eq!(g.consolidate(DEFAULT_SPACE, 0.5).expect("c").concepts, 0);
    g.forget(DEFAULT_SPACE, &concept.id).expect("forget");
    assert_eq!(g.consolidate(DEFAULT_SPACE, 0.5).expect("c").concepts, 1);
}

#[test]
fn consolidation_by_embedding_uses_cosine_similarity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open_with(
        dir.path(),
        GraphConfig {
            semantic_k: 0,
            ..GraphConfig::default()
        },
    );
    g.create_space("v", Some(4)).expect("create");
    for (t, v) in [
        ("alpha one", [1.0, 0.1, 0.0, 0.0]),
        ("beta two", [1.0, 0.0, 0.1, 0.0]),
        ("gamma three", [0.0, 0.0, 0.0, 1.0]),
    ] {
        g.remember("v", vector(t, v)).expect("remember");
    }
    let r = g.consolidate("v", 0.9).expect("consolidate");
    assert_eq!((r.concepts, r.members), (1, 2), "{r:?}");
    let hits = g
        .recall(
            "v",
            &Cue {
                embedding: Some(vec![1.0, 0.05, 0.05, 0.0]),
                include_concepts: true,
                ..Cue::default()
            },
            1,
            &Spread::default(),
        )
        .expect("recall");
    assert!(hits[0].memory.concept, "the centroid is the closest vector");
}

/// Every word of a concept's content after its `Concept (N memories):`
/// prefix.
fn concept_words(content: &str) -> Vec<String> {
    let (_, rest) = content.split_once("):").expect("concept prefix");
    engram_graph::text::terms(rest)
        .into_iter()
        .filter(|t| t != "differing")
        .collect()
}

#[test]
fn concepts_are_made_of_distinctive_terms_and_keep_what_differs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open_with(
        dir.path(),
        GraphConfig {
            semantic_k: 0,
            ..GraphConfig::default()
        },
    );
    // A chat stored turn by turn: fillers, greetings, and two turns that
    // share only grammar and a name.
    for t in [
        "Haha.",
        "Haha.",
        "Haha ok, see you tomorrow!",
        "ok haha see you tomorrow",
        "Maya: I live in Berlin.",
        "Maya: I live in Lisbon.",
        "Maya booked a flight to Porto for the conference",
        "Maya booked the flight to Porto for that conference",
    ] {
        g.remember(DEFAULT_SPACE, text(t)).expect("remember");
    }
    g.consolidate(DEFAULT_SPACE, 0.8).expect("consolidate");
    let concepts = concepts_of(&g, DEFAULT_SPACE);
    let contents: Vec<&str> = concepts.iter().map(|c| c.content.as_str()).collect();
    for c in &contents {
        for w in concept_words(c) {
            assert!(
                !engram_graph::text::is_stop_word(&w),
                "stop word {w:?} in {c:?}"
            );
        }
    }
    assert!(
        contents
            .iter()
            .any(|c| c.contains("porto") && c.contains("flight")),
        "the real cluster is kept: {contents:?}"
    );
    assert!(
        contents
            .iter()
            .all(|c| !c.contains("berlin") && !c.contains("lisbon")),
        "turns sharing only grammar and a name stay apart: {contents:?}"
    );
    assert!(
        contents.iter().all(|c| !c.contains("haha")),
        "fillers make no concept: {contents:?}"
    );

    // With embeddings saying two turns are alike, the concept keeps what
    // tells them apart.
    g.create_space("v", Some(4)).expect("create");
    g.remember("v", vector("Maya: I live in Berlin.", [1.0, 0.1, 0.0, 0.0]))
        .expect("remember");
    // Members are listed in id order: ULIDs order by creation only across
    // milliseconds.
    std::thread::sleep(std::time::Duration::from_millis(2));
    g.remember("v", vector("Maya: I live in Lisbon.", [1.0, 0.0, 0.1, 0.0]))
        .expect("remember");
    let r = g.consolidate("v", 0.9).expect("consolidate");
    assert_eq!((r.concepts, r.members), (1, 2), "{r:?}");
    let c = &concepts_of(&g, "v")[0];
    assert_eq!(
        c.content,
        "Concept (2 memories): live, maya; differing: berlin / lisbon"
    );
    assert_eq!(json!(c.metadata), json!({"kind": "concept", "members": 2}));
}

#[test]
fn concepts_stay_out_of_recall_unless_asked_for_and_spreading_passes_through() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open_with(
        dir.path(),
        GraphConfig {
            semantic_k: 0,
            ..GraphConfig::default()
        },
    );
    let a = g
        .remember(DEFAULT_SPACE, text("quartz lantern river orchid"))
        .expect("remember")
        .id;
    let b = g
        .remember(DEFAULT_SPACE, text("quartz lantern river willow"))
        .expect("remember")
        .id;
    g.remember(DEFAULT_SPACE, text("tax forms due in april"))
        .expect("remember");
    let r = g.consolidate(DEFAULT_SPACE, 0.5).expect("consolidate");
    assert_eq!((r.concepts, r.members), (1, 2), "{r:?}");
    let concept = concepts_of(&g, DEFAULT_SPACE)[0].id.clone();
    let spread = Spread::default();
    // "orchid" matches one member and the concept: by default the member,
    // and the other member reached through the concept, never the concept.
    let hits = g
        .recall(DEFAULT_SPACE, &cue("orchid"), 10, &spread)
        .expect("recall");
    assert_eq!(ids(&hits), vec![a.clone(), b.clone()], "{hits:?}");
    assert!(
        matches!(&hits[1].via, Via::Edge { path } if path == &[a.clone(), concept.clone(), b.clone()])
    );
    // The same with a filter, a filter-only cue, and without spreading.
    let tagged_out = Cue {
        from_ms: Some(0),
        ..Cue::default()
    };
    let all = g
        .recall(DEFAULT_SPACE, &tagged_out, 10, &spread)
        .expect("recall");
    assert_eq!(all.len(), 3, "every episode, no concept: {all:?}");
    assert!(all.iter().all(|h| !h.memory.concept));
    let none = Spread {
        depth: 0,
        ..Spread::default()
    };
    let lexical = g
        .recall(DEFAULT_SPACE, &cue("lantern"), 10, &none)
        .expect("recall");
    assert_eq!(lexical.len(), 2, "{lexical:?}");
    // Asked for, the concept is a result like any memory.
    let asked = Cue {
        include_concepts: true,
        ..cue("orchid")
    };
    let hits = g
        .recall(DEFAULT_SPACE, &asked, 10, &spread)
        .expect("recall");
    assert!(ids(&hits).contains(&concept), "{hits:?}");
}

#[test]
fn spaces_load_on_first_use_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("a", None).expect("a");
    g.create_space("b", None).expect("b");
    let m = g
        .remember("a", text("lazy loading works"))
        .expect("remember");
    drop(g);
    let g = open(dir.path());
    assert_eq!(g.loaded_spaces(), (0, 3), "nothing loaded at open");
    let hits = g
        .recall("a", &cue("lazy"), 5, &Spread::default())
        .expect("recall");
    assert_eq!(ids(&hits), vec![m.id]);
    assert_eq!(g.loaded_spaces(), (1, 3));
    g.warm_up().expect("warm up");
    assert_eq!(g.loaded_spaces(), (3, 3));
}

#[test]
fn idle_memories_move_to_the_cold_tier_and_recall_brings_them_back() {
    use std::time::Duration;
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    let options = SpaceOptions {
        embedding_dim: None,
        hot_capacity: Some(1),
    };
    g.create_space_with("t", options).expect("create");
    let a = g
        .remember("t", text("the red kite over the hill"))
        .expect("a");
    let b = g
        .remember("t", text("a red bicycle in the shed"))
        .expect("b");
    let st = g.space_stats("t").expect("stats");
    assert_eq!(
        (st.hot, st.hot_capacity, st.cold),
        (1, 1, 0),
        "hot tier bounded"
    );
    assert_eq!(
        g.archive("t", Duration::from_secs(3600)).expect("archive"),
        0
    );
    assert_eq!(g.archive("t", Duration::ZERO).expect("archive"), 2);
    let st = g.space_stats("t").expect("stats");
    assert_eq!((st.memories, st.hot, st.cold), (2, 0, 2));
    let sid = g.space_id("t").expect("id");
    let raw = |id: &str| ulid::Ulid::from_string(id).expect("ulid").to_bytes();
    let store = g.engine().store();
    assert!(store.episode(sid, &raw(&a.id)).expect("get").is_none());
    assert!(store.cold(sid, &raw(&a.id)).expect("get").is_some());
    // Recall covers every tier.
    let hits = g
        .recall("t", &cue("red"), 10, &Spread::default())
        .expect("recall");
    assert_eq!(hits.len(), 2);
    assert!(
        hits.iter()
            .any(|h| h.memory.content == "the red kite over the hill")
    );
    drop(g);
    // Still cold after a restart; recalled memories are promoted back.
    let g = open(dir.path());
    assert_eq!(g.space_stats("t").expect("stats").cold, 2);
    let no_spread = Spread {
        depth: 0,
        ..Spread::default()
    };
    let hits = g.recall("t", &cue("kite"), 10, &no_spread).expect("recall");
    assert_eq!(ids(&hits), vec![a.id.clone()]);
    assert_eq!(g.flush_access().expect("flush"), 1);
    assert_eq!(g.space_stats("t").expect("stats").cold, 1);
    let store = g.engine().store();
    assert!(store.episode(sid, &raw(&a.id)).expect("get").is_some());
    assert!(store.cold(sid, &raw(&a.id)).expect("get").is_none());
    assert_eq!(
        g.archive("t", Duration::from_secs(3600)).expect("archive"),
        0
    );
    // Forgetting a cold memory removes the archived copy too.
    g.forget("t", &b.id).expect("forget");
    assert!(store_mentions(&g, "t", &b.id).is_empty());
    assert_eq!(g.space_stats("t").expect("stats").cold, 0);
}

#[test]
fn vector_links_deferred_at_load_are_built_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = GraphConfig {
        exact_search_below: 10,
        semantic_k: 0,
        ..GraphConfig::default()
    };
    let g = open_with(dir.path(), config.clone());
    g.create_space("v", Some(4)).expect("create");
    for i in 0..40u32 {
        let v = [i as f32, 1.0, (i % 7) as f32, (i % 3) as f32];
        g.remember("v", vector(&format!("vector {i}"), v))
            .expect("remember");
    }
    assert_eq!(g.space_stats("v").expect("stats").unlinked_vectors, 0);
    drop(g);
    let g = std::sync::Arc::new(open_with(dir.path(), config));
    // Statistics never load a space: load it first.
    g.warm_up().expect("warm up");
    assert_eq!(
        g.space_stats("v").expect("stats").unlinked_vectors,
        40,
        "loading builds no links"
    );
    let background = engram_graph::Background::start(&g).expect("background");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while g.space_stats("v").expect("stats").unlinked_vectors > 0 {
        assert!(std::time::Instant::now() < deadline, "backlog never linked");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(background);
    let hits = g
        .recall(
            "v",
            &Cue {
                embedding: Some(vec![5.0, 1.0, 5.0, 2.0]),
                ..Cue::default()
            },
            1,
            &Spread::default(),
        )
        .expect("recall");
    assert_eq!(hits[0].memory.content, "vector 5");
}

#[test]
fn forgotten_vectors_are_reclaimed_and_never_returned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = GraphConfig {
        exact_search_below: 10,
        semantic_k: 0,
        ..GraphConfig::default()
    };
    let g = open_with(dir.path(), config);
    g.create_space("v", Some(4)).expect("create");
    let point = |i: u32| [(i % 17) as f32, 1.0 + (i / 17) as f32, (i % 5) as f32, 0.5];
    let mut ids = Vec::new();
    for i in 0..200u32 {
        let m = g
            .remember("v", vector(&format!("vector {i}"), point(i)))
            .expect("remember");
        ids.push(m.id);
    }
    for id in &ids[..150] {
        g.forget("v", id).expect("forget");
    }
    let stats = g.space_stats("v").expect("stats");
    assert_eq!((stats.memories, stats.vector_tombstones), (50, 150));
    // What the background task does ten times a second.
    for _ in 0..1000 {
        if g.space_stats("v").expect("stats").vector_tombstones == 0 {
            break;
        }
        g.link_vectors(32, 16);
    }
    assert_eq!(g.space_stats("v").expect("stats").vector_tombstones, 0);
    // New vectors reuse the freed slots and are found by the graph walk.
    for i in 200..300u32 {
        g.remember("v", vector(&format!("vector {i}"), point(i)))
            .expect("remember");
    }
    assert_eq!(g.space_stats("v").expect("stats").memories, 150);
    for i in [150u32, 170, 199, 200, 250, 299] {
        let hits = g
            .recall(
                "v",
                &Cue {
                    embedding: Some(point(i).to_vec()),
                    ..Cue::default()
                },
                5,
                &Spread::default(),
            )
            .expect("recall");
        assert_eq!(hits[0].memory.content, format!("vector {i}"));
        assert!(hits.iter().all(|h| !ids[..150].contains(&h.memory.id)));
    }
}

/// A remember in the API's three steps: begin and finish on the blocking
/// pool, the group commit awaited.
async fn remember_in_steps(
    g: std::sync::Arc<Graph>,
    space: String,
    req: RememberRequest,
) -> Result<engram_graph::Remembered, GraphError> {
    let g2 = std::sync::Arc::clone(&g);
    let begun = tokio::task::spawn_blocking(move || g2.remember_begin(&space, req))
        .await
        .expect("task")?;
    let mut pending = match begun {
        engram_graph::Begun::Done(found) => return Ok(found),
        engram_graph::Begun::Pending(p) => p,
    };
    pending.group_commit().await;
    tokio::task::spawn_blocking(move || g.remember_finish(pending))
        .await
        .expect("task")
}

#[test]
fn remember_in_steps_is_durable_indexed_and_refused_for_a_deleted_space() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = std::sync::Arc::new(open(dir.path()));
    g.create_space("notes", None).expect("create");
    g.create_space("gone", None).expect("create");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let written: Vec<(String, u64)> = rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let g = std::sync::Arc::clone(&g);
                tokio::spawn(async move {
                    remember_in_steps(g, "notes".into(), text(&format!("apple note number {i}")))
                        .await
                        .expect("remember in steps")
                })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            let r = t.await.expect("task");
            out.push((r.id, r.sequence));
        }
        out
    });
    let mut seqs: Vec<u64> = written.iter().map(|w| w.1).collect();
    seqs.sort_unstable();
    // Creating the space took its first sequence number.
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + 64).collect::<Vec<u64>>(),
        "one sequence each, no gaps"
    );
    let found: HashSet<String> = ids(&g
        .recall("notes", &cue("apple note"), 100, &Spread::default())
        .expect("recall"))
    .into_iter()
    .collect();
    let expected: HashSet<String> = written.iter().map(|w| w.0.clone()).collect();
    assert_eq!(found, expected, "every async write is indexed at once");

    g.delete_space("gone").expect("delete");
    let mut dedupe = text("apple note number 7");
    dedupe.dedupe = true;
    let again = rt
        .block_on(remember_in_steps(
            std::sync::Arc::clone(&g),
            "notes".into(),
            dedupe,
        ))
        .expect("dedupe");
    assert!(
        again.deduplicated,
        "dedupe finds the existing memory in the first step"
    );
    let refused = rt.block_on(remember_in_steps(
        std::sync::Arc::clone(&g),
        "gone".into(),
        text("too late"),
    ));
    assert!(
        matches!(refused, Err(GraphError::SpaceNotFound(_))),
        "{refused:?}"
    );

    drop(rt);
    assert_eq!(
        std::sync::Arc::strong_count(&g),
        1,
        "no task keeps the graph"
    );
    drop(g);
    let g = open(dir.path());
    let after: HashSet<String> = ids(&g
        .recall("notes", &cue("apple note"), 100, &Spread::default())
        .expect("recall"))
    .into_iter()
    .collect();
    assert_eq!(
        after, expected,
        "every acknowledged async write survives a restart"
    );
}

/// Everything a client can observe of a space that the in-memory indexes
/// decide: stats, every memory (metadata, access, tier-independent fields),
/// and lexical recall with spreading for a few cues (ids and paths).
fn observable(g: &Graph, space: &str, ids: &[String]) -> String {
    let mut s = g.space_stats(space).expect("stats");
    s.hot = 0; // the hot cache starts empty after any restart
    let mut out = format!("{s:?}\n");
    for id in ids {
        match g.get(space, id, false) {
            Ok(m) => out += &format!("{m:?}\n"),
            Err(e) => out += &format!("{id}: {e}\n"),
        }
    }
    // Every match (the limit is above the space's size), sorted: the order
    // of near-equal scores depends on the clock (forgetting curve), not on
    // the indexes.
    for q in ["project 3 alice", "bob", "later", "note 7 carol"] {
        let mut found: Vec<(String, Via)> = g
            .recall(space, &cue(q), 1000, &Spread::default())
            .expect("recall")
            .into_iter()
            .map(|r| (r.memory.id, r.via))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        out += &format!("{q}: {} {found:?}\n", found.len());
    }
    out
}

/// Panics with only the lines that differ (the full texts are long).
#[track_caller]
fn assert_same(got: &str, want: &str, what: &str) {
    if got != want {
        let diff: Vec<String> = got
            .lines()
            .zip(want.lines())
            .filter(|(g, w)| g != w)
            .map(|(g, w)| format!("got  {g}\nwant {w}"))
            .collect();
        panic!(
            "{what}: {} of {} lines differ:\n{}",
            diff.len(),
            want.lines().count(),
            diff.join("\n")
        );
    }
}

#[test]
fn index_snapshots_restore_the_same_space_once_and_stale_or_damaged_ones_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("s", None).expect("create");
    // A vector space: its vectors are read from the store, not the snapshot.
    g.create_space("v", Some(4)).expect("create");
    for i in 0..30 {
        g.remember(
            "v",
            vector(
                &format!("vector note {i}"),
                [i as f32, 1.0, (i % 3) as f32, 0.5],
            ),
        )
        .expect("remember");
    }
    let by_vector = |g: &Graph| -> Vec<String> {
        let c = Cue {
            embedding: Some(vec![7.0, 1.0, 1.0, 0.5]),
            ..Cue::default()
        };
        ids(&g
            .recall("v", &c, 5, &Spread::default())
            .expect("vector recall"))
    };
    let vectors_before = by_vector(&g);
    assert_eq!(vectors_before.len(), 5);
    let mut ids: Vec<String> = Vec::new();
    for i in 0..120 {
        let mut r = text(&format!(
            "event {i} in project {} with {}",
            i % 5,
            ["alice", "bob", "carol"][i % 3]
        ));
        r.session = Some(format!("s{}", i % 4));
        r.tags = match i % 3 {
            0 => vec![],
            1 => vec!["work".into()],
            _ => vec!["work".into(), "urgent".into()],
        };
        if i % 10 == 9 {
            r.links = vec![LinkSpec {
                target: ids[i - 5].clone(),
                weight: Some(0.6),
            }];
        }
        ids.push(g.remember("s", r).expect("remember").id);
    }
    // Free slots, the cold tier, access statistics and a promotion back.
    for id in ids.iter().step_by(7) {
        g.forget("s", id).expect("forget");
    }
    g.link("s", &ids[1], &ids[100], Some(0.9)).expect("link");
    assert!(g.archive("s", std::time::Duration::ZERO).expect("archive") > 50);
    g.recall("s", &cue("project 3 alice"), 5, &Spread::default())
        .expect("recall");
    assert!(g.flush_access().expect("flush") > 0);
    let before = observable(&g, "s", &ids);
    assert!(
        before.contains("cold: ") && !before.contains("cold: 0,"),
        "{before}"
    );

    assert!(g.seal_writes(std::time::Duration::from_secs(5)));
    assert!(matches!(
        g.remember("s", text("too late")),
        Err(GraphError::ShuttingDown)
    ));
    assert!(matches!(
        g.forget("s", &ids[2]),
        Err(GraphError::ShuttingDown)
    ));
    let report = g.save_index_snapshots();
    assert_eq!((report.spaces, report.failed), (3, 0), "{report:?}");
    assert_eq!(report.memories, ids.len() - ids.len().div_ceil(7) + 30);
    assert!(report.bytes > 1000, "{report:?}");
    drop(g);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("indexes"))
        .expect("indexes dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 3, "{files:?}");
    let saved = dir.path().join("saved-indexes");
    std::fs::create_dir(&saved).expect("mkdir");
    for f in &files {
        std::fs::copy(f, saved.join(f.file_name().expect("name"))).expect("copy");
    }

    // Clean restart: the snapshot is used, once, and gives the same space.
    let g = open(dir.path());
    assert_same(&observable(&g, "s", &ids), &before, "from the snapshot");
    assert_eq!(g.snapshot_loads(), (1, 0), "space s from its snapshot");
    assert_eq!(by_vector(&g), vectors_before);
    g.warm_up().expect("warm up");
    assert_eq!(g.snapshot_loads(), (3, 0));
    assert_eq!(
        std::fs::read_dir(dir.path().join("indexes"))
            .expect("dir")
            .count(),
        0,
        "a snapshot is read once"
    );
    // The restored indexes keep working: new writes, then no clean shutdown.
    let extra = g
        .remember("s", text("later note 7 carol"))
        .expect("remember")
        .id;
    g.forget("s", &ids[3]).expect("forget");
    ids.push(extra);
    let after = observable(&g, "s", &ids);
    assert_ne!(after, before);
    drop(g);

    // A stale snapshot (from before those writes) is refused: rebuilt.
    for f in std::fs::read_dir(&saved).expect("saved") {
        let f = f.expect("entry").path();
        std::fs::copy(
            &f,
            dir.path()
                .join("indexes")
                .join(f.file_name().expect("name")),
        )
        .expect("copy back");
    }
    let g = open(dir.path());
    assert_same(
        &observable(&g, "s", &ids),
        &after,
        "rebuilt after a stale snapshot",
    );
    assert_eq!(g.snapshot_loads(), (0, 1), "stale snapshot refused");

    // A damaged snapshot is refused too.
    assert!(g.seal_writes(std::time::Duration::from_secs(5)));
    assert_eq!(g.save_index_snapshots().spaces, 1, "only s is loaded");
    drop(g);
    // (default's snapshot from the first shutdown is still there, unused.)
    let file = largest(&dir.path().join("indexes"));
    let mut bytes = std::fs::read(&file).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&file, &bytes).expect("write");
    let g = open(dir.path());
    assert_eq!(g.snapshot_loads(), (0, 0), "nothing loaded yet");
    assert_same(
        &observable(&g, "s", &ids),
        &after,
        "rebuilt after a damaged snapshot",
    );
    assert_eq!(g.snapshot_loads(), (0, 1), "damaged snapshot refused");

    // Deleting a space removes its snapshot.
    assert!(g.seal_writes(std::time::Duration::from_secs(5)));
    assert_eq!(g.save_index_snapshots().spaces, 1);
    drop(g);
    let file = largest(&dir.path().join("indexes"));
    let g = open(dir.path());
    g.delete_space("s").expect("delete");
    assert!(!file.exists(), "{file:?}");
}

/// The largest file in `dir` (the snapshot of the space with memories).
fn largest(dir: &Path) -> std::path::PathBuf {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").path())
        .max_by_key(|p| std::fs::metadata(p).expect("metadata").len())
        .expect("a snapshot")
}

/// WAL payload limit of the background-work tests: a few 8 KiB memories
/// exceed it together.
const SMALL_PAYLOAD: u32 = 64 * 1024;

/// WAL records of at most [`SMALL_PAYLOAD`] bytes; memories idle for a
/// second are due for the cold tier.
fn small_wal_records() -> GraphConfig {
    let engine = engram_graph::EngineConfig {
        wal: engram_wal::WalConfig {
            max_payload: SMALL_PAYLOAD,
            ..engram_wal::WalConfig::default()
        },
        ..engram_graph::EngineConfig::default()
    };
    GraphConfig {
        engine,
        cold_after_sec: 1,
        ..GraphConfig::default()
    }
}

/// A graph whose metrics are registered in the returned registry.
fn open_registered(dir: &Path, config: GraphConfig) -> (Graph, prometheus::Registry) {
    let registry = prometheus::Registry::new();
    let options = OpenOptions {
        registry: Some(registry.clone()),
        ..OpenOptions::default()
    };
    let g = Graph::open(dir, config, options).expect("open graph").0;
    (g, registry)
}

/// `engram_background_failures_total{task}` as exported.
fn background_failures(registry: &prometheus::Registry, task: &str) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "engram_background_failures_total")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "task" && l.value() == task)
        })
        .map(|m| m.get_counter().get_value())
        .sum()
}

/// About 8 KiB of text.
fn about_8_kib(i: usize) -> String {
    let mut s = format!("large memory {i}");
    while s.len() < 8 * 1024 {
        s.push_str(" lorem ipsum dolor sit amet");
    }
    s
}

#[test]
fn cold_tier_archives_spaces_with_large_memories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (g, registry) = open_registered(dir.path(), small_wal_records());
    // 24 × 8 KiB: three times what one WAL record may carry.
    let n = 24;
    for i in 0..n {
        g.remember(DEFAULT_SPACE, text(&about_8_kib(i)))
            .expect("remember");
    }
    std::thread::sleep(std::time::Duration::from_millis(1100)); // idle for cold_after_sec
    assert_eq!(g.archive_loaded().expect("archive pass"), n);
    assert_eq!(g.space_stats(DEFAULT_SPACE).expect("stats").cold, n);
    // Recalled, they all move back in one flush, again within the limit.
    let hits = g
        .recall(DEFAULT_SPACE, &cue("lorem"), 100, &Spread::default())
        .expect("recall");
    assert_eq!(hits.len(), n);
    assert_eq!(g.flush_access().expect("flush"), n);
    assert_eq!(g.space_stats(DEFAULT_SPACE).expect("stats").cold, 0);
    assert_eq!(background_failures(&registry, "archive"), 0.0);
    assert_eq!(background_failures(&registry, "access_flush"), 0.0);
    drop(g);
    let g = open_with(dir.path(), small_wal_records());
    let st = g.space_stats(DEFAULT_SPACE).expect("stats");
    assert_eq!((st.memories, st.cold), (n, 0), "durable");
    let id = hits[0].memory.id.clone();
    assert!(
        g.get(DEFAULT_SPACE, &id, false)
            .expect("get")
            .content
            .starts_with("large memory ")
    );
}

#[test]
fn one_failing_space_does_not_stop_the_archive_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (g, registry) = open_registered(dir.path(), small_wal_records());
    for space in ["a", "b"] {
        g.create_space(space, None).expect("create");
        for i in 0..3 {
            g.remember(space, text(&format!("{space} small memory {i}")))
                .expect("remember");
        }
    }
    // A record of "a" rewritten under the graph to fill a whole WAL record:
    // moving it (delete + put) can never fit, however it is batched. Before,
    // that failure ended the pass for every space after "a".
    let big = g.remember("a", text("soon too large")).expect("remember");
    let id = ulid::Ulid::from_string(&big.id).expect("ulid").to_bytes();
    // Payload: 5 bytes of header + PutEpisode (1 + 16 + 4 + record).
    let record = vec![0; SMALL_PAYLOAD as usize - 26];
    g.engine()
        .submit(
            g.space_id("a").expect("id"),
            engram_graph::kind::REMEMBER,
            vec![engram_lsm::Mutation::PutEpisode { id, record }],
        )
        .expect("rewrite the record");
    std::thread::sleep(std::time::Duration::from_millis(1100)); // idle for cold_after_sec
    assert_eq!(g.archive_loaded().expect("the pass goes on"), 6);
    assert_eq!(
        g.space_stats("a").expect("a").cold,
        3,
        "the rest of a moved"
    );
    assert_eq!(g.space_stats("b").expect("b").cold, 3);
    assert_eq!(background_failures(&registry, "archive"), 1.0);
    let store = g.engine().store();
    let sid = g.space_id("a").expect("id");
    assert!(
        store.episode(sid, &id).expect("get").is_some(),
        "stays warm"
    );
}

#[test]
fn consolidation_reaches_every_memory_across_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = GraphConfig {
        consolidation: engram_graph::ConsolidationConfig {
            batch_size: 8,
            ..engram_graph::ConsolidationConfig::default()
        },
        ..GraphConfig::default()
    };
    let g = open_with(dir.path(), config.clone());
    // 20 memories that cluster with nothing, then, newest, a pair that does.
    for i in 0..20 {
        g.remember(
            DEFAULT_SPACE,
            text(&format!("solitary{i} lonely{i} unmatched{i}")),
        )
        .expect("remember");
    }
    std::thread::sleep(std::time::Duration::from_millis(5)); // the pair's ids sort last
    for _ in 0..2 {
        g.remember(
            DEFAULT_SPACE,
            text("the red kite flies over the green hill"),
        )
        .expect("remember");
    }
    let first = g.consolidate(DEFAULT_SPACE, 0.8).expect("run 1");
    assert_eq!(
        (
            first.examined,
            first.concepts,
            first.remaining,
            first.wrapped
        ),
        (8, 0, 14, false),
        "{first:?}"
    );
    // Where a run stopped survives a restart.
    drop(g);
    let g = open_with(dir.path(), config);
    let second = g.consolidate(DEFAULT_SPACE, 0.8).expect("run 2");
    assert_eq!(
        (
            second.examined,
            second.concepts,
            second.remaining,
            second.wrapped
        ),
        (8, 0, 6, false),
        "{second:?}"
    );
    // The third run reaches the pair, then goes on from the oldest.
    let third = g.consolidate(DEFAULT_SPACE, 0.8).expect("run 3");
    assert_eq!((third.concepts, third.members), (1, 2), "{third:?}");
    assert!(third.wrapped, "{third:?}");
    assert_eq!(g.space_stats(DEFAULT_SPACE).expect("stats").edges, 2);
    // Nothing else ever clusters, however many laps.
    for _ in 0..3 {
        let r = g.consolidate(DEFAULT_SPACE, 0.8).expect("run");
        assert_eq!((r.examined, r.concepts), (8, 0), "{r:?}");
    }
}

#[test]
fn one_failing_space_does_not_stop_consolidation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (g, registry) = open_registered(dir.path(), GraphConfig::default());
    let one = SpaceOptions {
        embedding_dim: None,
        hot_capacity: Some(1),
    };
    g.create_space_with("broken", one).expect("create");
    let bad = g
        .remember("broken", text("zebra quartz xylophone"))
        .expect("remember");
    // Evicts `bad` from the one-record hot tier: it is read from the store.
    g.remember("broken", text("an unrelated note"))
        .expect("remember");
    let id = ulid::Ulid::from_string(&bad.id).expect("ulid").to_bytes();
    g.engine()
        .submit(
            g.space_id("broken").expect("id"),
            engram_graph::kind::REMEMBER,
            vec![engram_lsm::Mutation::PutEpisode {
                id,
                record: vec![0xff; 8],
            }],
        )
        .expect("corrupt the record");
    g.create_space("fine", None).expect("create");
    for _ in 0..2 {
        g.remember("fine", text("the red kite flies over the green hill"))
            .expect("remember");
    }
    let r = g.consolidate_loaded().expect("the run goes on");
    assert_eq!((r.concepts, r.members), (1, 2), "{r:?}");
    assert_eq!(background_failures(&registry, "consolidation"), 1.0);
}

/// `(from, to)` of every edge of `space` in the store.
fn stored_edges(g: &Graph, space: &str) -> Vec<([u8; 16], [u8; 16])> {
    let sid = g.space_id(space).expect("space id");
    g.engine()
        .store()
        .scan_space(Cf::Edges, sid)
        .expect("scan edges")
        .map(|entry| {
            let (k, _) = entry.expect("edge entry");
            let (_, from, to) = keys::decode_edge(&k).expect("edge key");
            (from, to)
        })
        .collect()
}

#[test]
fn a_memory_with_more_edges_than_one_record_holds_can_be_forgotten() {
    // 4 KiB records hold about 115 edge deletions (33 bytes each); the hub
    // gets 300 edges, so deleting them takes several records.
    let mut config = GraphConfig::default();
    config.engine.wal.max_payload = 4096;
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open_with(dir.path(), config.clone());
    let hub = g
        .remember(DEFAULT_SPACE, text("the hub every note links to"))
        .expect("remember")
        .id;
    let mut spokes = Vec::new();
    for i in 0..150 {
        let mut r = text(&format!("spoke number {i}"));
        r.links = vec![LinkSpec {
            target: hub.clone(),
            weight: None,
        }];
        let id = g.remember(DEFAULT_SPACE, r).expect("remember").id;
        g.link(DEFAULT_SPACE, &hub, &id, Some(0.5)).expect("link");
        spokes.push(id);
    }
    assert_eq!(g.space_stats(DEFAULT_SPACE).expect("stats").edges, 300);

    g.forget(DEFAULT_SPACE, &hub)
        .expect("forget a memory whose edge deletions exceed one WAL record");
    let check = |g: &Graph, when: &str| {
        assert!(
            matches!(
                g.get(DEFAULT_SPACE, &hub, false),
                Err(GraphError::MemoryNotFound(_))
            ),
            "{when}"
        );
        assert!(
            store_mentions(g, DEFAULT_SPACE, &hub).is_empty(),
            "{when}: the store still mentions the hub"
        );
        assert!(
            !g.mentions(DEFAULT_SPACE, &hub).expect("mentions"),
            "{when}"
        );
        assert!(stored_edges(g, DEFAULT_SPACE).is_empty(), "{when}");
        let stats = g.space_stats(DEFAULT_SPACE).expect("stats");
        assert_eq!((stats.memories, stats.edges), (150, 0), "{when}");
        for id in &spokes {
            g.get(DEFAULT_SPACE, id, false)
                .unwrap_or_else(|e| panic!("{when}: linked memory {id} lost: {e}"));
        }
    };
    check(&g, "after forget");
    drop(g);
    let g = open_with(dir.path(), config);
    check(&g, "after a restart and replay");
}

#[test]
fn links_beyond_max_edges_per_memory_are_refused() {
    let mut config = GraphConfig::default();
    config.limits.max_edges_per_memory = 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open_with(dir.path(), config);
    let make = |c: &str| g.remember(DEFAULT_SPACE, text(c)).expect("remember").id;
    let hub = make("hub");
    let (a, b, c, d) = (make("alpha"), make("bravo"), make("charlie"), make("delta"));
    let link_to = |target: &str| {
        let mut r = text("echo");
        r.links = vec![LinkSpec {
            target: target.to_owned(),
            weight: None,
        }];
        r
    };
    g.link(DEFAULT_SPACE, &a, &hub, None).expect("first edge");
    g.link(DEFAULT_SPACE, &hub, &b, None).expect("second edge");
    g.remember(DEFAULT_SPACE, link_to(&hub))
        .expect("third edge, made by remember");

    // The hub is full: a fourth edge is refused in either direction and at
    // remember, naming the memory and the limit.
    match g.link(DEFAULT_SPACE, &c, &hub, None) {
        Err(GraphError::TooManyEdges { memory, limit }) => {
            assert_eq!((memory, limit), (hub.clone(), 3));
        }
        other => panic!("expected TooManyEdges, got {other:?}"),
    }
    assert!(matches!(
        g.link(DEFAULT_SPACE, &hub, &d, None),
        Err(GraphError::TooManyEdges { .. })
    ));
    assert!(matches!(
        g.remember(DEFAULT_SPACE, link_to(&hub)),
        Err(GraphError::TooManyEdges { .. })
    ));
    // Re-weighting an existing edge adds none.
    g.link(DEFAULT_SPACE, &a, &hub, Some(0.3))
        .expect("re-weight an existing edge");
    // More links in one request than the limit is invalid input.
    let mut r = text("golf");
    r.links = [&a, &b, &c, &d]
        .iter()
        .map(|t| LinkSpec {
            target: (*t).clone(),
            weight: None,
        })
        .collect();
    assert_eq!(field(g.remember(DEFAULT_SPACE, r)), "links");
    let stats = g.space_stats(DEFAULT_SPACE).expect("stats");
    assert_eq!(
        (stats.memories, stats.edges),
        (6, 3),
        "refused writes leave nothing behind"
    );
    // Memories below the limit still link.
    g.link(DEFAULT_SPACE, &c, &d, None)
        .expect("c and d have room");
}

#[test]
fn forgotten_memory_never_returns_to_the_hot_cache() {
    // Reader A loads a large record from the store (slow: copied and
    // decoded) and caches it; it is forgotten as soon as A returns (quickly:
    // forget finds it cached). Reader B started a little after A, found the
    // hot tier still empty and finishes its own read after the forget: it
    // must not cache the forgotten record again. B's head start is swept
    // across rounds (a fraction of one measured load), bounded in rounds and
    // time. The size sits in tags: nothing re-reads them after the cache
    // insert (large metadata would be parsed, large content tokenized by
    // forget), so the window between B's store read and its insert is wide.
    let mut config = GraphConfig::default();
    config.limits.max_tag_bytes = 1 << 20;
    config.engine.wal.durability = engram_wal::Durability::None;
    config.engine.wal_release_interval = 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open_with(dir.path(), config);
    g.create_space_with(
        "s",
        SpaceOptions {
            embedding_dim: None,
            hot_capacity: Some(1),
        },
    )
    .expect("create");
    let tags: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|t| t.repeat(1 << 20))
        .collect();
    // A large memory that is in the store but not in the hot tier.
    let uncached = |n: u32| -> String {
        let mut r = text(&format!("large note {n}"));
        r.tags = tags.clone();
        let id = g.remember("s", r).expect("remember").id;
        // Caching another memory evicts it (capacity 1).
        g.remember("s", text(&format!("small note {n}")))
            .expect("remember");
        id
    };
    let x = uncached(0);
    let t = std::time::Instant::now();
    g.get("s", &x, false).expect("get");
    let load = t.elapsed();
    g.forget("s", &x).expect("forget");

    let started = std::time::Instant::now();
    let mut round = 0;
    while round < 40 && started.elapsed() < std::time::Duration::from_secs(20) {
        round += 1;
        let x = uncached(round);
        let head_start = load * (1 + round % 8) / 10;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let (gr, xr) = (&g, x.as_str());
        std::thread::scope(|s| {
            s.spawn(move || {
                let _ = gr.get("s", xr, false);
                let _ = done.send(());
            });
            s.spawn(move || {
                std::thread::sleep(head_start);
                let _ = gr.get("s", xr, false);
            });
            let _ = finished.recv();
            gr.forget("s", xr).expect("forget");
        });
        assert!(
            matches!(g.get("s", &x, false), Err(GraphError::MemoryNotFound(_))),
            "round {round}"
        );
        assert!(
            !g.mentions("s", &x).expect("mentions"),
            "round {round}: a read racing forget put the forgotten memory back into the hot cache"
        );
    }
}

#[test]
fn concurrent_session_writes_keep_every_temporal_edge() {
    const WRITERS: usize = 6;
    const EACH: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let g = &g;
            s.spawn(move || {
                for i in 0..EACH {
                    let mut r = text(&format!("writer {w} says {i}"));
                    r.session = Some("one conversation".into());
                    g.remember(DEFAULT_SPACE, r).expect("remember");
                }
            });
        }
    });
    let n = WRITERS * EACH;
    let check = |g: &Graph, when: &str| {
        let stats = g.space_stats(DEFAULT_SPACE).expect("stats");
        assert_eq!(
            (stats.memories, stats.edges),
            (n, n - 1),
            "{when}: every episode but the first is linked from its predecessor"
        );
        // One chain: no episode is left or reached twice.
        let edges = stored_edges(g, DEFAULT_SPACE);
        let from: HashSet<_> = edges.iter().map(|e| e.0).collect();
        let to: HashSet<_> = edges.iter().map(|e| e.1).collect();
        assert_eq!(
            (edges.len(), from.len(), to.len()),
            (n - 1, n - 1, n - 1),
            "{when}"
        );
    };
    check(&g, "after the writes");
    drop(g);
    let g = open(dir.path());
    check(&g, "after a restart");
}

#[test]
fn snapshots_are_refused_after_an_engine_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("other", None).expect("create");
    for i in 0..5 {
        g.remember(DEFAULT_SPACE, text(&format!("note {i}")))
            .expect("remember");
    }
    // A record the store cannot apply (a term longer than a key holds)
    // stops the engine. It is another space's, so `default`'s applied
    // sequence still matches: only the failure itself can refuse it.
    let bad = engram_lsm::Mutation::PutPosting {
        term: "t".repeat(keys::MAX_TERM_LEN + 1),
        id: [7; 16],
        value: 1u32.to_be_bytes().to_vec(),
    };
    let other = g.space_id("other").expect("space id");
    assert!(
        g.engine()
            .submit(other, engram_graph::kind::REMEMBER, vec![bad])
            .is_err()
    );
    assert!(g.engine().failure().is_some());

    assert!(g.seal_writes(std::time::Duration::from_secs(5)));
    let report = g.save_index_snapshots();
    assert_eq!((report.spaces, report.failed), (0, 2), "{report:?}");
    let written = std::fs::read_dir(dir.path().join("indexes")).map_or(0, |d| d.count());
    assert_eq!(written, 0, "no index snapshot after an engine failure");
}

/// Every key and value of `space` in the store's data column families.
fn stored_bytes(g: &Graph, space: &str) -> Vec<u8> {
    let sid = g.space_id(space).expect("space id");
    let mut all = Vec::new();
    for cf in Cf::DATA {
        for entry in g.engine().store().scan_space(cf, sid).expect("scan") {
            let (k, v) = entry.expect("entry");
            all.extend_from_slice(&k);
            all.push(0);
            all.extend_from_slice(&v);
            all.push(0);
        }
    }
    all
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The concepts of a small space (a filter-only cue returns every memory).
fn concepts_of(g: &Graph, space: &str) -> Vec<engram_graph::Memory> {
    let every = Cue {
        from_ms: Some(0),
        include_concepts: true,
        ..Cue::default()
    };
    let no_spread = Spread {
        depth: 0,
        ..Spread::default()
    };
    g.recall(space, &every, 1000, &no_spread)
        .expect("recall")
        .into_iter()
        .map(|r| r.memory)
        .filter(|m| m.concept)
        .collect()
}

#[test]
fn forgetting_every_member_leaves_no_word_of_them_in_concepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    let mut members = Vec::new();
    for day in ["monday", "tuesday", "friday"] {
        let t = format!("john doe hivpositive clinic result {day}");
        members.push(g.remember(DEFAULT_SPACE, text(&t)).expect("remember").id);
    }
    for t in [
        "quarterly tax forms are due in april",
        "the red kite flies over the green hill",
        "buy milk and bread",
    ] {
        g.remember(DEFAULT_SPACE, text(t)).expect("remember");
    }
    let r = g.consolidate(DEFAULT_SPACE, 0.5).expect("consolidate");
    assert_eq!((r.concepts, r.members), (1, 3), "{r:?}");
    let before = concepts_of(&g, DEFAULT_SPACE);
    assert_eq!(before.len(), 1);
    assert!(
        before[0].content.contains("hivpositive"),
        "{}",
        before[0].content
    );

    for id in &members {
        g.forget(DEFAULT_SPACE, id).expect("forget");
    }
    let check = |g: &Graph, when: &str| {
        for word in ["hivpositive", "john", "doe", "clinic"] {
            let hits = g
                .recall(DEFAULT_SPACE, &cue(word), 100, &Spread::default())
                .expect("recall");
            let found: Vec<&str> = hits.iter().map(|h| h.memory.content.as_str()).collect();
            assert!(
                found.is_empty(),
                "{when}: {word:?} still found in {found:?}"
            );
        }
        for c in concepts_of(g, DEFAULT_SPACE) {
            assert!(
                !c.content.contains("hivpositive") && !c.content.contains("john"),
                "{when}: {}",
                c.content
            );
        }
        assert!(
            !holds(&stored_bytes(g, DEFAULT_SPACE), b"hivpositive"),
            "{when}: the store still holds the word"
        );
        let stats = g.space_stats(DEFAULT_SPACE).expect("stats");
        assert_eq!(
            (stats.memories, stats.edges),
            (3, 0),
            "{when}: the unrelated memories only"
        );
    };
    check(&g, "after forget");
    drop(g);
    let g = open(dir.path());
    check(&g, "after a restart");
}

#[test]
fn forgetting_one_member_rebuilds_its_concepts_without_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = GraphConfig {
        semantic_k: 0,
        ..GraphConfig::default()
    };
    let g = open_with(dir.path(), config.clone());
    g.create_space("v", Some(4)).expect("create");
    // Only the first says "orchid" with another member, and only its
    // vector has a third component.
    let first = g
        .remember(
            "v",
            vector("quartz river lantern orchid alpha", [1.0, 0.0, 0.1, 0.0]),
        )
        .expect("remember")
        .id;
    let second = g
        .remember(
            "v",
            vector("quartz river lantern orchid bravo", [1.0, 0.1, 0.0, 0.0]),
        )
        .expect("remember")
        .id;
    // The concept lists members in id order: ULIDs order by creation only
    // across milliseconds.
    std::thread::sleep(std::time::Duration::from_millis(2));
    g.remember(
        "v",
        vector("quartz river lantern willow charlie", [1.0, 0.0, 0.0, 0.0]),
    )
    .expect("remember");
    g.remember("v", text("quarterly tax forms are due in april"))
        .expect("remember");
    let r = g.consolidate("v", 0.9).expect("consolidate");
    assert_eq!((r.concepts, r.members), (1, 3), "{r:?}");
    let before = concepts_of(&g, "v");
    assert_eq!(before.len(), 1);
    assert!(
        before[0].content.contains("orchid"),
        "{}",
        before[0].content
    );
    let centroid = g
        .get("v", &before[0].id, true)
        .expect("get")
        .embedding
        .expect("centroid");
    assert!(centroid[2] > 0.0, "{centroid:?}");

    g.forget("v", &first).expect("forget");
    let check = |g: &Graph, when: &str| {
        let now = concepts_of(g, "v");
        assert_eq!(now.len(), 1, "{when}: {now:?}");
        let c = &now[0];
        assert_eq!(
            c.content,
            "Concept (2 memories): lantern, quartz, river; differing: bravo, orchid / charlie, willow",
            "{when}"
        );
        assert_eq!(c.metadata["members"], json!(2), "{when}");
        let v = g
            .get("v", &c.id, true)
            .expect("get")
            .embedding
            .expect("centroid");
        assert_eq!(v[2], 0.0, "{when}: centroid of the remaining members only");
        let stats = g.space_stats("v").expect("stats");
        assert_eq!((stats.memories, stats.edges), (4, 2), "{when}");
        // "orchid" finds the one member still saying it; the concept
        // (which keeps it as what tells that member apart) only on request.
        let no_spread = Spread {
            depth: 0,
            ..Spread::default()
        };
        let hits = g
            .recall("v", &cue("orchid"), 10, &no_spread)
            .expect("recall");
        assert_eq!(ids(&hits), vec![second.clone()], "{when}");
    };
    check(&g, "after forget");
    assert_eq!(
        g.consolidate("v", 0.9).expect("consolidate").concepts,
        0,
        "the remaining members stay consolidated"
    );
    drop(g);
    let g = open_with(dir.path(), config);
    check(&g, "after a restart");
}

#[test]
fn forgotten_tags_leave_the_tag_sets_and_snapshots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("s", None).expect("create");
    let mut keep = text("a note anyone may see");
    keep.tags = vec!["shared".into()];
    let kept = g.remember("s", keep).expect("remember").id;
    let mut secret = text("a note with a secret tag");
    secret.tags = vec!["shared".into(), "xyzzy-secret-tag".into()];
    let secret = g.remember("s", secret).expect("remember").id;
    assert_eq!(g.tag_sets("s").expect("tag sets"), 2);
    g.forget("s", &secret).expect("forget");
    assert_eq!(g.tag_sets("s").expect("tag sets"), 1);
    // Unique tags under churn: the sets stay as few as the memories using them.
    for i in 0..200 {
        let mut r = text(&format!("churn note {i}"));
        r.tags = vec![format!("churn-tag-{i}")];
        let id = g.remember("s", r).expect("remember").id;
        assert_eq!(g.tag_sets("s").expect("tag sets"), 2);
        g.forget("s", &id).expect("forget");
    }
    assert_eq!(g.tag_sets("s").expect("tag sets"), 1);

    assert!(g.seal_writes(std::time::Duration::from_secs(5)));
    let report = g.save_index_snapshots();
    assert_eq!(report.failed, 0, "{report:?}");
    drop(g);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("indexes"))
        .expect("indexes dir")
        .map(|e| e.expect("entry").path())
        .collect();
    let bytes: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .collect();
    assert!(bytes.iter().any(|b| holds(b, b"shared")), "{files:?}");
    for (f, b) in files.iter().zip(&bytes) {
        assert!(
            !holds(b, b"xyzzy-secret-tag"),
            "{f:?} holds a forgotten tag"
        );
        assert!(!holds(b, b"churn-tag-"), "{f:?} holds a forgotten tag");
    }

    // The snapshot (with a free set number in it) is read back and works.
    let g = open(dir.path());
    let by_tag = |g: &Graph, tag: &str| {
        let c = Cue {
            tags: vec![tag.into()],
            ..Cue::default()
        };
        ids(&g.recall("s", &c, 10, &Spread::default()).expect("recall"))
    };
    assert_eq!(by_tag(&g, "shared"), vec![kept.clone()]);
    assert_eq!(g.snapshot_loads(), (1, 0), "the snapshot is used");
    assert_eq!(g.tag_sets("s").expect("tag sets"), 1);
    let mut again = text("a new note");
    again.tags = vec!["fresh".into()];
    let fresh = g.remember("s", again).expect("remember").id;
    assert_eq!(g.tag_sets("s").expect("tag sets"), 2);
    assert_eq!(by_tag(&g, "fresh"), vec![fresh]);
    assert_eq!(by_tag(&g, "shared"), vec![kept]);
}

/// A remember dropped between its WAL append and its finish (a cancelled
/// task) leaves a record the next write applies to the store but the
/// indexes never got: no index snapshot may then hide it after a restart.
#[test]
fn a_remember_dropped_before_its_finish_never_hides_a_stored_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("notes", None).expect("create");
    let begun = g
        .remember_begin("notes", text("abandoned walrus memory"))
        .expect("begin");
    let engram_graph::Begun::Pending(pending) = begun else {
        panic!("a new memory is pending");
    };
    drop(pending);
    // The next write applies the abandoned record too.
    g.remember("notes", text("a later write"))
        .expect("remember");
    assert!(g.seal_writes(std::time::Duration::from_secs(5)));
    let report = g.save_index_snapshots();
    assert_eq!(report.failed, 1, "{report:?}");
    drop(g);
    let g = open(dir.path());
    let hits = g
        .recall("notes", &cue("walrus"), 10, &Spread::default())
        .expect("recall");
    assert_eq!(hits.len(), 1, "the stored memory is found after a restart");
    g.forget("notes", &hits[0].memory.id)
        .expect("and it can be forgotten");
}

#[test]
fn dedupe_returns_the_memory_a_retry_repeats_never_the_same_text_elsewhere() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    let metadata = |turn: i64| match json!({ "turn": turn }) {
        serde_json::Value::Object(m) => m,
        _ => unreachable!("an object"),
    };
    let july = RememberRequest {
        content: "Haha.".into(),
        session: Some("july".into()),
        tags: vec!["chat".into(), "fun".into()],
        metadata: metadata(3),
        occurred_at_ms: Some(1_751_328_000_000),
        ..RememberRequest::default()
    };
    let first = g.remember(DEFAULT_SPACE, july.clone()).expect("july");
    assert!(!first.deduplicated);
    assert_eq!(first.occurred_at_ms, 1_751_328_000_000);

    // The retry of the same request (tags in another order) is the same memory.
    let retry = RememberRequest {
        dedupe: true,
        tags: vec!["fun".into(), "chat".into()],
        ..july.clone()
    };
    let r = g.remember(DEFAULT_SPACE, retry.clone()).expect("retry");
    assert!(r.deduplicated);
    assert_eq!((r.id.as_str(), r.sequence), (first.id.as_str(), 0));
    assert_eq!(
        r.occurred_at_ms, first.occurred_at_ms,
        "the stored memory's time"
    );
    // A retry that leaves the time to the server matches too.
    let untimed = RememberRequest {
        occurred_at_ms: None,
        ..retry.clone()
    };
    assert_eq!(
        g.remember(DEFAULT_SPACE, untimed).expect("untimed").id,
        first.id
    );

    // The same text anywhere else is a new memory.
    let elsewhere = [
        RememberRequest {
            session: Some("november".into()),
            occurred_at_ms: Some(1_762_000_000_000),
            ..retry.clone()
        },
        RememberRequest {
            session: None,
            ..retry.clone()
        },
        RememberRequest {
            metadata: metadata(4),
            ..retry.clone()
        },
        RememberRequest {
            tags: vec!["chat".into()],
            ..retry.clone()
        },
        RememberRequest {
            occurred_at_ms: Some(1_751_328_000_001),
            ..retry.clone()
        },
    ];
    let mut ids = HashSet::from([first.id.clone()]);
    for (i, req) in elsewhere.into_iter().enumerate() {
        let m = g.remember(DEFAULT_SPACE, req).expect("elsewhere");
        assert!(!m.deduplicated, "case {i} matched the July memory");
        assert!(ids.insert(m.id), "case {i} returned an earlier memory");
    }
}
