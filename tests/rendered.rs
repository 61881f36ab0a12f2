//! Executes what the deployment artifacts render: the Engram container of
//! each rendered StatefulSet (plain manifests and Helm variants) runs on the
//! real image with its command, args, env, user, read-only root, mounts and
//! the ConfigMap's `engram.toml`; every probe is called as the kubelet would;
//! the CronJobs and the Helm test pod run against it and must succeed; its
//! cluster membership must be on, named after the pod and advertising the
//! pod IP. The systemd unit's ExecStart runs too (inside the image, so its
//! fixed ports and paths touch nothing on the host).
//!
//! Each test has its own Docker network with a subnet of its own; the
//! StatefulSet's container gets a fixed address there that stands in for
//! `status.podIP`. Test traffic goes to loopback (published ports) and to
//! that network only: the gossip seeds are network aliases of the server
//! container, so their names resolve inside the network to the pod itself.
//!
//! Inputs: `ENGRAM_IMAGE` (an image from deployments/docker/build-local.sh)
//! and `ENGRAM_RENDERED_DIR` (JSON renderings written by `./x test`). Without
//! them each test prints a loud SKIPPED line.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::try_request;
use serde_json::Value;

fn inputs() -> Option<(String, PathBuf)> {
    match (
        std::env::var("ENGRAM_IMAGE"),
        std::env::var("ENGRAM_RENDERED_DIR"),
    ) {
        (Ok(i), Ok(d)) if !i.is_empty() && !d.is_empty() => Some((i, PathBuf::from(d))),
        _ => {
            eprintln!(
                "!!! SKIPPED: rendered-spec test needs ENGRAM_IMAGE and ENGRAM_RENDERED_DIR (./x test sets both when Docker answers)"
            );
            None
        }
    }
}

fn docker(args: &[String]) -> (bool, String, String) {
    let out = Command::new("docker").args(args).output().expect("docker");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

fn docker_ok(args: &[String]) -> String {
    let (ok, out, err) = docker(args);
    assert!(ok, "docker {args:?}: {err}");
    out
}

fn s(v: &str) -> String {
    v.to_owned()
}

/// Docker objects of one test, removed on drop.
struct Scope {
    prefix: String,
    network: String,
    /// The StatefulSet pod's fixed address on `network` (its `status.podIP`),
    /// outside the range Docker hands out to the other containers.
    pod_ip: String,
    containers: Vec<String>,
    volumes: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
}

/// This host's IPv4 routes as (network, netmask), the default route left out.
/// /proc/net/route prints each network-order address as a native integer.
fn host_routes() -> Vec<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let field = |i: usize| {
                f.get(i)
                    .and_then(|v| u32::from_str_radix(v, 16).ok())
                    .map(u32::from_be)
            };
            Some((field(1)?, field(7)?))
        })
        .filter(|&(_, mask)| mask != 0)
        .collect()
}

impl Scope {
    /// Creates the test's network on a private /24 derived from the process
    /// id and `name` (10.x.y.0/24 first), trying others while one overlaps a
    /// route of this host or a network Docker already has (a concurrent
    /// test's, say).
    fn new(name: &str) -> Scope {
        let prefix = format!("engram-rt-{}-{name}", std::process::id());
        let network = format!("{prefix}-net");
        let routes = host_routes();
        let seed = name.bytes().fold(std::process::id(), |h, b| {
            h.wrapping_mul(31).wrapping_add(u32::from(b))
        });
        let mut last_error = s("every candidate overlaps a route of this host");
        for attempt in 0u32..96 {
            let n = seed
                .wrapping_add(attempt.wrapping_mul(7919))
                .wrapping_mul(2_654_435_761);
            let (x, y) = ((n >> 24) & 0xff, (n >> 16) & 0xff);
            // 10.64-253.y.0 first (clear of the 10.0.x.x a LAN often uses);
            // 172.16-31.y.0 and 192.168.y.0 when a host routes all of 10/8.
            let net = match attempt / 32 {
                0 => (10 << 24) | ((64 + x % 190) << 16) | (y << 8),
                1 => (172 << 24) | ((16 + x % 16) << 16) | (y << 8),
                _ => (192 << 24) | (168 << 16) | (y << 8),
            };
            if routes.iter().any(|&(dst, mask)| {
                let m = mask & 0xffff_ff00;
                (dst & m) == (net & m)
            }) {
                continue;
            }
            let ip = |host: u32| std::net::Ipv4Addr::from(net | host).to_string();
            let (ok, _, err) = docker(&[
                s("network"),
                s("create"),
                s("--subnet"),
                format!("{}/24", ip(0)),
                // Docker assigns .128-.255; .10 stays free for the pod.
                s("--ip-range"),
                format!("{}/25", ip(128)),
                network.clone(),
            ]);
            if ok {
                return Scope {
                    prefix,
                    network,
                    pod_ip: ip(10),
                    containers: Vec::new(),
                    volumes: Vec::new(),
                    dirs: Vec::new(),
                };
            }
            last_error = err;
        }
        panic!("docker network create {network}: no usable /24 subnet: {last_error}");
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&[s("rm"), s("-f"), c.clone()]);
        }
        for v in &self.volumes {
            let _ = docker(&[s("volume"), s("rm"), s("-f"), v.clone()]);
        }
        let _ = docker(&[s("network"), s("rm"), self.network.clone()]);
    }
}

