#!/usr/bin/env bash
# CPU profile of one server under a wrk load (perf sampling at 499 Hz, the
# release binary keeps its symbol names): where a workload's time goes.
# Prints the top symbols, the split by shared object and by thread.
#
#   bench/profile.sh remember          # POST remember, 64 connections
#   bench/profile.sh recall            # POST recall (lexical + spreading) on 10 000 memories
#   PROFILE_SECONDS=20 PROFILE_DATASET=1000000 bench/profile.sh recall
#
# Needs perf (Debian linux-perf) and wrk. Only 127.0.0.1 is used.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT="${1:-remember}"
SECS="${PROFILE_SECONDS:-10}"
DATASET="${PROFILE_DATASET:-10000}"
. bench/lib.sh
start_engram

case "$WHAT" in
remember)
    path="/api/v1/memories/remember?space=default"
    body='{"content": "alpha river stone cloud engine garden signal market winter copper"}'
    ;;
recall)
    "$bin" benchmark --url "$url" --workload remember --operations "$DATASET" --concurrent 64 \
        --duration 3600s \
        --dataset-size 0 --space default --output /dev/null 2>/dev/null
    path="/api/v1/memories/recall?space=default"
    body='{"cue": {"text": "river garden"}, "limit": 10, "spread": {"depth": 2}}'
    ;;
*) echo "usage: $0 remember|recall" >&2; exit 2 ;;
esac
cat >"$work/load.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA

wrk -t2 -c64 -d"$((SECS + 4))s" -s "$work/load.lua" "$url$path" >"$work/wrk.txt" &
wrk_pid=$!
sleep 2
perf record -q -F 499 -g -p "$pid" -o "$work/perf.data" -- sleep "$SECS" 2>/dev/null
wait "$wrk_pid"
if grep -q "Non-2xx" "$work/wrk.txt"; then cat "$work/wrk.txt" >&2; exit 1; fi
echo "## $WHAT: $(awk '/Requests\/sec/ {print $2}' "$work/wrk.txt") req/s with 64 connections (wrk), $SECS s sampled"
echo
echo "### by shared object"
perf report -i "$work/perf.data" --stdio --no-children --sort dso 2>/dev/null |
    grep -E '^ +[0-9]' | head -6
echo
echo "### by thread"
perf report -i "$work/perf.data" --stdio --no-children --sort comm 2>/dev/null |
    grep -E '^ +[0-9]' | head -8
echo
echo "### top symbols (self time)"
perf report -i "$work/perf.data" --stdio --no-children --sort sym 2>/dev/null |
    grep -E '^ +[0-9]' | head -40
