//! Invariant 6 on disk: once the purge that follows a forget has run, no
//! file under the data directory (WAL segments, RocksDB SSTs, WAL files and
//! MANIFEST, index snapshots, quarantine), no checkpoint taken afterwards
//! and no index snapshot holds a byte of the forgotten memory's content,
//! tags, metadata or embedding; and it stays gone after a restart.
//!
//! Block compression is switched off so that a copy left in an SST file
//! would show as raw bytes (a compressed copy would escape the scan).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use engram_graph::{
    Background, ConsolidationConfig, Cue, EngineConfig, Graph, GraphConfig, GraphError,
    OpenOptions, RememberRequest, Spread,
};
use engram_lsm::StoreConfig;
use engram_wal::WalConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const DIM: u32 = 16;
const SPACE: &str = "v";

fn config() -> GraphConfig {
    GraphConfig {
        engine: EngineConfig {
            wal: WalConfig {
                // Small segments keep the byte scans quick.
                segment_size: 1024 * 1024,
                max_payload: 64 * 1024,
                ..WalConfig::default()
            },
            store: StoreConfig {
                compression: false,
                ..StoreConfig::default()
            },
            purge_after_ms: 200,
            ..EngineConfig::default()
        },
        // No concepts: they would make what is on disk depend on timing.
        consolidation: ConsolidationConfig {
            interval_sec: 0,
            ..ConsolidationConfig::default()
        },
        ..GraphConfig::default()
    }
}

fn open(dir: &Path) -> Graph {
    Graph::open(dir, config(), OpenOptions::default())
        .expect("open graph")
        .0
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// "<needle name> in <file>" for every file under `dir` (recursively) that
/// holds one of `needles`. A file deleted while the scan runs is skipped.
fn files_holding(dir: &Path, needles: &[(&str, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(path);
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            for (name, needle) in needles {
                if contains(&bytes, needle) {
                    found.push(format!("{name} in {}", path.display()));
                }
            }
        }
    }
    found.sort();
    found
}

const WORDS: &[&str] = &[
    "the", "blue", "notebook", "river", "garden", "morning", "coffee", "lamp", "window", "letter",
    "station", "harbor", "bread", "candle", "music", "road", "winter", "orange", "mirror", "cloud",
];

/// Memories around the forgotten one, some in its session (temporal edges
/// in both directions), with embeddings. Their text holds no digit and no
/// q, x or z, the markers' letters.
fn remember_others(g: &Graph, rng: &mut SmallRng, n: usize) {
    for i in 0..n {
        let content: Vec<&str> = (0..8)
            .map(|_| WORDS[rng.random_range(0..WORDS.len())])
            .collect();
        let embedding: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let req = RememberRequest {
            content: content.join(" "),
            tags: vec![WORDS[i % WORDS.len()].to_owned()],
            embedding: Some(embedding),
            session: (i % 3 == 0).then(|| "evening".to_owned()),
            ..RememberRequest::default()
        };
        g.remember(SPACE, req).expect("remember");
        g.remember(
            engram_graph::DEFAULT_SPACE,
            RememberRequest {
                content: content.join(" "),
                ..RememberRequest::default()
            },
        )
        .expect("remember");
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn forgotten_content_leaves_no_bytes_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    let mut rng = SmallRng::seed_from_u64(seed);
    let content_marker = format!("qzx{:020}", rng.random::<u64>());
    let tag_marker = format!("qzt{:020}", rng.random::<u64>());
    let meta_marker = format!("qzm{:020}", rng.random::<u64>());
    let embedding: Vec<f32> = (0..DIM).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("content", content_marker.clone().into_bytes()),
        ("tag", tag_marker.clone().into_bytes()),
        ("metadata", meta_marker.clone().into_bytes()),
        (
            "embedding",
            embedding.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ),
    ];

    let g = Arc::new(open(&data));
    g.create_space(SPACE, Some(DIM)).expect("create space");
    remember_others(&g, &mut rng, 60);
    g.engine().store().flush().expect("flush");
    let forgotten = g
        .remember(
            SPACE,
            RememberRequest {
                content: format!("the lamp by the window {content_marker} glows"),
                tags: vec![tag_marker.clone(), "lamp".into()],
                metadata: json!({ "note": meta_marker })
                    .as_object()
                    .cloned()
                    .expect("object"),
                embedding: Some(embedding.clone()),
                session: Some("evening".into()),
                ..RememberRequest::default()
            },
        )
        .expect("remember the memory to forget")
        .id;
    remember_others(&g, &mut rng, 60);
    g.engine().store().flush().expect("flush");

    // The scan sees every copy: the WAL record and the SST files.
    let before = files_holding(&data, &needles);
    for (name, _) in &needles {
        for ext in [".wal", ".sst"] {
            assert!(
                before
                    .iter()
                    .any(|f| f.starts_with(&format!("{name} in ")) && f.ends_with(ext)),
                "the {name} marker is in a {ext} file before the forget: {before:?}"
            );
        }
    }

    let background = Background::start(&g).expect("background");
    let passes = g.engine().purges();
    g.forget(SPACE, &forgotten).expect("forget");
    assert!(g.engine().purge_pending(), "a forget arms the purge");
    wait_until("the purge ran", Duration::from_secs(20), || {
        g.engine().purges() > passes && !g.engine().purge_pending()
    });

    let left = files_holding(&data, &needles);
    assert!(left.is_empty(), "forgotten bytes still on disk: {left:?}");

    // A backup taken now (a checkpoint of the store) holds none either.
    let backup = dir.path().join("backup");
    g.engine().checkpoint(&backup).expect("checkpoint");
    let in_backup = files_holding(&backup, &needles);
    assert!(
        in_backup.is_empty(),
        "forgotten bytes in a backup: {in_backup:?}"
    );

    // Nor do the index snapshots of a clean shutdown.
    drop(background);
    assert!(g.seal_writes(Duration::from_secs(10)), "writes drained");
    let report = g.save_index_snapshots();
    assert!(report.spaces >= 1 && report.failed == 0, "{report:?}");
    let in_snapshots = files_holding(&data.join("indexes"), &needles);
    assert!(
        in_snapshots.is_empty(),
        "forgotten bytes in an index snapshot: {in_snapshots:?}"
    );
    drop(g);

    // And it stays gone after a restart.
    let g = open(&data);
    assert!(
        matches!(
            g.get(SPACE, &forgotten, true),
            Err(GraphError::MemoryNotFound(_))
        ),
        "forgotten memory is back after a restart"
    );
    let by_text = Cue {
        text: Some(content_marker.clone()),
        ..Cue::default()
    };
    let by_tag = Cue {
        text: Some("lamp".into()),
        tags: vec![tag_marker.clone()],
        ..Cue::default()
    };
    let by_embedding = Cue {
        embedding: Some(embedding.clone()),
        ..Cue::default()
    };
    for cue in [by_text, by_tag, by_embedding] {
        let hits = g
            .recall(SPACE, &cue, 50, &Spread::default())
            .expect("recall");
        assert!(
            hits.iter().all(|h| h.memory.id != forgotten),
            "recall finds the forgotten memory after a restart ({cue:?})"
        );
    }
    let left = files_holding(&data, &needles);
    assert!(
        left.is_empty(),
        "forgotten bytes on disk after a restart: {left:?}"
    );
}