fn load(dir: &Path, file: &str) -> Vec<Value> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).expect("rendered JSON");
    v.as_array()
        .expect("a list of documents")
        .iter()
        .filter(|d| !d.is_null())
        .cloned()
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The pod's and container's user, group and hardening, as docker flags.
fn security_flags(pod: &Value, c: &Value) -> Vec<String> {
    let psc = &pod["securityContext"];
    let csc = &c["securityContext"];
    let uid = csc["runAsUser"]
        .as_u64()
        .or(psc["runAsUser"].as_u64())
        .expect("runAsUser set");
    let gid = csc["runAsGroup"]
        .as_u64()
        .or(psc["runAsGroup"].as_u64())
        .expect("runAsGroup set");
    assert!(uid != 0 && gid != 0, "runs as root");
    assert_eq!(csc["allowPrivilegeEscalation"], false);
    assert_eq!(csc["readOnlyRootFilesystem"], true);
    assert!(
        csc["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.iter().any(|x| x == "ALL")),
        "capabilities not dropped"
    );
    let mut f = vec![
        s("--user"),
        format!("{uid}:{gid}"),
        s("--read-only"),
        s("--cap-drop"),
        s("ALL"),
        s("--security-opt"),
        s("no-new-privileges"),
    ];
    if let Some(fs_group) = psc["fsGroup"].as_u64() {
        f.push(s("--group-add"));
        f.push(fs_group.to_string());
    }
    f
}

/// Env of a container as docker flags; downward-API values substituted as
/// the kubelet would for pod `pod_name` with IP `pod_ip`.
fn env_flags(c: &Value, pod_name: &str, pod_ip: Option<&str>) -> Vec<String> {
    let mut f = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().expect("env name");
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else {
            match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.name") => pod_name.to_owned(),
                Some("metadata.namespace") => "engram".to_owned(),
                Some("status.podIP") => pod_ip
                    .unwrap_or_else(|| {
                        panic!("env {name}: status.podIP of a pod without a fixed IP")
                    })
                    .to_owned(),
                other => panic!("env {name}: unsupported valueFrom {other:?}"),
            }
        };
        f.push(s("-e"));
        f.push(format!("{name}={value}"));
    }
    f
}

