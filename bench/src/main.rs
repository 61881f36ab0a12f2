//! `wal-bench`: WAL append throughput and latency with fsync, next to the
//! disk's ceiling (a raw `pwrite + fdatasync` loop on the same directory),
//! RocksDB synchronous puts, and the full engine (WAL + apply), all measured
//! in the same run so the ratios mean something on a noisy machine.
//!
//! Usage: `wal-bench [--dir DIR] [--seconds S] [--record-bytes N] [--appenders 1,8,64]`
//! Prints a markdown table (for `docs/performance.md`) on stdout.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use engram_graph::{Engine, EngineConfig, OpenOptions as EngineOpen};
use engram_lsm::{Mutation, Operation, Store, StoreConfig};
use engram_wal::{RecordHeader, Wal, WalConfig, WalOptions};
use hdrhistogram::Histogram;

struct Args {
    dir: PathBuf,
    seconds: f64,
    record: usize,
    appenders: Vec<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        dir: std::env::temp_dir(),
        seconds: 3.0,
        record: 256,
        appenders: vec![1, 8, 64],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()?),
            "--seconds" => {
                args.seconds = value()?.parse().map_err(|e| format!("--seconds: {e}"))?
            }
            "--record-bytes" => {
                args.record = value()?
                    .parse()
                    .map_err(|e| format!("--record-bytes: {e}"))?
            }
            "--appenders" => {
                args.appenders = value()?
                    .split(',')
                    .map(|s| s.trim().parse().map_err(|e| format!("--appenders: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "-h" | "--help" => {
                println!(
                    "wal-bench [--dir DIR] [--seconds S] [--record-bytes N] [--appenders 1,8,64]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.seconds <= 0.0 || args.seconds > 600.0 {
        return Err("--seconds must be in (0, 600]".into());
    }
    if args.appenders.is_empty() || args.appenders.iter().any(|a| *a == 0 || *a > 1024) {
        return Err("--appenders takes 1..=1024 per entry".into());
    }
    Ok(args)
}

struct Outcome {
    ops: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Runs `op` from `threads` threads for `seconds`, timing each call in µs.
fn drive<F>(threads: usize, seconds: f64, op: F) -> Outcome
where
    F: Fn(usize, u64) + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let op = Arc::clone(&op);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut hist = new_hist();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    op(t, i);
                    let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                    i += 1;
                }
                hist
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_hist();
    for h in handles {
        let part = h.join().expect("bench thread");
        hist.add(&part).expect("merge histograms");
    }
    Outcome {
        ops: hist.len(),
        elapsed: start.elapsed(),
        hist,
    }
}

fn fresh(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("create bench dir");
    p
}

/// The disk's ceiling: one thread, `pwrite` of one record then `fdatasync`.
fn raw_fdatasync(dir: &Path, record: usize, seconds: f64, preallocate: bool) -> Outcome {
    let d = fresh(
        dir,
        if preallocate {
            "raw-prealloc"
        } else {
            "raw-append"
        },
    );
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(d.join("raw.log"))
        .expect("open raw file");
    let size: i64 = 1 << 30;
    if preallocate {
        // SAFETY: plain system call on a descriptor we own.
        unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, size) };
        file.sync_all().expect("sync");
    }
    let buf = vec![0xA5u8; record];
    let file = Arc::new(file);
    let out = drive(1, seconds, move |_, i| {
        let off = (i * buf.len() as u64) % size as u64;
        file.write_all_at(&buf, off).expect("pwrite");
        file.sync_data().expect("fdatasync");
    });
    let _ = std::fs::remove_dir_all(&d);
    out
}

fn wal_append(dir: &Path, record: usize, seconds: f64, threads: usize) -> Outcome {
    let d = fresh(dir, "wal");
    let (wal, _) = Wal::open(&d, WalConfig::default(), WalOptions::default()).expect("open WAL");
    let wal = Arc::new(wal);
    let payload = vec![0x5Au8; record.saturating_sub(engram_wal::frame::HEADER_LEN)];
    let w = Arc::clone(&wal);
    let out = drive(threads, seconds, move |t, i| {
        let h = RecordHeader {
            space: t as u32,
            seq: i,
            kind: 1,
        };
        w.append(h, &payload).expect("append").wait().expect("ack");
    });
    drop(wal);
    let _ = std::fs::remove_dir_all(&d);
    out
}

