//! `engram benchmark`: load against an in-process engine (embedded, on a
//! temporary data directory) or a running server over HTTP or gRPC, with an
//! HDR histogram of latencies and a JSON report (schema in
//! docs/performance.md).
//!
//! Closed loop by default: `--concurrent` workers each issue their next
//! operation when the previous one answers. With `--rate`, the load is open
//! loop: operations are scheduled at fixed intervals and each latency is
//! measured from its scheduled start, so a stall is charged to every
//! operation that waited behind it (no coordinated omission).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use engram_api::grpc::pb;
use engram_graph::{Cue, Graph, OpenOptions, RememberRequest, SpaceOptions, Spread};
use hdrhistogram::Histogram;
use hyper::Method;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::client::Client;
use crate::config::Config;

/// What each operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Store a new memory (with an embedding when `--embedding-dim` > 0).
    Remember,
    /// Lexical recall, no spreading.
    RecallLexical,
    /// Vector recall (needs `--embedding-dim`).
    RecallVector,
    /// Text and vector cue with spreading activation.
    RecallHybrid,
    /// Remember or lexical recall with spreading, by `--read-ratio`.
    Mixed,
    /// Forget preloaded memories (each once).
    Forget,
    /// Like mixed, but each worker's writes alternate between remembering a
    /// new memory and forgetting the oldest one, so the space keeps its
    /// `--dataset-size` (for soak runs: growth cannot pass for a leak).
    /// With `--embedding-dim` the reads are hybrid (text and vector).
    Churn,
}

/// `engram benchmark` flags.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workload.
    #[arg(long, value_enum, default_value = "mixed")]
    workload: Workload,
    /// Stop after this many operations (all workers together).
    #[arg(long, default_value_t = 10_000)]
    operations: u64,
    /// Concurrent workers (connections for HTTP and gRPC).
    #[arg(long, default_value_t = 8)]
    concurrent: usize,
    /// Stop after this long (whichever comes first), e.g. 30s, 2m.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    duration: Duration,
    /// Server URL for HTTP mode (default: the local server from the configuration).
    #[arg(long, conflicts_with = "embedded")]
    url: Option<String>,
    /// Use gRPC instead of HTTP; the address is --url's host with --grpc-port.
    #[arg(long, conflicts_with = "embedded")]
    grpc: bool,
    /// gRPC port for --grpc (default: server.grpc_port from the configuration).
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Run the engine in this process on a temporary data directory.
    #[arg(long)]
    embedded: bool,
    /// Embedding dimension (0: text only).
    #[arg(long, default_value_t = 0)]
    embedding_dim: u32,
    /// Memories stored before the measured run.
    #[arg(long, default_value_t = 1000)]
    dataset_size: u64,
    /// Fraction of reads in the mixed and churn workloads.
    #[arg(long, default_value_t = 0.8)]
    read_ratio: f64,
    /// Open loop: operations per second in total (0: closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Space to use (created if missing; default a fresh `bench-<time>`).
    #[arg(long)]
    space: Option<String>,
    /// Write the JSON report here (default: standard output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Random seed for texts and vectors.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write concern of every write in a cluster (`primary`, `quorum` or
    /// `all`; default: the server's `[replication] default_write_concern`).
    #[arg(long, conflicts_with = "embedded")]
    write_concern: Option<String>,
}

/// Where operations go.
enum Target {
    /// The engine, and its data directory (removed when the run ends).
    Embedded {
        graph: Arc<Graph>,
        _dir: tempfile::TempDir,
    },
    /// With the write concern ("" = the server's default).
    Http(Client, String),
    Grpc(
        pb::memory_service_client::MemoryServiceClient<tonic::transport::Channel>,
        String,
    ),
}

const WORDS: &[&str] = &[
    "alpha", "river", "stone", "cloud", "engine", "garden", "signal", "market", "winter", "copper",
    "forest", "harbor", "letter", "orbit", "pepper", "silver", "thunder", "violet", "canyon",
    "meadow", "rocket", "saddle", "tunnel", "velvet", "anchor", "bridge", "candle", "desert",
    "falcon", "glacier", "island", "jungle", "lantern", "mirror", "nectar", "oyster", "piano",
    "quartz", "ribbon", "shadow", "timber", "umbrella", "valley", "walnut", "yogurt", "zephyr",
    "beacon", "cactus", "dolphin", "ember",
];