/// Runs the rendered StatefulSet's Engram container as its pod 0, at
/// `scope.pod_ip`; returns (container name, pod name, published HTTP
/// address, container spec).
fn run_statefulset(
    scope: &mut Scope,
    image: &str,
    docs: &[Value],
    aliases: &BTreeSet<String>,
) -> (String, String, std::net::SocketAddr, Value) {
    let sts = of_kind(docs, "StatefulSet");
    assert_eq!(sts.len(), 1, "one StatefulSet");
    let sts = sts[0];
    let pod = sts["spec"]["template"]["spec"].clone();
    let c = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "engram"))
        .expect("container engram")
        .clone();
    let pod_name = format!("{}-0", sts["metadata"]["name"].as_str().expect("sts name"));
    let mut args = vec![
        s("run"),
        s("-d"),
        s("--name"),
        format!("{}-{pod_name}", scope.prefix),
        s("--network"),
        scope.network.clone(),
        s("--ip"),
        scope.pod_ip.clone(),
        s("-p"),
        s("127.0.0.1::7432"),
    ];
    for a in aliases {
        args.push(s("--network-alias"));
        args.push(a.clone());
    }
    args.extend(security_flags(&pod, &c));
    args.extend(env_flags(&c, &pod_name, Some(&scope.pod_ip)));
    // Volumes: claims → docker volumes, ConfigMaps → files, emptyDirs → tmpfs.
    let volumes: Vec<Value> = pod["volumes"].as_array().cloned().unwrap_or_default();
    let claims: Vec<String> = sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().expect("mount name");
        let path = m["mountPath"].as_str().expect("mountPath");
        let ro = m["readOnly"] == true;
        if claims.iter().any(|c| c == name) {
            let v = format!("{}-{name}", scope.prefix);
            scope.volumes.push(v.clone());
            args.push(s("-v"));
            args.push(format!("{v}:{path}"));
            continue;
        }
        let vol = volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("volume {name} not defined"));
        if let Some(cm) = vol["configMap"]["name"].as_str() {
            let map = of_kind(docs, "ConfigMap")
                .into_iter()
                .find(|d| d["metadata"]["name"] == cm)
                .unwrap_or_else(|| panic!("ConfigMap {cm} not rendered"));
            let dir = tempfile::tempdir().expect("tempdir");
            for (k, v) in map["data"].as_object().expect("data") {
                let p = dir.path().join(k);
                std::fs::write(&p, v.as_str().expect("text")).expect("write");
                // Readable by the container's non-root user, like a ConfigMap volume.
                let _ = Command::new("chmod").arg("0644").arg(&p).status();
            }
            let _ = Command::new("chmod").arg("0755").arg(dir.path()).status();
            args.push(s("-v"));
            args.push(format!(
                "{}:{path}{}",
                dir.path().display(),
                if ro { ":ro" } else { "" }
            ));
            scope.dirs.push(dir);
        } else if vol.get("emptyDir").is_some() {
            args.push(s("--tmpfs"));
            args.push(path.to_owned());
        } else if vol.get("persistentVolumeClaim").is_some() {
            let v = format!("{}-{name}", scope.prefix);
            scope.volumes.push(v.clone());
            args.push(s("-v"));
            args.push(format!("{v}:{path}"));
        } else {
            panic!("volume {name}: unsupported kind {vol}");
        }
    }
    let command: Vec<String> = c["command"]
        .as_array()
        .expect("command set (the image has no shell)")
        .iter()
        .map(|x| x.as_str().expect("str").to_owned())
        .collect();
    args.push(s("--entrypoint"));
    args.push(command[0].clone());
    args.push(
        c["image"]
            .as_str()
            .map(|_| image.to_owned())
            .expect("image"),
    );
    args.extend(command[1..].iter().cloned());
    args.extend(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| x.as_str().expect("str").to_owned()),
    );
    let name = format!("{}-{pod_name}", scope.prefix);
    docker_ok(&args);
    scope.containers.push(name.clone());
    let port = docker_ok(&[s("port"), name.clone(), s("7432/tcp")]);
    let addr = port
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .expect("published")
        .parse()
        .expect("addr");
    (name, pod_name, addr, c)
}

/// Calls each probe like the kubelet: 2xx/3xx is success.
fn check_probes(name: &str, addr: std::net::SocketAddr, c: &Value) {
    let ports: Vec<(String, u64)> = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("").to_owned(),
                p["containerPort"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let p = &c[probe]["httpGet"];
        let path = p["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} is not an httpGet probe"));
        let port = match &p["port"] {
            Value::String(n) => ports.iter().find(|(pn, _)| pn == n).map(|(_, p)| *p),
            Value::Number(n) => n.as_u64(),
            _ => None,
        };
        assert_eq!(port, Some(7432), "{probe} port");
        let start = Instant::now();
        loop {
            let status = try_request(addr, "GET", path, &[], b"")
                .map(|r| r.status)
                .unwrap_or(0);
            if (200..400).contains(&status) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{probe} {path} never succeeded (last {status}); logs:\n{}",
                docker(&[s("logs"), name.to_owned()]).2
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert_eq!(
        c["livenessProbe"]["httpGet"]["path"], "/health/alive",
        "liveness must not depend on anything but the process"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/health/ready");
}

/// Runs a Job-like pod (CronJob template or Helm test pod) to completion.
fn run_to_completion(scope: &mut Scope, image: &str, pod: &Value, label: &str) -> String {
    let c = &pod["containers"][0];
    let mut args = vec![s("run"), s("--rm"), s("--network"), scope.network.clone()];
    args.extend(security_flags(pod, c));
    args.extend(env_flags(c, label, None));
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let path = m["mountPath"].as_str().expect("mountPath");
        let name = m["name"].as_str().expect("name");
        let vol = pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == name))
            .cloned()
            .unwrap_or(Value::Null);
        if vol.get("emptyDir").is_some() {
            args.push(s("--tmpfs"));
            args.push(path.to_owned());
        } else {
            let v = format!("{}-{label}-{name}", scope.prefix);
            scope.volumes.push(v.clone());
            // A fresh volume owned by the image's user, as fsGroup makes a
            // claim writable in Kubernetes: Docker copies the ownership of
            // the image's /data (65532) into an empty volume mounted there.
            docker_ok(&[
                s("run"),
                s("--rm"),
                s("-v"),
                format!("{v}:/data"),
                s("--entrypoint"),
                s("/usr/local/bin/engram"),
                image.to_owned(),
                s("version"),
            ]);
            args.push(s("-v"));
            args.push(format!("{v}:{path}"));
        }
    }
    let command: Vec<String> = c["command"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_else(|| vec![s("/usr/local/bin/engram")]);
    args.push(s("--entrypoint"));
    args.push(command[0].clone());
    args.push(image.to_owned());
    args.extend(command[1..].iter().cloned());
    args.extend(
        c["args"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_owned)),
    );
    let (ok, out, err) = docker(&args);
    assert!(ok, "{label} failed: {args:?}\n{out}\n{err}");
    format!("{out}\n{err}")
}

