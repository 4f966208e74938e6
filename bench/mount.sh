#!/usr/bin/env bash
# Mount benchmark: the same workloads, in one run, on a local directory of
# this disk, on an Aspen mount (`aspen up`: 1 MDS + 3 OSDs, pool size 3), and
# on CephFS through ceph-fuse when the Ceph peer comes up (3 OSDs, size 3).
#
#   fio    1 GiB sequential write (bs 1M, end_fsync) and cold read;
#          4 KiB random write and cold random read, psync, 4 jobs over
#          4 x 256 MiB files laid out beforehand, RUNTIME s each; buffered
#          (randwrite with end_fsync) and O_DIRECT
#   meta   10,000 empty files in one directory: create, stat, unlink per
#          second with 1 and with 4 processes (bench/fsops.py)
#   small  2,000 x 64 KiB files written (syncfs, then an fsync of each, at
#          the end: durable when the clock stops) and read cold
#
# Every workload starts on a quiet machine: it waits (up to SETTLE_MAX s)
# until the cores are at least 90% idle over a second, so background work
# left by the one before (Aspen's garbage collection after a delete, Ceph's
# PG deletes) does not land in a later row, and with the disk's freed space
# trimmed (fstrim), so no workload reads behind another's deletes; each
# target starts after a pause of TARGET_PAUSE s, for the disk's host to write
# back what ran before. A workload's own work is all inside it: each ends
# durable (end_fsync, fsync).
# "cold": sync and drop the kernel caches; for Ceph also drop the OSD caches
# and remount ceph-fuse (its own cache survives drop_caches). Aspen's client
# keeps no data cache of its own.
# Appends a dated table with ratios to bench/RESULTS.md.
#
# Usage: bench/mount.sh [local] [aspen] [ceph]     (default: all three)
#        RUNTIME=20 SETTLE_MAX=60 TARGET_PAUSE=60 CEPH_PEER=../shared/peers/ceph
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
RUNTIME=${RUNTIME:-20}
SETTLE_MAX=${SETTLE_MAX:-60}
TARGET_PAUSE=${TARGET_PAUSE:-60}
CEPH_PEER=$(realpath -m "${CEPH_PEER:-../shared/peers/ceph}")
CEPH_DIR=/mnt/cephfs/aspen-bench
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=(local aspen ceph)
[[ $(id -u) == 0 ]] || { echo "run as root (drop_caches, mounts)" >&2; exit 1; }
command -v fio >/dev/null || { apt-get update -qq && apt-get install -y -qq fio; }
source bench/lib.sh mount
RESULTS=$OUT/results && mkdir -p "$RESULTS"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

source bench/aspen_up.sh
trap 'stop_aspen; cleanup' EXIT

ceph_peer() { (source "$CEPH_PEER/lib.sh" && "$@"); }

# The peer's first start on this machine has failed at the ceph-fuse mount
# and worked when run again, so it gets a second try.
start_ceph() {
  [[ -x $CEPH_PEER/up.sh ]] || { log "no Ceph peer at $CEPH_PEER"; return 1; }
  "$CEPH_PEER/up.sh" >"$OUT/ceph-up.log" 2>&1 && return 0
  log "the Ceph peer's start failed; trying once more"
  "$CEPH_PEER/up.sh" >>"$OUT/ceph-up.log" 2>&1 || { log "the Ceph peer did not come up (see $OUT/ceph-up.log)"; return 1; }
}

# A Ceph peer left running would share the cores with the other targets.
stop_ceph() {
  [[ -x $CEPH_PEER/down.sh ]] && "$CEPH_PEER/down.sh" >"$OUT/ceph-down.log" 2>&1 || true
}

target_dir() {
  case $1 in
    local) echo "$OUT/local" ;;
    aspen) echo "$OUT/mnt/bench" ;;
    ceph) echo "$CEPH_DIR" ;;
  esac
}

cold() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
  if [[ $1 == ceph ]]; then
    ceph_peer ceph_cli tell 'osd.*' cache drop >/dev/null
    ceph_peer umount_fuse
    ceph_peer mount_fuse
  fi
}

# fio_job TARGET NAME fio-args...   -> $RESULTS/TARGET.NAME.json
fio_job() {
  local target=$1 name=$2
  shift 2
  sync
  settle
  log "$target: fio $name"
  timeout 900 fio --output-format=json --output="$RESULTS/$target.$name.json" \
    --directory="$(target_dir "$target")" --fallocate=none --ioengine=psync "$@"
}

