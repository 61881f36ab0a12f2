//! The task runner `./x`, without building anything: under `X_DRY_RUN=1`,
//! `./x run` and `./x install` print the commands they would execute
//! ("+ " and shell-quoted words). The operator's flags must win over x's
//! defaults (`./x run --data-dir D` once failed: x passed its own
//! `--data-dir` too, and clap rejects a flag given twice), and `./x install`
//! must put the binary at PREFIX/bin/engram and say how to reach it.
//!
//! As a guard against a broken dry run, `cargo`, `dpkg`, `apt-get` and
//! `sudo` are stubs that fail loudly, and `CARGO_TARGET_DIR` names a
//! directory that does not exist: nothing can build, install packages or
//! start a server.

mod common;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The fake `CARGO_TARGET_DIR` every run gets.
const TARGET: &str = "/nonexistent/engram-x-script-target";

/// A directory of failing stubs for the tools a real build would call.
struct Stubs(PathBuf);

impl Stubs {
    fn new() -> Stubs {
        // One directory per use: the tests run in parallel threads.
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("engram-x-script-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create stub dir");
        for tool in ["cargo", "dpkg", "apt-get", "sudo"] {
            let path = dir.join(tool);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\necho \"x_script stub: X_DRY_RUN ran {tool} $*\" >&2\nexit 97\n"
                ),
            )
            .expect("write stub");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod stub");
        }
        Stubs(dir)
    }
}

impl Drop for Stubs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The stub directory, then `front`, then the inherited PATH without
/// `without`.
fn path_with(stubs: &Path, front: Option<&Path>, without: &Path) -> OsString {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = vec![stubs.to_path_buf()];
    dirs.extend(front.map(Path::to_path_buf));
    dirs.extend(std::env::split_paths(&inherited).filter(|p| p != without));
    std::env::join_paths(dirs).expect("join PATH")
}

/// Runs `./x ARGS` under `X_DRY_RUN=1`: (exit code, stdout, stderr).
fn x_dry(args: &[&str], env: &[(&str, &str)], path: OsString) -> (i32, String, String) {
    let mut cmd = Command::new(common::repo("x"));
    cmd.args(args)
        .env("X_DRY_RUN", "1")
        .env("CARGO_TARGET_DIR", TARGET)
        .env("PATH", path)
        .env_remove("ENGRAM_DATA_DIR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run ./x");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("x_script stub"),
        "./x {args:?} under X_DRY_RUN=1 ran a build tool:\n{stderr}"
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// `./x run ARGS` under `X_DRY_RUN=1`: the words after `engram start`.
fn run_dry(args: &[&str], env: &[(&str, &str)]) -> String {
    let stubs = Stubs::new();
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let path = path_with(&stubs.0, None, Path::new("/nonexistent"));
    let (code, out, err) = x_dry(&all, env, path);
    assert_eq!(code, 0, "./x {all:?}:\n{out}{err}");
    let start = format!("+ {TARGET}/release/engram start");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with(&start)).collect();
    assert_eq!(lines.len(), 1, "one `engram start` line expected:\n{out}");
    lines[0][start.len()..].trim_start().to_owned()
}

/// How often the flag `word` occurs among the words, as `word` or `word=…`.
fn count(haystack: &str, word: &str) -> usize {
    haystack
        .split(' ')
        .filter(|w| *w == word || w.starts_with(&format!("{word}=")))
        .count()
}

#[test]
fn run_data_dir_flag_replaces_the_default() {
    for args in [
        &["--data-dir", "/tmp/d"][..],
        &["--http-port", "8000", "--data-dir", "/tmp/d"][..],
    ] {
        let rest = run_dry(args, &[]);
        assert_eq!(count(&rest, "--data-dir"), 1, "{args:?} gave: {rest}");
        assert!(rest.contains("--data-dir /tmp/d"), "{args:?} gave: {rest}");
        assert!(!rest.contains("engram-data"), "{args:?} gave: {rest}");
    }
    let rest = run_dry(&["--data-dir=/tmp/d"], &[]);
    assert_eq!(rest, "--data-dir=/tmp/d");
    // A data dir in the environment is no flag: the user's flag still wins.
    let rest = run_dry(
        &["--data-dir", "/tmp/d"],
        &[("ENGRAM_DATA_DIR", "/tmp/env")],
    );
    assert_eq!(rest, "--data-dir /tmp/d");
}

