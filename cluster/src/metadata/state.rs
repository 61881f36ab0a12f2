//! The metadata state machine: what every node agrees on, changed only by
//! committed [`Command`]s. Pure: no I/O, no clock, no randomness (the
//! proposer puts ids and times into the command), so every node that
//! applies the same log holds the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Fixed for the life of the cluster, set by the first command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Random id chosen by the node that initialized the group; peers
    /// refuse messages carrying another one.
    pub cluster_id: String,
    /// Copies of every space; write quorums are `⌊RF/2⌋+1` of it, never
    /// of the size of a replica set.
    pub replication_factor: u8,
    /// Partitions spaces are hashed into.
    pub jump_buckets: u32,
    /// When the cluster was initialized (Unix ms, from the proposer).
    pub created_at_ms: i64,
}

/// A node the cluster knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Raft id (stable hash of the name).
    pub raft_id: u64,
    /// Random id of the node's data directory; a new one means the node
    /// lost its data.
    pub storage_id: String,
}

/// Where a space is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SpaceLifecycle {
    /// Serving.
    Active,
    /// Deletion accepted; the space is being dropped on its replicas.
    Deleting,
}

/// Why a space's epoch last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EpochReason {
    /// The space was created (epoch 1).
    Created,
    /// The primary failed and another replica took over.
    Failover,
    /// The primary handed the space over on purpose.
    HandOver,
    /// The replica set changed.
    SetChange,
    /// The primary restarted: epochs are single-use, so the new process
    /// leads a new one.
    PrimaryRestarted,
}

/// What a space is created with (the same on every copy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceSettings {
    /// Embedding dimension (none: the space refuses embeddings).
    #[serde(default)]
    pub embedding_dim: Option<u32>,
    /// Hot-tier capacity (none: each node's default).
    #[serde(default)]
    pub hot_capacity: Option<u32>,
}

/// The committed assignment of one space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceMeta {
    /// Cluster-wide id, never reused (a space created again after a
    /// deletion gets a new one).
    pub uid: u64,
    /// Name.
    pub name: String,
    /// Epoch of the current assignment; every change bumps it.
    pub epoch: u64,
    /// Node that takes writes.
    pub primary: String,
    /// Nodes holding a copy, the primary included, in placement order.
    pub replicas: Vec<String>,
    /// Life-cycle state.
    pub state: SpaceLifecycle,
    /// Why the epoch last changed.
    pub reason: EpochReason,
    /// What it was created with.
    #[serde(default)]
    pub options: SpaceSettings,
}

/// A deleted space, remembered so nodes that missed the deletion drop
/// their copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredSpace {
    /// Its uid.
    pub uid: u64,
    /// Its name.
    pub name: String,
}

/// Everything the metadata group agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Set by [`Command::InitCluster`]; `None` until then.
    pub cluster: Option<ClusterInfo>,
    /// Next space uid to hand out (starts at 1).
    pub next_space_uid: u64,
    /// Spaces by name.
    pub spaces: BTreeMap<String, SpaceMeta>,
    /// Deleted spaces by uid.
    pub retired: BTreeMap<u64, RetiredSpace>,
    /// Registered nodes by name.
    pub nodes: BTreeMap<String, NodeMeta>,
}

/// A change proposed to the metadata group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// First command of a cluster: fixes its identity and parameters.
    /// Refused once the cluster is initialized.
    InitCluster {
        /// Random cluster id.
        cluster_id: String,
        /// Copies of every space.
        replication_factor: u8,
        /// Partitions.
        jump_buckets: u32,
        /// Unix ms.
        created_at_ms: i64,
    },
    /// A node announces itself (again: a new storage id replaces the old).
    RegisterNode {
        /// Node name.
        name: String,
        /// Its raft id.
        raft_id: u64,
        /// Its data directory's id.
        storage_id: String,
    },
    /// Create a space at epoch 1 with this assignment.
    CreateSpace {
        /// Name.
        name: String,
        /// Primary (one of `replicas`).
        primary: String,
        /// Replica set, primary included.
        replicas: Vec<String>,
        /// Options every copy is created with.
        #[serde(default)]
        options: SpaceSettings,
    },
    /// Start deleting a space (only the incarnation `expect_uid`).
    DeleteSpace {
        /// Name.
        name: String,
        /// Uid the proposer saw.
        expect_uid: u64,
    },
    /// Forget a space whose deletion reached its replicas; its uid is
    /// retired.
    RetireSpace {
        /// Uid.
        uid: u64,
    },
    /// Compare-and-set a space's assignment: applies only when the epoch is
    /// still `expect_epoch`, and sets it to `expect_epoch + 1`.
    SetAssignment {
        /// Uid.
        uid: u64,
        /// Epoch the proposer saw.
        expect_epoch: u64,
        /// New primary (one of `replicas`).
        primary: String,
        /// New replica set.
        replicas: Vec<String>,
        /// Why.
        reason: EpochReason,
    },
    /// Several commands in one log entry, each with its own outcome.
    Batch(Vec<Command>),
}

