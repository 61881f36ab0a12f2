//! Black-box process tests: startup errors, status exit codes, config
//! checks, SIGTERM under load, kill -9, the CLI, backup and restore, and
//! the README quickstart, all against the real `engram` binary.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, run_cli, try_request};
use serde_json::json;

/// Writers that remember continuously and record every acknowledged id.
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, writers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..writers)
            .map(|w| {
                let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 20_000 {
                        i += 1;
                        let body = json!({"content": format!("writer {w} memory {i} about durable storage")});
                        match try_request(
                            addr,
                            "POST",
                            "/api/v1/memories/remember",
                            &[("content-type", "application/json")],
                            body.to_string().as_bytes(),
                        ) {
                            Ok(r) if r.status == 201 => {
                                let id = r.json()["id"].as_str().unwrap_or_default().to_owned();
                                acked.lock().expect("acked").push(id);
                            }
                            // Refused, reset or 503 while stopping: not acknowledged.
                            _ => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            acked,
            threads,
        }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        Arc::try_unwrap(self.acked)
            .map(|m| m.into_inner().expect("acked"))
            .unwrap_or_default()
    }
}

fn wait_for_acks(load: &Load, n: usize) {
    let start = Instant::now();
    while load.acked.lock().expect("acked").len() < n {
        assert!(start.elapsed() < Duration::from_secs(60), "writes too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_present(s: &Server, ids: &[String]) {
    assert!(!ids.is_empty());
    for id in ids {
        let r = s.get(&format!("/api/v1/memories/{id}"));
        assert_eq!(r.status, 200, "acknowledged memory {id} lost: {}", r.text());
    }
}

#[test]
fn sigterm_under_load_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path());
    let load = Load::start(s.http, 8);
    wait_for_acks(&load, 200);
    let t = Instant::now();
    s.signal(libc::SIGTERM);
    let status = s.wait_exit(Duration::from_secs(30));
    let took = t.elapsed();
    let acked = load.finish();
    let status = status.unwrap_or_else(|| panic!("no exit within 30 s:\n{}", s.logs()));
    assert!(status.success(), "exit {status:?}:\n{}", s.logs());
    assert!(
        s.logs().contains("Graceful shutdown complete"),
        "{}",
        s.logs()
    );
    eprintln!(
        "SIGTERM to exit: {took:?}, {} acknowledged writes",
        acked.len()
    );
    // With no write in flight any more, the loaded space's indexes went to
    // a snapshot, and the restart reads them instead of rebuilding them.
    assert!(s.logs().contains("index snapshots written"), "{}", s.logs());
    drop(s);
    let s = Server::start(dir.path());
    assert_all_present(&s, &acked);
    let space = s.get("/api/v1/spaces/default");
    let memories = space.json()["memories"].as_u64().expect("memories");
    assert!(
        memories as usize >= acked.len(),
        "{memories} < {}",
        acked.len()
    );
    assert!(
        s.logs().contains("\"from\":\"index snapshot\""),
        "{}",
        s.logs()
    );
}

#[test]
fn kill_9_during_writes_loses_no_acknowledged_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path());
    let load = Load::start(s.http, 8);
    wait_for_acks(&load, 300);
    s.kill9();
    let acked = load.finish();
    let s = Server::start(dir.path());
    assert_all_present(&s, &acked);
    // And the store still takes writes.
    let r = s.post(
        "/api/v1/memories/remember",
        &json!({"content": "after the crash"}),
    );
    assert_eq!(r.status, 201);
}

#[test]
fn startup_errors_are_clear() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let bin = common::bin();

    // Same data directory: refused, naming the holder.
    let out = std::process::Command::new(bin)
        .args([
            "start",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another engram process"), "{err}");

    // Busy port: refused, naming the port and the flag.
    let other = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(bin)
        .args(["start", "--grpc-port", "0", "--http-port"])
        .arg(s.http.port().to_string())
        .arg("--data-dir")
        .arg(other.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already in use") && err.contains("--http-port"),
        "{err}"
    );
    // The first server is unharmed.
    assert_eq!(s.get("/health/ready").status, 200);
}

/// A fake server that always answers 503, to see `status` say "not ready".
fn not_ready_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = r#"{"status":"unhealthy","ready":false,"version":"x","uptime_seconds":1,"checks":[],"spaces":[]}"#;
            let _ = write!(
                c,
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, h)
}

