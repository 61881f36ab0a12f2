//! Container tests: the packaged image on the real Docker engine, on a
//! project-created network, published on 127.0.0.1 only.
//!
//! They need an image built by `deployments/docker/build-local.sh`, named by
//! `ENGRAM_IMAGE`; `./x test` builds it and runs them whenever a Docker
//! engine answers. Without `ENGRAM_IMAGE` each test prints a loud SKIPPED
//! line (`./x test` itself fails loudly if Docker answers but the image
//! cannot be built).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Resp, try_request};
use serde_json::json;

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn image() -> Option<String> {
    match std::env::var("ENGRAM_IMAGE") {
        Ok(i) if !i.is_empty() => Some(i),
        _ => {
            eprintln!(
                "!!! SKIPPED: container test needs ENGRAM_IMAGE (built by deployments/docker/build-local.sh; ./x test does this when Docker answers)"
            );
            None
        }
    }
}

fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker").args(args).output().expect("docker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn docker_ok(args: &[&str]) -> String {
    let (ok, out, err) = docker(args);
    assert!(ok, "docker {args:?} failed: {err}");
    out
}

/// Names (network, volumes, containers) owned by one test, removed on drop.
struct Scope {
    prefix: String,
    network: String,
    containers: Mutex<Vec<String>>,
    volumes: Mutex<Vec<String>>,
}

impl Scope {
    fn new(test: &str) -> Scope {
        let prefix = format!(
            "engram-ct-{}-{}-{test}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let network = format!("{prefix}-net");
        docker_ok(&["network", "create", &network]);
        Scope {
            prefix,
            network,
            containers: Mutex::new(Vec::new()),
            volumes: Mutex::new(Vec::new()),
        }
    }

    fn volume(&self, name: &str) -> String {
        let v = format!("{}-{name}", self.prefix);
        self.volumes.lock().expect("volumes").push(v.clone());
        v
    }

    /// `docker run -d` with the hardening flags, published on 127.0.0.1.
    fn run(&self, image: &str, name: &str, volume: &str, extra: &[&str]) -> Container {
        let cname = format!("{}-{name}", self.prefix);
        let mount = format!("{volume}:/data");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &cname,
            "--network",
            &self.network,
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "-p",
            "127.0.0.1::7432",
            "-v",
            &mount,
        ];
        args.extend_from_slice(extra);
        args.push(image);
        docker_ok(&args);
        self.containers
            .lock()
            .expect("containers")
            .push(cname.clone());
        Container { name: cname }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for c in self.containers.lock().expect("containers").iter() {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        for v in self.volumes.lock().expect("volumes").iter() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        let _ = docker(&["network", "rm", &self.network]);
    }
}

struct Container {
    name: String,
}

impl Container {
    fn inspect(&self, format: &str) -> String {
        docker_ok(&["inspect", "-f", format, &self.name])
    }

    /// The host address of the container's HTTP port.
    fn http(&self) -> SocketAddr {
        let out = docker_ok(&["port", &self.name, "7432/tcp"]);
        out.lines()
            .find(|l| l.starts_with("127.0.0.1:"))
            .unwrap_or_else(|| panic!("no loopback port: {out}"))
            .parse()
            .expect("addr")
    }

    /// Waits for Docker's health status `healthy`; returns the time taken.
    fn wait_healthy(&self, limit: Duration) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            match self.inspect("{{.State.Health.Status}}").as_str() {
                "healthy" => return start.elapsed(),
                "unhealthy" => break,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        panic!(
            "{} not healthy within {limit:?} (status {}):\n{}",
            self.name,
            self.inspect("{{.State.Health.Status}}"),
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let (_, out, err) = docker(&["logs", &self.name]);
        format!("{out}\n{err}")
    }

    fn req(&self, method: &str, path: &str, body: &serde_json::Value) -> Resp {
        try_request(
            self.http(),
            method,
            path,
            &[("content-type", "application/json")],
            body.to_string().as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.logs()))
    }

