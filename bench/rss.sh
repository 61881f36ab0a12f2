#!/usr/bin/env bash
# Memory of one server at the points issue 7 sets targets for: idle (empty),
# after 10 000 remembers, and after 5 000 lexical recalls with spreading
# (8 connections) on those memories. For each point: RSS, its anonymous part
# (heap) and file-backed part (binary, libraries), threads, and RocksDB's own
# accounting (memtables, block cache) from /metrics. Prints a markdown table.
#
#   bench/rss.sh
#   ENGRAM_SERVER__BLOCKING_THREADS=8 bench/rss.sh      # any ENGRAM_* passes through
#
# Only 127.0.0.1 and a scratch directory are used.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
start_engram

point() {
    local name="$1" kib anon file threads m
    sleep 2 # let background flushes settle
    kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
    file=$(awk '/^RssFile:/ {print $2}' "/proc/$pid/status")
    threads=$(awk '/^Threads:/ {print $2}' "/proc/$pid/status")
    m=$(curl -sf "$url/metrics")
    memtable=$(echo "$m" | awk '/^engram_rocksdb_bytes\{kind="memtable"\}/ {print $2}')
    cache=$(echo "$m" | awk '/^engram_rocksdb_bytes\{kind="block_cache_usage"\}/ {print $2}')
    printf '| %s | %d MiB (%.0f MB) | %d MiB | %d MiB | %d | %.1f MiB | %.1f MiB |\n' "$name" \
        $((kib / 1024)) "$(echo "$kib * 1024 / 1000000" | bc -l)" $((anon / 1024)) $((file / 1024)) \
        "$threads" "$(echo "${memtable:-0} / 1048576" | bc -l)" "$(echo "${cache:-0} / 1048576" | bc -l)"
}

printf '| point | RSS | anonymous | file-backed | threads | RocksDB memtables | RocksDB block cache |\n'
printf '|---|---|---|---|---|---|---|\n'
point "idle, empty"
"$bin" benchmark --url "$url" --workload remember --operations 10000 --concurrent 8 \
    --dataset-size 0 --space rss --output "$work/remember.json" 2>/dev/null
point "after 10 000 remembers"
"$bin" benchmark --url "$url" --workload mixed --read-ratio 1 --operations 5000 --concurrent 8 \
    --dataset-size 0 --space rss --output "$work/recall.json" 2>/dev/null
point "after 5 000 recalls (spreading, 8 connections)"