# The busy share of the cores over one second, in percent.
cpu_busy() {
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep 1
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local total=0 idle=$(( b[4] + b[5] - a[4] - a[5] )) i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

settle() {
  local waited=0 busy
  while busy=$(cpu_busy); (( busy > 10 && waited < SETTLE_MAX )); do
    waited=$((waited + 1))
  done
  (( waited == 0 )) || log "waited ${waited} s for the cores to go quiet (last ${busy}% busy)"
  trim_disk
}

# ops_job TARGET NAME fsops-args... -> $RESULTS/TARGET.NAME.json
ops_job() {
  local target=$1 name=$2
  shift 2
  sync
  settle
  log "$target: $name"
  timeout 1800 python3 "$REPO/bench/fsops.py" "$@" >"$RESULTS/$target.$name.json"
}

run_fio() {
  local t=$1 d=$2
  fio_job "$t" seqwrite --name=seq --filename=seq.dat --rw=write --bs=1M --size=1G --end_fsync=1
  cold "$t"
  fio_job "$t" seqread --name=seq --filename=seq.dat --rw=read --bs=1M --size=1G
  rm -f "$d/seq.dat"

  local files=(--name=rand --size=256M --numjobs=4 --group_reporting)
  local rand=("${files[@]}" --bs=4k --time_based --runtime="$RUNTIME" --randrepeat=0)
  fio_job "$t" layout "${files[@]}" --rw=write --bs=1M --end_fsync=1
  fio_job "$t" randwrite "${rand[@]}" --rw=randwrite --end_fsync=1
  cold "$t"
  fio_job "$t" randread "${rand[@]}" --rw=randread
  cold "$t"
  fio_job "$t" randwrite_direct "${rand[@]}" --rw=randwrite --direct=1
  cold "$t"
  fio_job "$t" randread_direct "${rand[@]}" --rw=randread --direct=1
  rm -f "$d"/rand.*
}

run_files() {
  local t=$1 d=$2
  ops_job "$t" meta_p1 meta "$d/meta" -n 10000 --procs 1
  ops_job "$t" meta_p4 meta "$d/meta" -n 10000 --procs 4
  ops_job "$t" smallw smallw "$d/small" -n 2000 --size 65536
  cold "$t"
  ops_job "$t" smallr smallr "$d/small" -n 2000
  ops_job "$t" smallrm smallrm "$d/small" -n 2000
}

[[ " ${TARGETS[*]} " == *" ceph "* && ${#TARGETS[@]} -gt 1 ]] && stop_ceph
ran=()
for t in "${TARGETS[@]}"; do
  # The disk's host keeps writing back what the last target wrote for a
  # while after it ends: a cold 1 GiB read on Aspen measured 292-353 MiB/s
  # right after the local target's rows and 400-415 a minute later.
  log "$t: pausing ${TARGET_PAUSE} s for the disk to go quiet"
  sleep "$TARGET_PAUSE"
  case $t in
    aspen) start_aspen "$ASPEN" "$OUT/aspen" "$OUT/mnt" "$OUT/aspen-up.log" ;;
    ceph) start_ceph || continue ;;
    local) ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
  d=$(target_dir "$t")
  rm -rf "$d" && mkdir -p "$d"
  run_fio "$t" "$d"
  run_files "$t" "$d"
  rm -rf "$d"
  [[ $t == aspen ]] && stop_aspen
  # Left running, the peer's daemons would share the cores with whatever
  # runs next.
  [[ $t == ceph ]] && stop_ceph
  ran+=("$t")
done

{
  echo
  echo "## Mount (fio and file workloads) — $(date -u +%Y-%m-%d)"
  echo
  machine_line "$OUT"
  echo "Command: \`bench/mount.sh ${ran[*]}\` (release; RUNTIME=$RUNTIME). aspen = \`aspen up\` (1 MDS + 3 OSDs, pool size 3, FUSE mount, one process); ceph = ceph-fuse on the peer's 3-OSD size-3 CephFS; local = a directory on the same disk."
  echo
  python3 "$REPO/bench/mount_table.py" "$RESULTS" "${ran[@]}"
} | tee -a bench/RESULTS.md
echo "appended to bench/RESULTS.md"
