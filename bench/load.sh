#!/usr/bin/env bash
# Load test: 1000 concurrent HTTP keep-alive connections, then 1000
# concurrent gRPC streams, against one Engram on loopback, with the
# server's RSS sampled every second. Prints a markdown table.
#
#   bench/load.sh                      # 30 s per phase
#   LOAD_SECONDS=60 bench/load.sh
#   bench/load.sh --soak               # + a 10-minute soak: RSS must stay flat
#   SOAK_WARMUP_SECONDS=180 SOAK_SECONDS=600 SOAK_RATE=1000 SOAK_EMBEDDING_DIM=384 bench/load.sh --soak
#
# The soak holds the dataset constant, so growth cannot pass for a leak (or
# hide one): a fresh space of 10 000 memories with embeddings, then the churn
# workload at an open-loop rate the server sustains: 80 % hybrid recall with
# spreading, and writes that alternate between remembering a new memory and
# forgetting the oldest. Its server runs with small memtables
# (SOAK_WRITE_BUFFER_MB, default 4 MiB per column family instead of 64), so
# their bounded fill-and-flush sawtooth does not hide a leak. The churn runs
# SOAK_WARMUP_SECONDS (allocator caches, memtables and the first
# compactions settle) and then SOAK_SECONDS measured. It passes when every
# per-second RSS sample of the measured part is within ±10 % of their
# median, its last minute's median is within 10 % of its first minute's (no
# trend), there are no errors and ≥ 95 % of the offered rate was served.
#
# Every loop is bounded in time and count; only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram/target}"
SECS="${LOAD_SECONDS:-30}"
SOAK=0
SOAK_SECONDS="${SOAK_SECONDS:-600}"
SOAK_WARMUP_SECONDS="${SOAK_WARMUP_SECONDS:-180}"
SOAK_RATE="${SOAK_RATE:-1000}"
SOAK_EMBEDDING_DIM="${SOAK_EMBEDDING_DIM:-384}"
SOAK_WRITE_BUFFER_MB="${SOAK_WRITE_BUFFER_MB:-4}"
[ "${1:-}" = "--soak" ] && SOAK=1
bin="$CARGO_TARGET_DIR/release/engram"
cargo build --release --workspace --all-targets --quiet

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
# Starts a server on a fresh data directory $1; sets pid, url, grpc.
start_server() {
    local log="$work/$1.log"
    ENGRAM_LOG_FORMAT=json "$bin" start --http-port 0 --grpc-port 0 --data-dir "$work/$1" 2>"$log" &
    pid=$!
    for _ in $(seq 1 300); do
        grep -q '"engram ready"' "$log" 2>/dev/null && break
        sleep 0.1
    done
    local http
    http=$(grep -o '"http":"127.0.0.1:[0-9]*"' "$log" | head -1 | grep -o '[0-9]*"$' | tr -d '"')
    grpc=$(grep -o '"grpc":"127.0.0.1:[0-9]*"' "$log" | head -1 | grep -o '[0-9]*"$' | tr -d '"')
    url="http://127.0.0.1:$http"
}
start_server data

rss() { awk '/^VmRSS:/ { printf "%d\n", $2 * 1024 }' "/proc/$pid/status"; }
# Samples RSS once a second into $1 while the given command runs.
# Also samples RocksDB's memtable plus block-cache bytes into $1.memtable
# (both bounded by configuration: memtables flush when full, the cache
# evicts at its capacity; growth there is not a leak).
memtable() {
    curl -sf "$url/metrics" |
        awk '/^engram_rocksdb_bytes\{kind="(memtable|block_cache_usage)"\}/ { t += $2 } END { print t + 0 }'
}
sampled() {
    local out="$1"; shift
    : >"$out"; : >"$out.memtable"
    ( for _ in $(seq 1 3600); do
        rss >>"$out" 2>/dev/null || break
        memtable >>"$out.memtable" 2>/dev/null || echo 0 >>"$out.memtable"
        sleep 1
    done ) &
    local sampler=$!
    "$@" || { kill "$sampler" 2>/dev/null; return 1; }
    kill "$sampler" 2>/dev/null || true
}

printf '| phase | connections | ops/s | p50 µs | p99 µs | p99.9 µs | max µs | errors | RSS start → peak → end (MiB) |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
row() {
    local name="$1" conns="$2" json="$3" samples="$4"
    python3 - "$name" "$conns" "$json" "$samples" <<'PY'
import json, sys
name, conns, path, samples = sys.argv[1:]
r = json.load(open(path))
l = r["latency_us"]
rss = [int(x) / 1048576 for x in open(samples).read().split()] or [0]
print(f"| {name} | {conns} | {r['ops_per_sec']:.0f} | {l['p50']} | {l['p99']} | {l['p999']} | {l['max']} | {r['errors']} | {rss[0]:.0f} → {max(rss):.0f} → {rss[-1]:.0f} |")
PY
}