/// Host names the Job pods use to reach the server (`http://HOST:7432`).
fn url_hosts(docs: &[Value]) -> BTreeSet<String> {
    let text = serde_json::to_string(docs).expect("json");
    let mut hosts = BTreeSet::new();
    for part in text.split("http://").skip(1) {
        let host: String = part
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
            .collect();
        if !host.is_empty() && part[host.len()..].starts_with(":7432") {
            hosts.insert(host);
        }
    }
    hosts
}

/// Host names of the gossip seeds in the rendered `engram.toml`. As network
/// aliases of the server container they resolve to the pod itself (as the
/// headless Service's name resolves to every pod), inside the test network.
fn seed_hosts(docs: &[Value]) -> BTreeSet<String> {
    let mut hosts = BTreeSet::new();
    for cm in of_kind(docs, "ConfigMap") {
        let Some(text) = cm["data"]["engram.toml"].as_str() else {
            continue;
        };
        let t: toml::Table = toml::from_str(text).expect("engram.toml is TOML");
        let seeds = t
            .get("cluster")
            .and_then(|c| c.get("network"))
            .and_then(|n| n.get("seeds"))
            .and_then(|s| s.as_array());
        for seed in seeds.into_iter().flatten() {
            let seed = seed.as_str().expect("a seed is a string");
            let (host, _) = seed
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("seed {seed:?} is not host:port"));
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.parse::<std::net::IpAddr>().is_err() {
                hosts.insert(host.to_owned());
            }
        }
    }
    hosts
}

