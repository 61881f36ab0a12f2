//! Black-box helpers: start the real `engram` binary on free ports with a
//! temporary data directory, talk HTTP/1.1 to it over a plain socket, send
//! it signals.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `rel` inside the checkout under test. Read at run time (`cargo test`
/// sets `CARGO_MANIFEST_DIR` for every test process): `./x` shares one
/// target directory between checkouts, and cargo reuses a test binary
/// built in another checkout from the same sources, whose compile-time
/// path would point at that other checkout's files.
pub fn repo(rel: &str) -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.join("..").join(rel)
}

/// Path of the binary under test: the one cargo built, or
/// `ENGRAM_TEST_BIN` (to check that a test fails on an older build).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("ENGRAM_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_engram").to_owned())
    })
}

/// A running server.
pub struct Server {
    pub child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

/// How to start a server.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra arguments after `start`.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Wait for readiness before returning.
    pub no_wait: bool,
}

impl Server {
    /// Starts `engram start` on ports 0 (the OS picks) in `data_dir`.
    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, Options::default())
    }

    /// Like [`Server::start`], with options.
    pub fn start_with(data_dir: &Path, opts: Options) -> Server {
        let mut cmd = Command::new(bin());
        cmd.arg("start")
            .arg("--http-port")
            .arg("0")
            .arg("--grpc-port")
            .arg("0")
            .arg("--data-dir")
            .arg(data_dir)
            .args(&opts.args)
            .env_remove("RUST_LOG")
            .env_remove("ENGRAM_TEST_BIN")
            .env("ENGRAM_LOG_FORMAT", "json")
            .env("HOME", data_dir) // no user config file leaks in
            .env_remove("XDG_CONFIG_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let server = Server::spawn(cmd, data_dir);
        if !opts.no_wait {
            server.wait_ready(Duration::from_secs(120));
        }
        server
    }

    /// Starts a prepared `engram start` command (it must log JSON to a
    /// piped stderr) and waits until it is ready.
    pub fn from_command(cmd: Command, data_dir: &Path) -> Server {
        let server = Server::spawn(cmd, data_dir);
        server.wait_ready(Duration::from_secs(120));
        server
    }

    fn spawn(mut cmd: Command, data_dir: &Path) -> Server {
        let mut child = cmd.spawn().expect("spawn engram");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut sent = false;
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if !sent {
                        if let Ok(v) = serde_json::from_str::<Value>(&line) {
                            if v["message"] == "engram starting" {
                                let http = v["http"].as_str().unwrap_or("").to_owned();
                                let grpc = v["grpc"].as_str().unwrap_or("").to_owned();
                                let _ = tx.send((http, grpc));
                                sent = true;
                            }
                        }
                    }
                    log.lock().expect("log").push(line);
                }
            });
        }
        let (http, grpc) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "engram did not start:\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
        };
        Server {
            child,
            http: http.parse().expect("http addr"),
            grpc: grpc.parse().expect("grpc addr"),
            data_dir: data_dir.to_path_buf(),
            log,
        }
    }

    /// Polls `/health/ready` until 200.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(r) = try_request(self.http, "GET", "/health/ready", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("engram not ready after {limit:?}:\n{}", self.logs());
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// An HTTP request (panics when the server cannot be reached).
    pub fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        try_request(self.http, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.logs()))
    }

    /// GET with JSON answer.
    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], b"")
    }

    /// POST a JSON value.
    pub fn post(&self, path: &str, body: &Value) -> Resp {
        self.req(
            "POST",
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(s)) = self.child.try_wait() {
                // Let the reader thread drain the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    s.write_all(&raw)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let raw = &buf[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let mut out = Vec::new();
    loop {
        let nl = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size"))?;
        let size_text = std::str::from_utf8(&raw[..nl]).map_err(|_| bad("chunk size utf8"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size hex"))?;
        raw = &raw[nl + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(bad("short chunk"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Runs the binary with `args`, returning (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("RUST_LOG")
        .env_remove("XDG_CONFIG_HOME")
        .env("HOME", std::env::temp_dir());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run engram");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until some node of `s`'s cluster leads `space`, as `s` sees it:
/// this node's `/cluster/health` shows the space's committed assignment,
/// and the primary (when it is this node) lists itself in `replication`.
/// In a cluster `default` is created by the metadata group a moment after
/// the node is ready.
#[allow(dead_code)]
pub fn wait_space_led(s: &Server, space: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let h = s.get("/cluster/health").json();
        let primary = h["spaces"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["space"] == space))
            .and_then(|p| p["assignment"]["primary"].as_str().map(str::to_owned));
        let me = h["node"]["node_id"].as_str().unwrap_or("").to_owned();
        let led_here = h["replication"].as_array().is_some_and(|r| {
            r.iter()
                .any(|e| e["space"] == space && e["role"] == "primary" && e["state"] == "primary")
        });
        if let Some(p) = primary {
            if p != me || led_here {
                return;
            }
        }
        assert!(
            start.elapsed() < limit,
            "space {space} not led after {limit:?}: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