/// Why a command changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The cluster has not been initialized yet.
    #[error("the metadata group has not initialized the cluster yet")]
    NotInitialized,
    /// A second `InitCluster`.
    #[error("the cluster is already initialized (cluster id {cluster_id})")]
    AlreadyInitialized {
        /// The id it has.
        cluster_id: String,
    },
    /// A parameter is out of range.
    #[error("invalid command: {0}")]
    Invalid(String),
    /// A node name is registered with another raft id.
    #[error("node {name} is registered with raft id {registered}, not {proposed}")]
    RaftIdConflict {
        /// Node.
        name: String,
        /// Registered id.
        registered: u64,
        /// Proposed id.
        proposed: u64,
    },
    /// Creating a space that exists.
    #[error("space {name} already exists (uid {uid})")]
    SpaceExists {
        /// Name.
        name: String,
        /// Its uid.
        uid: u64,
    },
    /// The space does not exist (or is another incarnation).
    #[error("no space {0}")]
    NoSuchSpace(String),
    /// The space is being deleted.
    #[error("space {0} is being deleted")]
    SpaceDeleting(String),
    /// A compare-and-set lost: the epoch moved on.
    #[error("space uid {uid} is at epoch {current}, not {expected}")]
    StaleEpoch {
        /// Uid.
        uid: u64,
        /// Epoch the proposer saw.
        expected: u64,
        /// Current epoch.
        current: u64,
    },
}

/// The result of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or an entry without a command).
    Done,
    /// Applied; the space as it is now.
    Space(SpaceMeta),
    /// Refused; nothing changed.
    Rejected(Rejection),
    /// One outcome per command of a [`Command::Batch`].
    Batch(Vec<Outcome>),
}

fn valid_assignment(primary: &str, replicas: &[String]) -> Result<(), Rejection> {
    if replicas.is_empty() || replicas.len() > usize::from(u8::MAX) {
        return Err(Rejection::Invalid(format!(
            "a replica set holds 1 to 255 nodes, not {}",
            replicas.len()
        )));
    }
    if !replicas.iter().any(|r| r == primary) {
        return Err(Rejection::Invalid(format!(
            "primary {primary} is not in the replica set {replicas:?}"
        )));
    }
    let mut sorted: Vec<&String> = replicas.iter().collect();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != replicas.len() {
        return Err(Rejection::Invalid(format!(
            "replica set {replicas:?} names a node twice"
        )));
    }
    if replicas.iter().any(|r| r.is_empty()) {
        return Err(Rejection::Invalid("a replica has an empty name".into()));
    }
    Ok(())
}

impl MetaState {
    /// The space with `uid`, if it exists.
    pub fn space_by_uid(&self, uid: u64) -> Option<&SpaceMeta> {
        self.spaces.values().find(|s| s.uid == uid)
    }

    /// Applies `command`; a rejected command changes nothing.
    pub fn apply(&mut self, command: Command) -> Outcome {
        if let Command::Batch(commands) = command {
            return Outcome::Batch(commands.into_iter().map(|c| self.apply(c)).collect());
        }
        match self.apply_one(command) {
            Ok(outcome) => outcome,
            Err(rejection) => Outcome::Rejected(rejection),
        }
    }

