#!/usr/bin/env bash
# Cold start with a large space, against its own baseline in the same run:
#   1. an empty server gets N plain-text memories over HTTP (64 connections);
#   2. SIGTERM (clean shutdown: drain, index snapshots, store flush), restart
#      and time spawn -> /health/ready (indexes read from the snapshots);
#   3. kill -9 (no snapshot can be written), restart and time spawn -> ready
#      (indexes rebuilt by scanning the store: the baseline);
#   4. lexical recall over HTTP (1 connection) after each restart.
# Prints a markdown table for docs/performance.md.
#
#   bench/coldstart.sh                        # 1 000 000 memories
#   COLDSTART_MEMORIES=100000 bench/coldstart.sh
#
# Only 127.0.0.1 and a scratch directory are used; every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram/target}"
N="${COLDSTART_MEMORIES:-1000000}"
say() { printf '==> %s\n' "$*" >&2; }
cargo build --release --workspace --all-targets --quiet
bin="$CARGO_TARGET_DIR/release/engram"

work=$(mktemp -d -p "${COLDSTART_DIR:-/tmp}" engram-coldstart.XXXXXX)
pid=""
cleanup() {
    [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
grpc=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"

# Starts the server (logs to $1); sets $ready_ms to the milliseconds from
# spawn to /health/ready = 200. Not for $(...): the server must stay a child.
start() {
    local log="$1" t0
    t0=$(date +%s%N)
    ENGRAM_LOG_FORMAT=json "$bin" start --data-dir "$work/data" --http-port "$port" \
        --grpc-port "$grpc" >/dev/null 2>"$log" &
    pid=$!
    for _ in $(seq 1 6000); do      # at most 10 minutes
        if curl -sf "$url/health/ready" >/dev/null 2>&1; then
            ready_ms=$((($(date +%s%N) - t0) / 1000000))
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; return 1; }
        sleep 0.1
    done
    echo "server not ready after 10 minutes" >&2
    return 1
}
field() { grep "\"$2\"" "$1" | head -1 | grep -o "\"$3\":[0-9]*" | head -1 | cut -d: -f2; }
rss_mib() { awk '/^VmRSS:/ { printf "%d", $2 / 1024 }' "/proc/$pid/status"; }

say "filling a space with $N memories over HTTP"
start "$work/fill.log"
"$bin" benchmark --url "$url" --workload remember --operations "$N" --concurrent 64 \
    --duration 3600s --dataset-size 0 --space cold --output "$work/fill.json" 2>/dev/null
du_mib=$(du -sm "$work/data" | cut -f1)

say "clean shutdown (SIGTERM), then restart"
t0=$(date +%s%N)
kill -TERM "$pid"; wait "$pid" || true
stop_ms=$((($(date +%s%N) - t0) / 1000000))
snap_bytes=$(field "$work/fill.log" "index snapshots written" bytes)
snap_ms=$(field "$work/fill.log" "index snapshots written" elapsed_ms)
start "$work/snap.log"
ready_snap=$ready_ms
load_snap=$(grep '"space loaded into memory"' "$work/snap.log" | grep '"space":"cold"' | grep -o '"elapsed_ms":[0-9]*' | cut -d: -f2)
from_snap=$(grep '"space loaded into memory"' "$work/snap.log" | grep '"space":"cold"' | grep -o '"from":"[a-z ]*"' | cut -d'"' -f4)
rss_snap=$(rss_mib)
pending() { curl -sf "$url/metrics" | awk '/^engram_rocksdb_bytes\{kind="pending_compaction"\}/ {printf "%d", $2 / 1048576}'; }
pending_snap=$(pending)
"$bin" benchmark --url "$url" --workload recall-lexical --operations 20000 --concurrent 1 \
    --duration 60s --dataset-size 0 --space cold --output "$work/recall-snap.json" 2>/dev/null

say "kill -9, then restart (no snapshot: rebuilt from the store)"
kill -KILL "$pid"; wait "$pid" 2>/dev/null || true
start "$work/scan.log"
ready_scan=$ready_ms
load_scan=$(grep '"space loaded into memory"' "$work/scan.log" | grep '"space":"cold"' | grep -o '"elapsed_ms":[0-9]*' | cut -d: -f2)
from_scan=$(grep '"space loaded into memory"' "$work/scan.log" | grep '"space":"cold"' | grep -o '"from":"[a-z ]*"' | cut -d'"' -f4)
rss_scan=$(rss_mib)
pending_scan=$(pending)
"$bin" benchmark --url "$url" --workload recall-lexical --operations 20000 --concurrent 1 \
    --duration 60s --dataset-size 0 --space cold --output "$work/recall-scan.json" 2>/dev/null

python3 - "$N" "$work/fill.json" "$work/recall-snap.json" "$du_mib" "$stop_ms" "${snap_ms:-0}" \
    "${snap_bytes:-0}" "$ready_snap" "${load_snap:-0}" "${from_snap:-?}" "$rss_snap" \
    "$ready_scan" "${load_scan:-0}" "${from_scan:-?}" "$rss_scan" "$work/recall-scan.json" \
    "${pending_snap:-?}" "${pending_scan:-?}" <<'PY'
import json, sys
a = sys.argv[1:]
n, fill, recall = int(a[0]), json.load(open(a[1])), json.load(open(a[2]))
du, stop_ms, snap_ms, snap_bytes = a[3], a[4], a[5], int(a[6])
ready_snap, load_snap, from_snap, rss_snap = int(a[7]), a[8], a[9], a[10]
ready_scan, load_scan, from_scan, rss_scan = int(a[11]), a[12], a[13], a[14]
recall_scan = json.load(open(a[15]))
pending_snap, pending_scan = a[16], a[17]
print("| measurement | result |")
print("|---|---|")
print(f"| fill: {n:,} remembers over HTTP, 64 connections | {fill['ops_per_sec']:.0f} ops/s, errors {fill['errors']}; data directory {du} MiB |")
print(f"| clean shutdown (SIGTERM → exit) | {stop_ms} ms, of which index snapshots {snap_ms} ms ({snap_bytes / 1048576:.0f} MiB) |")
print(f"| restart → ready, indexes from the snapshot | **{ready_snap} ms** (space load {load_snap} ms, from: {from_snap}); RSS {rss_snap} MiB |")
print(f"| restart → ready after kill -9, indexes rebuilt from the store (baseline) | {ready_scan} ms (space load {load_scan} ms, from: {from_scan}); RSS {rss_scan} MiB |")
print(f"| snapshot / rebuild, spawn → ready | {ready_snap / ready_scan:.2f} |")
for name, r, p in (("snapshot", recall, pending_snap), ("rebuild", recall_scan, pending_scan)):
    lat = r["latency_us"]
    print(f"| lexical recall right after the {name} restart, 1 connection (RocksDB compaction pending: {p} MiB) | p50 {lat['p50']} µs, p99 {lat['p99']} µs, errors {r['errors']} |")
PY
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
pid=""