#[test]
fn run_without_flags_uses_the_repository_data_dir() {
    let rest = run_dry(&[], &[]);
    let dir = rest
        .strip_prefix("--data-dir ")
        .unwrap_or_else(|| panic!("no default --data-dir: {rest}"));
    assert!(
        dir.starts_with('/') && dir.ends_with("/engram-data"),
        "{rest}"
    );
    if !dir.contains('\\') {
        let parent = Path::new(dir).parent().expect("parent");
        assert_eq!(
            parent.canonicalize().expect("data dir parent"),
            common::repo("").canonicalize().expect("repo root"),
            "the default data dir is not in the repository root: {rest}"
        );
    }
    // Other flags keep the default and follow it.
    let rest = run_dry(&["--http-port", "0", "--grpc-port", "0"], &[]);
    assert_eq!(count(&rest, "--data-dir"), 1, "{rest}");
    assert!(
        rest.ends_with("/engram-data --http-port 0 --grpc-port 0"),
        "{rest}"
    );
    // ENGRAM_DATA_DIR (engram's own variable) replaces the default.
    assert_eq!(
        run_dry(&[], &[("ENGRAM_DATA_DIR", "/tmp/env")]),
        "--data-dir /tmp/env"
    );
    // A config file's data_dir applies: x adds no --data-dir.
    assert_eq!(run_dry(&["--config", "my.toml"], &[]), "--config my.toml");
}

#[test]
fn install_copies_to_prefix_bin_and_prints_the_path_line() {
    let stubs = Stubs::new();
    let bin = Path::new("/tmp/p/bin");
    let copy = format!("+ install -D -m 0755 {TARGET}/release/engram /tmp/p/bin/engram");

    for args in [
        &["install", "--prefix", "/tmp/p"][..],
        &["install", "--prefix=/tmp/p"][..],
    ] {
        let (code, out, err) = x_dry(args, &[], path_with(&stubs.0, None, bin));
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.lines()
                .any(|l| l == "+ cargo build --release --workspace --all-targets"),
            "no release build line:\n{out}"
        );
        assert!(
            out.lines().any(|l| l == copy),
            "no copy to /tmp/p/bin/engram:\n{out}"
        );
        assert!(
            out.lines().any(|l| l == "export PATH=\"/tmp/p/bin:$PATH\""),
            "/tmp/p/bin is off PATH, yet no export line:\n{out}"
        );
    }

    // On PATH already: no export line.
    let (code, out, err) = x_dry(
        &["install", "--prefix", "/tmp/p"],
        &[],
        path_with(&stubs.0, Some(bin), bin),
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l == copy), "{out}");
    assert!(!out.contains("export PATH"), "{out}");

    // Default prefix: $HOME/.local.
    let (code, out, err) = x_dry(
        &["install"],
        &[("HOME", "/tmp/engram-x-home")],
        path_with(&stubs.0, None, Path::new("/tmp/engram-x-home/.local/bin")),
    );
    assert_eq!(code, 0, "{out}{err}");
    let copy = format!(
        "+ install -D -m 0755 {TARGET}/release/engram /tmp/engram-x-home/.local/bin/engram"
    );
    assert!(out.lines().any(|l| l == copy), "{out}");

    // Usage errors exit 2 before building.
    for args in [&["install", "--prefix"][..], &["install", "--bogus"][..]] {
        let (code, out, err) = x_dry(args, &[], path_with(&stubs.0, None, bin));
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(!out.contains("cargo build"), "{args:?}: {out}");
    }
}