#[test]
fn status_exit_codes_follow_readiness() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path());
    let url = format!("http://{}", s.http);
    let (code, out, err) = run_cli(&["status", "--url", &url], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("READY"), "{out}");
    let (code, out, _) = run_cli(&["status", "--json", "--url", &url], &[]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(v["ready"], true);
    assert!(v["wal"]["last_lsn"].is_u64());
    assert!(v["spaces"].is_array());
    assert!(v["uptime_seconds"].is_u64());
    // ENGRAM_HTTP_PORT finds the server without --url, as a container HEALTHCHECK does.
    let (code, _, err) = run_cli(
        &["status"],
        &[("ENGRAM_HTTP_PORT", &s.http.port().to_string())],
    );
    assert_eq!(code, 0, "{err}");

    let (fake, h) = not_ready_server();
    let (code, out, _) = run_cli(&["status", "--url", &format!("http://{fake}")], &[]);
    assert_eq!(code, 1, "not ready must exit 1: {out}");
    h.join().expect("fake");

    s.signal(libc::SIGTERM);
    assert!(
        s.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| s.success())
    );
    let (code, _, err) = run_cli(&["status", "--url", &url], &[]);
    assert_eq!(code, 3, "unreachable must exit 3: {err}");
    assert!(err.contains("cannot reach"), "{err}");
}

/// A port set in the environment but overridden by `--http-port` (as a
/// container's command does) is warned about at start, naming both layers
/// and values; `engram status`, which has no such flag, says which URL it
/// tried, where that came from, and that flags may have moved the server.
#[test]
fn a_flag_over_the_environment_warns_and_status_names_its_url_and_source() {
    // A port nothing listens on once the server below is gone.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    // The helper starts with `--http-port 0`, which beats the environment.
    let s = Server::start_with(
        dir.path(),
        common::Options {
            env: vec![("ENGRAM_SERVER__HTTP_PORT".to_owned(), port.clone())],
            ..Default::default()
        },
    );
    let expected = format!(
        "--http-port 0 overrides ENGRAM_SERVER__HTTP_PORT={port} (flags win over environment and file)"
    );
    let logs = s.logs();
    let warned = logs.lines().any(|line| {
        serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
            v["level"] == "WARN" && v["message"].as_str().is_some_and(|m| m.contains(&expected))
        })
    });
    assert!(warned, "no warning {expected:?} in:\n{logs}");
    drop(s);

    // Status follows the environment and misses the server: the message
    // names the URL, its source, and the flags that may have moved it.
    let url = format!("http://127.0.0.1:{port}");
    let env = [("ENGRAM_SERVER__HTTP_PORT", port.as_str())];
    let (code, out, err) = run_cli(&["status"], &env);
    assert_eq!(code, 3, "unreachable must exit 3: {out}{err}");
    assert!(
        err.contains(&format!(
            "tried {url} (from ENGRAM_SERVER__HTTP_PORT={port})"
        )),
        "{err}"
    );
    assert!(
        err.contains("flags of `engram start`") && err.contains("--url"),
        "{err}"
    );
    let (code, out, _) = run_cli(&["status", "--json"], &env);
    assert_eq!(code, 3);
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(v["reachable"], false);
    assert_eq!(v["url"], url.as_str());
    assert_eq!(
        v["url_source"],
        format!("ENGRAM_SERVER__HTTP_PORT={port}").as_str()
    );

    // An explicit URL is named as such.
    let (code, _, err) = run_cli(&["status", "--url", &url], &[]);
    assert_eq!(code, 3);
    assert!(err.contains(&format!("tried {url} (from --url)")), "{err}");

    // A mistyped variable's error suggests the right one and says that the
    // flag wins over it.
    let (code, _, err) = run_cli(&["config", "check"], &[("ENGRAM_SERVER_HTTP_PORT", "8000")]);
    assert_eq!(code, 1);
    assert!(
        err.contains("did you mean ENGRAM_SERVER__HTTP_PORT?") && err.contains("--http-port"),
        "{err}"
    );
}

