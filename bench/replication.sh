#!/usr/bin/env bash
# Replication benchmark: three `engram` processes on loopback (RF 3) and one
# standalone node, started by this script, measured in one run:
#
#   - remember ops/s, p50 and p99 at 1 and 64 clients, against
#       standalone  a standalone node (space bench-standalone),
#       primary     the primary of space `bench` with --write-concern primary,
#       quorum      the same primary with --write-concern quorum;
#     interleaved (standalone, primary, quorum at 1 client, then the same at
#     64), so machine noise hits all three alike, and before every run the
#     replicas are drained (lag 0), so one run's backlog does not load the
#     next;
#   - catch-up rate: a replica (neither the primary nor node-0, the only
#     metadata voter) is killed with `kill -9`, BENCH_CATCHUP_RECORDS quorum
#     writes go to the primary, the replica restarts on its data directory;
#     records/s = the records it lacked / the time from its /health/ready
#     until the primary shows it in sync (max_lag_records 0). Also shown: the
#     time from its start, the primary's own
#     engram_replication_catchup_seconds, and where the shipped records were
#     read (engram_replication_records_shipped_total{source="ring"|"wal"});
#   - snapshot rate: the same replica is killed again, its data directory
#     wiped, a few quorum writes made, and it restarts empty: the primary
#     sends it a snapshot of `bench`. MB/s (10^6 bytes) =
#     engram_replication_snapshot_bytes_total{side="sent"} /
#     engram_replication_snapshot_seconds_sum{side="sent"} (deltas on the
#     primary), also bytes / wall time from /health/ready until in sync, and
#     the primary's `snapshot installed on the member` log line for `bench`.
#
# Targets (issue text): quorum at 64 clients >= 50 % of standalone ops/s;
# quorum p50 at 1 client < 2x standalone. Missing a target prints FAIL but
# exits 0 (this is a measurement); a setup failure (a node that does not
# start, a wait that times out) exits 1 with the node's log tail.
#
#   bench/replication.sh
#   BENCH_SECONDS=30 BENCH_OPS_64=50000 bench/replication.sh
#   BENCH_BIN=/path/to/engram bench/replication.sh      # no cargo build
#
# Knobs (environment):
#   BENCH_SECONDS          time limit of each measured run (20)
#   BENCH_OPS_1            operation limit at 1 client (2000)
#   BENCH_OPS_64           operation limit at 64 clients (20000)
#                          (a run stops at whichever limit comes first)
#   BENCH_WARMUP_OPS       unmeasured remembers per target first, 16 clients (500; 0: none)
#   BENCH_CATCHUP_RECORDS  quorum writes while the replica is down (20000)
#   BENCH_CATCHUP_CLIENTS  clients writing them (64)
#   BENCH_SNAPSHOT_EXTRA   more remembers into `bench` before the wipe, for a
#                          bigger image (0)
#   BENCH_SNAPSHOT_WRITES  quorum writes while the wiped replica is down (100)
#   BENCH_WAIT_SECONDS     bound on start-up and drain waits (60)
#   BENCH_CATCHUP_TIMEOUT  bound on the catch-up (writes and wait) and on
#                          draining the replicas between runs, s (600)
#   BENCH_SNAPSHOT_TIMEOUT bound on the snapshot install, s (600)
#   BENCH_OUT              directory for the raw JSON reports, the summary and
#                          the node logs (default: a new temporary directory,
#                          printed at the end; kept)
#   BENCH_DIR              parent of the scratch data directories (TMPDIR or
#                          /tmp; mind that a tmpfs makes fsync free)
#   BENCH_BIN              an engram binary to use instead of building
# Any ENGRAM_* variable exported applies to all four servers alike (e.g.
# ENGRAM_REPLICATION__RECENT_RECORDS_MB=1 makes the catch-up read the WAL).
#
# The cluster nodes get the environment of tests/replication.rs `node_env`
# (fast SWIM and metadata timings, RF 3, one zone per node), except that
# only node-0 votes in the metadata group (ENGRAM_METADATA_VOTERS=node-0:
# a wiped voter refuses to start) and the write timeout keeps its default.
# Only 127.0.0.1 is used; every wait is bounded in time; all four servers
# are stopped (TERM, then KILL) and the scratch directories removed at exit.
# Results go into docs/performance.md (replication section).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram/target}"
SECS="${BENCH_SECONDS:-20}"
OPS_1="${BENCH_OPS_1:-2000}"
OPS_64="${BENCH_OPS_64:-20000}"
WARMUP_OPS="${BENCH_WARMUP_OPS:-500}"
CATCHUP_RECORDS="${BENCH_CATCHUP_RECORDS:-20000}"
CATCHUP_CLIENTS="${BENCH_CATCHUP_CLIENTS:-64}"
SNAPSHOT_EXTRA="${BENCH_SNAPSHOT_EXTRA:-0}"
SNAPSHOT_WRITES="${BENCH_SNAPSHOT_WRITES:-100}"
WAIT="${BENCH_WAIT_SECONDS:-60}"
CATCHUP_TIMEOUT="${BENCH_CATCHUP_TIMEOUT:-600}"
SNAPSHOT_TIMEOUT="${BENCH_SNAPSHOT_TIMEOUT:-600}"
say() { printf '==> %s\n' "$*" >&2; }

