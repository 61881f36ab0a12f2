//! Helpers shared by the WAL integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use engram_wal::{
    Durability, OpenReport, Record, RecordHeader, Wal, WalConfig, WalError, WalOptions, frame,
};

pub const MAX_PAYLOAD: u32 = 1024;

pub fn config(segment_size: u64, durability: Durability) -> WalConfig {
    WalConfig {
        segment_size,
        max_payload: MAX_PAYLOAD,
        durability,
        preallocate: true,
        ..WalConfig::default()
    }
}

pub fn open(dir: &Path, cfg: &WalConfig) -> Result<(Wal, OpenReport), WalError> {
    Wal::open(dir, cfg.clone(), WalOptions::default())
}

pub fn open_repair(dir: &Path, cfg: &WalConfig) -> Result<(Wal, OpenReport), WalError> {
    Wal::open(
        dir,
        cfg.clone(),
        WalOptions {
            repair: true,
            ..WalOptions::default()
        },
    )
}

/// Opens as an owner that has applied every record up to `applied`
/// (`lsn_floor` is one more), optionally in repair mode.
pub fn open_applied(
    dir: &Path,
    cfg: &WalConfig,
    applied: u64,
    repair: bool,
) -> Result<(Wal, OpenReport), WalError> {
    Wal::open(
        dir,
        cfg.clone(),
        WalOptions {
            repair,
            lsn_floor: applied + 1,
            ..WalOptions::default()
        },
    )
}

/// Value of a counter in `registry`, or `None` if it is not registered.
pub fn counter(registry: &prometheus::Registry, name: &str) -> Option<f64> {
    registry
        .gather()
        .iter()
        .find(|m| m.name() == name)
        .map(|m| m.get_metric()[0].get_counter().get_value())
}

/// One record as the tests generate them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

pub fn input(i: u64, len: usize) -> Input {
    Input {
        header: RecordHeader {
            space: (i % 5) as u32,
            seq: i,
            kind: (i % 7) as u8,
        },
        payload: (0..len).map(|j| (i as usize * 31 + j) as u8).collect(),
    }
}

/// Appends all inputs concurrently-queued, waits for all, returns their LSNs.
pub fn append_all(wal: &Wal, inputs: &[Input]) -> Vec<u64> {
    let tickets: Vec<_> = inputs
        .iter()
        .map(|r| wal.append(r.header, &r.payload).expect("append accepted"))
        .collect();
    tickets
        .into_iter()
        .map(|t| t.wait().expect("append acknowledged"))
        .collect()
}

pub fn replay_all(wal: &Wal, from: u64) -> Vec<Record> {
    wal.replay(from)
        .expect("replay")
        .collect::<Result<Vec<_>, _>>()
        .expect("replay records")
}

pub fn same(records: &[Record], inputs: &[Input]) -> bool {
    records.len() == inputs.len()
        && records
            .iter()
            .zip(inputs)
            .all(|(r, i)| r.header == i.header && r.payload == i.payload)
}

/// Segment files of a log directory in LSN order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

/// Where each record sits: (segment, offset, encoded length), in LSN order.
pub fn frame_positions(dir: &Path) -> Vec<(PathBuf, usize, usize)> {
    let mut out = Vec::new();
    for seg in segments(dir) {
        let data = fs::read(&seg).expect("read segment");
        let mut pos = 0;
        while let Ok(f) = frame::decode(&data[pos..], MAX_PAYLOAD) {
            out.push((seg.clone(), pos, f.encoded_len()));
            pos += f.encoded_len();
        }
    }
    out
}
