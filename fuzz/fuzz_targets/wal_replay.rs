//! Opening and replaying a log made of arbitrary segment files never panics,
//! in normal and repair mode, and replay only yields a dense LSN sequence.
//!
//! Input: up to three segments, each `[u64 LE first LSN][u16 LE length][bytes]`.
#![no_main]

use std::sync::OnceLock;

use engram_wal::{Durability, Wal, WalConfig, WalOptions};
use libfuzzer_sys::fuzz_target;

fn root() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("tempdir"))
        .path()
}

fn segments(mut data: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while out.len() < 3 && data.len() >= 10 {
        let lsn = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) % 64;
        let len = u16::from_le_bytes([data[8], data[9]]) as usize;
        data = &data[10..];
        let take = len.min(data.len());
        out.push((lsn, data[..take].to_vec()));
        data = &data[take..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let dir = root().join("wal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (lsn, bytes) in segments(data) {
        std::fs::write(dir.join(format!("{lsn:020}.wal")), bytes).expect("write segment");
    }
    let config = WalConfig {
        segment_size: 4096,
        max_payload: 1024,
        durability: Durability::None,
        preallocate: false,
        corrupt_retention_hours: 0,
    };
    for repair in [false, true] {
        let options = WalOptions {
            repair,
            ..WalOptions::default()
        };
        if let Ok((wal, report)) = Wal::open(&dir, config.clone(), options) {
            let mut expected = report.first_lsn;
            if let Ok(records) = wal.replay(1) {
                for r in records {
                    let Ok(r) = r else { break };
                    if let Some(e) = expected {
                        assert_eq!(r.lsn, e, "replay skipped or repeated an LSN");
                    }
                    expected = Some(r.lsn + 1);
                }
            }
        }
    }
});
