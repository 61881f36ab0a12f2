//! Connection admission against the real binary: idle sockets are capped
//! and closed, a flood never takes the descriptors storage needs, and the
//! node keeps serving writes once the flood ends.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::{Options, Server, bin};
use serde_json::json;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Whether the server closed `s` within `limit` (EOF or reset). Bytes the
/// server sends first (an HTTP/2 server's SETTINGS, an HTTP error) are read
/// past.
fn closed_within(mut s: &TcpStream, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let mut b = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).expect("timeout");
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

fn counter(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in metrics:\n{text}"))
}

fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"))
        .collect()
}

#[test]
fn idle_connections_are_capped_then_closed_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        dir.path(),
        Options {
            env: env(&[
                ("ENGRAM_SERVER__MAX_CONNECTIONS", "20"),
                ("ENGRAM_SERVER__GRPC_MAX_CONNECTIONS", "20"),
                ("ENGRAM_SERVER__HEADER_READ_TIMEOUT_MS", "1500"),
            ]),
            ..Options::default()
        },
    );
    for (name, addr) in [("http", server.http), ("grpc", server.grpc)] {
        let idle = open_idle(addr, 40);
        // Over the cap: closed at once (well before the read timeout).
        let started = Instant::now();
        let over = idle
            .iter()
            .skip(20)
            .filter(|s| closed_within(s, Duration::from_millis(700)))
            .count();
        assert_eq!(over, 20, "{name}: connections over the cap stay open");
        assert!(started.elapsed() < Duration::from_secs(14));
        // Under the cap: closed after the first-bytes deadline, not kept forever.
        let t = Instant::now();
        let under = idle
            .iter()
            .take(20)
            .filter(|s| closed_within(s, Duration::from_secs(5)))
            .count();
        assert_eq!(under, 20, "{name}: idle connections never closed");
        let waited = t.elapsed();
        assert!(
            waited >= Duration::from_millis(500),
            "{name}: idle connections closed after {waited:?}, before the deadline"
        );
    }
    // The node serves again, writes included.
    let r = server.post(
        "/api/v1/memories/remember",
        &json!({"content": "after the flood"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let metrics = server.get("/metrics").text();
    for s in ["http", "grpc"] {
        let rejected = counter(
            &metrics,
            &format!("engram_connections_rejected_total{{reason=\"limit\",server=\"{s}\"}}"),
        );
        assert!(rejected >= 20.0, "{s}: {rejected} rejections counted");
    }
    let health = server.get("/health").json();
    assert_eq!(health["status"], json!("healthy"));
}

#[test]
fn a_trickle_of_bytes_does_not_keep_a_connection_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_with(
        dir.path(),
        Options {
            env: env(&[("ENGRAM_SERVER__HEADER_READ_TIMEOUT_MS", "1500")]),
            ..Options::default()
        },
    );
    // HTTP: part of a request line; gRPC: part of the HTTP/2 preface.
    for (name, addr, opening) in [
        ("http", server.http, &b"GET /heal"[..]),
        ("grpc", server.grpc, &b"PRI * HTTP/2.0"[..]),
    ] {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        std::io::Write::write_all(&mut s, opening).expect("send");
        assert!(
            closed_within(&s, Duration::from_secs(6)),
            "{name}: a connection that sent {} bytes and stopped is kept open",
            opening.len()
        );
    }
    // A complete opening is served as usual.
    assert_eq!(server.get("/health/alive").status, 200);
}

/// With a low open-files limit, a flood of idle connections far beyond it
/// is shed by admission: storage never hits EMFILE, and the engine is
/// healthy and writable afterwards.
#[test]
fn a_connection_flood_never_takes_the_descriptors_storage_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("start")
        .arg("--http-port")
        .arg("0")
        .arg("--grpc-port")
        .arg("0")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("ENGRAM_STORAGE__MAX_OPEN_FILES", "256")
        .env("ENGRAM_SERVER__HEADER_READ_TIMEOUT_MS", "60000")
        .env("ENGRAM_LOG_FORMAT", "json")
        .env("HOME", dir.path())
        .env_remove("RUST_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit between fork and exec touches only this process.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::from_command(cmd, &dir.path().join("data"));
    // 1024 descriptors, 256 + 512 reserved for storage: at most 256 client
    // connections across both listeners. Hold 600 idle sockets.
    let idle = open_idle(server.http, 600);
    // Let the accept loop catch up, then count the sockets it closed.
    std::thread::sleep(Duration::from_millis(500));
    let shed = idle
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(20)))
        .count();
    assert!(shed >= 600 - 256, "only {shed} of 600 shed");
    assert!(
        server.logs().contains("connection limits lowered"),
        "{}",
        server.logs()
    );
    drop(idle);
    // Storage opens files freely meanwhile and afterwards: many writes
    // (WAL appends and RocksDB) succeed and the node is healthy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut ok = 0;
    while ok < 200 && Instant::now() < deadline {
        let r = server.post(
            "/api/v1/memories/remember",
            &json!({"content": format!("write {ok} after the flood")}),
        );
        if r.status == 201 {
            ok += 1;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert_eq!(ok, 200, "{}", server.logs());
    let health = server.get("/health").json();
    assert_eq!(health["status"], json!("healthy"), "{}", server.logs());
}