    fn remember(&self, content: &str) -> String {
        let r = self.req(
            "POST",
            "/api/v1/memories/remember",
            &json!({"content": content}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["id"].as_str().expect("id").to_owned()
    }

    fn has(&self, id: &str) -> bool {
        self.req("GET", &format!("/api/v1/memories/{id}"), &json!(null))
            .status
            == 200
    }
}

#[test]
fn image_is_small_non_root_and_has_no_shell() {
    let Some(image) = image() else { return };
    let size: u64 = docker_ok(&["image", "inspect", "-f", "{{.Size}}", &image])
        .parse()
        .expect("size");
    println!("image {image}: {:.1} MiB", size as f64 / 1048576.0);
    assert!(
        size < 60 * 1024 * 1024,
        "image is {size} bytes (limit 60 MB)"
    );
    let user = docker_ok(&["image", "inspect", "-f", "{{.Config.User}}", &image]);
    assert!(
        !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
        "user {user:?}"
    );
    let stop = docker_ok(&["image", "inspect", "-f", "{{.Config.StopSignal}}", &image]);
    assert_eq!(stop, "SIGTERM");
    let health = docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}}",
        &image,
    ]);
    assert!(health.contains("status"), "{health}");
    // Healthy within 2 s of ready (the first probe waits one interval), and
    // not unhealthy on a single slow probe: at least 10 s of failures.
    let probe = |field: &str| -> u64 {
        let f = format!("{{{{json .Config.Healthcheck.{field}}}}}");
        docker_ok(&["image", "inspect", "-f", &f, &image])
            .parse()
            .unwrap_or_else(|e| panic!("Healthcheck.{field}: {e}"))
    };
    let (interval, retries) = (probe("Interval"), probe("Retries"));
    assert!(interval <= 2_000_000_000, "interval {interval} ns");
    assert!(
        interval * retries >= 10_000_000_000,
        "{retries} × {interval} ns"
    );
    for shell in ["sh", "/bin/sh", "bash"] {
        let (ok, _, _) = docker(&["run", "--rm", "--entrypoint", shell, &image, "-c", "true"]);
        assert!(!ok, "{shell} must not exist in the image");
    }
    let (ok, out, _) = docker(&["run", "--rm", &image, "version"]);
    assert!(ok && out.starts_with("engram "), "{out}");
}