fn text(rng: &mut SmallRng, words: usize) -> String {
    (0..words)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

fn vector(rng: &mut SmallRng, dim: u32) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

/// One operation's inputs.
enum Op {
    Remember(String, Option<Vec<f32>>),
    Recall(Option<String>, Option<Vec<f32>>, u32),
    Forget(String),
}

impl Target {
    async fn run(&self, space: &str, op: Op) -> Result<Option<String>> {
        match self {
            Target::Embedded { graph: g, .. } => {
                let g = Arc::clone(g);
                let space = space.to_owned();
                tokio::task::spawn_blocking(move || -> Result<Option<String>> {
                    match op {
                        Op::Remember(content, embedding) => {
                            let r = g.remember(
                                &space,
                                RememberRequest {
                                    content,
                                    embedding,
                                    ..RememberRequest::default()
                                },
                            )?;
                            Ok(Some(r.id))
                        }
                        Op::Recall(text, embedding, depth) => {
                            let cue = Cue {
                                text,
                                embedding,
                                ..Cue::default()
                            };
                            let spread = Spread {
                                depth,
                                ..Spread::default()
                            };
                            g.recall(&space, &cue, 10, &spread)?;
                            Ok(None)
                        }
                        Op::Forget(id) => {
                            g.forget(&space, &id)?;
                            Ok(None)
                        }
                    }
                })
                .await?
            }
            Target::Http(c, concern) => {
                let mut q = format!("?space={}", crate::client::encode(space));
                if !concern.is_empty() && !matches!(op, Op::Recall(..)) {
                    q.push_str("&write_concern=");
                    q.push_str(concern);
                }
                match op {
                    Op::Remember(content, embedding) => {
                        let mut body = json!({"content": content});
                        if let Some(e) = embedding {
                            body["embedding"] = json!(e);
                        }
                        let v = c
                            .call(
                                Method::POST,
                                &format!("/api/v1/memories/remember{q}"),
                                Some(&body),
                            )
                            .await?;
                        Ok(v["id"].as_str().map(str::to_owned))
                    }
                    Op::Recall(text, embedding, depth) => {
                        let mut cue = json!({});
                        if let Some(t) = text {
                            cue["text"] = json!(t);
                        }
                        if let Some(e) = embedding {
                            cue["embedding"] = json!(e);
                        }
                        let body = json!({"cue": cue, "limit": 10, "spread": {"depth": depth}});
                        c.call(
                            Method::POST,
                            &format!("/api/v1/memories/recall{q}"),
                            Some(&body),
                        )
                        .await?;
                        Ok(None)
                    }
                    Op::Forget(id) => {
                        c.call(Method::DELETE, &format!("/api/v1/memories/{id}{q}"), None)
                            .await?;
                        Ok(None)
                    }
                }
            }
            Target::Grpc(c, concern) => {
                let mut c = c.clone();
                match op {
                    Op::Remember(content, embedding) => {
                        let r = c
                            .remember(pb::RememberRequest {
                                space: space.to_owned(),
                                content,
                                embedding: embedding.unwrap_or_default(),
                                write_concern: concern.clone(),
                                ..Default::default()
                            })
                            .await?;
                        Ok(Some(r.into_inner().id))
                    }
                    Op::Recall(text, embedding, depth) => {
                        c.recall(pb::RecallRequest {
                            space: space.to_owned(),
                            cue: Some(pb::Cue {
                                text,
                                embedding: embedding.unwrap_or_default(),
                                ..Default::default()
                            }),
                            limit: 10,
                            spread: Some(pb::Spread {
                                depth: Some(depth),
                                ..Default::default()
                            }),
                        })
                        .await?;
                        Ok(None)
                    }
                    Op::Forget(id) => {
                        c.forget(pb::ForgetRequest {
                            space: space.to_owned(),
                            id,
                            write_concern: concern.clone(),
                        })
                        .await?;
                        Ok(None)
                    }
                }
            }
        }
    }

    async fn create_space(&self, space: &str, dim: u32) -> Result<()> {
        let dim = (dim > 0).then_some(dim);
        match self {
            Target::Embedded { graph: g, .. } => {
                if g.space_stats(space).is_err() {
                    g.create_space_with(
                        space,
                        SpaceOptions {
                            embedding_dim: dim,
                            hot_capacity: None,
                        },
                    )?;
                }
            }
            Target::Http(c, _) => {
                let path = format!("/api/v1/spaces/{}", crate::client::encode(space));
                let (status, _) = c.json(Method::GET, &path, None).await?;
                if status.as_u16() == 404 {
                    let mut body = json!({"id": space});
                    if let Some(d) = dim {
                        body["embedding_dim"] = json!(d);
                    }
                    c.call(Method::POST, "/api/v1/spaces", Some(&body)).await?;
                }
            }
            Target::Grpc(c, _) => {
                let mut c = c.clone();
                let spaces = c.list_spaces(pb::ListSpacesRequest {}).await?.into_inner();
                if !spaces.spaces.iter().any(|s| s.id == space) {
                    c.create_space(pb::CreateSpaceRequest {
                        id: space.to_owned(),
                        embedding_dim: dim,
                        hot_capacity: None,
                        write_concern: String::new(),
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// The server's RSS (bytes) and CPU seconds, when they can be read.
    async fn resources(&self) -> Option<(u64, f64)> {
        match self {
            Target::Embedded { .. } => {
                let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
                let fields: Vec<&str> = stat.rsplit(") ").next()?.split(' ').collect();
                // utime, stime in clock ticks (fields 14, 15 → index 11, 12 after the comm).
                let ticks =
                    fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
                // SAFETY: sysconf has no preconditions.
                let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
                let status = std::fs::read_to_string("/proc/self/status").ok()?;
                let rss_kb: u64 = status
                    .lines()
                    .find(|l| l.starts_with("VmRSS:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((rss_kb * 1024, ticks / hz.max(1.0)))
            }
            Target::Http(c, _) => metrics_resources(c).await,
            Target::Grpc(..) => None,
        }
    }
}

/// RSS and CPU from a server's `/metrics`.
async fn metrics_resources(c: &Client) -> Option<(u64, f64)> {
    let resp = c.send(Method::GET, "/metrics", None).await.ok()?;
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    let value = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((
        value("process_resident_memory_bytes")? as u64,
        value("process_cpu_seconds_total")?,
    ))
}

fn quantiles(h: &Histogram<u64>) -> Value {
    json!({
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// Runs the benchmark; prints a summary on stderr and the JSON report.
pub async fn run(a: BenchArgs, config: &Config) -> Result<()> {
    if a.concurrent == 0 || a.operations == 0 {
        bail!("--concurrent and --operations must be at least 1");
    }
    if !(a.rate == 0.0 || (a.rate.is_finite() && (0.001..=10_000_000.0).contains(&a.rate))) {
        bail!("--rate must be 0 (closed loop) or within 0.001..=10000000 operations per second");
    }
    if a.dataset_size > 100_000_000 || a.operations > 1_000_000_000_000 {
        bail!("--dataset-size is limited to 100000000 and --operations to 10^12");
    }
    if !(0.0..=1.0).contains(&a.read_ratio) {
        bail!("--read-ratio must be within [0, 1]");
    }
    let concern = match a.write_concern.as_deref() {
        None => String::new(),
        Some(c) if engram_api::replicated::parse_concern(c).is_some() => c.to_owned(),
        Some(c) => bail!("--write-concern {c:?} is not one of primary, quorum, all"),
    };
    let needs_vectors = matches!(a.workload, Workload::RecallVector | Workload::RecallHybrid);
    if needs_vectors && a.embedding_dim == 0 {
        bail!("--workload {:?} needs --embedding-dim", a.workload);
    }
    let (target, mode) = if a.embedded {
        let dir = tempfile::tempdir().context("temporary data directory")?;
        let graph_config = config.graph_config()?;
        let path = dir.path().to_path_buf();
        let (g, _) = tokio::task::spawn_blocking(move || {
            Graph::open(&path, graph_config, OpenOptions::default())
        })
        .await??;
        (
            Target::Embedded {
                graph: Arc::new(g),
                _dir: dir,
            },
            "embedded".to_owned(),
        )
    } else {
        let url = a
            .url
            .clone()
            .unwrap_or_else(|| crate::client::default_url(config));
        if a.grpc {
            let host = url
                .trim_start_matches("http://")
                .split(':')
                .next()
                .unwrap_or("127.0.0.1")
                .to_owned();
            let port = a.grpc_port.unwrap_or(config.server.grpc_port);
            let endpoint = format!("http://{host}:{port}");
            let c = pb::memory_service_client::MemoryServiceClient::connect(endpoint.clone())
                .await
                .with_context(|| format!("connecting to {endpoint}"))?;
            (Target::Grpc(c, concern), format!("grpc {endpoint}"))
        } else {
            (
                Target::Http(Client::new(&url, Duration::from_secs(30))?, concern),
                format!("http {url}"),
            )
        }
    };
    let space = a.space.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("bench-{ms}")
    });
    target.create_space(&space, a.embedding_dim).await?;

    // Preload.
    let dim = a.embedding_dim;
    let preload_started = Instant::now();
    let ids = Arc::new(Mutex::new(VecDeque::with_capacity(a.dataset_size as usize)));
    {
        let next = Arc::new(AtomicU64::new(0));
        let target = Arc::new(target);
        let mut tasks = Vec::new();
        for w in 0..a.concurrent.min(16) {
            let (target, next, ids, space) = (
                Arc::clone(&target),
                Arc::clone(&next),
                Arc::clone(&ids),
                space.clone(),
            );
            let mut rng = SmallRng::seed_from_u64(a.seed ^ (w as u64 + 1));
            let n = a.dataset_size;
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let e = (dim > 0).then(|| vector(&mut rng, dim));
                    let words = rng.random_range(6..20);
                    let id = target
                        .run(&space, Op::Remember(text(&mut rng, words), e))
                        .await?;
                    if let Some(id) = id {
                        ids.lock().await.push_back(id);
                    }
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        let target = Arc::try_unwrap(target)
            .map_err(|_| anyhow::anyhow!("internal: preload workers still running"))?;
        measure(a, target, mode, space, ids, preload_started.elapsed()).await
    }
}

async fn measure(
    a: BenchArgs,
    target: Target,
    mode: String,
    space: String,
    ids: Arc<Mutex<VecDeque<String>>>,
    preload: Duration,
) -> Result<()> {
    if a.workload == Workload::Forget && (ids.lock().await.len() as u64) < a.operations {
        bail!("--workload forget needs --dataset-size >= --operations");
    }
    eprintln!(
        "engram benchmark: {:?} via {mode}, {} workers, dataset {} in {:.1} s",
        a.workload,
        a.concurrent,
        a.dataset_size,
        preload.as_secs_f64()
    );
    let target = Arc::new(target);
    let before = target.resources().await;
    let issued = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let deadline = started + a.duration;
    let interval = (a.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / a.rate));
    let forget_cursor = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..a.concurrent {
        let (target, issued, errors, first_error, ids, space, cursor) = (
            Arc::clone(&target),
            Arc::clone(&issued),
            Arc::clone(&errors),
            Arc::clone(&first_error),
            Arc::clone(&ids),
            space.clone(),
            Arc::clone(&forget_cursor),
        );
        let (workload, dim, read_ratio, ops) =
            (a.workload, a.embedding_dim, a.read_ratio, a.operations);
        let mut rng = SmallRng::seed_from_u64(a.seed.wrapping_mul(31) ^ (w as u64 + 101));
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            // Churn: this worker's next write forgets (it remembered last).
            let mut forget_next = false;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= ops || Instant::now() >= deadline {
                    break;
                }
                // Open loop: operation n is due at start + n × interval.
                let due = match interval {
                    Some(i) => {
                        let due = started + i.mul_f64(n as f64);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let op = match workload {
                    Workload::Remember => {
                        let words = rng.random_range(6..20);
                        Op::Remember(
                            text(&mut rng, words),
                            (dim > 0).then(|| vector(&mut rng, dim)),
                        )
                    }
                    Workload::RecallLexical => Op::Recall(Some(text(&mut rng, 2)), None, 0),
                    Workload::RecallVector => Op::Recall(None, Some(vector(&mut rng, dim)), 0),
                    Workload::RecallHybrid => {
                        Op::Recall(Some(text(&mut rng, 2)), Some(vector(&mut rng, dim)), 2)
                    }
                    Workload::Mixed => {
                        if rng.random_bool(read_ratio) {
                            Op::Recall(Some(text(&mut rng, 2)), None, 2)
                        } else {
                            let words = rng.random_range(6..20);
                            Op::Remember(
                                text(&mut rng, words),
                                (dim > 0).then(|| vector(&mut rng, dim)),
                            )
                        }
                    }
                    Workload::Churn => {
                        if rng.random_bool(read_ratio) {
                            // Hybrid when the memories have embeddings, so
                            // the vector index churns and is read too.
                            let v = (dim > 0).then(|| vector(&mut rng, dim));
                            Op::Recall(Some(text(&mut rng, 2)), v, 2)
                        } else {
                            let oldest = if forget_next {
                                ids.lock().await.pop_front()
                            } else {
                                None
                            };
                            forget_next = !forget_next;
                            match oldest {
                                Some(id) => Op::Forget(id),
                                None => {
                                    let words = rng.random_range(6..20);
                                    Op::Remember(
                                        text(&mut rng, words),
                                        (dim > 0).then(|| vector(&mut rng, dim)),
                                    )
                                }
                            }
                        }
                    }
                    Workload::Forget => {
                        let i = cursor.fetch_add(1, Ordering::Relaxed);
                        match ids.lock().await.get(i).cloned() {
                            Some(id) => Op::Forget(id),
                            None => break,
                        }
                    }
                };
                let r = target.run(&space, op).await;
                let us = due.elapsed().as_micros().clamp(1, 600_000_000) as u64;
                let _ = h.record(us);
                if workload == Workload::Churn {
                    if let Ok(Some(id)) = &r {
                        ids.lock().await.push_back(id.clone());
                    }
                }
                if let Err(e) = r {
                    errors.fetch_add(1, Ordering::Relaxed);
                    let mut f = first_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if f.is_none() {
                        *f = Some(format!("{e:#}"));
                    }
                }
            }
            h
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    for t in tasks {
        let h = t.await?;
        total.add(&h).context("merging histograms")?;
    }
    let elapsed = started.elapsed();
    let after = target.resources().await;
    let done = total.len();
    let ops_per_sec = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let errors = errors.load(Ordering::Relaxed);
    let server = match (before, after) {
        (Some((_, cpu0)), Some((rss, cpu1))) => json!({
            "rss_bytes": rss,
            "cpu_seconds": ((cpu1 - cpu0) * 1000.0).round() / 1000.0,
            "cpu_percent": (((cpu1 - cpu0) / elapsed.as_secs_f64().max(1e-9)) * 1000.0).round() / 10.0,
        }),
        _ => Value::Null,
    };
    let report = json!({
        "schema": 1,
        "engram_version": engram_api::VERSION,
        "workload": a
            .workload
            .to_possible_value()
            .map_or_else(|| format!("{:?}", a.workload), |v| v.get_name().to_owned()),
        "mode": mode,
        "write_concern": a.write_concern,
        "open_loop_rate": (a.rate > 0.0).then_some(a.rate),
        "concurrency": a.concurrent,
        "dataset_size": a.dataset_size,
        "embedding_dim": a.embedding_dim,
        "read_ratio": matches!(a.workload, Workload::Mixed | Workload::Churn).then_some(a.read_ratio),
        "operations": done,
        "errors": errors,
        "first_error": first_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        "duration_seconds": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        "ops_per_sec": (ops_per_sec * 10.0).round() / 10.0,
        "latency_us": quantiles(&total),
        "server": server,
    });
    eprintln!(
        "  {} ops in {:.2} s = {:.0} ops/s, errors {}; latency µs p50 {} p90 {} p99 {} p999 {} max {}",
        done,
        elapsed.as_secs_f64(),
        ops_per_sec,
        errors,
        total.value_at_quantile(0.5),
        total.value_at_quantile(0.9),
        total.value_at_quantile(0.99),
        total.value_at_quantile(0.999),
        total.max()
    );
    let text = serde_json::to_string_pretty(&report)?;
    match &a.output {
        Some(p) => {
            std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?
        }
        None => println!("{text}"),
    }
    if errors > 0 {
        bail!(
            "{errors} operations failed (first: {})",
            report["first_error"]
        );
    }
    Ok(())
}
