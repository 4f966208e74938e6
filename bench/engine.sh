#!/usr/bin/env bash
# Storage-engine measurements for the OSD: Aspen's object store (segments +
# SQLite, BLAKE3-verified) against iroh-blobs' FsStore, in one run, with
# every write durable when it returns. Appends a dated section to
# bench/RESULTS.md.
#
# Usage: bench/engine.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/machine.sh
OUT=bench/out/engine
rm -rf "$OUT" && mkdir -p "$OUT"
cargo build --release --locked -q -p aspen-osd --example engine_bench
target/release/examples/engine_bench "$OUT/data" | tee "$OUT/results.txt"
{
  echo
  echo "## OSD storage engine — $(date -u +%Y-%m-%d)"
  echo
  machine_line "$OUT"
  echo "Command: \`bench/engine.sh\` (release; one process; 32 objects of 4 MiB; 4 KiB writes at random aligned offsets of them; depth 16 = 16 threads/tasks)."
  echo
  echo '```'
  cat "$OUT/results.txt"
  echo '```'
} >> bench/RESULTS.md
rm -rf "$OUT/data"
echo "appended to bench/RESULTS.md"
