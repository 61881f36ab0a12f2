//! The replication protocol as pure state machines (no I/O): what the
//! network adapters and the simulator drive. Built up step by step; so far
//! the epoch histories that handshakes compare.

pub mod history;

pub use history::{Catchup, EpochStart, History};