fn id(t: usize, i: u64) -> [u8; 16] {
    let mut id = [0; 16];
    id[..8].copy_from_slice(&(t as u64).to_be_bytes());
    id[8..].copy_from_slice(&i.to_be_bytes());
    id
}

fn rocksdb_sync_put(dir: &Path, record: usize, seconds: f64, threads: usize) -> Outcome {
    let d = fresh(dir, "rocksdb");
    let cfg = StoreConfig {
        sync_writes: true,
        ..StoreConfig::default()
    };
    let store = Arc::new(Store::open(&d, &cfg).expect("open RocksDB"));
    let value = vec![0x3Cu8; record];
    let s = Arc::clone(&store);
    let out = drive(threads, seconds, move |t, i| {
        let op = Operation {
            lsn: i,
            space: t as u32,
            seq: i,
            mutations: vec![Mutation::PutEpisode {
                id: id(t, i),
                record: value.clone(),
            }],
        };
        s.apply(&[op]).expect("sync put");
    });
    drop(store);
    let _ = std::fs::remove_dir_all(&d);
    out
}

fn engine_submit(dir: &Path, record: usize, seconds: f64, threads: usize) -> Outcome {
    let d = fresh(dir, "engine");
    let (engine, _) =
        Engine::open(&d, &EngineConfig::default(), EngineOpen::default()).expect("open engine");
    let engine = Arc::new(engine);
    let value = vec![0x3Cu8; record];
    let e = Arc::clone(&engine);
    let out = drive(threads, seconds, move |t, i| {
        let m = vec![Mutation::PutEpisode {
            id: id(t, i),
            record: value.clone(),
        }];
        e.submit(t as u32, 1, m).expect("submit");
    });
    drop(engine);
    let _ = std::fs::remove_dir_all(&d);
    out
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wal-bench: {e}");
            std::process::exit(2);
        }
    };
    let root = args
        .dir
        .join(format!("engram-wal-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("create bench root");
    let s = args.seconds;
    let r = args.record;
    eprintln!(
        "wal-bench: {} s per case, {r}-byte records, in {}",
        s,
        root.display()
    );

    let raw_pre = raw_fdatasync(&root, r, s, true);
    let raw_grow = raw_fdatasync(&root, r, s, false);
    let ceiling = raw_pre.rate();

    let mut rows: Vec<(String, usize, Outcome)> = vec![
        ("raw pwrite+fdatasync, preallocated".into(), 1, raw_pre),
        ("raw pwrite+fdatasync, growing file".into(), 1, raw_grow),
    ];
    let mut rocks_rate = std::collections::HashMap::new();
    for &a in &args.appenders {
        let o = rocksdb_sync_put(&root, r, s, a);
        rocks_rate.insert(a, o.rate());
        rows.push(("RocksDB put, sync=true".into(), a, o));
    }
    for &a in &args.appenders {
        rows.push((
            "engram-wal append (fsync before ack)".into(),
            a,
            wal_append(&root, r, s, a),
        ));
    }
    for &a in &args.appenders {
        rows.push((
            "engine submit (WAL + RocksDB apply)".into(),
            a,
            engine_submit(&root, r, s, a),
        ));
    }
    let _ = std::fs::remove_dir_all(&root);

    println!(
        "| case | appenders | ops/s | p50 µs | p99 µs | × raw fdatasync | × RocksDB sync put |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, a, o) in &rows {
        let vs_rocks = rocks_rate
            .get(a)
            .filter(|_| !name.starts_with("RocksDB") && !name.starts_with("raw"))
            .map_or("".to_string(), |rr| format!("{:.2}", o.rate() / rr));
        println!(
            "| {name} | {a} | {:.0} | {} | {} | {:.2} | {vs_rocks} |",
            o.rate(),
            o.hist.value_at_quantile(0.5),
            o.hist.value_at_quantile(0.99),
            o.rate() / ceiling,
        );
    }
}
