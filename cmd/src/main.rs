//! `engram`: the server (`engram start`) and the command-line tool that
//! talks to it over HTTP (`status`, `remember`, `recall`, `get`, …) or
//! works on a stopped server's data directory (`restore`).

mod benchmark;
mod client;
mod commands;
mod config;
mod config_replication;
mod listener;
mod lock;
mod logging;
mod memories;
mod server;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Memory database for AI agents.
#[derive(Debug, Parser)]
#[command(name = "engram", version = engram_api::VERSION, about, propagate_version = true)]
struct Cli {
    /// Config file (default: /config/engram.toml, else $XDG_CONFIG_HOME/engram/config.toml, if present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server until SIGTERM or SIGINT.
    Start(StartArgs),
    /// Asks a server whether it is ready. Exit code 0: ready; 1: answering
    /// but not ready or unhealthy; 3: unreachable; 4: ready, but a copy of a
    /// space it leads lags beyond [replication] lag_alert_records or
    /// lag_alert_seconds.
    Status {
        /// Print the server's JSON report.
        #[arg(long)]
        json: bool,
        /// Exit 0 when ready even if a copy lags (for health checks, which
        /// are about this node, not its replicas).
        #[arg(long)]
        ignore_lag: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Stores a memory; prints its id.
    Remember(memories::RememberArgs),
    /// Recalls memories by a text cue, with spreading activation.
    Recall(memories::RecallArgs),
    /// Shows one memory.
    Get(memories::GetArgs),
    /// Finds memories by text (lexical ranking, no spreading activation).
    Search(memories::SearchArgs),
    /// Links two memories with an association from FROM to TO.
    Link(memories::LinkArgs),
    /// Forgets a memory (record, index entries and edges).
    Forget {
        /// Memory id.
        id: String,
        #[command(flatten)]
        target: SpaceTarget,
    },
    /// Creates, lists or deletes memory spaces.
    Space {
        #[command(subcommand)]
        action: SpaceAction,
    },
    /// Merges similar memories of a space into concepts.
    Consolidate {
        /// Similarity in (0, 1] above which memories merge (default: the server's config).
        #[arg(long)]
        threshold: Option<f32>,
        #[command(flatten)]
        target: SpaceTarget,
    },
    /// Takes an online backup of a running server into a new directory under DIR.
    Backup {
        /// Directory that receives `engram-backup-<time>/`.
        #[arg(long, value_name = "DIR")]
        output: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Restores a backup into an empty data directory (server stopped).
    Restore {
        /// A backup directory written by `engram backup`.
        #[arg(long, value_name = "DIR")]
        input: PathBuf,
        /// The data directory to create.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
    },
    /// Validates the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Prints the version.
    Version,
    /// Measures throughput and latency: embedded, or against a server over HTTP or gRPC.
    Benchmark(benchmark::BenchArgs),
}

#[derive(Debug, Args)]
struct StartArgs {
    /// HTTP port.
    #[arg(long)]
    http_port: Option<u16>,
    /// gRPC port.
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Address to bind (default 127.0.0.1; containers use 0.0.0.0).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Data directory (default ./engram-data).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Start even if the WAL is damaged before its tail: cut the log at the
    /// damage and move the rest aside to wal/corrupt/ (see docs/storage.md).
    /// Acknowledged writes after the damage are lost; use only when no
    /// replica or backup can restore them.
    #[arg(long)]
    repair: bool,
}

#[derive(Debug, Args)]
struct Target {
    /// Server URL (default: http://127.0.0.1:<server.http_port> from the configuration).
    #[arg(long, env = "ENGRAM_URL")]
    url: Option<String>,
}

#[derive(Debug, Args)]
struct SpaceTarget {
    /// Memory space (default `default`).
    #[arg(long)]
    space: Option<String>,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Subcommand)]
enum SpaceAction {
    /// Creates a space.
    Create {
        /// Name: 1–63 of a-z 0-9 _ -, starting with a letter or digit.
        name: String,
        /// Fixes the embedding dimension.
        #[arg(long)]
        embedding_dim: Option<u32>,
        #[command(flatten)]
        target: Target,
    },
    /// Lists spaces with their figures.
    List {
        /// Print the JSON answer.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Deletes a space and every memory in it.
    Delete {
        /// Name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Loads and validates the layered configuration; exit 1 with the key on error.
    Check {
        /// Print the effective configuration as TOML.
        #[arg(long)]
        print: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("engram: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