sampled "$work/rss-http" "$bin" benchmark --url "$url" --workload mixed --concurrent 1000 \
    --duration "${SECS}s" --operations 100000000 --dataset-size 10000 --space load-http \
    --output "$work/http.json" 2>/dev/null
row "HTTP mixed 80/20" 1000 "$work/http.json" "$work/rss-http"
sampled "$work/rss-grpc" "$bin" benchmark --url "$url" --grpc --grpc-port "$grpc" --workload mixed \
    --concurrent 1000 --duration "${SECS}s" --operations 100000000 --dataset-size 0 --space load-http \
    --output "$work/grpc.json" 2>/dev/null
row "gRPC mixed 80/20" 1000 "$work/grpc.json" "$work/rss-grpc"

if [ "$SOAK" = 1 ]; then
    # A fresh server, so the 1000-connection phases' buffers do not count.
    kill -TERM "$pid"; wait "$pid" || true
    ENGRAM_STORAGE__WRITE_BUFFER_MB="$SOAK_WRITE_BUFFER_MB" start_server soak
    # Preload a fresh space (not measured), then the measured churn.
    "$bin" benchmark --url "$url" --workload recall-lexical --concurrent 16 --operations 1 \
        --dataset-size 10000 --embedding-dim "$SOAK_EMBEDDING_DIM" --space load-soak \
        --output "$work/soak-preload.json" 2>/dev/null
    sampled "$work/rss-soak" "$bin" benchmark --url "$url" --workload churn --concurrent 64 \
        --rate "$SOAK_RATE" --duration "$((SOAK_WARMUP_SECONDS + SOAK_SECONDS))s" --operations 100000000 \
        --dataset-size 0 --embedding-dim "$SOAK_EMBEDDING_DIM" --space load-soak \
        --output "$work/soak.json" 2>/dev/null
    row "soak: churn at $SOAK_RATE ops/s, ${SOAK_WARMUP_SECONDS} + ${SOAK_SECONDS} s" 64 "$work/soak.json" "$work/rss-soak"
    curl -sf "$url/api/v1/spaces/load-soak" >"$work/soak-space.json"
    python3 - "$work/rss-soak" "$work/soak.json" "$work/soak-space.json" "$SOAK_RATE" "$SOAK_WARMUP_SECONDS" <<'PY'
import json, statistics, sys
rss = [int(x) / 1048576 for x in open(sys.argv[1]).read().split()]
mem = [int(float(x)) / 1048576 for x in open(sys.argv[1] + ".memtable").read().split()]
report = json.load(open(sys.argv[2]))
space = json.load(open(sys.argv[3]))
rate = float(sys.argv[4])
warmup = int(sys.argv[5])
kept = report["ops_per_sec"] / rate
print(f"\nsoak: space holds {space['memories']} memories (10 000 preloaded), "
      f"{space.get('vector_tombstones', 0)} vector tombstones; served {kept:.0%} of the offered rate")
print(f"soak RSS each minute (MiB; the first {warmup // 60} are warm-up): " + " ".join(f"{rss[i]:.0f}" for i in range(0, len(rss), 60)) + f" {rss[-1]:.0f}")
n = min(len(rss), len(mem))
print("RocksDB memtables + block cache each minute (MiB): " + " ".join(f"{mem[i]:.0f}" for i in range(0, n, 60)))

def flat(series, name):
    # After the warm-up: every sample within ±10 % of the median, and the
    # last minute's median within 10 % of the first minute's.
    warm = series[warmup:]
    mid = statistics.median(warm)
    lo, hi = min(warm), max(warm)
    first, last = statistics.median(warm[:60]), statistics.median(warm[-60:])
    band = max(mid - lo, hi - mid) / mid * 100
    trend = (last - first) / first * 100
    print(f"{name} after warm-up: {lo:.0f}–{hi:.0f} MiB, median {mid:.0f}, "
          f"farthest sample {band:.1f} % from it (flat: ≤ 10 %); "
          f"first → last minute {first:.0f} → {last:.0f} MiB ({trend:+.1f} %)")
    return band <= 10 and abs(trend) <= 10

ok = flat(rss, "soak RSS")
# For diagnosis: without RocksDB's memtables and block cache (both bounded
# by configuration); sampled a few ms apart from RSS, so noisier.
flat([r - m for r, m in zip(rss[:n], mem[:n])], "soak RSS without memtables and block cache")
ok = ok and report["errors"] == 0 and kept >= 0.95
print("soak: " + ("flat, no leak" if ok else "FAILED"))
sys.exit(0 if ok else 1)
PY
fi