#[test]
fn hardened_container_becomes_healthy_and_serves() {
    let Some(image) = image() else { return };
    let scope = Scope::new("serve");
    let vol = scope.volume("data");
    let c = scope.run(&image, "one", &vol, &[]);
    // When the server first says ready, and when Docker first says healthy.
    let start = Instant::now();
    let mut ready = None;
    let healthy = loop {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not healthy within 10 s:\n{}",
            c.logs()
        );
        if ready.is_none() {
            let addr = c.http();
            if try_request(addr, "GET", "/health/ready", &[], b"").is_ok_and(|r| r.status == 200) {
                ready = Some(start.elapsed());
            }
        }
        if c.inspect("{{.State.Health.Status}}") == "healthy" {
            break start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ready = ready.unwrap_or(healthy);
    println!(
        "start to healthy: {:.2} s; ready to healthy: {:.2} s",
        healthy.as_secs_f64(),
        (healthy - ready).as_secs_f64()
    );
    let id = c.remember("the container remembers this");
    let r = c.req("GET", "/api/v1/memories/search?q=container", &json!(null));
    assert_eq!(r.json()["memories"][0]["id"], id.as_str());
    assert_eq!(c.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
}

#[test]
fn data_survives_restart_and_a_new_container_on_the_volume() {
    let Some(image) = image() else { return };
    let scope = Scope::new("persist");
    let vol = scope.volume("data");
    let c = scope.run(&image, "first", &vol, &[]);
    c.wait_healthy(Duration::from_secs(30));
    let id = c.remember("persisted across restarts");
    docker_ok(&["restart", "-t", "30", &c.name]);
    c.wait_healthy(Duration::from_secs(30));
    assert!(c.has(&id), "lost after docker restart");
    docker_ok(&["rm", "-f", &c.name]);
    let c2 = scope.run(&image, "second", &vol, &[]);
    c2.wait_healthy(Duration::from_secs(30));
    assert!(c2.has(&id), "lost after replacing the container");
}

#[test]
fn docker_stop_is_a_graceful_shutdown() {
    let Some(image) = image() else { return };
    let scope = Scope::new("stop");
    let vol = scope.volume("data");
    let c = scope.run(&image, "one", &vol, &[]);
    c.wait_healthy(Duration::from_secs(30));
    c.remember("written before stop");
    let t = Instant::now();
    docker_ok(&["stop", "-t", "30", &c.name]);
    let took = t.elapsed();
    println!("docker stop took {:.2} s", took.as_secs_f64());
    assert!(took < Duration::from_secs(30));
    assert_eq!(c.inspect("{{.State.ExitCode}}"), "0", "{}", c.logs());
    assert!(
        c.logs().contains("Graceful shutdown complete"),
        "{}",
        c.logs()
    );
}

#[test]
fn kill_during_writes_keeps_every_acknowledged_write() {
    let Some(image) = image() else { return };
    let scope = Scope::new("kill");
    let vol = scope.volume("data");
    let c = scope.run(&image, "first", &vol, &[]);
    c.wait_healthy(Duration::from_secs(30));
    let addr = c.http();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && i < 5000 {
                    i += 1;
                    let body = json!({"content": format!("writer {w} entry {i}")}).to_string();
                    match try_request(
                        addr,
                        "POST",
                        "/api/v1/memories/remember",
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    ) {
                        Ok(r) if r.status == 201 => acked
                            .lock()
                            .expect("acked")
                            .push(r.json()["id"].as_str().unwrap_or_default().to_owned()),
                        _ => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    while acked.lock().expect("acked").len() < 200 && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    docker_ok(&["kill", "-s", "KILL", &c.name]);
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.join();
    }
    let acked = acked.lock().expect("acked").clone();
    assert!(
        acked.len() >= 200,
        "only {} writes acknowledged",
        acked.len()
    );
    docker_ok(&["rm", "-f", &c.name]);
    let c2 = scope.run(&image, "second", &vol, &[]);
    c2.wait_healthy(Duration::from_secs(30));
    for id in &acked {
        assert!(c2.has(id), "acknowledged {id} lost after kill -9");
    }
    println!(
        "{} acknowledged writes survived docker kill -s KILL",
        acked.len()
    );
}

#[test]
fn memory_limit_holds_under_sustained_writes() {
    let Some(image) = image() else { return };
    let scope = Scope::new("oom");
    let vol = scope.volume("data");
    let c = scope.run(
        &image,
        "one",
        &vol,
        &[
            "--memory",
            "512m",
            "--memory-swap",
            "512m",
            "-e",
            "ENGRAM_CACHE_SIZE_MB=64",
            "-e",
            "ENGRAM_STORAGE__WRITE_BUFFER_MB=16",
        ],
    );
    c.wait_healthy(Duration::from_secs(30));
    let addr = c.http();
    let text = "x".repeat(2000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let written = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|w| {
            let (text, written) = (text.clone(), Arc::clone(&written));
            std::thread::spawn(move || {
                let mut i = 0;
                while Instant::now() < deadline && i < 4000 {
                    i += 1;
                    let body = json!({"content": format!("{w} {i} {text}")}).to_string();
                    if let Ok(r) = try_request(
                        addr,
                        "POST",
                        "/api/v1/memories/remember",
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    ) {
                        if r.status == 201 {
                            written.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let mem = docker_ok(&["stats", "--no-stream", "--format", "{{.MemUsage}}", &c.name]);
    println!(
        "{} writes of ~2 KB under --memory 512m; memory {mem}",
        written.load(Ordering::Relaxed)
    );
    assert_eq!(c.inspect("{{.State.OOMKilled}}"), "false");
    assert_eq!(c.inspect("{{.State.Running}}"), "true", "{}", c.logs());
    assert!(written.load(Ordering::Relaxed) > 1000);
    let r = c.req("GET", "/health/ready", &json!(null));
    assert_eq!(r.status, 200);
}

fn compose(project: &str, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    compose_files(&["docker-compose.yml"], project, env, args)
}

/// `docker-compose -f deployments/docker/FILE... -p PROJECT ARGS`.
fn compose_files(
    files: &[&str],
    project: &str,
    env: &[(&str, &str)],
    args: &[&str],
) -> (bool, String) {
    let mut cmd = Command::new("docker-compose");
    for f in files {
        cmd.arg("-f")
            .arg(common::repo(&format!("deployments/docker/{f}")));
    }
    cmd.args(["-p", project]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("docker-compose");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn compose_stack_keeps_data_across_down_up_and_applies_config_changes() {
    let Some(image) = image() else { return };
    let project = format!("engramct{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("engram.toml");
    std::fs::copy(common::repo("deployments/docker/engram.toml"), &config).expect("copy config");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port().to_string()
    };
    let grpc_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port().to_string()
    };
    let env = [
        ("ENGRAM_IMAGE", image.as_str()),
        ("ENGRAM_CONFIG_FILE", config.to_str().expect("utf8")),
        ("ENGRAM_HTTP_HOST_PORT", port.as_str()),
        ("ENGRAM_GRPC_HOST_PORT", grpc_port.as_str()),
    ];
    struct Down<'a>(&'a str, &'a [(&'a str, &'a str)]);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = compose(self.0, self.1, &["down", "-v", "-t", "30"]);
        }
    }
    let _down = Down(&project, &env);
    // The container's id from Compose itself (v1 and v2 name containers differently).
    let up = |what: &str| {
        let (ok, out) = compose(&project, &env, &["up", "-d", "--no-build"]);
        assert!(ok, "compose up ({what}): {out}");
        let (ok, id) = compose(&project, &env, &["ps", "-q", "engram"]);
        assert!(ok, "compose ps: {id}");
        let id = id
            .lines()
            .map(str::trim)
            .find(|l| l.len() == 64 && l.chars().all(|c| c.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("no container id in: {id}"));
        let c = Container {
            name: id.to_owned(),
        };
        let took = c.wait_healthy(Duration::from_secs(30));
        (c, took)
    };
    // A missing config file stops `up` and names the path (the long mount
    // form: Docker does not create a directory in its place).
    let missing = dir.path().join("missing.toml");
    let mut wrong = env;
    wrong[1] = ("ENGRAM_CONFIG_FILE", missing.to_str().expect("utf8"));
    let (ok, out) = compose(&project, &wrong, &["up", "-d", "--no-build"]);
    assert!(!ok, "up with a missing config file succeeded: {out}");
    assert!(
        out.contains("does not exist") && out.contains("missing.toml"),
        "{out}"
    );
    assert!(!missing.exists(), "Docker created {}", missing.display());
    let (ok, out) = compose(&project, &wrong, &["down", "-v"]);
    assert!(ok, "compose down: {out}");

    let (c, took) = up("first");
    println!("compose up to healthy: {:.2} s", took.as_secs_f64());
    // Only Engram's volume: the monitoring services and their volumes live
    // in docker-compose.monitoring.yml.
    let volumes = docker_ok(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
    ]);
    assert_eq!(volumes, format!("{project}_engram-data"));
    assert_eq!(c.inspect("{{.Config.Healthcheck.Interval}}"), "2s");
    let both = ["docker-compose.yml", "docker-compose.monitoring.yml"];
    let (ok, out) = compose_files(&both, &project, &env, &["config", "--services"]);
    assert!(ok, "the monitoring file does not combine: {out}");
    for service in ["engram", "prometheus", "grafana"] {
        assert!(out.lines().any(|l| l == service), "{service}: {out}");
    }
    let (ok, out) = compose_files(&both, &project, &env, &["config", "--volumes"]);
    assert!(
        ok && out.contains("prometheus-data") && out.contains("grafana-data"),
        "{out}"
    );
    // The hardening the compose file asks for is what Docker applied.
    assert_eq!(c.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_eq!(c.inspect("{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert!(
        c.inspect("{{json .HostConfig.SecurityOpt}}")
            .contains("no-new-privileges")
    );
    assert_eq!(
        c.inspect("{{.HostConfig.Memory}}"),
        (1u64 << 30).to_string()
    );
    assert_eq!(c.inspect("{{.Config.User}}"), "65532:65532");
    assert_eq!(c.inspect("{{.HostConfig.LogConfig.Type}}"), "json-file");
    assert_eq!(c.http().port().to_string(), port);
    let id = c.remember("kept by the named volume");
    let (ok, out) = compose(&project, &env, &["down", "-t", "30"]);
    assert!(ok, "compose down: {out}");
    // A config change applies on the next start.
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str("\n[memory]\nbootstrap_spaces = [\"compose-check\"]\n");
    std::fs::write(&config, text).expect("write config");
    let (c, _) = up("second");
    assert!(c.has(&id), "data lost across down/up");
    let r = c.req("GET", "/api/v1/spaces/compose-check", &json!(null));
    assert_eq!(r.status, 200, "config change not applied: {}", r.text());
}

/// `git status --porcelain --ignored` of the checkout: what build-local.sh
/// must not change.
fn checkout_state() -> String {
    let out = Command::new("git")
        .args([
            "status",
            "--porcelain",
            "--ignored",
            "--untracked-files=all",
        ])
        .current_dir(common::repo("."))
        .output()
        .expect("git status");
    assert!(out.status.success(), "git status failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // Build outputs of this very run (cargo's target dir when inside).
        .filter(|l| !l.contains("target/") && !l.contains("engram-data"))
        .map(str::to_owned)
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn rebuilding_the_image_leaves_no_files_in_the_checkout_and_no_dangling_images() {
    if image().is_none() {
        return;
    }
    let tag = format!("engram:rebuild-{}", std::process::id());
    let base = format!("engram-runtime-base:rebuild-{}", std::process::id());
    let build = || {
        let out = Command::new(common::repo("deployments/docker/build-local.sh"))
            .env("ENGRAM_IMAGE", &tag)
            .env("ENGRAM_RUNTIME_BASE", &base)
            .env("ENGRAM_SBOM", "1")
            .env("ENGRAM_BINARY", common::bin())
            .output()
            .expect("build-local.sh");
        assert!(
            out.status.success(),
            "build-local.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dangling = || {
        docker_ok(&["images", "-q", "--no-trunc", "-f", "dangling=true"])
            .lines()
            .map(str::to_owned)
            .collect::<std::collections::BTreeSet<_>>()
    };
    let before = checkout_state();
    build();
    let first = docker_ok(&["image", "inspect", "-f", "{{.Id}}", &tag]);
    let dangling_before = dangling();
    build();
    let second = docker_ok(&["image", "inspect", "-f", "{{.Id}}", &tag]);
    let left: Vec<String> = dangling().difference(&dangling_before).cloned().collect();
    let _ = docker(&["rmi", &tag, &base]);
    assert_eq!(
        checkout_state(),
        before,
        "build-local.sh wrote into the checkout"
    );
    assert_ne!(first, second, "the rebuild made a new image");
    assert!(
        left.is_empty(),
        "the rebuild left dangling images: {left:?}"
    );
    let (gone, _, _) = docker(&["image", "inspect", &first]);
    assert!(!gone, "the replaced image {first} is still there");
}