    fn apply_one(&mut self, command: Command) -> Result<Outcome, Rejection> {
        if self.cluster.is_none() && !matches!(command, Command::InitCluster { .. }) {
            return Err(Rejection::NotInitialized);
        }
        match command {
            Command::InitCluster {
                cluster_id,
                replication_factor,
                jump_buckets,
                created_at_ms,
            } => {
                if let Some(c) = &self.cluster {
                    return Err(Rejection::AlreadyInitialized {
                        cluster_id: c.cluster_id.clone(),
                    });
                }
                if cluster_id.is_empty() || replication_factor == 0 || jump_buckets == 0 {
                    return Err(Rejection::Invalid(
                        "cluster id, replication factor and jump buckets must be set".into(),
                    ));
                }
                self.cluster = Some(ClusterInfo {
                    cluster_id,
                    replication_factor,
                    jump_buckets,
                    created_at_ms,
                });
                self.next_space_uid = self.next_space_uid.max(1);
                Ok(Outcome::Done)
            }
            Command::RegisterNode {
                name,
                raft_id,
                storage_id,
            } => {
                if name.is_empty() {
                    return Err(Rejection::Invalid("a node name is empty".into()));
                }
                if let Some(n) = self.nodes.get(&name)
                    && n.raft_id != raft_id
                {
                    return Err(Rejection::RaftIdConflict {
                        name,
                        registered: n.raft_id,
                        proposed: raft_id,
                    });
                }
                self.nodes.insert(
                    name,
                    NodeMeta {
                        raft_id,
                        storage_id,
                    },
                );
                Ok(Outcome::Done)
            }
            Command::CreateSpace {
                name,
                primary,
                replicas,
                options,
            } => {
                if name.is_empty() {
                    return Err(Rejection::Invalid("a space name is empty".into()));
                }
                if let Some(s) = self.spaces.get(&name) {
                    return Err(Rejection::SpaceExists { name, uid: s.uid });
                }
                valid_assignment(&primary, &replicas)?;
                let uid = self.next_space_uid.max(1);
                self.next_space_uid = uid + 1;
                let space = SpaceMeta {
                    uid,
                    name: name.clone(),
                    epoch: 1,
                    primary,
                    replicas,
                    state: SpaceLifecycle::Active,
                    reason: EpochReason::Created,
                    options,
                };
                self.spaces.insert(name, space.clone());
                Ok(Outcome::Space(space))
            }
            Command::DeleteSpace { name, expect_uid } => {
                let Some(space) = self.spaces.get_mut(&name) else {
                    return Err(Rejection::NoSuchSpace(name));
                };
                if space.uid != expect_uid {
                    return Err(Rejection::NoSuchSpace(format!("{name} (uid {expect_uid})")));
                }
                space.state = SpaceLifecycle::Deleting;
                Ok(Outcome::Space(space.clone()))
            }
            Command::RetireSpace { uid } => {
                let Some(name) = self.space_by_uid(uid).map(|s| s.name.clone()) else {
                    return Err(Rejection::NoSuchSpace(format!("uid {uid}")));
                };
                if let Some(space) = self.spaces.remove(&name) {
                    self.retired.insert(uid, RetiredSpace { uid, name });
                    return Ok(Outcome::Space(space));
                }
                Err(Rejection::NoSuchSpace(format!("uid {uid}")))
            }
            Command::SetAssignment {
                uid,
                expect_epoch,
                primary,
                replicas,
                reason,
            } => {
                valid_assignment(&primary, &replicas)?;
                let Some(name) = self.space_by_uid(uid).map(|s| s.name.clone()) else {
                    return Err(Rejection::NoSuchSpace(format!("uid {uid}")));
                };
                let Some(space) = self.spaces.get_mut(&name) else {
                    return Err(Rejection::NoSuchSpace(format!("uid {uid}")));
                };
                if space.state == SpaceLifecycle::Deleting {
                    return Err(Rejection::SpaceDeleting(name));
                }
                if space.epoch != expect_epoch {
                    return Err(Rejection::StaleEpoch {
                        uid,
                        expected: expect_epoch,
                        current: space.epoch,
                    });
                }
                space.epoch = expect_epoch + 1;
                space.primary = primary;
                space.replicas = replicas;
                space.reason = reason;
                Ok(Outcome::Space(space.clone()))
            }
            Command::Batch(commands) => Ok(Outcome::Batch(
                commands.into_iter().map(|c| self.apply(c)).collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init() -> Command {
        Command::InitCluster {
            cluster_id: "c1".into(),
            replication_factor: 3,
            jump_buckets: 64,
            created_at_ms: 5,
        }
    }

    fn create(name: &str) -> Command {
        Command::CreateSpace {
            name: name.into(),
            primary: "b".into(),
            replicas: vec!["b".into(), "a".into(), "c".into()],
            options: SpaceSettings::default(),
        }
    }

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_but_init_applies_before_the_cluster_is_initialized_and_init_applies_once() {
        let mut s = MetaState::default();
        assert_eq!(
            s.apply(create("x")),
            Outcome::Rejected(Rejection::NotInitialized)
        );
        assert_eq!(s, MetaState::default());
        assert_eq!(s.apply(init()), Outcome::Done);
        let before = s.clone();
        assert_eq!(
            s.apply(init()),
            Outcome::Rejected(Rejection::AlreadyInitialized {
                cluster_id: "c1".into()
            })
        );
        assert_eq!(s, before);
    }

    #[test]
    fn spaces_get_unique_uids_at_epoch_one_and_names_are_unique() {
        let mut s = MetaState::default();
        s.apply(init());
        let Outcome::Space(a) = s.apply(create("a")) else {
            panic!("created")
        };
        let Outcome::Space(b) = s.apply(create("b")) else {
            panic!("created")
        };
        assert_eq!((a.uid, a.epoch, b.uid), (1, 1, 2));
        assert_eq!(a.reason, EpochReason::Created);
        assert_eq!(
            s.apply(create("a")),
            Outcome::Rejected(Rejection::SpaceExists {
                name: "a".into(),
                uid: 1
            })
        );
        // Deleted and created again: a new uid, never a reused one.
        assert!(matches!(
            s.apply(Command::DeleteSpace {
                name: "a".into(),
                expect_uid: 1
            }),
            Outcome::Space(SpaceMeta {
                state: SpaceLifecycle::Deleting,
                ..
            })
        ));
        assert!(matches!(
            s.apply(Command::RetireSpace { uid: 1 }),
            Outcome::Space(_)
        ));
        let Outcome::Space(a2) = s.apply(create("a")) else {
            panic!("created")
        };
        assert_eq!(a2.uid, 3);
        assert!(s.retired.contains_key(&1));
    }

    #[test]
    fn assignments_are_compare_and_set_on_the_epoch() {
        let mut s = MetaState::default();
        s.apply(init());
        s.apply(create("a"));
        let set = |epoch, primary: &str| Command::SetAssignment {
            uid: 1,
            expect_epoch: epoch,
            primary: primary.into(),
            replicas: nodes(&["a", "b", "c"]),
            reason: EpochReason::Failover,
        };
        let Outcome::Space(after) = s.apply(set(1, "a")) else {
            panic!("applied")
        };
        assert_eq!((after.epoch, after.primary.as_str()), (2, "a"));
        // A second proposer that also saw epoch 1 loses.
        let before = s.clone();
        assert_eq!(
            s.apply(set(1, "c")),
            Outcome::Rejected(Rejection::StaleEpoch {
                uid: 1,
                expected: 1,
                current: 2
            })
        );
        assert_eq!(s, before);
    }

    #[test]
    fn bad_assignments_are_refused_and_batches_report_each_command() {
        let mut s = MetaState::default();
        s.apply(init());
        let bad = [
            (String::from("x"), nodes(&["a", "b"])),
            (String::from("a"), nodes(&["a", "a"])),
            (String::from("a"), vec![]),
        ];
        for (primary, replicas) in bad {
            let out = s.apply(Command::CreateSpace {
                name: "s".into(),
                primary,
                replicas,
                options: SpaceSettings::default(),
            });
            assert!(
                matches!(out, Outcome::Rejected(Rejection::Invalid(_))),
                "{out:?}"
            );
        }
        assert!(s.spaces.is_empty());
        let out = s.apply(Command::Batch(vec![create("a"), create("a"), create("b")]));
        let Outcome::Batch(outs) = out else {
            panic!("batch")
        };
        assert!(matches!(outs[0], Outcome::Space(_)));
        assert!(matches!(
            outs[1],
            Outcome::Rejected(Rejection::SpaceExists { .. })
        ));
        assert!(matches!(outs[2], Outcome::Space(_)));
    }

    #[test]
    fn a_node_name_keeps_its_raft_id() {
        let mut s = MetaState::default();
        s.apply(init());
        let reg = |id, storage: &str| Command::RegisterNode {
            name: "n".into(),
            raft_id: id,
            storage_id: storage.into(),
        };
        assert_eq!(s.apply(reg(7, "s1")), Outcome::Done);
        assert_eq!(s.apply(reg(7, "s2")), Outcome::Done);
        assert_eq!(s.nodes["n"].storage_id, "s2");
        assert!(matches!(
            s.apply(reg(8, "s3")),
            Outcome::Rejected(Rejection::RaftIdConflict { .. })
        ));
    }
}
