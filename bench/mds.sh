#!/usr/bin/env bash
# Metadata benchmark: creates/s, stats/s and unlinks/s of empty files with 1
# and 3 MDS members at concurrency 1 and 16, and serial create latency
# (p50/p99), on this machine. Appends a dated section to bench/RESULTS.md.
# The members and the client share this machine's cores, so each member
# runs one runtime thread (`aspen mds --workers`, MDS_WORKERS=N to change it).
#
# Usage: bench/mds.sh            (FILES=N to change the files per run)
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-5000}
MDS_WORKERS=${MDS_WORKERS:-1}
source bench/lib.sh mds
CONFIG=$OUT/mds1/cluster.json
start_mds mds1

run() { "$ASPEN" bench mds --config "$CONFIG" --files "$FILES" --concurrency "$1" | tee -a "$OUT/results.txt"; }
run 1
run 16
for id in 2 3; do
  "$ASPEN" mds join --data "$OUT/mds$id" --listen "127.0.0.1:$(free_port)" --id "$id" --config "$CONFIG" --workers "$MDS_WORKERS" >"$OUT/mds$id.log" 2>&1 & pids+=($!)
  until grep -q "\"raft_id\": $id" "$CONFIG"; do sleep 0.3; done
done
until "$ASPEN" status --config "$CONFIG" | grep -q "3 of 3 members up"; do sleep 0.3; done
run 1
run 16

{
  echo
  echo "## Metadata service — $(date -u +%Y-%m-%d)"
  echo
  machine_line "$OUT"
  echo "Command: \`FILES=$FILES bench/mds.sh\` (release build; MDS members, each on $MDS_WORKERS runtime thread(s), and the client on 127.0.0.1; empty files in a fresh directory)."
  echo
  echo "| members | concurrency | creates/s | stats/s | unlinks/s | serial create p50 | p99 |"
  echo "|---|---|---|---|---|---|---|"
  sed -E 's/members ([0-9]+) files [0-9]+ concurrency ([0-9]+): creates\/s ([0-9]+) stats\/s ([0-9]+) unlinks\/s ([0-9]+) serial create p50 ([0-9.]+) ms p99 ([0-9.]+) ms/| \1 | \2 | \3 | \4 | \5 | \6 ms | \7 ms |/' "$OUT/results.txt"
} >> bench/RESULTS.md
echo "appended to bench/RESULTS.md"