#[test]
fn config_check_names_bad_keys_and_layers_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("engram.toml");
    let path = file.to_str().expect("utf8");

    std::fs::write(&file, "[server]\nhttp_port = 8001\n").expect("write");
    let (code, out, err) = run_cli(&["config", "check", "--print", "--config", path], &[]);
    assert_eq!(code, 0, "{err}");
    let effective: toml::Table = toml::from_str(&out).expect("--print is TOML");
    assert_eq!(effective["server"]["http_port"].as_integer(), Some(8001));
    // Environment beats the file (alias and nested form); unknown keys fail.
    let (_, out, _) = run_cli(
        &["config", "check", "--print", "--config", path],
        &[
            ("ENGRAM_HTTP_PORT", "8002"),
            ("ENGRAM_MEMORY__CONSOLIDATION__THRESHOLD", "0.6"),
            ("ENGRAM_DATA_DIR", "/tmp/elsewhere"),
        ],
    );
    let effective: toml::Table = toml::from_str(&out).expect("toml");
    assert_eq!(effective["server"]["http_port"].as_integer(), Some(8002));
    assert_eq!(effective["data_dir"].as_str(), Some("/tmp/elsewhere"));
    let t = effective["memory"]["consolidation"]["threshold"]
        .as_float()
        .expect("float");
    assert!((t - 0.6).abs() < 1e-6);

    for (text, key) in [
        ("[server]\nhttp_prot = 1\n", "http_prot"),
        ("[servr]\nhttp_port = 1\n", "servr"),
        ("[server]\nhttp_port = \"abc\"\n", "server.http_port"),
        (
            "[memory.consolidation]\nthreshold = 3.0\n",
            "memory.consolidation.threshold",
        ),
        ("[wal]\nfsync = \"sometimes\"\n", "wal.fsync"),
        // Replicas acknowledge only what is on disk.
        (
            "[cluster]\nenabled = true\n[wal]\nfsync = \"10ms\"\n",
            "wal.fsync",
        ),
        (
            "[replication]\ndefault_write_concern = \"majority\"\n",
            "replication.default_write_concern",
        ),
        (
            "[replication]\nwrite_timeout_ms = 0\n",
            "replication.write_timeout_ms",
        ),
        ("[log]\nformat = \"xml\"\n", "log.format"),
        ("[server]\nbind = \"not-an-ip\"\n", "server.bind"),
    ] {
        std::fs::write(&file, text).expect("write");
        let (code, _, err) = run_cli(&["config", "check", "--config", path], &[]);
        assert_eq!(code, 1, "{text:?} must be rejected");
        assert!(err.contains(key), "{text:?}: error must name {key}: {err}");
    }
    // What Kubernetes injects for a Service named `engram` is not config.
    let (code, _, err) = run_cli(
        &["config", "check"],
        &[
            ("ENGRAM_SERVICE_HOST", "10.0.0.1"),
            ("ENGRAM_SERVICE_PORT", "7432"),
            ("ENGRAM_SERVICE_PORT_HTTP", "7432"),
            ("ENGRAM_PORT", "tcp://10.0.0.1:7432"),
            ("ENGRAM_PORT_7432_TCP_ADDR", "10.0.0.1"),
            ("ENGRAM_PROD_SERVICE_HOST", "10.0.0.2"),
            ("ENGRAM_PROD_PORT_50051_TCP", "tcp://10.0.0.2:50051"),
            ("ENGRAM_HEADLESS_SERVICE_PORT_GRPC", "50051"),
        ],
    );
    assert_eq!(code, 0, "service-link variables must be ignored: {err}");
    let (code, _, err) = run_cli(&["config", "check"], &[("ENGRAM_SERVER__NOPE", "1")]);
    assert_eq!(code, 1);
    assert!(err.contains("ENGRAM_SERVER__NOPE"), "{err}");
    let (code, _, err) = run_cli(&["config", "check"], &[("ENGRAM_HTTP_PORT", "seventy")]);
    assert_eq!(code, 1);
    assert!(err.contains("server.http_port"), "{err}");
    // A server refuses to start on a bad config too.
    std::fs::write(&file, "[server]\nhttp_prot = 1\n").expect("write");
    let (code, _, err) = run_cli(&["start", "--config", path], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("http_prot"), "{err}");
    // The documented defaults file is itself a valid config.
    let defaults = common::repo("config/default.toml");
    let defaults = defaults.to_str().expect("UTF-8 path");
    let (code, _, err) = run_cli(&["config", "check", "--config", defaults], &[]);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn cli_commands_drive_a_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let url = format!("http://{}", s.http);
    let u = ["--url", url.as_str()];
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend_from_slice(&u);
        let (code, out, err) = run_cli(&all, &[]);
        assert_eq!(code, 0, "engram {args:?}: {out}{err}");
        out
    };
    cli(&["space", "create", "notes"]);
    let id = cli(&[
        "remember",
        "the blue notebook is in the drawer",
        "--space",
        "notes",
        "--tag",
        "home",
        "--confidence",
        "0.8",
    ]);
    let id = id.trim();
    assert_eq!(id.len(), 26, "{id}");
    let out = cli(&["recall", "blue notebook", "--space", "notes"]);
    assert!(out.contains(id), "{out}");
    let out = cli(&["space", "list"]);
    assert!(out.contains("notes"), "{out}");
    let out = cli(&["consolidate", "--threshold", "0.3", "--space", "notes"]);
    assert!(out.contains("examined"), "{out}");
    cli(&["forget", id, "--space", "notes"]);
    let out = cli(&["recall", "blue notebook", "--space", "notes"]);
    assert!(!out.contains(id), "{out}");
    cli(&["space", "delete", "notes"]);
    // Errors from the server reach the user with its code, exit 1.
    let (code, _, err) = run_cli(
        &["forget", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "--url", &url],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("memory_not_found"), "{err}");
    let (code, out, _) = run_cli(&["version"], &[]);
    assert_eq!(code, 0);
    assert!(out.starts_with("engram "), "{out}");
}

