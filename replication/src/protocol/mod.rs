//! The replication protocol as pure state machines (no I/O): what the
//! network adapters and the simulator drive. Built up step by step; so far
//! the epoch histories that handshakes compare and the replica side of a
//! space.

pub mod history;
pub mod replica;

pub use history::{Catchup, EpochStart, History};
pub use replica::{
    Ack, BatchHeader, FenceAnswer, Incarnation, Persist, Refusal, ReplicaSpace, Session,
};
