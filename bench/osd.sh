#!/usr/bin/env bash
# Object benchmark: 1 MDS and 3 OSDs (pool size 3) on this machine, driven
# through the object client (`aspen bench osd`), and in the same run fio on
# a local directory of the same disk: sequential writes and 4 KiB random
# writes, each made durable like the OSDs' (end_fsync / fsync per write).
# Appends a dated section with the ratios to bench/RESULTS.md.
#
# Three OSDs, the MDS and the client share this machine's cores, so each
# OSD runs one runtime thread (`--workers`, OSD_WORKERS=N to change it).
#
# Usage: bench/osd.sh            (OBJECTS=N SMALL_OPS=N to change the sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
OBJECTS=${OBJECTS:-64}
SMALL_OPS=${SMALL_OPS:-4000}
OSD_WORKERS=${OSD_WORKERS:-1}
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio; }
source bench/lib.sh osd
CONFIG=$OUT/mds/cluster.json
start_mds mds
for id in 0 1 2; do
  "$ASPEN" osd add --data "$OUT/osd$id" --id $id --host "host$id" --config "$CONFIG" --listen "127.0.0.1:$(free_port)" >/dev/null
  "$ASPEN" osd --data "$OUT/osd$id" --workers "$OSD_WORKERS" >"$OUT/osd$id.log" 2>&1 & pids+=($!)
done
until "$ASPEN" status --config "$CONFIG" | grep -q "3 osds: 3 up, 3 in"; do sleep 0.3; done
"$ASPEN" pool create data --pg-num 64 --size 3 --min-size 2 --config "$CONFIG" >/dev/null
until "$ASPEN" status --config "$CONFIG" | grep -q "pgs: 64: 64 active+clean"; do sleep 0.5; done
"$ASPEN" bench osd --config "$CONFIG" --objects "$OBJECTS" --small-ops "$SMALL_OPS" --depth 16 | tee "$OUT/aspen.txt"

FIO_DIR=$OUT/fio && mkdir -p "$FIO_DIR"
fio --name=seq --directory="$FIO_DIR" --rw=write --bs=4M --size=1G --end_fsync=1 --output-format=json >"$OUT/fio-seq.json"
fio --name=rand --directory="$FIO_DIR" --rw=randwrite --bs=4k --size=256M --ioengine=psync --fsync=1 \
    --numjobs=16 --group_reporting --time_based --runtime=15 --output-format=json >"$OUT/fio-rand.json"
fio_seq=$(python3 -c "import json; print(json.load(open('$OUT/fio-seq.json'))['jobs'][0]['write']['bw'] / 1024)")
fio_rand=$(python3 -c "import json; print(json.load(open('$OUT/fio-rand.json'))['jobs'][0]['write']['iops'])")
aspen_seq=$(awk -F'ops/s ' '/4 MiB object writes/ {print $2+0}' "$OUT/aspen.txt")
aspen_rand=$(awk -F': ' '/4 KiB random writes, depth 16/ {print $2+0}' "$OUT/aspen.txt")
{
  echo
  echo "## Objects (3 OSDs, pool size 3) — $(date -u +%Y-%m-%d)"
  echo
  machine_line "$OUT"
  echo "Command: \`OBJECTS=$OBJECTS SMALL_OPS=$SMALL_OPS OSD_WORKERS=$OSD_WORKERS bench/osd.sh\` (release; 1 MDS + 3 OSD processes, $OSD_WORKERS runtime thread(s) each, and the client on 127.0.0.1; every acknowledged write durable on all three OSDs)."
  echo
  echo '```'
  cat "$OUT/aspen.txt"
  printf 'fio local dir: sequential write (bs 4M, end_fsync) %.1f MiB/s; 4 KiB random write (psync, fsync each, 16 jobs) %.0f IOPS\n' "$fio_seq" "$fio_rand"
  echo '```'
  echo
  python3 -c "print(f'Ratios: Aspen 4 MiB writes / local fio sequential = {$aspen_seq / $fio_seq:.2f} (goal >= 0.30); Aspen 4 KiB random writes at depth 16 = {$aspen_rand:.0f} ops/s (goal >= 3000), {$aspen_rand / $fio_rand:.2f} of local fio with an fsync per write.')"
} >> bench/RESULTS.md
echo "appended to bench/RESULTS.md"