#[test]
fn backup_while_serving_then_restore_into_a_new_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path());
    let mut ids = BTreeSet::new();
    for i in 0..50 {
        let r = s.post(
            "/api/v1/memories/remember",
            &json!({"content": format!("backup memory {i}")}),
        );
        assert_eq!(r.status, 201);
        ids.insert(r.json()["id"].as_str().expect("id").to_owned());
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://{}", s.http);
    let (code, out, err) = run_cli(
        &[
            "backup",
            "--output",
            out_dir.path().to_str().expect("utf8"),
            "--url",
            &url,
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let backup = out.trim().to_owned();
    assert!(
        std::path::Path::new(&backup)
            .join("manifest.json")
            .is_file()
    );
    // Written after the backup: not in it.
    let late = s.post("/api/v1/memories/remember", &json!({"content": "too late"}));
    assert_eq!(late.status, 201);
    s.signal(libc::SIGTERM);
    assert!(s.wait_exit(Duration::from_secs(30)).is_some());

    let restored = tempfile::tempdir().expect("tempdir");
    let target = restored.path().join("data");
    let (code, _, err) = run_cli(
        &[
            "restore",
            "--input",
            &backup,
            "--data-dir",
            target.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("50 memories"), "{err}");
    // Restoring over existing data is refused.
    let (code, _, err) = run_cli(
        &[
            "restore",
            "--input",
            &backup,
            "--data-dir",
            dir.path().to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("not empty"), "{err}");

    let s = Server::start(&target);
    let ids: Vec<String> = ids.into_iter().collect();
    assert_all_present(&s, &ids);
    let late_id = late.json()["id"].as_str().expect("id").to_owned();
    assert_eq!(s.get(&format!("/api/v1/memories/{late_id}")).status, 404);
    let r = s.post("/api/v1/memories/remember", &json!({"content": "new life"}));
    assert_eq!(r.status, 201);
}

/// Runs the README's `sh` block after `<!-- MARKER -->` verbatim with
/// `bash -euo pipefail` against a new server (`ENGRAM_URL`), the `engram`
/// under test first on `PATH`; returns its stdout.
fn run_readme_block(marker: &str) -> String {
    let readme = std::fs::read_to_string(common::repo("README.md")).expect("README.md");
    let start = readme
        .find(&format!("<!-- {marker} -->"))
        .unwrap_or_else(|| panic!("README marks a block with <!-- {marker} -->"));
    let block = &readme[start..];
    let open = block.find("```sh\n").expect("sh block") + "```sh\n".len();
    let close = block[open..].find("```").expect("block end");
    let script = &block[open..open + close];
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Server::start(dir.path());
    let bin_dir = std::path::Path::new(common::bin())
        .parent()
        .expect("binary directory")
        .to_owned();
    let path = std::env::join_paths(std::iter::once(bin_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("ENGRAM_URL", format!("http://{}", s.http))
        .env("PATH", path)
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "README block {marker} failed:\n{script}\n---\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The README's quickstart block runs verbatim against a real server.
#[test]
fn readme_quickstart_runs_verbatim() {
    let stdout = run_readme_block("quickstart");
    assert!(
        stdout.contains("\"count\":1"),
        "search found the memory: {stdout}"
    );
    assert!(stdout.contains("\"via\""), "recall answered: {stdout}");
}

/// The README's CLI quickstart runs verbatim: status, remember, recall
/// finds the memory.
#[test]
fn readme_cli_quickstart_runs_verbatim() {
    let stdout = run_readme_block("quickstart-cli");
    assert!(stdout.contains("READY"), "status: {stdout}");
    let recalled = stdout
        .lines()
        .find(|l| l.ends_with("Alice prefers tea over coffee in the morning") && l.contains('\t'))
        .unwrap_or_else(|| panic!("recall printed the memory: {stdout}"));
    assert!(recalled.contains("lexical"), "{recalled}");
}

/// Remembers `content` in `space`; returns the new memory's id.
fn remember_in(s: &Server, space: &str, content: &str) -> String {
    let r = s.post(
        &format!("/api/v1/memories/remember?space={space}"),
        &json!({ "content": content }),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().expect("id").to_owned()
}

/// Makes one episode record of space `name` undecodable in the store of a
/// stopped server, as damage on disk would (applied LSN and sequence stay).
fn damage_an_episode(data_dir: &std::path::Path, name: &str) {
    use engram_graph::record::{self, SpaceRecord};
    use engram_lsm::{Cf, Mutation, Operation, Store, StoreConfig, keys};
    let store = Store::open(&data_dir.join("db"), &StoreConfig::default()).expect("open the store");
    let space = store
        .spaces()
        .expect("space records")
        .into_iter()
        .find_map(|(id, bytes)| {
            let r: SpaceRecord = record::decode(&bytes, "space record").ok()?;
            (r.name == name).then_some(id)
        })
        .expect("the space's record");
    let (key, _) = store
        .scan_space(Cf::Episodes, space)
        .expect("scan")
        .next()
        .expect("an episode of the space")
        .expect("read");
    let (_, id) = keys::decode_episode(&key).expect("episode key");
    let op = Operation {
        lsn: store.applied_lsn().expect("applied LSN"),
        space,
        seq: store.applied_seq(space).expect("applied sequence"),
        mutations: vec![Mutation::PutEpisode {
            id,
            record: vec![0xff; 3],
        }],
    };
    store.apply(&[op]).expect("write the damage");
    store.flush().expect("flush");
}

#[test]
fn a_damaged_space_does_not_stop_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = Server::start(dir.path());
    for space in ["a", "b"] {
        let r = s.post("/api/v1/spaces", &json!({ "id": space }));
        assert_eq!(r.status, 201, "{}", r.text());
    }
    let in_a = remember_in(&s, "a", "the boat is blue");
    let in_b = remember_in(&s, "b", "the house is red");
    s.signal(libc::SIGTERM);
    assert!(
        s.wait_exit(Duration::from_secs(30))
            .is_some_and(|st| st.success()),
        "{}",
        s.logs()
    );
    drop(s);
    // The clean stop wrote index snapshots, which a load would use instead
    // of decoding the store's records: remove them, then damage a's data.
    if let Ok(files) = std::fs::read_dir(dir.path().join("indexes")) {
        for f in files {
            std::fs::remove_file(f.expect("snapshot").path()).expect("remove snapshot");
        }
    }
    damage_an_episode(dir.path(), "a");

    // Ready (Server::start waits for /health/ready 200) despite warm-up
    // failing on a.
    let s = Server::start(dir.path());
    let health = s.get("/api/v1/system/health");
    assert_eq!(health.status, 200, "{}", health.text());
    let v = health.json();
    let spaces = v["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "spaces"))
        .cloned()
        .unwrap_or_else(|| panic!("a spaces check: {v}"));
    assert_eq!(spaces["status"], "warn", "{spaces}");
    let message = spaces["message"].as_str().unwrap_or_default();
    assert!(message.contains("a: stored data is corrupt"), "{message}");
    assert_eq!(s.get("/health").json()["status"], "degraded");

    let r = s.get(&format!("/api/v1/memories/{in_a}?space=a"));
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "space_unavailable",
        "{}",
        r.text()
    );
    let r = s.get(&format!("/api/v1/memories/{in_b}?space=b"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["content"], "the house is red");
    remember_in(&s, "b", "b still takes writes");
    let listed = s.get("/api/v1/spaces");
    assert_eq!(
        listed.status,
        200,
        "listing skips the damaged space: {}",
        listed.text()
    );

    assert!(s.logs().contains("space unavailable"), "{}", s.logs());
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.lines().any(|l| l == "engram_spaces_damaged 1"),
        "{metrics}"
    );
}

/// A backup interrupted by a crash leaves a checkpoint of hard links (to
/// SST files that may hold forgotten data): the next start removes it.
#[test]
fn an_interrupted_backups_checkpoint_is_removed_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let leftover = data.join("backup-tmp").join("db");
    std::fs::create_dir_all(&leftover).expect("mkdir");
    std::fs::write(leftover.join("000042.sst"), b"forgotten words").expect("write");
    let s = Server::start(&data);
    assert!(
        !data.join("backup-tmp").exists(),
        "backup-tmp survived the start:\n{}",
        s.logs()
    );
}
