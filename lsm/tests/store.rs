//! The warm store against a real RocksDB in a temporary directory.

use engram_lsm::{Cf, Mutation, Operation, Store, StoreConfig, StoreError, keys};

fn id(n: u8) -> [u8; 16] {
    let mut id = [0; 16];
    id[15] = n;
    id
}

fn op(lsn: u64, space: u32, seq: u64, mutations: Vec<Mutation>) -> Operation {
    Operation {
        lsn,
        space,
        seq,
        mutations,
    }
}

fn episode_with_index(n: u8) -> Vec<Mutation> {
    vec![
        Mutation::PutEpisode {
            id: id(n),
            record: vec![n; 8],
        },
        Mutation::PutPosting {
            term: "coffee".into(),
            id: id(n),
            value: vec![1],
        },
        Mutation::PutVector {
            id: id(n),
            vector: vec![n; 4],
        },
        Mutation::PutEdge {
            from: id(n),
            to: id(n + 1),
            record: vec![9],
        },
    ]
}

fn count(store: &Store, cf: Cf, space: u32) -> usize {
    store
        .scan_space(cf, space)
        .expect("scan")
        .collect::<Result<Vec<_>, _>>()
        .expect("entries")
        .len()
}

#[test]
fn apply_records_data_and_applied_positions_atomically() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreConfig::default()).expect("open");
    assert_eq!(store.applied_lsn().expect("lsn"), 0);
    store
        .apply(&[
            op(
                1,
                1,
                1,
                vec![Mutation::PutSpace {
                    record: b"alpha".to_vec(),
                }],
            ),
            op(2, 1, 2, episode_with_index(1)),
            op(3, 2, 1, episode_with_index(7)),
        ])
        .expect("apply");
    assert_eq!(store.applied_lsn().expect("lsn"), 3);
    assert_eq!(store.applied_seq(1).expect("seq"), 2);
    assert_eq!(store.applied_seq(2).expect("seq"), 1);
    assert_eq!(store.applied_seqs().expect("seqs"), vec![(1, 2), (2, 1)]);
    assert_eq!(
        store.spaces().expect("spaces"),
        vec![(1, b"alpha".to_vec())]
    );
    assert_eq!(store.episode(1, &id(1)).expect("get"), Some(vec![1; 8]));
    assert_eq!(
        store.episode(2, &id(1)).expect("get"),
        None,
        "space isolation"
    );
    assert_eq!(store.vector(2, &id(7)).expect("get"), Some(vec![7; 4]));
    assert_eq!(
        store.postings(1, "coffee").expect("postings"),
        vec![(id(1), vec![1])]
    );
    assert_eq!(
        store.postings(1, "coffe").expect("postings"),
        vec![],
        "prefix of a term is another term"
    );
    assert_eq!(
        store.edges_from(1, &id(1)).expect("edges"),
        vec![(id(2), vec![9])]
    );
    drop(store);

    let store = Store::open(dir.path(), &StoreConfig::default()).expect("reopen");
    assert_eq!(store.applied_lsn().expect("lsn"), 3);
    assert_eq!(store.episode(1, &id(1)).expect("get"), Some(vec![1; 8]));
}

#[test]
fn deletes_remove_every_index_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreConfig::default()).expect("open");
    store
        .apply(&[op(1, 1, 1, episode_with_index(1))])
        .expect("apply");
    store
        .apply(&[op(
            2,
            1,
            2,
            vec![
                Mutation::DeleteEpisode { id: id(1) },
                Mutation::DeletePosting {
                    term: "coffee".into(),
                    id: id(1),
                },
                Mutation::DeleteVector { id: id(1) },
                Mutation::DeleteEdge {
                    from: id(1),
                    to: id(2),
                },
            ],
        )])
        .expect("apply");
    for cf in Cf::DATA {
        assert_eq!(count(&store, cf, 1), 0, "{} still holds data", cf.name());
    }
}

