//! Every subcommand but `start`'s server loop.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use hyper::Method;
use serde_json::{Value, json};

use crate::client::{Client, Unreachable, default_url, encode};
use crate::config::{self, Config, ListenKey, Overrides, ServerOverrides};
use crate::lock::DirLock;
use crate::memories;
use crate::{Cli, Command, ConfigAction, SpaceAction, SpaceTarget, Target};

/// Exit code of `status` when the server cannot be reached.
const UNREACHABLE: u8 = 3;
/// `engram status`: ready, but some copy of a space lags beyond
/// `[replication] lag_alert_records` or `lag_alert_seconds`.
const LAGGING: u8 = 4;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let file = config::config_file(cli.config.as_deref())?;
    match cli.command {
        Command::Start(a) => {
            let overrides = Overrides {
                data_dir: a.data_dir,
                server: ServerOverrides {
                    bind: a.bind,
                    http_port: a.http_port,
                    grpc_port: a.grpc_port,
                },
            };
            let config = config::load(file.as_deref(), &overrides)?;
            crate::logging::init(config.log.format, &config.log.level)?;
            if let Some(f) = &file {
                tracing::info!(file = %f.display(), "configuration file loaded");
            }
            // A flag silently beating the environment or file moves the
            // server but not `engram status` (e.g. a container healthcheck).
            for warning in config::flag_conflicts(file.as_deref(), &overrides.server) {
                tracing::warn!("{warning}");
            }
            if a.repair {
                tracing::warn!("starting in WAL repair mode (--repair)");
            }
            if let Err(e) = crate::server::run(config, a.repair) {
                tracing::error!(error = %format!("{e:#}"), "engram failed");
                return Err(e);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Check { print },
        } => {
            let config = config::load(file.as_deref(), &Overrides::default())?;
            if print {
                print!("{}", config.to_toml()?);
            }
            match &file {
                Some(f) => eprintln!("configuration OK (file {})", f.display()),
                None => eprintln!("configuration OK (no config file; defaults and environment)"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("engram {}", engram_api::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { input, data_dir } => {
            let config = config::load(file.as_deref(), &Overrides::default())?;
            restore(&input, &data_dir, &config)?;
            Ok(ExitCode::SUCCESS)
        }
        other => {
            let config = config::load(file.as_deref(), &Overrides::default())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(remote(other, &config, file.as_deref()))
        }
    }
}

/// Where a remote command's server URL came from, for messages: `--url`,
/// `ENGRAM_URL`, or the layer that set `server.http_port` (and
/// `server.bind`, when not the default).
fn url_origin(target: &Target, file: Option<&Path>, config: &Config) -> String {
    if let Some(url) = &target.url {
        // clap fills `url` from ENGRAM_URL when the flag is absent.
        return match std::env::var("ENGRAM_URL") {
            Ok(v) if v == *url => format!("ENGRAM_URL={v}"),
            _ => "--url".to_owned(),
        };
    }
    let port = match config::origins(file, ListenKey::HttpPort)
        .into_iter()
        .next()
    {
        Some(o) => o.to_string(),
        None => format!(
            "the default server.http_port = {}: no --url, ENGRAM_URL, ENGRAM_HTTP_PORT, \
             ENGRAM_SERVER__HTTP_PORT or config file sets it",
            config.server.http_port
        ),
    };
    match config::origins(file, ListenKey::Bind).into_iter().next() {
        Some(o) => format!("{port}, and the address from {o}"),
        None => port,
    }
}

fn client(target: &Target, config: &Config, timeout: Duration) -> Result<Client> {
    let url = target.url.clone().unwrap_or_else(|| default_url(config));
    Client::new(&url, timeout)
}

fn space_query(t: &SpaceTarget) -> String {
    match &t.space {
        Some(s) => format!("?space={}", encode(s)),
        None => String::new(),
    }
}

async fn remote(command: Command, config: &Config, file: Option<&Path>) -> Result<ExitCode> {
    let timeout = Duration::from_secs(30);
    match command {
        Command::Status {
            json,
            ignore_lag,
            target,
        } => {
            let origin = url_origin(&target, file, config);
            status(
                &client(&target, config, Duration::from_secs(5))?,
                json,
                &origin,
                (!ignore_lag).then_some(&config.replication),
            )
            .await
        }
        Command::Remember(a) => {
            let c = client(&a.target.target, config, timeout)?;
            memories::remember(&c, a).await
        }
        Command::Recall(a) => {
            let c = client(&a.target.target, config, timeout)?;
            memories::recall(&c, a).await
        }
        Command::Get(a) => {
            let c = client(&a.target.target, config, timeout)?;
            memories::get(&c, a).await
        }
        Command::Search(a) => {
            let c = client(&a.target.target, config, timeout)?;
            memories::search(&c, a).await
        }
        Command::Link(a) => {
            let c = client(&a.target.target, config, timeout)?;
            memories::link(&c, a).await
        }
        Command::Forget { id, target } => {
            let c = client(&target.target, config, timeout)?;
            let path = format!("/api/v1/memories/{}{}", encode(&id), space_query(&target));
            c.call(Method::DELETE, &path, None).await?;
            eprintln!("forgot {id}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Space { action } => match action {
            SpaceAction::Create {
                name,
                embedding_dim,
                target,
            } => {
                let c = client(&target, config, timeout)?;
                let mut body = json!({"id": name});
                if let Some(d) = embedding_dim {
                    body["embedding_dim"] = json!(d);
                }
                c.call(Method::POST, "/api/v1/spaces", Some(&body)).await?;
                eprintln!("created space {name}");
                Ok(ExitCode::SUCCESS)
            }
            SpaceAction::List { json, target } => {
                let c = client(&target, config, timeout)?;
                let v = c.call(Method::GET, "/api/v1/spaces", None).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    println!("SPACE\tMEMORIES\tHOT\tWARM\tCOLD\tDIM");
                    for s in v["spaces"].as_array().into_iter().flatten() {
                        println!(
                            "{}\t{}\t{}\t{}\t{}\t{}",
                            s["id"].as_str().unwrap_or(""),
                            s["memories"],
                            s["tiers"]["hot"],
                            s["tiers"]["warm"],
                            s["tiers"]["cold"],
                            s.get("embedding_dim").map_or("-".into(), Value::to_string),
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            SpaceAction::Delete { name, target } => {
                let c = client(&target, config, timeout)?;
                c.call(
                    Method::DELETE,
                    &format!("/api/v1/spaces/{}", encode(&name)),
                    None,
                )
                .await?;
                eprintln!("deleted space {name}");
                Ok(ExitCode::SUCCESS)
            }
        },
        Command::Consolidate { threshold, target } => {
            let c = client(&target.target, config, timeout)?;
            let body = match threshold {
                Some(t) => json!({"threshold": t}),
                None => json!({}),
            };
            let path = format!("/api/v1/consolidate{}", space_query(&target));
            let v = c.call(Method::POST, &path, Some(&body)).await?;
            println!(
                "examined {} memories, created {} concepts from {} members (threshold {})",
                v["examined"], v["concepts"], v["members"], v["threshold"]
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Benchmark(args) => {
            crate::benchmark::run(args, config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { output, target } => {
            let c = client(&target, config, Duration::from_secs(3600))?;
            let dir = backup(&c, &output).await?;
            println!("{}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Start(_) | Command::Config { .. } | Command::Version | Command::Restore { .. } => {
            bail!("internal: local command routed to the server")
        }
    }
}

/// `engram status`: exit 0 only when the server answers and is ready.
/// `origin` says where the URL came from ([`url_origin`]); an unreachable
/// server's message names it, since the usual cause is a server started
/// with other flags than the configuration `status` reads.
async fn status(
    c: &Client,
    as_json: bool,
    origin: &str,
    alerts: Option<&crate::config::ReplicationSection>,
) -> Result<ExitCode> {
    let (code, v) = match c.json(Method::GET, "/api/v1/system/health", None).await {
        Ok(r) => r,
        Err(e) if e.downcast_ref::<Unreachable>().is_some() => {
            let hint = format!(
                "tried {} (from {origin}). Is the server running? If it is, it listens elsewhere: \
                 flags of `engram start` (e.g. a container's command `start --http-port 7432`) win \
                 over the environment and the config file, and `engram status` does not see them. \
                 The server's \"engram starting\" log line shows its address: pass it with --url, \
                 or set the port in one place only",
                c.base()
            );
            if as_json {
                println!(
                    "{}",
                    json!({
                        "url": c.base(),
                        "url_source": origin,
                        "reachable": false,
                        "ready": false,
                        "error": e.to_string(),
                        "hint": hint,
                    })
                );
            }
            eprintln!("engram status: {e}\n  {hint}");
            return Ok(ExitCode::from(UNREACHABLE));
        }
        Err(e) => return Err(e),
    };
    let ready = code.is_success() && v["ready"] == json!(true) && v["status"] == "healthy";
    // Membership and placement; an older server without the route (or a
    // failure) leaves the section null rather than failing the status.
    let cluster = match c.json(Method::GET, "/cluster/health", None).await {
        Ok((code, v)) if code.is_success() => v,
        _ => Value::Null,
    };
    let max_lag_records = cluster["max_lag_records"].as_u64().unwrap_or(0);
    let max_lag_seconds = cluster["max_lag_seconds"].as_f64().unwrap_or(0.0);
    let lagging = alerts.is_some_and(|a| {
        max_lag_records > a.lag_alert_records || max_lag_seconds > a.lag_alert_seconds as f64
    });
    if as_json {
        let mut out = v.clone();
        if let Some(o) = out.as_object_mut() {
            o.insert("url".into(), json!(c.base()));
            o.insert("reachable".into(), json!(true));
            o.insert(
                "replication".into(),
                cluster
                    .get("replication")
                    .cloned()
                    .unwrap_or_else(|| json!([])),
            );
            o.insert("max_lag_records".into(), json!(max_lag_records));
            o.insert("max_lag_seconds".into(), json!(max_lag_seconds));
            o.insert("lagging".into(), json!(lagging));
            o.insert("cluster".into(), cluster.clone());
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} {} at {} (version {}, up {}s)",
            if ready { "READY" } else { "NOT READY" },
            v["status"].as_str().unwrap_or("?"),
            c.base(),
            v["version"].as_str().unwrap_or("?"),
            v["uptime_seconds"]
        );
        for check in v["checks"].as_array().into_iter().flatten() {
            println!(
                "  check {:<9} {:<4} {}",
                check["name"].as_str().unwrap_or(""),
                check["status"].as_str().unwrap_or(""),
                check["message"].as_str().unwrap_or("")
            );
        }
        if v["wal"].is_object() {
            println!(
                "  wal       last LSN {}, {} fsyncs, mean {:.2} ms",
                v["wal"]["last_lsn"],
                v["wal"]["fsyncs"],
                v["wal"]["fsync_mean_ms"].as_f64().unwrap_or(0.0)
            );
        }
        if cluster["enabled"] == json!(true) {
            println!(
                "  cluster   {} as {}",
                cluster["status"].as_str().unwrap_or("?"),
                cluster["node"]["node_id"].as_str().unwrap_or("?")
            );
            for m in cluster["members"].as_array().into_iter().flatten() {
                println!(
                    "  member {:<20} {:<7} {}",
                    m["node_id"].as_str().unwrap_or(""),
                    m["state"].as_str().unwrap_or(""),
                    m["gossip_addr"].as_str().unwrap_or("")
                );
            }
            let meta = &cluster["metadata"];
            if meta.is_object() {
                println!(
                    "  metadata  leader {}, {} voters, this node {}, term {}, applied {}",
                    meta["leader"].as_str().unwrap_or("none known"),
                    meta["voters"].as_array().map_or(0, Vec::len),
                    meta["role"].as_str().unwrap_or("?"),
                    meta["term"],
                    meta["applied_index"]
                );
            }
            for r in cluster["replication"].as_array().into_iter().flatten() {
                println!(
                    "  replica {:<18} {:<16} {:<8} {:<11} epoch {} seq {}/{} lag {} records, {:.1} s{}",
                    r["space"].as_str().unwrap_or(""),
                    r["replica"].as_str().unwrap_or(""),
                    r["role"].as_str().unwrap_or(""),
                    r["state"].as_str().unwrap_or(""),
                    r["epoch"],
                    r["replica_seq"],
                    r["primary_seq"],
                    r["lag_records"],
                    r["lag_seconds"].as_f64().unwrap_or(0.0),
                    r["detail"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                );
            }
            if let Some(a) = alerts.filter(|_| lagging) {
                println!(
                    "  LAGGING   a copy lacks {max_lag_records} records / {max_lag_seconds:.1} s (alert above {} records or {} s: [replication] lag_alert_records, lag_alert_seconds)",
                    a.lag_alert_records, a.lag_alert_seconds
                );
            }
        }
        for s in v["spaces"].as_array().into_iter().flatten() {
            println!(
                "  space {:<20} {} memories (hot {}, warm {}, cold {})",
                s["id"].as_str().unwrap_or(""),
                s["memories"],
                s["tiers"]["hot"],
                s["tiers"]["warm"],
                s["tiers"]["cold"]
            );
        }
    }
    Ok(if !ready {
        ExitCode::FAILURE
    } else if lagging {
        ExitCode::from(LAGGING)
    } else {
        ExitCode::SUCCESS
    })
}

/// Streams the server's backup archive into `<output>/engram-backup-<time>/`.
async fn backup(c: &Client, output: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(output)
        .with_context(|| format!("creating backup directory {}", output.display()))?;
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "");
    let dir = output.join(format!("engram-backup-{stamp}"));
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let partial = output.join(format!(".engram-backup-{stamp}.tar.partial"));
    let resp = c.send(Method::POST, "/api/v1/system/backup", None).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        bail!(
            "server answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    // The partial archive goes on every path, also when the stream breaks.
    let streamed = stream_to(resp.into_body(), &partial).await;
    let bytes = match streamed {
        Ok(b) => b,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let staging = output.join(format!(".engram-backup-{stamp}.partial"));
    let unpacked = (|| -> Result<()> {
        let f = std::fs::File::open(&partial)?;
        tar::Archive::new(f)
            .unpack(&staging)
            .context("unpacking the backup archive")?;
        check_manifest(&staging)?;
        sync_tree(&staging)?;
        std::fs::rename(&staging, &dir)?;
        sync_dir(output)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&partial);
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    eprintln!("backup of {bytes} bytes written to {}", dir.display());
    Ok(dir)
}

/// A backup stream that sends nothing for this long is abandoned.
const BACKUP_IDLE: Duration = Duration::from_secs(120);

/// Writes a response body to `path`, fsynced; returns its size.
async fn stream_to(mut body: hyper::body::Incoming, path: &Path) -> Result<u64> {
    let mut file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut bytes = 0u64;
    loop {
        let frame = tokio::time::timeout(BACKUP_IDLE, body.frame())
            .await
            .map_err(|_| anyhow::anyhow!("backup stream stalled for {BACKUP_IDLE:?}"))?;
        let Some(frame) = frame else { break };
        let frame = frame.context("backup stream broke off")?;
        if let Some(data) = frame.data_ref() {
            file.write_all(data)
                .with_context(|| format!("writing {}", path.display()))?;
            bytes += data.len() as u64;
        }
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok(bytes)
}

/// Reads and checks a backup's manifest.
fn check_manifest(dir: &Path) -> Result<Value> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is not an engram backup (no manifest.json)",
            dir.display()
        )
    })?;
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    if v["format"] != json!(1) {
        bail!(
            "{}: unsupported backup format {} (this engram reads format 1)",
            path.display(),
            v["format"]
        );
    }
    if !dir.join("db").is_dir() {
        bail!("{} has no db/ directory", dir.display());
    }
    Ok(v)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// fsyncs every file and directory under `root`.
fn sync_tree(root: &Path) -> Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("syncing {}", path.display()))?;
        }
    }
    sync_dir(root)
}

/// `engram restore`: copies a backup into an empty data directory, then
/// opens it once to prove it recovers.
fn restore(input: &Path, data_dir: &Path, config: &Config) -> Result<()> {
    let manifest = check_manifest(input)?;
    let lock = DirLock::acquire(data_dir)?;
    for entry in std::fs::read_dir(data_dir)? {
        let name = entry?.file_name();
        // A fresh ext4 volume's root holds lost+found; it is not data.
        if name != crate::lock::LOCK_FILE && name != "lost+found" {
            bail!(
                "data directory {} is not empty (found {:?}); restore only into an empty directory",
                data_dir.display(),
                name
            );
        }
    }
    let db = data_dir.join("db");
    std::fs::create_dir(&db)?;
    for entry in std::fs::read_dir(input.join("db"))? {
        let entry = entry?;
        if !entry.file_type()?.is_file() {
            bail!(
                "unexpected entry {:?} in the backup's db/",
                entry.file_name()
            );
        }
        std::fs::copy(entry.path(), db.join(entry.file_name()))
            .with_context(|| format!("copying {}", entry.path().display()))?;
    }
    sync_tree(&db)?;
    std::fs::create_dir(data_dir.join("wal"))?;
    sync_dir(data_dir)?;
    let (graph, report) = engram_graph::Graph::open(
        data_dir,
        config.graph_config()?,
        engram_graph::OpenOptions::default(),
    )
    .context("the restored data directory does not open")?;
    // The backup's Raft vote, log and storage id belong to another time: a
    // node that resumed them could vote twice in a term or acknowledge
    // entries it no longer holds. Restored, it is a new member: alone (or
    // with new peers) it forms a new metadata group; a voter of a running
    // group refuses to start, as after a lost disk.
    graph
        .engine()
        .store()
        .raft_clear()
        .context("clearing the backup's metadata-group state")?;
    let spaces = graph.spaces()?;
    let memories: usize = spaces.iter().map(|s| s.memories).sum();
    drop(graph);
    drop(lock);
    eprintln!(
        "restored {} (backup of {}, applied LSN {}) into {}: {} spaces, {} memories; its metadata-group state was cleared (in a cluster it starts as a new member)",
        input.display(),
        manifest["created_at"].as_str().unwrap_or("?"),
        report.applied_after,
        data_dir.display(),
        spaces.len(),
        memories
    );
    Ok(())
}