if [ -n "${BENCH_BIN:-}" ]; then
    bin="$BENCH_BIN"
else
    cargo build --release --workspace --all-targets --quiet
    bin="$CARGO_TARGET_DIR/release/engram"
fi
[ -x "$bin" ] || { echo "no engram binary at $bin" >&2; exit 1; }

out="${BENCH_OUT:-}"
if [ -z "$out" ]; then out=$(mktemp -d -t engram-replication-bench.XXXXXX); fi
mkdir -p "$out"
work=$(mktemp -d -p "${BENCH_DIR:-${TMPDIR:-/tmp}}" engram-repl.XXXXXX)
mkdir -p "$work/home"

# ---- processes, cleanup ----
nodes=(node-0 node-1 node-2)
all=(standalone "${nodes[@]}")
declare -A PID=() HTTP=() GRPC=() SWIM=() DIR=() URL=()
stop_all() {
    local n p alive
    for n in "${!PID[@]}"; do
        p="${PID[$n]}"; [ -n "$p" ] && kill -TERM "$p" 2>/dev/null || true
    done
    for _ in $(seq 1 150); do # at most 15 s for a clean stop
        alive=0
        for n in "${!PID[@]}"; do
            p="${PID[$n]}"; [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1
        done
        ((alive)) || break
        sleep 0.1
    done
    for n in "${!PID[@]}"; do
        p="${PID[$n]}"; [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
cleanup() {
    stop_all
    mkdir -p "$out/logs" && cp "$work"/*.log "$out/logs/" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The log tails of the named nodes, then exit 1.
fail() {
    local msg="$1" n; shift
    echo "replication bench: $msg" >&2
    for n in "$@"; do
        echo "---- last lines of $n's log ----" >&2
        tail -n 40 "$work/$n.log" >&2 2>/dev/null || true
    done
    exit 1
}

# Free loopback ports, all held open at once so none is handed out twice:
# 8 TCP (HTTP and gRPC of four servers), then 3 UDP (gossip).
read -r -a ports <<<"$(python3 -c '
import socket
ss = [socket.socket() for _ in range(8)] + [socket.socket(type=socket.SOCK_DGRAM) for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
i=0
for n in "${all[@]}"; do
    HTTP[$n]="${ports[$i]}"; GRPC[$n]="${ports[$((i + 1))]}"; i=$((i + 2))
    URL[$n]="http://127.0.0.1:${HTTP[$n]}"
    DIR[$n]="$work/$n"
done
for j in 0 1 2; do SWIM[node-$j]="${ports[$((8 + j))]}"; done
seeds="127.0.0.1:${SWIM[node-0]},127.0.0.1:${SWIM[node-1]},127.0.0.1:${SWIM[node-2]}"

# tests/replication.rs `node_env`, with node-0 the only metadata voter.
cluster_env=(
    ENGRAM_CLUSTER__ENABLED=true
    ENGRAM_CLUSTER_SEEDS="$seeds"
    ENGRAM_METADATA_VOTERS=node-0
    ENGRAM_CLUSTER__NETWORK__PEER_BIND=127.0.0.1:0
    ENGRAM_CLUSTER__METADATA__HEARTBEAT_MS=100
    ENGRAM_CLUSTER__METADATA__ELECTION_TIMEOUT_MS=600
    ENGRAM_CLUSTER__SWIM__PROBE_PERIOD_MS=300
    ENGRAM_CLUSTER__SWIM__PROBE_RTT_MS=100
    ENGRAM_CLUSTER__SWIM__SUSPECT_TO_DOWN_MS=1500
    ENGRAM_CLUSTER__SWIM__GOSSIP_INTERVAL_MS=100
    ENGRAM_CLUSTER__SWIM__REJOIN_INTERVAL_MS=300
    ENGRAM_CLUSTER__REPLICATION__REPLICATION_FACTOR=3
    ENGRAM_CLUSTER__REPLICATION__REBALANCE_GRACE_MS=1500
    ENGRAM_CLUSTER__REPLICATION__BOOTSTRAP_WAIT_MS=20000
)

# Starts server $1 (standalone or node-i) on its data directory, its log
# appended to $work/$1.log. No user config file leaks in (HOME, XDG).
start_node() {
    local n="$1"
    mkdir -p "${DIR[$n]}"
    echo "---- bench/replication.sh: starting $n $(date -u +%FT%TZ) ----" >>"$work/$n.log"
    local common=(HOME="$work/home" ENGRAM_LOG_FORMAT=json ENGRAM_BIND=127.0.0.1)
    if [ "$n" = standalone ]; then
        env -u XDG_CONFIG_HOME -u RUST_LOG "${common[@]}" \
            "$bin" start --data-dir "${DIR[$n]}" --http-port "${HTTP[$n]}" --grpc-port "${GRPC[$n]}" \
            >/dev/null 2>>"$work/$n.log" &
    else
        env -u XDG_CONFIG_HOME -u RUST_LOG "${common[@]}" "${cluster_env[@]}" \
            ENGRAM_NODE_ID="$n" ENGRAM_CLUSTER__NETWORK__SWIM_BIND="127.0.0.1:${SWIM[$n]}" \
            ENGRAM_CLUSTER__ZONE="zone-$n" \
            "$bin" start --data-dir "${DIR[$n]}" --http-port "${HTTP[$n]}" --grpc-port "${GRPC[$n]}" \
            >/dev/null 2>>"$work/$n.log" &
    fi
    PID[$n]=$!
}
wait_ready() {
    local n="$1" end=$((SECONDS + WAIT))
    while ((SECONDS < end)); do
        curl -sf --max-time 2 "${URL[$n]}/health/ready" >/dev/null 2>&1 && return 0
        kill -0 "${PID[$n]}" 2>/dev/null || fail "$n exited during start-up" "$n"
        sleep 0.05
    done
    fail "$n not ready within $WAIT s" "$n"
}
kill9() {
    local n="$1"
    kill -KILL "${PID[$n]}" 2>/dev/null || true
    wait "${PID[$n]}" 2>/dev/null || true
    PID[$n]=""
}

# ---- JSON and metrics helpers (python3 reads; curl fetches) ----
cat >"$work/health.py" <<'PY'
# Reads GET /cluster/health on stdin; prints one answer line.
import json, sys
cmd, args = sys.argv[1], sys.argv[2:]
try:
    d = json.load(sys.stdin)
except Exception:
    d = {}
def assignment(space):
    for p in d.get("spaces") or []:
        if p.get("space") == space:
            return p.get("assignment")
    return None
entries = [e for e in d.get("replication") or [] if e.get("space") == (args[0] if args else None)]
if cmd == "replicas":   # replicas in the committed assignment of a space
    a = assignment(args[0])
    print(len(a.get("replicas") or []) if a else 0)
elif cmd == "primary":  # its primary's node id
    a = assignment(args[0])
    print((a or {}).get("primary") or "-")
elif cmd == "synced":   # this node leads the space: 3 copies, none lacks a record
    ok = (len(entries) >= 3 and d.get("max_lag_records") == 0
          and all(e.get("state") == "in_sync" and e.get("lag_records") == 0
                  for e in entries if e.get("role") != "primary"))
    print("yes" if ok else "no")
elif cmd == "copy":     # state, lag_records of one copy; max_lag_records
    e = next((e for e in entries if e.get("replica") == args[1]), None)
    print(e.get("state") if e else "none", e.get("lag_records") if e else -1,
          d.get("max_lag_records", -1))
PY
cat >"$work/metric.py" <<'PY'
# Sum of the samples of metric argv[1] whose labels contain argv[2], from
# /metrics on stdin (0 when absent).
import sys
name, label = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
total = 0.0
for line in sys.stdin:
    if line.startswith("#") or not line.strip():
        continue
    head, _, value = line.rstrip().rpartition(" ")
    if head.split("{", 1)[0] == name and label in head:
        try:
            total += float(value)
        except ValueError:
            pass
print(f"{total:.6f}")
PY
health() { local u="$1"; shift; { curl -sf --max-time 5 "$u/cluster/health" || true; } | python3 "$work/health.py" "$@"; }
metric() { { curl -sf --max-time 5 "$1/metrics" || true; } | python3 "$work/metric.py" "$2" "${3:-}"; }
now() { date +%s.%N; }

# `engram benchmark --workload remember --dataset-size 0` with the given
# flags; the report goes to $out/$1.json. Failed operations make the
# command exit 1 after writing its report: counted in the table, not fatal.
bench() {
    local name="$1"; shift
    rm -f "$out/$name.json"
    say "benchmark $name: $*"
    if ! "$bin" benchmark --workload remember --dataset-size 0 --output "$out/$name.json" "$@"; then
        [ -s "$out/$name.json" ] || fail "benchmark $name wrote no report" "${all[@]}"
        say "WARNING: $name had failed operations (see errors / first_error in $out/$name.json)"
    fi
}

# ---- start: one standalone node, three cluster nodes ----
cores=$(nproc)
say "starting a standalone node and three cluster nodes in $work"
for n in "${all[@]}"; do start_node "$n"; done
for n in "${all[@]}"; do wait_ready "$n"; done

say "waiting for space default on three copies (at most $WAIT s)"
end=$((SECONDS + WAIT))
while :; do
    ok=1
    for n in "${nodes[@]}"; do
        [ "$(health "${URL[$n]}" replicas default)" = 3 ] || { ok=0; break; }
    done
    ((ok)) && break
    ((SECONDS < end)) || fail "space default not on three copies within $WAIT s" "${nodes[@]}"
    sleep 0.2
done

say "creating space bench through node-0"
code=$(curl -s --max-time 10 -o "$work/create.json" -w '%{http_code}' -X POST \
    -H 'Content-Type: application/json' -d '{"id":"bench"}' "${URL[node-0]}/api/v1/spaces" || true)
[ "$code" = 201 ] || fail "creating space bench answered $code: $(cat "$work/create.json" 2>/dev/null)" node-0
end=$((SECONDS + WAIT))
while :; do
    ok=1
    for n in "${nodes[@]}"; do
        [ "$(health "${URL[$n]}" replicas bench)" = 3 ] || { ok=0; break; }
    done
    ((ok)) && break
    ((SECONDS < end)) || fail "space bench not assigned to three copies within $WAIT s" "${nodes[@]}"
    sleep 0.1
done
primary=$(health "${URL[node-0]}" primary bench)
[ -n "${URL[$primary]:-}" ] || fail "space bench has an unknown primary: $primary" "${nodes[@]}"
purl="${URL[$primary]}"
victim=""
for n in node-1 node-2; do [ "$n" != "$primary" ] && { victim="$n"; break; }; done
say "space bench led by $primary ($purl); the replica killed later: $victim"

# Until the primary shows three copies of bench, none lacking a record
# (a drain after writes: bounded like a catch-up).
wait_synced() {
    local end=$((SECONDS + CATCHUP_TIMEOUT))
    while [ "$(health "$purl" synced bench)" != yes ]; do
        ((SECONDS < end)) || fail "copies of bench not in sync within $CATCHUP_TIMEOUT s: $(curl -s --max-time 5 "$purl/cluster/health")" "${nodes[@]}"
        sleep 0.05
    done
}
wait_synced

# ---- throughput and latency ----
if ((WARMUP_OPS > 0)); then
    say "warm-up (not measured): $WARMUP_OPS remembers on each target"
    bench warmup-standalone --url "${URL[standalone]}" --space bench-standalone --concurrent 16 \
        --operations "$WARMUP_OPS" --duration 120s
    bench warmup-cluster --url "$purl" --space bench --write-concern quorum --concurrent 16 \
        --operations "$WARMUP_OPS" --duration 120s
    wait_synced
fi
for c in 1 64; do
    if [ "$c" = 1 ]; then ops="$OPS_1"; else ops="$OPS_64"; fi
    run=(--concurrent "$c" --operations "$ops" --duration "${SECS}s")
    bench "standalone-c$c" --url "${URL[standalone]}" --space bench-standalone "${run[@]}"
    bench "primary-c$c" --url "$purl" --space bench --write-concern primary "${run[@]}"
    wait_synced
    bench "quorum-c$c" --url "$purl" --space bench --write-concern quorum "${run[@]}"
    wait_synced
done

# ---- catch-up ----
say "catch-up: kill -9 $victim, $CATCHUP_RECORDS quorum writes, restart it"
ring0=$(metric "$purl" engram_replication_records_shipped_total 'source="ring"')
wal0=$(metric "$purl" engram_replication_records_shipped_total 'source="wal"')
cu_sum0=$(metric "$purl" engram_replication_catchup_seconds_sum)
cu_cnt0=$(metric "$purl" engram_replication_catchup_seconds_count)
kill9 "$victim"
bench catchup-writes --url "$purl" --space bench --write-concern quorum --concurrent "$CATCHUP_CLIENTS" \
    --operations "$CATCHUP_RECORDS" --duration "${CATCHUP_TIMEOUT}s"
read -r _ cu_records _ < <(health "$purl" copy bench "$victim") || true
[ "${cu_records:--1}" -gt 0 ] 2>/dev/null || fail "the primary shows no lag for $victim after the writes (lag ${cu_records:-?})" "$primary"
cu_spawn=$(now)
start_node "$victim"
wait_ready "$victim"
cu_ready=$(now)
end=$((SECONDS + CATCHUP_TIMEOUT))
while :; do
    read -r st lag max < <(health "$purl" copy bench "$victim") || true
    [ "${st:-}" = in_sync ] && [ "${lag:-}" = 0 ] && [ "${max:-}" = 0 ] && break
    ((SECONDS < end)) || fail "$victim did not catch up within $CATCHUP_TIMEOUT s (state ${st:-?}, lag ${lag:-?})" "$victim" "$primary"
    sleep 0.05
done
cu_done=$(now)
ring1=$(metric "$purl" engram_replication_records_shipped_total 'source="ring"')
wal1=$(metric "$purl" engram_replication_records_shipped_total 'source="wal"')
cu_sum1=$(metric "$purl" engram_replication_catchup_seconds_sum)
cu_cnt1=$(metric "$purl" engram_replication_catchup_seconds_count)
wait_synced

# ---- snapshot ----
if ((SNAPSHOT_EXTRA > 0)); then
    bench snapshot-preload --url "$purl" --space bench --write-concern quorum --concurrent 64 \
        --operations "$SNAPSHOT_EXTRA" --duration "${SNAPSHOT_TIMEOUT}s"
    wait_synced
fi
say "snapshot: kill -9 $victim, wipe its data directory, $SNAPSHOT_WRITES quorum writes, restart it"
sn_bytes0=$(metric "$purl" engram_replication_snapshot_bytes_total 'side="sent"')
sn_secs0=$(metric "$purl" engram_replication_snapshot_seconds_sum 'side="sent"')
sn_sent0=$(metric "$purl" engram_replication_snapshots_sent_total 'outcome="installed"')
kill9 "$victim"
rm -rf "${DIR[$victim]}"
mkdir -p "${DIR[$victim]}"
log_offset=$(stat -c %s "$work/$primary.log")
bench snapshot-writes --url "$purl" --space bench --write-concern quorum --concurrent 8 \
    --operations "$SNAPSHOT_WRITES" --duration 120s
sn_spawn=$(now)
start_node "$victim"
wait_ready "$victim"
sn_ready=$(now)
end=$((SECONDS + SNAPSHOT_TIMEOUT))
while :; do
    read -r st lag max < <(health "$purl" copy bench "$victim") || true
    if [ "${st:-}" = in_sync ] && [ "${lag:-}" = 0 ] && [ "${max:-}" = 0 ]; then
        sent=$(metric "$purl" engram_replication_snapshots_sent_total 'outcome="installed"')
        python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) > float(sys.argv[2]) else 1)' "$sent" "$sn_sent0" && break
    fi
    ((SECONDS < end)) || fail "$victim not reinstalled by snapshot within $SNAPSHOT_TIMEOUT s (state ${st:-?}, lag ${lag:-?})" "$victim" "$primary"
    sleep 0.05
done
sn_done=$(now)
sn_bytes1=$(metric "$purl" engram_replication_snapshot_bytes_total 'side="sent"')
sn_secs1=$(metric "$purl" engram_replication_snapshot_seconds_sum 'side="sent"')
sn_sent1=$(metric "$purl" engram_replication_snapshots_sent_total 'outcome="installed"')

# ---- report ----
python3 - "$out" "$work/$primary.log" "$log_offset" "$victim" "$primary" "$cores" "$SECS" \
    "cu_records=$cu_records" "cu_spawn=$cu_spawn" "cu_ready=$cu_ready" "cu_done=$cu_done" \
    "ring0=$ring0" "ring1=$ring1" "wal0=$wal0" "wal1=$wal1" \
    "cu_sum0=$cu_sum0" "cu_sum1=$cu_sum1" "cu_cnt0=$cu_cnt0" "cu_cnt1=$cu_cnt1" \
    "sn_spawn=$sn_spawn" "sn_ready=$sn_ready" "sn_done=$sn_done" \
    "sn_bytes0=$sn_bytes0" "sn_bytes1=$sn_bytes1" "sn_secs0=$sn_secs0" "sn_secs1=$sn_secs1" \
    "sn_sent0=$sn_sent0" "sn_sent1=$sn_sent1" <<'PY'
import json, sys
out, log, offset, victim, primary, cores, secs = sys.argv[1:8]
v = {k: float(x) for k, x in (a.split("=", 1) for a in sys.argv[8:])}
runs = {}
for who in ("standalone", "primary", "quorum"):
    for c in (1, 64):
        runs[(who, c)] = json.load(open(f"{out}/{who}-c{c}.json"))

print(f"\nMachine: {cores} cores; 3 cluster nodes + 1 standalone node + the client on it; "
      f"at most {secs} s per run; space bench led by {primary}.\n")
print("| run | clients | ops/s | p50 ms | p99 ms | ops/s ÷ standalone | p50 ÷ standalone | errors |")
print("|---|---|---|---|---|---|---|---|")
for c in (1, 64):
    base = runs[("standalone", c)]
    for who in ("standalone", "primary", "quorum"):
        r = runs[(who, c)]
        l = r["latency_us"]
        name = who if who == "standalone" else f"cluster, `{who}`"
        print(f"| {name} | {c} | {r['ops_per_sec']:.0f} | {l['p50'] / 1000:.2f} | {l['p99'] / 1000:.2f} "
              f"| {r['ops_per_sec'] / base['ops_per_sec']:.2f} | {l['p50'] / base['latency_us']['p50']:.2f} "
              f"| {r['errors']} |")

recs = v["cu_records"]
after_ready = v["cu_done"] - v["cu_ready"]
after_start = v["cu_done"] - v["cu_spawn"]
ring, wal = v["ring1"] - v["ring0"], v["wal1"] - v["wal0"]
cu_sum, cu_cnt = v["cu_sum1"] - v["cu_sum0"], v["cu_cnt1"] - v["cu_cnt0"]
rate = lambda n, s: n / s if s > 0 else float("inf")
print(f"\ncatch-up: {recs:.0f} records in {after_ready:.2f} s from /health/ready to in sync = "
      f"**{rate(recs, after_ready):.0f} records/s** ({after_start:.2f} s from the process start = "
      f"{rate(recs, after_start):.0f} records/s; engram_replication_catchup_seconds on the primary: "
      f"{cu_sum:.2f} s over {cu_cnt:.0f} catch-up(s) = {rate(recs, cu_sum):.0f} records/s); "
      f"shipped from the ring {ring:.0f}, from the WAL {wal:.0f}")

sn_bytes = v["sn_bytes1"] - v["sn_bytes0"]
sn_secs = v["sn_secs1"] - v["sn_secs0"]
sn_count = v["sn_sent1"] - v["sn_sent0"]
wall_ready = v["sn_done"] - v["sn_ready"]
wall_start = v["sn_done"] - v["sn_spawn"]
line = None
with open(log, "rb") as f:
    f.seek(int(offset))
    for raw in f:
        try:
            e = json.loads(raw)
        except ValueError:
            continue
        if (e.get("message") == "snapshot installed on the member" and e.get("space") == "bench"
                and e.get("peer") == victim):
            line = e
mb = sn_bytes / 1e6
print(f"snapshot: {mb:.1f} MB (uncompressed keys and values, {sn_count:.0f} snapshot(s) sent by the primary) "
      f"in {sn_secs:.2f} s streaming = **{rate(mb, sn_secs):.1f} MB/s**; "
      f"{wall_ready:.2f} s from /health/ready to in sync = {rate(mb, wall_ready):.1f} MB/s "
      f"({wall_start:.2f} s from the process start)")
if line:
    b, ms = float(line.get("bytes", 0)), float(line.get("elapsed_ms", 0))
    print(f"snapshot of bench alone (primary's log): {line.get('entries')} entries, {b / 1e6:.1f} MB "
          f"in {ms / 1000:.2f} s = {rate(b / 1e6, ms / 1000):.1f} MB/s")
else:
    print("snapshot of bench alone: no `snapshot installed on the member` line for it in the primary's log")

q64, s64 = runs[("quorum", 64)]["ops_per_sec"], runs[("standalone", 64)]["ops_per_sec"]
q1, s1 = runs[("quorum", 1)]["latency_us"]["p50"], runs[("standalone", 1)]["latency_us"]["p50"]
t1 = q64 >= 0.5 * s64
t2 = q1 < 2 * s1
print()
print(f"{'PASS' if t1 else 'FAIL'}: quorum at 64 clients {q64:.0f} ops/s >= 50 % of standalone "
      f"{s64:.0f} ops/s ({q64 / s64:.0%})")
print(f"{'PASS' if t2 else 'FAIL'}: quorum p50 at 1 client {q1 / 1000:.2f} ms < 2x standalone "
      f"{s1 / 1000:.2f} ms ({q1 / s1:.2f}x)")
errors = sum(r["errors"] for r in runs.values())
if errors:
    print(f"WARNING: {errors} failed operations in the measured runs (see the errors column)")

json.dump({
    "primary": primary, "victim": victim, "cores": int(cores), "seconds_per_run": float(secs),
    "runs": {f"{w}-c{c}": {"ops_per_sec": r["ops_per_sec"], "latency_us": r["latency_us"],
                          "errors": r["errors"]} for (w, c), r in runs.items()},
    "catchup": {"records": recs, "seconds_after_ready": after_ready, "seconds_after_start": after_start,
                "records_per_sec": rate(recs, after_ready), "catchup_seconds_metric": cu_sum,
                "shipped_ring": ring, "shipped_wal": wal},
    "snapshot": {"bytes": sn_bytes, "stream_seconds": sn_secs, "mb_per_sec": rate(mb, sn_secs),
                 "seconds_after_ready": wall_ready, "seconds_after_start": wall_start,
                 "snapshots": sn_count, "bench_log_line": line},
    "targets": {"quorum64_ge_half_standalone": t1, "quorum1_p50_lt_2x_standalone": t2},
}, open(f"{out}/summary.json", "w"), indent=2, default=str)
PY
echo
echo "raw JSON reports, summary.json and the node logs: $out"