#[test]
fn dropping_a_space_removes_its_data_only_and_keeps_its_sequence() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreConfig::default()).expect("open");
    let mut ops = Vec::new();
    for (lsn, space) in [(1u64, 1u32), (2, 2), (3, 3)] {
        let mut m = episode_with_index(space as u8);
        m.push(Mutation::PutSpace {
            record: vec![space as u8],
        });
        m.push(Mutation::PutCold {
            id: id(50),
            record: vec![1, 2, 3],
        });
        m.push(Mutation::PutAccess {
            id: id(50),
            value: vec![0; 12],
        });
        ops.push(op(lsn, space, 1, m));
    }
    store.apply(&ops).expect("apply");
    store.flush().expect("flush");
    store
        .apply(&[op(4, 2, 2, vec![Mutation::DropSpace])])
        .expect("drop");
    for cf in Cf::DATA {
        assert_eq!(
            count(&store, cf, 2),
            0,
            "{} keeps dropped space data",
            cf.name()
        );
        assert!(count(&store, cf, 1) > 0);
        assert!(count(&store, cf, 3) > 0);
    }
    assert_eq!(store.spaces().expect("spaces").len(), 2);
    assert_eq!(store.applied_seq(2).expect("seq"), 2);
}

#[test]
fn checkpoint_is_an_openable_consistent_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("db"), &StoreConfig::default()).expect("open");
    store
        .apply(&[op(1, 1, 1, episode_with_index(1))])
        .expect("apply");
    let cp = dir.path().join("checkpoint");
    store.checkpoint(&cp).expect("checkpoint");
    assert!(matches!(
        store.checkpoint(&cp),
        Err(StoreError::CheckpointExists(_))
    ));
    store
        .apply(&[op(2, 1, 2, episode_with_index(2))])
        .expect("apply after checkpoint");
    let copy = Store::open(&cp, &StoreConfig::default()).expect("open checkpoint");
    assert_eq!(copy.applied_lsn().expect("lsn"), 1);
    assert_eq!(copy.episode(1, &id(1)).expect("get"), Some(vec![1; 8]));
    assert_eq!(copy.episode(1, &id(2)).expect("get"), None);
}

#[test]
fn invalid_input_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), &StoreConfig::default()).expect("open");
    let long = "t".repeat(keys::MAX_TERM_LEN + 1);
    let r = store.apply(&[op(
        1,
        1,
        1,
        vec![Mutation::PutPosting {
            term: long,
            id: id(1),
            value: vec![],
        }],
    )]);
    assert!(matches!(r, Err(StoreError::TermTooLong { .. })));
    assert!(matches!(
        store.apply(&[op(1, u32::MAX, 1, vec![])]),
        Err(StoreError::InvalidSpace(_))
    ));
    assert_eq!(
        store.applied_lsn().expect("lsn"),
        0,
        "a refused batch must apply nothing"
    );
    let bad = StoreConfig {
        zstd_level: 0,
        ..StoreConfig::default()
    };
    assert!(matches!(
        Store::open(&dir.path().join("x"), &bad),
        Err(StoreError::Config(_))
    ));
}

#[test]
fn stats_report_the_shared_block_cache() {
    const MIB: u64 = 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        block_cache_mb: 64,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), &config).expect("open");
    let stats = store.stats();
    assert_eq!(
        stats.block_cache_capacity_bytes,
        64 * MIB,
        "the configured shared cache, not the default family's 32 MiB one"
    );

    store
        .apply(&[op(1, 1, 1, episode_with_index(1))])
        .expect("apply");
    store.flush().expect("flush");
    assert_eq!(store.episode(1, &id(1)).expect("get"), Some(vec![1; 8]));
    let stats = store.stats();
    assert!(
        stats.block_cache_usage_bytes > 0,
        "a read from an SST file goes through the shared cache"
    );
    assert!(stats.block_cache_usage_bytes <= stats.block_cache_capacity_bytes);
    assert_eq!(stats.block_cache_capacity_bytes, 64 * MIB);
}
