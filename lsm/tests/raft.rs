//! The metadata group's Raft storage and the per-space replication state against a real RocksDB.

use engram_lsm::{Mutation, Operation, Store, StoreConfig};

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, &StoreConfig::default()).expect("open")
}

fn entries(range: std::ops::Range<u64>) -> Vec<(u64, Vec<u8>)> {
    range
        .map(|i| (i, format!("entry {i}").into_bytes()))
        .collect()
}

#[test]
fn log_entries_append_read_truncate_and_purge_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        assert_eq!(s.raft_last_entry().expect("last"), None);
        s.raft_append(&entries(1..11)).expect("append");
        assert_eq!(s.raft_entries(3, 6).expect("read"), entries(3..6));
        assert_eq!(s.raft_entries(6, 3).expect("read"), vec![]);
        assert_eq!(s.raft_entries(9, 100).expect("read"), entries(9..11));
        // Index order is numeric, not lexical: 256 sorts after 255.
        s.raft_append(&entries(255..258)).expect("append");
        assert_eq!(s.raft_last_entry().expect("last").map(|e| e.0), Some(257));
        s.raft_truncate_from(255).expect("truncate");
        assert_eq!(
            s.raft_last_entry().expect("last"),
            Some((10, b"entry 10".to_vec()))
        );
        // Replacing an entry at an existing index.
        s.raft_append(&[(10, b"new 10".to_vec())]).expect("replace");
        s.raft_truncate_from(8).expect("truncate");
        assert_eq!(s.raft_entries(0, u64::MAX).expect("read"), entries(1..8));
        s.raft_purge_to(3, "purged", b"3").expect("purge");
        assert_eq!(s.raft_entries(0, u64::MAX).expect("read"), entries(4..8));
        s.raft_put_state("vote", b"v1").expect("vote");
        s.raft_put_state("vote", b"v2").expect("vote");
    }
    let s = open(dir.path());
    assert_eq!(s.raft_entries(0, u64::MAX).expect("read"), entries(4..8));
    assert_eq!(s.raft_get_state("vote").expect("get"), Some(b"v2".to_vec()));
    assert_eq!(
        s.raft_get_state("purged").expect("get"),
        Some(b"3".to_vec())
    );
    assert_eq!(s.raft_get_state("committed").expect("get"), None);
    // Clearing forgets the log and every state value.
    {
        let c = tempfile::tempdir().expect("tempdir");
        let s = open(c.path());
        s.raft_append(&entries(1..5)).expect("append");
        s.raft_put_state("vote", b"v").expect("vote");
        s.raft_put_state("storage_id", b"id").expect("id");
        s.raft_clear().expect("clear");
        assert_eq!(s.raft_last_entry().expect("last"), None);
        assert_eq!(s.raft_get_state("vote").expect("get"), None);
        assert_eq!(s.raft_get_state("storage_id").expect("get"), None);
    }
    // Purging everything leaves an empty log but keeps the state.
    s.raft_purge_to(u64::MAX, "purged", b"max")
        .expect("purge all");
    assert_eq!(s.raft_last_entry().expect("last"), None);
    assert_eq!(
        s.raft_get_state("purged").expect("get"),
        Some(b"max".to_vec())
    );
}

#[test]
fn raft_families_hold_no_space_data_and_space_writes_do_not_touch_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path());
    s.raft_append(&entries(1..3)).expect("append");
    let op = |lsn, mutations| Operation {
        lsn,
        space: 1,
        seq: lsn,
        mutations,
    };
    s.apply(&[op(
        1,
        vec![Mutation::PutEpisode {
            id: [7; 16],
            record: vec![1],
        }],
    )])
    .expect("put");
    s.apply(&[op(2, vec![Mutation::DropSpace])]).expect("drop");
    s.flush().expect("flush");
    assert_eq!(s.raft_entries(0, 10).expect("read"), entries(1..3));
    assert_eq!(s.episode(1, &[7; 16]).expect("episode"), None);
}

#[test]
fn replica_states_are_kept_per_space_until_deleted_and_survive_drop_and_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path());
        assert_eq!(s.replica_states().expect("scan"), vec![]);
        s.put_replica_state(3, b"three").expect("put");
        s.put_replica_state(1, b"one").expect("put");
        s.put_replica_state(1, b"one again").expect("put");
        assert_eq!(s.replica_state(2).expect("get"), None);
        // Dropping the space's data keeps its replication state.
        s.apply(&[Operation {
            lsn: 1,
            space: 3,
            seq: 1,
            mutations: vec![Mutation::DropSpace],
        }])
        .expect("drop");
        assert!(s.put_replica_state(u32::MAX, b"x").is_err(), "reserved id");
    }
    let s = open(dir.path());
    assert_eq!(
        s.replica_states().expect("scan"),
        vec![(1, b"one again".to_vec()), (3, b"three".to_vec())]
    );
    s.delete_replica_state(3).expect("delete");
    assert_eq!(s.replica_state(3).expect("get"), None);
    assert_eq!(s.replica_states().expect("scan").len(), 1);
    // Space records and applied sequences do not show up here.
    assert!(s.spaces().expect("spaces").is_empty());
}
