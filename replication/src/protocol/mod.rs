//! The replication protocol as pure state machines (no I/O): what the
//! network adapters and the simulator drive. Built up step by step; so far
//! the epoch histories that handshakes compare, and the replica and
//! primary sides of a space.

pub mod history;
pub mod primary;
pub mod replica;
#[cfg(test)]
mod sim;

pub use history::{Catchup, EpochStart, History};
pub use primary::{
    BatchPlan, Concern, Deposed, HandshakePlan, Peer, PrimarySpace, Progress, Wait, Waiters,
};
pub use replica::{
    Ack, BatchHeader, FenceAnswer, Incarnation, Persist, Refusal, ReplicaSpace, Session,
};