fn exercise(file: &str, expect_backup: bool) {
    let Some((image, dir)) = inputs() else { return };
    let docs = load(&dir, file);
    let mut scope = Scope::new(&file.replace(['.', '_'], "-"));
    let seeds = seed_hosts(&docs);
    assert!(
        !seeds.is_empty(),
        "{file}: the rendered engram.toml names no gossip seed host"
    );
    let mut aliases = url_hosts(&docs);
    aliases.extend(seeds);
    let (name, pod_name, addr, c) = run_statefulset(&mut scope, &image, &docs, &aliases);
    check_probes(&name, addr, &c);
    // Cluster membership runs as in the pod: the pod name is the node id and
    // the pod IP (never a wildcard) the advertised gossip address.
    let r = try_request(addr, "GET", "/cluster/health", &[], b"").expect("cluster health");
    assert_eq!(r.status, 200, "{}", r.text());
    let health = r.json();
    assert_eq!(
        health["enabled"], true,
        "{file}: cluster not enabled: {health}"
    );
    assert_eq!(health["node"]["node_id"], pod_name.as_str(), "{health}");
    assert_eq!(
        health["node"]["gossip_addr"],
        format!("{}:7946", scope.pod_ip),
        "{health}"
    );
    assert_eq!(
        health["node"]["http_addr"],
        format!("{}:7432", scope.pod_ip),
        "{health}"
    );
    println!(
        "{file}: /cluster/health succeeded: {pod_name} gossiping at {}, status {}",
        health["node"]["gossip_addr"], health["status"]
    );
    // It really serves. In a cluster the metadata group creates `default`
    // a moment after the pod is ready (here, one node and replication
    // factor 1: as soon as the node registered).
    let started = std::time::Instant::now();
    let r = loop {
        let r = try_request(
            addr,
            "POST",
            "/api/v1/memories/remember",
            &[("content-type", "application/json")],
            br#"{"content": "rendered and running"}"#,
        )
        .expect("remember");
        if r.status == 201 || started.elapsed() > std::time::Duration::from_secs(30) {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(r.status, 201, "{}", r.text());
    println!(
        "{file}: first write accepted {:.1} s after readiness",
        started.elapsed().as_secs_f64()
    );
    // The config map reached the server (log format json from engram.toml).
    let logs = docker(&[s("logs"), name.clone()]).2;
    assert!(
        logs.lines().any(|l| l.starts_with('{')),
        "JSON logs from the mounted engram.toml expected:\n{logs}"
    );

    let mut ran = Vec::new();
    for cj in of_kind(&docs, "CronJob") {
        let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        let label = cj["metadata"]["name"].as_str().expect("name").to_owned();
        let out = run_to_completion(&mut scope, &image, pod, &label);
        ran.push(label.clone());
        println!(
            "{file}: CronJob {label} succeeded: {}",
            out.trim().lines().last().unwrap_or("")
        );
    }
    assert!(
        ran.iter().any(|n| n.contains("consolidat")),
        "{file}: no consolidation CronJob ran: {ran:?}"
    );
    if expect_backup {
        assert!(
            ran.iter().any(|n| n.contains("backup")),
            "{file}: no backup CronJob ran: {ran:?}"
        );
    }
    for p in of_kind(&docs, "Pod") {
        if p["metadata"]["annotations"]["helm.sh/hook"] == "test" {
            run_to_completion(&mut scope, &image, &p["spec"], "helm-test");
            println!("{file}: helm test pod succeeded");
        }
    }
}

#[test]
fn plain_manifests_run_as_rendered() {
    exercise("kustomize.json", true);
}

#[test]
fn helm_default_values_run_as_rendered() {
    exercise("helm-default.json", false);
}

#[test]
fn helm_with_everything_enabled_runs_as_rendered() {
    exercise("helm-all.json", true);
}

#[test]
fn systemd_exec_start_runs_as_written() {
    let Some((image, _)) = inputs() else { return };
    let unit =
        std::fs::read_to_string(common::repo("deployments/systemd/engram.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let argv: Vec<String> = exec.split_whitespace().map(str::to_owned).collect();
    assert_eq!(argv[0], "/usr/local/bin/engram");
    let flag = |f: &str| {
        argv.iter()
            .position(|a| a == f)
            .and_then(|i| argv.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("ExecStart lacks {f}"))
    };
    let (data, config, port) = (flag("--data-dir"), flag("--config"), flag("--http-port"));
    let mut scope = Scope::new("systemd");
    let vol = format!("{}-state", scope.prefix);
    scope.volumes.push(vol.clone());
    // StateDirectory= hands the unit's user its state directory; a fresh
    // volume first mounted on the image's /data gets that ownership (65532).
    docker_ok(&[
        s("run"),
        s("--rm"),
        s("-v"),
        format!("{vol}:/data"),
        s("--entrypoint"),
        argv[0].clone(),
        image.clone(),
        s("version"),
    ]);
    let cfg = tempfile::tempdir().expect("tempdir");
    std::fs::copy(
        common::repo("deployments/systemd/engram.toml"),
        cfg.path()
            .join(Path::new(&config).file_name().expect("config file name")),
    )
    .expect("copy config");
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("a+rX")
        .arg(cfg.path())
        .status();
    let name = format!("{}-unit", scope.prefix);
    let mut args = vec![
        s("run"),
        s("-d"),
        s("--name"),
        name.clone(),
        s("--network"),
        scope.network.clone(),
        s("--read-only"),
        s("--tmpfs"),
        s("/tmp"),
        s("-p"),
        format!("127.0.0.1::{port}"),
        s("-v"),
        format!("{vol}:{data}"),
        s("-v"),
        format!(
            "{}:{}:ro",
            cfg.path().display(),
            Path::new(&config).parent().expect("dir").display()
        ),
        s("--entrypoint"),
        argv[0].clone(),
        image.clone(),
    ];
    args.extend(argv[1..].iter().cloned());
    docker_ok(&args);
    scope.containers.push(name.clone());
    scope.dirs.push(cfg);
    let published = docker_ok(&[s("port"), name.clone(), format!("{port}/tcp")]);
    let addr = published
        .lines()
        .find(|l| l.starts_with("127.0.0.1:"))
        .expect("published")
        .parse()
        .expect("addr");
    let start = Instant::now();
    while try_request(addr, "GET", "/health/ready", &[], b"")
        .map(|r| r.status)
        .unwrap_or(0)
        != 200
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ExecStart never got ready:\n{}",
            docker(&[s("logs"), name.clone()]).2
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGTERM, as systemd stops it (KillSignal=SIGTERM): a clean exit.
    docker_ok(&[s("stop"), s("-t"), s("40"), name.clone()]);
    assert_eq!(
        docker_ok(&[
            s("inspect"),
            s("-f"),
            s("{{.State.ExitCode}}"),
            name.clone()
        ]),
        "0"
    );
}
