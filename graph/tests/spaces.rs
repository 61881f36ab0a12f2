//! Spaces fail alone: a space whose data cannot be loaded (a corrupt record
//! in the store, a corrupt space record) is refused at once with
//! `SpaceUnavailable` while the graph opens and the other spaces serve.

use std::path::Path;
use std::time::{Duration, Instant};

use engram_graph::{
    Cue, DEFAULT_SPACE, Graph, GraphConfig, GraphError, OpenOptions, RememberRequest, Spread,
};
use engram_lsm::{Mutation, Operation, Store, StoreConfig};

fn open(dir: &Path) -> Graph {
    Graph::open(dir, GraphConfig::default(), OpenOptions::default())
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

/// Writes `mutations` for `space` straight into the store of a closed
/// graph, as damage on disk would: the applied LSN and sequence stay as
/// they are, so the next open replays nothing over it.
fn damage(dir: &Path, space: u32, mutations: Vec<Mutation>) {
    let store = Store::open(&dir.join("db"), &StoreConfig::default()).expect("open the store");
    let op = Operation {
        lsn: store.applied_lsn().expect("applied LSN"),
        space,
        seq: store.applied_seq(space).expect("applied sequence"),
        mutations,
    };
    store.apply(&[op]).expect("write the damage");
    store.flush().expect("flush");
}

/// The error's message, after checking it refuses `space` as unavailable.
fn unavailable<T: std::fmt::Debug>(r: Result<T, GraphError>, space: &str) -> String {
    match r {
        Err(e) if matches!(&e, GraphError::SpaceUnavailable { space: s, .. } if s == space) => {
            e.to_string()
        }
        other => panic!("expected SpaceUnavailable for {space}, got {other:?}"),
    }
}

#[test]
fn a_damaged_space_is_refused_and_the_others_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    g.create_space("a", None).expect("create a");
    g.create_space("b", None).expect("create b");
    let in_a = g
        .remember("a", text("the boat is blue"))
        .expect("remember a");
    for i in 0..20 {
        g.remember("a", text(&format!("memory {i} of space a")))
            .expect("remember a");
    }
    let in_b = g
        .remember("b", text("the house is red"))
        .expect("remember b");
    let a = g.space_id("a").expect("id of a");
    drop(g);

    // One of a's episode records no longer decodes.
    let id = ulid::Ulid::from_string(&in_a.id).expect("ULID").to_bytes();
    damage(
        dir.path(),
        a,
        vec![Mutation::PutEpisode {
            id,
            record: vec![0xff; 3],
        }],
    );

    let g = open(dir.path());
    let report = g.warm_up().expect("warm-up goes on past a damaged space");
    assert_eq!(report.loaded, 2, "default and b load: {report:?}");
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    let d = &report.damaged[0];
    assert_eq!((d.name.as_deref(), d.id), (Some("a"), a), "{d:?}");
    assert!(
        !d.retried,
        "corrupt data stays refused until a restart: {d:?}"
    );
    assert!(d.reason.contains("episode"), "the reason says what: {d:?}");

    // Every request to a fails at once with the reason, without a new load.
    for _ in 0..5 {
        let started = Instant::now();
        let message = unavailable(g.recall("a", &cue("boat"), 5, &Spread::default()), "a");
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "refused in {:?}",
            started.elapsed()
        );
        assert!(
            message.contains("corrupt") && message.contains("troubleshooting.md"),
            "{message}"
        );
    }
    unavailable(g.get("a", &in_a.id, false), "a");
    unavailable(g.remember("a", text("more")), "a");
    unavailable(g.space_stats("a"), "a");
    let damaged = g.damaged_spaces();
    assert_eq!(damaged.len(), 1);
    assert_eq!(
        damaged[0].failures, 1,
        "refused requests must not load the space again"
    );

    // b (and default) read and write as before.
    let hits = g
        .recall("b", &cue("house"), 5, &Spread::default())
        .expect("recall b");
    assert_eq!(
        hits.first().map(|h| h.memory.id.as_str()),
        Some(in_b.id.as_str())
    );
    let got = g.get("b", &in_b.id, false).expect("get b");
    assert_eq!(got.content, "the house is red");
    g.remember("b", text("b still takes writes"))
        .expect("remember b");
    g.remember(DEFAULT_SPACE, text("so does default"))
        .expect("remember default");
    // Listing spaces leaves the damaged one out instead of failing.
    let names: Vec<String> = g
        .spaces()
        .expect("spaces")
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, vec!["b", "default"]);

    // A damaged space can be deleted, and its name used again.
    g.delete_space("a").expect("delete the damaged space");
    assert!(g.damaged_spaces().is_empty());
    g.create_space("a", None).expect("create a again");
    g.remember("a", text("a fresh start")).expect("remember a");
}

#[test]
fn a_damaged_space_record_does_not_stop_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = open(dir.path());
    for name in ["named", "nameless", "fine"] {
        g.create_space(name, None).expect("create");
    }
    let kept = g.remember("fine", text("still here")).expect("remember");
    let named = g.space_id("named").expect("id");
    let nameless = g.space_id("nameless").expect("id");
    drop(g);

    // The name still reads, what follows does not (9 is no Option tag).
    let record = vec![5, b'n', b'a', b'm', b'e', b'd', 9];
    damage(dir.path(), named, vec![Mutation::PutSpace { record }]);
    // Nothing reads.
    let record = vec![0xff, 0xff];
    damage(dir.path(), nameless, vec![Mutation::PutSpace { record }]);

    let g = open(dir.path());
    let damaged = g.damaged_spaces();
    assert_eq!(damaged.len(), 2, "{damaged:?}");
    assert_eq!(
        (damaged[0].name.as_deref(), damaged[0].id),
        (Some("named"), named)
    );
    assert_eq!(
        (damaged[1].name.as_deref(), damaged[1].id),
        (None, nameless)
    );
    assert!(damaged.iter().all(|d| !d.retried), "{damaged:?}");
    unavailable(g.recall("named", &cue("x"), 5, &Spread::default()), "named");
    assert!(matches!(
        g.get("nameless", &kept.id, false),
        Err(GraphError::SpaceNotFound(_))
    ));
    let report = g.warm_up().expect("warm up");
    assert_eq!((report.loaded, report.damaged.len()), (2, 2), "{report:?}");
    let got = g.get("fine", &kept.id, false).expect("the others serve");
    assert_eq!(got.content, "still here");
    // New spaces never take the id of the unreadable one.
    g.create_space("new", None).expect("create");
    assert!(g.space_id("new").expect("id") > nameless);
}
