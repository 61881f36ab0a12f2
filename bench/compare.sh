#!/usr/bin/env bash
# Engram against baselines measured in the same run, on this machine:
#   - disk ceiling: write + fdatasync of 256-byte records (dd oflag=dsync) in the data dir
#   - HTTP ceiling: GET /health/alive on the same server (same axum stack, no storage work), wrk
#   - PostgreSQL 15 (Debian package), synchronous_commit=on, a `memories` table
#     with a GIN full-text index: INSERT at 1 and 64 clients (pgbench), full-text
#     top-10 on 100 000 documents; Engram remember (fsync before ack) and
#     lexical recall on 100 000 memories of the same vocabulary and lengths.
# Prints a markdown table of ratios (Engram / baseline) for docs/performance.md.
#
#   bench/compare.sh                 # 10 s per measurement
#   COMPARE_SECONDS=30 bench/compare.sh
#   COMPARE_BIN=/path/to/engram        # measure this binary instead of building
#   COMPARE_BEFORE_BIN=/path/to/older/engram bench/compare.sh
#                                    # also: the writes against an older build,
#                                    # alternating with this one (before/after rows)
#
# Needs: postgresql-15, wrk (installed when missing), python3. Only
# 127.0.0.1 and a scratch directory are used; everything is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/engram/target}"
SECS="${COMPARE_SECONDS:-10}"
DOCS="${COMPARE_DOCS:-100000}"
say() { printf '==> %s\n' "$*" >&2; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v pgbench >/dev/null || missing+=(postgresql-client-15)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
PGBIN=/usr/lib/postgresql/15/bin
if [ -n "${COMPARE_BIN:-}" ]; then
    bin="$COMPARE_BIN"    # a binary built earlier (e.g. a copy of a commit's build)
else
    cargo build --release --workspace --all-targets --quiet
    bin="$CARGO_TARGET_DIR/release/engram"
fi

# Under /tmp (or COMPARE_DIR): the postgres user must be able to reach it.
work=$(mktemp -d -p "${COMPARE_DIR:-/tmp}" engram-compare.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    if [ -f "$work/pg/postmaster.pid" ]; then pg_as "$PGBIN/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true; fi
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
# PostgreSQL refuses to run as root.
pg_as() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- machine facts and the disk ceiling ----
cores=$(nproc)
cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
say "disk ceiling: write + fdatasync of 256-byte records in $work"
disk=$(dd if=/dev/zero of="$work/dsync" bs=256 count=2000 oflag=dsync 2>&1 | awk '/copied/ { for (i=1;i<=NF;i++) if ($i ~ /^s,?$/) { print 2000 / $(i-1); exit } }')
rm -f "$work/dsync"

# ---- Engram ----
http=$(free_port); grpc=$(free_port)
"$bin" start --http-port "$http" --grpc-port "$grpc" --data-dir "$work/engram" 2>"$work/engram.log" &
pids+=($!)
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$http/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
url="http://127.0.0.1:$http"
bench() { "$bin" benchmark --url "$url" --duration "${SECS}s" --operations 100000000 "$@" 2>/dev/null; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

say "HTTP ceiling: wrk GET /health/alive, 64 connections; remember with the same client"
ceiling=$(wrk -t2 -c64 -d"${SECS}s" "$url/health/alive" | awk '/Requests\/sec/ {print $2}')
cat >"$work/remember.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"content": "alpha river stone cloud engine garden signal market winter copper"}'
LUA
wrk -t2 -c64 -d"${SECS}s" -s "$work/remember.lua" "$url/api/v1/memories/remember?space=default" >"$work/wrk-remember.txt"
if grep -q "Non-2xx" "$work/wrk-remember.txt"; then cat "$work/wrk-remember.txt" >&2; echo "remember answered errors" >&2; exit 1; fi
wrk_remember=$(awk '/Requests\/sec/ {print $2}' "$work/wrk-remember.txt")
say "Engram remember at 1 and 64 clients"
bench --workload remember --concurrent 1 --dataset-size 0 --space cmp-w1 --output "$work/e-w1.json"
bench --workload remember --concurrent 64 --dataset-size 0 --space cmp-w64 --output "$work/e-w64.json"
say "Engram: $DOCS memories, then lexical top-10"
"$bin" benchmark --url "$url" --workload remember --concurrent 64 --dataset-size 0 --space cmp-read \
    --operations "$DOCS" --duration 3600s --output "$work/e-load.json" 2>/dev/null
bench --workload recall-lexical --concurrent 1 --dataset-size 0 --space cmp-read --output "$work/e-r1.json"
bench --workload recall-lexical --concurrent 8 --dataset-size 0 --space cmp-read --output "$work/e-r8.json"

# ---- before / after (COMPARE_BEFORE_BIN) ----
# The same write measurements against an older binary, interleaved with
# this one (after, before, after, before) on fresh data directories, so
# machine noise hits both alike.
writes_of() {
    local b="$1" tag="$2" h g u
    h=$(free_port); g=$(free_port)
    rm -rf "$work/ba-$tag"
    "$b" start --http-port "$h" --grpc-port "$g" --data-dir "$work/ba-$tag" 2>"$work/ba-$tag.log" &
    local pid=$!
    for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$h/health/ready" >/dev/null 2>&1 && break; sleep 0.1; done
    u="http://127.0.0.1:$h"
    local w r1 r64
    w=$(wrk -t2 -c64 -d"${SECS}s" -s "$work/remember.lua" "$u/api/v1/memories/remember?space=default" | awk '/Requests\/sec/ {print $2}')
    "$bin" benchmark --url "$u" --duration "${SECS}s" --operations 100000000 --workload remember --concurrent 1 --dataset-size 0 --space ba1 --output "$work/ba-$tag-1.json" 2>/dev/null
    "$bin" benchmark --url "$u" --duration "${SECS}s" --operations 100000000 --workload remember --concurrent 64 --dataset-size 0 --space ba64 --output "$work/ba-$tag-64.json" 2>/dev/null
    r1=$(json "$work/ba-$tag-1.json" 'd["ops_per_sec"]')
    r64=$(json "$work/ba-$tag-64.json" 'd["ops_per_sec"]')
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$work/ba-$tag"
    echo "$w $r1 $r64"
}
before_after=""
if [ -n "${COMPARE_BEFORE_BIN:-}" ]; then
    say "before/after: writes against $COMPARE_BEFORE_BIN and this build, alternating"
    read -r a1w a1r1 a1r64 <<<"$(writes_of "$bin" a1)"
    read -r b1w b1r1 b1r64 <<<"$(writes_of "$COMPARE_BEFORE_BIN" b1)"
    read -r a2w a2r1 a2r64 <<<"$(writes_of "$bin" a2)"
    read -r b2w b2r1 b2r64 <<<"$(writes_of "$COMPARE_BEFORE_BIN" b2)"
    before_after=$(python3 - "$a1w" "$a1r1" "$a1r64" "$b1w" "$b1r1" "$b1r64" "$a2w" "$a2r1" "$a2r64" "$b2w" "$b2r1" "$b2r64" <<'PY'
import sys
v = [float(x) for x in sys.argv[1:]]
a = [(v[0] + v[6]) / 2, (v[1] + v[7]) / 2, (v[2] + v[8]) / 2]
b = [(v[3] + v[9]) / 2, (v[4] + v[10]) / 2, (v[5] + v[11]) / 2]
names = ["remember by wrk, 64 connections (req/s)", "remember, 1 client (ops/s)", "remember, 64 clients (ops/s)"]
print("\n| measurement (mean of two alternating runs) | this build | before | this / before |")
print("|---|---|---|---|")
for n, x, y in zip(names, a, b):
    print(f"| {n} | {x:.0f} | {y:.0f} | {x / y:.2f} |")
PY
)
fi

# ---- PostgreSQL ----
say "PostgreSQL 15: initdb, synchronous_commit=on"
pgport=$(free_port)
mkdir -p "$work/pg" && chown postgres "$work/pg" 2>/dev/null || true
pg_as "$PGBIN/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
pg_as "$PGBIN/pg_ctl" -D "$work/pg" -l "$work/pg/log" -w -o "-p $pgport -k $work/pg -c listen_addresses=127.0.0.1 -c synchronous_commit=on -c fsync=on -c max_connections=200 -c shared_buffers=256MB" start >/dev/null
PSQL=(pg_as psql -h 127.0.0.1 -p "$pgport" -U postgres -q -v ON_ERROR_STOP=1)
"${PSQL[@]}" -c "CREATE TABLE memories (id bigserial PRIMARY KEY, content text NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED);
  CREATE INDEX memories_tsv ON memories USING gin (tsv);"
# The vocabulary and length distribution of `engram benchmark`'s texts.
WORDS="alpha river stone cloud engine garden signal market winter copper forest harbor letter orbit pepper silver thunder violet canyon meadow rocket saddle tunnel velvet anchor bridge candle desert falcon glacier island jungle lantern mirror nectar oyster piano quartz ribbon shadow timber umbrella valley walnut yogurt zephyr beacon cactus dolphin ember"
arr=$(printf "'%s'," $WORDS); arr="ARRAY[${arr%,}]"
text_expr="(SELECT string_agg(($arr)[1 + floor(random() * 50)::int], ' ') FROM generate_series(1, 6 + floor(random() * 14)::int))"
cat >"$work/insert.sql" <<SQL
INSERT INTO memories (content) VALUES ($text_expr);
SQL
cat >"$work/query.sql" <<SQL
\set a random(1, 50)
\set b random(1, 50)
SELECT id FROM memories, plainto_tsquery('english', ($arr)[:a] || ' ' || ($arr)[:b]) q
  WHERE tsv @@ q ORDER BY ts_rank(tsv, q) DESC LIMIT 10;
SQL
chmod 644 "$work"/*.sql
pgb() { pg_as pgbench -h 127.0.0.1 -p "$pgport" -U postgres -n -T "$SECS" "$@" postgres; }
say "PostgreSQL INSERT at 1 and 64 clients"
pg_w1=$(pgb -c 1 -j 1 -f "$work/insert.sql" | awk '/^tps/ {print $3; exit}')
pg_w64=$(pgb -c 64 -j 2 -f "$work/insert.sql" | awk '/^tps/ {print $3; exit}')
say "PostgreSQL: $DOCS documents, then full-text top-10"
"${PSQL[@]}" -c "TRUNCATE memories" \
    -c "INSERT INTO memories (content) SELECT $text_expr FROM generate_series(1, $DOCS) g" \
    -c "VACUUM ANALYZE memories"
pgq() {
    local c="$1" dir="$work/pglog-$1"
    mkdir -p "$dir" && chown postgres "$dir" 2>/dev/null || true
    (cd "$dir" && pgb -c "$c" -j "$((c < 2 ? 1 : 2))" -f "$work/query.sql" -l --log-prefix="$dir/q" >/dev/null)
    # Per-transaction latency (µs) is the third column of pgbench's log.
    cat "$dir"/q* | python3 -c '
import sys
lat = sorted(int(l.split()[2]) for l in sys.stdin if l.strip())
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(len(lat) / float(sys.argv[1]), q(0.5), q(0.99))' "$SECS"
}
read -r pg_r1_tps pg_r1_p50 pg_r1_p99 <<<"$(pgq 1)"
read -r pg_r8_tps pg_r8_p50 pg_r8_p99 <<<"$(pgq 8)"

# ---- table ----
e_w1=$(json "$work/e-w1.json" 'd["ops_per_sec"]')
e_w64=$(json "$work/e-w64.json" 'd["ops_per_sec"]')
e_w1_p50=$(json "$work/e-w1.json" 'd["latency_us"]["p50"]')
e_r1=$(json "$work/e-r1.json" 'd["ops_per_sec"], d["latency_us"]["p50"], d["latency_us"]["p99"]' | tr -d '(),')
e_r8=$(json "$work/e-r8.json" 'd["ops_per_sec"], d["latency_us"]["p50"], d["latency_us"]["p99"]' | tr -d '(),')
errors=$(python3 -c 'import json,sys; print(sum(json.load(open(p))["errors"] for p in sys.argv[1:]))' "$work"/e-*.json)
python3 - "$cores" "$cpu" "$disk" "$ceiling" "$e_w1" "$e_w64" "$e_w1_p50" "$pg_w1" "$pg_w64" \
    "$e_r1" "$e_r8" "$pg_r1_tps" "$pg_r1_p50" "$pg_r1_p99" "$pg_r8_tps" "$pg_r8_p50" "$pg_r8_p99" "$DOCS" "$SECS" "$errors" "$wrk_remember" <<'PY'
import sys
(cores, cpu, disk, ceiling, e_w1, e_w64, e_w1_p50, pg_w1, pg_w64, e_r1, e_r8,
 pg_r1_tps, pg_r1_p50, pg_r1_p99, pg_r8_tps, pg_r8_p50, pg_r8_p99, docs, secs, errors, wrk_remember) = sys.argv[1:]
f = float
e_r1 = [f(x) for x in e_r1.split()]
e_r8 = [f(x) for x in e_r8.split()]
disk_us = 1e6 / f(disk)
print(f"Machine: {cores} cores ({cpu}); disk write+fdatasync of 256 B: {f(disk):.0f}/s ({disk_us:.0f} µs each); {secs} s per measurement; {docs} documents for recall; Engram errors: {errors}.\n")
print("| measurement | Engram | baseline | Engram / baseline |")
print("|---|---|---|---|")
print(f"| remember vs PostgreSQL INSERT, 1 client (ops/s) | {f(e_w1):.0f} | {f(pg_w1):.0f} | {f(e_w1)/f(pg_w1):.2f} |")
print(f"| remember vs PostgreSQL INSERT, 64 clients (ops/s) | {f(e_w64):.0f} | {f(pg_w64):.0f} | {f(e_w64)/f(pg_w64):.2f} |")
print(f"| remember vs HTTP ceiling (GET /health/alive), both by wrk with 64 connections (req/s) | {f(wrk_remember):.0f} | {f(ceiling):.0f} | {f(wrk_remember)/f(ceiling):.2f} |")
print(f"| remember p50 at 1 client vs one 256 B write+fdatasync (µs) | {f(e_w1_p50):.0f} | {disk_us:.0f} | {f(e_w1_p50)/disk_us:.2f} |")
print(f"| lexical top-10 vs PostgreSQL full-text top-10, 1 client: p50 µs | {e_r1[1]:.0f} | {f(pg_r1_p50):.0f} | {e_r1[1]/f(pg_r1_p50):.2f} |")
print(f"| same, p99 µs | {e_r1[2]:.0f} | {f(pg_r1_p99):.0f} | {e_r1[2]/f(pg_r1_p99):.2f} |")
print(f"| lexical top-10, 8 clients (ops/s) | {e_r8[0]:.0f} | {f(pg_r8_tps):.0f} | {e_r8[0]/f(pg_r8_tps):.2f} |")
print(f"| same, p99 µs | {e_r8[2]:.0f} | {f(pg_r8_p99):.0f} | {e_r8[2]/f(pg_r8_p99):.2f} |")
PY
[ -z "$before_after" ] || printf '%s\n' "$before_after"
